//! `dcr-build run`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use dcr_build::run;

// The subcommand's help text is the doc comment of `Cmd::Run` in main.rs.
#[derive(clap::Args)]
pub struct Args {
    out: PathBuf,
    #[arg(long, value_enum, default_value = "direct")]
    mode: run::Mode,
    /// TCG by default: KVM on this kind of host cannot boot standard kernels.
    #[arg(long, value_enum, default_value = "tcg")]
    accel: run::Accel,
    /// Seconds before the VM is killed and the run fails.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    #[arg(long, default_value_t = 512)]
    memory: u32,
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
    #[arg(long, default_value = "/usr/share/OVMF/OVMF_CODE_4M.fd")]
    ovmf_code: PathBuf,
    #[arg(long, default_value = "/usr/share/OVMF/OVMF_VARS_4M.fd")]
    ovmf_vars: PathBuf,
    #[arg(long, default_value = "swtpm")]
    swtpm: String,
    /// Append to the kernel command line (direct mode; experiments only).
    #[arg(long)]
    append: Option<String>,
    /// Do not echo the console.
    #[arg(long)]
    quiet: bool,
    /// Write the firmware event log guest-init printed to this file (for `diagnose`).
    #[arg(long, value_name = "PATH")]
    save_event_log: Option<PathBuf>,
    /// Attach a NIC on QEMU user networking (guest 10.0.2.15, host loopback at 10.0.2.2).
    #[arg(long)]
    net: bool,
    /// Attach a virtio-vsock device: the channel of an image whose contract's network is vsock
    /// (its service at host CID 2, port P). Uses the host kernel's /dev/vhost-vsock (host side:
    /// `dcr-attest vsock-proxy --port P --to URL`), or with --vsock-uds rust-vmm's
    /// vhost-device-vsock (host side: `dcr-attest vsock-proxy --unix PATH_P --to URL`).
    #[arg(long)]
    vsock: bool,
    /// The guest's vsock CID.
    #[arg(long, default_value_t = 4, requires = "vsock", value_name = "CID")]
    vsock_cid: u32,
    /// vhost-device-vsock's Unix socket prefix: a guest connection to host port P arrives at
    /// PATH_P.
    #[arg(long, requires = "vsock", value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// The vhost-device-vsock program (crates.io vhost-device-vsock 0.3).
    #[arg(long, default_value = "vhost-device-vsock", value_name = "PROGRAM")]
    vhost_device_vsock: String,
    /// Start the vTPM from a copy of this swtpm state (e.g. with an EK certificate from
    /// swtpm_setup --create-ek-cert).
    #[arg(long, value_name = "DIR")]
    tpm_state: Option<PathBuf>,
    /// Tests only: serve Azure's instance metadata (169.254.169.254:80) from this host
    /// address (ip:port); the user network becomes 169.254.169.0/24 (host at .2). Needs --net.
    #[arg(long, value_name = "IP:PORT", requires = "net", hide = true)]
    fake_imds: Option<String>,
    /// Boot without the network the image's contract needs (by default `run` refuses, and
    /// with --net checks that the contract's service answers before booting): the guest
    /// measures, reports and stops at its network step.
    #[arg(long, conflicts_with = "net")]
    offline: bool,
    /// A confidential platform: with --print-qemu, print the QEMU command line a host with
    /// that hardware needs (this machine has neither, so nothing is started).
    #[arg(long, value_enum)]
    platform: Option<run::Platform>,
    /// Print the launch command for --platform instead of booting.
    #[arg(long, requires = "platform")]
    print_qemu: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if let Some(p) = a.platform {
        if !a.print_qemu {
            anyhow::bail!(
                "--platform {}: this host has no such hardware; add --print-qemu for the command line a host with it needs",
                format!("{p:?}").to_lowercase()
            );
        }
        print!("{}", run::print_qemu(&a.out, p, a.memory)?);
        return Ok(ExitCode::SUCCESS);
    }
    let opts = run::RunOptions {
        mode: a.mode,
        accel: a.accel,
        timeout: Duration::from_secs(a.timeout),
        memory_mib: a.memory,
        qemu: a.qemu,
        ovmf_code: a.ovmf_code,
        ovmf_vars: a.ovmf_vars,
        swtpm: a.swtpm,
        append: a.append,
        echo: !a.quiet,
        net: a.net,
        tpm_state: a.tpm_state,
        vsock: a.vsock.then_some(run::VsockOptions {
            guest_cid: a.vsock_cid,
            uds: a.vsock_uds,
            vhost_device_vsock: a.vhost_device_vsock,
        }),
        fake_imds: a.fake_imds,
        offline: a.offline,
    };
    let r = run::run(&a.out, &opts)?;
    let secs = r.elapsed.as_secs_f64();
    if let Some(path) = &a.save_event_log {
        match run::event_log_from_console(&r.console) {
            Some(Ok(log)) => {
                std::fs::write(path, &log)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("event log: {} bytes to {}", log.len(), path.display());
            }
            Some(Err(e)) => anyhow::bail!("--save-event-log: {e}"),
            None => {
                anyhow::bail!("--save-event-log: the guest printed no event log (no TPM?)")
            }
        }
    }
    let mode = a.mode;
    match r.outcome {
        run::Outcome::Success => {
            println!("run: success ({mode:?} boot, powered off after {secs:.1} s)");
            Ok(ExitCode::SUCCESS)
        }
        run::Outcome::GuestError(reason) => {
            println!("run: guest failed after {secs:.1} s: {reason}");
            Ok(ExitCode::from(1))
        }
        run::Outcome::Timeout => {
            println!("run: timeout after {} s; VM killed", a.timeout);
            Ok(ExitCode::from(1))
        }
        run::Outcome::NoStatus { status, last_line } => {
            let err = r.qemu_stderr.lines().last().unwrap_or("").to_string();
            println!(
                "run: VM ended ({status}) without a guest status line after {secs:.1} s; last console line: {last_line:?}; qemu: {err}"
            );
            Ok(ExitCode::from(1))
        }
    }
}

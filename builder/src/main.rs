//! dcr-build: the command-line shell around the dcr-build library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dcr_build::{compare, image, run};

/// Reproducible, measured confidential-VM images for dcr clean rooms.
#[derive(Parser)]
#[command(name = "dcr-build", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum ExportCmd {
    /// Azure Key Vault / Managed HSM Secure Key Release policy (JSON, grammar 1.0.0) to stdout.
    Skr {
        /// measurements.json of the build.
        #[arg(long, value_name = "PATH")]
        measurements: PathBuf,
        /// The Microsoft Azure Attestation provider whose tokens the vault accepts.
        #[arg(long, value_name = "URL")]
        maa: String,
        /// Hardware accepted.
        #[arg(long, value_enum, default_value = "any")]
        tee: dcr_build::export::AzureTee,
    },
    /// Trustee: the RVPS registration message (JSON) to stdout, and with --rego a policy
    /// fragment to that file.
    Trustee {
        #[arg(long, value_name = "PATH")]
        measurements: PathBuf,
        #[arg(long, value_name = "PATH")]
        rego: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a recipe (a directory with image.toml, or the file) into initrd.cpio, image.efi
    /// and measurements.json.
    Image {
        recipe: PathBuf,
        /// Output directory [default: out/<recipe name>].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Rust target for guest-init and crate workloads.
        #[arg(long, default_value = dcr_build::cargo::DEFAULT_GUEST_TARGET, env = "DCR_GUEST_TARGET")]
        guest_target: String,
        /// Pack this contract (TOML) instead of the recipe's; its workloads must match the
        /// built ones by name and SHA-256.
        #[arg(long, value_name = "PATH")]
        contract: Option<PathBuf>,
    },
    /// Time pack + measure of a recipe from already-built inputs against sha256sum over the
    /// same input bytes (same run); prints sizes, medians and the ratio.
    Bench {
        recipe: PathBuf,
        #[arg(long, default_value_t = 10)]
        iterations: u32,
        #[arg(long, default_value = dcr_build::cargo::DEFAULT_GUEST_TARGET, env = "DCR_GUEST_TARGET")]
        guest_target: String,
    },
    /// Predict launch measurements.
    Measure {
        #[command(subcommand)]
        what: MeasureCmd,
    },
    /// Replay a real TCG2 event log against measurements.json: name the first differing
    /// event of each PCR and the input that explains it. Exit 0 if all match, 1 if not.
    Diagnose {
        #[arg(long, value_name = "PATH")]
        expected: PathBuf,
        #[arg(long, value_name = "PATH")]
        event_log: PathBuf,
    },
    /// Compare two build outputs; exit 0 if identical, 1 if not (each difference named).
    Compare { a: PathBuf, b: PathBuf },
    /// Export a build's Azure reference values for other key brokers: an Azure Key Vault
    /// Secure Key Release policy, or Trustee RVPS reference values plus a Rego fragment.
    Export {
        #[command(subcommand)]
        what: ExportCmd,
    },
    /// Boot a build output in QEMU; exit 0 only if the guest reported success and powered off.
    Run {
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
    },
}

#[derive(Subcommand)]
enum MeasureCmd {
    /// AMD SEV / SEV-ES / SEV-SNP launch digest (flags and output of sev-snp-measure 0.0.13).
    Snp(Box<dcr_build::measure::SnpArgs>),
    /// Intel TDX MRTD of a TDVF firmware image.
    Tdx(dcr_build::measure::TdxArgs),
    /// TPM PCR 11 of a UKI (OVMF + systemd-stub boot), for the stub version it embeds.
    Tpm(dcr_build::measure::TpmArgs),
    /// Replay a TCG2 event log (TPM or CCEL): the final value of every register.
    Replay(dcr_build::measure::ReplayArgs),
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", dcr_build::error_chain(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli: Cli = match dcr_protocol::cli::parse_or_exit() {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    match cli.command {
        Cmd::Image {
            recipe,
            out,
            guest_target,
            contract,
        } => {
            let out = match out {
                Some(o) => o,
                None => {
                    let r = dcr_build::recipe::load(&recipe)?;
                    PathBuf::from("out").join(&r.recipe.name)
                }
            };
            let opts = image::BuildOptions {
                out: out.clone(),
                guest_target,
                source_date_epoch: std::env::var("SOURCE_DATE_EPOCH").ok(),
                contract,
            };
            let m = image::build(&recipe, &opts)?;
            println!(
                "built {} {} into {}",
                m.recipe,
                m.recipe_version,
                out.display()
            );
            println!("  kernel     {}", m.kernel_release);
            println!("  cmdline    {}", m.cmdline);
            println!("  contract   sha256:{}", m.contract_digest);
            for (name, a) in &m.artifacts {
                println!("  {name:<12} sha256:{} ({} bytes)", a.sha256, a.size);
            }
            println!(
                "  reference values: {}",
                out.join(image::MEASUREMENTS).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench {
            recipe,
            iterations,
            guest_target,
        } => {
            let opts = image::BuildOptions {
                out: PathBuf::new(),
                guest_target,
                source_date_epoch: std::env::var("SOURCE_DATE_EPOCH").ok(),
                contract: None,
            };
            let prepared = image::prepare(&recipe, &opts, None)?;
            let r = dcr_build::bench::run(&prepared, iterations, &std::env::temp_dir())?;
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            println!("recipe            {}", prepared.pack.name);
            println!("iterations        {}", r.iterations);
            println!(
                "input bytes       {} ({:.2} MiB)",
                r.input_bytes,
                mib(r.input_bytes)
            );
            println!(
                "initrd.cpio       {} bytes ({:.2} MiB, uncompressed)",
                r.initrd_bytes,
                mib(r.initrd_bytes)
            );
            println!(
                "image.efi         {} bytes ({:.2} MiB)",
                r.uki_bytes,
                mib(r.uki_bytes)
            );
            println!(
                "pack+measure      {:.2} ms (median)",
                r.pack_measure.as_secs_f64() * 1e3
            );
            println!(
                "sha256sum inputs  {:.2} ms (median, incl. process start)",
                r.sha256sum.as_secs_f64() * 1e3
            );
            if let Some(o) = r.openssl {
                println!(
                    "openssl dgst      {:.2} ms (median, incl. process start)",
                    o.as_secs_f64() * 1e3
                );
            }
            println!(
                "sha2 in-process   {:.2} ms (median)",
                r.in_process.as_secs_f64() * 1e3
            );
            println!(
                "ratio             {:.2}x pack+measure / sha256sum (target <= 3x)",
                r.ratio()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Measure { what } => match what {
            MeasureCmd::Snp(args) => {
                print!("{}", dcr_build::measure::snp(&args)?);
                Ok(ExitCode::SUCCESS)
            }
            MeasureCmd::Tdx(args) => {
                print!("{}", dcr_build::measure::tdx(&args)?);
                Ok(ExitCode::SUCCESS)
            }
            MeasureCmd::Tpm(args) => {
                print!("{}", dcr_build::measure::tpm(&args)?);
                Ok(ExitCode::SUCCESS)
            }
            MeasureCmd::Replay(args) => {
                print!("{}", dcr_build::measure::replay(&args)?);
                Ok(ExitCode::SUCCESS)
            }
        },
        Cmd::Diagnose {
            expected,
            event_log,
        } => {
            let mbytes = std::fs::read(&expected)
                .with_context(|| format!("reading {}", expected.display()))?;
            let m = dcr_protocol::measurements::Measurements::from_json(&mbytes)
                .with_context(|| expected.display().to_string())?;
            let lbytes = std::fs::read(&event_log)
                .with_context(|| format!("reading {}", event_log.display()))?;
            let log = dcr_measure::eventlog::parse(&lbytes)
                .with_context(|| event_log.display().to_string())?;
            let d = dcr_build::diagnose::diagnose(&m, &log)
                .map_err(|e| anyhow::anyhow!("{}: {e}", expected.display()))?;
            for l in &d.lines {
                println!("{l}");
            }
            Ok(if d.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Export { what } => {
            let path = match &what {
                ExportCmd::Skr { measurements, .. } | ExportCmd::Trustee { measurements, .. } => {
                    measurements
                }
            };
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let m = dcr_protocol::measurements::Measurements::from_json(&bytes)
                .with_context(|| path.display().to_string())?;
            let doc = match what {
                ExportCmd::Skr { maa, tee, .. } => dcr_build::export::skr_policy(&m, &maa, tee)?,
                ExportCmd::Trustee { rego, .. } => {
                    if let Some(r) = rego {
                        std::fs::write(&r, dcr_build::export::trustee_rego(&m)?)
                            .with_context(|| format!("writing {}", r.display()))?;
                    }
                    dcr_build::export::trustee_rvps(&m)?
                }
            };
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Compare { a, b } => {
            let report = compare::compare_dirs(&a, &b)
                .with_context(|| format!("comparing {} with {}", a.display(), b.display()))?;
            if report.identical() {
                println!(
                    "identical: {} files ({})",
                    report.files.len(),
                    report.files.join(", ")
                );
                Ok(ExitCode::SUCCESS)
            } else {
                println!("different:");
                for d in &report.differences {
                    println!("  {d}");
                }
                Ok(ExitCode::from(1))
            }
        }
        Cmd::Run {
            out,
            mode,
            accel,
            timeout,
            memory,
            qemu,
            ovmf_code,
            ovmf_vars,
            swtpm,
            append,
            quiet,
            save_event_log,
            net,
            tpm_state,
            fake_imds,
            offline,
            platform,
            print_qemu,
        } => {
            if let Some(p) = platform {
                if !print_qemu {
                    anyhow::bail!(
                        "--platform {}: this host has no such hardware; add --print-qemu for the command line a host with it needs",
                        format!("{p:?}").to_lowercase()
                    );
                }
                print!("{}", run::print_qemu(&out, p, memory)?);
                return Ok(ExitCode::SUCCESS);
            }
            let opts = run::RunOptions {
                mode,
                accel,
                timeout: Duration::from_secs(timeout),
                memory_mib: memory,
                qemu,
                ovmf_code,
                ovmf_vars,
                swtpm,
                append,
                echo: !quiet,
                net,
                tpm_state,
                fake_imds,
                offline,
            };
            let r = run::run(&out, &opts)?;
            let secs = r.elapsed.as_secs_f64();
            if let Some(path) = &save_event_log {
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
                    println!("run: timeout after {timeout} s; VM killed");
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
    }
}

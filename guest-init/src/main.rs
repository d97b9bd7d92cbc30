//! guest-init: dcr's PID 1.
//!
//! Mount /proc, /sys and /dev, load the kernel modules packed into the initramfs in dependency
//! order, print a banner with the version and the contract digest, measure the contract and
//! workloads into PCR 23, then run the clean room (`cleanroom.rs`: network, platform,
//! evidence, key release, inputs, workload, sealed output) and power off. Any error prints one
//! line with the reason and powers off; nothing is ever started that would give interactive
//! access, and nothing listens.
//!
//! Console protocol (one line per step; `dcr_protocol::console`, which types the lines
//! `dcr-build run` acts on):
//! ```text
//! dcr-init: banner version=<v> contract=sha256:<hex> kernel=<release>
//! dcr-init: modules loaded=<n> [names] absent=<n> [names]
//! dcr-init: eventlog sha256=<hex> size=<n> base64=<TCG2 log>   (or: eventlog none)
//! dcr-init: pcr23 extended=<n> (contract + <n-1> workloads)   (or: pcr23 skipped (no TPM))
//! dcr-init: pcrs sha256 4=<hex> 9=<hex> 11=<hex> 12=<hex> 23=<hex>   (or: pcrs none (no TPM))
//! dcr-init: network static address=<a/p> gateway=<g> interface=eth0
//! dcr-init: platform detected snp=<y/n> tdx=<y/n> tpm=<y/n> azure-hcl=<y/n> contract=[…] using=<tee>
//! dcr-init: evidence tee=tpm quote=<n> signature=<n> pcrs=<n> ek-cert=<n> bytes
//! dcr-init: release ok keys=[…] signed-by=ed25519:<hex>
//! dcr-init: input <dataset> sealed=<n> bytes plaintext=<n> bytes sha256(sealed)=<hex>
//! dcr-init: workload <name> exit=<code> output=<n> bytes time=<s>s
//! dcr-init: output rows=<n> sealed=<n> bytes sha256=<hex> recipients=<n> blob=<name>
//! dcr-init: power-off status=ok
//! dcr-init: power-off status=error reason="<one line>"
//! ```
#![deny(unsafe_code)]

mod cleanroom;
mod net;
mod sys;
mod tpm;

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use dcr_measure::tpm::CONTRACT_PCR;
use dcr_protocol::console::{Line, PREFIX};
use sha2::{Digest, Sha256};

/// Where the image builder puts the contract.
const CONTRACT_PATH: &str = "/etc/dcr/contract.json";

/// A failed step: what we were doing and why it failed.
#[derive(Debug)]
struct StepError {
    step: &'static str,
    detail: String,
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.detail)
    }
}

fn step<T, E: fmt::Display>(step: &'static str, r: Result<T, E>) -> Result<T, StepError> {
    r.map_err(|e| StepError {
        step,
        detail: e.to_string(),
    })
}

/// A report line for people: `dcr-init: <line>`.
fn say(line: &str) {
    print_line(format_args!("{PREFIX}{line}"));
}

/// A typed line of the console protocol (`dcr_protocol::console`).
fn emit(line: &Line) {
    print_line(format_args!("{line}"));
}

fn print_line(line: fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    // The console is our only channel; if it is gone there is nobody to tell.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn mount_api_filesystems() -> Result<(), StepError> {
    let nosuid_noexec = libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;
    for (src, target, fstype, flags) in [
        ("proc", "/proc", "proc", nosuid_noexec),
        ("sysfs", "/sys", "sysfs", nosuid_noexec),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            libc::MS_NOSUID | libc::MS_NOEXEC,
        ),
    ] {
        step(
            "mkdir",
            fs::create_dir_all(target).map_err(|e| format!("{target}: {e}")),
        )?;
        match sys::mount(src, target, fstype, flags) {
            Ok(()) => {}
            // The kernel may already have mounted devtmpfs (CONFIG_DEVTMPFS_MOUNT).
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => {
                return Err(StepError {
                    step: "mount",
                    detail: format!("{fstype} on {target}: {e}"),
                })
            }
        }
    }
    Ok(())
}

/// One line of modules.dep: a module path and the paths it depends on.
#[derive(Debug, PartialEq)]
struct DepLine {
    module: String,
    deps: Vec<String>,
}

/// Parse modules.dep (`path: dep dep …`). The builder writes it in load order.
fn parse_modules_dep(text: &str) -> Result<Vec<DepLine>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (module, deps) = line
            .split_once(':')
            .ok_or_else(|| format!("modules.dep line {}: no ':'", n + 1))?;
        if module.is_empty() || module.contains("..") {
            return Err(format!(
                "modules.dep line {}: bad module path {module:?}",
                n + 1
            ));
        }
        out.push(DepLine {
            module: module.to_string(),
            deps: deps.split_whitespace().map(str::to_string).collect(),
        });
    }
    Ok(out)
}

/// What happened to the packed modules.
#[derive(Debug, Default)]
struct Loaded {
    /// Loaded (or already present).
    loaded: Vec<String>,
    /// Refused with ENODEV: a driver for hardware this machine does not have (sev-guest off
    /// SNP, tdx-guest off TDX, hv_vmbus off Hyper-V), and the modules depending on one. Platform detection decides later, explicitly, what is needed.
    absent: Vec<String>,
}

/// Load every module of modules.dep in file order, checking that dependencies came first.
fn load_modules(dir: &Path) -> Result<Loaded, StepError> {
    let dep_path = dir.join("modules.dep");
    let text = match fs::read_to_string(&dep_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => return step("modules", Err(format!("{}: {e}", dep_path.display()))),
    };
    let lines = step("modules", parse_modules_dep(&text))?;
    let mut out = Loaded::default();
    for line in &lines {
        // A driver on top of an absent bus (hv_netvsc without Hyper-V's hv_vmbus) is absent
        // too: the hardware it drives cannot be here.
        if line.deps.iter().any(|d| out.absent.contains(d)) {
            out.absent.push(line.module.clone());
            continue;
        }
        if let Some(missing) = line.deps.iter().find(|d| !out.loaded.contains(d)) {
            return step(
                "modules",
                Err(format!(
                    "{} needs {missing}, which is not loaded before it",
                    line.module
                )),
            );
        }
        let path: PathBuf = dir.join(&line.module);
        let file = step(
            "modules",
            File::open(&path).map_err(|e| format!("{}: {e}", path.display())),
        )?;
        match sys::finit_module(&file) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                out.absent.push(line.module.clone());
                continue;
            }
            Err(e) => return step("modules", Err(format!("{}: {e}", line.module))),
        }
        out.loaded.push(line.module.clone());
    }
    Ok(out)
}

fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.strip_suffix(".ko").unwrap_or(file)
}

/// Where the workloads are.
const WORKLOAD_DIR: &str = "/workloads";

/// Extend PCR 23 by the PCR 23 rule (`dcr_measure::tpm::pcr23_extends`: the contract digest,
/// then each workload's SHA-256 in name order), as the manual workflow does with
/// `tpm2_pcrextend 23:sha256=…`. Returns how many were extended, or None without a TPM.
fn extend_pcr23(contract_digest: [u8; 32]) -> Result<Option<usize>, StepError> {
    let device = ["/dev/tpmrm0", "/dev/tpm0"]
        .into_iter()
        .find(|d| Path::new(d).exists());
    let Some(device) = device else {
        return Ok(None);
    };
    let mut names: Vec<String> = match fs::read_dir(WORKLOAD_DIR) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return step("pcr23", Err(format!("{WORKLOAD_DIR}: {e}"))),
    };
    names.sort();
    let mut workloads = Vec::with_capacity(names.len());
    for n in &names {
        let path = Path::new(WORKLOAD_DIR).join(n);
        let bytes = step(
            "pcr23",
            fs::read(&path).map_err(|e| format!("{}: {e}", path.display())),
        )?;
        workloads.push((n.as_str(), bytes));
    }
    let workloads: Vec<(&str, &[u8])> = workloads.iter().map(|(n, b)| (*n, &b[..])).collect();
    let extends = dcr_measure::tpm::pcr23_extends(contract_digest, &workloads);
    for (_, d) in &extends {
        step(
            "pcr23",
            tpm::pcr_extend_sha256(device, CONTRACT_PCR, *d).map_err(|e| format!("{device}: {e}")),
        )?;
    }
    Ok(Some(extends.len()))
}

/// The firmware's TCG2 event log (public measurement data, not a secret): printed as one
/// base64 line so `dcr-build run --save-event-log` can hand it to `dcr-build diagnose`.
fn report_event_log() {
    let _ = fs::create_dir_all("/sys/kernel/security");
    // EBUSY: already mounted.
    let _ = sys::mount(
        "securityfs",
        "/sys/kernel/security",
        "securityfs",
        libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV,
    );
    match fs::read("/sys/kernel/security/tpm0/binary_bios_measurements") {
        Ok(log) => emit(&Line::EventLog { log }),
        Err(_) => emit(&Line::NoEventLog),
    }
}

/// PCRs whose values the tests compare with the predictions.
const REPORTED_PCRS: [u32; 5] = [4, 9, 11, 12, 23];

/// Read SHA-256 PCRs from sysfs (`/sys/class/tpm/tpm0/pcr-sha256/N`, kernel ≥ 6.1).
/// Returns None when there is no TPM.
fn read_pcrs() -> Option<Vec<(u32, String)>> {
    let dir = Path::new("/sys/class/tpm/tpm0/pcr-sha256");
    if !dir.is_dir() {
        return None;
    }
    Some(
        REPORTED_PCRS
            .iter()
            .filter_map(|i| {
                fs::read_to_string(dir.join(i.to_string()))
                    .ok()
                    .map(|v| (*i, v.trim().to_ascii_lowercase()))
            })
            .collect(),
    )
}

fn run() -> Result<(), StepError> {
    mount_api_filesystems()?;
    let release = step("uname", sys::kernel_release())?;
    let contract = step(
        "contract",
        fs::read(CONTRACT_PATH).map_err(|e| format!("{CONTRACT_PATH}: {e}")),
    )?;
    let parsed = step(
        "contract",
        dcr_protocol::contract::Contract::from_canonical_json(&contract)
            .map_err(|e| format!("{CONTRACT_PATH}: {e}")),
    )?;
    let digest = Sha256::digest(&contract);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    say(&format!(
        "banner version={} contract=sha256:{hex} kernel={release}",
        env!("CARGO_PKG_VERSION")
    ));
    let mods = load_modules(&Path::new("/lib/modules").join(&release))?;
    let names = |v: &[String]| {
        v.iter()
            .map(|m| module_name(m))
            .collect::<Vec<_>>()
            .join(" ")
    };
    say(&format!(
        "modules loaded={} [{}] absent={} [{}]",
        mods.loaded.len(),
        names(&mods.loaded),
        mods.absent.len(),
        names(&mods.absent)
    ));
    report_event_log();
    match extend_pcr23(digest.into())? {
        Some(n) => say(&format!(
            "pcr23 extended={n} (contract + {} workloads)",
            n - 1
        )),
        None => say("pcr23 skipped (no TPM)"),
    }
    match read_pcrs() {
        Some(pcrs) => {
            let list: Vec<String> = pcrs.iter().map(|(i, v)| format!("{i}={v}")).collect();
            say(&format!("pcrs sha256 {}", list.join(" ")));
        }
        None => say("pcrs none (no TPM)"),
    }
    cleanroom::run(&parsed, &digest.into())
}

fn main() {
    // Refuse to act anywhere but as PID 1 of a dcr guest: never power off a developer's host.
    if std::process::id() != 1 {
        eprintln!("guest-init: not PID 1; this program only runs as init inside a dcr image");
        std::process::exit(2);
    }
    match run() {
        Ok(()) => emit(&Line::PowerOffOk),
        Err(e) => emit(&Line::PowerOffError {
            reason: e.to_string(),
        }),
    }
    let err = sys::power_off();
    say(&format!("power-off failed: {err}"));
    sys::pause_forever();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_dep_parses_in_order() {
        let text = "kernel/a.ko:\nkernel/b.ko: kernel/a.ko\n\n";
        let lines = parse_modules_dep(text).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].deps, vec!["kernel/a.ko".to_string()]);
    }

    #[test]
    fn modules_dep_rejects_garbage() {
        assert!(parse_modules_dep("no colon here\n").is_err());
        assert!(parse_modules_dep("../x.ko:\n").is_err());
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("kernel/net/vsock.ko"), "vsock");
    }
}

//! Measuring the contract and workloads into PCR 23 (the rule is `dcr_measure::tpm`'s), and
//! reporting the TPM's measurements on the console: the firmware event log and the PCRs the
//! tests compare with the predictions.

use std::fs;
use std::io;
use std::path::Path;

use dcr_measure::tpm::CONTRACT_PCR;
use dcr_protocol::console::Line;

use crate::console::{emit, say};
use crate::workload::WORKLOAD_DIR;
use crate::{step, sys, tpm, StepError};

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

/// Report the event log, extend PCR 23, report the PCRs (in that order, one line each).
pub fn measure_and_report(contract_digest: [u8; 32]) -> Result<(), StepError> {
    report_event_log();
    match extend_pcr23(contract_digest)? {
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
    Ok(())
}

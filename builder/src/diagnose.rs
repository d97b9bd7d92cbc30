//! `dcr-build diagnose`: replay a real TCG2 event log against the predictions in
//! measurements.json, event by event, and name the first differing event of each PCR and the
//! input that explains it.

use dcr_measure::eventlog::{EventLog, EV_NO_ACTION, TPM_ALG_SHA256};
use dcr_protocol::measurements::Measurements;
use hex::encode as hex;

/// The outcome: one line per finding; `ok` when every predicted PCR matches.
#[derive(Debug, Clone, Default)]
pub struct Diagnosis {
    pub lines: Vec<String>,
    pub ok: bool,
}

fn event_type_name(t: u32) -> String {
    match t {
        0x0000_0004 => "EV_SEPARATOR".into(),
        0x0000_0006 => "EV_EVENT_TAG".into(),
        0x0000_000d => "EV_IPL".into(),
        0x8000_0003 => "EV_EFI_BOOT_SERVICES_APPLICATION".into(),
        0x8000_0007 => "EV_EFI_ACTION".into(),
        other => format!("event type {other:#x}"),
    }
}

/// Printable summary of event data (ASCII or UTF-16LE text, else its length).
fn data_summary(d: &[u8]) -> String {
    let ascii: String = d
        .iter()
        .take_while(|&&b| b != 0)
        .map(|&b| b as char)
        .collect();
    if ascii.len() >= 4 && ascii.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return format!("{ascii:?}");
    }
    let utf16: Vec<u16> = d
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let s = String::from_utf16_lossy(&utf16);
    if s.len() >= 2 && s.chars().all(|c| c.is_ascii_graphic()) {
        return format!("{s:?}");
    }
    format!("{} bytes", d.len())
}

/// Which input of the build an expected event stands for.
fn explain(description: &str) -> &'static str {
    let d = description;
    if d.contains("UKI") {
        "the UKI the firmware loaded is not this build's image.efi (artifact image.efi)"
    } else if d.contains("LoadOptions") || d.starts_with(".cmdline") {
        "the kernel command line differs from measurements.json cmdline (an operator override?)"
    } else if d.contains("Linux initrd") || d.starts_with(".initrd") {
        "the initrd differs from this build's initrd.cpio (artifact initrd.cpio)"
    } else if d.contains(".linux") {
        "the kernel differs from input kernel"
    } else if d.starts_with(".osrel") {
        "the UKI .osrel differs (recipe name/version)"
    } else if d.starts_with(".uname") {
        "the UKI .uname differs (kernel release)"
    } else if d.starts_with(".sbat") {
        "the stub's .sbat differs (input stub)"
    } else if d.starts_with("EV_EFI_ACTION") || d.starts_with("EV_SEPARATOR") {
        "the firmware's boot flow differs from the shape (e.g. another boot option was tried before the ESP)"
    } else {
        "see the event description"
    }
}

/// Why a log cannot be compared with the predictions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiagnoseError {
    #[error("measurements.json has no tpm prediction (recipe platforms lack \"tpm\")")]
    NoTpmPrediction,
    #[error("the event log has no SHA-256 bank")]
    NoSha256Bank,
}

/// Compare the log with the TPM predictions of `m`.
pub fn diagnose(m: &Measurements, log: &EventLog) -> Result<Diagnosis, DiagnoseError> {
    let tpm = m
        .measurements
        .tpm
        .as_ref()
        .ok_or(DiagnoseError::NoTpmPrediction)?;
    if !log.algorithms.iter().any(|(a, _)| *a == TPM_ALG_SHA256) {
        return Err(DiagnoseError::NoSha256Bank);
    }
    let replayed = log.replay(TPM_ALG_SHA256);
    let mut out = Diagnosis {
        ok: true,
        ..Default::default()
    };
    for (index, value) in &tpm.pcrs {
        let pcr = index.get();
        let expected_value = value.to_hex();
        if pcr == 23 {
            out.lines.push(
                "PCR 23: extended by guest-init, not in the firmware log; compare the quoted value"
                    .into(),
            );
            continue;
        }
        let expected: Vec<(&str, String)> = tpm
            .events
            .iter()
            .filter(|e| e.pcr == pcr)
            .map(|e| (e.description.as_str(), e.digest.to_hex()))
            .collect();
        let actual: Vec<(u32, String, String)> = log
            .events
            .iter()
            .filter(|e| e.index == pcr && e.event_type != EV_NO_ACTION)
            .filter_map(|e| {
                e.digests
                    .iter()
                    .find(|(a, _)| *a == TPM_ALG_SHA256)
                    .map(|(_, d)| (e.event_type, hex(d), data_summary(&e.data)))
            })
            .collect();
        let actual_value = replayed.get(&pcr).map(hex).unwrap_or_else(|| hex([0; 32]));
        let first_diff = (0..expected.len().max(actual.len())).find(|&i| {
            match (expected.get(i), actual.get(i)) {
                (Some((_, d)), Some((_, a, _))) => d != a,
                _ => true,
            }
        });
        match first_diff {
            None if actual_value == expected_value => {
                out.lines.push(format!(
                    "PCR {pcr}: match ({} events, {expected_value})",
                    expected.len()
                ));
            }
            None => {
                out.ok = false;
                out.lines.push(format!(
                    "PCR {pcr}: events match but the value differs: expected {expected_value}, replayed {actual_value}"
                ));
            }
            Some(i) => {
                out.ok = false;
                let exp = expected
                    .get(i)
                    .map(|(desc, d)| format!("{desc} sha256 {d}"))
                    .unwrap_or_else(|| "no event".into());
                let act = actual
                    .get(i)
                    .map(|(t, d, data)| format!("{} {data} sha256 {d}", event_type_name(*t)))
                    .unwrap_or_else(|| "no event".into());
                let why = expected
                    .get(i)
                    .map(|(desc, _)| explain(desc))
                    .unwrap_or("the log has events the prediction does not (the boot loaded more than the UKI)");
                out.lines.push(format!(
                    "PCR {pcr}: first difference at event {i}: expected {exp}; log has {act}; {why}"
                ));
            }
        }
    }
    Ok(out)
}

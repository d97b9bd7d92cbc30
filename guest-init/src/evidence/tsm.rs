//! SEV-SNP and TDX evidence from configfs-tsm (Documentation/ABI/testing/configfs-tsm-report):
//! a report (SNP: with its certificate table) or a quote over the binding.

use std::path::Path;

use dcr_protocol::contract::Contract;
use dcr_protocol::wire::{ChallengeRequest, Evidence, Tee};

use crate::client::{challenge, Client};
use crate::console::say;
use crate::release::{release, Keys, TeeKeys};
use crate::{step, StepError};

/// Evidence from configfs-tsm (SEV-SNP report + certificate table, or a TDX quote).
pub fn attest_tsm(
    c: &Contract,
    digest: &[u8; 32],
    client: &Client,
    tee: Tee,
    tk: &TeeKeys,
) -> Result<Keys, StepError> {
    let (ch, nonce) = challenge(client, &ChallengeRequest { tee, tpm: None })?;
    let rd = tk.report_data(&nonce, digest);
    let (provider, outblob, auxblob) = step("evidence", tsm_report(&rd))?;
    let evidence = match tee {
        Tee::Snp => Evidence::Snp(step(
            "evidence",
            dcr_protocol::evidence::snp_from_tsm(&outblob, &auxblob).map_err(|e| e.to_string()),
        )?),
        _ => Evidence::Tdx(step(
            "evidence",
            dcr_protocol::evidence::tdx_from_tsm(&outblob).map_err(|e| e.to_string()),
        )?),
    };
    say(&format!(
        "evidence tee={} provider={provider} outblob={} auxblob={} bytes",
        tee.as_str(),
        outblob.len(),
        auxblob.len()
    ));
    release(c, digest, client, &ch.session_id, &nonce, tk, evidence)
}

/// configfs-tsm: one report for `rd` (Documentation/ABI/testing/configfs-tsm-report).
fn tsm_report(rd: &[u8; 64]) -> Result<(String, Vec<u8>, Vec<u8>), String> {
    let dir = Path::new("/sys/kernel/config/tsm/report/dcr");
    std::fs::create_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let r = (|| {
        std::fs::write(dir.join("inblob"), rd).map_err(|e| format!("inblob: {e}"))?;
        let provider =
            std::fs::read_to_string(dir.join("provider")).map_err(|e| format!("provider: {e}"))?;
        let out = std::fs::read(dir.join("outblob")).map_err(|e| format!("outblob: {e}"))?;
        let aux = std::fs::read(dir.join("auxblob")).unwrap_or_default();
        Ok((provider.trim().to_string(), out, aux))
    })();
    let _ = std::fs::remove_dir(dir);
    r
}

/// The configfs-tsm provider, if the kernel offers one (`sev_guest` or `tdx_guest`).
pub fn tsm_provider() -> Option<String> {
    let dir = Path::new("/sys/kernel/config/tsm/report/dcr-probe");
    std::fs::create_dir(dir).ok()?;
    let p = std::fs::read_to_string(dir.join("provider")).ok();
    let _ = std::fs::remove_dir(dir);
    p.map(|s| s.trim().to_string())
}

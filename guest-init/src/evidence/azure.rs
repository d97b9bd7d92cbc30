//! Azure confidential VMs: the paravisor's HCL report in the vTPM, the hardware part from the
//! instance metadata service (IMDS), and a quote by the HCL-bound AK.

use std::time::Duration;

use base64::Engine;
use dcr_protocol::contract::Contract;
use dcr_protocol::wire::{ChallengeRequest, Evidence, Tee};

use super::pcr_values;
use crate::client::{challenge, Client};
use crate::console::say;
use crate::release::{release, Keys, TeeKeys};
use crate::{fail, step, StepError, B64};

/// The Azure paravisor's HCL report, in the vTPM's NV index 0x01400001.
pub const HCL_NV_INDEX: u32 = 0x0140_0001;
/// Offset of the IGVM request data's report_type in the HCL report (32-byte header, then
/// the 1184-byte hardware report, then data_size and version).
const HCL_REPORT_TYPE_AT: usize = 32 + 1184 + 8;
/// The IGVM report types of an HCL report: SEV-SNP and TDX.
pub const HCL_REPORT_SNP: u32 = 2;
pub const HCL_REPORT_TDX: u32 = 4;

/// An HCL report's IGVM report type; None if it is not an HCL report or is cut short.
pub fn hcl_report_type(hcl: &[u8]) -> Option<u32> {
    let b = hcl.get(HCL_REPORT_TYPE_AT..HCL_REPORT_TYPE_AT + 4)?;
    (hcl.get(..4) == Some(b"HCLA")).then(|| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Azure SNP CVM: the HCL report (vTPM NV 0x01400001), the VCEK from the instance metadata
/// service, and a quote by the HCL-bound AK (0x81000003) over PCRs 0..23 — Trustee's
/// az-snp-vtpm evidence.
/// Azure TDX CVM: the HCL report's TDREPORT is turned into a TD quote by the instance
/// metadata service; with the vTPM quote that is Trustee's az-tdx-vtpm evidence.
pub fn attest_azure(
    c: &Contract,
    digest: &[u8; 32],
    client: &Client,
    tee: Tee,
    tk: &TeeKeys,
) -> Result<Keys, StepError> {
    const AZURE_AK: u32 = 0x8100_0003;
    let mut tpm = step("tpm", crate::tpm::Tpm::open("/dev/tpmrm0"))?;
    let hcl = step(
        "evidence",
        tpm.nv_read(HCL_NV_INDEX)
            .map_err(|e| format!("HCL report at NV {HCL_NV_INDEX:#x}: {e}")),
    )?;
    let want = if tee == Tee::AzTdxVtpm {
        HCL_REPORT_TDX
    } else {
        HCL_REPORT_SNP
    };
    if hcl_report_type(&hcl) != Some(want) {
        return fail(
            "evidence",
            format!(
                "HCL report type {:?} is not {want} ({})",
                hcl_report_type(&hcl),
                tee.as_str()
            ),
        );
    }
    // The hardware part: SNP needs the VCEK, TDX a quote of the TDREPORT (1024 bytes at 32).
    let hw = if tee == Tee::AzTdxVtpm {
        step("evidence", azure_td_quote(&hcl[32..32 + 1024]))?
    } else {
        step("evidence", azure_vcek())?
    };
    let (ch, nonce) = challenge(client, &ChallengeRequest { tee, tpm: None })?;
    let rd = tk.report_data(&nonce, digest);
    let all: Vec<u32> = (0..24).collect();
    let (message, signature) = step("tpm", tpm.quote(AZURE_AK, &rd, &all))?;
    let values = pcr_values(&all)?;
    let pcrs: Vec<Vec<u8>> = values.chunks(32).map(<[u8]>::to_vec).collect();
    let evidence = step(
        "evidence",
        if tee == Tee::AzTdxVtpm {
            dcr_protocol::evidence::az_tdx_vtpm(&hcl, &hw, &message, &signature, &pcrs)
                .map(Evidence::AzTdxVtpm)
        } else {
            dcr_protocol::evidence::az_snp_vtpm(&hcl, &hw, &message, &signature, &pcrs)
                .map(Evidence::AzSnpVtpm)
        }
        .map_err(|e| e.to_string()),
    )?;
    say(&format!(
        "evidence tee={} hcl-report={} quote={} {}={} bytes",
        tee.as_str(),
        hcl.len(),
        message.len(),
        if tee == Tee::AzTdxVtpm {
            "td-quote"
        } else {
            "vcek"
        },
        hw.len()
    ));
    release(c, digest, client, &ch.session_id, &nonce, tk, evidence)
}

/// Azure's instance metadata service (IMDS, 169.254.169.254): one request with the
/// `Metadata: true` header, `body` POSTed as JSON if given; the answer as JSON.
fn imds(
    what: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, String> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .new_agent();
    let url = format!("http://169.254.169.254{path}");
    let r = match body {
        Some(b) => agent
            .post(&url)
            .header("Metadata", "true")
            .header("Content-Type", "application/json")
            .send(b.to_string().as_bytes()),
        None => agent.get(&url).header("Metadata", "true").call(),
    };
    let bytes = r
        .map_err(|e| format!("IMDS {what}: {e}"))?
        .body_mut()
        .read_to_vec()
        .map_err(|e| format!("IMDS {what}: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("IMDS {what}: {e}"))
}

/// A TD quote of `tdreport` from IMDS (`POST /acc/tdquote {"report": base64url}` →
/// `{"quote": base64url}`).
fn azure_td_quote(tdreport: &[u8]) -> Result<Vec<u8>, String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let v = imds(
        "tdquote",
        "/acc/tdquote",
        Some(serde_json::json!({ "report": b64.encode(tdreport) })),
    )?;
    let q = v["quote"].as_str().ok_or("IMDS tdquote: no quote")?;
    b64.decode(q.trim_end_matches('='))
        .map_err(|e| format!("IMDS tdquote quote: {e}"))
}

/// The VCEK (DER) from IMDS (THIM).
fn azure_vcek() -> Result<Vec<u8>, String> {
    let v = imds("THIM", "/metadata/THIM/amd/certification", None)?;
    let pem = v["vcekCert"].as_str().ok_or("IMDS THIM: no vcekCert")?;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    B64.decode(b64.trim())
        .map_err(|e| format!("IMDS THIM vcekCert: {e}"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The fixtures directory (`DCR_FIXTURES`, else `../shared/fixtures` beside the workspace).
    fn fixtures() -> std::path::PathBuf {
        std::env::var_os("DCR_FIXTURES")
            .map(Into::into)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
    }

    #[test]
    fn hcl_report_type_picks_the_azure_platform() {
        // Real HCL reports from Azure SNP and TDX CVMs (kinvolk azure-cvm-tooling test data).
        let d = fixtures().join("attest/azure/kinvolk");
        let snp = std::fs::read(d.join("hcl-report-snp.bin")).expect("fixture");
        let tdx = std::fs::read(d.join("hcl-report-tdx.bin")).expect("fixture");
        assert_eq!(hcl_report_type(&snp), Some(HCL_REPORT_SNP));
        assert_eq!(hcl_report_type(&tdx), Some(HCL_REPORT_TDX));
        // Not an HCL report, or cut short: no type (and so no Azure platform chosen).
        let mut bad = snp.clone();
        bad[0] ^= 1;
        assert_eq!(hcl_report_type(&bad), None);
        assert_eq!(hcl_report_type(&snp[..HCL_REPORT_TYPE_AT + 3]), None);
    }
}

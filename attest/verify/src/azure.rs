//! Azure confidential VMs (SEV-SNP with the paravisor): the HCL report from vTPM NV index
//! 0x01400001 (32-byte "HCLA" header, the hardware report, IGVM request data with the
//! runtime-claims JSON), whose SHA-256 is bound into REPORT_DATA; the claims carry
//! `HCLAkPub`, the vTPM attestation key that signs the TPM quote. Input: Trustee's
//! az-snp-vtpm evidence JSON (`version`, `tpm_quote{signature,message,pcrs}`, `hcl_report`,
//! `vcek`).

use base64::Engine;
use dcr_protocol::wire::{AzSnpVtpmEvidence, AzTdxVtpmEvidence, EvidenceVersion, VtpmQuote};
use sha2::{Digest, Sha256};

use crate::snp::{self, SnpPolicy};
use crate::tpm;
use crate::verdict::Verdict;

/// HCL report layout (kinvolk az-cvm-vtpm `hcl` module; notes §4.1).
const HCL_SIGNATURE: &[u8; 4] = b"HCLA";
const HW_REPORT: usize = 0x20;
const IGVM_REPORT_TYPE: usize = 0x4c8;
const IGVM_HASH_TYPE: usize = 0x4cc;
const IGVM_VAR_SIZE: usize = 0x4d0;
const IGVM_VAR_DATA: usize = 0x4d4;
/// report_type values.
pub const HCL_REPORT_SNP: u32 = 2;
pub const HCL_REPORT_TDX: u32 = 4;

/// Errors decoding Azure evidence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AzureError {
    #[error("HCL report: {0}")]
    Hcl(String),
    #[error("evidence JSON: field {field}: {reason}")]
    Evidence { field: &'static str, reason: String },
}

/// A decoded HCL report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HclReport {
    pub version: u32,
    pub report_type: u32,
    /// The hardware report area (1184 bytes: an SNP report, or a TDREPORT in its first 1024).
    pub hw_report: Vec<u8>,
    /// The runtime-claims JSON.
    pub var_data: Vec<u8>,
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Decode an HCL report, length-checked.
pub fn parse_hcl(b: &[u8]) -> Result<HclReport, AzureError> {
    let err = |s: &str| AzureError::Hcl(s.to_string());
    if b.len() < IGVM_VAR_DATA || &b[..4] != HCL_SIGNATURE {
        return Err(err("no HCLA signature (or shorter than its header)"));
    }
    let version = le32(b, 4).ok_or_else(|| err("truncated"))?;
    if !matches!(version, 1 | 2) {
        return Err(AzureError::Hcl(format!("version {version} (known: 1, 2)")));
    }
    let report_type = le32(b, IGVM_REPORT_TYPE).ok_or_else(|| err("truncated"))?;
    let hash_type = le32(b, IGVM_HASH_TYPE).ok_or_else(|| err("truncated"))?;
    if hash_type != 1 {
        return Err(AzureError::Hcl(format!(
            "report_data_hash_type {hash_type} (only 1 = SHA-256 is read)"
        )));
    }
    let size = le32(b, IGVM_VAR_SIZE).ok_or_else(|| err("truncated"))? as usize;
    let var_data = b
        .get(IGVM_VAR_DATA..IGVM_VAR_DATA + size)
        .ok_or_else(|| err("variable data beyond the report"))?
        .to_vec();
    Ok(HclReport {
        version,
        report_type,
        hw_report: b[HW_REPORT..HW_REPORT + snp::REPORT_SIZE].to_vec(),
        var_data,
    })
}

/// The `HCLAkPub` RSA key from the runtime claims.
pub fn hcl_ak_pub(var_data: &[u8]) -> Result<rsa::RsaPublicKey, AzureError> {
    let bad = |r: String| AzureError::Hcl(format!("runtime claims: {r}"));
    let v: serde_json::Value = serde_json::from_slice(var_data).map_err(|e| bad(e.to_string()))?;
    let key = v["keys"]
        .as_array()
        .and_then(|k| k.iter().find(|k| k["kid"] == "HCLAkPub"))
        .ok_or_else(|| bad("no HCLAkPub key".into()))?;
    if key["kty"] != "RSA" {
        return Err(bad("HCLAkPub is not an RSA key".into()));
    }
    let b64 = |f: &str| {
        key[f]
            .as_str()
            .and_then(|s| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(s.trim_end_matches('='))
                    .ok()
            })
            .ok_or_else(|| bad(format!("HCLAkPub.{f} is not base64url")))
    };
    let n = rsa::BigUint::from_bytes_be(&b64("n")?);
    let e = rsa::BigUint::from_bytes_be(&b64("e")?);
    rsa::RsaPublicKey::new(n, e).map_err(|e| bad(format!("HCLAkPub: {e}")))
}

/// Trustee's az-snp-vtpm evidence, decoded.
#[derive(Debug, Clone)]
pub struct SnpVtpmEvidence {
    pub hcl_report: Vec<u8>,
    pub vcek_der: Vec<u8>,
    pub quote_message: Vec<u8>,
    pub quote_signature: Vec<u8>,
    /// SHA-256 PCRs 0..23, in index order.
    pub pcrs: Vec<Vec<u8>>,
}

/// base64url (Trustee) or standard base64.
fn b64_any(field: &'static str, s: &str) -> Result<Vec<u8>, AzureError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(s))
        .map_err(|_| AzureError::Evidence {
            field,
            reason: "not base64".into(),
        })
}

/// A vTPM quote's message, signature and SHA-256 PCRs, decoded.
type QuoteParts = (Vec<u8>, Vec<u8>, Vec<Vec<u8>>);

/// The vTPM quote's message, signature and 24 SHA-256 PCRs.
fn decode_quote(q: &VtpmQuote) -> Result<QuoteParts, AzureError> {
    let hex_field = |field: &'static str, s: &str| {
        hex::decode(s).map_err(|_| AzureError::Evidence {
            field,
            reason: "missing or not hex".into(),
        })
    };
    let pcrs = q
        .pcrs
        .iter()
        .map(|p| hex::decode(p).ok().filter(|d| d.len() == 32))
        .collect::<Option<Vec<_>>>()
        .ok_or(AzureError::Evidence {
            field: "tpm_quote.pcrs",
            reason: "not 32-byte hex values".into(),
        })?;
    Ok((
        hex_field("message", &q.message)?,
        hex_field("signature", &q.signature)?,
        pcrs,
    ))
}

fn json_err(e: serde_json::Error) -> AzureError {
    AzureError::Evidence {
        field: "(document)",
        reason: e.to_string(),
    }
}

/// The version of a Trustee evidence document, read before its other fields (so a document of
/// another kind or version is named as such, not by its first missing field).
fn evidence_version(json: &[u8]) -> Result<Option<String>, AzureError> {
    #[derive(serde::Deserialize)]
    struct Head {
        version: Option<EvidenceVersion>,
    }
    let h: Head = serde_json::from_slice(json).map_err(json_err)?;
    Ok(h.version.as_ref().map(EvidenceVersion::text))
}

/// Decode Trustee az-snp-vtpm evidence (version 1 or 2) from its JSON.
pub fn parse_snp_evidence(json: &[u8]) -> Result<SnpVtpmEvidence, AzureError> {
    if !matches!(evidence_version(json)?.as_deref(), Some("1" | "2")) {
        return Err(AzureError::Evidence {
            field: "version",
            reason: "must be 1 or 2".into(),
        });
    }
    decode_snp_evidence(&serde_json::from_slice(json).map_err(json_err)?)
}

/// Decode typed az-snp-vtpm evidence (its base64 and hex fields).
pub fn decode_snp_evidence(ev: &AzSnpVtpmEvidence) -> Result<SnpVtpmEvidence, AzureError> {
    let version = ev.version.as_ref().map(EvidenceVersion::text);
    if !matches!(version.as_deref(), Some("1" | "2")) {
        return Err(AzureError::Evidence {
            field: "version",
            reason: "must be 1 or 2".into(),
        });
    }
    let hcl_report = b64_any("hcl_report", &ev.hcl_report)?;
    let vcek_der = b64_any("vcek", &ev.vcek)?;
    let (quote_message, quote_signature, pcrs) = decode_quote(&ev.tpm_quote)?;
    Ok(SnpVtpmEvidence {
        hcl_report,
        vcek_der,
        quote_message,
        quote_signature,
        pcrs,
    })
}

/// Verify Azure SNP vTPM evidence: the SNP report (prefixed `snp.`), the HCL binding, and the
/// vTPM quote by HCLAkPub with the nonce and PCRs (prefixed `vtpm.`).
pub fn verify_snp(
    ev: &SnpVtpmEvidence,
    nonce: &[u8],
    now: u64,
    snp_policy: &SnpPolicy,
    expected_pcrs: &tpm::ExpectedPcrs,
) -> Verdict {
    verify_snp_evidence(ev, nonce, now, snp_policy, expected_pcrs).0
}

/// [`verify_snp`], also returning the SEV-SNP report as decoded (once) for the verdict.
pub fn verify_snp_evidence(
    ev: &SnpVtpmEvidence,
    nonce: &[u8],
    now: u64,
    snp_policy: &SnpPolicy,
    expected_pcrs: &tpm::ExpectedPcrs,
) -> (Verdict, Option<snp::SnpFacts>) {
    let mut v = Verdict::default();
    let Some(hcl) = decode_hcl(&mut v, &ev.hcl_report, HCL_REPORT_SNP, "SNP") else {
        return (v, None);
    };
    let (report_verdict, facts) =
        snp::verify_report(&hcl.hw_report, &ev.vcek_der, None, now, snp_policy);
    push_prefixed(&mut v, "snp", report_verdict);
    // REPORT_DATA = SHA-256(runtime claims) ‖ 32 zero bytes.
    hcl_binding(
        &mut v,
        &hcl.hw_report[0x50..0x90],
        &hcl.var_data,
        "REPORT_DATA",
    );
    vtpm_checks(
        &mut v,
        &hcl.var_data,
        &ev.quote_message,
        &ev.quote_signature,
        &ev.pcrs,
        nonce,
        expected_pcrs,
    );
    (v, facts)
}

/// `hcl.binding`: the hardware report's 64-byte report data `rd` is SHA-256 of the HCL's
/// runtime claims followed by 32 zero bytes (both SNP and TDX CVMs bind them this way).
fn hcl_binding(v: &mut Verdict, rd: &[u8], var_data: &[u8], name: &str) {
    let want = Sha256::digest(var_data);
    v.push(
        "hcl.binding",
        rd[..32] == want[..] && rd[32..].iter().all(|&b| b == 0),
        format!(
            "{name} {} vs SHA-256(runtime claims) {}",
            hex::encode(&rd[..32]),
            hex::encode(want)
        ),
    );
}

/// Decode the HCL report and check its hardware report type (`hcl.decode`); None (with the
/// failed check recorded) if it does not decode.
fn decode_hcl(v: &mut Verdict, bytes: &[u8], want: u32, name: &str) -> Option<HclReport> {
    match parse_hcl(bytes) {
        Ok(hcl) => {
            v.push(
                "hcl.decode",
                hcl.report_type == want,
                format!(
                    "version {}, report type {} ({want} = {name})",
                    hcl.version, hcl.report_type
                ),
            );
            Some(hcl)
        }
        Err(e) => {
            v.push("hcl.decode", false, e.to_string());
            None
        }
    }
}

/// Checks `from` under `prefix.` (e.g. the SNP report's checks as `snp.*`).
fn push_prefixed(v: &mut Verdict, prefix: &str, from: Verdict) {
    for c in from.checks {
        v.checks.push(crate::verdict::Check {
            name: format!("{prefix}.{}", c.name),
            ..c
        });
    }
}

/// HCLAkPub from the runtime claims, then the vTPM quote it signed over `nonce` (as
/// `vtpm.*`): shared by the SNP and TDX evidence of Azure CVMs.
fn vtpm_checks(
    v: &mut Verdict,
    var_data: &[u8],
    message: &[u8],
    signature: &[u8],
    pcrs: &[Vec<u8>],
    nonce: &[u8],
    expected_pcrs: &tpm::ExpectedPcrs,
) {
    use rsa::pkcs8::EncodePublicKey;
    let ak_der = match hcl_ak_pub(var_data).and_then(|k| {
        k.to_public_key_der()
            .map_err(|e| AzureError::Hcl(e.to_string()))
    }) {
        Ok(d) => d.as_bytes().to_vec(),
        Err(e) => {
            v.push("hcl.ak", false, e.to_string());
            return;
        }
    };
    v.push("hcl.ak", true, "HCLAkPub from the runtime claims");
    let quote = tpm::verify(
        &ak_der,
        message,
        signature,
        &pcrs.concat(),
        nonce,
        tpm::TPM_ALG_SHA256,
        expected_pcrs,
    );
    push_prefixed(v, "vtpm", quote);
}

/// Trustee's az-tdx-vtpm evidence (version 1), decoded: the HCL report (with a TDREPORT), the
/// TD quote fetched from IMDS, and the vTPM quote.
#[derive(Debug, Clone)]
pub struct TdxVtpmEvidence {
    pub hcl_report: Vec<u8>,
    pub td_quote: Vec<u8>,
    pub quote_message: Vec<u8>,
    pub quote_signature: Vec<u8>,
    pub pcrs: Vec<Vec<u8>>,
}

/// Decode Trustee az-tdx-vtpm evidence (version 1) from its JSON.
pub fn parse_tdx_evidence(json: &[u8]) -> Result<TdxVtpmEvidence, AzureError> {
    if evidence_version(json)?.as_deref() != Some("1") {
        return Err(AzureError::Evidence {
            field: "version",
            reason: "must be 1".into(),
        });
    }
    decode_tdx_evidence(&serde_json::from_slice(json).map_err(json_err)?)
}

/// Decode typed az-tdx-vtpm evidence.
pub fn decode_tdx_evidence(ev: &AzTdxVtpmEvidence) -> Result<TdxVtpmEvidence, AzureError> {
    if ev.version.as_ref().map(EvidenceVersion::text).as_deref() != Some("1") {
        return Err(AzureError::Evidence {
            field: "version",
            reason: "must be 1".into(),
        });
    }
    let td_quote = ev.td_quote.as_deref().ok_or(AzureError::Evidence {
        field: "td_quote",
        reason: "missing (not az-tdx-vtpm evidence)".into(),
    })?;
    let td_quote = b64_any("td_quote", td_quote)?;
    let hcl_report = b64_any("hcl_report", &ev.hcl_report)?;
    let (quote_message, quote_signature, pcrs) = decode_quote(&ev.tpm_quote)?;
    Ok(TdxVtpmEvidence {
        hcl_report,
        td_quote,
        quote_message,
        quote_signature,
        pcrs,
    })
}

/// REPORTDATA of a TD quote v4/v5 (header 48 bytes, v5 body descriptor 6 bytes, TD report
/// REPORTDATA at body offset 520).
fn td_quote_report_data(q: &[u8]) -> Option<&[u8]> {
    let version = u16::from_le_bytes([*q.first()?, *q.get(1)?]);
    let body = match version {
        4 => 48,
        5 => 48 + 6,
        _ => return None,
    };
    q.get(body + 520..body + 584)
}

/// Verify Azure TDX evidence: the HCL report (type TDX) binds the runtime claims in its
/// TDREPORT's REPORTDATA; the TD quote carries the same REPORTDATA and verifies against
/// `collateral` (without collateral that check fails: no decision without Intel's
/// collateral); HCLAkPub signs the vTPM quote over `nonce`.
pub fn verify_tdx(
    ev: &TdxVtpmEvidence,
    nonce: &[u8],
    now: u64,
    collateral: Option<&[u8]>,
    tdx_policy: &crate::tdx::TdxPolicy,
    expected_pcrs: &tpm::ExpectedPcrs,
) -> Verdict {
    let mut v = Verdict::default();
    let Some(hcl) = decode_hcl(&mut v, &ev.hcl_report, HCL_REPORT_TDX, "TDX") else {
        return v;
    };
    // TDREPORT: REPORTMACSTRUCT first; its REPORTDATA at offset 128.
    let rd = &hcl.hw_report[128..192];
    hcl_binding(&mut v, rd, &hcl.var_data, "TDREPORT REPORTDATA");
    let qrd = td_quote_report_data(&ev.td_quote);
    v.push(
        "td_quote.binding",
        qrd == Some(rd),
        "the TD quote's REPORTDATA equals the HCL TDREPORT's".to_string(),
    );
    match collateral {
        Some(c) => {
            push_prefixed(
                &mut v,
                "tdx",
                crate::tdx::verify(&ev.td_quote, c, now, tdx_policy),
            );
        }
        None => {
            v.push(
                "tdx.collateral",
                false,
                "no collateral for this TD quote (give --collateral): its TCB cannot be judged",
            );
        }
    }
    vtpm_checks(
        &mut v,
        &hcl.var_data,
        &ev.quote_message,
        &ev.quote_signature,
        &ev.pcrs,
        nonce,
        expected_pcrs,
    );
    v
}

//! Evidence as the guest collects it, turned into the wire format the service verifies
//! (docs/protocol.md). Pure: the guest reads the bytes (configfs-tsm, /dev/sev-guest, TPM),
//! these functions shape them, and tests feed real reports through the same code.
//!
//! configfs-tsm (Linux Documentation/ABI/testing/configfs-tsm-report): write 64 bytes of
//! REPORT_DATA to `inblob`, read `outblob` (SEV-SNP: the 1184-byte ATTESTATION_REPORT; TDX:
//! the quote) and, for SEV-SNP, `auxblob`: the certificate table of SNP_GET_EXT_REPORT
//! (AMD SEV-SNP firmware ABI §7.3 / GHCB spec §4.1.8.1: entries of GUID[16] ‖ offset u32 ‖
//! length u32, little-endian, ended by an all-zero entry; offsets from the table's start).

use base64::Engine;
use uuid::uuid;

use crate::wire::{
    AzSnpVtpmEvidence, AzTdxVtpmEvidence, EvidenceVersion, SnpEvidence, TdxEvidence, VtpmQuote,
};

/// GUIDs in RFC 4122 byte order (as virtee `sev` reads and writes the table for snpguest).
/// VCEK certificate GUID 63da758d-e664-4564-adc5-f4b93be8accd.
pub const GUID_VCEK: [u8; 16] = uuid!("63da758d-e664-4564-adc5-f4b93be8accd").into_bytes();
/// VLEK certificate GUID a8074bc2-a25a-483e-aae6-39c045a0b8a1.
pub const GUID_VLEK: [u8; 16] = uuid!("a8074bc2-a25a-483e-aae6-39c045a0b8a1").into_bytes();
/// ASK GUID 4ab7b379-bbac-4fe4-a02f-05aef327c782.
pub const GUID_ASK: [u8; 16] = uuid!("4ab7b379-bbac-4fe4-a02f-05aef327c782").into_bytes();
/// ARK GUID c0b406a4-a803-4952-9743-3fb6014cd0ae.
pub const GUID_ARK: [u8; 16] = uuid!("c0b406a4-a803-4952-9743-3fb6014cd0ae").into_bytes();

pub const SNP_REPORT_LEN: usize = 1184;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EvidenceError {
    #[error("SNP report: {0} bytes, expected 1184")]
    ReportLength(usize),
    #[error("certificate table: {0}")]
    CertTable(String),
    #[error("certificate table has no VCEK or VLEK")]
    NoVek,
    #[error("TDX quote: {0}")]
    Quote(String),
}

/// One certificate table entry: (GUID, certificate bytes).
pub type CertEntry = ([u8; 16], Vec<u8>);

/// The certificate table entries.
pub fn parse_cert_table(table: &[u8]) -> Result<Vec<CertEntry>, EvidenceError> {
    let bad = |s: String| EvidenceError::CertTable(s);
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let e = table.get(pos..pos + 24).ok_or_else(|| {
            bad(format!(
                "entry at {pos} is truncated (no terminating zero entry)"
            ))
        })?;
        let g: [u8; 16] = e[..16].try_into().expect("16");
        let off = u32::from_le_bytes(e[16..20].try_into().expect("4")) as usize;
        let len = u32::from_le_bytes(e[20..24].try_into().expect("4")) as usize;
        if g == [0u8; 16] && off == 0 && len == 0 {
            return Ok(out);
        }
        let data = off
            .checked_add(len)
            .and_then(|end| table.get(off..end))
            .ok_or_else(|| {
                bad(format!(
                    "entry at {pos}: bytes {off}+{len} outside the {}-byte table",
                    table.len()
                ))
            })?;
        out.push((g, data.to_vec()));
        pos += 24;
        if out.len() > 64 {
            return Err(bad("more than 64 entries".into()));
        }
    }
}

/// Build a certificate table (what a host provides; used by tests).
pub fn build_cert_table(entries: &[([u8; 16], &[u8])]) -> Vec<u8> {
    let head = 24 * (entries.len() + 1);
    let mut t = Vec::new();
    let mut data = Vec::new();
    for (g, bytes) in entries {
        t.extend_from_slice(g);
        t.extend_from_slice(&((head + data.len()) as u32).to_le_bytes());
        t.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        data.extend_from_slice(bytes);
    }
    t.extend_from_slice(&[0u8; 24]);
    t.extend_from_slice(&data);
    t
}

/// SEV-SNP evidence from configfs-tsm's outblob (report) and auxblob (certificate table).
pub fn snp_from_tsm(outblob: &[u8], auxblob: &[u8]) -> Result<SnpEvidence, EvidenceError> {
    if outblob.len() != SNP_REPORT_LEN {
        return Err(EvidenceError::ReportLength(outblob.len()));
    }
    let certs = parse_cert_table(auxblob)?;
    let vek = certs
        .iter()
        .find(|(g, _)| *g == GUID_VCEK)
        .or_else(|| certs.iter().find(|(g, _)| *g == GUID_VLEK))
        .ok_or(EvidenceError::NoVek)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(SnpEvidence {
        report: b64.encode(outblob),
        vcek: b64.encode(&vek.1),
    })
}

/// TDX evidence from configfs-tsm's outblob (a quote v4 or v5).
pub fn tdx_from_tsm(outblob: &[u8]) -> Result<TdxEvidence, EvidenceError> {
    if outblob.len() < 48 {
        return Err(EvidenceError::Quote(format!(
            "{} bytes, shorter than a quote header",
            outblob.len()
        )));
    }
    let version = u16::from_le_bytes([outblob[0], outblob[1]]);
    let tee = u32::from_le_bytes(outblob[4..8].try_into().expect("4"));
    if !matches!(version, 4 | 5) || tee != 0x81 {
        return Err(EvidenceError::Quote(format!(
            "version {version}, TEE type {tee:#x}: not a TDX quote v4/v5"
        )));
    }
    Ok(TdxEvidence {
        quote: base64::engine::general_purpose::STANDARD.encode(outblob),
    })
}

/// Azure SEV-SNP CVM evidence in Trustee's az-snp-vtpm format (version 2): the HCL report
/// (vTPM NV index 0x01400001), the VCEK (DER; Azure's IMDS THIM endpoint serves it), and a
/// vTPM quote by the HCL-bound AK (persistent handle 0x81000003) over all 24 SHA-256 PCRs
/// with the binding as qualifying data.
pub fn az_snp_vtpm(
    hcl_report: &[u8],
    vcek_der: &[u8],
    quote_message: &[u8],
    quote_signature: &[u8],
    pcrs: &[Vec<u8>],
) -> Result<AzSnpVtpmEvidence, EvidenceError> {
    // Trustee writes these two fields in URL-safe base64 without padding.
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    Ok(AzSnpVtpmEvidence {
        version: Some(EvidenceVersion::Number(2)),
        tpm_quote: vtpm_quote(quote_message, quote_signature, pcrs)?,
        hcl_report: b64.encode(hcl_report),
        vcek: b64.encode(vcek_der),
    })
}

/// The vTPM quote part Trustee's Azure evidence shares: hex message, signature and 24 PCRs.
fn vtpm_quote(
    quote_message: &[u8],
    quote_signature: &[u8],
    pcrs: &[Vec<u8>],
) -> Result<VtpmQuote, EvidenceError> {
    if pcrs.len() != 24 || pcrs.iter().any(|p| p.len() != 32) {
        return Err(EvidenceError::Quote(format!(
            "{} PCR values: az-snp-vtpm evidence carries SHA-256 PCRs 0..23",
            pcrs.len()
        )));
    }
    Ok(VtpmQuote {
        signature: hex::encode(quote_signature),
        message: hex::encode(quote_message),
        pcrs: pcrs.iter().map(hex::encode).collect(),
    })
}

/// Azure TDX CVM evidence in Trustee's az-tdx-vtpm format (version 1): the HCL report (whose
/// hardware report is a TDREPORT), the TD quote Azure's IMDS made of that TDREPORT
/// (`POST /acc/tdquote`), and the vTPM quote as for [`az_snp_vtpm`].
pub fn az_tdx_vtpm(
    hcl_report: &[u8],
    td_quote: &[u8],
    quote_message: &[u8],
    quote_signature: &[u8],
    pcrs: &[Vec<u8>],
) -> Result<AzTdxVtpmEvidence, EvidenceError> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    Ok(AzTdxVtpmEvidence {
        version: Some(EvidenceVersion::Number(1)),
        tpm_quote: vtpm_quote(quote_message, quote_signature, pcrs)?,
        hcl_report: b64.encode(hcl_report),
        td_quote: Some(b64.encode(td_quote)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_in_table_order() {
        // 63da758d-e664-4564-adc5-… is stored 63 da 75 8d e6 64 45 64 ad c5 …
        assert_eq!(
            &GUID_VCEK[..10],
            &[0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5]
        );
    }

    #[test]
    fn table_round_trips_and_rejects_garbage() {
        let t = build_cert_table(&[(GUID_ARK, b"ark"), (GUID_VCEK, b"vcek!")]);
        let e = parse_cert_table(&t).unwrap();
        assert_eq!(e[1], (GUID_VCEK, b"vcek!".to_vec()));
        assert!(parse_cert_table(&t[..30]).is_err());
        let mut bad = t.clone();
        bad[16] = 0xff; // offset beyond the table
        assert!(parse_cert_table(&bad).is_err());
        assert_eq!(
            snp_from_tsm(&[0u8; 100], &t).unwrap_err(),
            EvidenceError::ReportLength(100)
        );
        let no_vek = build_cert_table(&[(GUID_ARK, b"ark")]);
        assert_eq!(
            snp_from_tsm(&[0u8; 1184], &no_vek).unwrap_err(),
            EvidenceError::NoVek
        );
    }
}

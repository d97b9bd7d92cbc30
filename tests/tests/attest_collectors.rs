//! guest-init's SEV-SNP and TDX evidence collectors (dcr_protocol::evidence, fed by
//! configfs-tsm's outblob/auxblob in the guest) produce exactly what the key-release service
//! verifies: real reports from ../shared/fixtures go through the collector and then through
//! the service's verifier (with the binding set to the report's own REPORT_DATA, since no
//! SNP/TDX hardware is here to bind ours).

use base64::Engine;
use dcr_protocol::evidence::*;
use dcr_protocol::wire::Tee;
use dcr_service::verify_evidence;
use dcr_tests::*;
use dcr_verify::reference::Claims;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const JAN_2026: u64 = 1_767_225_600; // `date -u -d 2026-01-01 +%s`
const JUN_2025: u64 = 1_750_809_600; // `date -u -d 2025-06-25 +%s`

fn pem_der(pem: &[u8]) -> Vec<Vec<u8>> {
    dcr_verify::snp::pem_certs(pem).unwrap()
}

#[test]
fn snp_report_and_certificate_table_verify_at_the_service() {
    let Some(fx) = fixtures("snp_collector") else {
        return;
    };
    let d = fx.join("attest/snp/virtee-sev");
    let report = std::fs::read(d.join("report_milan.bin")).unwrap();
    let vcek = std::fs::read(d.join("vcek_milan.der")).unwrap();
    let chain = pem_der(&std::fs::read(d.join("cert_chain_milan.pem")).unwrap());
    // The host's certificate table, as SNP_GET_EXT_REPORT / configfs-tsm auxblob carry it.
    let table = build_cert_table(&[
        (GUID_ASK, &chain[0]),
        (GUID_ARK, &chain[1]),
        (GUID_VCEK, &vcek),
    ]);
    let ev = snp_from_tsm(&report, &table).unwrap();
    assert_eq!(B64.decode(&ev.vcek).unwrap(), vcek);
    let json = serde_json::to_value(&ev).unwrap();
    let rd: [u8; 64] = report[0x50..0x90].try_into().unwrap();
    let claims = verify_evidence(Tee::Snp, &json, &rd, JAN_2026, None).unwrap();
    let measurement: [u8; 48] = report[0x90..0xC0].try_into().unwrap();
    assert_eq!(
        claims,
        Claims::Snp {
            launch_digest: measurement
        }
    );
    // Another binding is refused as such; a flipped report byte is refused.
    let mut other = rd;
    other[0] ^= 1;
    let (code, _) = verify_evidence(Tee::Snp, &json, &other, JAN_2026, None).unwrap_err();
    assert_eq!(code, "binding_mismatch");
    let mut bad = report.clone();
    bad[0x95] ^= 1;
    let json = serde_json::to_value(snp_from_tsm(&bad, &table).unwrap()).unwrap();
    let (code, msg) = verify_evidence(Tee::Snp, &json, &rd, JAN_2026, None).unwrap_err();
    assert_eq!(code, "evidence_invalid", "{msg}");
    // A table without a VCEK/VLEK, or a truncated report, never leaves the collector.
    let no_vek = build_cert_table(&[(GUID_ARK, &chain[1])]);
    assert_eq!(
        snp_from_tsm(&report, &no_vek).unwrap_err(),
        EvidenceError::NoVek
    );
    assert!(snp_from_tsm(&report[..1000], &table).is_err());
}

#[test]
fn tdx_quote_verifies_at_the_service() {
    let Some(fx) = fixtures("tdx_collector") else {
        return;
    };
    let d = fx.join("attest/tdx/dcap-qvl");
    let quote = std::fs::read(d.join("tdx_quote")).unwrap();
    let coll = std::fs::read(d.join("tdx_quote_collateral.json")).unwrap();
    let ev = tdx_from_tsm(&quote).unwrap();
    let json = serde_json::to_value(&ev).unwrap();
    // Quote v4: 48-byte header, then the TD report (MRTD at +136, REPORTDATA at +520).
    assert_eq!(u16::from_le_bytes([quote[0], quote[1]]), 4);
    let rd: [u8; 64] = quote[48 + 520..48 + 584].try_into().unwrap();
    let mrtd: [u8; 48] = quote[48 + 136..48 + 184].try_into().unwrap();
    let claims = verify_evidence(Tee::Tdx, &json, &rd, JUN_2025, Some(&coll)).unwrap();
    assert_eq!(claims, Claims::Tdx { mrtd });
    let mut other = rd;
    other[63] ^= 1;
    let (code, _) = verify_evidence(Tee::Tdx, &json, &other, JUN_2025, Some(&coll)).unwrap_err();
    assert_eq!(code, "binding_mismatch");
    // Without collateral the service cannot judge it, and says so.
    let (code, msg) = verify_evidence(Tee::Tdx, &json, &rd, JUN_2025, None).unwrap_err();
    assert!(
        code == "evidence_invalid" && msg.contains("collateral"),
        "{msg}"
    );
    // Not a TDX quote (an SGX quote from the same fixtures) never leaves the collector.
    let sgx = std::fs::read(d.join("sgx_quote")).unwrap();
    assert!(tdx_from_tsm(&sgx).is_err());
}

/// Trustee Azure evidence taken apart as guest-init reads it: the JSON document, two
/// base64url fields by name, and the vTPM quote (message, signature, PCRs 0..23).
struct AzureParts {
    ev: serde_json::Value,
    fields: Vec<Vec<u8>>,
    message: Vec<u8>,
    signature: Vec<u8>,
    pcrs: Vec<Vec<u8>>,
}

fn azure_parts(path: &std::path::Path, fields: [&str; 2]) -> AzureParts {
    let ev: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let h = |s: &serde_json::Value| hex::decode(s.as_str().unwrap()).unwrap();
    let b64u = |f: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(ev[f].as_str().unwrap().trim_end_matches('='))
            .unwrap()
    };
    AzureParts {
        fields: fields.iter().map(|f| b64u(f)).collect(),
        message: h(&ev["tpm_quote"]["message"]),
        signature: h(&ev["tpm_quote"]["signature"]),
        pcrs: ev["tpm_quote"]["pcrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(h)
            .collect(),
        ev,
    }
}

#[test]
fn azure_snp_vtpm_parts_verify_at_the_service() {
    // Trustee's real az-snp-vtpm evidence taken apart into what guest-init reads on Azure
    // (HCL report from NV 0x01400001, VCEK, vTPM quote message/signature, PCRs 0..23) and put
    // back together by the collector: the service verifies it.
    let Some(fx) = fixtures("azure_collector") else {
        return;
    };
    let AzureParts {
        ev,
        fields,
        message,
        signature,
        pcrs,
    } = azure_parts(
        &fx.join("attest/azure/trustee-az-snp-vtpm/evidence-v2.json"),
        ["hcl_report", "vcek"],
    );
    let (hcl, vcek) = (&fields[0], &fields[1]);
    // The evidence as the guest sends it (JSON).
    let json =
        serde_json::to_value(az_snp_vtpm(hcl, vcek, &message, &signature, &pcrs).unwrap()).unwrap();
    // Field for field what Trustee wrote (its fixture), apart from encoding details we share.
    assert_eq!(
        json["hcl_report"],
        ev["hcl_report"].as_str().unwrap().trim_end_matches('=')
    );
    assert_eq!(json["tpm_quote"]["pcrs"], ev["tpm_quote"]["pcrs"]);
    let nonce = dcr_verify::tpm::parse_attest(&message).unwrap().extra_data;
    let claims = verify_evidence(Tee::AzSnpVtpm, &json, &nonce, JAN_2026, None).unwrap();
    let Claims::Azure { pcrs: got } = claims else {
        panic!("Azure vTPM claims")
    };
    assert_eq!(got.len(), 24);
    assert_eq!(got[4].1, pcrs[4]);
    let mut other = nonce.clone();
    other[0] ^= 1;
    let (code, _) = verify_evidence(Tee::AzSnpVtpm, &json, &other, JAN_2026, None).unwrap_err();
    assert_eq!(code, "binding_mismatch");
    assert!(az_snp_vtpm(hcl, vcek, &message, &signature, &pcrs[..23]).is_err());
}

#[test]
fn azure_tdx_vtpm_parts_reassemble_and_fail_closed_without_collateral() {
    // Trustee's real az-tdx-vtpm evidence taken apart into what guest-init reads on an Azure
    // TDX CVM (HCL report, the IMDS TD quote, the vTPM quote) and put back together: the same
    // document, and the service refuses it for the one thing it cannot judge here (no Intel
    // collateral for that platform), not for the binding or the quote.
    let Some(fx) = fixtures("azure_tdx_collector") else {
        return;
    };
    let AzureParts {
        ev,
        fields,
        message,
        signature,
        pcrs,
    } = azure_parts(
        &fx.join("attest/azure/trustee-az-tdx-vtpm/evidence-v1.json"),
        ["hcl_report", "td_quote"],
    );
    let (hcl, td_quote) = (&fields[0], &fields[1]);
    let json = serde_json::to_value(
        dcr_protocol::evidence::az_tdx_vtpm(hcl, td_quote, &message, &signature, &pcrs).unwrap(),
    )
    .unwrap();
    let norm = |v: &serde_json::Value| v.as_str().unwrap().trim_end_matches('=').to_string();
    assert_eq!(json["version"], 1);
    assert_eq!(norm(&json["hcl_report"]), norm(&ev["hcl_report"]));
    assert_eq!(norm(&json["td_quote"]), norm(&ev["td_quote"]));
    assert_eq!(json["tpm_quote"], ev["tpm_quote"]);
    assert!(json.get("vcek").is_none());
    let nonce = dcr_verify::tpm::parse_attest(&message).unwrap().extra_data;
    let (code, msg) = verify_evidence(Tee::AzTdxVtpm, &json, &nonce, JAN_2026, None).unwrap_err();
    assert_eq!(code, "evidence_invalid", "{msg}");
    assert!(msg.contains("collateral"), "{msg}");
    let mut other = nonce.clone();
    other[0] ^= 1;
    let (code, msg) = verify_evidence(Tee::AzTdxVtpm, &json, &other, JAN_2026, None).unwrap_err();
    assert_ne!(code, "ok");
    assert!(
        msg.contains("qualifying_data") || code == "binding_mismatch",
        "{code}: {msg}"
    );
}

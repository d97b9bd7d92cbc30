//! `dcr-attest verify azure` on Trustee's real az-snp-vtpm evidence (HCL report with a Milan
//! SNP report, VCEK, vTPM quote by HCLAkPub): accepted end to end; a wrong nonce, tampered
//! runtime claims, a tampered PCR and a foreign VCEK are refused with the check named. Also the
//! HCL binding of the kinvolk SNP and TDX HCL reports.

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine;
use dcr_tests::*;

fn verify(evidence: &Path, nonce: &str, extra: &[String]) -> Output {
    Command::new(dcr_attest())
        .args(["verify", "azure"])
        .arg(format!("--evidence={}", evidence.display()))
        .arg(format!("--qualification={nonce}"))
        .arg("--at=2026-01-01T00:00:00Z")
        .args(extra)
        .output()
        .unwrap()
}

/// The quote's extraData. The fixture does not publish the nonce separately, so the tests
/// take it from the quote; the nonce check itself is shown to bite with a wrong one.
fn nonce_of(ev: &serde_json::Value) -> String {
    let m = hex_to_bytes(ev["tpm_quote"]["message"].as_str().unwrap());
    let a = dcr_verify::tpm::parse_attest(&m).unwrap();
    a.extra_data.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_to_bytes(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn trustee_az_snp_vtpm_evidence_verifies_and_tampering_is_refused() {
    let Some(fx) = fixtures("trustee_az_snp_vtpm_evidence_verifies_and_tampering_is_refused")
    else {
        return;
    };
    let path = fx.join("attest/azure/trustee-az-snp-vtpm/evidence-v2.json");
    let ev: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let nonce = nonce_of(&ev);
    let o = verify(&path, &nonce, &[]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    for c in [
        "snp.report.signature",
        "snp.chain",
        "hcl.binding",
        "vtpm.signature",
        "vtpm.pcrs.digest",
    ] {
        assert!(
            stdout(&o).contains(&format!("ok   {c}")),
            "{c}: {}",
            stdout(&o)
        );
    }

    refused_for(&verify(&path, "00ff", &[]), &["vtpm.qualifying_data"]);

    let t = TempDir::new("azure");
    let write = |name: &str, v: &serde_json::Value| {
        let p = t.path().join(name);
        std::fs::write(&p, serde_json::to_vec(v).unwrap()).unwrap();
        p
    };
    // Runtime claims changed after the hardware report was made: the binding breaks.
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut hcl = b64
        .decode(ev["hcl_report"].as_str().unwrap().trim_end_matches('='))
        .unwrap();
    let claims_at = 0x4d4 + 20;
    hcl[claims_at] ^= 0x01;
    let mut e2 = ev.clone();
    e2["hcl_report"] = b64.encode(&hcl).into();
    refused_for(
        &verify(&write("claims.json", &e2), &nonce, &[]),
        &["hcl.binding"],
    );

    // A PCR value changed: no longer what the AK signed.
    let mut e3 = ev.clone();
    let p0 = e3["tpm_quote"]["pcrs"][4].as_str().unwrap().to_string();
    let flipped = format!(
        "{}{}",
        if p0.starts_with('0') { "1" } else { "0" },
        &p0[1..]
    );
    e3["tpm_quote"]["pcrs"][4] = flipped.into();
    refused_for(
        &verify(&write("pcr.json", &e3), &nonce, &[]),
        &["vtpm.pcrs.digest"],
    );

    // Another machine's VCEK.
    let other = fx.join("attest/snp/virtee-sev/vcek_milan.der");
    refused_for(
        &verify(&path, &nonce, &[format!("--vcek={}", other.display())]),
        &["snp.report.signature", "snp.vek.hwid"],
    );

    // Not evidence at all.
    let o = verify(
        &write("junk.json", &serde_json::json!({"version": "9"})),
        &nonce,
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("version"), "{}", stderr(&o));
}

#[test]
fn kinvolk_hcl_reports_bind_their_runtime_claims() {
    use sha2::Digest;
    let Some(fx) = fixtures("kinvolk_hcl_reports_bind_their_runtime_claims") else {
        return;
    };
    for (f, ty, rd_at) in [
        ("hcl-report-snp.bin", 2u32, 0x20 + 0x50),
        ("hcl-report-tdx.bin", 4, 0x20 + 128),
    ] {
        let b = std::fs::read(fx.join("attest/azure/kinvolk").join(f)).unwrap();
        let h = dcr_verify::azure::parse_hcl(&b).unwrap();
        assert_eq!(h.report_type, ty, "{f}");
        let digest = sha2::Sha256::digest(&h.var_data);
        assert_eq!(
            &b[rd_at..rd_at + 32],
            &digest[..],
            "{f}: REPORT_DATA binds the claims"
        );
        dcr_verify::azure::hcl_ak_pub(&h.var_data).expect("HCLAkPub");
        let mut bad = b.clone();
        bad[..4].copy_from_slice(b"XXXX");
        assert!(dcr_verify::azure::parse_hcl(&bad).is_err());
        assert!(dcr_verify::azure::parse_hcl(&b[..100]).is_err());
    }
}

#[test]
fn trustee_az_tdx_vtpm_evidence_binds_and_fails_closed_without_collateral() {
    // Azure TDX (Trustee az-tdx-vtpm JSON): the HCL TDREPORT binds the runtime claims, the TD
    // quote from IMDS carries the same REPORTDATA, HCLAkPub signs the vTPM quote; the fixtures
    // hold no Intel collateral for this quote's platform, so the TD quote's TCB cannot be
    // judged and the verdict is a refusal naming exactly that check.
    let Some(fx) = fixtures("trustee_az_tdx_vtpm_evidence") else {
        return;
    };
    let path = fx.join("attest/azure/trustee-az-tdx-vtpm/evidence-v1.json");
    let ev: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let nonce = nonce_of(&ev);
    let o = verify(&path, &nonce, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    let fails: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fails.len(), 1, "{out}");
    assert!(fails[0].starts_with("FAIL tdx.collateral"), "{out}");
    for check in [
        "ok   hcl.binding",
        "ok   td_quote.binding",
        "ok   vtpm.signature",
        "ok   vtpm.qualifying_data",
        "ok   vtpm.pcrs.digest",
    ] {
        assert!(out.contains(check), "{check} in {out}");
    }
    // Collateral of another platform (dcap-qvl's fixture) does not make it pass.
    let coll = fx.join("attest/tdx/dcap-qvl/tdx_quote_collateral.json");
    let o = verify(&path, &nonce, &[format!("--collateral={}", coll.display())]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("FAIL tdx."), "{}", stdout(&o));
    // A TD quote whose REPORTDATA is not the HCL report's is refused for that.
    let t = TempDir::new("az-tdx");
    let mut e2 = ev.clone();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut q = b64
        .decode(ev["td_quote"].as_str().unwrap().trim_end_matches('='))
        .unwrap();
    q[48 + 520] ^= 1;
    e2["td_quote"] = b64.encode(q).into();
    let p2 = t.path().join("e2.json");
    std::fs::write(&p2, e2.to_string()).unwrap();
    let o = verify(&p2, &nonce, &[]);
    assert!(
        stdout(&o).contains("FAIL td_quote.binding"),
        "{}",
        stdout(&o)
    );
    // A wrong nonce is refused by the vTPM quote check.
    let o = verify(&path, "00", &[]);
    assert!(
        stdout(&o).contains("FAIL vtpm.qualifying_data"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn expected_azure_pcrs_are_required() {
    // `--expected measurements.json` compares the quoted PCRs with azure.pcrs (not tpm.pcrs):
    // reference values equal to the evidence's PCRs 9, 11 and 23 pass; one flipped value fails
    // naming that PCR; a measurements.json without an azure section is an error.
    let Some(fx) = fixtures("expected_azure_pcrs_are_required") else {
        return;
    };
    let path = fx.join("attest/azure/trustee-az-snp-vtpm/evidence-v2.json");
    let ev: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let nonce = nonce_of(&ev);
    let pcr = |i: usize| ev["tpm_quote"]["pcrs"][i].as_str().unwrap().to_string();
    let t = TempDir::new("az-expected");
    let doc = |azure: Option<serde_json::Value>| {
        let mut v = serde_json::json!({
            "schema_version": dcr_protocol::measurements::SCHEMA_VERSION,
            "recipe": "r", "recipe_version": "1", "source_date_epoch": 1,
            "kernel_release": "6.12", "cmdline": "console=ttyS0",
            "contract_digest": "11".repeat(32), "guest_target": "x86_64-unknown-linux-musl",
            "inputs": {}, "artifacts": {},
            // tpm.pcrs deliberately wrong: must not be what the Azure check uses.
            "measurements": {"tpm": {"pcrs": {"11": "00".repeat(32)}}},
        });
        if let Some(a) = azure {
            v["measurements"]["azure"] = a;
        }
        v
    };
    let write = |name: &str, v: serde_json::Value| {
        let p = t.path().join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        format!("--expected={}", p.display())
    };
    let good = write(
        "good.json",
        doc(Some(
            serde_json::json!({"pcrs": {"9": pcr(9), "11": pcr(11), "23": pcr(23)}}),
        )),
    );
    let o = verify(&path, &nonce, &[good]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let mut flipped = pcr(11);
    flipped.replace_range(0..2, if &flipped[0..2] == "00" { "01" } else { "00" });
    let bad = write(
        "bad.json",
        doc(Some(
            serde_json::json!({"pcrs": {"9": pcr(9), "11": flipped, "23": pcr(23)}}),
        )),
    );
    let o = verify(&path, &nonce, &[bad]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let fails: Vec<String> = stdout(&o)
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .map(str::to_string)
        .collect();
    assert!(fails.len() == 1 && fails[0].contains("11"), "{fails:?}");
    let none = write("none.json", doc(None));
    let o = verify(&path, &nonce, &[none]);
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("azure.pcrs"), "{}", stderr(&o));
}

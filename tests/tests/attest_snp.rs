//! `dcr-attest verify snp` on the real SEV-SNP evidence in ../shared/fixtures/attest: genuine
//! reports verify (bare-metal Milan from virtee and trustee, an Azure HCL-embedded report);
//! broken VCEKs, tampered reports, unknown versions, truncation, expiry and foreign chains are
//! refused with the failing check named.

use std::path::Path;
use std::process::{Command, Output};

use dcr_tests::*;

const AT: &str = "--at=2026-01-01T00:00:00Z";

fn verify(args: &[String]) -> Output {
    Command::new(dcr_attest())
        .args(["verify", "snp"])
        .args(args)
        .output()
        .unwrap()
}

fn args(report: &Path, vcek: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        format!("--report={}", report.display()),
        format!("--vcek={}", vcek.display()),
    ];
    if !extra.iter().any(|e| e.starts_with("--at")) {
        a.push(AT.to_string());
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[test]
fn genuine_reports_verify() {
    let Some(fx) = fixtures("genuine_reports_verify") else {
        return;
    };
    let s = fx.join("attest/snp");
    accepted(&verify(&args(
        &s.join("virtee-sev/report_milan.bin"),
        &s.join("virtee-sev/vcek_milan.der"),
        &[],
    )));
    let chain = format!(
        "--chain={}",
        s.join("virtee-sev/cert_chain_milan.pem").display()
    );
    accepted(&verify(&args(
        &s.join("virtee-sev/report_milan.bin"),
        &s.join("virtee-sev/vcek_milan.der"),
        &[&chain],
    )));
    accepted(&verify(&args(
        &s.join("trustee/test-report.bin"),
        &s.join("trustee/test-vcek.der"),
        &[],
    )));

    // Azure: the SNP report inside the HCL report (after its 32-byte header), VCEK in PEM.
    let z = fx.join("attest/azure/trustee-az-snp-vtpm");
    let hcl = std::fs::read(z.join("hcl-report.bin")).unwrap();
    let t = TempDir::new("az-snp");
    let r = t.path().join("report.bin");
    std::fs::write(&r, &hcl[32..32 + 1184]).unwrap();
    accepted(&verify(&args(&r, &z.join("vcek.pem"), &["--vmpl=any"])));

    // --expected: MEASUREMENT must equal this build's predicted launch digest. The fixture
    // report is someone else's VM, so it is refused for exactly that reason.
    let o = verify(&args(
        &s.join("virtee-sev/report_milan.bin"),
        &s.join("virtee-sev/vcek_milan.der"),
        &[&format!(
            "--expected={}",
            reference_build().join("measurements.json").display()
        )],
    ));
    refused_for(&o, &["measurement"]);
    assert_eq!(stdout(&o).matches("FAIL").count(), 1, "{}", stdout(&o));

    // --json verdict lists every check.
    let o = verify(&args(
        &s.join("virtee-sev/report_milan.bin"),
        &s.join("virtee-sev/vcek_milan.der"),
        &["--json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ok"], true);
    assert!(v["checks"].as_array().unwrap().len() >= 15);
}

#[test]
fn invalid_vceks_are_refused_with_reasons() {
    let Some(fx) = fixtures("invalid_vceks_are_refused_with_reasons") else {
        return;
    };
    let s = fx.join("attest/snp/trustee");
    for v in ["test-vcek-invalid-legacy.der", "test-vcek-invalid-new.der"] {
        refused_for(
            &verify(&args(&s.join("test-report.bin"), &s.join(v), &[])),
            &["chain", "report.signature", "vek.hwid"],
        );
    }
    // A Turin VCEK for a Milan report.
    let s = fx.join("attest/snp/virtee-sev");
    refused_for(
        &verify(&args(
            &s.join("report_milan.bin"),
            &s.join("vcek_turin.der"),
            &[],
        )),
        &["report.signature", "vek.hwid"],
    );
    // A chain that is not AMD's pinned Milan ARK/ASK.
    let chain = format!("--chain={}", s.join("cert_chain_turin.pem").display());
    refused_for(
        &verify(&args(
            &s.join("report_milan.bin"),
            &s.join("vcek_milan.der"),
            &[&chain],
        )),
        &["chain"],
    );
}

#[test]
fn tampered_truncated_and_unknown_reports_are_refused() {
    let Some(fx) = fixtures("tampered_truncated_and_unknown_reports_are_refused") else {
        return;
    };
    let s = fx.join("attest/snp/virtee-sev");
    let vcek = s.join("vcek_milan.der");
    let good = std::fs::read(s.join("report_milan.bin")).unwrap();
    let t = TempDir::new("snp-tamper");
    let case = |name: &str, bytes: &[u8]| {
        let p = t.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        verify(&args(&p, &vcek, &[]))
    };
    // One flipped byte in MEASUREMENT, REPORT_DATA and the signature.
    for at in [0x90usize, 0x50, 0x2a0] {
        let mut b = good.clone();
        b[at] ^= 1;
        refused_for(&case(&format!("flip{at:x}"), &b), &["report.signature"]);
    }
    // DEBUG allowed in the guest policy: refused twice over (signature, policy).
    let mut b = good.clone();
    b[0x8 + 2] |= 0x08; // bit 19
    refused_for(&case("debug", &b), &["report.signature", "policy.debug"]);
    // Unknown versions are not "treated as latest".
    for version in [1u32, 4, 6, 0xffff] {
        let mut b = good.clone();
        b[..4].copy_from_slice(&version.to_le_bytes());
        let o = case(&format!("v{version}"), &b);
        refused_for(&o, &["report.decode"]);
        assert!(
            stdout(&o).contains(&format!("field version is {version}")),
            "{}",
            stdout(&o)
        );
    }
    // Truncated and over-long.
    let o = case("short", &good[..1000]);
    refused_for(&o, &["report.decode"]);
    assert!(stdout(&o).contains("1000 bytes, expected 1184"));
    let mut long = good.clone();
    long.push(0);
    refused_for(&case("long", &long), &["report.decode"]);
    // Expired certificate at the verification time.
    refused_for(
        &verify(&args(
            &s.join("report_milan.bin"),
            &vcek,
            &["--at=2031-01-01T00:00:00Z"],
        )),
        &["vek.validity"],
    );
}

#[test]
fn bad_usage_is_one_line() {
    let Some(fx) = fixtures("bad_usage_is_one_line") else {
        return;
    };
    let s = fx.join("attest/snp/virtee-sev");
    for (extra, needle) in [
        (vec!["--at=yesterday"], "--at"),
        (vec!["--vmpl=seven"], "--vmpl"),
    ] {
        let o = verify(&args(
            &s.join("report_milan.bin"),
            &s.join("vcek_milan.der"),
            &extra,
        ));
        assert_eq!(o.status.code(), Some(2));
        assert!(
            stderr(&o).contains(needle) && stderr(&o).trim_end().lines().count() == 1,
            "{}",
            stderr(&o)
        );
    }
    let o = verify(&args(
        &s.join("report_milan.bin"),
        Path::new("/nonexistent.der"),
        &[],
    ));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent.der"), "{}", stderr(&o));
}

#[test]
fn vcek_cache_is_keyed_by_chip_and_tcb_and_only_stores_genuine_vceks() {
    let Some(fx) = fixtures("vcek_cache_is_keyed_by_chip_and_tcb") else {
        return;
    };
    let s = fx.join("attest/snp");
    let t = TempDir::new("vcek-cache");
    let cache = format!("--vcek-cache={}", t.path().join("cache").display());
    let run = |report: &Path, vcek: Option<&Path>| {
        let mut c = Command::new(dcr_attest());
        c.args(["verify", "snp", AT, &cache])
            .arg(format!("--report={}", report.display()));
        if let Some(v) = vcek {
            c.arg(format!("--vcek={}", v.display()));
        }
        c.output().unwrap()
    };
    let report = s.join("virtee-sev/report_milan.bin");
    // Miss: a one-line error pointing at AMD's KDS for this chip and TCB.
    let o = run(&report, None);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("ucodeSPL=115") && stderr(&o).trim_end().lines().count() == 1,
        "{}",
        stderr(&o)
    );
    // A genuine VCEK is stored, then found without --vcek.
    accepted(&run(&report, Some(&s.join("virtee-sev/vcek_milan.der"))));
    accepted(&run(&report, None));
    // A broken VCEK for another report is refused and not stored.
    let trustee = s.join("trustee/test-report.bin");
    refused_for(
        &run(&trustee, Some(&s.join("trustee/test-vcek-invalid-new.der"))),
        &["chain"],
    );
    assert_eq!(
        run(&trustee, None).status.code(),
        Some(2),
        "an invalid VCEK must not be cached"
    );
}

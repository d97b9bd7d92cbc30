//! `dcr-attest verify tdx` on the real TDX evidence in ../shared/fixtures/attest/tdx: the
//! dcap-qvl v4 quote verifies UpToDate offline against its collateral at a time inside the
//! collateral's validity; a debug TD, non-matching collateral, expired collateral, an SGX
//! quote, tampering and truncation are refused with the check named.

use std::path::Path;
use std::process::{Command, Output};

use dcr_tests::*;

const INSIDE: &str = "--at=2025-06-25T00:00:00Z"; // TCB info and QE identity issued 2025-06-19

fn verify(quote: &Path, collateral: &Path, extra: &[String]) -> Output {
    Command::new(dcr_attest())
        .args(["verify", "tdx"])
        .arg(format!("--quote={}", quote.display()))
        .arg(format!("--collateral={}", collateral.display()))
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn dcap_qvl_quote_verifies_up_to_date() {
    let Some(fx) = fixtures("dcap_qvl_quote_verifies_up_to_date") else {
        return;
    };
    let d = fx.join("attest/tdx/dcap-qvl");
    let o = verify(
        &d.join("tdx_quote"),
        &d.join("tdx_quote_collateral.json"),
        &[INSIDE.into()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("ok   tcb.status: UpToDate"),
        "{}",
        stdout(&o)
    );
    // The same quote a few months later: the collateral has expired.
    let o = verify(
        &d.join("tdx_quote"),
        &d.join("tdx_quote_collateral.json"),
        &["--at=2026-01-01T00:00:00Z".into()],
    );
    refused_for(&o, &["quote.signature_and_collateral"]);
    assert!(stdout(&o).contains("expired"), "{}", stdout(&o));
    // --expected: MRTD must be this build's; the fixture TD is someone else's.
    let o = verify(
        &d.join("tdx_quote"),
        &d.join("tdx_quote_collateral.json"),
        &[
            INSIDE.into(),
            format!(
                "--expected={}",
                reference_build().join("measurements.json").display()
            ),
        ],
    );
    // And RTMR1/2 (kernel, initrd, command line) are not predicted: never matched to an image.
    refused_for(&o, &["mrtd", "rtmrs"]);
    assert_eq!(stdout(&o).matches("FAIL").count(), 2, "{}", stdout(&o));
    assert!(stdout(&o).contains("RTMR1/RTMR2"), "{}", stdout(&o));
}

#[test]
fn debug_td_and_foreign_collateral_are_refused() {
    let Some(fx) = fixtures("debug_td_and_foreign_collateral_are_refused") else {
        return;
    };
    let t = fx.join("attest/tdx");
    let coll = t.join("dcap-qvl/tdx_quote_collateral.json");
    // trustee's v4 quote is a debug TD; its platform is not the collateral's either.
    refused_for(
        &verify(&t.join("trustee/tdx_quote_4.dat"), &coll, &[INSIDE.into()]),
        &["td.debug", "quote.signature_and_collateral"],
    );
    refused_for(
        &verify(&t.join("trustee/tdx_quote_5.dat"), &coll, &[INSIDE.into()]),
        &["quote.signature_and_collateral"],
    );
    // An SGX (v3) quote is not a TD quote.
    let o = verify(
        &t.join("dcap-qvl/sgx_quote"),
        &t.join("dcap-qvl/sgx_quote_collateral.json"),
        &[INSIDE.into()],
    );
    refused_for(&o, &["quote.decode"]);
    assert!(stdout(&o).contains("field version is 3"), "{}", stdout(&o));
}

#[test]
fn tampered_and_truncated_quotes_are_refused() {
    let Some(fx) = fixtures("tampered_and_truncated_quotes_are_refused") else {
        return;
    };
    let d = fx.join("attest/tdx/dcap-qvl");
    let good = std::fs::read(d.join("tdx_quote")).unwrap();
    let coll = d.join("tdx_quote_collateral.json");
    let tmp = TempDir::new("tdx-tamper");
    // One byte of the TD report body (MRTD starts at 48 + 136) and of the header.
    for at in [48 + 136usize, 48 + 520, 10] {
        let mut b = good.clone();
        b[at] ^= 1;
        let p = tmp.path().join(format!("q{at}"));
        std::fs::write(&p, &b).unwrap();
        refused_for(
            &verify(&p, &coll, &[INSIDE.into()]),
            &["quote.signature_and_collateral"],
        );
    }
    let p = tmp.path().join("short");
    std::fs::write(&p, &good[..300]).unwrap();
    refused_for(&verify(&p, &coll, &[INSIDE.into()]), &["quote.decode"]);
    let p = tmp.path().join("coll.json");
    std::fs::write(&p, b"{\"not\": \"collateral\"}").unwrap();
    refused_for(
        &verify(&d.join("tdx_quote"), &p, &[INSIDE.into()]),
        &["collateral.decode"],
    );
}

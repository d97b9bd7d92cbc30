//! `dcr-attest verify sgx` on the real SGX quote in ../shared/fixtures/attest/tdx/dcap-qvl
//! (dcap-qvl's sample, with its collateral bundle): it verifies inside the collateral's
//! validity and names its enclave; the expected identity is read from the quote's bytes at the
//! offsets of Intel's `sgx_report_body_t` (not through dcap-qvl); another MRENCLAVE, MRSIGNER,
//! product or a higher minimum SVN, a flipped byte, times outside the collateral, a TD quote,
//! another collateral and truncation are refused with the failing check named.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dcr_tests::*;

/// Inside the sample collateral's validity.
const INSIDE: &str = "--at=2025-06-25T00:00:00Z";
/// The report body follows the 48-byte quote header.
const BODY: usize = 48;

fn verify(quote: &Path, collateral: &Path, extra: &[&str]) -> Output {
    let mut c = Command::new(dcr_attest());
    c.args(["verify", "sgx"])
        .arg(format!("--quote={}", quote.display()))
        .arg(format!("--collateral={}", collateral.display()));
    if !extra.iter().any(|e| e.starts_with("--at")) {
        c.arg(INSIDE);
    }
    c.args(extra).output().unwrap()
}

fn files(test: &str) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let fx = fixtures(test)?;
    let d = fx.join("attest/tdx/dcap-qvl");
    Some((
        d.join("sgx_quote"),
        d.join("sgx_quote_collateral.json"),
        d.join("tdx_quote"),
    ))
}

fn refused(o: &Output, check: &str) -> String {
    let out = stdout(o);
    assert_eq!(o.status.code(), Some(1), "{out}{}", stderr(o));
    assert!(out.contains(&format!("FAIL {check}")), "{check}: {out}");
    out
}

#[test]
fn a_genuine_sgx_quote_verifies_and_names_its_enclave() {
    let Some((quote, coll, _)) = files("a_genuine_sgx_quote_verifies") else {
        return;
    };
    let q = std::fs::read(&quote).unwrap();
    assert_eq!(u16::from_le_bytes([q[0], q[1]]), 3, "a v3 (SGX) quote");
    let mrenclave = hex::encode(&q[BODY + 64..BODY + 96]);
    let mrsigner = hex::encode(&q[BODY + 128..BODY + 160]);
    let prod = u16::from_le_bytes([q[BODY + 256], q[BODY + 257]]);
    let svn = u16::from_le_bytes([q[BODY + 258], q[BODY + 259]]);
    let debug = q[BODY + 48] & 0x02 != 0;
    let mut base: Vec<String> = Vec::new();
    if debug {
        // A debug enclave is refused by default, named as such.
        refused(&verify(&quote, &coll, &[]), "enclave.debug");
        base.push("--allow-debug".into());
    }
    // Its TCB status as the collateral says (accepted only if allowed).
    let o = verify(
        &quote,
        &coll,
        &base.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let out = stdout(&o);
    if o.status.code() == Some(1) {
        assert!(out.contains("FAIL tcb.status"), "{out}");
        let status = out
            .lines()
            .find(|l| l.contains("tcb.status"))
            .and_then(|l| l.split(": ").nth(1))
            .and_then(|s| s.split(' ').next())
            .unwrap()
            .to_string();
        base.push(format!("--allow-status={status}"));
    }
    let b: Vec<&str> = base.iter().map(String::as_str).collect();
    let o = verify(&quote, &coll, &b);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("ok   quote.signature_and_collateral"));
    assert!(
        stderr(&o).contains(&format!(
            "enclave mrenclave={mrenclave} mrsigner={mrsigner} isv_prod_id={prod} isv_svn={svn}"
        )),
        "{}",
        stderr(&o)
    );
    let with = |extra: &[&str]| {
        let mut a = b.clone();
        a.extend_from_slice(extra);
        verify(&quote, &coll, &a)
    };
    // The identity it has is accepted; any other is refused.
    let m = format!("--expected-mrenclave={mrenclave}");
    assert_eq!(with(&[&m]).status.code(), Some(0));
    let s = format!("--expected-mrsigner={mrsigner}");
    let p = format!("--isv-prod-id={prod}");
    let v = format!("--min-isv-svn={svn}");
    assert_eq!(with(&[&s, &p, &v]).status.code(), Some(0));
    let other = format!("--expected-mrenclave={}", "00".repeat(32));
    refused(&with(&[&other]), "mrenclave");
    let other = format!("--expected-mrsigner={}", "11".repeat(32));
    refused(&with(&[&other, &p]), "mrsigner");
    let other = format!("--isv-prod-id={}", prod.wrapping_add(1));
    refused(&with(&[&s, &other]), "isv_prod_id");
    let higher = format!("--min-isv-svn={}", u32::from(svn) + 1);
    if svn < u16::MAX {
        refused(&with(&[&higher]), "isv_svn");
    }
    // A signer without its product: bad usage, one line.
    let o = with(&[&s]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--isv-prod-id"), "{}", stderr(&o));
    let o = with(&["--expected-mrenclave=abc"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn tampered_expired_foreign_and_truncated_quotes_are_refused() {
    let Some((quote, coll, tdx)) = files("tampered_sgx_quotes_are_refused") else {
        return;
    };
    let q = std::fs::read(&quote).unwrap();
    let t = TempDir::new("sgx");
    let write = |name: &str, bytes: &[u8]| {
        let p = t.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let flags = [
        "--allow-debug",
        "--allow-status=OutOfDate",
        "--allow-status=ConfigurationNeeded",
        "--allow-status=SWHardeningNeeded",
        "--allow-status=ConfigurationAndSWHardeningNeeded",
        "--allow-status=OutOfDateConfigurationNeeded",
    ];
    // A byte of the report body (REPORTDATA), of MRENCLAVE, of the signature.
    for at in [BODY + 320, BODY + 64, q.len() - 10] {
        let mut b = q.clone();
        b[at] ^= 1;
        let p = write("flipped", &b);
        let o = verify(&p, &coll, &flags);
        assert_eq!(o.status.code(), Some(1), "byte {at}: {}", stdout(&o));
        assert!(stdout(&o).contains("FAIL "), "byte {at}: {}", stdout(&o));
    }
    // Outside the collateral's validity.
    for at in ["--at=2015-01-01T00:00:00Z", "--at=2040-01-01T00:00:00Z"] {
        let mut a = flags.to_vec();
        a.push(at);
        refused(&verify(&quote, &coll, &a), "quote.signature_and_collateral");
    }
    // A TD quote is not an SGX quote.
    refused(&verify(&tdx, &coll, &flags), "quote.decode");
    // The TD quote's collateral does not vouch for this SGX quote.
    let tdx_coll = tdx.with_file_name("tdx_quote_collateral.json");
    let o = verify(&quote, &tdx_coll, &flags);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    // Truncated.
    let p = write("short", &q[..q.len() / 2]);
    let o = verify(&p, &coll, &flags);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    // Not a collateral bundle.
    let p = write("coll", b"{}");
    refused(&verify(&quote, &p, &flags), "collateral.decode");
    // Unreadable input: exit 2, the flag named.
    let o = verify(&t.path().join("missing"), &coll, &flags);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--quote"), "{}", stderr(&o));
}

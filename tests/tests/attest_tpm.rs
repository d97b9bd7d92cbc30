//! `dcr-attest verify tpm` with tpm2_checkquote's flags on the files tpm2_quote wrote
//! (../shared/fixtures/attest/tpm/swtpm-tpm2-tools-5.4: one and two PCR banks), and refusals
//! for a wrong nonce, tampered message/signature/PCRs, a foreign AK and truncation.

use std::path::Path;
use std::process::{Command, Output};

use dcr_tests::*;

fn verify(
    dir: &Path,
    q: &str,
    ak: &Path,
    msg: &Path,
    sig: &Path,
    pcrs: &Path,
    nonce: &str,
) -> Output {
    let _ = (dir, q);
    Command::new(dcr_attest())
        .args(["verify", "tpm"])
        .arg(format!("--public={}", ak.display()))
        .arg(format!("--message={}", msg.display()))
        .arg(format!("--signature={}", sig.display()))
        .arg(format!("--pcr={}", pcrs.display()))
        .arg(format!("--qualification={nonce}"))
        .output()
        .unwrap()
}

#[test]
fn tpm2_quote_files_verify_and_tampering_is_refused() {
    let Some(fx) = fixtures("tpm2_quote_files_verify_and_tampering_is_refused") else {
        return;
    };
    let d = fx.join("attest/tpm/swtpm-tpm2-tools-5.4");
    let nonce = std::fs::read_to_string(d.join("nonce.hex"))
        .unwrap()
        .trim()
        .to_string();
    let ak = d.join("ak.pem");
    for q in ["quote", "quote2"] {
        let (m, s, p) = (
            d.join(format!("{q}.msg")),
            d.join(format!("{q}.sig")),
            d.join(format!("{q}.pcrs")),
        );
        let o = verify(&d, q, &ak, &m, &s, &p, &nonce);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{q}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        assert!(stdout(&o).contains("verdict: accepted"));

        // A stale or foreign nonce.
        refused_for(
            &verify(&d, q, &ak, &m, &s, &p, "00112233"),
            &["qualifying_data"],
        );

        let t = TempDir::new(&format!("tpm-{q}"));
        let flip = |src: &Path, at: usize, name: &str| {
            let mut b = std::fs::read(src).unwrap();
            let i = at.min(b.len() - 1);
            b[i] ^= 1;
            let out = t.path().join(name);
            std::fs::write(&out, b).unwrap();
            out
        };
        // Message: one byte of extraData; signature: its last byte; PCRs: a digest byte.
        refused_for(
            &verify(&d, q, &ak, &flip(&m, 40, "m"), &s, &p, &nonce),
            &["signature"],
        );
        refused_for(
            &verify(&d, q, &ak, &m, &flip(&s, 10_000, "s"), &p, &nonce),
            &["signature"],
        );
        refused_for(
            &verify(&d, q, &ak, &m, &s, &flip(&p, 145, "p"), &nonce),
            &["pcrs.digest"],
        );
        // Truncated message.
        let short = t.path().join("short");
        std::fs::write(&short, &std::fs::read(&m).unwrap()[..50]).unwrap();
        refused_for(
            &verify(&d, q, &ak, &short, &s, &p, &nonce),
            &["attest.decode"],
        );
    }
    // Another key (the EK-independent AK of another run is not available; any other RSA key
    // serves): the Azure fixture's AK.
    let other = fx.join("attest/azure/kinvolk/akpub.pem");
    let o = verify(
        &d,
        "quote",
        &other,
        &d.join("quote.msg"),
        &d.join("quote.sig"),
        &d.join("quote.pcrs"),
        &nonce,
    );
    refused_for(&o, &["signature"]);
}

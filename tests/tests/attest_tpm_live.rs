//! TPM quotes made in the test by tpm2-tools on a fresh swtpm — RSA and ECC AKs, tss and
//! plain signatures, serialized and values PCR files — accepted by both tpm2_checkquote (the
//! anchor) and `dcr-attest verify tpm`; a wrong nonce refused by both.

use std::path::Path;
use std::process::Command;

use dcr_tests::*;

const LIST: &str = "sha256:0,4,9,11,16,23";

fn checkquote(dir: &Path, sig: &str, pcrs: &str, nonce: &str) -> bool {
    // tpm2_checkquote 5.4 reads the PCR file as bare values when -l is given.
    let mut cmd = Command::new("tpm2_checkquote");
    cmd.args(["-u", "ak.pem", "-m", "q.msg", "-s", sig, "-f", pcrs])
        .args(["-g", "sha256", "-q", nonce]);
    if pcrs.ends_with(".values") {
        cmd.args(["-l", LIST]);
    }
    let o = cmd.current_dir(dir).output().unwrap();
    if !o.status.success() {
        eprintln!("tpm2_checkquote: {}", String::from_utf8_lossy(&o.stderr));
    }
    o.status.success()
}

fn ours(dir: &Path, sig: &str, pcrs: &str, nonce: &str) -> bool {
    let o = Command::new(dcr_attest())
        .args([
            "verify", "tpm", "-u", "ak.pem", "-m", "q.msg", "-s", sig, "-f", pcrs,
        ])
        .args(["-q", nonce, "-l", LIST])
        .current_dir(dir)
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(2), "{}", stderr(&o));
    if !o.status.success() {
        eprintln!("dcr-attest: {}", stdout(&o));
    }
    o.status.success()
}

#[test]
fn fresh_swtpm_quotes_verify_like_tpm2_checkquote() {
    let tools = [
        "swtpm",
        "tpm2_createek",
        "tpm2_createak",
        "tpm2_quote",
        "tpm2_checkquote",
        "tpm2_pcrextend",
    ];
    if !require_tools("fresh_swtpm_quotes_verify_like_tpm2_checkquote", &tools) {
        return;
    }
    let t = TempDir::new("swtpm-live");
    let state = t.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let (_tpm, tcti) = start_swtpm(&state, "not-need-init,startup-clear");
    let d = t.path();
    tool(
        d,
        &tcti,
        &[
            "tpm2_pcrextend",
            "16:sha256=00000000000000000000000000000000000000000000000000000000000000aa",
        ],
    );
    for (alg, scheme) in [("rsa", "rsassa"), ("ecc", "ecdsa")] {
        tool(
            d,
            &tcti,
            &["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"],
        );
        tool(d, &tcti, &["tpm2_flushcontext", "-t"]);
        tool(
            d,
            &tcti,
            &[
                "tpm2_createak",
                "-C",
                "ek.ctx",
                "-c",
                "ak.ctx",
                "-G",
                alg,
                "-g",
                "sha256",
                "-s",
                scheme,
                "-u",
                "ak.pem",
                "-f",
                "pem",
                "-n",
                "ak.name",
            ],
        );
        tool(d, &tcti, &["tpm2_flushcontext", "-t"]);
        tool(d, &tcti, &["tpm2_flushcontext", "-s"]);
        tool(
            d,
            &tcti,
            &[
                "tpm2_quote",
                "-c",
                "ak.ctx",
                "-l",
                "sha256:0,4,9,11,16,23",
                "-q",
                "c0ffee0123",
                "-g",
                "sha256",
                "-m",
                "q.msg",
                "-s",
                "q.sig",
                "-o",
                "q.pcrs",
            ],
        );
        // The same quote's signature and PCRs in the other formats.
        tool(d, &tcti, &["tpm2_flushcontext", "-t"]);
        tool(
            d,
            &tcti,
            &[
                "tpm2_quote",
                "-c",
                "ak.ctx",
                "-l",
                "sha256:0,4,9,11,16,23",
                "-q",
                "c0ffee0123",
                "-g",
                "sha256",
                "-m",
                "q2.msg",
                "-s",
                "q.plain",
                "-f",
                "plain",
                "-o",
                "q.values",
                "-F",
                "values",
            ],
        );
        tool(d, &tcti, &["tpm2_flushcontext", "-t"]);
        assert!(
            checkquote(d, "q.sig", "q.pcrs", "c0ffee0123"),
            "{alg}: tpm2_checkquote refused"
        );
        assert!(
            ours(d, "q.sig", "q.pcrs", "c0ffee0123"),
            "{alg}: dcr-attest refused what checkquote accepts"
        );
        assert!(!checkquote(d, "q.sig", "q.pcrs", "c0ffee0124"));
        assert!(
            !ours(d, "q.sig", "q.pcrs", "c0ffee0124"),
            "{alg}: wrong nonce accepted"
        );
        // plain signature + values PCR file of the second quote.
        std::fs::rename(d.join("q2.msg"), d.join("q.msg")).unwrap();
        assert!(
            checkquote(d, "q.plain", "q.values", "c0ffee0123"),
            "{alg}: checkquote refused plain/values"
        );
        assert!(
            ours(d, "q.plain", "q.values", "c0ffee0123"),
            "{alg}: dcr-attest refused plain/values"
        );
    }
}

#[test]
fn make_credential_activates_only_on_the_tpm_with_that_ek_and_ak() {
    let tools = [
        "swtpm",
        "tpm2_createek",
        "tpm2_createak",
        "tpm2_activatecredential",
        "tpm2_startauthsession",
        "tpm2_policysecret",
    ];
    if !require_tools(
        "make_credential_activates_only_on_the_tpm_with_that_ek_and_ak",
        &tools,
    ) {
        return;
    }
    let t = TempDir::new("swtpm-cred");
    let state = t.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let (_tpm, tcti) = start_swtpm(&state, "not-need-init,startup-clear");
    let d = t.path();
    tool(
        d,
        &tcti,
        &["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"],
    );
    tool(d, &tcti, &["tpm2_flushcontext", "-t"]);
    tool(
        d,
        &tcti,
        &[
            "tpm2_createak",
            "-C",
            "ek.ctx",
            "-c",
            "ak.ctx",
            "-G",
            "rsa",
            "-g",
            "sha256",
            "-s",
            "rsassa",
            "-u",
            "ak.pem",
            "-f",
            "pem",
            "-n",
            "ak.name",
        ],
    );
    tool(d, &tcti, &["tpm2_flushcontext", "-t"]);
    let secret: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    std::fs::write(d.join("secret.bin"), &secret).unwrap();
    let activate = |cred: &str| activate_credential(d, &tcti, cred);
    let make = |name: &str, out: &str| {
        let o = Command::new(dcr_attest())
            .args([
                "make-credential",
                "-e",
                "ek.pub",
                "-n",
                name,
                "-s",
                "secret.bin",
                "-o",
                out,
            ])
            .current_dir(d)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    };
    make("ak.name", "cred.out");
    assert_eq!(
        activate("cred.out").as_deref(),
        Some(&secret[..]),
        "the AK's own TPM recovers the secret"
    );
    // For another object's name (here: a made-up one), the TPM refuses to release it.
    make(&format!("000b{}", "ab".repeat(32)), "cred-other.out");
    assert_eq!(
        activate("cred-other.out"),
        None,
        "a credential for another name must not activate"
    );
    // Refuses to overwrite.
    let o = Command::new(dcr_attest())
        .args([
            "make-credential",
            "-e",
            "ek.pub",
            "-n",
            "ak.name",
            "-s",
            "secret.bin",
            "-o",
            "cred.out",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn ek_certificate_chains_to_the_swtpm_localca_root() {
    let tools = [
        "swtpm",
        "swtpm_setup",
        "swtpm_localca",
        "certtool",
        "tpm2_createek",
        "tpm2_nvread",
    ];
    if !require_tools("ek_certificate_chains_to_the_swtpm_localca_root", &tools) {
        return;
    }
    let t = TempDir::new("swtpm-ekcert");
    let d = t.path();
    let (state, ca) = swtpm_with_ek_cert(d);
    let (_tpm, tcti) = start_swtpm(&state, "startup-clear");
    tool(
        d,
        &tcti,
        &["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"],
    );
    tool(
        d,
        &tcti,
        &["tpm2_nvread", "0x1c00002", "-C", "o", "-o", "ek.der"],
    );
    let verify = |cert: &str, trusted: &Path, ek: &Path, chain: bool| {
        let mut c = Command::new(dcr_attest());
        c.args(["verify", "ek", "--cert", cert])
            .arg(format!("--trusted={}", trusted.display()))
            .arg(format!("--ek-public={}", ek.display()))
            .current_dir(d);
        if chain {
            c.arg(format!("--chain={}", ca.join("issuercert.pem").display()));
        }
        c.output().unwrap()
    };
    let root = ca.join("swtpm-localca-rootca-cert.pem");
    let o = verify("ek.der", &root, &d.join("ek.pub"), true);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    // Without the intermediate there is no path to the root.
    let o = verify("ek.der", &root, &d.join("ek.pub"), false);
    assert!(stdout(&o).contains("FAIL ek_cert.issuer"), "{}", stdout(&o));
    // Another TPM's EK is not what this certificate certifies.
    let Some(fx) = fixtures("ek_certificate_chains_to_the_swtpm_localca_root") else {
        return;
    };
    let other = fx.join("attest/tpm/swtpm-tpm2-tools-5.4/ek.pub");
    let o = verify("ek.der", &root, &other, true);
    assert!(stdout(&o).contains("FAIL ek_cert.key"), "{}", stdout(&o));
    // A root the verifier does not trust (AMD's Milan chain is not swtpm-localca).
    let o = verify(
        "ek.der",
        &fx.join("attest/snp/virtee-sev/cert_chain_milan.pem"),
        &d.join("ek.pub"),
        true,
    );
    assert!(
        stdout(&o).contains("FAIL intermediate[0].issuer"),
        "{}",
        stdout(&o)
    );
    // One flipped byte inside the signed part of the certificate.
    let mut der = std::fs::read(d.join("ek.der")).unwrap();
    der[200] ^= 1;
    std::fs::write(d.join("ek-bad.der"), &der).unwrap();
    let o = verify("ek-bad.der", &root, &d.join("ek.pub"), true);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
}

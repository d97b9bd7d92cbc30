//! Key release against real TPM evidence: a swtpm with an EK certificate from a private
//! swtpm-localca, an AK made by tpm2-tools, credential activation, and quotes bound to the
//! challenge — through `dcr-attest serve` on loopback. A good quote gets its key (which opens
//! the party's sealed dataset); a replayed nonce, an expired nonce, a wrong contract digest, a
//! measurement not in the reference values, a wrong HPKE-key binding and a wrong activation
//! secret are each refused with their code, an audit record, and no key material.

use std::path::Path;
use std::process::Command;

use base64::Engine;
use dcr_protocol::keys::{hpke_open, HpkeSecret, SigningPublic, SigningSecret};
use dcr_protocol::release::{release_info, report_data, Signed};
use dcr_protocol::wire::Release;
use dcr_tests::*;
use rand_core::OsRng;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const PCRS: &str = "sha256:4,9,11,23";

fn attest_cli(dir: &Path, args: &[&str]) -> std::process::Output {
    let o = Command::new(dcr_attest())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "dcr-attest {args:?}: {}{}",
        stdout(&o),
        stderr(&o)
    );
    o
}

struct Tee<'a> {
    d: &'a Path,
    tcti: String,
}

impl Tee<'_> {
    fn run(&self, args: &[&str]) {
        tool(self.d, &self.tcti, args)
    }

    fn identity(&self) -> serde_json::Value {
        let f = |n: &str| B64.encode(std::fs::read(self.d.join(n)).unwrap());
        serde_json::json!({"ek_public": f("ek.pub"), "ek_cert": f("ek.der"), "ak_public": f("ak.pub")})
    }

    fn activate(&self, cred: &[u8]) -> Vec<u8> {
        std::fs::write(self.d.join("cred.bin"), cred).unwrap();
        activate_credential(self.d, &self.tcti, "cred.bin")
            .expect("the TPM activates the credential")
    }

    /// Challenge, activate, quote over `binding(nonce)`; returns the attest request.
    fn request(
        &self,
        svc: &str,
        pk: &str,
        contract_digest: &[u8; 32],
        quote_digest: &[u8; 32],
        quote_pk: &dcr_protocol::keys::HpkePublic,
    ) -> serde_json::Value {
        let (st, ch) = post(
            &format!("{svc}/v1/challenge"),
            &serde_json::json!({"tee": "tpm", "tpm": self.identity()}),
        );
        assert_eq!(st, 200, "{ch}");
        let nonce = hex::decode(ch["nonce"].as_str().unwrap()).unwrap();
        let secret = self.activate(&B64.decode(ch["credential"].as_str().unwrap()).unwrap());
        let rk = SigningSecret::generate(&mut OsRng).public();
        let rd = report_data(&nonce, quote_pk, quote_digest, &rk);
        for f in ["q.msg", "q.sig", "q.pcrs"] {
            let _ = std::fs::remove_file(self.d.join(f));
        }
        self.run(&[
            "tpm2_quote",
            "-c",
            "ak.ctx",
            "-l",
            PCRS,
            "-q",
            &hex::encode(rd),
            "-m",
            "q.msg",
            "-s",
            "q.sig",
            "-o",
            "q.pcrs",
            "-F",
            "values",
            "-g",
            "sha256",
        ]);
        let f = |n: &str| B64.encode(std::fs::read(self.d.join(n)).unwrap());
        serde_json::json!({
            "session_id": ch["session_id"],
            "tee": "tpm",
            "hpke_public_key": pk,
            "result_key": rk.to_text(),
            "contract_digest": hex::encode(contract_digest),
            "evidence": {
                "message": f("q.msg"), "signature": f("q.sig"), "pcrs": f("q.pcrs"),
                "ak_public": f("ak.pub"), "activation": hex::encode(secret),
            },
        })
    }
}

fn refused(
    svc: &Service,
    resp: &(u16, serde_json::Value),
    code: &str,
    session: &serde_json::Value,
) {
    let (st, body) = resp;
    assert_eq!(*st, 403, "{body}");
    assert_eq!(body["code"], code, "{body}");
    let text = body.to_string();
    assert!(
        !text.contains("ciphertext") && !text.contains("payload"),
        "{text}"
    );
    let rec = audit_records(&svc.data_dir)
        .into_iter()
        .rev()
        .find(|r| r["session_id"] == *session && r["kind"] == "release")
        .unwrap_or_else(|| panic!("no audit record for {session}"));
    assert_eq!(rec["decision"], "refuse", "{rec}");
    assert_eq!(rec["code"], code, "{rec}");
}

#[test]
fn swtpm_evidence_gets_its_key_and_every_bad_request_is_refused_and_audited() {
    let tools = [
        "swtpm",
        "swtpm_setup",
        "swtpm_localca",
        "certtool",
        "tpm2_createek",
        "tpm2_createak",
        "tpm2_nvread",
        "tpm2_quote",
        "tpm2_pcrextend",
        "tpm2_pcrread",
        "tpm2_activatecredential",
        "tpm2_startauthsession",
        "tpm2_policysecret",
    ];
    if !require_tools("swtpm_evidence_gets_its_key", &tools) {
        return;
    }
    let t = TempDir::new("service-tpm");
    let d = t.path();
    let (state, ca) = swtpm_with_ek_cert(d);
    let (_tpm, tcti) = start_swtpm(&state, "startup-clear");
    let tee = Tee {
        d,
        tcti: tcti.clone(),
    };
    tee.run(&["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"]);
    tee.run(&["tpm2_nvread", "0x1c00002", "-C", "o", "-o", "ek.der"]);
    tee.run(&[
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
        "ak.pub",
        "-n",
        "ak.name",
    ]);
    tee.run(&["tpm2_flushcontext", "-t"]);

    // The parties: a recipient key, the service, a contract pinning its signing key.
    std::fs::write(d.join("tokens"), "publisher:publisher-token-0123456789\n").unwrap();
    std::fs::write(d.join("publisher.token"), "publisher-token-0123456789\n").unwrap();
    let data = d.join("svc");
    let root = ca.join("swtpm-localca-rootca-cert.pem");
    let inter = ca.join("issuercert.pem");
    let svc = start_service(
        &data,
        &[
            "--tokens",
            d.join("tokens").to_str().unwrap(),
            "--tpm-ek-root",
            root.to_str().unwrap(),
            "--tpm-ek-intermediate",
            inter.to_str().unwrap(),
        ],
    );
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("service.pub.json")).unwrap()).unwrap();
    let signing = info["signing_key"].as_str().unwrap().to_string();
    let recipient = String::from_utf8(
        attest_cli(d, &["keygen", "--out-dir", ".", "--name", "publisher"]).stdout,
    )
    .unwrap();
    std::fs::write(
        d.join("contract.toml"),
        test_contract("svc-test", "users-1", recipient.trim(), &signing),
    )
    .unwrap();
    let digest_line =
        String::from_utf8(attest_cli(d, &["contract", "--in", "contract.toml"]).stdout).unwrap();
    let contract_digest: [u8; 32] =
        hex::decode(digest_line.trim().strip_prefix("sha256:").unwrap())
            .unwrap()
            .try_into()
            .unwrap();

    // guest-init's PCR 23 extend, then the reference values read from the TPM itself.
    tee.run(&[
        "tpm2_pcrextend",
        &format!("23:sha256={}", hex::encode(contract_digest)),
    ]);
    let o = Command::new("tpm2_pcrread")
        .args([PCRS, "-o", "pcrs.bin"])
        .env("TPM2TOOLS_TCTI", &tcti)
        .current_dir(d)
        .output()
        .unwrap();
    assert!(o.status.success());
    let raw = std::fs::read(d.join("pcrs.bin")).unwrap();
    let pcrs: Vec<(u32, String)> = [4u32, 9, 11, 23]
        .iter()
        .enumerate()
        .map(|(i, idx)| (*idx, hex::encode(&raw[32 * i..32 * (i + 1)])))
        .collect();
    std::fs::write(
        d.join("measurements.json"),
        tpm_reference(&pcrs).to_string(),
    )
    .unwrap();

    // Seal a dataset and register its DEK.
    let plaintext: Vec<u8> = (0..300_000u32)
        .flat_map(|i| (i * 7).to_le_bytes())
        .collect();
    std::fs::write(d.join("users.csv"), &plaintext).unwrap();
    attest_cli(
        d,
        &[
            "seal",
            "--in",
            "users.csv",
            "--out",
            "users.sealed",
            "--key-id",
            "users-1",
            "--dek-out",
            "users.dek",
        ],
    );
    let register = |token: &str| {
        Command::new(dcr_attest())
            .args(["register", "--service", &svc.url, "--service-pub"])
            .arg(data.join("service.pub.json"))
            .args([
                "--token-file",
                token,
                "--dek",
                "users.dek",
                "--contract",
                "contract.toml",
            ])
            .args(["--reference", "measurements.json", "--platform", "tpm"])
            .current_dir(d)
            .output()
            .unwrap()
    };
    // No valid token: refused, audited.
    std::fs::write(d.join("bad.token"), "not-the-token-at-all\n").unwrap();
    let o = register("bad.token");
    assert!(
        !o.status.success() && stderr(&o).contains("unauthorized"),
        "{}",
        stderr(&o)
    );
    let o = register("publisher.token");
    assert!(o.status.success(), "{}", stderr(&o));
    // A second registration of the same key id is a conflict, never an overwrite.
    let o = register("publisher.token");
    assert!(stderr(&o).contains("conflict"), "{}", stderr(&o));

    let tee_sk = HpkeSecret::generate(&mut OsRng);
    let tee_pk = tee_sk.public();
    let attest_url = format!("{}/v1/attest", svc.url);

    // 1. The good case: the key is released, signed, and opens the sealed dataset.
    let req = tee.request(
        &svc.url,
        &tee_pk.to_text(),
        &contract_digest,
        &contract_digest,
        &tee_pk,
    );
    let (st, body) = post(&attest_url, &req);
    assert_eq!(st, 200, "{body}");
    let signed: Signed = serde_json::from_value(body).unwrap();
    let payload = signed
        .verify(&SigningPublic::from_text(&signing).unwrap())
        .unwrap();
    let rel: Release = serde_json::from_slice(&payload).unwrap();
    let k = rel
        .keys
        .iter()
        .find(|k| k.key_id == "users-1")
        .expect("users-1 released");
    let ed: [u8; 32] = hex::decode(&rel.evidence_digest)
        .unwrap()
        .try_into()
        .unwrap();
    let info = release_info(&ed, &rel.session_id, "users-1", &contract_digest);
    let dek = hpke_open(
        &tee_sk,
        &B64.decode(&k.enc).unwrap(),
        &info,
        b"users-1",
        &B64.decode(&k.ciphertext).unwrap(),
    )
    .unwrap();
    let (_, opened) = dcr_protocol::seal::open_bytes(
        &std::fs::read(d.join("users.sealed")).unwrap(),
        &dcr_protocol::seal::Dek::from_slice(&dek).unwrap(),
    )
    .unwrap();
    assert_eq!(opened, plaintext);
    // Bound to this evidence: another session id in the HPKE info does not open it.
    let other = release_info(&ed, "00", "users-1", &contract_digest);
    assert!(hpke_open(
        &tee_sk,
        &B64.decode(&k.enc).unwrap(),
        &other,
        b"users-1",
        &B64.decode(&k.ciphertext).unwrap()
    )
    .is_err());
    // A flipped payload byte breaks the signature.
    let mut forged = signed.clone();
    let mut p = B64.decode(&forged.payload).unwrap();
    p[10] ^= 1;
    forged.payload = B64.encode(p);
    assert!(forged
        .verify(&SigningPublic::from_text(&signing).unwrap())
        .is_err());
    let rec = audit_records(&data)
        .into_iter()
        .find(|r| r["session_id"] == req["session_id"])
        .unwrap();
    assert_eq!(rec["decision"], "release");
    assert_eq!(rec["keys"], serde_json::json!(["users-1"]));

    // 2. Replayed nonce: the same request again.
    refused(
        &svc,
        &post(&attest_url, &req),
        "nonce_reused",
        &req["session_id"],
    );

    // 3. Wrong contract digest (consistently bound, but no key is registered for it).
    let mut wrong = contract_digest;
    wrong[0] ^= 0xff;
    let req = tee.request(&svc.url, &tee_pk.to_text(), &wrong, &wrong, &tee_pk);
    refused(
        &svc,
        &post(&attest_url, &req),
        "contract_mismatch",
        &req["session_id"],
    );

    // 4. Wrong HPKE-key binding: quote binds key A, request names key B.
    let other_pk = HpkeSecret::generate(&mut OsRng).public();
    let req = tee.request(
        &svc.url,
        &other_pk.to_text(),
        &contract_digest,
        &contract_digest,
        &tee_pk,
    );
    refused(
        &svc,
        &post(&attest_url, &req),
        "binding_mismatch",
        &req["session_id"],
    );

    // 5. Wrong activation secret: the AK is not proven to be in the EK's TPM.
    let mut req = tee.request(
        &svc.url,
        &tee_pk.to_text(),
        &contract_digest,
        &contract_digest,
        &tee_pk,
    );
    req["evidence"]["activation"] = hex::encode([0u8; 32]).into();
    refused(
        &svc,
        &post(&attest_url, &req),
        "ak_untrusted",
        &req["session_id"],
    );

    // 6. Expired nonce: a service whose challenges live 1 s.
    let short = start_service(
        &d.join("svc-short"),
        &[
            "--nonce-ttl",
            "1",
            "--tpm-ek-root",
            root.to_str().unwrap(),
            "--tpm-ek-intermediate",
            inter.to_str().unwrap(),
        ],
    );
    let (_, ch) = post(
        &format!("{}/v1/challenge", short.url),
        &serde_json::json!({"tee": "tpm"}),
    );
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let late = serde_json::json!({"session_id": ch["session_id"], "tee": "tpm", "hpke_public_key": tee_pk.to_text(), "result_key": SigningSecret::generate(&mut OsRng).public().to_text(), "contract_digest": hex::encode(contract_digest), "evidence": {}});
    refused(
        &short,
        &post(&format!("{}/v1/attest", short.url), &late),
        "nonce_expired",
        &ch["session_id"],
    );

    // 7. A measurement not in the reference values: PCR 4 extended after the reference.
    tee.run(&["tpm2_pcrextend", &format!("4:sha256={}", "cd".repeat(32))]);
    let req = tee.request(
        &svc.url,
        &tee_pk.to_text(),
        &contract_digest,
        &contract_digest,
        &tee_pk,
    );
    let resp = post(&attest_url, &req);
    refused(&svc, &resp, "measurement_mismatch", &req["session_id"]);
    assert!(
        resp.1["message"]
            .as_str()
            .unwrap()
            .contains("reference.pcr.4"),
        "{}",
        resp.1
    );

    // Every record chains to the previous one.
    let recs = audit_records(&data);
    assert!(recs.len() >= 9, "{} records", recs.len());
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["seq"], (i + 1) as u64);
    }
}

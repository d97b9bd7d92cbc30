//! Run receipts at the service and offline (issue K): only the TEE of a run uploads its
//! receipt (its upload token, the receipt signed with the result key its evidence bound, for
//! this contract, session and run, with the evidence the release was made on), once; only the
//! contract's parties read it; the audit log links the receipt to the run's debits. Offline,
//! `dcr-attest verify receipt` accepts it with the TEE's evidence, the reference values and
//! the service key, and refuses a change of any field, a forged debit, evidence of another
//! run, another contract's reference values and another service key. The TEE is the software
//! TPM the load tests pin (its quotes are real ECDSA signatures over the binding).

use dcr_protocol::dp::Epsilon;
use dcr_protocol::receipt::{
    canonical_sha256, sign, QueryOutcome, Receipt, ReceiptQuery, ReceiptUpload, RECEIPT_VERSION,
};
use dcr_protocol::release::{Signed, DEBIT_DOMAIN};
use dcr_protocol::wire::{AttestRequest, Tee as Platform};
use dcr_tests::load::*;
use dcr_tests::receipts::{every_field_changed, verify_receipt};
use dcr_tests::*;
use sha2::{Digest, Sha256};

/// The signed answer file the receipts below name (the service compares digests only).
const ANSWER: &[u8] = b"DCRSIGN\0 the signed answer";

/// A receipt of `tee`'s run with one DP query and its debit.
fn receipt_of(r: &DpRoom, tee: &Tee, id: &str, sha: &str, debit: Signed) -> Receipt {
    use base64::Engine;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&tee.release.payload)
        .unwrap();
    let contract = dcr_protocol::contract::Contract::from_toml(
        &std::fs::read_to_string(r.data.parent().unwrap().join("budget.toml")).unwrap(),
    )
    .unwrap()
    .canonical_json();
    assert_eq!(hex::encode(Sha256::digest(&contract)), r.digest);
    Receipt {
        version: RECEIPT_VERSION,
        contract_digest: r.digest.clone(),
        contract: base64::engine::general_purpose::STANDARD.encode(&contract),
        platform: Platform::Tpm,
        session_id: tee.request["session_id"].as_str().unwrap().into(),
        nonce: hex::encode(&tee.nonce),
        evidence_sha256: canonical_sha256(&tee.request["evidence"]),
        release_sha256: hex::encode(Sha256::digest(&payload)),
        release: tee.release.clone(),
        run: tee.run.clone(),
        inputs: vec![],
        queries: vec![ReceiptQuery {
            id: id.into(),
            analysis: "segments".into(),
            sql_sha256: sha.into(),
            submitter: "publisher".into(),
            outcome: QueryOutcome::Dp,
            refusal: None,
            result_sha256: hex::encode(Sha256::digest(ANSWER)),
            epsilon: Some(Epsilon::parse("1").unwrap()),
            debit: Some(debit),
        }],
        output: None,
        started_at: 1_800_000_000,
        finished_at: 1_800_000_010,
    }
}

fn upload_of(tee: &Tee, receipt: &Receipt) -> ReceiptUpload {
    ReceiptUpload {
        receipt: sign(&tee.key, receipt),
        evidence: serde_json::from_value::<AttestRequest>(tee.request.clone()).unwrap(),
    }
}

#[test]
fn receipts_are_the_runs_own_read_by_parties_and_verify_offline() {
    let r = DpRoom::new("1", "4", "analysis");
    let tee = r.upload_auth();
    let (id, sha) = r.submit("publisher", PUB_TOKEN, "segments", 0);
    let (s, d) = call_json(
        &r.debit_url(),
        Some(&tee.auth),
        Some(&tee.req(&id, &sha, "segments", "publisher", "1")),
    );
    assert_eq!(s, 200, "{d}");
    let debit: Signed = serde_json::from_value(d).unwrap();
    let receipt = receipt_of(&r, &tee, &id, &sha, debit.clone());
    let up = upload_of(&tee, &receipt);
    let url = format!("{}/v1/contracts/{}/receipts", r.svc.url, r.digest);
    let body = serde_json::to_value(&up).unwrap();

    // Who may upload, and what.
    let other = r.upload_auth();
    let mut by_other_key = up.clone();
    by_other_key.receipt = sign(&other.key, &receipt);
    let mut other_run = receipt.clone();
    other_run.run = other.run.clone();
    let mut other_evidence = up.clone();
    other_evidence.evidence = serde_json::from_value(other.request.clone()).unwrap();
    for (auth, body, status, code) in [
        (None, body.clone(), 401, "unauthorized"),
        (
            Some(format!("Bearer {PUB_TOKEN}")),
            body.clone(),
            401,
            "unauthorized",
        ),
        // Another run's token with this run's receipt: not signed by that run's key.
        (Some(other.auth.clone()), body.clone(), 401, "unauthorized"),
        (
            Some(tee.auth.clone()),
            serde_json::to_value(&by_other_key).unwrap(),
            401,
            "unauthorized",
        ),
        (
            Some(tee.auth.clone()),
            serde_json::to_value(upload_of(&tee, &other_run)).unwrap(),
            400,
            "bad_request",
        ),
        (
            Some(tee.auth.clone()),
            serde_json::to_value(&other_evidence).unwrap(),
            400,
            "bad_request",
        ),
        (
            Some(tee.auth.clone()),
            serde_json::json!({"receipt": up.receipt}),
            400,
            "bad_request",
        ),
    ] {
        let (s, b) = call_json(&url, auth.as_deref(), Some(&body));
        assert_eq!((s, b["code"].as_str()), (status, Some(code)), "{b}");
    }
    // Before its receipt, the run uploads no answer.
    let answer_url = format!(
        "{}/v1/contracts/{}/blobs/query-{id}.result",
        r.svc.url, r.digest
    );
    let put = |auth: &str, bytes: &[u8]| -> (u16, serde_json::Value) {
        let mut resp = plain_agent()
            .put(&answer_url)
            .header("authorization", auth)
            .send(bytes)
            .unwrap();
        let st = resp.status().as_u16();
        (
            st,
            serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap(),
        )
    };
    let (s, b) = put(&tee.auth, ANSWER);
    assert_eq!((s, b["code"].as_str()), (403, Some("no_receipt")), "{b}");
    let (s, b) = call_json(&url, Some(&tee.auth), Some(&body));
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["run"], tee.run.as_str());
    // After it: only the bytes it names.
    let (s, b) = put(&tee.auth, b"DCRSIGN\0 other bytes");
    assert_eq!(
        (s, b["code"].as_str()),
        (403, Some("not_in_receipt")),
        "{b}"
    );
    let (s, b) = put(&other.auth, ANSWER);
    assert_eq!(
        (s, b["code"].as_str()),
        (403, Some("no_receipt")),
        "another run's token: {b}"
    );
    let (s, b) = put(&tee.auth, ANSWER);
    assert_eq!(s, 201, "{b}");
    // The same bytes again (a retry after a lost answer) are stored already; another receipt
    // for the run is refused (write-once).
    let (s, b) = call_json(&url, Some(&tee.auth), Some(&body));
    assert_eq!(s, 201, "{b}");
    let mut later = receipt.clone();
    later.finished_at += 1;
    let (s, b) = call_json(
        &url,
        Some(&tee.auth),
        Some(&serde_json::to_value(upload_of(&tee, &later)).unwrap()),
    );
    assert_eq!((s, b["code"].as_str()), (409, Some("conflict")), "{b}");

    // Parties read it; nobody else.
    let (s, b) = call_json(&url, None, None);
    assert_eq!(s, 401, "{b}");
    let (s, b) = call_json(&url, Some(&tee.auth), None);
    assert_eq!(s, 401, "the TEE's token is not a party's: {b}");
    let (s, b) = call_json(&url, Some(&format!("Bearer {ADV_TOKEN}")), None);
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["runs"], serde_json::json!([tee.run]));
    let (s, b) = call_json(
        &format!("{url}/{}", tee.run),
        Some(&format!("Bearer {PUB_TOKEN}")),
        None,
    );
    assert_eq!(s, 200, "{b}");
    let got: ReceiptUpload = serde_json::from_value(b).unwrap();
    assert_eq!(got, up);
    let (s, _) = call_json(
        &format!("{url}/{}", "0".repeat(64)),
        Some(&format!("Bearer {PUB_TOKEN}")),
        None,
    );
    assert_eq!(s, 404);

    // The audit log links the receipt to the run and to the run's debit.
    let audit = audit_records(&r.svc.data_dir);
    let stored: Vec<_> = audit
        .iter()
        .filter(|a| a["kind"] == "receipt" && a.get("code").is_none())
        .collect();
    assert_eq!(
        stored.len(),
        1,
        "one record for the receipt (not for its retry): {stored:?}"
    );
    let rec = stored[0];
    assert_eq!(rec["decision"], "store");
    use base64::Engine;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&up.receipt.payload)
        .unwrap();
    assert_eq!(rec["run"], tee.run.as_str());
    assert_eq!(rec["receipt_sha256"], hex::encode(Sha256::digest(&payload)));
    assert_eq!(rec["debits"], serde_json::json!([id]));
    let deb = audit
        .iter()
        .find(|a| a["kind"] == "debit" && a["query"] == id.as_str() && a.get("code").is_none())
        .expect("the debit in the audit log");
    assert_eq!(deb["run"], tee.run.as_str());
    assert_eq!(deb["upload"], rec["upload"]);

    // Offline.
    let dir = r.data.parent().unwrap().join("offline");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, v: &serde_json::Value| {
        let p = dir.join(name);
        std::fs::write(&p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
        p
    };
    let rp = write(
        "run.receipt.json",
        &serde_json::to_value(&up.receipt).unwrap(),
    );
    let ep = write("run.evidence.json", &tee.request);
    let mut m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(r.data.parent().unwrap().join("budget.measurements.json")).unwrap(),
    )
    .unwrap();
    m["contract_digest"] = r.digest.clone().into();
    let mp = write("measurements.json", &m);
    let pubp = r.svc.data_dir.join("service.pub.json");
    let o = verify_receipt(&rp, &ep, &mp, &pubp);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("verdict: accepted"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("ok   reference.pcr.23"),
        "{}",
        stdout(&o)
    );
    let refused = |rp: &std::path::Path,
                   ep: &std::path::Path,
                   mp: &std::path::Path,
                   pubp: &std::path::Path,
                   what: &str| {
        let o = verify_receipt(rp, ep, mp, pubp);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{what}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        assert!(
            stdout(&o).contains("verdict: refused"),
            "{what}: {}",
            stdout(&o)
        );
        stdout(&o)
    };
    // Any field changed.
    let flips = every_field_changed(&up.receipt);
    assert!(flips.len() >= 20, "{} fields", flips.len());
    for (path, s) in &flips {
        let p = write("flipped.receipt.json", &serde_json::to_value(s).unwrap());
        refused(&p, &ep, &mp, &pubp, path);
    }
    // A forged debit, in a receipt the TEE itself signs: another key's signature on a debit
    // of ε 0.5 (the service debited 1).
    let forger = dcr_protocol::keys::SigningSecret::generate(&mut rand_core::OsRng);
    let mut d: serde_json::Value =
        serde_json::from_slice(&debit.verify_in(DEBIT_DOMAIN, &r.signing).unwrap()).unwrap();
    d["epsilon"] = "0.5".into();
    let mut forged = receipt.clone();
    forged.queries[0].epsilon = Some(Epsilon::parse("0.5").unwrap());
    forged.queries[0].debit = Some(Signed::sign_in(
        DEBIT_DOMAIN,
        &forger,
        &serde_json::to_vec(&d).unwrap(),
    ));
    let p = write(
        "forged.receipt.json",
        &serde_json::to_value(sign(&tee.key, &forged)).unwrap(),
    );
    let out = refused(&p, &ep, &mp, &pubp, "forged debit");
    assert!(out.contains("not signed by the service key"), "{out}");
    // Another run's (real, verifying) evidence.
    let p = write("other.evidence.json", &other.request);
    let out = refused(&rp, &p, &mp, &pubp, "swapped evidence");
    assert!(out.contains("FAIL evidence"), "{out}");
    // Another contract's reference values; other PCR values.
    let mut m2 = m.clone();
    m2["contract_digest"] = "11".repeat(32).into();
    let p = write("other-contract.json", &m2);
    let out = refused(&rp, &ep, &p, &pubp, "other contract");
    assert!(out.contains("FAIL contract"), "{out}");
    let mut m3 = m.clone();
    m3["measurements"]["tpm"]["pcrs"]["23"] = "22".repeat(32).into();
    let p = write("other-pcrs.json", &m3);
    let out = refused(&rp, &ep, &p, &pubp, "other pcrs");
    assert!(out.contains("FAIL reference.pcr.23"), "{out}");
    // Another service key.
    let other_svc = dcr_protocol::keys::SigningSecret::generate(&mut rand_core::OsRng);
    let p = write(
        "other.pub.json",
        &serde_json::json!({"signing_key": other_svc.public().to_text(), "registration_key": format!("x25519:{}", "00".repeat(32))}),
    );
    let out = refused(&rp, &ep, &mp, &p, "other service");
    assert!(out.contains("FAIL receipt"), "{out}");
    // Unreadable input: a one-line error naming the flag, exit 2.
    let o = verify_receipt(&dir.join("missing.json"), &ep, &mp, &pubp);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--receipt"), "{}", stderr(&o));
}

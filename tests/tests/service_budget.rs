//! The privacy-budget ledger (issue K): only the TEE of a run (its unused upload token for
//! this contract) debits; a debit names a stored query exactly and the rule's ε per query;
//! the debit that would pass ε_total is refused; a query id is debited once (a replay gets
//! the same signed debit); restarting the service or registering the same contract again
//! resets nothing; kill -9 during 64 concurrent debits loses no acknowledged debit and grants
//! nothing beyond the budget. The TEE is the software TPM the load tests pin (--tpm-ak).

use std::sync::Mutex;

use dcr_protocol::dp::{Debit, Epsilon, NANOS};
use dcr_protocol::keys::SigningPublic;
use dcr_protocol::release::{Signed, DEBIT_DOMAIN};
use dcr_tests::load::*;
use dcr_tests::*;

/// The signed debit, checked with the service key.
fn opened(signing: &SigningPublic, body: &serde_json::Value) -> Debit {
    let s: Signed = serde_json::from_value(body.clone()).unwrap();
    assert!(
        s.verify(signing).is_err(),
        "a debit must not verify as a release response"
    );
    serde_json::from_slice(&s.verify_in(DEBIT_DOMAIN, signing).unwrap()).unwrap()
}

#[test]
fn debits_are_the_tees_once_per_query_and_never_past_the_total() {
    let r = DpRoom::new("0.5", "2", "analysis");
    let tee = r.upload_auth();
    let qs: Vec<(String, String)> = (0..6)
        .map(|n| r.submit("publisher", PUB_TOKEN, "segments", n))
        .collect();
    let (plain_id, plain_sha) = r.submit("publisher", PUB_TOKEN, "plain", 0);
    let url = r.debit_url();
    let (id0, sha0) = &qs[0];
    // Who may debit, and what.
    for (auth, body, status, code) in [
        (
            None,
            tee.req(id0, sha0, "segments", "publisher", "0.5"),
            401,
            "unauthorized",
        ),
        (
            Some(format!("Bearer {PUB_TOKEN}")),
            tee.req(id0, sha0, "segments", "publisher", "0.5"),
            401,
            "unauthorized",
        ),
        (
            Some(format!("Upload {}", "ab".repeat(32))),
            tee.req(id0, sha0, "segments", "publisher", "0.5"),
            401,
            "unauthorized",
        ),
        (
            Some(tee.auth.clone()),
            tee.req(id0, sha0, "segments", "publisher", "0.25"),
            400,
            "bad_request",
        ),
        (
            Some(tee.auth.clone()),
            tee.req(id0, sha0, "segments", "publisher", "1"),
            400,
            "bad_request",
        ),
        (
            Some(tee.auth.clone()),
            tee.req(id0, &"00".repeat(32), "segments", "publisher", "0.5"),
            400,
            "bad_request",
        ),
        (
            Some(tee.auth.clone()),
            tee.req(id0, sha0, "segments", "advertiser", "0.5"),
            400,
            "bad_request",
        ),
        (
            Some(tee.auth.clone()),
            tee.req(&"0".repeat(32), sha0, "segments", "publisher", "0.5"),
            404,
            "unknown_query",
        ),
        (
            Some(tee.auth.clone()),
            tee.req(&plain_id, &plain_sha, "plain", "publisher", "0.5"),
            400,
            "bad_request",
        ),
    ] {
        let (s, b) = call_json(&url, auth.as_deref(), Some(&body));
        assert_eq!(
            (s, b["code"].as_str().unwrap_or("?")),
            (status, code),
            "{body}: {b}"
        );
    }
    // Unknown fields in the signed request; an unsigned request; one signed by another key
    // (a man in the middle with the token but not the TEE's attested result key).
    let mut extra = debit_request(id0, sha0, "segments", "publisher", "0.5");
    extra["more"] = 1.into();
    let (s, _) = call_json(&url, Some(&tee.auth), Some(&signed_debit(&tee.key, &extra)));
    assert_eq!(s, 400);
    let plain = debit_request(id0, sha0, "segments", "publisher", "0.5");
    assert_eq!(call_json(&url, Some(&tee.auth), Some(&plain)).0, 400);
    let other = dcr_protocol::keys::SigningSecret::generate(&mut rand_core::OsRng);
    let (s, b) = call_json(&url, Some(&tee.auth), Some(&signed_debit(&other, &plain)));
    assert_eq!((s, b["code"].as_str()), (401, Some("unauthorized")), "{b}");
    // Four debits of 0.5 fill a budget of 2; the fifth and sixth are refused.
    let mut acked = Vec::new();
    for (i, (id, sha)) in qs.iter().enumerate() {
        let (s, b) = call_json(
            &url,
            Some(&tee.auth),
            Some(&tee.req(id, sha, "segments", "publisher", "0.5")),
        );
        if i < 4 {
            assert_eq!(s, 200, "{b}");
            let d = opened(&r.signing, &b);
            assert_eq!(
                (d.query_id.as_str(), d.query_sha256.as_str()),
                (id.as_str(), sha.as_str())
            );
            assert_eq!(d.spent, Epsilon((i as u64 + 1) * NANOS / 2));
            assert_eq!(
                (d.total, d.budget.as_str()),
                (Epsilon(2 * NANOS), "analysis")
            );
            acked.push((id.clone(), sha.clone(), b));
        } else {
            assert_eq!(
                (s, b["code"].as_str().unwrap()),
                (409, "budget_exhausted"),
                "{b}"
            );
            assert!(b["message"].as_str().unwrap().contains("2 of 2"), "{b}");
        }
    }
    // A replay returns the same signed debit and spends nothing.
    let (id, sha, first) = &acked[1];
    let (s, again) = call_json(
        &url,
        Some(&tee.auth),
        Some(&tee.req(id, sha, "segments", "publisher", "0.5")),
    );
    assert_eq!((s, &again), (200, first));
    assert_eq!(opened(&r.signing, first).run, tee.run);
    // Another run (a new release) cannot get the same query debited again: no fresh noise
    // for one debit.
    let run2 = r.upload_auth();
    let (s, b) = call_json(
        &url,
        Some(&run2.auth),
        Some(&run2.req(id, sha, "segments", "publisher", "0.5")),
    );
    assert_eq!(
        (s, b["code"].as_str()),
        (409, Some("already_debited")),
        "{b}"
    );
    // The parties see the budget; others do not.
    let burl = r.budget_url();
    let (s, b) = call_json(&burl, Some(&format!("Bearer {ADV_TOKEN}")), None);
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b[0]["spent"].as_str(), b[0]["total"].as_str()),
        (Some("2"), Some("2")),
        "{b}"
    );
    assert_eq!(call_json(&burl, None, None).0, 401);
    // Restart (SIGKILL) and register the same contract again: the budget is still spent.
    let mut r = r;
    r.restart();
    let o = std::process::Command::new(dcr_attest())
        .args(["register", "--service", &r.svc.url, "--service-pub"])
        .arg(r.data.join("service.pub.json"))
        .arg("--token-file")
        .arg(r.data.join("../publisher.token"))
        .arg("--dek")
        .arg(r.data.join("../k1.dek"))
        .arg("--contract")
        .arg(r.data.join("../budget.toml"))
        .arg("--reference")
        .arg(r.data.join("../budget.measurements.json"))
        .args(["--platform", "tpm"])
        .output()
        .unwrap();
    // The key id exists (conflict) or registers again; either way the budget stays.
    let _ = o;
    let (s, b) = call_json(&r.budget_url(), Some(&format!("Bearer {PUB_TOKEN}")), None);
    assert_eq!((s, b[0]["spent"].as_str()), (200, Some("2")), "{b}");
    let tee = r.upload_auth();
    let (id, sha) = &qs[5];
    let (s, b) = call_json(
        &r.debit_url(),
        Some(&tee.auth),
        Some(&tee.req(id, sha, "segments", "publisher", "0.5")),
    );
    assert_eq!(
        (s, b["code"].as_str()),
        (409, Some("budget_exhausted")),
        "{b}"
    );
}

#[test]
fn budgets_per_party_are_separate() {
    let r = DpRoom::new("0.5", "0.5", "party");
    let tee = r.upload_auth();
    let (p1, s1) = r.submit("publisher", PUB_TOKEN, "segments", 1);
    let (p2, s2) = r.submit("publisher", PUB_TOKEN, "segments", 2);
    let (a1, sa1) = r.submit("advertiser", ADV_TOKEN, "segments", 1);
    let url = r.debit_url();
    let (s, b) = call_json(
        &url,
        Some(&tee.auth),
        Some(&tee.req(&p1, &s1, "segments", "publisher", "0.5")),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(opened(&r.signing, &b).budget, "party:publisher");
    let (s, b) = call_json(
        &url,
        Some(&tee.auth),
        Some(&tee.req(&p2, &s2, "segments", "publisher", "0.5")),
    );
    assert_eq!(
        (s, b["code"].as_str()),
        (409, Some("budget_exhausted")),
        "{b}"
    );
    let (s, b) = call_json(
        &url,
        Some(&tee.auth),
        Some(&tee.req(&a1, &sa1, "segments", "advertiser", "0.5")),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(opened(&r.signing, &b).budget, "party:advertiser");
}

#[test]
fn kill_9_during_64_concurrent_debits_loses_nothing_acknowledged_and_grants_nothing_extra() {
    // Budget 20 at 0.5 a query: 40 of the 64 queries can be debited.
    let r = DpRoom::new("0.5", "20", "analysis");
    let tee = r.upload_auth();
    let qs: Vec<(String, String)> = (0..64)
        .map(|n| r.submit("publisher", PUB_TOKEN, "segments", n))
        .collect();
    let url = r.debit_url();
    let acked = Mutex::new(Vec::<(String, serde_json::Value)>::new());
    let mut r = r;
    let svc = &mut r.svc;
    std::thread::scope(|s| {
        for (id, sha) in &qs {
            let (acked, url, tee) = (&acked, &url, &tee);
            s.spawn(move || {
                let a = plain_agent();
                let resp = a
                    .post(url)
                    .header("authorization", tee.auth.as_str())
                    .header("content-type", "application/json")
                    .send(
                        serde_json::to_vec(&tee.req(id, sha, "segments", "publisher", "0.5"))
                            .unwrap(),
                    );
                if let Ok(mut resp) = resp {
                    if resp.status().as_u16() == 200 {
                        let v: serde_json::Value =
                            serde_json::from_str(&resp.body_mut().read_to_string().unwrap())
                                .unwrap();
                        acked.lock().unwrap().push((id.clone(), v));
                    }
                }
            });
        }
        // SIGKILL mid-burst: as soon as a few debits are acknowledged (the whole burst takes
        // ~20 ms on loopback, so a fixed delay would miss it).
        let t0 = std::time::Instant::now();
        while acked.lock().unwrap().len() < 8 && t0.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::yield_now();
        }
        let _ = svc.child.kill();
        let _ = svc.child.wait();
    });
    let acked = acked.into_inner().unwrap();
    r.restart();
    // Every acknowledged debit is still there: its replay returns the same signed debit.
    let url2 = r.debit_url();
    for (id, first) in &acked {
        let sha = &qs.iter().find(|(i, _)| i == id).unwrap().1;
        let (s, again) = call_json(
            &url2,
            Some(&tee.auth),
            Some(&tee.req(id, sha, "segments", "publisher", "0.5")),
        );
        assert_eq!((s, &again), (200, first), "acknowledged debit of {id} lost");
    }
    // Finish the rest after the restart: exactly 40 debits in all, never more.
    let mut granted = 0;
    for (id, sha) in &qs {
        let (s, b) = call_json(
            &url2,
            Some(&tee.auth),
            Some(&tee.req(id, sha, "segments", "publisher", "0.5")),
        );
        match s {
            200 => {
                let d = opened(&r.signing, &b);
                assert!(d.spent <= d.total, "{d:?}");
                granted += 1;
            }
            409 => assert_eq!(b["code"], "budget_exhausted"),
            _ => panic!("{s}: {b}"),
        }
    }
    assert_eq!(granted, 40, "{} acknowledged before the kill", acked.len());
    let (s, b) = call_json(&r.budget_url(), Some(&format!("Bearer {PUB_TOKEN}")), None);
    assert_eq!((s, b[0]["spent"].as_str()), (200, Some("20")), "{b}");
    eprintln!(
        "kill -9: {} of 64 debits acknowledged before the kill",
        acked.len()
    );
}

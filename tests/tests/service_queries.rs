//! Queries under a contract's analyses (issue J): only a submitter the analysis names stores
//! one, as itself; the pending list is for the contract's parties (or its TEE) and is signed
//! with the service key the contract pins; a flood stops at the per-contract cap; nobody
//! without the TEE's upload token writes an answer.

use dcr_protocol::contract::Contract;
use dcr_protocol::keys::SigningPublic;
use dcr_protocol::release::{Signed, QUERIES_DOMAIN};
use dcr_protocol::wire::{QueryList, MAX_PENDING_QUERIES};
use dcr_tests::*;

const ADV: &str = "advertiser-token-0123456789";
const PUB: &str = "publisher-token-0123456789";

fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut r = match (method, body) {
        ("GET", _) => {
            let mut q = agent.get(url);
            if let Some(t) = token {
                q = q.header("authorization", t);
            }
            q.call().unwrap()
        }
        (m, b) => {
            let mut q = if m == "POST" {
                agent.post(url)
            } else {
                agent.put(url)
            };
            if let Some(t) = token {
                q = q.header("authorization", t);
            }
            q.send(b.unwrap_or("").as_bytes().to_vec()).unwrap()
        }
    };
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON response: {text}")),
    )
}

#[test]
fn queries_are_stored_for_named_submitters_and_listed_signed() {
    let dir = TempDir::new("queries");
    let data = dir.path().join("data");
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/clean-room/contract.toml"),
    )
    .unwrap();
    let c = Contract::from_toml(&text).unwrap();
    let digest = hex::encode(c.digest());
    std::fs::create_dir_all(data.join("contracts")).unwrap();
    std::fs::write(
        data.join("contracts").join(format!("{digest}.json")),
        c.canonical_json(),
    )
    .unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("advertiser:{ADV}\npublisher:{PUB}\n")).unwrap();
    let svc = start_service(&data, &["--tokens", tokens.to_str().unwrap()]);
    let url = format!("{}/v1/contracts/{digest}/queries", svc.url);
    let adv = format!("Bearer {ADV}");
    let publ = format!("Bearer {PUB}");
    let q = |party: &str, analysis: &str| {
        format!(r#"{{"analysis":"{analysis}","party":"{party}","sql":"SELECT 1"}}"#)
    };

    let (s, b) = call("POST", &url, Some(&adv), Some(&q("advertiser", "overlap")));
    assert_eq!(s, 201, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    assert_eq!(b["party"], "advertiser");
    for (token, body, status, code) in [
        (
            Some(publ.as_str()),
            q("publisher", "overlap"),
            403,
            "not_submitter",
        ),
        (
            Some(publ.as_str()),
            q("advertiser", "overlap"),
            403,
            "not_submitter",
        ),
        (None, q("advertiser", "overlap"), 401, "unauthorized"),
        (
            Some(adv.as_str()),
            q("advertiser", "nope"),
            400,
            "bad_request",
        ),
        (
            Some(adv.as_str()),
            r#"{"analysis":"overlap","party":"advertiser","sql":"x","more":1}"#.to_string(),
            400,
            "bad_request",
        ),
        // Template parameters for an analysis that takes SQL (they would only fatten the
        // list the guest reads), SQL with a control character, a document over the cap.
        (
            Some(adv.as_str()),
            r#"{"analysis":"overlap","party":"advertiser","parameters":{"a":"b"}}"#.to_string(),
            400,
            "bad_request",
        ),
        (
            Some(adv.as_str()),
            r#"{"analysis":"overlap","party":"advertiser","sql":"SELECT '[2J'"}"#.to_string(),
            400,
            "bad_request",
        ),
        (
            Some(adv.as_str()),
            format!(
                r#"{{"analysis":"overlap","party":"advertiser","sql":"{}"}}"#,
                "\\\"".repeat(13000)
            ),
            400,
            "bad_request",
        ),
    ] {
        let (s, b) = call("POST", &url, token, Some(&body));
        assert_eq!(
            (s, b["code"].as_str().unwrap()),
            (status, code),
            "{body}: {b}"
        );
    }

    // The list: parties only, signed with the key the contract pins.
    let (s, b) = call("GET", &url, None, None);
    assert_eq!(s, 401, "{b}");
    let (s, b) = call("GET", &url, Some(&publ), None);
    assert_eq!(s, 200, "{b}");
    let signed: Signed = serde_json::from_value(b).unwrap();
    let info = call("GET", &format!("{}/v1/service", svc.url), None, None).1;
    let key = SigningPublic::from_text(info["signing_key"].as_str().unwrap()).unwrap();
    let payload = signed.verify_in(QUERIES_DOMAIN, &key).unwrap();
    assert!(
        signed.verify(&key).is_err(),
        "a list must not verify as a release"
    );
    let list: QueryList = serde_json::from_slice(&payload).unwrap();
    assert_eq!(list.contract_digest, digest);
    assert_eq!(list.queries.len(), 1);
    assert_eq!(list.queries[0].id, id);
    assert_eq!(list.queries[0].query.party, "advertiser");

    // An answer is written only with the TEE's upload token, not by a party.
    let blob = format!("{}/v1/contracts/{digest}/blobs/query-{id}.result", svc.url);
    let (s, b) = call("PUT", &blob, Some(&adv), Some("x"));
    assert_eq!(s, 403, "{b}");
    let (s, b) = call(
        "PUT",
        &blob,
        Some(&format!("Upload {}", "00".repeat(32))),
        Some("x"),
    );
    assert_eq!(s, 401, "{b}");

    // A flood stops at the cap; the cap is exact.
    let mut codes = Vec::new();
    for _ in 0..MAX_PENDING_QUERIES + 5 {
        codes.push(call("POST", &url, Some(&adv), Some(&q("advertiser", "overlap"))).0);
    }
    assert_eq!(
        codes.iter().filter(|&&c| c == 201).count(),
        MAX_PENDING_QUERIES - 1
    );
    assert!(
        codes[MAX_PENDING_QUERIES - 1..].iter().all(|&c| c == 429),
        "{codes:?}"
    );
    let stored = std::fs::read_dir(data.join("queries").join(&digest))
        .unwrap()
        .count();
    assert_eq!(stored, MAX_PENDING_QUERIES);
    // Every store and refusal is in the audit log, naming the party.
    let records = audit_records(&data);
    assert!(records
        .iter()
        .any(|r| r["kind"] == "query" && r["decision"] == "store" && r["query"] == id.as_str()));
    assert!(records.iter().any(|r| r["kind"] == "query"
        && r["code"] == "not_submitter"
        && r["party"] == "publisher"));
}

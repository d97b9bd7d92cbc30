//! A run's receipt (docs/protocol.md, "Run receipts"): what one attested run did, signed by the
//! TEE with its result key (the Ed25519 key bound into its evidence's report data next to the
//! HPKE key, [`crate::release::report_data`]) under [`RUN_RECEIPT_DOMAIN`].
//!
//! The receipt names the contract, the platform, the challenge (session, nonce), the evidence's
//! digest, the service's signed release (kept whole: it names the evidence digest and the result
//! key, and the service's signature on it is what vouches for the evidence it verified online,
//! e.g. a TPM's credential activation), the sealed digest of each input, each query (id,
//! analysis, SQL document digest, submitter, outcome, the answer's digest, and for DP the ε
//! with the service's signed debit) and the output's digest, with the guest's clock at start
//! and end. It is uploaded with the evidence the TEE posted ([`ReceiptUpload`]); any party
//! checks both offline: [`check`] here (signatures, release, debits, internal consistency),
//! and the evidence against `measurements.json` with the same verifiers as the service.
//!
//! Refusal *reasons* are not in the receipt (they are sealed to the recipients with the
//! answer and may say more than the parties agreed everyone may read); the outcome's code is.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dp::{Debit, Epsilon};
use crate::keys::{SigningPublic, SigningSecret};
use crate::release::{Signed, DEBIT_DOMAIN, RUN_RECEIPT_DOMAIN};
use crate::wire::{AttestRequest, Release, Tee};

/// The receipt version this build writes and reads.
pub const RECEIPT_VERSION: u32 = 1;
/// The largest receipt upload (receipt + evidence JSON) the service takes.
pub const MAX_RECEIPT_UPLOAD: usize = 1 << 20;

/// What a run did (see the module documentation).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub version: u32,
    /// SHA-256 of the canonical contract, hex.
    pub contract_digest: String,
    /// The contract the run had (its canonical JSON, base64): it pins the service key, so a
    /// verifier holding only `measurements.json` (which names the digest) knows which service
    /// key must have signed the release and the debits.
    pub contract: String,
    pub platform: Tee,
    /// The challenge the evidence answered.
    pub session_id: String,
    /// The challenge's nonce, hex (bound in the evidence's report data).
    pub nonce: String,
    /// SHA-256 of the evidence's canonical JSON, hex (the release's `evidence_digest`).
    pub evidence_sha256: String,
    /// SHA-256 of the signed release's payload bytes, hex.
    pub release_sha256: String,
    /// The service's signed release response, as the TEE received it.
    pub release: Signed,
    /// The run: SHA-256 of its upload token, hex (each debit names it).
    pub run: String,
    pub inputs: Vec<ReceiptInput>,
    pub queries: Vec<ReceiptQuery>,
    /// The native workload's output, when the contract has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<ReceiptOutput>,
    /// The guest's clock (Unix seconds) when the run started and when the receipt was signed
    /// (the release's `issued_at` is the service's clock).
    pub started_at: u64,
    pub finished_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReceiptInput {
    pub dataset: String,
    pub key_id: String,
    /// SHA-256 of the sealed blob as downloaded, hex.
    pub sealed_sha256: String,
    pub sealed_bytes: u64,
}

/// How a query ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QueryOutcome {
    /// Rows were released.
    Ok,
    /// Rows were released under differential privacy, after the debit.
    Dp,
    /// A sealed refusal (the reason is in the sealed answer).
    Refused,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReceiptQuery {
    pub id: String,
    pub analysis: String,
    /// SHA-256 of the query document (its SQL, analysis and submitter), hex.
    pub sql_sha256: String,
    pub submitter: String,
    pub outcome: QueryOutcome,
    /// For a refusal: the refusal's code (`refused`, `budget_refused`, `not_submitter`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// SHA-256 of the signed answer file uploaded as `query-<id>.result`, hex.
    pub result_sha256: String,
    /// ε debited, for a DP answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<Epsilon>,
    /// The service's signed debit, for a DP answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debit: Option<Signed>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReceiptOutput {
    pub blob: String,
    /// SHA-256 of the signed result file uploaded as `blob`, hex.
    pub sha256: String,
}

/// What the TEE uploads at the end of a run (`POST /v1/contracts/{digest}/receipts`) and what
/// a party downloads: the signed receipt and the evidence request the TEE posted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReceiptUpload {
    pub receipt: Signed,
    pub evidence: AttestRequest,
}

/// `GET /v1/contracts/{digest}/receipts`: the runs with a receipt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReceiptList {
    pub contract_digest: String,
    /// Hex SHA-256 of each run's upload token, sorted.
    pub runs: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiptError {
    #[error("receipt: {0}")]
    Format(String),
    #[error("receipt: version {0} (this build reads {RECEIPT_VERSION})")]
    Version(u32),
    #[error("release: the service's signature does not verify with {0}")]
    ReleaseSignature(String),
    #[error("receipt: the signature does not verify with the attested result key {0}")]
    Signature(String),
    #[error("receipt field {field}: {got} differs from the {source_of}'s {want}")]
    Mismatch {
        field: &'static str,
        got: String,
        want: String,
        source_of: &'static str,
    },
    #[error("query {query}: {why}")]
    Query { query: String, why: String },
    #[error("receipt: the contract's service key is {pinned}, not the given {given}")]
    ServiceKey { pinned: String, given: String },
}

fn mismatch(field: &'static str, got: &str, want: &str, source_of: &'static str) -> ReceiptError {
    ReceiptError::Mismatch {
        field,
        got: got.to_string(),
        want: want.to_string(),
        source_of,
    }
}

/// SHA-256 of a value's canonical JSON, hex (how evidence is digested).
pub fn canonical_sha256(v: &serde_json::Value) -> String {
    let mut canon = Vec::new();
    crate::canonical::write(v, &mut canon);
    hex::encode(Sha256::digest(&canon))
}

/// The TEE's side: sign `r` with its result key.
pub fn sign(key: &SigningSecret, r: &Receipt) -> Signed {
    let bytes = crate::canonical::compact(r).expect("a typed document");
    Signed::sign_in(RUN_RECEIPT_DOMAIN, key, &bytes)
}

/// The receipt's payload, unverified (to name the key it claims before checking it).
pub fn parse_unverified(signed: &Signed) -> Result<Receipt, ReceiptError> {
    use base64::Engine;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&signed.payload)
        .map_err(|e| ReceiptError::Format(format!("payload: {e}")))?;
    let r: Receipt = serde_json::from_slice(&payload)
        .map_err(|e| ReceiptError::Format(format!("payload: {e}")))?;
    if r.version != RECEIPT_VERSION {
        return Err(ReceiptError::Version(r.version));
    }
    Ok(r)
}

/// Check a signed receipt offline against the pinned service key: the release is the
/// service's; the receipt is signed by the result key the release names; contract, session,
/// evidence digest and release digest agree; every DP query carries a debit the service
/// signed for exactly this contract, query, document, submitter, ε and run; ids are unique.
/// Returns the receipt and the release. The evidence itself is checked by the caller (it
/// needs the platform verifiers): it must digest to `evidence_sha256` and bind `nonce`, the
/// release's HPKE key, the contract digest and the result key.
pub fn check(
    signed: &Signed,
    service_key: &SigningPublic,
) -> Result<(Receipt, Release), ReceiptError> {
    let r = parse_unverified(signed)?;
    // The contract: the one the digest names, and it pins this service key.
    let contract_bytes = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(&r.contract)
            .map_err(|e| ReceiptError::Format(format!("contract: {e}")))?
    };
    let contract_sha256 = hex::encode(Sha256::digest(&contract_bytes));
    if contract_sha256 != r.contract_digest {
        return Err(mismatch(
            "contract",
            &contract_sha256,
            &r.contract_digest,
            "receipt's contract_digest",
        ));
    }
    let contract = crate::contract::Contract::from_canonical_json(&contract_bytes)
        .map_err(|e| ReceiptError::Format(format!("contract: {e}")))?;
    if contract.signing_key() != *service_key {
        return Err(ReceiptError::ServiceKey {
            pinned: contract.service.signing_key.clone(),
            given: service_key.to_text(),
        });
    }
    let rel_payload = r
        .release
        .verify(service_key)
        .map_err(|_| ReceiptError::ReleaseSignature(service_key.to_text()))?;
    let rel: Release = serde_json::from_slice(&rel_payload)
        .map_err(|e| ReceiptError::Format(format!("release payload: {e}")))?;
    let key = SigningPublic::from_text(&rel.result_key)
        .map_err(|e| ReceiptError::Format(format!("release result_key: {e}")))?;
    let payload = signed
        .verify_in(RUN_RECEIPT_DOMAIN, &key)
        .map_err(|_| ReceiptError::Signature(rel.result_key.clone()))?;
    // What was signed is what was parsed (one canonical form).
    let canon = crate::canonical::compact(&r).expect("a typed document");
    if canon != payload {
        return Err(ReceiptError::Format(
            "payload is not in canonical form".into(),
        ));
    }
    let release_sha256 = hex::encode(Sha256::digest(&rel_payload));
    for (field, got, want) in [
        ("contract_digest", &r.contract_digest, &rel.contract_digest),
        ("session_id", &r.session_id, &rel.session_id),
        ("evidence_sha256", &r.evidence_sha256, &rel.evidence_digest),
        ("release_sha256", &r.release_sha256, &release_sha256),
    ] {
        if got != want {
            return Err(mismatch(field, got, want, "signed release"));
        }
    }
    let hex64 = |s: &str| {
        s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    if !hex64(&r.run) || hex::decode(&r.nonce).map_or(true, |n| n.is_empty()) {
        return Err(ReceiptError::Format(
            "run: 64 lowercase hex digits; nonce: hex".into(),
        ));
    }
    if r.finished_at < r.started_at {
        return Err(ReceiptError::Format(
            "finished_at is before started_at".into(),
        ));
    }
    let mut ids = std::collections::BTreeSet::new();
    for q in &r.queries {
        let bad = |why: String| ReceiptError::Query {
            query: q.id.clone(),
            why,
        };
        if !ids.insert(q.id.as_str()) {
            return Err(bad("listed twice".into()));
        }
        if !hex64(&q.result_sha256) || !hex64(&q.sql_sha256) {
            return Err(bad(
                "result_sha256, sql_sha256: 64 lowercase hex digits".into()
            ));
        }
        match (q.outcome, &q.debit, q.epsilon, &q.refusal) {
            (QueryOutcome::Dp, Some(d), Some(eps), None) => {
                check_debit(&r, q, d, eps, service_key).map_err(bad)?
            }
            (QueryOutcome::Dp, _, _, _) => {
                return Err(bad(
                    "a DP answer needs exactly its epsilon and the signed debit, and no refusal"
                        .into(),
                ))
            }
            (QueryOutcome::Ok, None, None, None) => {}
            (QueryOutcome::Ok, _, _, _) => {
                return Err(bad("a plain answer has no debit, epsilon or refusal".into()))
            }
            (QueryOutcome::Refused, _, _, Some(code)) if !code.is_empty() => {
                // A refusal after a debit (e.g. the answer failed its checks) keeps the debit.
                if let (Some(d), Some(eps)) = (&q.debit, q.epsilon) {
                    check_debit(&r, q, d, eps, service_key).map_err(bad)?;
                } else if q.debit.is_some() || q.epsilon.is_some() {
                    return Err(bad("a debit needs its epsilon".into()));
                }
            }
            (QueryOutcome::Refused, _, _, _) => return Err(bad("a refusal needs its code".into())),
        }
    }
    let mut datasets = std::collections::BTreeSet::new();
    for i in &r.inputs {
        if !datasets.insert(i.dataset.as_str()) || !hex64(&i.sealed_sha256) {
            return Err(ReceiptError::Format(format!(
                "input {}: listed twice or sealed_sha256 not 64 lowercase hex digits",
                i.dataset
            )));
        }
    }
    if let Some(o) = &r.output {
        if !hex64(&o.sha256) {
            return Err(ReceiptError::Format(
                "output.sha256: 64 lowercase hex digits".into(),
            ));
        }
    }
    Ok((r, rel))
}

/// A debit is the service's, for this contract, query, document, submitter, ε and run.
fn check_debit(
    r: &Receipt,
    q: &ReceiptQuery,
    signed: &Signed,
    eps: Epsilon,
    service_key: &SigningPublic,
) -> Result<(), String> {
    let payload = signed.verify_in(DEBIT_DOMAIN, service_key).map_err(|_| {
        format!(
            "the debit is not signed by the service key {}",
            service_key.to_text()
        )
    })?;
    let d: Debit = serde_json::from_slice(&payload).map_err(|e| format!("debit: {e}"))?;
    let eps_s = eps.to_string();
    let d_eps = d.epsilon.to_string();
    for (field, got, want) in [
        ("contract_digest", &d.contract_digest, &r.contract_digest),
        ("query_id", &d.query_id, &q.id),
        ("query_sha256", &d.query_sha256, &q.sql_sha256),
        ("analysis", &d.analysis, &q.analysis),
        ("party", &d.party, &q.submitter),
        ("epsilon", &d_eps, &eps_s),
        ("run", &d.run, &r.run),
    ] {
        if got != want {
            return Err(format!(
                "the signed debit's {field} is {got}, the receipt says {want}"
            ));
        }
    }
    if d.spent > d.total {
        return Err(format!(
            "the signed debit spends {} of {}",
            d.spent, d.total
        ));
    }
    Ok(())
}

/// The evidence the TEE uploaded agrees with its checked receipt and release: its digest is
/// the release's, and it names the same platform, contract and keys. (Whether it binds them
/// and matches the reference values is the platform verifier's job.)
pub fn check_evidence(r: &Receipt, rel: &Release, e: &AttestRequest) -> Result<(), ReceiptError> {
    let digest = canonical_sha256(&e.evidence);
    for (field, got, want) in [
        ("evidence", &digest, &r.evidence_sha256),
        (
            "tee",
            &e.tee.as_str().to_string(),
            &r.platform.as_str().to_string(),
        ),
        ("session_id", &e.session_id, &r.session_id),
        ("contract_digest", &e.contract_digest, &r.contract_digest),
        ("hpke_public_key", &e.hpke_public_key, &rel.hpke_public_key),
        ("result_key", &e.result_key, &rel.result_key),
    ] {
        if got != want {
            return Err(ReceiptError::Mismatch {
                field,
                got: got.clone(),
                want: want.clone(),
                source_of: "receipt and release",
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    struct World {
        service: SigningSecret,
        tee: SigningSecret,
        receipt: Receipt,
        evidence: AttestRequest,
    }

    fn debit(w_service: &SigningSecret, q: &ReceiptQuery, run: &str, contract: &str) -> Signed {
        let d = Debit {
            contract_digest: contract.into(),
            analysis: q.analysis.clone(),
            budget: "analysis".into(),
            query_id: q.id.clone(),
            query_sha256: q.sql_sha256.clone(),
            party: q.submitter.clone(),
            epsilon: Epsilon::parse("1").unwrap(),
            run: run.into(),
            spent: Epsilon::parse("1").unwrap(),
            total: Epsilon::parse("4").unwrap(),
            at: "2026-12-01T00:00:00Z".into(),
        };
        Signed::sign_in(DEBIT_DOMAIN, w_service, &serde_json::to_vec(&d).unwrap())
    }

    /// A contract (canonical JSON) that pins `service`.
    fn contract_for(service: &SigningSecret) -> Vec<u8> {
        crate::contract::Contract::from_toml(&crate::contract::sample_toml(
            &service.public().to_text(),
        ))
        .unwrap()
        .canonical_json()
    }

    fn world() -> World {
        let service = SigningSecret::generate(&mut OsRng);
        let tee = SigningSecret::generate(&mut OsRng);
        let contract_json = contract_for(&service);
        let contract = hex::encode(Sha256::digest(&contract_json));
        let evidence = AttestRequest {
            session_id: "00".repeat(16),
            tee: Tee::Tpm,
            hpke_public_key: format!("x25519:{}", "22".repeat(32)),
            result_key: tee.public().to_text(),
            contract_digest: contract.clone(),
            evidence: serde_json::json!({"message": "bWVzc2FnZQ==", "signature": "c2ln"}),
        };
        let rel = Release {
            session_id: evidence.session_id.clone(),
            evidence_digest: canonical_sha256(&evidence.evidence),
            contract_digest: contract.clone(),
            hpke_public_key: evidence.hpke_public_key.clone(),
            result_key: tee.public().to_text(),
            issued_at: 1,
            keys: vec![],
        };
        let rel_bytes = serde_json::to_vec(&rel).unwrap();
        let run = "cd".repeat(32);
        let mut dpq = ReceiptQuery {
            id: "q-dp".into(),
            analysis: "overlap_dp".into(),
            sql_sha256: "01".repeat(32),
            submitter: "advertiser".into(),
            outcome: QueryOutcome::Dp,
            refusal: None,
            result_sha256: "02".repeat(32),
            epsilon: Some(Epsilon::parse("1").unwrap()),
            debit: None,
        };
        dpq.debit = Some(debit(&service, &dpq, &run, &contract));
        let receipt = Receipt {
            version: RECEIPT_VERSION,
            contract_digest: contract,
            contract: {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(&contract_json)
            },
            platform: Tee::Tpm,
            session_id: rel.session_id.clone(),
            nonce: "33".repeat(32),
            evidence_sha256: rel.evidence_digest.clone(),
            release_sha256: hex::encode(Sha256::digest(&rel_bytes)),
            release: Signed::sign(&service, &rel_bytes),
            run,
            inputs: vec![ReceiptInput {
                dataset: "segments".into(),
                key_id: "k1".into(),
                sealed_sha256: "04".repeat(32),
                sealed_bytes: 10,
            }],
            queries: vec![
                dpq,
                ReceiptQuery {
                    id: "q-raw".into(),
                    analysis: "overlap".into(),
                    sql_sha256: "05".repeat(32),
                    submitter: "advertiser".into(),
                    outcome: QueryOutcome::Refused,
                    refusal: Some("refused".into()),
                    result_sha256: "06".repeat(32),
                    epsilon: None,
                    debit: None,
                },
            ],
            output: Some(ReceiptOutput {
                blob: "result.sealed".into(),
                sha256: "07".repeat(32),
            }),
            started_at: 10,
            finished_at: 20,
        };
        World {
            service,
            tee,
            receipt,
            evidence,
        }
    }

    #[test]
    fn a_receipt_checks_and_its_evidence_matches() {
        let w = world();
        let s = sign(&w.tee, &w.receipt);
        let (r, rel) = check(&s, &w.service.public()).unwrap();
        assert_eq!(r, w.receipt);
        check_evidence(&r, &rel, &w.evidence).unwrap();
    }

    #[test]
    fn another_service_key_or_a_key_the_release_does_not_name_is_refused() {
        let w = world();
        let other = SigningSecret::generate(&mut OsRng);
        let s = sign(&w.tee, &w.receipt);
        assert!(matches!(
            check(&s, &other.public()),
            Err(ReceiptError::ServiceKey { .. })
        ));
        // A whole world forged under another service key (its own release, debits and
        // receipt) fails on the contract, which pins the real key; with a contract of its own,
        // the digest no longer matches.
        let mut forged = w.receipt.clone();
        forged.release = Signed::sign(&other, &{
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(&w.receipt.release.payload)
                .unwrap()
        });
        assert!(matches!(
            check(&sign(&w.tee, &forged), &other.public()),
            Err(ReceiptError::ServiceKey { .. })
        ));
        forged.contract = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(contract_for(&other))
        };
        assert!(matches!(
            check(&sign(&w.tee, &forged), &other.public()),
            Err(ReceiptError::Mismatch {
                field: "contract",
                ..
            })
        ));
        // Signed by a key the release does not name (a forger holding a real release).
        let s = sign(&other, &w.receipt);
        assert!(matches!(
            check(&s, &w.service.public()),
            Err(ReceiptError::Signature(_))
        ));
    }

    #[test]
    fn a_forged_debit_is_refused_even_when_the_tee_signs_the_receipt() {
        // A TEE that holds its own result key still cannot make up a debit: each debit must be
        // the service's, for this query and run.
        let w = world();
        let forger = SigningSecret::generate(&mut OsRng);
        let q0 = w.receipt.queries[0].clone();
        let cases: Vec<(&str, Signed)> = vec![
            (
                "not signed by the service",
                debit(&forger, &q0, &w.receipt.run, &w.receipt.contract_digest),
            ),
            (
                "run",
                debit(
                    &w.service,
                    &q0,
                    &"ef".repeat(32),
                    &w.receipt.contract_digest,
                ),
            ),
            (
                "contract_digest",
                debit(&w.service, &q0, &w.receipt.run, &"99".repeat(32)),
            ),
            ("query_id", {
                let mut q = q0.clone();
                q.id = "q-other".into();
                debit(&w.service, &q, &w.receipt.run, &w.receipt.contract_digest)
            }),
            ("query_sha256", {
                let mut q = q0.clone();
                q.sql_sha256 = "0f".repeat(32);
                debit(&w.service, &q, &w.receipt.run, &w.receipt.contract_digest)
            }),
            ("party", {
                let mut q = q0.clone();
                q.submitter = "publisher".into();
                debit(&w.service, &q, &w.receipt.run, &w.receipt.contract_digest)
            }),
            // A debit signed under another domain (the release's) is not a debit.
            (
                "not signed by the service",
                Signed::sign(&w.service, br#"{}"#),
            ),
        ];
        for (what, d) in cases {
            let mut r = w.receipt.clone();
            r.queries[0].debit = Some(d);
            let e = check(&sign(&w.tee, &r), &w.service.public()).unwrap_err();
            assert!(
                matches!(&e, ReceiptError::Query { why, .. } if why.contains(what)),
                "{what}: {e}"
            );
        }
        // ε other than the debit's; a DP answer without a debit.
        let mut r = w.receipt.clone();
        r.queries[0].epsilon = Some(Epsilon::parse("0.5").unwrap());
        assert!(check(&sign(&w.tee, &r), &w.service.public()).is_err());
        let mut r = w.receipt.clone();
        r.queries[0].debit = None;
        assert!(check(&sign(&w.tee, &r), &w.service.public()).is_err());
    }

    #[test]
    fn inconsistent_receipts_are_refused() {
        let w = world();
        type Tamper = Box<dyn Fn(&mut Receipt)>;
        let tamper: Vec<(&str, Tamper)> = vec![
            (
                "contract_digest",
                Box::new(|r| r.contract_digest = "ac".repeat(32)),
            ),
            ("session_id", Box::new(|r| r.session_id = "01".repeat(16))),
            (
                "evidence_sha256",
                Box::new(|r| r.evidence_sha256 = "ee".repeat(32)),
            ),
            (
                "release_sha256",
                Box::new(|r| r.release_sha256 = "ee".repeat(32)),
            ),
            ("version", Box::new(|r| r.version = 2)),
            (
                "listed twice",
                Box::new(|r| {
                    let q = r.queries[1].clone();
                    r.queries.push(q)
                }),
            ),
            (
                "plain answer",
                Box::new(|r| r.queries[1].outcome = QueryOutcome::Ok),
            ),
            ("before", Box::new(|r| r.finished_at = 1)),
        ];
        for (what, f) in tamper {
            let mut r = w.receipt.clone();
            f(&mut r);
            let e = check(&sign(&w.tee, &r), &w.service.public()).unwrap_err();
            assert!(e.to_string().contains(what), "{what}: {e}");
        }
        // The payload must be the canonical form that was signed (no re-encoding tricks).
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let pretty = serde_json::to_vec_pretty(&w.receipt).unwrap();
        let s = Signed {
            payload: b64.encode(&pretty),
            signature: b64.encode(w.tee.sign(RUN_RECEIPT_DOMAIN, &pretty)),
        };
        assert!(matches!(
            check(&s, &w.service.public()),
            Err(ReceiptError::Format(_))
        ));
    }

    #[test]
    fn evidence_of_another_run_or_key_does_not_match() {
        let w = world();
        let (r, rel) = check(&sign(&w.tee, &w.receipt), &w.service.public()).unwrap();
        let mut e = w.evidence.clone();
        e.evidence["signature"] = "b3RoZXI=".into();
        assert!(matches!(
            check_evidence(&r, &rel, &e),
            Err(ReceiptError::Mismatch {
                field: "evidence",
                ..
            })
        ));
        let mut e = w.evidence.clone();
        e.result_key = SigningSecret::generate(&mut OsRng).public().to_text();
        assert!(matches!(
            check_evidence(&r, &rel, &e),
            Err(ReceiptError::Mismatch {
                field: "result_key",
                ..
            })
        ));
        let mut e = w.evidence.clone();
        e.tee = Tee::Snp;
        assert!(check_evidence(&r, &rel, &e).is_err());
    }
}

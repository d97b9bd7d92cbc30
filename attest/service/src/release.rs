//! `POST /v1/attest`: session, evidence, the release policy of every key of the contract, then
//! the keys (and the output upload token) HPKE-sealed to the TEE in a signed release.

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use dcr_protocol::keys::{hpke_seal, HpkePublic, SigningPublic};
use dcr_protocol::release::{release_info, report_data, Signed};
use dcr_protocol::wire::{AttestRequest, Release, ReleasedKey, UploadGrant};
use rand_core::{OsRng, RngCore};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::api::{
    audit_base, audited, bad, forbidden, hex32, internal, is_hex, parse_json, store_id, Refusal,
    St, B64,
};
use crate::contracts;
use crate::evidence;
use crate::journal::{Op, Outcome};
use crate::policy::{self, KeyRecord};
use crate::{unix_now, State};

pub use dcr_protocol::wire::UPLOAD_TOKEN_ID;

/// How long an upload token released to a TEE stays valid.
pub(crate) const UPLOAD_TTL_SECS: u64 = 86_400;

pub(crate) async fn attest(AxState(st): AxState<St>, body: Bytes) -> Response {
    let mut audit = audit_base("release");
    match decide(&st, &body, &mut audit).await {
        Ok(r) => r,
        Err(r) => audited(&st, audit, r).await.into_response(),
    }
}

pub(crate) async fn decide(
    st: &State,
    body: &[u8],
    audit: &mut Map<String, Value>,
) -> Result<Response, Refusal> {
    let req: AttestRequest = parse_json(body)?;
    // Validate before anything of the request goes into the audit log.
    if !is_hex(&req.session_id, 32) {
        return Err(bad("session_id: expected 32 lowercase hex digits"));
    }
    if !is_hex(&req.contract_digest, 64) {
        return Err(bad("contract_digest: expected 64 lowercase hex digits"));
    }
    let now = unix_now();
    audit.insert("session_id".into(), req.session_id.clone().into());
    audit.insert("tee".into(), req.tee.as_str().into());
    audit.insert("contract_digest".into(), req.contract_digest.clone().into());
    // Single use: the session is gone after this request, whatever the outcome.
    let session = st
        .sessions
        .lock()
        .expect("sessions lock")
        .remove(&req.session_id);
    let session = match session {
        Some(s) => {
            let mut used = st.used.lock().expect("used lock");
            if used.len() > st.cfg.max_sessions {
                used.retain(|_, exp| *exp >= now);
            }
            used.insert(req.session_id.clone(), s.expires_at);
            s
        }
        None => {
            let reused = st
                .used
                .lock()
                .expect("used lock")
                .contains_key(&req.session_id);
            return Err(if reused {
                forbidden(
                    "nonce_reused",
                    format!("session {} was already used", req.session_id),
                )
            } else {
                forbidden(
                    "unknown_session",
                    format!(
                        "no challenge {} (expired, evicted unused, or never issued)",
                        req.session_id
                    ),
                )
            });
        }
    };
    if now > session.expires_at {
        return Err(forbidden(
            "nonce_expired",
            format!(
                "the challenge expired at {} (now {})",
                dcr_protocol::time::format_rfc3339(session.expires_at),
                dcr_protocol::time::format_rfc3339(now)
            ),
        ));
    }
    if session.tee != req.tee {
        return Err(bad(format!(
            "tee {} differs from the challenge's {}",
            req.tee.as_str(),
            session.tee.as_str()
        )));
    }
    let tee_pk = HpkePublic::from_text(&req.hpke_public_key)
        .map_err(|e| bad(format!("hpke_public_key: {e}")))?;
    let result_key =
        SigningPublic::from_text(&req.result_key).map_err(|e| bad(format!("result_key: {e}")))?;
    let contract_digest = hex32("contract_digest", &req.contract_digest)?;
    let rd = report_data(&session.nonce, &tee_pk, &contract_digest, &result_key);
    let evidence = evidence::typed(req.tee, &req.evidence)?;
    let (claims, snp_tcb) = evidence::verify(st, &session, &evidence, &rd, now)?;
    let mut canon = Vec::new();
    dcr_protocol::canonical::write(&req.evidence, &mut canon);
    let evidence_digest: [u8; 32] = Sha256::digest(&canon).into();
    audit.insert(
        "evidence_digest".into(),
        hex::encode(evidence_digest).into(),
    );

    // Policy: deny by default; a key is released only if every condition holds.
    let records = st
        .journal
        .keys_with_prefix(&store_id(&req.contract_digest, ""))
        .map_err(|e| internal(format!("store: {e}")))?;
    let mut for_contract = Vec::new();
    for (_, bytes) in records {
        let r: KeyRecord =
            serde_json::from_slice(&bytes).map_err(|e| internal(format!("store record: {e}")))?;
        if r.policy.contract_digest == req.contract_digest {
            for_contract.push(r);
        }
    }
    if for_contract.is_empty() {
        return Err(forbidden(
            "contract_mismatch",
            format!(
                "no key is registered for contract digest {}",
                req.contract_digest
            ),
        ));
    }
    let contract = contracts::load(&st.cfg.data_dir, &req.contract_digest)
        .map_err(|e| internal(e.to_string()))?
        .ok_or_else(|| internal("keys are registered for a contract this service does not keep"))?;
    let mut spent = std::collections::BTreeSet::new();
    for r in for_contract.iter().filter(|r| r.policy.single_use) {
        if st
            .journal
            .is_spent(&store_id(&r.policy.contract_digest, &r.key_id))
            .map_err(|e| internal(format!("store: {e}")))?
        {
            spent.insert(r.key_id.clone());
        }
    }
    let allowed = policy::decide(
        for_contract,
        &contract,
        &policy::Asked {
            contract_digest: &req.contract_digest,
            tee: req.tee,
            claims: &claims,
            snp_tcb: snp_tcb.as_ref(),
            now,
        },
        &spent,
    )
    .map_err(|r| forbidden(r.code, r.message))?;
    // Seal each DEK (and a single-use upload token for the output) to the TEE's key.
    let mut released = Vec::new();
    let mut single_use = Vec::new();
    for r in &allowed {
        let at_rest =
            hex::decode(&r.dek_at_rest).map_err(|_| internal("store record: dek_at_rest"))?;
        let id = store_id(&r.policy.contract_digest, &r.key_id);
        let dek = st.keys.unwrap_at_rest(&id, &at_rest).ok_or_else(|| {
            internal(format!(
                "key {} does not decrypt with the master key",
                r.key_id
            ))
        })?;
        let info = release_info(
            &evidence_digest,
            &req.session_id,
            &r.key_id,
            &contract_digest,
        );
        let (enc, ct) = hpke_seal(&tee_pk, &info, r.key_id.as_bytes(), &dek, &mut OsRng)
            .map_err(|e| internal(e.to_string()))?;
        released.push(ReleasedKey {
            key_id: r.key_id.clone(),
            enc: B64.encode(enc),
            ciphertext: B64.encode(ct),
        });
        if r.policy.single_use {
            single_use.push(id);
        }
    }
    let mut token = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(&mut token[..]);
    let info = release_info(
        &evidence_digest,
        &req.session_id,
        UPLOAD_TOKEN_ID,
        &contract_digest,
    );
    let (enc, ct) = hpke_seal(
        &tee_pk,
        &info,
        UPLOAD_TOKEN_ID.as_bytes(),
        &token[..],
        &mut OsRng,
    )
    .map_err(|e| internal(e.to_string()))?;
    released.push(ReleasedKey {
        key_id: UPLOAD_TOKEN_ID.into(),
        enc: B64.encode(enc),
        ciphertext: B64.encode(ct),
    });
    let payload = Release {
        session_id: req.session_id.clone(),
        evidence_digest: hex::encode(evidence_digest),
        contract_digest: req.contract_digest.clone(),
        hpke_public_key: req.hpke_public_key.clone(),
        result_key: req.result_key.clone(),
        issued_at: now,
        keys: released,
    };
    let payload = serde_json::to_vec(&payload).map_err(|e| internal(e.to_string()))?;
    let signed = Signed::sign(&st.keys.signing, &payload);
    let key_ids: Vec<Value> = allowed.iter().map(|r| r.key_id.clone().into()).collect();
    audit.insert("decision".into(), "release".into());
    audit.insert("keys".into(), Value::Array(key_ids));
    // The token writes this contract's output blob, once, for a day.
    let upload_record = serde_json::to_vec(&UploadGrant {
        session_id: req.session_id.clone(),
        contract_digest: req.contract_digest.clone(),
        blob: contract.output.blob.clone(),
        expires_at: now + UPLOAD_TTL_SECS,
        result_key: Some(req.result_key.clone()),
    })
    .expect("json");
    let op = Op::Release {
        single_use,
        session: req.session_id.clone(),
        upload_token_hash: Sha256::digest(&token[..]).into(),
        upload_record,
    };
    match st.journal.commit(op, std::mem::take(audit)).await {
        Ok(Outcome::Done) => Ok(Json(signed).into_response()),
        // The committer already wrote the refusal record.
        Ok(Outcome::AlreadySpent(k)) => Ok(forbidden(
            "key_spent",
            format!("single-use key(s) already released: {}", k.join(", ")),
        )
        .into_response()),
        Ok(o) => Err(internal(format!("unexpected journal outcome {o:?}"))),
        Err(e) => Ok(internal(format!("journal: {e}")).into_response()),
    }
}

//! `POST /v1/keys`: a dataset owner registers its key for a contract under a release policy.

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dcr_protocol::keys::hpke_open;
use dcr_protocol::release::{policy_binding, register_info, Signed, RECEIPT_DOMAIN};
use dcr_protocol::wire::{RegisterRequest, RegistrationReceipt, Tee};
use dcr_verify::reference::{self, PcrSection};
use sha2::{Digest, Sha256};

use crate::api::{
    audit_base, audited, b64, bad, forbidden, hex32, internal, parse_json, party, refuse, store_id,
    unauthorized, St,
};
use crate::contracts;

use crate::journal::{Op, Outcome};
use crate::policy::KeyRecord;
use crate::unix_now;

pub(crate) async fn register(
    AxState(st): AxState<St>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut audit = audit_base("register");
    let Some(party) = party(&st, &headers) else {
        return audited(
            &st,
            audit,
            unauthorized("a registered party's bearer token is required"),
        )
        .await
        .into_response();
    };
    audit.insert("party".into(), party.clone().into());
    let r = async {
        let req: RegisterRequest = parse_json(&body)?;
        dcr_protocol::seal::check_key_id(&req.key_id).map_err(|e| bad(e.to_string()))?;
        audit.insert("key_id".into(), req.key_id.clone().into());
        if req.key_id.starts_with("dcr.") {
            return Err(bad("key ids starting with \"dcr.\" are reserved"));
        }
        hex32("policy.contract_digest", &req.policy.contract_digest)?;
        // The contract itself: the key must be one of its dataset keys, owned by this party.
        let contract = dcr_protocol::contract::Contract::from_canonical_json(req.contract.as_bytes())
            .map_err(|e| bad(format!("contract: {e}")))?;
        let digest: [u8; 32] = Sha256::digest(req.contract.as_bytes()).into();
        if hex::encode(digest) != req.policy.contract_digest {
            return Err(bad(
                "policy.contract_digest: not the SHA-256 of the contract sent with it",
            ));
        }
        let Some(dataset) = contract.datasets.iter().find(|d| d.key_id == req.key_id) else {
            return Err(forbidden(
                "not_owner",
                format!(
                    "key {} is no dataset's key in contract {}",
                    req.key_id, req.policy.contract_digest
                ),
            ));
        };
        if dataset.owner != party {
            return Err(forbidden(
                "not_owner",
                format!(
                    "key {} is dataset {}'s, owned by party {} in contract {}; party {party} may not register it",
                    req.key_id, dataset.id, dataset.owner, req.policy.contract_digest
                ),
            ));
        }
        if req.policy.platforms.is_empty() {
            return Err(bad("policy.platforms: at least one platform"));
        }
        match dcr_protocol::time::parse_rfc3339(&req.policy.expires) {
            Some(t) if t <= contract.expires_at() => {}
            Some(_) => {
                return Err(bad(format!(
                    "policy.expires: {} is later than the contract's expiry {}",
                    req.policy.expires, contract.expires
                )))
            }
            None => return Err(bad("policy.expires: expected RFC 3339 UTC")),
        }
        if let Some(t) = req
            .policy
            .platforms
            .iter()
            .find(|t| !contract.platforms.contains(t))
        {
            return Err(bad(format!(
                "policy.platforms: {} is not among the contract's platforms",
                t.as_str()
            )));
        }
        if dcr_protocol::time::parse_rfc3339(&req.policy.expires).is_none() {
            return Err(bad("policy.expires: expected RFC 3339 UTC"));
        }
        req.policy
            .reference
            .validate()
            .map_err(|e| bad(format!("policy.reference: {e}")))?;
        let m = &req.policy.reference;
        if req
            .policy
            .platforms
            .iter()
            .any(|t| matches!(t, Tee::Snp | Tee::AzSnpVtpm))
            && req.policy.snp_min_tcb.is_none()
        {
            return Err(bad(
                "policy.snp_min_tcb: required for snp and az-snp-vtpm (the oldest SEV-SNP firmware to accept, per product)",
            ));
        }
        if req.policy.platforms.contains(&Tee::Tdx) {
            return Err(forbidden(
                "policy_refused",
                format!("policy.platforms: tdx: {}", dcr_verify::tdx::RTMRS_NOT_PREDICTED),
            ));
        }
        if req.policy.platforms.contains(&Tee::Sgx) {
            let sgx = req.policy.sgx.as_ref().ok_or_else(|| {
                bad("policy.sgx: required for sgx (the enclave identity to release to)")
            })?;
            sgx.check().map_err(|e| bad(format!("policy.sgx: {e}")))?;
        }
        for t in &req.policy.platforms {
            let ok = match t {
                Tee::Tpm => reference::pcrs(m, PcrSection::Tpm).map(|_| ()),
                Tee::Snp => reference::snp_launch_digest(m).map(|_| ()),
                Tee::Tdx => reference::tdx_mrtd(m).map(|_| ()),
                Tee::AzSnpVtpm | Tee::AzTdxVtpm => {
                    reference::pcrs(m, PcrSection::Azure).map(|_| ())
                }
                Tee::Nitro => reference::nitro_pcrs(m).map(|_| ()),
                Tee::Sgx => Ok(()),
            };
            ok.map_err(|e| bad(format!("policy.reference: {e}")))?;
        }
        let enc = b64("wrapped_dek.enc", &req.wrapped_dek.enc)?;
        let ct = b64("wrapped_dek.ciphertext", &req.wrapped_dek.ciphertext)?;
        // The DEK was wrapped for exactly this policy and owner: anything changed in transit
        // (reference values, platforms, single use, expiry, contract) does not open.
        let binding = policy_binding(&req.key_id, &party, &req.policy);
        let dek = hpke_open(
            &st.keys.registration,
            &enc,
            &register_info(&req.key_id),
            &binding,
            &ct,
        )
        .map_err(|_| {
            bad("wrapped_dek: does not open with this service's registration key for this policy (changed in transit, or wrapped for another policy or owner)")
        })?;
        if dek.len() != 32 {
            return Err(bad("wrapped_dek: not a 32-byte key"));
        }
        contracts::store(&st.cfg.data_dir, &digest, req.contract.as_bytes())
            .map_err(|e| internal(e.to_string()))?;
        let id = store_id(&req.policy.contract_digest, &req.key_id);
        let registered_at = unix_now();
        let receipt = RegistrationReceipt {
            key_id: req.key_id.clone(),
            owner: party.clone(),
            contract_digest: req.policy.contract_digest.clone(),
            policy_binding: hex::encode(binding),
            registered_at,
        };
        let rec = KeyRecord {
            key_id: req.key_id.clone(),
            owner: party.clone(),
            registered_at,
            policy: req.policy,
            dek_at_rest: hex::encode(st.keys.wrap_at_rest(&id, &dek)),
        };
        Ok((
            id,
            serde_json::to_vec(&rec).map_err(|e| internal(e.to_string()))?,
            receipt,
        ))
    }
    .await;
    let (key_id, record, receipt) = match r {
        Ok(x) => x,
        Err(e) => return audited(&st, audit, e).await.into_response(),
    };
    audit.insert("decision".into(), "register".into());
    match st
        .journal
        .commit(
            Op::Register {
                key_id: key_id.clone(),
                record,
            },
            audit,
        )
        .await
    {
        Ok(Outcome::Done) => {
            let payload = serde_json::to_vec(&receipt).expect("json");
            (
                StatusCode::CREATED,
                Json(Signed::sign_in(RECEIPT_DOMAIN, &st.keys.signing, &payload)),
            )
                .into_response()
        }
        Ok(_) => refuse(
            StatusCode::CONFLICT,
            "conflict",
            format!("key {key_id} is already registered"),
        )
        .into_response(),
        Err(e) => internal(format!("journal: {e}")).into_response(),
    }
}

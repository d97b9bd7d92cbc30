//! The key-release binding (docs/protocol.md):
//!
//! - evidence binding (SNP/TDX REPORT_DATA, TPM qualifying data), 64 bytes:
//!   `SHA-512("dcr/v2/evidence\0" ‖ u32 len ‖ nonce ‖ u32 32 ‖ hpke_pk ‖ contract_digest ‖
//!   u32 32 ‖ result_key)`: the TEE's ephemeral HPKE key (keys come to it) and its ephemeral
//!   Ed25519 key (its results are signed with it);
//! - registration: the DEK is HPKE-wrapped to the service with `aad` = [`policy_binding`], the
//!   SHA-256 of the whole release policy (key id, owner, contract digest, platforms, reference
//!   values digest, single use, expiry): a policy changed in transit does not open; the service
//!   answers with a receipt signed under [`RECEIPT_DOMAIN`];
//! - each released DEK: HPKE to the TEE's ephemeral key with
//!   `info = "dcr/v1/key-release\0" ‖ evidence_digest ‖ session_id ‖ 0 ‖ key_id ‖ 0 ‖ contract_digest`
//!   and `aad = key_id`, so a released key opens only for the evidence it was released against;
//! - the response is signed (Ed25519) over `"dcr/v1/response\0" ‖ payload bytes` with the
//!   service key pinned in the contract.

use sha2::{Digest, Sha512};

use crate::keys::{HpkePublic, KeyError, SigningPublic, SigningSecret};

pub const EVIDENCE_DOMAIN: &[u8] = b"dcr/v2/evidence\0";
pub const RELEASE_DOMAIN: &[u8] = b"dcr/v1/key-release\0";
pub const RESPONSE_DOMAIN: &[u8] = b"dcr/v1/response\0";
pub const REGISTER_DOMAIN: &[u8] = b"dcr/v1/register\0";
pub const REGISTER_POLICY_DOMAIN: &[u8] = b"dcr/v1/register-policy\0";
/// Domain of the service's signed registration receipt.
pub const RECEIPT_DOMAIN: &[u8] = b"dcr/v1/registration\0";
/// Domain of the service's signed list of pending queries (crate::wire::QueryList).
pub const QUERIES_DOMAIN: &[u8] = b"dcr/v1/queries\0";
/// Domain of the TEE's signature (its result key) over a budget debit request.
pub const DEBIT_REQUEST_DOMAIN: &[u8] = b"dcr/v1/budget-debit-request\0";
/// Domain of the service's signed budget debit (crate::dp::Debit).
pub const DEBIT_DOMAIN: &[u8] = b"dcr/v1/budget-debit\0";
/// Domain of the TEE's signature (its result key) over a run's receipt (crate::receipt).
pub const RUN_RECEIPT_DOMAIN: &[u8] = b"dcr/v1/run-receipt\0";
/// Domain of the TEE's signature over a sealed result (crate::result).
pub const RESULT_DOMAIN: &[u8] = b"dcr/v1/result\0";

/// The 64-byte value the TEE puts into its evidence.
pub fn report_data(
    nonce: &[u8],
    hpke_pk: &HpkePublic,
    contract_digest: &[u8; 32],
    result_key: &SigningPublic,
) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(EVIDENCE_DOMAIN);
    h.update((nonce.len() as u32).to_be_bytes());
    h.update(nonce);
    h.update(32u32.to_be_bytes());
    h.update(hpke_pk.0);
    h.update(contract_digest);
    h.update(32u32.to_be_bytes());
    h.update(result_key.0);
    h.finalize().into()
}

/// What a registration binds the DEK to: SHA-256 of `REGISTER_POLICY_DOMAIN` ‖ the canonical
/// JSON of `{key_id, owner, contract_digest, platforms, reference_sha256, single_use, expires}`
/// (`reference_sha256` = SHA-256 of the reference values' canonical JSON). Used as the HPKE
/// `aad` of the wrapped DEK and named in the signed receipt.
pub fn policy_binding(key_id: &str, owner: &str, policy: &crate::wire::ReleasePolicy) -> [u8; 32] {
    use sha2::Sha256;
    let reference = crate::canonical::compact(&policy.reference).expect("a typed document");
    let doc = serde_json::json!({
        "key_id": key_id,
        "owner": owner,
        "contract_digest": policy.contract_digest,
        "platforms": policy.platforms.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        "reference_sha256": hex::encode(Sha256::digest(&reference)),
        "single_use": policy.single_use,
        "expires": policy.expires,
        "snp_min_tcb": policy.snp_min_tcb,
    });
    let mut canon = Vec::new();
    crate::canonical::write(&doc, &mut canon);
    let mut h = Sha256::new();
    h.update(REGISTER_POLICY_DOMAIN);
    h.update(&canon);
    h.finalize().into()
}

/// HPKE `info` of a released key.
pub fn release_info(
    evidence_digest: &[u8; 32],
    session_id: &str,
    key_id: &str,
    contract_digest: &[u8; 32],
) -> Vec<u8> {
    let mut v = RELEASE_DOMAIN.to_vec();
    v.extend_from_slice(evidence_digest);
    v.extend_from_slice(session_id.as_bytes());
    v.push(0);
    v.extend_from_slice(key_id.as_bytes());
    v.push(0);
    v.extend_from_slice(contract_digest);
    v
}

/// HPKE `info` of a DEK wrapped to the service at registration.
pub fn register_info(key_id: &str) -> Vec<u8> {
    let mut v = REGISTER_DOMAIN.to_vec();
    v.extend_from_slice(key_id.as_bytes());
    v
}

/// A signed response: `payload` is the JSON body (base64), `signature` Ed25519 over
/// `RESPONSE_DOMAIN ‖ payload bytes`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    pub payload: String,
    pub signature: String,
}

impl Signed {
    /// A release response (`RESPONSE_DOMAIN`).
    pub fn sign(key: &SigningSecret, payload: &[u8]) -> Self {
        Self::sign_in(RESPONSE_DOMAIN, key, payload)
    }

    /// The payload bytes of a release response, only if the signature verifies with `key`.
    pub fn verify(&self, key: &SigningPublic) -> Result<Vec<u8>, KeyError> {
        self.verify_in(RESPONSE_DOMAIN, key)
    }

    /// Sign `payload` under `domain` (one domain per kind of document, so that a signature on
    /// one kind never verifies as another).
    pub fn sign_in(domain: &[u8], key: &SigningSecret, payload: &[u8]) -> Self {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        Signed {
            payload: b64.encode(payload),
            signature: b64.encode(key.sign(domain, payload)),
        }
    }

    /// The payload bytes, only if the signature under `domain` verifies with `key`.
    pub fn verify_in(&self, domain: &[u8], key: &SigningPublic) -> Result<Vec<u8>, KeyError> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let err = || KeyError::Signature(key.to_text());
        let payload = b64.decode(&self.payload).map_err(|_| err())?;
        let sig = b64.decode(&self.signature).map_err(|_| err())?;
        key.verify(domain, &payload, &sig)?;
        Ok(payload)
    }
}

//! The key-release binding (docs/protocol.md):
//!
//! - evidence binding (SNP/TDX REPORT_DATA, TPM qualifying data), 64 bytes:
//!   `SHA-512("dcr/v1/evidence\0" ‖ u32 len ‖ nonce ‖ u32 32 ‖ hpke_pk ‖ contract_digest)`;
//! - each released DEK: HPKE to the TEE's ephemeral key with
//!   `info = "dcr/v1/key-release\0" ‖ evidence_digest ‖ session_id ‖ 0 ‖ key_id ‖ 0 ‖ contract_digest`
//!   and `aad = key_id`, so a released key opens only for the evidence it was released against;
//! - the response is signed (Ed25519) over `"dcr/v1/response\0" ‖ payload bytes` with the
//!   service key pinned in the contract.

use sha2::{Digest, Sha512};

use crate::keys::{HpkePublic, KeyError, SigningPublic, SigningSecret};

pub const EVIDENCE_DOMAIN: &[u8] = b"dcr/v1/evidence\0";
pub const RELEASE_DOMAIN: &[u8] = b"dcr/v1/key-release\0";
pub const RESPONSE_DOMAIN: &[u8] = b"dcr/v1/response\0";
pub const REGISTER_DOMAIN: &[u8] = b"dcr/v1/register\0";

/// The 64-byte value the TEE puts into its evidence.
pub fn report_data(nonce: &[u8], hpke_pk: &HpkePublic, contract_digest: &[u8; 32]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(EVIDENCE_DOMAIN);
    h.update((nonce.len() as u32).to_be_bytes());
    h.update(nonce);
    h.update(32u32.to_be_bytes());
    h.update(hpke_pk.0);
    h.update(contract_digest);
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
    pub fn sign(key: &SigningSecret, payload: &[u8]) -> Self {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        Signed {
            payload: b64.encode(payload),
            signature: b64.encode(key.sign(RESPONSE_DOMAIN, payload)),
        }
    }

    /// The payload bytes, only if the signature verifies with `key`.
    pub fn verify(&self, key: &SigningPublic) -> Result<Vec<u8>, KeyError> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let err = || KeyError::Signature(key.to_text());
        let payload = b64.decode(&self.payload).map_err(|_| err())?;
        let sig = b64.decode(&self.signature).map_err(|_| err())?;
        key.verify(RESPONSE_DOMAIN, &payload, &sig)?;
        Ok(payload)
    }
}

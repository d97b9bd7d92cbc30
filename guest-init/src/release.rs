//! The key release: this boot's ephemeral keys (bound into the evidence), the evidence posted
//! to the service, the signed release checked against the key pinned in the contract, and the
//! released keys opened.

use base64::Engine;
use dcr_protocol::contract::Contract;
use dcr_protocol::keys::{hpke_open, HpkeSecret, SigningSecret};
use dcr_protocol::release::{release_info, report_data, Signed};
use dcr_protocol::seal::Dek;
use dcr_protocol::wire::{AttestRequest, Evidence, Release, UPLOAD_TOKEN_ID};
use zeroize::Zeroizing;

use crate::client::Client;
use crate::console::say;
use crate::{fail, step, StepError, B64};

/// Released keys: key id → DEK, plus the upload token, and the signed release itself (the
/// result's proof carries it: it names this TEE's result key), with what the run's receipt
/// names: the evidence request posted, the challenge's nonce, the release payload's digest.
pub struct Keys {
    pub deks: Vec<(String, Dek)>,
    pub upload_token: Zeroizing<Vec<u8>>,
    pub release: Signed,
    pub attest: AttestRequest,
    pub nonce: Vec<u8>,
    pub release_sha256: [u8; 32],
}

impl Keys {
    /// The run's name: SHA-256 of the upload token, hex (the service's debits name it).
    pub fn run(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&self.upload_token[..]))
    }
}

/// This boot's ephemeral keys, both bound into the evidence (`report_data`): the HPKE key the
/// service seals keys to, and the Ed25519 key the result is signed with.
pub struct TeeKeys {
    pub hpke: HpkeSecret,
    pub result: SigningSecret,
}

impl TeeKeys {
    pub fn generate() -> Self {
        TeeKeys {
            hpke: HpkeSecret::generate(&mut rand_core::OsRng),
            result: SigningSecret::generate(&mut rand_core::OsRng),
        }
    }

    pub fn report_data(&self, nonce: &[u8], digest: &[u8; 32]) -> [u8; 64] {
        report_data(nonce, &self.hpke.public(), digest, &self.result.public())
    }
}

/// Post the evidence; check the signed release; open the released keys.
pub fn release(
    c: &Contract,
    digest: &[u8; 32],
    client: &Client,
    session_id: &str,
    nonce: &[u8],
    tk: &TeeKeys,
    evidence: Evidence,
) -> Result<Keys, StepError> {
    let sk = &tk.hpke;
    let pk = sk.public();
    let tee = evidence.tee();
    let req = AttestRequest {
        session_id: session_id.to_string(),
        tee,
        hpke_public_key: pk.to_text(),
        result_key: tk.result.public().to_text(),
        contract_digest: hex::encode(digest),
        evidence: step("evidence", evidence.to_wire().map_err(|e| e.to_string()))?,
    };
    let body = client.call(
        "release",
        "POST",
        "/v1/attest",
        Some(&serde_json::to_vec(&req).expect("json")),
        None,
        1 << 20,
    )?;
    // Only the pinned key may speak for the service.
    let signed: Signed = step(
        "release",
        serde_json::from_slice(&body).map_err(|e| e.to_string()),
    )?;
    let payload = step(
        "release",
        signed
            .verify(&c.signing_key())
            .map_err(|e| format!("response signature: {e}")),
    )?;
    let rel: Release = step(
        "release",
        serde_json::from_slice(&payload).map_err(|e| e.to_string()),
    )?;
    if rel.session_id != session_id
        || rel.contract_digest != hex::encode(digest)
        || rel.hpke_public_key != pk.to_text()
        || rel.result_key != tk.result.public().to_text()
    {
        return fail(
            "release",
            "the signed release is for another session, contract or key",
        );
    }
    let ed: [u8; 32] = step(
        "release",
        hex::decode(&rel.evidence_digest)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or("evidence_digest"),
    )?;
    let mut deks = Vec::new();
    let mut upload_token = None;
    for k in &rel.keys {
        let info = release_info(&ed, &rel.session_id, &k.key_id, digest);
        let enc = step("release", B64.decode(&k.enc).map_err(|e| e.to_string()))?;
        let ct = step(
            "release",
            B64.decode(&k.ciphertext).map_err(|e| e.to_string()),
        )?;
        let key = step(
            "release",
            hpke_open(sk, &enc, &info, k.key_id.as_bytes(), &ct)
                .map_err(|e| format!("key {}: {e}", k.key_id)),
        )?;
        if k.key_id == UPLOAD_TOKEN_ID {
            upload_token = Some(key);
        } else {
            deks.push((
                k.key_id.clone(),
                step("release", Dek::from_slice(&key).map_err(|e| e.to_string()))?,
            ));
        }
    }
    let ids: Vec<&str> = deks.iter().map(|(k, _)| k.as_str()).collect();
    say(&format!(
        "release ok keys=[{}] signed-by={}",
        ids.join(","),
        c.service.signing_key
    ));
    Ok(Keys {
        deks,
        upload_token: upload_token.ok_or_else(|| StepError {
            step: "release",
            detail: "no upload token in the release".into(),
        })?,
        release: signed,
        attest: req,
        nonce: nonce.to_vec(),
        release_sha256: {
            use sha2::Digest;
            sha2::Sha256::digest(&payload).into()
        },
    })
}

//! A run's result as the TEE publishes it: the sealed output (recipients envelope,
//! docs/sealed-data.md) wrapped with a proof that an attested TEE produced it.
//!
//! ```text
//! "DCRSIGN\0" (8) ‖ version u16 = 1 ‖ proof length u32 (≤ 64 KiB) ‖ proof (JSON) ‖ sealed output
//! ```
//! (integers big-endian). The proof ([`ResultProof`]) carries the service's signed release
//! (which names the contract digest and the TEE's result key, bound into the evidence the
//! service verified) and the TEE's Ed25519 signature over
//! `RESULT_DOMAIN ‖ contract_digest ‖ u32 len ‖ blob name ‖ SHA-256(sealed output)`.
//! A party who pins the service's signing key (the contract names it) and knows the contract
//! digest checks, offline, that the bytes come from a TEE that passed attestation for that
//! contract ([`verify`]).

use sha2::{Digest, Sha256};

use crate::keys::{SigningPublic, SigningSecret};
use crate::release::{Signed, RESULT_DOMAIN};
use crate::wire::Release;

pub const MAGIC: &[u8; 8] = b"DCRSIGN\0";
pub const VERSION: u16 = 1;
/// Bytes before the proof.
pub const PREFIX_LEN: usize = 14;
pub const MAX_PROOF: u32 = 64 << 10;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResultError {
    #[error("not a signed result (no DCRSIGN header): a result must carry the TEE's proof")]
    NotSigned,
    #[error("signed result: {0}")]
    Format(String),
    #[error("signed result: the service's signature on the release does not verify with {0}")]
    ReleaseSignature(String),
    #[error("signed result: released for contract {got}, expected {want}")]
    Contract { got: String, want: String },
    #[error("signed result: for blob {got:?}, expected {want:?}")]
    Blob { got: String, want: String },
    #[error("signed result: the TEE's signature does not verify with the attested result key")]
    TeeSignature,
    #[error("signed result: the sealed output's SHA-256 is not the signed one (altered)")]
    Digest,
}

/// The proof carried in front of a sealed result.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResultProof {
    /// The service's signed release response, as the TEE received it.
    pub release: Signed,
    /// The blob name the result was produced for (the contract's output blob).
    pub blob: String,
    /// SHA-256 of the sealed output, hex.
    pub sha256: String,
    /// Ed25519 by the release's `result_key`, base64.
    pub signature: String,
}

/// The message the TEE signs.
pub fn message(contract_digest: &[u8; 32], blob: &str, sealed_sha256: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(32 + 4 + blob.len() + 32);
    m.extend_from_slice(contract_digest);
    m.extend_from_slice(&(blob.len() as u32).to_be_bytes());
    m.extend_from_slice(blob.as_bytes());
    m.extend_from_slice(sealed_sha256);
    m
}

/// The TEE's side: the signed result file for `sealed`.
pub fn sign(
    key: &SigningSecret,
    release: &Signed,
    contract_digest: &[u8; 32],
    blob: &str,
    sealed: &[u8],
) -> Vec<u8> {
    use base64::Engine;
    let digest: [u8; 32] = Sha256::digest(sealed).into();
    let sig = key.sign(RESULT_DOMAIN, &message(contract_digest, blob, &digest));
    let proof = ResultProof {
        release: release.clone(),
        blob: blob.to_string(),
        sha256: hex::encode(digest),
        signature: base64::engine::general_purpose::STANDARD.encode(sig),
    };
    let json = serde_json::to_vec(&proof).expect("json");
    let mut out = Vec::with_capacity(PREFIX_LEN + json.len() + sealed.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(sealed);
    out
}

/// The proof length from the first [`PREFIX_LEN`] bytes (length-checked).
pub fn proof_len(prefix: &[u8]) -> Result<usize, ResultError> {
    if prefix.len() < PREFIX_LEN || &prefix[..8] != MAGIC {
        return Err(ResultError::NotSigned);
    }
    let version = u16::from_be_bytes([prefix[8], prefix[9]]);
    if version != VERSION {
        return Err(ResultError::Format(format!(
            "version {version} (this build knows {VERSION})"
        )));
    }
    let n = u32::from_be_bytes(prefix[10..14].try_into().expect("4 bytes"));
    if n == 0 || n > MAX_PROOF {
        return Err(ResultError::Format(format!(
            "proof length {n} (1..{MAX_PROOF})"
        )));
    }
    Ok(n as usize)
}

/// Parse the proof bytes.
pub fn parse_proof(bytes: &[u8]) -> Result<ResultProof, ResultError> {
    serde_json::from_slice(bytes).map_err(|e| ResultError::Format(format!("proof: {e}")))
}

/// Split a whole signed result into (proof, sealed output).
pub fn split(file: &[u8]) -> Result<(ResultProof, &[u8]), ResultError> {
    let n = proof_len(file)?;
    let end = PREFIX_LEN
        .checked_add(n)
        .filter(|e| *e <= file.len())
        .ok_or_else(|| ResultError::Format("truncated proof".into()))?;
    Ok((parse_proof(&file[PREFIX_LEN..end])?, &file[end..]))
}

/// Check the proof against the pinned service key, the contract digest and the blob name,
/// before the sealed bytes are read: the release is the service's, for this contract, and the
/// TEE it names signed the claimed digest. Returns the release and the claimed SHA-256, which
/// the caller compares with the sealed bytes' ([`check_digest`]).
pub fn verify_proof(
    proof: &ResultProof,
    service_key: &SigningPublic,
    contract_digest: &[u8; 32],
    blob: &str,
) -> Result<(Release, [u8; 32]), ResultError> {
    use base64::Engine;
    let payload = proof
        .release
        .verify(service_key)
        .map_err(|_| ResultError::ReleaseSignature(service_key.to_text()))?;
    let release: Release = serde_json::from_slice(&payload)
        .map_err(|e| ResultError::Format(format!("release payload: {e}")))?;
    if release.contract_digest != hex::encode(contract_digest) {
        return Err(ResultError::Contract {
            got: release.contract_digest,
            want: hex::encode(contract_digest),
        });
    }
    if proof.blob != blob {
        return Err(ResultError::Blob {
            got: proof.blob.clone(),
            want: blob.to_string(),
        });
    }
    let key = SigningPublic::from_text(&release.result_key)
        .map_err(|e| ResultError::Format(format!("release result_key: {e}")))?;
    let digest: [u8; 32] = hex::decode(&proof.sha256)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| ResultError::Format("sha256: expected 64 hex digits".into()))?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(&proof.signature)
        .map_err(|_| ResultError::TeeSignature)?;
    key.verify(
        RESULT_DOMAIN,
        &message(contract_digest, blob, &digest),
        &sig,
    )
    .map_err(|_| ResultError::TeeSignature)?;
    Ok((release, digest))
}

/// The sealed bytes' SHA-256 must be the signed one.
pub fn check_digest(signed: &[u8; 32], actual: &[u8; 32]) -> Result<(), ResultError> {
    if signed == actual {
        Ok(())
    } else {
        Err(ResultError::Digest)
    }
}

/// [`split`] + [`verify_proof`] + [`check_digest`] on a whole file in memory: the sealed output.
pub fn verify<'a>(
    file: &'a [u8],
    service_key: &SigningPublic,
    contract_digest: &[u8; 32],
    blob: &str,
) -> Result<(Release, &'a [u8]), ResultError> {
    let (proof, sealed) = split(file)?;
    let (release, digest) = verify_proof(&proof, service_key, contract_digest, blob)?;
    check_digest(&digest, &Sha256::digest(sealed).into())?;
    Ok((release, sealed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    fn release(service: &SigningSecret, contract: &[u8; 32], tee: &SigningPublic) -> Signed {
        let r = Release {
            session_id: "00".repeat(16),
            evidence_digest: "11".repeat(32),
            contract_digest: hex::encode(contract),
            hpke_public_key: format!("x25519:{}", "22".repeat(32)),
            result_key: tee.to_text(),
            issued_at: 1,
            keys: vec![],
        };
        Signed::sign(service, &serde_json::to_vec(&r).unwrap())
    }

    #[test]
    fn a_signed_result_verifies_and_every_forgery_is_refused() {
        let service = SigningSecret::generate(&mut OsRng);
        let tee = SigningSecret::generate(&mut OsRng);
        let contract = [7u8; 32];
        let rel = release(&service, &contract, &tee.public());
        let sealed = b"DCRRCPT\0 sealed bytes".to_vec();
        let file = sign(&tee, &rel, &contract, "out.sealed", &sealed);
        let (r, got) = verify(&file, &service.public(), &contract, "out.sealed").unwrap();
        assert_eq!(got, &sealed[..]);
        assert_eq!(r.result_key, tee.public().to_text());

        // An unsigned file (a bare sealed output) is refused.
        assert_eq!(
            verify(&sealed, &service.public(), &contract, "out.sealed").unwrap_err(),
            ResultError::NotSigned
        );
        // A changed sealed byte.
        let mut bad = file.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            verify(&bad, &service.public(), &contract, "out.sealed").unwrap_err(),
            ResultError::Digest
        );
        // Another contract, another blob name.
        assert!(matches!(
            verify(&file, &service.public(), &[8u8; 32], "out.sealed").unwrap_err(),
            ResultError::Contract { .. }
        ));
        assert!(matches!(
            verify(&file, &service.public(), &contract, "other.sealed").unwrap_err(),
            ResultError::Blob { .. }
        ));
        // Not the pinned service.
        let other = SigningSecret::generate(&mut OsRng);
        assert!(matches!(
            verify(&file, &other.public(), &contract, "out.sealed").unwrap_err(),
            ResultError::ReleaseSignature(_)
        ));
        // A key the service never vouched for signs forged bytes (with a real release).
        let forger = SigningSecret::generate(&mut OsRng);
        let forged = sign(&forger, &rel, &contract, "out.sealed", b"forged rows");
        assert_eq!(
            verify(&forged, &service.public(), &contract, "out.sealed").unwrap_err(),
            ResultError::TeeSignature
        );
        // A release the forger made up and signed itself.
        let fake_rel = release(&forger, &contract, &forger.public());
        let forged = sign(&forger, &fake_rel, &contract, "out.sealed", b"forged rows");
        assert!(matches!(
            verify(&forged, &service.public(), &contract, "out.sealed").unwrap_err(),
            ResultError::ReleaseSignature(_)
        ));
        // Length fields: truncated, zero, oversized, other version.
        assert!(verify(&file[..20], &service.public(), &contract, "out.sealed").is_err());
        for (at, v) in [(10usize, [0u8, 0, 0, 0]), (10, [0xff, 0xff, 0xff, 0xff])] {
            let mut b = file.clone();
            b[at..at + 4].copy_from_slice(&v);
            assert!(matches!(
                verify(&b, &service.public(), &contract, "out.sealed").unwrap_err(),
                ResultError::Format(_)
            ));
        }
        let mut b = file.clone();
        b[9] = 2;
        assert!(matches!(
            verify(&b, &service.public(), &contract, "out.sealed").unwrap_err(),
            ResultError::Format(_)
        ));
    }
}

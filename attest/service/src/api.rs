//! What every handler shares: the refusal type (status, stable code, one-line message), the
//! audit record of a refusal, bearer-token parties and strict field decoders.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use dcr_protocol::wire::ApiError;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::journal::Op;
use crate::{unix_now, State};

pub(crate) type St = Arc<State>;

pub(crate) const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Keys are stored per contract: a key id is a dataset's key within one contract, so the
/// same id in another party's contract is another key (no squatting across contracts).
pub(crate) fn store_id(contract_digest: &str, key_id: &str) -> String {
    format!("{contract_digest}/{key_id}")
}

/// `n` lowercase hex digits (session ids: 32, digests: 64).
pub(crate) fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An API error: status + stable code + one-line message.
#[derive(Debug)]
pub struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

pub(crate) fn refuse(
    status: StatusCode,
    code: &'static str,
    message: impl Into<String>,
) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
    }
}

pub(crate) fn bad(message: impl Into<String>) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, "bad_request", message)
}

pub(crate) fn forbidden(code: &'static str, message: impl Into<String>) -> Refusal {
    refuse(StatusCode::FORBIDDEN, code, message)
}

pub(crate) fn unauthorized(message: impl Into<String>) -> Refusal {
    refuse(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

pub(crate) fn internal(message: impl Into<String>) -> Refusal {
    refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ApiError {
                code: self.code.to_string(),
                message: self.message,
            }),
        )
            .into_response()
    }
}

pub(crate) fn audit_base(kind: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("time".into(), unix_now().into());
    m.insert("kind".into(), kind.into());
    m
}

/// Record a refusal in the audit log, then return it.
pub(crate) async fn audited(st: &State, mut audit: Map<String, Value>, r: Refusal) -> Refusal {
    // Refusals anyone can provoke without credentials or evidence (malformed requests, unknown
    // or replayed sessions, unknown blobs, missing tokens) are written at most
    // NOISE_PER_SECOND a second (bursts of NOISE_BURST); the rest are counted, and the count
    // goes into the next record written. Decisions about evidence, keys and parties are always
    // written.
    let noise = matches!(
        r.code,
        "bad_request"
            | "unknown_session"
            | "nonce_reused"
            | "nonce_expired"
            | "not_found"
            | "unauthorized"
            | "unknown_contract"
            | "too_large"
            | "timeout"
    );
    if noise && !st.audit_noise.lock().expect("noise lock").take(unix_now()) {
        return r;
    }
    let suppressed = st
        .audit_noise
        .lock()
        .expect("noise lock")
        .drain_suppressed();
    if suppressed > 0 {
        audit.insert("suppressed_before".into(), suppressed.into());
    }
    audit.insert("decision".into(), "refuse".into());
    audit.insert("code".into(), r.code.into());
    audit.insert("message".into(), r.message.clone().into());
    match st.journal.commit(Op::None, audit).await {
        Ok(_) => r,
        Err(e) => internal(format!("audit log: {e}")),
    }
}

pub(crate) fn b64(field: &str, s: &str) -> Result<Vec<u8>, Refusal> {
    B64.decode(s)
        .map_err(|_| bad(format!("{field}: not base64")))
}

pub(crate) fn hex32(field: &str, s: &str) -> Result<[u8; 32], Refusal> {
    hex::decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad(format!("{field}: expected 64 hex digits")))
}

pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The party a bearer token belongs to.
pub(crate) fn party(st: &State, headers: &HeaderMap) -> Option<String> {
    let token = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    let h: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
    let mut found = None;
    for (p, t) in &st.cfg.tokens {
        if ct_eq(t, &h) {
            found = Some(p.clone());
        }
    }
    found
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| bad(format!("request body: {e}")))
}

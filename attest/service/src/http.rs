//! The HTTP API (docs/protocol.md). Every error is `{"code","message"}` with a stable code.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path as UrlPath, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use dcr_protocol::keys::{hpke_open, hpke_seal, HpkePublic, SigningPublic};
use dcr_protocol::release::{
    policy_binding, register_info, release_info, report_data, Signed, RECEIPT_DOMAIN,
};
use dcr_protocol::wire::{
    ApiError, AttestRequest, Challenge, ChallengeRequest, RegisterRequest, RegistrationReceipt,
    Release, ReleasedKey, SnpEvidence, TdxEvidence, Tee, TpmEvidence, UploadGrant,
};
use rand_core::{OsRng, RngCore};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::contracts;
use super::journal::{Op, Outcome};
use super::{unix_now, Session, State};
use dcr_protocol::measurements::Measurements;
use dcr_verify::reference::{self, Claims, PcrSection};

type St = Arc<State>;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// The key id under which a release carries the single-use output upload token.
pub use dcr_protocol::wire::UPLOAD_TOKEN_ID;
const MAX_BLOB: u64 = 64 << 30;
/// How long an upload token released to a TEE stays valid.
const UPLOAD_TTL_SECS: u64 = 86_400;

/// Keys are stored per contract: a key id is a dataset's key within one contract, so the
/// same id in another party's contract is another key (no squatting across contracts).
fn store_id(contract_digest: &str, key_id: &str) -> String {
    format!("{contract_digest}/{key_id}")
}

pub fn router(state: St) -> Router {
    Router::new()
        .route("/v1/service", get(service_info))
        .route("/v1/challenge", post(challenge))
        .route("/v1/attest", post(attest))
        .route("/v1/keys", post(register))
        .route(
            "/v1/contracts/{digest}/blobs/{name}",
            get(get_blob)
                .put(put_blob)
                .layer(DefaultBodyLimit::disable()),
        )
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .layer(DefaultBodyLimit::max(1 << 20))
        .layer(axum::middleware::map_response(too_large_as_json))
        .with_state(state)
}

async fn no_method(method: axum::http::Method, uri: axum::http::Uri) -> Refusal {
    let path: String = uri.path().chars().take(128).collect();
    refuse(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {path}"),
    )
}

/// Every answer is `{"code","message"}`, for paths the API does not have too.
async fn no_route(uri: axum::http::Uri) -> Refusal {
    let path: String = uri.path().chars().take(128).collect();
    refuse(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such endpoint: {path}"),
    )
}

/// axum answers a body over the limit with a plain-text 413; the API answers in JSON.
async fn too_large_as_json(r: Response) -> Response {
    let json = r
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE && !json {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "request bodies are limited to 1048576 bytes",
        )
        .into_response();
    }
    r
}

/// `n` lowercase hex digits (session ids: 32, digests: 64).
fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An API error: status + stable code + one-line message.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
    }
}

fn bad(message: impl Into<String>) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn forbidden(code: &'static str, message: impl Into<String>) -> Refusal {
    refuse(StatusCode::FORBIDDEN, code, message)
}

fn unauthorized(message: impl Into<String>) -> Refusal {
    refuse(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

fn internal(message: impl Into<String>) -> Refusal {
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

fn audit_base(kind: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("time".into(), unix_now().into());
    m.insert("kind".into(), kind.into());
    m
}

/// Record a refusal in the audit log, then return it.
async fn audited(st: &State, mut audit: Map<String, Value>, r: Refusal) -> Refusal {
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

fn b64(field: &str, s: &str) -> Result<Vec<u8>, Refusal> {
    B64.decode(s)
        .map_err(|_| bad(format!("{field}: not base64")))
}

fn hex32(field: &str, s: &str) -> Result<[u8; 32], Refusal> {
    hex::decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad(format!("{field}: expected 64 hex digits")))
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The party a bearer token belongs to.
fn party(st: &State, headers: &HeaderMap) -> Option<String> {
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

async fn service_info(AxState(st): AxState<St>) -> Response {
    Json(st.keys.info()).into_response()
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| bad(format!("request body: {e}")))
}

async fn challenge(
    AxState(st): AxState<St>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    body: Bytes,
) -> Result<Response, Refusal> {
    let req: ChallengeRequest = parse_json(&body)?;
    let now = unix_now();
    let mut nonce = [0u8; 32];
    OsRng.fill_bytes(&mut nonce);
    let mut sid = [0u8; 16];
    OsRng.fill_bytes(&mut sid);
    let session_id = hex::encode(sid);
    let mut credential = None;
    let mut activation = None;
    if let Some(id) = &req.tpm {
        if req.tee != Tee::Tpm {
            return Err(bad("tpm identity given for a non-TPM challenge"));
        }
        let mut audit = audit_base("challenge");
        audit.insert("tee".into(), "tpm".into());
        match tpm_credential(&st, id, now) {
            Ok((cred, secret, name)) => {
                credential = Some(B64.encode(cred));
                activation = Some((secret, name));
            }
            Err(r) => return Err(audited(&st, audit, r).await),
        }
    }
    let expires_at = now + st.cfg.nonce_ttl_secs;
    // Bounded per client; a full table evicts unused sessions (service/sessions.rs).
    st.sessions.lock().expect("sessions lock").insert(
        peer.ip(),
        session_id.clone(),
        Session {
            tee: req.tee,
            nonce,
            expires_at,
            activation,
        },
        now,
    );
    Ok(Json(Challenge {
        session_id,
        nonce: hex::encode(nonce),
        expires_at,
        credential,
    })
    .into_response())
}

/// (tpm2-tools credential file, the secret it carries, the AK's name).
type Credential = (Vec<u8>, Zeroizing<[u8; 32]>, Vec<u8>);

/// EK certificate → trusted root, then MakeCredential for the AK's name.
fn tpm_credential(
    st: &State,
    id: &dcr_protocol::wire::TpmIdentity,
    now: u64,
) -> Result<Credential, Refusal> {
    use dcr_verify::credential;
    let ek_pub = b64("tpm.ek_public", &id.ek_public)?;
    let ek_cert = b64("tpm.ek_cert", &id.ek_cert)?;
    let ak_pub = b64("tpm.ak_public", &id.ak_public)?;
    if st.cfg.ek_roots.is_empty() {
        return Err(forbidden(
            "ek_untrusted",
            "this service trusts no EK root (--tpm-ek-root)",
        ));
    }
    let ek =
        credential::parse_ek_public(&ek_pub).map_err(|e| bad(format!("tpm.ek_public: {e}")))?;
    let v = credential::verify_ek_cert(
        &ek_cert,
        &st.cfg.ek_intermediates,
        &st.cfg.ek_roots,
        &ek,
        now,
    );
    if !v.ok() {
        return Err(forbidden("ek_untrusted", failed(&v)));
    }
    let (_, name) =
        dcr_verify::tpm::parse_ak_tpm2b(&ak_pub).map_err(|e| bad(format!("tpm.ak_public: {e}")))?;
    if name.len() != 34 {
        return Err(bad("tpm.ak_public: nameAlg must be SHA-256"));
    }
    let mut secret = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(&mut secret[..]);
    let mut seed = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(&mut seed[..]);
    let cred = credential::make_credential(&ek, &name, &secret[..], &seed, &mut OsRng)
        .map_err(|e| internal(format!("make credential: {e}")))?;
    Ok((cred, secret, name))
}

/// The failing checks of a verdict, one line.
fn failed(v: &dcr_verify::verdict::Verdict) -> String {
    let f: Vec<String> = v
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    if f.is_empty() {
        "no checks".into()
    } else {
        f.join("; ")
    }
}

/// Classify a failed evidence verdict: a binding failure alone is `binding_mismatch`.
fn evidence_refusal(v: &dcr_verify::verdict::Verdict, binding_check: &str) -> Refusal {
    let fails: Vec<&str> = v
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    if fails == [binding_check] {
        forbidden(
            "binding_mismatch",
            format!(
                "the evidence does not bind this nonce, HPKE key and contract digest ({})",
                failed(v)
            ),
        )
    } else {
        forbidden("evidence_invalid", failed(v))
    }
}

fn verify_tpm(st: &State, s: &Session, ev: &Value, rd: &[u8; 64]) -> Result<Claims, Refusal> {
    use dcr_verify::tpm;
    let e: TpmEvidence =
        serde_json::from_value(ev.clone()).map_err(|e| bad(format!("evidence: {e}")))?;
    let message = b64("evidence.message", &e.message)?;
    let signature = b64("evidence.signature", &e.signature)?;
    let pcrs = b64("evidence.pcrs", &e.pcrs)?;
    let ak = b64("evidence.ak_public", &e.ak_public)?;
    // AK trust: activated against a trusted EK in this session, or pinned.
    match &s.activation {
        Some((secret, name)) => {
            let got = e
                .activation
                .as_deref()
                .and_then(|a| hex::decode(a).ok())
                .ok_or_else(|| forbidden("ak_untrusted", "no credential activation secret"))?;
            if !ct_eq(&got, &secret[..]) {
                return Err(forbidden(
                    "ak_untrusted",
                    "credential activation secret does not match (AK not in the EK's TPM)",
                ));
            }
            let (_, ak_name) =
                tpm::parse_ak_tpm2b(&ak).map_err(|e| bad(format!("evidence.ak_public: {e}")))?;
            if ak_name != *name {
                return Err(forbidden(
                    "ak_untrusted",
                    "AK differs from the one in the challenge",
                ));
            }
        }
        None => {
            let k = tpm::parse_ak(&ak).map_err(|e| bad(format!("evidence.ak_public: {e}")))?;
            let spki = tpm::ak_spki_der(&k);
            if !st.cfg.pinned_aks.contains(&spki) {
                return Err(forbidden(
                    "ak_untrusted",
                    "AK is neither pinned (--tpm-ak) nor activated against a trusted EK",
                ));
            }
        }
    }
    let v = tpm::verify(
        &ak,
        &message,
        &signature,
        &pcrs,
        rd,
        tpm::TPM_ALG_SHA256,
        &Vec::new(),
    );
    if !v.ok() {
        return Err(evidence_refusal(&v, "qualifying_data"));
    }
    let attest = tpm::parse_attest(&message).map_err(|e| bad(e.to_string()))?;
    let values = tpm::parse_pcrs(&pcrs, &attest.selection).map_err(|e| bad(e.to_string()))?;
    Ok(Claims::Tpm {
        pcrs: values
            .into_iter()
            .filter(|(a, _, _)| *a == tpm::TPM_ALG_SHA256)
            .map(|(_, i, d)| (i, d))
            .collect(),
    })
}

/// Verify SEV-SNP or TDX evidence in the wire format (as `dcr_protocol::evidence` builds it
/// from configfs-tsm) against the binding `rd` at `now`: the claims, or (code, message).
/// TPM evidence needs a session (challenge credential) and goes through `/v1/attest` only.
pub fn verify_evidence(
    tee: Tee,
    evidence: &Value,
    rd: &[u8],
    now: u64,
    tdx_collateral: Option<&[u8]>,
) -> Result<Claims, (String, String)> {
    let rd64 = || -> Result<[u8; 64], Refusal> {
        rd.try_into().map_err(|_| {
            forbidden(
                "binding_mismatch",
                format!("the binding is {} bytes, SNP/TDX bind 64", rd.len()),
            )
        })
    };
    let r = match tee {
        Tee::Snp => rd64().and_then(|rd| verify_snp(evidence, &rd, now).map(|(c, _)| c)),
        Tee::Tdx => rd64().and_then(|rd| verify_tdx(tdx_collateral, evidence, &rd, now)),
        Tee::AzSnpVtpm => verify_az_snp(evidence, rd, now).map(|(c, _)| c),
        Tee::AzTdxVtpm => verify_az_tdx(tdx_collateral, evidence, rd, now),
        Tee::Tpm => Err(bad("tpm evidence needs a session (challenge credential)")),
    };
    r.map_err(|e| (e.code.to_string(), e.message))
}

/// Azure SNP CVM (Trustee az-snp-vtpm JSON): SNP report + VCEK, HCL binding of the runtime
/// claims (and so of the AK), the vTPM quote by that AK over `rd`. Claims: the vTPM PCRs.
/// The product and REPORTED_TCB of verified SEV-SNP evidence (compared with each key's
/// minimum), if the evidence is SEV-SNP.
type SnpTcb = Option<(dcr_verify::snp::Product, dcr_verify::snp::Tcb)>;

fn verify_az_snp(ev: &Value, rd: &[u8], now: u64) -> Result<(Claims, SnpTcb), Refusal> {
    let bytes = serde_json::to_vec(ev).map_err(|e| bad(e.to_string()))?;
    let e =
        dcr_verify::azure::parse_snp_evidence(&bytes).map_err(|e| bad(format!("evidence: {e}")))?;
    let v = dcr_verify::azure::verify_snp(
        &e,
        rd,
        now,
        &dcr_verify::snp::SnpPolicy::default(),
        &Vec::new(),
    );
    if !v.ok() {
        return Err(evidence_refusal(&v, "vtpm.qualifying_data"));
    }
    let hcl =
        dcr_verify::azure::parse_hcl(&e.hcl_report).map_err(|e| bad(format!("evidence: {e}")))?;
    let tcb = dcr_verify::snp::reported_tcb(&hcl.hw_report, &e.vcek_der)
        .ok_or_else(|| bad("evidence: SNP report or VCEK product unreadable"))?;
    Ok((azure_claims(&e.pcrs), Some(tcb)))
}

fn azure_claims(pcrs: &[Vec<u8>]) -> Claims {
    Claims::Azure {
        pcrs: pcrs
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u32, p.clone()))
            .collect(),
    }
}

/// Azure TDX CVM (Trustee az-tdx-vtpm JSON): the TD quote (DCAP, with the service's
/// collateral) carries the HCL TDREPORT's REPORTDATA, which binds the runtime claims and so
/// the AK; that AK's vTPM quote over `rd`. Claims: the vTPM PCRs.
fn verify_az_tdx(
    collateral: Option<&[u8]>,
    ev: &Value,
    rd: &[u8],
    now: u64,
) -> Result<Claims, Refusal> {
    let bytes = serde_json::to_vec(ev).map_err(|e| bad(e.to_string()))?;
    let e =
        dcr_verify::azure::parse_tdx_evidence(&bytes).map_err(|e| bad(format!("evidence: {e}")))?;
    let v = dcr_verify::azure::verify_tdx(
        &e,
        rd,
        now,
        collateral,
        &dcr_verify::tdx::TdxPolicy::default(),
        &Vec::new(),
    );
    if !v.ok() {
        return Err(evidence_refusal(&v, "vtpm.qualifying_data"));
    }
    Ok(azure_claims(&e.pcrs))
}

fn verify_snp(ev: &Value, rd: &[u8; 64], now: u64) -> Result<(Claims, SnpTcb), Refusal> {
    use dcr_verify::snp;
    let e: SnpEvidence =
        serde_json::from_value(ev.clone()).map_err(|e| bad(format!("evidence: {e}")))?;
    let report = b64("evidence.report", &e.report)?;
    let mut vcek = b64("evidence.vcek", &e.vcek)?;
    if vcek.starts_with(b"-----BEGIN") {
        vcek = snp::pem_certs(&vcek).map_err(bad)?.remove(0);
    }
    let policy = snp::SnpPolicy {
        report_data: Some(*rd),
        ..Default::default()
    };
    let v = snp::verify(&report, &vcek, None, now, &policy);
    if !v.ok() {
        return Err(evidence_refusal(&v, "report_data"));
    }
    let r = snp::Report::parse(&report).map_err(|e| bad(e.to_string()))?;
    let tcb = snp::reported_tcb(&report, &vcek)
        .ok_or_else(|| bad("evidence: VCEK names no known product"))?;
    Ok((
        Claims::Snp {
            launch_digest: r.measurement,
        },
        Some(tcb),
    ))
}

fn verify_tdx(
    collateral: Option<&[u8]>,
    ev: &Value,
    rd: &[u8; 64],
    now: u64,
) -> Result<Claims, Refusal> {
    use dcr_verify::tdx;
    let e: TdxEvidence =
        serde_json::from_value(ev.clone()).map_err(|e| bad(format!("evidence: {e}")))?;
    let quote = b64("evidence.quote", &e.quote)?;
    let coll = collateral.ok_or_else(|| {
        forbidden(
            "evidence_invalid",
            "this service has no TDX collateral (--tdx-collateral)",
        )
    })?;
    let policy = tdx::TdxPolicy {
        report_data: Some(*rd),
        ..Default::default()
    };
    let v = tdx::verify(&quote, coll, now, &policy);
    if !v.ok() {
        return Err(evidence_refusal(&v, "report_data"));
    }
    let mrtd = tdx::mrtd_of(&quote).ok_or_else(|| bad("quote has no TD report"))?;
    Ok(Claims::Tdx { mrtd })
}

/// A key record in the store.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRecord {
    key_id: String,
    owner: String,
    registered_at: u64,
    policy: dcr_protocol::wire::ReleasePolicy,
    /// nonce ‖ AES-256-GCM(master key, DEK), hex.
    dek_at_rest: String,
}

async fn attest(AxState(st): AxState<St>, body: Bytes) -> Response {
    let mut audit = audit_base("release");
    match decide(&st, &body, &mut audit).await {
        Ok(r) => r,
        Err(r) => audited(&st, audit, r).await.into_response(),
    }
}

async fn decide(
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
    let (claims, snp_tcb) = match req.tee {
        Tee::Tpm => (verify_tpm(st, &session, &req.evidence, &rd)?, None),
        Tee::Snp => verify_snp(&req.evidence, &rd, now)?,
        Tee::Tdx => (
            verify_tdx(st.cfg.tdx_collateral.as_deref(), &req.evidence, &rd, now)?,
            None,
        ),
        Tee::AzSnpVtpm => verify_az_snp(&req.evidence, &rd, now)?,
        Tee::AzTdxVtpm => (
            verify_az_tdx(st.cfg.tdx_collateral.as_deref(), &req.evidence, &rd, now)?,
            None,
        ),
    };
    let mut canon = Vec::new();
    dcr_protocol::contract::write_canonical(&req.evidence, &mut canon);
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
    // The contract's own expiry binds every key registered for it.
    if contract.expires_at() <= now {
        return Err(forbidden(
            "policy_refused",
            format!(
                "contract {} expired at {}",
                req.contract_digest, contract.expires
            ),
        ));
    }
    let mut reasons = Vec::new();
    let mut allowed = Vec::new();
    for r in for_contract {
        if !r.policy.platforms.contains(&req.tee) {
            reasons.push((
                "policy_refused",
                format!("{}: platform {} not allowed", r.key_id, req.tee.as_str()),
            ));
            continue;
        }
        match dcr_protocol::time::parse_rfc3339(&r.policy.expires) {
            Some(t) if t > now => {}
            _ => {
                reasons.push((
                    "policy_refused",
                    format!("{}: policy expired at {}", r.key_id, r.policy.expires),
                ));
                continue;
            }
        }
        let m = match serde_json::to_vec(&r.policy.reference)
            .ok()
            .and_then(|b| Measurements::from_json(&b).ok())
        {
            Some(m) => m,
            None => {
                reasons.push((
                    "policy_refused",
                    format!("{}: reference values do not parse", r.key_id),
                ));
                continue;
            }
        };
        if let Some((product, tcb)) = &snp_tcb {
            if let Err(e) =
                super::policy::snp_tcb_allowed(r.policy.snp_min_tcb.as_ref(), *product, tcb)
            {
                reasons.push(("tcb_too_old", format!("{}: {e}", r.key_id)));
                continue;
            }
        }
        let v = reference::evaluate(&m, &claims);
        if !v.ok() {
            reasons.push((
                "measurement_mismatch",
                format!("{}: {}", r.key_id, failed(&v)),
            ));
            continue;
        }
        if r.policy.single_use
            && st
                .journal
                .is_spent(&store_id(&r.policy.contract_digest, &r.key_id))
                .map_err(|e| internal(format!("store: {e}")))?
        {
            reasons.push((
                "key_spent",
                format!("{}: single-use key already released", r.key_id),
            ));
            continue;
        }
        allowed.push(r);
    }
    // All or nothing: the TEE gets keys (and the upload token that lets it publish the
    // contract's result) only when every dataset's key is registered and its owner's policy
    // accepts this evidence. Otherwise one party's lax policy (its own image, its own PCRs)
    // would give a TEE of its choosing a result key the service vouches for.
    for d in &contract.datasets {
        if !allowed.iter().any(|r| r.key_id == d.key_id)
            && !reasons
                .iter()
                .any(|(_, m)| m.starts_with(&format!("{}: ", d.key_id)))
        {
            reasons.push((
                "key_missing",
                format!("{}: dataset {}'s key is not registered", d.key_id, d.id),
            ));
        }
    }
    if !reasons.is_empty() {
        let code = reasons
            .iter()
            .find(|(c, _)| *c == "measurement_mismatch")
            .map_or(reasons[0].0, |(c, _)| *c);
        let msg: Vec<String> = reasons.into_iter().map(|(_, m)| m).collect();
        return Err(forbidden(code, msg.join("; ")));
    }
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

async fn register(AxState(st): AxState<St>, headers: HeaderMap, body: Bytes) -> Response {
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
        let m = Measurements::from_json(
            &serde_json::to_vec(&req.policy.reference).map_err(|e| bad(e.to_string()))?,
        )
        .map_err(|e| bad(format!("policy.reference: {e}")))?;
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
        for t in &req.policy.platforms {
            let ok = match t {
                Tee::Tpm => reference::pcrs(&m, PcrSection::Tpm).map(|_| ()),
                Tee::Snp => reference::snp_launch_digest(&m).map(|_| ()),
                Tee::Tdx => reference::tdx_mrtd(&m).map(|_| ()),
                Tee::AzSnpVtpm | Tee::AzTdxVtpm => {
                    reference::pcrs(&m, PcrSection::Azure).map(|_| ())
                }
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

fn blob_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn blob_path_ok(digest: &str, name: &str) -> Result<(), Refusal> {
    if digest.len() != 64
        || !digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(bad("contract digest: expected 64 lowercase hex digits"));
    }
    if !blob_name_ok(name) {
        return Err(bad(
            "blob name: 1-128 of [A-Za-z0-9._-], not starting with '.'",
        ));
    }
    Ok(())
}

async fn get_blob(
    AxState(st): AxState<St>,
    UrlPath((digest, name)): UrlPath<(String, String)>,
) -> Result<Response, Refusal> {
    blob_path_ok(&digest, &name)?;
    let path = contracts::blob_dir(&st.cfg.data_dir, &digest).join(&name);
    let f = tokio::fs::File::open(&path).await.map_err(|_| {
        refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no blob {name} for contract {digest}"),
        )
    })?;
    let len = f
        .metadata()
        .await
        .map_err(|e| internal(e.to_string()))?
        .len();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20);
    Ok((
        [("content-length", len.to_string())],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Who may write `name` in the contract's namespace: the owner of the dataset whose blob it
/// is (party token), or the TEE with the upload token released for this contract's output
/// blob (unused, unexpired). Returns the upload token's hash when that is the writer.
fn blob_writer(
    st: &State,
    headers: &HeaderMap,
    contract: &dcr_protocol::contract::Contract,
    digest: &str,
    name: &str,
    audit: &mut Map<String, Value>,
) -> Result<Option<[u8; 32]>, Refusal> {
    let upload_hash = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Upload "))
        .and_then(|t| hex::decode(t.trim()).ok())
        .map(|t| <[u8; 32]>::from(Sha256::digest(&t)));
    if let Some(p) = party(st, headers) {
        audit.insert("party".into(), p.clone().into());
        if name == contract.output.blob {
            return Err(forbidden(
                "not_owner",
                format!("{name} is the contract's output blob: only the attested TEE writes it"),
            ));
        }
        return match contract.datasets.iter().find(|d| d.blob == name) {
            Some(d) if d.owner == p => Ok(None),
            Some(d) => Err(forbidden(
                "not_owner",
                format!(
                    "{name} is dataset {}'s blob, owned by party {}; party {p} may not write it",
                    d.id, d.owner
                ),
            )),
            None => Err(forbidden(
                "not_owner",
                format!("the contract declares no blob {name}"),
            )),
        };
    }
    let Some(h) = upload_hash else {
        return Err(unauthorized(
            "a party's bearer token or an upload token is required",
        ));
    };
    let grant = match st.journal.upload(&h) {
        Ok(Some(r)) if !r.is_empty() => serde_json::from_slice::<UploadGrant>(&r)
            .map_err(|e| internal(format!("upload record: {e}")))?,
        Ok(_) => return Err(unauthorized("upload token unknown or already used")),
        Err(e) => return Err(internal(format!("store: {e}"))),
    };
    audit.insert("upload".into(), grant.session_id.clone().into());
    if grant.contract_digest != digest || grant.blob != name {
        return Err(unauthorized(format!(
            "this upload token writes {} of contract {} only",
            grant.blob, grant.contract_digest
        )));
    }
    if unix_now() > grant.expires_at {
        return Err(unauthorized(format!(
            "upload token expired at {}",
            dcr_protocol::time::format_rfc3339(grant.expires_at)
        )));
    }
    Ok(Some(h))
}

async fn put_blob(
    AxState(st): AxState<St>,
    UrlPath((digest, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut audit = audit_base("blob");
    let checked = (|| {
        blob_path_ok(&digest, &name)?;
        audit.insert("contract_digest".into(), digest.clone().into());
        audit.insert("blob".into(), name.clone().into());
        let contract = contracts::load(&st.cfg.data_dir, &digest)
            .map_err(|e| internal(e.to_string()))?
            .ok_or_else(|| {
                refuse(
                    StatusCode::NOT_FOUND,
                    "unknown_contract",
                    format!("contract {digest} is not registered (a party registers a key with it first)"),
                )
            })?;
        blob_writer(&st, &headers, &contract, &digest, &name, &mut audit)
    })();
    // An upload token streams one upload at a time (released when this handler returns), and a
    // TEE's output is bounded by the contract's output_mib (plus the proof).
    let mut limit = MAX_BLOB;
    let _reservation = match &checked {
        Ok(Some(h)) => {
            let fresh = st.uploads.lock().expect("uploads lock").insert(*h);
            if !fresh {
                drain(body, 64 << 20).await;
                let r = refuse(
                    StatusCode::CONFLICT,
                    "conflict",
                    "an upload with this token is already in progress",
                );
                return audited(&st, audit, r).await.into_response();
            }
            if let Ok(Some(c)) = contracts::load(&st.cfg.data_dir, &digest) {
                let max_out = c
                    .workloads
                    .iter()
                    .map(|w| w.limits.output_mib << 20)
                    .max()
                    .unwrap_or(0);
                limit = max_out.saturating_mul(2).saturating_add(1 << 20);
            }
            Some(UploadReservation(&st.uploads, *h))
        }
        _ => None,
    };
    let who = match checked {
        Ok(w) => w,
        Err(r) => {
            // Read (and drop) what the client is still sending, up to a bound, so that it
            // reads this answer instead of a broken pipe.
            drain(body, 64 << 20).await;
            return audited(&st, audit, r).await.into_response();
        }
    };
    let root = st.cfg.data_dir.join("blobs");
    let dir = contracts::blob_dir(&st.cfg.data_dir, &digest);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return audited(&st, audit, internal(format!("blobs: {e}")))
            .await
            .into_response();
    }
    let tmp = root.join(format!(".tmp-{}", hex::encode(rand32())));
    let fin = dir.join(&name);
    let written = write_body(body, &tmp, limit).await;
    let r = match written {
        Ok(n) => {
            // Write-once: link(2) fails if the name exists, so nothing is overwritten.
            let linked = std::fs::hard_link(&tmp, &fin);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    if let Ok(d) = std::fs::File::open(&dir) {
                        let _ = d.sync_all();
                    }
                    audit.insert("bytes".into(), n.into());
                    Ok(n)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(refuse(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!("blob {name} exists (blobs are write-once)"),
                )),
                Err(e) => Err(internal(format!("blob {name}: {e}"))),
            }
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    };
    let n = match r {
        Ok(n) => n,
        Err(e) => return audited(&st, audit, e).await.into_response(),
    };
    audit.insert("decision".into(), "store".into());
    let op = match who {
        Some(h) => Op::UseUpload { token_hash: h },
        None => Op::None,
    };
    match st.journal.commit(op, audit).await {
        Ok(Outcome::Done) => {
            (StatusCode::CREATED, Json(json!({"blob": name, "bytes": n}))).into_response()
        }
        Ok(_) => {
            let _ = std::fs::remove_file(&fin);
            unauthorized("upload token already used").into_response()
        }
        Err(e) => internal(format!("journal: {e}")).into_response(),
    }
}

/// Read and discard up to `limit` bytes of a request body (the listener bounds stalls).
async fn drain(body: Body, limit: u64) {
    use futures_util::StreamExt;
    let mut s = body.into_data_stream();
    let mut n = 0u64;
    while let Some(Ok(chunk)) = s.next().await {
        n += chunk.len() as u64;
        if n > limit {
            break;
        }
    }
}

fn rand32() -> [u8; 32] {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    b
}

/// Frees an upload token's reservation when the upload handler ends, however it ends.
struct UploadReservation<'a>(
    &'a std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
    [u8; 32],
);

impl Drop for UploadReservation<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

async fn write_body(body: Body, path: &std::path::Path, limit: u64) -> Result<u64, Refusal> {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    let mut f = tokio::fs::File::create(path)
        .await
        .map_err(|e| internal(e.to_string()))?;
    let mut s = body.into_data_stream();
    let mut n: u64 = 0;
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| bad(format!("body: {e}")))?;
        n += chunk.len() as u64;
        if n > limit {
            return Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("this blob is limited to {limit} bytes"),
            ));
        }
        f.write_all(&chunk)
            .await
            .map_err(|e| internal(e.to_string()))?;
    }
    f.sync_all().await.map_err(|e| internal(e.to_string()))?;
    Ok(n)
}

//! `POST /v1/challenge`: a single-use nonce per session (and, for a TPM with an EK, a
//! credential only that TPM can activate for its AK).

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State as AxState};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use dcr_protocol::wire::{Challenge, ChallengeRequest, Tee};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::api::{
    audit_base, audited, b64, bad, forbidden, internal, parse_json, Refusal, St, B64,
};
use crate::policy::failed;
use crate::{unix_now, Session, State};

pub(crate) async fn challenge(
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
pub(crate) type Credential = (Vec<u8>, Zeroizing<[u8; 32]>, Vec<u8>);

/// EK certificate → trusted root, then MakeCredential for the AK's name.
pub(crate) fn tpm_credential(
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

//! `GET`/`PUT /v1/contracts/{digest}/blobs/{name}`: sealed inputs (owners) and the sealed
//! result (the TEE, with its single-use upload token).

use axum::body::Body;
use axum::extract::{Path as UrlPath, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dcr_protocol::wire::UploadGrant;
use rand_core::{OsRng, RngCore};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::api::{
    audit_base, audited, bad, forbidden, internal, party, refuse, unauthorized, Refusal, St,
};
use crate::contracts;

use crate::journal::{Op, Outcome};
use crate::{unix_now, State};

pub(crate) const MAX_BLOB: u64 = 64 << 30;

pub(crate) fn blob_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// 64 lowercase hex digits (a SHA-256 as the API writes it: contract digests, runs).
pub(crate) fn hex64_ok(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(crate) fn blob_path_ok(digest: &str, name: &str) -> Result<(), Refusal> {
    if !hex64_ok(digest) {
        return Err(bad("contract digest: expected 64 lowercase hex digits"));
    }
    if !blob_name_ok(name) {
        return Err(bad(
            "blob name: 1-128 of [A-Za-z0-9._-], not starting with '.'",
        ));
    }
    Ok(())
}

pub(crate) async fn get_blob(
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

/// The SHA-256 of the upload token in `Authorization: Upload <hex>`, if there is one.
pub(crate) fn upload_token_hash(headers: &HeaderMap) -> Option<[u8; 32]> {
    headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Upload "))
        .and_then(|t| hex::decode(t.trim()).ok())
        .map(|t| <[u8; 32]>::from(Sha256::digest(&t)))
}

/// Who may write `name` in the contract's namespace: the owner of the dataset whose blob it
/// is (party token), or the TEE with the upload token released for this contract's output
/// blob (unused, unexpired). Returns the upload token when that is the writer.
pub(crate) fn blob_writer(
    st: &State,
    headers: &HeaderMap,
    contract: &dcr_protocol::contract::Contract,
    digest: &str,
    name: &str,
    audit: &mut Map<String, Value>,
) -> Result<Option<Tee>, Refusal> {
    let upload_hash = upload_token_hash(headers);
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
    // Besides the output blob (which uses the token up), the TEE writes the answer of each
    // pending query of this contract, once each (crate::queries).
    let answers_query = grant.contract_digest == digest
        && dcr_protocol::wire::query_of_result_blob(name)
            .is_some_and(|id| crate::queries::is_pending(&st.cfg.data_dir, digest, id));
    if grant.contract_digest != digest || (grant.blob != name && !answers_query) {
        return Err(unauthorized(format!(
            "this upload token writes {} (and answers to pending queries) of contract {} only",
            grant.blob, grant.contract_digest
        )));
    }
    if unix_now() > grant.expires_at {
        return Err(unauthorized(format!(
            "upload token expired at {}",
            dcr_protocol::time::format_rfc3339(grant.expires_at)
        )));
    }
    Ok(Some(Tee {
        token_hash: h,
        uses_up: !answers_query,
    }))
}

/// The TEE writing a blob with its upload token: the output blob uses the token up; a
/// query's answer does not.
pub(crate) struct Tee {
    pub token_hash: [u8; 32],
    pub uses_up: bool,
}

pub(crate) async fn put_blob(
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
        Ok(Some(Tee { token_hash: h, .. })) => {
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
    let mut written = write_body(body, &tmp, limit).await;
    // A TEE's blob must be one its run's stored receipt names (by SHA-256): nothing leaves a
    // run without a receipt, and a stolen upload token cannot squat a name with other bytes.
    if let (Ok(_), Some(t)) = (&written, &who) {
        if let Err(e) = crate::receipts::check_named(&st, &digest, &t.token_hash, &name, &tmp) {
            written = Err(e);
        }
    }
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
        Some(Tee {
            token_hash,
            uses_up: true,
        }) => Op::UseUpload { token_hash },
        _ => Op::None,
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
pub(crate) async fn drain(body: Body, limit: u64) {
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

pub(crate) fn rand32() -> [u8; 32] {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    b
}

/// Frees an upload token's reservation when the upload handler ends, however it ends.
pub(crate) struct UploadReservation<'a>(
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

pub(crate) async fn write_body(
    body: Body,
    path: &std::path::Path,
    limit: u64,
) -> Result<u64, Refusal> {
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

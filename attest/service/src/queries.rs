//! `POST`/`GET /v1/contracts/{digest}/queries` (docs/analysis.md, docs/protocol.md): parties
//! submit SQL queries under the contract's analyses; the TEE of the next run fetches the
//! pending ones in a list the service signs, runs them and writes each answer to the blob
//! `query-<id>.result` (sealed to the analysis's recipients, signed by the TEE). A query with
//! an answer is no longer pending.
//!
//! - Submitting takes a party's bearer token; the stored query names that party (the body's
//!   `party` must be the token's). The service refuses what it can already see is refused
//!   (unknown analysis, a party the analysis does not name); the engine in the TEE checks
//!   everything again, the rule included, and trusts nothing the service says but who
//!   submitted.
//! - At most [`MAX_PENDING_QUERIES`] wait per contract (an authenticated flood stops there).
//! - Listing takes a token of one of the contract's parties, or the unexpired upload token the
//!   service released to a TEE attested for this contract.
//! - Stored as `DATA/queries/<digest>/<id>.json` (written to a temporary file, synced,
//!   renamed: a kill -9 leaves either nothing or the whole query).

use std::path::{Path, PathBuf};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dcr_protocol::analysis::Query;
use dcr_protocol::release::{Signed, QUERIES_DOMAIN};
use dcr_protocol::wire::{
    query_id_ok, query_result_blob, PendingQuery, QueryList, QueryReceipt, UploadGrant,
    MAX_PENDING_QUERIES,
};
use sha2::{Digest, Sha256};

use crate::api::{
    audit_base, audited, bad, forbidden, internal, party, refuse, unauthorized, Refusal, St,
};
use crate::blobs::{blob_path_ok, rand32};
use crate::journal::{Op, Outcome};
use crate::{contracts, unix_now, State};

fn dir(data_dir: &Path, digest: &str) -> PathBuf {
    data_dir.join("queries").join(digest)
}

/// The pending queries of a contract, oldest first (by file time, then id); a stored file
/// that does not parse is an error, never skipped.
fn pending(data_dir: &Path, digest: &str) -> Result<Vec<PendingQuery>, Refusal> {
    let d = dir(data_dir, digest);
    let entries = match std::fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(internal(format!("queries: {e}"))),
    };
    let blobs = contracts::blob_dir(data_dir, digest);
    let mut found = Vec::new();
    for e in entries {
        let e = e.map_err(|e| internal(format!("queries: {e}")))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".json").filter(|id| query_id_ok(id)) else {
            continue; // temporary files
        };
        if blobs.join(query_result_blob(id)).exists() {
            continue; // answered
        }
        let bytes = std::fs::read(e.path()).map_err(|e| internal(format!("query {id}: {e}")))?;
        let query =
            Query::from_json(&bytes).map_err(|e| internal(format!("stored query {id}: {e}")))?;
        let time = e
            .metadata()
            .and_then(|m| m.modified())
            .map_err(|e| internal(format!("query {id}: {e}")))?;
        found.push((
            time,
            PendingQuery {
                id: id.to_string(),
                query,
            },
        ));
    }
    found.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
    Ok(found.into_iter().map(|(_, q)| q).collect())
}

/// A stored query of the contract (answered or not).
pub(crate) fn stored(data_dir: &Path, digest: &str, id: &str) -> Result<Option<Query>, Refusal> {
    if !query_id_ok(id) {
        return Ok(None);
    }
    match std::fs::read(dir(data_dir, digest).join(format!("{id}.json"))) {
        Ok(b) => Query::from_json(&b)
            .map(Some)
            .map_err(|e| internal(format!("stored query {id}: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(internal(format!("query {id}: {e}"))),
    }
}

/// Whether `id` is a stored query of the contract that has no answer yet.
pub(crate) fn is_pending(data_dir: &Path, digest: &str, id: &str) -> bool {
    query_id_ok(id)
        && dir(data_dir, digest).join(format!("{id}.json")).is_file()
        && !contracts::blob_dir(data_dir, digest)
            .join(query_result_blob(id))
            .exists()
}

pub(crate) fn registered(
    st: &State,
    digest: &str,
) -> Result<dcr_protocol::contract::Contract, Refusal> {
    contracts::load(&st.cfg.data_dir, digest)
        .map_err(|e| internal(e.to_string()))?
        .ok_or_else(|| {
            refuse(
                StatusCode::NOT_FOUND,
                "unknown_contract",
                format!(
                    "contract {digest} is not registered (a party registers a key with it first)"
                ),
            )
        })
}

pub(crate) async fn submit(
    AxState(st): AxState<St>,
    UrlPath(digest): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut audit = audit_base("query");
    let r = (|| {
        blob_path_ok(&digest, "x")?;
        audit.insert("contract_digest".into(), digest.clone().into());
        let Some(p) = party(&st, &headers) else {
            return Err(unauthorized("a party's bearer token is required"));
        };
        audit.insert("party".into(), p.clone().into());
        let contract = registered(&st, &digest)?;
        let query = Query::from_json(&body).map_err(|e| bad(format!("query: {e}")))?;
        audit.insert("analysis".into(), query.analysis.clone().into());
        if query.party != p {
            return Err(forbidden(
                "not_submitter",
                format!(
                    "this token is party {p}'s; it cannot submit as party {}",
                    query.party
                ),
            ));
        }
        let Some(a) = contract.analysis(&query.analysis) else {
            return Err(bad(format!(
                "analysis: the contract has no analysis {:?}",
                query.analysis
            )));
        };
        let template = matches!(a.rule, dcr_protocol::analysis::Rule::Template(_));
        if template && query.sql.is_some() {
            return Err(bad(format!(
                "sql: analysis {} is a template; send its parameters, not SQL",
                a.name
            )));
        }
        if !template && (query.sql.is_none() || !query.parameters.is_empty()) {
            return Err(bad(format!(
                "sql: analysis {} takes SQL, not template parameters",
                a.name
            )));
        }
        if !a.submitters.contains(&p) {
            return Err(forbidden(
                "not_submitter",
                format!(
                    "analysis {} takes queries from {}; not from party {p}",
                    a.name,
                    a.submitters.join(", ")
                ),
            ));
        }
        Ok((p, query))
    })();
    let (p, query) = match r {
        Ok(x) => x,
        Err(e) => return audited(&st, audit, e).await.into_response(),
    };
    let stored = {
        // One submission at a time: the pending count and the write are one step.
        let _guard = st.queries.lock().expect("queries lock");
        (|| {
            let n = pending(&st.cfg.data_dir, &digest)?.len();
            if n >= MAX_PENDING_QUERIES {
                return Err(refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_queries",
                    format!(
                        "contract {digest} has {n} queries waiting for a run (at most {MAX_PENDING_QUERIES})"
                    ),
                ));
            }
            let id = hex::encode(&rand32()[..16]);
            let bytes = query.to_json();
            write_new(
                &dir(&st.cfg.data_dir, &digest),
                &format!("{id}.json"),
                &bytes,
            )
            .map_err(|e| internal(format!("queries: {e}")))?;
            Ok((id, bytes))
        })()
    };
    let (id, bytes) = match stored {
        Ok(x) => x,
        Err(e) => return audited(&st, audit, e).await.into_response(),
    };
    audit.insert("query".into(), id.clone().into());
    audit.insert("sha256".into(), hex::encode(Sha256::digest(&bytes)).into());
    audit.insert("decision".into(), "store".into());
    match st.journal.commit(Op::None, audit).await {
        Ok(Outcome::Done) => (
            StatusCode::CREATED,
            Json(QueryReceipt {
                id,
                contract_digest: digest,
                analysis: query.analysis,
                party: p,
            }),
        )
            .into_response(),
        Ok(_) => internal("journal: not committed").into_response(),
        Err(e) => {
            let _ = std::fs::remove_file(dir(&st.cfg.data_dir, &digest).join(format!("{id}.json")));
            internal(format!("journal: {e}")).into_response()
        }
    }
}

/// Write `name` in `dir` whole or not at all (temporary file, fsync, rename, fsync dir).
fn write_new(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".tmp-{}", hex::encode(&rand32()[..8])));
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// An upload token released for this contract, unexpired and unused (the TEE of a run).
fn tee_of(st: &State, headers: &HeaderMap, digest: &str) -> Result<bool, Refusal> {
    Ok(tee_grant(st, headers, digest)?.is_some())
}

/// [`tee_of`], with the token's grant and the token's SHA-256 (which names the run).
pub(crate) fn tee_grant(
    st: &State,
    headers: &HeaderMap,
    digest: &str,
) -> Result<Option<(UploadGrant, [u8; 32])>, Refusal> {
    let Some(h) = crate::blobs::upload_token_hash(headers) else {
        return Ok(None);
    };
    let grant = match st.journal.upload(&h) {
        Ok(Some(r)) if !r.is_empty() => serde_json::from_slice::<UploadGrant>(&r)
            .map_err(|e| internal(format!("upload record: {e}")))?,
        Ok(_) => return Ok(None),
        Err(e) => return Err(internal(format!("store: {e}"))),
    };
    Ok((grant.contract_digest == digest && unix_now() <= grant.expires_at).then_some((grant, h)))
}

/// A request by the TEE of a run: the run's unused, unexpired upload token for this contract
/// (its grant and the token's SHA-256, both recorded in `audit`) and the result key its
/// release named (requests and receipts must be signed with it).
pub(crate) fn attested_tee(
    st: &State,
    headers: &HeaderMap,
    digest: &str,
    audit: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(UploadGrant, [u8; 32], dcr_protocol::keys::SigningPublic), Refusal> {
    blob_path_ok(digest, "x")?;
    audit.insert("contract_digest".into(), digest.into());
    let Some((grant, run)) = tee_grant(st, headers, digest)? else {
        return Err(unauthorized(
            "the unused upload token of a TEE attested for this contract is required",
        ));
    };
    audit.insert("upload".into(), grant.session_id.clone().into());
    audit.insert("run".into(), hex::encode(run).into());
    let key = grant
        .result_key
        .as_deref()
        .and_then(|k| dcr_protocol::keys::SigningPublic::from_text(k).ok())
        .ok_or_else(|| unauthorized("this upload token's release names no result key"))?;
    Ok((grant, run, key))
}

pub(crate) async fn list(
    AxState(st): AxState<St>,
    UrlPath(digest): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    blob_path_ok(&digest, "x")?;
    let contract = registered(&st, &digest)?;
    let member = party(&st, &headers).is_some_and(|p| contract.parties.iter().any(|x| x.id == p));
    if !member && !tee_of(&st, &headers, &digest)? {
        return Err(unauthorized(
            "a token of one of the contract's parties, or the upload token of a TEE attested for it, is required",
        ));
    }
    let queries = pending(&st.cfg.data_dir, &digest)?;
    let payload = serde_json::to_vec(&QueryList {
        contract_digest: digest,
        queries,
    })
    .map_err(|e| internal(e.to_string()))?;
    Ok(Json(Signed::sign_in(QUERIES_DOMAIN, &st.keys.signing, &payload)).into_response())
}

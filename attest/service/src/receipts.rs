//! Run receipts (docs/protocol.md, "Run receipts"):
//!
//! - `POST /v1/contracts/{digest}/receipts` — the TEE of a run (its unused, unexpired upload
//!   token for this contract) uploads its signed receipt with the evidence it posted
//!   ([`ReceiptUpload`]). The service takes it only if the receipt is signed by the result key
//!   the run's release named, passes [`check`] with the service's own key (its release, its
//!   debits, the contract pinning its key) and [`check_evidence`], and is for this contract,
//!   this session and this run (the token's SHA-256). Stored write-once per run (bytes, then
//!   the audit record, then the name); the audit record links the receipt (its SHA-256) to the
//!   run, the session and the debits the receipt lists.
//! - A TEE's blob (its output, a query's answer) is taken only if its run's stored receipt
//!   names it with those bytes' SHA-256 ([`check_named`], called by the blob upload).
//! - `GET /v1/contracts/{digest}/receipts` — a party of the contract: the runs with a receipt.
//! - `GET /v1/contracts/{digest}/receipts/{run}` — a party of the contract: that upload, which
//!   it verifies offline (`dcr-attest verify receipt`).
//!
//! Receipts are not blobs: blobs are readable by anyone who knows the contract digest (they
//! are sealed), a receipt is plaintext metadata for the contract's parties.

use std::path::{Path, PathBuf};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dcr_protocol::receipt::{
    check, check_evidence, parse_unverified, ReceiptList, ReceiptUpload, MAX_RECEIPT_UPLOAD,
};
use dcr_protocol::release::RUN_RECEIPT_DOMAIN;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::api::{
    audit_base, audited, bad, forbidden, internal, parse_json, party, refuse, unauthorized,
};
use crate::api::{Refusal, St};
use crate::blobs::{blob_path_ok, hex64_ok, rand32};
use crate::journal::{Op, Outcome};
use crate::queries::{attested_tee, registered};

fn dir(data_dir: &Path, digest: &str) -> PathBuf {
    data_dir.join("receipts").join(digest)
}

pub(crate) async fn upload(
    AxState(st): AxState<St>,
    UrlPath(digest): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut audit = audit_base("receipt");
    let r = (|| {
        let (grant, run, tee_key) = attested_tee(&st, &headers, &digest, &mut audit)?;
        if body.len() > MAX_RECEIPT_UPLOAD {
            return Err(bad(format!(
                "a receipt upload is limited to {MAX_RECEIPT_UPLOAD} bytes"
            )));
        }
        let up: ReceiptUpload = parse_json(&body)?;
        let payload = up
            .receipt
            .verify_in(RUN_RECEIPT_DOMAIN, &tee_key)
            .map_err(|_| {
                unauthorized("the receipt is not signed by the TEE's attested result key")
            })?;
        // Everything an offline verifier checks that the service can: its own release and
        // debits, the contract, the evidence the release was made on.
        let (rec, rel) =
            check(&up.receipt, &st.keys.signing.public()).map_err(|e| bad(e.to_string()))?;
        check_evidence(&rec, &rel, &up.evidence).map_err(|e| bad(e.to_string()))?;
        for (field, got, want) in [
            (
                "receipt.contract_digest",
                rec.contract_digest.as_str(),
                digest.as_str(),
            ),
            ("receipt.session_id", &rec.session_id, &grant.session_id),
            ("receipt.run", &rec.run, &hex::encode(run)),
            (
                "release.result_key",
                &rel.result_key,
                tee_key.to_text().as_str(),
            ),
        ] {
            if got != want {
                return Err(bad(format!("{field}: {got} is not this run's {want}")));
            }
        }
        audit.insert(
            "receipt_sha256".into(),
            hex::encode(Sha256::digest(&payload)).into(),
        );
        audit.insert("evidence_digest".into(), rec.evidence_sha256.clone().into());
        audit.insert(
            "queries".into(),
            rec.queries
                .iter()
                .map(|q| q.id.clone())
                .collect::<Vec<_>>()
                .into(),
        );
        audit.insert(
            "debits".into(),
            rec.queries
                .iter()
                .filter(|q| q.debit.is_some())
                .map(|q| q.id.clone())
                .collect::<Vec<_>>()
                .into(),
        );
        Ok(hex::encode(run))
    })();
    let run = match r {
        Ok(run) => run,
        Err(e) => return audited(&st, audit, e).await.into_response(),
    };
    let d = dir(&st.cfg.data_dir, &digest);
    let fin = d.join(format!("{run}.json"));
    // The same bytes again (a retry after a lost answer): stored, and recorded, already.
    if let Ok(b) = std::fs::read(&fin) {
        if b == body[..] {
            return (StatusCode::CREATED, Json(json!({"run": run}))).into_response();
        }
        let r = refuse(
            StatusCode::CONFLICT,
            "conflict",
            format!("run {run} has another receipt already (receipts are write-once)"),
        );
        return audited(&st, audit, r).await.into_response();
    }
    // The bytes on disk first (a temporary file where unfinished blob uploads go, removed at
    // start), then the audit record, then the name: an acknowledged receipt is on disk and
    // recorded; a crash before the link leaves no receipt (the TEE's retry stores it).
    let root = st.cfg.data_dir.join("blobs");
    let tmp = root.join(format!(".tmp-{}", hex::encode(rand32())));
    let written = std::fs::create_dir_all(&d)
        .and_then(|()| std::fs::create_dir_all(&root))
        .and_then(|()| std::fs::write(&tmp, &body))
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return audited(&st, audit, internal(format!("receipt: {e}")))
            .await
            .into_response();
    }
    audit.insert("decision".into(), "store".into());
    match st.journal.commit(Op::None, audit).await {
        Ok(Outcome::Done) => {}
        Ok(_) => {
            let _ = std::fs::remove_file(&tmp);
            return internal("journal: unexpected outcome").into_response();
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return internal(format!("journal: {e}")).into_response();
        }
    }
    // Write-once: link(2) fails if the name exists (a concurrent upload of the same run).
    let linked = std::fs::hard_link(&tmp, &fin);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Ok(f) = std::fs::File::open(&d) {
                let _ = f.sync_all();
            }
            (StatusCode::CREATED, Json(json!({"run": run}))).into_response()
        }
        Err(e)
            if e.kind() == std::io::ErrorKind::AlreadyExists
                && std::fs::read(&fin).is_ok_and(|b| b == body[..]) =>
        {
            (StatusCode::CREATED, Json(json!({"run": run}))).into_response()
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => refuse(
            StatusCode::CONFLICT,
            "conflict",
            format!("run {run} has another receipt already (receipts are write-once)"),
        )
        .into_response(),
        Err(e) => internal(format!("receipt: {e}")).into_response(),
    }
}

/// A party of the registered contract `digest`, or a refusal.
fn member(st: &St, headers: &HeaderMap, digest: &str) -> Result<(), Refusal> {
    blob_path_ok(digest, "x")?;
    let contract = registered(st, digest)?;
    let ok = party(st, headers).is_some_and(|p| contract.parties.iter().any(|x| x.id == p));
    if !ok {
        return Err(unauthorized(
            "a token of one of the contract's parties is required",
        ));
    }
    Ok(())
}

pub(crate) async fn list(
    AxState(st): AxState<St>,
    UrlPath(digest): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    member(&st, &headers, &digest)?;
    let mut runs = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir(&st.cfg.data_dir, &digest)) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(run) = name.strip_suffix(".json").filter(|r| hex64_ok(r)) {
                runs.push(run.to_string());
            }
        }
    }
    runs.sort();
    Ok(Json(ReceiptList {
        contract_digest: digest,
        runs,
    })
    .into_response())
}

pub(crate) async fn get(
    AxState(st): AxState<St>,
    UrlPath((digest, run)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    member(&st, &headers, &digest)?;
    if !hex64_ok(&run) {
        return Err(bad("run: expected 64 lowercase hex digits"));
    }
    let bytes = std::fs::read(dir(&st.cfg.data_dir, &digest).join(format!("{run}.json"))).map_err(
        |_| {
            refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no receipt of run {run} for contract {digest}"),
            )
        },
    )?;
    Ok(([("content-type", "application/json")], bytes).into_response())
}

/// The TEE of run `token_hash` writes `name` of contract `digest` with the bytes in `file`:
/// its stored receipt must name that blob with those bytes' SHA-256 (the output blob, or a
/// query's answer).
pub(crate) fn check_named(
    st: &crate::State,
    digest: &str,
    token_hash: &[u8; 32],
    name: &str,
    file: &Path,
) -> Result<(), Refusal> {
    let run = hex::encode(token_hash);
    let stored =
        std::fs::read(dir(&st.cfg.data_dir, digest).join(format!("{run}.json"))).map_err(|_| {
            forbidden(
                "no_receipt",
                format!("run {run} has no receipt: a TEE uploads its receipt before its results"),
            )
        })?;
    let up: ReceiptUpload =
        serde_json::from_slice(&stored).map_err(|e| internal(format!("stored receipt: {e}")))?;
    let r = parse_unverified(&up.receipt).map_err(|e| internal(format!("stored receipt: {e}")))?;
    let named = r
        .output
        .iter()
        .filter(|o| o.blob == name)
        .map(|o| o.sha256.clone())
        .chain(
            r.queries
                .iter()
                .filter(|q| dcr_protocol::wire::query_result_blob(&q.id) == name)
                .map(|q| q.result_sha256.clone()),
        )
        .next()
        .ok_or_else(|| {
            forbidden(
                "not_in_receipt",
                format!("run {run}'s receipt does not name blob {name}"),
            )
        })?;
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(file).map_err(|e| internal(format!("blob: {e}")))?;
    std::io::copy(&mut f, &mut h).map_err(|e| internal(format!("blob: {e}")))?;
    let got = hex::encode(h.finalize());
    if got != named {
        return Err(forbidden(
            "not_in_receipt",
            format!("blob {name}: SHA-256 {got} is not the {named} run {run}'s receipt names"),
        ));
    }
    Ok(())
}

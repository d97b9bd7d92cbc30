//! The SQL side of the run (docs/analysis.md, "In the guest"): the service's signed list of
//! pending queries, each re-checked against the contract (analysis, submitter), answered by the
//! contract's `sql` workload (dcr-sql-engine) run confined over the decrypted tables, the
//! answer re-checked against its rule, sealed to the analysis's recipients, signed with this
//! TEE's result key and uploaded as `query-<id>.result` — before the output blob, whose upload
//! uses the upload token up.
//!
//! A query the contract does not allow, that the engine refuses or that fails gets a sealed
//! one-line reason and no data; a malformed or unsigned list fails the run.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use dcr_protocol::analysis::{check_answer_csv, Answer, Outcome, Query, MAX_QUERY_JSON};
use dcr_protocol::contract::Contract;
use dcr_protocol::release::{Signed, QUERIES_DOMAIN};
use dcr_protocol::wire::{query_id_ok, query_result_blob, QueryList, MAX_PENDING_QUERIES};
use zeroize::Zeroizing;

use crate::client::Client;
use crate::console::say;
use crate::release::{Keys, TeeKeys};
use crate::workload::{
    checked_exe, inputs_of, run_confined, seal_sign_upload, workload_uid, RUN_DIR,
};
use crate::{step, StepError, CONTRACT_PATH};

/// The largest signed list accepted: 64 query documents of at most MAX_QUERY_JSON bytes (with
/// their ids), base64 in the signed JSON.
const LIST_LIMIT: u64 = 4 << 20;
const _: () =
    assert!((MAX_PENDING_QUERIES * (MAX_QUERY_JSON + 128) * 4 / 3 + 4096) as u64 <= LIST_LIMIT);

/// Exit status of dcr-sql-engine for a refused query.
const ENGINE_REFUSED: i32 = 3;

/// Answer the pending queries, when the contract has a sql workload. The sql workload's
/// `timeout_secs` is the budget for all of a run's queries together (each query gets what is
/// left of it); queries left when it is spent stay pending for the next run. So a flood of
/// slow queries cannot hold the run (and the output, uploaded after the answers) past what
/// the parties agreed.
pub fn answer_queries(
    c: &Contract,
    digest: &[u8; 32],
    tk: &TeeKeys,
    keys: &Keys,
    client: &Client,
    all_inputs: &[String],
) -> Result<(), StepError> {
    let Some(w) = c.sql_workload() else {
        return Ok(());
    };
    let auth = format!("Upload {}", hex::encode(&keys.upload_token[..]));
    let body = client.call(
        "queries",
        "GET",
        &format!("/v1/contracts/{}/queries", hex::encode(digest)),
        None,
        Some(&auth),
        LIST_LIMIT,
    )?;
    let list = step("queries", verify_list(c, digest, &body))?;
    say(&format!("queries pending={}", list.queries.len()));
    if list.queries.is_empty() {
        return Ok(());
    }
    let exe = checked_exe("queries", w)?;
    let dir = Path::new(RUN_DIR).join("queries");
    step(
        "queries",
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display())),
    )?;
    // The engine gets each table of its inputs as NAME=FILE.
    let tables: Vec<String> = inputs_of(c, w, all_inputs)
        .into_iter()
        .filter_map(|(path, i)| {
            c.datasets[i]
                .table
                .as_ref()
                .map(|t| format!("{}={path}", t.name))
        })
        .collect();
    let uid = workload_uid(c, w);
    let budget = std::time::Duration::from_secs(w.limits.timeout_secs);
    let start = std::time::Instant::now();
    for (n, pq) in list.queries.iter().enumerate() {
        let left = budget.saturating_sub(start.elapsed());
        if left.is_zero() {
            say(&format!(
                "queries deferred={} (the sql workload's timeout_secs = {} is spent; they stay pending)",
                list.queries.len() - n,
                w.limits.timeout_secs
            ));
            break;
        }
        let q = &pq.query;
        let Some(analysis) = c.analysis(&q.analysis) else {
            // The service stores only queries of the contract's analyses: a list naming
            // another is not answered (there is no one to seal the answer to).
            say(&format!(
                "query {} skipped: analysis {:?} is not in the contract",
                pq.id, q.analysis
            ));
            continue;
        };
        let Some(recipients) = c.answer_recipients(analysis, &q.party) else {
            // Only a party the analysis does not name can lack a key (the contract gives every
            // recipient and every submitter one): nobody to seal a refusal to.
            say(&format!(
                "query {} skipped: party {:?} is not a submitter of analysis {} and has no key",
                pq.id, q.party, analysis.name
            ));
            continue;
        };
        let (outcome, detail, secs) = if !analysis.submitters.contains(&q.party) {
            (
                Outcome::Refused(format!(
                    "analysis {}: party {} is not one of its submitters",
                    analysis.name, q.party
                )),
                "not_submitter".to_string(),
                0.0,
            )
        } else {
            let run = Run {
                exe: &exe,
                dir: &dir,
                tables: &tables,
                uid,
                timeout_secs: left.as_secs().max(1),
            };
            run_one(c, w, &run, &pq.id, q, &analysis.rule)?
        };
        let answer = Zeroizing::new(
            Answer {
                query_id: pq.id.clone(),
                query: q.clone(),
                outcome,
            }
            .encode(),
        );
        let blob = query_result_blob(&pq.id);
        let keys_only: Vec<_> = recipients.iter().map(|(_, k)| *k).collect();
        let (_, signed) = seal_sign_upload(
            "answer", digest, tk, keys, client, &keys_only, &blob, answer,
        )?;
        let names: Vec<&str> = recipients.iter().map(|(n, _)| n.as_str()).collect();
        say(&format!(
            "query {} analysis={} party={} outcome={detail} time={secs:.1}s sealed={} bytes recipients={}",
            pq.id,
            q.analysis,
            q.party,
            signed.len(),
            names.join(",")
        ));
    }
    Ok(())
}

/// The list's signature (the contract's service key, queries domain), its contract and its
/// shape.
fn verify_list(c: &Contract, digest: &[u8; 32], body: &[u8]) -> Result<QueryList, String> {
    let signed: Signed = serde_json::from_slice(body)
        .map_err(|e| format!("the query list is not a signed document: {e}"))?;
    let payload = signed
        .verify_in(QUERIES_DOMAIN, &c.signing_key())
        .map_err(|e| format!("the query list: {e}"))?;
    let list: QueryList =
        serde_json::from_slice(&payload).map_err(|e| format!("the query list: {e}"))?;
    if list.contract_digest != hex::encode(digest) {
        return Err(format!(
            "the query list is for contract {}, not this one",
            list.contract_digest
        ));
    }
    if list.queries.len() > MAX_PENDING_QUERIES {
        return Err(format!(
            "the query list has {} queries (at most {MAX_PENDING_QUERIES})",
            list.queries.len()
        ));
    }
    let mut ids = BTreeSet::new();
    for pq in &list.queries {
        if !query_id_ok(&pq.id) || !ids.insert(pq.id.as_str()) {
            return Err(format!(
                "the query list has a malformed or repeated id {:?}",
                pq.id
            ));
        }
        pq.query
            .validate()
            .map_err(|e| format!("the query list: query {}: {e}", pq.id))?;
    }
    Ok(list)
}

/// How the engine runs: its checked executable, the directory the query documents go to, its
/// tables (NAME=FILE), its uid and the seconds this query may take.
struct Run<'a> {
    exe: &'a Path,
    dir: &'a Path,
    tables: &'a [String],
    uid: u32,
    timeout_secs: u64,
}

/// One query through the engine: its outcome, a word for the console, the seconds it took.
fn run_one(
    c: &Contract,
    w: &dcr_protocol::contract::Workload,
    r: &Run<'_>,
    id: &str,
    q: &Query,
    rule: &dcr_protocol::analysis::Rule,
) -> Result<(Outcome, String, f64), StepError> {
    let (exe, dir, tables, uid) = (r.exe, r.dir, r.tables, r.uid);
    let path = dir.join(format!("{id}.json"));
    step(
        "queries",
        std::fs::write(&path, q.to_json())
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)))
            .map_err(|e| format!("{}: {e}", path.display())),
    )?;
    let mut args = vec![CONTRACT_PATH.to_string(), path.display().to_string()];
    args.extend(tables.iter().cloned());
    let ran = run_confined("queries", w, exe, &args, uid, r.timeout_secs);
    let _ = std::fs::remove_file(&path);
    let ran = match ran {
        Ok(r) => r,
        // A timeout or an oversized answer ends this query, not the run.
        Err(e) => {
            return Ok((
                Outcome::Refused(format!(
                    "analysis {}: the engine failed: {}",
                    q.analysis, e.detail
                )),
                "failed".into(),
                0.0,
            ))
        }
    };
    let secs = ran.secs;
    match ran.status.code() {
        Some(0) => match check_answer_csv(rule, &c.catalog(), &ran.out) {
            Ok(rows) => Ok((
                Outcome::Rows(ran.out.to_vec()),
                format!("ok rows={rows}"),
                secs,
            )),
            Err(e) => Ok((
                Outcome::Refused(format!(
                    "analysis {}: guest-init refused the engine's answer: {e}",
                    q.analysis
                )),
                "answer_refused".into(),
                secs,
            )),
        },
        Some(ENGINE_REFUSED) => {
            let text = String::from_utf8_lossy(&ran.out);
            let line: String = text.trim_end().chars().take(1024).collect();
            if line.is_empty() || line.contains('\n') {
                return Ok((
                    Outcome::Refused(format!(
                        "analysis {}: the engine refused the query without one reason line",
                        q.analysis
                    )),
                    "refused".into(),
                    secs,
                ));
            }
            Ok((Outcome::Refused(line), "refused".into(), secs))
        }
        _ => Ok((
            Outcome::Refused(format!(
                "analysis {}: the engine failed ({}); no data",
                q.analysis,
                ran.exit()
            )),
            format!("failed exit={}", ran.exit()),
            secs,
        )),
    }
}

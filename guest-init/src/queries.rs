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
use dcr_protocol::dp::{budget_name, Debit, DebitRequest, DpAccount, ACCOUNT_LINE};
use dcr_protocol::receipt::{QueryOutcome, ReceiptQuery};
use dcr_protocol::release::{Signed, DEBIT_DOMAIN, DEBIT_REQUEST_DOMAIN, QUERIES_DOMAIN};
use dcr_protocol::wire::{query_id_ok, query_result_blob, QueryList, MAX_PENDING_QUERIES};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::client::Client;
use crate::console::say;
use crate::release::{Keys, TeeKeys};
use crate::workload::{checked_exe, run_confined, seal_sign, workload_uid, RUN_DIR};
use crate::{step, StepError, CONTRACT_PATH};

/// The largest signed list accepted: 64 query documents of at most MAX_QUERY_JSON bytes (with
/// their ids), base64 in the signed JSON.
const LIST_LIMIT: u64 = 4 << 20;
const _: () =
    assert!((MAX_PENDING_QUERIES * (MAX_QUERY_JSON + 128) * 4 / 3 + 4096) as u64 <= LIST_LIMIT);

/// Exit status of dcr-sql-engine for a refused query.
const ENGINE_REFUSED: i32 = 3;

/// The answers of a run, sealed and signed, for the receipt and then the upload.
#[derive(Default)]
pub struct Answers {
    pub receipt: Vec<ReceiptQuery>,
    /// (blob name, signed answer file), uploaded after the receipt.
    pub files: Vec<(String, Vec<u8>)>,
}

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
    _all_inputs: &[String],
) -> Result<Answers, StepError> {
    let mut out = Answers::default();
    let Some(w) = c.sql_workload() else {
        return Ok(out);
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
        return Ok(out);
    }
    let exe = checked_exe("queries", w)?;
    let dir = Path::new(RUN_DIR).join("queries");
    step(
        "queries",
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display())),
    )?;
    // The engine gets each table of its inputs as NAME=FILE.
    let tables: Vec<String> = crate::workload::workload_inputs("queries", c, w)?
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
        // Under a DP rule the budget is debited before the engine runs, so every outcome (an
        // answer, a refusal, a failure, a timeout) costs the query's ε: an outcome that depends
        // on the data is never a free look at it.
        let (outcome, detail, secs, debited) = if !analysis.submitters.contains(&q.party) {
            (
                Outcome::Refused(format!(
                    "analysis {}: party {} is not one of its submitters",
                    analysis.name, q.party
                )),
                "not_submitter".to_string(),
                0.0,
                None,
            )
        } else {
            let pre = analysis
                .rule_dp()
                .map(|_| debit(c, digest, tk, keys, client, &pq.id, q, analysis));
            match pre {
                Some(Err(why)) => (
                    Outcome::Refused(format!(
                        "analysis {}: no privacy budget debit, so the query did not run: {why}",
                        analysis.name
                    )),
                    "budget_refused".to_string(),
                    0.0,
                    None,
                ),
                pre => {
                    let debited = pre.map(|r| r.expect("matched above"));
                    let run = Run {
                        exe: &exe,
                        dir: &dir,
                        tables: &tables,
                        uid,
                        timeout_secs: left.as_secs().max(1),
                    };
                    let spent = debited
                        .as_ref()
                        .map(|(_, spent)| {
                            format!(" epsilon={} budget_spent={spent}", q_eps(analysis))
                        })
                        .unwrap_or_default();
                    let debit_doc = debited.map(|(d, _)| d);
                    match (run_one(c, w, &run, &pq.id, q, analysis)?, &debit_doc) {
                        ((Ran::Done(o), detail, secs), _) => {
                            (o, format!("{detail}{spent}"), secs, debit_doc)
                        }
                        ((Ran::Dp { account, csv }, detail, secs), Some(d)) => (
                            Outcome::Dp {
                                account,
                                debit: d.clone(),
                                csv,
                            },
                            format!("{detail}{spent}"),
                            secs,
                            debit_doc,
                        ),
                        ((Ran::Dp { .. }, _, secs), None) => (
                            Outcome::Refused(format!(
                                "analysis {}: a DP answer without a debit",
                                analysis.name
                            )),
                            "answer_refused".to_string(),
                            secs,
                            None,
                        ),
                    }
                }
            }
        };
        let (kind, refusal) = match &outcome {
            Outcome::Rows(_) => (QueryOutcome::Ok, None),
            Outcome::Dp { .. } => (QueryOutcome::Dp, None),
            Outcome::Refused(_) => (
                QueryOutcome::Refused,
                Some(
                    detail
                        .split_whitespace()
                        .next()
                        .unwrap_or("refused")
                        .to_string(),
                ),
            ),
        };
        let epsilon = debited
            .as_ref()
            .and_then(|_| analysis.rule_dp().map(|d| d.epsilon_per_query));
        let debit_doc = debited;
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
        let (_, signed) = seal_sign("answer", digest, tk, keys, &keys_only, &blob, answer)?;
        out.receipt.push(ReceiptQuery {
            id: pq.id.clone(),
            analysis: q.analysis.clone(),
            sql_sha256: hex::encode(q.digest()),
            submitter: q.party.clone(),
            outcome: kind,
            refusal,
            result_sha256: hex::encode(Sha256::digest(&signed)),
            epsilon,
            debit: debit_doc,
        });
        let names: Vec<&str> = recipients.iter().map(|(n, _)| n.as_str()).collect();
        say(&format!(
            "query {} analysis={} party={} outcome={detail} time={secs:.1}s sealed={} bytes recipients={}",
            pq.id,
            q.analysis,
            q.party,
            signed.len(),
            names.join(",")
        ));
        out.files.push((blob, signed));
    }
    Ok(out)
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

/// The rule's ε per query, for the console.
fn q_eps(a: &dcr_protocol::analysis::Analysis) -> String {
    a.rule_dp()
        .map(|d| d.epsilon_per_query.to_string())
        .unwrap_or_default()
}

/// Ask the service to debit the query's ε (the upload token, the request signed with this
/// TEE's attested result key); the signed debit must be the service's (the contract's key) for
/// exactly this query and this run. Returns it and the budget's spent total. A refusal (budget
/// exhausted, debited for another run) or any failure: the reason, and no answer.
#[allow(clippy::too_many_arguments)]
fn debit(
    c: &Contract,
    digest: &[u8; 32],
    tk: &TeeKeys,
    keys: &Keys,
    client: &Client,
    id: &str,
    q: &Query,
    a: &dcr_protocol::analysis::Analysis,
) -> Result<(Signed, String), String> {
    let dp = a.rule_dp().ok_or("the analysis has no dp rule")?;
    let req = DebitRequest {
        query_id: id.to_string(),
        query_sha256: hex::encode(q.digest()),
        analysis: a.name.clone(),
        party: q.party.clone(),
        epsilon: dp.epsilon_per_query,
    };
    let auth = format!("Upload {}", hex::encode(&keys.upload_token[..]));
    let body = client
        .call(
            "budget",
            "POST",
            &format!("/v1/contracts/{}/budget/debit", hex::encode(digest)),
            Some(
                &serde_json::to_vec(&Signed::sign_in(
                    DEBIT_REQUEST_DOMAIN,
                    &tk.result,
                    &serde_json::to_vec(&req).expect("a typed document"),
                ))
                .expect("a typed document"),
            ),
            Some(&auth),
            1 << 16,
        )
        .map_err(|e| e.detail)?;
    let signed: Signed = serde_json::from_slice(&body)
        .map_err(|e| format!("the debit is not a signed document: {e}"))?;
    let payload = signed
        .verify_in(DEBIT_DOMAIN, &c.signing_key())
        .map_err(|e| format!("the debit: {e}"))?;
    let d: Debit = serde_json::from_slice(&payload).map_err(|e| format!("the debit: {e}"))?;
    if d.contract_digest != hex::encode(digest)
        || d.query_id != req.query_id
        || d.query_sha256 != req.query_sha256
        || d.analysis != req.analysis
        || d.party != req.party
        || d.epsilon != dp.epsilon_per_query
        || d.total != dp.epsilon_total
        || d.spent > d.total
        || d.budget != budget_name(dp.budget, &q.party)
        || d.run != hex::encode(Sha256::digest(&keys.upload_token[..]))
    {
        return Err("the signed debit is not this query's".into());
    }
    Ok((signed, d.spent.to_string()))
}

/// What one engine run gave: a final outcome, or a DP answer that needs its debit first.
enum Ran {
    Done(Outcome),
    Dp { account: DpAccount, csv: Vec<u8> },
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
    analysis: &dcr_protocol::analysis::Analysis,
) -> Result<(Ran, String, f64), StepError> {
    let (o, detail, secs) = run_engine(c, w, r, id, q, analysis)?;
    let Some(dp) = analysis.rule_dp() else {
        return Ok((Ran::Done(o), detail, secs));
    };
    let Outcome::Rows(out) = o else {
        return Ok((Ran::Done(o), detail, secs));
    };
    // A DP answer: the engine's account line first, within the rule, then the CSV.
    let refused = |why: String| {
        Ok((
            Ran::Done(Outcome::Refused(format!(
                "analysis {}: guest-init refused the engine's answer: {why}",
                q.analysis
            ))),
            "answer_refused".to_string(),
            secs,
        ))
    };
    let Some(nl) = out.iter().position(|&b| b == b'\n') else {
        return refused("no account line".into());
    };
    let Some(json) = out[..nl].strip_prefix(ACCOUNT_LINE.as_bytes()) else {
        return refused("no account line".into());
    };
    let account: DpAccount = match serde_json::from_slice(json) {
        Ok(a) => a,
        Err(e) => return refused(format!("the account line: {e}")),
    };
    let ok = account.epsilon.is_finite()
        && account.epsilon > 0.0
        && account.epsilon <= dp.epsilon_per_query.as_f64() * (1.0 + 1e-9)
        && account.delta.is_finite()
        && account.delta >= 0.0
        && account.delta <= dp.delta.0
        && account.max_rows_per_unit == dp.max_rows_per_unit;
    if !ok {
        return refused(format!(
            "the account (ε {}, δ {}) exceeds the rule (ε {}, δ {})",
            account.epsilon, account.delta, dp.epsilon_per_query, dp.delta.0
        ));
    }
    let csv = out[nl + 1..].to_vec();
    match check_answer_csv(&analysis.rule, &c.catalog(), &csv) {
        Ok(rows) => Ok((Ran::Dp { account, csv }, format!("ok rows={rows}"), secs)),
        Err(e) => refused(e),
    }
}

/// The engine's run as a plain outcome (a DP answer still carries its account line).
fn run_engine(
    c: &Contract,
    w: &dcr_protocol::contract::Workload,
    r: &Run<'_>,
    id: &str,
    q: &Query,
    analysis: &dcr_protocol::analysis::Analysis,
) -> Result<(Outcome, String, f64), StepError> {
    let rule = &analysis.rule;
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
    let ran = run_confined("queries", w, exe, &args, uid, r.timeout_secs, None);
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
        // A DP answer is checked by run_one, after its account line.
        Some(0) if analysis.rule_dp().is_some() => {
            Ok((Outcome::Rows(ran.out.to_vec()), "ok".into(), secs))
        }
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

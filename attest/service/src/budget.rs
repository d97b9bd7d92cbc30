//! Privacy budgets of DP analyses (docs/analysis.md, "Differential privacy"; docs/protocol.md):
//!
//! - `POST /v1/contracts/{digest}/budget/debit` — the TEE of a run (its unused, unexpired
//!   upload token for this contract, and the request signed with the result key its evidence
//!   bound, so a token seen on the wire cannot spend budgets) asks to debit a stored query's
//!   ε before it seals the answer. The service checks the query (stored for this contract,
//!   same document digest, analysis and party), that its analysis has a `dp` rule and that
//!   the ε asked is exactly the rule's `epsilon_per_query`; then the journal debits it in one
//!   redb transaction (durable before the answer): refused when the budget would pass
//!   `epsilon_total`. A query is debited for one run only: the same run asking again gets the
//!   stored debit (no second spend); another run is refused (`already_debited`), so a query
//!   never gets fresh noise twice for one debit. The answer is the debit signed under
//!   `DEBIT_DOMAIN`; the TEE seals the answer only with it.
//! - `GET /v1/contracts/{digest}/budget` — a party of the contract: each DP analysis's budgets,
//!   spent and total.
//!
//! Budgets are keyed by contract digest and never deleted: rebooting the VM, re-running or
//! re-registering the same contract does not reset them; a new budget is a new contract.

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dcr_protocol::dp::{budget_name, Debit, DebitRequest, Epsilon};
use dcr_protocol::release::{Signed, DEBIT_DOMAIN, DEBIT_REQUEST_DOMAIN};

use crate::api::{
    audit_base, audited, bad, forbidden, internal, parse_json, party, refuse, unauthorized,
};
use crate::api::{Refusal, St};
use crate::blobs::blob_path_ok;
use crate::journal::{Op, Outcome};
use crate::queries::{attested_tee, registered, stored};

/// The ledger key of a budget.
fn key(digest: &str, analysis: &str, budget: &str) -> String {
    format!("{digest}/{analysis}/{budget}")
}

pub(crate) async fn debit(
    AxState(st): AxState<St>,
    UrlPath(digest): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut audit = audit_base("debit");
    let r = (|| {
        let (_, run, tee_key) = attested_tee(&st, &headers, &digest, &mut audit)?;
        let contract = registered(&st, &digest)?;
        let signed: Signed = parse_json(&body)?;
        let payload = signed
            .verify_in(DEBIT_REQUEST_DOMAIN, &tee_key)
            .map_err(|_| {
                unauthorized("the debit request is not signed by the TEE's attested result key")
            })?;
        let req: DebitRequest = parse_json(&payload)?;
        audit.insert("query".into(), req.query_id.clone().into());
        audit.insert("analysis".into(), req.analysis.clone().into());
        let Some(q) = stored(&st.cfg.data_dir, &digest, &req.query_id)? else {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                "unknown_query",
                format!(
                    "query_id: {} is not a query of contract {digest}",
                    req.query_id
                ),
            ));
        };
        if hex::encode(q.digest()) != req.query_sha256
            || q.analysis != req.analysis
            || q.party != req.party
        {
            return Err(bad(format!(
                "query_sha256: the request does not name query {} as stored (its document, analysis or party differ)",
                req.query_id
            )));
        }
        let a = contract.analysis(&req.analysis).ok_or_else(|| {
            internal(format!(
                "stored query names unknown analysis {}",
                req.analysis
            ))
        })?;
        let Some(dp) = a.rule_dp() else {
            return Err(bad(format!(
                "analysis: {} has no dp rule; there is no budget to debit",
                a.name
            )));
        };
        if req.epsilon != dp.epsilon_per_query {
            return Err(bad(format!(
                "epsilon: {} is not analysis {}'s epsilon_per_query ({})",
                req.epsilon, a.name, dp.epsilon_per_query
            )));
        }
        let budget = budget_name(dp.budget, &req.party);
        audit.insert("budget".into(), budget.clone().into());
        audit.insert("epsilon".into(), req.epsilon.to_string().into());
        Ok((
            key(&digest, &a.name, &budget),
            Debit {
                contract_digest: digest.clone(),
                analysis: a.name.clone(),
                budget,
                query_id: req.query_id,
                query_sha256: req.query_sha256,
                party: req.party,
                epsilon: req.epsilon,
                run: hex::encode(run),
                spent: Epsilon(0),
                total: dp.epsilon_total,
                at: dcr_protocol::time::format_rfc3339(crate::unix_now()),
            },
        ))
    })();
    let (ledger, debit) = match r {
        Ok(x) => x,
        Err(e) => return audited(&st, audit, e).await.into_response(),
    };
    let total = debit.total;
    let query = debit.query_id.clone();
    match st.journal.commit(Op::Debit { budget: ledger, debit }, audit).await {
        Ok(Outcome::Debited { record, .. }) => {
            // A replay answers with the stored debit, re-signed (Ed25519 is deterministic).
            match serde_json::from_slice::<Debit>(&record) {
                Ok(d) if d.query_id == query => {
                    Json(Signed::sign_in(DEBIT_DOMAIN, &st.keys.signing, &record)).into_response()
                }
                _ => internal("stored debit does not parse").into_response(),
            }
        }
        Ok(Outcome::DebitedElsewhere) => refuse(
            StatusCode::CONFLICT,
            "already_debited",
            format!(
                "query {query} was debited for another run; its answer is that run's (a query is never answered twice)"
            ),
        )
        .into_response(),
        Ok(Outcome::Exhausted { spent }) => refuse(
            StatusCode::CONFLICT,
            "budget_exhausted",
            format!(
                "the privacy budget is spent: {} of {} used; this query needs more (a new budget needs a new contract)",
                Epsilon(spent),
                total
            ),
        )
        .into_response(),
        Ok(_) => internal("journal: not committed").into_response(),
        Err(e) => internal(format!("journal: {e}")).into_response(),
    }
}

/// One budget as `GET …/budget` shows it.
#[derive(serde::Serialize)]
struct BudgetView {
    analysis: String,
    budget: String,
    spent: Epsilon,
    total: Epsilon,
}

pub(crate) async fn show(
    AxState(st): AxState<St>,
    UrlPath(digest): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    blob_path_ok(&digest, "x")?;
    let contract = registered(&st, &digest)?;
    let member = party(&st, &headers).is_some_and(|p| contract.parties.iter().any(|x| x.id == p));
    if !member {
        return Err(if party(&st, &headers).is_some() {
            forbidden("not_a_party", "only the contract's parties see its budgets")
        } else {
            unauthorized("a token of one of the contract's parties is required")
        });
    }
    let spent = st
        .journal
        .budgets_with_prefix(&format!("{digest}/"))
        .map_err(|e| internal(format!("store: {e}")))?;
    let mut out = Vec::new();
    for a in &contract.analyses {
        let Some(dp) = a.rule_dp() else { continue };
        let prefix = format!("{digest}/{}/", a.name);
        let mine: Vec<_> = spent
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .collect();
        if mine.is_empty() {
            out.push(BudgetView {
                analysis: a.name.clone(),
                budget: budget_name(dp.budget, "*"),
                spent: Epsilon(0),
                total: dp.epsilon_total,
            });
        }
        for (k, v) in mine {
            out.push(BudgetView {
                analysis: a.name.clone(),
                budget: k[prefix.len()..].to_string(),
                spent: Epsilon(*v),
                total: dp.epsilon_total,
            });
        }
    }
    Ok(Json(out).into_response())
}

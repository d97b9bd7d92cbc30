//! `dcr-attest query submit | pending | result`: queries through the key-release service
//! (docs/analysis.md, "Submitting a query").
//! - `submit`: store a query for the next run, bound to the contract and the token's party;
//! - `pending`: the service's signed list of queries not yet answered (signature checked
//!   with the key the contract pins);
//! - `result`: fetch a query's answer, check its proof (an attested TEE of this contract
//!   signed it), open it with a recipient's key, check it answers this query, print it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use dcr_protocol::analysis::{Answer, Outcome, ParameterValue, Query};
use dcr_protocol::release::{Signed, QUERIES_DOMAIN};
use dcr_protocol::wire::{query_id_ok, query_result_blob, QueryList, QueryReceipt};

use super::common::{client_for, read_contract};

/// Exit status of `result` for a refused query (the reason on stderr).
pub const REFUSED: u8 = 3;

#[derive(clap::Args)]
pub struct Service {
    /// The key-release service (https:// with --service-pub, or plain HTTP on loopback).
    #[arg(long, value_name = "URL")]
    pub service: String,
    /// The service's public keys (service.pub.json): needed for an https:// service.
    #[arg(long, value_name = "PATH")]
    pub service_pub: Option<PathBuf>,
    /// The contract (TOML).
    #[arg(long, value_name = "PATH")]
    pub contract: PathBuf,
    /// Send the party token over plain HTTP to a host that is not this machine.
    #[arg(long)]
    pub insecure_http: bool,
}

#[derive(clap::Args)]
pub struct Submit {
    #[command(flatten)]
    service: Service,
    /// The party's bearer token (a file).
    #[arg(long, value_name = "PATH")]
    token_file: PathBuf,
    /// The submitting party (must be the token's party and a submitter of the analysis).
    #[arg(long, value_name = "PARTY")]
    party: String,
    /// The analysis's name in the contract.
    #[arg(long, value_name = "NAME")]
    analysis: String,
    #[command(flatten)]
    text: Text,
    /// Also write the submitted query document here (give it to `query result --query`).
    #[arg(long, value_name = "PATH")]
    query_out: Option<PathBuf>,
}

/// A query's text, as `check`, `run-local` and `submit` take it.
#[derive(clap::Args)]
pub struct Text {
    /// The query (aggregation and list rules).
    #[arg(long, value_name = "SQL", conflicts_with_all = ["sql_file", "param"])]
    pub sql: Option<String>,
    /// The query, from a file.
    #[arg(long, value_name = "PATH", conflicts_with = "param")]
    pub sql_file: Option<PathBuf>,
    /// A template's parameter, NAME=VALUE; VALUE is read as JSON when it parses (5, 2.5,
    /// true, "text"), else as text.
    #[arg(long, value_name = "NAME=VALUE")]
    pub param: Vec<String>,
}

#[derive(clap::Args)]
pub struct Pending {
    #[command(flatten)]
    service: Service,
    /// A party's bearer token (a file).
    #[arg(long, value_name = "PATH")]
    token_file: PathBuf,
}

#[derive(clap::Args)]
pub struct Result {
    #[command(flatten)]
    service: Service,
    /// The query id `submit` printed.
    #[arg(long, value_name = "ID")]
    id: String,
    /// A recipient's secret key (keygen's NAME.key).
    #[arg(long, value_name = "PATH")]
    key: PathBuf,
    /// The query document `submit --query-out` wrote: the answer must be for exactly it.
    #[arg(long, value_name = "PATH")]
    query: Option<PathBuf>,
    /// Write the rows (CSV) here instead of stdout.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
}

pub fn client(s: &Service) -> anyhow::Result<dcr_attest::parties::Client> {
    let mut c = client_for(&s.service, s.service_pub.as_deref())?;
    c.insecure_http = s.insecure_http;
    Ok(c)
}

pub fn token(p: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(p)
        .with_context(|| format!("--token-file {}", p.display()))?
        .trim()
        .to_string())
}

/// `--param NAME=VALUE`s as typed values.
pub fn parameters(params: &[String]) -> anyhow::Result<BTreeMap<String, ParameterValue>> {
    let mut values = BTreeMap::new();
    for p in params {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("--param {p:?}: expected NAME=VALUE"))?;
        let v = serde_json::from_str::<ParameterValue>(v)
            .unwrap_or_else(|_| ParameterValue::Text(v.to_string()));
        if values.insert(k.to_string(), v).is_some() {
            bail!("--param {k}: given twice");
        }
    }
    Ok(values)
}

pub fn submit(a: Submit) -> anyhow::Result<ExitCode> {
    let c = read_contract(&a.service.contract)?;
    let Some(analysis) = c.analysis(&a.analysis) else {
        bail!(
            "--analysis {}: the contract has no such analysis",
            a.analysis
        );
    };
    if !analysis.submitters.contains(&a.party) {
        bail!(
            "--party {}: analysis {} takes queries from {} only",
            a.party,
            analysis.name,
            analysis.submitters.join(", ")
        );
    }
    let sql = match (&a.text.sql, &a.text.sql_file) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(p)) => Some(
            std::fs::read_to_string(p).with_context(|| format!("--sql-file {}", p.display()))?,
        ),
        (None, None) => None,
    };
    let is_template = matches!(analysis.rule, dcr_protocol::analysis::Rule::Template(_));
    if sql.is_none() && !is_template {
        bail!("--sql or --sql-file: analysis {} takes SQL", analysis.name);
    }
    let query = Query {
        analysis: a.analysis.clone(),
        party: a.party.clone(),
        sql,
        parameters: parameters(&a.text.param)?,
    };
    query.validate().context("the query")?;
    let doc = query.to_json();
    let digest = hex::encode(c.digest());
    let body = client(&a.service)?.post_json(
        &format!("/v1/contracts/{digest}/queries"),
        Some(&token(&a.token_file)?),
        &serde_json::from_slice(&doc).expect("a query is JSON"),
    )?;
    let receipt: QueryReceipt =
        serde_json::from_slice(&body).context("the service's answer is not a query receipt")?;
    if !query_id_ok(&receipt.id)
        || receipt.contract_digest != digest
        || receipt.analysis != query.analysis
        || receipt.party != query.party
    {
        bail!(
            "the service's receipt names query {:?} of {} under {} for contract {}: not what was sent",
            receipt.id,
            receipt.party,
            receipt.analysis,
            receipt.contract_digest
        );
    }
    if let Some(p) = &a.query_out {
        std::fs::write(p, &doc).with_context(|| format!("--query-out {}", p.display()))?;
    }
    println!(
        "submitted query {} analysis={} party={} sha256={}",
        receipt.id,
        query.analysis,
        query.party,
        hex::encode(query.digest())
    );
    Ok(ExitCode::SUCCESS)
}

pub fn pending(a: Pending) -> anyhow::Result<ExitCode> {
    let c = read_contract(&a.service.contract)?;
    let digest = hex::encode(c.digest());
    let body = client(&a.service)?.get_with_token(
        &format!("/v1/contracts/{digest}/queries"),
        &token(&a.token_file)?,
    )?;
    let signed: Signed =
        serde_json::from_slice(&body).context("the query list is not a signed document")?;
    let payload = signed
        .verify_in(QUERIES_DOMAIN, &c.signing_key())
        .context("the query list is not signed by the contract's service key")?;
    let list: QueryList = serde_json::from_slice(&payload).context("the query list")?;
    if list.contract_digest != digest {
        bail!(
            "the query list is for contract {}, not {digest}",
            list.contract_digest
        );
    }
    println!(
        "{} queries pending for contract {digest}",
        list.queries.len()
    );
    for q in &list.queries {
        println!(
            "{} analysis={} party={} sha256={}",
            q.id,
            q.query.analysis,
            q.query.party,
            hex::encode(q.query.digest())
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn result(a: Result) -> anyhow::Result<ExitCode> {
    if !query_id_ok(&a.id) {
        bail!("--id {:?}: a query id is 32 lowercase hex digits", a.id);
    }
    let c = read_contract(&a.service.contract)?;
    let expected = match &a.query {
        Some(p) => Some(
            Query::from_json(
                &std::fs::read(p).with_context(|| format!("--query {}", p.display()))?,
            )
            .with_context(|| format!("--query {}", p.display()))?,
        ),
        None => None,
    };
    let blob = query_result_blob(&a.id);
    let tmp = std::env::temp_dir().join(format!("dcr-{blob}-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let fetched = client(&a.service)?.get_blob(&hex::encode(c.digest()), &blob, &tmp);
    let opened = fetched.map_err(anyhow::Error::from).and_then(|_| {
        dcr_attest::parties::open_signed(&tmp, &a.key, &c, &blob).map_err(anyhow::Error::from)
    });
    let _ = std::fs::remove_file(&tmp);
    let plain = opened.with_context(|| format!("query {}", a.id))?;
    let answer = Answer::decode(&plain).with_context(|| format!("query {}: the answer", a.id))?;
    if answer.query_id != a.id {
        bail!(
            "query {}: the answer is for query {} (swapped)",
            a.id,
            answer.query_id
        );
    }
    let ran = &answer.query;
    if let Some(q) = &expected {
        if ran.digest() != q.digest() {
            bail!(
                "query {}: the TEE answered a query (sha256 {}, analysis {}, party {}) other than --query (sha256 {})",
                a.id,
                hex::encode(ran.digest()),
                ran.analysis,
                ran.party,
                hex::encode(q.digest())
            );
        }
    }
    eprintln!(
        "query {} analysis={} party={} sha256={}: answered by an attested TEE of contract {}{}",
        a.id,
        ran.analysis,
        ran.party,
        hex::encode(ran.digest()),
        hex::encode(c.digest()),
        if expected.is_some() {
            " (the document given with --query)"
        } else {
            ""
        }
    );
    // What ran, as the TEE saw it (every recipient sees it; printable: the guest refuses
    // control characters in queries).
    match &ran.sql {
        Some(sql) => eprintln!("query sql: {}", sql.escape_debug()),
        None => eprintln!(
            "query parameters: {}",
            serde_json::to_string(&ran.parameters).expect("parameters are JSON")
        ),
    }
    let dp_rule = c.analysis(&ran.analysis).and_then(|an| an.rule_dp());
    let csv = match answer.outcome {
        Outcome::Rows(_) if dp_rule.is_some() => bail!(
            "query {}: analysis {} is differentially private but the answer carries no budget debit",
            a.id,
            ran.analysis
        ),
        Outcome::Rows(csv) => csv,
        Outcome::Dp {
            account,
            debit,
            csv,
        } => {
            // The debit is the service's (the contract's key), for this very query.
            let payload = debit
                .verify_in(dcr_protocol::release::DEBIT_DOMAIN, &c.signing_key())
                .with_context(|| format!("query {}: the budget debit", a.id))?;
            let d: dcr_protocol::dp::Debit = serde_json::from_slice(&payload)
                .with_context(|| format!("query {}: the budget debit", a.id))?;
            let rule_ok = dp_rule.is_some_and(|r| {
                d.epsilon == r.epsilon_per_query
                    && d.total == r.epsilon_total
                    && d.budget == dcr_protocol::dp::budget_name(r.budget, &ran.party)
            });
            if d.query_id != a.id
                || d.query_sha256 != hex::encode(ran.digest())
                || d.contract_digest != hex::encode(c.digest())
                || d.analysis != ran.analysis
                || d.party != ran.party
                || d.spent > d.total
                || !rule_ok
            {
                bail!(
                    "query {}: the budget debit is for another query ({} of contract {})",
                    a.id,
                    d.query_id,
                    d.contract_digest
                );
            }
            let scales: Vec<String> = account
                .scales
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            eprintln!(
                "differential privacy: spent ε={} δ={:e} (rule: ε {} per query); noise scale {}; {}max rows per person {}",
                account.epsilon,
                account.delta,
                d.epsilon,
                scales.join(" "),
                account
                    .threshold
                    .map(|t| format!("groups released above a noisy {t} people; "))
                    .unwrap_or_default(),
                account.max_rows_per_unit
            );
            eprintln!(
                "budget: debited by the key-release service at {}: {} of {} spent ({})",
                d.at, d.spent, d.total, d.budget
            );
            csv
        }
        Outcome::Refused(reason) => {
            eprintln!("refused: {}", reason.escape_debug());
            return Ok(ExitCode::from(REFUSED));
        }
    };
    match &a.out {
        Some(p) => dcr_attest::parties::write_private_atomically(p, |w| {
            w.write_all(&csv)
                .map_err(|e| dcr_attest::parties::PartyError::Format(e.to_string()))
        })
        .with_context(|| format!("--out {}", p.display()))?,
        None => std::io::stdout().write_all(&csv).context("stdout")?,
    }
    Ok(ExitCode::SUCCESS)
}

//! `dcr-attest query`: SQL analyses (docs/analysis.md).
//! - `check`: is a query allowed under an analysis of a contract? Nothing runs.
//! - `run-local`: the same engine and rules on local files (synthetic data), before
//!   submitting.
//! - `submit`, `pending`, `result`: through the key-release service (query_service.rs).

#[cfg(feature = "sql")]
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(feature = "sql")]
use anyhow::{bail, Context};
#[cfg(feature = "sql")]
use dcr_protocol::analysis::TableFormat;
#[cfg(feature = "sql")]
use dcr_sql::{Engine, Submission};

#[cfg(feature = "sql")]
use super::common::read_contract;

#[derive(clap::Args)]
#[cfg_attr(not(feature = "sql"), allow(dead_code))]
pub struct Args {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(clap::Subcommand)]
#[cfg_attr(not(feature = "sql"), allow(dead_code))]
enum Sub {
    /// Check a query against an analysis's rule (exit 0: allowed; 1: refused, the rule named).
    Check(Query),
    /// Run a query on local files with the same engine and rules; the result (CSV) on stdout
    /// or in --out (exit 1: refused).
    RunLocal(RunLocal),
    /// Submit a query for the next run (a party's token; the party must be a submitter of
    /// the analysis). Prints the query id.
    Submit(super::query_service::Submit),
    /// List the queries waiting for a run (the service's signed list).
    Pending(super::query_service::Pending),
    /// Fetch and open a query's answer (exit 0: rows; 3: refused, the reason on stderr).
    Result(super::query_service::Result),
}

#[derive(clap::Args)]
#[cfg_attr(not(feature = "sql"), allow(dead_code))]
struct Query {
    /// The contract (TOML).
    #[arg(long, value_name = "PATH")]
    contract: PathBuf,
    /// The analysis's name in the contract.
    #[arg(long, value_name = "NAME")]
    analysis: String,
    #[command(flatten)]
    text: super::query_service::Text,
    /// Who submits (checked against the analysis's submitters).
    #[arg(long, value_name = "PARTY")]
    party: Option<String>,
    /// Print the plan that would run (threshold included).
    #[arg(long)]
    explain: bool,
}

#[derive(clap::Args)]
#[cfg_attr(not(feature = "sql"), allow(dead_code))]
struct RunLocal {
    #[command(flatten)]
    query: Query,
    /// A table's rows: NAME=FILE, in the format the contract declares (repeat per table;
    /// tables not given are empty).
    #[arg(long, value_name = "NAME=FILE")]
    table: Vec<String>,
    /// Write the CSV here instead of stdout.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    match a.cmd {
        #[cfg(feature = "sql")]
        Sub::Check(q) => check(q),
        #[cfg(feature = "sql")]
        Sub::RunLocal(r) => run_local(r),
        #[cfg(not(feature = "sql"))]
        Sub::Check(_) | Sub::RunLocal(_) => anyhow::bail!(
            "this dcr-attest was built without the SQL engine (feature sql): cargo build --release -p dcr-attest"
        ),
        Sub::Submit(s) => super::query_service::submit(s),
        Sub::Pending(p) => super::query_service::pending(p),
        Sub::Result(r) => super::query_service::result(r),
    }
}

#[cfg(feature = "sql")]
fn submission(q: &Query) -> anyhow::Result<Submission> {
    if let Some(s) = &q.text.sql {
        return Ok(Submission::Sql(s.clone()));
    }
    if let Some(p) = &q.text.sql_file {
        let s =
            std::fs::read_to_string(p).with_context(|| format!("--sql-file {}", p.display()))?;
        return Ok(Submission::Sql(s));
    }
    if q.text.param.is_empty() {
        let c = read_contract(&q.contract)?;
        let is_template = c
            .analysis(&q.analysis)
            .is_some_and(|a| matches!(a.rule, dcr_protocol::analysis::Rule::Template(_)));
        if !is_template {
            bail!("--sql or --sql-file: the query to check");
        }
    }
    Ok(Submission::Template(super::query_service::parameters(
        &q.text.param,
    )?))
}

#[cfg(feature = "sql")]
fn check(q: Query) -> anyhow::Result<ExitCode> {
    let contract = read_contract(&q.contract)?;
    let sub = submission(&q)?;
    let engine = Engine::new(&contract).context("the SQL engine")?;
    match engine.check(&q.analysis, q.party.as_deref(), &sub) {
        Ok(checked) => {
            println!("allowed by analysis {}", checked.analysis);
            if q.explain {
                println!("{}", checked.plan().display_indent());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(r) => {
            eprintln!("{r}");
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(feature = "sql")]
fn run_local(r: RunLocal) -> anyhow::Result<ExitCode> {
    let contract = read_contract(&r.query.contract)?;
    let sub = submission(&r.query)?;
    let mut engine = Engine::new(&contract).context("the SQL engine")?;
    let catalog = contract.catalog();
    let mut given = std::collections::BTreeSet::new();
    for t in &r.table {
        let (name, file) = t
            .split_once('=')
            .with_context(|| format!("--table {t:?}: expected NAME=FILE"))?;
        let table = catalog
            .table(name)
            .with_context(|| format!("--table {name}: no such table in the contract"))?;
        if !given.insert(name) {
            bail!("--table {name}: given twice");
        }
        let bytes = std::fs::read(file).with_context(|| format!("--table {name}={file}"))?;
        let batches = match table.format {
            TableFormat::Csv => dcr_sql::load::csv(table, bytes.as_slice()),
            TableFormat::Parquet => dcr_sql::load::parquet(table, bytes.into()),
        }
        .with_context(|| format!("--table {name}={file}"))?;
        engine
            .load(name, batches)
            .with_context(|| format!("--table {name}={file}"))?;
    }
    let checked = match engine.check(&r.query.analysis, r.query.party.as_deref(), &sub) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    let out = engine.run(&checked)?;
    if let Some(a) = &out.dp {
        // Local runs spend no budget (no service), but say what a run in the TEE would.
        let scales: Vec<String> = a.scales.iter().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!(
            "differential privacy: spent ε={} δ={:e}; noise scale {}{} (run locally: no budget debited)",
            a.epsilon,
            a.delta,
            scales.join(" "),
            a.threshold
                .map(|t| format!("; groups released above a noisy {t} people"))
                .unwrap_or_default()
        );
    }
    let csv = out.to_csv()?;
    match &r.out {
        Some(p) => std::fs::write(p, &csv).with_context(|| format!("--out {}", p.display()))?,
        None => std::io::stdout().write_all(&csv).context("stdout")?,
    }
    Ok(ExitCode::SUCCESS)
}

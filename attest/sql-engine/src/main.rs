//! dcr-sql-engine: the SQL engine as a confined guest workload (docs/analysis.md).
//!
//! ```text
//! dcr-sql-engine CONTRACT.json QUERY.json NAME=FILE...
//! ```
//! - CONTRACT.json: the contract as the image carries it (canonical JSON);
//! - QUERY.json: one submitted query (`dcr_protocol::analysis::Query`: analysis, party, SQL
//!   or template parameters);
//! - NAME=FILE: a table's decrypted rows, in the format the contract declares.
//!
//! The query (its submitter and its rule, on the logical plan) is checked before any table is
//! read, and again over the loaded tables, whose plan is the one that runs. Exit 0: the result as CSV on stdout
//! (under a DP rule, first one `#dcr-dp {account}` line: ε and δ spent, noise scales). Exit 3: refused; one line on stdout naming the
//! rule. Any other exit: failure (one line on stderr). The engine never sees a key: guest-init
//! hands it plaintext tables and seals what it prints.

use std::io::Write;
use std::process::ExitCode;

use dcr_protocol::analysis::{Query, TableFormat};
use dcr_protocol::contract::Contract;
use dcr_sql::{Engine, Submission};

/// Exit status of a refused query.
const REFUSED: u8 = 3;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dcr-sql-engine: {e}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<ExitCode, String> {
    // OpenDP's noise must come from the kernel: a build with the test-only seeded stream
    // never answers (attest/kernel-random).
    if openssl::seedable() {
        return Err(
            "built with the test-only seeded random stream (feature test-seed); refusing to run"
                .into(),
        );
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [contract_path, query_path, tables @ ..] = args.as_slice() else {
        return Err("usage: dcr-sql-engine CONTRACT.json QUERY.json NAME=FILE...".into());
    };
    let bytes = std::fs::read(contract_path).map_err(|e| format!("{contract_path}: {e}"))?;
    let contract =
        Contract::from_canonical_json(&bytes).map_err(|e| format!("{contract_path}: {e}"))?;
    let bytes = std::fs::read(query_path).map_err(|e| format!("{query_path}: {e}"))?;
    let query = Query::from_json(&bytes).map_err(|e| format!("{query_path}: {e}"))?;
    let mut engine = Engine::new(&contract).map_err(|e| e.to_string())?;
    let submission = match &query.sql {
        Some(sql) => Submission::Sql(sql.clone()),
        None => Submission::Template(query.parameters.clone()),
    };
    // The submitter and the rule first, over the empty tables: a refused query never has a
    // row read.
    if let Err(refusal) = engine.check(&query.analysis, Some(&query.party), &submission) {
        println!("{refusal}");
        return Ok(ExitCode::from(REFUSED));
    }
    let catalog = contract.catalog();
    for t in tables {
        let (name, file) = t
            .split_once('=')
            .ok_or_else(|| format!("{t:?}: expected NAME=FILE"))?;
        let table = catalog
            .table(name)
            .ok_or_else(|| format!("table {name}: not in the contract"))?;
        let data = std::fs::read(file).map_err(|e| format!("table {name}: {file}: {e}"))?;
        let batches = match table.format {
            TableFormat::Csv => dcr_sql::load::csv(table, data.as_slice()),
            TableFormat::Parquet => dcr_sql::load::parquet(table, bytes::Bytes::from(data)),
        }
        .map_err(|e| format!("table {name}: {e}"))?;
        engine
            .load(name, batches)
            .map_err(|e| format!("table {name}: {e}"))?;
    }
    // Checked again over the loaded tables: the plan that runs is the one checked (a check
    // binds the tables it saw; Engine::run refuses a plan from before a load).
    let checked = match engine.check(&query.analysis, Some(&query.party), &submission) {
        Ok(c) => c,
        Err(refusal) => {
            println!("{refusal}");
            return Ok(ExitCode::from(REFUSED));
        }
    };
    let out = engine.run(&checked).map_err(|e| e.to_string())?;
    let mut csv = Vec::new();
    if let Some(account) = &out.dp {
        // A DP answer states what it spent first (guest-init checks it against the rule).
        csv.extend_from_slice(dcr_protocol::dp::ACCOUNT_LINE.as_bytes());
        csv.extend_from_slice(&serde_json::to_vec(account).map_err(|e| e.to_string())?);
        csv.push(b'\n');
    }
    csv.extend_from_slice(&out.to_csv().map_err(|e| e.to_string())?);
    std::io::stdout()
        .write_all(&csv)
        .map_err(|e| format!("stdout: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

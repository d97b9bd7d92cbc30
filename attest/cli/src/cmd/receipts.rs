//! `dcr-attest receipts`: download a contract's run receipts (a party's token) into a
//! directory: `<run>.receipt.json` (the TEE's signed receipt) and `<run>.evidence.json` (the
//! evidence it posted), for `dcr-attest verify receipt`. Files that exist are left alone.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use dcr_protocol::receipt::{ReceiptList, ReceiptUpload};

use super::common::read_contract;
use super::query_service::{client, token, Service};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    service: Service,
    /// A party's bearer token (a file).
    #[arg(long, value_name = "PATH")]
    token_file: PathBuf,
    /// Where the files go (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let c = read_contract(&a.service.contract)?;
    let digest = hex::encode(c.digest());
    let cl = client(&a.service)?;
    let tok = token(&a.token_file)?;
    let list: ReceiptList = serde_json::from_slice(
        &cl.get_with_token(&format!("/v1/contracts/{digest}/receipts"), &tok)?,
    )
    .context("the service's list of receipts")?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("--out {}", a.out.display()))?;
    for run in &list.runs {
        if run.len() != 64 || !run.bytes().all(|b| b.is_ascii_hexdigit()) {
            anyhow::bail!("the service listed a malformed run {run:?}");
        }
        let body = cl.get_with_token(&format!("/v1/contracts/{digest}/receipts/{run}"), &tok)?;
        let up: ReceiptUpload =
            serde_json::from_slice(&body).with_context(|| format!("receipt of run {run}"))?;
        let named = dcr_protocol::receipt::parse_unverified(&up.receipt)
            .with_context(|| format!("receipt of run {run}"))?;
        if named.run != *run || named.contract_digest != digest {
            anyhow::bail!(
                "the service's receipt of run {run} names run {} of contract {}",
                named.run,
                named.contract_digest
            );
        }
        for (suffix, bytes) in [
            ("receipt", serde_json::to_vec_pretty(&up.receipt)?),
            ("evidence", serde_json::to_vec_pretty(&up.evidence)?),
        ] {
            let p = a.out.join(format!("{run}.{suffix}.json"));
            if p.exists() {
                continue;
            }
            dcr_attest::parties::write_atomically(&p, |w| {
                std::io::Write::write_all(w, &bytes).map_err(|e| {
                    dcr_attest::parties::PartyError::File {
                        path: p.clone(),
                        reason: e.to_string(),
                    }
                })
            })?;
        }
        println!(
            "run {run}: {}/{run}.receipt.json, {run}.evidence.json",
            a.out.display()
        );
    }
    println!("{} receipt(s) for contract {digest}", list.runs.len());
    Ok(ExitCode::SUCCESS)
}

//! `dcr-attest open`: a run's signed result as a recipient, or a sealed stream with its DEK.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::common::read_contract;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long = "in", value_name = "PATH")]
    input: PathBuf,
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "dek",
        required_unless_present = "dek",
        requires = "contract"
    )]
    key: Option<PathBuf>,
    #[arg(long, value_name = "PATH")]
    dek: Option<PathBuf>,
    /// The contract (TOML) of the run: pins the service key and names the output blob.
    #[arg(long, value_name = "PATH")]
    contract: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args {
        input,
        out,
        key,
        dek,
        contract,
    } = a;
    let n = match (key, dek) {
        (Some(k), _) => {
            let path = contract.context("--key needs --contract")?;
            let c = read_contract(&path)?;
            dcr_attest::parties::open_result(&input, &out, &k, &c)?
        }
        (None, Some(d)) => dcr_attest::parties::open_with_dek(&input, &out, &d)?,
        (None, None) => anyhow::bail!("--key or --dek is required"),
    };
    println!("opened {n} bytes to {}", out.display());
    Ok(ExitCode::SUCCESS)
}

//! `dcr-attest contract`: check a contract and print its digest.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long = "in", value_name = "PATH")]
    input: PathBuf,
    #[arg(long, value_name = "PATH")]
    canonical_out: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args {
        input,
        canonical_out,
    } = a;
    let text =
        std::fs::read_to_string(&input).with_context(|| format!("--in {}", input.display()))?;
    let c = dcr_protocol::contract::Contract::from_toml(&text)
        .with_context(|| format!("--in {}", input.display()))?;
    if let Some(o) = canonical_out {
        std::fs::write(&o, c.canonical_json())
            .with_context(|| format!("--canonical-out {}", o.display()))?;
    }
    println!("sha256:{}", hex::encode(c.digest()));
    Ok(ExitCode::SUCCESS)
}

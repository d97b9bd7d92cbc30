//! `dcr-attest get`: download a blob of a contract from the service.

use std::path::PathBuf;
use std::process::ExitCode;

use super::common::{client_for, read_contract};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_name = "URL")]
    service: String,
    /// The contract (TOML) whose blob this is.
    #[arg(long, value_name = "PATH")]
    contract: PathBuf,
    #[arg(long)]
    name: String,
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// The service's public keys (service.pub.json): needed for an https:// service.
    #[arg(long, value_name = "PATH")]
    service_pub: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args {
        service,
        contract,
        name,
        out,
        service_pub,
    } = a;
    let c = read_contract(&contract)?;
    let n = client_for(&service, service_pub.as_deref())?.get_blob(
        &hex::encode(c.digest()),
        &name,
        &out,
    )?;
    println!("fetched blob {name} ({n} bytes) to {}", out.display());
    Ok(ExitCode::SUCCESS)
}

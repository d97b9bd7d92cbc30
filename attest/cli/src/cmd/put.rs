//! `dcr-attest put`: upload a blob of a contract to the service.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use super::common::{client_for, read_contract};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_name = "URL")]
    service: String,
    #[arg(long, value_name = "PATH")]
    token_file: PathBuf,
    /// The contract (TOML) whose blob this is.
    #[arg(long, value_name = "PATH")]
    contract: PathBuf,
    #[arg(long)]
    name: String,
    #[arg(long = "in", value_name = "PATH")]
    input: PathBuf,
    /// The service's public keys (service.pub.json): needed for an https:// service,
    /// whose certificate it pins.
    #[arg(long, value_name = "PATH")]
    service_pub: Option<PathBuf>,
    /// Send the party token over plain HTTP to a host that is not this machine.
    #[arg(long)]
    insecure_http: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args {
        service,
        token_file,
        contract,
        name,
        input,
        service_pub,
        insecure_http,
    } = a;
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("--token-file {}", token_file.display()))?;
    let c = read_contract(&contract)?;
    let mut client = client_for(&service, service_pub.as_deref())?;
    client.insecure_http = insecure_http;
    let n = client.put_blob(
        &format!("Bearer {}", token.trim()),
        &hex::encode(c.digest()),
        &name,
        &input,
    )?;
    println!("stored blob {name} ({n} bytes)");
    Ok(ExitCode::SUCCESS)
}

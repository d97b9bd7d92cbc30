//! `dcr-attest keygen`: a recipient key pair.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
    #[arg(long)]
    name: String,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args { out_dir, name } = a;
    let pk = dcr_attest::parties::keygen(&out_dir, &name)?;
    println!("{}", pk.to_text());
    Ok(ExitCode::SUCCESS)
}

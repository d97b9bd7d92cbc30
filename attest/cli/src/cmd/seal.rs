//! `dcr-attest seal`: seal a file under a fresh DEK.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long = "in", value_name = "PATH")]
    input: PathBuf,
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
    /// Key id recorded in the header (the contract's datasets[].key_id).
    #[arg(long)]
    key_id: String,
    #[arg(long, value_name = "PATH")]
    dek_out: PathBuf,
    #[arg(long, default_value_t = dcr_protocol::seal::DEFAULT_CHUNK_SIZE)]
    chunk_size: u32,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args {
        input,
        out,
        key_id,
        dek_out,
        chunk_size,
    } = a;
    let n = dcr_attest::parties::seal_file(&input, &out, &key_id, &dek_out, chunk_size)?;
    println!(
        "sealed {n} bytes under key {key_id} to {} (sha256 {})",
        out.display(),
        dcr_attest::parties::file_sha256(&out)?
    );
    Ok(ExitCode::SUCCESS)
}

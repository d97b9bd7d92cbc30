//! `dcr-attest make-credential`: TPM2_MakeCredential without a TPM.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::common::{hex_bytes, read};

#[derive(clap::Args)]
pub struct Args {
    /// The EK public (TPM2B_PUBLIC, tpm2_createek -u).
    #[arg(short = 'e', long, value_name = "PATH")]
    ek_public: PathBuf,
    /// The AK name (tpm2_createak -n file, or hex).
    #[arg(short = 'n', long, value_name = "PATH|HEX")]
    ak_name: String,
    /// The secret (1-64 bytes).
    #[arg(short = 's', long, value_name = "PATH")]
    secret: PathBuf,
    /// Where to write the credential (tpm2-tools format); refuses to overwrite.
    #[arg(short = 'o', long, value_name = "PATH")]
    out: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args {
        ek_public,
        ak_name,
        secret,
        out,
    } = a;
    use dcr_verify::credential;
    let ek = credential::parse_ek_public(&read("--ek-public", &ek_public)?)
        .with_context(|| ek_public.display().to_string())?;
    let name = match hex_bytes(&ak_name) {
        Some(b) => b,
        None => read("--ak-name", Path::new(&ak_name))?,
    };
    let secret = read("--secret", &secret)?;
    let mut seed = [0u8; 32];
    rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut seed)
        .map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    let cred = credential::make_credential(&ek, &name, &secret, &seed, &mut rand_core::OsRng)?;
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&out)
        .with_context(|| format!("--out {} (refusing to overwrite)", out.display()))?;
    f.write_all(&cred)
        .with_context(|| format!("--out {}", out.display()))?;
    println!("credential: {} bytes to {}", cred.len(), out.display());
    Ok(ExitCode::SUCCESS)
}

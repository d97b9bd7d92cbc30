//! `dcr-attest verify ek`: an EK certificate chain to a trusted root, certifying the EK.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use dcr_verify::snp;

use super::{der_or_pem, report, verification_time};
use crate::cmd::common::read;

#[derive(clap::Args)]
pub struct Args {
    /// The EK certificate (DER or PEM).
    #[arg(long, value_name = "PATH")]
    cert: PathBuf,
    /// Intermediate CA certificates, issuer first (PEM).
    #[arg(long, value_name = "PATH")]
    chain: Option<PathBuf>,
    /// Trusted root certificates (PEM; the TPM manufacturer's, or swtpm-localca's in tests).
    #[arg(long, value_name = "PATH")]
    trusted: PathBuf,
    /// The EK public (TPM2B_PUBLIC, tpm2_createek -u).
    #[arg(short = 'e', long, value_name = "PATH")]
    ek_public: PathBuf,
    /// Verification time (RFC 3339, UTC) [default: now].
    #[arg(long, value_name = "RFC3339")]
    at: Option<String>,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args {
        cert,
        chain,
        trusted,
        ek_public,
        at,
        json,
    } = a;
    let pem_list = |flag: &str, p: &Path| -> anyhow::Result<Vec<Vec<u8>>> {
        snp::pem_certs(&read(flag, p)?).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", p.display()))
    };
    let cert_der = der_or_pem(read("--cert", &cert)?)?;
    let intermediates = match &chain {
        Some(p) => pem_list("--chain", p)?,
        None => Vec::new(),
    };
    let roots = pem_list("--trusted", &trusted)?;
    let ek = dcr_verify::credential::parse_ek_public(&read("--ek-public", &ek_public)?)
        .with_context(|| ek_public.display().to_string())?;
    let now = verification_time(&at)?;
    let verdict =
        dcr_verify::credential::verify_ek_cert(&cert_der, &intermediates, &roots, &ek, now);
    report(&verdict, json)
}

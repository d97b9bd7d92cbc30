//! `dcr-attest verify tdx`: a TDX quote with its collateral.

use std::path::PathBuf;
use std::process::ExitCode;

use dcr_verify::reference;

use super::{expected_err, read_expected, report, verification_time};
use crate::cmd::common::read;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_name = "PATH")]
    quote: PathBuf,
    #[arg(long, value_name = "PATH")]
    collateral: PathBuf,
    /// Verification time (RFC 3339, UTC) [default: now].
    #[arg(long, value_name = "RFC3339")]
    at: Option<String>,
    /// Accept this TCB status too (repeatable); UpToDate is always accepted.
    #[arg(long, value_name = "STATUS")]
    allow_status: Vec<String>,
    #[arg(long)]
    allow_debug: bool,
    /// Also require MRTD to equal the tdx mrtd of this measurements.json.
    #[arg(long, value_name = "PATH")]
    expected: Option<PathBuf>,
    /// Print the verdict as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args {
        quote,
        collateral,
        at,
        allow_status,
        allow_debug,
        expected,
        json,
    } = a;
    let q = read("--quote", &quote)?;
    let c = read("--collateral", &collateral)?;
    let now = verification_time(&at)?;
    let mut policy = dcr_verify::tdx::TdxPolicy {
        allow_debug,
        ..Default::default()
    };
    policy.allowed_status.extend(allow_status);
    if let Some(p) = &expected {
        policy
            .mrtd
            .push(reference::tdx_mrtd(&read_expected(p)?).map_err(expected_err(p))?);
        policy.match_image = true;
    }
    report(&dcr_verify::tdx::verify(&q, &c, now, &policy), json)
}

//! `dcr-attest verify tdx`: a TDX quote with its collateral.

use std::path::PathBuf;
use std::process::ExitCode;

use dcr_verify::reference;

use super::{expected_err, read_expected, report, Dcap};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    dcap: Dcap,
    /// Also require MRTD to equal the tdx mrtd of this measurements.json.
    #[arg(long, value_name = "PATH")]
    expected: Option<PathBuf>,
    /// Print the verdict as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let (q, c, now) = a.dcap.read()?;
    let mut policy = dcr_verify::tdx::TdxPolicy {
        allow_debug: a.dcap.allow_debug,
        ..Default::default()
    };
    policy.allowed_status.extend(a.dcap.allow_status);
    if let Some(p) = &a.expected {
        policy
            .mrtd
            .push(reference::tdx_mrtd(&read_expected(p)?).map_err(expected_err(p))?);
        policy.match_image = true;
    }
    report(&dcr_verify::tdx::verify(&q, &c, now, &policy), a.json)
}

//! `dcr-attest verify azure`: Azure CVM evidence (az-snp-vtpm or az-tdx-vtpm).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use dcr_verify::reference::PcrSection;
use dcr_verify::snp;

use super::{der_or_pem, expected_pcrs_of, report, verification_time};
use crate::cmd::common::{hex_bytes, read};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_name = "PATH")]
    evidence: PathBuf,
    /// The nonce the vTPM quote must carry (hex, or a file with the raw bytes).
    #[arg(short = 'q', long, value_name = "HEX|PATH")]
    qualification: String,
    /// A VCEK to use instead of the one in the evidence (DER or PEM).
    #[arg(long, value_name = "PATH")]
    vcek: Option<PathBuf>,
    /// az-tdx-vtpm evidence: dcap-qvl collateral for its TD quote.
    #[arg(long, value_name = "PATH")]
    collateral: Option<PathBuf>,
    /// Verification time (RFC 3339, UTC) [default: now].
    #[arg(long, value_name = "RFC3339")]
    at: Option<String>,
    /// Also require the Azure PCRs predicted in this measurements.json (azure.pcrs).
    #[arg(long, value_name = "PATH")]
    expected: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args {
        evidence,
        qualification,
        vcek,
        collateral,
        at,
        expected,
        json,
    } = a;
    let bytes = read("--evidence", &evidence)?;
    let is_tdx = serde_json::from_slice::<serde_json::Value>(&bytes)
        .map(|v| v.get("td_quote").is_some())
        .unwrap_or(false);
    if is_tdx {
        let ev = dcr_verify::azure::parse_tdx_evidence(&bytes)
            .with_context(|| evidence.display().to_string())?;
        let nonce = match hex_bytes(&qualification) {
            Some(b) => b,
            None => read("--qualification", Path::new(&qualification))?,
        };
        let coll = match &collateral {
            Some(p) => Some(read("--collateral", p)?),
            None => None,
        };
        let want = match &expected {
            Some(p) => expected_pcrs_of(p, PcrSection::Azure)?,
            None => Vec::new(),
        };
        let verdict = dcr_verify::azure::verify_tdx(
            &ev,
            &nonce,
            verification_time(&at)?,
            coll.as_deref(),
            &dcr_verify::tdx::TdxPolicy::default(),
            &want,
        );
        return report(&verdict, json);
    }
    let mut ev = dcr_verify::azure::parse_snp_evidence(&bytes)
        .with_context(|| evidence.display().to_string())?;
    if let Some(p) = &vcek {
        ev.vcek_der = der_or_pem(read("--vcek", p)?)?;
    }
    let nonce = match hex_bytes(&qualification) {
        Some(b) => b,
        None => read("--qualification", Path::new(&qualification))?,
    };
    let now = verification_time(&at)?;
    let want = match &expected {
        Some(p) => expected_pcrs_of(p, PcrSection::Azure)?,
        None => Vec::new(),
    };
    let verdict =
        dcr_verify::azure::verify_snp(&ev, &nonce, now, &snp::SnpPolicy::default(), &want);
    report(&verdict, json)
}

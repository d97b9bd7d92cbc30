//! `dcr-attest verify`: check evidence offline, one module per kind of evidence, and the
//! helpers they share (verification time, `--expected` reference values, printing a verdict).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use dcr_protocol::measurements::Measurements;
use dcr_verify::reference::{self, PcrSection};
use dcr_verify::verdict::Verdict;

use super::common::read;

mod azure;
mod ek;
mod nitro;
mod receipt;
mod sgx;
mod snp;
mod tdx;
mod tpm;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: Verify,
}

#[derive(Subcommand)]
enum Verify {
    /// An SEV-SNP attestation report with its VCEK or VLEK.
    Snp(snp::Args),
    /// An Intel TDX quote (v4/v5) with its collateral bundle (dcap-qvl JSON).
    Tdx(tdx::Args),
    /// An Intel SGX enclave quote (DCAP) with its collateral bundle (dcap-qvl JSON).
    Sgx(sgx::Args),
    /// An AWS Nitro Enclaves attestation document (NSM COSE_Sign1) and its chain to AWS's
    /// root, at the document's own time unless --at.
    Nitro(nitro::Args),
    /// A TPM 2.0 quote from tpm2_quote's files (tpm2_checkquote's flags).
    Tpm(tpm::Args),
    /// Azure CVM evidence (Trustee az-snp-vtpm or az-tdx-vtpm JSON): HCL report, VCEK or TD
    /// quote, vTPM quote.
    Azure(azure::Args),
    /// An EK certificate chain (tpm2_nvread 0x1c00002) to a trusted root, certifying the EK.
    Ek(ek::Args),
    /// A run's signed receipt with the evidence the TEE posted, against the build's
    /// measurements.json and the service's pinned key.
    Receipt(receipt::Args),
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    match a.what {
        Verify::Snp(a) => snp::run(a),
        Verify::Tdx(a) => tdx::run(a),
        Verify::Sgx(a) => sgx::run(a),
        Verify::Nitro(a) => nitro::run(a),
        Verify::Tpm(a) => tpm::run(a),
        Verify::Azure(a) => azure::run(a),
        Verify::Ek(a) => ek::run(a),
        Verify::Receipt(a) => receipt::run(a),
    }
}

/// What `verify tdx` and `verify sgx` share: a DCAP quote, its collateral, the time and what
/// is allowed besides a clean, up-to-date quote.
#[derive(clap::Args)]
struct Dcap {
    #[arg(long, value_name = "PATH")]
    quote: std::path::PathBuf,
    #[arg(long, value_name = "PATH")]
    collateral: std::path::PathBuf,
    /// Verification time (RFC 3339, UTC) [default: now].
    #[arg(long, value_name = "RFC3339")]
    at: Option<String>,
    /// Accept this TCB status too (repeatable); UpToDate is always accepted.
    #[arg(long, value_name = "STATUS")]
    allow_status: Vec<String>,
    #[arg(long)]
    allow_debug: bool,
}

impl Dcap {
    /// The quote's and the collateral's bytes, and the verification time.
    fn read(&self) -> anyhow::Result<(Vec<u8>, Vec<u8>, u64)> {
        Ok((
            read("--quote", &self.quote)?,
            read("--collateral", &self.collateral)?,
            verification_time(&self.at)?,
        ))
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (or with a `+00:00` offset) → Unix seconds.
fn parse_rfc3339(s: &str) -> anyhow::Result<u64> {
    dcr_protocol::time::parse_rfc3339(s).ok_or_else(|| {
        anyhow::anyhow!("--at {s:?}: expected RFC 3339 UTC like 2026-01-01T00:00:00Z")
    })
}

/// A certificate given as DER, or the first of a PEM file.
fn der_or_pem(bytes: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    if bytes.starts_with(b"-----BEGIN") {
        let mut certs = dcr_verify::snp::pem_certs(&bytes).map_err(|e| anyhow::anyhow!(e))?;
        return Ok(certs.remove(0));
    }
    Ok(bytes)
}

/// Print a verdict (lines or JSON) and map it to the exit code.
fn report(verdict: &Verdict, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        let v = serde_json::json!({"ok": verdict.ok(), "checks": verdict.checks});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for c in &verdict.checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            println!("{mark} {}: {}", c.name, c.detail);
        }
        let last = if verdict.ok() {
            "verdict: accepted"
        } else {
            "verdict: refused"
        };
        println!("{last}");
    }
    Ok(if verdict.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Unix seconds of `--at`, or now.
fn verification_time(at: &Option<String>) -> anyhow::Result<u64> {
    Ok(match at {
        Some(s) => parse_rfc3339(s)?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    })
}

/// The reference values of `--expected`.
fn read_expected(path: &Path) -> anyhow::Result<Measurements> {
    let bytes = read("--expected", path)?;
    Measurements::from_json(&bytes).with_context(|| path.display().to_string())
}

/// The error for reference values `--expected` lacks.
fn expected_err(path: &Path) -> impl Fn(reference::Missing) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("--expected {}: {e}", path.display())
}

/// `tpm.pcrs` (or `azure.pcrs`) of a measurements.json, sorted by index.
fn expected_pcrs_of(p: &Path, section: PcrSection) -> anyhow::Result<Vec<(u32, Vec<u8>)>> {
    reference::pcrs(&read_expected(p)?, section).map_err(expected_err(p))
}

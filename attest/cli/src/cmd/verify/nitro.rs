//! `dcr-attest verify nitro`: an AWS Nitro Enclaves attestation document (COSE_Sign1 from the
//! NSM), its certificate chain to the pinned AWS root at the document's own time (or `--at`),
//! and optionally its PCRs against a build's `nitro.pcrs` and the expected binding.

use std::path::PathBuf;
use std::process::ExitCode;

use dcr_verify::nitro;
use dcr_verify::reference::{self, Claims};
use sha2::Digest;

use super::{expected_err, parse_rfc3339, read_expected, report};
use crate::cmd::common::{hex_bytes, read};

#[derive(clap::Args)]
pub struct Args {
    /// The attestation document: raw CBOR as the NSM returns it (tagged or untagged).
    #[arg(long, value_name = "PATH")]
    doc: PathBuf,
    /// Check every certificate at this time (RFC 3339, UTC) [default: the document's own
    /// timestamp, as an audit of a past run].
    #[arg(long, value_name = "RFC3339")]
    at: Option<String>,
    /// Also require the document's PCRs to equal `nitro.pcrs` of this measurements.json.
    #[arg(long, value_name = "PATH")]
    expected: Option<PathBuf>,
    /// Pin this root certificate (DER) instead of the AWS Nitro Enclaves Root G1.
    #[arg(long, value_name = "PATH")]
    root: Option<PathBuf>,
    /// Require this nonce (hex).
    #[arg(long, value_name = "HEX")]
    nonce: Option<String>,
    /// Require this user_data (hex).
    #[arg(long, value_name = "HEX")]
    user_data: Option<String>,
    /// Require this public_key (hex).
    #[arg(long, value_name = "HEX")]
    public_key: Option<String>,
    /// Accept a debug-mode enclave (PCR 0-2 zero: the parent can read its memory).
    #[arg(long)]
    allow_debug: bool,
    /// Print the verdict as JSON.
    #[arg(long)]
    json: bool,
}

fn hex_opt(flag: &str, v: &Option<String>) -> anyhow::Result<Option<Vec<u8>>> {
    v.as_deref()
        .map(|s| hex_bytes(s).ok_or_else(|| anyhow::anyhow!("{flag} {s:?}: not hex")))
        .transpose()
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let bytes = read("--doc", &a.doc)?;
    let mut policy = nitro::NitroPolicy {
        allow_debug: a.allow_debug,
        nonce: hex_opt("--nonce", &a.nonce)?,
        user_data: hex_opt("--user-data", &a.user_data)?,
        public_key: hex_opt("--public-key", &a.public_key)?,
        ..Default::default()
    };
    if let Some(p) = &a.root {
        policy.root_sha256 = Some(sha2::Sha256::digest(read("--root", p)?).into());
    }
    let expected = a.expected.as_deref().map(read_expected).transpose()?;
    if let (Some(m), Some(p)) = (&expected, &a.expected) {
        for (i, v) in reference::nitro_pcrs(m).map_err(expected_err(p))? {
            policy.pcrs.insert(i as u8, v);
        }
    }
    // The audit time: --at, or the document's own timestamp (its chain lives ~3 hours).
    let at = match &a.at {
        Some(s) => parse_rfc3339(s)?,
        None => match nitro::parse(&bytes) {
            Ok(d) => nitro::document_time(&d.doc),
            Err(e) => anyhow::bail!("--doc {}: {e}", a.doc.display()),
        },
    };
    let (mut verdict, doc) = nitro::verify(&bytes, at, &policy);
    if let (Some(m), Some(d)) = (&expected, &doc) {
        let claims = Claims::Nitro {
            pcrs: d
                .pcrs
                .iter()
                .map(|(i, v)| (u32::from(*i), v.clone()))
                .collect(),
        };
        verdict
            .checks
            .extend(reference::evaluate(m, &claims).checks);
    }
    if let (Some(d), false) = (&doc, a.json) {
        eprintln!(
            "document module_id={} timestamp={} (verified at {at}) debug={}",
            d.module_id,
            dcr_protocol::time::format_rfc3339(d.timestamp_ms / 1000),
            d.debug()
        );
        for (i, v) in d.pcrs.iter().filter(|(_, v)| v.iter().any(|b| *b != 0)) {
            eprintln!("pcr{i}={}", hex::encode(v));
        }
    }
    report(&verdict, a.json)
}

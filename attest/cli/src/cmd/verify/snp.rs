//! `dcr-attest verify snp`: an SEV-SNP report with its VCEK/VLEK (or one from the VCEK cache).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use dcr_verify::reference;
use dcr_verify::snp;

use super::{der_or_pem, expected_err, read_expected, report, verification_time};
use crate::cmd::common::read;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_name = "PATH")]
    report: PathBuf,
    /// The VCEK/VLEK certificate (DER or PEM). Without it, the VCEK comes from --vcek-cache.
    #[arg(long, value_name = "PATH")]
    vcek: Option<PathBuf>,
    /// VCEK cache directory, keyed by (CHIP_ID, REPORTED_TCB): looked up when --vcek is
    /// absent; a --vcek whose chain, TCB and hwID checks pass is stored in it.
    #[arg(long, value_name = "DIR")]
    vcek_cache: Option<PathBuf>,
    /// ASK/ASVK then ARK (PEM); a supplied ARK/ASK must be AMD's pinned one.
    #[arg(long, value_name = "PATH")]
    chain: Option<PathBuf>,
    /// Verification time (RFC 3339, UTC), e.g. 2026-01-01T00:00:00Z [default: now].
    #[arg(long, value_name = "RFC3339")]
    at: Option<String>,
    /// Also require MEASUREMENT to equal the snp launch digest of this measurements.json.
    #[arg(long, value_name = "PATH")]
    expected: Option<PathBuf>,
    #[arg(long)]
    allow_debug: bool,
    #[arg(long)]
    allow_migration_agent: bool,
    /// Required VMPL, or "any".
    #[arg(long, default_value = "0")]
    vmpl: String,
    /// Print the verdict as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Args {
        report: report_path,
        vcek,
        vcek_cache,
        chain,
        at,
        expected,
        allow_debug,
        allow_migration_agent,
        vmpl,
        json,
    } = a;
    let report_bytes = read("--report", &report_path)?;
    let parsed = snp::Report::parse(&report_bytes).ok();
    let vek = match (&vcek, &vcek_cache, &parsed) {
        (Some(p), _, _) => der_or_pem(read("--vcek", p)?)?,
        (None, Some(dir), Some(r)) => {
            let path = dir.join(snp::vcek_cache_name(r));
            std::fs::read(&path).map_err(|_| {
                anyhow::anyhow!(
                    "--vcek-cache {}: no VCEK for this chip and TCB ({}); fetch it from {} and pass it with --vcek",
                    dir.display(),
                    path.display(),
                    snp::kds_vcek_url(r)
                )
            })?
        }
        (None, Some(_), None) | (None, None, _) => {
            anyhow::bail!("give --vcek, or --vcek-cache with a decodable --report")
        }
    };
    let chain = match &chain {
        Some(p) => Some(
            snp::pem_certs(&read("--chain", p)?)
                .map_err(|e| anyhow::anyhow!("--chain {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let now = verification_time(&at)?;
    let vmpl = if vmpl == "any" {
        None
    } else {
        Some(
            vmpl.parse()
                .map_err(|_| anyhow::anyhow!("--vmpl {vmpl:?}: a number 0-3 or \"any\""))?,
        )
    };
    let mut policy = snp::SnpPolicy {
        allow_debug,
        allow_migration_agent,
        vmpl,
        ..Default::default()
    };
    if let Some(p) = &expected {
        policy
            .measurements
            .push(reference::snp_launch_digest(&read_expected(p)?).map_err(expected_err(p))?);
    }
    let verdict = snp::verify(&report_bytes, &vek, chain.as_deref(), now, &policy);
    if let (Some(dir), Some(_), Some(r)) = (&vcek_cache, &vcek, &parsed) {
        let genuine = verdict.checks.iter().all(|c| {
            c.ok || !(c.name == "chain"
                || c.name.starts_with("vek.")
                || c.name == "report.signature")
        });
        if genuine {
            std::fs::create_dir_all(dir)
                .and_then(|_| {
                    let tmp = dir.join(format!(".{}.tmp", snp::vcek_cache_name(r)));
                    std::fs::write(&tmp, &vek)?;
                    std::fs::rename(&tmp, dir.join(snp::vcek_cache_name(r)))
                })
                .with_context(|| format!("--vcek-cache {}", dir.display()))?;
        }
    }
    report(&verdict, json)
}

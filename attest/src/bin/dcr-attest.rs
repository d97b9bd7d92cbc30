//! dcr-attest: verify confidential-VM evidence offline. Exit 0 only when every check passes.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dcr_attest::reference::Measurements;
use dcr_attest::snp;

#[derive(Parser)]
#[command(name = "dcr-attest", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Verify evidence.
    Verify {
        #[command(subcommand)]
        what: Verify,
    },
}

#[derive(Subcommand)]
enum Verify {
    /// An SEV-SNP attestation report with its VCEK or VLEK.
    Snp {
        #[arg(long, value_name = "PATH")]
        report: PathBuf,
        /// The VCEK/VLEK certificate (DER or PEM).
        #[arg(long, value_name = "PATH")]
        vcek: PathBuf,
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
    },
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// `YYYY-MM-DDTHH:MM:SSZ` (or with a `+00:00` offset) → Unix seconds.
fn parse_rfc3339(s: &str) -> anyhow::Result<u64> {
    let err = || anyhow::anyhow!("--at {s:?}: expected RFC 3339 UTC like 2026-01-01T00:00:00Z");
    let t = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix("+00:00"))
        .ok_or_else(err)?;
    let (date, time) = t.split_once(['T', 't']).ok_or_else(err)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().map_err(|_| err()))
        .collect::<Result<_, _>>()?;
    let time = time.split('.').next().unwrap_or(time);
    let h: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().map_err(|_| err()))
        .collect::<Result<_, _>>()?;
    if d.len() != 3
        || h.len() != 3
        || !(1..=12).contains(&d[1])
        || !(1..=31).contains(&d[2])
        || h[0] > 23
        || h[1] > 59
        || h[2] > 60
    {
        return Err(err());
    }
    let secs = days_from_civil(d[0], d[1], d[2]) * 86400 + h[0] * 3600 + h[1] * 60 + h[2];
    u64::try_from(secs).map_err(|_| err())
}

fn der_or_pem(bytes: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    if bytes.starts_with(b"-----BEGIN") {
        let mut certs = snp::pem_certs(&bytes).map_err(|e| anyhow::anyhow!(e))?;
        return Ok(certs.remove(0));
    }
    Ok(bytes)
}

fn main() -> ExitCode {
    match real_main() {
        Ok(c) => c,
        Err(e) => {
            let mut msg = e.to_string();
            for c in e.chain().skip(1) {
                let s = c.to_string();
                if !msg.contains(&s) {
                    msg.push_str(": ");
                    msg.push_str(&s);
                }
            }
            eprintln!("error: {}", msg.replace('\n', " "));
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return Ok(ExitCode::SUCCESS);
            }
            let text = e.render().to_string();
            eprintln!(
                "{}",
                text.lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("error: bad usage")
            );
            return Ok(ExitCode::from(2));
        }
    };
    match cli.command {
        Cmd::Verify { what } => {
            match what {
                Verify::Snp {
                    report,
                    vcek,
                    chain,
                    at,
                    expected,
                    allow_debug,
                    allow_migration_agent,
                    vmpl,
                    json,
                } => {
                    let report_bytes = std::fs::read(&report)
                        .with_context(|| format!("--report {}", report.display()))?;
                    let vek = der_or_pem(
                        std::fs::read(&vcek)
                            .with_context(|| format!("--vcek {}", vcek.display()))?,
                    )?;
                    let chain = match &chain {
                        Some(p) => Some(
                            snp::pem_certs(
                                &std::fs::read(p)
                                    .with_context(|| format!("--chain {}", p.display()))?,
                            )
                            .map_err(|e| anyhow::anyhow!("--chain {}: {e}", p.display()))?,
                        ),
                        None => None,
                    };
                    let now = match &at {
                        Some(s) => parse_rfc3339(s)?,
                        None => std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0),
                    };
                    let mut policy = snp::SnpPolicy {
                        allow_debug,
                        allow_migration_agent,
                        vmpl: if vmpl == "any" {
                            None
                        } else {
                            Some(vmpl.parse().map_err(|_| {
                                anyhow::anyhow!("--vmpl {vmpl:?}: a number 0-3 or \"any\"")
                            })?)
                        },
                        ..Default::default()
                    };
                    if let Some(p) = &expected {
                        let m = Measurements::from_json(
                            &std::fs::read(p)
                                .with_context(|| format!("--expected {}", p.display()))?,
                        )
                        .with_context(|| p.display().to_string())?;
                        let ld = m.measurements.get("snp").and_then(|s| s["launch_digest"].as_str()).ok_or_else(|| {
                        anyhow::anyhow!("--expected {}: no snp launch_digest (recipe platforms lack snp)", p.display())
                    })?;
                        let mut d = [0u8; 48];
                        if ld.len() != 96 {
                            anyhow::bail!(
                                "--expected {}: snp.launch_digest is not 48 bytes of hex",
                                p.display()
                            );
                        }
                        for (i, b) in d.iter_mut().enumerate() {
                            *b = u8::from_str_radix(&ld[2 * i..2 * i + 2], 16).map_err(|_| {
                                anyhow::anyhow!(
                                    "--expected {}: snp.launch_digest is not hex",
                                    p.display()
                                )
                            })?;
                        }
                        policy.measurements.push(d);
                    }
                    let verdict = snp::verify(&report_bytes, &vek, chain.as_deref(), now, &policy);
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(
                                &serde_json::json!({"ok": verdict.ok(), "checks": verdict.checks})
                            )?
                        );
                    } else {
                        for c in &verdict.checks {
                            println!(
                                "{} {}: {}",
                                if c.ok { "ok  " } else { "FAIL" },
                                c.name,
                                c.detail
                            );
                        }
                        println!(
                            "{}",
                            if verdict.ok() {
                                "verdict: accepted"
                            } else {
                                "verdict: refused"
                            }
                        );
                    }
                    Ok(if verdict.ok() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    })
                }
            }
        }
    }
}

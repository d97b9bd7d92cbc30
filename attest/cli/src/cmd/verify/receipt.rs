//! `dcr-attest verify receipt`: a run's signed receipt, offline (docs/protocol.md, "Run
//! receipts"): the service's signed release (the pinned service key), the receipt's signature
//! by the result key that release names, every DP debit (the service's, for this query and
//! run), the evidence the TEE posted (its digest is the release's; verified by the same
//! platform verifiers as the service, against the binding of the receipt's nonce, the TEE's
//! keys and the contract digest) and the evidence's claims against `measurements.json` (the
//! build of this contract).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use dcr_protocol::keys::{HpkePublic, SigningPublic};
use dcr_protocol::measurements::Measurements;
use dcr_protocol::receipt::{check, check_evidence, QueryOutcome, Receipt};
use dcr_protocol::release::{report_data, Signed};
use dcr_protocol::wire::{AttestRequest, ServiceInfo, Tee};
use dcr_verify::verdict::{Check, Verdict};

use super::{parse_rfc3339, report};
use crate::cmd::common::read;

#[derive(clap::Args)]
pub struct Args {
    /// The signed receipt (`dcr-attest receipts` writes <run>.receipt.json).
    #[arg(long, value_name = "PATH")]
    receipt: PathBuf,
    /// The evidence the TEE posted (<run>.evidence.json).
    #[arg(long, value_name = "PATH")]
    evidence: PathBuf,
    /// measurements.json of the image build that ran (its contract digest must be the
    /// receipt's).
    #[arg(long, value_name = "PATH")]
    measurements: PathBuf,
    /// The service's public keys (service.pub.json; the signing key the contract pins).
    #[arg(long, value_name = "PATH")]
    service_pub: PathBuf,
    /// DCAP collateral (dcap-qvl JSON), for TDX or SGX evidence.
    #[arg(long, value_name = "PATH", alias = "sgx-collateral")]
    tdx_collateral: Option<PathBuf>,
    /// Verify certificates at this time (RFC 3339) instead of the release's issue time.
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    #[arg(long)]
    json: bool,
}

fn push(v: &mut Verdict, name: &str, ok: bool, detail: impl Into<String>) -> bool {
    v.checks.push(Check {
        name: name.into(),
        ok,
        detail: detail.into(),
    });
    ok
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let signed: Signed = serde_json::from_slice(&read("--receipt", &a.receipt)?)
        .with_context(|| format!("--receipt {}", a.receipt.display()))?;
    let evidence: AttestRequest = serde_json::from_slice(&read("--evidence", &a.evidence)?)
        .with_context(|| format!("--evidence {}", a.evidence.display()))?;
    let m = Measurements::from_json(&read("--measurements", &a.measurements)?)
        .with_context(|| format!("--measurements {}", a.measurements.display()))?;
    let info: ServiceInfo = serde_json::from_slice(&read("--service-pub", &a.service_pub)?)
        .with_context(|| format!("--service-pub {}", a.service_pub.display()))?;
    let service_key = SigningPublic::from_text(&info.signing_key).map_err(|e| {
        anyhow::anyhow!(
            "--service-pub {}: signing_key: {e}",
            a.service_pub.display()
        )
    })?;
    let collateral = match &a.tdx_collateral {
        Some(p) => Some(read("--tdx-collateral", p)?),
        None => None,
    };
    let at = a.at.as_deref().map(parse_rfc3339).transpose()?;

    let mut v = Verdict::default();
    let (r, rel) = match check(&signed, &service_key) {
        Ok(x) => x,
        Err(e) => {
            push(&mut v, "receipt", false, e.to_string());
            return report(&v, a.json);
        }
    };
    push(
        &mut v,
        "receipt",
        true,
        format!(
            "signed by the TEE's result key {} named in the release the service ({}, the key the contract pins) signed; contract, session, evidence and release digests agree",
            rel.result_key, info.signing_key
        ),
    );
    let debits = r.queries.iter().filter(|q| q.debit.is_some()).count();
    push(
        &mut v,
        "debits",
        true,
        format!("{debits} signed by the service for this contract, query, submitter, ε and run"),
    );
    let contract_ok = m.contract_digest.to_string() == r.contract_digest;
    push(
        &mut v,
        "contract",
        contract_ok,
        format!(
            "receipt {} vs measurements.json {}",
            r.contract_digest, m.contract_digest
        ),
    );
    if let Err(e) = check_evidence(&r, &rel, &evidence) {
        push(&mut v, "evidence", false, e.to_string());
        return report(&v, a.json);
    }
    let rd = match binding(&r, &evidence) {
        Ok(rd) => rd,
        Err(e) => {
            push(&mut v, "evidence", false, e);
            return report(&v, a.json);
        }
    };
    let now = at.unwrap_or(rel.issued_at);
    match dcr_service::verify_run_evidence(
        r.platform,
        &evidence.evidence,
        &rd,
        now,
        collateral.as_deref(),
    ) {
        Ok(claims) => {
            let how = match r.platform {
                Tee::Tpm => "TPM quote by the evidence's AK (vouched for by the service's signed release: its EK credential activation is online only)",
                Tee::Snp => "SEV-SNP report signed by the VCEK/VLEK, chained to AMD's root",
                Tee::Tdx => "TDX quote with the collateral",
                Tee::AzSnpVtpm | Tee::AzTdxVtpm => "Azure HCL report and vTPM quote",
                Tee::Nitro => "Nitro attestation document signed under AWS's root",
                Tee::Sgx => "SGX quote with the collateral",
            };
            push(
                &mut v,
                "evidence",
                true,
                format!(
                    "{how}; binds the receipt's nonce, the TEE's keys and the contract digest (at {})",
                    dcr_protocol::time::format_rfc3339(now)
                ),
            );
            let reference = dcr_verify::reference::evaluate(&m, &claims);
            if reference.checks.is_empty() {
                push(
                    &mut v,
                    "reference",
                    false,
                    "measurements.json has no reference values for this platform",
                );
            }
            v.checks.extend(reference.checks);
        }
        Err((code, msg)) => {
            push(&mut v, "evidence", false, format!("{code}: {msg}"));
        }
    }
    if !a.json {
        describe(&r);
    }
    report(&v, a.json)
}

/// The evidence binding of this receipt: its nonce, the TEE's keys, the contract digest.
fn binding(r: &Receipt, e: &AttestRequest) -> Result<[u8; 64], String> {
    let nonce = hex::decode(&r.nonce).map_err(|_| "receipt nonce: not hex".to_string())?;
    let hpke = HpkePublic::from_text(&e.hpke_public_key)
        .map_err(|e| format!("evidence hpke_public_key: {e}"))?;
    let key =
        SigningPublic::from_text(&e.result_key).map_err(|e| format!("evidence result_key: {e}"))?;
    let digest: [u8; 32] = hex::decode(&r.contract_digest)
        .ok()
        .and_then(|d| d.try_into().ok())
        .ok_or("receipt contract_digest: not 64 hex digits")?;
    Ok(report_data(&nonce, &hpke, &digest, &key))
}

/// What the run did, for people (stderr; stdout has the checks).
fn describe(r: &Receipt) {
    let t = dcr_protocol::time::format_rfc3339;
    eprintln!(
        "run {} on {} for contract {}: {} .. {} (guest clock)",
        r.run,
        r.platform.as_str(),
        r.contract_digest,
        t(r.started_at),
        t(r.finished_at)
    );
    for i in &r.inputs {
        eprintln!(
            "input {} key={} sealed={} bytes sha256={}",
            clean(&i.dataset),
            clean(&i.key_id),
            i.sealed_bytes,
            i.sealed_sha256
        );
    }
    for q in &r.queries {
        let outcome = match q.outcome {
            QueryOutcome::Ok => "ok".to_string(),
            QueryOutcome::Dp => format!(
                "dp epsilon={}",
                q.epsilon.map(|e| e.to_string()).unwrap_or_default()
            ),
            QueryOutcome::Refused => format!(
                "refused ({}){}",
                q.refusal.as_deref().unwrap_or(""),
                q.epsilon
                    .map(|e| format!(" epsilon={e}"))
                    .unwrap_or_default()
            ),
        };
        eprintln!(
            "query {} analysis={} submitter={} sql_sha256={} outcome={} result_sha256={}",
            clean(&q.id),
            clean(&q.analysis),
            clean(&q.submitter),
            q.sql_sha256,
            clean(&outcome),
            q.result_sha256
        );
    }
    match &r.output {
        Some(o) => eprintln!("output {} sha256={}", clean(&o.blob), o.sha256),
        None => eprintln!("output none"),
    }
}

/// A string from the receipt, as printable text (no terminal control sequences).
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

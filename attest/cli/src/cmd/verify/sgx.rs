//! `dcr-attest verify sgx`: an SGX enclave quote with its collateral; the enclave's identity
//! (MRENCLAVE, or MRSIGNER with ISVPRODID and a minimum ISVSVN) when asked for.

use std::process::ExitCode;

use super::{report, Dcap};
use crate::cmd::common::hex_bytes;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    dcap: Dcap,
    /// Require this MRENCLAVE (64 hex digits).
    #[arg(long, value_name = "HEX")]
    expected_mrenclave: Option<String>,
    /// Require this MRSIGNER (64 hex digits).
    #[arg(long, value_name = "HEX")]
    expected_mrsigner: Option<String>,
    /// Require this ISVPRODID.
    #[arg(long, value_name = "N")]
    isv_prod_id: Option<u16>,
    /// Require at least this ISVSVN.
    #[arg(long, value_name = "N")]
    min_isv_svn: Option<u16>,
    /// Print the verdict as JSON.
    #[arg(long)]
    json: bool,
}

fn hex32(flag: &str, v: &Option<String>) -> anyhow::Result<Option<[u8; 32]>> {
    v.as_deref()
        .map(|s| {
            hex_bytes(s)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| anyhow::anyhow!("{flag} {s:?}: expected 64 hex digits"))
        })
        .transpose()
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let (q, c, now) = a.dcap.read()?;
    let mut policy = dcr_verify::sgx::SgxPolicy {
        allow_debug: a.dcap.allow_debug,
        mrenclave: hex32("--expected-mrenclave", &a.expected_mrenclave)?,
        mrsigner: hex32("--expected-mrsigner", &a.expected_mrsigner)?,
        isv_prod_id: a.isv_prod_id,
        min_isv_svn: a.min_isv_svn,
        ..Default::default()
    };
    if policy.mrsigner.is_some() != policy.isv_prod_id.is_some() {
        anyhow::bail!(
            "--expected-mrsigner and --isv-prod-id go together (a signer's key signs many products)"
        );
    }
    policy.allowed_status.extend(a.dcap.allow_status);
    let (verdict, enclave) = dcr_verify::sgx::verify(&q, &c, now, &policy);
    if let (Some(e), false) = (&enclave, a.json) {
        eprintln!(
            "enclave mrenclave={} mrsigner={} isv_prod_id={} isv_svn={} debug={}",
            hex::encode(e.mrenclave),
            hex::encode(e.mrsigner),
            e.isv_prod_id,
            e.isv_svn,
            e.debug
        );
    }
    report(&verdict, a.json)
}

//! Evidence bound to a challenge: explicit platform detection, the contract's choice among
//! what is present, and the three ways to attest (`tpm`: a TPM quote with an EK-anchored AK;
//! `tsm`: SEV-SNP or TDX through configfs-tsm; `azure`: an Azure CVM's HCL report and vTPM
//! quote; `nitro`: an NSM attestation document). Each ends in the key release (`crate::release`).

mod azure;
mod nitro;
mod tpm;
mod tsm;

use std::path::Path;

use dcr_protocol::contract::Contract;
use dcr_protocol::wire::Tee;

use crate::client::Client;
use crate::console::say;
use crate::release::{Keys, TeeKeys};
use crate::{fail, step, StepError};
use azure::{hcl_report_type, HCL_NV_INDEX, HCL_REPORT_SNP, HCL_REPORT_TDX};
pub use nitro::NSM_DEV;

/// What the machine offers, checked explicitly; printed whatever is chosen.
pub struct Detected {
    snp: bool,
    tdx: bool,
    tpm: bool,
    azure_hcl: bool,
    /// The HCL report's IGVM report type (2 = SNP, 4 = TDX), when there is one.
    azure_report_type: Option<u32>,
    /// An AWS Nitro Secure Module (`/dev/nsm`).
    pub nsm: bool,
}

/// Detect what the machine offers: a configfs-tsm provider (SEV-SNP or TDX), a TPM, and on
/// Azure the paravisor's HCL report and its type.
pub fn detect() -> Detected {
    // Evidence comes from configfs-tsm; its provider names the platform.
    let provider = tsm::tsm_provider();
    let snp = provider.as_deref() == Some("sev_guest");
    let tdx = provider.as_deref() == Some("tdx_guest");
    for (dev, found, what) in [
        ("/dev/sev-guest", snp, "sev_guest"),
        ("/dev/tdx_guest", tdx, "tdx_guest"),
    ] {
        if !found && Path::new(dev).exists() {
            say(&format!(
                "platform note: {dev} present but no configfs-tsm {what} provider (not used)"
            ));
        }
    }
    let tpm = Path::new("/dev/tpmrm0").exists();
    let azure_hcl = tpm
        && crate::tpm::Tpm::open("/dev/tpmrm0")
            .and_then(|mut t| t.nv_read_public_exists(HCL_NV_INDEX))
            .unwrap_or(false);
    let azure_report_type = if azure_hcl {
        crate::tpm::Tpm::open("/dev/tpmrm0")
            .and_then(|mut t| t.nv_read(HCL_NV_INDEX))
            .ok()
            .and_then(|r| hcl_report_type(&r))
    } else {
        None
    };
    Detected {
        snp,
        tdx,
        tpm,
        azure_hcl,
        azure_report_type,
        nsm: Path::new(nitro::NSM_DEV).exists(),
    }
}

/// The first of the contract's platforms that is present (the detection is printed whatever
/// is chosen), or an error naming them.
pub fn choose(c: &Contract, d: &Detected) -> Result<Tee, StepError> {
    let yn = |b: bool| if b { "yes" } else { "no" };
    let allowed: Vec<&str> = c.platforms.iter().map(Tee::as_str).collect();
    let chosen = c.platforms.iter().copied().find(|t| match t {
        Tee::Snp => d.snp,
        Tee::Tdx => d.tdx,
        Tee::Tpm => d.tpm && !d.azure_hcl,
        Tee::AzSnpVtpm => d.azure_report_type == Some(HCL_REPORT_SNP),
        Tee::AzTdxVtpm => d.azure_report_type == Some(HCL_REPORT_TDX),
        Tee::Nitro => d.nsm,
        // An SGX enclave is a process, never a VM.
        Tee::Sgx => false,
    });
    say(&format!(
        "platform detected snp={} tdx={} tpm={} azure-hcl={} nsm={} contract=[{}] using={}",
        yn(d.snp),
        yn(d.tdx),
        yn(d.tpm),
        match (d.azure_hcl, d.azure_report_type) {
            (false, _) => "no".to_string(),
            (true, Some(HCL_REPORT_SNP)) => "snp".to_string(),
            (true, Some(HCL_REPORT_TDX)) => "tdx".to_string(),
            (true, Some(t)) => format!("unknown-report-type-{t}"),
            (true, None) => "unreadable".to_string(),
        },
        yn(d.nsm),
        allowed.join(","),
        chosen.map_or("none", |t| t.as_str())
    ));
    match chosen {
        Some(t) => Ok(t),
        None => fail(
            "platform",
            format!(
                "none of the contract's platforms [{}] is present",
                allowed.join(",")
            ),
        ),
    }
}

/// SHA-256 PCR values from sysfs, concatenated in index order (tpm2_quote -F values).
fn pcr_values(pcrs: &[u32]) -> Result<Vec<u8>, StepError> {
    let mut out = Vec::with_capacity(32 * pcrs.len());
    for i in pcrs {
        let p = format!("/sys/class/tpm/tpm0/pcr-sha256/{i}");
        let text = step(
            "evidence",
            std::fs::read_to_string(&p).map_err(|e| format!("{p}: {e}")),
        )?;
        let v = step(
            "evidence",
            hex::decode(text.trim()).map_err(|e| format!("{p}: {e}")),
        )?;
        out.extend_from_slice(&v);
    }
    Ok(out)
}

/// Attest as `tee`: evidence for a fresh challenge, posted for the key release.
pub fn attest(
    c: &Contract,
    digest: &[u8; 32],
    client: &Client,
    tee: Tee,
    tk: &TeeKeys,
) -> Result<Keys, StepError> {
    Ok(match tee {
        Tee::Tpm => tpm::attest_tpm(c, digest, client, tk)?,
        Tee::Snp | Tee::Tdx => tsm::attest_tsm(c, digest, client, tee, tk)?,
        Tee::AzSnpVtpm | Tee::AzTdxVtpm => azure::attest_azure(c, digest, client, tee, tk)?,
        Tee::Nitro => nitro::attest_nitro(c, digest, client, tk)?,
        Tee::Sgx => {
            return fail(
                "platform",
                "sgx evidence comes from an enclave process, never from this guest",
            )
        }
    })
}

//! The reference evaluation: verified claims compared with a build's `measurements.json`.

use dcr_protocol::measurements::Measurements;
use dcr_protocol::wire::SgxIdentity;

use crate::verdict::Verdict;

/// What verified evidence says about the launched image, per platform: the values a
/// measurements.json predicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claims {
    /// SHA-256 bank PCR values from a verified quote.
    Tpm { pcrs: Vec<(u32, Vec<u8>)> },
    /// MEASUREMENT of a verified SEV-SNP report.
    Snp { launch_digest: [u8; 48] },
    /// MRTD of a verified TDX quote.
    Tdx { mrtd: [u8; 48] },
    /// SHA-256 PCRs of an Azure CVM's vTPM, from a quote by the AK the hardware report binds
    /// (az-snp-vtpm, az-tdx-vtpm). Compared with `azure.pcrs`, not `tpm.pcrs`: on Azure the
    /// firmware is Microsoft's, so only the firmware-independent PCRs are reference values.
    Azure { pcrs: Vec<(u32, Vec<u8>)> },
    /// SHA-384 PCRs of a verified AWS Nitro Enclaves attestation document.
    Nitro { pcrs: Vec<(u32, Vec<u8>)> },
    /// The identity of a verified SGX enclave quote (judged against a policy's SGX identity:
    /// dcr builds no SGX enclaves, so measurements.json predicts none).
    Sgx {
        mrenclave: [u8; 32],
        mrsigner: [u8; 32],
        isv_prod_id: u16,
        isv_svn: u16,
    },
}

/// A prediction the evaluation needs is not in the document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no {field} (the recipe's platforms lack {platform})")]
pub struct Missing {
    pub field: &'static str,
    pub platform: &'static str,
}

/// Which PCR prediction: `tpm.pcrs` (a TPM behind OVMF) or `azure.pcrs` (an Azure vTPM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcrSection {
    Tpm,
    Azure,
}

/// The SHA-256 PCRs of a section, sorted by index.
pub fn pcrs(m: &Measurements, section: PcrSection) -> Result<Vec<(u32, Vec<u8>)>, Missing> {
    let (pcrs, field, platform) = match section {
        PcrSection::Tpm => (
            m.measurements.tpm.as_ref().map(|t| &t.pcrs),
            "tpm.pcrs",
            "tpm",
        ),
        PcrSection::Azure => (
            m.measurements.azure.as_ref().map(|t| &t.pcrs),
            "azure.pcrs",
            "azure",
        ),
    };
    let pcrs = pcrs.ok_or(Missing { field, platform })?;
    Ok(pcrs.iter().map(|(i, v)| (i.get(), v.0.to_vec())).collect())
}

/// `snp.launch_digest`.
pub fn snp_launch_digest(m: &Measurements) -> Result<[u8; 48], Missing> {
    m.measurements
        .snp
        .as_ref()
        .map(|s| s.launch_digest.0)
        .ok_or(Missing {
            field: "snp.launch_digest",
            platform: "snp",
        })
}

/// `tdx.mrtd`.
pub fn tdx_mrtd(m: &Measurements) -> Result<[u8; 48], Missing> {
    m.measurements
        .tdx
        .as_ref()
        .map(|s| s.mrtd.0)
        .ok_or(Missing {
            field: "tdx.mrtd",
            platform: "tdx",
        })
}

/// `nitro.pcrs`, sorted by index.
pub fn nitro_pcrs(m: &Measurements) -> Result<Vec<(u32, [u8; 48])>, Missing> {
    let n = m.measurements.nitro.as_ref().ok_or(Missing {
        field: "nitro.pcrs",
        platform: "nitro",
    })?;
    Ok(n.pcrs.iter().map(|(i, v)| (i.get(), v.0)).collect())
}

/// SGX claims against the policy's enclave identity: MRENCLAVE, or MRSIGNER with ISVPRODID
/// and a minimum ISVSVN. A policy without one (or with a malformed one) releases nothing.
pub fn sgx_identity(want: Option<&SgxIdentity>, claims: &Claims) -> Verdict {
    let mut v = Verdict::default();
    let Claims::Sgx {
        mrenclave,
        mrsigner,
        isv_prod_id,
        isv_svn,
    } = claims
    else {
        v.push("sgx", false, "not SGX claims");
        return v;
    };
    let Some(w) = want.filter(|w| w.check().is_ok()) else {
        v.push("sgx", false, "the policy names no SGX enclave identity");
        return v;
    };
    if let Some(m) = &w.mrenclave {
        v.push(
            "sgx.mrenclave",
            m.0 == *mrenclave,
            format!("MRENCLAVE {} vs {}", hex::encode(mrenclave), m),
        );
    }
    if let (Some(m), Some(p), Some(s)) = (&w.mrsigner, w.isv_prod_id, w.min_isv_svn) {
        v.push(
            "sgx.mrsigner",
            m.0 == *mrsigner,
            format!("MRSIGNER {} vs {}", hex::encode(mrsigner), m),
        );
        v.push(
            "sgx.isv_prod_id",
            p == *isv_prod_id,
            format!("ISVPRODID {isv_prod_id} vs {p}"),
        );
        v.push(
            "sgx.isv_svn",
            *isv_svn >= s,
            format!("ISVSVN {isv_svn} vs minimum {s}"),
        );
    }
    v
}

/// Compare verified claims with these reference values. Every reference field of the
/// claims' platform must match; a platform without reference values is refused.
pub fn evaluate(m: &Measurements, claims: &Claims) -> Verdict {
    let mut v = Verdict::default();
    let h = |b: &[u8]| hex::encode(b);
    match claims {
        Claims::Tpm { pcrs: quoted } | Claims::Azure { pcrs: quoted } => {
            let section = if matches!(claims, Claims::Tpm { .. }) {
                PcrSection::Tpm
            } else {
                PcrSection::Azure
            };
            match pcrs(m, section) {
                Err(e) => {
                    v.push("reference.pcrs", false, e.to_string());
                }
                Ok(want) => {
                    for (idx, w) in want {
                        let got = quoted.iter().find(|(i, _)| *i == idx).map(|(_, d)| d);
                        v.push(
                            &format!("reference.pcr.{idx}"),
                            got == Some(&w),
                            format!(
                                "quoted {} vs reference {}",
                                got.map(|g| h(g)).unwrap_or_else(|| "not quoted".into()),
                                h(&w)
                            ),
                        );
                    }
                }
            }
        }
        Claims::Nitro { pcrs: got } => match nitro_pcrs(m) {
            Err(e) => {
                v.push("reference.nitro", false, e.to_string());
            }
            Ok(want) => {
                for (idx, w) in want {
                    let g = got.iter().find(|(i, _)| *i == idx).map(|(_, d)| d);
                    v.push(
                        &format!("reference.nitro.pcr.{idx}"),
                        g.is_some_and(|g| g.as_slice() == w),
                        format!(
                            "document {} vs reference {}",
                            g.map(|g| h(g)).unwrap_or_else(|| "absent".into()),
                            h(&w)
                        ),
                    );
                }
            }
        },
        Claims::Sgx { .. } => {
            v.push(
                "reference.sgx",
                false,
                "measurements.json predicts no SGX enclave: a policy's sgx identity decides",
            );
        }
        Claims::Snp { launch_digest } => match snp_launch_digest(m) {
            Err(e) => {
                v.push("reference.snp", false, e.to_string());
            }
            Ok(w) => {
                v.push(
                    "reference.snp.launch_digest",
                    *launch_digest == w,
                    format!("reported {} vs reference {}", h(launch_digest), h(&w)),
                );
            }
        },
        Claims::Tdx { mrtd } => match tdx_mrtd(m) {
            Err(e) => {
                v.push("reference.tdx", false, e.to_string());
            }
            Ok(w) => {
                v.push(
                    "reference.tdx.mrtd",
                    *mrtd == w,
                    format!("quoted {} vs reference {}", h(mrtd), h(&w)),
                );
                // MRTD is the firmware only: refuse until the RTMRs are predicted.
                v.push(
                    "reference.tdx.rtmrs",
                    false,
                    crate::tdx::RTMRS_NOT_PREDICTED,
                );
            }
        },
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use dcr_protocol::measurements::{Predictions, Sha256, SCHEMA_VERSION};

    fn sample() -> Measurements {
        Measurements {
            schema_version: SCHEMA_VERSION,
            recipe: "r".into(),
            recipe_version: "1".into(),
            source_date_epoch: 1,
            kernel_release: "6.12".into(),
            cmdline: "console=ttyS0".into(),
            contract_digest: Sha256([1; 32]),
            guest_target: "x86_64-unknown-linux-musl".into(),
            inputs: Default::default(),
            artifacts: Default::default(),
            measurements: Predictions::default(),
        }
    }

    /// `m` with `measurements.<section>` set from JSON (as a hand-written document would be).
    fn with(m: Measurements, section: &str, v: serde_json::Value) -> Measurements {
        let mut doc = serde_json::to_value(&m).unwrap();
        doc["measurements"][section] = v;
        Measurements::from_json(doc.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn azure_claims_use_azure_pcrs_only() {
        let mut m = sample();
        let pcr = |b: u8| vec![b; 32];
        m = with(
            m,
            "tpm",
            serde_json::json!({"pcrs": {"4": hex::encode(pcr(4)), "11": hex::encode(pcr(11))}}),
        );
        let quoted: Vec<(u32, Vec<u8>)> = (0..24).map(|i| (i, pcr(i as u8))).collect();
        // No azure section: an Azure quote is refused even though tpm.pcrs would match.
        let v = evaluate(
            &m,
            &Claims::Azure {
                pcrs: quoted.clone(),
            },
        );
        assert!(!v.ok());
        m = with(
            m,
            "azure",
            serde_json::json!({"pcrs": {"4": hex::encode(pcr(4)), "9": hex::encode(pcr(9)), "11": hex::encode(pcr(11)), "23": hex::encode(pcr(23))}}),
        );
        assert!(evaluate(
            &m,
            &Claims::Azure {
                pcrs: quoted.clone()
            }
        )
        .ok());
        assert!(evaluate(
            &m,
            &Claims::Tpm {
                pcrs: quoted.clone()
            }
        )
        .ok());
        // PCR 4 (the firmware's measurement of the UKI: the root of the chain) is required too:
        // an OS that replays 9, 11 and 23 but booted something else is refused.
        for idx in [4usize, 9, 11, 23] {
            let mut q = quoted.clone();
            q[idx].1[0] ^= 1;
            let v = evaluate(&m, &Claims::Azure { pcrs: q });
            assert!(!v.ok(), "PCR {idx}");
            assert!(
                format!("{v:?}").contains(&format!("reference.pcr.{idx}")),
                "{v:?}"
            );
        }
        let mut doc = serde_json::to_value(&m).unwrap();
        doc["measurements"]["azure"] = serde_json::json!({"pcrs": {"24": hex::encode(pcr(1))}});
        let err = Measurements::from_json(doc.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("not a PCR index"), "{err}");
    }

    #[test]
    fn tdx_claims_are_refused_even_with_the_reference_mrtd() {
        // MRTD is the TD firmware only: a TD running another kernel/initrd/command line from
        // the same firmware has the same MRTD, so MRTD alone never releases.
        let mut m = sample();
        let mrtd = [0xabu8; 48];
        m = with(m, "tdx", serde_json::json!({"mrtd": hex::encode(mrtd)}));
        let v = evaluate(&m, &Claims::Tdx { mrtd });
        assert!(!v.ok());
        let text = format!("{v:?}");
        assert!(
            text.contains("reference.tdx.rtmrs") && text.contains("RTMR1/RTMR2"),
            "{text}"
        );
        assert!(v
            .checks
            .iter()
            .any(|c| c.name == "reference.tdx.mrtd" && c.ok));
    }
}

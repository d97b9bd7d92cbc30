//! `dcr-build measure`: launch-measurement prediction from the command line. The flags,
//! defaults and plain output of `measure snp` are sev-snp-measure 0.0.13's, so the tools can
//! be swapped; `--json` adds the per-component breakdown.

use std::path::{Path, PathBuf};

use base64::Engine;
use dcr_measure::eventlog::EventLogError;
use dcr_measure::ovmf::Ovmf;
use dcr_measure::snp::{self, CpuType, SevHashes, SevMode, SnpEvent, SnpShape, VmmType};
use dcr_measure::tdx::{MrtdEvent, TdxError};
use dcr_measure::tpm::{PcrEvent, TpmError};
use dcr_protocol::canonical::CanonicalError;
use dcr_protocol::measurements::{KernelHashes, PcrIndex, Pcrs, Sha256, Sha384};
use hex::encode as hex;
use serde::Serialize;

use crate::uki::UkiError;

/// Errors of `measure`.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Arguments that do not go together (sev-snp-measure's messages).
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    Snp {
        path: PathBuf,
        #[source]
        source: snp::SnpError,
    },
    #[error("{path}: {source}")]
    Tdx {
        path: PathBuf,
        #[source]
        source: TdxError,
    },
    #[error("{path}: {source}")]
    Tpm {
        path: PathBuf,
        #[source]
        source: TpmPredictionError,
    },
    #[error("{path}: {source}")]
    EventLog {
        path: PathBuf,
        #[source]
        source: EventLogError,
    },
    #[error("{path}: the log has no {bank:?} bank")]
    NoBank { path: PathBuf, bank: Bank },
    #[error(transparent)]
    Json(#[from] CanonicalError),
}

/// Why the TPM PCRs of a UKI cannot be predicted.
#[derive(Debug, thiserror::Error)]
pub enum TpmPredictionError {
    #[error(transparent)]
    Uki(#[from] UkiError),
    #[error(transparent)]
    Tpm(#[from] TpmError),
}

fn parse_int(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let r = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else if let Some(o) = t.strip_prefix("0o") {
        u64::from_str_radix(o, 8)
    } else if let Some(b) = t.strip_prefix("0b") {
        u64::from_str_radix(b, 2)
    } else {
        t.parse()
    };
    r.map_err(|_| format!("not an integer: {s:?}"))
}

fn parse_mode(s: &str) -> Result<SnpMode, String> {
    Ok(match s {
        "sev" => SnpMode::Mode(SevMode::Sev),
        "seves" => SnpMode::Mode(SevMode::SevEs),
        "snp" => SnpMode::Mode(SevMode::Snp),
        "snp:svsm" => SnpMode::Mode(SevMode::SnpSvsm),
        "snp:ovmf-hash" => SnpMode::OvmfHash,
        other => {
            return Err(format!(
                "invalid mode {other:?} (choose from sev, seves, snp, snp:ovmf-hash, snp:svsm)"
            ))
        }
    })
}

fn parse_cpu(s: &str) -> Result<CpuType, String> {
    CpuType::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = CpuType::ALL.iter().map(|(_, n)| *n).collect();
        format!("unknown vCPU type {s:?} (choose from {})", names.join(", "))
    })
}

fn parse_vmm(s: &str) -> Result<VmmType, String> {
    match s {
        "QEMU" => Ok(VmmType::Qemu),
        "ec2" => Ok(VmmType::Ec2),
        "gce" => Ok(VmmType::Gce),
        other => Err(format!(
            "unknown VMM type {other:?} (choose from QEMU, ec2, gce)"
        )),
    }
}

/// The guest mode argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnpMode {
    Mode(SevMode),
    OvmfHash,
}

/// Output encoding of the digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Hex,
    Base64,
}

/// `measure snp` arguments (sev-snp-measure 0.0.13's).
#[derive(Debug, Clone, clap::Args)]
pub struct SnpArgs {
    /// Guest mode: sev, seves, snp, snp:ovmf-hash, snp:svsm.
    #[arg(long, value_parser = parse_mode)]
    pub mode: SnpMode,
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u32>,
    #[arg(long, value_name = "CPUTYPE", value_parser = parse_cpu)]
    pub vcpu_type: Option<CpuType>,
    #[arg(long, value_name = "VALUE", value_parser = parse_int)]
    pub vcpu_sig: Option<u64>,
    #[arg(long, value_name = "FAMILY")]
    pub vcpu_family: Option<u32>,
    #[arg(long, value_name = "MODEL")]
    pub vcpu_model: Option<u32>,
    #[arg(long, value_name = "STEPPING")]
    pub vcpu_stepping: Option<u32>,
    #[arg(long, value_name = "VMMTYPE", default_value = "QEMU", value_parser = parse_vmm)]
    pub vmm_type: VmmType,
    #[arg(long, value_name = "PATH")]
    pub ovmf: PathBuf,
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    #[arg(long, value_name = "CMDLINE", allow_hyphen_values = true)]
    pub append: Option<String>,
    #[arg(long, value_name = "VALUE", default_value = "0x1", value_parser = parse_int)]
    pub guest_features: u64,
    #[arg(long, value_enum, default_value = "hex")]
    pub output_format: OutputFormat,
    #[arg(long, value_name = "HASH")]
    pub snp_ovmf_hash: Option<String>,
    #[arg(short, long)]
    pub verbose: bool,
    #[arg(long, value_name = "PATH")]
    pub svsm: Option<PathBuf>,
    #[arg(long, value_name = "SIZE", conflicts_with = "vars_file")]
    pub vars_size: Option<u64>,
    #[arg(long, value_name = "PATH")]
    pub vars_file: Option<PathBuf>,
    /// Print JSON: the digest, the VM shape and the per-component events.
    #[arg(long)]
    pub json: bool,
}

fn read(path: &Path) -> Result<crate::sys::FileBytes, MeasureError> {
    crate::sys::read_file(path).map_err(|source| MeasureError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn usage(s: impl Into<String>) -> MeasureError {
    MeasureError::Usage(s.into())
}

/// Run `measure snp`; returns what to print on stdout.
pub fn snp(a: &SnpArgs) -> Result<String, MeasureError> {
    let fw_bytes = read(&a.ovmf)?;
    let snp_err = |source| MeasureError::Snp {
        path: a.ovmf.clone(),
        source,
    };
    let fw = Ovmf::parse(&fw_bytes).map_err(|e| snp_err(e.into()))?;
    let mode = match a.mode {
        SnpMode::OvmfHash => return Ok(format!("{}\n", hex(snp::snp_ovmf_hash(&fw)))),
        SnpMode::Mode(m) => m,
    };
    if a.initrd.is_some() && a.kernel.is_none() {
        return Err(usage("--kernel required when using --initrd"));
    }
    if a.append.is_some() && a.kernel.is_none() {
        return Err(usage("--kernel required when using --append"));
    }
    if a.snp_ovmf_hash.is_some() && mode != SevMode::Snp {
        return Err(usage("--snp-ovmf-hash only works with --mode snp"));
    }
    let vcpus = match (mode, a.vcpus) {
        (SevMode::Sev, v) => v.unwrap_or(0),
        (_, Some(v)) => v,
        (m, None) => {
            return Err(usage(format!(
                "missing --vcpus N in guest mode '{}'",
                mode_name(m)
            )))
        }
    };
    let vcpu_sig = if mode == SevMode::Sev {
        0
    } else if let Some(f) = a.vcpu_family {
        let (Some(m), Some(s)) = (a.vcpu_model, a.vcpu_stepping) else {
            return Err(usage(
                "--vcpu-family needs --vcpu-model and --vcpu-stepping",
            ));
        };
        snp::cpu_sig(f, m, s)
    } else if let Some(s) = a.vcpu_sig {
        u32::try_from(s).map_err(|_| usage("--vcpu-sig does not fit 32 bits"))?
    } else if let Some(t) = a.vcpu_type {
        t.sig()
    } else if a.vmm_type == VmmType::Qemu {
        return Err(usage(format!(
            "missing --vcpu-type or --vcpu-sig or --vcpu-family in guest mode '{}'",
            mode_name(mode)
        )));
    } else {
        // ec2 and gce load a fixed RDX; the signature is not used.
        0
    };
    let kernel = a.kernel.as_deref().map(read).transpose()?;
    let initrd = a.initrd.as_deref().map(read).transpose()?;
    let hashes = kernel
        .as_deref()
        .map(|k| SevHashes::new(k, initrd.as_deref(), a.append.as_deref()));
    let shape = SnpShape {
        vcpus,
        vcpu_sig,
        guest_features: a.guest_features,
        vmm: a.vmm_type,
    };
    let launch = match mode {
        SevMode::Sev => snp::sev_launch_digest(&fw, hashes.as_ref()),
        SevMode::SevEs => snp::seves_launch_digest(&fw, hashes.as_ref(), &shape),
        SevMode::Snp => {
            let seed = match &a.snp_ovmf_hash {
                None => None,
                Some(h) => {
                    let b = Sha384::from_hex(h.trim()).ok_or_else(|| {
                        usage(format!("--snp-ovmf-hash: not 96 hex digits: {h:?}"))
                    })?;
                    Some(b.0)
                }
            };
            snp::snp_launch_digest(&fw, seed, hashes.as_ref(), &shape)
        }
        SevMode::SnpSvsm => {
            if a.vmm_type != VmmType::Qemu {
                return Err(usage("SVSM mode is only implemented for QEMU"));
            }
            let svsm_path = a
                .svsm
                .as_ref()
                .ok_or_else(|| usage("snp:svsm mode requires --svsm"))?;
            // As sev-snp-measure: --vars-file wins; a --vars-size of 0 counts as not given.
            let vars = match (&a.vars_file, a.vars_size) {
                (Some(f), _) => std::fs::metadata(f)
                    .map_err(|source| MeasureError::Read {
                        path: f.clone(),
                        source,
                    })?
                    .len(),
                (None, Some(s)) if s != 0 => s,
                _ => return Err(usage("snp:svsm mode requires --vars-size or --vars-file")),
            };
            let svsm = read(svsm_path)?;
            snp::svsm_launch_digest(&fw, &svsm, vars, vcpus, vcpu_sig)
        }
    }
    .map_err(snp_err)?;
    let text = match a.output_format {
        OutputFormat::Hex => hex(&launch.digest),
        OutputFormat::Base64 => base64::engine::general_purpose::STANDARD.encode(&launch.digest),
    };
    if a.json {
        return json(&SnpReport {
            mode: mode_name(mode),
            digest: text,
            shape: SnpReportShape {
                vcpus,
                vcpu_sig: format!("{vcpu_sig:#x}"),
                guest_features: format!("{:#x}", a.guest_features),
                vmm_type: format!("{:?}", a.vmm_type),
                firmware_sha256: crate::fetch::sha256(&fw_bytes),
            },
            kernel_hashes: hashes.map(|h| KernelHashes {
                kernel: Sha256(h.kernel),
                initrd: Sha256(h.initrd),
                cmdline: Sha256(h.cmdline),
            }),
            events: launch.events,
        });
    }
    if a.verbose {
        Ok(format!(
            "Calculated {} guest measurement: {text}\n",
            mode.verbose_name()
        ))
    } else {
        Ok(format!("{text}\n"))
    }
}

/// `measure snp --json`.
#[derive(Serialize)]
struct SnpReport {
    mode: &'static str,
    /// As printed without --json (hex or base64).
    digest: String,
    shape: SnpReportShape,
    /// `null` without --kernel.
    kernel_hashes: Option<KernelHashes>,
    events: Vec<SnpEvent>,
}

#[derive(Serialize)]
struct SnpReportShape {
    vcpus: u32,
    vcpu_sig: String,
    guest_features: String,
    vmm_type: String,
    firmware_sha256: Sha256,
}

/// `measure tdx --json`.
#[derive(Serialize)]
struct TdxReport {
    mrtd: Sha384,
    page_order: &'static str,
    firmware_sha256: Sha256,
    sections: Vec<MrtdEvent>,
}

/// `measure tpm --json`.
#[derive(Serialize)]
struct TpmReport {
    pcrs: Pcrs,
    events: Vec<PcrEvent>,
}

/// A report as `--json` prints it: canonical JSON (keys sorted at every level), indented,
/// with a trailing newline.
fn json<T: Serialize>(report: &T) -> Result<String, MeasureError> {
    let bytes = dcr_protocol::canonical::pretty(report)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn mode_name(m: SevMode) -> &'static str {
    match m {
        SevMode::Sev => "sev",
        SevMode::SevEs => "seves",
        SevMode::Snp => "snp",
        SevMode::SnpSvsm => "snp:svsm",
    }
}

/// `measure tdx` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct TdxArgs {
    /// TDVF firmware (OVMF built with TDX support).
    #[arg(long, value_name = "PATH")]
    pub firmware: PathBuf,
    /// QEMU 8.x page order (all PAGE.ADDs of a section before its MR.EXTENDs); the default is
    /// QEMU >= 9's single pass.
    #[arg(long)]
    pub two_pass: bool,
    /// Print JSON with the TDVF sections.
    #[arg(long)]
    pub json: bool,
}

/// Run `measure tdx`: MRTD (RTMR prediction is not implemented yet).
pub fn tdx(a: &TdxArgs) -> Result<String, MeasureError> {
    use dcr_measure::tdx::{self as t, PageOrder};
    let bytes = read(&a.firmware)?;
    let err = |source: TdxError| MeasureError::Tdx {
        path: a.firmware.clone(),
        source,
    };
    let fw = Ovmf::parse(&bytes).map_err(|e| err(e.into()))?;
    let order = if a.two_pass {
        PageOrder::TwoPass
    } else {
        PageOrder::SinglePass
    };
    let (mrtd, events) = t::mrtd(&fw, order).map_err(err)?;
    if a.json {
        return json(&TdxReport {
            mrtd: Sha384(mrtd),
            page_order: if a.two_pass {
                "two-pass"
            } else {
                "single-pass"
            },
            firmware_sha256: crate::fetch::sha256(&bytes),
            sections: events,
        });
    }
    Ok(format!("mrtd {}\n", hex(mrtd)))
}

/// `measure replay` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// A TCG2 crypto-agile log (TPM binary_bios_measurements, or a TDX CCEL).
    #[arg(long, value_name = "PATH")]
    pub event_log: PathBuf,
    /// Bank to replay.
    #[arg(long, value_enum, default_value = "sha256")]
    pub bank: Bank,
}

/// A digest bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Bank {
    Sha1,
    Sha256,
    Sha384,
}

/// Run `measure replay`: one `index: digest` line per register the log extends.
pub fn replay(a: &ReplayArgs) -> Result<String, MeasureError> {
    use dcr_measure::eventlog;
    let bytes = read(&a.event_log)?;
    let log = eventlog::parse(&bytes).map_err(|source| MeasureError::EventLog {
        path: a.event_log.clone(),
        source,
    })?;
    let alg = match a.bank {
        Bank::Sha1 => eventlog::TPM_ALG_SHA1,
        Bank::Sha256 => eventlog::TPM_ALG_SHA256,
        Bank::Sha384 => eventlog::TPM_ALG_SHA384,
    };
    if !log.algorithms.iter().any(|(x, _)| *x == alg) {
        return Err(MeasureError::NoBank {
            path: a.event_log.clone(),
            bank: a.bank,
        });
    }
    let mut out = String::new();
    for (idx, v) in log.replay(alg) {
        out.push_str(&format!("{idx}: {}\n", hex(&v)));
    }
    Ok(out)
}

/// `measure tpm` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct TpmArgs {
    /// The UKI (systemd-stub + sections).
    #[arg(long, value_name = "PATH")]
    pub uki: PathBuf,
    /// Print JSON: `{"pcrs": {...}, "events": [...]}` (the plain form prints `11:sha256=<hex>`).
    #[arg(long)]
    pub json: bool,
}

/// The TPM prediction of a UKI: PCR 4 (boot applications: the UKI and its kernel), PCR 9
/// (its `.cmdline` and `.initrd` as the kernel measures them) and PCR 11 (for the stub
/// version it embeds).
pub fn tpm_prediction(uki_bytes: &[u8]) -> Result<Vec<dcr_measure::tpm::Pcr>, TpmPredictionError> {
    use dcr_measure::tpm;
    let sections = crate::uki::sections_in_memory(uki_bytes)?;
    let sdmagic = sections
        .iter()
        .find(|(n, _)| n == ".sdmagic")
        .map(|(_, d)| d.as_slice())
        .ok_or(TpmError::NoStubVersion)?;
    let version = tpm::stub_version(sdmagic)?;
    let refs: Vec<(&str, &[u8])> = sections
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let pcr11 = tpm::pcr11(version, &refs)?;
    let get = |name: &str| refs.iter().find(|(n, _)| *n == name).map(|(_, d)| *d);
    let cmdline = String::from_utf8_lossy(get(".cmdline").unwrap_or_default());
    let pcr9 = tpm::pcr9(
        cmdline.trim_end_matches('\0'),
        get(".initrd").unwrap_or_default(),
    );
    let pcr4 = tpm::pcr4(uki_bytes, get(".linux").unwrap_or_default())?;
    Ok(vec![pcr4, pcr9, pcr11])
}

/// Run `measure tpm`.
pub fn tpm(a: &TpmArgs) -> Result<String, MeasureError> {
    let bytes = read(&a.uki)?;
    let pcrs = tpm_prediction(&bytes).map_err(|source| MeasureError::Tpm {
        path: a.uki.clone(),
        source,
    })?;
    if a.json {
        return json(&TpmReport {
            pcrs: pcr_map(&pcrs),
            events: pcrs.iter().flat_map(|p| p.events.clone()).collect(),
        });
    }
    Ok(pcrs
        .iter()
        .map(|p| format!("{}:sha256={}\n", p.index, hex(p.value)))
        .collect())
}

/// PCR values by index (a map of measurements.json).
pub fn pcr_map<'a>(pcrs: impl IntoIterator<Item = &'a dcr_measure::tpm::Pcr>) -> Pcrs {
    pcrs.into_iter()
        .map(|x| {
            (
                PcrIndex::new(x.index).expect("the predicted PCRs are 4, 9, 11, 23"),
                Sha256(x.value),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_reports_are_canonical_pretty_with_a_newline() {
        // Field order in the struct does not matter: keys are sorted at every level, as
        // serde_json's sorted map printed them before the reports were typed.
        let r = TdxReport {
            mrtd: Sha384([0xab; 48]),
            page_order: "single-pass",
            firmware_sha256: Sha256([0x01; 32]),
            sections: vec![MrtdEvent {
                section: 0,
                kind: "BFV".into(),
                gpa: 4096,
                pages: 2,
                extended: true,
            }],
        };
        let expected = format!(
            "{{\n  \"firmware_sha256\": \"{}\",\n  \"mrtd\": \"{}\",\n  \"page_order\": \"single-pass\",\n  \"sections\": [\n    {{\n      \"extended\": true,\n      \"gpa\": 4096,\n      \"kind\": \"BFV\",\n      \"pages\": 2,\n      \"section\": 0\n    }}\n  ]\n}}\n",
            "01".repeat(32),
            "ab".repeat(48)
        );
        assert_eq!(json(&r).unwrap(), expected);
    }

    #[test]
    fn tpm_prediction_errors_are_typed() {
        assert!(matches!(
            tpm_prediction(b"MZ not really"),
            Err(TpmPredictionError::Uki(_))
        ));
    }
}

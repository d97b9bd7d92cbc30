//! The reference values of a packed build: the digests of the artifacts and the typed launch
//! measurement predictions (the snp, tdx, tpm and azure sections of measurements.json). Pure.

use std::collections::BTreeMap;

use dcr_protocol::measurements::{
    self, Artifact, AzurePrediction, KernelHashes, Measurements, Predictions, Sha256, Sha384,
    SnpPrediction, TdxPrediction, TpmPrediction, SCHEMA_VERSION,
};

use crate::disk::Disk;
use crate::fetch::sha256;
use crate::measure::pcr_map;
use crate::recipe::{Platform, SnpSpec, TdxSpec};

use super::pack::Packed;
use super::plan::Prepared;
use super::{ImageError, DISK_RAW, DISK_VHD, EIF, INITRD, UKI};

fn measure_err(input: &str) -> impl Fn(String) -> ImageError + '_ {
    move |reason| ImageError::Input {
        input: input.to_string(),
        reason,
    }
}

/// SEV-SNP launch digest of QEMU direct boot of this build with kernel hashes.
fn snp_prediction(
    p: &Prepared,
    initrd: &[u8],
    spec: &SnpSpec,
    fw: &[u8],
) -> Result<SnpPrediction, ImageError> {
    use dcr_measure::ovmf::Ovmf;
    use dcr_measure::snp::{self, CpuType, SevHashes, SnpShape, VmmType};
    let err = measure_err("firmware:snp");
    let ovmf = Ovmf::parse(fw).map_err(|e| err(e.to_string()))?;
    let cpu = CpuType::from_name(&spec.vcpu_type).ok_or_else(|| err("unknown vCPU type".into()))?;
    let vmm = match spec.vmm.as_str() {
        "ec2" => VmmType::Ec2,
        "gce" => VmmType::Gce,
        _ => VmmType::Qemu,
    };
    let shape = SnpShape {
        vcpus: spec.vcpus,
        vcpu_sig: cpu.sig(),
        guest_features: spec.guest_features,
        vmm,
    };
    let hashes = SevHashes::new(&p.pack.kernel, Some(initrd), Some(&p.pack.cmdline));
    let launch = snp::snp_launch_digest(&ovmf, None, Some(&hashes), &shape)
        .map_err(|e| err(e.to_string()))?;
    Ok(SnpPrediction {
        shape: Some(measurements::SnpShape {
            boot: "QEMU direct boot: -kernel (.linux of image.efi) -initrd initrd.cpio -append cmdline, sev-snp-guest kernel-hashes=on".into(),
            vcpus: spec.vcpus,
            vcpu_type: spec.vcpu_type.clone(),
            vcpu_sig: format!("{:#x}", cpu.sig()),
            guest_features: format!("{:#x}", spec.guest_features),
            vmm: spec.vmm.clone(),
            firmware_sha256: sha256(fw),
        }),
        launch_digest: Sha384(
            launch
                .digest
                .as_slice()
                .try_into()
                .map_err(|_| err("an SNP launch digest is 48 bytes".into()))?,
        ),
        kernel_hashes: Some(KernelHashes {
            kernel: Sha256(hashes.kernel),
            initrd: Sha256(hashes.initrd),
            cmdline: Sha256(hashes.cmdline),
        }),
        events: launch.events,
    })
}

/// TDX MRTD of the pinned TDVF firmware (RTMRs are not predicted yet).
fn tdx_prediction(spec: &TdxSpec, fw: &[u8]) -> Result<TdxPrediction, ImageError> {
    use dcr_measure::ovmf::Ovmf;
    use dcr_measure::tdx::{self, PageOrder};
    let err = measure_err("firmware:tdx");
    let ovmf = Ovmf::parse(fw).map_err(|e| err(e.to_string()))?;
    let order = if spec.page_order == "two-pass" {
        PageOrder::TwoPass
    } else {
        PageOrder::SinglePass
    };
    let (mrtd, sections) = tdx::mrtd(&ovmf, order).map_err(|e| err(e.to_string()))?;
    Ok(TdxPrediction {
        shape: Some(measurements::TdxShape {
            page_order: spec.page_order.clone(),
            firmware_sha256: sha256(fw),
            rtmrs: "not predicted yet (they depend on the VMM's ACPI tables and the TD HOB)".into(),
        }),
        mrtd: Sha384(mrtd),
        sections,
    })
}

/// The vTPM PCRs required of an Azure confidential VM: PCR 4 (the firmware's measurement of
/// the boot application, the UKI, and of the kernel systemd-stub loads: the root of the chain;
/// without it an OS the attacker controls could replay the others), PCR 9 (command line and
/// initrd, by the kernel's EFI stub), PCR 11 (the UKI sections, by systemd-stub) and PCR 23
/// (contract and workloads, by guest-init). PCR 4 is predicted with OVMF's boot-path events;
/// that Hyper-V UEFI logs the same ones is not confirmed on a real Azure VM (docs/azure.md):
/// if it does not, release fails closed.
pub const AZURE_PCRS: [u32; 4] = [4, 9, 11, 23];

fn azure_prediction(pcrs: &[dcr_measure::tpm::Pcr]) -> AzurePrediction {
    AzurePrediction {
        shape: Some(measurements::AzureShape {
            boot: "Azure confidential VM (SEV-SNP DCasv5/ECasv5 or TDX DCesv5/ECesv5, paravisor vTPM) booting disk.vhd: \\EFI\\BOOT\\BOOTX64.EFI = image.efi".into(),
            bank: "sha256".into(),
            hardware: "the SNP MEASUREMENT / TDX MRTD cover Microsoft's paravisor and firmware, not this image: checked for genuineness (VCEK / DCAP, VMPL 0, HCL binding of the vTPM key), not pinned".into(),
            pcr4: "predicted with OVMF's boot-path events (EV_EFI_ACTION 'Calling EFI Application from Boot Option', separator, the Authenticode digests of the UKI and of the kernel it loads); not yet confirmed on Hyper-V UEFI: a different event there fails closed".into(),
        }),
        pcrs: pcr_map(pcrs.iter().filter(|x| AZURE_PCRS.contains(&x.index))),
    }
}

/// The SHA-256 PCRs of an OVMF + systemd-stub boot of the UKI, plus PCR 23.
fn tpm_pcrs(p: &Prepared, packed: &Packed) -> Result<Vec<dcr_measure::tpm::Pcr>, ImageError> {
    let mut pcrs = crate::measure::tpm_prediction(&packed.uki).map_err(|e| ImageError::Input {
        input: UKI.into(),
        reason: e.to_string(),
    })?;
    let workloads: Vec<(&str, &[u8])> = p
        .pack
        .workloads
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    pcrs.push(dcr_measure::tpm::pcr23(
        sha256(&p.pack.contract).0,
        &workloads,
    ));
    Ok(pcrs)
}

/// The reference values of a packed build: digests of everything, and the launch
/// measurements predicted for the recipe's platforms. Pure.
pub fn reference_values(p: &Prepared, packed: &Packed) -> Result<Measurements, ImageError> {
    let mut artifacts = BTreeMap::new();
    let eif = packed.eif.as_ref().map(|(b, _)| (EIF, b));
    for (name, bytes) in [(INITRD, &packed.initrd), (UKI, &packed.uki)]
        .into_iter()
        .chain(eif)
    {
        artifacts.insert(
            name.to_string(),
            Artifact {
                sha256: sha256(bytes),
                size: bytes.len() as u64,
            },
        );
    }
    // The PCR prediction serves both the tpm and the azure reference values: computed once.
    let pcrs = if p.platforms.contains(&Platform::Tpm) || p.platforms.contains(&Platform::Azure) {
        tpm_pcrs(p, packed)?
    } else {
        Vec::new()
    };
    let mut measurements = Predictions::default();
    for platform in &p.platforms {
        match platform {
            Platform::Tpm => {
                measurements.tpm = Some(TpmPrediction {
                    shape: Some(measurements::TpmShape {
                        boot: "OVMF + systemd-stub UKI (image.efi) from an ESP that is the first boot option (QEMU -nodefaults); no PCR 11 phase markers".into(),
                        bank: "sha256".into(),
                    }),
                    pcrs: pcr_map(pcrs.iter()),
                    events: pcrs.iter().flat_map(|p| p.events.clone()).collect(),
                });
            }
            Platform::Snp => {
                if let Some((spec, fw)) = &p.snp {
                    measurements.snp = Some(snp_prediction(p, &packed.initrd, spec, fw)?);
                }
            }
            Platform::Tdx => {
                if let Some((spec, fw)) = &p.tdx {
                    measurements.tdx = Some(tdx_prediction(spec, fw)?);
                }
            }
            Platform::Azure => {
                measurements.azure = Some(azure_prediction(&pcrs));
            }
            Platform::Nitro => {
                if let Some((eif, p)) = &packed.eif {
                    measurements.nitro = Some(nitro_prediction(eif, p));
                }
            }
        }
    }
    Ok(Measurements {
        schema_version: SCHEMA_VERSION,
        recipe: p.pack.name.clone(),
        recipe_version: p.pack.version.clone(),
        source_date_epoch: u64::from(p.pack.mtime),
        kernel_release: p.pack.kernel_release.clone(),
        cmdline: p.pack.cmdline.clone(),
        contract_digest: sha256(&p.pack.contract),
        guest_target: p.guest_target.clone(),
        inputs: p.inputs.clone(),
        artifacts,
        measurements,
    })
}

/// Record the disk image's two forms among the artifacts: the raw disk, and the same bytes
/// followed by the VHD footer.
pub(super) fn add_disk_artifacts(m: &mut Measurements, d: &Disk, footer: &[u8; 512]) {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(&d.raw);
    let raw_sha = Sha256(h.clone().finalize().into());
    h.update(footer);
    let vhd_sha = Sha256(h.finalize().into());
    let size = d.raw.len() as u64;
    m.artifacts.insert(
        DISK_RAW.into(),
        Artifact {
            sha256: raw_sha,
            size,
        },
    );
    m.artifacts.insert(
        DISK_VHD.into(),
        Artifact {
            sha256: vhd_sha,
            size: size + 512,
        },
    );
}

/// `nitro`: PCR 0, 1, 2 of the EIF (8 only for signed images, which dcr does not write yet).
fn nitro_prediction(
    eif: &[u8],
    p: &dcr_measure::nitro::NitroPcrs,
) -> dcr_protocol::measurements::NitroPrediction {
    use dcr_protocol::measurements::{NitroPrediction, NitroShape, PcrIndex, Sha384};
    let mut pcrs = BTreeMap::new();
    for (i, v) in [(0, p.pcr0), (1, p.pcr1), (2, p.pcr2)]
        .into_iter()
        .chain(p.pcr8.map(|v| (8, v)))
    {
        if let Some(idx) = PcrIndex::new(i) {
            pcrs.insert(idx, Sha384(v));
        }
    }
    NitroPrediction {
        shape: Some(NitroShape {
            image: "eif-v4".into(),
            eif_sha256: sha256(eif),
        }),
        pcrs,
    }
}

//! `dcr-build image`: recipe → initramfs + UKI + measurements.json.
//!
//! One module a stage: `plan` gathers and verifies the inputs and builds the guest binaries
//! ([`prepare`]); `pack` is pure (bytes in, bytes out) and is what the benchmark times
//! ([`pack()`], [`disk_image`]); `predict` computes the reference values, the artifact digests
//! and the typed launch-measurement predictions ([`reference_values`]); `write` writes the
//! output directory. [`build`] runs them in order. This module holds the public API and the
//! errors.

use std::path::{Path, PathBuf};

use dcr_protocol::measurements::Measurements;

use crate::bzimage::BzImageError;
use crate::cargo::CargoError;
use crate::fetch::FetchError;
use crate::initrd::InitrdError;
use crate::kmod::KmodError;
use crate::recipe::{Platform, RecipeError};
use crate::uki::UkiError;

mod pack;
mod plan;
mod predict;
mod write;

pub use pack::{
    disk_image, initrd_tree, nitro_image, nitro_ramdisks, osrel, pack, PackInputs, Packed,
};
pub use plan::{prepare, Prepared};
pub use predict::{reference_values, AZURE_PCRS};

/// File names in the output directory.
pub const INITRD: &str = "initrd.cpio";
pub const UKI: &str = "image.efi";
pub const MEASUREMENTS: &str = "measurements.json";
/// The GPT disk image (ESP with the UKI), raw and as a fixed VHD.
pub const DISK_RAW: &str = "disk.raw";
pub const DISK_VHD: &str = "disk.vhd";
/// The AWS Nitro Enclaves image.
pub const EIF: &str = "image.eif";

/// Paths inside the initramfs.
/// The contract in its canonical JSON form (docs/contract.md); its SHA-256 is the contract
/// digest.
pub const CONTRACT_PATH: &str = "etc/dcr/contract.json";
pub const INIT_PATH: &str = "init";
pub const WORKLOAD_DIR: &str = "workloads";

/// Errors of an image build.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Cargo(#[from] CargoError),
    #[error("kernel modules: {0}")]
    Kmod(#[from] KmodError),
    #[error("initramfs: {0}")]
    Initrd(#[from] InitrdError),
    #[error("UKI: {0}")]
    Uki(#[from] UkiError),
    #[error("input kernel: {0}")]
    Kernel(#[from] BzImageError),
    #[error("output directory {path}: {source}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("SOURCE_DATE_EPOCH={0:?} is not a timestamp that fits a cpio mtime")]
    Epoch(String),
    #[error("measurements.json: {0}")]
    Reference(#[from] dcr_protocol::measurements::ReferenceError),
    #[error("input {input}: {reason}")]
    Input { input: String, reason: String },
    #[error("contract {path}: {source}")]
    Contract {
        path: PathBuf,
        #[source]
        source: dcr_protocol::contract::ContractError,
    },
    #[error("contract {path}: {reason}")]
    ContractWorkloads { path: PathBuf, reason: String },
    #[error("workload {workload} (oci): {source}")]
    Rootfs {
        workload: String,
        #[source]
        source: crate::rootfs::RootfsError,
    },
}

/// Options of [`build`].
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub out: PathBuf,
    pub guest_target: String,
    /// `SOURCE_DATE_EPOCH` from the environment, if set.
    pub source_date_epoch: Option<String>,
    /// A contract to pack instead of the recipe's (`dcr-build image --contract`).
    pub contract: Option<PathBuf>,
    /// The P-384 key (PKCS#8 PEM) of the recipe's `[nitro] signing_certificate`.
    pub nitro_signing_key: Option<PathBuf>,
}

/// The file an oci workload's root device is written to: `rootfs-<workload>.img` (`dcr-build
/// run` attaches each as a read-only virtio-blk drive).
pub fn rootfs_file(workload: &str) -> String {
    format!("rootfs-{workload}.img")
}

/// Build the image of a recipe into `opts.out`; returns the reference values written.
pub fn build(recipe_path: &Path, opts: &BuildOptions) -> Result<Measurements, ImageError> {
    let prepared = prepare(recipe_path, opts, Some(&opts.out))?;
    let packed = pack(&prepared.pack)?;
    let mut m = reference_values(&prepared, &packed)?;
    let disk = disk_image(&prepared, &packed)?;
    if let Some((d, footer)) = &disk {
        predict::add_disk_artifacts(&mut m, d, footer);
    }
    for p in &prepared.platforms {
        let predicted = match p {
            Platform::Tpm => m.measurements.tpm.is_some(),
            Platform::Snp => m.measurements.snp.is_some(),
            Platform::Tdx => m.measurements.tdx.is_some(),
            Platform::Azure => m.measurements.azure.is_some(),
            Platform::Nitro => m.measurements.nitro.is_some(),
        };
        if !predicted {
            eprintln!(
                "note: no launch measurement predicted yet for platform {}",
                p.as_str()
            );
        }
    }
    write::atomic(&opts.out, INITRD, &packed.initrd)?;
    write::atomic(&opts.out, UKI, &packed.uki)?;
    if let Some((eif, _)) = &packed.eif {
        write::atomic(&opts.out, EIF, eif)?;
    }
    if let Some((d, footer)) = &disk {
        write::sparse(&opts.out, DISK_RAW, &d.raw, &[])?;
        write::sparse(&opts.out, DISK_VHD, &d.raw, footer)?;
        eprintln!(
            "disk: {} MiB GPT, disk GUID {}, ESP {} (LBA {}..={}, FAT32, {}-byte clusters, serial {:08X})",
            d.size_mib,
            d.disk_guid.to_text(),
            d.esp_guid.to_text(),
            d.esp_first_lba,
            d.esp_last_lba,
            d.cluster_size,
            d.fat_serial
        );
    }
    for (name, device) in &prepared.roots {
        let file = rootfs_file(name);
        write::atomic(&opts.out, &file, device)?;
        m.artifacts.insert(
            file,
            dcr_protocol::measurements::Artifact {
                sha256: dcr_protocol::measurements::Sha256(
                    <sha2::Sha256 as sha2::Digest>::digest(device).into(),
                ),
                size: device.len() as u64,
            },
        );
    }
    write::atomic(&opts.out, MEASUREMENTS, &m.to_canonical_json()?)?;
    Ok(m)
}

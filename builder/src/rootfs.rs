//! A workload's read-only root from an OCI image: flattened ([`crate::oci`]), packed as EROFS
//! ([`crate::erofs`]) and protected by dm-verity ([`crate::verity`]) on one device:
//! `[EROFS image][verity superblock][hash tree]`. The verity salt and the EROFS UUID follow
//! from the image's manifest digest, so a rebuild gives the same bytes and root hash. Pure:
//! the blobs come through [`crate::oci::Blobs`].

use serde::Serialize;

use crate::oci::{self, Blobs, Notes, RunConfig};
use crate::{erofs, verity};

/// Errors building a root.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Oci(#[from] oci::OciError),
    #[error(transparent)]
    Erofs(#[from] erofs::ErofsError),
    #[error(transparent)]
    Verity(#[from] verity::VerityError),
}

/// What a packed root is, for `measurements.json`, the guest's table and the notes.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub manifest: String,
    pub config: String,
    /// (blob digest, diff_id) per layer, base first.
    pub layers: Vec<(String, String)>,
    pub layer_bytes: u64,
    pub inodes: u64,
    /// EROFS bytes = the verity data area.
    pub data_bytes: u64,
    /// Verity superblock + hash tree bytes.
    pub hash_bytes: u64,
    pub root_hash: String,
    pub salt: String,
    pub uuid: String,
    /// The dm-verity table for the device at `/dev/vdX` (the guest substitutes its name).
    pub table: String,
    pub run: RunConfig,
    pub notes: Notes,
}

/// A packed root: the device bytes and their summary.
pub struct Packed {
    pub device: Vec<u8>,
    pub summary: Summary,
}

/// Flatten the image `pin` names and pack it.
pub fn build(blobs: &mut dyn Blobs, pin: &str) -> Result<Packed, RootfsError> {
    let flat = oci::flatten(blobs, pin)?;
    let (salt, uuid) = verity::salt_and_uuid(flat.manifest_digest.as_bytes());
    let (mut device, fs) = erofs::write(&flat.tree, uuid, "dcr-rootfs")?;
    let v = verity::format(&device, salt, uuid)?;
    let data_bytes = device.len() as u64;
    device.extend_from_slice(&v.hash_area);
    Ok(Packed {
        summary: Summary {
            manifest: flat.manifest_digest,
            config: flat.config_digest,
            layers: flat.layers,
            layer_bytes: flat.layer_bytes,
            inodes: fs.inodes,
            data_bytes,
            hash_bytes: v.hash_area.len() as u64,
            root_hash: hex::encode(v.root),
            salt: hex::encode(v.salt),
            uuid: v.uuid_string(),
            table: v.table("DEVICE"),
            run: flat.run,
            notes: flat.notes,
        },
        device,
    })
}

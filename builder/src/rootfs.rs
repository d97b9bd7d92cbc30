//! A workload's read-only root from an OCI image: flattened ([`crate::oci`]), packed as EROFS
//! ([`crate::erofs`]) and protected by dm-verity ([`crate::verity`]) on one device:
//! `[EROFS image][verity superblock][hash tree]`. The verity salt and the EROFS UUID follow
//! from the image's manifest digest, so a rebuild gives the same bytes and root hash. The
//! directories the guest mounts over (`dcr_protocol::oci::MOUNT_POINTS`) are added when the
//! image lacks them. Pure: the blobs come through [`crate::oci::Blobs`].

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
    #[error("the image's /{0} is not a directory (the guest mounts over it)")]
    MountPoint(String),
    #[error("the image has no Entrypoint and no Cmd: nothing to run")]
    NoCommand,
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

impl Packed {
    /// The run document the guest reads from /workloads/<name>.
    pub fn run_spec(&self) -> Result<dcr_protocol::oci::RunSpec, RootfsError> {
        let s = &self.summary;
        let argv: Vec<String> = s
            .run
            .entrypoint
            .iter()
            .flatten()
            .chain(s.run.cmd.iter().flatten())
            .cloned()
            .collect();
        if argv.is_empty() {
            return Err(RootfsError::NoCommand);
        }
        Ok(dcr_protocol::oci::RunSpec {
            version: dcr_protocol::oci::RUN_VERSION,
            image: s.manifest.clone(),
            verity: dcr_protocol::oci::Verity {
                root_hash: s.root_hash.clone(),
                salt: s.salt.clone(),
                uuid: s.uuid.clone(),
                data_blocks: s.data_bytes / verity::BLOCK as u64,
                hash_blocks: s.hash_bytes / verity::BLOCK as u64,
            },
            argv,
            env: s.run.env.clone().unwrap_or_default(),
            workdir: match s.run.working_dir.as_deref() {
                Some(w) if w.starts_with('/') => w.to_string(),
                _ => "/".to_string(),
            },
        })
    }
}

/// Flatten the image `pin` names and pack it.
pub fn build(blobs: &mut dyn Blobs, pin: &str) -> Result<Packed, RootfsError> {
    let mut flat = oci::flatten(blobs, pin)?;
    // Each mount point and each of its parents must be a real directory (a symlink would
    // move the guest's mount elsewhere); missing ones are added, root-owned, 0755.
    for m in dcr_protocol::oci::MOUNT_POINTS {
        let parts: Vec<&str> = m.split('/').collect();
        for k in 1..=parts.len() {
            let p = parts[..k].join("/");
            match flat.tree.lookup(p.as_bytes()) {
                Ok(None) => flat
                    .tree
                    .put_dir(p.as_bytes(), crate::fstree::Meta::ROOT_DIR)
                    .map_err(|_| RootfsError::MountPoint(p.clone()))?,
                Ok(Some(i)) if matches!(flat.tree.inodes[i].kind, crate::fstree::Kind::Dir(_)) => {}
                _ => return Err(RootfsError::MountPoint(p)),
            }
        }
    }
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

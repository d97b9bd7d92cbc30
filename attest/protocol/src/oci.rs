//! The run document of a container-image workload (`kind = "oci"`): what `dcr-build image`
//! packs at `/workloads/<name>` for it and the contract pins by SHA-256 (so PCR 23, the
//! initramfs measurements and the contract digest in the evidence all cover it). It names the
//! image's read-only root — an EROFS image protected by dm-verity — by its verity root hash,
//! and says what to run in it. Canonical JSON; unknown fields refused.

use serde::{Deserialize, Serialize};

/// The version this build writes and reads.
pub const RUN_VERSION: u32 = 1;

/// Where a workload's inputs appear inside its root (`/dcr/input/<dataset id>`).
pub const INPUT_DIR: &str = "/dcr/input";

/// Directories `dcr-build` adds to every image root (when missing) for the guest's mounts:
/// the inputs (read-only bind), a private `/tmp` and a minimal `/dev` (tmpfs each).
pub const MOUNT_POINTS: [&str; 4] = ["dcr/input", "tmp", "dev", "proc"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub version: u32,
    /// The image manifest digest (`sha256:<hex>`) the root was built from.
    pub image: String,
    pub verity: Verity,
    /// `Entrypoint ++ Cmd` of the image config (argv[0] resolved in the image's PATH).
    pub argv: Vec<String>,
    /// The image's `Env`, then `DCR_INPUTS` (the input paths, `:`-separated, contract order).
    pub env: Vec<String>,
    /// The image's `WorkingDir` (`/` if none).
    pub workdir: String,
}

/// The dm-verity parameters of the root device: data and hash tree on one device,
/// `[EROFS data][verity superblock][hash tree]`, 4096-byte blocks, SHA-256, format 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verity {
    /// Root hash, 64 hex digits.
    pub root_hash: String,
    /// Salt, 64 hex digits.
    pub salt: String,
    /// The superblock's UUID (8-4-4-4-12): how the guest finds the device.
    pub uuid: String,
    pub data_blocks: u64,
    /// Blocks of superblock + hash tree after the data (the device is `data_blocks +
    /// hash_blocks` blocks long).
    pub hash_blocks: u64,
}

/// Errors reading a run document.
#[derive(Debug, thiserror::Error)]
pub enum RunSpecError {
    #[error("run document: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("run document: {0}")]
    Invalid(String),
}

fn hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl RunSpec {
    /// The canonical JSON bytes (what is packed and hashed).
    pub fn canonical_json(&self) -> Vec<u8> {
        let v = serde_json::to_value(self).expect("run document serializes");
        let mut out = Vec::new();
        crate::canonical::write(&v, &mut out);
        out
    }

    /// Parse and check a run document.
    pub fn from_json(b: &[u8]) -> Result<RunSpec, RunSpecError> {
        let r: RunSpec = serde_json::from_slice(b)?;
        let bad = |m: &str| Err(RunSpecError::Invalid(m.to_string()));
        if r.version != RUN_VERSION {
            return bad("unknown version");
        }
        if !hex64(&r.verity.root_hash) || !hex64(&r.verity.salt) {
            return bad("verity.root_hash and verity.salt must be 64 lowercase hex digits");
        }
        if r.verity.data_blocks == 0 || r.verity.hash_blocks == 0 {
            return bad("verity.data_blocks and verity.hash_blocks must be positive");
        }
        if r.argv.is_empty() || r.argv[0].is_empty() {
            return bad("argv is empty (the image has no Entrypoint or Cmd)");
        }
        if !r.workdir.starts_with('/') {
            return bad("workdir must be absolute");
        }
        if r.argv.iter().chain(&r.env).any(|s| s.contains('\0')) || r.workdir.contains('\0') {
            return bad("a NUL byte in argv, env or workdir");
        }
        Ok(r)
    }
}

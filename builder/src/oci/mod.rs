//! OCI images (and `docker save` archives) flattened into one [`Tree`].
//!
//! Sources: opencontainers/image-spec `image-layout.md`, `manifest.md`, `image-index.md`,
//! `config.md`, `layer.md` ("Applying Changesets", "Whiteouts"). The image is named by a
//! pinned digest; every blob read is checked against the digest that names it (the manifest
//! against the pin, config and layers against the manifest's descriptors, each uncompressed
//! layer against the config's `rootfs.diff_ids`). No daemon, no registry.
//!
//! Layer application, per layer: whiteouts first (`.wh.<name>` removes `<name>` of lower
//! layers, `.wh..wh..opq` hides every lower child of its directory), then the entries in
//! order. Metadata is normalised: numeric uid/gid kept, modes kept but set-uid/set-gid
//! stripped, mtimes dropped, extended attributes dropped, device nodes, FIFOs and sockets
//! dropped — each with a note. This module is pure: the blobs come through [`Blobs`]
//! ([`source`] reads a layout directory or an archive).

pub mod source;

use std::io::Read;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::fstree::{self, Inode, Kind, Meta, Tree};

/// The most uncompressed bytes all layers of one image may hold (the tree, the EROFS image
/// and the verity device are all in memory while building).
pub const MAX_UNCOMPRESSED: u64 = 4 << 30;

/// Errors reading or flattening an image.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{0}: not a digest of the form sha256:<64 hex digits>")]
    BadDigest(String),
    #[error("blob {0} is not in the image")]
    Missing(String),
    #[error("blob {digest}: its bytes hash to sha256:{actual}")]
    DigestMismatch { digest: String, actual: String },
    #[error("blob {digest}: {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what} {digest}: {source}")]
    Json {
        what: &'static str,
        digest: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("layer {index} ({digest}): {detail}")]
    Layer {
        index: usize,
        digest: String,
        detail: String,
    },
    #[error("layer {index} ({digest}) entry {path}: {source}")]
    Tree {
        index: usize,
        digest: String,
        path: String,
        #[source]
        source: fstree::TreeError,
    },
    #[error("the layers hold more than {MAX_UNCOMPRESSED} uncompressed bytes")]
    TooLarge,
    #[error("reading {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where blobs come from (an OCI layout directory, an archive, a test's map).
pub trait Blobs {
    /// The bytes of the blob `digest` (`sha256:<hex>`), unchecked.
    fn blob(&mut self, digest: &str) -> Result<Vec<u8>, OciError>;
}

/// An OCI content descriptor (`descriptor.md`); unknown fields ignored (the format grows).
#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

/// An image manifest or an image index (told apart by `mediaType` or by which list is there).
#[derive(Debug, Clone, Deserialize)]
struct ManifestOrIndex {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// The image configuration (`config.md`): what is run, and the uncompressed layer digests.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageConfig {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

/// `config.config`: the container's defaults.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct RunConfig {
    #[serde(rename = "User", default)]
    pub user: Option<String>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

/// What was changed while normalising, for the build's notes.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq, Eq)]
pub struct Notes {
    /// Files whose set-uid/set-gid bits were cleared.
    pub setid_stripped: Vec<String>,
    /// Device nodes, FIFOs and sockets left out.
    pub specials_dropped: Vec<String>,
    /// `path: attribute` of every extended attribute left out.
    pub xattrs_dropped: Vec<String>,
}

/// A flattened image.
#[derive(Debug, Clone)]
pub struct Flattened {
    pub tree: Tree,
    /// The manifest the pin resolved to (itself, or the linux/amd64 entry of a pinned index).
    pub manifest_digest: String,
    pub config_digest: String,
    /// Per layer: the compressed blob digest and the uncompressed (diff_id) digest.
    pub layers: Vec<(String, String)>,
    pub run: RunConfig,
    pub notes: Notes,
    /// Uncompressed tar bytes read.
    pub layer_bytes: u64,
}

/// Check `d` is `sha256:<64 lowercase hex>`.
pub fn check_digest(d: &str) -> Result<(), OciError> {
    match d.strip_prefix("sha256:") {
        Some(h)
            if h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(OciError::BadDigest(d.to_string())),
    }
}

fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The blob `digest`, checked against its digest (and `size` if known).
fn checked(blobs: &mut dyn Blobs, digest: &str, size: Option<u64>) -> Result<Vec<u8>, OciError> {
    check_digest(digest)?;
    let b = blobs.blob(digest)?;
    let actual = sha256_of(&b);
    if actual != digest {
        return Err(OciError::DigestMismatch {
            digest: digest.to_string(),
            actual: actual.trim_start_matches("sha256:").to_string(),
        });
    }
    if let Some(s) = size {
        if s != b.len() as u64 {
            return Err(OciError::SizeMismatch {
                digest: digest.to_string(),
                expected: s,
                actual: b.len() as u64,
            });
        }
    }
    Ok(b)
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const LAYER_TYPES: [&str; 5] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

fn parse<T: serde::de::DeserializeOwned>(
    what: &'static str,
    digest: &str,
    b: &[u8],
) -> Result<T, OciError> {
    serde_json::from_slice(b).map_err(|source| OciError::Json {
        what,
        digest: digest.to_string(),
        source,
    })
}

/// Resolve the pin to an image manifest: a manifest itself, or the one linux/amd64 entry of
/// an index.
fn manifest(blobs: &mut dyn Blobs, pin: &str) -> Result<(String, ManifestOrIndex), OciError> {
    let mut digest = pin.to_string();
    for _ in 0..4 {
        let b = checked(blobs, &digest, None)?;
        let m: ManifestOrIndex = parse("manifest", &digest, &b)?;
        if m.schema_version != 2 {
            return Err(OciError::Unsupported(format!(
                "manifest {digest}: schemaVersion {} (only 2)",
                m.schema_version
            )));
        }
        let is_index = match &m.media_type {
            Some(t) if INDEX_TYPES.contains(&t.as_str()) => true,
            Some(t) if MANIFEST_TYPES.contains(&t.as_str()) => false,
            Some(t) => {
                return Err(OciError::Unsupported(format!(
                    "{digest}: media type {t} is neither an image manifest nor an index"
                )))
            }
            None => m.manifests.is_some(),
        };
        if !is_index {
            return Ok((digest, m));
        }
        let entries: Vec<&Descriptor> = m
            .manifests
            .iter()
            .flatten()
            .filter(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .collect();
        match entries.as_slice() {
            [one] => digest = one.digest.clone(),
            [] => {
                return Err(OciError::Unsupported(format!(
                    "index {digest}: no linux/amd64 image (pin the image manifest's digest)"
                )))
            }
            _ => {
                return Err(OciError::Unsupported(format!(
                    "index {digest}: {} linux/amd64 images (pin the image manifest's digest)",
                    entries.len()
                )))
            }
        }
    }
    Err(OciError::Unsupported(format!(
        "{pin}: indexes nested more than 3 deep"
    )))
}

/// Flatten the image the pin names.
pub fn flatten(blobs: &mut dyn Blobs, pin: &str) -> Result<Flattened, OciError> {
    check_digest(pin)?;
    let (manifest_digest, m) = manifest(blobs, pin)?;
    let (Some(config_desc), Some(layers)) = (m.config, m.layers) else {
        return Err(OciError::Unsupported(format!(
            "manifest {manifest_digest}: no config or no layers"
        )));
    };
    let cb = checked(blobs, &config_desc.digest, Some(config_desc.size))?;
    let config: ImageConfig = parse("config", &config_desc.digest, &cb)?;
    if config.os != "linux" || config.architecture != "amd64" {
        return Err(OciError::Unsupported(format!(
            "config {}: image for {}/{}, the guest is linux/amd64",
            config_desc.digest, config.os, config.architecture
        )));
    }
    if config.rootfs.kind != "layers" || config.rootfs.diff_ids.len() != layers.len() {
        return Err(OciError::Unsupported(format!(
            "config {}: rootfs lists {} diff_ids of type {:?} for {} layers",
            config_desc.digest,
            config.rootfs.diff_ids.len(),
            config.rootfs.kind,
            layers.len()
        )));
    }
    let mut tree = Tree::new();
    let mut notes = Notes::default();
    let mut total = 0u64;
    let mut out_layers = Vec::new();
    for (index, (desc, diff_id)) in layers.iter().zip(&config.rootfs.diff_ids).enumerate() {
        if !LAYER_TYPES.contains(&desc.media_type.as_str()) {
            return Err(OciError::Unsupported(format!(
                "layer {index} ({}): media type {} (foreign or non-distributable layers are not fetched)",
                desc.digest, desc.media_type
            )));
        }
        check_digest(diff_id)?;
        let compressed = checked(blobs, &desc.digest, Some(desc.size))?;
        let tar = decompress(&compressed, MAX_UNCOMPRESSED - total).map_err(|detail| {
            OciError::Layer {
                index,
                digest: desc.digest.clone(),
                detail,
            }
        })?;
        total += tar.len() as u64;
        let actual = sha256_of(&tar);
        if &actual != diff_id {
            return Err(OciError::Layer {
                index,
                digest: desc.digest.clone(),
                detail: format!("uncompressed digest {actual}, the config's diff_id is {diff_id}"),
            });
        }
        apply_layer(&mut tree, &tar, &mut notes).map_err(|e| match e {
            ApplyError::Tree(path, source) => OciError::Tree {
                index,
                digest: desc.digest.clone(),
                path,
                source,
            },
            ApplyError::Other(detail) => OciError::Layer {
                index,
                digest: desc.digest.clone(),
                detail,
            },
        })?;
        out_layers.push((desc.digest.clone(), diff_id.clone()));
    }
    Ok(Flattened {
        tree,
        manifest_digest,
        config_digest: config_desc.digest,
        layers: out_layers,
        run: config.config.unwrap_or_default(),
        notes,
        layer_bytes: total,
    })
}

/// Uncompress a layer (gzip, zstd or plain tar, told by its magic), at most `limit` bytes.
fn decompress(b: &[u8], limit: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let r = if b.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(b)
            .take(limit + 1)
            .read_to_end(&mut out)
    } else if b.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::read::Decoder::new(b).and_then(|d| d.take(limit + 1).read_to_end(&mut out))
    } else {
        out = b.to_vec();
        Ok(out.len())
    };
    r.map_err(|e| format!("uncompressing: {e}"))?;
    if out.len() as u64 > limit {
        return Err(format!(
            "over {MAX_UNCOMPRESSED} uncompressed bytes in all layers"
        ));
    }
    Ok(out)
}

enum ApplyError {
    Tree(String, fstree::TreeError),
    Other(String),
}

/// An entry path for notes and errors, without the `./` archives often start with.
fn show(p: &[u8]) -> String {
    let s = String::from_utf8_lossy(p);
    s.strip_prefix("./").unwrap_or(&s).to_string()
}

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// The directory part and last name of an entry path.
fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    let p = path.strip_suffix(b"/").unwrap_or(path);
    match p.iter().rposition(|b| *b == b'/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (&b""[..], p),
    }
}

/// A PAX numeric field (`uid`, `gid`) of an entry, if present.
fn pax_number(pax: &[(Vec<u8>, Vec<u8>)], key: &[u8]) -> Option<u64> {
    pax.iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse().ok())
}

/// Apply one uncompressed layer tar to `tree`.
fn apply_layer(tree: &mut Tree, tar: &[u8], notes: &mut Notes) -> Result<(), ApplyError> {
    let tree_err = |path: &[u8]| {
        let p = show(path);
        move |e| ApplyError::Tree(p, e)
    };
    let io = |e: std::io::Error| ApplyError::Other(format!("reading the tar: {e}"));
    // Pass 1: whiteouts, which act on the lower layers only.
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path_bytes().into_owned();
        let (dir, name) = split_last(&path);
        if name == OPAQUE {
            tree.clear_dir(dir).map_err(tree_err(&path))?;
        } else if let Some(rest) = name.strip_prefix(WHITEOUT) {
            if rest.is_empty() {
                return Err(ApplyError::Other(format!(
                    "{}: a bare whiteout",
                    show(&path)
                )));
            }
            if rest.starts_with(WHITEOUT) {
                // Other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): not part of the image.
                continue;
            }
            let mut target = dir.to_vec();
            if !target.is_empty() {
                target.push(b'/');
            }
            target.extend_from_slice(rest);
            tree.remove(&target).map_err(tree_err(&path))?;
        }
    }
    // Pass 2: the entries.
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(io)? {
        let mut entry = entry.map_err(io)?;
        let path = entry.path_bytes().into_owned();
        let (_, name) = split_last(&path);
        if name.starts_with(WHITEOUT) {
            continue;
        }
        let pax: Vec<(Vec<u8>, Vec<u8>)> = match entry.pax_extensions().map_err(io)? {
            Some(exts) => exts
                .filter_map(|e| e.ok())
                .map(|e| (e.key_bytes().to_vec(), e.value_bytes().to_vec()))
                .collect(),
            None => Vec::new(),
        };
        let h = entry.header();
        let et = h.entry_type();
        let uid = pax_number(&pax, b"uid")
            .or_else(|| h.uid().ok())
            .ok_or_else(|| ApplyError::Other(format!("{}: bad uid", show(&path))))?;
        let gid = pax_number(&pax, b"gid")
            .or_else(|| h.gid().ok())
            .ok_or_else(|| ApplyError::Other(format!("{}: bad gid", show(&path))))?;
        let mode = h
            .mode()
            .map_err(|e| ApplyError::Other(format!("{}: mode: {e}", show(&path))))?;
        let (uid, gid) = match (u32::try_from(uid), u32::try_from(gid)) {
            (Ok(u), Ok(g)) => (u, g),
            _ => {
                return Err(ApplyError::Other(format!(
                    "{}: uid/gid over 32 bits",
                    show(&path)
                )))
            }
        };
        let mut perm = (mode & 0o7777) as u16;
        for (k, _) in &pax {
            if let Some(attr) = k.strip_prefix(b"SCHILY.xattr.") {
                notes
                    .xattrs_dropped
                    .push(format!("{}: {}", show(&path), show(attr)));
            }
        }
        let meta = |perm| Meta { perm, uid, gid };
        use tar::EntryType as T;
        match et {
            T::Regular | T::Continuous => {
                if perm & 0o6000 != 0 {
                    perm &= !0o6000;
                    notes.setid_stripped.push(show(&path));
                }
                let mut data = Vec::with_capacity(entry.size() as usize);
                entry.read_to_end(&mut data).map_err(io)?;
                tree.put(
                    &path,
                    Inode {
                        meta: meta(perm),
                        kind: Kind::File(data),
                    },
                )
                .map_err(tree_err(&path))?;
            }
            T::Directory => tree.put_dir(&path, meta(perm)).map_err(tree_err(&path))?,
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        ApplyError::Other(format!("{}: symlink without a target", show(&path)))
                    })?
                    .into_owned();
                tree.put(
                    &path,
                    Inode {
                        meta: meta(0o777),
                        kind: Kind::Symlink(target),
                    },
                )
                .map_err(tree_err(&path))?;
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        ApplyError::Other(format!("{}: hard link without a target", show(&path)))
                    })?
                    .into_owned();
                tree.link(&path, &target).map_err(tree_err(&path))?;
            }
            T::Char | T::Block | T::Fifo => notes.specials_dropped.push(show(&path)),
            T::XGlobalHeader => {}
            other => {
                return Err(ApplyError::Other(format!(
                    "{}: tar entry type {:?} is not supported",
                    show(&path),
                    other
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked_in_form() {
        assert!(check_digest(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(check_digest(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(check_digest("sha256:abc").is_err());
        assert!(check_digest(&format!("sha512:{}", "a".repeat(64))).is_err());
    }

    #[test]
    fn entry_paths_split() {
        assert_eq!(split_last(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_last(b"a/"), (&b""[..], &b"a"[..]));
        assert_eq!(split_last(b"./x/.wh..wh..opq"), (&b"./x"[..], OPAQUE));
    }
}

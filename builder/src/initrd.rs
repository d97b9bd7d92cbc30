//! Deterministic initramfs: a cpio "newc" archive (Linux Documentation/driver-api/
//! early-userspace/buffer-format.rst), uncompressed.
//!
//! Determinism rules: entries sorted by path, every parent directory present, uid/gid 0,
//! one fixed mtime, inode numbers 1..n in archive order, nlink 1 (2 for directories), no
//! device numbers except for explicit device nodes, no host metadata at all.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};

use dcr_protocol::measurements::Sha256;
use sha2::Digest;

/// Errors building or reading an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    #[error("initramfs entry {0:?}: bad path (must be relative, no '..', no empty parts)")]
    BadPath(String),
    #[error("initramfs entry {0:?} given twice")]
    Duplicate(String),
    #[error("initramfs entry {path:?} is {size} bytes, over the 4 GiB cpio limit")]
    TooLarge { path: String, size: usize },
    #[error("not a newc cpio archive: {0}")]
    Read(#[source] std::io::Error),
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File { data: Vec<u8>, perm: u32 },
    Dir { perm: u32 },
    CharDev { perm: u32, major: u32, minor: u32 },
}

/// The file tree of an initramfs, keyed by relative path (`init`, `etc/dcr/contract.json`).
#[derive(Debug, Clone, Default)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

fn check_path(path: &str) -> Result<(), InitrdError> {
    if path.is_empty()
        || path.starts_with('/')
        || path
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        || path.contains('\0')
    {
        return Err(InitrdError::BadPath(path.to_string()));
    }
    Ok(())
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a node; parent directories are added (mode 0755) where missing.
    pub fn add(&mut self, path: &str, node: Node) -> Result<(), InitrdError> {
        check_path(path)?;
        if let Node::File { data, .. } = &node {
            if data.len() > u32::MAX as usize {
                return Err(InitrdError::TooLarge {
                    path: path.to_string(),
                    size: data.len(),
                });
            }
        }
        let mut parent = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .skip(1)
            .rev()
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.nodes
                .entry(parent.clone())
                .or_insert(Node::Dir { perm: 0o755 });
        }
        match self.nodes.get(path) {
            Some(Node::Dir { .. }) if matches!(node, Node::Dir { .. }) => {
                self.nodes.insert(path.to_string(), node);
                Ok(())
            }
            Some(_) => Err(InitrdError::Duplicate(path.to_string())),
            None => {
                self.nodes.insert(path.to_string(), node);
                Ok(())
            }
        }
    }

    pub fn add_file(&mut self, path: &str, data: Vec<u8>, perm: u32) -> Result<(), InitrdError> {
        self.add(path, Node::File { data, perm })
    }

    pub fn add_dir(&mut self, path: &str) -> Result<(), InitrdError> {
        self.add(path, Node::Dir { perm: 0o755 })
    }

    /// Serialise as newc with the fixed `mtime`.
    pub fn to_cpio(&self, mtime: u32) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::new();
        for (i, (path, node)) in self.nodes.iter().enumerate() {
            let ino = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let b = cpio::NewcBuilder::new(path)
                .ino(ino)
                .uid(0)
                .gid(0)
                .mtime(mtime);
            let (b, data): (_, &[u8]) = match node {
                Node::File { data, perm } => (b.mode(S_IFREG | (perm & 0o7777)).nlink(1), data),
                Node::Dir { perm } => (b.mode(S_IFDIR | (perm & 0o7777)).nlink(2), &[]),
                Node::CharDev { perm, major, minor } => (
                    b.mode(S_IFCHR | (perm & 0o7777))
                        .nlink(1)
                        .rdev_major(*major)
                        .rdev_minor(*minor),
                    &[],
                ),
            };
            // Writing into a Vec cannot fail; sizes were checked in `add`.
            let mut w = b.write(&mut out, data.len() as u32);
            w.write_all(data).expect("write to Vec");
            w.finish().expect("write to Vec");
        }
        cpio::newc::trailer(&mut out).expect("write to Vec");
        out
    }
}

/// One entry as read back from an archive (for `dcr-build compare`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub path: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    pub ino: u32,
    pub nlink: u32,
    pub rdev: (u32, u32),
    pub size: u32,
    pub sha256: Sha256,
}

/// List every entry of a newc archive.
pub fn list(archive: &[u8]) -> Result<Vec<EntryInfo>, InitrdError> {
    let mut cursor = Cursor::new(archive);
    let mut out = Vec::new();
    loop {
        let mut reader = cpio::NewcReader::new(cursor).map_err(InitrdError::Read)?;
        if reader.entry().is_trailer() {
            break;
        }
        let e = reader.entry();
        let mut info = EntryInfo {
            path: e.name().to_string(),
            mode: e.mode(),
            uid: e.uid(),
            gid: e.gid(),
            mtime: e.mtime(),
            ino: e.ino(),
            nlink: e.nlink(),
            rdev: (e.rdev_major(), e.rdev_minor()),
            size: e.file_size(),
            sha256: Sha256([0; 32]),
        };
        let mut data = Vec::with_capacity(info.size as usize);
        reader.read_to_end(&mut data).map_err(InitrdError::Read)?;
        info.sha256 = Sha256(sha2::Sha256::digest(&data).into());
        out.push(info);
        cursor = reader.finish().map_err(InitrdError::Read)?;
    }
    Ok(out)
}

/// The content of the regular file at `path` in a newc archive, if there is one.
pub fn read_file(archive: &[u8], path: &str) -> Result<Option<Vec<u8>>, InitrdError> {
    let mut cursor = Cursor::new(archive);
    loop {
        let mut reader = cpio::NewcReader::new(cursor).map_err(InitrdError::Read)?;
        if reader.entry().is_trailer() {
            return Ok(None);
        }
        let e = reader.entry();
        if e.name() == path && e.mode() & 0o170000 == 0o100000 {
            let mut data = Vec::with_capacity(e.file_size() as usize);
            reader.read_to_end(&mut data).map_err(InitrdError::Read)?;
            return Ok(Some(data));
        }
        cursor = reader.finish().map_err(InitrdError::Read)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_sorted_with_parents() {
        let mut a = Tree::new();
        a.add_file("workloads/b", b"bb".to_vec(), 0o755).unwrap();
        a.add_file("init", b"init".to_vec(), 0o755).unwrap();
        let mut b = Tree::new();
        b.add_file("init", b"init".to_vec(), 0o755).unwrap();
        b.add_file("workloads/b", b"bb".to_vec(), 0o755).unwrap();
        let (ca, cb) = (a.to_cpio(5), b.to_cpio(5));
        assert_eq!(ca, cb);
        let entries = list(&ca).unwrap();
        let paths: Vec<_> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec!["init", "workloads", "workloads/b"]);
        assert!(entries
            .iter()
            .all(|e| e.mtime == 5 && e.uid == 0 && e.gid == 0));
        assert_eq!(entries[1].mode, S_IFDIR | 0o755);
        assert_eq!(ca.len() % 4, 0);
    }

    #[test]
    fn read_file_finds_regular_files_only() {
        let mut t = Tree::new();
        t.add_file("etc/dcr/contract.json", b"{}".to_vec(), 0o644)
            .unwrap();
        t.add_file("init", b"init".to_vec(), 0o755).unwrap();
        let a = t.to_cpio(0);
        assert_eq!(
            read_file(&a, "etc/dcr/contract.json").unwrap(),
            Some(b"{}".to_vec())
        );
        assert_eq!(read_file(&a, "init").unwrap(), Some(b"init".to_vec()));
        assert_eq!(
            read_file(&a, "etc/dcr").unwrap(),
            None,
            "a directory is not a file"
        );
        assert_eq!(read_file(&a, "missing").unwrap(), None);
        assert!(
            read_file(&a[..a.len() / 2], "missing").is_err(),
            "truncated archive"
        );
    }

    #[test]
    fn chardev_round_trips() {
        let mut t = Tree::new();
        t.add(
            "dev/console",
            Node::CharDev {
                perm: 0o600,
                major: 5,
                minor: 1,
            },
        )
        .unwrap();
        let e = list(&t.to_cpio(0)).unwrap();
        assert_eq!(e[1].rdev, (5, 1));
        assert_eq!(e[1].mode, S_IFCHR | 0o600);
    }

    #[test]
    fn bad_paths_and_duplicates() {
        let mut t = Tree::new();
        assert!(t.add_file("/abs", vec![], 0o644).is_err());
        assert!(t.add_file("a/../b", vec![], 0o644).is_err());
        t.add_file("x", vec![], 0o644).unwrap();
        assert!(matches!(
            t.add_file("x", vec![], 0o644),
            Err(InitrdError::Duplicate(_))
        ));
    }

    #[test]
    fn truncated_archive_is_an_error() {
        let mut t = Tree::new();
        t.add_file("init", vec![1; 100], 0o755).unwrap();
        let c = t.to_cpio(0);
        assert!(list(&c[..50]).is_err());
    }
}

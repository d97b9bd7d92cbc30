//! An EROFS image of a [`Tree`]: uncompressed, 4096-byte blocks, no extended attributes,
//! every inode's data in whole blocks (`EROFS_INODE_FLAT_PLAIN`), every mtime 0.
//!
//! Source: the on-disk format in torvalds/linux `fs/erofs/erofs_fs.h` (superblock at byte
//! 1024, 32-byte compact and 64-byte extended inodes addressed by `nid` = their offset in the
//! metadata area / 32, directory blocks of 12-byte `erofs_dirent`s followed by their names,
//! the names of a directory sorted byte-wise across its blocks because lookups bisect).
//! Only features every kernel with EROFS reads are used (no feature bits set).
//!
//! Layout: block 0 holds the superblock; the metadata area (inodes, in [`Tree::walk`] order,
//! the root first so its nid is 0) starts at block 1; data follows, in the same order.
//! Deterministic: the same tree gives the same bytes.

use zerocopy::{Immutable, IntoBytes, KnownLayout};

use crate::fstree::{Kind, Tree};

const BLKSZBITS: u8 = 12;
const BLOCK: usize = 1 << BLKSZBITS;
const MAGIC: u32 = 0xE0F5_E1E2;
const SUPER_OFFSET: usize = 1024;
/// The largest image written (8 GiB): it is built in memory.
pub const MAX_BLOCKS: u64 = (8 << 30) / BLOCK as u64;
/// Metadata area start block.
const META_BLKADDR: u32 = 1;
/// `i_format`: bit 0 = extended inode; bits 1–3 = data layout (0 = FLAT_PLAIN).
const LAYOUT_EXTENDED: u16 = 1;

const S_IFDIR: u16 = 0o040000;
const S_IFREG: u16 = 0o100000;
const S_IFLNK: u16 = 0o120000;
/// `EROFS_FT_*` directory entry types.
const FT_REG_FILE: u8 = 1;
const FT_DIR: u8 = 2;
const FT_SYMLINK: u8 = 7;

/// Errors packing a tree.
#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    #[error("EROFS: {0}")]
    TooLarge(&'static str),
    #[error("EROFS: a name of {0} bytes (at most 255)")]
    LongName(usize),
    #[error("EROFS image: {0}")]
    Corrupt(String),
}

/// `struct erofs_super_block` (128 bytes).
#[repr(C, packed)]
#[derive(IntoBytes, Immutable, KnownLayout)]
struct SuperBlock {
    magic: u32,
    checksum: u32,
    feature_compat: u32,
    blkszbits: u8,
    sb_extslots: u8,
    root_nid: u16,
    inos: u64,
    build_time: u64,
    build_time_nsec: u32,
    blocks: u32,
    meta_blkaddr: u32,
    xattr_blkaddr: u32,
    uuid: [u8; 16],
    volume_name: [u8; 16],
    feature_incompat: u32,
    reserved2: [u8; 44],
}
const _: () = assert!(std::mem::size_of::<SuperBlock>() == 128);

/// `struct erofs_inode_compact` (32 bytes).
#[repr(C, packed)]
#[derive(IntoBytes, Immutable, KnownLayout)]
struct InodeCompact {
    i_format: u16,
    i_xattr_icount: u16,
    i_mode: u16,
    i_nlink: u16,
    i_size: u32,
    i_reserved: u32,
    i_u: u32,
    i_ino: u32,
    i_uid: u16,
    i_gid: u16,
    i_reserved2: u32,
}
const _: () = assert!(std::mem::size_of::<InodeCompact>() == 32);

/// `struct erofs_inode_extended` (64 bytes).
#[repr(C, packed)]
#[derive(IntoBytes, Immutable, KnownLayout)]
struct InodeExtended {
    i_format: u16,
    i_xattr_icount: u16,
    i_mode: u16,
    i_reserved: u16,
    i_size: u64,
    i_u: u32,
    i_ino: u32,
    i_uid: u32,
    i_gid: u32,
    i_mtime: u64,
    i_mtime_nsec: u32,
    i_nlink: u32,
    i_reserved2: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<InodeExtended>() == 64);

/// `struct erofs_dirent` (12 bytes).
#[repr(C, packed)]
#[derive(IntoBytes, Immutable, KnownLayout)]
struct Dirent {
    nid: u64,
    nameoff: u16,
    file_type: u8,
    reserved: u8,
}
const _: () = assert!(std::mem::size_of::<Dirent>() == 12);

/// What a written image holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub inodes: u64,
    pub blocks: u32,
}

fn file_type(kind: &Kind) -> u8 {
    match kind {
        Kind::Dir(_) => FT_DIR,
        Kind::File(_) => FT_REG_FILE,
        Kind::Symlink(_) => FT_SYMLINK,
    }
}

/// Directory blocks: entries (sorted by name) packed greedily, each block's dirents first and
/// its names after them; the last block only as long as it is used.
fn dir_blocks(entries: &[(Vec<u8>, u64, u8)]) -> Result<Vec<u8>, ErofsError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let mut used = 0;
        let mut j = i;
        while j < entries.len() && used + 12 + entries[j].0.len() <= BLOCK {
            used += 12 + entries[j].0.len();
            j += 1;
        }
        let block_start = out.len();
        let mut nameoff = 12 * (j - i);
        for (name, nid, ft) in &entries[i..j] {
            out.extend_from_slice(
                Dirent {
                    nid: nid.to_le(),
                    nameoff: (nameoff as u16).to_le(),
                    file_type: *ft,
                    reserved: 0,
                }
                .as_bytes(),
            );
            nameoff += name.len();
        }
        for (name, _, _) in &entries[i..j] {
            out.extend_from_slice(name);
        }
        debug_assert_eq!(out.len() - block_start, used);
        if j < entries.len() {
            out.resize(block_start + BLOCK, 0);
        }
        i = j;
    }
    Ok(out)
}

/// Pack `tree` into an EROFS image; `uuid` and `volume_name` go into the superblock.
pub fn write(tree: &Tree, uuid: [u8; 16], volume: &str) -> Result<(Vec<u8>, Summary), ErofsError> {
    let order = tree.walk();
    // Slots (32 bytes) of each inode in the metadata area; extended inodes take two, aligned
    // so no inode crosses a block.
    let mut nid = vec![u64::MAX; tree.inodes.len()];
    let mut nlink = vec![0u32; tree.inodes.len()];
    let mut extended = vec![false; tree.inodes.len()];
    for &(i, _) in &order {
        if let Kind::Dir(kids) = &tree.inodes[i].kind {
            nlink[i] += 2;
            for &k in kids.values() {
                match tree.inodes[k].kind {
                    Kind::Dir(_) => nlink[i] += 1,
                    _ => nlink[k] += 1,
                }
            }
            for name in kids.keys() {
                if name.len() > 255 {
                    return Err(ErofsError::LongName(name.len()));
                }
            }
        }
    }
    let mut slot: u64 = 0;
    for &(i, _) in &order {
        let m = tree.inodes[i].meta;
        let size = match &tree.inodes[i].kind {
            Kind::File(d) | Kind::Symlink(d) => d.len() as u64,
            Kind::Dir(_) => 0,
        };
        let ext = m.uid > u16::MAX as u32
            || m.gid > u16::MAX as u32
            || nlink[i] > u16::MAX as u32
            || size > u32::MAX as u64;
        if ext && slot % 2 == 1 {
            slot += 1;
        }
        extended[i] = ext;
        nid[i] = slot;
        slot += if ext { 2 } else { 1 };
    }
    if nid[0] != 0 {
        return Err(ErofsError::TooLarge("the root inode is not first"));
    }
    let meta_blocks = (slot * 32).div_ceil(BLOCK as u64);
    // Directory contents need every nid, so they are built after the slots are known.
    let mut dirs: Vec<Option<Vec<u8>>> = vec![None; tree.inodes.len()];
    for &(i, parent) in &order {
        if let Kind::Dir(kids) = &tree.inodes[i].kind {
            let mut entries: Vec<(Vec<u8>, u64, u8)> = vec![
                (b".".to_vec(), nid[i], FT_DIR),
                (b"..".to_vec(), nid[parent], FT_DIR),
            ];
            for (name, &k) in kids {
                entries.push((name.clone(), nid[k], file_type(&tree.inodes[k].kind)));
            }
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            dirs[i] = Some(dir_blocks(&entries)?);
        }
    }
    // Data blocks, in walk order.
    let mut next_block = META_BLKADDR as u64 + meta_blocks;
    let mut start = vec![0u64; tree.inodes.len()];
    for &(i, _) in &order {
        let len = match &tree.inodes[i].kind {
            Kind::Dir(_) => dirs[i].as_ref().expect("built").len(),
            Kind::File(d) | Kind::Symlink(d) => d.len(),
        } as u64;
        if len > 0 {
            start[i] = next_block;
            next_block += len.div_ceil(BLOCK as u64);
        }
    }
    // Every file takes whole blocks: many tiny files make an image far larger than their
    // bytes. Refuse before allocating it.
    if next_block > MAX_BLOCKS {
        return Err(ErofsError::TooLarge(
            "the image would be over 8 GiB (many small files each take a 4 KiB block)",
        ));
    }
    let blocks = u32::try_from(next_block).map_err(|_| ErofsError::TooLarge("over 2^32 blocks"))?;
    let mut img = vec![0u8; next_block as usize * BLOCK];
    let mut volume_name = [0u8; 16];
    let v = volume.as_bytes();
    volume_name[..v.len().min(16)].copy_from_slice(&v[..v.len().min(16)]);
    let sb = SuperBlock {
        magic: MAGIC.to_le(),
        checksum: 0,
        feature_compat: 0,
        blkszbits: BLKSZBITS,
        sb_extslots: 0,
        root_nid: 0,
        inos: (order.len() as u64).to_le(),
        build_time: 0,
        build_time_nsec: 0,
        blocks: blocks.to_le(),
        meta_blkaddr: META_BLKADDR.to_le(),
        xattr_blkaddr: 0,
        uuid,
        volume_name,
        feature_incompat: 0,
        reserved2: [0; 44],
    };
    img[SUPER_OFFSET..SUPER_OFFSET + 128].copy_from_slice(sb.as_bytes());
    for (n, &(i, _)) in order.iter().enumerate() {
        let inode = &tree.inodes[i];
        let (ftype, data): (u16, &[u8]) = match &inode.kind {
            Kind::Dir(_) => (S_IFDIR, dirs[i].as_deref().expect("built")),
            Kind::File(d) => (S_IFREG, d),
            Kind::Symlink(d) => (S_IFLNK, d),
        };
        let mode = ftype | (inode.meta.perm & 0o7777);
        let blkaddr =
            u32::try_from(start[i]).map_err(|_| ErofsError::TooLarge("over 2^32 blocks"))?;
        let ino = (n as u32 + 1).to_le();
        let off = (META_BLKADDR as usize * BLOCK) + nid[i] as usize * 32;
        if extended[i] {
            let raw = InodeExtended {
                i_format: LAYOUT_EXTENDED.to_le(),
                i_xattr_icount: 0,
                i_mode: mode.to_le(),
                i_reserved: 0,
                i_size: (data.len() as u64).to_le(),
                i_u: blkaddr.to_le(),
                i_ino: ino,
                i_uid: inode.meta.uid.to_le(),
                i_gid: inode.meta.gid.to_le(),
                i_mtime: 0,
                i_mtime_nsec: 0,
                i_nlink: nlink[i].to_le(),
                i_reserved2: [0; 16],
            };
            img[off..off + 64].copy_from_slice(raw.as_bytes());
        } else {
            let raw = InodeCompact {
                i_format: 0,
                i_xattr_icount: 0,
                i_mode: mode.to_le(),
                i_nlink: (nlink[i] as u16).to_le(),
                i_size: (data.len() as u32).to_le(),
                i_reserved: 0,
                i_u: blkaddr.to_le(),
                i_ino: ino,
                i_uid: (inode.meta.uid as u16).to_le(),
                i_gid: (inode.meta.gid as u16).to_le(),
                i_reserved2: 0,
            };
            img[off..off + 32].copy_from_slice(raw.as_bytes());
        }
        if !data.is_empty() {
            let at = start[i] as usize * BLOCK;
            img[at..at + data.len()].copy_from_slice(data);
        }
    }
    Ok((
        img,
        Summary {
            inodes: order.len() as u64,
            blocks,
        },
    ))
}

/// One inode of an image as [`list`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path from the root (`usr/bin/python3`); the root itself is `.`.
    pub path: String,
    /// `i_mode` (type and permission bits).
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    /// SHA-256 of the data (file contents, symlink target or directory blocks).
    pub sha256: [u8; 32],
    pub nid: u64,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Read back an image of the kind [`write`] makes (uncompressed, flat data, 4096-byte
/// blocks): every reachable inode with its path, depth first, names sorted. Bounds are
/// checked everywhere: a damaged image gives an error, never a panic. For `dcr-build
/// compare`, which names the files two roots differ in.
pub fn list(img: &[u8]) -> Result<(Vec<Entry>, u32), ErofsError> {
    use sha2::Digest;
    let bad = |m: String| ErofsError::Corrupt(m);
    if img.len() < SUPER_OFFSET + 128 || le32(img, SUPER_OFFSET) != MAGIC {
        return Err(bad("no EROFS superblock at byte 1024".into()));
    }
    let sb = &img[SUPER_OFFSET..SUPER_OFFSET + 128];
    if sb[12] != BLKSZBITS {
        return Err(bad(format!("block size 2^{} (only 4096 is read)", sb[12])));
    }
    let root = le16(sb, 14) as u64;
    let blocks = le32(sb, 36);
    let meta = le32(sb, 40) as usize * BLOCK;
    let span = |start: usize, len: usize, what: &str| -> Result<&[u8], ErofsError> {
        start
            .checked_add(len)
            .filter(|end| *end <= img.len())
            .map(|end| &img[start..end])
            .ok_or_else(|| bad(format!("{what} at byte {start} (+{len}) is past the end")))
    };
    let inode = |nid: u64| -> Result<(u16, u32, u32, u32, u64, usize), ErofsError> {
        let at = usize::try_from(nid)
            .ok()
            .and_then(|n| n.checked_mul(32))
            .and_then(|o| o.checked_add(meta))
            .ok_or_else(|| bad(format!("inode {nid}: offset overflows")))?;
        let head = span(at, 32, "inode")?;
        let format = le16(head, 0);
        if (format >> 1) & 7 != 0 {
            return Err(bad(format!(
                "inode {nid}: data layout {} (only flat is read)",
                (format >> 1) & 7
            )));
        }
        if le16(head, 2) != 0 {
            return Err(bad(format!("inode {nid}: extended attributes (not read)")));
        }
        if format & 1 == LAYOUT_EXTENDED {
            let e = span(at, 64, "inode")?;
            Ok((
                le16(e, 4),
                le32(e, 24),
                le32(e, 28),
                le32(e, 44),
                le64(e, 8),
                le32(e, 16) as usize,
            ))
        } else {
            Ok((
                le16(head, 4),
                le16(head, 24) as u32,
                le16(head, 26) as u32,
                le16(head, 6) as u32,
                le32(head, 8) as u64,
                le32(head, 16) as usize,
            ))
        }
    };
    let mut out = Vec::new();
    let mut seen_dirs = std::collections::BTreeSet::new();
    let mut hashed: std::collections::HashMap<u64, [u8; 32]> = std::collections::HashMap::new();
    let mut stack = vec![(".".to_string(), root)];
    while let Some((path, nid)) = stack.pop() {
        let (mode, uid, gid, nlink, size, blkaddr) = inode(nid)?;
        let data = if size == 0 {
            &[][..]
        } else {
            let start = blkaddr
                .checked_mul(BLOCK)
                .ok_or_else(|| bad(format!("{path}: block address overflows")))?;
            let len = usize::try_from(size).map_err(|_| bad(format!("{path}: size")))?;
            span(start, len, &format!("{path}: data"))?
        };
        // Names of one inode (hard links) are hashed once.
        let sha256 = match hashed.get(&nid) {
            Some(h) => *h,
            None => {
                let h: [u8; 32] = sha2::Sha256::digest(data).into();
                hashed.insert(nid, h);
                h
            }
        };
        out.push(Entry {
            path: path.clone(),
            mode,
            uid,
            gid,
            nlink,
            size,
            sha256,
            nid,
        });
        if mode & 0o170000 != S_IFDIR {
            continue;
        }
        if !seen_dirs.insert(nid) || seen_dirs.len() > 1 << 24 {
            return Err(bad(format!("{path}: directory {nid} reached twice")));
        }
        let mut kids = Vec::new();
        for chunk in data.chunks(BLOCK) {
            if chunk.len() < 12 {
                return Err(bad(format!(
                    "{path}: a directory block of {} bytes",
                    chunk.len()
                )));
            }
            let n = le16(chunk, 8) as usize / 12;
            if n == 0 || n * 12 > chunk.len() {
                return Err(bad(format!("{path}: {n} entries in a directory block")));
            }
            for i in 0..n {
                let d = &chunk[i * 12..i * 12 + 12];
                let off = le16(d, 8) as usize;
                let end = if i + 1 < n {
                    le16(chunk, (i + 1) * 12 + 8) as usize
                } else {
                    chunk.len()
                };
                if off < n * 12 || off >= end || end > chunk.len() {
                    return Err(bad(format!("{path}: entry {i} has a bad name offset")));
                }
                let mut name = &chunk[off..end];
                while let [rest @ .., 0] = name {
                    name = rest;
                }
                if name == b"." || name == b".." {
                    continue;
                }
                let name = String::from_utf8_lossy(name);
                let child = if path == "." {
                    name.into_owned()
                } else {
                    format!("{path}/{name}")
                };
                kids.push((child, le64(d, 0)));
            }
        }
        kids.sort();
        stack.extend(kids.into_iter().rev());
    }
    Ok((out, blocks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fstree::{Inode, Meta};

    #[test]
    fn what_is_written_reads_back() {
        let mut t = Tree::new();
        for i in 0..300 {
            t.put(
                format!("d/f{i:03}").as_bytes(),
                Inode {
                    meta: Meta {
                        perm: 0o640,
                        uid: i,
                        gid: 70000,
                    },
                    kind: Kind::File(vec![i as u8; i as usize * 50]),
                },
            )
            .unwrap();
        }
        t.link(b"hard", b"d/f007").unwrap();
        let (img, s) = write(&t, [0; 16], "t").unwrap();
        let (entries, blocks) = list(&img).unwrap();
        assert_eq!(blocks, s.blocks);
        assert_eq!(
            entries.len() as u64,
            s.inodes + 1,
            "the hard link listed twice"
        );
        let f = entries.iter().find(|e| e.path == "d/f123").unwrap();
        assert_eq!((f.mode, f.uid, f.gid, f.size), (0o100640, 123, 70000, 6150));
        let h = entries.iter().find(|e| e.path == "hard").unwrap();
        assert_eq!(h.nlink, 2);
        // Damage never panics.
        for cut in [0, 1100, 5000, img.len() / 2] {
            let _ = list(&img[..cut]);
        }
        let mut bad = img.clone();
        bad[BLOCK + 16] = 0xff; // the root's block address
        assert!(list(&bad).is_err());
    }

    #[test]
    fn directory_blocks_split_before_overflowing() {
        // 400 names of 20 bytes: 32 bytes an entry, 128 entries a block.
        let entries: Vec<_> = (0..400)
            .map(|i| (format!("{i:020}").into_bytes(), i as u64, FT_REG_FILE))
            .collect();
        let d = dir_blocks(&entries).unwrap();
        assert_eq!(d.len(), 3 * BLOCK + 16 * 32);
        // The first dirent of the second block points past 128 dirents.
        assert_eq!(u16::from_le_bytes([d[BLOCK + 8], d[BLOCK + 9]]), 128 * 12);
    }

    #[test]
    fn root_is_nid_zero_and_large_ids_use_extended_inodes() {
        let mut t = Tree::new();
        t.put(
            b"f",
            Inode {
                meta: Meta {
                    perm: 0o644,
                    uid: 70000,
                    gid: 0,
                },
                kind: Kind::File(b"x".to_vec()),
            },
        )
        .unwrap();
        let (img, s) = write(&t, [0; 16], "t").unwrap();
        assert_eq!(s.inodes, 2);
        // root compact at slot 0, the file extended at slots 2–3 (aligned).
        let f = BLOCK + 64;
        assert_eq!(img[f] & 1, 1);
        assert_eq!(
            u32::from_le_bytes(img[f + 24..f + 28].try_into().unwrap()),
            70000
        );
    }
}

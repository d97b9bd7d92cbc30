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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fstree::{Inode, Meta};

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

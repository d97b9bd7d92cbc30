//! dm-verity hash trees (format 1, SHA-256, 4096-byte data and hash blocks), as the kernel
//! checks them and `veritysetup format` writes them.
//!
//! Sources: torvalds/linux `Documentation/admin-guide/device-mapper/verity.rst` (the tree:
//! each block hashed as `SHA-256(salt ‖ block)`, digests packed into hash blocks and
//! zero-padded, levels stored root-most first, the root hash = the digest of the single top
//! block) and cryptsetup `lib/verity/verity.c` `struct verity_sb` (the 512-byte superblock
//! in front of the tree, which the kernel ignores and `veritysetup` reads).
//!
//! Layout dcr writes: one device holding `[data blocks][superblock block][hash tree]`; the
//! table names the same device twice with `hash_start_block = data_blocks + 1`.
//! Pure: bytes in, bytes out.

use sha2::{Digest, Sha256};
use zerocopy::{Immutable, IntoBytes, KnownLayout};

/// Data and hash block size.
pub const BLOCK: usize = 4096;
/// SHA-256 digests a hash block holds.
const PER_BLOCK: usize = BLOCK / 32;

/// Errors building a hash tree.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("verity data is {0} bytes: not a positive multiple of {BLOCK}")]
    BadDataSize(usize),
}

/// The verity superblock (cryptsetup `lib/verity/verity.c` `struct verity_sb`, little-endian).
#[repr(C)]
#[derive(IntoBytes, Immutable, KnownLayout)]
struct Superblock {
    signature: [u8; 8],
    version: u32,
    hash_type: u32,
    uuid: [u8; 16],
    algorithm: [u8; 32],
    data_block_size: u32,
    hash_block_size: u32,
    data_blocks: u64,
    salt_size: u16,
    pad1: [u8; 6],
    salt: [u8; 256],
    pad2: [u8; 168],
}
const _: () = assert!(std::mem::size_of::<Superblock>() == 512);

/// A formatted tree: what goes after the data, and what the table and the verifier need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verity {
    /// The superblock block followed by the hash levels (root-most first).
    pub hash_area: Vec<u8>,
    pub root: [u8; 32],
    pub salt: [u8; 32],
    pub uuid: [u8; 16],
    pub data_blocks: u64,
}

impl Verity {
    /// The device-mapper table line for a device holding data and hash area back to back
    /// (`<start> <sectors> verity <version> <data_dev> <hash_dev> <data_bs> <hash_bs>
    /// <num_data_blocks> <hash_start_block> <alg> <root> <salt>`), refusing to read on the
    /// first corrupt block (no `ignore_corruption`).
    pub fn table(&self, dev: &str) -> String {
        format!(
            "0 {} verity 1 {dev} {dev} {BLOCK} {BLOCK} {} {} sha256 {} {}",
            self.data_blocks * (BLOCK as u64 / 512),
            self.data_blocks,
            self.data_blocks + 1,
            hex::encode(self.root),
            hex::encode(self.salt),
        )
    }

    /// The UUID as `veritysetup` prints it (8-4-4-4-12).
    pub fn uuid_string(&self) -> String {
        let h = hex::encode(self.uuid);
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }
}

fn hash_block(salt: &[u8], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Digests of `blocks` packed into zero-padded hash blocks.
fn level_of(salt: &[u8], blocks: &[u8]) -> Vec<u8> {
    let n = blocks.len() / BLOCK;
    let mut out = vec![0u8; n.div_ceil(PER_BLOCK) * BLOCK];
    for (i, b) in blocks.chunks_exact(BLOCK).enumerate() {
        out[i * 32..i * 32 + 32].copy_from_slice(&hash_block(salt, b));
    }
    out
}

/// Build the hash area of `data` (a whole number of 4096-byte blocks) with `salt` and `uuid`
/// written into the superblock.
pub fn format(data: &[u8], salt: [u8; 32], uuid: [u8; 16]) -> Result<Verity, VerityError> {
    if data.is_empty() || !data.len().is_multiple_of(BLOCK) {
        return Err(VerityError::BadDataSize(data.len()));
    }
    let data_blocks = (data.len() / BLOCK) as u64;
    // Level 0 hashes the data; each next level hashes the one below until one block is left.
    // The tree has the fewest levels L with 128^L >= data blocks: none for a single data
    // block, whose own digest is the root (as the kernel and veritysetup count).
    let mut levels: Vec<Vec<u8>> = Vec::new();
    let mut top: &[u8] = data;
    while top.len() > BLOCK {
        levels.push(level_of(&salt, top));
        top = levels.last().expect("just pushed");
    }
    let root = hash_block(&salt, top);
    let mut algorithm = [0u8; 32];
    algorithm[..6].copy_from_slice(b"sha256");
    let mut salt_field = [0u8; 256];
    salt_field[..32].copy_from_slice(&salt);
    let sb = Superblock {
        signature: *b"verity\0\0",
        version: 1u32.to_le(),
        hash_type: 1u32.to_le(),
        uuid,
        algorithm,
        data_block_size: (BLOCK as u32).to_le(),
        hash_block_size: (BLOCK as u32).to_le(),
        data_blocks: data_blocks.to_le(),
        salt_size: 32u16.to_le(),
        pad1: [0; 6],
        salt: salt_field,
        pad2: [0; 168],
    };
    let mut hash_area = vec![0u8; BLOCK];
    hash_area[..512].copy_from_slice(sb.as_bytes());
    for level in levels.iter().rev() {
        hash_area.extend_from_slice(level);
    }
    Ok(Verity {
        hash_area,
        root,
        salt,
        uuid,
        data_blocks,
    })
}

/// A salt and UUID that follow from `seed` (for dcr: the OCI manifest digest), so a rebuild
/// gives the same tree while two images never share a salt.
pub fn salt_and_uuid(seed: &[u8]) -> ([u8; 32], [u8; 16]) {
    let salt: [u8; 32] = Sha256::new()
        .chain_update(b"dcr verity salt v1\0")
        .chain_update(seed)
        .finalize()
        .into();
    let u: [u8; 32] = Sha256::new()
        .chain_update(b"dcr verity uuid v1\0")
        .chain_update(seed)
        .finalize()
        .into();
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&u[..16]);
    // RFC 9562 version 8 (vendor-specific), variant 10.
    uuid[6] = (uuid[6] & 0x0f) | 0x80;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    (salt, uuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_partial_blocks() {
        assert!(format(&[], [0; 32], [0; 16]).is_err());
        assert!(format(&[0; 4097], [0; 32], [0; 16]).is_err());
    }

    #[test]
    fn one_data_block_is_its_own_root() {
        let v = format(&[3u8; BLOCK], [1; 32], [2; 16]).unwrap();
        assert_eq!(v.hash_area.len(), BLOCK);
        assert_eq!(v.root, hash_block(&[1; 32], &[3u8; BLOCK]));
    }

    #[test]
    fn levels_shrink_to_one_block() {
        // 129 data blocks: level 0 = 2 hash blocks, level 1 = 1 block.
        let v = format(&vec![7u8; 129 * BLOCK], [1; 32], [2; 16]).unwrap();
        assert_eq!(v.hash_area.len(), BLOCK * (1 + 1 + 2));
        // The root is the digest of the top block, which comes first after the superblock.
        assert_eq!(v.root, hash_block(&v.salt, &v.hash_area[BLOCK..2 * BLOCK]));
    }
}

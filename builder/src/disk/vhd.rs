//! The fixed-VHD footer: Microsoft "Virtual Hard Disk Image Format Specification" 1.0 (hard
//! disk footer, CHS geometry algorithm, checksum).

use sha2::{Digest, Sha256};
use zerocopy::big_endian as be;
use zerocopy::{Immutable, IntoBytes, KnownLayout};

use super::{MIB, SECTOR};

/// VHD footer timestamps count seconds from 2000-01-01T00:00:00Z.
const VHD_EPOCH: u64 = 946_684_800;
/// The largest geometry the VHD spec's algorithm yields (65535 × 16 × 255 sectors).
pub(super) const VHD_MAX_CHS_SECTORS: u64 = 65535 * 16 * 255;

/// VHD spec "Hard Disk Footer Format" (all fields big-endian).
#[derive(IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct VhdFooter {
    cookie: [u8; 8],
    features: be::U32,
    file_format_version: be::U32,
    data_offset: be::U64,
    time_stamp: be::U32,
    creator_application: [u8; 4],
    creator_version: be::U32,
    creator_host_os: [u8; 4],
    original_size: be::U64,
    current_size: be::U64,
    cylinders: be::U16,
    heads: u8,
    sectors_per_track: u8,
    disk_type: be::U32,
    checksum: be::U32,
    unique_id: [u8; 16],
    saved_state: u8,
    reserved: [u8; 427],
}
const _: () = assert!(std::mem::size_of::<VhdFooter>() == 512);

/// VHD spec "CHS calculation": (cylinders, heads, sectors per track) for `sectors`.
pub fn vhd_geometry(sectors: u64) -> (u16, u8, u8) {
    let total = sectors.min(VHD_MAX_CHS_SECTORS);
    let (spt, heads, cth);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        let mut s = 17;
        let mut c = total / s;
        let mut h = c.div_ceil(1024);
        if h < 4 {
            h = 4;
        }
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads) as u16, heads as u8, spt as u8)
}

/// Whether a disk of `mib` MiB has a CHS geometry covering exactly its size. Readers that
/// size a VHD by its geometry (Virtual PC, QEMU for unknown creators) then see every byte,
/// and readers that use the footer's size (Hyper-V, Azure) agree with them.
pub fn exact_chs(mib: u64) -> bool {
    let sectors = mib * MIB / SECTOR;
    let (c, h, s) = vhd_geometry(sectors);
    u64::from(c) * u64::from(h) * u64::from(s) == sectors
}

/// The 512-byte fixed-VHD footer for a raw disk of `size` bytes (appended after the raw
/// bytes to make the VHD). Creator "dcr ", host OS "Wi2k" (what Azure's own tools write).
pub fn vhd_footer(size: u64, epoch: u64, seed: &[u8; 32]) -> [u8; 512] {
    let (c, h, s) = vhd_geometry(size / SECTOR);
    let id = Sha256::new()
        .chain_update(seed)
        .chain_update(b"vhd-unique-id")
        .finalize();
    let mut unique_id = [0u8; 16];
    unique_id.copy_from_slice(&id[..16]);
    let mut f = VhdFooter {
        cookie: *b"conectix",
        features: be::U32::new(2),
        file_format_version: be::U32::new(0x0001_0000),
        data_offset: be::U64::new(u64::MAX),
        time_stamp: be::U32::new(epoch.saturating_sub(VHD_EPOCH).min(u64::from(u32::MAX)) as u32),
        creator_application: *b"dcr ",
        creator_version: be::U32::new(0x0001_0000),
        creator_host_os: *b"Wi2k",
        original_size: be::U64::new(size),
        current_size: be::U64::new(size),
        cylinders: be::U16::new(c),
        heads: h,
        sectors_per_track: s,
        disk_type: be::U32::new(2),
        checksum: be::U32::ZERO,
        unique_id,
        saved_state: 0,
        reserved: [0; 427],
    };
    let sum: u32 = f.as_bytes().iter().map(|b| u32::from(*b)).sum();
    f.checksum = be::U32::new(!sum);
    let mut out = [0u8; 512];
    out.copy_from_slice(f.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_checksum_and_fields() {
        let f = vhd_footer(155 * MIB, 1_700_000_000, &[7; 32]);
        assert_eq!(&f[..8], b"conectix");
        let stored = u32::from_be_bytes(f[64..68].try_into().unwrap());
        let mut z = f;
        z[64..68].fill(0);
        let sum: u32 = z.iter().map(|b| u32::from(*b)).sum();
        assert_eq!(stored, !sum);
        assert_eq!(u64::from_be_bytes(f[48..56].try_into().unwrap()), 155 * MIB);
        assert_eq!(u32::from_be_bytes(f[60..64].try_into().unwrap()), 2);
        let (c, h, s) = (u16::from_be_bytes([f[56], f[57]]), f[58], f[59]);
        assert_eq!(u64::from(c) * u64::from(h) * u64::from(s) * 512, 155 * MIB);
    }
}

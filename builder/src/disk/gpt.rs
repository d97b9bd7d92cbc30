//! The partition table: protective MBR (UEFI 2.10 §5.2.3) and GPT header and entries
//! (UEFI 2.10 §5.3): the EFI System Partition, then the oci workloads' root devices.

use sha2::{Digest, Sha256};
use uuid::Uuid;
use zerocopy::little_endian as le;
use zerocopy::{Immutable, IntoBytes, KnownLayout};

use super::SECTOR;

/// GPT: 128 entries of 128 bytes (32 sectors), the minimum the UEFI spec requires.
const ENTRIES: u32 = 128;
const ENTRY_SIZE: u32 = 128;
const ENTRY_SECTORS: u64 = (ENTRIES as u64 * ENTRY_SIZE as u64) / SECTOR;
/// EFI System Partition (UEFI 2.10 table 5.14).
const ESP_TYPE: Guid = Guid::from_uuid(uuid::uuid!("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"));
/// Linux filesystem data (the Discoverable Partitions Specification's generic Linux type): an
/// oci workload's root device (EROFS + dm-verity), found by the guest by its verity UUID.
pub(super) const LINUX_DATA_TYPE: Guid =
    Guid::from_uuid(uuid::uuid!("0FC63DAF-8483-4772-8E79-3D69D8477DE4"));

/// One partition entry to write.
pub(super) struct Partition<'a> {
    pub type_guid: Guid,
    pub guid: Guid,
    pub first: u64,
    pub last: u64,
    /// At most 36 UTF-16 code units are kept.
    pub name: &'a str,
}

/// A GUID in its on-disk (mixed-endian) byte order: UEFI 2.10 appendix A, the first three
/// fields little-endian (what [`Uuid::to_bytes_le`] gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, Immutable, KnownLayout)]
#[repr(transparent)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The on-disk bytes of `u`.
    pub const fn from_uuid(u: Uuid) -> Guid {
        Guid(u.to_bytes_le())
    }

    /// The UUID these on-disk bytes encode.
    pub const fn to_uuid(self) -> Uuid {
        Uuid::from_bytes_le(self.0)
    }

    /// A name-derived GUID: the first 16 bytes of SHA-256(seed ‖ label), marked as an
    /// RFC 9562 version 8 (vendor-specific) UUID with the RFC variant.
    pub fn derive(seed: &[u8; 32], label: &str) -> Guid {
        let h = Sha256::new()
            .chain_update(seed)
            .chain_update(label.as_bytes())
            .finalize();
        let mut u = [0u8; 16];
        u.copy_from_slice(&h[..16]);
        Guid::from_uuid(uuid::Builder::from_custom_bytes(u).into_uuid())
    }

    /// Canonical text form (upper case, as sgdisk and the UEFI shell print it).
    pub fn to_text(&self) -> String {
        format!("{:X}", self.to_uuid())
    }
}

/// UEFI 2.10 §5.3.2 table 5.9: GPT header (92 bytes; the rest of the sector is zero).
#[derive(IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct GptHeader {
    signature: [u8; 8],
    revision: le::U32,
    header_size: le::U32,
    header_crc32: le::U32,
    reserved: le::U32,
    my_lba: le::U64,
    alternate_lba: le::U64,
    first_usable_lba: le::U64,
    last_usable_lba: le::U64,
    disk_guid: Guid,
    partition_entry_lba: le::U64,
    number_of_partition_entries: le::U32,
    size_of_partition_entry: le::U32,
    partition_entry_array_crc32: le::U32,
}
const _: () = assert!(std::mem::size_of::<GptHeader>() == 92);

/// UEFI 2.10 §5.3.3 table 5.10: GPT partition entry.
#[derive(IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct GptEntry {
    partition_type_guid: Guid,
    unique_partition_guid: Guid,
    starting_lba: le::U64,
    ending_lba: le::U64,
    attributes: le::U64,
    partition_name: [le::U16; 36],
}
const _: () = assert!(std::mem::size_of::<GptEntry>() == ENTRY_SIZE as usize);

/// UEFI 2.10 §5.2.1 table 5.2: one MBR partition record.
#[derive(IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct MbrPartition {
    boot_indicator: u8,
    starting_chs: [u8; 3],
    os_type: u8,
    ending_chs: [u8; 3],
    starting_lba: le::U32,
    size_in_lba: le::U32,
}
const _: () = assert!(std::mem::size_of::<MbrPartition>() == 16);

/// The ESP's entry.
pub(super) fn esp(guid: Guid, first: u64, last: u64) -> Partition<'static> {
    Partition {
        type_guid: ESP_TYPE,
        guid,
        first,
        last,
        name: "EFI System Partition",
    }
}

/// Write the protective MBR, both GPT headers and both entry arrays into `raw` (the whole
/// disk): `parts` in order (at most 128; the ESP first).
pub(super) fn write(raw: &mut [u8], disk_guid: Guid, parts: &[Partition<'_>]) {
    let total = raw.len() as u64 / SECTOR;

    // Partition entries (the rest zero) and both headers.
    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (slot, p) in entries
        .chunks_exact_mut(ENTRY_SIZE as usize)
        .zip(parts.iter())
    {
        let mut name = [le::U16::ZERO; 36];
        for (i, c) in p.name.encode_utf16().take(36).enumerate() {
            name[i] = le::U16::new(c);
        }
        let e = GptEntry {
            partition_type_guid: p.type_guid,
            unique_partition_guid: p.guid,
            starting_lba: le::U64::new(p.first),
            ending_lba: le::U64::new(p.last),
            attributes: le::U64::ZERO,
            partition_name: name,
        };
        slot.copy_from_slice(e.as_bytes());
    }
    let entries_crc = crc32fast::hash(&entries);
    let header = |my: u64, alt: u64, entry_lba: u64| -> Vec<u8> {
        let mut h = GptHeader {
            signature: *b"EFI PART",
            revision: le::U32::new(0x0001_0000),
            header_size: le::U32::new(92),
            header_crc32: le::U32::ZERO,
            reserved: le::U32::ZERO,
            my_lba: le::U64::new(my),
            alternate_lba: le::U64::new(alt),
            first_usable_lba: le::U64::new(2 + ENTRY_SECTORS),
            last_usable_lba: le::U64::new(total - 2 - ENTRY_SECTORS),
            disk_guid,
            partition_entry_lba: le::U64::new(entry_lba),
            number_of_partition_entries: le::U32::new(ENTRIES),
            size_of_partition_entry: le::U32::new(ENTRY_SIZE),
            partition_entry_array_crc32: le::U32::new(entries_crc),
        };
        h.header_crc32 = le::U32::new(crc32fast::hash(h.as_bytes()));
        h.as_bytes().to_vec()
    };
    let put = |raw: &mut [u8], lba: u64, bytes: &[u8]| {
        let at = (lba * SECTOR) as usize;
        raw[at..at + bytes.len()].copy_from_slice(bytes);
    };
    put(raw, 1, &header(1, total - 1, 2));
    put(raw, 2, &entries);
    put(raw, total - 1 - ENTRY_SECTORS, &entries);
    put(
        raw,
        total - 1,
        &header(total - 1, 1, total - 1 - ENTRY_SECTORS),
    );

    // Protective MBR (UEFI 2.10 §5.2.3): one 0xEE record over the disk (capped at 2^32−1).
    let pmbr = MbrPartition {
        boot_indicator: 0,
        starting_chs: [0x00, 0x02, 0x00],
        os_type: 0xEE,
        ending_chs: [0xFF, 0xFF, 0xFF],
        starting_lba: le::U32::new(1),
        size_in_lba: le::U32::new((total - 1).min(u64::from(u32::MAX)) as u32),
    };
    raw[446..462].copy_from_slice(pmbr.as_bytes());
    raw[510] = 0x55;
    raw[511] = 0xAA;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_mixed_endian_on_disk_and_upper_case_in_text() {
        // UEFI 2.10 table 5.14's ESP type GUID and its on-disk bytes.
        assert_eq!(
            ESP_TYPE.0,
            [
                0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
                0xC9, 0x3B
            ]
        );
        assert_eq!(ESP_TYPE.to_text(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        // A derived GUID: version 8, RFC variant; the value the hand-written derivation gave
        // (so disks built before and after the move to `uuid` have the same identifiers).
        let g = Guid::derive(&[7; 32], "disk-guid");
        assert_eq!(hex::encode(g.0), "94eca27bfc0cfa87a7f887a262588489");
        assert_eq!(g.to_text(), "7BA2EC94-0CFC-87FA-A7F8-87A262588489");
        assert_eq!(g.to_uuid().get_version_num(), 8);
        assert_eq!(g.to_uuid().get_variant(), uuid::Variant::RFC4122);
    }
}

//! Bootable disk images for cloud confidential VMs (Azure): a GPT disk whose first partition
//! is an EFI System Partition (FAT32) holding the UKI as `\EFI\BOOT\BOOTX64.EFI`, followed
//! by one partition a `kind = "oci"` workload (its root device, EROFS + dm-verity, as
//! `rootfs-<name>.img`), as raw bytes and as a fixed VHD. Pure: bytes in, bytes out; every identifier and timestamp is
//! derived from the inputs, so two builds are byte-identical.
//!
//! One module a format: `gpt` (UEFI 2.10 §5.2.3 protective MBR and §5.3 GPT header and
//! entries), `fat32` (Microsoft "FAT: General Overview of On-Disk Format" 1.03), `vhd`
//! (Microsoft "Virtual Hard Disk Image Format Specification" 1.0: hard disk footer, CHS
//! geometry algorithm, checksum); `inspect` reads a built disk back.

use sha2::{Digest, Sha256};

mod fat32;
mod gpt;
mod inspect;
mod vhd;

pub use fat32::{fat_time, FatTime};
pub use gpt::Guid;
pub use inspect::{inspect, DiskFacts};
pub use vhd::{exact_chs, vhd_footer, vhd_geometry};

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk.size_mib: {0}")]
    Size(String),
}

/// What the disk holds and how its identifiers are derived.
#[derive(Debug, Clone)]
pub struct DiskInput<'a> {
    /// The UKI, written as `\EFI\BOOT\BOOTX64.EFI`.
    pub uki: &'a [u8],
    /// Seed of every identifier (disk GUID, partition GUID, FAT serial, VHD unique id).
    pub seed: [u8; 32],
    /// FAT and VHD timestamps (seconds since the Unix epoch).
    pub epoch: u64,
    /// Disk size in MiB; `None`: the smallest valid size that holds the UKI and the roots.
    pub size_mib: Option<u64>,
    /// The oci workloads' root devices (workload name, bytes), one partition each after the
    /// ESP, in this order.
    pub roots: Vec<(&'a str, &'a [u8])>,
}

/// A built disk and the facts about it (recorded in measurements.json).
#[derive(Debug, Clone)]
pub struct Disk {
    pub raw: Vec<u8>,
    pub size_mib: u64,
    pub disk_guid: Guid,
    pub esp_guid: Guid,
    pub esp_first_lba: u64,
    pub esp_last_lba: u64,
    pub fat_serial: u32,
    pub cluster_size: u32,
    /// The root partitions: (workload name, first LBA, last LBA).
    pub roots: Vec<(String, u64, u64)>,
}

/// MiB a root device's partition takes (its bytes rounded up to whole MiB).
fn root_mib(len: usize) -> u64 {
    (len as u64).div_ceil(MIB)
}

/// The seed of a recipe's disk identifiers: SHA-256 over a domain label, the recipe name and
/// version and the UKI's SHA-256 (so another UKI gets other GUIDs).
pub fn seed(name: &str, version: &str, uki: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"dcr/v1/disk\0")
        .chain_update(name.as_bytes())
        .chain_update([0])
        .chain_update(version.as_bytes())
        .chain_update([0])
        .chain_update(Sha256::digest(uki))
        .finalize()
        .into()
}

/// The size (MiB) used: `requested`, checked, or the smallest valid size for `uki_len` and
/// `roots_mib` MiB of root partitions.
pub fn disk_size_mib(
    uki_len: u64,
    roots_mib: u64,
    requested: Option<u64>,
) -> Result<u64, DiskError> {
    // ESP = disk − 1 MiB (GPT + alignment) − 1 MiB (backup GPT, alignment) − the roots.
    let need_esp = (uki_len + 2 * MIB).max(66_000 * 1024);
    let min_mib = need_esp.div_ceil(MIB) + 2 + roots_mib;
    match requested {
        Some(m) => {
            if m < min_mib {
                return Err(DiskError::Size(format!(
                    "{m} MiB is too small: the UKI ({uki_len} bytes), a FAT32 ESP and {roots_mib} MiB of oci roots need at least {min_mib} MiB"
                )));
            }
            if m > 2 * 1024 * 1024 {
                return Err(DiskError::Size(format!(
                    "{m} MiB is over the 2 TiB VHD limit"
                )));
            }
            if !exact_chs(m) {
                let next = (m..).find(|n| exact_chs(*n)).unwrap_or(m);
                return Err(DiskError::Size(format!(
                    "{m} MiB has no exact VHD CHS geometry (readers would disagree on the size); {next} MiB has"
                )));
            }
            Ok(m)
        }
        None => Ok((min_mib..)
            .find(|n| exact_chs(*n))
            .expect("exact sizes recur every 63 MiB")),
    }
}

/// Build the raw GPT disk.
pub fn build(input: &DiskInput) -> Result<Disk, DiskError> {
    let roots_mib: u64 = input.roots.iter().map(|(_, b)| root_mib(b.len())).sum();
    let size_mib = disk_size_mib(input.uki.len() as u64, roots_mib, input.size_mib)?;
    let total = size_mib * MIB / SECTOR;
    let mut raw = vec![0u8; (size_mib * MIB) as usize];
    let disk_guid = Guid::derive(&input.seed, "disk-guid");
    let esp_guid = Guid::derive(&input.seed, "esp-guid");
    let serial_h = Sha256::new()
        .chain_update(input.seed)
        .chain_update(b"fat-serial")
        .finalize();
    let fat_serial = u32::from_le_bytes([serial_h[0], serial_h[1], serial_h[2], serial_h[3]]);

    // ESP: from 1 MiB to the roots (or to 1 MiB before the end: the last MiB holds the backup
    // GPT); each root on whole MiB after it.
    let first = MIB / SECTOR;
    let last = total - MIB / SECTOR - roots_mib * (MIB / SECTOR) - 1;
    let esp_bytes = (last - first + 1) * SECTOR;
    let cluster = fat32::cluster_size(esp_bytes).ok_or_else(|| {
        DiskError::Size(format!(
            "an ESP of {esp_bytes} bytes is too small for FAT32"
        ))
    })?;
    {
        let esp = &mut raw[(first * SECTOR) as usize..((last + 1) * SECTOR) as usize];
        fat32::write_esp(esp, first, input, fat_serial, cluster)?;
    }
    let mut parts = vec![gpt::esp(esp_guid, first, last)];
    let mut roots = Vec::new();
    let mut at = last + 1;
    let labels: Vec<String> = input
        .roots
        .iter()
        .map(|(name, _)| format!("rootfs-{name}"))
        .collect();
    for ((name, bytes), label) in input.roots.iter().zip(&labels) {
        let sectors = root_mib(bytes.len()) * (MIB / SECTOR);
        let start = (at * SECTOR) as usize;
        raw[start..start + bytes.len()].copy_from_slice(bytes);
        parts.push(gpt::Partition {
            type_guid: gpt::LINUX_DATA_TYPE,
            guid: Guid::derive(&input.seed, &format!("root-guid\0{name}")),
            first: at,
            last: at + sectors - 1,
            name: label,
        });
        roots.push((name.to_string(), at, at + sectors - 1));
        at += sectors;
    }
    gpt::write(&mut raw, disk_guid, &parts);

    Ok(Disk {
        raw,
        size_mib,
        disk_guid,
        esp_guid,
        esp_first_lba: first,
        esp_last_lba: last,
        fat_serial,
        cluster_size: cluster,
        roots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(uki: &[u8]) -> DiskInput<'_> {
        DiskInput {
            uki,
            seed: seed("t", "1", uki),
            epoch: 1_700_000_000,
            size_mib: None,
            roots: Vec::new(),
        }
    }

    #[test]
    fn geometry_follows_the_vhd_spec_examples() {
        // 127 GiB and more: the spec's maximum geometry.
        assert_eq!(vhd_geometry(vhd::VHD_MAX_CHS_SECTORS + 5), (65535, 16, 255));
        // Exact sizes exist and the default picks one.
        assert!(exact_chs(17) && exact_chs(155) && exact_chs(252));
        assert!(!exact_chs(64) && !exact_chs(256));
        assert_eq!(disk_size_mib(14 << 20, 0, None).unwrap(), 155);
        assert!(disk_size_mib(14 << 20, 0, Some(64)).is_err());
        assert!(disk_size_mib(14 << 20, 0, Some(256))
            .unwrap_err()
            .to_string()
            .contains("315"));
        assert!(disk_size_mib(200 << 20, 0, Some(155)).is_err());
    }

    #[test]
    fn deterministic_and_well_formed() {
        let uki = vec![0x5au8; 3 << 20];
        let a = build(&input(&uki)).unwrap();
        let b = build(&input(&uki)).unwrap();
        assert!(a.raw == b.raw);
        assert_eq!(a.raw.len() as u64, a.size_mib * MIB);
        // Primary and backup headers are valid and point at each other.
        let total = a.raw.len() as u64 / SECTOR;
        let hdr = |lba: u64| &a.raw[(lba * SECTOR) as usize..(lba * SECTOR) as usize + 92];
        for (lba, alt) in [(1, total - 1), (total - 1, 1)] {
            let h = hdr(lba);
            assert_eq!(&h[..8], b"EFI PART");
            let mut z = h.to_vec();
            z[16..20].fill(0);
            assert_eq!(crc32fast::hash(&z).to_le_bytes(), h[16..20]);
            assert_eq!(u64::from_le_bytes(h[24..32].try_into().unwrap()), lba);
            assert_eq!(u64::from_le_bytes(h[32..40].try_into().unwrap()), alt);
        }
        // A changed UKI byte changes the disk (content and GUIDs).
        let mut uki2 = uki.clone();
        uki2[100] ^= 1;
        let c = build(&input(&uki2)).unwrap();
        assert_ne!(c.disk_guid, a.disk_guid);
        // Boot sector and its backup, FSInfo signatures (fsck.fat and mtools check the rest
        // in tests/tests/disk.rs).
        let esp = &a.raw[(a.esp_first_lba * SECTOR) as usize..];
        assert_eq!(&esp[82..90], b"FAT32   ");
        assert_eq!(&esp[510..512], &[0x55, 0xAA]);
        assert_eq!(esp[..512], esp[6 * 512..7 * 512]);
        assert_eq!(&esp[512..516], &0x4161_5252u32.to_le_bytes());
    }

    #[test]
    fn inspect_reads_back_what_build_wrote() {
        let uki: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
        let d = build(&input(&uki)).unwrap();
        let f = inspect(&d.raw).unwrap();
        assert_eq!(
            (f.disk_guid, f.esp_guid, f.fat_serial),
            (d.disk_guid, d.esp_guid, d.fat_serial)
        );
        assert_eq!(f.files.len(), 1);
        assert_eq!(f.files[0].0, "EFI/BOOT/BOOTX64.EFI");
        assert!(f.files[0].1 == uki);
        let mut vhd = d.raw.clone();
        vhd.extend_from_slice(&vhd_footer(d.raw.len() as u64, 1_700_000_000, &[3; 32]));
        let g = inspect(&vhd).unwrap();
        assert_eq!(g.vhd.as_ref().unwrap().0, "dcr ");
        assert_eq!(g.files, f.files);
        let mut broken = d.raw.clone();
        broken[512 + 60] ^= 1;
        assert!(inspect(&broken).unwrap_err().to_string().contains("CRC"));
        assert!(inspect(&d.raw[..600]).is_err());
        assert!(f.partitions.is_empty());
    }

    #[test]
    fn roots_follow_the_esp_on_whole_mib() {
        let uki = vec![0x11u8; 3 << 20];
        let a: Vec<u8> = (0..(5 << 20) + 123).map(|i| (i % 241) as u8).collect();
        let b = vec![0x77u8; 4096];
        let mut i = input(&uki);
        i.roots = vec![("analytics", &a), ("x", &b)];
        let d = build(&i).unwrap();
        // Two more MiB for `b`, six for `a`, on top of the minimum for the UKI alone.
        assert_eq!(
            d.size_mib,
            disk_size_mib(uki.len() as u64, 7, None).unwrap()
        );
        let total = d.raw.len() as u64 / SECTOR;
        assert_eq!(
            d.roots[0],
            (
                "analytics".to_string(),
                d.esp_last_lba + 1,
                d.esp_last_lba + 6 * 2048
            )
        );
        assert_eq!(d.roots[1].1, d.roots[0].2 + 1);
        assert_eq!(d.roots[1].2, total - 2048 - 1);
        let at = |lba: u64| (lba * SECTOR) as usize;
        assert!(d.raw[at(d.roots[0].1)..at(d.roots[0].1) + a.len()] == a[..]);
        assert!(d.raw[at(d.roots[1].1)..at(d.roots[1].1) + b.len()] == b[..]);
        let f = inspect(&d.raw).unwrap();
        assert_eq!(f.files.len(), 1);
        assert_eq!(f.partitions.len(), 2);
        assert_eq!(f.partitions[0].0, "rootfs-analytics");
        assert_eq!(
            (f.partitions[1].1, f.partitions[1].2),
            (d.roots[1].1, d.roots[1].2)
        );
        let mut padded = b.clone();
        padded.resize(1 << 20, 0);
        assert_eq!(f.partitions[1].3, <[u8; 32]>::from(Sha256::digest(&padded)));
        // Another root changes the disk; the same inputs give the same bytes.
        assert!(build(&i).unwrap().raw == d.raw);
        let b2 = vec![0x78u8; 4096];
        i.roots = vec![("analytics", &a), ("x", &b2)];
        assert!(build(&i).unwrap().raw != d.raw);
        // A size that cannot hold the roots is refused, naming them.
        // (The UKI alone needs 67 MiB: 64.5 MiB of FAT32 at least, GPT and alignment.)
        let e = disk_size_mib(uki.len() as u64, 7, Some(70)).unwrap_err();
        assert!(e.to_string().contains("7 MiB of oci roots"), "{e}");
    }
}

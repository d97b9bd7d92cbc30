//! Bootable disk images for cloud confidential VMs (Azure): a GPT disk whose only partition
//! is an EFI System Partition (FAT32) holding the UKI as `\EFI\BOOT\BOOTX64.EFI`, as raw
//! bytes and as a fixed VHD. Pure: bytes in, bytes out; every identifier and timestamp is
//! derived from the inputs, so two builds are byte-identical.
//!
//! Formats: UEFI 2.10 §5.2.3 (protective MBR) and §5.3 (GPT header and entries);
//! Microsoft "FAT: General Overview of On-Disk Format" 1.03 (FAT32); Microsoft
//! "Virtual Hard Disk Image Format Specification" 1.0 (hard disk footer, CHS geometry
//! algorithm, checksum).

use sha2::{Digest, Sha256};
use zerocopy::big_endian as be;
use zerocopy::little_endian as le;
use zerocopy::{Immutable, IntoBytes, KnownLayout};

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
/// GPT: 128 entries of 128 bytes (32 sectors), the minimum the UEFI spec requires.
const ENTRIES: u32 = 128;
const ENTRY_SIZE: u32 = 128;
const ENTRY_SECTORS: u64 = (ENTRIES as u64 * ENTRY_SIZE as u64) / SECTOR;
/// "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", EFI System Partition (UEFI 2.10 table 5.14).
const ESP_TYPE: Guid = Guid::parse_const(
    0xC12A7328,
    0xF81F,
    0x11D2,
    [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B],
);
/// VHD footer timestamps count seconds from 2000-01-01T00:00:00Z.
const VHD_EPOCH: u64 = 946_684_800;
/// The largest geometry the VHD spec's algorithm yields (65535 × 16 × 255 sectors).
const VHD_MAX_CHS_SECTORS: u64 = 65535 * 16 * 255;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk.size_mib: {0}")]
    Size(String),
}

/// A GUID in its on-disk (mixed-endian) byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, Immutable, KnownLayout)]
#[repr(transparent)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    const fn parse_const(a: u32, b: u16, c: u16, d: [u8; 8]) -> Guid {
        let a = a.to_le_bytes();
        let b = b.to_le_bytes();
        let c = c.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5],
            d[6], d[7],
        ])
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
        u[6] = (u[6] & 0x0f) | 0x80;
        u[8] = (u[8] & 0x3f) | 0x80;
        // UUID text order → GPT byte order (first three fields little-endian).
        let mut g = u;
        g[0..4].reverse();
        g[4..6].reverse();
        g[6..8].reverse();
        Guid(g)
    }

    /// Canonical text form (upper case, as sgdisk and the UEFI shell print it).
    pub fn to_text(&self) -> String {
        let g = &self.0;
        format!(
            "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{}",
            g[3],
            g[2],
            g[1],
            g[0],
            g[5],
            g[4],
            g[7],
            g[6],
            g[8],
            g[9],
            g[10..]
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<String>()
        )
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

/// What the disk holds and how its identifiers are derived.
#[derive(Debug, Clone)]
pub struct DiskInput<'a> {
    /// The UKI, written as `\EFI\BOOT\BOOTX64.EFI`.
    pub uki: &'a [u8],
    /// Seed of every identifier (disk GUID, partition GUID, FAT serial, VHD unique id).
    pub seed: [u8; 32],
    /// FAT and VHD timestamps (seconds since the Unix epoch).
    pub epoch: u64,
    /// Disk size in MiB; `None`: the smallest valid size that holds the UKI.
    pub size_mib: Option<u64>,
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

/// FAT32 needs at least 65,525 clusters; pick the largest cluster (≤ 4 KiB) that gives
/// that with a margin.
fn cluster_size(esp_bytes: u64) -> Option<u32> {
    [4096u32, 2048, 1024, 512]
        .into_iter()
        .find(|c| esp_bytes / u64::from(*c) >= 66_000)
}

/// The size (MiB) used: `requested`, checked, or the smallest valid size for `uki_len`.
pub fn disk_size_mib(uki_len: u64, requested: Option<u64>) -> Result<u64, DiskError> {
    // ESP = disk − 1 MiB (GPT + alignment) − 1 MiB (backup GPT, alignment).
    let need_esp = (uki_len + 2 * MIB).max(66_000 * 1024);
    let min_mib = need_esp.div_ceil(MIB) + 2;
    match requested {
        Some(m) => {
            if m < min_mib {
                return Err(DiskError::Size(format!(
                    "{m} MiB is too small: the UKI ({uki_len} bytes) and a FAT32 ESP need at least {min_mib} MiB"
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

/// A FAT timestamp: (date, time) as the directory entry stores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FatTime {
    pub date: u16,
    pub time: u16,
}

/// Unix seconds → FAT date and time (UTC, 2-second resolution; FAT cannot represent dates
/// before 1980 or after 2107, which are clamped).
pub fn fat_time(epoch: u64) -> FatTime {
    let (y, m, d) = civil_from_days((epoch / 86_400) as i64);
    let secs = epoch % 86_400;
    let (y, m, d, secs) = if y < 1980 {
        (1980, 1, 1, 0)
    } else if y > 2107 {
        (2107, 12, 31, 86_398)
    } else {
        (y, m, d, secs)
    };
    FatTime {
        date: (((y - 1980) as u16) << 9) | ((m as u16) << 5) | d as u16,
        time: (((secs / 3600) as u16) << 11)
            | (((secs / 60 % 60) as u16) << 5)
            | ((secs % 60) / 2) as u16,
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Build the raw GPT disk.
pub fn build(input: &DiskInput) -> Result<Disk, DiskError> {
    let size_mib = disk_size_mib(input.uki.len() as u64, input.size_mib)?;
    let total = size_mib * MIB / SECTOR;
    let mut raw = vec![0u8; (size_mib * MIB) as usize];
    let disk_guid = Guid::derive(&input.seed, "disk-guid");
    let esp_guid = Guid::derive(&input.seed, "esp-guid");
    let serial_h = Sha256::new()
        .chain_update(input.seed)
        .chain_update(b"fat-serial")
        .finalize();
    let fat_serial = u32::from_le_bytes([serial_h[0], serial_h[1], serial_h[2], serial_h[3]]);

    // ESP: from 1 MiB to 1 MiB before the end (the last MiB holds the backup GPT).
    let first = MIB / SECTOR;
    let last = total - MIB / SECTOR - 1;
    let esp_bytes = (last - first + 1) * SECTOR;
    let cluster = cluster_size(esp_bytes).ok_or_else(|| {
        DiskError::Size(format!(
            "an ESP of {esp_bytes} bytes is too small for FAT32"
        ))
    })?;
    {
        let esp = &mut raw[(first * SECTOR) as usize..((last + 1) * SECTOR) as usize];
        write_esp(esp, first, input, fat_serial, cluster)?;
    }

    // Partition entries (one used, the rest zero) and both headers.
    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    let mut name = [le::U16::ZERO; 36];
    for (i, c) in "EFI System Partition".encode_utf16().enumerate() {
        name[i] = le::U16::new(c);
    }
    let e = GptEntry {
        partition_type_guid: ESP_TYPE,
        unique_partition_guid: esp_guid,
        starting_lba: le::U64::new(first),
        ending_lba: le::U64::new(last),
        attributes: le::U64::ZERO,
        partition_name: name,
    };
    entries[..ENTRY_SIZE as usize].copy_from_slice(e.as_bytes());
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
    put(&mut raw, 1, &header(1, total - 1, 2));
    put(&mut raw, 2, &entries);
    put(&mut raw, total - 1 - ENTRY_SECTORS, &entries);
    put(
        &mut raw,
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

    Ok(Disk {
        raw,
        size_mib,
        disk_guid,
        esp_guid,
        esp_first_lba: first,
        esp_last_lba: last,
        fat_serial,
        cluster_size: cluster,
    })
}

/// Microsoft FAT spec §3.1–3.3: boot sector with the FAT32 BPB (90 bytes; boot code and the
/// 0x55AA signature follow in the sector).
#[derive(IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct Fat32Bpb {
    jmp_boot: [u8; 3],
    oem_name: [u8; 8],
    bytes_per_sec: le::U16,
    sec_per_clus: u8,
    rsvd_sec_cnt: le::U16,
    num_fats: u8,
    root_ent_cnt: le::U16,
    tot_sec16: le::U16,
    media: u8,
    fat_sz16: le::U16,
    sec_per_trk: le::U16,
    num_heads: le::U16,
    hidd_sec: le::U32,
    tot_sec32: le::U32,
    fat_sz32: le::U32,
    ext_flags: le::U16,
    fs_ver: le::U16,
    root_clus: le::U32,
    fs_info: le::U16,
    bk_boot_sec: le::U16,
    reserved: [u8; 12],
    drv_num: u8,
    reserved1: u8,
    boot_sig: u8,
    vol_id: le::U32,
    vol_lab: [u8; 11],
    fil_sys_type: [u8; 8],
}
const _: () = assert!(std::mem::size_of::<Fat32Bpb>() == 90);

/// Microsoft FAT spec §5: FSInfo sector.
#[derive(IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct FsInfo {
    lead_sig: le::U32,
    reserved1: [u8; 480],
    struc_sig: le::U32,
    free_count: le::U32,
    nxt_free: le::U32,
    reserved2: [u8; 12],
    trail_sig: le::U32,
}
const _: () = assert!(std::mem::size_of::<FsInfo>() == 512);

/// Microsoft FAT spec §6: a 32-byte short directory entry.
#[derive(IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct DirEntry {
    name: [u8; 11],
    attr: u8,
    nt_res: u8,
    crt_time_tenth: u8,
    crt_time: le::U16,
    crt_date: le::U16,
    lst_acc_date: le::U16,
    fst_clus_hi: le::U16,
    wrt_time: le::U16,
    wrt_date: le::U16,
    fst_clus_lo: le::U16,
    file_size: le::U32,
}
const _: () = assert!(std::mem::size_of::<DirEntry>() == 32);

const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const FAT_EOC: u32 = 0x0FFF_FFFF;
const RESERVED_SECTORS: u32 = 32;

fn dir_entry(name: &[u8; 11], attr: u8, cluster: u32, size: u32, t: FatTime) -> DirEntry {
    DirEntry {
        name: *name,
        attr,
        nt_res: 0,
        crt_time_tenth: 0,
        crt_time: le::U16::new(t.time),
        crt_date: le::U16::new(t.date),
        lst_acc_date: le::U16::new(t.date),
        fst_clus_hi: le::U16::new((cluster >> 16) as u16),
        wrt_time: le::U16::new(t.time),
        wrt_date: le::U16::new(t.date),
        fst_clus_lo: le::U16::new(cluster as u16),
        file_size: le::U32::new(size),
    }
}

/// Format `esp` (which starts at LBA `hidden`) as FAT32 holding `\EFI\BOOT\BOOTX64.EFI`:
/// root directory in cluster 2, `EFI` in 3, `BOOT` in 4, the file contiguous from 5.
fn write_esp(
    esp: &mut [u8],
    hidden: u64,
    input: &DiskInput,
    serial: u32,
    cluster: u32,
) -> Result<(), DiskError> {
    let t = fat_time(input.epoch);
    let tot_sec = (esp.len() as u64 / SECTOR) as u32;
    let sec_per_clus = cluster / SECTOR as u32;
    // FAT spec §3.5: FATSz for FAT32 (RootDirSectors = 0).
    let tmp1 = tot_sec - RESERVED_SECTORS;
    let tmp2 = (256 * sec_per_clus + 2) / 2;
    let fat_sz = tmp1.div_ceil(tmp2);
    let data_start = RESERVED_SECTORS + 2 * fat_sz;
    let clusters = (tot_sec - data_start) / sec_per_clus;
    if clusters < 65_525 {
        return Err(DiskError::Size(format!(
            "{clusters} clusters is too few for FAT32"
        )));
    }
    let file_len = u32::try_from(input.uki.len())
        .map_err(|_| DiskError::Size("the UKI is over 4 GiB, the FAT32 file size limit".into()))?;
    let file_clusters = file_len.div_ceil(cluster).max(1);
    let used = 3 + file_clusters;
    if used > clusters {
        return Err(DiskError::Size(format!(
            "the UKI needs {used} clusters, the ESP has {clusters}"
        )));
    }

    let bpb = Fat32Bpb {
        jmp_boot: [0xEB, 0x58, 0x90],
        oem_name: *b"MSWIN4.1",
        bytes_per_sec: le::U16::new(SECTOR as u16),
        sec_per_clus: sec_per_clus as u8,
        rsvd_sec_cnt: le::U16::new(RESERVED_SECTORS as u16),
        num_fats: 2,
        root_ent_cnt: le::U16::ZERO,
        tot_sec16: le::U16::ZERO,
        media: 0xF8,
        fat_sz16: le::U16::ZERO,
        sec_per_trk: le::U16::new(63),
        num_heads: le::U16::new(255),
        hidd_sec: le::U32::new(hidden as u32),
        tot_sec32: le::U32::new(tot_sec),
        fat_sz32: le::U32::new(fat_sz),
        ext_flags: le::U16::ZERO,
        fs_ver: le::U16::ZERO,
        root_clus: le::U32::new(2),
        fs_info: le::U16::new(1),
        bk_boot_sec: le::U16::new(6),
        reserved: [0; 12],
        drv_num: 0x80,
        reserved1: 0,
        boot_sig: 0x29,
        vol_id: le::U32::new(serial),
        vol_lab: *b"ESP        ",
        fil_sys_type: *b"FAT32   ",
    };
    let fsinfo = FsInfo {
        lead_sig: le::U32::new(0x4161_5252),
        reserved1: [0; 480],
        struc_sig: le::U32::new(0x6141_7272),
        free_count: le::U32::new(clusters - used),
        nxt_free: le::U32::new(2 + used),
        reserved2: [0; 12],
        trail_sig: le::U32::new(0xAA55_0000),
    };
    let sec = |n: u32| (u64::from(n) * SECTOR) as usize;
    for base in [0u32, 6] {
        esp[sec(base)..sec(base) + 90].copy_from_slice(bpb.as_bytes());
        esp[sec(base) + 510] = 0x55;
        esp[sec(base) + 511] = 0xAA;
        esp[sec(base + 1)..sec(base + 2)].copy_from_slice(fsinfo.as_bytes());
    }

    // The FAT: media entry, end-of-chain entry (clean, no errors), three one-cluster
    // directories, then the file's chain.
    let mut fat = vec![0u8; sec(fat_sz)];
    let mut set =
        |c: u32, v: u32| fat[c as usize * 4..c as usize * 4 + 4].copy_from_slice(&v.to_le_bytes());
    set(0, 0x0FFF_FF00 | 0xF8);
    set(1, FAT_EOC);
    for c in 2..5 {
        set(c, FAT_EOC);
    }
    for i in 0..file_clusters {
        let c = 5 + i;
        set(
            c,
            if i + 1 == file_clusters {
                FAT_EOC
            } else {
                c + 1
            },
        );
    }
    for n in 0..2 {
        let at = sec(RESERVED_SECTORS + n * fat_sz);
        esp[at..at + fat.len()].copy_from_slice(&fat);
    }

    let clus = |c: u32| sec(data_start + (c - 2) * sec_per_clus);
    let put_dir = |esp: &mut [u8], c: u32, entries: &[DirEntry]| {
        for (i, e) in entries.iter().enumerate() {
            let at = clus(c) + i * 32;
            esp[at..at + 32].copy_from_slice(e.as_bytes());
        }
    };
    put_dir(
        esp,
        2,
        &[
            dir_entry(b"ESP        ", ATTR_VOLUME_ID, 0, 0, t),
            dir_entry(b"EFI        ", ATTR_DIRECTORY, 3, 0, t),
        ],
    );
    // ".." of a directory in the root points at cluster 0 (FAT spec §6.7).
    put_dir(
        esp,
        3,
        &[
            dir_entry(b".          ", ATTR_DIRECTORY, 3, 0, t),
            dir_entry(b"..         ", ATTR_DIRECTORY, 0, 0, t),
            dir_entry(b"BOOT       ", ATTR_DIRECTORY, 4, 0, t),
        ],
    );
    put_dir(
        esp,
        4,
        &[
            dir_entry(b".          ", ATTR_DIRECTORY, 4, 0, t),
            dir_entry(b"..         ", ATTR_DIRECTORY, 3, 0, t),
            dir_entry(b"BOOTX64 EFI", ATTR_ARCHIVE, 5, file_len, t),
        ],
    );
    let at = clus(5);
    esp[at..at + input.uki.len()].copy_from_slice(input.uki);
    Ok(())
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

/// What [`inspect`] reads back from a disk image (raw, or a fixed VHD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFacts {
    /// The VHD footer's fields that are not derived from the size: (creator, unique id,
    /// timestamp), when the image is a VHD.
    pub vhd: Option<(String, [u8; 16], u32)>,
    pub disk_guid: Guid,
    pub esp_guid: Guid,
    pub esp_first_lba: u64,
    pub esp_last_lba: u64,
    pub fat_serial: u32,
    /// Every file of the ESP: (path, bytes), depth-first.
    pub files: Vec<(String, Vec<u8>)>,
}

fn bad(what: &str) -> DiskError {
    DiskError::Size(format!("not a dcr disk image: {what}"))
}

/// Read a GPT disk with a FAT32 ESP as the first partition: GUIDs, the FAT serial and every
/// file on the ESP (for `dcr-build compare`). Checks the GPT header CRC; bounded by the image.
pub fn inspect(image: &[u8]) -> Result<DiskFacts, DiskError> {
    let mut raw = image;
    let mut vhd = None;
    if image.len() >= 1024
        && image.len().is_multiple_of(512)
        && &image[image.len() - 512..image.len() - 504] == b"conectix"
    {
        let f = &image[image.len() - 512..];
        let mut id = [0u8; 16];
        id.copy_from_slice(&f[68..84]);
        vhd = Some((
            String::from_utf8_lossy(&f[28..32]).into_owned(),
            id,
            u32::from_be_bytes([f[24], f[25], f[26], f[27]]),
        ));
        raw = &image[..image.len() - 512];
    }
    let sec = |lba: u64, n: usize| -> Result<&[u8], DiskError> {
        let at = lba
            .checked_mul(SECTOR)
            .and_then(|a| usize::try_from(a).ok())
            .ok_or_else(|| bad("LBA out of range"))?;
        raw.get(at..at.saturating_add(n))
            .ok_or_else(|| bad("truncated"))
    };
    let h = sec(1, 92)?;
    if &h[..8] != b"EFI PART" {
        return Err(bad("no GPT header at LBA 1"));
    }
    let mut z = h.to_vec();
    z[16..20].fill(0);
    if crc32fast::hash(&z).to_le_bytes() != h[16..20] {
        return Err(bad("GPT header CRC"));
    }
    let u64at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8"));
    let mut disk_guid = [0u8; 16];
    disk_guid.copy_from_slice(&h[56..72]);
    let e = sec(u64at(h, 72), 128)?;
    let mut esp_guid = [0u8; 16];
    esp_guid.copy_from_slice(&e[16..32]);
    let (first, last) = (u64at(e, 32), u64at(e, 40));
    if last < first {
        return Err(bad("partition 1 is empty"));
    }
    let esp_len = (last - first)
        .checked_add(1)
        .and_then(|n| n.checked_mul(SECTOR))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| bad("ESP size"))?;
    let esp = sec(first, esp_len)?;
    let u16at = |o: usize| u16::from_le_bytes([esp[o], esp[o + 1]]);
    let u32at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    if &esp[82..90] != b"FAT32   " || u16at(11) != 512 {
        return Err(bad("the ESP is not FAT32 with 512-byte sectors"));
    }
    let spc = usize::from(esp[13]);
    let rsvd = usize::from(u16at(14));
    let fats = usize::from(esp[16]);
    let fat_sz = u32at(esp, 36) as usize;
    let root = u32at(esp, 44);
    let serial = u32at(esp, 67);
    if spc == 0 || fat_sz > esp.len() / 512 {
        return Err(bad("FAT geometry"));
    }
    let fat = esp
        .get(rsvd * 512..(rsvd + fat_sz) * 512)
        .ok_or_else(|| bad("FAT outside the ESP"))?;
    let data = (rsvd + fats * fat_sz) * 512;
    let csize = spc * 512;
    // A cluster chain's bytes, bounded by the FAT's size (no loops).
    let chain = |start: u32| -> Result<Vec<u8>, DiskError> {
        let mut out = Vec::new();
        let mut c = start;
        for _ in 0..fat.len() / 4 {
            if !(2..0x0FFF_FFF7).contains(&c) {
                break;
            }
            let at = data + (c as usize - 2) * csize;
            out.extend_from_slice(
                esp.get(at..at + csize)
                    .ok_or_else(|| bad("cluster outside the ESP"))?,
            );
            c = u32at(fat, c as usize * 4) & 0x0FFF_FFFF;
        }
        Ok(out)
    };
    let mut files = Vec::new();
    let mut stack = vec![(String::new(), root, 0usize)];
    while let Some((dir, cluster, depth)) = stack.pop() {
        if depth > 8 {
            return Err(bad("directories nested too deep"));
        }
        let bytes = chain(cluster)?;
        for ent in bytes.chunks_exact(32) {
            if ent[0] == 0 {
                break;
            }
            if ent[0] == 0xE5
                || ent[11] & 0x0F == 0x0F
                || ent[11] & ATTR_VOLUME_ID != 0
                || ent[0] == b'.'
            {
                continue;
            }
            let base = String::from_utf8_lossy(&ent[..8]).trim_end().to_string();
            let ext = String::from_utf8_lossy(&ent[8..11]).trim_end().to_string();
            let name = if ext.is_empty() {
                base
            } else {
                format!("{base}.{ext}")
            };
            let path = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            let c = (u32::from(u16::from_le_bytes([ent[20], ent[21]])) << 16)
                | u32::from(u16::from_le_bytes([ent[26], ent[27]]));
            if ent[11] & ATTR_DIRECTORY != 0 {
                stack.push((path, c, depth + 1));
            } else {
                let size = u32at(ent, 28) as usize;
                let mut b = chain(c)?;
                if b.len() < size {
                    return Err(bad("file shorter than its directory entry"));
                }
                b.truncate(size);
                files.push((path, b));
            }
        }
    }
    files.sort();
    Ok(DiskFacts {
        vhd,
        disk_guid: Guid(disk_guid),
        esp_guid: Guid(esp_guid),
        esp_first_lba: first,
        esp_last_lba: last,
        fat_serial: serial,
        files,
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
        }
    }

    #[test]
    fn geometry_follows_the_vhd_spec_examples() {
        // 127 GiB and more: the spec's maximum geometry.
        assert_eq!(vhd_geometry(VHD_MAX_CHS_SECTORS + 5), (65535, 16, 255));
        // Exact sizes exist and the default picks one.
        assert!(exact_chs(17) && exact_chs(155) && exact_chs(252));
        assert!(!exact_chs(64) && !exact_chs(256));
        assert_eq!(disk_size_mib(14 << 20, None).unwrap(), 155);
        assert!(disk_size_mib(14 << 20, Some(64)).is_err());
        assert!(disk_size_mib(14 << 20, Some(256))
            .unwrap_err()
            .to_string()
            .contains("315"));
        assert!(disk_size_mib(200 << 20, Some(155)).is_err());
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
    }

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

    #[test]
    fn fat_time_is_utc_calendar() {
        let t = fat_time(1_700_000_000); // 2023-11-14T22:13:20Z
        assert_eq!(t.date, (43 << 9) | (11 << 5) | 14);
        assert_eq!(t.time, (22 << 11) | (13 << 5) | 10);
        assert_eq!(fat_time(0).date, (1 << 5) | 1);
    }
}

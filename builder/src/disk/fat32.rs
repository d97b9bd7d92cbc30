//! The EFI System Partition: FAT32 as Microsoft "FAT: General Overview of On-Disk Format"
//! 1.03 lays it out, holding one file, `\EFI\BOOT\BOOTX64.EFI`.

use zerocopy::little_endian as le;
use zerocopy::{Immutable, IntoBytes, KnownLayout};

use super::{DiskError, DiskInput, SECTOR};

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

pub(super) const ATTR_VOLUME_ID: u8 = 0x08;
pub(super) const ATTR_DIRECTORY: u8 = 0x10;
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

/// FAT32 needs at least 65,525 clusters; pick the largest cluster (≤ 4 KiB) that gives
/// that with a margin.
pub(super) fn cluster_size(esp_bytes: u64) -> Option<u32> {
    [4096u32, 2048, 1024, 512]
        .into_iter()
        .find(|c| esp_bytes / u64::from(*c) >= 66_000)
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
    let (y, m, d) = dcr_protocol::time::civil_from_days((epoch / 86_400) as i64);
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

/// Format `esp` (which starts at LBA `hidden`) as FAT32 holding `\EFI\BOOT\BOOTX64.EFI`:
/// root directory in cluster 2, `EFI` in 3, `BOOT` in 4, the file contiguous from 5.
pub(super) fn write_esp(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat_time_is_utc_calendar() {
        let t = fat_time(1_700_000_000); // 2023-11-14T22:13:20Z
        assert_eq!(t.date, (43 << 9) | (11 << 5) | 14);
        assert_eq!(t.time, (22 << 11) | (13 << 5) | 10);
        assert_eq!(fat_time(0).date, (1 << 5) | 1);
    }
}

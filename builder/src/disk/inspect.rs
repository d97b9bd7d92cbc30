//! Reading a disk image back (for `dcr-build compare`): the GPT, the first partition's FAT32
//! and every file on it, and the other partitions (oci roots) by name, place and SHA-256;
//! bounded by the image, for untrusted input.

use sha2::{Digest, Sha256};

use super::fat32::{ATTR_DIRECTORY, ATTR_VOLUME_ID};
use super::{DiskError, Guid, SECTOR};

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
    /// The partitions after the ESP (oci roots): (name, first LBA, last LBA, SHA-256 of the
    /// partition's bytes).
    pub partitions: Vec<(String, u64, u64, [u8; 32])>,
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
    let entry_lba = u64at(h, 72);
    let e = sec(entry_lba, 128)?;
    let mut esp_guid = [0u8; 16];
    esp_guid.copy_from_slice(&e[16..32]);
    // A partition entry's (first LBA, last LBA, bytes), bounded by the image.
    let partition = |ent: &[u8]| -> Result<(u64, u64, &[u8]), DiskError> {
        let (first, last) = (u64at(ent, 32), u64at(ent, 40));
        if last < first {
            return Err(bad("an empty partition"));
        }
        let len = (last - first)
            .checked_add(1)
            .and_then(|n| n.checked_mul(SECTOR))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| bad("partition size"))?;
        Ok((first, last, sec(first, len)?))
    };
    let (first, last, esp) = partition(e)?;
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
    // The other entries, up to the first unused one (of at most 128: the header's count is
    // not trusted beyond that).
    let count = u32::from_le_bytes([h[80], h[81], h[82], h[83]]).min(128) as u64;
    let mut partitions = Vec::new();
    for i in 1..count {
        let off = entry_lba
            .checked_mul(SECTOR)
            .and_then(|a| a.checked_add(i * 128))
            .ok_or_else(|| bad("entry out of range"))?;
        let off = usize::try_from(off).map_err(|_| bad("entry out of range"))?;
        let ent = raw
            .get(off..off.saturating_add(128))
            .ok_or_else(|| bad("truncated entry array"))?;
        if ent[..16] == [0u8; 16] {
            break;
        }
        let (pf, pl, bytes) = partition(ent)?;
        let units: Vec<u16> = ent[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        partitions.push((
            String::from_utf16_lossy(&units),
            pf,
            pl,
            Sha256::digest(bytes).into(),
        ));
    }
    Ok(DiskFacts {
        vhd,
        disk_guid: Guid(disk_guid),
        esp_guid: Guid(esp_guid),
        esp_first_lba: first,
        esp_last_lba: last,
        fat_serial: serial,
        files,
        partitions,
    })
}

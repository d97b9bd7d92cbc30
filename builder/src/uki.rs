//! Unified kernel images (UAPI Group "Unified Kernel Image" specification): a systemd-stub PE
//! with `.osrel`, `.cmdline`, `.uname`, `.initrd` and `.linux` sections appended.
//!
//! The PE/COFF layout follows the Microsoft "PE Format" specification: new section headers go
//! into the free space after the stub's section table (within SizeOfHeaders); their data goes
//! after the stub's last section, file offsets aligned to FileAlignment and virtual addresses
//! to SectionAlignment; SizeOfImage, SizeOfInitializedData, NumberOfSections and CheckSum are
//! fixed up. Written by this code; no objcopy or ukify.

use object::pe::{
    ImageDataDirectory, ImageDosHeader, ImageNtHeaders64, ImageSectionHeader,
    IMAGE_DIRECTORY_ENTRY_SECURITY, IMAGE_NT_OPTIONAL_HDR64_MAGIC, IMAGE_NT_SIGNATURE,
    IMAGE_SCN_CNT_INITIALIZED_DATA, IMAGE_SCN_MEM_READ,
};
use object::pod;
use object::LittleEndian as LE;

use dcr_protocol::measurements::Sha256;
use sha2::Digest;

// PE Format §"Section Table (Section Headers)": each header is 40 bytes; §"Optional Header
// Data Directories": each entry is 8 bytes.
const _: () = assert!(std::mem::size_of::<ImageSectionHeader>() == 40);
const _: () = assert!(std::mem::size_of::<ImageDataDirectory>() == 8);
const _: () = assert!(std::mem::size_of::<ImageDosHeader>() == 64);
// 4 (signature) + 20 (COFF header) + 112 (PE32+ optional header without data directories).
const _: () = assert!(std::mem::size_of::<ImageNtHeaders64>() == 136);

/// Errors reading or assembling a PE image.
#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    #[error("not a PE32+ image: {0}")]
    NotPe(&'static str),
    #[error("section {0:?}: name longer than 8 bytes")]
    Name(String),
    #[error("the stub already has a {0} section")]
    Exists(String),
    #[error("the stub is Authenticode-signed; use an unsigned stub (a signature would not cover the added sections)")]
    Signed,
    #[error(
        "no room for {needed} more section headers before SizeOfHeaders ({size_of_headers:#x})"
    )]
    NoRoom { needed: usize, size_of_headers: u32 },
    #[error("image too large for PE32+ (section {0} beyond 4 GiB)")]
    TooLarge(String),
}

/// Where the headers of a PE32+ image are.
#[derive(Debug, Clone, Copy)]
struct Layout {
    nt: usize,
    sections: usize,
    count: usize,
    size_of_headers: u32,
    file_alignment: u32,
    section_alignment: u32,
    checksum_offset: usize,
    security_dir: Option<usize>,
}

fn layout(pe: &[u8]) -> Result<Layout, UkiError> {
    let (dos, _) =
        pod::from_bytes::<ImageDosHeader>(pe).map_err(|_| UkiError::NotPe("no DOS header"))?;
    if dos.e_magic.get(LE) != 0x5a4d {
        return Err(UkiError::NotPe("no MZ magic"));
    }
    let nt_off = dos.e_lfanew.get(LE) as usize;
    let (nt, _) = pe
        .get(nt_off..)
        .and_then(|d| pod::from_bytes::<ImageNtHeaders64>(d).ok())
        .ok_or(UkiError::NotPe("truncated NT headers"))?;
    if nt.signature.get(LE) != IMAGE_NT_SIGNATURE {
        return Err(UkiError::NotPe("no PE signature"));
    }
    if nt.optional_header.magic.get(LE) != IMAGE_NT_OPTIONAL_HDR64_MAGIC {
        return Err(UkiError::NotPe("not PE32+"));
    }
    let opt_off = nt_off + 24;
    let opt_size = nt.file_header.size_of_optional_header.get(LE) as usize;
    let ndirs = nt.optional_header.number_of_rva_and_sizes.get(LE) as usize;
    let dirs_off = opt_off + 112;
    if dirs_off + ndirs * 8 > opt_off + opt_size {
        return Err(UkiError::NotPe(
            "data directories overflow the optional header",
        ));
    }
    let security_dir = (ndirs > IMAGE_DIRECTORY_ENTRY_SECURITY)
        .then_some(dirs_off + IMAGE_DIRECTORY_ENTRY_SECURITY * 8);
    let sections = opt_off + opt_size;
    let count = nt.file_header.number_of_sections.get(LE) as usize;
    if sections + count * 40 > pe.len() {
        return Err(UkiError::NotPe("truncated section table"));
    }
    let file_alignment = nt.optional_header.file_alignment.get(LE);
    let section_alignment = nt.optional_header.section_alignment.get(LE);
    if !file_alignment.is_power_of_two() || !section_alignment.is_power_of_two() {
        return Err(UkiError::NotPe("alignment is not a power of two"));
    }
    Ok(Layout {
        nt: nt_off,
        sections,
        count,
        size_of_headers: nt.optional_header.size_of_headers.get(LE),
        file_alignment,
        section_alignment,
        checksum_offset: opt_off + 64,
        security_dir,
    })
}

fn headers(pe: &[u8], l: &Layout) -> Vec<ImageSectionHeader> {
    pod::slice_from_bytes::<ImageSectionHeader>(&pe[l.sections..], l.count)
        .map(|(s, _)| s.to_vec())
        .unwrap_or_default()
}

fn name_of(h: &ImageSectionHeader) -> String {
    let end = h.name.iter().position(|&b| b == 0).unwrap_or(8);
    String::from_utf8_lossy(&h.name[..end]).into_owned()
}

fn align(v: u64, a: u32) -> u64 {
    let a = u64::from(a);
    v.div_ceil(a) * a
}

/// One section of a PE image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionInfo {
    pub name: String,
    pub virtual_address: u32,
    pub virtual_size: u32,
    pub raw_offset: u32,
    pub raw_size: u32,
    pub characteristics: u32,
    /// SHA-256 of the section's content (`virtual_size` bytes, or the raw size if smaller).
    pub sha256: Sha256,
}

/// The content of a section as the loader sees it (trimmed to VirtualSize).
fn content<'a>(pe: &'a [u8], h: &ImageSectionHeader) -> &'a [u8] {
    let off = h.pointer_to_raw_data.get(LE) as usize;
    let len = h.virtual_size.get(LE).min(h.size_of_raw_data.get(LE)) as usize;
    pe.get(off..off.saturating_add(len)).unwrap_or(&[])
}

/// List the sections of a PE32+ image.
pub fn sections(pe: &[u8]) -> Result<Vec<SectionInfo>, UkiError> {
    let l = layout(pe)?;
    Ok(headers(pe, &l)
        .iter()
        .map(|h| SectionInfo {
            name: name_of(h),
            virtual_address: h.virtual_address.get(LE),
            virtual_size: h.virtual_size.get(LE),
            raw_offset: h.pointer_to_raw_data.get(LE),
            raw_size: h.size_of_raw_data.get(LE),
            characteristics: h.characteristics.get(LE),
            sha256: Sha256(sha2::Sha256::digest(content(pe, h)).into()),
        })
        .collect())
}

/// The content of the named section, if present.
pub fn section<'a>(pe: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, UkiError> {
    let l = layout(pe)?;
    Ok(headers(pe, &l)
        .iter()
        .find(|h| name_of(h) == name)
        .map(|h| content(pe, h)))
}

/// The PE checksum (PE Format §"Optional Header Windows-Specific Fields", CheckSum): the
/// 16-bit one's-complement-style sum of the file with the CheckSum field as zero, plus the
/// file length.
pub fn checksum(pe: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u64 = 0;
    let mut i = 0;
    while i < pe.len() {
        let word = if i + 1 < pe.len() {
            u64::from(u16::from_le_bytes([pe[i], pe[i + 1]]))
        } else {
            u64::from(pe[i])
        };
        if i != checksum_offset && i != checksum_offset + 2 {
            sum += word;
            sum = (sum & 0xffff) + (sum >> 16);
        }
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(pe.len() as u32)
}

/// The sections a UKI adds, in the order ukify writes them.
pub const UKI_SECTION_ORDER: [&str; 5] = [".osrel", ".cmdline", ".uname", ".initrd", ".linux"];

/// Append `sections` (name, content) to `stub` and return the new image.
pub fn assemble(stub: &[u8], add: &[(&str, &[u8])]) -> Result<Vec<u8>, UkiError> {
    let l = layout(stub)?;
    if let Some(off) = l.security_dir {
        let (dir, _) = pod::from_bytes::<ImageDataDirectory>(&stub[off..])
            .map_err(|_| UkiError::NotPe("truncated data directory"))?;
        if dir.size.get(LE) != 0 {
            return Err(UkiError::Signed);
        }
    }
    let existing = headers(stub, &l);
    for (name, _) in add {
        if name.len() > 8 {
            return Err(UkiError::Name(name.to_string()));
        }
        if existing.iter().any(|h| name_of(h) == *name) {
            return Err(UkiError::Exists(name.to_string()));
        }
    }
    let table_end = l.sections + (l.count + add.len()) * 40;
    if table_end > l.size_of_headers as usize {
        return Err(UkiError::NoRoom {
            needed: add.len(),
            size_of_headers: l.size_of_headers,
        });
    }
    // Free space after the section table must be zero (nothing else lives there).
    if stub[l.sections + l.count * 40..table_end]
        .iter()
        .any(|&b| b != 0)
    {
        return Err(UkiError::NotPe(
            "bytes after the section table are not free",
        ));
    }

    let mut next_va = existing
        .iter()
        .map(|h| {
            u64::from(h.virtual_address.get(LE))
                + u64::from(h.virtual_size.get(LE).max(h.size_of_raw_data.get(LE)))
        })
        .max()
        .unwrap_or(u64::from(l.size_of_headers));
    let mut next_raw = existing
        .iter()
        .map(|h| u64::from(h.pointer_to_raw_data.get(LE)) + u64::from(h.size_of_raw_data.get(LE)))
        .max()
        .unwrap_or(0)
        .max(stub.len() as u64);

    let mut out = stub.to_vec();
    let mut new_headers = Vec::new();
    let mut added_init = 0u64;
    for (name, data) in add {
        let va = align(next_va, l.section_alignment);
        let raw = align(next_raw, l.file_alignment);
        let raw_size = align(data.len() as u64, l.file_alignment);
        if va + data.len() as u64 > u64::from(u32::MAX) || raw + raw_size > u64::from(u32::MAX) {
            return Err(UkiError::TooLarge(name.to_string()));
        }
        let mut h: ImageSectionHeader = *pod::from_bytes::<ImageSectionHeader>(&[0u8; 40])
            .map(|(h, _)| h)
            .map_err(|_| UkiError::NotPe("section header"))?;
        h.name[..name.len()].copy_from_slice(name.as_bytes());
        h.virtual_size.set(LE, data.len() as u32);
        h.virtual_address.set(LE, va as u32);
        h.size_of_raw_data.set(LE, raw_size as u32);
        h.pointer_to_raw_data.set(LE, raw as u32);
        h.characteristics
            .set(LE, IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ);
        out.resize(raw as usize, 0);
        out.extend_from_slice(data);
        out.resize((raw + raw_size) as usize, 0);
        new_headers.push(h);
        added_init += raw_size;
        next_va = va + data.len() as u64;
        next_raw = raw + raw_size;
    }
    for (i, h) in new_headers.iter().enumerate() {
        let at = l.sections + (l.count + i) * 40;
        out[at..at + 40].copy_from_slice(pod::bytes_of(h));
    }
    {
        let (nt, _) = pod::from_bytes_mut::<ImageNtHeaders64>(&mut out[l.nt..])
            .map_err(|_| UkiError::NotPe("NT headers"))?;
        nt.file_header
            .number_of_sections
            .set(LE, (l.count + add.len()) as u16);
        let size_of_image = align(next_va, l.section_alignment);
        nt.optional_header
            .size_of_image
            .set(LE, size_of_image as u32);
        let init = u64::from(nt.optional_header.size_of_initialized_data.get(LE)) + added_init;
        nt.optional_header
            .size_of_initialized_data
            .set(LE, init.min(u64::from(u32::MAX)) as u32);
        nt.optional_header.check_sum.set(LE, 0);
    }
    let sum = checksum(&out, l.checksum_offset);
    out[l.checksum_offset..l.checksum_offset + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// The CheckSum field and the value it should have.
pub fn checksum_status(pe: &[u8]) -> Result<(u32, u32), UkiError> {
    let l = layout(pe)?;
    let stored = u32::from_le_bytes(
        pe[l.checksum_offset..l.checksum_offset + 4]
            .try_into()
            .map_err(|_| UkiError::NotPe("checksum"))?,
    );
    Ok((stored, checksum(pe, l.checksum_offset)))
}

/// SizeOfImage as stored.
pub fn size_of_image(pe: &[u8]) -> Result<u32, UkiError> {
    let l = layout(pe)?;
    let (nt, _) = pod::from_bytes::<ImageNtHeaders64>(&pe[l.nt..])
        .map_err(|_| UkiError::NotPe("NT headers"))?;
    Ok(nt.optional_header.size_of_image.get(LE))
}

/// Every section as the loader maps it: VirtualSize bytes, zero-filled past SizeOfRawData
/// (what systemd-stub hashes for PCR 11).
pub fn sections_in_memory(pe: &[u8]) -> Result<Vec<(String, Vec<u8>)>, UkiError> {
    let l = layout(pe)?;
    Ok(headers(pe, &l)
        .iter()
        .map(|h| {
            let mut data = content(pe, h).to_vec();
            data.resize(h.virtual_size.get(LE) as usize, 0);
            (name_of(h), data)
        })
        .collect())
}

//! Intel TDX MRTD from a TDVF (OVMF with TDX metadata) image.
//!
//! TDVF metadata (Intel "TDX Virtual Firmware Design Guide" §11): the OVMF footer GUID table
//! entry e47a6535-984a-4798-865e-4685a7bf8ec2 ends with a u32 offset from the end of the image
//! to the descriptor `"TDVF", u32 length, u32 version (1), u32 count`, then count × 32-byte
//! sections. MRTD is one SHA-384 over the TDH.MEM.PAGE.ADD and TDH.MR.EXTEND inputs (Intel TDX
//! module ABI: 128-byte headers "MEM.PAGE.ADD"/"MR.EXTEND" with the GPA at byte 16, EXTEND
//! followed by the 256-byte chunk).

use sha2::{Digest, Sha384};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::ovmf::{Ovmf, OvmfError};
use uuid::uuid;

/// TDVF metadata location GUID in the OVMF footer table.
pub const TDX_METADATA_OFFSET_GUID: [u8; 16] =
    uuid!("e47a6535-984a-4798-865e-4685a7bf8ec2").to_bytes_le();

/// Errors computing MRTD.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TdxError {
    #[error(transparent)]
    Firmware(#[from] OvmfError),
    #[error("firmware: no TDVF metadata (footer GUID e47a6535-…); not a TDX-capable OVMF")]
    NoMetadata,
    #[error("firmware: TDVF metadata: {0}")]
    Metadata(&'static str),
    #[error("firmware: TDVF section {index}: {reason}")]
    Section { index: usize, reason: &'static str },
}

/// TDVF descriptor header (TDVF design guide Table 11-1), 16 bytes.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct TdvfDescriptor {
    signature: [u8; 4],
    length: U32,
    version: U32,
    number_of_section_entry: U32,
}
const _: () = assert!(core::mem::size_of::<TdvfDescriptor>() == 16);

/// TDVF section entry (TDVF design guide Table 11-2), 32 bytes.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct TdvfSectionEntry {
    data_offset: U32,
    raw_data_size: U32,
    memory_address: U64,
    memory_data_size: U64,
    kind: U32,
    attributes: U32,
}
const _: () = assert!(core::mem::size_of::<TdvfSectionEntry>() == 32);

/// Section attribute bits.
pub const ATTR_MR_EXTEND: u32 = 1;
pub const ATTR_PAGE_AUG: u32 = 2;

/// One TDVF section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TdvfSection {
    pub data_offset: u32,
    pub raw_data_size: u32,
    pub memory_address: u64,
    pub memory_data_size: u64,
    /// 0 BFV, 1 CFV, 2 TD_HOB, 3 TEMP_MEM, 4 PERM_MEM, 5 PAYLOAD, 6 PAYLOAD_PARAM.
    pub kind: u32,
    pub attributes: u32,
}

impl TdvfSection {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            0 => "BFV",
            1 => "CFV",
            2 => "TD_HOB",
            3 => "TEMP_MEM",
            4 => "PERM_MEM",
            5 => "PAYLOAD",
            6 => "PAYLOAD_PARAM",
            _ => "UNKNOWN",
        }
    }
}

/// The TDVF sections of a firmware image.
pub fn tdvf_sections(fw: &Ovmf<'_>) -> Result<Vec<TdvfSection>, TdxError> {
    let entry = fw
        .table_item(&TDX_METADATA_OFFSET_GUID)
        .ok_or(TdxError::NoMetadata)?;
    if entry.len() < 4 {
        return Err(TdxError::Metadata("offset entry shorter than 4 bytes"));
    }
    let tail = &entry[entry.len() - 4..];
    let off = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as usize;
    let data = fw.data();
    let start = data
        .len()
        .checked_sub(off)
        .ok_or(TdxError::Metadata("offset beyond the image"))?;
    let (d, rest) = TdvfDescriptor::read_from_prefix(&data[start..])
        .map_err(|_| TdxError::Metadata("descriptor truncated"))?;
    if &d.signature != b"TDVF" {
        return Err(TdxError::Metadata("wrong signature (expected TDVF)"));
    }
    if d.version.get() != 1 {
        return Err(TdxError::Metadata("version is not 1"));
    }
    let n = d.number_of_section_entry.get() as usize;
    let bytes = rest
        .get(..n * 32)
        .ok_or(TdxError::Metadata("section entries truncated"))?;
    let entries = <[TdvfSectionEntry]>::ref_from_bytes(bytes)
        .map_err(|_| TdxError::Metadata("section entries truncated"))?;
    Ok(entries
        .iter()
        .map(|e| TdvfSection {
            data_offset: e.data_offset.get(),
            raw_data_size: e.raw_data_size.get(),
            memory_address: e.memory_address.get(),
            memory_data_size: e.memory_data_size.get(),
            kind: e.kind.get(),
            attributes: e.attributes.get(),
        })
        .collect())
}

/// How the VMM orders PAGE.ADD and MR.EXTEND (a known source of mismatches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageOrder {
    /// QEMU ≥ 9 with upstream KVM: per page, ADD then its 16 EXTENDs.
    SinglePass,
    /// QEMU 8.x: all ADDs of a section, then all EXTENDs.
    TwoPass,
}

/// One MRTD step, for explanation (a record of measurements.json).
pub use dcr_protocol::measurements::MrtdEvent;

fn page_add(h: &mut Sha384, gpa: u64) {
    let mut buf = [0u8; 128];
    buf[..12].copy_from_slice(b"MEM.PAGE.ADD");
    buf[16..24].copy_from_slice(&gpa.to_le_bytes());
    h.update(buf);
}

fn mr_extend(h: &mut Sha384, gpa: u64, chunk: &[u8]) {
    let mut buf = [0u8; 128];
    buf[..9].copy_from_slice(b"MR.EXTEND");
    buf[16..24].copy_from_slice(&gpa.to_le_bytes());
    h.update(buf);
    h.update(chunk);
}

/// MRTD of a TDVF image and the sections that went into it.
pub fn mrtd(fw: &Ovmf<'_>, order: PageOrder) -> Result<([u8; 48], Vec<MrtdEvent>), TdxError> {
    let sections = tdvf_sections(fw)?;
    let data = fw.data();
    let mut h = Sha384::new();
    let mut events = Vec::new();
    for (index, s) in sections.iter().enumerate() {
        if !s.memory_data_size.is_multiple_of(4096) || !s.memory_address.is_multiple_of(4096) {
            return Err(TdxError::Section {
                index,
                reason: "not page-aligned",
            });
        }
        let pages = s.memory_data_size / 4096;
        let add = s.attributes & ATTR_PAGE_AUG == 0;
        let extend = s.attributes & ATTR_MR_EXTEND != 0;
        let page_data = |p: u64| -> Result<&[u8], TdxError> {
            let off = s.data_offset as usize + (p as usize) * 4096;
            if (p + 1) * 4096 > u64::from(s.raw_data_size) {
                return Err(TdxError::Section {
                    index,
                    reason: "MR_EXTEND beyond the section's raw data",
                });
            }
            data.get(off..off + 4096).ok_or(TdxError::Section {
                index,
                reason: "raw data beyond the image",
            })
        };
        let extend_page = |h: &mut Sha384, p: u64| -> Result<(), TdxError> {
            let gpa = s.memory_address + p * 4096;
            let page = page_data(p)?;
            for (i, chunk) in page.chunks(256).enumerate() {
                mr_extend(h, gpa + 256 * i as u64, chunk);
            }
            Ok(())
        };
        match order {
            PageOrder::SinglePass => {
                for p in 0..pages {
                    if add {
                        page_add(&mut h, s.memory_address + p * 4096);
                    }
                    if extend {
                        extend_page(&mut h, p)?;
                    }
                }
            }
            PageOrder::TwoPass => {
                if add {
                    for p in 0..pages {
                        page_add(&mut h, s.memory_address + p * 4096);
                    }
                }
                if extend {
                    for p in 0..pages {
                        extend_page(&mut h, p)?;
                    }
                }
            }
        }
        events.push(MrtdEvent {
            section: index,
            kind: s.kind_name().to_string(),
            gpa: s.memory_address,
            pages,
            extended: extend,
        });
    }
    Ok((h.finalize().into(), events))
}

//! OVMF firmware metadata used by SEV launch measurements.
//!
//! Layouts (edk2 `OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.asm` and
//! `OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm`):
//! - The footer GUID table ends 32 bytes before the end of the image with an 18-byte entry
//!   `{u16 size; GUID 96b582de-1fb2-45f7-baea-a366c55a082d}` whose size covers the whole table.
//!   Entries are walked backwards: `data … | u16 size | GUID`, `size` including the 18 bytes.
//! - The SEV metadata (`"ASEV"`, u32 size, u32 version = 1, u32 count, then count ×
//!   `{u32 gpa; u32 size; u32 type}`) is found through GUID dc886566-…: a u32 offset from the
//!   end of the image.
//!
//! The image is mapped so that it ends at 4 GiB (or, for an SVSM image, where the caller says).

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use uuid::uuid;

/// Errors reading firmware metadata.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OvmfError {
    #[error("firmware: {0} bytes is not a whole number of 4 KiB pages (truncated?)")]
    NotPages(usize),
    #[error("firmware: {0}")]
    Table(&'static str),
    #[error("firmware: SEV metadata: {0}")]
    Metadata(&'static str),
    #[error("firmware: SEV metadata section type {0:#x} is unknown")]
    SectionType(u32),
    #[error("firmware: no {0} entry in the OVMF footer table")]
    Missing(&'static str),
    #[error("firmware: image of {0} bytes does not fit below its end address")]
    TooLarge(usize),
}

pub const OVMF_TABLE_FOOTER_GUID: [u8; 16] =
    uuid!("96b582de-1fb2-45f7-baea-a366c55a082d").to_bytes_le();
pub const SEV_HASH_TABLE_RV_GUID: [u8; 16] =
    uuid!("7255371f-3a3b-4b04-927b-1da6efa8d454").to_bytes_le();
pub const SEV_ES_RESET_BLOCK_GUID: [u8; 16] =
    uuid!("00f771de-1a7e-4fcb-890e-68c77e2fb44e").to_bytes_le();
pub const OVMF_SEV_META_DATA_GUID: [u8; 16] =
    uuid!("dc886566-984a-4798-a75e-5585a7bf67cc").to_bytes_le();
pub const SVSM_INFO_GUID: [u8; 16] = uuid!("a789a612-0597-4c4b-a49f-cbb1fe9d1ddd").to_bytes_le();

/// Footer table entry header (OvmfPkg ResetVectorVtf0.asm: `DW size; GUID`), 18 bytes.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct TableEntryHeader {
    size: U16,
    guid: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<TableEntryHeader>() == 18);

/// SEV metadata header (OvmfSevMetadata.asm `OvmfSevMetadataGuid` block), 16 bytes.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct MetadataHeader {
    signature: [u8; 4],
    size: U32,
    version: U32,
    num_items: U32,
}
const _: () = assert!(core::mem::size_of::<MetadataHeader>() == 16);

/// One SEV metadata section descriptor, 12 bytes.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct MetadataDesc {
    gpa: U32,
    size: U32,
    kind: U32,
}
const _: () = assert!(core::mem::size_of::<MetadataDesc>() == 12);

/// SEV metadata section types (OvmfSevMetadata.asm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionType {
    SnpSecMem,
    SnpSecrets,
    Cpuid,
    SvsmCaa,
    SnpKernelHashes,
}

impl SectionType {
    fn from_u32(v: u32) -> Result<Self, OvmfError> {
        Ok(match v {
            1 => SectionType::SnpSecMem,
            2 => SectionType::SnpSecrets,
            3 => SectionType::Cpuid,
            4 => SectionType::SvsmCaa,
            0x10 => SectionType::SnpKernelHashes,
            other => return Err(OvmfError::SectionType(other)),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SectionType::SnpSecMem => "SNP_SEC_MEM",
            SectionType::SnpSecrets => "SNP_SECRETS",
            SectionType::Cpuid => "CPUID",
            SectionType::SvsmCaa => "SVSM_CAA",
            SectionType::SnpKernelHashes => "SNP_KERNEL_HASHES",
        }
    }
}

/// One metadata section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    pub gpa: u32,
    pub size: u32,
    pub kind: SectionType,
}

/// A parsed firmware image (OVMF, or a COCONUT-SVSM image, which uses the same tables).
#[derive(Debug, Clone)]
pub struct Ovmf<'a> {
    data: &'a [u8],
    gpa: u64,
    table: TableEntries<'a>,
    sections: Vec<Section>,
}

const FOUR_GIB: u64 = 0x1_0000_0000;

impl<'a> Ovmf<'a> {
    /// Parse an image mapped to end at 4 GiB.
    pub fn parse(data: &'a [u8]) -> Result<Self, OvmfError> {
        Self::parse_ending_at(data, FOUR_GIB)
    }

    /// Parse an image mapped to end at `end` (exclusive).
    pub fn parse_ending_at(data: &'a [u8], end: u64) -> Result<Self, OvmfError> {
        if data.is_empty() || !data.len().is_multiple_of(4096) {
            return Err(OvmfError::NotPages(data.len()));
        }
        let gpa = end
            .checked_sub(data.len() as u64)
            .ok_or(OvmfError::TooLarge(data.len()))?;
        let table = parse_footer_table(data)?;
        let mut o = Ovmf {
            data,
            gpa,
            table,
            sections: Vec::new(),
        };
        o.sections = o.parse_metadata()?;
        Ok(o)
    }

    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Guest physical address of the first byte.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// The data of a footer-table entry.
    pub fn table_item(&self, guid: &[u8; 16]) -> Option<&'a [u8]> {
        self.table.iter().find(|(g, _)| g == guid).map(|(_, d)| *d)
    }

    fn table_u32(&self, guid: &[u8; 16], name: &'static str) -> Result<u32, OvmfError> {
        let d = self.table_item(guid).ok_or(OvmfError::Missing(name))?;
        let b: [u8; 4] = d
            .get(..4)
            .and_then(|s| s.try_into().ok())
            .ok_or(OvmfError::Table("footer entry shorter than 4 bytes"))?;
        Ok(u32::from_le_bytes(b))
    }

    /// SEV metadata sections, in file order.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    pub fn has_section(&self, kind: SectionType) -> bool {
        self.sections.iter().any(|s| s.kind == kind)
    }

    /// AP reset EIP (SEV_ES_RESET_BLOCK).
    pub fn sev_es_reset_eip(&self) -> Result<u32, OvmfError> {
        self.table_u32(&SEV_ES_RESET_BLOCK_GUID, "SEV_ES_RESET_BLOCK")
    }

    /// GPA of the QEMU kernel-hashes table (SEV_HASH_TABLE_RV).
    pub fn sev_hashes_table_gpa(&self) -> Result<u32, OvmfError> {
        self.table_u32(&SEV_HASH_TABLE_RV_GUID, "SEV_HASH_TABLE_RV")
    }

    pub fn is_sev_hashes_table_supported(&self) -> bool {
        self.sev_hashes_table_gpa().is_ok_and(|g| g != 0)
    }

    /// The SVSM entry point: SVSM_INFO offset + image base (COCONUT-SVSM images).
    pub fn svsm_reset_eip(&self) -> Result<u64, OvmfError> {
        Ok(u64::from(self.table_u32(&SVSM_INFO_GUID, "SVSM_INFO")?) + self.gpa)
    }

    fn parse_metadata(&self) -> Result<Vec<Section>, OvmfError> {
        let Some(entry) = self.table_item(&OVMF_SEV_META_DATA_GUID) else {
            return Ok(Vec::new());
        };
        let off = entry
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or(OvmfError::Metadata("offset entry shorter than 4 bytes"))?;
        let start = self
            .data
            .len()
            .checked_sub(off)
            .ok_or(OvmfError::Metadata("offset beyond the image"))?;
        let (hdr, _) = MetadataHeader::read_from_prefix(&self.data[start..])
            .map_err(|_| OvmfError::Metadata("header truncated"))?;
        if &hdr.signature != b"ASEV" {
            return Err(OvmfError::Metadata("wrong signature (expected ASEV)"));
        }
        if hdr.version.get() != 1 {
            return Err(OvmfError::Metadata("version is not 1"));
        }
        let n = hdr.num_items.get() as usize;
        let items_start = start + core::mem::size_of::<MetadataHeader>();
        let items = self
            .data
            .get(items_start..items_start + n * core::mem::size_of::<MetadataDesc>())
            .ok_or(OvmfError::Metadata("descriptors truncated"))?;
        let descs = <[MetadataDesc]>::ref_from_bytes(items)
            .map_err(|_| OvmfError::Metadata("descriptors truncated"))?;
        descs
            .iter()
            .map(|d| {
                Ok(Section {
                    gpa: d.gpa.get(),
                    size: d.size.get(),
                    kind: SectionType::from_u32(d.kind.get())?,
                })
            })
            .collect()
    }
}

/// Footer table entries: GUID and data.
type TableEntries<'a> = Vec<([u8; 16], &'a [u8])>;

fn parse_footer_table(data: &[u8]) -> Result<TableEntries<'_>, OvmfError> {
    let hdr_size = core::mem::size_of::<TableEntryHeader>();
    let Some(footer_start) = data.len().checked_sub(32 + hdr_size) else {
        return Ok(Vec::new());
    };
    let (footer, _) = TableEntryHeader::read_from_prefix(&data[footer_start..])
        .map_err(|_| OvmfError::Table("footer truncated"))?;
    if footer.guid != OVMF_TABLE_FOOTER_GUID {
        return Ok(Vec::new());
    }
    let Some(table_size) = (footer.size.get() as usize).checked_sub(hdr_size) else {
        return Ok(Vec::new());
    };
    let table_start = footer_start
        .checked_sub(table_size)
        .ok_or(OvmfError::Table("footer table larger than the image"))?;
    let mut rest = &data[table_start..footer_start];
    let mut out = Vec::new();
    while rest.len() >= hdr_size {
        let (h, _) = TableEntryHeader::read_from_prefix(&rest[rest.len() - hdr_size..])
            .map_err(|_| OvmfError::Table("entry truncated"))?;
        let size = h.size.get() as usize;
        if size < hdr_size || size > rest.len() {
            return Err(OvmfError::Table("invalid footer table entry size"));
        }
        out.push((h.guid, &rest[rest.len() - size..rest.len() - hdr_size]));
        rest = &rest[..rest.len() - size];
    }
    Ok(out)
}

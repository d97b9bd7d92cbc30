//! AMD SEV / SEV-ES / SEV-SNP launch digests, bit-compatible with sev-snp-measure 0.0.13.
//!
//! - SNP: the launch digest is the chain of SHA-384 over PAGE_INFO structures (SEV-SNP ABI
//!   specification 56860, §8.17.2 "SNP_LAUNCH_UPDATE", Table 67), one per page added:
//!   firmware pages (NORMAL), metadata sections (ZERO, SECRETS, CPUID, UNMEASURED, or the
//!   kernel-hashes page as NORMAL), then one VMSA page per vCPU.
//! - SEV: SHA-256(firmware ‖ padded hashes table). SEV-ES: the same ‖ the VMSA pages.
//! - The kernel-hashes table is QEMU's (`target/i386/sev.c`, `SevHashTable`), built from the
//!   SHA-256 of the kernel file, the initrd and the command line with its NUL.
//! - VMSA pages follow Linux `struct sev_es_save_area` with the register values KVM/QEMU,
//!   EC2 and GCE load at reset.

use sha2::{Digest, Sha256, Sha384};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromZeros, Immutable, IntoBytes, KnownLayout};

use super::ovmf::{Ovmf, OvmfError, SectionType};
use uuid::uuid;

/// Errors of a launch-digest computation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnpError {
    #[error(transparent)]
    Firmware(#[from] OvmfError),
    #[error("kernel given but the firmware has no SNP_KERNEL_HASHES metadata section (use an AmdSev OVMF build)")]
    NoKernelHashesSection,
    #[error(
        "kernel given but the firmware does not support the kernel/initrd/cmdline hashes table"
    )]
    NoHashesTable,
    #[error("firmware: SNP_KERNEL_HASHES section is {0} bytes, expected one 4 KiB page")]
    HashesSectionSize(u32),
    #[error("firmware: metadata section at {gpa:#x} has size {size:#x}, not a multiple of 4 KiB")]
    SectionSize { gpa: u32, size: u32 },
    #[error("the hashes table at offset {0:#x} does not fit in its page")]
    TableOffset(u32),
    #[error("vcpus must be at least 1")]
    NoVcpus,
}

/// Guest mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SevMode {
    Sev,
    SevEs,
    Snp,
    /// SNP with COCONUT-SVSM (QEMU only).
    SnpSvsm,
}

impl SevMode {
    /// The name sev-snp-measure prints in verbose mode.
    pub fn verbose_name(self) -> &'static str {
        match self {
            SevMode::Sev => "SEV",
            SevMode::SevEs => "SEV_ES",
            SevMode::Snp => "SEV_SNP",
            SevMode::SnpSvsm => "SEV_SNP_SVSM",
        }
    }
}

/// The VMM, which decides some initial register values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmType {
    Qemu,
    Ec2,
    Gce,
}

/// vCPU models QEMU knows (builtin_x86_defs) and their CPUID signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuType {
    Epyc,
    EpycV1,
    EpycV2,
    EpycIbpb,
    EpycV3,
    EpycV4,
    EpycRome,
    EpycRomeV1,
    EpycRomeV2,
    EpycRomeV3,
    EpycMilan,
    EpycMilanV1,
    EpycMilanV2,
    EpycGenoa,
    EpycGenoaV1,
    EpycTurin,
}

impl CpuType {
    /// Every type, with the name QEMU and sev-snp-measure use.
    pub const ALL: [(CpuType, &'static str); 16] = [
        (CpuType::Epyc, "EPYC"),
        (CpuType::EpycV1, "EPYC-v1"),
        (CpuType::EpycV2, "EPYC-v2"),
        (CpuType::EpycIbpb, "EPYC-IBPB"),
        (CpuType::EpycV3, "EPYC-v3"),
        (CpuType::EpycV4, "EPYC-v4"),
        (CpuType::EpycRome, "EPYC-Rome"),
        (CpuType::EpycRomeV1, "EPYC-Rome-v1"),
        (CpuType::EpycRomeV2, "EPYC-Rome-v2"),
        (CpuType::EpycRomeV3, "EPYC-Rome-v3"),
        (CpuType::EpycMilan, "EPYC-Milan"),
        (CpuType::EpycMilanV1, "EPYC-Milan-v1"),
        (CpuType::EpycMilanV2, "EPYC-Milan-v2"),
        (CpuType::EpycGenoa, "EPYC-Genoa"),
        (CpuType::EpycGenoaV1, "EPYC-Genoa-v1"),
        (CpuType::EpycTurin, "EPYC-Turin"),
    ];

    pub fn from_name(name: &str) -> Option<CpuType> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(t, _)| *t)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(t, _)| *t == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }

    /// (family, model, stepping).
    pub fn fms(self) -> (u32, u32, u32) {
        use CpuType::*;
        match self {
            Epyc | EpycV1 | EpycV2 | EpycIbpb | EpycV3 | EpycV4 => (23, 1, 2),
            EpycRome | EpycRomeV1 | EpycRomeV2 | EpycRomeV3 => (23, 49, 0),
            EpycMilan | EpycMilanV1 | EpycMilanV2 => (25, 1, 1),
            EpycGenoa | EpycGenoaV1 => (25, 17, 0),
            EpycTurin => (26, 0, 0),
        }
    }

    pub fn sig(self) -> u32 {
        let (f, m, s) = self.fms();
        cpu_sig(f, m, s)
    }
}

/// CPUID Fn0000_0001_EAX from family, model, stepping (AMD CPUID specification 25481).
pub fn cpu_sig(family: u32, model: u32, stepping: u32) -> u32 {
    let (fam_lo, fam_hi) = if family > 0xf {
        (0xf, (family - 0xf) & 0xff)
    } else {
        (family, 0)
    };
    (fam_hi << 20)
        | (((model >> 4) & 0xf) << 16)
        | (fam_lo << 8)
        | ((model & 0xf) << 4)
        | (stepping & 0xf)
}

/// The VM shape a launch digest depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnpShape {
    pub vcpus: u32,
    /// CPUID signature loaded into RDX at reset (QEMU).
    pub vcpu_sig: u32,
    /// SEV_FEATURES of the VMSA (SNP only; SEV-ES uses 0).
    pub guest_features: u64,
    pub vmm: VmmType,
}

/// SHA-256 digests of what QEMU puts in the kernel-hashes table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevHashes {
    pub cmdline: [u8; 32],
    pub initrd: [u8; 32],
    pub kernel: [u8; 32],
}

impl SevHashes {
    /// From the kernel file, the initrd (absent = empty) and the command line (absent or
    /// empty = just the NUL), as QEMU computes them.
    pub fn new(kernel: &[u8], initrd: Option<&[u8]>, append: Option<&str>) -> Self {
        let mut cmd = Sha256::new();
        if let Some(a) = append.filter(|a| !a.is_empty()) {
            cmd.update(a.as_bytes());
        }
        cmd.update([0u8]);
        SevHashes {
            cmdline: cmd.finalize().into(),
            initrd: Sha256::digest(initrd.unwrap_or(&[])).into(),
            kernel: Sha256::digest(kernel).into(),
        }
    }

    /// QEMU's padded `SevHashTable` (168 bytes + zero padding to 176).
    pub fn table(&self) -> Vec<u8> {
        let entry = |guid: [u8; 16], hash: [u8; 32]| HashTableEntry {
            guid,
            length: U16::new(core::mem::size_of::<HashTableEntry>() as u16),
            hash,
        };
        let t = HashTable {
            guid: SEV_HASH_TABLE_HEADER_GUID,
            length: U16::new(core::mem::size_of::<HashTable>() as u16),
            cmdline: entry(SEV_CMDLINE_ENTRY_GUID, self.cmdline),
            initrd: entry(SEV_INITRD_ENTRY_GUID, self.initrd),
            kernel: entry(SEV_KERNEL_ENTRY_GUID, self.kernel),
        };
        let mut out = t.as_bytes().to_vec();
        out.resize(out.len().div_ceil(16) * 16, 0);
        out
    }

    /// A 4 KiB page holding the table at `offset`.
    pub fn page(&self, offset: u32) -> Result<Vec<u8>, SnpError> {
        let table = self.table();
        let off = offset as usize;
        if off + table.len() > 4096 {
            return Err(SnpError::TableOffset(offset));
        }
        let mut page = vec![0u8; 4096];
        page[off..off + table.len()].copy_from_slice(&table);
        Ok(page)
    }
}

const SEV_HASH_TABLE_HEADER_GUID: [u8; 16] =
    uuid!("9438d606-4f22-4cc9-b479-a793d411fd21").to_bytes_le();
const SEV_KERNEL_ENTRY_GUID: [u8; 16] = uuid!("4de79437-abd2-427f-b835-d5b172d2045b").to_bytes_le();
const SEV_INITRD_ENTRY_GUID: [u8; 16] = uuid!("44baf731-3a2f-4bd7-9af1-41e29169781d").to_bytes_le();
const SEV_CMDLINE_ENTRY_GUID: [u8; 16] =
    uuid!("97d02dd8-bd20-4c94-aa78-e7714d36ab2a").to_bytes_le();

/// QEMU `SevHashTableEntry` (packed): GUID, u16 length, SHA-256. 50 bytes.
#[derive(Clone, Copy, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct HashTableEntry {
    guid: [u8; 16],
    length: U16,
    hash: [u8; 32],
}
const _: () = assert!(core::mem::size_of::<HashTableEntry>() == 50);

/// QEMU `SevHashTable` (packed): header GUID, u16 length, cmdline, initrd, kernel. 168 bytes.
#[derive(Clone, Copy, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct HashTable {
    guid: [u8; 16],
    length: U16,
    cmdline: HashTableEntry,
    initrd: HashTableEntry,
    kernel: HashTableEntry,
}
const _: () = assert!(core::mem::size_of::<HashTable>() == 168);

/// SNP page types (SEV-SNP ABI spec Table 67 / PAGE_TYPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageType {
    Normal = 1,
    Vmsa = 2,
    Zero = 3,
    Unmeasured = 4,
    Secrets = 5,
    Cpuid = 6,
}

/// PAGE_INFO (SEV-SNP ABI spec §8.17.2, Table 67), 0x70 bytes.
#[derive(Clone, Copy, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
struct PageInfo {
    digest_cur: [u8; 48],
    contents: [u8; 48],
    length: U16,
    page_type: u8,
    imi_page: u8,
    vmpl3_perms: u8,
    vmpl2_perms: u8,
    vmpl1_perms: u8,
    reserved: u8,
    gpa: U64,
}
const _: () = assert!(core::mem::size_of::<PageInfo>() == 0x70);

/// VMSA pages are recorded at GPA (u64)-1, page-aligned, bits above 51 cleared.
const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;

/// One step of a launch digest, for explaining it (a record of measurements.json).
pub use dcr_protocol::measurements::SnpEvent;

/// SNP guest context: the running launch digest.
#[derive(Debug, Clone)]
pub struct Gctx {
    ld: [u8; 48],
    events: Vec<SnpEvent>,
}

impl Gctx {
    pub fn new(seed: Option<[u8; 48]>) -> Self {
        Gctx {
            ld: seed.unwrap_or([0; 48]),
            events: Vec::new(),
        }
    }

    fn update(&mut self, page_type: PageType, gpa: u64, contents: [u8; 48]) {
        let info = PageInfo {
            digest_cur: self.ld,
            contents,
            length: U16::new(0x70),
            page_type: page_type as u8,
            imi_page: 0,
            vmpl3_perms: 0,
            vmpl2_perms: 0,
            vmpl1_perms: 0,
            reserved: 0,
            gpa: U64::new(gpa),
        };
        self.ld = Sha384::digest(info.as_bytes()).into();
    }

    fn record(&mut self, component: &str, t: PageType, gpa: u64, pages: u64) {
        self.events.push(SnpEvent {
            component: component.to_string(),
            page_type: format!("{t:?}").to_uppercase(),
            gpa,
            pages,
            digest_after: hex::encode(self.ld),
        });
    }

    /// Measure `data` (whole pages) as NORMAL pages from `gpa`.
    ///
    /// Only the PAGE_INFO chain is sequential; the per-page SHA-384 contents are independent,
    /// so large inputs (a 2-4 MiB firmware) are hashed on all available cores first.
    pub fn normal_pages(&mut self, component: &str, gpa: u64, data: &[u8]) {
        for (i, digest) in page_digests(data).into_iter().enumerate() {
            self.update(PageType::Normal, gpa + 4096 * i as u64, digest);
        }
        self.record(
            component,
            PageType::Normal,
            gpa,
            data.len().div_ceil(4096) as u64,
        );
    }

    /// Pages whose contents are not measured (ZERO, UNMEASURED, SECRETS, CPUID).
    pub fn empty_pages(&mut self, component: &str, t: PageType, gpa: u64, pages: u64) {
        for i in 0..pages {
            self.update(t, gpa + 4096 * i, [0; 48]);
        }
        self.record(component, t, gpa, pages);
    }

    pub fn vmsa(&mut self, component: &str, page: &[u8; 4096]) {
        self.update(PageType::Vmsa, VMSA_GPA, Sha384::digest(page).into());
        self.record(component, PageType::Vmsa, VMSA_GPA, 1);
    }

    pub fn ld(&self) -> [u8; 48] {
        self.ld
    }

    pub fn into_parts(self) -> ([u8; 48], Vec<SnpEvent>) {
        (self.ld, self.events)
    }
}

/// SHA-384 of every 4 KiB page of `data`, in order (parallel for large inputs). Pages of one
/// repeated byte (erased flash, zero padding: a quarter of Debian's OVMF.fd) are hashed once
/// per byte value.
fn page_digests(data: &[u8]) -> Vec<[u8; 48]> {
    let pages: Vec<&[u8]> = data.chunks(4096).collect();
    let mut uniform: [Option<[u8; 48]>; 256] = [None; 256];
    for p in &pages {
        if p.len() == 4096 && p.iter().all(|b| *b == p[0]) && uniform[p[0] as usize].is_none() {
            uniform[p[0] as usize] = Some(Sha384::digest(p).into());
        }
    }
    let digest = |p: &&[u8]| -> [u8; 48] {
        if p.len() == 4096 {
            if let Some(d) = uniform[p[0] as usize] {
                if p.iter().all(|b| *b == p[0]) {
                    return d;
                }
            }
        }
        Sha384::digest(p).into()
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    if threads <= 1 || pages.len() < 128 {
        return pages.iter().map(digest).collect();
    }
    let per = pages.len().div_ceil(threads);
    let mut chunks: Vec<&[&[u8]]> = pages.chunks(per).collect();
    // The calling thread hashes the last chunk itself: one thread fewer to start.
    let own = chunks.pop().unwrap_or_default();
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| s.spawn(move || chunk.iter().map(digest).collect::<Vec<_>>()))
            .collect();
        let last: Vec<[u8; 48]> = own.iter().map(digest).collect();
        let mut out: Vec<[u8; 48]> = Vec::with_capacity(pages.len());
        for h in handles {
            match h.join() {
                Ok(v) => out.extend(v),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out.extend(last);
        out
    })
}

/// VMCB segment register (Linux `struct vmcb_seg`), 16 bytes.
#[derive(Clone, Copy, Default, IntoBytes, FromZeros, Immutable, KnownLayout)]
#[repr(C)]
struct VmcbSeg {
    selector: U16,
    attrib: U16,
    limit: U32,
    base: U64,
}
const _: () = assert!(core::mem::size_of::<VmcbSeg>() == 16);

fn seg(selector: u16, attrib: u16, limit: u32, base: u64) -> VmcbSeg {
    VmcbSeg {
        selector: U16::new(selector),
        attrib: U16::new(attrib),
        limit: U32::new(limit),
        base: U64::new(base),
    }
}

/// Linux `struct sev_es_save_area` (arch/x86/include/asm/svm.h) padded to one 4 KiB page.
/// Only the fields a VMM sets at reset are named; the rest are reserved ranges (zero).
#[derive(Clone, Copy, IntoBytes, FromZeros, Immutable, KnownLayout)]
#[repr(C)]
struct SaveArea {
    es: VmcbSeg,
    cs: VmcbSeg,
    ss: VmcbSeg,
    ds: VmcbSeg,
    fs: VmcbSeg,
    gs: VmcbSeg,
    gdtr: VmcbSeg,
    ldtr: VmcbSeg,
    idtr: VmcbSeg,
    tr: VmcbSeg,
    _0xa0: [u8; 0xd0 - 0xa0],
    efer: U64, // 0xd0
    _0xd8: [u8; 0x148 - 0xd8],
    cr4: U64, // 0x148
    cr3: U64,
    cr0: U64,
    dr7: U64,
    dr6: U64,
    rflags: U64,
    rip: U64, // 0x178
    _0x180: [u8; 0x268 - 0x180],
    g_pat: U64, // 0x268
    _0x270: [u8; 0x310 - 0x270],
    rdx: U64, // 0x310
    _0x318: [u8; 0x3b0 - 0x318],
    sev_features: U64, // 0x3b0
    _0x3b8: [u8; 0x3e8 - 0x3b8],
    xcr0: U64, // 0x3e8
    _0x3f0: [u8; 0x408 - 0x3f0],
    mxcsr: U32, // 0x408
    x87_ftw: U16,
    x87_fsw: U16,
    x87_fcw: U16, // 0x410
    _0x412: [u8; 4096 - 0x412],
}
const _: () = assert!(core::mem::size_of::<SaveArea>() == 4096);
const _: () = assert!(core::mem::offset_of!(SaveArea, efer) == 0xd0);
const _: () = assert!(core::mem::offset_of!(SaveArea, rip) == 0x178);
const _: () = assert!(core::mem::offset_of!(SaveArea, g_pat) == 0x268);
const _: () = assert!(core::mem::offset_of!(SaveArea, rdx) == 0x310);
const _: () = assert!(core::mem::offset_of!(SaveArea, sev_features) == 0x3b0);
const _: () = assert!(core::mem::offset_of!(SaveArea, xcr0) == 0x3e8);
const _: () = assert!(core::mem::offset_of!(SaveArea, x87_fcw) == 0x410);

const BSP_EIP: u32 = 0xffff_fff0;

/// The reset-state VMSA of one vCPU starting at `eip` (16-bit real mode, CS base from EIP).
fn vmsa_page(eip: u32, sev_features: u64, vcpu_sig: u32, vmm: VmmType) -> [u8; 4096] {
    let mut g_pat = 0x0007_0406_0007_0406u64; // PAT reset value, AMD APM vol. 2 §A.3
    let (cs_flags, ss_flags, tr_flags, rdx, mxcsr, fcw) = match vmm {
        VmmType::Qemu => (0x9b, 0x93, 0x8b, u64::from(vcpu_sig), 0x1f80, 0x37f),
        VmmType::Ec2 => (
            if eip == BSP_EIP { 0x9a } else { 0x9b },
            0x92,
            0x83,
            0x600,
            0,
            0,
        ),
        VmmType::Gce => {
            g_pat = 0x0007_0106;
            (0x9b, 0x93, 0x8b, 0x600, 0, 0)
        }
    };
    let mut s = SaveArea::new_zeroed();
    s.es = seg(0, 0x93, 0xffff, 0);
    s.cs = seg(0xf000, cs_flags, 0xffff, u64::from(eip & 0xffff_0000));
    s.ss = seg(0, ss_flags, 0xffff, 0);
    s.ds = seg(0, 0x93, 0xffff, 0);
    s.fs = seg(0, 0x93, 0xffff, 0);
    s.gs = seg(0, 0x93, 0xffff, 0);
    s.gdtr = seg(0, 0, 0xffff, 0);
    s.idtr = seg(0, 0, 0xffff, 0);
    s.ldtr = seg(0, 0x82, 0xffff, 0);
    s.tr = seg(0, tr_flags, 0xffff, 0);
    s.efer = U64::new(0x1000); // EFER.SVME
    s.cr4 = U64::new(0x40); // CR4.MCE
    s.cr0 = U64::new(0x10);
    s.dr7 = U64::new(0x400);
    s.dr6 = U64::new(0xffff_0ff0);
    s.rflags = U64::new(2);
    s.rip = U64::new(u64::from(eip & 0xffff));
    s.g_pat = U64::new(g_pat);
    s.rdx = U64::new(rdx);
    s.sev_features = U64::new(sev_features);
    s.xcr0 = U64::new(1);
    s.mxcsr = U32::new(mxcsr);
    s.x87_fcw = U16::new(fcw);
    let mut page = [0u8; 4096];
    page.copy_from_slice(s.as_bytes());
    page
}

/// The COCONUT-SVSM reset VMSA (64-bit flat segments, entry at the SVSM's start address).
/// Like sev-snp-measure 0.0.13, x87 FCW stays 0 (upstream's vectors encode that).
fn svsm_vmsa_page(eip: u64, vcpu_sig: u32) -> [u8; 4096] {
    let mut s = SaveArea::new_zeroed();
    s.es = seg(16, 0xc93, 0xffff_ffff, 0);
    s.cs = seg(8, 0xc9b, 0xffff_ffff, 0);
    s.ss = seg(16, 0xc93, 0xffff_ffff, 0);
    s.ds = seg(16, 0xc93, 0xffff_ffff, 0);
    s.fs = seg(16, 0xc93, 0xffff_ffff, 0);
    s.gs = seg(0, 0x093, 0xffff, 0);
    s.gdtr = seg(0, 0, 0xffff, 0);
    s.idtr = seg(0, 0, 0xffff, 0);
    s.ldtr = seg(0, 0x82, 0xffff, 0);
    s.tr = seg(0, 0x8b, 0xffff, 0);
    s.efer = U64::new(0x1000);
    s.cr4 = U64::new(0x40);
    s.cr0 = U64::new(0x11);
    s.dr7 = U64::new(0x400);
    s.dr6 = U64::new(0xffff_0ff0);
    s.rflags = U64::new(2);
    s.rip = U64::new(eip);
    s.g_pat = U64::new(0x0007_0406_0007_0406);
    s.rdx = U64::new(u64::from(vcpu_sig));
    s.sev_features = U64::new(1);
    s.xcr0 = U64::new(1);
    s.mxcsr = U32::new(0x1f80);
    let mut page = [0u8; 4096];
    page.copy_from_slice(s.as_bytes());
    page
}

/// A launch digest and how it was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// 48 bytes (SNP) or 32 bytes (SEV, SEV-ES).
    pub digest: Vec<u8>,
    pub events: Vec<SnpEvent>,
}

fn pages_of(gpa: u32, size: u32) -> Result<u64, SnpError> {
    if !size.is_multiple_of(4096) {
        return Err(SnpError::SectionSize { gpa, size });
    }
    Ok(u64::from(size) / 4096)
}

fn metadata_pages(
    g: &mut Gctx,
    fw: &Ovmf<'_>,
    hashes: Option<&SevHashes>,
    vmm: VmmType,
) -> Result<(), SnpError> {
    for s in fw.sections() {
        let name = s.kind.name();
        let gpa = u64::from(s.gpa);
        match s.kind {
            SectionType::SnpSecMem => {
                let t = if vmm == VmmType::Gce {
                    PageType::Unmeasured
                } else {
                    PageType::Zero
                };
                g.empty_pages(name, t, gpa, pages_of(s.gpa, s.size)?);
            }
            SectionType::SnpSecrets => g.empty_pages(name, PageType::Secrets, gpa, 1),
            SectionType::Cpuid => {
                if vmm != VmmType::Ec2 {
                    g.empty_pages(name, PageType::Cpuid, gpa, 1);
                }
            }
            SectionType::SnpKernelHashes => match hashes {
                Some(h) => {
                    if s.size != 4096 {
                        return Err(SnpError::HashesSectionSize(s.size));
                    }
                    let off = fw.sev_hashes_table_gpa()? & 0xfff;
                    g.normal_pages("kernel-hashes", gpa, &h.page(off)?);
                }
                None => g.empty_pages(name, PageType::Zero, gpa, pages_of(s.gpa, s.size)?),
            },
            SectionType::SvsmCaa => {
                g.empty_pages(name, PageType::Zero, gpa, pages_of(s.gpa, s.size)?)
            }
        }
    }
    if vmm == VmmType::Ec2 {
        for s in fw
            .sections()
            .iter()
            .filter(|s| s.kind == SectionType::Cpuid)
        {
            g.empty_pages("CPUID (ec2: last)", PageType::Cpuid, u64::from(s.gpa), 1);
        }
    }
    if hashes.is_some() && !fw.has_section(SectionType::SnpKernelHashes) {
        return Err(SnpError::NoKernelHashesSection);
    }
    Ok(())
}

/// The SNP launch digest. `ovmf_hash` seeds the digest instead of measuring the firmware
/// pages (sev-snp-measure `--snp-ovmf-hash`); the firmware's metadata is still used.
pub fn snp_launch_digest(
    fw: &Ovmf<'_>,
    ovmf_hash: Option<[u8; 48]>,
    hashes: Option<&SevHashes>,
    shape: &SnpShape,
) -> Result<Launch, SnpError> {
    if shape.vcpus == 0 {
        return Err(SnpError::NoVcpus);
    }
    let mut g = Gctx::new(ovmf_hash);
    if ovmf_hash.is_none() {
        g.normal_pages("firmware", fw.gpa(), fw.data());
    }
    metadata_pages(&mut g, fw, hashes, shape.vmm)?;
    let ap_eip = fw.sev_es_reset_eip()?;
    let bsp = vmsa_page(BSP_EIP, shape.guest_features, shape.vcpu_sig, shape.vmm);
    let ap = vmsa_page(ap_eip, shape.guest_features, shape.vcpu_sig, shape.vmm);
    for i in 0..shape.vcpus {
        g.vmsa(&format!("vmsa[{i}]"), if i == 0 { &bsp } else { &ap });
    }
    let (ld, events) = g.into_parts();
    Ok(Launch {
        digest: ld.to_vec(),
        events,
    })
}

/// The launch digest after the firmware pages alone (`--mode snp:ovmf-hash`).
pub fn snp_ovmf_hash(fw: &Ovmf<'_>) -> [u8; 48] {
    let mut g = Gctx::new(None);
    g.normal_pages("firmware", fw.gpa(), fw.data());
    g.ld()
}

/// COCONUT-SVSM: OVMF pages, SVSM pages (ending `vars_size` below OVMF), SVSM metadata,
/// then identical VMSAs starting at the SVSM entry point.
pub fn svsm_launch_digest(
    ovmf: &Ovmf<'_>,
    svsm_image: &[u8],
    vars_size: u64,
    vcpus: u32,
    vcpu_sig: u32,
) -> Result<Launch, SnpError> {
    if vcpus == 0 {
        return Err(SnpError::NoVcpus);
    }
    let end = ovmf
        .gpa()
        .checked_sub(vars_size)
        .ok_or(OvmfError::TooLarge(svsm_image.len()))?;
    let svsm = Ovmf::parse_ending_at(svsm_image, end)?;
    let eip = svsm.svsm_reset_eip()?;
    let mut g = Gctx::new(None);
    g.normal_pages("firmware", ovmf.gpa(), ovmf.data());
    g.normal_pages("svsm", svsm.gpa(), svsm.data());
    metadata_pages(&mut g, &svsm, None, VmmType::Qemu)?;
    let page = svsm_vmsa_page(eip, vcpu_sig);
    for i in 0..vcpus {
        g.vmsa(&format!("vmsa[{i}]"), &page);
    }
    let (ld, events) = g.into_parts();
    Ok(Launch {
        digest: ld.to_vec(),
        events,
    })
}

fn sev_common(
    fw: &Ovmf<'_>,
    hashes: Option<&SevHashes>,
    vmsas: Option<&SnpShape>,
) -> Result<Launch, SnpError> {
    let mut h = Sha256::new();
    let mut events = Vec::new();
    let mut ev = |component: &str, h: &Sha256, pages: u64| {
        events.push(SnpEvent {
            component: component.into(),
            page_type: "LAUNCH_UPDATE_DATA".into(),
            gpa: 0,
            pages,
            digest_after: hex::encode(h.clone().finalize()),
        })
    };
    h.update(fw.data());
    ev("firmware", &h, fw.data().len() as u64 / 4096);
    if let Some(hs) = hashes {
        if !fw.is_sev_hashes_table_supported() {
            return Err(SnpError::NoHashesTable);
        }
        h.update(hs.table());
        ev("kernel-hashes", &h, 0);
    }
    if let Some(shape) = vmsas {
        if shape.vcpus == 0 {
            return Err(SnpError::NoVcpus);
        }
        let ap_eip = fw.sev_es_reset_eip()?;
        let bsp = vmsa_page(BSP_EIP, 0, shape.vcpu_sig, shape.vmm);
        let ap = vmsa_page(ap_eip, 0, shape.vcpu_sig, shape.vmm);
        for i in 0..shape.vcpus {
            h.update(if i == 0 { &bsp } else { &ap });
            ev(&format!("vmsa[{i}]"), &h, 1);
        }
    }
    Ok(Launch {
        digest: h.finalize().to_vec(),
        events,
    })
}

/// SEV: SHA-256(firmware ‖ hashes table).
pub fn sev_launch_digest(fw: &Ovmf<'_>, hashes: Option<&SevHashes>) -> Result<Launch, SnpError> {
    sev_common(fw, hashes, None)
}

/// SEV-ES: SHA-256(firmware ‖ hashes table ‖ VMSAs with SEV_FEATURES 0).
pub fn seves_launch_digest(
    fw: &Ovmf<'_>,
    hashes: Option<&SevHashes>,
    shape: &SnpShape,
) -> Result<Launch, SnpError> {
    sev_common(fw, hashes, Some(shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_signatures() {
        assert_eq!(CpuType::EpycV4.sig(), 0x800f12);
        assert_eq!(cpu_sig(25, 17, 0), 0xa10f10);
        assert_eq!(cpu_sig(26, 0, 0), 0xb00f00);
    }

    #[test]
    fn hashes_table_layout() {
        let t = SevHashes::new(b"", None, None).table();
        assert_eq!(t.len(), 176);
        assert_eq!(&t[16..18], &168u16.to_le_bytes());
        // cmdline hash is SHA-256 of a lone NUL
        let nul: [u8; 32] = Sha256::digest([0u8]).into();
        assert_eq!(&t[18 + 18..18 + 50], &nul);
    }

    #[test]
    fn empty_append_is_no_append() {
        assert_eq!(
            SevHashes::new(b"k", None, Some("")),
            SevHashes::new(b"k", None, None)
        );
    }
}

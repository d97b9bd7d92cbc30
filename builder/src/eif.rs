//! AWS Nitro Enclaves Enclave Image File (EIF) version 4: writer and reader.
//!
//! Layout (aws-nitro-enclaves-image-format 0.8.1, `src/defs/mod.rs` and `EifBuilder` in
//! `src/utils/mod.rs`; all integers big-endian): a 548-byte header, then sections in this
//! order, each a 12-byte section header followed by its data: kernel (bzImage), command
//! line (no NUL), metadata (JSON), ramdisks (cpio), signature (optional, CBOR). The header's
//! `section_offsets[i]` point at section headers, `section_sizes[i]` are the data sizes, and
//! `eif_crc32` is CRC-32/ISO-HDLC over the header without that field, then every section
//! header and its data in file order.
//!
//! The metadata is `EifIdentityInfo` as compact JSON with the crate's field order; dcr fills
//! it from the recipe and SOURCE_DATE_EPOCH (never the wall clock), so the same inputs give
//! the same bytes. The metadata does not count in any PCR.

use zerocopy::byteorder::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub const EIF_MAGIC: [u8; 4] = *b".eif";
pub const EIF_VERSION: u16 = 4;
pub const MAX_SECTIONS: usize = 32;
/// Header flag bit 0: an aarch64 image (clear for x86_64).
pub const FLAG_ARM64: u16 = 1;

/// Section types (`EifSectionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum SectionType {
    Kernel = 1,
    Cmdline = 2,
    Ramdisk = 3,
    Signature = 4,
    Metadata = 5,
}

impl SectionType {
    fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => SectionType::Kernel,
            2 => SectionType::Cmdline,
            3 => SectionType::Ramdisk,
            4 => SectionType::Signature,
            5 => SectionType::Metadata,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SectionType::Kernel => "kernel",
            SectionType::Cmdline => "cmdline",
            SectionType::Ramdisk => "ramdisk",
            SectionType::Signature => "signature",
            SectionType::Metadata => "metadata",
        }
    }
}

/// `EifHeader` (defs/mod.rs), 548 bytes.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct EifHeader {
    pub magic: [u8; 4],
    pub version: U16,
    pub flags: U16,
    pub default_mem: U64,
    pub default_cpus: U64,
    pub reserved: U16,
    pub num_sections: U16,
    pub section_offsets: [U64; MAX_SECTIONS],
    pub section_sizes: [U64; MAX_SECTIONS],
    pub unused: U32,
    pub eif_crc32: U32,
}
const _: () = assert!(std::mem::size_of::<EifHeader>() == 548);

/// `EifSectionHeader`, 12 bytes.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SectionHeader {
    pub section_type: U16,
    pub flags: U16,
    pub size: U64,
}
const _: () = assert!(std::mem::size_of::<SectionHeader>() == 12);

/// `EifBuildInfo` (the metadata's `BuildMetadata`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildInfo {
    #[serde(rename = "BuildTime")]
    pub build_time: String,
    #[serde(rename = "BuildTool")]
    pub build_tool: String,
    #[serde(rename = "BuildToolVersion")]
    pub build_tool_version: String,
    #[serde(rename = "OperatingSystem")]
    pub operating_system: String,
    #[serde(rename = "KernelVersion")]
    pub kernel_version: String,
}

/// `EifIdentityInfo`: the metadata section, in the crate's field order.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metadata {
    #[serde(rename = "ImageName")]
    pub image_name: String,
    #[serde(rename = "ImageVersion")]
    pub image_version: String,
    #[serde(rename = "BuildMetadata")]
    pub build: BuildInfo,
    #[serde(rename = "DockerInfo")]
    pub docker_info: serde_json::Value,
    #[serde(rename = "CustomMetadata")]
    pub custom: serde_json::Value,
}

/// A signer of the image's PCR 0: the certificate (PEM, as nitro-cli keeps it in the
/// signature section; its DER is what PCR 8 measures) and its P-384 key.
#[derive(Clone)]
pub struct Signer {
    pub certificate_pem: Vec<u8>,
    pub certificate_der: Vec<u8>,
    pub key: p384::ecdsa::SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    /// A certificate (PEM) and a PKCS#8 P-384 private key (PEM) that belongs to it.
    pub fn from_pem(certificate_pem: &[u8], key_pem: &str) -> Result<Signer, EifError> {
        use p384::pkcs8::{DecodePrivateKey, DecodePublicKey};
        let (label, der) = p384::pkcs8::der::pem::decode_vec(certificate_pem)
            .map_err(|e| EifError::Signer(format!("certificate: not PEM ({e})")))?;
        if label != "CERTIFICATE" {
            return Err(EifError::Signer(format!(
                "certificate: PEM label {label:?}, expected CERTIFICATE"
            )));
        }
        let key = p384::ecdsa::SigningKey::from_pkcs8_pem(key_pem)
            .map_err(|e| EifError::Signer(format!("key: not a PKCS#8 P-384 private key ({e})")))?;
        // The certificate's key must be this key's public half.
        let spki = spki_der(&der)?;
        let public = p384::ecdsa::VerifyingKey::from_public_key_der(&spki)
            .map_err(|_| EifError::Signer("certificate: its key is not P-384".into()))?;
        if &public != key.verifying_key() {
            return Err(EifError::Signer(
                "the key is not the certificate's (their public keys differ)".into(),
            ));
        }
        Ok(Signer {
            certificate_pem: certificate_pem.to_vec(),
            certificate_der: der,
            key,
        })
    }
}

/// The SubjectPublicKeyInfo of a DER certificate: tbsCertificate's seventh field (after an
/// optional [0] version: serialNumber, signature, issuer, validity, subject, SPKI).
fn spki_der(cert: &[u8]) -> Result<Vec<u8>, EifError> {
    use p384::pkcs8::der::{Any, Decode, Encode, Reader, SliceReader, Tag, TagNumber, Tagged};
    let bad = |w: &str| EifError::Signer(format!("certificate: not X.509 DER ({w})"));
    let outer = Any::from_der(cert).map_err(|_| bad("outer"))?;
    let mut r = SliceReader::new(outer.value()).map_err(|_| bad("outer"))?;
    let tbs: Any = r.decode().map_err(|_| bad("tbsCertificate"))?;
    let mut t = SliceReader::new(tbs.value()).map_err(|_| bad("tbsCertificate"))?;
    let mut first: Any = t.decode().map_err(|_| bad("version"))?;
    if first.tag()
        == (Tag::ContextSpecific {
            constructed: true,
            number: TagNumber::N0,
        })
    {
        first = t.decode().map_err(|_| bad("serialNumber"))?;
    }
    let _ = first;
    for what in ["signature", "issuer", "validity", "subject"] {
        let _: Any = t.decode().map_err(|_| bad(what))?;
    }
    let spki: Any = t.decode().map_err(|_| bad("subjectPublicKeyInfo"))?;
    spki.to_der().map_err(|_| bad("subjectPublicKeyInfo"))
}

/// `PcrInfo` and `PcrSignature` of the signature section (defs/mod.rs), with serde's
/// default `Vec<u8>` form: CBOR arrays of integers.
#[derive(serde::Serialize, serde::Deserialize)]
struct PcrInfo {
    register_index: i32,
    register_value: Vec<u8>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PcrSignature {
    signing_certificate: Vec<u8>,
    signature: Vec<u8>,
}

/// The signature section: a CBOR list with one `PcrSignature` whose `signature` is a tagged
/// COSE_Sign1 (protected `{1: -35}`, ES384) over the CBOR `PcrInfo {0, PCR 0}`.
fn signature_section(s: &Signer, pcr0: &[u8; 48]) -> Result<Vec<u8>, EifError> {
    use coset::{iana, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
    use p384::ecdsa::signature::Signer as _;
    let payload = to_cbor(&PcrInfo {
        register_index: 0,
        register_value: pcr0.to_vec(),
    })?;
    let sign1 = CoseSign1Builder::new()
        .protected(
            HeaderBuilder::new()
                .algorithm(iana::Algorithm::ES384)
                .build(),
        )
        .payload(payload)
        .create_signature(b"", |tbs| {
            let sig: p384::ecdsa::Signature = s.key.sign(tbs);
            sig.to_bytes().to_vec()
        })
        .build()
        .to_tagged_vec()
        .map_err(|e| EifError::Signer(format!("COSE_Sign1: {e}")))?;
    to_cbor(&vec![PcrSignature {
        signing_certificate: s.certificate_pem.clone(),
        signature: sign1,
    }])
}

/// CBOR of a serializable value (ciborium).
fn to_cbor<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, EifError> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).map_err(|e| EifError::Signer(format!("CBOR: {e}")))?;
    Ok(out)
}

/// What goes into an image.
#[derive(Debug, Clone)]
pub struct EifInputs<'a> {
    pub kernel: &'a [u8],
    pub cmdline: &'a str,
    pub metadata: &'a Metadata,
    pub ramdisks: Vec<&'a [u8]>,
    /// The default memory (MiB) and vCPUs `nitro-cli run-enclave` may override.
    pub memory_mib: u64,
    pub cpus: u64,
    pub arm64: bool,
    /// Sign PCR 0 (a signature section, PCR 8 = the certificate).
    pub signer: Option<&'a Signer>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EifError {
    #[error("{0} sections, at most {MAX_SECTIONS}")]
    TooManySections(usize),
    #[error("the command line contains a NUL byte")]
    CmdlineNul,
    #[error("no ramdisk (an enclave boots from its ramdisks)")]
    NoRamdisk,
    #[error("{0} bytes, shorter than the 548-byte header")]
    Short(usize),
    #[error("magic is not \".eif\"")]
    Magic,
    #[error("version {0}, expected 4")]
    Version(u16),
    #[error("section {index}: {reason}")]
    Section { index: usize, reason: String },
    #[error("{0} bytes after the last section")]
    Trailing(usize),
    #[error("CRC-32 {stored:08x} in the header, {computed:08x} computed")]
    Crc { stored: u32, computed: u32 },
    #[error("metadata: {0}")]
    Metadata(String),
    #[error("signing: {0}")]
    Signer(String),
}

fn section(kind: SectionType, data: &[u8]) -> (SectionHeader, &[u8]) {
    (
        SectionHeader {
            section_type: U16::new(kind as u16),
            flags: U16::new(0),
            size: U64::new(data.len() as u64),
        },
        data,
    )
}

/// Write an image. Pure and deterministic.
pub fn write(i: &EifInputs<'_>) -> Result<Vec<u8>, EifError> {
    if i.cmdline.as_bytes().contains(&0) {
        return Err(EifError::CmdlineNul);
    }
    if i.ramdisks.is_empty() {
        return Err(EifError::NoRamdisk);
    }
    let metadata = serde_json::to_vec(i.metadata).map_err(|e| EifError::Metadata(e.to_string()))?;
    let mut sections = vec![
        section(SectionType::Kernel, i.kernel),
        section(SectionType::Cmdline, i.cmdline.as_bytes()),
        section(SectionType::Metadata, &metadata),
    ];
    sections.extend(i.ramdisks.iter().map(|r| section(SectionType::Ramdisk, r)));
    let signature = match i.signer {
        Some(s) => {
            let pcr0 =
                dcr_measure::nitro::pcrs(i.kernel, i.cmdline.as_bytes(), &i.ramdisks, None).pcr0;
            Some(signature_section(s, &pcr0)?)
        }
        None => None,
    };
    if let Some(sig) = &signature {
        sections.push(section(SectionType::Signature, sig));
    }
    if sections.len() > MAX_SECTIONS {
        return Err(EifError::TooManySections(sections.len()));
    }
    let mut header = EifHeader {
        magic: EIF_MAGIC,
        version: U16::new(EIF_VERSION),
        flags: U16::new(if i.arm64 { FLAG_ARM64 } else { 0 }),
        default_mem: U64::new(i.memory_mib * 1024 * 1024),
        default_cpus: U64::new(i.cpus),
        reserved: U16::new(0),
        num_sections: U16::new(sections.len() as u16),
        section_offsets: [U64::new(0); MAX_SECTIONS],
        section_sizes: [U64::new(0); MAX_SECTIONS],
        unused: U32::new(0),
        eif_crc32: U32::new(0),
    };
    let mut off = std::mem::size_of::<EifHeader>() as u64;
    for (n, (_, data)) in sections.iter().enumerate() {
        header.section_offsets[n] = U64::new(off);
        header.section_sizes[n] = U64::new(data.len() as u64);
        off += (std::mem::size_of::<SectionHeader>() + data.len()) as u64;
    }
    let mut out = Vec::with_capacity(off as usize);
    out.extend_from_slice(header.as_bytes());
    for (h, data) in &sections {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
    }
    let crc = crc(&out);
    out[544..548].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// CRC-32/ISO-HDLC of an image without the header's CRC field.
fn crc(image: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&image[..544]);
    h.update(&image[548..]);
    h.finalize()
}

/// One section of a parsed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub kind: SectionType,
    pub flags: u16,
    /// Offset of the section header in the file.
    pub offset: u64,
    pub data: std::ops::Range<usize>,
}

/// A parsed image: its header and sections, checked against each other.
#[derive(Debug, Clone)]
pub struct Eif {
    pub header: EifHeader,
    pub sections: Vec<Section>,
}

impl Eif {
    /// Parse and check an image: magic, version, every section header where the header's
    /// offset table says and with its size, nothing after the last section, the CRC.
    pub fn parse(b: &[u8]) -> Result<Eif, EifError> {
        let (header, _) = EifHeader::read_from_prefix(b).map_err(|_| EifError::Short(b.len()))?;
        if header.magic != EIF_MAGIC {
            return Err(EifError::Magic);
        }
        if header.version.get() != EIF_VERSION {
            return Err(EifError::Version(header.version.get()));
        }
        let n = usize::from(header.num_sections.get());
        if n > MAX_SECTIONS {
            return Err(EifError::TooManySections(n));
        }
        let mut sections = Vec::with_capacity(n);
        let mut pos = std::mem::size_of::<EifHeader>();
        for index in 0..n {
            let err = |reason: String| EifError::Section { index, reason };
            if header.section_offsets[index].get() != pos as u64 {
                return Err(err(format!(
                    "the header puts it at {}, it is at {pos}",
                    header.section_offsets[index].get()
                )));
            }
            let (sh, _) = b
                .get(pos..)
                .and_then(|r| SectionHeader::read_from_prefix(r).ok())
                .ok_or_else(|| err("header runs past the end".into()))?;
            let kind = SectionType::from_u16(sh.section_type.get())
                .ok_or_else(|| err(format!("unknown type {}", sh.section_type.get())))?;
            let size = sh.size.get();
            if size != header.section_sizes[index].get() {
                return Err(err(format!(
                    "{size} bytes, the header says {}",
                    header.section_sizes[index].get()
                )));
            }
            let start = pos + std::mem::size_of::<SectionHeader>();
            let end = usize::try_from(size)
                .ok()
                .and_then(|s| start.checked_add(s))
                .filter(|e| *e <= b.len())
                .ok_or_else(|| err(format!("{size} bytes run past the end")))?;
            sections.push(Section {
                kind,
                flags: sh.flags.get(),
                offset: pos as u64,
                data: start..end,
            });
            pos = end;
        }
        if pos != b.len() {
            return Err(EifError::Trailing(b.len() - pos));
        }
        let computed = crc(b);
        if computed != header.eif_crc32.get() {
            return Err(EifError::Crc {
                stored: header.eif_crc32.get(),
                computed,
            });
        }
        Ok(Eif { header, sections })
    }

    /// The data of every section of `kind`, in order.
    pub fn data<'b>(&self, b: &'b [u8], kind: SectionType) -> Vec<&'b [u8]> {
        self.sections
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| &b[s.data.clone()])
            .collect()
    }

    /// The PCRs of this image; PCR 8 from the first signature's certificate, if signed
    /// (an unreadable signature section gives no PCR 8).
    pub fn pcrs(&self, b: &[u8]) -> dcr_measure::nitro::NitroPcrs {
        let kernel = self.data(b, SectionType::Kernel).concat();
        let cmdline = self.data(b, SectionType::Cmdline).concat();
        let ramdisks = self.data(b, SectionType::Ramdisk);
        let cert = self
            .data(b, SectionType::Signature)
            .first()
            .and_then(|s| ciborium::from_reader::<Vec<PcrSignature>, _>(*s).ok())
            .and_then(|v| v.into_iter().next())
            .and_then(|p| {
                p384::pkcs8::der::pem::decode_vec(&p.signing_certificate)
                    .ok()
                    .map(|(_, der)| der)
            });
        dcr_measure::nitro::pcrs(&kernel, &cmdline, &ramdisks, cert.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Metadata {
        Metadata {
            image_name: "t".into(),
            image_version: "1".into(),
            build: BuildInfo {
                build_time: "1970-01-01T00:00:00Z".into(),
                build_tool: "dcr-build".into(),
                build_tool_version: "0".into(),
                operating_system: "Linux".into(),
                kernel_version: "6".into(),
            },
            docker_info: serde_json::json!({}),
            custom: serde_json::Value::Null,
        }
    }

    #[test]
    fn written_images_parse_and_every_damage_is_named() {
        let m = meta();
        let i = EifInputs {
            kernel: b"kernel",
            cmdline: "console=ttyS0",
            metadata: &m,
            ramdisks: vec![b"r0", b"r1"],
            memory_mib: 512,
            cpus: 2,
            arm64: false,
            signer: None,
        };
        let b = write(&i).unwrap();
        assert_eq!(b, write(&i).unwrap());
        let e = Eif::parse(&b).unwrap();
        let kinds: Vec<_> = e.sections.iter().map(|s| s.kind).collect();
        use SectionType::*;
        assert_eq!(kinds, [Kernel, Cmdline, Metadata, Ramdisk, Ramdisk]);
        assert_eq!(e.data(&b, Ramdisk), [&b"r0"[..], b"r1"]);
        let meta_back: super::Metadata = serde_json::from_slice(e.data(&b, Metadata)[0]).unwrap();
        assert_eq!(meta_back, m);
        let mut t = b.clone();
        *t.last_mut().unwrap() ^= 1;
        assert!(matches!(Eif::parse(&t), Err(EifError::Crc { .. })));
        let mut t = b.clone();
        t.push(0);
        assert_eq!(Eif::parse(&t).unwrap_err(), EifError::Trailing(1));
        assert!(matches!(
            Eif::parse(&b[..b.len() - 1]),
            Err(EifError::Section { index: 4, .. })
        ));
        assert_eq!(Eif::parse(&b[..100]).unwrap_err(), EifError::Short(100));
        let bad = EifInputs {
            cmdline: "a\0b",
            ..i.clone()
        };
        assert_eq!(write(&bad).unwrap_err(), EifError::CmdlineNul);
    }
}

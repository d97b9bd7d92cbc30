//! Launch-measurement prediction: bytes and a typed VM shape in, digests and an event list out.
//! No filesystem, no clock: the builder (predicting) and the verifier (checking) share it.
//!
//! - [`snp`]: AMD SEV, SEV-ES and SEV-SNP launch digests (QEMU direct boot with kernel hashes,
//!   EC2 and GCE VMSA variants, COCONUT-SVSM), bit-compatible with sev-snp-measure 0.0.13.
//! - [`tdx`]: Intel TDX MRTD from TDVF metadata (single- and two-pass page order).
//! - [`tpm`]: PCR 11 of a UKI for the systemd-stub version it embeds.
//! - [`eventlog`]: TCG2 crypto-agile event logs (TPM and CCEL): parse and replay.
//! - [`ovmf`]: the OVMF footer GUID table and SEV metadata those need.

#![forbid(unsafe_code)]

pub mod eventlog;
pub mod ovmf;
pub mod snp;
pub mod tdx;
pub mod tpm;

/// A GUID as stored in firmware tables (mixed-endian, `uuid.bytes_le`), from its text form.
pub const fn guid_le(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5],
        d4[6], d4[7],
    ]
}

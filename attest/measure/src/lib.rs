//! Launch-measurement prediction: bytes and a typed VM shape in, digests and an event list out.
//! No filesystem, no clock: the builder (predicting) and the verifier (checking) share it.
//!
//! - [`snp`]: AMD SEV, SEV-ES and SEV-SNP launch digests (QEMU direct boot with kernel hashes,
//!   EC2 and GCE VMSA variants, COCONUT-SVSM), bit-compatible with sev-snp-measure 0.0.13.
//! - [`tdx`]: Intel TDX MRTD from TDVF metadata (single- and two-pass page order).
//! - [`tpm`]: PCR 11 of a UKI for the systemd-stub version it embeds.
//! - [`nitro`]: AWS Nitro Enclaves PCR 0, 1, 2 and 8 of an Enclave Image File.
//! - [`eventlog`]: TCG2 crypto-agile event logs (TPM and CCEL): parse and replay.
//! - [`ovmf`]: the OVMF footer GUID table and SEV metadata those need.

#![forbid(unsafe_code)]

// Firmware GUIDs are written as text with `uuid::uuid!` and stored mixed-endian
// (`Uuid::to_bytes_le`), as EDK II lays out EFI_GUID.

pub mod eventlog;
pub mod nitro;
pub mod ovmf;
pub mod snp;
pub mod tdx;
pub mod tpm;

//! dcr-attest: decide, offline and deterministically, what confidential-VM evidence proves.
//!
//! For now this crate holds the reference-value document that `dcr-build image` writes and the
//! key-release service loads: [`reference::Measurements`] (`measurements.json`). Evidence
//! verifiers (SEV-SNP, TDX, TPM, Azure) build on it.
#![forbid(unsafe_code)]

pub mod azure;
pub mod cli;
pub mod credential;
pub mod measure;
#[cfg(feature = "service")]
pub mod parties;
pub mod reference;
#[cfg(feature = "service")]
pub mod service;
pub mod snp;
pub mod tdx;
pub mod tpm;
pub mod verdict;

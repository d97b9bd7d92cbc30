//! dcr-verify: decide, offline and deterministically, what confidential-VM evidence proves.
//!
//! Each verifier takes the evidence's bytes, the trust anchors and `now`, and returns the
//! claims it proves with a [`verdict::Verdict`] listing every check:
//! - [`snp`]: SEV-SNP attestation reports (VCEK/VLEK chain to AMD's pinned roots, TCB, policy);
//! - [`tdx`]: TDX quotes v4/v5 (Intel DCAP collateral, dcap-qvl);
//! - [`sgx`]: SGX enclave quotes (Intel DCAP collateral, dcap-qvl; MRENCLAVE / MRSIGNER);
//! - [`tpm`]: TPM2 quotes (AK signature, PCR digest, qualifying data);
//! - [`nitro`]: AWS Nitro Enclaves attestation documents (COSE_Sign1, chain to AWS's root);
//! - [`azure`]: Azure confidential VMs (HCL report binding the vTPM key, then the quote);
//! - [`credential`]: EK certificates and TPM2_MakeCredential for AK activation;
//! - [`reference`]: the verified claims compared with a build's `measurements.json`.
#![forbid(unsafe_code)]

pub mod azure;
pub mod credential;
pub mod nitro;
pub mod reference;
pub mod sgx;
pub mod snp;
pub mod tdx;
pub mod tpm;
pub mod verdict;

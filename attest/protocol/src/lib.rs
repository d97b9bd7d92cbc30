//! dcr's shared wire formats, used by the guest (guest-init, static musl) and by the parties'
//! CLI and key-release service (dcr-attest): the contract, the sealed data stream, sealed
//! outputs for recipients, the key-release binding, the HTTP API's JSON messages and the
//! reference-value document `measurements.json` that `dcr-build image` writes, and the guest's
//! console-line protocol that `dcr-build run` reads.
//! Pure: bytes in, bytes out; randomness is passed in; no filesystem, no clock.
#![forbid(unsafe_code)]

pub mod analysis;
pub mod canonical;
#[cfg(feature = "cli")]
pub mod cli;
pub mod console;
pub mod contract;
pub mod digest;
pub mod dp;
pub mod evidence;
pub mod keys;
pub mod measurements;
pub mod oci;
pub mod output;
pub mod receipt;
pub mod recipients;
pub mod release;
pub mod result;
pub mod seal;
pub mod time;
pub mod wasm;
pub mod wire;

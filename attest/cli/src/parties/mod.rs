//! The parties' side: key files, sealing and opening files, and the service client
//! (register, blobs). The CLI (`dcr-attest keygen|seal|open|register|put|get`) is a thin
//! shell over these.
//!
//! Files (docs/sealed-data.md): a recipient secret key file holds `x25519-secret:<hex>` (mode
//! 0600), its public key file `x25519:<hex>`; a DEK file holds `dek:<key id>:<hex>` (0600).

mod client;
mod files;

use std::path::{Path, PathBuf};

pub use client::*;
pub use files::*;

#[derive(Debug, thiserror::Error)]
pub enum PartyError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Format(String),
    #[error("service {url}: {code}: {message}")]
    Refused {
        url: String,
        code: String,
        message: String,
    },
    #[error("service {url}: {reason}")]
    Http { url: String, reason: String },
}

fn ferr(path: &Path, e: impl std::fmt::Display) -> PartyError {
    PartyError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

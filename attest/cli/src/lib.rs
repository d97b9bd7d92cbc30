//! The parties' side of dcr-attest as a library: the HTTP client of the key-release service
//! and the file operations of `keygen`, `seal`, `register`, `put`, `get` and `open`
//! (the binary's subcommands are thin shells over it; the end-to-end tests drive it too).
#![forbid(unsafe_code)]

pub mod parties;

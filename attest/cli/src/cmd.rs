//! The subcommands of dcr-attest, one module each: its flags (`Args`) and its body (`run`).

pub mod common;
pub mod contract;
pub mod get;
pub mod keygen;
pub mod make_credential;
pub mod open;
pub mod put;
pub mod query;
pub mod query_service;
pub mod receipts;
pub mod register;
pub mod seal;
pub mod serve;
pub mod verify;
pub mod vsock_proxy;

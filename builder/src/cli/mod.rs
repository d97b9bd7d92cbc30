//! One module a subcommand: its arguments (clap) and what it prints; the work is the
//! library's.

pub mod bench;
pub mod compare;
pub mod diagnose;
pub mod export;
pub mod image;
pub mod measure;
pub mod rootfs;
pub mod run;

//! dcr-build: the command-line shell around the dcr-build library. Parses the command line
//! and hands each subcommand to its module under `cli/`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// Reproducible, measured confidential-VM images for dcr clean rooms.
#[derive(Parser)]
#[command(name = "dcr-build", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a recipe (a directory with image.toml, or the file) into initrd.cpio, image.efi
    /// and measurements.json.
    Image(cli::image::Args),
    /// Time pack + measure of a recipe from already-built inputs against sha256sum over the
    /// same input bytes (same run); prints sizes, medians and the ratio.
    Bench(cli::bench::Args),
    /// Predict launch measurements.
    Measure(cli::measure::Args),
    /// Replay a real TCG2 event log against measurements.json: name the first differing
    /// event of each PCR and the input that explains it. Exit 0 if all match, 1 if not.
    Diagnose(cli::diagnose::Args),
    /// Compare two build outputs; exit 0 if identical, 1 if not (each difference named).
    Compare(cli::compare::Args),
    /// Export a build's Azure reference values for other key brokers: an Azure Key Vault
    /// Secure Key Release policy, or Trustee RVPS reference values plus a Rego fragment.
    Export(cli::export::Args),
    /// Flatten a pinned OCI image (layout directory or archive) into a read-only root: EROFS
    /// with a dm-verity hash tree on one device image; prints the root hash and the table.
    Rootfs(cli::rootfs::Args),
    /// Boot a build output in QEMU; exit 0 only if the guest reported success and powered off.
    Run(cli::run::Args),
}

/// Exit codes: what the subcommand returns (0, or 1 for a negative answer), 2 for any error
/// (one line on stderr, the cause chain included).
fn main() -> ExitCode {
    let cli: Cli = match dcr_protocol::cli::parse_or_exit() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = match cli.command {
        Cmd::Image(a) => cli::image::run(a),
        Cmd::Bench(a) => cli::bench::run(a),
        Cmd::Measure(a) => cli::measure::run(a),
        Cmd::Diagnose(a) => cli::diagnose::run(a),
        Cmd::Compare(a) => cli::compare::run(a),
        Cmd::Export(a) => cli::export::run(a),
        Cmd::Rootfs(a) => cli::rootfs::run(a),
        Cmd::Run(a) => cli::run::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", dcr_build::error_chain(e.as_ref()));
            ExitCode::from(2)
        }
    }
}

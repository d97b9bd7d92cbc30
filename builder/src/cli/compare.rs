//! `dcr-build compare`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

// The subcommand's help text is the doc comment of `Cmd::Compare` in main.rs.
#[derive(clap::Args)]
pub struct Args {
    a: PathBuf,
    b: PathBuf,
}

pub fn run(Args { a, b }: Args) -> anyhow::Result<ExitCode> {
    let report = dcr_build::compare::compare_dirs(&a, &b)
        .with_context(|| format!("comparing {} with {}", a.display(), b.display()))?;
    if report.identical() {
        println!(
            "identical: {} files ({})",
            report.files.len(),
            report.files.join(", ")
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("different:");
        for d in &report.differences {
            println!("  {d}");
        }
        Ok(ExitCode::from(1))
    }
}

//! `dcr-build diagnose`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

// The subcommand's help text is the doc comment of `Cmd::Diagnose` in main.rs.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_name = "PATH")]
    expected: PathBuf,
    #[arg(long, value_name = "PATH")]
    event_log: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let mbytes =
        std::fs::read(&a.expected).with_context(|| format!("reading {}", a.expected.display()))?;
    let m = dcr_protocol::measurements::Measurements::from_json(&mbytes)
        .with_context(|| a.expected.display().to_string())?;
    let lbytes = std::fs::read(&a.event_log)
        .with_context(|| format!("reading {}", a.event_log.display()))?;
    let log =
        dcr_measure::eventlog::parse(&lbytes).with_context(|| a.event_log.display().to_string())?;
    let d = dcr_build::diagnose::diagnose(&m, &log)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.expected.display()))?;
    for l in &d.lines {
        println!("{l}");
    }
    Ok(if d.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

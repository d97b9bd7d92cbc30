//! `dcr-build export skr|trustee`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use dcr_build::export;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Azure Key Vault / Managed HSM Secure Key Release policy (JSON, grammar 1.0.0) to stdout.
    Skr {
        /// measurements.json of the build.
        #[arg(long, value_name = "PATH")]
        measurements: PathBuf,
        /// The Microsoft Azure Attestation provider whose tokens the vault accepts.
        #[arg(long, value_name = "URL")]
        maa: String,
        /// Hardware accepted.
        #[arg(long, value_enum, default_value = "any")]
        tee: export::AzureTee,
    },
    /// Trustee: the RVPS registration message (JSON) to stdout, and with --rego a policy
    /// fragment to that file.
    Trustee {
        #[arg(long, value_name = "PATH")]
        measurements: PathBuf,
        #[arg(long, value_name = "PATH")]
        rego: Option<PathBuf>,
    },
}

// The subcommand's help text is the doc comment of `Cmd::Export` in main.rs.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: Cmd,
}

pub fn run(Args { what }: Args) -> anyhow::Result<ExitCode> {
    let path = match &what {
        Cmd::Skr { measurements, .. } | Cmd::Trustee { measurements, .. } => measurements,
    };
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let m = dcr_protocol::measurements::Measurements::from_json(&bytes)
        .with_context(|| path.display().to_string())?;
    let doc = match what {
        Cmd::Skr { maa, tee, .. } => export::skr_policy(&m, &maa, tee)?,
        Cmd::Trustee { rego, .. } => {
            if let Some(r) = rego {
                std::fs::write(&r, export::trustee_rego(&m)?)
                    .with_context(|| format!("writing {}", r.display()))?;
            }
            export::trustee_rvps(&m)?
        }
    };
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(ExitCode::SUCCESS)
}

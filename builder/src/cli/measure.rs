//! `dcr-build measure snp|tdx|tpm|replay`.

use std::process::ExitCode;

use dcr_build::measure;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// AMD SEV / SEV-ES / SEV-SNP launch digest (flags and output of sev-snp-measure 0.0.13).
    Snp(Box<measure::SnpArgs>),
    /// Intel TDX MRTD of a TDVF firmware image.
    Tdx(measure::TdxArgs),
    /// TPM PCR 11 of a UKI (OVMF + systemd-stub boot), for the stub version it embeds.
    Tpm(measure::TpmArgs),
    /// Replay a TCG2 event log (TPM or CCEL): the final value of every register.
    Replay(measure::ReplayArgs),
}

// The subcommand's help text is the doc comment of `Cmd::Measure` in main.rs.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: Cmd,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let text = match a.what {
        Cmd::Snp(args) => measure::snp(&args)?,
        Cmd::Tdx(args) => measure::tdx(&args)?,
        Cmd::Tpm(args) => measure::tpm(&args)?,
        Cmd::Replay(args) => measure::replay(&args)?,
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

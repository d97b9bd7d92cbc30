//! Command-line conventions shared by `dcr-attest` and `dcr-build`.

use std::process::ExitCode;

/// Parse the command line. Help and version print as clap prints them (exit 0); any usage
/// error becomes its first line on stderr (exit 2), so every error is one line.
pub fn parse_or_exit<P: clap::Parser>() -> Result<P, ExitCode> {
    match P::try_parse() {
        Ok(c) => Ok(c),
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return Err(ExitCode::SUCCESS);
            }
            let text = e.render().to_string();
            let first = text.lines().find(|l| !l.trim().is_empty());
            eprintln!("{}", first.unwrap_or("error: bad usage"));
            Err(ExitCode::from(2))
        }
    }
}

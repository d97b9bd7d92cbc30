//! The serial console, guest-init's only channel: one line per step, each starting with
//! `dcr-init: ` (`dcr_protocol::console`, which types the lines programs act on).

use std::fmt;
use std::io::{self, Write};

use dcr_protocol::console::{Line, PREFIX};

/// A report line for people: `dcr-init: <line>`.
pub fn say(line: &str) {
    print_line(format_args!("{PREFIX}{line}"));
}

/// A typed line of the console protocol (`dcr_protocol::console`).
pub fn emit(line: &Line) {
    print_line(format_args!("{line}"));
}

fn print_line(line: fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    // The console is our only channel; if it is gone there is nobody to tell.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

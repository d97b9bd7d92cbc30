//! The guest's console-line protocol: what guest-init (PID 1 in the VM) prints on the serial
//! console, one line per step, each starting with [`PREFIX`], and what `dcr-build run` reads
//! back from it.
//!
//! ```text
//! dcr-init: banner version=<v> contract=sha256:<hex> kernel=<release>
//! dcr-init: modules loaded=<n> [names] absent=<n> [names]
//! dcr-init: eventlog sha256=<hex> size=<n> base64=<TCG2 log>   (or: eventlog none)
//! dcr-init: pcr23 extended=<n> (contract + <n-1> workloads)   (or: pcr23 skipped (no TPM))
//! dcr-init: pcrs sha256 4=<hex> 9=<hex> 11=<hex> 12=<hex> 23=<hex>   (or: pcrs none (no TPM))
//! dcr-init: network static address=<a/p> gateway=<g> interface=eth0
//!            (or: network dhcp …, or: network vsock service=<cid>:<port> …)
//! dcr-init: heartbeat sent to 3:9000 and echoed   (Nitro only: /dev/nsm present)
//! dcr-init: platform detected snp=<y/n> tdx=<y/n> tpm=<y/n> azure-hcl=<y/n> contract=[…] using=<tee>
//! dcr-init: evidence tee=tpm quote=<n> signature=<n> pcrs=<n> ek-cert=<n> bytes
//! dcr-init: release ok keys=[…] signed-by=ed25519:<hex>
//! dcr-init: input <dataset> sealed=<n> bytes plaintext=<n> bytes sha256(sealed)=<hex>
//! dcr-init: workload <name> exit=<code> output=<n> bytes time=<s>s
//! dcr-init: output rows=<n> sealed=<n> bytes sha256=<hex> recipients=<n> blob=<name>
//! dcr-init: power-off status=ok
//! dcr-init: power-off status=error reason="<one line>"
//! ```
//!
//! The lines a program acts on are typed here ([`Line`]): the firmware event log
//! (`dcr-build run --save-event-log`) and the final status. [`Line`]'s `Display` is exactly
//! what the guest prints; [`Line::parse`] reads it back. The other lines are reports for
//! people (and for tests that match their text); the guest writes them as `PREFIX` + text.
//!
//! Reading is forgiving in the way a serial console needs: firmware escape sequences or other
//! noise may precede a line (the prefix is searched for anywhere in it), and bytes after a
//! fixed line (`power-off status=ok`, `eventlog none`) are ignored.

use std::fmt;

use base64::Engine;
use sha2::{Digest, Sha256};

/// What starts every guest-init console line.
pub const PREFIX: &str = "dcr-init: ";

const EVENTLOG: &str = "eventlog sha256=";
const NO_EVENTLOG: &str = "eventlog none";
const POWER_OFF_OK: &str = "power-off status=ok";
const POWER_OFF_ERROR: &str = "power-off status=error reason=";

/// A console line a program acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// `eventlog sha256=<hex> size=<n> base64=<log>`: the firmware's TCG2 event log (public
    /// measurement data), with its SHA-256 and size. A parsed one matches its SHA-256.
    EventLog { log: Vec<u8> },
    /// `eventlog none`: the kernel offers no firmware event log (no TPM).
    NoEventLog,
    /// `power-off status=ok`: the run succeeded; the guest powers off.
    PowerOffOk,
    /// `power-off status=error reason="<one line>"`: a step failed; the guest powers off.
    /// Newlines, carriage returns and double quotes in `reason` are printed as spaces, so the
    /// reason stays one quoted line.
    PowerOffError { reason: String },
}

/// A line of a known kind whose fields do not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A field is missing.
    #[error("malformed {0} line")]
    Malformed(&'static str),
    /// The event log is not valid standard base64.
    #[error("eventlog base64: {0}")]
    Base64(String),
    /// The event log does not hash to the SHA-256 on its line.
    #[error("eventlog does not match its SHA-256 (console corrupted?)")]
    Digest,
}

/// `reason` as one line without double quotes.
fn one_line(reason: &str) -> String {
    reason.replace(['\n', '\r', '"'], " ")
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        match self {
            Line::EventLog { log } => write!(
                f,
                "{EVENTLOG}{} size={} base64={}",
                hex::encode(Sha256::digest(log)),
                log.len(),
                base64::engine::general_purpose::STANDARD.encode(log)
            ),
            Line::NoEventLog => f.write_str(NO_EVENTLOG),
            Line::PowerOffOk => f.write_str(POWER_OFF_OK),
            Line::PowerOffError { reason } => {
                write!(f, "{POWER_OFF_ERROR}\"{}\"", one_line(reason))
            }
        }
    }
}

impl Line {
    /// The typed line in one console line, if it holds one of a known kind that reads.
    pub fn parse(line: &str) -> Option<Line> {
        Line::try_parse(line)?.ok()
    }

    /// The first line of a known kind in one console line: `None` if there is none, an error
    /// if its fields do not read (or an event log does not match its SHA-256).
    pub fn try_parse(line: &str) -> Option<Result<Line, LineError>> {
        line.match_indices(PREFIX)
            .find_map(|(at, _)| Line::parse_rest(&line[at + PREFIX.len()..]))
    }

    /// A line after its prefix.
    fn parse_rest(rest: &str) -> Option<Result<Line, LineError>> {
        if let Some(fields) = rest.strip_prefix(EVENTLOG) {
            return Some(parse_event_log(fields));
        }
        if rest.starts_with(NO_EVENTLOG) {
            return Some(Ok(Line::NoEventLog));
        }
        if rest.starts_with(POWER_OFF_OK) {
            return Some(Ok(Line::PowerOffOk));
        }
        if let Some(reason) = rest.strip_prefix(POWER_OFF_ERROR) {
            return Some(Ok(Line::PowerOffError {
                reason: reason.trim_matches('"').to_string(),
            }));
        }
        None
    }
}

/// `<hex> size=<n> base64=<log>` (after `eventlog sha256=`): `key=value` words, the last of a
/// key counting; `size` is informative (the log's length is what was decoded).
fn parse_event_log(fields: &str) -> Result<Line, LineError> {
    let words = format!("sha256={fields}");
    let mut sha = None;
    let mut b64 = None;
    for w in words.split_whitespace() {
        if let Some(v) = w.strip_prefix("sha256=") {
            sha = Some(v);
        } else if let Some(v) = w.strip_prefix("base64=") {
            b64 = Some(v);
        }
    }
    let (Some(sha), Some(b64)) = (sha, b64) else {
        return Err(LineError::Malformed("eventlog"));
    };
    let log = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| LineError::Base64(e.to_string()))?;
    if hex::encode(Sha256::digest(&log)) != sha {
        return Err(LineError::Digest);
    }
    Ok(Line::EventLog { log })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(line: Line) {
        let text = line.to_string();
        assert!(text.starts_with(PREFIX), "{text}");
        assert!(!text.contains('\n'), "{text}");
        assert_eq!(Line::parse(&text), Some(line), "{text}");
    }

    #[test]
    fn every_kind_round_trips() {
        round_trip(Line::EventLog {
            log: b"\x00\x01 a TCG2 log \xff".to_vec(),
        });
        round_trip(Line::EventLog { log: Vec::new() });
        round_trip(Line::NoEventLog);
        round_trip(Line::PowerOffOk);
        round_trip(Line::PowerOffError {
            reason: "network: interface eth0: No such file or directory (os error 2)".into(),
        });
    }

    #[test]
    fn the_printed_bytes_are_the_protocol() {
        assert_eq!(
            Line::PowerOffOk.to_string(),
            "dcr-init: power-off status=ok"
        );
        assert_eq!(Line::NoEventLog.to_string(), "dcr-init: eventlog none");
        assert_eq!(
            Line::PowerOffError {
                reason: "workload: \"x\"\nfailed\r".into()
            }
            .to_string(),
            "dcr-init: power-off status=error reason=\"workload:  x  failed \""
        );
        assert_eq!(
            Line::EventLog { log: b"abc".to_vec() }.to_string(),
            "dcr-init: eventlog sha256=ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad size=3 base64=YWJj"
        );
    }

    #[test]
    fn noise_before_and_after_is_tolerated() {
        assert_eq!(
            Line::parse("\x1b[2J\x1b[01;01Hdcr-init: power-off status=ok"),
            Some(Line::PowerOffOk)
        );
        assert_eq!(
            Line::parse("dcr-init: power-off status=ok [  3.1] reboot: Power down"),
            Some(Line::PowerOffOk)
        );
        assert_eq!(
            Line::parse(
                "junk dcr-init: nothing here dcr-init: power-off status=error reason=\"x\""
            ),
            Some(Line::PowerOffError { reason: "x".into() })
        );
    }

    #[test]
    fn other_lines_are_not_typed() {
        for l in [
            "",
            "dcr-init: banner version=0.1.0 contract=sha256:00 kernel=6.12",
            "dcr-init: pcrs none (no TPM)",
            "dcr-init: power-off failed: Operation not permitted",
            "power-off status=ok",
            "run: success",
        ] {
            assert_eq!(Line::try_parse(l), None, "{l}");
        }
    }

    #[test]
    fn a_bad_event_log_line_says_why() {
        let good = Line::EventLog {
            log: b"abc".to_vec(),
        }
        .to_string();
        assert_eq!(
            Line::try_parse("dcr-init: eventlog sha256=00 size=3"),
            Some(Err(LineError::Malformed("eventlog")))
        );
        assert!(matches!(
            Line::try_parse(&good.replace("YWJj", "Y!Jj")),
            Some(Err(LineError::Base64(_)))
        ));
        assert_eq!(
            Line::try_parse(&good.replace("YWJj", "YWJk")),
            Some(Err(LineError::Digest))
        );
        assert_eq!(Line::parse(&good.replace("YWJj", "YWJk")), None);
        assert_eq!(
            LineError::Malformed("eventlog").to_string(),
            "malformed eventlog line"
        );
    }
}

//! The audit log: JSON lines, each with the SHA-256 of the previous line; recovery at start
//! (a torn or corrupt tail is quarantined and cut, corruption in the middle refuses) and the
//! bounds on every record's fields.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::JournalError;

/// Where the audit log stands after recovery.
#[derive(Debug)]
pub struct AuditState {
    pub records: u64,
    pub last_hash: [u8; 32],
    /// Length of the log up to and including the last good record.
    pub len: u64,
    /// Bytes of a torn or corrupt tail moved out of the log at start (after a crash or a
    /// failed write mid-record), and the quarantine file now holding them.
    pub truncated: u64,
    pub quarantine: Option<PathBuf>,
}

/// Is this line an audit record at all (a JSON object with a `seq`)? Used to tell a corrupt
/// tail (nothing recognisable after the first bad line) from corruption in the middle.
/// The longest audit line recovery reads (records are bounded far below this: every string
/// field is cut to 128 characters, messages to 512).
const MAX_RECORD: u64 = 1 << 20;

fn looks_like_record(line: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(line)
        .map(|v| v.get("seq").is_some())
        .unwrap_or(false)
}

/// Read the audit log and check every line parses and chains. A torn or corrupt tail — the
/// bytes after the last good, chain-valid record, when no record follows the first bad line —
/// is moved to `audit.log.torn-<n>` and cut off the log. Anything else wrong (a bad line with
/// records after it) refuses: those records were acknowledged and must not be dropped.
pub fn recover_audit(path: &Path) -> Result<AuditState, JournalError> {
    let err = |reason: String| JournalError::Audit {
        path: path.to_path_buf(),
        reason,
    };
    let mut state = AuditState {
        records: 0,
        last_hash: [0u8; 32],
        len: 0,
        truncated: 0,
        quarantine: None,
    };
    // Streamed: memory is one line, whatever the log's size (a log grown by a flood of
    // refusals must not need its own size in RAM to restart).
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(state),
        Err(e) => return Err(err(e.to_string())),
    };
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut pos = 0u64;
    let mut bad: Option<(u64, String)> = None;
    loop {
        let line_no = state.records + 1;
        line.clear();
        let n = (&mut r)
            .take(MAX_RECORD + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| err(e.to_string()))?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            bad = Some((
                line_no,
                if n as u64 > MAX_RECORD {
                    format!("longer than {MAX_RECORD} bytes")
                } else {
                    "no newline (torn write)".into()
                },
            ));
            break;
        }
        let body = &line[..n - 1];
        let v: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                bad = Some((line_no, format!("not JSON: {e}")));
                break;
            }
        };
        let prev = v["prev"].as_str().unwrap_or_default();
        if prev != hex::encode(state.last_hash) {
            bad = Some((line_no, format!("hash chain broken (prev {prev:.64})")));
            break;
        }
        if v["seq"].as_u64() != Some(state.records + 1) {
            bad = Some((
                line_no,
                format!("seq {:.32} out of order", v["seq"].to_string()),
            ));
            break;
        }
        state.records += 1;
        state.last_hash = Sha256::digest(body).into();
        pos += n as u64;
    }
    state.len = pos;
    let Some((line_no, why)) = bad else {
        return Ok(state);
    };
    // The tail from the first bad line: records after it mean corruption in the middle.
    let tail_reader = || -> Result<BufReader<File>, JournalError> {
        let mut f = File::open(path).map_err(|e| err(e.to_string()))?;
        f.seek(SeekFrom::Start(pos))
            .map_err(|e| err(e.to_string()))?;
        Ok(BufReader::with_capacity(1 << 20, f))
    };
    let mut t = tail_reader()?;
    let mut later = 0u64;
    let mut first = true;
    loop {
        line.clear();
        let n = (&mut t)
            .take(MAX_RECORD + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| err(e.to_string()))?;
        if n == 0 {
            break;
        }
        if !first && line.last() == Some(&b'\n') && looks_like_record(&line[..n - 1]) {
            later += 1;
        }
        first = false;
    }
    if later > 0 {
        return Err(err(format!(
            "line {line_no}: {why}, and {later} record(s) follow it: corruption in the middle \
             of the log, not a torn tail (refusing to start; inspect the file)"
        )));
    }
    // Quarantine the tail (never overwrite an earlier quarantine file), then cut it off.
    let mut n = 1u32;
    let (qpath, mut q) = loop {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".torn-{n}"));
        let qp = PathBuf::from(name);
        match OpenOptions::new().write(true).create_new(true).open(&qp) {
            Ok(f) => break (qp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100_000 => n += 1,
            Err(e) => return Err(err(format!("quarantine {}: {e}", qp.display()))),
        }
    };
    let copied = std::io::copy(&mut tail_reader()?, &mut q)
        .and_then(|n| q.sync_all().map(|_| n))
        .map_err(|e| err(format!("quarantine {}: {e}", qpath.display())))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| err(e.to_string()))?;
    f.set_len(state.len).map_err(|e| err(e.to_string()))?;
    f.sync_all().map_err(|e| err(e.to_string()))?;
    state.truncated = copied;
    state.quarantine = Some(qpath);
    Ok(state)
}

pub(super) fn sync_dir(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Longest string kept in an audit field (`message`: [`MAX_MESSAGE`]); longer ones are cut
/// (at a character boundary) and marked with `…`, so a request cannot grow the log by more
/// than a bounded amount whatever it sends.
pub const MAX_FIELD: usize = 128;
pub const MAX_MESSAGE: usize = 512;

fn bound_str(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
}

/// Bound every string (and array) in an audit record.
pub fn bound_record(m: &mut serde_json::Map<String, serde_json::Value>) {
    use serde_json::Value;
    for (k, v) in m.iter_mut() {
        let max = if k == "message" {
            MAX_MESSAGE
        } else {
            MAX_FIELD
        };
        match v {
            Value::String(s) => bound_str(s, max),
            Value::Array(a) => {
                for x in a.iter_mut() {
                    if let Value::String(s) = x {
                        bound_str(s, MAX_FIELD);
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let d = std::env::temp_dir().join(format!("dcr-journal-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// `n` chained records as the committer writes them.
    fn chain(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = [0u8; 32];
        for seq in 1..=n {
            let line = serde_json::json!({
                "seq": seq, "prev": hex::encode(prev), "time": 1, "kind": "release",
                "decision": "refuse", "code": "unknown_session",
            })
            .to_string();
            prev = Sha256::digest(line.as_bytes()).into();
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn torn_tail_is_quarantined_and_cut() {
        let d = temp_dir("torn");
        let log = d.join("audit.log");
        let good = chain(3);
        let mut bytes = good.clone();
        bytes.extend_from_slice(b"{\"seq\":4,\"prev\":\"ab");
        std::fs::write(&log, &bytes).unwrap();
        let st = recover_audit(&log).unwrap();
        assert_eq!(st.records, 3);
        assert_eq!(st.len, good.len() as u64);
        assert_eq!(std::fs::read(&log).unwrap(), good);
        let q = st.quarantine.expect("quarantined");
        assert_eq!(q, d.join("audit.log.torn-1"));
        assert_eq!(std::fs::read(&q).unwrap(), b"{\"seq\":4,\"prev\":\"ab");
        // A second torn tail goes to the next quarantine file; the first is kept.
        let mut bytes = good.clone();
        bytes.extend_from_slice(b"garbage\n\0\0\0");
        std::fs::write(&log, &bytes).unwrap();
        let st = recover_audit(&log).unwrap();
        assert_eq!(st.quarantine, Some(d.join("audit.log.torn-2")));
        assert!(d.join("audit.log.torn-1").exists());
        assert_eq!(std::fs::read(&log).unwrap(), good);
        // A clean log is left alone.
        let st = recover_audit(&log).unwrap();
        assert_eq!((st.records, st.quarantine), (3, None));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn corrupt_last_record_is_quarantined() {
        let d = temp_dir("corrupt-last");
        let log = d.join("audit.log");
        let mut bytes = chain(3);
        // The last record's bytes damaged (still a JSON line, chain broken).
        let n = bytes.len();
        bytes[n - 3] = b'X';
        std::fs::write(&log, &bytes).unwrap();
        let st = recover_audit(&log).unwrap();
        assert_eq!(st.records, 2);
        assert!(st.quarantine.is_some());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn corruption_in_the_middle_refuses() {
        let d = temp_dir("middle");
        let log = d.join("audit.log");
        // What the old committer left after ENOSPC: a torn record, the next record appended
        // on the same line, then more records.
        let good = chain(5);
        let lines: Vec<&[u8]> = good.split(|&b| b == b'\n').collect();
        let mut bytes = Vec::new();
        for l in &lines[..2] {
            bytes.extend_from_slice(l);
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(&lines[2][..10]);
        for l in &lines[2..5] {
            bytes.extend_from_slice(l);
            bytes.push(b'\n');
        }
        std::fs::write(&log, &bytes).unwrap();
        let e = recover_audit(&log).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("middle"), "{e}");
        assert!(!e.contains('\n'));
        assert_eq!(std::fs::read(&log).unwrap(), bytes, "nothing changed");
        // A flipped byte in an early record: refused too.
        let mut bytes = chain(4);
        bytes[20] ^= 1;
        std::fs::write(&log, &bytes).unwrap();
        assert!(recover_audit(&log).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn audit_fields_are_bounded() {
        let mut m = serde_json::Map::new();
        m.insert("session_id".into(), "é".repeat(1 << 19).into());
        m.insert("message".into(), "x".repeat(1 << 20).into());
        m.insert("keys".into(), serde_json::json!(["k".repeat(1000)]));
        bound_record(&mut m);
        assert!(serde_json::to_string(&m).unwrap().len() < 1024);
    }
}

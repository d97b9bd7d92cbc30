//! The reference clean-room workload (agreed by both parties; its SHA-256 is in the contract).
//!
//! `overlap PUBLISHER.csv ADVERTISER.csv` — inputs in the contract's order:
//! - publisher: header `user,segment`, one row per (hashed user id, segment) membership;
//! - advertiser: header `user,converted`, one row per hashed user id the advertiser knows,
//!   `converted` 0 or 1.
//!
//! User ids are 16 hex digits (64-bit hashes). Output on stdout, CSV sorted by segment:
//! `segment,overlap,conversions` — per segment, how many of its users the advertiser also
//! knows, and how many of those converted. Segments whose overlap is below K are suppressed
//! (not printed). Any malformed input: a one-line error on stderr (no data in it) and exit 1.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};

/// Minimum group size: smaller groups are suppressed.
const K: u64 = 50;

fn fail(msg: String) -> ! {
    eprintln!("overlap: {msg}");
    std::process::exit(1);
}

fn user(field: &str, file: &str, line: usize) -> u64 {
    if field.len() != 16 {
        fail(format!("{file} line {line}: user is not 16 hex digits"));
    }
    u64::from_str_radix(field, 16)
        .unwrap_or_else(|_| fail(format!("{file} line {line}: user is not 16 hex digits")))
}

fn rows(path: &str, header: &str, mut f: impl FnMut(&str, &str, usize)) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| fail(format!("{path}: {e}")));
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut line = String::new();
    let mut n = 0;
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => fail(format!("{path}: {e}")),
        }
        n += 1;
        let l = line.trim_end_matches(['\n', '\r']);
        if n == 1 {
            if l != header {
                fail(format!("{path}: header must be {header:?}"));
            }
            continue;
        }
        let Some((a, b)) = l.split_once(',') else {
            fail(format!("{path} line {n}: expected two columns"));
        };
        f(a, b, n);
    }
    if n == 0 {
        fail(format!("{path}: empty (no header)"));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [publisher, advertiser] = args.as_slice() else {
        fail("usage: overlap PUBLISHER.csv ADVERTISER.csv".into());
    };
    let mut converted: HashMap<u64, bool> = HashMap::new();
    rows(advertiser, "user,converted", |u, c, n| {
        let c = match c {
            "0" => false,
            "1" => true,
            _ => fail(format!("{advertiser} line {n}: converted must be 0 or 1")),
        };
        converted.insert(user(u, advertiser, n), c);
    });
    let mut per_segment: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    rows(publisher, "user,segment", |u, s, n| {
        if s.is_empty() || s.contains(['"', ',']) {
            fail(format!("{publisher} line {n}: malformed segment"));
        }
        let e = per_segment.entry(s.to_string()).or_default();
        if let Some(c) = converted.get(&user(u, publisher, n)) {
            e.0 += 1;
            e.1 += u64::from(*c);
        }
    });
    let out = std::io::stdout();
    let mut w = std::io::BufWriter::new(out.lock());
    let r = (|| -> std::io::Result<()> {
        writeln!(w, "segment,overlap,conversions")?;
        for (s, (o, c)) in &per_segment {
            if *o >= K {
                writeln!(w, "{s},{o},{c}")?;
            }
        }
        w.flush()
    })();
    if let Err(e) = r {
        fail(format!("stdout: {e}"));
    }
}

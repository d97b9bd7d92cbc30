//! The output rules the guest enforces on a workload's result before sealing it
//! (docs/contract.md, `output`). The result is CSV in a strict subset that every CSV reader
//! reads the same way — the recipients' readers (Python's csv module, spreadsheets) see exactly
//! the rows checked here:
//!
//! - ASCII only; no NUL, no CR, no double quote (so no quoting, no multi-line fields); every
//!   line ends with LF, none is empty, none is longer than [`MAX_LINE`] bytes;
//! - the header is exactly the contract's column names, in order (so no duplicate or
//!   unexpected column);
//! - every row has one field per column, each valid for its column's kind: labels from a
//!   closed character set (optionally a closed list), counts at least `min_group_size`,
//!   integers in canonical form within their range.
//!
//! Rows are read with the `csv` crate (no quoting, fixed field count) after the byte checks.

use crate::contract::{OutputColumn, OutputRules};

/// Longest accepted line, in bytes (LF excluded).
pub const MAX_LINE: usize = 4096;
/// Longest label `max_len` a contract may allow.
pub const MAX_LABEL: u32 = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct OutputError(pub String);

fn err<T>(s: impl Into<String>) -> Result<T, OutputError> {
    Err(OutputError(s.into()))
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && s.as_bytes()[0].is_ascii_lowercase()
}

/// A label value: 1..=max of `[A-Za-z0-9_.-]`, first byte alphanumeric.
pub fn label_ok(v: &str, max: u32) -> bool {
    !v.is_empty()
        && v.len() <= max as usize
        && v.as_bytes()[0].is_ascii_alphanumeric()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Canonical decimal: `0`, or an optional `-` then a non-zero digit then digits (no `+`, no
/// leading zeros, no `-0`).
fn canonical_int(v: &str) -> Option<i128> {
    let digits = v.strip_prefix('-').unwrap_or(v);
    if digits.is_empty()
        || digits.len() > 20
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
        || (v.starts_with('-') && digits == "0")
    {
        return None;
    }
    v.parse().ok()
}

/// The checks `Contract::validate` runs on `output.columns`: (field suffix, reason).
pub fn validate_columns(cols: &[OutputColumn]) -> Result<(), (String, String)> {
    if cols.is_empty() {
        return Err((String::new(), "at least one column".into()));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut counts = 0;
    for (i, c) in cols.iter().enumerate() {
        let at = format!("[{i}]");
        if !name_ok(c.name()) || !names.insert(c.name()) {
            return Err((
                format!("{at}.name"),
                "empty, malformed (1-64 of [a-z0-9_], starting with a letter) or duplicate".into(),
            ));
        }
        match c {
            OutputColumn::Label {
                max_len, values, ..
            } => {
                if *max_len == 0 || *max_len > MAX_LABEL {
                    return Err((format!("{at}.max_len"), format!("must be 1..={MAX_LABEL}")));
                }
                if let Some(v) = values {
                    if v.is_empty() || v.iter().any(|x| !label_ok(x, *max_len)) {
                        return Err((
                            format!("{at}.values"),
                            "non-empty, each a label of at most max_len".into(),
                        ));
                    }
                }
            }
            OutputColumn::Count { .. } => counts += 1,
            OutputColumn::Integer { min, max, .. } => {
                if min > max {
                    return Err((format!("{at}.min"), "must be <= max".into()));
                }
            }
        }
    }
    if counts != 1 {
        return Err((
            String::new(),
            format!("exactly one column of kind \"count\" (found {counts})"),
        ));
    }
    Ok(())
}

/// Check a workload's output against the rules: the number of data rows, or the first
/// violation (one line, no data values in it beyond the row and column).
pub fn check(rules: &OutputRules, out: &[u8]) -> Result<usize, OutputError> {
    read(rules, out).map(|rows| rows.len() - 1)
}

/// [`check`], returning the rows as read (header first).
pub fn read(rules: &OutputRules, out: &[u8]) -> Result<Vec<Vec<String>>, OutputError> {
    if out.is_empty() {
        return err("output is empty (no CSV header)");
    }
    if !out.ends_with(b"\n") {
        return err("output does not end with a newline (a cut last line?)");
    }
    for (i, line) in out[..out.len() - 1].split(|&b| b == b'\n').enumerate() {
        let row = i; // 0 = header
        let what = if row == 0 {
            "header".to_string()
        } else {
            format!("row {row}")
        };
        if line.is_empty() {
            return err(format!("{what}: empty line"));
        }
        if line.len() > MAX_LINE {
            return err(format!("{what}: longer than {MAX_LINE} bytes"));
        }
        if let Some(b) = line
            .iter()
            .find(|&&b| !b.is_ascii() || b == 0 || b == b'\r' || b == b'"' || b.is_ascii_control())
        {
            return err(format!(
                "{what}: byte {b:#04x} not allowed (ASCII without NUL, CR, quotes or control bytes only)"
            ));
        }
    }
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .quoting(false)
        .flexible(true)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_reader(out);
    let mut records = rdr.records();
    let header = match records.next() {
        Some(Ok(h)) => h,
        Some(Err(e)) => return err(format!("header: {e}")),
        None => return err("output is empty (no CSV header)"),
    };
    let want: Vec<&str> = rules.columns.iter().map(OutputColumn::name).collect();
    let got: Vec<&str> = header.iter().collect();
    if got != want {
        return err(format!(
            "header {:?} is not the contract's columns {:?}",
            got.join(","),
            want.join(",")
        ));
    }
    let mut rows = vec![want.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    for (i, rec) in records.enumerate() {
        let row = i + 1;
        let rec = rec.map_err(|e| OutputError(format!("row {row}: {e}")))?;
        if rec.len() != want.len() {
            return err(format!(
                "row {row}: {} fields, the header has {}",
                rec.len(),
                want.len()
            ));
        }
        for (v, col) in rec.iter().zip(&rules.columns) {
            let bad = |why: &str| err(format!("row {row}: column {}: {why}", col.name()));
            match col {
                OutputColumn::Label {
                    max_len, values, ..
                } => {
                    if !label_ok(v, *max_len) {
                        return bad(&format!(
                            "not a label (1-{max_len} of [A-Za-z0-9_.-], starting alphanumeric)"
                        ));
                    }
                    if let Some(vs) = values {
                        if !vs.iter().any(|x| x == v) {
                            return bad("not one of the contract's values");
                        }
                    }
                }
                OutputColumn::Count { .. } => match canonical_int(v) {
                    Some(n)
                        if n >= i128::from(rules.min_group_size) && n <= i128::from(u64::MAX) => {}
                    Some(n) if n >= 0 => {
                        return bad(&format!(
                            "group of {n} is below min_group_size {}",
                            rules.min_group_size
                        ))
                    }
                    _ => return bad("not a count (canonical non-negative decimal)"),
                },
                OutputColumn::Integer { min, max, .. } => match canonical_int(v) {
                    Some(n) if n >= i128::from(*min) && n <= i128::from(*max) => {}
                    Some(_) => return bad(&format!("out of range {min}..={max}")),
                    None => return bad("not a canonical decimal integer"),
                },
            }
        }
        rows.push(rec.iter().map(str::to_string).collect());
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn rules() -> OutputRules {
        OutputRules {
            min_group_size: 50,
            columns: vec![
                OutputColumn::Label {
                    name: "segment".into(),
                    max_len: 32,
                    values: None,
                },
                OutputColumn::Count {
                    name: "overlap".into(),
                },
                OutputColumn::Integer {
                    name: "conversions".into(),
                    min: 0,
                    max: 1_000_000_000,
                },
            ],
            blob: "out.sealed".into(),
        }
    }

    #[test]
    fn the_reviews_outputs_are_refused() {
        let r = rules();
        let ok = b"segment,overlap,conversions\nsports,120,7\ntravel,50,0\n";
        assert_eq!(check(&r, ok), Ok(2));
        assert_eq!(check(&r, b"segment,overlap,conversions\n"), Ok(0));
        let bad: &[(&[u8], &str)] = &[
            (
                b"segment,overlap,conversions\nalice@example.com;ssn=123-45-6789,50,1\n",
                "column segment",
            ),
            (
                b"segment,overlap,conversions\nsports,+50,1\n",
                "not a count",
            ),
            (
                b"segment,overlap,conversions\nsports,050,1\n",
                "not a count",
            ),
            (
                b"segment,overlap,conversions\nsports,50,-1\n",
                "out of range",
            ),
            (
                b"segment,overlap,conversions\nsports,50,1000000001\n",
                "out of range",
            ),
            (b"segment,overlap,conversions\nsports,50,01\n", "canonical"),
            (
                b"segment,overlap,conversions\nsports,49,1\n",
                "below min_group_size",
            ),
            (b"segment,overlap,conversions\nsports,-0,1\n", "not a count"),
            (b"segment,overlap,conversions\nsports\0,50,1\n", "byte 0x00"),
            (
                b"segment,overlap,conversions\r\nsports,50,1\r\n",
                "byte 0x0d",
            ),
            (
                b"segment,overlap,conversions\nsports,50,1\rhidden,1,1\n",
                "byte 0x0d",
            ),
            (
                b"segment,overlap,conversions\n\"sp\norts\",50,1\n",
                "byte 0x22",
            ),
            (b"segment,overlap,overlap\nsports,50,50\n", "header"),
            (b"overlap,segment,conversions\n50,sports,1\n", "header"),
            (b"segment,overlap\nsports,50\n", "header"),
            (
                b"segment,overlap,conversions\nsports,50,1,extra\n",
                "4 fields",
            ),
            (b"segment,overlap,conversions\nsports,50\n", "2 fields"),
            (b"segment,overlap,conversions\nsports,50,1", "newline"),
            (
                b"segment,overlap,conversions\n\nsports,50,1\n",
                "empty line",
            ),
            (
                b"segment,overlap,conversions\n=cmd|' /C calc'!A0,50,1\n",
                "column segment",
            ),
            (
                b"segment,overlap,conversions\n-sports,50,1\n",
                "column segment",
            ),
            (
                b"segment,overlap,conversions\nsp\xc3\xa9rts,50,1\n",
                "byte 0xc3",
            ),
            (b"", "empty"),
        ];
        for (input, why) in bad {
            let e = check(&r, input).expect_err(&String::from_utf8_lossy(input));
            assert!(
                e.0.contains(why),
                "{:?}: {e}",
                String::from_utf8_lossy(input)
            );
        }
        // A 10 MB line.
        let mut long = b"segment,overlap,conversions\n".to_vec();
        long.extend(std::iter::repeat_n(b'a', 10 << 20));
        long.extend_from_slice(b",50,1\n");
        assert!(check(&r, &long).unwrap_err().0.contains("longer than"));
        // A label longer than its max_len; a closed list of values.
        assert!(check(
            &r,
            format!("segment,overlap,conversions\n{},50,1\n", "a".repeat(33)).as_bytes()
        )
        .is_err());
        let mut closed = rules();
        closed.columns[0] = OutputColumn::Label {
            name: "segment".into(),
            max_len: 32,
            values: Some(vec!["sports".into()]),
        };
        assert_eq!(
            check(&closed, b"segment,overlap,conversions\nsports,50,1\n"),
            Ok(1)
        );
        assert!(check(&closed, b"segment,overlap,conversions\ntravel,50,1\n").is_err());
    }

    #[test]
    fn column_schemas_are_validated() {
        let mut c = rules().columns;
        assert!(validate_columns(&c).is_ok());
        c.push(OutputColumn::Count {
            name: "more".into(),
        });
        assert!(validate_columns(&c).unwrap_err().1.contains("exactly one"));
        let mut c = rules().columns;
        c[1] = OutputColumn::Integer {
            name: "overlap".into(),
            min: 0,
            max: 1,
        };
        assert!(validate_columns(&c).is_err(), "no count column");
        let mut c = rules().columns;
        c.push(OutputColumn::Integer {
            name: "segment".into(),
            min: 0,
            max: 1,
        });
        assert!(validate_columns(&c).is_err(), "duplicate name");
        let mut c = rules().columns;
        c[2] = OutputColumn::Integer {
            name: "conversions".into(),
            min: 2,
            max: 1,
        };
        assert!(validate_columns(&c).is_err());
        let mut c = rules().columns;
        c[0] = OutputColumn::Label {
            name: "Segment".into(),
            max_len: 3,
            values: None,
        };
        assert!(validate_columns(&c).is_err(), "name charset");
        let mut c = rules().columns;
        c[0] = OutputColumn::Label {
            name: "segment".into(),
            max_len: 0,
            values: None,
        };
        assert!(validate_columns(&c).is_err());
        let mut c = rules().columns;
        c[0] = OutputColumn::Label {
            name: "segment".into(),
            max_len: 3,
            values: Some(vec!["sports".into()]),
        };
        assert!(validate_columns(&c).is_err(), "value longer than max_len");
        assert!(validate_columns(&[]).is_err());
    }
}

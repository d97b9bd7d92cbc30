//! `dcr-cleanroom-gen --seed S --rows N --out-dir D [--parquet]`: the two parties' plaintext
//! datasets for the reference clean room, identical for the same seed and size on any machine.
//! With `--parquet`, also `D/publisher.parquet` and `D/advertiser.parquet`: the same rows
//! (user and segment as strings, converted as int64; Snappy, 64 Ki rows per row group).
//!
//! - `D/publisher.csv`: `user,segment` — N users (16-hex-digit hashed ids), one segment each,
//!   drawn with fixed weights from SEGMENTS (the last, `collectors`, is rare: at small N its
//!   overlap falls below k = 50 and the clean room suppresses it);
//! - `D/advertiser.csv`: `user,converted` — N users; with probability 2/5 user j is the
//!   publisher's user j (the overlap), otherwise someone the publisher does not know;
//!   converted with probability 1/10.
//!
//! Ids are SplitMix64 outputs of (seed, side, index), so they never collide by construction
//! of distinct inputs except with negligible probability.
#![forbid(unsafe_code)]

use std::io::Write;

const SEGMENTS: [(&str, u32); 8] = [
    ("sports", 220),
    ("news", 200),
    ("travel", 160),
    ("finance", 140),
    ("gaming", 120),
    ("food", 100),
    ("auto", 58),
    ("collectors", 2),
];

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn id(seed: u64, side: u64, i: u64) -> u64 {
    splitmix(splitmix(seed ^ (side << 56)) ^ i)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str| -> Option<&str> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let usage = || -> ! {
        eprintln!("usage: dcr-cleanroom-gen --seed S --rows N --out-dir D [--parquet]");
        std::process::exit(2)
    };
    let seed: u64 = get("--seed")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| usage());
    let rows: u64 = get("--rows")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| usage());
    let dir = std::path::PathBuf::from(get("--out-dir").unwrap_or_else(|| usage()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("error: --out-dir {}: {e}", dir.display());
        std::process::exit(2);
    }
    let total: u32 = SEGMENTS.iter().map(|(_, w)| w).sum();
    let open = |name: &str| {
        let p = dir.join(name);
        match std::fs::File::create(&p) {
            Ok(f) => std::io::BufWriter::with_capacity(1 << 20, f),
            Err(e) => {
                eprintln!("error: {}: {e}", p.display());
                std::process::exit(2);
            }
        }
    };
    let parquet = args.iter().any(|a| a == "--parquet");
    let mut pub_rows: Vec<(u64, &str)> = Vec::new();
    let mut adv_rows: Vec<(u64, u8)> = Vec::new();
    let mut publisher = open("publisher.csv");
    let mut advertiser = open("advertiser.csv");
    let r = (|| -> std::io::Result<()> {
        writeln!(publisher, "user,segment")?;
        for i in 0..rows {
            let mut pick = (splitmix(seed ^ 0x5e6 ^ i.rotate_left(17)) % u64::from(total)) as u32;
            let seg = SEGMENTS
                .iter()
                .find(|(_, w)| {
                    if pick < *w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .map(|(s, _)| *s)
                .expect("weights cover the range");
            writeln!(publisher, "{:016x},{seg}", id(seed, 1, i))?;
            if parquet {
                pub_rows.push((id(seed, 1, i), seg));
            }
        }
        writeln!(advertiser, "user,converted")?;
        for j in 0..rows {
            let r = splitmix(seed ^ 0xad ^ j.rotate_left(29));
            let user = if r % 5 < 2 {
                id(seed, 1, j)
            } else {
                id(seed, 2, j)
            };
            let converted = u8::from((r >> 32).is_multiple_of(10));
            writeln!(advertiser, "{user:016x},{converted}")?;
            if parquet {
                adv_rows.push((user, converted));
            }
        }
        publisher.flush()?;
        advertiser.flush()
    })();
    if let Err(e) = r {
        eprintln!("error: writing {}: {e}", dir.display());
        std::process::exit(2);
    }
    if parquet {
        let r = write_parquet(
            &dir.join("publisher.parquet"),
            ("segment", false),
            pub_rows.len(),
            |range| {
                let (u, s): (Vec<String>, Vec<&str>) = pub_rows[range]
                    .iter()
                    .map(|(u, s)| (format!("{u:016x}"), *s))
                    .unzip();
                (u, Column::Text(s.into_iter().map(str::to_string).collect()))
            },
        )
        .and_then(|()| {
            write_parquet(
                &dir.join("advertiser.parquet"),
                ("converted", true),
                adv_rows.len(),
                |range| {
                    let (u, c): (Vec<String>, Vec<i64>) = adv_rows[range]
                        .iter()
                        .map(|(u, c)| (format!("{u:016x}"), i64::from(*c)))
                        .unzip();
                    (u, Column::Int(c))
                },
            )
        });
        if let Err(e) = r {
            eprintln!("error: writing Parquet in {}: {e}", dir.display());
            std::process::exit(2);
        }
    }
    println!(
        "generated {rows} publisher rows and {rows} advertiser rows (seed {seed}) in {}",
        dir.display()
    );
}

/// The second column of a batch.
enum Column {
    Text(Vec<String>),
    Int(Vec<i64>),
}

/// Write `n` rows as Parquet: `user` (string) and one more column, in row groups of 64 Ki.
fn write_parquet(
    path: &std::path::Path,
    (second, is_int): (&str, bool),
    n: usize,
    batch: impl Fn(std::ops::Range<usize>) -> (Vec<String>, Column),
) -> Result<(), String> {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    const GROUP: usize = 1 << 16;
    let schema = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new(
            second,
            if is_int {
                DataType::Int64
            } else {
                DataType::Utf8
            },
            false,
        ),
    ]));
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_row_count(Some(GROUP))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, schema.clone(), Some(props))
        .map_err(|e| e.to_string())?;
    let mut at = 0;
    while at < n {
        let end = (at + GROUP).min(n);
        let (users, col) = batch(at..end);
        let col: ArrayRef = match col {
            Column::Text(v) => Arc::new(StringArray::from(v)),
            Column::Int(v) => Arc::new(Int64Array::from(v)),
        };
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(users)) as ArrayRef, col],
        )
        .map_err(|e| e.to_string())?;
        w.write(&b).map_err(|e| e.to_string())?;
        at = end;
    }
    w.close().map_err(|e| e.to_string())?;
    Ok(())
}

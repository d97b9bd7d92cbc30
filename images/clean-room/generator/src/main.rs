//! `dcr-cleanroom-gen --seed S --rows N --out-dir D`: the two parties' plaintext datasets for
//! the reference clean room, identical for the same seed and size on any machine.
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
        eprintln!("usage: dcr-cleanroom-gen --seed S --rows N --out-dir D");
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
        }
        publisher.flush()?;
        advertiser.flush()
    })();
    if let Err(e) = r {
        eprintln!("error: writing {}: {e}", dir.display());
        std::process::exit(2);
    }
    println!(
        "generated {rows} publisher rows and {rows} advertiser rows (seed {seed}) in {}",
        dir.display()
    );
}

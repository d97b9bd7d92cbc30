//! `sql-bench gen DIR ROWS` writes the reference room's two tables (ROWS rows per party) as
//! Parquet; `sql-bench run DIR MODE` times the overlap query over them in memory and prints
//! `MODE seconds=… rows=… peak_rss_mib=…` (median of 3 runs, loading excluded).
//!
//! MODE: `dcr` (rules checked, threshold written into the plan, the engine's session),
//! `dcr-dp` (the same question under the contract's DP analysis `overlap_dp`), `plain`
//! (DataFusion's default SessionContext, the same SQL, no threshold), `plain-having` (the
//! same, with the threshold written by hand as HAVING). reproducible/bench-sql.sh runs each
//! in its own process and DuckDB beside them.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use dcr_protocol::contract::Contract;
use dcr_sql::{Engine, Submission};

const SEGMENTS: [&str; 8] = [
    "sports",
    "news",
    "travel",
    "finance",
    "gaming",
    "food",
    "auto",
    "collectors",
];

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn write(path: &Path, batches: &[RecordBatch]) {
    let f = std::fs::File::create(path).expect("create");
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batches[0].schema(), None).expect("writer");
    for b in batches {
        w.write(b).expect("write");
    }
    w.close().expect("close");
}

fn gen(dir: &Path, rows: u64) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let seg = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, true),
        Field::new("segment", DataType::Utf8, true),
    ]));
    let conv = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, true),
        Field::new("converted", DataType::Int64, true),
    ]));
    let chunk = 1_000_000u64;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut start = 0;
    while start < rows {
        let n = chunk.min(rows - start);
        let users: Vec<String> = (start..start + n)
            .map(|i| format!("{:016x}", splitmix(i)))
            .collect();
        let segs: Vec<&str> = (start..start + n)
            .map(|i| SEGMENTS[(splitmix(i ^ 0xabc) % 8) as usize])
            .collect();
        a.push(
            RecordBatch::try_new(
                seg.clone(),
                vec![
                    Arc::new(StringArray::from(users)),
                    Arc::new(StringArray::from(segs)),
                ],
            )
            .expect("batch"),
        );
        // 40 % of the advertiser's users are the publisher's.
        let users: Vec<String> = (start..start + n)
            .map(|i| {
                if splitmix(i ^ 0x5151) % 5 < 2 {
                    format!("{:016x}", splitmix(i))
                } else {
                    format!("{:016x}", splitmix(i + (1 << 40)))
                }
            })
            .collect();
        let conv_v: Vec<i64> = (start..start + n)
            .map(|i| i64::from(splitmix(i ^ 0x77).is_multiple_of(10)))
            .collect();
        b.push(
            RecordBatch::try_new(
                conv.clone(),
                vec![
                    Arc::new(StringArray::from(users)),
                    Arc::new(Int64Array::from(conv_v)),
                ],
            )
            .expect("batch"),
        );
        start += n;
    }
    write(&dir.join("segments.parquet"), &a);
    write(&dir.join("conversions.parquet"), &b);
}

const SQL: &str = "SELECT s.segment, COUNT(DISTINCT s.user) AS overlap, SUM(c.converted) AS conversions FROM segments s JOIN conversions c ON s.user = c.user GROUP BY s.segment ORDER BY s.segment";
/// The same question under the reference contract's DP analysis (no ORDER BY under DP).
const SQL_DP: &str = "SELECT s.segment, COUNT(DISTINCT s.user) AS overlap, SUM(c.converted) AS conversions FROM segments s JOIN conversions c ON s.user = c.user GROUP BY s.segment";
const SQL_HAVING: &str = "SELECT s.segment, COUNT(DISTINCT s.user) AS overlap, SUM(c.converted) AS conversions FROM segments s JOIN conversions c ON s.user = c.user GROUP BY s.segment HAVING COUNT(DISTINCT s.user) >= 50 AND COUNT(DISTINCT c.user) >= 50 ORDER BY s.segment";

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb / 1024)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn run(dir: &Path, mode: &str) {
    let contract =
        std::env::var("DCR_CONTRACT").unwrap_or_else(|_| "images/clean-room/contract.toml".into());
    let c = Contract::from_toml(&std::fs::read_to_string(&contract).expect("contract"))
        .expect("contract");
    let cat = c.catalog();
    let load = |name: &str| {
        dcr_sql::load::parquet(
            cat.table(name).expect("table"),
            std::fs::read(dir.join(format!("{name}.parquet")))
                .expect("read")
                .into(),
        )
        .expect("load")
    };
    let (seg, conv) = (load("segments"), load("conversions"));
    let mut times = Vec::new();
    let mut rows = 0;
    match mode {
        "dcr" | "dcr-dp" => {
            let mut e = Engine::new(&c).expect("engine");
            e.load("segments", seg).expect("load");
            e.load("conversions", conv).expect("load");
            let (analysis, sql) = if mode == "dcr" {
                ("overlap", SQL)
            } else {
                ("overlap_dp", SQL_DP)
            };
            for _ in 0..3 {
                let t = Instant::now();
                let q = e
                    .check(analysis, Some("advertiser"), &Submission::Sql(sql.into()))
                    .expect("allowed");
                let out = e.run(&q).expect("run");
                times.push(t.elapsed().as_secs_f64());
                rows = out.rows();
                std::fs::write(dir.join(format!("{mode}.csv")), out.to_csv().expect("csv"))
                    .expect("write");
            }
        }
        "plain" | "plain-having" => {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .build()
                .expect("runtime");
            let ctx = SessionContext::new_with_config(
                SessionConfig::new().with_target_partitions(threads),
            );
            let part = |b: Vec<RecordBatch>| {
                let schema = b[0].schema();
                let mut parts = vec![Vec::new(); threads];
                for (i, x) in b.into_iter().enumerate() {
                    parts[i % threads].push(x);
                }
                Arc::new(MemTable::try_new(schema, parts).expect("mem"))
            };
            ctx.register_table("segments", part(seg)).expect("register");
            ctx.register_table("conversions", part(conv))
                .expect("register");
            let sql = if mode == "plain" { SQL } else { SQL_HAVING };
            for _ in 0..3 {
                let t = Instant::now();
                let b = rt
                    .block_on(async { ctx.sql(sql).await?.collect().await })
                    .expect("run");
                times.push(t.elapsed().as_secs_f64());
                rows = b.iter().map(|x| x.num_rows()).sum();
            }
        }
        m => {
            eprintln!("sql-bench: unknown mode {m:?} (dcr, dcr-dp, plain, plain-having)");
            std::process::exit(2);
        }
    }
    println!(
        "{mode} seconds={:.3} rows={rows} peak_rss_mib={}",
        median(times),
        peak_rss_mib()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["gen", dir, rows] => gen(Path::new(dir), rows.parse().expect("ROWS")),
        ["run", dir, mode] => run(Path::new(dir), mode),
        _ => {
            eprintln!("usage: sql-bench gen DIR ROWS | sql-bench run DIR dcr|plain|plain-having");
            std::process::exit(2);
        }
    }
}

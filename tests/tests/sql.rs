//! SQL analyses (docs/analysis.md): the rule-enforced engine against an independent engine
//! (sqlite3 on the same plaintext, with groups below k removed by sqlite itself), attack
//! queries refused before anything runs, submitters, templates, CSV and Parquet inputs, and
//! the reference clean room's SQL against its native workload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use dcr_protocol::analysis::ParameterValue;
use dcr_protocol::contract::Contract;
use dcr_sql::{Engine, Submission};
use dcr_tests::{
    dcr_attest, dcr_cleanroom_gen, dcr_sql_engine, require_tools, stderr, stdout, Rng, TempDir,
};

const K: u64 = 50;

/// A test contract: the publisher's impressions and the advertiser's purchases, an
/// aggregation rule, a list rule and a template.
fn contract_toml() -> String {
    format!(
        r#"version = 1
name = "sql-test"
expires = "2030-01-01T00:00:00Z"
platforms = ["tpm"]

[[parties]]
id = "publisher"
name = "Publisher"

[[parties]]
id = "advertiser"
name = "Advertiser"

[[datasets]]
id = "impressions"
owner = "publisher"
key_id = "impressions-1"
blob = "impressions.sealed"
[datasets.table]
name = "impressions"
format = "csv"
privacy_unit = "user"
columns = [
  {{ name = "user", type = "string" }},
  {{ name = "segment", type = "string" }},
  {{ name = "region", type = "string" }},
  {{ name = "age_band", type = "string" }},
  {{ name = "day", type = "date" }},
  {{ name = "spend", type = "int64" }},
]

[[datasets]]
id = "purchases"
owner = "advertiser"
key_id = "purchases-1"
blob = "purchases.sealed"
[datasets.table]
name = "purchases"
format = "parquet"
privacy_unit = "user"
columns = [
  {{ name = "user", type = "string" }},
  {{ name = "product", type = "string" }},
  {{ name = "channel", type = "string" }},
  {{ name = "amount", type = "int64" }},
  {{ name = "converted", type = "int64" }},
  {{ name = "score", type = "float64" }},
]

[[analyses]]
name = "audience"
submitters = ["advertiser"]
recipients = ["advertiser", "publisher"]
[analyses.rule.aggregation]
min_distinct_units = {K}
join_columns = ["impressions.user", "purchases.user"]
dimensions = ["impressions.segment", "impressions.region", "impressions.age_band", "impressions.day", "purchases.product", "purchases.channel"]
aggregates = [
  {{ function = "count_distinct", columns = ["impressions.user", "purchases.user", "purchases.product"] }},
  {{ function = "count", columns = ["purchases.amount", "impressions.spend"] }},
  {{ function = "sum", columns = ["impressions.spend", "purchases.amount", "purchases.converted"] }},
  {{ function = "sum_distinct", columns = ["purchases.amount"] }},
  {{ function = "avg", columns = ["purchases.amount", "impressions.spend", "purchases.score"] }},
]
scalar_functions = ["lower", "upper", "round"]

[[analyses]]
name = "matched"
submitters = ["publisher"]
[analyses.rule.list]
join_columns = ["impressions.user", "purchases.user"]
list_columns = ["impressions.segment", "purchases.channel"]

[[analyses]]
name = "segment_size"
submitters = ["advertiser", "publisher"]
[analyses.rule.template]
sql = "SELECT i.region, COUNT(DISTINCT i.user) AS users, SUM(p.amount) AS amount FROM impressions i JOIN purchases p ON i.user = p.user WHERE i.segment = $segment AND p.amount >= $min_amount GROUP BY i.region"
parameters = {{ segment = "string", min_amount = "int64" }}
min_distinct_units = {K}

[[workloads]]
name = "sql"
sha256 = "{zeros}"
inputs = ["impressions", "purchases"]
limits = {{ timeout_secs = 600, cpu_secs = 600, memory_mib = 1024, output_mib = 16 }}

[output]
min_group_size = {K}
columns = [{{ name = "n", kind = "count" }}]
blob = "result.sealed"

[[recipients]]
party = "advertiser"
hpke_public_key = "x25519:5bcf6293e4f118b5e53584fb59afff56f58870e11e9275afe743239c8e4a5c74"
[[recipients]]
party = "publisher"
hpke_public_key = "x25519:4eb327074fb135d4078f02d7d48ad769c0a233473b00221f6dbc2ccae81a6f3d"

[service]
url = "http://10.0.2.2:8443"
signing_key = "ed25519:30571966f9a828747978be811373f1f37f0dd9707a1643dfbca7f714f2ae7cf0"
deadline_secs = 120

[network]
mode = "static"
address = "10.0.2.15/24"
gateway = "10.0.2.2"
"#,
        zeros = "0".repeat(64)
    )
}

const SEGMENTS: [&str; 8] = [
    "sports",
    "news",
    "travel",
    "finance",
    "gaming",
    "food",
    "auto",
    "Collectors",
];
const REGIONS: [&str; 4] = ["north", "south", "east", "West"];
const AGES: [&str; 4] = ["18-24", "25-34", "35-54", "55+"];
const PRODUCTS: [&str; 5] = ["shoes", "bags", "hats", "coats", "socks"];
const CHANNELS: [&str; 3] = ["web", "app", "store"];

fn pick<'a>(r: &mut Rng, xs: &[&'a str]) -> &'a str {
    // Skewed: early values are common, late ones rare (so some groups fall below k).
    let n = xs.len() as u64;
    let i = (r.below(n * n) as f64).sqrt() as u64;
    xs[(n - 1 - i.min(n - 1)) as usize]
}

/// The plaintext: impressions.csv and purchases.csv (CSV for sqlite3 and the CSV path).
fn generate(dir: &Path, seed: u64) -> (PathBuf, PathBuf) {
    let mut r = Rng(seed | 1);
    let mut imp = String::from("user,segment,region,age_band,day,spend\n");
    let mut pur = String::from("user,product,channel,amount,converted,score\n");
    let users = 3000u64;
    for u in 0..users {
        let id = format!("{:016x}", u.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed);
        let region = pick(&mut r, &REGIONS);
        let age = pick(&mut r, &AGES);
        for _ in 0..1 + r.below(3) {
            imp.push_str(&format!(
                "{id},{},{region},{age},2026-01-{:02},{}\n",
                pick(&mut r, &SEGMENTS),
                1 + r.below(28),
                r.below(500)
            ));
        }
        // 60 % of the publisher's users are known to the advertiser.
        if r.below(10) < 6 {
            for _ in 0..1 + r.below(2) {
                pur.push_str(&format!(
                    "{id},{},{},{},{},{}\n",
                    pick(&mut r, &PRODUCTS),
                    pick(&mut r, &CHANNELS),
                    r.below(300),
                    u64::from(r.below(10) < 2),
                    (r.below(1_000_000) as f64) / 1000.0
                ));
            }
        }
    }
    // Advertiser-only users.
    for u in 0..800u64 {
        let id = format!(
            "{:016x}",
            (u + 1_000_000).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed
        );
        pur.push_str(&format!(
            "{id},{},{},{},0,{}\n",
            pick(&mut r, &PRODUCTS),
            pick(&mut r, &CHANNELS),
            r.below(300),
            (r.below(1_000_000) as f64) / 1000.0
        ));
    }
    let (i, p) = (dir.join("impressions.csv"), dir.join("purchases.csv"));
    std::fs::write(&i, imp).unwrap();
    std::fs::write(&p, pur).unwrap();
    (i, p)
}

/// purchases as Parquet (the contract says so), written from the CSV.
fn to_parquet(c: &Contract, csv: &Path, out: &Path) {
    let t = c.catalog().table("purchases").unwrap();
    let batches = dcr_sql::load::csv(t, std::fs::File::open(csv).unwrap()).unwrap();
    let f = std::fs::File::create(out).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batches[0].schema(), Some(props)).unwrap();
    for b in &batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
}

fn sqlite_db(dir: &Path, imp: &Path, pur: &Path) -> PathBuf {
    let db = dir.join("plain.db");
    let script = format!(
        "CREATE TABLE impressions(user TEXT, segment TEXT, region TEXT, age_band TEXT, day TEXT, spend INTEGER);\n\
         CREATE TABLE purchases(user TEXT, product TEXT, channel TEXT, amount INTEGER, converted INTEGER, score REAL);\n\
         .mode csv\n.import --skip 1 {} impressions\n.import --skip 1 {} purchases\n",
        imp.display(),
        pur.display()
    );
    let o = Command::new("sqlite3")
        .arg(&db)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            ch.stdin.take().unwrap().write_all(script.as_bytes())?;
            ch.wait_with_output()
        })
        .expect("run sqlite3");
    assert!(o.status.success(), "sqlite3 import: {}", stderr(&o));
    db
}

fn sqlite(db: &Path, sql: &str) -> Vec<Vec<String>> {
    let o = Command::new("sqlite3")
        .args(["-csv", "-noheader"])
        .arg(db)
        .arg(sql)
        .output()
        .expect("run sqlite3");
    assert!(o.status.success(), "sqlite3 {sql}: {}", stderr(&o));
    rows(&stdout(&o), false)
}

fn rows(csv: &str, header: bool) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = csv
        .lines()
        .skip(usize::from(header))
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split(',')
                .map(|s| s.trim_matches('"').to_string())
                .collect()
        })
        .collect();
    out.sort();
    out
}

fn same_value(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => false,
    }
}

fn same_rows(a: &[Vec<String>], b: &[Vec<String>]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.len() == y.len() && x.iter().zip(y).all(|(u, v)| same_value(u, v)))
}

/// A random query allowed by `audience`, and the same query for sqlite3 with the threshold
/// written as HAVING.
fn random_query(r: &mut Rng) -> (String, String) {
    let shape = r.below(10);
    let (from, tables): (&str, Vec<&str>) = if shape < 7 {
        (
            "impressions i JOIN purchases p ON i.user = p.user",
            vec!["i", "p"],
        )
    } else if shape < 9 {
        ("impressions i", vec!["i"])
    } else {
        ("purchases p", vec!["p"])
    };
    let mut dims: Vec<(&str, Vec<&str>)> = Vec::new();
    if tables.contains(&"i") {
        dims.extend([
            ("i.segment", SEGMENTS.to_vec()),
            ("i.region", REGIONS.to_vec()),
            ("i.age_band", AGES.to_vec()),
        ]);
    }
    if tables.contains(&"p") {
        dims.extend([
            ("p.product", PRODUCTS.to_vec()),
            ("p.channel", CHANNELS.to_vec()),
        ]);
    }
    let mut aggs: Vec<String> = Vec::new();
    if tables.contains(&"i") {
        aggs.extend(
            [
                "COUNT(DISTINCT i.user)",
                "SUM(i.spend)",
                "AVG(i.spend)",
                "COUNT(i.spend)",
            ]
            .map(String::from),
        );
    }
    if tables.contains(&"p") {
        aggs.extend(
            [
                "COUNT(DISTINCT p.user)",
                "SUM(p.amount)",
                "SUM(p.converted)",
                "AVG(p.amount)",
                "AVG(p.score)",
                "COUNT(DISTINCT p.product)",
                "SUM(DISTINCT p.amount)",
                "COUNT(p.amount)",
            ]
            .map(String::from),
        );
    }
    let mut select = Vec::new();
    let mut group = Vec::new();
    for d in 0..r.below(3) {
        let (col, _) = &dims[r.below(dims.len() as u64) as usize];
        if group
            .iter()
            .any(|(c, _): &(String, String)| c.contains(col))
        {
            continue;
        }
        let expr = match r.below(6) {
            0 => format!("lower({col})"),
            1 => format!("upper({col})"),
            _ => col.to_string(),
        };
        group.push((expr.clone(), format!("d{d}")));
        select.push(format!("{expr} AS d{d}"));
    }
    let mut chosen = Vec::new();
    for _ in 0..1 + r.below(3) {
        let a = aggs[r.below(aggs.len() as u64) as usize].clone();
        if !chosen.contains(&a) {
            chosen.push(a);
        }
    }
    for (j, a) in chosen.iter().enumerate() {
        if a.starts_with("AVG") && r.below(3) == 0 {
            select.push(format!("round({a}, 2) AS a{j}"));
        } else {
            select.push(format!("{a} AS a{j}"));
        }
    }
    let mut filters = Vec::new();
    for _ in 0..r.below(3) {
        let (col, vals) = &dims[r.below(dims.len() as u64) as usize];
        let v = vals[r.below(vals.len() as u64) as usize];
        let w = vals[r.below(vals.len() as u64) as usize];
        filters.push(match r.below(5) {
            0 => format!("{col} = '{v}'"),
            1 => format!("{col} <> '{v}'"),
            2 => format!("{col} IN ('{v}', '{w}')"),
            3 => format!("lower({col}) = '{}'", v.to_lowercase()),
            _ => format!("({col} = '{v}' OR {col} = '{w}')"),
        });
    }
    if tables.contains(&"i") && r.below(4) == 0 {
        filters.push(format!(
            "i.day BETWEEN '2026-01-{:02}' AND '2026-01-{:02}'",
            1 + r.below(10),
            12 + r.below(17)
        ));
    }
    let mut sql = format!("SELECT {} FROM {from}", select.join(", "));
    if !filters.is_empty() {
        sql.push_str(&format!(" WHERE {}", filters.join(" AND ")));
    }
    if !group.is_empty() {
        sql.push_str(&format!(
            " GROUP BY {}",
            group
                .iter()
                .map(|g| g.0.clone())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let having = if r.below(5) == 0 {
        Some(format!("{} > {}", chosen[0], r.below(60)))
    } else {
        None
    };
    let mut ours = sql.clone();
    if let Some(h) = &having {
        ours.push_str(&format!(" HAVING {h}"));
    }
    let mut theirs = sql;
    let mut conds: Vec<String> = tables
        .iter()
        .map(|t| format!("COUNT(DISTINCT {t}.user) >= {K}"))
        .collect();
    if let Some(h) = having {
        conds.push(h);
    }
    theirs.push_str(&format!(" HAVING {}", conds.join(" AND ")));
    (ours, theirs)
}

fn seed() -> u64 {
    std::env::var("DCR_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

fn loaded<'c>(c: &'c Contract, imp: &Path, purq: &Path) -> Engine<'c> {
    let mut e = Engine::new(c).unwrap();
    let cat = c.catalog();
    e.load(
        "impressions",
        dcr_sql::load::csv(
            cat.table("impressions").unwrap(),
            std::fs::File::open(imp).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    e.load(
        "purchases",
        dcr_sql::load::parquet(
            cat.table("purchases").unwrap(),
            std::fs::read(purq).unwrap().into(),
        )
        .unwrap(),
    )
    .unwrap();
    e
}

#[test]
fn generated_queries_match_sqlite_with_small_groups_removed() {
    if !require_tools("sql", &["sqlite3"]) {
        return;
    }
    let seed = seed();
    println!("seed {seed} (DCR_SEED={seed} reruns it)");
    let d = TempDir::new("sql-vs-sqlite");
    let c = Contract::from_toml(&contract_toml()).unwrap();
    let (imp, pur) = generate(d.path(), seed);
    let purq = d.path().join("purchases.parquet");
    to_parquet(&c, &pur, &purq);
    let db = sqlite_db(d.path(), &imp, &pur);
    let engine = loaded(&c, &imp, &purq);
    let mut r = Rng(seed ^ 0x5eed);
    let (mut nonempty, mut dropped_some) = (0, 0);
    let n = 120;
    for i in 0..n {
        let (ours, theirs) = random_query(&mut r);
        let checked = engine
            .check(
                "audience",
                Some("advertiser"),
                &Submission::Sql(ours.clone()),
            )
            .unwrap_or_else(|e| panic!("seed {seed} query {i}: {ours}\nrefused: {e}"));
        let out = engine.run(&checked).unwrap();
        let got = rows(&String::from_utf8(out.to_csv().unwrap()).unwrap(), true);
        let want = sqlite(&db, &theirs);
        assert!(
            same_rows(&got, &want),
            "seed {seed} query {i}: {ours}\n dcr:    {got:?}\n sqlite: {want:?}"
        );
        // The threshold did something: without it sqlite returns more groups.
        let unthresholded = sqlite(&db, &ours);
        if unthresholded.len() > want.len() {
            dropped_some += 1;
        }
        nonempty += usize::from(!want.is_empty());
    }
    println!("{n} queries: {nonempty} with rows, {dropped_some} where k dropped groups");
    assert!(nonempty >= n / 2, "too few queries return rows: {nonempty}");
    assert!(
        dropped_some >= 10,
        "too few queries exercise the threshold: {dropped_some}"
    );
}

/// Attack queries under the aggregation rule, each refused before anything runs, with the
/// reason it must name.
const ATTACKS: &[(&str, &str)] = &[
    // Raw projection and the privacy unit.
    ("SELECT i.user FROM impressions i", "must aggregate"),
    ("SELECT i.segment FROM impressions i", "must aggregate"),
    ("SELECT i.user, COUNT(DISTINCT p.user) FROM impressions i JOIN purchases p ON i.user = p.user GROUP BY i.user", "privacy unit"),
    ("SELECT COUNT(DISTINCT i.user) FROM impressions i GROUP BY i.user", "privacy unit"),
    ("SELECT p.amount, COUNT(DISTINCT p.user) FROM purchases p GROUP BY p.amount", "not a dimension"),
    ("SELECT * FROM impressions", "must aggregate"),
    ("SELECT DISTINCT i.segment, i.region FROM impressions i", "DISTINCT"),
    // Filters on the unit, CASE and casts.
    ("SELECT COUNT(DISTINCT i.user) FROM impressions i WHERE i.user = '0000000000000001'", "privacy unit"),
    ("SELECT COUNT(DISTINCT i.user) FROM impressions i WHERE i.user LIKE '00%'", "privacy unit"),
    ("SELECT COUNT(DISTINCT i.user) FROM impressions i WHERE i.user IN ('a', 'b')", "privacy unit"),
    ("SELECT CASE WHEN i.user = 'x' THEN 1 ELSE 0 END AS f, COUNT(DISTINCT i.user) FROM impressions i GROUP BY CASE WHEN i.user = 'x' THEN 1 ELSE 0 END", "CASE"),
    ("SELECT COUNT(DISTINCT i.user) FROM impressions i WHERE CASE WHEN i.user = 'x' THEN true ELSE false END", "CASE"),
    ("SELECT CAST(i.spend AS VARCHAR) AS s, COUNT(DISTINCT i.user) FROM impressions i GROUP BY CAST(i.spend AS VARCHAR)", "CAST"),
    ("SELECT COUNT(DISTINCT i.user) FROM impressions i WHERE CAST(i.user AS VARCHAR) = 'x'", "CAST"),
    ("SELECT lower(i.user) AS u, COUNT(DISTINCT i.user) FROM impressions i GROUP BY lower(i.user)", "privacy unit"),
    ("SELECT upper(p.user) AS u, SUM(p.amount) FROM purchases p GROUP BY upper(p.user)", "privacy unit"),
    // Smuggling through functions that are not allowed (not even registered).
    ("SELECT substr(i.user, 1, 4) AS u, COUNT(DISTINCT i.user) FROM impressions i GROUP BY substr(i.user, 1, 4)", "does not plan"),
    ("SELECT left(i.segment, 1) AS u, COUNT(DISTINCT i.user) FROM impressions i GROUP BY left(i.segment, 1)", "does not plan"),
    ("SELECT md5(i.user) AS u, COUNT(DISTINCT i.user) FROM impressions i GROUP BY md5(i.user)", "does not plan"),
    ("SELECT regexp_replace(i.user, 'a', 'b') AS u, COUNT(DISTINCT i.user) FROM impressions i GROUP BY 1", "does not plan"),
    ("SELECT i.segment || i.user AS u, COUNT(DISTINCT i.user) FROM impressions i GROUP BY i.segment || i.user", "operator"),
    ("SELECT i.spend + 1 AS u, COUNT(DISTINCT i.user) FROM impressions i GROUP BY i.spend + 1", "operator"),
    // Joins.
    ("SELECT i.segment, COUNT(DISTINCT i.user) FROM impressions i JOIN purchases p ON i.segment = p.product GROUP BY i.segment", "not a join column"),
    ("SELECT i.segment, COUNT(DISTINCT i.user) FROM impressions i JOIN purchases p ON i.user > p.user GROUP BY i.segment", "only equalities"),
    ("SELECT i.segment, COUNT(DISTINCT i.user) FROM impressions i JOIN purchases p ON i.user = p.user OR i.segment = p.product GROUP BY i.segment", "only equalities"),
    ("SELECT i.segment, COUNT(DISTINCT i.user) FROM impressions i LEFT JOIN purchases p ON i.user = p.user GROUP BY i.segment", "joins are not allowed"),
    ("SELECT i.segment, COUNT(DISTINCT i.user) FROM impressions i FULL OUTER JOIN purchases p ON i.user = p.user GROUP BY i.segment", "joins are not allowed"),
    ("SELECT i.segment, COUNT(DISTINCT i.user) FROM impressions i CROSS JOIN purchases p GROUP BY i.segment", "without ON"),
    ("SELECT i.segment, COUNT(DISTINCT i.user) FROM impressions i, purchases p WHERE i.user = p.user GROUP BY i.segment", "privacy unit"),
    ("SELECT i.segment, COUNT(DISTINCT i.user) FROM impressions i JOIN impressions j ON i.user = j.user AND i.segment = j.segment GROUP BY i.segment", "read twice"),
    // Self-joins under other aliases multiply a person's rows (outside review).
    ("SELECT a.segment, COUNT(DISTINCT a.user), SUM(a.spend) FROM impressions a JOIN impressions t1 ON a.user = t1.user JOIN impressions t2 ON t1.user = t2.user GROUP BY a.segment", "read twice"),
    ("SELECT a.segment, COUNT(DISTINCT a.user), COUNT(a.spend) FROM impressions a JOIN impressions b ON a.user = b.user GROUP BY a.segment", "read twice"),
    ("SELECT i.segment, COUNT(DISTINCT i.user) FROM impressions i JOIN purchases p ON i.user = p.user WHERE p.user = 'x' GROUP BY i.segment", "privacy unit"),
    // Set operations, subqueries, CTEs, windows.
    ("SELECT i.segment, COUNT(DISTINCT i.user) FROM impressions i GROUP BY i.segment UNION SELECT i.user, 1 FROM impressions i", "UNION"),
    ("SELECT i.segment, COUNT(DISTINCT i.user) FROM impressions i GROUP BY i.segment UNION ALL SELECT p.product, COUNT(DISTINCT p.user) FROM purchases p GROUP BY p.product", "UNION"),
    ("SELECT i.segment FROM impressions i EXCEPT SELECT p.product FROM purchases p", "EXCEPT"),
    ("SELECT i.segment FROM impressions i INTERSECT SELECT p.product FROM purchases p", "INTERSECT"),
    ("SELECT i.segment, COUNT(DISTINCT i.user) FROM impressions i GROUP BY i.segment EXCEPT SELECT p.product, COUNT(DISTINCT p.user) FROM purchases p GROUP BY p.product", "EXCEPT"),
    ("WITH raw AS (SELECT user AS segment FROM impressions) SELECT r.segment, COUNT(*) FROM raw r GROUP BY r.segment", "CTE"),
    ("SELECT t.s, COUNT(DISTINCT t.u) FROM (SELECT segment AS s, user AS u FROM impressions) t GROUP BY t.s", "CTE"),
    ("SELECT i.segment, COUNT(DISTINCT i.user) FROM impressions i WHERE i.segment IN (SELECT p.user FROM purchases p) GROUP BY i.segment", "subquery"),
    ("SELECT i.segment, COUNT(DISTINCT i.user) FROM impressions i WHERE EXISTS (SELECT 1 FROM purchases p WHERE p.user = i.user AND p.amount = 299) GROUP BY i.segment", "subquery"),
    ("SELECT i.segment, (SELECT SUM(p.amount) FROM purchases p) AS m, COUNT(DISTINCT i.user) FROM impressions i GROUP BY i.segment", "subquery"),
    ("SELECT i.segment, ROW_NUMBER() OVER (ORDER BY i.user) AS r FROM impressions i", "row_number"),
    ("SELECT i.segment, SUM(i.spend) OVER (PARTITION BY i.segment) AS r FROM impressions i", "window"),
    ("SELECT i.segment, COUNT(DISTINCT i.user), SUM(SUM(i.spend)) OVER (ORDER BY i.segment) AS w FROM impressions i GROUP BY i.segment", "window"),
    // Aggregates.
    ("SELECT i.segment, COUNT(*) FROM impressions i GROUP BY i.segment", "COUNT(*)"),
    ("SELECT i.segment, COUNT(1) FROM impressions i GROUP BY i.segment", "COUNT(*)"),
    ("SELECT i.segment, MAX(i.spend) FROM impressions i GROUP BY i.segment", "does not plan"),
    ("SELECT i.segment, MIN(i.user) FROM impressions i GROUP BY i.segment", "does not plan"),
    ("SELECT i.segment, SUM(i.spend * 1000) FROM impressions i GROUP BY i.segment", "bare column"),
    ("SELECT i.segment, SUM(p.score) FROM impressions i JOIN purchases p ON i.user = p.user GROUP BY i.segment", "not allowed by this rule"),
    ("SELECT i.segment, COUNT(i.user) FROM impressions i GROUP BY i.segment", "not allowed by this rule"),
    ("SELECT i.segment, AVG(DISTINCT i.spend) FROM impressions i GROUP BY i.segment", "not allowed"),
    ("SELECT i.segment, COUNT(DISTINCT i.user) FILTER (WHERE i.user = 'x') FROM impressions i GROUP BY i.segment", "FILTER"),
    ("SELECT i.segment, COUNT(DISTINCT i.user) FROM impressions i GROUP BY ROLLUP (i.segment)", "ROLLUP"),
    ("SELECT i.segment, COUNT(DISTINCT i.user) FROM impressions i GROUP BY CUBE (i.segment, i.region)", "ROLLUP"),
    // LIMIT / ORDER tricks.
    ("SELECT i.segment, SUM(i.spend) AS s FROM impressions i GROUP BY i.segment ORDER BY s DESC LIMIT 1", "LIMIT"),
    ("SELECT i.segment, SUM(i.spend) AS s FROM impressions i GROUP BY i.segment OFFSET 3", "LIMIT"),
    // Not a query.
    ("CREATE TABLE t AS SELECT * FROM impressions", "not"),
    ("DROP TABLE impressions", "not"),
    ("SELECT i.segment, COUNT(DISTINCT i.user) FROM impressions i GROUP BY i.segment; SELECT user FROM impressions", "does not plan"),
    ("COPY impressions TO '/tmp/leak.csv'", "not"),
    ("SELECT COUNT(DISTINCT u.user) FROM read_csv('/etc/passwd') u", "does not plan"),
    ("SELECT COUNT(DISTINCT x.user) FROM '/run/dcr/in/impressions' x", "does not plan"),
    ("EXPLAIN SELECT i.segment, COUNT(DISTINCT i.user) FROM impressions i GROUP BY i.segment", "not"),
    ("SET datafusion.execution.target_partitions = 1", "not"),
    ("SELECT 1", "not allowed"),
];

#[test]
fn attack_queries_are_refused_with_the_rule_named() {
    let c = Contract::from_toml(&contract_toml()).unwrap();
    let engine = Engine::new(&c).unwrap();
    let mut failures = Vec::new();
    for (sql, why) in ATTACKS {
        match engine.check(
            "audience",
            Some("advertiser"),
            &Submission::Sql(sql.to_string()),
        ) {
            Ok(_) => failures.push(format!("ALLOWED: {sql}")),
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "multi-line refusal for {sql}: {msg}");
                if !msg.starts_with("refused by analysis audience (aggregation rule): ")
                    || !msg.to_lowercase().contains(&why.to_lowercase())
                {
                    failures.push(format!("{sql}\n   wanted {why:?}, got: {msg}"));
                }
            }
        }
    }
    assert!(ATTACKS.len() >= 40, "{} attacks", ATTACKS.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn list_and_template_rules_hold_their_shapes() {
    let c = Contract::from_toml(&contract_toml()).unwrap();
    let engine = Engine::new(&c).unwrap();
    let ok = |a: &str, p: &str, s: Submission| {
        engine
            .check(a, Some(p), &s)
            .unwrap_or_else(|e| panic!("{s:?}: {e}"));
    };
    let no = |a: &str, p: &str, s: Submission, why: &str| {
        let e = engine
            .check(a, Some(p), &s)
            .err()
            .unwrap_or_else(|| panic!("allowed: {s:?}"));
        assert!(e.to_string().contains(why), "{s:?}: {e}");
    };
    let sql = |s: &str| Submission::Sql(s.into());
    ok("matched", "publisher", sql("SELECT DISTINCT i.segment, p.channel FROM impressions i JOIN purchases p ON i.user = p.user WHERE p.channel = 'web' ORDER BY i.segment LIMIT 10"));
    no(
        "matched",
        "publisher",
        sql("SELECT i.segment, p.user FROM impressions i JOIN purchases p ON i.user = p.user"),
        "privacy unit",
    );
    no(
        "matched",
        "publisher",
        sql("SELECT i.region FROM impressions i JOIN purchases p ON i.user = p.user"),
        "not a dimension",
    );
    no(
        "matched",
        "publisher",
        sql("SELECT i.segment FROM impressions i"),
        "needs at least one INNER JOIN",
    );
    // A self-join is not an overlap of two parties' tables (outside review).
    no(
        "matched",
        "publisher",
        sql("SELECT a.channel FROM purchases a JOIN purchases b ON a.user = b.user"),
        "read twice",
    );
    ok(
        "audience",
        "advertiser",
        sql("SELECT i.day, COUNT(DISTINCT i.user) FROM impressions i WHERE i.day >= DATE '2026-01-12' GROUP BY i.day"),
    );
    no(
        "matched",
        "publisher",
        sql("SELECT i.segment FROM impressions i JOIN purchases p ON i.user = p.user LIMIT 1"),
        "ORDER BY",
    );
    no(
        "matched",
        "publisher",
        sql("SELECT lower(i.segment) FROM impressions i JOIN purchases p ON i.user = p.user"),
        "lower",
    );
    no(
        "matched",
        "publisher",
        sql("SELECT i.segment || 'x' FROM impressions i JOIN purchases p ON i.user = p.user"),
        "as they are",
    );
    // Submitters.
    no(
        "matched",
        "advertiser",
        sql("SELECT i.segment FROM impressions i JOIN purchases p ON i.user = p.user"),
        "may not submit",
    );
    no(
        "audience",
        "publisher",
        sql("SELECT i.segment, COUNT(DISTINCT i.user) FROM impressions i GROUP BY i.segment"),
        "may not submit",
    );
    no("nope", "publisher", sql("SELECT 1"), "no analysis");
    // Templates: typed parameters.
    let params = |v: &[(&str, ParameterValue)]| {
        Submission::Template(
            v.iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        )
    };
    use ParameterValue::*;
    ok(
        "segment_size",
        "publisher",
        params(&[("segment", Text("news".into())), ("min_amount", Int(10))]),
    );
    no(
        "segment_size",
        "publisher",
        params(&[
            ("segment", Text("news".into())),
            ("min_amount", Text("10".into())),
        ]),
        "expected int64, got a string",
    );
    no(
        "segment_size",
        "publisher",
        params(&[("segment", Int(3)), ("min_amount", Int(10))]),
        "expected string",
    );
    no(
        "segment_size",
        "publisher",
        params(&[("segment", Text("news".into()))]),
        "missing",
    );
    no(
        "segment_size",
        "publisher",
        params(&[
            ("segment", Text("x".into())),
            ("min_amount", Int(1)),
            ("user", Text("u".into())),
        ]),
        "no parameter",
    );
    no(
        "segment_size",
        "publisher",
        sql("SELECT 1"),
        "template takes parameter values",
    );
    no("audience", "advertiser", params(&[]), "submit SQL");
}

#[test]
fn templates_and_lists_run_with_the_threshold() {
    if !require_tools("sql", &["sqlite3"]) {
        return;
    }
    let d = TempDir::new("sql-template");
    let c = Contract::from_toml(&contract_toml()).unwrap();
    let (imp, pur) = generate(d.path(), 42);
    let purq = d.path().join("purchases.parquet");
    to_parquet(&c, &pur, &purq);
    let db = sqlite_db(d.path(), &imp, &pur);
    let engine = loaded(&c, &imp, &purq);
    let s = Submission::Template(
        [
            ("segment".to_string(), ParameterValue::Text("news".into())),
            ("min_amount".to_string(), ParameterValue::Int(20)),
        ]
        .into(),
    );
    let out = engine
        .run(
            &engine
                .check("segment_size", Some("advertiser"), &s)
                .unwrap(),
        )
        .unwrap();
    let got = rows(&String::from_utf8(out.to_csv().unwrap()).unwrap(), true);
    let want = sqlite(&db, &format!("SELECT i.region, COUNT(DISTINCT i.user), SUM(p.amount) FROM impressions i JOIN purchases p ON i.user = p.user WHERE i.segment = 'news' AND p.amount >= 20 GROUP BY i.region HAVING COUNT(DISTINCT i.user) >= {K} AND COUNT(DISTINCT p.user) >= {K}"));
    assert!(same_rows(&got, &want), "dcr {got:?}\nsqlite {want:?}");
    let all = sqlite(&db, "SELECT i.region FROM impressions i JOIN purchases p ON i.user = p.user WHERE i.segment = 'news' AND p.amount >= 20 GROUP BY i.region");
    assert!(
        all.len() > want.len() && !want.is_empty(),
        "the template's k must drop a group: {all:?} vs {want:?}"
    );
    let list = "SELECT DISTINCT i.segment, p.channel FROM impressions i JOIN purchases p ON i.user = p.user ORDER BY i.segment, p.channel";
    let out = engine
        .run(
            &engine
                .check("matched", Some("publisher"), &Submission::Sql(list.into()))
                .unwrap(),
        )
        .unwrap();
    let got = rows(&String::from_utf8(out.to_csv().unwrap()).unwrap(), true);
    assert!(same_rows(&got, &sqlite(&db, list)), "{got:?}");
}

#[test]
fn tables_load_only_as_declared() {
    let c = Contract::from_toml(&contract_toml()).unwrap();
    let t = c.catalog().table("impressions").unwrap();
    let load = |s: &str| {
        dcr_sql::load::csv(t, s.as_bytes())
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert!(
        load("user,segment,region,age_band,day,spend\nu1,news,north,18-24,2026-01-02,5\n").is_ok()
    );
    for (csv, why) in [
        (
            "user,segment,region,age_band,day\nu1,news,north,18-24,2026-01-02\n",
            "header",
        ),
        (
            "segment,user,region,age_band,day,spend\nnews,u1,north,18-24,2026-01-02,5\n",
            "header",
        ),
        (
            "user,segment,region,age_band,day,spend\nu1,news,north,18-24,2026-01-02,five\n",
            "CSV",
        ),
        (
            "user,segment,region,age_band,day,spend\nu1,news,north,18-24,2026-02-31,5\n",
            "CSV",
        ),
        (
            "user,segment,region,age_band,day,spend\n,news,north,18-24,2026-01-02,5\n",
            "privacy unit user is empty",
        ),
        (
            "user,segment,region,age_band,day,spend\nu1,news,north,18-24,2026-01-02,5,6\n",
            "CSV",
        ),
    ] {
        let e = load(csv).expect_err(csv);
        assert!(
            e.starts_with("table impressions: ") && e.contains(why),
            "{csv}: {e}"
        );
    }
    // Parquet with the wrong columns.
    let d = TempDir::new("sql-parquet-bad");
    let (_, pur) = generate(d.path(), 3);
    let q = d.path().join("p.parquet");
    to_parquet(&c, &pur, &q);
    let e = dcr_sql::load::parquet(t, std::fs::read(&q).unwrap().into())
        .unwrap_err()
        .to_string();
    assert!(e.contains("columns") || e.contains("does not match"), "{e}");
}

#[test]
fn the_cli_checks_and_runs_locally() {
    let d = TempDir::new("sql-cli");
    let ct = d.path().join("contract.toml");
    std::fs::write(&ct, contract_toml()).unwrap();
    let (imp, pur) = generate(d.path(), 9);
    let c = Contract::from_toml(&contract_toml()).unwrap();
    let purq = d.path().join("purchases.parquet");
    to_parquet(&c, &pur, &purq);
    let q = "SELECT i.segment, COUNT(DISTINCT i.user) AS users FROM impressions i JOIN purchases p ON i.user = p.user GROUP BY i.segment";
    let run = |args: &[&str]| Command::new(dcr_attest()).args(args).output().unwrap();
    let ctp = ct.to_str().unwrap();
    let o = run(&[
        "query",
        "check",
        "--contract",
        ctp,
        "--analysis",
        "audience",
        "--party",
        "advertiser",
        "--sql",
        q,
        "--explain",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("allowed by analysis audience") && stdout(&o).contains("__dcr_units_"),
        "{}",
        stdout(&o)
    );
    let o = run(&[
        "query",
        "check",
        "--contract",
        ctp,
        "--analysis",
        "audience",
        "--sql",
        "SELECT i.user, COUNT(DISTINCT i.user) FROM impressions i GROUP BY i.user",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.starts_with("refused by analysis audience (aggregation rule): ")
            && e.trim().lines().count() == 1,
        "{e}"
    );
    let o = run(&[
        "query",
        "run-local",
        "--contract",
        ctp,
        "--analysis",
        "audience",
        "--sql",
        q,
        "--table",
        &format!("impressions={}", imp.display()),
        "--table",
        &format!("purchases={}", purq.display()),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("segment,users\n") && out.lines().count() > 2,
        "{out}"
    );
    // A CSV where the contract says Parquet: one line naming the table and flag.
    let o = run(&[
        "query",
        "run-local",
        "--contract",
        ctp,
        "--analysis",
        "audience",
        "--sql",
        q,
        "--table",
        &format!("purchases={}", pur.display()),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).starts_with("error: --table purchases=")
            && stderr(&o).trim().lines().count() == 1,
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "query",
        "check",
        "--contract",
        ctp,
        "--analysis",
        "segment_size",
        "--param",
        "segment=news",
        "--param",
        "min_amount=ten",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("parameter min_amount: expected int64, got a string"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "query",
        "check",
        "--contract",
        ctp,
        "--analysis",
        "segment_size",
        "--party",
        "publisher",
        "--param",
        "segment=news",
        "--param",
        "min_amount=10",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn the_reference_rooms_sql_gives_the_native_workloads_table() {
    let d = TempDir::new("sql-native");
    let o = Command::new(dcr_cleanroom_gen())
        .args(["--seed", "11", "--rows", "30000", "--out-dir"])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let overlap = dcr_tests::profile_dir().join("dcr-workload-overlap");
    let native = Command::new(&overlap)
        .arg(d.path().join("publisher.csv"))
        .arg(d.path().join("advertiser.csv"))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", overlap.display()));
    assert!(native.status.success(), "{}", stderr(&native));
    let contract = dcr_tests::workspace().join("images/clean-room/contract.toml");
    let c = Contract::from_toml(&std::fs::read_to_string(&contract).unwrap()).unwrap();
    let a = c
        .analysis("overlap")
        .expect("the reference contract has analysis overlap");
    let sql = std::fs::read_to_string(dcr_tests::workspace().join("images/clean-room/overlap.sql"))
        .unwrap();
    assert!(a.submitters.contains(&"advertiser".to_string()));
    let o = run_local_overlap(&contract, d.path(), &sql);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), stdout(&native), "SQL vs native workload");
    assert!(stdout(&o).lines().count() > 3);
}

/// dcr-sql-engine as guest-init runs it: the contract's canonical JSON, one query document,
/// NAME=FILE tables. CSV and Parquet give the run-local table; a refused query (rule or
/// submitter) exits 3 with one line naming it and reads no table (the files given do not
/// exist); a plan checked before a load never runs.
#[test]
fn the_engine_binary_answers_csv_and_parquet_and_refuses_before_reading() {
    let d = TempDir::new("sql-engine-bin");
    let o = Command::new(dcr_cleanroom_gen())
        .args(["--seed", "3", "--rows", "20000", "--parquet", "--out-dir"])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let reference = dcr_tests::workspace().join("images/clean-room/contract.toml");
    let text = std::fs::read_to_string(&reference).unwrap();
    let sql = std::fs::read_to_string(dcr_tests::workspace().join("images/clean-room/overlap.sql"))
        .unwrap();
    let canonical = |name: &str, text: &str| {
        let c = Contract::from_toml(text).unwrap();
        let p = d.path().join(name);
        std::fs::write(&p, c.canonical_json()).unwrap();
        p
    };
    let csv_contract = canonical("csv.json", &text);
    let pq_contract = canonical(
        "pq.json",
        &text.replace("format = \"csv\"", "format = \"parquet\""),
    );
    let query = |name: &str, party: &str, sql: &str| {
        let p = d.path().join(name);
        let q = dcr_protocol::analysis::Query {
            analysis: "overlap".into(),
            party: party.into(),
            sql: Some(sql.into()),
            parameters: BTreeMap::new(),
        };
        std::fs::write(&p, q.to_json()).unwrap();
        p
    };
    let ok = query("ok.json", "advertiser", &sql);
    let engine = |contract: &Path, q: &Path, ext: &str| {
        Command::new(dcr_sql_engine())
            .arg(contract)
            .arg(q)
            .arg(format!(
                "segments={}",
                d.path().join(format!("publisher.{ext}")).display()
            ))
            .arg(format!(
                "conversions={}",
                d.path().join(format!("advertiser.{ext}")).display()
            ))
            .output()
            .unwrap()
    };
    let local = run_local_overlap(&reference, d.path(), &sql);
    assert!(local.status.success(), "{}", stderr(&local));
    let want = stdout(&local);
    assert!(want.lines().count() > 3, "{want}");
    for (c, ext) in [(&csv_contract, "csv"), (&pq_contract, "parquet")] {
        let o = engine(c, &ok, ext);
        assert_eq!(o.status.code(), Some(0), "{ext}: {}", stderr(&o));
        assert_eq!(stdout(&o), want, "{ext}");
    }
    // Refusals: exit 3, one line naming the rule; the (missing) tables are never read.
    let missing = |contract: &Path, q: &Path| {
        Command::new(dcr_sql_engine())
            .arg(contract)
            .arg(q)
            .arg("segments=/nonexistent/segments.csv")
            .arg("conversions=/nonexistent/conversions.csv")
            .output()
            .unwrap()
    };
    for (q, why) in [
        (
            query("raw.json", "advertiser", "SELECT s.user FROM segments s"),
            "aggregation",
        ),
        (query("party.json", "publisher", &sql), "publisher"),
    ] {
        let o = missing(&csv_contract, &q);
        assert_eq!(o.status.code(), Some(3), "{}{}", stdout(&o), stderr(&o));
        let line = stdout(&o);
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(line.contains(why), "{line}");
    }
    // An allowed query does read its tables: a missing file is an error (exit 1), not rows.
    let o = missing(&csv_contract, &ok);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).is_empty());
    assert!(
        stderr(&o).contains("/nonexistent/segments.csv"),
        "{}",
        stderr(&o)
    );
    // The library: a plan checked before a load is refused at run time.
    let c = Contract::from_toml(&text).unwrap();
    let mut e = Engine::new(&c).unwrap();
    let checked = e
        .check("overlap", Some("advertiser"), &Submission::Sql(sql.clone()))
        .unwrap();
    let rows = dcr_sql::load::csv(
        c.catalog().table("segments").unwrap(),
        std::fs::File::open(d.path().join("publisher.csv")).unwrap(),
    )
    .unwrap();
    e.load("segments", rows).unwrap();
    let err = e.run(&checked).err().expect("a stale plan must not run");
    assert!(err.to_string().contains("check it again"), "{err}");
}

/// `query run-local` of `sql` as the advertiser under the reference room's analysis overlap,
/// over the generator's CSVs in `data`.
fn run_local_overlap(contract: &Path, data: &Path, sql: &str) -> std::process::Output {
    Command::new(dcr_attest())
        .args(["query", "run-local", "--contract"])
        .arg(contract)
        .args([
            "--analysis",
            "overlap",
            "--party",
            "advertiser",
            "--sql",
            sql,
        ])
        .arg("--table")
        .arg(format!("segments={}", data.join("publisher.csv").display()))
        .arg("--table")
        .arg(format!(
            "conversions={}",
            data.join("advertiser.csv").display()
        ))
        .output()
        .unwrap()
}

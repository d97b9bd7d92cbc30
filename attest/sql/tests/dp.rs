//! Differential privacy in the engine: the mechanisms' noise against its configured scale
//! (≥ 10⁴ samples each, a test-only seeded stream so the tests are repeatable), partition
//! selection's release rate against the discrete Laplace tail, the shapes DP refuses, and
//! the randomness coming from the kernel when no seed is set.
//!
//! Expected values come from closed forms of the discrete Laplace distribution
//! (P(X = x) ∝ e^{-|x|/b}) and from the plain data, never from the engine.

use std::fmt::Write as _;
use std::sync::Mutex;

use dcr_protocol::contract::Contract;
use dcr_sql::{Engine, Output, Submission};

/// The seeded stream is process-wide: tests that use it run one at a time.
static SEQ: Mutex<()> = Mutex::new(());

fn contract(dp: &str, k: u64) -> Contract {
    let text = format!(
        r#"version = 1
name = "dp-test"
expires = "2030-01-01T00:00:00Z"
platforms = ["tpm"]
[[parties]]
id = "a"
name = "A"
[[parties]]
id = "b"
name = "B"
[[datasets]]
id = "visits"
owner = "a"
key_id = "visits-1"
blob = "visits.sealed"
[datasets.table]
name = "visits"
format = "csv"
privacy_unit = "user"
columns = [
  {{ name = "user", type = "string" }},
  {{ name = "segment", type = "string" }},
  {{ name = "amount", type = "int64" }},
  {{ name = "score", type = "float64" }},
]
[[datasets]]
id = "buys"
owner = "b"
key_id = "buys-1"
blob = "buys.sealed"
[datasets.table]
name = "buys"
format = "csv"
privacy_unit = "uid"
columns = [
  {{ name = "uid", type = "string" }},
  {{ name = "product", type = "string" }},
]
[[analyses]]
name = "q"
submitters = ["b"]
[analyses.rule.aggregation]
min_distinct_units = {k}
join_columns = ["visits.user", "buys.uid"]
dimensions = ["visits.segment", "buys.product"]
aggregates = [
  {{ function = "count", columns = ["visits.amount"] }},
  {{ function = "count_distinct", columns = ["visits.user", "buys.uid"] }},
  {{ function = "sum", columns = ["visits.amount"] }},
  {{ function = "avg", columns = ["visits.score"] }},
]
scalar_functions = ["lower"]
[analyses.rule.aggregation.dp]
{dp}
[[workloads]]
name = "sql"
kind = "sql"
sha256 = "{zeros}"
inputs = ["visits", "buys"]
limits = {{ timeout_secs = 600, cpu_secs = 600, memory_mib = 1024, output_mib = 16 }}
[output]
min_group_size = 2
columns = [{{ name = "n", kind = "count" }}]
blob = "result.sealed"
[[recipients]]
party = "b"
hpke_public_key = "x25519:5bcf6293e4f118b5e53584fb59afff56f58870e11e9275afe743239c8e4a5c74"
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
    );
    Contract::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// `visits` rows (user, segment, amount, score) and the `buys` of the same users.
fn load<'c>(c: &'c Contract, visits: &str, buys: &str) -> Engine<'c> {
    let mut e = Engine::new(c).unwrap();
    let cat = c.catalog();
    let v = format!("user,segment,amount,score\n{visits}");
    let b = format!("uid,product\n{buys}");
    e.load(
        "visits",
        dcr_sql::load::csv(cat.table("visits").unwrap(), v.as_bytes()).unwrap(),
    )
    .unwrap();
    e.load(
        "buys",
        dcr_sql::load::csv(cat.table("buys").unwrap(), b.as_bytes()).unwrap(),
    )
    .unwrap();
    e
}

fn run(e: &Engine<'_>, sql: &str) -> Output {
    let q = e
        .check("q", Some("b"), &Submission::Sql(sql.into()))
        .unwrap_or_else(|r| panic!("{r}"));
    e.run(&q).unwrap()
}

/// Rows of the output as strings (header dropped).
fn table(o: &Output) -> Vec<Vec<String>> {
    let csv = String::from_utf8(o.to_csv().unwrap()).unwrap();
    csv.lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// 100 users in segment `s` with amount 5 and score `score`, each with a purchase.
fn hundred_users(score: &str) -> (String, String) {
    let (mut v, mut b) = (String::new(), String::new());
    for u in 0..100 {
        writeln!(v, "u{u},s,5,{score}").unwrap();
        writeln!(b, "u{u},p").unwrap();
    }
    (v, b)
}

/// Variance of the discrete Laplace with scale b.
fn dlap_var(b: f64) -> f64 {
    let q = (-1.0 / b).exp();
    2.0 * q / (1.0 - q).powi(2)
}

/// P(X >= d) of the discrete Laplace with scale b.
fn dlap_ge(d: i64, b: f64) -> f64 {
    let q = (-1.0 / b).exp();
    if d >= 1 {
        q.powi(d as i32) / (1.0 + q)
    } else {
        1.0 - q.powi((1 - d) as i32) / (1.0 + q)
    }
}

const DP: &str = "epsilon_per_query = \"3\"\nepsilon_total = \"30\"\ndelta = \"1e-6\"\nmax_rows_per_unit = 1\nclamp = { \"visits.amount\" = [0, 10], \"visits.score\" = [0, 1] }";

#[test]
fn noise_has_the_configured_scale() {
    let _g = SEQ.lock().unwrap_or_else(|p| p.into_inner());
    openssl::rand::seed_for_tests(Some(1));
    // 10 000 groups of 40 users, one row each: amount 5, so COUNT = 40 and SUM = 200 exactly.
    let (groups, users) = (10_000, 40);
    let (mut v, mut b) = (String::new(), String::new());
    for g in 0..groups {
        for u in 0..users {
            writeln!(v, "u{g}x{u},s{g},5,0.5").unwrap();
            writeln!(b, "u{g}x{u},p").unwrap();
        }
    }
    let c = contract(DP, 2);
    let e = load(&c, &v, &b);
    let out = run(
        &e,
        "SELECT v.segment, COUNT(v.amount) AS n, SUM(v.amount) AS total FROM visits v JOIN buys b ON v.user = b.uid GROUP BY v.segment",
    );
    openssl::rand::seed_for_tests(None);
    let acc = out.dp.clone().expect("a DP account");
    // ε: selection + two aggregates, one each; the maps say at most 3.
    assert!(acc.epsilon <= 3.0 + 1e-9 && acc.epsilon > 2.99, "{acc:?}");
    assert!(acc.delta <= 1e-6 && acc.delta > 0.0, "{acc:?}");
    // Scales: sensitivity / ε share (count: 1 row per unit; sum: 1 × 10).
    let (bn, bs) = (acc.scales["n"], acc.scales["total"]);
    assert!(
        (bn - 1.0).abs() < 1e-6 && (bs - 10.0).abs() < 1e-5,
        "{acc:?}"
    );
    let rows = table(&out);
    assert_eq!(
        rows.len(),
        groups,
        "every group of 40 users is far above the threshold"
    );
    for (col, truth, b) in [(1, 40.0, bn), (2, 200.0, bs)] {
        let noise: Vec<f64> = rows
            .iter()
            .map(|r| r[col].parse::<f64>().unwrap() - truth)
            .collect();
        let n = noise.len() as f64;
        let mean = noise.iter().sum::<f64>() / n;
        let var = noise.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let want = dlap_var(b);
        assert!(
            (var / want - 1.0).abs() < 0.1,
            "column {col}: variance {var}, expected {want}"
        );
        assert!(
            mean.abs() < 4.0 * (want / n).sqrt(),
            "column {col}: mean {mean}"
        );
        // Tail: P(|X| >= 3b) against the closed form.
        let d = (3.0 * b).ceil() as i64;
        let tail = noise.iter().filter(|x| x.abs() >= d as f64).count() as f64 / n;
        let want_tail = 2.0 * dlap_ge(d, b);
        let sd = (want_tail * (1.0 - want_tail) / n).sqrt();
        assert!(
            (tail - want_tail).abs() < 5.0 * sd,
            "column {col}: tail {tail}, expected {want_tail}"
        );
    }
}

#[test]
fn partition_selection_drops_rare_groups_at_the_expected_rate() {
    let _g = SEQ.lock().unwrap_or_else(|p| p.into_inner());
    let c = contract(DP, 2);
    // The threshold and scale for this rule (from the account of a tiny query).
    let e = load(&c, "u1,s,1,0.1\n", "u1,p\n");
    let probe = run(&e, "SELECT v.segment, COUNT(v.amount) AS n FROM visits v JOIN buys b ON v.user = b.uid GROUP BY v.segment");
    let tau = probe.dp.unwrap().threshold.expect("a threshold") as i64;
    // Selection's share: ε 3 over (selection + COUNT) = 1.5, one group per unit: b = 1/1.5.
    let b = 1.0 / 1.5;
    // 3000 groups each of tau-1, tau and tau+1 units (one row per unit).
    let per = 3000;
    let (mut v, mut bb) = (String::new(), String::new());
    for (kind, units) in [("lo", tau - 1), ("at", tau), ("hi", tau + 1)] {
        for g in 0..per {
            for u in 0..units {
                writeln!(v, "{kind}{g}x{u},{kind}{g},1,0.1").unwrap();
                writeln!(bb, "{kind}{g}x{u},p").unwrap();
            }
        }
    }
    openssl::rand::seed_for_tests(Some(2));
    let e = load(&c, &v, &bb);
    let out = run(&e, "SELECT v.segment, COUNT(v.amount) AS n FROM visits v JOIN buys b ON v.user = b.uid GROUP BY v.segment");
    openssl::rand::seed_for_tests(None);
    let rows = table(&out);
    for (kind, units) in [("lo", tau - 1), ("at", tau), ("hi", tau + 1)] {
        let got = rows.iter().filter(|r| r[0].starts_with(kind)).count() as f64 / per as f64;
        // Released when units + X >= tau.
        let want = dlap_ge(tau - units, b);
        let sd = (want * (1.0 - want) / per as f64).sqrt();
        assert!(
            (got - want).abs() < 5.0 * sd + 1e-3,
            "{kind} ({units} units, threshold {tau}): released {got}, expected {want}"
        );
    }
    // A group of one person is (all but) never released, and the threshold keeps k.
    assert!(tau >= 2);
}

#[test]
fn rows_per_unit_are_bounded_and_aggregates_match_the_data() {
    let _g = SEQ.lock().unwrap_or_else(|p| p.into_inner());
    // Huge ε: the noise is (almost) nil, so the released values are the bounded aggregates.
    let dp = "epsilon_per_query = \"100\"\nepsilon_total = \"100\"\ndelta = \"1e-9\"\nmax_rows_per_unit = 2\nclamp = { \"visits.amount\" = [0, 10], \"visits.score\" = [0, 1] }";
    let c = contract(dp, 2);
    let (mut v, mut b) = (String::new(), String::new());
    // 30 users in "x" with one row each (amount 20, clamped to 10; score 0.25);
    // one user "big" with 500 rows in "y" and 30 others with one row each.
    for u in 0..30 {
        writeln!(v, "x{u},x,20,0.25").unwrap();
        writeln!(b, "x{u},p").unwrap();
        writeln!(v, "y{u},y,1,0.75").unwrap();
        writeln!(b, "y{u},p").unwrap();
    }
    for _ in 0..500 {
        writeln!(v, "big,y,1,0.75").unwrap();
    }
    writeln!(b, "big,p").unwrap();
    let e = load(&c, &v, &b);
    let out = run(
        &e,
        "SELECT v.segment AS seg, COUNT(v.amount) AS n, COUNT(DISTINCT v.user) AS users, SUM(v.amount) AS amount, AVG(v.score) AS score FROM visits v JOIN buys b ON v.user = b.uid GROUP BY v.segment",
    );
    let rows = table(&out);
    let x = rows.iter().find(|r| r[0] == "x").expect("x released");
    let y = rows.iter().find(|r| r[0] == "y").expect("y released");
    let close = |s: &str, want: f64, tol: f64| (s.parse::<f64>().unwrap() - want).abs() <= tol;
    assert!(close(&x[1], 30.0, 1.0) && close(&x[2], 30.0, 1.0), "{x:?}");
    assert!(close(&x[3], 300.0, 10.0), "clamped to 10 each: {x:?}");
    assert!(close(&x[4], 0.25, 0.05), "{x:?}");
    // "big" contributes 2 rows, not 500.
    assert!(close(&y[1], 32.0, 1.0) && close(&y[2], 31.0, 1.0), "{y:?}");
    assert!(close(&y[3], 32.0, 10.0), "{y:?}");
}

#[test]
fn dp_refuses_what_would_act_on_exact_values() {
    let c = contract(DP, 2);
    let e = Engine::new(&c).unwrap();
    for (sql, why) in [
        ("SELECT v.segment, COUNT(v.amount) AS n FROM visits v JOIN buys b ON v.user = b.uid GROUP BY v.segment HAVING COUNT(v.amount) > 5", "HAVING"),
        ("SELECT v.segment, COUNT(v.amount) AS n FROM visits v JOIN buys b ON v.user = b.uid GROUP BY v.segment ORDER BY n", "ORDER BY"),
        ("SELECT v.segment, COUNT(v.amount) + 1 AS n FROM visits v JOIN buys b ON v.user = b.uid GROUP BY v.segment", "exact value"),
        ("SELECT v.segment, COUNT(DISTINCT b.product) AS n FROM visits v JOIN buys b ON v.user = b.uid GROUP BY v.segment", "count"),
        // Tables not joined on the unit (the rule's join columns are the units: refused).
        ("SELECT v.segment, COUNT(v.amount) AS n FROM visits v JOIN buys b ON v.segment = b.product GROUP BY v.segment", "join column"),
        ("SELECT v.segment, COUNT(v.amount) AS n FROM visits v, buys b GROUP BY v.segment", "join"),
        ("SELECT v.segment, COUNT(v.amount) AS n FROM visits v JOIN buys b ON v.user = b.uid GROUP BY v.segment LIMIT 3", "LIMIT"),
    ] {
        let r = e.check("q", Some("b"), &Submission::Sql(sql.into()));
        let err = r.err().unwrap_or_else(|| panic!("{sql}: not refused")).to_string();
        assert!(err.contains(why) || err.to_lowercase().contains(&why.to_lowercase()), "{sql}: {err}");
    }
}

#[test]
fn noise_comes_from_the_kernel_when_unseeded() {
    let _g = SEQ.lock().unwrap_or_else(|p| p.into_inner());
    openssl::rand::seed_for_tests(None);
    let c = contract(DP, 2);
    let (v, b) = hundred_users("0.5");
    let e = load(&c, &v, &b);
    let sql = "SELECT COUNT(v.amount) AS n, SUM(v.amount) AS s FROM visits v JOIN buys b ON v.user = b.uid";
    let before = openssl::bytes_served();
    let answers: Vec<Vec<Vec<String>>> = (0..8).map(|_| table(&run(&e, sql))).collect();
    assert!(
        openssl::bytes_served() > before,
        "OpenDP drew no bytes from the kernel source"
    );
    assert!(
        answers.windows(2).any(|w| w[0] != w[1]),
        "eight noisy answers were identical: {answers:?}"
    );
    // Seeded twice alike gives the same answer (the test stream is deterministic) ...
    openssl::rand::seed_for_tests(Some(7));
    let a = table(&run(&e, sql));
    openssl::rand::seed_for_tests(Some(7));
    let b2 = table(&run(&e, sql));
    openssl::rand::seed_for_tests(None);
    assert_eq!(a, b2);
}

#[test]
fn an_empty_input_answers_like_any_other() {
    // A WHERE that matches nothing must not make the engine fail (a failure would tell the
    // querier, for free and without noise, that no row matched).
    let _g = SEQ.lock().unwrap_or_else(|p| p.into_inner());
    let c = contract(DP, 2);
    let (v, b) = hundred_users("NaN");
    let e = load(&c, &v, &b);
    for sql in [
        "SELECT SUM(v.amount) AS s, AVG(v.score) AS a, COUNT(v.amount) AS n FROM visits v JOIN buys b ON v.user = b.uid WHERE v.segment = 'nobody'",
        "SELECT v.segment, SUM(v.amount) AS s, AVG(v.score) AS a, COUNT(v.amount) AS n FROM visits v JOIN buys b ON v.user = b.uid WHERE v.segment = 'nobody' GROUP BY v.segment",
        // NaN scores count as NULL: AVG over none of them, no failure.
        "SELECT AVG(v.score) AS a FROM visits v JOIN buys b ON v.user = b.uid",
    ] {
        let out = run(&e, sql);
        assert!(out.dp.is_some(), "{sql}");
        let csv = String::from_utf8(out.to_csv().unwrap()).unwrap();
        assert!(csv.lines().count() <= 2, "{sql}: {csv}");
    }
}

//! Load generator for `dcr-attest serve` (BENCHMARKS.md): starts a service on loopback with a
//! pinned software AK, registers two keys, and runs CLIENTS concurrent clients × ROUNDS
//! challenge + attest + release rounds, printing throughput and latency percentiles.
//! Usage: release-load [CLIENTS=64] [ROUNDS=50]
#![forbid(unsafe_code)]

use dcr_tests::load::*;
use dcr_tests::*;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|x| x.parse().expect("a number"))
        .collect();
    let clients = a.first().copied().unwrap_or(64);
    let rounds = a.get(1).copied().unwrap_or(50);
    let t = TempDir::new("release-load");
    let d = t.path();
    let (tpm, args) = soft_tpm_service_args(d);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let svc = start_service(&d.join("svc"), &args);
    let (cd, signing) =
        setup_service_with_keys(d, &svc, &tpm, "load", &[("k1", false), ("k2", false)]);
    let s = run_load(&svc.url, clients, rounds, &tpm, &cd, &signing);
    println!(
        "clients {clients} rounds {rounds}: {} released, {} refused, {} errors in {:.2} s = {:.0} releases/s; latency p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
        s.ok,
        s.refused.len(),
        s.errors.len(),
        s.wall.as_secs_f64(),
        s.ok as f64 / s.wall.as_secs_f64(),
        s.percentile(0.5).as_secs_f64() * 1e3,
        s.percentile(0.99).as_secs_f64() * 1e3,
        s.percentile(1.0).as_secs_f64() * 1e3,
    );
    if !s.errors.is_empty() || !s.refused.is_empty() {
        eprintln!(
            "first problems: {:?} {:?}",
            s.errors.first(),
            s.refused.first()
        );
        std::process::exit(1);
    }
}

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
    let tpm = SoftTpm::new(
        7,
        vec![
            (4, [4u8; 32]),
            (9, [9u8; 32]),
            (11, [11u8; 32]),
            (23, [23u8; 32]),
        ],
    );
    std::fs::write(d.join("ak.pem"), tpm.ak_pem()).unwrap();
    std::fs::write(d.join("tokens"), "publisher:publisher-token-0123456789\n").unwrap();
    let svc = start_service(
        &d.join("svc"),
        &[
            "--tokens",
            d.join("tokens").to_str().unwrap(),
            "--tpm-ak",
            d.join("ak.pem").to_str().unwrap(),
        ],
    );
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

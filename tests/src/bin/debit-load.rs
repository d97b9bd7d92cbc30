//! `debit-load [ROUNDS]`: the key-release service's privacy-budget debits under 64 concurrent
//! clients on loopback (BENCHMARKS.md, issue K). Starts `dcr-attest serve`, registers the DP
//! test contract (ε 0.001 a query, 100 in all), gets a TEE's upload token by a real release to
//! the pinned software TPM, then per round: the publisher submits 64 queries, 64 threads
//! debit one each at once (timed), and the TEE uploads a stub answer to each (untimed) so the
//! next round can submit again. Prints debits/s over the timed phases and p50/p99/max.

use std::time::{Duration, Instant};

use dcr_tests::load::*;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("ROUNDS"))
        .unwrap_or(25);
    let r = DpRoom::new("0.001", "100", "analysis");
    let tee = r.upload_auth();
    let url = r.debit_url();
    let mut lat: Vec<Duration> = Vec::new();
    let mut busy = Duration::ZERO;
    let mut refused = 0;
    for round in 0..rounds {
        let qs: Vec<(String, String)> = (0..64)
            .map(|n| r.submit("publisher", PUB_TOKEN, "segments", round * 64 + n))
            .collect();
        let t0 = Instant::now();
        let results: Vec<(u16, Duration)> = std::thread::scope(|s| {
            let hs: Vec<_> = qs
                .iter()
                .map(|(id, sha)| {
                    let (url, tee) = (&url, &tee);
                    s.spawn(move || {
                        let t = Instant::now();
                        let (st, _) = call_json(
                            url,
                            Some(&tee.auth),
                            Some(&tee.req(id, sha, "segments", "publisher", "0.001")),
                        );
                        (st, t.elapsed())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("client")).collect()
        });
        busy += t0.elapsed();
        for (st, d) in results {
            if st == 200 {
                lat.push(d);
            } else {
                refused += 1;
            }
        }
        // Answer each query (a stub: the service stores sealed bytes it cannot read) so that
        // it is no longer pending.
        let agent = plain_agent();
        for (id, _) in &qs {
            let put = agent
                .put(&format!(
                    "{}/v1/contracts/{}/blobs/query-{id}.result",
                    r.svc.url, r.digest
                ))
                .header("authorization", tee.auth.as_str())
                .send(&b"stub"[..])
                .expect("put");
            assert!(put.status().is_success(), "answer upload: {}", put.status());
        }
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "debits={} refused={refused} wall={:.2}s debits_per_s={:.0} p50={:.1}ms p99={:.1}ms max={:.1}ms",
        lat.len(),
        busy.as_secs_f64(),
        lat.len() as f64 / busy.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3
    );
}

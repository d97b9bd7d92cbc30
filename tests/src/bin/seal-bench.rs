//! Sealed-stream throughput on one core (BENCHMARKS.md): seal and open SIZE_MIB of data in
//! memory with 1 MiB chunks, best of 5, printed as GiB/s. `reproducible/bench-seal.sh` runs it
//! beside `openssl speed -evp aes-256-gcm` and prints the ratio.
//! Usage: seal-bench [SIZE_MIB=512]
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::time::Instant;

use dcr_protocol::seal::{Dek, Header, Opener, Sealer};

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .map(|x| x.parse().expect("MiB"))
        .unwrap_or(512);
    let data: Vec<u8> = (0..mib << 20).map(|i| (i * 31 % 251) as u8).collect();
    let dek = Dek::generate(&mut rand_core::OsRng);
    let mut sealed = Vec::with_capacity(data.len() + (data.len() >> 14) + 4096);
    let (mut best_seal, mut best_open) = (f64::MAX, f64::MAX);
    let mut out = vec![0u8; data.len()];
    for _ in 0..5 {
        sealed.clear();
        let h = Header::new("bench", 1 << 20, &mut rand_core::OsRng).unwrap();
        let t = Instant::now();
        let mut s = Sealer::new(&mut sealed, &dek, h).unwrap();
        s.write_all(&data).unwrap();
        s.finish().unwrap();
        best_seal = best_seal.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut r = &sealed[..];
        let h = Header::read_from(&mut r).unwrap();
        let mut o = Opener::new(r, &dek, h);
        o.read_exact(&mut out).unwrap();
        assert_eq!(o.read(&mut [0u8; 1]).unwrap(), 0);
        best_open = best_open.min(t.elapsed().as_secs_f64());
    }
    assert!(out == data);
    let gib = data.len() as f64 / (1u64 << 30) as f64;
    println!("seal {:.2} GiB/s", gib / best_seal);
    println!("open {:.2} GiB/s", gib / best_open);
}

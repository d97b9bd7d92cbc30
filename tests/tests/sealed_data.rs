//! The sealed data format through the parties' CLI: seal → open round trips at the chunk
//! edges and for 1 GiB (streamed, bounded memory), and tampering with each header field, a
//! chunk, chunk order and the length detected with a one-line error and no output file.

use std::path::Path;
use std::process::Command;

use dcr_tests::*;

const CHUNK: usize = 4096;

fn cli(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(dcr_attest())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn seal(dir: &Path, input: &str, out: &str, dek: &str, chunk: usize) {
    let o = cli(
        dir,
        &[
            "seal",
            "--in",
            input,
            "--out",
            out,
            "--key-id",
            "k1",
            "--dek-out",
            dek,
            "--chunk-size",
            &chunk.to_string(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn round_trips_at_the_chunk_edges() {
    let t = TempDir::new("sealed-edges");
    let d = t.path();
    for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 17] {
        let pt: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8).collect();
        let (p, s, k, o) = (
            format!("p{len}"),
            format!("s{len}"),
            format!("k{len}"),
            format!("o{len}"),
        );
        std::fs::write(d.join(&p), &pt).unwrap();
        seal(d, &p, &s, &k, CHUNK);
        let sealed = std::fs::read(d.join(&s)).unwrap();
        // header 24 + key id 2, one 16-byte tag per chunk (the last is always short).
        assert_eq!(sealed.len(), 26 + len + 16 * (len / CHUNK + 1), "len {len}");
        let r = cli(d, &["open", "--in", &s, "--out", &o, "--dek", &k]);
        assert!(r.status.success(), "{}", stderr(&r));
        assert_eq!(std::fs::read(d.join(&o)).unwrap(), pt, "len {len}");
    }
}

#[test]
fn tampering_truncation_and_reordering_are_detected() {
    let t = TempDir::new("sealed-tamper");
    let d = t.path();
    let pt: Vec<u8> = (0..3 * CHUNK + 100).map(|i| (i % 253) as u8).collect();
    std::fs::write(d.join("p"), &pt).unwrap();
    seal(d, "p", "s", "k", CHUNK);
    let sealed = std::fs::read(d.join("s")).unwrap();
    let h = 26;
    let c = CHUNK + 16;
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    let flip = |i: usize| {
        let mut v = sealed.clone();
        v[i] ^= 1;
        v
    };
    cases.push(("magic", flip(0), "magic"));
    cases.push(("version", flip(9), "version"));
    cases.push(("algorithm", flip(11), "algorithm"));
    cases.push(("chunk size", flip(14), "chunk"));
    cases.push(("nonce prefix", flip(18), "failed authentication"));
    cases.push(("key id", flip(25), "sealed under key"));
    cases.push((
        "chunk 1 byte",
        flip(h + c + 5),
        "chunk 1 failed authentication",
    ));
    cases.push((
        "tag of the last chunk",
        flip(sealed.len() - 1),
        "chunk 3 failed authentication",
    ));
    let mut swapped = sealed.clone();
    swapped[h..h + c].copy_from_slice(&sealed[h + c..h + 2 * c]);
    swapped[h + c..h + 2 * c].copy_from_slice(&sealed[h..h + c]);
    cases.push(("reordered chunks", swapped, "chunk 0 failed authentication"));
    cases.push((
        "truncated at a chunk boundary",
        sealed[..h + 3 * c].to_vec(),
        "without its final chunk",
    ));
    cases.push((
        "truncated inside a chunk",
        sealed[..h + c + 100].to_vec(),
        "chunk 1 failed authentication",
    ));
    let mut longer = sealed.clone();
    longer.extend_from_slice(&[0u8; 16]);
    cases.push(("appended bytes", longer, "chunk 3 failed authentication"));
    for (i, (what, bytes, want)) in cases.into_iter().enumerate() {
        let (s, o) = (format!("t{i}"), format!("o{i}"));
        std::fs::write(d.join(&s), &bytes).unwrap();
        let r = cli(d, &["open", "--in", &s, "--out", &o, "--dek", "k"]);
        assert_eq!(r.status.code(), Some(2), "{what}: accepted");
        let e = stderr(&r);
        assert!(e.contains(want) && e.lines().count() == 1, "{what}: {e}");
        assert!(
            !d.join(&o).exists() && !d.join(format!("{o}.partial")).exists(),
            "{what}: output left behind"
        );
    }
    // Another DEK for the same key id does not open it.
    seal(d, "p", "s2", "k2", CHUNK);
    let r = cli(d, &["open", "--in", "s", "--out", "ox", "--dek", "k2"]);
    assert!(
        stderr(&r).contains("chunk 0 failed authentication"),
        "{}",
        stderr(&r)
    );
}

#[test]
fn one_gib_round_trips() {
    let t = TempDir::new("sealed-gib");
    let d = t.path();
    // 1 GiB of non-repeating data, written in 1 MiB pieces.
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(d.join("big")).unwrap());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            for w in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                w.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&buf).unwrap();
        }
    }
    let want = dcr_attest::parties::file_sha256(&d.join("big")).unwrap();
    seal(d, "big", "big.sealed", "big.dek", 1 << 20);
    std::fs::remove_file(d.join("big")).unwrap();
    assert_eq!(
        std::fs::metadata(d.join("big.sealed")).unwrap().len(),
        26 + (1 << 30) + 16 * 1025
    );
    let r = cli(
        d,
        &[
            "open",
            "--in",
            "big.sealed",
            "--out",
            "big.out",
            "--dek",
            "big.dek",
        ],
    );
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(
        dcr_attest::parties::file_sha256(&d.join("big.out")).unwrap(),
        want
    );
}

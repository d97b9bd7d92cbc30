//! `nitro-bench eif EIF ITERATIONS`: the EIF build + PCR prediction of issue M, timed in
//! process from the image's own inputs (kernel, command line, metadata and both ramdisks read
//! from files each iteration), beside `sha384sum` over the same input files (one process,
//! the baseline the issue names). Prints the medians and the ratio.
//!
//! `nitro-bench verify SECONDS DOC...`: documents verified per second (strict decoding,
//! chain to the pinned root at the document's time, ES384), in process, per document.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn eif(path: &Path, iterations: usize) {
    use dcr_build::eif::{Eif, SectionType};
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let e = Eif::parse(&b).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dir = std::env::temp_dir().join(format!("dcr-nitro-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, data: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    };
    let kernel = write("kernel", e.data(&b, SectionType::Kernel)[0]);
    let cmdline = write("cmdline", e.data(&b, SectionType::Cmdline)[0]);
    let metadata = write("metadata.json", e.data(&b, SectionType::Metadata)[0]);
    let rd = e.data(&b, SectionType::Ramdisk);
    let r0 = write("r0.cpio", rd[0]);
    let r1 = write("r1.cpio", rd[1]);
    let mut ours = Vec::new();
    let mut base = Vec::new();
    let mut size = 0;
    for _ in 0..iterations {
        let t = Instant::now();
        let k = std::fs::read(&kernel).unwrap();
        let c = String::from_utf8(std::fs::read(&cmdline).unwrap()).unwrap();
        let m: dcr_build::eif::Metadata =
            serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
        let a = std::fs::read(&r0).unwrap();
        let z = std::fs::read(&r1).unwrap();
        let img = dcr_build::eif::write(&dcr_build::eif::EifInputs {
            kernel: &k,
            cmdline: &c,
            metadata: &m,
            ramdisks: vec![&a, &z],
            memory_mib: e.header.default_mem.get() / (1024 * 1024),
            cpus: e.header.default_cpus.get(),
            arm64: false,
            signer: None,
        })
        .unwrap();
        let p = dcr_measure::nitro::pcrs(&k, c.as_bytes(), &[&a, &z], None);
        ours.push(t.elapsed());
        assert!(img == b, "the rebuilt EIF differs from {}", path.display());
        size = img.len();
        std::hint::black_box(p);
        let t = Instant::now();
        let o = Command::new("sha384sum")
            .args([&kernel, &cmdline, &r0, &r1])
            .output()
            .expect("sha384sum");
        base.push(t.elapsed());
        assert!(o.status.success());
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (o, s) = (median(ours), median(base));
    println!(
        "eif bytes={size} iterations={iterations} dcr_eif_and_pcrs_ms={:.1} sha384sum_ms={:.1} ratio={:.2}",
        o.as_secs_f64() * 1e3,
        s.as_secs_f64() * 1e3,
        o.as_secs_f64() / s.as_secs_f64()
    );
}

fn verify(seconds: f64, docs: &[String]) {
    let policy = dcr_verify::nitro::NitroPolicy {
        allow_debug: true,
        ..Default::default()
    };
    for d in docs {
        let b = std::fs::read(d).unwrap_or_else(|e| panic!("{d}: {e}"));
        let at = dcr_verify::nitro::document_time(&dcr_verify::nitro::parse(&b).unwrap().doc);
        assert!(dcr_verify::nitro::verify(&b, at, &policy).0.ok(), "{d}");
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed().as_secs_f64() < seconds {
            std::hint::black_box(dcr_verify::nitro::verify(&b, at, &policy));
            n += 1;
        }
        let name = Path::new(d).file_name().unwrap().to_string_lossy();
        println!(
            "verify doc={name} per_second={:.1}",
            n as f64 / t.elapsed().as_secs_f64()
        );
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(String::as_str) {
        Some("eif") if a.len() == 4 => eif(Path::new(&a[2]), a[3].parse().expect("ITERATIONS")),
        Some("verify") if a.len() >= 4 => verify(a[2].parse().expect("SECONDS"), &a[3..]),
        _ => {
            eprintln!("usage: nitro-bench eif EIF ITERATIONS | verify SECONDS DOC...");
            std::process::exit(2);
        }
    }
}

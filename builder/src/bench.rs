//! `dcr-build bench`: time pack + measure of a recipe from already-built inputs, against
//! `sha256sum` over the same input bytes, in the same run.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::image::{self, ImageError, Prepared};

/// One benchmark result.
#[derive(Debug, Clone)]
pub struct BenchResult {
    pub iterations: u32,
    pub input_bytes: u64,
    pub initrd_bytes: u64,
    pub uki_bytes: u64,
    /// Median wall time of pack + reference values.
    pub pack_measure: Duration,
    /// Median wall time of `sha256sum` over the concatenated inputs.
    pub sha256sum: Duration,
    /// Median wall time of `openssl dgst -sha256` over the same file (None if not installed).
    pub openssl: Option<Duration>,
    /// Median wall time of an in-process SHA-256 (sha2 crate) over the same bytes.
    pub in_process: Duration,
}

impl BenchResult {
    pub fn ratio(&self) -> f64 {
        self.pack_measure.as_secs_f64() / self.sha256sum.as_secs_f64()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Every input byte that goes into the image, concatenated.
pub fn input_bytes(p: &Prepared) -> Vec<u8> {
    let i = &p.pack;
    let mut all = Vec::new();
    all.extend_from_slice(&i.kernel);
    for m in &i.modules {
        all.extend_from_slice(&m.bytes);
    }
    all.extend_from_slice(&i.stub);
    all.extend_from_slice(&i.contract);
    all.extend_from_slice(&i.guest_init);
    for (_, w) in &i.workloads {
        all.extend_from_slice(w);
    }
    all.extend_from_slice(i.cmdline.as_bytes());
    all
}

/// Run the benchmark on prepared inputs; `scratch` holds the file sha256sum reads.
pub fn run(p: &Prepared, iterations: u32, scratch: &Path) -> Result<BenchResult, ImageError> {
    let io = |source| ImageError::Output {
        path: scratch.to_path_buf(),
        source,
    };
    let all = input_bytes(p);
    let file = scratch.join("dcr-bench-inputs.bin");
    std::fs::File::create(&file)
        .and_then(|mut f| f.write_all(&all))
        .map_err(io)?;
    let mut packs = Vec::new();
    let mut sums = Vec::new();
    let mut ossl = Vec::new();
    let mut inproc = Vec::new();
    let openssl_ok = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut sizes = (0, 0);
    for _ in 0..iterations.max(1) {
        let t = Instant::now();
        let packed = image::pack(&p.pack)?;
        let m = image::reference_values(p, &packed)?;
        let json = m.to_canonical_json()?;
        packs.push(t.elapsed());
        std::hint::black_box(json);
        sizes = (packed.initrd.len() as u64, packed.uki.len() as u64);

        let t = Instant::now();
        let st = Command::new("sha256sum")
            .arg(&file)
            .stdout(Stdio::null())
            .status()
            .map_err(io)?;
        sums.push(t.elapsed());
        if !st.success() {
            return Err(io(std::io::Error::other("sha256sum failed")));
        }
        if openssl_ok {
            let t = Instant::now();
            Command::new("openssl")
                .args(["dgst", "-sha256"])
                .arg(&file)
                .stdout(Stdio::null())
                .status()
                .map_err(io)?;
            ossl.push(t.elapsed());
        }
        let t = Instant::now();
        std::hint::black_box(crate::fetch::sha256(&all));
        inproc.push(t.elapsed());
    }
    let _ = std::fs::remove_file(&file);
    Ok(BenchResult {
        iterations: iterations.max(1),
        input_bytes: all.len() as u64,
        initrd_bytes: sizes.0,
        uki_bytes: sizes.1,
        pack_measure: median(packs),
        sha256sum: median(sums),
        openssl: (!ossl.is_empty()).then(|| median(ossl)),
        in_process: median(inproc),
    })
}

//! Helpers for the end-to-end tests in `tests/tests/`: locating (and building) the dcr-build
//! binary, building the reference recipe once per test binary, temporary directories, and the
//! rule for missing system tools (fail under CI, skip with a printed reason elsewhere).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The reference recipe directory.
pub fn reference_recipe() -> PathBuf {
    workspace().join("images/clean-room")
}

/// Path of a release binary of the workspace, built once if needed (`env` overrides).
fn release_bin(cell: &'static OnceLock<PathBuf>, env: &str, package: &str) -> PathBuf {
    cell.get_or_init(|| {
        if let Some(p) = std::env::var_os(env) {
            return PathBuf::from(p);
        }
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--locked", "--release", "-q", "-p", package])
            .current_dir(workspace())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p {package} failed");
        workspace().join("target/release").join(package)
    })
    .clone()
}

/// Path of a release dcr-build (`DCR_BUILD_BIN` overrides).
pub fn dcr_build() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    release_bin(&BIN, "DCR_BUILD_BIN", "dcr-build")
}

/// Run dcr-build with `args` from the workspace root.
pub fn run_dcr_build(args: &[&str]) -> Output {
    Command::new(dcr_build())
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("start dcr-build")
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("dcr-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Are these programs on PATH? If not: panic under CI (a fresh CI machine must have them,
/// `.ci/run` installs them), otherwise print why the test is skipped and return false.
pub fn require_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{test}: required tools missing under CI: {}",
            missing.join(", ")
        );
    }
    eprintln!(
        "SKIP {test}: tools missing: {} (run tests/setup.sh)",
        missing.join(", ")
    );
    false
}

/// Build the reference recipe once per test binary; returns the output directory.
pub fn reference_build() -> PathBuf {
    static OUT: OnceLock<PathBuf> = OnceLock::new();
    OUT.get_or_init(|| {
        let out = std::env::temp_dir().join(format!("dcr-test-reference-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let o = run_dcr_build(&[
            "image",
            reference_recipe().to_str().expect("utf-8 path"),
            "--out",
            out.to_str().expect("utf-8 path"),
        ]);
        assert!(
            o.status.success(),
            "reference build failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    })
    .clone()
}

/// The reference recipe text with its relative paths made absolute and its crate workload
/// replaced by a file workload, so that it can be copied to a temporary directory.
pub fn portable_recipe(workload_file: &Path, workload_sha256: &str) -> String {
    let dir = reference_recipe();
    let text = std::fs::read_to_string(dir.join("image.toml")).expect("read reference recipe");
    let contract = dir.join("contract.toml");
    let text = text.replace(
        "contract = \"contract.toml\"",
        &format!("contract = \"{}\"", contract.display()),
    );
    let text = text.replace(
        "crate = \"workloads/overlap\"",
        &format!(
            "file = \"{}\"\nsha256 = \"{workload_sha256}\"",
            workload_file.display()
        ),
    );
    assert!(text.contains("file = "), "reference recipe changed shape");
    text
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The shared fixtures directory (`DCR_FIXTURES`, else `../shared/fixtures`). Missing: panic
/// under CI, otherwise print why and return None.
pub fn fixtures(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("DCR_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared/fixtures"));
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{test}: fixtures directory {} missing under CI",
            dir.display()
        );
    }
    eprintln!(
        "SKIP {test}: fixtures directory {} missing (set DCR_FIXTURES)",
        dir.display()
    );
    None
}

/// The sev-snp-measure 0.0.13 that reproducible/setup.sh installs (`DCR_SEV_SNP_MEASURE`
/// overrides). Missing: panic under CI, otherwise print why and return None.
pub fn sev_snp_measure(test: &str) -> Option<PathBuf> {
    let p = std::env::var_os("DCR_SEV_SNP_MEASURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("DCR_CACHE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("dcr"))
                })
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                        .join(".cache/dcr")
                });
            cache.join("sev-snp-measure-0.0.13/bin/sev-snp-measure")
        });
    if p.is_file() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{test}: {} missing under CI (reproducible/setup.sh installs it)",
            p.display()
        );
    }
    eprintln!(
        "SKIP {test}: {} missing (run reproducible/setup.sh)",
        p.display()
    );
    None
}

/// Debian's OVMF.fd (ovmf 2022.11-6+deb12u2, the package vectors.json names, pinned by the
/// .deb SHA-256 given there), fetched by the builder's own pinned-package code.
pub fn debian_ovmf(fixtures: &Path) -> Vec<u8> {
    use dcr_attest::reference::Sha256;
    use dcr_build::{fetch, recipe};
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures.join("measure/vectors.json")).unwrap())
            .unwrap();
    let input = v["snp_derived_debian_ovmf"]["input"].as_str().unwrap();
    let deb_sha = input
        .split("deb sha256 ")
        .nth(1)
        .map(|r| r[..64].to_string())
        .unwrap();
    let pin = recipe::DebPin {
        package: "ovmf".into(),
        version: "2022.11-6+deb12u2".into(),
        sha256: Some(recipe::HexSha256(Sha256::from_hex(&deb_sha).unwrap())),
        suite: None,
    };
    let pkg = fetch::deb_package("ovmf", &pin).expect("fetch ovmf 2022.11-6+deb12u2");
    let mut files = fetch::extract("ovmf", &pkg, |p| p == "usr/share/ovmf/OVMF.fd").unwrap();
    files.remove("usr/share/ovmf/OVMF.fd").unwrap()
}

/// Path of a release dcr-attest (`DCR_ATTEST_BIN` overrides).
pub fn dcr_attest() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    release_bin(&BIN, "DCR_ATTEST_BIN", "dcr-attest")
}

/// Assert a dcr-attest verdict of "accepted" (exit 0).
pub fn accepted(o: &Output) {
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(o), stderr(o));
    assert!(
        stdout(o).trim_end().ends_with("verdict: accepted"),
        "{}",
        stdout(o)
    );
}

/// Assert a dcr-attest verdict of "refused" (exit 1) naming each of `checks` as failed.
pub fn refused_for(o: &Output, checks: &[&str]) {
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(o), stderr(o));
    let text = stdout(o);
    assert!(text.trim_end().ends_with("verdict: refused"), "{text}");
    for c in checks {
        assert!(
            text.contains(&format!("FAIL {c}")),
            "FAIL {c} missing in:\n{text}"
        );
    }
}

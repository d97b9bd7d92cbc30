//! Helpers for the end-to-end tests in `tests/tests/`: locating (and building) the dcr-build
//! binary, building the reference recipe once per test binary, temporary directories, and the
//! rule for missing system tools (fail under CI, skip with a printed reason elsewhere).
#![forbid(unsafe_code)]

pub mod cleanroom;
pub mod load;
pub mod receipts;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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

/// The directory of this binary's profile (`target/<profile>`, whatever profile `cargo test`
/// or `cargo build` was given: `tests/run.sh` uses `ci`); the workspace's binaries built with
/// the same profile are there.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test>-<hash> (tests) or target/<profile>/<bin> (tests/src/bin)
    let dir = exe.parent().expect("a binary has a directory");
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("deps") => dir.parent().expect("deps/ has a parent").to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// Path of a binary of the workspace built with this test binary's profile, built once if
/// needed (`env` overrides).
fn workspace_bin(cell: &'static OnceLock<PathBuf>, env: &str, package: &str) -> PathBuf {
    cell.get_or_init(|| {
        if let Some(p) = std::env::var_os(env) {
            return PathBuf::from(p);
        }
        let dir = profile_dir();
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_string(),
            Some(other) => other.to_string(),
            None => panic!("{}: no profile directory", dir.display()),
        };
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--locked",
                "--profile",
                &profile,
                "-q",
                "-p",
                package,
            ])
            .current_dir(workspace())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p {package} failed");
        dir.join(package)
    })
    .clone()
}

/// Path of dcr-build (`DCR_BUILD_BIN` overrides).
pub fn dcr_build() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    workspace_bin(&BIN, "DCR_BUILD_BIN", "dcr-build")
}

/// Path of dcr-cleanroom-gen (`DCR_GEN_BIN` overrides).
pub fn dcr_cleanroom_gen() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    workspace_bin(&BIN, "DCR_GEN_BIN", "dcr-cleanroom-gen")
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
/// replaced by a file workload, so that it can be copied to a temporary directory; writes a
/// copy of the contract naming that workload's digest beside `workload_file`.
///
/// The SQL engine workload is left out of both (these images test the native workload; the
/// engine has its own tests, tests/tests/cleanroom_sql.rs).
pub fn portable_recipe(workload_file: &Path, workload_sha256: &str) -> String {
    let dir = reference_recipe();
    let text = without_sql_workload(
        &std::fs::read_to_string(dir.join("image.toml")).expect("read reference recipe"),
    );
    // The contract names the workload by digest: a copy beside the workload file names this one.
    let reference = without_sql_workload(
        &std::fs::read_to_string(dir.join("contract.toml")).expect("read contract"),
    );
    let start = reference
        .find("\nsha256 = \"")
        .expect("contract workload digest")
        + 1;
    let end = start + reference[start..].find('\n').unwrap();
    let contract = workload_file.with_file_name("contract.toml");
    std::fs::write(
        &contract,
        format!(
            "{}sha256 = \"{workload_sha256}\"{}",
            &reference[..start],
            &reference[end..]
        ),
    )
    .expect("write contract copy");
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

/// A recipe or contract text without its `[[workloads]]` block named `sql`.
pub fn without_sql_workload(text: &str) -> String {
    let start = text
        .find("[[workloads]]\nname = \"sql\"")
        .expect("the reference has the sql workload");
    let end = text[start..]
        .find("\n\n")
        .map_or(text.len(), |i| start + i + 2);
    format!("{}{}", &text[..start], &text[end..])
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

/// A tool reproducible/setup.sh installs into the dcr cache (`$DCR_CACHE`, else
/// `$XDG_CACHE_HOME/dcr`, else `~/.cache/dcr`) at `rel`; the environment variable `env`
/// overrides. Missing: panic under CI, otherwise print why and return None.
fn cached_tool(test: &str, env: &str, rel: &str) -> Option<PathBuf> {
    let p = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("DCR_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|x| PathBuf::from(x).join("dcr")))
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                    .join(".cache/dcr")
            });
        cache.join(rel)
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

/// The sev-snp-measure 0.0.13 that reproducible/setup.sh installs (`DCR_SEV_SNP_MEASURE`
/// overrides).
pub fn sev_snp_measure(test: &str) -> Option<PathBuf> {
    cached_tool(
        test,
        "DCR_SEV_SNP_MEASURE",
        "sev-snp-measure-0.0.13/bin/sev-snp-measure",
    )
}

/// rust-vmm's vhost-device-vsock 0.3.0 that reproducible/setup.sh installs
/// (`DCR_VHOST_DEVICE_VSOCK` overrides): the userspace virtio-vsock device for QEMU where the
/// host has no /dev/vhost-vsock.
pub fn vhost_device_vsock(test: &str) -> Option<PathBuf> {
    cached_tool(
        test,
        "DCR_VHOST_DEVICE_VSOCK",
        "vhost-device-vsock-0.3.0/bin/vhost-device-vsock",
    )
}

/// Debian's OVMF.fd (ovmf 2022.11-6+deb12u2, the package vectors.json names, pinned by the
/// .deb SHA-256 given there), fetched by the builder's own pinned-package code.
pub fn debian_ovmf(fixtures: &Path) -> Vec<u8> {
    use dcr_build::{fetch, recipe};
    use dcr_protocol::measurements::Sha256;
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

/// The SQL engine as the guest runs it (a host build; `DCR_SQL_ENGINE_BIN` overrides).
pub fn dcr_sql_engine() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    workspace_bin(&BIN, "DCR_SQL_ENGINE_BIN", "dcr-sql-engine")
}

/// Path of dcr-attest (`DCR_ATTEST_BIN` overrides).
pub fn dcr_attest() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    workspace_bin(&BIN, "DCR_ATTEST_BIN", "dcr-attest")
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

/// A running swtpm, killed on drop.
pub struct Swtpm(Child);

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    // Two consecutive free ports (server, control).
    for _ in 0..50 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        drop(l);
        if p < 65000 && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair on loopback");
}

/// Start swtpm on a free loopback port pair with `flags`; returns the guard and the TCTI.
pub fn start_swtpm(state: &Path, flags: &str) -> (Swtpm, String) {
    let port = free_port();
    let child = Command::new("swtpm")
        .args(["socket", "--tpm2", "--flags", flags])
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (Swtpm(child), format!("swtpm:host=127.0.0.1,port={port}"))
}

/// Run a tpm2-tools command against `tcti` in `dir`; panics with its stderr on failure.
pub fn tool(dir: &Path, tcti: &str, args: &[&str]) {
    let o = Command::new(args[0])
        .args(&args[1..])
        .env("TPM2TOOLS_TCTI", tcti)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Manufacture a swtpm state with an EK certificate from a private swtpm-localca (never the
/// machine's /var/lib/swtpm-localca). Returns (state dir, CA dir); the root is
/// `<ca>/swtpm-localca-rootca-cert.pem`, the intermediate `<ca>/issuercert.pem`.
pub fn swtpm_with_ek_cert(d: &Path) -> (PathBuf, PathBuf) {
    let (ca, state) = (d.join("ca"), d.join("state"));
    std::fs::create_dir_all(&ca).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    // A private swtpm-localca (never the machine's /var/lib/swtpm-localca).
    std::fs::write(
        d.join("localca.conf"),
        format!(
            "statedir = {c}\nsigningkey = {c}/signkey.pem\nissuercert = {c}/issuercert.pem\ncertserial = {c}/certserial\n",
            c = ca.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("setup.conf"),
        format!(
            "create_certs_tool= /usr/bin/swtpm_localca\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = /etc/swtpm-localca.options\nactive_pcr_banks = sha256\n",
            d.join("localca.conf").display()
        ),
    )
    .unwrap();
    let o = Command::new("swtpm_setup")
        .args(["--tpm2", "--create-ek-cert", "--overwrite"])
        .arg("--tpmstate")
        .arg(&state)
        .arg("--config")
        .arg(d.join("setup.conf"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "swtpm_setup: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (state, ca)
}

/// A running `dcr-attest serve`, killed on drop.
pub struct Service {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `dcr-attest serve --listen 127.0.0.1:0 --data-dir <data_dir> <extra>` and wait for
/// its "listening on" line.
pub fn start_service(data_dir: &Path, extra: &[&str]) -> Service {
    use std::io::BufRead;
    let mut child = Command::new(dcr_attest())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("dcr-attest serve starts");
    let out = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("dcr-attest serve printed {line:?}"))
        .to_string();
    Service {
        child,
        url,
        data_dir: data_dir.to_path_buf(),
    }
}

/// A minimal measurements.json whose only prediction is `tpm.pcrs` = `pcrs` (index, hex).
pub fn tpm_reference(pcrs: &[(u32, String)]) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = pcrs
        .iter()
        .map(|(i, v)| (i.to_string(), v.clone().into()))
        .collect();
    serde_json::json!({
        "schema_version": 1, "recipe": "service-test", "recipe_version": "0",
        "source_date_epoch": 0, "kernel_release": "none", "cmdline": "",
        "contract_digest": "00".repeat(32), "guest_target": "none",
        "inputs": {}, "artifacts": {},
        "measurements": {"tpm": {"pcrs": map}},
    })
}

/// The audit log records of a service data dir.
pub fn audit_records(data_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(data_dir.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

/// A contract (TOML) for service tests: one dataset `key_id`, one recipient.
pub fn test_contract(name: &str, key_id: &str, recipient: &str, signing_key: &str) -> String {
    format!(
        r#"version = 1
name = "{name}"
expires = "2099-01-01T00:00:00Z"
platforms = ["tpm"]
parties = [{{ id = "publisher", name = "Publisher" }}]
datasets = [{{ id = "users", owner = "publisher", key_id = "{key_id}", blob = "users.sealed" }}]
network = {{ mode = "static", address = "10.0.2.15/24", gateway = "10.0.2.2" }}
[[workloads]]
name = "overlap"
sha256 = "{w}"
inputs = ["users"]
limits = {{ timeout_secs = 60, cpu_secs = 60, memory_mib = 256, output_mib = 16 }}
[output]
min_group_size = 50
columns = [{{ name = "segment", kind = "label", max_len = 32 }}, {{ name = "count", kind = "count" }}]
blob = "result.sealed"
[[recipients]]
party = "publisher"
hpke_public_key = "{recipient}"
[service]
url = "http://127.0.0.1:1"
signing_key = "{signing_key}"
deadline_secs = 60
"#,
        w = "ab".repeat(32)
    )
}

/// POST JSON; returns (status, body).
pub fn post(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut r = agent
        .post(url)
        .header("content-type", "application/json")
        .send(serde_json::to_vec(body).unwrap())
        .unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON response: {text}")),
    )
}

/// TPM2_ActivateCredential with tpm2-tools for the AK `ak.ctx` and the EK `ek.ctx` in `dir`
/// (a policy session satisfying the EK's PolicySecret(endorsement)). The recovered secret, or
/// None if the TPM refuses the credential.
pub fn activate_credential(dir: &Path, tcti: &str, cred: &str) -> Option<Vec<u8>> {
    let run = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .env("TPM2TOOLS_TCTI", tcti)
            .current_dir(dir)
            .output()
            .unwrap()
    };
    let _ = std::fs::remove_file(dir.join("act.out"));
    assert!(run(&[
        "tpm2_startauthsession",
        "--policy-session",
        "-S",
        "session.ctx"
    ])
    .status
    .success());
    assert!(run(&["tpm2_policysecret", "-S", "session.ctx", "-c", "e"])
        .status
        .success());
    let ok = run(&[
        "tpm2_activatecredential",
        "-c",
        "ak.ctx",
        "-C",
        "ek.ctx",
        "-i",
        cred,
        "-o",
        "act.out",
        "-P",
        "session:session.ctx",
    ])
    .status
    .success();
    let _ = run(&["tpm2_flushcontext", "session.ctx"]);
    let _ = run(&["tpm2_flushcontext", "-t"]);
    ok.then(|| std::fs::read(dir.join("act.out")).unwrap())
}

/// xorshift64*: reproducible random test cases (print the seed; `DCR_SEED` reruns one).
pub struct Rng(pub u64);

impl Rng {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max + 1) as usize;
        (0..n).map(|_| self.next() as u8).collect()
    }
}

//! A clean room for the end-to-end tests: a vTPM state with an EK certificate, the
//! key-release service on loopback behind a controllable proxy (the guest talks to the proxy,
//! so a test can make the service unreachable or forge its answers), the parties' keys, and
//! helpers to build an image for a contract, seal/register/upload data, boot, and fetch the
//! result. The main job (images/clean-room/run.sh) does the same steps in shell.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use base64::Engine;

use crate::*;

pub const PASS: u8 = 0;
/// Flip one byte of the signed payload of every successful /v1/attest answer.
pub const FORGE: u8 = 1;
/// Accept connections and close them at once.
pub const DEAD: u8 = 2;

/// An HTTP/1.1 proxy in front of the service (one request per connection).
pub struct Proxy {
    pub port: u16,
    pub mode: Arc<AtomicU8>,
}

fn handle(mut c: TcpStream, upstream: &str, mode: u8) -> std::io::Result<()> {
    if mode == DEAD {
        return Ok(());
    }
    let mut r = BufReader::new(c.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = Vec::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end().to_string();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if k == "content-length" {
                len = v.trim().parse().unwrap_or(0);
            }
            if k == "authorization" || k == "content-type" {
                headers.push((k, v.trim().to_string()));
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let url = format!("{upstream}{path}");
    let resp = match method.as_str() {
        "GET" => {
            let mut q = agent.get(&url);
            for (k, v) in &headers {
                q = q.header(k, v);
            }
            q.call()
        }
        "PUT" => {
            let mut q = agent.put(&url);
            for (k, v) in &headers {
                q = q.header(k, v);
            }
            q.send(&body[..])
        }
        _ => {
            let mut q = agent.post(&url);
            for (k, v) in &headers {
                q = q.header(k, v);
            }
            q.send(&body[..])
        }
    };
    let Ok(mut resp) = resp else { return Ok(()) };
    let status = resp.status().as_u16();
    let mut out = resp
        .body_mut()
        .with_config()
        .limit(1 << 34)
        .read_to_vec()
        .unwrap_or_default();
    if mode == FORGE && path == "/v1/attest" && status == 200 {
        let mut v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut p = b64.decode(v["payload"].as_str().unwrap()).unwrap();
        let last = p.len() - 2;
        p[last] ^= 0x01;
        v["payload"] = b64.encode(p).into();
        out = serde_json::to_vec(&v).unwrap();
    }
    write!(c, "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n", out.len())?;
    c.write_all(&out)?;
    c.flush()
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(PASS));
        let m = mode.clone();
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let (m, u) = (m.load(Ordering::SeqCst), upstream.clone());
                std::thread::spawn(move || {
                    let _ = handle(c, &u, m);
                });
            }
        });
        Proxy { port, mode }
    }

    pub fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

/// The tools a [`Room`] and its boots need.
pub const ROOM_TOOLS: [&str; 5] = [
    "qemu-system-x86_64",
    "swtpm",
    "swtpm_setup",
    "swtpm_localca",
    "certtool",
];

/// Echo the guest's report lines (not the event log) to the test's stderr.
fn echo_guest_lines(console: &str) {
    eprintln!(
        "{}",
        console
            .lines()
            .filter(|l| l.contains("dcr-init:") && !l.contains("eventlog"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

pub struct Room {
    pub dir: PathBuf,
    _tmp: TempDir,
    pub svc: Service,
    pub proxy: Proxy,
    pub tpm_state: PathBuf,
    pub signing_key: String,
    pub publisher_key: String,
    pub advertiser_key: String,
}

fn ok(o: std::process::Output, what: &str) -> std::process::Output {
    assert!(o.status.success(), "{what}: {}{}", stdout(&o), stderr(&o));
    o
}

impl Room {
    pub fn new(tag: &str) -> Room {
        let t = TempDir::new(tag);
        let dir = t.path().to_path_buf();
        let (tpm_state, ca) = swtpm_with_ek_cert(&dir);
        std::fs::write(
            dir.join("tokens"),
            "publisher:publisher-token-0123456789\nadvertiser:advertiser-token-0123456789\n",
        )
        .unwrap();
        std::fs::write(dir.join("publisher.token"), "publisher-token-0123456789\n").unwrap();
        std::fs::write(
            dir.join("advertiser.token"),
            "advertiser-token-0123456789\n",
        )
        .unwrap();
        let root = ca.join("swtpm-localca-rootca-cert.pem");
        let inter = ca.join("issuercert.pem");
        let svc = start_service(
            &dir.join("service"),
            &[
                "--tokens",
                dir.join("tokens").to_str().unwrap(),
                "--tpm-ek-root",
                root.to_str().unwrap(),
                "--tpm-ek-intermediate",
                inter.to_str().unwrap(),
            ],
        );
        let proxy = Proxy::start(&svc.url);
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(svc.data_dir.join("service.pub.json")).unwrap())
                .unwrap();
        let key = |name: &str| {
            let o = ok(
                Command::new(dcr_attest())
                    .args(["keygen", "--out-dir"])
                    .arg(&dir)
                    .args(["--name", name])
                    .output()
                    .unwrap(),
                "keygen",
            );
            stdout(&o).trim().to_string()
        };
        Room {
            publisher_key: key("publisher"),
            advertiser_key: key("advertiser"),
            signing_key: info["signing_key"].as_str().unwrap().to_string(),
            dir,
            _tmp: t,
            svc,
            proxy,
            tpm_state,
        }
    }

    /// The reference contract with this room's keys and service (through the proxy), a 20 s
    /// service deadline, key ids and blob names suffixed with `tag`, then `edit`.
    pub fn contract(&self, tag: &str, edit: impl Fn(String) -> String) -> PathBuf {
        self.contract_from(&reference_recipe().join("contract.toml"), tag, edit)
    }

    /// [`Room::contract`] starting from another contract with the reference one's parties,
    /// datasets, recipients and service.
    pub fn contract_from(
        &self,
        template: &Path,
        tag: &str,
        edit: impl Fn(String) -> String,
    ) -> PathBuf {
        let text = std::fs::read_to_string(template).unwrap();
        let mut n = 0;
        let mut out = String::new();
        for l in text.lines() {
            let l = if l.starts_with("hpke_public_key = ") {
                n += 1;
                format!(
                    "hpke_public_key = \"{}\"",
                    if n == 1 {
                        &self.publisher_key
                    } else {
                        &self.advertiser_key
                    }
                )
            } else if l.starts_with("url = ") {
                format!("url = \"http://10.0.2.2:{}\"", self.proxy.port)
            } else if l.starts_with("signing_key = ") {
                format!("signing_key = \"{}\"", self.signing_key)
            } else if l.starts_with("deadline_secs = ") {
                "deadline_secs = 20".into()
            } else if l.starts_with("key_id = ") || l.starts_with("blob = ") {
                l.replacen("-1\"", &format!("-{tag}\""), 1).replacen(
                    ".sealed\"",
                    &format!("-{tag}.sealed\""),
                    1,
                )
            } else {
                l.to_string()
            };
            out.push_str(&l);
            out.push('\n');
        }
        let path = self.dir.join(format!("contract-{tag}.toml"));
        std::fs::write(&path, edit(out)).unwrap();
        path
    }

    /// dcr-build image with `contract`; returns the output directory.
    pub fn build(&self, contract: &Path, tag: &str) -> PathBuf {
        self.build_recipe(&reference_recipe(), contract, tag)
    }

    /// dcr-build image of `recipe` with `contract`; returns the output directory.
    pub fn build_recipe(&self, recipe: &Path, contract: &Path, tag: &str) -> PathBuf {
        let out = self.dir.join(format!("image-{tag}"));
        ok(
            Command::new(dcr_build())
                .arg("image")
                .arg(recipe)
                .arg("--contract")
                .arg(contract)
                .arg("--out")
                .arg(&out)
                .current_dir(workspace())
                .output()
                .unwrap(),
            "dcr-build image",
        );
        out
    }

    /// Generate both datasets (`rows`, `seed`) into `data-<tag>/`.
    pub fn data(&self, tag: &str, rows: u64, seed: u64) -> PathBuf {
        self.data_with(tag, rows, seed, &[])
    }

    /// [`Room::data`] with extra generator arguments (`--parquet`).
    pub fn data_with(&self, tag: &str, rows: u64, seed: u64, extra: &[&str]) -> PathBuf {
        let d = self.dir.join(format!("data-{tag}"));
        ok(
            Command::new(dcr_cleanroom_gen())
                .args([
                    "--seed",
                    &seed.to_string(),
                    "--rows",
                    &rows.to_string(),
                    "--out-dir",
                ])
                .arg(&d)
                .args(extra)
                .output()
                .unwrap(),
            "generator",
        );
        d
    }

    /// Run dcr-attest in the room's directory.
    pub fn attest(&self, args: &[&str]) -> std::process::Output {
        Command::new(dcr_attest())
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap()
    }

    /// Seal, register (reference values of `image`) and upload both parties' data for the
    /// contract with `tag`.
    pub fn provide(&self, tag: &str, data: &Path, image: &Path) {
        self.provide_ext(tag, data, image, "csv")
    }

    /// [`Room::provide`] of `<party>.<ext>` (`csv` or `parquet`).
    pub fn provide_ext(&self, tag: &str, data: &Path, image: &Path, ext: &str) {
        let contract = format!("contract-{tag}.toml");
        for (party, key_id, blob) in [
            ("publisher", "publisher-segments", "publisher-segments"),
            (
                "advertiser",
                "advertiser-conversions",
                "advertiser-conversions",
            ),
        ] {
            let (key_id, blob) = (format!("{key_id}-{tag}"), format!("{blob}-{tag}.sealed"));
            let sealed = format!("{party}-{tag}.sealed");
            let dek = format!("{party}-{tag}.dek");
            let input = data.join(format!("{party}.{ext}"));
            ok(
                self.attest(&[
                    "seal",
                    "--in",
                    input.to_str().unwrap(),
                    "--out",
                    &sealed,
                    "--key-id",
                    &key_id,
                    "--dek-out",
                    &dek,
                ]),
                "seal",
            );
            let reference = image.join("measurements.json");
            let pubf = self.svc.data_dir.join("service.pub.json");
            ok(
                self.attest(&[
                    "register",
                    "--service",
                    &self.svc.url,
                    "--service-pub",
                    pubf.to_str().unwrap(),
                    "--token-file",
                    &format!("{party}.token"),
                    "--dek",
                    &dek,
                    "--contract",
                    &contract,
                    "--reference",
                    reference.to_str().unwrap(),
                    "--platform",
                    "tpm",
                ]),
                "register",
            );
            ok(
                self.attest(&[
                    "put",
                    "--service",
                    &self.svc.url,
                    "--token-file",
                    &format!("{party}.token"),
                    "--contract",
                    &contract,
                    "--name",
                    &blob,
                    "--in",
                    &sealed,
                ]),
                "put",
            );
        }
    }

    /// Boot `image` (UEFI, swtpm from this room's EK-certified state, NIC): (exit code, console).
    pub fn boot(&self, image: &Path) -> (Option<i32>, String) {
        self.boot_mode(image, "uefi")
    }

    /// Boot `image` with `dcr-build run --mode <mode>` (uefi, vhd, raw), otherwise as
    /// [`Room::boot`].
    pub fn boot_mode(&self, image: &Path, mode: &str) -> (Option<i32>, String) {
        self.boot_with(image, mode, &[])
    }

    /// [`Room::boot_mode`] with extra `dcr-build run` arguments.
    pub fn boot_with(&self, image: &Path, mode: &str, extra: &[&str]) -> (Option<i32>, String) {
        let o = Command::new(dcr_build())
            .arg("run")
            .arg(image)
            .args([
                "--mode",
                mode,
                "--net",
                "--timeout",
                "600",
                "--memory",
                "1024",
                "--tpm-state",
            ])
            .arg(&self.tpm_state)
            .args(extra)
            .output()
            .unwrap();
        let console = stdout(&o);
        echo_guest_lines(&console);
        (o.status.code(), console)
    }

    /// Boot `image` (UEFI, swtpm) with **no NIC**: a virtio-vsock device backed by
    /// vhost-device-vsock (`vhost`), whose host side for port `port` is
    /// `dcr-attest vsock-proxy --unix <dir>/vsock_<port> --to <this room's proxy>`. The image's
    /// contract must say `network = {mode = "vsock", cid = 2, port}`. Returns (exit code,
    /// console, the vsock-proxy's log).
    pub fn boot_vsock(
        &self,
        image: &Path,
        port: u32,
        vhost: &Path,
    ) -> (Option<i32>, String, String) {
        let uds = self.dir.join("vsock");
        let listen = self.dir.join(format!("vsock_{port}"));
        let log = self.dir.join(format!("vsock-proxy-{port}.log"));
        let mut proxy = Command::new(dcr_attest())
            .arg("vsock-proxy")
            .arg("--unix")
            .arg(&listen)
            .arg("--to")
            .arg(format!("http://127.0.0.1:{}", self.proxy.port))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let t = std::time::Instant::now();
        while !listen.exists() {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(20),
                "vsock-proxy never listened at {}",
                listen.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let o = Command::new(dcr_build())
            .arg("run")
            .arg(image)
            .args(["--mode", "uefi", "--timeout", "600", "--memory", "1024"])
            .arg("--tpm-state")
            .arg(&self.tpm_state)
            .args(["--vsock", "--vsock-uds"])
            .arg(&uds)
            .arg("--vhost-device-vsock")
            .arg(vhost)
            .output()
            .unwrap();
        let _ = proxy.kill();
        let _ = proxy.wait();
        let console = stdout(&o);
        echo_guest_lines(&console);
        eprintln!("dcr-build run stderr: {}", stderr(&o));
        (
            o.status.code(),
            console,
            std::fs::read_to_string(&log).unwrap_or_default(),
        )
    }

    /// The contract files of this room (`contract-<tag>.toml`) that declare blob `name`.
    pub fn contracts_of_blob(&self, name: &str) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for e in std::fs::read_dir(&self.dir).unwrap() {
            let p = e.unwrap().path();
            let f = p.file_name().unwrap().to_string_lossy().into_owned();
            if !(f.starts_with("contract-") && f.ends_with(".toml")) {
                continue;
            }
            let c =
                dcr_protocol::contract::Contract::from_toml(&std::fs::read_to_string(&p).unwrap())
                    .unwrap();
            if c.output.blob == name || c.datasets.iter().any(|d| d.blob == name) {
                found.push(p);
            }
        }
        assert!(
            !found.is_empty(),
            "no contract in {} declares blob {name}",
            self.dir.display()
        );
        found.sort();
        found
    }

    /// The contract of this room that declares blob `name` (exactly one).
    pub fn contract_of_blob(&self, name: &str) -> PathBuf {
        let mut found = self.contracts_of_blob(name);
        assert_eq!(
            found.len(),
            1,
            "several contracts declare blob {name}: {found:?}"
        );
        found.remove(0)
    }

    /// The blob `name` opened with the recipient key `party`.key (its proof checked against
    /// the contract it was stored under), or None if no contract that declares it has it.
    pub fn result(&self, name: &str, party: &str) -> Option<Vec<u8>> {
        let sealed = self.dir.join(format!("{name}.{party}.fetched"));
        let mut hit = None;
        for contract in self.contracts_of_blob(name) {
            let _ = std::fs::remove_file(&sealed);
            let o = self.attest(&[
                "get",
                "--service",
                &self.svc.url,
                "--contract",
                contract.to_str().unwrap(),
                "--name",
                name,
                "--out",
                sealed.to_str().unwrap(),
            ]);
            if o.status.success() {
                hit = Some(contract);
                break;
            }
            assert!(stderr(&o).contains("not_found"), "{}", stderr(&o));
        }
        let contract = hit?;
        let out = self.dir.join(format!("{name}.{party}.csv"));
        let _ = std::fs::remove_file(&out);
        ok(
            self.attest(&[
                "open",
                "--in",
                sealed.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--key",
                &format!("{party}.key"),
                "--contract",
                contract.to_str().unwrap(),
            ]),
            "open",
        );
        Some(std::fs::read(out).unwrap())
    }

    /// The service's stored blob file (to play an untrusted object store).
    pub fn blob_path(&self, name: &str) -> PathBuf {
        let c = dcr_protocol::contract::Contract::from_toml(
            &std::fs::read_to_string(self.contract_of_blob(name)).unwrap(),
        )
        .unwrap();
        self.svc
            .data_dir
            .join("blobs")
            .join(hex::encode(c.digest()))
            .join(name)
    }
}

/// The reason guest-init printed before powering off with an error.
pub fn power_off_reason(console: &str) -> Option<String> {
    console
        .lines()
        .find_map(|l| l.split("dcr-init: power-off status=error reason=").nth(1))
        .map(|r| r.trim_matches('"').to_string())
}

/// The expected aggregates, computed here independently of the workload: per segment, the
/// number of publisher users the advertiser also has, and how many of those converted;
/// segments under `k` dropped; CSV sorted by segment.
pub fn expected_result(data: &Path, k: u64) -> String {
    use std::collections::{BTreeMap, HashMap};
    let adv = std::fs::read_to_string(data.join("advertiser.csv")).unwrap();
    let conv: HashMap<&str, bool> = adv
        .lines()
        .skip(1)
        .map(|l| {
            let (u, c) = l.split_once(',').unwrap();
            (u, c == "1")
        })
        .collect();
    let publ = std::fs::read_to_string(data.join("publisher.csv")).unwrap();
    let mut seg: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for l in publ.lines().skip(1) {
        let (u, s) = l.split_once(',').unwrap();
        let e = seg.entry(s).or_default();
        if let Some(c) = conv.get(u) {
            e.0 += 1;
            e.1 += u64::from(*c);
        }
    }
    let mut out = String::from("segment,overlap,conversions\n");
    for (s, (o, c)) in seg {
        if o >= k {
            out.push_str(&format!("{s},{o},{c}\n"));
        }
    }
    out
}

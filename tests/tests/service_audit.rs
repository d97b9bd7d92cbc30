//! The service's data dir after accidents, through the real `dcr-attest serve`:
//! - a full disk under the audit log: requests fail while it is full (nothing acknowledged),
//!   succeed once space is freed, and the service restarts on a valid chain holding exactly
//!   the acknowledged records (needs root for a small tmpfs; skipped with a reason otherwise);
//! - a torn tail left by a crash is moved to `audit.log.torn-1` at start, not a refusal to run;
//! - `.tmp-*` blob files of an upload cut short by a kill are removed at start.

use std::io::Write;
use std::path::Path;

use dcr_tests::*;
use sha2::Digest;

/// An audited refusal (unknown session): one record per acknowledged answer.
fn refusal(svc: &Service, i: usize) -> (u16, serde_json::Value) {
    post(
        &format!("{}/v1/attest", svc.url),
        &serde_json::json!({
            "session_id": format!("{i:032x}"), "tee": "snp",
            "hpke_public_key": format!("x25519:{}", "11".repeat(32)),
            "result_key": format!("ed25519:{}", "22".repeat(32)),
            "contract_digest": "00".repeat(32), "evidence": {},
        }),
    )
}

#[test]
fn unfinished_blob_uploads_are_removed_at_start() {
    let t = TempDir::new("blobtmp");
    let data = t.path().join("data");
    std::fs::create_dir_all(data.join("blobs")).unwrap();
    std::fs::write(data.join("blobs/.tmp-0123abcd"), b"half an upload").unwrap();
    std::fs::write(data.join("blobs/kept.sealed"), b"a finished blob").unwrap();
    let _svc = start_service(&data, &[]);
    assert!(!data.join("blobs/.tmp-0123abcd").exists());
    assert!(data.join("blobs/kept.sealed").exists());
}

/// A tmpfs of `size`, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let o = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        if !o.status.success() {
            let why = String::from_utf8_lossy(&o.stderr).trim().to_string();
            if std::env::var_os("CI").is_some() {
                panic!("mount tmpfs: {why}");
            }
            eprintln!("SKIP: cannot mount a tmpfs (needs root): {why}");
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Every record chains to the one before (what the service checks at start).
fn assert_chain(data: &Path) -> usize {
    let text = std::fs::read_to_string(data.join("audit.log")).unwrap();
    let mut prev = "00".repeat(32);
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).expect("audit line is JSON");
        assert_eq!(v["prev"], prev.as_str(), "line {}", i + 1);
        assert_eq!(v["seq"], (i + 1) as u64);
        prev = hex::encode(sha2::Sha256::digest(line.as_bytes()));
        n += 1;
    }
    n
}

#[test]
fn a_full_disk_fails_requests_then_recovers_and_restarts() {
    let t = TempDir::new("fulldisk");
    let Some(fs) = Tmpfs::mount(&t.path().join("fs"), "512k") else {
        return;
    };
    let data = fs.0.join("data");
    let parties = t.path().join("parties");
    std::fs::create_dir_all(&parties).unwrap();
    let (tpm, args) = dcr_tests::load::soft_tpm_service_args(&parties);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let svc = start_service(&data, &args);
    let (digest, signing) =
        dcr_tests::load::setup_service_with_keys(&parties, &svc, &tpm, "full", &[("k1", false)]);
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let release =
        |svc: &Service| dcr_tests::load::release_once(&agent, &svc.url, &tpm, &digest, &signing);
    // Every acknowledged answer has its record: the registration, releases, refusals.
    let mut acked = 1;
    assert_eq!(
        release(&svc),
        Ok(vec!["k1".to_string(), "dcr.upload-token".to_string()])
    );
    acked += 1;
    for i in 0..5 {
        assert_eq!(refusal(&svc, i).0, 403);
        acked += 1;
    }
    // Fill the file system.
    let filler = fs.0.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 512];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let (mut failed, mut failed_releases) = (0, 0);
    for i in 5..300 {
        let (st, r) = refusal(&svc, i);
        match st {
            403 => acked += 1,
            500 => {
                assert!(r["message"].as_str().unwrap().contains("audit log"), "{r}");
                failed += 1;
            }
            _ => panic!("{st} {r}"),
        }
        match release(&svc) {
            Ok(_) => acked += 1,
            Err(code) => {
                assert_eq!(code, "internal");
                failed_releases += 1;
            }
        }
        if failed >= 10 && failed_releases >= 10 {
            break;
        }
    }
    assert!(
        failed >= 10 && failed_releases >= 10,
        "the disk never filled"
    );
    // Space again: requests succeed, store writes included (the store is reopened).
    std::fs::remove_file(&filler).unwrap();
    for i in 1000..1005 {
        assert_eq!(refusal(&svc, i).0, 403);
        acked += 1;
        let r = release(&svc);
        assert!(r.is_ok(), "{r:?}");
        acked += 1;
    }
    assert_eq!(
        assert_chain(&data),
        acked,
        "exactly the acknowledged records"
    );
    // And the service restarts on that log.
    drop(svc);
    let svc = start_service(&data, &args);
    assert!(release(&svc).is_ok());
    assert_eq!(refusal(&svc, 2000).0, 403);
    assert_eq!(assert_chain(&data), acked + 2);
    assert!(!data.join("audit.log.torn-1").exists());
    println!(
        "full disk: {failed} refusals and {failed_releases} releases answered 500 while full, \
         {acked} acknowledged records, chain valid after restart"
    );
    drop(svc);
}

#[test]
fn a_torn_tail_is_quarantined_at_start() {
    let t = TempDir::new("torn");
    let data = t.path().join("data");
    let svc = start_service(&data, &[]);
    for i in 0..3 {
        assert_eq!(refusal(&svc, i).0, 403);
    }
    drop(svc);
    let log = data.join("audit.log");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"{\"seq\":4,\"prev\":\"00garbage\n\x00\x00")
        .unwrap();
    drop(f);
    let svc = start_service(&data, &[]);
    assert_eq!(assert_chain(&data), 3);
    assert_eq!(
        std::fs::read(data.join("audit.log.torn-1")).unwrap(),
        b"{\"seq\":4,\"prev\":\"00garbage\n\x00\x00"
    );
    drop(svc);
}

#[test]
fn a_large_audit_log_restarts_in_bounded_memory() {
    // A flood of refusals grows the log; restarting must not need the log's size in RAM
    // (the review saw 277 MB of RSS for a 277 MB log). 64 MB of chained records here.
    let t = TempDir::new("biglog");
    let data = t.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut f = std::io::BufWriter::new(std::fs::File::create(data.join("audit.log")).unwrap());
    let mut prev = "00".repeat(32);
    let pad = "x".repeat(512);
    let mut written = 0usize;
    let mut seq = 0u64;
    while written < 64 << 20 {
        seq += 1;
        let line = serde_json::json!({
            "seq": seq, "prev": prev, "time": 1, "kind": "release", "decision": "refuse",
            "code": "bad_request", "message": pad,
        })
        .to_string();
        f.write_all(line.as_bytes()).unwrap();
        f.write_all(b"\n").unwrap();
        prev = hex::encode(sha2::Sha256::digest(line.as_bytes()));
        written += line.len() + 1;
    }
    drop(f);
    let svc = start_service(&data, &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", svc.child.id())).unwrap();
    let hwm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    println!(
        "restart over a {} MB log of {seq} records: peak RSS {} MB",
        written >> 20,
        hwm_kb >> 10
    );
    assert!(
        hwm_kb < 48 << 10,
        "peak RSS {hwm_kb} kB for a {written}-byte log"
    );
    assert_eq!(assert_chain(&data), seq as usize);
}

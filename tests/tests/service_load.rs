//! The key-release service under load and under kill -9, with TPM-format evidence from a
//! software AK (pinned with --tpm-ak; see tests/src/load.rs for why not swtpm).
//! - load: 64 concurrent clients doing challenge + attest + release; every round gets its key,
//!   no errors (timing is reported by `release-load`, never asserted);
//! - durability: kill -9 during a burst of registrations and releases; after restart every
//!   acknowledged registration is there, the audit log parses and chains to its end, and the
//!   single-use key was released at most once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use dcr_tests::load::*;
use dcr_tests::*;

#[test]
fn sixty_four_concurrent_clients_all_get_their_keys() {
    let t = TempDir::new("service-load");
    let d = t.path();
    let (tpm, args) = soft_tpm_service_args(d);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let svc = start_service(&d.join("svc"), &args);
    let (cd, signing) =
        setup_service_with_keys(d, &svc, &tpm, "load", &[("k1", false), ("k2", false)]);
    let stats = run_load(&svc.url, 64, 8, &tpm, &cd, &signing);
    assert!(
        stats.errors.is_empty(),
        "{:?}",
        &stats.errors[..stats.errors.len().min(5)]
    );
    assert!(
        stats.refused.is_empty(),
        "{:?}",
        &stats.refused[..stats.refused.len().min(5)]
    );
    assert_eq!(stats.ok, 512);
    eprintln!(
        "load: {} releases in {:.2}s = {:.0}/s, p50 {:?}, p99 {:?}",
        stats.ok,
        stats.wall.as_secs_f64(),
        stats.ok as f64 / stats.wall.as_secs_f64(),
        stats.percentile(0.5),
        stats.percentile(0.99)
    );
    // One audit record per decision.
    let releases = audit_records(&svc.data_dir)
        .iter()
        .filter(|r| r["decision"] == "release")
        .count();
    assert_eq!(releases, 512);
    // A quote from an AK that is not pinned is refused.
    let other = SoftTpm::new(8, tpm.pcrs.clone());
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    assert_eq!(
        release_once(&agent, &svc.url, &other, &cd, &signing),
        Err("ak_untrusted".into())
    );
}

#[test]
fn kill_9_loses_no_acknowledged_registration_and_never_releases_a_single_use_key_twice() {
    let t = TempDir::new("service-kill9");
    let d = t.path();
    let (tpm, args) = soft_tpm_service_args(d);
    let data = d.join("svc");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut svc = start_service(&data, &args);
    // Contract "once": a single-use key; contract "many": keys registered during the burst.
    let (once_cd, signing) = setup_service_with_keys(d, &svc, &tpm, "once", &[("once-1", true)]);
    let (many_cd0, _) = setup_service_with_keys(d, &svc, &tpm, "many", &[("many-0", false)]);
    // The service registers only a contract's own dataset keys, owned by the registering
    // party: each registration under load comes with its own contract (the "many" contract
    // with that key as its dataset's).
    let many = dcr_protocol::contract::Contract::from_toml(
        &std::fs::read_to_string(d.join("many.toml")).unwrap(),
    )
    .unwrap();
    let contract_for = |id: &str| {
        let mut c = many.clone();
        c.datasets[0].key_id = id.to_string();
        (c.canonical_json(), c.digest())
    };
    let stop = AtomicBool::new(false);
    let acked_regs = Mutex::new(Vec::<String>::new());
    let once_released = Mutex::new(0usize);
    let pinned: dcr_protocol::wire::ServiceInfo =
        serde_json::from_slice(&std::fs::read(data.join("service.pub.json")).unwrap()).unwrap();
    let reference: dcr_protocol::measurements::Measurements =
        serde_json::from_value(tpm_reference(
            &tpm.pcrs
                .iter()
                .map(|(i, v)| (*i, hex::encode(v)))
                .collect::<Vec<_>>(),
        ))
        .unwrap();
    let url = svc.url.clone();
    std::thread::scope(|s| {
        // Registrations.
        for w in 0..4 {
            let (stop, acked, url, pinned, reference, contract_for) =
                (&stop, &acked_regs, &url, &pinned, &reference, &contract_for);
            s.spawn(move || {
                let client = dcr_attest::parties::Client::new(url);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("reg-{w}-{n}");
                    n += 1;
                    let dek = dcr_protocol::seal::Dek::generate(&mut rand_core::OsRng);
                    let (canon, cd) = contract_for(&id);
                    let policy = dcr_protocol::wire::ReleasePolicy {
                        contract_digest: hex::encode(cd),
                        platforms: vec![dcr_protocol::wire::Tee::Tpm],
                        reference: reference.clone(),
                        single_use: false,
                        expires: "2099-01-01T00:00:00Z".into(),
                        snp_min_tcb: None,
                        sgx: None,
                    };
                    let reg = dcr_attest::parties::Registration {
                        key_id: &id,
                        owner: "publisher",
                        dek: &dek,
                        policy,
                        contract_canonical: &canon,
                    };
                    match client.register("publisher-token-0123456789", pinned, reg) {
                        Ok(_) => acked.lock().unwrap().push(id),
                        Err(_) => break, // the service died
                    }
                }
            });
        }
        // Releases: the single-use key, and the growing contract.
        for w in 0..8 {
            let (stop, once_released, url, tpm, signing) =
                (&stop, &once_released, &url, &tpm, &signing);
            s.spawn(move || {
                let agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build()
                    .new_agent();
                while !stop.load(Ordering::Relaxed) {
                    let cd = if w % 2 == 0 { &once_cd } else { &many_cd0 };
                    match release_once(&agent, url, tpm, cd, signing) {
                        Ok(ids) => {
                            if ids.iter().any(|k| k == "once-1") {
                                *once_released.lock().unwrap() += 1;
                            }
                        }
                        Err(e) if e.starts_with("transport") => break,
                        Err(_) => {}
                    }
                }
            });
        }
        // Until a few registrations are acknowledged (however slow the machine is), and a bit
        // longer; then kill -9 mid-burst.
        let start = std::time::Instant::now();
        while acked_regs.lock().unwrap().len() <= 5 && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(1000));
        let _ = svc.child.kill();
        let _ = svc.child.wait();
        stop.store(true, Ordering::Relaxed);
    });
    let acked = acked_regs.into_inner().unwrap();
    assert!(
        acked.len() > 5,
        "only {} registrations acknowledged before the kill",
        acked.len()
    );
    assert!(*once_released.lock().unwrap() <= 1);

    // Restart on the same data dir: the log recovers and chains to its end.
    drop(svc);
    let svc = start_service(&data, &args);
    let recs = audit_records(&data);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["seq"], (i + 1) as u64, "record {i}");
    }
    // Every acknowledged registration survived: registering it again is a conflict.
    let client = dcr_attest::parties::Client::new(&svc.url);
    for id in &acked {
        let dek = dcr_protocol::seal::Dek::generate(&mut rand_core::OsRng);
        let (canon, cd) = contract_for(id);
        let policy = dcr_protocol::wire::ReleasePolicy {
            contract_digest: hex::encode(cd),
            platforms: vec![dcr_protocol::wire::Tee::Tpm],
            reference: reference.clone(),
            single_use: false,
            expires: "2099-01-01T00:00:00Z".into(),
            snp_min_tcb: None,
            sgx: None,
        };
        let e = client
            .register(
                "publisher-token-0123456789",
                &pinned,
                dcr_attest::parties::Registration {
                    key_id: id,
                    owner: "publisher",
                    dek: &dek,
                    policy,
                    contract_canonical: &canon,
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("conflict"), "{id}: {e}");
    }
    // The single-use key: at most one release record, and none after the restart.
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    for r in recs.iter().filter(|r| r["decision"] == "release") {
        for k in r["keys"].as_array().unwrap() {
            *per_key.entry(k.as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    assert!(
        per_key.get("once-1").copied().unwrap_or(0) <= 1,
        "{per_key:?}"
    );
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let again = release_once(&agent, &svc.url, &tpm, &once_cd, &signing);
    if per_key.get("once-1").copied().unwrap_or(0) == 1 {
        assert_eq!(again, Err("key_spent".into()));
    }
    eprintln!(
        "kill -9: {} registrations acknowledged and found after restart; {} audit records; once-1 released {} time(s)",
        acked.len(),
        recs.len(),
        per_key.get("once-1").copied().unwrap_or(0)
    );
}

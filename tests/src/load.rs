//! A software TPM for load and durability tests, and the release load generator.
//!
//! `SoftTpm` produces TPM 2.0 quotes in the exact wire format (TPMS_ATTEST +
//! TPMT_SIGNATURE, TPM2 Part 2 §10.12.12 / §11.3.4) signed with an ECDSA P-256 key held in
//! memory; the service trusts it as a pinned AK (`--tpm-ak`). Real-TPM evidence is covered by
//! tests/service_tpm.rs; a swtpm cannot sign thousands of quotes per second on two cores.

use std::time::{Duration, Instant};

use base64::Engine;
use dcr_protocol::keys::{hpke_open, HpkeSecret, SigningPublic, SigningSecret};
use dcr_protocol::release::{release_info, report_data, Signed};
use dcr_protocol::wire::Release;
use p256::ecdsa::{signature::Signer, Signature, SigningKey};
use p256::pkcs8::EncodePublicKey;
use sha2::{Digest, Sha256};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub struct SoftTpm {
    key: SigningKey,
    /// SHA-256 bank values by index.
    pub pcrs: Vec<(u32, [u8; 32])>,
}

impl SoftTpm {
    pub fn new(seed: u8, pcrs: Vec<(u32, [u8; 32])>) -> Self {
        let mut s = [0x42u8; 32];
        s[0] = seed;
        SoftTpm {
            key: SigningKey::from_slice(&s).expect("scalar"),
            pcrs,
        }
    }

    /// A TPM whose AK comes from `seed`, with PCRs 4, 9 and 11 holding 4…, 9…, 11… and PCR 23
    /// holding `pcr23` (what the tests register as the reference image, or another one).
    pub fn standard(seed: u8, pcr23: u8) -> Self {
        SoftTpm::new(
            seed,
            vec![
                (4, [4u8; 32]),
                (9, [9u8; 32]),
                (11, [11u8; 32]),
                (23, [pcr23; 32]),
            ],
        )
    }

    pub fn ak_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(Default::default())
            .expect("pem")
    }

    /// (TPMS_ATTEST, TPMT_SIGNATURE, PCR values in selection order).
    pub fn quote(&self, extra: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let mut m = Vec::new();
        m.extend_from_slice(&0xff54_4347u32.to_be_bytes()); // TPM_GENERATED_VALUE
        m.extend_from_slice(&0x8018u16.to_be_bytes()); // TPM_ST_ATTEST_QUOTE
        m.extend_from_slice(&34u16.to_be_bytes()); // qualifiedSigner
        m.extend_from_slice(&0x000bu16.to_be_bytes());
        m.extend_from_slice(&[0x11; 32]);
        m.extend_from_slice(&(extra.len() as u16).to_be_bytes());
        m.extend_from_slice(extra);
        m.extend_from_slice(&[0u8; 17]); // clockInfo
        m.extend_from_slice(&[0u8; 8]); // firmwareVersion
        m.extend_from_slice(&1u32.to_be_bytes()); // one selection
        m.extend_from_slice(&0x000bu16.to_be_bytes());
        m.push(3);
        let mut bitmap = [0u8; 3];
        let mut sorted = self.pcrs.clone();
        sorted.sort();
        for (i, _) in &sorted {
            bitmap[(*i / 8) as usize] |= 1 << (i % 8);
        }
        m.extend_from_slice(&bitmap);
        let values: Vec<u8> = sorted.iter().flat_map(|(_, v)| *v).collect();
        m.extend_from_slice(&32u16.to_be_bytes());
        m.extend_from_slice(&Sha256::digest(&values));
        let sig: Signature = self.key.sign(&m);
        let (r, s) = sig.split_bytes();
        let mut t = Vec::new();
        t.extend_from_slice(&0x0018u16.to_be_bytes()); // TPM_ALG_ECDSA
        t.extend_from_slice(&0x000bu16.to_be_bytes());
        t.extend_from_slice(&32u16.to_be_bytes());
        t.extend_from_slice(&r);
        t.extend_from_slice(&32u16.to_be_bytes());
        t.extend_from_slice(&s);
        (m, t, values)
    }
}

/// One client's round: challenge, quote, attest, check the signed release and open every key.
/// Returns the released key ids, or the refusal code.
pub fn release_once(
    agent: &ureq::Agent,
    url: &str,
    tpm: &SoftTpm,
    contract_digest: &[u8; 32],
    signing: &SigningPublic,
) -> Result<Vec<String>, String> {
    release_keys(agent, url, tpm, contract_digest, signing)
        .map(|r| r.keys.into_iter().map(|(k, _)| k).collect())
}

/// What a TEE holds after a release: the signed response, every released key (upload token
/// included) and its result-signing key.
pub struct Released {
    pub signed: Signed,
    pub release: Release,
    pub keys: Vec<(String, Vec<u8>)>,
    pub result_key: SigningSecret,
    /// The attest request posted (its evidence) and the challenge's nonce.
    pub request: serde_json::Value,
    pub nonce: Vec<u8>,
}

/// [`release_once`], keeping what was released.
pub fn release_keys(
    agent: &ureq::Agent,
    url: &str,
    tpm: &SoftTpm,
    contract_digest: &[u8; 32],
    signing: &SigningPublic,
) -> Result<Released, String> {
    let post = |path: &str, body: serde_json::Value| -> Result<(u16, serde_json::Value), String> {
        let mut r = agent
            .post(&format!("{url}{path}"))
            .header("content-type", "application/json")
            .send(serde_json::to_vec(&body).unwrap())
            .map_err(|e| format!("transport: {e}"))?;
        let st = r.status().as_u16();
        let text = r
            .body_mut()
            .read_to_string()
            .map_err(|e| format!("transport: {e}"))?;
        let v = serde_json::from_str(&text).map_err(|_| format!("non-JSON: {text}"))?;
        Ok((st, v))
    };
    let (st, ch) = post("/v1/challenge", serde_json::json!({"tee": "tpm"}))?;
    if st != 200 {
        return Err(format!("challenge: {ch}"));
    }
    let sk = HpkeSecret::generate(&mut rand_core::OsRng);
    let pk = sk.public();
    let nonce = hex::decode(ch["nonce"].as_str().unwrap_or_default()).map_err(|e| e.to_string())?;
    let result_key = SigningSecret::generate(&mut rand_core::OsRng);
    let rk = result_key.public();
    let rd = report_data(&nonce, &pk, contract_digest, &rk);
    let (m, s, p) = tpm.quote(&rd);
    let req = serde_json::json!({
        "session_id": ch["session_id"], "tee": "tpm", "hpke_public_key": pk.to_text(),
        "result_key": rk.to_text(),
        "contract_digest": hex::encode(contract_digest),
        "evidence": {"message": B64.encode(m), "signature": B64.encode(s), "pcrs": B64.encode(p),
                     "ak_public": B64.encode(tpm.ak_pem())},
    });
    let (st, body) = post("/v1/attest", req.clone())?;
    if st != 200 {
        return Err(body["code"].as_str().unwrap_or("?").to_string());
    }
    let signed: Signed = serde_json::from_value(body).map_err(|e| e.to_string())?;
    let signed_copy = signed.clone();
    let payload = signed.verify(signing).map_err(|e| e.to_string())?;
    let rel: Release = serde_json::from_slice(&payload).map_err(|e| e.to_string())?;
    let ed: [u8; 32] = hex::decode(&rel.evidence_digest)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or("evidence digest")?;
    let mut ids = Vec::new();
    for k in &rel.keys {
        let info = release_info(&ed, &rel.session_id, &k.key_id, contract_digest);
        let enc = B64.decode(&k.enc).map_err(|e| e.to_string())?;
        let ct = B64.decode(&k.ciphertext).map_err(|e| e.to_string())?;
        let dek =
            hpke_open(&sk, &enc, &info, k.key_id.as_bytes(), &ct).map_err(|e| e.to_string())?;
        if dek.len() != 32 {
            return Err(format!("key {} is {} bytes", k.key_id, dek.len()));
        }
        ids.push((k.key_id.clone(), dek.to_vec()));
    }
    Ok(Released {
        signed: signed_copy,
        release: rel,
        keys: ids,
        result_key,
        request: req,
        nonce,
    })
}

#[derive(Debug, Default)]
pub struct LoadStats {
    pub ok: usize,
    pub refused: Vec<String>,
    pub errors: Vec<String>,
    pub latencies: Vec<Duration>,
    pub wall: Duration,
}

impl LoadStats {
    pub fn percentile(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        if l.is_empty() {
            return Duration::ZERO;
        }
        l[((l.len() as f64 - 1.0) * p).round() as usize]
    }
}

/// `clients` threads, each doing `rounds` challenge + attest + release rounds.
pub fn run_load(
    url: &str,
    clients: usize,
    rounds: usize,
    tpm: &SoftTpm,
    contract_digest: &[u8; 32],
    signing: &SigningPublic,
) -> LoadStats {
    let start = Instant::now();
    let results: Vec<LoadStats> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    let agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(60)))
                        .build()
                        .new_agent();
                    let mut st = LoadStats::default();
                    for _ in 0..rounds {
                        let t = Instant::now();
                        match release_once(&agent, url, tpm, contract_digest, signing) {
                            Ok(_) => st.ok += 1,
                            Err(e) if e.starts_with("transport") || e.contains(' ') => {
                                st.errors.push(e)
                            }
                            Err(code) => st.refused.push(code),
                        }
                        st.latencies.push(t.elapsed());
                    }
                    st
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all = LoadStats::default();
    for r in results {
        all.ok += r.ok;
        all.refused.extend(r.refused);
        all.errors.extend(r.errors);
        all.latencies.extend(r.latencies);
    }
    all.wall = start.elapsed();
    all
}

/// A service with a pinned soft AK, a contract, and `keys` registered for it (key ids
/// `<prefix>-<n>`, the first `single_use` of them single-use). Returns the contract digest and
/// the pinned signing key. `d` holds the parties' files.
pub fn setup_service_with_keys(
    d: &std::path::Path,
    svc: &crate::Service,
    tpm: &SoftTpm,
    contract_name: &str,
    key_ids: &[(&str, bool)],
) -> ([u8; 32], SigningPublic) {
    let signing = service_signing_key(svc);
    let rcpt = HpkeSecret::generate(&mut rand_core::OsRng)
        .public()
        .to_text();
    let mut toml = crate::test_contract(contract_name, key_ids[0].0, &rcpt, &signing);
    // More datasets for the further keys.
    for (k, _) in &key_ids[1..] {
        toml = toml.replace(
            "datasets = [",
            &format!("datasets = [{{ id = \"d-{k}\", owner = \"publisher\", key_id = \"{k}\", blob = \"b-{k}\" }}, "),
        );
    }
    setup_service_with_contract(d, svc, tpm, contract_name, &toml, key_ids)
}

/// The service's signing key as text (`ed25519:<hex>`), from its service.pub.json.
pub fn service_signing_key(svc: &crate::Service) -> String {
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(svc.data_dir.join("service.pub.json")).unwrap())
            .unwrap();
    info["signing_key"].as_str().unwrap().to_string()
}

/// [`setup_service_with_keys`] for a contract of the caller's (`toml`, whose first dataset's
/// key is `key_ids[0]`): writes it, registers every key (empty sealed data) with the TPM's
/// PCRs as the reference. Returns its digest and the service's signing key.
pub fn setup_service_with_contract(
    d: &std::path::Path,
    svc: &crate::Service,
    tpm: &SoftTpm,
    contract_name: &str,
    toml: &str,
    key_ids: &[(&str, bool)],
) -> ([u8; 32], SigningPublic) {
    use std::process::Command;
    let signing = service_signing_key(svc);
    let c = dcr_protocol::contract::Contract::from_toml(toml).unwrap();
    let cpath = d.join(format!("{contract_name}.toml"));
    std::fs::write(&cpath, toml).unwrap();
    let pcrs: Vec<(u32, String)> = tpm.pcrs.iter().map(|(i, v)| (*i, hex::encode(v))).collect();
    let rpath = d.join(format!("{contract_name}.measurements.json"));
    std::fs::write(&rpath, crate::tpm_reference(&pcrs).to_string()).unwrap();
    std::fs::write(d.join("publisher.token"), "publisher-token-0123456789\n").unwrap();
    std::fs::write(d.join("empty"), b"").unwrap();
    for (k, once) in key_ids {
        let dek = d.join(format!("{k}.dek"));
        let _ = std::fs::remove_file(&dek);
        let _ = std::fs::remove_file(d.join(format!("{k}.sealed")));
        let o = Command::new(crate::dcr_attest())
            .args(["seal", "--in"])
            .arg(d.join("empty"))
            .arg("--out")
            .arg(d.join(format!("{k}.sealed")))
            .args(["--key-id", k, "--dek-out"])
            .arg(&dek)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", crate::stderr(&o));
        let mut cmd = Command::new(crate::dcr_attest());
        cmd.args(["register", "--service", &svc.url, "--service-pub"])
            .arg(svc.data_dir.join("service.pub.json"))
            .arg("--token-file")
            .arg(d.join("publisher.token"))
            .arg("--dek")
            .arg(&dek)
            .arg("--contract")
            .arg(&cpath)
            .arg("--reference")
            .arg(&rpath)
            .args(["--platform", "tpm"]);
        if *once {
            cmd.arg("--single-use");
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", crate::stderr(&o));
    }
    (c.digest(), SigningPublic::from_text(&signing).unwrap())
}

/// The software TPM the load tests use (fixed PCR values) and the service arguments that
/// trust its AK (`--tpm-ak`) and the publisher's token; files go to `d`.
pub fn soft_tpm_service_args(d: &std::path::Path) -> (SoftTpm, Vec<String>) {
    let tpm = SoftTpm::standard(7, 23);
    std::fs::write(d.join("ak.pem"), tpm.ak_pem()).unwrap();
    std::fs::write(d.join("tokens"), "publisher:publisher-token-0123456789\n").unwrap();
    let args = vec![
        "--tokens".to_string(),
        d.join("tokens").display().to_string(),
        "--tpm-ak".to_string(),
        d.join("ak.pem").display().to_string(),
    ];
    (tpm, args)
}

/// The parties' bearer tokens in a [`DpRoom`].
pub const PUB_TOKEN: &str = "publisher-token-0123456789";
pub const ADV_TOKEN: &str = "advertiser-token-0123456789";

/// The load tests' contract with a table, a sql workload and a DP analysis `segments`
/// (`per_query` ε a query, `total` in all, δ 1e-9, budget scope `scope`), a plain analysis `plain`,
/// and both parties.
pub fn dp_contract(signing: &str, per_query: &str, total: &str, scope: &str) -> String {
    let rcpt = HpkeSecret::generate(&mut rand_core::OsRng)
        .public()
        .to_text();
    let base = crate::test_contract("budget", "k1", &rcpt, signing);
    let table = r#"table = { name = "users", format = "csv", privacy_unit = "user", columns = [{ name = "user", type = "string" }, { name = "segment", type = "string" }] }"#;
    let mut t = base
        .replace(
            r#"blob = "users.sealed" }]"#,
            &format!(r#"blob = "users.sealed", {table} }}]"#),
        )
        .replace(
            r#"parties = [{ id = "publisher", name = "Publisher" }]"#,
            r#"parties = [{ id = "publisher", name = "Publisher" }, { id = "advertiser", name = "Advertiser" }]"#,
        );
    t.push_str(&format!(
        r#"
[[workloads]]
name = "sql"
kind = "sql"
sha256 = "{w}"
inputs = ["users"]
limits = {{ timeout_secs = 60, cpu_secs = 60, memory_mib = 256, output_mib = 16 }}

[[analyses]]
name = "segments"
submitters = ["publisher", "advertiser"]
[analyses.rule.aggregation]
min_distinct_units = 10
dimensions = ["users.segment"]
aggregates = [{{ function = "count_distinct", columns = ["users.user"] }}]
[analyses.rule.aggregation.dp]
epsilon_per_query = "{per_query}"
epsilon_total = "{total}"
delta = "1e-9"
max_rows_per_unit = 1
budget = "{scope}"

[[analyses]]
name = "plain"
submitters = ["publisher"]
[analyses.rule.aggregation]
min_distinct_units = 10
dimensions = ["users.segment"]
aggregates = [{{ function = "count_distinct", columns = ["users.user"] }}]

[[recipients]]
party = "advertiser"
hpke_public_key = "{adv}"
"#,
        w = "cd".repeat(32),
        adv = HpkeSecret::generate(&mut rand_core::OsRng)
            .public()
            .to_text()
    ));
    t
}

/// A service with [`dp_contract`] registered (key `k1`), tokens for both parties, and the
/// software TPM it trusts (for upload tokens by real releases).
pub struct DpRoom {
    pub svc: crate::Service,
    pub digest: String,
    pub signing: SigningPublic,
    pub tpm: SoftTpm,
    /// The service's arguments (to restart it on the same data).
    pub args: Vec<String>,
    pub data: std::path::PathBuf,
    _dir: crate::TempDir,
}

/// An HTTP agent that returns error statuses as responses.
pub fn plain_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent()
}

/// GET (no body) or POST JSON with an optional Authorization; (status, JSON body).
pub fn call_json(
    url: &str,
    auth: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let a = plain_agent();
    let mut r = match body {
        None => {
            let mut q = a.get(url);
            if let Some(t) = auth {
                q = q.header("authorization", t);
            }
            q.call()
        }
        Some(b) => {
            let mut q = a.post(url).header("content-type", "application/json");
            if let Some(t) = auth {
                q = q.header("authorization", t);
            }
            q.send(serde_json::to_vec(b).unwrap())
        }
    }
    .unwrap();
    let s = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (
        s,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON: {text}")),
    )
}

/// A run's TEE as the budget tests see it.
pub struct Tee {
    pub auth: String,
    /// Hex SHA-256 of the upload token (what a debit names as its run).
    pub run: String,
    pub key: SigningSecret,
    /// What the run's receipt names: the signed release, the attest request, the nonce.
    pub release: Signed,
    pub request: serde_json::Value,
    pub nonce: Vec<u8>,
}

impl Tee {
    /// A debit request signed with this TEE's result key (the body the service takes).
    pub fn req(
        &self,
        id: &str,
        sha: &str,
        analysis: &str,
        party: &str,
        eps: &str,
    ) -> serde_json::Value {
        signed_debit(&self.key, &debit_request(id, sha, analysis, party, eps))
    }
}

/// `body` signed under the debit-request domain with `key`, as JSON.
pub fn signed_debit(key: &SigningSecret, body: &serde_json::Value) -> serde_json::Value {
    serde_json::to_value(Signed::sign_in(
        dcr_protocol::release::DEBIT_REQUEST_DOMAIN,
        key,
        &serde_json::to_vec(body).unwrap(),
    ))
    .unwrap()
}

/// A debit request body.
pub fn debit_request(
    id: &str,
    sha: &str,
    analysis: &str,
    party: &str,
    eps: &str,
) -> serde_json::Value {
    serde_json::json!({"query_id": id, "query_sha256": sha, "analysis": analysis, "party": party, "epsilon": eps})
}

impl DpRoom {
    pub fn new(per_query: &str, total: &str, scope: &str) -> DpRoom {
        let dir = crate::TempDir::new("budget");
        let d = dir.path().to_path_buf();
        let (tpm, args) = soft_tpm_service_args(&d);
        std::fs::write(
            d.join("tokens"),
            format!("publisher:{PUB_TOKEN}\nadvertiser:{ADV_TOKEN}\n"),
        )
        .unwrap();
        let data = d.join("svc");
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let svc = crate::start_service(&data, &a);
        let toml = dp_contract(&service_signing_key(&svc), per_query, total, scope);
        let (cd, signing) =
            setup_service_with_contract(&d, &svc, &tpm, "budget", &toml, &[("k1", false)]);
        DpRoom {
            svc,
            digest: hex::encode(cd),
            signing,
            tpm,
            args,
            data,
            _dir: dir,
        }
    }

    /// Submit query number `n` as `party` under `analysis`: its id and document digest.
    pub fn submit(&self, party: &str, token: &str, analysis: &str, n: usize) -> (String, String) {
        let q = dcr_protocol::analysis::Query {
            analysis: analysis.into(),
            party: party.into(),
            sql: Some(format!(
                "SELECT u.segment, COUNT(DISTINCT u.user) AS n FROM users u GROUP BY u.segment -- {n}"
            )),
            parameters: Default::default(),
        };
        let body: serde_json::Value = serde_json::from_slice(&q.to_json()).unwrap();
        let (s, b) = call_json(
            &format!("{}/v1/contracts/{}/queries", self.svc.url, self.digest),
            Some(&format!("Bearer {token}")),
            Some(&body),
        );
        assert_eq!(s, 201, "{b}");
        (
            b["id"].as_str().unwrap().to_string(),
            hex::encode(q.digest()),
        )
    }

    /// A run's TEE (a real release to the pinned software TPM): its `Authorization: Upload …`
    /// and its attested result key.
    pub fn upload_auth(&self) -> Tee {
        let cd: [u8; 32] = hex::decode(&self.digest).unwrap().try_into().unwrap();
        let r = release_keys(&plain_agent(), &self.svc.url, &self.tpm, &cd, &self.signing).unwrap();
        let (_, tok) = r
            .keys
            .iter()
            .find(|(k, _)| k == dcr_protocol::wire::UPLOAD_TOKEN_ID)
            .expect("an upload token");
        Tee {
            auth: format!("Upload {}", hex::encode(tok)),
            run: hex::encode(Sha256::digest(tok)),
            key: r.result_key,
            release: r.signed,
            request: r.request,
            nonce: r.nonce,
        }
    }

    pub fn debit_url(&self) -> String {
        format!("{}/v1/contracts/{}/budget/debit", self.svc.url, self.digest)
    }

    pub fn budget_url(&self) -> String {
        format!("{}/v1/contracts/{}/budget", self.svc.url, self.digest)
    }
}

impl DpRoom {
    /// Stop the service (SIGKILL) and start it again on the same data.
    pub fn restart(&mut self) {
        let _ = self.svc.child.kill();
        let _ = self.svc.child.wait();
        let a: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.svc = crate::start_service(&self.data, &a);
    }
}

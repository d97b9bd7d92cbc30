//! Regression tests for the outside review's findings against `dcr-attest serve` (issue N),
//! each reproducing the attack on loopback and now seeing it refused:
//! - a registration's policy rewritten in transit (reference values, single use, expiry)
//!   while the wrapped DEK is passed through; a forged registration receipt;
//! - a key id registered by a party that does not own the dataset (or no dataset at all),
//!   and squatting it in another contract;
//! - blob names written by a party that does not own them, the output blob written by a
//!   party, an upload token used for another blob or contract;
//! - a forged result (sealed to the recipients, no proof, or a proof by a key the service
//!   never vouched for) that `open` must refuse;
//! - a TDX registration (MRTD covers only the firmware).
//!
//! The TEE is the software TPM of the load tests (a pinned AK), so releases are real.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine;
use dcr_protocol::keys::{hpke_seal, HpkePublic, SigningPublic, SigningSecret};
use dcr_protocol::measurements::Measurements;
use dcr_protocol::release::{policy_binding, register_info, Signed, RECEIPT_DOMAIN};
use dcr_protocol::wire::{RegisterRequest, RegistrationReceipt, ReleasePolicy, Tee, Wrapped};
use dcr_tests::load::{release_keys, SoftTpm};
use dcr_tests::*;
use rand_core::OsRng;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const PUB_TOKEN: &str = "publisher-token-0123456789";
const ADV_TOKEN: &str = "advertiser-token-0123456789";

struct Room {
    _t: TempDir,
    d: PathBuf,
    svc: Service,
    tpm: SoftTpm,
    signing: SigningPublic,
    info: dcr_protocol::wire::ServiceInfo,
}

fn two_party_contract(name: &str, signing: &str, pub_key: &str, adv_key: &str) -> String {
    format!(
        r#"version = 1
name = "{name}"
expires = "2099-01-01T00:00:00Z"
platforms = ["tpm", "snp", "tdx"]
parties = [{{ id = "publisher", name = "Publisher" }}, {{ id = "advertiser", name = "Advertiser" }}]
datasets = [{{ id = "pub", owner = "publisher", key_id = "pub-1", blob = "pub.sealed" }},
            {{ id = "adv", owner = "advertiser", key_id = "adv-1", blob = "adv.sealed" }}]
network = {{ mode = "static", address = "10.0.2.15/24", gateway = "10.0.2.2" }}
[[workloads]]
name = "overlap"
sha256 = "{w}"
inputs = ["pub", "adv"]
limits = {{ timeout_secs = 60, cpu_secs = 60, memory_mib = 256, output_mib = 16 }}
[output]
min_group_size = 50
columns = [{{ name = "segment", kind = "label", max_len = 32 }}, {{ name = "overlap", kind = "count" }}]
blob = "out.sealed"
[[recipients]]
party = "publisher"
hpke_public_key = "{pub_key}"
[[recipients]]
party = "advertiser"
hpke_public_key = "{adv_key}"
[service]
url = "http://127.0.0.1:1"
signing_key = "{signing}"
deadline_secs = 60
"#,
        w = "ab".repeat(32)
    )
}

impl Room {
    fn new(tag: &str) -> Room {
        let t = TempDir::new(tag);
        let d = t.path().to_path_buf();
        let tpm = SoftTpm::standard(9, 23);
        std::fs::write(d.join("ak.pem"), tpm.ak_pem()).unwrap();
        std::fs::write(
            d.join("tokens"),
            format!("publisher:{PUB_TOKEN}\nadvertiser:{ADV_TOKEN}\n"),
        )
        .unwrap();
        std::fs::write(d.join("publisher.token"), PUB_TOKEN).unwrap();
        std::fs::write(d.join("advertiser.token"), ADV_TOKEN).unwrap();
        let svc = start_service(
            &d.join("svc"),
            &[
                "--tokens",
                d.join("tokens").to_str().unwrap(),
                "--tpm-ak",
                d.join("ak.pem").to_str().unwrap(),
            ],
        );
        let info: dcr_protocol::wire::ServiceInfo =
            serde_json::from_slice(&std::fs::read(svc.data_dir.join("service.pub.json")).unwrap())
                .unwrap();
        let signing = SigningPublic::from_text(&info.signing_key).unwrap();
        for p in ["publisher", "advertiser"] {
            ok(&cli(&d, &["keygen", "--out-dir", ".", "--name", p]));
        }
        let key = |p: &str| {
            std::fs::read_to_string(d.join(format!("{p}.pub")))
                .unwrap()
                .trim()
                .to_string()
        };
        std::fs::write(
            d.join("contract.toml"),
            two_party_contract(
                "room",
                &info.signing_key,
                &key("publisher"),
                &key("advertiser"),
            ),
        )
        .unwrap();
        let pcrs: Vec<(u32, String)> = tpm.pcrs.iter().map(|(i, v)| (*i, hex::encode(v))).collect();
        std::fs::write(
            d.join("measurements.json"),
            tpm_reference(&pcrs).to_string(),
        )
        .unwrap();
        for (k, party) in [
            ("pub-1", "publisher"),
            ("adv-1", "advertiser"),
            ("pub-2", "x"),
        ] {
            // Over the 1 MiB JSON body limit: blob uploads stream, whatever their size.
            let rows: String = (0..150_000).map(|i| format!("{k},{i:08}\n")).collect();
            std::fs::write(d.join(format!("{party}-{k}.plain")), rows).unwrap();
            ok(&cli(
                &d,
                &[
                    "seal",
                    "--in",
                    &format!("{party}-{k}.plain"),
                    "--out",
                    &format!("{k}.sealed"),
                    "--key-id",
                    k,
                    "--dek-out",
                    &format!("{k}.dek"),
                ],
            ));
        }
        Room {
            _t: t,
            d,
            svc,
            tpm,
            signing,
            info,
        }
    }

    fn contract(&self) -> dcr_protocol::contract::Contract {
        dcr_protocol::contract::Contract::from_toml(
            &std::fs::read_to_string(self.d.join("contract.toml")).unwrap(),
        )
        .unwrap()
    }

    fn register(&self, party: &str, key: &str, contract: &str, platform: &str) -> Output {
        self.register_with(
            party,
            key,
            contract,
            "measurements.json",
            &["--platform", platform],
        )
    }

    /// `dcr-attest register` against this room's service with `reference` and `extra` flags.
    fn register_with(
        &self,
        party: &str,
        key: &str,
        contract: &str,
        reference: &str,
        extra: &[&str],
    ) -> Output {
        let pubf = self.svc.data_dir.join("service.pub.json");
        let (token, dek) = (format!("{party}.token"), format!("{key}.dek"));
        let mut args = vec![
            "register",
            "--service",
            &self.svc.url,
            "--service-pub",
            pubf.to_str().unwrap(),
            "--token-file",
            &token,
            "--dek",
            &dek,
            "--contract",
            contract,
            "--reference",
            reference,
        ];
        args.extend_from_slice(extra);
        cli(&self.d, &args)
    }

    fn put(&self, auth_party: &str, name: &str, file: &str) -> Output {
        cli(
            &self.d,
            &[
                "put",
                "--service",
                &self.svc.url,
                "--token-file",
                &format!("{auth_party}.token"),
                "--contract",
                "contract.toml",
                "--name",
                name,
                "--in",
                file,
            ],
        )
    }

    /// `dcr-attest open` of `bytes` as the publisher, with this room's contract; a refusal
    /// leaves neither plaintext nor a partial file behind.
    fn open_result(&self, bytes: &[u8], tag: &str) -> Output {
        std::fs::write(self.d.join(format!("{tag}.res")), bytes).unwrap();
        let (input, out) = (format!("{tag}.res"), format!("{tag}.csv"));
        let o = cli(
            &self.d,
            &[
                "open",
                "--in",
                &input,
                "--out",
                &out,
                "--key",
                "publisher.key",
                "--contract",
                "contract.toml",
            ],
        );
        if !o.status.success() {
            assert!(!self.d.join(&out).exists(), "{tag}: plaintext left behind");
            assert!(
                !self.d.join(format!("{out}.partial")).exists(),
                "{tag}: partial left behind"
            );
        }
        o
    }

    /// PUT raw bytes with an Authorization header value; (status, body).
    fn put_raw(&self, digest: &str, name: &str, auth: &str, body: &[u8]) -> (u16, String) {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        let mut r = agent
            .put(&format!(
                "{}/v1/contracts/{digest}/blobs/{name}",
                self.svc.url
            ))
            .header("authorization", auth)
            .send(body)
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }
}

fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(dcr_attest())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}{}", stdout(o), stderr(o));
}

fn refused_with(o: &Output, code: &str) -> String {
    assert!(!o.status.success(), "accepted: {}", stdout(o));
    let e = stderr(o);
    assert!(e.contains(code), "expected {code}: {e}");
    e
}

#[test]
fn key_ids_are_registered_only_by_their_dataset_owner_and_cannot_be_squatted() {
    let r = Room::new("sec-keys");
    // The advertiser takes the publisher's key id first: refused, naming the owner.
    let e = refused_with(
        &r.register("advertiser", "pub-1", "contract.toml", "tpm"),
        "not_owner",
    );
    assert!(e.contains("owned by party publisher"), "{e}");
    // A key id no dataset of the contract uses (the review's `publisher-segments-2`).
    let e = refused_with(
        &r.register("advertiser", "pub-2", "contract.toml", "tpm"),
        "",
    );
    assert!(
        e.contains("no dataset uses key") || e.contains("not_owner"),
        "{e}"
    );
    // Sent straight to the service (the CLI checks the contract first): still refused there.
    let c = r.contract();
    let (_, dek) = dcr_attest::parties::read_dek(&r.d.join("pub-2.dek")).unwrap();
    let policy = ReleasePolicy {
        contract_digest: hex::encode(c.digest()),
        platforms: vec![Tee::Tpm],
        reference: serde_json::from_slice(&std::fs::read(r.d.join("measurements.json")).unwrap())
            .unwrap(),
        single_use: false,
        expires: "2099-01-01T00:00:00Z".into(),
        snp_min_tcb: None,
        sgx: None,
    };
    let err = dcr_attest::parties::Client::new(&r.svc.url)
        .register(
            ADV_TOKEN,
            &r.info,
            reg("pub-2", "advertiser", &dek, policy, &c.canonical_json()),
        )
        .unwrap_err();
    assert!(err.to_string().contains("not_owner"), "{err}");

    // The advertiser's own contract naming itself owner of "pub-1": a different contract, so
    // it registers there — and the publisher's registration in the real contract still works.
    let squat = std::fs::read_to_string(r.d.join("contract.toml"))
        .unwrap()
        .replace("name = \"room\"", "name = \"squat\"")
        .replace(
            "owner = \"publisher\", key_id = \"pub-1\"",
            "owner = \"advertiser\", key_id = \"pub-1\"",
        );
    std::fs::write(r.d.join("squat.toml"), squat).unwrap();
    ok(&r.register("advertiser", "pub-1", "squat.toml", "tpm"));
    ok(&r.register("publisher", "pub-1", "contract.toml", "tpm"));
    ok(&r.register("advertiser", "adv-1", "contract.toml", "tpm"));
    // The owner's second registration of the same key is still a conflict, never an overwrite.
    refused_with(
        &r.register("publisher", "pub-1", "contract.toml", "tpm"),
        "conflict",
    );
}

#[test]
fn a_policy_rewritten_in_transit_does_not_open_and_receipts_are_signed() {
    let r = Room::new("sec-policy");
    let c = r.contract();
    let (_, dek) = dcr_attest::parties::read_dek(&r.d.join("pub-1.dek")).unwrap();
    let reference: Measurements =
        serde_json::from_slice(&std::fs::read(r.d.join("measurements.json")).unwrap()).unwrap();
    let policy = ReleasePolicy {
        contract_digest: hex::encode(c.digest()),
        platforms: vec![Tee::Tpm],
        reference: reference.clone(),
        single_use: true,
        expires: "2099-01-01T00:00:00Z".into(),
        snp_min_tcb: None,
        sgx: None,
    };
    // What the publisher's CLI sends: the DEK wrapped for exactly this policy.
    let reg_key = HpkePublic::from_text(&r.info.registration_key).unwrap();
    let binding = policy_binding("pub-1", "publisher", &policy);
    let (enc, ct) = hpke_seal(
        &reg_key,
        &register_info("pub-1"),
        &binding,
        &dek.0,
        &mut OsRng,
    )
    .unwrap();
    let sent = RegisterRequest {
        key_id: "pub-1".into(),
        wrapped_dek: Wrapped {
            enc: B64.encode(enc),
            ciphertext: B64.encode(ct),
        },
        policy,
        contract: String::from_utf8(c.canonical_json()).unwrap(),
    };
    let post = |req: &RegisterRequest| {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        let mut resp = agent
            .post(&format!("{}/v1/keys", r.svc.url))
            .header("authorization", &format!("Bearer {PUB_TOKEN}"))
            .send(serde_json::to_vec(req).unwrap())
            .unwrap();
        (
            resp.status().as_u16(),
            resp.body_mut().read_to_string().unwrap(),
        )
    };
    // The man in the middle rewrites the reference values (PCR 23 of another image), the
    // single-use flag and the expiry, passing the wrapped DEK through: nothing opens.
    let mut other_json = serde_json::to_value(&reference).unwrap();
    other_json["measurements"]["tpm"]["pcrs"]["23"] = "cd".repeat(32).into();
    let other_ref: Measurements = serde_json::from_value(other_json).unwrap();
    type Edit = Box<dyn Fn(&mut RegisterRequest)>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "reference",
            Box::new(move |q: &mut RegisterRequest| q.policy.reference = other_ref.clone()),
        ),
        (
            "single_use",
            Box::new(|q: &mut RegisterRequest| q.policy.single_use = false),
        ),
        (
            "expires",
            Box::new(|q: &mut RegisterRequest| q.policy.expires = "2098-01-01T00:00:00Z".into()),
        ),
        (
            "platforms",
            Box::new(|q: &mut RegisterRequest| q.policy.platforms = vec![Tee::Tpm, Tee::Tpm]),
        ),
    ];
    for (what, edit) in &edits {
        let mut q = sent.clone();
        edit(&mut q);
        let (st, body) = post(&q);
        assert_eq!(st, 400, "{what}: {body}");
        assert!(body.contains("wrapped_dek"), "{what}: {body}");
    }
    // Unchanged: registered, and the answer is a receipt signed by the service key under the
    // receipt domain, naming exactly what was sent.
    let (st, body) = post(&sent);
    assert_eq!(st, 201, "{body}");
    let signed: Signed = serde_json::from_str(&body).unwrap();
    let receipt: RegistrationReceipt =
        serde_json::from_slice(&signed.verify_in(RECEIPT_DOMAIN, &r.signing).unwrap()).unwrap();
    assert_eq!(receipt.key_id, "pub-1");
    assert_eq!(receipt.owner, "publisher");
    assert_eq!(receipt.policy_binding, hex::encode(binding));
    // Domain separation: a receipt is not a release response.
    assert!(signed.verify(&r.signing).is_err());

    // A forged receipt (a service that does not hold the pinned key answers /v1/keys): the
    // client refuses it.
    let fake = FakeService::start(&r.info);
    let (_, dek2) = dcr_attest::parties::read_dek(&r.d.join("adv-1.dek")).unwrap();
    let policy = ReleasePolicy {
        contract_digest: hex::encode(c.digest()),
        platforms: vec![Tee::Tpm],
        reference,
        single_use: false,
        expires: "2099-01-01T00:00:00Z".into(),
        snp_min_tcb: None,
        sgx: None,
    };
    let err = dcr_attest::parties::Client::new(&fake.url)
        .register(
            ADV_TOKEN,
            &r.info,
            reg("adv-1", "advertiser", &dek2, policy, &c.canonical_json()),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("not signed by the pinned key"),
        "{err}"
    );
}

fn reg<'a>(
    key_id: &'a str,
    owner: &'a str,
    dek: &'a dcr_protocol::seal::Dek,
    policy: ReleasePolicy,
    contract: &'a [u8],
) -> dcr_attest::parties::Registration<'a> {
    dcr_attest::parties::Registration {
        key_id,
        owner,
        dek,
        policy,
        contract_canonical: contract,
    }
}

/// A stand-in service on loopback that presents the pinned public keys but signs its
/// registration receipts with another key (what a man in the middle can do).
struct FakeService {
    url: String,
}

impl FakeService {
    fn start(pinned: &dcr_protocol::wire::ServiceInfo) -> FakeService {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let info = serde_json::to_vec(pinned).unwrap();
        std::thread::spawn(move || {
            let forger = SigningSecret::generate(&mut OsRng);
            for s in l.incoming().take(4) {
                let Ok(mut s) = s else { return };
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut first = String::new();
                r.read_line(&mut first).unwrap();
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0u8; len];
                r.read_exact(&mut body).unwrap();
                let answer = if first.starts_with("GET /v1/service") {
                    info.clone()
                } else {
                    let req: RegisterRequest = serde_json::from_slice(&body).unwrap();
                    let receipt = RegistrationReceipt {
                        key_id: req.key_id.clone(),
                        owner: "advertiser".into(),
                        contract_digest: req.policy.contract_digest.clone(),
                        policy_binding: hex::encode(policy_binding(
                            &req.key_id,
                            "advertiser",
                            &req.policy,
                        )),
                        registered_at: 1,
                    };
                    serde_json::to_vec(&Signed::sign_in(
                        RECEIPT_DOMAIN,
                        &forger,
                        &serde_json::to_vec(&receipt).unwrap(),
                    ))
                    .unwrap()
                };
                let status = if first.starts_with("GET") {
                    "200 OK"
                } else {
                    "201 Created"
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    answer.len()
                );
                let _ = s.write_all(&answer);
            }
        });
        FakeService { url }
    }
}

/// A sealed output to the contract's recipients (what a TEE, or a forger, can make: their
/// public keys are in the contract).
fn seal_to_recipients(c: &dcr_protocol::contract::Contract, rows: &[u8]) -> Vec<u8> {
    let mut sealer = dcr_protocol::recipients::seal_to(
        Vec::new(),
        &c.recipient_keys(),
        "dcr.output",
        dcr_protocol::seal::DEFAULT_CHUNK_SIZE,
        &mut OsRng,
    )
    .unwrap();
    sealer.write_all(rows).unwrap();
    sealer.finish().unwrap()
}

#[test]
fn blobs_are_written_only_by_their_owner_or_the_attested_tee_and_results_need_a_proof() {
    let r = Room::new("sec-blobs");
    let c = r.contract();
    let digest = hex::encode(c.digest());
    // Before the contract is registered, nobody writes its blobs.
    let e = refused_with(
        &r.put("publisher", "pub.sealed", "pub-1.sealed"),
        "unknown_contract",
    );
    assert!(e.contains(&digest), "{e}");
    ok(&r.register("publisher", "pub-1", "contract.toml", "tpm"));
    ok(&r.register("advertiser", "adv-1", "contract.toml", "tpm"));
    // The advertiser squats the publisher's dataset name, and writes the output name with
    // forged rows: both refused; an undeclared name too.
    let e = refused_with(
        &r.put("advertiser", "pub.sealed", "adv-1.sealed"),
        "not_owner",
    );
    assert!(e.contains("owned by party publisher"), "{e}");
    refused_with(
        &r.put("advertiser", "out.sealed", "adv-1.sealed"),
        "not_owner",
    );
    refused_with(
        &r.put("advertiser", "anything.sealed", "adv-1.sealed"),
        "not_owner",
    );
    // The owners upload theirs.
    ok(&r.put("publisher", "pub.sealed", "pub-1.sealed"));
    ok(&r.put("advertiser", "adv.sealed", "adv-1.sealed"));

    // A release (the soft TPM as the TEE): its upload token writes this contract's output
    // blob only, once.
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let rel = release_keys(&agent, &r.svc.url, &r.tpm, &c.digest(), &r.signing).unwrap();
    assert_eq!(rel.release.result_key, rel.result_key.public().to_text());
    let token = &rel
        .keys
        .iter()
        .find(|(k, _)| k == "dcr.upload-token")
        .unwrap()
        .1;
    let auth = format!("Upload {}", hex::encode(token));
    let (st, body) = r.put_raw(&digest, "adv2.sealed", &auth, b"x");
    assert_eq!(st, 401, "another blob name: {body}");
    assert!(body.contains("writes out.sealed"), "{body}");
    let (st, body) = r.put_raw(&"ab".repeat(32), "out.sealed", &auth, b"x");
    assert_eq!(st, 404, "another (unregistered) contract: {body}");

    // The TEE's result: sealed to both recipients, signed with its attested result key.
    // One token, two uploads at once (the review's parallel-upload finding): while the first
    // streams, the second is refused before it uses any disk.
    {
        let port = r.svc.url.rsplit(':').next().unwrap();
        let mut slow = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        write!(
            slow,
            "PUT /v1/contracts/{digest}/blobs/out.sealed HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-length: 1000000\r\n\r\n0123456789"
        )
        .unwrap();
        slow.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let (st, body) = r.put_raw(&digest, "out.sealed", &auth, b"x");
        assert_eq!(st, 409, "second upload with the same token: {body}");
        assert!(body.contains("in progress"), "{body}");
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // A TEE's output is bounded by the contract's output_mib (16 MiB here; 2x + 1 MiB slack).
    let (st, body) = r.put_raw(&digest, "out.sealed", &auth, &vec![0u8; 34 << 20]);
    assert_eq!(st, 413, "{body}");
    let sealed = seal_to_recipients(&c, b"segment,overlap\nsports,120\n");
    let signed = dcr_protocol::result::sign(
        &rel.result_key,
        &rel.signed,
        &c.digest(),
        "out.sealed",
        &sealed,
    );
    // No result without the run's receipt naming it.
    let (st, body) = r.put_raw(&digest, "out.sealed", &auth, &signed);
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("no_receipt"), "{body}");
    let run = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token));
    let up = dcr_tests::receipts::upload_for(
        &rel,
        &c.canonical_json(),
        &run,
        Some(("out.sealed", &signed)),
        vec![],
    );
    let (st, body) = dcr_tests::load::call_json(
        &format!("{}/v1/contracts/{digest}/receipts", r.svc.url),
        Some(&auth),
        Some(&serde_json::to_value(&up).unwrap()),
    );
    assert_eq!(st, 201, "{body}");
    let (st, body) = r.put_raw(&digest, "out.sealed", &auth, &signed);
    assert_eq!(st, 201, "{body}");
    let (st, body) = r.put_raw(&digest, "out.sealed", &auth, &signed);
    assert_eq!(st, 401, "used twice: {body}");
    ok(&cli(
        &r.d,
        &[
            "get",
            "--service",
            &r.svc.url,
            "--contract",
            "contract.toml",
            "--name",
            "out.sealed",
            "--out",
            "got.sealed",
        ],
    ));
    ok(&cli(
        &r.d,
        &[
            "open",
            "--in",
            "got.sealed",
            "--out",
            "got.csv",
            "--key",
            "advertiser.key",
            "--contract",
            "contract.toml",
        ],
    ));
    assert_eq!(
        std::fs::read(r.d.join("got.csv")).unwrap(),
        b"segment,overlap\nsports,120\n"
    );

    // Forged results (the review's `sports,99999,99999` sealed to both recipients' public
    // keys), offered to `open` as files:
    let forged = seal_to_recipients(&c, b"segment,overlap\nsports,99999\n");
    let open = |bytes: &[u8], tag: &str| r.open_result(bytes, tag);
    // (a) no proof at all;
    let e = refused_with(&open(&forged, "bare"), "not a signed result");
    assert!(e.starts_with("error: "), "{e}");
    // (b) the real release, signed by a key the service never vouched for;
    let forger = SigningSecret::generate(&mut OsRng);
    let f = dcr_protocol::result::sign(&forger, &rel.signed, &c.digest(), "out.sealed", &forged);
    refused_with(&open(&f, "forged-key"), "TEE's signature does not verify");
    // (c) the genuine proof with other sealed bytes behind it;
    let (proof, _) = dcr_protocol::result::split(&signed).unwrap();
    let mut spliced = signed[..signed.len() - sealed.len()].to_vec();
    spliced.extend_from_slice(&forged);
    assert_eq!(dcr_protocol::result::split(&spliced).unwrap().0, proof);
    refused_with(&open(&spliced, "spliced"), "SHA-256 is not the signed one");
    // (d) a genuine result of another contract.
    let other = std::fs::read_to_string(r.d.join("contract.toml"))
        .unwrap()
        .replace("name = \"room\"", "name = \"other\"");
    std::fs::write(r.d.join("other.toml"), other).unwrap();
    let o = cli(
        &r.d,
        &[
            "open",
            "--in",
            "got.sealed",
            "--out",
            "other.csv",
            "--key",
            "publisher.key",
            "--contract",
            "other.toml",
        ],
    );
    refused_with(&o, "released for contract");
    // --key without --contract is refused by the CLI.
    let o = cli(
        &r.d,
        &[
            "open",
            "--in",
            "got.sealed",
            "--out",
            "x.csv",
            "--key",
            "publisher.key",
        ],
    );
    assert!(!o.status.success());
}

#[test]
fn tdx_is_refused_until_its_rtmrs_are_predicted() {
    let r = Room::new("sec-tdx");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(r.d.join("measurements.json")).unwrap()).unwrap();
    m["measurements"]["tdx"] = serde_json::json!({"mrtd": "ab".repeat(48)});
    std::fs::write(r.d.join("tdx.json"), m.to_string()).unwrap();
    let o = r.register_with(
        "publisher",
        "pub-1",
        "contract.toml",
        "tdx.json",
        &["--platform", "tdx"],
    );
    let e = refused_with(&o, "policy_refused");
    assert!(e.contains("RTMR1/RTMR2"), "{e}");
}

#[test]
fn snp_keys_carry_a_minimum_tcb() {
    let r = Room::new("sec-snp-tcb");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(r.d.join("measurements.json")).unwrap()).unwrap();
    m["measurements"]["snp"] = serde_json::json!({"launch_digest": "ab".repeat(48)});
    std::fs::write(r.d.join("snp.json"), m.to_string()).unwrap();
    // Without a minimum TCB the service refuses the registration (sent as a client that does
    // not fill one in would send it).
    let c = r.contract();
    let (_, dek) = dcr_attest::parties::read_dek(&r.d.join("pub-1.dek")).unwrap();
    let policy = ReleasePolicy {
        contract_digest: hex::encode(c.digest()),
        platforms: vec![Tee::Snp],
        reference: serde_json::from_value(m.clone()).unwrap(),
        single_use: false,
        expires: "2099-01-01T00:00:00Z".into(),
        snp_min_tcb: None,
        sgx: None,
    };
    let err = dcr_attest::parties::Client::new(&r.svc.url)
        .register(
            PUB_TOKEN,
            &r.info,
            reg("pub-1", "publisher", &dek, policy, &c.canonical_json()),
        )
        .unwrap_err();
    assert!(err.to_string().contains("policy.snp_min_tcb"), "{err}");
    // The CLI registers the documented Milan default (and a stated Genoa level).
    let o = r.register_with(
        "publisher",
        "pub-1",
        "contract.toml",
        "snp.json",
        &[
            "--platform",
            "snp",
            "--snp-min-tcb",
            "genoa:bl=10,tee=0,snp=23,ucode=84",
        ],
    );
    ok(&o);
    let o = r.register_with(
        "advertiser",
        "adv-1",
        "contract.toml",
        "snp.json",
        &["--platform", "snp", "--snp-min-tcb", "genoa:bl=10"],
    );
    refused_with(&o, "--snp-min-tcb");
}

/// `dcr-attest serve` with a TLS listener: (child, http url, https url).
fn start_tls_service(data: &Path) -> (std::process::Child, String, String) {
    let mut child = Command::new(dcr_attest())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .args(["--tokens"])
        .arg(data.parent().unwrap().join("tokens"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut r = BufReader::new(child.stdout.take().unwrap());
    let mut a = String::new();
    let mut b = String::new();
    r.read_line(&mut a).unwrap();
    r.read_line(&mut b).unwrap();
    let http = a.trim().strip_prefix("listening on ").unwrap().to_string();
    let https = b.trim().strip_prefix("listening on ").unwrap().to_string();
    assert!(https.starts_with("https://127.0.0.1:"), "{b}");
    (child, http, https)
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn parties_talk_tls_to_the_pinned_certificate_only() {
    let r = Room::new("sec-tls");
    let data = r.d.join("tls-svc");
    let (child, _http, https) = start_tls_service(&data);
    let _k = Kill(child);
    let pubf = data.join("service.pub.json");
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(&pubf).unwrap()).unwrap();
    assert!(info["tls_certificate"].is_string(), "{info}");
    // The contract pins this service's signing key.
    let signing = info["signing_key"].as_str().unwrap();
    let text = std::fs::read_to_string(r.d.join("contract.toml"))
        .unwrap()
        .replace(&r.info.signing_key, signing);
    std::fs::write(r.d.join("tls-contract.toml"), text).unwrap();

    // An independent client: curl trusts the certificate the service wrote (and only with it).
    if require_tools("parties_talk_tls_to_the_pinned_certificate_only", &["curl"]) {
        let o = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(data.join("tls.crt"))
            .arg(format!("{https}/v1/service"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(got, info);
        let o = Command::new("curl")
            .args(["-sS", &format!("{https}/v1/service")])
            .output()
            .unwrap();
        assert!(
            !o.status.success(),
            "curl without the pinned certificate must not trust it"
        );
    }

    let register = |pubf: &Path, url: &str| {
        cli(
            &r.d,
            &[
                "register",
                "--service",
                url,
                "--service-pub",
                pubf.to_str().unwrap(),
                "--token-file",
                "publisher.token",
                "--dek",
                "pub-1.dek",
                "--contract",
                "tls-contract.toml",
                "--reference",
                "measurements.json",
                "--platform",
                "tpm",
            ],
        )
    };
    // A service.pub.json whose certificate is another service's: the TLS handshake fails
    // before any token is sent.
    let other_data = r.d.join("tls-other");
    let (child2, _, _) = start_tls_service(&other_data);
    let _k2 = Kill(child2);
    let mut forged: serde_json::Value =
        serde_json::from_slice(&std::fs::read(other_data.join("service.pub.json")).unwrap())
            .unwrap();
    forged["signing_key"] = info["signing_key"].clone();
    forged["registration_key"] = info["registration_key"].clone();
    std::fs::write(r.d.join("forged.pub.json"), forged.to_string()).unwrap();
    let o = register(&r.d.join("forged.pub.json"), &https);
    assert!(!o.status.success(), "{}", stdout(&o));
    let e = stderr(&o).to_lowercase();
    assert!(
        e.contains("certificate") || e.contains("tls") || e.contains("invalid"),
        "{e}"
    );
    // A pinned file without a certificate cannot be used for https.
    let mut bare = info.clone();
    bare.as_object_mut().unwrap().remove("tls_certificate");
    std::fs::write(r.d.join("bare.pub.json"), bare.to_string()).unwrap();
    refused_with(
        &register(&r.d.join("bare.pub.json"), &https),
        "tls_certificate",
    );

    // The pinned certificate: registration, upload and download over TLS.
    ok(&register(&pubf, &https));
    ok(&cli(
        &r.d,
        &[
            "put",
            "--service",
            &https,
            "--service-pub",
            pubf.to_str().unwrap(),
            "--token-file",
            "publisher.token",
            "--contract",
            "tls-contract.toml",
            "--name",
            "pub.sealed",
            "--in",
            "pub-1.sealed",
        ],
    ));
    let o = cli(
        &r.d,
        &[
            "get",
            "--service",
            &https,
            "--contract",
            "tls-contract.toml",
            "--name",
            "pub.sealed",
            "--out",
            "x.sealed",
        ],
    );
    refused_with(&o, "--service-pub");
    ok(&cli(
        &r.d,
        &[
            "get",
            "--service",
            &https,
            "--service-pub",
            pubf.to_str().unwrap(),
            "--contract",
            "tls-contract.toml",
            "--name",
            "pub.sealed",
            "--out",
            "tls-got.sealed",
        ],
    ));
    assert_eq!(
        std::fs::read(r.d.join("tls-got.sealed")).unwrap(),
        std::fs::read(r.d.join("pub-1.sealed")).unwrap()
    );
}

#[test]
fn one_partys_lax_policy_cannot_vouch_for_a_result() {
    // The review's critical finding: the advertiser registers its key with the reference
    // values of its own image; a TEE running that image got the advertiser's key, an upload
    // token and a signed release naming its result key, planted a forged result, and the
    // publisher's `open` accepted it. Now keys (and the token) go only to evidence every
    // dataset owner's policy accepts, and `open` checks that the release carried every key.
    let r = Room::new("sec-lax");
    let mut evil: serde_json::Value =
        serde_json::from_slice(&std::fs::read(r.d.join("measurements.json")).unwrap()).unwrap();
    evil["measurements"]["tpm"]["pcrs"]["23"] = "ee".repeat(32).into();
    std::fs::write(r.d.join("evil.json"), evil.to_string()).unwrap();
    ok(&r.register("publisher", "pub-1", "contract.toml", "tpm"));
    ok(&r.register_with(
        "advertiser",
        "adv-1",
        "contract.toml",
        "evil.json",
        &["--platform", "tpm"],
    ));
    let c = r.contract();
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    // The attacker's TEE (same pinned AK, the advertiser's image: PCR 23 = ee…).
    let evil_tpm = SoftTpm::standard(9, 0xee);
    let e = release_keys(&agent, &r.svc.url, &evil_tpm, &c.digest(), &r.signing)
        .err()
        .expect("refused");
    assert_eq!(e, "measurement_mismatch");
    // The genuine TEE is refused too (the advertiser's policy does not accept it): the lax
    // party can block the run, never forge it.
    let e = release_keys(&agent, &r.svc.url, &r.tpm, &c.digest(), &r.signing)
        .err()
        .expect("refused");
    assert_eq!(e, "measurement_mismatch");

    // `open` on its own: a release (signed with the service's key, read from its data dir)
    // that carries only the advertiser's key does not vouch for a result.
    let service_key = SigningSecret::from_text(
        std::fs::read_to_string(r.svc.data_dir.join("signing.key"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let tee = SigningSecret::generate(&mut OsRng);
    let release = |keys: &[&str]| {
        let rel = dcr_protocol::wire::Release {
            session_id: "00".repeat(16),
            evidence_digest: "11".repeat(32),
            contract_digest: hex::encode(c.digest()),
            hpke_public_key: format!("x25519:{}", "22".repeat(32)),
            result_key: tee.public().to_text(),
            issued_at: 1,
            keys: keys
                .iter()
                .map(|k| dcr_protocol::wire::ReleasedKey {
                    key_id: k.to_string(),
                    enc: String::new(),
                    ciphertext: String::new(),
                })
                .collect(),
        };
        Signed::sign(&service_key, &serde_json::to_vec(&rel).unwrap())
    };
    let open = |file: &[u8], tag: &str| r.open_result(file, tag);
    let rows = b"segment,overlap\nsports,120\n";
    let sealed = seal_to_recipients(&c, rows);
    let f = dcr_protocol::result::sign(
        &tee,
        &release(&["adv-1", "dcr.upload-token"]),
        &c.digest(),
        "out.sealed",
        &sealed,
    );
    let e = refused_with(
        &open(&f, "one-key"),
        "did not include dataset pub's key pub-1",
    );
    assert!(e.starts_with("error: "), "{e}");
    // Every key released, but the plaintext breaks the output rules (a spreadsheet formula,
    // free text, CRLF): refused, nothing written.
    let bad = seal_to_recipients(&c, b"segment,overlap\r\n=HYPERLINK(\"x\"),120\r\n");
    let f = dcr_protocol::result::sign(
        &tee,
        &release(&["pub-1", "adv-1"]),
        &c.digest(),
        "out.sealed",
        &bad,
    );
    refused_with(&open(&f, "rules"), "output rules");
    // The same release with rows that keep the rules: opens.
    let f = dcr_protocol::result::sign(
        &tee,
        &release(&["pub-1", "adv-1"]),
        &c.digest(),
        "out.sealed",
        &sealed,
    );
    ok(&open(&f, "good"));
    assert_eq!(std::fs::read(r.d.join("good.csv")).unwrap(), rows);
}

#[test]
fn an_expired_contract_releases_nothing_and_bounds_its_policies() {
    let r = Room::new("sec-expired");
    let text = std::fs::read_to_string(r.d.join("contract.toml"))
        .unwrap()
        .replace(
            "expires = \"2099-01-01T00:00:00Z\"",
            "expires = \"2020-01-01T00:00:00Z\"",
        );
    std::fs::write(r.d.join("old.toml"), text).unwrap();
    // A policy outliving its contract is refused at registration.
    let o = r.register_with(
        "publisher",
        "pub-1",
        "old.toml",
        "measurements.json",
        &["--platform", "tpm", "--expires", "2099-06-01T00:00:00Z"],
    );
    let e = refused_with(&o, "later than the contract's expiry");
    assert!(e.contains("policy.expires"), "{e}");
}

#[test]
fn unknown_routes_answer_json_and_open_never_replaces_a_link() {
    let r = Room::new("sec-misc");
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    for (method, path, status) in [
        ("GET", "/v1/contracts/ab/blobs/x/", 404u16),
        ("GET", "//v1/service", 404),
        ("GET", "/nothing", 404),
        ("POST", "/v1/service", 405),
    ] {
        let mut resp = match method {
            "GET" => agent.get(&format!("{}{path}", r.svc.url)).call().unwrap(),
            _ => agent
                .post(&format!("{}{path}", r.svc.url))
                .send(&b"{}"[..])
                .unwrap(),
        };
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        let body: serde_json::Value =
            serde_json::from_slice(&resp.body_mut().read_to_vec().unwrap())
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON: {e}"));
        assert!(
            body["code"].is_string() && body["message"].is_string(),
            "{body}"
        );
    }
    // A dangling symlink at --out is not replaced by the plaintext (nor followed).
    std::os::unix::fs::symlink(r.d.join("elsewhere/target.txt"), r.d.join("link.csv")).unwrap();
    let o = cli(
        &r.d,
        &[
            "open",
            "--in",
            "pub-1.sealed",
            "--out",
            "link.csv",
            "--dek",
            "pub-1.dek",
        ],
    );
    refused_with(&o, "exists");
    assert!(std::fs::symlink_metadata(r.d.join("link.csv"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!r.d.join("elsewhere").exists());
    // A plain --out: written 0600, and never over an existing file.
    ok(&cli(
        &r.d,
        &[
            "open",
            "--in",
            "pub-1.sealed",
            "--out",
            "plain.csv",
            "--dek",
            "pub-1.dek",
        ],
    ));
    refused_with(
        &cli(
            &r.d,
            &[
                "open",
                "--in",
                "pub-1.sealed",
                "--out",
                "plain.csv",
                "--dek",
                "pub-1.dek",
            ],
        ),
        "exists",
    );
}

#[test]
fn an_unauthenticated_flood_of_refusals_does_not_grow_the_audit_log_without_bound() {
    // The review grew audit.log by ~1.1 MB/s per client with malformed /v1/attest requests.
    let r = Room::new("sec-noise");
    let before = audit_records(&r.svc.data_dir).len();
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    let start = std::time::Instant::now();
    let n = 2000;
    for i in 0..n {
        let mut resp = agent
            .post(&format!("{}/v1/attest", r.svc.url))
            .header("content-type", "application/json")
            .send(format!("{{\"junk\": \"{}\"}}", "z".repeat(i % 2000)))
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        let _ = resp.body_mut().read_to_vec();
    }
    let secs = start.elapsed().as_secs() + 1;
    let written = audit_records(&r.svc.data_dir).len() - before;
    let bound = (dcr_service::NOISE_BURST + dcr_service::NOISE_PER_SECOND * secs) as usize;
    println!("{n} malformed requests in {secs} s: {written} audit records (bound {bound})");
    assert!(
        written <= bound,
        "{written} records for {n} refusals in {secs} s"
    );
    // A decision (a party refused) is always written. Every refusal turned away is counted in
    // the next record written: when the flood crosses a second, a refilled token writes a
    // noise record carrying the count so far, and the decision carries the rest.
    refused_with(
        &r.register("advertiser", "pub-1", "contract.toml", "tpm"),
        "not_owner",
    );
    let recs = audit_records(&r.svc.data_dir);
    let last = recs.last().unwrap();
    assert_eq!(last["code"], "not_owner", "{last}");
    let counted: u64 = recs[before..]
        .iter()
        .filter_map(|rec| rec["suppressed_before"].as_u64())
        .sum();
    assert_eq!(counted as usize, n - written, "{last}");
}

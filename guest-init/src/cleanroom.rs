//! The attested clean-room run (../shared/design.md "The run"; docs/protocol.md): network,
//! explicit platform detection, evidence bound to a challenge, key release, sealed inputs
//! decrypted into a private tmpfs, the workload run confined, output rules enforced, the
//! result sealed to the contract's recipients and uploaded. Every failure is a `StepError`
//! (one line on the console, then power off); secrets live in `Zeroizing` buffers.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use dcr_protocol::contract::{Contract, Network};
use dcr_protocol::keys::{hpke_open, HpkeSecret, SigningSecret};
use dcr_protocol::release::{release_info, report_data, Signed};
use dcr_protocol::seal::{Dek, Header, Opener};
use dcr_protocol::wire::{Challenge, Release, Tee, UPLOAD_TOKEN_ID};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{say, step, StepError};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// Where decrypted inputs live: a tmpfs (RAM; no block device), mode 0755, files 0644.
const RUN_DIR: &str = "/run/dcr";
/// PCRs the quote covers (SHA-256 bank): firmware 0-7, UKI 9/11/12, 14, and 23 (contract).
const QUOTED_PCRS: [u32; 14] = [0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 12, 13, 14, 23];
/// First workload uid; workload i runs as uid/gid FIRST_UID + i.
const FIRST_UID: u32 = 61000;

fn fail<T>(step_name: &'static str, detail: impl Into<String>) -> Result<T, StepError> {
    Err(StepError {
        step: step_name,
        detail: detail.into(),
    })
}

/// HTTP to the key-release service with retries, backoff and a total deadline.
struct Client {
    base: String,
    agent: ureq::Agent,
    deadline: Instant,
}

impl Client {
    fn new(url: &str, deadline_secs: u64) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            // Waiting for an answer is bounded by the deadline; a large blob's body may take
            // longer to stream than that, so the body itself is not.
            .timeout_recv_response(Some(Duration::from_secs(deadline_secs)))
            .timeout_send_body(Some(Duration::from_secs(deadline_secs.max(600))))
            .build()
            .new_agent();
        Client {
            base: url.trim_end_matches('/').to_string(),
            agent,
            deadline: Instant::now() + Duration::from_secs(deadline_secs),
        }
    }

    /// Run `once` until it settles: `Err(problem)` is retried (250 ms doubling to 4 s) until
    /// the total deadline; `Ok(result)` is final either way.
    fn retrying<T>(
        &self,
        what: &'static str,
        mut once: impl FnMut() -> Result<Result<T, StepError>, String>,
    ) -> Result<T, StepError> {
        let mut backoff = Duration::from_millis(250);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let problem = match once() {
                Ok(settled) => return settled,
                Err(p) => p,
            };
            if Instant::now() + backoff > self.deadline {
                return fail(
                    what,
                    format!(
                        "service {} unreachable until the deadline ({attempt} attempts; last: {problem})",
                        self.base
                    ),
                );
            }
            say(&format!(
                "retry {what} attempt={attempt} in={}ms reason=\"{}\"",
                backoff.as_millis(),
                problem.replace('"', "'")
            ));
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(4));
        }
    }

    /// One request; transport errors and 5xx are retried until the deadline, 4xx are final.
    fn call(
        &self,
        what: &'static str,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        auth: Option<&str>,
        limit: u64,
    ) -> Result<Vec<u8>, StepError> {
        let url = format!("{}{path}", self.base);
        self.retrying(what, || {
            let result = match method {
                "GET" => {
                    let mut r = self.agent.get(&url);
                    if let Some(a) = auth {
                        r = r.header("authorization", a);
                    }
                    r.call()
                }
                "PUT" => {
                    let mut r = self.agent.put(&url);
                    if let Some(a) = auth {
                        r = r.header("authorization", a);
                    }
                    r.send(body.unwrap_or_default())
                }
                _ => {
                    let mut r = self
                        .agent
                        .post(&url)
                        .header("content-type", "application/json");
                    if let Some(a) = auth {
                        r = r.header("authorization", a);
                    }
                    r.send(body.unwrap_or_default())
                }
            };
            let mut resp = result.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let bytes = resp.body_mut().with_config().limit(limit).read_to_vec();
            match (status, bytes) {
                (200..=299, Ok(b)) => Ok(Ok(b)),
                (400..=499, Ok(b)) => {
                    let e: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
                    Ok(fail(
                        what,
                        format!(
                            "refused by the service: {}: {}",
                            e["code"].as_str().unwrap_or("?"),
                            e["message"].as_str().unwrap_or("(no message)")
                        ),
                    ))
                }
                (s, _) => Err(format!("HTTP {s}")),
            }
        })
    }

    /// GET with the same retry rules, handing the body to `f` as a stream. `f` runs once, on
    /// the first 2xx answer; its error is final (no retry: the bytes were bad, not the link).
    fn get_stream<T>(
        &self,
        what: &'static str,
        path: &str,
        f: impl FnOnce(&mut dyn Read) -> Result<T, String>,
    ) -> Result<T, StepError> {
        let url = format!("{}{path}", self.base);
        let mut f = Some(f);
        self.retrying(what, || {
            let mut resp = self.agent.get(&url).call().map_err(|e| e.to_string())?;
            if resp.status().is_client_error() {
                return Ok(fail(
                    what,
                    format!(
                        "refused by the service: HTTP {} for {path}",
                        resp.status().as_u16()
                    ),
                ));
            }
            if !resp.status().is_success() {
                return Err(format!("HTTP {}", resp.status().as_u16()));
            }
            let mut body = resp.body_mut().with_config().limit(u64::MAX).reader();
            let f = f.take().expect("runs once: a 2xx answer settles the loop");
            Ok(f(&mut body).map_err(|detail| StepError { step: what, detail }))
        })
    }
}

/// What the machine offers, checked explicitly; printed whatever is chosen.
struct Detected {
    snp: bool,
    tdx: bool,
    tpm: bool,
    azure_hcl: bool,
    /// The HCL report's IGVM report type (2 = SNP, 4 = TDX), when there is one.
    azure_report_type: Option<u32>,
}

/// The Azure paravisor's HCL report, in the vTPM's NV index 0x01400001.
const HCL_NV_INDEX: u32 = 0x0140_0001;
/// Offset of the IGVM request data's report_type in the HCL report (32-byte header, then
/// the 1184-byte hardware report, then data_size and version).
const HCL_REPORT_TYPE_AT: usize = 32 + 1184 + 8;
const HCL_REPORT_SNP: u32 = 2;
const HCL_REPORT_TDX: u32 = 4;

fn hcl_report_type(hcl: &[u8]) -> Option<u32> {
    let b = hcl.get(HCL_REPORT_TYPE_AT..HCL_REPORT_TYPE_AT + 4)?;
    (hcl.get(..4) == Some(b"HCLA")).then(|| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn detect() -> Detected {
    // Evidence comes from configfs-tsm; its provider names the platform.
    let provider = tsm_provider();
    let snp = provider.as_deref() == Some("sev_guest");
    let tdx = provider.as_deref() == Some("tdx_guest");
    for (dev, found, what) in [
        ("/dev/sev-guest", snp, "sev_guest"),
        ("/dev/tdx_guest", tdx, "tdx_guest"),
    ] {
        if !found && Path::new(dev).exists() {
            say(&format!(
                "platform note: {dev} present but no configfs-tsm {what} provider (not used)"
            ));
        }
    }
    let tpm = Path::new("/dev/tpmrm0").exists();
    let azure_hcl = tpm
        && crate::tpm::Tpm::open("/dev/tpmrm0")
            .and_then(|mut t| t.nv_read_public_exists(HCL_NV_INDEX))
            .unwrap_or(false);
    let azure_report_type = if azure_hcl {
        crate::tpm::Tpm::open("/dev/tpmrm0")
            .and_then(|mut t| t.nv_read(HCL_NV_INDEX))
            .ok()
            .and_then(|r| hcl_report_type(&r))
    } else {
        None
    };
    Detected {
        snp,
        tdx,
        tpm,
        azure_hcl,
        azure_report_type,
    }
}

fn choose(c: &Contract, d: &Detected) -> Result<Tee, StepError> {
    let yn = |b: bool| if b { "yes" } else { "no" };
    let allowed: Vec<&str> = c.platforms.iter().map(Tee::as_str).collect();
    let chosen = c.platforms.iter().copied().find(|t| match t {
        Tee::Snp => d.snp,
        Tee::Tdx => d.tdx,
        Tee::Tpm => d.tpm && !d.azure_hcl,
        Tee::AzSnpVtpm => d.azure_report_type == Some(HCL_REPORT_SNP),
        Tee::AzTdxVtpm => d.azure_report_type == Some(HCL_REPORT_TDX),
    });
    say(&format!(
        "platform detected snp={} tdx={} tpm={} azure-hcl={} contract=[{}] using={}",
        yn(d.snp),
        yn(d.tdx),
        yn(d.tpm),
        match (d.azure_hcl, d.azure_report_type) {
            (false, _) => "no".to_string(),
            (true, Some(HCL_REPORT_SNP)) => "snp".to_string(),
            (true, Some(HCL_REPORT_TDX)) => "tdx".to_string(),
            (true, Some(t)) => format!("unknown-report-type-{t}"),
            (true, None) => "unreadable".to_string(),
        },
        allowed.join(","),
        chosen.map_or("none", |t| t.as_str())
    ));
    match chosen {
        Some(t) => Ok(t),
        None => fail(
            "platform",
            format!(
                "none of the contract's platforms [{}] is present",
                allowed.join(",")
            ),
        ),
    }
}

/// SHA-256 PCR values from sysfs, concatenated in index order (tpm2_quote -F values).
fn pcr_values(pcrs: &[u32]) -> Result<Vec<u8>, StepError> {
    let mut out = Vec::with_capacity(32 * pcrs.len());
    for i in pcrs {
        let p = format!("/sys/class/tpm/tpm0/pcr-sha256/{i}");
        let text = step(
            "evidence",
            std::fs::read_to_string(&p).map_err(|e| format!("{p}: {e}")),
        )?;
        let v = step(
            "evidence",
            hex::decode(text.trim()).map_err(|e| format!("{p}: {e}")),
        )?;
        out.extend_from_slice(&v);
    }
    Ok(out)
}

/// Released keys: key id → DEK, plus the upload token, and the signed release itself (the
/// result's proof carries it: it names this TEE's result key).
struct Keys {
    deks: Vec<(String, Dek)>,
    upload_token: Zeroizing<Vec<u8>>,
    release: Signed,
}

/// This boot's ephemeral keys, both bound into the evidence (`report_data`): the HPKE key the
/// service seals keys to, and the Ed25519 key the result is signed with.
pub struct TeeKeys {
    hpke: HpkeSecret,
    result: SigningSecret,
}

impl TeeKeys {
    fn generate() -> Self {
        TeeKeys {
            hpke: HpkeSecret::generate(&mut rand_core::OsRng),
            result: SigningSecret::generate(&mut rand_core::OsRng),
        }
    }

    fn report_data(&self, nonce: &[u8], digest: &[u8; 32]) -> [u8; 64] {
        report_data(nonce, &self.hpke.public(), digest, &self.result.public())
    }
}

fn attest_tpm(
    c: &Contract,
    digest: &[u8; 32],
    client: &Client,
    tk: &TeeKeys,
) -> Result<Keys, StepError> {
    let mut tpm = step("tpm", crate::tpm::Tpm::open("/dev/tpmrm0"))?;
    let (ek, ek_public) = step("tpm", tpm.create_ek())?;
    let ek_cert = step(
        "tpm",
        tpm.nv_read(crate::tpm::EK_CERT_NV_INDEX).map_err(|e| {
            format!(
                "EK certificate at NV {:#x}: {e}",
                crate::tpm::EK_CERT_NV_INDEX
            )
        }),
    )?;
    let (ak, ak_public) = step("tpm", tpm.create_ak())?;
    let req = serde_json::json!({"tee": "tpm", "tpm": {
        "ek_public": B64.encode(&ek_public), "ek_cert": B64.encode(&ek_cert), "ak_public": B64.encode(&ak_public)}});
    let (ch, nonce) = challenge(client, &req)?;
    let cred = step(
        "challenge",
        B64.decode(ch.credential.as_deref().unwrap_or_default())
            .map_err(|e| format!("credential: {e}")),
    )?;
    let secret = Zeroizing::new(step("tpm", tpm.activate_credential(ak, ek, &cred))?);
    let rd = tk.report_data(&nonce, digest);
    let (message, signature) = step("tpm", tpm.quote(ak, &rd, &QUOTED_PCRS))?;
    let pcrs = pcr_values(&QUOTED_PCRS)?;
    let evidence = serde_json::json!({
        "message": B64.encode(&message), "signature": B64.encode(&signature),
        "pcrs": B64.encode(&pcrs), "ak_public": B64.encode(&ak_public),
        "activation": hex::encode(&secret[..]),
    });
    say(&format!(
        "evidence tee=tpm quote={} signature={} pcrs={} ek-cert={} bytes",
        message.len(),
        signature.len(),
        QUOTED_PCRS.len(),
        ek_cert.len()
    ));
    release(c, digest, client, &ch.session_id, Tee::Tpm, tk, evidence)
}

/// POST /v1/challenge: the challenge and its nonce bytes.
fn challenge(client: &Client, req: &serde_json::Value) -> Result<(Challenge, Vec<u8>), StepError> {
    let body = client.call(
        "challenge",
        "POST",
        "/v1/challenge",
        Some(&serde_json::to_vec(req).expect("json")),
        None,
        1 << 20,
    )?;
    let ch: Challenge = step(
        "challenge",
        serde_json::from_slice(&body).map_err(|e| e.to_string()),
    )?;
    let nonce = step(
        "challenge",
        hex::decode(&ch.nonce).map_err(|e| format!("nonce: {e}")),
    )?;
    Ok((ch, nonce))
}

/// Evidence from configfs-tsm (SEV-SNP report + certificate table, or a TDX quote).
fn attest_tsm(
    c: &Contract,
    digest: &[u8; 32],
    client: &Client,
    tee: Tee,
    tk: &TeeKeys,
) -> Result<Keys, StepError> {
    let req = serde_json::json!({"tee": tee.as_str()});
    let (ch, nonce) = challenge(client, &req)?;
    let rd = tk.report_data(&nonce, digest);
    let (provider, outblob, auxblob) = step("evidence", tsm_report(&rd))?;
    let evidence = match tee {
        Tee::Snp => serde_json::to_value(step(
            "evidence",
            dcr_protocol::evidence::snp_from_tsm(&outblob, &auxblob).map_err(|e| e.to_string()),
        )?),
        _ => serde_json::to_value(step(
            "evidence",
            dcr_protocol::evidence::tdx_from_tsm(&outblob).map_err(|e| e.to_string()),
        )?),
    }
    .expect("json");
    say(&format!(
        "evidence tee={} provider={provider} outblob={} auxblob={} bytes",
        tee.as_str(),
        outblob.len(),
        auxblob.len()
    ));
    release(c, digest, client, &ch.session_id, tee, tk, evidence)
}

/// Azure SNP CVM: the HCL report (vTPM NV 0x01400001), the VCEK from the instance metadata
/// service, and a quote by the HCL-bound AK (0x81000003) over PCRs 0..23 — Trustee's
/// az-snp-vtpm evidence.
/// Azure TDX CVM: the HCL report's TDREPORT is turned into a TD quote by the instance
/// metadata service; with the vTPM quote that is Trustee's az-tdx-vtpm evidence.
fn attest_azure(
    c: &Contract,
    digest: &[u8; 32],
    client: &Client,
    tee: Tee,
    tk: &TeeKeys,
) -> Result<Keys, StepError> {
    const AZURE_AK: u32 = 0x8100_0003;
    let mut tpm = step("tpm", crate::tpm::Tpm::open("/dev/tpmrm0"))?;
    let hcl = step(
        "evidence",
        tpm.nv_read(HCL_NV_INDEX)
            .map_err(|e| format!("HCL report at NV {HCL_NV_INDEX:#x}: {e}")),
    )?;
    let want = if tee == Tee::AzTdxVtpm {
        HCL_REPORT_TDX
    } else {
        HCL_REPORT_SNP
    };
    if hcl_report_type(&hcl) != Some(want) {
        return fail(
            "evidence",
            format!(
                "HCL report type {:?} is not {want} ({})",
                hcl_report_type(&hcl),
                tee.as_str()
            ),
        );
    }
    // The hardware part: SNP needs the VCEK, TDX a quote of the TDREPORT (1024 bytes at 32).
    let hw = if tee == Tee::AzTdxVtpm {
        step("evidence", azure_td_quote(&hcl[32..32 + 1024]))?
    } else {
        step("evidence", azure_vcek())?
    };
    let (ch, nonce) = challenge(client, &serde_json::json!({"tee": tee.as_str()}))?;
    let rd = tk.report_data(&nonce, digest);
    let all: Vec<u32> = (0..24).collect();
    let (message, signature) = step("tpm", tpm.quote(AZURE_AK, &rd, &all))?;
    let values = pcr_values(&all)?;
    let pcrs: Vec<Vec<u8>> = values.chunks(32).map(<[u8]>::to_vec).collect();
    let evidence = step(
        "evidence",
        if tee == Tee::AzTdxVtpm {
            dcr_protocol::evidence::az_tdx_vtpm(&hcl, &hw, &message, &signature, &pcrs)
        } else {
            dcr_protocol::evidence::az_snp_vtpm(&hcl, &hw, &message, &signature, &pcrs)
        }
        .map_err(|e| e.to_string()),
    )?;
    say(&format!(
        "evidence tee={} hcl-report={} quote={} {}={} bytes",
        tee.as_str(),
        hcl.len(),
        message.len(),
        if tee == Tee::AzTdxVtpm {
            "td-quote"
        } else {
            "vcek"
        },
        hw.len()
    ));
    release(c, digest, client, &ch.session_id, tee, tk, evidence)
}

/// Azure's instance metadata service (IMDS, 169.254.169.254): one request with the
/// `Metadata: true` header, `body` POSTed as JSON if given; the answer as JSON.
fn imds(
    what: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, String> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .new_agent();
    let url = format!("http://169.254.169.254{path}");
    let r = match body {
        Some(b) => agent
            .post(&url)
            .header("Metadata", "true")
            .header("Content-Type", "application/json")
            .send(b.to_string().as_bytes()),
        None => agent.get(&url).header("Metadata", "true").call(),
    };
    let bytes = r
        .map_err(|e| format!("IMDS {what}: {e}"))?
        .body_mut()
        .read_to_vec()
        .map_err(|e| format!("IMDS {what}: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("IMDS {what}: {e}"))
}

/// A TD quote of `tdreport` from IMDS (`POST /acc/tdquote {"report": base64url}` →
/// `{"quote": base64url}`).
fn azure_td_quote(tdreport: &[u8]) -> Result<Vec<u8>, String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let v = imds(
        "tdquote",
        "/acc/tdquote",
        Some(serde_json::json!({ "report": b64.encode(tdreport) })),
    )?;
    let q = v["quote"].as_str().ok_or("IMDS tdquote: no quote")?;
    b64.decode(q.trim_end_matches('='))
        .map_err(|e| format!("IMDS tdquote quote: {e}"))
}

/// The VCEK (DER) from IMDS (THIM).
fn azure_vcek() -> Result<Vec<u8>, String> {
    let v = imds("THIM", "/metadata/THIM/amd/certification", None)?;
    let pem = v["vcekCert"].as_str().ok_or("IMDS THIM: no vcekCert")?;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    B64.decode(b64.trim())
        .map_err(|e| format!("IMDS THIM vcekCert: {e}"))
}

/// configfs-tsm: one report for `rd` (Documentation/ABI/testing/configfs-tsm-report).
fn tsm_report(rd: &[u8; 64]) -> Result<(String, Vec<u8>, Vec<u8>), String> {
    let dir = Path::new("/sys/kernel/config/tsm/report/dcr");
    std::fs::create_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let r = (|| {
        std::fs::write(dir.join("inblob"), rd).map_err(|e| format!("inblob: {e}"))?;
        let provider =
            std::fs::read_to_string(dir.join("provider")).map_err(|e| format!("provider: {e}"))?;
        let out = std::fs::read(dir.join("outblob")).map_err(|e| format!("outblob: {e}"))?;
        let aux = std::fs::read(dir.join("auxblob")).unwrap_or_default();
        Ok((provider.trim().to_string(), out, aux))
    })();
    let _ = std::fs::remove_dir(dir);
    r
}

/// The configfs-tsm provider, if the kernel offers one (`sev_guest` or `tdx_guest`).
fn tsm_provider() -> Option<String> {
    let dir = Path::new("/sys/kernel/config/tsm/report/dcr-probe");
    std::fs::create_dir(dir).ok()?;
    let p = std::fs::read_to_string(dir.join("provider")).ok();
    let _ = std::fs::remove_dir(dir);
    p.map(|s| s.trim().to_string())
}

/// Post the evidence; check the signed release; open the released keys.
fn release(
    c: &Contract,
    digest: &[u8; 32],
    client: &Client,
    session_id: &str,
    tee: Tee,
    tk: &TeeKeys,
    evidence: serde_json::Value,
) -> Result<Keys, StepError> {
    let sk = &tk.hpke;
    let pk = sk.public();
    let req = serde_json::json!({
        "session_id": session_id, "tee": tee.as_str(), "hpke_public_key": pk.to_text(),
        "result_key": tk.result.public().to_text(),
        "contract_digest": hex::encode(digest), "evidence": evidence,
    });
    let body = client.call(
        "release",
        "POST",
        "/v1/attest",
        Some(&serde_json::to_vec(&req).expect("json")),
        None,
        1 << 20,
    )?;
    // Only the pinned key may speak for the service.
    let signed: Signed = step(
        "release",
        serde_json::from_slice(&body).map_err(|e| e.to_string()),
    )?;
    let payload = step(
        "release",
        signed
            .verify(&c.signing_key())
            .map_err(|e| format!("response signature: {e}")),
    )?;
    let rel: Release = step(
        "release",
        serde_json::from_slice(&payload).map_err(|e| e.to_string()),
    )?;
    if rel.session_id != session_id
        || rel.contract_digest != hex::encode(digest)
        || rel.hpke_public_key != pk.to_text()
        || rel.result_key != tk.result.public().to_text()
    {
        return fail(
            "release",
            "the signed release is for another session, contract or key",
        );
    }
    let ed: [u8; 32] = step(
        "release",
        hex::decode(&rel.evidence_digest)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or("evidence_digest"),
    )?;
    let mut deks = Vec::new();
    let mut upload_token = None;
    for k in &rel.keys {
        let info = release_info(&ed, &rel.session_id, &k.key_id, digest);
        let enc = step("release", B64.decode(&k.enc).map_err(|e| e.to_string()))?;
        let ct = step(
            "release",
            B64.decode(&k.ciphertext).map_err(|e| e.to_string()),
        )?;
        let key = step(
            "release",
            hpke_open(sk, &enc, &info, k.key_id.as_bytes(), &ct)
                .map_err(|e| format!("key {}: {e}", k.key_id)),
        )?;
        if k.key_id == UPLOAD_TOKEN_ID {
            upload_token = Some(key);
        } else {
            deks.push((
                k.key_id.clone(),
                step("release", Dek::from_slice(&key).map_err(|e| e.to_string()))?,
            ));
        }
    }
    let ids: Vec<&str> = deks.iter().map(|(k, _)| k.as_str()).collect();
    say(&format!(
        "release ok keys=[{}] signed-by={}",
        ids.join(","),
        c.service.signing_key
    ));
    Ok(Keys {
        deks,
        upload_token: upload_token.ok_or_else(|| StepError {
            step: "release",
            detail: "no upload token in the release".into(),
        })?,
        release: signed,
    })
}

/// Fetch, authenticate and decrypt each dataset into the tmpfs, streaming (one chunk in
/// memory at a time). A stream that fails authentication anywhere fails the run; its partial
/// plaintext stays in RAM only and the machine powers off.
/// A contract's blob at the service.
fn blob_path(digest: &[u8; 32], name: &str) -> String {
    format!("/v1/contracts/{}/blobs/{name}", hex::encode(digest))
}

fn fetch_inputs(
    c: &Contract,
    digest: &[u8; 32],
    keys: &Keys,
    client: &Client,
) -> Result<Vec<String>, StepError> {
    let dir = Path::new(RUN_DIR).join("in");
    step(
        "inputs",
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display())),
    )?;
    let mut paths = Vec::new();
    for d in &c.datasets {
        let Some((_, dek)) = keys.deks.iter().find(|(k, _)| *k == d.key_id) else {
            return fail(
                "inputs",
                format!("dataset {}: key {} was not released", d.id, d.key_id),
            );
        };
        let start = Instant::now();
        let path = dir.join(&d.id);
        let (sealed, plain, digest) =
            client.get_stream("inputs", &blob_path(digest, &d.blob), |body| {
                let mut hashing = HashingReader {
                    inner: body,
                    hash: Sha256::new(),
                    n: 0,
                };
                let header = Header::read_from(&mut hashing)
                    .map_err(|e| format!("dataset {}: {e}", d.id))?;
                if header.key_id != d.key_id {
                    return Err(format!(
                        "dataset {}: sealed under key {}, the contract says {}",
                        d.id, header.key_id, d.key_id
                    ));
                }
                let mut opener = Opener::new(&mut hashing, dek, header);
                let mut f =
                    std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let plain = std::io::copy(&mut opener, &mut f)
                    .map_err(|e| format!("dataset {}: {e}", d.id))?;
                drop(opener);
                Ok((hashing.n, plain, hex::encode(hashing.hash.finalize())))
            })?;
        say(&format!(
            "input {} sealed={sealed} bytes plaintext={plain} bytes sha256(sealed)={digest} time={:.1}s",
            d.id,
            start.elapsed().as_secs_f64()
        ));
        paths.push(path.display().to_string());
    }
    Ok(paths)
}

/// Counts and hashes what passes through (the sealed bytes, for the console line).
struct HashingReader<R: Read> {
    inner: R,
    hash: Sha256,
    n: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.hash.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
}

/// Run the (single) workload confined; returns its stdout.
fn run_workload(c: &Contract, all_inputs: &[String]) -> Result<Zeroizing<Vec<u8>>, StepError> {
    let [w] = c.workloads.as_slice() else {
        return fail(
            "workload",
            format!(
                "this guest runs exactly one workload; the contract has {}",
                c.workloads.len()
            ),
        );
    };
    let exe = Path::new("/workloads").join(&w.name);
    let bytes = step(
        "workload",
        std::fs::read(&exe).map_err(|e| format!("{}: {e}", exe.display())),
    )?;
    if hex::encode(Sha256::digest(&bytes)) != w.sha256 {
        return fail(
            "workload",
            format!("{} does not have the contract's SHA-256", exe.display()),
        );
    }
    let args: Vec<&String> = w
        .inputs
        .iter()
        .map(|id| {
            let i = c
                .datasets
                .iter()
                .position(|d| d.id == *id)
                .expect("validated");
            &all_inputs[i]
        })
        .collect();
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(args)
        .current_dir("/")
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        // Nothing a workload says reaches the operator's console.
        .stderr(std::process::Stdio::null());
    let conf = crate::sys::Confinement {
        uid: FIRST_UID,
        gid: FIRST_UID,
        memory_bytes: w.limits.memory_mib << 20,
        cpu_secs: w.limits.cpu_secs,
    };
    let start = Instant::now();
    let mut child = step(
        "workload",
        crate::sys::spawn_confined(&mut cmd, &conf).map_err(|e| format!("spawn {}: {e}", w.name)),
    )?;
    let pgid = child.id();
    let mut stdout = child.stdout.take().expect("piped");
    let cap = w.limits.output_mib << 20;
    let reader = std::thread::spawn(move || {
        let mut out = Zeroizing::new(Vec::new());
        let r = (&mut stdout).take(cap + 1).read_to_end(&mut out);
        (r, out)
    });
    let timeout = Duration::from_secs(w.limits.timeout_secs);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > timeout => {
                crate::sys::kill_group(pgid);
                let _ = child.wait();
                return fail(
                    "workload",
                    format!(
                        "{} timed out after {} s (killed)",
                        w.name, w.limits.timeout_secs
                    ),
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return fail("workload", format!("wait {}: {e}", w.name)),
        }
    };
    crate::sys::kill_group(pgid);
    let (r, out) = reader.join().map_err(|_| StepError {
        step: "workload",
        detail: "output reader panicked".into(),
    })?;
    step("workload", r.map_err(|e| format!("{} output: {e}", w.name)))?;
    say(&format!(
        "workload {} exit={} output={} bytes time={:.1}s",
        w.name,
        status.code().map_or_else(
            || format!(
                "signal{:?}",
                std::os::unix::process::ExitStatusExt::signal(&status)
            ),
            |c| c.to_string()
        ),
        out.len(),
        start.elapsed().as_secs_f64()
    ));
    if !status.success() {
        return fail("workload", format!("{} failed ({status})", w.name));
    }
    if out.len() as u64 > cap {
        return fail(
            "workload",
            format!(
                "{} wrote more than output_mib = {}",
                w.name, w.limits.output_mib
            ),
        );
    }
    Ok(out)
}

/// The contract's output rules (dcr_protocol::output: strict CSV, header = the contract's
/// columns, every value valid for its column): the number of rows, or the violation.
pub fn check_output(c: &Contract, out: &[u8]) -> Result<usize, String> {
    dcr_protocol::output::check(&c.output, out).map_err(|e| e.to_string())
}

pub fn run(c: &Contract, digest: &[u8; 32]) -> Result<(), StepError> {
    match &c.network {
        Network::Static { address, gateway } => {
            step(
                "network",
                crate::net::configure_static("eth0", address, gateway),
            )?;
            say(&format!(
                "network static address={address} gateway={gateway} interface=eth0"
            ));
        }
        Network::Dhcp {} => {
            let (address, gateway) = step("network", crate::net::configure_dhcp("eth0"))?;
            say(&format!(
                "network dhcp address={address} gateway={gateway} interface=eth0"
            ));
        }
    }
    let _ = std::fs::create_dir_all("/sys/kernel/config");
    let _ = crate::sys::mount("configfs", "/sys/kernel/config", "configfs", 0);
    let tee = choose(c, &detect())?;
    let client = Client::new(&c.service.url, c.service.deadline_secs);
    let tk = TeeKeys::generate();
    let keys = match tee {
        Tee::Tpm => attest_tpm(c, digest, &client, &tk)?,
        Tee::Snp | Tee::Tdx => attest_tsm(c, digest, &client, tee, &tk)?,
        Tee::AzSnpVtpm | Tee::AzTdxVtpm => attest_azure(c, digest, &client, tee, &tk)?,
    };
    step(
        "inputs",
        std::fs::create_dir_all(RUN_DIR).map_err(|e| e.to_string()),
    )?;
    step(
        "inputs",
        crate::sys::mount_data(
            "tmpfs",
            RUN_DIR,
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            "mode=0755",
        )
        .map_err(|e| format!("tmpfs {RUN_DIR}: {e}")),
    )?;
    let inputs = fetch_inputs(c, digest, &keys, &client)?;
    let out = run_workload(c, &inputs)?;
    let rows = step(
        "output",
        check_output(c, &out).map_err(|e| format!("output rules: {e}")),
    )?;
    let mut sealer = step(
        "output",
        dcr_protocol::recipients::seal_to(
            Vec::new(),
            &c.recipient_keys(),
            "dcr.output",
            dcr_protocol::seal::DEFAULT_CHUNK_SIZE,
            &mut rand_core::OsRng,
        )
        .map_err(|e| e.to_string()),
    )?;
    step(
        "output",
        std::io::Write::write_all(&mut sealer, &out).map_err(|e| e.to_string()),
    )?;
    let sealed = step("output", sealer.finish().map_err(|e| e.to_string()))?;
    drop(out);
    // The result carries its proof: the service's signed release (naming this TEE's result
    // key) and this key's signature over the sealed bytes.
    let signed =
        dcr_protocol::result::sign(&tk.result, &keys.release, digest, &c.output.blob, &sealed);
    let auth = format!("Upload {}", hex::encode(&keys.upload_token[..]));
    client.call(
        "upload",
        "PUT",
        &blob_path(digest, &c.output.blob),
        Some(&signed),
        Some(&auth),
        1 << 20,
    )?;
    say(&format!(
        "output rows={rows} sealed={} bytes signed={} bytes sha256={} recipients={} blob={}",
        sealed.len(),
        signed.len(),
        hex::encode(Sha256::digest(&signed)),
        c.recipients.len(),
        c.output.blob
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixtures directory (`DCR_FIXTURES`, else `../shared/fixtures` beside the workspace).
    fn fixtures() -> std::path::PathBuf {
        std::env::var_os("DCR_FIXTURES")
            .map(Into::into)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
    }

    #[test]
    fn hcl_report_type_picks_the_azure_platform() {
        // Real HCL reports from Azure SNP and TDX CVMs (kinvolk azure-cvm-tooling test data).
        let d = fixtures().join("attest/azure/kinvolk");
        let snp = std::fs::read(d.join("hcl-report-snp.bin")).expect("fixture");
        let tdx = std::fs::read(d.join("hcl-report-tdx.bin")).expect("fixture");
        assert_eq!(hcl_report_type(&snp), Some(HCL_REPORT_SNP));
        assert_eq!(hcl_report_type(&tdx), Some(HCL_REPORT_TDX));
        // Not an HCL report, or cut short: no type (and so no Azure platform chosen).
        let mut bad = snp.clone();
        bad[0] ^= 1;
        assert_eq!(hcl_report_type(&bad), None);
        assert_eq!(hcl_report_type(&snp[..HCL_REPORT_TYPE_AT + 3]), None);
    }
}

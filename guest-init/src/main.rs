//! guest-init: dcr's PID 1.
//!
//! Mount /proc, /sys and /dev, load the kernel modules packed into the initramfs in dependency
//! order (`boot`), print a banner with the version and the contract digest, measure the
//! contract and workloads into PCR 23 (`measure`), then run the clean room: network (`net`),
//! platform and evidence (`evidence`), key release (`release`, through `client`), inputs,
//! workload and sealed output (`workload`), and power off. Any error prints one line with the
//! reason and powers off; nothing is ever started that would give interactive access, and
//! nothing listens.
//!
//! The console protocol (one line per step) is `dcr_protocol::console`; `console` prints it.
#![deny(unsafe_code)]

mod boot;
mod client;
mod console;
mod evidence;
mod measure;
mod net;
mod oci;
mod queries;
mod release;
mod seccomp;
mod sys;
mod tpm;
mod workload;

use std::fmt;
use std::fs;
use std::path::Path;

use dcr_protocol::console::Line;
use dcr_protocol::contract::{Contract, Network, WorkloadKind};
use dcr_protocol::receipt::{canonical_sha256, Receipt, ReceiptUpload, RECEIPT_VERSION};
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::console::{emit, say};
use crate::release::TeeKeys;

/// Where the image builder puts the contract.
pub const CONTRACT_PATH: &str = "/etc/dcr/contract.json";

/// A failed step: what we were doing and why it failed.
#[derive(Debug)]
pub struct StepError {
    pub step: &'static str,
    pub detail: String,
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.detail)
    }
}

fn step<T, E: fmt::Display>(step: &'static str, r: Result<T, E>) -> Result<T, StepError> {
    r.map_err(|e| StepError {
        step,
        detail: e.to_string(),
    })
}

fn fail<T>(step_name: &'static str, detail: impl Into<String>) -> Result<T, StepError> {
    Err(StepError {
        step: step_name,
        detail: detail.into(),
    })
}

/// Standard base64, as the service's JSON messages carry binary fields.
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn run() -> Result<(), StepError> {
    boot::mount_api_filesystems()?;
    let release = step("uname", sys::kernel_release())?;
    let contract = step(
        "contract",
        fs::read(CONTRACT_PATH).map_err(|e| format!("{CONTRACT_PATH}: {e}")),
    )?;
    let parsed = step(
        "contract",
        Contract::from_canonical_json(&contract).map_err(|e| format!("{CONTRACT_PATH}: {e}")),
    )?;
    let digest = Sha256::digest(&contract);
    say(&format!(
        "banner version={} contract=sha256:{} kernel={release}",
        env!("CARGO_PKG_VERSION"),
        hex::encode(digest)
    ));
    let mods = boot::load_modules(&Path::new("/lib/modules").join(&release))?;
    let names = |v: &[String]| {
        v.iter()
            .map(|m| boot::module_name(m))
            .collect::<Vec<_>>()
            .join(" ")
    };
    say(&format!(
        "modules loaded={} [{}] absent={} [{}]",
        mods.loaded.len(),
        names(&mods.loaded),
        mods.absent.len(),
        names(&mods.absent)
    ));
    measure::measure_and_report(digest.into())?;
    // An oci workload's root is checked against its verity root hash before anything else.
    let root = oci::open_root(&parsed)?;
    clean_room(&parsed, &contract, &digest.into(), root.as_ref())
}

/// The attested clean-room run (../shared/design.md "The run"; docs/protocol.md): network,
/// explicit platform detection, evidence bound to a challenge, key release, sealed inputs
/// decrypted into a private tmpfs, the workload run confined, output rules enforced, the
/// result sealed to the contract's recipients and uploaded. Every failure is a `StepError`
/// (one line on the console, then power off).
fn clean_room(
    c: &Contract,
    contract_json: &[u8],
    digest: &[u8; 32],
    root: Option<&oci::Root>,
) -> Result<(), StepError> {
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
        Network::Vsock { cid, port } => {
            say(&format!(
                "network vsock service={cid}:{port} (no IP network; the host's vsock-proxy forwards)"
            ));
        }
    }
    let _ = std::fs::create_dir_all("/sys/kernel/config");
    let _ = crate::sys::mount("configfs", "/sys/kernel/config", "configfs", 0);
    let detected = evidence::detect();
    if detected.nsm {
        // A Nitro enclave's parent waits for this before it reports the enclave as running.
        step("heartbeat", crate::net::vsock::nitro_heartbeat())?;
        say("heartbeat sent to 3:9000 and echoed");
    }
    let tee = evidence::choose(c, &detected)?;
    let vsock = match c.network {
        Network::Vsock { cid, port } => Some((cid, port)),
        _ => None,
    };
    let client = Client::new(&c.service.url, c.service.deadline_secs, vsock);
    let started_at = unix_now();
    let tk = TeeKeys::generate();
    let keys = evidence::attest(c, digest, &client, tee, &tk)?;
    // From here on plaintext exists: kernel messages a workload could steer stay off the
    // operator's console.
    step(
        "inputs",
        sys::quiet_console().map_err(|e| format!("/proc/sys/kernel/printk: {e}")),
    )?;
    workload::mount_run_dir()?;
    let (inputs, input_receipts) = workload::fetch_inputs(c, digest, &keys, &client)?;
    let out = match (c.output_workload(), root) {
        (Some(w), Some(root)) if w.kind == WorkloadKind::Oci => {
            Some(oci::run(c, w, root, &inputs)?)
        }
        (Some(w), _) if w.kind == WorkloadKind::Oci => {
            return fail("workload", format!("{}: its root was not opened", w.name))
        }
        (Some(w), _) if w.kind == WorkloadKind::Wasm => Some(workload::run_wasm(c, w)?),
        (Some(w), _) => Some(workload::run_workload(c, w, &inputs)?),
        (None, _) => None,
    };
    // Every answer and the output are sealed and signed first; then the receipt (naming their
    // digests) is uploaded; then the answers, then the output (whose upload uses the upload
    // token up). The service takes a TEE's blob only if the run's stored receipt names its
    // digest: nothing leaves without a receipt.
    let answers = queries::answer_queries(c, digest, &tk, &keys, &client, &inputs)?;
    let out = match out {
        Some(out) => Some(workload::seal_output(c, digest, &tk, &keys, out)?),
        None => None,
    };
    let r = Receipt {
        version: RECEIPT_VERSION,
        contract_digest: hex::encode(digest),
        contract: base64::Engine::encode(&B64, contract_json),
        platform: tee,
        session_id: keys.attest.session_id.clone(),
        nonce: hex::encode(&keys.nonce),
        evidence_sha256: canonical_sha256(&keys.attest.evidence),
        release_sha256: hex::encode(keys.release_sha256),
        release: keys.release.clone(),
        run: keys.run(),
        inputs: input_receipts,
        queries: answers.receipt,
        output: out.as_ref().map(|o| o.receipt.clone()),
        started_at,
        finished_at: unix_now().max(started_at),
    };
    upload_receipt(digest, &tk, &keys, &client, r)?;
    for (blob, signed) in &answers.files {
        workload::upload("answer", digest, &keys, &client, blob, signed)?;
    }
    if !answers.files.is_empty() {
        say(&format!("answers uploaded={}", answers.files.len()));
    }
    match out {
        Some(out) => workload::deliver_output(c, digest, &keys, &client, out),
        None => {
            say("output none (the contract has no native or oci workload)");
            Ok(())
        }
    }
}

/// The guest's clock, Unix seconds (0 if it reads before 1970).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Sign the run's receipt with the result key and upload it with the evidence posted
/// (`POST /v1/contracts/{digest}/receipts`, the upload token).
fn upload_receipt(
    digest: &[u8; 32],
    tk: &TeeKeys,
    keys: &release::Keys,
    client: &Client,
    r: Receipt,
) -> Result<(), StepError> {
    let signed = dcr_protocol::receipt::sign(&tk.result, &r);
    let body = serde_json::to_vec(&ReceiptUpload {
        receipt: signed,
        evidence: keys.attest.clone(),
    })
    .expect("json");
    let auth = format!("Upload {}", hex::encode(&keys.upload_token[..]));
    client.call(
        "receipt",
        "POST",
        &format!("/v1/contracts/{}/receipts", hex::encode(digest)),
        Some(&body),
        Some(&auth),
        1 << 16,
    )?;
    say(&format!(
        "receipt run={} queries={} debits={} inputs={} output={} uploaded",
        r.run,
        r.queries.len(),
        r.queries.iter().filter(|q| q.debit.is_some()).count(),
        r.inputs.len(),
        r.output.as_ref().map(|o| o.blob.as_str()).unwrap_or("none")
    ));
    Ok(())
}

fn main() {
    // Refuse to act anywhere but as PID 1 of a dcr guest: never power off a developer's host.
    if std::process::id() != 1 {
        eprintln!("guest-init: not PID 1; this program only runs as init inside a dcr image");
        std::process::exit(2);
    }
    match run() {
        Ok(()) => emit(&Line::PowerOffOk),
        Err(e) => emit(&Line::PowerOffError {
            reason: e.to_string(),
        }),
    }
    // A Nitro enclave (the NSM is its mark) ends by restarting; everything else powers off.
    let err = if std::path::Path::new(evidence::NSM_DEV).exists() {
        sys::restart()
    } else {
        sys::power_off()
    };
    say(&format!("power-off failed: {err}"));
    sys::pause_forever();
}

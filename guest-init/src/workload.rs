//! The workload's side of the run: sealed inputs fetched, authenticated and decrypted into a
//! private tmpfs; the workload run confined; its output held to the contract's rules, sealed
//! to the recipients, signed and uploaded. Secrets live in `Zeroizing` buffers.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dcr_protocol::contract::{Contract, Workload};
use dcr_protocol::receipt::{ReceiptInput, ReceiptOutput};
use dcr_protocol::seal::{Header, Opener};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::client::{blob_path, Client};
use crate::console::say;
use crate::release::{Keys, TeeKeys};
use crate::{fail, step, StepError};

/// Where the workloads are (packed by the image builder; measured into PCR 23).
pub const WORKLOAD_DIR: &str = "/workloads";

/// Where decrypted inputs live: a tmpfs (RAM; no block device), mode 0755, files 0644.
pub const RUN_DIR: &str = "/run/dcr";

/// First workload uid; workload i runs as uid/gid FIRST_UID + i.
const FIRST_UID: u32 = 61000;

/// Mount the tmpfs the decrypted inputs live in.
pub fn mount_run_dir() -> Result<(), StepError> {
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
    Ok(())
}

/// Fetch, authenticate and decrypt each dataset into the tmpfs, streaming (one chunk in
/// memory at a time). A stream that fails authentication anywhere fails the run; its partial
/// plaintext stays in RAM only and the machine powers off.
pub fn fetch_inputs(
    c: &Contract,
    digest: &[u8; 32],
    keys: &Keys,
    client: &Client,
) -> Result<(Vec<String>, Vec<ReceiptInput>), StepError> {
    // Root only (0700): a workload reaches the inputs its contract entry names through its
    // own directory (`workload_inputs`), never the others.
    let dir = Path::new(RUN_DIR).join("in");
    step(
        "inputs",
        std::fs::create_dir_all(&dir)
            .and_then(|()| {
                std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            })
            .map_err(|e| format!("{}: {e}", dir.display())),
    )?;
    let mut paths = Vec::new();
    let mut receipt = Vec::new();
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
        receipt.push(ReceiptInput {
            dataset: d.id.clone(),
            key_id: d.key_id.clone(),
            sealed_sha256: digest,
            sealed_bytes: sealed,
        });
    }
    Ok((paths, receipt))
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

/// The executable of `w` at /workloads/<name>, after checking it has the contract's SHA-256.
pub fn checked_exe(what: &'static str, w: &Workload) -> Result<PathBuf, StepError> {
    let exe = Path::new(WORKLOAD_DIR).join(&w.name);
    let bytes = step(
        what,
        std::fs::read(&exe).map_err(|e| format!("{}: {e}", exe.display())),
    )?;
    if hex::encode(Sha256::digest(&bytes)) != w.sha256 {
        return fail(
            what,
            format!("{} does not have the contract's SHA-256", exe.display()),
        );
    }
    Ok(exe)
}

/// The uid/gid workload `w` runs as: FIRST_UID + its index in the contract.
pub fn workload_uid(c: &Contract, w: &Workload) -> u32 {
    let i = c
        .workloads
        .iter()
        .position(|x| x.name == w.name)
        .unwrap_or(0);
    FIRST_UID + i as u32
}

/// The decrypted input paths of `w`, in the order its contract entry names them.
pub fn inputs_of<'a>(
    c: &Contract,
    w: &Workload,
    all_inputs: &'a [String],
) -> Vec<(&'a str, usize)> {
    w.inputs
        .iter()
        .map(|id| {
            let i = c
                .datasets
                .iter()
                .position(|d| d.id == *id)
                .expect("validated");
            (all_inputs[i].as_str(), i)
        })
        .collect()
}

/// The inputs of `w` as it may see them: `RUN_DIR/w/<name>/<dataset id>`, each bound
/// read-only to the decrypted file, in a directory only its uid may enter (0500). Made once;
/// (path, dataset index) in the order its contract entry names them.
pub fn workload_inputs(
    what: &'static str,
    c: &Contract,
    w: &Workload,
) -> Result<Vec<(String, usize)>, StepError> {
    use std::os::unix::fs::PermissionsExt;
    let uid = workload_uid(c, w);
    let dir = Path::new(RUN_DIR).join("w").join(&w.name);
    let idx: Vec<usize> = w
        .inputs
        .iter()
        .map(|id| {
            c.datasets
                .iter()
                .position(|d| d.id == *id)
                .expect("validated")
        })
        .collect();
    if !dir.exists() {
        let e = |p: &Path| {
            let p = p.display().to_string();
            move |e: std::io::Error| format!("{p}: {e}")
        };
        step(what, std::fs::create_dir_all(&dir).map_err(e(&dir)))?;
        let flags = libc::MS_BIND
            | libc::MS_REMOUNT
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC;
        for &i in &idx {
            let id = &c.datasets[i].id;
            let src = format!("{RUN_DIR}/in/{id}");
            let dst = dir.join(id);
            let d = dst.display().to_string();
            step(what, std::fs::write(&dst, b"").map_err(e(&dst)))?;
            step(
                what,
                crate::sys::mount(&src, &d, "", libc::MS_BIND)
                    .and_then(|()| crate::sys::mount(&src, &d, "", flags))
                    .map_err(|err| format!("bind {d}: {err}")),
            )?;
        }
        step(
            what,
            std::os::unix::fs::chown(&dir, Some(uid), Some(uid))
                .and_then(|()| {
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500))
                })
                .map_err(e(&dir)),
        )?;
    }
    Ok(idx
        .iter()
        .map(|&i| (dir.join(&c.datasets[i].id).display().to_string(), i))
        .collect())
}

/// What a confined run gave back.
pub struct Ran {
    pub status: std::process::ExitStatus,
    /// Its stdout, at most `output_mib` + 1 bytes.
    pub out: Zeroizing<Vec<u8>>,
    pub secs: f64,
}

impl Ran {
    /// `exit=<code>` or `signal<n>` for console lines.
    pub fn exit(&self) -> String {
        self.status.code().map_or_else(
            || match std::os::unix::process::ExitStatusExt::signal(&self.status) {
                Some(n) => format!("signal{n}"),
                None => "unknown".to_string(),
            },
            |c| c.to_string(),
        )
    }
}

/// Where an oci workload runs: its mounted root, the working directory inside it, its
/// environment and how much it may write (its /tmp).
pub struct Jail {
    pub root: PathBuf,
    pub workdir: String,
    pub env: Vec<String>,
    pub fsize_bytes: u64,
}

/// Run `exe args` confined (its own uid, no capabilities, rlimits, stdin null, stderr
/// dropped, env cleared), killed with its process group after `timeout_secs`. With a
/// `jail`, `exe` is a path inside the jail's root, and the process runs chrooted there in its
/// own mount namespace with the jail's environment.
pub fn run_confined(
    what: &'static str,
    w: &Workload,
    exe: &Path,
    args: &[String],
    uid: u32,
    timeout_secs: u64,
    jail: Option<&Jail>,
) -> Result<Ran, StepError> {
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        // Nothing a workload says reaches the operator's console.
        .stderr(std::process::Stdio::null());
    let mut root = None;
    match jail {
        None => {
            cmd.current_dir("/");
        }
        Some(j) => {
            for kv in &j.env {
                if let Some((k, v)) = kv.split_once('=') {
                    if !k.is_empty() {
                        cmd.env(k, v);
                    }
                }
            }
            let cstr = |s: &str| {
                std::ffi::CString::new(s).map_err(|_| StepError {
                    step: what,
                    detail: format!("{}: a NUL in the root or working directory", w.name),
                })
            };
            root = Some((cstr(&j.root.display().to_string())?, cstr(&j.workdir)?));
        }
    }
    let conf = crate::sys::Confinement {
        uid,
        gid: uid,
        memory_bytes: w.limits.memory_mib << 20,
        cpu_secs: w.limits.cpu_secs,
        fsize_bytes: jail.map_or(0, |j| j.fsize_bytes),
        root,
    };
    let start = Instant::now();
    let mut child = step(
        what,
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
    let timeout = Duration::from_secs(timeout_secs);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > timeout => {
                crate::sys::kill_group(pgid);
                let _ = crate::sys::kill_uid(uid);
                let _ = child.wait();
                crate::sys::reap_children();
                return fail(
                    what,
                    format!("{} timed out after {timeout_secs} s (killed)", w.name),
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return fail(what, format!("wait {}: {e}", w.name)),
        }
    };
    crate::sys::kill_group(pgid);
    // Processes that left the group (setsid) die too; they would hold the pipe open.
    step(
        what,
        crate::sys::kill_uid(uid).map_err(|e| format!("ending {}'s processes: {e}", w.name)),
    )?;
    crate::sys::reap_children();
    if std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGSYS) {
        return fail(
            what,
            format!(
                "{} was killed by the seccomp filter: {}",
                w.name,
                crate::seccomp::reason(&kernel_log(), uid, pgid)
            ),
        );
    }
    let (r, out) = reader.join().map_err(|_| StepError {
        step: what,
        detail: "output reader panicked".into(),
    })?;
    step(what, r.map_err(|e| format!("{} output: {e}", w.name)))?;
    if out.len() as u64 > cap {
        return fail(
            what,
            format!(
                "{} wrote more than output_mib = {}",
                w.name, w.limits.output_mib
            ),
        );
    }
    Ok(Ran {
        status,
        out,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// The kernel log records still in /dev/kmsg's buffer, one message a line ("" if it cannot
/// be read).
fn kernel_log() -> String {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return String::new();
    };
    let mut out = String::new();
    let mut rec = vec![0u8; 8192];
    // One record a read; EAGAIN at the end (EPIPE when a record was overwritten: go on).
    for _ in 0..100_000 {
        match f.read(&mut rec) {
            Ok(0) => break,
            Ok(n) => {
                let r = String::from_utf8_lossy(&rec[..n]);
                let msg = r.split_once(';').map_or(&*r, |(_, m)| m);
                out.push_str(msg.lines().next().unwrap_or(""));
                out.push('\n');
            }
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    out
}

/// Run the contract's native workload `w` confined; returns its stdout.
pub fn run_workload(
    c: &Contract,
    w: &Workload,
    _all_inputs: &[String],
) -> Result<Zeroizing<Vec<u8>>, StepError> {
    let exe = checked_exe("workload", w)?;
    let args: Vec<String> = workload_inputs("workload", c, w)?
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let ran = run_confined(
        "workload",
        w,
        &exe,
        &args,
        workload_uid(c, w),
        w.limits.timeout_secs,
        None,
    )?;
    finish(w, "", ran)
}

/// Run the contract's wasm workload `w`: dcr's wasmtime runner ([`dcr_protocol::wasm`]) with
/// the module at /workloads/<name> (its SHA-256 checked against the contract first), confined
/// like a native workload. The module gets the inputs directory of `w` preopened read-only at
/// /dcr/input, argv = [name, /dcr/input/<id>…] (contract order); the runner's limits are the
/// contract's (memory, output, time). A runner failure is named on the console by its status.
pub fn run_wasm(c: &Contract, w: &Workload) -> Result<Zeroizing<Vec<u8>>, StepError> {
    use dcr_protocol::wasm::{runner_exit, INPUT_DIR, RUNNER_PATH};
    let module = checked_exe("workload", w)?;
    let runner = Path::new(RUNNER_PATH);
    if !runner.is_file() {
        return fail(
            "workload",
            format!("{}: {RUNNER_PATH} is missing from the image", w.name),
        );
    }
    let inputs = workload_inputs("workload", c, w)?;
    let dir = Path::new(RUN_DIR).join("w").join(&w.name);
    let mut args = vec![
        "--inputs".to_string(),
        dir.display().to_string(),
        "--memory-mib".into(),
        w.limits.memory_mib.to_string(),
        "--output-mib".into(),
        w.limits.output_mib.to_string(),
        "--timeout-secs".into(),
        w.limits.timeout_secs.to_string(),
        module.display().to_string(),
        "--".into(),
        w.name.clone(),
    ];
    for &(_, i) in &inputs {
        args.push(format!("{INPUT_DIR}/{}", c.datasets[i].id));
    }
    // guest-init's own deadline a little later than the runner's epoch deadline, so that a
    // module past its time is reported by the runner (status 123) rather than killed.
    let ran = run_confined(
        "workload",
        w,
        runner,
        &args,
        workload_uid(c, w),
        w.limits.timeout_secs.saturating_add(5),
        None,
    )?;
    if let Some(why) = ran.status.code().and_then(runner_exit) {
        say(&format!(
            "workload {} (wasm) exit={} output={} bytes time={:.1}s",
            w.name,
            ran.exit(),
            ran.out.len(),
            ran.secs
        ));
        return fail("workload", format!("{}: {why}", w.name));
    }
    finish(w, " (wasm)", ran)
}

/// The console line of an output workload's run (`what` after the name, e.g. ` (oci …)`),
/// then its stdout if it exited 0.
pub fn finish(w: &Workload, what: &str, ran: Ran) -> Result<Zeroizing<Vec<u8>>, StepError> {
    say(&format!(
        "workload {}{what} exit={} output={} bytes time={:.1}s",
        w.name,
        ran.exit(),
        ran.out.len(),
        ran.secs
    ));
    if !ran.status.success() {
        return fail("workload", format!("{} failed ({})", w.name, ran.status));
    }
    Ok(ran.out)
}

/// The contract's output rules (dcr_protocol::output: strict CSV, header = the contract's
/// columns, every value valid for its column): the number of rows, or the violation.
pub fn check_output(c: &Contract, out: &[u8]) -> Result<usize, String> {
    dcr_protocol::output::check(&c.output, out).map_err(|e| e.to_string())
}

/// The output, sealed and signed, not yet uploaded (the receipt names its digest first).
pub struct Output {
    signed: Vec<u8>,
    sealed: usize,
    rows: usize,
    pub receipt: ReceiptOutput,
}

/// Hold the output to the contract's rules, seal it to the recipients and sign it with this
/// TEE's result key.
pub fn seal_output(
    c: &Contract,
    digest: &[u8; 32],
    tk: &TeeKeys,
    keys: &Keys,
    out: Zeroizing<Vec<u8>>,
) -> Result<Output, StepError> {
    let rows = step(
        "output",
        check_output(c, &out).map_err(|e| format!("output rules: {e}")),
    )?;
    let (sealed, signed) = seal_sign(
        "upload",
        digest,
        tk,
        keys,
        &c.recipient_keys(),
        &c.output.blob,
        out,
    )?;
    Ok(Output {
        receipt: ReceiptOutput {
            blob: c.output.blob.clone(),
            sha256: hex::encode(Sha256::digest(&signed)),
        },
        signed,
        sealed,
        rows,
    })
}

/// Upload the signed output with the released upload token (which this uses up).
pub fn deliver_output(
    c: &Contract,
    digest: &[u8; 32],
    keys: &Keys,
    client: &Client,
    out: Output,
) -> Result<(), StepError> {
    upload("upload", digest, keys, client, &c.output.blob, &out.signed)?;
    say(&format!(
        "output rows={} sealed={} bytes signed={} bytes sha256={} recipients={} blob={}",
        out.rows,
        out.sealed,
        out.signed.len(),
        out.receipt.sha256,
        c.recipients.len(),
        c.output.blob
    ));
    Ok(())
}

/// Seal `plain` to `recipients` and sign the sealed bytes with this TEE's result key for
/// `blob` (the proof: the service's signed release naming that key, and its signature).
/// Returns the sealed length and the signed bytes.
pub fn seal_sign(
    what: &'static str,
    digest: &[u8; 32],
    tk: &TeeKeys,
    keys: &Keys,
    recipients: &[dcr_protocol::keys::HpkePublic],
    blob: &str,
    plain: Zeroizing<Vec<u8>>,
) -> Result<(usize, Vec<u8>), StepError> {
    let mut sealer = step(
        what,
        dcr_protocol::recipients::seal_to(
            Vec::new(),
            recipients,
            "dcr.output",
            dcr_protocol::seal::DEFAULT_CHUNK_SIZE,
            &mut rand_core::OsRng,
        )
        .map_err(|e| e.to_string()),
    )?;
    step(
        what,
        std::io::Write::write_all(&mut sealer, &plain).map_err(|e| e.to_string()),
    )?;
    let sealed = step(what, sealer.finish().map_err(|e| e.to_string()))?;
    drop(plain);
    let signed = dcr_protocol::result::sign(&tk.result, &keys.release, digest, blob, &sealed);
    Ok((sealed.len(), signed))
}

/// PUT a signed result as `blob` with the upload token.
pub fn upload(
    what: &'static str,
    digest: &[u8; 32],
    keys: &Keys,
    client: &Client,
    blob: &str,
    signed: &[u8],
) -> Result<(), StepError> {
    let auth = format!("Upload {}", hex::encode(&keys.upload_token[..]));
    client.call(
        what,
        "PUT",
        &blob_path(digest, blob),
        Some(signed),
        Some(&auth),
        1 << 20,
    )?;
    Ok(())
}

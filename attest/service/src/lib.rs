//! dcr-service: the key-release service behind `dcr-attest serve` (docs/protocol.md).
//!
//! Background-check model: a TEE asks for a challenge, binds
//! `report_data(nonce, hpke_pk, contract_digest, result_key)` into its evidence, and posts the
//! evidence.
//! The service verifies it with this crate's verifiers, compares the claims with the
//! reference values registered with each key, and releases every matching key HPKE-sealed to
//! the TEE's key and bound to the evidence digest, in a response signed with the service key.
//! Every decision is in the audit log before the response leaves (see `journal`).

#![forbid(unsafe_code)]

mod api;
mod blobs;
mod budget;
mod challenge;
mod contracts;
mod evidence;
pub mod journal;
pub mod net;
mod policy;
mod queries;
mod receipts;
mod register;
mod release;
mod routes;
pub mod sessions;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use dcr_protocol::keys::{HpkeSecret, SigningSecret};
use dcr_protocol::wire::{ServiceInfo, Tee};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use evidence::{verify_evidence, verify_run_evidence};
pub use release::UPLOAD_TOKEN_ID;
pub use routes::router;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error("--tokens {path} line {line}: {reason}")]
    Tokens {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> ServiceError {
    ServiceError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Trust anchors and settings (from the command line).
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// (party, SHA-256 of its bearer token)
    pub tokens: Vec<(String, [u8; 32])>,
    /// Trusted EK roots and intermediates (DER) for AKs activated against an EK.
    pub ek_roots: Vec<Vec<u8>>,
    pub ek_intermediates: Vec<Vec<u8>>,
    /// Pinned AKs (DER SubjectPublicKeyInfo).
    pub pinned_aks: Vec<Vec<u8>>,
    /// dcap-qvl collateral bundle for TDX quotes.
    pub tdx_collateral: Option<Vec<u8>>,
    /// dcap-qvl collateral bundle for SGX quotes (the SGX TCB info and QE identity).
    pub sgx_collateral: Option<Vec<u8>>,
    pub nonce_ttl_secs: u64,
    /// Outstanding challenges in all, and per client (IPv4 address or IPv6 /64).
    pub max_sessions: usize,
    pub max_sessions_per_client: usize,
    /// Connection limits and timeouts of the listener.
    pub limits: net::Limits,
    /// A second listener speaking TLS (the parties' one), with its certificate's names.
    pub tls_listen: Option<SocketAddr>,
    pub tls_names: Vec<String>,
}

/// Read `party:token` lines (tokens at least 16 characters; `#` comments).
pub fn read_tokens(path: &Path) -> Result<Vec<(String, [u8; 32])>, ServiceError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    let mut out: Vec<(String, [u8; 32])> = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let err = |reason: &str| ServiceError::Tokens {
            path: path.to_path_buf(),
            line: i + 1,
            reason: reason.to_string(),
        };
        let (party, token) = l
            .split_once(':')
            .ok_or_else(|| err("expected party:token"))?;
        if party.is_empty() || token.len() < 16 {
            return Err(err("empty party or token shorter than 16 characters"));
        }
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if out.iter().any(|(_, t)| *t == h) {
            return Err(err("duplicate token"));
        }
        out.push((party.to_string(), h));
    }
    Ok(out)
}

/// The service's own keys, created on first start (files mode 0600 in the data dir).
pub struct Keys {
    pub signing: SigningSecret,
    pub registration: HpkeSecret,
    /// Encrypts DEKs at rest in the store (AES-256-GCM).
    pub master: Zeroizing<[u8; 32]>,
    /// The TLS listener's certificate (DER), published in service.pub.json for pinning.
    pub tls_cert: Option<Vec<u8>>,
}

fn write_secret(path: &Path, text: &str) -> Result<(), ServiceError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_err(path, e))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| file_err(path, e))
}

fn read_secret(path: &Path) -> Result<Option<Zeroizing<String>>, ServiceError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(Zeroizing::new(s.trim().to_string()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_err(path, e)),
    }
}

pub fn load_or_create_keys(dir: &Path, tls_cert: Option<&[u8]>) -> Result<Keys, ServiceError> {
    std::fs::create_dir_all(dir.join("blobs")).map_err(|e| file_err(dir, e))?;
    let sp = dir.join("signing.key");
    let signing = match read_secret(&sp)? {
        Some(t) => SigningSecret::from_text(&t).map_err(|e| file_err(&sp, e))?,
        None => {
            let k = SigningSecret::generate(&mut OsRng);
            write_secret(&sp, &k.to_text())?;
            k
        }
    };
    let rp = dir.join("registration.key");
    let registration = match read_secret(&rp)? {
        Some(t) => HpkeSecret::from_text(&t).map_err(|e| file_err(&rp, e))?,
        None => {
            let k = HpkeSecret::generate(&mut OsRng);
            write_secret(&rp, &k.to_text())?;
            k
        }
    };
    let mp = dir.join("master.key");
    let master = match read_secret(&mp)? {
        Some(t) => {
            let v = Zeroizing::new(hex::decode(t.as_str()).map_err(|e| file_err(&mp, e))?);
            let a: [u8; 32] = v
                .as_slice()
                .try_into()
                .map_err(|_| file_err(&mp, "expected 32 bytes of hex"))?;
            Zeroizing::new(a)
        }
        None => {
            let mut k = Zeroizing::new([0u8; 32]);
            OsRng.fill_bytes(&mut k[..]);
            write_secret(&mp, &hex::encode(k.as_slice()))?;
            k
        }
    };
    let keys = Keys {
        signing,
        registration,
        master,
        tls_cert: tls_cert.map(<[u8]>::to_vec),
    };
    let info = keys.info();
    let pub_path = dir.join("service.pub.json");
    std::fs::write(
        &pub_path,
        serde_json::to_vec_pretty(&info).expect("serializes"),
    )
    .map_err(|e| file_err(&pub_path, e))?;
    Ok(keys)
}

impl Keys {
    pub fn info(&self) -> ServiceInfo {
        use base64::Engine;
        ServiceInfo {
            signing_key: self.signing.public().to_text(),
            registration_key: self.registration.public().to_text(),
            tls_certificate: self
                .tls_cert
                .as_ref()
                .map(|c| base64::engine::general_purpose::STANDARD.encode(c)),
        }
    }

    const AT_REST: &'static [u8] = b"dcr/v1/dek-at-rest\0";

    fn aead(&self) -> ring::aead::LessSafeKey {
        ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &self.master[..])
                .expect("32-byte key"),
        )
    }

    /// DEK → (nonce ‖ ciphertext ‖ tag) under the master key, bound to the key id.
    pub fn wrap_at_rest(&self, key_id: &str, dek: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let mut aad = Self::AT_REST.to_vec();
        aad.extend_from_slice(key_id.as_bytes());
        let mut buf = dek.to_vec();
        self.aead()
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(&aad[..]),
                &mut buf,
            )
            .expect("AES-GCM seal");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        out
    }

    pub fn unwrap_at_rest(&self, key_id: &str, blob: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if blob.len() < 12 + 16 {
            return None;
        }
        let mut aad = Self::AT_REST.to_vec();
        aad.extend_from_slice(key_id.as_bytes());
        let nonce: [u8; 12] = blob[..12].try_into().ok()?;
        let mut buf = Zeroizing::new(blob[12..].to_vec());
        let n = self
            .aead()
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(&aad[..]),
                &mut buf,
            )
            .ok()?
            .len();
        buf.truncate(n);
        Some(buf)
    }
}

/// An outstanding challenge.
pub struct Session {
    pub tee: Tee,
    pub nonce: [u8; 32],
    pub expires_at: u64,
    /// For an EK-anchored AK: the credential secret and the AK's name.
    pub activation: Option<(Zeroizing<[u8; 32]>, Vec<u8>)>,
}

pub struct State {
    pub cfg: Config,
    pub keys: Keys,
    pub journal: journal::Journal,
    pub sessions: Mutex<sessions::Sessions>,
    /// Session ids already used, until they would have expired (to name replays).
    pub used: Mutex<HashMap<String, u64>>,
    /// Upload tokens (hashes) whose upload is streaming now: a token writes once, so a second
    /// upload with it while the first runs is refused before it uses any disk.
    pub uploads: Mutex<std::collections::HashSet<[u8; 32]>>,
    /// The budget of unauthenticated refusal records (see `api::audited`).
    pub audit_noise: Mutex<NoiseBudget>,
    /// Held while a query is counted and stored (the per-contract cap is exact).
    pub queries: Mutex<()>,
}

/// A token bucket for audit records of refusals anyone can provoke: `NOISE_PER_SECOND`
/// records a second, bursts of `NOISE_BURST`; what it turns away is counted.
pub struct NoiseBudget {
    tokens: u64,
    at: u64,
    suppressed: u64,
}

pub const NOISE_PER_SECOND: u64 = 20;
pub const NOISE_BURST: u64 = 200;

impl NoiseBudget {
    pub fn new() -> Self {
        NoiseBudget {
            tokens: NOISE_BURST,
            at: 0,
            suppressed: 0,
        }
    }

    /// Whether a record may be written at `now` (unix seconds); counts it if not.
    pub fn take(&mut self, now: u64) -> bool {
        if now > self.at {
            self.tokens = (self.tokens + (now - self.at) * NOISE_PER_SECOND).min(NOISE_BURST);
            self.at = now;
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// How many records were turned away since the last call.
    pub fn drain_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

impl Default for NoiseBudget {
    fn default() -> Self {
        Self::new()
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Open the data dir (keys, store, audit log) and serve until SIGINT/SIGTERM.
pub fn serve(cfg: Config) -> Result<(), ServiceError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| file_err(&cfg.data_dir, e))?;
    let tls = match cfg.tls_listen {
        Some(_) => Some(tls::load_or_create(&cfg.data_dir, &cfg.tls_names)?),
        None => None,
    };
    let keys = load_or_create_keys(&cfg.data_dir, tls.as_ref().map(|t| t.cert_der.as_slice()))?;
    let acceptor = tls.as_ref().map(tls::acceptor).transpose()?;
    let tls_listen = cfg.tls_listen;
    let (journal, audit) = journal::Journal::open(&cfg.data_dir)?;
    if let Some(q) = &audit.quarantine {
        eprintln!(
            "dcr-attest serve: audit.log: moved a torn or corrupt {}-byte tail after record {} to {}",
            audit.truncated,
            audit.records,
            q.display()
        );
    }
    eprintln!(
        "dcr-attest serve: data dir {}, {} audit records, signing key {}",
        cfg.data_dir.display(),
        audit.records,
        keys.signing.public().to_text()
    );
    let removed = remove_blob_temps(&cfg.data_dir)?;
    if removed > 0 {
        eprintln!(
            "dcr-attest serve: removed {removed} unfinished blob upload(s) (.tmp-*) from {}",
            cfg.data_dir.join("blobs").display()
        );
    }
    let listen = cfg.listen;
    let mut limits = cfg.limits.clone();
    // Leave room for the store, the log, blobs being written and the listener itself.
    if let Some(nofile) = net::open_files_limit() {
        let room = nofile.saturating_sub(64).max(1);
        if limits.max_connections > room {
            eprintln!(
                "dcr-attest serve: --max-connections {} lowered to {room} (open files limit {nofile})",
                limits.max_connections
            );
            limits.max_connections = room;
        }
    }
    let state = std::sync::Arc::new(State {
        sessions: Mutex::new(sessions::Sessions::new(
            cfg.max_sessions,
            cfg.max_sessions_per_client,
        )),
        cfg,
        keys,
        journal,
        used: Mutex::new(HashMap::new()),
        uploads: Mutex::new(std::collections::HashSet::new()),
        audit_noise: Mutex::new(NoiseBudget::new()),
        queries: Mutex::new(()),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| file_err(Path::new("tokio runtime"), e))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| file_err(Path::new(&listen.to_string()), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| file_err(Path::new(&listen.to_string()), e))?;
        let tls_listener = match tls_listen {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .map_err(|e| file_err(Path::new(&a.to_string()), e))?,
            ),
            None => None,
        };
        // The port line is what scripts wait for (with --listen 127.0.0.1:0).
        println!("listening on http://{local}");
        if let Some(l) = &tls_listener {
            let a = l
                .local_addr()
                .map_err(|e| file_err(Path::new("--tls-listen"), e))?;
            println!("listening on https://{a}");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let app = router(state);
        let plain = net::serve(
            listener,
            app.clone(),
            limits.clone(),
            None,
            stopped(stop_rx.clone()),
        );
        let secure = async {
            if let (Some(l), Some(acc)) = (tls_listener, acceptor) {
                net::serve(
                    l,
                    app.clone(),
                    limits.clone(),
                    Some(acc),
                    stopped(stop_rx.clone()),
                )
                .await;
            }
        };
        let signal = async move {
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            } else {
                let _ = tokio::signal::ctrl_c().await;
            }
            let _ = stop_tx.send(true);
        };
        tokio::join!(plain, secure, signal);
        Ok(())
    })
}

/// Remove `.tmp-*` files in `DIR/blobs` (uploads cut short by a crash; a finished upload is
/// linked under its name before its temporary file is removed). Returns how many.
pub fn remove_blob_temps(data_dir: &Path) -> Result<usize, ServiceError> {
    let dir = data_dir.join("blobs");
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(file_err(&dir, e)),
    };
    let mut n = 0;
    for e in rd {
        let e = e.map_err(|e| file_err(&dir, e))?;
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            std::fs::remove_file(e.path()).map_err(|err| file_err(&e.path(), err))?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod noise_tests {
    use super::*;

    #[test]
    fn a_flood_across_a_second_counts_every_refusal_turned_away_once() {
        let mut b = NoiseBudget::new();
        let t = 1_000_000;
        let mut written = 0;
        let mut counted = 0;
        // 1000 refusals in second t, then 1000 in second t + 1.
        for i in 0..2000u64 {
            if b.take(t + i / 1000) {
                written += 1;
                counted += b.drain_suppressed();
            }
        }
        counted += b.drain_suppressed();
        assert_eq!(written, NOISE_BURST + NOISE_PER_SECOND);
        assert_eq!(counted, 2000 - written);
        // A quiet minute refills the burst, never more.
        assert!(b.take(t + 61));
        let mut more = 1;
        while b.take(t + 61) {
            more += 1;
        }
        assert_eq!(more, NOISE_BURST);
    }
}

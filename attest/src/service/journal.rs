//! Durable state of the key-release service: an embedded ACID store (redb) for registered
//! keys, spent single-use keys and upload tokens, and the append-only audit log (JSON lines,
//! each with the SHA-256 of the previous line, fdatasync'd).
//!
//! One committer thread owns both. Handlers send a [`Job`] and wait for its reply; the
//! committer takes every job queued at that moment, applies them in one redb write
//! transaction (durable commit = fsync), then appends their audit records in one write and
//! fdatasyncs the log, then replies. So a registration or release is acknowledged only after
//! it and its audit record are on disk (group commit keeps that cheap under load), and the
//! store is committed before the audit record is written: a crash in between leaves a spent
//! key without a record of a response that was never sent, never a record of a release whose
//! spend was lost.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use sha2::{Digest, Sha256};

pub const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
pub const SPENT: TableDefinition<&str, &str> = TableDefinition::new("spent");
pub const UPLOADS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("uploads");

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("store {path}: {reason}")]
    Store { path: PathBuf, reason: String },
    #[error("audit log {path}: {reason}")]
    Audit { path: PathBuf, reason: String },
    #[error("the journal thread stopped")]
    Stopped,
}

/// What a job changes in the store.
pub enum Op {
    /// Only an audit record (refusals, blob writes by parties).
    None,
    /// Insert a key record unless the key id exists.
    Register { key_id: String, record: Vec<u8> },
    /// Spend single-use keys for a session (those already spent are dropped from the release)
    /// and store an upload token (SHA-256 of it) for the session's output.
    Release {
        single_use: Vec<String>,
        session: String,
        upload_token_hash: [u8; 32],
        upload_record: Vec<u8>,
    },
    /// Use an upload token once.
    UseUpload { token_hash: [u8; 32] },
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Conflict,
    /// Release: the single-use keys that were already spent (and must not be released).
    AlreadySpent(Vec<String>),
    UploadRefused,
}

pub struct Job {
    pub op: Op,
    /// The audit record; the committer adds `seq`, `prev` and, for a release whose every key
    /// was already spent, turns it into a refusal.
    pub audit: serde_json::Map<String, serde_json::Value>,
    pub reply: tokio::sync::oneshot::Sender<Result<Outcome, String>>,
}

#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Job>,
    pub db: std::sync::Arc<redb::Database>,
}

/// Where the audit log stands after recovery.
#[derive(Debug)]
pub struct AuditState {
    pub records: u64,
    pub last_hash: [u8; 32],
    /// Bytes of a torn last line removed at start (only after a power loss mid-write).
    pub truncated: u64,
}

/// Read the audit log, check every line parses and chains, drop a torn (newline-less) tail.
pub fn recover_audit(path: &Path) -> Result<AuditState, JournalError> {
    let err = |reason: String| JournalError::Audit {
        path: path.to_path_buf(),
        reason,
    };
    let mut state = AuditState {
        records: 0,
        last_hash: [0u8; 32],
        truncated: 0,
    };
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(state);
    };
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    for (i, line) in bytes[..whole].lines().enumerate() {
        let line = line.map_err(|e| err(format!("line {}: {e}", i + 1)))?;
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| err(format!("line {}: not JSON: {e}", i + 1)))?;
        let prev = v["prev"].as_str().unwrap_or_default();
        if prev != hex::encode(state.last_hash) {
            return Err(err(format!(
                "line {}: hash chain broken (prev {prev})",
                i + 1
            )));
        }
        if v["seq"].as_u64() != Some(state.records + 1) {
            return Err(err(format!(
                "line {}: seq {} out of order",
                i + 1,
                v["seq"]
            )));
        }
        state.records += 1;
        state.last_hash = Sha256::digest(line.as_bytes()).into();
    }
    if whole < bytes.len() {
        state.truncated = (bytes.len() - whole) as u64;
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| err(e.to_string()))?;
        f.set_len(whole as u64).map_err(|e| err(e.to_string()))?;
        f.sync_all().map_err(|e| err(e.to_string()))?;
    }
    Ok(state)
}

impl Journal {
    pub fn open(data_dir: &Path) -> Result<(Journal, AuditState), JournalError> {
        let db_path = data_dir.join("store.redb");
        let store_err = |reason: String| JournalError::Store {
            path: db_path.clone(),
            reason,
        };
        let db = redb::Database::create(&db_path).map_err(|e| store_err(e.to_string()))?;
        {
            let w = db.begin_write().map_err(|e| store_err(e.to_string()))?;
            w.open_table(KEYS).map_err(|e| store_err(e.to_string()))?;
            w.open_table(SPENT).map_err(|e| store_err(e.to_string()))?;
            w.open_table(UPLOADS)
                .map_err(|e| store_err(e.to_string()))?;
            w.commit().map_err(|e| store_err(e.to_string()))?;
        }
        let audit_path = data_dir.join("audit.log");
        let state = recover_audit(&audit_path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&audit_path)
            .map_err(|e| JournalError::Audit {
                path: audit_path.clone(),
                reason: e.to_string(),
            })?;
        let db = std::sync::Arc::new(db);
        let (tx, rx) = mpsc::channel::<Job>();
        let committer = Committer {
            db: db.clone(),
            file,
            seq: state.records,
            prev: state.last_hash,
        };
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || committer.run(rx))
            .map_err(|e| store_err(e.to_string()))?;
        Ok((Journal { tx, db }, state))
    }

    /// Submit a job and wait until it is durable.
    pub async fn commit(
        &self,
        op: Op,
        audit: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Outcome, String> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job { op, audit, reply })
            .map_err(|_| JournalError::Stopped.to_string())?;
        rx.await.map_err(|_| JournalError::Stopped.to_string())?
    }

    /// All registered key records (key id, record bytes).
    pub fn keys(&self) -> Result<Vec<(String, Vec<u8>)>, String> {
        let r = self.db.begin_read().map_err(|e| e.to_string())?;
        let t = r.open_table(KEYS).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for e in t.iter().map_err(|e| e.to_string())? {
            let (k, v) = e.map_err(|e| e.to_string())?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    pub fn is_spent(&self, key_id: &str) -> Result<bool, String> {
        let r = self.db.begin_read().map_err(|e| e.to_string())?;
        let t = r.open_table(SPENT).map_err(|e| e.to_string())?;
        Ok(t.get(key_id).map_err(|e| e.to_string())?.is_some())
    }

    pub fn upload(&self, token_hash: &[u8; 32]) -> Result<Option<Vec<u8>>, String> {
        let r = self.db.begin_read().map_err(|e| e.to_string())?;
        let t = r.open_table(UPLOADS).map_err(|e| e.to_string())?;
        Ok(t.get(token_hash)
            .map_err(|e| e.to_string())?
            .map(|v| v.value().to_vec()))
    }
}

struct Committer {
    db: std::sync::Arc<redb::Database>,
    file: File,
    seq: u64,
    prev: [u8; 32],
}

impl Committer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            while jobs.len() < 1024 {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            self.batch(jobs);
        }
    }

    fn batch(&mut self, mut jobs: Vec<Job>) {
        let outcomes = match self.apply(&mut jobs) {
            Ok(o) => o,
            Err(e) => {
                for j in jobs {
                    let _ = j.reply.send(Err(format!("store: {e}")));
                }
                return;
            }
        };
        let mut buf = Vec::new();
        let (seq0, prev0) = (self.seq, self.prev);
        for j in &mut jobs {
            self.seq += 1;
            j.audit.insert("seq".into(), self.seq.into());
            j.audit.insert("prev".into(), hex::encode(self.prev).into());
            let line = serde_json::to_string(&j.audit).expect("audit record serializes");
            self.prev = Sha256::digest(line.as_bytes()).into();
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data());
        if let Err(e) = written {
            // Nothing is acknowledged; the next batch continues the chain from the last
            // record known to be on disk (a torn tail is dropped at the next start).
            self.seq = seq0;
            self.prev = prev0;
            for j in jobs {
                let _ = j.reply.send(Err(format!("audit log: {e}")));
            }
            return;
        }
        for (j, o) in jobs.into_iter().zip(outcomes) {
            let _ = j.reply.send(Ok(o));
        }
    }

    fn apply(&mut self, jobs: &mut [Job]) -> Result<Vec<Outcome>, redb::Error> {
        let w = self.db.begin_write()?;
        let mut outcomes = Vec::with_capacity(jobs.len());
        {
            let mut keys = w.open_table(KEYS)?;
            let mut spent = w.open_table(SPENT)?;
            let mut uploads = w.open_table(UPLOADS)?;
            for j in jobs.iter_mut() {
                let o = match &j.op {
                    Op::None => Outcome::Done,
                    Op::Register { key_id, record } => {
                        if keys.get(key_id.as_str())?.is_some() {
                            j.audit.insert("decision".into(), "refuse".into());
                            j.audit.insert("code".into(), "conflict".into());
                            Outcome::Conflict
                        } else {
                            keys.insert(key_id.as_str(), record.as_slice())?;
                            Outcome::Done
                        }
                    }
                    Op::Release {
                        single_use,
                        session,
                        upload_token_hash,
                        upload_record,
                    } => {
                        let mut already = Vec::new();
                        for k in single_use {
                            if spent.get(k.as_str())?.is_some() {
                                already.push(k.clone());
                            }
                        }
                        if already.is_empty() {
                            for k in single_use {
                                spent.insert(k.as_str(), session.as_str())?;
                            }
                            uploads.insert(upload_token_hash, upload_record.as_slice())?;
                            Outcome::Done
                        } else {
                            j.audit.insert("decision".into(), "refuse".into());
                            j.audit.insert("code".into(), "key_spent".into());
                            j.audit.insert(
                                "message".into(),
                                format!(
                                    "single-use key(s) already released: {}",
                                    already.join(", ")
                                )
                                .into(),
                            );
                            j.audit
                                .insert("keys".into(), serde_json::Value::Array(vec![]));
                            Outcome::AlreadySpent(already)
                        }
                    }
                    Op::UseUpload { token_hash } => {
                        let rec = uploads.get(token_hash)?.map(|v| v.value().to_vec());
                        match rec {
                            Some(r) if !r.is_empty() => {
                                // An empty record marks a used token.
                                uploads.insert(token_hash, &[][..])?;
                                Outcome::Done
                            }
                            _ => {
                                j.audit.insert("decision".into(), "refuse".into());
                                j.audit.insert("code".into(), "unauthorized".into());
                                Outcome::UploadRefused
                            }
                        }
                    }
                };
                outcomes.push(o);
            }
        }
        w.commit()?;
        Ok(outcomes)
    }
}

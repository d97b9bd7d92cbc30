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

mod audit;
mod store;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use redb::{ReadableDatabase, ReadableTable};
use sha2::{Digest, Sha256};

pub use audit::{bound_record, recover_audit, AuditState, MAX_FIELD, MAX_MESSAGE};
use store::{Store, StoreCell};
pub use store::{BUDGETS, DEBITS, KEYS, SPENT, UPLOADS};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("store {path}: {reason}")]
    Store { path: PathBuf, reason: String },
    #[error("audit log {path}: {reason}")]
    Audit { path: PathBuf, reason: String },
    #[error("the journal thread stopped")]
    Stopped,
    /// A read or write of the open store failed (redb's message).
    #[error("{0}")]
    Db(String),
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
    /// Debit a query's ε from a budget, once per query id: the debit is stored with the
    /// budget's new total (`debit.spent`), or the stored one is returned.
    Debit {
        budget: String,
        debit: dcr_protocol::dp::Debit,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Conflict,
    /// Release: the single-use keys that were already spent (and must not be released).
    AlreadySpent(Vec<String>),
    UploadRefused,
    /// The debit as stored (JSON), new or an earlier one for the same query id.
    Debited {
        record: Vec<u8>,
        replay: bool,
    },
    /// The debit would take the budget past its total: nano-ε spent so far.
    Exhausted {
        spent: u64,
    },
    /// Another run already debited this query (its stored debit names that run).
    DebitedElsewhere,
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
    db: Store,
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
            w.open_table(BUDGETS)
                .map_err(|e| store_err(e.to_string()))?;
            w.open_table(DEBITS).map_err(|e| store_err(e.to_string()))?;
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
        let db: Store = std::sync::Arc::new(StoreCell {
            slot: std::sync::RwLock::new(Some(std::sync::Arc::new(db))),
            path: db_path.clone(),
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let committer = Committer {
            db: db.clone(),
            file,
            path: audit_path.clone(),
            len: state.len,
            dirty: false,
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
    ) -> Result<Outcome, JournalError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job { op, audit, reply })
            .map_err(|_| JournalError::Stopped)?;
        rx.await
            .map_err(|_| JournalError::Stopped)?
            .map_err(JournalError::Db)
    }

    /// A read of the store (retried once on a reopened database).
    fn read<T>(
        &self,
        f: impl FnMut(&redb::Database) -> Result<T, String>,
    ) -> Result<T, JournalError> {
        self.db.with(f).map_err(JournalError::Db)
    }

    /// The key records whose id starts with `prefix` (a range scan: the cost of a release
    /// depends on its own contract's keys, not on what other parties stored).
    pub fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, JournalError> {
        self.read(|db| -> Result<_, String> {
            let r = db.begin_read().map_err(|e| e.to_string())?;
            let t = r.open_table(KEYS).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for e in t.range(prefix..).map_err(|e| e.to_string())? {
                let (k, v) = e.map_err(|e| e.to_string())?;
                if !k.value().starts_with(prefix) {
                    break;
                }
                out.push((k.value().to_string(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    pub fn is_spent(&self, key_id: &str) -> Result<bool, JournalError> {
        self.read(|db| -> Result<_, String> {
            let r = db.begin_read().map_err(|e| e.to_string())?;
            let t = r.open_table(SPENT).map_err(|e| e.to_string())?;
            Ok(t.get(key_id).map_err(|e| e.to_string())?.is_some())
        })
    }

    /// Nano-ε spent from each budget whose key starts with `prefix`.
    pub fn budgets_with_prefix(&self, prefix: &str) -> Result<Vec<(String, u64)>, JournalError> {
        self.read(|db| -> Result<_, String> {
            let r = db.begin_read().map_err(|e| e.to_string())?;
            let t = r.open_table(BUDGETS).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for e in t.range(prefix..).map_err(|e| e.to_string())? {
                let (k, v) = e.map_err(|e| e.to_string())?;
                if !k.value().starts_with(prefix) {
                    break;
                }
                out.push((k.value().to_string(), v.value()));
            }
            Ok(out)
        })
    }

    pub fn upload(&self, token_hash: &[u8; 32]) -> Result<Option<Vec<u8>>, JournalError> {
        self.read(|db| -> Result<_, String> {
            let r = db.begin_read().map_err(|e| e.to_string())?;
            let t = r.open_table(UPLOADS).map_err(|e| e.to_string())?;
            Ok(t.get(token_hash)
                .map_err(|e| e.to_string())?
                .map(|v| v.value().to_vec()))
        })
    }
}

struct Committer {
    db: Store,
    file: File,
    path: PathBuf,
    /// Length of the log up to the last record known to be on disk.
    len: u64,
    /// A failed write may have left bytes after `len` that could not be cut off yet.
    dirty: bool,
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
        // A batch of refusals only (no store change) does not touch the store.
        let outcomes = if jobs.iter().all(|j| matches!(j.op, Op::None)) {
            jobs.iter().map(|_| Outcome::Done).collect()
        } else {
            // Nothing is committed when a transaction fails (and redb refuses everything
            // after an I/O error until reopened, which `with` does).
            let db = self.db.clone();
            let applied = db.with(|db| Self::apply(db, &mut jobs));
            match applied {
                Ok(o) => o,
                Err(e) => {
                    for j in jobs {
                        let _ = j.reply.send(Err(format!("store: {e}")));
                    }
                    return;
                }
            }
        };
        if self.dirty {
            if let Err(e) = self.cut_back() {
                for j in jobs {
                    let _ = j.reply.send(Err(format!("audit log: {e}")));
                }
                return;
            }
        }
        let mut buf = Vec::new();
        let (seq0, prev0) = (self.seq, self.prev);
        for j in &mut jobs {
            self.seq += 1;
            bound_record(&mut j.audit);
            j.audit.insert("seq".into(), self.seq.into());
            j.audit.insert("prev".into(), hex::encode(self.prev).into());
            let line = serde_json::to_string(&j.audit).unwrap_or_default();
            self.prev = Sha256::digest(line.as_bytes()).into();
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data());
        if let Err(e) = written {
            // Nothing is acknowledged. Cut the log back to the last record known to be on
            // disk (a partial write must not be continued by the next batch), and continue
            // the chain from that record.
            self.seq = seq0;
            self.prev = prev0;
            self.dirty = true;
            let cut = match self.cut_back() {
                Ok(()) => String::new(),
                Err(c) => format!(" (and {c})"),
            };
            for j in jobs {
                let _ = j
                    .reply
                    .send(Err(format!("audit log {}: {e}{cut}", self.path.display())));
            }
            return;
        }
        self.len += buf.len() as u64;
        for (j, o) in jobs.into_iter().zip(outcomes) {
            let _ = j.reply.send(Ok(o));
        }
    }

    /// ftruncate the log to the last good record (a shrink needs no free space).
    fn cut_back(&mut self) -> Result<(), String> {
        self.file
            .set_len(self.len)
            .and_then(|_| self.file.sync_all())
            .map_err(|e| format!("truncating back to {} bytes failed: {e}", self.len))?;
        self.dirty = false;
        Ok(())
    }

    fn apply(db: &redb::Database, jobs: &mut [Job]) -> Result<Vec<Outcome>, redb::Error> {
        let w = db.begin_write()?;
        let mut outcomes = Vec::with_capacity(jobs.len());
        {
            let mut keys = w.open_table(KEYS)?;
            let mut spent = w.open_table(SPENT)?;
            let mut uploads = w.open_table(UPLOADS)?;
            let mut budgets = w.open_table(BUDGETS)?;
            let mut debits = w.open_table(DEBITS)?;
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
                    Op::Debit { budget, debit } => {
                        let key = format!("{budget}#{}", debit.query_id);
                        let stored = debits.get(key.as_str())?.map(|v| v.value().to_vec());
                        let same_run = |r: &[u8]| {
                            serde_json::from_slice::<dcr_protocol::dp::Debit>(r)
                                .is_ok_and(|d| d.run == debit.run)
                        };
                        if let Some(record) = stored {
                            if same_run(&record) {
                                j.audit.insert("decision".into(), "replay".into());
                                Outcome::Debited {
                                    record,
                                    replay: true,
                                }
                            } else {
                                j.audit.insert("decision".into(), "refuse".into());
                                j.audit.insert("code".into(), "already_debited".into());
                                Outcome::DebitedElsewhere
                            }
                        } else {
                            let spent = budgets.get(budget.as_str())?.map_or(0, |v| v.value());
                            match spent.checked_add(debit.epsilon.0) {
                                Some(after) if after <= debit.total.0 => {
                                    let mut d = debit.clone();
                                    d.spent = dcr_protocol::dp::Epsilon(after);
                                    let record = serde_json::to_vec(&d).expect("a typed document");
                                    budgets.insert(budget.as_str(), after)?;
                                    debits.insert(key.as_str(), record.as_slice())?;
                                    j.audit.insert("decision".into(), "debit".into());
                                    j.audit.insert("spent".into(), d.spent.to_string().into());
                                    Outcome::Debited {
                                        record,
                                        replay: false,
                                    }
                                }
                                _ => {
                                    j.audit.insert("decision".into(), "refuse".into());
                                    j.audit.insert("code".into(), "budget_exhausted".into());
                                    j.audit.insert(
                                        "spent".into(),
                                        dcr_protocol::dp::Epsilon(spent).to_string().into(),
                                    );
                                    Outcome::Exhausted { spent }
                                }
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

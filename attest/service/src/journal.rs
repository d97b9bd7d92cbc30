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
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
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

/// The store, replaceable: after an I/O error (a full disk) redb refuses every later
/// operation until the database is reopened. Whoever meets an error closes the failed
/// instance; the next user opens a fresh one (which fails again while the disk is full).
struct StoreCell {
    slot: std::sync::RwLock<Option<std::sync::Arc<redb::Database>>>,
    path: PathBuf,
}

type Store = std::sync::Arc<StoreCell>;

impl StoreCell {
    /// The open database, opened first if a failed one was closed.
    fn get(&self) -> Result<std::sync::Arc<redb::Database>, String> {
        if let Some(db) = self.slot.read().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(db);
        }
        let mut slot = self.slot.write().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = slot.clone() {
            return Ok(db);
        }
        let db = std::sync::Arc::new(
            redb::Database::create(&self.path)
                .map_err(|e| format!("reopening {}: {e}", self.path.display()))?,
        );
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Close `failed` (unless someone already replaced it), waiting briefly for the readers
    /// that still hold it.
    fn reset(&self, failed: std::sync::Arc<redb::Database>) {
        let mut slot = self.slot.write().unwrap_or_else(|p| p.into_inner());
        let same = slot
            .as_ref()
            .is_some_and(|cur| std::sync::Arc::ptr_eq(cur, &failed));
        drop(failed);
        if !same {
            return;
        }
        if let Some(old) = slot.take() {
            let t0 = std::time::Instant::now();
            while std::sync::Arc::strong_count(&old) > 1
                && t0.elapsed() < std::time::Duration::from_secs(5)
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    /// Run `f` on the database; after an error, once more on a reopened one (the error may
    /// be the latch of an earlier failure rather than a new one).
    fn with<T, E: std::fmt::Display>(
        &self,
        mut f: impl FnMut(&redb::Database) -> Result<T, E>,
    ) -> Result<T, String> {
        let db = self.get()?;
        match f(&db) {
            Ok(v) => Ok(v),
            Err(_) => {
                self.reset(db);
                let db = self.get()?;
                f(&db).map_err(|e| {
                    let msg = e.to_string();
                    self.reset(db);
                    msg
                })
            }
        }
    }
}

#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Job>,
    db: Store,
}

/// Where the audit log stands after recovery.
#[derive(Debug)]
pub struct AuditState {
    pub records: u64,
    pub last_hash: [u8; 32],
    /// Length of the log up to and including the last good record.
    pub len: u64,
    /// Bytes of a torn or corrupt tail moved out of the log at start (after a crash or a
    /// failed write mid-record), and the quarantine file now holding them.
    pub truncated: u64,
    pub quarantine: Option<PathBuf>,
}

/// Is this line an audit record at all (a JSON object with a `seq`)? Used to tell a corrupt
/// tail (nothing recognisable after the first bad line) from corruption in the middle.
/// The longest audit line recovery reads (records are bounded far below this: every string
/// field is cut to 128 characters, messages to 512).
const MAX_RECORD: u64 = 1 << 20;

fn looks_like_record(line: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(line)
        .map(|v| v.get("seq").is_some())
        .unwrap_or(false)
}

/// Read the audit log and check every line parses and chains. A torn or corrupt tail — the
/// bytes after the last good, chain-valid record, when no record follows the first bad line —
/// is moved to `audit.log.torn-<n>` and cut off the log. Anything else wrong (a bad line with
/// records after it) refuses: those records were acknowledged and must not be dropped.
pub fn recover_audit(path: &Path) -> Result<AuditState, JournalError> {
    let err = |reason: String| JournalError::Audit {
        path: path.to_path_buf(),
        reason,
    };
    let mut state = AuditState {
        records: 0,
        last_hash: [0u8; 32],
        len: 0,
        truncated: 0,
        quarantine: None,
    };
    // Streamed: memory is one line, whatever the log's size (a log grown by a flood of
    // refusals must not need its own size in RAM to restart).
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(state),
        Err(e) => return Err(err(e.to_string())),
    };
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    let mut pos = 0u64;
    let mut bad: Option<(u64, String)> = None;
    loop {
        let line_no = state.records + 1;
        line.clear();
        let n = (&mut r)
            .take(MAX_RECORD + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| err(e.to_string()))?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            bad = Some((
                line_no,
                if n as u64 > MAX_RECORD {
                    format!("longer than {MAX_RECORD} bytes")
                } else {
                    "no newline (torn write)".into()
                },
            ));
            break;
        }
        let body = &line[..n - 1];
        let v: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                bad = Some((line_no, format!("not JSON: {e}")));
                break;
            }
        };
        let prev = v["prev"].as_str().unwrap_or_default();
        if prev != hex::encode(state.last_hash) {
            bad = Some((line_no, format!("hash chain broken (prev {prev:.64})")));
            break;
        }
        if v["seq"].as_u64() != Some(state.records + 1) {
            bad = Some((
                line_no,
                format!("seq {:.32} out of order", v["seq"].to_string()),
            ));
            break;
        }
        state.records += 1;
        state.last_hash = Sha256::digest(body).into();
        pos += n as u64;
    }
    state.len = pos;
    let Some((line_no, why)) = bad else {
        return Ok(state);
    };
    // The tail from the first bad line: records after it mean corruption in the middle.
    let tail_reader = || -> Result<BufReader<File>, JournalError> {
        let mut f = File::open(path).map_err(|e| err(e.to_string()))?;
        f.seek(SeekFrom::Start(pos))
            .map_err(|e| err(e.to_string()))?;
        Ok(BufReader::with_capacity(1 << 20, f))
    };
    let mut t = tail_reader()?;
    let mut later = 0u64;
    let mut first = true;
    loop {
        line.clear();
        let n = (&mut t)
            .take(MAX_RECORD + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| err(e.to_string()))?;
        if n == 0 {
            break;
        }
        if !first && line.last() == Some(&b'\n') && looks_like_record(&line[..n - 1]) {
            later += 1;
        }
        first = false;
    }
    if later > 0 {
        return Err(err(format!(
            "line {line_no}: {why}, and {later} record(s) follow it: corruption in the middle \
             of the log, not a torn tail (refusing to start; inspect the file)"
        )));
    }
    // Quarantine the tail (never overwrite an earlier quarantine file), then cut it off.
    let mut n = 1u32;
    let (qpath, mut q) = loop {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".torn-{n}"));
        let qp = PathBuf::from(name);
        match OpenOptions::new().write(true).create_new(true).open(&qp) {
            Ok(f) => break (qp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100_000 => n += 1,
            Err(e) => return Err(err(format!("quarantine {}: {e}", qp.display()))),
        }
    };
    let copied = std::io::copy(&mut tail_reader()?, &mut q)
        .and_then(|n| q.sync_all().map(|_| n))
        .map_err(|e| err(format!("quarantine {}: {e}", qpath.display())))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| err(e.to_string()))?;
    f.set_len(state.len).map_err(|e| err(e.to_string()))?;
    f.sync_all().map_err(|e| err(e.to_string()))?;
    state.truncated = copied;
    state.quarantine = Some(qpath);
    Ok(state)
}

fn sync_dir(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
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

/// Longest string kept in an audit field (`message`: [`MAX_MESSAGE`]); longer ones are cut
/// (at a character boundary) and marked with `…`, so a request cannot grow the log by more
/// than a bounded amount whatever it sends.
pub const MAX_FIELD: usize = 128;
pub const MAX_MESSAGE: usize = 512;

fn bound_str(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
}

/// Bound every string (and array) in an audit record.
pub fn bound_record(m: &mut serde_json::Map<String, serde_json::Value>) {
    use serde_json::Value;
    for (k, v) in m.iter_mut() {
        let max = if k == "message" {
            MAX_MESSAGE
        } else {
            MAX_FIELD
        };
        match v {
            Value::String(s) => bound_str(s, max),
            Value::Array(a) => {
                for x in a.iter_mut() {
                    if let Value::String(s) = x {
                        bound_str(s, MAX_FIELD);
                    }
                }
            }
            _ => {}
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let d = std::env::temp_dir().join(format!("dcr-journal-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// `n` chained records as the committer writes them.
    fn chain(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = [0u8; 32];
        for seq in 1..=n {
            let line = serde_json::json!({
                "seq": seq, "prev": hex::encode(prev), "time": 1, "kind": "release",
                "decision": "refuse", "code": "unknown_session",
            })
            .to_string();
            prev = Sha256::digest(line.as_bytes()).into();
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn torn_tail_is_quarantined_and_cut() {
        let d = temp_dir("torn");
        let log = d.join("audit.log");
        let good = chain(3);
        let mut bytes = good.clone();
        bytes.extend_from_slice(b"{\"seq\":4,\"prev\":\"ab");
        std::fs::write(&log, &bytes).unwrap();
        let st = recover_audit(&log).unwrap();
        assert_eq!(st.records, 3);
        assert_eq!(st.len, good.len() as u64);
        assert_eq!(std::fs::read(&log).unwrap(), good);
        let q = st.quarantine.expect("quarantined");
        assert_eq!(q, d.join("audit.log.torn-1"));
        assert_eq!(std::fs::read(&q).unwrap(), b"{\"seq\":4,\"prev\":\"ab");
        // A second torn tail goes to the next quarantine file; the first is kept.
        let mut bytes = good.clone();
        bytes.extend_from_slice(b"garbage\n\0\0\0");
        std::fs::write(&log, &bytes).unwrap();
        let st = recover_audit(&log).unwrap();
        assert_eq!(st.quarantine, Some(d.join("audit.log.torn-2")));
        assert!(d.join("audit.log.torn-1").exists());
        assert_eq!(std::fs::read(&log).unwrap(), good);
        // A clean log is left alone.
        let st = recover_audit(&log).unwrap();
        assert_eq!((st.records, st.quarantine), (3, None));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn corrupt_last_record_is_quarantined() {
        let d = temp_dir("corrupt-last");
        let log = d.join("audit.log");
        let mut bytes = chain(3);
        // The last record's bytes damaged (still a JSON line, chain broken).
        let n = bytes.len();
        bytes[n - 3] = b'X';
        std::fs::write(&log, &bytes).unwrap();
        let st = recover_audit(&log).unwrap();
        assert_eq!(st.records, 2);
        assert!(st.quarantine.is_some());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn corruption_in_the_middle_refuses() {
        let d = temp_dir("middle");
        let log = d.join("audit.log");
        // What the old committer left after ENOSPC: a torn record, the next record appended
        // on the same line, then more records.
        let good = chain(5);
        let lines: Vec<&[u8]> = good.split(|&b| b == b'\n').collect();
        let mut bytes = Vec::new();
        for l in &lines[..2] {
            bytes.extend_from_slice(l);
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(&lines[2][..10]);
        for l in &lines[2..5] {
            bytes.extend_from_slice(l);
            bytes.push(b'\n');
        }
        std::fs::write(&log, &bytes).unwrap();
        let e = recover_audit(&log).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("middle"), "{e}");
        assert!(!e.contains('\n'));
        assert_eq!(std::fs::read(&log).unwrap(), bytes, "nothing changed");
        // A flipped byte in an early record: refused too.
        let mut bytes = chain(4);
        bytes[20] ^= 1;
        std::fs::write(&log, &bytes).unwrap();
        assert!(recover_audit(&log).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn audit_fields_are_bounded() {
        let mut m = serde_json::Map::new();
        m.insert("session_id".into(), "é".repeat(1 << 19).into());
        m.insert("message".into(), "x".repeat(1 << 20).into());
        m.insert("keys".into(), serde_json::json!(["k".repeat(1000)]));
        bound_record(&mut m);
        assert!(serde_json::to_string(&m).unwrap().len() < 1024);
    }
}

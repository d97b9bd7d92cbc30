//! The embedded store (redb): its tables and the cell that reopens it after a failure.

use std::path::PathBuf;

use redb::TableDefinition;

pub const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
pub const SPENT: TableDefinition<&str, &str> = TableDefinition::new("spent");
pub const UPLOADS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("uploads");
/// Privacy budgets: `<contract digest>/<analysis>/<budget>` → nano-ε spent. Never deleted:
/// re-registering a contract does not reset its budget (a new budget is a new contract).
pub const BUDGETS: TableDefinition<&str, u64> = TableDefinition::new("budgets");
/// Debits: `<budget key>#<query id>` → the debit (JSON of `dcr_protocol::dp::Debit`).
pub const DEBITS: TableDefinition<&str, &[u8]> = TableDefinition::new("debits");

/// The store, replaceable: after an I/O error (a full disk) redb refuses every later
/// operation until the database is reopened. Whoever meets an error closes the failed
/// instance; the next user opens a fresh one (which fails again while the disk is full).
pub(super) struct StoreCell {
    pub(super) slot: std::sync::RwLock<Option<std::sync::Arc<redb::Database>>>,
    pub(super) path: PathBuf,
}

pub(super) type Store = std::sync::Arc<StoreCell>;

impl StoreCell {
    /// The open database, opened first if a failed one was closed.
    pub(super) fn get(&self) -> Result<std::sync::Arc<redb::Database>, String> {
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
    pub(super) fn reset(&self, failed: std::sync::Arc<redb::Database>) {
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
    pub(super) fn with<T, E: std::fmt::Display>(
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

//! The one redb file (`store.redb`) holding everything the store persists: the
//! Raft log and vote, the state machine's objects with their applied index and
//! membership, and the last snapshot.
//!
//! Layout:
//! - `raft_log`: log index → JSON of the openraft entry.
//! - `raft_meta`: `vote`, `committed`, `last_purged` → JSON.
//! - `objects`: (table, id) → (version, prost bytes).
//! - `sm_meta`: `last_applied`, `membership` → JSON. Written in the same
//!   transaction as the objects, so the two never disagree after a crash.
//! - `snapshot`: `meta` (JSON) and `data` (the snapshot bytes).

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};

use redb::{Database, ReadableTable, Table, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{corrupt, db_error};
use crate::raft::{LogId, Membership};
use crate::seal::{log_context, object_context, Sealer, SNAPSHOT_CONTEXT};
use crate::{Object, StoreError, Versioned};

/// The file name of the database inside the state directory.
pub(crate) const FILE_NAME: &str = "store.redb";

pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
pub(crate) const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
pub(crate) const OBJECTS: TableDefinition<(&str, &str), (u64, &[u8])> =
    TableDefinition::new("objects");
pub(crate) const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

pub(crate) const KEY_VOTE: &str = "vote";
pub(crate) const KEY_COMMITTED: &str = "committed";
pub(crate) const KEY_LAST_PURGED: &str = "last_purged";
/// This member's own election timeout (local, not replicated), in milliseconds.
pub(crate) const KEY_ELECTION_TIMEOUT: &str = "election_timeout_ms";
pub(crate) const KEY_LAST_APPLIED: &str = "last_applied";
pub(crate) const KEY_MEMBERSHIP: &str = "membership";
pub(crate) const KEY_SNAPSHOT_META: &str = "meta";
pub(crate) const KEY_SNAPSHOT_DATA: &str = "data";

/// The open database, shared by the log store, the state machine and the
/// readers. `close` drops the redb handle at shutdown, so that the file lock
/// is released even while some openraft task still holds a clone of this.
pub(crate) struct Db {
    path: PathBuf,
    db: RwLock<Option<Database>>,
    /// Seals every log entry, object and snapshot written, with this manager's data key.
    pub(crate) sealer: Sealer,
}

/// redb's page cache and write buffer, together. redb's default is 1 GiB, which it
/// fills as the file grows: a leader at 1,000 nodes and 10,000 tasks held 40 MiB of
/// pages it does not read again (reads go to the manager's cluster view; a
/// follower's catch-up and a snapshot read the file once, through the OS page cache).
const CACHE_BYTES: usize = 4 * 1024 * 1024;

impl Db {
    /// Opens or creates the file, creates missing tables and checks that the
    /// metadata decodes. Blocking.
    pub(crate) fn open(path: &Path, sealer: Sealer) -> Result<Db, StoreError> {
        // Verifying every page on open reads the whole file: cheap for a
        // control-plane store of a few MB, and it turns a file damaged
        // outside redb into `Corrupted` instead of a panic on first use.
        let db = Database::builder()
            .set_check_integrity_on_open(true)
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| db_error(path, e))?;
        let db = Db {
            path: path.to_path_buf(),
            db: RwLock::new(Some(db)),
            sealer,
        };
        db.with(|d| {
            let txn = d.begin_write().map_err(|e| db.err(e))?;
            {
                txn.open_table(LOG).map_err(|e| db.err(e))?;
                txn.open_table(OBJECTS).map_err(|e| db.err(e))?;
                txn.open_table(SNAPSHOT).map_err(|e| db.err(e))?;
                let raft = txn.open_table(RAFT_META).map_err(|e| db.err(e))?;
                db.get_json::<crate::raft::Vote>(&raft, KEY_VOTE)?;
                db.get_json::<Option<LogId>>(&raft, KEY_COMMITTED)?;
                db.get_json::<LogId>(&raft, KEY_LAST_PURGED)?;
                let sm = txn.open_table(SM_META).map_err(|e| db.err(e))?;
                db.last_applied(&sm)?;
                db.get_json::<Membership>(&sm, KEY_MEMBERSHIP)?;
            }
            txn.commit().map_err(|e| db.err(e))
        })?;
        Ok(db)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the open database; fails with `Shutdown` once closed.
    pub(crate) fn with<R>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let guard: RwLockReadGuard<'_, Option<Database>> = self
            .db
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match guard.as_ref() {
            Some(db) => f(db),
            None => Err(StoreError::Shutdown),
        }
    }

    /// Closes the file. Blocking: waits for running transactions.
    pub(crate) fn close(&self) {
        let mut guard = self
            .db
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.take();
    }

    /// Maps a redb error of this file.
    pub(crate) fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        db_error(&self.path, e)
    }

    /// Reads and decodes a JSON value; undecodable bytes mean a corrupt file.
    pub(crate) fn get_json<T: DeserializeOwned>(
        &self,
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let Some(raw) = table.get(key).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(raw.value())
            .map(Some)
            .map_err(|e| corrupt(&self.path, format!("bad {key:?} record: {e}")))
    }

    pub(crate) fn put_json<T: Serialize>(
        &self,
        table: &mut Table<'_, &'static str, &'static [u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let raw = serde_json::to_vec(value)
            .map_err(|e| StoreError::Database(format!("cannot encode {key:?}: {e}")))?;
        table.insert(key, raw.as_slice()).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The state machine's last applied log id.
    pub(crate) fn last_applied(
        &self,
        sm_meta: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<Option<LogId>, StoreError> {
        Ok(self
            .get_json::<Option<LogId>>(sm_meta, KEY_LAST_APPLIED)?
            .flatten())
    }

    /// The state machine's applied index (0 before anything was applied).
    pub(crate) fn applied_index(
        &self,
        sm_meta: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> Result<u64, StoreError> {
        Ok(self.last_applied(sm_meta)?.map_or(0, |id| id.index))
    }

    /// An object's stored bytes, sealed.
    pub(crate) fn seal_object(&self, table: &str, id: &str, plain: &[u8]) -> Vec<u8> {
        self.sealer.seal(&object_context(table, id), plain)
    }

    /// An object's bytes as written, from what is stored.
    pub(crate) fn open_object(
        &self,
        table: &str,
        id: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        self.sealer
            .open(&object_context(table, id), sealed)
            .map_err(|_| {
                corrupt(
                    &self.path,
                    format!("object {table}/{id} does not decrypt with this manager's data key"),
                )
            })
    }

    pub(crate) fn seal_entry(&self, index: u64, plain: &[u8]) -> Vec<u8> {
        self.sealer.seal(&log_context(index), plain)
    }

    pub(crate) fn open_entry(&self, index: u64, sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.sealer.open(&log_context(index), sealed).map_err(|_| {
            corrupt(
                &self.path,
                format!("raft log entry {index} does not decrypt with this manager's data key"),
            )
        })
    }

    pub(crate) fn seal_snapshot(&self, plain: &[u8]) -> Vec<u8> {
        self.sealer.seal(SNAPSHOT_CONTEXT, plain)
    }

    pub(crate) fn open_snapshot(&self, sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.sealer.open(SNAPSHOT_CONTEXT, sealed).map_err(|_| {
            corrupt(
                &self.path,
                "the snapshot does not decrypt with this manager's data key",
            )
        })
    }

    /// Seals every record of a store written before encryption at rest, in one
    /// transaction, then compacts the file so that freed pages holding plaintext are
    /// given back.
    pub(crate) fn seal_plaintext(&self) -> Result<(), StoreError> {
        self.with(|d| {
            let txn = d.begin_write().map_err(|e| self.err(e))?;
            {
                let mut log = txn.open_table(LOG).map_err(|e| self.err(e))?;
                let mut rows = Vec::new();
                for row in log.iter().map_err(|e| self.err(e))? {
                    let (k, v) = row.map_err(|e| self.err(e))?;
                    rows.push((k.value(), self.seal_entry(k.value(), v.value())));
                }
                for (k, v) in rows {
                    log.insert(k, v.as_slice()).map_err(|e| self.err(e))?;
                }
                let mut objects = txn.open_table(OBJECTS).map_err(|e| self.err(e))?;
                let mut rows = Vec::new();
                for row in objects.iter().map_err(|e| self.err(e))? {
                    let (k, v) = row.map_err(|e| self.err(e))?;
                    let (table, id) = k.value();
                    let (version, data) = v.value();
                    let sealed = self.seal_object(table, id, data);
                    rows.push((table.to_string(), id.to_string(), version, sealed));
                }
                for (table, id, version, sealed) in rows {
                    objects
                        .insert((table.as_str(), id.as_str()), (version, sealed.as_slice()))
                        .map_err(|e| self.err(e))?;
                }
                let mut snap = txn.open_table(SNAPSHOT).map_err(|e| self.err(e))?;
                let data = snap
                    .get(KEY_SNAPSHOT_DATA)
                    .map_err(|e| self.err(e))?
                    .map(|v| self.seal_snapshot(v.value()));
                if let Some(data) = data {
                    snap.insert(KEY_SNAPSHOT_DATA, data.as_slice())
                        .map_err(|e| self.err(e))?;
                }
            }
            txn.commit().map_err(|e| self.err(e))
        })?;
        let mut guard = self
            .db
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(db) = guard.as_mut() {
            db.compact().map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Reads one object of type `T`.
    pub(crate) fn read_object<T: Object>(
        &self,
        objects: &impl ReadableTable<(&'static str, &'static str), (u64, &'static [u8])>,
        id: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        let Some(raw) = objects.get((T::TABLE, id)).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let (version, sealed) = raw.value();
        let bytes = self.open_object(T::TABLE, id, sealed)?;
        decode_object(T::TABLE, id, version, &bytes).map(Some)
    }

    /// Reads all objects of type `T`, in id order.
    pub(crate) fn list_objects<T: Object>(
        &self,
        objects: &impl ReadableTable<(&'static str, &'static str), (u64, &'static [u8])>,
    ) -> Result<Vec<Versioned<T>>, StoreError> {
        let mut out = Vec::new();
        for row in objects.range((T::TABLE, "")..).map_err(|e| self.err(e))? {
            let (key, value) = row.map_err(|e| self.err(e))?;
            let (table, id) = key.value();
            if table != T::TABLE {
                break;
            }
            let (version, sealed) = value.value();
            let bytes = self.open_object(table, id, sealed)?;
            out.push(decode_object(table, id, version, &bytes)?);
        }
        Ok(out)
    }
}

pub(crate) fn decode_object<T: Object>(
    table: &str,
    id: &str,
    version: u64,
    bytes: &[u8],
) -> Result<Versioned<T>, StoreError> {
    let value = T::decode(bytes).map_err(|e| StoreError::Decode {
        table: table.to_string(),
        id: id.to_string(),
        message: e.to_string(),
    })?;
    Ok(Versioned { version, value })
}

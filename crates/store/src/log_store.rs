//! openraft's log storage on redb: the Raft log, the vote, the committed
//! index and the last purged log id.
//!
//! Every call runs its redb transaction on tokio's blocking pool, since
//! durable commits fsync. Log appends and the vote use redb's default durable
//! commits: Raft's safety depends on them surviving a crash.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader};
use redb::{ReadableDatabase, ReadableTable};

use crate::db::{Db, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, LOG, RAFT_META};
use crate::error::corrupt;
use crate::raft::{run_blocking, Entry, LogId, StorageError, TypeConfig, Vote};
use crate::StoreError;

/// The Raft log in the store's redb file. Cheap to clone (it is also its own
/// log reader).
#[derive(Clone)]
pub(crate) struct LogStore {
    db: Arc<Db>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Db>) -> LogStore {
        LogStore { db }
    }
}

fn decode_entry(db: &Db, index: u64, sealed: &[u8]) -> Result<Entry, StoreError> {
    let raw = db.open_entry(index, sealed)?;
    serde_json::from_slice(&raw).map_err(|e| {
        corrupt(
            db.path(),
            format!("bad raft log entry at index {index}: {e}"),
        )
    })
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let range: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        let db = self.db.clone();
        run_blocking(ErrorSubject::Logs, ErrorVerb::Read, move || {
            db.with(|d| {
                let txn = d.begin_read().map_err(|e| db.err(e))?;
                let log = txn.open_table(LOG).map_err(|e| db.err(e))?;
                let mut entries = Vec::new();
                for row in log.range(range).map_err(|e| db.err(e))? {
                    let (index, raw) = row.map_err(|e| db.err(e))?;
                    entries.push(decode_entry(&db, index.value(), raw.value())?);
                }
                Ok(entries)
            })
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let db = self.db.clone();
        run_blocking(ErrorSubject::Logs, ErrorVerb::Read, move || {
            db.with(|d| {
                let txn = d.begin_read().map_err(|e| db.err(e))?;
                let meta = txn.open_table(RAFT_META).map_err(|e| db.err(e))?;
                let last_purged_log_id = db.get_json::<LogId>(&meta, KEY_LAST_PURGED)?;
                let log = txn.open_table(LOG).map_err(|e| db.err(e))?;
                let last = match log.last().map_err(|e| db.err(e))? {
                    Some((index, raw)) => {
                        Some(decode_entry(&db, index.value(), raw.value())?.log_id)
                    }
                    None => None,
                };
                Ok(LogState {
                    last_log_id: last.or(last_purged_log_id),
                    last_purged_log_id,
                })
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.write_meta(
            ErrorSubject::Vote,
            KEY_VOTE,
            vote,
            redb::Durability::Immediate,
        )
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(ErrorSubject::Vote, KEY_VOTE).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not durable on its own: the next log append or vote makes it so. A
        // committed index lost in a crash is only a hint lost (openraft then
        // re-applies less at startup), never a safety issue.
        self.write_meta(
            ErrorSubject::Store,
            KEY_COMMITTED,
            committed,
            redb::Durability::None,
        )
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .read_meta::<Option<LogId>>(ErrorSubject::Store, KEY_COMMITTED)
            .await?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            let raw = serde_json::to_vec(&entry).map_err(|e| {
                crate::raft::storage_error(ErrorSubject::Logs, ErrorVerb::Write, &e)
            })?;
            rows.push((
                entry.log_id.index,
                self.db.seal_entry(entry.log_id.index, &raw),
            ));
        }
        let db = self.db.clone();
        run_blocking(ErrorSubject::Logs, ErrorVerb::Write, move || {
            db.with(|d| {
                let txn = d.begin_write().map_err(|e| db.err(e))?;
                {
                    let mut log = txn.open_table(LOG).map_err(|e| db.err(e))?;
                    for (index, raw) in &rows {
                        log.insert(*index, raw.as_slice()).map_err(|e| db.err(e))?;
                    }
                }
                txn.commit().map_err(|e| db.err(e))
            })
        })
        .await?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        run_blocking(ErrorSubject::Logs, ErrorVerb::Delete, move || {
            db.with(|d| {
                let txn = d.begin_write().map_err(|e| db.err(e))?;
                {
                    let mut log = txn.open_table(LOG).map_err(|e| db.err(e))?;
                    log.retain_in(log_id.index.., |_, _| false)
                        .map_err(|e| db.err(e))?;
                }
                txn.commit().map_err(|e| db.err(e))
            })
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        run_blocking(ErrorSubject::Logs, ErrorVerb::Delete, move || {
            db.with(|d| {
                let txn = d.begin_write().map_err(|e| db.err(e))?;
                {
                    let mut meta = txn.open_table(RAFT_META).map_err(|e| db.err(e))?;
                    db.put_json(&mut meta, KEY_LAST_PURGED, &log_id)?;
                    let mut log = txn.open_table(LOG).map_err(|e| db.err(e))?;
                    log.retain_in(..=log_id.index, |_, _| false)
                        .map_err(|e| db.err(e))?;
                }
                txn.commit().map_err(|e| db.err(e))
            })
        })
        .await
    }
}

impl LogStore {
    async fn write_meta<T: serde::Serialize + Send + 'static>(
        &self,
        subject: ErrorSubject<u64>,
        key: &'static str,
        value: T,
        durability: redb::Durability,
    ) -> Result<(), StorageError> {
        let db = self.db.clone();
        run_blocking(subject, ErrorVerb::Write, move || {
            db.with(|d| {
                let mut txn = d.begin_write().map_err(|e| db.err(e))?;
                txn.set_durability(durability).map_err(|e| db.err(e))?;
                {
                    let mut meta = txn.open_table(RAFT_META).map_err(|e| db.err(e))?;
                    db.put_json(&mut meta, key, &value)?;
                }
                txn.commit().map_err(|e| db.err(e))
            })
        })
        .await
    }

    async fn read_meta<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        subject: ErrorSubject<u64>,
        key: &'static str,
    ) -> Result<Option<T>, StorageError> {
        let db = self.db.clone();
        run_blocking(subject, ErrorVerb::Read, move || {
            db.with(|d| {
                let txn = d.begin_read().map_err(|e| db.err(e))?;
                let meta = txn.open_table(RAFT_META).map_err(|e| db.err(e))?;
                db.get_json(&meta, key)
            })
        })
        .await
    }
}

//! Watches: a consistent snapshot of the state plus every change committed
//! after it, so leader loops can start from the snapshot and follow events
//! with no gap and no duplicate.
//!
//! How the seam is closed: the state machine commits each redb write
//! transaction and publishes its events while holding the publish lock (`Hub`);
//! [`crate::Store::watch`] takes that same lock while it opens a redb read
//! transaction and subscribes. A read transaction sees exactly the commits
//! made before it, and every later commit is published after the subscription,
//! so the snapshot at index N is followed by exactly the events above N. The
//! lock is only held for the commit itself on one side and for two cheap calls
//! on the other; the snapshot is read out of the read transaction after the
//! lock is released.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use prost::bytes::Bytes;
use redb::ReadTransaction;
use tokio::sync::broadcast;

use crate::db::{decode_object, Db, OBJECTS, SM_META};
use crate::{Object, StoreError, Versioned};

/// How many events a watcher may fall behind before it lags.
pub const WATCH_CAPACITY: usize = 4096;

/// The state at one index, and every change after it.
///
/// `events` is a bounded broadcast receiver. Its `recv` yields each committed
/// batch in index order. A watcher that falls more than [`WATCH_CAPACITY`]
/// events behind gets `Err(RecvError::Lagged(n))`: it missed `n` events and
/// must call [`crate::Store::watch`] again to rebuild from a fresh snapshot.
/// `Err(RecvError::Closed)` means the store shut down.
pub struct Watch {
    pub snapshot: Snapshot,
    pub events: broadcast::Receiver<Event>,
}

/// One committed batch: the Raft index it was applied at and what it changed.
/// Batches that changed nothing (failed checks, empty batches) have no event.
#[derive(Debug, Clone)]
pub struct Event {
    pub index: u64,
    pub changes: Vec<Change>,
}

/// One object written or deleted.
#[derive(Debug, Clone)]
pub enum Change {
    Put {
        table: String,
        id: String,
        version: u64,
        /// The object's prost encoding.
        data: Bytes,
    },
    Delete {
        table: String,
        id: String,
    },
}

impl Change {
    pub fn table(&self) -> &str {
        match self {
            Change::Put { table, .. } | Change::Delete { table, .. } => table,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Change::Put { id, .. } | Change::Delete { id, .. } => id,
        }
    }

    /// The written object, if this is a put to `T::TABLE`; `None` for a
    /// delete or another table.
    pub fn decode<T: Object>(&self) -> Option<Result<Versioned<T>, StoreError>> {
        match self {
            Change::Put {
                table,
                id,
                version,
                data,
            } if table == T::TABLE => Some(decode_object(table, id, *version, data)),
            _ => None,
        }
    }
}

/// A consistent, in-memory view of all objects at one Raft index.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    index: u64,
    tables: HashMap<String, BTreeMap<String, (u64, Bytes)>>,
}

impl Snapshot {
    /// The Raft index this view is at: the first event after it is above it.
    pub fn index(&self) -> u64 {
        self.index
    }

    pub fn get<T: Object>(&self, id: &str) -> Result<Option<Versioned<T>>, StoreError> {
        self.tables
            .get(T::TABLE)
            .and_then(|rows| rows.get(id))
            .map(|(version, data)| decode_object(T::TABLE, id, *version, data))
            .transpose()
    }

    /// All objects of type `T`, in id order.
    pub fn list<T: Object>(&self) -> Result<Vec<Versioned<T>>, StoreError> {
        self.tables
            .get(T::TABLE)
            .into_iter()
            .flatten()
            .map(|(id, (version, data))| decode_object(T::TABLE, id, *version, data))
            .collect()
    }

    /// Copies every object out of `txn`.
    pub(crate) fn load(db: &Db, txn: &ReadTransaction) -> Result<Snapshot, StoreError> {
        let meta = txn.open_table(SM_META).map_err(|e| db.err(e))?;
        let objects = txn.open_table(OBJECTS).map_err(|e| db.err(e))?;
        let mut snapshot = Snapshot {
            index: db.applied_index(&meta)?,
            tables: HashMap::new(),
        };
        for row in redb::ReadableTable::iter(&objects).map_err(|e| db.err(e))? {
            let (key, value) = row.map_err(|e| db.err(e))?;
            let (table, id) = key.value();
            let (version, sealed) = value.value();
            let data = db.open_object(table, id, sealed)?;
            snapshot
                .tables
                .entry(table.to_string())
                .or_default()
                .insert(id.to_string(), (version, Bytes::from(data)));
        }
        Ok(snapshot)
    }
}

/// Publishes committed changes to watchers (see the module doc for the lock).
/// The sender is dropped at shutdown so that watchers see `Closed`.
pub(crate) struct Hub {
    publish: Mutex<Option<broadcast::Sender<Event>>>,
}

/// Proof that the publish lock is held.
pub(crate) struct Publishing<'a>(MutexGuard<'a, Option<broadcast::Sender<Event>>>);

impl Hub {
    pub(crate) fn new() -> Hub {
        Hub::with_capacity(WATCH_CAPACITY)
    }

    pub(crate) fn with_capacity(capacity: usize) -> Hub {
        Hub {
            publish: Mutex::new(Some(broadcast::Sender::new(capacity))),
        }
    }

    /// Held while committing and publishing, and while subscribing.
    pub(crate) fn lock(&self) -> Publishing<'_> {
        // A panic while holding the lock cannot leave the sender half-updated,
        // so a poisoned lock is still usable.
        Publishing(
            self.publish
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Drops the sender: receivers get `Closed` after the buffered events.
    pub(crate) fn close(&self) {
        self.lock().0.take();
    }
}

impl Publishing<'_> {
    pub(crate) fn publish(&self, event: Event) {
        if let Some(tx) = self.0.as_ref() {
            // Fails only when nobody watches, which is fine.
            let _ = tx.send(event);
        }
    }

    /// `None` once the store is shut down.
    pub(crate) fn subscribe(&self) -> Option<broadcast::Receiver<Event>> {
        self.0.as_ref().map(broadcast::Sender::subscribe)
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::broadcast::error::RecvError;

    use super::*;

    fn event(index: u64) -> Event {
        Event {
            index,
            changes: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_lagging_watcher_learns_it_lagged_then_closed() {
        let hub = Hub::with_capacity(4);
        let mut events = hub.lock().subscribe().expect("open hub");
        for index in 1..=10 {
            hub.lock().publish(event(index));
        }
        assert!(matches!(events.recv().await, Err(RecvError::Lagged(6))));
        assert_eq!(events.recv().await.expect("kept events").index, 7);
        hub.close();
        for index in 8..=10 {
            assert_eq!(events.recv().await.expect("buffered").index, index);
        }
        assert!(matches!(events.recv().await, Err(RecvError::Closed)));
        assert!(hub.lock().subscribe().is_none());
    }
}

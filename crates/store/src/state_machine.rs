//! openraft's state machine on redb: applies committed batches to the objects
//! table, builds and installs snapshots, and publishes changes to watchers.
//!
//! Each `apply` call writes all its entries, the new applied index and the
//! membership in one redb write transaction, so the objects and the index
//! they reflect never disagree after a crash. The transaction runs on tokio's
//! blocking pool: its durable commit fsyncs.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use prost::bytes::Bytes;
use redb::{ReadableDatabase, ReadableTable, Table};
use serde::{Deserialize, Serialize};

use crate::batch::{Action, Request, Response};
use crate::db::{
    Db, KEY_LAST_APPLIED, KEY_MEMBERSHIP, KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_META, OBJECTS, SM_META,
    SNAPSHOT,
};
use crate::error::corrupt;
use crate::raft::{
    run_blocking, Entry, LogId, Membership, RaftSnapshot, SnapshotMeta, StorageError, TypeConfig,
};
use crate::watch::{Change, Event, Hub};
use crate::StoreError;

type ObjectsTable<'t> = Table<'t, (&'static str, &'static str), (u64, &'static [u8])>;

/// The bytes of a snapshot: every object. Its index and membership travel in
/// openraft's `SnapshotMeta`.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    objects: Vec<SnapshotObject>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotObject {
    table: String,
    id: String,
    version: u64,
    #[serde(with = "crate::hex")]
    data: Vec<u8>,
}

/// The applied state in the store's redb file. Cheap to clone (it is also
/// its own snapshot builder).
#[derive(Clone)]
pub(crate) struct StateMachine {
    db: Arc<Db>,
    hub: Arc<Hub>,
}

impl StateMachine {
    pub(crate) fn new(db: Arc<Db>, hub: Arc<Hub>) -> StateMachine {
        StateMachine { db, hub }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        let db = self.db.clone();
        run_blocking(ErrorSubject::StateMachine, ErrorVerb::Read, move || {
            db.with(|d| {
                let txn = d.begin_read().map_err(|e| db.err(e))?;
                let meta = txn.open_table(SM_META).map_err(|e| db.err(e))?;
                let applied = db.last_applied(&meta)?;
                let membership = db
                    .get_json::<Membership>(&meta, KEY_MEMBERSHIP)?
                    .unwrap_or_default();
                Ok((applied, membership))
            })
        })
        .await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let (db, hub) = (self.db.clone(), self.hub.clone());
        run_blocking(ErrorSubject::StateMachine, ErrorVerb::Write, move || {
            apply_entries(&db, &hub, entries)
        })
        .await
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let (db, hub, meta) = (self.db.clone(), self.hub.clone(), meta.clone());
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        run_blocking(subject, ErrorVerb::Write, move || {
            install(&db, &hub, meta, snapshot.into_inner())
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<RaftSnapshot>, StorageError> {
        let db = self.db.clone();
        run_blocking(ErrorSubject::Snapshot(None), ErrorVerb::Read, move || {
            db.with(|d| {
                let txn = d.begin_read().map_err(|e| db.err(e))?;
                let table = txn.open_table(SNAPSHOT).map_err(|e| db.err(e))?;
                let Some(meta) = db.get_json::<SnapshotMeta>(&table, KEY_SNAPSHOT_META)? else {
                    return Ok(None);
                };
                let data = match table.get(KEY_SNAPSHOT_DATA).map_err(|e| db.err(e))? {
                    Some(raw) => db.open_snapshot(raw.value())?,
                    None => return Err(corrupt(db.path(), "snapshot metadata without data")),
                };
                Ok(Some(RaftSnapshot {
                    meta,
                    snapshot: Box::new(Cursor::new(data)),
                }))
            })
        })
        .await
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<RaftSnapshot, StorageError> {
        let db = self.db.clone();
        run_blocking(ErrorSubject::Snapshot(None), ErrorVerb::Write, move || {
            build(&db)
        })
        .await
    }
}

/// Applies `entries` in one write transaction, then commits and publishes
/// their events under the watch hub's lock.
fn apply_entries(db: &Db, hub: &Hub, entries: Vec<Entry>) -> Result<Vec<Response>, StoreError> {
    db.with(|d| {
        let txn = d.begin_write().map_err(|e| db.err(e))?;
        let mut responses = Vec::with_capacity(entries.len());
        let mut events = Vec::new();
        {
            let mut objects = txn.open_table(OBJECTS).map_err(|e| db.err(e))?;
            let mut meta = txn.open_table(SM_META).map_err(|e| db.err(e))?;
            let mut last_applied = None;
            for entry in entries {
                last_applied = Some(entry.log_id);
                let index = entry.log_id.index;
                match entry.payload {
                    EntryPayload::Blank => responses.push(Response::Applied),
                    EntryPayload::Normal(request) => {
                        let (response, changes) = apply_request(db, &mut objects, index, request)?;
                        if !changes.is_empty() {
                            events.push(Event { index, changes });
                        }
                        responses.push(response);
                    }
                    EntryPayload::Membership(membership) => {
                        let stored = Membership::new(Some(entry.log_id), membership);
                        db.put_json(&mut meta, KEY_MEMBERSHIP, &stored)?;
                        responses.push(Response::Applied);
                    }
                }
            }
            db.put_json(&mut meta, KEY_LAST_APPLIED, &last_applied)?;
        }
        let publishing = hub.lock();
        txn.commit().map_err(|e| db.err(e))?;
        for event in events {
            publishing.publish(event);
        }
        Ok(responses)
    })
}

/// Checks every expectation of `request` first (against the state left by
/// the ops before it in the batch), then writes all ops or none.
fn apply_request(
    db: &Db,
    objects: &mut ObjectsTable<'_>,
    index: u64,
    request: Request,
) -> Result<(Response, Vec<Change>), StoreError> {
    let mut pending: HashMap<(&str, &str), Option<u64>> = HashMap::new();
    for op in &request.ops {
        let key = (op.table.as_str(), op.id.as_str());
        let actual = match pending.get(&key) {
            Some(version) => *version,
            None => objects
                .get(key)
                .map_err(|e| db.err(e))?
                .map(|row| row.value().0),
        };
        if !op.expect.accepts(actual) {
            let conflict = Response::Conflict {
                table: op.table.clone(),
                id: op.id.clone(),
                expected: op.expect,
                actual,
            };
            return Ok((conflict, Vec::new()));
        }
        let after = match op.action {
            Action::Put(_) => Some(index),
            Action::Delete => None,
        };
        pending.insert(key, after);
    }

    let mut changes = Vec::with_capacity(request.ops.len());
    for op in request.ops {
        let key = (op.table.as_str(), op.id.as_str());
        match op.action {
            Action::Put(data) => {
                let sealed = db.seal_object(key.0, key.1, &data);
                objects
                    .insert(key, (index, sealed.as_slice()))
                    .map_err(|e| db.err(e))?;
                changes.push(Change::Put {
                    table: op.table,
                    id: op.id,
                    version: index,
                    data: Bytes::from(data),
                });
            }
            Action::Delete => {
                let existed = objects.remove(key).map_err(|e| db.err(e))?.is_some();
                if existed {
                    changes.push(Change::Delete {
                        table: op.table,
                        id: op.id,
                    });
                }
            }
        }
    }
    Ok((Response::Applied, changes))
}

/// Serializes the applied state and saves it as the current snapshot.
fn build(db: &Db) -> Result<RaftSnapshot, StoreError> {
    db.with(|d| {
        let (meta, data) = {
            let txn = d.begin_read().map_err(|e| db.err(e))?;
            let sm = txn.open_table(SM_META).map_err(|e| db.err(e))?;
            let last_log_id = db.last_applied(&sm)?;
            let last_membership = db
                .get_json::<Membership>(&sm, KEY_MEMBERSHIP)?
                .unwrap_or_default();
            let table = txn.open_table(OBJECTS).map_err(|e| db.err(e))?;
            let mut objects = Vec::new();
            for row in table.iter().map_err(|e| db.err(e))? {
                let (key, value) = row.map_err(|e| db.err(e))?;
                let (table, id) = key.value();
                let (version, sealed) = value.value();
                objects.push(SnapshotObject {
                    table: table.to_string(),
                    id: id.to_string(),
                    version,
                    data: db.open_object(table, id, sealed)?,
                });
            }
            let data = serde_json::to_vec(&SnapshotData { objects })
                .map_err(|e| StoreError::Database(format!("cannot encode snapshot: {e}")))?;
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let index = last_log_id.map_or(0, |id| id.index);
            let meta = SnapshotMeta {
                last_log_id,
                last_membership,
                snapshot_id: format!("{index}-{nanos}"),
            };
            (meta, data)
        };
        save_snapshot(db, d, &meta, &data)?;
        Ok(RaftSnapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    })
}

/// Saves a snapshot as current unless a newer one is already saved (an
/// install may have raced a build).
fn save_snapshot(
    db: &Db,
    d: &redb::Database,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<(), StoreError> {
    let txn = d.begin_write().map_err(|e| db.err(e))?;
    {
        let mut table = txn.open_table(SNAPSHOT).map_err(|e| db.err(e))?;
        let saved = db.get_json::<SnapshotMeta>(&table, KEY_SNAPSHOT_META)?;
        if saved.is_some_and(|saved| saved.last_log_id > meta.last_log_id) {
            return Ok(());
        }
        db.put_json(&mut table, KEY_SNAPSHOT_META, meta)?;
        table
            .insert(KEY_SNAPSHOT_DATA, db.seal_snapshot(data).as_slice())
            .map_err(|e| db.err(e))?;
    }
    txn.commit().map_err(|e| db.err(e))
}

/// Replaces the whole applied state by a snapshot received from a leader, in
/// one transaction, and tells watchers what changed.
fn install(db: &Db, hub: &Hub, meta: SnapshotMeta, data: Vec<u8>) -> Result<(), StoreError> {
    let parsed: SnapshotData = serde_json::from_slice(&data).map_err(|e| {
        StoreError::Raft(format!(
            "received snapshot {} does not decode: {e}",
            meta.snapshot_id
        ))
    })?;
    let index = meta.last_log_id.map_or(0, |id| id.index);
    db.with(|d| {
        let txn = d.begin_write().map_err(|e| db.err(e))?;
        let mut changes = Vec::new();
        {
            let mut objects = txn.open_table(OBJECTS).map_err(|e| db.err(e))?;
            let mut old: BTreeMap<(String, String), u64> = BTreeMap::new();
            for row in objects.iter().map_err(|e| db.err(e))? {
                let (key, value) = row.map_err(|e| db.err(e))?;
                let (table, id) = key.value();
                old.insert((table.to_string(), id.to_string()), value.value().0);
            }
            objects.retain(|_, _| false).map_err(|e| db.err(e))?;
            for object in parsed.objects {
                let sealed = db.seal_object(&object.table, &object.id, &object.data);
                objects
                    .insert(
                        (object.table.as_str(), object.id.as_str()),
                        (object.version, sealed.as_slice()),
                    )
                    .map_err(|e| db.err(e))?;
                let key = (object.table, object.id);
                if old.remove(&key) != Some(object.version) {
                    let (table, id) = key;
                    changes.push(Change::Put {
                        table,
                        id,
                        version: object.version,
                        data: Bytes::from(object.data),
                    });
                }
            }
            changes.extend(
                old.into_keys()
                    .map(|(table, id)| Change::Delete { table, id }),
            );
            let mut sm = txn.open_table(SM_META).map_err(|e| db.err(e))?;
            db.put_json(&mut sm, KEY_LAST_APPLIED, &meta.last_log_id)?;
            db.put_json(&mut sm, KEY_MEMBERSHIP, &meta.last_membership)?;
            let mut snapshot = txn.open_table(SNAPSHOT).map_err(|e| db.err(e))?;
            db.put_json(&mut snapshot, KEY_SNAPSHOT_META, &meta)?;
            snapshot
                .insert(KEY_SNAPSHOT_DATA, db.seal_snapshot(&data).as_slice())
                .map_err(|e| db.err(e))?;
        }
        let publishing = hub.lock();
        txn.commit().map_err(|e| db.err(e))?;
        if !changes.is_empty() {
            publishing.publish(Event { index, changes });
        }
        tracing::info!(
            index,
            snapshot = %meta.snapshot_id,
            "installed a snapshot of the cluster state from the leader"
        );
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, RaftSnapshotBuilder};
    use tempfile::TempDir;

    use super::*;
    use crate::batch::{Expect, Op};
    use crate::db::FILE_NAME;

    fn open() -> (TempDir, StateMachine, Arc<Hub>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(
            Db::open(
                &dir.path().join(FILE_NAME),
                crate::seal::KeyFiles::new(dir.path())
                    .create(&crate::Kek::Local)
                    .expect("key"),
            )
            .expect("open db"),
        );
        let hub = Arc::new(Hub::new());
        (dir, StateMachine::new(db, hub.clone()), hub)
    }

    fn puts(index: u64, ids: &[&str]) -> Entry {
        let ops = ids
            .iter()
            .map(|id| Op {
                table: "t".to_string(),
                id: id.to_string(),
                expect: Expect::Any,
                action: Action::Put(format!("{id}@{index}").into_bytes()),
            })
            .collect();
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request { ops }),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn installing_a_snapshot_replaces_objects_and_tells_watchers_the_difference() {
        let (_dir_a, mut a, _) = open();
        a.apply([puts(1, &["w", "x"]), puts(2, &["y"])])
            .await
            .expect("apply a");
        let (_dir_b, mut b, hub_b) = open();
        b.apply([puts(1, &["w", "y"]), puts(2, &["z"])])
            .await
            .expect("apply b");

        let snapshot = a.build_snapshot().await.expect("build");
        let mut events = hub_b.lock().subscribe().expect("subscribe");
        b.install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .expect("install");

        let event = events.try_recv().expect("one event for the install");
        assert_eq!(event.index, 2);
        let summary: Vec<String> = event
            .changes
            .iter()
            .map(|c| match c {
                Change::Put { id, version, .. } => format!("put {id}@{version}"),
                Change::Delete { id, .. } => format!("delete {id}"),
            })
            .collect();
        // w is at the same version on both sides: no change.
        assert_eq!(summary, ["put x@1", "put y@2", "delete z"]);

        let (applied, _) = b.applied_state().await.expect("applied");
        assert_eq!(applied, snapshot.meta.last_log_id);
        let current = b
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("saved");
        assert_eq!(current.meta, snapshot.meta);
        let rebuilt = b.build_snapshot().await.expect("rebuild");
        assert_eq!(rebuilt.snapshot.into_inner(), current.snapshot.into_inner());
    }
}

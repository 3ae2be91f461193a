//! [`Store`]: the handle the manager uses to read, commit and watch cluster
//! state, hiding the Raft node and the redb file behind it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::ServerState;
use redb::ReadableDatabase;
use tracing::info;

use crate::batch::{Request, Response};
use crate::db::{Db, FILE_NAME, KEY_ELECTION_TIMEOUT, OBJECTS, RAFT_META};
use crate::error::corrupt;
use crate::log_store::LogStore;
use crate::network::Network;
use crate::raft::{self, NodeId, Raft};
use crate::state_machine::StateMachine;
use crate::watch::{Hub, Snapshot, Watch};
use crate::{Batch, Object, StoreError, Versioned};

/// The replicated store of cluster state. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    raft_id: NodeId,
    addr: String,
    raft: Raft,
    db: Arc<Db>,
    hub: Arc<Hub>,
    contacts: crate::network::Contacts,
    /// What wraps the data key now.
    kek: std::sync::Mutex<crate::Kek>,
    snapshot_interval: Arc<std::sync::atomic::AtomicU64>,
    dir: std::path::PathBuf,
}

/// Room kept free in the store's directory: writes that would leave less are refused.
const MIN_FREE: u64 = 8 << 20;

/// Bytes free to an unprivileged writer in the file system holding `dir`.
fn free_space(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// The applied state, exported (for a backup, or to re-form a cluster).
#[derive(Debug, Clone, Default)]
pub struct Export {
    /// The Raft index it was read at.
    pub index: u64,
    pub objects: Vec<ExportedObject>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExportedObject {
    pub table: String,
    pub id: String,
    /// The object's encoded bytes.
    pub data: Vec<u8>,
}

/// How a store is opened.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// What wraps the data key (see [`crate::seal`]).
    pub kek: crate::Kek,
    /// Snapshot, and compact the log, every this many applied entries (changeable
    /// later with [`Store::set_snapshot_interval`]).
    pub snapshot_interval: u64,
    /// A follower that hears no leader for this long (up to half as long again,
    /// randomized) calls an election.
    pub election_timeout: Duration,
}

/// Swarm mode's default, and ours.
pub const DEFAULT_SNAPSHOT_INTERVAL: u64 = 10_000;
/// About a second: long enough that a busy machine's pauses do not depose a working
/// leader, short enough to fail over well within 2 s.
pub const DEFAULT_ELECTION_TIMEOUT: Duration = Duration::from_millis(600);

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kek: crate::Kek::Local,
            snapshot_interval: DEFAULT_SNAPSHOT_INTERVAL,
            election_timeout: DEFAULT_ELECTION_TIMEOUT,
        }
    }
}

/// Entries kept behind a snapshot (at most; half the snapshot interval if less), so a
/// briefly lagging follower catches up from the log instead of a full snapshot.
const KEEP_BEHIND_SNAPSHOT: u64 = 500;

/// Triggers a snapshot whenever `interval` entries were applied since the last one, and
/// compacts the log behind it.
async fn snapshots(
    raft: Raft,
    interval: Arc<std::sync::atomic::AtomicU64>,
    dir: std::path::PathBuf,
) {
    let mut metrics = raft.metrics();
    loop {
        let (applied, snapshot) = {
            let m = metrics.borrow_and_update();
            (
                m.last_applied.map_or(0, |id| id.index),
                m.snapshot.map_or(0, |id| id.index),
            )
        };
        let every = interval.load(std::sync::atomic::Ordering::Relaxed);
        let room = free_space(&dir).is_none_or(|f| f >= 2 * MIN_FREE);
        if applied >= snapshot + every && room {
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
            // Wait for it to land, then compact the log behind it.
            let landed = tokio::time::timeout(
                Duration::from_secs(30),
                metrics.wait_for(|m| m.snapshot.map_or(0, |id| id.index) > snapshot),
            )
            .await
            .is_ok();
            let at = match landed {
                true => metrics.borrow().snapshot.map_or(0, |id| id.index),
                false => 0,
            };
            let keep = KEEP_BEHIND_SNAPSHOT.min(every / 2);
            if at > keep && raft.trigger().purge_log(at - keep).await.is_err() {
                return;
            }
            continue;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// How long a write may wait before the store checks whether a majority can be reached
/// at all (and fails it fast if not).
const QUORUM_CHECK_AFTER: Duration = Duration::from_millis(1500);
/// A peer heard from within this long counts as reachable.
/// (Ten heartbeat intervals: a loaded machine's pauses do not make a peer look gone.)
const REACHABLE_WITHIN: Duration = Duration::from_millis(1500);

impl Store {
    /// Opens (or creates) the store in `dir` (created if missing; the redb
    /// file `store.redb` lives inside). `raft_id` is this member's numeric
    /// Raft id, `addr` its advertised address (stored in the membership; not
    /// used by the network yet).
    ///
    /// A store that was bootstrapped before comes back with its objects,
    /// versions and membership, and elects itself leader without a new
    /// `bootstrap`. A garbled or truncated file gives [`StoreError::Corrupt`].
    pub async fn open(dir: &Path, raft_id: u64, addr: &str) -> Result<Store, StoreError> {
        Self::open_with(
            dir,
            raft_id,
            addr,
            Arc::new(crate::network::NoTransport),
            StoreConfig::default(),
        )
        .await
    }

    /// [`Store::open`] with a transport to the other managers, and how the data key is
    /// wrapped ([`StoreError::NeedsUnlock`] or [`StoreError::WrongUnlockKey`] when the
    /// store needs another unlock key than given).
    pub async fn open_with(
        dir: &Path,
        raft_id: u64,
        addr: &str,
        transport: Arc<dyn crate::network::RaftTransport>,
        config: StoreConfig,
    ) -> Result<Store, StoreError> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| StoreError::Io {
                context: format!("cannot create state directory {}", dir.display()),
                source,
            })?;
        let path = dir.join(FILE_NAME);
        let db = {
            let path = path.clone();
            let dir = dir.to_path_buf();
            let kek = config.kek.clone();
            tokio::task::spawn_blocking(move || -> Result<Db, StoreError> {
                let keys = crate::seal::KeyFiles::new(&dir);
                match keys.load(&kek)? {
                    Some(sealer) => Db::open(&path, sealer),
                    None => {
                        // A new store, or one written before encryption at rest (its
                        // records are sealed now, once).
                        let existed = path.exists();
                        let db = Db::open(&path, keys.create(&kek)?)?;
                        if existed {
                            db.seal_plaintext()?;
                            info!(path = %path.display(), "encrypted a store written in plaintext");
                        }
                        Ok(db)
                    }
                }
            })
            .await
        };
        let db = match db {
            Ok(db) => Arc::new(db?),
            // redb asserts on some damaged files: a panic while reading the
            // file is damage too, not a bug to crash on.
            Err(join) if join.is_panic() => {
                return Err(corrupt(&path, "the database library panicked reading it"))
            }
            Err(join) => return Err(StoreError::Database(join.to_string())),
        };
        let hub = Arc::new(Hub::new());
        let contacts: crate::network::Contacts = Default::default();
        let kek = std::sync::Mutex::new(config.kek.clone());
        // The election timeout the cluster last asked for, if this member stored one.
        let election_timeout = db
            .with(|d| {
                let txn = d.begin_read().map_err(|e| db.err(e))?;
                let meta = txn.open_table(RAFT_META).map_err(|e| db.err(e))?;
                db.get_json::<u64>(&meta, KEY_ELECTION_TIMEOUT)
            })?
            .map_or(config.election_timeout, Duration::from_millis);
        let snapshot_interval = Arc::new(std::sync::atomic::AtomicU64::new(
            config.snapshot_interval.max(1),
        ));
        let config = Arc::new(raft::config(election_timeout).map_err(StoreError::Raft)?);
        let raft = Raft::new(
            raft_id,
            config,
            Network {
                transport,
                contacts: contacts.clone(),
            },
            LogStore::new(db.clone()),
            StateMachine::new(db.clone(), hub.clone()),
        )
        .await
        .map_err(|e| StoreError::Raft(format!("cannot start raft from {}: {e}", path.display())))?;
        // A store that has a membership: wait until the Raft node reports it, so that
        // `members()` is right from the start (callers decide by it whether to wait for
        // their own election).
        if raft.is_initialized().await.unwrap_or(false) {
            let mut metrics = raft.metrics();
            let loaded = metrics.wait_for(|m| m.membership_config.membership().nodes().count() > 0);
            let _ = tokio::time::timeout(Duration::from_secs(5), loaded).await;
        }
        info!(raft_id, addr, path = %path.display(), "store opened");
        let store = Store {
            inner: Arc::new(Inner {
                raft_id,
                addr: addr.to_string(),
                raft,
                db,
                hub,
                contacts,
                kek,
                snapshot_interval: snapshot_interval.clone(),
                dir: dir.to_path_buf(),
            }),
        };
        tokio::spawn(snapshots(
            store.inner.raft.clone(),
            snapshot_interval,
            dir.to_path_buf(),
        ));
        Ok(store)
    }

    /// Snapshots (and compacts the log) every `n` applied entries from now on.
    pub fn set_snapshot_interval(&self, n: u64) {
        self.inner
            .snapshot_interval
            .store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Records the election timeout this member uses from its next start (openraft
    /// fixes it while running). Returns whether it changed.
    pub fn set_election_timeout(&self, d: Duration) -> Result<bool, StoreError> {
        let ms = d.as_millis() as u64;
        let db = &self.inner.db;
        db.with(|h| {
            let txn = h.begin_write().map_err(|e| db.err(e))?;
            let changed = {
                let mut meta = txn.open_table(RAFT_META).map_err(|e| db.err(e))?;
                let cur = db.get_json::<u64>(&meta, KEY_ELECTION_TIMEOUT)?;
                let running = self.inner.raft.config().election_timeout_min;
                let changed = cur.unwrap_or(running) != ms;
                if cur != Some(ms) {
                    db.put_json(&mut meta, KEY_ELECTION_TIMEOUT, &ms)?;
                }
                changed
            };
            txn.commit().map_err(|e| db.err(e))?;
            Ok(changed)
        })
    }

    /// The election timeout this member runs with now.
    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.raft.config().election_timeout_min)
    }

    /// The index of the last entry this member applied.
    pub fn applied_index(&self) -> u64 {
        self.inner
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |id| id.index)
    }

    /// Every object of the applied state, read in one transaction: the index it is at,
    /// and (table, id, bytes) in table and id order.
    pub fn export(&self) -> Result<Export, StoreError> {
        let db = &self.inner.db;
        db.with(|d| {
            let txn = d.begin_read().map_err(|e| db.err(e))?;
            let meta = txn.open_table(crate::db::SM_META).map_err(|e| db.err(e))?;
            let index = db.applied_index(&meta)?;
            let objects = txn.open_table(OBJECTS).map_err(|e| db.err(e))?;
            let mut rows = Vec::new();
            for row in redb::ReadableTable::iter(&objects).map_err(|e| db.err(e))? {
                let (key, value) = row.map_err(|e| db.err(e))?;
                let (table, id) = key.value();
                let data = db.open_object(table, id, value.value().1)?;
                rows.push(ExportedObject {
                    table: table.to_string(),
                    id: id.to_string(),
                    data,
                });
            }
            Ok(Export {
                index,
                objects: rows,
            })
        })
    }

    /// Waits until a leader is known (this member or another), at most `timeout`.
    pub async fn wait_leader_known(&self, timeout: Duration) -> Option<u64> {
        let mut metrics = self.inner.raft.metrics();
        let known = metrics.wait_for(|m| m.current_leader.is_some());
        let _ = tokio::time::timeout(timeout, known).await;
        self.leader()
    }

    /// Waits until this member has applied `index`, at most `timeout`; whether it has.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut metrics = self.inner.raft.metrics();
        let applied = metrics.wait_for(|m| m.last_applied.map_or(0, |id| id.index) >= index);
        let done = matches!(tokio::time::timeout(timeout, applied).await, Ok(Ok(_)));
        done
    }

    /// The snapshot interval in force.
    pub fn snapshot_interval(&self) -> u64 {
        self.inner
            .snapshot_interval
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The index of the last snapshot, if any (the log before it is compacted).
    pub fn snapshot_index(&self) -> Option<u64> {
        self.inner
            .raft
            .metrics()
            .borrow()
            .snapshot
            .map(|id| id.index)
    }

    /// Wraps the data key by `kek` from now on (autolock turned on or off, or its key
    /// rotated). Blocking file writes, done at once; a no-op if `kek` wraps it already.
    pub fn rewrap(&self, kek: &crate::Kek) -> Result<(), StoreError> {
        let mut cur = self
            .inner
            .kek
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let same = match (&*cur, kek) {
            (crate::Kek::Local, crate::Kek::Local) => true,
            (crate::Kek::Unlock(a), crate::Kek::Unlock(b)) => a == b,
            _ => false,
        };
        if same {
            return Ok(());
        }
        crate::seal::KeyFiles::new(&self.inner.dir).rewrap(&cur, kek)?;
        *cur = kek.clone();
        info!(
            autolock = matches!(kek, crate::Kek::Unlock(_)),
            "the store's data key is wrapped by a new key"
        );
        Ok(())
    }

    /// First start of a new cluster: makes this member the only voter of a
    /// new Raft membership. On a store that already has a membership (any
    /// bootstrapped or restarted one) it fails with
    /// [`StoreError::AlreadyInitialized`] and changes nothing; callers that
    /// want "bootstrap if new" can treat that error as success.
    pub async fn bootstrap(&self) -> Result<(), StoreError> {
        let raft = &self.inner.raft;
        if raft.is_initialized().await.map_err(fatal)? {
            return Err(StoreError::AlreadyInitialized);
        }
        let members = raft::single_member(self.inner.raft_id, &self.inner.addr);
        match raft.initialize(members).await {
            Ok(()) => {
                info!(
                    raft_id = self.inner.raft_id,
                    "bootstrapped a one-member raft group"
                );
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                Err(StoreError::AlreadyInitialized)
            }
            Err(RaftError::APIError(e)) => Err(StoreError::Raft(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(fatal(e)),
        }
    }

    /// Waits until this member is the leader, at most `timeout`.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<(), StoreError> {
        let id = self.inner.raft_id;
        let mut metrics = self.inner.raft.metrics();
        let leading =
            metrics.wait_for(|m| m.state == ServerState::Leader && m.current_leader == Some(id));
        let waited = tokio::time::timeout(timeout, leading).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Shutdown),
            Err(_) => Err(StoreError::LeaderTimeout(timeout)),
        }
    }

    /// Serves one Raft call from another manager (the transport's receiving side):
    /// `body` is what [`crate::network::RaftTransport::call`] sent; the reply is what it
    /// returns.
    ///
    /// `sender`, when the transport knows who called (its verified identity), must be
    /// the member the message speaks for: a message claiming another member's ID is
    /// refused.
    pub async fn handle_raft(
        &self,
        rpc: crate::network::RaftRpc,
        body: &[u8],
        sender: Option<u64>,
    ) -> Result<Vec<u8>, StoreError> {
        let check = |claimed: Option<&NodeId>| match (sender, claimed) {
            (Some(s), Some(c)) if s != *c => Err(StoreError::Raft(format!(
                "a raft message from member {s} speaks for member {c}: refused"
            ))),
            _ => Ok(()),
        };
        use crate::network::RaftRpc;
        let raft = &self.inner.raft;
        let bad = |e: serde_json::Error| StoreError::Raft(format!("malformed raft message: {e}"));
        let reply = match rpc {
            RaftRpc::AppendEntries => {
                let req: openraft::raft::AppendEntriesRequest<crate::raft::TypeConfig> =
                    serde_json::from_slice(body).map_err(bad)?;
                check(req.vote.leader_id().voted_for().as_ref())?;
                // Entries this member may not have room for are refused (the leader
                // sends them again later); heartbeats are not.
                if !req.entries.is_empty() {
                    self.check_space(body.len() as u64)?;
                }
                crate::network::heard_from(
                    &self.inner.contacts,
                    req.vote.leader_id().voted_for().unwrap_or_default(),
                );
                serde_json::to_vec(&raft.append_entries(req).await)
            }
            RaftRpc::Vote => {
                let req: openraft::raft::VoteRequest<NodeId> =
                    serde_json::from_slice(body).map_err(bad)?;
                check(req.vote.leader_id().voted_for().as_ref())?;
                crate::network::heard_from(
                    &self.inner.contacts,
                    req.vote.leader_id().voted_for().unwrap_or_default(),
                );
                serde_json::to_vec(&raft.vote(req).await)
            }
            RaftRpc::InstallSnapshot => {
                let req: openraft::raft::InstallSnapshotRequest<crate::raft::TypeConfig> =
                    serde_json::from_slice(body).map_err(bad)?;
                check(req.vote.leader_id().voted_for().as_ref())?;
                crate::network::heard_from(
                    &self.inner.contacts,
                    req.vote.leader_id().voted_for().unwrap_or_default(),
                );
                serde_json::to_vec(&raft.install_snapshot(req).await)
            }
        };
        reply.map_err(|e| StoreError::Raft(format!("cannot encode a raft reply: {e}")))
    }

    /// The Raft members: ID, address, and whether it votes.
    pub fn members(&self) -> Vec<Member> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let config = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = config.voter_ids().collect();
        config
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect()
    }

    /// The member that leads now, if one is known.
    pub fn leader(&self) -> Option<u64> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// Adds a manager: first as a learner, until it has caught up (from a snapshot if the
    /// log was compacted), then as a voter. Only on the leader.
    pub async fn add_voter(&self, id: u64, addr: &str) -> Result<(), StoreError> {
        let raft = &self.inner.raft;
        raft.add_learner(id, openraft::BasicNode::new(addr), true)
            .await
            .map_err(membership_err)?;
        let mut voters: std::collections::BTreeSet<NodeId> = self
            .members()
            .into_iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect();
        voters.insert(id);
        raft.change_membership(voters, false)
            .await
            .map_err(membership_err)?;
        info!(raft_id = id, addr, "manager added to the raft group");
        Ok(())
    }

    /// Removes a member from the Raft group (it stops voting and receiving the log). Only
    /// on the leader.
    pub async fn remove_member(&self, id: u64) -> Result<(), StoreError> {
        let voters: std::collections::BTreeSet<NodeId> = self
            .members()
            .into_iter()
            .filter(|m| m.voter && m.id != id)
            .map(|m| m.id)
            .collect();
        self.inner
            .raft
            .change_membership(voters, false)
            .await
            .map_err(membership_err)?;
        info!(raft_id = id, "member removed from the raft group");
        Ok(())
    }

    /// This member's leadership, as a stream: "leader since term T" or "follower".
    pub fn leadership(&self) -> LeadershipWatch {
        LeadershipWatch {
            rx: self.inner.raft.metrics(),
            id: self.inner.raft_id,
        }
    }

    /// Whether this member is the leader now.
    pub fn is_leader(&self) -> bool {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.inner.raft_id)
    }

    /// This member's Raft id.
    pub fn raft_id(&self) -> u64 {
        self.inner.raft_id
    }

    /// Reads one object from the applied state (not a linearizable read: a
    /// follower, once there are any, may lag). A point read in redb is a few
    /// page lookups, fine to do on an async thread.
    pub fn get<T: Object>(&self, id: &str) -> Result<Option<Versioned<T>>, StoreError> {
        let db = &self.inner.db;
        db.with(|d| {
            let txn = d.begin_read().map_err(|e| db.err(e))?;
            let objects = txn.open_table(OBJECTS).map_err(|e| db.err(e))?;
            db.read_object(&objects, id)
        })
    }

    /// Reads all objects of type `T` from the applied state, in id order.
    pub fn list<T: Object>(&self) -> Result<Vec<Versioned<T>>, StoreError> {
        let db = &self.inner.db;
        db.with(|d| {
            let txn = d.begin_read().map_err(|e| db.err(e))?;
            let objects = txn.open_table(OBJECTS).map_err(|e| db.err(e))?;
            db.list_objects(&objects)
        })
    }

    /// Commits `batch` through Raft, atomically: if any [`crate::Expect`]
    /// fails, nothing is written and the error is [`StoreError::Conflict`].
    /// Returns the Raft index the batch was applied at, which is the new
    /// version of every object it wrote. An empty batch still takes a log
    /// index (and produces no watch event).
    pub async fn commit(&self, batch: Batch) -> Result<u64, StoreError> {
        let size: usize = batch
            .ops
            .iter()
            .map(|op| match &op.action {
                crate::batch::Action::Put(d) => d.len() + op.id.len() + 64,
                crate::batch::Action::Delete => op.id.len() + 64,
            })
            .sum();
        // A write that may not fit is refused before Raft sees it: a storage error inside
        // Raft would stop this manager until a restart.
        self.check_space(size as u64)?;
        let request = Request { ops: batch.ops };
        let write = self.inner.raft.client_write(request);
        tokio::pin!(write);
        // A slow write fails as soon as a majority cannot be reached; else it waits.
        let written = loop {
            match tokio::time::timeout(QUORUM_CHECK_AFTER, &mut write).await {
                Ok(w) => break w,
                Err(_) => {
                    if let Some(e) = self.no_quorum() {
                        return Err(e);
                    }
                }
            }
        };
        match written {
            Ok(written) => match written.data {
                Response::Applied => Ok(written.log_id.index),
                Response::Conflict {
                    table,
                    id,
                    expected,
                    actual,
                } => Err(StoreError::Conflict {
                    table,
                    id,
                    expected,
                    actual,
                }),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                match (f.leader_id, self.no_quorum()) {
                    (None, Some(e)) => Err(e),
                    _ => Err(StoreError::NotLeader),
                }
            }
            Err(RaftError::APIError(e)) => Err(StoreError::Raft(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(fatal(e)),
        }
    }

    /// Whether the member `id` answered or called this one within the last second (the
    /// leader hears from every member several times a second; a follower from the leader).
    pub fn heard_from(&self, id: u64) -> bool {
        id == self.inner.raft_id
            || self
                .inner
                .contacts
                .lock()
                .ok()
                .is_some_and(|c| c.get(&id).is_some_and(|t| t.elapsed() < REACHABLE_WITHIN))
    }

    /// [`StoreError::NoSpace`] unless the store's directory has room for `bytes` more
    /// (several times over, with a margin for the database's own pages).
    pub fn check_space(&self, bytes: u64) -> Result<(), StoreError> {
        let need = MIN_FREE + 4 * bytes;
        match free_space(&self.inner.dir) {
            Some(free) if free < need => Err(StoreError::NoSpace {
                dir: self.inner.dir.display().to_string(),
                free,
                need,
            }),
            _ => Ok(()),
        }
    }

    /// Whether a majority of the voters (this member included) was heard from lately.
    pub fn quorum_reachable(&self) -> bool {
        self.no_quorum().is_none()
    }

    /// Why what this member reads may be behind the cluster: it knows no leader, or
    /// cannot reach a quorum. `None` when it can.
    pub fn stale_reason(&self) -> Option<String> {
        if let Some(e) = self.no_quorum() {
            return Some(e.to_string());
        }
        self.leader()
            .is_none()
            .then(|| "no leader: the managers are electing one".to_string())
    }

    /// [`StoreError::NoQuorum`] if fewer voters than a majority (this one included) have
    /// been heard from lately.
    fn no_quorum(&self) -> Option<StoreError> {
        let voters: Vec<NodeId> = self
            .members()
            .into_iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect();
        if voters.is_empty() {
            // Not part of any group yet: there is nothing to reach.
            return None;
        }
        let contacts = self.inner.contacts.lock().ok()?;
        let reachable = voters
            .iter()
            .filter(|id| {
                **id == self.inner.raft_id
                    || contacts
                        .get(id)
                        .is_some_and(|t| t.elapsed() < REACHABLE_WITHIN)
            })
            .count();
        (reachable < voters.len() / 2 + 1).then_some(StoreError::NoQuorum {
            reachable,
            voters: voters.len(),
        })
    }

    /// The current state and every change committed after it, with no gap
    /// and no duplicate between them (see [`crate::watch`] for how). Copies
    /// all objects into the snapshot: call it when a loop (re)starts, not
    /// per event.
    pub fn watch(&self) -> Result<Watch, StoreError> {
        let db = &self.inner.db;
        db.with(|d| {
            let (txn, events) = {
                let publishing = self.inner.hub.lock();
                let txn = d.begin_read().map_err(|e| db.err(e))?;
                let events = publishing.subscribe().ok_or(StoreError::Shutdown)?;
                (txn, events)
            };
            let snapshot = Snapshot::load(db, &txn)?;
            Ok(Watch { snapshot, events })
        })
    }

    /// Stops the Raft node, ends watches (`RecvError::Closed` after their
    /// buffered events) and closes the file, so the directory can be opened
    /// again. Reads and commits fail with [`StoreError::Shutdown`] afterwards.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        let stopped = self.inner.raft.shutdown().await;
        self.inner.hub.close();
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || db.close())
            .await
            .map_err(|e| StoreError::Database(format!("closing the database failed: {e}")))?;
        info!(raft_id = self.inner.raft_id, "store shut down");
        stopped.map_err(|e| StoreError::Raft(format!("raft task failed: {e}")))
    }
}

/// One member of the Raft group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
}

fn membership_err(
    e: RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>,
) -> StoreError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => StoreError::NotLeader,
        RaftError::APIError(e) => StoreError::Raft(e.to_string()),
        RaftError::Fatal(e) => fatal(e),
    }
}

/// Whether this member leads, and since which term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// Leader since `term`: writes go through this member.
    Leader { term: u64 },
    /// Not leading; `leader` is the member that does, if one is known.
    Follower { leader: Option<u64> },
}

/// A stream of [`Leadership`] changes, read off the Raft node's metrics.
pub struct LeadershipWatch {
    rx: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, openraft::BasicNode>>,
    id: NodeId,
}

impl LeadershipWatch {
    /// The leadership now.
    pub fn current(&self) -> Leadership {
        let m = self.rx.borrow();
        if m.state == ServerState::Leader && m.current_leader == Some(self.id) {
            Leadership::Leader {
                term: m.current_term,
            }
        } else {
            Leadership::Follower {
                leader: m.current_leader,
            }
        }
    }

    /// Waits until the leadership differs from `last`, and returns it; `None` once the
    /// store has shut down.
    pub async fn changed(&mut self, last: Leadership) -> Option<Leadership> {
        loop {
            let now = self.current();
            if now != last {
                return Some(now);
            }
            self.rx.changed().await.ok()?;
        }
    }
}

fn fatal(e: Fatal<NodeId>) -> StoreError {
    match e {
        Fatal::Stopped => StoreError::Shutdown,
        other => StoreError::Raft(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Expect;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Item {
        #[prost(string, tag = "1")]
        id: String,
    }

    impl Object for Item {
        const TABLE: &'static str = "items";
        fn id(&self) -> &str {
            &self.id
        }
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_after_snapshot_and_purge_restores_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 3, "m3:4242").await.expect("open");
        store.bootstrap().await.expect("bootstrap");
        store.wait_leader(WAIT).await.expect("leader");
        let mut last = 0;
        for i in 0..20 {
            let mut batch = Batch::default();
            batch.put(
                &Item {
                    id: format!("i{i}"),
                },
                Expect::Absent,
            );
            last = store.commit(batch).await.expect("commit");
        }

        let raft = &store.inner.raft;
        raft.trigger().snapshot().await.expect("trigger snapshot");
        let mut metrics = raft.metrics();
        let built = metrics.wait_for(|m| m.snapshot.is_some_and(|s| s.index >= last));
        tokio::time::timeout(WAIT, built)
            .await
            .expect("snapshot in time")
            .expect("metrics");
        raft.trigger().purge_log(last).await.expect("purge");
        let purged = metrics.wait_for(|m| m.purged.is_some_and(|p| p.index >= last));
        tokio::time::timeout(WAIT, purged)
            .await
            .expect("purge in time")
            .expect("metrics");
        store.shutdown().await.expect("shutdown");
        drop(store);

        let store = Store::open(dir.path(), 3, "m3:4242").await.expect("reopen");
        store.wait_leader(WAIT).await.expect("leader again");
        let items = store.list::<Item>().expect("list");
        assert_eq!(items.len(), 20);
        assert_eq!(
            store.get::<Item>("i19").expect("get").map(|i| i.version),
            Some(last)
        );
        let mut batch = Batch::default();
        batch.put(&Item { id: "new".into() }, Expect::Absent);
        assert!(store.commit(batch).await.expect("commit after restart") > last);
        store.shutdown().await.expect("shutdown");
    }

    /// Rewrites every sealed record of the store in `dir` in clear and deletes its key
    /// files: the store as a version before encryption at rest left it.
    fn unseal_in_place(dir: &Path) {
        use crate::db::{KEY_SNAPSHOT_DATA, LOG, SNAPSHOT};
        use redb::{ReadableTable, ReadableTableMetadata};
        let sealer = crate::seal::KeyFiles::new(dir)
            .load(&crate::Kek::Local)
            .unwrap()
            .unwrap();
        let db = Db::open(&dir.join(FILE_NAME), sealer).unwrap();
        db.with(|d| {
            let txn = d.begin_write().unwrap();
            {
                let mut log = txn.open_table(LOG).unwrap();
                assert!(log.len().unwrap() > 0);
                let rows: Vec<(u64, Vec<u8>)> = log
                    .iter()
                    .unwrap()
                    .map(|r| {
                        let (k, v) = r.unwrap();
                        (k.value(), db.open_entry(k.value(), v.value()).unwrap())
                    })
                    .collect();
                for (k, v) in rows {
                    log.insert(k, v.as_slice()).unwrap();
                }
                let mut objects = txn.open_table(OBJECTS).unwrap();
                let rows: Vec<(String, String, u64, Vec<u8>)> = objects
                    .iter()
                    .unwrap()
                    .map(|r| {
                        let (k, v) = r.unwrap();
                        let ((t, i), (ver, data)) = (k.value(), v.value());
                        let plain = db.open_object(t, i, data).unwrap();
                        (t.to_string(), i.to_string(), ver, plain)
                    })
                    .collect();
                for (t, i, ver, v) in rows {
                    objects
                        .insert((t.as_str(), i.as_str()), (ver, v.as_slice()))
                        .unwrap();
                }
                let mut snap = txn.open_table(SNAPSHOT).unwrap();
                let plain = snap
                    .get(KEY_SNAPSHOT_DATA)
                    .unwrap()
                    .map(|v| db.open_snapshot(v.value()).unwrap());
                if let Some(p) = plain {
                    snap.insert(KEY_SNAPSHOT_DATA, p.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
            Ok(())
        })
        .unwrap();
        db.close();
        std::fs::remove_file(dir.join("keys.json")).unwrap();
        std::fs::remove_file(dir.join("kek")).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_written_in_clear_is_sealed_when_opened_and_keeps_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1, "m1").await.expect("open");
        store.bootstrap().await.expect("bootstrap");
        store.wait_leader(WAIT).await.expect("leader");
        for i in 0..5 {
            let mut batch = Batch::default();
            batch.put(
                &Item {
                    id: format!("i{i}"),
                },
                Expect::Absent,
            );
            store.commit(batch).await.expect("commit");
        }
        store
            .inner
            .raft
            .trigger()
            .snapshot()
            .await
            .expect("snapshot");
        let mut metrics = store.inner.raft.metrics();
        tokio::time::timeout(WAIT, metrics.wait_for(|m| m.snapshot.is_some()))
            .await
            .expect("snapshot in time")
            .expect("metrics");
        store.shutdown().await.expect("shutdown");
        drop(store);

        unseal_in_place(dir.path());
        assert_eq!(
            crate::seal::wrapping(dir.path()).unwrap(),
            crate::Wrapping::None
        );
        let store = Store::open(dir.path(), 1, "m1").await.expect("reopen");
        store.wait_leader(WAIT).await.expect("leader again");
        assert_eq!(store.list::<Item>().expect("list").len(), 5);
        assert_eq!(
            crate::seal::wrapping(dir.path()).unwrap(),
            crate::Wrapping::Local
        );
        let mut batch = Batch::default();
        batch.put(&Item { id: "new".into() }, Expect::Absent);
        store.commit(batch).await.expect("commit after sealing");
        store.shutdown().await.expect("shutdown");
        drop(store);
        // Sealed: opening it again needs the key files it now has, and reads it all.
        let store = Store::open(dir.path(), 1, "m1")
            .await
            .expect("reopen sealed");
        store.wait_leader(WAIT).await.expect("leader");
        assert_eq!(store.list::<Item>().expect("list").len(), 6);
        store.shutdown().await.expect("shutdown");
    }
}

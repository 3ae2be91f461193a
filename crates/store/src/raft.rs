//! The openraft type configuration and tuning of the store's Raft group.
//!
//! Everything openraft-specific that is not storage or network lives here, so
//! the rest of the crate names these aliases rather than openraft generics.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::time::Duration;

use crate::batch::{Request, Response};

pub(crate) type NodeId = u64;

openraft::declare_raft_types!(
    /// The store's Raft types: a log entry carries one [`Request`] (a batch).
    pub(crate) TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub(crate) type LogId = openraft::LogId<NodeId>;
pub(crate) type Vote = openraft::Vote<NodeId>;
pub(crate) type Entry = openraft::Entry<TypeConfig>;
pub(crate) type Membership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub(crate) type RaftSnapshot = openraft::Snapshot<TypeConfig>;
pub(crate) type StorageError = openraft::StorageError<NodeId>;
pub(crate) type Raft = openraft::Raft<TypeConfig>;

/// Timeouts tuned for a LAN of managers: heartbeats four times per election timeout,
/// an election `election_timeout` to 1.5 × that after the leader falls silent, and a
/// single member elects itself at once after a restart (openraft does when this node is
/// the only voter). Snapshots and log compaction are triggered by the store itself (its
/// interval can change while it runs).
pub(crate) fn config(election_timeout: Duration) -> Result<openraft::Config, String> {
    let min = (election_timeout.as_millis() as u64).max(100);
    openraft::Config {
        cluster_name: "shoal".to_string(),
        heartbeat_interval: (min / 4).max(20),
        election_timeout_min: min,
        election_timeout_max: min + min / 2,
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: u64::MAX,
        ..Default::default()
    }
    .validate()
    .map_err(|e| e.to_string())
}

/// This member as the only voter of a fresh membership.
pub(crate) fn single_member(id: NodeId, addr: &str) -> BTreeMap<NodeId, openraft::BasicNode> {
    BTreeMap::from([(id, openraft::BasicNode::new(addr))])
}

/// Wraps an error as openraft's storage error for `subject`/`verb`.
pub(crate) fn storage_error(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    err: &(impl std::error::Error + 'static),
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(err)).into()
}

/// Runs storage work on tokio's blocking pool (redb commits fsync) and turns
/// its error into openraft's storage error for `subject`/`verb`.
pub(crate) async fn run_blocking<R: Send + 'static>(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    work: impl FnOnce() -> Result<R, crate::StoreError> + Send + 'static,
) -> Result<R, StorageError> {
    let result = match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join) => Err(crate::StoreError::Database(format!(
            "storage task failed: {join}"
        ))),
    };
    result.map_err(|e| storage_error(subject, verb, &e))
}

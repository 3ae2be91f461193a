//! The manager's replicated store of cluster state.
//!
//! Every object of the cluster (nodes, services, tasks, the cluster itself) is
//! kept here, keyed by table and id, with a version: the Raft log index of its
//! last write. Callers group writes in a [`Batch`] with optimistic checks
//! ([`Expect`]) and [`Store::commit`] it as one Raft entry; leader-only loops
//! [`Store::watch`] a consistent [`Snapshot`] and then every committed
//! [`Event`] after it, in order, with no gap.
//!
//! Under the hood the store is an [openraft] node whose log, vote, applied
//! state and snapshots live in one redb file, `store.redb`, in the node's
//! state directory. Every manager is a member of the Raft group; Raft messages travel
//! through the transport the binary provides (the [`network`] module's trait, over the
//! managers' mTLS listener). Objects are sealed at rest ([`seal`]). No openraft or redb
//! type appears in this crate's API.
//!
//! [openraft]: https://docs.rs/openraft/0.9

mod batch;
mod db;
mod error;
mod hex;
mod log_store;
pub mod network;
mod objects;
mod raft;
pub mod seal;
mod state_machine;
mod store;
pub mod watch;

#[cfg(test)]
mod conformance;

pub use batch::{Batch, Expect, Object, Versioned};
pub use error::StoreError;
pub use network::{RaftRpc, RaftTransport, TransportError, TransportFuture};
pub use prost::bytes::Bytes;
pub use seal::{Kek, UnlockKey, Wrapping};
pub use store::{
    Export, ExportedObject, Leadership, LeadershipWatch, Member, Store, StoreConfig,
    DEFAULT_ELECTION_TIMEOUT, DEFAULT_SNAPSHOT_INTERVAL,
};
pub use watch::{Change, Event, Snapshot, Watch, WATCH_CAPACITY};

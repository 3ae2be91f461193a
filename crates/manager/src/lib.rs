//! The manager: everything a manager node runs on top of the replicated store.
//!
//! [`view`] is the manager's one decoded, indexed view of the store, fed by its single
//! watch; everything below reads it. [`ca_server`] issues node certificates for join
//! tokens; [`security`] holds who may call ([`security::access`], [`security::auth`]),
//! the revocation records, the root CA in force and its rotation, and the join tokens.
//! [`dispatcher`] keeps every node's session, heartbeat and liveness; [`orchestrator`]
//! turns services into tasks, with the [`allocator`] and the [`scheduler`] as stages of
//! its pass; [`controlapi`] is the API the CLI drives, one file per object kind, and
//! [`routing`] says which of its calls read and which write. [`leader`] starts every
//! loop that writes (liveness, peers, status writer, orchestrator, rotation finishing,
//! revocation pruning) when this manager becomes leader and stops them when it steps
//! down. [`listener`] is the one mTLS listener they share and [`server`] wires it all;
//! [`cluster`] holds small facts several of them read; [`bootstrap`] creates a new
//! cluster.

pub mod allocator;
pub mod audit;
pub mod bootstrap;
pub mod ca_server;
pub mod cluster;
pub mod controlapi;
pub mod dispatcher;
pub mod leader;
pub mod listener;
pub mod orchestrator;
pub mod raft_service;
pub mod recovery;
pub mod routing;
pub mod scheduler;
pub mod security;
pub mod server;
mod time;
pub mod view;

pub use bootstrap::{init_cluster, InitParams, InitResult};
pub use controlapi::{ControlApi, ControlError};
pub use server::{Manager, ManagerConfig};

//! The manager: everything a manager node runs on top of the replicated store.
//!
//! [`view`] is the manager's one decoded, indexed view of the store, fed by its single
//! watch; everything below reads it. [`ca_server`] issues node certificates for join
//! tokens, [`rootca`] holds the root CA in force and runs its rotation, [`access`] is the
//! live list of who may call and [`revocation`] keeps the revocation records.
//! [`dispatcher`] keeps every node's session, heartbeat and liveness; [`orchestrator`]
//! turns services into tasks, with the [`allocator`] and the [`scheduler`] as stages of
//! its pass; [`controlapi`] is the API the CLI drives, and [`routing`] says which of its
//! calls read and which write. [`leader`] starts every loop that writes (liveness, peers,
//! status writer, orchestrator, rotation finishing, revocation pruning) when this manager
//! becomes leader and stops them when it steps down. [`server`] is the one mTLS listener
//! they share and [`auth`] the per-call checks. [`bootstrap`] creates a new cluster.

pub mod access;
pub mod allocator;
pub mod auth;
pub mod bootstrap;
pub mod ca_server;
pub mod controlapi;
pub mod controlapi_networks;
pub mod controlapi_secrets;
pub mod controlapi_services;
pub mod dispatcher;
pub mod leader;
pub mod orchestrator;
pub mod raft_service;
pub mod recovery;
pub mod revocation;
pub mod rootca;
pub mod routing;
pub mod scheduler;
pub mod server;
mod time;
pub mod tokens;
pub mod view;

pub use bootstrap::{init_cluster, InitParams, InitResult};
pub use controlapi::{ControlApi, ControlError};
pub use server::{Manager, ManagerConfig};

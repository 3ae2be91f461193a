//! The manager: everything a manager node runs on top of the replicated store.
//!
//! One module per component of DESIGN.md: [`ca_server`] issues node certificates for
//! join tokens, [`rootca`] holds the root CA in force and runs its rotation,
//! [`access`] is the live list of who may call (members, their usable certificates,
//! revocations) and [`revocation`] keeps the revocation records, [`dispatcher`] keeps every node's
//! heartbeat and liveness, [`controlapi`] is the API the CLI drives. [`leader`] starts
//! every loop that writes (liveness, status writer, orchestrator, rotation finishing,
//! revocation pruning) when this manager becomes leader and stops them when it steps
//! down. [`server`] is the one mTLS listener they share and
//! [`auth`] the per-RPC role checks. [`bootstrap`] creates a new cluster.

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
pub mod scheduler;
pub mod server;
mod time;
pub mod tokens;
pub mod view;

pub use bootstrap::{init_cluster, InitParams, InitResult};
pub use controlapi::{ControlApi, ControlError};
pub use server::{Manager, ManagerConfig};

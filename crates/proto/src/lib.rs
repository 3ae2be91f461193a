//! The wire: gRPC services and messages, and the object model the store keeps.
//!
//! Generated from `proto/shoal/*.proto`. Services: `ca` (join), `dispatcher` (every
//! node's link to the managers), `control` (the CLI's API on managers) and `local` (the
//! node's own admin API on its unix socket). [`caps`] is the capability vocabulary that
//! `ContainerSpec` carries, shared by the CLI, the manager and the agent.

#![allow(clippy::all, missing_docs)]

pub mod caps;

pub mod objects {
    tonic::include_proto!("shoal.objects");
}
pub mod ca {
    tonic::include_proto!("shoal.ca");
}
pub mod dispatcher {
    tonic::include_proto!("shoal.dispatcher");
}
pub mod control {
    tonic::include_proto!("shoal.control");
}
pub mod local {
    tonic::include_proto!("shoal.local");
}
pub mod raft {
    tonic::include_proto!("shoal.raft");
}

pub mod limits;

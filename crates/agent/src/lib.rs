//! The agent: what every node runs. It keeps the node's session with the managers
//! ([`session`]: heartbeats, failover, the assignment stream), turns assignments into
//! running tasks ([`worker`], one [`controller`] per task, [`image`], [`runtime`],
//! [`network`], [`secrets`]), reports their status ([`reporter`]) and logs ([`logs`]),
//! describes the host ([`describe`]), and reaches a manager over mTLS ([`connect`]). It
//! never imports the manager: it only talks to it over the wire.

pub mod connect;
pub mod controller;
pub mod describe;
pub mod health;
pub mod image;
pub mod logs;
pub mod network;
pub mod reporter;
pub mod runtime;
pub mod secrets;
pub mod session;
pub mod state;
pub mod worker;

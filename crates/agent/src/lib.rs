//! The agent: what every node runs, started as one owned unit by [`agent::start`] (its
//! handle stops everything it runs and waits for it). It keeps the node's session with
//! the managers: [`managers`] (the channel in use and where the leader is),
//! [`heartbeat`] (a beat every period, failover) and [`assignments`] (the session
//! stream); it turns assignments into running tasks ([`worker`], one [`controller`] per
//! task, [`image`], [`runtime`], [`network`], [`secrets`]), reports their status
//! ([`reporter`]) and logs ([`logs`]), describes the host ([`describe`]), and reaches a
//! manager over mTLS ([`connect`]). It never imports the manager: it only talks to it
//! over the wire.

pub mod agent;
pub mod assignments;
pub mod connect;
pub mod controller;
pub mod describe;
pub mod exec;
pub mod health;
pub mod heartbeat;
pub mod identity;
pub mod image;
pub mod logs;
pub mod managers;
pub mod network;
pub mod reporter;
pub mod runtime;
pub mod secrets;
pub mod state;
pub mod volumes;
pub mod worker;

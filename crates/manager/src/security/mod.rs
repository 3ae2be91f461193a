//! Who may call a manager, and what a node's identity rests on. [`auth`] checks each
//! call against [`access`], the live list of members, their certificates and the
//! revocations [`revocation`] records; [`rootca`] holds the root CA in force and runs its
//! rotation; [`tokens`] keeps the join tokens. These expose domain functions; the control
//! API calls them, never the other way round.

pub mod access;
pub mod auth;
pub mod revocation;
pub mod rootca;
pub mod tokens;

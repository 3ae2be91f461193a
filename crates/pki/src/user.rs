//! Users: people who work with a cluster from their own machines, with short-lived
//! certificates from the cluster CA. A [`UserIdentity`] is made only by
//! [`crate::ClusterTrust::verify_user`]; a user certificate never passes for a node
//! certificate, nor a node certificate for a user's (see `identity.rs`).

use crate::{ClusterId, PkiError};
use std::fmt;
use std::time::SystemTime;

/// The OU of every user certificate. No node role uses it.
pub const USER_OU: &str = "shoal-user";
/// The longest user name: a DNS label's length, which also keeps a SPIFFE ID short.
const MAX_NAME: usize = 63;

/// A user's name: a lower-case letter, then up to 62 lower-case letters, digits, `.`,
/// `_` or `-` (a valid path segment of a SPIFFE ID, and a file name).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserName(String);

impl UserName {
    pub fn parse(s: &str) -> Result<Self, PkiError> {
        let ok_first = s.bytes().next().is_some_and(|c| c.is_ascii_lowercase());
        let ok_rest = s
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c));
        if !ok_first || !ok_rest || s.len() > MAX_NAME {
            return Err(PkiError::BadUserName(s.to_string()));
        }
        Ok(UserName(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user identity taken from a verified user certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserIdentity {
    pub(crate) name: UserName,
    pub(crate) cluster_id: ClusterId,
    pub(crate) serial: String,
    pub(crate) not_after: SystemTime,
    pub(crate) key_digest: String,
    pub(crate) issuer: String,
}

impl UserIdentity {
    pub fn name(&self) -> &UserName {
        &self.name
    }
    pub fn cluster_id(&self) -> &ClusterId {
        &self.cluster_id
    }
    /// Certificate serial, lower-case hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
    /// SHA-256 (hex) of the certificate's public key.
    pub fn key_digest(&self) -> &str {
        &self.key_digest
    }
    /// The issuer's name, as [`crate::root_subject`] writes a root's.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }
}

//! Key material and identities for shoal.
//!
//! Everything a node needs to prove who it is, and to check who a peer is, lives here:
//! random IDs, the cluster's root CA and its signing of node and user certificates, node
//! keys and CSRs, turning a verified certificate into a [`NodeIdentity`] or a
//! [`UserIdentity`] (never one for the other), join and enrollment tokens, the rustls
//! configurations that enforce mutual TLS, and private key files on disk. This crate does
//! no network I/O and knows nothing about the store: callers hand it bytes and policy.

mod ca;
mod error;
mod id;
mod identity;
mod keyfile;
mod node_key;
mod role;
mod tls;
mod token;
mod user;
mod workload;

pub use ca::{
    cert_key_digest, csr_key_digest, csr_matches_cert, IssuedCert, RootCa, CERT_BACKDATE,
    MAX_CERT_EXPIRY, MIN_CERT_EXPIRY, MIN_ROOT_LIFE,
};
pub use error::PkiError;
pub use id::{base36_encode, random_id, ClusterId, NodeId};
pub use identity::{root_subject, CertSummary, ClusterTrust, NodeIdentity, Peer};
pub use keyfile::{read_private, write_private};
pub use node_key::NodeKey;
pub use role::Role;
pub use tls::{
    cert_pem, client_config, install_crypto_provider, pem_certs, pinned_bootstrap_client_config,
    server_config, BootstrapPin, RevocationCheck, MANAGER_SERVER_NAME,
};
pub use token::{EnrollmentToken, JoinToken, ENROLLMENT_PREFIX, TOKEN_PREFIX};
pub use user::{UserIdentity, UserName, USER_OU};
pub use workload::{spiffe_id, NO_STACK, WORKLOAD_OU};

/// SHA-256 of a DER certificate, as the lower-case base36 string join tokens carry.
pub fn cert_digest(der: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(der);
    base36_encode(&d, token::DIGEST_LEN)
}

#[cfg(test)]
mod tests;

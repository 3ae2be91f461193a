//! Per-RPC authorization. The caller's identity is what the TLS layer verified when the
//! connection was made; no request field can change it.

use shoal_pki::{NodeIdentity, Role};
use std::net::SocketAddr;
use tonic::{Request, Status};

/// What the listener knows about the other end of a connection. Attached to every
/// request by the server.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    /// Present only if the client presented a certificate that chains to this cluster's
    /// root and carries this cluster's ID.
    pub identity: Option<NodeIdentity>,
    /// Revoked certificates, checked on every call (a revocation applies at once, also
    /// to connections already open).
    pub revoked: Option<std::sync::Arc<crate::revocation::RevocationSet>>,
    /// The roots trusted now (a root rotation may have retired the one that signed the
    /// connection's certificate).
    pub ca: Option<crate::rootca::CaHandle>,
}

/// The verified identity of the caller, if its role is one of `allowed`.
pub fn authorize<T>(
    req: &Request<T>,
    call: &str,
    allowed: &[Role],
) -> Result<NodeIdentity, Status> {
    let peer = req.extensions().get::<PeerInfo>();
    if let (Some(id), Some(set)) = (
        peer.and_then(|p| p.identity.as_ref()),
        peer.and_then(|p| p.revoked.as_ref()),
    ) {
        if let Some(reason) = set.check(id) {
            return Err(Status::permission_denied(format!(
                "{call} refused: {reason} (certificate {} of node {})",
                id.serial(),
                id.node_id()
            )));
        }
    }
    if let (Some(id), Some(ca)) = (
        peer.and_then(|p| p.identity.as_ref()),
        peer.and_then(|p| p.ca.as_ref()),
    ) {
        if !ca.get().root_subjects.iter().any(|s| s == id.issuer()) {
            return Err(Status::unauthenticated(format!(
                "{call} refused: the certificate of node {} comes from a root CA this cluster no longer trusts (it was rotated); rejoin with 'shoal join --token <worker token> --rejoin <manager>'",
                id.node_id()
            )));
        }
    }
    let id = peer
        .and_then(|p| p.identity.clone())
        .ok_or_else(|| {
            Status::unauthenticated(format!(
                "{call} needs a node certificate of this cluster; join the cluster first with 'shoal join'"
            ))
        })?;
    if std::time::SystemTime::now() > id.not_after() {
        return Err(Status::unauthenticated(format!(
            "{call}: the node certificate expired; the node must renew or rejoin"
        )));
    }
    if !allowed.contains(&id.role()) {
        let names: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
        return Err(Status::permission_denied(format!(
            "{call} is not allowed for a {} node (allowed: {})",
            id.role(),
            names.join(", ")
        )));
    }
    Ok(id)
}

/// The caller's network address, if known.
pub fn remote_addr<T>(req: &Request<T>) -> Option<SocketAddr> {
    req.extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.remote_addr)
}

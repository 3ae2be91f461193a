//! Per-RPC authorization. The caller's identity is what the TLS layer verified when the
//! connection was made; no request field can change it. Every call, unary or streaming,
//! is checked the same way: a certificate of this cluster, from a root trusted now, not
//! expired, of a member node, not revoked or superseded, with an allowed role. A stream
//! keeps its [`Caller`] and is cut as soon as the caller would be refused.

use crate::security::access::AccessList;
use crate::security::rootca::CaHandle;
use shoal_pki::{NodeIdentity, Role};
use std::net::SocketAddr;
use std::sync::Arc;
use tonic::{Request, Status};

/// What the listener knows about the other end of a connection. Attached to every
/// request by the server.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    /// Present only if the client presented a certificate that chains to this cluster's
    /// root and carries this cluster's ID.
    pub identity: Option<NodeIdentity>,
    /// A user certificate of this cluster, verified as `identity` is (never both).
    pub user: Option<shoal_pki::UserIdentity>,
    /// What every call is checked against (there is no way to build a `PeerInfo`
    /// without it, so no call can skip the checks).
    pub gate: Gate,
}

/// The manager's live view of who may call.
#[derive(Clone, Debug)]
pub struct Gate {
    /// Members, their usable certificates, revocations.
    pub access: Arc<AccessList>,
    /// The roots trusted now (a root rotation may have retired the one that signed the
    /// connection's certificate).
    pub ca: CaHandle,
}

impl Gate {
    /// Whether `issuer` (a certificate's issuer name) is one of the roots trusted now: a
    /// root rotation may have retired the one that signed a connection's certificate.
    fn trusts_issuer(&self, issuer: &str) -> bool {
        self.ca.get().root_subjects.iter().any(|s| s == issuer)
    }
}

/// A verified, authorized caller. For streams it also tells when to cut them.
#[derive(Clone)]
pub struct Caller {
    pub id: NodeIdentity,
    call: &'static str,
    access: Arc<AccessList>,
}

impl std::ops::Deref for Caller {
    type Target = NodeIdentity;
    fn deref(&self) -> &NodeIdentity {
        &self.id
    }
}

impl Caller {
    /// The access list this caller is checked against.
    pub fn access(&self) -> &Arc<AccessList> {
        &self.access
    }

    /// Whether the caller may still be served; checked before each message a stream
    /// sends, so nothing goes out after a revocation.
    pub fn check(&self) -> Result<(), Status> {
        self.access
            .check(self.call, &self.id)
            .map_err(|r| r.status(self.call, &self.id))
    }

    /// Resolves, with what to tell the caller, when it may no longer be served (removal,
    /// revocation, superseding, expiry).
    pub async fn cut(&self) -> Status {
        self.access
            .revoked(self.call, &self.id)
            .await
            .status(self.call, &self.id)
    }

    /// Waits until the access list reflects the store up to `index`, then checks: a
    /// stream that sends what it read at `index` sends nothing a revocation committed
    /// before it should have stopped.
    pub async fn check_at(&self, index: u64) -> Result<(), Status> {
        self.access.wait_applied(index).await?;
        self.check()
    }
}

/// Who a guarded stream is served to: what cuts it, and the check before each message.
pub trait StreamCaller: Send + Sync + 'static {
    /// Resolves, with what to tell the caller, when it may no longer be served.
    fn cut(&self) -> impl std::future::Future<Output = Status> + Send;
    fn check(&self) -> Result<(), Status>;
}

impl StreamCaller for Caller {
    fn cut(&self) -> impl std::future::Future<Output = Status> + Send {
        Caller::cut(self)
    }
    fn check(&self) -> Result<(), Status> {
        Caller::check(self)
    }
}

/// Forwards a server stream to `caller` until it may no longer be served: then the
/// stream ends with the reason, and nothing more is sent.
pub fn guard<C: StreamCaller, T: Send + 'static>(
    caller: C,
    mut rx: tokio::sync::mpsc::Receiver<Result<T, Status>>,
) -> tokio::sync::mpsc::Receiver<Result<T, Status>> {
    let (tx, out) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let cut = caller.cut();
        tokio::pin!(cut);
        loop {
            tokio::select! {
                s = &mut cut => {
                    let _ = tx.send(Err(s)).await;
                    return;
                }
                _ = tx.closed() => return,
                m = rx.recv() => {
                    let Some(m) = m else { return };
                    if let Err(s) = caller.check() {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    out
}

/// A user a stream is served to, by name and certificate serial (a user on this
/// manager's listener, or one another manager forwarded): cut the moment the store's
/// record of them would refuse a new call (removed, the certificate revoked or expired,
/// the role no longer enough).
pub struct StreamUser {
    pub name: String,
    pub serial: String,
    pub call: &'static str,
    pub access: Arc<AccessList>,
    /// Whether a grant still allows the stream (its role and scope).
    pub allows: Box<dyn Fn(&crate::security::access::UserGrant) -> bool + Send + Sync>,
}

impl StreamUser {
    fn refused(&self) -> Option<Status> {
        match self.access.check_user_serial(&self.name, &self.serial) {
            Err(r) => Some(r.status_for(self.call, &self.name, &self.serial)),
            Ok(g) if !(self.allows)(&g) => Some(Status::permission_denied(format!(
                "{} refused: user {} may no longer make it",
                self.call, self.name
            ))),
            Ok(_) => None,
        }
    }
}

impl StreamCaller for StreamUser {
    async fn cut(&self) -> Status {
        let mut rx = self.access.generation();
        loop {
            rx.mark_unchanged();
            if let Some(s) = self.refused() {
                return s;
            }
            // Expiry comes without a store change: look again every second.
            tokio::select! {
                r = rx.changed() => if r.is_err() {
                    return Status::unavailable(format!("{}: this manager stopped", self.call));
                },
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }
    fn check(&self) -> Result<(), Status> {
        self.refused().map_or(Ok(()), Err)
    }
}

/// The verified caller, if its certificate may be used now and its role is one of
/// `allowed`.
pub fn authorize<T>(
    req: &Request<T>,
    call: &'static str,
    allowed: &[Role],
) -> Result<Caller, Status> {
    let peer = req.extensions().get::<PeerInfo>().ok_or_else(|| {
        Status::unauthenticated(format!("{call} refused: the connection was not verified"))
    })?;
    let id = match (&peer.identity, &peer.user) {
        (Some(id), _) => id.clone(),
        (None, Some(user)) => {
            return Err(Status::permission_denied(format!(
                "{call} refused: the user certificate of {} cannot make a node's calls",
                user.name()
            )))
        }
        (None, None) => {
            return Err(Status::unauthenticated(format!(
                "{call} needs a node certificate of this cluster; join the cluster first with 'shoal join'"
            )))
        }
    };
    if !peer.gate.trusts_issuer(id.issuer()) {
        return Err(Status::unauthenticated(format!(
            "{call} refused: the certificate of node {} comes from a root CA this cluster no longer trusts (it was rotated); rejoin with 'shoal join --token <worker token> --rejoin <manager>'",
            id.node_id()
        )));
    }
    let caller = Caller {
        id,
        call,
        access: peer.gate.access.clone(),
    };
    caller.check()?;
    if !allowed.contains(&caller.role()) {
        let names: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
        return Err(Status::permission_denied(format!(
            "{call} is not allowed for a {} node (allowed: {})",
            caller.role(),
            names.join(", ")
        )));
    }
    Ok(caller)
}

/// A verified user, with the grant the store gives them now. Made only from a user
/// certificate the listener verified.
#[derive(Clone)]
pub struct UserCaller {
    pub id: shoal_pki::UserIdentity,
    pub grant: crate::security::access::UserGrant,
    call: &'static str,
    access: Arc<AccessList>,
}

impl UserCaller {
    /// The access list this user is checked against.
    pub fn access(&self) -> &Arc<AccessList> {
        &self.access
    }

    /// Whether the user may still be served, and with what grant now (a role or scope
    /// changed takes effect on the next check).
    pub fn check(&self) -> Result<crate::security::access::UserGrant, Status> {
        self.access
            .check_user(&self.id)
            .map_err(|r| r.status(self.call, &self.id))
    }
}

/// The verified user making `call`, if their certificate may be used now: from a root
/// trusted now, not expired, issued to a current user and not revoked. A node's
/// certificate is refused, naming the node.
pub fn authorize_user<T>(req: &Request<T>, call: &'static str) -> Result<UserCaller, Status> {
    let peer = req.extensions().get::<PeerInfo>().ok_or_else(|| {
        Status::unauthenticated(format!("{call} refused: the connection was not verified"))
    })?;
    let id = match (&peer.user, &peer.identity) {
        (Some(u), _) => u.clone(),
        (None, Some(n)) => {
            return Err(Status::permission_denied(format!(
                "{call} refused: the certificate of {} node {} cannot act as a user: work on a manager's own socket, or get a user certificate with 'shoal login'",
                n.role(),
                n.node_id()
            )))
        }
        (None, None) => {
            return Err(Status::unauthenticated(format!(
                "{call} needs a user certificate of this cluster: log in first with 'shoal login --token <token> <manager>'"
            )))
        }
    };
    if !peer.gate.trusts_issuer(id.issuer()) {
        return Err(Status::unauthenticated(format!(
            "{call} refused: the certificate of user {} comes from a root CA this cluster no longer trusts (it was rotated); log in again with 'shoal login --token <new token> <manager>'",
            id.name()
        )));
    }
    let grant = peer
        .gate
        .access
        .check_user(&id)
        .map_err(|r| r.status(call, &id))?;
    Ok(UserCaller {
        id,
        grant,
        call,
        access: peer.gate.access.clone(),
    })
}

/// The caller's network address, if known.
pub fn remote_addr<T>(req: &Request<T>) -> Option<SocketAddr> {
    req.extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.remote_addr)
}

//! The CA server: hands out the root certificate to anyone (it is public, and a joiner
//! pins it by digest), and issues node certificates for a valid join token. The role of
//! the new node comes from which token matched, its ID from here; the CSR contributes
//! only its public key.

mod users;
pub mod workloads;

use crate::bootstrap::load_cluster;
use crate::cluster::store_status;
use crate::security::rootca::CaHandle;
use crate::time::{unix, unix_now};
use shoal_pki::{JoinToken, NodeId, Role};
use shoal_proto::ca::ca_server::Ca;
use shoal_proto::ca::{
    GetRootCaCertificateRequest, GetRootCaCertificateResponse, IssueNodeCertificateRequest,
    IssueNodeCertificateResponse, RenewNodeCertificateRequest,
};
use shoal_proto::objects::{Availability, Node, NodeCertificate, NodeRole, NodeState};
use shoal_store::{Batch, Expect, Store};
use std::time::Duration;
use tonic::{Request, Response, Status};

type Limiter<K> = governor::DefaultKeyedRateLimiter<K>;

pub struct CaServer {
    store: Store,
    /// What a new certificate's answer reads (the period, the managers): no join reads
    /// and decrypts every node.
    view: crate::view::ClusterView,
    ca: CaHandle,
    /// Waited on after each issue: a node's first call with its new certificate must not
    /// be refused because this manager's access list has not applied it yet.
    access: std::sync::Arc<crate::security::access::AccessList>,
    /// Renewals per node (a root rotation's request is not counted).
    renewals: Limiter<String>,
    /// Certificates issued (joins and rejoins) per peer address.
    issuance: Limiter<std::net::IpAddr>,
}

/// Renewals a node may make per minute: a node renews at half its certificate's life
/// (at least 30 s), plus a few retries after failures.
pub const RENEWALS_PER_MINUTE: u32 = 6;
/// Certificates one address may be issued per second, and in a burst.
pub const ISSUANCE_PER_SEC: u32 = 10;
pub const ISSUANCE_BURST: u32 = 20;

impl CaServer {
    pub fn new(
        store: Store,
        view: crate::view::ClusterView,
        ca: CaHandle,
        access: std::sync::Arc<crate::security::access::AccessList>,
    ) -> Self {
        use governor::Quota;
        use std::num::NonZeroU32;
        let nz = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        CaServer {
            store,
            view,
            ca,
            access,
            renewals: governor::RateLimiter::keyed(Quota::per_minute(nz(RENEWALS_PER_MINUTE))),
            issuance: governor::RateLimiter::keyed(
                Quota::per_second(nz(ISSUANCE_PER_SEC)).allow_burst(nz(ISSUANCE_BURST)),
            ),
        }
    }

    /// The caller's address, once its certificate requests are within their quota.
    fn limit_issuance<T>(
        &self,
        req: &Request<T>,
        call: &str,
    ) -> Result<Option<std::net::SocketAddr>, Status> {
        let remote = crate::security::auth::remote_addr(req);
        if let Some(addr) = remote {
            Self::limit(&self.issuance, &addr.ip(), || {
                format!(
                    "{call} refused: too many certificate requests from {} (limit {ISSUANCE_PER_SEC} per second)",
                    addr.ip()
                )
            })?;
        }
        Ok(remote)
    }

    /// Refuses a call over `limiter`'s quota for `key`, saying when to retry.
    fn limit<K: std::hash::Hash + Eq + Clone>(
        limiter: &Limiter<K>,
        key: &K,
        what: impl FnOnce() -> String,
    ) -> Result<(), Status> {
        if limiter.len() > 10_000 {
            limiter.retain_recent();
        }
        limiter.check_key(key).map_err(|not_until| {
            use governor::clock::Clock;
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            Status::resource_exhausted(format!(
                "{}: try again in {} s",
                what(),
                wait.as_secs().max(1)
            ))
        })
    }
}

impl CaServer {
    /// A node whose certificate expired while it was off comes back with a join token,
    /// its expired certificate, and a CSR signed with that certificate's key: it keeps its
    /// node ID (and so its labels and history).
    async fn rejoin(
        &self,
        req: IssueNodeCertificateRequest,
        limited: Option<shoal_store::Versioned<shoal_proto::objects::LimitedToken>>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        let old = shoal_pki::CertSummary::parse(&req.rejoin_cert_der)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !shoal_pki::csr_matches_cert(&req.csr_der, &req.rejoin_cert_der)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
        {
            return Err(Status::permission_denied(
                "the rejoin request is not signed with the old certificate's key",
            ));
        }
        // The old certificate must be ours; it may have expired, so check it at a moment
        // it was valid.
        let ca = self.ca.get();
        let (node_id, serial) = match ca.trust.verify(
            &req.rejoin_cert_der,
            &[],
            old.not_before + shoal_pki::CERT_BACKDATE,
        ) {
            Ok(id) => (id.node_id().clone(), id.serial().to_string()),
            Err(e) => self.rejoin_by_key(&req, &old).map_err(|why| {
                Status::permission_denied(format!(
                    "the certificate to rejoin with is not this cluster's: {e}{why}"
                ))
            })?,
        };
        if self
            .store
            .get::<shoal_proto::objects::RevokedCert>(&serial)
            .map_err(store_status)?
            .is_some()
        {
            return Err(Status::permission_denied(format!(
                "certificate {serial} was revoked: this node cannot rejoin as {node_id}; join as a new node without --rejoin",
            )));
        }
        let missing = Status::not_found(format!(
            "node {node_id} is no longer a member of this cluster (it was removed): join as a new node without --rejoin"
        ));
        let (cert, role) = self
            .reissue(&node_id, &req.csr_der, missing, limited.as_ref())
            .await?;
        tracing::info!(node_id = %node_id, "node rejoined with its expired identity");
        self.response(&node_id, role, cert.cert_der)
    }

    /// A node whose certificate comes from a root rotated away while it was down proves
    /// who it is with its key: the store remembers the public key of the certificate
    /// each node was last seen using, and the rejoin request is signed with the matching
    /// private key. A stolen old root key is no help here. Returns (node ID, serial).
    fn rejoin_by_key(
        &self,
        req: &IssueNodeCertificateRequest,
        old: &shoal_pki::CertSummary,
    ) -> Result<(NodeId, String), String> {
        let ca = self.ca.get();
        if old.organization != ca.cluster_id.as_str() {
            return Err(String::new());
        }
        let node_id = NodeId::parse(&old.common_name).map_err(|e| format!("; {e}"))?;
        let node = self
            .store
            .get::<Node>(node_id.as_str())
            .ok()
            .flatten()
            .map(|n| n.value)
            .ok_or_else(String::new)?;
        let c = node.certificate.unwrap_or_default();
        let key = shoal_pki::csr_key_digest(&req.csr_der).map_err(|e| format!("; {e}"))?;
        if c.confirmed_key_digest.is_empty()
            || c.confirmed_key_digest != key
            || c.confirmed_serial != old.serial
        {
            return Err(String::new());
        }
        tracing::info!(node_id = %node_id, "a node with a certificate from a retired root proved its key");
        Ok((node_id, old.serial.clone()))
    }

    fn cert_expiry(&self) -> Result<Duration, Status> {
        let cluster = load_cluster(&self.store).map_err(store_status)?.value;
        Ok(Duration::from_secs(
            cluster
                .spec
                .map(|s| s.cert_expiry_secs)
                .unwrap_or(90 * 86400),
        ))
    }

    /// A new certificate for an existing node (renewal or rejoin): the role is what the
    /// managers hold, never what an old certificate said; the superseded certificate is
    /// remembered for revocation by serial. `missing` is the answer if the node is gone.
    async fn reissue(
        &self,
        node_id: &NodeId,
        csr: &[u8],
        missing: Status,
        limited: Option<&shoal_store::Versioned<shoal_proto::objects::LimitedToken>>,
    ) -> Result<(shoal_pki::IssuedCert, Role), Status> {
        let expiry = self.cert_expiry()?;
        loop {
            let ca = self.ca.get();
            let Some(cur) = self
                .store
                .get::<Node>(node_id.as_str())
                .map_err(store_status)?
            else {
                return Err(missing);
            };
            let role = if cur.value.role == NodeRole::Manager as i32 {
                Role::Manager
            } else {
                Role::Worker
            };
            let cert = ca
                .signer
                .sign_node(csr, node_id, role, &ca.cluster_id, expiry)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let now = unix_now();
            let mut node = cur.value.clone();
            let mut c = node.certificate.take().unwrap_or_default();
            if !c.serial.is_empty() {
                c.previous.insert(
                    0,
                    shoal_proto::objects::PreviousCertificate {
                        serial: c.serial.clone(),
                        not_after_unix: c.not_after_unix,
                    },
                );
            }
            c.previous.retain(|p| p.not_after_unix > now);
            c.previous.truncate(PREVIOUS_KEPT);
            c.serial = cert.serial.clone();
            c.not_after_unix = unix(cert.not_after);
            c.issued_at_unix = now;
            c.root_digest = ca.signer_digest.clone();
            c.key_digest = cert.key_digest.clone();
            c.renewal_error.clear();
            node.certificate = Some(c);
            node.updated_at_unix = now;
            let mut b = Batch::default();
            b.put(&node, Expect::Version(cur.version));
            if let Some(t) = limited {
                let mut used = t.value.clone();
                used.uses += 1;
                b.put(&used, Expect::Version(t.version));
            }
            match self.store.commit(b).await {
                Ok(index) => {
                    self.applied(index).await;
                    return Ok((cert, role));
                }
                Err(shoal_store::StoreError::Conflict { .. }) => continue,
                Err(shoal_store::StoreError::NotLeader) => {
                    return Err(crate::cluster::not_leader(&self.store))
                }
                Err(e) => return Err(store_status(e)),
            }
        }
    }

    /// Waits (at most a few seconds) until this manager's access list has the write at
    /// `index`, so the certificate just issued is accepted on the node's next call. Past
    /// that, the certificate is issued anyway: the node retries a refused call.
    async fn applied(&self, index: u64) {
        if self.access.wait_applied(index).await.is_err() {
            tracing::warn!(
                index,
                "the access list has not applied a certificate just issued"
            );
        }
    }

    /// What a node gets with a new certificate.
    fn response(
        &self,
        node_id: &NodeId,
        role: Role,
        cert_der: Vec<u8>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        let state = self.view.current();
        let ca = self.ca.get();
        let raft_id = match role {
            Role::Manager => self
                .store
                .get::<Node>(node_id.as_str())
                .map_err(store_status)?
                .map_or(0, |n| crate::bootstrap::node_raft_id(&n.value)),
            Role::Worker => 0,
        };
        Ok(Response::new(IssueNodeCertificateResponse {
            node_id: node_id.to_string(),
            cluster_id: ca.cluster_id.to_string(),
            role: role.as_str().to_string(),
            cert_der,
            root_der: ca.root.cert_der().to_vec(),
            managers: state.manager_addrs(),
            heartbeat_period_ms: state.heartbeat_period().as_millis() as u64,
            roots_der: ca.roots.clone(),
            intermediates_der: ca.intermediates.clone(),
            raft_id,
        }))
    }
}

/// Superseded certificates remembered per node (for revocation by serial).
const PREVIOUS_KEPT: usize = 5;

#[tonic::async_trait]
impl Ca for CaServer {
    async fn renew_node_certificate(
        &self,
        req: Request<RenewNodeCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        let id = crate::security::auth::authorize(
            &req,
            "RenewNodeCertificate",
            &[Role::Manager, Role::Worker],
        )?;
        let csr = req.into_inner().csr_der;
        let node_id = id.node_id().clone();
        // A root rotation, or a promotion or demotion (the certificate's role is not the
        // one the managers hold), asks for this renewal: it is not counted.
        let asked = self
            .store
            .get::<Node>(node_id.as_str())
            .map_err(store_status)?
            .is_some_and(|n| {
                let held = if n.value.role == NodeRole::Manager as i32 {
                    Role::Manager
                } else {
                    Role::Worker
                };
                held != id.role()
                    || crate::security::rootca::needs_rotation(
                        self.ca.get().rotating_to.as_deref(),
                        &n.value,
                    )
            });
        if !asked {
            Self::limit(&self.renewals, &node_id.to_string(), || {
                format!(
                    "RenewNodeCertificate refused: node {node_id} renews too often (limit {RENEWALS_PER_MINUTE} per minute)"
                )
            })?;
        }
        let missing = Status::permission_denied(crate::cluster::REMOVED);
        let (cert, role) = self.reissue(&node_id, &csr, missing, None).await?;
        tracing::info!(node_id = %node_id, serial = %cert.serial, "renewed a node certificate");
        self.response(&node_id, role, cert.cert_der)
    }

    async fn issue_user_certificate(
        &self,
        req: Request<shoal_proto::ca::IssueUserCertificateRequest>,
    ) -> Result<Response<shoal_proto::ca::IssueUserCertificateResponse>, Status> {
        let remote = self.limit_issuance(&req, "IssueUserCertificate")?;
        let req = req.into_inner();
        self.issue_user(remote, &req.csr_der, &req.token)
            .await
            .map(Response::new)
    }

    async fn issue_workload_certificate(
        &self,
        req: Request<shoal_proto::ca::IssueWorkloadCertificateRequest>,
    ) -> Result<Response<shoal_proto::ca::IssueWorkloadCertificateResponse>, Status> {
        self.issue_workload(req).map(Response::new)
    }

    async fn renew_user_certificate(
        &self,
        req: Request<shoal_proto::ca::RenewUserCertificateRequest>,
    ) -> Result<Response<shoal_proto::ca::IssueUserCertificateResponse>, Status> {
        let caller = crate::security::auth::authorize_user(&req, "RenewUserCertificate")?;
        let csr = req.into_inner().csr_der;
        self.renew_user(caller, &csr).await.map(Response::new)
    }

    async fn get_root_ca_certificate(
        &self,
        _req: Request<GetRootCaCertificateRequest>,
    ) -> Result<Response<GetRootCaCertificateResponse>, Status> {
        Ok(Response::new(GetRootCaCertificateResponse {
            cert_der: self.ca.get().root.cert_der().to_vec(),
        }))
    }

    async fn issue_node_certificate(
        &self,
        req: Request<IssueNodeCertificateRequest>,
    ) -> Result<Response<IssueNodeCertificateResponse>, Status> {
        let remote = self.limit_issuance(&req, "IssueNodeCertificate")?;
        let req = req.into_inner();
        let token =
            JoinToken::parse(&req.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ca = self.ca.get();
        let ours = ca.root.digest();
        if token.ca_digest() != ours {
            return Err(Status::permission_denied(format!(
                "join token does not match this cluster's CA (token digest {}, CA digest {ours}): ask a manager for a fresh token with 'shoal join-token worker'",
                token.ca_digest()
            )));
        }
        let cluster = load_cluster(&self.store).map_err(store_status)?.value;
        let tokens = cluster.join_tokens.unwrap_or_default();
        let matches = |s: &str| {
            JoinToken::parse(s)
                .map(|t| t.matches(&token))
                .unwrap_or(false)
        };
        let mut limited = None;
        let role = if matches(&tokens.worker) {
            Role::Worker
        } else if matches(&tokens.manager) {
            Role::Manager
        } else if let Some(t) =
            crate::security::tokens::find(&self.store, &token).map_err(store_status)?
        {
            if let Some(why) = crate::security::tokens::exhausted(&t.value, unix_now()) {
                tracing::warn!(?remote, token_id = %t.value.id, "refused a join with a spent limited token");
                return Err(Status::permission_denied(why));
            }
            let role = Role::parse(&t.value.role).unwrap_or(Role::Worker);
            limited = Some(t);
            role
        } else {
            tracing::warn!(?remote, "refused a join with an invalid token");
            return Err(Status::permission_denied(
                "invalid join token: its secret matches neither this cluster's worker nor manager token (it may have been rotated); get a current one with 'shoal join-token worker' on a manager",
            ));
        };
        if !req.rejoin_cert_der.is_empty() {
            return self.rejoin(req, limited).await;
        }
        let hostname = req.hostname.trim().to_string();
        if hostname.len() > shoal_proto::limits::MAX_HOSTNAME
            || hostname
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(Status::invalid_argument(format!(
                "hostname {:?} is not a host name (at most {} bytes, no spaces)",
                shoal_proto::limits::short(&hostname),
                shoal_proto::limits::MAX_HOSTNAME
            )));
        }
        let expiry = self.cert_expiry()?;
        let node_id = NodeId::generate();
        let cert = ca
            .signer
            .sign_node(&req.csr_der, &node_id, role, &ca.cluster_id, expiry)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let addr = if req.advertise_addr.is_empty() {
            remote.map(|a| a.ip().to_string()).unwrap_or_default()
        } else {
            req.advertise_addr
        };
        let now = unix_now();
        let node = Node {
            id: node_id.to_string(),
            role: if role == Role::Manager {
                NodeRole::Manager as i32
            } else {
                NodeRole::Worker as i32
            },
            raft_id: if role == Role::Manager {
                crate::bootstrap::new_raft_id()
            } else {
                0
            },
            availability: Availability::Active as i32,
            state: NodeState::Unknown as i32,
            description: Some(shoal_proto::objects::NodeDescription {
                hostname,
                ..Default::default()
            }),
            addr,
            certificate: Some(NodeCertificate {
                serial: cert.serial.clone(),
                not_after_unix: unix(cert.not_after),
                issued_at_unix: now,
                previous: vec![],
                root_digest: ca.signer_digest.clone(),
                key_digest: cert.key_digest.clone(),
                renewal_error: String::new(),
                ..Default::default()
            }),
            created_at_unix: now,
            updated_at_unix: now,
            ..Default::default()
        };
        let mut batch = Batch::default();
        batch.put(&node, Expect::Absent);
        if let Some(t) = &limited {
            // Counted in the same transaction: two joins cannot both take the last use.
            let mut used = t.value.clone();
            used.uses += 1;
            batch.put(&used, Expect::Version(t.version));
        }
        let index = self.store.commit(batch).await.map_err(|e| match e {
            shoal_store::StoreError::Conflict { .. } => Status::aborted(
                "the join token was used by another node at the same moment: try again",
            ),
            shoal_store::StoreError::NotLeader => crate::cluster::not_leader(&self.store),
            e => store_status(e),
        })?;
        self.applied(index).await;
        tracing::info!(node_id = %node_id, role = %role, "issued a certificate to a joining node");
        self.response(&node_id, role, cert.cert_der)
    }
}

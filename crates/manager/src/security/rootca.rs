//! The cluster's root CA as the managers use it, and its rotation.
//!
//! A rotation stores a new root, cross-signed by the current one, beside it. From that
//! moment every manager trusts both roots and signs new node certificates with the new
//! key; a node that still trusts only the old root accepts them through the
//! cross-signed certificate, which managers serve in their chain. Heartbeats tell each
//! node whose certificate comes from the old root to renew. When every node that counts
//! has a certificate from the new root, [`run`] makes it the only root and draws new join
//! tokens (the old ones pin the old root). Nodes that are down do not count once the
//! operator passes `--force`; they rejoin later with a token, proving their node ID with
//! the key the store remembers for them.

use crate::bootstrap::load_cluster;
use crate::time::unix_now;
use shoal_pki::{ClusterId, ClusterTrust, JoinToken, PkiError, RootCa};
use shoal_proto::control::CaNodeProgress;
use shoal_proto::objects::{
    Cluster, JoinTokens, LimitedToken, Node, NodeState, RootCa as RootCaObject,
};
use shoal_store::{Batch, Expect, Store, StoreError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The root CA material in force, derived from the cluster object.
pub struct CaState {
    pub cluster_id: ClusterId,
    /// The root join tokens pin.
    pub root: Arc<RootCa>,
    /// The key new node certificates are signed with: the new root's during a rotation.
    pub signer: Arc<RootCa>,
    pub signer_digest: String,
    /// Every root trusted now (two during a rotation).
    pub roots: Vec<Vec<u8>>,
    /// Between a certificate the signer issued and the current root: the cross-signed new
    /// root during a rotation, else nothing.
    pub intermediates: Vec<Vec<u8>>,
    pub trust: ClusterTrust,
    /// The digest of the root being rotated to.
    pub rotating_to: Option<String>,
    /// The subjects of `roots`: a certificate whose issuer is none of them comes from
    /// a root no longer trusted (checked on every call, so connections made before a
    /// rotation finished are refused too).
    pub root_subjects: Vec<String>,
}

impl CaState {
    pub fn from_cluster(c: &Cluster, cluster_id: &ClusterId) -> Result<Self, PkiError> {
        let r = c.root_ca.clone().unwrap_or_default();
        let root = Arc::new(RootCa::from_pem(&r.cert_pem, &r.key_pem)?);
        let mut roots = vec![root.cert_der().to_vec()];
        let (signer, intermediates, rotating_to) = match &c.root_rotation {
            Some(rot) => {
                let new = Arc::new(RootCa::from_pem(&rot.cert_pem, &rot.key_pem)?);
                roots.push(new.cert_der().to_vec());
                let cross = shoal_pki::pem_certs(&rot.cross_signed_pem)?;
                (new, cross, Some(rot.digest.clone()))
            }
            None => (root.clone(), vec![], None),
        };
        let root_subjects = roots
            .iter()
            .map(|r| shoal_pki::root_subject(r))
            .collect::<Result<_, _>>()?;
        Ok(CaState {
            root_subjects,
            cluster_id: cluster_id.clone(),
            trust: ClusterTrust::new(cluster_id.clone(), &roots)?,
            signer_digest: signer.digest(),
            root,
            signer,
            roots,
            intermediates,
            rotating_to,
        })
    }

    /// What a manager's listener serves: its certificate, the cross-signed new root
    /// during a rotation, and the current root (which joining nodes pin by digest).
    pub fn server_chain(&self, leaf: &[u8]) -> Vec<Vec<u8>> {
        let mut chain = vec![leaf.to_vec()];
        chain.extend(self.intermediates.iter().cloned());
        chain.push(self.root.cert_der().to_vec());
        chain
    }

    fn same_as(&self, other: &CaState) -> bool {
        self.roots == other.roots
            && self.signer_digest == other.signer_digest
            && self.intermediates == other.intermediates
    }
}

/// The CA state every part of a manager reads; replaced when the cluster's root changes.
#[derive(Clone)]
pub struct CaHandle {
    tx: Arc<watch::Sender<Arc<CaState>>>,
}

impl std::fmt::Debug for CaHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaHandle({})", self.get().signer_digest)
    }
}

impl CaHandle {
    pub fn new(state: CaState) -> Self {
        CaHandle {
            tx: Arc::new(watch::channel(Arc::new(state)).0),
        }
    }

    pub fn get(&self) -> Arc<CaState> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<CaState>> {
        self.tx.subscribe()
    }

    fn reload(&self, state: &crate::view::State) {
        let cur = self.get();
        let next = state
            .cluster()
            .ok_or_else(|| "the store holds no cluster object".to_string())
            .and_then(|c| {
                CaState::from_cluster(&c.value, &cur.cluster_id).map_err(|e| e.to_string())
            });
        match next {
            Ok(next) if !next.same_as(&cur) => {
                tracing::info!(
                    roots = next.roots.len(),
                    signer = %next.signer_digest,
                    "the cluster's root CA changed"
                );
                self.tx.send_replace(Arc::new(next));
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "the root CA in the store is unusable"),
        }
    }

    /// Keeps the state equal to the cluster object until cancelled, following the
    /// cluster view's `updates` (subscribed before `view` was read).
    pub async fn follow(
        self,
        view: crate::view::ClusterView,
        mut updates: crate::view::Subscription,
        cancel: CancellationToken,
    ) {
        self.reload(&view.current());
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                u = updates.next() => match u {
                    Some(u) if u.touches(&[crate::view::Kind::Cluster]) => self.reload(&u.state),
                    Some(_) => {}
                    None => return,
                },
            }
        }
    }
}

/// Whether a node still uses a certificate from a root other than `target`, the root
/// being rotated to (none: no rotation). Only a certificate the node was seen using
/// counts: one issued that the node failed to store does not.
pub fn needs_rotation(target: Option<&str>, node: &Node) -> bool {
    let Some(target) = target else {
        return false;
    };
    let c = node.certificate.clone().unwrap_or_default();
    !(c.root_digest == target && !c.serial.is_empty() && c.confirmed_serial == c.serial)
}

fn state_name(n: &Node) -> String {
    NodeState::try_from(n.state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("NODE_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// Progress of a rotation: (converged, counted, every node with its state). Nodes that are
/// down are not counted when the rotation is forced.
pub(crate) fn progress(cluster: &Cluster, nodes: &[Node]) -> (u32, u32, Vec<CaNodeProgress>) {
    let rot = cluster.root_rotation.as_ref();
    let (target, force) = (rot.map(|r| r.digest.as_str()), rot.is_some_and(|r| r.force));
    let (mut done, mut total) = (0, 0);
    let mut out = Vec::new();
    for n in nodes {
        let converged = !needs_rotation(target, n);
        let down = n.state == NodeState::Down as i32;
        if !(force && down) {
            total += 1;
            if converged {
                done += 1;
            }
        }
        out.push(CaNodeProgress {
            node_id: n.id.clone(),
            hostname: n
                .description
                .as_ref()
                .map(|d| d.hostname.clone())
                .unwrap_or_default(),
            state: state_name(n),
            converged,
        });
    }
    (done, total, out)
}

/// Finishes a rotation whose counted nodes all converged: the new root becomes the only
/// one, join tokens are drawn anew and limited tokens (which pin the old root) are
/// dropped. Returns whether it finished.
async fn finish_if_done(store: &Store) -> Result<bool, StoreError> {
    let cur = load_cluster(store)?;
    let Some(rot) = cur.value.root_rotation.clone() else {
        return Ok(false);
    };
    let nodes: Vec<Node> = store.list::<Node>()?.into_iter().map(|n| n.value).collect();
    let (done, total, list) = progress(&cur.value, &nodes);
    if done < total {
        return Ok(false);
    }
    let mut c = cur.value.clone();
    c.root_ca = Some(RootCaObject {
        cert_pem: rot.cert_pem.clone(),
        key_pem: rot.key_pem.clone(),
        digest: rot.digest.clone(),
    });
    c.join_tokens = Some(JoinTokens {
        worker: JoinToken::generate(&rot.digest).to_string(),
        manager: JoinToken::generate(&rot.digest).to_string(),
    });
    c.root_rotation = None;
    c.last_rotation_unix = unix_now();
    c.last_rotation_left_out = list
        .iter()
        .filter(|n| !n.converged)
        .map(|n| n.node_id.clone())
        .collect();
    let mut b = Batch::default();
    b.put(&c, Expect::Version(cur.version));
    for t in store.list::<LimitedToken>()? {
        b.delete::<LimitedToken>(&t.value.id, Expect::Version(t.version));
    }
    store.commit(b).await?;
    tracing::info!(
        root = %rot.digest,
        left_out = ?c.last_rotation_left_out,
        "root CA rotation finished: the old root is no longer trusted and the join tokens changed"
    );
    Ok(true)
}

/// Watches a running rotation and finishes it once every counted node converged.
pub async fn run(store: Store, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match finish_if_done(&store).await {
            Ok(_) | Err(StoreError::Conflict { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "cannot finish the root CA rotation yet"),
        }
    }
}

pub(crate) fn root_summary(der: &[u8]) -> (String, i64) {
    shoal_pki::CertSummary::parse(der)
        .map(|c| {
            let t = c
                .not_after
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            (c.subject, t)
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::auth::{authorize, PeerInfo};
    use shoal_pki::{NodeId, NodeKey, Role};
    use shoal_proto::objects::RootRotation;

    fn root_obj(r: &RootCa) -> RootCaObject {
        RootCaObject {
            cert_pem: r.cert_pem(),
            key_pem: r.key_pem(),
            digest: r.digest(),
        }
    }

    fn call_with(id: &shoal_pki::NodeIdentity, ca: &CaState) -> Result<(), tonic::Status> {
        let handle = CaHandle::new(CaState::from_cluster(&cluster_of(ca), &ca.cluster_id).unwrap());
        let mut req = tonic::Request::new(());
        let member = shoal_proto::objects::Node {
            id: id.node_id().to_string(),
            certificate: Some(shoal_proto::objects::NodeCertificate {
                serial: id.serial().to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        req.extensions_mut().insert(PeerInfo {
            remote_addr: None,
            identity: Some(id.clone()),
            user: None,
            gate: crate::security::auth::Gate {
                access: crate::security::access::AccessList::with_nodes(&[member]),
                ca: handle,
            },
        });
        authorize(&req, "Heartbeat", &[Role::Worker]).map(|_| ())
    }

    fn cluster_of(ca: &CaState) -> Cluster {
        Cluster {
            id: ca.cluster_id.to_string(),
            root_ca: Some(root_obj(&ca.root)),
            root_rotation: (!Arc::ptr_eq(&ca.root, &ca.signer)).then(|| RootRotation {
                cert_pem: ca.signer.cert_pem(),
                key_pem: ca.signer.key_pem(),
                cross_signed_pem: ca
                    .intermediates
                    .iter()
                    .map(|c| shoal_pki::cert_pem(c))
                    .collect(),
                digest: ca.signer.digest(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_user_certificate_cannot_make_a_nodes_calls() {
        let cluster_id = ClusterId::generate();
        let root = RootCa::generate(Duration::from_secs(86400 * 400)).unwrap();
        let key = NodeKey::generate().unwrap();
        let leaf = root
            .sign_user(
                &key.csr_der().unwrap(),
                &shoal_pki::UserName::parse("alice").unwrap(),
                &cluster_id,
                Duration::from_secs(3600),
            )
            .unwrap();
        let cluster = Cluster {
            id: cluster_id.to_string(),
            root_ca: Some(root_obj(&root)),
            ..Default::default()
        };
        let ca = CaState::from_cluster(&cluster, &cluster_id).unwrap();
        let user = ca
            .trust
            .verify_user(&leaf.cert_der, &[], std::time::SystemTime::now())
            .unwrap();
        for call in ["Heartbeat", "Session", "RenewCertificate", "Raft.Append"] {
            let mut req = tonic::Request::new(());
            req.extensions_mut().insert(PeerInfo {
                remote_addr: None,
                identity: None,
                user: Some(user.clone()),
                gate: crate::security::auth::Gate {
                    access: crate::security::access::AccessList::with_nodes(&[]),
                    ca: CaHandle::new(CaState::from_cluster(&cluster, &cluster_id).unwrap()),
                },
            });
            let Err(e) = authorize(&req, call, &[Role::Worker, Role::Manager]) else {
                panic!("{call} was allowed for a user certificate");
            };
            assert_eq!(e.code(), tonic::Code::PermissionDenied);
            assert_eq!(
                e.message(),
                format!("{call} refused: the user certificate of alice cannot make a node's calls")
            );
        }

        // As a user it is checked against the store's record of the user.
        let gate = |users: &[shoal_proto::objects::User]| crate::security::auth::Gate {
            access: crate::security::access::AccessList::with_users(users),
            ca: CaHandle::new(CaState::from_cluster(&cluster, &cluster_id).unwrap()),
        };
        let as_user = |users: &[shoal_proto::objects::User]| {
            let mut req = tonic::Request::new(());
            req.extensions_mut().insert(PeerInfo {
                remote_addr: None,
                identity: None,
                user: Some(user.clone()),
                gate: gate(users),
            });
            crate::security::auth::authorize_user(&req, "ListServices")
        };
        let alice = shoal_proto::objects::User {
            name: "alice".into(),
            role: shoal_proto::objects::UserRole::Operator as i32,
            scopes: vec!["*".into()],
            certs: vec![shoal_proto::objects::UserCert {
                serial: leaf.serial.clone(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let ok = as_user(std::slice::from_ref(&alice)).ok().unwrap();
        assert_eq!(ok.grant.role, shoal_proto::objects::UserRole::Operator);
        assert_eq!(ok.id.name().as_str(), "alice");
        let Err(e) = as_user(&[]) else {
            panic!("an unknown user was allowed")
        };
        assert!(
            e.message().contains("alice is not a user of this cluster"),
            "{}",
            e.message()
        );
        let made_again = shoal_proto::objects::User {
            certs: vec![],
            ..alice
        };
        let Err(e) = as_user(&[made_again]) else {
            panic!("a certificate of a former user was allowed")
        };
        assert!(
            e.message()
                .contains(&format!("certificate {} was not issued", leaf.serial)),
            "{}",
            e.message()
        );
    }

    #[test]
    fn a_connection_from_a_retired_root_is_refused_on_its_next_call() {
        let cluster_id = ClusterId::generate();
        let old = RootCa::generate(Duration::from_secs(86400 * 400)).unwrap();
        let new = RootCa::generate_named(Duration::from_secs(86400 * 400), "shoal-ca 2").unwrap();
        let cross = old.cross_sign(&new).unwrap();
        let key = NodeKey::generate().unwrap();
        let leaf = old
            .sign_node(
                &key.csr_der().unwrap(),
                &NodeId::generate(),
                Role::Worker,
                &cluster_id,
                Duration::from_secs(3600),
            )
            .unwrap();
        let before = CaState::from_cluster(
            &Cluster {
                id: cluster_id.to_string(),
                root_ca: Some(root_obj(&old)),
                ..Default::default()
            },
            &cluster_id,
        )
        .unwrap();
        let id = before
            .trust
            .verify(&leaf.cert_der, &[], SystemTime::now())
            .unwrap();
        call_with(&id, &before).unwrap();

        // During the rotation both roots are trusted: still fine.
        let during = CaState::from_cluster(
            &Cluster {
                id: cluster_id.to_string(),
                root_ca: Some(root_obj(&old)),
                root_rotation: Some(RootRotation {
                    cert_pem: new.cert_pem(),
                    key_pem: new.key_pem(),
                    cross_signed_pem: shoal_pki::cert_pem(&cross),
                    digest: new.digest(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &cluster_id,
        )
        .unwrap();
        assert_eq!(during.roots.len(), 2);
        call_with(&id, &during).unwrap();

        // After it, the same connection's identity is refused with what to do.
        let after = CaState::from_cluster(
            &Cluster {
                id: cluster_id.to_string(),
                root_ca: Some(root_obj(&new)),
                ..Default::default()
            },
            &cluster_id,
        )
        .unwrap();
        let e = call_with(&id, &after).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("no longer trusts"), "{}", e.message());
    }
}

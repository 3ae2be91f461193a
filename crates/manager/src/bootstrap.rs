//! Creating a new cluster: its root CA, join tokens, settings, and the first manager's
//! certificate and node record, all written to the store in one transaction.

use crate::time::{unix, unix_now};
use shoal_pki::{ClusterId, IssuedCert, JoinToken, NodeId, NodeKey, PkiError, Role, RootCa};
use shoal_proto::objects::{
    Availability, Cluster, ClusterSpec, JoinTokens, Node, NodeCertificate, NodeRole, NodeState,
    RootCa as RootCaObject,
};
use shoal_store::{Batch, Expect, Store, StoreError};
use std::time::Duration;

/// Root CA life: 20 years, as swarm mode.
pub const ROOT_CA_EXPIRY: Duration = Duration::from_secs(20 * 365 * 86400);
pub const DEFAULT_CERT_EXPIRY: Duration = Duration::from_secs(90 * 86400);
/// Short enough that a node gone silent is Down within 5 s (3 missed beats).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);

pub struct InitParams {
    pub advertise_addr: String,
    pub cert_expiry: Duration,
    pub heartbeat_period: Duration,
    pub description: shoal_proto::objects::NodeDescription,
    /// 0: the default.
    pub snapshot_interval: u64,
    /// Zero: the default.
    pub election_timeout: Duration,
    /// With autolock: the cluster's unlock key.
    pub unlock_key: Option<shoal_store::UnlockKey>,
    /// The first manager's Raft member ID (its store's).
    pub raft_id: u64,
    /// Where networks' subnets come from.
    pub network: shoal_proto::objects::NetworkConfig,
}

/// What the first manager keeps on its own disk.
pub struct InitResult {
    pub cluster_id: ClusterId,
    pub node_id: NodeId,
    pub root_der: Vec<u8>,
    pub node_key: NodeKey,
    pub node_cert: IssuedCert,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The Raft member ID of a manager from before IDs were stored in its node object:
/// derived from its node ID.
pub fn raft_id(node_id: &str) -> u64 {
    u64::from_str_radix(node_id.get(..12).unwrap_or("1"), 36).unwrap_or(1)
}

/// A new Raft member ID: random, 63 bits, never 0, so an ID is not used twice (a node
/// promoted again after a demotion gets a new one).
pub fn new_raft_id() -> u64 {
    use rand::Rng;
    rand::rng().random_range(1..(1u64 << 63))
}

/// The Raft member ID of manager `n`.
pub fn node_raft_id(n: &Node) -> u64 {
    match n.raft_id {
        0 => raft_id(&n.id),
        id => id,
    }
}

/// Creates the cluster in an empty, bootstrapped store.
pub async fn init_cluster(
    store: &Store,
    node_id: NodeId,
    params: InitParams,
) -> Result<InitResult, InitError> {
    let cluster_id = ClusterId::generate();
    let root = RootCa::generate(ROOT_CA_EXPIRY)?;
    let node_key = NodeKey::generate()?;
    let node_cert = root.sign_node(
        &node_key.csr_der()?,
        &node_id,
        Role::Manager,
        &cluster_id,
        params.cert_expiry,
    )?;
    let digest = root.digest();
    let now = unix_now();
    let cluster = Cluster {
        id: cluster_id.to_string(),
        spec: Some(ClusterSpec {
            cert_expiry_secs: params.cert_expiry.as_secs(),
            heartbeat_period_ms: params.heartbeat_period.as_millis() as u64,
            snapshot_interval: params.snapshot_interval,
            election_timeout_ms: params.election_timeout.as_millis() as u64,
            autolock: params.unlock_key.is_some(),
            // 0: the defaults (12 hours; 64 MiB and 10 files of audit log).
            user_cert_expiry_secs: 0,
            audit_max_bytes: 0,
            audit_keep: 0,
            workload_cert_expiry_secs: 0,
        }),
        unlock_key: params
            .unlock_key
            .as_ref()
            .map(|k| k.as_bytes().to_vec())
            .unwrap_or_default(),
        root_ca: Some(RootCaObject {
            cert_pem: root.cert_pem(),
            key_pem: root.key_pem(),
            digest: digest.clone(),
        }),
        join_tokens: Some(JoinTokens {
            worker: JoinToken::generate(&digest).to_string(),
            manager: JoinToken::generate(&digest).to_string(),
        }),
        created_at_unix: now,
        network: Some(params.network),
        ..Default::default()
    };
    let node = Node {
        id: node_id.to_string(),
        role: NodeRole::Manager as i32,
        raft_id: params.raft_id,
        availability: Availability::Active as i32,
        description: Some(params.description),
        state: NodeState::Unknown as i32,
        addr: params.advertise_addr,
        certificate: Some(NodeCertificate {
            serial: node_cert.serial.clone(),
            not_after_unix: unix(node_cert.not_after),
            issued_at_unix: now,
            previous: vec![],
            root_digest: digest.clone(),
            key_digest: node_cert.key_digest.clone(),
            renewal_error: String::new(),
            ..Default::default()
        }),
        created_at_unix: now,
        updated_at_unix: now,
        ..Default::default()
    };
    let mut batch = Batch::default();
    batch
        .put(&cluster, Expect::Absent)
        .put(&node, Expect::Absent);
    store.commit(batch).await?;
    Ok(InitResult {
        cluster_id,
        node_id,
        root_der: root.cert_der().to_vec(),
        node_key,
        node_cert,
    })
}

/// The cluster object (there is exactly one in an initialized store).
pub fn load_cluster(store: &Store) -> Result<shoal_store::Versioned<Cluster>, StoreError> {
    store
        .list::<Cluster>()?
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::Corrupt("the store holds no cluster object".into()))
}

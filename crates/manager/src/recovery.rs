//! Disaster recovery: a backup of the cluster state taken while the cluster runs, and a
//! one-manager cluster re-formed from a surviving manager's state
//! (`init --force-new-cluster`) or from a backup (`init --restore`).
//!
//! A backup file is `SHOAL-BACKUP-1`, a header line of JSON (cluster, time, index,
//! whether it needs the unlock key), then the exported objects, sealed
//! (XChaCha20-Poly1305). From an autolocked cluster it is sealed with the unlock key;
//! otherwise with a key of its own written in the header, so that it is exactly as
//! secret as the managers' disks without autolock.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use shoal_pki::{ClusterId, NodeId, NodeKey, Role, RootCa};
use shoal_proto::objects::{
    Availability, Cluster, Node, NodeCertificate, NodeDescription, NodeRole, NodeState,
};
use shoal_store::{Batch, Expect, ExportedObject, Object, Store, StoreError, UnlockKey};

use crate::bootstrap::{load_cluster, InitResult};
use crate::time::unix_now;

const MAGIC: &str = "SHOAL-BACKUP-1";
const CONTEXT: &[u8] = b"shoal backup";
/// Objects written per entry while re-forming (bounded entries, however large the state).
const CHUNK: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] shoal_pki::PkiError),
}

#[derive(Serialize, Deserialize)]
struct Header {
    cluster_id: String,
    created_unix: i64,
    index: u64,
    /// Sealed with the cluster's unlock key (autolock was on).
    autolock: bool,
    /// Without autolock: the file's own key, base64url.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    key: String,
}

#[derive(Serialize, Deserialize)]
struct Body {
    /// (table, id, base64 bytes).
    objects: Vec<(String, String, String)>,
}

/// A backup of `store`'s applied state, and whether it needs the unlock key to restore.
pub fn backup(store: &Store) -> Result<(Vec<u8>, bool), RecoveryError> {
    let export = store.export()?;
    let cluster = cluster_of(&export.objects)?;
    let autolock = cluster.spec.as_ref().is_some_and(|s| s.autolock);
    let (key, header_key) = match UnlockKey::from_bytes(&cluster.unlock_key).filter(|_| autolock) {
        Some(k) => (k, String::new()),
        None => {
            let k = UnlockKey::generate();
            let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k.as_bytes());
            (k, text)
        }
    };
    let header = Header {
        cluster_id: cluster.id.clone(),
        created_unix: unix_now(),
        index: export.index,
        autolock: header_key.is_empty(),
        key: header_key,
    };
    let body = Body {
        objects: export
            .objects
            .into_iter()
            .map(|o| {
                let data = base64::engine::general_purpose::STANDARD.encode(&o.data);
                (o.table, o.id, data)
            })
            .collect(),
    };
    let plain = zeroize::Zeroizing::new(
        serde_json::to_vec(&body).map_err(|e| RecoveryError::Refused(e.to_string()))?,
    );
    let mut out = format!(
        "{MAGIC}\n{}\n",
        serde_json::to_string(&header).map_err(|e| RecoveryError::Refused(e.to_string()))?
    )
    .into_bytes();
    out.extend_from_slice(&key.seal(CONTEXT, &plain));
    Ok((out, header.autolock))
}

/// Whether the backup in `bytes` needs the unlock key (it came from an autolocked
/// cluster).
pub fn needs_unlock_key(bytes: &[u8]) -> Result<bool, RecoveryError> {
    Ok(parse(bytes)?.0.autolock)
}

fn parse(bytes: &[u8]) -> Result<(Header, &[u8]), RecoveryError> {
    let not_a_backup = || {
        RecoveryError::Refused(
            "this file is not a shoal backup (make one with 'shoal backup FILE' on a manager)"
                .into(),
        )
    };
    let rest = bytes
        .strip_prefix(MAGIC.as_bytes())
        .and_then(|r| r.strip_prefix(b"\n"))
        .ok_or_else(not_a_backup)?;
    let end = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(not_a_backup)?;
    let header: Header = serde_json::from_slice(&rest[..end]).map_err(|_| not_a_backup())?;
    Ok((header, &rest[end + 1..]))
}

/// The objects of a backup. `unlock` is needed for one from an autolocked cluster.
pub fn open_backup(
    bytes: &[u8],
    unlock: Option<&UnlockKey>,
) -> Result<Vec<ExportedObject>, RecoveryError> {
    let (header, sealed) = parse(bytes)?;
    let damaged = || {
        RecoveryError::Refused(
            "the backup is damaged (it does not decrypt): use another copy of it".into(),
        )
    };
    let plain = if header.autolock {
        let Some(k) = unlock else {
            return Err(RecoveryError::Refused(
                "this backup comes from a cluster with autolock on: give its unlock key (on standard input) to restore it".into(),
            ));
        };
        k.open(CONTEXT, sealed).ok_or_else(|| {
            RecoveryError::Refused(
                "invalid unlock key: it does not open this backup; give the key the cluster had when the backup was made".into(),
            )
        })?
    } else {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&header.key)
            .map_err(|_| damaged())?;
        let k = UnlockKey::from_bytes(&raw).ok_or_else(damaged)?;
        k.open(CONTEXT, sealed).ok_or_else(damaged)?
    };
    let plain = zeroize::Zeroizing::new(plain);
    let body: Body = serde_json::from_slice(&plain).map_err(|_| damaged())?;
    body.objects
        .into_iter()
        .map(|(table, id, data)| {
            let data = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| damaged())?;
            Ok(ExportedObject { table, id, data })
        })
        .collect()
}

/// The cluster object among exported objects.
pub fn cluster_of(objects: &[ExportedObject]) -> Result<Cluster, RecoveryError> {
    objects
        .iter()
        .find(|o| o.table == Cluster::TABLE)
        .and_then(|o| prost::Message::decode(o.data.as_slice()).ok())
        .ok_or_else(|| {
            RecoveryError::Refused("the state holds no cluster: nothing to restore".into())
        })
}

/// The manager that leads the re-formed cluster.
pub struct Survivor {
    pub node_id: NodeId,
    pub raft_id: u64,
    pub advertise_addr: String,
    pub description: NodeDescription,
    /// For a node that is new to the cluster (a restore): its key, for which a manager
    /// certificate is signed. `None`: it keeps its own node and certificate.
    pub new_key: Option<NodeKey>,
    /// Why the other managers were removed, recorded with their certificates.
    pub why: &'static str,
}

/// Writes `objects` into `store` (new, bootstrapped and empty) as a one-manager cluster
/// led by `me`: every other manager is removed (its node deleted, its certificates
/// revoked, so that it cannot come back with its old state), and `me`'s node carries
/// its new Raft ID. Workers, services and their tasks, tokens and the root CA are kept.
/// For a new node, returns its certificate.
pub async fn reform(
    store: &Store,
    objects: Vec<ExportedObject>,
    me: Survivor,
) -> Result<Option<InitResult>, RecoveryError> {
    for chunk in objects.chunks(CHUNK) {
        let mut b = Batch::default();
        for o in chunk {
            b.put_raw(&o.table, &o.id, o.data.clone());
        }
        store.commit(b).await?;
    }
    let cluster = load_cluster(store)?.value;
    let mut b = Batch::default();
    for n in store.list::<Node>()? {
        let n = n.value;
        if n.id == me.node_id.as_str() || n.role != NodeRole::Manager as i32 {
            continue;
        }
        b.delete::<Node>(&n.id, Expect::Any);
        crate::security::revocation::revoke_all(&mut b, &n, me.why);
        tracing::warn!(node_id = %n.id, "removed a manager that is not part of the re-formed cluster");
    }
    let mut issued = None;
    match (store.get::<Node>(me.node_id.as_str())?, me.new_key) {
        (Some(cur), None) => {
            let mut n = cur.value;
            n.raft_id = me.raft_id;
            n.addr = me.advertise_addr.clone();
            n.updated_at_unix = unix_now();
            b.put(&n, Expect::Any);
        }
        (_, Some(key)) => {
            let r = cluster.root_ca.clone().unwrap_or_default();
            let root = RootCa::from_pem(&r.cert_pem, &r.key_pem)?;
            let cluster_id = ClusterId::parse(&cluster.id)?;
            let expiry = std::time::Duration::from_secs(
                cluster
                    .spec
                    .as_ref()
                    .map_or(0, |s| s.cert_expiry_secs)
                    .max(60),
            );
            let cert = root.sign_node(
                &key.csr_der()?,
                &me.node_id,
                Role::Manager,
                &cluster_id,
                expiry,
            )?;
            let now = unix_now();
            b.put(
                &Node {
                    id: me.node_id.to_string(),
                    role: NodeRole::Manager as i32,
                    raft_id: me.raft_id,
                    availability: Availability::Active as i32,
                    description: Some(me.description),
                    state: NodeState::Unknown as i32,
                    addr: me.advertise_addr.clone(),
                    certificate: Some(NodeCertificate {
                        serial: cert.serial.clone(),
                        not_after_unix: crate::time::unix(cert.not_after),
                        issued_at_unix: now,
                        root_digest: root.digest(),
                        key_digest: cert.key_digest.clone(),
                        ..Default::default()
                    }),
                    created_at_unix: now,
                    updated_at_unix: now,
                    ..Default::default()
                },
                Expect::Absent,
            );
            issued = Some(InitResult {
                cluster_id,
                node_id: me.node_id.clone(),
                root_der: root.cert_der().to_vec(),
                node_key: key,
                node_cert: cert,
            });
        }
        (None, None) => {
            return Err(RecoveryError::Refused(format!(
                "node {} is not in the cluster state it would lead",
                me.node_id
            )))
        }
    }
    store.commit(b).await?;
    Ok(issued)
}

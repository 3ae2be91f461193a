//! The control API: the cluster state the CLI reads and changes. [`ControlApi`] holds the
//! logic; it is served to manager certificates over mTLS ([`ControlService`]) and to the
//! local administrator over the node's unix socket (by the daemon).

use shoal_proto::objects::{ContainerSpec, Node};
use shoal_store::{Store, StoreError};
use std::sync::Arc;
use tonic::Status;

mod ca;
mod cluster;
pub mod networks;
mod nodes;
pub mod roles;
pub mod secrets;
mod service;
pub mod services;
mod tasks;
mod tokens;
pub mod users;

pub use service::{
    ControlCaller, ControlService, LocalAdmin, TaskLogsStream, FORWARDED_HEADER, LOCAL_ADMIN,
};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no such node: {0}")]
    NoSuchNode(String),
    #[error(
        "node reference {0:?} is ambiguous (it matches {1} nodes): use more characters of the ID"
    )]
    Ambiguous(String, usize),
    #[error("hostname {0:?} is shared by several nodes ({1}): use a node ID")]
    AmbiguousHostname(String, String),
    #[error("unknown role {0:?}: use 'worker' or 'manager'")]
    BadRole(String),
    #[error("no such task: {0}")]
    NoSuchTask(String),
    #[error(
        "task reference {0:?} is ambiguous (it matches {1} tasks): use more characters of the ID"
    )]
    AmbiguousTask(String, usize),
    #[error("invalid task spec: {0}")]
    BadSpec(String),
    #[error("invalid service spec: {0}")]
    BadService(String),
    /// Bad input that is not a spec: a cluster setting, a serial, a name.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unplaceable(String),
    #[error("no such service: {0}")]
    NoSuchService(String),
    #[error("no such network: {0}")]
    NoSuchNetwork(String),
    #[error("service reference {0:?} is ambiguous (it matches {1} services): use more characters of the ID")]
    AmbiguousService(String, usize),
    #[error("{0}")]
    Exists(String),
    /// Something named that does not exist (the message says what to do).
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Refused(String),
    /// The caller's role or scope does not allow this (the message names the user, the
    /// operation, the object and what is missing).
    #[error("{0}")]
    Denied(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ControlError> for Status {
    fn from(e: ControlError) -> Status {
        match &e {
            ControlError::NoSuchNode(_)
            | ControlError::NoSuchTask(_)
            | ControlError::NoSuchService(_)
            | ControlError::NoSuchNetwork(_)
            | ControlError::NotFound(_) => Status::not_found(e.to_string()),
            ControlError::AmbiguousService(..) => Status::invalid_argument(e.to_string()),
            ControlError::Exists(_) => Status::already_exists(e.to_string()),
            ControlError::Conflict(_) => Status::aborted(e.to_string()),
            ControlError::Refused(_) => Status::failed_precondition(e.to_string()),
            ControlError::Denied(_) => Status::permission_denied(e.to_string()),
            ControlError::Ambiguous(..)
            | ControlError::AmbiguousHostname(..)
            | ControlError::BadRole(_)
            | ControlError::AmbiguousTask(..)
            | ControlError::BadSpec(_)
            | ControlError::BadService(_)
            | ControlError::BadRequest(_) => Status::invalid_argument(e.to_string()),
            ControlError::Unplaceable(_) => Status::failed_precondition(e.to_string()),
            ControlError::Store(StoreError::NotLeader) => Status::unavailable(
                "this manager is not the leader: run the command on the leader (the manager 'shoal node ls' shows as Leader)",
            ),
            ControlError::Store(StoreError::NoSpace { .. }) => {
                Status::resource_exhausted(e.to_string())
            }
            ControlError::Store(_) => Status::unavailable(e.to_string()),
        }
    }
}

#[derive(Clone)]
pub struct ControlApi {
    store: Store,
    /// What reads read: this manager's decoded view of the store (no table is listed
    /// and decrypted per call).
    view: crate::view::ClusterView,
    logs: Arc<crate::dispatcher::logs::LogBroker>,
    /// Where every call is recorded.
    audit: Arc<crate::audit::AuditLog>,
}

/// Why a node says it cannot run containers (empty: it can).
fn runtime_error(n: &Node) -> &str {
    n.description
        .as_ref()
        .map_or("", |d| d.runtime_error.as_str())
}

/// How long a write waits for this manager's view to have it.
const VIEW_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Docker's floor: below this runc and the kernel cannot start a container reliably.
const MIN_MEMORY_LIMIT: i64 = 6 * 1024 * 1024;

use shoal_proto::HOST_NETWORK;

/// Checks the networks a spec names: each once, `host` alone and without aliases.
/// Whether the others exist is [`ControlApi::resolve_networks`]'s business.
fn validate_networks(nets: &[shoal_proto::objects::NetworkAttachmentConfig]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for n in nets {
        if n.target.trim().is_empty() {
            return Err("a network needs a name".into());
        }
        if !seen.insert(n.target.as_str()) {
            return Err(format!("network {:?} is named twice", n.target));
        }
        for a in &n.aliases {
            shoal_proto::limits::check_name("network alias", a)?;
        }
        if n.target == HOST_NETWORK && !n.aliases.is_empty() {
            return Err(format!(
                "network {HOST_NETWORK:?} takes no aliases: its tasks share their node's network"
            ));
        }
    }
    if nets.len() > 1 && seen.contains(HOST_NETWORK) {
        return Err(format!(
            "network {HOST_NETWORK:?} cannot be combined with other networks"
        ));
    }
    Ok(())
}

/// Checks a container spec, naming the first thing wrong.
pub fn validate_spec(spec: &ContainerSpec) -> Result<(), ControlError> {
    let bad = |m: String| Err(ControlError::BadSpec(m));
    if spec.image.trim().is_empty() {
        return bad("an image is required".into());
    }
    if spec.image.len() > shoal_proto::limits::MAX_SHORT_STRING {
        return bad(format!(
            "image reference is {} bytes: the limit is {} bytes",
            spec.image.len(),
            shoal_proto::limits::MAX_SHORT_STRING
        ));
    }
    if let Err(e) = shoal_proto::limits::check_spec_size(spec) {
        return bad(e.0);
    }
    for (flag, names) in [("--cap-add", &spec.cap_add), ("--cap-drop", &spec.cap_drop)] {
        if let Err(e) = shoal_proto::caps::normalize_all(names) {
            return bad(format!("{flag}: {e}"));
        }
    }
    validate_networks(&spec.networks).or_else(bad)?;
    shoal_proto::options::check_spec(spec).or_else(bad)?;
    for e in &spec.env {
        if e.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
            return bad(format!("environment entry {e:?} is not KEY=VALUE"));
        }
    }
    if !spec.workdir.is_empty() && !spec.workdir.starts_with('/') {
        return bad(format!(
            "working directory {:?} must be an absolute path",
            spec.workdir
        ));
    }
    for m in &spec.mounts {
        if m.r#type != "volume" && (m.volume_nocopy || !m.volume_labels.is_empty()) {
            return bad(format!(
                "mount at {:?}: volume-nocopy and volume-label are for type=volume",
                m.target
            ));
        }
        if let Err(e) = shoal_proto::limits::check_labels("volume label", &m.volume_labels) {
            return bad(e.0);
        }
        if !m.target.starts_with('/') {
            return bad(format!(
                "mount target {:?} must be an absolute path",
                m.target
            ));
        }
        match m.r#type.as_str() {
            "bind" if !m.source.starts_with('/') => {
                return bad(format!(
                    "bind mount source {:?} must be an absolute path",
                    m.source
                ))
            }
            "tmpfs" if m.tmpfs_mode > 0o7777 => {
                return bad(format!(
                    "tmpfs mode {:o} of {:?} is not a file mode like 1777",
                    m.tmpfs_mode, m.target
                ))
            }
            "volume" if !m.source.is_empty() => {
                shoal_proto::options::check_volume_name(&m.source).or_else(bad)?
            }
            "bind" | "tmpfs" | "volume" => {}
            other => return bad(format!("mount type {other:?} is not bind, tmpfs or volume")),
        }
    }
    if let Some(l) = &spec.limits {
        if l.memory_bytes != 0 && l.memory_bytes < MIN_MEMORY_LIMIT {
            return bad(format!(
                "memory limit {} bytes is below the minimum of 6MiB",
                l.memory_bytes
            ));
        }
        if l.nano_cpus < 0 || l.pids < 0 || l.memory_bytes < 0 {
            return bad("resource limits cannot be negative".into());
        }
    }
    Ok(())
}

impl ControlApi {
    pub fn new(
        store: Store,
        view: crate::view::ClusterView,
        logs: Arc<crate::dispatcher::logs::LogBroker>,
        audit: Arc<crate::audit::AuditLog>,
    ) -> Self {
        ControlApi {
            store,
            view,
            logs,
            audit,
        }
    }

    /// This manager's audit log.
    pub(crate) fn audit(&self) -> &Arc<crate::audit::AuditLog> {
        &self.audit
    }

    /// The audit log's rotation size and count of kept files, by the cluster's settings.
    pub(crate) fn audit_settings(&self) -> (u64, u32) {
        crate::audit::settings(self.view.current().cluster().and_then(|c| c.value.spec))
    }

    /// Every object of type `T`, in ID order, from this manager's view.
    pub(crate) fn list<T: crate::view::Viewed>(
        &self,
    ) -> Result<Vec<shoal_store::Versioned<T>>, ControlError> {
        Ok(self.view.current().iter::<T>().cloned().collect())
    }

    /// One object of type `T`, from this manager's view.
    pub(crate) fn get<T: crate::view::Viewed>(
        &self,
        id: &str,
    ) -> Result<Option<shoal_store::Versioned<T>>, ControlError> {
        Ok(self.view.current().get::<T>(id).cloned())
    }

    /// The cluster object, from this manager's view.
    pub(crate) fn cluster(
        &self,
    ) -> Result<shoal_store::Versioned<shoal_proto::objects::Cluster>, ControlError> {
        self.view.current().cluster().cloned().ok_or_else(|| {
            ControlError::Store(StoreError::Corrupt(
                "the store holds no cluster object".into(),
            ))
        })
    }

    /// Commits `b`, then waits until this manager's view has it, so that what the
    /// caller reads next (here, or on a follower that forwarded the call) includes it.
    pub(crate) async fn commit(&self, b: shoal_store::Batch) -> Result<u64, StoreError> {
        let index = self.store.commit(b).await?;
        if self.view.wait_index(index, VIEW_WAIT).await.is_none() {
            tracing::warn!(
                index,
                "this manager's view did not reach its own write in time"
            );
        }
        Ok(index)
    }

    /// Refuses a container spec (its references already resolved to IDs) that uses a
    /// network, secret or config outside the caller's scope: a deployer of one stack
    /// cannot mount another stack's secret, nor join its network.
    pub(crate) fn refs_in_scope(
        &self,
        caller: &ControlCaller,
        spec: Option<&ContainerSpec>,
    ) -> Result<(), ControlError> {
        let Some(spec) = spec else { return Ok(()) };
        if caller.limits().is_none() {
            return Ok(());
        }
        for a in &spec.networks {
            if let Some(n) = self.get::<shoal_proto::objects::Network>(&a.target)? {
                let ns = n.value.spec.unwrap_or_default();
                caller.in_scope("network", &n.value.id, &ns.name, &ns.labels)?;
            }
        }
        for r in spec.secrets.iter().chain(&spec.configs) {
            if let Some(x) = self.get::<shoal_proto::objects::Secret>(&r.secret_id)? {
                let xs = x.value.spec.unwrap_or_default();
                caller.in_scope(&x.value.kind, &x.value.id, &xs.name, &xs.labels)?;
            }
        }
        Ok(())
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }
}

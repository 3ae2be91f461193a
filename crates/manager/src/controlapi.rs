//! The control API: the cluster state the CLI reads and changes. [`ControlApi`] holds the
//! logic; it is served to manager certificates over mTLS ([`ControlService`]) and to the
//! local administrator over the node's unix socket (by the daemon).

use crate::auth::authorize;
use crate::bootstrap::load_cluster;
use crate::ca_server::manager_addrs;
use shoal_pki::{JoinToken, Role};
use shoal_proto::control::control_server::Control;
use shoal_proto::control::{
    ClusterInfo, CreateTaskRequest, GetClusterInfoRequest, GetJoinTokenRequest,
    GetJoinTokenResponse, GetNodeRequest, GetTaskRequest, ListNodesRequest, ListNodesResponse,
    ListTasksRequest, ListTasksResponse, NodeView, RemoveTaskRequest, RemoveTaskResponse,
    TaskLogsMessage, TaskLogsRequest,
};
use shoal_proto::control::{
    CreateServiceRequest, GetServiceRequest, ListServicesRequest, ListServicesResponse,
    RemoveNodeRequest, RemoveNodeResponse, RemoveServiceRequest, RemoveServiceResponse,
    UpdateNodeRequest, UpdateServiceRequest,
};
use shoal_proto::objects::Service;
use shoal_proto::objects::{
    Availability, ContainerSpec, Node, NodeRole, NodeState, Task, TaskState, TaskStatus,
};
use shoal_store::{Batch, Expect, Store, StoreError};
use std::sync::Arc;
use tonic::{Request, Response, Status};

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
    logs: Arc<crate::dispatcher::logs::LogBroker>,
}

/// Why a node says it cannot run containers (empty: it can).
fn runtime_error(n: &Node) -> &str {
    n.description
        .as_ref()
        .map_or("", |d| d.runtime_error.as_str())
}

/// Docker's floor: below this runc and the kernel cannot start a container reliably.
const MIN_MEMORY_LIMIT: i64 = 6 * 1024 * 1024;

/// The network that keeps tasks in their node's own namespace.
pub const HOST_NETWORK: &str = "host";

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
            "bind" | "tmpfs" => {}
            other => return bad(format!("mount type {other:?} is not bind or tmpfs")),
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
    pub fn new(store: Store, logs: Arc<crate::dispatcher::logs::LogBroker>) -> Self {
        ControlApi { store, logs }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// A task by ID, unique ID prefix, or name.
    pub fn get_task(&self, reference: &str) -> Result<Task, ControlError> {
        if let Some(t) = self.store.get::<Task>(reference)? {
            return Ok(t.value);
        }
        let tasks: Vec<Task> = self
            .store
            .list::<Task>()?
            .into_iter()
            .map(|v| v.value)
            .collect();
        let by_name: Vec<&Task> = tasks.iter().filter(|t| t.name == reference).collect();
        let found: Vec<&Task> = if by_name.is_empty() && !reference.is_empty() {
            tasks
                .iter()
                .filter(|t| t.id.starts_with(reference))
                .collect()
        } else {
            by_name
        };
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ControlError::NoSuchTask(reference.to_string())),
            many => Err(ControlError::AmbiguousTask(
                reference.to_string(),
                many.len(),
            )),
        }
    }

    /// Creates a one-off task on a node (`shoal task run`): the node given, or the ready,
    /// active node running the fewest tasks.
    pub async fn create_task(&self, req: CreateTaskRequest) -> Result<Task, ControlError> {
        let mut spec = req.spec.unwrap_or_default();
        validate_spec(&spec)?;
        self.resolve_networks(&mut spec, true)?;
        self.resolve_secrets(&mut spec)?;
        if !req.name.is_empty() {
            shoal_proto::limits::check_name("task name", &req.name)
                .map_err(ControlError::BadRequest)?;
        }
        let node = if req.node.is_empty() {
            let tasks = self.store.list::<Task>()?;
            let load = |id: &str| {
                tasks
                    .iter()
                    .filter(|t| {
                        t.value.node_id == id && t.value.desired_state <= TaskState::Running as i32
                    })
                    .count()
            };
            self.store
                .list::<Node>()?
                .into_iter()
                .map(|v| v.value)
                .filter(|n| {
                    n.state == NodeState::Ready as i32
                        && n.availability == Availability::Active as i32
                        && runtime_error(n).is_empty()
                })
                .min_by_key(|n| (load(&n.id), n.id.clone()))
                .ok_or_else(|| {
                    ControlError::Unplaceable("no ready, active node to run the task on".into())
                })?
        } else {
            let n = self.get_node(&req.node)?.node.unwrap_or_default();
            if n.state != NodeState::Ready as i32 {
                return Err(ControlError::Unplaceable(format!(
                    "node {} is not ready (it is down or disconnected)",
                    req.node
                )));
            }
            if !runtime_error(&n).is_empty() {
                return Err(ControlError::Unplaceable(format!(
                    "node {} cannot run containers: {}",
                    req.node,
                    runtime_error(&n)
                )));
            }
            n
        };
        let now = crate::time::unix_now();
        let id = shoal_pki::random_id();
        // A task on overlay networks goes through the allocator (its addresses) and the
        // scheduler, pinned to the node chosen here; others are assigned at once.
        let overlay = spec.networks.iter().any(|n| n.target != HOST_NETWORK);
        let (node_id, state, message, placement) = if overlay {
            (
                String::new(),
                TaskState::Pending,
                "pending task scheduling",
                Some(shoal_proto::objects::Placement {
                    constraints: vec![format!("node.id=={}", node.id)],
                    ..Default::default()
                }),
            )
        } else {
            (node.id.clone(), TaskState::Assigned, "assigned", None)
        };
        let task = Task {
            name: if req.name.is_empty() {
                id[..12].to_string()
            } else {
                req.name
            },
            id,
            node_id,
            spec: Some(spec),
            desired_state: TaskState::Running as i32,
            status: Some(TaskStatus {
                state: state as i32,
                message: message.into(),
                timestamp_unix_ms: now * 1000,
                ..Default::default()
            }),
            created_at_unix: now,
            updated_at_unix: now,
            placement,
            ..Default::default()
        };
        let mut b = Batch::default();
        b.put(&task, Expect::Absent);
        self.store.commit(b).await?;
        tracing::info!(task_id = %task.id, node_id = %node.id, "task created");
        Ok(task)
    }

    pub fn list_tasks(
        &self,
        node: &str,
        service_id: &str,
    ) -> Result<ListTasksResponse, ControlError> {
        let node_id = if node.is_empty() {
            None
        } else {
            Some(self.get_node(node)?.node.unwrap_or_default().id)
        };
        let mut tasks: Vec<Task> = self
            .store
            .list::<Task>()?
            .into_iter()
            .map(|v| v.value)
            .filter(|t| node_id.as_ref().is_none_or(|n| &t.node_id == n))
            .filter(|t| service_id.is_empty() || t.service_id == service_id)
            .collect();
        tasks.sort_by(|a, b| {
            a.name
                .cmp(&b.name)
                .then(b.created_at_unix.cmp(&a.created_at_unix))
        });
        let node_names = self
            .store
            .list::<Node>()?
            .into_iter()
            .map(|v| {
                let host = v.value.description.map(|d| d.hostname).unwrap_or_default();
                (v.value.id, host)
            })
            .collect();
        Ok(ListTasksResponse { tasks, node_names })
    }

    /// Stops a task and deletes it once its node reports it finished (at once if it has).
    pub async fn remove_task(&self, reference: &str) -> Result<(), ControlError> {
        loop {
            let task = self.get_task(reference)?;
            let Some(cur) = self.store.get::<Task>(&task.id)? else {
                return Ok(());
            };
            let state = cur.value.status.as_ref().map(|s| s.state).unwrap_or(0);
            let mut b = Batch::default();
            if crate::dispatcher::status::is_terminal(state) {
                b.delete::<Task>(&task.id, Expect::Version(cur.version));
            } else {
                let mut t = cur.value.clone();
                t.desired_state = TaskState::Remove as i32;
                t.updated_at_unix = crate::time::unix_now();
                b.put(&t, Expect::Version(cur.version));
            }
            match self.store.commit(b).await {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The task's output, relayed from the node that runs it.
    pub async fn task_logs(
        &self,
        reference: &str,
        follow: bool,
        tail: u64,
    ) -> Result<crate::dispatcher::logs::LogStream, Status> {
        let task = self.get_task(reference)?;
        self.logs.subscribe(&task, follow, tail).await
    }

    fn view(&self, node: Node) -> NodeView {
        let raft_id = crate::bootstrap::node_raft_id(&node);
        let manager_status = if node.role != NodeRole::Manager as i32 {
            String::new()
        } else if self.store.leader() == Some(raft_id) {
            "Leader".to_string()
        } else if self.store.members().iter().any(|m| m.id == raft_id)
            && if self.store.is_leader() {
                // The leader hears from every manager several times a second.
                self.store.heard_from(raft_id)
            } else {
                node.state == shoal_proto::objects::NodeState::Ready as i32
            }
        {
            "Reachable".to_string()
        } else {
            "Unreachable".to_string()
        };
        NodeView {
            node: Some(node),
            manager_status,
        }
    }

    pub fn list_nodes(&self) -> Result<Vec<NodeView>, ControlError> {
        let mut nodes: Vec<Node> = self
            .store
            .list::<Node>()?
            .into_iter()
            .map(|v| v.value)
            .collect();
        nodes.sort_by(|a, b| {
            let host = |n: &Node| {
                n.description
                    .as_ref()
                    .map(|d| d.hostname.clone())
                    .unwrap_or_default()
            };
            host(a).cmp(&host(b)).then(a.id.cmp(&b.id))
        });
        Ok(nodes.into_iter().map(|n| self.view(n)).collect())
    }

    /// A node by ID, unique ID prefix, or hostname.
    pub fn get_node(&self, reference: &str) -> Result<NodeView, ControlError> {
        if let Some(n) = self.store.get::<Node>(reference)? {
            return Ok(self.view(n.value));
        }
        let nodes: Vec<Node> = self
            .store
            .list::<Node>()?
            .into_iter()
            .map(|v| v.value)
            .collect();
        let by_host: Vec<&Node> = nodes
            .iter()
            .filter(|n| n.description.as_ref().map(|d| d.hostname.as_str()) == Some(reference))
            .collect();
        if by_host.len() > 1 {
            // Hostnames are what nodes said when they joined: two nodes may share one,
            // and neither may then be picked by it.
            let ids: Vec<&str> = by_host.iter().map(|n| n.id.as_str()).collect();
            return Err(ControlError::AmbiguousHostname(
                reference.to_string(),
                ids.join(", "),
            ));
        }
        let found: Vec<&Node> = if by_host.is_empty() && !reference.is_empty() {
            nodes
                .iter()
                .filter(|n| n.id.starts_with(reference))
                .collect()
        } else {
            by_host
        };
        match found.as_slice() {
            [one] => Ok(self.view((*one).clone())),
            [] => Err(ControlError::NoSuchNode(reference.to_string())),
            many => Err(ControlError::Ambiguous(reference.to_string(), many.len())),
        }
    }

    /// The join token of a role, after replacing it if `rotate`.
    pub async fn join_token(&self, role: &str, rotate: bool) -> Result<String, ControlError> {
        let role = Role::parse(role).ok_or_else(|| ControlError::BadRole(role.to_string()))?;
        loop {
            let cur = load_cluster(&self.store)?;
            let mut cluster = cur.value.clone();
            let digest = cluster
                .root_ca
                .as_ref()
                .map(|r| r.digest.clone())
                .unwrap_or_default();
            let tokens = cluster.join_tokens.get_or_insert_with(Default::default);
            let slot = match role {
                Role::Worker => &mut tokens.worker,
                Role::Manager => &mut tokens.manager,
            };
            if !rotate {
                return Ok(slot.clone());
            }
            *slot = JoinToken::generate(&digest).to_string();
            let token = slot.clone();
            let mut b = Batch::default();
            b.put(&cluster, Expect::Version(cur.version));
            match self.store.commit(b).await {
                Ok(_) => {
                    tracing::info!(role = %role, "join token rotated");
                    return Ok(token);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub fn managers(&self) -> Result<Vec<String>, ControlError> {
        manager_addrs(&self.store)
            .map_err(|s| ControlError::Store(StoreError::Raft(s.message().to_string())))
    }

    pub fn cluster_info(&self) -> Result<ClusterInfo, ControlError> {
        let c = load_cluster(&self.store)?.value;
        let spec = c.spec.unwrap_or_default();
        Ok(ClusterInfo {
            cluster_id: c.id,
            root_ca_digest: c.root_ca.map(|r| r.digest).unwrap_or_default(),
            cert_expiry_secs: spec.cert_expiry_secs,
            heartbeat_period_ms: spec.heartbeat_period_ms,
            managers: self.managers()?,
            created_at_unix: c.created_at_unix,
            snapshot_interval: effective_snapshot_interval(&spec),
            election_timeout_ms: effective_election_timeout(&spec).as_millis() as u64,
            autolock: spec.autolock,
            unlock_key: String::new(),
            network: c.network,
        })
    }
}

/// The snapshot interval a cluster spec asks for (0 is the default).
pub fn effective_snapshot_interval(spec: &shoal_proto::objects::ClusterSpec) -> u64 {
    match spec.snapshot_interval {
        0 => shoal_store::DEFAULT_SNAPSHOT_INTERVAL,
        n => n,
    }
}

/// The election timeout a cluster spec asks for (0 is the default).
pub fn effective_election_timeout(spec: &shoal_proto::objects::ClusterSpec) -> std::time::Duration {
    match spec.election_timeout_ms {
        0 => shoal_store::DEFAULT_ELECTION_TIMEOUT,
        ms => std::time::Duration::from_millis(ms),
    }
}

/// The control API: one implementation, whatever the transport. Its callers are a
/// manager over mTLS (checked like every node call) or the node's local administrator on
/// the unix socket.
pub struct ControlService(pub ControlApi);

const MANAGERS: &[Role] = &[Role::Manager];

/// Marks a request that came in on the node's unix socket. Only the socket's server
/// inserts it; nothing that arrives over the network can.
#[derive(Clone, Copy, Debug)]
pub struct LocalAdmin;

/// Who is calling the control API.
pub enum ControlCaller {
    /// Whoever may open the node's unix socket (root or the socket's group).
    LocalAdmin,
    /// A manager node, verified and checked like every node call.
    Node(crate::auth::Caller),
    /// The local administrator of another manager, whose call that manager (a follower)
    /// forwarded to this one; `by` is the forwarding manager, checked like any caller.
    Forwarded { by: crate::auth::Caller },
}

/// The header a follower adds when it forwards its local administrator's call to the
/// leader. Believed only from a manager certificate, and never forwarded again.
pub const FORWARDED_HEADER: &str = "shoal-forwarded-for";

/// The caller of a control API request: the local administrator, or a manager whose
/// certificate passes every check.
fn control_caller<T>(req: &Request<T>, call: &'static str) -> Result<ControlCaller, Status> {
    if req.extensions().get::<LocalAdmin>().is_some() {
        return Ok(ControlCaller::LocalAdmin);
    }
    let caller = authorize(req, call, MANAGERS)?;
    if req.metadata().get(FORWARDED_HEADER).is_some() {
        tracing::debug!(by = %caller.node_id(), call, "a call forwarded by a follower");
        return Ok(ControlCaller::Forwarded { by: caller });
    }
    Ok(ControlCaller::Node(caller))
}

pub type TaskLogsStream = tokio_stream::wrappers::ReceiverStream<Result<TaskLogsMessage, Status>>;

#[tonic::async_trait]
impl Control for ControlService {
    type TaskLogsStream = TaskLogsStream;

    async fn create_service(
        &self,
        req: Request<CreateServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        control_caller(&req, "CreateService")?;
        Ok(Response::new(
            self.0
                .create_service(req.into_inner().spec.unwrap_or_default())
                .await?,
        ))
    }
    async fn update_service(
        &self,
        req: Request<UpdateServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        control_caller(&req, "UpdateService")?;
        Ok(Response::new(
            self.0.update_service(req.into_inner()).await?,
        ))
    }
    async fn get_service(
        &self,
        req: Request<GetServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        control_caller(&req, "GetService")?;
        Ok(Response::new(
            self.0.get_service(&req.into_inner().reference)?.value,
        ))
    }
    async fn list_services(
        &self,
        req: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        control_caller(&req, "ListServices")?;
        Ok(Response::new(self.0.list_services()?))
    }
    async fn remove_service(
        &self,
        req: Request<RemoveServiceRequest>,
    ) -> Result<Response<RemoveServiceResponse>, Status> {
        control_caller(&req, "RemoveService")?;
        self.0.remove_service(&req.into_inner().reference).await?;
        Ok(Response::new(RemoveServiceResponse {}))
    }
    async fn create_network(
        &self,
        req: Request<shoal_proto::control::CreateNetworkRequest>,
    ) -> Result<Response<shoal_proto::objects::Network>, Status> {
        control_caller(&req, "CreateNetwork")?;
        Ok(Response::new(
            self.0
                .create_network(req.into_inner().spec.unwrap_or_default())
                .await?,
        ))
    }
    async fn list_networks(
        &self,
        req: Request<shoal_proto::control::ListNetworksRequest>,
    ) -> Result<Response<shoal_proto::control::ListNetworksResponse>, Status> {
        control_caller(&req, "ListNetworks")?;
        Ok(Response::new(shoal_proto::control::ListNetworksResponse {
            networks: self.0.list_networks()?,
        }))
    }
    async fn get_network(
        &self,
        req: Request<shoal_proto::control::GetNetworkRequest>,
    ) -> Result<Response<shoal_proto::objects::Network>, Status> {
        control_caller(&req, "GetNetwork")?;
        Ok(Response::new(
            self.0.get_network(&req.into_inner().reference)?,
        ))
    }
    async fn remove_network(
        &self,
        req: Request<shoal_proto::control::RemoveNetworkRequest>,
    ) -> Result<Response<shoal_proto::control::RemoveNetworkResponse>, Status> {
        control_caller(&req, "RemoveNetwork")?;
        self.0.remove_network(&req.into_inner().reference).await?;
        Ok(Response::new(
            shoal_proto::control::RemoveNetworkResponse {},
        ))
    }
    async fn create_secret(
        &self,
        req: Request<shoal_proto::control::CreateSecretRequest>,
    ) -> Result<Response<shoal_proto::control::SecretView>, Status> {
        control_caller(&req, "CreateSecret")?;
        let r = req.into_inner();
        let kind = crate::controlapi_secrets::Kind::parse(&r.kind)?;
        Ok(Response::new(
            self.0
                .create_secret(kind, r.spec.unwrap_or_default(), r.data)
                .await?,
        ))
    }
    async fn update_secret(
        &self,
        req: Request<shoal_proto::control::UpdateSecretRequest>,
    ) -> Result<Response<shoal_proto::control::SecretView>, Status> {
        control_caller(&req, "UpdateSecret")?;
        let r = req.into_inner();
        let kind = crate::controlapi_secrets::Kind::parse(&r.kind)?;
        Ok(Response::new(
            self.0.update_secret(kind, &r.reference, r.data).await?,
        ))
    }
    async fn list_secrets(
        &self,
        req: Request<shoal_proto::control::ListSecretsRequest>,
    ) -> Result<Response<shoal_proto::control::ListSecretsResponse>, Status> {
        control_caller(&req, "ListSecrets")?;
        let kind = crate::controlapi_secrets::Kind::parse(&req.get_ref().kind)?;
        Ok(Response::new(shoal_proto::control::ListSecretsResponse {
            secrets: self.0.list_secrets(kind)?,
        }))
    }
    async fn get_secret(
        &self,
        req: Request<shoal_proto::control::GetSecretRequest>,
    ) -> Result<Response<shoal_proto::control::SecretView>, Status> {
        control_caller(&req, "GetSecret")?;
        let r = req.into_inner();
        let kind = crate::controlapi_secrets::Kind::parse(&r.kind)?;
        Ok(Response::new(self.0.get_secret(kind, &r.reference)?))
    }
    async fn remove_secret(
        &self,
        req: Request<shoal_proto::control::RemoveSecretRequest>,
    ) -> Result<Response<shoal_proto::control::RemoveSecretResponse>, Status> {
        control_caller(&req, "RemoveSecret")?;
        let r = req.into_inner();
        let kind = crate::controlapi_secrets::Kind::parse(&r.kind)?;
        self.0.remove_secret(kind, &r.reference).await?;
        Ok(Response::new(shoal_proto::control::RemoveSecretResponse {}))
    }
    async fn update_node(
        &self,
        req: Request<UpdateNodeRequest>,
    ) -> Result<Response<NodeView>, Status> {
        control_caller(&req, "UpdateNode")?;
        Ok(Response::new(self.0.update_node(req.into_inner()).await?))
    }
    async fn update_cluster(
        &self,
        req: Request<shoal_proto::control::UpdateClusterRequest>,
    ) -> Result<Response<ClusterInfo>, Status> {
        control_caller(&req, "UpdateCluster")?;
        Ok(Response::new(
            self.0.update_cluster(req.into_inner()).await?,
        ))
    }
    async fn get_backup(
        &self,
        req: Request<shoal_proto::control::GetBackupRequest>,
    ) -> Result<Response<shoal_proto::control::GetBackupResponse>, Status> {
        control_caller(&req, "GetBackup")?;
        let store = self.0.store.clone();
        let (data, needs_unlock_key) =
            tokio::task::spawn_blocking(move || crate::recovery::backup(&store))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| match e {
                    crate::recovery::RecoveryError::Store(s) => Status::from(ControlError::from(s)),
                    other => Status::failed_precondition(other.to_string()),
                })?;
        Ok(Response::new(shoal_proto::control::GetBackupResponse {
            data,
            needs_unlock_key,
        }))
    }
    async fn get_unlock_key(
        &self,
        req: Request<shoal_proto::control::GetUnlockKeyRequest>,
    ) -> Result<Response<shoal_proto::control::GetUnlockKeyResponse>, Status> {
        control_caller(&req, "GetUnlockKey")?;
        let c = load_cluster(&self.0.store)
            .map_err(ControlError::from)?
            .value;
        let unlock_key = shoal_store::UnlockKey::from_bytes(&c.unlock_key)
            .filter(|_| c.spec.as_ref().is_some_and(|s| s.autolock))
            .map(|k| k.to_human())
            .unwrap_or_default();
        Ok(Response::new(shoal_proto::control::GetUnlockKeyResponse {
            unlock_key,
        }))
    }
    async fn revoke_certificate(
        &self,
        req: Request<shoal_proto::control::RevokeCertificateRequest>,
    ) -> Result<Response<shoal_proto::control::RevokeCertificateResponse>, Status> {
        control_caller(&req, "RevokeCertificate")?;
        let r = req.into_inner();
        self.0.revoke_certificate(&r.node, &r.serial).await?;
        Ok(Response::new(
            shoal_proto::control::RevokeCertificateResponse {},
        ))
    }
    async fn get_ca(
        &self,
        req: Request<shoal_proto::control::GetCaRequest>,
    ) -> Result<Response<shoal_proto::control::CaStatus>, Status> {
        control_caller(&req, "GetCa")?;
        Ok(Response::new(self.0.ca_status()?))
    }
    async fn rotate_ca(
        &self,
        req: Request<shoal_proto::control::RotateCaRequest>,
    ) -> Result<Response<shoal_proto::control::CaStatus>, Status> {
        control_caller(&req, "RotateCa")?;
        let r = req.into_inner();
        Ok(Response::new(
            self.0.rotate_ca(r.force, &r.cert_pem, &r.key_pem).await?,
        ))
    }
    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        control_caller(&req, "RemoveNode")?;
        let r = req.into_inner();
        self.0.remove_node(&r.reference, r.force).await?;
        Ok(Response::new(RemoveNodeResponse {}))
    }

    async fn demote_node(
        &self,
        req: Request<shoal_proto::control::DemoteNodeRequest>,
    ) -> Result<Response<NodeView>, Status> {
        control_caller(&req, "DemoteNode")?;
        Ok(Response::new(
            self.0.demote_node(&req.into_inner().reference).await?,
        ))
    }

    async fn promote_node(
        &self,
        req: Request<shoal_proto::control::PromoteNodeRequest>,
    ) -> Result<Response<NodeView>, Status> {
        control_caller(&req, "PromoteNode")?;
        Ok(Response::new(
            self.0.promote_node(&req.into_inner().reference).await?,
        ))
    }

    async fn create_task(&self, req: Request<CreateTaskRequest>) -> Result<Response<Task>, Status> {
        control_caller(&req, "CreateTask")?;
        Ok(Response::new(self.0.create_task(req.into_inner()).await?))
    }
    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        control_caller(&req, "ListTasks")?;
        let r = req.into_inner();
        Ok(Response::new(self.0.list_tasks(&r.node, &r.service_id)?))
    }
    async fn get_task(&self, req: Request<GetTaskRequest>) -> Result<Response<Task>, Status> {
        control_caller(&req, "GetTask")?;
        Ok(Response::new(self.0.get_task(&req.into_inner().reference)?))
    }
    async fn remove_task(
        &self,
        req: Request<RemoveTaskRequest>,
    ) -> Result<Response<RemoveTaskResponse>, Status> {
        control_caller(&req, "RemoveTask")?;
        self.0.remove_task(&req.into_inner().reference).await?;
        Ok(Response::new(RemoveTaskResponse {}))
    }
    async fn task_logs(
        &self,
        req: Request<TaskLogsRequest>,
    ) -> Result<Response<TaskLogsStream>, Status> {
        let caller = control_caller(&req, "TaskLogs")?;
        let r = req.into_inner();
        let rx = self.0.task_logs(&r.reference, r.follow, r.tail).await?;
        let rx = match caller {
            ControlCaller::Node(c) | ControlCaller::Forwarded { by: c } => {
                crate::auth::guard_stream(c, rx)
            }
            ControlCaller::LocalAdmin => rx,
        };
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        control_caller(&req, "ListNodes")?;
        Ok(Response::new(ListNodesResponse {
            nodes: self.0.list_nodes()?,
        }))
    }
    async fn get_node(&self, req: Request<GetNodeRequest>) -> Result<Response<NodeView>, Status> {
        control_caller(&req, "GetNode")?;
        Ok(Response::new(self.0.get_node(&req.into_inner().reference)?))
    }
    async fn get_join_token(
        &self,
        req: Request<GetJoinTokenRequest>,
    ) -> Result<Response<GetJoinTokenResponse>, Status> {
        control_caller(&req, "GetJoinToken")?;
        let r = req.into_inner();
        if r.rotate || r.ttl_secs > 0 || r.max_uses > 0 {
            return Err(Status::invalid_argument(
                "GetJoinToken only reads: rotating a token or making a limited one is UpdateJoinToken ('shoal join-token --rotate|--ttl|--max-uses')",
            ));
        }
        Ok(Response::new(self.0.join_token_req(r).await?))
    }
    async fn update_join_token(
        &self,
        req: Request<GetJoinTokenRequest>,
    ) -> Result<Response<GetJoinTokenResponse>, Status> {
        control_caller(&req, "UpdateJoinToken")?;
        Ok(Response::new(
            self.0.join_token_req(req.into_inner()).await?,
        ))
    }
    async fn get_cluster_info(
        &self,
        req: Request<GetClusterInfoRequest>,
    ) -> Result<Response<ClusterInfo>, Status> {
        control_caller(&req, "GetClusterInfo")?;
        Ok(Response::new(self.0.cluster_info()?))
    }
}

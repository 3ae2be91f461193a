//! The control API: the cluster state the CLI reads and changes. [`ControlApi`] holds the
//! logic; it is served to manager certificates over mTLS ([`ControlService`]) and to the
//! local administrator over the node's unix socket (by the daemon).

use crate::auth::authorize;
use crate::bootstrap::load_cluster;
use crate::ca_server::manager_addrs;
use shoal_pki::{JoinToken, Role};
use shoal_proto::control::control_server::Control;
use shoal_proto::control::{
    ClusterInfo, GetClusterInfoRequest, GetJoinTokenRequest, GetJoinTokenResponse, GetNodeRequest,
    ListNodesRequest, ListNodesResponse, NodeView,
};
use shoal_proto::objects::{Node, NodeRole};
use shoal_store::{Batch, Expect, Store, StoreError};
use tonic::{Request, Response, Status};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no such node: {0}")]
    NoSuchNode(String),
    #[error(
        "node reference {0:?} is ambiguous (it matches {1} nodes): use more characters of the ID"
    )]
    Ambiguous(String, usize),
    #[error("unknown role {0:?}: use 'worker' or 'manager'")]
    BadRole(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ControlError> for Status {
    fn from(e: ControlError) -> Status {
        match &e {
            ControlError::NoSuchNode(_) => Status::not_found(e.to_string()),
            ControlError::Ambiguous(..) | ControlError::BadRole(_) => {
                Status::invalid_argument(e.to_string())
            }
            ControlError::Store(_) => Status::unavailable(e.to_string()),
        }
    }
}

#[derive(Clone)]
pub struct ControlApi {
    store: Store,
    /// The node this manager runs on.
    local_node: String,
}

impl ControlApi {
    pub fn new(store: Store, local_node: String) -> Self {
        ControlApi { store, local_node }
    }

    fn view(&self, node: Node) -> NodeView {
        let manager_status = if node.role != NodeRole::Manager as i32 {
            String::new()
        } else if node.id == self.local_node && self.store.is_leader() {
            "Leader".to_string()
        } else if node.state == shoal_proto::objects::NodeState::Ready as i32 {
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
        })
    }
}

/// The control API over mTLS: manager certificates only.
pub struct ControlService(pub ControlApi);

const MANAGERS: &[Role] = &[Role::Manager];

#[tonic::async_trait]
impl Control for ControlService {
    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        authorize(&req, "ListNodes", MANAGERS)?;
        Ok(Response::new(ListNodesResponse {
            nodes: self.0.list_nodes()?,
        }))
    }
    async fn get_node(&self, req: Request<GetNodeRequest>) -> Result<Response<NodeView>, Status> {
        authorize(&req, "GetNode", MANAGERS)?;
        Ok(Response::new(self.0.get_node(&req.into_inner().reference)?))
    }
    async fn get_join_token(
        &self,
        req: Request<GetJoinTokenRequest>,
    ) -> Result<Response<GetJoinTokenResponse>, Status> {
        authorize(&req, "GetJoinToken", MANAGERS)?;
        let r = req.into_inner();
        Ok(Response::new(GetJoinTokenResponse {
            token: self.0.join_token(&r.role, r.rotate).await?,
            managers: self.0.managers()?,
        }))
    }
    async fn get_cluster_info(
        &self,
        req: Request<GetClusterInfoRequest>,
    ) -> Result<Response<ClusterInfo>, Status> {
        authorize(&req, "GetClusterInfo", MANAGERS)?;
        Ok(Response::new(self.0.cluster_info()?))
    }
}

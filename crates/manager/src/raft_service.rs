//! Raft between managers over the mTLS listener: the receiving side of the store's
//! transport, and the leader's answer to a manager asking to join the Raft group. Only
//! manager certificates may call, checked like every other call; a manager that is still
//! joining (its store holds nothing yet, so it knows no members) checks the role alone.

use crate::cluster::not_leader;
use crate::security::auth::authorize;
use shoal_pki::Role;
use shoal_proto::raft::raft_server::Raft;
use shoal_proto::raft::{JoinRaftRequest, JoinRaftResponse, RaftMessage};
use shoal_store::{RaftRpc, Store, StoreError};
use tonic::{Request, Response, Status};

const MANAGERS: &[Role] = &[Role::Manager];

pub struct RaftService {
    pub store: Store,
}

/// The Raft service of a manager that is joining: its listener has no access list yet.
pub struct JoiningRaftService {
    pub store: Store,
}

fn store_err(store: &Store, e: StoreError) -> Status {
    match e {
        StoreError::NotLeader => not_leader(store),
        e => Status::unavailable(format!("raft: {e}")),
    }
}

async fn call(
    store: &Store,
    m: RaftMessage,
    sender: Option<u64>,
) -> Result<Response<RaftMessage>, Status> {
    let rpc = RaftRpc::from_u32(m.rpc)
        .ok_or_else(|| Status::invalid_argument(format!("unknown raft call {}", m.rpc)))?;
    let body = store
        .handle_raft(rpc, &m.body, sender)
        .await
        .map_err(|e| store_err(store, e))?;
    Ok(Response::new(RaftMessage { rpc: m.rpc, body }))
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn call(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let caller = authorize(&req, "Raft", MANAGERS)?;
        // Only from a member of the group, speaking for itself: a removed or demoted
        // manager (or one that claims another's ID) is not heard.
        let node = self
            .store
            .get::<shoal_proto::objects::Node>(caller.node_id().as_str())
            .ok()
            .flatten()
            .map(|n| n.value)
            .filter(|n| n.role == shoal_proto::objects::NodeRole::Manager as i32);
        let Some(id) = node.map(|n| crate::bootstrap::node_raft_id(&n)) else {
            return Err(Status::permission_denied(format!(
                "Raft refused: node {} is not a manager",
                caller.node_id()
            )));
        };
        if !self.store.members().iter().any(|m| m.id == id) {
            return Err(Status::permission_denied(format!(
                "Raft refused: node {} is not a member of the managers' raft group",
                caller.node_id()
            )));
        }
        call(&self.store, req.into_inner(), Some(id)).await
    }

    async fn join(
        &self,
        req: Request<JoinRaftRequest>,
    ) -> Result<Response<JoinRaftResponse>, Status> {
        let caller = authorize(&req, "JoinRaft", MANAGERS)?;
        let addr = req.into_inner().addr;
        if addr.is_empty() || addr.len() > shoal_proto::limits::MAX_HOSTNAME + 6 {
            return Err(Status::invalid_argument(
                "JoinRaft needs the joining manager's address (host:port)",
            ));
        }
        let node = self
            .store
            .get::<shoal_proto::objects::Node>(caller.node_id().as_str())
            .map_err(|e| store_err(&self.store, e))?
            .map(|n| n.value)
            .filter(|n| n.role == shoal_proto::objects::NodeRole::Manager as i32)
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "node {} is not a manager: it cannot join the raft group",
                    caller.node_id()
                ))
            })?;
        let id = crate::bootstrap::node_raft_id(&node);
        if self.store.members().iter().any(|m| m.id == id && m.voter) {
            return Ok(Response::new(JoinRaftResponse {
                applied_index: self.store.applied_index(),
            }));
        }
        tracing::info!(node_id = %caller.node_id(), raft_id = id, %addr, "adding a manager to the raft group");
        if !self.store.is_leader() {
            return Err(not_leader(&self.store));
        }
        self.store
            .add_voter(id, &addr)
            .await
            .map_err(|e| store_err(&self.store, e))?;
        Ok(Response::new(JoinRaftResponse {
            applied_index: self.store.applied_index(),
        }))
    }
}

#[tonic::async_trait]
impl Raft for JoiningRaftService {
    async fn call(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        // Verified by the TLS layer as a certificate of this cluster; the role is all a
        // manager with an empty store can check.
        let role = req
            .extensions()
            .get::<JoiningPeer>()
            .and_then(|p| p.0.as_ref())
            .map(|i| i.role());
        if role != Some(Role::Manager) {
            return Err(Status::permission_denied(
                "Raft is for manager certificates only",
            ));
        }
        call(&self.store, req.into_inner(), None).await
    }

    async fn join(
        &self,
        _req: Request<JoinRaftRequest>,
    ) -> Result<Response<JoinRaftResponse>, Status> {
        Err(Status::failed_precondition(
            "this manager is still joining: ask the leader",
        ))
    }
}

/// What a joining manager's listener knows of a caller: its verified identity, if any.
#[derive(Clone, Debug)]
pub struct JoiningPeer(pub Option<shoal_pki::NodeIdentity>);

/// The admission of a joining manager's listener: the cluster's roots, nothing more.
#[derive(Clone)]
pub struct JoiningAdmission {
    pub trust: shoal_pki::ClusterTrust,
}

impl crate::listener::Admission for JoiningAdmission {
    type Info = JoiningPeer;
    fn trust(&self) -> shoal_pki::ClusterTrust {
        self.trust.clone()
    }
    fn info(&self, _remote: std::net::SocketAddr, peer: Option<shoal_pki::Peer>) -> JoiningPeer {
        // Only a node joins the managers' Raft group.
        JoiningPeer(match peer {
            Some(shoal_pki::Peer::Node(n)) => Some(n),
            _ => None,
        })
    }
}

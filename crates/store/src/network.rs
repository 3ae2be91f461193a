//! Raft transport between managers.
//!
//! The store does not know how bytes reach another manager: the manager gives it a
//! [`RaftTransport`] (gRPC over its mTLS listener, manager role required, as DESIGN.md §5
//! says). Here, openraft's requests and replies become opaque bodies (JSON of openraft's
//! serde types) and back; [`crate::Store::handle_raft`] is the receiving side.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::raft::{NodeId, TypeConfig};

/// Which Raft call a body carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftRpc {
    AppendEntries = 1,
    Vote = 2,
    InstallSnapshot = 3,
}

impl RaftRpc {
    pub fn from_u32(v: u32) -> Option<RaftRpc> {
        match v {
            1 => Some(RaftRpc::AppendEntries),
            2 => Some(RaftRpc::Vote),
            3 => Some(RaftRpc::InstallSnapshot),
            _ => None,
        }
    }
}

/// Why a body could not be delivered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The peer could not be reached (or answered nothing usable): retried by Raft.
    #[error("{0}")]
    Unreachable(String),
    /// The peer answered with an error of its own (refused us, for one).
    #[error("{0}")]
    Refused(String),
}

pub type TransportFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, TransportError>> + Send>>;

/// Carries one Raft call to the manager at `addr` and returns its reply body.
pub trait RaftTransport: Send + Sync + 'static {
    fn call(&self, target: u64, addr: &str, rpc: RaftRpc, body: Vec<u8>) -> TransportFuture;
}

/// A transport that reaches nobody: for a store that is and stays a single member.
pub struct NoTransport;

impl RaftTransport for NoTransport {
    fn call(&self, target: u64, addr: &str, _rpc: RaftRpc, _body: Vec<u8>) -> TransportFuture {
        let msg =
            format!("raft peer {target} at {addr:?} is unreachable: this store has no transport");
        Box::pin(async move { Err(TransportError::Unreachable(msg)) })
    }
}

/// When each peer was last heard from (a call of ours it answered, or a call of its).
pub(crate) type Contacts =
    Arc<std::sync::Mutex<std::collections::HashMap<NodeId, std::time::Instant>>>;

pub(crate) fn heard_from(contacts: &Contacts, id: NodeId) {
    if let Ok(mut c) = contacts.lock() {
        c.insert(id, std::time::Instant::now());
    }
}

/// Creates a [`PeerClient`] per peer.
pub(crate) struct Network {
    pub(crate) transport: Arc<dyn RaftTransport>,
    pub(crate) contacts: Contacts,
}

/// A client for one peer.
pub(crate) struct PeerClient {
    target: NodeId,
    addr: String,
    transport: Arc<dyn RaftTransport>,
    contacts: Contacts,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
            contacts: self.contacts.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Text(String);

impl PeerClient {
    async fn send<Req, Resp, E>(
        &self,
        rpc: RaftRpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = serde_json::to_vec(req)
            .map_err(|e| RPCError::Network(NetworkError::new(&Text(e.to_string()))))?;
        let call = self.transport.call(self.target, &self.addr, rpc, body);
        let reply = match tokio::time::timeout(option.hard_ttl(), call).await {
            Ok(Ok(r)) => r,
            Ok(Err(TransportError::Unreachable(m))) => {
                return Err(RPCError::Unreachable(Unreachable::new(&Text(m))))
            }
            Ok(Err(TransportError::Refused(m))) => {
                return Err(RPCError::Network(NetworkError::new(&Text(m))))
            }
            Err(_) => {
                return Err(RPCError::Unreachable(Unreachable::new(&Text(format!(
                    "raft peer {} at {} did not answer in time",
                    self.target, self.addr
                )))))
            }
        };
        heard_from(&self.contacts, self.target);
        let decoded: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&reply)
            .map_err(|e| RPCError::Network(NetworkError::new(&Text(e.to_string()))))?;
        decoded
            .map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(RaftRpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(RaftRpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(RaftRpc::Vote, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_transport_every_peer_is_unreachable() {
        let mut client = Network {
            transport: Arc::new(NoTransport),
            contacts: Default::default(),
        }
        .new_client(7, &BasicNode::new("10.0.0.7:4242"))
        .await;
        let rpc = VoteRequest::new(openraft::Vote::new(1, 1), None);
        let err = client
            .vote(rpc, RPCOption::new(std::time::Duration::from_secs(1)))
            .await
            .expect_err("no transport");
        assert!(matches!(err, RPCError::Unreachable(_)), "{err}");
        assert!(err.to_string().contains("no transport"), "{err}");
    }
}

//! Raft transport between managers.
//!
//! Today the Raft group has one member (this manager), so there is nobody to
//! talk to: every peer is reported unreachable. When managers are replicated,
//! this module will carry Raft RPCs (append-entries, vote, snapshots) over the
//! mTLS gRPC listener, manager role required, as DESIGN.md §5 says.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;

use crate::raft::{NodeId, TypeConfig};

/// Creates a [`PeerClient`] per peer.
pub(crate) struct Network;

/// A client for one peer; every call fails as unreachable.
pub(crate) struct PeerClient {
    target: NodeId,
    addr: String,
}

/// Why a peer cannot be reached yet.
#[derive(thiserror::Error, Debug)]
#[error(
    "raft peer {target} at {addr:?} is unreachable: manager replication is not \
     implemented yet, this store runs a single-member Raft group"
)]
struct NoTransport {
    target: NodeId,
    addr: String,
}

impl PeerClient {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&NoTransport {
            target: self.target,
            addr: self.addr.clone(),
        }))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_peer_is_unreachable() {
        let mut client = Network
            .new_client(7, &BasicNode::new("10.0.0.7:4242"))
            .await;
        let rpc = VoteRequest::new(openraft::Vote::new(1, 1), None);
        let err = client
            .vote(rpc, RPCOption::new(std::time::Duration::from_secs(1)))
            .await
            .expect_err("no transport yet");
        assert!(matches!(err, RPCError::Unreachable(_)), "{err}");
        assert!(err.to_string().contains("not implemented yet"), "{err}");
    }
}

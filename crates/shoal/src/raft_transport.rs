//! The store's Raft transport: gRPC to the other managers' mTLS listeners, presenting this
//! node's manager certificate. A peer is found by its Raft ID through the node records
//! (a manager's advertised address), falling back to the address in the Raft membership.

use shoal_agent::connect::lazy_channel;
use shoal_proto::objects::{Node, NodeRole};
use shoal_proto::raft::raft_client::RaftClient;
use shoal_proto::raft::RaftMessage;
use shoal_store::{RaftRpc, RaftTransport, Store, TransportError, TransportFuture};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tonic::transport::Channel;

/// Raft messages can carry many entries or a snapshot chunk.
const MAX_MESSAGE: usize = 64 << 20;

pub struct GrpcTransport {
    /// This node's credentials; none yet while `shoal init` creates them.
    tls: Mutex<Option<Arc<rustls::ClientConfig>>>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Peers' addresses by Raft ID, forgotten when a peer is unreachable.
    addrs: Arc<Mutex<HashMap<u64, String>>>,
    /// The store this transport serves, to find peers' addresses (set once it is open).
    store: OnceLock<Store>,
}

impl GrpcTransport {
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>) -> Arc<GrpcTransport> {
        Arc::new(GrpcTransport {
            tls: Mutex::new(tls),
            channels: Mutex::new(HashMap::new()),
            addrs: Arc::new(Mutex::new(HashMap::new())),
            store: OnceLock::new(),
        })
    }

    pub fn set_store(&self, store: &Store) {
        let _ = self.store.set(store.clone());
    }

    /// New credentials (a renewal or a root rotation): later calls use them.
    pub fn set_tls(&self, tls: Arc<rustls::ClientConfig>) {
        if let Ok(mut t) = self.tls.lock() {
            *t = Some(tls);
        }
        if let Ok(mut c) = self.channels.lock() {
            c.clear();
        }
    }

    /// Where the manager with Raft ID `target` listens.
    fn resolve(&self, target: u64, fallback: &str) -> String {
        if let Some(a) = self.addrs.lock().ok().and_then(|m| m.get(&target).cloned()) {
            return a;
        }
        let from_nodes = self.store.get().and_then(|s| {
            s.list::<Node>().ok()?.into_iter().find_map(|n| {
                let n = n.value;
                (n.role == NodeRole::Manager as i32
                    && shoal_manager::bootstrap::node_raft_id(&n) == target
                    && !n.addr.is_empty())
                .then_some(n.addr)
            })
        });
        let addr = from_nodes.unwrap_or_else(|| fallback.to_string());
        if let Ok(mut m) = self.addrs.lock() {
            m.insert(target, addr.clone());
        }
        addr
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().map_err(|e| e.to_string())?;
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let tls = self
            .tls
            .lock()
            .map_err(|e| e.to_string())?
            .clone()
            .ok_or("this manager has no certificate yet")?;
        let c = lazy_channel(addr, tls).map_err(|e| e.to_string())?;
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

impl RaftTransport for GrpcTransport {
    fn call(&self, target: u64, addr: &str, rpc: RaftRpc, body: Vec<u8>) -> TransportFuture {
        let addr = self.resolve(target, addr);
        let channel = self.channel(&addr);
        let addrs = self.addrs.clone();
        Box::pin(async move {
            // An unreachable peer is looked up again next time (it may have moved).
            let unreachable = |m: String| {
                if let Ok(mut a) = addrs.lock() {
                    a.remove(&target);
                }
                TransportError::Unreachable(m)
            };
            let channel = channel.map_err(unreachable)?;
            let mut client = RaftClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
            match client
                .call(RaftMessage {
                    rpc: rpc as u32,
                    body,
                })
                .await
            {
                Ok(r) => Ok(r.into_inner().body),
                Err(s) if s.code() == tonic::Code::Unavailable => Err(unreachable(format!(
                    "manager {target} at {addr}: {}",
                    s.message()
                ))),
                Err(s) => Err(TransportError::Refused(format!(
                    "manager {target} at {addr}: {}",
                    s.message()
                ))),
            }
        })
    }
}

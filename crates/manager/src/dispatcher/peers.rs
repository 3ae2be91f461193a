//! The WireGuard peers every node is told about over its session (no gossip): every
//! node with a key and a tunnel address, less removed nodes (gone from the store) and
//! nodes whose certificate is revoked. Kept by one loop on the leader from the store's
//! changes and shared with the sessions through a watch channel, so a change is
//! computed once, not once per session, and sessions hear only of real changes.

use shoal_proto::dispatcher::Peer;
use shoal_proto::objects::{Node, RevokedCert};
use shoal_store::{Object, Store};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Every node's peer entry, by node ID order.
pub type Peers = Arc<Vec<Peer>>;

/// Changes closer together than this are applied together.
const COALESCE: Duration = Duration::from_millis(50);

/// The peers among `nodes`.
pub fn peers_of(nodes: &[Node], revoked: &HashSet<String>) -> Vec<Peer> {
    let port = crate::controlapi_networks::DEFAULT_DATA_PATH_PORT;
    let mut out: Vec<Peer> = nodes
        .iter()
        .filter(|n| !n.tunnel_addr.is_empty())
        .filter(|n| {
            n.certificate
                .as_ref()
                .is_none_or(|c| !revoked.contains(&c.serial))
        })
        .filter_map(|n| {
            let key = n.description.as_ref()?.wg_public_key.clone();
            let ip = n.addr.rsplit_once(':').map_or(n.addr.as_str(), |x| x.0);
            if key.is_empty() || ip.is_empty() {
                return None;
            }
            Some(Peer {
                node_id: n.id.clone(),
                public_key: key,
                endpoint: format!("{ip}:{port}"),
                tunnel_addr: n.tunnel_addr.clone(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    out
}

fn load(store: &Store) -> Option<Vec<Peer>> {
    let nodes: Vec<Node> = store
        .list::<Node>()
        .ok()?
        .into_iter()
        .map(|v| v.value)
        .collect();
    let revoked: HashSet<String> = store
        .list::<RevokedCert>()
        .ok()?
        .into_iter()
        .map(|v| v.value.serial)
        .collect();
    Some(peers_of(&nodes, &revoked))
}

/// Keeps `tx` current until cancelled.
pub async fn run(store: Store, tx: Arc<watch::Sender<Peers>>, cancel: CancellationToken) {
    let Ok(mut watch) = store.watch() else {
        tracing::error!("the peer list cannot watch the store");
        return;
    };
    loop {
        if let Some(p) = load(&store) {
            tx.send_if_modified(|cur| {
                if **cur == p {
                    return false;
                }
                *cur = Arc::new(p);
                true
            });
        }
        // Until something a peer list is made of changes.
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                ev = watch.events.recv() => match ev {
                    Ok(ev) => {
                        if ev.changes.iter().any(|c| c.table() == Node::TABLE || c.table() == RevokedCert::TABLE) {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(COALESCE) => {}
        }
        while watch.events.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::objects::{NodeCertificate, NodeDescription};

    #[test]
    fn peers_are_nodes_with_a_key_and_a_tunnel_address_and_no_revoked_certificate() {
        let node = |id: &str, key: &str, tunnel: &str, serial: &str| Node {
            id: id.into(),
            addr: format!("10.0.0.{}:4377", id.len()),
            tunnel_addr: tunnel.into(),
            description: Some(NodeDescription {
                wg_public_key: key.into(),
                ..Default::default()
            }),
            certificate: Some(NodeCertificate {
                serial: serial.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let nodes = [
            node("bb", "KB", "10.255.240.2/20", "s2"),
            node("a", "KA", "10.255.240.1/20", "s1"),
            node("ccc", "KC", "", "s3"),
            node("dddd", "", "10.255.240.4/20", "s4"),
            node("eeeee", "KE", "10.255.240.5/20", "s5"),
        ];
        let revoked: HashSet<String> = ["s5".to_string()].into();
        let p = peers_of(&nodes, &revoked);
        let ids: Vec<&str> = p.iter().map(|p| p.node_id.as_str()).collect();
        assert_eq!(
            ids,
            ["a", "bb"],
            "no tunnel address, no key, a revoked certificate"
        );
        assert_eq!(p[1].endpoint, "10.0.0.2:51820");
        assert_eq!(p[1].public_key, "KB");
        assert_eq!(p[1].tunnel_addr, "10.255.240.2/20");
    }
}

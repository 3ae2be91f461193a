//! What every node's data plane is told over its session (no gossip): the WireGuard
//! peers, every node with a key and a tunnel address, less removed nodes (gone from the
//! store) and nodes whose certificate is revoked; and the tasks on each overlay network,
//! with the tunnel address of their nodes. Kept by one loop on the leader from the
//! cluster view's changes and shared with the sessions through a watch channel, so a change is
//! computed once, not once per session; each session sends its node the part it needs,
//! and only when that part changed.

use crate::view::{ClusterView, Kind, State};
use shoal_proto::dispatcher::{
    Endpoint, NetworkEndpoints, NetworkView, Peer, PeerView, PublishedPort, PublishedTask,
    ServiceVip,
};
use shoal_proto::objects::{Node, RevokedCert, Service, Task, TaskState};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The whole cluster's data plane, as the managers know it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// Every node's peer entry, by node ID order.
    pub peers: Vec<Peer>,
    /// The live tasks of every overlay network, by network ID and task ID order.
    pub networks: Vec<NetworkEndpoints>,
    /// Every published port, with the ready tasks behind it.
    pub published: Vec<PublishedPort>,
    /// The UDP port of every node's engine.
    pub data_path_port: u16,
}

pub type Peers = Arc<View>;

impl View {
    /// What node `node_id` is told of its peers: every other node, and its own tunnel
    /// address.
    pub fn peers_for(&self, node_id: &str) -> PeerView {
        PeerView {
            peers: self
                .peers
                .iter()
                .filter(|p| p.node_id != node_id)
                .cloned()
                .collect(),
            tunnel_addr: self
                .peers
                .iter()
                .find(|p| p.node_id == node_id)
                .map(|p| p.tunnel_addr.clone())
                .unwrap_or_default(),
            data_path_port: u32::from(self.data_path_port),
        }
    }

    /// What node `node_id` is told of the overlay networks: the ones it has a task on.
    pub fn networks_for(&self, node_id: &str) -> NetworkView {
        NetworkView {
            networks: self
                .networks
                .iter()
                .filter(|n| n.endpoints.iter().any(|e| e.node_id == node_id))
                .cloned()
                .collect(),
            published: self.published.clone(),
        }
    }
}

/// Changes closer together than this are applied together.
const COALESCE: Duration = Duration::from_millis(50);

/// The peers among `nodes`.
pub fn peers_of<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    revoked: &HashSet<String>,
    port: u16,
) -> Vec<Peer> {
    let mut out: Vec<Peer> = nodes
        .into_iter()
        .filter(|n| !n.tunnel_addr.is_empty())
        .filter(|n| {
            n.certificate
                .as_ref()
                .is_none_or(|c| !revoked.contains(&c.serial))
        })
        .filter_map(|n| {
            let d = n.description.as_ref()?;
            let key = d.wg_public_key.clone();
            let ip = match d.data_path_addr.as_str() {
                "" => n.addr.rsplit_once(':').map_or(n.addr.as_str(), |x| x.0),
                a => a,
            };
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

/// Whether a task is one its networks should reach: placed, meant to run, and not
/// finished. A task asked to stop leaves at once, before it is stopped.
fn live(t: &Task) -> bool {
    let state = t.status.as_ref().map_or(0, |s| s.state);
    !t.node_id.is_empty()
        && t.desired_state <= TaskState::Running as i32
        && state <= TaskState::Running as i32
}

/// The live tasks of every overlay network, on nodes among `peers`.
pub fn endpoints_of(
    tasks: &[&Task],
    services: &[&Service],
    peers: &[Peer],
) -> Vec<NetworkEndpoints> {
    let tunnel: HashMap<&str, &str> = peers
        .iter()
        .map(|p| {
            let ip = p.tunnel_addr.split('/').next().unwrap_or_default();
            (p.node_id.as_str(), ip)
        })
        .collect();
    let names: HashMap<&str, &str> = services
        .iter()
        .map(|s| {
            let name = s.spec.as_ref().map_or("", |x| x.name.as_str());
            (s.id.as_str(), name)
        })
        .collect();
    let mut by_net: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
    for t in tasks.iter().filter(|t| live(t)) {
        let Some(node_tunnel) = tunnel.get(t.node_id.as_str()) else {
            continue;
        };
        for a in &t.networks {
            let (Some(net), Some(address)) = (a.network.as_ref(), a.addresses.first()) else {
                continue;
            };
            let ready = ready(t);
            by_net.entry(net.id.clone()).or_default().push(Endpoint {
                task_id: t.id.clone(),
                node_id: t.node_id.clone(),
                address: address.clone(),
                node_tunnel_addr: node_tunnel.to_string(),
                service_id: t.service_id.clone(),
                service_name: names.get(t.service_id.as_str()).unwrap_or(&"").to_string(),
                task_name: t.name.clone(),
                aliases: a.aliases.clone(),
                ready,
            });
        }
    }
    let mut vips: BTreeMap<String, Vec<ServiceVip>> = BTreeMap::new();
    for s in services {
        let spec = s.spec.clone().unwrap_or_default();
        for v in &s.virtual_ips {
            let aliases = spec
                .container
                .iter()
                .flat_map(|c| c.networks.iter())
                .find(|a| a.target == v.network_id)
                .map(|a| a.aliases.clone())
                .unwrap_or_default();
            vips.entry(v.network_id.clone())
                .or_default()
                .push(ServiceVip {
                    service_id: s.id.clone(),
                    service_name: spec.name.clone(),
                    address: v.address.split('/').next().unwrap_or_default().to_string(),
                    aliases,
                });
        }
    }
    for net in vips.keys() {
        by_net.entry(net.clone()).or_default();
    }
    by_net
        .into_iter()
        .map(|(network_id, mut endpoints)| {
            endpoints.sort_by(|a, b| a.task_id.cmp(&b.task_id));
            let mut vips = vips.remove(&network_id).unwrap_or_default();
            vips.sort_by(|a, b| a.service_id.cmp(&b.service_id));
            NetworkEndpoints {
                network_id,
                endpoints,
                vips,
            }
        })
        .collect()
}

/// Whether a task serves: running, and healthy if it has a health check (one still
/// starting, or unhealthy, gets no names' answers and no VIP traffic).
fn ready(t: &Task) -> bool {
    use shoal_proto::objects::HealthState;
    t.status.as_ref().is_some_and(|s| {
        s.state == TaskState::Running as i32
            && [HealthState::None as i32, HealthState::Healthy as i32].contains(&s.health)
    })
}

/// Every port the services publish, with their ready tasks on nodes among `peers`.
pub fn published_of(state: &State, services: &[&Service], peers: &[Peer]) -> Vec<PublishedPort> {
    let tunnel: HashMap<&str, &str> = peers
        .iter()
        .map(|p| {
            (
                p.node_id.as_str(),
                p.tunnel_addr.split('/').next().unwrap_or_default(),
            )
        })
        .collect();
    let mut out = Vec::new();
    for s in services {
        let spec = s.spec.clone().unwrap_or_default();
        if spec.ports.is_empty() {
            continue;
        }
        let mut backends: Vec<PublishedTask> = state
            .tasks_of(&s.id)
            .map(|v| &v.value)
            .filter(|t| live(t) && ready(t))
            .filter_map(|t| {
                Some(PublishedTask {
                    task_id: t.id.clone(),
                    node_id: t.node_id.clone(),
                    node_tunnel_addr: tunnel.get(t.node_id.as_str())?.to_string(),
                })
            })
            .collect();
        backends.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        for port in spec.ports {
            out.push(PublishedPort {
                service_id: s.id.clone(),
                service_name: spec.name.clone(),
                port: Some(port),
                tasks: backends.clone(),
            });
        }
    }
    out.sort_by(|a, b| a.service_id.cmp(&b.service_id));
    out
}

fn load(state: &State) -> View {
    let revoked: HashSet<String> = state
        .values::<RevokedCert>()
        .map(|r| r.serial.clone())
        .collect();
    let port =
        crate::cluster::data_path_port(state.cluster().and_then(|c| c.value.network.as_ref()));
    let peers = peers_of(state.values::<Node>(), &revoked, port);
    let tasks: Vec<&Task> = state.values::<Task>().collect();
    let services: Vec<&Service> = state.values::<Service>().collect();
    let networks = endpoints_of(&tasks, &services, &peers);
    let published = published_of(state, &services, &peers);
    View {
        peers,
        networks,
        published,
        data_path_port: port,
    }
}

/// Keeps `tx` current until cancelled.
pub async fn run(view: ClusterView, tx: Arc<watch::Sender<Peers>>, cancel: CancellationToken) {
    let mut updates = view.subscribe();
    let mut state = view.current();
    loop {
        let p = load(&state);
        tx.send_if_modified(|cur| {
            if **cur == p {
                return false;
            }
            *cur = Arc::new(p);
            true
        });
        // Until something a peer list is made of changes.
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                u = updates.next() => match u {
                    Some(u) if u.touches(&[Kind::Node, Kind::Revocation, Kind::Task, Kind::Service, Kind::Cluster]) => break,
                    Some(_) => {}
                    None => return,
                },
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(COALESCE) => {}
        }
        state = view.current();
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
        let p = peers_of(&nodes, &revoked, 51820);
        let ids: Vec<&str> = p.iter().map(|p| p.node_id.as_str()).collect();
        assert_eq!(
            ids,
            ["a", "bb"],
            "no tunnel address, no key, a revoked certificate"
        );
        assert_eq!(p[1].endpoint, "10.0.0.2:51820");
        assert_eq!(p[1].public_key, "KB");
        assert_eq!(p[1].tunnel_addr, "10.255.240.2/20");
        // A node's --data-path-addr is where its peers send.
        let mut moved = nodes[0].clone();
        moved.description.as_mut().unwrap().data_path_addr = "192.168.9.9".into();
        let p = peers_of(&[moved], &revoked, 4789 + 1);
        assert_eq!(p[0].endpoint, "192.168.9.9:4790");
    }

    #[test]
    fn endpoints_are_the_live_placed_tasks_of_each_network_with_their_nodes_tunnel_address() {
        use shoal_proto::objects::{Network, NetworkAttachment, ServiceSpec, TaskStatus};
        let net = |id: &str| Network {
            id: id.into(),
            ..Default::default()
        };
        let task =
            |id: &str, node: &str, state: TaskState, desired: TaskState, nets: &[(&str, &str)]| {
                Task {
                    id: id.into(),
                    service_id: "svc".into(),
                    node_id: node.into(),
                    name: format!("web.{id}"),
                    desired_state: desired as i32,
                    status: Some(TaskStatus {
                        state: state as i32,
                        ..Default::default()
                    }),
                    networks: nets
                        .iter()
                        .map(|(n, a)| NetworkAttachment {
                            network: Some(net(n)),
                            addresses: vec![a.to_string()],
                            aliases: vec!["db".into()],
                        })
                        .collect(),
                    ..Default::default()
                }
            };
        use TaskState::*;
        let tasks = [
            task(
                "t1",
                "a",
                Running,
                Running,
                &[("n1", "10.0.1.2/24"), ("n2", "10.0.2.2/24")],
            ),
            task("t2", "bb", Starting, Running, &[("n1", "10.0.1.3/24")]),
            task("t3", "bb", Running, Shutdown, &[("n1", "10.0.1.4/24")]),
            task("t4", "bb", Failed, Running, &[("n1", "10.0.1.5/24")]),
            task("t5", "", Pending, Running, &[("n1", "10.0.1.6/24")]),
            task("t6", "zz", Running, Running, &[("n1", "10.0.1.7/24")]),
            task("t7", "a", Running, Running, &[]),
        ];
        let services = [Service {
            id: "svc".into(),
            spec: Some(ServiceSpec {
                name: "web".into(),
                ..Default::default()
            }),
            ..Default::default()
        }];
        let peer = |id: &str, t: &str| Peer {
            node_id: id.into(),
            tunnel_addr: t.into(),
            ..Default::default()
        };
        let peers = [peer("a", "10.255.240.1/20"), peer("bb", "10.255.240.2/20")];
        let tasks: Vec<&Task> = tasks.iter().collect();
        let services: Vec<&Service> = services.iter().collect();
        let v = endpoints_of(&tasks, &services, &peers);
        let got: Vec<(&str, Vec<&str>)> = v
            .iter()
            .map(|n| {
                (
                    n.network_id.as_str(),
                    n.endpoints.iter().map(|e| e.task_id.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [("n1", vec!["t1", "t2"]), ("n2", vec!["t1"])],
            "stopping, failed, unplaced tasks and tasks on unknown nodes are left out"
        );
        let e = &v[0].endpoints[1];
        assert_eq!(e.address, "10.0.1.3/24");
        assert_eq!(e.node_tunnel_addr, "10.255.240.2");
        assert_eq!(e.service_name, "web");
        assert_eq!(e.task_name, "web.t2");
        assert_eq!(e.aliases, ["db"]);
        let view = View {
            peers: peers.to_vec(),
            networks: v,
            published: Vec::new(),
            data_path_port: 51820,
        };
        assert_eq!(view.networks_for("a").networks.len(), 2);
        assert_eq!(view.networks_for("bb").networks.len(), 1);
        assert!(view.networks_for("zz").networks.is_empty());
        let p = view.peers_for("bb");
        assert_eq!(p.tunnel_addr, "10.255.240.2/20");
        assert_eq!(p.peers.len(), 1);
        assert_eq!(p.data_path_port, 51820);
    }

    #[test]
    fn a_task_serves_once_running_and_healthy_and_stops_serving_when_unhealthy() {
        use shoal_proto::objects::{HealthState, TaskStatus};
        let t = |state: TaskState, health: HealthState| Task {
            status: Some(TaskStatus {
                state: state as i32,
                health: health as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(ready(&t(TaskState::Running, HealthState::None)));
        assert!(ready(&t(TaskState::Running, HealthState::Healthy)));
        assert!(!ready(&t(TaskState::Running, HealthState::Starting)));
        assert!(!ready(&t(TaskState::Running, HealthState::Unhealthy)));
        assert!(!ready(&t(TaskState::Starting, HealthState::None)));
    }
}

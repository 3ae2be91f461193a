//! The allocator: gives tasks their addresses on the overlay networks their spec names,
//! a stage of the leader's planning pass between the orchestrators and the scheduler (a
//! task is scheduled only once it has them). Its state is the store's: an address is
//! in use while a task holding it has not finished, so a new leader knows every
//! allocation from the tasks it reads, and nothing is kept beside them.

use crate::cluster::has_finished;
use ipnet::Ipv4Net;
use shoal_proto::objects::{Network, NetworkAttachment, Node, Task};
use shoal_proto::HOST_NETWORK;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

/// The overlay networks `task`'s spec names (not `host`).
fn wanted(task: &Task) -> impl Iterator<Item = &shoal_proto::objects::NetworkAttachmentConfig> {
    task.spec
        .iter()
        .flat_map(|s| s.networks.iter())
        .filter(|n| n.target != HOST_NETWORK)
}

/// Whether `task` still waits for an address on one of its networks.
pub fn needs_addresses(task: &Task) -> bool {
    wanted(task).any(|n| {
        !task.networks.iter().any(|a| {
            a.network.as_ref().is_some_and(|x| x.id == n.target) && !a.addresses.is_empty()
        })
    })
}

/// The addresses in use on each network.
#[derive(Default)]
pub struct Pools {
    used: HashMap<String, HashSet<Ipv4Addr>>,
}

impl Pools {
    /// What the tasks hold that have not finished.
    pub fn of<'a>(tasks: impl IntoIterator<Item = &'a Task>) -> Pools {
        let mut p = Pools::default();
        for t in tasks.into_iter().filter(|t| !has_finished(t)) {
            p.note(t);
        }
        p
    }

    /// Counts `task`'s addresses as taken.
    pub fn note(&mut self, task: &Task) {
        for a in &task.networks {
            let Some(n) = &a.network else { continue };
            let used = self.used.entry(n.id.clone()).or_default();
            used.extend(
                a.addresses
                    .iter()
                    .filter_map(|x| x.parse::<Ipv4Net>().ok())
                    .map(|x| x.addr()),
            );
        }
    }

    /// A free address of `network`: the lowest host address that is neither its
    /// gateway nor taken.
    pub fn take(&mut self, network: &Network) -> Result<Ipv4Net, String> {
        let name = network.spec.as_ref().map(|s| s.name.as_str()).unwrap_or("");
        let subnet: Ipv4Net = network
            .subnet
            .parse()
            .map_err(|_| format!("network {name} has no valid subnet ({:?})", network.subnet))?;
        let gateway: Option<Ipv4Addr> = network.gateway.parse().ok();
        let used = self.used.entry(network.id.clone()).or_default();
        let ip = subnet
            .hosts()
            .find(|ip| Some(*ip) != gateway && !used.contains(ip))
            .ok_or_else(|| format!("no free address left on network {name} ({subnet})"))?;
        used.insert(ip);
        Ipv4Net::new(ip, subnet.prefix_len()).map_err(|e| e.to_string())
    }
}

/// Gives `task` an address on each overlay network its spec names and it lacks one on.
/// Err: why it cannot have them yet (a network is gone or full); what it got is kept.
pub fn attach(
    task: &mut Task,
    networks: &HashMap<&str, &Network>,
    pools: &mut Pools,
) -> Result<(), String> {
    let wanted: Vec<_> = wanted(task).cloned().collect();
    for w in wanted {
        let have = task.networks.iter().any(|a| {
            a.network.as_ref().is_some_and(|n| n.id == w.target) && !a.addresses.is_empty()
        });
        if have {
            continue;
        }
        let network = networks
            .get(w.target.as_str())
            .ok_or_else(|| format!("network {} no longer exists", w.target))?;
        let address = pools.take(network)?;
        task.networks
            .retain(|a| a.network.as_ref().is_none_or(|n| n.id != w.target));
        task.networks.push(NetworkAttachment {
            network: Some((*network).clone()),
            addresses: vec![address.to_string()],
            aliases: w.aliases.clone(),
        });
    }
    Ok(())
}

/// Whether `node` waits for a tunnel address: it has a WireGuard key and no address.
pub fn needs_tunnel_address(node: &Node) -> bool {
    node.tunnel_addr.is_empty()
        && node
            .description
            .as_ref()
            .is_some_and(|d| !d.wg_public_key.is_empty())
}

/// Tunnel addresses for the nodes that wait for one: the lowest host addresses of the
/// tunnel subnet no node has. (node ID, address with the subnet's prefix length).
pub fn tunnel_addresses(nodes: &[Node], tunnel: Ipv4Net) -> Vec<(String, String)> {
    let mut used: HashSet<Ipv4Addr> = nodes
        .iter()
        .filter_map(|n| n.tunnel_addr.parse::<Ipv4Net>().ok())
        .map(|n| n.addr())
        .collect();
    let mut free = tunnel
        .hosts()
        .filter(|ip| !used.contains(ip))
        .collect::<Vec<_>>()
        .into_iter();
    let mut out = Vec::new();
    for n in nodes.iter().filter(|n| needs_tunnel_address(n)) {
        let Some(ip) = free.next() else {
            tracing::warn!(node_id = %n.id, %tunnel, "the tunnel network is full");
            break;
        };
        used.insert(ip);
        out.push((n.id.clone(), format!("{ip}/{}", tunnel.prefix_len())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::objects::{
        ContainerSpec, NetworkAttachmentConfig, NetworkSpec, TaskState, TaskStatus,
    };

    fn net(id: &str, subnet: &str, gateway: &str) -> Network {
        Network {
            id: id.into(),
            spec: Some(NetworkSpec {
                name: format!("{id}-name"),
                ..Default::default()
            }),
            subnet: subnet.into(),
            gateway: gateway.into(),
            vni: 4096,
            ..Default::default()
        }
    }

    fn task(nets: &[&str]) -> Task {
        Task {
            spec: Some(ContainerSpec {
                networks: nets
                    .iter()
                    .map(|n| NetworkAttachmentConfig {
                        target: n.to_string(),
                        aliases: vec!["al".into()],
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn nodes_with_a_key_get_distinct_tunnel_addresses() {
        use shoal_proto::objects::NodeDescription;
        let node = |id: &str, key: &str, addr: &str| Node {
            id: id.into(),
            tunnel_addr: addr.into(),
            description: Some(NodeDescription {
                wg_public_key: key.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let k = "A".repeat(43) + "=";
        let nodes = [
            node("a", &k, "10.255.240.1/20"),
            node("b", &k, ""),
            node("c", "", ""),
            node("d", &k, ""),
        ];
        let got = tunnel_addresses(&nodes, "10.255.240.0/20".parse().unwrap());
        assert_eq!(
            got,
            [
                ("b".to_string(), "10.255.240.2/20".to_string()),
                ("d".to_string(), "10.255.240.3/20".to_string())
            ],
            "c has no key yet"
        );
        let tiny = tunnel_addresses(&nodes, "10.9.9.0/30".parse().unwrap());
        assert_eq!(tiny.len(), 2, "a /30 has two host addresses: {tiny:?}");
    }

    #[test]
    fn tasks_get_the_lowest_free_address_of_each_network_and_finished_ones_free_theirs() {
        let a = net("a", "10.0.0.0/29", "10.0.0.1");
        let b = net("b", "10.0.1.0/24", "10.0.1.1");
        let nets: HashMap<&str, &Network> = [("a", &a), ("b", &b)].into();
        let mut pools = Pools::default();
        let mut t1 = task(&["a", "b", HOST_NETWORK]);
        assert!(needs_addresses(&t1));
        attach(&mut t1, &nets, &mut pools).unwrap();
        assert!(!needs_addresses(&t1));
        assert_eq!(t1.networks[0].addresses, ["10.0.0.2/29"]);
        assert_eq!(t1.networks[1].addresses, ["10.0.1.2/24"]);
        assert_eq!(t1.networks[0].aliases, ["al"]);
        assert_eq!(t1.networks[0].network.as_ref().unwrap().vni, 4096);
        let mut t2 = task(&["a"]);
        attach(&mut t2, &nets, &mut pools).unwrap();
        assert_eq!(t2.networks[0].addresses, ["10.0.0.3/29"]);
        // A /29 has 6 host addresses, one of them the gateway: 5 tasks fit.
        let mut more: Vec<Task> = (0..3).map(|_| task(&["a"])).collect();
        for t in &mut more {
            attach(t, &nets, &mut pools).unwrap();
        }
        let mut full = task(&["a"]);
        let err = attach(&mut full, &nets, &mut pools).unwrap_err();
        assert_eq!(err, "no free address left on network a-name (10.0.0.0/29)");
        // A new leader counts what live tasks hold; a finished task's address is free.
        t2.status = Some(TaskStatus {
            state: TaskState::Failed as i32,
            ..Default::default()
        });
        let mut pools = Pools::of([&t1, &t2].into_iter().chain(more.iter()));
        attach(&mut full, &nets, &mut pools).unwrap();
        assert_eq!(full.networks[0].addresses, ["10.0.0.3/29"]);
        let mut gone = task(&["zzz"]);
        assert!(attach(&mut gone, &nets, &mut pools)
            .unwrap_err()
            .contains("no longer exists"));
    }
}

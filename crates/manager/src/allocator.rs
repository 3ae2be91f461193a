//! The allocator: gives tasks their addresses on the overlay networks their spec names,
//! a stage of the leader's planning pass between the orchestrators and the scheduler (a
//! task is scheduled only once it has them). Its state is the store's: an address is
//! in use while a task holding it has not finished, so a new leader knows every
//! allocation from the tasks it reads, and nothing is kept beside them.

use crate::controlapi::HOST_NETWORK;
use crate::orchestrator::has_finished;
use ipnet::Ipv4Net;
use shoal_proto::objects::{Network, NetworkAttachment, Task};
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

//! Networks (`network create/ls/inspect/rm`): overlay networks as objects in the store,
//! their subnets from the cluster's address pools (`init --default-addr-pool`), and the
//! names services give with `--network`, which are kept as network IDs.

use crate::cluster::{DEFAULT_DATA_PATH_PORT, DEFAULT_TUNNEL_SUBNET};
use crate::controlapi::{ControlApi, ControlCaller, ControlError};
use ipnet::Ipv4Net;
use shoal_proto::objects::{
    ContainerSpec, Network, NetworkConfig, NetworkSpec, Node, Service, Task, TaskState,
};
use shoal_proto::HOST_NETWORK;
use shoal_store::{Batch, Expect};
use std::net::Ipv4Addr;

/// Where subnets come from without `--default-addr-pool` (as swarm mode's).
pub const DEFAULT_POOL: &str = "10.0.0.0/8";
/// The prefix length of pool subnets without `--default-addr-pool-mask-length`.
pub const DEFAULT_MASK_LENGTH: u32 = 24;
/// The first VXLAN network identifier (as swarm mode's).
pub const FIRST_VNI: u32 = 4096;
/// Names of the built-in networks, which no network may take.
pub const BUILT_IN: &[&str] = &[HOST_NETWORK, "bridge", "none", "ingress"];
/// The one driver.
pub const OVERLAY: &str = "overlay";

fn bad(m: String) -> ControlError {
    ControlError::BadRequest(m)
}

fn parse_v4(what: &str, s: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = s
        .trim()
        .parse()
        .map_err(|_| format!("{what} {s:?} is not an IPv4 CIDR such as 10.20.0.0/16"))?;
    if net != net.trunc() {
        return Err(format!(
            "{what} {s:?} has host bits set: did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Checks `init --default-addr-pool/--default-addr-pool-mask-length` and makes the
/// cluster's address plan.
/// Checks `--data-path-port` (0: the default): an unprivileged port.
pub fn check_data_path_port(port: u32) -> Result<u32, String> {
    match port {
        0 => Ok(0),
        1024..=65535 => Ok(port),
        p => Err(format!(
            "--data-path-port {p}: use a port from 1024 to 65535 (default {DEFAULT_DATA_PATH_PORT})"
        )),
    }
}

pub fn network_config(pools: &[String], mask: u32) -> Result<NetworkConfig, String> {
    let mask = if mask == 0 { DEFAULT_MASK_LENGTH } else { mask };
    let tunnel = parse_v4("tunnel subnet", DEFAULT_TUNNEL_SUBNET)?;
    let mut parsed: Vec<Ipv4Net> = Vec::new();
    for p in pools {
        let net = parse_v4("--default-addr-pool", p)?;
        if mask < u32::from(net.prefix_len()) || mask > 29 {
            return Err(format!(
                "--default-addr-pool-mask-length {mask} does not fit pool {net}: use {} to 29",
                net.prefix_len()
            ));
        }
        if let Some(o) = parsed.iter().find(|o| overlaps(o, &net)) {
            return Err(format!("--default-addr-pool {net} overlaps {o}"));
        }
        parsed.push(net);
    }
    if !(8..=29).contains(&mask) {
        return Err(format!(
            "--default-addr-pool-mask-length {mask}: use 8 to 29"
        ));
    }
    if !parsed.is_empty() && parsed.iter().all(|p| tunnel.contains(p)) {
        return Err(format!(
            "--default-addr-pool {} lies inside the tunnel network {tunnel}, reserved for node tunnel endpoints",
            pools.join(", ")
        ));
    }
    Ok(NetworkConfig {
        default_addr_pool: parsed.iter().map(|p| p.to_string()).collect(),
        default_addr_pool_mask_length: mask,
        tunnel_subnet: tunnel.to_string(),
        data_path_port: 0,
    })
}

/// The plan in force: the cluster's, with defaults for what it leaves empty.
fn plan(cfg: Option<&NetworkConfig>) -> (Vec<Ipv4Net>, u8, Ipv4Net) {
    let cfg = cfg.cloned().unwrap_or_default();
    let pools: Vec<Ipv4Net> = cfg
        .default_addr_pool
        .iter()
        .filter_map(|p| p.parse().ok())
        .collect();
    let pools = if pools.is_empty() {
        vec![DEFAULT_POOL.parse().expect("valid default pool")]
    } else {
        pools
    };
    let mask = match cfg.default_addr_pool_mask_length {
        0 => DEFAULT_MASK_LENGTH as u8,
        m => m as u8,
    };
    let tunnel = cfg
        .tunnel_subnet
        .parse()
        .unwrap_or_else(|_| DEFAULT_TUNNEL_SUBNET.parse().expect("valid tunnel subnet"));
    (pools, mask, tunnel)
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// What a new network's subnet must stay clear of.
pub struct Taken<'a> {
    /// Other networks: (name, subnet).
    pub networks: Vec<(&'a str, Ipv4Net)>,
    /// Nodes' own addresses: (hostname, address).
    pub nodes: Vec<(String, Ipv4Addr)>,
}

impl Taken<'_> {
    /// Why `net` cannot be used, if it cannot.
    fn clash(&self, net: &Ipv4Net, tunnel: &Ipv4Net) -> Option<String> {
        if overlaps(net, tunnel) {
            return Some(format!(
                "overlaps the cluster's tunnel network ({tunnel}), reserved for node tunnel endpoints"
            ));
        }
        if let Some((name, other)) = self.networks.iter().find(|(_, o)| overlaps(net, o)) {
            return Some(format!("overlaps network {name:?} ({other})"));
        }
        if let Some((host, ip)) = self.nodes.iter().find(|(_, ip)| net.contains(ip)) {
            return Some(format!("holds the address of node {host} ({ip})"));
        }
        None
    }
}

/// The subnet and gateway of a new network: the spec's, checked, or the first free
/// subnet of the pools.
pub fn place_subnet(
    spec: &NetworkSpec,
    cfg: Option<&NetworkConfig>,
    taken: &Taken,
) -> Result<(Ipv4Net, Ipv4Addr), String> {
    let (pools, mask, tunnel) = plan(cfg);
    let subnet = if spec.subnet.trim().is_empty() {
        if !spec.gateway.is_empty() {
            return Err("--gateway needs --subnet".into());
        }
        pools
            .iter()
            .flat_map(|p| p.subnets(mask).into_iter().flatten())
            .find(|s| taken.clash(s, &tunnel).is_none())
            .ok_or_else(|| {
                format!(
                    "no free /{mask} left in the default address pools ({}): give a --subnet, or remove networks no longer used",
                    pools.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
                )
            })?
    } else {
        let net = parse_v4("--subnet", &spec.subnet)?;
        if net.prefix_len() > 29 {
            return Err(format!(
                "--subnet {net} is too small: a network needs at least a /29"
            ));
        }
        if let Some(why) = taken.clash(&net, &tunnel) {
            return Err(format!("--subnet {net} {why}: pick another --subnet"));
        }
        net
    };
    let gateway = if spec.gateway.trim().is_empty() {
        subnet
            .hosts()
            .next()
            .ok_or("the subnet has no host address")?
    } else {
        let gw: Ipv4Addr = spec
            .gateway
            .trim()
            .parse()
            .map_err(|_| format!("--gateway {:?} is not an IPv4 address", spec.gateway))?;
        if !subnet.contains(&gw) || gw == subnet.network() || gw == subnet.broadcast() {
            return Err(format!(
                "--gateway {gw} is not a host address of the subnet {subnet}"
            ));
        }
        gw
    };
    Ok((subnet, gateway))
}

/// Checks a network spec's name, driver and options.
pub fn validate_network(spec: &NetworkSpec) -> Result<(), String> {
    shoal_proto::limits::check_name("network name", &spec.name)?;
    if BUILT_IN.contains(&spec.name.as_str()) {
        return Err(format!(
            "network name {:?} is taken by a built-in network: pick another",
            spec.name
        ));
    }
    match spec.driver.as_str() {
        "" | OVERLAY => {}
        d => {
            return Err(format!(
                "driver {d:?} is not supported: shoal's networks are overlay networks (--driver overlay)"
            ))
        }
    }
    for (k, v) in &spec.options {
        match k.as_str() {
            "mtu" => match v.parse::<u32>() {
                Ok(m) if (576..=9000).contains(&m) => {}
                _ => return Err(format!("--opt mtu={v}: use a number from 576 to 9000")),
            },
            "encrypted" => {
                if !matches!(v.as_str(), "" | "true") {
                    return Err(format!(
                        "--opt encrypted={v}: overlay traffic is always encrypted (WireGuard) and cannot be turned off"
                    ));
                }
            }
            _ => {
                return Err(format!(
                    "unknown network option {k:?}: the options are mtu and encrypted"
                ))
            }
        }
    }
    shoal_proto::limits::check_labels("network label", &spec.labels).map_err(|e| e.0)
}

/// The lowest VXLAN identifier no network has.
fn free_vni(networks: &[Network]) -> u32 {
    let used: std::collections::HashSet<u32> = networks.iter().map(|n| n.vni).collect();
    (FIRST_VNI..)
        .find(|v| !used.contains(v))
        .unwrap_or(FIRST_VNI)
}

impl ControlApi {
    fn networks(&self) -> Result<Vec<Network>, ControlError> {
        Ok(self
            .list::<Network>()?
            .into_iter()
            .map(|v| v.value)
            .collect())
    }

    /// A network by name, ID or unique ID prefix (`shoal network inspect`).
    pub fn get_network(
        &self,
        caller: &ControlCaller,
        reference: &str,
    ) -> Result<Network, ControlError> {
        let n = self.find_network(reference)?;
        let spec = n.spec.clone().unwrap_or_default();
        caller.in_scope("network", &n.id, &spec.name, &spec.labels)?;
        Ok(n)
    }

    /// A network by name, ID or unique ID prefix.
    fn find_network(&self, reference: &str) -> Result<Network, ControlError> {
        let all = self.networks()?;
        if let Some(n) = all.iter().find(|n| n.id == reference) {
            return Ok(n.clone());
        }
        if let Some(n) = all
            .iter()
            .find(|n| n.spec.as_ref().is_some_and(|s| s.name == reference))
        {
            return Ok(n.clone());
        }
        let by_prefix: Vec<&Network> = all
            .iter()
            .filter(|n| !reference.is_empty() && n.id.starts_with(reference))
            .collect();
        match by_prefix.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ControlError::NoSuchNetwork(reference.to_string())),
            many => Err(bad(format!(
                "network reference {reference:?} is ambiguous (it matches {} networks): use more characters of the ID",
                many.len()
            ))),
        }
    }

    pub fn list_networks(&self, caller: &ControlCaller) -> Result<Vec<Network>, ControlError> {
        let mut all = self.networks()?;
        all.retain(|n| {
            caller.sees(
                &n.spec
                    .as_ref()
                    .map(|s| s.labels.clone())
                    .unwrap_or_default(),
            )
        });
        all.sort_by(|a, b| {
            let name = |n: &Network| n.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
            name(a).cmp(&name(b))
        });
        Ok(all)
    }

    pub async fn create_network(
        &self,
        caller: &ControlCaller,
        mut spec: NetworkSpec,
    ) -> Result<Network, ControlError> {
        validate_network(&spec).map_err(bad)?;
        caller.may_name("network", &spec.name, &spec.labels)?;
        if spec.driver.is_empty() {
            spec.driver = OVERLAY.into();
        }
        let all = self.networks()?;
        if all
            .iter()
            .any(|n| n.spec.as_ref().is_some_and(|s| s.name == spec.name))
        {
            return Err(ControlError::Exists(format!(
                "a network named {} already exists",
                spec.name
            )));
        }
        let cluster = self.view.current().cluster().map(|c| c.value.clone());
        let mut subnets: Vec<(String, Ipv4Net)> = all
            .iter()
            .filter_map(|n| {
                let name = n.spec.as_ref()?.name.clone();
                Some((name, n.subnet.parse().ok()?))
            })
            .collect();
        // The first clash by name, so the same request gets the same answer.
        subnets.sort();
        let nodes: Vec<(String, Ipv4Addr)> = self
            .list::<Node>()?
            .into_iter()
            .filter_map(|n| {
                let n = n.value;
                let ip = n.addr.rsplit_once(':').map_or(n.addr.as_str(), |x| x.0);
                let host = n
                    .description
                    .as_ref()
                    .map(|d| d.hostname.clone())
                    .unwrap_or_else(|| n.id.clone());
                Some((host, ip.parse().ok()?))
            })
            .collect();
        let taken = Taken {
            networks: subnets.iter().map(|(n, s)| (n.as_str(), *s)).collect(),
            nodes,
        };
        let (subnet, gateway) = place_subnet(
            &spec,
            cluster.as_ref().and_then(|c| c.network.as_ref()),
            &taken,
        )
        .map_err(bad)?;
        let network = Network {
            id: shoal_pki::random_id(),
            spec: Some(spec),
            created_at_unix: crate::time::unix_now(),
            subnet: subnet.to_string(),
            gateway: gateway.to_string(),
            vni: free_vni(&all),
        };
        let mut b = Batch::default();
        b.put(&network, Expect::Absent);
        self.commit(b).await?;
        tracing::info!(network_id = %network.id, subnet = %network.subnet, by = %caller, "network created");
        Ok(network)
    }

    /// Removes a network no service or task uses.
    pub async fn remove_network(
        &self,
        caller: &ControlCaller,
        reference: &str,
    ) -> Result<(), ControlError> {
        let n = self.get_network(caller, reference)?;
        let name = n.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        let uses = |c: Option<&ContainerSpec>| {
            c.is_some_and(|c| c.networks.iter().any(|a| a.target == n.id))
        };
        let services: Vec<String> = self
            .list::<Service>()?
            .into_iter()
            .filter_map(|s| {
                let spec = s.value.spec?;
                uses(spec.container.as_ref()).then_some(spec.name)
            })
            .collect();
        if !services.is_empty() {
            return Err(ControlError::Refused(format!(
                "network {name} is in use by service{} {}: remove {} or detach with 'shoal service update --network-rm {name} SERVICE'",
                if services.len() == 1 { "" } else { "s" },
                services.join(", "),
                if services.len() == 1 { "it" } else { "them" },
            )));
        }
        let tasks: Vec<String> = self
            .list::<Task>()?
            .into_iter()
            .filter(|t| {
                t.value.service_id.is_empty()
                    && t.value.desired_state <= TaskState::Running as i32
                    && uses(t.value.spec.as_ref())
            })
            .map(|t| t.value.id)
            .collect();
        if !tasks.is_empty() {
            return Err(ControlError::Refused(format!(
                "network {name} is in use by task{} {}: remove {} first ('shoal task rm')",
                if tasks.len() == 1 { "" } else { "s" },
                tasks.join(", "),
                if tasks.len() == 1 { "it" } else { "them" },
            )));
        }
        let mut b = Batch::default();
        b.delete::<Network>(&n.id, Expect::Any);
        self.commit(b).await?;
        tracing::info!(network_id = %n.id, by = %caller, "network removed");
        Ok(())
    }

    /// Replaces the network names a spec gives by the networks' IDs, refusing names no
    /// network has. `task`: a standalone task, which only attachable networks take.
    pub fn resolve_networks(
        &self,
        spec: &mut ContainerSpec,
        task: bool,
    ) -> Result<(), ControlError> {
        if spec.networks.iter().all(|n| n.target == HOST_NETWORK) {
            return Ok(());
        }
        for a in spec.networks.iter_mut() {
            if a.target == HOST_NETWORK {
                continue;
            }
            let n = self.find_network(&a.target).map_err(|e| match e {
                ControlError::NoSuchNetwork(_) => bad(format!(
                    "network {:?} not found: create it with 'shoal network create {}', or see 'shoal network ls'",
                    a.target, a.target
                )),
                e => e,
            })?;
            let name = n.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
            if task && !n.spec.as_ref().is_some_and(|s| s.attachable) {
                return Err(bad(format!(
                    "network {name} is not attachable: only services attach to it (create it with --attachable for 'task run')"
                )));
            }
            a.target = n.id;
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = spec
            .networks
            .iter()
            .find(|a| !seen.insert(a.target.clone()))
        {
            return Err(bad(format!("network {} is named twice", dup.target)));
        }
        Ok(())
    }
}

/// The range published ports are taken from when a service names none (swarm mode's).
pub const DYNAMIC_PORTS: std::ops::RangeInclusive<u32> = 30000..=32767;

/// Checks a spec's published ports on their own: ranges, protocols, modes, repeats.
pub fn validate_ports(ports: &[shoal_proto::objects::PortConfig]) -> Result<(), ControlError> {
    let mut seen = std::collections::HashSet::new();
    for p in ports {
        if !(1..=65535).contains(&p.target) {
            return Err(bad(format!(
                "published port target={}: a target port is 1-65535",
                p.target
            )));
        }
        if p.published > 65535 {
            return Err(bad(format!(
                "published port published={}: a port is 1-65535",
                p.published
            )));
        }
        if !["", "tcp", "udp"].contains(&p.protocol.as_str()) {
            return Err(bad(format!(
                "published port protocol {:?}: use tcp or udp",
                shoal_proto::limits::short(&p.protocol)
            )));
        }
        if !["", "ingress", "host"].contains(&p.mode.as_str()) {
            return Err(bad(format!(
                "published port mode {:?}: use ingress (every node answers) or host (only nodes with a task)",
                shoal_proto::limits::short(&p.mode)
            )));
        }
        if p.published != 0 && !seen.insert((p.published, proto_of(p))) {
            return Err(bad(format!(
                "port {}/{} is published twice",
                p.published,
                proto_of(p)
            )));
        }
    }
    Ok(())
}

fn proto_of(p: &shoal_proto::objects::PortConfig) -> &str {
    if p.protocol.is_empty() {
        "tcp"
    } else {
        &p.protocol
    }
}

impl ControlApi {
    /// Refuses a port another service publishes (naming it), and gives ports published
    /// without a number one from [`DYNAMIC_PORTS`].
    pub fn assign_ports(&self, service: &mut Service) -> Result<(), ControlError> {
        let Some(spec) = service.spec.as_mut() else {
            return Ok(());
        };
        if spec.ports.is_empty() {
            return Ok(());
        }
        let mut taken: std::collections::HashMap<(u32, String), String> = Default::default();
        for s in self.list::<Service>()? {
            if s.value.id == service.id {
                continue;
            }
            let Some(other) = s.value.spec else { continue };
            for p in &other.ports {
                taken.insert((p.published, proto_of(p).to_string()), other.name.clone());
            }
        }
        for p in spec.ports.iter_mut() {
            let proto = proto_of(p).to_string();
            if p.published == 0 {
                p.published = DYNAMIC_PORTS
                    .clone()
                    .find(|n| !taken.contains_key(&(*n, proto.clone())))
                    .ok_or_else(|| {
                        ControlError::Refused("no port left to publish in 30000-32767".into())
                    })?;
            }
            if let Some(owner) = taken.get(&(p.published, proto.clone())) {
                return Err(ControlError::Refused(format!(
                    "port {}/{proto} is already published by service {owner}: choose another published port or remove it there ('shoal service update --publish-rm {} {owner}')",
                    p.published, p.published
                )));
            }
            taken.insert((p.published, proto), spec.name.clone());
        }
        Ok(())
    }

    /// Gives `service` a virtual IP on each overlay network its spec names (none under
    /// `--endpoint-mode dnsrr`), keeping the ones it has. New ones come from the top of
    /// the subnet down (task addresses come from the bottom up), skipping every address
    /// a service or an unfinished task holds.
    pub fn assign_vips(&self, service: &mut Service) -> Result<(), ControlError> {
        let spec = service.spec.clone().unwrap_or_default();
        let wanted: Vec<String> = if spec.endpoint_mode == "dnsrr" {
            Vec::new()
        } else {
            spec.container
                .iter()
                .flat_map(|c| c.networks.iter())
                .filter(|a| a.target != HOST_NETWORK)
                .map(|a| a.target.clone())
                .collect()
        };
        service
            .virtual_ips
            .retain(|v| wanted.contains(&v.network_id));
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|n| !service.virtual_ips.iter().any(|v| &v.network_id == *n))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut used: std::collections::HashSet<(String, Ipv4Addr)> = Default::default();
        for s in self.list::<Service>()? {
            for v in s.value.virtual_ips {
                if let Ok(a) = v.address.parse::<Ipv4Net>() {
                    used.insert((v.network_id, a.addr()));
                }
            }
        }
        for t in self.list::<Task>()? {
            if crate::cluster::has_finished(&t.value) {
                continue;
            }
            for a in t.value.networks {
                let Some(n) = a.network else { continue };
                for x in a.addresses.iter().filter_map(|x| x.parse::<Ipv4Net>().ok()) {
                    used.insert((n.id.clone(), x.addr()));
                }
            }
        }
        for net in missing {
            let n = self.find_network(net)?;
            let name = n.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
            let subnet: Ipv4Net = n
                .subnet
                .parse()
                .map_err(|_| bad(format!("network {name} has no valid subnet")))?;
            let gateway = n
                .gateway
                .split('/')
                .next()
                .and_then(|g| g.parse::<Ipv4Addr>().ok());
            let ip = subnet
                .hosts()
                .rev()
                .find(|ip| Some(*ip) != gateway && !used.contains(&(n.id.clone(), *ip)))
                .ok_or_else(|| {
                    ControlError::Refused(format!(
                        "no free address left on network {name} ({subnet}) for the service's virtual IP"
                    ))
                })?;
            used.insert((n.id.clone(), ip));
            service.virtual_ips.push(shoal_proto::objects::VirtualIp {
                network_id: n.id.clone(),
                address: Ipv4Net::new(ip, subnet.prefix_len())
                    .map_err(|e| bad(e.to_string()))?
                    .to_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(subnet: &str, gateway: &str) -> NetworkSpec {
        NetworkSpec {
            name: "n".into(),
            subnet: subnet.into(),
            gateway: gateway.into(),
            ..Default::default()
        }
    }

    fn none() -> Taken<'static> {
        Taken {
            networks: vec![],
            nodes: vec![],
        }
    }

    #[test]
    fn subnets_come_from_the_pool_in_order_skipping_taken_ones() {
        let (s, gw) = place_subnet(&spec("", ""), None, &none()).unwrap();
        assert_eq!(
            (s.to_string(), gw.to_string()),
            ("10.0.0.0/24".into(), "10.0.0.1".into())
        );
        let taken = Taken {
            networks: vec![
                ("a", "10.0.0.0/24".parse().unwrap()),
                ("b", "10.0.2.0/23".parse().unwrap()),
            ],
            nodes: vec![("node1".into(), "10.0.1.7".parse().unwrap())],
        };
        let (s, _) = place_subnet(&spec("", ""), None, &taken).unwrap();
        assert_eq!(
            s.to_string(),
            "10.0.4.0/24",
            "past two networks and a node's address"
        );
        let cfg = network_config(&["192.168.0.0/23".into()], 24).unwrap();
        let taken = Taken {
            networks: vec![("a", "192.168.0.0/24".parse().unwrap())],
            nodes: vec![],
        };
        let (s, _) = place_subnet(&spec("", ""), Some(&cfg), &taken).unwrap();
        assert_eq!(s.to_string(), "192.168.1.0/24");
        let taken = Taken {
            networks: vec![("a", "192.168.0.0/23".parse().unwrap())],
            nodes: vec![],
        };
        let err = place_subnet(&spec("", ""), Some(&cfg), &taken).unwrap_err();
        assert!(
            err.contains("no free /24 left in the default address pools (192.168.0.0/23)"),
            "{err}"
        );
    }

    #[test]
    fn a_users_subnet_is_checked_against_networks_the_tunnel_and_nodes() {
        let taken = Taken {
            networks: vec![("web", "10.1.0.0/16".parse().unwrap())],
            nodes: vec![("manager1".into(), "10.77.0.1".parse().unwrap())],
        };
        let err = place_subnet(&spec("10.1.2.0/24", ""), None, &taken).unwrap_err();
        assert_eq!(
            err,
            "--subnet 10.1.2.0/24 overlaps network \"web\" (10.1.0.0/16): pick another --subnet"
        );
        let err = place_subnet(&spec("10.255.255.0/24", ""), None, &taken).unwrap_err();
        assert!(
            err.contains("overlaps the cluster's tunnel network (10.255.240.0/20)"),
            "{err}"
        );
        let err = place_subnet(&spec("10.77.0.0/24", ""), None, &taken).unwrap_err();
        assert!(
            err.contains("holds the address of node manager1 (10.77.0.1)"),
            "{err}"
        );
        let err = place_subnet(&spec("10.9.0.1/24", ""), None, &taken).unwrap_err();
        assert!(
            err.contains("has host bits set: did you mean 10.9.0.0/24?"),
            "{err}"
        );
        let err = place_subnet(&spec("10.9.0.0/24", "10.9.1.1"), None, &taken).unwrap_err();
        assert!(err.contains("not a host address of the subnet"), "{err}");
        let err = place_subnet(&spec("", "10.9.1.1"), None, &taken).unwrap_err();
        assert_eq!(err, "--gateway needs --subnet");
        let (s, gw) = place_subnet(&spec("10.9.0.0/24", "10.9.0.254"), None, &taken).unwrap();
        assert_eq!(
            (s.to_string(), gw.to_string()),
            ("10.9.0.0/24".into(), "10.9.0.254".into())
        );
    }

    #[test]
    fn names_drivers_options_and_pools_are_checked() {
        let mut s = spec("", "");
        s.name = "host".into();
        assert!(validate_network(&s).unwrap_err().contains("built-in"));
        s.name = "ok-net".into();
        s.driver = "bridge".into();
        assert!(validate_network(&s).unwrap_err().contains("not supported"));
        s.driver = "overlay".into();
        s.options.insert("encrypted".into(), "false".into());
        assert!(validate_network(&s)
            .unwrap_err()
            .contains("always encrypted"));
        s.options.clear();
        s.options.insert("mtu".into(), "1".into());
        assert!(validate_network(&s).unwrap_err().contains("576 to 9000"));
        s.options.insert("mtu".into(), "1400".into());
        assert_eq!(validate_network(&s), Ok(()));
        assert!(network_config(&["10.0.0.0/8".into()], 7)
            .unwrap_err()
            .contains("use 8 to 29"));
        assert!(
            network_config(&["10.0.0.0/16".into(), "10.0.1.0/24".into()], 24)
                .unwrap_err()
                .contains("overlaps")
        );
        assert!(network_config(&["nonsense".into()], 24)
            .unwrap_err()
            .contains("not an IPv4 CIDR"));
        let c = network_config(&[], 0).unwrap();
        assert_eq!(c.default_addr_pool_mask_length, 24);
        assert_eq!(c.tunnel_subnet, DEFAULT_TUNNEL_SUBNET);
    }

    #[test]
    fn vnis_start_at_4096_and_fill_gaps() {
        let n = |vni| Network {
            vni,
            ..Default::default()
        };
        assert_eq!(free_vni(&[]), 4096);
        assert_eq!(free_vni(&[n(4096), n(4098)]), 4097);
    }
}

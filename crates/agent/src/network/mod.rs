//! Task networking on this node (DESIGN.md §6b). Every task gets a network namespace of
//! its own unless its service says `--network host`. A task with no network named sits
//! on the node's bridge, `shoal0` (Docker's docker0): a veth from its namespace into the
//! bridge, an address from the bridge's subnet, a default route through the bridge,
//! and outbound NAT (nftables) so it reaches what the node reaches while binding none of
//! the node's ports.
//!
//! What a task has is kept under `<state dir>/network/tasks/<task id>/`: its address,
//! its namespace (a bind mount of the namespace, like `ip netns` makes, so it outlives
//! the daemon), and the `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` mounted
//! into its container. After a restart the daemon reads the addresses back; the
//! namespaces and veths never went away. [`Networks::release`] removes all of it.
//!
//! Links and addresses are made with netlink directly (no `ip` processes on the start
//! path); the NAT rule is one `nft -f -` transaction when the bridge is set up.

pub mod discovery;
pub mod kernelwg;
pub mod netlink;
pub mod overlay;
pub mod wg;
pub mod wgkey;

use crate::runtime::{MountKind, MountSpec};
use ipnet::Ipv4Net;
use netlink::Netlink;
use netlink_packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth};
use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The node-local bridge of tasks that name no network.
pub const BRIDGE: &str = "shoal0";
/// What a task's address on [`BRIDGE`] is reported as.
pub const BRIDGE_NETWORK: &str = "bridge";
pub use shoal_proto::HOST_NETWORK;
/// The nftables table of the bridge's outbound NAT.
pub const NAT_TABLE: &str = "shoal_bridge";

/// Subnets the bridge may take, the first that overlaps no route of the node: Docker's
/// default local pools (172.17/16 is left to Docker's own docker0).
fn candidates() -> impl Iterator<Item = Ipv4Net> {
    let wide = (18..=31u8).map(|b| Ipv4Net::new(Ipv4Addr::new(172, b, 0, 0), 16));
    let narrow = (0..16u8).map(|i| Ipv4Net::new(Ipv4Addr::new(192, 168, i * 16, 0), 20));
    wide.chain(narrow).filter_map(Result::ok)
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// What [`Networks::attach`] gave a task.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// The task's network namespace, for the container's config.json.
    pub netns: PathBuf,
    /// Its addresses, with the subnets' prefix lengths, by network name (`bridge` for
    /// the node's bridge).
    pub addresses: Vec<(String, Ipv4Net)>,
    /// `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` for the container.
    pub mounts: Vec<MountSpec>,
}

/// An overlay network a task joins, with the address the managers gave it there.
#[derive(Clone, Debug)]
pub struct OverlayLeg {
    pub network: shoal_proto::objects::Network,
    pub address: Ipv4Net,
}

impl OverlayLeg {
    fn name(&self) -> &str {
        self.network.spec.as_ref().map_or("", |s| s.name.as_str())
    }

    /// The task's MTU there: the network's `mtu` option, at most what VXLAN inside
    /// WireGuard leaves.
    fn mtu(&self) -> u32 {
        self.network
            .spec
            .as_ref()
            .and_then(|s| s.options.get("mtu"))
            .and_then(|m| m.parse::<u32>().ok())
            .unwrap_or(overlay::TASK_MTU)
            .min(overlay::TASK_MTU)
    }
}

/// One interface of a task: a veth whose other end is `host_if` in the namespace at
/// `host_ns` (the node's when None), in the bridge `controller` there.
struct Leg {
    host_ns: Option<PathBuf>,
    host_if: String,
    controller: u32,
    ifname: String,
    address: Ipv4Net,
    mtu: Option<u32>,
}

struct Bridge {
    /// The gateway address (the bridge's own), with the subnet's prefix length.
    gateway: Ipv4Net,
    index: u32,
}

struct Inner {
    bridge: Option<Bridge>,
    /// Addresses in use on the bridge, by task.
    used: HashMap<String, Ipv4Addr>,
    /// Where the search for a free address starts: just after the last one given, so a
    /// released address is not handed out again at once.
    next: u32,
}

pub struct Networks {
    dir: PathBuf,
    inner: Mutex<Inner>,
    key: std::sync::OnceLock<Result<wgkey::WgKey, String>>,
    /// The encrypted data plane of overlay networks.
    pub data_plane: std::sync::Arc<overlay::DataPlane>,
}

fn io_msg(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The host side of a task's veth: a name from its ID that fits IFNAMSIZ.
pub fn host_veth(id: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(id.as_bytes());
    format!("vsh{}", &hex::encode(h)[..12])
}

/// A stable MAC for an address, as Docker makes them: 02:42 and the IPv4 address.
fn mac_of(ip: Ipv4Addr) -> Vec<u8> {
    let o = ip.octets();
    vec![0x02, 0x42, o[0], o[1], o[2], o[3]]
}

impl Networks {
    /// The networking of a node whose state directory is `state_dir`. Reads back the
    /// addresses of the tasks it has; sets up nothing until a task needs it.
    pub fn new(state_dir: &Path) -> Networks {
        let dir = state_dir.join("network");
        let mut used = HashMap::new();
        for id in list_dir(&dir.join("tasks")) {
            let ip = std::fs::read_to_string(dir.join("tasks").join(&id).join("address"))
                .ok()
                .and_then(|s| s.trim().parse::<Ipv4Net>().ok());
            if let Some(ip) = ip {
                used.insert(id, ip.addr());
            }
        }
        Networks {
            dir,
            inner: Mutex::new(Inner {
                bridge: None,
                used,
                next: 0,
            }),
            key: std::sync::OnceLock::new(),
            data_plane: std::sync::Arc::new(overlay::DataPlane::new(state_dir)),
        }
    }

    /// Takes the peer list the managers sent: the data plane's, started by the first
    /// one that gives this node a tunnel address.
    pub fn set_peers(&self, peers: shoal_proto::dispatcher::PeerView) {
        tracing::debug!(
            peers = peers.peers.len(),
            "WireGuard peers from the managers"
        );
        self.data_plane.set_peers(peers);
    }

    /// Takes the managers' view of the tasks on this node's overlay networks.
    pub fn set_networks(&self, view: shoal_proto::dispatcher::NetworkView) {
        self.data_plane.set_networks(view);
    }

    /// The peers the managers sent last.
    pub fn peers(&self) -> Vec<shoal_proto::dispatcher::Peer> {
        self.data_plane.peers()
    }

    /// The node's WireGuard key pair, made on first use.
    pub fn wg_key(&self) -> Result<&wgkey::WgKey, String> {
        self.key
            .get_or_init(|| wgkey::WgKey::load_or_create(&self.dir.join("wg.key")))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn task_dir(&self, id: &str) -> PathBuf {
        self.dir.join("tasks").join(id)
    }

    /// The tasks this node has network state for.
    pub fn list(&self) -> Vec<String> {
        list_dir(&self.dir.join("tasks"))
    }

    /// The address task `id` has on the bridge, if it has one.
    pub fn address(&self, id: &str) -> Option<Ipv4Net> {
        std::fs::read_to_string(self.task_dir(id).join("address"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The overlay networks task `id` is on here: (network ID, name, address).
    fn overlay_legs(&self, id: &str) -> Vec<(String, String, Ipv4Net)> {
        std::fs::read_to_string(self.task_dir(id).join("overlays"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let (net, name, addr) = (f.next()?, f.next()?, f.next()?);
                Some((net.to_string(), name.to_string(), addr.parse().ok()?))
            })
            .collect()
    }

    /// Every address task `id` has, by network name: its overlay networks first, then
    /// the node's bridge.
    pub fn addresses(&self, id: &str) -> Vec<(String, Ipv4Net)> {
        let mut out: Vec<(String, Ipv4Net)> = self
            .overlay_legs(id)
            .into_iter()
            .map(|(_, name, a)| (name, a))
            .collect();
        if let Some(a) = self.address(id) {
            out.push((BRIDGE_NETWORK.to_string(), a));
        }
        out
    }

    /// Gives task `id` a namespace of its own: an interface on each of `overlays`
    /// (eth0, eth1, ... in order), and, when `outbound`, one on the node's bridge with
    /// the default route (its way out, NATed); the bridge is set up first if this is
    /// the first task on it. `etc` goes into its /etc files. Only the bridge
    /// address is chosen under the lock: namespaces are made in parallel.
    pub fn attach(
        &self,
        id: &str,
        etc: &EtcOptions,
        overlays: &[OverlayLeg],
        outbound: bool,
    ) -> Result<Attachment, String> {
        let result = self.attach_inner(id, etc, overlays, outbound);
        if result.is_err() {
            let _ = self.release(id);
        }
        result
    }

    fn attach_inner(
        &self,
        id: &str,
        etc: &EtcOptions,
        overlays: &[OverlayLeg],
        outbound: bool,
    ) -> Result<Attachment, String> {
        let dir = self.task_dir(id);
        std::fs::create_dir_all(&dir)
            .map_err(io_msg("cannot create the task's network directory"))?;
        let mut legs = Vec::new();
        let mut addresses = Vec::new();
        if !overlays.is_empty() {
            let text: String = overlays
                .iter()
                .map(|o| format!("{} {} {}\n", o.network.id, o.name(), o.address))
                .collect();
            write_file(&dir.join("overlays"), &text)?;
        }
        if !overlays.is_empty() {
            let ids: Vec<String> = overlays.iter().map(|o| o.network.id.clone()).collect();
            self.data_plane.wait_view(&ids);
        }
        for (i, o) in overlays.iter().enumerate() {
            let (ns, br) = self.data_plane.ensure_overlay(&o.network)?;
            legs.push(Leg {
                host_ns: Some(ns),
                host_if: host_veth(&format!("{id}/{}", o.network.id)),
                controller: br,
                ifname: format!("eth{i}"),
                address: o.address,
                mtu: Some(o.mtu()),
            });
            addresses.push((o.name().to_string(), o.address));
        }
        let mut gateway = None;
        if outbound {
            let (gw, index, address) = self.bridge_address(id)?;
            write_file(&dir.join("address"), &format!("{address}\n"))?;
            legs.push(Leg {
                host_ns: None,
                host_if: host_veth(id),
                controller: index,
                ifname: format!("eth{}", overlays.len()),
                address,
                mtu: None,
            });
            addresses.push((BRIDGE_NETWORK.to_string(), address));
            gateway = Some(gw);
        }
        let netns = dir.join("netns");
        make_namespace(&netns, &legs, gateway)
            .map_err(io_msg("cannot create the task's network namespace"))?;
        let first = addresses
            .first()
            .map_or(Ipv4Addr::LOCALHOST, |(_, a)| a.addr());
        let node = node_resolv_conf();
        let resolv = if overlays.is_empty() {
            resolv_conf(&node, etc)
        } else {
            let ids = overlays.iter().map(|o| o.network.id.clone()).collect();
            let forward = etc.forwarders();
            if !forward.is_empty() {
                let text: String = forward.iter().map(|a| format!("{a}\n")).collect();
                write_file(&dir.join(FORWARDERS), &text)?;
            }
            self.data_plane.start_task(id, &netns, ids, &forward)?;
            discovery_resolv_conf(&node, etc)
        };
        let mounts = etc_files(&dir, etc, first, &resolv)?;
        Ok(Attachment {
            netns,
            addresses,
            mounts,
        })
    }

    /// Starts the service discovery of task `id` again, if it is on overlay networks
    /// (a task re-adopted after a daemon restart: its DNS server went with the old
    /// daemon).
    pub fn resume(&self, id: &str) -> Result<(), String> {
        let nets: Vec<String> = self.overlay_legs(id).into_iter().map(|l| l.0).collect();
        let netns = self.task_dir(id).join("netns");
        if nets.is_empty() || !netns.exists() {
            return Ok(());
        }
        let forward: Vec<Ipv4Addr> = std::fs::read_to_string(self.task_dir(id).join(FORWARDERS))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        self.data_plane.start_task(id, &netns, nets, &forward)
    }

    /// An address on the node's bridge for task `id` (the one it has, after a
    /// restart), the bridge set up first if needed: (gateway, bridge index, address).
    fn bridge_address(&self, id: &str) -> Result<(Ipv4Addr, u32, Ipv4Net), String> {
        let mut guard = self.inner.lock().map_err(|_| "network state poisoned")?;
        let inner = &mut *guard;
        if inner.bridge.is_none() {
            inner.bridge =
                Some(self.setup_bridge().map_err(|e| {
                    format!("cannot set up this node's bridge network {BRIDGE}: {e}")
                })?);
        }
        let Some(bridge) = inner.bridge.as_ref() else {
            unreachable!("set just above")
        };
        let ip = match inner.used.get(id) {
            Some(ip) => *ip,
            None => {
                free_address(&bridge.gateway, &inner.used, &mut inner.next).ok_or_else(|| {
                    format!(
                        "no free address left on this node's bridge network ({})",
                        bridge.gateway.trunc()
                    )
                })?
            }
        };
        inner.used.insert(id.to_string(), ip);
        let address = Ipv4Net::new(ip, bridge.gateway.prefix_len()).map_err(|e| e.to_string())?;
        Ok((bridge.gateway.addr(), bridge.index, address))
    }

    /// Removes task `id`'s namespace, address and files. Nothing of them is fine. The
    /// namespace goes once its last holder (its bind mount) does, and its veth pair with
    /// it: the kernel takes links down in batches, far cheaper than one by one.
    pub fn release(&self, id: &str) -> Result<(), String> {
        self.data_plane.stop_task(id);
        let dir = self.task_dir(id);
        let netns = dir.join("netns");
        let overlays = self.overlay_legs(id);
        match nix::mount::umount2(&netns, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
            Err(nix::errno::Errno::EINVAL) => {
                // Not mounted here (made by a daemon in another mount namespace, or a
                // namespace that never was): take the veth down by name.
                if let Ok(mut s) = Netlink::open() {
                    s.del_link(&host_veth(id))
                        .map_err(io_msg("cannot delete the task's veth"))?;
                }
            }
            Err(e) => return Err(format!("cannot unmount {}: {e}", netns.display())),
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", dir.display())),
        }
        if let Ok(mut inner) = self.inner.lock() {
            inner.used.remove(id);
        }
        // An overlay network's namespace goes with its last task here.
        for (net, _, _) in overlays {
            self.data_plane.remove_overlay_unless(&net, |net| {
                self.list()
                    .iter()
                    .any(|t| self.overlay_legs(t).iter().any(|(n, _, _)| n == net))
            });
        }
        Ok(())
    }

    /// The bridge, its address and its NAT rule; what exists is kept.
    fn setup_bridge(&self) -> Result<Bridge, String> {
        let mut sock = Netlink::open().map_err(io_msg("cannot open a netlink socket"))?;
        let saved = self.dir.join("bridge-subnet");
        let index = match sock
            .link_index(BRIDGE)
            .map_err(io_msg("cannot read links"))?
        {
            Some(i) => i,
            None => {
                sock.add_link(LinkBridge::new(BRIDGE).build())
                    .map_err(io_msg("cannot create the bridge"))?;
                sock.link_index(BRIDGE)
                    .map_err(io_msg("cannot read links"))?
                    .ok_or("the bridge vanished as it was made")?
            }
        };
        let have = sock
            .addresses(index)
            .map_err(io_msg("cannot read addresses"))?;
        let gateway = match have.first() {
            Some((ip, len)) => Ipv4Net::new(*ip, *len).map_err(|e| e.to_string())?,
            None => {
                let routes: Vec<Ipv4Net> = sock
                    .routes(Some(index))
                    .map_err(io_msg("cannot read routes"))?
                    .into_iter()
                    .filter_map(|(ip, len)| Ipv4Net::new(ip, len).ok())
                    .collect();
                let kept = std::fs::read_to_string(&saved)
                    .ok()
                    .and_then(|s| s.trim().parse::<Ipv4Net>().ok());
                let subnet = kept
                    .into_iter()
                    .chain(candidates())
                    .find(|c| !routes.iter().any(|r| overlaps(r, c)))
                    .ok_or("every candidate subnet (172.18-31.0.0/16, 192.168.0-240.0/20) overlaps a route of this node")?;
                let gw = subnet
                    .hosts()
                    .next()
                    .ok_or("the subnet has no host address")?;
                sock.add_address(index, gw, subnet.prefix_len())
                    .map_err(io_msg("cannot give the bridge its address"))?;
                Ipv4Net::new(gw, subnet.prefix_len()).map_err(|e| e.to_string())?
            }
        };
        sock.set_link(LinkUnspec::new_with_index(index).up().build())
            .map_err(io_msg("cannot bring the bridge up"))?;
        std::fs::create_dir_all(&self.dir)
            .map_err(io_msg("cannot create the network directory"))?;
        write_file(&saved, &format!("{}\n", gateway.trunc()))?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(io_msg("cannot turn on IPv4 forwarding"))?;
        route_localnet(BRIDGE)?;
        apply_nft(&nat_rules(&gateway.trunc()))?;
        tracing::info!(bridge = BRIDGE, subnet = %gateway.trunc(), "bridge network ready");
        Ok(Bridge { gateway, index })
    }
}

/// Lets a packet from 127.0.0.1 leave through `link`: a published port at
/// localhost:PORT on the node goes to a task (the ingress table rewrites both ends).
fn route_localnet(link: &str) -> Result<(), String> {
    let path = format!("/proc/sys/net/ipv4/conf/{link}/route_localnet");
    std::fs::write(&path, "1").map_err(|e| format!("cannot write {path}: {e}"))
}

fn list_dir(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The next address of the bridge's subnet no task has, from `next` on (wrapping).
fn free_address(
    gateway: &Ipv4Net,
    used: &HashMap<String, Ipv4Addr>,
    next: &mut u32,
) -> Option<Ipv4Addr> {
    let taken: std::collections::HashSet<Ipv4Addr> = used.values().copied().collect();
    let first = u32::from(gateway.network()) + 1;
    let last = u32::from(gateway.broadcast()).checked_sub(1)?;
    let span = last.checked_sub(first)? + 1;
    let start = (*next).clamp(first, last);
    (0..span)
        .map(|i| first + (start - first + i) % span)
        .map(Ipv4Addr::from)
        .find(|ip| *ip != gateway.addr() && !taken.contains(ip))
        .inspect(|ip| *next = u32::from(*ip) + 1)
}

/// Bind-mounts the calling thread's network namespace at `path` (made as a file), as
/// `ip netns` does, so it outlives every process in it.
fn bind_thread_netns(path: &Path) -> std::io::Result<()> {
    std::fs::File::create(path)?;
    nix::mount::mount(
        Some("/proc/thread-self/ns/net"),
        path,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(std::io::Error::from)
}

/// Makes the namespace at `path` (a bind mount of a new network namespace) with one
/// interface per leg, and a default route via `gateway` on the last leg when given.
fn make_namespace(path: &Path, legs: &[Leg], gateway: Option<Ipv4Addr>) -> std::io::Result<()> {
    // Sockets on the namespaces of the legs' other ends, opened before the thread
    // leaves the node's namespace.
    let mut hosts = legs
        .iter()
        .map(|l| match &l.host_ns {
            None => Netlink::open(),
            Some(ns) => Netlink::open_in(ns),
        })
        .collect::<std::io::Result<Vec<Netlink>>>()?;
    std::thread::scope(|s| {
        // A thread of its own: unshare moves only the calling thread, which ends here.
        s.spawn(move || -> std::io::Result<()> {
            let step = |what: &'static str| {
                move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"))
            };
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| step("unshare")(e.into()))?;
            bind_thread_netns(path).map_err(step("bind-mount the namespace"))?;
            let ns = std::fs::File::open("/proc/thread-self/ns/net")
                .map_err(step("open the namespace"))?;
            let mut inner =
                Netlink::open().map_err(step("open a netlink socket in the namespace"))?;
            for (leg, host) in legs.iter().zip(hosts.iter_mut()) {
                let mut peer = LinkUnspec::new_with_name(&leg.ifname)
                    .setns_by_fd(ns.as_raw_fd())
                    .address(mac_of(leg.address.addr()));
                let mut veth = LinkVeth::new(&leg.host_if, &leg.ifname);
                if let Some(mtu) = leg.mtu {
                    peer = peer.mtu(mtu);
                    veth = veth.mtu(mtu);
                }
                let veth = veth
                    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
                    .controller(leg.controller)
                    .up()
                    .build();
                host.add_link(veth).map_err(step("create the veth"))?;
            }
            drop(hosts);
            // The loopback device is always the first link of a namespace.
            inner
                .set_link(LinkUnspec::new_with_index(1).up().build())
                .map_err(step("bring lo up"))?;
            let mut last = None;
            for leg in legs {
                let index = inner
                    .link_index(&leg.ifname)
                    .map_err(step("find the task's interface"))?
                    .ok_or_else(|| {
                        std::io::Error::other(format!(
                            "{} did not arrive in the namespace",
                            leg.ifname
                        ))
                    })?;
                inner
                    .add_address(index, leg.address.addr(), leg.address.prefix_len())
                    .map_err(step("give the task's interface its address"))?;
                // Up only now: a veth end cannot come up while its peer is being made.
                inner
                    .set_link(LinkUnspec::new_with_index(index).up().build())
                    .map_err(step("bring the task's interface up"))?;
                last = Some(index);
            }
            if let (Some(gw), Some(index)) = (gateway, last) {
                inner
                    .add_default_route(index, gw)
                    .map_err(step("add the default route"))?;
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
    })
}

/// The outbound NAT of the bridge's subnet: what leaves through another link takes
/// the node's address.
pub fn nat_rules(subnet: &Ipv4Net) -> String {
    ip_table(
        NAT_TABLE,
        &[(
            "postrouting",
            "type nat hook postrouting priority 100",
            &format!("\t\tip saddr {subnet} oifname != \"{BRIDGE}\" masquerade\n"),
        )],
    )
}

/// An nftables script that replaces the table `ip NAME` whole, in one transaction
/// (made first, so deleting it never fails): one chain per (name, hook, rules), the
/// rules one per line.
pub fn ip_table(name: &str, chains: &[(&str, &str, &str)]) -> String {
    let mut s = format!("add table ip {name}\ndelete table ip {name}\ntable ip {name} {{\n");
    for (chain, hook, rules) in chains {
        s.push_str(&format!(
            "\tchain {chain} {{\n\t\t{hook}; policy accept;\n{rules}\t}}\n"
        ));
    }
    s.push_str("}\n");
    s
}

/// Runs an nftables script as one transaction in the node's namespace.
fn apply_nft(script: &str) -> Result<(), String> {
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e} (install the nftables package)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("cannot write to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("nft failed: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft refused the rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// In a task's network directory: the nameservers its DNS server forwards to, when
/// the task names its own (`--dns`), so a restarted daemon forwards there again.
const FORWARDERS: &str = "dns-forwarders";

/// What a task's /etc files hold beyond its address: its hostname, and what its spec
/// asks for (`--dns`, `--dns-search`, `--dns-option`, `--host`). Empty lists: the
/// node's.
#[derive(Clone, Debug, Default)]
pub struct EtcOptions {
    pub hostname: String,
    pub nameservers: Vec<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
    /// `IP HOSTNAME` lines.
    pub hosts: Vec<String>,
}

impl EtcOptions {
    /// Only a hostname: the node's resolver settings, no extra hosts.
    pub fn named(hostname: &str) -> EtcOptions {
        EtcOptions {
            hostname: hostname.to_string(),
            ..Default::default()
        }
    }

    /// The IPv4 nameservers the task names (its DNS server forwards over IPv4).
    fn forwarders(&self) -> Vec<Ipv4Addr> {
        self.nameservers
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
    }
}

/// Writes the task's /etc files and returns their mounts.
fn etc_files(
    dir: &Path,
    etc: &EtcOptions,
    ip: Ipv4Addr,
    resolv: &str,
) -> Result<Vec<MountSpec>, String> {
    let hostname = &etc.hostname;
    let files = [
        ("hosts", hosts_file(hostname, ip, &etc.hosts)),
        ("hostname", format!("{hostname}\n")),
        ("resolv.conf", resolv.to_string()),
    ];
    let mut mounts = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        write_file(&path, &text)?;
        mounts.push(MountSpec {
            kind: MountKind::Bind,
            source: path.display().to_string(),
            target: format!("/etc/{name}"),
            readonly: false,
            size_bytes: 0,
            mode: 0,
        });
    }
    Ok(mounts)
}

/// A task's /etc/hosts: the usual names, its own, then the `--host` entries.
pub fn hosts_file(hostname: &str, ip: Ipv4Addr, extra: &[String]) -> String {
    let mut out = format!(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         ff00::0\tip6-mcastprefix\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n\
         {ip}\t{hostname}\n"
    );
    for line in extra {
        let mut w = line.split_whitespace();
        if let Some(addr) = w.next() {
            let names: Vec<&str> = w.collect();
            out.push_str(&format!("{addr}\t{}\n", names.join(" ")));
        }
    }
    out
}

/// The node's resolver configuration: /etc/resolv.conf, or systemd-resolved's list of
/// upstream servers when /etc/resolv.conf names only its local stub.
fn node_resolv_conf() -> String {
    let main = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if nameservers(&main).next().is_some() {
        return main;
    }
    std::fs::read_to_string("/run/systemd/resolve/resolv.conf").unwrap_or(main)
}

/// Nameservers a task can reach: loopback ones are the node's own, not the task's.
fn nameservers(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .filter(|ip| {
            ip.parse::<std::net::IpAddr>()
                .map(|a| !a.is_loopback())
                .unwrap_or(false)
        })
}

/// The node's `search`/`domain` lines, or the task's own search domains.
fn search_lines(node: &str, etc: &EtcOptions) -> String {
    if !etc.search.is_empty() {
        return format!("search {}\n", etc.search.join(" "));
    }
    node.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("search") || l.starts_with("domain"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A task's resolv.conf from the node's: its reachable nameservers (Docker's public
/// fallback when there are none), search domains and options; each replaced by the
/// task's own when its spec names them.
pub fn resolv_conf(node: &str, etc: &EtcOptions) -> String {
    let mut out = String::new();
    let servers: Vec<&str> = match etc.nameservers.is_empty() {
        true => nameservers(node).collect(),
        false => etc.nameservers.iter().map(String::as_str).collect(),
    };
    if servers.is_empty() {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    for s in servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    out.push_str(&search_lines(node, etc));
    if etc.options.is_empty() {
        for l in node.lines().map(str::trim) {
            if l.starts_with("options") {
                out.push_str(l);
                out.push('\n');
            }
        }
    } else {
        out.push_str(&format!("options {}\n", etc.options.join(" ")));
    }
    out
}

/// The resolv.conf of a task on overlay networks: the embedded DNS server (which
/// forwards what it does not know to the node's resolvers, or the task's `--dns`), with
/// the node's search domains (or the task's), as swarm mode writes it: `ndots:0` unless
/// the task sets ndots itself.
pub fn discovery_resolv_conf(node: &str, etc: &EtcOptions) -> String {
    let mut out = format!("nameserver {}\n", discovery::DNS_ADDR);
    out.push_str(&search_lines(node, etc));
    let mut options = etc.options.clone();
    if !options.iter().any(|o| o.starts_with("ndots:")) {
        options.insert(0, "ndots:0".into());
    }
    out.push_str(&format!("options {}\n", options.join(" ")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_skip_the_gateway_and_taken_ones_and_wrap() {
        let gw: Ipv4Net = "10.9.0.1/29".parse().unwrap();
        let mut used = HashMap::new();
        let mut next = 0;
        let a = free_address(&gw, &used, &mut next).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 9, 0, 2), "the gateway .1 is skipped");
        used.insert("a".into(), a);
        let b = free_address(&gw, &used, &mut next).unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 9, 0, 3));
        used.remove("a");
        // .2 is free again, but the search goes on from .4 first.
        let c = free_address(&gw, &used, &mut next).unwrap();
        assert_eq!(c, Ipv4Addr::new(10, 9, 0, 4));
        for (i, ip) in [5, 6].into_iter().enumerate() {
            let got = free_address(&gw, &used, &mut next).unwrap();
            assert_eq!(got, Ipv4Addr::new(10, 9, 0, ip));
            used.insert(format!("x{i}"), got);
        }
        used.insert("b".into(), b);
        used.insert("c".into(), c);
        assert_eq!(
            free_address(&gw, &used, &mut next),
            Some(Ipv4Addr::new(10, 9, 0, 2)),
            "wraps around to the released address"
        );
        used.insert("d".into(), Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(free_address(&gw, &used, &mut next), None, "a full subnet");
    }

    #[test]
    fn a_tasks_resolv_conf_drops_the_nodes_loopback_resolvers() {
        let node = "# comment\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch corp.example\noptions edns0\n";
        let none = EtcOptions::default();
        assert_eq!(
            resolv_conf(node, &none),
            "nameserver 10.0.0.2\nsearch corp.example\noptions edns0\n"
        );
        assert_eq!(
            resolv_conf("nameserver 127.0.0.53\n", &none),
            "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
    }

    #[test]
    fn a_tasks_own_dns_settings_replace_the_nodes() {
        let node = "nameserver 10.0.0.2\nsearch corp.example\noptions edns0\n";
        let etc = EtcOptions {
            nameservers: vec!["10.9.9.9".into()],
            search: vec!["a.example".into(), "b.example".into()],
            options: vec!["ndots:2".into(), "timeout:1".into()],
            ..Default::default()
        };
        assert_eq!(
            resolv_conf(node, &etc),
            "nameserver 10.9.9.9\nsearch a.example b.example\noptions ndots:2 timeout:1\n"
        );
        assert_eq!(
            discovery_resolv_conf(node, &etc),
            "nameserver 127.0.0.11\nsearch a.example b.example\noptions ndots:2 timeout:1\n"
        );
        assert_eq!(
            discovery_resolv_conf(node, &EtcOptions::default()),
            "nameserver 127.0.0.11\nsearch corp.example\noptions ndots:0\n"
        );
        assert_eq!(etc.forwarders(), [Ipv4Addr::new(10, 9, 9, 9)]);
    }

    #[test]
    fn hosts_name_the_task_and_veths_fit_ifnamsiz() {
        let h = hosts_file("web-1", Ipv4Addr::new(172, 18, 0, 7), &[]);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("172.18.0.7\tweb-1\n"));
        let h = hosts_file(
            "web-1",
            Ipv4Addr::new(172, 18, 0, 7),
            &["10.0.0.5 db.local".into()],
        );
        assert!(
            h.ends_with("172.18.0.7\tweb-1\n10.0.0.5\tdb.local\n"),
            "{h}"
        );
        let v = host_veth("abcdefghijklmnopqrstuvwxy");
        assert_eq!(v.len(), 15);
        assert_ne!(v, host_veth("abcdefghijklmnopqrstuvwxz"));
    }

    #[test]
    fn the_nat_rule_covers_the_subnet_leaving_by_other_links() {
        let r = nat_rules(&"172.18.0.0/16".parse().unwrap());
        assert!(r.contains("ip saddr 172.18.0.0/16 oifname != \"shoal0\" masquerade"));
        assert!(r.starts_with("add table ip shoal_bridge\ndelete table ip shoal_bridge\n"));
    }
}

/// Root only: real namespaces, veths and nftables, in a scratch network namespace.
#[cfg(test)]
mod root_tests {
    use super::*;

    /// Runs `f` on a thread inside a new network namespace (gone when it ends).
    fn in_scratch_netns<T: Send>(f: impl FnOnce() -> T + Send) -> Option<T> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return None;
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
        .into()
    }

    #[test]
    fn a_task_gets_a_namespace_on_the_bridge_and_release_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        in_scratch_netns(|| {
            let net = Networks::new(dir.path());
            let a = net
                .attach("task1", &EtcOptions::named("task1host"), &[], true)
                .unwrap();
            assert_eq!(a.addresses[0].1.to_string(), "172.18.0.2/16");
            let b = net
                .attach("task2", &EtcOptions::named("task2host"), &[], true)
                .unwrap();
            assert_eq!(b.addresses[0].1.to_string(), "172.18.0.3/16");
            let mut sock = Netlink::open().unwrap();
            assert!(sock.link_index(&host_veth("task1")).unwrap().is_some());
            assert_eq!(net.address("task1"), Some(a.addresses[0].1));
            // A new Networks (a restarted daemon) reads the addresses back.
            let again = Networks::new(dir.path());
            let mut listed = again.list();
            listed.sort();
            assert_eq!(listed, ["task1", "task2"]);
            let c = again
                .attach("task3", &EtcOptions::named("task3host"), &[], true)
                .unwrap();
            assert_eq!(c.addresses[0].1.to_string(), "172.18.0.4/16");
            for id in ["task1", "task2", "task3"] {
                again.release(id).unwrap();
            }
            // The namespaces go, and their veths with them, as the kernel gets to it.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while ["task1", "task2", "task3"]
                .iter()
                .any(|id| sock.link_index(&host_veth(id)).unwrap().is_some())
            {
                assert!(std::time::Instant::now() < deadline, "veths left behind");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            assert!(again.list().is_empty());
            again.release("task1").unwrap();
        });
    }
}

//! The encrypted data plane of overlay networks on this node (reference/networking.md
//! §6.2-6.7). The WireGuard engine (`shoal dataplane`, see [`super::wg`]) owns the link
//! `shoal-wg`, addressed with the node's tunnel address; each overlay network with a
//! task here has a namespace of its own, `<state>/network/overlays/<network id>/netns`,
//! holding a bridge `br0` (the subnet's gateway) and a VXLAN device `vx` whose UDP
//! socket lives in the node's namespace, bound to the tunnel address and sending only
//! through `shoal-wg`. Tasks' veths join `br0`. Frames for tasks on other nodes go by
//! static entries (neighbour: task IP -> MAC, answered by the VXLAN's proxy ARP;
//! forwarding: MAC -> the node's tunnel address), written from the managers' view; no
//! learning, no flooding. An nftables guard in the node's namespace drops VXLAN that
//! comes in or would go out other than through `shoal-wg`, so no overlay byte ever
//! crosses the wire in clear.
//!
//! One thread applies what the managers send, in order: the peers (which also starts
//! the engine, or finds the one a previous daemon left running) and the networks'
//! tasks. It also restarts an engine that died.

use super::netlink::Netlink;
use super::{discovery, io_msg, kernelwg, mac_of, wg};
use ipnet::Ipv4Net;
use rtnetlink::{LinkBridge, LinkUnspec, LinkVxlan};
use shoal_proto::dispatcher::{NetworkView, PeerView, PublishedPort};
use shoal_proto::objects::{DataPlaneStatus, Network};
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The nftables table of the guard.
pub const GUARD_TABLE: &str = "shoal_guard";
/// VXLAN's port (IANA's; Linux's own default is 8472).
pub const VXLAN_PORT: u16 = 4789;
/// VXLAN's headers: inner Ethernet 14, VXLAN 8, UDP 8, IPv4 20.
const VXLAN_OVERHEAD: u32 = 50;
/// A task's MTU on an overlay network unless the network says less.
pub const TASK_MTU: u32 = wg::MTU - VXLAN_OVERHEAD;
/// How long a task start waits for the engine the first peer list starts.
const ENGINE_WAIT: Duration = Duration::from_secs(10);
/// How long a task's start waits for the managers' view of its networks.
const VIEW_WAIT: Duration = Duration::from_secs(2);
/// How often the engine is checked for life.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Task tables written at once when a view changes many.
const TABLE_WRITERS: usize = 4;
/// The engines, as `node inspect` names them.
const KERNEL: &str = "kernel";
const USERSPACE: &str = "userspace";

enum Msg {
    Peers(PeerView),
    Networks(NetworkView),
}

#[derive(Default)]
struct State {
    /// The node's tunnel address, once the engine has it.
    tunnel: Option<Ipv4Net>,
    /// "kernel" or "userspace" while the engine runs.
    engine: Option<&'static str>,
    /// Why it does not.
    error: Option<String>,
    /// The last peer list, and the request it last made (to resend after a restart).
    peers: Option<PeerView>,
    applied_peers: Option<String>,
    /// The guard's counters as last read: dropped coming in, going out.
    counters: (u64, u64),
    guard_ready: bool,
}

pub struct DataPlane {
    /// The node's state directory (the helper's argument) and its network directory.
    state_dir: PathBuf,
    dir: PathBuf,
    state: Mutex<State>,
    changed: Condvar,
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    /// Held while an overlay namespace is made, changed or removed.
    overlays: Mutex<()>,
    /// Held while task tables are written, so an older table never lands after a
    /// newer one.
    tables: Mutex<()>,
    /// The managers' last view of the networks this node has tasks on.
    view: discovery::View,
    /// The tasks on overlay networks here: their DNS servers and nftables tables.
    tasks: Mutex<HashMap<String, TaskNet>>,
    /// The cluster's published ports, and the ingress table last applied for them.
    published: Mutex<(Vec<PublishedPort>, String)>,
}

struct TaskNet {
    ns: PathBuf,
    networks: Vec<String>,
    dns: Option<discovery::DnsServer>,
    /// The table last applied in its namespace.
    applied: String,
}

fn overlay_ns(dir: &Path, net: &str) -> PathBuf {
    dir.join("overlays").join(net).join("netns")
}

impl DataPlane {
    pub fn new(state_dir: &Path) -> DataPlane {
        DataPlane {
            state_dir: state_dir.to_path_buf(),
            dir: state_dir.join("network"),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            tx: Mutex::new(None),
            overlays: Mutex::new(()),
            tables: Mutex::new(()),
            view: Default::default(),
            tasks: Mutex::new(HashMap::new()),
            published: Mutex::new((Vec::new(), String::new())),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(self: &std::sync::Arc<Self>, msg: Msg) {
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if tx.is_none() {
            let (t, rx) = mpsc::channel();
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("dataplane".into())
                .spawn(move || me.run(rx));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the data plane thread");
                return;
            }
            *tx = Some(t);
        }
        if let Some(t) = tx.as_ref() {
            let _ = t.send(msg);
        }
    }

    /// Takes the peer list the managers sent (applied in order on the data plane's
    /// thread; the first one with a tunnel address starts the engine).
    pub fn set_peers(self: &std::sync::Arc<Self>, peers: PeerView) {
        self.send(Msg::Peers(peers));
    }

    /// Takes the managers' view of the overlay networks this node has tasks on.
    pub fn set_networks(self: &std::sync::Arc<Self>, view: NetworkView) {
        self.send(Msg::Networks(view));
    }

    /// The peers the managers sent last.
    pub fn peers(&self) -> Vec<shoal_proto::dispatcher::Peer> {
        self.state()
            .peers
            .as_ref()
            .map(|p| p.peers.clone())
            .unwrap_or_default()
    }

    fn run(&self, rx: mpsc::Receiver<Msg>) {
        let mut tick = Instant::now() + CHECK_EVERY;
        loop {
            match rx.recv_timeout(tick.saturating_duration_since(Instant::now())) {
                Ok(first) => {
                    // Each message is a whole view: when several wait (a busy node
                    // applying a large one), only the newest of each kind matters.
                    let (mut peers, mut networks) = (None, None);
                    for m in std::iter::once(first).chain(rx.try_iter()) {
                        match m {
                            Msg::Peers(p) => peers = Some(p),
                            Msg::Networks(v) => networks = Some(v),
                        }
                    }
                    if let Some(p) = peers {
                        self.on_peers(p);
                    }
                    if let Some(v) = networks {
                        self.on_networks(v);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.check_engine();
                    self.read_counters();
                    tick = Instant::now() + CHECK_EVERY;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn fail(&self, why: String) {
        tracing::error!(error = %why, "the encrypted data plane is not running");
        let mut s = self.state();
        s.engine = None;
        s.error = Some(why);
        self.changed.notify_all();
    }

    fn on_peers(&self, view: PeerView) {
        let tunnel = view.tunnel_addr.parse::<Ipv4Net>().ok();
        let port = u16::try_from(view.data_path_port)
            .ok()
            .filter(|p| *p != 0)
            .unwrap_or(51820);
        self.state().peers = Some(view.clone());
        let Some(tunnel) = tunnel else {
            return;
        };
        let running = self.state().engine.is_some();
        if !running || self.state().tunnel != Some(tunnel) {
            if let Err(e) = self.start_engine(tunnel) {
                self.fail(e);
                return;
            }
            // Overlays a previous daemon left: their remote tasks as the view says now.
            self.reconcile_all();
            self.refresh_ingress();
        }
        let request = wg::set_request(port, &view.peers);
        if self.state().applied_peers.as_ref() == Some(&request) {
            return;
        }
        let applied = if self.state().engine == Some(KERNEL) {
            self.key()
                .and_then(|key| kernelwg::configure(key, port, &view.peers))
        } else {
            wg::uapi(&wg::socket_path(&self.state_dir), &request).map(|_| ())
        };
        match applied {
            Ok(_) => {
                tracing::info!(peers = view.peers.len(), "WireGuard peers applied");
                self.state().applied_peers = Some(request);
            }
            Err(e) => self.fail(e),
        }
    }

    /// Restarts an engine that died, and gives it its peers again.
    fn check_engine(&self) {
        let (running, peers) = {
            let s = self.state();
            (s.engine.is_some(), s.peers.clone())
        };
        if !running || self.engine_alive() {
            return;
        }
        tracing::warn!("the WireGuard engine stopped; starting it again");
        {
            let mut s = self.state();
            s.engine = None;
            s.applied_peers = None;
        }
        if let Some(p) = peers {
            self.on_peers(p);
        }
    }

    /// Whether the running engine is still there: the kernel link, or the helper
    /// answering on its socket.
    fn engine_alive(&self) -> bool {
        match self.state().engine {
            Some(KERNEL) => kernelwg::link_alive(),
            Some(_) => wg::uapi(&wg::socket_path(&self.state_dir), "get=1\n\n").is_ok(),
            None => false,
        }
    }

    /// The node's WireGuard private key (the kernel engine is given it; the helper
    /// reads it from the same file itself).
    fn key(&self) -> Result<[u8; 32], String> {
        let path = self.dir.join("wg.key");
        super::wgkey::WgKey::load_or_create(&path).map(|k| k.secret_bytes())
    }

    /// The engine up with the node's tunnel address, and the guard in place: kernel
    /// WireGuard where the kernel has it, else the userspace helper.
    fn start_engine(&self, tunnel: Ipv4Net) -> Result<(), String> {
        let engine = match kernelwg::ensure_link() {
            Ok(()) => KERNEL,
            Err(why) => {
                tracing::info!(reason = %why, "no kernel WireGuard: using the userspace engine");
                wg::ensure_helper(&self.state_dir)?;
                USERSPACE
            }
        };
        let mut sock = Netlink::open().map_err(io_msg("cannot open a netlink socket"))?;
        let index = sock
            .link_index(wg::LINK)
            .map_err(io_msg("cannot read links"))?
            .ok_or_else(|| format!("the WireGuard engine runs but {} is missing", wg::LINK))?;
        for (ip, len) in sock
            .addresses(index)
            .map_err(io_msg("cannot read addresses"))?
        {
            if (ip, len) != (tunnel.addr(), tunnel.prefix_len()) {
                let _ = sock.del_address(index, ip, len);
            }
        }
        sock.add_address(index, tunnel.addr(), tunnel.prefix_len())
            .map_err(io_msg("cannot give the WireGuard link its tunnel address"))?;
        sock.set_link(LinkUnspec::new_with_index(index).mtu(wg::MTU).up().build())
            .map_err(io_msg("cannot bring the WireGuard link up"))?;
        // Published ports are forwarded, to a local task or through the tunnel.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(io_msg("cannot turn on IPv4 forwarding"))?;
        super::route_localnet(wg::LINK)?;
        if !self.state().guard_ready {
            ensure_guard()?;
            self.state().guard_ready = true;
        }
        tracing::info!(engine, tunnel = %tunnel, "encrypted data plane ready");
        let mut s = self.state();
        s.tunnel = Some(tunnel);
        s.engine = Some(engine);
        s.error = None;
        s.applied_peers = None;
        self.changed.notify_all();
        Ok(())
    }

    /// Waits a while (the managers send it just after the task) until the view has
    /// each of `networks`, so that the first task of a network on this node starts
    /// with the other nodes' tasks, names and VIPs in place.
    pub fn wait_view(&self, networks: &[String]) {
        let deadline = Instant::now() + VIEW_WAIT;
        let mut s = self.state();
        loop {
            let have = self
                .view
                .read()
                .map(|v| networks.iter().all(|n| v.contains_key(n)))
                .unwrap_or(true);
            let now = Instant::now();
            if have || now >= deadline {
                if !have {
                    tracing::warn!(
                        ?networks,
                        "no view of the task's networks yet; starting it anyway"
                    );
                }
                return;
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The node's tunnel address once the engine runs; waits a while for the first
    /// peer list to start it.
    fn wait_engine(&self) -> Result<Ipv4Net, String> {
        let deadline = Instant::now() + ENGINE_WAIT;
        let mut s = self.state();
        loop {
            if let (Some(_), Some(t)) = (s.engine, s.tunnel) {
                return Ok(t);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(match &s.error {
                    Some(e) => format!("the encrypted data plane is not running on this node: {e}"),
                    None => "the encrypted data plane is not running on this node yet (the managers have not given it a tunnel address)".to_string(),
                });
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Reads the guard's counters (every few seconds, on the data plane's thread).
    fn read_counters(&self) {
        if !self.state().guard_ready {
            return;
        }
        if let Some(c) = guard_counters() {
            self.state().counters = c;
        }
    }

    /// What `node inspect` shows of the data plane (cheap: what was last read).
    pub fn status(&self) -> DataPlaneStatus {
        let s = self.state();
        DataPlaneStatus {
            engine: s.engine.unwrap_or_default().to_string(),
            error: s.error.clone().unwrap_or_default(),
            guard_dropped_in: s.counters.0,
            guard_dropped_out: s.counters.1,
            listen_port: match (s.engine, &s.peers) {
                (Some(_), Some(p)) => p.data_path_port,
                _ => 0,
            },
        }
    }

    fn on_networks(&self, view: NetworkView) {
        let published = view.published;
        let view: HashMap<String, discovery::NetView> = view
            .networks
            .into_iter()
            .map(|n| {
                (
                    n.network_id,
                    discovery::NetView {
                        endpoints: n.endpoints,
                        vips: n.vips,
                    },
                )
            })
            .collect();
        if let Ok(mut v) = self.view.write() {
            *v = view;
        }
        {
            let _s = self.state();
            self.changed.notify_all();
        }
        self.reconcile_all();
        self.refresh_tasks();
        self.published.lock().unwrap_or_else(|p| p.into_inner()).0 = published;
        self.refresh_ingress();
    }

    /// Makes the node's ingress table that of the published ports: each answers on the
    /// node's addresses and goes to one of the service's ready tasks, a local one by
    /// its bridge address, a remote one through the WireGuard tunnel to its node
    /// (which sends it on to its own task), so published traffic between nodes is
    /// encrypted too. Host-mode ports go only to local tasks.
    fn refresh_ingress(&self) {
        let Some(own) = self.state().tunnel.map(|t| t.addr()) else {
            return;
        };
        let mut guard = self.published.lock().unwrap_or_else(|p| p.into_inner());
        let local = |task: &str| -> Option<Ipv4Addr> {
            std::fs::read_to_string(self.dir.join("tasks").join(task).join("address"))
                .ok()?
                .trim()
                .parse::<Ipv4Net>()
                .ok()
                .map(|a| a.addr())
        };
        let script = ingress_table(own, &guard.0, local);
        if script == guard.1 {
            return;
        }
        match super::apply_nft(&script) {
            Ok(()) => guard.1 = script,
            Err(e) => tracing::warn!(error = %e, "cannot update the published ports"),
        }
    }

    /// Starts service discovery for task `id` (namespace `ns`, on `networks`): its DNS
    /// server and its table (DNS, VIPs). Replaces what it had (a resumed task).
    /// `nameservers`: where its DNS server forwards names it does not know (`--dns`);
    /// empty: the node's resolvers.
    pub fn start_task(
        &self,
        id: &str,
        ns: &Path,
        networks: Vec<String>,
        nameservers: &[Ipv4Addr],
    ) -> Result<(), String> {
        let up = match nameservers {
            [] => upstreams(),
            given => given.to_vec(),
        };
        let dns = match tokio::runtime::Handle::try_current() {
            Ok(rt) => Some(
                discovery::start(&rt, ns, networks.clone(), self.view.clone(), up)
                    .map_err(io_msg("cannot start the task's DNS server"))?,
            ),
            Err(_) => None,
        };
        let mut t = TaskNet {
            ns: ns.to_path_buf(),
            networks,
            dns,
            applied: String::new(),
        };
        let _tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        self.apply_table(&mut t)?;
        self.tasks_lock().insert(id.to_string(), t);
        Ok(())
    }

    /// Stops task `id`'s discovery (its table goes with its namespace).
    pub fn stop_task(&self, id: &str) {
        self.tasks_lock().remove(id);
    }

    fn tasks_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TaskNet>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Task `t`'s table as the view makes it.
    fn table_of(&self, t: &TaskNet) -> String {
        let vips = match self.view.read() {
            Ok(v) => discovery::vips_of(&v, &t.networks),
            Err(_) => Vec::new(),
        };
        discovery::task_table(t.dns.as_ref().map(|d| d.ports), &vips)
    }

    /// Writes task `t`'s table if the view changed it.
    fn apply_table(&self, t: &mut TaskNet) -> Result<(), String> {
        let script = self.table_of(t);
        if script == t.applied {
            return Ok(());
        }
        write_table(&t.ns, &script)?;
        t.applied = script;
        Ok(())
    }

    /// Brings every task's table up to the view: the changed ones, written a few at a
    /// time (each is an `nft` run in the task's namespace) and without holding the
    /// task map.
    fn refresh_tasks(&self) {
        let _tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let work: Vec<(String, PathBuf, String)> = self
            .tasks_lock()
            .iter()
            .filter_map(|(id, t)| {
                let script = self.table_of(t);
                (script != t.applied).then(|| (id.clone(), t.ns.clone(), script))
            })
            .collect();
        if work.is_empty() {
            return;
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let done = Mutex::new(Vec::with_capacity(work.len()));
        std::thread::scope(|s| {
            for _ in 0..TABLE_WRITERS.min(work.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((id, ns, script)) = work.get(i) else {
                        return;
                    };
                    let r = write_table(ns, script);
                    done.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((id, script, r));
                });
            }
        });
        let mut tasks = self.tasks_lock();
        for (id, script, r) in done.into_inner().unwrap_or_else(|p| p.into_inner()) {
            match r {
                Ok(()) => {
                    if let Some(t) = tasks.get_mut(id) {
                        t.applied = script.clone();
                    }
                }
                Err(e) => {
                    tracing::warn!(task = %id, error = %e, "cannot update the task's service table")
                }
            }
        }
    }

    fn reconcile_all(&self) {
        let _guard = self.overlays.lock().unwrap_or_else(|p| p.into_inner());
        for net in super::list_dir(&self.dir.join("overlays")) {
            if let Err(e) = self.reconcile(&net) {
                tracing::warn!(network = %net, error = %e, "cannot update the overlay's remote tasks");
            }
        }
    }

    /// Makes the entries for remote tasks of network `net` those of the managers' view.
    /// Called with `overlays` held.
    fn reconcile(&self, net: &str) -> Result<(), String> {
        let own = self.state().tunnel.map(|t| t.addr());
        let endpoints = self
            .view
            .read()
            .ok()
            .and_then(|v| v.get(net).map(|n| n.endpoints.clone()))
            .unwrap_or_default();
        let Some(own) = own else {
            // Until the engine has the node's tunnel address, local tasks cannot be
            // told from remote ones; the first peer list brings it.
            return Ok(());
        };
        let want: BTreeSet<(Ipv4Addr, Ipv4Addr)> = endpoints
            .iter()
            .filter_map(|e| {
                let ip = e.address.parse::<Ipv4Net>().ok()?.addr();
                let node = e.node_tunnel_addr.parse::<Ipv4Addr>().ok()?;
                (node != own).then_some((ip, node))
            })
            .collect();
        let applied_file = self.dir.join("overlays").join(net).join("remote");
        let ns = overlay_ns(&self.dir, net);
        let mut sock =
            Netlink::open_in(&ns).map_err(io_msg("cannot enter the overlay's namespace"))?;
        if sock
            .link_index("vx")
            .map_err(io_msg("cannot read the overlay's links"))?
            .is_none()
        {
            // The engine was restarted: its link, and the VXLAN device on it, are new.
            let vni: u32 = std::fs::read_to_string(self.dir.join("overlays").join(net).join("vni"))
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or("the overlay's VNI is not recorded")?;
            add_vx(&ns, vni, own)
                .map_err(io_msg("cannot make the overlay's VXLAN device again"))?;
            let _ = std::fs::remove_file(&applied_file);
        }
        let have: BTreeSet<(Ipv4Addr, Ipv4Addr)> = std::fs::read_to_string(&applied_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (a, b) = l.split_once(' ')?;
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .collect();
        if want == have {
            return Ok(());
        }
        let vx = sock
            .link_index("vx")
            .map_err(io_msg("cannot read the overlay's links"))?
            .ok_or("the overlay has no VXLAN device")?;
        for (ip, node) in have.difference(&want) {
            sock.del_neighbour_and_fdb(vx, *ip, &mac_of(*ip), *node)
                .map_err(io_msg("cannot remove a remote task's entries"))?;
        }
        for (ip, node) in want.difference(&have) {
            sock.set_neighbour(vx, *ip, &mac_of(*ip))
                .map_err(io_msg("cannot add a remote task's neighbour entry"))?;
            sock.set_fdb(vx, &mac_of(*ip), *node)
                .map_err(io_msg("cannot add a remote task's forwarding entry"))?;
        }
        let text: String = want.iter().map(|(a, b)| format!("{a} {b}\n")).collect();
        super::write_file(&applied_file, &text)
    }

    /// The namespace of overlay network `net` on this node, made if it is not there,
    /// and the index of its bridge there. Fails (the task is rejected) while the
    /// encrypted engine does not run: never plaintext.
    pub fn ensure_overlay(&self, net: &Network) -> Result<(PathBuf, u32), String> {
        let tunnel = self.wait_engine()?;
        let _guard = self.overlays.lock().unwrap_or_else(|p| p.into_inner());
        let path = overlay_ns(&self.dir, &net.id);
        if let Ok(mut s) = Netlink::open_in(&path) {
            if let Ok(Some(br)) = s.link_index("br0") {
                return Ok((path, br));
            }
        }
        let name = net.spec.as_ref().map_or("", |s| s.name.as_str());
        let subnet: Ipv4Net = net
            .subnet
            .parse()
            .map_err(|_| format!("network {name} has no valid subnet ({:?})", net.subnet))?;
        let gateway: Ipv4Addr = net
            .gateway
            .split('/')
            .next()
            .unwrap_or_default()
            .parse()
            .map_err(|_| format!("network {name} has no valid gateway ({:?})", net.gateway))?;
        let gateway = Ipv4Net::new(gateway, subnet.prefix_len()).map_err(|e| e.to_string())?;
        let dir = path.parent().unwrap_or(&self.dir).to_path_buf();
        let _ = remove_ns(&path);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io_msg("cannot create the overlay's directory"))?;
        super::write_file(&dir.join("vni"), &format!("{}\n", net.vni))?;
        let made = make_overlay_ns(&path, gateway)
            .and_then(|br| add_vx(&path, net.vni, tunnel.addr()).map(|()| br));
        let br = made.map_err(|e| {
            let _ = remove_ns(&path);
            let _ = std::fs::remove_dir_all(&dir);
            format!("cannot set up overlay network {name} on this node: {e}")
        })?;
        tracing::info!(network = %name, vni = net.vni, "overlay network set up on this node");
        if let Err(e) = self.reconcile(&net.id) {
            tracing::warn!(network = %name, error = %e, "cannot add the overlay's remote tasks");
        }
        Ok((path, br))
    }

    /// Removes overlay network `net`'s namespace (its bridge and VXLAN go with it)
    /// unless `in_use` says a task here still uses it.
    pub fn remove_overlay_unless(&self, net: &str, in_use: impl Fn(&str) -> bool) {
        let _guard = self.overlays.lock().unwrap_or_else(|p| p.into_inner());
        if in_use(net) {
            return;
        }
        let path = overlay_ns(&self.dir, net);
        // The VXLAN device goes first, at once: a namespace is torn down by the kernel
        // some time after its last reference goes, and until then its VXLAN device
        // would hold the network's VNI on the node's tunnel socket, so a task of the
        // same network starting here meanwhile could not make a new one ("File
        // exists").
        if let Ok(mut nl) = Netlink::open_in(&path) {
            if let Err(e) = nl.del_link("vx") {
                tracing::warn!(network = %net, error = %e, "cannot remove the overlay's VXLAN device");
            }
        }
        if let Err(e) = remove_ns(&path) {
            tracing::warn!(network = %net, error = %e, "cannot remove the overlay's namespace");
            return;
        }
        let _ = std::fs::remove_dir_all(path.parent().unwrap_or(&path));
    }

    /// Stops the data plane (the node left its cluster): the engine, its link and the
    /// guard. Overlay namespaces went with the tasks.
    pub fn shutdown(&self) {
        wg::stop_helper(&self.state_dir);
        kernelwg::remove_link();
        let _ = super::apply_nft(&format!("delete table inet {GUARD_TABLE}\n"));
        let _ = super::apply_nft(&format!("delete table ip {INGRESS_TABLE}\n"));
        *self.published.lock().unwrap_or_else(|p| p.into_inner()) = Default::default();
        self.tasks_lock().clear();
        if let Ok(mut v) = self.view.write() {
            v.clear();
        }
        let mut s = self.state();
        *s = State::default();
        self.changed.notify_all();
    }

    /// The overlay networks this node has a namespace for.
    pub fn overlays(&self) -> Vec<String> {
        super::list_dir(&self.dir.join("overlays"))
    }
}

/// The resolvers a task's DNS server forwards other names to: the node's (as a task
/// on the bridge has them), or Docker's public fallback when the node has none.
fn upstreams() -> Vec<Ipv4Addr> {
    let conf = super::node_resolv_conf();
    let mut out: Vec<Ipv4Addr> = super::nameservers(&conf)
        .filter_map(|s| s.parse().ok())
        .collect();
    if out.is_empty() {
        out = vec![Ipv4Addr::new(8, 8, 8, 8), Ipv4Addr::new(8, 8, 4, 4)];
    }
    out
}

/// Replaces the service table in the task namespace `ns`.
fn write_table(ns: &Path, script: &str) -> Result<(), String> {
    discovery::in_netns(ns, || {
        super::apply_nft(script).map_err(std::io::Error::other)
    })
    .map_err(io_msg("cannot write the task's service table"))
}

fn remove_ns(path: &Path) -> Result<(), String> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::EINVAL) => Ok(()),
        Err(e) => Err(format!("cannot unmount {}: {e}", path.display())),
    }
}

/// Makes an overlay namespace at `path` with `br0` (the gateway address) in it.
/// Returns `br0`'s index.
fn make_overlay_ns(path: &Path, gateway: Ipv4Net) -> std::io::Result<u32> {
    std::thread::scope(|s| {
        s.spawn(move || -> std::io::Result<u32> {
            let step = |what: &'static str| {
                move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"))
            };
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| step("unshare")(e.into()))?;
            super::bind_thread_netns(path).map_err(step("bind-mount the namespace"))?;
            let mut inner =
                Netlink::open().map_err(step("open a netlink socket in the namespace"))?;
            inner
                .set_link(LinkUnspec::new_with_index(1).up().build())
                .map_err(step("bring lo up"))?;
            inner
                .add_link(LinkBridge::new("br0").build())
                .map_err(step("create the bridge"))?;
            let br = inner
                .link_index("br0")
                .map_err(step("find the bridge"))?
                .ok_or_else(|| std::io::Error::other("the bridge vanished"))?;
            inner
                .add_address(br, gateway.addr(), gateway.prefix_len())
                .map_err(step("give the bridge its address"))?;
            inner
                .set_link(LinkUnspec::new_with_index(br).up().build())
                .map_err(step("bring the bridge up"))?;
            Ok(br)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
    })
}

/// Adds `vx` to the overlay namespace at `path`, in its bridge: made from the node's
/// namespace, so its socket stays there, bound to the tunnel address and sending
/// through `shoal-wg` (whose going takes `vx` with it: a restarted engine needs it
/// made again).
fn add_vx(path: &Path, vni: u32, tunnel: Ipv4Addr) -> std::io::Result<()> {
    let step = |what: &'static str| {
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"))
    };
    let mut node = Netlink::open()?;
    let wg_index = node
        .link_index(wg::LINK)?
        .ok_or_else(|| std::io::Error::other(format!("{} is missing", wg::LINK)))?;
    let ns = std::fs::File::open(path)?;
    let vx = LinkVxlan::new("vx", vni)
        .dev(wg_index)
        .local(tunnel)
        .port(VXLAN_PORT)
        .learning(false)
        .proxy(true)
        .setns_by_fd(ns.as_raw_fd())
        .build();
    // A VXLAN device of a namespace the kernel has not finished tearing down (one
    // removed without its device first, by an older daemon or a crash) holds the VNI
    // for a moment: wait for it, up to 2 s.
    let mut tries = 0;
    loop {
        match node.add_link(vx.clone()) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 40 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => break r.map_err(step("create the VXLAN device"))?,
        }
    }
    let mut inner = Netlink::open_in(path)?;
    let br = inner
        .link_index("br0")?
        .ok_or_else(|| std::io::Error::other("the overlay has no bridge"))?;
    let vx = inner
        .link_index("vx")
        .map_err(step("find the VXLAN device"))?
        .ok_or_else(|| std::io::Error::other("the VXLAN device did not arrive"))?;
    inner
        .set_link(
            LinkUnspec::new_with_index(vx)
                .controller(br)
                .mtu(TASK_MTU)
                .up()
                .build(),
        )
        .map_err(step("put the VXLAN device in the bridge"))
}

/// The nftables table of published ports, in the node's namespace.
pub const INGRESS_TABLE: &str = "shoal_ingress";

/// The ingress table for `published`, on the node whose tunnel address is `own`;
/// `local` gives the bridge address of a task of this node.
pub fn ingress_table(
    own: Ipv4Addr,
    published: &[PublishedPort],
    local: impl Fn(&str) -> Option<Ipv4Addr>,
) -> String {
    let wg = wg::LINK;
    let map = |to: &[(Ipv4Addr, u32)]| -> String {
        let entries: Vec<String> = to
            .iter()
            .enumerate()
            .map(|(i, (ip, port))| format!("{i} : {ip} . {port}"))
            .collect();
        format!(
            "dnat ip to numgen random mod {} map {{ {} }}",
            to.len(),
            entries.join(", ")
        )
    };
    let (mut pre, mut out) = (String::new(), String::new());
    for p in published {
        let Some(port) = &p.port else { continue };
        let proto = if port.protocol == "udp" { "udp" } else { "tcp" };
        let (published, target) = (port.published, port.target);
        let mut mine = Vec::new();
        let mut all = Vec::new();
        for task in &p.tasks {
            if task.node_tunnel_addr == own.to_string() {
                if let Some(ip) = local(&task.task_id) {
                    mine.push((ip, target));
                    all.push((ip, target));
                }
            } else if let Ok(ip) = task.node_tunnel_addr.parse::<Ipv4Addr>() {
                all.push((ip, published));
            }
        }
        let front = if port.mode == "host" { &mine } else { &all };
        let m = format!("{proto} dport {published}");
        if !front.is_empty() {
            pre.push_str(&format!(
                "\t\tiifname != \"{wg}\" fib daddr type local {m} {}\n",
                map(front)
            ));
            // The node's own processes too, at localhost:PORT as at its addresses.
            out.push_str(&format!("\t\tfib daddr type local {m} {}\n", map(front)));
        }
        if port.mode != "host" && !mine.is_empty() {
            // Sent on by another node: to a task of this one.
            pre.push_str(&format!(
                "\t\tiifname \"{wg}\" ip daddr {own} {m} {}\n",
                map(&mine)
            ));
        }
    }
    super::ip_table(
        INGRESS_TABLE,
        &[
            ("prerouting", "type nat hook prerouting priority -100", &pre),
            ("output", "type nat hook output priority -100", &out),
            (
                "postrouting",
                "type nat hook postrouting priority 100",
                &format!(
                    "\t\toifname \"{wg}\" ct status dnat masquerade\n\
                     \t\tip saddr 127.0.0.0/8 ct status dnat masquerade\n"
                ),
            ),
        ],
    )
}

/// The guard: VXLAN may enter this node only from `shoal-wg` and leave only through
/// it. Made once; an existing guard (a previous daemon's) is kept with its counters.
fn ensure_guard() -> Result<(), String> {
    let exists = std::process::Command::new("nft")
        .args(["list", "table", "inet", GUARD_TABLE])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if exists {
        return Ok(());
    }
    super::apply_nft(&guard_rules())
}

pub fn guard_rules() -> String {
    let (t, wg, port) = (GUARD_TABLE, wg::LINK, VXLAN_PORT);
    format!(
        "table inet {t} {{\n\
         \tcounter vxlan_in {{ }}\n\
         \tcounter vxlan_out {{ }}\n\
         \tchain prerouting {{\n\
         \t\ttype filter hook prerouting priority -300; policy accept;\n\
         \t\tudp dport {port} iifname != \"{wg}\" fib daddr type local counter name \"vxlan_in\" drop\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority -300; policy accept;\n\
         \t\tudp dport {port} oifname != \"{wg}\" counter name \"vxlan_out\" drop\n\
         \t}}\n\
         }}\n"
    )
}

/// The guard's counters: packets dropped coming in, going out.
fn guard_counters() -> Option<(u64, u64)> {
    let out = std::process::Command::new("nft")
        .args(["list", "counters", "table", "inet", GUARD_TABLE])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| parse_counters(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_counters(text: &str) -> (u64, u64) {
    let (mut name, mut vin, mut vout) = ("", 0, 0);
    for l in text.lines().map(str::trim) {
        if let Some(rest) = l.strip_prefix("counter ") {
            name = rest.split_whitespace().next().unwrap_or("");
        } else if let Some(rest) = l.strip_prefix("packets ") {
            let n = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            match name {
                "vxlan_in" => vin = n,
                "vxlan_out" => vout = n,
                _ => {}
            }
        }
    }
    (vin, vout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_drops_vxlan_off_the_wireguard_link_and_counts_it() {
        let r = guard_rules();
        assert!(r.contains(
            "udp dport 4789 iifname != \"shoal-wg\" fib daddr type local counter name \"vxlan_in\" drop"
        ));
        assert!(
            r.contains("udp dport 4789 oifname != \"shoal-wg\" counter name \"vxlan_out\" drop")
        );
        let listed = "table inet shoal_guard {\n\tcounter vxlan_in {\n\t\tpackets 5 bytes 390\n\t}\n\tcounter vxlan_out {\n\t\tpackets 0 bytes 0\n\t}\n}\n";
        assert_eq!(parse_counters(listed), (5, 0));
        assert_eq!(TASK_MTU, 1370);
    }

    #[test]
    fn published_ports_go_to_local_tasks_directly_and_to_remote_ones_through_the_tunnel() {
        use shoal_proto::dispatcher::PublishedTask;
        use shoal_proto::objects::PortConfig;
        let task = |id: &str, tun: &str| PublishedTask {
            task_id: id.into(),
            node_tunnel_addr: tun.into(),
            ..Default::default()
        };
        let port = |published, target, mode: &str| PortConfig {
            protocol: "tcp".into(),
            published,
            target,
            mode: mode.into(),
        };
        let published = [
            PublishedPort {
                port: Some(port(8080, 80, "ingress")),
                tasks: vec![task("a", "10.255.240.1"), task("b", "10.255.240.2")],
                ..Default::default()
            },
            PublishedPort {
                port: Some(port(9090, 80, "host")),
                tasks: vec![task("c", "10.255.240.2")],
                ..Default::default()
            },
        ];
        let own: Ipv4Addr = "10.255.240.1".parse().unwrap();
        let t = ingress_table(own, &published, |id| {
            (id == "a").then(|| "172.18.0.5".parse().unwrap())
        });
        assert!(t.contains(
            "iifname != \"shoal-wg\" fib daddr type local tcp dport 8080 dnat ip to numgen random mod 2 map { 0 : 172.18.0.5 . 80, 1 : 10.255.240.2 . 8080 }"
        ), "{t}");
        assert!(t.contains(
            "iifname \"shoal-wg\" ip daddr 10.255.240.1 tcp dport 8080 dnat ip to numgen random mod 1 map { 0 : 172.18.0.5 . 80 }"
        ), "{t}");
        assert!(
            !t.contains("dport 9090"),
            "a host-mode port with no task here: {t}"
        );
        assert!(t.contains("oifname \"shoal-wg\" ct status dnat masquerade"));
        // The node's own processes, localhost included, reach the port too.
        assert!(
            t.contains("\t\tfib daddr type local tcp dport 8080 dnat ip to numgen random mod 2"),
            "{t}"
        );
        assert!(t.contains("ip saddr 127.0.0.0/8 ct status dnat masquerade"));
    }
}

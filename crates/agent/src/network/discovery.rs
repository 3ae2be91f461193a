//! Service discovery and load balancing inside every task on an overlay network
//! (reference/networking.md §6.8-6.9), from the managers' view of the networks (no
//! gossip):
//!
//! - A DNS server at 127.0.0.11: the agent binds a UDP socket and a TCP listener on
//!   127.0.0.11 at ports the kernel picks, from a thread inside the task's namespace
//!   (sockets keep the namespace they were made in), and the task's nftables table
//!   sends port 53 there; a container's own server may still bind port 53. It answers
//!   a service's name (and aliases) with its VIP, or with its tasks' addresses under
//!   `--endpoint-mode dnsrr`; `tasks.NAME` with the tasks' addresses; a task's name
//!   (`web.1`, `web.1.<task id>`) with its address. Only the networks the asking task
//!   is on count. Other names go to the node's resolvers, from inside the task's
//!   namespace (so a task on an internal network resolves nothing outside).
//! - VIPs: the same table DNATs connections to a service's VIP to one of its ready
//!   tasks, chosen by `numgen random` (any port: the VIP's port is the task's). There is
//!   no SNAT: the backends see the real client address. A VIP with no ready task
//!   refuses connections at once rather than letting them hang.

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{rdata::A, RData, Record, RecordType};
use shoal_proto::dispatcher::{Endpoint, ServiceVip};
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The address of the embedded DNS server, as in swarm mode.
pub const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
/// The nftables table of a task's namespace.
pub const TASK_TABLE: &str = "shoal_task";
/// TTL of answers: short, as they change with every scale and update.
const TTL: u32 = 1;
/// How long a forwarded query waits for the node's resolvers.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// Forwarded queries in flight per task, at most.
const FORWARD_MAX: usize = 16;
/// Queries one task's DNS server answers at once (UDP datagrams beyond it are dropped,
/// as a busy server drops them; the client retries).
const QUERIES_MAX: usize = 64;
/// TCP connections one task's DNS server holds at once (more are closed at accept).
const TCP_CONNS_MAX: usize = 16;

/// What one network holds, as the managers last said.
#[derive(Clone, Debug, Default)]
pub struct NetView {
    pub endpoints: Vec<Endpoint>,
    pub vips: Vec<ServiceVip>,
}

/// The managers' view of this node's overlay networks, by network ID.
pub type View = Arc<RwLock<HashMap<String, NetView>>>;

fn ip_of(addr: &str) -> Option<Ipv4Addr> {
    addr.split('/').next()?.parse().ok()
}

/// The addresses `name` (lower case, no trailing dot) stands for on `networks`, or
/// None when no service, alias or task there has that name.
pub fn lookup(
    view: &HashMap<String, NetView>,
    networks: &[String],
    name: &str,
) -> Option<Vec<Ipv4Addr>> {
    let mut found = false;
    let mut out = BTreeSet::new();
    let (tasks_of, name) = match name.strip_prefix("tasks.") {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    for net in networks {
        let Some(v) = view.get(net) else { continue };
        let ready = |service_id: &str| -> Vec<Ipv4Addr> {
            v.endpoints
                .iter()
                .filter(|e| e.ready && e.service_id == service_id)
                .filter_map(|e| ip_of(&e.address))
                .collect()
        };
        // A service by its name or an alias of its tasks.
        let mut services: BTreeSet<&str> = v
            .endpoints
            .iter()
            .filter(|e| {
                e.service_name.eq_ignore_ascii_case(name)
                    || e.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
            })
            .map(|e| e.service_id.as_str())
            .collect();
        services.extend(
            v.vips
                .iter()
                .filter(|s| {
                    s.service_name.eq_ignore_ascii_case(name)
                        || s.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
                })
                .map(|s| s.service_id.as_str()),
        );
        for id in services {
            found = true;
            let vip = v.vips.iter().find(|s| s.service_id == id);
            match vip.and_then(|s| ip_of(&s.address)) {
                Some(ip) if !tasks_of => {
                    out.insert(ip);
                }
                _ => out.extend(ready(id)),
            }
        }
        if tasks_of {
            continue;
        }
        // A task by its name, or its name and ID (the container name, in swarm mode).
        for e in &v.endpoints {
            let full = format!("{}.{}", e.task_name, e.task_id);
            if e.task_name.eq_ignore_ascii_case(name) || full.eq_ignore_ascii_case(name) {
                found = true;
                out.extend(ip_of(&e.address));
            }
        }
    }
    found.then(|| out.into_iter().collect())
}

/// The answer to `query` from the view, or None when it is for the node's resolvers.
pub fn answer(
    view: &HashMap<String, NetView>,
    networks: &[String],
    query: &Message,
) -> Option<Message> {
    let q = query.queries().first()?;
    if query.message_type() != MessageType::Query || query.queries().len() != 1 {
        return None;
    }
    let name = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let ips = lookup(view, networks, &name)?;
    let mut r = response_to(query, ResponseCode::NoError);
    r.set_authoritative(true);
    if matches!(q.query_type(), RecordType::A | RecordType::ANY) {
        for ip in ips {
            r.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(ip))));
        }
    }
    Some(r)
}

/// A response to `query` with `code`, repeating its questions, and no answers yet.
fn response_to(query: &Message, code: ResponseCode) -> Message {
    let mut r = Message::new();
    r.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code);
    for q in query.queries() {
        r.add_query(q.clone());
    }
    r
}

/// The ports a task's DNS server listens on, at 127.0.0.11.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DnsPorts {
    pub udp: u16,
    pub tcp: u16,
}

/// The nftables script that makes a task's table: port 53 of 127.0.0.11 to its DNS
/// server, and each VIP of its networks to the VIP's ready tasks (or refused).
pub fn task_table(dns: Option<DnsPorts>, vips: &[(Ipv4Addr, Vec<Ipv4Addr>)]) -> String {
    let mut nat = String::new();
    let mut filter = String::new();
    if let Some(p) = dns {
        nat.push_str(&format!(
            "\t\tip daddr {DNS_ADDR} udp dport 53 dnat to {DNS_ADDR}:{}\n\
             \t\tip daddr {DNS_ADDR} tcp dport 53 dnat to {DNS_ADDR}:{}\n",
            p.udp, p.tcp
        ));
    }
    for (vip, backends) in vips {
        match backends.len() {
            0 => filter.push_str(&format!(
                "\t\tip daddr {vip} meta l4proto tcp reject with tcp reset\n\
                 \t\tip daddr {vip} reject\n"
            )),
            1 => nat.push_str(&format!("\t\tip daddr {vip} dnat to {}\n", backends[0])),
            n => {
                let map: Vec<String> = backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| format!("{i} : {b}"))
                    .collect();
                nat.push_str(&format!(
                    "\t\tip daddr {vip} dnat to numgen random mod {n} map {{ {} }}\n",
                    map.join(", ")
                ));
            }
        }
    }
    super::ip_table(
        TASK_TABLE,
        &[
            ("output", "type nat hook output priority -100", &nat),
            ("refuse", "type filter hook output priority 0", &filter),
        ],
    )
}

/// The VIPs of `networks` with their ready tasks' addresses, for [`task_table`].
pub fn vips_of(
    view: &HashMap<String, NetView>,
    networks: &[String],
) -> Vec<(Ipv4Addr, Vec<Ipv4Addr>)> {
    let mut out = Vec::new();
    for net in networks {
        let Some(v) = view.get(net) else { continue };
        for s in &v.vips {
            let Some(vip) = ip_of(&s.address) else {
                continue;
            };
            let backends: Vec<Ipv4Addr> = v
                .endpoints
                .iter()
                .filter(|e| e.ready && e.service_id == s.service_id)
                .filter_map(|e| ip_of(&e.address))
                .collect();
            out.push((vip, backends));
        }
    }
    out
}

/// Runs `f` on a thread of its own inside the network namespace at `ns`.
pub fn in_netns<T: Send>(
    ns: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    let file = std::fs::File::open(ns)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
    })
}

/// A task's DNS server: runs until `stop` is cancelled.
pub struct DnsServer {
    pub ports: DnsPorts,
    stop: CancellationToken,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts the DNS server of the task whose namespace is `ns`, on `networks`, answering
/// from `view` and forwarding to `upstreams`. Needs a tokio runtime (`rt`).
pub fn start(
    rt: &tokio::runtime::Handle,
    ns: &Path,
    networks: Vec<String>,
    view: View,
    upstreams: Vec<Ipv4Addr>,
) -> std::io::Result<DnsServer> {
    let (udp, tcp) = in_netns(ns, || {
        let udp = std::net::UdpSocket::bind((DNS_ADDR, 0))?;
        let tcp = std::net::TcpListener::bind((DNS_ADDR, 0))?;
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        Ok((udp, tcp))
    })?;
    let ports = DnsPorts {
        udp: udp.local_addr()?.port(),
        tcp: tcp.local_addr()?.port(),
    };
    let stop = CancellationToken::new();
    let server = Arc::new(Server {
        ns: ns.to_path_buf(),
        networks,
        view,
        upstreams,
        forwarding: tokio::sync::Semaphore::new(FORWARD_MAX),
        queries: Arc::new(tokio::sync::Semaphore::new(QUERIES_MAX)),
        conns: Arc::new(tokio::sync::Semaphore::new(TCP_CONNS_MAX)),
    });
    let _guard = rt.enter();
    let udp = tokio::net::UdpSocket::from_std(udp)?;
    let tcp = tokio::net::TcpListener::from_std(tcp)?;
    rt.spawn(serve_udp(server.clone(), Arc::new(udp), stop.clone()));
    rt.spawn(serve_tcp(server, tcp, stop.clone()));
    Ok(DnsServer { ports, stop })
}

struct Server {
    ns: PathBuf,
    networks: Vec<String>,
    view: View,
    upstreams: Vec<Ipv4Addr>,
    forwarding: tokio::sync::Semaphore,
    /// Bounds what a container can make the daemon hold: queries in flight and open TCP
    /// connections.
    queries: Arc<tokio::sync::Semaphore>,
    conns: Arc<tokio::sync::Semaphore>,
}

impl Server {
    /// The answer to one query (wire format), or None to say nothing.
    async fn handle(&self, query: &[u8]) -> Option<Vec<u8>> {
        let msg = Message::from_vec(query).ok()?;
        let local = {
            let view = self.view.read().ok()?;
            answer(&view, &self.networks, &msg)
        };
        let reply = match local {
            Some(r) => r,
            None => match self.forward(query.to_vec()).await {
                Some(bytes) => return Some(bytes),
                None => response_to(&msg, ResponseCode::ServFail),
            },
        };
        reply.to_vec().ok()
    }

    /// Asks the node's resolvers, from a socket inside the task's namespace.
    async fn forward(&self, query: Vec<u8>) -> Option<Vec<u8>> {
        let _permit = self.forwarding.try_acquire().ok()?;
        let (ns, upstreams) = (self.ns.clone(), self.upstreams.clone());
        tokio::task::spawn_blocking(move || {
            in_netns(&ns, || {
                let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
                s.set_read_timeout(Some(FORWARD_TIMEOUT))?;
                for up in &upstreams {
                    if s.send_to(&query, (*up, 53)).is_err() {
                        continue;
                    }
                    let mut buf = vec![0u8; 4096];
                    while let Ok((n, from)) = s.recv_from(&mut buf) {
                        // The answer to this query, from the server asked.
                        if from.ip() == *up && n >= 2 && buf[..2] == query[..2] {
                            buf.truncate(n);
                            return Ok(Some(buf));
                        }
                    }
                }
                Ok(None)
            })
            .ok()
            .flatten()
        })
        .await
        .ok()
        .flatten()
    }
}

async fn serve_udp(server: Arc<Server>, sock: Arc<tokio::net::UdpSocket>, stop: CancellationToken) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = tokio::select! {
            _ = stop.cancelled() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let Ok(permit) = server.queries.clone().try_acquire_owned() else {
            continue;
        };
        let query = buf[..n].to_vec();
        let (server, sock) = (server.clone(), sock.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(reply) = server.handle(&query).await {
                let _ = sock.send_to(&reply, from).await;
            }
        });
    }
}

async fn serve_tcp(
    server: Arc<Server>,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut conn, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let Ok(permit) = server.conns.clone().try_acquire_owned() else {
            continue;
        };
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                let query = async {
                    let len = conn.read_u16().await.ok()? as usize;
                    let mut q = vec![0u8; len];
                    conn.read_exact(&mut q).await.ok()?;
                    Some(q)
                };
                let query = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => return,
                    q = query => match q { Some(q) => q, None => return },
                };
                let Some(reply) = server.handle(&query).await else {
                    return;
                };
                let Ok(len) = u16::try_from(reply.len()) else {
                    return;
                };
                if conn.write_u16(len).await.is_err() || conn.write_all(&reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(id: &str, svc: &str, name: &str, addr: &str, ready: bool, aliases: &[&str]) -> Endpoint {
        Endpoint {
            task_id: id.into(),
            service_id: format!("{svc}-id"),
            service_name: svc.into(),
            task_name: name.into(),
            address: addr.into(),
            ready,
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }
    }

    fn view() -> HashMap<String, NetView> {
        let mut v = HashMap::new();
        v.insert(
            "front".to_string(),
            NetView {
                endpoints: vec![
                    ep("t1", "web", "web.1", "10.0.1.2/24", true, &["www"]),
                    ep("t2", "web", "web.2", "10.0.1.3/24", true, &["www"]),
                    ep("t3", "web", "web.3", "10.0.1.4/24", false, &["www"]),
                    ep("t4", "db", "db.1", "10.0.1.5/24", true, &[]),
                ],
                vips: vec![ServiceVip {
                    service_id: "web-id".into(),
                    service_name: "web".into(),
                    address: "10.0.1.250".into(),
                    aliases: vec!["www".into()],
                }],
            },
        );
        v.insert(
            "back".to_string(),
            NetView {
                endpoints: vec![ep("t9", "secret", "secret.1", "10.0.2.2/24", true, &[])],
                vips: vec![],
            },
        );
        v
    }

    #[test]
    fn names_resolve_on_the_tasks_own_networks_only() {
        let v = view();
        let front = ["front".to_string()];
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            lookup(&v, &front, "web"),
            Some(vec![ip("10.0.1.250")]),
            "the VIP"
        );
        assert_eq!(
            lookup(&v, &front, "www"),
            Some(vec![ip("10.0.1.250")]),
            "an alias"
        );
        assert_eq!(
            lookup(&v, &front, "tasks.web"),
            Some(vec![ip("10.0.1.2"), ip("10.0.1.3")]),
            "ready tasks only"
        );
        assert_eq!(
            lookup(&v, &front, "db"),
            Some(vec![ip("10.0.1.5")]),
            "dnsrr: task IPs"
        );
        assert_eq!(lookup(&v, &front, "web.2"), Some(vec![ip("10.0.1.3")]));
        assert_eq!(lookup(&v, &front, "web.3.t3"), Some(vec![ip("10.0.1.4")]));
        assert_eq!(
            lookup(&v, &front, "secret"),
            None,
            "another network's service"
        );
        assert_eq!(lookup(&v, &front, "example.com"), None);
        assert_eq!(
            lookup(&v, &["back".to_string()], "secret"),
            Some(vec![ip("10.0.2.2")])
        );
    }

    #[test]
    fn the_task_table_sends_dns_to_its_server_and_spreads_vips() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let t = task_table(
            Some(DnsPorts {
                udp: 40000,
                tcp: 40001,
            }),
            &[
                (ip("10.0.1.250"), vec![ip("10.0.1.2"), ip("10.0.1.3")]),
                (ip("10.0.1.251"), vec![]),
                (ip("10.0.1.252"), vec![ip("10.0.1.9")]),
            ],
        );
        assert!(t.contains("ip daddr 127.0.0.11 udp dport 53 dnat to 127.0.0.11:40000"));
        assert!(t.contains("ip daddr 127.0.0.11 tcp dport 53 dnat to 127.0.0.11:40001"));
        assert!(t.contains(
            "ip daddr 10.0.1.250 dnat to numgen random mod 2 map { 0 : 10.0.1.2, 1 : 10.0.1.3 }"
        ));
        assert!(t.contains("ip daddr 10.0.1.251 meta l4proto tcp reject with tcp reset"));
        assert!(t.contains("ip daddr 10.0.1.252 dnat to 10.0.1.9"));
    }

    #[test]
    fn answers_carry_the_query_id_and_a_records() {
        use hickory_proto::op::Query;
        use hickory_proto::rr::Name;
        let mut q = Message::new();
        q.set_id(4242).add_query(Query::query(
            Name::from_ascii("tasks.web.").unwrap(),
            RecordType::A,
        ));
        let r = answer(&view(), &["front".to_string()], &q).unwrap();
        assert_eq!(r.id(), 4242);
        assert_eq!(r.answers().len(), 2);
        let mut q6 = Message::new();
        q6.add_query(Query::query(
            Name::from_ascii("web.").unwrap(),
            RecordType::AAAA,
        ));
        let r = answer(&view(), &["front".to_string()], &q6).unwrap();
        assert_eq!(r.response_code(), ResponseCode::NoError);
        assert!(
            r.answers().is_empty(),
            "a name we know, with no IPv6 address"
        );
        let mut other = Message::new();
        other.add_query(Query::query(
            Name::from_ascii("example.com.").unwrap(),
            RecordType::A,
        ));
        assert!(answer(&view(), &["front".to_string()], &other).is_none());
    }
}

//! Issue #12's discovery figures: DNS answer time in a task, the round trip through a
//! service's VIP across nodes, and how long a `service scale` takes to reach the names
//! and VIPs on every node. Clients and echo servers are threads of this process that
//! have entered a task's network namespace: they see exactly what the task's processes
//! see (its 127.0.0.11, its nftables VIP table, its legs), with no tool of a container
//! image between the figure and the network.

use anyhow::{bail, Context, Result};
use shoal_testbed::{wait_for, Testbed};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

const DNS: &str = "127.0.0.11:53";
const ECHO_PORT: u16 = 7;

/// Running tasks of `service`: (task ID, node index).
fn tasks(tb: &Testbed, service: &str) -> Result<Vec<(String, usize)>> {
    let out = tb.cli_ok(0, &["service", "ps", "--format", "json", service])?;
    let mut v = Vec::new();
    for l in out.lines() {
        let p: serde_json::Value = serde_json::from_str(l)?;
        if p["CurrentState"]
            .as_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("running"))
        {
            let id = p["ID"].as_str().context("ID")?.to_string();
            let node = tb
                .nodes
                .iter()
                .position(|n| p["Node"] == n.name.as_str())
                .context("node")?;
            v.push((id, node));
        }
    }
    Ok(v)
}

/// The network namespace of task `id`'s container on node `i`.
fn task_ns(tb: &Testbed, i: usize, id: &str) -> Result<String> {
    let pid = wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(
            tb.nodes[i]
                .state_dir
                .join("containers")
                .join(id)
                .join("pid"),
        )
        .ok()
    })
    .with_context(|| format!("task {id} has no container"))?;
    Ok(format!("/proc/{}/ns/net", pid.trim()))
}

/// Runs `f` on a thread inside the namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let ns = std::fs::File::open(ns).with_context(|| format!("cannot open {ns}"))?;
    std::thread::spawn(move || -> Result<T> {
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in the task's namespace panicked"))?
}

/// A DNS query for `name`'s A records.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root; type A; class IN
    q
}

/// Asks 127.0.0.11 for `name` and returns the A records' addresses.
fn resolve(sock: &UdpSocket, id: u16, name: &str) -> Result<Vec<Ipv4Addr>> {
    sock.send(&query(id, name))?;
    let mut buf = [0u8; 4096];
    loop {
        let n = sock.recv(&mut buf)?;
        if n < 12 || u16::from_be_bytes([buf[0], buf[1]]) != id {
            continue;
        }
        return Ok(a_records(&buf[..n]));
    }
}

/// The addresses in a response's A records (answers only; names are compressed
/// pointers or labels).
fn a_records(msg: &[u8]) -> Vec<Ipv4Addr> {
    let count = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]) as usize;
    let (qd, an) = (count(4), count(6));
    let skip_name = |mut at: usize| -> Option<usize> {
        loop {
            let len = *msg.get(at)? as usize;
            if len == 0 {
                return Some(at + 1);
            }
            if len & 0xc0 == 0xc0 {
                return Some(at + 2);
            }
            at += 1 + len;
        }
    };
    let mut at = 12;
    let mut out = Vec::new();
    for _ in 0..qd {
        let Some(end) = skip_name(at) else {
            return out;
        };
        at = end + 4;
    }
    for _ in 0..an {
        let Some(end) = skip_name(at) else {
            return out;
        };
        let Some(fixed) = msg.get(end..end + 10) else {
            return out;
        };
        let (kind, len) = (
            u16::from_be_bytes([fixed[0], fixed[1]]),
            u16::from_be_bytes([fixed[8], fixed[9]]) as usize,
        );
        if kind == 1 && len == 4 {
            if let Some(ip) = msg.get(end + 10..end + 14) {
                out.push(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]));
            }
        }
        at = end + 10 + len;
    }
    out
}

/// An echo server on port 7 in the namespace `ns`, for the rest of the bench.
fn echo_server(ns: &str) -> Result<()> {
    let listener = in_ns(ns, || TcpListener::bind(("0.0.0.0", ECHO_PORT)))??;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let _ = conn.set_nodelay(true);
                let mut buf = [0u8; 512];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The number of backends task `ns`'s VIP table gives `vip` (0 when it has no line).
fn vip_backends(ns: &str, vip: Ipv4Addr) -> usize {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={ns}"))
        .args(["nft", "list", "table", "ip", "shoal_task"])
        .output();
    let Ok(out) = out else { return 0 };
    let text = String::from_utf8_lossy(&out.stdout);
    let needle = format!("ip daddr {vip} ");
    let Some(line) = text
        .lines()
        .find(|l| l.contains(&needle) && l.contains("dnat"))
    else {
        return 0;
    };
    match line.split("mod ").nth(1) {
        Some(rest) => rest
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
        None => 1,
    }
}

pub fn bench(shoal: &std::path::Path) -> Result<String> {
    const QUERIES: usize = 2000;
    const ROUND_TRIPS: usize = 2000;
    const CONNECTS: usize = 500;
    const BIG: usize = 100;
    let tb = super::services_cluster(shoal, "1s")?;
    for node in ["node2", "node3"] {
        wait_for(Duration::from_secs(30), || {
            let o = tb.cli(0, &["node", "inspect", node]);
            o.stdout.contains("\"Engine\": \"").then_some(())
        })
        .with_context(|| format!("{node}'s WireGuard engine never ran"))?;
    }
    tb.cli_ok(0, &["network", "create", "benchnet"])?;
    let sleep = ["busybox", "sleep", "1000000"];
    let create = |name: &str, extra: &[&str]| -> Result<()> {
        let mut args = vec!["service", "create", "--name", name, "--network", "benchnet"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&sleep);
        tb.cli_ok(0, &args).map(|_| ())
    };
    // Two echo backends on node1 and node3, a client on node2, and one client task on
    // every node for the scale figure.
    create(
        "echo",
        &["--replicas", "2", "--constraint", "node.hostname!=node2"],
    )?;
    create("client", &["--constraint", "node.hostname==node2"])?;
    create("probe", &["--mode", "global"])?;
    let backends = tasks(&tb, "echo")?;
    if backends.len() != 2 {
        bail!("echo has {} tasks, not 2", backends.len());
    }
    for (id, i) in &backends {
        echo_server(&task_ns(&tb, *i, id)?)?;
    }
    let (client, ci) = tasks(&tb, "client")?.remove(0);
    let client_ns = task_ns(&tb, ci, &client)?;

    // DNS answer time, and the VIP from the answer.
    let (dns, vip) = in_ns(&client_ns, move || -> Result<(Vec<Duration>, Ipv4Addr)> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.connect(DNS)?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        let vip = *resolve(&sock, 1, "echo")?
            .first()
            .context("no VIP for echo")?;
        let mut times = Vec::with_capacity(QUERIES);
        for i in 0..QUERIES {
            let name = if i % 2 == 0 { "echo" } else { "tasks.echo" };
            let t = Instant::now();
            let ips = resolve(&sock, i as u16 + 2, name)?;
            times.push(t.elapsed());
            if ips.is_empty() {
                bail!("no answer for {name}");
            }
        }
        Ok((times, vip))
    })??;

    // Round trips through the VIP: on one connection, and a new connection each.
    let (rtt, connects) = in_ns(
        &client_ns,
        move || -> Result<(Vec<Duration>, Vec<Duration>)> {
            let to = SocketAddr::from((vip, ECHO_PORT));
            let mut conn = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
            conn.set_nodelay(true)?;
            let (msg, mut back) = ([7u8; 64], [0u8; 64]);
            let mut rtt = Vec::with_capacity(ROUND_TRIPS);
            for _ in 0..ROUND_TRIPS {
                let t = Instant::now();
                conn.write_all(&msg)?;
                conn.read_exact(&mut back)?;
                rtt.push(t.elapsed());
            }
            let mut connects = Vec::with_capacity(CONNECTS);
            for _ in 0..CONNECTS {
                let t = Instant::now();
                let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
                c.set_nodelay(true)?;
                c.write_all(&msg)?;
                c.read_exact(&mut back)?;
                connects.push(t.elapsed());
            }
            Ok((rtt, connects))
        },
    )??;

    // Scale: 100 tasks, then down to 50 and up to 100 again; the time from the
    // command until every node's probe task resolves tasks.big to the new set and its
    // VIP table has as many backends.
    create("big", &["--replicas", &BIG.to_string()])?;
    let probes: Vec<String> = tasks(&tb, "probe")?
        .into_iter()
        .map(|(id, i)| task_ns(&tb, i, &id))
        .collect::<Result<_>>()?;
    if probes.len() != 3 {
        bail!("{} probe tasks, not 3", probes.len());
    }
    let big_vip = in_ns(&probes[0], || -> Result<Ipv4Addr> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.connect(DNS)?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        resolve(&sock, 1, "big")?.first().copied().context("no VIP")
    })??;
    let mut scale_rows = Vec::new();
    for target in [BIG / 2, BIG, BIG / 2, BIG] {
        let start = Instant::now();
        let pollers: Vec<_> = probes
            .iter()
            .map(|ns| {
                let ns = ns.clone();
                std::thread::spawn(move || -> Result<(Duration, Duration)> {
                    let dns = in_ns(&ns, move || -> Result<Duration> {
                        let sock = UdpSocket::bind("127.0.0.1:0")?;
                        sock.connect(DNS)?;
                        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
                        let mut id = 0u16;
                        while start.elapsed() < Duration::from_secs(120) {
                            id = id.wrapping_add(1);
                            if resolve(&sock, id, "tasks.big")?.len() == target {
                                return Ok(start.elapsed());
                            }
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        bail!("tasks.big never had {target} addresses")
                    })??;
                    while start.elapsed() < Duration::from_secs(120) {
                        if vip_backends(&ns, big_vip) == target {
                            return Ok((dns, start.elapsed()));
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    bail!("the VIP never had {target} backends")
                })
            })
            .collect();
        let pair = format!("big={target}");
        tb.cli_ok(0, &["service", "scale", "--detach", &pair])?;
        let mut per_node = Vec::new();
        for p in pollers {
            per_node.push(
                p.join()
                    .map_err(|_| anyhow::anyhow!("a poller panicked"))??,
            );
        }
        let dns_all = per_node.iter().map(|p| p.0).max().unwrap_or_default();
        let vip_all = per_node.iter().map(|p| p.1).max().unwrap_or_default();
        scale_rows.push((target, ms(dns_all), ms(vip_all)));
    }
    drop(tb);

    let q = |v: &[Duration], f: f64| {
        let mut v: Vec<f64> = v.iter().copied().map(ms).collect();
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * f).round() as usize]
    };
    let mut md = String::from("\n## Issue #12: service discovery and VIPs\n\n");
    md.push_str(&format!(
        "A 3-node cluster on one overlay network; `echo` has 2 tasks (node1, node3) with an \
         echo server on port 7, `client` one task on node2. The bench's threads enter the \
         client task's network namespace (what its processes see: its 127.0.0.11, its VIP \
         table, its legs) and the echo tasks' namespaces (the servers), milliseconds:\n\n\
         | measure | p50 | p99 | samples |\n|---|---|---|---|\n\
         | DNS answer in a task (`echo` and `tasks.echo` alternately, UDP) | {:.3} | {:.3} | {QUERIES} |\n\
         | VIP round trip across nodes, 64 bytes each way on one TCP connection | {:.3} | {:.3} | {ROUND_TRIPS} |\n\
         | VIP round trip across nodes with a new TCP connection each (connect + 64 bytes each way) | {:.3} | {:.3} | {CONNECTS} |\n\n",
        q(&dns, 0.5), q(&dns, 0.99),
        q(&rtt, 0.5), q(&rtt, 0.99),
        q(&connects, 0.5), q(&connects, 0.99),
    ));
    md.push_str(&format!(
        "`service scale --detach big=N` with `big` at {BIG} tasks over the 3 nodes: time from the \
         command until a task on *every* node resolves `tasks.big` to N addresses, and until \
         its VIP table spreads `big`'s VIP over N backends (polled every 5 ms; scaling up \
         includes starting 50 containers), milliseconds:\n\n\
         | scale | DNS on every node | VIP on every node |\n|---|---|---|\n"
    ));
    let mut from = BIG;
    for (to, dns, vip) in scale_rows {
        md.push_str(&format!("| {from} -> {to} | {dns:.0} | {vip:.0} |\n"));
        from = to;
    }
    md.push_str(
        "\nRerun: `BENCH_ONLY=discovery target/release/shoal-bench target/release/shoal`.\n",
    );
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_records_are_read_from_a_compressed_answer() {
        let mut m = query(9, "tasks.b");
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = 2; // two answers
        for last in [5u8, 6] {
            m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 10, 0, 1, last]);
        }
        assert_eq!(
            a_records(&m),
            vec![Ipv4Addr::new(10, 0, 1, 5), Ipv4Addr::new(10, 0, 1, 6)]
        );
    }
}

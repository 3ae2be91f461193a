//! Task networking (issue #12): every task in a network namespace of its own on its
//! node's bridge, `--network host` for the node's own, and nothing left behind.
//! Real daemons in network namespaces, real containers, real veths and nftables.

mod common;

use common::*;
use shoal_testbed::{wait_for, Testbed};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// A busybox web server on port 8080 serving `tag-<hostname>` at `/`, and the task's
/// /etc files at /hosts, /hostname and /resolv.
const SERVE: &str = "mkdir -p /tmp/w && echo \"$TAG-$(hostname)\" > /tmp/w/index.html \
    && cp /etc/hosts /tmp/w/hosts && cp /etc/hostname /tmp/w/hostname \
    && cp /etc/resolv.conf /tmp/w/resolv && exec httpd -f -p 8080 -h /tmp/w";

/// Running tasks of `service`: (task ID, node index, address without its prefix).
fn running(tb: &Testbed, service: &str) -> Vec<(String, usize, String)> {
    let out = tb
        .cli_ok(0, &["service", "ps", "--format", "json", service])
        .expect("service ps");
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
        .filter_map(|p| {
            let t = task(tb, p["ID"].as_str().unwrap());
            if t["Status"]["State"] != "running" {
                return None;
            }
            let i = tb.nodes.iter().position(|n| p["Node"] == n.name.as_str())?;
            let addr = t["NetworksAttachments"][0]["Addresses"][0]
                .as_str()
                .unwrap_or("")
                .split('/')
                .next()
                .unwrap()
                .to_string();
            Some((t["ID"].as_str().unwrap().to_string(), i, addr))
        })
        .collect()
}

/// `path` from `ip:port`, fetched inside node `i`'s network namespace.
fn fetch(tb: &Testbed, i: usize, ip: &str, port: u16, path: &str) -> Option<String> {
    tb.exec_in(
        i,
        // Not wget's -T: busybox 1.35's wget crashes with it.
        &[
            "timeout",
            "5",
            "busybox",
            "wget",
            "-qO-",
            &format!("http://{ip}:{port}{path}"),
        ],
    )
    .map_err(|e| eprintln!("fetch {ip}:{port}{path} from node{}: {e}", i + 1))
    .ok()
}

/// The host-side veths of tasks in node `i`'s namespace.
fn task_veths(tb: &Testbed, i: usize) -> Vec<String> {
    tb.exec_in(i, &["ip", "-o", "link", "show"])
        .unwrap()
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap().to_string())
        .filter(|n| n.starts_with("vsh"))
        .collect()
}

/// Mounts of node `i`'s daemon that hold tasks' network namespaces.
fn netns_mounts(tb: &Testbed, i: usize) -> usize {
    let pid = tb.nodes[i].pid().expect("daemon runs");
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("/network/tasks/") || l.contains("/network/overlays/"))
        .count()
}

fn two_nodes() -> Testbed {
    let tb = cluster(2, &[]);
    import_busybox(&tb, 0);
    import_busybox(&tb, 1);
    tb
}

#[test]
fn two_services_on_one_port_both_answer_from_their_own_namespaces() {
    let tb = two_nodes();
    for tag in ["A", "B"] {
        tb.cli_ok(
            0,
            &[
                "service",
                "create",
                "--name",
                tag,
                "--mode",
                "global",
                "--env",
                &format!("TAG={tag}"),
                "busybox",
                "sh",
                "-c",
                SERVE,
            ],
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    }
    for tag in ["A", "B"] {
        let tasks = running(&tb, tag);
        assert_eq!(tasks.len(), 2, "one {tag} task per node: {tasks:?}");
        for (id, i, ip) in tasks {
            assert!(ip.starts_with("172."), "{id} has a bridge address: {ip:?}");
            let page = fetch(&tb, i, &ip, 8080, "/")
                .unwrap_or_else(|| panic!("{tag} task {id} at {ip} answers\n{}", tb.all_logs()));
            let hostname = &id[..12];
            assert_eq!(page.trim(), format!("{tag}-{hostname}"));
            let hosts = fetch(&tb, i, &ip, 8080, "/hosts").unwrap();
            assert!(hosts.contains("127.0.0.1\tlocalhost"), "{hosts}");
            assert!(
                hosts.contains(&format!("{ip}\t{hostname}")),
                "/etc/hosts names the task: {hosts}"
            );
            let name = fetch(&tb, i, &ip, 8080, "/hostname").unwrap();
            assert_eq!(name.trim(), hostname);
            let resolv = fetch(&tb, i, &ip, 8080, "/resolv").unwrap();
            assert!(resolv.contains("nameserver "), "{resolv}");
            assert!(!resolv.contains("nameserver 127."), "{resolv}");
        }
    }
    // Nothing listens on the node's own address: the tasks bound only their own.
    for i in 0..2 {
        assert_eq!(fetch(&tb, i, &tb.nodes[i].ip, 8080, "/"), None);
    }
    // Each service's tasks kept running: no restarts.
    let ps = tb.cli_ok(0, &["service", "ps", "-q", "A"]).unwrap();
    assert_eq!(
        ps.split_whitespace().count(),
        2,
        "no task of A was replaced"
    );

    // A task reaches what its node reaches (outbound NAT): a web server on node1's own
    // address, fetched by a job on node2.
    std::fs::write(tb.dir().join("page.txt"), "from node1\n").unwrap();
    tb.exec_in(
        0,
        &[
            "busybox",
            "httpd",
            "-p",
            "9999",
            "-h",
            tb.dir().to_str().unwrap(),
        ],
    )
    .unwrap();
    let url = format!("http://{}:9999/page.txt", tb.nodes[0].ip);
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "out",
            "--mode",
            "replicated-job",
            "--constraint",
            "node.hostname==node2",
            "busybox",
            "wget",
            "-qO-",
            &url,
        ],
    )
    .unwrap_or_else(|e| panic!("a task reaches node1: {e}\n{}", tb.all_logs()));
    let logs = tb.cli_ok(0, &["service", "logs", "out"]).unwrap();
    assert!(logs.contains("from node1"), "{logs}");
}

#[test]
fn the_host_network_is_the_nodes_own() {
    let tb = two_nodes();
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "h",
            "--network",
            "host",
            "--constraint",
            "node.hostname==node2",
            "busybox",
            "httpd",
            "-f",
            "-p",
            "8081",
            "-h",
            "/etc",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    let page = wait_for(T, || fetch(&tb, 1, &tb.nodes[1].ip, 8081, "/passwd"))
        .expect("the node's own address answers");
    assert!(page.contains("root:x:0:0"), "{page}");
    let tasks = running(&tb, "h");
    assert_eq!(tasks[0].2, "", "no address of its own: {tasks:?}");
    let inspect = tb.cli_ok(0, &["service", "inspect", "h"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(
        v[0]["Spec"]["TaskTemplate"]["Networks"][0]["Target"],
        "host"
    );
    assert!(task_veths(&tb, 1).is_empty(), "no veth for a host task");
}

#[test]
fn namespaces_outlive_a_daemon_restart_and_go_with_the_service() {
    let mut tb = two_nodes();
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "2",
            "--constraint",
            "node.hostname==node2",
            "--env",
            "TAG=w",
            "busybox",
            "sh",
            "-c",
            SERVE,
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    let before = running(&tb, "web");
    assert_eq!(before.len(), 2);
    assert_eq!(task_veths(&tb, 1).len(), 2, "a veth per task");
    assert_eq!(netns_mounts(&tb, 1), 2, "a namespace per task");

    // kill -9 of the worker's daemon: the containers, their namespaces and addresses
    // stay, and the restarted daemon re-adopts them.
    tb.kill(1).unwrap();
    tb.start(1).unwrap();
    wait_ready(&tb, 2);
    for (id, i, ip) in &before {
        assert!(
            fetch(&tb, *i, ip, 8080, "/").is_some(),
            "{id} still answers at {ip}"
        );
    }
    let after = wait_for(T, || {
        let r = running(&tb, "web");
        (r.len() == 2 && r.iter().all(|t| !t.2.is_empty())).then_some(r)
    })
    .expect("both tasks running again");
    let mut a: Vec<_> = after.iter().map(|t| (&t.0, &t.2)).collect();
    let mut b: Vec<_> = before.iter().map(|t| (&t.0, &t.2)).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "the same tasks with the same addresses");

    // A new task after the restart gets an address of its own.
    tb.cli_ok(0, &["service", "scale", "web=3"]).unwrap();
    let three = running(&tb, "web");
    let mut ips: Vec<&String> = three.iter().map(|t| &t.2).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3, "three distinct addresses: {three:?}");
    assert_eq!(task_veths(&tb, 1).len(), 3);

    tb.cli_ok(0, &["service", "rm", "web"]).unwrap();
    wait_for(T, || {
        (task_veths(&tb, 1).is_empty()
            && netns_mounts(&tb, 1) == 0
            && tb.processes_named(1, "httpd") == 0)
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "left behind: veths {:?}, {} namespace mounts, {} httpd\n{}",
            task_veths(&tb, 1),
            netns_mounts(&tb, 1),
            tb.processes_named(1, "httpd"),
            tb.all_logs()
        )
    });
    let dir = tb.nodes[1].state_dir.join("network/tasks");
    assert_eq!(
        std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0),
        0,
        "no task network state left in {}",
        dir.display()
    );
}

#[test]
fn unknown_or_contradictory_networks_are_refused() {
    let tb = two_nodes();
    for (args, want) in [
        (vec!["--network", "nosuch"], "network \"nosuch\" not found"),
        (
            vec!["--network", "host", "--network", "host"],
            "network \"host\" is named twice",
        ),
        (
            vec!["--network", "name=host,alias=web"],
            "network \"host\" takes no aliases",
        ),
        (vec!["--network", "alias=web"], "name=NETWORK is missing"),
    ] {
        let mut full = vec!["service", "create", "--name", "bad"];
        full.extend(args.iter());
        full.extend(["busybox", "sleep", "60"]);
        let out = tb.cli(0, &full);
        assert!(!out.success, "{args:?} refused");
        assert!(out.stderr.contains(want), "{args:?}: {}", out.stderr);
    }
    let out = tb.cli(
        0,
        &["task", "run", "--network", "nosuch", "busybox", "true"],
    );
    assert!(!out.success);
    assert!(
        out.stderr.contains("network \"nosuch\" not found"),
        "{}",
        out.stderr
    );
    assert!(
        !tb.cli_ok(0, &["service", "ls"]).unwrap().contains("bad"),
        "nothing was created"
    );
}

fn inspect_network(tb: &Testbed, name: &str) -> serde_json::Value {
    let out = tb.cli_ok(0, &["network", "inspect", name]).unwrap();
    serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone()
}

fn network_names(tb: &Testbed) -> Vec<String> {
    tb.cli_ok(0, &["network", "ls", "--format", "json"])
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["Name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn networks_take_subnets_from_the_pool_and_refuse_overlaps_and_removal_in_use() {
    let tb = testbed(1);
    // A pool that does not fit its mask length is refused, and the node stays free.
    let out = tb.cli(
        0,
        &[
            "init",
            "--default-addr-pool",
            "10.40.0.0/16",
            "--default-addr-pool-mask-length",
            "12",
        ],
    );
    assert!(!out.success);
    assert!(
        out.stderr.contains("does not fit pool 10.40.0.0/16"),
        "{}",
        out.stderr
    );
    tb.init(
        0,
        &[
            "--default-addr-pool",
            "10.40.0.0/16",
            "--default-addr-pool-mask-length",
            "24",
        ],
    )
    .unwrap();
    import_busybox(&tb, 0);

    tb.cli_ok(0, &["network", "create", "a"]).unwrap();
    let a = inspect_network(&tb, "a");
    assert_eq!(a["Driver"], "overlay");
    assert_eq!(a["IPAM"]["Config"][0]["Subnet"], "10.40.0.0/24");
    assert_eq!(a["IPAM"]["Config"][0]["Gateway"], "10.40.0.1");
    assert_eq!(a["VNI"], 4096);
    assert_eq!(a["Encrypted"], true);
    tb.cli_ok(
        0,
        &[
            "network",
            "create",
            "--subnet",
            "10.50.0.0/24",
            "--gateway",
            "10.50.0.254",
            "--attachable",
            "--internal",
            "--opt",
            "mtu=1400",
            "b",
        ],
    )
    .unwrap();
    let b = inspect_network(&tb, "b");
    assert_eq!(b["IPAM"]["Config"][0]["Gateway"], "10.50.0.254");
    assert_eq!(
        (b["Internal"].clone(), b["Attachable"].clone()),
        (true.into(), true.into())
    );
    assert_eq!(b["Options"]["mtu"], "1400");
    assert_eq!(b["VNI"], 4097);
    // The next pool subnet skips what is taken.
    tb.cli_ok(0, &["network", "create", "c"]).unwrap();
    assert_eq!(
        inspect_network(&tb, "c")["IPAM"]["Config"][0]["Subnet"],
        "10.40.1.0/24"
    );
    let mut names = network_names(&tb);
    names.sort();
    assert_eq!(names, ["a", "b", "bridge", "c", "host"]);

    // Bad networks are refused with the reason, and nothing is created.
    let node_net = format!("{}.0/24", tb.nodes[0].ip.rsplit_once('.').unwrap().0);
    for (args, want) in [
        (
            vec!["--subnet", "10.40.0.0/16", "d"],
            "overlaps network \"a\" (10.40.0.0/24)",
        ),
        (
            vec!["--subnet", "10.255.250.0/24", "d"],
            "overlaps the cluster's tunnel network",
        ),
        (
            vec!["--subnet", node_net.as_str(), "d"],
            "holds the address of node node1",
        ),
        (
            vec!["--subnet", "10.60.0.0/24", "--gateway", "10.61.0.1", "d"],
            "not a host address",
        ),
        (vec!["--subnet", "not-a-cidr", "d"], "not an IPv4 CIDR"),
        (vec!["--opt", "encrypted=false", "d"], "always encrypted"),
        (vec!["--driver", "bridge", "d"], "not supported"),
        (vec!["a"], "a network named a already exists"),
        (vec!["host"], "taken by a built-in network"),
    ] {
        let mut full = vec!["network", "create"];
        full.extend(args.iter());
        let out = tb.cli(0, &full);
        assert!(!out.success, "{args:?} refused");
        assert!(out.stderr.contains(want), "{args:?}: {}", out.stderr);
    }
    assert_eq!(network_names(&tb).len(), 5, "nothing was created");

    // A service names a network; the network cannot go while the service uses it.
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "s",
            "--network",
            "name=a,alias=web",
            "busybox",
            "sleep",
            "60",
        ],
    )
    .unwrap();
    let pretty = tb
        .cli_ok(0, &["service", "inspect", "--pretty", "s"])
        .unwrap();
    assert!(pretty.contains("Networks:\ta (aliases: web)"), "{pretty}");
    // The allocator gives tasks their addresses on the network before they are placed:
    // with the only node drained they wait, pending, each with an address of its own.
    tb.cli_ok(0, &["node", "update", "--availability", "drain", "node1"])
        .unwrap();
    tb.cli_ok(0, &["service", "scale", "-d", "s=3"]).unwrap();
    let addrs = wait_for(T, || {
        let ids = tb.cli_ok(0, &["service", "ps", "-q", "s"]).ok()?;
        let mut addrs: Vec<String> = ids
            .split_whitespace()
            .map(|id| task(&tb, id))
            .filter(|t| t["DesiredState"] == "running")
            .filter(|t| t["NetworksAttachments"][0]["Network"] == "a")
            .map(|t| {
                assert_eq!(t["NetworksAttachments"][0]["Aliases"][0], "web");
                t["NetworksAttachments"][0]["Addresses"][0]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        addrs.sort();
        addrs.dedup();
        (addrs.len() == 3).then_some(addrs)
    })
    .unwrap_or_else(|| {
        let ids = tb.cli_ok(0, &["service", "ps", "-q", "s"]).unwrap();
        let first = ids.split_whitespace().next().map(|id| task(&tb, id));
        panic!(
            "addresses for s's tasks: {}\n{first:?}\n{}",
            tb.cli(0, &["service", "ps", "s"]).stdout,
            tb.log(0)
        )
    });
    assert!(
        addrs
            .iter()
            .all(|a| a.starts_with("10.40.0.") && a.ends_with("/24")),
        "{addrs:?}"
    );
    assert!(
        !addrs.contains(&"10.40.0.1/24".to_string()),
        "not the gateway: {addrs:?}"
    );
    tb.cli_ok(0, &["node", "update", "--availability", "active", "node1"])
        .unwrap();
    // A standalone task on an attachable network is allocated and placed the same way.
    let out = tb.cli(0, &["task", "run", "--network", "b", "busybox", "true"]);
    assert!(out.success, "{}\n{}", out.stderr, tb.all_logs());
    let id = out.stdout.trim().to_string();
    let t = task(&tb, &id);
    assert!(
        t["NetworksAttachments"][0]["Addresses"][0]
            .as_str()
            .unwrap()
            .starts_with("10.50.0."),
        "{t}"
    );
    let out = tb.cli(0, &["network", "rm", "a"]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("network a is in use by service s"),
        "{}",
        out.stderr
    );
    assert!(
        network_names(&tb).contains(&"a".to_string()),
        "a is still there"
    );
    // Standalone tasks only attach to attachable networks.
    let out = tb.cli(
        0,
        &["task", "run", "-d", "--network", "a", "busybox", "true"],
    );
    assert!(!out.success);
    assert!(
        out.stderr.contains("network a is not attachable"),
        "{}",
        out.stderr
    );
    // Detaching the service frees the network.
    tb.cli_ok(0, &["service", "update", "-d", "--network-rm", "a", "s"])
        .unwrap();
    tb.cli_ok(0, &["network", "rm", "a", "c"]).unwrap();
    let out = tb.cli(0, &["network", "rm", "host"]);
    assert!(
        !out.success && out.stderr.contains("built-in"),
        "{}",
        out.stderr
    );
    let mut names = network_names(&tb);
    names.sort();
    assert_eq!(names, ["b", "bridge", "host"]);
    // "a" names no network now (it may still be the start of b's random ID).
    let out = tb.cli(0, &["network", "inspect", "a"]);
    if out.success {
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v[0]["Name"], "b", "{}", out.stdout);
    } else {
        assert!(out.stderr.contains("no such network: a"), "{}", out.stderr);
    }
}

/// `node inspect`'s DataPlane of node `i`, seen from node 0.
fn data_plane(tb: &Testbed, i: usize) -> serde_json::Value {
    let out = tb
        .cli_ok(0, &["node", "inspect", &tb.nodes[i].name])
        .unwrap();
    serde_json::from_str::<serde_json::Value>(&out).unwrap()[0]["DataPlane"].clone()
}

#[test]
fn nodes_announce_their_wireguard_keys_and_get_tunnel_addresses() {
    let mut tb = cluster(3, &[]);
    let planes = wait_for(T, || {
        let p: Vec<serde_json::Value> = (0..3).map(|i| data_plane(&tb, i)).collect();
        p.iter()
            .all(|d| d["TunnelAddr"].as_str().is_some_and(|a| !a.is_empty()))
            .then_some(p)
    })
    .unwrap_or_else(|| panic!("tunnel addresses for every node\n{}", tb.all_logs()));
    let mut keys = std::collections::HashSet::new();
    let mut addrs = std::collections::HashSet::new();
    for (i, d) in planes.iter().enumerate() {
        let key = d["PublicKey"].as_str().unwrap();
        assert_eq!(key.len(), 44, "{d}");
        assert!(keys.insert(key.to_string()), "a key of its own: {d}");
        let addr: ipnet::Ipv4Net = d["TunnelAddr"].as_str().unwrap().parse().unwrap();
        assert!(
            "10.255.240.0/20"
                .parse::<ipnet::Ipv4Net>()
                .unwrap()
                .contains(&addr),
            "{addr}"
        );
        assert!(addrs.insert(addr), "an address of its own: {d}");
        assert_eq!(d["Endpoint"], format!("{}:51820", tb.nodes[i].ip));
    }
    // Only the public half leaves the node; the private half is the node's, 0600.
    let keyfile = tb.nodes[1].state_dir.join("network/wg.key");
    let meta = std::fs::metadata(&keyfile).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let private = std::fs::read_to_string(&keyfile).unwrap();
    assert!(!private.contains(planes[1]["PublicKey"].as_str().unwrap()));
    // A restarted node keeps its key and its address.
    tb.restart(1).unwrap();
    wait_ready(&tb, 3);
    assert_eq!(data_plane(&tb, 1), planes[1]);
    // A key that is not one is refused, and the node's stays.
    let id = common::raw::Identity::of_node(&tb, 2);
    let req = shoal_proto::dispatcher::HeartbeatRequest {
        description: Some(shoal_proto::objects::NodeDescription {
            hostname: "node3".into(),
            wg_public_key: "not-a-key".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = common::raw::heartbeat_with(&tb, 2, &id, req).unwrap_err();
    assert!(err.message().contains("WireGuard public key"), "{err:?}");
    assert_eq!(data_plane(&tb, 2), planes[2]);
}

/// The next peer list a session delivers within `timeout`.
fn next_peers(
    s: &common::raw::OpenSession,
    timeout: Duration,
) -> Option<Vec<shoal_proto::dispatcher::Peer>> {
    let deadline = std::time::Instant::now() + timeout;
    while let Some((_, d)) = s.next(deadline.saturating_duration_since(std::time::Instant::now())) {
        match d {
            Ok(m) => {
                if let Some(p) = m.peers {
                    return Some(p.peers);
                }
            }
            Err(e) => panic!("the session ended: {e:?}"),
        }
    }
    None
}

#[test]
fn every_node_hears_of_its_peers_and_a_removed_or_revoked_node_leaves_them_at_once() {
    let mut tb = cluster(4, &[]);
    let planes = wait_for(T, || {
        let p: Vec<serde_json::Value> = (0..4).map(|i| data_plane(&tb, i)).collect();
        p.iter()
            .all(|d| d["TunnelAddr"].as_str().is_some_and(|a| !a.is_empty()))
            .then_some(p)
    })
    .expect("tunnel addresses");
    let inspect: Vec<serde_json::Value> = (0..4)
        .map(|i| {
            let out = tb
                .cli_ok(0, &["node", "inspect", &tb.nodes[i].name])
                .unwrap();
            serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone()
        })
        .collect();
    let ids: Vec<String> = inspect
        .iter()
        .map(|n| n["ID"].as_str().unwrap().to_string())
        .collect();
    // node3's agent stops; a session with node3's identity stands in for it.
    let id = common::raw::Identity::of_node(&tb, 2);
    tb.stop(2).unwrap();
    let s = common::raw::OpenSession::open(&tb, 2, &id);
    let first = next_peers(&s, T).expect("a peer list at the session's start");
    let mut got: Vec<(String, String, String, String)> = first
        .iter()
        .map(|p| {
            (
                p.node_id.clone(),
                p.public_key.clone(),
                p.endpoint.clone(),
                p.tunnel_addr.clone(),
            )
        })
        .collect();
    let mut want: Vec<(String, String, String, String)> = [0, 1, 3]
        .iter()
        .map(|&i| {
            (
                ids[i].clone(),
                planes[i]["PublicKey"].as_str().unwrap().to_string(),
                planes[i]["Endpoint"].as_str().unwrap().to_string(),
                planes[i]["TunnelAddr"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "the other three nodes, not itself");

    let ids_of = |p: &[shoal_proto::dispatcher::Peer]| {
        let mut v: Vec<String> = p.iter().map(|p| p.node_id.clone()).collect();
        v.sort();
        v
    };
    // node4's certificate is revoked: it leaves the list at once.
    let serial = inspect[3]["Certificate"]["Serial"]
        .as_str()
        .unwrap()
        .to_string();
    tb.cli_ok(0, &["node", "revoke-certificate", "node4", &serial])
        .unwrap();
    let at = std::time::Instant::now();
    let next = next_peers(&s, T).expect("a new peer list");
    let took = at.elapsed();
    let mut want = vec![ids[0].clone(), ids[1].clone()];
    want.sort();
    assert_eq!(ids_of(&next), want, "node4 is gone");
    assert!(
        took < Duration::from_secs(1),
        "the revoked peer went in {took:?}"
    );

    // node2 is removed: the same.
    tb.stop(1).unwrap();
    tb.cli_ok(0, &["node", "rm", "--force", "node2"]).unwrap();
    let at = std::time::Instant::now();
    let next = next_peers(&s, T).expect("a new peer list");
    let took = at.elapsed();
    assert_eq!(ids_of(&next), [ids[0].clone()], "only node1 is left");
    assert!(
        took < Duration::from_secs(1),
        "the removed peer went in {took:?}"
    );
}

/// A packet capture left running in the background, written to a pcap file as each
/// packet comes (`-U -w`), read back as text (with payloads) when it is finished.
struct Capture {
    child: std::process::Child,
    pcap: std::path::PathBuf,
}

fn strs(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

/// The tcpdump arguments that capture on `iface` into `pcap`, with a filter.
fn tcpdump(iface: &str, pcap: &std::path::Path, filter: &[&str]) -> Vec<String> {
    // --immediate-mode: each packet as it comes, not in blocks handed over once a
    // second (which a short capture loses when stopped); -Z root: Debian's tcpdump
    // would otherwise write the file as user tcpdump.
    let mut a: Vec<String> = [
        "tcpdump",
        "--immediate-mode",
        "-nn",
        "-Z",
        "root",
        "-s",
        "0",
        "-U",
        "-i",
        iface,
        "-w",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(pcap.display().to_string());
    a.extend(filter.iter().map(|s| s.to_string()));
    a
}

impl Capture {
    /// Starts `cmd` (tcpdump, as [`tcpdump`] makes it) and waits until it listens.
    fn start(mut cmd: std::process::Command, pcap: std::path::PathBuf) -> Capture {
        let err_path = pcap.with_extension("err");
        let err = std::fs::File::create(&err_path).unwrap();
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        wait_for(T, || {
            std::fs::read_to_string(&err_path)
                .unwrap_or_default()
                .contains("listening on")
                .then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "tcpdump did not start: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            )
        });
        Capture { child, pcap }
    }

    /// Stops it and returns every packet captured: a header line, then the payload.
    fn finish(mut self) -> String {
        // What is in flight reaches the file first.
        std::thread::sleep(Duration::from_millis(200));
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
        let out = std::process::Command::new("tcpdump")
            .args(["-nn", "-A", "-r"])
            .arg(&self.pcap)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the capture cannot be read: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.pcap.with_extension("err")).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Every node's agent starts the engine once the managers give the node a tunnel
/// address.
fn wait_engines(tb: &Testbed, n: usize) -> Vec<serde_json::Value> {
    wait_for(Duration::from_secs(30), || {
        let p: Vec<serde_json::Value> = (0..n).map(|i| data_plane(tb, i)).collect();
        p.iter().all(|d| d["Engine"] == "userspace").then_some(p)
    })
    .unwrap_or_else(|| {
        let p: Vec<serde_json::Value> = (0..n).map(|i| data_plane(tb, i)).collect();
        panic!(
            "every node runs the userspace engine: {p:?}\n{}",
            tb.all_logs()
        )
    })
}

/// The logs of a one-shot job on node `node` on `network` that runs `script`.
fn job_on(tb: &Testbed, name: &str, node: usize, network: &str, script: &str) -> String {
    let constraint = format!("node.hostname=={}", tb.nodes[node].name);
    let mut args = vec![
        "service",
        "create",
        "--name",
        name,
        "--mode",
        "replicated-job",
        "--constraint",
        &constraint,
    ];
    if !network.is_empty() {
        args.extend(["--network", network]);
    }
    args.extend(["busybox", "sh", "-c", script]);
    tb.cli_ok(0, &args)
        .unwrap_or_else(|e| panic!("job {name}: {e}\n{}", tb.all_logs()));
    tb.cli_ok(0, &["service", "logs", name]).unwrap()
}

#[test]
fn overlay_networks_join_tasks_across_nodes_only_inside_wireguard() {
    let tb = cluster(3, &["--dispatcher-heartbeat", "1s"]);
    for i in 0..3 {
        import_busybox(&tb, i);
    }
    wait_engines(&tb, 3);
    for args in [
        vec!["network", "create", "--driver", "overlay", "front"],
        vec!["network", "create", "back"],
        vec!["network", "create", "--internal", "sealed"],
    ] {
        tb.cli_ok(0, &args).unwrap();
    }
    let marker = format!(
        "marker-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let serve = |name: &str, net: &str, replicas: &str, constraint: &str, tag: &str| {
        tb.cli_ok(
            0,
            &[
                "service",
                "create",
                "--name",
                name,
                "--network",
                net,
                "--replicas",
                replicas,
                "--constraint",
                constraint,
                "--env",
                &format!("TAG={tag}"),
                "busybox",
                "sh",
                "-c",
                SERVE,
            ],
        )
        .unwrap_or_else(|e| panic!("service {name}: {e}\n{}", tb.all_logs()));
    };
    serve("b", "front", "2", "node.hostname!=node2", &marker);
    serve("c", "back", "1", "node.hostname==node3", "c");
    let b = running(&tb, "b");
    let mut b_nodes: Vec<usize> = b.iter().map(|t| t.1).collect();
    b_nodes.sort();
    assert_eq!(b_nodes, [0, 2], "b runs on node1 and node3: {b:?}");
    let subnet = inspect_network(&tb, "front")["IPAM"]["Config"][0]["Subnet"]
        .as_str()
        .unwrap()
        .to_string();
    let prefix = subnet.rsplit_once('.').unwrap().0.to_string();
    for (id, _, ip) in &b {
        assert!(ip.starts_with(&prefix), "{id} is on front ({subnet}): {ip}");
    }
    let c_ip = running(&tb, "c")[0].2.clone();

    let front_id = inspect_network(&tb, "front")["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    // The wire: everything on every port of the test's bridge (a capture on the bridge
    // device itself sees only what is flooded to it), and any VXLAN; inside node1's
    // overlay bridge: the clear frames, as a positive control.
    let pcap = |name: &str| dir.path().join(format!("{name}.pcap"));
    let wire = Capture::start(
        tb.command_on_wire(&strs(&tcpdump("any", &pcap("wire"), &[]))),
        pcap("wire"),
    );
    let vxlan = Capture::start(
        tb.command_on_wire(&strs(&tcpdump(
            "any",
            &pcap("vxlan"),
            &["udp", "port", "4789"],
        ))),
        pcap("vxlan"),
    );
    let overlay_ns = tb.nodes[0]
        .state_dir
        .join("network/overlays")
        .join(&front_id)
        .join("netns");
    let enter = format!("--net={}", overlay_ns.display());
    let inside_args = tcpdump("br0", &pcap("inside"), &[]);
    let inside = Capture::start(
        tb.command_in(
            0,
            &[&["nsenter", enter.as_str(), "--"][..], &strs(&inside_args)].concat(),
        ),
        pcap("inside"),
    );
    std::thread::sleep(Duration::from_millis(500));

    // A task on node2 reaches both b tasks by their addresses on front, and c (on
    // back) not at all.
    let script = format!(
        "for ip in {} {} {c_ip}; do timeout 5 wget -qO- http://$ip:8080/ || echo \"unreachable $ip\"; done",
        b[0].2, b[1].2
    );
    let logs = job_on(&tb, "a", 1, "front", &script);
    for (id, _, _) in &b {
        assert!(
            logs.contains(&format!("{marker}-{}", &id[..12])),
            "a reached b's task {id}: {logs}\n{}",
            tb.all_logs()
        );
    }
    assert!(
        logs.contains(&format!("unreachable {c_ip}")),
        "a cannot reach c on another network: {logs}"
    );

    let (wire, vxlan, inside) = (wire.finish(), vxlan.finish(), inside.finish());
    assert!(
        inside.contains(&marker),
        "the page crossed node1's overlay bridge in clear (positive control): {} bytes seen",
        inside.len()
    );
    assert!(
        !wire.contains(&marker),
        "the marker never appears on the wire"
    );
    assert!(vxlan.trim().is_empty(), "no VXLAN on the wire: {vxlan}");
    assert!(
        wire.lines()
            .any(|l| l.contains(".51820 > ") && l.contains("UDP")),
        "WireGuard crossed the wire"
    );
    for l in wire.lines().filter(|l| l.contains(" IP ")) {
        assert!(
            l.contains(".4377") || l.contains(".51820"),
            "only the control port and WireGuard on the wire: {l}"
        );
    }

    // A task on an internal network reaches nothing outside it.
    std::fs::write(tb.dir().join("page.txt"), "from node1\n").unwrap();
    tb.exec_in(
        0,
        &[
            "busybox",
            "httpd",
            "-p",
            "9999",
            "-h",
            tb.dir().to_str().unwrap(),
        ],
    )
    .unwrap();
    let url = format!("http://{}:9999/page.txt", tb.nodes[0].ip);
    let script = format!("timeout 5 wget -qO- {url} || echo blocked");
    let logs = job_on(&tb, "sealed-out", 1, "sealed", &script);
    assert!(
        logs.contains("blocked") && !logs.contains("from node1"),
        "{logs}"
    );
    // On a network that is not internal, the same request goes out.
    let logs = job_on(&tb, "front-out", 1, "front", &script);
    assert!(logs.contains("from node1"), "{logs}");

    // service rm and network rm leave nothing behind on any node.
    tb.cli_ok(
        0,
        &["service", "rm", "a", "b", "c", "sealed-out", "front-out"],
    )
    .unwrap();
    for net in ["front", "back", "sealed"] {
        wait_for(T, || tb.cli_ok(0, &["network", "rm", net]).ok()).unwrap_or_else(|| {
            panic!(
                "network rm {net}: {}",
                tb.cli(0, &["network", "rm", net]).stderr
            )
        });
    }
    for i in 0..3 {
        let overlays = tb.nodes[i].state_dir.join("network/overlays");
        wait_for(T, || {
            let left = std::fs::read_dir(&overlays).map(|d| d.count()).unwrap_or(0);
            (left == 0 && task_veths(&tb, i).is_empty() && netns_mounts(&tb, i) == 0).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "node{} left overlays {:?}, veths {:?}, {} namespace mounts",
                i + 1,
                std::fs::read_dir(&overlays).map(|d| d.count()),
                task_veths(&tb, i),
                netns_mounts(&tb, i)
            )
        });
    }

    // node rm --force: within a second no engine has node3 as a peer any more, so
    // nothing it sends is taken.
    let key3 = data_plane(&tb, 2)["PublicKey"]
        .as_str()
        .unwrap()
        .to_string();
    let hex3 = shoal_agent::network::wg::key_hex(&key3).unwrap();
    let has_peer = |i: usize| {
        let sock = shoal_agent::network::wg::socket_path(&tb.nodes[i].state_dir);
        shoal_agent::network::wg::uapi(&sock, "get=1\n\n")
            .unwrap()
            .contains(&format!("public_key={hex3}"))
    };
    assert!(
        has_peer(0) && has_peer(1),
        "node3 is a peer of node1 and node2"
    );
    tb.cli_ok(0, &["node", "rm", "--force", "node3"]).unwrap();
    let removed = std::time::Instant::now();
    wait_for(T, || (!has_peer(0) && !has_peer(1)).then_some(()))
        .expect("node3 leaves every engine's peers");
    let took = removed.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "node3 left the peers in {took:?}"
    );
}

#[test]
fn forged_plaintext_vxlan_is_dropped_by_the_guard_and_counted() {
    let tb = cluster(2, &["--dispatcher-heartbeat", "1s"]);
    import_busybox(&tb, 0);
    wait_engines(&tb, 2);
    tb.cli_ok(0, &["network", "create", "front"]).unwrap();
    let vni = inspect_network(&tb, "front")["VNI"]
        .as_u64()
        .unwrap_or(4096) as u32;
    let constraint = "node.hostname==node1";
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "b",
            "--network",
            "front",
            "--constraint",
            constraint,
            "--env",
            "TAG=b",
            "busybox",
            "sh",
            "-c",
            SERVE,
        ],
    )
    .unwrap();
    let (_, _, ip) = running(&tb, "b").remove(0);
    let before = data_plane(&tb, 0)["Guard"]["DroppedIn"].as_u64().unwrap();
    // A VXLAN frame with front's VNI, to the task's MAC, from node2's address: the
    // plaintext an attacker on the wire could send.
    let octets: Vec<u8> = ip.split('.').map(|o| o.parse().unwrap()).collect();
    let mut frame = vec![
        0x08,
        0,
        0,
        0,
        (vni >> 16) as u8,
        (vni >> 8) as u8,
        vni as u8,
        0,
    ];
    frame.extend([0x02, 0x42]);
    frame.extend(&octets);
    frame.extend([0x02, 0x42, 10, 9, 9, 9, 0x08, 0x00]);
    frame.extend(b"forged plaintext frame padding......................");
    let to = format!("{}:4789", tb.nodes[0].ip);
    tb.in_netns(1, move || {
        // Sent from node2's namespace without its own guard's say: a raw UDP socket
        // bound to another port still goes through node2's output hook, so drop
        // node2's guard first, as an attacker's machine has none.
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", "shoal_guard"])
            .status();
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..5 {
            s.send_to(&frame, &to).unwrap();
        }
    })
    .unwrap();
    let after = wait_for(Duration::from_secs(20), || {
        let n = data_plane(&tb, 0)["Guard"]["DroppedIn"].as_u64().unwrap();
        (n >= before + 5).then_some(n)
    });
    assert!(
        after.is_some(),
        "node1's guard counted the 5 forged frames: {}",
        data_plane(&tb, 0)
    );
}

#[test]
fn an_open_connection_between_containers_outlives_kill_9_of_a_daemon() {
    let mut tb = cluster(2, &[]);
    import_busybox(&tb, 0);
    import_busybox(&tb, 1);
    wait_engines(&tb, 2);
    tb.cli_ok(0, &["network", "create", "front"]).unwrap();
    let on = |i: usize| format!("node.hostname=={}", tb.nodes[i].name);
    // A listener on node1 that prints what it receives, and a client on node2 that
    // sends a numbered line every 100 ms over one TCP connection.
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "sink",
            "--network",
            "front",
            "--constraint",
            &on(0),
            "busybox",
            "sh",
            "-c",
            // nc ends its connection when its input ends: an input that never does.
            "sleep 1000000 | nc -l -p 7000",
        ],
    )
    .unwrap();
    let sink_ip = running(&tb, "sink")[0].2.clone();
    let script = format!(
        "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.1; done | nc {sink_ip} 7000"
    );
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "source",
            "--network",
            "front",
            "--constraint",
            &on(1),
            "busybox",
            "sh",
            "-c",
            &script,
        ],
    )
    .unwrap();
    let (source_id, _, source_ip) = running(&tb, "source").remove(0);
    let ticks = |tb: &Testbed| -> usize {
        tb.cli_ok(0, &["service", "logs", "sink"])
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("tick-"))
            .count()
    };
    wait_for(T, || (ticks(&tb) > 5).then_some(()))
        .unwrap_or_else(|| panic!("the sink hears the source\n{}", tb.all_logs()));
    // Back within the managers' grace for a lost session (2 s), or its tasks would be
    // replaced as a failed node's are.
    tb.kill(1).unwrap();
    let before = ticks(&tb);
    wait_for(T, || (ticks(&tb) > before + 5).then_some(())).unwrap_or_else(|| {
        panic!(
            "the connection flows with node2's daemon dead\n{}",
            tb.all_logs()
        )
    });
    tb.start(1).unwrap();
    wait_for(T, || {
        let now = running(&tb, "source");
        (now.len() == 1 && now[0].0 == source_id).then_some(())
    })
    .expect("the source task is re-adopted, not replaced");
    let (_, _, ip) = running(&tb, "source").remove(0);
    assert_eq!(ip, source_ip, "the task keeps its address");
    let before = ticks(&tb);
    wait_for(T, || (ticks(&tb) > before + 20).then_some(()))
        .unwrap_or_else(|| panic!("the connection flows after the restart\n{}", tb.all_logs()));
    assert_eq!(data_plane(&tb, 1)["Engine"], "userspace");

    // The engine itself killed: the agent starts another, makes the overlay's VXLAN
    // device again on its new link, and the same connection flows on.
    let pid: i32 = std::fs::read_to_string(tb.nodes[1].state_dir.join("network/dataplane.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let before = ticks(&tb);
    wait_for(Duration::from_secs(30), || {
        (ticks(&tb) > before + 20).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the connection flows after the engine restarted\n{}",
            tb.all_logs()
        )
    });
    let now: i32 = std::fs::read_to_string(tb.nodes[1].state_dir.join("network/dataplane.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(now, pid, "another engine runs");
}

/// Runs `args` inside task `id`'s container on node `i` (its network and mount
/// namespaces: its own /etc/resolv.conf, its own busybox).
fn exec_task(tb: &Testbed, i: usize, id: &str, args: &[&str]) -> Result<String, String> {
    let pid = std::fs::read_to_string(
        tb.nodes[i]
            .state_dir
            .join("containers")
            .join(id)
            .join("pid"),
    )
    .map_err(|e| format!("no pid for {id}: {e}"))?;
    let pid = pid.trim().to_string();
    let mut full = vec!["nsenter", "-t", &pid, "-n", "-m", "--"];
    full.extend_from_slice(args);
    let out = tb
        .command_in(i, &full)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The addresses busybox's nslookup gives for `name` inside task `id`.
fn resolve(tb: &Testbed, i: usize, id: &str, name: &str) -> Vec<String> {
    let out = exec_task(tb, i, id, &["busybox", "nslookup", "-type=a", name]).unwrap_or_default();
    let mut ips: Vec<String> = out
        .split_once("Name:")
        .map(|(_, answers)| answers)
        .unwrap_or("")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Address:"))
        .map(|a| a.trim().to_string())
        .collect();
    ips.sort();
    ips
}

#[test]
fn services_are_found_by_name_and_spread_over_their_tasks_by_a_vip() {
    let tb = cluster(3, &["--dispatcher-heartbeat", "1s"]);
    for i in 0..3 {
        import_busybox(&tb, i);
    }
    wait_engines(&tb, 3);
    tb.cli_ok(0, &["network", "create", "front"]).unwrap();
    tb.cli_ok(0, &["network", "create", "other"]).unwrap();
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "b",
            "--network",
            "name=front,alias=web",
            "--replicas",
            "3",
            "--constraint",
            "node.hostname!=node2",
            "--env",
            "TAG=b",
            "busybox",
            "sh",
            "-c",
            SERVE,
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "hidden",
            "--network",
            "other",
            "--env",
            "TAG=hidden",
            "busybox",
            "sh",
            "-c",
            SERVE,
        ],
    )
    .unwrap();
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "a",
            "--network",
            "front",
            "--constraint",
            "node.hostname==node2",
            "busybox",
            "sleep",
            "1000000",
        ],
    )
    .unwrap();
    let (a, _, _) = running(&tb, "a").remove(0);
    let b: Vec<String> = {
        let mut v: Vec<String> = running(&tb, "b").into_iter().map(|t| t.2).collect();
        v.sort();
        v
    };
    assert_eq!(b.len(), 3);

    let resolv = exec_task(&tb, 1, &a, &["cat", "/etc/resolv.conf"]).unwrap();
    assert!(resolv.starts_with("nameserver 127.0.0.11\n"), "{resolv}");
    let tasks_b = wait_for(T, || {
        let ips = resolve(&tb, 1, &a, "tasks.b");
        (ips == b).then_some(ips)
    });
    assert!(
        tasks_b.is_some(),
        "tasks.b resolves to b's 3 tasks {b:?}: {:?}\n{}",
        resolve(&tb, 1, &a, "tasks.b"),
        tb.all_logs()
    );
    let vip = resolve(&tb, 1, &a, "b");
    assert_eq!(vip.len(), 1, "b resolves to one VIP: {vip:?}");
    assert!(
        !b.contains(&vip[0]),
        "the VIP is none of the tasks: {vip:?}"
    );
    assert_eq!(
        resolve(&tb, 1, &a, "web"),
        vip,
        "the alias names the same VIP"
    );
    assert!(
        resolve(&tb, 1, &a, "hidden").is_empty(),
        "another network's service is not found"
    );
    assert!(resolve(&tb, 1, &a, "tasks.hidden").is_empty());

    // 100 requests to b by name reach all three tasks, through the VIP.
    let pages = exec_task(
        &tb,
        1,
        &a,
        &[
            "sh",
            "-c",
            "for i in $(seq 100); do wget -qO- http://b:8080/; done",
        ],
    )
    .unwrap();
    let mut seen: Vec<&str> = pages.lines().collect();
    assert_eq!(seen.len(), 100, "{pages}");
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        3,
        "the VIP spread the requests over b's tasks: {seen:?}"
    );

    // Scaled down, DNS and the VIP follow within a second.
    tb.cli_ok(0, &["service", "scale", "b=1"]).unwrap();
    let scaled = std::time::Instant::now();
    let left = wait_for(Duration::from_secs(5), || {
        let ips = resolve(&tb, 1, &a, "tasks.b");
        (ips.len() == 1).then_some(ips)
    })
    .expect("tasks.b follows the scale");
    let took = scaled.elapsed();
    assert!(took < Duration::from_secs(1), "DNS followed in {took:?}");
    let pages = exec_task(
        &tb,
        1,
        &a,
        &[
            "sh",
            "-c",
            "for i in $(seq 20); do wget -qO- http://b:8080/; done",
        ],
    )
    .unwrap();
    let mut seen: Vec<&str> = pages.lines().collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        1,
        "the VIP sends only to the task left ({left:?}): {seen:?}"
    );
    // Names outside the cluster go to the node's resolvers (none answer here: the
    // test's hosts reach nothing outside, so the answer is a failure, not a hang).
    let started = std::time::Instant::now();
    let _ = exec_task(&tb, 1, &a, &["busybox", "nslookup", "example.invalid"]);
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn published_ports_answer_on_every_node_and_host_mode_only_where_a_task_runs() {
    let tb = cluster(3, &["--dispatcher-heartbeat", "1s"]);
    for i in 0..3 {
        import_busybox(&tb, i);
    }
    wait_engines(&tb, 3);
    let marker = format!("published-{}", std::process::id());
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "web",
            "-p",
            "8000:8080",
            "--constraint",
            "node.hostname==node1",
            "--env",
            &format!("TAG={marker}"),
            "busybox",
            "sh",
            "-c",
            SERVE,
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    let (id, _, _) = running(&tb, "web").remove(0);
    let page = format!("{marker}-{}", &id[..12]);
    // Between node1 (the task) and node3 (no task) only WireGuard crosses.
    let (n1, n3) = (tb.nodes[0].ip.clone(), tb.nodes[2].ip.clone());
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("wire.pcap");
    let wire_args = tcpdump("any", &pcap, &[]);
    let wire = Capture::start(
        tb.command_on_wire(&wire_args.iter().map(String::as_str).collect::<Vec<_>>()),
        pcap,
    );
    // Every node answers, from node2 (the client) to each node's address, and a node
    // to its own address and at localhost (node1 has the task, node3 has none).
    let localhost = "127.0.0.1".to_string();
    for (client, node, ip) in [
        (1, 0, &tb.nodes[0].ip),
        (1, 1, &tb.nodes[1].ip),
        (1, 2, &tb.nodes[2].ip),
        (2, 2, &tb.nodes[2].ip),
        (2, 2, &localhost),
        (0, 0, &localhost),
    ] {
        let got = wait_for(T, || fetch(&tb, client, ip, 8000, "/"));
        assert_eq!(
            got.as_deref().map(str::trim),
            Some(page.as_str()),
            "port 8000 of node{} at {ip} from node{}\n{}",
            node + 1,
            client + 1,
            tb.all_logs()
        );
    }
    // The packets between node1 and node3, each its header line and payload lines.
    let wire = wire.finish();
    let mut between = String::new();
    let mut keep = false;
    for l in wire.lines() {
        if l.as_bytes().get(2) == Some(&b':') && l.contains(" IP ") {
            keep = l.contains(&format!("{n1}.")) && l.contains(&format!("{n3}."));
        }
        if keep {
            between.push_str(l);
            between.push('\n');
        }
    }
    assert!(
        !between.contains(&marker),
        "the page crossed between node1 and node3 in clear"
    );
    assert!(
        between.contains(".51820 > "),
        "it crossed inside WireGuard: {} lines between node1 and node3 of {} on the wire:\n{}",
        between.lines().count(),
        wire.lines().count(),
        wire.lines()
            .filter(|l| l.contains(" IP "))
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        between
            .lines()
            .filter(|l| l.contains(" IP ") && !l.contains(".4377"))
            .all(|l| l.contains("UDP") && l.contains(".51820")),
        "nothing but WireGuard (and the control port) between node1 and node3"
    );

    // Host mode: only the node with a task answers.
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "local",
            "--publish",
            "published=9000,target=8080,mode=host",
            "--constraint",
            "node.hostname==node3",
            "--env",
            "TAG=local",
            "busybox",
            "sh",
            "-c",
            SERVE,
        ],
    )
    .unwrap();
    let got = wait_for(T, || fetch(&tb, 1, &n3, 9000, "/"));
    assert!(got.is_some_and(|p| p.starts_with("local-")));
    assert_eq!(
        fetch(&tb, 1, &n1, 9000, "/"),
        None,
        "node1 has no task of it"
    );

    // A port another service publishes is refused, naming it; nothing is created.
    let out = tb.cli(
        0,
        &[
            "service", "create", "--name", "dup", "-p", "8000:80", "busybox", "true",
        ],
    );
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("port 8000/tcp is already published by service web"),
        "{}",
        out.stderr
    );
    assert!(!tb.cli_ok(0, &["service", "ls"]).unwrap().contains("dup"));
    let out = tb.cli(0, &["service", "create", "-p", "8000:0", "busybox", "true"]);
    assert!(
        !out.success && out.stderr.contains("not a port"),
        "{}",
        out.stderr
    );

    // Unpublished, the port answers nowhere.
    tb.cli_ok(0, &["service", "update", "--publish-rm", "8000", "web"])
        .unwrap();
    wait_for(T, || fetch(&tb, 1, &n3, 8000, "/").is_none().then_some(()))
        .expect("port 8000 is closed again");
}

#[test]
fn the_data_path_port_and_address_are_the_operators_to_choose() {
    let tb = testbed(2);
    let out = tb.cli(0, &["init", "--data-path-port", "80"]);
    assert!(
        !out.success && out.stderr.contains("--data-path-port 80"),
        "{}",
        out.stderr
    );
    let out = tb.cli(0, &["init", "--data-path-addr", "eth-nonsense"]);
    assert!(
        !out.success && out.stderr.contains("is not an IP address"),
        "{}",
        out.stderr
    );
    let ip0 = tb.nodes[0].ip.clone();
    tb.init(0, &["--data-path-port", "51999", "--data-path-addr", &ip0])
        .unwrap();
    let token = tb.cli_ok(0, &["join-token", "-q", "worker"]).unwrap();
    let manager = tb.nodes[0].addr();
    let join = |addr: &str| {
        tb.cli(
            1,
            &[
                "join",
                "--token",
                token.trim(),
                "--data-path-addr",
                addr,
                &manager,
            ],
        )
    };
    let out = join("not-an-ip");
    assert!(
        !out.success && out.stderr.contains("is not an IP address"),
        "{}",
        out.stderr
    );
    let ip1 = tb.nodes[1].ip.clone();
    let out = join(&ip1);
    assert!(out.success, "{}", out.stderr);
    wait_ready(&tb, 2);
    let planes = wait_engines(&tb, 2);
    assert_eq!(planes[1]["Endpoint"], format!("{ip1}:51999"), "{planes:?}");
    let sock = shoal_agent::network::wg::socket_path(&tb.nodes[1].state_dir);
    let state = shoal_agent::network::wg::uapi(&sock, "get=1\n\n").unwrap();
    assert!(state.contains("listen_port=51999"), "{state}");
    assert!(state.contains(&format!("endpoint={ip0}:51999")), "{state}");
    // The tunnel carries traffic on that port.
    let to = planes[0]["TunnelAddr"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let out = wait_for(T, || {
        tb.exec_in(1, &["busybox", "ping", "-c", "2", "-W", "2", &to])
            .ok()
    })
    .expect("ping over the tunnel");
    assert!(out.contains("2 packets received"), "{out}");
}

#[test]
fn an_unhealthy_task_leaves_dns_and_the_vip_and_backends_see_the_client() {
    let tb = two_nodes();
    wait_engines(&tb, 2);
    tb.cli_ok(0, &["network", "create", "front"]).unwrap();
    // Healthy while /tmp/w/ok exists; each task's page names its host.
    // httpd -v logs each client's address.
    let serve = "mkdir -p /tmp/w && touch /tmp/w/ok && hostname > /tmp/w/index.html \
                 && exec httpd -f -v -p 8080 -h /tmp/w";
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "h",
            "--network",
            "front",
            "--replicas",
            "2",
            "--health-cmd",
            "test -f /tmp/w/ok",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
            "busybox",
            "sh",
            "-c",
            serve,
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "a",
            "--network",
            "front",
            "--constraint",
            "node.hostname==node2",
            "busybox",
            "sleep",
            "1000000",
        ],
    )
    .unwrap();
    let (a, _, a_ip) = running(&tb, "a").remove(0);
    let h = running(&tb, "h");
    assert_eq!(h.len(), 2);
    let mut both: Vec<String> = h.iter().map(|t| t.2.clone()).collect();
    both.sort();
    wait_for(T, || (resolve(&tb, 1, &a, "tasks.h") == both).then_some(()))
        .expect("both healthy tasks in DNS");

    // One task turns unhealthy: it leaves the names and the VIP.
    let (sick, sick_node, sick_ip) = h[0].clone();
    let sick_page = exec_task(&tb, sick_node, &sick, &["cat", "/tmp/w/index.html"]).unwrap();
    exec_task(&tb, sick_node, &sick, &["busybox", "rm", "/tmp/w/ok"]).unwrap();
    wait_for(T, || {
        (!resolve(&tb, 1, &a, "tasks.h").contains(&sick_ip)).then_some(())
    })
    .expect("the unhealthy task leaves tasks.h");
    let pages = exec_task(
        &tb,
        1,
        &a,
        &[
            "sh",
            "-c",
            "for i in $(seq 20); do wget -qO- http://h:8080/ || echo failed; done",
        ],
    )
    .unwrap_or_else(|e| e);
    assert!(
        pages.lines().any(|l| l != "failed") && !pages.contains(sick_page.trim()),
        "the VIP sends nothing to the unhealthy task {}: {pages}",
        sick_page.trim()
    );
    // Through the VIP, the backend saw the client's own address.
    let logs = tb.cli(0, &["service", "logs", "h"]);
    let logs = format!("{}{}", logs.stdout, logs.stderr);
    assert!(
        logs.contains(&format!("{a_ip}]:")) || logs.contains(&format!("{a_ip}:")),
        "the backends see the client {a_ip}: {logs}"
    );
}

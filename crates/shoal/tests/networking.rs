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
        .filter(|l| l.contains("/network/tasks/"))
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
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("cannot attach tasks to overlay networks yet"),
        "{}",
        out.stderr
    );
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
    let out = tb.cli(0, &["network", "inspect", "a"]);
    assert!(
        !out.success && out.stderr.contains("no such network: a"),
        "{}",
        out.stderr
    );
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

/// The helper `shoal dataplane` of node `i`, started by hand in the node's namespace
/// (until the agent starts it), killed when dropped.
struct Engine(std::process::Child);

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_engine(tb: &Testbed, i: usize) -> Engine {
    let child = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", tb.nodes[i].netns))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_shoal"))
        .arg("dataplane")
        .arg(&tb.nodes[i].state_dir)
        .spawn()
        .unwrap();
    let sock = shoal_agent::network::wg::socket_path(&tb.nodes[i].state_dir);
    wait_for(T, || sock.exists().then_some(())).expect("the engine's socket");
    Engine(child)
}

#[test]
fn the_userspace_wireguard_engine_carries_traffic_between_two_nodes() {
    let tb = cluster(2, &[]);
    let planes: Vec<serde_json::Value> = wait_for(T, || {
        let p: Vec<serde_json::Value> = (0..2).map(|i| data_plane(&tb, i)).collect();
        p.iter()
            .all(|d| d["TunnelAddr"].as_str().is_some_and(|a| !a.is_empty()))
            .then_some(p)
    })
    .expect("tunnel addresses");
    let _engines: Vec<Engine> = (0..2).map(|i| start_engine(&tb, i)).collect();
    for (i, other) in [(0usize, 1usize), (1, 0)] {
        let peer = shoal_proto::dispatcher::Peer {
            node_id: String::new(),
            public_key: planes[other]["PublicKey"].as_str().unwrap().into(),
            endpoint: planes[other]["Endpoint"].as_str().unwrap().into(),
            tunnel_addr: planes[other]["TunnelAddr"].as_str().unwrap().into(),
        };
        let sock = shoal_agent::network::wg::socket_path(&tb.nodes[i].state_dir);
        shoal_agent::network::wg::uapi(
            &sock,
            &shoal_agent::network::wg::set_request(51820, &[peer]),
        )
        .unwrap();
        let me = planes[i]["TunnelAddr"].as_str().unwrap();
        tb.exec_in(i, &["ip", "addr", "add", me, "dev", "shoal-wg"])
            .unwrap();
        tb.exec_in(i, &["ip", "link", "set", "shoal-wg", "mtu", "1420", "up"])
            .unwrap();
    }
    let to = planes[1]["TunnelAddr"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let out = tb
        .exec_in(0, &["busybox", "ping", "-c", "3", "-W", "2", &to])
        .unwrap_or_else(|e| panic!("ping over the tunnel: {e}"));
    assert!(out.contains("3 packets received"), "{out}");
}

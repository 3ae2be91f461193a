//! The testbed itself: it removes everything it made, also when a test panics.

mod common;

use std::process::Command;

fn netns_list() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

#[test]
fn testbed_cleans_up_after_a_panicking_test() {
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::panic::catch_unwind(move || {
        let mut tb = common::testbed(2);
        tb.init(0, &[]).unwrap();
        tx.send((
            tb.tag.clone(),
            tb.dir().to_path_buf(),
            tb.nodes[0].pid().unwrap(),
            tb.nodes[1].pid().unwrap(),
        ))
        .unwrap();
        tb.kill(1).unwrap();
        panic!("a failing test");
    });
    assert!(r.is_err());
    let (tag, dir, p0, p1) = rx.recv().unwrap();
    assert!(
        !netns_list().contains(&tag),
        "namespaces removed: {}",
        netns_list()
    );
    assert!(!dir.exists(), "state dirs removed");
    for p in [p0, p1] {
        let alive = std::fs::read_to_string(format!("/proc/{p}/status"))
            .map(|s| !s.contains("State:\tZ"))
            .unwrap_or(false);
        assert!(!alive, "daemon {p} stopped");
    }
}

#[test]
fn nodes_have_their_own_hostname_and_address() {
    let tb = common::testbed(2);
    for (i, n) in tb.nodes.iter().enumerate() {
        let addrs = tb
            .exec_in(i, &["ip", "-4", "-o", "addr", "show", "eth0"])
            .unwrap();
        assert!(addrs.contains(&n.ip), "{addrs}");
    }
    tb.init(0, &[]).unwrap();
    tb.join_worker(1, 0).unwrap();
    common::wait_ready(&tb, 2);
    let hosts: Vec<String> = common::nodes(&tb, 0)
        .iter()
        .map(|n| n["Hostname"].as_str().unwrap().to_string())
        .collect();
    assert!(
        hosts.contains(&"node1".to_string()) && hosts.contains(&"node2".to_string()),
        "{hosts:?}"
    );
    // The host's own hostname is untouched.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(!host.starts_with("node"), "{host}");
}

#[test]
fn node_inspect_accepts_ids_prefixes_and_hostnames() {
    let tb = common::cluster(2, &[]);
    let id = common::info(&tb, 1)["NodeID"].as_str().unwrap().to_string();
    for r in [id.as_str(), &id[..8], "node2"] {
        let out = tb
            .cli_ok(0, &["node", "inspect", "--format", "json", r])
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v[0]["ID"], id.as_str(), "{r}");
        assert_eq!(v[0]["Spec"]["Role"], "worker");
    }
    let out = tb.cli(0, &["node", "inspect", "nosuchnode"]);
    assert!(
        !out.success && out.stderr.contains("no such node: nosuchnode"),
        "{}",
        out.stderr
    );
    let pretty = tb
        .cli_ok(0, &["node", "inspect", "--pretty", "self"])
        .unwrap();
    assert!(
        pretty.contains("Hostname:\t\tnode1") && pretty.contains("Leader"),
        "{pretty}"
    );
    let q = tb.cli_ok(0, &["node", "ls", "-q"]).unwrap();
    assert_eq!(q.lines().count(), 2);
    assert!(q.lines().all(|l| l.len() == 25), "{q}");
}

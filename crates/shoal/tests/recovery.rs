//! Disaster recovery on real daemons: a cluster re-formed from the one manager left
//! (`init --force-new-cluster`), and one restored from a backup on a fresh node
//! (`backup`, then `init --restore`).

mod common;

use common::*;
use shoal_testbed::{wait_for, Testbed};
use std::time::Duration;

/// Kills node `i` outright and deletes everything it had on disk: a lost machine.
fn destroy(tb: &mut Testbed, i: usize) {
    tb.kill_all(i).unwrap();
    let d = tb.nodes[i].state_dir.clone();
    std::fs::remove_dir_all(&d).unwrap();
    std::fs::create_dir_all(&d).unwrap();
}

/// A service with one `sleep` task on the worker, node `worker`.
fn service_on_worker(tb: &Testbed, worker: usize) {
    import_busybox(tb, worker);
    sleep_service_on_workers(tb, 0, "keep", 1);
    sleeps_become(tb, worker, 1);
}

#[test]
fn force_new_cluster_on_the_last_manager_keeps_services_and_workers() {
    let mut tb = ha_cluster(3, 1);
    service_on_worker(&tb, 3);

    // Two of three managers are lost: node1 alone cannot write.
    destroy(&mut tb, 1);
    destroy(&mut tb, 2);
    let out = tb.cli(0, &["service", "scale", "keep=2"]);
    assert!(
        !out.success && out.stderr.contains("no leader: 1 of 3 managers reachable"),
        "{}",
        out.stderr
    );

    let out = tb
        .cli_ok(0, &["init", "--force-new-cluster"])
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    assert!(out.contains("re-formed"), "{out}");
    // One manager, leading; the lost ones are gone; the worker and its task are kept.
    let st = wait_for(Duration::from_secs(15), || {
        let nodes = nodes(&tb, 0);
        let hosts: Vec<String> = nodes
            .iter()
            .map(|n| n["Hostname"].as_str().unwrap_or("").to_string())
            .collect();
        (hosts.len() == 2
            && nodes
                .iter()
                .any(|n| n["Hostname"] == "node4" && n["Status"] == "Ready"))
        .then_some(nodes)
    })
    .unwrap_or_else(|| {
        panic!(
            "node1 and the worker\n{}\n{}",
            tb.cli(0, &["node", "ls"]).stdout,
            tb.all_logs()
        )
    });
    assert!(
        st.iter()
            .any(|n| n["Hostname"] == "node1" && n["ManagerStatus"] == "Leader"),
        "{st:?}"
    );
    sleeps_become(&tb, 3, 1);
    // It writes again, and schedules new tasks.
    tb.cli_ok(0, &["service", "scale", "keep=2"])
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    sleeps_become(&tb, 3, 2);
    // The old store is kept aside, not deleted.
    let kept = std::fs::read_dir(&tb.nodes[0].state_dir)
        .unwrap()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("raft.before-force-new-cluster-")
        });
    assert!(kept);

    // A new manager joins the re-formed cluster.
    tb.start(1).unwrap();
    join_manager(&tb, 1, 0);
    wait_for(Duration::from_secs(10), || {
        nodes(&tb, 0)
            .iter()
            .any(|n| n["Hostname"] == "node2" && n["ManagerStatus"] == "Reachable")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("node2 joins as a manager\n{}", tb.all_logs()));
    // A restart keeps it all.
    tb.restart(0).unwrap();
    wait_for(Duration::from_secs(15), || {
        tb.cli_ok(0, &["service", "ls"])
            .ok()?
            .contains("2/2")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("after a restart\n{}", tb.all_logs()));
}

#[test]
fn a_backup_restores_the_cluster_on_a_fresh_node_with_its_unlock_key() {
    let mut tb = testbed(2);
    let out = tb
        .init(0, &["--autolock", "--dispatcher-heartbeat", "1s"])
        .unwrap();
    let key = out
        .split_whitespace()
        .find(|w| w.starts_with("SHOAL-KEY-1-"))
        .unwrap()
        .to_string();
    tb.join_worker(1, 0)
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    wait_ready(&tb, 2);
    service_on_worker(&tb, 1);
    let token = tb.cli_ok(0, &["join-token", "-q", "worker"]).unwrap();
    let root = info(&tb, 0)["RootCADigest"].clone();

    // A backup while the cluster runs: 0600, sealed (no service name in clear).
    let file = tb.dir().join("cluster.backup");
    let out = tb
        .cli_ok(0, &["backup", file.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    assert!(out.contains("unlock key"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let raw = std::fs::read(&file).unwrap();
    assert!(!raw
        .windows(token.trim().len())
        .any(|w| w == token.trim().as_bytes()));

    // Every manager is lost; a fresh node at its address restores the backup.
    destroy(&mut tb, 0);
    tb.start(0).unwrap();
    let restore = ["init", "--restore", file.to_str().unwrap()];
    let out = tb.cli_stdin(0, &restore, "\n");
    assert!(
        !out.success && out.stderr.contains("no unlock key given"),
        "{}",
        out.stderr
    );
    let out = tb.cli_stdin(0, &restore, &format!("{}\n", &key[..key.len() - 2]));
    assert!(!out.success, "{}", out.stderr);
    let garbage = tb.dir().join("garbage");
    std::fs::write(&garbage, b"not a backup").unwrap();
    let out = tb.cli_stdin(
        0,
        &["init", "--restore", garbage.to_str().unwrap()],
        &format!("{key}\n"),
    );
    assert!(
        !out.success && out.stderr.contains("not a shoal backup"),
        "{}",
        out.stderr
    );
    assert_eq!(info(&tb, 0)["State"], "inactive");
    let out = tb.cli_stdin(0, &restore, &format!("{key}\n"));
    assert!(out.success, "{}\n{}", out.stderr, tb.all_logs());

    // Services, tokens and the root CA are back; the worker reconnects by itself and
    // keeps its container.
    assert!(tb.cli_ok(0, &["service", "ls"]).unwrap().contains("keep"));
    assert_eq!(
        tb.cli_ok(0, &["join-token", "-q", "worker"]).unwrap(),
        token
    );
    assert_eq!(info(&tb, 0)["RootCADigest"], root);
    wait_for(Duration::from_secs(20), || {
        (status_of(&tb, "node2") == "Ready").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the worker reconnects\n{}\n{}",
            tb.cli(0, &["node", "ls"]).stdout,
            tb.all_logs()
        )
    });
    sleeps_become(&tb, 1, 1);
    let st = nodes(&tb, 0);
    assert_eq!(st.len(), 2, "the lost manager is gone: {st:?}");
    // Still autolocked: a restart needs the same key.
    tb.restart(0).unwrap();
    assert_eq!(info(&tb, 0)["State"], "locked");
    let out = tb.cli_stdin(0, &["unlock"], &format!("{key}\n"));
    assert!(out.success, "{}", out.stderr);
}

//! Issue #4: services, the scheduler, placement on node identity, node availability and
//! node loss — on real nodes with real containers.

mod common;

use common::*;
use shoal_testbed::{wait_for, Testbed};
use std::collections::HashMap;
use std::time::Duration;

const T: Duration = Duration::from_secs(40);

/// A cluster of `n` nodes (node1 the manager) with busybox on every node.
fn services_cluster(n: usize, init: &[&str]) -> Testbed {
    let tb = cluster(n, init);
    for i in 0..n {
        import_busybox(&tb, i);
    }
    tb
}

/// `service ps --format json` of the running (desired) tasks.
fn running(tb: &Testbed, service: &str) -> Vec<serde_json::Value> {
    let out = tb
        .cli_ok(
            0,
            &[
                "service",
                "ps",
                service,
                "--format",
                "json",
                "--filter",
                "desired-state=running",
            ],
        )
        .unwrap();
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Running tasks per node hostname.
fn per_node(tb: &Testbed, service: &str) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for t in running(tb, service) {
        if t["CurrentState"] == "Running" {
            *m.entry(t["Node"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    m
}

/// Containers actually running (`sleep` processes) on each node.
fn containers(tb: &Testbed) -> Vec<usize> {
    (0..tb.nodes.len())
        .map(|i| tb.processes_named(i, "sleep"))
        .collect()
}

fn create(tb: &Testbed, args: &[&str]) -> shoal_testbed::CliOutput {
    let mut a = vec!["service", "create", "--stop-grace-period", "200ms"];
    a.extend_from_slice(args);
    tb.cli(0, &a)
}

fn create_ok(tb: &Testbed, args: &[&str]) {
    let out = create(tb, args);
    assert!(
        out.success,
        "service create {args:?}: {}{}\n{}",
        out.stdout,
        out.stderr,
        tb.all_logs()
    );
}

#[test]
fn replicas_spread_scale_down_and_removal() {
    let tb = services_cluster(3, &[]);
    create_ok(
        &tb,
        &[
            "--name",
            "web",
            "--replicas",
            "6",
            "busybox",
            "sleep",
            "600",
        ],
    );
    let m = per_node(&tb, "web");
    assert_eq!(
        m.values()
            .copied()
            .collect::<Vec<_>>()
            .iter()
            .sum::<usize>(),
        6,
        "{m:?}"
    );
    assert!(m.values().all(|&c| c == 2), "2 per node: {m:?}");
    assert_eq!(containers(&tb).iter().sum::<usize>(), 6);
    let ls = tb.cli_ok(0, &["service", "ls"]).unwrap();
    assert!(
        ls.contains("web")
            && ls.contains("replicated")
            && ls.contains("6/6")
            && ls.contains("busybox"),
        "{ls}"
    );

    tb.cli_ok(0, &["service", "scale", "web=2"]).unwrap();
    wait_for(T, || {
        (containers(&tb).iter().sum::<usize>() == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("exactly 4 containers stopped: {:?}", containers(&tb)));
    assert_eq!(running(&tb, "web").len(), 2);
    let slots: Vec<u64> = running(&tb, "web")
        .iter()
        .map(|t| t["Slot"].as_u64().unwrap())
        .collect();
    assert!(
        slots.contains(&1) && slots.contains(&2),
        "the lowest slots stay: {slots:?}"
    );

    tb.cli_ok(0, &["service", "rm", "web"]).unwrap();
    wait_for(T, || {
        (containers(&tb).iter().sum::<usize>() == 0).then_some(())
    })
    .unwrap_or_else(|| panic!("no container left: {:?}", containers(&tb)));
    assert!(!tb.cli_ok(0, &["service", "ls"]).unwrap().contains("web"));
}

#[test]
fn constraints_on_role_and_manager_labels() {
    let tb = services_cluster(3, &[]);
    create_ok(
        &tb,
        &[
            "--name",
            "mgr",
            "--replicas",
            "3",
            "--constraint",
            "node.role==manager",
            "busybox",
            "sleep",
            "600",
        ],
    );
    assert_eq!(
        per_node(&tb, "mgr"),
        HashMap::from([("node1".to_string(), 3)])
    );

    tb.cli_ok(0, &["node", "update", "--label-add", "zone=a", "node2"])
        .unwrap();
    create_ok(
        &tb,
        &[
            "--name",
            "zoned",
            "--replicas",
            "3",
            "--constraint",
            "node.labels.zone==a",
            "busybox",
            "sleep",
            "600",
        ],
    );
    assert_eq!(
        per_node(&tb, "zoned"),
        HashMap::from([("node2".to_string(), 3)])
    );

    // Removing the label moves nothing that runs, but new tasks avoid the node.
    tb.cli_ok(0, &["node", "update", "--label-rm", "zone", "node2"])
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        per_node(&tb, "zoned"),
        HashMap::from([("node2".to_string(), 3)])
    );
    let out = tb.cli(0, &["service", "scale", "zoned=4"]);
    assert!(!out.success, "cannot converge: {}", out.stdout);
    assert!(
        out.stderr.contains("no suitable node") && out.stderr.contains("constraints"),
        "{}",
        out.stderr
    );
}

#[test]
fn engine_labels_do_not_satisfy_node_label_constraints() {
    let mut tb = Testbed::new(std::path::Path::new(env!("CARGO_BIN_EXE_shoal"))).unwrap();
    tb.add_node().unwrap();
    tb.daemon_args = vec!["--label".into(), "zone=a".into()];
    tb.add_node().unwrap();
    tb.init(0, &[]).unwrap();
    tb.join_worker(1, 0).unwrap();
    wait_ready(&tb, 2);
    import_busybox(&tb, 1);
    let out = create(
        &tb,
        &[
            "--name",
            "z",
            "--constraint",
            "node.labels.zone==a",
            "busybox",
            "sleep",
            "600",
        ],
    );
    assert!(
        !out.success && out.stderr.contains("no suitable node"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert!(per_node(&tb, "z").is_empty());
    // The self-reported label is usable, as what it is.
    create_ok(
        &tb,
        &[
            "--name",
            "e",
            "--constraint",
            "engine.labels.zone==a",
            "busybox",
            "sleep",
            "600",
        ],
    );
    assert_eq!(
        per_node(&tb, "e"),
        HashMap::from([("node2".to_string(), 1)])
    );
}

#[test]
fn spread_preference_over_zones() {
    let tb = services_cluster(3, &[]);
    for (n, z) in [("node1", "a"), ("node2", "a"), ("node3", "b")] {
        tb.cli_ok(
            0,
            &["node", "update", "--label-add", &format!("zone={z}"), n],
        )
        .unwrap();
    }
    create_ok(
        &tb,
        &[
            "--name",
            "s",
            "--replicas",
            "4",
            "--placement-pref",
            "spread=node.labels.zone",
            "busybox",
            "sleep",
            "600",
        ],
    );
    let m = per_node(&tb, "s");
    assert_eq!(m.get("node3"), Some(&2), "half in zone b: {m:?}");
}

#[test]
fn max_replicas_per_node_leaves_one_pending_with_the_reason() {
    let tb = services_cluster(3, &[]);
    let out = create(
        &tb,
        &[
            "--name",
            "one",
            "--replicas",
            "4",
            "--replicas-max-per-node",
            "1",
            "busybox",
            "sleep",
            "600",
        ],
    );
    assert!(!out.success);
    assert!(
        out.stderr.contains("max replicas per node"),
        "{}",
        out.stderr
    );
    let tasks = running(&tb, "one");
    assert_eq!(
        tasks
            .iter()
            .filter(|t| t["CurrentState"] == "Running")
            .count(),
        3
    );
    let pending: Vec<_> = tasks
        .iter()
        .filter(|t| t["CurrentState"] == "Pending")
        .collect();
    assert_eq!(pending.len(), 1, "{tasks:?}");
    assert!(
        pending[0]["Error"]
            .as_str()
            .unwrap()
            .starts_with("no suitable node ("),
        "{:?}",
        pending[0]
    );
    let table = tb.cli_ok(0, &["service", "ps", "one"]).unwrap();
    assert!(
        table.contains("Pending") && table.contains("no suitable node"),
        "{table}"
    );
}

#[test]
fn global_service_follows_nodes() {
    let mut tb = services_cluster(3, &[]);
    create_ok(
        &tb,
        &[
            "--name", "agent", "--mode", "global", "busybox", "sleep", "600",
        ],
    );
    assert_eq!(per_node(&tb, "agent").len(), 3);
    let ls = tb.cli_ok(0, &["service", "ls"]).unwrap();
    assert!(ls.contains("global") && ls.contains("3/3"), "{ls}");
    let names: Vec<String> = running(&tb, "agent")
        .iter()
        .map(|t| t["Name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("agent.") && n.len() == "agent.".len() + 25),
        "{names:?}"
    );

    // A fourth node joins: it gets one.
    let i = tb.add_node().unwrap();
    import_busybox(&tb, i);
    tb.join_worker(i, 0).unwrap();
    wait_for(T, || (per_node(&tb, "agent").len() == 4).then_some(())).unwrap_or_else(|| {
        panic!(
            "4th node gets a task: {:?}\n{}",
            per_node(&tb, "agent"),
            tb.all_logs()
        )
    });

    // Draining a node removes its task.
    tb.cli_ok(0, &["node", "update", "--availability", "drain", "node2"])
        .unwrap();
    wait_for(T, || {
        (!per_node(&tb, "agent").contains_key("node2") && tb.processes_named(1, "sleep") == 0)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("drained node loses its task: {:?}", per_node(&tb, "agent")));
    assert_eq!(per_node(&tb, "agent").len(), 3);
}

#[test]
fn drained_node_tasks_move_elsewhere() {
    let tb = services_cluster(3, &[]);
    create_ok(
        &tb,
        &[
            "--name",
            "web",
            "--replicas",
            "6",
            "busybox",
            "sleep",
            "600",
        ],
    );
    tb.cli_ok(0, &["node", "update", "--availability", "drain", "node3"])
        .unwrap();
    wait_for(T, || {
        let m = per_node(&tb, "web");
        (m.values().sum::<usize>() == 6
            && !m.contains_key("node3")
            && tb.processes_named(2, "sleep") == 0)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("moved off node3: {:?}", per_node(&tb, "web")));
    let ls = tb.cli_ok(0, &["node", "ls"]).unwrap();
    assert!(ls.contains("Drain"), "{ls}");
    // Pause: nothing new lands there, running tasks stay.
    tb.cli_ok(0, &["node", "update", "--availability", "active", "node3"])
        .unwrap();
    tb.cli_ok(0, &["node", "update", "--availability", "pause", "node2"])
        .unwrap();
    tb.cli_ok(0, &["service", "scale", "web=8"]).unwrap();
    let m = per_node(&tb, "web");
    assert_eq!(m.values().sum::<usize>(), 8);
    assert!(
        m.get("node2").copied().unwrap_or(0) <= 3,
        "paused node got nothing new: {m:?}"
    );
}

#[test]
fn a_lost_worker_has_its_replicas_replaced() {
    let mut tb = services_cluster(3, &["--dispatcher-heartbeat", "1s"]);
    create_ok(
        &tb,
        &[
            "--name",
            "web",
            "--replicas",
            "6",
            "busybox",
            "sleep",
            "600",
        ],
    );
    let before = per_node(&tb, "web");
    assert_eq!(before.get("node3"), Some(&2), "{before:?}");
    let lost = std::time::Instant::now();
    tb.kill_all(2).unwrap();
    wait_for(T, || {
        let m = per_node(&tb, "web");
        (m.values().sum::<usize>() == 6 && !m.contains_key("node3")).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "replaced elsewhere: {:?}\n{}",
            per_node(&tb, "web"),
            tb.all_logs()
        )
    });
    let took = lost.elapsed();
    assert!(
        took < Duration::from_secs(3 + 5),
        "within 3 heartbeats + scheduling and start: {took:?}"
    );
    assert_eq!(status_of(&tb, "node3"), "Down");
}

#[test]
fn unplaceable_and_malformed_services_are_reported() {
    let tb = services_cluster(2, &[]);
    let out = create(
        &tb,
        &[
            "--name",
            "big",
            "--reserve-memory",
            "100000g",
            "busybox",
            "sleep",
            "600",
        ],
    );
    assert!(
        !out.success && out.stderr.contains("insufficient memory"),
        "{}",
        out.stderr
    );
    let ps = tb
        .cli_ok(0, &["service", "ps", "big", "--no-trunc"])
        .unwrap();
    assert!(
        ps.contains("Pending") && ps.contains("insufficient memory"),
        "{ps}"
    );

    let before = tb.cli_ok(0, &["service", "ls", "-q"]).unwrap();
    for (c, why) in [
        ("node.zone==a", "unknown key"),
        ("node.labels.zone=a", "operator"),
        ("node.role==boss", "manager"),
    ] {
        let out = create(
            &tb,
            &["--name", "bad", "--constraint", c, "busybox", "true"],
        );
        assert!(!out.success, "{c}");
        assert!(
            out.stderr.contains(c) && out.stderr.to_lowercase().contains(why),
            "{c}: {}",
            out.stderr
        );
    }
    assert_eq!(
        tb.cli_ok(0, &["service", "ls", "-q"]).unwrap(),
        before,
        "nothing stored"
    );
    let out = create(&tb, &["--name", "big", "busybox", "true"]);
    assert!(
        !out.success && out.stderr.contains("already exists"),
        "{}",
        out.stderr
    );
}

#[test]
fn service_logs_and_update() {
    let tb = services_cluster(2, &[]);
    create_ok(
        &tb,
        &[
            "--name",
            "talk",
            "--replicas",
            "2",
            "-e",
            "WORD=first",
            "busybox",
            "sh",
            "-c",
            "echo said $WORD; sleep 600",
        ],
    );
    let logs = wait_for(T, || {
        let l = tb.cli_ok(0, &["service", "logs", "talk"]).ok()?;
        (l.lines().filter(|x| x.contains("said first")).count() == 2).then_some(l)
    })
    .unwrap_or_else(|| panic!("logs of both tasks"));
    assert!(
        logs.lines()
            .all(|l| l.starts_with("talk.") && l.contains("@node") && l.contains(" | ")),
        "{logs}"
    );

    tb.cli_ok(
        0,
        &["service", "update", "--env-add", "WORD=second", "talk"],
    )
    .unwrap();
    let tasks = running(&tb, "talk");
    assert_eq!(tasks.len(), 2);
    assert!(
        tasks
            .iter()
            .all(|t| t["SpecVersion"] == 2 && t["CurrentState"] == "Running"),
        "{tasks:?}"
    );
    let insp = tb.cli_ok(0, &["service", "inspect", "talk"]).unwrap();
    assert!(insp.contains("WORD=second"), "{insp}");
    let pretty = tb
        .cli_ok(0, &["service", "inspect", "--pretty", "talk"])
        .unwrap();
    assert!(pretty.contains("Replicas:\t2"), "{pretty}");
    // Older tasks stay listed as history.
    let ps = tb.cli_ok(0, &["service", "ps", "talk"]).unwrap();
    assert!(ps.contains("\\_ talk.1") && ps.contains("Shutdown"), "{ps}");
}

#[test]
fn updates_converge_with_a_node_down_or_paused() {
    let mut tb = services_cluster(3, &["--dispatcher-heartbeat", "1s"]);
    create_ok(
        &tb,
        &["--name", "g", "--mode", "global", "busybox", "sleep", "600"],
    );
    create_ok(
        &tb,
        &["--name", "r", "--replicas", "3", "busybox", "sleep", "600"],
    );
    tb.kill_all(2).unwrap();
    wait_for(T, || (status_of(&tb, "node3") == "Down").then_some(())).expect("node3 down");
    let started = std::time::Instant::now();
    // (Updated all at once: the time asserted is convergence, not the pacing.)
    let fast = ["--update-parallelism", "0", "--update-monitor", "500ms"];
    tb.cli_ok(
        0,
        &[
            &["service", "update"],
            &fast[..],
            &["--env-add", "X=1", "g"],
        ]
        .concat(),
    )
    .unwrap();
    tb.cli_ok(
        0,
        &[
            &["service", "update"],
            &fast[..],
            &["--env-add", "X=1", "r"],
        ]
        .concat(),
    )
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(per_node(&tb, "r").values().sum::<usize>(), 3);

    // A paused node keeps its global task through an update (and gets no new one).
    tb.cli_ok(0, &["node", "update", "--availability", "pause", "node2"])
        .unwrap();
    tb.cli_ok(0, &["service", "update", "--env-add", "Y=1", "g"])
        .unwrap();
    let m = per_node(&tb, "g");
    assert_eq!(m.get("node2"), Some(&1), "{m:?}");
    let on_node2: Vec<_> = running(&tb, "g")
        .into_iter()
        .filter(|t| t["Node"] == "node2")
        .collect();
    assert_eq!(on_node2.len(), 1, "{on_node2:?}");
    assert_eq!(
        on_node2[0]["SpecVersion"], 2,
        "the paused node keeps its older task: {on_node2:?}"
    );
}

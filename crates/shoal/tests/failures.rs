//! Issue #11: failures noticed in seconds with the default settings: a node whose
//! daemon dies is replaced once its session has been gone a moment; a node that goes
//! silent is Down within 5 s; a node that comes back stops what was replaced.

mod common;

use common::*;
use shoal_testbed::{wait_for, Testbed};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(40);

/// A cluster of `n` nodes with the default settings and busybox on every node.
fn default_cluster(n: usize) -> Testbed {
    let tb = cluster(n, &[]);
    for i in 0..n {
        import_busybox(&tb, i);
    }
    tb
}

/// Running tasks of `service` on nodes other than `not_on`.
fn running_elsewhere(tb: &Testbed, service: &str, not_on: &str) -> usize {
    tb.cli_ok(
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
    .unwrap()
    .lines()
    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
    .filter(|t| t["CurrentState"] == "Running" && t["Node"] != not_on)
    .count()
}

fn six_sleeps(tb: &Testbed) {
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "6",
            "--update-monitor",
            "0s",
            "busybox",
            "sleep",
            "100000",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    assert!(tb.processes_named(2, "sleep") > 0, "node3 runs some");
}

#[test]
fn a_killed_node_has_its_replicas_running_elsewhere_within_5s() {
    let mut tb = default_cluster(3);
    six_sleeps(&tb);
    let started = Instant::now();
    tb.kill_all(2).unwrap();
    wait_for(T, || {
        (running_elsewhere(&tb, "web", "node3") == 6).then_some(())
    })
    .unwrap_or_else(|| panic!("never replaced\n{}", tb.all_logs()));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "replaced after {took:?}");
    assert_eq!(status_of(&tb, "node3"), "Down");
}

#[test]
fn a_silent_node_is_down_within_5s_and_stops_its_stale_containers_when_back() {
    let tb = default_cluster(3);
    six_sleeps(&tb);
    let stale = tb.processes_named(2, "sleep");
    // Its packets are dropped: no connection reset, just silence.
    tb.cut(2).unwrap();
    let started = Instant::now();
    wait_for(T, || (status_of(&tb, "node3") == "Down").then_some(()))
        .unwrap_or_else(|| panic!("never down\n{}", tb.all_logs()));
    let took = started.elapsed();
    assert!(took <= Duration::from_secs(5), "down after {took:?}");
    wait_for(T, || {
        (running_elsewhere(&tb, "web", "node3") == 6).then_some(())
    })
    .expect("replaced elsewhere");
    assert_eq!(
        tb.processes_named(2, "sleep"),
        stale,
        "cut off, node3 still runs its old containers"
    );
    // Back: it learns its tasks were replaced and stops their containers.
    tb.heal(2).unwrap();
    wait_for(T, || (status_of(&tb, "node3") == "Ready").then_some(())).expect("ready again");
    wait_for(T, || (tb.processes_named(2, "sleep") == 0).then_some(()))
        .unwrap_or_else(|| panic!("stale containers left on node3\n{}", tb.all_logs()));
    assert_eq!(
        (0..3)
            .map(|i| tb.processes_named(i, "sleep"))
            .sum::<usize>(),
        6
    );
}

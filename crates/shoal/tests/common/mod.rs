//! Shared helpers for integration tests: a testbed of real nodes.
#![allow(dead_code)]

pub mod raw;
pub mod registry;

use shoal_testbed::{wait_for, Testbed};
use std::path::Path;
use std::time::Duration;

pub fn testbed(n: usize) -> Testbed {
    Testbed::with_nodes(Path::new(env!("CARGO_BIN_EXE_shoal")), n).expect("testbed")
}

/// A cluster: node 0 the manager, the rest workers, all Ready.
pub fn cluster(n: usize, init_flags: &[&str]) -> Testbed {
    let tb = testbed(n);
    tb.init(0, init_flags).expect("init");
    for i in 1..n {
        tb.join_worker(i, 0)
            .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    }
    wait_ready(&tb, n);
    tb
}

/// A cluster of `managers` managers (node1 inits, the others join with the manager
/// token) and then `workers` workers, all Ready, on a 1 s heartbeat.
pub fn ha_cluster(managers: usize, workers: usize) -> Testbed {
    let tb = testbed(managers + workers);
    tb.init(0, &["--dispatcher-heartbeat", "1s"]).unwrap();
    for i in 1..managers {
        join_manager(&tb, i, 0);
    }
    for i in managers..managers + workers {
        tb.join_worker(i, 0)
            .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    }
    wait_ready(&tb, managers + workers);
    tb
}

/// Joins node `i` as a manager through node `via`.
pub fn join_manager(tb: &Testbed, i: usize, via: usize) {
    let token = tb.cli_ok(via, &["join-token", "-q", "manager"]).unwrap();
    tb.cli_ok(i, &["join", "--token", token.trim(), &tb.nodes[via].addr()])
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
}

/// Whether any file under `dir` holds `needle`.
pub fn any_file_contains(dir: &Path, needle: &[u8]) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let ft = e.file_type().ok()?;
        if ft.is_dir() {
            if let Some(found) = any_file_contains(&p, needle) {
                return Some(found);
            }
        } else if ft.is_file() {
            let data = std::fs::read(&p).unwrap_or_default();
            if data.windows(needle.len()).any(|w| w == needle) {
                return Some(p);
            }
        }
    }
    None
}

/// `node ls --format json` on node `i`, parsed.
pub fn nodes(tb: &Testbed, i: usize) -> Vec<serde_json::Value> {
    let out = tb
        .cli_ok(i, &["node", "ls", "--format", "json"])
        .expect("node ls");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

pub fn ready_count(tb: &Testbed) -> usize {
    nodes(tb, 0)
        .iter()
        .filter(|n| n["Status"] == "Ready")
        .count()
}

pub fn wait_ready(tb: &Testbed, n: usize) {
    if wait_for(Duration::from_secs(10), || {
        (ready_count(tb) == n).then_some(())
    })
    .is_none()
    {
        panic!(
            "expected {n} Ready nodes, got:\n{}\n{}",
            tb.cli(0, &["node", "ls"]).stdout,
            tb.all_logs()
        );
    }
}

/// The status of the node with hostname `host`, seen from node 0.
pub fn status_of(tb: &Testbed, host: &str) -> String {
    nodes(tb, 0)
        .iter()
        .find(|n| n["Hostname"] == host)
        .map(|n| n["Status"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

pub fn info(tb: &Testbed, i: usize) -> serde_json::Value {
    serde_json::from_str(&tb.cli_ok(i, &["info", "--format", "json"]).expect("info"))
        .expect("info json")
}

/// A busybox root filesystem tarball, made from Debian's busybox-static.
pub fn busybox_tar(dir: &Path) -> std::path::PathBuf {
    shoal_testbed::busybox_rootfs_tar(dir).expect("busybox rootfs")
}

/// Imports busybox:latest on node `i`.
pub fn import_busybox(tb: &Testbed, i: usize) {
    let tar = busybox_tar(tb.dir());
    tb.cli_ok(
        i,
        &["image", "import", tar.to_str().unwrap(), "busybox:latest"],
    )
    .expect("image import");
}

/// Creates, on node 0's socket, a one-task busybox service `app` on a worker that runs
/// `cmd` and stops within 300 ms; returns its task's ID once it exists.
pub fn app_on_worker(tb: &Testbed, cmd: &[&str]) -> String {
    let mut args = vec![
        "service",
        "create",
        "--name",
        "app",
        "--constraint",
        "node.role==worker",
        "--stop-grace-period",
        "300ms",
        "busybox",
    ];
    args.extend_from_slice(cmd);
    tb.cli_ok(0, &args)
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    let task = tb.cli_ok(0, &["service", "ps", "-q", "app"]).unwrap();
    task.lines().next().unwrap().trim().to_string()
}

/// Creates, through node `via`, a service `name` of `replicas` busybox `sleep 3600`
/// tasks on workers only (stopping within 300 ms), and waits until it converges.
pub fn sleep_service_on_workers(tb: &Testbed, via: usize, name: &str, replicas: usize) {
    let replicas = replicas.to_string();
    tb.cli_ok(
        via,
        &[
            "service",
            "create",
            "--name",
            name,
            "--replicas",
            &replicas,
            "--constraint",
            "node.role==worker",
            "--stop-grace-period",
            "300ms",
            "busybox",
            "sleep",
            "3600",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
}

/// `task inspect` of `task` on node 0, parsed.
pub fn task(tb: &Testbed, task: &str) -> serde_json::Value {
    let out = tb
        .cli_ok(0, &["task", "inspect", task])
        .expect("task inspect");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v[0].clone()
}

/// Waits until the task's state is `state` (lower case), returning the task.
pub fn wait_task_state(
    tb: &Testbed,
    id: &str,
    state: &str,
    timeout: Duration,
) -> serde_json::Value {
    wait_for(timeout, || {
        let t = task(tb, id);
        (t["Status"]["State"] == state).then_some(t)
    })
    .unwrap_or_else(|| {
        panic!(
            "task {id} never {state}: {}\n{}",
            task(tb, id),
            tb.all_logs()
        )
    })
}

/// Waits (a few seconds at most) until node `i` runs exactly `n` `sleep` processes. A
/// container is reported running once its process exists, a moment before it has exec'd
/// its command, so counting right after a command returns can be early.
pub fn sleeps_become(tb: &shoal_testbed::Testbed, i: usize, n: usize) {
    wait_for(Duration::from_secs(5), || {
        (tb.processes_named(i, "sleep") == n).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "node{} runs {} sleep processes, not {n}\n{}",
            i + 1,
            tb.processes_named(i, "sleep"),
            tb.all_logs()
        )
    });
}

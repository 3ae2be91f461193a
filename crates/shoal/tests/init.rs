//! Issue #11: an init (tini) runs as PID 1 in every container by default: it forwards
//! signals to the workload and reaps zombies; `--no-init` runs the workload as PID 1.

mod common;

use common::*;
use shoal_testbed::{wait_for, Testbed};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn create(tb: &Testbed, args: &[&str]) {
    let mut a = vec!["service", "create"];
    a.extend_from_slice(args);
    let out = tb.cli(0, &a);
    assert!(
        out.success,
        "service create {args:?}: {}{}\n{}",
        out.stdout,
        out.stderr,
        tb.all_logs()
    );
}

/// Seconds from `service rm` until no `sleep` runs on any node.
fn remove_and_time(tb: &Testbed, name: &str) -> Duration {
    let started = Instant::now();
    tb.cli_ok(0, &["service", "rm", name]).unwrap();
    wait_for(Duration::from_secs(40), || {
        (0..tb.nodes.len())
            .all(|i| tb.processes_named(i, "sleep") == 0)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("containers never gone\n{}", tb.all_logs()));
    started.elapsed()
}

/// Zombie processes whose parent is in node `i`'s namespace (a zombie itself has no
/// namespaces left to list it by).
fn zombies(tb: &Testbed, i: usize) -> usize {
    let parents: std::collections::HashSet<u32> = tb.pids(i).into_iter().collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // After the name: state, then the parent's pid.
            let mut f = stat.rsplit(')').next().unwrap_or("").split_whitespace();
            let zombie = f.next() == Some("Z");
            let ppid = f.next().and_then(|v| v.parse::<u32>().ok());
            zombie && ppid.is_some_and(|pp| parents.contains(&pp))
        })
        .count()
}

#[test]
fn sleep_stops_at_once_under_the_init_and_waits_its_grace_without_it() {
    let tb = cluster(2, &[]);
    import_busybox(&tb, 0);
    import_busybox(&tb, 1);
    // busybox sleep ignores SIGTERM as PID 1; under tini it is PID 2 and dies of it.
    create(
        &tb,
        &[
            "--name",
            "quick",
            "--replicas",
            "10",
            "busybox",
            "sleep",
            "100000",
        ],
    );
    let inspect = tb.cli_ok(0, &["service", "inspect", "quick"]).unwrap();
    assert!(inspect.contains("\"Init\": true"), "{inspect}");
    let pretty = tb
        .cli_ok(0, &["service", "inspect", "--pretty", "quick"])
        .unwrap();
    assert!(pretty.contains("Init:\t\ttrue"), "{pretty}");
    let took = remove_and_time(&tb, "quick");
    assert!(
        took < Duration::from_secs(4),
        "10 sleeps under an init stop at SIGTERM, well within the 10 s grace: {took:?}"
    );

    // --no-init keeps the old behaviour: sleep as PID 1 waits out its grace period.
    create(
        &tb,
        &[
            "--name",
            "slow",
            "--replicas",
            "2",
            "--no-init",
            "--stop-grace-period",
            "2s",
            "busybox",
            "sleep",
            "100000",
        ],
    );
    let inspect = tb.cli_ok(0, &["service", "inspect", "slow"]).unwrap();
    assert!(inspect.contains("\"Init\": false"), "{inspect}");
    let took = remove_and_time(&tb, "slow");
    assert!(
        took >= Duration::from_millis(1900),
        "without an init the grace period runs out first: {took:?}"
    );

    // A workload that really ignores SIGTERM still gets its grace period under the init.
    create(
        &tb,
        &[
            "--name",
            "stubborn",
            "--replicas",
            "1",
            "--stop-grace-period",
            "2s",
            "busybox",
            "sh",
            "-c",
            "trap '' TERM; sleep 100000 & wait; wait",
        ],
    );
    let took = remove_and_time(&tb, "stubborn");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(10),
        "a workload ignoring SIGTERM is killed after its grace: {took:?}"
    );
}

#[test]
fn the_init_reaps_orphans_and_without_it_zombies_stay() {
    let tb = cluster(1, &[]);
    import_busybox(&tb, 0);
    // A subshell leaves an orphan `sleep 1` and exits; the orphan goes to PID 1. Under
    // tini it is reaped when it ends; with `sleep` as PID 1 it stays a zombie.
    let script = "(sleep 1 &); exec sleep 100000";
    create(&tb, &["--name", "reaped", "busybox", "sh", "-c", script]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(zombies(&tb, 0), 0, "no zombies under the init");
    tb.cli_ok(0, &["service", "rm", "reaped"]).unwrap();
    wait_for(T, || (tb.processes_named(0, "sleep") == 0).then_some(())).expect("containers gone");

    create(
        &tb,
        &[
            "--name",
            "zombies",
            "--no-init",
            "busybox",
            "sh",
            "-c",
            script,
        ],
    );
    let z = wait_for(Duration::from_secs(10), || {
        let z = zombies(&tb, 0);
        (z > 0).then_some(z)
    });
    assert!(
        z.is_some(),
        "without an init the orphan stays a zombie (the test can tell)"
    );
}

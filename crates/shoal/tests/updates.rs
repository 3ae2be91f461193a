//! Issue #11: rolling updates, rollbacks, restart policies and jobs, on real nodes with
//! real containers. Running containers are sampled on every node throughout.

mod common;

use common::*;
use shoal_testbed::{wait_for, CliOutput, Testbed};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// A cluster of `n` nodes (node1 the manager) with busybox on every node.
fn services_cluster(n: usize) -> Testbed {
    let tb = cluster(n, &["--dispatcher-heartbeat", "1s"]);
    for i in 0..n {
        import_busybox(&tb, i);
    }
    tb
}

fn cli(tb: &Testbed, args: &[&str]) -> CliOutput {
    tb.cli(0, args)
}

fn ok(tb: &Testbed, args: &[&str]) -> String {
    let out = cli(tb, args);
    assert!(
        out.success,
        "{args:?}: {}{}\n{}",
        out.stdout,
        out.stderr,
        tb.all_logs()
    );
    out.stdout
}

/// `sleep` processes (one per container) on every node, summed.
fn sleeps(tb: &Testbed) -> usize {
    (0..tb.nodes.len())
        .map(|i| tb.processes_named(i, "sleep"))
        .sum()
}

/// Runs `f` while sampling the running containers every 10 ms; returns `f`'s result
/// and the samples.
fn sampled<R>(tb: &Testbed, f: impl FnOnce() -> R) -> (R, Vec<usize>) {
    let done = AtomicBool::new(false);
    let samples = Mutex::new(Vec::new());
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                let n = sleeps(tb);
                samples.lock().unwrap().push(n);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let r = f();
        done.store(true, Ordering::SeqCst);
        r
    });
    (r, samples.into_inner().unwrap())
}

/// Dips below `full` in a series of samples.
fn dips(samples: &[usize], full: usize) -> usize {
    let mut n = 0;
    let mut below = false;
    for &s in samples {
        if s < full && !below {
            n += 1;
        }
        below = s < full;
    }
    n
}

fn inspect(tb: &Testbed, service: &str) -> serde_json::Value {
    let out = ok(tb, &["service", "inspect", service]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone()
}

/// `service ps --format json`, every task.
fn tasks(tb: &Testbed, service: &str) -> Vec<serde_json::Value> {
    ok(tb, &["service", "ps", service, "--format", "json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn running_images(tb: &Testbed, service: &str) -> Vec<String> {
    tasks(tb, service)
        .into_iter()
        .filter(|t| t["CurrentState"] == "Running")
        .map(|t| t["Image"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn rolling_updates_keep_the_service_up_in_waves() {
    let tb = services_cluster(3);
    ok(
        &tb,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "6",
            "--update-monitor",
            "1s",
            "busybox",
            "sleep",
            "100000",
        ],
    );
    assert_eq!(sleeps(&tb), 6);

    // Stop-first, two at a time: three waves, never fewer than 4 running.
    let (out, samples) = sampled(&tb, || {
        ok(
            &tb,
            &[
                "service",
                "update",
                "--update-parallelism",
                "2",
                "--env-add",
                "V=2",
                "web",
            ],
        )
    });
    let min = samples.iter().min().copied().unwrap();
    assert!(min >= 4, "never fewer than 4 running: {samples:?}");
    assert_eq!(dips(&samples, 6), 3, "three waves: {samples:?}");
    assert!(out.contains("web: 6/6 updated"), "{out}");
    assert!(out.contains("converged"), "{out}");
    let svc = inspect(&tb, "web");
    assert_eq!(svc["UpdateStatus"]["State"], "completed", "{svc}");
    assert_eq!(svc["Spec"]["UpdateConfig"]["Parallelism"], 2);
    let pretty = ok(&tb, &["service", "inspect", "--pretty", "web"]);
    assert!(pretty.contains("State:\t\tcompleted"), "{pretty}");

    // Start-first: the new task runs before the old one stops; never fewer than 6.
    let (_, samples) = sampled(&tb, || {
        ok(
            &tb,
            &[
                "service",
                "update",
                "--update-order",
                "start-first",
                "--env-add",
                "V=3",
                "web",
            ],
        )
    });
    let min = samples.iter().min().copied().unwrap();
    let max = samples.iter().max().copied().unwrap();
    assert!(min >= 6, "never fewer than 6 running: {samples:?}");
    assert!(max <= 8, "at most 2 extra at once: {samples:?}");
    assert!(
        max > 6,
        "new tasks started before old ones stopped: {samples:?}"
    );
    wait_for(T, || (sleeps(&tb) == 6).then_some(())).expect("6 left");

    // A rolling restart: every task replaced, the service up throughout.
    let before: Vec<String> = tasks(&tb, "web")
        .into_iter()
        .filter(|t| t["DesiredState"] == "Running")
        .map(|t| t["ID"].as_str().unwrap().to_string())
        .collect();
    let (_, samples) = sampled(&tb, || ok(&tb, &["service", "restart", "web"]));
    assert!(samples.iter().min().copied().unwrap() >= 6, "{samples:?}");
    let after: Vec<String> = tasks(&tb, "web")
        .into_iter()
        .filter(|t| t["DesiredState"] == "Running")
        .map(|t| t["ID"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(after.len(), 6);
    assert!(
        after.iter().all(|id| !before.contains(id)),
        "every task replaced"
    );
}

#[test]
fn a_bad_image_pauses_the_update_or_rolls_it_back() {
    let tb = services_cluster(3);
    // An image from a registry on this machine that does not answer: the pull fails
    // at once, without any traffic leaving the machine.
    let bad = "127.0.0.1:9/nosuch:1";
    ok(
        &tb,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "6",
            "--update-monitor",
            "1s",
            "busybox",
            "sleep",
            "100000",
        ],
    );
    let out = cli(&tb, &["service", "update", "--image", bad, "web"]);
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr.contains("update paused") && out.stderr.contains("nosuch"),
        "{}",
        out.stderr
    );
    // 5 of 6 keep running the old image; the update is paused with the pull error.
    std::thread::sleep(Duration::from_secs(2));
    let images = running_images(&tb, "web");
    assert_eq!(images, vec!["busybox"; 5], "{:?}", tasks(&tb, "web"));
    assert_eq!(sleeps(&tb), 5);
    let svc = inspect(&tb, "web");
    let status = &svc["UpdateStatus"];
    assert_eq!(status["State"], "paused", "{svc}");
    let msg = status["Message"].as_str().unwrap();
    assert!(
        msg.contains("web.") && msg.contains("cannot pull image") && msg.contains("nosuch"),
        "{msg}"
    );
    // A good image completes.
    ok(
        &tb,
        &["service", "update", "--image", "busybox:latest", "web"],
    );
    assert_eq!(running_images(&tb, "web"), vec!["busybox:latest"; 6]);
    assert_eq!(inspect(&tb, "web")["UpdateStatus"]["State"], "completed");

    // With --update-failure-action rollback the service goes back by itself.
    ok(
        &tb,
        &[
            "service",
            "create",
            "--name",
            "auto",
            "--replicas",
            "2",
            "--update-failure-action",
            "rollback",
            "--update-monitor",
            "1s",
            "busybox",
            "sleep",
            "100000",
        ],
    );
    let out = cli(&tb, &["service", "update", "--image", bad, "auto"]);
    assert!(!out.success, "{}", out.stdout);
    assert!(out.stderr.contains("rolled back"), "{}", out.stderr);
    let svc = wait_for(T, || {
        let s = inspect(&tb, "auto");
        (s["UpdateStatus"]["State"] == "rollback_completed").then_some(s)
    })
    .unwrap_or_else(|| panic!("rollback never completed: {}", inspect(&tb, "auto")));
    assert_eq!(
        svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        "busybox"
    );
    let msg = svc["UpdateStatus"]["Message"].as_str().unwrap();
    assert!(
        msg.contains("rolled back") && msg.contains("nosuch"),
        "{msg}"
    );
    wait_for(T, || {
        (running_images(&tb, "auto") == vec!["busybox"; 2]).then_some(())
    })
    .expect("both run the old image again");
}

#[test]
fn rollback_restores_the_previous_image_env_and_update_settings() {
    let tb = services_cluster(2);
    ok(
        &tb,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "2",
            "-e",
            "A=1",
            "--update-monitor",
            "500ms",
            "busybox",
            "sleep",
            "100000",
        ],
    );
    ok(
        &tb,
        &[
            "service",
            "update",
            "--image",
            "busybox:latest",
            "--env-add",
            "A=2",
            "--update-parallelism",
            "3",
            "web",
        ],
    );
    let out = ok(&tb, &["service", "rollback", "web"]);
    assert!(out.contains("converged"), "{out}");
    let svc = inspect(&tb, "web");
    let c = &svc["Spec"]["TaskTemplate"]["ContainerSpec"];
    assert_eq!(c["Image"], "busybox");
    assert_eq!(c["Env"], serde_json::json!(["A=1"]));
    assert_eq!(svc["Spec"]["UpdateConfig"]["Parallelism"], 1);
    assert_eq!(svc["UpdateStatus"]["State"], "rollback_completed");
    assert_eq!(running_images(&tb, "web"), vec!["busybox"; 2]);
    // update --rollback is the same: back to the newer spec (one level of history).
    ok(&tb, &["service", "update", "--rollback", "web"]);
    let c = inspect(&tb, "web")["Spec"]["TaskTemplate"]["ContainerSpec"].clone();
    assert_eq!(c["Env"], serde_json::json!(["A=2"]));
}

/// Seconds after `start` at which the service had 1, 2, 3, ... tasks, sampled until
/// `until` has passed.
fn task_count_times(tb: &Testbed, service: &str, start: Instant, until: Duration) -> Vec<f64> {
    let mut seen = Vec::new();
    while start.elapsed() < until {
        let n = tasks(tb, service).len();
        while seen.len() < n {
            seen.push(start.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    seen
}

#[test]
fn restart_policies_count_attempts_and_back_off() {
    let tb = services_cluster(1);
    let start = Instant::now();
    ok(
        &tb,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "fails",
            "--restart-condition",
            "on-failure",
            "--restart-max-attempts",
            "3",
            "--restart-delay",
            "1s",
            "busybox",
            "sh",
            "-c",
            "exit 1",
        ],
    );
    // Started exactly 4 times, each after a delay that doubles: 1 s, 2 s, 4 s.
    let times = task_count_times(&tb, "fails", start, Duration::from_secs(14));
    assert_eq!(times.len(), 4, "{times:?} {:?}", tasks(&tb, "fails"));
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, want) in gaps.iter().zip([1.0, 2.0, 4.0]) {
        assert!(*gap >= want - 0.15, "gap {gap} < delay {want}: {gaps:?}");
    }
    assert!(tasks(&tb, "fails")
        .iter()
        .all(|t| t["CurrentState"] == "Failed"));

    // any: a task that exits 0 is restarted too.
    ok(
        &tb,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "done",
            "--restart-delay",
            "200ms",
            "busybox",
            "true",
        ],
    );
    wait_for(T, || (tasks(&tb, "done").len() >= 3).then_some(())).expect("restarted after exit 0");
    // on-failure: it is not.
    ok(
        &tb,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "once",
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "200ms",
            "busybox",
            "true",
        ],
    );
    wait_for(T, || {
        tasks(&tb, "once")
            .iter()
            .any(|t| t["CurrentState"] == "Complete")
            .then_some(())
    })
    .expect("complete");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(tasks(&tb, "once").len(), 1);
}

#[test]
fn a_crashing_service_makes_create_fail_with_its_output() {
    let tb = services_cluster(1);
    let out = cli(
        &tb,
        &[
            "service",
            "create",
            "--name",
            "crash",
            "busybox",
            "sh",
            "-c",
            "echo address already in use >&2; sleep 1; exit 3",
        ],
    );
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr.contains("non-zero exit (3)") && out.stderr.contains("address already in use"),
        "{}",
        out.stderr
    );
}

#[test]
fn jobs_run_to_completion_within_their_concurrency() {
    let tb = services_cluster(2);
    let (out, samples) = sampled(&tb, || {
        ok(
            &tb,
            &[
                "service",
                "create",
                "--name",
                "batch",
                "--mode",
                "replicated-job",
                "--replicas",
                "5",
                "--max-concurrent",
                "2",
                "busybox",
                "sleep",
                "1",
            ],
        )
    });
    assert!(out.contains("job complete"), "{out}");
    let max = samples.iter().max().copied().unwrap();
    assert!(max <= 2 && max > 0, "at most 2 at once: {samples:?}");
    let done: Vec<_> = tasks(&tb, "batch")
        .into_iter()
        .filter(|t| t["CurrentState"] == "Complete")
        .collect();
    assert_eq!(done.len(), 5);
    let ls = ok(&tb, &["service", "ls"]);
    assert!(
        ls.contains("replicated-job") && ls.contains("(5/5 completed)"),
        "{ls}"
    );
    // No completed task is restarted.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(tasks(&tb, "batch").len(), 5);

    // update --force runs it again.
    ok(&tb, &["service", "update", "--force", "batch"]);
    let done = tasks(&tb, "batch")
        .into_iter()
        .filter(|t| t["CurrentState"] == "Complete")
        .count();
    assert_eq!(done, 10, "{:?}", tasks(&tb, "batch"));
    let svc = inspect(&tb, "batch");
    assert_eq!(svc["JobStatus"]["JobIteration"]["Index"], 1);

    // A failing job task is retried under the restart policy, then given up.
    let out = cli(
        &tb,
        &[
            "service",
            "create",
            "--name",
            "flaky",
            "--mode",
            "replicated-job",
            "--restart-delay",
            "200ms",
            "--restart-max-attempts",
            "2",
            "busybox",
            "sh",
            "-c",
            "exit 4",
        ],
    );
    assert!(!out.success);
    assert!(out.stderr.contains("will not be retried"), "{}", out.stderr);
    assert_eq!(tasks(&tb, "flaky").len(), 3, "the first run and 2 retries");

    // A global job: one completion per node.
    let out = ok(
        &tb,
        &[
            "service",
            "create",
            "--name",
            "each",
            "--mode",
            "global-job",
            "busybox",
            "true",
        ],
    );
    assert!(out.contains("job complete"), "{out}");
    let ls = ok(&tb, &["service", "ls"]);
    assert!(ls.contains("(2/2 completed)"), "{ls}");
}

#[test]
fn health_checks_fail_unhealthy_tasks_and_roll_back_a_bad_update() {
    let tb = services_cluster(1);
    // Healthy until /tmp/bad appears, 4 s after the start.
    let out = ok(
        &tb,
        &[
            "service",
            "create",
            "--name",
            "hc",
            "--health-cmd",
            "test ! -f /tmp/bad",
            "--health-interval",
            "1s",
            "--health-retries",
            "2",
            "--restart-delay",
            "500ms",
            "--update-monitor",
            "1s",
            "busybox",
            "sh",
            "-c",
            "sleep 4; touch /tmp/bad; exec sleep 100000",
        ],
    );
    assert!(out.contains("converged"), "{out}");
    let table = ok(&tb, &["service", "ps", "hc"]);
    assert!(table.contains("(healthy)"), "{table}");
    // Then the check fails twice: the task is failed and replaced.
    let failed = wait_for(T, || {
        tasks(&tb, "hc").into_iter().find(|t| {
            t["CurrentState"] == "Failed"
                && t["Error"].as_str().unwrap().contains("unhealthy container")
        })
    })
    .unwrap_or_else(|| panic!("never failed: {:?}", tasks(&tb, "hc")));
    let id = failed["ID"].as_str().unwrap();
    let t = task(&tb, id);
    assert_eq!(t["Status"]["Health"]["Status"], "unhealthy", "{t}");
    assert!(
        t["Status"]["Health"]["Output"]
            .as_str()
            .unwrap()
            .contains("exit code 1"),
        "{t}"
    );
    wait_for(T, || {
        tasks(&tb, "hc")
            .iter()
            .any(|t| t["CurrentState"] == "Running" && t["ID"] != id)
            .then_some(())
    })
    .expect("replaced");

    // A check that hangs is cut off at its timeout and counts as a failure.
    ok(
        &tb,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "slow",
            "--health-cmd",
            "sleep 30",
            "--health-timeout",
            "1s",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
            "busybox",
            "sleep",
            "100000",
        ],
    );
    let started = Instant::now();
    let failed = wait_for(T, || {
        tasks(&tb, "slow")
            .into_iter()
            .find(|t| t["CurrentState"] == "Failed")
    })
    .unwrap_or_else(|| panic!("never failed: {:?}", tasks(&tb, "slow")));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let t = task(&tb, failed["ID"].as_str().unwrap());
    let output = t["Status"]["Health"]["Output"].as_str().unwrap();
    assert!(output.contains("timed out after 1s"), "{t}");
    ok(&tb, &["service", "rm", "slow"]);

    // An update whose check never passes rolls back.
    ok(
        &tb,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "2",
            "--update-monitor",
            "1s",
            "--update-failure-action",
            "rollback",
            "busybox",
            "sleep",
            "100000",
        ],
    );
    let out = cli(
        &tb,
        &[
            "service",
            "update",
            "--health-cmd",
            "false",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
            "web",
        ],
    );
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr.contains("rolled back"),
        "{}{}\n{:?}\n{}",
        out.stdout,
        out.stderr,
        tasks(&tb, "web"),
        inspect(&tb, "web")
    );
    let svc = wait_for(T, || {
        let s = inspect(&tb, "web");
        (s["UpdateStatus"]["State"] == "rollback_completed").then_some(s)
    })
    .unwrap_or_else(|| panic!("rollback never completed: {}", inspect(&tb, "web")));
    let msg = svc["UpdateStatus"]["Message"].as_str().unwrap();
    assert!(msg.contains("unhealthy"), "{msg}");
    assert!(
        svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Healthcheck"].is_null(),
        "{svc}"
    );
}

/// `service ps --format json` through node `via`.
fn tasks_via(tb: &Testbed, via: usize, service: &str) -> Option<Vec<serde_json::Value>> {
    let out = tb.cli(via, &["service", "ps", service, "--format", "json"]);
    out.success.then(|| {
        out.stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    })
}

#[test]
fn a_rolling_update_goes_on_where_it_was_after_the_leader_is_killed() {
    let mut tb = ha_cluster(3, 2);
    for i in 3..5 {
        import_busybox(&tb, i);
    }
    let workers = |tb: &Testbed| {
        (3..5)
            .map(|i| tb.processes_named(i, "sleep"))
            .sum::<usize>()
    };
    ok(
        &tb,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "6",
            "--constraint",
            "node.role==worker",
            "--update-monitor",
            "2s",
            "busybox",
            "sleep",
            "100000",
        ],
    );
    let leader = tb.leader_index(0).expect("a leader");
    let other = (0..3).find(|&i| i != leader).unwrap();
    let done = AtomicBool::new(false);
    let samples = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                samples.lock().unwrap().push(workers(&tb));
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        ok(&tb, &["service", "update", "-d", "--env-add", "V=2", "web"]);
        // Two slots updated (one at a time, each running 2 s), then the leader dies.
        wait_for(T, || {
            let n = tasks_via(&tb, other, "web")?
                .iter()
                .filter(|t| t["SpecVersion"] == 2 && t["CurrentState"] == "Running")
                .count();
            (n >= 2).then_some(())
        })
        .expect("two slots updated");
        done.store(true, Ordering::SeqCst);
    });
    let samples_before = samples.lock().unwrap().clone();
    tb.kill(leader).unwrap();
    let killed_at = Instant::now();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                samples.lock().unwrap().push(workers(&tb));
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        wait_for(Duration::from_secs(90), || {
            let out = tb.cli(other, &["service", "inspect", "web"]);
            let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
            (v[0]["UpdateStatus"]["State"] == "completed").then_some(())
        })
        .unwrap_or_else(|| panic!("the update never completed\n{}", tb.all_logs()));
        done.store(true, Ordering::SeqCst);
    });
    let samples = samples.into_inner().unwrap();
    assert!(samples_before.len() > 10);
    let min = samples.iter().min().copied().unwrap();
    assert!(min >= 5, "never more than one slot at a time: {samples:?}");
    let tasks = tasks_via(&tb, other, "web").unwrap();
    let new: Vec<&serde_json::Value> = tasks.iter().filter(|t| t["SpecVersion"] == 2).collect();
    let mut slots: Vec<u64> = new.iter().map(|t| t["Slot"].as_u64().unwrap()).collect();
    slots.sort();
    assert_eq!(
        slots,
        vec![1, 2, 3, 4, 5, 6],
        "each slot updated exactly once: {tasks:?}"
    );
    assert!(
        new.iter().all(|t| t["CurrentState"] == "Running"),
        "{new:?}"
    );
    assert!(
        killed_at.elapsed() > Duration::from_secs(4),
        "the rest went on after"
    );
}

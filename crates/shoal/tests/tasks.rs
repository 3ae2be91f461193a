//! Issue #3: tasks run as real OCI containers (runc) on testbed nodes.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn run_task(tb: &shoal_testbed::Testbed, args: &[&str]) -> String {
    let mut a = vec!["task", "run"];
    a.extend_from_slice(args);
    let out = tb.cli(0, &a);
    assert!(
        out.success,
        "task run {args:?}: {}{}\n{}",
        out.stdout,
        out.stderr,
        tb.all_logs()
    );
    out.stdout.lines().next().unwrap().trim().to_string()
}

#[test]
fn container_runs_on_a_worker_and_its_output_reaches_the_manager() {
    let tb = cluster(2, &[]);
    import_busybox(&tb, 1);
    let id = run_task(
        &tb,
        &[
            "--node",
            "node2",
            "--name",
            "hello",
            "busybox",
            "sh",
            "-c",
            "echo hello from $(hostname); echo oops >&2; sleep 60",
        ],
    );
    let t = wait_task_state(&tb, &id, "running", T);
    assert_eq!(t["Name"], "hello");
    assert!(t["Status"]["ContainerStatus"]["PID"].as_u64().unwrap() > 0);
    let logs = shoal_testbed::wait_for(T, || {
        let o = tb.cli(0, &["task", "logs", &id]);
        (o.success && o.stdout.contains("hello from")).then_some(o)
    })
    .unwrap_or_else(|| panic!("logs never arrived\n{}", tb.all_logs()));
    assert!(
        logs.stdout.contains(&format!("hello from {}", &id[..12])),
        "{}",
        logs.stdout
    );
    assert!(
        logs.stderr.contains("oops"),
        "stderr kept apart: {}",
        logs.stderr
    );
    let ts = tb
        .cli_ok(0, &["task", "logs", "--timestamps", "hello"])
        .unwrap();
    assert!(ts.starts_with("20"), "timestamps: {ts}");

    let ls = tb.cli_ok(0, &["task", "ls"]).unwrap();
    assert!(ls.contains("node2") && ls.contains("Running"), "{ls}");

    // Removal stops the container and leaves nothing behind on the node.
    tb.cli_ok(0, &["task", "rm", "hello"]).unwrap();
    let dir = tb.nodes[1].state_dir.join("containers").join(&id);
    shoal_testbed::wait_for(T, || (!dir.exists()).then_some(()))
        .unwrap_or_else(|| panic!("container dir removed\n{}", tb.all_logs()));
    assert!(!tb.cli_ok(0, &["task", "ls", "-q"]).unwrap().contains(&id));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&id), "no mount left");
    let cg = std::path::Path::new("/sys/fs/cgroup/memory")
        .join(shoal_testbed::cgroup_root(&tb.tag))
        .join("node2")
        .join(&id);
    assert!(!cg.exists(), "no cgroup left: {}", cg.display());
}

#[test]
fn exit_codes_and_missing_images_are_reported() {
    let tb = cluster(2, &[]);
    import_busybox(&tb, 1);
    let out = tb.cli(
        0,
        &[
            "task", "run", "--node", "node2", "busybox", "sh", "-c", "exit 3",
        ],
    );
    assert!(!out.success, "a failed task fails the command");
    assert!(out.stderr.contains("non-zero exit (3)"), "{}", out.stderr);
    let id = out.stdout.trim().to_string();
    let t = task(&tb, &id);
    assert_eq!(t["Status"]["State"], "failed");
    assert_eq!(t["Status"]["ContainerStatus"]["ExitCode"], 3);

    let ok = run_task(&tb, &["--node", "node2", "-d", "busybox", "true"]);
    let t = wait_task_state(&tb, &ok, "complete", T);
    assert_eq!(t["Status"]["ContainerStatus"]["ExitCode"], 0);

    let out = tb.cli(0, &["task", "run", "--node", "node2", "nosuchimage:1"]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("rejected") && out.stderr.contains("nosuchimage"),
        "{}",
        out.stderr
    );
    let id = out.stdout.trim().to_string();
    assert_eq!(task(&tb, &id)["Status"]["State"], "rejected");

    // An image without a command, and no command given.
    let out = tb.cli(0, &["task", "run", "--node", "node2", "busybox"]);
    assert!(
        !out.success && out.stderr.contains("no command to run"),
        "{}",
        out.stderr
    );
}

#[test]
fn memory_limit_is_enforced() {
    let tb = cluster(2, &[]);
    import_busybox(&tb, 1);
    let out = tb.cli(
        0,
        &[
            "task",
            "run",
            "--node",
            "node2",
            "--limit-memory",
            "16m",
            "busybox",
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=64M",
            "count=1",
        ],
    );
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr.contains("OOM"),
        "{}\n{}",
        out.stderr,
        tb.all_logs()
    );
    let t = task(&tb, out.stdout.trim());
    assert_eq!(t["Status"]["State"], "failed");
    assert_eq!(t["Status"]["ContainerStatus"]["ExitCode"], 137);
    // Within the limit the same command works.
    let ok = run_task(
        &tb,
        &[
            "--node",
            "node2",
            "-d",
            "--limit-memory",
            "128m",
            "busybox",
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=16M",
            "count=1",
        ],
    );
    wait_task_state(&tb, &ok, "complete", T);
}

#[test]
fn containers_outlive_a_killed_daemon_and_are_readopted() {
    let mut tb = cluster(2, &["--dispatcher-heartbeat", "1s"]);
    import_busybox(&tb, 1);
    let flag = tb.dir().join("flag");
    std::fs::create_dir_all(&flag).unwrap();
    let mount = format!("type=bind,source={},target=/flag", flag.display());
    let id = run_task(
        &tb,
        &[
            "--node",
            "node2",
            "--mount",
            &mount,
            "busybox",
            "sh",
            "-c",
            "echo started; while [ ! -f /flag/stop ]; do sleep 0.1; done; echo stopping; exit 7",
        ],
    );
    let t = wait_task_state(&tb, &id, "running", T);
    let pid = t["Status"]["ContainerStatus"]["PID"].as_u64().unwrap();

    tb.kill(1).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "container survives its daemon"
    );
    tb.start(1).unwrap();
    wait_ready(&tb, 2);
    assert_eq!(task(&tb, &id)["Status"]["State"], "running");

    std::fs::write(flag.join("stop"), b"").unwrap();
    let t = wait_task_state(&tb, &id, "failed", T);
    assert_eq!(t["Status"]["ContainerStatus"]["ExitCode"], 7);
    assert!(t["Status"]["Err"]
        .as_str()
        .unwrap()
        .contains("non-zero exit (7)"));
    let logs = tb.cli_ok(0, &["task", "logs", &id]).unwrap();
    assert!(
        logs.contains("started") && logs.contains("stopping"),
        "{logs}"
    );
}

#[test]
fn exit_while_the_daemon_is_down_is_reported_with_its_code() {
    let mut tb = cluster(2, &[]);
    import_busybox(&tb, 1);
    let flag = tb.dir().join("flag2");
    std::fs::create_dir_all(&flag).unwrap();
    let mount = format!("type=bind,source={},target=/flag", flag.display());
    let id = run_task(
        &tb,
        &[
            "--node",
            "node2",
            "--mount",
            &mount,
            "busybox",
            "sh",
            "-c",
            "while [ ! -f /flag/stop ]; do sleep 0.1; done; exit 5",
        ],
    );
    wait_task_state(&tb, &id, "running", T);
    tb.kill(1).unwrap();
    std::fs::write(flag.join("stop"), b"").unwrap();
    std::thread::sleep(Duration::from_millis(800));
    tb.start(1).unwrap();
    let t = wait_task_state(&tb, &id, "failed", T);
    assert_eq!(t["Status"]["ContainerStatus"]["ExitCode"], 5);
}

#[test]
fn stopping_a_task_sends_sigterm_then_sigkill() {
    let tb = cluster(2, &[]);
    import_busybox(&tb, 1);
    // Without an init, sleep as pid 1 ignores SIGTERM: the grace period runs out and
    // SIGKILL follows.
    let id = run_task(
        &tb,
        &[
            "--node",
            "node2",
            "--no-init",
            "--stop-grace-period",
            "1s",
            "busybox",
            "sleep",
            "600",
        ],
    );
    wait_task_state(&tb, &id, "running", T);
    let started = std::time::Instant::now();
    tb.cli_ok(0, &["task", "rm", &id]).unwrap();
    shoal_testbed::wait_for(T, || {
        (!tb.cli_ok(0, &["task", "ls", "-q"]).unwrap().contains(&id)).then_some(())
    })
    .expect("task removed once stopped");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "waited for the grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn bad_task_specs_are_refused_and_nothing_is_stored() {
    let tb = cluster(1, &[]);
    for (args, msg) in [
        (
            vec!["--limit-memory", "1m", "busybox", "true"],
            "below the minimum of 6MiB",
        ),
        (
            vec!["-e", "NOEQUALS", "busybox", "true"],
            "is not KEY=VALUE",
        ),
        (
            vec!["-w", "relative", "busybox", "true"],
            "must be an absolute path",
        ),
        (
            vec![
                "--mount",
                "type=bind,source=rel,target=/x",
                "busybox",
                "true",
            ],
            "must be an absolute path",
        ),
        (
            vec!["--node", "nosuchnode", "busybox", "true"],
            "no such node",
        ),
    ] {
        let mut a = vec!["task", "run"];
        a.extend(args);
        let out = tb.cli(0, &a);
        assert!(
            !out.success && out.stderr.contains(msg),
            "{a:?}: {}",
            out.stderr
        );
    }
    assert_eq!(tb.cli_ok(0, &["task", "ls", "-q"]).unwrap().trim(), "");
}

#[test]
fn garbled_image_archive_is_refused_and_the_store_is_unchanged() {
    let tb = testbed(1);
    import_busybox(&tb, 0);
    let before = tb.cli_ok(0, &["image", "ls"]).unwrap();
    let bad = tb.dir().join("garbled.tar");
    std::fs::write(
        &bad,
        b"this is not a tar archive at all, just some bytes........",
    )
    .unwrap();
    let out = tb.cli(0, &["image", "load", "-i", bad.to_str().unwrap()]);
    assert!(
        !out.success && out.stderr.contains("garbled.tar"),
        "{}",
        out.stderr
    );
    let good = busybox_tar(tb.dir());
    let bytes = std::fs::read(&good).unwrap();
    let truncated = tb.dir().join("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let out = tb.cli(
        0,
        &["image", "import", truncated.to_str().unwrap(), "broken:1"],
    );
    assert!(!out.success, "{}", out.stdout);
    assert_eq!(tb.cli_ok(0, &["image", "ls"]).unwrap(), before);
    let ls = tb.cli_ok(0, &["image", "ls"]).unwrap();
    assert!(ls.contains("busybox") && !ls.contains("broken"), "{ls}");
}

#[test]
fn the_container_spec_is_applied() {
    let tb = cluster(2, &[]);
    import_busybox(&tb, 1);
    let script = "id -u; id -g; pwd; echo FOO=$FOO; hostname; \
        (touch /rootfile 2>/dev/null && echo rootfs-writable) || echo rootfs-readonly; \
        touch /scratch/f && echo tmpfs-writable; \
        cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; \
        cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cat /sys/fs/cgroup/cpu.max; \
        cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max";
    let id = run_task(
        &tb,
        &[
            "--node",
            "node2",
            "-u",
            "65534:65534",
            "-w",
            "/tmp",
            "-e",
            "FOO=bar",
            "--hostname",
            "box1",
            "--read-only",
            "--mount",
            "type=tmpfs,target=/scratch",
            "--pids-limit",
            "50",
            "--limit-cpu",
            "0.5",
            "--limit-memory",
            "32m",
            "--monitor",
            "0s",
            "busybox",
            "sh",
            "-c",
            script,
        ],
    );
    wait_task_state(&tb, &id, "complete", T);
    let out = tb.cli_ok(0, &["task", "logs", &id]).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..5],
        &["65534", "65534", "/tmp", "FOO=bar", "box1"],
        "{out}"
    );
    assert!(out.contains("rootfs-readonly"), "{out}");
    assert!(out.contains("tmpfs-writable"), "{out}");
    assert!(lines.contains(&"50"), "pids limit: {out}");
    assert!(
        lines.iter().any(|l| l.starts_with("50000")),
        "cpu quota of half a CPU: {out}"
    );
    assert!(lines.contains(&"33554432"), "memory limit: {out}");
}

#[test]
fn logs_follow_and_tail() {
    let tb = cluster(2, &[]);
    import_busybox(&tb, 1);
    let id = run_task(
        &tb,
        &[
            "--node",
            "node2",
            "busybox",
            "sh",
            "-c",
            "for i in 1 2 3 4 5; do echo line $i; done; sleep 2; echo late line; sleep 1",
        ],
    );
    let tail = shoal_testbed::wait_for(T, || {
        let o = tb.cli_ok(0, &["task", "logs", "--tail", "2", &id]).ok()?;
        (o.lines().count() == 2).then_some(o)
    })
    .expect("tail");
    assert_eq!(tail, "line 4\nline 5\n");
    // Follow: returns once the container has exited, with the lines written meanwhile.
    let started = std::time::Instant::now();
    let all = tb.cli_ok(0, &["task", "logs", "-f", &id]).unwrap();
    assert!(
        all.contains("line 1") && all.ends_with("late line\n"),
        "{all}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it waited for new lines"
    );
}

#[test]
fn a_missing_executable_is_reported_with_runcs_reason() {
    let tb = cluster(1, &[]);
    import_busybox(&tb, 0);
    let out = tb.cli(0, &["task", "run", "busybox", "/no/such/program"]);
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr.contains("the container could not be created")
            && out.stderr.contains("/no/such/program")
            && !out.stderr.contains("runc run failed"),
        "{}",
        out.stderr
    );
}

#[test]
fn leaving_stops_every_container_within_one_grace_period() {
    let tb = cluster(2, &[]);
    import_busybox(&tb, 1);
    // PID 1 of each ignores SIGTERM: each stop waits out its 2 s grace period.
    for _ in 0..3 {
        run_task(
            &tb,
            &[
                "--node",
                "node2",
                "--stop-grace-period",
                "2s",
                "busybox",
                "sleep",
                "600",
            ],
        );
    }
    sleeps_become(&tb, 1, 3);
    let started = std::time::Instant::now();
    tb.cli_ok(1, &["leave"]).unwrap();
    let took = started.elapsed();
    assert_eq!(tb.processes_named(1, "sleep"), 0, "every container stopped");
    // In parallel: about one grace period, not three.
    assert!(took < Duration::from_millis(4500), "leave took {took:?}");
}

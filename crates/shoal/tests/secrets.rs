//! Issue #13: secrets and configs — kept encrypted in the store, delivered only to
//! nodes whose tasks use them, mounted on a tmpfs, never on a worker's disk, rotated in
//! place. Real daemons in network namespaces, real containers.

mod common;

use common::raw::{self, Identity, OpenSession};
use common::*;
use shoal_testbed::{wait_for, Testbed};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// A marker no file or log holds by chance.
fn marker(what: &str) -> String {
    format!("{what}-{}-{}", std::process::id(), shoal_pki::random_id())
}

/// A cluster of `n` nodes (node1 the manager) with busybox everywhere, every daemon
/// logging at debug level.
fn debug_cluster(n: usize, init: &[&str]) -> Testbed {
    let mut tb = Testbed::new(Path::new(env!("CARGO_BIN_EXE_shoal"))).unwrap();
    for i in 0..n {
        tb.node_env.insert(i, vec!["SHOAL_LOG=debug".into()]);
        tb.add_node().unwrap();
    }
    tb.init(0, init).unwrap();
    for i in 1..n {
        tb.join_worker(i, 0)
            .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    }
    wait_ready(&tb, n);
    for i in 0..n {
        import_busybox(&tb, i);
    }
    tb
}

/// The running task of `service` and its node index.
fn running_task(tb: &Testbed, service: &str) -> Vec<(String, usize)> {
    let out = tb
        .cli_ok(0, &["service", "ps", "--format", "json", service])
        .unwrap();
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|p| {
            p["CurrentState"]
                .as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("running"))
        })
        .filter(|p| {
            p["DesiredState"]
                .as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("running"))
        })
        .map(|p| {
            let i = tb
                .nodes
                .iter()
                .position(|n| p["Node"] == n.name.as_str())
                .unwrap();
            (p["ID"].as_str().unwrap().to_string(), i)
        })
        .collect()
}

/// Runs `args` inside task `id`'s container on node `i` (its mount namespace).
fn exec_task(tb: &Testbed, i: usize, id: &str, args: &[&str]) -> String {
    let pid = std::fs::read_to_string(
        tb.nodes[i]
            .state_dir
            .join("containers")
            .join(id)
            .join("pid"),
    )
    .unwrap_or_else(|e| panic!("no pid for {id}: {e}"));
    let pid = pid.trim().to_string();
    let mut full = vec!["nsenter", "-t", &pid, "-m", "-u", "--"];
    full.extend_from_slice(args);
    let out = tb.command_in(i, &full).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Files under `dir` that hold `needle`, skipping what cannot be read.
fn holders(dir: &Path, needle: &str, newer_than: std::time::SystemTime) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let p = e.path();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let recent = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t >= newer_than);
                if !recent {
                    continue;
                }
                let data = std::fs::read(&p).unwrap_or_default();
                if data.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    out.push(p.display().to_string());
                }
            }
        }
    }
    out
}

#[test]
fn a_task_reads_its_secrets_and_configs_from_a_tmpfs_and_nothing_of_a_secret_is_on_disk() {
    let started = std::time::SystemTime::now() - Duration::from_secs(1);
    let tb = debug_cluster(2, &[]);
    let secret = marker("hunter2");
    let conf = marker("listen 8080");
    let out = tb.cli_stdin(0, &["secret", "create", "db_password", "-"], &secret);
    assert!(out.success, "{}", out.stderr);
    let conf_file = tb.dir().join("app.conf");
    std::fs::write(&conf_file, &conf).unwrap();
    tb.cli_ok(
        0,
        &["config", "create", "appconf", conf_file.to_str().unwrap()],
    )
    .unwrap();
    std::fs::remove_file(&conf_file).unwrap();
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "app",
            "--secret",
            "db_password",
            "--secret",
            "source=db_password,target=app/pw,uid=1000,gid=1001,mode=0400",
            "--config",
            "source=appconf,target=/etc/app.conf,mode=0440",
            "--constraint",
            "node.hostname==node2",
            "busybox",
            "sleep",
            "1000000",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    let (task, i) = running_task(&tb, "app").remove(0);
    assert_eq!(i, 1);

    // Content, owner and mode; a tmpfs under each file.
    assert_eq!(
        exec_task(&tb, 1, &task, &["cat", "/run/secrets/db_password"]),
        secret
    );
    assert_eq!(
        exec_task(&tb, 1, &task, &["cat", "/run/secrets/app/pw"]),
        secret
    );
    let stat = |p: &str| exec_task(&tb, 1, &task, &["busybox", "stat", "-c", "%a %u %g", p]);
    assert_eq!(stat("/run/secrets/db_password").trim(), "444 0 0");
    assert_eq!(stat("/run/secrets/app/pw").trim(), "400 1000 1001");
    assert_eq!(exec_task(&tb, 1, &task, &["cat", "/etc/app.conf"]), conf);
    assert_eq!(stat("/etc/app.conf").trim(), "440 0 0");
    let mounts = exec_task(&tb, 1, &task, &["cat", "/proc/1/mounts"]);
    for target in ["/run/secrets/db_password", "/run/secrets/app/pw"] {
        assert!(
            mounts
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(target) && l.contains(" tmpfs ")),
            "{target} on a tmpfs: {mounts}"
        );
    }
    // The file is read-only in the container, whatever its mode.
    let pid = std::fs::read_to_string(
        tb.nodes[1]
            .state_dir
            .join("containers")
            .join(&task)
            .join("pid"),
    )
    .unwrap();
    let w = tb
        .command_in(
            1,
            &[
                "nsenter",
                "-t",
                pid.trim(),
                "-m",
                "--",
                "sh",
                "-c",
                "echo x > /run/secrets/db_password",
            ],
        )
        .output()
        .unwrap();
    assert!(!w.status.success(), "a secret file is read-only");

    // Nothing of the secret on any node's disk (state dirs, /var, new files in /tmp),
    // in any daemon log at debug level, or in what inspect shows.
    for n in &tb.nodes {
        assert_eq!(
            holders(&n.state_dir, &secret, started),
            Vec::<String>::new()
        );
    }
    assert_eq!(
        holders(Path::new("/var"), &secret, started),
        Vec::<String>::new()
    );
    assert_eq!(
        holders(Path::new("/tmp"), &secret, started),
        Vec::<String>::new()
    );
    let logs = tb.all_logs();
    assert!(!logs.contains(&secret), "a daemon log shows the secret");
    assert!(logs.contains("secret received"), "debug logs were on");
    for args in [
        vec!["service", "inspect", "app"],
        vec!["task", "inspect", &task],
        vec!["secret", "inspect", "db_password"],
        vec!["secret", "inspect", "--pretty", "db_password"],
        vec!["secret", "ls"],
    ] {
        let out = tb.cli(0, &args);
        assert!(out.success, "{args:?}: {}", out.stderr);
        assert!(
            !out.stdout.contains(&secret) && !out.stderr.contains(&secret),
            "{args:?} shows the secret"
        );
    }
    let inspect: serde_json::Value =
        serde_json::from_str(&tb.cli_ok(0, &["secret", "inspect", "db_password"]).unwrap())
            .unwrap();
    assert_eq!(inspect[0]["Versions"][0]["UsedBy"][0], "app", "{inspect}");
    let svc = tb.cli_ok(0, &["service", "inspect", "app"]).unwrap();
    assert!(svc.contains("\"SecretName\": \"db_password\""), "{svc}");
    // A config can be read back.
    let pretty = tb
        .cli_ok(0, &["config", "inspect", "--pretty", "appconf"])
        .unwrap();
    assert!(pretty.contains(&conf), "{pretty}");

    // The task's tmpfs goes with it.
    tb.cli_ok(0, &["service", "rm", "app"]).unwrap();
    wait_for(T, || {
        let out = tb
            .command_in(1, &["cat", "/proc/self/mountinfo"])
            .output()
            .ok()?;
        (!String::from_utf8_lossy(&out.stdout).contains(&task)).then_some(())
    })
    .expect("the task's secrets tmpfs is unmounted");
}

#[test]
fn secrets_reach_only_nodes_whose_tasks_use_them_and_leave_with_the_last_task() {
    let mut tb = debug_cluster(3, &["--dispatcher-heartbeat", "1s"]);
    let secret = marker("need-to-know");
    assert!(
        tb.cli_stdin(0, &["secret", "create", "db", "-"], &secret)
            .success
    );
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "app",
            "--secret",
            "db",
            "--constraint",
            "node.hostname==node2",
            "busybox",
            "sleep",
            "1000000",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    assert!(tb.log(1).contains("secret received"), "node2 runs the task");
    assert!(!tb.log(2).contains("secret received"), "node3 runs none");
    assert!(!tb.log(0).contains("secret received"), "node1 runs none");

    // What node3's own session carries (opened with its real certificate): no secret.
    let node3 = Identity::of_node(&tb, 2);
    tb.kill(2).unwrap();
    let s = OpenSession::open(&tb, 2, &node3);
    let (msgs, _) = s.until_end(Duration::from_secs(3));
    assert!(!msgs.is_empty(), "node3's session opened");
    for (_, m) in &msgs {
        assert!(m.secrets.is_empty(), "node3 was sent a secret");
        let bytes = prost::Message::encode_to_vec(m);
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
    // Asking for it directly, with node3's or node2's valid worker certificate: refused.
    for i in [1, 2] {
        let id = Identity::of_node(&tb, i);
        let r = raw::with_channel(&tb, i, &id, |ch| async move {
            shoal_proto::control::control_client::ControlClient::new(ch)
                .get_secret(shoal_proto::control::GetSecretRequest {
                    kind: "secret".into(),
                    reference: "db".into(),
                })
                .await
                .map(|r| r.into_inner())
        });
        let e = r.expect_err("a worker reads no secret");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    }
    // node2's session does carry it, before the task (positive control).
    let node2 = Identity::of_node(&tb, 1);
    tb.kill(1).unwrap();
    let s = OpenSession::open(&tb, 1, &node2);
    let first = s.next(Duration::from_secs(5)).unwrap().1.unwrap();
    assert!(first.secrets_complete);
    assert_eq!(first.secrets.len(), 1);
    assert_eq!(first.secrets[0].data, secret.as_bytes());
    drop(s);
    tb.start(1).unwrap();
    tb.start(2).unwrap();
    wait_ready(&tb, 3);

    // In use: refused, naming the service. Once the service is gone, removed, and
    // node2 drops it.
    let out = tb.cli(0, &["secret", "rm", "db"]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("in use by service app"),
        "{}",
        out.stderr
    );
    tb.cli_ok(0, &["service", "rm", "app"]).unwrap();
    wait_for(T, || tb.log(1).contains("secret dropped").then_some(()))
        .unwrap_or_else(|| panic!("node2 drops the secret\n{}", tb.log(1)));
    tb.cli_ok(0, &["secret", "rm", "db"]).unwrap();
    let out = tb.cli(0, &["secret", "inspect", "db"]);
    assert!(
        !out.success && out.stderr.contains("not found"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_secret_update_rolls_its_services_onto_the_new_version() {
    let tb = debug_cluster(2, &["--autolock"]);
    let v1 = marker("first");
    let v2 = marker("second");
    assert!(
        tb.cli_stdin(0, &["secret", "create", "tok", "-"], &v1)
            .success
    );
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "app",
            "--replicas",
            "2",
            "--secret",
            "tok",
            "--update-monitor",
            "1s",
            "busybox",
            "sleep",
            "1000000",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    let before = running_task(&tb, "app");
    assert_eq!(before.len(), 2);
    for (t, i) in &before {
        assert_eq!(exec_task(&tb, *i, t, &["cat", "/run/secrets/tok"]), v1);
    }
    let out = tb.cli_stdin(0, &["secret", "update", "tok", "-"], &v2);
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.stdout.contains("version 2; rolling update of app"),
        "{}",
        out.stdout
    );
    // The tasks are replaced (one at a time, the default parallelism) and the new ones
    // read the new data.
    let after = wait_for(Duration::from_secs(60), || {
        let now = running_task(&tb, "app");
        let fresh = now.iter().all(|t| !before.contains(t));
        (now.len() == 2 && fresh).then_some(now)
    })
    .unwrap_or_else(|| {
        panic!(
            "the tasks were not replaced\n{}",
            tb.cli(0, &["service", "ps", "app"]).stdout
        )
    });
    for (t, i) in &after {
        assert_eq!(exec_task(&tb, *i, t, &["cat", "/run/secrets/tok"]), v2);
    }
    let status = wait_for(T, || {
        let s: serde_json::Value =
            serde_json::from_str(&tb.cli_ok(0, &["service", "inspect", "app"]).unwrap()).ok()?;
        (s[0]["UpdateStatus"]["State"] == "completed").then_some(s)
    });
    assert!(status.is_some(), "the update completes");
    // Version 1 stays while the previous spec (a rollback's target) uses it.
    let inspect: serde_json::Value =
        serde_json::from_str(&tb.cli_ok(0, &["secret", "inspect", "tok"]).unwrap()).unwrap();
    let versions = inspect[0]["Versions"].as_array().unwrap().clone();
    assert_eq!(versions.len(), 2, "{inspect}");
    assert_eq!(versions[0]["UsedBy"][0], "app (previous spec)", "{inspect}");
    assert_eq!(versions[1]["UsedBy"][0], "app", "{inspect}");
    // A third version leaves the first unused: it is deleted.
    let v3 = marker("third");
    assert!(
        tb.cli_stdin(0, &["secret", "update", "tok", "-"], &v3)
            .success
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&tb.cli_ok(0, &["secret", "inspect", "tok"]).unwrap()).unwrap();
    let numbers: Vec<u64> = inspect[0]["Versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["Version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, vec![2, 3], "{inspect}");
    // No manager's state holds a version's data, autolock on.
    for v in [&v1, &v2, &v3] {
        assert_eq!(
            any_file_contains(&tb.nodes[0].state_dir, v.as_bytes()),
            None
        );
        assert!(!tb.all_logs().contains(v.as_str()));
    }
}

#[test]
fn bad_secrets_and_configs_are_refused_with_what_to_do() {
    let tb = cluster(1, &[]);
    import_busybox(&tb, 0);
    let refuse = |args: &[&str], input: &str, says: &str| {
        let out = tb.cli_stdin(0, args, input);
        assert!(!out.success, "{args:?} succeeded");
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    };
    refuse(&["secret", "create", "bad-", "-"], "x", "is not valid");
    refuse(&["secret", "create", "a b", "-"], "x", "is not valid");
    refuse(&["secret", "create", "empty", "-"], "", "is empty");
    let big = "q".repeat(500 * 1024 + 1);
    refuse(
        &["secret", "create", "big", "-"],
        &big,
        "the limit is 500 KB",
    );
    assert!(
        tb.cli_stdin(0, &["config", "create", "big", "-"], &big)
            .success,
        "a config may be larger"
    );
    let huge = "q".repeat(1000 * 1024 + 1);
    refuse(
        &["config", "create", "huge", "-"],
        &huge,
        "the limit is 1000 KB",
    );
    assert!(
        tb.cli_stdin(0, &["secret", "create", "s", "-"], "one")
            .success
    );
    refuse(&["secret", "create", "s", "-"], "two", "already exists");
    refuse(
        &[
            "service", "create", "--name", "x", "--secret", "nosuch", "busybox", "true",
        ],
        "",
        "secret \"nosuch\" not found",
    );
    refuse(
        &[
            "service", "create", "--name", "x", "--config", "nosuch", "busybox", "true",
        ],
        "",
        "config \"nosuch\" not found",
    );
    refuse(
        &[
            "service",
            "create",
            "--name",
            "x",
            "--secret",
            "source=s,target=../etc/passwd",
            "busybox",
            "true",
        ],
        "",
        "is not valid",
    );
    refuse(
        &[
            "service",
            "create",
            "--name",
            "x",
            "--secret",
            "source=s,mode=999",
            "busybox",
            "true",
        ],
        "",
        "octal",
    );
    refuse(&["secret", "update", "nosuch", "-"], "x", "not found");
    let ls = tb.cli_ok(0, &["service", "ls"]).unwrap();
    assert!(!ls.contains(" x "), "nothing was created: {ls}");
    // Nothing stored was lost: the secret still has its one version.
    let inspect: serde_json::Value =
        serde_json::from_str(&tb.cli_ok(0, &["secret", "inspect", "s"]).unwrap()).unwrap();
    assert_eq!(inspect[0]["Versions"].as_array().unwrap().len(), 1);
    // Data never comes from the command line.
    let out = tb.cli(0, &["secret", "create", "argv"]);
    assert!(!out.success);
}

#[test]
fn a_failed_rotation_rolls_back_and_a_config_update_rolls_the_service() {
    let tb = debug_cluster(2, &[]);
    assert!(
        tb.cli_stdin(0, &["secret", "create", "tok", "-"], "good")
            .success
    );
    assert!(
        tb.cli_stdin(0, &["config", "create", "conf", "-"], "port=1")
            .success
    );
    // The tasks run only with a good token: a bad one makes them fail.
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "app",
            "--replicas",
            "2",
            "--secret",
            "tok",
            "--config",
            "source=conf,target=/etc/app/conf,mode=0440",
            "--update-monitor",
            "2s",
            "--update-failure-action",
            "rollback",
            "--restart-delay",
            "100ms",
            "busybox",
            "sh",
            "-c",
            "grep -q good /run/secrets/tok && exec sleep 1000000",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    let inspect = |what: &str| -> serde_json::Value {
        serde_json::from_str(&tb.cli_ok(0, &["service", "inspect", what]).unwrap()).unwrap()
    };
    assert!(
        tb.cli_stdin(0, &["secret", "update", "tok", "-"], "bad")
            .success
    );
    let s = wait_for(Duration::from_secs(60), || {
        let s = inspect("app");
        (s[0]["UpdateStatus"]["State"] == "rollback_completed").then_some(s)
    })
    .unwrap_or_else(|| panic!("the update rolls back: {}", inspect("app")));
    let secrets = &s[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"];
    assert_eq!(secrets[0]["Version"], 1, "back on the old version: {s}");
    let tasks = wait_for(T, || {
        let t = running_task(&tb, "app");
        (t.len() == 2).then_some(t)
    })
    .expect("two tasks run again");
    for (t, i) in &tasks {
        assert_eq!(exec_task(&tb, *i, t, &["cat", "/run/secrets/tok"]), "good");
    }

    // A config update rolls the service onto the new content, at the same path and mode.
    let before = running_task(&tb, "app");
    let out = tb.cli_stdin(0, &["config", "update", "conf", "-"], "port=2");
    assert!(out.success, "{}", out.stderr);
    let after = wait_for(Duration::from_secs(60), || {
        let now = running_task(&tb, "app");
        (now.len() == 2 && now.iter().all(|t| !before.contains(t))).then_some(now)
    })
    .expect("the config update replaced the tasks");
    for (t, i) in &after {
        assert_eq!(exec_task(&tb, *i, t, &["cat", "/etc/app/conf"]), "port=2");
        assert_eq!(
            exec_task(
                &tb,
                *i,
                t,
                &["busybox", "stat", "-c", "%a", "/etc/app/conf"]
            )
            .trim(),
            "440"
        );
    }
    let pretty = tb
        .cli_ok(0, &["config", "inspect", "--pretty", "conf"])
        .unwrap();
    assert!(pretty.contains("port=2"), "{pretty}");

    // --secret-add: the same secret at a second target too.
    tb.cli_ok(
        0,
        &[
            "service",
            "update",
            "--secret-add",
            "source=tok,target=renamed",
            "app",
        ],
    )
    .unwrap();
    let (t, i) = running_task(&tb, "app").remove(0);
    // The reference kept keeps its version; the one added gets the newest.
    assert_eq!(exec_task(&tb, i, &t, &["cat", "/run/secrets/tok"]), "good");
    assert_eq!(
        exec_task(&tb, i, &t, &["cat", "/run/secrets/renamed"]),
        "bad"
    );
    let out = tb.cli(0, &["service", "update", "--secret-rm", "nosuch", "app"]);
    assert!(
        !out.success && out.stderr.contains("does not use secret nosuch"),
        "{}",
        out.stderr
    );
}

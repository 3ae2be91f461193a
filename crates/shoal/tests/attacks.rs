//! The holes that probing from outside found, each kept closed: attacks made with real
//! certificates and keys of real nodes, against real daemons, the way a hostile holder of
//! a node's files would make them.

mod common;

use common::raw::{self, Identity, OpenSession};
use common::*;
use std::time::{Duration, Instant, SystemTime};

/// `task run --node HOST` on the manager; returns the task ID.
fn task_on(tb: &shoal_testbed::Testbed, host: &str) -> String {
    tb.cli_ok(0, &["task", "run", "-d", "--node", host, "busybox", "true"])
        .unwrap()
        .trim()
        .to_string()
}

fn assert_cut(
    what: &str,
    s: &OpenSession,
    after: Instant,
    code: tonic::Code,
    reason: &str,
    late_task: &str,
) {
    let (msgs, end) = s.until_end(Duration::from_secs(3));
    let (at, status) = end.unwrap_or_else(|| panic!("{what}: the session stayed open"));
    assert!(
        at.saturating_duration_since(after) <= Duration::from_secs(1),
        "{what}: cut {:?} after the change",
        at.saturating_duration_since(after)
    );
    assert_eq!(status.code(), code, "{what}: {status:?}");
    assert!(status.message().contains(reason), "{what}: {status:?}");
    for (_, m) in msgs {
        assert!(
            !m.assignments
                .iter()
                .any(|a| a.task.as_ref().is_some_and(|t| t.id == late_task)),
            "{what}: a task assigned after the change was delivered"
        );
    }
}

#[test]
fn open_sessions_are_cut_within_a_second_of_revocation_removal_and_expiry() {
    let mut tb = cluster(4, &["--cert-expiry", "1m", "--dispatcher-heartbeat", "1s"]);
    // The holders of node2..node4's files open sessions; the real daemons are gone.
    let ids: Vec<Identity> = (1..4).map(|i| Identity::of_node(&tb, i)).collect();
    for i in 1..4 {
        tb.kill(i).unwrap();
    }
    let sessions: Vec<OpenSession> = (1..4)
        .map(|i| OpenSession::open(&tb, i, &ids[i - 1]))
        .collect();
    for (k, s) in sessions.iter().enumerate() {
        let (_, first) = s.next(Duration::from_secs(5)).expect("a first message");
        assert!(first.expect("session opens").complete, "node{}", k + 2);
    }
    // The sessions work: a task placed on each node arrives.
    for (k, s) in sessions.iter().enumerate() {
        let t = task_on(&tb, &format!("node{}", k + 2));
        assert!(
            s.wait_assignment(&t, Duration::from_secs(5)),
            "node{} got its task",
            k + 2
        );
    }

    // A log stream and a heartbeat stream held open with node2's certificate.
    let publishing = raw::open_publish(&tb, 1, &ids[0]);
    let beating = raw::open_heartbeats(&tb, 1, &ids[0]);
    let (_, first) = beating
        .recv_timeout(Duration::from_secs(5))
        .expect("a first heartbeat answer");
    assert_eq!(first.expect("the heartbeat stream opens").role, "worker");
    std::thread::sleep(Duration::from_millis(300));
    assert!(publishing.try_recv().is_err(), "the log stream is open");

    // Revocation of node2's certificate.
    tb.cli_ok(
        0,
        &["node", "revoke-certificate", "node2", &ids[0].serial()],
    )
    .unwrap();
    let revoked_at = Instant::now();
    let late = task_on(&tb, "node2");
    assert_cut(
        "revoked",
        &sessions[0],
        revoked_at,
        tonic::Code::PermissionDenied,
        "certificate revoked",
        &late,
    );
    let (at, r) = publishing
        .recv_timeout(Duration::from_secs(3))
        .expect("the log stream ends");
    assert!(at.saturating_duration_since(revoked_at) <= Duration::from_secs(1));
    let err = r.unwrap_err();
    assert!(err.message().contains("certificate revoked"), "{err:?}");
    // Answers to beats come now and then; the stream's end comes at once.
    let end = std::iter::from_fn(|| beating.recv_timeout(Duration::from_secs(3)).ok())
        .find(|(_, r)| r.is_err());
    let (at, r) = end.expect("the heartbeat stream ends");
    assert!(
        at.saturating_duration_since(revoked_at) <= Duration::from_secs(1),
        "heartbeat stream cut {:?} after the revocation",
        at.saturating_duration_since(revoked_at)
    );
    let err = r.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("certificate revoked"), "{err:?}");

    // Removal of node3.
    tb.cli_ok(0, &["node", "rm", "--force", "node3"]).unwrap();
    let removed_at = Instant::now();
    assert_cut(
        "removed",
        &sessions[1],
        removed_at,
        tonic::Code::PermissionDenied,
        "node removed from cluster",
        "",
    );

    // Expiry of node4's certificate (it lives one minute and nobody renews it).
    let expiry = ids[2].not_after();
    let wait = expiry
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .saturating_sub(Duration::from_secs(2));
    std::thread::sleep(wait);
    let before = task_on(&tb, "node4");
    assert!(
        sessions[2].wait_assignment(&before, Duration::from_secs(1)),
        "still served just before the expiry"
    );
    let left = expiry.duration_since(SystemTime::now()).unwrap_or_default();
    let expires_at = Instant::now() + left;
    let (msgs, end) = sessions[2].until_end(left + Duration::from_secs(3));
    let (at, status) = end.expect("the session of an expired certificate ends");
    assert!(
        at + Duration::from_millis(50) >= expires_at,
        "not cut before the expiry"
    );
    assert!(
        at.saturating_duration_since(expires_at) <= Duration::from_secs(1),
        "cut {:?} after the expiry",
        at.saturating_duration_since(expires_at)
    );
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("certificate expired"),
        "{status:?}"
    );
    assert!(msgs
        .iter()
        .all(|(t, _)| *t <= expires_at + Duration::from_millis(10)));
    // And a new call says the same.
    let err = raw::heartbeat(&tb, 3, &ids[2]).unwrap_err();
    assert!(err.message().contains("certificate expired"), "{err:?}");
}

#[test]
fn every_certificate_a_node_ever_held_can_be_refused() {
    let mut tb = cluster(2, &["--dispatcher-heartbeat", "1s"]);
    let first = Identity::of_node(&tb, 1);
    tb.kill(1).unwrap();
    // Anyone with the node's key renews six times, keeping the first certificate.
    let mut held = vec![first.clone()];
    for _ in 0..6 {
        let next = raw::renew(&tb, 1, &first).expect("renewal");
        held.push(next);
    }
    // The first certificate is no longer listed; a later one is, but renewals are
    // rate-limited per node.
    let err = raw::renew(&tb, 1, &held[5]).map(|_| ()).unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("renews too often"), "{err:?}");

    // The node uses its newest certificate: the first no longer works, on any call.
    let newest = held.last().unwrap().clone();
    raw::heartbeat(&tb, 1, &newest).expect("the newest certificate works");
    let err = raw::heartbeat(&tb, 1, &first).unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("certificate revoked"), "{err:?}");
    assert!(raw::session_first(&tb, 1, &first).is_err());
    assert!(raw::renew(&tb, 1, &first).is_err());
    // Any serial of the node can be revoked, listed or not.
    tb.cli_ok(0, &["node", "revoke-certificate", "node2", &first.serial()])
        .unwrap();
    let out = tb.cli(0, &["node", "revoke-certificate", "node2", "not-hex"]);
    assert!(
        !out.success && out.stderr.contains("is not a serial") && !out.stderr.contains("task spec"),
        "{}",
        out.stderr
    );

    // After `node rm`, no certificate of the node works on any RPC.
    tb.cli_ok(0, &["node", "rm", "--force", "node2"]).unwrap();
    for (k, id) in held.iter().enumerate() {
        let calls: Vec<(&str, tonic::Status)> = vec![
            ("Heartbeat", raw::heartbeat(&tb, 1, id).unwrap_err()),
            ("Session", raw::session_first(&tb, 1, id).unwrap_err()),
            (
                "UpdateTaskStatus",
                raw::update_task_status(&tb, 1, id, vec![]).unwrap_err(),
            ),
            ("PublishLogs", raw::publish_logs(&tb, 1, id).unwrap_err()),
            (
                "RenewNodeCertificate",
                raw::renew(&tb, 1, id).map(|_| ()).unwrap_err(),
            ),
        ];
        for (call, err) in calls {
            assert_eq!(
                err.code(),
                tonic::Code::PermissionDenied,
                "certificate {k}, {call}: {err:?}"
            );
            assert!(
                err.message().contains("node removed from cluster")
                    || err.message().contains("certificate revoked"),
                "certificate {k}, {call}: {err:?}"
            );
        }
    }
}

#[test]
fn oversized_input_is_refused_naming_the_limit_and_nothing_is_stored() {
    use shoal_proto::dispatcher::{HeartbeatRequest, TaskStatusUpdate};
    use shoal_proto::objects::{NodeDescription, TaskState, TaskStatus};
    let mut tb = cluster(2, &["--dispatcher-heartbeat", "1s"]);
    let id = Identity::of_node(&tb, 1);
    tb.kill(1).unwrap();
    // The holder of node2's files keeps it Ready with heartbeats that change nothing.
    let _held = OpenSession::open(&tb, 1, &id);
    let task = task_on_ready(&tb, &id);
    std::thread::sleep(Duration::from_secs(1));
    let store_dir = tb.nodes[0].state_dir.join("raft");
    let updated_at = |tb: &shoal_testbed::Testbed| {
        let v: serde_json::Value =
            serde_json::from_str(&tb.cli_ok(0, &["node", "inspect", "node2"]).unwrap()).unwrap();
        v[0]["UpdatedAt"].clone()
    };
    let (size0, updated0) = (raw::dir_size(&store_dir), updated_at(&tb));
    assert!(size0 > 0, "the store is at {}", store_dir.display());

    // A heartbeat carrying a 3 MB engine label, ten times; then ones that change nothing.
    let mut big = NodeDescription {
        hostname: "node2".into(),
        ..Default::default()
    };
    big.engine_labels.insert("junk".into(), "x".repeat(3 << 20));
    for _ in 0..10 {
        let err = raw::heartbeat_with(
            &tb,
            1,
            &id,
            HeartbeatRequest {
                description: Some(big.clone()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains("engine label \"junk\"")
                && err.message().contains("limit is 4096 bytes"),
            "{err:?}"
        );
    }
    for _ in 0..10 {
        raw::heartbeat(&tb, 1, &id).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    // A 10 kB status message, and a state no node may report.
    let status = |state: TaskState, message: String| TaskStatusUpdate {
        task_id: task.clone(),
        status: Some(TaskStatus {
            state: state as i32,
            message,
            ..Default::default()
        }),
    };
    let err = raw::update_task_status(
        &tb,
        1,
        &id,
        vec![status(TaskState::Running, "y".repeat(10_000))],
    )
    .unwrap_err();
    assert!(err.message().contains("limit is 4096 bytes"), "{err:?}");
    let err = raw::update_task_status(&tb, 1, &id, vec![status(TaskState::Orphaned, "x".into())])
        .unwrap_err();
    assert!(err.message().contains("not one a node reports"), "{err:?}");
    // Specs and names over their limits, from the CLI.
    let env = format!("BIG={}", "v".repeat(120_000));
    for args in [
        vec![
            "service", "create", "--name", "big", "-e", &env, "busybox", "true",
        ],
        vec![
            "task", "run", "-d", "--node", "node2", "-e", &env, "busybox", "true",
        ],
    ] {
        let out = tb.cli(0, &args);
        assert!(
            !out.success && out.stderr.contains("limit is 98304 bytes"),
            "{}",
            out.stderr
        );
    }
    let long = "n".repeat(100);
    let out = tb.cli(
        0,
        &["service", "create", "--name", &long, "busybox", "true"],
    );
    assert!(
        !out.success && out.stderr.contains("1-63"),
        "{}",
        out.stderr
    );
    let out = tb.cli(
        0,
        &["task", "run", "-d", "--name", &long, "busybox", "true"],
    );
    assert!(
        !out.success && out.stderr.contains("1-63"),
        "{}",
        out.stderr
    );
    let many: Vec<String> = (0..65).map(|i| format!("k{i}=v")).collect();
    let mut args = vec!["node", "update"];
    for l in &many {
        args.extend(["--label-add", l.as_str()]);
    }
    args.push("node2");
    let out = tb.cli(0, &args);
    assert!(
        !out.success && out.stderr.contains("limit is 64"),
        "{}",
        out.stderr
    );

    // Nothing of it reached the store.
    assert_eq!(updated_at(&tb), updated0, "node2 was not rewritten");
    assert_eq!(raw::dir_size(&store_dir), size0, "the store did not grow");
    let t = common::task(&tb, &task);
    assert_eq!(t["Status"]["State"], "assigned", "{t}");

    // Certificate requests from one address are rate-limited (before any token check).
    let root = raw::pem_der(&tb.nodes[0].state_dir.join("certs/ca.crt"));
    let limited = (0..60).find_map(|_| {
        raw::join(&tb, 1, &root, "SHOAL-1-x-y", "flood")
            .err()
            .filter(|e| e.code() == tonic::Code::ResourceExhausted)
    });
    let err = limited.expect("rate-limited within 60 requests");
    assert!(
        err.message().contains("too many certificate requests"),
        "{err:?}"
    );
}

/// A task placed on node2 while `id` holds it Ready by heartbeats (its daemon is gone).
fn task_on_ready(tb: &shoal_testbed::Testbed, id: &Identity) -> String {
    raw::heartbeat(tb, 1, id).unwrap();
    shoal_testbed::wait_for(Duration::from_secs(5), || {
        (status_of(tb, "node2") == "Ready").then_some(())
    })
    .expect("node2 Ready");
    task_on(tb, "node2")
}

#[test]
fn a_node_gets_every_task_however_many_and_one_session_replaces_another() {
    let mut tb = cluster(3, &["--dispatcher-heartbeat", "1s"]);
    let id = Identity::of_node(&tb, 1);
    tb.kill(1).unwrap();
    let first = OpenSession::open(&tb, 1, &id);
    assert!(first.next(Duration::from_secs(5)).unwrap().1.is_ok());
    // 50 tasks of ~90 kB each: 4.5 MB, more than a gRPC decoder takes in one message.
    let env = format!("BIG={}", "v".repeat(90_000));
    let mut ids = Vec::new();
    for _ in 0..50 {
        let out = tb
            .cli_ok(
                0,
                &[
                    "task", "run", "-d", "--node", "node2", "-e", &env, "busybox", "true",
                ],
            )
            .unwrap();
        ids.push(out.trim().to_string());
    }
    // A second session replaces the first, which is told so; the new one gets the
    // complete set, split over messages that each decode.
    let second = OpenSession::open(&tb, 1, &id);
    let (_, end) = first.until_end(Duration::from_secs(5));
    let (_, status) = end.expect("the first session ends");
    assert!(status.message().contains("replaced"), "{status:?}");
    let mut got = std::collections::HashSet::new();
    let mut messages = 0;
    loop {
        let (_, m) = second
            .next(Duration::from_secs(10))
            .expect("the complete set arrives");
        let m = m.expect("every part decodes");
        assert!(m.complete, "parts of the complete set");
        messages += 1;
        got.extend(
            m.assignments
                .iter()
                .filter_map(|a| a.task.as_ref().map(|t| t.id.clone())),
        );
        if !m.more {
            break;
        }
    }
    assert!(messages > 1, "split into several messages");
    for t in &ids {
        assert!(got.contains(t), "task {t} delivered");
    }

    // A real node whose session was replaced by another one takes it back, and its
    // task logs still work.
    import_busybox(&tb, 2);
    let t = tb
        .cli_ok(
            0,
            &[
                "task",
                "run",
                "--node",
                "node3",
                "busybox",
                "echo",
                "still-here",
            ],
        )
        .unwrap();
    let id3 = Identity::of_node(&tb, 2);
    let intruder = OpenSession::open(&tb, 2, &id3);
    let (_, end) = intruder.until_end(Duration::from_secs(10));
    assert!(end
        .expect("the daemon's new session replaces the intruder's")
        .1
        .message()
        .contains("replaced"));
    let logs = shoal_testbed::wait_for(Duration::from_secs(10), || {
        let out = tb.cli(0, &["task", "logs", t.trim()]);
        (out.success && out.stdout.contains("still-here")).then_some(out.stdout)
    });
    assert!(
        logs.is_some(),
        "task logs after the session was replaced\n{}",
        tb.log(2)
    );
}

#[test]
fn a_claimed_hostname_attracts_nothing_and_a_shared_one_is_ambiguous() {
    use shoal_proto::dispatcher::HeartbeatRequest;
    use shoal_proto::objects::NodeDescription;
    let tb = cluster(3, &["--dispatcher-heartbeat", "1s"]);
    for i in 0..3 {
        import_busybox(&tb, i);
    }
    // node3 claims node2's hostname in its heartbeats.
    let id3 = Identity::of_node(&tb, 2);
    let claim = HeartbeatRequest {
        description: Some(NodeDescription {
            hostname: "node2".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    // node3's own agent beats on with its true name, which clears the claim it keeps
    // beside; claim until it has been seen kept (and never taken as the hostname).
    let v = shoal_testbed::wait_for(std::time::Duration::from_secs(10), || {
        raw::heartbeat_with(&tb, 2, &id3, claim.clone()).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&tb.cli_ok(0, &["node", "inspect", "node3"]).unwrap()).unwrap();
        assert_eq!(v[0]["Description"]["Hostname"], "node3");
        (v[0]["Description"]["ReportedHostname"] == "node2").then_some(v)
    })
    .expect("the claim is recorded");
    let hosts: Vec<String> = nodes(&tb, 0)
        .iter()
        .map(|n| n["Hostname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        hosts.iter().filter(|h| *h == "node2").count(),
        1,
        "{hosts:?}"
    );
    assert_eq!(v[0]["Description"]["Hostname"], "node3");
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "pinned",
            "--replicas",
            "2",
            "--constraint",
            "node.hostname==node2",
            "busybox",
            "sleep",
            "600",
        ],
    )
    .unwrap();
    let ps = tb.cli_ok(0, &["service", "ps", "pinned"]).unwrap();
    assert!(!ps.contains("node3"), "{ps}");
    assert_eq!(ps.matches("node2").count(), 2, "{ps}");

    // A second node that joins under the name node2 makes the name ambiguous.
    let token = tb.cli_ok(0, &["join-token", "-q", "worker"]).unwrap();
    let root = raw::pem_der(&tb.nodes[0].state_dir.join("certs/ca.crt"));
    let twin = raw::join(&tb, 2, &root, token.trim(), "node2").unwrap();
    let out = tb.cli(0, &["node", "inspect", "node2"]);
    assert!(
        !out.success
            && out.stderr.contains("shared by several nodes")
            && out.stderr.contains(&twin),
        "{}",
        out.stderr
    );
    let out = tb.cli(
        0,
        &[
            "service",
            "create",
            "--name",
            "p2",
            "--constraint",
            "node.hostname==node2",
            "busybox",
            "true",
        ],
    );
    assert!(
        !out.success && out.stderr.contains("matches 2 nodes") && out.stderr.contains(&twin),
        "{}",
        out.stderr
    );
}

#[test]
fn messages_point_the_right_way() {
    let mut tb = testbed(2);
    tb.node_env
        .insert(1, vec!["SHOAL_RUNC=/nonexistent/runc".into()]);
    tb.restart(1).unwrap();
    tb.init(0, &[]).unwrap();
    tb.join_worker(1, 0).unwrap();
    wait_ready(&tb, 2);
    // A node without runc says so everywhere, and gets no task.
    let i = info(&tb, 1);
    assert!(
        i["RuntimeError"]
            .as_str()
            .unwrap()
            .contains("runc not found"),
        "{i}"
    );
    assert!(tb.log(1).contains("runc not found"), "{}", tb.log(1));
    let v: serde_json::Value =
        serde_json::from_str(&tb.cli_ok(0, &["node", "inspect", "node2"]).unwrap()).unwrap();
    assert!(
        v[0]["Description"]["RuntimeError"]
            .as_str()
            .unwrap()
            .contains("install the runc package"),
        "{v}"
    );
    let out = tb.cli(
        0,
        &["task", "run", "-d", "--node", "node2", "busybox", "true"],
    );
    assert!(
        !out.success && out.stderr.contains("runc not found"),
        "{}",
        out.stderr
    );
    import_busybox(&tb, 0);
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "w",
            "--replicas",
            "3",
            "busybox",
            "sleep",
            "600",
        ],
    )
    .unwrap();
    let ps = tb.cli_ok(0, &["service", "ps", "w"]).unwrap();
    assert!(!ps.contains("node2"), "{ps}");

    // Bad values say what they are.
    let out = tb.cli(0, &["update", "--cert-expiry", "0s"]);
    assert!(
        !out.success && out.stderr.contains("--cert-expiry 0s"),
        "{}",
        out.stderr
    );
    let out = tb.cli(0, &["update", "--cert-expiry", "30s"]);
    assert!(
        !out.success && out.stderr.contains("30s") && !out.stderr.contains("task spec"),
        "{}",
        out.stderr
    );
    let out = tb.cli(
        0,
        &[
            "service",
            "create",
            "--name",
            "n",
            "--replicas",
            "-1",
            "busybox",
        ],
    );
    assert!(
        !out.success && out.stderr.contains("whole number"),
        "{}",
        out.stderr
    );
    let out = tb.cli(
        0,
        &["node", "update", "--availability", "sideways", "node2"],
    );
    assert!(
        !out.success && out.stderr.contains("sideways") && !out.stderr.contains("task spec"),
        "{}",
        out.stderr
    );

    // Someone who may not use the socket is told so, not that the daemon is down. (A
    // copy of the binary, in a directory anyone may enter.)
    let dir = tempfile::Builder::new()
        .prefix("shoal-nobody-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let bin = dir.path().join("shoal");
    std::fs::copy(env!("CARGO_BIN_EXE_shoal"), &bin).unwrap();
    let bin = bin.to_str().unwrap();
    let sock = format!("unix://{}", tb.nodes[0].socket.display());
    // A thread of this test that forked while the copy was open for writing makes
    // the kernel refuse to run it ("Text file busy") until that child execs.
    let mut stderr = String::new();
    for _ in 0..50 {
        let out = std::process::Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                bin,
                "-H",
                &sock,
                "info",
            ])
            .output()
            .unwrap();
        stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !stderr.contains("Text file busy") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        stderr.contains("run as root or as a member of the socket's group"),
        "{stderr}"
    );
}

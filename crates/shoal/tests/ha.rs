//! Several managers in one Raft group, on real daemons in their own network namespaces:
//! joining with the manager token, who leads, and a new leader after the leader dies,
//! with the workers following it.

mod common;

use common::*;
use shoal_testbed::wait_for;
use std::time::{Duration, Instant};

/// `node ls` on node `i` as (hostname, manager status).
fn manager_status(tb: &shoal_testbed::Testbed, i: usize) -> Vec<(String, String)> {
    manager_status_opt(tb, i).unwrap_or_else(|| {
        panic!(
            "node ls on node{} failed: {}\n{}",
            i + 1,
            tb.cli(i, &["node", "ls"]).stderr,
            tb.all_logs()
        )
    })
}

#[test]
fn three_managers_survive_the_loss_of_the_leader() {
    let mut tb = ha_cluster(3, 1);
    let st = manager_status(&tb, 1);
    let of = |st: &[(String, String)], h: &str| {
        st.iter()
            .find(|(n, _)| n == h)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    };
    // One leader (node1, unless a busy machine moved leadership during the joins), the
    // other two managers reachable, the worker none of these.
    let statuses: Vec<String> = ["node1", "node2", "node3"]
        .iter()
        .map(|h| of(&st, h))
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| *s == "Leader").count(),
        1,
        "{st:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| *s == "Reachable").count(),
        2,
        "{st:?}"
    );
    assert_eq!(of(&st, "node4"), "", "{st:?}");
    let old = statuses.iter().position(|s| s == "Leader").unwrap();
    let old_name = tb.nodes[old].name.clone();
    let info2 = info(&tb, 1);
    assert_eq!(info2["Role"], "manager", "{info2}");

    // A service on the worker only, through the leader.
    import_busybox(&tb, 3);
    sleep_service_on_workers(&tb, 0, "web", 1);
    sleeps_become(&tb, 3, 1);
    // A follower forwards its administrator's calls to the leader, reads and writes;
    // join-token writes too (a rotation or a limited token is a write, whatever the
    // name of the call that once carried it).
    let f = (0..3).find(|i| *i != old).unwrap();
    let before = tb.cli_ok(f, &["join-token", "-q", "worker"]).unwrap();
    let out = tb
        .cli_ok(f, &["join-token", "--rotate", "worker"])
        .unwrap_or_else(|e| panic!("rotate through a follower: {e}"));
    assert!(
        out.contains("Successfully rotated worker join token"),
        "{out}"
    );
    let after = tb.cli_ok(f, &["join-token", "-q", "worker"]).unwrap();
    assert_ne!(
        before.trim(),
        after.trim(),
        "the follower shows the new token"
    );
    let limited = tb
        .cli_ok(
            f,
            &[
                "join-token",
                "-q",
                "--ttl",
                "1h",
                "--max-uses",
                "1",
                "worker",
            ],
        )
        .unwrap_or_else(|e| panic!("a limited token through a follower: {e}"));
    assert!(limited.trim().starts_with("SHOAL-1-"), "{limited}");
    let ls = tb.cli_ok(2, &["service", "ls"]).unwrap();
    assert!(ls.contains("web"), "{ls}");
    tb.cli_ok(2, &["service", "scale", "web=2"])
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    sleeps_become(&tb, 3, 2);
    tb.cli_ok(1, &["service", "scale", "web=1"]).unwrap();
    wait_for(Duration::from_secs(10), || {
        (tb.processes_named(3, "sleep") == 1).then_some(())
    })
    .expect("scaled back down through the other follower");
    // A worker's certificate cannot pass for a forwarding manager.
    let worker = common::raw::Identity::of_node(&tb, 3);
    let err = common::raw::with_channel(&tb, 3, &worker, |ch| async move {
        let mut req = tonic::Request::new(shoal_proto::control::ListNodesRequest {});
        req.metadata_mut()
            .insert("shoal-forwarded-for", "local-admin".parse().unwrap());
        shoal_proto::control::control_client::ControlClient::new(ch)
            .list_nodes(req)
            .await
            .map(|_| ())
    })
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    // The leader dies.
    tb.kill(old).unwrap();
    let killed = Instant::now();
    let alive = (old + 1) % 3;
    let leader = wait_for(Duration::from_secs(10), || {
        let st = manager_status_opt(&tb, alive)?;
        (0..3).find(|&i| i != old && of(&st, &tb.nodes[i].name) == "Leader")
    })
    .unwrap_or_else(|| panic!("no new leader\n{}", tb.all_logs()));
    eprintln!("new leader after {:?}", killed.elapsed());
    assert!(killed.elapsed() < Duration::from_secs(5));
    wait_for(Duration::from_secs(5), || {
        (of(&manager_status(&tb, leader), &old_name) == "Unreachable").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the dead manager shows Unreachable: {:?}",
            manager_status(&tb, leader)
        )
    });

    // Writes work through the new leader; the worker moves to it and its task runs on.
    sleep_service_on_workers(&tb, leader, "after", 1);
    // The first container was untouched; the new one runs beside it.
    sleeps_become(&tb, 3, 2);
    wait_for(Duration::from_secs(15), || {
        let out = tb
            .cli_ok(leader, &["node", "ls", "--format", "json"])
            .ok()?;
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|n| n["Hostname"] == "node4" && n["Status"] == "Ready")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the worker reports to the new leader\n{}", tb.all_logs()));
    let ps = tb.cli_ok(leader, &["service", "ps", "web"]).unwrap();
    assert!(ps.contains("Running"), "{ps}");
}

#[test]
fn a_cut_off_leader_refuses_writes_fast_and_follows_after_healing() {
    let tb = ha_cluster(3, 0);
    let leader_of = |i: usize| {
        manager_status_opt(&tb, i)
            .and_then(|st| st.into_iter().find(|(_, s)| s == "Leader").map(|(h, _)| h))
    };
    // Whoever leads now (a busy machine may have moved leadership during the joins).
    let old = wait_for(Duration::from_secs(10), || {
        let h = leader_of(0)?;
        tb.nodes.iter().position(|n| n.name == h)
    })
    .expect("a leader");
    let other = (old + 1) % 3;

    tb.cut(old).unwrap();
    // The majority elects one of its own.
    let old_name = tb.nodes[old].name.clone();
    let new = wait_for(Duration::from_secs(10), || {
        leader_of(other).filter(|h| *h != old_name)
    })
    .unwrap_or_else(|| panic!("the majority elects a leader\n{}", tb.all_logs()));
    // The cut-off manager refuses writes quickly, saying why.
    let started = Instant::now();
    let out = tb.cli(
        old,
        &["service", "create", "--name", "lost", "busybox", "true"],
    );
    assert!(
        !out.success
            && out
                .stderr
                .contains("no leader: 1 of 3 managers reachable, 2 needed"),
        "{}",
        out.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Reads still answer there, from its copy, saying that it may be stale.
    let out = tb.cli(old, &["node", "ls"]);
    assert!(
        out.success
            && out.stdout.contains("node1")
            && out.stderr.contains("may be stale")
            && out.stderr.contains("managers reachable"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );

    tb.heal(old).unwrap();
    wait_for(Duration::from_secs(15), || {
        (leader_of(old).as_deref() == Some(new.as_str())).then_some(())
    })
    .unwrap_or_else(|| panic!("the old leader follows {new}\n{}", tb.all_logs()));
    // The write it refused never happened; writes through it work again, and its reads
    // are not marked stale any more.
    assert!(!tb
        .cli_ok(other, &["service", "ls"])
        .unwrap()
        .contains("lost"));
    let out = tb.cli(old, &["service", "ls"]);
    assert!(
        out.success && !out.stderr.contains("stale"),
        "{}",
        out.stderr
    );
    tb.cli_ok(
        old,
        &[
            "service", "create", "-d", "--name", "later", "busybox", "true",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
}

/// [`manager_status`], or `None` while node `i` cannot answer.
fn manager_status_opt(tb: &shoal_testbed::Testbed, i: usize) -> Option<Vec<(String, String)>> {
    let out = tb.cli_ok(i, &["node", "ls", "--format", "json"]).ok()?;
    Some(
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|n| {
                (
                    n["Hostname"].as_str().unwrap_or("").to_string(),
                    n["ManagerStatus"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    )
}

#[test]
fn all_managers_restarted_at_once_keep_the_cluster_and_its_containers() {
    let mut tb = ha_cluster(3, 1);
    // info on a manager lists every manager and who leads.
    let i = info(&tb, 2);
    let statuses = i["ManagerStatus"].as_array().cloned().unwrap_or_default();
    assert_eq!(statuses.len(), 3, "{i}");
    assert_eq!(
        statuses.iter().filter(|s| s["Status"] == "Leader").count(),
        1,
        "{i}"
    );
    import_busybox(&tb, 3);
    sleep_service_on_workers(&tb, 0, "keep", 2);
    sleeps_become(&tb, 3, 2);
    for i in 0..3 {
        tb.kill(i).unwrap();
    }
    for i in 0..3 {
        tb.start(i).unwrap();
    }
    // A leader again, the service intact, the worker back and its containers untouched.
    wait_for(Duration::from_secs(15), || {
        manager_status_opt(&tb, 1)?
            .iter()
            .any(|(_, s)| s == "Leader")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("a leader after restarting every manager\n{}", tb.all_logs()));
    let ls = tb.cli_ok(1, &["service", "ls"]).unwrap();
    assert!(ls.contains("keep") && ls.contains("2/2"), "{ls}");
    tb.cli_ok(2, &["service", "scale", "keep=3"])
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    // Two kept, one new (a container reported running may still be exec'ing sleep).
    sleeps_become(&tb, 3, 3);
}

#[test]
fn demote_and_promote_round_trip_and_the_old_manager_certificate_is_refused_at_once() {
    let mut tb = ha_cluster(3, 0);

    // With node2 down, demoting node3 would leave 1 of 2 managers reachable: refused.
    tb.kill(1).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let out = tb.cli(0, &["node", "demote", "node3"]);
    assert!(
        !out.success
            && out
                .stderr
                .contains("would leave 1 of 2 managers reachable, 2 needed"),
        "{}",
        out.stderr
    );
    tb.start(1).unwrap();
    wait_for(Duration::from_secs(10), || {
        manager_status_opt(&tb, 0)?
            .iter()
            .all(|(_, s)| s == "Leader" || s == "Reachable")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("node2 back\n{}", tb.all_logs()));

    let old = common::raw::Identity::of_node(&tb, 2);
    let raft_id = |tb: &shoal_testbed::Testbed| {
        let v: serde_json::Value =
            serde_json::from_str(&tb.cli_ok(0, &["node", "inspect", "node3"]).unwrap()).unwrap();
        v[0]["ManagerStatus"]["RaftID"].as_u64()
    };
    let first_id = raft_id(&tb).expect("node3 has a raft id");
    tb.cli_ok(0, &["node", "demote", "node3"])
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    let demoted = Instant::now();
    // Its manager certificate no longer works as one, at once.
    let err = common::raw::with_channel(&tb, 2, &old, |ch| async move {
        shoal_proto::control::control_client::ControlClient::new(ch)
            .list_nodes(shoal_proto::control::ListNodesRequest {})
            .await
            .map(|_| ())
    })
    .unwrap_err();
    assert!(demoted.elapsed() < Duration::from_secs(1));
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("demoted"), "{err:?}");
    // The node renews into a worker certificate, stops its manager and forgets the
    // cluster state it held; its daemon answers all the while (the demotion does not
    // hold the membership lock across the manager's shutdown): `info` and `node ls`
    // return at once, whatever they say.
    let mut slowest = Duration::ZERO;
    wait_for(Duration::from_secs(15), || {
        let t = Instant::now();
        let worker = info(&tb, 2)["Role"] == "worker";
        let _ = tb.cli(2, &["node", "ls"]);
        slowest = slowest.max(t.elapsed());
        worker.then_some(())
    })
    .unwrap_or_else(|| panic!("node3 is a worker\n{}", tb.all_logs()));
    assert!(
        slowest < Duration::from_secs(2),
        "info and node ls took {slowest:?} during the demotion\n{}",
        tb.all_logs()
    );
    wait_for(Duration::from_secs(5), || {
        (!tb.nodes[2].state_dir.join("raft").exists()).then_some(())
    })
    .expect("the demoted manager's store is deleted");
    let st = manager_status(&tb, 0);
    let of = |h: &str| st.iter().find(|(n, _)| n == h).map(|(_, s)| s.clone());
    assert_eq!(of("node3").as_deref(), Some(""), "{st:?}");
    assert!(
        of("node1").as_deref() == Some("Leader") || of("node2").as_deref() == Some("Leader"),
        "{st:?}"
    );
    wait_for(Duration::from_secs(10), || {
        (status_of(&tb, "node3") == "Ready").then_some(())
    })
    .unwrap_or_else(|| panic!("node3 reports as a worker\n{}", tb.all_logs()));
    // Two managers still write.
    tb.cli_ok(
        1,
        &[
            "service", "create", "-d", "--name", "still", "busybox", "true",
        ],
    )
    .unwrap();

    // A node that is down cannot be promoted: it could not join the raft group.
    tb.kill(2).unwrap();
    wait_for(Duration::from_secs(20), || {
        (status_of(&tb, "node3") == "Down").then_some(())
    })
    .unwrap_or_else(|| panic!("node3 down\n{}", tb.all_logs()));
    let out = tb.cli(0, &["node", "promote", "node3"]);
    assert!(
        !out.success && out.stderr.contains("node node3 is down"),
        "{}",
        out.stderr
    );
    tb.start(2).unwrap();
    wait_for(Duration::from_secs(15), || {
        (status_of(&tb, "node3") == "Ready").then_some(())
    })
    .unwrap_or_else(|| panic!("node3 back\n{}", tb.all_logs()));

    // Promoted back: it renews into a manager certificate, joins the raft group, and
    // serves writes of its own, without a restart.
    let out = tb
        .cli_ok(0, &["node", "promote", "node3"])
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    assert!(out.contains("promoted to a manager"), "{out}");
    let out = tb.cli(0, &["node", "promote", "node3"]);
    assert!(
        !out.success && out.stderr.contains("already a manager"),
        "{}",
        out.stderr
    );
    wait_for(Duration::from_secs(20), || {
        let st = manager_status_opt(&tb, 0)?;
        st.iter()
            .any(|(n, s)| n == "node3" && s == "Reachable")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("node3 reachable as a manager\n{}", tb.all_logs()));
    wait_for(Duration::from_secs(10), || {
        (info(&tb, 2)["Role"] == "manager").then_some(())
    })
    .unwrap_or_else(|| panic!("node3 says it is a manager\n{}", tb.all_logs()));
    tb.cli_ok(
        2,
        &[
            "service", "create", "-d", "--name", "again", "busybox", "true",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    let ls = tb.cli_ok(2, &["service", "ls"]).unwrap();
    assert!(ls.contains("still") && ls.contains("again"), "{ls}");
    // A new member ID: the one it had before is never used again.
    let second_id = raft_id(&tb).expect("node3 has a raft id again");
    assert_ne!(first_id, second_id);
    // A manager's raft messages speak only for its own member ID.
    let now = common::raw::Identity::of_node(&tb, 2);
    let err = common::raw::with_channel(&tb, 2, &now, move |ch| async move {
        let vote = serde_json::json!({
            "vote": {"leader_id": {"term": 999, "node_id": first_id}, "committed": false},
            "last_log_id": null,
        });
        shoal_proto::raft::raft_client::RaftClient::new(ch)
            .call(shoal_proto::raft::RaftMessage {
                rpc: shoal_store::RaftRpc::Vote as u32,
                body: vote.to_string().into_bytes(),
            })
            .await
            .map(|_| ())
    })
    .unwrap_err();
    assert!(err.message().contains("speaks for member"), "{err:?}");

    // The last manager cannot be demoted.
    tb.cli_ok(0, &["node", "demote", "node2"]).unwrap();
    tb.cli_ok(0, &["node", "demote", "node3"])
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    let out = tb.cli(0, &["node", "demote", "node1"]);
    assert!(
        !out.success && out.stderr.contains("is the last manager"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_manager_joining_after_compaction_catches_up_from_a_snapshot() {
    let mut tb = testbed(4);
    tb.init(
        0,
        &["--dispatcher-heartbeat", "1s", "--snapshot-interval", "100"],
    )
    .unwrap();
    join_manager(&tb, 1, 0);
    join_manager(&tb, 2, 0);
    for i in 0..150 {
        tb.cli_ok(
            0,
            &["node", "update", "--label-add", &format!("k={i}"), "node1"],
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    }
    // The log was snapshotted and compacted behind the snapshot.
    fn raft(tb: &shoal_testbed::Testbed, i: usize, what: &str) -> u64 {
        info(tb, i)["Raft"][what].as_u64().unwrap_or(0)
    }
    wait_for(Duration::from_secs(10), || {
        (raft(&tb, 0, "SnapshotIndex") >= 100).then_some(())
    })
    .unwrap_or_else(|| panic!("a snapshot\n{}", tb.all_logs()));
    assert_eq!(raft(&tb, 0, "SnapshotInterval"), 100);

    // A 4th manager: the entries before the snapshot are gone from every log, so it
    // can only catch up from the snapshot. It does, and votes.
    join_manager(&tb, 3, 0);
    wait_for(Duration::from_secs(10), || {
        manager_status_opt(&tb, 0)?
            .iter()
            .any(|(h, s)| h == "node4" && s == "Reachable")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("node4 reachable\n{}", tb.all_logs()));
    assert!(tb.log(3).contains("installed a snapshot"), "{}", tb.log(3));
    // It goes on from the log after the snapshot: its copy reaches the last write.
    wait_for(Duration::from_secs(10), || {
        tb.cli_ok(3, &["node", "inspect", "node1"])
            .ok()?
            .contains("\"149\"")
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "node4 has the last write: {:?}\n{}",
            tb.cli(3, &["node", "inspect", "node1"]),
            tb.all_logs()
        )
    });

    // The Raft settings: checked, and the election timeout applies from a restart.
    let out = tb.cli(0, &["update", "--snapshot-interval", "5"]);
    assert!(
        !out.success && out.stderr.contains("at least 10"),
        "{}",
        out.stderr
    );
    let out = tb.cli(0, &["update", "--election-timeout", "50ms"]);
    assert!(
        !out.success && out.stderr.contains("between 200ms and 60s"),
        "{}",
        out.stderr
    );
    let out = tb
        .cli_ok(0, &["update", "--election-timeout", "2s"])
        .unwrap();
    assert!(out.contains("next restart"), "{out}");
    assert_eq!(raft(&tb, 1, "ElectionTimeoutMs"), 600);
    tb.restart(1).unwrap();
    wait_for(Duration::from_secs(10), || {
        (raft(&tb, 1, "ElectionTimeoutMs") == 2000).then_some(())
    })
    .unwrap_or_else(|| panic!("node2 uses the new timeout\n{}", tb.all_logs()));
}

#[test]
fn a_slow_join_does_not_block_info_on_the_joining_node() {
    let tb = testbed(2);
    tb.init(0, &["--dispatcher-heartbeat", "1s"]).unwrap();
    let token = tb.cli_ok(0, &["join-token", "-q", "manager"]).unwrap();
    // The manager is cut off: the join waits for its connection to time out.
    tb.cut(0).unwrap();
    std::thread::scope(|s| {
        let join = s.spawn(|| tb.cli(1, &["join", "--token", token.trim(), &tb.nodes[0].addr()]));
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        let i = info(&tb, 1);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(i["State"], "pending", "{i}");
        assert!(i["Error"].as_str().unwrap_or("").contains("joining"), "{i}");
        let out = join.join().unwrap();
        assert!(!out.success, "{}", out.stdout);
    });
    // The failed join leaves the node as it was, and a join then works.
    assert_eq!(info(&tb, 1)["State"], "inactive");
    tb.heal(0).unwrap();
    join_manager(&tb, 1, 0);
    assert_eq!(info(&tb, 1)["Role"], "manager");
}

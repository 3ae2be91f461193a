//! Issue #5 (first part): removal revokes a node's certificate at once; limited join tokens.

mod common;

use common::*;
use std::time::Duration;

use common::raw::pem_der;

/// A heartbeat made with node `i`'s certificate files (saved at `dir`), from its namespace.
fn heartbeat_as(
    tb: &shoal_testbed::Testbed,
    i: usize,
    dir: &std::path::Path,
) -> Result<(), tonic::Status> {
    common::raw::heartbeat(tb, i, &common::raw::Identity::from_dir(dir))
}

#[test]
fn removed_node_is_refused_at_once_and_stops_its_containers() {
    let mut tb = cluster(3, &["--dispatcher-heartbeat", "1s"]);
    for i in 0..3 {
        import_busybox(&tb, i);
    }
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "3",
            "--stop-grace-period",
            "200ms",
            "busybox",
            "sleep",
            "600",
        ],
    )
    .unwrap();
    sleeps_become(&tb, 1, 1);
    // Keep a copy of node2's identity: the node forgets it once removed.
    let saved = tb.dir().join("node2-certs");
    std::fs::create_dir_all(&saved).unwrap();
    for f in ["ca.crt", "node.crt", "node.key"] {
        std::fs::copy(tb.nodes[1].state_dir.join("certs").join(f), saved.join(f)).unwrap();
    }
    assert!(heartbeat_as(&tb, 1, &saved).is_ok());

    tb.cli_ok(0, &["node", "rm", "--force", "node2"]).unwrap();
    let err = heartbeat_as(&tb, 1, &saved).unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("node removed from cluster"),
        "{err:?}"
    );

    // The node learns it, stops its containers and says so.
    shoal_testbed::wait_for(Duration::from_secs(15), || {
        (tb.processes_named(1, "sleep") == 0).then_some(())
    })
    .unwrap_or_else(|| panic!("removed node's containers stopped\n{}", tb.log(1)));
    // While it stops and forgets, it says so ("pending"); then it is out.
    let i = shoal_testbed::wait_for(Duration::from_secs(10), || {
        let i = info(&tb, 1);
        (i["State"] == "inactive").then_some(i)
    })
    .unwrap_or_else(|| panic!("node2 inactive: {}\n{}", info(&tb, 1), tb.log(1)));
    assert!(
        i["Error"]
            .as_str()
            .unwrap()
            .contains("node removed from cluster"),
        "{i}"
    );
    // Its replica runs elsewhere.
    shoal_testbed::wait_for(Duration::from_secs(15), || {
        let out = tb.cli_ok(0, &["service", "ls"]).ok()?;
        out.contains("3/3").then_some(())
    })
    .expect("replaced");

    // A manager restart does not forget the revocation.
    tb.restart(0).unwrap();
    wait_ready(&tb, 2);
    let err = heartbeat_as(&tb, 1, &saved).unwrap_err();
    assert!(
        err.message().contains("node removed from cluster"),
        "{err:?}"
    );
    // The node can join again with a token, as a new node.
    tb.join_worker(1, 0).unwrap();
    wait_ready(&tb, 3);
}

#[test]
fn limited_join_tokens_expire_and_run_out() {
    let tb = testbed(4);
    tb.init(0, &[]).unwrap();
    let standing = tb
        .cli_ok(0, &["join-token", "-q", "worker"])
        .unwrap()
        .trim()
        .to_string();
    let once = tb
        .cli_ok(0, &["join-token", "-q", "--max-uses", "1", "worker"])
        .unwrap()
        .trim()
        .to_string();
    let brief = tb
        .cli_ok(0, &["join-token", "-q", "--ttl", "2s", "worker"])
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(once, standing);
    assert_eq!(
        tb.cli_ok(0, &["join-token", "-q", "worker"])
            .unwrap()
            .trim(),
        standing,
        "standing token unchanged"
    );

    let list = tb.cli_ok(0, &["join-token", "--list"]).unwrap();
    assert!(
        list.contains("limited") && list.contains("standing"),
        "{list}"
    );
    for t in [&standing, &once, &brief] {
        assert!(
            !list.contains(t.rsplit('-').next().unwrap()),
            "no secret listed: {list}"
        );
    }

    let mgr = tb.nodes[0].addr();
    tb.cli_ok(1, &["join", "--token", &once, &mgr]).unwrap();
    let out = tb.cli(2, &["join", "--token", &once, &mgr]);
    assert!(
        !out.success && out.stderr.contains("--max-uses"),
        "{}",
        out.stderr
    );
    std::thread::sleep(Duration::from_millis(2500));
    let out = tb.cli(2, &["join", "--token", &brief, &mgr]);
    assert!(
        !out.success && out.stderr.contains("expired"),
        "{}",
        out.stderr
    );

    // Rotation cancels the role's limited tokens.
    let fresh = tb
        .cli_ok(0, &["join-token", "-q", "--max-uses", "5", "worker"])
        .unwrap()
        .trim()
        .to_string();
    tb.cli_ok(0, &["join-token", "--rotate", "worker"]).unwrap();
    let out = tb.cli(2, &["join", "--token", &fresh, &mgr]);
    assert!(
        !out.success && out.stderr.contains("invalid join token"),
        "{}",
        out.stderr
    );
    tb.join_worker(2, 0).unwrap();
    wait_ready(&tb, 3);
}

fn copy_certs(tb: &shoal_testbed::Testbed, i: usize, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["ca.crt", "node.crt", "node.key"] {
        std::fs::copy(tb.nodes[i].state_dir.join("certs").join(f), to.join(f)).unwrap();
    }
}

fn cert_life_secs(path: &std::path::Path) -> i64 {
    use x509_parser::prelude::*;
    let der = pem_der(path);
    let (_, c) = X509Certificate::from_der(&der).unwrap();
    c.validity().not_after.timestamp() - c.validity().not_before.timestamp()
}

#[test]
fn a_superseded_certificate_can_be_revoked_while_the_current_one_works() {
    let tb = cluster(2, &["--cert-expiry", "1m", "--dispatcher-heartbeat", "1s"]);
    let old = tb.dir().join("node2-old");
    copy_certs(&tb, 1, &old);
    let old_serial = info(&tb, 1)["CertificateSerial"]
        .as_str()
        .unwrap()
        .to_string();
    // Certificates issued from now on live 2 minutes.
    tb.cli_ok(0, &["update", "--cert-expiry", "2m"]).unwrap();

    // Renewal comes between 50 % and 80 % of the 1-minute life.
    shoal_testbed::wait_for(Duration::from_secs(75), || {
        (info(&tb, 1)["CertificateRenewals"].as_u64()? >= 1).then_some(())
    })
    .unwrap_or_else(|| panic!("node2 renewed\n{}", tb.log(1)));
    let i = info(&tb, 1);
    let new_serial = i["CertificateSerial"].as_str().unwrap().to_string();
    assert_ne!(new_serial, old_serial);
    assert_ne!(
        std::fs::read(old.join("node.key")).unwrap(),
        std::fs::read(tb.nodes[1].state_dir.join("certs/node.key")).unwrap(),
        "a fresh key"
    );
    let life = cert_life_secs(&tb.nodes[1].state_dir.join("certs/node.crt"));
    assert!(
        (life - 120 - 120).abs() <= 5,
        "new life is 2 minutes (+ backdate): {life}"
    );
    let insp: serde_json::Value =
        serde_json::from_str(&tb.cli_ok(0, &["node", "inspect", "node2"]).unwrap()).unwrap();
    assert_eq!(insp[0]["Certificate"]["Serial"], new_serial.as_str());
    assert_eq!(
        insp[0]["Certificate"]["Previous"][0]["Serial"],
        old_serial.as_str()
    );

    // Both certificates work until the old one is revoked...
    assert!(heartbeat_as(&tb, 1, &old).is_ok());
    tb.cli_ok(0, &["node", "revoke-certificate", "node2", &old_serial])
        .unwrap();
    let t = std::time::Instant::now();
    let err = shoal_testbed::wait_for(Duration::from_secs(1), || heartbeat_as(&tb, 1, &old).err())
        .expect("old certificate refused within 1 s");
    assert!(t.elapsed() <= Duration::from_secs(1));
    assert!(err.message().contains("certificate revoked"), "{err:?}");
    // ...while the current one keeps working.
    let current = tb.dir().join("node2-current");
    copy_certs(&tb, 1, &current);
    assert!(heartbeat_as(&tb, 1, &current).is_ok());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(status_of(&tb, "node2"), "Ready");
    // Something that is not a serial is refused with a reason.
    let out = tb.cli(0, &["node", "revoke-certificate", "node2", "0x-1"]);
    assert!(
        !out.success && out.stderr.contains("is not a serial"),
        "{}",
        out.stderr
    );
}

#[test]
fn nodes_renew_for_minutes_without_a_failed_call() {
    let tb = cluster(3, &["--cert-expiry", "2m"]);
    for i in 0..3 {
        import_busybox(&tb, i);
    }
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "3",
            "busybox",
            "sleep",
            "3600",
        ],
    )
    .unwrap();
    let keys: Vec<Vec<u8>> = (0..3)
        .map(|i| std::fs::read(tb.nodes[i].state_dir.join("certs/node.key")).unwrap())
        .collect();
    let until = std::time::Instant::now() + Duration::from_secs(8 * 60);
    while std::time::Instant::now() < until {
        assert_eq!(ready_count(&tb), 3, "{}", tb.cli(0, &["node", "ls"]).stdout);
        let ls = tb.cli_ok(0, &["service", "ls"]).unwrap();
        assert!(ls.contains("3/3"), "{ls}");
        std::thread::sleep(Duration::from_secs(5));
    }
    for (i, key) in keys.iter().enumerate() {
        let n = info(&tb, i)["CertificateRenewals"].as_u64().unwrap();
        assert!(n >= 2, "node{} renewed {n} times\n{}", i + 1, tb.log(i));
        assert_ne!(
            key,
            &std::fs::read(tb.nodes[i].state_dir.join("certs/node.key")).unwrap()
        );
    }
    let logs = tb.all_logs();
    for bad in [
        "heartbeat failed",
        "session stream broke",
        "task status not delivered",
        "renewal failed",
        "cannot open a session",
    ] {
        assert!(!logs.contains(bad), "a call failed ({bad}):\n{logs}");
    }
}

#[test]
fn a_node_off_past_its_certificate_expiry_rejoins_and_keeps_its_id() {
    use x509_parser::prelude::*;
    let mut tb = cluster(2, &["--cert-expiry", "1m", "--dispatcher-heartbeat", "1s"]);
    tb.cli_ok(0, &["node", "update", "--label-add", "zone=a", "node2"])
        .unwrap();
    let id = info(&tb, 1)["NodeID"].as_str().unwrap().to_string();
    tb.stop(1).unwrap();
    let der = pem_der(&tb.nodes[1].state_dir.join("certs/node.crt"));
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let not_after = cert.validity().not_after.timestamp();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    while now() <= not_after + 1 {
        std::thread::sleep(Duration::from_millis(500));
    }
    tb.start(1).unwrap();
    let i = info(&tb, 1);
    assert_eq!(i["State"], "error", "{i}");
    assert!(i["Error"].as_str().unwrap().contains("--rejoin"), "{i}");

    let token = tb
        .cli_ok(0, &["join-token", "-q", "worker"])
        .unwrap()
        .trim()
        .to_string();
    let mgr = tb.nodes[0].addr();
    let out = tb.cli(1, &["join", "--token", &token, &mgr]);
    assert!(
        !out.success && out.stderr.contains("--rejoin"),
        "{}",
        out.stderr
    );
    let out = tb
        .cli_ok(1, &["join", "--token", &token, "--rejoin", &mgr])
        .unwrap();
    assert!(out.contains(&id), "{out}");
    assert_eq!(info(&tb, 1)["NodeID"], id.as_str());
    shoal_testbed::wait_for(Duration::from_secs(10), || {
        (status_of(&tb, "node2") == "Ready").then_some(())
    })
    .unwrap_or_else(|| panic!("rejoined node Ready\n{}", tb.log(1)));
    let insp: serde_json::Value =
        serde_json::from_str(&tb.cli_ok(0, &["node", "inspect", "node2"]).unwrap()).unwrap();
    assert_eq!(insp[0]["ID"], id.as_str());
    assert_eq!(insp[0]["Spec"]["Labels"]["zone"], "a", "labels kept");
    assert_eq!(nodes(&tb, 0).len(), 2, "no second node record");
    // --rejoin with nothing to rejoin is refused plainly.
    let out = tb.cli(1, &["join", "--token", &token, "--rejoin", &mgr]);
    assert!(!out.success, "{}", out.stdout);
}

//! Issue #5: root CA rotation, and renewal failures visible to the managers.

mod common;

use common::*;
use shoal_testbed::{wait_for, Testbed};
use std::time::Duration;

fn ca_status(tb: &Testbed) -> String {
    tb.cli_ok(0, &["ca"]).expect("shoal ca")
}

/// The value after `key` on the first line of `text` that has it.
fn field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

fn issuer_of(tb: &Testbed, i: usize) -> String {
    let pem = std::fs::read_to_string(tb.nodes[i].state_dir.join("certs/node.crt")).unwrap();
    let der = shoal_pki::pem_certs(&pem).unwrap().remove(0);
    shoal_pki::CertSummary::parse(&der).unwrap().issuer
}

/// `shoal ca --rotate --ca-cert CERT --ca-key KEY`, expected to be refused with `why`.
fn refused_rotation(tb: &Testbed, cert: &std::path::Path, key: &std::path::Path, why: &str) {
    let out = tb.cli(
        0,
        &[
            "ca",
            "--rotate",
            "--ca-cert",
            cert.to_str().unwrap(),
            "--ca-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(!out.success && out.stderr.contains(why), "{}", out.stderr);
}

fn worker_token(tb: &Testbed) -> String {
    tb.cli_ok(0, &["join-token", "-q", "worker"])
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn root_rotation_on_five_nodes_finishes_with_force_and_the_down_node_rejoins() {
    let mut tb = cluster(5, &["--dispatcher-heartbeat", "1s"]);
    let old_token = worker_token(&tb);
    let old_digest = field(&ca_status(&tb), "Digest:");
    assert!(
        old_token.contains(&old_digest),
        "{old_token} / {old_digest}"
    );
    let down_id = info(&tb, 4)["NodeID"].as_str().unwrap().to_string();
    tb.stop(4).unwrap();
    wait_for(Duration::from_secs(10), || {
        (status_of(&tb, "node5") == "Down").then_some(())
    })
    .expect("node5 Down");

    // Without --force the down node holds the rotation at 4/5 and is named.
    let out = tb.cli_ok(0, &["ca", "--rotate", "--detach"]).unwrap();
    assert!(out.contains("started"), "{out}");
    let status = wait_for(Duration::from_secs(20), || {
        let s = ca_status(&tb);
        s.contains("4/5 nodes").then_some(s)
    })
    .unwrap_or_else(|| panic!("4/5 nodes\n{}\n{}", ca_status(&tb), tb.all_logs()));
    assert!(status.contains("node5 (down)"), "{status}");
    let new_digest = field(&status, "New root:");
    assert_ne!(new_digest, old_digest);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        ca_status(&tb).contains("4/5 nodes"),
        "not finished without node5"
    );
    // During the change the tokens still pin the old root, and a node joining with one
    // gets a certificate from the new root (verified through the cross-signed root).
    let mgr = tb.nodes[0].addr();
    let during = tb.add_node().unwrap();
    tb.cli_ok(during, &["join", "--token", &old_token, &mgr])
        .unwrap_or_else(|e| panic!("join during rotation: {e}\n{}", tb.log(0)));
    wait_for(Duration::from_secs(10), || {
        ca_status(&tb).contains("5/6 nodes").then_some(())
    })
    .unwrap_or_else(|| panic!("5/6 nodes\n{}", ca_status(&tb)));
    // A second rotation while one runs is refused with what to do.
    let out = tb.cli(0, &["ca", "--rotate", "--detach"]);
    assert!(
        !out.success && out.stderr.contains("already running") && out.stderr.contains("--force"),
        "{}",
        out.stderr
    );

    // --force finishes without it.
    let out = tb.cli(0, &["ca", "--rotate", "--force"]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("Root CA rotated"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&down_id),
        "left-out node named: {}",
        out.stdout
    );
    let status = ca_status(&tb);
    assert_eq!(field(&status, "Digest:"), new_digest, "{status}");
    assert!(status.contains(&down_id), "{status}");
    // Every running node renewed onto the new root and trusts only it now.
    let new_subject = field(&status, "Subject:");
    for i in [0, 1, 2, 3, during] {
        assert_eq!(issuer_of(&tb, i), new_subject, "node{} issuer", i + 1);
        wait_for(Duration::from_secs(10), || {
            (info(&tb, i)["RootCADigest"] == new_digest.as_str()).then_some(())
        })
        .unwrap_or_else(|| panic!("node{} still trusts {}", i + 1, info(&tb, i)));
    }
    assert_eq!(ready_count(&tb), 5);

    // The join tokens changed; one of the old root is refused.
    let new_token = worker_token(&tb);
    assert_ne!(new_token, old_token);
    assert!(new_token.contains(&new_digest));
    let fresh = tb.add_node().unwrap();
    let out = tb.cli(fresh, &["join", "--token", &old_token, &mgr]);
    assert!(
        !out.success && out.stderr.contains("does not match"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    tb.cli_ok(fresh, &["join", "--token", &new_token, &mgr])
        .unwrap();

    // The node that was down comes back, finds the managers untrusted, says what to
    // do, and rejoins with a token, keeping its node ID.
    tb.start(4).unwrap();
    let i = wait_for(Duration::from_secs(20), || {
        let i = info(&tb, 4);
        (i["State"] == "error").then_some(i)
    })
    .unwrap_or_else(|| panic!("node5 error state\n{}", tb.log(4)));
    let err = i["Error"].as_str().unwrap();
    assert!(err.contains("rotated") && err.contains("--rejoin"), "{err}");
    let out = tb
        .cli_ok(4, &["join", "--token", &new_token, "--rejoin", &mgr])
        .unwrap();
    assert!(out.contains(&down_id), "{out}");
    wait_for(Duration::from_secs(10), || {
        (ready_count(&tb) == 7).then_some(())
    })
    .unwrap_or_else(|| panic!("7 Ready\n{}", tb.cli(0, &["node", "ls"]).stdout));
    assert_eq!(issuer_of(&tb, 4), new_subject);
    assert_eq!(nodes(&tb, 0).len(), 7, "no second record for node5");
}

#[test]
fn an_operator_root_and_a_renewal_failure_the_managers_can_see() {
    let tb = cluster(2, &["--dispatcher-heartbeat", "1s"]);
    let dir = tb.dir().join("operator-ca");
    std::fs::create_dir_all(&dir).unwrap();
    let root =
        shoal_pki::RootCa::generate_named(Duration::from_secs(5 * 365 * 86400), "Example Ops Root")
            .unwrap();
    let other = shoal_pki::RootCa::generate(Duration::from_secs(5 * 365 * 86400)).unwrap();
    let (cert, key, bad_key) = (
        dir.join("ca.pem"),
        dir.join("ca.key"),
        dir.join("other.key"),
    );
    std::fs::write(&cert, root.cert_pem()).unwrap();
    std::fs::write(&key, root.key_pem()).unwrap();
    std::fs::write(&bad_key, other.key_pem()).unwrap();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();

    // A key that is not the certificate's is refused and changes nothing.
    let before = ca_status(&tb);
    refused_rotation(&tb, &cert, &bad_key, "key does not belong");
    assert_eq!(ca_status(&tb), before);
    // A root named like the current one is refused: the two must be told apart.
    let same_name = shoal_pki::RootCa::generate(Duration::from_secs(5 * 365 * 86400)).unwrap();
    let (sn_cert, sn_key) = (dir.join("same.pem"), dir.join("same.key"));
    std::fs::write(&sn_cert, same_name.cert_pem()).unwrap();
    std::fs::write(&sn_key, same_name.key_pem()).unwrap();
    refused_rotation(&tb, &sn_cert, &sn_key, "same subject");
    assert_eq!(ca_status(&tb), before);
    let out = tb.cli(0, &["ca", "--rotate", "--ca-cert", &s(&cert)]);
    assert!(
        !out.success && out.stderr.contains("go together"),
        "{}",
        out.stderr
    );

    // node2 cannot write its renewed key: its renewal fails, and the manager shows why.
    let blocker = tb.nodes[1].state_dir.join("certs/node.key.new");
    std::fs::create_dir_all(&blocker).unwrap();
    tb.cli_ok(
        0,
        &[
            "ca",
            "--rotate",
            "--detach",
            "--ca-cert",
            &s(&cert),
            "--ca-key",
            &s(&key),
        ],
    )
    .unwrap();
    let err = wait_for(Duration::from_secs(20), || {
        let insp: serde_json::Value =
            serde_json::from_str(&tb.cli_ok(0, &["node", "inspect", "node2"]).unwrap()).unwrap();
        let e = insp[0]["Certificate"]["RenewalError"]
            .as_str()
            .unwrap_or("")
            .to_string();
        (!e.is_empty()).then_some(e)
    })
    .unwrap_or_else(|| panic!("renewal error reported\n{}", tb.log(1)));
    assert!(err.contains("node.key.new"), "{err}");
    let pretty = tb
        .cli_ok(0, &["node", "inspect", "--pretty", "node2"])
        .unwrap();
    assert!(pretty.contains("Renewal Error:"), "{pretty}");
    // The manager moves onto the new root; node2 holds the rotation.
    wait_for(Duration::from_secs(10), || {
        ca_status(&tb).contains("1/2 nodes").then_some(())
    })
    .unwrap_or_else(|| panic!("1/2 nodes\n{}", ca_status(&tb)));

    // Once it can write again, the retry succeeds, the error clears, and the rotation
    // finishes onto the operator's root.
    std::fs::remove_dir(&blocker).unwrap();
    let status = wait_for(Duration::from_secs(30), || {
        let s = ca_status(&tb);
        s.contains("Example Ops Root").then_some(s)
    })
    .unwrap_or_else(|| panic!("rotation finished\n{}\n{}", ca_status(&tb), tb.log(1)));
    assert!(status.contains(&root.cert_pem()), "{status}");
    assert_eq!(
        tb.cli_ok(0, &["ca", "-q"]).unwrap(),
        root.cert_pem(),
        "ca -q prints the root"
    );
    let insp: serde_json::Value =
        serde_json::from_str(&tb.cli_ok(0, &["node", "inspect", "node2"]).unwrap()).unwrap();
    assert_eq!(insp[0]["Certificate"]["RenewalError"], "", "{insp}");
    assert!(issuer_of(&tb, 1).contains("Example Ops Root"));
    wait_ready(&tb, 2);

    // Rotating to the same key again is refused.
    refused_rotation(&tb, &cert, &key, "current root's key");

    // Right after, a generated root: the CLI waits, shows progress and finishes.
    let token = worker_token(&tb);
    let out = tb.cli(0, &["ca", "--rotate"]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("2 nodes"), "{}", out.stdout);
    assert!(out.stdout.contains("Root CA rotated"), "{}", out.stdout);
    let status = ca_status(&tb);
    assert!(
        field(&status, "Subject:").starts_with("CN=shoal-ca "),
        "{status}"
    );
    assert_ne!(worker_token(&tb), token);
    assert!(issuer_of(&tb, 1).starts_with("CN=shoal-ca "));
    wait_ready(&tb, 2);
}

#[test]
fn a_node_left_out_of_a_rotation_can_leave_and_join_as_a_new_node() {
    let mut tb = cluster(2, &["--dispatcher-heartbeat", "1s"]);
    import_busybox(&tb, 1);
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "idle",
            "--mode",
            "global",
            "--constraint",
            "node.role==worker",
            "busybox",
            "sleep",
            "600",
        ],
    )
    .unwrap();
    sleeps_become(&tb, 1, 1);
    let old_id = info(&tb, 1)["NodeID"].as_str().unwrap().to_string();
    tb.stop(1).unwrap();
    wait_for(Duration::from_secs(10), || {
        (status_of(&tb, "node2") == "Down").then_some(())
    })
    .expect("node2 Down");
    tb.cli_ok(0, &["ca", "--rotate", "--force"]).unwrap();
    tb.start(1).unwrap();
    let i = wait_for(Duration::from_secs(20), || {
        let i = info(&tb, 1);
        (i["State"] == "error").then_some(i)
    })
    .unwrap_or_else(|| panic!("node2 error state\n{}", tb.log(1)));
    assert!(i["Error"].as_str().unwrap().contains("shoal leave"), "{i}");
    // A plain join says what to do instead of overwriting the kept identity.
    let token = worker_token(&tb);
    let mgr = tb.nodes[0].addr();
    let out = tb.cli(1, &["join", "--token", &token, &mgr]);
    assert!(
        !out.success && out.stderr.contains("--rejoin"),
        "{}",
        out.stderr
    );
    // Leaving gives the identity up and stops the container it still ran.
    tb.cli_ok(1, &["leave"]).unwrap();
    assert_eq!(info(&tb, 1)["State"], "inactive");
    assert_eq!(tb.processes_named(1, "sleep"), 0, "its container stopped");
    let out = tb.cli_ok(1, &["join", "--token", &token, &mgr]).unwrap();
    let new_id = info(&tb, 1)["NodeID"].as_str().unwrap().to_string();
    assert_ne!(new_id, old_id, "{out}");
    assert!(issuer_of(&tb, 1).starts_with("CN=shoal-ca "));
}

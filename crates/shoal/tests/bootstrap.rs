//! Issue #2: a cluster comes up, nodes get CA-issued identities, bad joins are refused.
//! Every test runs real daemons in their own network namespaces (root required).

mod common;

use common::*;
use shoal_testbed::wait_for;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::prelude::*;

fn read_cert(path: &std::path::Path) -> Vec<u8> {
    let pem = std::fs::read(path).expect("cert file");
    let (_, p) = x509_parser::pem::parse_x509_pem(&pem).expect("pem");
    p.contents
}

#[test]
fn init_and_two_workers_join_with_ca_issued_identities() {
    let tb = cluster(3, &[]);
    let list = nodes(&tb, 0);
    assert_eq!(list.len(), 3, "{list:?}");
    let table = tb.cli_ok(0, &["node", "ls"]).unwrap();
    let header = table.lines().next().unwrap();
    for col in ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"] {
        assert!(header.contains(col), "{header}");
    }
    let me = info(&tb, 0);
    let cluster_id = me["ClusterID"].as_str().unwrap().to_string();
    assert!(
        table.contains(&format!("{} *", me["NodeID"].as_str().unwrap())),
        "{table}"
    );

    for (i, node) in tb.nodes.iter().enumerate() {
        let entry = list
            .iter()
            .find(|n| n["Hostname"] == node.name.as_str())
            .expect("listed");
        assert_eq!(entry["Status"], "Ready");
        assert_eq!(entry["Availability"], "Active");
        let role = if i == 0 { "manager" } else { "worker" };
        assert_eq!(entry["Role"], role);
        assert_eq!(entry["ManagerStatus"], if i == 0 { "Leader" } else { "" });

        // The certificate on disk says what the CA decided.
        let der = read_cert(&node.state_dir.join("certs/node.crt"));
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let id = entry["ID"].as_str().unwrap();
        assert_eq!(id.len(), 25);
        let subj = cert.subject();
        assert_eq!(
            subj.iter_common_name().next().unwrap().as_str().unwrap(),
            id
        );
        assert_eq!(
            subj.iter_organizational_unit()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            format!("shoal-{role}")
        );
        assert_eq!(
            subj.iter_organization().next().unwrap().as_str().unwrap(),
            cluster_id
        );
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert!(sans.contains(&format!("DNSName(shoal-{role})")), "{sans:?}");
        assert!(sans.contains(&format!("DNSName({id})")), "{sans:?}");
        assert!(
            sans.contains(&format!("URI(spiffe://{cluster_id}/node/{id})")),
            "{sans:?}"
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let v = cert.validity();
        assert!(v.not_before.timestamp() < now, "backdated");
        let days = (v.not_after.timestamp() - now) as f64 / 86400.0;
        assert!((89.9..90.1).contains(&days), "90-day default, got {days}");

        // It chains to the cluster's root.
        let root = read_cert(&node.state_dir.join("certs/ca.crt"));
        let (_, root) = X509Certificate::from_der(&root).unwrap();
        cert.verify_signature(Some(root.public_key()))
            .expect("signed by the root");

        // The private key is the node's alone.
        let mode = std::fs::metadata(node.state_dir.join("certs/node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn restarted_nodes_keep_their_identity_without_a_token() {
    let mut tb = cluster(2, &["--dispatcher-heartbeat", "1s"]);
    let before: Vec<String> = (0..2)
        .map(|i| info(&tb, i)["NodeID"].as_str().unwrap().to_string())
        .collect();

    // The worker is killed outright and comes back.
    tb.kill(1).unwrap();
    wait_for(Duration::from_secs(10), || {
        (status_of(&tb, "node2") == "Down").then_some(())
    })
    .expect("killed worker goes Down");
    tb.start(1).unwrap();
    assert_eq!(info(&tb, 1)["NodeID"].as_str().unwrap(), before[1]);
    wait_for(Duration::from_secs(10), || {
        (status_of(&tb, "node2") == "Ready").then_some(())
    })
    .unwrap_or_else(|| panic!("restarted worker Ready again\n{}", tb.all_logs()));

    // The manager restarts and keeps the cluster.
    tb.restart(0).unwrap();
    let after = info(&tb, 0);
    assert_eq!(after["NodeID"].as_str().unwrap(), before[0]);
    assert_eq!(after["Role"], "manager");
    wait_ready(&tb, 2);
    assert_eq!(nodes(&tb, 0).len(), 2);
}

/// Asserts a join from node `joiner` fails with `expect` in the message and changes nothing.
fn assert_join_refused(
    tb: &shoal_testbed::Testbed,
    joiner: usize,
    token: &str,
    addr: &str,
    expect: &str,
) {
    let before = nodes(tb, 0).len();
    let out = tb.cli(joiner, &["join", "--token", token, addr]);
    assert!(!out.success, "join with {token} should fail");
    assert!(
        out.stderr.contains(expect),
        "expected {expect:?} in: {}",
        out.stderr
    );
    assert_eq!(nodes(tb, 0).len(), before, "store unchanged");
    assert_eq!(info(tb, joiner)["State"], "inactive");
    assert!(!tb.nodes[joiner].state_dir.join("state.json").exists());
}

#[test]
fn bad_tokens_are_refused_with_clear_messages() {
    let tb = testbed(3);
    tb.init(0, &[]).unwrap();
    tb.init(2, &[]).unwrap(); // another cluster: plays the man in the middle
    let good = tb
        .cli_ok(0, &["join-token", "-q", "worker"])
        .unwrap()
        .trim()
        .to_string();
    let mgr = tb.nodes[0].addr();

    assert_join_refused(&tb, 1, "SHOAL-1-garbage", &mgr, "malformed join token");

    // Our token, sent to a manager of another CA: the digest check catches it before
    // the secret leaves the node.
    let other_digest = info(&tb, 2)["RootCADigest"].as_str().unwrap().to_string();
    let our_digest = info(&tb, 0)["RootCADigest"].as_str().unwrap().to_string();
    let before_other = nodes(&tb, 2).len();
    let out = tb.cli(1, &["join", "--token", &good, &tb.nodes[2].addr()]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("does not match this cluster's CA"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&our_digest) && out.stderr.contains(&other_digest),
        "both digests: {}",
        out.stderr
    );
    assert_eq!(nodes(&tb, 2).len(), before_other);
    let secret = good.rsplit('-').next().unwrap();
    assert!(
        !tb.log(2).contains(secret),
        "the secret never reached the other manager"
    );

    // Right digest, wrong secret.
    let wrong = format!("{}-{}", good.rsplit_once('-').unwrap().0, "0".repeat(25));
    assert_join_refused(&tb, 1, &wrong, &mgr, "invalid join token");

    // An old token after rotation.
    tb.cli_ok(0, &["join-token", "--rotate", "worker"]).unwrap();
    assert_join_refused(&tb, 1, &good, &mgr, "invalid join token");

    // The new token works.
    tb.join_worker(1, 0).unwrap();
    wait_ready(&tb, 2);
}

#[test]
fn node_that_stops_heartbeating_is_down_then_ready() {
    let tb = cluster(2, &["--dispatcher-heartbeat", "1s"]);
    let cut = std::time::Instant::now();
    tb.cut(1).unwrap();
    wait_for(Duration::from_secs(8), || {
        (status_of(&tb, "node2") == "Down").then_some(())
    })
    .unwrap_or_else(|| panic!("cut-off node goes Down\n{}", tb.all_logs()));
    let took = cut.elapsed();
    // Three missed 1 s periods, plus the manager's check interval.
    assert!(
        took >= Duration::from_secs(2),
        "not before missing beats: {took:?}"
    );
    assert!(
        took <= Duration::from_millis(4500),
        "within 3 periods: {took:?}"
    );
    let inspect = tb.cli_ok(0, &["node", "inspect", "node2"]).unwrap();
    assert!(inspect.contains("heartbeat failure"), "{inspect}");
    tb.heal(1).unwrap();
    wait_for(Duration::from_secs(10), || {
        (status_of(&tb, "node2") == "Ready").then_some(())
    })
    .unwrap_or_else(|| panic!("node Ready again after heal\n{}", tb.all_logs()));
}

#[test]
fn no_token_key_or_secret_appears_in_logs() {
    let tb = cluster(2, &[]);
    let worker = tb
        .cli_ok(0, &["join-token", "-q", "worker"])
        .unwrap()
        .trim()
        .to_string();
    let manager = tb
        .cli_ok(0, &["join-token", "-q", "manager"])
        .unwrap()
        .trim()
        .to_string();
    // A refused join with a real-looking token must not log it either.
    let wrong = format!("{}-{}", worker.rsplit_once('-').unwrap().0, "1".repeat(25));
    let _ = tb.cli(1, &["join", "--token", &wrong, &tb.nodes[0].addr()]);
    let logs = tb.all_logs();
    for secret in [&worker, &manager, &wrong] {
        let s = secret.rsplit('-').next().unwrap();
        assert!(!logs.contains(s), "a token secret is in the logs");
    }
    assert!(!logs.contains("PRIVATE KEY"), "a key is in the logs");
    for node in &tb.nodes {
        let key = std::fs::read_to_string(node.state_dir.join("certs/node.key")).unwrap();
        let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!logs.contains(&body[..40]), "key material in logs");
        for f in [
            "certs/node.key",
            "certs/node.crt",
            "certs/ca.crt",
            "state.json",
        ] {
            let mode = std::fs::metadata(node.state_dir.join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{f} is private");
        }
    }
    // The store holds the CA key; it must be private too, and so is the state dir.
    let store = tb.nodes[0].state_dir.join("raft/store.redb");
    let mode = std::fs::metadata(&store).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the store file is private");
    for dir in [
        tb.nodes[0].state_dir.clone(),
        tb.nodes[0].state_dir.join("raft"),
    ] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is private", dir.display());
    }
}

#[test]
fn join_token_command_prints_the_join_line() {
    let tb = cluster(1, &[]);
    let out = tb.cli_ok(0, &["join-token", "worker"]).unwrap();
    let token = tb.cli_ok(0, &["join-token", "-q", "worker"]).unwrap();
    assert!(
        out.contains(&format!(
            "shoal join --token {} {}",
            token.trim(),
            tb.nodes[0].addr()
        )),
        "{out}"
    );
    let rotated = tb
        .cli_ok(0, &["join-token", "--rotate", "-q", "worker"])
        .unwrap();
    assert_ne!(rotated, token);
    let bad = tb.cli(0, &["join-token", "admin"]);
    assert!(
        !bad.success && bad.stderr.contains("unknown role"),
        "{}",
        bad.stderr
    );
    // A worker cannot hand out tokens.
    let tb2 = cluster(2, &[]);
    let w = tb2.cli(1, &["join-token", "worker"]);
    assert!(
        !w.success && w.stderr.contains("not a manager"),
        "{}",
        w.stderr
    );
}

#[test]
fn failed_init_leaves_no_half_state() {
    let tb = testbed(1);
    // Another program holds the port.
    let holder = tb
        .in_netns(0, || std::net::TcpListener::bind("0.0.0.0:4377"))
        .unwrap()
        .unwrap();
    let out = tb.cli(0, &["init"]);
    assert!(
        !out.success && out.stderr.contains("cannot listen on 0.0.0.0:4377"),
        "{}",
        out.stderr
    );
    assert_eq!(info(&tb, 0)["State"], "inactive");
    assert!(!tb.nodes[0].state_dir.join("state.json").exists());
    assert!(!tb.nodes[0].state_dir.join("raft").exists());
    drop(holder);

    for (flag, msg) in [
        ("10000y", "maximum of 20 years"),
        ("30s", "minimum of 1 minute"),
    ] {
        let out = tb.cli(0, &["init", "--cert-expiry", flag]);
        assert!(
            !out.success && out.stderr.contains(msg),
            "{flag}: {}",
            out.stderr
        );
        assert_eq!(info(&tb, 0)["State"], "inactive");
    }
    let out = tb.cli(0, &["init", "--cert-expiry", "soon"]);
    assert!(
        !out.success && out.stderr.contains("is not a duration"),
        "{}",
        out.stderr
    );

    tb.init(0, &["--cert-expiry", "2m"]).unwrap();
    let left = info(&tb, 0)["CertificateExpiry"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!left.is_empty());
    wait_ready(&tb, 1);
}

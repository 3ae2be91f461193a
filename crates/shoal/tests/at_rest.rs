//! Encryption at rest and autolock, on real daemons: what managers write to disk holds
//! neither the cluster's state nor its root CA key in clear, and an autolocked manager
//! restarts locked until it is given the unlock key on standard input.

mod common;

use base64::Engine as _;
use common::*;
use shoal_testbed::wait_for;
use std::time::Duration;

fn unlock_key_in(out: &str) -> String {
    out.split_whitespace()
        .find(|w| w.starts_with("SHOAL-KEY-1-"))
        .unwrap_or_else(|| panic!("no unlock key in:\n{out}"))
        .to_string()
}

/// The base64 body of a PEM block, decoded.
fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn keys_json(tb: &shoal_testbed::Testbed, i: usize) -> String {
    std::fs::read_to_string(tb.nodes[i].state_dir.join("raft/keys.json")).unwrap_or_default()
}

#[test]
fn autolocked_managers_keep_nothing_in_clear_restart_locked_and_unlock_with_the_current_key() {
    let mut tb = testbed(2);
    let out = tb
        .init(0, &["--autolock", "--dispatcher-heartbeat", "1s"])
        .unwrap();
    let key = unlock_key_in(&out);
    assert!(out.contains("shoal unlock"), "{out}");
    assert_eq!(tb.cli_ok(0, &["unlock-key", "-q"]).unwrap().trim(), key);
    join_manager(&tb, 1, 0);
    wait_ready(&tb, 2);

    // A root whose key the test knows, so it can look for that key on disk.
    let dir = tempfile::tempdir().unwrap();
    let root = shoal_pki::RootCa::generate_named(Duration::from_secs(5 * 365 * 86400), "Test Root")
        .unwrap();
    let (cert, rkey) = (dir.path().join("root.pem"), dir.path().join("root.key"));
    std::fs::write(&cert, root.cert_pem()).unwrap();
    std::fs::write(&rkey, root.key_pem()).unwrap();
    tb.cli_ok(
        0,
        &[
            "ca",
            "--rotate",
            "--ca-cert",
            cert.to_str().unwrap(),
            "--ca-key",
            rkey.to_str().unwrap(),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));

    // A service whose spec holds a marker (no replicas: only the store holds it).
    let marker = format!("marker-{:x}", rand_suffix());
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "marked",
            "--replicas",
            "0",
            "--env",
            &format!("MARK={marker}"),
            "busybox",
            "true",
        ],
    )
    .unwrap();
    wait_for(Duration::from_secs(10), || {
        tb.cli_ok(1, &["service", "ls"])
            .ok()?
            .contains("marked")
            .then_some(())
    })
    .expect("the service reaches node2's store");
    // The joined manager wraps its data key with the unlock key once its store has
    // the cluster's settings: no local key-encryption key is left beside it.
    wait_for(Duration::from_secs(10), || {
        (!tb.nodes[1].state_dir.join("raft/kek").exists()).then_some(())
    })
    .unwrap_or_else(|| panic!("node2 wraps its data key\n{}", tb.all_logs()));

    let key_pem = root.key_pem();
    let needles: Vec<(&str, Vec<u8>)> = vec![
        ("the marker", marker.as_bytes().to_vec()),
        (
            "the root key (PEM)",
            key_pem.lines().nth(1).unwrap().as_bytes().to_vec(),
        ),
        ("the root key (DER)", pem_der(&key_pem)),
        ("a PEM private key", b"BEGIN PRIVATE KEY".to_vec()),
        ("a PEM EC private key", b"BEGIN EC PRIVATE KEY".to_vec()),
    ];
    for i in 0..2 {
        for (what, needle) in &needles {
            if let Some(f) = any_file_contains(&tb.nodes[i].state_dir, needle) {
                panic!("{what} is in clear in {}", f.display());
            }
        }
    }

    // A restarted manager is locked: it says so and serves nothing else.
    tb.restart(0).unwrap();
    let info = info(&tb, 0);
    assert_eq!(info["State"], "locked", "{info}");
    let out = tb.cli(0, &["service", "ls"]);
    assert!(
        !out.success && out.stderr.contains("locked") && out.stderr.contains("shoal unlock"),
        "{}",
        out.stderr
    );
    let out = tb.cli_stdin(0, &["unlock"], "SHOAL-KEY-1-garbage\n");
    assert!(
        !out.success && out.stderr.contains("garbled"),
        "{}",
        out.stderr
    );
    // A well-formed key that is not the cluster's: its first character changed (every
    // bit of it is key; the last one also holds base64's must-be-zero padding bits).
    let wrong = {
        let body = key.strip_prefix("SHOAL-KEY-1-").unwrap();
        let first = if body.starts_with('A') { 'B' } else { 'A' };
        format!("SHOAL-KEY-1-{first}{}", &body[1..])
    };
    let out = tb.cli_stdin(0, &["unlock"], &format!("{wrong}\n"));
    assert!(
        !out.success && out.stderr.contains("invalid unlock key"),
        "{}",
        out.stderr
    );
    assert_eq!(info_state(&tb, 0), "locked");
    let out = tb.cli_stdin(0, &["unlock"], &format!("{key}\n"));
    assert!(out.success, "{}\n{}", out.stderr, tb.all_logs());
    wait_for(Duration::from_secs(15), || {
        tb.cli_ok(0, &["service", "ls"])
            .ok()?
            .contains("marked")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("node1 serves again\n{}", tb.all_logs()));

    // A new key: once both managers re-wrapped, a restart needs it and refuses the old.
    let before = [keys_json(&tb, 0), keys_json(&tb, 1)];
    let new_key = tb
        .cli_ok(0, &["unlock-key", "--rotate", "-q"])
        .unwrap()
        .trim()
        .to_string();
    assert!(new_key.starts_with("SHOAL-KEY-1-") && new_key != key);
    for (i, was) in before.iter().enumerate() {
        wait_for(Duration::from_secs(10), || {
            (keys_json(&tb, i) != *was).then_some(())
        })
        .unwrap_or_else(|| panic!("node{} re-wraps\n{}", i + 1, tb.all_logs()));
    }
    assert_eq!(tb.cli_ok(1, &["unlock-key", "-q"]).unwrap().trim(), new_key);
    tb.restart(1).unwrap();
    assert_eq!(info_state(&tb, 1), "locked");
    let out = tb.cli_stdin(1, &["unlock"], &format!("{key}\n"));
    assert!(
        !out.success && out.stderr.contains("invalid unlock key"),
        "{}",
        out.stderr
    );
    let out = tb.cli_stdin(1, &["unlock"], &format!("{new_key}\n"));
    assert!(out.success, "{}\n{}", out.stderr, tb.all_logs());
    wait_for(Duration::from_secs(15), || {
        tb.cli_ok(1, &["service", "ls"])
            .ok()?
            .contains("marked")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("node2 serves again\n{}", tb.all_logs()));

    // Autolock off: a restart needs no key, and the node key is in clear again.
    let out = tb.cli_ok(0, &["update", "--autolock=false"]).unwrap();
    assert!(out.contains("Autolock is off"), "{out}");
    wait_for(Duration::from_secs(10), || {
        tb.nodes[0]
            .state_dir
            .join("raft/kek")
            .exists()
            .then_some(())
    })
    .expect("node1 wraps its data key locally again");
    tb.restart(0).unwrap();
    wait_for(Duration::from_secs(15), || {
        (info_state(&tb, 0) == "active").then_some(())
    })
    .unwrap_or_else(|| panic!("node1 restarts unlocked\n{}", tb.all_logs()));
    let out = tb.cli(0, &["unlock-key"]);
    assert!(
        !out.success && out.stderr.contains("autolock is off"),
        "{}",
        out.stderr
    );
}

fn info_state(tb: &shoal_testbed::Testbed, i: usize) -> String {
    info(tb, i)["State"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    t ^ u64::from(std::process::id()).rotate_left(32)
}

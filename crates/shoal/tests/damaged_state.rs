//! A garbled file on disk gets a clear error, and nothing stored is lost or overwritten.

mod common;

use common::*;

#[test]
fn garbled_node_state_is_reported_and_kept_untouched() {
    let mut tb = cluster(2, &[]);
    tb.stop(1).unwrap();
    let state = tb.nodes[1].state_dir.join("state.json");
    std::fs::write(&state, b"{ this is not json").unwrap();
    let key_before = std::fs::read(tb.nodes[1].state_dir.join("certs/node.key")).unwrap();
    tb.start(1).unwrap();

    let i = info(&tb, 1);
    assert_eq!(i["State"], "error", "{i}");
    let err = i["Error"].as_str().unwrap();
    assert!(err.contains("state.json is damaged"), "{err}");
    assert!(
        err.contains("shoal leave --force"),
        "says what to do: {err}"
    );

    // Nothing overwrites the damaged state by accident.
    let token = tb.cli_ok(0, &["join-token", "-q", "worker"]).unwrap();
    let out = tb.cli(1, &["join", "--token", token.trim(), &tb.nodes[0].addr()]);
    assert!(
        !out.success && out.stderr.contains("kept untouched"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(&state).unwrap(), b"{ this is not json");
    assert_eq!(
        std::fs::read(tb.nodes[1].state_dir.join("certs/node.key")).unwrap(),
        key_before
    );

    // The operator may discard it and join afresh.
    tb.cli_ok(1, &["leave", "--force"]).unwrap();
    assert_eq!(info(&tb, 1)["State"], "inactive");
    tb.cli_ok(1, &["join", "--token", token.trim(), &tb.nodes[0].addr()])
        .unwrap();
    assert_eq!(info(&tb, 1)["State"], "active");
}

#[test]
fn truncated_store_on_a_manager_is_reported_and_kept() {
    let mut tb = cluster(1, &[]);
    tb.stop(0).unwrap();
    let db = tb.nodes[0].state_dir.join("raft/store.redb");
    let bytes = std::fs::read(&db).unwrap();
    let cut = &bytes[..bytes.len() / 2];
    std::fs::write(&db, cut).unwrap();
    tb.start(0).unwrap();
    let i = info(&tb, 0);
    assert_eq!(i["State"], "error", "{i}");
    let err = i["Error"].as_str().unwrap();
    assert!(err.contains("store.redb"), "names the file: {err}");
    assert!(
        err.contains("shoal init --restore FILE") && err.contains("manager token"),
        "says which recovery to use: {err}"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        cut,
        "the damaged store is not touched"
    );
    let out = tb.cli(0, &["init"]);
    assert!(
        !out.success && out.stderr.contains("kept untouched"),
        "{}",
        out.stderr
    );
}

#[test]
fn engine_labels_are_reported_by_the_node() {
    let mut tb =
        shoal_testbed::Testbed::new(std::path::Path::new(env!("CARGO_BIN_EXE_shoal"))).unwrap();
    tb.add_node().unwrap();
    tb.daemon_args = vec!["--label".into(), "zone=a".into()];
    tb.add_node().unwrap();
    tb.init(0, &[]).unwrap();
    tb.join_worker(1, 0).unwrap();
    wait_ready(&tb, 2);
    let out = tb.cli_ok(0, &["node", "inspect", "node2"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v[0]["Description"]["Engine"]["Labels"]["zone"], "a",
        "{out}"
    );
    // Self-reported labels are not manager labels.
    assert!(
        v[0]["Spec"]["Labels"].as_object().unwrap().is_empty(),
        "{out}"
    );
}

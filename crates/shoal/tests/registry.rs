//! Issue #3: tasks pull their image from a real registry, with and without basic auth.

mod common;

use common::registry::{store_image, Registry};
use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

#[test]
fn tasks_pull_from_a_registry_anonymously_and_with_credentials() {
    let mut tb = cluster(2, &[]);
    let tar = std::fs::read(busybox_tar(tb.dir())).unwrap();
    let open = Registry::start(&tb, 0, 5000, None);
    store_image(
        &open.storage(),
        "tools/busybox",
        "1",
        &tar,
        &["sh", "-c", "echo pulled image says $FROM_IMAGE; sleep 600"],
    );

    // Anonymous pull by the task's node, then the image's own command runs.
    let image = format!("{}/tools/busybox:1", open.addr);
    let out = tb.cli(0, &["task", "run", "--node", "node2", &image]);
    assert!(
        out.success,
        "{}{}\n{}",
        out.stdout,
        out.stderr,
        tb.all_logs()
    );
    let id = out.stdout.trim().to_string();
    let logs = shoal_testbed::wait_for(T, || {
        let l = tb.cli_ok(0, &["task", "logs", &id]).ok()?;
        l.contains("pulled image says yes").then_some(l)
    });
    assert!(logs.is_some(), "{}", tb.all_logs());
    assert!(tb
        .cli_ok(1, &["image", "ls"])
        .unwrap()
        .contains("tools/busybox"));

    // A registry with basic auth.
    let mut locked = Registry::start(&tb, 0, 5001, Some(("alice", "s3cret")));
    store_image(
        &locked.storage(),
        "private/app",
        "2",
        &tar,
        &["sleep", "600"],
    );
    let image = format!("{}/private/app:2", locked.addr);
    let out = tb.cli(0, &["task", "run", "--node", "node2", &image]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("rejected") && out.stderr.contains("unauthorized"),
        "{}",
        out.stderr
    );

    let bad = tb.cli(
        1,
        &[
            "registry",
            "login",
            "-u",
            "alice",
            "-p",
            "wrong",
            &locked.addr,
        ],
    );
    assert!(
        !bad.success && bad.stderr.contains("unauthorized"),
        "{}",
        bad.stderr
    );
    tb.cli_ok(
        1,
        &[
            "registry",
            "login",
            "-u",
            "alice",
            "-p",
            "s3cret",
            &locked.addr,
        ],
    )
    .unwrap();
    let auth_file =
        std::fs::read_to_string(tb.nodes[1].state_dir.join("registry-auth.json")).unwrap();
    assert!(!tb.all_logs().contains("s3cret"), "no password in logs");
    assert!(!auth_file.is_empty());
    let out = tb.cli(0, &["task", "run", "--node", "node2", &image]);
    assert!(out.success, "{}{}", out.stdout, out.stderr);

    // The saved password stops working: the next pull is rejected as unauthorized.
    locked.change_password("rotated");
    tb.cli_ok(1, &["image", "rm", &image]).unwrap();
    let out = tb.cli(0, &["task", "run", "--node", "node2", &image]);
    assert!(
        !out.success && out.stderr.contains("unauthorized"),
        "{}",
        out.stderr
    );
    let id = out.stdout.trim().to_string();
    assert_eq!(task(&tb, &id)["Status"]["State"], "rejected");
    let _ = &mut tb;
}

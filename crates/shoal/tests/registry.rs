//! Issue #3: tasks pull their image from a real registry, with and without basic auth.

mod common;

use common::registry::{store_image, store_image_with, Registry};
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

/// An image's HEALTHCHECK is the service's health check unless the service has its own
/// or says `--no-healthcheck`.
#[test]
fn an_images_healthcheck_is_used_by_default() {
    let tb = cluster(2, &[]);
    let tar = std::fs::read(busybox_tar(tb.dir())).unwrap();
    let reg = Registry::start(&tb, 0, 5000, None);
    // Healthy once /tmp/ok exists, which the command makes after 1 s.
    store_image_with(
        &reg.storage(),
        "tools/checked",
        "1",
        &tar,
        &["sh", "-c", "sleep 1; touch /tmp/ok; exec sleep 600"],
        serde_json::json!({
            "Test": ["CMD-SHELL", "test -f /tmp/ok"],
            "Interval": 500_000_000u64,
            "Timeout": 2_000_000_000u64,
            "Retries": 3,
        }),
    );
    let image = format!("{}/tools/checked:1", reg.addr);
    let healthy = |name: &str| {
        shoal_testbed::wait_for(T, || {
            let t = tb.cli_ok(0, &["service", "ps", name]).ok()?;
            t.contains("(healthy)").then_some(t)
        })
    };
    let out = tb.cli(0, &["service", "create", "--name", "checked", &image]);
    assert!(
        out.success,
        "{}{}\n{}",
        out.stdout,
        out.stderr,
        tb.all_logs()
    );
    assert!(healthy("checked").is_some(), "{}", tb.all_logs());
    let ps = tb
        .cli_ok(0, &["service", "ps", "checked", "--format", "json"])
        .unwrap();
    let first: serde_json::Value = serde_json::from_str(ps.lines().next().unwrap()).unwrap();
    let t = task(&tb, first["ID"].as_str().unwrap());
    assert_eq!(t["Status"]["Health"]["Status"], "healthy", "{t}");

    // --no-healthcheck: the same image runs with no health state at all.
    let out = tb.cli(
        0,
        &[
            "service",
            "create",
            "--name",
            "unchecked",
            "--no-healthcheck",
            &image,
        ],
    );
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    std::thread::sleep(Duration::from_secs(3));
    let table = tb.cli_ok(0, &["service", "ps", "unchecked"]).unwrap();
    assert!(table.contains("Running"), "{table}");
    assert!(!table.contains("healthy"), "{table}");
}

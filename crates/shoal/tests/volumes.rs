//! Issue #23 point 2: named volumes — node-local, created on first use, filled from the
//! image with its owner and mode (unless volume-nocopy), kept for the next task on the
//! node, refused removal while used, anonymous ones gone with their task; `volume ls
//! --node` from a manager.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(40);

/// busybox with /srv/data (owner 1000:1000, mode 0750, a seed file) imported on node `i`
/// as `dataimg`.
fn import_data_image(tb: &shoal_testbed::Testbed, i: usize) {
    busybox_tar(tb.dir());
    let root = tb.dir().join("data-rootfs");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(tb.dir().join("busybox-rootfs"))
        .arg(&root)
        .status()
        .unwrap();
    assert!(ok.success());
    let data = root.join("srv/data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("seed"), "from-the-image\n").unwrap();
    std::os::unix::fs::chown(data.join("seed"), Some(1000), Some(1000)).unwrap();
    std::os::unix::fs::chown(&data, Some(1000), Some(1000)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o750)).unwrap();
    let tar = tb.dir().join("data.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    tb.cli_ok(
        i,
        &["image", "import", tar.to_str().unwrap(), "dataimg:latest"],
    )
    .unwrap();
}

/// Counts its starts in /srv/data/count and shows what the volume holds.
const COUNTER: &str = "n=$(cat /srv/data/count 2>/dev/null || echo 0); n=$((n+1)); \
    echo $n > /srv/data/count; echo count=$n; \
    echo owner=$(busybox stat -c '%u:%g %a' /srv/data); \
    echo seed=$(cat /srv/data/seed 2>/dev/null); echo ready; sleep 3600";

fn logs_with(tb: &shoal_testbed::Testbed, service: &str, needle: &str) -> String {
    shoal_testbed::wait_for(T, || {
        let l = tb.cli_ok(0, &["service", "logs", service]).ok()?;
        l.contains(needle).then_some(l)
    })
    .unwrap_or_else(|| panic!("{needle:?} in the logs of {service}: {}", tb.all_logs()))
}

#[test]
fn a_volume_keeps_its_data_for_the_next_task_and_cannot_go_while_used() {
    let tb = cluster(2, &[]);
    import_data_image(&tb, 1);
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "db",
            "--constraint",
            "node.role==worker",
            // As the image's data owner, as a database image runs (a task's root has no
            // CAP_DAC_OVERRIDE: it could not read a 0750 directory of another user).
            "-u",
            "1000:1000",
            "--stop-grace-period",
            "300ms",
            "--mount",
            "type=volume,source=dbdata,target=/srv/data,volume-label=team=db",
            "dataimg",
            "sh",
            "-c",
            COUNTER,
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    let logs = logs_with(&tb, "db", "ready");
    // Filled from the image: its file, its owner and mode.
    for want in ["count=1", "owner=1000:1000 750", "seed=from-the-image"] {
        assert!(logs.contains(want), "{want:?} in {logs}");
    }
    // On the node: listed, in use by the task, and not removable.
    let ls = tb.cli_ok(1, &["volume", "ls"]).unwrap();
    assert!(ls.contains("local") && ls.contains("dbdata"), "{ls}");
    let inspect: serde_json::Value =
        serde_json::from_str(&tb.cli_ok(1, &["volume", "inspect", "dbdata"]).unwrap()).unwrap();
    assert_eq!(inspect[0]["Labels"]["team"], "db", "{inspect}");
    assert!(
        inspect[0]["UsedBy"][0]
            .as_str()
            .unwrap()
            .starts_with("db.1 ("),
        "{inspect}"
    );
    let out = tb.cli(1, &["volume", "rm", "dbdata"]);
    assert!(
        !out.success
            && out
                .stderr
                .contains("volume dbdata is in use by task db.1 ("),
        "{}",
        out.stderr
    );
    // From a manager, as the node reports it.
    shoal_testbed::wait_for(T, || {
        let l = tb.cli_ok(0, &["volume", "ls", "--node", "node2"]).ok()?;
        l.contains("dbdata").then_some(())
    })
    .expect("the node reports its volume");
    let on_node: serde_json::Value = serde_json::from_str(
        &tb.cli_ok(0, &["volume", "inspect", "--node", "node2", "dbdata"])
            .unwrap(),
    )
    .unwrap();
    assert!(
        on_node[0]["UsedBy"][0]
            .as_str()
            .unwrap()
            .starts_with("db.1 ("),
        "{on_node}"
    );
    // A replaced task on the same node gets the same data.
    tb.cli_ok(0, &["service", "update", "--force", "db"])
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    logs_with(&tb, "db", "count=2");
    // Gone with the service, the volume stays and can then be removed.
    tb.cli_ok(0, &["service", "rm", "db"]).unwrap();
    shoal_testbed::wait_for(T, || {
        tb.cli(1, &["volume", "rm", "dbdata"]).success.then_some(())
    })
    .unwrap_or_else(|| panic!("volume rm once unused: {}", tb.all_logs()));
    assert!(!tb.cli_ok(1, &["volume", "ls"]).unwrap().contains("dbdata"));
}

#[test]
fn nocopy_anonymous_and_bad_volumes() {
    let tb = cluster(2, &[]);
    import_data_image(&tb, 1);
    // volume-nocopy: the image's content stays out.
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "empty",
            "--constraint",
            "node.role==worker",
            "--stop-grace-period",
            "300ms",
            "--mount",
            "type=volume,source=blank,target=/srv/data,volume-nocopy",
            "dataimg",
            "sh",
            "-c",
            COUNTER,
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    let logs = logs_with(&tb, "empty", "ready");
    assert!(
        logs.contains("count=1") && logs.contains("owner=0:0 755"),
        "{logs}"
    );
    assert!(!logs.contains("from-the-image"), "{logs}");

    // An anonymous volume lives and dies with its task.
    let out = tb.cli(
        0,
        &[
            "task",
            "run",
            "--node",
            "node2",
            "--stop-grace-period",
            "300ms",
            "--mount",
            "type=volume,target=/srv/data",
            "dataimg",
            "sh",
            "-c",
            COUNTER,
        ],
    );
    assert!(
        out.success,
        "{}{}\n{}",
        out.stdout,
        out.stderr,
        tb.all_logs()
    );
    let id = out.stdout.lines().next().unwrap().trim().to_string();
    let anon = format!("{id}-0");
    let ls = tb.cli_ok(1, &["volume", "ls", "-q"]).unwrap();
    assert!(ls.lines().any(|l| l == anon), "{anon} in {ls}");
    tb.cli_ok(0, &["task", "rm", &id]).unwrap();
    shoal_testbed::wait_for(T, || {
        let ls = tb.cli_ok(1, &["volume", "ls", "-q"]).ok()?;
        (!ls.lines().any(|l| l == anon)).then_some(())
    })
    .unwrap_or_else(|| panic!("the anonymous volume went with its task: {}", tb.all_logs()));

    // A name that could make a path, a volume option on a bind mount: refused.
    for (mount, msg) in [
        (
            "type=volume,source=../etc,target=/d",
            "volume name \"../etc\" is not valid",
        ),
        (
            "type=bind,source=/tmp,target=/d,volume-nocopy",
            "are for type=volume",
        ),
    ] {
        let out = tb.cli(
            0,
            &[
                "service", "create", "--name", "bad", "--mount", mount, "dataimg", "true",
            ],
        );
        assert!(
            !out.success && out.stderr.contains(msg),
            "{mount}: {}",
            out.stderr
        );
    }
    // volume create / prune on the node.
    assert_eq!(
        tb.cli_ok(1, &["volume", "create", "spare"]).unwrap().trim(),
        "spare"
    );
    let out = tb.cli(1, &["volume", "prune"]);
    assert!(!out.success && out.stderr.contains("-f"), "{}", out.stderr);
    let pruned = tb.cli_ok(1, &["volume", "prune", "-a", "-f"]).unwrap();
    assert!(
        pruned.contains("spare") && !pruned.contains("blank"),
        "{pruned}"
    );
}

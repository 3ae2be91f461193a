//! Issue #23 point 4: the service options swarm users use, seen from inside the
//! container (`--env-file`, `--dns*`, `--host`, `--sysctl`, `--ulimit`, `--stop-signal`,
//! `-t`, `--group`, `--tmpfs`), shown by `inspect`, changed by `service update`, and
//! refused when they would reach the node.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(40);

#[test]
fn each_option_is_visible_inside_the_container_and_in_inspect() {
    let tb = cluster(2, &[]);
    import_busybox(&tb, 1);
    let env_file = tb.dir().join("app.env");
    std::fs::write(&env_file, "# settings\nFROM_FILE=yes\nOVERRIDDEN=file\n").unwrap();
    let script = "cat /etc/resolv.conf; grep -E 'db.local|cache.local' /etc/hosts; \
        echo somaxconn=$(cat /proc/sys/net/core/somaxconn); \
        echo shmmax=$(cat /proc/sys/kernel/shmmax); \
        echo nofile=$(ulimit -n):$(ulimit -Hn); echo groups=$(id -G); \
        test -t 1 && echo stdout-is-a-tty; echo tty=$(tty); \
        echo tmpfs=$(stat -c %a /scratch); grep ' /scratch ' /proc/mounts; \
        echo FROM_FILE=$FROM_FILE OVERRIDDEN=$OVERRIDDEN; echo done; sleep 3600";
    let out = tb.cli(
        0,
        &[
            "service",
            "create",
            "--name",
            "opts",
            "--constraint",
            "node.role==worker",
            "--env-file",
            env_file.to_str().unwrap(),
            "-e",
            "OVERRIDDEN=flag",
            "--dns",
            "10.1.2.3",
            "--dns-search",
            "corp.example",
            "--dns-option",
            "ndots:3",
            "--host",
            "db.local:10.0.0.5",
            "--sysctl",
            "net.core.somaxconn=1234",
            "--sysctl",
            "kernel.shmmax=123456789",
            "--ulimit",
            "nofile=1000:2000",
            "--group",
            "nogroup",
            "--group",
            "1234",
            "-t",
            "--tmpfs",
            "/scratch:size=1m,mode=1770",
            "--stop-signal",
            "SIGUSR1",
            "--stop-grace-period",
            "1s",
            "busybox",
            "sh",
            "-c",
            script,
        ],
    );
    assert!(
        out.success,
        "{}{}\n{}",
        out.stdout,
        out.stderr,
        tb.all_logs()
    );
    let logs = shoal_testbed::wait_for(T, || {
        let l = tb.cli_ok(0, &["service", "logs", "opts"]).ok()?;
        l.contains("done").then_some(l)
    })
    .unwrap_or_else(|| panic!("the task's output: {}", tb.all_logs()));
    for want in [
        "nameserver 10.1.2.3",
        "search corp.example",
        "options ndots:3",
        "10.0.0.5\tdb.local",
        "somaxconn=1234",
        "shmmax=123456789",
        "nofile=1000:2000",
        "groups=0 1234 65534",
        "stdout-is-a-tty",
        "tty=/dev/pts/0",
        "tmpfs=1770",
        "size=1024k",
        "FROM_FILE=yes OVERRIDDEN=flag",
    ] {
        assert!(logs.contains(want), "{want:?} in:\n{logs}");
    }
    // Through a terminal, lines still come out as lines.
    assert!(!logs.contains('\r'), "{logs:?}");
    let inspect: serde_json::Value =
        serde_json::from_str(&tb.cli_ok(0, &["service", "inspect", "opts"]).unwrap()).unwrap();
    let c = &inspect[0]["Spec"]["TaskTemplate"]["ContainerSpec"];
    assert_eq!(c["DNSConfig"]["Nameservers"][0], "10.1.2.3", "{c}");
    assert_eq!(c["DNSConfig"]["Search"][0], "corp.example");
    assert_eq!(c["DNSConfig"]["Options"][0], "ndots:3");
    assert_eq!(c["Hosts"][0], "10.0.0.5 db.local");
    assert_eq!(c["Sysctls"]["net.core.somaxconn"], "1234");
    assert_eq!(c["Ulimits"][0]["Hard"], 2000);
    assert_eq!(c["StopSignal"], "SIGUSR1");
    assert_eq!(c["TTY"], true);
    assert_eq!(c["Groups"][1], "1234");
    assert_eq!(c["Mounts"][0]["TmpfsOptions"]["Mode"], 0o1770);
    let pretty = tb
        .cli_ok(0, &["service", "inspect", "--pretty", "opts"])
        .unwrap();
    assert!(
        pretty.contains("Sysctls:\tkernel.shmmax=123456789, net.core.somaxconn=1234")
            && pretty.contains("Stop signal:\tSIGUSR1"),
        "{pretty}"
    );

    // update: -add/-rm forms; the new task sees the change.
    tb.cli_ok(
        0,
        &[
            "service",
            "update",
            "--dns-rm",
            "10.1.2.3",
            "--dns-add",
            "10.9.9.9",
            "--host-rm",
            "db.local",
            "--host-add",
            "cache.local:10.0.0.6",
            "--sysctl-rm",
            "kernel.shmmax",
            "--ulimit-add",
            "nofile=500:600",
            "--no-tty",
            "opts",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    // Log lines are `opts.1.TASK@node2    | text`: the new task's are the ones whose
    // prefix is not the first task's.
    let prefix = |l: &str| l.split(" | ").next().unwrap_or("").trim().to_string();
    let first = prefix(logs.lines().find(|l| l.contains("done")).unwrap());
    let second = shoal_testbed::wait_for(T, || {
        let l = tb.cli_ok(0, &["service", "logs", "opts"]).ok()?;
        let new: Vec<&str> = l.lines().filter(|x| prefix(x) != first).collect();
        new.iter()
            .any(|x| x.ends_with("done"))
            .then(|| new.join("\n"))
    })
    .unwrap_or_else(|| panic!("the new task's output: {}", tb.all_logs()));
    let second = second.as_str();
    for want in [
        "nameserver 10.9.9.9",
        "10.0.0.6\tcache.local",
        "nofile=500:600",
    ] {
        assert!(second.contains(want), "{want:?} in:\n{second}");
    }
    for gone in ["10.1.2.3", "db.local", "stdout-is-a-tty"] {
        assert!(!second.contains(gone), "{gone:?} in:\n{second}");
    }
    let shm = second.lines().find(|l| l.contains("shmmax=")).unwrap();
    assert!(!shm.contains("123456789"), "{shm}");

    // A sysctl that would reach the node, or one on the host network, is refused naming
    // it, and nothing is created.
    for (args, msg) in [
        (
            vec!["--sysctl", "kernel.panic=1"],
            "sysctl kernel.panic is refused",
        ),
        (
            vec!["--sysctl", "vm.swappiness=1"],
            "sysctl vm.swappiness is refused",
        ),
        (
            vec!["--network", "host", "--sysctl", "net.ipv4.ip_forward=1"],
            "sysctl net.ipv4.ip_forward is refused for a task on the host network",
        ),
        (vec!["--ulimit", "nofile=9:1"], "above the hard limit"),
        (vec!["--stop-signal", "SIGNOPE"], "SIGNOPE"),
        (vec!["--host", "x:not-an-ip"], "not an IP address"),
    ] {
        let mut a = vec!["service", "create", "--name", "refused"];
        a.extend(args);
        a.extend(["busybox", "true"]);
        let out = tb.cli(0, &a);
        assert!(
            !out.success && out.stderr.contains(msg),
            "{a:?}: {}",
            out.stderr
        );
    }
    let ls = tb.cli_ok(0, &["service", "ls"]).unwrap();
    assert!(!ls.contains("refused"), "{ls}");
}

#[test]
fn the_stop_signal_reaches_the_task() {
    let tb = cluster(2, &[]);
    import_busybox(&tb, 1);
    let out_dir = tb.dir().join("signal-out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mount = format!("type=bind,source={},target=/out", out_dir.display());
    // The workload traps SIGUSR1 only: SIGTERM would kill it without a word.
    let out = tb.cli(
        0,
        &[
            "task",
            "run",
            "--node",
            "node2",
            "--stop-signal",
            "USR1",
            "--mount",
            &mount,
            "busybox",
            "sh",
            "-c",
            "trap 'echo got-usr1 > /out/signal; exit 0' USR1; echo up > /out/up; \
             while true; do sleep 0.1; done",
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
    shoal_testbed::wait_for(T, || out_dir.join("up").exists().then_some(()))
        .expect("the task started");
    tb.cli_ok(0, &["task", "rm", &id]).unwrap();
    let got = shoal_testbed::wait_for(T, || std::fs::read_to_string(out_dir.join("signal")).ok())
        .unwrap_or_else(|| panic!("no SIGUSR1 seen: {}", tb.all_logs()));
    assert_eq!(got.trim(), "got-usr1");
}

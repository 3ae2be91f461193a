//! Issue #23 point 3: `task exec` / `service exec` — a command in a running task's
//! container on another node, through a manager: its output, exit code, input, user,
//! working directory and environment, a real terminal with `-t`, no capability the task
//! lacks, and no process left behind when the CLI is killed.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// A service `app` of one busybox task on the worker; its task's ID.
fn app(tb: &shoal_testbed::Testbed) -> String {
    import_busybox(tb, 1);
    app_on_worker(tb, &["sleep", "3600"])
}

/// Runs `shoal task exec ARGS` on the manager: (exit code, stdout, stderr).
fn exec(tb: &shoal_testbed::Testbed, args: &[&str], input: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut a = vec!["task", "exec"];
    a.extend_from_slice(args);
    let mut child = tb
        .cli_command(0, &a)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    if let Some(i) = input {
        stdin.write_all(i.as_bytes()).unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn exec_runs_in_the_task_with_its_output_code_input_and_terminal() {
    let tb = cluster(2, &[]);
    let task = app(&tb);
    let t = task.as_str();
    let (code, _, err) = exec(&tb, &[t, "true"], None);
    assert_eq!(code, 0, "{err}\n{}", tb.all_logs());
    let (code, out, err) = exec(
        &tb,
        &[t, "sh", "-c", "echo out; echo err >&2; exit 7"],
        None,
    );
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (7, "out\n", "err\n"),
        "{}",
        tb.all_logs()
    );
    // Its input with -i (and end of input reaches it).
    let (code, out, _) = exec(&tb, &["-i", t, "cat"], Some("hello\nworld\n"));
    assert_eq!((code, out.as_str()), (0, "hello\nworld\n"));
    // Without -i the command reads nothing.
    let (_, out, _) = exec(&tb, &[t, "cat"], Some("ignored\n"));
    assert_eq!(out, "");
    // User, working directory, environment; the task's hostname (its namespaces).
    let (code, out, _) = exec(
        &tb,
        &[
            "-u",
            "65534",
            "-w",
            "/tmp",
            "-e",
            "FOO=bar",
            t,
            "sh",
            "-c",
            "id -u; pwd; echo $FOO",
        ],
        None,
    );
    assert_eq!((code, out.as_str()), (0, "65534\n/tmp\nbar\n"));
    // No capability the task lacks: it has no NET_ADMIN, so neither has the exec.
    let (code, _, err) = exec(&tb, &[t, "ip", "link", "add", "x0", "type", "dummy"], None);
    assert_ne!(code, 0);
    assert!(err.contains("Operation not permitted"), "{err}");
    // A real terminal with -t (run under script(1), which gives the CLI one).
    let cmd = tb.cli_command(
        0,
        &[
            "task",
            "exec",
            "-t",
            t,
            "sh",
            "-c",
            "test -t 0 && echo tty-yes; busybox tty; exit 3",
        ],
    );
    let line: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| format!("'{}'", s.to_string_lossy()))
        .collect();
    let out = std::process::Command::new("script")
        .args(["-qec", &line.join(" "), "/dev/null"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tty-yes") && text.contains("/dev/pts/"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(3), "{text}");
    // service exec picks a running task; a missing task is named.
    let out = tb.cli(0, &["service", "exec", "app", "hostname"]);
    assert!(out.success, "{}", out.stderr);
    let out = tb.cli(0, &["task", "exec", "nosuchtask", "true"]);
    assert!(
        !out.success && out.stderr.contains("nosuchtask"),
        "{}",
        out.stderr
    );
}

#[test]
fn killing_the_cli_leaves_no_process_behind() {
    let tb = cluster(2, &[]);
    let task = app(&tb);
    let before = tb.processes_named(1, "sleep");
    let mut cli = tb
        .cli_command(
            0,
            &["task", "exec", &task, "sh", "-c", "sleep 4242; echo never"],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    shoal_testbed::wait_for(T, || {
        (tb.processes_named(1, "sleep") > before).then_some(())
    })
    .unwrap_or_else(|| panic!("the exec runs: {}", tb.all_logs()));
    cli.kill().unwrap();
    let _ = cli.wait();
    shoal_testbed::wait_for(T, || {
        (tb.processes_named(1, "sleep") == before && tb.processes_named(1, "sh") == 0).then_some(())
    })
    .unwrap_or_else(|| panic!("the exec's processes are gone: {}", tb.all_logs()));
    // The task itself runs on.
    assert_eq!(tb.processes_named(1, "sleep"), before);
}

/// The CLI on a terminal of the test's own (a pty whose size the test sets): the
/// command inside sees the size, and a change of it.
#[test]
fn the_terminal_size_is_followed_and_the_task_ending_ends_the_exec() {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let tb = cluster(2, &[]);
    let task = app(&tb);
    let pty = nix::pty::openpty(None, None).unwrap();
    let master = std::fs::File::from(pty.master);
    let set = |rows: u16, cols: u16| {
        use std::os::fd::AsRawFd;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    };
    set(30, 100);
    let slave = std::fs::File::from(pty.slave);
    let mut cmd = tb.cli_command(
        0,
        &[
            "task", "exec", "-t", &task, "sh", "-c",
            "busybox stty size; while [ \"$(busybox stty size)\" = '30 100' ]; do sleep 0.1; done; busybox stty size",
        ],
    );
    cmd.stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave);
    // SAFETY: setsid and TIOCSCTTY touch only the child: the pty becomes its terminal.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut cli = cmd.spawn().unwrap();
    drop(cmd);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let mut reader = master.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        let mut all = String::new();
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
            let _ = tx.send(all.clone());
        }
    });
    let wait_text = |want: &str| {
        let deadline = std::time::Instant::now() + T;
        let mut seen = String::new();
        while std::time::Instant::now() < deadline {
            if let Ok(s) = rx.recv_timeout(Duration::from_millis(200)) {
                seen = s;
            }
            if seen.contains(want) {
                return seen;
            }
        }
        panic!("{want:?} not in {seen:?}: {}", tb.all_logs());
    };
    wait_text("30 100");
    // A new size: the kernel tells the CLI (SIGWINCH), the CLI tells the command's terminal.
    set(40, 120);
    wait_text("40 120");
    let st = cli.wait().unwrap();
    assert_eq!(st.code(), Some(0));

    // The task ending ends an exec in it.
    let mut cli = tb
        .cli_command(0, &["task", "exec", &task, "sleep", "4343"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    tb.cli_ok(0, &["service", "rm", "app"]).unwrap();
    let ended = shoal_testbed::wait_for(T, || cli.try_wait().ok().flatten());
    assert!(
        ended.is_some(),
        "the exec ended with its task: {}",
        tb.all_logs()
    );
    assert_ne!(ended.unwrap().code(), Some(0));
}

/// From a manager that follows: the call goes to the leader, which holds the node's
/// session, and the exec's input and output stream through both.
#[test]
fn exec_through_a_follower_manager() {
    let tb = ha_cluster(2, 1);
    import_busybox(&tb, 2);
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "app",
            "--constraint",
            "node.role==worker",
            "--stop-grace-period",
            "300ms",
            "busybox",
            "sleep",
            "3600",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    let ps = tb.cli_ok(1, &["service", "ps", "-q", "app"]).unwrap();
    let task = ps.lines().next().unwrap().trim().to_string();
    let out = tb.cli_stdin(
        1,
        &["task", "exec", "-i", &task, "sh", "-c", "cat; hostname"],
        "via a follower\n",
    );
    assert!(out.success, "{}\n{}", out.stderr, tb.all_logs());
    assert!(out.stdout.starts_with("via a follower\n"), "{}", out.stdout);
    let out = tb
        .cli_command(1, &["task", "exec", &task, "sh", "-c", "exit 5"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
}

/// A daemon stopping (SIGTERM) while an exec runs on its node: the task's container
/// runs on (containers outlive the daemon), the exec's command does not.
#[test]
fn a_stopping_daemon_leaves_no_exec_behind() {
    let mut tb = cluster(2, &[]);
    let task = app(&tb);
    let before = tb.processes_named(1, "sleep");
    let mut cli = tb
        .cli_command(0, &["task", "exec", &task, "sleep", "4545"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    shoal_testbed::wait_for(T, || {
        (tb.processes_named(1, "sleep") > before).then_some(())
    })
    .unwrap_or_else(|| panic!("the exec runs: {}", tb.all_logs()));
    tb.stop(1).unwrap();
    shoal_testbed::wait_for(T, || {
        (tb.processes_named(1, "sleep") == before).then_some(())
    })
    .unwrap_or_else(|| panic!("the exec's command is gone: {}", tb.all_logs()));
    let _ = cli.kill();
    let _ = cli.wait();
}

//! Issue #24: what each role may do, and what a scope lets a user reach. Every user
//! works from a workstation of their own (a network namespace with no shoal daemon),
//! through the leader and through a follower.

mod common;

use common::*;
use shoal_testbed::{CliOutput, Testbed};

/// Makes user `name` with `role` (and scopes) on the socket, and logs them in on a new
/// workstation; returns the workstation.
fn user_on_workstation(tb: &mut Testbed, name: &str, role: &str, scopes: &[&str]) -> usize {
    let mut args = vec!["user", "create", name, "--role", role, "-q"];
    for s in scopes {
        args.extend(["--scope", s]);
    }
    let token = tb.cli_ok(0, &args).unwrap().trim().to_string();
    let ws = tb.add_workstation().unwrap();
    let leader = tb.nodes[0].ip.clone();
    let o = tb.ws_cli(ws, &["login", "--token", &token, &leader]);
    assert!(o.success, "login of {name}: {}", o.stderr);
    ws
}

/// `shoal -H tcp://ADDR ARGS` on workstation `ws`.
fn remote(tb: &Testbed, ws: usize, addr: &str, args: &[&str]) -> CliOutput {
    let host = format!("tcp://{addr}");
    let mut full = vec!["-H", host.as_str()];
    full.extend_from_slice(args);
    tb.ws_cli(ws, &full)
}

const ROLES: [&str; 4] = ["viewer", "deployer", "operator", "admin"];

fn rank(role: &str) -> usize {
    ROLES.iter().position(|r| *r == role).unwrap()
}

#[test]
fn each_role_does_what_it_may_through_the_leader_and_a_follower() {
    let mut tb = ha_cluster(2, 1);
    import_busybox(&tb, 2);
    let worker = tb.nodes[2].name.clone();
    // What the operations work on, made by the administrator on the socket.
    let task = app_on_worker(
        &tb,
        &["sh", "-c", "while true; do echo tick; sleep 0.5; done"],
    );
    let secret_file = tb.dir().join("secret.txt");
    std::fs::write(&secret_file, "s3cret-value").unwrap();
    let secret_file = secret_file.to_str().unwrap().to_string();
    tb.cli_ok(0, &["secret", "create", "db_pw", &secret_file])
        .unwrap();

    let mut users = Vec::new();
    for role in ROLES {
        let ws = user_on_workstation(&mut tb, role, role, &[]);
        users.push((role, ws));
    }
    let managers = [
        ("leader", tb.nodes[0].ip.clone()),
        ("follower", tb.nodes[1].ip.clone()),
    ];

    let mut calls = Vec::new();
    for (via, addr) in &managers {
        for (role, ws) in &users {
            let u = format!("{role}-{via}");
            let svc = format!("web-{u}");
            // (what, arguments, the least role, what a refusal says)
            let ops: Vec<(&str, Vec<String>, &str, &str)> = vec![
                ("service ls", args(&["service", "ls"]), "viewer", ""),
                ("logs", args(&["task", "logs", &task]), "viewer", ""),
                (
                    "secret inspect",
                    args(&["secret", "inspect", "db_pw"]),
                    "viewer",
                    "",
                ),
                (
                    "service create",
                    idle_service(&svc, &["-e", "API_KEY=hunter2"]),
                    "deployer",
                    "needs the deployer role",
                ),
                (
                    "service update",
                    args(&[
                        "service",
                        "update",
                        "-d",
                        "--label-add",
                        &format!("by={u}"),
                        "app",
                    ]),
                    "deployer",
                    "needs the deployer role",
                ),
                (
                    "service rm",
                    args(&["service", "rm", &svc]),
                    "deployer",
                    "needs the deployer role",
                ),
                (
                    "secret create",
                    args(&["secret", "create", &format!("pw-{u}"), &secret_file]),
                    "deployer",
                    "needs the deployer role",
                ),
                (
                    "bind mount",
                    idle_service(
                        &format!("bind-{u}"),
                        &["--mount", "type=bind,source=/etc,target=/host-etc"],
                    ),
                    "operator",
                    "reaches the host (a bind mount of host path /etc)",
                ),
                (
                    "host network",
                    idle_service(&format!("hostnet-{u}"), &["--network", "host"]),
                    "operator",
                    "reaches the host (--network host)",
                ),
                (
                    "cap-add",
                    idle_service(&format!("caps-{u}"), &["--cap-add", "NET_ADMIN"]),
                    "operator",
                    "reaches the host (--cap-add CAP_NET_ADMIN)",
                ),
                (
                    "node update",
                    args(&["node", "update", "--label-add", &format!("by={u}"), &worker]),
                    "operator",
                    "needs the operator role",
                ),
                (
                    "task exec",
                    args(&["task", "exec", &task, "echo", "inside"]),
                    "operator",
                    "needs the operator role",
                ),
                (
                    "user create",
                    args(&[
                        "user",
                        "create",
                        &format!("u-{u}"),
                        "--role",
                        "viewer",
                        "-q",
                    ]),
                    "admin",
                    "needs the admin role",
                ),
                (
                    "join-token",
                    args(&["join-token", "worker"]),
                    "admin",
                    "needs the admin role",
                ),
            ];
            for (what, a, least, refusal) in ops {
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                let o = remote(&tb, *ws, addr, &a);
                let allowed = rank(role) >= rank(least);
                calls.push(Call {
                    role,
                    method: method_of(what),
                    allowed,
                    audit_id: audit_id_in(&o.stderr),
                });
                assert_eq!(
                    o.success, allowed,
                    "{what} as {role} through the {via}: {}{}",
                    o.stdout, o.stderr
                );
                if !allowed {
                    // A viewer is refused a write before its spec is looked at.
                    let refusal = if *role == "viewer" && refusal.starts_with("reaches") {
                        "needs the deployer role"
                    } else {
                        refusal
                    };
                    // The refusal names the object the request names.
                    if what == "service create" {
                        assert!(
                            o.stderr
                                .contains(&format!("CreateService (service {svc}) refused")),
                            "{}",
                            o.stderr
                        );
                    }
                    assert!(
                        o.stderr.contains(refusal) && o.stderr.contains(&format!("user {role}")),
                        "{what} as {role} through the {via}: {}",
                        o.stderr
                    );
                }
                if allowed && what == "task exec" {
                    assert!(o.stdout.contains("inside"), "{}", o.stdout);
                }
                if allowed && what == "logs" {
                    assert!(o.stdout.contains("tick"), "{}", o.stdout);
                }
                if allowed && what == "secret inspect" {
                    assert!(!o.stdout.contains("s3cret-value"), "{}", o.stdout);
                }
            }
        }
    }
    // What the allowed calls did is there; nothing refused left a trace.
    let ls = tb.cli_ok(0, &["service", "ls"]).unwrap();
    for (role, _) in &users {
        let made = rank(role) >= rank("operator");
        for via in ["leader", "follower"] {
            assert_eq!(ls.contains(&format!("bind-{role}-{via}")), made, "{ls}");
            assert!(!ls.contains(&format!("web-{role}-{via}")), "removed: {ls}");
        }
    }
    let users_ls = tb.cli_ok(0, &["user", "ls", "-q"]).unwrap();
    assert!(users_ls.contains("u-admin-leader") && users_ls.contains("u-admin-follower"));
    assert!(!users_ls.contains("u-operator"), "{users_ls}");

    // Every call above is in the audit log of the manager that took it (and of the
    // leader, for a write a follower forwarded), refusals too; no secret or
    // environment value is.
    let logs: Vec<Vec<serde_json::Value>> = (0..2).map(|i| audit_lines(&tb, i)).collect();
    let all: Vec<&serde_json::Value> = logs.iter().flatten().collect();
    for c in &calls {
        let principal = format!("user {}", c.role);
        if c.allowed {
            assert!(
                all.iter().any(|r| r["principal"] == principal.as_str()
                    && r["method"] == c.method
                    && r["decision"] == "allow"
                    && r["outcome"] == "ok"),
                "no record of {} by {principal}",
                c.method
            );
            continue;
        }
        let id = c.audit_id.as_deref().unwrap_or_else(|| {
            panic!(
                "the refusal of {} to {principal} names no audit ID",
                c.method
            )
        });
        let lines: Vec<&&serde_json::Value> = all.iter().filter(|r| r["audit_id"] == id).collect();
        let denied = lines.iter().filter(|r| r["decision"] == "deny").count();
        let forwarded = lines.iter().filter(|r| r["decision"] == "forward").count();
        assert_eq!(
            (denied, lines.len() - denied - forwarded),
            (1, 0),
            "{id}: {lines:?}"
        );
        assert!(forwarded <= 1, "{lines:?}");
        let deny = lines.iter().find(|r| r["decision"] == "deny").unwrap();
        assert_eq!(deny["principal"], principal.as_str());
        assert_eq!(deny["method"], c.method);
        assert!(deny["rule"].as_str().unwrap().contains("refused"), "{deny}");
    }
    for (i, log) in logs.iter().enumerate() {
        let text: String = log.iter().map(|r| r.to_string()).collect();
        assert!(
            !text.contains("s3cret-value") && !text.contains("hunter2"),
            "manager {i}"
        );
        assert!(
            log.iter()
                .all(|r| r["time"].is_string() && r["latency_us"].is_u64()),
            "manager {i}"
        );
    }
    assert!(all
        .iter()
        .any(|r| r["principal"] == "local uid 0" && r["method"] == "CreateSecret"));
    assert!(all
        .iter()
        .any(|r| r["request"].to_string().contains("API_KEY=<redacted>")));
    // A forwarded write: the follower's record and the leader's share the audit ID.
    let fwd = logs[1]
        .iter()
        .find(|r| r["decision"] == "forward")
        .expect("a forwarded call");
    assert!(
        logs[0]
            .iter()
            .any(|r| r["audit_id"] == fwd["audit_id"] && !r["forwarded_by"].is_null()),
        "{fwd}"
    );
    // 'shoal audit' reads it on a manager, filtered.
    let out = tb
        .cli_ok(0, &["audit", "--user", "viewer", "--since", "1h"])
        .unwrap();
    assert!(
        out.contains("user viewer") && out.contains("CreateService"),
        "{out}"
    );
    assert!(!out.contains("user deployer"), "{out}");
    let json = tb
        .cli_ok(
            0,
            &[
                "audit",
                "--object",
                "web-deployer-leader",
                "--format",
                "json",
            ],
        )
        .unwrap();
    let methods: Vec<String> = json
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["method"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        methods.contains(&"CreateService".to_string())
            && methods.contains(&"RemoveService".to_string()),
        "{methods:?}"
    );

    // 'shoal audit -f' follows: a new call's record arrives as it is written.
    {
        use std::io::BufRead;
        let mut follow = tb
            .cli_command(
                0,
                &[
                    "audit", "-f", "--format", "json", "--user", "viewer", "--since", "0s",
                ],
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let out = follow.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let viewer = users[0].1;
        assert!(remote(&tb, viewer, &managers[0].1, &["node", "ls"]).success);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut seen = false;
        while let Ok(l) =
            rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            let r: serde_json::Value = serde_json::from_str(&l).unwrap();
            assert_eq!(r["principal"], "user viewer", "{l}");
            if r["method"] == "ListNodes" {
                seen = true;
                break;
            }
        }
        let _ = follow.kill();
        let _ = follow.wait();
        assert!(seen, "'shoal audit -f' did not show the new call");
    }

    // The CA's rotation: an administrator's alone (last: it retires the root that
    // signed every user's certificate).
    let follower = managers[1].1.clone();
    for (role, ws) in &users[..3] {
        let o = remote(&tb, *ws, &follower, &["ca", "--rotate", "--detach"]);
        assert!(
            !o.success
                && o.stderr.contains("RotateCa refused")
                && o.stderr.contains("needs the admin role"),
            "{role}: {}",
            o.stderr
        );
    }
    let o = remote(&tb, users[3].1, &follower, &["ca", "--rotate", "--detach"]);
    assert!(o.success, "{}", o.stderr);
}

struct Call {
    role: &'static str,
    method: &'static str,
    allowed: bool,
    audit_id: Option<String>,
}

/// The control call each operation of the table refuses or records.
fn method_of(what: &str) -> &'static str {
    match what {
        "service ls" => "ListServices",
        "logs" => "TaskLogs",
        "secret inspect" => "GetSecret",
        "service create" | "bind mount" | "host network" | "cap-add" => "CreateService",
        "service update" => "UpdateService",
        "service rm" => "RemoveService",
        "secret create" => "CreateSecret",
        "node update" => "UpdateNode",
        "task exec" => "TaskExec",
        "user create" => "CreateUser",
        "join-token" => "GetJoinToken",
        other => panic!("{other}"),
    }
}

/// The audit ID a refusal names: "(audit ID 0123456789abcdef)".
fn audit_id_in(stderr: &str) -> Option<String> {
    let rest = stderr.split("(audit ID ").nth(1)?;
    Some(rest.split(')').next()?.to_string())
}

/// Every record of manager `i`'s audit log, oldest first.
fn audit_lines(tb: &Testbed, i: usize) -> Vec<serde_json::Value> {
    let dir = tb.nodes[i].state_dir.join("audit");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("audit.log")
        })
        .collect();
    files.sort();
    files.reverse();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `service create -d --replicas 0 --name NAME EXTRA... busybox`.
fn idle_service(name: &str, extra: &[&str]) -> Vec<String> {
    let mut a = args(&["service", "create", "-d", "--replicas", "0", "--name", name]);
    a.extend(args(extra));
    a.push("busybox".into());
    a
}

fn strs(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

const SHOP: &str = "
services:
  web:
    image: busybox
    command: sleep 1000
    deploy:
      replicas: 0
    secrets: [pw]
secrets:
  pw:
    file: ./pw.txt
";

const BLOG: &str = "
services:
  web:
    image: busybox
    command: sleep 1000
    deploy:
      replicas: 0
";

#[test]
fn a_deployer_of_one_stack_deploys_it_and_reaches_nothing_else() {
    let mut tb = ha_cluster(1, 0);
    let dir = tb.dir().to_path_buf();
    std::fs::write(dir.join("pw.txt"), "pw").unwrap();
    std::fs::write(dir.join("shop.yml"), SHOP).unwrap();
    std::fs::write(dir.join("blog.yml"), BLOG).unwrap();
    let file = |n: &str| dir.join(n).to_str().unwrap().to_string();
    // The administrator's: the blog stack, and a service in no stack.
    tb.cli_ok(
        0,
        &["stack", "deploy", "-d", "-c", &file("blog.yml"), "blog"],
    )
    .unwrap();
    tb.cli_ok(0, &strs(&idle_service("plain", &[]))).unwrap();
    let ws = user_on_workstation(&mut tb, "sam", "deployer", &["shop"]);
    let leader = tb.nodes[0].ip.clone();
    let run = |a: &[&str]| remote(&tb, ws, &leader, a);

    // Their own stack: deployed, listed, changed.
    let o = run(&["stack", "deploy", "-d", "-c", &file("shop.yml"), "shop"]);
    assert!(o.success, "{}", o.stderr);
    let ls = run(&["service", "ls"]);
    assert!(ls.success, "{}", ls.stderr);
    assert!(ls.stdout.contains("shop_web"), "{}", ls.stdout);
    // Lists leave out what is not theirs.
    assert!(
        !ls.stdout.contains("blog_web") && !ls.stdout.contains("plain"),
        "{}",
        ls.stdout
    );
    let secrets = run(&["secret", "ls"]).stdout;
    assert!(secrets.contains("shop_pw"), "{secrets}");
    assert!(run(&["service", "update", "-d", "--replicas", "1", "shop_web"]).success);

    // Another stack's objects, and objects in no stack: refused, saying why.
    let refused = |a: &[&str], says: &str| {
        let o = run(a);
        assert!(!o.success, "{a:?} was allowed: {}", o.stdout);
        assert!(
            o.stderr.contains("user sam may act only in stack shop"),
            "{a:?}: {}",
            o.stderr
        );
        assert!(o.stderr.contains(says), "{a:?}: {}", o.stderr);
    };
    refused(
        &["service", "rm", "blog_web"],
        "service blog_web is in stack blog",
    );
    refused(
        &["service", "inspect", "blog_web"],
        "service blog_web is in stack blog",
    );
    refused(
        &["service", "update", "-d", "--replicas", "2", "plain"],
        "service plain is in no stack",
    );
    refused(
        &strs(&idle_service("web", &[])),
        "service web is in no stack",
    );
    refused(
        &strs(&idle_service(
            "blog_api",
            &["--label", "com.docker.stack.namespace=blog"],
        )),
        "service blog_api is in stack blog",
    );
    refused(
        &["stack", "deploy", "-d", "-c", &file("blog.yml"), "blog"],
        "is in stack blog",
    );
    refused(
        &["network", "rm", "blog_default"],
        "network blog_default is in stack blog",
    );
    // Their stack's label on a service cannot reach another stack's network.
    refused(
        &strs(&idle_service(
            "shop_spy",
            &[
                "--label",
                "com.docker.stack.namespace=shop",
                "--network",
                "blog_default",
            ],
        )),
        "network blog_default is in stack blog",
    );
    // A name another stack will need is not theirs to take.
    let o = run(&strs(&idle_service(
        "blog_x",
        &["--label", "com.docker.stack.namespace=shop"],
    )));
    assert!(
        !o.success && o.stderr.contains("only shop_<name>"),
        "{}",
        o.stderr
    );
    // Nothing of blog's changed.
    let inspect = tb.cli_ok(0, &["service", "inspect", "blog_web"]).unwrap();
    assert!(!inspect.contains("shop"), "{inspect}");
    assert!(tb.cli_ok(0, &["service", "ls"]).unwrap().contains("plain"));

    // Their own stack goes as it came.
    let o = run(&["stack", "rm", "-d", "shop"]);
    assert!(o.success, "{}", o.stderr);
    assert!(!tb
        .cli_ok(0, &["service", "ls"])
        .unwrap()
        .contains("shop_web"));
}

/// Runs `c`, returning its standard output; panics, saying what, when it fails.
fn run_ok(mut c: std::process::Command) -> String {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_full_audit_disk_fails_calls_instead_of_skipping_their_records() {
    let mut tb = ha_cluster(1, 0);
    let dir = tb.nodes[0].state_dir.join("audit");
    let d = dir.to_str().unwrap().to_string();
    // The manager's audit directory on a small file system of its own, filled up.
    tb.stop(0).unwrap();
    run_ok(tb.command_in(0, &["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", &d]));
    let _ = tb
        .command_in(
            0,
            &["dd", "if=/dev/zero", &format!("of={d}/filler"), "bs=64k"],
        )
        .output();
    tb.start(0).unwrap();

    for args in [
        vec!["service", "ls"],
        vec![
            "service",
            "create",
            "-d",
            "--replicas",
            "0",
            "--name",
            "web",
            "busybox",
        ],
    ] {
        let o = tb.cli(0, &args);
        assert!(!o.success, "{args:?} ran unrecorded");
        assert!(
            o.stderr
                .contains(&format!("the audit log in {d} cannot be written"))
                && o.stderr.contains("No space left on device")
                && o.stderr.contains("the call was not made"),
            "{}",
            o.stderr
        );
    }
    // Room again: calls are served and recorded; what was refused did not happen.
    run_ok(tb.command_in(0, &["rm", &format!("{d}/filler")]));
    let ls = tb.cli_ok(0, &["service", "ls"]).unwrap();
    assert!(!ls.contains("web"), "{ls}");
    tb.cli_ok(0, &strs(&idle_service("web", &[]))).unwrap();
    let log = run_ok(tb.command_in(0, &["cat", &format!("{d}/audit.log")]));
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let created: Vec<_> = records
        .iter()
        .filter(|r| r["method"] == "CreateService")
        .collect();
    assert_eq!(created.len(), 1, "{log}");
    assert_eq!(created[0]["object"], "web");
    assert_eq!(created[0]["outcome"], "ok");
    assert_eq!(created[0]["principal"], "local uid 0");
}

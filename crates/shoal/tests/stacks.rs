//! Issue #23: applications from compose files (`shoal stack`). Real daemons in network
//! namespaces, real containers; the files are the ones `docker stack deploy` reads.

mod common;

use common::*;
use shoal_testbed::{wait_for, Testbed};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

const STACK: &str = r#"
version: "3.8"
services:
  web:
    image: busybox
    # $$ is a literal $: the container's shell expands these.
    command: sh -c 'mkdir -p /tmp/w && echo "$$GREETING from $$(hostname)" > /tmp/w/index.html && cat /run/secrets/token /etc/page.txt >> /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w'
    environment:
      GREETING: ${GREETING:?set GREETING}
    secrets: [token]
    configs:
      - source: page
        target: /etc/page.txt
    ports: ["18080:8080"]
    healthcheck:
      test: wget -qO- http://127.0.0.1:8080/ > /dev/null
      interval: 1s
      retries: 30
    stop_grace_period: 300ms
    deploy:
      replicas: 2
      update_config: {parallelism: 2, monitor: 1s}
  client:
    image: busybox
    command: sh -c 'while true; do wget -qO- http://web:8080/ > /tmp/last.new 2>&1; mv /tmp/last.new /tmp/last; sleep 1; done'
    stop_grace_period: 300ms
    depends_on:
      web: {condition: service_healthy}
secrets:
  token: {file: ./token.txt}
configs:
  page: {file: ./page.txt}
"#;

fn cluster2() -> Testbed {
    let tb = cluster(2, &[]);
    for i in 0..2 {
        import_busybox(&tb, i);
    }
    tb
}

/// `path` from `ip:port`, fetched inside node `i`'s network namespace.
fn fetch(tb: &Testbed, i: usize, ip: &str, port: u16) -> Option<String> {
    tb.exec_in(
        i,
        &[
            "timeout",
            "5",
            "busybox",
            "wget",
            "-qO-",
            &format!("http://{ip}:{port}/"),
        ],
    )
    .ok()
}

/// A file inside the running task of `service`.
fn task_file(tb: &Testbed, service: &str, path: &str) -> Option<String> {
    let out = tb
        .cli_ok(0, &["service", "ps", "--format", "json", service])
        .ok()?;
    for l in out.lines() {
        let p: serde_json::Value = serde_json::from_str(l).ok()?;
        if p["CurrentState"] != "Running" || p["DesiredState"] != "Running" {
            continue;
        }
        let i = tb.nodes.iter().position(|n| p["Node"] == n.name.as_str())?;
        let id = p["ID"].as_str()?;
        let pid = std::fs::read_to_string(
            tb.nodes[i]
                .state_dir
                .join("containers")
                .join(id)
                .join("pid"),
        )
        .ok()?;
        let out = tb
            .command_in(i, &["nsenter", "-t", pid.trim(), "-m", "--", "cat", path])
            .output()
            .ok()?;
        if out.status.success() {
            return Some(String::from_utf8_lossy(&out.stdout).into_owned());
        }
    }
    None
}

fn spec_version(tb: &Testbed, service: &str) -> u64 {
    let out = tb.cli_ok(0, &["service", "inspect", service]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["Version"]["Index"].as_u64().unwrap()
}

fn deploy(tb: &Testbed, dir: &Path, files: &[&str], extra: &[&str]) -> shoal_testbed::CliOutput {
    let mut args = vec!["stack", "deploy"];
    let paths: Vec<String> = files
        .iter()
        .map(|f| dir.join(f).display().to_string())
        .collect();
    for p in &paths {
        args.push("-c");
        args.push(p);
    }
    args.extend_from_slice(extra);
    args.push("app");
    tb.cli(0, &args)
}

#[test]
fn a_stack_deploys_converges_updates_only_what_changed_and_is_removed() {
    let tb = cluster2();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("stack.yml"), STACK).unwrap();
    std::fs::write(d.join("token.txt"), "token-1\n").unwrap();
    std::fs::write(d.join("page.txt"), "page-1\n").unwrap();

    // Nothing is created when the file cannot be deployed.
    let out = deploy(&tb, d, &["stack.yml"], &[]);
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("required variable GREETING is missing a value: set GREETING"),
        "{}",
        out.stderr
    );
    std::fs::write(
        d.join("ext.yml"),
        "services:\n  x:\n    image: busybox\n    networks: [outside]\nnetworks:\n  outside: {external: true}\nsecrets:\n  s: {file: ./token.txt}\n",
    )
    .unwrap();
    let out = deploy(&tb, d, &["ext.yml"], &[]);
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("network \"outside\" is declared as external, but could not be found"),
        "{}",
        out.stderr
    );
    std::fs::write(
        d.join("bad.yml"),
        "services:\n  x:\n    image: busybox\n    profiles: [a]\n",
    )
    .unwrap();
    let out = deploy(&tb, d, &["bad.yml"], &[]);
    assert!(
        out.stderr
            .contains("services.x Additional property profiles is not allowed")
            && out.stderr.contains("line 4"),
        "{}",
        out.stderr
    );
    assert_eq!(tb.cli_ok(0, &["service", "ls", "-q"]).unwrap().trim(), "");
    assert_eq!(tb.cli_ok(0, &["secret", "ls", "-q"]).unwrap().trim(), "");
    assert!(!tb.cli_ok(0, &["stack", "ls"]).unwrap().contains("app"));

    // The .env file beside the file gives GREETING.
    std::fs::write(d.join(".env"), "GREETING=hi\n").unwrap();
    let out = deploy(&tb, d, &["stack.yml"], &[]);
    assert!(
        out.success,
        "{}\n{}\n{}",
        out.stdout,
        out.stderr,
        tb.all_logs()
    );
    let s = &out.stdout;
    for line in [
        "Creating secret app_token",
        "Creating config app_page",
        "Creating network app_default",
        "Creating service app_web",
        "Waiting for app_web (service_healthy) before app_client",
        "Creating service app_client",
        "Stack app converged",
    ] {
        assert!(s.contains(line), "no {line:?} in\n{s}");
    }
    assert!(
        s.find("Waiting for app_web").unwrap() < s.find("Creating service app_client").unwrap(),
        "the client was created before web was healthy:\n{s}"
    );
    let ls = tb.cli_ok(0, &["stack", "ls"]).unwrap();
    assert!(
        ls.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["app", "2"]),
        "{ls}"
    );
    let services = tb.cli_ok(0, &["stack", "services", "app"]).unwrap();
    assert!(
        services.contains("app_web") && services.contains("app_client"),
        "{services}"
    );
    let tasks = tb.cli_ok(0, &["stack", "ps", "-q", "app"]).unwrap();
    assert_eq!(tasks.lines().count(), 3, "{tasks}");
    let inspect = tb.cli_ok(0, &["service", "inspect", "app_web"]).unwrap();
    assert!(
        inspect.contains("\"com.docker.stack.namespace\": \"app\"")
            || inspect.contains("\"com.docker.stack.namespace\":\"app\""),
        "{inspect}"
    );

    // The page answers through the published port on every node, and the client finds
    // web by its short name.
    for i in 0..2 {
        let ip = tb.nodes[i].ip.clone();
        let page = wait_for(T, || {
            fetch(&tb, 0, &ip, 18080).filter(|p| p.contains("hi from"))
        })
        .unwrap_or_else(|| panic!("no page on node{}\n{}", i + 1, tb.all_logs()));
        assert!(
            page.contains("token-1") && page.contains("page-1"),
            "{page}"
        );
    }
    let last = wait_for(T, || {
        task_file(&tb, "app_client", "/tmp/last").filter(|p| p.contains("hi from"))
    })
    .unwrap_or_else(|| panic!("the client never reached web by name\n{}", tb.all_logs()));
    assert!(last.contains("token-1"), "{last}");

    // The same file again changes nothing.
    let (web_v, client_v) = (
        spec_version(&tb, "app_web"),
        spec_version(&tb, "app_client"),
    );
    let out = deploy(&tb, d, &["stack.yml"], &[]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("Service app_web is unchanged"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Service app_client is unchanged"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("Creating") && !out.stdout.contains("Updating"),
        "{}",
        out.stdout
    );
    assert_eq!(spec_version(&tb, "app_web"), web_v);
    assert_eq!(spec_version(&tb, "app_client"), client_v);

    // One changed variable updates only its service.
    std::fs::write(d.join(".env"), "GREETING=bye\n").unwrap();
    let out = deploy(&tb, d, &["stack.yml"], &[]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("Updating service app_web"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Service app_client is unchanged"),
        "{}",
        out.stdout
    );
    assert_eq!(spec_version(&tb, "app_web"), web_v + 1);
    assert_eq!(spec_version(&tb, "app_client"), client_v);
    let ip = tb.nodes[1].ip.clone();
    wait_for(T, || {
        fetch(&tb, 0, &ip, 18080).filter(|p| p.contains("bye from"))
    })
    .unwrap_or_else(|| panic!("the page never changed\n{}", tb.all_logs()));

    // A changed secret file becomes a new version, and web rolls onto it.
    std::fs::write(d.join("token.txt"), "token-2\n").unwrap();
    let out = deploy(&tb, d, &["stack.yml"], &[]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("Updating secret app_token"),
        "{}",
        out.stdout
    );
    wait_for(T, || {
        fetch(&tb, 0, &ip, 18080).filter(|p| p.contains("token-2"))
    })
    .unwrap_or_else(|| panic!("web never got the new secret\n{}", tb.all_logs()));

    // stack config prints the merged file; --prune removes what the files dropped.
    std::fs::write(
        d.join("override.yml"),
        "services:\n  web:\n    deploy:\n      replicas: 1\n",
    )
    .unwrap();
    let cfg = tb
        .cli_ok(
            0,
            &[
                "stack",
                "config",
                "-c",
                d.join("stack.yml").to_str().unwrap(),
                "-c",
                d.join("override.yml").to_str().unwrap(),
            ],
        )
        .unwrap();
    assert!(
        cfg.contains("replicas: 1") && cfg.contains("GREETING: bye"),
        "{cfg}"
    );
    let only_web = STACK.split("  client:").next().unwrap().to_string()
        + "secrets:\n  token: {file: ./token.txt}\nconfigs:\n  page: {file: ./page.txt}\n";
    std::fs::write(d.join("web-only.yml"), only_web).unwrap();
    let out = deploy(&tb, d, &["web-only.yml", "override.yml"], &["--prune"]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("Removing service app_client"),
        "{}",
        out.stdout
    );
    let services = tb.cli_ok(0, &["stack", "services", "-q", "app"]).unwrap();
    assert_eq!(services.lines().count(), 1, "{services}");

    // stack rm removes everything the stack created and waits for the containers.
    let out = tb.cli(0, &["stack", "rm", "app"]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    for line in [
        "Removing service app_web",
        "Removing secret app_token",
        "Removing config app_page",
        "Removing network app_default",
    ] {
        assert!(out.stdout.contains(line), "no {line:?} in\n{}", out.stdout);
    }
    assert_eq!(
        tb.processes_named(0, "httpd") + tb.processes_named(1, "httpd"),
        0
    );
    assert!(!tb.cli_ok(0, &["stack", "ls"]).unwrap().contains("app"));
    assert!(!tb
        .cli_ok(0, &["network", "ls"])
        .unwrap()
        .contains("app_default"));
    assert_eq!(tb.cli_ok(0, &["secret", "ls", "-q"]).unwrap().trim(), "");
    assert_eq!(tb.cli_ok(0, &["config", "ls", "-q"]).unwrap().trim(), "");
    let out = tb.cli(0, &["stack", "rm", "app"]);
    assert!(
        out.success && out.stderr.contains("Nothing found in stack: app"),
        "{}",
        out.stderr
    );
}

/// The visit count of a page like `hello, visit 3`.
fn visits(page: &str) -> Option<u64> {
    page.trim().rsplit_once("visit ")?.1.trim().parse().ok()
}

#[test]
fn a_three_service_application_from_debian_packages() {
    let tb = cluster(3, &[]);
    shoal_testbed::app::import_images(&tb).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    shoal_testbed::app::write_files(d).unwrap();
    let out = deploy(&tb, d, &["app.yml"], &[]);
    assert!(
        out.success,
        "{}\n{}\n{}",
        out.stdout,
        out.stderr,
        tb.all_logs()
    );
    // The page answers through the published port on every node, and counts.
    let ips: Vec<String> = (0..3).map(|i| tb.nodes[i].ip.to_string()).collect();
    let mut last = 0;
    for (i, ip) in ips.iter().enumerate() {
        let page = wait_for(T, || {
            fetch(&tb, i, ip, 8080).filter(|p| p.contains("visit"))
        })
        .unwrap_or_else(|| panic!("the page on {ip}: {}", tb.all_logs()));
        assert!(page.starts_with("hello, visit "), "{page}");
        let n = visits(&page).unwrap();
        assert!(n > last, "{page} after {last}");
        last = n;
    }
    // One changed variable: only web is updated.
    let versions: Vec<u64> = ["app_proxy", "app_web", "app_db"]
        .iter()
        .map(|s| spec_version(&tb, s))
        .collect();
    std::fs::write(d.join(".env"), "GREETING=bonjour\n").unwrap();
    let out = deploy(&tb, d, &["app.yml"], &[]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("Updating service app_web"),
        "{}",
        out.stdout
    );
    assert_eq!(spec_version(&tb, "app_proxy"), versions[0]);
    assert!(spec_version(&tb, "app_web") > versions[1]);
    assert_eq!(spec_version(&tb, "app_db"), versions[2]);
    let page = wait_for(T, || {
        fetch(&tb, 0, &ips[0], 8080).filter(|p| p.starts_with("bonjour"))
    })
    .unwrap_or_else(|| panic!("the new greeting: {}", tb.all_logs()));
    last = visits(&page).unwrap();
    // The count survives db's task being replaced on the same node (its volume).
    tb.cli_ok(0, &["service", "update", "--force", "app_db"])
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.all_logs()));
    let page = wait_for(T, || {
        fetch(&tb, 1, &ips[1], 8080).filter(|p| p.contains("visit"))
    })
    .unwrap_or_else(|| panic!("the page after db moved: {}", tb.all_logs()));
    assert!(visits(&page).unwrap() > last, "{page} after {last}");
    last = visits(&page).unwrap();
    // stack rm removes everything but the volume.
    tb.cli_ok(0, &["stack", "rm", "app"]).unwrap();
    assert_eq!(tb.cli_ok(0, &["service", "ls", "-q"]).unwrap().trim(), "");
    assert_eq!(tb.cli_ok(0, &["secret", "ls", "-q"]).unwrap().trim(), "");
    assert_eq!(tb.cli_ok(0, &["config", "ls", "-q"]).unwrap().trim(), "");
    assert!(!tb
        .cli_ok(0, &["network", "ls"])
        .unwrap()
        .contains("app_default"));
    let vols = tb.cli_ok(1, &["volume", "ls", "-q"]).unwrap();
    assert!(vols.lines().any(|l| l == "app_data"), "{vols}");
    // Deployed again, the count goes on.
    let out = deploy(&tb, d, &["app.yml"], &[]);
    assert!(
        out.success,
        "{}\n{}\n{}",
        out.stdout,
        out.stderr,
        tb.all_logs()
    );
    let page = wait_for(T, || {
        fetch(&tb, 2, &ips[2], 8080).filter(|p| p.contains("visit"))
    })
    .unwrap_or_else(|| panic!("the page after a new deploy: {}", tb.all_logs()));
    assert!(visits(&page).unwrap() > last, "{page} after {last}");
}

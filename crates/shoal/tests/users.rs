//! Issue #24: users, their roles and scopes, and their enrollment tokens. Real daemons
//! in network namespaces; the administrator works on a manager's socket.

mod common;

use common::*;

/// The one token a `user create` or `user token` printed.
fn token_in(out: &str) -> String {
    let tokens: Vec<&str> = out
        .split_whitespace()
        .filter(|w| w.starts_with("SHOAL-USER-1-"))
        .collect();
    assert_eq!(tokens.len(), 1, "{out}");
    tokens[0].to_string()
}

#[test]
fn users_are_managed_by_an_administrator_through_any_manager() {
    let tb = ha_cluster(2, 0);
    // Created through the follower (forwarded to the leader), read on both.
    let out = tb
        .cli_ok(
            1,
            &[
                "user", "create", "alice", "--role", "deployer", "--scope", "shop",
            ],
        )
        .unwrap();
    let token = token_in(&out);
    assert!(out.contains("shoal login --token"), "{out}");
    let parsed = shoal_pki::EnrollmentToken::parse(&token).unwrap();
    let quiet = tb
        .cli_ok(0, &["user", "create", "bob", "--role", "viewer", "-q"])
        .unwrap();
    assert!(quiet.trim().starts_with("SHOAL-USER-1-"), "{quiet}");
    for i in 0..2 {
        let ls = tb.cli_ok(i, &["user", "ls"]).unwrap();
        assert!(ls.contains("NAME") && ls.contains("ROLE"), "{ls}");
        let alice = ls.lines().find(|l| l.starts_with("alice")).unwrap();
        assert!(alice.contains("deployer") && alice.contains("shop"), "{ls}");
        let bob = ls.lines().find(|l| l.starts_with("bob")).unwrap();
        assert!(bob.contains("viewer") && bob.contains('*'), "{ls}");
        let inspect = tb.cli_ok(i, &["user", "inspect", "alice"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
        assert_eq!(v[0]["Role"], "deployer");
        assert_eq!(v[0]["Scopes"], serde_json::json!(["shop"]));
        // Neither the token nor the hash the managers keep of it is ever shown.
        let secret = token.rsplit('-').next().unwrap();
        for shown in [&ls, &inspect] {
            assert!(!shown.contains(secret), "{shown}");
            assert!(!shown.contains(&parsed.secret_sha256()), "{shown}");
        }
    }

    // Changes: role and scopes; nothing to change is an error.
    let out = tb
        .cli_ok(
            1,
            &[
                "user",
                "update",
                "alice",
                "--role",
                "operator",
                "--scope-add",
                "blog",
                "--scope-rm",
                "shop",
            ],
        )
        .unwrap();
    assert!(out.contains("operator") && out.contains("blog"), "{out}");
    let o = tb.cli(0, &["user", "update", "alice"]);
    assert!(
        !o.success && o.stderr.contains("nothing to change"),
        "{}",
        o.stderr
    );
    let o = tb.cli(0, &["user", "update", "alice", "--scope-rm", "blog"]);
    assert!(
        !o.success && o.stderr.contains("no scope left"),
        "{}",
        o.stderr
    );

    // A new token replaces the last one.
    let again = token_in(
        &tb.cli_ok(1, &["user", "token", "alice", "--ttl", "1h"])
            .unwrap(),
    );
    assert_ne!(again, token);

    // Bad input is refused, naming what is wrong; nothing is made.
    for (args, why) in [
        (
            vec!["user", "create", "alice", "--role", "viewer"],
            "already exists",
        ),
        (
            vec!["user", "create", "carol", "--role", "root"],
            "unknown role \"root\"",
        ),
        (
            vec!["user", "create", "Carol", "--role", "viewer"],
            "invalid user name",
        ),
        (
            vec![
                "user", "create", "carol", "--role", "viewer", "--scope", "bad name",
            ],
            "invalid scope",
        ),
        (
            vec![
                "user", "create", "carol", "--role", "viewer", "--ttl", "60d",
            ],
            "at most 30 days",
        ),
        (vec!["user", "inspect", "nobody"], "no such user: nobody"),
        (vec!["user", "rm", "nobody"], "no such user: nobody"),
        (
            vec!["update", "--user-cert-expiry", "100d"],
            "between 1 minute and 90 days",
        ),
    ] {
        let o = tb.cli(1, &args);
        assert!(
            !o.success && o.stderr.contains(why),
            "{args:?}: {}",
            o.stderr
        );
    }
    assert!(!tb
        .cli_ok(0, &["user", "ls", "-q"])
        .unwrap()
        .contains("carol"));
    tb.cli_ok(1, &["update", "--user-cert-expiry", "2h"])
        .unwrap();

    // Removed through the follower: gone on both.
    assert_eq!(
        tb.cli_ok(1, &["user", "rm", "alice"]).unwrap().trim(),
        "alice"
    );
    for i in 0..2 {
        assert_eq!(tb.cli_ok(i, &["user", "ls", "-q"]).unwrap().trim(), "bob");
    }
}

#[test]
fn a_user_logs_in_from_their_own_machine_once_per_token() {
    let mut tb = ha_cluster(2, 0);
    let ws = tb.add_workstation().unwrap();
    let follower = tb.nodes[1].ip.clone();
    let token = token_in(
        &tb.cli_ok(
            0,
            &[
                "user", "create", "alice", "--role", "deployer", "--scope", "shop",
            ],
        )
        .unwrap(),
    );

    // Through the follower: it names the leader, which issues the certificate.
    let o = tb.ws_cli(ws, &["login", "--token", &token, &follower]);
    assert!(o.success, "{}", o.stderr);
    assert!(
        o.stdout.contains("as alice (deployer, scope shop)"),
        "{}",
        o.stdout
    );
    let dir = tb.workstations[ws].home.join(".config/shoal");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("key.pem")), 0o600);
    let cert = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    let der = shoal_pki::pem_certs(&cert).unwrap().remove(0);
    let summary = shoal_pki::CertSummary::parse(&der).unwrap();
    assert_eq!(summary.common_name, "alice");
    let login: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("login.json")).unwrap()).unwrap();
    assert_eq!(login["user"], "alice");
    assert_eq!(login["role"], "deployer");
    // The managers recorded the certificate and the token's use.
    let v: serde_json::Value =
        serde_json::from_str(&tb.cli_ok(1, &["user", "inspect", "alice"]).unwrap()).unwrap();
    assert_eq!(v[0]["Certificates"][0]["Serial"], summary.serial.as_str());
    assert!(v[0]["Enrollment"]["UsedAt"].is_string(), "{v}");

    // Refused, each saying why and what to do.
    let o = tb.ws_cli(ws, &["login", "--token", &token, &follower]);
    assert!(
        !o.success
            && o.stderr.contains("already used at")
            && o.stderr.contains("shoal user token alice"),
        "{}",
        o.stderr
    );
    let short = token_in(
        &tb.cli_ok(0, &["user", "token", "alice", "--ttl", "1s"])
            .unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let o = tb.ws_cli(ws, &["login", "--token", &short, &follower]);
    assert!(
        !o.success && o.stderr.contains("expired at"),
        "{}",
        o.stderr
    );
    let join = tb.cli_ok(0, &["join-token", "-q", "worker"]).unwrap();
    let o = tb.ws_cli(ws, &["login", "--token", join.trim(), &follower]);
    assert!(
        !o.success && o.stderr.contains("this is a join token"),
        "{}",
        o.stderr
    );
    let foreign = shoal_pki::EnrollmentToken::generate(&shoal_pki::cert_digest(b"another CA"));
    let o = tb.ws_cli(ws, &["login", "--token", &foreign.to_string(), &follower]);
    assert!(
        !o.success && o.stderr.contains("does not match this cluster's CA"),
        "{}",
        o.stderr
    );
    let unknown = tb.cli_ok(0, &["user", "token", "-q", "alice"]).unwrap();
    tb.cli_ok(0, &["user", "token", "-q", "alice"]).unwrap();
    let o = tb.ws_cli(ws, &["login", "--token", unknown.trim(), &follower]);
    assert!(
        !o.success && o.stderr.contains("no user's current token"),
        "{}",
        o.stderr
    );
    // What was kept from the first login is untouched by the refusals.
    assert_eq!(std::fs::read_to_string(dir.join("cert.pem")).unwrap(), cert);
}

/// The identity `shoal login` kept on workstation `ws`.
fn login_identity(tb: &shoal_testbed::Testbed, ws: usize) -> common::raw::Identity {
    let dir = tb.workstations[ws].home.join(".config/shoal");
    common::raw::Identity {
        root: common::raw::pem_der(&dir.join("roots.pem")),
        cert: common::raw::pem_der(&dir.join("cert.pem")),
        key: shoal_pki::NodeKey::from_pem(&std::fs::read_to_string(dir.join("key.pem")).unwrap())
            .unwrap()
            .pkcs8_der(),
    }
}

/// RenewUserCertificate presenting `id`, from node `i`'s namespace.
fn renew_user(
    tb: &shoal_testbed::Testbed,
    i: usize,
    id: &common::raw::Identity,
) -> Result<String, tonic::Status> {
    common::raw::with_channel(tb, i, id, |ch| async move {
        let key = shoal_pki::NodeKey::generate().unwrap();
        let r = shoal_proto::ca::ca_client::CaClient::new(ch)
            .renew_user_certificate(shoal_proto::ca::RenewUserCertificateRequest {
                csr_der: key.csr_der().unwrap(),
            })
            .await?
            .into_inner();
        Ok(shoal_pki::CertSummary::parse(&r.cert_der).unwrap().serial)
    })
}

#[test]
fn a_user_certificate_is_no_node_and_a_node_certificate_is_no_user() {
    let mut tb = ha_cluster(1, 1);
    let ws = tb.add_workstation().unwrap();
    let token = token_in(
        &tb.cli_ok(0, &["user", "create", "alice", "--role", "admin"])
            .unwrap(),
    );
    let o = tb.ws_cli(ws, &["login", "--token", &token, &tb.nodes[0].ip]);
    assert!(o.success, "{}", o.stderr);
    let user = login_identity(&tb, ws);

    // As a node: heartbeat, session, renewal of a node certificate.
    let denied = |r: Result<(), tonic::Status>, call: &str| {
        let e = r.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{call}: {e:?}");
        assert!(
            e.message()
                .contains("user certificate of alice cannot make a node's calls"),
            "{call}: {}",
            e.message()
        );
    };
    denied(common::raw::heartbeat(&tb, 1, &user), "Heartbeat");
    denied(
        common::raw::session_first(&tb, 1, &user).map(|_| ()),
        "Session",
    );
    denied(
        common::raw::renew(&tb, 1, &user).map(|_| ()),
        "RenewNodeCertificate",
    );

    // As a user it renews, and the managers record the new certificate.
    let serial = renew_user(&tb, 1, &user).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&tb.cli_ok(0, &["user", "inspect", "alice"]).unwrap()).unwrap();
    let serials: Vec<&str> = v[0]["Certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["Serial"].as_str().unwrap())
        .collect();
    assert!(serials.contains(&serial.as_str()), "{v}");

    // A worker's certificate is no user's.
    let worker = common::raw::Identity::of_node(&tb, 1);
    let e = renew_user(&tb, 1, &worker).unwrap_err();
    assert!(
        e.message().contains("cannot act as a user") && e.message().contains("shoal login"),
        "{}",
        e.message()
    );

    // A user certificate of another cluster's CA, for a user of the same name: the
    // managers' listener ends the handshake, saying why in its log.
    let other_ca = shoal_pki::RootCa::generate(std::time::Duration::from_secs(86400)).unwrap();
    let other_key = shoal_pki::NodeKey::generate().unwrap();
    let other = other_ca
        .sign_user(
            &other_key.csr_der().unwrap(),
            &shoal_pki::UserName::parse("alice").unwrap(),
            &shoal_pki::ClusterId::generate(),
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
    let foreign = common::raw::Identity {
        root: user.root.clone(),
        cert: other.cert_der,
        key: other_key.pkcs8_der(),
    };
    let refusals = || tb.log(0).matches("TLS handshake refused").count();
    let before = refusals();
    assert!(
        renew_user(&tb, 1, &foreign).is_err(),
        "another cluster's user certificate was served"
    );
    assert!(
        shoal_testbed::wait_for(std::time::Duration::from_secs(5), || {
            (refusals() > before).then_some(())
        })
        .is_some(),
        "the manager does not say why it refused the foreign certificate"
    );

    // A removed user's certificate is refused at once, saying so.
    tb.cli_ok(0, &["user", "rm", "alice"]).unwrap();
    let e = renew_user(&tb, 1, &user).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(
        e.message().contains("user alice was removed"),
        "{}",
        e.message()
    );
}

/// `shoal -H tcp://ADDR ARGS` on workstation `ws`.
fn remote(
    tb: &shoal_testbed::Testbed,
    ws: usize,
    addr: &str,
    args: &[&str],
) -> shoal_testbed::CliOutput {
    let host = format!("tcp://{addr}");
    let mut full = vec!["-H", host.as_str()];
    full.extend_from_slice(args);
    tb.ws_cli(ws, &full)
}

#[test]
fn an_administrator_works_from_their_own_machine_through_any_manager() {
    let mut tb = ha_cluster(2, 1);
    let ws = tb.add_workstation().unwrap();
    let (leader, follower) = (tb.nodes[0].ip.clone(), tb.nodes[1].ip.clone());
    let token = token_in(
        &tb.cli_ok(0, &["user", "create", "alice", "--role", "admin"])
            .unwrap(),
    );
    let o = tb.ws_cli(ws, &["login", "--token", &token, &follower]);
    assert!(o.success, "{}", o.stderr);

    // Reads through either manager answer as the socket does (no node is "this" one).
    // The same rows and columns (the socket's marks the node it runs on with '*').
    let cells = |out: &str| -> Vec<Vec<String>> {
        out.lines()
            .map(|l| {
                l.split_whitespace()
                    .filter(|c| *c != "*")
                    .map(str::to_string)
                    .collect()
            })
            .collect()
    };
    let on_socket = cells(&tb.cli_ok(0, &["node", "ls"]).unwrap());
    assert_eq!(on_socket.len(), 4);
    for addr in [&leader, &follower] {
        let o = remote(&tb, ws, addr, &["node", "ls"]);
        assert!(o.success, "{}", o.stderr);
        assert_eq!(cells(&o.stdout), on_socket);
        let o = remote(&tb, ws, addr, &["user", "ls", "-q"]);
        assert_eq!(o.stdout.trim(), "alice", "{}", o.stderr);
    }
    // A write through the follower reaches the leader, naming the user there.
    let o = remote(
        &tb,
        ws,
        &follower,
        &["user", "create", "bob", "--role", "viewer", "-q"],
    );
    assert!(
        o.success && o.stdout.starts_with("SHOAL-USER-1-"),
        "{}",
        o.stderr
    );
    assert!(tb.cli_ok(0, &["user", "ls", "-q"]).unwrap().contains("bob"));
    // SHOAL_HOST works as -H does.
    let ws_ns = tb.workstations[ws].netns.clone();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ws_ns, "env"])
        .arg(format!("HOME={}", tb.workstations[ws].home.display()))
        .arg(format!("SHOAL_HOST=tcp://{leader}"))
        .arg(env!("CARGO_BIN_EXE_shoal"))
        .args(["user", "ls", "-q"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("bob"));
    // What only a node's own socket does says so.
    let o = remote(&tb, ws, &leader, &["info"]);
    assert!(
        !o.success && o.stderr.contains("works on a node's own socket"),
        "{}",
        o.stderr
    );
    let o = remote(&tb, ws, &leader, &["node", "inspect", "self"]);
    assert!(
        !o.success && o.stderr.contains("'self' names the node"),
        "{}",
        o.stderr
    );

    // A narrower role takes effect on the next call, on every manager.
    tb.cli_ok(0, &["user", "update", "alice", "--role", "operator"])
        .unwrap();
    let o = remote(&tb, ws, &follower, &["user", "ls"]);
    assert!(
        !o.success
            && o.stderr.contains(
                "ListUsers refused: user alice is an operator, and ListUsers needs the admin role"
            ),
        "{}",
        o.stderr
    );
    tb.cli_ok(0, &["user", "update", "alice", "--role", "admin"])
        .unwrap();
    assert!(remote(&tb, ws, &follower, &["user", "ls"]).success);

    // A certificate past half its life is renewed by the CLI itself: a 2-minute
    // certificate (backdated 2 minutes) is at half its life at once.
    tb.cli_ok(0, &["update", "--user-cert-expiry", "2m"])
        .unwrap();
    let token = token_in(&tb.cli_ok(0, &["user", "token", "alice"]).unwrap());
    assert!(
        tb.ws_cli(ws, &["login", "--token", &token, &leader])
            .success
    );
    let cert = tb.workstations[ws].home.join(".config/shoal/cert.pem");
    let before = std::fs::read_to_string(&cert).unwrap();
    let o = remote(&tb, ws, &leader, &["user", "ls", "-q"]);
    assert!(o.success, "{}", o.stderr);
    assert_ne!(
        std::fs::read_to_string(&cert).unwrap(),
        before,
        "not renewed"
    );
    let o = remote(&tb, ws, &follower, &["user", "ls", "-q"]);
    assert!(o.success, "the renewed certificate works: {}", o.stderr);

    // One certificate revoked: refused on its next call; a new login works again.
    tb.cli_ok(0, &["update", "--user-cert-expiry", "12h"])
        .unwrap();
    let pem = std::fs::read_to_string(&cert).unwrap();
    let der = shoal_pki::pem_certs(&pem).unwrap().remove(0);
    let serial = shoal_pki::CertSummary::parse(&der).unwrap().serial;
    let o = tb.cli(0, &["user", "revoke-certificate", "alice", "00ff"]);
    assert!(
        !o.success && o.stderr.contains("is not one of user alice's"),
        "{}",
        o.stderr
    );
    tb.cli_ok(1, &["user", "revoke-certificate", "alice", &serial])
        .unwrap();
    let o = remote(&tb, ws, &follower, &["node", "ls"]);
    assert!(
        !o.success
            && o.stderr.contains(&format!(
                "certificate revoked (certificate {serial} of user alice)"
            )),
        "{}",
        o.stderr
    );
    let token = token_in(&tb.cli_ok(0, &["user", "token", "alice"]).unwrap());
    assert!(
        tb.ws_cli(ws, &["login", "--token", &token, &leader])
            .success
    );
    assert!(remote(&tb, ws, &follower, &["node", "ls"]).success);

    // Removed: the next call through any manager is refused, saying so.
    tb.cli_ok(0, &["user", "rm", "alice"]).unwrap();
    for addr in [&leader, &follower] {
        let o = remote(&tb, ws, addr, &["node", "ls"]);
        assert!(
            !o.success && o.stderr.contains("user alice was removed"),
            "{}",
            o.stderr
        );
    }
}

/// Spawns `shoal -H tcp://ADDR ARGS` on workstation `ws` and waits for its first line.
fn follow(
    tb: &shoal_testbed::Testbed,
    ws: usize,
    addr: &str,
    args: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let host = format!("tcp://{addr}");
    let mut full = vec!["-H", host.as_str()];
    full.extend_from_slice(args);
    let mut child = tb
        .ws_command(ws, &full)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let first = rx.recv_timeout(std::time::Duration::from_secs(30));
    assert!(first.is_ok(), "{args:?} printed nothing\n{}", tb.all_logs());
    (child, rx)
}

#[test]
fn removing_a_user_ends_their_open_streams_with_the_reason() {
    let mut tb = ha_cluster(2, 1);
    import_busybox(&tb, 2);
    let task = app_on_worker(
        &tb,
        &["sh", "-c", "while true; do echo tick; sleep 0.2; done"],
    );
    let ws = tb.add_workstation().unwrap();
    let (leader, follower) = (tb.nodes[0].ip.clone(), tb.nodes[1].ip.clone());
    let token = token_in(
        &tb.cli_ok(0, &["user", "create", "alice", "--role", "admin"])
            .unwrap(),
    );
    assert!(
        tb.ws_cli(ws, &["login", "--token", &token, &leader])
            .success
    );

    // A log stream through the follower and an exec through the leader, both open.
    let (mut logs, _) = follow(&tb, ws, &follower, &["task", "logs", "-f", &task]);
    let (mut exec, _) = follow(
        &tb,
        ws,
        &leader,
        &["task", "exec", &task, "sh", "-c", "echo started; sleep 60"],
    );
    let t0 = std::time::Instant::now();
    tb.cli_ok(0, &["user", "rm", "alice"]).unwrap();
    for (what, child) in [("logs -f", &mut logs), ("exec", &mut exec)] {
        let ended = shoal_testbed::wait_for(std::time::Duration::from_secs(10), || {
            child.try_wait().ok().flatten()
        });
        let Some(status) = ended else {
            let _ = child.kill();
            panic!("{what} still runs 10 s after the user was removed");
        };
        assert!(!status.success(), "{what}");
        let mut err = String::new();
        use std::io::Read;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(err.contains("user alice was removed"), "{what}: {err}");
    }
    // Both within about a second (generous here: timing belongs to benchmarks).
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t0.elapsed()
    );
    let o = remote(&tb, ws, &leader, &["service", "ls"]);
    assert!(
        !o.success && o.stderr.contains("user alice was removed"),
        "{}",
        o.stderr
    );
}

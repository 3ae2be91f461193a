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

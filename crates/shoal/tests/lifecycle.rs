//! Issue #5 (first part): removal revokes a node's certificate at once; limited join tokens.

mod common;

use common::*;
use shoal_pki::NodeKey;
use shoal_proto::dispatcher::dispatcher_client::DispatcherClient;
use shoal_proto::dispatcher::HeartbeatRequest;
use std::sync::Arc;
use std::time::Duration;

fn pem_der(path: &std::path::Path) -> Vec<u8> {
    shoal_pki::pem_certs(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .remove(0)
}

/// A heartbeat made with node `i`'s certificate files (saved at `dir`), from its namespace.
fn heartbeat_as(
    tb: &shoal_testbed::Testbed,
    i: usize,
    dir: &std::path::Path,
) -> Result<(), tonic::Status> {
    let root = pem_der(&dir.join("ca.crt"));
    let cert = pem_der(&dir.join("node.crt"));
    let key = NodeKey::from_pem(&std::fs::read_to_string(dir.join("node.key")).unwrap())
        .unwrap()
        .pkcs8_der();
    let addr = tb.nodes[0].addr();
    tb.in_netns(i, move || {
        shoal_pki::install_crypto_provider();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(rustls::pki_types::CertificateDer::from(root))
                .unwrap();
            let chain = vec![cert];
            let cfg =
                Arc::new(shoal_pki::client_config(Arc::new(roots), Some((&chain, &key))).unwrap());
            let ch = shoal_agent::connect::channel(&addr, cfg)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            DispatcherClient::new(ch)
                .heartbeat(HeartbeatRequest::default())
                .await
                .map(|_| ())
        })
    })
    .unwrap()
}

#[test]
fn removed_node_is_refused_at_once_and_stops_its_containers() {
    let mut tb = cluster(3, &["--dispatcher-heartbeat", "1s"]);
    for i in 0..3 {
        import_busybox(&tb, i);
    }
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "3",
            "--stop-grace-period",
            "200ms",
            "busybox",
            "sleep",
            "600",
        ],
    )
    .unwrap();
    assert_eq!(tb.processes_named(1, "sleep"), 1);
    // Keep a copy of node2's identity: the node forgets it once removed.
    let saved = tb.dir().join("node2-certs");
    std::fs::create_dir_all(&saved).unwrap();
    for f in ["ca.crt", "node.crt", "node.key"] {
        std::fs::copy(tb.nodes[1].state_dir.join("certs").join(f), saved.join(f)).unwrap();
    }
    assert!(heartbeat_as(&tb, 1, &saved).is_ok());

    tb.cli_ok(0, &["node", "rm", "--force", "node2"]).unwrap();
    let err = heartbeat_as(&tb, 1, &saved).unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("node removed from cluster"),
        "{err:?}"
    );

    // The node learns it, stops its containers and says so.
    shoal_testbed::wait_for(Duration::from_secs(15), || {
        (tb.processes_named(1, "sleep") == 0).then_some(())
    })
    .unwrap_or_else(|| panic!("removed node's containers stopped\n{}", tb.log(1)));
    let i = info(&tb, 1);
    assert_eq!(i["State"], "inactive", "{i}");
    assert!(
        i["Error"]
            .as_str()
            .unwrap()
            .contains("node removed from cluster"),
        "{i}"
    );
    // Its replica runs elsewhere.
    shoal_testbed::wait_for(Duration::from_secs(15), || {
        let out = tb.cli_ok(0, &["service", "ls"]).ok()?;
        out.contains("3/3").then_some(())
    })
    .expect("replaced");

    // A manager restart does not forget the revocation.
    tb.restart(0).unwrap();
    wait_ready(&tb, 2);
    let err = heartbeat_as(&tb, 1, &saved).unwrap_err();
    assert!(
        err.message().contains("node removed from cluster"),
        "{err:?}"
    );
    // The node can join again with a token, as a new node.
    tb.join_worker(1, 0).unwrap();
    wait_ready(&tb, 3);
}

#[test]
fn limited_join_tokens_expire_and_run_out() {
    let tb = testbed(4);
    tb.init(0, &[]).unwrap();
    let standing = tb
        .cli_ok(0, &["join-token", "-q", "worker"])
        .unwrap()
        .trim()
        .to_string();
    let once = tb
        .cli_ok(0, &["join-token", "-q", "--max-uses", "1", "worker"])
        .unwrap()
        .trim()
        .to_string();
    let brief = tb
        .cli_ok(0, &["join-token", "-q", "--ttl", "2s", "worker"])
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(once, standing);
    assert_eq!(
        tb.cli_ok(0, &["join-token", "-q", "worker"])
            .unwrap()
            .trim(),
        standing,
        "standing token unchanged"
    );

    let list = tb.cli_ok(0, &["join-token", "--list"]).unwrap();
    assert!(
        list.contains("limited") && list.contains("standing"),
        "{list}"
    );
    for t in [&standing, &once, &brief] {
        assert!(
            !list.contains(t.rsplit('-').next().unwrap()),
            "no secret listed: {list}"
        );
    }

    let mgr = tb.nodes[0].addr();
    tb.cli_ok(1, &["join", "--token", &once, &mgr]).unwrap();
    let out = tb.cli(2, &["join", "--token", &once, &mgr]);
    assert!(
        !out.success && out.stderr.contains("--max-uses"),
        "{}",
        out.stderr
    );
    std::thread::sleep(Duration::from_millis(2500));
    let out = tb.cli(2, &["join", "--token", &brief, &mgr]);
    assert!(
        !out.success && out.stderr.contains("expired"),
        "{}",
        out.stderr
    );

    // Rotation cancels the role's limited tokens.
    let fresh = tb
        .cli_ok(0, &["join-token", "-q", "--max-uses", "5", "worker"])
        .unwrap()
        .trim()
        .to_string();
    tb.cli_ok(0, &["join-token", "--rotate", "worker"]).unwrap();
    let out = tb.cli(2, &["join", "--token", &fresh, &mgr]);
    assert!(
        !out.success && out.stderr.contains("invalid join token"),
        "{}",
        out.stderr
    );
    tb.join_worker(2, 0).unwrap();
    wait_ready(&tb, 3);
}

//! Mutual TLS on every RPC: a client with no certificate, a certificate from another CA,
//! or one naming another cluster is refused; a worker cannot call manager-only RPCs.

mod common;

use common::*;
use shoal_pki::{ClusterId, NodeId, NodeKey, Role, RootCa};
use shoal_proto::ca::ca_client::CaClient;
use shoal_proto::ca::GetRootCaCertificateRequest;
use shoal_proto::control::control_client::ControlClient;
use shoal_proto::control::ListNodesRequest;
use shoal_proto::dispatcher::dispatcher_client::DispatcherClient;
use shoal_proto::dispatcher::HeartbeatRequest;
use std::sync::Arc;
use std::time::Duration;

/// What each call returned: Ok, or the gRPC code and message.
#[derive(Debug)]
struct Outcome {
    list_nodes: Result<usize, (tonic::Code, String)>,
    heartbeat: Result<(), (tonic::Code, String)>,
    root_ca: Result<(), (tonic::Code, String)>,
}

use common::raw::pem_der;

/// Calls ListNodes and Heartbeat on `addr` presenting `identity` (chain, key PKCS#8).
fn call(addr: String, root_der: Vec<u8>, identity: Option<(Vec<u8>, Vec<u8>)>) -> Outcome {
    shoal_pki::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(root_der))
            .unwrap();
        let chain;
        let id = match &identity {
            Some((c, k)) => {
                chain = vec![c.clone()];
                Some((chain.as_slice(), k.as_slice()))
            }
            None => None,
        };
        let cfg = Arc::new(shoal_pki::client_config(Arc::new(roots), id).unwrap());
        let err = |s: tonic::Status| (s.code(), s.message().to_string());
        let ch = match shoal_agent::connect::channel(&addr, cfg).await {
            Ok(c) => c,
            Err(e) => {
                let m = shoal_agent::connect::error_chain(&e);
                let e = Err((tonic::Code::Unavailable, m));
                return Outcome {
                    list_nodes: e.clone().map(|_| 0),
                    heartbeat: e.clone(),
                    root_ca: e,
                };
            }
        };
        let list_nodes = tokio::time::timeout(
            Duration::from_secs(5),
            ControlClient::new(ch.clone()).list_nodes(ListNodesRequest {}),
        )
        .await
        .expect("no hang")
        .map(|r| r.into_inner().nodes.len())
        .map_err(err);
        let heartbeat = tokio::time::timeout(
            Duration::from_secs(5),
            DispatcherClient::new(ch.clone()).heartbeat(HeartbeatRequest::default()),
        )
        .await
        .expect("no hang")
        .map(|_| ())
        .map_err(err);
        let root_ca = CaClient::new(ch)
            .get_root_ca_certificate(GetRootCaCertificateRequest {})
            .await
            .map(|_| ())
            .map_err(err);
        Outcome {
            list_nodes,
            heartbeat,
            root_ca,
        }
    })
}

fn forged(ca: &RootCa, cluster: &ClusterId, role: Role) -> (Vec<u8>, Vec<u8>) {
    let key = NodeKey::generate().unwrap();
    let cert = ca
        .sign_node(
            &key.csr_der().unwrap(),
            &NodeId::generate(),
            role,
            cluster,
            Duration::from_secs(3600),
        )
        .unwrap();
    (cert.cert_der, key.pkcs8_der())
}

#[test]
fn every_rpc_needs_a_certificate_of_this_cluster_with_the_right_role() {
    let tb = cluster(2, &[]);
    let mgr = tb.nodes[0].addr();
    let root = pem_der(&tb.nodes[0].state_dir.join("certs/ca.crt"));
    let cluster_id = ClusterId::parse(info(&tb, 0)["ClusterID"].as_str().unwrap()).unwrap();
    let read_identity = |i: usize| {
        let d = &tb.nodes[i].state_dir;
        let cert = pem_der(&d.join("certs/node.crt"));
        let key =
            NodeKey::from_pem(&std::fs::read_to_string(d.join("certs/node.key")).unwrap()).unwrap();
        (cert, key.pkcs8_der())
    };
    let run = |id: Option<(Vec<u8>, Vec<u8>)>| {
        let (a, r) = (mgr.clone(), root.clone());
        tb.in_netns(1, move || call(a, r, id)).unwrap()
    };

    // The real manager certificate works: the harness itself is sound.
    let ok = run(Some(read_identity(0)));
    assert_eq!(ok.list_nodes, Ok(2), "{ok:?}");
    assert!(ok.heartbeat.is_ok(), "{ok:?}");

    // A worker certificate: the dispatcher yes, the control API no.
    let w = run(Some(read_identity(1)));
    assert!(w.heartbeat.is_ok(), "{w:?}");
    let (code, msg) = w.list_nodes.unwrap_err();
    assert_eq!(code, tonic::Code::PermissionDenied, "{msg}");
    assert!(msg.contains("not allowed for a worker"), "{msg}");

    // No certificate at all: only the join path's public call answers.
    let none = run(None);
    assert!(none.root_ca.is_ok(), "{none:?}");
    for r in [none.list_nodes.map(|_| ()), none.heartbeat] {
        let (code, msg) = r.unwrap_err();
        assert_eq!(code, tonic::Code::Unauthenticated, "{msg}");
        assert!(msg.contains("needs a node certificate"), "{msg}");
    }

    // Another CA with the same name, issuing this cluster's subject with a forged
    // manager OU, and a certificate of that CA for another cluster: refused at the
    // handshake. (Names that contradict each other under the real root are refused
    // too: see pki's `a_forged_or_inconsistent_role_is_refused_even_under_a_trusted_root`.)
    let other_ca = RootCa::generate(Duration::from_secs(86400)).unwrap();
    for id in [
        forged(&other_ca, &cluster_id, Role::Manager),
        forged(&other_ca, &ClusterId::generate(), Role::Manager),
    ] {
        let o = run(Some(id));
        assert!(o.list_nodes.is_err() && o.heartbeat.is_err(), "{o:?}");
        let (code, _) = o.list_nodes.unwrap_err();
        assert_ne!(
            code,
            tonic::Code::PermissionDenied,
            "refused before any handler ran"
        );
    }
    // The forged manager never shows up as a node.
    assert_eq!(nodes(&tb, 0).len(), 2);
    // The manager's log names the refused certificate's subject and issuer.
    let log = tb.log(0);
    assert!(
        log.contains("client certificate refused (subject") && log.contains("issuer"),
        "{log}"
    );
}

#[test]
fn a_worker_certificate_cannot_serve_as_a_manager() {
    // Clients verify the server name shoal-manager, which only manager certificates carry.
    let tb = cluster(2, &[]);
    let root = pem_der(&tb.nodes[0].state_dir.join("certs/ca.crt"));
    let d = tb.nodes[1].state_dir.clone();
    let worker_cert = pem_der(&d.join("certs/node.crt"));
    let worker_key =
        NodeKey::from_pem(&std::fs::read_to_string(d.join("certs/node.key")).unwrap()).unwrap();
    let cluster_id = ClusterId::parse(info(&tb, 0)["ClusterID"].as_str().unwrap()).unwrap();
    let trust = shoal_pki::ClusterTrust::new(cluster_id, std::slice::from_ref(&root)).unwrap();
    let cfg = shoal_pki::server_config(
        &trust,
        &[worker_cert, root.clone()],
        &worker_key.pkcs8_der(),
        None,
    )
    .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(root))
        .unwrap();
    let client = shoal_pki::client_config(Arc::new(roots), None).unwrap();
    shoal_pki::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        tokio::spawn(async move {
            if let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });
        let err = shoal_agent::connect::channel(&addr.to_string(), Arc::new(client))
            .await
            .unwrap_err();
        let msg = shoal_agent::connect::error_chain(&err);
        assert!(
            msg.contains("shoal-manager") || msg.contains("NotValidForName"),
            "{msg}"
        );
    });
}

#[test]
fn a_node_speaks_only_for_its_own_tasks() {
    use shoal_proto::control::TaskLogsRequest;
    use shoal_proto::dispatcher::{TaskStatusUpdate, UpdateTaskStatusRequest};
    use shoal_proto::objects::{TaskState, TaskStatus};
    let tb = cluster(3, &[]);
    import_busybox(&tb, 2);
    let out = tb
        .cli_ok(
            0,
            &["task", "run", "--node", "node3", "busybox", "sleep", "600"],
        )
        .unwrap();
    let task_id = out.lines().next().unwrap().trim().to_string();
    let root = pem_der(&tb.nodes[0].state_dir.join("certs/ca.crt"));
    let d = tb.nodes[1].state_dir.clone();
    let cert = pem_der(&d.join("certs/node.crt"));
    let key = NodeKey::from_pem(&std::fs::read_to_string(d.join("certs/node.key")).unwrap())
        .unwrap()
        .pkcs8_der();
    let addr = tb.nodes[0].addr();
    let id = task_id.clone();
    let (status, logs) = tb
        .in_netns(1, move || {
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
                let cfg = Arc::new(
                    shoal_pki::client_config(Arc::new(roots), Some((&chain, &key))).unwrap(),
                );
                let ch = shoal_agent::connect::channel(&addr, cfg).await.unwrap();
                let status = DispatcherClient::new(ch.clone())
                    .update_task_status(UpdateTaskStatusRequest {
                        updates: vec![TaskStatusUpdate {
                            task_id: id.clone(),
                            status: Some(TaskStatus {
                                state: TaskState::Failed as i32,
                                err: "forged".into(),
                                ..Default::default()
                            }),
                        }],
                    })
                    .await
                    .unwrap_err();
                let logs = ControlClient::new(ch)
                    .task_logs(TaskLogsRequest {
                        reference: id,
                        follow: false,
                        tail: 0,
                    })
                    .await
                    .unwrap_err();
                (status, logs)
            })
        })
        .unwrap();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("not assigned to this node"),
        "{status:?}"
    );
    assert_eq!(logs.code(), tonic::Code::PermissionDenied, "{logs:?}");
    // The forged report changed nothing.
    assert_eq!(task(&tb, &task_id)["Status"]["State"], "running");
}

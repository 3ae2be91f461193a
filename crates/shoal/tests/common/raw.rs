//! Raw gRPC calls to a manager with a node's real certificate and key, made the way a
//! hostile holder of those files would make them: from the node's network namespace,
//! without the shoal agent.

use shoal_pki::NodeKey;
use shoal_proto::ca::ca_client::CaClient;
use shoal_proto::ca::RenewNodeCertificateRequest;
use shoal_proto::dispatcher::dispatcher_client::DispatcherClient;
use shoal_proto::dispatcher::{
    HeartbeatRequest, PublishLogsMessage, SessionMessage, SessionRequest, TaskStatusUpdate,
    UpdateTaskStatusRequest,
};
use shoal_testbed::Testbed;
use std::future::Future;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The first certificate of a PEM file, as DER.
pub fn pem_der(path: &Path) -> Vec<u8> {
    shoal_pki::pem_certs(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .remove(0)
}

/// A node identity: the cluster root, a certificate and its PKCS#8 key.
#[derive(Clone)]
pub struct Identity {
    pub root: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl Identity {
    /// Node `i`'s identity as its files hold it now.
    pub fn of_node(tb: &Testbed, i: usize) -> Identity {
        Identity::from_dir(&tb.nodes[i].state_dir.join("certs"))
    }

    /// The identity in a directory of `ca.crt`, `node.crt` and `node.key` (a node's
    /// `certs/`, or a copy of it).
    pub fn from_dir(d: &Path) -> Identity {
        Identity {
            root: pem_der(&d.join("ca.crt")),
            cert: pem_der(&d.join("node.crt")),
            key: NodeKey::from_pem(&std::fs::read_to_string(d.join("node.key")).unwrap())
                .unwrap()
                .pkcs8_der(),
        }
    }

    /// The certificate's serial, as `node inspect` shows it.
    pub fn serial(&self) -> String {
        shoal_pki::CertSummary::parse(&self.cert).unwrap().serial
    }

    /// When the certificate expires.
    pub fn not_after(&self) -> std::time::SystemTime {
        use x509_parser::prelude::*;
        let (_, c) = X509Certificate::from_der(&self.cert).unwrap();
        std::time::UNIX_EPOCH + Duration::from_secs(c.validity().not_after.timestamp() as u64)
    }
}

/// Runs `f` on a thread of its own in node `i`'s network namespace, in the background.
fn in_background(tb: &Testbed, i: usize, f: impl Future<Output = ()> + Send + 'static) {
    let path = format!("/run/netns/{}", tb.nodes[i].netns);
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f);
    });
}

/// A channel to node `manager`'s listener presenting `id`, opened on the calling thread
/// (which must be in the node's namespace).
async fn channel(addr: &str, id: &Identity) -> Result<Channel, tonic::Status> {
    shoal_pki::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(id.root.clone()))
        .unwrap();
    let chain = vec![id.cert.clone()];
    let cfg = Arc::new(shoal_pki::client_config(Arc::new(roots), Some((&chain, &id.key))).unwrap());
    shoal_agent::connect::channel(addr, cfg)
        .await
        .map_err(|e| tonic::Status::unavailable(shoal_agent::connect::error_chain(&e)))
}

/// Runs `f` with a channel presenting `id` to node 0, from node `i`'s namespace.
pub fn with_channel<T, F, Fut>(tb: &Testbed, i: usize, id: &Identity, f: F) -> Call<T>
where
    T: Send + 'static,
    F: FnOnce(Channel) -> Fut + Send + 'static,
    Fut: Future<Output = Call<T>>,
{
    let addr = tb.nodes[0].addr();
    let id = id.clone();
    tb.in_netns(i, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            match channel(&addr, &id).await {
                Ok(ch) => tokio::time::timeout(Duration::from_secs(10), f(ch))
                    .await
                    .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("hung"))),
                Err(s) => Err(s),
            }
        })
    })
    .unwrap()
}

pub type Call<T> = Result<T, tonic::Status>;

pub fn heartbeat(tb: &Testbed, i: usize, id: &Identity) -> Call<()> {
    heartbeat_with(tb, i, id, HeartbeatRequest::default())
}

pub fn heartbeat_with(tb: &Testbed, i: usize, id: &Identity, req: HeartbeatRequest) -> Call<()> {
    with_channel(tb, i, id, |ch| async move {
        DispatcherClient::new(ch).heartbeat(req).await.map(|_| ())
    })
}

/// Opens a session and returns its first message.
pub fn session_first(tb: &Testbed, i: usize, id: &Identity) -> Call<SessionMessage> {
    with_channel(tb, i, id, |ch| async move {
        let mut s = DispatcherClient::new(ch)
            .session(SessionRequest::default())
            .await?
            .into_inner();
        s.message()
            .await?
            .ok_or_else(|| tonic::Status::cancelled("the session ended at once"))
    })
}

pub fn update_task_status(
    tb: &Testbed,
    i: usize,
    id: &Identity,
    updates: Vec<TaskStatusUpdate>,
) -> Call<()> {
    with_channel(tb, i, id, |ch| async move {
        DispatcherClient::new(ch)
            .update_task_status(UpdateTaskStatusRequest { updates })
            .await
            .map(|_| ())
    })
}

pub fn publish_logs(tb: &Testbed, i: usize, id: &Identity) -> Call<()> {
    with_channel(tb, i, id, |ch| async move {
        let msg = PublishLogsMessage {
            subscription_id: "none".into(),
            ..Default::default()
        };
        DispatcherClient::new(ch)
            .publish_logs(tokio_stream::iter(vec![msg]))
            .await
            .map(|_| ())
    })
}

/// Renews `id`'s certificate with a fresh key, as anyone holding the key could.
pub fn renew(tb: &Testbed, i: usize, id: &Identity) -> Call<Identity> {
    let root = id.root.clone();
    with_channel(tb, i, id, |ch| async move {
        let key = NodeKey::generate().unwrap();
        let resp = CaClient::new(ch)
            .renew_node_certificate(RenewNodeCertificateRequest {
                csr_der: key.csr_der().unwrap(),
            })
            .await?
            .into_inner();
        Ok(Identity {
            root,
            cert: resp.cert_der,
            key: key.pkcs8_der(),
        })
    })
}

/// Every message a session delivered until it ended, and how it ended (if it did).
pub type SessionEnd = (
    Vec<(Instant, SessionMessage)>,
    Option<(Instant, tonic::Status)>,
);

/// What an open session delivered, stamped with when it arrived.
pub type Delivery = (Instant, Result<SessionMessage, tonic::Status>);

/// A session held open in the background (with heartbeats every 500 ms, so the node
/// stays Ready), as a hostile holder of the node's files would hold it.
pub struct OpenSession {
    pub rx: mpsc::Receiver<Delivery>,
}

impl OpenSession {
    pub fn open(tb: &Testbed, i: usize, id: &Identity) -> OpenSession {
        let addr = tb.nodes[0].addr();
        let id = id.clone();
        let (tx, rx) = mpsc::channel();
        in_background(tb, i, async move {
            let ch = match channel(&addr, &id).await {
                Ok(c) => c,
                Err(s) => {
                    let _ = tx.send((Instant::now(), Err(s)));
                    return;
                }
            };
            let beats = ch.clone();
            tokio::spawn(async move {
                loop {
                    let _ = DispatcherClient::new(beats.clone())
                        .heartbeat(HeartbeatRequest::default())
                        .await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
            let mut s = match DispatcherClient::new(ch)
                .session(SessionRequest::default())
                .await
            {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    let _ = tx.send((Instant::now(), Err(e)));
                    return;
                }
            };
            loop {
                let m = s.message().await;
                let end = !matches!(m, Ok(Some(_)));
                let item = match m {
                    Ok(Some(m)) => Ok(m),
                    Ok(None) => Err(tonic::Status::cancelled("stream ended without a status")),
                    Err(e) => Err(e),
                };
                if tx.send((Instant::now(), item)).is_err() || end {
                    return;
                }
            }
        });
        OpenSession { rx }
    }

    /// The next delivery within `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<Delivery> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Reads until the stream ends (or `timeout`), returning every message and the end.
    pub fn until_end(&self, timeout: Duration) -> SessionEnd {
        let deadline = Instant::now() + timeout;
        let mut msgs = Vec::new();
        while let Some((at, d)) = self.next(deadline.saturating_duration_since(Instant::now())) {
            match d {
                Ok(m) => msgs.push((at, m)),
                Err(s) => return (msgs, Some((at, s))),
            }
        }
        (msgs, None)
    }

    /// Waits for a message assigning task `task_id`.
    pub fn wait_assignment(&self, task_id: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some((_, d)) = self.next(deadline.saturating_duration_since(Instant::now())) {
            match d {
                Ok(m)
                    if m.assignments
                        .iter()
                        .any(|a| a.task.as_ref().is_some_and(|t| t.id == task_id)) =>
                {
                    return true
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }
}

/// Asks node 0 for a certificate with a join token, from node `i`'s namespace, as a
/// joining node would (TLS pinned to `root`, no client certificate). Returns the node ID.
pub fn join(tb: &Testbed, i: usize, root: &[u8], token: &str, hostname: &str) -> Call<String> {
    use shoal_proto::ca::IssueNodeCertificateRequest;
    let addr = tb.nodes[0].addr();
    let (root, token, hostname) = (root.to_vec(), token.to_string(), hostname.to_string());
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
            let cfg = Arc::new(shoal_pki::client_config(Arc::new(roots), None).unwrap());
            let ch = shoal_agent::connect::channel(&addr, cfg)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let key = NodeKey::generate().unwrap();
            let resp = CaClient::new(ch)
                .issue_node_certificate(IssueNodeCertificateRequest {
                    csr_der: key.csr_der().unwrap(),
                    token,
                    hostname,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok(resp.node_id)
        })
    })
    .unwrap()
}

/// The total size of the files under `dir` (the store's files, say).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            total += if p.is_dir() {
                dir_size(&p)
            } else {
                p.metadata().map(|m| m.len()).unwrap_or(0)
            };
        }
    }
    total
}

/// A PublishLogs stream held open (sending nothing) in the background; `rx` gets when
/// and how it ended.
pub fn open_publish(tb: &Testbed, i: usize, id: &Identity) -> mpsc::Receiver<(Instant, Call<()>)> {
    let addr = tb.nodes[0].addr();
    let id = id.clone();
    let (tx, rx) = mpsc::channel();
    in_background(tb, i, async move {
        let r = match channel(&addr, &id).await {
            Ok(ch) => {
                let (_keep, msgs) = tokio::sync::mpsc::channel::<PublishLogsMessage>(1);
                DispatcherClient::new(ch)
                    .publish_logs(tokio_stream::wrappers::ReceiverStream::new(msgs))
                    .await
                    .map(|_| ())
            }
            Err(s) => Err(s),
        };
        let _ = tx.send((Instant::now(), r));
    });
    rx
}

/// A heartbeat stream held open in the background, beating every 200 ms: `rx` gets each
/// answer, and how the stream ended (an `Err`, then nothing more).
pub fn open_heartbeats(
    tb: &Testbed,
    i: usize,
    id: &Identity,
) -> mpsc::Receiver<(Instant, Call<shoal_proto::dispatcher::HeartbeatResponse>)> {
    let addr = tb.nodes[0].addr();
    let id = id.clone();
    let (tx, rx) = mpsc::channel();
    in_background(tb, i, async move {
        let ch = match channel(&addr, &id).await {
            Ok(ch) => ch,
            Err(s) => {
                let _ = tx.send((Instant::now(), Err(s)));
                return;
            }
        };
        let mut s =
            match shoal_agent::heartbeat::BeatStream::open(ch, HeartbeatRequest::default()).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send((Instant::now(), Err(e)));
                    return;
                }
            };
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if s.send(HeartbeatRequest::default()).await.is_err() {
                        // The stream ended: its answer says why.
                        continue;
                    }
                }
                a = s.answer() => {
                    let end = a.is_err();
                    if tx.send((Instant::now(), a)).is_err() || end {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Asks, as `id` (a node), for task `task_id`'s workload identity with a fresh key;
/// returns it as an identity (its key and certificate) and the answer.
pub fn issue_workload(
    tb: &Testbed,
    i: usize,
    id: &Identity,
    task_id: &str,
) -> Call<(Identity, shoal_proto::ca::IssueWorkloadCertificateResponse)> {
    let root = id.root.clone();
    let task_id = task_id.to_string();
    with_channel(tb, i, id, |ch| async move {
        let key = NodeKey::generate().unwrap();
        let resp = CaClient::new(ch)
            .issue_workload_certificate(shoal_proto::ca::IssueWorkloadCertificateRequest {
                task_id,
                csr_der: key.csr_der().unwrap(),
            })
            .await?
            .into_inner();
        let svid = Identity {
            root,
            cert: resp.cert_der.clone(),
            key: key.pkcs8_der(),
        };
        Ok((svid, resp))
    })
}

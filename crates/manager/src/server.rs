//! The manager's one listener: TCP, then TLS with the cluster's client verifier, then
//! gRPC. The verified client identity is computed once per connection and attached to
//! every request on it as [`PeerInfo`].

use crate::auth::PeerInfo;
use crate::bootstrap::load_cluster;
use crate::ca_server::CaServer;
use crate::controlapi::{ControlApi, ControlService};
use crate::dispatcher::Dispatcher;
use shoal_pki::{ClusterId, ClusterTrust, RootCa};
use shoal_proto::ca::ca_server::CaServer as CaRpcServer;
use shoal_proto::control::control_server::ControlServer;
use shoal_proto::dispatcher::dispatcher_server::DispatcherServer;
use shoal_store::Store;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

pub struct ManagerConfig {
    pub store: Store,
    pub listen_addr: SocketAddr,
    pub local_node_id: String,
    pub cluster_id: ClusterId,
    /// This node's certificate chain (node certificate, then root) and PKCS#8 key.
    pub cert_chain: Vec<Vec<u8>>,
    pub key_pkcs8: Vec<u8>,
}

/// A running manager. Dropping it does not stop it: call [`Manager::shutdown`].
pub struct Manager {
    cancel: CancellationToken,
    acceptor: Arc<std::sync::RwLock<TlsAcceptor>>,
    trust: ClusterTrust,
    control: ControlApi,
    tasks: tokio::task::JoinSet<()>,
    pub local_addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("cannot listen on {addr}: {source}; is another shoal daemon running, or pass another --listen-addr")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("the cluster store: {0}")]
    Store(#[from] shoal_store::StoreError),
    #[error("the cluster's root CA in the store is unusable: {0}")]
    Pki(#[from] shoal_pki::PkiError),
}

/// A TLS connection with what we verified about its client.
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn accept_loop(
    listener: TcpListener,
    acceptor: Arc<std::sync::RwLock<TlsAcceptor>>,
    trust: ClusterTrust,
    revoked: Arc<crate::revocation::RevocationSet>,
    tx: tokio::sync::mpsc::Sender<Result<TlsConn, io::Error>>,
    cancel: CancellationToken,
) {
    loop {
        let (tcp, remote) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let Ok(acceptor) = acceptor.read().map(|a| a.clone()) else {
            continue;
        };
        let trust = trust.clone();
        let revoked = revoked.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::info!(%remote, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            // The handshake already verified the chain and cluster; this turns the
            // certificate into the identity handlers use.
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.split_first())
                .and_then(|(ee, rest)| trust.verify(ee, rest, SystemTime::now()).ok());
            let conn = TlsConn {
                inner: tls,
                info: PeerInfo {
                    remote_addr: Some(remote),
                    identity,
                    revoked: Some(revoked),
                },
            };
            let _ = tx.send(Ok(conn)).await;
        });
    }
}

impl Manager {
    /// Starts the listener, the services and the leader loops.
    pub async fn start(cfg: ManagerConfig) -> Result<Manager, ManagerError> {
        let cluster = load_cluster(&cfg.store)?.value;
        let root_obj = cluster.root_ca.unwrap_or_default();
        let root = Arc::new(RootCa::from_pem(&root_obj.cert_pem, &root_obj.key_pem)?);
        let trust = ClusterTrust::new(cfg.cluster_id.clone(), &[root.cert_der().to_vec()])?;
        let server_cfg = shoal_pki::server_config(&trust, &cfg.cert_chain, &cfg.key_pkcs8, None)?;
        let listener =
            TcpListener::bind(cfg.listen_addr)
                .await
                .map_err(|source| ManagerError::Listen {
                    addr: cfg.listen_addr,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ManagerError::Listen {
                addr: cfg.listen_addr,
                source,
            })?;
        let cancel = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let revoked = Arc::new(crate::revocation::RevocationSet::default());
        tasks.spawn(revoked.clone().follow(cfg.store.clone(), cancel.clone()));
        let acceptor = Arc::new(std::sync::RwLock::new(TlsAcceptor::from(Arc::new(
            server_cfg,
        ))));
        let trust_for_swap = trust.clone();
        tasks.spawn(accept_loop(
            listener,
            acceptor.clone(),
            trust,
            revoked,
            tx,
            cancel.clone(),
        ));

        let dispatcher = Dispatcher::new(cfg.store.clone(), cancel.clone());
        let control = ControlApi::new(
            cfg.store.clone(),
            cfg.local_node_id.clone(),
            dispatcher.logs.clone(),
        );
        tasks.spawn(dispatcher.clone().run_liveness(cancel.clone()));
        tasks.spawn(crate::orchestrator::run(cfg.store.clone(), cancel.clone()));
        let ca = CaServer::new(cfg.store.clone(), root, cfg.cluster_id.clone());
        let router = tonic::transport::Server::builder()
            .add_service(CaRpcServer::new(ca))
            .add_service(DispatcherServer::new(dispatcher))
            .add_service(ControlServer::new(ControlService(control.clone())));
        let stop = cancel.clone();
        tasks.spawn(async move {
            let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "manager gRPC server stopped");
            }
        });
        tracing::info!(addr = %local_addr, "manager listening");
        Ok(Manager {
            cancel,
            acceptor,
            trust: trust_for_swap,
            control,
            tasks,
            local_addr,
        })
    }

    /// The control API, for the local socket.
    pub fn control(&self) -> &ControlApi {
        &self.control
    }

    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A handle that swaps the certificate a manager's listener serves (after a renewal).
#[derive(Clone)]
pub struct IdentityHandle {
    acceptor: Arc<std::sync::RwLock<TlsAcceptor>>,
    trust: ClusterTrust,
}

impl IdentityHandle {
    pub fn set(&self, cert_chain: &[Vec<u8>], key_pkcs8: &[u8]) -> Result<(), ManagerError> {
        let cfg = shoal_pki::server_config(&self.trust, cert_chain, key_pkcs8, None)?;
        if let Ok(mut a) = self.acceptor.write() {
            *a = TlsAcceptor::from(Arc::new(cfg));
        }
        Ok(())
    }
}

impl Manager {
    pub fn identity_handle(&self) -> IdentityHandle {
        IdentityHandle {
            acceptor: self.acceptor.clone(),
            trust: self.trust.clone(),
        }
    }
}

//! The manager: its listener's services (CA, dispatcher, control API, Raft), its cluster
//! view, and the loops it runs while it leads. [`Manager::start`] wires them; the listener
//! itself is [`crate::listener`].

use crate::bootstrap::load_cluster;
use crate::ca_server::CaServer;
use crate::controlapi::{ControlApi, ControlService};
use crate::dispatcher::Dispatcher;
use crate::listener::{accept_loop, IdentityHandle, RAFT_MAX_MESSAGE};
use crate::routing::ControlRouter;
use crate::security::access::AccessList;
use crate::security::auth::Gate;
use crate::security::rootca::{CaHandle, CaState};
use crate::view::ClusterView;
use shoal_pki::ClusterId;
use shoal_proto::ca::ca_server::CaServer as CaRpcServer;
use shoal_proto::control::control_server::ControlServer;
use shoal_proto::dispatcher::dispatcher_server::DispatcherServer;
use shoal_store::Store;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub struct ManagerConfig {
    pub store: Store,
    pub listen_addr: SocketAddr,
    pub local_node_id: String,
    pub cluster_id: ClusterId,
    /// This node's certificate and PKCS#8 key.
    pub cert_der: Vec<u8>,
    pub key_pkcs8: Vec<u8>,
    /// How a follower reaches the leader to forward its local administrator's writes.
    pub dial: crate::routing::Dial,
    /// Where the audit log is kept (`<state dir>/audit`).
    pub audit_dir: std::path::PathBuf,
}

/// A running manager. Dropping it does not stop it: call [`Manager::shutdown`].
pub struct Manager {
    view: ClusterView,
    cancel: CancellationToken,
    identity: IdentityHandle,
    router: ControlRouter,
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
    #[error("cannot open the audit log in {dir}: {source} (a manager does not serve calls it cannot record)")]
    Audit {
        dir: std::path::PathBuf,
        source: io::Error,
    },
}

/// The listener of a manager that is joining the Raft group: until its store holds the
/// cluster, it serves only Raft, to managers of this cluster. Stop it (cancel and await)
/// before [`Manager::start`] takes the address.
pub async fn serve_joining(
    listen_addr: SocketAddr,
    trust: shoal_pki::ClusterTrust,
    server_chain: Vec<Vec<u8>>,
    key_pkcs8: Vec<u8>,
    store: Store,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, ManagerError> {
    use crate::raft_service::{JoiningAdmission, JoiningRaftService};
    let cfg = shoal_pki::server_config(&trust, &server_chain, &key_pkcs8, None)?;
    let acceptor = Arc::new(std::sync::RwLock::new(TlsAcceptor::from(Arc::new(cfg))));
    let listener = TcpListener::bind(listen_addr)
        .await
        .map_err(|source| ManagerError::Listen {
            addr: listen_addr,
            source,
        })?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let accept = tokio::spawn(accept_loop(
        listener,
        acceptor,
        JoiningAdmission { trust },
        tx,
        cancel.clone(),
    ));
    Ok(tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
        let r = tonic::transport::Server::builder()
            .add_service(
                shoal_proto::raft::raft_server::RaftServer::new(JoiningRaftService { store })
                    .max_decoding_message_size(RAFT_MAX_MESSAGE)
                    .max_encoding_message_size(RAFT_MAX_MESSAGE),
            )
            .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned())
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "the joining manager's raft listener stopped");
        }
        let _ = accept.await;
    }))
}

impl Manager {
    /// Starts the listener, the services and the leader loops.
    pub async fn start(cfg: ManagerConfig) -> Result<Manager, ManagerError> {
        let cluster = load_cluster(&cfg.store)?.value;
        let ca = CaHandle::new(CaState::from_cluster(&cluster, &cfg.cluster_id)?);
        let identity = IdentityHandle::new(ca.clone(), &cfg.cert_der, &cfg.key_pkcs8)?;
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
        // The one store watch of this manager: everything below reads the view.
        let (view, watch) = ClusterView::start(&cfg.store)?;
        let (access_updates, ca_updates) = (view.subscribe(), view.subscribe());
        let access = AccessList::start(&view.current());
        tasks.spawn(view.clone().run(cfg.store.clone(), watch, cancel.clone()));
        tasks.spawn(access.clone().follow(access_updates, cancel.clone()));
        tasks.spawn(ca.clone().follow(view.clone(), ca_updates, cancel.clone()));
        tasks.spawn(identity.clone().follow(cancel.clone()));
        let gate = Gate {
            access: access.clone(),
            ca: ca.clone(),
        };
        tasks.spawn(accept_loop(
            listener,
            identity.acceptor(),
            gate,
            tx,
            cancel.clone(),
        ));

        let (terms_tx, terms) = tokio::sync::watch::channel(None);
        let dispatcher = Dispatcher::new(cfg.store.clone(), view.clone(), ca.clone(), terms);
        let audit =
            crate::audit::AuditLog::open(&cfg.audit_dir).map_err(|source| ManagerError::Audit {
                dir: cfg.audit_dir.clone(),
                source,
            })?;
        tasks.spawn(audit.clone().run_flusher(cancel.clone()));
        let control = ControlApi::new(
            cfg.store.clone(),
            view.clone(),
            dispatcher.logs.clone(),
            audit.clone(),
        );
        let loops = leader_loops(&cfg.store, &view, &dispatcher);
        let leadership = crate::leader::follow_store(&cfg.store, cancel.clone());
        tasks.spawn(crate::leader::supervise(
            leadership,
            loops,
            terms_tx,
            cancel.clone(),
        ));
        let control_server = ControlServer::new(ControlService(control));
        let router = ControlRouter::new(
            cfg.store.clone(),
            view.clone(),
            control_server.clone(),
            identity.clone(),
            cfg.dial,
            audit,
        );
        let grpc = tonic::transport::Server::builder()
            .add_service(CaRpcServer::new(CaServer::new(
                cfg.store.clone(),
                view.clone(),
                ca,
                access.clone(),
            )))
            .add_service(DispatcherServer::new(dispatcher))
            .add_service(
                shoal_proto::raft::raft_server::RaftServer::new(crate::raft_service::RaftService {
                    store: cfg.store.clone(),
                })
                .max_decoding_message_size(RAFT_MAX_MESSAGE)
                .max_encoding_message_size(RAFT_MAX_MESSAGE),
            )
            .add_service(WithAppliedIndex {
                inner: control_server,
                store: cfg.store.clone(),
                router: router.clone(),
            });
        let stop = cancel.clone();
        tasks.spawn(async move {
            let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
            if let Err(e) = grpc
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "manager gRPC server stopped");
            }
        });
        tracing::info!(addr = %local_addr, "manager listening");
        Ok(Manager {
            view,
            cancel,
            identity,
            router,
            tasks,
            local_addr,
        })
    }

    /// This manager's view of the cluster.
    pub fn view(&self) -> &ClusterView {
        &self.view
    }

    /// Serves the local administrator's control calls (the unix socket routes to it).
    pub fn control_router(&self) -> ControlRouter {
        self.router.clone()
    }

    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Every loop that writes to the store: run by [`crate::leader::supervise`] only while
/// this manager leads.
fn leader_loops(
    store: &Store,
    view: &ClusterView,
    dispatcher: &Dispatcher,
) -> Vec<crate::leader::LeaderLoop> {
    use crate::leader::LeaderLoop;
    let (s1, s2, s3) = (store.clone(), store.clone(), store.clone());
    let v1 = view.clone();
    let (d1, d2, d3) = (dispatcher.clone(), dispatcher.clone(), dispatcher.clone());
    let logs = dispatcher.logs.clone();
    vec![
        LeaderLoop::new("liveness", move |c| d1.clone().run_liveness(c)),
        LeaderLoop::new("peers", move |c| d3.clone().run_peers(c)),
        LeaderLoop::new("status writer", move |c| d2.clone().run_status_writer(c)),
        LeaderLoop::new("orchestrator", move |c| {
            crate::orchestrator::run(s1.clone(), v1.clone(), c)
        }),
        LeaderLoop::new("root rotation", move |c| {
            crate::security::rootca::run(s2.clone(), c)
        }),
        LeaderLoop::new("revocation and token pruning", move |c| {
            crate::security::revocation::run_pruner(s3.clone(), c)
        }),
        // Log streams relayed through this leader end with its term (the nodes'
        // registrations end with their sessions).
        LeaderLoop::new("log relay", move |c| {
            let logs = logs.clone();
            async move {
                c.cancelled().await;
                logs.end_all(crate::dispatcher::session::TERM_ENDED);
            }
        }),
    ]
}

impl Manager {
    pub fn identity_handle(&self) -> IdentityHandle {
        self.identity.clone()
    }
}

/// The control service over mTLS, adding [`crate::routing::APPLIED_HEADER`] to every
/// answer. A user's call goes through the router (a follower forwards their writes);
/// a manager's (a forwarded call) is served here.
#[derive(Clone)]
struct WithAppliedIndex {
    inner: ControlServer<ControlService>,
    store: Store,
    router: ControlRouter,
}

impl tonic::server::NamedService for WithAppliedIndex {
    const NAME: &'static str = <ControlServer<ControlService> as tonic::server::NamedService>::NAME;
}

impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>>
    for WithAppliedIndex
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        <ControlServer<ControlService> as tonic::codegen::Service<
            tonic::codegen::http::Request<tonic::body::Body>,
        >>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        let mut inner = self.inner.clone();
        let store = self.store.clone();
        let user = req
            .extensions()
            .get::<crate::security::auth::PeerInfo>()
            .filter(|p| p.identity.is_none())
            .and_then(|p| p.user.as_ref())
            .map(|u| (u.name().to_string(), u.serial().to_string()));
        let router = self.router.clone();
        Box::pin(async move {
            let mut resp = match user {
                Some((name, serial)) => router.serve_user(req, &name, &serial).await,
                None => tonic::codegen::Service::call(&mut inner, req).await?,
            };
            if let Ok(v) =
                tonic::codegen::http::HeaderValue::from_str(&store.applied_index().to_string())
            {
                resp.headers_mut().insert(crate::routing::APPLIED_HEADER, v);
            }
            Ok(resp)
        })
    }
}

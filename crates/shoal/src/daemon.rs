//! `shoal daemon`: the node process. It serves the local admin API on a unix socket,
//! and once the node is in a cluster runs the agent (every node) and the manager
//! (manager nodes), restarting both from the state directory after a restart.

use crate::netaddr::{detect_ip, with_port, DEFAULT_PORT};
use crate::statedir::{Loaded, NodeState, StateDir};
use crate::tls::client_tls;
use anyhow::{bail, Context, Result};
use shoal_agent::assignments::run_assignments;
use shoal_agent::connect::{channel, error_chain, lazy_channel};
use shoal_agent::controller::Deps;
use shoal_agent::describe::describe;
use shoal_agent::heartbeat::{heartbeat_once, Session};
use shoal_agent::image::{CredentialStore, ImageStore};
use shoal_agent::runtime::{runc::Runc, Runtime};
use shoal_agent::worker::Worker;
use shoal_manager::bootstrap::{DEFAULT_CERT_EXPIRY, DEFAULT_HEARTBEAT};
use shoal_manager::{init_cluster, InitParams, Manager, ManagerConfig};
use shoal_pki::{BootstrapPin, ClusterId, ClusterTrust, JoinToken, NodeId, NodeKey, Role};
use shoal_proto::ca::ca_client::CaClient;
use shoal_proto::ca::{GetRootCaCertificateRequest, IssueNodeCertificateRequest};
use shoal_proto::local::{InfoResponse, InitRequest, InitResponse, JoinRequest, JoinResponse};
use shoal_store::{Kek, Store, StoreConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// How long each join call may take before the join gives up.
const JOIN_CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub struct DaemonOpts {
    pub state_dir: PathBuf,
    pub listen_addr: SocketAddr,
    pub advertise_addr: Option<String>,
    pub socket: PathBuf,
    /// Engine labels this node reports about itself (untrusted by managers).
    pub labels: HashMap<String, String>,
    /// The cgroup every container of this node is placed under.
    pub cgroup_parent: String,
}

/// A node that is part of a cluster.
struct Active {
    state: NodeState,
    worker: Worker,
    /// The node's key, certificate and roots (renewal and root rotation replace them).
    creds: Arc<crate::renewal::Creds>,
    renewal: Arc<std::sync::Mutex<crate::renewal::RenewalInfo>>,
    manager: Option<Manager>,
    store: Option<Store>,
    agent_cancel: CancellationToken,
}

pub struct Daemon {
    pub opts: DaemonOpts,
    dir: StateDir,
    pub images: ImageStore,
    pub creds: Arc<CredentialStore>,
    runtime: Arc<dyn Runtime>,
    network: Arc<shoal_agent::network::Networks>,
    /// Secrets and configs the node's tasks use: in memory only.
    secrets: Arc<shoal_agent::secrets::Secrets>,
    /// What this node is to a cluster: one value behind one lock, never held across a
    /// network call (see [`Membership`]).
    membership: Arc<Mutex<Membership>>,
    /// Notified when a manager says this node was removed.
    pub removed: Arc<tokio::sync::Notify>,
    /// Notified when the managers' certificates stop verifying against our roots.
    pub untrusted: Arc<tokio::sync::Notify>,
    /// Notified when a renewal changed this node's role.
    pub role_changed: Arc<tokio::sync::Notify>,
    /// The Raft transport of this node's store, when it is a manager.
    raft: std::sync::Mutex<Option<Arc<crate::raft_transport::GrpcTransport>>>,
}

/// Refuses an init or a join unless the node is free of any cluster.
fn refuse_unless_free(m: &Membership) -> Result<()> {
    match m {
        Membership::None { .. } => Ok(()),
        Membership::Damaged(why) => bail!(user(
            tonic::Code::FailedPrecondition,
            format!("this node's cluster state could not be loaded, so it is kept untouched: {why}. Repair it and restart the daemon, or discard it with 'shoal leave --force'")
        )),
        Membership::Locked => bail!(user(tonic::Code::FailedPrecondition, LOCKED_WHY)),
        Membership::Stale(s) => bail!(user(tonic::Code::FailedPrecondition, s.advice())),
        Membership::Busy(doing) => bail!(user(
            tonic::Code::FailedPrecondition,
            format!("this node is {doing}: wait until that is done")
        )),
        Membership::Active(_) => bail!(user(
            tonic::Code::FailedPrecondition,
            "this node is already part of a cluster: leave it first with 'shoal leave'"
        )),
    }
}

/// What a free node goes back to if an init or join fails: free, with its note.
fn free_again(m: &mut Membership) -> Membership {
    match m {
        Membership::None { note } => Membership::None { note: note.take() },
        _ => Membership::None { note: None },
    }
}

/// What this node is to a cluster. Work that waits on the network or on containers
/// (init, join, leave, a removal, re-forming) marks it `Busy`, lets go of the lock, and
/// comes back to set the outcome: `info` and `node ls` never wait behind it.
enum Membership {
    /// Not part of a cluster; `note` says what happened, if anything did (a removal).
    None {
        note: Option<String>,
    },
    /// An init, join, leave or other change of membership under way.
    Busy(&'static str),
    Active(Box<Active>),
    /// An identity kept only to rejoin with: its certificate expired while the node was
    /// off, or its root was rotated away.
    Stale(Stale),
    /// The membership in the state directory could not be resumed. Init and join refuse
    /// to run so nothing stored there is overwritten.
    Damaged(String),
    /// A manager that restarted with autolock on and waits for `shoal unlock`.
    Locked,
}

/// A membership marked busy. Dropped before [`Busy::finish`] (its caller went away half
/// way), it puts back the fallback it was given.
struct Busy {
    membership: Arc<Mutex<Membership>>,
    fallback: Option<Membership>,
}

impl Busy {
    /// Marks the membership busy with `what`, if `take` accepts what it is now. `take`
    /// returns what the work needs from it and what to put back if the work fails.
    async fn begin<T>(
        membership: &Arc<Mutex<Membership>>,
        what: &'static str,
        take: impl FnOnce(&mut Membership) -> Result<(T, Membership)>,
    ) -> Result<(Busy, T)> {
        let mut m = membership.lock().await;
        if let Membership::Busy(doing) = &*m {
            bail!(user(
                tonic::Code::FailedPrecondition,
                format!("this node is {doing} already: wait until that is done")
            ));
        }
        let (taken, fallback) = take(&mut m)?;
        *m = Membership::Busy(what);
        Ok((
            Busy {
                membership: membership.clone(),
                fallback: Some(fallback),
            },
            taken,
        ))
    }

    /// Sets the outcome.
    async fn finish(mut self, outcome: Membership) {
        self.fallback = None;
        *self.membership.lock().await = outcome;
    }

    /// Sets the outcome of an init or a join: the membership it made, or the fallback.
    async fn settle<R>(self, done: Result<(R, Active)>) -> Result<R> {
        match done {
            Ok((r, active)) => {
                self.finish(Membership::Active(Box::new(active))).await;
                Ok(r)
            }
            Err(e) => {
                self.fail().await;
                Err(e)
            }
        }
    }

    /// The work failed: puts back the fallback.
    async fn fail(mut self) {
        if let Some(f) = self.fallback.take() {
            *self.membership.lock().await = f;
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let Some(f) = self.fallback.take() else {
            return;
        };
        // Without a runtime (the daemon is exiting) there is no one left to tell.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let m = self.membership.clone();
            rt.spawn(async move {
                let mut g = m.lock().await;
                if matches!(*g, Membership::Busy(_)) {
                    *g = f;
                }
            });
        }
    }
}

/// An identity kept only to rejoin with.
#[derive(Clone)]
struct Stale {
    state: NodeState,
    key_pem: String,
    cert_der: Vec<u8>,
    /// What happened, for `info` and `join`.
    why: String,
}

impl Stale {
    fn advice(&self) -> String {
        format!(
            "{}: rejoin with 'shoal join --token <worker token> --rejoin {}' to keep node ID {} (or give it up with 'shoal leave' and join as a new node)",
            self.why,
            self.state
                .managers
                .first()
                .map(String::as_str)
                .unwrap_or("<manager>"),
            self.state.node_id
        )
    }
}

const RESTORED_WHY: &str = "node removed from cluster: the cluster was restored from a backup without this manager; join it again";
const REFORMED_WHY: &str = "node removed from cluster: the cluster was re-formed (init --force-new-cluster) without this manager; join it again";

const LOCKED_WHY: &str = "this manager is locked: autolock is on, so after a restart it needs the cluster's unlock key. Run 'shoal unlock' and enter the key (an unlocked manager prints it with 'shoal unlock-key')";

const EXPIRED_WHY: &str = "this node's certificate expired while it was off";
const UNTRUSTED_WHY: &str = "the managers' certificates no longer chain to a root this node trusts (the cluster's root CA was most likely rotated while this node was away)";

/// An error the local API returns as-is to the CLI.
#[derive(Debug)]
pub struct UserError(pub tonic::Code, pub String);

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}
impl std::error::Error for UserError {}

/// `--data-path-addr`: an IP address of this node (empty: its advertised address).
fn check_data_path_addr(addr: &str) -> Result<String> {
    let addr = addr.trim();
    if addr.is_empty() || addr.parse::<std::net::IpAddr>().is_ok() {
        return Ok(addr.to_string());
    }
    Err(user(
        tonic::Code::InvalidArgument,
        format!("--data-path-addr {addr:?} is not an IP address: give one of this node's addresses, e.g. 10.0.0.5"),
    ))
}

fn user(code: tonic::Code, msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UserError(code, msg.into()))
}

impl Daemon {
    pub fn new(opts: DaemonOpts) -> Result<Self> {
        let dir = StateDir::new(&opts.state_dir);
        let images = ImageStore::open(&opts.state_dir.join("images"))
            .context("cannot open the image store")?;
        let creds = Arc::new(CredentialStore::open(
            &opts.state_dir.join("registry-auth.json"),
        ));
        let runtime: Arc<dyn Runtime> = Arc::new(
            Runc::new(&opts.state_dir.join("containers"), &opts.cgroup_parent)
                .context("cannot set up the container runtime")?,
        );
        let network = Arc::new(shoal_agent::network::Networks::new(&opts.state_dir));
        let secrets = Arc::new(shoal_agent::secrets::Secrets::new(&opts.state_dir));
        Ok(Daemon {
            opts,
            dir,
            images,
            creds,
            runtime,
            network,
            secrets,
            membership: Arc::new(Mutex::new(Membership::None { note: None })),
            removed: Arc::new(tokio::sync::Notify::new()),
            untrusted: Arc::new(tokio::sync::Notify::new()),
            role_changed: Arc::new(tokio::sync::Notify::new()),
            raft: std::sync::Mutex::new(None),
        })
    }

    /// What this node says of itself: its host, and the public half of its WireGuard
    /// key.
    fn description(&self) -> shoal_proto::objects::NodeDescription {
        let mut d = describe(&self.opts.labels);
        match self.network.wg_key() {
            Ok(k) => d.wg_public_key = k.public_b64(),
            Err(e) => tracing::warn!(error = %e, "no WireGuard key for this node"),
        }
        d.data_plane = Some(self.network.data_plane.status());
        d
    }

    /// Records that the state directory could not be resumed.
    pub async fn set_damaged(&self, why: String) {
        *self.membership.lock().await = Membership::Damaged(why);
    }

    /// [`Daemon::resume`], recording why if it fails.
    async fn resume_or_damaged(&self) {
        {
            let mut m = self.membership.lock().await;
            if matches!(*m, Membership::Busy(_)) {
                *m = Membership::None { note: None };
            }
        }
        if let Err(e) = self.resume().await {
            tracing::error!("cannot resume this node's cluster membership: {e:#}");
            self.set_damaged(format!("{e:#}")).await;
        }
    }

    /// Resumes the cluster membership kept in the state directory, if any.
    pub async fn resume(&self) -> Result<()> {
        // Held throughout (opening the local store and starting; nothing here waits on
        // the network), so that what `start` sets off (a promotion to finish) waits until
        // the membership is in place.
        let mut guard = self.membership.lock().await;
        if !self.dir.sealed()
            && shoal_store::seal::wrapping(&self.dir.raft_dir())? == shoal_store::Wrapping::Unlock
        {
            *guard = Membership::Locked;
            tracing::warn!("{LOCKED_WHY}");
            return Ok(());
        }
        let Some(loaded) = self.dir.load()? else {
            tracing::info!(
                "this node is not part of a cluster yet: run 'shoal init' or 'shoal join'"
            );
            return Ok(());
        };
        if let Ok(c) = shoal_pki::CertSummary::parse(&loaded.cert_der) {
            if c.not_after <= SystemTime::now() && loaded.state.role != "manager" {
                let at = c
                    .not_after
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                tracing::warn!(
                    node_id = %loaded.state.node_id,
                    "this node's certificate expired (at unix {at}) while it was off: rejoin with 'shoal join --token <worker token> --rejoin {}' to keep the node ID",
                    loaded.state.managers.first().map(String::as_str).unwrap_or("<manager>")
                );
                *guard = Membership::Stale(Stale {
                    state: loaded.state,
                    key_pem: loaded.key_pem,
                    cert_der: loaded.cert_der,
                    why: EXPIRED_WHY.into(),
                });
                return Ok(());
            }
        }
        let store = if loaded.state.role == "manager" {
            let tls = client_tls(&loaded.roots, &loaded.cert_der, &loaded.key_pem)?;
            Some(
                self.open_store(
                    self.dir.raft_dir(),
                    loaded.state.raft_id(),
                    &loaded.state.advertise_addr,
                    Some(tls),
                    StoreConfig {
                        kek: self.dir.store_kek(),
                        ..Default::default()
                    },
                )
                .await?,
            )
        } else {
            None
        };
        let active = match self.start(loaded, store.clone()).await {
            Ok(a) => a,
            Err(e) => {
                if let Some(s) = store {
                    let _ = s.shutdown().await;
                }
                return Err(e);
            }
        };
        tracing::info!(node_id = %active.state.node_id, role = %active.state.role, "resumed cluster membership");
        *guard = Membership::Active(Box::new(active));
        Ok(())
    }

    /// Opens this manager's store, with a Raft transport presenting `tls` (none yet
    /// during `init`, which makes the certificate).
    async fn open_store(
        &self,
        dir: std::path::PathBuf,
        raft_id: u64,
        advertise: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        config: StoreConfig,
    ) -> Result<Store> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        // The store holds the CA key: private from the start.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let transport = crate::raft_transport::GrpcTransport::new(tls);
        let store = Store::open_with(&dir, raft_id, advertise, transport.clone(), config)
            .await
            .with_context(|| format!("cannot open the cluster store in {}", dir.display()))?;
        transport.set_store(&store);
        if let Ok(mut r) = self.raft.lock() {
            *r = Some(transport);
        }
        let db = dir.join("store.redb");
        if db.exists() {
            std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot make {} private", db.display()))?;
        }
        Ok(store)
    }

    /// Starts the manager (if a manager) and the agent for a joined node.
    async fn start(&self, loaded: Loaded, store: Option<Store>) -> Result<Active> {
        let Loaded {
            state,
            key_pem,
            cert_der,
            roots,
        } = loaded;
        let mut manager = None;
        if let Some(store) = &store {
            // A lone manager leads at once; with several, this one may follow, and the
            // others may still be starting: it serves as soon as its own store is open.
            if store.members().len() <= 1 {
                store
                    .wait_leader(Duration::from_secs(10))
                    .await
                    .context("the cluster store did not elect a leader")?;
            }
            manager = Some(
                self.start_manager(store, &state, &key_pem, &cert_der)
                    .await?,
            );
        }
        let target = state.managers.first().cloned().unwrap_or_default();
        let raft = if manager.is_some() {
            self.raft.lock().ok().and_then(|r| r.clone())
        } else {
            None
        };
        let creds = (|| -> Result<crate::renewal::Creds> {
            let tls = client_tls(&roots, &cert_der, &key_pem)?;
            if let Some(r) = &raft {
                r.set_tls(tls.clone());
            }
            if target.is_empty() {
                bail!("no manager address is known for this node");
            }
            let (channels, _) = tokio::sync::watch::channel(lazy_channel(&target, tls)?);
            Ok(crate::renewal::Creds {
                dir: self.dir.clone(),
                cluster_id: ClusterId::parse(&state.cluster_id)?,
                target: std::sync::Mutex::new(target.clone()),
                managers: std::sync::Mutex::new(state.managers.clone()),
                current: std::sync::Mutex::new(crate::renewal::Current {
                    key_pem: key_pem.clone(),
                    cert_der: cert_der.clone(),
                    roots: roots.clone(),
                }),
                channels,
                manager: std::sync::Mutex::new(manager.as_ref().map(|m| m.identity_handle())),
                raft: std::sync::Mutex::new(raft.clone()),
                wanted_root: std::sync::Mutex::new(None),
                wanted_role: std::sync::Mutex::new(None),
                raft_id: std::sync::atomic::AtomicU64::new(state.raft_id),
            })
        })();
        let creds = match creds {
            Ok(c) => Arc::new(c),
            Err(e) => {
                if let Some(m) = manager {
                    m.shutdown().await;
                }
                return Err(e);
            }
        };
        if let (Some(store), Some(m)) = (&store, &manager) {
            tokio::spawn(follow_cluster_settings(
                store.clone(),
                m.view().clone(),
                self.dir.clone(),
                creds.clone(),
            ));
        }
        // Promoted while the daemon was down, or before its manager could start: finish.
        if manager.is_none() && creds.role() == Some(Role::Manager) {
            self.role_changed.notify_one();
        }
        let renewal = Arc::new(std::sync::Mutex::new(crate::renewal::RenewalInfo::default()));
        let renew_now = Arc::new(tokio::sync::Notify::new());
        let beat_now = Arc::new(tokio::sync::Notify::new());
        let on_beat = {
            let creds = creds.clone();
            let renew_now = renew_now.clone();
            Arc::new(move |resp: &shoal_proto::dispatcher::HeartbeatResponse| {
                if !resp.managers.is_empty() {
                    if let Ok(mut m) = creds.managers.lock() {
                        if *m != resp.managers {
                            *m = resp.managers.clone();
                        }
                    }
                }
                if let Err(e) = creds.adopt_roots(&resp.roots_der) {
                    tracing::warn!(error = %format!("{e:#}"), "not adopting the roots the managers sent");
                }
                if let Ok(mut w) = creds.wanted_root.lock() {
                    *w = (!resp.rotation_root_digest.is_empty())
                        .then(|| resp.rotation_root_digest.clone());
                }
                if resp.renew_certificate && creds.rotation_pending() {
                    renew_now.notify_one();
                }
                // Promoted or demoted: the certificate for the new role, now.
                if !resp.role.is_empty() {
                    if let Ok(mut w) = creds.wanted_role.lock() {
                        *w = Some(resp.role.clone());
                    }
                    if creds.role_change_pending() {
                        renew_now.notify_one();
                    }
                }
            })
        };
        let renewal_error = {
            let renewal = renewal.clone();
            Arc::new(move || {
                renewal
                    .lock()
                    .ok()
                    .and_then(|r| r.last_error.clone())
                    .unwrap_or_default()
            })
        };
        let on_redirect = {
            let creds = creds.clone();
            Arc::new(move |leader: Option<String>| {
                let r = match leader {
                    Some(addr) => creds.switch_to(&addr),
                    None => creds.try_next_manager(),
                };
                if let Err(e) = r {
                    tracing::warn!(error = %format!("{e:#}"), "cannot switch managers");
                }
            })
        };
        let session = Session {
            on_redirect: Some(on_redirect),
            channels: creds.channels.subscribe(),
            description: {
                let mut d = self.description();
                d.data_path_addr = state.data_path_addr.clone();
                d
            },
            advertise_addr: state.advertise_addr.clone(),
            period: DEFAULT_HEARTBEAT,
            removed: Some(self.removed.clone()),
            untrusted: (state.role != "manager").then(|| self.untrusted.clone()),
            renewal_error: Some(renewal_error),
            on_beat: Some(on_beat),
            beat_now: beat_now.clone(),
            data_plane: Some(self.network.data_plane.clone()),
        };
        let agent_cancel = CancellationToken::new();
        let status = shoal_agent::reporter::start(session.channels.clone(), agent_cancel.clone());
        let worker = Worker::new(Deps {
            runtime: self.runtime.clone(),
            images: self.images.clone(),
            creds: self.creds.clone(),
            status,
            network: self.network.clone(),
            secrets: self.secrets.clone(),
        });
        tokio::spawn(run_assignments(
            session.channels.clone(),
            worker.clone(),
            session.description.clone(),
            agent_cancel.clone(),
        ));
        tokio::spawn(session.run(agent_cancel.clone()));
        let renewer = crate::renewal::Renewer {
            creds: creds.clone(),
            node_id: state.node_id.clone(),
            info: renewal.clone(),
            renew_now,
            beat_now,
            role_changed: self.role_changed.clone(),
        };
        tokio::spawn(renewer.run(agent_cancel.clone()));
        Ok(Active {
            state,
            worker,
            creds,
            renewal,
            manager,
            store,
            agent_cancel,
        })
    }

    async fn start_manager(
        &self,
        store: &Store,
        state: &NodeState,
        key_pem: &str,
        cert_der: &[u8],
    ) -> Result<Manager> {
        let key = NodeKey::from_pem(key_pem)?;
        Ok(Manager::start(ManagerConfig {
            store: store.clone(),
            listen_addr: self.opts.listen_addr,
            local_node_id: state.node_id.clone(),
            cluster_id: ClusterId::parse(&state.cluster_id)?,
            cert_der: cert_der.to_vec(),
            key_pkcs8: key.pkcs8_der(),
            dial: shoal_agent::connect::lazy_channel_timeout,
        })
        .await?)
    }

    fn advertise(&self, requested: &str) -> Result<String> {
        let port = self.opts.listen_addr.port();
        let chosen = if !requested.is_empty() {
            requested.to_string()
        } else if let Some(a) = &self.opts.advertise_addr {
            a.clone()
        } else if !self.opts.listen_addr.ip().is_unspecified() {
            self.opts.listen_addr.ip().to_string()
        } else {
            detect_ip()?.to_string()
        };
        with_port(&chosen, port).map_err(|e| {
            user(
                tonic::Code::InvalidArgument,
                format!("--advertise-addr: {e}"),
            )
        })
    }

    pub async fn init(&self, req: InitRequest) -> Result<InitResponse> {
        if req.force_new_cluster {
            return self.force_new_cluster().await;
        }
        let (busy, ()) = Busy::begin(&self.membership, "initializing a cluster", |m| {
            refuse_unless_free(m)?;
            Ok(((), free_again(m)))
        })
        .await?;
        let done = self.init_new(req).await;
        busy.settle(done).await
    }

    /// The work of `init`, with the membership marked busy.
    async fn init_new(&self, req: InitRequest) -> Result<(InitResponse, Active)> {
        let advertise = self.advertise(&req.advertise_addr)?;
        let cert_expiry = match req.cert_expiry_secs {
            0 => DEFAULT_CERT_EXPIRY,
            s => Duration::from_secs(s),
        };
        if cert_expiry > shoal_pki::MAX_CERT_EXPIRY {
            bail!(user(
                tonic::Code::InvalidArgument,
                "--cert-expiry is above the maximum of 20 years (the root CA's life)"
            ));
        }
        if cert_expiry < shoal_pki::MIN_CERT_EXPIRY {
            bail!(user(
                tonic::Code::InvalidArgument,
                format!(
                    "--cert-expiry {}s is below the minimum of 1 minute",
                    cert_expiry.as_secs()
                )
            ));
        }
        let heartbeat = match req.heartbeat_period_ms {
            0 => DEFAULT_HEARTBEAT,
            ms => Duration::from_millis(ms),
        };
        if heartbeat < Duration::from_millis(100) {
            bail!(user(
                tonic::Code::InvalidArgument,
                "--dispatcher-heartbeat must be at least 100ms"
            ));
        }
        // Find out now, not after the cluster exists, if the port is taken.
        std::net::TcpListener::bind(self.opts.listen_addr).map_err(|e| {
            user(
                tonic::Code::FailedPrecondition,
                format!(
                    "cannot listen on {}: {e}; stop what uses it or restart the daemon with another --listen-addr",
                    self.opts.listen_addr
                ),
            )
        })?;
        shoal_manager::security::revocation::check_raft_settings(
            req.snapshot_interval,
            req.election_timeout_ms,
        )
        .map_err(|e| user(tonic::Code::InvalidArgument, e))?;
        let mut network = shoal_manager::controlapi::networks::network_config(
            &req.default_addr_pool,
            req.default_addr_pool_mask_length,
        )
        .map_err(|e| user(tonic::Code::InvalidArgument, e))?;
        network.data_path_port =
            shoal_manager::controlapi::networks::check_data_path_port(req.data_path_port)
                .map_err(|e| user(tonic::Code::InvalidArgument, e))?;
        let data_path_addr = check_data_path_addr(&req.data_path_addr)?;
        let election_timeout = Duration::from_millis(req.election_timeout_ms);
        // A restore: the backup's objects, and the cluster's own autolock setting.
        let restore = if req.restore.is_empty() {
            None
        } else {
            let given = match req.unlock_key.trim() {
                "" => None,
                k => Some(
                    shoal_store::UnlockKey::parse(k)
                        .map_err(|e| user(tonic::Code::InvalidArgument, e))?,
                ),
            };
            let objects = shoal_manager::recovery::open_backup(&req.restore, given.as_ref())
                .map_err(|e| user(tonic::Code::InvalidArgument, e.to_string()))?;
            let cluster = shoal_manager::recovery::cluster_of(&objects)
                .map_err(|e| user(tonic::Code::InvalidArgument, e.to_string()))?;
            let key = shoal_store::UnlockKey::from_bytes(&cluster.unlock_key)
                .filter(|_| cluster.spec.as_ref().is_some_and(|s| s.autolock));
            Some((objects, key))
        };
        // With autolock, the store and the key file are sealed with the unlock key from
        // the first write: the root CA key is never on disk wrapped by anything else.
        let unlock_key = match &restore {
            Some((_, key)) => key.clone(),
            None => req.autolock.then(shoal_store::UnlockKey::generate),
        };
        let node_id = NodeId::generate();
        let raft_id = shoal_manager::bootstrap::new_raft_id();
        let store = self
            .open_store(
                self.dir.raft_dir(),
                raft_id,
                &advertise,
                None,
                StoreConfig {
                    kek: unlock_key.clone().map_or(Kek::Local, Kek::Unlock),
                    snapshot_interval: match req.snapshot_interval {
                        0 => shoal_store::DEFAULT_SNAPSHOT_INTERVAL,
                        n => n,
                    },
                    election_timeout: match req.election_timeout_ms {
                        0 => shoal_store::DEFAULT_ELECTION_TIMEOUT,
                        _ => election_timeout,
                    },
                },
            )
            .await?;
        let result = async {
            store
                .bootstrap()
                .await
                .context("cannot start the cluster store")?;
            store.wait_leader(Duration::from_secs(10)).await?;
            let res = match restore {
                Some((objects, _)) => shoal_manager::recovery::reform(
                    &store,
                    objects,
                    shoal_manager::recovery::Survivor {
                        node_id: node_id.clone(),
                        raft_id,
                        advertise_addr: advertise.clone(),
                        description: self.description(),
                        new_key: Some(NodeKey::generate()?),
                        why: RESTORED_WHY,
                    },
                )
                .await?
                .context("the restore made no certificate for this node")?,
                None => {
                    init_cluster(
                        &store,
                        node_id.clone(),
                        InitParams {
                            advertise_addr: advertise.clone(),
                            cert_expiry,
                            heartbeat_period: heartbeat,
                            description: self.description(),
                            snapshot_interval: req.snapshot_interval,
                            election_timeout,
                            unlock_key: unlock_key.clone(),
                            raft_id,
                            network,
                        },
                    )
                    .await?
                }
            };
            let state = NodeState {
                node_id: node_id.to_string(),
                cluster_id: res.cluster_id.to_string(),
                role: "manager".into(),
                managers: vec![advertise.clone()],
                advertise_addr: advertise.clone(),
                raft_id,
                data_path_addr: data_path_addr.clone(),
            };
            let key_pem = res.node_key.to_pem();
            if let Some(k) = &unlock_key {
                self.dir.unlock_with(k.clone());
            }
            self.dir.save(
                &state,
                &key_pem,
                &res.node_cert.cert_der,
                std::slice::from_ref(&res.root_der),
            )?;
            let loaded = Loaded {
                state,
                key_pem,
                cert_der: res.node_cert.cert_der,
                roots: vec![res.root_der],
            };
            self.start(loaded, Some(store.clone())).await
        }
        .await;
        match result {
            Ok(active) => {
                let resp = InitResponse {
                    node_id: active.state.node_id.clone(),
                    cluster_id: active.state.cluster_id.clone(),
                    // A restored cluster keeps its key: the operator has it already.
                    unlock_key: unlock_key
                        .filter(|_| req.restore.is_empty())
                        .map(|k| k.to_human())
                        .unwrap_or_default(),
                };
                tracing::info!(node_id = %resp.node_id, cluster_id = %resp.cluster_id, "initialized a new cluster");
                Ok((resp, active))
            }
            Err(e) => {
                // No half state: a failed init leaves the node as it was.
                let _ = store.shutdown().await;
                let _ = self.dir.wipe();
                let _ = self.dir.set_kek(None, "");
                Err(e)
            }
        }
    }

    /// `init --force-new-cluster` on a manager that lost its quorum: a one-manager
    /// cluster from its own copy of the state, keeping services, workers and their
    /// certificates. The other managers are removed; the old store is kept beside the
    /// new one (`raft.before-force-new-cluster-<time>`).
    async fn force_new_cluster(&self) -> Result<InitResponse> {
        const WHAT: &str = "re-forming the cluster";
        let (busy, a) = Busy::begin(&self.membership, WHAT, |m| {
            match m {
                Membership::Active(a) if a.store.is_some() => {}
                Membership::Active(_) => bail!(user(
                    tonic::Code::FailedPrecondition,
                    "this node is a worker: --force-new-cluster needs a manager's copy of the cluster state; run it on a surviving manager"
                )),
                Membership::Locked => bail!(user(tonic::Code::FailedPrecondition, LOCKED_WHY)),
                _ => bail!(user(
                    tonic::Code::FailedPrecondition,
                    "--force-new-cluster re-forms a cluster from a manager's state, and this node is not part of a cluster"
                )),
            }
            let Membership::Active(a) = std::mem::replace(m, Membership::Busy(WHAT)) else {
                unreachable!("checked above")
            };
            // Whatever happens, the state directory decides what the node is after.
            Ok((a, Membership::None { note: None }))
        })
        .await?;
        let export = match a.store.as_ref().map(|s| s.export()) {
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                busy.finish(Membership::Active(a)).await;
                return Err(e.into());
            }
            None => unreachable!("checked above"),
        };
        let mut state = a.state.clone();
        let kek = self.dir.store_kek();
        stop(*a).await;
        // `busy` stays until the end: the state directory then decides (resume).
        let _busy = busy;
        let old = self.dir.raft_dir();
        let new = self.dir.root.join("raft.new");
        let _ = std::fs::remove_dir_all(&new);
        let raft_id = shoal_manager::bootstrap::new_raft_id();
        let store = self
            .open_store(
                new.clone(),
                raft_id,
                &state.advertise_addr,
                None,
                StoreConfig {
                    kek,
                    ..Default::default()
                },
            )
            .await?;
        let formed = async {
            store.bootstrap().await?;
            store.wait_leader(Duration::from_secs(10)).await?;
            shoal_manager::recovery::reform(
                &store,
                export.objects,
                shoal_manager::recovery::Survivor {
                    node_id: NodeId::parse(&state.node_id)?,
                    raft_id,
                    advertise_addr: state.advertise_addr.clone(),
                    description: self.description(),
                    new_key: None,
                    why: REFORMED_WHY,
                },
            )
            .await?;
            anyhow::Ok(())
        }
        .await;
        let _ = store.shutdown().await;
        if let Err(e) = formed {
            let _ = std::fs::remove_dir_all(&new);
            // The old state is untouched: resume it as it was.
            self.resume_or_damaged().await;
            return Err(e.context("cannot re-form the cluster; this manager's state is unchanged"));
        }
        let kept = self.dir.root.join(format!(
            "raft.before-force-new-cluster-{}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        ));
        std::fs::rename(&old, &kept)
            .with_context(|| format!("cannot move {} aside", old.display()))?;
        std::fs::rename(&new, &old)
            .with_context(|| format!("cannot move the new store into {}", old.display()))?;
        state.raft_id = raft_id;
        state.managers = vec![state.advertise_addr.clone()];
        self.dir.save_state(&state)?;
        self.resume_or_damaged().await;
        tracing::warn!(
            kept = %kept.display(),
            "re-formed a one-manager cluster from this manager's state"
        );
        Ok(InitResponse {
            node_id: state.node_id.clone(),
            cluster_id: state.cluster_id.clone(),
            unlock_key: String::new(),
        })
    }

    pub async fn join(&self, req: JoinRequest) -> Result<JoinResponse> {
        check_data_path_addr(&req.data_path_addr)?;
        let rejoin_asked = req.rejoin;
        let (mut busy, rejoin) = Busy::begin(&self.membership, "joining a cluster", |m| {
            match (&*m, rejoin_asked) {
                (Membership::Stale(s), true) => Ok((Some(s.clone()), Membership::Stale(s.clone()))),
                (_, true) => bail!(user(
                    tonic::Code::FailedPrecondition,
                    "nothing to rejoin with: this node keeps no identity for --rejoin (it rejoins only after its certificate expired or its root CA was rotated away); join without --rejoin"
                )),
                (_, false) => {
                    refuse_unless_free(m)?;
                    Ok((None, free_again(m)))
                }
            }
        })
        .await?;
        let done = self.join_cluster(req, rejoin, &mut busy).await;
        busy.settle(done).await
    }

    /// The work of `join`, with the membership marked busy.
    async fn join_cluster(
        &self,
        req: JoinRequest,
        rejoin: Option<Stale>,
        busy: &mut Busy,
    ) -> Result<(JoinResponse, Active)> {
        let token = JoinToken::parse(&req.token)
            .map_err(|e| user(tonic::Code::InvalidArgument, e.to_string()))?;
        let remote = with_port(&req.remote_addr, DEFAULT_PORT).map_err(|e| {
            user(
                tonic::Code::InvalidArgument,
                format!("manager address: {e}"),
            )
        })?;
        let advertise = self.advertise(&req.advertise_addr)?;

        // 1. Reach the manager over TLS pinned to the token's CA digest.
        let pin = BootstrapPin::new(token.ca_digest());
        let boot = Arc::new(shoal_pki::pinned_bootstrap_client_config(pin.clone())?);
        let ch = match channel(&remote, boot.clone()).await {
            Ok(c) => c,
            Err(e) => {
                if let Some(got) = pin.presented_digest() {
                    bail!(user(
                        tonic::Code::PermissionDenied,
                        format!(
                            "join token does not match this cluster's CA (expected digest {}, got {got}): the address may not be this cluster's manager, or the token is old; ask a manager for a fresh token with 'shoal join-token worker'",
                            token.ca_digest()
                        )
                    ));
                }
                bail!(user(
                    tonic::Code::Unavailable,
                    format!("cannot reach a manager at {remote}: {}", error_chain(&e))
                ));
            }
        };
        let mut ca = CaClient::new(ch);
        let mut root_req = tonic::Request::new(GetRootCaCertificateRequest {});
        root_req.set_timeout(JOIN_CALL_TIMEOUT);
        let root_der = ca
            .get_root_ca_certificate(root_req)
            .await
            .map_err(|s| user(s.code(), format!("manager at {remote}: {}", s.message())))?
            .into_inner()
            .cert_der;
        let got = shoal_pki::cert_digest(&root_der);
        if got != token.ca_digest() {
            bail!(user(
                tonic::Code::PermissionDenied,
                format!("join token does not match this cluster's CA (expected digest {}, got {got}): ask a manager for a fresh token with 'shoal join-token worker'", token.ca_digest())
            ));
        }

        // 2. Ask for a certificate for our own key (for a rejoin: the old key, which
        //    proves we are the node the expired certificate names).
        let key = match &rejoin {
            Some(s) => NodeKey::from_pem(&s.key_pem)?,
            None => NodeKey::generate()?,
        };
        let mut issue_req = tonic::Request::new(IssueNodeCertificateRequest {
            csr_der: key.csr_der()?,
            token: token.to_string(),
            advertise_addr: advertise.clone(),
            hostname: shoal_agent::describe::hostname(),
            rejoin_cert_der: rejoin
                .as_ref()
                .map(|r| r.cert_der.clone())
                .unwrap_or_default(),
        });
        issue_req.set_timeout(JOIN_CALL_TIMEOUT);
        let retry = issue_req.get_ref().clone();
        let mut issued = ca.issue_node_certificate(issue_req).await;
        // Any manager's address works: a follower names the leader, which issues it.
        let mut remote = remote;
        if let Some(leader) = issued
            .as_ref()
            .err()
            .and_then(shoal_agent::managers::leader_pointer)
        {
            if let Ok(ch) = channel(&leader, boot.clone()).await {
                let mut r = tonic::Request::new(retry);
                r.set_timeout(JOIN_CALL_TIMEOUT);
                issued = CaClient::new(ch).issue_node_certificate(r).await;
                remote = leader;
            }
        }
        let issued = issued
            .map_err(|s| user(s.code(), s.message().to_string()))?
            .into_inner();
        let cluster_id = ClusterId::parse(&issued.cluster_id)?;
        let trust = ClusterTrust::new(cluster_id.clone(), std::slice::from_ref(&root_der))?;
        let intermediates: Vec<rustls::pki_types::CertificateDer<'_>> = issued
            .intermediates_der
            .iter()
            .map(|c| rustls::pki_types::CertificateDer::from(c.as_slice()))
            .collect();
        let identity = trust
            .verify(&issued.cert_der, &intermediates, SystemTime::now())
            .context("the manager issued a certificate we cannot use")?;
        // Trust what the cluster trusts now (both roots during a rotation), as long as
        // the pinned root is one of them.
        let roots = if issued.roots_der.contains(&root_der) {
            issued.roots_der.clone()
        } else {
            vec![root_der.clone()]
        };
        let as_manager = identity.role() == Role::Manager;
        if as_manager && rejoin.is_some() {
            bail!(user(
                tonic::Code::InvalidArgument,
                "--rejoin takes a worker token: a node rejoins in the role the managers hold for it"
            ));
        }
        if let Some(s) = &rejoin {
            if identity.node_id().as_str() != s.state.node_id {
                bail!(
                    "the manager issued a certificate for node {} instead of {}",
                    identity.node_id(),
                    s.state.node_id
                );
            }
        }

        // 3. Confirm the manager accepts the certificate with a real call before keeping it.
        let key_pem = key.to_pem();
        let tls = client_tls(&roots, &issued.cert_der, &key_pem)?;
        let mtls = channel(&remote, tls.clone()).await.map_err(|e| {
            user(
                tonic::Code::Unavailable,
                format!(
                    "cannot reach the manager at {remote} with our new certificate: {}",
                    error_chain(&e)
                ),
            )
        })?;
        let mut beat = heartbeat_once(mtls, self.description(), advertise.clone()).await;
        // A follower (or a manager that just lost an election) points to the leader.
        if let Some(leader) = beat
            .as_ref()
            .err()
            .and_then(shoal_agent::managers::leader_pointer)
        {
            if let Ok(ch) = channel(&leader, tls.clone()).await {
                beat = heartbeat_once(ch, self.description(), advertise.clone()).await;
            }
        }
        beat.map_err(|s| {
            user(
                s.code(),
                format!(
                    "the manager did not accept our new certificate: {}",
                    s.message()
                ),
            )
        })?;

        let mut managers = issued.managers.clone();
        if !managers.contains(&remote) {
            managers.insert(0, remote.clone());
        }
        let state = NodeState {
            node_id: identity.node_id().to_string(),
            cluster_id: cluster_id.to_string(),
            role: identity.role().to_string(),
            managers,
            advertise_addr: advertise,
            raft_id: issued.raft_id,
            data_path_addr: check_data_path_addr(&req.data_path_addr)?,
        };
        self.dir.save(&state, &key_pem, &issued.cert_der, &roots)?;
        // The identity kept for --rejoin is replaced on disk: a failure from here on
        // leaves the node free.
        busy.fallback = Some(Membership::None { note: None });
        let store = if as_manager {
            let joined = self
                .join_raft(&state, &remote, &issued.cert_der, &key, &roots, tls.clone())
                .await;
            match joined {
                Ok(s) => Some(s),
                Err(e) => {
                    let _ = self.dir.wipe();
                    return Err(e);
                }
            }
        } else {
            None
        };
        let started = self
            .start(
                Loaded {
                    state,
                    key_pem,
                    cert_der: issued.cert_der,
                    roots,
                },
                store.clone(),
            )
            .await;
        if started.is_err() {
            if let Some(s) = &store {
                let _ = s.shutdown().await;
            }
        }
        let active = match started {
            Ok(a) => a,
            Err(e) => {
                // Do not resume a membership that never started on the next restart.
                let _ = self.dir.wipe();
                return Err(e);
            }
        };
        let resp = JoinResponse {
            node_id: active.state.node_id.clone(),
            cluster_id: active.state.cluster_id.clone(),
            role: active.state.role.clone(),
        };
        tracing::info!(node_id = %resp.node_id, cluster_id = %resp.cluster_id, "joined the cluster");
        Ok((resp, active))
    }

    /// Makes this new manager a member of the Raft group: opens its (empty) store, serves
    /// Raft alone on its listener, asks the leader to add it (as a learner until it has
    /// caught up, then as a voter), and waits until its store holds the cluster.
    async fn join_raft(
        &self,
        state: &NodeState,
        remote: &str,
        cert_der: &[u8],
        key: &NodeKey,
        roots: &[Vec<u8>],
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Store> {
        use shoal_proto::raft::raft_client::RaftClient;
        use shoal_proto::raft::JoinRaftRequest;
        // Wrapped locally until the cluster's settings reach this store: with autolock on,
        // the data key is then wrapped by the unlock key and the local key deleted.
        let store = self
            .open_store(
                self.dir.raft_dir(),
                state.raft_id(),
                &state.advertise_addr,
                Some(tls.clone()),
                StoreConfig::default(),
            )
            .await?;
        let cancel = CancellationToken::new();
        let result = async {
            let trust = ClusterTrust::new(ClusterId::parse(&state.cluster_id)?, roots)?;
            let mut chain = vec![cert_der.to_vec()];
            chain.extend(roots.iter().cloned());
            let server = shoal_manager::server::serve_joining(
                self.opts.listen_addr,
                trust,
                chain,
                key.pkcs8_der(),
                store.clone(),
                cancel.clone(),
            )
            .await?;
            let mut target = remote.to_string();
            let mut hops = 0;
            let leader_applied = loop {
                let ch = channel(&target, tls.clone()).await.map_err(|e| {
                    user(
                        tonic::Code::Unavailable,
                        format!("cannot reach the manager at {target}: {}", error_chain(&e)),
                    )
                })?;
                let mut req = tonic::Request::new(JoinRaftRequest {
                    addr: state.advertise_addr.clone(),
                });
                req.set_timeout(Duration::from_secs(120));
                match RaftClient::new(ch).join(req).await {
                    Ok(r) => break r.into_inner().applied_index,
                    Err(s) => {
                        let leader = s
                            .metadata()
                            .get(shoal_manager::cluster::LEADER_KEY)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        match leader {
                            Some(l) if hops < 3 && l != target => {
                                target = l;
                                hops += 1;
                            }
                            _ => bail!(user(
                                s.code(),
                                format!(
                                    "the managers could not add this node to the raft group: {}",
                                    s.message()
                                )
                            )),
                        }
                    }
                }
            };
            // The leader added us once we had caught up; serve once our copy has all the
            // leader had then (our own node among it).
            if !store
                .wait_applied(leader_applied, Duration::from_secs(30))
                .await
                || shoal_manager::bootstrap::load_cluster(&store).is_err()
            {
                bail!(
                    "this manager joined the raft group but its store did not catch up within 30 s"
                );
            }
            // Stop at once, connections and all: the full listener takes over the
            // address, and the leader must not go unheard long enough for an election.
            cancel.cancel();
            let mut server = server;
            if tokio::time::timeout(Duration::from_millis(100), &mut server)
                .await
                .is_err()
            {
                server.abort();
                let _ = server.await;
            }
            Ok(())
        }
        .await;
        cancel.cancel();
        match result {
            Ok(()) => Ok(store),
            Err(e) => {
                let _ = store.shutdown().await;
                Err(e)
            }
        }
    }

    /// A renewal changed this node's role. Demoted: its manager stops and its copy of the
    /// cluster state is deleted; the agent goes on (its containers are untouched).
    pub async fn handle_role_change(&self) {
        let mut guard = self.membership.lock().await;
        let Membership::Active(a) = &mut *guard else {
            return;
        };
        match a.creds.role() {
            Some(Role::Worker) if a.manager.is_some() => {
                if let Some(m) = a.manager.take() {
                    m.shutdown().await;
                }
                if let Some(s) = a.store.take() {
                    let _ = s.shutdown().await;
                }
                if let Ok(mut r) = self.raft.lock() {
                    *r = None;
                }
                if let Ok(mut m) = a.creds.manager.lock() {
                    *m = None;
                }
                if let Ok(mut r) = a.creds.raft.lock() {
                    *r = None;
                }
                if let Err(e) = std::fs::remove_dir_all(self.dir.raft_dir()) {
                    tracing::warn!(error = %e, "cannot delete the demoted manager's store");
                }
                // A worker's key is never sealed: it restarts without an unlock key.
                if let Err(e) = self.dir.set_kek(None, &a.creds.get().key_pem) {
                    tracing::error!("cannot unseal the demoted manager's key: {e:#}");
                }
                a.state.role = "worker".into();
                a.state.raft_id = 0;
                if let Err(e) = self.dir.save_state(&a.state) {
                    tracing::error!("cannot record the new role: {e:#}");
                }
                tracing::info!("this node was demoted: it is a worker now; its manager stopped and its copy of the cluster state was deleted");
            }
            Some(Role::Manager) if a.manager.is_none() => {
                let state = a.state.clone();
                let creds = a.creds.clone();
                // Joining the raft group takes network calls and a catch-up: not under
                // the lock `info` and `node ls` need.
                drop(guard);
                if let Err(e) = self.become_manager(state, creds).await {
                    tracing::error!(
                        error = %format!("{e:#}"),
                        "this node was promoted to manager but could not join the managers; retrying in 5 s"
                    );
                    let again = self.role_changed.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        again.notify_one();
                    });
                }
            }
            _ => {}
        }
    }

    /// A promoted worker (holding its manager certificate now) joins the Raft group,
    /// starts its manager beside its running agent, and records its new role.
    async fn become_manager(
        &self,
        mut state: NodeState,
        creds: Arc<crate::renewal::Creds>,
    ) -> Result<()> {
        let c = creds.get();
        let key = NodeKey::from_pem(&c.key_pem)?;
        let tls = client_tls(&c.roots, &c.cert_der, &c.key_pem)?;
        let target = creds.target.lock().map(|t| t.clone()).unwrap_or_default();
        // The member ID the managers gave this promotion (with its certificate).
        state.raft_id = creds.raft_id.load(std::sync::atomic::Ordering::Relaxed);
        // Whatever a failed attempt left: a new member starts from an empty store.
        match std::fs::remove_dir_all(self.dir.raft_dir()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).context("cannot clear the store directory for the new manager")
            }
            _ => {}
        }
        let store = self
            .join_raft(&state, &target, &c.cert_der, &key, &c.roots, tls)
            .await?;
        let mut guard = self.membership.lock().await;
        let current = match &mut *guard {
            Membership::Active(a) if a.state.node_id == state.node_id && a.manager.is_none() => {
                Some(a)
            }
            _ => None,
        };
        let Some(a) = current else {
            // The node left (or was removed) meanwhile.
            drop(guard);
            let _ = store.shutdown().await;
            return Ok(());
        };
        // The certificate may have been renewed while we joined: serve the newest.
        let c = creds.get();
        let manager = match self
            .start_manager(&store, &state, &c.key_pem, &c.cert_der)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                let _ = store.shutdown().await;
                return Err(e);
            }
        };
        if let Ok(mut m) = creds.manager.lock() {
            *m = Some(manager.identity_handle());
        }
        a.state.raft_id = state.raft_id;
        tokio::spawn(follow_cluster_settings(
            store.clone(),
            manager.view().clone(),
            self.dir.clone(),
            creds.clone(),
        ));
        if let Ok(mut r) = creds.raft.lock() {
            *r = self.raft.lock().ok().and_then(|r| r.clone());
        }
        state.role = "manager".into();
        if let Err(e) = self.dir.save_state(&state) {
            tracing::error!("cannot record the new role: {e:#}");
        }
        a.state.role = state.role;
        a.manager = Some(manager);
        a.store = Some(store);
        tracing::info!("this node was promoted: it is a manager now and serves the cluster");
        Ok(())
    }

    /// A manager removed this node: stop its containers and forget the cluster.
    pub async fn handle_removed(&self) {
        let Some((busy, active)) = self
            .take_active("leaving the cluster (it was removed)")
            .await
        else {
            return;
        };
        active.agent_cancel.cancel();
        active.worker.remove_all().await;
        stop(*active).await;
        if let Err(e) = self.dir.wipe() {
            tracing::error!("cannot forget the cluster state: {e:#}");
        }
        busy.finish(Membership::None {
            note: Some(
                "node removed from cluster: a manager removed this node; its containers were stopped. Join again with a token".into(),
            ),
        })
        .await;
        tracing::warn!(
            "this node was removed from the cluster: containers stopped, cluster state forgotten"
        );
    }

    /// The managers' certificates no longer chain to our roots: the cluster's root was
    /// rotated while this node was away. Stop the agent (containers keep running until
    /// the node rejoins and learns which to keep) and keep the identity for `--rejoin`.
    pub async fn handle_untrusted(&self) {
        let Some((busy, active)) = self
            .take_active("stopping (its roots are out of date)")
            .await
        else {
            return;
        };
        let c = active.creds.get();
        let stale = Stale {
            state: active.state.clone(),
            key_pem: c.key_pem,
            cert_der: c.cert_der,
            why: UNTRUSTED_WHY.into(),
        };
        tracing::warn!("{}", stale.advice());
        stop(*active).await;
        busy.finish(Membership::Stale(stale)).await;
    }

    /// Takes the active membership out to end it, marking the node busy with `what`
    /// meanwhile. `None` if the node is not active.
    async fn take_active(&self, what: &'static str) -> Option<(Busy, Box<Active>)> {
        Busy::begin(&self.membership, what, |m| {
            if !matches!(m, Membership::Active(_)) {
                bail!("not active");
            }
            let Membership::Active(a) = std::mem::replace(m, Membership::Busy(what)) else {
                unreachable!("checked above")
            };
            Ok((a, Membership::None { note: None }))
        })
        .await
        .ok()
    }

    /// Stops and removes every container this node has, without a running agent (a
    /// node leaving from a membership it could not resume).
    async fn remove_containers(&self) {
        use shoal_agent::runtime::ContainerStatus;
        let (rt, net, sec) = (
            self.runtime.clone(),
            self.network.clone(),
            self.secrets.clone(),
        );
        let _ = tokio::task::spawn_blocking(move || {
            let mut ids: std::collections::BTreeSet<String> = rt.list().into_iter().collect();
            ids.extend(net.list());
            for id in ids {
                if let ContainerStatus::Running { .. } = rt.status(&id) {
                    let _ = rt.signal(&id, nix::sys::signal::Signal::SIGKILL);
                    for _ in 0..50 {
                        if !matches!(rt.status(&id), ContainerStatus::Running { .. }) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                if let Err(e) = shoal_agent::controller::remove_task(rt.as_ref(), &net, &sec, &id) {
                    tracing::warn!(container = %id, error = %e, "cannot remove a container");
                }
            }
        })
        .await;
    }

    /// Unlocks a manager that restarted locked: checks the key against its store, then
    /// resumes its membership with it.
    pub async fn unlock(&self, text: &str) -> Result<()> {
        if !matches!(*self.membership.lock().await, Membership::Locked) {
            bail!(user(
                tonic::Code::FailedPrecondition,
                "this node is not locked: there is nothing to unlock"
            ));
        }
        let key = shoal_store::UnlockKey::parse(text)
            .map_err(|e| user(tonic::Code::InvalidArgument, e))?;
        let dir = self.dir.raft_dir();
        let check = {
            let key = key.clone();
            tokio::task::spawn_blocking(move || shoal_store::seal::check_unlock_key(&dir, &key))
                .await?
        };
        match check {
            Ok(()) => {}
            Err(e @ shoal_store::StoreError::WrongUnlockKey) => {
                bail!(user(tonic::Code::PermissionDenied, e.to_string()))
            }
            Err(e) => return Err(e.into()),
        }
        self.dir.unlock_with(key);
        {
            let mut m = self.membership.lock().await;
            if !matches!(*m, Membership::Locked) {
                return Ok(());
            }
            *m = Membership::None { note: None };
        }
        tracing::info!("unlocked");
        if let Err(e) = self.resume().await {
            self.set_damaged(format!("{e:#}")).await;
            return Err(e);
        }
        Ok(())
    }

    pub async fn leave(&self, force: bool) -> Result<()> {
        /// What the node leaves from.
        enum From {
            Active(Box<Active>),
            Stale(Box<Stale>),
            Locked,
            Damaged,
        }
        let (busy, from) = Busy::begin(&self.membership, "leaving the cluster", |m| {
            let from = match m {
                Membership::None { .. } => bail!(user(
                    tonic::Code::FailedPrecondition,
                    "this node is not part of a cluster"
                )),
                Membership::Busy(_) => unreachable!("Busy::begin refuses it"),
                Membership::Active(a) if a.state.role == "manager" && !force => bail!(user(
                    tonic::Code::FailedPrecondition,
                    "this node is a manager: leaving erases its copy of the cluster state (on the only manager, the cluster itself). Demote it first with 'shoal node demote', or use 'shoal leave --force' to do it anyway"
                )),
                Membership::Locked if !force => bail!(user(
                    tonic::Code::FailedPrecondition,
                    format!("{LOCKED_WHY}. Or discard this manager's state with 'shoal leave --force'")
                )),
                Membership::Damaged(_) if !force => bail!(user(
                    tonic::Code::FailedPrecondition,
                    "this node's cluster state could not be loaded: repair it and restart the daemon, or discard it with 'shoal leave --force'"
                )),
                _ => match std::mem::replace(m, Membership::Busy("leaving the cluster")) {
                    Membership::Active(a) => From::Active(a),
                    Membership::Stale(s) => From::Stale(Box::new(s)),
                    Membership::Locked => From::Locked,
                    _ => From::Damaged,
                },
            };
            // A leave that fails half way leaves nothing to go back to but the disk.
            Ok((from, Membership::None { note: None }))
        })
        .await?;
        match from {
            From::Active(active) => {
                // Like swarm: a node that leaves stops its tasks' containers.
                active.agent_cancel.cancel();
                active.worker.remove_all().await;
                stop(*active).await;
                tracing::info!("left the cluster");
            }
            // A membership kept only for --rejoin: leaving gives it up, and its
            // containers with it, like any leave.
            From::Stale(s) => {
                self.remove_containers().await;
                tracing::info!(node_id = %s.state.node_id, "left the cluster (gave up the identity kept for --rejoin)");
            }
            From::Locked => {
                self.remove_containers().await;
                tracing::info!("discarded the locked manager's state");
            }
            From::Damaged => tracing::info!("discarded the damaged cluster state"),
        }
        let net = self.network.clone();
        let _ = tokio::task::spawn_blocking(move || net.data_plane.shutdown()).await;
        let wiped = self.dir.wipe();
        let _ = self.dir.set_kek(None, "");
        busy.finish(Membership::None { note: None }).await;
        wiped
    }

    pub async fn info(&self) -> InfoResponse {
        let guard = self.membership.lock().await;
        let a = match &*guard {
            Membership::Active(a) => a,
            Membership::Locked => {
                return InfoResponse {
                    state: "locked".into(),
                    role: "manager".into(),
                    error: LOCKED_WHY.into(),
                    ..Default::default()
                }
            }
            Membership::Damaged(why) => {
                return InfoResponse {
                    state: "error".into(),
                    error: why.clone(),
                    ..Default::default()
                }
            }
            Membership::Stale(stale) => {
                let at = shoal_pki::CertSummary::parse(&stale.cert_der)
                    .ok()
                    .and_then(|c| c.not_after.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                return InfoResponse {
                    state: "error".into(),
                    node_id: stale.state.node_id.clone(),
                    cluster_id: stale.state.cluster_id.clone(),
                    cert_not_after_unix: at,
                    error: stale.advice(),
                    ..Default::default()
                };
            }
            Membership::Busy(doing) => {
                return InfoResponse {
                    state: "pending".into(),
                    error: format!("this node is {doing}"),
                    ..Default::default()
                }
            }
            Membership::None { note } => {
                return InfoResponse {
                    state: "inactive".into(),
                    error: note.clone().unwrap_or_default(),
                    ..Default::default()
                }
            }
        };
        let creds = a.creds.get();
        let cert = shoal_pki::CertSummary::parse(&creds.cert_der).ok();
        let renewal = a.renewal.lock().map(|r| r.clone()).unwrap_or_default();
        InfoResponse {
            state: "active".into(),
            node_id: a.state.node_id.clone(),
            cluster_id: a.state.cluster_id.clone(),
            role: a.state.role.clone(),
            managers: a.state.managers.clone(),
            cert_not_after_unix: cert
                .as_ref()
                .and_then(|c| c.not_after.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            root_ca_digest: creds
                .roots
                .iter()
                .map(|r| shoal_pki::cert_digest(r))
                .collect::<Vec<_>>()
                .join(", "),
            node_addr: a.state.advertise_addr.clone(),
            cert_serial: cert.map(|c| c.serial).unwrap_or_default(),
            error: String::new(),
            cert_renewal_next_unix: renewal
                .next_at
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            cert_renewal_error: renewal.last_error.unwrap_or_default(),
            cert_renewals: renewal.renewals,
            runtime_error: String::new(),
            raft_applied_index: a.store.as_ref().map_or(0, |s| s.applied_index()),
            raft_snapshot_index: a
                .store
                .as_ref()
                .and_then(|s| s.snapshot_index())
                .unwrap_or(0),
            snapshot_interval: a.store.as_ref().map_or(0, |s| s.snapshot_interval()),
            election_timeout_ms: a
                .store
                .as_ref()
                .map_or(0, |s| s.election_timeout().as_millis() as u64),
            autolock: a.store.is_some() && self.dir.sealed(),
        }
    }

    /// Where this node's local administrator's control calls go: this manager's router
    /// (which answers reads here and sends writes to the leader), if this node is an
    /// unlocked manager.
    pub async fn control_router(
        &self,
    ) -> Result<shoal_manager::routing::ControlRouter, tonic::Status> {
        match &*self.membership.lock().await {
            Membership::Active(a) => a.manager.as_ref().map(|m| m.control_router()).ok_or_else(|| {
                tonic::Status::failed_precondition(
                    "this node is not a manager: worker nodes cannot view or change cluster state; run this command on a manager node",
                )
            }),
            Membership::Locked => Err(tonic::Status::failed_precondition(LOCKED_WHY)),
            Membership::Busy(doing) => Err(tonic::Status::unavailable(format!(
                "this node is {doing}: try again when that is done"
            ))),
            _ => Err(tonic::Status::failed_precondition(
                "this node is not part of a cluster: run 'shoal init' to create one or 'shoal join' to join one",
            )),
        }
    }

    pub async fn shutdown(&self) {
        let taken = std::mem::replace(
            &mut *self.membership.lock().await,
            Membership::Busy("shutting down"),
        );
        if let Membership::Active(a) = taken {
            stop(*a).await;
        }
    }
}

async fn stop(active: Active) {
    active.agent_cancel.cancel();
    if let Some(m) = active.manager {
        m.shutdown().await;
    }
    if let Some(s) = active.store {
        if let Err(e) = s.shutdown().await {
            tracing::warn!(error = %e, "cluster store did not shut down cleanly");
        }
    }
}

/// On a manager, for as long as it runs: applies the cluster's Raft settings to the
/// store (snapshot interval now, election timeout from the next start), and its autolock
/// setting to the keys on disk (the data key wrapped by the unlock key and the TLS key
/// sealed with it, or both back to the local key-encryption key).
async fn follow_cluster_settings(
    store: Store,
    view: shoal_manager::view::ClusterView,
    dir: StateDir,
    creds: Arc<crate::renewal::Creds>,
) {
    let mut updates = view.subscribe();
    let mut state = view.current();
    loop {
        if let Some(c) = state.cluster() {
            let c = c.value.clone();
            let spec = c.spec.unwrap_or_default();
            store.set_snapshot_interval(shoal_manager::cluster::effective_snapshot_interval(&spec));
            let timeout = shoal_manager::cluster::effective_election_timeout(&spec);
            let unlock =
                shoal_store::UnlockKey::from_bytes(&c.unlock_key).filter(|_| spec.autolock);
            let (s, d) = (store.clone(), dir.clone());
            let key_pem = creds.get().key_pem;
            let applied = tokio::task::spawn_blocking(move || -> Result<bool> {
                let changed = s.set_election_timeout(timeout)?;
                s.rewrap(&unlock.clone().map_or(Kek::Local, Kek::Unlock))?;
                d.set_kek(unlock, &key_pem)?;
                Ok(changed)
            })
            .await;
            match applied {
                Ok(Ok(true)) => tracing::info!(
                    timeout = %humantime::format_duration(timeout),
                    "the cluster's election timeout changed: this manager uses it from its next restart"
                ),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot apply the cluster's settings to this manager's keys and store")
                }
                Err(e) => tracing::error!(error = %e, "cannot apply the cluster's settings"),
            }
        }
        // Wait for the next change to the cluster object.
        loop {
            match updates.next().await {
                Some(u) if u.touches(&[shoal_manager::view::Kind::Cluster]) => {
                    state = u.state.clone();
                    break;
                }
                Some(_) => {}
                None => return,
            }
        }
    }
}

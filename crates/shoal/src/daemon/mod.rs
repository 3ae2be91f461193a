//! `shoal daemon`: the node process. It serves the local admin API on a unix socket,
//! and once the node is in a cluster runs the agent (every node) and the manager
//! (manager nodes), restarting both from the state directory after a restart.

mod agent;
mod init;
pub(crate) mod join;
mod leave;
mod roles;
mod settings;
mod start;

use crate::netaddr::{detect_ip, with_port, DEFAULT_PORT};
use crate::statedir::{Loaded, NodeState, StateDir};
use crate::tls::client_tls;
use anyhow::{bail, Context, Result};
use settings::follow_cluster_settings;
use shoal_agent::connect::{channel, error_chain};
use shoal_agent::controller::Deps;
use shoal_agent::describe::describe;
use shoal_agent::heartbeat::{heartbeat_once, Session};
use shoal_agent::image::{CredentialStore, ImageStore};
use shoal_agent::runtime::{runc::Runc, Runtime};
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
    /// The agent: heartbeat, session stream, reporter, renewer (stopped and awaited
    /// together).
    agent: shoal_agent::agent::AgentHandle,
    /// The node's key, certificate and roots (renewal and root rotation replace them).
    creds: Arc<crate::renewal::Creds>,
    renewal: Arc<std::sync::Mutex<crate::renewal::RenewalInfo>>,
    manager: Option<Manager>,
    store: Option<Store>,
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
    /// Named volumes on this node.
    pub volumes: Arc<shoal_agent::volumes::Volumes>,
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
        let volumes = Arc::new(shoal_agent::volumes::Volumes::new(&opts.state_dir));
        Ok(Daemon {
            opts,
            dir,
            images,
            creds,
            runtime,
            network,
            secrets,
            volumes,
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
        self.info_of(a)
    }

    /// `info` of a member node.
    fn info_of(&self, a: &Active) -> InfoResponse {
        let creds = a.creds.get();
        let cert = shoal_pki::CertSummary::parse(&creds.cert_der).ok();
        let renewal = a.renewal.lock().map(|r| r.clone()).unwrap_or_default();
        InfoResponse {
            state: "active".into(),
            node_id: a.state.node_id.clone(),
            cluster_id: a.state.cluster_id.clone(),
            role: a.state.role.clone(),
            // As the last heartbeat named them.
            managers: a
                .creds
                .managers
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default(),
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
    active.agent.stop().await;
    stop_manager(active.manager, active.store).await;
}

/// Stops a member that leaves: its agent, its tasks' containers, and its manager.
async fn stop_and_remove_tasks(active: Active) {
    active.agent.stop_and_remove_tasks().await;
    stop_manager(active.manager, active.store).await;
}

async fn stop_manager(manager: Option<Manager>, store: Option<Store>) {
    if let Some(m) = manager {
        m.shutdown().await;
    }
    if let Some(s) = store {
        if let Err(e) = s.shutdown().await {
            tracing::warn!(error = %e, "cluster store did not shut down cleanly");
        }
    }
}

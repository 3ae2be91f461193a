//! Where each control call is served: the one declared table of reads and writes, and
//! the [`ControlRouter`] that serves the local administrator's calls by it (answered
//! here, or forwarded to the leader over one kept channel).
//!
//! A read answers from the manager's own copy of the store, so it works without a leader
//! (and says when that copy may be stale); a write, and a log stream (served where the
//! nodes' sessions are), goes to the leader. Front ends (the local socket, a follower
//! forwarding) route by [`route`], never by a method's name: a call that writes is a
//! write even when its name reads like a read. A method missing from the table goes to
//! the leader, which is always correct, only slower.

use crate::audit::{self, AuditLog};
use crate::cluster::leader_addr;
use crate::controlapi::{ControlService, LocalAdmin, FORWARDED_HEADER, LOCAL_ADMIN};
use crate::listener::IdentityHandle;
use crate::view::ClusterView;
use shoal_proto::control::control_server::ControlServer;
use shoal_store::Store;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::codegen::http::HeaderValue;
use tonic::transport::Channel;
use tonic::Status;
use tracing::Instrument;

/// The response header that carries the index this manager had applied when it
/// answered a control call: a follower that forwarded a write waits until its own copy
/// has it, so that a read right after, on the same node, sees the write.
pub const APPLIED_HEADER: &str = "shoal-applied";

/// Where a control call is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// This manager's copy of the store.
    Local,
    /// The leader (forwarded when this manager follows).
    Leader,
}

/// Calls that only read.
const READS: &[&str] = &[
    "ListNodes",
    "GetNode",
    "GetJoinToken",
    "GetClusterInfo",
    "ListTasks",
    "GetTask",
    "GetService",
    "ListServices",
    "ListNetworks",
    "GetNetwork",
    "ListSecrets",
    "GetSecret",
    "GetUnlockKey",
    "GetBackup",
    "GetCa",
    "ListUsers",
    "GetUser",
];

/// Calls that write, or stream from the leader.
const LEADER: &[&str] = &[
    "UpdateJoinToken",
    "CreateTask",
    "RemoveTask",
    "TaskLogs",
    "TaskExec",
    "CreateService",
    "UpdateService",
    "RemoveService",
    "CreateNetwork",
    "RemoveNetwork",
    "CreateSecret",
    "UpdateSecret",
    "RemoveSecret",
    "UpdateNode",
    "RemoveNode",
    "DemoteNode",
    "PromoteNode",
    "UpdateCluster",
    "RevokeCertificate",
    "RotateCa",
    "CreateUser",
    "UpdateUser",
    "RemoveUser",
    "NewUserToken",
];

/// Where the control call `method` (its gRPC method name, e.g. `GetJoinToken`) is
/// served.
pub fn route(method: &str) -> Route {
    if READS.contains(&method) {
        return Route::Local;
    }
    if !LEADER.contains(&method) {
        tracing::debug!(
            method,
            "a control call missing from the routing table goes to the leader"
        );
    }
    Route::Leader
}

/// Set on a read answered without a leader or a quorum: why it may be stale.
pub const STALE_HEADER: &str = "shoal-stale";

/// How long a follower tries to reach the leader for a forwarded call.
const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a write waits for an election under way to elect a leader.
const LEADER_WAIT: Duration = Duration::from_secs(3);

/// How long a follower waits, after a forwarded write, for its own copy to have it.
const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(2);

/// Makes a channel to a manager's address with a TLS client configuration, connecting
/// on first use and giving up connecting after the timeout. The binary passes its
/// dialer, which verifies that a manager certificate answers.
pub type Dial =
    fn(&str, Arc<rustls::ClientConfig>, Duration) -> Result<Channel, tonic::transport::Error>;

type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;
type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

/// Serves the local administrator's control calls by [`route`]: a read from this
/// manager's copy (marked stale when it may be), a write here when this manager leads,
/// else forwarded to the leader with the caller marked, on a channel kept while the
/// leader and this manager's identity stay the same.
#[derive(Clone)]
pub struct ControlRouter {
    store: Store,
    /// What this manager's reads read: a forwarded write is waited for here.
    view: ClusterView,
    local: ControlServer<ControlService>,
    leader: Arc<LeaderLink>,
    /// Where a forwarded call is recorded (the leader records it too, by the same ID).
    audit: Arc<AuditLog>,
}

/// The channel to the leader, kept while the leader's address and this manager's
/// identity stay the same.
struct LeaderLink {
    identity: IdentityHandle,
    dial: Dial,
    kept: Mutex<Option<LeaderChannel>>,
}

struct LeaderChannel {
    addr: String,
    /// The identity it presents ([`IdentityHandle::generation`]).
    generation: u64,
    channel: Channel,
}

impl ControlRouter {
    pub(crate) fn new(
        store: Store,
        view: ClusterView,
        local: ControlServer<ControlService>,
        identity: IdentityHandle,
        dial: Dial,
        audit: Arc<AuditLog>,
    ) -> ControlRouter {
        ControlRouter {
            store,
            view,
            local,
            audit,
            leader: Arc::new(LeaderLink {
                identity,
                dial,
                kept: Mutex::default(),
            }),
        }
    }

    /// Serves one control call of this node's local administrator (the unix socket's
    /// server calls this; nothing from the network reaches it).
    pub async fn serve_local(&self, req: HttpRequest) -> HttpResponse {
        // The peer's user ID, for the audit log.
        let uid = req
            .extensions()
            .get::<tonic::transport::server::UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .map(|c| c.uid());
        self.serve(req, Front::Local(uid)).await
    }

    /// Serves one control call of a user over mTLS (the listener verified their
    /// certificate and attached it to `req`); a write on a follower goes to the leader
    /// naming the user, who is checked there again.
    pub async fn serve_user(&self, req: HttpRequest, name: &str, serial: &str) -> HttpResponse {
        self.serve(
            req,
            Front::User {
                name: name.to_string(),
                serial: serial.to_string(),
            },
        )
        .await
    }

    async fn serve(&self, req: HttpRequest, front: Front) -> HttpResponse {
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        let span = tracing::debug_span!("route", call = %method);
        async move {
            if route(&method) == Route::Local {
                return self.here(req, &front, self.store.stale_reason()).await;
            }
            // A write during an election (a quorum is reachable, no leader known yet)
            // waits for the outcome instead of failing.
            if self.store.leader().is_none() && self.store.quorum_reachable() {
                self.store.wait_leader_known(LEADER_WAIT).await;
            }
            if self.store.is_leader() || self.store.leader().is_none() {
                return self.here(req, &front, None).await;
            }
            match leader_addr(&self.store) {
                Some(addr) => self.forward(req, &front, &addr).await,
                None => self.here(req, &front, None).await,
            }
        }
        .instrument(span)
        .await
    }

    async fn here(
        &self,
        mut req: HttpRequest,
        front: &Front,
        stale: Option<String>,
    ) -> HttpResponse {
        if let Front::Local(uid) = front {
            req.extensions_mut().insert(LocalAdmin { uid: *uid });
        }
        let mut svc = self.local.clone();
        let Ok(mut resp) = tonic::codegen::Service::call(&mut svc, req).await;
        if let Some(v) = stale.and_then(|why| HeaderValue::from_str(&why).ok()) {
            resp.headers_mut().insert(STALE_HEADER, v);
        }
        resp
    }

    /// Forwards a call to the leader, recording it here under the audit ID the
    /// leader's record of it will carry.
    async fn forward(&self, req: HttpRequest, front: &Front, addr: &str) -> HttpResponse {
        let started = std::time::Instant::now();
        let id = audit::new_id();
        let mut rec = audit::Record {
            time: audit::now(),
            audit_id: id.clone(),
            method: req
                .uri()
                .path()
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string(),
            forwarded_to: addr.to_string(),
            decision: "forward",
            rule: "a write goes to the leader, which decides".into(),
            ..Default::default()
        };
        match front {
            Front::Local(uid) => {
                rec.principal = uid.map_or("local-admin".into(), |u| format!("local uid {u}"))
            }
            Front::User { name, serial } => {
                rec.principal = format!("user {name}");
                rec.serial = serial.clone();
            }
        }
        (rec.kind, _) = audit::object_of(&rec.method, None);
        if let Err(s) = self.audit.admit() {
            return s.into_http();
        }
        let mut resp = self.forward_call(req, front, addr, &id).await;
        // An error before any message comes as headers only (a success's status
        // comes in the trailers, after the body this manager passes on).
        match Status::from_header_map(resp.headers()).filter(|s| s.code() != tonic::Code::Ok) {
            None => rec.outcome = "ok".into(),
            Some(s) => {
                rec.outcome = format!("{:?}", s.code());
                rec.error = s.message().to_string();
            }
        }
        rec.latency_us = started.elapsed().as_micros() as u64;
        let (max_bytes, keep) =
            audit::settings(self.view.current().cluster().and_then(|c| c.value.spec));
        if let Err(e) = self.audit.write(&rec, max_bytes, keep) {
            tracing::error!(error = e.message(), audit_id = %id, "a forwarded call's audit record was not written");
        }
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut()
                .entry(audit::AUDIT_ID_HEADER)
                .or_insert(v);
        }
        resp
    }

    async fn forward_call(
        &self,
        mut req: HttpRequest,
        front: &Front,
        addr: &str,
        audit_id: &str,
    ) -> HttpResponse {
        let who = match front {
            Front::Local(_) => HeaderValue::from_static(LOCAL_ADMIN),
            Front::User { name, serial } => {
                match HeaderValue::from_str(&format!("user {name} {serial}")) {
                    Ok(v) => v,
                    Err(_) => {
                        return Status::invalid_argument("a user name that is not text").into_http()
                    }
                }
            }
        };
        req.headers_mut().insert(FORWARDED_HEADER, who);
        if let Ok(v) = HeaderValue::from_str(audit_id) {
            req.headers_mut().insert(audit::AUDIT_ID_HEADER, v);
        }
        let unreachable = |why: String| {
            Status::unavailable(format!(
                "this manager is a follower and cannot reach the leader at {addr}: {why}"
            ))
            .into_http()
        };
        let mut channel = match self.leader.channel_to(addr) {
            Ok(c) => c,
            Err(why) => return unreachable(why),
        };
        // A channel must be ready before each call (it buffers requests).
        let sent = match std::future::poll_fn(|cx| {
            tonic::codegen::Service::<HttpRequest>::poll_ready(&mut channel, cx)
        })
        .await
        {
            Ok(()) => tonic::codegen::Service::call(&mut channel, req).await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(resp) => {
                // Read-your-writes on this node: wait (briefly) until this manager's copy
                // has what the leader had applied.
                let applied = resp
                    .headers()
                    .get(APPLIED_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if let Some(index) = applied {
                    self.view.wait_index(index, READ_YOUR_WRITES_WAIT).await;
                }
                resp
            }
            Err(e) => unreachable(shoal_proto::error_chain(&e)),
        }
    }
}

/// Where a call came in.
enum Front {
    /// The node's unix socket: its local administrator (by user ID, when known).
    Local(Option<u32>),
    /// A user over mTLS, by name and certificate serial.
    User { name: String, serial: String },
}

impl LeaderLink {
    /// The kept channel to the leader at `addr`, or a new one if the leader or this
    /// manager's certificate or roots changed.
    fn channel_to(&self, addr: &str) -> Result<Channel, String> {
        let generation = self.identity.generation();
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = kept
            .as_ref()
            .filter(|k| k.addr == addr && k.generation == generation)
        {
            return Ok(k.channel.clone());
        }
        let tls = self.identity.client_config().map_err(|e| e.to_string())?;
        let channel = (self.dial)(addr, tls, FORWARD_CONNECT_TIMEOUT)
            .map_err(|e| shoal_proto::error_chain(&e))?;
        tracing::debug!(leader = %addr, "a new channel to the leader for forwarded calls");
        *kept = Some(LeaderChannel {
            addr: addr.to_string(),
            generation,
            channel: channel.clone(),
        });
        Ok(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_control_call_is_declared_once_and_token_writes_go_to_the_leader() {
        let methods = crate::controlapi::roles::control_methods();
        for m in &methods {
            let declared = READS.contains(m) as u8 + LEADER.contains(m) as u8;
            assert_eq!(declared, 1, "{m} must be declared exactly once");
        }
        for m in READS.iter().chain(LEADER) {
            assert!(methods.contains(m), "{m} is not a control call");
        }
        assert_eq!(route("UpdateJoinToken"), Route::Leader);
        assert_eq!(route("GetJoinToken"), Route::Local);
        assert_eq!(route("SomethingNew"), Route::Leader);
    }

    static DIALS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    fn counting_dial(
        addr: &str,
        _tls: Arc<rustls::ClientConfig>,
        _timeout: Duration,
    ) -> Result<Channel, tonic::transport::Error> {
        DIALS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy())
    }

    #[tokio::test]
    async fn forwarded_calls_share_one_channel_until_the_leader_or_the_identity_changes() {
        use crate::security::rootca::{CaHandle, CaState};
        use shoal_pki::{ClusterId, NodeId, NodeKey, Role, RootCa};
        let cluster_id = ClusterId::generate();
        let root = RootCa::generate(Duration::from_secs(86400)).unwrap();
        let ca = CaState::from_cluster(
            &shoal_proto::objects::Cluster {
                id: cluster_id.to_string(),
                root_ca: Some(shoal_proto::objects::RootCa {
                    cert_pem: root.cert_pem(),
                    key_pem: root.key_pem(),
                    digest: root.digest(),
                }),
                ..Default::default()
            },
            &cluster_id,
        )
        .unwrap();
        let issue = || {
            let key = NodeKey::generate().unwrap();
            let cert = root
                .sign_node(
                    &key.csr_der().unwrap(),
                    &NodeId::generate(),
                    Role::Manager,
                    &cluster_id,
                    Duration::from_secs(3600),
                )
                .unwrap();
            (cert.cert_der, key.pkcs8_der())
        };
        let (cert, key) = issue();
        let identity = IdentityHandle::new(CaHandle::new(ca), &cert, &key).unwrap();
        let link = LeaderLink {
            identity: identity.clone(),
            dial: counting_dial,
            kept: Mutex::default(),
        };
        let dials = || DIALS.load(std::sync::atomic::Ordering::SeqCst);
        for _ in 0..5 {
            link.channel_to("10.9.0.1:4377").unwrap();
        }
        assert_eq!(dials(), 1, "one channel for five calls to the same leader");
        link.channel_to("10.9.0.2:4377").unwrap();
        assert_eq!(dials(), 2, "a new leader gets a new channel");
        link.channel_to("10.9.0.2:4377").unwrap();
        assert_eq!(dials(), 2);
        // A renewal: the kept channel presents the old certificate, so it is replaced.
        let (cert, key) = issue();
        identity.set(&cert, &key).unwrap();
        link.channel_to("10.9.0.2:4377").unwrap();
        assert_eq!(dials(), 3, "a renewed certificate gets a new channel");
    }
}

//! The control API as a gRPC service. Each call's caller is checked here, once, in
//! [`ControlService::serve`], before any handler runs: every handler of [`ControlApi`]
//! takes the [`ControlCaller`] that check made, and nothing else can make one. Each call
//! runs in a `control` span naming the call and its caller.

use super::roles::Limits;
use super::secrets::Kind;
use super::ControlApi;
use super::ControlError;
use crate::audit;
use crate::security::auth::{authorize, Caller};
use shoal_pki::Role;
use shoal_proto::control::control_server::Control;
use shoal_proto::control::{
    CaStatus, ClusterInfo, CreateNetworkRequest, CreateSecretRequest, CreateServiceRequest,
    CreateTaskRequest, DemoteNodeRequest, GetBackupRequest, GetBackupResponse, GetCaRequest,
    GetClusterInfoRequest, GetJoinTokenRequest, GetJoinTokenResponse, GetNetworkRequest,
    GetNodeRequest, GetSecretRequest, GetServiceRequest, GetTaskRequest, GetUnlockKeyRequest,
    GetUnlockKeyResponse, ListNetworksRequest, ListNetworksResponse, ListNodesRequest,
    ListNodesResponse, ListSecretsRequest, ListSecretsResponse, ListServicesRequest,
    ListServicesResponse, ListTasksRequest, ListTasksResponse, NodeView, PromoteNodeRequest,
    RemoveNetworkRequest, RemoveNetworkResponse, RemoveNodeRequest, RemoveNodeResponse,
    RemoveSecretRequest, RemoveSecretResponse, RemoveServiceRequest, RemoveServiceResponse,
    RemoveTaskRequest, RemoveTaskResponse, RevokeCertificateRequest, RevokeCertificateResponse,
    RotateCaRequest, SecretView, TaskLogsMessage, TaskLogsRequest, UpdateClusterRequest,
    UpdateNodeRequest, UpdateSecretRequest, UpdateServiceRequest,
};
use shoal_proto::objects::{Network, Service, Task};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// The control API: one implementation, whatever the transport. Its callers are a
/// manager over mTLS (checked like every node call) or the node's local administrator on
/// the unix socket.
pub struct ControlService(pub ControlApi);

const MANAGERS: &[Role] = &[Role::Manager];

/// Marks a request that came in on the node's unix socket. Only the socket's server
/// inserts it; nothing that arrives over the network can.
#[derive(Clone, Copy, Debug)]
pub struct LocalAdmin {
    /// The peer's user ID (`SO_PEERCRED`), for the audit log.
    pub uid: Option<u32>,
}

/// The header a follower adds when it forwards its local administrator's call to the
/// leader. Believed only from a manager certificate, and never forwarded again.
pub const FORWARDED_HEADER: &str = "shoal-forwarded-for";

/// Who is calling the control API, checked. Only [`ControlCaller::check`] makes one (its
/// field is private to this module), so a handler that takes one cannot run unchecked.
pub struct ControlCaller {
    who: Who,
    /// The call being made.
    call: &'static str,
    /// A user's role and scope (none: the local administrator, or a manager).
    limits: Option<Limits>,
    /// The first object the call looked up or made, for its audit record.
    touched: Arc<Mutex<Option<Touched>>>,
}

/// An object a call is about, as its audit record names it.
#[derive(Clone, Debug, Default)]
pub struct Touched {
    pub kind: String,
    pub id: String,
    pub name: String,
    pub stack: String,
}

/// See [`ControlCaller::who`].
pub enum Who {
    /// A user with a certificate of this cluster's CA, checked against the store's
    /// record of them (for now only administrators get this far).
    User(crate::security::auth::UserCaller),
    /// A user whose call another manager (a follower) forwarded to this one: `by` is
    /// that manager, checked like any caller; the user is checked here against this
    /// manager's record of them.
    ForwardedUser {
        by: Caller,
        name: String,
        serial: String,
    },
    /// Whoever may open the node's unix socket (root or the socket's group), by user ID.
    LocalAdmin { uid: Option<u32> },
    /// A manager node, verified and checked like every node call.
    Node(Caller),
    /// The local administrator of another manager, whose call that manager (a follower)
    /// forwarded to this one; `by` is the forwarding manager, checked like any caller.
    Forwarded { by: Caller },
}

impl ControlCaller {
    /// The caller of a control API request: the local administrator, or a manager whose
    /// certificate passes every check. A request with neither is refused.
    fn check<T>(req: &Request<T>, call: &'static str) -> Result<ControlCaller, Status> {
        if let Some(local) = req.extensions().get::<LocalAdmin>() {
            return Ok(ControlCaller {
                who: Who::LocalAdmin { uid: local.uid },
                call,
                limits: None,
                touched: Default::default(),
            });
        }
        let peer = req.extensions().get::<crate::security::auth::PeerInfo>();
        if peer.is_some_and(|p| p.user.is_some() && p.identity.is_none()) {
            let user = crate::security::auth::authorize_user(req, call)?;
            let limits = Limits {
                name: user.id.name().to_string(),
                grant: user.grant.clone(),
            };
            limits.check_role(call)?;
            return Ok(ControlCaller {
                who: Who::User(user),
                call,
                limits: Some(limits),
                touched: Default::default(),
            });
        }
        let caller = authorize(req, call, MANAGERS)?;
        let mut limits = None;
        let who = match req.metadata().get(FORWARDED_HEADER).map(|v| v.to_str()) {
            None => Who::Node(caller),
            Some(Ok(LOCAL_ADMIN)) => Who::Forwarded { by: caller },
            Some(Ok(v)) => {
                let Some((name, serial)) = parse_forwarded_user(v) else {
                    return Err(Status::invalid_argument(format!(
                        "{call} refused: {FORWARDED_HEADER} {v:?} names no caller"
                    )));
                };
                let grant = caller
                    .access()
                    .check_user_serial(name, serial)
                    .map_err(|r| r.status_for(call, name, serial))?;
                let l = Limits {
                    name: name.to_string(),
                    grant,
                };
                l.check_role(call)?;
                limits = Some(l);
                Who::ForwardedUser {
                    by: caller,
                    name: name.to_string(),
                    serial: serial.to_string(),
                }
            }
            Some(Err(_)) => {
                return Err(Status::invalid_argument(format!(
                    "{call} refused: {FORWARDED_HEADER} is not text"
                )))
            }
        };
        Ok(ControlCaller {
            who,
            call,
            limits,
            touched: Default::default(),
        })
    }

    /// The call being made.
    pub fn call(&self) -> &'static str {
        self.call
    }

    /// Fills in who the caller is in an audit record, and the rule that let them call.
    fn describe(&self, rec: &mut audit::Record) {
        rec.decision = "allow";
        let user_rule = |l: Option<&Limits>| match l {
            Some(l) => format!(
                "role {} (scope {}) may make {}",
                super::users::role_name(l.grant.role),
                l.grant.scopes.join(","),
                self.call
            ),
            None => String::new(),
        };
        match &self.who {
            Who::LocalAdmin { uid } => {
                rec.principal = local_principal(*uid);
                rec.rule = "the local administrator (the node's socket)".into();
            }
            Who::User(u) => {
                rec.principal = format!("user {}", u.id.name());
                rec.serial = u.id.serial().to_string();
                rec.rule = user_rule(self.limits.as_ref());
            }
            Who::ForwardedUser { by, name, serial } => {
                rec.principal = format!("user {name}");
                rec.serial = serial.clone();
                rec.forwarded_by = by.node_id().to_string();
                rec.rule = user_rule(self.limits.as_ref());
            }
            Who::Node(c) => {
                rec.principal = format!("node {}", c.node_id());
                rec.rule = "a manager's certificate".into();
            }
            Who::Forwarded { by } => {
                rec.principal = format!("local-admin of {}", by.node_id());
                rec.forwarded_by = by.node_id().to_string();
                rec.rule = "the local administrator of a manager".into();
            }
        }
    }

    /// A user's role and scope; none for the local administrator and managers.
    pub fn limits(&self) -> Option<&Limits> {
        self.limits.as_ref()
    }

    /// Whether the caller may see an object with these labels (lists leave out the
    /// others).
    pub fn sees(&self, labels: &HashMap<String, String>) -> bool {
        self.limits.as_ref().is_none_or(|l| l.sees(labels))
    }

    /// Notes the object the call is about (the first one it names) for its record.
    pub fn touch(&self, kind: &str, id: &str, name: &str, labels: &HashMap<String, String>) {
        let mut t = self.touched.lock().unwrap_or_else(|e| e.into_inner());
        if t.is_none() {
            *t = Some(Touched {
                kind: kind.to_string(),
                id: id.to_string(),
                name: name.to_string(),
                stack: super::roles::stack_of(labels)
                    .unwrap_or_default()
                    .to_string(),
            });
        }
    }

    /// Refuses an object (by kind, ID, name and labels) outside the caller's scope.
    pub fn in_scope(
        &self,
        kind: &str,
        id: &str,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<(), ControlError> {
        self.touch(kind, id, name, labels);
        self.limits
            .as_ref()
            .map_or(Ok(()), |l| l.in_scope(self.call, kind, name, labels))
    }

    /// Refuses a new or renamed object outside the caller's scope or misnamed for it.
    pub fn may_name(
        &self,
        kind: &str,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<(), ControlError> {
        self.touch(kind, "", name, labels);
        self.limits
            .as_ref()
            .map_or(Ok(()), |l| l.may_name(self.call, kind, name, labels))
    }

    /// Refuses a spec that reaches the host to a caller whose role does not allow it.
    pub fn may_reach_host(
        &self,
        kind: &str,
        name: &str,
        spec: &shoal_proto::objects::ServiceSpec,
        nodes: &[shoal_proto::objects::Node],
    ) -> Result<(), ControlError> {
        self.limits.as_ref().map_or(Ok(()), |l| {
            l.may_reach_host(self.call, kind, name, spec, nodes)
        })
    }

    /// The value of [`FORWARDED_HEADER`] that forwards this caller's call to another
    /// manager (which checks the user again against its own record).
    pub fn forwarded_as(&self) -> String {
        match &self.who {
            Who::User(u) => format!("user {} {}", u.id.name(), u.id.serial()),
            Who::ForwardedUser { name, serial, .. } => format!("user {name} {serial}"),
            _ => LOCAL_ADMIN.to_string(),
        }
    }

    pub fn who(&self) -> &Who {
        &self.who
    }

    /// The node whose certificate made the call (none for the local administrator).
    pub fn node(&self) -> Option<&Caller> {
        match &self.who {
            Who::LocalAdmin { .. } | Who::User(_) => None,
            Who::Node(c) | Who::Forwarded { by: c } | Who::ForwardedUser { by: c, .. } => Some(c),
        }
    }
}

impl std::fmt::Display for ControlCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.who {
            Who::LocalAdmin { .. } => write!(f, "local-admin"),
            Who::Node(c) => write!(f, "node {}", c.node_id()),
            Who::Forwarded { by } => write!(f, "local-admin of {}", by.node_id()),
            Who::User(u) => write!(f, "user {}", u.id.name()),
            Who::ForwardedUser { by, name, .. } => {
                write!(f, "user {name} via {}", by.node_id())
            }
        }
    }
}

/// The [`FORWARDED_HEADER`] value of the local administrator's forwarded calls.
pub const LOCAL_ADMIN: &str = "local-admin";

/// `user NAME SERIAL`, as [`ControlCaller::forwarded_as`] writes it.
fn parse_forwarded_user(v: &str) -> Option<(&str, &str)> {
    let mut parts = v.strip_prefix("user ")?.split(' ');
    let (name, serial) = (parts.next()?, parts.next()?);
    (parts.next().is_none() && !name.is_empty() && !serial.is_empty()).then_some((name, serial))
}

/// `out`, cut the moment its caller would be refused a new call: a node (or the
/// manager that forwarded the call) by its certificate, a user by the store's record of
/// them (removed, certificate revoked or expired, role narrowed).
fn guarded<T: Send + 'static>(
    c: &ControlCaller,
    stack: Option<String>,
    out: tokio::sync::mpsc::Receiver<Result<T, Status>>,
) -> tokio::sync::mpsc::Receiver<Result<T, Status>> {
    let call = c.call;
    use crate::security::auth::{guard, StreamUser};
    let out = match c.node() {
        Some(node) => guard(node.clone(), out),
        None => out,
    };
    let user = |name: String, serial: String, access: &std::sync::Arc<_>| StreamUser {
        name,
        serial,
        call,
        access: std::sync::Arc::clone(access),
        allows: {
            let stack = stack.clone();
            Box::new(move |g| Limits::still_allows(g, call, stack.as_deref()))
        },
    };
    match c.who() {
        Who::User(u) => guard(
            user(
                u.id.name().to_string(),
                u.id.serial().to_string(),
                u.access(),
            ),
            out,
        ),
        Who::ForwardedUser { by, name, serial } => {
            guard(user(name.clone(), serial.clone(), by.access()), out)
        }
        _ => out,
    }
}

impl ControlService {
    /// Serves `call` as [`ControlService::audited`] does, recording its request.
    async fn serve<T, R, F, Fut>(
        &self,
        req: Request<T>,
        call: &'static str,
        handler: F,
    ) -> Result<Response<R>, Status>
    where
        T: prost::Message,
        F: FnOnce(ControlApi, ControlCaller, T) -> Fut,
        Fut: Future<Output = Result<R, Status>>,
    {
        let body = req.get_ref().encode_to_vec();
        self.audited(req, call, Some(body), handler).await
    }

    /// Checks the caller of `call`, makes sure the audit log has room for its record
    /// (else the call is refused before it runs), runs the handler with the caller in
    /// the call's span, and records the call: who, what, the decision and the rule that
    /// made it, the outcome and the latency. The audit ID goes back in the response's
    /// header, or in the error's metadata.
    async fn audited<T, R, F, Fut>(
        &self,
        req: Request<T>,
        call: &'static str,
        body: Option<Vec<u8>>,
        handler: F,
    ) -> Result<Response<R>, Status>
    where
        F: FnOnce(ControlApi, ControlCaller, T) -> Fut,
        Fut: Future<Output = Result<R, Status>>,
    {
        let started = std::time::Instant::now();
        let mut rec = audit::Record {
            time: audit::now(),
            method: call.to_string(),
            peer: crate::security::auth::remote_addr(&req)
                .map(|a| a.to_string())
                .unwrap_or_default(),
            ..Default::default()
        };
        let forwarded_id = req
            .metadata()
            .get(audit::AUDIT_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| audit::is_id(v))
            .map(str::to_string);
        let checked = ControlCaller::check(&req, call);
        // An ID the forwarding manager chose is kept: its record and this one share it.
        rec.audit_id = match (&checked, forwarded_id) {
            (Ok(c), Some(id)) if c.node().is_some() => id,
            _ => audit::new_id(),
        };
        let api = self.0.clone();
        let log = api.audit().clone();
        if let Err(s) = log.admit() {
            return Err(tagged(s, &rec.audit_id));
        }
        // The request read by its schema only when the record needs it (a write's record,
        // or an object no lookup named): a read that looked its object up skips it.
        let parsed = std::sync::OnceLock::new();
        let request =
            || parsed.get_or_init(|| body.as_deref().and_then(|b| audit::request_json(call, b)));
        let result = match checked {
            Err(s) => {
                (rec.principal, rec.serial, rec.forwarded_by) = principal_of(&req);
                // A refusal names the object too, when the request names one.
                let (kind, name) = audit::object_of(call, request().as_ref());
                let prefix = format!("{call} refused:");
                let s = match s.message().strip_prefix(&prefix) {
                    Some(rest) if !name.is_empty() && s.code() == tonic::Code::PermissionDenied => {
                        Status::permission_denied(format!("{call} ({kind} {name}) refused:{rest}"))
                    }
                    _ => s,
                };
                rec.decision = "deny";
                rec.rule = s.message().to_string();
                Err(s)
            }
            Ok(caller) => {
                caller.describe(&mut rec);
                let touched = caller.touched.clone();
                let span = tracing::debug_span!("control", call, caller = %caller);
                let r = async move {
                    let r = handler(api, caller, req.into_inner()).await;
                    if let Err(e) = &r {
                        tracing::debug!(code = ?e.code(), error = e.message(), "refused");
                    }
                    r
                }
                .instrument(span)
                .await;
                if let Some(t) = touched.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    (rec.kind, rec.object_id, rec.object, rec.stack) =
                        (t.kind, t.id, t.name, t.stack);
                }
                if let Err(e) = &r {
                    if e.code() == tonic::Code::PermissionDenied {
                        rec.decision = "deny";
                        rec.rule = e.message().to_string();
                    }
                }
                r
            }
        };
        if rec.kind.is_empty() {
            (rec.kind, rec.object) = audit::object_of(call, request().as_ref());
        }
        // What a viewer may call only reads: the request of anything else is recorded.
        if super::roles::needed(call) != shoal_proto::objects::UserRole::Viewer {
            rec.request = request().clone();
        }
        match &result {
            Ok(_) => rec.outcome = "ok".into(),
            Err(e) => {
                rec.outcome = format!("{:?}", e.code());
                if rec.decision != "deny" {
                    rec.error = e.message().to_string();
                }
            }
        }
        rec.latency_us = started.elapsed().as_micros() as u64;
        let (max_bytes, keep) = self.0.audit_settings();
        if let Err(e) = log.write(&rec, max_bytes, keep) {
            // Room was reserved before the call ran: this is an I/O error.
            tracing::error!(error = e.message(), audit_id = %rec.audit_id, "a control call's audit record was not written");
        }
        match result {
            Ok(r) => {
                let mut resp = Response::new(r);
                if let Ok(v) = rec.audit_id.parse() {
                    resp.metadata_mut().insert(audit::AUDIT_ID_HEADER, v);
                }
                Ok(resp)
            }
            Err(s) => Err(tagged(s, &rec.audit_id)),
        }
    }
}

/// `s`, carrying the call's audit ID.
fn tagged(mut s: Status, id: &str) -> Status {
    if let Ok(v) = id.parse() {
        s.metadata_mut().insert(audit::AUDIT_ID_HEADER, v);
    }
    s
}

/// Who made a call that was refused before a caller was made (principal, certificate
/// serial, forwarding manager): the certificate the listener verified and whom a
/// forwarding manager names, or the socket's peer.
fn principal_of<T>(req: &Request<T>) -> (String, String, String) {
    if let Some(l) = req.extensions().get::<LocalAdmin>() {
        return (local_principal(l.uid), String::new(), String::new());
    }
    let peer = req.extensions().get::<crate::security::auth::PeerInfo>();
    match peer.map(|p| (&p.user, &p.identity)) {
        Some((Some(u), _)) => (
            format!("user {}", u.name()),
            u.serial().to_string(),
            String::new(),
        ),
        Some((None, Some(n))) => {
            let by = n.node_id().to_string();
            match req
                .metadata()
                .get(FORWARDED_HEADER)
                .and_then(|v| v.to_str().ok())
            {
                Some(LOCAL_ADMIN) => (format!("local-admin of {by}"), String::new(), by),
                Some(v) => match parse_forwarded_user(v) {
                    Some((name, serial)) => (format!("user {name}"), serial.to_string(), by),
                    None => (format!("node {by}"), String::new(), String::new()),
                },
                None => (format!("node {by}"), String::new(), String::new()),
            }
        }
        _ => ("anonymous".into(), String::new(), String::new()),
    }
}

fn local_principal(uid: Option<u32>) -> String {
    match uid {
        Some(uid) => format!("local uid {uid}"),
        None => "local-admin".into(),
    }
}

pub type TaskLogsStream = tokio_stream::wrappers::ReceiverStream<Result<TaskLogsMessage, Status>>;

#[tonic::async_trait]
impl Control for ControlService {
    type TaskLogsStream = TaskLogsStream;
    type TaskExecStream =
        tokio_stream::wrappers::ReceiverStream<Result<shoal_proto::dispatcher::ExecOutput, Status>>;

    async fn task_exec(
        &self,
        req: Request<tonic::Streaming<shoal_proto::dispatcher::ExecInput>>,
    ) -> Result<Response<Self::TaskExecStream>, Status> {
        // The command comes on the stream: the record names the task it runs in.
        self.audited(req, "TaskExec", None, |api, c, mut input| async move {
            let start = input
                .message()
                .await?
                .and_then(|m| m.start)
                .ok_or_else(|| Status::invalid_argument("an exec starts with what to run"))?;
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            let (out, stack) = api.task_exec(&c, start, rx).await?;
            // The user's input, until they go (the end of their stream ends the exec).
            tokio::spawn(async move {
                while let Ok(Some(m)) = input.message().await {
                    if tx.send(m).await.is_err() {
                        break;
                    }
                }
            });
            let out = guarded(&c, stack, out);
            Ok(tokio_stream::wrappers::ReceiverStream::new(out))
        })
        .await
    }

    async fn create_service(
        &self,
        req: Request<CreateServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        self.serve(req, "CreateService", |api, c, r| async move {
            Ok(api.create_service(&c, r.spec.unwrap_or_default()).await?)
        })
        .await
    }
    async fn update_service(
        &self,
        req: Request<UpdateServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        self.serve(req, "UpdateService", |api, c, r| async move {
            Ok(api.update_service(&c, r).await?)
        })
        .await
    }
    async fn get_service(
        &self,
        req: Request<GetServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        self.serve(req, "GetService", |api, c, r| async move {
            Ok(api.get_service(&c, &r.reference)?.value)
        })
        .await
    }
    async fn list_services(
        &self,
        req: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        self.serve(req, "ListServices", |api, c, _| async move {
            Ok(api.list_services(&c)?)
        })
        .await
    }
    async fn remove_service(
        &self,
        req: Request<RemoveServiceRequest>,
    ) -> Result<Response<RemoveServiceResponse>, Status> {
        self.serve(req, "RemoveService", |api, c, r| async move {
            api.remove_service(&c, &r.reference).await?;
            Ok(RemoveServiceResponse {})
        })
        .await
    }
    async fn create_network(
        &self,
        req: Request<CreateNetworkRequest>,
    ) -> Result<Response<Network>, Status> {
        self.serve(req, "CreateNetwork", |api, c, r| async move {
            Ok(api.create_network(&c, r.spec.unwrap_or_default()).await?)
        })
        .await
    }
    async fn list_networks(
        &self,
        req: Request<ListNetworksRequest>,
    ) -> Result<Response<ListNetworksResponse>, Status> {
        self.serve(req, "ListNetworks", |api, c, _| async move {
            Ok(ListNetworksResponse {
                networks: api.list_networks(&c)?,
            })
        })
        .await
    }
    async fn get_network(
        &self,
        req: Request<GetNetworkRequest>,
    ) -> Result<Response<Network>, Status> {
        self.serve(req, "GetNetwork", |api, c, r| async move {
            Ok(api.get_network(&c, &r.reference)?)
        })
        .await
    }
    async fn remove_network(
        &self,
        req: Request<RemoveNetworkRequest>,
    ) -> Result<Response<RemoveNetworkResponse>, Status> {
        self.serve(req, "RemoveNetwork", |api, c, r| async move {
            api.remove_network(&c, &r.reference).await?;
            Ok(RemoveNetworkResponse {})
        })
        .await
    }
    async fn create_secret(
        &self,
        req: Request<CreateSecretRequest>,
    ) -> Result<Response<SecretView>, Status> {
        self.serve(req, "CreateSecret", |api, c, r| async move {
            let kind = Kind::parse(&r.kind)?;
            Ok(api
                .create_secret(&c, kind, r.spec.unwrap_or_default(), r.data)
                .await?)
        })
        .await
    }
    async fn update_secret(
        &self,
        req: Request<UpdateSecretRequest>,
    ) -> Result<Response<SecretView>, Status> {
        self.serve(req, "UpdateSecret", |api, c, r| async move {
            let kind = Kind::parse(&r.kind)?;
            Ok(api
                .update_secret(&c, kind, &r.reference, r.data, r.only_if_changed)
                .await?)
        })
        .await
    }
    async fn list_secrets(
        &self,
        req: Request<ListSecretsRequest>,
    ) -> Result<Response<ListSecretsResponse>, Status> {
        self.serve(req, "ListSecrets", |api, c, r| async move {
            let kind = Kind::parse(&r.kind)?;
            Ok(ListSecretsResponse {
                secrets: api.list_secrets(&c, kind)?,
            })
        })
        .await
    }
    async fn get_secret(
        &self,
        req: Request<GetSecretRequest>,
    ) -> Result<Response<SecretView>, Status> {
        self.serve(req, "GetSecret", |api, c, r| async move {
            let kind = Kind::parse(&r.kind)?;
            Ok(api.get_secret(&c, kind, &r.reference)?)
        })
        .await
    }
    async fn remove_secret(
        &self,
        req: Request<RemoveSecretRequest>,
    ) -> Result<Response<RemoveSecretResponse>, Status> {
        self.serve(req, "RemoveSecret", |api, c, r| async move {
            let kind = Kind::parse(&r.kind)?;
            api.remove_secret(&c, kind, &r.reference).await?;
            Ok(RemoveSecretResponse {})
        })
        .await
    }
    async fn update_node(
        &self,
        req: Request<UpdateNodeRequest>,
    ) -> Result<Response<NodeView>, Status> {
        self.serve(req, "UpdateNode", |api, c, r| async move {
            Ok(api.update_node(&c, r).await?)
        })
        .await
    }
    async fn update_cluster(
        &self,
        req: Request<UpdateClusterRequest>,
    ) -> Result<Response<ClusterInfo>, Status> {
        self.serve(req, "UpdateCluster", |api, c, r| async move {
            Ok(api.update_cluster(&c, r).await?)
        })
        .await
    }
    async fn get_backup(
        &self,
        req: Request<GetBackupRequest>,
    ) -> Result<Response<GetBackupResponse>, Status> {
        self.serve(
            req,
            "GetBackup",
            |api, c, _| async move { api.backup(&c).await },
        )
        .await
    }
    async fn get_unlock_key(
        &self,
        req: Request<GetUnlockKeyRequest>,
    ) -> Result<Response<GetUnlockKeyResponse>, Status> {
        self.serve(req, "GetUnlockKey", |api, c, _| async move {
            Ok(GetUnlockKeyResponse {
                unlock_key: api.unlock_key(&c)?,
            })
        })
        .await
    }
    async fn revoke_certificate(
        &self,
        req: Request<RevokeCertificateRequest>,
    ) -> Result<Response<RevokeCertificateResponse>, Status> {
        self.serve(req, "RevokeCertificate", |api, c, r| async move {
            if r.user.is_empty() {
                api.revoke_certificate(&c, &r.node, &r.serial).await?;
            } else {
                api.revoke_user_certificate(&c, &r.user, &r.serial).await?;
            }
            Ok(RevokeCertificateResponse {})
        })
        .await
    }
    async fn get_ca(&self, req: Request<GetCaRequest>) -> Result<Response<CaStatus>, Status> {
        self.serve(
            req,
            "GetCa",
            |api, c, _| async move { Ok(api.ca_status(&c)?) },
        )
        .await
    }
    async fn rotate_ca(&self, req: Request<RotateCaRequest>) -> Result<Response<CaStatus>, Status> {
        self.serve(req, "RotateCa", |api, c, r| async move {
            Ok(api.rotate_ca(&c, r.force, &r.cert_pem, &r.key_pem).await?)
        })
        .await
    }
    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        self.serve(req, "RemoveNode", |api, c, r| async move {
            api.remove_node(&c, &r.reference, r.force).await?;
            Ok(RemoveNodeResponse {})
        })
        .await
    }
    async fn demote_node(
        &self,
        req: Request<DemoteNodeRequest>,
    ) -> Result<Response<NodeView>, Status> {
        self.serve(req, "DemoteNode", |api, c, r| async move {
            Ok(api.demote_node(&c, &r.reference).await?)
        })
        .await
    }
    async fn promote_node(
        &self,
        req: Request<PromoteNodeRequest>,
    ) -> Result<Response<NodeView>, Status> {
        self.serve(req, "PromoteNode", |api, c, r| async move {
            Ok(api.promote_node(&c, &r.reference).await?)
        })
        .await
    }
    async fn create_task(&self, req: Request<CreateTaskRequest>) -> Result<Response<Task>, Status> {
        self.serve(req, "CreateTask", |api, c, r| async move {
            Ok(api.create_task(&c, r).await?)
        })
        .await
    }
    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        self.serve(req, "ListTasks", |api, c, r| async move {
            Ok(api.list_tasks(&c, &r.node, &r.service_id)?)
        })
        .await
    }
    async fn get_task(&self, req: Request<GetTaskRequest>) -> Result<Response<Task>, Status> {
        self.serve(req, "GetTask", |api, c, r| async move {
            Ok(api.get_task(&c, &r.reference)?)
        })
        .await
    }
    async fn remove_task(
        &self,
        req: Request<RemoveTaskRequest>,
    ) -> Result<Response<RemoveTaskResponse>, Status> {
        self.serve(req, "RemoveTask", |api, c, r| async move {
            api.remove_task(&c, &r.reference).await?;
            Ok(RemoveTaskResponse {})
        })
        .await
    }
    async fn task_logs(
        &self,
        req: Request<TaskLogsRequest>,
    ) -> Result<Response<TaskLogsStream>, Status> {
        self.serve(req, "TaskLogs", |api, c, r| async move {
            let (rx, stack) = api.task_logs(&c, &r.reference, r.follow, r.tail).await?;
            // A node's stream is cut as soon as that node would be refused; a user's,
            // as soon as their role or scope no longer covers the task.
            let rx = guarded(&c, stack, rx);
            Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
        })
        .await
    }
    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        self.serve(req, "ListNodes", |api, c, _| async move {
            Ok(ListNodesResponse {
                nodes: api.list_nodes(&c)?,
            })
        })
        .await
    }
    async fn get_node(&self, req: Request<GetNodeRequest>) -> Result<Response<NodeView>, Status> {
        self.serve(req, "GetNode", |api, c, r| async move {
            Ok(api.get_node(&c, &r.reference)?)
        })
        .await
    }
    async fn create_user(
        &self,
        req: Request<shoal_proto::control::CreateUserRequest>,
    ) -> Result<Response<shoal_proto::control::UserTokenResponse>, Status> {
        self.serve(req, "CreateUser", |api, c, r| async move {
            Ok(api.create_user(&c, r).await?)
        })
        .await
    }
    async fn list_users(
        &self,
        req: Request<shoal_proto::control::ListUsersRequest>,
    ) -> Result<Response<shoal_proto::control::ListUsersResponse>, Status> {
        self.serve(req, "ListUsers", |api, _c, _r| async move {
            Ok(shoal_proto::control::ListUsersResponse {
                users: api.list_users()?,
            })
        })
        .await
    }
    async fn get_user(
        &self,
        req: Request<shoal_proto::control::GetUserRequest>,
    ) -> Result<Response<shoal_proto::control::UserView>, Status> {
        self.serve(req, "GetUser", |api, _c, r| async move {
            Ok(api.get_user(&r.name)?)
        })
        .await
    }
    async fn update_user(
        &self,
        req: Request<shoal_proto::control::UpdateUserRequest>,
    ) -> Result<Response<shoal_proto::control::UserView>, Status> {
        self.serve(req, "UpdateUser", |api, c, r| async move {
            Ok(api.update_user(&c, r).await?)
        })
        .await
    }
    async fn remove_user(
        &self,
        req: Request<shoal_proto::control::RemoveUserRequest>,
    ) -> Result<Response<shoal_proto::control::RemoveUserResponse>, Status> {
        self.serve(req, "RemoveUser", |api, c, r| async move {
            Ok(shoal_proto::control::RemoveUserResponse {
                revoked: api.remove_user(&c, &r.name).await?,
            })
        })
        .await
    }
    async fn new_user_token(
        &self,
        req: Request<shoal_proto::control::NewUserTokenRequest>,
    ) -> Result<Response<shoal_proto::control::UserTokenResponse>, Status> {
        self.serve(req, "NewUserToken", |api, c, r| async move {
            Ok(api.new_user_token(&c, r).await?)
        })
        .await
    }
    async fn get_join_token(
        &self,
        req: Request<GetJoinTokenRequest>,
    ) -> Result<Response<GetJoinTokenResponse>, Status> {
        self.serve(req, "GetJoinToken", |api, c, r| async move {
            if r.rotate || r.ttl_secs > 0 || r.max_uses > 0 {
                return Err(Status::invalid_argument(
                    "GetJoinToken only reads: rotating a token or making a limited one is UpdateJoinToken ('shoal join-token --rotate|--ttl|--max-uses')",
                ));
            }
            Ok(api.join_token_req(&c, r).await?)
        })
        .await
    }
    async fn update_join_token(
        &self,
        req: Request<GetJoinTokenRequest>,
    ) -> Result<Response<GetJoinTokenResponse>, Status> {
        self.serve(req, "UpdateJoinToken", |api, c, r| async move {
            Ok(api.join_token_req(&c, r).await?)
        })
        .await
    }
    async fn get_cluster_info(
        &self,
        req: Request<GetClusterInfoRequest>,
    ) -> Result<Response<ClusterInfo>, Status> {
        self.serve(req, "GetClusterInfo", |api, c, _| async move {
            Ok(api.cluster_info(&c)?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_socket_mark_or_a_verified_certificate_makes_a_caller() {
        // Nothing: no connection info, no mark.
        let bare = Request::new(());
        let e = ControlCaller::check(&bare, "ListNodes").err().unwrap();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        // A forwarding header proves nothing on its own.
        let mut fwd = Request::new(());
        fwd.metadata_mut()
            .insert(FORWARDED_HEADER, "local-admin".parse().unwrap());
        let e = ControlCaller::check(&fwd, "RemoveNode").err().unwrap();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        assert!(e.message().contains("RemoveNode"), "{}", e.message());
        // The unix socket's mark (inserted by the socket's server, never by the wire).
        let mut local = Request::new(());
        local.extensions_mut().insert(LocalAdmin { uid: Some(0) });
        let c = ControlCaller::check(&local, "ListNodes").unwrap();
        assert!(matches!(c.who(), Who::LocalAdmin { uid: Some(0) }) && c.node().is_none());
        assert_eq!(c.to_string(), "local-admin");
        // A forwarded user's header, without a manager's certificate, proves nothing.
        let mut user = Request::new(());
        user.metadata_mut()
            .insert(FORWARDED_HEADER, "user alice 4f00".parse().unwrap());
        let e = ControlCaller::check(&user, "ListUsers").err().unwrap();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    }

    #[test]
    fn a_forwarded_user_is_named_exactly() {
        assert_eq!(
            parse_forwarded_user("user alice 4f00"),
            Some(("alice", "4f00"))
        );
        for bad in [
            "user alice",
            "user  4f00",
            "user alice 4f00 x",
            "alice 4f00",
            "local-admin",
        ] {
            assert_eq!(parse_forwarded_user(bad), None, "{bad}");
        }
    }
}

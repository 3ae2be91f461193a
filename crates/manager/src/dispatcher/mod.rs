//! The dispatcher: every node's heartbeat, and the liveness it implies.
//!
//! A node that heartbeats is Ready; one that misses three periods is Down. Beat times
//! are kept in memory (they change every few seconds, so they do not belong in the
//! replicated log); only state changes are written to the store. A new leader gives
//! every node a full grace period before judging it.

pub mod exec;
pub mod logs;
pub mod peers;
pub mod session;
pub mod status;

use crate::cluster::store_status;
use crate::security::auth::{authorize, remote_addr};
use crate::time::unix_now;
use crate::view::{ClusterView, Kind, State, Update};
use shoal_pki::Role;
use shoal_proto::dispatcher::dispatcher_server::Dispatcher as DispatcherRpc;
use shoal_proto::dispatcher::{
    HeartbeatRequest, HeartbeatResponse, PublishLogsMessage, PublishLogsResponse, SessionMessage,
    SessionRequest, UpdateTaskStatusRequest, UpdateTaskStatusResponse,
};
use shoal_proto::objects::Task;
use shoal_proto::objects::{Node, NodeState};
use shoal_store::{Batch, Expect, Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Heartbeats missed before a node is declared Down.
pub const GRACE_MULTIPLIER: u32 = 3;
/// A node whose session stream dropped (its connection closed: the daemon died, the
/// machine went away) is declared Down unless it opens a new session within this.
pub const SESSION_GRACE: Duration = Duration::from_secs(2);

/// Marks the heartbeat view stale when the liveness loop that keeps it ends.
struct BeatViewLive(Arc<Mutex<BeatView>>);

impl Drop for BeatViewLive {
    fn drop(&mut self) {
        if let Ok(mut v) = self.0.lock() {
            v.live = false;
        }
    }
}

#[derive(Clone)]
pub struct Dispatcher {
    store: Store,
    view: ClusterView,
    last_seen: Arc<Mutex<HashMap<String, Instant>>>,
    renew_pacer: Arc<Mutex<Pacer>>,
    status: status::StatusWriter,
    pub logs: Arc<logs::LogBroker>,
    /// Each node's open session, cancelled when a newer one replaces it.
    sessions: Arc<Mutex<HashMap<String, CancellationToken>>>,
    /// Nodes whose session dropped, and when: suspect until they open a new one.
    suspects: Arc<Mutex<HashMap<String, Instant>>>,
    /// What every heartbeat answers with (the period, the managers' addresses), kept
    /// up to date from the store's changes by the liveness loop: a heartbeat must not
    /// read (and decrypt) every node.
    beat_view: Arc<Mutex<BeatView>>,
    /// The WireGuard peers sessions tell their nodes of, kept by [`peers::run`].
    peers: Arc<tokio::sync::watch::Sender<peers::Peers>>,
    ca: crate::security::rootca::CaHandle,
    /// The term this manager leads in: sessions, heartbeat streams and log relays are
    /// served only within one and end with it.
    terms: crate::leader::Terms,
}

const ANY_NODE: &[Role] = &[Role::Manager, Role::Worker];

/// See [`Dispatcher::beat_view`].
#[derive(Default)]
struct BeatView {
    /// Set while the liveness loop keeps the view current.
    live: bool,
    /// The period nodes beat at ([`State::heartbeat_period`]).
    period: Duration,
    /// Manager node ID -> address.
    managers: std::collections::BTreeMap<String, String>,
    /// The nodes the store has Ready.
    ready: std::collections::HashSet<String>,
    /// Bumped whenever the period or the managers change: an answer made at one
    /// version need not be sent again while it holds.
    version: u64,
    /// Bumped at every reload of the view: stamps from before it are stale.
    generation: u64,
    /// Bumped at every change of a node: a heartbeat stream that saw the node at one
    /// stamp need not read it again while the stamp is the same.
    node_epochs: HashMap<String, u64>,
}

impl BeatView {
    fn load(&mut self, state: &State) {
        self.generation += 1;
        self.version += 1;
        self.node_epochs.clear();
        self.period = state.heartbeat_period();
        self.ready = state
            .values::<Node>()
            .filter(|n| n.state == NodeState::Ready as i32)
            .map(|n| n.id.clone())
            .collect();
        self.managers = state
            .values::<Node>()
            .filter(|n| crate::cluster::is_listed_manager(n))
            .map(|n| (n.id.clone(), n.addr.clone()))
            .collect();
    }

    /// Takes in one applied batch (a resync reloads the whole view).
    fn apply(&mut self, u: &Update) {
        let Some(nodes) = u.changed(Kind::Node) else {
            self.load(&u.state);
            return;
        };
        for id in nodes {
            self.apply_node(&u.state, id);
        }
        // The period follows the cluster's setting and the node count.
        let period = u.state.heartbeat_period();
        if period != self.period || u.touches(&[Kind::Cluster]) {
            self.period = period;
            self.version += 1;
        }
    }

    fn apply_node(&mut self, state: &State, id: &str) {
        self.touch(id);
        let node = state.get::<Node>(id).map(|n| &n.value);
        match node {
            Some(n) if n.state == NodeState::Ready as i32 => self.ready.insert(n.id.clone()),
            _ => self.ready.remove(id),
        };
        let changed = match node {
            Some(n) if crate::cluster::is_listed_manager(n) => {
                self.managers.insert(n.id.clone(), n.addr.clone()) != Some(n.addr.clone())
            }
            _ => self.managers.remove(id).is_some(),
        };
        if changed {
            self.version += 1;
        }
    }

    fn touch(&mut self, node_id: &str) {
        *self.node_epochs.entry(node_id.to_string()).or_default() += 1;
    }

    /// Where `node_id` stands in the view's history of node changes, while the view is
    /// kept current.
    fn stamp(&self, node_id: &str) -> Option<(u64, u64)> {
        self.live.then(|| {
            (
                self.generation,
                self.node_epochs.get(node_id).copied().unwrap_or(0),
            )
        })
    }
}

/// What a beat's answer is made of, cheap to compare with the last one a stream sent.
struct Answer {
    ca: Arc<crate::security::rootca::CaState>,
    /// The heartbeat view's version; `None` when the view is not kept current.
    view: Option<u64>,
    manager: bool,
    renew: bool,
}

impl Answer {
    /// Whether a node told `self` would learn nothing from being told `other`.
    fn same(&self, other: &Answer) -> bool {
        Arc::ptr_eq(&self.ca, &other.ca)
            && self.view.is_some()
            && self.view == other.view
            && self.manager == other.manager
            && !self.renew
            && !other.renew
    }
}

/// What a heartbeat stream last wrote or confirmed of its node: a beat that says the
/// same of a node that has not changed since reads and writes nothing.
struct BeatCache {
    req: HeartbeatRequest,
    remote_ip: Option<String>,
    stamp: (u64, u64),
    node: Node,
}

/// Nodes told to renew per second during a root rotation, so a large cluster does not
/// all renew in the same heartbeat period; the others are told on a later beat.
pub const ROTATION_RENEWALS_PER_SEC: u32 = 100;

/// A fixed one-second window counter.
#[derive(Default)]
struct Pacer {
    window: Option<Instant>,
    used: u32,
}

impl Pacer {
    fn admit(&mut self, now: Instant) -> bool {
        match self.window {
            Some(w) if now.duration_since(w) < Duration::from_secs(1) => {}
            _ => {
                self.window = Some(now);
                self.used = 0;
            }
        }
        if self.used < ROTATION_RENEWALS_PER_SEC {
            self.used += 1;
            true
        } else {
            false
        }
    }
}

impl Dispatcher {
    pub fn new(
        store: Store,
        view: ClusterView,
        ca: crate::security::rootca::CaHandle,
        terms: crate::leader::Terms,
    ) -> Self {
        Dispatcher {
            ca,
            view,
            status: status::StatusWriter::new(),
            store,
            last_seen: Arc::new(Mutex::new(HashMap::new())),
            renew_pacer: Arc::new(Mutex::new(Pacer::default())),
            logs: Arc::new(logs::LogBroker::default()),
            sessions: Arc::new(Mutex::new(HashMap::new())),
            suspects: Arc::new(Mutex::new(HashMap::new())),
            beat_view: Arc::new(Mutex::new(BeatView::default())),
            peers: Arc::new(tokio::sync::watch::Sender::new(Default::default())),
            terms,
        }
    }

    /// Keeps the WireGuard peer list current (on the leader), until cancelled.
    pub async fn run_peers(self, cancel: CancellationToken) {
        peers::run(self.view.clone(), self.peers.clone(), cancel).await
    }

    /// Sessions, heartbeats and reports are served by the leader, within its term; a
    /// follower points the node to the leader. The token is cancelled when the term ends.
    fn lead(&self) -> Result<CancellationToken, Status> {
        match &*self.terms.borrow() {
            Some(t) if self.store.is_leader() && !t.ended.is_cancelled() => Ok(t.ended.clone()),
            _ => Err(crate::cluster::not_leader(&self.store)),
        }
    }

    /// Registers a new session of `node_id`, ending the one it replaces.
    fn replace_session(&self, node_id: &str) -> CancellationToken {
        if let Ok(mut m) = self.suspects.lock() {
            m.remove(node_id);
        }
        let token = CancellationToken::new();
        if let Ok(mut m) = self.sessions.lock() {
            if let Some(old) = m.insert(node_id.to_string(), token.clone()) {
                old.cancel();
            }
        }
        token
    }

    fn beat(&self, node_id: &str) {
        if let Ok(mut m) = self.last_seen.lock() {
            match m.get_mut(node_id) {
                Some(t) => *t = Instant::now(),
                None => {
                    m.insert(node_id.to_string(), Instant::now());
                }
            }
        }
    }

    /// Writes `f`'s change to a node, retrying if another writer got there first.
    async fn update_node(
        &self,
        node_id: &str,
        f: impl Fn(&mut Node) -> bool,
    ) -> Result<Option<Node>, StoreError> {
        for _ in 0..5 {
            let Some(cur) = self.store.get::<Node>(node_id)? else {
                return Ok(None);
            };
            let mut node = cur.value.clone();
            if !f(&mut node) {
                return Ok(Some(node));
            }
            node.updated_at_unix = unix_now();
            let mut b = Batch::default();
            b.put(&node, Expect::Version(cur.version));
            match self.store.commit(b).await {
                Ok(_) => return Ok(Some(node)),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Raft(format!(
            "node {node_id} kept changing under the dispatcher"
        )))
    }

    /// Writes the task status nodes report, until cancelled. Runs on the leader.
    pub async fn run_status_writer(self, cancel: CancellationToken) {
        self.status.clone().run(self.store.clone(), cancel).await
    }

    /// Marks Down every Ready node not heard from for `GRACE_MULTIPLIER` periods, until
    /// cancelled. Runs on the leader.
    /// Judges liveness until cancelled: a Ready node is marked Down once it has missed
    /// [`GRACE_MULTIPLIER`] heartbeats, or [`SESSION_GRACE`] after its session dropped.
    /// Each tick looks only at the in-memory beat times; the store is read for the nodes
    /// that are overdue, and once a period for Ready nodes never heard from.
    pub async fn run_liveness(self, cancel: CancellationToken) {
        let started = Instant::now();
        let mut last_full = Instant::now();
        let mut updates = self.view.subscribe();
        self.reload_beat_view();
        let _live = BeatViewLive(self.beat_view.clone());
        loop {
            let period = self.beat_view.lock().map(|v| v.period).unwrap_or_default();
            let tick = (period / 10).clamp(Duration::from_millis(20), Duration::from_millis(100));
            let deadline_tick = tokio::time::Instant::now() + tick;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep_until(deadline_tick) => break,
                    u = updates.next() => match u {
                        Some(u) => {
                            if let Ok(mut v) = self.beat_view.lock() {
                                v.apply(&u);
                            }
                        }
                        None => return,
                    },
                }
            }
            let deadline = period * GRACE_MULTIPLIER;
            let mut overdue: Vec<(String, &'static str)> = Vec::new();
            if let Ok(m) = self.last_seen.lock() {
                overdue.extend(
                    m.iter()
                        .filter(|(_, t)| t.elapsed() > deadline)
                        .map(|(id, _)| (id.clone(), "heartbeat failure")),
                );
            }
            if let Ok(m) = self.suspects.lock() {
                overdue.extend(
                    m.iter()
                        .filter(|(_, t)| t.elapsed() > SESSION_GRACE)
                        .map(|(id, _)| (id.clone(), "session lost")),
                );
            }
            // Nodes this leader never heard from get a full grace period from its start.
            if started.elapsed() > deadline && last_full.elapsed() >= period {
                last_full = Instant::now();
                let ready = self
                    .beat_view
                    .lock()
                    .ok()
                    .filter(|v| v.live)
                    .map(|v| v.ready.clone());
                let ready: Result<std::collections::HashSet<String>, StoreError> = match ready {
                    Some(r) => Ok(r),
                    None => Ok(self
                        .view
                        .current()
                        .values::<Node>()
                        .filter(|n| n.state == NodeState::Ready as i32)
                        .map(|n| n.id.clone())
                        .collect()),
                };
                match (ready, self.last_seen.lock()) {
                    (Ok(ready), Ok(seen)) => overdue.extend(
                        ready
                            .into_iter()
                            .filter(|id| !seen.contains_key(id))
                            .map(|id| (id, "heartbeat failure")),
                    ),
                    (Err(e), _) => tracing::warn!(error = %e, "liveness check cannot read nodes"),
                    _ => {}
                }
            }
            overdue.sort();
            overdue.dedup_by(|a, b| a.0 == b.0);
            for (id, why) in overdue {
                self.mark_down(&id, why).await;
            }
        }
    }

    async fn mark_down(&self, id: &str, why: &'static str) {
        // A node that beats again (or reconnects) is judged afresh.
        if let Ok(mut m) = self.last_seen.lock() {
            m.remove(id);
        }
        if let Ok(mut m) = self.suspects.lock() {
            m.remove(id);
        }
        // A beat racing this change must read the node afresh, not trust its cache.
        if let Ok(mut v) = self.beat_view.lock() {
            v.touch(id);
        }
        let res = self
            .update_node(id, |node| {
                if node.state != NodeState::Ready as i32 {
                    return false;
                }
                node.state = NodeState::Down as i32;
                node.state_message = why.into();
                true
            })
            .await;
        match res {
            Ok(Some(n)) if n.state_message == why => {
                tracing::info!(node_id = %id, "node down: {why}")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(node_id = %id, error = %e, "cannot mark node down"),
        }
    }

    fn reload_beat_view(&self) {
        if let Ok(mut v) = self.beat_view.lock() {
            v.load(&self.view.current());
            v.live = true;
        }
    }

    /// The heartbeat period and the managers' addresses, from the heartbeat view when
    /// the liveness loop keeps it current, else from the cluster view.
    fn beat_answer(&self) -> Result<(Duration, Vec<String>), Status> {
        if let Ok(v) = self.beat_view.lock() {
            if v.live {
                return Ok((v.period, v.managers.values().cloned().collect()));
            }
        }
        let state = self.view.current();
        Ok((state.heartbeat_period(), state.manager_addrs()))
    }

    /// A node's session stream closed under it: suspect until it opens a new one.
    fn session_dropped(&self, node_id: &str) {
        if let Ok(mut m) = self.suspects.lock() {
            m.insert(node_id.to_string(), Instant::now());
        }
    }
}

fn check_heartbeat(req: &HeartbeatRequest) -> Result<(), Status> {
    use shoal_proto::limits;
    let refuse = |e: String| Status::invalid_argument(format!("Heartbeat refused: {e}"));
    if let Some(d) = &req.description {
        limits::check_description(d).map_err(|e| refuse(e.0))?;
    }
    if req.advertise_addr.len() > limits::MAX_HOSTNAME + 6 {
        return Err(refuse(format!(
            "the advertised address is {} bytes: the limit is {} bytes",
            req.advertise_addr.len(),
            limits::MAX_HOSTNAME + 6
        )));
    }
    if req.cert_renewal_error.len() > limits::MAX_STATUS_TEXT {
        return Err(refuse(format!(
            "the renewal error is {} bytes: the limit is {} bytes",
            req.cert_renewal_error.len(),
            limits::MAX_STATUS_TEXT
        )));
    }
    Ok(())
}

/// Refuses status reports that are too large, or states an agent never reports (only
/// the agent's own states, ACCEPTED to REJECTED, come from a node).
fn check_status_updates(
    updates: &[shoal_proto::dispatcher::TaskStatusUpdate],
) -> Result<(), Status> {
    use shoal_proto::limits::MAX_STATUS_UPDATES;
    use shoal_proto::objects::TaskState;
    let refuse = |e: String| Status::invalid_argument(format!("UpdateTaskStatus refused: {e}"));
    if updates.len() > MAX_STATUS_UPDATES {
        return Err(refuse(format!(
            "{} updates in one call: the limit is {MAX_STATUS_UPDATES}",
            updates.len()
        )));
    }
    for u in updates {
        let Some(s) = &u.status else { continue };
        shoal_proto::limits::check_status(s).map_err(|e| {
            refuse(format!(
                "task {}: {e}",
                shoal_proto::limits::short(&u.task_id)
            ))
        })?;
        let reportable = TaskState::try_from(s.state).is_ok_and(|st| {
            (TaskState::Accepted as i32..=TaskState::Rejected as i32).contains(&(st as i32))
        });
        if !reportable {
            return Err(refuse(format!(
                "task {}: state {} is not one a node reports",
                shoal_proto::limits::short(&u.task_id),
                s.state
            )));
        }
    }
    Ok(())
}

type SessionStream = futures_util::stream::Map<
    tokio_stream::wrappers::ReceiverStream<session::Sent>,
    fn(session::Sent) -> Result<SessionMessage, Status>,
>;

fn unbox(m: session::Sent) -> Result<SessionMessage, Status> {
    *m
}

#[tonic::async_trait]
impl DispatcherRpc for Dispatcher {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<SessionRequest>,
    ) -> Result<Response<SessionStream>, Status> {
        let caller = authorize(&req, "Session", ANY_NODE)?;
        let term = self.lead()?;
        let replaced = self.replace_session(caller.node_id().as_str());
        let me = self.clone();
        let node = caller.node_id().to_string();
        let rx = session::start(
            self.view.clone(),
            self.logs.clone(),
            self.peers.subscribe(),
            caller,
            replaced,
            term,
            Box::new(move || me.session_dropped(&node)),
        )?;
        Ok(Response::new(futures_util::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            unbox as fn(_) -> _,
        )))
    }

    async fn update_task_status(
        &self,
        req: Request<UpdateTaskStatusRequest>,
    ) -> Result<Response<UpdateTaskStatusResponse>, Status> {
        let id = authorize(&req, "UpdateTaskStatus", ANY_NODE)?;
        self.lead()?;
        let node_id = id.node_id().as_str();
        let updates = req.into_inner().updates;
        check_status_updates(&updates)?;
        let state = self.view.current();
        for u in &updates {
            // A node speaks only for its own tasks; a task already gone is no error.
            if let Some(t) = state.get::<Task>(&u.task_id) {
                if t.value.node_id != node_id {
                    return Err(Status::permission_denied(format!(
                        "task {} is not assigned to this node",
                        u.task_id
                    )));
                }
            }
        }
        self.status
            .write(self.store.leadership().current(), updates)
            .await
            .map_err(Status::unavailable)?;
        Ok(Response::new(UpdateTaskStatusResponse {}))
    }

    async fn publish_logs(
        &self,
        req: Request<tonic::Streaming<PublishLogsMessage>>,
    ) -> Result<Response<PublishLogsResponse>, Status> {
        let caller = authorize(&req, "PublishLogs", ANY_NODE)?;
        let term = self.lead()?;
        let node_id = caller.node_id().to_string();
        let mut stream = req.into_inner();
        let cut = caller.cut();
        tokio::pin!(cut);
        loop {
            let msg = tokio::select! {
                s = &mut cut => return Err(s),
                _ = term.cancelled() => return Err(crate::cluster::not_leader(&self.store)),
                m = stream.next() => match m {
                    Some(m) => m?,
                    None => break,
                },
            };
            caller.check()?;
            if !self.logs.publish(&node_id, msg).await? {
                break;
            }
        }
        Ok(Response::new(PublishLogsResponse {}))
    }

    type ExecStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<shoal_proto::dispatcher::ExecInput, Status>>
                + Send,
        >,
    >;

    async fn exec(
        &self,
        req: Request<tonic::Streaming<shoal_proto::dispatcher::ExecOutput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let caller = authorize(&req, "Exec", ANY_NODE)?;
        let term = self.lead()?;
        let node_id = caller.node_id().to_string();
        let mut up = req.into_inner();
        let first = up
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an exec attach starts with its ID"))?;
        let id = first.exec_id.clone();
        let (out, input) = self.logs.exec_attach(&node_id, &id)?;
        let logs = self.logs.clone();
        tokio::spawn(async move {
            let cut = caller.cut();
            tokio::pin!(cut);
            let mut next = Some(first);
            loop {
                let m = match next.take() {
                    Some(m) => m,
                    None => tokio::select! {
                        s = &mut cut => { let _ = out.send(Err(s)).await; break; }
                        _ = term.cancelled() => {
                            let _ = out.send(Err(Status::unavailable("the manager relaying the exec stepped down"))).await;
                            break;
                        }
                        m = up.message() => match m {
                            Ok(Some(m)) => m,
                            Ok(None) | Err(_) => {
                                let _ = out.send(Err(Status::unavailable("the task's node ended the exec without an exit code"))).await;
                                break;
                            }
                        },
                    },
                };
                let end = m.exited || !m.error.is_empty();
                let sent = match m.error.is_empty() {
                    true => out.send(Ok(m)).await,
                    false => out.send(Err(Status::failed_precondition(m.error))).await,
                };
                if end || sent.is_err() {
                    break;
                }
            }
            logs.exec_done(&id);
        });
        let down = tokio_stream::wrappers::ReceiverStream::new(input).map(Ok);
        Ok(Response::new(Box::pin(down)))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let id = authorize(&req, "Heartbeat", ANY_NODE)?;
        self.lead()?;
        let remote_ip = remote_addr(&req).map(|a| a.ip().to_string());
        let mut no_cache = None;
        let answer = self
            .take_beat(&id, &remote_ip, req.into_inner(), &mut no_cache)
            .await?;
        Ok(Response::new(self.respond(&answer)?))
    }

    type HeartbeatsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<HeartbeatResponse, Status>> + Send>,
    >;

    async fn heartbeats(
        &self,
        req: Request<tonic::Streaming<HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatsStream>, Status> {
        let caller = authorize(&req, "Heartbeat", ANY_NODE)?;
        let term = self.lead()?;
        let remote_ip = remote_addr(&req).map(|a| a.ip().to_string());
        // Answered in the task that sends the answers (no task of its own): a beat
        // wakes nothing but its own stream.
        let cut: std::pin::Pin<Box<dyn std::future::Future<Output = Status> + Send>> = {
            let caller = caller.clone();
            Box::pin(async move { caller.cut().await })
        };
        // Boxed, and the rare slow step of a beat boxed apart (take_beat): what a
        // quiet stream holds between beats stays small (1,000 streams on a leader).
        let state = Box::new(BeatStreamState {
            me: self.clone(),
            caller,
            remote_ip,
            beats: req.into_inner(),
            cut,
            term,
            cache: None,
            last: None,
            unanswered: 0,
            done: false,
        });
        let span = tracing::debug_span!("heartbeat stream", node_id = %state.caller.node_id());
        let answers = futures_util::stream::unfold(state, move |st| {
            tracing::Instrument::instrument(Self::next_answer(st), span.clone())
        });
        Ok(Response::new(Box::pin(answers)))
    }
}

impl Dispatcher {
    /// The heartbeat stream's next answer, after as many beats as it takes.
    async fn next_answer(
        mut st: Box<BeatStreamState>,
    ) -> Option<(Result<HeartbeatResponse, Status>, Box<BeatStreamState>)> {
        {
            loop {
                if st.done {
                    return None;
                }
                let beat = tokio::select! {
                    s = &mut st.cut => Err(s),
                    // The term ended: the node fails over to the new leader at once.
                    _ = st.term.cancelled() => Err(crate::cluster::not_leader(&st.me.store)),
                    b = st.beats.next() => match b {
                        Some(Ok(b)) => Ok(b),
                        _ => return None,
                    },
                };
                let answer = match beat.and_then(|b| {
                    st.caller.check()?;
                    st.me.lead()?;
                    Ok(b)
                }) {
                    Ok(b) => {
                        st.me
                            .take_beat(&st.caller, &st.remote_ip, b, &mut st.cache)
                            .await
                    }
                    Err(s) => Err(s),
                };
                // Unchanged answers are sent only now and then: the node needs to hear
                // that this manager still hears it, not every beat.
                let answer = answer.and_then(|a| {
                    st.unanswered += 1;
                    if st.last.as_ref().is_some_and(|l| l.same(&a))
                        && st.unanswered < shoal_proto::limits::HEARTBEAT_ANSWER_EVERY
                    {
                        return Ok(None);
                    }
                    let r = st.me.respond(&a)?;
                    st.unanswered = 0;
                    st.last = Some(a);
                    Ok(Some(r))
                });
                match answer {
                    Ok(None) => continue,
                    Ok(Some(r)) => return Some((Ok(r), st)),
                    Err(s) => {
                        st.done = true;
                        return Some((Err(s), st));
                    }
                }
            }
        }
    }
}

/// A heartbeat stream's state between beats.
struct BeatStreamState {
    me: Dispatcher,
    caller: crate::security::auth::Caller,
    remote_ip: Option<String>,
    beats: tonic::Streaming<HeartbeatRequest>,
    cut: std::pin::Pin<Box<dyn std::future::Future<Output = Status> + Send>>,
    /// Cancelled when the term the stream was opened in ends.
    term: CancellationToken,
    cache: Option<BeatCache>,
    /// The last answer sent, and the beats since.
    last: Option<Answer>,
    unanswered: u32,
    done: bool,
}

impl Dispatcher {
    /// One beat of `id`: the node is Ready, and what it reports (description, address,
    /// renewal error, the certificate in use) is written when it changed. `cache` is a
    /// stream's memory of its last beat; the unary call passes an empty one.
    async fn take_beat(
        &self,
        id: &shoal_pki::NodeIdentity,
        remote_ip: &Option<String>,
        req: HeartbeatRequest,
        cache: &mut Option<BeatCache>,
    ) -> Result<Answer, Status> {
        check_heartbeat(&req)?;
        let node_id = id.node_id().as_str();
        self.beat(node_id);
        // Read before the node: a change after this point is seen at the next beat.
        let (view, stamp) = self
            .beat_view
            .lock()
            .ok()
            .filter(|v| v.live)
            .map(|v| (Some(v.version), v.stamp(node_id)))
            .unwrap_or_default();
        let ca = self.ca.get();
        let facts = |node: &Node| {
            (
                node.role == shoal_proto::objects::NodeRole::Manager as i32,
                crate::security::rootca::needs_rotation(ca.rotating_to.as_deref(), node),
            )
        };
        let cached = cache
            .as_ref()
            .filter(|c| Some(c.stamp) == stamp && c.req == req && &c.remote_ip == remote_ip);
        let (manager, needs_renewal) = match cached {
            Some(c) => facts(&c.node),
            None => {
                // Boxed: a write, taken when something changed, kept out of the
                // stream's own state.
                let node = Box::pin(self.confirm_beat(id, remote_ip.clone(), req.clone())).await?;
                let f = facts(&node);
                *cache = stamp.map(|stamp| BeatCache {
                    req,
                    remote_ip: remote_ip.clone(),
                    stamp,
                    node,
                });
                f
            }
        };
        let renew = needs_renewal
            && self
                .renew_pacer
                .lock()
                .is_ok_and(|mut p| p.admit(Instant::now()));
        Ok(Answer {
            ca,
            view,
            manager,
            renew,
        })
    }

    /// The answer to a beat, in full.
    fn respond(&self, a: &Answer) -> Result<HeartbeatResponse, Status> {
        let (period, managers) = self.beat_answer()?;
        Ok(HeartbeatResponse {
            role: if a.manager { "manager" } else { "worker" }.to_string(),
            period_ms: period.as_millis() as u64,
            managers,
            roots_der: a.ca.roots.clone(),
            rotation_root_digest: a.ca.rotating_to.clone().unwrap_or_default(),
            renew_certificate: a.renew,
        })
    }

    /// Writes what a beat says of its node when it differs from the store; returns the
    /// node as it now stands.
    async fn confirm_beat(
        &self,
        id: &shoal_pki::NodeIdentity,
        remote_ip: Option<String>,
        req: HeartbeatRequest,
    ) -> Result<Node, Status> {
        let node_id = id.node_id().to_string();
        let addr = if req.advertise_addr.is_empty() {
            remote_ip.unwrap_or_default()
        } else {
            req.advertise_addr
        };
        let desc = req.description;
        let renewal_error = req.cert_renewal_error;
        let updated = self
            .update_node(&node_id, |node| {
                let mut changed = false;
                if node.state != NodeState::Ready as i32 {
                    node.state = NodeState::Ready as i32;
                    node.state_message.clear();
                    changed = true;
                }
                if let Some(mut d) = desc.clone() {
                    // The hostname was fixed when the node joined; a different one
                    // reported now is kept apart, for display only.
                    let fixed = node
                        .description
                        .as_ref()
                        .map(|d| d.hostname.clone())
                        .unwrap_or_default();
                    let reported = if fixed.is_empty() || d.hostname == fixed {
                        String::new()
                    } else {
                        std::mem::replace(&mut d.hostname, fixed)
                    };
                    if node.reported_hostname != reported {
                        node.reported_hostname = reported;
                        changed = true;
                    }
                    if node.description.as_ref() != Some(&d) {
                        node.description = Some(d);
                        changed = true;
                    }
                }
                if !addr.is_empty() && node.addr != addr {
                    node.addr = addr.clone();
                    changed = true;
                }
                let c = node.certificate.get_or_insert_with(Default::default);
                if c.renewal_error != renewal_error {
                    c.renewal_error = renewal_error.clone();
                    changed = true;
                }
                crate::security::access::confirm(node, id) || changed
            })
            .await
            .map_err(store_status)?;
        updated.ok_or_else(|| {
            Status::not_found(format!(
                "node {node_id} is not a member of this cluster (it may have been removed): join again with a token"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_renewals_are_paced_per_second() {
        let mut p = Pacer::default();
        let t0 = Instant::now();
        let admitted = (0..ROTATION_RENEWALS_PER_SEC + 50)
            .filter(|_| p.admit(t0))
            .count();
        assert_eq!(admitted, ROTATION_RENEWALS_PER_SEC as usize);
        assert!(!p.admit(t0 + Duration::from_millis(999)));
        assert!(p.admit(t0 + Duration::from_secs(1)), "a new second");
    }
}

//! A node's session: its complete assignment set, then every change to it, plus log
//! requests. Read from the manager's cluster view: the session is woken only when a task
//! on its node changes ([`ClusterView::watch_node`], taken before the first read, so
//! nothing committed between the first set and the changes is missed) and then reads
//! the node's own tasks from the view's index.

use super::logs::LogBroker;
use crate::security::auth::Caller;
use crate::view::{ClusterView, State};
use shoal_proto::dispatcher::assignment::Action;
use shoal_proto::dispatcher::{
    Assignment, NetworkView, PeerView, SecretData, SecretKey, SessionMessage,
};
use shoal_proto::objects::{Secret, TaskState};
use std::collections::HashMap;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// One message of a session stream, boxed: a channel allocates its slots 32 at a
/// time, and a bare `Result<SessionMessage, Status>` made that 6.7 KiB per session.
pub type Sent = Box<Result<SessionMessage, Status>>;

/// The sending side of a session stream.
struct Tx(mpsc::Sender<Sent>);

impl Tx {
    async fn send(&self, m: Result<SessionMessage, Status>) -> Result<(), ()> {
        self.0.send(Box::new(m)).await.map_err(|_| ())
    }

    async fn closed(&self) {
        self.0.closed().await
    }
}

/// A secret or config version: (ID, version).
type Key = (String, u64);

/// The secret and config versions the node's tasks need: only tasks meant to run (a
/// task asked to stop needs nothing more).
fn needs(state: &State, node_id: &str) -> BTreeSet<Key> {
    state
        .tasks_on(node_id)
        .map(|v| &v.value)
        .filter(|t| t.desired_state <= TaskState::Running as i32)
        .flat_map(|t| t.spec.iter())
        .flat_map(|c| c.secrets.iter().chain(c.configs.iter()))
        .map(|r| (r.secret_id.clone(), r.version))
        .collect()
}

/// What the node holds, as the session told it.
#[derive(Default)]
struct Held(HashSet<Key>);

impl Held {
    /// The messages that bring the node from what it holds to `needed`: the data it
    /// lacks (before the assignments that use it), and what it may forget (after).
    /// `complete`: the node is told its whole set (a new session).
    fn catch_up(
        &mut self,
        state: &State,
        needed: &BTreeSet<Key>,
        complete: bool,
    ) -> (Vec<SessionMessage>, Option<SessionMessage>) {
        if complete {
            self.0.clear();
        }
        let missing: Vec<&Key> = needed.iter().filter(|k| !self.0.contains(*k)).collect();
        let mut data = Vec::new();
        for (id, version) in missing {
            let Some(v) = state
                .get::<Secret>(id)
                .and_then(|s| s.value.versions.iter().find(|v| v.version == *version))
            else {
                // Gone from the store: the task that needs it fails with the reason.
                continue;
            };
            self.0.insert((id.clone(), *version));
            data.push(SecretData {
                key: Some(SecretKey {
                    secret_id: id.clone(),
                    version: *version,
                }),
                data: v.data.clone(),
            });
        }
        let mut before = Vec::new();
        let mut cur = Vec::new();
        let mut size = 0usize;
        for d in data {
            let len = d.data.len() + 64;
            if !cur.is_empty() && size + len > MAX_MESSAGE_BYTES {
                before.push(std::mem::take(&mut cur));
                size = 0;
            }
            size += len;
            cur.push(d);
        }
        if !cur.is_empty() {
            before.push(cur);
        }
        // With a complete set, these are its first parts (`more`: the agent applies
        // them together with the assignments that follow).
        let mut before: Vec<SessionMessage> = before
            .into_iter()
            .map(|secrets| SessionMessage {
                secrets,
                complete,
                more: complete,
                ..Default::default()
            })
            .collect();
        if complete {
            match before.first_mut() {
                Some(m) => m.secrets_complete = true,
                None => before.push(SessionMessage {
                    secrets_complete: true,
                    complete: true,
                    more: true,
                    ..Default::default()
                }),
            }
        }
        let gone: Vec<Key> = self
            .0
            .iter()
            .filter(|k| !needed.contains(*k))
            .cloned()
            .collect();
        let after = (!gone.is_empty()).then(|| {
            for k in &gone {
                self.0.remove(k);
            }
            SessionMessage {
                secrets_removed: gone
                    .into_iter()
                    .map(|(secret_id, version)| SecretKey { secret_id, version })
                    .collect(),
                ..Default::default()
            }
        });
        (before, after)
    }
}

/// Starts a node's session. It ends, with the reason, when the caller may no longer be
/// served (removed, revoked, superseded, expired: checked against the store state of
/// each event before anything of it is sent), when `replaced` is cancelled (a newer
/// session of the node), or when `term` ends (this manager stopped leading, or stops).
pub fn start(
    view: ClusterView,
    logs: Arc<LogBroker>,
    mut peers: tokio::sync::watch::Receiver<super::peers::Peers>,
    caller: Caller,
    replaced: CancellationToken,
    term: CancellationToken,
    dropped: Box<dyn FnOnce() + Send>,
) -> Result<mpsc::Receiver<Sent>, Status> {
    let node_id = caller.node_id().to_string();
    let (tx, rx) = mpsc::channel(64);
    let tx = Tx(tx);
    // Before the first read: every change after it wakes the session.
    let mut node_changed = view.watch_node(&node_id);
    let state = view.current();
    // What the node was told of each task (its desired state): the complete set is
    // every task, news to a node that was told nothing.
    let mut known = HashMap::new();
    let first = changes(&state, &node_id, &mut known);
    let (log_tx, mut log_rx) = mpsc::channel::<super::logs::NodeRequest>(64);
    logs.register_node(&node_id, log_tx.clone());
    let span = tracing::debug_span!("session", node_id = %node_id);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let cut = caller.cut();
            tokio::pin!(cut);
            let mut pending = Some((state, first));
            // The secret and config versions the node holds (need-to-know: only those its
            // tasks use, sent before the tasks, dropped when the last such task stops).
            let mut held = Held::default();
            // The peer list goes out once after the complete set, then on every change.
            peers.mark_changed();
            let mut peers_open = true;
            // What the node was last told, so it hears only of changes to its own part.
            let mut sent_peers: Option<PeerView> = None;
            let mut sent_networks: Option<NetworkView> = None;
            loop {
                // The complete set, in messages the agent's decoder accepts.
                if let Some((state, set)) = pending.take() {
                    if let Err(s) = caller.check_at(state.access_index()).await {
                        let _ = tx.send(Err(s)).await;
                        break;
                    }
                    let (mut before, after) = held.catch_up(&state, &needs(&state, &node_id), true);
                    let mut parts = chunk(true, set);
                    if before.len() == 1 && before[0].secrets.is_empty() {
                        // Nothing to hold: the first part of the set says so itself.
                        before.clear();
                        parts[0].secrets_complete = true;
                    }
                    before.extend(parts);
                    before.extend(after);
                    if !send_all(&tx, before).await {
                        break;
                    }
                }
                tokio::select! {
                    _ = term.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable(TERM_ENDED))).await;
                        break;
                    }
                    _ = tx.closed() => {
                        // The node went away (its connection closed) rather than the
                        // manager ending the session.
                        dropped();
                        break;
                    }
                    _ = replaced.cancelled() => {
                        let _ = tx.send(Err(Status::aborted("a newer session of this node replaced this one"))).await;
                        break;
                    }
                    s = &mut cut => {
                        let _ = tx.send(Err(s)).await;
                        break;
                    }
                    r = peers.changed(), if peers_open => {
                        if r.is_err() {
                            peers_open = false;
                            continue;
                        }
                        if let Err(s) = caller.check() {
                            let _ = tx.send(Err(s)).await;
                            break;
                        }
                        let view = peers.borrow_and_update().clone();
                        let mut msg = SessionMessage::default();
                        let p = view.peers_for(&node_id);
                        if sent_peers.as_ref() != Some(&p) {
                            msg.peers = Some(p.clone());
                            sent_peers = Some(p);
                        }
                        let n = view.networks_for(&node_id);
                        if sent_networks.as_ref() != Some(&n) {
                            msg.networks = Some(n.clone());
                            sent_networks = Some(n);
                        }
                        if msg.peers.is_none() && msg.networks.is_none() {
                            continue;
                        }
                        if tx.send(Ok(msg)).await.is_err() { break; }
                    }
                    sub = log_rx.recv() => {
                        let Some(sub) = sub else { break };
                        if let Err(s) = caller.check() {
                            let _ = tx.send(Err(s)).await;
                            break;
                        }
                        let msg = match sub {
                            super::logs::NodeRequest::Logs(sub) => SessionMessage { log_subscriptions: vec![*sub], ..Default::default() },
                            super::logs::NodeRequest::Exec(req) => SessionMessage { exec_requests: vec![*req], ..Default::default() },
                        };
                        if tx.send(Ok(msg)).await.is_err() { break; }
                    }
                    r = node_changed.changed() => {
                        if r.is_err() {
                            let _ = tx.send(Err(Status::unavailable("the manager is shutting down"))).await;
                            break;
                        }
                        let state = view.current();
                        if let Err(s) = caller.check_at(state.access_index()).await {
                            let _ = tx.send(Err(s)).await;
                            break;
                        }
                        let a = changes(&state, &node_id, &mut known);
                        let (before, after) = held.catch_up(&state, &needs(&state, &node_id), false);
                        if !send_all(&tx, before).await { break; }
                        if !a.is_empty() && !send_chunked(&tx, false, a).await { break; }
                        if !send_all(&tx, after.into_iter().collect()).await { break; }
                    }
                }
            }
            // A newer session of the same node keeps its subscriptions.
            if logs.unregister_node(&node_id, &log_tx) {
                logs.drop_node_subs(&node_id);
            }
        },
        span,
    ));
    Ok(rx)
}

/// Why a session ends when its manager's term does; the node fails over.
pub const TERM_ENDED: &str =
    "this manager is no longer the leader (its term ended): connect to the new leader";

/// Largest encoded session message the dispatcher sends: well under the 4 MiB a gRPC
/// decoder accepts by default, whatever the number of tasks.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Splits `assignments` into messages of at most [`MAX_MESSAGE_BYTES`] (a single task
/// is far smaller: specs are bounded). Every message but the last says `more`, so a
/// complete set is applied only once it has all arrived.
pub fn chunk(complete: bool, assignments: Vec<Assignment>) -> Vec<SessionMessage> {
    use prost::Message;
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0usize;
    for a in assignments {
        let len = a.encoded_len() + 8;
        if !cur.is_empty() && size + len > MAX_MESSAGE_BYTES {
            out.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += len;
        cur.push(a);
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    let n = out.len();
    out.into_iter()
        .enumerate()
        .map(|(i, assignments)| SessionMessage {
            complete,
            assignments,
            log_subscriptions: Vec::new(),
            more: i + 1 < n,
            ..Default::default()
        })
        .collect()
}

async fn send_all(tx: &Tx, msgs: Vec<SessionMessage>) -> bool {
    for msg in msgs {
        if tx.send(Ok(msg)).await.is_err() {
            return false;
        }
    }
    true
}

async fn send_chunked(tx: &Tx, complete: bool, assignments: Vec<Assignment>) -> bool {
    for msg in chunk(complete, assignments) {
        if tx.send(Ok(msg)).await.is_err() {
            return false;
        }
    }
    true
}

/// What changed for the node since it was last told (`known`): new tasks and
/// desired-state changes, and tasks gone from it (removed, or moved off). Only those are
/// news to an agent; status changes are its own.
fn changes(state: &State, node_id: &str, known: &mut HashMap<String, i32>) -> Vec<Assignment> {
    let mut out = Vec::new();
    let mut present = HashSet::new();
    for v in state.tasks_on(node_id) {
        let t = &v.value;
        present.insert(t.id.as_str());
        if known.get(&t.id) == Some(&t.desired_state) {
            continue;
        }
        known.insert(t.id.clone(), t.desired_state);
        out.push(Assignment {
            action: Action::Update as i32,
            task: Some(t.clone()),
            task_id: String::new(),
        });
    }
    known.retain(|id, _| {
        let keep = present.contains(id.as_str());
        if !keep {
            out.push(Assignment {
                action: Action::Remove as i32,
                task: None,
                task_id: id.clone(),
            });
        }
        keep
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::auth::{authorize, Gate, PeerInfo};
    use crate::security::rootca::{CaHandle, CaState};
    use shoal_pki::{ClusterId, NodeId, NodeKey, Role, RootCa};
    use std::time::{Duration, SystemTime};

    /// A worker's verified caller, as the listener and `authorize` make it.
    fn worker_caller() -> Caller {
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
        let key = NodeKey::generate().unwrap();
        let cert = root
            .sign_node(
                &key.csr_der().unwrap(),
                &NodeId::generate(),
                Role::Worker,
                &cluster_id,
                Duration::from_secs(3600),
            )
            .unwrap();
        let id = ca
            .trust
            .verify(&cert.cert_der, &[], SystemTime::now())
            .unwrap();
        let member = shoal_proto::objects::Node {
            id: id.node_id().to_string(),
            certificate: Some(shoal_proto::objects::NodeCertificate {
                serial: id.serial().to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut req = tonic::Request::new(());
        req.extensions_mut().insert(PeerInfo {
            remote_addr: None,
            identity: Some(id),
            user: None,
            gate: Gate {
                access: crate::security::access::AccessList::with_nodes(&[member]),
                ca: CaHandle::new(ca),
            },
        });
        authorize(&req, "Session", &[Role::Worker]).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_ends_the_moment_its_managers_term_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = shoal_store::Store::open(dir.path(), 1, "m1").await.unwrap();
        store.bootstrap().await.unwrap();
        store.wait_leader(Duration::from_secs(10)).await.unwrap();
        let (view, watch) = ClusterView::start(&store).unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(view.clone().run(store.clone(), watch, cancel.clone()));
        let (_peers_tx, peers) = tokio::sync::watch::channel(Default::default());
        let logs = Arc::new(LogBroker::default());
        let caller = worker_caller();
        let node = caller.node_id().to_string();
        let term = CancellationToken::new();
        let mut rx = start(
            view,
            logs.clone(),
            peers,
            caller,
            CancellationToken::new(),
            term.clone(),
            Box::new(|| {}),
        )
        .unwrap();
        let first = rx.recv().await.unwrap().unwrap();
        assert!(first.complete, "the session opens with the complete set");
        term.cancel();
        let end = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match rx.recv().await.map(|m| *m) {
                    Some(Ok(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("the session ends at once");
        let status = end.expect("with a reason").unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), TERM_ENDED);
        assert!(rx.recv().await.is_none());
        // Its log registration went with it.
        let task = shoal_proto::objects::Task {
            id: "t1".into(),
            node_id: node,
            ..Default::default()
        };
        let e = logs.subscribe(&task, false, 0).await.unwrap_err();
        assert!(e.message().contains("not connected"), "{e:?}");
        cancel.cancel();
        store.shutdown().await.unwrap();
    }
}

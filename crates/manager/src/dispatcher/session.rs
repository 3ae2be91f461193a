//! A node's session: its complete assignment set, then every change to it, plus log
//! requests. Built on a store watch, so nothing committed between the first set and the
//! changes is missed.

use super::logs::LogBroker;
use crate::auth::Caller;
use shoal_proto::dispatcher::assignment::Action;
use shoal_proto::dispatcher::{
    Assignment, LogSubscription, NetworkView, PeerView, SecretData, SecretKey, SessionMessage,
};
use shoal_proto::objects::{Secret, Task, TaskState};
use shoal_store::{Change, Object, Store};
use std::collections::HashMap;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

type Tx = mpsc::Sender<Result<SessionMessage, Status>>;

/// A node's assignments at one store index, with the watch that follows it and what the
/// node is told about each task.
struct CompleteSet {
    watch: shoal_store::Watch,
    known: HashMap<String, i32>,
    needs: Needs,
    assignments: Vec<Assignment>,
}

/// A secret or config version: (ID, version).
type Key = (String, u64);

/// The secret and config versions each of the node's tasks needs: only tasks meant to
/// run (a task asked to stop needs nothing more).
#[derive(Default)]
struct Needs(HashMap<String, Vec<Key>>);

impl Needs {
    fn note(&mut self, t: &Task) {
        let refs: Vec<Key> = t
            .spec
            .iter()
            .flat_map(|c| c.secrets.iter().chain(c.configs.iter()))
            .map(|r| (r.secret_id.clone(), r.version))
            .collect();
        if refs.is_empty() || t.desired_state > TaskState::Running as i32 {
            self.0.remove(&t.id);
        } else {
            self.0.insert(t.id.clone(), refs);
        }
    }

    fn forget(&mut self, task_id: &str) {
        self.0.remove(task_id);
    }

    fn all(&self) -> BTreeSet<Key> {
        self.0.values().flatten().cloned().collect()
    }
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
        store: &Store,
        needed: &BTreeSet<Key>,
        complete: bool,
    ) -> (Vec<SessionMessage>, Option<SessionMessage>) {
        if complete {
            self.0.clear();
        }
        let missing: Vec<&Key> = needed.iter().filter(|k| !self.0.contains(*k)).collect();
        let mut data = Vec::new();
        let mut secrets: HashMap<String, Option<Secret>> = HashMap::new();
        for (id, version) in missing {
            let s = secrets
                .entry(id.clone())
                .or_insert_with(|| store.get::<Secret>(id).ok().flatten().map(|v| v.value));
            let Some(v) = s
                .as_ref()
                .and_then(|s| s.versions.iter().find(|v| v.version == *version))
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

/// What the node was last told about a task: only desired-state changes (and new or
/// removed tasks) are news to an agent; status changes are its own.
fn complete_set(store: &Store, node_id: &str) -> Result<CompleteSet, Status> {
    let watch = store
        .watch()
        .map_err(|e| Status::unavailable(format!("cluster store: {e}")))?;
    let tasks = watch
        .snapshot
        .list::<Task>()
        .map_err(|e| Status::unavailable(format!("cluster store: {e}")))?;
    let mut known = HashMap::new();
    let mut needs = Needs::default();
    let mut assignments = Vec::new();
    for t in tasks
        .into_iter()
        .map(|v| v.value)
        .filter(|t| t.node_id == node_id)
    {
        known.insert(t.id.clone(), t.desired_state);
        needs.note(&t);
        assignments.push(Assignment {
            action: Action::Update as i32,
            task: Some(t),
            task_id: String::new(),
        });
    }
    Ok(CompleteSet {
        watch,
        known,
        needs,
        assignments,
    })
}

/// Starts a node's session. It ends, with the reason, when the caller may no longer be
/// served (removed, revoked, superseded, expired: checked against the store state of
/// each event before anything of it is sent), when `replaced` is cancelled (a newer
/// session of the node), or when the manager stops.
pub fn start(
    store: Store,
    logs: Arc<LogBroker>,
    mut peers: tokio::sync::watch::Receiver<super::peers::Peers>,
    caller: Caller,
    replaced: CancellationToken,
    cancel: CancellationToken,
    dropped: Box<dyn FnOnce() + Send>,
) -> Result<mpsc::Receiver<Result<SessionMessage, Status>>, Status> {
    let node_id = caller.node_id().to_string();
    let (tx, rx) = mpsc::channel(64);
    let CompleteSet {
        mut watch,
        mut known,
        mut needs,
        assignments: first,
    } = complete_set(&store, &node_id)?;
    let (log_tx, mut log_rx) = mpsc::channel::<LogSubscription>(64);
    logs.register_node(&node_id, log_tx.clone());
    tokio::spawn(async move {
        let cut = caller.cut();
        tokio::pin!(cut);
        let mut pending = Some((watch.snapshot.index(), first));
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
            if let Some((index, set)) = pending.take() {
                if let Err(s) = caller.check_at(index).await {
                    let _ = tx.send(Err(s)).await;
                    break;
                }
                let (mut before, after) = held.catch_up(&store, &needs.all(), true);
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
                _ = cancel.cancelled() => break,
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
                    let msg = SessionMessage { log_subscriptions: vec![sub], ..Default::default() };
                    if tx.send(Ok(msg)).await.is_err() { break; }
                }
                ev = watch.events.recv() => match ev {
                    Ok(ev) => {
                        if ev.changes.iter().any(crate::access::touches_access) {
                            if let Err(s) = caller.check_at(ev.index).await {
                                let _ = tx.send(Err(s)).await;
                                break;
                            }
                        }
                        let a = changes(&node_id, &mut known, &mut needs, &ev.changes);
                        let (before, after) = held.catch_up(&store, &needs.all(), false);
                        if !send_all(&tx, before).await { break; }
                        if !a.is_empty() && !send_chunked(&tx, false, a).await { break; }
                        if !send_all(&tx, after.into_iter().collect()).await { break; }
                    }
                    Err(RecvError::Lagged(_)) => {
                        // Too far behind to trust the gaps: start over with a complete set.
                        match complete_set(&store, &node_id) {
                            Ok(c) => {
                                pending = Some((c.watch.snapshot.index(), c.assignments));
                                watch = c.watch;
                                known = c.known;
                                needs = c.needs;
                            }
                            Err(s) => { let _ = tx.send(Err(s)).await; break; }
                        }
                    }
                    Err(RecvError::Closed) => {
                        let _ = tx.send(Err(Status::unavailable("the manager is shutting down"))).await;
                        break;
                    }
                },
            }
        }
        // A newer session of the same node keeps its subscriptions.
        if logs.unregister_node(&node_id, &log_tx) {
            logs.drop_node_subs(&node_id);
        }
    });
    Ok(rx)
}

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

fn changes(
    node_id: &str,
    known: &mut HashMap<String, i32>,
    needs: &mut Needs,
    changes: &[Change],
) -> Vec<Assignment> {
    let mut out = Vec::new();
    for c in changes {
        if c.table() != Task::TABLE {
            continue;
        }
        match c.decode::<Task>() {
            Some(Ok(v)) => {
                let t = v.value;
                if t.node_id != node_id {
                    // Moved off this node (or never on it).
                    needs.forget(&t.id);
                    continue;
                }
                needs.note(&t);
                if known.get(&t.id) == Some(&t.desired_state) {
                    continue;
                }
                known.insert(t.id.clone(), t.desired_state);
                out.push(Assignment {
                    action: Action::Update as i32,
                    task: Some(t),
                    task_id: String::new(),
                });
            }
            Some(Err(e)) => tracing::warn!(error = %e, "undecodable task in the store"),
            None => {
                needs.forget(c.id());
                if known.remove(c.id()).is_some() {
                    out.push(Assignment {
                        action: Action::Remove as i32,
                        task: None,
                        task_id: c.id().to_string(),
                    });
                }
            }
        }
    }
    out
}

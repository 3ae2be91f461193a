//! A node's session: its complete assignment set, then every change to it, plus log
//! requests. Built on a store watch, so nothing committed between the first set and the
//! changes is missed.

use super::logs::LogBroker;
use shoal_proto::dispatcher::assignment::Action;
use shoal_proto::dispatcher::{Assignment, LogSubscription, SessionMessage};
use shoal_proto::objects::Task;
use shoal_store::{Change, Object, Store};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

type Tx = mpsc::Sender<Result<SessionMessage, Status>>;

/// What the node was last told about a task: only desired-state changes (and new or
/// removed tasks) are news to an agent; status changes are its own.
fn complete_set(
    store: &Store,
    node_id: &str,
) -> Result<(shoal_store::Watch, HashMap<String, i32>, SessionMessage), Status> {
    let watch = store
        .watch()
        .map_err(|e| Status::unavailable(format!("cluster store: {e}")))?;
    let tasks = watch
        .snapshot
        .list::<Task>()
        .map_err(|e| Status::unavailable(format!("cluster store: {e}")))?;
    let mut known = HashMap::new();
    let mut assignments = Vec::new();
    for t in tasks
        .into_iter()
        .map(|v| v.value)
        .filter(|t| t.node_id == node_id)
    {
        known.insert(t.id.clone(), t.desired_state);
        assignments.push(Assignment {
            action: Action::Update as i32,
            task: Some(t),
            task_id: String::new(),
        });
    }
    let msg = SessionMessage {
        complete: true,
        assignments,
        log_subscriptions: Vec::new(),
    };
    Ok((watch, known, msg))
}

pub fn start(
    store: Store,
    logs: Arc<LogBroker>,
    node_id: String,
    cancel: CancellationToken,
) -> Result<mpsc::Receiver<Result<SessionMessage, Status>>, Status> {
    let (tx, rx) = mpsc::channel(64);
    let (mut watch, mut known, first) = complete_set(&store, &node_id)?;
    let (log_tx, mut log_rx) = mpsc::channel::<LogSubscription>(64);
    logs.register_node(&node_id, log_tx.clone());
    tokio::spawn(async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tx.closed() => break,
                sub = log_rx.recv() => {
                    let Some(sub) = sub else { break };
                    let msg = SessionMessage { complete: false, assignments: vec![], log_subscriptions: vec![sub] };
                    if tx.send(Ok(msg)).await.is_err() { break; }
                }
                ev = watch.events.recv() => match ev {
                    Ok(ev) if ev.changes.iter().any(|c| {
                        matches!(c, shoal_store::Change::Delete { .. })
                            && c.table() == shoal_proto::objects::Node::TABLE
                            && c.id() == node_id
                    }) => {
                        let _ = tx.send(Err(Status::permission_denied(crate::revocation::REMOVED))).await;
                        break;
                    }
                    Ok(ev) => {
                        let a = changes(&node_id, &mut known, &ev.changes);
                        if !a.is_empty() && !send(&tx, false, a).await { break; }
                    }
                    Err(RecvError::Lagged(_)) => {
                        // Too far behind to trust the gaps: start over with a complete set.
                        match complete_set(&store, &node_id) {
                            Ok((w, k, msg)) => {
                                watch = w;
                                known = k;
                                if tx.send(Ok(msg)).await.is_err() { break; }
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

async fn send(tx: &Tx, complete: bool, assignments: Vec<Assignment>) -> bool {
    tx.send(Ok(SessionMessage {
        complete,
        assignments,
        log_subscriptions: Vec::new(),
    }))
    .await
    .is_ok()
}

fn changes(node_id: &str, known: &mut HashMap<String, i32>, changes: &[Change]) -> Vec<Assignment> {
    let mut out = Vec::new();
    for c in changes {
        if c.table() != Task::TABLE {
            continue;
        }
        match c.decode::<Task>() {
            Some(Ok(v)) => {
                let t = v.value;
                if t.node_id != node_id {
                    continue;
                }
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

//! Log relay: a manager asks the node running a task to publish its log lines, over the
//! node's session, and forwards what the node publishes to the subscriber. A node can
//! publish only for subscriptions on its own tasks. Execs go the same way (the exec
//! module).

use shoal_proto::control::TaskLogsMessage;
use shoal_proto::dispatcher::{LogSubscription, PublishLogsMessage};
use shoal_proto::objects::Task;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::mpsc;
use tonic::Status;

pub type LogStream = mpsc::Receiver<Result<TaskLogsMessage, Status>>;

struct Sub {
    node_id: String,
    tx: mpsc::Sender<Result<TaskLogsMessage, Status>>,
}

/// What a manager asks of a node through its session.
#[derive(Debug)]
/// Boxed: a node's channel allocates its slots 32 at a time, and an inline exec request
/// made that about 5 KiB per session.
pub enum NodeRequest {
    Logs(Box<LogSubscription>),
    Exec(Box<shoal_proto::dispatcher::ExecRequest>),
}

#[derive(Default)]
pub struct LogBroker {
    pub(super) nodes: Mutex<HashMap<String, mpsc::Sender<NodeRequest>>>,
    subs: Mutex<HashMap<String, Sub>>,
    pub(super) execs: Mutex<HashMap<String, ExecSub>>,
}

/// An exec under way (the exec module runs them; kept here, with the node channels it
/// goes through).
pub(super) struct ExecSub {
    pub(super) node_id: String,
    pub(super) out: mpsc::Sender<Result<shoal_proto::dispatcher::ExecOutput, Status>>,
    /// The user's input, until the node attaches.
    pub(super) input: Option<mpsc::Receiver<shoal_proto::dispatcher::ExecInput>>,
}

impl LogBroker {
    /// A node's session registers the channel its log requests go through.
    pub fn register_node(&self, node_id: &str, tx: mpsc::Sender<NodeRequest>) {
        if let Ok(mut m) = self.nodes.lock() {
            m.insert(node_id.to_string(), tx);
        }
    }

    /// Forgets a session's channel; true if it was the node's current one.
    pub fn unregister_node(&self, node_id: &str, tx: &mpsc::Sender<NodeRequest>) -> bool {
        if let Ok(mut m) = self.nodes.lock() {
            if m.get(node_id).is_some_and(|cur| cur.same_channel(tx)) {
                m.remove(node_id);
                return true;
            }
        }
        false
    }

    /// The session channel of node `node_id`, if it is connected to this manager.
    pub(super) fn node_channel(&self, node_id: &str) -> Option<mpsc::Sender<NodeRequest>> {
        self.nodes.lock().ok()?.get(node_id).cloned()
    }

    /// Asks the task's node for its logs; the returned stream ends when the node is done.
    pub async fn subscribe(
        &self,
        task: &Task,
        follow: bool,
        tail: u64,
    ) -> Result<LogStream, Status> {
        let node_tx = self.node_channel(&task.node_id).ok_or_else(|| {
            Status::unavailable(format!(
                "node {} that ran task {} is not connected: its logs cannot be read now",
                task.node_id, task.id
            ))
        })?;
        let id = shoal_pki::random_id();
        let (tx, rx) = mpsc::channel(64);
        if let Ok(mut s) = self.subs.lock() {
            s.insert(
                id.clone(),
                Sub {
                    node_id: task.node_id.clone(),
                    tx,
                },
            );
        }
        let sub = LogSubscription {
            id: id.clone(),
            task_id: task.id.clone(),
            follow,
            tail,
            close: false,
        };
        if node_tx
            .send(NodeRequest::Logs(Box::new(sub)))
            .await
            .is_err()
        {
            self.remove(&id);
            return Err(Status::unavailable(format!(
                "node {} disconnected",
                task.node_id
            )));
        }
        Ok(rx)
    }

    /// Ends every relayed stream with `why` and forgets every node's registration (the
    /// term they were made in ended).
    pub fn end_all(&self, why: &str) {
        let subs: Vec<Sub> = self
            .subs
            .lock()
            .map(|mut s| s.drain().map(|(_, v)| v).collect())
            .unwrap_or_default();
        for s in subs {
            let _ = s.tx.try_send(Err(Status::unavailable(why.to_string())));
        }
        self.end_execs(|_| true, why);
        if let Ok(mut n) = self.nodes.lock() {
            n.clear();
        }
    }

    fn remove(&self, id: &str) -> Option<Sub> {
        self.subs.lock().ok().and_then(|mut s| s.remove(id))
    }

    /// Lines published by `node_id`. Refused if the subscription is not for that node.
    /// Returns false when the subscriber is gone (the node should stop).
    pub async fn publish(&self, node_id: &str, msg: PublishLogsMessage) -> Result<bool, Status> {
        let tx = {
            let subs = self
                .subs
                .lock()
                .map_err(|_| Status::internal("log broker poisoned"))?;
            match subs.get(&msg.subscription_id) {
                None => return Ok(false),
                Some(s) if s.node_id != node_id => {
                    return Err(Status::permission_denied(
                        "this node may only publish logs of its own tasks",
                    ))
                }
                Some(s) => s.tx.clone(),
            }
        };
        if !msg.error.is_empty() {
            let _ = tx.send(Err(Status::unavailable(msg.error.clone()))).await;
            self.remove(&msg.subscription_id);
            return Ok(false);
        }
        if !msg.lines.is_empty()
            && tx
                .send(Ok(TaskLogsMessage { lines: msg.lines }))
                .await
                .is_err()
        {
            self.remove(&msg.subscription_id);
            return Ok(false);
        }
        if msg.close {
            self.remove(&msg.subscription_id);
            return Ok(false);
        }
        Ok(true)
    }

    /// Ends every subscription served by `node_id` (its session ended).
    pub fn drop_node_subs(&self, node_id: &str) {
        if let Ok(mut s) = self.subs.lock() {
            s.retain(|_, sub| sub.node_id != node_id);
        }
        self.end_execs(
            |n| n == node_id,
            "the task's node lost its session with the managers",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, node: &str) -> Task {
        Task {
            id: id.into(),
            node_id: node.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn only_the_tasks_node_may_publish_its_logs() {
        let broker = LogBroker::default();
        let (node_tx, mut node_rx) = mpsc::channel(4);
        broker.register_node("nodeA", node_tx);
        let mut out = broker
            .subscribe(&task("t1", "nodeA"), false, 0)
            .await
            .unwrap();
        let Some(NodeRequest::Logs(sub)) = node_rx.recv().await else {
            panic!("a log subscription")
        };
        assert_eq!(sub.task_id, "t1");

        let line = |s: &str| shoal_proto::dispatcher::LogLine {
            timestamp_unix_nanos: 1,
            stream: "stdout".into(),
            data: s.as_bytes().to_vec(),
        };
        let forged = PublishLogsMessage {
            subscription_id: sub.id.clone(),
            lines: vec![line("forged")],
            close: false,
            error: String::new(),
        };
        let err = broker.publish("nodeB", forged).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);

        let real = PublishLogsMessage {
            subscription_id: sub.id.clone(),
            lines: vec![line("real")],
            close: true,
            error: String::new(),
        };
        assert!(!broker.publish("nodeA", real).await.unwrap());
        let got = out.recv().await.unwrap().unwrap();
        assert_eq!(got.lines[0].data, b"real");
        assert!(out.recv().await.is_none(), "stream ends after close");
    }

    #[tokio::test]
    async fn logs_of_a_disconnected_node_are_unavailable() {
        let broker = LogBroker::default();
        let err = broker
            .subscribe(&task("t1", "gone"), false, 0)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.message().contains("not connected"));
    }

    #[tokio::test]
    async fn a_term_ending_ends_every_relayed_stream_and_registration() {
        let broker = LogBroker::default();
        let (node_tx, mut node_rx) = mpsc::channel(4);
        broker.register_node("nodeA", node_tx);
        let mut out = broker
            .subscribe(&task("t1", "nodeA"), true, 0)
            .await
            .unwrap();
        let Some(NodeRequest::Logs(sub)) = node_rx.recv().await else {
            panic!("a log subscription")
        };
        broker.end_all("the term ended");
        let err = out.recv().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert_eq!(err.message(), "the term ended");
        assert!(out.recv().await.is_none(), "and the stream ends");
        // What the node publishes for it now goes nowhere (it is told to stop) ...
        let late = PublishLogsMessage {
            subscription_id: sub.id,
            ..Default::default()
        };
        assert!(!broker.publish("nodeA", late).await.unwrap());
        // ... and a new subscription needs the node's new session, with the new leader.
        let err = broker
            .subscribe(&task("t1", "nodeA"), false, 0)
            .await
            .unwrap_err();
        assert!(err.message().contains("not connected"), "{err:?}");
    }
}

//! Exec relay (`task exec`): the control call asks the node running the task, over its
//! session, to run a command in the task's container; the node attaches with
//! `Dispatcher.Exec`, sending the output up while the user's input comes down. Only
//! the task's node may attach to an exec, and only once.

use super::logs::{ExecSub, LogBroker, NodeRequest};
use shoal_proto::dispatcher::{ExecInput, ExecOutput, ExecRequest, ExecStart};
use shoal_proto::objects::Task;
use tokio::sync::mpsc;
use tonic::Status;

pub type ExecStream = mpsc::Receiver<Result<ExecOutput, Status>>;

impl LogBroker {
    /// Asks the task's node to run `start` in it; returns the process's output. `input`
    /// is the user's (its end, without `stdin_closed` first, kills the process).
    pub async fn exec_open(
        &self,
        task: &Task,
        mut start: ExecStart,
        input: mpsc::Receiver<ExecInput>,
    ) -> Result<ExecStream, Status> {
        let node_tx = self.node_channel(&task.node_id).ok_or_else(|| {
            Status::unavailable(format!(
                "node {} that runs task {} is not connected: try again once it is",
                task.node_id, task.id
            ))
        })?;
        let id = shoal_pki::random_id();
        let (out, rx) = mpsc::channel(64);
        if let Ok(mut e) = self.execs.lock() {
            e.insert(
                id.clone(),
                ExecSub {
                    node_id: task.node_id.clone(),
                    out,
                    input: Some(input),
                },
            );
        }
        start.task = task.id.clone();
        let req = ExecRequest {
            id: id.clone(),
            start: Some(start),
        };
        if node_tx
            .send(NodeRequest::Exec(Box::new(req)))
            .await
            .is_err()
        {
            self.execs.lock().ok().and_then(|mut e| e.remove(&id));
            return Err(Status::unavailable(format!(
                "node {} disconnected",
                task.node_id
            )));
        }
        Ok(rx)
    }

    /// Node `node_id` attaches to exec `id`: where its output goes, and the user's
    /// input. Refused for another node's exec, or one already attached.
    #[allow(clippy::type_complexity)]
    pub fn exec_attach(
        &self,
        node_id: &str,
        id: &str,
    ) -> Result<
        (
            mpsc::Sender<Result<ExecOutput, Status>>,
            mpsc::Receiver<ExecInput>,
        ),
        Status,
    > {
        let mut execs = self
            .execs
            .lock()
            .map_err(|_| Status::internal("exec relay poisoned"))?;
        let Some(sub) = execs.get_mut(id) else {
            return Err(Status::not_found("no such exec: its user went away"));
        };
        if sub.node_id != node_id {
            return Err(Status::permission_denied(
                "this node may only serve execs in its own tasks",
            ));
        }
        let input = sub
            .input
            .take()
            .ok_or_else(|| Status::already_exists("this exec is served already"))?;
        Ok((sub.out.clone(), input))
    }

    /// Forgets exec `id` (it ended).
    pub fn exec_done(&self, id: &str) {
        if let Ok(mut e) = self.execs.lock() {
            e.remove(id);
        }
    }

    /// Ends the execs whose node `which` selects, telling their users `why`.
    pub(super) fn end_execs(&self, which: impl Fn(&str) -> bool, why: &str) {
        let ended: Vec<ExecSub> = match self.execs.lock() {
            Ok(mut e) => {
                let ids: Vec<String> = e
                    .iter()
                    .filter(|(_, s)| which(&s.node_id))
                    .map(|(k, _)| k.clone())
                    .collect();
                ids.iter().filter_map(|k| e.remove(k)).collect()
            }
            Err(_) => Vec::new(),
        };
        for s in ended {
            let _ = s.out.try_send(Err(Status::unavailable(why.to_string())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_tasks_node_may_attach_and_only_once() {
        let broker = LogBroker::default();
        let (node_tx, mut node_rx) = mpsc::channel(4);
        broker.register_node("nodeA", node_tx);
        let task = Task {
            id: "t1".into(),
            node_id: "nodeA".into(),
            ..Default::default()
        };
        let (in_tx, in_rx) = mpsc::channel(4);
        let mut out = broker
            .exec_open(&task, ExecStart::default(), in_rx)
            .await
            .unwrap();
        let Some(NodeRequest::Exec(req)) = node_rx.recv().await else {
            panic!("an exec request")
        };
        assert_eq!(req.start.unwrap().task, "t1");
        let err = broker.exec_attach("nodeB", &req.id).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        let (up, mut down) = broker.exec_attach("nodeA", &req.id).unwrap();
        assert_eq!(
            broker.exec_attach("nodeA", &req.id).unwrap_err().code(),
            tonic::Code::AlreadyExists
        );
        in_tx.send(ExecInput::default()).await.unwrap();
        assert!(
            down.recv().await.is_some(),
            "the user's input reaches the node"
        );
        up.send(Ok(ExecOutput {
            exited: true,
            exit_code: 3,
            ..Default::default()
        }))
        .await
        .unwrap();
        assert_eq!(out.recv().await.unwrap().unwrap().exit_code, 3);
        broker.drop_node_subs("nodeA");
        assert!(broker.exec_attach("nodeA", &req.id).is_err());
    }
}

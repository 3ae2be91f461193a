//! Sends task status to the managers in batches. Reports for one task are merged (the
//! latest forward state wins), so a slow manager sees fewer, later states, never an
//! older one after a newer one.

use shoal_proto::dispatcher::dispatcher_client::DispatcherClient;
use shoal_proto::dispatcher::{TaskStatusUpdate, UpdateTaskStatusRequest};
use shoal_proto::objects::TaskStatus;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub type StatusSender = mpsc::Sender<(String, TaskStatus)>;

pub fn start(channels: crate::session::Channels, cancel: CancellationToken) -> StatusSender {
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(run(channels, rx, cancel));
    tx
}

fn merge(pending: &mut HashMap<String, TaskStatus>, id: String, st: TaskStatus) {
    match pending.get(&id) {
        Some(cur) if cur.state > st.state => {}
        _ => {
            pending.insert(id, st);
        }
    }
}

async fn run(
    channels: crate::session::Channels,
    mut rx: mpsc::Receiver<(String, TaskStatus)>,
    cancel: CancellationToken,
) {
    let mut pending: HashMap<String, TaskStatus> = HashMap::new();
    loop {
        if pending.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                m = rx.recv() => match m {
                    Some((id, st)) => merge(&mut pending, id, st),
                    None => return,
                },
            }
        }
        // Whatever else arrives at once goes in the same batch.
        while let Ok((id, st)) = rx.try_recv() {
            merge(&mut pending, id, st);
        }
        let updates: Vec<TaskStatusUpdate> = pending
            .iter()
            .map(|(id, st)| TaskStatusUpdate {
                task_id: id.clone(),
                status: Some(st.clone()),
            })
            .collect();
        let mut req = tonic::Request::new(UpdateTaskStatusRequest { updates });
        req.set_timeout(Duration::from_secs(10));
        let mut client = DispatcherClient::new(channels.borrow().clone());
        match client.update_task_status(req).await {
            Ok(_) => pending.clear(),
            Err(e) => {
                tracing::warn!(code = ?e.code(), error = %e.message(), "task status not delivered; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

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

/// Where task status goes, and what [`run`] sends from.
pub fn channel() -> (StatusSender, mpsc::Receiver<(String, TaskStatus)>) {
    mpsc::channel(4096)
}

fn merge(pending: &mut HashMap<String, TaskStatus>, id: String, st: TaskStatus) {
    match pending.get(&id) {
        Some(cur) if cur.state > st.state => {}
        _ => {
            pending.insert(id, st);
        }
    }
}

/// Sends what arrives on `rx` to the managers, in batches, until cancelled.
pub async fn run(
    channels: crate::managers::Channels,
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
        // At most what one report may carry; the rest go in the next.
        let updates = next_report(&pending);
        let sent: Vec<String> = updates.iter().map(|u| u.task_id.clone()).collect();
        let mut req = tonic::Request::new(UpdateTaskStatusRequest { updates });
        req.set_timeout(Duration::from_secs(10));
        let mut client = DispatcherClient::new(channels.borrow().clone());
        match client.update_task_status(req).await {
            Ok(_) => {
                for id in sent {
                    pending.remove(&id);
                }
            }
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

/// The next report: at most [`shoal_proto::limits::MAX_STATUS_UPDATES`] of the pending
/// statuses (a manager refuses more in one call).
fn next_report(pending: &HashMap<String, TaskStatus>) -> Vec<TaskStatusUpdate> {
    pending
        .iter()
        .take(shoal_proto::limits::MAX_STATUS_UPDATES)
        .map(|(id, st)| TaskStatusUpdate {
            task_id: id.clone(),
            status: Some(st.clone()),
        })
        .collect()
}

#[cfg(test)]
mod report_tests {
    use super::*;

    #[test]
    fn more_pending_statuses_than_one_report_may_carry_go_in_several() {
        let limit = shoal_proto::limits::MAX_STATUS_UPDATES;
        let mut pending: HashMap<String, TaskStatus> = (0..limit + 5)
            .map(|i| (format!("t{i}"), TaskStatus::default()))
            .collect();
        let first = next_report(&pending);
        assert_eq!(first.len(), limit);
        for u in &first {
            pending.remove(&u.task_id);
        }
        let second = next_report(&pending);
        assert_eq!(second.len(), 5);
        assert!(second
            .iter()
            .all(|u| !first.iter().any(|f| f.task_id == u.task_id)));
    }
}

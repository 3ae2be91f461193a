//! Task status from agents, written in batches: many nodes' reports within a few
//! milliseconds become one store transaction (swarm mode batches the same way).

use crate::time::{unix_now, unix_now_ms};
use shoal_proto::dispatcher::TaskStatusUpdate;
use shoal_proto::objects::{Task, TaskState};
use shoal_store::{Batch, Expect, Store, StoreError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

const MAX_BATCH: usize = 2000;
const BATCH_WINDOW: Duration = Duration::from_millis(5);

type Job = (Vec<TaskStatusUpdate>, oneshot::Sender<Result<(), String>>);

/// The queue of status reports; [`StatusWriter::run`] (a leader-only loop) writes them.
#[derive(Clone)]
pub struct StatusWriter {
    tx: mpsc::Sender<Job>,
    rx: std::sync::Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
}

/// Whether a task in `state` has finished (nothing more will happen to it).
pub fn is_terminal(state: i32) -> bool {
    state >= TaskState::Complete as i32
}

impl StatusWriter {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(1024);
        StatusWriter {
            tx,
            rx: std::sync::Arc::new(tokio::sync::Mutex::new(rx)),
        }
    }

    /// Writes queued reports in batches until cancelled (one term of leadership).
    pub async fn run(self, store: Store, cancel: CancellationToken) {
        let mut rx = self.rx.lock().await;
        run(store, &mut rx, cancel).await
    }

    /// Queues already-authorized updates and waits until they are committed.
    pub async fn write(&self, updates: Vec<TaskStatusUpdate>) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((updates, done))
            .await
            .map_err(|_| "the dispatcher is shutting down".to_string())?;
        wait.await
            .map_err(|_| "the dispatcher is shutting down".to_string())?
    }
}

impl Default for StatusWriter {
    fn default() -> Self {
        Self::new()
    }
}

async fn run(store: Store, rx: &mut mpsc::Receiver<Job>, cancel: CancellationToken) {
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            j = rx.recv() => match j { Some(j) => j, None => return },
        };
        let mut jobs = vec![first];
        let mut n = jobs[0].0.len();
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while n < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(j)) => {
                    n += j.0.len();
                    jobs.push(j);
                }
                _ => break,
            }
        }
        let updates: Vec<&TaskStatusUpdate> = jobs.iter().flat_map(|j| j.0.iter()).collect();
        let result = apply(&store, &updates).await.map_err(|e| e.to_string());
        for (_, done) in jobs {
            let _ = done.send(result.clone());
        }
    }
}

/// Applies forward moves only; a task whose removal was asked for is deleted once it has
/// finished.
async fn apply(store: &Store, updates: &[&TaskStatusUpdate]) -> Result<(), StoreError> {
    for _attempt in 0..5 {
        let mut batch = Batch::default();
        let mut seen = std::collections::HashMap::new();
        for u in updates {
            let Some(status) = &u.status else { continue };
            let cur = match seen.get(&u.task_id) {
                Some(t) => Some(shoal_store::Versioned::clone(t)),
                None => store.get::<Task>(&u.task_id)?,
            };
            let Some(cur) = cur else { continue };
            let mut task = cur.value.clone();
            let prev = task.status.clone().unwrap_or_default();
            let mut next = status.clone();
            if next.state < prev.state {
                continue;
            }
            if next.state == prev.state {
                // The same state again: only news of its health counts, and the state
                // keeps the time it was first recorded (what update monitors count from).
                if next.health == prev.health && next.health_output == prev.health_output {
                    continue;
                }
                next.applied_at_ms = prev.applied_at_ms;
            } else {
                next.applied_at_ms = unix_now_ms();
            }
            task.status = Some(next);
            task.updated_at_unix = unix_now();
            seen.insert(
                u.task_id.clone(),
                shoal_store::Versioned {
                    version: cur.version,
                    value: task,
                },
            );
        }
        for (_, t) in seen {
            let state = t.value.status.as_ref().map(|s| s.state).unwrap_or(0);
            if t.value.desired_state >= TaskState::Remove as i32 && is_terminal(state) {
                batch.delete::<Task>(&t.value.id, Expect::Version(t.version));
            } else {
                batch.put(&t.value, Expect::Version(t.version));
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        match store.commit(batch).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Raft(
        "task status kept changing under the dispatcher".into(),
    ))
}

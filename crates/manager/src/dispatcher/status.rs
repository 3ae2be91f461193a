//! Task status from agents, written in batches: many nodes' reports within a few
//! milliseconds become one store transaction (swarm mode batches the same way). A batch
//! that keeps conflicting is written task by task, so one contended task does not sink
//! the others; reports queued in one term of leadership are never written in another.

use crate::time::{unix_now, unix_now_ms};
use shoal_proto::dispatcher::TaskStatusUpdate;
use shoal_proto::objects::{Task, TaskState};
use shoal_store::{Batch, Expect, Leadership, Store, StoreError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

const MAX_BATCH: usize = shoal_proto::limits::MAX_STATUS_UPDATES;
const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// Reports queued while this manager led in a term, and who waits for them.
struct Job {
    term: u64,
    updates: Vec<TaskStatusUpdate>,
    done: oneshot::Sender<Result<(), String>>,
}

const STEPPED_DOWN: &str = "the manager that took this report stopped leading before writing it: report again to the leader";

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
    /// Reports queued in another term are refused: the agent sends them again.
    pub async fn run(self, store: Store, cancel: CancellationToken) {
        let mut rx = self.rx.lock().await;
        let Leadership::Leader { term } = store.leadership().current() else {
            return;
        };
        run(store, term, &mut rx, cancel).await;
        // The term ended: what waits was taken by a leader that no longer is.
        while let Ok(j) = rx.try_recv() {
            let _ = j.done.send(Err(STEPPED_DOWN.into()));
        }
    }

    /// Queues already-authorized updates, taken while `leadership` held, and waits
    /// until they are committed.
    pub async fn write(
        &self,
        leadership: Leadership,
        updates: Vec<TaskStatusUpdate>,
    ) -> Result<(), String> {
        let Leadership::Leader { term } = leadership else {
            return Err(STEPPED_DOWN.into());
        };
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job {
                term,
                updates,
                done,
            })
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

async fn run(store: Store, term: u64, rx: &mut mpsc::Receiver<Job>, cancel: CancellationToken) {
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            j = rx.recv() => match j { Some(j) => j, None => return },
        };
        let mut jobs = vec![first];
        let mut n = jobs[0].updates.len();
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while n < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(j)) => {
                    n += j.updates.len();
                    jobs.push(j);
                }
                _ => break,
            }
        }
        let (jobs, stale): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.term == term);
        for j in stale {
            let _ = j.done.send(Err(STEPPED_DOWN.into()));
        }
        let updates: Vec<&TaskStatusUpdate> = jobs.iter().flat_map(|j| j.updates.iter()).collect();
        let result = write_batch(&store, &updates)
            .await
            .map_err(|e| e.to_string());
        for j in jobs {
            let _ = j.done.send(result.clone());
        }
    }
}

/// Writes `updates` in one transaction, or, when that keeps conflicting with other
/// writers, each task's on its own: a conflict on one task does not hold up the rest.
async fn write_batch(store: &Store, updates: &[&TaskStatusUpdate]) -> Result<(), StoreError> {
    match apply(store, updates, 3).await {
        Err(StoreError::Conflict { .. }) if updates.len() > 1 => {}
        r => return r,
    }
    let mut by_task: std::collections::BTreeMap<&str, Vec<&TaskStatusUpdate>> = Default::default();
    for u in updates {
        by_task.entry(u.task_id.as_str()).or_default().push(u);
    }
    let mut first_err = None;
    for (id, ups) in by_task {
        if let Err(e) = apply(store, &ups, 5).await {
            tracing::warn!(task_id = %id, error = %e, "task status not written");
            if !matches!(e, StoreError::Conflict { .. }) {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Applies forward moves only; a task whose removal was asked for is deleted once it has
/// finished.
async fn apply(
    store: &Store,
    updates: &[&TaskStatusUpdate],
    attempts: usize,
) -> Result<(), StoreError> {
    let mut last = None;
    for _attempt in 0..attempts {
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
            Err(e @ StoreError::Conflict { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        StoreError::Raft("task status kept changing under the dispatcher".into())
    }))
}

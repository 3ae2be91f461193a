//! The worker: turns the assignment set from the managers into task controllers, and
//! removes containers of tasks that are no longer assigned here.

use crate::controller::{self, Deps};
use shoal_proto::dispatcher::assignment::Action;
use shoal_proto::dispatcher::SessionMessage;
use shoal_proto::objects::{Task, TaskState};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio::task::JoinHandle;

struct Entry {
    desired: watch::Sender<i32>,
    handle: Option<JoinHandle<()>>,
}

#[derive(Clone)]
pub struct Worker {
    deps: Deps,
    tasks: Arc<Mutex<HashMap<String, Entry>>>,
    /// Removals under way (each stops a task's controller, then removes what it left).
    removals: Arc<Mutex<tokio::task::JoinSet<()>>>,
}

/// Task IDs name directories on this node: only base36 IDs are used as such.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
}

fn is_terminal(t: &Task) -> bool {
    t.status.as_ref().map(|s| s.state).unwrap_or(0) >= TaskState::Complete as i32
}

impl Worker {
    pub fn new(deps: Deps) -> Self {
        Worker {
            deps,
            tasks: Arc::new(Mutex::new(HashMap::new())),
            removals: Arc::default(),
        }
    }

    /// Stops every task controller (their containers run on, to be adopted by the next
    /// start, or removed by a leave) and waits for them and for removals under way.
    pub async fn stop(&self) {
        let entries: Vec<Entry> = self
            .tasks
            .lock()
            .map(|mut t| t.drain().map(|(_, e)| e).collect())
            .unwrap_or_default();
        for e in entries {
            if let Some(h) = e.handle {
                h.abort();
                let _ = h.await;
            }
        }
        let mut removals = self
            .removals
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        while removals.join_next().await.is_some() {}
    }

    pub fn deps(&self) -> &Deps {
        &self.deps
    }

    /// Whether `task_id` is assigned to this node.
    pub fn has_task(&self, task_id: &str) -> bool {
        self.tasks
            .lock()
            .map(|t| t.contains_key(task_id))
            .unwrap_or(false)
    }

    /// Applies one session message's assignments. A complete set also removes what is
    /// left on disk of tasks it no longer has (listed on a blocking thread).
    pub async fn apply(&self, msg: &SessionMessage) {
        if msg.complete {
            let keep: HashSet<String> = msg
                .assignments
                .iter()
                .filter_map(|a| a.task.as_ref().map(|t| t.id.clone()))
                .collect();
            let known: Vec<String> = self
                .tasks
                .lock()
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default();
            let (runtime, network) = (self.deps.runtime.clone(), self.deps.network.clone());
            let on_disk = tokio::task::spawn_blocking(move || {
                let mut ids = runtime.list();
                ids.extend(network.list());
                ids
            })
            .await
            .unwrap_or_default();
            let gone: HashSet<String> = known
                .into_iter()
                .chain(on_disk)
                .filter(|id| !keep.contains(id))
                .collect();
            for id in gone {
                self.remove(&id);
            }
        }
        for a in &msg.assignments {
            match Action::try_from(a.action) {
                Ok(Action::Update) => {
                    if let Some(t) = &a.task {
                        self.upsert(t.clone());
                    }
                }
                Ok(Action::Remove) => self.remove(&a.task_id),
                Err(_) => {}
            }
        }
    }

    fn upsert(&self, task: Task) {
        if !valid_id(&task.id) {
            tracing::warn!(task_id = %task.id, "ignoring an assignment with a malformed task ID");
            return;
        }
        let Ok(mut tasks) = self.tasks.lock() else {
            return;
        };
        if let Some(e) = tasks.get(&task.id) {
            let _ = e.desired.send(task.desired_state);
            return;
        }
        let (tx, rx) = watch::channel(task.desired_state);
        let handle = if is_terminal(&task) {
            None
        } else {
            let span = tracing::info_span!(
                "task",
                task_id = %task.id,
                service_id = %task.service_id,
                slot = task.slot
            );
            Some(tokio::spawn(tracing::Instrument::instrument(
                controller::run(task.clone(), rx, self.deps.clone()),
                span,
            )))
        };
        tasks.insert(
            task.id,
            Entry {
                desired: tx,
                handle,
            },
        );
    }

    /// Stops every task's container and removes them (the node leaves the cluster).
    pub async fn remove_all(&self) {
        let entries: Vec<(String, Entry)> = self
            .tasks
            .lock()
            .map(|mut t| t.drain().collect())
            .unwrap_or_default();
        let (runtime, network) = (self.deps.runtime.clone(), self.deps.network.clone());
        let mut ids: HashSet<String> = tokio::task::spawn_blocking(move || {
            let mut ids: HashSet<String> = runtime.list().into_iter().collect();
            ids.extend(network.list());
            ids
        })
        .await
        .unwrap_or_default();
        // Every container is told to stop first, then all are awaited: one grace period
        // in total, not one per container.
        let mut handles = Vec::new();
        for (id, e) in entries {
            let _ = e.desired.send(TaskState::Remove as i32);
            handles.extend(e.handle);
            ids.insert(id);
        }
        for h in handles {
            let _ = h.await;
        }
        let mut removals = tokio::task::JoinSet::new();
        for id in ids {
            let (rt, net, sec, vol) = (
                self.deps.runtime.clone(),
                self.deps.network.clone(),
                self.deps.secrets.clone(),
                self.deps.volumes.clone(),
            );
            removals.spawn_blocking(move || {
                controller::remove_task(rt.as_ref(), &net, &sec, &vol, &id)
            });
        }
        while removals.join_next().await.is_some() {}
    }

    /// Stops the task's container if it runs, then removes everything of it.
    fn remove(&self, id: &str) {
        if !valid_id(id) {
            return;
        }
        let entry = self.tasks.lock().ok().and_then(|mut t| t.remove(id));
        let (runtime, network, secrets, volumes) = (
            self.deps.runtime.clone(),
            self.deps.network.clone(),
            self.deps.secrets.clone(),
            self.deps.volumes.clone(),
        );
        let id = id.to_string();
        let Ok(mut removals) = self.removals.lock() else {
            return;
        };
        while removals.try_join_next().is_some() {}
        removals.spawn(async move {
            if let Some(e) = entry {
                let _ = e.desired.send(TaskState::Remove as i32);
                if let Some(h) = e.handle {
                    let _ = h.await;
                }
            }
            let i = id.clone();
            match tokio::task::spawn_blocking(move || {
                controller::remove_task(runtime.as_ref(), &network, &secrets, &volumes, &i)
            })
            .await
            {
                Ok(Ok(())) => tracing::debug!(task_id = %id, "container removed"),
                Ok(Err(e)) => tracing::warn!(task_id = %id, error = %e, "cannot remove container"),
                Err(e) => tracing::warn!(task_id = %id, error = %e, "container removal panicked"),
            }
        });
    }
}

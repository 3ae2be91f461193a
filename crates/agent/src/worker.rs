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
}

fn is_terminal(t: &Task) -> bool {
    t.status.as_ref().map(|s| s.state).unwrap_or(0) >= TaskState::Complete as i32
}

impl Worker {
    pub fn new(deps: Deps) -> Self {
        Worker {
            deps,
            tasks: Arc::new(Mutex::new(HashMap::new())),
        }
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

    /// Applies one session message's assignments.
    pub fn apply(&self, msg: &SessionMessage) {
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
            let on_disk = self.deps.runtime.list();
            for id in known.into_iter().chain(on_disk) {
                if !keep.contains(&id) {
                    self.remove(&id);
                }
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
            Some(tokio::spawn(controller::run(
                task.clone(),
                rx,
                self.deps.clone(),
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

    /// Stops the task's container if it runs, then removes everything of it.
    fn remove(&self, id: &str) {
        let entry = self.tasks.lock().ok().and_then(|mut t| t.remove(id));
        let runtime = self.deps.runtime.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            if let Some(e) = entry {
                let _ = e.desired.send(TaskState::Remove as i32);
                if let Some(h) = e.handle {
                    let _ = h.await;
                }
            }
            let i = id.clone();
            match tokio::task::spawn_blocking(move || runtime.remove(&i)).await {
                Ok(Ok(())) => tracing::debug!(task_id = %id, "container removed"),
                Ok(Err(e)) => tracing::warn!(task_id = %id, error = %e, "cannot remove container"),
                Err(e) => tracing::warn!(task_id = %id, error = %e, "container removal panicked"),
            }
        });
    }
}

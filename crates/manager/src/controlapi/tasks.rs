//! Tasks: one-off tasks (`shoal task run`), their list, removal and logs.
use super::roles::stack_of;
use super::{runtime_error, validate_spec, ControlApi, ControlCaller, ControlError};
use shoal_proto::control::{CreateTaskRequest, ListTasksResponse};
use shoal_proto::objects::{Availability, Node, NodeState, Service, Task, TaskState, TaskStatus};
use shoal_proto::HOST_NETWORK;
use shoal_store::{Batch, Expect, StoreError};
use std::collections::HashMap;
use tonic::Status;

impl ControlApi {
    /// A task by ID, unique ID prefix, or name.
    pub fn get_task(&self, caller: &ControlCaller, reference: &str) -> Result<Task, ControlError> {
        let t = self.find_task(reference)?;
        caller.in_scope("task", &t.id, &t.name, &self.task_labels(&t))?;
        Ok(t)
    }

    /// The labels that put a task in a stack: its service's, or (a one-off task, or one
    /// whose service is gone) its container's.
    pub(crate) fn task_labels(&self, t: &Task) -> HashMap<String, String> {
        if let Ok(Some(s)) = self.get::<Service>(&t.service_id) {
            return s.value.spec.map(|x| x.labels).unwrap_or_default();
        }
        t.spec
            .as_ref()
            .map(|c| c.labels.clone())
            .unwrap_or_default()
    }

    fn find_task(&self, reference: &str) -> Result<Task, ControlError> {
        if let Some(t) = self.get::<Task>(reference)? {
            return Ok(t.value);
        }
        let tasks: Vec<Task> = self.list::<Task>()?.into_iter().map(|v| v.value).collect();
        let by_name: Vec<&Task> = tasks.iter().filter(|t| t.name == reference).collect();
        let found: Vec<&Task> = if by_name.is_empty() && !reference.is_empty() {
            tasks
                .iter()
                .filter(|t| t.id.starts_with(reference))
                .collect()
        } else {
            by_name
        };
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ControlError::NoSuchTask(reference.to_string())),
            many => Err(ControlError::AmbiguousTask(
                reference.to_string(),
                many.len(),
            )),
        }
    }

    /// Creates a one-off task on a node (`shoal task run`): the node given, or the ready,
    /// active node running the fewest tasks.
    pub async fn create_task(
        &self,
        caller: &ControlCaller,
        req: CreateTaskRequest,
    ) -> Result<Task, ControlError> {
        let mut spec = req.spec.unwrap_or_default();
        validate_spec(&spec)?;
        self.resolve_networks(&mut spec, true)?;
        self.resolve_secrets(&mut spec)?;
        caller.in_scope("task", "", &req.name, &spec.labels)?;
        self.refs_in_scope(caller, Some(&spec))?;
        if !req.name.is_empty() {
            shoal_proto::limits::check_name("task name", &req.name)
                .map_err(ControlError::BadRequest)?;
        }
        let node = if req.node.is_empty() {
            let tasks = self.list::<Task>()?;
            let load = |id: &str| {
                tasks
                    .iter()
                    .filter(|t| {
                        t.value.node_id == id && t.value.desired_state <= TaskState::Running as i32
                    })
                    .count()
            };
            self.list::<Node>()?
                .into_iter()
                .map(|v| v.value)
                .filter(|n| {
                    n.state == NodeState::Ready as i32
                        && n.availability == Availability::Active as i32
                        && runtime_error(n).is_empty()
                })
                .min_by_key(|n| (load(&n.id), n.id.clone()))
                .ok_or_else(|| {
                    ControlError::Unplaceable("no ready, active node to run the task on".into())
                })?
        } else {
            let n = self.get_node(caller, &req.node)?.node.unwrap_or_default();
            if n.state != NodeState::Ready as i32 {
                return Err(ControlError::Unplaceable(format!(
                    "node {} is not ready (it is down or disconnected)",
                    req.node
                )));
            }
            if !runtime_error(&n).is_empty() {
                return Err(ControlError::Unplaceable(format!(
                    "node {} cannot run containers: {}",
                    req.node,
                    runtime_error(&n)
                )));
            }
            n
        };
        let now = crate::time::unix_now();
        let id = shoal_pki::random_id();
        // A task on overlay networks goes through the allocator (its addresses) and the
        // scheduler, pinned to the node chosen here; others are assigned at once.
        let overlay = spec.networks.iter().any(|n| n.target != HOST_NETWORK);
        let (node_id, state, message, placement) = if overlay {
            (
                String::new(),
                TaskState::Pending,
                "pending task scheduling",
                Some(shoal_proto::objects::Placement {
                    constraints: vec![format!("node.id=={}", node.id)],
                    ..Default::default()
                }),
            )
        } else {
            (node.id.clone(), TaskState::Assigned, "assigned", None)
        };
        let task = Task {
            name: if req.name.is_empty() {
                id[..12].to_string()
            } else {
                req.name
            },
            id,
            node_id,
            spec: Some(spec),
            desired_state: TaskState::Running as i32,
            status: Some(TaskStatus {
                state: state as i32,
                message: message.into(),
                timestamp_unix_ms: now * 1000,
                ..Default::default()
            }),
            created_at_unix: now,
            updated_at_unix: now,
            placement,
            ..Default::default()
        };
        let mut b = Batch::default();
        b.put(&task, Expect::Absent);
        self.commit(b).await?;
        tracing::info!(task_id = %task.id, node_id = %node.id, by = %caller, "task created");
        Ok(task)
    }

    pub fn list_tasks(
        &self,
        caller: &ControlCaller,
        node: &str,
        service_id: &str,
    ) -> Result<ListTasksResponse, ControlError> {
        let node_id = if node.is_empty() {
            None
        } else {
            Some(self.get_node(caller, node)?.node.unwrap_or_default().id)
        };
        let mut tasks: Vec<Task> = self
            .list::<Task>()?
            .into_iter()
            .map(|v| v.value)
            .filter(|t| node_id.as_ref().is_none_or(|n| &t.node_id == n))
            .filter(|t| service_id.is_empty() || t.service_id == service_id)
            .filter(|t| caller.limits().is_none() || caller.sees(&self.task_labels(t)))
            .collect();
        tasks.sort_by(|a, b| {
            a.name
                .cmp(&b.name)
                .then(b.created_at_unix.cmp(&a.created_at_unix))
        });
        let node_names = self
            .list::<Node>()?
            .into_iter()
            .map(|v| {
                let host = v.value.description.map(|d| d.hostname).unwrap_or_default();
                (v.value.id, host)
            })
            .collect();
        Ok(ListTasksResponse { tasks, node_names })
    }

    /// Stops a task and deletes it once its node reports it finished (at once if it has).
    pub async fn remove_task(
        &self,
        caller: &ControlCaller,
        reference: &str,
    ) -> Result<(), ControlError> {
        loop {
            let task = self.get_task(caller, reference)?;
            let Some(cur) = self.get::<Task>(&task.id)? else {
                return Ok(());
            };
            let state = cur.value.status.as_ref().map(|s| s.state).unwrap_or(0);
            let mut b = Batch::default();
            if crate::dispatcher::status::is_terminal(state) {
                b.delete::<Task>(&task.id, Expect::Version(cur.version));
            } else {
                let mut t = cur.value.clone();
                t.desired_state = TaskState::Remove as i32;
                t.updated_at_unix = crate::time::unix_now();
                b.put(&t, Expect::Version(cur.version));
            }
            match self.commit(b).await {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The task's output, relayed from the node that runs it.
    pub async fn task_logs(
        &self,
        caller: &ControlCaller,
        reference: &str,
        follow: bool,
        tail: u64,
    ) -> Result<(crate::dispatcher::logs::LogStream, Option<String>), Status> {
        let task = self.get_task(caller, reference)?;
        let stack = stack_of(&self.task_labels(&task)).map(str::to_string);
        Ok((self.logs.subscribe(&task, follow, tail).await?, stack))
    }

    /// Runs `start` in a running task's container, relayed through its node; `input`
    /// is the user's.
    pub async fn task_exec(
        &self,
        caller: &ControlCaller,
        start: shoal_proto::dispatcher::ExecStart,
        input: tokio::sync::mpsc::Receiver<shoal_proto::dispatcher::ExecInput>,
    ) -> Result<(crate::dispatcher::exec::ExecStream, Option<String>), Status> {
        if start.cmd.is_empty() {
            return Err(Status::invalid_argument("exec needs a command to run"));
        }
        let task = self.get_task(caller, &start.task)?;
        let state = task.status.as_ref().map_or(0, |s| s.state);
        if state != TaskState::Running as i32 {
            return Err(Status::failed_precondition(format!(
                "task {} is not running ({}): exec runs in a running task",
                task.id,
                TaskState::try_from(state)
                    .map(|s| s.as_str_name().to_lowercase())
                    .unwrap_or_default()
            )));
        }
        let stack = stack_of(&self.task_labels(&task)).map(str::to_string);
        Ok((self.logs.exec_open(&task, start, input).await?, stack))
    }
}

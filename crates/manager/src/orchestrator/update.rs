//! Rolling updates and rollbacks. An update is not a process with memory: each pass of
//! the orchestrator reads where it stands from the store (the service's update status
//! and its tasks) and takes the next step, so a new leader goes on exactly where the
//! old one stopped, with no wave skipped or repeated.
//!
//! The replicated and global reconcilers walk their groups (slots, or nodes) and tell
//! an [`Update`] what each holds: a task of the current spec (in progress, updated, or
//! failed), an old task being stopped for the update, or an old task still to replace
//! (a candidate). [`Update::finish`] then records progress in the update status and
//! says which candidates to replace now: as many as `parallelism` leaves free. A slot
//! counts as updated once its new task has been RUNNING for the monitor period (and is
//! healthy, if it has a health check); its worker is free again `delay` later.

use super::{finished_at, has_finished, is_live, state_of, Plan};
use shoal_proto::objects::{
    FailureAction, HealthState, Service, Task, TaskState, UpdateConfig, UpdateOrder, UpdateState,
    UpdateStatus,
};

/// Swarm's default monitor period.
pub const DEFAULT_MONITOR_MS: u64 = 5000;

/// The update settings in force, defaults filled in.
#[derive(Clone, Debug)]
pub struct Settings {
    /// 0: all at once.
    pub parallelism: u64,
    pub delay_ms: i64,
    pub monitor_ms: i64,
    pub failure_action: FailureAction,
    pub max_failure_ratio: f32,
    pub order: UpdateOrder,
}

impl Settings {
    pub fn of(c: Option<&UpdateConfig>) -> Settings {
        let c = c.cloned().unwrap_or_default();
        Settings {
            parallelism: c.parallelism.unwrap_or(1),
            delay_ms: c.delay_ms as i64,
            monitor_ms: c.monitor_ms.unwrap_or(DEFAULT_MONITOR_MS) as i64,
            failure_action: FailureAction::try_from(c.failure_action)
                .unwrap_or(FailureAction::Pause),
            max_failure_ratio: c.max_failure_ratio,
            order: UpdateOrder::try_from(c.order).unwrap_or(UpdateOrder::StopFirst),
        }
    }
}

/// When the task's current RUNNING state was recorded (manager clock when known).
fn running_since(t: &Task) -> Option<i64> {
    (state_of(t) == TaskState::Running as i32).then(|| finished_at(t))
}

fn health(t: &Task) -> HealthState {
    HealthState::try_from(t.status.as_ref().map(|s| s.health).unwrap_or(0))
        .unwrap_or(HealthState::None)
}

/// When the task counts as updated: RUNNING for `monitor_ms`, and healthy if it has a
/// health check. None while it is not (yet) on its way there.
pub fn stable_at(t: &Task, monitor_ms: i64) -> Option<i64> {
    let since = running_since(t)?;
    match health(t) {
        HealthState::None | HealthState::Healthy => Some(since + monitor_ms),
        HealthState::Starting | HealthState::Unhealthy => None,
    }
}

/// Whether a task that ended had counted as updated before it did: it ran for the
/// monitor period, and it did not end for want of health (a task failed by its health
/// check is a failure of the update, however long it ran unhealthy or starting).
fn ended_after_monitor(t: &Task, monitor_ms: i64) -> bool {
    let st = t.status.clone().unwrap_or_default();
    let healthy = matches!(health(t), HealthState::None | HealthState::Healthy);
    healthy && st.started_at_ms > 0 && st.timestamp_unix_ms - st.started_at_ms >= monitor_ms
}

/// What went wrong with a task, for the update's message.
pub fn task_error(t: &Task) -> String {
    let st = t.status.clone().unwrap_or_default();
    if !st.err.is_empty() {
        return st.err;
    }
    let state = TaskState::try_from(st.state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("TASK_STATE_")
                .to_lowercase()
        })
        .unwrap_or_default();
    format!("{state} (exit code {})", st.exit_code)
}

pub fn is_rollback(state: UpdateState) -> bool {
    matches!(
        state,
        UpdateState::RollbackStarted | UpdateState::RollbackPaused | UpdateState::RollbackCompleted
    )
}

/// One service's update, as seen in one pass.
pub struct Update<'s> {
    service: &'s Service,
    status: UpdateStatus,
    state: UpdateState,
    settings: Settings,
    now: i64,
    /// Groups (slots or nodes) this update has taken and not finished with.
    busy: u64,
    /// Groups with an old task still to replace, in order.
    candidates: Vec<String>,
    /// Failed tasks seen this pass that the status does not list yet: ID, name, error.
    new_failures: Vec<(String, String, String)>,
    /// How many groups the service has (the failure ratio's denominator).
    groups: u64,
}

/// What the caller does with a candidate it is told to replace.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Stop the old task; its successor starts once it has stopped.
    StopFirst,
    /// Start the successor at once; the old task stops once it runs.
    StartFirst,
}

impl<'s> Update<'s> {
    pub fn new(service: &'s Service, now: i64) -> Update<'s> {
        let status = service.update_status.clone().unwrap_or_default();
        let state = UpdateState::try_from(status.state).unwrap_or(UpdateState::None);
        let spec = service.spec.clone().unwrap_or_default();
        let settings = if is_rollback(state) {
            Settings::of(spec.rollback.as_ref())
        } else {
            Settings::of(spec.update.as_ref())
        };
        Update {
            service,
            status,
            state,
            settings,
            now,
            busy: 0,
            candidates: vec![],
            new_failures: vec![],
            groups: 0,
        }
    }

    /// Tasks are being moved to the current spec now (not paused, not done).
    fn active(&self) -> bool {
        matches!(
            self.state,
            UpdateState::Updating | UpdateState::RollbackStarted
        )
    }

    /// The spec version this update moves tasks to: tasks made from it (or later) are
    /// its own.
    fn version(&self) -> u64 {
        match self.status.spec_version {
            0 => self.service.spec_version,
            v => v,
        }
    }

    pub fn order(&self) -> Step {
        match self.settings.order {
            UpdateOrder::StartFirst => Step::StartFirst,
            UpdateOrder::StopFirst => Step::StopFirst,
        }
    }

    /// Counts one group of the service.
    pub fn group(&mut self) {
        self.groups += 1;
    }

    /// A group whose newest live task runs the current spec.
    pub fn current(&mut self, t: &Task, plan: &mut Plan) {
        if !self.active() || t.spec_version < self.version() {
            return;
        }
        let m = self.settings.monitor_ms;
        if has_finished(t) {
            let failed = !ended_after_monitor(t, m);
            if failed && !self.status.failed_tasks.contains(&t.id) {
                self.new_failures
                    .push((t.id.clone(), t.name.clone(), task_error(t)));
            }
            if failed && self.settings.failure_action != FailureAction::Continue {
                self.busy += 1;
            }
            return;
        }
        match stable_at(t, m) {
            Some(at) if at <= self.now => {
                let free_at = at + self.settings.delay_ms;
                if free_at > self.now {
                    self.busy += 1;
                    plan.wake(free_at);
                }
            }
            Some(at) => {
                self.busy += 1;
                plan.wake(at);
            }
            None => self.busy += 1,
        }
    }

    /// A group that gets a new task of the current spec in this pass.
    pub fn started(&mut self) {
        if self.active() {
            self.busy += 1;
        }
    }

    /// A group whose old task is being stopped so that its successor can start.
    pub fn stopping(&mut self) {
        if self.active() {
            self.busy += 1;
        }
    }

    /// A group whose live task runs an old spec.
    pub fn candidate(&mut self, key: String) {
        self.candidates.push(key);
    }

    /// Records progress in the service (through `plan`) and returns the candidates to
    /// replace now.
    pub fn finish(mut self, plan: &mut Plan) -> Vec<String> {
        let now = self.now;
        if !self.active() {
            // Old tasks and no update under way (a service from before updates were
            // tracked, or one whose spec changed without a status): one starts.
            let idle = matches!(
                self.state,
                UpdateState::None | UpdateState::Completed | UpdateState::RollbackCompleted
            );
            if idle && !self.candidates.is_empty() {
                let s = plan.service_mut(self.service);
                s.update_status = Some(UpdateStatus {
                    state: UpdateState::Updating as i32,
                    started_at_ms: now,
                    message: "update in progress".into(),
                    spec_version: s.spec_version,
                    ..Default::default()
                });
                plan.wake(now);
            }
            return vec![];
        }
        let rolling_back = self.state == UpdateState::RollbackStarted;
        if !self.new_failures.is_empty() {
            let s = plan.service_mut(self.service);
            let st = s.update_status.get_or_insert_with(Default::default);
            st.failed_tasks
                .extend(self.new_failures.iter().map(|(id, _, _)| id.clone()));
            self.status = st.clone();
        }
        let failures = self.status.failed_tasks.len() as f32;
        let exceeded = failures / self.groups.max(1) as f32 > self.settings.max_failure_ratio;
        if exceeded && self.settings.failure_action != FailureAction::Continue {
            let what = match self.new_failures.first() {
                Some((id, name, err)) => format!("task {name} ({id}) failed: {err}"),
                None => format!(
                    "{} of its tasks failed (see service ps)",
                    self.status.failed_tasks.len()
                ),
            };
            let s = plan.service_mut(self.service);
            if !rolling_back && self.settings.failure_action == FailureAction::Rollback {
                if let Some(prev) = s.previous_spec.take() {
                    let cur = s.spec.replace(prev);
                    s.previous_spec = cur;
                    s.spec_version += 1;
                    s.update_status = Some(UpdateStatus {
                        state: UpdateState::RollbackStarted as i32,
                        started_at_ms: now,
                        message: format!("update rolled back: {what}"),
                        spec_version: s.spec_version,
                        ..Default::default()
                    });
                    tracing::info!(service_id = %s.id, "update failed ({what}): rolling back");
                    plan.wake(now);
                    return vec![];
                }
            }
            let st = s.update_status.get_or_insert_with(Default::default);
            let (state, verb) = if rolling_back {
                (UpdateState::RollbackPaused, "rollback paused")
            } else {
                (UpdateState::Paused, "update paused")
            };
            st.state = state as i32;
            st.message = format!("{verb}: {what}");
            tracing::info!(service_id = %s.id, "{verb}: {what}");
            return vec![];
        }
        if self.candidates.is_empty() && self.busy == 0 {
            let s = plan.service_mut(self.service);
            let st = s.update_status.get_or_insert_with(Default::default);
            let reason = st
                .message
                .strip_prefix("update rolled back: ")
                .map(|r| format!(" (the update was rolled back: {r})"))
                .unwrap_or_default();
            if rolling_back {
                st.state = UpdateState::RollbackCompleted as i32;
                st.message = format!("rollback completed{reason}");
            } else {
                st.state = UpdateState::Completed as i32;
                st.message = "update completed".into();
            }
            st.completed_at_ms = now;
            return vec![];
        }
        let free = match self.settings.parallelism {
            0 => usize::MAX,
            p => p.saturating_sub(self.busy) as usize,
        };
        self.candidates.truncate(free);
        self.candidates
    }
}

/// Whether an old live task may be shut down because its successor now runs (start
/// first), or must keep serving meanwhile.
pub fn successor_runs(successor: &Task) -> bool {
    is_live(successor) && state_of(successor) == TaskState::Running as i32
}

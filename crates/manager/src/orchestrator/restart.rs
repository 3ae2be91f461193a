//! Restart policies: whether, and when, a task that ended is replaced in its slot (or on
//! its node), and the history its successor carries. Unlike swarm mode, the history
//! lives in the tasks themselves ([`Task::restarts_ms`], [`Task::crash_streak`]), so a
//! new leader counts attempts and back-off where the old one left off.

use super::{finished_at, is_current, is_job, new_task, state_of};
use shoal_proto::objects::{
    RestartCondition, RestartPolicy, Service, ServiceSpec, Task, TaskState,
};

/// Swarm's default restart delay.
pub const DEFAULT_DELAY_MS: u64 = 5000;
/// The back-off for a task that keeps crashing stops growing here.
pub const MAX_DELAY_MS: i64 = 5 * 60 * 1000;
/// Without a restart window, a task that ran this long before it ended resets the
/// back-off to the base delay.
pub const BACKOFF_RESET_MS: i64 = 10_000;
/// At most this many restart times are kept in a task (the newest).
const MAX_HISTORY: usize = 1000;

#[derive(Debug, PartialEq)]
pub enum Restart {
    Now,
    /// Not before this time (unix ms).
    At(i64),
    Never,
}

pub fn policy(spec: &ServiceSpec) -> RestartPolicy {
    spec.restart.unwrap_or_default()
}

/// The condition in force: `any` means `on-failure` for jobs (a job that completed is
/// done).
pub fn condition(spec: &ServiceSpec) -> RestartCondition {
    let c = RestartCondition::try_from(policy(spec).condition).unwrap_or(RestartCondition::Any);
    if c == RestartCondition::Any && is_job(spec) {
        RestartCondition::OnFailure
    } else {
        c
    }
}

/// How long the task ran before it ended (0 if it never ran).
fn ran_ms(t: &Task) -> i64 {
    let st = t.status.clone().unwrap_or_default();
    if st.started_at_ms <= 0 {
        return 0;
    }
    (st.timestamp_unix_ms - st.started_at_ms).max(0)
}

/// Whether the task ended soon enough after it started to count as a crash in a row.
fn quick(p: &RestartPolicy, t: &Task) -> bool {
    let reset = if p.window_ms > 0 {
        p.window_ms as i64
    } else {
        BACKOFF_RESET_MS
    };
    ran_ms(t) < reset
}

/// The delay before `t` (which ended) is replaced: the base delay, doubled for each
/// quick crash in a row before it, at most [`MAX_DELAY_MS`].
pub fn delay_ms(p: &RestartPolicy, t: &Task) -> i64 {
    let base = p.delay_ms.unwrap_or(DEFAULT_DELAY_MS) as i64;
    if !quick(p, t) {
        return base;
    }
    let doubled = base.saturating_mul(1i64 << t.crash_streak.min(20));
    doubled.min(MAX_DELAY_MS.max(base))
}

/// Restarts already made in this slot that count against `max_attempts` at `now`.
pub fn attempts(p: &RestartPolicy, t: &Task, now: i64) -> u64 {
    t.restarts_ms
        .iter()
        .filter(|&&r| p.window_ms == 0 || r >= now - p.window_ms as i64)
        .count() as u64
}

/// What to do about `t`, a task that ended while it was meant to run.
pub fn decide(spec: &ServiceSpec, t: &Task, now: i64) -> Restart {
    let p = policy(spec);
    match condition(spec) {
        RestartCondition::None => return Restart::Never,
        RestartCondition::OnFailure if state_of(t) == TaskState::Complete as i32 => {
            return Restart::Never
        }
        _ => {}
    }
    if p.max_attempts > 0 && attempts(&p, t, now) >= p.max_attempts {
        return Restart::Never;
    }
    let at = finished_at(t) + delay_ms(&p, t);
    if now >= at {
        Restart::Now
    } else {
        Restart::At(at)
    }
}

/// A new task for `prev`'s slot (or node). `restart`: it replaces a task that ended (a
/// restart, counted); otherwise it moves the task (its node was lost). The history goes
/// along only while the spec stays the same: an update starts it afresh.
pub fn successor(service: &Service, prev: &Task, node_id: &str, restart: bool, now: i64) -> Task {
    let mut t = new_task(service, prev.slot, node_id, now);
    if !is_current(service, prev) {
        return t;
    }
    let p = policy(&service.spec.clone().unwrap_or_default());
    t.restarts_ms = prev
        .restarts_ms
        .iter()
        .copied()
        .filter(|&r| p.window_ms == 0 || r >= now - p.window_ms as i64)
        .collect();
    t.crash_streak = prev.crash_streak;
    if restart {
        t.restarts_ms.push(now);
        t.crash_streak = if quick(&p, prev) {
            prev.crash_streak.saturating_add(1)
        } else {
            0
        };
    }
    let extra = t.restarts_ms.len().saturating_sub(MAX_HISTORY);
    t.restarts_ms.drain(..extra);
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::objects::{ContainerSpec, TaskStatus};

    fn service(p: RestartPolicy) -> Service {
        Service {
            id: "s".into(),
            spec: Some(ServiceSpec {
                name: "web".into(),
                container: Some(ContainerSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                restart: Some(p),
                ..Default::default()
            }),
            spec_version: 1,
            ..Default::default()
        }
    }

    /// A task of `s` that started at `start` and ended in `state` at `end`.
    fn ended(s: &Service, state: TaskState, start: i64, end: i64) -> Task {
        let mut t = new_task(s, 1, "", start);
        t.status = Some(TaskStatus {
            state: state as i32,
            started_at_ms: start,
            timestamp_unix_ms: end,
            applied_at_ms: end,
            ..Default::default()
        });
        t
    }

    #[test]
    fn conditions_decide_what_is_restarted() {
        let any = service(RestartPolicy::default());
        let t = ended(&any, TaskState::Complete, 0, 100);
        assert_eq!(
            decide(any.spec.as_ref().unwrap(), &t, 100),
            Restart::At(5100)
        );
        assert_eq!(decide(any.spec.as_ref().unwrap(), &t, 5100), Restart::Now);

        let on_failure = service(RestartPolicy {
            condition: RestartCondition::OnFailure as i32,
            ..Default::default()
        });
        let spec = on_failure.spec.clone().unwrap();
        let done = ended(&on_failure, TaskState::Complete, 0, 100);
        assert_eq!(decide(&spec, &done, 10_000), Restart::Never);
        let failed = ended(&on_failure, TaskState::Failed, 0, 100);
        assert_eq!(decide(&spec, &failed, 10_000), Restart::Now);

        let none = service(RestartPolicy {
            condition: RestartCondition::None as i32,
            ..Default::default()
        });
        let failed = ended(&none, TaskState::Failed, 0, 100);
        assert_eq!(
            decide(none.spec.as_ref().unwrap(), &failed, 99_999),
            Restart::Never
        );
    }

    #[test]
    fn max_attempts_count_restarts_carried_from_task_to_task() {
        let s = service(RestartPolicy {
            condition: RestartCondition::OnFailure as i32,
            delay_ms: Some(0),
            max_attempts: 3,
            ..Default::default()
        });
        let spec = s.spec.clone().unwrap();
        let mut t = ended(&s, TaskState::Failed, 0, 10);
        let mut starts = 1;
        let mut now = 10;
        while decide(&spec, &t, now) == Restart::Now {
            let mut next = successor(&s, &t, "", true, now);
            next.status = ended(&s, TaskState::Failed, now, now + 10).status;
            t = next;
            starts += 1;
            now += 20;
        }
        assert_eq!(starts, 4, "the first run and 3 restarts");
        assert_eq!(t.restarts_ms.len(), 3);
    }

    #[test]
    fn a_window_forgets_old_restarts() {
        let s = service(RestartPolicy {
            delay_ms: Some(0),
            max_attempts: 2,
            window_ms: 60_000,
            ..Default::default()
        });
        let spec = s.spec.clone().unwrap();
        let mut t = ended(&s, TaskState::Failed, 0, 10);
        t.restarts_ms = vec![1_000, 2_000];
        assert_eq!(decide(&spec, &t, 30_000), Restart::Never);
        assert_eq!(decide(&spec, &t, 62_000), Restart::Now, "one is outside");
    }

    #[test]
    fn the_delay_doubles_for_quick_crashes_and_resets_after_a_long_run() {
        let s = service(RestartPolicy {
            delay_ms: Some(1000),
            ..Default::default()
        });
        let p = policy(s.spec.as_ref().unwrap());
        let mut t = ended(&s, TaskState::Failed, 0, 100);
        let mut delays = vec![];
        for _ in 0..12 {
            delays.push(delay_ms(&p, &t));
            let mut next = successor(&s, &t, "", true, 200);
            next.status = t.status.clone();
            t = next;
        }
        assert_eq!(&delays[..5], &[1000, 2000, 4000, 8000, 16000]);
        assert_eq!(*delays.last().unwrap(), MAX_DELAY_MS, "capped at 5 minutes");
        // A run longer than the reset period: back to the base delay.
        let long = ended(&s, TaskState::Failed, 1000, 1000 + BACKOFF_RESET_MS + 1);
        let mut next = successor(&s, &long, "", true, 0);
        assert_eq!(next.crash_streak, 0);
        next.status = long.status.clone();
        next.crash_streak = 7;
        assert_eq!(delay_ms(&p, &next), 1000);
    }

    #[test]
    fn an_update_starts_the_history_afresh() {
        let s = service(RestartPolicy::default());
        let mut t = ended(&s, TaskState::Failed, 0, 10);
        t.restarts_ms = vec![5];
        t.crash_streak = 3;
        let mut updated = s.clone();
        updated
            .spec
            .as_mut()
            .unwrap()
            .container
            .as_mut()
            .unwrap()
            .image = "other".into();
        let next = successor(&updated, &t, "", true, 100);
        assert!(next.restarts_ms.is_empty());
        assert_eq!(next.crash_streak, 0);
    }
}

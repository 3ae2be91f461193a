//! Jobs: tasks that run to completion. A replicated job wants `replicas` completions,
//! at most `max_concurrent` tasks running at once (0: all); a global job one completion
//! on every eligible node. A task that exits 0 is done; one that fails is retried under
//! the restart policy (`any` counts as `on-failure`). Each run of the job has its own
//! iteration (`Service::job_iteration`): a new one (update, `--force`) stops what is
//! left of the last and starts over.

use super::{
    has_finished, is_current, is_live, new_task, restart, state_of, trim_history, Plan, World,
};
use crate::scheduler::constraint;
use shoal_proto::objects::{
    Availability, Node, NodeState, Service, ServiceMode, ServiceSpec, Task, TaskState,
};
use shoal_store::Versioned;
use std::collections::BTreeMap;

/// Whether `node` is one a global job runs on.
pub fn eligible(spec: &ServiceSpec, node: &Node) -> bool {
    let Ok(cs) = constraint::parse_all(&spec.placement.clone().unwrap_or_default().constraints)
    else {
        return false;
    };
    node.state == NodeState::Ready as i32
        && node.availability == Availability::Active as i32
        && cs.iter().all(|c| c.matches(node))
}

fn complete(t: &Task) -> bool {
    state_of(t) == TaskState::Complete as i32
}

/// Completions a job's current run has, and how many it wants.
pub fn progress(service: &Service, tasks: &[&Task], nodes: &[Node]) -> (u64, u64) {
    let spec = service.spec.clone().unwrap_or_default();
    let mine = |t: &&&Task| t.service_id == service.id && is_current(service, t) && complete(t);
    if spec.mode == ServiceMode::GlobalJob as i32 {
        let mut done: Vec<&str> = tasks
            .iter()
            .filter(mine)
            .map(|t| t.node_id.as_str())
            .collect();
        done.sort();
        done.dedup();
        let wanted = nodes
            .iter()
            .filter(|n| eligible(&spec, n) || done.contains(&n.id.as_str()))
            .count();
        (done.len() as u64, wanted as u64)
    } else {
        let mut done: Vec<u64> = tasks.iter().filter(mine).map(|t| t.slot).collect();
        done.sort();
        done.dedup();
        let done = done.iter().filter(|s| **s <= spec.replicas).count();
        (done as u64, spec.replicas)
    }
}

pub fn reconcile(world: &World<'_>, service: &Service, plan: &mut Plan) {
    let spec = service.spec.clone().unwrap_or_default();
    let now = world.now_ms;
    let global = spec.mode == ServiceMode::GlobalJob as i32;
    let all: Vec<&Versioned<Task>> = world.tasks_of(&service.id).collect();
    // What is left of earlier runs (or of tasks on lost nodes) stops.
    for t in &all {
        let stale = !is_current(service, &t.value) || world.node_problem(&t.value).is_some();
        if stale && is_live(&t.value) && !has_finished(&t.value) {
            if t.value.node_id.is_empty() && state_of(&t.value) <= TaskState::Pending as i32 {
                plan.delete(t);
            } else {
                plan.set_desired(t, TaskState::Shutdown);
            }
        }
    }
    let current = |t: &&Versioned<Task>| {
        is_current(service, &t.value) && world.node_problem(&t.value).is_none()
    };
    let limit = match (global, spec.max_concurrent) {
        (true, _) => usize::MAX,
        (false, 0) => spec.replicas as usize,
        (false, m) => m as usize,
    };
    let mut running = all
        .iter()
        .filter(|t| current(t) && is_live(&t.value) && !has_finished(&t.value))
        .count();
    // The groups: slots 1..=replicas, or the eligible nodes (and any node that already
    // completed this run).
    let mut groups: BTreeMap<(u64, String), Vec<&Versioned<Task>>> = BTreeMap::new();
    if global {
        for n in world.nodes.iter().filter(|n| eligible(&spec, n)) {
            groups.entry((0, n.id.clone())).or_default();
        }
    } else {
        for slot in 1..=spec.replicas {
            groups.entry((slot, String::new())).or_default();
        }
    }
    for t in &all {
        let key = if global {
            (0, t.value.node_id.clone())
        } else {
            (t.value.slot, String::new())
        };
        if let Some(g) = groups.get_mut(&key) {
            g.push(t);
        } else if !global && has_finished(&t.value) {
            // A slot beyond the job's size (it was made smaller).
            plan.delete(t);
        }
    }
    for ((slot, node), tasks) in &groups {
        trim_history(plan, tasks.iter().copied());
        let mine: Vec<&&Versioned<Task>> = tasks.iter().filter(|t| current(t)).collect();
        if mine.iter().any(|t| complete(&t.value)) {
            continue;
        }
        let live = mine
            .iter()
            .filter(|t| is_live(&t.value))
            .max_by_key(|t| (t.value.created_at_unix, t.version));
        match live {
            Some(t) if has_finished(&t.value) => match restart::decide(&spec, &t.value, now) {
                restart::Restart::Now if running < limit => {
                    plan.set_desired(t, TaskState::Shutdown);
                    plan.create
                        .push(restart::successor(service, &t.value, node, true, now));
                    running += 1;
                }
                restart::Restart::Now | restart::Restart::Never => {}
                restart::Restart::At(at) => plan.wake(at),
            },
            Some(_) => {}
            None if running < limit => {
                plan.create.push(new_task(service, *slot, node, now));
                running += 1;
            }
            None => {}
        }
    }
}

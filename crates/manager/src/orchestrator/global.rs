//! Global services: one task on every eligible node — ready, not drained, and meeting
//! the service's constraints. New tasks go only to active nodes; a drained node, a
//! removed one, or one that stops meeting the constraints loses its task. A node that is
//! down keeps its task until it returns (or is removed).

use super::{has_finished, is_live, new_task, trim_history, Plan, World, RESTART_DELAY_MS};
use crate::scheduler::constraint;
use shoal_proto::objects::{Availability, NodeState, Service, Task, TaskState};
use shoal_store::Versioned;
use std::collections::BTreeMap;

pub fn reconcile(world: &World<'_>, service: &Service, plan: &mut Plan) {
    let spec = service.spec.clone().unwrap_or_default();
    // A placement that does not parse places nothing (the control API refuses such specs;
    // this guards against anything older in the store).
    let Ok(constraints) = constraint::parse_all(&spec.placement.unwrap_or_default().constraints)
    else {
        return;
    };
    let mut by_node: BTreeMap<&str, Vec<&Versioned<Task>>> = BTreeMap::new();
    for t in world.tasks_of(&service.id) {
        by_node.entry(t.value.node_id.as_str()).or_default().push(t);
    }
    for node in world.nodes {
        let tasks = by_node.remove(node.id.as_str()).unwrap_or_default();
        let live: Vec<&&Versioned<Task>> = tasks.iter().filter(|t| is_live(&t.value)).collect();
        let fits = constraints.iter().all(|c| c.matches(node));
        let drained = node.availability == Availability::Drain as i32;
        if !fits || drained {
            for t in &live {
                plan.set_desired(t, TaskState::Shutdown);
            }
            trim_history(plan, tasks.iter().copied());
            continue;
        }
        if node.state == NodeState::Down as i32 {
            // Like swarm: the task of a down node is shut down (not replaced there), so
            // updates do not wait on it; the node gets a new one when it returns.
            for t in &live {
                plan.set_desired(t, TaskState::Shutdown);
            }
            trim_history(plan, tasks.iter().copied());
            continue;
        }
        let paused = node.availability == Availability::Pause as i32;
        let can_place = node.state == NodeState::Ready as i32
            && node.availability == Availability::Active as i32;
        match live.first() {
            None if can_place => plan
                .create
                .push(new_task(service, 0, &node.id, world.now_ms)),
            None => {}
            Some(t) => {
                let outdated = t.value.spec_version < service.spec_version;
                let finished = has_finished(&t.value);
                let at = t
                    .value
                    .status
                    .as_ref()
                    .map(|s| s.timestamp_unix_ms)
                    .unwrap_or(0);
                // A paused node gets no new or updated tasks: it keeps what it runs.
                let replace =
                    !paused && (outdated || (finished && world.now_ms - at >= RESTART_DELAY_MS));
                if replace {
                    plan.set_desired(t, TaskState::Shutdown);
                    if can_place {
                        plan.create
                            .push(new_task(service, 0, &node.id, world.now_ms));
                    }
                }
            }
        }
        trim_history(plan, tasks.iter().copied());
    }
    // Tasks on nodes that no longer exist.
    for tasks in by_node.values() {
        for t in tasks {
            if has_finished(&t.value) {
                plan.delete(t);
            } else {
                plan.set_desired(t, TaskState::Remove);
            }
        }
    }
}

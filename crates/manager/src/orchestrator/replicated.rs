//! Replicated services: `replicas` slots, each with one live task. A task that finished
//! (after the restart delay) or whose node went down, was drained or removed is shut
//! down and replaced in the same slot; a task of an older spec version is replaced at
//! once; scaling down removes the highest slots.

use super::{
    has_finished, is_live, new_task, state_of, trim_history, Plan, World, RESTART_DELAY_MS,
};
use shoal_proto::objects::{Service, Task, TaskState};
use shoal_store::Versioned;
use std::collections::BTreeMap;

/// Whether a live task must be replaced now, and if it may be yet.
fn needs_replacement(world: &World<'_>, service: &Service, t: &Task) -> Option<bool> {
    if world.node_problem(t).is_some() || t.spec_version < service.spec_version {
        return Some(true);
    }
    if has_finished(t) {
        let at = t.status.as_ref().map(|s| s.timestamp_unix_ms).unwrap_or(0);
        // A task that never started (rejected) or exited waits out the restart delay.
        return Some(world.now_ms - at >= RESTART_DELAY_MS);
    }
    None
}

pub fn reconcile(world: &World<'_>, service: &Service, plan: &mut Plan) {
    let replicas = service.spec.as_ref().map(|s| s.replicas).unwrap_or(0);
    let mut slots: BTreeMap<u64, Vec<&Versioned<Task>>> = BTreeMap::new();
    for t in world.tasks_of(&service.id) {
        slots.entry(t.value.slot).or_default().push(t);
    }
    for slot in 1..=replicas {
        let tasks = slots.get(&slot).map(Vec::as_slice).unwrap_or(&[]);
        let mut live: Vec<&&Versioned<Task>> = tasks.iter().filter(|t| is_live(&t.value)).collect();
        live.sort_by_key(|t| std::cmp::Reverse((t.value.created_at_unix, t.version)));
        // More than one live task in a slot (should not happen): keep the newest.
        for extra in live.iter().skip(1) {
            plan.set_desired(extra, TaskState::Shutdown);
        }
        match live.first() {
            None => plan.create.push(new_task(service, slot, "", world.now_ms)),
            Some(t) => {
                if needs_replacement(world, service, &t.value) == Some(true) {
                    // A task no node has taken yet has nothing to stop: it just goes.
                    if t.value.node_id.is_empty() && state_of(&t.value) <= TaskState::Pending as i32
                    {
                        plan.delete(t);
                    } else {
                        plan.set_desired(t, TaskState::Shutdown);
                    }
                    plan.create.push(new_task(service, slot, "", world.now_ms));
                }
            }
        }
        trim_history(plan, tasks.iter().copied());
    }
    // Scale down: slots above the replica count go away, their containers stopped.
    for (slot, tasks) in slots.range(replicas + 1..) {
        let _ = slot;
        for t in tasks {
            if has_finished(&t.value)
                || (t.value.node_id.is_empty() && state_of(&t.value) <= TaskState::Pending as i32)
            {
                plan.delete(t);
            } else {
                plan.set_desired(t, TaskState::Remove);
            }
        }
    }
}

//! Replicated services: `replicas` slots, each with one live task. A task that ended is
//! restarted in its slot under the restart policy; one whose node went down, was
//! drained or removed is replaced at once; tasks of an older spec are replaced by a
//! rolling update ([`super::update`]); scaling down removes the highest slots.

use super::{
    has_finished, reconcile_group, replace_old, state_of, trim_history, update::Update, Place,
    Plan, World,
};
use shoal_proto::objects::{Service, Task, TaskState};
use shoal_store::Versioned;
use std::collections::BTreeMap;

pub fn reconcile(world: &World<'_>, service: &Service, plan: &mut Plan) {
    let replicas = service.spec.as_ref().map(|s| s.replicas).unwrap_or(0);
    let mut slots: BTreeMap<u64, Vec<&Versioned<Task>>> = BTreeMap::new();
    for t in world.tasks_of(&service.id) {
        slots.entry(t.value.slot).or_default().push(t);
    }
    let mut upd = Update::new(service, world.now_ms);
    let mut old = BTreeMap::new();
    for slot in 1..=replicas {
        let tasks = slots.get(&slot).map(Vec::as_slice).unwrap_or(&[]);
        let place = Place {
            slot,
            node_id: "",
            can_place: true,
        };
        if let Some(o) = reconcile_group(world, service, plan, &mut upd, tasks, place) {
            old.insert(o.value.id.clone(), o);
        }
        trim_history(plan, tasks.iter().copied());
    }
    let step = upd.order();
    for id in upd.finish(plan) {
        if let Some(o) = old.get(&id) {
            replace_old(service, plan, o, &step, world.now_ms);
        }
    }
    // Scale down: slots above the replica count go away, their containers stopped.
    for (_, tasks) in slots.range(replicas + 1..) {
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

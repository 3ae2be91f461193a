//! Global services: one task on every eligible node — ready, not drained, and meeting
//! the service's constraints. New tasks go only to active nodes; a drained node, a
//! removed one, or one that stops meeting the constraints loses its task. A node that is
//! down has its task shut down and gets a new one when it returns. Tasks of an older
//! spec are replaced node by node by a rolling update ([`super::update`]).

use super::{
    has_finished, reconcile_group, replace_old, trim_history, update::Update, Place, Plan, World,
};
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
    let mut upd = Update::new(service, world.now_ms);
    let mut old = BTreeMap::new();
    for node in &world.nodes {
        let tasks = by_node.remove(node.id.as_str()).unwrap_or_default();
        let fits = constraints.iter().all(|c| c.matches(node));
        let drained = node.availability == Availability::Drain as i32;
        let down = node.state == NodeState::Down as i32;
        // A paused node gets no new or updated tasks: it keeps what it runs.
        let paused = node.availability == Availability::Pause as i32;
        if !fits || drained || down {
            // Like swarm: the task of a down node is shut down (not replaced there), so
            // updates do not wait on it; the node gets a new one when it returns.
            for t in tasks.iter().filter(|t| super::is_live(&t.value)) {
                plan.set_desired(t, TaskState::Shutdown);
            }
        } else if !paused {
            let can_place = node.state == NodeState::Ready as i32
                && node.availability == Availability::Active as i32;
            let place = Place {
                slot: 0,
                node_id: &node.id,
                can_place,
            };
            if let Some(o) = reconcile_group(world, service, plan, &mut upd, &tasks, place) {
                old.insert(o.value.id.clone(), o);
            }
        }
        trim_history(plan, tasks.iter().copied());
    }
    let step = upd.order();
    for id in upd.finish(plan) {
        if let Some(o) = old.get(&id) {
            replace_old(service, plan, o, &step, world.now_ms);
        }
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

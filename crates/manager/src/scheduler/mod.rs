//! The scheduler: which node runs each pending task.
//!
//! Pure decisions. [`schedule`] is a function from the nodes, the tasks already on them
//! and the tasks waiting for a node to a list of decisions; it does no I/O, keeps no
//! state between calls and never reads the store. The shell around it (watching the
//! store, calling it after a quiet gap, writing tasks ASSIGNED or leaving them PENDING
//! with the reason in `status.err`) lives elsewhere, so everything here is testable
//! without a cluster.
//!
//! For each pending task, in order, as in swarm mode:
//! - the filter pipeline (`filter.rs`) keeps the nodes that can take it (ready, resources,
//!   [constraints](constraint), platform, max replicas per node); if none can, the task
//!   is [`Unplaced`] with swarm mode's reason, e.g.
//!   `no suitable node (3 nodes not available for new tasks; insufficient memory on 1 node)`;
//! - [spread preferences](preference) narrow them to the least-loaded group;
//! - the node with the fewest tasks of the service wins, then the fewest tasks overall,
//!   then the smallest node id, so the same input always gives the same output.
//!
//! Every decision counts toward the next ones in the same call (reservations, per-node
//! counts, `max_replicas_per_node`), so six replicas on three equal nodes land two on
//! each. Tasks alike in service and placement share the precomputed part of the
//! pipeline, and the per-node counts are kept as the call goes, so a call costs about
//! O(pending × nodes), not O(pending × tasks).
//!
//! Deviations from swarm mode, on purpose: an invalid constraint or spread preference
//! leaves the task unplaced with the parse error (swarm mode ignores the constraint,
//! which could put a task where the user said it must not go); the resource part of a
//! reason says which resource is short, and the max-replicas part counts nodes like the
//! others (swarm mode writes "max replicas per node limit exceed" with no count); there
//! is no penalty yet for nodes where the service recently failed.

pub mod constraint;
mod filter;
mod nodeset;
pub mod preference;

pub use constraint::{parse, parse_all, Constraint, ConstraintError, Key, Op};
pub use preference::{parse_spread, SpreadError};

use filter::TaskFilter;
use nodeset::{NodeSet, Reservation};
use preference::Levels;
use shoal_proto::objects::{Node, Task};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Run task `task_id` on node `node_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub task_id: String,
    pub node_id: String,
}

/// Task `task_id` cannot be placed now; `reason` says why, in words for `service ps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaced {
    pub task_id: String,
    pub reason: String,
}

/// The result of one [`schedule`] call; both lists follow the order of `pending`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub assigned: Vec<Decision>,
    pub unplaced: Vec<Unplaced>,
}

/// Decides where each of `pending` runs.
///
/// `nodes`: all nodes. `tasks`: all tasks in the store; those with a `node_id`, desired
/// state at most RUNNING and observed state before COMPLETE occupy their node (its
/// reservations and task counts). `pending`: the tasks to place (no node yet), in the
/// order to place them.
pub fn schedule(nodes: &[Node], tasks: &[Task], pending: &[Task]) -> Outcome {
    let mut set = NodeSet::new(nodes, tasks, pending);
    let mut groups: HashMap<GroupKey<'_>, Group> = HashMap::new();
    let mut scratch = Scratch::default();
    // Bumped by every decision: a failure explained at the same generation still holds.
    let mut generation = 0u64;
    let mut outcome = Outcome::default();
    for task in pending {
        let group = groups
            .entry(GroupKey::of(task))
            .or_insert_with(|| Group::new(&set, task));
        match group.place(&mut set, &mut scratch, generation) {
            Ok(node) => {
                generation += 1;
                outcome.assigned.push(Decision {
                    task_id: task.id.clone(),
                    node_id: set.nodes()[node].node.id.clone(),
                });
            }
            Err(reason) => outcome.unplaced.push(Unplaced {
                task_id: task.id.clone(),
                reason,
            }),
        }
    }
    outcome
}

/// What makes two pending tasks interchangeable to the scheduler.
#[derive(PartialEq, Eq, Hash)]
struct GroupKey<'a> {
    service_id: &'a str,
    constraints: &'a [String],
    spread: &'a [String],
    max_replicas: u64,
    reservation: Reservation,
}

impl<'a> GroupKey<'a> {
    fn of(task: &'a Task) -> Self {
        let placement = task.placement.as_ref();
        GroupKey {
            service_id: &task.service_id,
            constraints: placement.map_or(&[], |p| p.constraints.as_slice()),
            spread: placement.map_or(&[], |p| p.spread.as_slice()),
            max_replicas: placement.map_or(0, |p| p.max_replicas_per_node),
            reservation: Reservation::of(task),
        }
    }
}

enum Group {
    /// The placement does not parse: every task of the group stays unplaced.
    Invalid(String),
    Valid(Box<Plan>),
}

struct Plan {
    filter: TaskFilter,
    /// Nodes passing the filters that cannot change during the call.
    candidates: Vec<usize>,
    levels: Levels,
    /// The last failure and the generation it was computed at.
    failed: Option<(u64, String)>,
    /// Without spread preferences: the candidates by (the service's tasks there, all
    /// tasks there, index), least first, so a placement costs a log of the nodes, not
    /// a pass over them (50,000 tasks on 5,000 nodes was 250 million comparisons).
    /// Placing only adds tasks, so an entry's key can only be too small: one found
    /// stale is put back with its key now; and a node that fails the filters that
    /// placing changes (room, replicas per node) fails them for the rest of the call.
    by_load: Option<BinaryHeap<Reverse<(u32, u32, usize)>>>,
}

#[derive(Default)]
struct Scratch {
    feasible: Vec<usize>,
    scope: Vec<usize>,
    totals: Vec<(u64, bool)>,
}

impl Group {
    fn new(set: &NodeSet<'_>, task: &Task) -> Group {
        let key = GroupKey::of(task);
        let constraints = match parse_all(key.constraints) {
            Ok(c) => c,
            Err(e) => return Group::Invalid(format!("invalid placement: {e}")),
        };
        let spread: Result<Vec<Key>, SpreadError> =
            key.spread.iter().map(|s| parse_spread(s)).collect();
        let spread = match spread {
            Ok(s) => s,
            Err(e) => return Group::Invalid(format!("invalid placement: {e}")),
        };
        let filter = TaskFilter::new(
            set,
            set.service(&task.service_id),
            key.reservation,
            key.max_replicas,
            &constraints,
        );
        Group::Valid(Box::new(Plan {
            candidates: filter.candidates(),
            filter,
            levels: Levels::new(&spread, set),
            failed: None,
            by_load: None,
        }))
    }

    /// Picks a node for one task of the group and records it in `set`.
    fn place(
        &mut self,
        set: &mut NodeSet<'_>,
        scratch: &mut Scratch,
        generation: u64,
    ) -> Result<usize, String> {
        let plan = match self {
            Group::Invalid(reason) => return Err(reason.clone()),
            Group::Valid(plan) => plan,
        };
        // Nothing placed since this group last failed: the answer cannot have changed.
        if let Some((at, reason)) = &plan.failed {
            if *at == generation {
                return Err(reason.clone());
            }
        }
        if plan.levels.is_empty() {
            return plan.place_least_loaded(set, generation);
        }
        let filter = &plan.filter;
        let feasible = &mut scratch.feasible;
        feasible.clear();
        feasible.extend(
            plan.candidates
                .iter()
                .copied()
                .filter(|&i| filter.dynamic_ok(set, i)),
        );
        if feasible.is_empty() {
            let reason = filter.explain(set);
            plan.failed = Some((generation, reason.clone()));
            return Err(reason);
        }
        let counts = set.service_counts(filter.service);
        if !plan.levels.is_empty() {
            plan.levels
                .narrow(counts, feasible, &mut scratch.scope, &mut scratch.totals);
        }
        let nodes = set.nodes();
        let best = feasible
            .iter()
            .copied()
            .min_by_key(|&i| (counts[i], nodes[i].tasks, i))
            .ok_or_else(|| "no suitable node".to_string())?;
        set.place(best, filter.service, &filter.reservation);
        Ok(best)
    }
}

impl Plan {
    /// The least loaded node that can take the task (as the scan over `feasible`
    /// would pick it: fewest of the service's tasks, then fewest tasks, then lowest
    /// index), placed in `set`.
    fn place_least_loaded(
        &mut self,
        set: &mut NodeSet<'_>,
        generation: u64,
    ) -> Result<usize, String> {
        let service = self.filter.service;
        let key =
            |set: &NodeSet<'_>, i: usize| (set.service_counts(service)[i], set.nodes()[i].tasks);
        let heap = self.by_load.get_or_insert_with(|| {
            self.candidates
                .iter()
                .map(|&i| {
                    let (c, t) = key(set, i);
                    Reverse((c, t, i))
                })
                .collect()
        });
        while let Some(Reverse((c, t, i))) = heap.pop() {
            if !self.filter.dynamic_ok(set, i) {
                continue;
            }
            let now = key(set, i);
            if now != (c, t) {
                heap.push(Reverse((now.0, now.1, i)));
                continue;
            }
            set.place(i, service, &self.filter.reservation);
            let after = key(set, i);
            heap.push(Reverse((after.0, after.1, i)));
            return Ok(i);
        }
        let reason = self.filter.explain(set);
        self.failed = Some((generation, reason.clone()));
        Err(reason)
    }
}

#[cfg(test)]
mod tests;

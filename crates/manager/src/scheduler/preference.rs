//! Spread preferences: balancing a service's tasks over the values of node attributes.
//!
//! A preference names a [`Key`] (`node.labels.zone`, `engine.labels.rack`, `node.id`…).
//! Preferences nest in order: the first splits the nodes into groups by value, the next
//! splits each of those, and so on. At each level a task goes to the group holding the
//! fewest tasks of its service (ties: the smaller value). Nodes lacking the attribute
//! read it as the empty string, so they form one group of their own that gets an equal
//! share, as in swarm mode; add a constraint to keep tasks off unlabelled nodes.
//!
//! Deviation from swarm mode, on purpose: a group's count includes the service's tasks on
//! all its nodes, not only on the nodes that could take this task. Swarm counts only
//! the latter, so a zone whose nodes are full or at `max_replicas_per_node` looks empty
//! and attracts more tasks, the opposite of spreading.

use super::constraint::{Key, KeyError};
use super::nodeset::NodeSet;
use std::collections::BTreeMap;

/// A spread preference that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spread preference {descriptor:?}: {problem}")]
pub struct SpreadError {
    pub descriptor: String,
    pub problem: KeyError,
}

/// Parses a spread descriptor such as `node.labels.zone`.
pub fn parse_spread(descriptor: &str) -> Result<Key, SpreadError> {
    Key::parse(descriptor).map_err(|problem| SpreadError {
        descriptor: descriptor.to_string(),
        problem,
    })
}

/// The preference tree of one task group, flattened: for each level, every node's value
/// as a small integer. Ids follow the values' sort order, so the smaller id is the
/// deterministic tie-break.
pub(super) struct Levels {
    levels: Vec<Vec<u32>>,
}

impl Levels {
    pub(super) fn new(keys: &[Key], set: &NodeSet<'_>) -> Levels {
        let levels = keys
            .iter()
            .map(|key| {
                let values: Vec<&str> = set.nodes().iter().map(|n| key.value_of(n.node)).collect();
                let ids: BTreeMap<&str, u32> = values
                    .iter()
                    .copied()
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .zip(0u32..)
                    .collect();
                values.iter().map(|v| ids[v]).collect()
            })
            .collect();
        Levels { levels }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// Narrows `feasible` (nodes that can take the task, by index) to the group chosen
    /// level by level. `service_counts[i]` is the service's task count on node `i`.
    /// `scope` is scratch space.
    pub(super) fn narrow(
        &self,
        service_counts: &[u32],
        feasible: &mut Vec<usize>,
        scope: &mut Vec<usize>,
        totals: &mut Vec<(u64, bool)>,
    ) {
        scope.clear();
        scope.extend(0..service_counts.len());
        for values in &self.levels {
            totals.clear();
            for &i in scope.iter() {
                let v = values[i] as usize;
                if totals.len() <= v {
                    totals.resize(v + 1, (0, false));
                }
                totals[v].0 += u64::from(service_counts[i]);
            }
            for &i in feasible.iter() {
                totals[values[i] as usize].1 = true;
            }
            // Only groups with a node that can take the task compete.
            let chosen = totals
                .iter()
                .enumerate()
                .filter(|(_, (_, usable))| *usable)
                .min_by_key(|(v, (count, _))| (*count, *v))
                .map(|(v, _)| v as u32);
            let Some(chosen) = chosen else { return };
            scope.retain(|&i| values[i] == chosen);
            feasible.retain(|&i| values[i] == chosen);
        }
    }
}

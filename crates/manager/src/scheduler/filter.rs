//! The filter pipeline: which nodes can take a task, and why the others cannot.
//!
//! Filters run in swarm mode's order and a node is charged to the first one it fails:
//! 1. ready: the node is Ready and Active;
//! 2. resources: the task's CPU and memory reservations fit in what is left;
//! 3. constraints: every placement constraint holds;
//! 4. platform: a placeholder that always passes, kept so the pipeline and its order
//!    match swarm mode's. Tasks carry no platform requirement yet (swarm mode takes it
//!    from the image manifest); when they do, the check goes in [`platform_ok`];
//! 5. max replicas: the node runs fewer than `max_replicas_per_node` tasks of the
//!    service.
//!
//! (Swarm mode's plugin, host-port and volume filters have nothing to check here yet.)

use super::constraint::{all_match, Constraint, Key, Op};
use super::nodeset::{NodeInfo, NodeSet, Reservation};

/// The filter a node failed, with the resources split by kind so the message can say
/// which one is short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    NotAvailable,
    Cpu,
    Memory,
    CpuAndMemory,
    Constraints,
    Platform,
    MaxReplicas,
}

impl Failure {
    /// Pipeline order: the order of the explanation's parts when their counts tie.
    const ALL: [Failure; 7] = [
        Failure::NotAvailable,
        Failure::Cpu,
        Failure::Memory,
        Failure::CpuAndMemory,
        Failure::Constraints,
        Failure::Platform,
        Failure::MaxReplicas,
    ];

    /// Swarm mode's wording, e.g. "1 node not available for new tasks",
    /// "insufficient memory on 2 nodes".
    fn explain(self, count: usize) -> String {
        let nodes = if count == 1 {
            "1 node".to_string()
        } else {
            format!("{count} nodes")
        };
        match self {
            Failure::NotAvailable => format!("{nodes} not available for new tasks"),
            Failure::Cpu => format!("insufficient CPU on {nodes}"),
            Failure::Memory => format!("insufficient memory on {nodes}"),
            Failure::CpuAndMemory => format!("insufficient CPU and memory on {nodes}"),
            Failure::Constraints => format!("scheduling constraints not satisfied on {nodes}"),
            Failure::Platform => format!("unsupported platform on {nodes}"),
            Failure::MaxReplicas => format!("max replicas per node limit exceeded on {nodes}"),
        }
    }

    fn index(self) -> usize {
        Failure::ALL.iter().position(|f| *f == self).unwrap_or(0)
    }
}

/// The pipeline set up for one task group (tasks alike in service and placement), with
/// the parts that do not change while placing precomputed per node.
pub(super) struct TaskFilter {
    pub(super) service: usize,
    pub(super) reservation: Reservation,
    /// 0: no limit.
    pub(super) max_replicas: u64,
    /// Per node: passes the filters whose answer cannot change during a call (ready,
    /// constraints, platform).
    static_ok: Vec<bool>,
    constraint_ok: Vec<bool>,
}

impl TaskFilter {
    pub(super) fn new(
        set: &NodeSet<'_>,
        service: usize,
        reservation: Reservation,
        max_replicas: u64,
        constraints: &[Constraint],
    ) -> TaskFilter {
        let mut constraint_ok: Vec<bool> = set
            .nodes()
            .iter()
            .map(|n| all_match(constraints, n.node))
            .collect();
        // A hostname is a claim made at join: when `node.hostname==NAME` matches more
        // than one node it picks none of them.
        for c in constraints
            .iter()
            .filter(|c| matches!(c.key(), Key::Hostname) && c.op() == Op::Eq)
        {
            let matching: Vec<usize> = (0..set.nodes().len())
                .filter(|&i| c.matches(set.nodes()[i].node))
                .collect();
            if matching.len() > 1 {
                for i in matching {
                    constraint_ok[i] = false;
                }
            }
        }
        let static_ok = set
            .nodes()
            .iter()
            .zip(&constraint_ok)
            .map(|(n, ok)| n.available && *ok && platform_ok(n))
            .collect();
        TaskFilter {
            service,
            reservation,
            max_replicas,
            static_ok,
            constraint_ok,
        }
    }

    /// Nodes that pass the static filters, in index order.
    pub(super) fn candidates(&self) -> Vec<usize> {
        (0..self.static_ok.len())
            .filter(|&i| self.static_ok[i])
            .collect()
    }

    /// The filters that change as tasks are placed, for a node already known to pass
    /// the static ones.
    pub(super) fn dynamic_ok(&self, set: &NodeSet<'_>, i: usize) -> bool {
        set.nodes()[i].shortfall(&self.reservation) == (false, false) && self.under_max(set, i)
    }

    fn under_max(&self, set: &NodeSet<'_>, i: usize) -> bool {
        self.max_replicas == 0 || u64::from(set.service_counts(self.service)[i]) < self.max_replicas
    }

    /// The whole pipeline for one node, in order.
    fn check(&self, set: &NodeSet<'_>, i: usize) -> Result<(), Failure> {
        let node = &set.nodes()[i];
        if !node.available {
            return Err(Failure::NotAvailable);
        }
        match node.shortfall(&self.reservation) {
            (false, false) => {}
            (true, false) => return Err(Failure::Cpu),
            (false, true) => return Err(Failure::Memory),
            (true, true) => return Err(Failure::CpuAndMemory),
        }
        if !self.constraint_ok[i] {
            return Err(Failure::Constraints);
        }
        if !platform_ok(node) {
            return Err(Failure::Platform);
        }
        if !self.under_max(set, i) {
            return Err(Failure::MaxReplicas);
        }
        Ok(())
    }

    /// Why no node can take the task, in swarm mode's form:
    /// `no suitable node (3 nodes not available for new tasks; insufficient memory on 1 node)`,
    /// the parts ordered by how many nodes each turned down, most first.
    pub(super) fn explain(&self, set: &NodeSet<'_>) -> String {
        let mut counts = [0usize; Failure::ALL.len()];
        for i in 0..set.nodes().len() {
            if let Err(f) = self.check(set, i) {
                counts[f.index()] += 1;
            }
        }
        let mut parts: Vec<(Failure, usize)> = Failure::ALL
            .into_iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .collect();
        // Stable: ties keep pipeline order.
        parts.sort_by_key(|p| std::cmp::Reverse(p.1));
        if parts.is_empty() {
            return "no suitable node".to_string();
        }
        let parts: Vec<String> = parts.into_iter().map(|(f, n)| f.explain(n)).collect();
        format!("no suitable node ({})", parts.join("; "))
    }
}

/// Platform filter placeholder: tasks carry no OS/architecture requirement yet, so
/// every node passes. Swarm mode matches the image manifest's platforms against
/// `node.description.{os,arch}` here (normalising `x86_64` to `amd64`).
fn platform_ok(_node: &NodeInfo<'_>) -> bool {
    true
}

//! What the scheduler knows about each node while it decides: capacity, what is
//! reserved, and how many tasks (in all, and per service) it runs. Built once per call
//! from the nodes and tasks, then updated as tasks are placed, so no decision rescans
//! the task list.

use shoal_proto::objects::{Availability, Node, NodeState, Resources, Task, TaskState};
use std::collections::HashMap;

/// Nano-CPUs in one CPU.
const NANO: i128 = 1_000_000_000;

/// CPU and memory a task reserves, never negative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(super) struct Reservation {
    pub(super) nano_cpus: i128,
    pub(super) memory_bytes: i128,
}

impl Reservation {
    pub(super) fn of(task: &Task) -> Reservation {
        let r = task.reservations.as_ref();
        let get = |f: fn(&Resources) -> i64| i128::from(r.map_or(0, f).max(0));
        Reservation {
            nano_cpus: get(|r| r.nano_cpus),
            memory_bytes: get(|r| r.memory_bytes),
        }
    }
}

pub(super) struct NodeInfo<'a> {
    pub(super) node: &'a Node,
    /// Ready and Active: may take new tasks.
    pub(super) available: bool,
    pub(super) capacity: Reservation,
    pub(super) reserved: Reservation,
    /// Active tasks of every service.
    pub(super) tasks: u32,
}

impl NodeInfo<'_> {
    /// Which of CPU and memory `r` does not fit in (a zero reservation always fits).
    pub(super) fn shortfall(&self, r: &Reservation) -> (bool, bool) {
        let cpu =
            r.nano_cpus > 0 && r.nano_cpus > self.capacity.nano_cpus - self.reserved.nano_cpus;
        let mem = r.memory_bytes > 0
            && r.memory_bytes > self.capacity.memory_bytes - self.reserved.memory_bytes;
        (cpu, mem)
    }
}

/// Whether a task occupies its node: assigned, meant to run, and not finished.
pub(super) fn is_active(task: &Task) -> bool {
    !task.node_id.is_empty()
        && task.desired_state <= TaskState::Running as i32
        && task.status.as_ref().map_or(0, |s| s.state) < TaskState::Complete as i32
}

pub(super) struct NodeSet<'a> {
    /// Sorted by node id, so index order is id order.
    nodes: Vec<NodeInfo<'a>>,
    /// Per service with a pending task: that service's active tasks on each node.
    service_counts: Vec<Vec<u32>>,
    service_index: HashMap<&'a str, usize>,
}

impl<'a> NodeSet<'a> {
    pub(super) fn new(nodes: &'a [Node], tasks: &'a [Task], pending: &'a [Task]) -> Self {
        let mut sorted: Vec<&Node> = nodes.iter().collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        sorted.dedup_by(|a, b| a.id == b.id);
        let mut infos: Vec<NodeInfo<'a>> = sorted.into_iter().map(NodeInfo::new).collect();
        let by_id: HashMap<&str, usize> = infos
            .iter()
            .enumerate()
            .map(|(i, n)| (n.node.id.as_str(), i))
            .collect();

        let mut service_index = HashMap::new();
        for t in pending {
            let next = service_index.len();
            service_index.entry(t.service_id.as_str()).or_insert(next);
        }
        let mut service_counts = vec![vec![0u32; infos.len()]; service_index.len()];

        for t in tasks.iter().filter(|t| is_active(t)) {
            let Some(&i) = by_id.get(t.node_id.as_str()) else {
                continue;
            };
            let info = &mut infos[i];
            let r = Reservation::of(t);
            info.reserved.nano_cpus += r.nano_cpus;
            info.reserved.memory_bytes += r.memory_bytes;
            info.tasks += 1;
            if let Some(&s) = service_index.get(t.service_id.as_str()) {
                service_counts[s][i] += 1;
            }
        }
        NodeSet {
            nodes: infos,
            service_counts,
            service_index,
        }
    }

    pub(super) fn nodes(&self) -> &[NodeInfo<'a>] {
        &self.nodes
    }

    /// The index of a service that has a pending task.
    pub(super) fn service(&self, service_id: &str) -> usize {
        self.service_index[service_id]
    }

    pub(super) fn service_counts(&self, service: usize) -> &[u32] {
        &self.service_counts[service]
    }

    /// Records a decision so that later ones in the same call see it.
    pub(super) fn place(&mut self, node: usize, service: usize, r: &Reservation) {
        let info = &mut self.nodes[node];
        info.reserved.nano_cpus += r.nano_cpus;
        info.reserved.memory_bytes += r.memory_bytes;
        info.tasks += 1;
        self.service_counts[service][node] += 1;
    }
}

impl<'a> NodeInfo<'a> {
    fn new(node: &'a Node) -> Self {
        let desc = node.description.as_ref();
        NodeInfo {
            node,
            available: node
                .description
                .as_ref()
                .is_none_or(|d| d.runtime_error.is_empty())
                && node.state() == NodeState::Ready
                && node.availability() == Availability::Active,
            capacity: Reservation {
                nano_cpus: desc.map_or(0, |d| i128::from(d.cpus) * NANO),
                memory_bytes: desc.map_or(0, |d| i128::from(d.memory_bytes)),
            },
            reserved: Reservation::default(),
            tasks: 0,
        }
    }
}

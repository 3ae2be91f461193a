//! Small facts about the cluster that several components read: the heartbeat period,
//! the managers' addresses, who leads, whether a task has finished, the data path's
//! addresses and port. A leaf: it imports no other component of the manager, so any
//! of them may use it.

use shoal_proto::objects::{Cluster, NetworkConfig, Node, NodeRole, Task, TaskState};
use shoal_store::Store;
use std::time::Duration;
use tonic::Status;

/// The heartbeat period the cluster object sets (the default without one).
pub fn period_of(cluster: Option<&Cluster>) -> Duration {
    let ms = cluster
        .and_then(|c| c.spec.as_ref())
        .map(|s| s.heartbeat_period_ms)
        .unwrap_or(crate::bootstrap::DEFAULT_HEARTBEAT.as_millis() as u64);
    Duration::from_millis(ms.max(100))
}

/// The most heartbeats a second a leader takes by default. At 47 µs of the leader's
/// CPU a beat (BENCHMARKS.md, #11), 1,000 nodes at 1 s cost 5 % of a core and 5,000
/// nodes 25 %: past 250 nodes the period grows by a second per 250 nodes, as Nomad
/// bounds its heartbeats (`max_heartbeats_per_second`). A node that dies or loses its
/// connection is still noticed within seconds (its session drops); only a node that
/// goes silent with its connection open waits out 3 periods.
pub const MAX_BEATS_PER_SEC: usize = 250;

/// The period nodes beat at: the cluster's setting, stretched so that `nodes` beat at
/// most [`MAX_BEATS_PER_SEC`] times a second in all (past a second, to whole seconds,
/// so the period changes only every 250 nodes).
pub fn bounded_period(configured: Duration, nodes: usize) -> Duration {
    let floor = if nodes <= MAX_BEATS_PER_SEC {
        Duration::from_millis((nodes * 1000 / MAX_BEATS_PER_SEC) as u64)
    } else {
        Duration::from_secs(nodes.div_ceil(MAX_BEATS_PER_SEC) as u64)
    };
    configured.max(floor)
}

/// A store error as the gRPC status a node sees.
pub(crate) fn store_status(e: shoal_store::StoreError) -> Status {
    Status::unavailable(format!("cluster store: {e}"))
}

/// A manager with an address nodes can reach: what heartbeats and join answers list.
pub fn is_listed_manager(n: &Node) -> bool {
    n.role == NodeRole::Manager as i32 && !n.addr.is_empty()
}

/// The metadata key a follower's refusal names the leader's address under.
pub const LEADER_KEY: &str = "shoal-leader";

/// The advertised address of the manager that leads now, if one is known.
pub fn leader_addr(store: &Store) -> Option<String> {
    let id = store.leader()?;
    store
        .list::<shoal_proto::objects::Node>()
        .ok()?
        .into_iter()
        .map(|n| n.value)
        .find(|n| {
            n.role == shoal_proto::objects::NodeRole::Manager as i32
                && crate::bootstrap::node_raft_id(n) == id
        })
        .map(|n| n.addr)
        .filter(|a| !a.is_empty())
}

/// A follower's answer to a call only the leader serves: where the leader is (in the
/// message, and under [`LEADER_KEY`] for agents to follow).
pub fn not_leader(store: &Store) -> Status {
    match leader_addr(store) {
        Some(addr) => {
            let mut s = Status::unavailable(format!(
                "this manager is not the leader; the leader is at {addr}"
            ));
            if let Ok(v) = addr.parse() {
                s.metadata_mut().insert(LEADER_KEY, v);
            }
            s
        }
        None => Status::unavailable(
            "this manager is not the leader and no leader is known now (an election may be under way, or too few managers are reachable): try again",
        ),
    }
}

/// Whether a task has reached a final state (complete, failed, shut down, rejected...).
pub fn has_finished(t: &Task) -> bool {
    t.status.as_ref().map_or(0, |s| s.state) >= TaskState::Complete as i32
}

/// Node tunnel endpoints' addresses; no network may overlap it.
pub const DEFAULT_TUNNEL_SUBNET: &str = "10.255.240.0/20";
/// The UDP port of the data path (WireGuard), as WireGuard's own default.
pub const DEFAULT_DATA_PATH_PORT: u16 = 51820;

/// The cluster's data path port.
pub fn data_path_port(cfg: Option<&NetworkConfig>) -> u16 {
    cfg.and_then(|c| u16::try_from(c.data_path_port).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_DATA_PATH_PORT)
}

/// The reason recorded when a removed node's certificates are revoked.
pub const REMOVED: &str = "node removed from cluster";

/// The snapshot interval a cluster spec asks for (0 is the default).
pub fn effective_snapshot_interval(spec: &shoal_proto::objects::ClusterSpec) -> u64 {
    match spec.snapshot_interval {
        0 => shoal_store::DEFAULT_SNAPSHOT_INTERVAL,
        n => n,
    }
}

/// The election timeout a cluster spec asks for (0 is the default).
pub fn effective_election_timeout(spec: &shoal_proto::objects::ClusterSpec) -> std::time::Duration {
    match spec.election_timeout_ms {
        0 => shoal_store::DEFAULT_ELECTION_TIMEOUT,
        ms => std::time::Duration::from_millis(ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_period_grows_a_second_per_250_nodes_and_never_shrinks_a_setting() {
        let s = Duration::from_secs;
        assert_eq!(bounded_period(s(1), 0), s(1));
        assert_eq!(bounded_period(s(1), 250), s(1));
        assert_eq!(bounded_period(s(1), 251), s(2));
        assert_eq!(bounded_period(s(1), 1001), s(5));
        assert_eq!(bounded_period(s(1), 5000), s(20));
        // A longer setting stands; a shorter one is stretched.
        assert_eq!(bounded_period(s(30), 5000), s(30));
        assert_eq!(
            bounded_period(Duration::from_millis(200), 10),
            Duration::from_millis(200)
        );
        // However many nodes beat, the leader takes at most MAX_BEATS_PER_SEC a second.
        for nodes in [1, 249, 250, 251, 999, 1000, 4999, 5000, 12345] {
            let p = bounded_period(Duration::from_millis(100), nodes).as_secs_f64();
            assert!(
                nodes as f64 / p <= MAX_BEATS_PER_SEC as f64,
                "{nodes} nodes at {p} s"
            );
        }
    }
}

//! Where each control call is served: the one declared table of reads and writes.
//!
//! A read answers from the manager's own copy of the store, so it works without a leader
//! (and says when that copy may be stale); a write, and a log stream (served where the
//! nodes' sessions are), goes to the leader. Front ends (the local socket, a follower
//! forwarding) route by [`route`], never by a method's name: a call that writes is a
//! write even when its name reads like a read. A method missing from the table goes to
//! the leader, which is always correct, only slower.

/// Where a control call is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// This manager's copy of the store.
    Local,
    /// The leader (forwarded when this manager follows).
    Leader,
}

/// Calls that only read.
const READS: &[&str] = &[
    "ListNodes",
    "GetNode",
    "GetJoinToken",
    "GetClusterInfo",
    "ListTasks",
    "GetTask",
    "GetService",
    "ListServices",
    "ListNetworks",
    "GetNetwork",
    "ListSecrets",
    "GetSecret",
    "GetUnlockKey",
    "GetBackup",
    "GetCa",
];

/// Calls that write, or stream from the leader.
const LEADER: &[&str] = &[
    "UpdateJoinToken",
    "CreateTask",
    "RemoveTask",
    "TaskLogs",
    "CreateService",
    "UpdateService",
    "RemoveService",
    "CreateNetwork",
    "RemoveNetwork",
    "CreateSecret",
    "UpdateSecret",
    "RemoveSecret",
    "UpdateNode",
    "RemoveNode",
    "DemoteNode",
    "PromoteNode",
    "UpdateCluster",
    "RevokeCertificate",
    "RotateCa",
];

/// Where the control call `method` (its gRPC method name, e.g. `GetJoinToken`) is
/// served.
pub fn route(method: &str) -> Route {
    if READS.contains(&method) {
        return Route::Local;
    }
    if !LEADER.contains(&method) {
        tracing::debug!(
            method,
            "a control call missing from the routing table goes to the leader"
        );
    }
    Route::Leader
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_control_call_is_declared_once_and_token_writes_go_to_the_leader() {
        let proto = include_str!("../../proto/proto/shoal/control.proto");
        let service = proto
            .split("service Control")
            .nth(1)
            .and_then(|s| s.split('}').next())
            .expect("the Control service");
        let methods: Vec<&str> = service
            .split("rpc ")
            .skip(1)
            .filter_map(|s| s.split('(').next())
            .map(str::trim)
            .collect();
        assert!(methods.len() >= 30, "{methods:?}");
        for m in &methods {
            let declared = READS.contains(m) as u8 + LEADER.contains(m) as u8;
            assert_eq!(declared, 1, "{m} must be declared exactly once");
        }
        for m in READS.iter().chain(LEADER) {
            assert!(methods.contains(m), "{m} is not a control call");
        }
        assert_eq!(route("UpdateJoinToken"), Route::Leader);
        assert_eq!(route("GetJoinToken"), Route::Local);
        assert_eq!(route("SomethingNew"), Route::Leader);
    }
}

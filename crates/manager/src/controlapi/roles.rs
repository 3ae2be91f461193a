//! Who may do what: the least role each control call needs, and what a user's scope
//! lets them reach.
//!
//! A user's role is checked once per call, before any handler runs
//! ([`ControlCaller`](super::ControlCaller)'s check, by [`needed`]); the scope is checked
//! on each object a handler reads or writes, by the object's stack label
//! ([`shoal_proto::STACK_LABEL`]). The local administrator and managers have no limits;
//! neither has an administrator (whose scope is every stack).
//!
//! - viewer: reads (never secret data, which no call returns) and logs;
//! - deployer: + services, stacks, networks, secrets and configs, with no spec that
//!   reaches the host ([`host_reach`]);
//! - operator: + specs that reach the host, one-off tasks, `task exec`, node
//!   availability and labels;
//! - admin: + users, join tokens, certificates, the CA, cluster settings, backups,
//!   promote, demote and remove.

use super::users::{role_name, ALL};
use super::ControlError;
use crate::scheduler::constraint::{self, Key, Op};
use crate::security::access::UserGrant;
use shoal_proto::objects::{Node, NodeRole, ServiceSpec, UserRole};
use shoal_proto::{HOST_NETWORK, STACK_LABEL};
use std::collections::HashMap;
use tonic::Status;

/// Calls a viewer may make: reads, and logs. Nodes, the cluster and the CA's status are
/// in no stack, and every user may read them.
const VIEWER: &[&str] = &[
    "ListNodes",
    "GetNode",
    "GetClusterInfo",
    "GetCa",
    "ListTasks",
    "GetTask",
    "TaskLogs",
    "GetService",
    "ListServices",
    "ListNetworks",
    "GetNetwork",
    "ListSecrets",
    "GetSecret",
];

/// Calls a deployer may make as well: the objects of an application.
const DEPLOYER: &[&str] = &[
    "CreateService",
    "UpdateService",
    "RemoveService",
    "CreateNetwork",
    "RemoveNetwork",
    "CreateSecret",
    "UpdateSecret",
    "RemoveSecret",
];

/// Calls an operator may make as well: into running tasks, and onto nodes.
const OPERATOR: &[&str] = &["CreateTask", "RemoveTask", "TaskExec", "UpdateNode"];

/// Calls only an administrator may make (and any call not declared here).
const ADMIN: &[&str] = &[
    "GetJoinToken",
    "UpdateJoinToken",
    "GetUnlockKey",
    "GetBackup",
    "RemoveNode",
    "DemoteNode",
    "PromoteNode",
    "UpdateCluster",
    "RevokeCertificate",
    "RotateCa",
    "CreateUser",
    "ListUsers",
    "GetUser",
    "UpdateUser",
    "RemoveUser",
    "NewUserToken",
];

/// The least role that may make the control call `method`: a call missing from the
/// tables needs an administrator (a new call is closed until it is declared).
pub fn needed(method: &str) -> UserRole {
    if VIEWER.contains(&method) {
        UserRole::Viewer
    } else if DEPLOYER.contains(&method) {
        UserRole::Deployer
    } else if OPERATOR.contains(&method) {
        UserRole::Operator
    } else {
        if !ADMIN.contains(&method) {
            tracing::debug!(
                method,
                "a control call missing from the role tables needs an administrator"
            );
        }
        UserRole::Admin
    }
}

/// "a viewer", "an operator": a role as a sentence names it.
fn a_role(role: UserRole) -> String {
    let name = role_name(role);
    let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {name}")
}

/// Whether `role` is at least `least`.
fn at_least(role: UserRole, least: UserRole) -> bool {
    role as i32 >= least as i32
}

/// The stack an object is in, by its labels.
pub fn stack_of(labels: &HashMap<String, String>) -> Option<&str> {
    labels
        .get(STACK_LABEL)
        .map(String::as_str)
        .filter(|s| !s.is_empty())
}

/// What a user may reach: their name and the grant the store gives them now. Only
/// users have limits.
#[derive(Clone, Debug)]
pub struct Limits {
    pub name: String,
    pub grant: UserGrant,
}

impl Limits {
    /// Refuses `call` when the user's role is below what it needs.
    pub fn check_role(&self, call: &str) -> Result<(), Status> {
        let least = needed(call);
        if at_least(self.grant.role, least) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "{call} refused: user {} is {}, and {call} needs the {} role (an administrator can grant it with 'shoal user update {} --role {}')",
            self.name,
            a_role(self.grant.role),
            role_name(least),
            self.name,
            role_name(least),
        )))
    }

    /// Whether the user may act in every stack and outside them.
    fn everywhere(&self) -> bool {
        self.grant.role == UserRole::Admin || self.grant.scopes.iter().any(|s| s == ALL)
    }

    /// Whether an object with these labels is in the user's scope.
    pub fn sees(&self, labels: &HashMap<String, String>) -> bool {
        self.everywhere()
            || stack_of(labels).is_some_and(|st| self.grant.scopes.iter().any(|s| s == st))
    }

    /// Refuses an object outside the user's scope, naming it and the scope.
    pub fn in_scope(
        &self,
        call: &str,
        kind: &str,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<(), ControlError> {
        if self.sees(labels) {
            return Ok(());
        }
        let place = match stack_of(labels) {
            Some(st) => format!("is in stack {st}"),
            None => format!("is in no stack (it has no {STACK_LABEL} label)"),
        };
        Err(ControlError::Denied(format!(
            "{call} refused: user {} may act only in stack{} {}, and {kind} {name} {place}",
            self.name,
            if self.grant.scopes.len() == 1 {
                ""
            } else {
                "s"
            },
            self.grant.scopes.join(", "),
        )))
    }

    /// Refuses a new (or renamed) object outside the user's scope, or, for a user scoped
    /// to stacks, one not named `<stack>_<name>` as `stack deploy` names them (so no
    /// stack's user can take a name another stack will need).
    pub fn may_name(
        &self,
        call: &str,
        kind: &str,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<(), ControlError> {
        self.in_scope(call, kind, name, labels)?;
        if self.everywhere() {
            return Ok(());
        }
        let stack = stack_of(labels).unwrap_or_default();
        if name
            .strip_prefix(stack)
            .and_then(|r| r.strip_prefix('_'))
            .is_some_and(|r| !r.is_empty())
        {
            return Ok(());
        }
        Err(ControlError::Denied(format!(
            "{call} refused: user {} may name objects of stack {stack} only {stack}_<name>, and {kind} {name} is not",
            self.name
        )))
    }

    /// Refuses a spec that reaches the host (see [`host_reach`]) to a user below operator.
    pub fn may_reach_host(
        &self,
        call: &str,
        kind: &str,
        name: &str,
        spec: &ServiceSpec,
        nodes: &[Node],
    ) -> Result<(), ControlError> {
        if at_least(self.grant.role, UserRole::Operator) {
            return Ok(());
        }
        match host_reach(spec, nodes) {
            None => Ok(()),
            Some(what) => Err(ControlError::Denied(format!(
                "{call} refused: user {} is {}, and {kind} {name} reaches the host ({what}): that needs the operator role",
                self.name,
                a_role(self.grant.role)
            ))),
        }
    }

    /// Whether a stream of `call` on an object with these labels may go on with `grant`
    /// (the user's grant now).
    pub fn still_allows(grant: &UserGrant, call: &str, stack: Option<&str>) -> bool {
        let l = Limits {
            name: String::new(),
            grant: grant.clone(),
        };
        let labels: HashMap<String, String> = stack
            .map(|s| (STACK_LABEL.to_string(), s.to_string()))
            .into_iter()
            .collect();
        l.check_role(call).is_ok() && l.sees(&labels)
    }
}

/// The first option of `spec` that reaches the host, as a user reads it: a bind mount
/// of a host path, the host network, a capability beyond the default set, a port of
/// the node's below 1024 published in host mode, or placement asked on managers (by
/// role, or by a manager's ID or hostname). Sysctls outside the namespaced set are
/// refused to everyone (see `shoal_proto::options`).
pub fn host_reach(spec: &ServiceSpec, nodes: &[Node]) -> Option<String> {
    let c = spec.container.clone().unwrap_or_default();
    if let Some(m) = c.mounts.iter().find(|m| m.r#type == "bind") {
        return Some(format!("a bind mount of host path {}", m.source));
    }
    if c.networks.iter().any(|n| n.target == HOST_NETWORK) {
        return Some("--network host".into());
    }
    let added = shoal_proto::caps::normalize_all(&c.cap_add).unwrap_or_default();
    if let Some(cap) = added
        .iter()
        .find(|a| !shoal_proto::caps::DEFAULT.contains(&a.as_str()))
    {
        return Some(format!("--cap-add {cap}"));
    }
    if let Some(p) = spec
        .ports
        .iter()
        .find(|p| p.mode == "host" && p.published != 0 && p.published < 1024)
    {
        return Some(format!("mode=host port {} below 1024", p.published));
    }
    let constraints = spec
        .placement
        .as_ref()
        .map(|p| constraint::parse_all(&p.constraints).unwrap_or_default())
        .unwrap_or_default();
    let manager = |n: &&Node| n.role() == NodeRole::Manager;
    for c in &constraints {
        let on_managers = match (c.key(), c.op()) {
            (Key::Role, Op::Eq) => c.value().eq_ignore_ascii_case("manager"),
            (Key::Role, Op::NotEq) => c.value().eq_ignore_ascii_case("worker"),
            (Key::NodeId | Key::Hostname, Op::Eq) => {
                nodes.iter().filter(manager).any(|n| c.matches(n))
            }
            _ => false,
        };
        if on_managers {
            return Some(format!("placement on managers: {c}"));
        }
    }
    None
}

/// Every method of the Control service, as control.proto declares them: what the
/// declared tables (routes, roles) are checked against.
#[cfg(test)]
pub(crate) fn control_methods() -> Vec<&'static str> {
    let proto = include_str!("../../../proto/proto/shoal/control.proto");
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
    methods
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::objects::{
        ContainerSpec, Mount, NetworkAttachmentConfig, NodeDescription, Placement, PortConfig,
    };

    fn user(role: UserRole, scopes: &[&str]) -> Limits {
        Limits {
            name: "alice".into(),
            grant: UserGrant {
                role,
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
            },
        }
    }

    fn labels(stack: Option<&str>) -> HashMap<String, String> {
        stack
            .map(|s| (STACK_LABEL.to_string(), s.to_string()))
            .into_iter()
            .collect()
    }

    #[test]
    fn every_control_call_needs_a_declared_role() {
        let methods = control_methods();
        for m in &methods {
            let declared = [VIEWER, DEPLOYER, OPERATOR, ADMIN]
                .iter()
                .filter(|t| t.contains(m))
                .count();
            assert_eq!(declared, 1, "{m} must be declared exactly once");
        }
        for m in VIEWER.iter().chain(DEPLOYER).chain(OPERATOR).chain(ADMIN) {
            assert!(methods.contains(m), "{m} is not a control call");
        }
        assert_eq!(needed("SomethingNew"), UserRole::Admin);
    }

    #[test]
    fn each_role_makes_its_calls_and_a_refusal_says_what_is_missing() {
        let table = [
            ("ListServices", UserRole::Viewer),
            ("TaskLogs", UserRole::Viewer),
            ("CreateService", UserRole::Deployer),
            ("CreateSecret", UserRole::Deployer),
            ("TaskExec", UserRole::Operator),
            ("UpdateNode", UserRole::Operator),
            ("CreateUser", UserRole::Admin),
            ("RotateCa", UserRole::Admin),
            ("GetJoinToken", UserRole::Admin),
        ];
        let roles = [
            UserRole::Viewer,
            UserRole::Deployer,
            UserRole::Operator,
            UserRole::Admin,
        ];
        for (call, least) in table {
            for role in roles {
                let r = user(role, &["*"]).check_role(call);
                assert_eq!(r.is_ok(), at_least(role, least), "{call} as {role:?}");
                if let Err(e) = r {
                    assert_eq!(e.code(), tonic::Code::PermissionDenied);
                    let m = e.message();
                    assert!(m.contains("user alice is a"), "{m}");
                    assert!(m.contains(&a_role(role)), "{m}");
                    assert!(
                        m.contains(&format!("needs the {} role", role_name(least))),
                        "{m}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_scope_is_a_list_of_stacks_and_names_follow_the_stack() {
        let shop = user(UserRole::Deployer, &["shop"]);
        assert!(shop.sees(&labels(Some("shop"))));
        assert!(!shop.sees(&labels(Some("blog"))));
        assert!(!shop.sees(&labels(None)));
        shop.may_name(
            "CreateService",
            "service",
            "shop_web",
            &labels(Some("shop")),
        )
        .unwrap();
        let e = shop
            .may_name(
                "CreateService",
                "service",
                "blog_web",
                &labels(Some("blog")),
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("user alice may act only in stack shop")
                && e.contains("service blog_web is in stack blog"),
            "{e}"
        );
        let e = shop
            .may_name("CreateService", "service", "web", &labels(None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is in no stack"), "{e}");
        let e = shop
            .may_name(
                "CreateService",
                "service",
                "blog_web",
                &labels(Some("shop")),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("only shop_<name>"), "{e}");
        // Every stack, and outside them: '*', or an administrator whatever the scope.
        for everywhere in [
            user(UserRole::Deployer, &["*"]),
            user(UserRole::Admin, &["shop"]),
        ] {
            assert!(everywhere.sees(&labels(None)));
            everywhere
                .may_name("CreateService", "service", "web", &labels(None))
                .unwrap();
        }
        // A stream goes on while the grant still covers it.
        let g = shop.grant.clone();
        assert!(Limits::still_allows(&g, "TaskLogs", Some("shop")));
        assert!(!Limits::still_allows(&g, "TaskLogs", Some("blog")));
        assert!(!Limits::still_allows(&g, "TaskExec", Some("shop")));
    }

    #[test]
    fn a_deployer_is_refused_every_spec_that_reaches_the_host() {
        let manager = Node {
            id: "m1".into(),
            role: NodeRole::Manager as i32,
            description: Some(NodeDescription {
                hostname: "boss".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let nodes = vec![manager];
        let base = ServiceSpec {
            name: "shop_web".into(),
            container: Some(ContainerSpec {
                image: "nginx".into(),
                cap_add: vec!["CAP_NET_BIND_SERVICE".into()],
                ..Default::default()
            }),
            ports: vec![PortConfig {
                target: 80,
                published: 80,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            host_reach(&base, &nodes),
            None,
            "ingress ports and default caps"
        );
        let with = |f: &dyn Fn(&mut ServiceSpec)| {
            let mut s = base.clone();
            f(&mut s);
            host_reach(&s, &nodes).expect("reaches the host")
        };
        assert!(with(&|s| s.container.as_mut().unwrap().mounts.push(Mount {
            r#type: "bind".into(),
            source: "/etc".into(),
            target: "/x".into(),
            ..Default::default()
        }))
        .contains("bind mount of host path /etc"));
        assert!(with(&|s| s
            .container
            .as_mut()
            .unwrap()
            .networks
            .push(NetworkAttachmentConfig {
                target: "host".into(),
                ..Default::default()
            }))
        .contains("--network host"));
        assert!(
            with(&|s| s.container.as_mut().unwrap().cap_add = vec!["NET_ADMIN".into()])
                .contains("--cap-add CAP_NET_ADMIN")
        );
        assert!(with(&|s| s.ports[0].mode = "host".into()).contains("mode=host port 80"));
        for expr in [
            "node.role==manager",
            "node.role!=worker",
            "node.id==m1",
            "node.hostname==boss",
        ] {
            let e = with(&|s| {
                s.placement = Some(Placement {
                    constraints: vec![expr.into()],
                    ..Default::default()
                })
            });
            assert!(e.contains("placement on managers"), "{expr}: {e}");
        }
        let mut workers_only = base.clone();
        workers_only.placement = Some(Placement {
            constraints: vec!["node.role==worker".into()],
            ..Default::default()
        });
        assert_eq!(host_reach(&workers_only, &nodes), None);
        let mut bind = base.clone();
        bind.container.as_mut().unwrap().mounts.push(Mount {
            r#type: "bind".into(),
            source: "/etc".into(),
            target: "/x".into(),
            ..Default::default()
        });
        let e = user(UserRole::Deployer, &["*"])
            .may_reach_host("CreateService", "service", "shop_web", &bind, &nodes)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("user alice is a deployer") && e.contains("needs the operator role"),
            "{e}"
        );
        user(UserRole::Operator, &["shop"])
            .may_reach_host("CreateService", "service", "shop_web", &bind, &nodes)
            .unwrap();
    }
}

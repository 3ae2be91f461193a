//! The control API for services and node management.

use crate::controlapi::{validate_spec, ControlApi, ControlCaller, ControlError};
use crate::scheduler::constraint;
use crate::time::unix_now;
use shoal_proto::control::{ListServicesResponse, ServiceStatus, UpdateServiceRequest};
use shoal_proto::objects::{
    Availability, Node, NodeState, Service, ServiceMode, ServiceSpec, Task, TaskState, UpdateState,
    UpdateStatus,
};
use shoal_store::{Batch, Expect, StoreError};

fn bad(m: String) -> ControlError {
    ControlError::BadService(m)
}

/// Checks a service spec, naming the first thing wrong.
pub fn validate_service(spec: &ServiceSpec) -> Result<(), ControlError> {
    let name = &spec.name;
    if name.is_empty() {
        return Err(bad("a service needs a name (--name)".into()));
    }
    if name.len() > shoal_proto::limits::MAX_NAME
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        || name.starts_with('-')
    {
        return Err(bad(format!(
            "service name {:?} must be 1-63 letters, digits, '-' or '_'",
            shoal_proto::limits::short(name)
        )));
    }
    validate_spec(&spec.container.clone().unwrap_or_default()).map_err(|e| match e {
        ControlError::BadSpec(m) => bad(m),
        e => e,
    })?;
    shoal_proto::limits::check_labels("service label", &spec.labels).map_err(|e| bad(e.0))?;
    crate::controlapi::networks::validate_ports(&spec.ports)?;
    if !["", "vip", "dnsrr"].contains(&spec.endpoint_mode.as_str()) {
        return Err(bad(format!(
            "endpoint mode {:?} is not known: use vip (a virtual IP, the default) or dnsrr (DNS round robin)",
            shoal_proto::limits::short(&spec.endpoint_mode)
        )));
    }
    let size = prost::Message::encoded_len(spec);
    if size > 2 * shoal_proto::limits::MAX_SPEC_BYTES {
        return Err(bad(format!(
            "the service spec is {size} bytes: the limit is {} bytes",
            2 * shoal_proto::limits::MAX_SPEC_BYTES
        )));
    }
    let placement = spec.placement.clone().unwrap_or_default();
    constraint::parse_all(&placement.constraints).map_err(|e| bad(e.to_string()))?;
    for p in &placement.spread {
        if !(p.starts_with("node.labels.") || p.starts_with("engine.labels.")) || p.ends_with('.') {
            return Err(bad(format!(
                "placement preference spread={p}: spread over node.labels.<key> (or engine.labels.<key>)"
            )));
        }
    }
    if let Some(r) = &spec.reservations {
        if r.nano_cpus < 0 || r.memory_bytes < 0 {
            return Err(bad("reservations cannot be negative".into()));
        }
    }
    if spec.mode != ServiceMode::Replicated as i32 && placement.max_replicas_per_node > 0 {
        return Err(bad(
            "--replicas-max-per-node applies to replicated services only".into(),
        ));
    }
    if ServiceMode::try_from(spec.mode).is_err() {
        return Err(bad(format!(
            "unknown service mode {}: use replicated, global, replicated-job or global-job",
            spec.mode
        )));
    }
    if spec.max_concurrent > 0 && spec.mode != ServiceMode::ReplicatedJob as i32 {
        return Err(bad(
            "--max-concurrent applies to replicated jobs only".into()
        ));
    }
    validate_policies(spec)
}

/// A day: the longest delay, monitor or window a policy may have.
const MAX_POLICY_MS: u64 = 24 * 3600 * 1000;

fn validate_policies(spec: &ServiceSpec) -> Result<(), ControlError> {
    use shoal_proto::objects::{FailureAction, RestartCondition, UpdateOrder};
    let too_long = |what: &str, ms: u64| -> Result<(), ControlError> {
        if ms > MAX_POLICY_MS {
            return Err(bad(format!("{what} of {ms} ms is too long: at most 24h")));
        }
        Ok(())
    };
    if let Some(r) = &spec.restart {
        if RestartCondition::try_from(r.condition).is_err() {
            return Err(bad(
                "--restart-condition: use none, on-failure or any".into()
            ));
        }
        too_long("--restart-delay", r.delay_ms.unwrap_or(0))?;
        too_long("--restart-window", r.window_ms)?;
    }
    for (flag, c) in [("update", &spec.update), ("rollback", &spec.rollback)] {
        let Some(c) = c else { continue };
        if FailureAction::try_from(c.failure_action).is_err() {
            return Err(bad(format!(
                "--{flag}-failure-action: use pause, continue or rollback"
            )));
        }
        if flag == "rollback" && c.failure_action == FailureAction::Rollback as i32 {
            return Err(bad(
                "--rollback-failure-action rollback: a rollback cannot roll back; use pause or continue".into(),
            ));
        }
        if UpdateOrder::try_from(c.order).is_err() {
            return Err(bad(format!(
                "--{flag}-order: use stop-first or start-first"
            )));
        }
        if !(0.0..=1.0).contains(&c.max_failure_ratio) {
            return Err(bad(format!(
                "--{flag}-max-failure-ratio {}: give a fraction from 0 to 1",
                c.max_failure_ratio
            )));
        }
        too_long(&format!("--{flag}-delay"), c.delay_ms)?;
        too_long(&format!("--{flag}-monitor"), c.monitor_ms.unwrap_or(0))?;
    }
    if let Some(h) = spec.container.as_ref().and_then(|c| c.healthcheck.as_ref()) {
        match h.test.first().map(String::as_str) {
            None | Some("NONE") | Some("CMD") | Some("CMD-SHELL") => {}
            Some(other) => {
                return Err(bad(format!(
                    "health check test {:?}: start it with CMD, CMD-SHELL or NONE",
                    shoal_proto::limits::short(other)
                )))
            }
        }
        if matches!(
            h.test.first().map(String::as_str),
            Some("CMD") | Some("CMD-SHELL")
        ) && h.test.len() < 2
        {
            return Err(bad("the health check has no command (--health-cmd)".into()));
        }
        for (what, ms) in [
            ("--health-interval", h.interval_ms),
            ("--health-timeout", h.timeout_ms),
            ("--health-start-period", h.start_period_ms),
        ] {
            too_long(what, ms)?;
            if ms != 0 && ms < 1000 && what != "--health-start-period" {
                return Err(bad(format!("{what} must be at least 1s")));
            }
        }
    }
    Ok(())
}

impl ControlApi {
    /// A service by ID, unique ID prefix, or name.
    pub fn get_service(
        &self,
        caller: &ControlCaller,
        reference: &str,
    ) -> Result<shoal_store::Versioned<Service>, ControlError> {
        let s = self.find_service(reference)?;
        let spec = s.value.spec.clone().unwrap_or_default();
        caller.in_scope("service", &s.value.id, &spec.name, &spec.labels)?;
        Ok(s)
    }

    /// A service by ID, unique ID prefix, or name, whoever asks.
    fn find_service(
        &self,
        reference: &str,
    ) -> Result<shoal_store::Versioned<Service>, ControlError> {
        if let Some(s) = self.get::<Service>(reference)? {
            return Ok(s);
        }
        let all = self.list::<Service>()?;
        let by_name: Vec<_> = all
            .iter()
            .filter(|s| s.value.spec.as_ref().map(|x| x.name.as_str()) == Some(reference))
            .collect();
        let found: Vec<_> = if by_name.is_empty() && !reference.is_empty() {
            all.iter()
                .filter(|s| s.value.id.starts_with(reference))
                .collect()
        } else {
            by_name
        };
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ControlError::NoSuchService(reference.to_string())),
            many => Err(ControlError::AmbiguousService(
                reference.to_string(),
                many.len(),
            )),
        }
    }

    /// Refuses a service spec the caller may not deploy: one that reaches the host
    /// (below operator), or that uses a network, secret or config outside their scope.
    fn may_deploy(&self, caller: &ControlCaller, spec: &ServiceSpec) -> Result<(), ControlError> {
        if caller.limits().is_none() {
            return Ok(());
        }
        let nodes: Vec<Node> = self.list::<Node>()?.into_iter().map(|v| v.value).collect();
        caller.may_reach_host("service", &spec.name, spec, &nodes)?;
        self.refs_in_scope(caller, spec.container.as_ref())
    }

    fn name_taken(&self, name: &str, except: &str) -> Result<bool, ControlError> {
        Ok(self.list::<Service>()?.iter().any(|s| {
            s.value.id != except && s.value.spec.as_ref().map(|x| x.name.as_str()) == Some(name)
        }))
    }

    /// Refuses a `node.hostname==NAME` constraint that matches more than one node:
    /// hostnames are claims, and a shared one cannot pick a node.
    fn refuse_ambiguous_hostnames(&self, spec: &ServiceSpec) -> Result<(), ControlError> {
        let placement = spec.placement.clone().unwrap_or_default();
        let constraints =
            constraint::parse_all(&placement.constraints).map_err(|e| bad(e.to_string()))?;
        let nodes: Vec<Node> = self.list::<Node>()?.into_iter().map(|v| v.value).collect();
        for c in constraints.iter().filter(|c| {
            matches!(c.key(), constraint::Key::Hostname) && c.op() == constraint::Op::Eq
        }) {
            let ids: Vec<&str> = nodes
                .iter()
                .filter(|n| c.matches(n))
                .map(|n| n.id.as_str())
                .collect();
            if ids.len() > 1 {
                return Err(bad(format!(
                    "constraint {c} matches {} nodes ({}): hostnames are not unique; use node.id==<ID>",
                    ids.len(),
                    ids.join(", ")
                )));
            }
        }
        Ok(())
    }

    pub async fn create_service(
        &self,
        caller: &ControlCaller,
        mut spec: ServiceSpec,
    ) -> Result<Service, ControlError> {
        validate_service(&spec)?;
        self.resolve_networks(spec.container.get_or_insert_with(Default::default), false)?;
        self.resolve_secrets(spec.container.get_or_insert_with(Default::default))?;
        self.refuse_ambiguous_hostnames(&spec)?;
        caller.may_name("service", &spec.name, &spec.labels)?;
        self.may_deploy(caller, &spec)?;
        if self.name_taken(&spec.name, "")? {
            return Err(ControlError::Exists(format!(
                "a service named {} already exists",
                spec.name
            )));
        }
        let now = unix_now();
        let service = Service {
            id: shoal_pki::random_id(),
            spec: Some(spec),
            spec_version: 1,
            created_at_unix: now,
            updated_at_unix: now,
            previous_spec: None,
            ..Default::default()
        };
        let mut service = service;
        self.assign_ports(&mut service)?;
        self.assign_vips(&mut service)?;
        let mut b = Batch::default();
        b.put(&service, Expect::Absent);
        self.commit(b).await?;
        tracing::info!(service_id = %service.id, by = %caller, "service created");
        Ok(service)
    }

    pub async fn update_service(
        &self,
        caller: &ControlCaller,
        req: UpdateServiceRequest,
    ) -> Result<Service, ControlError> {
        if req.rollback {
            return self.rollback_service(caller, &req.reference).await;
        }
        let mut spec = req.spec.unwrap_or_default();
        validate_service(&spec)?;
        self.resolve_networks(spec.container.get_or_insert_with(Default::default), false)?;
        self.resolve_secrets(spec.container.get_or_insert_with(Default::default))?;
        self.refuse_ambiguous_hostnames(&spec)?;
        let cur = self.get_service(caller, &req.reference)?;
        let old_name = cur.value.spec.as_ref().map(|s| s.name.as_str());
        if old_name == Some(spec.name.as_str()) {
            caller.in_scope("service", &cur.value.id, &spec.name, &spec.labels)?;
        } else {
            caller.may_name("service", &spec.name, &spec.labels)?;
        }
        self.may_deploy(caller, &spec)?;
        if req.spec_version != 0 && req.spec_version != cur.value.spec_version {
            return Err(ControlError::Conflict(format!(
                "service {} changed meanwhile (version {} now, {} when read): run the update again",
                req.reference, cur.value.spec_version, req.spec_version
            )));
        }
        if cur.value.spec.as_ref().map(|s| s.mode) != Some(spec.mode) {
            return Err(bad(
                "a service's mode cannot change: create a new service".into()
            ));
        }
        if self.name_taken(&spec.name, &cur.value.id)? {
            return Err(ControlError::Exists(format!(
                "a service named {} already exists",
                spec.name
            )));
        }
        let mut next = cur.value.clone();
        let old = next.spec.clone().unwrap_or_default();
        // A port published where the managers chose keeps that port.
        for p in spec.ports.iter_mut().filter(|p| p.published == 0) {
            if let Some(o) = old
                .ports
                .iter()
                .find(|o| o.target == p.target && o.protocol == p.protocol && o.mode == p.mode)
            {
                p.published = o.published;
            }
        }
        // The same spec again (`stack deploy` of an unchanged file) changes nothing, and
        // keeps the previous spec that `rollback` returns to.
        if !req.force && old == spec {
            return Ok(cur.value.clone());
        }
        let job = crate::orchestrator::is_job(&spec);
        if req.force {
            // Every task becomes out of date: a rolling restart (or a job's new run).
            let c = spec.container.get_or_insert_with(Default::default);
            c.force_update = old
                .container
                .as_ref()
                .map(|c| c.force_update)
                .unwrap_or(0)
                .max(c.force_update)
                + 1;
        }
        // Only a change to what tasks run or where (or --force) replaces tasks; scaling,
        // renaming and service labels do not.
        let task_changed = old.container != spec.container
            || old.reservations != spec.reservations
            || old.placement != spec.placement;
        let now_ms = crate::time::unix_now_ms();
        if task_changed {
            next.spec_version += 1;
            if job {
                next.job_iteration += 1;
            } else {
                next.update_status = Some(UpdateStatus {
                    state: UpdateState::Updating as i32,
                    started_at_ms: now_ms,
                    message: "update in progress".into(),
                    spec_version: next.spec_version,
                    ..Default::default()
                });
            }
        } else if job && spec.replicas != old.replicas {
            // A job of another size is another run.
            next.job_iteration += 1;
        }
        next.previous_spec = Some(old);
        next.spec = Some(spec);
        next.updated_at_unix = unix_now();
        self.assign_ports(&mut next)?;
        self.assign_vips(&mut next)?;
        let mut b = Batch::default();
        b.put(&next, Expect::Version(cur.version));
        match self.commit(b).await {
            Ok(_) => {
                // A secret version the old previous spec held may be unused now.
                if let Err(e) = self.prune_versions().await {
                    tracing::warn!(error = %e, "cannot delete unused secret versions");
                }
                Ok(next)
            }
            Err(StoreError::Conflict { .. }) => Err(ControlError::Conflict(
                "the service changed meanwhile: run the update again".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Returns the service to its previous spec (swapping the two, as swarm does), with
    /// its rollback settings.
    async fn rollback_service(
        &self,
        caller: &ControlCaller,
        reference: &str,
    ) -> Result<Service, ControlError> {
        let cur = self.get_service(caller, reference)?;
        let mut next = cur.value.clone();
        let name = next
            .spec
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let Some(prev) = next.previous_spec.take() else {
            return Err(bad(format!(
                "service {name} has no previous spec to roll back to"
            )));
        };
        if crate::orchestrator::is_job(&prev) {
            return Err(bad(format!(
                "service {name} is a job: jobs do not roll back"
            )));
        }
        caller.in_scope("service", &cur.value.id, &prev.name, &prev.labels)?;
        self.may_deploy(caller, &prev)?;
        next.previous_spec = next.spec.replace(prev);
        next.spec_version += 1;
        next.updated_at_unix = unix_now();
        self.assign_ports(&mut next)?;
        self.assign_vips(&mut next)?;
        next.update_status = Some(UpdateStatus {
            state: UpdateState::RollbackStarted as i32,
            started_at_ms: crate::time::unix_now_ms(),
            message: "manually requested rollback".into(),
            spec_version: next.spec_version,
            ..Default::default()
        });
        let mut b = Batch::default();
        b.put(&next, Expect::Version(cur.version));
        match self.commit(b).await {
            Ok(_) => Ok(next),
            Err(StoreError::Conflict { .. }) => Err(ControlError::Conflict(
                "the service changed meanwhile: run the rollback again".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    pub fn list_services(
        &self,
        caller: &ControlCaller,
    ) -> Result<ListServicesResponse, ControlError> {
        let services: Vec<Service> = self
            .list::<Service>()?
            .into_iter()
            .map(|v| v.value)
            .filter(|s| {
                caller.sees(
                    &s.spec
                        .as_ref()
                        .map(|x| x.labels.clone())
                        .unwrap_or_default(),
                )
            })
            .collect();
        let tasks: Vec<Task> = self.list::<Task>()?.into_iter().map(|v| v.value).collect();
        let nodes: Vec<Node> = self.list::<Node>()?.into_iter().map(|v| v.value).collect();
        let mut status = std::collections::HashMap::new();
        for s in &services {
            let running = tasks
                .iter()
                .filter(|t| {
                    t.service_id == s.id
                        && t.desired_state <= TaskState::Running as i32
                        && t.status.as_ref().map(|x| x.state) == Some(TaskState::Running as i32)
                })
                .count() as u64;
            let spec = s.spec.clone().unwrap_or_default();
            let desired = if spec.mode == ServiceMode::Global as i32 {
                let cs =
                    constraint::parse_all(&spec.placement.clone().unwrap_or_default().constraints)
                        .unwrap_or_default();
                let holds_live = |n: &Node| {
                    tasks.iter().any(|t| {
                        t.service_id == s.id
                            && t.node_id == n.id
                            && t.desired_state <= TaskState::Running as i32
                    })
                };
                // Paused nodes count only for the task they already run.
                nodes
                    .iter()
                    .filter(|n| {
                        n.state == NodeState::Ready as i32
                            && cs.iter().all(|c| c.matches(n))
                            && (n.availability == Availability::Active as i32
                                || (n.availability == Availability::Pause as i32 && holds_live(n)))
                    })
                    .count() as u64
            } else {
                spec.replicas
            };
            let mut st = ServiceStatus {
                running,
                desired,
                ..Default::default()
            };
            if crate::orchestrator::is_job(&spec) {
                let all: Vec<&Task> = tasks.iter().collect();
                let (done, wanted) = crate::orchestrator::jobs::progress(s, &all, &nodes);
                let limit = match spec.max_concurrent {
                    0 => wanted,
                    m if spec.mode == ServiceMode::ReplicatedJob as i32 => m,
                    _ => wanted,
                };
                st.completed = done;
                st.completions = wanted;
                st.desired = limit.min(wanted - done.min(wanted));
            }
            status.insert(s.id.clone(), st);
        }
        Ok(ListServicesResponse { services, status })
    }

    pub async fn remove_service(
        &self,
        caller: &ControlCaller,
        reference: &str,
    ) -> Result<(), ControlError> {
        let s = self.get_service(caller, reference)?;
        let mut b = Batch::default();
        b.delete::<Service>(&s.value.id, Expect::Version(s.version));
        self.commit(b).await?;
        tracing::info!(service_id = %s.value.id, by = %caller, "service removed");
        if let Err(e) = self.prune_versions().await {
            tracing::warn!(error = %e, "cannot delete unused secret versions");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::objects::ContainerSpec;

    #[test]
    fn a_service_naming_an_unknown_capability_is_refused() {
        let mut spec = ServiceSpec {
            name: "web".into(),
            container: Some(ContainerSpec {
                image: "busybox".into(),
                cap_add: vec!["NET_ADMIN".into(), "CAP_SYS_TIME".into(), "ALL".into()],
                cap_drop: vec!["mknod".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(validate_service(&spec).is_ok());
        if let Some(c) = spec.container.as_mut() {
            c.cap_drop.push("CAP_TELEPORT".into());
        }
        let err = validate_service(&spec).unwrap_err().to_string();
        assert!(
            err.contains("--cap-drop") && err.contains("\"CAP_TELEPORT\""),
            "{err}"
        );
    }
}

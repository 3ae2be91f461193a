//! CLI: services and node management.

use crate::cli::security::{apply_caps, parse_cap, print_security, security_json};
use crate::cli::spec_flags::{
    parse_bytes, parse_cpus, parse_mount, parse_network, ProcessFlags, ProcessUpdateFlags,
};
use crate::cli::table::{
    ago, health_label, networks_json, state_name as state_label, task_table_header, truncate,
};
use crate::cli::{fmt_time, print_table, status_err, Client};
use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use shoal_proto::control::{
    CreateServiceRequest, GetServiceRequest, ListServicesRequest, ListTasksRequest,
    RemoveServiceRequest, TaskLogsRequest, UpdateServiceRequest,
};
use shoal_proto::objects::{
    ContainerSpec, Mount, NetworkAttachmentConfig, Placement, Resources, SecretReference, Service,
    ServiceMode, ServiceSpec, Task, TaskState,
};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

/// `KEY=VALUE` (or a bare `KEY`, with an empty value) from a flag.
pub(crate) fn kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        None if !s.is_empty() => Ok((s.to_string(), String::new())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// `--network NAME` or `--network name=NAME,alias=A[,alias=B]`.
/// `--publish`: `published=8080,target=80[,protocol=tcp|udp][,mode=ingress|host]`, or
/// the short form `8080:80[/udp]` (or `80[/udp]`: a port from 30000-32767).
pub fn parse_publish(s: &str) -> Result<shoal_proto::objects::PortConfig, String> {
    let mut p = shoal_proto::objects::PortConfig::default();
    let port = |v: &str| -> Result<u32, String> {
        v.parse::<u32>()
            .ok()
            .filter(|n| (1..=65535).contains(n))
            .ok_or_else(|| format!("--publish {s:?}: {v:?} is not a port (1-65535)"))
    };
    if s.contains('=') {
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("published", v)) => p.published = port(v)?,
                Some(("target", v)) => p.target = port(v)?,
                Some(("protocol", v @ ("tcp" | "udp"))) => p.protocol = v.to_string(),
                Some(("mode", v @ ("ingress" | "host"))) => p.mode = v.to_string(),
                _ => {
                    return Err(format!(
                        "--publish {s:?}: {part:?} is not published=PORT, target=PORT, protocol=tcp|udp or mode=ingress|host"
                    ))
                }
            }
        }
    } else {
        let (ports, proto) = match s.split_once('/') {
            Some((ports, proto @ ("tcp" | "udp"))) => (ports, proto),
            Some((_, other)) => {
                return Err(format!(
                    "--publish {s:?}: protocol {other:?} is not tcp or udp"
                ))
            }
            None => (s, "tcp"),
        };
        p.protocol = proto.to_string();
        match ports.split_once(':') {
            Some((published, target)) => {
                p.published = port(published)?;
                p.target = port(target)?;
            }
            None => p.target = port(ports)?,
        }
    }
    if p.target == 0 {
        return Err(format!(
            "--publish {s:?}: target=PORT (the port in the tasks) is missing"
        ));
    }
    if p.protocol.is_empty() {
        p.protocol = "tcp".into();
    }
    if p.mode.is_empty() {
        p.mode = "ingress".into();
    }
    Ok(p)
}

/// Published ports as swarm mode's `service inspect` shows them.
fn ports_json(ports: &[shoal_proto::objects::PortConfig]) -> serde_json::Value {
    ports
        .iter()
        .map(|p| {
            json!({
                "Protocol": if p.protocol.is_empty() { "tcp" } else { p.protocol.as_str() },
                "TargetPort": p.target,
                "PublishedPort": p.published,
                "PublishMode": if p.mode.is_empty() { "ingress" } else { p.mode.as_str() },
            })
        })
        .collect()
}

/// `--secret NAME` or `--secret source=NAME,target=T,uid=N,gid=N,mode=0400` (and the
/// same for `--config`).
pub fn parse_reference(flag: &str, s: &str) -> Result<SecretReference, String> {
    let mut r = SecretReference::default();
    if !s.contains('=') {
        r.secret_name = s.trim().to_string();
    } else {
        for part in s.split(',') {
            let Some((k, v)) = part.split_once('=') else {
                return Err(format!("--{flag} {s:?}: {part:?} is not KEY=VALUE"));
            };
            let num = |v: &str| {
                v.parse::<u32>()
                    .map_err(|_| format!("--{flag} {s:?}: {k}={v} is not a number"))
            };
            match k {
                "source" | "src" => r.secret_name = v.to_string(),
                "target" => r.target = v.to_string(),
                "uid" => r.uid = num(v)?,
                "gid" => r.gid = num(v)?,
                "mode" => {
                    r.mode = Some(u32::from_str_radix(v, 8).map_err(|_| {
                        format!("--{flag} {s:?}: mode={v} is not an octal file mode such as 0400")
                    })?)
                }
                _ => {
                    return Err(format!(
                        "--{flag} {s:?}: unknown option {k:?} (source, target, uid, gid, mode)"
                    ))
                }
            }
        }
    }
    if r.secret_name.is_empty() {
        return Err(format!(
            "--{flag} {s:?}: the {flag}'s name (source=) is missing"
        ));
    }
    Ok(r)
}

fn parse_secret(s: &str) -> Result<SecretReference, String> {
    parse_reference("secret", s)
}

fn parse_config(s: &str) -> Result<SecretReference, String> {
    parse_reference("config", s)
}

/// Secret or config references as `inspect` shows them (swarm's `Secrets`/`Configs`).
pub fn references_json(refs: &[SecretReference]) -> serde_json::Value {
    serde_json::Value::Array(
        refs.iter()
            .map(|r| {
                serde_json::json!({
                    "SecretID": r.secret_id, "SecretName": r.secret_name, "Version": r.version,
                    "File": {"Name": r.target, "UID": r.uid.to_string(), "GID": r.gid.to_string(),
                             "Mode": r.mode.unwrap_or(0o444)},
                })
            })
            .collect(),
    )
}

/// Applies `--secret-rm/--secret-add` (or the config flags) to a spec's references:
/// a removed name must be there (all its references go); an added one replaces a
/// reference to the same file and gets the newest version.
fn change_references(
    flag: &str,
    refs: &mut Vec<SecretReference>,
    rm: &[String],
    add: &[SecretReference],
) -> Result<()> {
    for r in rm {
        let before = refs.len();
        refs.retain(|x| x.secret_name != *r && x.secret_id != *r);
        if refs.len() == before {
            bail!("--{flag}-rm {r}: the service does not use {flag} {r}");
        }
    }
    // The file a reference makes: its target, or the name when it gives none.
    let file = |r: &SecretReference| {
        if r.target.is_empty() {
            r.secret_name.clone()
        } else {
            r.target.clone()
        }
    };
    for a in add {
        refs.retain(|x| file(x) != file(a));
        refs.push(a.clone());
    }
    Ok(())
}

fn spread(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some(("spread", v)) if !v.is_empty() => Ok(v.to_string()),
        _ => Err(format!(
            "placement preference {s:?}: use spread=node.labels.<key>"
        )),
    }
}

/// Flags shared by `service create` and `service update`.
#[derive(Args, Clone, Default)]
pub struct SpecFlags {
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// How the service's name resolves on its networks: vip (a virtual IP that spreads
    /// connections over its tasks, the default) or dnsrr (its tasks' addresses).
    #[arg(long = "endpoint-mode")]
    endpoint_mode: Option<String>,
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    #[arg(short = 'u', long)]
    user: Option<String>,
    #[arg(long)]
    hostname: Option<String>,
    /// Service label KEY=VALUE.
    #[arg(short = 'l', long = "label", value_parser = kv)]
    labels: Vec<(String, String)>,
    /// Placement constraint, e.g. node.labels.zone==a (repeatable, all must hold).
    #[arg(long = "constraint")]
    constraints: Vec<String>,
    /// spread=node.labels.KEY (repeatable, nested in order).
    #[arg(long = "placement-pref", value_parser = spread)]
    prefs: Vec<String>,
    #[arg(long)]
    replicas_max_per_node: Option<u64>,
    #[arg(long, value_parser = parse_cpus)]
    reserve_cpu: Option<i64>,
    #[arg(long, value_parser = parse_bytes)]
    reserve_memory: Option<i64>,
    #[arg(long, value_parser = parse_cpus)]
    limit_cpu: Option<i64>,
    #[arg(long, value_parser = parse_bytes)]
    limit_memory: Option<i64>,
    #[arg(long)]
    limit_pids: Option<i64>,
    #[arg(long = "mount", value_parser = parse_mount)]
    mounts: Vec<Mount>,
    #[arg(long)]
    read_only: bool,
    #[arg(long, value_parser = crate::parse_duration_pub)]
    stop_grace_period: Option<Duration>,
    /// Replace the image's entrypoint.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Add a Linux capability: NET_ADMIN, CAP_NET_ADMIN or ALL (repeatable).
    #[arg(long = "cap-add", value_parser = parse_cap)]
    cap_add: Vec<String>,
    /// Drop a Linux capability: KILL, CAP_KILL or ALL (repeatable).
    #[arg(long = "cap-drop", value_parser = parse_cap)]
    cap_drop: Vec<String>,
    /// Run the workload itself as PID 1, without the init (tini) that forwards
    /// signals and reaps zombies.
    #[arg(long)]
    no_init: bool,
    /// Give the tasks no workload identity (by default each gets an X.509-SVID in
    /// /run/secrets/shoal).
    #[arg(long)]
    no_identity: bool,
    #[command(flatten)]
    policy: crate::cli::policy::UpdateFlags,
    /// Return at once instead of waiting for the service to converge.
    #[arg(short = 'd', long)]
    detach: bool,
}

#[derive(Args)]
pub struct CreateArgs {
    #[arg(long)]
    name: Option<String>,
    #[arg(long, allow_hyphen_values = true, value_parser = parse_replicas)]
    replicas: Option<u64>,
    /// replicated, global, replicated-job or global-job.
    #[arg(long, default_value = "replicated")]
    mode: String,
    /// Attach the tasks to a network: NAME or name=NAME,alias=ALIAS (repeatable).
    /// `host` keeps them in their node's network; without it each task gets a
    /// namespace of its own on its node's bridge.
    #[arg(long = "network", value_parser = parse_network)]
    networks: Vec<NetworkAttachmentConfig>,
    /// Publish a port on the nodes: published=8080,target=80[,protocol=tcp|udp]
    /// [,mode=ingress|host], or 8080:80[/udp] (repeatable).
    #[arg(short = 'p', long = "publish", value_parser = parse_publish)]
    publish: Vec<shoal_proto::objects::PortConfig>,
    /// Give the tasks a secret, as a file on a tmpfs at /run/secrets/TARGET: NAME or
    /// source=NAME,target=T,uid=N,gid=N,mode=0400 (repeatable).
    #[arg(long = "secret", value_parser = parse_secret)]
    secrets: Vec<SecretReference>,
    /// Give the tasks a config as a file at its target (default /NAME): NAME or
    /// source=NAME,target=/PATH,uid=N,gid=N,mode=0444 (repeatable).
    #[arg(long = "config", value_parser = parse_config)]
    configs: Vec<SecretReference>,
    #[command(flatten)]
    flags: SpecFlags,
    #[command(flatten)]
    process: ProcessFlags,
    image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(Args)]
pub struct UpdateArgs {
    #[arg(long)]
    image: Option<String>,
    #[arg(long, allow_hyphen_values = true, value_parser = parse_replicas)]
    replicas: Option<u64>,
    /// Replace the tasks even if nothing changed.
    #[arg(long)]
    force: bool,
    /// Run an init (tini) as PID 1 again (undoes --no-init).
    #[arg(long, conflicts_with = "no_init")]
    init: bool,
    /// Give the tasks a workload identity again (undoes --no-identity).
    #[arg(long, conflicts_with = "no_identity")]
    identity: bool,
    /// Go back to the previous spec (like `service rollback`).
    #[arg(long)]
    rollback: bool,
    #[arg(long = "env-add")]
    env_add: Vec<String>,
    #[arg(long = "env-rm")]
    env_rm: Vec<String>,
    #[arg(long = "constraint-add")]
    constraint_add: Vec<String>,
    #[arg(long = "constraint-rm")]
    constraint_rm: Vec<String>,
    /// Attach the tasks to another network (NAME or name=NAME,alias=ALIAS).
    #[arg(long = "network-add", value_parser = parse_network)]
    network_add: Vec<NetworkAttachmentConfig>,
    /// Detach the tasks from a network.
    #[arg(long = "network-rm")]
    network_rm: Vec<String>,
    /// Publish another port (as --publish).
    #[arg(long = "publish-add", value_parser = parse_publish)]
    publish_add: Vec<shoal_proto::objects::PortConfig>,
    /// Stop publishing a port: PUBLISHED[/udp].
    #[arg(long = "publish-rm")]
    publish_rm: Vec<String>,
    /// Give the tasks another secret (as --secret on create).
    #[arg(long = "secret-add", value_parser = parse_secret)]
    secret_add: Vec<SecretReference>,
    /// Take a secret away from the tasks: NAME.
    #[arg(long = "secret-rm")]
    secret_rm: Vec<String>,
    /// Give the tasks another config (as --config on create).
    #[arg(long = "config-add", value_parser = parse_config)]
    config_add: Vec<SecretReference>,
    /// Take a config away from the tasks: NAME.
    #[arg(long = "config-rm")]
    config_rm: Vec<String>,
    #[arg(long = "label-add", value_parser = kv)]
    label_add: Vec<(String, String)>,
    #[arg(long = "label-rm")]
    label_rm: Vec<String>,
    #[arg(long = "placement-pref-add", value_parser = spread)]
    pref_add: Vec<String>,
    #[arg(long = "placement-pref-rm", value_parser = spread)]
    pref_rm: Vec<String>,
    /// New command arguments (replace the image's command).
    #[arg(long, num_args = 1.., allow_hyphen_values = true)]
    args: Option<Vec<String>>,
    #[command(flatten)]
    flags: SpecFlags,
    #[command(flatten)]
    process: ProcessUpdateFlags,
    service: String,
}

/// Applies the shared flags to a spec (for update, only what was given).
fn apply(spec: &mut ServiceSpec, f: &SpecFlags) {
    if let Some(m) = &f.endpoint_mode {
        spec.endpoint_mode = m.clone();
    }
    let c = spec.container.get_or_insert_with(ContainerSpec::default);
    for e in &f.env {
        let key = e.split('=').next().unwrap_or("");
        c.env.retain(|x| x.split('=').next() != Some(key));
        c.env.push(e.clone());
    }
    if let Some(w) = &f.workdir {
        c.workdir = w.clone();
    }
    if let Some(u) = &f.user {
        c.user = u.clone();
    }
    if let Some(h) = &f.hostname {
        c.hostname = h.clone();
    }
    if let Some(e) = &f.entrypoint {
        c.command = vec![e.clone()];
    }
    if f.read_only {
        c.readonly_rootfs = true;
    }
    if f.no_init {
        c.no_init = true;
    }
    if f.no_identity {
        c.no_identity = true;
    }
    c.mounts.extend(f.mounts.iter().cloned());
    apply_caps(c, &f.cap_add, &f.cap_drop);
    if let Some(g) = f.stop_grace_period {
        c.stop_grace_period_ms = g.as_millis() as u64;
    }
    let limits = c.limits.get_or_insert_with(Resources::default);
    if let Some(v) = f.limit_cpu {
        limits.nano_cpus = v;
    }
    if let Some(v) = f.limit_memory {
        limits.memory_bytes = v;
    }
    if let Some(v) = f.limit_pids {
        limits.pids = v;
    }
    let r = spec.reservations.get_or_insert_with(Resources::default);
    if let Some(v) = f.reserve_cpu {
        r.nano_cpus = v;
    }
    if let Some(v) = f.reserve_memory {
        r.memory_bytes = v;
    }
    for (k, v) in &f.labels {
        spec.labels.insert(k.clone(), v.clone());
    }
    let p = spec.placement.get_or_insert_with(Placement::default);
    p.constraints.extend(f.constraints.iter().cloned());
    p.spread.extend(f.prefs.iter().cloned());
    if let Some(m) = f.replicas_max_per_node {
        p.max_replicas_per_node = m;
    }
    f.policy.apply(spec);
}

fn mode_name(spec: &ServiceSpec) -> &'static str {
    match ServiceMode::try_from(spec.mode) {
        Ok(ServiceMode::Global) => "global",
        Ok(ServiceMode::ReplicatedJob) => "replicated-job",
        Ok(ServiceMode::GlobalJob) => "global-job",
        _ => "replicated",
    }
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Client {
    pub(crate) async fn service_tasks(
        &self,
        service: &Service,
    ) -> Result<(Vec<Task>, HashMap<String, String>)> {
        let r = self
            .control()
            .list_tasks(ListTasksRequest {
                node: String::new(),
                service_id: service.id.clone(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        let tasks = r
            .tasks
            .into_iter()
            .filter(|t| t.service_id == service.id)
            .collect();
        Ok((tasks, r.node_names))
    }

    /// The last lines a task wrote, if its node still has them (best effort).
    async fn task_tail(&self, task_id: &str, n: u64) -> Vec<String> {
        let call = async {
            let resp = self
                .control()
                .task_logs(TaskLogsRequest {
                    reference: task_id.to_string(),
                    follow: false,
                    tail: n,
                })
                .await
                .ok()?;
            let mut stream = resp.into_inner();
            let mut lines = Vec::new();
            while let Some(Ok(msg)) = stream.next().await {
                lines.extend(
                    msg.lines
                        .iter()
                        .map(|l| String::from_utf8_lossy(&l.data).into_owned()),
                );
            }
            Some(lines)
        };
        tokio::time::timeout(Duration::from_secs(3), call)
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// An error naming a task's failure, with the last lines of its output.
    async fn task_failure(&self, what: String, t: Option<&Task>) -> anyhow::Error {
        let Some(t) = t else {
            return anyhow::anyhow!(what);
        };
        let tail = self.task_tail(&t.id, 5).await;
        if tail.is_empty() {
            return anyhow::anyhow!(what);
        }
        let out: Vec<String> = tail.iter().map(|l| format!("  | {l}")).collect();
        anyhow::anyhow!(
            "{what}\nlast output of task {}:\n{}",
            t.name,
            out.join("\n")
        )
    }

    /// Waits until the service has settled: every task of its current spec RUNNING
    /// (and healthy) for the monitor period, none of an old spec left, and its update
    /// (or `rollback`) done; for a job, until every completion is in. Shows progress.
    /// Fails with the reason (and the failed task's last output) if it cannot.
    pub(crate) async fn converge(&self, id: &str, rollback: bool) -> Result<()> {
        use shoal_manager::orchestrator::{is_current, is_job, update};
        use shoal_proto::objects::UpdateState;
        let tty = std::io::stdout().is_terminal();
        let mut last = String::new();
        let mut last_change = Instant::now();
        let mut stuck_since: Option<Instant> = None;
        let mut updating_seen = false;
        let finish_line = |tty: bool| {
            if tty {
                println!();
            }
        };
        loop {
            let svc = self
                .control()
                .get_service(GetServiceRequest {
                    reference: id.to_string(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let status = self
                .control()
                .list_services(ListServicesRequest {})
                .await
                .map_err(status_err)?
                .into_inner()
                .status
                .remove(&svc.id)
                .unwrap_or_default();
            let (mut tasks, _) = self.service_tasks(&svc).await?;
            let spec = svc.spec.clone().unwrap_or_default();
            let name = spec.name.clone();
            // Like Docker's CLI: tasks on nodes that are down (or, for old versions, paused)
            // cannot move, so they do not hold convergence up.
            let nodes = self
                .control()
                .list_nodes(shoal_proto::control::ListNodesRequest {})
                .await
                .map_err(status_err)?
                .into_inner()
                .nodes;
            let node_state = |id: &str| {
                nodes
                    .iter()
                    .filter_map(|v| v.node.as_ref())
                    .find(|n| n.id == id)
                    .map(|n| (n.state, n.availability))
            };
            tasks.retain(|t| {
                t.node_id.is_empty()
                    || node_state(&t.node_id)
                        .is_some_and(|(st, _)| st != shoal_proto::objects::NodeState::Down as i32)
            });
            let on_paused = |t: &Task| {
                node_state(&t.node_id)
                    .is_some_and(|(_, av)| av == shoal_proto::objects::Availability::Pause as i32)
            };
            let state_of = |t: &Task| t.status.as_ref().map(|s| s.state).unwrap_or(0);
            let live = |t: &&Task| t.desired_state <= TaskState::Running as i32;
            let current: Vec<&Task> = tasks
                .iter()
                .filter(live)
                .filter(|t| is_current(&svc, t) || on_paused(t))
                .collect();
            let failed = current.iter().copied().find(|t| {
                let st = state_of(t);
                st == TaskState::Failed as i32 || st == TaskState::Rejected as i32
            });
            let ust = svc.update_status.clone().unwrap_or_default();
            let ustate = UpdateState::try_from(ust.state).unwrap_or(UpdateState::None);

            if is_job(&spec) {
                let running = current
                    .iter()
                    .filter(|t| state_of(t) == TaskState::Running as i32)
                    .count();
                let line = format!(
                    "{name}: {}/{} completed ({running} running)",
                    status.completed, status.completions
                );
                self.progress(&mut last, &line, tty, &mut last_change);
                if status.completed >= status.completions {
                    finish_line(tty);
                    println!("{name}: job complete");
                    return Ok(());
                }
                if let Some(t) = failed {
                    let now = chrono_now_ms();
                    let never = shoal_manager::orchestrator::restart::decide(&spec, t, now)
                        == shoal_manager::orchestrator::restart::Restart::Never;
                    if never {
                        finish_line(tty);
                        let err = t.status.as_ref().map(|s| s.err.clone()).unwrap_or_default();
                        return Err(self
                            .task_failure(
                                format!("job {name} cannot complete: task {} failed and will not be retried: {err}", t.name),
                                Some(t),
                            )
                            .await);
                    }
                }
            } else {
                let settings = update::Settings::of(if update::is_rollback(ustate) {
                    spec.rollback.as_ref()
                } else {
                    spec.update.as_ref()
                });
                let now = chrono_now_ms();
                let settled = current
                    .iter()
                    .filter(|t| {
                        on_paused(t)
                            || update::stable_at(t, settings.monitor_ms).is_some_and(|at| at <= now)
                    })
                    .count() as u64;
                let stale = tasks.iter().filter(live).any(|t| {
                    !is_current(&svc, t)
                        && !on_paused(t)
                        && state_of(t) < TaskState::Complete as i32
                });
                let updating =
                    matches!(ustate, UpdateState::Updating | UpdateState::RollbackStarted);
                let mut states: std::collections::BTreeMap<String, usize> = Default::default();
                for t in &current {
                    let mut label = state_label(state_of(t)).to_lowercase();
                    if let Some(h) = health_label(t) {
                        label = format!("{label} ({h})");
                    }
                    *states.entry(label).or_default() += 1;
                }
                let states: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
                updating_seen |= updating;
                let verb = if updating_seen { "updated" } else { "running" };
                let line = format!(
                    "{name}: {settled}/{} {verb}{}",
                    status.desired,
                    if states.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", states.join(", "))
                    }
                );
                self.progress(&mut last, &line, tty, &mut last_change);
                match ustate {
                    UpdateState::Paused | UpdateState::RollbackPaused => {
                        finish_line(tty);
                        let t = tasks
                            .iter()
                            .find(|t| ust.failed_tasks.last() == Some(&t.id));
                        return Err(self
                            .task_failure(format!("service {name}: {}", ust.message), t)
                            .await);
                    }
                    UpdateState::RollbackCompleted | UpdateState::RollbackStarted if !rollback => {
                        finish_line(tty);
                        let t = tasks
                            .iter()
                            .find(|t| ust.failed_tasks.last() == Some(&t.id));
                        return Err(self
                            .task_failure(format!("service {name}: {}", ust.message), t)
                            .await);
                    }
                    _ => {}
                }
                if !updating
                    && !stale
                    && settled == status.desired
                    && current.len() as u64 == status.desired
                {
                    finish_line(tty);
                    println!("{name}: converged");
                    return Ok(());
                }
                // Outside an update (which pauses or rolls back by itself), a task that
                // fails means the service cannot settle.
                if let (Some(t), false) = (failed, updating) {
                    finish_line(tty);
                    let err = t.status.as_ref().map(|s| s.err.clone()).unwrap_or_default();
                    return Err(self
                        .task_failure(
                            format!(
                                "service {name} cannot converge: task {} {}: {err}",
                                t.name,
                                state_label(state_of(t)).to_lowercase()
                            ),
                            Some(t),
                        )
                        .await);
                }
            }
            let unplaced = current.iter().find(|t| {
                t.node_id.is_empty() && t.status.as_ref().is_some_and(|s| !s.err.is_empty())
            });
            match (unplaced, stuck_since) {
                (Some(_), None) => stuck_since = Some(Instant::now()),
                (Some(t), Some(since)) if since.elapsed() > Duration::from_secs(2) => {
                    finish_line(tty);
                    let err = t.status.as_ref().map(|s| s.err.clone()).unwrap_or_default();
                    bail!(
                        "service {name} cannot converge: task {} is pending: {err}",
                        t.name
                    );
                }
                (None, _) => stuck_since = None,
                _ => {}
            }
            if last_change.elapsed() > Duration::from_secs(300) {
                finish_line(tty);
                bail!("service {name}: no progress for 5 minutes ({last})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Shows a progress line when it changes.
    fn progress(&self, last: &mut String, line: &str, tty: bool, changed: &mut Instant) {
        if line == last {
            return;
        }
        if tty {
            print!("\r\x1b[K{line}");
        } else {
            println!("{line}");
        }
        let _ = std::io::stdout().flush();
        *last = line.to_string();
        *changed = Instant::now();
    }

    pub async fn service_rollback(&self, service: &str, detach: bool) -> Result<()> {
        let s = self
            .control()
            .update_service(UpdateServiceRequest {
                reference: service.to_string(),
                rollback: true,
                ..Default::default()
            })
            .await
            .map_err(status_err)?
            .into_inner();
        println!("{}", s.spec.as_ref().map(|x| x.name.as_str()).unwrap_or(""));
        if detach {
            return Ok(());
        }
        self.converge(&s.id, true).await
    }

    pub async fn service_restart(&self, service: &str, detach: bool) -> Result<()> {
        let cur = self
            .control()
            .get_service(GetServiceRequest {
                reference: service.to_string(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        let s = self
            .control()
            .update_service(UpdateServiceRequest {
                reference: cur.id.clone(),
                spec: cur.spec.clone(),
                spec_version: cur.spec_version,
                force: true,
                rollback: false,
            })
            .await
            .map_err(status_err)?
            .into_inner();
        println!("{}", s.spec.as_ref().map(|x| x.name.as_str()).unwrap_or(""));
        if detach {
            return Ok(());
        }
        self.converge(&s.id, false).await
    }

    pub async fn service_create(&self, a: CreateArgs) -> Result<()> {
        let mode = match a.mode.as_str() {
            "replicated" => ServiceMode::Replicated,
            "global" => ServiceMode::Global,
            "replicated-job" => ServiceMode::ReplicatedJob,
            "global-job" => ServiceMode::GlobalJob,
            m => bail!("--mode {m:?}: use replicated, global, replicated-job or global-job"),
        };
        if matches!(mode, ServiceMode::Global | ServiceMode::GlobalJob) && a.replicas.is_some() {
            bail!("--replicas cannot be used with --mode {}", a.mode);
        }
        let mut spec = ServiceSpec {
            name: a.name.unwrap_or_default(),
            mode: mode as i32,
            replicas: a.replicas.unwrap_or(1),
            container: Some(ContainerSpec {
                image: a.image,
                args: a.args,
                networks: a.networks,
                secrets: a.secrets,
                configs: a.configs,
                ..Default::default()
            }),
            ports: a.publish,
            ..Default::default()
        };
        if spec.name.is_empty() {
            // Like swarm: a random name when none is given.
            spec.name = format!("svc-{}", &shoal_pki::random_id()[..8]);
        }
        apply(&mut spec, &a.flags);
        a.process
            .apply(spec.container.get_or_insert_with(ContainerSpec::default))
            .map_err(anyhow::Error::msg)?;
        let s = self
            .control()
            .create_service(CreateServiceRequest { spec: Some(spec) })
            .await
            .map_err(status_err)?
            .into_inner();
        println!("{}", s.id);
        if a.flags.detach {
            return Ok(());
        }
        self.converge(&s.id, false).await
    }

    pub async fn service_update(&self, a: UpdateArgs) -> Result<()> {
        if a.rollback {
            return self.service_rollback(&a.service, a.flags.detach).await;
        }
        let cur = self
            .control()
            .get_service(GetServiceRequest {
                reference: a.service.clone(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        let mut spec = cur.spec.clone().unwrap_or_default();
        {
            let c = spec.container.get_or_insert_with(ContainerSpec::default);
            if let Some(i) = &a.image {
                c.image = i.clone();
            }
            if let Some(args) = &a.args {
                c.args = args.clone();
            }
            if a.init {
                c.no_init = false;
            }
            if a.identity {
                c.no_identity = false;
            }
            for k in &a.env_rm {
                c.env.retain(|e| e.split('=').next() != Some(k.as_str()));
            }
            change_references("secret", &mut c.secrets, &a.secret_rm, &a.secret_add)?;
            change_references("config", &mut c.configs, &a.config_rm, &a.config_add)?;
        }
        {
            // Specs name networks by ID: resolve what the flags name.
            let mut rm = Vec::new();
            for r in &a.network_rm {
                rm.push(self.network_id(r).await?);
            }
            let mut add = Vec::new();
            for n in &a.network_add {
                let mut n = n.clone();
                n.target = self.network_id(&n.target).await?;
                add.push(n);
            }
            let c = spec.container.get_or_insert_with(ContainerSpec::default);
            let before = c.networks.len();
            c.networks.retain(|n| !rm.contains(&n.target));
            if before - c.networks.len() < rm.len() {
                bail!("--network-rm: the service is not on every network named");
            }
            for n in add {
                c.networks.retain(|x| x.target != n.target);
                c.networks.push(n);
            }
        }
        for r in &a.publish_rm {
            let (port, proto) = r.split_once('/').unwrap_or((r.as_str(), "tcp"));
            let before = spec.ports.len();
            spec.ports.retain(|p| {
                let pp = if p.protocol.is_empty() {
                    "tcp"
                } else {
                    p.protocol.as_str()
                };
                !(p.published.to_string() == port && pp == proto)
            });
            if spec.ports.len() == before {
                bail!("--publish-rm {r}: the service does not publish port {port}/{proto}");
            }
        }
        for p in &a.publish_add {
            spec.ports.retain(|x| {
                !(x.published == p.published && p.published != 0 && x.protocol == p.protocol)
            });
            spec.ports.push(p.clone());
        }
        let mut flags = a.flags.clone();
        flags.env.extend(a.env_add.iter().cloned());
        flags.constraints.extend(a.constraint_add.iter().cloned());
        flags.labels.extend(a.label_add.iter().cloned());
        flags.prefs.extend(a.pref_add.iter().cloned());
        {
            let p = spec.placement.get_or_insert_with(Placement::default);
            let norm = |s: &str| s.split_whitespace().collect::<String>();
            p.constraints
                .retain(|c| !a.constraint_rm.iter().any(|r| norm(r) == norm(c)));
            p.spread.retain(|s| !a.pref_rm.contains(s));
            for k in &a.label_rm {
                spec.labels.remove(k);
            }
        }
        apply(&mut spec, &flags);
        a.process
            .apply(spec.container.get_or_insert_with(ContainerSpec::default))
            .map_err(anyhow::Error::msg)?;
        if let Some(r) = a.replicas {
            if spec.mode == ServiceMode::Global as i32 || spec.mode == ServiceMode::GlobalJob as i32
            {
                bail!("--replicas cannot be used with a global service");
            }
            spec.replicas = r;
        }
        let s = self
            .control()
            .update_service(UpdateServiceRequest {
                reference: cur.id.clone(),
                spec: Some(spec),
                spec_version: cur.spec_version,
                force: a.force,
                rollback: false,
            })
            .await
            .map_err(status_err)?
            .into_inner();
        println!("{}", s.spec.as_ref().map(|x| x.name.as_str()).unwrap_or(""));
        if a.flags.detach {
            return Ok(());
        }
        self.converge(&s.id, false).await
    }

    pub async fn service_scale(&self, pairs: &[String], detach: bool) -> Result<()> {
        let mut ids = Vec::new();
        for p in pairs {
            let Some((name, n)) = p.split_once('=') else {
                bail!("{p:?}: use SERVICE=REPLICAS");
            };
            let Ok(n) = n.parse::<u64>() else {
                bail!("{p:?}: the replica count must be a number");
            };
            let cur = self
                .control()
                .get_service(GetServiceRequest {
                    reference: name.to_string(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let mut spec = cur.spec.clone().unwrap_or_default();
            if spec.mode != ServiceMode::Replicated as i32
                && spec.mode != ServiceMode::ReplicatedJob as i32
            {
                bail!("{name}: scale can only be used with replicated services");
            }
            spec.replicas = n;
            self.control()
                .update_service(UpdateServiceRequest {
                    reference: cur.id.clone(),
                    spec: Some(spec),
                    spec_version: cur.spec_version,
                    force: false,
                    rollback: false,
                })
                .await
                .map_err(status_err)?;
            println!("{name} scaled to {n}");
            ids.push(cur.id);
        }
        if !detach {
            for id in ids {
                self.converge(&id, false).await?;
            }
        }
        Ok(())
    }

    pub async fn service_ls(&self, quiet: bool) -> Result<()> {
        let r = self
            .control()
            .list_services(ListServicesRequest {})
            .await
            .map_err(status_err)?
            .into_inner();
        print_services(&r.services, &r.status, quiet);
        Ok(())
    }

    pub async fn service_ps(
        &self,
        service: &str,
        filters: &[String],
        no_trunc: bool,
        quiet: bool,
        format: Option<&str>,
    ) -> Result<()> {
        let svc = self
            .control()
            .get_service(GetServiceRequest {
                reference: service.to_string(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        let (mut tasks, names) = self.service_tasks(&svc).await?;
        for f in filters {
            match f.split_once('=') {
                Some(("desired-state", v)) => {
                    let want = v.to_lowercase();
                    tasks.retain(|t| state_label(t.desired_state).to_lowercase() == want);
                }
                Some(("node", v)) => tasks.retain(|t| {
                    names.get(&t.node_id).map(String::as_str) == Some(v) || t.node_id.starts_with(v)
                }),
                _ => bail!(
                    "unknown filter {f:?}: use desired-state=running|shutdown|... or node=NODE"
                ),
            }
        }
        tasks.sort_by(|a, b| {
            (a.slot, &a.node_id, std::cmp::Reverse(a.created_at_unix)).cmp(&(
                b.slot,
                &b.node_id,
                std::cmp::Reverse(b.created_at_unix),
            ))
        });
        print_tasks(&tasks, &names, no_trunc, quiet, format)
    }

    pub async fn service_inspect(&self, refs: &[String], pretty: bool) -> Result<()> {
        let mut out = Vec::new();
        for r in refs {
            let s = self
                .control()
                .get_service(GetServiceRequest {
                    reference: r.clone(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let spec = s.spec.clone().unwrap_or_default();
            let c = spec.container.clone().unwrap_or_default();
            let p = spec.placement.clone().unwrap_or_default();
            let res = spec.reservations.unwrap_or_default();
            let lim = c.limits.unwrap_or_default();
            if pretty {
                println!(
                    "ID:\t\t{}\nName:\t\t{}\nService Mode:\t{}",
                    s.id,
                    spec.name,
                    mode_name(&spec)
                );
                if spec.mode == ServiceMode::Replicated as i32 {
                    println!(" Replicas:\t{}", spec.replicas);
                }
                if spec.mode == ServiceMode::ReplicatedJob as i32 {
                    println!(" Total completions:\t{}", spec.replicas);
                    if spec.max_concurrent > 0 {
                        println!(" Max concurrent:\t{}", spec.max_concurrent);
                    }
                }
                println!("Placement:");
                for con in &p.constraints {
                    println!(" Constraint:\t{con}");
                }
                for pr in &p.spread {
                    println!(" Preference:\tspread={pr}");
                }
                if p.max_replicas_per_node > 0 {
                    println!(" Max Replicas Per Node:\t{}", p.max_replicas_per_node);
                }
                println!("ContainerSpec:\n Image:\t\t{}", c.image);
                if !c.args.is_empty() {
                    println!(" Args:\t\t{}", c.args.join(" "));
                }
                if !c.env.is_empty() {
                    println!(" Env:\t\t{}", c.env.join(" "));
                }
                println!(" Init:\t\t{}", !c.no_init);
                println!(" Identity:\t{}", !c.no_identity);
                crate::cli::table::print_process(&c);
                print_security(&c);
                match c.networks.as_slice() {
                    [] => println!("Networks:\tbridge (a namespace per task on its node's bridge)"),
                    nets => {
                        let known = self.network_names().await;
                        let names: Vec<String> = nets
                            .iter()
                            .map(|n| {
                                let name = known.get(&n.target).unwrap_or(&n.target);
                                match n.aliases.as_slice() {
                                    [] => name.clone(),
                                    a => format!("{name} (aliases: {})", a.join(", ")),
                                }
                            })
                            .collect();
                        println!("Networks:\t{}", names.join(", "));
                    }
                }
                crate::cli::policy::print_pretty(&spec, s.update_status.as_ref());
                println!(
                    "Resources:\n Reservations:\tCPU {} Memory {}\n Limits:\tCPU {} Memory {}",
                    res.nano_cpus as f64 / 1e9,
                    res.memory_bytes,
                    lim.nano_cpus as f64 / 1e9,
                    lim.memory_bytes
                );
                println!();
                continue;
            }
            let [update, rollback, restart, health, update_status] =
                crate::cli::policy::inspect_json(&spec, s.update_status.as_ref());
            let mode = match ServiceMode::try_from(spec.mode) {
                Ok(ServiceMode::Global) => json!({"Global": {}}),
                Ok(ServiceMode::GlobalJob) => json!({"GlobalJob": {}}),
                Ok(ServiceMode::ReplicatedJob) => json!({"ReplicatedJob": {
                    "MaxConcurrent": if spec.max_concurrent == 0 { spec.replicas } else { spec.max_concurrent },
                    "TotalCompletions": spec.replicas}}),
                _ => json!({"Replicated": {"Replicas": spec.replicas}}),
            };
            let mut job_status = serde_json::Value::Null;
            if shoal_manager::orchestrator::is_job(&spec) {
                job_status = json!({"JobIteration": {"Index": s.job_iteration}});
            }
            let mut container = json!({"Image": c.image, "Command": c.command, "Args": c.args, "Env": c.env, "Dir": c.workdir, "User": c.user, "Hostname": c.hostname, "ReadOnly": c.readonly_rootfs, "Init": !c.no_init, "Identity": !c.no_identity,
                "CapabilityAdd": c.cap_add, "CapabilityDrop": c.cap_drop, "Healthcheck": health,
                "Secrets": references_json(&c.secrets), "Configs": references_json(&c.configs)});
            crate::cli::table::add_process_json(&mut container, &c);
            out.push(json!({
                "ID": s.id, "Version": {"Index": s.spec_version},
                "UpdateStatus": update_status, "JobStatus": job_status,
                "CreatedAt": fmt_time(s.created_at_unix), "UpdatedAt": fmt_time(s.updated_at_unix),
                "Spec": {
                    "Name": spec.name, "Labels": spec.labels,
                    "Mode": mode,
                    "UpdateConfig": update, "RollbackConfig": rollback,
                    "TaskTemplate": {
                        "ContainerSpec": container,
                        "Networks": networks_json(&c),
                        "RestartPolicy": restart,
                        "Resources": {"Limits": {"NanoCPUs": lim.nano_cpus, "MemoryBytes": lim.memory_bytes, "Pids": lim.pids}, "Reservations": {"NanoCPUs": res.nano_cpus, "MemoryBytes": res.memory_bytes}},
                        "Placement": {"Constraints": p.constraints, "Preferences": p.spread.iter().map(|x| json!({"Spread": {"SpreadDescriptor": x}})).collect::<Vec<_>>(), "MaxReplicas": p.max_replicas_per_node},
                    },
                    "EndpointSpec": {"Mode": if spec.endpoint_mode.is_empty() { "vip" } else { spec.endpoint_mode.as_str() }, "Ports": ports_json(&spec.ports)},
                },
                "Endpoint": {
                    "Ports": ports_json(&spec.ports),
                    "VirtualIPs": s.virtual_ips.iter().map(|v| json!({"NetworkID": v.network_id, "Addr": v.address})).collect::<Vec<_>>(),
                },
                "Security": security_json(&c),
            }));
        }
        if !pretty {
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Ok(())
    }

    pub async fn service_rm(&self, refs: &[String]) -> Result<()> {
        for r in refs {
            self.control()
                .remove_service(RemoveServiceRequest {
                    reference: r.clone(),
                })
                .await
                .map_err(status_err)?;
            println!("{r}");
        }
        Ok(())
    }

    pub async fn service_logs(&self, service: &str, follow: bool, tail: u64) -> Result<()> {
        let svc = self
            .control()
            .get_service(GetServiceRequest {
                reference: service.to_string(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        let (tasks, names) = self.service_tasks(&svc).await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(bool, String)>(256);
        let mut handles = Vec::new();
        for t in tasks.into_iter().filter(|t| {
            !t.node_id.is_empty()
                && t.status.as_ref().map(|s| s.state).unwrap_or(0) >= TaskState::Running as i32
        }) {
            let prefix = format!(
                "{}.{}@{}",
                t.name,
                t.id.chars().take(12).collect::<String>(),
                names.get(&t.node_id).cloned().unwrap_or_default()
            );
            let mut control = self.control();
            let tx = tx.clone();
            handles.push(tokio::spawn(async move {
                let Ok(resp) = control
                    .task_logs(TaskLogsRequest {
                        reference: t.id.clone(),
                        follow,
                        tail,
                    })
                    .await
                else {
                    return;
                };
                let mut stream = resp.into_inner();
                while let Some(Ok(msg)) = stream.next().await {
                    for l in msg.lines {
                        let text = format!("{prefix}    | {}", String::from_utf8_lossy(&l.data));
                        if tx.send((l.stream == "stderr", text)).await.is_err() {
                            return;
                        }
                    }
                }
            }));
        }
        drop(tx);
        while let Some((err, line)) = rx.recv().await {
            if err {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        }
        for h in handles {
            let _ = h.await;
        }
        Ok(())
    }
}

pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    kv(s)
}

/// `--replicas N`: a whole number of tasks; "-1" and the like get a message of their own
/// instead of clap's "unexpected argument".
fn parse_replicas(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| format!("--replicas takes a whole number of tasks, 0 or more (got {s:?})"))
}

impl Client {
    /// `shoal service …`.
    pub async fn service(&self, cmd: crate::ServiceCmd) -> Result<()> {
        let c = self;
        match cmd {
            crate::ServiceCmd::Create(a) => c.service_create(*a).await,
            crate::ServiceCmd::Update(a) => c.service_update(*a).await,
            crate::ServiceCmd::Scale { pairs, detach } => c.service_scale(&pairs, detach).await,
            crate::ServiceCmd::Ls { quiet } => c.service_ls(quiet).await,
            crate::ServiceCmd::Ps {
                service,
                filters,
                no_trunc,
                quiet,
                format,
            } => {
                c.service_ps(&service, &filters, no_trunc, quiet, format.as_deref())
                    .await
            }
            crate::ServiceCmd::Inspect { pretty, services } => {
                c.service_inspect(&services, pretty).await
            }
            crate::ServiceCmd::Rm { services } => c.service_rm(&services).await,
            crate::ServiceCmd::Rollback { service, detach } => {
                c.service_rollback(&service, detach).await
            }
            crate::ServiceCmd::Restart { service, detach } => {
                c.service_restart(&service, detach).await
            }
            crate::ServiceCmd::Logs {
                service,
                follow,
                tail,
            } => c.service_logs(&service, follow, tail.unwrap_or(0)).await,
            crate::ServiceCmd::Exec(args) => {
                let code = c.service_exec(*args).await?;
                std::process::exit(code)
            }
        }
    }
}

/// Services as `service ls` shows them, by name: a table or IDs only.
pub(crate) fn print_services(
    services: &[Service],
    status: &HashMap<String, shoal_proto::control::ServiceStatus>,
    quiet: bool,
) {
    if quiet {
        for s in services {
            println!("{}", s.id);
        }
        return;
    }
    let mut rows = vec![["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]
        .map(String::from)
        .to_vec()];
    let mut services = services.to_vec();
    services.sort_by(|a, b| {
        a.spec
            .as_ref()
            .map(|s| &s.name)
            .cmp(&b.spec.as_ref().map(|s| &s.name))
    });
    for s in &services {
        let spec = s.spec.clone().unwrap_or_default();
        let st = status.get(&s.id).cloned().unwrap_or_default();
        rows.push(vec![
            s.id.chars().take(12).collect(),
            spec.name.clone(),
            mode_name(&spec).into(),
            if shoal_manager::orchestrator::is_job(&spec) {
                format!(
                    "{}/{} ({}/{} completed)",
                    st.running, st.desired, st.completed, st.completions
                )
            } else {
                format!("{}/{}", st.running, st.desired)
            },
            spec.container.map(|c| c.image).unwrap_or_default(),
            // As swarm mode shows them: *:8080->80/tcp.
            spec.ports
                .iter()
                .map(|p| {
                    let proto = if p.protocol.is_empty() {
                        "tcp"
                    } else {
                        &p.protocol
                    };
                    format!("*:{}->{}/{proto}", p.published, p.target)
                })
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    print_table(&rows);
}

/// Tasks as `service ps` shows them (sorted by the caller: a slot's tasks together,
/// newest first): a table, IDs only, or JSON lines.
pub(crate) fn print_tasks(
    tasks: &[Task],
    names: &HashMap<String, String>,
    no_trunc: bool,
    quiet: bool,
    format: Option<&str>,
) -> Result<()> {
    if quiet {
        for t in tasks {
            println!("{}", t.id);
        }
        return Ok(());
    }
    match format {
        None | Some("table") => {}
        Some("json") => {
            for t in tasks {
                let st = t.status.clone().unwrap_or_default();
                println!(
                    "{}",
                    json!({
                        "ID": t.id, "Name": t.name, "Node": names.get(&t.node_id).cloned().unwrap_or_default(),
                        "NodeID": t.node_id, "Slot": t.slot,
                        "DesiredState": state_label(t.desired_state), "CurrentState": state_label(st.state),
                        "Error": st.err, "SpecVersion": t.spec_version,
                        "Health": health_label(t).unwrap_or(""), "Image": t.spec.as_ref().map(|s| s.image.clone()).unwrap_or_default(),
                    })
                );
            }
            return Ok(());
        }
        Some(f) => bail!("unknown --format {f:?}: use table or json"),
    }
    let cut = |s: &str, n: usize| truncate(s, n, no_trunc);
    let mut rows = vec![task_table_header()];
    let mut prev_group: Option<(&str, u64, String)> = None;
    for t in tasks {
        let st = t.status.clone().unwrap_or_default();
        let group = (
            t.service_id.as_str(),
            t.slot,
            if t.slot == 0 {
                t.node_id.clone()
            } else {
                String::new()
            },
        );
        let name = if prev_group.as_ref() == Some(&group) {
            format!(" \\_ {}", t.name)
        } else {
            t.name.clone()
        };
        prev_group = Some(group);
        let err = if st.err.is_empty() {
            String::new()
        } else if no_trunc {
            format!("\"{}\"", st.err)
        } else {
            format!("\"{}\"", cut(&st.err, 40))
        };
        rows.push(vec![
            cut(&t.id, 12),
            name,
            t.spec.as_ref().map(|s| s.image.clone()).unwrap_or_default(),
            names.get(&t.node_id).cloned().unwrap_or_default(),
            state_label(t.desired_state),
            match health_label(t) {
                Some(h) => format!(
                    "{} {} ({h})",
                    state_label(st.state),
                    ago(st.timestamp_unix_ms)
                ),
                None => format!("{} {}", state_label(st.state), ago(st.timestamp_unix_ms)),
            },
            err,
        ]);
    }
    print_table(&rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_takes_the_long_and_the_short_form() {
        let p = parse_publish("published=8080,target=80,protocol=udp,mode=host").unwrap();
        assert_eq!(
            (p.published, p.target, p.protocol.as_str(), p.mode.as_str()),
            (8080, 80, "udp", "host")
        );
        let p = parse_publish("8080:80").unwrap();
        assert_eq!(
            (p.published, p.target, p.protocol.as_str(), p.mode.as_str()),
            (8080, 80, "tcp", "ingress")
        );
        let p = parse_publish("53:53/udp").unwrap();
        assert_eq!((p.published, p.protocol.as_str()), (53, "udp"));
        let p = parse_publish("80").unwrap();
        assert_eq!(
            (p.published, p.target),
            (0, 80),
            "a port from the dynamic range"
        );
        for bad in [
            "8080:0",
            "8080:80/sctp",
            "published=8080",
            "target=80,mode=local",
            "x:80",
            "70000:80",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
    }
}

//! CLI: images, registry credentials and one-off tasks.

use crate::cli::spec_flags::{parse_bytes, parse_cpus, parse_mount};
use crate::cli::table::{ago, state_name, task_table_header, truncate};
use crate::cli::{fmt_time, print_table, status_err, Client};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use shoal_proto::control::{
    CreateTaskRequest, GetTaskRequest, ListTasksRequest, RemoveTaskRequest, TaskLogsRequest,
};
use shoal_proto::local::{
    ImageImportRequest, ImageListRequest, ImageLoadRequest, ImagePullRequest, ImageRemoveRequest,
    RegistryLoginRequest, RegistryLogoutRequest,
};
use shoal_proto::objects::{ContainerSpec, Mount, Resources, Task, TaskState};
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use tokio_stream::StreamExt;

#[derive(Args)]
pub struct TaskRunArgs {
    /// Node to run on (ID, prefix or hostname); default: the least busy ready node.
    #[arg(long)]
    node: Option<String>,
    #[arg(long)]
    name: Option<String>,
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    #[arg(short = 'u', long)]
    user: Option<String>,
    #[arg(long)]
    hostname: Option<String>,
    /// Replace the image's entrypoint.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Memory limit (e.g. 64m).
    #[arg(long = "limit-memory", alias = "memory", value_parser = parse_bytes)]
    memory: Option<i64>,
    /// CPU limit (e.g. 0.5).
    #[arg(long = "limit-cpu", alias = "cpus", value_parser = parse_cpus)]
    cpus: Option<i64>,
    #[arg(long)]
    pids_limit: Option<i64>,
    #[arg(long)]
    read_only: bool,
    /// Run the workload itself as PID 1, without the init (tini) that forwards
    /// signals and reaps zombies.
    #[arg(long)]
    no_init: bool,
    /// Give the task no workload identity (by default it gets an X.509-SVID in
    /// /run/secrets/shoal, named by the task).
    #[arg(long)]
    no_identity: bool,
    /// type=bind|tmpfs|volume,source=..,target=..[,readonly][,volume-nocopy]
    #[arg(long = "mount", value_parser = parse_mount)]
    mounts: Vec<Mount>,
    /// The task's network: `host` for its node's own; without it the task gets a
    /// namespace of its own on its node's bridge.
    #[arg(long = "network", value_parser = crate::cli::spec_flags::parse_network)]
    networks: Vec<shoal_proto::objects::NetworkAttachmentConfig>,
    /// Add a Linux capability: NET_ADMIN, CAP_NET_ADMIN or ALL (repeatable).
    #[arg(long = "cap-add", value_parser = crate::cli::security::parse_cap)]
    cap_add: Vec<String>,
    /// Drop a Linux capability: KILL, CAP_KILL or ALL (repeatable).
    #[arg(long = "cap-drop", value_parser = crate::cli::security::parse_cap)]
    cap_drop: Vec<String>,
    /// Time to wait after SIGTERM before SIGKILL (default 10s).
    #[arg(long, value_parser = crate::parse_duration_pub)]
    stop_grace_period: Option<Duration>,
    /// Return at once instead of waiting for the task to run.
    #[arg(short = 'd', long)]
    detach: bool,
    /// How long the task must keep running (or have finished cleanly) before the command
    /// reports success.
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration_pub)]
    monitor: Duration,
    #[command(flatten)]
    process: crate::cli::spec_flags::ProcessFlags,
    image: String,
    /// Command and arguments (replace the image's command).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

fn state_of(t: &Task) -> TaskState {
    TaskState::try_from(t.status.as_ref().map(|s| s.state).unwrap_or(0)).unwrap_or(TaskState::New)
}

impl Client {
    pub async fn image_import(&self, file: &Path, reference: &str) -> Result<()> {
        let path = std::fs::canonicalize(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let i = self
            .local()
            .image_import(ImageImportRequest {
                path: path.display().to_string(),
                reference: reference.to_string(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        println!("{}", i.id);
        Ok(())
    }

    pub async fn image_load(&self, file: &Path) -> Result<()> {
        let path = std::fs::canonicalize(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let l = self
            .local()
            .image_load(ImageLoadRequest {
                path: path.display().to_string(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        for i in l.images {
            for r in &i.references {
                println!("Loaded image: {r}");
            }
            if i.references.is_empty() {
                println!("Loaded image ID: {}", i.id);
            }
        }
        Ok(())
    }

    pub async fn image_pull(&self, reference: &str) -> Result<()> {
        let i = self
            .local()
            .image_pull(ImagePullRequest {
                reference: reference.to_string(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        println!("Pulled {reference} ({})", i.id);
        Ok(())
    }

    pub async fn image_ls(&self, quiet: bool) -> Result<()> {
        let l = self
            .local()
            .image_list(ImageListRequest {})
            .await
            .map_err(status_err)?
            .into_inner();
        let short = |id: &str| {
            id.trim_start_matches("sha256:")
                .chars()
                .take(12)
                .collect::<String>()
        };
        if quiet {
            for i in &l.images {
                println!("{}", short(&i.id));
            }
            return Ok(());
        }
        let mut rows = vec![vec![
            "REPOSITORY".to_string(),
            "TAG".into(),
            "IMAGE ID".into(),
            "CREATED".into(),
            "SIZE".into(),
        ]];
        for i in &l.images {
            let refs = if i.references.is_empty() {
                vec!["<none>:<none>".to_string()]
            } else {
                i.references.clone()
            };
            for r in refs {
                let (repo, tag) = match r.rsplit_once(':') {
                    Some((a, b)) if !b.contains('/') => (a.to_string(), b.to_string()),
                    _ => (r.clone(), "<none>".into()),
                };
                rows.push(vec![
                    repo,
                    tag,
                    short(&i.id),
                    fmt_time(i.created_unix),
                    format!("{:.1}MB", i.size as f64 / 1e6),
                ]);
            }
        }
        print_table(&rows);
        Ok(())
    }

    pub async fn image_rm(&self, refs: &[String]) -> Result<()> {
        for r in refs {
            self.local()
                .image_remove(ImageRemoveRequest {
                    reference: r.clone(),
                })
                .await
                .map_err(status_err)?;
            println!("Untagged: {r}");
        }
        Ok(())
    }

    pub async fn registry_login(
        &self,
        registry: &str,
        username: &str,
        password: Option<String>,
        stdin: bool,
    ) -> Result<()> {
        let password = match (password, stdin) {
            (Some(p), false) => p,
            (None, true) => {
                let mut p = String::new();
                std::io::stdin().read_line(&mut p)?;
                p.trim_end_matches(['\n', '\r']).to_string()
            }
            _ => bail!("give the password with exactly one of --password or --password-stdin"),
        };
        self.local()
            .registry_login(RegistryLoginRequest {
                registry: registry.to_string(),
                username: username.to_string(),
                password,
            })
            .await
            .map_err(status_err)?;
        println!("Login Succeeded");
        Ok(())
    }

    pub async fn registry_logout(&self, registry: &str) -> Result<()> {
        self.local()
            .registry_logout(RegistryLogoutRequest {
                registry: registry.to_string(),
            })
            .await
            .map_err(status_err)?;
        println!("Removing login credentials for {registry}");
        Ok(())
    }

    pub async fn task_run(&self, a: TaskRunArgs) -> Result<()> {
        let mut spec = ContainerSpec {
            image: a.image,
            command: a.entrypoint.map(|e| vec![e]).unwrap_or_default(),
            args: a.args,
            env: a.env,
            workdir: a.workdir.unwrap_or_default(),
            user: a.user.unwrap_or_default(),
            hostname: a.hostname.unwrap_or_default(),
            readonly_rootfs: a.read_only,
            mounts: a.mounts,
            limits: Some(Resources {
                nano_cpus: a.cpus.unwrap_or(0),
                memory_bytes: a.memory.unwrap_or(0),
                pids: a.pids_limit.unwrap_or(0),
            }),
            stop_grace_period_ms: a
                .stop_grace_period
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            no_init: a.no_init,
            no_identity: a.no_identity,
            networks: a.networks,
            ..Default::default()
        };
        crate::cli::security::apply_caps(&mut spec, &a.cap_add, &a.cap_drop);
        a.process.apply(&mut spec).map_err(anyhow::Error::msg)?;
        let t = self
            .control()
            .create_task(CreateTaskRequest {
                spec: Some(spec),
                node: a.node.unwrap_or_default(),
                name: a.name.unwrap_or_default(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        println!("{}", t.id);
        if a.detach {
            return Ok(());
        }
        let _ = std::io::stdout().flush();
        // Wait until it runs, then watch it for the monitor window: a task that fails at
        // once fails the command, with its error.
        let mut running_since: Option<std::time::Instant> = None;
        loop {
            let cur = self
                .control()
                .get_task(GetTaskRequest {
                    reference: t.id.clone(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let st = state_of(&cur);
            match st {
                TaskState::Complete | TaskState::Shutdown => return Ok(()),
                TaskState::Failed | TaskState::Rejected => {
                    let err = cur.status.map(|s| s.err).unwrap_or_default();
                    bail!(
                        "task {} {}: {err}",
                        t.id,
                        state_name(st as i32).to_lowercase()
                    );
                }
                TaskState::Running => {
                    let since = *running_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= a.monitor {
                        return Ok(());
                    }
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn task_ls(&self, node: Option<String>, quiet: bool, no_trunc: bool) -> Result<()> {
        let r = self
            .control()
            .list_tasks(ListTasksRequest {
                node: node.unwrap_or_default(),
                service_id: String::new(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        if quiet {
            for t in &r.tasks {
                println!("{}", t.id);
            }
            return Ok(());
        }
        let cut = |s: &str, n: usize| truncate(s, n, no_trunc);
        let mut rows = vec![task_table_header()];
        for t in &r.tasks {
            let st = t.status.clone().unwrap_or_default();
            let err = if st.err.is_empty() {
                String::new()
            } else {
                format!("\"{}\"", cut(&st.err, 30))
            };
            rows.push(vec![
                cut(&t.id, 12),
                t.name.clone(),
                t.spec.as_ref().map(|s| s.image.clone()).unwrap_or_default(),
                r.node_names
                    .get(&t.node_id)
                    .cloned()
                    .unwrap_or_else(|| cut(&t.node_id, 12)),
                state_name(t.desired_state),
                format!("{} {}", state_name(st.state), ago(st.timestamp_unix_ms)),
                err,
            ]);
        }
        print_table(&rows);
        Ok(())
    }

    pub async fn task_inspect(&self, refs: &[String]) -> Result<()> {
        let mut out = Vec::new();
        for r in refs {
            let t = self
                .control()
                .get_task(GetTaskRequest {
                    reference: r.clone(),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let st = t.status.clone().unwrap_or_default();
            let spec = t.spec.clone().unwrap_or_default();
            let limits = spec.limits.unwrap_or_default();
            let mut spec_json = json!({
                "Image": spec.image, "Command": spec.command, "Args": spec.args, "Env": spec.env,
                "Dir": spec.workdir, "User": spec.user, "Hostname": spec.hostname,
                "ReadOnly": spec.readonly_rootfs, "Init": !spec.no_init,
                "Resources": {"Limits": {"NanoCPUs": limits.nano_cpus, "MemoryBytes": limits.memory_bytes, "Pids": limits.pids}},
                "CapabilityAdd": spec.cap_add, "CapabilityDrop": spec.cap_drop,
                "Networks": crate::cli::table::networks_json(&spec),
            });
            crate::cli::table::add_process_json(&mut spec_json, &spec);
            out.push(json!({
                "ID": t.id, "Name": t.name, "NodeID": t.node_id, "ServiceID": t.service_id,
                "Slot": t.slot, "CreatedAt": fmt_time(t.created_at_unix), "UpdatedAt": fmt_time(t.updated_at_unix),
                "DesiredState": state_name(t.desired_state).to_lowercase(),
                "Spec": spec_json,
                "NetworksAttachments": t.networks.iter().map(|a| {
                        let n = a.network.clone().unwrap_or_default();
                        json!({"Network": n.spec.map(|s| s.name).unwrap_or_default(), "NetworkID": n.id,
                               "Addresses": a.addresses, "Aliases": a.aliases})
                    })
                    .chain(st.addresses.iter().map(|a| json!({"Network": a.network, "Addresses": [a.address]})))
                    .collect::<Vec<_>>(),
                "Security": crate::cli::security::security_json(&spec),
                "Status": {
                    "State": state_name(st.state).to_lowercase(), "Message": st.message, "Err": st.err,
                    "Timestamp": fmt_time(st.timestamp_unix_ms / 1000),
                    "ContainerStatus": {"PID": st.pid, "ExitCode": st.exit_code},
                    "Health": match crate::cli::table::health_label(&t) {
                        Some(h) => json!({"Status": h.trim_start_matches("health: "), "Output": st.health_output}),
                        None => serde_json::Value::Null,
                    },
                },
            }));
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        Ok(())
    }

    pub async fn task_rm(&self, refs: &[String]) -> Result<()> {
        for r in refs {
            self.control()
                .remove_task(RemoveTaskRequest {
                    reference: r.clone(),
                })
                .await
                .map_err(status_err)?;
            println!("{r}");
        }
        Ok(())
    }

    pub async fn task_logs(
        &self,
        reference: &str,
        follow: bool,
        tail: u64,
        timestamps: bool,
    ) -> Result<()> {
        let mut stream = self
            .control()
            .task_logs(TaskLogsRequest {
                reference: reference.to_string(),
                follow,
                tail,
            })
            .await
            .map_err(status_err)?
            .into_inner();
        let mut out = std::io::stdout().lock();
        let mut err = std::io::stderr().lock();
        while let Some(msg) = stream.next().await {
            let msg = msg.map_err(status_err)?;
            for l in msg.lines {
                let w: &mut dyn Write = if l.stream == "stderr" {
                    &mut err
                } else {
                    &mut out
                };
                if timestamps {
                    let t = time::OffsetDateTime::from_unix_timestamp_nanos(
                        l.timestamp_unix_nanos as i128,
                    )
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_default();
                    write!(w, "{t} ")?;
                }
                w.write_all(&l.data)?;
                w.write_all(b"\n")?;
            }
            out.flush()?;
        }
        Ok(())
    }
}

impl Client {
    /// `shoal task …`.
    pub async fn task(&self, cmd: crate::TaskCmd) -> Result<()> {
        let c = self;
        match cmd {
            crate::TaskCmd::Run(args) => c.task_run(*args).await,
            crate::TaskCmd::Exec(args) => {
                let code = c.task_exec(*args).await?;
                std::process::exit(code)
            }
            crate::TaskCmd::Ls {
                node,
                quiet,
                no_trunc,
            } => c.task_ls(node, quiet, no_trunc).await,
            crate::TaskCmd::Inspect { tasks } => c.task_inspect(&tasks).await,
            crate::TaskCmd::Rm { tasks } => c.task_rm(&tasks).await,
            crate::TaskCmd::Logs {
                task,
                follow,
                tail,
                timestamps,
            } => {
                c.task_logs(&task, follow, tail.unwrap_or(0), timestamps)
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("64m"), Ok(64 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("100"), Ok(100));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5q").is_err());
    }

    #[test]
    fn mounts_parse() {
        let m = parse_mount("type=bind,source=/a,target=/b,readonly").unwrap();
        assert_eq!(
            (
                m.r#type.as_str(),
                m.source.as_str(),
                m.target.as_str(),
                m.readonly
            ),
            ("bind", "/a", "/b", true)
        );
        let t = parse_mount("type=tmpfs,target=/t,tmpfs-size=1m").unwrap();
        assert_eq!(t.size_bytes, 1 << 20);
        assert!(parse_mount("type=bind,source=/a").is_err());
        assert!(parse_mount("type=bind,target=/a,colour=red").is_err());
    }
}

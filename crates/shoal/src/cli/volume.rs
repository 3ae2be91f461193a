//! `shoal volume`: named volumes. A volume is node-local (as in swarm mode): create,
//! ls, inspect, rm and prune act on this node's own volumes; `ls --node` and
//! `inspect --node` answer from what a node reports to the managers.

use crate::cli::service::kv;
use crate::cli::{fmt_time, print_table, status_err, Client};
use anyhow::{bail, Result};
use clap::Subcommand;
use serde_json::json;
use shoal_proto::control::{GetNodeRequest, ListTasksRequest};
use shoal_proto::local::{
    Volume, VolumeCreateRequest, VolumeInspectRequest, VolumeListRequest, VolumePruneRequest,
    VolumeRemoveRequest,
};
use shoal_proto::objects::{TaskState, VolumeSummary};

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Create a volume on this node (a random name when none is given); tasks on this
    /// node that mount it by name get its data.
    Create {
        #[arg(long = "label", value_parser = kv)]
        labels: Vec<(String, String)>,
        /// local (the one driver).
        #[arg(long, short = 'd', default_value = "local")]
        driver: String,
        name: Option<String>,
    },
    /// List volumes: this node's, or with --node a node's as it reports them.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        /// A node (ID, prefix or hostname), answered by a manager.
        #[arg(long)]
        node: Option<String>,
    },
    /// Show volumes in detail (JSON).
    Inspect {
        /// A node (ID, prefix or hostname), answered by a manager.
        #[arg(long)]
        node: Option<String>,
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove volumes no task uses.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove unused volumes: anonymous ones, or with --all every unused one.
    Prune {
        #[arg(short, long)]
        all: bool,
        /// Do not ask.
        #[arg(short, long)]
        force: bool,
    },
}

impl Client {
    pub async fn volume(&self, cmd: VolumeCmd) -> Result<()> {
        match cmd {
            VolumeCmd::Create {
                labels,
                driver,
                name,
            } => {
                if driver != "local" {
                    bail!("volume driver {driver:?} is not supported: volumes are local to their node");
                }
                let v = self
                    .local()
                    .volume_create(VolumeCreateRequest {
                        name: name.unwrap_or_default(),
                        labels: labels.into_iter().collect(),
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                println!("{}", v.name);
                Ok(())
            }
            VolumeCmd::Ls { quiet, node } => {
                let names: Vec<String> = match node {
                    Some(n) => self
                        .node_volumes(&n)
                        .await?
                        .0
                        .into_iter()
                        .map(|v| v.name)
                        .collect(),
                    None => self
                        .local()
                        .volume_list(VolumeListRequest {})
                        .await
                        .map_err(status_err)?
                        .into_inner()
                        .volumes
                        .into_iter()
                        .map(|v| v.name)
                        .collect(),
                };
                if quiet {
                    names.iter().for_each(|n| println!("{n}"));
                    return Ok(());
                }
                let mut rows = vec![vec!["DRIVER".to_string(), "VOLUME NAME".into()]];
                rows.extend(names.into_iter().map(|n| vec!["local".into(), n]));
                print_table(&rows);
                Ok(())
            }
            VolumeCmd::Inspect { node, volumes } => {
                let out = match node {
                    Some(n) => self.inspect_on_node(&n, &volumes).await?,
                    None => {
                        let mut out = Vec::new();
                        for name in &volumes {
                            let v = self
                                .local()
                                .volume_inspect(VolumeInspectRequest { name: name.clone() })
                                .await
                                .map_err(status_err)?
                                .into_inner();
                            out.push(volume_json(&v));
                        }
                        out
                    }
                };
                println!("{}", serde_json::to_string_pretty(&out)?);
                Ok(())
            }
            VolumeCmd::Rm { volumes } => {
                let mut failed = Vec::new();
                for name in volumes {
                    match self
                        .local()
                        .volume_remove(VolumeRemoveRequest { name: name.clone() })
                        .await
                    {
                        Ok(_) => println!("{name}"),
                        Err(e) => {
                            eprintln!("Error: {}", e.message());
                            failed.push(name);
                        }
                    }
                }
                match failed.is_empty() {
                    true => Ok(()),
                    false => bail!("not removed: {}", failed.join(", ")),
                }
            }
            VolumeCmd::Prune { all, force } => {
                if !force {
                    use std::io::IsTerminal;
                    if !std::io::stdin().is_terminal() {
                        bail!("volume prune removes data: give -f to do it without asking");
                    }
                    let what = if all {
                        "all unused volumes"
                    } else {
                        "all unused anonymous volumes"
                    };
                    eprint!("WARNING! This will remove {what}. Are you sure you want to continue? [y/N] ");
                    let mut answer = String::new();
                    std::io::stdin().read_line(&mut answer)?;
                    if !answer.trim().eq_ignore_ascii_case("y") {
                        return Ok(());
                    }
                }
                let r = self
                    .local()
                    .volume_prune(VolumePruneRequest { all })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                if !r.removed.is_empty() {
                    println!("Deleted Volumes:");
                    r.removed.iter().for_each(|n| println!("{n}"));
                    println!();
                }
                println!(
                    "Total reclaimed space: {:.1}MB",
                    r.reclaimed_bytes as f64 / 1e6
                );
                Ok(())
            }
        }
    }

    /// The volumes node `node` reports, and its hostname.
    async fn node_volumes(&self, node: &str) -> Result<(Vec<VolumeSummary>, String, String)> {
        let n = self
            .control()
            .get_node(GetNodeRequest {
                reference: node.to_string(),
            })
            .await
            .map_err(status_err)?
            .into_inner()
            .node
            .unwrap_or_default();
        let d = n.description.unwrap_or_default();
        Ok((d.volumes, n.id, d.hostname))
    }

    async fn inspect_on_node(
        &self,
        node: &str,
        names: &[String],
    ) -> Result<Vec<serde_json::Value>> {
        let (volumes, node_id, hostname) = self.node_volumes(node).await?;
        // Who uses a volume: the node's tasks that mount it and have not ended.
        let tasks = self
            .control()
            .list_tasks(ListTasksRequest {
                node: node_id.clone(),
                service_id: String::new(),
            })
            .await
            .map_err(status_err)?
            .into_inner()
            .tasks;
        let mut out = Vec::new();
        for name in names {
            let Some(v) = volumes.iter().find(|v| &v.name == name) else {
                bail!("no such volume on node {hostname}: {name}");
            };
            let used_by: Vec<String> = tasks
                .iter()
                .filter(|t| {
                    let state = t.status.as_ref().map_or(0, |s| s.state);
                    state <= TaskState::Running as i32
                        && t.spec.as_ref().is_some_and(|s| {
                            s.mounts
                                .iter()
                                .any(|m| m.r#type == "volume" && &m.source == name)
                        })
                })
                .map(|t| format!("{} ({})", t.name, t.id))
                .collect();
            out.push(json!({
                "Name": v.name, "Driver": "local", "Scope": "local",
                "CreatedAt": fmt_time(v.created_at_unix), "Labels": v.labels,
                "Node": {"ID": node_id, "Hostname": hostname},
                "Anonymous": v.anonymous, "UsedBy": used_by,
            }));
        }
        Ok(out)
    }
}

fn volume_json(v: &Volume) -> serde_json::Value {
    json!({
        "Name": v.name, "Driver": "local", "Scope": "local",
        "CreatedAt": fmt_time(v.created_at_unix), "Labels": v.labels,
        "Mountpoint": v.mountpoint, "Anonymous": v.anonymous,
        "UsedBy": v.used_by,
        "UsageData": {"Size": v.size, "RefCount": v.used_by.len()},
    })
}

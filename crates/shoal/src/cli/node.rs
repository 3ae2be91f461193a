//! `shoal node`: the nodes of the cluster, their details, availability and labels,
//! promotion, demotion, removal, and revoking one of their certificates.

use super::*;
use shoal_proto::control::{RemoveNodeRequest, UpdateNodeRequest};

impl Client {
    pub async fn node_ls(&self, quiet: bool, format: Option<&str>) -> Result<()> {
        let me = self.self_id().await?;
        let nodes = self
            .control
            .clone()
            .list_nodes(ListNodesRequest {})
            .await
            .map_err(status_err)?
            .into_inner()
            .nodes;
        if quiet {
            for v in &nodes {
                println!("{}", v.node.as_ref().map(|n| n.id.as_str()).unwrap_or(""));
            }
            return Ok(());
        }
        match format {
            None | Some("table") => {
                let mut rows = vec![vec![
                    "ID".to_string(),
                    "HOSTNAME".into(),
                    "STATUS".into(),
                    "AVAILABILITY".into(),
                    "MANAGER STATUS".into(),
                    "ENGINE VERSION".into(),
                ]];
                for v in &nodes {
                    let n = v.node.clone().unwrap_or_default();
                    let d = n.description.clone().unwrap_or_default();
                    let id = if n.id == me {
                        format!("{} *", n.id)
                    } else {
                        n.id.clone()
                    };
                    rows.push(vec![
                        id,
                        d.hostname,
                        state_name(&n).into(),
                        availability_name(&n).into(),
                        v.manager_status.clone(),
                        d.engine_version,
                    ]);
                }
                print_table(&rows);
            }
            Some("json") => {
                for v in &nodes {
                    let n = v.node.clone().unwrap_or_default();
                    let d = n.description.clone().unwrap_or_default();
                    println!(
                        "{}",
                        json!({
                            "ID": n.id, "Self": n.id == me, "Hostname": d.hostname,
                            "Status": state_name(&n), "Availability": availability_name(&n),
                            "ManagerStatus": v.manager_status, "EngineVersion": d.engine_version,
                            "Role": role_name(&n),
                        })
                    );
                }
            }
            Some(f) => bail!("unknown --format {f:?}: use table or json"),
        }
        Ok(())
    }

    pub async fn node_inspect(
        &self,
        refs: &[String],
        pretty: bool,
        format: Option<&str>,
    ) -> Result<()> {
        if let Some(f) = format {
            if f != "json" {
                bail!("unknown --format {f:?}: use json");
            }
        }
        let me = self.self_id().await?;
        let mut out = Vec::new();
        for r in refs {
            if r == "self" && me.is_empty() {
                bail!("'self' names the node the CLI runs on: through a manager at tcp://…, name the node (ID, prefix or hostname)");
            }
            let reference = if r == "self" { me.clone() } else { r.clone() };
            let v = self
                .control
                .clone()
                .get_node(GetNodeRequest { reference })
                .await
                .map_err(status_err)?
                .into_inner();
            out.push(v);
        }
        if pretty && format.is_none() {
            for v in &out {
                let n = v.node.clone().unwrap_or_default();
                let d = n.description.clone().unwrap_or_default();
                let c = n.certificate.clone().unwrap_or_default();
                println!("ID:\t\t\t{}", n.id);
                println!("Hostname:\t\t{}", d.hostname);
                if !n.reported_hostname.is_empty() {
                    println!(
                        "Reported Hostname:\t{} (not used: the hostname was fixed when the node joined)",
                        n.reported_hostname
                    );
                }
                println!("Joined at:\t\t{}", fmt_time(n.created_at_unix));
                println!(
                    "Status:\n State:\t\t\t{}\n Availability:\t\t{}\n Address:\t\t{}",
                    state_name(&n),
                    availability_name(&n),
                    n.addr
                );
                if !n.state_message.is_empty() {
                    println!(" Message:\t\t{}", n.state_message);
                }
                if !d.runtime_error.is_empty() {
                    println!(" Runtime Error:\t\t{}", d.runtime_error);
                }
                if !v.manager_status.is_empty() {
                    println!("Manager Status:\n Raft Status:\t\t{}", v.manager_status);
                }
                println!(
                    "Platform:\n Operating System:\t{}\n Architecture:\t\t{}",
                    d.os, d.arch
                );
                println!(
                    "Resources:\n CPUs:\t\t\t{}\n Memory:\t\t{} MiB",
                    d.cpus,
                    d.memory_bytes / (1 << 20)
                );
                println!("Role:\t\t\t{}", role_name(&n));
                let p = d.data_plane.clone().unwrap_or_default();
                let engine = match (p.engine.as_str(), p.error.as_str()) {
                    ("", "") => "none".to_string(),
                    ("", e) => format!("none ({e})"),
                    (engine, _) => engine.to_string(),
                };
                println!(
                    "Data Plane:\n Engine:\t\t{engine}\n WireGuard Public Key:\t{}\n Endpoint:\t\t{}\n Tunnel Address:\t{}\n Guard Dropped:\t\t{} in, {} out",
                    d.wg_public_key,
                    data_path_endpoint(&n),
                    n.tunnel_addr,
                    p.guard_dropped_in,
                    p.guard_dropped_out
                );
                println!(
                    "Certificate:\n Serial:\t\t{}\n Expires:\t\t{}",
                    c.serial,
                    fmt_time(c.not_after_unix)
                );
                if !c.renewal_error.is_empty() {
                    println!(" Renewal Error:\t{}", c.renewal_error);
                }
                println!();
            }
            return Ok(());
        }
        let arr: Vec<serde_json::Value> = out.iter().map(node_json).collect();
        println!("{}", serde_json::to_string_pretty(&arr)?);
        Ok(())
    }

    pub async fn revoke_certificate(&self, node: &str, serial: &str) -> Result<()> {
        self.control
            .clone()
            .revoke_certificate(shoal_proto::control::RevokeCertificateRequest {
                node: node.to_string(),
                serial: serial.to_string(),
                user: String::new(),
            })
            .await
            .map_err(status_err)?;
        println!("Certificate {serial} of node {node} revoked.");
        Ok(())
    }

    pub async fn node_update(
        &self,
        node: &str,
        availability: Option<String>,
        add: Vec<(String, String)>,
        rm: Vec<String>,
    ) -> Result<()> {
        self.control()
            .update_node(UpdateNodeRequest {
                reference: node.to_string(),
                availability: availability.unwrap_or_default(),
                labels_add: add.into_iter().collect(),
                labels_rm: rm,
            })
            .await
            .map_err(status_err)?;
        println!("{node}");
        Ok(())
    }

    pub async fn node_demote(&self, nodes: &[String]) -> Result<()> {
        for n in nodes {
            self.control()
                .demote_node(shoal_proto::control::DemoteNodeRequest {
                    reference: n.clone(),
                })
                .await
                .map_err(status_err)?;
            println!("Manager {n} demoted in the swarm.");
        }
        Ok(())
    }

    pub async fn node_promote(&self, nodes: &[String]) -> Result<()> {
        for n in nodes {
            self.control()
                .promote_node(shoal_proto::control::PromoteNodeRequest {
                    reference: n.clone(),
                })
                .await
                .map_err(status_err)?;
            println!("Node {n} promoted to a manager in the cluster.");
        }
        Ok(())
    }

    pub async fn node_rm(&self, nodes: &[String], force: bool) -> Result<()> {
        for n in nodes {
            self.control()
                .remove_node(RemoveNodeRequest {
                    reference: n.clone(),
                    force,
                })
                .await
                .map_err(status_err)?;
            println!("{n}");
        }
        Ok(())
    }
}

fn state_name(n: &Node) -> &'static str {
    match NodeState::try_from(n.state).unwrap_or(NodeState::Unknown) {
        NodeState::Ready => "Ready",
        NodeState::Down => "Down",
        NodeState::Disconnected => "Disconnected",
        NodeState::Unknown => "Unknown",
    }
}

fn availability_name(n: &Node) -> &'static str {
    match Availability::try_from(n.availability).unwrap_or(Availability::Active) {
        Availability::Active => "Active",
        Availability::Pause => "Pause",
        Availability::Drain => "Drain",
    }
}

fn role_name(n: &Node) -> &'static str {
    match NodeRole::try_from(n.role).unwrap_or(NodeRole::Unspecified) {
        NodeRole::Manager => "manager",
        NodeRole::Worker => "worker",
        NodeRole::Unspecified => "unknown",
    }
}

/// A node's WireGuard endpoint: its address and the data-path port.
/// Where other nodes send the node's overlay traffic: its --data-path-addr (or its
/// advertised address) and its engine's port.
fn data_path_endpoint(n: &Node) -> String {
    let d = n.description.clone().unwrap_or_default();
    let ip = match d.data_path_addr.as_str() {
        "" => n.addr.rsplit_once(':').map_or(n.addr.as_str(), |x| x.0),
        a => a,
    };
    let port = match d.data_plane.map(|p| p.listen_port).unwrap_or(0) {
        0 => u32::from(shoal_manager::cluster::DEFAULT_DATA_PATH_PORT),
        p => p,
    };
    match ip {
        "" => String::new(),
        ip => format!("{ip}:{port}"),
    }
}

fn data_plane_json(n: &Node) -> serde_json::Value {
    let d = n.description.clone().unwrap_or_default();
    let p = d.data_plane.clone().unwrap_or_default();
    json!({
        "Engine": p.engine,
        "Error": p.error,
        "PublicKey": d.wg_public_key,
        "TunnelAddr": n.tunnel_addr,
        "Endpoint": data_path_endpoint(n),
        "Guard": {
            "DroppedIn": p.guard_dropped_in,
            "DroppedOut": p.guard_dropped_out,
        },
    })
}

fn node_json(v: &NodeView) -> serde_json::Value {
    let n = v.node.clone().unwrap_or_default();
    let d = n.description.clone().unwrap_or_default();
    let c = n.certificate.clone().unwrap_or_default();
    let mut j = json!({
        "ID": n.id,
        "CreatedAt": fmt_time(n.created_at_unix),
        "UpdatedAt": fmt_time(n.updated_at_unix),
        "Spec": {
            "Role": role_name(&n),
            "Availability": availability_name(&n).to_lowercase(),
            "Labels": n.labels,
        },
        "Description": {
            "Hostname": d.hostname,
            "ReportedHostname": n.reported_hostname,
            "Platform": {"OS": d.os, "Architecture": d.arch},
            "Resources": {"NanoCPUs": u64::from(d.cpus) * 1_000_000_000, "MemoryBytes": d.memory_bytes},
            "Engine": {"EngineVersion": d.engine_version, "Labels": d.engine_labels},
            "RuntimeError": d.runtime_error,
        },
        "Status": {
            "State": state_name(&n).to_lowercase(),
            "Message": n.state_message,
            "Addr": n.addr,
        },
        "DataPlane": data_plane_json(&n),
        "Certificate": {
            "Serial": c.serial,
            "NotAfter": fmt_time(c.not_after_unix),
            "RootDigest": c.root_digest,
            "RenewalError": c.renewal_error,
            "Previous": c.previous.iter().map(|p| json!({"Serial": p.serial, "NotAfter": fmt_time(p.not_after_unix)})).collect::<Vec<_>>(),
        },
    });
    if !v.manager_status.is_empty() {
        j["ManagerStatus"] = json!({
            "Leader": v.manager_status == "Leader",
            "Reachability": if v.manager_status == "Unreachable" { "unreachable" } else { "reachable" },
            "Addr": n.addr,
            "RaftID": shoal_manager::bootstrap::node_raft_id(&n),
        });
    }
    j
}

impl Client {
    /// `shoal node …`.
    pub async fn node(&self, cmd: crate::NodeCmd) -> Result<()> {
        let c = self;
        match cmd {
            crate::NodeCmd::Update {
                availability,
                label_add,
                label_rm,
                node,
            } => {
                c.node_update(&node, availability, label_add, label_rm)
                    .await
            }
            crate::NodeCmd::Ps { node, no_trunc } => {
                let node = match node {
                    Some(n) if n != "self" => n,
                    _ => c.self_id().await?,
                };
                c.task_ls(Some(node), false, no_trunc).await
            }
            crate::NodeCmd::Rm { force, nodes } => c.node_rm(&nodes, force).await,
            crate::NodeCmd::Demote { nodes } => c.node_demote(&nodes).await,
            crate::NodeCmd::Promote { nodes } => c.node_promote(&nodes).await,
            crate::NodeCmd::RevokeCertificate { node, serial } => {
                c.revoke_certificate(&node, &serial).await
            }
            crate::NodeCmd::Ls { quiet, format } => c.node_ls(quiet, format.as_deref()).await,
            crate::NodeCmd::Inspect {
                pretty,
                format,
                nodes,
            } => c.node_inspect(&nodes, pretty, format.as_deref()).await,
        }
    }
}

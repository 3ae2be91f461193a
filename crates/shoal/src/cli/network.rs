//! `shoal network`: create, list, inspect and remove overlay networks.

use crate::cli::service::kv;
use crate::cli::{fmt_time, print_table, status_err, Client};
use anyhow::{bail, Result};
use clap::Subcommand;
use serde_json::json;
use shoal_proto::control::{
    CreateNetworkRequest, GetNetworkRequest, ListNetworksRequest, RemoveNetworkRequest,
};
use shoal_proto::objects::{Network, NetworkSpec};

#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Create an overlay network; its subnet comes from the cluster's default address
    /// pool unless --subnet gives one.
    Create {
        /// overlay (the one driver).
        #[arg(long, short = 'd', default_value = "overlay")]
        driver: String,
        #[arg(long)]
        subnet: Option<String>,
        #[arg(long)]
        gateway: Option<String>,
        /// Tasks run with 'task run' may attach too, not only services.
        #[arg(long)]
        attachable: bool,
        /// No way out: tasks on it reach only each other.
        #[arg(long)]
        internal: bool,
        /// Driver option: mtu=N.
        #[arg(long = "opt", short = 'o', value_parser = kv)]
        opts: Vec<(String, String)>,
        #[arg(long = "label", value_parser = kv)]
        labels: Vec<(String, String)>,
        name: String,
    },
    /// List networks: the cluster's, and the built-in host and bridge.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        /// table (default) or json (one object per line).
        #[arg(long)]
        format: Option<String>,
    },
    /// Show networks in detail (JSON).
    Inspect {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove networks no service or task uses.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

/// The networks every node has without creating them: (name, driver, what it is).
const BUILT_IN: &[(&str, &str, &str)] = &[
    (
        "bridge",
        "bridge",
        "each task in a namespace of its own on its node's bridge (no --network)",
    ),
    (
        "host",
        "host",
        "the node's own network namespace (--network host)",
    ),
];

fn inspect_json(n: &Network) -> serde_json::Value {
    let spec = n.spec.clone().unwrap_or_default();
    json!({
        "ID": n.id,
        "Name": spec.name,
        "Created": fmt_time(n.created_at_unix),
        "Scope": "swarm",
        "Driver": spec.driver,
        "IPAM": {"Config": [{"Subnet": n.subnet, "Gateway": n.gateway}]},
        "Internal": spec.internal,
        "Attachable": spec.attachable,
        "Encrypted": true,
        "VNI": n.vni,
        "Options": spec.options,
        "Labels": spec.labels,
    })
}

impl Client {
    pub async fn network(&self, cmd: NetworkCmd) -> Result<()> {
        match cmd {
            NetworkCmd::Create {
                driver,
                subnet,
                gateway,
                attachable,
                internal,
                opts,
                labels,
                name,
            } => {
                let n = self
                    .control()
                    .create_network(CreateNetworkRequest {
                        spec: Some(NetworkSpec {
                            name,
                            driver,
                            subnet: subnet.unwrap_or_default(),
                            gateway: gateway.unwrap_or_default(),
                            attachable,
                            internal,
                            options: opts.into_iter().collect(),
                            labels: labels.into_iter().collect(),
                        }),
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                println!("{}", n.id);
                Ok(())
            }
            NetworkCmd::Ls { quiet, format } => {
                let nets = self.networks().await?;
                if quiet {
                    for n in &nets {
                        println!("{}", n.id);
                    }
                    return Ok(());
                }
                match format.as_deref() {
                    None | Some("table") => {}
                    Some("json") => {
                        for n in &nets {
                            let spec = n.spec.clone().unwrap_or_default();
                            println!(
                                "{}",
                                json!({"ID": n.id, "Name": spec.name, "Driver": spec.driver,
                                       "Scope": "swarm", "Subnet": n.subnet})
                            );
                        }
                        for (name, driver, _) in BUILT_IN {
                            println!(
                                "{}",
                                json!({"ID": "", "Name": name, "Driver": driver, "Scope": "local", "Subnet": ""})
                            );
                        }
                        return Ok(());
                    }
                    Some(f) => bail!("--format {f:?}: use table or json"),
                }
                let mut rows = vec![["NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET"]
                    .map(String::from)
                    .to_vec()];
                let mut all: Vec<Vec<String>> = nets
                    .iter()
                    .map(|n| {
                        let spec = n.spec.clone().unwrap_or_default();
                        vec![
                            n.id.chars().take(12).collect(),
                            spec.name,
                            spec.driver,
                            "swarm".into(),
                            n.subnet.clone(),
                        ]
                    })
                    .collect();
                all.extend(BUILT_IN.iter().map(|(name, driver, _)| {
                    vec![
                        "-".into(),
                        name.to_string(),
                        driver.to_string(),
                        "local".into(),
                        String::new(),
                    ]
                }));
                all.sort_by(|a, b| a[1].cmp(&b[1]));
                rows.extend(all);
                print_table(&rows);
                Ok(())
            }
            NetworkCmd::Inspect { networks } => {
                let mut out = Vec::new();
                for r in &networks {
                    if let Some((name, driver, what)) = BUILT_IN.iter().find(|b| b.0 == r) {
                        out.push(json!({"Name": name, "Driver": driver, "Scope": "local", "Description": what}));
                        continue;
                    }
                    let n = self
                        .control()
                        .get_network(GetNetworkRequest {
                            reference: r.clone(),
                        })
                        .await
                        .map_err(status_err)?
                        .into_inner();
                    out.push(inspect_json(&n));
                }
                println!("{}", serde_json::to_string_pretty(&out)?);
                Ok(())
            }
            NetworkCmd::Rm { networks } => {
                for r in &networks {
                    if BUILT_IN.iter().any(|b| b.0 == r) {
                        bail!("{r} is a built-in network: it cannot be removed");
                    }
                    self.control()
                        .remove_network(RemoveNetworkRequest {
                            reference: r.clone(),
                        })
                        .await
                        .map_err(status_err)?;
                    println!("{r}");
                }
                Ok(())
            }
        }
    }

    /// A network's ID from its name, ID or ID prefix; `host` stays `host`.
    pub async fn network_id(&self, reference: &str) -> Result<String> {
        if reference == shoal_proto::HOST_NETWORK {
            return Ok(reference.to_string());
        }
        Ok(self
            .control()
            .get_network(GetNetworkRequest {
                reference: reference.to_string(),
            })
            .await
            .map_err(status_err)?
            .into_inner()
            .id)
    }

    /// Network names by ID, for showing a spec's networks.
    pub async fn network_names(&self) -> std::collections::HashMap<String, String> {
        let Ok(r) = self.control().list_networks(ListNetworksRequest {}).await else {
            return Default::default();
        };
        r.into_inner()
            .networks
            .into_iter()
            .map(|n| (n.id.clone(), n.spec.map(|s| s.name).unwrap_or_default()))
            .collect()
    }
}

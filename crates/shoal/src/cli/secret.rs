//! `shoal secret` and `shoal config`: create, list, inspect, update (a new version) and
//! remove. The data comes from a file or standard input, never from the command line.

use crate::cli::service::kv;
use crate::cli::{fmt_time, print_table, status_err, Client};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::json;
use shoal_proto::control::{
    CreateSecretRequest, GetSecretRequest, ListSecretsRequest, RemoveSecretRequest, SecretView,
    UpdateSecretRequest,
};
use shoal_proto::objects::SecretSpec;

#[derive(Subcommand)]
pub enum SecretCmd {
    /// Create from a file, or from standard input with '-'.
    Create {
        #[arg(long = "label", short = 'l', value_parser = kv)]
        labels: Vec<(String, String)>,
        name: String,
        /// A file, or '-' for standard input.
        file: String,
    },
    /// List them (metadata only).
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        /// table (default) or json (one object per line).
        #[arg(long)]
        format: Option<String>,
    },
    /// Show them in detail: versions and the services that use each.
    Inspect {
        /// Human-readable (a config's data included).
        #[arg(long)]
        pretty: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Give it new data: a new version, onto which the services that use it roll.
    Update {
        name: String,
        /// A file, or '-' for standard input.
        file: String,
    },
    /// Remove them (refused while a service uses one).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Reads the data from `file`, or standard input for `-`.
fn read_data(file: &str) -> Result<Vec<u8>> {
    if file == "-" {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut data)
            .context("cannot read standard input")?;
        Ok(data)
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {file}"))
    }
}

fn inspect_json(kind: &str, v: &SecretView) -> serde_json::Value {
    let s = v.secret.clone().unwrap_or_default();
    let spec = s.spec.clone().unwrap_or_default();
    let current = s.versions.last().map_or(0, |x| x.version);
    let versions: Vec<serde_json::Value> = s
        .versions
        .iter()
        .map(|x| {
            let used_by: Vec<String> = v
                .uses
                .iter()
                .filter(|u| u.version == x.version)
                .map(|u| {
                    if u.previous {
                        format!("{} (previous spec)", u.service_name)
                    } else {
                        u.service_name.clone()
                    }
                })
                .collect();
            let mut j = json!({
                "Version": x.version, "Size": x.size, "CreatedAt": fmt_time(x.created_at_unix),
                "UsedBy": used_by,
            });
            if kind == "config" {
                j["Digest"] = json!(x.digest);
            }
            j
        })
        .collect();
    let mut out = json!({
        "ID": s.id,
        "Version": {"Index": current},
        "CreatedAt": fmt_time(s.created_at_unix),
        "UpdatedAt": fmt_time(s.updated_at_unix),
        "Spec": {"Name": spec.name, "Labels": spec.labels},
        "Versions": versions,
    });
    if kind == "config" {
        if let Some(x) = s.versions.last() {
            use base64::Engine;
            out["Spec"]["Data"] = json!(base64::engine::general_purpose::STANDARD.encode(&x.data));
        }
    }
    out
}

impl Client {
    pub async fn secret(&self, kind: &str, cmd: SecretCmd) -> Result<()> {
        match cmd {
            SecretCmd::Create { labels, name, file } => {
                let data = read_data(&file)?;
                let v = self
                    .control()
                    .create_secret(CreateSecretRequest {
                        kind: kind.into(),
                        spec: Some(SecretSpec {
                            name,
                            labels: labels.into_iter().collect(),
                        }),
                        data,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                println!("{}", v.secret.map(|s| s.id).unwrap_or_default());
                Ok(())
            }
            SecretCmd::Update { name, file } => {
                let data = read_data(&file)?;
                let v = self
                    .control()
                    .update_secret(UpdateSecretRequest {
                        kind: kind.into(),
                        reference: name.clone(),
                        data,
                        only_if_changed: false,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                let s = v.secret.unwrap_or_default();
                let n = s.versions.last().map_or(0, |x| x.version);
                let mut services: Vec<&str> = v
                    .uses
                    .iter()
                    .filter(|u| !u.previous && u.version == n)
                    .map(|u| u.service_name.as_str())
                    .collect();
                services.dedup();
                if services.is_empty() {
                    println!("{name}: version {n}");
                } else {
                    println!(
                        "{name}: version {n}; rolling update of {}",
                        services.join(", ")
                    );
                }
                Ok(())
            }
            SecretCmd::Ls { quiet, format } => {
                let all = self
                    .control()
                    .list_secrets(ListSecretsRequest { kind: kind.into() })
                    .await
                    .map_err(status_err)?
                    .into_inner()
                    .secrets;
                if quiet {
                    for v in &all {
                        println!("{}", v.secret.as_ref().map_or("", |s| s.id.as_str()));
                    }
                    return Ok(());
                }
                let row = |v: &SecretView| {
                    let s = v.secret.clone().unwrap_or_default();
                    let name = s.spec.clone().unwrap_or_default().name;
                    let version = s.versions.last().map_or(0, |x| x.version);
                    (s, name, version)
                };
                match format.as_deref() {
                    None | Some("table") => {}
                    Some("json") => {
                        for v in &all {
                            let (s, name, version) = row(v);
                            println!(
                                "{}",
                                json!({"ID": s.id, "Name": name, "Version": version,
                                       "CreatedAt": fmt_time(s.created_at_unix),
                                       "UpdatedAt": fmt_time(s.updated_at_unix)})
                            );
                        }
                        return Ok(());
                    }
                    Some(f) => bail!("--format {f:?}: use table or json"),
                }
                let mut rows = vec![["ID", "NAME", "VERSION", "CREATED", "UPDATED"]
                    .map(String::from)
                    .to_vec()];
                for v in &all {
                    let (s, name, version) = row(v);
                    rows.push(vec![
                        s.id.clone(),
                        name,
                        version.to_string(),
                        fmt_time(s.created_at_unix),
                        fmt_time(s.updated_at_unix),
                    ]);
                }
                print_table(&rows);
                Ok(())
            }
            SecretCmd::Inspect { pretty, names } => {
                let mut out = Vec::new();
                for r in &names {
                    let v = self
                        .control()
                        .get_secret(GetSecretRequest {
                            kind: kind.into(),
                            reference: r.clone(),
                        })
                        .await
                        .map_err(status_err)?
                        .into_inner();
                    if pretty {
                        print_pretty(kind, &v);
                    } else {
                        out.push(inspect_json(kind, &v));
                    }
                }
                if !pretty {
                    println!("{}", serde_json::to_string_pretty(&out)?);
                }
                Ok(())
            }
            SecretCmd::Rm { names } => {
                for r in &names {
                    self.control()
                        .remove_secret(RemoveSecretRequest {
                            kind: kind.into(),
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
}

fn print_pretty(kind: &str, v: &SecretView) {
    let s = v.secret.clone().unwrap_or_default();
    let spec = s.spec.clone().unwrap_or_default();
    println!("ID:              {}", s.id);
    println!("Name:            {}", spec.name);
    if !spec.labels.is_empty() {
        println!("Labels:");
        let mut l: Vec<_> = spec.labels.iter().collect();
        l.sort();
        for (k, val) in l {
            println!(" - {k}={val}");
        }
    }
    println!("Created at:      {}", fmt_time(s.created_at_unix));
    println!("Updated at:      {}", fmt_time(s.updated_at_unix));
    println!("Versions:");
    for x in &s.versions {
        let mut users: Vec<String> = v
            .uses
            .iter()
            .filter(|u| u.version == x.version)
            .map(|u| {
                if u.previous {
                    format!("{} (previous spec)", u.service_name)
                } else {
                    u.service_name.clone()
                }
            })
            .collect();
        users.dedup();
        println!(
            " - {}: {} bytes, created {}{}",
            x.version,
            x.size,
            fmt_time(x.created_at_unix),
            if users.is_empty() {
                String::new()
            } else {
                format!(", used by {}", users.join(", "))
            }
        );
    }
    if kind == "config" {
        if let Some(x) = s.versions.last() {
            println!("Data:");
            println!("{}", String::from_utf8_lossy(&x.data));
        }
    }
    println!();
}

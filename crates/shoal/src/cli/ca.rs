//! `shoal ca`: the cluster's root CA and its rotation.

use crate::cli::{fmt_time, status_err, Client};
use anyhow::{bail, Context, Result};
use shoal_proto::control::{CaStatus, GetCaRequest, RotateCaRequest};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct CaArgs {
    /// Rotate to a new root (generated, or the one --ca-cert/--ca-key give): nodes
    /// renew onto it, then the old root and the join tokens are retired. Waits and
    /// shows progress unless --detach.
    #[arg(long)]
    pub rotate: bool,
    /// With --rotate: finish without the nodes that are down (they rejoin later with a
    /// token). Also forces a rotation already running.
    #[arg(long)]
    pub force: bool,
    /// With --rotate: the new root's certificate (PEM, one CA certificate valid for at
    /// least a year, named apart from the current root).
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// With --rotate: the new root's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub ca_key: Option<PathBuf>,
    /// With --rotate: return once the rotation started.
    #[arg(short, long)]
    pub detach: bool,
    /// Print the root certificate only (with --rotate: print nothing).
    #[arg(short, long)]
    pub quiet: bool,
}

fn read(path: &PathBuf, what: &str) -> Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))
}

/// "worker1 (down)" for each node still on the old root.
fn waiting_for(s: &CaStatus) -> Vec<String> {
    s.nodes
        .iter()
        .filter(|n| !n.converged)
        .map(|n| {
            let name = if n.hostname.is_empty() {
                &n.node_id
            } else {
                &n.hostname
            };
            format!("{name} ({})", n.state)
        })
        .collect()
}

fn print_status(s: &CaStatus) {
    println!("Root CA:");
    println!(" Subject:\t{}", s.root_subject);
    println!(" Digest:\t{}", s.root_digest);
    println!(" Expires:\t{}", fmt_time(s.root_not_after_unix));
    if s.rotating {
        println!(
            "Rotation:\tin progress since {}, {}/{} nodes{}",
            fmt_time(s.rotation_started_at_unix),
            s.converged,
            s.total,
            if s.force {
                " (forced: nodes that are down are left out)"
            } else {
                ""
            }
        );
        println!(" New root:\t{}", s.new_root_digest);
        let waiting = waiting_for(s);
        if !waiting.is_empty() {
            println!(" Waiting for:\t{}", waiting.join(", "));
        }
    } else if s.last_rotation_unix != 0 {
        print!(
            "Rotation:\tnone (last finished {}",
            fmt_time(s.last_rotation_unix)
        );
        if !s.last_rotation_left_out.is_empty() {
            print!(
                ", without {}: they must rejoin with a token",
                s.last_rotation_left_out.join(", ")
            );
        }
        println!(")");
    } else {
        println!("Rotation:\tnone");
    }
    println!();
    print!("{}", s.root_pem);
}

impl Client {
    async fn get_ca(&self) -> Result<CaStatus> {
        Ok(self
            .control
            .clone()
            .get_ca(GetCaRequest {})
            .await
            .map_err(status_err)?
            .into_inner())
    }

    pub async fn ca(&self, a: CaArgs) -> Result<()> {
        if !a.rotate {
            if a.force || a.ca_cert.is_some() || a.ca_key.is_some() || a.detach {
                bail!("--force, --ca-cert, --ca-key and --detach go with --rotate");
            }
            let s = self.get_ca().await?;
            if a.quiet {
                print!("{}", s.root_pem);
            } else {
                print_status(&s);
            }
            return Ok(());
        }
        let (cert_pem, key_pem) = match (&a.ca_cert, &a.ca_key) {
            (Some(c), Some(k)) => (read(c, "--ca-cert")?, read(k, "--ca-key")?),
            (None, None) => (String::new(), String::new()),
            _ => bail!(
                "--ca-cert and --ca-key go together: give both, or neither to generate a new root"
            ),
        };
        let s = self
            .control
            .clone()
            .rotate_ca(RotateCaRequest {
                force: a.force,
                cert_pem,
                key_pem,
            })
            .await
            .map_err(status_err)?
            .into_inner();
        let target = s.new_root_digest.clone();
        if a.detach {
            if !a.quiet {
                println!(
                    "Root CA rotation to {target} started ({}/{} nodes); 'shoal ca' shows its progress.",
                    s.converged, s.total
                );
            }
            return Ok(());
        }
        if !a.quiet {
            println!(
                "Rotating the root CA to {target} (Ctrl-C stops waiting; the rotation goes on)."
            );
        }
        let mut last = String::new();
        let mut told_down = false;
        loop {
            let s = self.get_ca().await?;
            if !s.rotating {
                if s.root_digest != target {
                    bail!(
                        "the rotation to {target} did not finish: the cluster's root is now {}",
                        s.root_digest
                    );
                }
                if !a.quiet {
                    println!("Root CA rotated: every node now has a certificate from {target}.");
                    if !s.last_rotation_left_out.is_empty() {
                        println!(
                            "Left out (down during the rotation; they must rejoin with a token): {}",
                            s.last_rotation_left_out.join(", ")
                        );
                    }
                    println!(
                        "The join tokens changed: get the new ones with 'shoal join-token worker'."
                    );
                }
                return Ok(());
            }
            let line = format!("{}/{} nodes", s.converged, s.total);
            if line != last && !a.quiet {
                let waiting = waiting_for(&s);
                if waiting.is_empty() {
                    println!("{line}");
                } else {
                    println!("{line} (waiting for {})", waiting.join(", "));
                }
                last = line;
            }
            let down: Vec<String> = s
                .nodes
                .iter()
                .filter(|n| !n.converged && n.state == "down")
                .map(|n| n.hostname.clone())
                .collect();
            if !down.is_empty() && !s.force && !told_down && !a.quiet {
                println!(
                    "{} down and cannot renew: the rotation waits for it, or finish without it with 'shoal ca --rotate --force' (it rejoins later with a token)",
                    if down.len() == 1 {
                        format!("node {} is", down[0])
                    } else {
                        format!("nodes {} are", down.join(", "))
                    }
                );
                told_down = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

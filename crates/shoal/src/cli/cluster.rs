//! `shoal init`, `join`, `join-token`, `info`, `update`, `backup`, `unlock`,
//! `unlock-key` and `leave`: the cluster and this node's membership of it.

use super::*;

/// `shoal init`'s options.
pub struct InitArgs {
    pub advertise_addr: Option<String>,
    pub cert_expiry: Option<Duration>,
    pub heartbeat: Option<Duration>,
    pub autolock: bool,
    pub snapshot_interval: u64,
    pub election_timeout: Option<Duration>,
    pub force_new_cluster: bool,
    pub restore: Option<PathBuf>,
    pub default_addr_pool: Vec<String>,
    pub default_addr_pool_mask_length: u32,
    pub data_path_port: u32,
    pub data_path_addr: String,
}

/// The cluster settings `shoal update` changes (`None`: unchanged).
pub struct ClusterUpdate {
    pub cert_expiry: Option<Duration>,
    pub snapshot_interval: Option<u64>,
    pub election_timeout: Option<Duration>,
    pub autolock: Option<bool>,
    pub user_cert_expiry: Option<Duration>,
    pub audit_max_size: Option<u64>,
    pub audit_keep: Option<u32>,
    pub workload_cert_expiry: Option<Duration>,
}

impl Client {
    pub(super) async fn info_raw(&self) -> Result<InfoResponse> {
        Ok(self
            .local
            .clone()
            .info(InfoRequest {})
            .await
            .map_err(status_err)?
            .into_inner())
    }

    pub async fn init(&self, a: InitArgs) -> Result<()> {
        let restore = match &a.restore {
            None => Vec::new(),
            Some(p) => std::fs::read(p)
                .with_context(|| format!("cannot read the backup {}", p.display()))?,
        };
        let unlock_key = if !restore.is_empty()
            && shoal_manager::recovery::needs_unlock_key(&restore).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e}",
                    a.restore.as_deref().unwrap_or(Path::new("")).display()
                )
            })? {
            read_secret_line("Enter the unlock key of the cluster the backup came from: ")?
        } else {
            String::new()
        };
        let r = self
            .local
            .clone()
            .init(InitRequest {
                advertise_addr: a.advertise_addr.unwrap_or_default(),
                cert_expiry_secs: a
                    .cert_expiry
                    .map(cert_expiry_secs)
                    .transpose()?
                    .unwrap_or(0),
                heartbeat_period_ms: a.heartbeat.map(|d| d.as_millis() as u64).unwrap_or(0),
                snapshot_interval: a.snapshot_interval,
                election_timeout_ms: a
                    .election_timeout
                    .map(|d| d.as_millis().max(1) as u64)
                    .unwrap_or(0),
                autolock: a.autolock,
                force_new_cluster: a.force_new_cluster,
                restore,
                unlock_key,
                default_addr_pool: a.default_addr_pool,
                default_addr_pool_mask_length: a.default_addr_pool_mask_length,
                data_path_port: a.data_path_port,
                data_path_addr: a.data_path_addr,
            })
            .await
            .map_err(status_err)?
            .into_inner();
        if a.force_new_cluster {
            println!(
                "Cluster re-formed: this node ({}) is its only manager now; the other managers were removed. Join or promote managers again to make it highly available.",
                r.node_id
            );
            return Ok(());
        }
        if a.restore.is_some() {
            println!(
                "Cluster restored from the backup: this node ({}) is its only manager. Workers that know this node's address reconnect by themselves.",
                r.node_id
            );
            return Ok(());
        }
        println!(
            "Cluster initialized: current node ({}) is now a manager.\n",
            r.node_id
        );
        let t = self
            .control
            .clone()
            .get_join_token(GetJoinTokenRequest {
                role: "worker".into(),
                ..Default::default()
            })
            .await
            .map_err(status_err)?
            .into_inner();
        println!("To add a worker to this cluster, run the following command:\n");
        println!("    {}\n", join_command(&t.token, &t.managers));
        if !r.unlock_key.is_empty() {
            print_unlock_key(&r.unlock_key);
        }
        Ok(())
    }

    pub async fn join(
        &self,
        token: String,
        remote: String,
        advertise: Option<String>,
        rejoin: bool,
        data_path_addr: Option<String>,
    ) -> Result<()> {
        let r = self
            .local
            .clone()
            .join(JoinRequest {
                token,
                remote_addr: remote,
                advertise_addr: advertise.unwrap_or_default(),
                rejoin,
                data_path_addr: data_path_addr.unwrap_or_default(),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        if rejoin {
            println!(
                "This node rejoined the cluster as {} ({}).",
                r.node_id, r.role
            );
        } else {
            println!("This node joined the cluster as a {}.", r.role);
        }
        Ok(())
    }

    pub async fn join_token(
        &self,
        role: Option<&str>,
        quiet: bool,
        rotate: bool,
        ttl: Option<Duration>,
        max_uses: Option<u64>,
        list: bool,
    ) -> Result<()> {
        if list {
            let t = self
                .control
                .clone()
                .get_join_token(GetJoinTokenRequest {
                    list: true,
                    ..Default::default()
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let mut rows = vec![["ID", "ROLE", "KIND", "EXPIRES", "USES LEFT"]
                .map(String::from)
                .to_vec()];
            for k in t.tokens {
                if role.is_some_and(|r| r != k.role) {
                    continue;
                }
                rows.push(vec![
                    k.id,
                    k.role,
                    k.kind,
                    if k.expires_at_unix == 0 {
                        "never".into()
                    } else {
                        fmt_time(k.expires_at_unix)
                    },
                    if k.max_uses == 0 {
                        "unlimited".into()
                    } else {
                        (k.max_uses - k.uses.min(k.max_uses)).to_string()
                    },
                ]);
            }
            print_table(&rows);
            return Ok(());
        }
        let Some(role) = role else {
            bail!("say which token: 'shoal join-token worker' or 'shoal join-token manager'");
        };
        if ttl.is_some_and(|d| d.as_secs() == 0) {
            bail!("--ttl must be at least 1s");
        }
        let req = GetJoinTokenRequest {
            role: role.into(),
            rotate,
            ttl_secs: ttl.map(|d| d.as_secs()).unwrap_or(0),
            max_uses: max_uses.unwrap_or(0),
            list: false,
        };
        let mut control = self.control.clone();
        let t = if rotate || ttl.is_some() || max_uses.is_some() {
            control.update_join_token(req).await
        } else {
            control.get_join_token(req).await
        }
        .map_err(status_err)?
        .into_inner();
        if quiet {
            println!("{}", t.token);
            return Ok(());
        }
        if rotate {
            println!("Successfully rotated {role} join token.\n");
        }
        let limits: Vec<String> = [
            ttl.map(|d| format!("valid for {}", humantime::format_duration(d))),
            max_uses.map(|n| format!("usable {n} time(s)")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if limits.is_empty() {
            println!("To add a {role} to this cluster, run the following command:\n");
        } else {
            println!(
                "To add a {role} to this cluster with this limited token ({}), run:\n",
                limits.join(", ")
            );
        }
        println!("    {}\n", join_command(&t.token, &t.managers));
        Ok(())
    }

    pub async fn update_cluster(&self, u: ClusterUpdate) -> Result<()> {
        let ClusterUpdate {
            cert_expiry,
            snapshot_interval,
            election_timeout,
            autolock,
            user_cert_expiry,
            audit_max_size,
            audit_keep,
            workload_cert_expiry,
        } = u;
        if cert_expiry.is_none()
            && snapshot_interval.is_none()
            && election_timeout.is_none()
            && autolock.is_none()
            && user_cert_expiry.is_none()
            && audit_max_size.is_none()
            && audit_keep.is_none()
            && workload_cert_expiry.is_none()
        {
            bail!("nothing to change: give --cert-expiry, --snapshot-interval, --election-timeout, --autolock, --user-cert-expiry, --workload-cert-expiry, --audit-max-size or --audit-keep");
        }
        if audit_keep == Some(0) {
            bail!("--audit-keep 0: keep at least 1 rotated file");
        }
        if snapshot_interval == Some(0) {
            bail!("--snapshot-interval 0: use at least 10 entries");
        }
        let info = self
            .control
            .clone()
            .update_cluster(shoal_proto::control::UpdateClusterRequest {
                cert_expiry_secs: cert_expiry.map(cert_expiry_secs).transpose()?.unwrap_or(0),
                snapshot_interval: snapshot_interval.unwrap_or(0),
                election_timeout_ms: election_timeout
                    .map(|d| d.as_millis().max(1) as u64)
                    .unwrap_or(0),
                autolock: autolock.map(|b| b.to_string()).unwrap_or_default(),
                rotate_unlock_key: false,
                user_cert_expiry_secs: user_cert_expiry.map(|d| d.as_secs().max(1)).unwrap_or(0),
                audit_max_bytes: audit_max_size.map(|b| b.max(1)).unwrap_or(0),
                audit_keep: audit_keep.unwrap_or(0),
                workload_cert_expiry_secs: workload_cert_expiry
                    .map(|d| d.as_secs().max(1))
                    .unwrap_or(0),
            })
            .await
            .map_err(status_err)?
            .into_inner();
        println!("Cluster updated.");
        if let Some(d) = cert_expiry {
            println!(
                "Certificates issued from now on live {}.",
                humantime::format_duration(d)
            );
        }
        if snapshot_interval.is_some() {
            println!("Snapshots every {} entries.", info.snapshot_interval);
        }
        if election_timeout.is_some() {
            println!(
                "Election timeout {}: each manager uses it from its next restart.",
                humantime::format_duration(Duration::from_millis(info.election_timeout_ms))
            );
        }
        match autolock {
            Some(true) if !info.unlock_key.is_empty() => print_unlock_key(&info.unlock_key),
            Some(true) => {
                println!("Autolock was on already: print its key with 'shoal unlock-key'.")
            }
            Some(false) => println!("Autolock is off: managers restart without an unlock key."),
            None => {}
        }
        Ok(())
    }

    pub(super) async fn get_unlock_key(&self) -> Result<String> {
        Ok(self
            .control
            .clone()
            .get_unlock_key(shoal_proto::control::GetUnlockKeyRequest {})
            .await
            .map_err(status_err)?
            .into_inner()
            .unlock_key)
    }

    /// `shoal backup FILE`: written 0600, since without autolock it opens by itself.
    pub async fn backup(&self, file: &Path) -> Result<()> {
        let b = self
            .control
            .clone()
            .get_backup(shoal_proto::control::GetBackupRequest {})
            .await
            .map_err(status_err)?
            .into_inner();
        shoal_pki::write_private(file, &b.data)
            .with_context(|| format!("cannot write the backup to {}", file.display()))?;
        println!(
            "Backup written to {} ({} bytes).",
            file.display(),
            b.data.len()
        );
        if b.needs_unlock_key {
            println!("It is encrypted with the cluster's unlock key: restoring it ('shoal init --restore') needs that key.");
        } else {
            println!("Autolock is off, so the backup holds its own key: anyone who can read the file can read the cluster's state, root CA key included. Keep it as safe as a manager's disk (or turn autolock on).");
        }
        Ok(())
    }

    /// `shoal unlock`: the key comes from standard input, never from the command line
    /// (where other users could read it in the process list).
    pub async fn unlock(&self) -> Result<()> {
        let key = read_secret_line("Enter the unlock key: ")?;
        self.local
            .clone()
            .unlock(shoal_proto::local::UnlockRequest { unlock_key: key })
            .await
            .map_err(status_err)?;
        println!("Manager unlocked.");
        Ok(())
    }

    pub async fn unlock_key(&self, quiet: bool, rotate: bool) -> Result<()> {
        let key = if rotate {
            self.control
                .clone()
                .update_cluster(shoal_proto::control::UpdateClusterRequest {
                    rotate_unlock_key: true,
                    ..Default::default()
                })
                .await
                .map_err(status_err)?
                .into_inner()
                .unlock_key
        } else {
            self.get_unlock_key().await?
        };
        if key.is_empty() {
            bail!("autolock is off on this cluster, so there is no unlock key: turn it on with 'shoal update --autolock=true'");
        }
        if quiet {
            println!("{key}");
        } else {
            if rotate {
                println!("Unlock key rotated. Managers need the new key from their next restart (one that was down during the rotation needs the previous key once).\n");
            }
            print_unlock_key(&key);
        }
        Ok(())
    }

    pub async fn leave(&self, force: bool) -> Result<()> {
        self.local
            .clone()
            .leave(LeaveRequest { force })
            .await
            .map_err(status_err)?;
        println!("Node left the cluster.");
        Ok(())
    }

    /// On a manager: every manager as (hostname, address, status), from its copy of the
    /// cluster state.
    pub(super) async fn manager_table(&self) -> Vec<(String, String, String)> {
        let Ok(r) = self.control().list_nodes(ListNodesRequest {}).await else {
            return Vec::new();
        };
        r.into_inner()
            .nodes
            .into_iter()
            .filter(|v| !v.manager_status.is_empty())
            .map(|v| {
                let n = v.node.unwrap_or_default();
                let host = n.description.map(|d| d.hostname).unwrap_or_default();
                (host, n.addr, v.manager_status)
            })
            .collect()
    }

    pub async fn info(&self, format: Option<&str>) -> Result<()> {
        let i = self.info_raw().await?;
        let table = if i.role == "manager" && i.state == "active" {
            self.manager_table().await
        } else {
            Vec::new()
        };
        if format == Some("json") {
            let statuses: Vec<serde_json::Value> = table
                .iter()
                .map(|(h, a, s)| json!({"Hostname": h, "Addr": a, "Status": s}))
                .collect();
            println!(
                "{}",
                json!({
                    "State": i.state, "Error": i.error, "NodeID": i.node_id, "ClusterID": i.cluster_id,
                    "Role": i.role, "Managers": i.managers, "ManagerStatus": statuses, "NodeAddr": i.node_addr,
                    "CertificateExpiry": fmt_time(i.cert_not_after_unix),
                    "CertificateSerial": i.cert_serial, "RootCADigest": i.root_ca_digest,
                    "CertificateRenewals": i.cert_renewals,
                    "CertificateRenewalError": i.cert_renewal_error,
                    "CertificateNextRenewal": fmt_time(i.cert_renewal_next_unix),
                    "RuntimeError": i.runtime_error,
                    "Raft": {
                        "AppliedIndex": i.raft_applied_index, "SnapshotIndex": i.raft_snapshot_index,
                        "SnapshotInterval": i.snapshot_interval, "ElectionTimeoutMs": i.election_timeout_ms,
                    },
                    "Autolock": i.autolock,
                })
            );
            return Ok(());
        }
        if !i.runtime_error.is_empty() {
            println!("Runtime Error: {}", i.runtime_error);
        }
        println!("Cluster: {}", i.state);
        if !i.error.is_empty() {
            println!(" Error: {}", i.error);
        }
        if i.state != "active" {
            return Ok(());
        }
        let left = i.cert_not_after_unix - time::OffsetDateTime::now_utc().unix_timestamp();
        println!(" Cluster ID: {}", i.cluster_id);
        println!(" Node ID: {}", i.node_id);
        println!(" Role: {}", i.role);
        println!(" Node Address: {}", i.node_addr);
        if table.is_empty() {
            println!(" Managers: {}", i.managers.len());
            for m in &i.managers {
                println!("  {m}");
            }
        } else {
            println!(" Managers: {}", table.len());
            for (host, addr, status) in &table {
                println!("  {host} {addr} {status}");
            }
        }
        println!(
            " Certificate Expiry: {} (in {})",
            fmt_time(i.cert_not_after_unix),
            humantime_short(left)
        );
        if i.cert_renewal_next_unix != 0 {
            println!(
                " Certificate Renewal: next at {} ({} so far)",
                fmt_time(i.cert_renewal_next_unix),
                i.cert_renewals
            );
        }
        if !i.cert_renewal_error.is_empty() {
            println!(" Certificate Renewal Error: {}", i.cert_renewal_error);
        }
        println!(" Root CA Digest: {}", i.root_ca_digest);
        if i.role == "manager" {
            println!(
                " Raft: applied index {}, last snapshot at {} (every {} entries), election timeout {}",
                i.raft_applied_index,
                i.raft_snapshot_index,
                i.snapshot_interval,
                humantime::format_duration(Duration::from_millis(i.election_timeout_ms))
            );
            println!(" Autolock: {}", if i.autolock { "on" } else { "off" });
        }
        Ok(())
    }
}

/// One line from standard input (prompting on a terminal): an unlock key.
fn read_secret_line(prompt: &str) -> Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read the unlock key from standard input")?;
    if line.trim().is_empty() {
        bail!("no unlock key given: enter it on standard input (e.g. 'shoal unlock < keyfile')");
    }
    Ok(line.trim().to_string())
}

fn print_unlock_key(key: &str) {
    println!("Autolock is on: a manager that restarts stays locked until you run 'shoal unlock' on it and enter this key:\n");
    println!("    {key}\n");
    println!("Keep it in a password manager. Without it, a restarted manager cannot read the cluster's state.");
}

fn join_command(token: &str, managers: &[String]) -> String {
    format!(
        "shoal join --token {token} {}",
        managers
            .first()
            .map(String::as_str)
            .unwrap_or("<manager-addr>")
    )
}

fn humantime_short(secs: i64) -> String {
    if secs <= 0 {
        return "expired".into();
    }
    let (d, h, m) = (secs / 86400, (secs % 86400) / 3600, (secs % 3600) / 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else {
        format!("{m}m{}s", secs % 60)
    }
}

/// `--cert-expiry` in whole seconds. Zero means "unset" on the wire, so a zero (or
/// sub-second) value is refused here, with the value the user gave.
fn cert_expiry_secs(d: Duration) -> Result<u64> {
    if d.as_secs() == 0 {
        bail!(
            "--cert-expiry {}: use between 1 minute and 20 years",
            humantime::format_duration(d)
        );
    }
    Ok(d.as_secs())
}

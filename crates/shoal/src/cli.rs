//! The CLI side: talking to the local daemon and printing what swarm-mode users expect.

use crate::daemon::{Daemon, DaemonOpts};
use anyhow::{bail, Context, Result};
use serde_json::json;
use shoal_proto::control::control_client::ControlClient;
use shoal_proto::control::{GetJoinTokenRequest, GetNodeRequest, ListNodesRequest, NodeView};
use shoal_proto::local::local_client::LocalClient;
use shoal_proto::local::{InfoRequest, InfoResponse, InitRequest, JoinRequest, LeaveRequest};
use shoal_proto::objects::{Availability, Node, NodeRole, NodeState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

pub async fn run_daemon(opts: DaemonOpts) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    if let Some(e) = shoal_agent::runtime::runc::runtime_error() {
        tracing::error!("this node cannot run containers until that is fixed: {e}");
    }
    // A known umask: image layers must keep the modes their archives give (a container
    // running as another user must be able to enter them). What is secret is made
    // private explicitly: the state dir is 0700, keys and the store are 0600.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    std::fs::create_dir_all(&opts.state_dir)
        .with_context(|| format!("cannot create state dir {}", opts.state_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&opts.state_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", opts.state_dir.display()))?;
    }
    let listener = crate::socket::bind(&opts.socket)?;
    let socket = opts.socket.clone();
    let daemon = Arc::new(Daemon::new(opts)?);
    if let Err(e) = daemon.resume().await {
        // Keep serving the socket so the operator can see the error with 'shoal info' and fix it.
        tracing::error!("cannot resume this node's cluster membership: {e:#}");
        daemon.set_damaged(format!("{e:#}")).await;
    }
    tracing::info!(socket = %socket.display(), "shoal daemon ready");
    {
        let d = daemon.clone();
        tokio::spawn(async move {
            loop {
                d.removed.notified().await;
                d.handle_removed().await;
            }
        });
        let d = daemon.clone();
        tokio::spawn(async move {
            loop {
                d.untrusted.notified().await;
                d.handle_untrusted().await;
            }
        });
        let d = daemon.clone();
        tokio::spawn(async move {
            loop {
                d.role_changed.notified().await;
                d.handle_role_change().await;
            }
        });
    }
    // Hand memory freed by bursts (image unpacking, many task starts) back to the system.
    tokio::spawn(async {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    });
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    crate::socket::serve(listener, daemon.clone(), stop).await?;
    tracing::info!("shutting down");
    daemon.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

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

pub struct Client {
    local: LocalClient<Channel>,
    pub(crate) control: ControlClient<ControlChannel>,
}

/// The control API's channel: answers marked as possibly stale (read from a manager
/// that has no leader or cannot reach a quorum) print a warning first.
pub(crate) type ControlChannel = tower::util::MapResponse<
    Channel,
    fn(
        tonic::codegen::http::Response<tonic::body::Body>,
    ) -> tonic::codegen::http::Response<tonic::body::Body>,
>;

fn warn_if_stale(
    resp: tonic::codegen::http::Response<tonic::body::Body>,
) -> tonic::codegen::http::Response<tonic::body::Body> {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Some(why) = resp
        .headers()
        .get(shoal_manager::routing::STALE_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            eprintln!("Warning: {why}: this answer comes from this manager's own copy of the cluster state and may be stale.");
        }
    }
    resp
}

pub(crate) fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

pub(crate) fn fmt_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
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

pub(crate) fn print_table(rows: &[Vec<String>]) {
    let cols = rows.first().map(|r| r.len()).unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == cols {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
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

impl Client {
    pub async fn connect(socket: &Path) -> Result<Client> {
        let path: PathBuf = socket.to_path_buf();
        let shown = path.display().to_string();
        let ch = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                }
            }))
            .await
            .map_err(|e| {
                let why = shoal_agent::connect::error_chain(&e);
                if why.contains("Permission denied") || why.contains("permission denied") {
                    anyhow::anyhow!(
                        "permission denied on the shoal daemon's socket {shown}: run as root or as a member of the socket's group"
                    )
                } else {
                    anyhow::anyhow!(
                        "cannot reach the shoal daemon at {shown} ({why}): is 'shoal daemon' running? (-H/SHOAL_HOST picks another socket)"
                    )
                }
            })?;
        // Big clusters make big listings: allow up to 256 MiB replies.
        Ok(Client {
            local: LocalClient::new(ch.clone()).max_decoding_message_size(256 << 20),
            control: ControlClient::new(tower::util::MapResponse::new(
                ch,
                warn_if_stale as fn(_) -> _,
            ))
            .max_decoding_message_size(256 << 20),
        })
    }

    pub(crate) fn local(&self) -> LocalClient<Channel> {
        self.local.clone()
    }
    pub(crate) fn control(&self) -> ControlClient<ControlChannel> {
        self.control.clone()
    }

    pub(crate) async fn self_id(&self) -> Result<String> {
        Ok(self.info_raw().await?.node_id)
    }

    async fn info_raw(&self) -> Result<InfoResponse> {
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

    pub async fn update_cluster(
        &self,
        cert_expiry: Option<Duration>,
        snapshot_interval: Option<u64>,
        election_timeout: Option<Duration>,
        autolock: Option<bool>,
    ) -> Result<()> {
        if cert_expiry.is_none()
            && snapshot_interval.is_none()
            && election_timeout.is_none()
            && autolock.is_none()
        {
            bail!("nothing to change: give --cert-expiry, --snapshot-interval, --election-timeout or --autolock");
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

    async fn get_unlock_key(&self) -> Result<String> {
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

    pub async fn revoke_certificate(&self, node: &str, serial: &str) -> Result<()> {
        self.control
            .clone()
            .revoke_certificate(shoal_proto::control::RevokeCertificateRequest {
                node: node.to_string(),
                serial: serial.to_string(),
            })
            .await
            .map_err(status_err)?;
        println!("Certificate {serial} of node {node} revoked.");
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
    async fn manager_table(&self) -> Vec<(String, String, String)> {
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

    pub async fn node_ls(&self, quiet: bool, format: Option<&str>) -> Result<()> {
        let me = self.info_raw().await?.node_id;
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
        let me = self.info_raw().await?.node_id;
        let mut out = Vec::new();
        for r in refs {
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

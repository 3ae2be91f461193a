//! `shoal`: the one binary. `shoal daemon` is the node; every other subcommand is a
//! client of the local daemon over its unix socket.

mod cli;
mod daemon;
mod netaddr;
mod process;
mod raft_transport;
mod renewal;
mod socket;
mod statedir;
mod tls;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_SOCKET: &str = "/run/shoal/shoal.sock";

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "A container orchestrator in one binary, secure by default"
)]
struct Cli {
    /// Daemon socket to talk to (unix:///path), given before the command as with
    /// docker's -H (after it, `--host` is a task's /etc/hosts entry).
    #[arg(short = 'H', long = "host", env = "SHOAL_HOST")]
    host: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not a KEY=VALUE label")),
    }
}

/// A size like 64MiB, 100MB or 1048576 (bytes).
fn parse_size(s: &str) -> Result<u64, String> {
    shoal_proto::options::parse_bytes(s)
        .and_then(|b| u64::try_from(b).map_err(|_| format!("{s:?} is not a size")))
}

pub(crate) fn parse_duration_pub(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 90d, 12h, 5s or 500ms: {e}"))
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node daemon.
    Daemon {
        #[arg(long, default_value = "/var/lib/shoal")]
        state_dir: PathBuf,
        #[arg(long, default_value = "0.0.0.0:4377")]
        listen_addr: SocketAddr,
        /// Address other nodes reach this node at (IP or IP:PORT).
        #[arg(long)]
        advertise_addr: Option<String>,
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// An engine label this node reports (KEY=VALUE, repeatable). Self-reported, so
        /// untrusted: placement on trusted labels uses 'node update --label-add'.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// The cgroup this node's containers go under.
        #[arg(long, default_value = "shoal")]
        cgroup_parent: String,
    },
    /// Create a new cluster with this node as its manager.
    Init {
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Life of node certificates (minimum 1m).
        #[arg(long, value_parser = parse_duration)]
        cert_expiry: Option<Duration>,
        /// Heartbeat period (past 250 nodes it grows a second per 250 nodes); a node
        /// missing 3 is Down.
        #[arg(long, value_parser = parse_duration)]
        dispatcher_heartbeat: Option<Duration>,
        /// Managers restart locked and need the unlock key ('shoal unlock'); the key is
        /// printed once.
        #[arg(long)]
        autolock: bool,
        /// Snapshot the cluster state, and compact the Raft log, every N entries.
        #[arg(long, default_value_t = 10_000)]
        snapshot_interval: u64,
        /// Raft election timeout: how long managers go without hearing a leader before
        /// electing another (default about 1 s).
        #[arg(long, value_parser = parse_duration)]
        election_timeout: Option<Duration>,
        /// On a manager that lost its quorum: make a one-manager cluster from its state,
        /// keeping services, workers and their certificates.
        #[arg(long, conflicts_with_all = ["restore", "autolock"])]
        force_new_cluster: bool,
        /// Start a one-manager cluster from a backup ('shoal backup'); its unlock key,
        /// if it needs one, is read from standard input.
        #[arg(long, value_name = "FILE")]
        restore: Option<PathBuf>,
        /// Where networks' subnets come from when they give none (repeatable; default
        /// 10.0.0.0/8).
        #[arg(long = "default-addr-pool", value_name = "CIDR")]
        default_addr_pool: Vec<String>,
        /// The prefix length of those subnets (default 24).
        #[arg(long = "default-addr-pool-mask-length", value_name = "N")]
        default_addr_pool_mask_length: Option<u32>,
        /// The UDP port every node's WireGuard engine uses (default 51820).
        #[arg(long = "data-path-port", value_name = "PORT")]
        data_path_port: Option<u32>,
        /// The address other nodes send this node's overlay traffic to (default: the
        /// advertised address).
        #[arg(long = "data-path-addr", value_name = "IP")]
        data_path_addr: Option<String>,
    },
    /// Write a backup of the cluster state (encrypted) while the cluster runs.
    Backup { file: PathBuf },
    /// Join a cluster as the token's role.
    Join {
        #[arg(long)]
        token: String,
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Rejoin with this node's expired identity: it keeps its node ID and labels.
        #[arg(long)]
        rejoin: bool,
        /// The address other nodes send this node's overlay traffic to (default: the
        /// advertised address).
        #[arg(long = "data-path-addr", value_name = "IP")]
        data_path_addr: Option<String>,
        /// A manager's address (IP or IP:PORT; port 4377 by default).
        remote_addr: String,
    },
    /// Print (or rotate) a join token, make a limited one, or list the live ones.
    JoinToken {
        /// Print the token only.
        #[arg(short, long)]
        quiet: bool,
        /// Replace the token (and cancel the role's limited tokens); the old one stops
        /// working for new joins.
        #[arg(long)]
        rotate: bool,
        /// Make a NEW token that expires after this long (e.g. 24h).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Make a NEW token that admits at most this many nodes.
        #[arg(long)]
        max_uses: Option<u64>,
        /// List the live tokens (never their secrets).
        #[arg(long)]
        list: bool,
        /// worker or manager
        role: Option<String>,
    },
    /// Log in to a cluster from this machine as a user, with the one-time enrollment
    /// token an administrator made ('shoal user create' or 'shoal user token').
    Login {
        #[arg(long)]
        token: String,
        /// A manager's address (IP, IP:PORT or a name; port 4377 by default).
        manager: String,
    },
    /// Leave the cluster.
    Leave {
        /// Leave even if this is the cluster's only manager (erases the cluster).
        #[arg(short, long)]
        force: bool,
    },
    /// Show the cluster's root CA and its rotation, or rotate it.
    Ca(cli::ca::CaArgs),
    /// Change cluster settings.
    Update {
        /// Life of certificates issued from now on (renewals included).
        #[arg(long, value_parser = parse_duration)]
        cert_expiry: Option<Duration>,
        /// Snapshot, and compact the Raft log, every N entries.
        #[arg(long)]
        snapshot_interval: Option<u64>,
        /// Raft election timeout (each manager uses it from its next restart).
        #[arg(long, value_parser = parse_duration)]
        election_timeout: Option<Duration>,
        /// Turn autolock on or off (--autolock=true|false).
        #[arg(long)]
        autolock: Option<bool>,
        /// Life of user certificates issued from now on (default 12h, at most 90d).
        #[arg(long, value_parser = parse_duration)]
        user_cert_expiry: Option<Duration>,
        /// The size at which each manager's audit log is rotated (default 64MiB), e.g. 128MiB.
        #[arg(long, value_parser = parse_size)]
        audit_max_size: Option<u64>,
        /// How many rotated audit log files each manager keeps (default 10).
        #[arg(long)]
        audit_keep: Option<u32>,
        /// Life of tasks' workload certificates issued from now on (default 1h, at most 30d).
        #[arg(long, value_parser = parse_duration)]
        workload_cert_expiry: Option<Duration>,
    },
    /// Unlock a manager that restarted locked: reads the unlock key from standard input.
    Unlock,
    /// Print the cluster's unlock key (autolock), or replace it.
    UnlockKey {
        /// Print the key only.
        #[arg(short, long)]
        quiet: bool,
        /// Replace the key; managers need the new one from their next restart.
        #[arg(long)]
        rotate: bool,
    },
    /// Read this manager's audit log: one record per control call it took.
    Audit {
        /// Only records since this time: a duration ago (10m, 2h) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only this user's calls.
        #[arg(long)]
        user: Option<String>,
        /// Only calls on this object (a name, an ID or an ID prefix).
        #[arg(long)]
        object: Option<String>,
        /// Go on printing records as they are written.
        #[arg(short, long)]
        follow: bool,
        /// "json": the records as the log holds them, one JSON object per line.
        #[arg(long)]
        format: Option<String>,
    },
    /// Show this node's cluster membership.
    Info {
        #[arg(long)]
        format: Option<String>,
    },
    /// Manage nodes.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Manage images on this node.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Registry credentials of this node.
    Registry {
        #[command(subcommand)]
        cmd: RegistryCmd,
    },
    /// Run and inspect single tasks (a debugging tool).
    Task {
        #[command(subcommand)]
        cmd: TaskCmd,
    },
    /// Manage services.
    Service {
        #[command(subcommand)]
        cmd: ServiceCmd,
    },
    /// Deploy and manage stacks: applications from compose files.
    Stack {
        #[command(subcommand)]
        cmd: cli::stack::StackCmd,
    },
    /// Manage networks.
    Network {
        #[command(subcommand)]
        cmd: cli::network::NetworkCmd,
    },
    /// Manage secrets: data for services, kept encrypted, delivered only to the tasks
    /// that use it, never shown again.
    Secret {
        #[command(subcommand)]
        cmd: cli::secret::SecretCmd,
    },
    /// Manage configs: like secrets, but not confidential (`inspect --pretty` shows them).
    Config {
        #[command(subcommand)]
        cmd: cli::secret::SecretCmd,
    },
    /// Manage named volumes: data on a node that outlives its tasks.
    Volume {
        #[command(subcommand)]
        cmd: cli::volume::VolumeCmd,
    },
    /// Manage users: who may work with the cluster from their own machines, in which
    /// role and on which stacks.
    User {
        #[command(subcommand)]
        cmd: cli::user::UserCmd,
    },
}

#[derive(Subcommand)]
enum ServiceCmd {
    /// Create a service and wait until it converges (unless -d).
    Create(Box<cli::service::CreateArgs>),
    /// Change a service and wait until it converges (unless -d).
    Update(Box<cli::service::UpdateArgs>),
    /// Set the replica count of services: SERVICE=N ...
    Scale {
        #[arg(required = true)]
        pairs: Vec<String>,
        #[arg(short = 'd', long)]
        detach: bool,
    },
    /// List services.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
    },
    /// List a service's tasks.
    Ps {
        service: String,
        /// desired-state=running|shutdown|..., node=NODE
        #[arg(short, long = "filter")]
        filters: Vec<String>,
        #[arg(long)]
        no_trunc: bool,
        #[arg(short, long)]
        quiet: bool,
        /// table (default) or json (one object per line).
        #[arg(long)]
        format: Option<String>,
    },
    /// Show services in detail.
    Inspect {
        #[arg(long)]
        pretty: bool,
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Go back to the service's previous spec, with its rollback settings, and wait
    /// until that is done (unless -d).
    Rollback {
        service: String,
        #[arg(short = 'd', long)]
        detach: bool,
    },
    /// Replace every task of the service, a few at a time under its update settings
    /// (a rolling restart), and wait until that is done (unless -d).
    Restart {
        service: String,
        #[arg(short = 'd', long)]
        detach: bool,
    },
    /// Remove services (their containers are stopped).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Run a command in one running task of the service (as `task exec`).
    Exec(Box<cli::exec::ExecArgs>),
    /// Every task's output, each line prefixed with its task.
    Logs {
        service: String,
        #[arg(short, long)]
        follow: bool,
        #[arg(long, short = 'n')]
        tail: Option<u64>,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Make an image from a root filesystem tarball.
    Import {
        /// The tarball (a path on this machine).
        file: PathBuf,
        /// NAME[:TAG]
        reference: String,
    },
    /// Load images from a 'docker save' or OCI layout archive.
    Load {
        #[arg(short, long)]
        input: PathBuf,
    },
    /// Pull an image from a registry (credentials from 'shoal registry login').
    Pull { reference: String },
    /// List images.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove images.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        references: Vec<String>,
    },
}

#[derive(Subcommand)]
enum RegistryCmd {
    /// Check credentials with a registry and save them on this node.
    Login {
        #[arg(short, long)]
        username: String,
        /// The password (or use --password-stdin).
        #[arg(short, long)]
        password: Option<String>,
        #[arg(long)]
        password_stdin: bool,
        /// host[:port] of the registry.
        registry: String,
    },
    /// Forget a registry's credentials.
    Logout { registry: String },
}

#[derive(Subcommand)]
enum TaskCmd {
    /// Run one container as a task on a node and wait until it runs.
    Run(Box<cli::task::TaskRunArgs>),
    /// List tasks.
    #[command(alias = "list")]
    Ls {
        /// Only tasks on this node.
        #[arg(long)]
        node: Option<String>,
        #[arg(short, long)]
        quiet: bool,
        #[arg(long)]
        no_trunc: bool,
    },
    /// Show tasks in detail (JSON).
    Inspect {
        #[arg(required = true)]
        tasks: Vec<String>,
    },
    /// Remove tasks (their containers are stopped).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        tasks: Vec<String>,
    },
    /// Run a command in a running task's container (its namespaces, cgroup, seccomp
    /// profile and capabilities), from any manager; exits with the command's code.
    Exec(Box<cli::exec::ExecArgs>),
    /// Print a task's output, from whichever node runs it.
    Logs {
        task: String,
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long, short = 'n')]
        tail: Option<u64>,
        #[arg(short, long)]
        timestamps: bool,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Change a node's availability or its (manager-set, trusted) labels.
    Update {
        /// active, pause or drain.
        #[arg(long)]
        availability: Option<String>,
        #[arg(long = "label-add", value_parser = cli::service::parse_kv)]
        label_add: Vec<(String, String)>,
        #[arg(long = "label-rm")]
        label_rm: Vec<String>,
        node: String,
    },
    /// Revoke one certificate of a node (its current one or one it superseded).
    RevokeCertificate { node: String, serial: String },
    /// List the tasks on a node (default: this one).
    Ps {
        node: Option<String>,
        #[arg(long)]
        no_trunc: bool,
    },
    /// Make running workers managers (each joins the managers' Raft group).
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers (they leave the managers' Raft group).
    Demote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove nodes from the cluster (a live node needs --force).
    #[command(alias = "remove")]
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// List nodes.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        /// "table" (default) or "json".
        #[arg(long)]
        format: Option<String>,
    },
    /// Show a node in detail.
    Inspect {
        /// Human-readable output instead of JSON.
        #[arg(long)]
        pretty: bool,
        #[arg(long)]
        format: Option<String>,
        /// ID, ID prefix or hostname ("self" for this node).
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

/// Where the CLI's calls go.
enum Target {
    /// A node's unix socket, as its local administrator.
    Socket(PathBuf),
    /// A manager over mTLS, as the user `shoal login` made this machine.
    Tcp(String),
}

fn target(host: Option<String>) -> anyhow::Result<Target> {
    match host {
        None => Ok(Target::Socket(PathBuf::from(DEFAULT_SOCKET))),
        Some(h) => {
            if let Some(p) = h.strip_prefix("unix://") {
                return Ok(Target::Socket(PathBuf::from(p)));
            }
            match h.strip_prefix("tcp://") {
                Some(a) if !a.is_empty() => Ok(Target::Tcp(a.trim_end_matches('/').to_string())),
                _ => anyhow::bail!(
                    "-H/SHOAL_HOST {h:?}: use unix:///path/to/shoal.sock or tcp://MANAGER[:4377]"
                ),
            }
        }
    }
}

/// The commands that work only on a node's own socket, not as a remote user.
fn node_only(cmd: &Cmd) -> Option<&'static str> {
    Some(match cmd {
        Cmd::Init { .. } => "init",
        Cmd::Join { .. } => "join",
        Cmd::Leave { .. } => "leave",
        Cmd::Info { .. } => "info",
        Cmd::Audit { .. } => "audit",
        Cmd::Unlock => "unlock",
        Cmd::Backup { .. } => "backup",
        Cmd::Image { .. } => "image",
        Cmd::Registry { .. } => "registry",
        Cmd::Volume { .. } => "volume",
        _ => return None,
    })
}

fn main() {
    // The per-container supervisor is this binary re-executed: no async runtime, no CLI.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(shoal_agent::runtime::supervisor::SUBCOMMAND) {
        shoal_agent::runtime::supervisor::main(&argv[2..]);
    }
    // So is the userspace WireGuard engine.
    if argv.get(1).map(String::as_str) == Some(shoal_agent::network::wg::SUBCOMMAND) {
        shoal_agent::network::wg::main(&argv[2..]);
    }
    shoal_pki::install_crypto_provider();
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Cmd::Daemon {
        state_dir,
        listen_addr,
        advertise_addr,
        socket,
        labels,
        cgroup_parent,
    } = cli.cmd
    {
        // Few malloc arenas: the daemon's threads are few and mostly idle, and each arena
        // keeps memory of its own.
        // SAFETY: mallopt only sets an allocator parameter.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
        // While still single-threaded: the zygote that forks container supervisors.
        if let Err(e) = shoal_agent::runtime::zygote::start() {
            eprintln!("warning: no supervisor zygote ({e}); supervisors will be re-executed");
        }
        // A small fixed pool: the daemon's work is I/O, and memory matters on big fleets.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(16)
            .enable_all()
            .build()?;
        return rt.block_on(process::run(daemon::DaemonOpts {
            state_dir,
            listen_addr,
            advertise_addr,
            socket,
            labels: labels.into_iter().collect(),
            cgroup_parent,
        }));
    }
    let target = target(cli.host)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // A login needs no daemon on this machine.
    if let Cmd::Login { token, manager } = &cli.cmd {
        return rt.block_on(cli::login::login(token, manager));
    }
    rt.block_on(async move {
        let c = match &target {
            Target::Socket(socket) => cli::Client::connect(socket).await?,
            Target::Tcp(addr) => {
                if let Some(what) = node_only(&cli.cmd) {
                    anyhow::bail!(
                        "'shoal {what}' works on a node's own socket (-H unix:///run/shoal/shoal.sock on that node), not through a manager at tcp://{addr}"
                    );
                }
                cli::Client::connect_tcp(addr).await?
            }
        };
        match cli.cmd {
            Cmd::Daemon { .. } | Cmd::Login { .. } => unreachable!("handled above"),
            Cmd::Init {
                advertise_addr,
                cert_expiry,
                dispatcher_heartbeat,
                autolock,
                snapshot_interval,
                election_timeout,
                force_new_cluster,
                restore,
                default_addr_pool,
                default_addr_pool_mask_length,
                data_path_port,
                data_path_addr,
            } => {
                c.init(cli::InitArgs {
                    data_path_port: data_path_port.unwrap_or(0),
                    data_path_addr: data_path_addr.unwrap_or_default(),
                    default_addr_pool,
                    default_addr_pool_mask_length: default_addr_pool_mask_length.unwrap_or(0),
                    advertise_addr,
                    cert_expiry,
                    heartbeat: dispatcher_heartbeat,
                    autolock,
                    snapshot_interval,
                    election_timeout,
                    force_new_cluster,
                    restore,
                })
                .await
            }
            Cmd::Backup { file } => c.backup(&file).await,
            Cmd::Join {
                token,
                advertise_addr,
                rejoin,
                remote_addr,
                data_path_addr,
            } => {
                c.join(token, remote_addr, advertise_addr, rejoin, data_path_addr)
                    .await
            }
            Cmd::JoinToken {
                quiet,
                rotate,
                ttl,
                max_uses,
                list,
                role,
            } => {
                c.join_token(role.as_deref(), quiet, rotate, ttl, max_uses, list)
                    .await
            }
            Cmd::Leave { force } => c.leave(force).await,
            Cmd::Info { format } => c.info(format.as_deref()).await,
            Cmd::Audit {
                since,
                user,
                object,
                follow,
                format,
            } => {
                c.audit(cli::audit::AuditArgs {
                    since,
                    user,
                    object,
                    follow,
                    format,
                })
                .await
            }
            Cmd::Update {
                cert_expiry,
                snapshot_interval,
                election_timeout,
                autolock,
                user_cert_expiry,
                audit_max_size,
                audit_keep,
                workload_cert_expiry,
            } => {
                c.update_cluster(cli::cluster::ClusterUpdate {
                    workload_cert_expiry,
                    cert_expiry,
                    snapshot_interval,
                    election_timeout,
                    autolock,
                    user_cert_expiry,
                    audit_max_size,
                    audit_keep,
                })
                .await
            }
            Cmd::Unlock => c.unlock().await,
            Cmd::UnlockKey { quiet, rotate } => c.unlock_key(quiet, rotate).await,
            Cmd::Ca(a) => c.ca(a).await,
            Cmd::Image { cmd } => match cmd {
                ImageCmd::Import { file, reference } => c.image_import(&file, &reference).await,
                ImageCmd::Load { input } => c.image_load(&input).await,
                ImageCmd::Pull { reference } => c.image_pull(&reference).await,
                ImageCmd::Ls { quiet } => c.image_ls(quiet).await,
                ImageCmd::Rm { references } => c.image_rm(&references).await,
            },
            Cmd::Registry { cmd } => match cmd {
                RegistryCmd::Login {
                    username,
                    password,
                    password_stdin,
                    registry,
                } => {
                    c.registry_login(&registry, &username, password, password_stdin)
                        .await
                }
                RegistryCmd::Logout { registry } => c.registry_logout(&registry).await,
            },
            Cmd::Task { cmd } => c.task(cmd).await,
            Cmd::Network { cmd } => c.network(cmd).await,
            Cmd::Volume { cmd } => c.volume(cmd).await,
            Cmd::Stack { cmd } => c.stack(cmd).await,
            Cmd::Secret { cmd } => c.secret("secret", cmd).await,
            Cmd::Config { cmd } => c.secret("config", cmd).await,
            Cmd::Service { cmd } => c.service(cmd).await,
            Cmd::Node { cmd } => c.node(cmd).await,
            Cmd::User { cmd } => c.user(cmd).await,
        }
    })
}

#[cfg(test)]
mod tests {
    /// Every command's flags are consistent (clap checks them only when a command is
    /// parsed: a clash in one subcommand would otherwise show first to a user).
    #[test]
    fn every_commands_flags_are_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}

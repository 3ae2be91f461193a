//! `shoal`: the one binary. `shoal daemon` is the node; every other subcommand is a
//! client of the local daemon over its unix socket.

mod cli;
mod daemon;
mod netaddr;
mod socket;
mod statedir;

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
    /// Daemon socket to talk to (unix:///path).
    #[arg(short = 'H', long = "host", env = "SHOAL_HOST", global = true)]
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
    },
    /// Create a new cluster with this node as its manager.
    Init {
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Life of node certificates (minimum 1m).
        #[arg(long, value_parser = parse_duration)]
        cert_expiry: Option<Duration>,
        /// Heartbeat period; a node missing 3 is Down.
        #[arg(long, value_parser = parse_duration)]
        dispatcher_heartbeat: Option<Duration>,
    },
    /// Join a cluster as the token's role.
    Join {
        #[arg(long)]
        token: String,
        #[arg(long)]
        advertise_addr: Option<String>,
        /// A manager's address (IP or IP:PORT; port 4377 by default).
        remote_addr: String,
    },
    /// Print (or rotate) a join token.
    JoinToken {
        /// Print the token only.
        #[arg(short, long)]
        quiet: bool,
        /// Replace the token; the old one stops working for new joins.
        #[arg(long)]
        rotate: bool,
        /// worker or manager
        role: String,
    },
    /// Leave the cluster.
    Leave {
        /// Leave even if this is the cluster's only manager (erases the cluster).
        #[arg(short, long)]
        force: bool,
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
}

#[derive(Subcommand)]
enum NodeCmd {
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

fn socket_path(host: Option<String>) -> anyhow::Result<PathBuf> {
    match host {
        None => Ok(PathBuf::from(DEFAULT_SOCKET)),
        Some(h) => match h.strip_prefix("unix://") {
            Some(p) => Ok(PathBuf::from(p)),
            None => anyhow::bail!("-H/SHOAL_HOST {h:?}: only unix:///path sockets are supported"),
        },
    }
}

fn main() {
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
    } = cli.cmd
    {
        // A small fixed pool: the daemon's work is I/O, and memory matters on big fleets.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        return rt.block_on(cli::run_daemon(daemon::DaemonOpts {
            state_dir,
            listen_addr,
            advertise_addr,
            socket,
            labels: labels.into_iter().collect(),
        }));
    }
    let socket = socket_path(cli.host)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let c = cli::Client::connect(&socket).await?;
        match cli.cmd {
            Cmd::Daemon { .. } => unreachable!("handled above"),
            Cmd::Init {
                advertise_addr,
                cert_expiry,
                dispatcher_heartbeat,
            } => {
                c.init(advertise_addr, cert_expiry, dispatcher_heartbeat)
                    .await
            }
            Cmd::Join {
                token,
                advertise_addr,
                remote_addr,
            } => c.join(token, remote_addr, advertise_addr).await,
            Cmd::JoinToken {
                quiet,
                rotate,
                role,
            } => c.join_token(&role, quiet, rotate).await,
            Cmd::Leave { force } => c.leave(force).await,
            Cmd::Info { format } => c.info(format.as_deref()).await,
            Cmd::Node { cmd } => match cmd {
                NodeCmd::Ls { quiet, format } => c.node_ls(quiet, format.as_deref()).await,
                NodeCmd::Inspect {
                    pretty,
                    format,
                    nodes,
                } => c.node_inspect(&nodes, pretty, format.as_deref()).await,
            },
        }
    })
}

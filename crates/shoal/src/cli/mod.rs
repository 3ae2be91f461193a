//! The CLI side: talking to the local daemon and printing what swarm-mode users expect.

pub mod audit;
pub mod ca;
pub mod cluster;
pub mod exec;
pub mod login;
pub mod network;
pub mod node;
pub mod policy;
pub mod secret;
pub mod security;
pub mod service;
pub mod spec_flags;
pub mod stack;
pub mod table;
pub mod task;
pub mod user;
pub mod volume;

pub use cluster::InitArgs;

use anyhow::{bail, Context, Result};
use serde_json::json;
use shoal_proto::control::control_client::ControlClient;
use shoal_proto::control::{GetJoinTokenRequest, GetNodeRequest, ListNodesRequest, NodeView};
use shoal_proto::local::local_client::LocalClient;
use shoal_proto::local::{InfoRequest, InfoResponse, InitRequest, JoinRequest, LeaveRequest};
use shoal_proto::objects::{Availability, Node, NodeRole, NodeState};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

pub struct Client {
    local: LocalClient<Channel>,
    pub(crate) control: ControlClient<ControlChannel>,
    /// A user's CLI talking to a manager over mTLS: there is no "this node".
    remote: bool,
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

/// A failed call as the user reads it: the manager's message, and the audit ID under
/// which the manager recorded the call (to find it with 'shoal audit').
pub(crate) fn status_err(s: tonic::Status) -> anyhow::Error {
    match s
        .metadata()
        .get(shoal_manager::audit::AUDIT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        Some(id) => anyhow::anyhow!("{} (audit ID {id})", s.message()),
        None => anyhow::anyhow!("{}", s.message()),
    }
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
        Ok(Client::over(ch, false))
    }

    /// A user's CLI: a manager at `addr` over mTLS, with the certificate of `shoal login`.
    pub async fn connect_tcp(addr: &str) -> Result<Client> {
        Ok(Client::over(login::remote_channel(addr).await?, true))
    }

    fn over(ch: Channel, remote: bool) -> Client {
        // Big clusters make big listings: allow up to 256 MiB replies.
        Client {
            local: LocalClient::new(ch.clone()).max_decoding_message_size(256 << 20),
            control: ControlClient::new(tower::util::MapResponse::new(
                ch,
                warn_if_stale as fn(_) -> _,
            ))
            .max_decoding_message_size(256 << 20),
            remote,
        }
    }

    pub(crate) fn local(&self) -> LocalClient<Channel> {
        self.local.clone()
    }

    pub(crate) fn control(&self) -> ControlClient<ControlChannel> {
        self.control.clone()
    }

    /// Every network the cluster has.
    pub(crate) async fn networks(&self) -> Result<Vec<shoal_proto::objects::Network>> {
        Ok(self
            .control()
            .list_networks(shoal_proto::control::ListNetworksRequest {})
            .await
            .map_err(status_err)?
            .into_inner()
            .networks)
    }

    /// This node's ID; none for a user's remote CLI.
    pub(crate) async fn self_id(&self) -> Result<String> {
        if self.remote {
            return Ok(String::new());
        }
        Ok(self.info_raw().await?.node_id)
    }
}

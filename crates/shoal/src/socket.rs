//! The local admin API on the node's unix socket (mode 0660: root and the socket's
//! group). Whoever can open the socket administers this node, like Docker's.

use crate::daemon::{Daemon, UserError};
use anyhow::{bail, Context, Result};
use shoal_proto::control::control_server::{Control, ControlServer};
use shoal_proto::control::{
    ClusterInfo, GetClusterInfoRequest, GetJoinTokenRequest, GetJoinTokenResponse, GetNodeRequest,
    ListNodesRequest, ListNodesResponse, NodeView,
};
use shoal_proto::local::local_server::{Local, LocalServer};
use shoal_proto::local::{
    InfoRequest, InfoResponse, InitRequest, InitResponse, JoinRequest, JoinResponse, LeaveRequest,
    LeaveResponse,
};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tonic::{Request, Response, Status};

fn status(e: anyhow::Error) -> Status {
    if let Some(u) = e.downcast_ref::<UserError>() {
        return Status::new(u.0, u.1.clone());
    }
    Status::internal(format!("{e:#}"))
}

pub struct LocalApi(pub Arc<Daemon>);

#[tonic::async_trait]
impl Local for LocalApi {
    async fn init(&self, req: Request<InitRequest>) -> Result<Response<InitResponse>, Status> {
        self.0
            .init(req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        self.0
            .join(req.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }
    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        self.0
            .leave(req.into_inner().force)
            .await
            .map(|_| Response::new(LeaveResponse {}))
            .map_err(status)
    }
    async fn info(&self, _req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(self.0.info().await))
    }
}

/// The control API for the local administrator, answered by this node's manager.
pub struct LocalControl(pub Arc<Daemon>);

#[tonic::async_trait]
impl Control for LocalControl {
    async fn list_nodes(
        &self,
        _req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        let c = self.0.control().await?;
        Ok(Response::new(ListNodesResponse {
            nodes: c.list_nodes()?,
        }))
    }
    async fn get_node(&self, req: Request<GetNodeRequest>) -> Result<Response<NodeView>, Status> {
        let c = self.0.control().await?;
        Ok(Response::new(c.get_node(&req.into_inner().reference)?))
    }
    async fn get_join_token(
        &self,
        req: Request<GetJoinTokenRequest>,
    ) -> Result<Response<GetJoinTokenResponse>, Status> {
        let c = self.0.control().await?;
        let r = req.into_inner();
        Ok(Response::new(GetJoinTokenResponse {
            token: c.join_token(&r.role, r.rotate).await?,
            managers: c.managers()?,
        }))
    }
    async fn get_cluster_info(
        &self,
        _req: Request<GetClusterInfoRequest>,
    ) -> Result<Response<ClusterInfo>, Status> {
        let c = self.0.control().await?;
        Ok(Response::new(c.cluster_info()?))
    }
}

/// Binds the socket, refusing if another daemon answers on it.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            // Traversable by the socket's group; the socket itself is 0660.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "another shoal daemon is already listening on {}",
            path.display()
        );
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => bail!(
            "{} exists and is not a socket: remove it or pick another --socket",
            path.display()
        ),
        Err(_) => {}
    }
    let l = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(l)
}

pub async fn serve(
    listener: tokio::net::UnixListener,
    daemon: Arc<Daemon>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(LocalServer::new(LocalApi(daemon.clone())))
        .add_service(ControlServer::new(LocalControl(daemon)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

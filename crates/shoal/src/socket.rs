//! The local admin API on the node's unix socket (mode 0660: root and the socket's
//! group). Whoever can open the socket administers this node, like Docker's.

use crate::daemon::{Daemon, UserError};
use anyhow::{bail, Context, Result};
use shoal_agent::image::{login, registry_of, Credentials, ImageError, ImageInfo};
use shoal_agent::volumes::{VolumeError, VolumeInfo};
use shoal_proto::local::local_server::{Local, LocalServer};
use shoal_proto::local::{
    Image, ImageImportRequest, ImageList, ImageListRequest, ImageLoadRequest, ImagePullRequest,
    ImageRemoveRequest, ImageRemoveResponse, InfoRequest, InfoResponse, InitRequest, InitResponse,
    JoinRequest, JoinResponse, LeaveRequest, LeaveResponse, RegistryLoginRequest,
    RegistryLoginResponse, RegistryLogoutRequest, Volume, VolumeCreateRequest,
    VolumeInspectRequest, VolumeList, VolumeListRequest, VolumePruneRequest, VolumePruneResponse,
    VolumeRemoveRequest, VolumeRemoveResponse,
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
    async fn unlock(
        &self,
        req: Request<shoal_proto::local::UnlockRequest>,
    ) -> Result<Response<shoal_proto::local::UnlockResponse>, Status> {
        self.0
            .unlock(&req.into_inner().unlock_key)
            .await
            .map(|_| Response::new(shoal_proto::local::UnlockResponse {}))
            .map_err(status)
    }
    async fn info(&self, _req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let mut info = self.0.info().await;
        info.runtime_error = shoal_agent::runtime::runc::runtime_error().unwrap_or_default();
        Ok(Response::new(info))
    }

    async fn image_import(
        &self,
        req: Request<ImageImportRequest>,
    ) -> Result<Response<Image>, Status> {
        let r = req.into_inner();
        let images = self.0.images.clone();
        let info = blocking(move || images.import_rootfs(Path::new(&r.path), &r.reference)).await?;
        Ok(Response::new(image_msg(&info)))
    }
    async fn image_load(
        &self,
        req: Request<ImageLoadRequest>,
    ) -> Result<Response<ImageList>, Status> {
        let r = req.into_inner();
        let images = self.0.images.clone();
        let list = blocking(move || images.load_archive(Path::new(&r.path))).await?;
        Ok(Response::new(ImageList {
            images: list.iter().map(image_msg).collect(),
        }))
    }
    async fn image_pull(&self, req: Request<ImagePullRequest>) -> Result<Response<Image>, Status> {
        let r = req.into_inner();
        let creds = self.0.creds.get(&registry_of(&r.reference));
        let info = self
            .0
            .images
            .pull(&r.reference, creds.as_ref())
            .await
            .map_err(image_status)?;
        Ok(Response::new(image_msg(&info)))
    }
    async fn image_list(
        &self,
        _req: Request<ImageListRequest>,
    ) -> Result<Response<ImageList>, Status> {
        let images = self.0.images.clone();
        let list = blocking(move || images.list()).await?;
        Ok(Response::new(ImageList {
            images: list.iter().map(image_msg).collect(),
        }))
    }
    async fn image_remove(
        &self,
        req: Request<ImageRemoveRequest>,
    ) -> Result<Response<ImageRemoveResponse>, Status> {
        let r = req.into_inner();
        let images = self.0.images.clone();
        blocking(move || images.remove(&r.reference)).await?;
        Ok(Response::new(ImageRemoveResponse {}))
    }
    async fn registry_login(
        &self,
        req: Request<RegistryLoginRequest>,
    ) -> Result<Response<RegistryLoginResponse>, Status> {
        let r = req.into_inner();
        let c = Credentials {
            username: r.username,
            password: r.password,
        };
        login(&r.registry, &c).await.map_err(image_status)?;
        self.0.creds.set(&r.registry, &c).map_err(image_status)?;
        Ok(Response::new(RegistryLoginResponse {}))
    }
    async fn registry_logout(
        &self,
        req: Request<RegistryLogoutRequest>,
    ) -> Result<Response<RegistryLoginResponse>, Status> {
        self.0
            .creds
            .remove(&req.into_inner().registry)
            .map_err(image_status)?;
        Ok(Response::new(RegistryLoginResponse {}))
    }
    async fn volume_create(
        &self,
        req: Request<VolumeCreateRequest>,
    ) -> Result<Response<Volume>, Status> {
        let r = req.into_inner();
        let v = self.0.volumes.clone();
        let labels = r.labels.into_iter().collect();
        let info = volume_blocking(move || v.create(&r.name, &labels)).await?;
        Ok(Response::new(volume_msg(info, false)))
    }
    async fn volume_list(
        &self,
        _req: Request<VolumeListRequest>,
    ) -> Result<Response<VolumeList>, Status> {
        let v = self.0.volumes.clone();
        let list = volume_blocking(move || Ok(v.list())).await?;
        Ok(Response::new(VolumeList {
            volumes: list.into_iter().map(|i| volume_msg(i, false)).collect(),
        }))
    }
    async fn volume_inspect(
        &self,
        req: Request<VolumeInspectRequest>,
    ) -> Result<Response<Volume>, Status> {
        let name = req.into_inner().name;
        let v = self.0.volumes.clone();
        let info = volume_blocking(move || v.inspect(&name)).await?;
        Ok(Response::new(volume_msg(info, true)))
    }
    async fn volume_remove(
        &self,
        req: Request<VolumeRemoveRequest>,
    ) -> Result<Response<VolumeRemoveResponse>, Status> {
        let name = req.into_inner().name;
        let v = self.0.volumes.clone();
        volume_blocking(move || v.remove(&name)).await?;
        Ok(Response::new(VolumeRemoveResponse {}))
    }
    async fn volume_prune(
        &self,
        req: Request<VolumePruneRequest>,
    ) -> Result<Response<VolumePruneResponse>, Status> {
        let all = req.into_inner().all;
        let v = self.0.volumes.clone();
        let (removed, reclaimed_bytes) = volume_blocking(move || Ok(v.prune(all))).await?;
        Ok(Response::new(VolumePruneResponse {
            removed,
            reclaimed_bytes,
        }))
    }

    type AuditStream =
        tokio_stream::wrappers::ReceiverStream<Result<shoal_proto::local::AuditRecord, Status>>;

    async fn audit(
        &self,
        req: Request<shoal_proto::local::AuditRequest>,
    ) -> Result<Response<Self::AuditStream>, Status> {
        let r = req.into_inner();
        let dir = self.0.opts.state_dir.join("audit");
        if !dir.join(shoal_manager::audit::FILE).exists() {
            return Err(Status::failed_precondition(
                "this node keeps no audit log: it has never been a manager; run 'shoal audit' on a manager",
            ));
        }
        let filter = shoal_manager::audit::Filter {
            since_unix_ms: r.since_unix_ms,
            user: r.user,
            object: r.object,
        };
        let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<String>(256);
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        std::thread::spawn(move || {
            if let Err(e) = shoal_manager::audit::read(&dir, &filter, r.follow, &lines_tx) {
                tracing::warn!(error = %e, "reading the audit log");
            }
        });
        tokio::spawn(async move {
            while let Some(line) = lines.recv().await {
                let rec = shoal_proto::local::AuditRecord { line };
                if tx.send(Ok(rec)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}

async fn volume_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VolumeError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| match &e {
            VolumeError::NotFound(_) => Status::not_found(e.to_string()),
            VolumeError::Invalid(_) => Status::invalid_argument(e.to_string()),
            VolumeError::InUse(_) => Status::failed_precondition(e.to_string()),
            VolumeError::Io { .. } => Status::internal(e.to_string()),
        })
}

/// A volume for the CLI; `sized`: with the bytes it holds (inspect walks it).
fn volume_msg(i: VolumeInfo, sized: bool) -> Volume {
    Volume {
        size: match sized {
            true => shoal_agent::volumes::dir_size(&i.mountpoint),
            false => 0,
        },
        name: i.name,
        labels: i.labels.into_iter().collect(),
        created_at_unix: i.created_at_unix,
        mountpoint: i.mountpoint.display().to_string(),
        anonymous: i.anonymous,
        used_by: i.used_by,
    }
}

fn image_status(e: ImageError) -> Status {
    match &e {
        ImageError::NotFound(_) => Status::not_found(e.to_string()),
        ImageError::Unauthorized(_) => Status::permission_denied(e.to_string()),
        _ => Status::failed_precondition(e.to_string()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(image_status)
}

fn image_msg(i: &ImageInfo) -> Image {
    Image {
        id: i.id.clone(),
        references: i.references.clone(),
        size: i.size,
        created_unix: i.created_unix,
        layers: i.layers.len() as u32,
    }
}

/// The control API on the unix socket: requests go to this node's manager's router,
/// which marks them as coming from the local administrator.
#[derive(Clone)]
pub struct LocalControl(pub Arc<Daemon>);

type ControlGrpc =
    shoal_proto::control::control_server::ControlServer<shoal_manager::controlapi::ControlService>;

impl tonic::server::NamedService for LocalControl {
    const NAME: &'static str = <ControlGrpc as tonic::server::NamedService>::NAME;
}

impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for LocalControl {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        let daemon = self.0.clone();
        Box::pin(async move {
            Ok(match daemon.control_router().await {
                Ok(router) => router.serve_local(req).await,
                Err(status) => status.into_http(),
            })
        })
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
        .add_service(LocalControl(daemon))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

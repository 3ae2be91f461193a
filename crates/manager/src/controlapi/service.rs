//! The control API as a gRPC service: each call's caller is checked here, once, before
//! any handler runs.

use super::{ControlApi, ControlError};
use crate::bootstrap::load_cluster;
use crate::security::auth::authorize;
use shoal_pki::Role;
use shoal_proto::control::control_server::Control;
use shoal_proto::control::{
    ClusterInfo, CreateServiceRequest, CreateTaskRequest, GetClusterInfoRequest,
    GetJoinTokenRequest, GetJoinTokenResponse, GetNodeRequest, GetServiceRequest, GetTaskRequest,
    ListNodesRequest, ListNodesResponse, ListServicesRequest, ListServicesResponse,
    ListTasksRequest, ListTasksResponse, NodeView, RemoveNodeRequest, RemoveNodeResponse,
    RemoveServiceRequest, RemoveServiceResponse, RemoveTaskRequest, RemoveTaskResponse,
    TaskLogsMessage, TaskLogsRequest, UpdateNodeRequest, UpdateServiceRequest,
};
use shoal_proto::objects::{Service, Task};
use tonic::{Request, Response, Status};

/// The control API: one implementation, whatever the transport. Its callers are a
/// manager over mTLS (checked like every node call) or the node's local administrator on
/// the unix socket.
pub struct ControlService(pub ControlApi);

const MANAGERS: &[Role] = &[Role::Manager];

/// Marks a request that came in on the node's unix socket. Only the socket's server
/// inserts it; nothing that arrives over the network can.
#[derive(Clone, Copy, Debug)]
pub struct LocalAdmin;

/// Who is calling the control API.
pub enum ControlCaller {
    /// Whoever may open the node's unix socket (root or the socket's group).
    LocalAdmin,
    /// A manager node, verified and checked like every node call.
    Node(crate::security::auth::Caller),
    /// The local administrator of another manager, whose call that manager (a follower)
    /// forwarded to this one; `by` is the forwarding manager, checked like any caller.
    Forwarded { by: crate::security::auth::Caller },
}

/// The header a follower adds when it forwards its local administrator's call to the
/// leader. Believed only from a manager certificate, and never forwarded again.
pub const FORWARDED_HEADER: &str = "shoal-forwarded-for";

/// The caller of a control API request: the local administrator, or a manager whose
/// certificate passes every check.
fn control_caller<T>(req: &Request<T>, call: &'static str) -> Result<ControlCaller, Status> {
    if req.extensions().get::<LocalAdmin>().is_some() {
        return Ok(ControlCaller::LocalAdmin);
    }
    let caller = authorize(req, call, MANAGERS)?;
    if req.metadata().get(FORWARDED_HEADER).is_some() {
        tracing::debug!(by = %caller.node_id(), call, "a call forwarded by a follower");
        return Ok(ControlCaller::Forwarded { by: caller });
    }
    Ok(ControlCaller::Node(caller))
}

pub type TaskLogsStream = tokio_stream::wrappers::ReceiverStream<Result<TaskLogsMessage, Status>>;

#[tonic::async_trait]
impl Control for ControlService {
    type TaskLogsStream = TaskLogsStream;

    async fn create_service(
        &self,
        req: Request<CreateServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        control_caller(&req, "CreateService")?;
        Ok(Response::new(
            self.0
                .create_service(req.into_inner().spec.unwrap_or_default())
                .await?,
        ))
    }
    async fn update_service(
        &self,
        req: Request<UpdateServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        control_caller(&req, "UpdateService")?;
        Ok(Response::new(
            self.0.update_service(req.into_inner()).await?,
        ))
    }
    async fn get_service(
        &self,
        req: Request<GetServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        control_caller(&req, "GetService")?;
        Ok(Response::new(
            self.0.get_service(&req.into_inner().reference)?.value,
        ))
    }
    async fn list_services(
        &self,
        req: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        control_caller(&req, "ListServices")?;
        Ok(Response::new(self.0.list_services()?))
    }
    async fn remove_service(
        &self,
        req: Request<RemoveServiceRequest>,
    ) -> Result<Response<RemoveServiceResponse>, Status> {
        control_caller(&req, "RemoveService")?;
        self.0.remove_service(&req.into_inner().reference).await?;
        Ok(Response::new(RemoveServiceResponse {}))
    }
    async fn create_network(
        &self,
        req: Request<shoal_proto::control::CreateNetworkRequest>,
    ) -> Result<Response<shoal_proto::objects::Network>, Status> {
        control_caller(&req, "CreateNetwork")?;
        Ok(Response::new(
            self.0
                .create_network(req.into_inner().spec.unwrap_or_default())
                .await?,
        ))
    }
    async fn list_networks(
        &self,
        req: Request<shoal_proto::control::ListNetworksRequest>,
    ) -> Result<Response<shoal_proto::control::ListNetworksResponse>, Status> {
        control_caller(&req, "ListNetworks")?;
        Ok(Response::new(shoal_proto::control::ListNetworksResponse {
            networks: self.0.list_networks()?,
        }))
    }
    async fn get_network(
        &self,
        req: Request<shoal_proto::control::GetNetworkRequest>,
    ) -> Result<Response<shoal_proto::objects::Network>, Status> {
        control_caller(&req, "GetNetwork")?;
        Ok(Response::new(
            self.0.get_network(&req.into_inner().reference)?,
        ))
    }
    async fn remove_network(
        &self,
        req: Request<shoal_proto::control::RemoveNetworkRequest>,
    ) -> Result<Response<shoal_proto::control::RemoveNetworkResponse>, Status> {
        control_caller(&req, "RemoveNetwork")?;
        self.0.remove_network(&req.into_inner().reference).await?;
        Ok(Response::new(
            shoal_proto::control::RemoveNetworkResponse {},
        ))
    }
    async fn create_secret(
        &self,
        req: Request<shoal_proto::control::CreateSecretRequest>,
    ) -> Result<Response<shoal_proto::control::SecretView>, Status> {
        control_caller(&req, "CreateSecret")?;
        let r = req.into_inner();
        let kind = crate::controlapi::secrets::Kind::parse(&r.kind)?;
        Ok(Response::new(
            self.0
                .create_secret(kind, r.spec.unwrap_or_default(), r.data)
                .await?,
        ))
    }
    async fn update_secret(
        &self,
        req: Request<shoal_proto::control::UpdateSecretRequest>,
    ) -> Result<Response<shoal_proto::control::SecretView>, Status> {
        control_caller(&req, "UpdateSecret")?;
        let r = req.into_inner();
        let kind = crate::controlapi::secrets::Kind::parse(&r.kind)?;
        Ok(Response::new(
            self.0.update_secret(kind, &r.reference, r.data).await?,
        ))
    }
    async fn list_secrets(
        &self,
        req: Request<shoal_proto::control::ListSecretsRequest>,
    ) -> Result<Response<shoal_proto::control::ListSecretsResponse>, Status> {
        control_caller(&req, "ListSecrets")?;
        let kind = crate::controlapi::secrets::Kind::parse(&req.get_ref().kind)?;
        Ok(Response::new(shoal_proto::control::ListSecretsResponse {
            secrets: self.0.list_secrets(kind)?,
        }))
    }
    async fn get_secret(
        &self,
        req: Request<shoal_proto::control::GetSecretRequest>,
    ) -> Result<Response<shoal_proto::control::SecretView>, Status> {
        control_caller(&req, "GetSecret")?;
        let r = req.into_inner();
        let kind = crate::controlapi::secrets::Kind::parse(&r.kind)?;
        Ok(Response::new(self.0.get_secret(kind, &r.reference)?))
    }
    async fn remove_secret(
        &self,
        req: Request<shoal_proto::control::RemoveSecretRequest>,
    ) -> Result<Response<shoal_proto::control::RemoveSecretResponse>, Status> {
        control_caller(&req, "RemoveSecret")?;
        let r = req.into_inner();
        let kind = crate::controlapi::secrets::Kind::parse(&r.kind)?;
        self.0.remove_secret(kind, &r.reference).await?;
        Ok(Response::new(shoal_proto::control::RemoveSecretResponse {}))
    }
    async fn update_node(
        &self,
        req: Request<UpdateNodeRequest>,
    ) -> Result<Response<NodeView>, Status> {
        control_caller(&req, "UpdateNode")?;
        Ok(Response::new(self.0.update_node(req.into_inner()).await?))
    }
    async fn update_cluster(
        &self,
        req: Request<shoal_proto::control::UpdateClusterRequest>,
    ) -> Result<Response<ClusterInfo>, Status> {
        control_caller(&req, "UpdateCluster")?;
        Ok(Response::new(
            self.0.update_cluster(req.into_inner()).await?,
        ))
    }
    async fn get_backup(
        &self,
        req: Request<shoal_proto::control::GetBackupRequest>,
    ) -> Result<Response<shoal_proto::control::GetBackupResponse>, Status> {
        control_caller(&req, "GetBackup")?;
        let store = self.0.store.clone();
        let (data, needs_unlock_key) =
            tokio::task::spawn_blocking(move || crate::recovery::backup(&store))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| match e {
                    crate::recovery::RecoveryError::Store(s) => Status::from(ControlError::from(s)),
                    other => Status::failed_precondition(other.to_string()),
                })?;
        Ok(Response::new(shoal_proto::control::GetBackupResponse {
            data,
            needs_unlock_key,
        }))
    }
    async fn get_unlock_key(
        &self,
        req: Request<shoal_proto::control::GetUnlockKeyRequest>,
    ) -> Result<Response<shoal_proto::control::GetUnlockKeyResponse>, Status> {
        control_caller(&req, "GetUnlockKey")?;
        let c = load_cluster(&self.0.store)
            .map_err(ControlError::from)?
            .value;
        let unlock_key = shoal_store::UnlockKey::from_bytes(&c.unlock_key)
            .filter(|_| c.spec.as_ref().is_some_and(|s| s.autolock))
            .map(|k| k.to_human())
            .unwrap_or_default();
        Ok(Response::new(shoal_proto::control::GetUnlockKeyResponse {
            unlock_key,
        }))
    }
    async fn revoke_certificate(
        &self,
        req: Request<shoal_proto::control::RevokeCertificateRequest>,
    ) -> Result<Response<shoal_proto::control::RevokeCertificateResponse>, Status> {
        control_caller(&req, "RevokeCertificate")?;
        let r = req.into_inner();
        self.0.revoke_certificate(&r.node, &r.serial).await?;
        Ok(Response::new(
            shoal_proto::control::RevokeCertificateResponse {},
        ))
    }
    async fn get_ca(
        &self,
        req: Request<shoal_proto::control::GetCaRequest>,
    ) -> Result<Response<shoal_proto::control::CaStatus>, Status> {
        control_caller(&req, "GetCa")?;
        Ok(Response::new(self.0.ca_status()?))
    }
    async fn rotate_ca(
        &self,
        req: Request<shoal_proto::control::RotateCaRequest>,
    ) -> Result<Response<shoal_proto::control::CaStatus>, Status> {
        control_caller(&req, "RotateCa")?;
        let r = req.into_inner();
        Ok(Response::new(
            self.0.rotate_ca(r.force, &r.cert_pem, &r.key_pem).await?,
        ))
    }
    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        control_caller(&req, "RemoveNode")?;
        let r = req.into_inner();
        self.0.remove_node(&r.reference, r.force).await?;
        Ok(Response::new(RemoveNodeResponse {}))
    }

    async fn demote_node(
        &self,
        req: Request<shoal_proto::control::DemoteNodeRequest>,
    ) -> Result<Response<NodeView>, Status> {
        control_caller(&req, "DemoteNode")?;
        Ok(Response::new(
            self.0.demote_node(&req.into_inner().reference).await?,
        ))
    }

    async fn promote_node(
        &self,
        req: Request<shoal_proto::control::PromoteNodeRequest>,
    ) -> Result<Response<NodeView>, Status> {
        control_caller(&req, "PromoteNode")?;
        Ok(Response::new(
            self.0.promote_node(&req.into_inner().reference).await?,
        ))
    }

    async fn create_task(&self, req: Request<CreateTaskRequest>) -> Result<Response<Task>, Status> {
        control_caller(&req, "CreateTask")?;
        Ok(Response::new(self.0.create_task(req.into_inner()).await?))
    }
    async fn list_tasks(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        control_caller(&req, "ListTasks")?;
        let r = req.into_inner();
        Ok(Response::new(self.0.list_tasks(&r.node, &r.service_id)?))
    }
    async fn get_task(&self, req: Request<GetTaskRequest>) -> Result<Response<Task>, Status> {
        control_caller(&req, "GetTask")?;
        Ok(Response::new(self.0.get_task(&req.into_inner().reference)?))
    }
    async fn remove_task(
        &self,
        req: Request<RemoveTaskRequest>,
    ) -> Result<Response<RemoveTaskResponse>, Status> {
        control_caller(&req, "RemoveTask")?;
        self.0.remove_task(&req.into_inner().reference).await?;
        Ok(Response::new(RemoveTaskResponse {}))
    }
    async fn task_logs(
        &self,
        req: Request<TaskLogsRequest>,
    ) -> Result<Response<TaskLogsStream>, Status> {
        let caller = control_caller(&req, "TaskLogs")?;
        let r = req.into_inner();
        let rx = self.0.task_logs(&r.reference, r.follow, r.tail).await?;
        let rx = match caller {
            ControlCaller::Node(c) | ControlCaller::Forwarded { by: c } => {
                crate::security::auth::guard_stream(c, rx)
            }
            ControlCaller::LocalAdmin => rx,
        };
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
    async fn list_nodes(
        &self,
        req: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesResponse>, Status> {
        control_caller(&req, "ListNodes")?;
        Ok(Response::new(ListNodesResponse {
            nodes: self.0.list_nodes()?,
        }))
    }
    async fn get_node(&self, req: Request<GetNodeRequest>) -> Result<Response<NodeView>, Status> {
        control_caller(&req, "GetNode")?;
        Ok(Response::new(self.0.get_node(&req.into_inner().reference)?))
    }
    async fn get_join_token(
        &self,
        req: Request<GetJoinTokenRequest>,
    ) -> Result<Response<GetJoinTokenResponse>, Status> {
        control_caller(&req, "GetJoinToken")?;
        let r = req.into_inner();
        if r.rotate || r.ttl_secs > 0 || r.max_uses > 0 {
            return Err(Status::invalid_argument(
                "GetJoinToken only reads: rotating a token or making a limited one is UpdateJoinToken ('shoal join-token --rotate|--ttl|--max-uses')",
            ));
        }
        Ok(Response::new(self.0.join_token_req(r).await?))
    }
    async fn update_join_token(
        &self,
        req: Request<GetJoinTokenRequest>,
    ) -> Result<Response<GetJoinTokenResponse>, Status> {
        control_caller(&req, "UpdateJoinToken")?;
        Ok(Response::new(
            self.0.join_token_req(req.into_inner()).await?,
        ))
    }
    async fn get_cluster_info(
        &self,
        req: Request<GetClusterInfoRequest>,
    ) -> Result<Response<ClusterInfo>, Status> {
        control_caller(&req, "GetClusterInfo")?;
        Ok(Response::new(self.0.cluster_info()?))
    }
}

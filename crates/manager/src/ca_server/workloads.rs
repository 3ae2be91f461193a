//! Workload identities: a task's X.509-SVID, issued only to the node the task is
//! assigned to, and only while the task is to run (a removed or stopping task's node
//! is refused a renewal). The CSR's key was made on that node and never leaves it; the
//! names come from the store: the task's service and its stack.

use super::CaServer;
use shoal_pki::Role;
use shoal_proto::ca::{IssueWorkloadCertificateRequest, IssueWorkloadCertificateResponse};
use shoal_proto::objects::{Service, Task, TaskState};
use std::time::Duration;
use tonic::{Request, Status};

/// A workload certificate's life unless the cluster setting says otherwise.
pub const DEFAULT_WORKLOAD_CERT_EXPIRY: Duration = Duration::from_secs(3600);

const CALL: &str = "IssueWorkloadCertificate";

impl CaServer {
    fn workload_cert_expiry(&self) -> Duration {
        let secs = self
            .view
            .current()
            .cluster()
            .and_then(|c| c.value.spec.as_ref().map(|s| s.workload_cert_expiry_secs))
            .unwrap_or(0);
        if secs == 0 {
            DEFAULT_WORKLOAD_CERT_EXPIRY
        } else {
            Duration::from_secs(secs)
        }
    }

    pub(super) fn issue_workload(
        &self,
        req: Request<IssueWorkloadCertificateRequest>,
    ) -> Result<IssueWorkloadCertificateResponse, Status> {
        let caller = crate::security::auth::authorize(&req, CALL, &[Role::Worker, Role::Manager])?;
        let r = req.into_inner();
        let state = self.view.current();
        let task = state
            .get::<Task>(&r.task_id)
            .map(|v| v.value.clone())
            .ok_or_else(|| {
                Status::not_found(format!(
                    "{CALL} refused: task {} does not exist (it was removed): a removed task gets no identity",
                    r.task_id
                ))
            })?;
        if task.node_id != caller.node_id().as_str() {
            return Err(Status::permission_denied(format!(
                "{CALL} refused: task {} is not assigned to node {}: a node gets identities only for its own tasks",
                task.id,
                caller.node_id()
            )));
        }
        if task.desired_state > TaskState::Running as i32 {
            return Err(Status::failed_precondition(format!(
                "{CALL} refused: task {} is being stopped or removed: it gets no new identity",
                task.id
            )));
        }
        let spec = task.spec.clone().unwrap_or_default();
        if spec.no_identity {
            return Err(Status::failed_precondition(format!(
                "{CALL} refused: task {} has no workload identity (its service says --no-identity)",
                task.id
            )));
        }
        let (service, labels) = if task.service_id.is_empty() {
            // A one-off task ('shoal task run'): named by itself.
            (task.name.clone(), spec.labels.clone())
        } else {
            let s = state.get::<Service>(&task.service_id).ok_or_else(|| {
                Status::failed_precondition(format!(
                    "{CALL} refused: the service of task {} was removed",
                    task.id
                ))
            })?;
            let s = s.value.spec.clone().unwrap_or_default();
            (s.name, s.labels)
        };
        let stack = labels
            .get(shoal_proto::STACK_LABEL)
            .map(String::as_str)
            .filter(|s| !s.is_empty());
        let ca = self.ca.get();
        let cert = ca
            .signer
            .sign_workload(
                &r.csr_der,
                &ca.cluster_id,
                stack,
                &service,
                self.workload_cert_expiry(),
            )
            .map_err(|e| {
                Status::invalid_argument(format!(
                    "{CALL} refused: {e} (or give the service --no-identity)"
                ))
            })?;
        tracing::debug!(task_id = %task.id, node_id = %caller.node_id(), serial = %cert.serial, "workload certificate issued");
        Ok(IssueWorkloadCertificateResponse {
            cert_der: cert.cert_der,
            intermediates_der: ca.intermediates.clone(),
            roots_der: ca.roots.clone(),
            spiffe_id: shoal_pki::spiffe_id(&ca.cluster_id, stack, &service),
            not_after_unix: crate::time::unix(cert.not_after),
        })
    }
}

//! Cluster settings: what `shoal info` shows and `shoal update` changes, backups and the
//! unlock key.
use super::{ControlApi, ControlCaller, ControlError};
use crate::cluster::{effective_election_timeout, effective_snapshot_interval};
use crate::security::revocation::check_raft_settings;
use shoal_proto::control::ClusterInfo;
use shoal_store::{Batch, Expect};
use std::time::Duration;

impl ControlApi {
    pub fn cluster_info(&self, _caller: &ControlCaller) -> Result<ClusterInfo, ControlError> {
        let c = self.cluster()?.value;
        let spec = c.spec.unwrap_or_default();
        Ok(ClusterInfo {
            cluster_id: c.id,
            root_ca_digest: c.root_ca.map(|r| r.digest).unwrap_or_default(),
            cert_expiry_secs: spec.cert_expiry_secs,
            heartbeat_period_ms: spec.heartbeat_period_ms,
            managers: self.managers()?,
            created_at_unix: c.created_at_unix,
            snapshot_interval: effective_snapshot_interval(&spec),
            election_timeout_ms: effective_election_timeout(&spec).as_millis() as u64,
            autolock: spec.autolock,
            unlock_key: String::new(),
            network: c.network,
        })
    }

    /// Changes cluster settings: the life of certificates issued from now on, the
    /// snapshot interval, the election timeout, and autolock (on, off, or a new key).
    pub async fn update_cluster(
        &self,
        caller: &ControlCaller,
        req: shoal_proto::control::UpdateClusterRequest,
    ) -> Result<shoal_proto::control::ClusterInfo, crate::controlapi::ControlError> {
        use crate::controlapi::ControlError;
        let bad = |m: String| Err(ControlError::BadRequest(m));
        if req.cert_expiry_secs != 0 {
            let d = Duration::from_secs(req.cert_expiry_secs);
            if d < shoal_pki::MIN_CERT_EXPIRY || d > shoal_pki::MAX_CERT_EXPIRY {
                return bad(format!(
                    "--cert-expiry {}s: use between 1 minute and 20 years",
                    req.cert_expiry_secs
                ));
            }
        }
        if req.user_cert_expiry_secs != 0 {
            let d = Duration::from_secs(req.user_cert_expiry_secs);
            if d < shoal_pki::MIN_CERT_EXPIRY || d > super::users::MAX_USER_CERT_EXPIRY {
                return bad(format!(
                    "--user-cert-expiry {}s: use between 1 minute and 90 days",
                    req.user_cert_expiry_secs
                ));
            }
        }
        if req.audit_max_bytes != 0 && !(1 << 20..=1 << 40).contains(&req.audit_max_bytes) {
            return bad(format!(
                "--audit-max-size {} bytes: use between 1MiB and 1TiB",
                req.audit_max_bytes
            ));
        }
        if req.workload_cert_expiry_secs != 0 {
            let d = Duration::from_secs(req.workload_cert_expiry_secs);
            if d < shoal_pki::MIN_CERT_EXPIRY || d > Duration::from_secs(30 * 24 * 3600) {
                return bad(format!(
                    "--workload-cert-expiry {}s: use between 1 minute and 30 days",
                    req.workload_cert_expiry_secs
                ));
            }
        }
        if req.audit_keep > 1000 {
            return bad(format!(
                "--audit-keep {}: keep at most 1000 rotated files",
                req.audit_keep
            ));
        }
        check_raft_settings(req.snapshot_interval, req.election_timeout_ms)
            .map_err(ControlError::BadRequest)?;
        let autolock = match req.autolock.as_str() {
            "" => None,
            "true" => Some(true),
            "false" => Some(false),
            other => return bad(format!("--autolock {other:?}: use true or false")),
        };
        let mut new_key = None;
        loop {
            let cur = self.cluster()?;
            let mut c = cur.value.clone();
            let spec = c.spec.get_or_insert_with(Default::default);
            if req.cert_expiry_secs != 0 {
                spec.cert_expiry_secs = req.cert_expiry_secs;
            }
            if req.user_cert_expiry_secs != 0 {
                spec.user_cert_expiry_secs = req.user_cert_expiry_secs;
            }
            if req.workload_cert_expiry_secs != 0 {
                spec.workload_cert_expiry_secs = req.workload_cert_expiry_secs;
            }
            if req.audit_max_bytes != 0 {
                spec.audit_max_bytes = req.audit_max_bytes;
            }
            if req.audit_keep != 0 {
                spec.audit_keep = req.audit_keep;
            }
            if req.snapshot_interval != 0 {
                spec.snapshot_interval = req.snapshot_interval;
            }
            if req.election_timeout_ms != 0 {
                spec.election_timeout_ms = req.election_timeout_ms;
            }
            if let Some(on) = autolock {
                spec.autolock = on;
            }
            if req.rotate_unlock_key && !spec.autolock {
                return Err(ControlError::Refused(
                    "autolock is off, so there is no unlock key to rotate: turn it on with 'shoal update --autolock=true'".into(),
                ));
            }
            let on = spec.autolock;
            // A key when autolock is turned on, a new one on rotation, none when off.
            if !on {
                c.unlock_key.clear();
            } else if c.unlock_key.is_empty() || req.rotate_unlock_key {
                let k = shoal_store::UnlockKey::generate();
                c.unlock_key = k.as_bytes().to_vec();
                new_key = Some(k);
            }
            if c == cur.value {
                break;
            }
            let mut b = Batch::default();
            b.put(&c, Expect::Version(cur.version));
            match self.commit(b).await {
                Ok(_) => break,
                Err(shoal_store::StoreError::Conflict { .. }) => {
                    new_key = None;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut info = self.cluster_info(caller)?;
        info.unlock_key = new_key.map(|k| k.to_human()).unwrap_or_default();
        Ok(info)
    }

    /// A backup of the cluster's state (`shoal backup`), made on a blocking thread.
    pub async fn backup(
        &self,
        _caller: &ControlCaller,
    ) -> Result<shoal_proto::control::GetBackupResponse, tonic::Status> {
        let store = self.store().clone();
        let (data, needs_unlock_key) =
            tokio::task::spawn_blocking(move || crate::recovery::backup(&store))
                .await
                .map_err(|e| tonic::Status::internal(e.to_string()))?
                .map_err(|e| match e {
                    crate::recovery::RecoveryError::Store(s) => {
                        tonic::Status::from(ControlError::from(s))
                    }
                    other => tonic::Status::failed_precondition(other.to_string()),
                })?;
        Ok(shoal_proto::control::GetBackupResponse {
            data,
            needs_unlock_key,
        })
    }

    /// The unlock key in human form while autolock is on (empty when it is off).
    pub fn unlock_key(&self, _caller: &ControlCaller) -> Result<String, ControlError> {
        let c = self.cluster()?.value;
        Ok(shoal_store::UnlockKey::from_bytes(&c.unlock_key)
            .filter(|_| c.spec.as_ref().is_some_and(|s| s.autolock))
            .map(|k| k.to_human())
            .unwrap_or_default())
    }
}

//! Revoked certificates. Records live in the store (table `revoked_certs`, one per
//! serial, so they are not one ever-growing object), survive restarts, and are pruned
//! once the certificate they cover has expired anyway. The managers refuse them through
//! [`crate::access::AccessList`], on every call and on open streams.

use crate::time::unix_now;
use shoal_proto::objects::RevokedCert;
use shoal_store::{Batch, Expect, Store};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Prunes records of certificates that have expired anyway, and limited join tokens a
/// day after they expired, every minute until cancelled (on the leader).
pub async fn run_pruner(store: Store, cancel: CancellationToken) {
    let mut prune = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = prune.tick() => {
                prune_expired(&store).await;
                crate::tokens::prune_expired(&store, unix_now()).await;
            }
        }
    }
}

async fn prune_expired(store: &Store) {
    let now = unix_now();
    let Ok(list) = store.list::<RevokedCert>() else {
        return;
    };
    let mut b = Batch::default();
    for r in list {
        if r.value.not_after_unix != 0 && r.value.not_after_unix < now {
            b.delete::<RevokedCert>(&r.value.serial, Expect::Version(r.version));
        }
    }
    if !b.is_empty() {
        if let Err(e) = store.commit(b).await {
            tracing::debug!(error = %e, "pruning revocations will be retried");
        }
    }
}

/// Adds to `b` the revocation of every certificate of `node` that has not expired (its
/// current one and those it superseded): they stop working at once, on every manager,
/// and stay refused until they would have expired anyway.
pub fn revoke_all(b: &mut Batch, node: &shoal_proto::objects::Node, reason: &str) {
    let c = node.certificate.clone().unwrap_or_default();
    let live = std::iter::once((c.serial.clone(), c.not_after_unix)).chain(
        c.previous
            .iter()
            .map(|p| (p.serial.clone(), p.not_after_unix)),
    );
    for (serial, not_after) in live.filter(|(s, _)| !s.is_empty()) {
        b.put(&record(&serial, &node.id, not_after, reason), Expect::Any);
    }
}

/// The record revoking a certificate.
pub fn record(serial: &str, node_id: &str, not_after_unix: i64, reason: &str) -> RevokedCert {
    RevokedCert {
        serial: serial.to_string(),
        node_id: node_id.to_string(),
        not_after_unix,
        reason: reason.to_string(),
        revoked_at_unix: unix_now(),
        renewal_allowed: false,
    }
}

pub const REMOVED: &str = "node removed from cluster";

impl crate::controlapi::ControlApi {
    /// Revokes one certificate of a node: its current one, one it superseded, or any
    /// other serial issued to it (those are refused anyway, since a node may only use its
    /// current certificate; the record makes that explicit and survives a renewal).
    pub async fn revoke_certificate(
        &self,
        node: &str,
        serial: &str,
    ) -> Result<(), crate::controlapi::ControlError> {
        use crate::controlapi::ControlError;
        let serial = serial.trim().to_lowercase();
        if serial.is_empty() || serial.len() > 64 || !serial.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(ControlError::BadRequest(format!(
                "certificate serial {serial:?} is not a serial: give the hexadecimal serial that 'shoal node inspect {node}' shows"
            )));
        }
        let n = self.get_node(node)?.node.unwrap_or_default();
        let c = n.certificate.clone().unwrap_or_default();
        let not_after = if c.serial == serial {
            c.not_after_unix
        } else if let Some(p) = c.previous.iter().find(|p| p.serial == serial) {
            p.not_after_unix
        } else {
            // Not a certificate the managers list any more: it cannot outlive the
            // longest life a certificate may have.
            unix_now() + shoal_pki::MAX_CERT_EXPIRY.as_secs() as i64
        };
        let mut b = Batch::default();
        b.put(
            &record(&serial, &n.id, not_after, "certificate revoked"),
            Expect::Any,
        );
        self.store().commit(b).await?;
        tracing::info!(node_id = %n.id, serial = %serial, "certificate revoked");
        Ok(())
    }

    /// Changes cluster settings: the life of certificates issued from now on, the
    /// snapshot interval, the election timeout, and autolock (on, off, or a new key).
    pub async fn update_cluster(
        &self,
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
            let cur = crate::bootstrap::load_cluster(self.store())?;
            let mut c = cur.value.clone();
            let spec = c.spec.get_or_insert_with(Default::default);
            if req.cert_expiry_secs != 0 {
                spec.cert_expiry_secs = req.cert_expiry_secs;
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
            match self.store().commit(b).await {
                Ok(_) => break,
                Err(shoal_store::StoreError::Conflict { .. }) => {
                    new_key = None;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut info = self.cluster_info()?;
        info.unlock_key = new_key.map(|k| k.to_human()).unwrap_or_default();
        Ok(info)
    }
}

/// Checks a snapshot interval and an election timeout (0: unchanged or the default).
pub fn check_raft_settings(snapshot_interval: u64, election_timeout_ms: u64) -> Result<(), String> {
    if snapshot_interval != 0 && snapshot_interval < 10 {
        return Err(format!(
            "--snapshot-interval {snapshot_interval}: use at least 10 entries"
        ));
    }
    if election_timeout_ms != 0 && !(200..=60_000).contains(&election_timeout_ms) {
        return Err(format!(
            "--election-timeout {election_timeout_ms}ms: use between 200ms and 60s"
        ));
    }
    Ok(())
}

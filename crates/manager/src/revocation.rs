//! Revoked certificates. Records live in the store (table `revoked_certs`, one per
//! serial, so they are not one ever-growing object), survive restarts, and are pruned
//! once the certificate they cover has expired anyway. The managers refuse them through
//! [`crate::access::AccessList`], on every call and on open streams.

use crate::time::unix_now;
use shoal_proto::objects::RevokedCert;
use shoal_store::{Batch, Expect, Store};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Prunes records of certificates that have expired anyway, every minute until cancelled.
pub async fn run_pruner(store: Store, cancel: CancellationToken) {
    let mut prune = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = prune.tick() => prune_expired(&store).await,
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

    /// Changes the life of certificates issued from now on.
    pub async fn update_cluster(
        &self,
        cert_expiry_secs: u64,
    ) -> Result<shoal_proto::control::ClusterInfo, crate::controlapi::ControlError> {
        use crate::controlapi::ControlError;
        if cert_expiry_secs != 0 {
            let d = Duration::from_secs(cert_expiry_secs);
            if d < shoal_pki::MIN_CERT_EXPIRY || d > shoal_pki::MAX_CERT_EXPIRY {
                return Err(ControlError::BadRequest(format!(
                    "--cert-expiry {cert_expiry_secs}s: use between 1 minute and 20 years"
                )));
            }
            loop {
                let cur = crate::bootstrap::load_cluster(self.store())?;
                let mut c = cur.value.clone();
                c.spec.get_or_insert_with(Default::default).cert_expiry_secs = cert_expiry_secs;
                let mut b = Batch::default();
                b.put(&c, Expect::Version(cur.version));
                match self.store().commit(b).await {
                    Ok(_) => break,
                    Err(shoal_store::StoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.cluster_info()
    }
}

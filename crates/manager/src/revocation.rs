//! Revoked certificates. Records live in the store (table `revoked_certs`, one per
//! serial, so they are not one ever-growing object), survive restarts, and are pruned
//! once the certificate they cover has expired anyway. Every manager keeps them in memory,
//! fed by a store watch, and refuses a revoked certificate on its next call.

use crate::time::unix_now;
use shoal_pki::NodeIdentity;
use shoal_proto::objects::RevokedCert;
use shoal_store::{Batch, Expect, Object, Store};
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Default, Debug)]
pub struct RevocationSet {
    /// Serial -> reason.
    revoked: RwLock<HashMap<String, String>>,
}

impl RevocationSet {
    /// The reason `id`'s certificate is revoked, if it is.
    pub fn check(&self, id: &NodeIdentity) -> Option<String> {
        self.revoked.read().ok()?.get(id.serial()).cloned()
    }

    fn load(&self, store: &Store) {
        if let (Ok(list), Ok(mut m)) = (store.list::<RevokedCert>(), self.revoked.write()) {
            m.clear();
            for r in list {
                m.insert(r.value.serial, r.value.reason);
            }
        }
    }

    /// Keeps the set equal to the store's records, and prunes expired ones, until cancelled.
    pub async fn follow(self: std::sync::Arc<Self>, store: Store, cancel: CancellationToken) {
        let Ok(mut watch) = store.watch() else { return };
        self.load(&store);
        let mut prune = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = prune.tick() => prune_expired(&store).await,
                ev = watch.events.recv() => match ev {
                    Ok(ev) => {
                        if ev.changes.iter().any(|c| c.table() == RevokedCert::TABLE) {
                            self.load(&store);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.load(&store),
                    Err(_) => return,
                },
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

/// The record revoking a certificate.
pub fn record(serial: &str, node_id: &str, not_after_unix: i64, reason: &str) -> RevokedCert {
    RevokedCert {
        serial: serial.to_string(),
        node_id: node_id.to_string(),
        not_after_unix,
        reason: reason.to_string(),
        revoked_at_unix: unix_now(),
    }
}

pub const REMOVED: &str = "node removed from cluster";

impl crate::controlapi::ControlApi {
    /// Revokes one certificate of a node (its current one or one it superseded).
    pub async fn revoke_certificate(
        &self,
        node: &str,
        serial: &str,
    ) -> Result<(), crate::controlapi::ControlError> {
        use crate::controlapi::ControlError;
        let n = self.get_node(node)?.node.unwrap_or_default();
        let c = n.certificate.clone().unwrap_or_default();
        let serial = serial.to_lowercase();
        let not_after = if c.serial == serial {
            c.not_after_unix
        } else if let Some(p) = c.previous.iter().find(|p| p.serial == serial) {
            p.not_after_unix
        } else {
            return Err(ControlError::BadSpec(format!(
                "certificate {serial} is not a live certificate of node {node} (see 'shoal node inspect {node}')"
            )));
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
                return Err(ControlError::BadSpec(format!(
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

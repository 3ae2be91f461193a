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

//! Revoked certificates. Records live in the store (table `revoked_certs`, one per
//! serial, so they are not one ever-growing object), survive restarts, and are pruned
//! once the certificate they cover has expired anyway. The managers refuse them through
//! [`crate::security::access::AccessList`], on every call and on open streams.

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
                crate::security::tokens::prune_expired(&store, unix_now()).await;
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
        user: String::new(),
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

//! Following the cluster's settings on a manager: the snapshot interval, the election
//! timeout, and autolock (the store's data key and the node's key sealed or not).

use super::*;

/// On a manager, for as long as it runs: applies the cluster's Raft settings to the
/// store (snapshot interval now, election timeout from the next start), and its autolock
/// setting to the keys on disk (the data key wrapped by the unlock key and the TLS key
/// sealed with it, or both back to the local key-encryption key).
pub(super) async fn follow_cluster_settings(
    store: Store,
    view: shoal_manager::view::ClusterView,
    creds: Arc<crate::renewal::Creds>,
) {
    let mut updates = view.subscribe();
    let mut state = view.current();
    loop {
        if let Some(c) = state.cluster() {
            let c = c.value.clone();
            let spec = c.spec.unwrap_or_default();
            store.set_snapshot_interval(shoal_manager::cluster::effective_snapshot_interval(&spec));
            let timeout = shoal_manager::cluster::effective_election_timeout(&spec);
            let unlock =
                shoal_store::UnlockKey::from_bytes(&c.unlock_key).filter(|_| spec.autolock);
            let (s, creds) = (store.clone(), creds.clone());
            let applied = tokio::task::spawn_blocking(move || -> Result<bool> {
                let changed = s.set_election_timeout(timeout)?;
                s.rewrap(&unlock.clone().map_or(Kek::Local, Kek::Unlock))?;
                // Through the identity's one writer: never a key a renewal replaced.
                creds.set_kek(unlock)?;
                Ok(changed)
            })
            .await;
            match applied {
                Ok(Ok(true)) => tracing::info!(
                    timeout = %humantime::format_duration(timeout),
                    "the cluster's election timeout changed: this manager uses it from its next restart"
                ),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot apply the cluster's settings to this manager's keys and store")
                }
                Err(e) => tracing::error!(error = %e, "cannot apply the cluster's settings"),
            }
        }
        // Wait for the next change to the cluster object.
        loop {
            match updates.next().await {
                Some(u) if u.touches(&[shoal_manager::view::Kind::Cluster]) => {
                    state = u.state.clone();
                    break;
                }
                Some(_) => {}
                None => return,
            }
        }
    }
}

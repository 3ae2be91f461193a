//! Role changes: a demoted manager stops its manager and deletes its copy; a promoted
//! worker joins the Raft group and starts one.

use super::*;

impl Daemon {
    /// A renewal changed this node's role. Demoted: its manager stops and its copy of the
    /// cluster state is deleted; the agent goes on (its containers are untouched).
    pub async fn handle_role_change(&self) {
        let mut guard = self.membership.lock().await;
        let Membership::Active(a) = &mut *guard else {
            return;
        };
        match a.creds.role() {
            Some(Role::Worker) if a.manager.is_some() => {
                // Stopping the manager and the store and deleting its copy take a while:
                // not under the lock `info` and `node ls` need (they answer "not a
                // manager" from now on).
                let (manager, store) = (a.manager.take(), a.store.take());
                let creds = a.creds.clone();
                drop(guard);
                self.stop_being_manager(manager, store, &creds).await;
                if let Membership::Active(a) = &mut *self.membership.lock().await {
                    if a.manager.is_none() {
                        a.state.role = "worker".into();
                        a.state.raft_id = 0;
                        if let Err(e) = self.dir.save_state(&a.state) {
                            tracing::error!("cannot record the new role: {e:#}");
                        }
                    }
                }
                tracing::info!("this node was demoted: it is a worker now; its manager stopped and its copy of the cluster state was deleted");
            }
            Some(Role::Manager) if a.manager.is_none() => {
                let state = a.state.clone();
                let creds = a.creds.clone();
                // Joining the raft group takes network calls and a catch-up: not under
                // the lock `info` and `node ls` need.
                drop(guard);
                if let Err(e) = self.become_manager(state, creds).await {
                    tracing::error!(
                        error = %format!("{e:#}"),
                        "this node was promoted to manager but could not join the managers; retrying in 5 s"
                    );
                    let again = self.role_changed.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        again.notify_one();
                    });
                }
            }
            _ => {}
        }
    }

    /// A demoted manager: its manager and store stop, its copy of the cluster state is
    /// deleted, and its key is stored clear (a worker restarts without an unlock key).
    pub(super) async fn stop_being_manager(
        &self,
        manager: Option<Manager>,
        store: Option<Store>,
        creds: &crate::renewal::Creds,
    ) {
        if let Some(m) = manager {
            m.shutdown().await;
        }
        if let Some(s) = store {
            let _ = s.shutdown().await;
        }
        if let Ok(mut r) = self.raft.lock() {
            *r = None;
        }
        let _ = creds.attach_manager(None);
        let _ = creds.attach_raft(None);
        let raft_dir = self.dir.raft_dir();
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(raft_dir)).await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(error = %e, "cannot delete the demoted manager's store");
        }
        if let Err(e) = creds.set_kek(None) {
            tracing::error!("cannot unseal the demoted manager's key: {e:#}");
        }
    }

    /// A promoted worker (holding its manager certificate now) joins the Raft group,
    /// starts its manager beside its running agent, and records its new role.
    pub(super) async fn become_manager(
        &self,
        mut state: NodeState,
        creds: Arc<crate::renewal::Creds>,
    ) -> Result<()> {
        let c = creds.get();
        let key = NodeKey::from_pem(&c.key_pem)?;
        let tls = client_tls(&c.roots, &c.cert_der, &c.key_pem)?;
        let target = creds.target();
        // The member ID the managers gave this promotion (with its certificate).
        state.raft_id = creds.raft_id.load(std::sync::atomic::Ordering::Relaxed);
        // Whatever a failed attempt left: a new member starts from an empty store.
        match std::fs::remove_dir_all(self.dir.raft_dir()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).context("cannot clear the store directory for the new manager")
            }
            _ => {}
        }
        let store = self
            .join_raft(&state, &target, &c.cert_der, &key, &c.roots, tls)
            .await?;
        let mut guard = self.membership.lock().await;
        let current = match &mut *guard {
            Membership::Active(a) if a.state.node_id == state.node_id && a.manager.is_none() => {
                Some(a)
            }
            _ => None,
        };
        let Some(a) = current else {
            // The node left (or was removed) meanwhile.
            drop(guard);
            let _ = store.shutdown().await;
            return Ok(());
        };
        // The certificate may have been renewed while we joined: attaching the manager
        // below makes it serve the identity in force.
        let c = creds.get();
        let manager = match self
            .start_manager(&store, &state, &c.key_pem, &c.cert_der)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                let _ = store.shutdown().await;
                return Err(e);
            }
        };
        if let Err(e) = creds.attach_manager(Some(manager.identity_handle())) {
            manager.shutdown().await;
            let _ = store.shutdown().await;
            return Err(e);
        }
        a.state.raft_id = state.raft_id;
        tokio::spawn(follow_cluster_settings(
            store.clone(),
            manager.view().clone(),
            creds.clone(),
        ));
        if let Err(e) = creds.attach_raft(self.raft.lock().ok().and_then(|r| r.clone())) {
            tracing::error!("the Raft transport cannot present this node's certificate: {e:#}");
        }
        state.role = "manager".into();
        if let Err(e) = self.dir.save_state(&state) {
            tracing::error!("cannot record the new role: {e:#}");
        }
        a.state.role = state.role;
        a.manager = Some(manager);
        a.store = Some(store);
        tracing::info!("this node was promoted: it is a manager now and serves the cluster");
        Ok(())
    }
}

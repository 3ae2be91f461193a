//! Starting a member: resuming from the state directory, opening the store, and
//! starting the manager (on a manager) and the agent.

use super::*;

impl Daemon {
    /// [`Daemon::resume`], recording why if it fails.
    pub(super) async fn resume_or_damaged(&self) {
        {
            let mut m = self.membership.lock().await;
            if matches!(*m, Membership::Busy(_)) {
                *m = Membership::None { note: None };
            }
        }
        if let Err(e) = self.resume().await {
            tracing::error!("cannot resume this node's cluster membership: {e:#}");
            self.set_damaged(format!("{e:#}")).await;
        }
    }

    /// Resumes the cluster membership kept in the state directory, if any.
    pub async fn resume(&self) -> Result<()> {
        // Held throughout (opening the local store and starting; nothing here waits on
        // the network), so that what `start` sets off (a promotion to finish) waits until
        // the membership is in place.
        let mut guard = self.membership.lock().await;
        if !self.dir.sealed()
            && shoal_store::seal::wrapping(&self.dir.raft_dir())? == shoal_store::Wrapping::Unlock
        {
            *guard = Membership::Locked;
            tracing::warn!("{LOCKED_WHY}");
            return Ok(());
        }
        let Some(loaded) = self.dir.load()? else {
            tracing::info!(
                "this node is not part of a cluster yet: run 'shoal init' or 'shoal join'"
            );
            return Ok(());
        };
        if let Ok(c) = shoal_pki::CertSummary::parse(&loaded.cert_der) {
            if c.not_after <= SystemTime::now() && loaded.state.role != "manager" {
                let at = c
                    .not_after
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                tracing::warn!(
                    node_id = %loaded.state.node_id,
                    "this node's certificate expired (at unix {at}) while it was off: rejoin with 'shoal join --token <worker token> --rejoin {}' to keep the node ID",
                    loaded.state.managers.first().map(String::as_str).unwrap_or("<manager>")
                );
                *guard = Membership::Stale(Stale {
                    state: loaded.state,
                    key_pem: loaded.key_pem,
                    cert_der: loaded.cert_der,
                    why: EXPIRED_WHY.into(),
                });
                return Ok(());
            }
        }
        let store = if loaded.state.role == "manager" {
            let tls = client_tls(&loaded.roots, &loaded.cert_der, &loaded.key_pem)?;
            Some(
                self.open_store(
                    self.dir.raft_dir(),
                    loaded.state.raft_id(),
                    &loaded.state.advertise_addr,
                    Some(tls),
                    StoreConfig {
                        kek: self.dir.store_kek(),
                        ..Default::default()
                    },
                )
                .await?,
            )
        } else {
            None
        };
        let active = match self.start(loaded, store.clone()).await {
            Ok(a) => a,
            Err(e) => {
                if let Some(s) = store {
                    let _ = s.shutdown().await;
                }
                return Err(e);
            }
        };
        tracing::info!(node_id = %active.state.node_id, role = %active.state.role, "resumed cluster membership");
        *guard = Membership::Active(Box::new(active));
        Ok(())
    }

    /// Opens this manager's store, with a Raft transport presenting `tls` (none yet
    /// during `init`, which makes the certificate).
    pub(super) async fn open_store(
        &self,
        dir: std::path::PathBuf,
        raft_id: u64,
        advertise: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        config: StoreConfig,
    ) -> Result<Store> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        // The store holds the CA key: private from the start.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let transport = crate::raft_transport::GrpcTransport::new(tls);
        let store = Store::open_with(&dir, raft_id, advertise, transport.clone(), config)
            .await
            .with_context(|| format!("cannot open the cluster store in {}", dir.display()))?;
        transport.set_store(&store);
        if let Ok(mut r) = self.raft.lock() {
            *r = Some(transport);
        }
        let db = dir.join("store.redb");
        if db.exists() {
            std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot make {} private", db.display()))?;
        }
        Ok(store)
    }

    /// Starts the manager (if a manager) and the agent for a joined node.
    pub(super) async fn start(&self, loaded: Loaded, store: Option<Store>) -> Result<Active> {
        let manager = match &store {
            Some(store) => Some(self.start_manager_at_boot(store, &loaded).await?),
            None => None,
        };
        let creds = match self.creds_for(&loaded, manager.as_ref()) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                if let Some(m) = manager {
                    m.shutdown().await;
                }
                return Err(e);
            }
        };
        if let (Some(store), Some(m)) = (&store, &manager) {
            tokio::spawn(follow_cluster_settings(
                store.clone(),
                m.view().clone(),
                creds.clone(),
            ));
        }
        // Promoted while the daemon was down, or before its manager could start: finish.
        if manager.is_none() && creds.role() == Some(Role::Manager) {
            self.role_changed.notify_one();
        }
        let (agent, renewal) = self.start_agent(&loaded.state, &creds);
        Ok(Active {
            state: loaded.state,
            agent,
            creds,
            renewal,
            manager,
            store,
        })
    }

    /// A manager's own manager, when the daemon starts.
    async fn start_manager_at_boot(&self, store: &Store, loaded: &Loaded) -> Result<Manager> {
        // A lone manager leads at once; with several, this one may follow, and the
        // others may still be starting: it serves as soon as its own store is open.
        if store.members().len() <= 1 {
            store
                .wait_leader(Duration::from_secs(10))
                .await
                .context("the cluster store did not elect a leader")?;
        }
        self.start_manager(store, &loaded.state, &loaded.key_pem, &loaded.cert_der)
            .await
    }

    /// The node's identity as loaded, presented by the manager's listener and the Raft
    /// transport on a manager.
    fn creds_for(
        &self,
        loaded: &Loaded,
        manager: Option<&Manager>,
    ) -> Result<crate::renewal::Creds> {
        // The managers the last heartbeat named (the cluster may have others now than
        // when this node joined), else the ones it joined with.
        let managers = self
            .dir
            .load_managers()
            .unwrap_or_else(|| loaded.state.managers.clone());
        let target = managers.first().cloned().unwrap_or_default();
        let creds = crate::renewal::Creds::new(
            self.dir.clone(),
            ClusterId::parse(&loaded.state.cluster_id)?,
            &target,
            managers,
            crate::renewal::Current {
                key_pem: loaded.key_pem.clone(),
                cert_der: loaded.cert_der.clone(),
                roots: loaded.roots.clone(),
            },
            loaded.state.raft_id,
        )?;
        if let Some(m) = manager {
            creds.attach_raft(self.raft.lock().ok().and_then(|r| r.clone()))?;
            creds.attach_manager(Some(m.identity_handle()))?;
        }
        Ok(creds)
    }

    pub(super) async fn start_manager(
        &self,
        store: &Store,
        state: &NodeState,
        key_pem: &str,
        cert_der: &[u8],
    ) -> Result<Manager> {
        let key = NodeKey::from_pem(key_pem)?;
        Ok(Manager::start(ManagerConfig {
            store: store.clone(),
            listen_addr: self.opts.listen_addr,
            local_node_id: state.node_id.clone(),
            cluster_id: ClusterId::parse(&state.cluster_id)?,
            cert_der: cert_der.to_vec(),
            key_pkcs8: key.pkcs8_der(),
            dial: shoal_agent::connect::lazy_channel_timeout,
            audit_dir: self.opts.state_dir.join("audit"),
        })
        .await?)
    }
}

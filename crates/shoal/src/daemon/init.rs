//! `shoal init`: a new cluster, or (`--force-new-cluster`) one re-formed from this
//! manager's copy.

use super::*;

impl Daemon {
    pub async fn init(&self, req: InitRequest) -> Result<InitResponse> {
        if req.force_new_cluster {
            return self.force_new_cluster().await;
        }
        let (busy, ()) = Busy::begin(&self.membership, "initializing a cluster", |m| {
            refuse_unless_free(m)?;
            Ok(((), free_again(m)))
        })
        .await?;
        let done = self.init_new(req).await;
        busy.settle(done).await
    }

    /// The work of `init`, with the membership marked busy.
    pub(super) async fn init_new(&self, req: InitRequest) -> Result<(InitResponse, Active)> {
        let settings = self.init_settings(&req)?;
        let restore = open_restore(&req)?;
        // With autolock, the store and the key file are sealed with the unlock key from
        // the first write: the root CA key is never on disk wrapped by anything else.
        let unlock_key = match &restore {
            Some((_, key)) => key.clone(),
            None => req.autolock.then(shoal_store::UnlockKey::generate),
        };
        let node_id = NodeId::generate();
        let raft_id = shoal_manager::bootstrap::new_raft_id();
        let store = self
            .open_store(
                self.dir.raft_dir(),
                raft_id,
                &settings.advertise,
                None,
                StoreConfig {
                    kek: unlock_key.clone().map_or(Kek::Local, Kek::Unlock),
                    snapshot_interval: match req.snapshot_interval {
                        0 => shoal_store::DEFAULT_SNAPSHOT_INTERVAL,
                        n => n,
                    },
                    election_timeout: match req.election_timeout_ms {
                        0 => shoal_store::DEFAULT_ELECTION_TIMEOUT,
                        ms => Duration::from_millis(ms),
                    },
                },
            )
            .await?;
        let first = NewMember {
            node_id,
            raft_id,
            unlock_key: unlock_key.clone(),
        };
        let result = async {
            let res = self
                .create_cluster(&store, &req, &settings, restore, &first)
                .await?;
            let loaded = self.save_first_manager(&settings, &first, res)?;
            self.start(loaded, Some(store.clone())).await
        }
        .await;
        match result {
            Ok(active) => {
                let resp = InitResponse {
                    node_id: active.state.node_id.clone(),
                    cluster_id: active.state.cluster_id.clone(),
                    // A restored cluster keeps its key: the operator has it already.
                    unlock_key: unlock_key
                        .filter(|_| req.restore.is_empty())
                        .map(|k| k.to_human())
                        .unwrap_or_default(),
                };
                tracing::info!(node_id = %resp.node_id, cluster_id = %resp.cluster_id, "initialized a new cluster");
                Ok((resp, active))
            }
            Err(e) => {
                // No half state: a failed init leaves the node as it was.
                let _ = store.shutdown().await;
                let _ = self.dir.wipe();
                let _ = self.dir.set_kek(None, "");
                Err(e)
            }
        }
    }

    /// Checks what `init` asks for, before anything is created.
    fn init_settings(&self, req: &InitRequest) -> Result<InitSettings> {
        let advertise = self.advertise(&req.advertise_addr)?;
        let cert_expiry = match req.cert_expiry_secs {
            0 => DEFAULT_CERT_EXPIRY,
            s => Duration::from_secs(s),
        };
        if cert_expiry > shoal_pki::MAX_CERT_EXPIRY {
            bail!(user(
                tonic::Code::InvalidArgument,
                "--cert-expiry is above the maximum of 20 years (the root CA's life)"
            ));
        }
        if cert_expiry < shoal_pki::MIN_CERT_EXPIRY {
            bail!(user(
                tonic::Code::InvalidArgument,
                format!(
                    "--cert-expiry {}s is below the minimum of 1 minute",
                    cert_expiry.as_secs()
                )
            ));
        }
        let heartbeat = match req.heartbeat_period_ms {
            0 => DEFAULT_HEARTBEAT,
            ms => Duration::from_millis(ms),
        };
        if heartbeat < Duration::from_millis(100) {
            bail!(user(
                tonic::Code::InvalidArgument,
                "--dispatcher-heartbeat must be at least 100ms"
            ));
        }
        // Find out now, not after the cluster exists, if the port is taken.
        std::net::TcpListener::bind(self.opts.listen_addr).map_err(|e| {
            user(
                tonic::Code::FailedPrecondition,
                format!(
                    "cannot listen on {}: {e}; stop what uses it or restart the daemon with another --listen-addr",
                    self.opts.listen_addr
                ),
            )
        })?;
        shoal_manager::security::revocation::check_raft_settings(
            req.snapshot_interval,
            req.election_timeout_ms,
        )
        .map_err(|e| user(tonic::Code::InvalidArgument, e))?;
        let mut network = shoal_manager::controlapi::networks::network_config(
            &req.default_addr_pool,
            req.default_addr_pool_mask_length,
        )
        .map_err(|e| user(tonic::Code::InvalidArgument, e))?;
        network.data_path_port =
            shoal_manager::controlapi::networks::check_data_path_port(req.data_path_port)
                .map_err(|e| user(tonic::Code::InvalidArgument, e))?;
        Ok(InitSettings {
            advertise,
            cert_expiry,
            heartbeat,
            network,
            data_path_addr: check_data_path_addr(&req.data_path_addr)?,
        })
    }

    /// The cluster in the new store: a new one, or the backup's objects (`--restore`).
    async fn create_cluster(
        &self,
        store: &Store,
        req: &InitRequest,
        settings: &InitSettings,
        restore: Option<Restore>,
        first: &NewMember,
    ) -> Result<shoal_manager::InitResult> {
        store
            .bootstrap()
            .await
            .context("cannot start the cluster store")?;
        store.wait_leader(Duration::from_secs(10)).await?;
        Ok(match restore {
            Some((objects, _)) => shoal_manager::recovery::reform(
                store,
                objects,
                shoal_manager::recovery::Survivor {
                    node_id: first.node_id.clone(),
                    raft_id: first.raft_id,
                    advertise_addr: settings.advertise.clone(),
                    description: self.description(),
                    new_key: Some(NodeKey::generate()?),
                    why: RESTORED_WHY,
                },
            )
            .await?
            .context("the restore made no certificate for this node")?,
            None => {
                init_cluster(
                    store,
                    first.node_id.clone(),
                    InitParams {
                        advertise_addr: settings.advertise.clone(),
                        cert_expiry: settings.cert_expiry,
                        heartbeat_period: settings.heartbeat,
                        description: self.description(),
                        snapshot_interval: req.snapshot_interval,
                        election_timeout: Duration::from_millis(req.election_timeout_ms),
                        unlock_key: first.unlock_key.clone(),
                        raft_id: first.raft_id,
                        network: settings.network.clone(),
                    },
                )
                .await?
            }
        })
    }

    /// Writes the first manager's state and identity (sealed with autolock).
    fn save_first_manager(
        &self,
        settings: &InitSettings,
        first: &NewMember,
        res: shoal_manager::InitResult,
    ) -> Result<Loaded> {
        let state = NodeState {
            node_id: first.node_id.to_string(),
            cluster_id: res.cluster_id.to_string(),
            role: "manager".into(),
            managers: vec![settings.advertise.clone()],
            advertise_addr: settings.advertise.clone(),
            raft_id: first.raft_id,
            data_path_addr: settings.data_path_addr.clone(),
        };
        let key_pem = res.node_key.to_pem();
        if let Some(k) = &first.unlock_key {
            self.dir.unlock_with(k.clone());
        }
        self.dir.save(
            &state,
            &key_pem,
            &res.node_cert.cert_der,
            std::slice::from_ref(&res.root_der),
        )?;
        Ok(Loaded {
            state,
            key_pem,
            cert_der: res.node_cert.cert_der,
            roots: vec![res.root_der],
        })
    }

    /// `init --force-new-cluster` on a manager that lost its quorum: a one-manager
    /// cluster from its own copy of the state, keeping services, workers and their
    /// certificates. The other managers are removed; the old store is kept beside the
    /// new one (`raft.before-force-new-cluster-<time>`).
    pub(super) async fn force_new_cluster(&self) -> Result<InitResponse> {
        const WHAT: &str = "re-forming the cluster";
        let (busy, a) = Busy::begin(&self.membership, WHAT, |m| {
            match m {
                Membership::Active(a) if a.store.is_some() => {}
                Membership::Active(_) => bail!(user(
                    tonic::Code::FailedPrecondition,
                    "this node is a worker: --force-new-cluster needs a manager's copy of the cluster state; run it on a surviving manager"
                )),
                Membership::Locked => bail!(user(tonic::Code::FailedPrecondition, LOCKED_WHY)),
                _ => bail!(user(
                    tonic::Code::FailedPrecondition,
                    "--force-new-cluster re-forms a cluster from a manager's state, and this node is not part of a cluster"
                )),
            }
            let Membership::Active(a) = std::mem::replace(m, Membership::Busy(WHAT)) else {
                unreachable!("checked above")
            };
            // Whatever happens, the state directory decides what the node is after.
            Ok((a, Membership::None { note: None }))
        })
        .await?;
        let export = match a.store.as_ref().map(|s| s.export()) {
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                busy.finish(Membership::Active(a)).await;
                return Err(e.into());
            }
            None => unreachable!("checked above"),
        };
        let mut state = a.state.clone();
        let kek = self.dir.store_kek();
        stop(*a).await;
        // `busy` stays until the end: the state directory then decides (resume).
        let _busy = busy;
        let new = self.dir.root.join("raft.new");
        let _ = std::fs::remove_dir_all(&new);
        let raft_id = shoal_manager::bootstrap::new_raft_id();
        if let Err(e) = self.reform_into(&new, raft_id, &state, kek, export).await {
            let _ = std::fs::remove_dir_all(&new);
            // The old state is untouched: resume it as it was.
            self.resume_or_damaged().await;
            return Err(e.context("cannot re-form the cluster; this manager's state is unchanged"));
        }
        let kept = self.dir.root.join(format!(
            "raft.before-force-new-cluster-{}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        ));
        let old = self.dir.raft_dir();
        std::fs::rename(&old, &kept)
            .with_context(|| format!("cannot move {} aside", old.display()))?;
        std::fs::rename(&new, &old)
            .with_context(|| format!("cannot move the new store into {}", old.display()))?;
        state.raft_id = raft_id;
        state.managers = vec![state.advertise_addr.clone()];
        self.dir.save_state(&state)?;
        self.resume_or_damaged().await;
        tracing::warn!(
            kept = %kept.display(),
            "re-formed a one-manager cluster from this manager's state"
        );
        Ok(InitResponse {
            node_id: state.node_id.clone(),
            cluster_id: state.cluster_id.clone(),
            unlock_key: String::new(),
        })
    }

    /// A new one-member store at `dir` holding the exported state, with this manager
    /// its only member and the others removed.
    async fn reform_into(
        &self,
        dir: &std::path::Path,
        raft_id: u64,
        state: &NodeState,
        kek: Kek,
        export: shoal_store::Export,
    ) -> Result<()> {
        let store = self
            .open_store(
                dir.to_path_buf(),
                raft_id,
                &state.advertise_addr,
                None,
                StoreConfig {
                    kek,
                    ..Default::default()
                },
            )
            .await?;
        let formed = async {
            store.bootstrap().await?;
            store.wait_leader(Duration::from_secs(10)).await?;
            shoal_manager::recovery::reform(
                &store,
                export.objects,
                shoal_manager::recovery::Survivor {
                    node_id: NodeId::parse(&state.node_id)?,
                    raft_id,
                    advertise_addr: state.advertise_addr.clone(),
                    description: self.description(),
                    new_key: None,
                    why: REFORMED_WHY,
                },
            )
            .await?;
            anyhow::Ok(())
        }
        .await;
        let _ = store.shutdown().await;
        formed
    }
}

/// What `init` checked.
struct InitSettings {
    advertise: String,
    cert_expiry: Duration,
    heartbeat: Duration,
    network: shoal_proto::objects::NetworkConfig,
    data_path_addr: String,
}

/// The first manager of a new cluster.
struct NewMember {
    node_id: NodeId,
    raft_id: u64,
    unlock_key: Option<shoal_store::UnlockKey>,
}

/// A backup's objects, and its cluster's unlock key when autolock is on.
type Restore = (
    Vec<shoal_store::ExportedObject>,
    Option<shoal_store::UnlockKey>,
);

/// The backup `init --restore` names, opened (with `--unlock-key` if it is sealed).
fn open_restore(req: &InitRequest) -> Result<Option<Restore>> {
    if req.restore.is_empty() {
        return Ok(None);
    }
    let given = match req.unlock_key.trim() {
        "" => None,
        k => Some(
            shoal_store::UnlockKey::parse(k).map_err(|e| user(tonic::Code::InvalidArgument, e))?,
        ),
    };
    let objects = shoal_manager::recovery::open_backup(&req.restore, given.as_ref())
        .map_err(|e| user(tonic::Code::InvalidArgument, e.to_string()))?;
    let cluster = shoal_manager::recovery::cluster_of(&objects)
        .map_err(|e| user(tonic::Code::InvalidArgument, e.to_string()))?;
    let key = shoal_store::UnlockKey::from_bytes(&cluster.unlock_key)
        .filter(|_| cluster.spec.as_ref().is_some_and(|s| s.autolock));
    Ok(Some((objects, key)))
}

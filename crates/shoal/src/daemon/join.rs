//! `shoal join`: a certificate from the cluster's CA for a join token, and for a
//! manager, a place in the Raft group.

use super::*;

impl Daemon {
    pub async fn join(&self, req: JoinRequest) -> Result<JoinResponse> {
        check_data_path_addr(&req.data_path_addr)?;
        let rejoin_asked = req.rejoin;
        let (mut busy, rejoin) = Busy::begin(&self.membership, "joining a cluster", |m| {
            match (&*m, rejoin_asked) {
                (Membership::Stale(s), true) => Ok((Some(s.clone()), Membership::Stale(s.clone()))),
                (_, true) => bail!(user(
                    tonic::Code::FailedPrecondition,
                    "nothing to rejoin with: this node keeps no identity for --rejoin (it rejoins only after its certificate expired or its root CA was rotated away); join without --rejoin"
                )),
                (_, false) => {
                    refuse_unless_free(m)?;
                    Ok((None, free_again(m)))
                }
            }
        })
        .await?;
        let done = self.join_cluster(req, rejoin, &mut busy).await;
        busy.settle(done).await
    }

    /// The work of `join`, with the membership marked busy.
    pub(super) async fn join_cluster(
        &self,
        req: JoinRequest,
        rejoin: Option<Stale>,
        busy: &mut Busy,
    ) -> Result<(JoinResponse, Active)> {
        let token = JoinToken::parse(&req.token)
            .map_err(|e| user(tonic::Code::InvalidArgument, e.to_string()))?;
        let remote = with_port(&req.remote_addr, DEFAULT_PORT).map_err(|e| {
            user(
                tonic::Code::InvalidArgument,
                format!("manager address: {e}"),
            )
        })?;
        let advertise = self.advertise(&req.advertise_addr)?;
        // 1. Reach the manager over TLS pinned to the token's CA digest.
        let (boot, root_der) = reach_cluster(&Pinned::join(token.ca_digest()), &remote).await?;
        // 2. Ask for a certificate for our own key (for a rejoin: the old key, which
        //    proves we are the node the expired certificate names).
        let key = match &rejoin {
            Some(s) => NodeKey::from_pem(&s.key_pem)?,
            None => NodeKey::generate()?,
        };
        let (issued, remote) =
            request_certificate(&boot, &remote, &token, &key, &advertise, rejoin.as_ref()).await?;
        let (identity, roots) = check_issued(&issued, &root_der, rejoin.as_ref())?;
        // 3. Confirm the manager accepts the certificate with a real call before keeping it.
        let key_pem = key.to_pem();
        let tls = client_tls(&roots, &issued.cert_der, &key_pem)?;
        self.confirm_certificate(&remote, &tls, &advertise).await?;
        // 4. Keep it, join the Raft group as a manager, and start.
        let mut managers = issued.managers.clone();
        if !managers.contains(&remote) {
            managers.insert(0, remote.clone());
        }
        let state = NodeState {
            node_id: identity.node_id().to_string(),
            cluster_id: issued.cluster_id.clone(),
            role: identity.role().to_string(),
            managers,
            advertise_addr: advertise,
            raft_id: issued.raft_id,
            data_path_addr: check_data_path_addr(&req.data_path_addr)?,
        };
        self.dir.save(&state, &key_pem, &issued.cert_der, &roots)?;
        // The identity kept for --rejoin is replaced on disk: a failure from here on
        // leaves the node free.
        busy.fallback = Some(Membership::None { note: None });
        let store = if identity.role() == Role::Manager {
            let joined = self
                .join_raft(&state, &remote, &issued.cert_der, &key, &roots, tls)
                .await;
            match joined {
                Ok(s) => Some(s),
                Err(e) => {
                    let _ = self.dir.wipe();
                    return Err(e);
                }
            }
        } else {
            None
        };
        let loaded = Loaded {
            state,
            key_pem,
            cert_der: issued.cert_der,
            roots,
        };
        let active = self.start_joined(loaded, store).await?;
        let resp = JoinResponse {
            node_id: active.state.node_id.clone(),
            cluster_id: active.state.cluster_id.clone(),
            role: active.state.role.clone(),
        };
        tracing::info!(node_id = %resp.node_id, cluster_id = %resp.cluster_id, "joined the cluster");
        Ok((resp, active))
    }

    /// A heartbeat with the new certificate: the manager (or the leader a follower
    /// names) must accept it before the node keeps it.
    async fn confirm_certificate(
        &self,
        remote: &str,
        tls: &Arc<rustls::ClientConfig>,
        advertise: &str,
    ) -> Result<()> {
        let mtls = channel(remote, tls.clone()).await.map_err(|e| {
            user(
                tonic::Code::Unavailable,
                format!(
                    "cannot reach the manager at {remote} with our new certificate: {}",
                    error_chain(&e)
                ),
            )
        })?;
        let mut beat = heartbeat_once(mtls, self.description(), advertise.to_string()).await;
        // A follower (or a manager that just lost an election) points to the leader.
        if let Some(leader) = beat
            .as_ref()
            .err()
            .and_then(shoal_agent::managers::leader_pointer)
        {
            if let Ok(ch) = channel(&leader, tls.clone()).await {
                beat = heartbeat_once(ch, self.description(), advertise.to_string()).await;
            }
        }
        beat.map_err(|s| {
            user(
                s.code(),
                format!(
                    "the manager did not accept our new certificate: {}",
                    s.message()
                ),
            )
        })?;
        Ok(())
    }

    /// Starts the member that just joined; a start that fails leaves nothing to resume.
    async fn start_joined(&self, loaded: Loaded, store: Option<Store>) -> Result<Active> {
        let started = self.start(loaded, store.clone()).await;
        if started.is_err() {
            if let Some(s) = &store {
                let _ = s.shutdown().await;
            }
            // Do not resume a membership that never started on the next restart.
            let _ = self.dir.wipe();
        }
        started
    }

    /// Makes this new manager a member of the Raft group: opens its (empty) store, serves
    /// Raft alone on its listener, asks the leader to add it (as a learner until it has
    /// caught up, then as a voter), and waits until its store holds the cluster.
    pub(super) async fn join_raft(
        &self,
        state: &NodeState,
        remote: &str,
        cert_der: &[u8],
        key: &NodeKey,
        roots: &[Vec<u8>],
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Store> {
        // Wrapped locally until the cluster's settings reach this store: with autolock on,
        // the data key is then wrapped by the unlock key and the local key deleted.
        let store = self
            .open_store(
                self.dir.raft_dir(),
                state.raft_id(),
                &state.advertise_addr,
                Some(tls.clone()),
                StoreConfig::default(),
            )
            .await?;
        let cancel = CancellationToken::new();
        let result = async {
            let trust = ClusterTrust::new(ClusterId::parse(&state.cluster_id)?, roots)?;
            let mut chain = vec![cert_der.to_vec()];
            chain.extend(roots.iter().cloned());
            let server = shoal_manager::server::serve_joining(
                self.opts.listen_addr,
                trust,
                chain,
                key.pkcs8_der(),
                store.clone(),
                cancel.clone(),
            )
            .await?;
            let leader_applied = ask_to_join_raft(remote, &tls, &state.advertise_addr).await?;
            // The leader added us once we had caught up; serve once our copy has all the
            // leader had then (our own node among it).
            if !store
                .wait_applied(leader_applied, Duration::from_secs(30))
                .await
                || shoal_manager::bootstrap::load_cluster(&store).is_err()
            {
                bail!(
                    "this manager joined the raft group but its store did not catch up within 30 s"
                );
            }
            // Stop at once, connections and all: the full listener takes over the
            // address, and the leader must not go unheard long enough for an election.
            cancel.cancel();
            let mut server = server;
            if tokio::time::timeout(Duration::from_millis(100), &mut server)
                .await
                .is_err()
            {
                server.abort();
                let _ = server.await;
            }
            Ok(())
        }
        .await;
        cancel.cancel();
        match result {
            Ok(()) => Ok(store),
            Err(e) => {
                let _ = store.shutdown().await;
                Err(e)
            }
        }
    }
}

/// Asks the leader (through `remote`, which names it if it follows) to add this manager
/// at `addr` to the Raft group; returns the index the leader had applied then.
async fn ask_to_join_raft(
    remote: &str,
    tls: &Arc<rustls::ClientConfig>,
    addr: &str,
) -> Result<u64> {
    use shoal_proto::raft::raft_client::RaftClient;
    use shoal_proto::raft::JoinRaftRequest;
    let mut target = remote.to_string();
    let mut hops = 0;
    loop {
        let ch = channel(&target, tls.clone()).await.map_err(|e| {
            user(
                tonic::Code::Unavailable,
                format!("cannot reach the manager at {target}: {}", error_chain(&e)),
            )
        })?;
        let mut req = tonic::Request::new(JoinRaftRequest {
            addr: addr.to_string(),
        });
        req.set_timeout(Duration::from_secs(120));
        match RaftClient::new(ch).join(req).await {
            Ok(r) => return Ok(r.into_inner().applied_index),
            Err(s) => {
                let leader = s
                    .metadata()
                    .get(shoal_manager::cluster::LEADER_KEY)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                match leader {
                    Some(l) if hops < 3 && l != target => {
                        target = l;
                        hops += 1;
                    }
                    _ => bail!(user(
                        s.code(),
                        format!(
                            "the managers could not add this node to the raft group: {}",
                            s.message()
                        )
                    )),
                }
            }
        }
    }
}

/// The CA digest a token pins, and what to call the token in errors.
pub(crate) struct Pinned<'a> {
    pub digest: &'a str,
    /// "join token", "enrollment token".
    pub what: &'static str,
    /// Where a fresh token comes from.
    pub fresh: &'static str,
}

impl<'a> Pinned<'a> {
    fn join(digest: &'a str) -> Self {
        Pinned {
            digest,
            what: "join token",
            fresh: "ask a manager for a fresh token with 'shoal join-token worker'",
        }
    }
}

/// A TLS connection to the manager at `remote` pinned to the token's CA digest, and the
/// cluster's root, checked against it.
pub(crate) async fn reach_cluster(
    token: &Pinned<'_>,
    remote: &str,
) -> Result<(Arc<rustls::ClientConfig>, Vec<u8>)> {
    let (what, fresh) = (token.what, token.fresh);
    let pin = BootstrapPin::new(token.digest);
    let boot = Arc::new(shoal_pki::pinned_bootstrap_client_config(pin.clone())?);
    let ch = match channel(remote, boot.clone()).await {
        Ok(c) => c,
        Err(e) => {
            if let Some(got) = pin.presented_digest() {
                bail!(user(
                    tonic::Code::PermissionDenied,
                    format!(
                        "{what} does not match this cluster's CA (expected digest {}, got {got}): the address may not be this cluster's manager, or the token is old; {fresh}",
                        token.digest
                    )
                ));
            }
            bail!(user(
                tonic::Code::Unavailable,
                format!("cannot reach a manager at {remote}: {}", error_chain(&e))
            ));
        }
    };
    let mut root_req = tonic::Request::new(GetRootCaCertificateRequest {});
    root_req.set_timeout(JOIN_CALL_TIMEOUT);
    let root_der = CaClient::new(ch)
        .get_root_ca_certificate(root_req)
        .await
        .map_err(|s| user(s.code(), format!("manager at {remote}: {}", s.message())))?
        .into_inner()
        .cert_der;
    let got = shoal_pki::cert_digest(&root_der);
    if got != token.digest {
        bail!(user(
            tonic::Code::PermissionDenied,
            format!(
                "{what} does not match this cluster's CA (expected digest {}, got {got}): {fresh}",
                token.digest
            )
        ));
    }
    Ok((boot, root_der))
}

/// A certificate for `key` from the cluster's CA (any manager's address works: a
/// follower names the leader, which issues it), and the manager that issued it.
async fn request_certificate(
    boot: &Arc<rustls::ClientConfig>,
    remote: &str,
    token: &JoinToken,
    key: &NodeKey,
    advertise: &str,
    rejoin: Option<&Stale>,
) -> Result<(shoal_proto::ca::IssueNodeCertificateResponse, String)> {
    let req = IssueNodeCertificateRequest {
        csr_der: key.csr_der()?,
        token: token.to_string(),
        advertise_addr: advertise.to_string(),
        hostname: shoal_agent::describe::hostname(),
        rejoin_cert_der: rejoin.map(|r| r.cert_der.clone()).unwrap_or_default(),
    };
    // The manager's answer, or why it could not be reached.
    let ask = |addr: String| {
        let (boot, req) = (boot.clone(), req.clone());
        async move {
            let ch = channel(&addr, boot).await?;
            let mut r = tonic::Request::new(req);
            r.set_timeout(JOIN_CALL_TIMEOUT);
            Ok::<_, tonic::transport::Error>(CaClient::new(ch).issue_node_certificate(r).await)
        }
    };
    let mut remote = remote.to_string();
    let mut issued = ask(remote.clone()).await.map_err(|e| {
        user(
            tonic::Code::Unavailable,
            format!("cannot reach a manager at {remote}: {}", error_chain(&e)),
        )
    })?;
    if let Some(leader) = issued
        .as_ref()
        .err()
        .and_then(shoal_agent::managers::leader_pointer)
    {
        if let Ok(answer) = ask(leader.clone()).await {
            issued = answer;
            remote = leader;
        }
    }
    let issued = issued
        .map_err(|s| user(s.code(), s.message().to_string()))?
        .into_inner();
    Ok((issued, remote))
}

/// The issued certificate's identity, checked against the pinned root (and for a
/// rejoin, the node it must name), and the roots to trust: the cluster's now (both
/// during a rotation), as long as the pinned root is one of them.
fn check_issued(
    issued: &shoal_proto::ca::IssueNodeCertificateResponse,
    root_der: &[u8],
    rejoin: Option<&Stale>,
) -> Result<(shoal_pki::NodeIdentity, Vec<Vec<u8>>)> {
    let cluster_id = ClusterId::parse(&issued.cluster_id)?;
    let trust = ClusterTrust::new(cluster_id, &[root_der.to_vec()])?;
    let intermediates: Vec<rustls::pki_types::CertificateDer<'_>> = issued
        .intermediates_der
        .iter()
        .map(|c| rustls::pki_types::CertificateDer::from(c.as_slice()))
        .collect();
    let identity = trust
        .verify(&issued.cert_der, &intermediates, SystemTime::now())
        .context("the manager issued a certificate we cannot use")?;
    let roots = if issued.roots_der.iter().any(|r| r == root_der) {
        issued.roots_der.clone()
    } else {
        vec![root_der.to_vec()]
    };
    if identity.role() == Role::Manager && rejoin.is_some() {
        bail!(user(
            tonic::Code::InvalidArgument,
            "--rejoin takes a worker token: a node rejoins in the role the managers hold for it"
        ));
    }
    if let Some(s) = rejoin {
        if identity.node_id().as_str() != s.state.node_id {
            bail!(
                "the manager issued a certificate for node {} instead of {}",
                identity.node_id(),
                s.state.node_id
            );
        }
    }
    Ok((identity, roots))
}

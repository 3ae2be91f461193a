//! Leaving: `shoal leave`, a node the managers removed or no longer trust, and
//! unlocking a locked manager.

use super::*;

impl Daemon {
    /// A manager removed this node: stop its containers and forget the cluster.
    pub async fn handle_removed(&self) {
        let Some((busy, active)) = self
            .take_active("leaving the cluster (it was removed)")
            .await
        else {
            return;
        };
        stop_and_remove_tasks(*active).await;
        if let Err(e) = self.dir.wipe() {
            tracing::error!("cannot forget the cluster state: {e:#}");
        }
        busy.finish(Membership::None {
            note: Some(
                "node removed from cluster: a manager removed this node; its containers were stopped. Join again with a token".into(),
            ),
        })
        .await;
        tracing::warn!(
            "this node was removed from the cluster: containers stopped, cluster state forgotten"
        );
    }

    /// The managers' certificates no longer chain to our roots: the cluster's root was
    /// rotated while this node was away. Stop the agent (containers keep running until
    /// the node rejoins and learns which to keep) and keep the identity for `--rejoin`.
    pub async fn handle_untrusted(&self) {
        let Some((busy, active)) = self
            .take_active("stopping (its roots are out of date)")
            .await
        else {
            return;
        };
        let c = active.creds.get();
        let stale = Stale {
            state: active.state.clone(),
            key_pem: c.key_pem,
            cert_der: c.cert_der,
            why: UNTRUSTED_WHY.into(),
        };
        tracing::warn!("{}", stale.advice());
        stop(*active).await;
        busy.finish(Membership::Stale(stale)).await;
    }

    /// Stops and removes every container this node has, without a running agent (a
    /// node leaving from a membership it could not resume).
    pub(super) async fn remove_containers(&self) {
        use shoal_agent::runtime::ContainerStatus;
        let (rt, net, sec, vol) = (
            self.runtime.clone(),
            self.network.clone(),
            self.secrets.clone(),
            self.volumes.clone(),
        );
        let _ = tokio::task::spawn_blocking(move || {
            let mut ids: std::collections::BTreeSet<String> = rt.list().into_iter().collect();
            ids.extend(net.list());
            for id in ids {
                if let ContainerStatus::Running { .. } = rt.status(&id) {
                    let _ = rt.signal(&id, nix::sys::signal::Signal::SIGKILL);
                    for _ in 0..50 {
                        if !matches!(rt.status(&id), ContainerStatus::Running { .. }) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                if let Err(e) =
                    shoal_agent::controller::remove_task(rt.as_ref(), &net, &sec, &vol, &id)
                {
                    tracing::warn!(container = %id, error = %e, "cannot remove a container");
                }
            }
        })
        .await;
    }

    /// Unlocks a manager that restarted locked: checks the key against its store, then
    /// resumes its membership with it.
    pub async fn unlock(&self, text: &str) -> Result<()> {
        if !matches!(*self.membership.lock().await, Membership::Locked) {
            bail!(user(
                tonic::Code::FailedPrecondition,
                "this node is not locked: there is nothing to unlock"
            ));
        }
        let key = shoal_store::UnlockKey::parse(text)
            .map_err(|e| user(tonic::Code::InvalidArgument, e))?;
        let dir = self.dir.raft_dir();
        let check = {
            let key = key.clone();
            tokio::task::spawn_blocking(move || shoal_store::seal::check_unlock_key(&dir, &key))
                .await?
        };
        match check {
            Ok(()) => {}
            Err(e @ shoal_store::StoreError::WrongUnlockKey) => {
                bail!(user(tonic::Code::PermissionDenied, e.to_string()))
            }
            Err(e) => return Err(e.into()),
        }
        self.dir.unlock_with(key);
        {
            let mut m = self.membership.lock().await;
            if !matches!(*m, Membership::Locked) {
                return Ok(());
            }
            *m = Membership::None { note: None };
        }
        tracing::info!("unlocked");
        if let Err(e) = self.resume().await {
            self.set_damaged(format!("{e:#}")).await;
            return Err(e);
        }
        Ok(())
    }

    pub async fn leave(&self, force: bool) -> Result<()> {
        /// What the node leaves from.
        enum From {
            Active(Box<Active>),
            Stale(Box<Stale>),
            Locked,
            Damaged,
        }
        let (busy, from) = Busy::begin(&self.membership, "leaving the cluster", |m| {
            let from = match m {
                Membership::None { .. } => bail!(user(
                    tonic::Code::FailedPrecondition,
                    "this node is not part of a cluster"
                )),
                Membership::Busy(_) => unreachable!("Busy::begin refuses it"),
                Membership::Active(a) if a.state.role == "manager" && !force => bail!(user(
                    tonic::Code::FailedPrecondition,
                    "this node is a manager: leaving erases its copy of the cluster state (on the only manager, the cluster itself). Demote it first with 'shoal node demote', or use 'shoal leave --force' to do it anyway"
                )),
                Membership::Locked if !force => bail!(user(
                    tonic::Code::FailedPrecondition,
                    format!("{LOCKED_WHY}. Or discard this manager's state with 'shoal leave --force'")
                )),
                Membership::Damaged(_) if !force => bail!(user(
                    tonic::Code::FailedPrecondition,
                    "this node's cluster state could not be loaded: repair it and restart the daemon, or discard it with 'shoal leave --force'"
                )),
                _ => match std::mem::replace(m, Membership::Busy("leaving the cluster")) {
                    Membership::Active(a) => From::Active(a),
                    Membership::Stale(s) => From::Stale(Box::new(s)),
                    Membership::Locked => From::Locked,
                    _ => From::Damaged,
                },
            };
            // A leave that fails half way leaves nothing to go back to but the disk.
            Ok((from, Membership::None { note: None }))
        })
        .await?;
        match from {
            From::Active(active) => {
                // Like swarm: a node that leaves stops its tasks' containers.
                stop_and_remove_tasks(*active).await;
                tracing::info!("left the cluster");
            }
            // A membership kept only for --rejoin: leaving gives it up, and its
            // containers with it, like any leave.
            From::Stale(s) => {
                self.remove_containers().await;
                tracing::info!(node_id = %s.state.node_id, "left the cluster (gave up the identity kept for --rejoin)");
            }
            From::Locked => {
                self.remove_containers().await;
                tracing::info!("discarded the locked manager's state");
            }
            From::Damaged => tracing::info!("discarded the damaged cluster state"),
        }
        let net = self.network.clone();
        let _ = tokio::task::spawn_blocking(move || net.data_plane.shutdown()).await;
        let wiped = self.dir.wipe();
        let _ = self.dir.set_kek(None, "");
        busy.finish(Membership::None { note: None }).await;
        wiped
    }
}

//! The node's agent as the daemon runs it: the session its heartbeat keeps (what the
//! managers' answers change: the managers known, the roots trusted, renewals and role
//! changes), the worker's dependencies, and the certificate renewer, all owned by one
//! [`AgentHandle`].

use super::*;
use shoal_agent::agent::AgentHandle;
use shoal_proto::dispatcher::HeartbeatResponse;

type RenewalInfo = Arc<std::sync::Mutex<crate::renewal::RenewalInfo>>;

impl Daemon {
    /// Starts the agent of a member node with its identity, and its renewer.
    pub(super) fn start_agent(
        &self,
        state: &NodeState,
        creds: &Arc<crate::renewal::Creds>,
    ) -> (AgentHandle, RenewalInfo) {
        let renewal = RenewalInfo::default();
        let renew_now = Arc::new(tokio::sync::Notify::new());
        let beat_now = Arc::new(tokio::sync::Notify::new());
        let session = Session {
            on_redirect: Some(on_redirect(creds.clone())),
            channels: creds.channels.subscribe(),
            description: {
                let mut d = self.description();
                d.data_path_addr = state.data_path_addr.clone();
                d
            },
            advertise_addr: state.advertise_addr.clone(),
            period: DEFAULT_HEARTBEAT,
            removed: Some(self.removed.clone()),
            untrusted: (state.role != "manager").then(|| self.untrusted.clone()),
            renewal_error: Some(renewal_error(renewal.clone())),
            on_beat: Some(on_beat(creds.clone(), renew_now.clone())),
            beat_now: beat_now.clone(),
            data_plane: Some(self.network.data_plane.clone()),
            volumes: Some(self.volumes.clone()),
        };
        let mut agent = shoal_agent::agent::start(session, |status| Deps {
            runtime: self.runtime.clone(),
            images: self.images.clone(),
            creds: self.creds.clone(),
            status,
            network: self.network.clone(),
            secrets: self.secrets.clone(),
            volumes: self.volumes.clone(),
            identities: Some(Arc::new(shoal_agent::identity::Identities::new(
                creds.channels.subscribe(),
            ))),
        });
        let renewer = crate::renewal::Renewer {
            creds: creds.clone(),
            node_id: state.node_id.clone(),
            info: renewal.clone(),
            renew_now,
            beat_now,
            role_changed: self.role_changed.clone(),
        };
        agent.own(|cancel| renewer.run(cancel));
        (agent, renewal)
    }
}

/// What each heartbeat answer changes: the managers known, the roots trusted, and a
/// renewal now when the managers rotate the root or change the node's role.
fn on_beat(
    creds: Arc<crate::renewal::Creds>,
    renew_now: Arc<tokio::sync::Notify>,
) -> shoal_agent::heartbeat::OnBeat {
    Arc::new(move |resp: &HeartbeatResponse| {
        if !resp.managers.is_empty() {
            creds.learn_managers(&resp.managers);
        }
        if let Err(e) = creds.adopt_roots(&resp.roots_der) {
            tracing::warn!(error = %format!("{e:#}"), "not adopting the roots the managers sent");
        }
        if let Ok(mut w) = creds.wanted_root.lock() {
            *w = (!resp.rotation_root_digest.is_empty()).then(|| resp.rotation_root_digest.clone());
        }
        if resp.renew_certificate && creds.rotation_pending() {
            renew_now.notify_one();
        }
        // Promoted or demoted: the certificate for the new role, now.
        if !resp.role.is_empty() {
            if let Ok(mut w) = creds.wanted_role.lock() {
                *w = Some(resp.role.clone());
            }
            if creds.role_change_pending() {
                renew_now.notify_one();
            }
        }
    })
}

/// The last renewal failure, which every beat reports.
fn renewal_error(renewal: RenewalInfo) -> Arc<dyn Fn() -> String + Send + Sync> {
    Arc::new(move || {
        renewal
            .lock()
            .ok()
            .and_then(|r| r.last_error.clone())
            .unwrap_or_default()
    })
}

/// Switches managers: to the leader a follower named, or to the next one.
fn on_redirect(creds: Arc<crate::renewal::Creds>) -> shoal_agent::heartbeat::Redirect {
    Arc::new(move |leader: Option<String>| {
        let r = match leader {
            Some(addr) => creds.switch_to(&addr),
            None => creds.try_next_manager(),
        };
        if let Err(e) = r {
            tracing::warn!(error = %format!("{e:#}"), "cannot switch managers");
        }
    })
}

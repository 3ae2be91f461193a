//! The node's session with the managers: a heartbeat every period, as the dispatcher
//! asks. A missed beat is retried at once against the next manager; the dispatcher
//! decides liveness, not us.

use shoal_proto::dispatcher::dispatcher_client::DispatcherClient;
use shoal_proto::dispatcher::{HeartbeatRequest, HeartbeatResponse};
use shoal_proto::objects::NodeDescription;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// The node's current channel to the managers; replaced when its certificate is renewed.
pub type Channels = tokio::sync::watch::Receiver<Channel>;

pub struct Session {
    pub channels: Channels,
    pub description: NodeDescription,
    pub advertise_addr: String,
    pub period: Duration,
    /// Notified when a manager says this node was removed from the cluster.
    pub removed: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// Notified when the managers' certificates stop verifying against the roots this
    /// node trusts (the cluster's root was rotated while the node was away).
    pub untrusted: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// The node's last certificate renewal failure, reported with every beat.
    pub renewal_error: Option<std::sync::Arc<dyn Fn() -> String + Send + Sync>>,
    /// Sees every answer (roots the cluster trusts, whether to renew now).
    pub on_beat: Option<OnBeat>,
    /// Notified to beat at once (after a renewal, so the managers see the new
    /// certificate in use without waiting a period).
    pub beat_now: std::sync::Arc<tokio::sync::Notify>,
}

/// What the node does with a heartbeat's answer.
pub type OnBeat = std::sync::Arc<dyn Fn(&HeartbeatResponse) + Send + Sync>;

/// Whether a failed call means the manager's certificate does not chain to a root this
/// node trusts.
pub fn means_untrusted_manager(s: &tonic::Status) -> bool {
    let text = format!("{} {}", s.message(), error_chain_of(s));
    text.contains("UnknownIssuer")
}

fn error_chain_of(s: &tonic::Status) -> String {
    use std::error::Error;
    s.source()
        .map(crate::connect::error_chain)
        .unwrap_or_default()
}

/// Consecutive beats refused for an unknown issuer before the node gives up on its
/// identity (a passing network glitch never looks like this).
const UNTRUSTED_BEATS: u32 = 3;

/// Whether a refusal means this node is no longer a member of the cluster.
pub fn means_removed(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::PermissionDenied | tonic::Code::NotFound
    ) && (s.message().contains("node removed from cluster")
        || s.message().contains("is not a member of this cluster"))
}

/// One heartbeat. Used at join to confirm the manager accepts our certificate: with TLS
/// 1.3 a refused client certificate only shows on the first call.
pub async fn heartbeat_once(
    channel: Channel,
    description: NodeDescription,
    advertise_addr: String,
) -> Result<Duration, tonic::Status> {
    let resp = heartbeat_call(
        channel,
        HeartbeatRequest {
            description: Some(description),
            advertise_addr,
            cert_renewal_error: String::new(),
        },
    )
    .await?;
    Ok(Duration::from_millis(resp.period_ms.max(100)))
}

async fn heartbeat_call(
    channel: Channel,
    req: HeartbeatRequest,
) -> Result<HeartbeatResponse, tonic::Status> {
    let mut c = DispatcherClient::new(channel);
    let mut req = tonic::Request::new(req);
    req.set_timeout(Duration::from_secs(5));
    Ok(c.heartbeat(req).await?.into_inner())
}

/// A beat a little early, at a random point in the last tenth of the period, so a
/// fleet restarted together does not beat in lockstep; never late, so the manager's
/// three-period grace is never eaten into.
fn jitter(period: Duration) -> Duration {
    use rand::Rng;
    let tenth = period / 10;
    period - tenth.mul_f64(rand::rng().random::<f64>())
}

impl Session {
    /// Heartbeats until cancelled.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut failures = 0u32;
        let mut untrusted = 0u32;
        loop {
            let channel = self.channels.borrow().clone();
            // Installing runc while the daemon runs clears the error at the next beat.
            self.description.runtime_error =
                crate::runtime::runc::runtime_error().unwrap_or_default();
            let req = HeartbeatRequest {
                description: Some(self.description.clone()),
                advertise_addr: self.advertise_addr.clone(),
                cert_renewal_error: self
                    .renewal_error
                    .as_ref()
                    .map(|f| {
                        let mut e = f();
                        shoal_proto::limits::truncate(&mut e, shoal_proto::limits::MAX_STATUS_TEXT);
                        e
                    })
                    .unwrap_or_default(),
            };
            let r = heartbeat_call(channel, req).await;
            let wait = match r {
                Ok(resp) => {
                    if failures > 0 {
                        tracing::info!("heartbeat to manager restored");
                    }
                    failures = 0;
                    untrusted = 0;
                    if let Some(f) = &self.on_beat {
                        f(&resp);
                    }
                    let p = Duration::from_millis(resp.period_ms.max(100));
                    self.period = p;
                    jitter(p)
                }
                Err(e) if means_untrusted_manager(&e) && self.untrusted.is_some() => {
                    untrusted += 1;
                    tracing::warn!(error = %error_chain_of(&e), "the manager's certificate is not signed by a root this node trusts");
                    if untrusted >= UNTRUSTED_BEATS {
                        if let Some(n) = &self.untrusted {
                            n.notify_one();
                        }
                        return;
                    }
                    self.period.min(Duration::from_secs(1))
                }
                Err(e) if means_removed(&e) => {
                    tracing::warn!(error = %e.message(), "a manager says this node was removed from the cluster");
                    if let Some(n) = &self.removed {
                        n.notify_one();
                    }
                    return;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(20) {
                        tracing::warn!(code = ?e.code(), error = %e.message(), "heartbeat failed");
                    }
                    // Back off from 100 ms up to the period.
                    (Duration::from_millis(100) * failures.min(50)).min(self.period)
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.beat_now.notified() => {}
            }
        }
    }
}

/// Keeps the node's session stream open: applies assignments to the worker and serves
/// log requests, reconnecting with backoff until cancelled.
pub async fn run_assignments(
    mut channels: Channels,
    worker: crate::worker::Worker,
    description: NodeDescription,
    cancel: CancellationToken,
) {
    use shoal_proto::dispatcher::SessionRequest;
    use tokio_stream::StreamExt;
    let mut failures = 0u32;
    loop {
        channels.mark_unchanged();
        let channel = channels.borrow().clone();
        let mut client = DispatcherClient::new(channel.clone());
        let opened = tokio::select! {
            _ = cancel.cancelled() => return,
            r = client.session(SessionRequest { description: Some(description.clone()) }) => r,
        };
        match opened {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                // Assignments split over several messages, applied once all are here.
                let mut split: Option<shoal_proto::dispatcher::SessionMessage> = None;
                loop {
                    let msg = tokio::select! {
                        _ = cancel.cancelled() => return,
                        // A renewed certificate: reopen the session with it.
                        _ = channels.changed() => break,
                        m = stream.next() => m,
                    };
                    match msg {
                        Some(Ok(mut m)) => {
                            failures = 0;
                            if let Some(mut first) = split.take() {
                                first.assignments.append(&mut m.assignments);
                                first.log_subscriptions.append(&mut m.log_subscriptions);
                                first.more = m.more;
                                m = first;
                            }
                            if m.more {
                                split = Some(m);
                                continue;
                            }
                            worker.apply(&m);
                            for sub in m.log_subscriptions {
                                if sub.close {
                                    continue;
                                }
                                let known = worker.has_task(&sub.task_id);
                                tokio::spawn(crate::logs::publish(
                                    channels.clone(),
                                    worker.deps().runtime.clone(),
                                    sub,
                                    known,
                                ));
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(code = ?e.code(), error = %e.message(), "session stream broke");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(code = ?e.code(), error = %e.message(), "cannot open a session with the manager");
                }
            }
        }
        failures += 1;
        let wait = (Duration::from_millis(100) * failures.min(20)).min(Duration::from_secs(2));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

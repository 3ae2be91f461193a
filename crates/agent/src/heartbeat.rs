//! The node's heartbeat to the managers: a beat every period, as the dispatcher
//! asks, on one long-lived stream. A missed beat is retried at once against the next
//! manager; the dispatcher decides liveness, not us.

use crate::managers::{leader_pointer, Channels};
use shoal_proto::dispatcher::dispatcher_client::DispatcherClient;
use shoal_proto::dispatcher::{HeartbeatRequest, HeartbeatResponse};
use shoal_proto::objects::NodeDescription;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

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
    /// The data plane, whose state every beat reports.
    pub data_plane: Option<std::sync::Arc<crate::network::overlay::DataPlane>>,
    /// The node's volumes, which every beat reports (the managers store them only when
    /// they change).
    pub volumes: Option<std::sync::Arc<crate::volumes::Volumes>>,
    /// Notified to beat at once (after a renewal, so the managers see the new
    /// certificate in use without waiting a period).
    pub beat_now: std::sync::Arc<tokio::sync::Notify>,
    /// Switches managers: to the leader a follower named, or (`None`) to the next
    /// manager when this one cannot be reached.
    pub on_redirect: Option<Redirect>,
}

/// See [`Session::on_redirect`].
pub type Redirect = std::sync::Arc<dyn Fn(Option<String>) + Send + Sync>;

/// Unanswered beats before trying another manager.
const UNREACHABLE_BEATS: u32 = 3;

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

/// How long a beat waits for its answer.
const BEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// On a heartbeat stream the manager answers a beat when the answer changed, and at
/// least every this many beats (so the node knows the manager still hears it).
pub const ANSWER_EVERY: u32 = shoal_proto::limits::HEARTBEAT_ANSWER_EVERY;

async fn heartbeat_call(
    channel: Channel,
    req: HeartbeatRequest,
) -> Result<HeartbeatResponse, tonic::Status> {
    let mut c = DispatcherClient::new(channel);
    let mut req = tonic::Request::new(req);
    req.set_timeout(BEAT_TIMEOUT);
    Ok(c.heartbeat(req).await?.into_inner())
}

/// An open heartbeat stream: beats go in, answers come back in order.
pub struct BeatStream {
    beats: tokio::sync::mpsc::Sender<HeartbeatRequest>,
    answers: tonic::Streaming<HeartbeatResponse>,
}

impl BeatStream {
    /// Opens a stream on `channel` with `first` as its first beat.
    pub async fn open(channel: Channel, first: HeartbeatRequest) -> Result<Self, tonic::Status> {
        let (beats, rx) = tokio::sync::mpsc::channel(1);
        let _ = beats.try_send(first);
        let opened = tokio::time::timeout(
            BEAT_TIMEOUT,
            DispatcherClient::new(channel)
                .heartbeats(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        .map_err(|_| no_answer())??;
        Ok(BeatStream {
            beats,
            answers: opened.into_inner(),
        })
    }

    /// Sends a beat without waiting for an answer.
    pub async fn send(&mut self, req: HeartbeatRequest) -> Result<(), tonic::Status> {
        self.beats.send(req).await.map_err(|_| {
            tonic::Status::unavailable("the heartbeat stream to the manager is closed")
        })
    }

    /// The next answer, however long it takes.
    pub async fn answer(&mut self) -> Result<HeartbeatResponse, tonic::Status> {
        match self.answers.message().await {
            Ok(Some(a)) => Ok(a),
            Ok(None) => Err(tonic::Status::unavailable(
                "the manager ended the heartbeat stream",
            )),
            Err(s) => Err(s),
        }
    }

    /// Sends a beat (none when `req` is `None`: the one [`BeatStream::open`] queued)
    /// and waits for the next answer. The manager answers a beat only when its answer
    /// changed or every [`ANSWER_EVERY`] beats: use this only for a first beat.
    pub async fn beat(
        &mut self,
        req: Option<HeartbeatRequest>,
    ) -> Result<HeartbeatResponse, tonic::Status> {
        if let Some(req) = req {
            self.send(req).await?;
        }
        tokio::time::timeout(BEAT_TIMEOUT, self.answer())
            .await
            .map_err(|_| no_answer())?
    }
}

fn no_answer() -> tonic::Status {
    tonic::Status::deadline_exceeded("the manager stopped answering heartbeats")
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
    /// Sends one beat on the open stream, or opens a new one with it (after a failure,
    /// or when the channel changed: a renewed certificate, another manager) and waits
    /// for the new stream's first answer.
    async fn send_beat(
        &mut self,
        open: &mut Option<BeatStream>,
        req: HeartbeatRequest,
    ) -> Result<Option<HeartbeatResponse>, tonic::Status> {
        if self.channels.has_changed().unwrap_or(false) {
            *open = None;
        }
        let r = match open {
            Some(s) => s.send(req).await.map(|()| None),
            None => {
                let channel = self.channels.borrow_and_update().clone();
                match BeatStream::open(channel, req).await {
                    Ok(s) => open.insert(s).beat(None).await.map(Some),
                    Err(e) => Err(e),
                }
            }
        };
        if r.is_err() {
            *open = None;
        }
        r
    }

    /// Heartbeats until cancelled. Beats go out every period whether or not answers
    /// come: the manager answers a beat when its answer changed, and at least every
    /// [`ANSWER_EVERY`] beats, so a stream with no answer for longer is dead.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut tally = Tally::default();
        let mut open: Option<BeatStream> = None;
        let mut answered = tokio::time::Instant::now();
        loop {
            // Installing runc while the daemon runs clears the error at the next beat.
            self.description.runtime_error =
                crate::runtime::runc::runtime_error().unwrap_or_default();
            if let Some(p) = &self.data_plane {
                self.description.data_plane = Some(p.status());
            }
            if let Some(v) = &self.volumes {
                self.description.volumes = v.summaries();
            }
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
            let stale = self.period * ANSWER_EVERY + BEAT_TIMEOUT;
            let r = if open.is_some() && answered.elapsed() > stale {
                open = None;
                Err(no_answer())
            } else {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = self.send_beat(&mut open, req) => r,
                }
            };
            let mut wait = match r {
                Ok(Some(resp)) => {
                    answered = tokio::time::Instant::now();
                    self.answered(&resp, &mut tally)
                }
                Ok(None) => jitter(self.period),
                Err(e) => match self.failed(e, &mut tally) {
                    Some(w) => w,
                    None => return,
                },
            };
            // Until the next beat, take the answers as they come.
            let next = tokio::time::Instant::now() + wait;
            loop {
                let answer = async {
                    match open.as_mut() {
                        Some(s) => s.answer().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep_until(next) => break,
                    _ = self.beat_now.notified() => break,
                    a = answer => match a {
                        Ok(resp) => {
                            answered = tokio::time::Instant::now();
                            self.answered(&resp, &mut tally);
                        }
                        Err(e) => {
                            open = None;
                            match self.failed(e, &mut tally) {
                                Some(w) => wait = w,
                                None => return,
                            }
                            tokio::select! {
                                _ = cancel.cancelled() => return,
                                _ = tokio::time::sleep(wait) => break,
                                _ = self.beat_now.notified() => break,
                            }
                        }
                    },
                }
            }
        }
    }

    /// Takes an answer; returns the wait until the next beat.
    fn answered(&mut self, resp: &HeartbeatResponse, tally: &mut Tally) -> Duration {
        if tally.failures > 0 {
            tracing::info!("heartbeat to manager restored");
        }
        *tally = Tally::default();
        if let Some(f) = &self.on_beat {
            f(resp);
        }
        self.period = Duration::from_millis(resp.period_ms.max(100));
        jitter(self.period)
    }

    /// Takes a failure; returns the wait until the next try, or `None` when this node
    /// must stop beating (removed, or it no longer trusts the managers).
    fn failed(&mut self, e: tonic::Status, tally: &mut Tally) -> Option<Duration> {
        if means_untrusted_manager(&e) && self.untrusted.is_some() {
            tally.untrusted += 1;
            tracing::warn!(error = %error_chain_of(&e), "the manager's certificate is not signed by a root this node trusts");
            if tally.untrusted >= UNTRUSTED_BEATS {
                if let Some(n) = &self.untrusted {
                    n.notify_one();
                }
                return None;
            }
            return Some(self.period.min(Duration::from_secs(1)));
        }
        if means_removed(&e) {
            tracing::warn!(error = %e.message(), "a manager says this node was removed from the cluster");
            if let Some(n) = &self.removed {
                n.notify_one();
            }
            return None;
        }
        if let (Some(f), Some(l)) = (&self.on_redirect, leader_pointer(&e)) {
            f(Some(l));
            return Some(Duration::from_millis(10));
        }
        tally.failures += 1;
        let failures = tally.failures;
        if failures == 1 || failures.is_multiple_of(20) {
            tracing::warn!(code = ?e.code(), error = %e.message(), "heartbeat failed");
        }
        if matches!(
            e.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ) && failures.is_multiple_of(UNREACHABLE_BEATS)
        {
            if let Some(f) = &self.on_redirect {
                f(None);
            }
        }
        // Back off from 100 ms up to the period.
        Some((Duration::from_millis(100) * failures.min(50)).min(self.period))
    }
}

/// Failures in a row, of any kind and of trust.
#[derive(Default)]
struct Tally {
    failures: u32,
    untrusted: u32,
}

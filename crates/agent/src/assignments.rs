//! The node's session stream: the assignments, secrets, peers and networks the managers
//! send, applied to the worker, and the log requests they relay.

use crate::managers::Channels;
use shoal_proto::dispatcher::dispatcher_client::DispatcherClient;
use shoal_proto::objects::NodeDescription;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Keeps the node's session stream open: applies assignments to the worker and serves
/// log requests, reconnecting with backoff until cancelled. The log publishers it starts
/// are its own: they are stopped and awaited before it returns.
pub async fn run_assignments(
    channels: Channels,
    worker: crate::worker::Worker,
    description: NodeDescription,
    cancel: CancellationToken,
) {
    let mut publishers = tokio::task::JoinSet::new();
    follow_session(channels, worker, description, cancel, &mut publishers).await;
    publishers.shutdown().await;
}

async fn follow_session(
    mut channels: Channels,
    worker: crate::worker::Worker,
    description: NodeDescription,
    cancel: CancellationToken,
    publishers: &mut tokio::task::JoinSet<()>,
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
                                first.exec_requests.append(&mut m.exec_requests);
                                first.secrets.append(&mut m.secrets);
                                first.secrets_removed.append(&mut m.secrets_removed);
                                first.more = m.more;
                                m = first;
                            }
                            if m.more {
                                split = Some(m);
                                continue;
                            }
                            // Secrets before the tasks that use them; forgotten after.
                            worker
                                .deps()
                                .secrets
                                .receive(&m.secrets, m.secrets_complete);
                            worker.apply(&m).await;
                            worker.deps().secrets.forget(&m.secrets_removed);
                            // Peers first: they give the node its tunnel address,
                            // which tells its own tasks from others.
                            if let Some(p) = m.peers.take() {
                                worker.deps().network.set_peers(p);
                            }
                            if let Some(v) = m.networks.take() {
                                worker.deps().network.set_networks(v);
                            }
                            for req in m.exec_requests {
                                let known =
                                    req.start.as_ref().is_some_and(|s| worker.has_task(&s.task));
                                while publishers.try_join_next().is_some() {}
                                publishers.spawn(crate::exec::serve(
                                    channels.clone(),
                                    worker.deps().runtime.clone(),
                                    req,
                                    known,
                                ));
                            }
                            for sub in m.log_subscriptions {
                                if sub.close {
                                    continue;
                                }
                                let known = worker.has_task(&sub.task_id);
                                while publishers.try_join_next().is_some() {}
                                publishers.spawn(crate::logs::publish(
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

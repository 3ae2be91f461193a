//! The agent as one owned unit. [`start`] runs the node's heartbeat, its session stream
//! (assignments, and the log publishers it starts) and the status reporter; the
//! [`AgentHandle`] it returns stops all of them, and anything else the node gives it to
//! own (its certificate renewer), and waits until each has ended.

use crate::controller::Deps;
use crate::heartbeat::Session;
use crate::reporter::StatusSender;
use crate::worker::Worker;
use std::future::Future;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A running agent. Dropping it does not stop it: call [`AgentHandle::stop`].
pub struct AgentHandle {
    worker: Worker,
    jobs: Jobs,
}

/// Jobs that run until one token is cancelled, and are waited for.
struct Jobs {
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl Jobs {
    fn own<F>(&mut self, job: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(job(self.cancel.clone()));
    }

    async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts the agent: the reporter sends what the task controllers report, the session
/// stream applies assignments to a worker made by `deps` (given the reporter's sender),
/// and the heartbeat keeps the node Ready and fails over between managers.
pub fn start(session: Session, deps: impl FnOnce(StatusSender) -> Deps) -> AgentHandle {
    let mut jobs = Jobs {
        cancel: CancellationToken::new(),
        tasks: JoinSet::new(),
    };
    let (status, reports) = crate::reporter::channel();
    let channels = session.channels.clone();
    jobs.own(|cancel| crate::reporter::run(channels, reports, cancel));
    let worker = Worker::new(deps(status));
    let (channels, w, description) = (
        session.channels.clone(),
        worker.clone(),
        session.description.clone(),
    );
    jobs.own(|cancel| crate::assignments::run_assignments(channels, w, description, cancel));
    jobs.own(|cancel| session.run(cancel));
    AgentHandle { worker, jobs }
}

impl AgentHandle {
    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    /// Runs `job` as part of the agent: it gets the agent's cancellation token, and
    /// [`AgentHandle::stop`] waits for it.
    pub fn own<F>(&mut self, job: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.jobs.own(job);
    }

    /// Stops everything the agent runs and waits until it has all ended. The tasks'
    /// containers run on (the next start adopts them).
    pub async fn stop(self) {
        self.jobs.stop().await;
        self.worker.stop().await;
    }

    /// Stops the agent, then every task's container and what it left (a node that
    /// leaves the cluster, as in swarm mode).
    pub async fn stop_and_remove_tasks(self) {
        self.jobs.stop().await;
        self.worker.remove_all().await;
        self.worker.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn stop_cancels_and_waits_for_what_the_agent_owns() {
        let mut jobs = Jobs {
            cancel: CancellationToken::new(),
            tasks: JoinSet::new(),
        };
        let ended = Arc::new(AtomicBool::new(false));
        let e = ended.clone();
        jobs.own(|cancel| async move {
            cancel.cancelled().await;
            // Ending takes a moment: stop must wait for it.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            e.store(true, Ordering::SeqCst);
        });
        jobs.stop().await;
        assert!(
            ended.load(Ordering::SeqCst),
            "stop returned before its job ended"
        );
    }
}

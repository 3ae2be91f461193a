//! The supervisor of leader-only loops. Every loop that writes to the store (node
//! liveness, the task status writer, orchestrators and scheduler, root rotation
//! finishing, revocation pruning) is started here when this manager becomes leader,
//! under a cancellation token for that term, and is cancelled *and awaited* when it
//! steps down. A loop never decides for itself whether it leads. Read models (the
//! access list, the trusted roots) run on every manager, outside this module.
//!
//! The term itself is published as a [`Term`]: what serves nodes only while this manager
//! leads (their sessions, heartbeat streams, log relays) holds its token and ends the
//! moment the term does, as the loops do.

use shoal_store::{Leadership, Store};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Starts one leader-only loop for a term; the loop returns once the token is cancelled.
pub type Starter = Box<dyn Fn(CancellationToken) -> BoxFuture + Send + Sync>;

/// A term of leadership of this manager: its number, and a token cancelled the moment
/// it ends (before the term's loops are awaited).
#[derive(Clone, Debug)]
pub struct Term {
    pub term: u64,
    pub ended: CancellationToken,
}

/// The term this manager leads in now, if it leads.
pub type Terms = watch::Receiver<Option<Term>>;

/// A named leader-only loop.
pub struct LeaderLoop {
    pub name: &'static str,
    pub start: Starter,
}

impl LeaderLoop {
    pub fn new<F, Fut>(name: &'static str, f: F) -> LeaderLoop
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        LeaderLoop {
            name,
            start: Box::new(move |c| Box::pin(f(c))),
        }
    }
}

/// The store's leadership as a watch channel (what [`supervise`] follows). Ends when
/// the store shuts down or `cancel` fires.
pub fn follow_store(store: &Store, cancel: CancellationToken) -> watch::Receiver<Leadership> {
    let mut src = store.leadership();
    let (tx, rx) = watch::channel(src.current());
    tokio::spawn(async move {
        let mut last = src.current();
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => return,
                n = src.changed(last) => n,
            };
            let Some(n) = next else { return };
            last = n;
            if tx.send(n).is_err() {
                return;
            }
        }
    });
    rx
}

/// Runs `loops` for each term this manager leads, until `cancel`, and publishes the term
/// on `terms` while it lasts.
pub async fn supervise(
    mut leadership: watch::Receiver<Leadership>,
    loops: Vec<LeaderLoop>,
    terms: watch::Sender<Option<Term>>,
    cancel: CancellationToken,
) {
    loop {
        let now = *leadership.borrow_and_update();
        if let Leadership::Leader { term } = now {
            tracing::info!(term, "leading: starting the control loops");
            let term_cancel = cancel.child_token();
            terms.send_replace(Some(Term {
                term,
                ended: term_cancel.clone(),
            }));
            let mut running = JoinSet::new();
            for l in &loops {
                let name = l.name;
                let fut = (l.start)(term_cancel.clone());
                running.spawn(async move {
                    fut.await;
                    name
                });
            }
            // Until the leadership changes (or the manager stops); a loop that ends
            // early is logged, not restarted: it would end again.
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = leadership.changed() => {
                        if r.is_err() || !matches!(*leadership.borrow(), Leadership::Leader { term: t } if t == term) {
                            break;
                        }
                    }
                    Some(done) = running.join_next() => {
                        if let Ok(name) = done {
                            if !term_cancel.is_cancelled() {
                                tracing::warn!(term, "control loop {name} ended while leading");
                            }
                        }
                    }
                }
            }
            terms.send_replace(None);
            term_cancel.cancel();
            while running.join_next().await.is_some() {}
            tracing::info!(term, "stepped down: control loops stopped");
        } else {
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = leadership.changed() => if r.is_ok() { continue },
            }
        }
        if cancel.is_cancelled() || leadership.has_changed().is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A loop that counts how many of it run at once.
    fn counting(running: Arc<AtomicUsize>, started: Arc<AtomicUsize>) -> LeaderLoop {
        LeaderLoop::new("counting", move |cancel| {
            let (running, started) = (running.clone(), started.clone());
            async move {
                running.fetch_add(1, Ordering::SeqCst);
                started.fetch_add(1, Ordering::SeqCst);
                cancel.cancelled().await;
                // Stopping takes a moment: the supervisor must wait for it.
                tokio::time::sleep(Duration::from_millis(20)).await;
                running.fetch_sub(1, Ordering::SeqCst);
            }
        })
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn loops_run_only_while_leading_and_are_awaited_when_stepping_down() {
        let (tx, rx) = watch::channel(Leadership::Follower { leader: None });
        let (running, started) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let cancel = CancellationToken::new();
        let (terms_tx, terms) = watch::channel(None);
        let sup = tokio::spawn(supervise(
            rx,
            vec![counting(running.clone(), started.clone())],
            terms_tx,
            cancel.clone(),
        ));
        settle().await;
        assert_eq!(running.load(Ordering::SeqCst), 0, "a follower runs none");
        assert!(terms.borrow().is_none(), "a follower has no term");

        tx.send(Leadership::Leader { term: 2 }).unwrap();
        settle().await;
        assert_eq!(running.load(Ordering::SeqCst), 1, "the leader runs it");
        let term = terms.borrow().clone().expect("the term while leading");
        assert_eq!(term.term, 2);
        assert!(!term.ended.is_cancelled());

        tx.send(Leadership::Follower { leader: Some(3) }).unwrap();
        settle().await;
        assert_eq!(running.load(Ordering::SeqCst), 0, "stopped on step-down");
        assert!(term.ended.is_cancelled(), "what holds the term sees it end");
        assert!(terms.borrow().is_none());

        // A new term starts a fresh loop; a later term while leading restarts it.
        tx.send(Leadership::Leader { term: 4 }).unwrap();
        settle().await;
        tx.send(Leadership::Leader { term: 5 }).unwrap();
        settle().await;
        assert_eq!(running.load(Ordering::SeqCst), 1, "one loop per term");
        assert_eq!(started.load(Ordering::SeqCst), 3);

        cancel.cancel();
        sup.await.unwrap();
        assert_eq!(running.load(Ordering::SeqCst), 0, "awaited at shutdown");
    }
}

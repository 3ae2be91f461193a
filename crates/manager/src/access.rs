//! Who may call, right now: the read model every manager checks on each call and on
//! each open stream. It holds, from the store, the member nodes with the certificates
//! each may still use, and the revoked serials; one store watch keeps it current, so a
//! removal, a revocation or a superseded certificate is refused at once on every
//! manager, also on connections and streams that are already open.
//!
//! A node may use its current certificate and, until the managers have seen it use that
//! one for [`SUPERSEDED_GRACE`], the ones it superseded (a renewal whose answer was lost
//! must not lock the node out). Any other serial naming the node is refused, however
//! many renewals ago it was issued: no certificate outlives its replacement.

use crate::time::unix_now;
use shoal_pki::NodeIdentity;
use shoal_proto::objects::{Node, RevokedCert};
use shoal_store::{Change, Object, Store, Watch};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// How long a superseded certificate still works after the node was seen using its
/// successor: calls already in flight with the old one finish.
pub const SUPERSEDED_GRACE: Duration = Duration::from_secs(30);

/// Why a certificate is refused. The texts are the contract agents and users read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The node was removed (its certificates are on record as revoked for that).
    Removed,
    /// This manager does not know the node, and has no record of its removal: its copy
    /// of the cluster state may be behind (a manager still catching up).
    Unknown,
    /// A revocation record names the serial; the record's reason.
    Revoked(String),
    /// The node has been seen using a newer certificate.
    Superseded,
    Expired,
}

impl Refusal {
    /// What the caller is told, on a new call or on a stream that is cut.
    pub fn status(&self, call: &str, id: &NodeIdentity) -> Status {
        match self {
            Refusal::Removed => Status::permission_denied(format!(
                "{call} refused: {} (node {})",
                crate::revocation::REMOVED,
                id.node_id()
            )),
            Refusal::Revoked(reason) => Status::permission_denied(format!(
                "{call} refused: {reason} (certificate {} of node {})",
                id.serial(),
                id.node_id()
            )),
            Refusal::Superseded => Status::permission_denied(format!(
                "{call} refused: certificate revoked: certificate {} of node {} was superseded by a later certificate of the node",
                id.serial(),
                id.node_id()
            )),
            Refusal::Unknown => Status::unavailable(format!(
                "{call} refused: this manager does not know node {} (its copy of the cluster state may be behind): try another manager",
                id.node_id()
            )),
            Refusal::Expired => Status::unauthenticated(format!(
                "{call} refused: certificate expired (certificate {} of node {}); the node must renew or rejoin with 'shoal join --token <token> --rejoin <manager>'",
                id.serial(),
                id.node_id()
            )),
        }
    }
}

/// The certificates one member node may use.
#[derive(Debug, Clone, Default, PartialEq)]
struct Certs {
    current: String,
    previous: Vec<String>,
    /// When the node was first seen using `current` (unix seconds), if it was.
    confirmed_at: Option<i64>,
}

impl Certs {
    fn of(node: &Node) -> Certs {
        let c = node.certificate.clone().unwrap_or_default();
        let confirmed = !c.serial.is_empty() && c.confirmed_serial == c.serial;
        Certs {
            previous: c.previous.iter().map(|p| p.serial.clone()).collect(),
            confirmed_at: confirmed.then_some(c.confirmed_at_unix),
            current: c.serial,
        }
    }
}

#[derive(Debug, Default)]
struct View {
    nodes: HashMap<String, Certs>,
    /// Serial -> revocation.
    revoked: HashMap<String, Revoked>,
}

#[derive(Debug, Clone)]
struct Revoked {
    reason: String,
    node_id: String,
    /// A demoted manager's certificate: still good for [`EXCHANGE_CALLS`].
    renewal_allowed: bool,
}

/// What a demoted manager's certificate may still do: beat, and be exchanged by renewal
/// for the certificate of the node's new role.
const EXCHANGE_CALLS: &[&str] = &["Heartbeat", "RenewNodeCertificate"];

impl View {
    /// The pure decision: may the certificate `serial` of `node_id`, valid until
    /// `not_after`, be used at `now`?
    fn decide(
        &self,
        call: &str,
        node_id: &str,
        serial: &str,
        not_after: SystemTime,
        now: SystemTime,
    ) -> Result<(), Refusal> {
        if now > not_after {
            return Err(Refusal::Expired);
        }
        if let Some(r) = self.revoked.get(serial) {
            if !(r.renewal_allowed && EXCHANGE_CALLS.contains(&call)) {
                return Err(Refusal::Revoked(r.reason.clone()));
            }
        }
        let Some(certs) = self.nodes.get(node_id) else {
            // Removed (its certificates are on record as such), or not known here yet:
            // a manager that is still catching up must not tell a node it was removed.
            let removed = self
                .revoked
                .values()
                .any(|r| r.node_id == node_id && r.reason == crate::revocation::REMOVED);
            return Err(if removed {
                Refusal::Removed
            } else {
                Refusal::Unknown
            });
        };
        if certs.current == serial {
            return Ok(());
        }
        let now_unix = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let in_grace = match certs.confirmed_at {
            None => true,
            Some(at) => now_unix <= at + SUPERSEDED_GRACE.as_secs() as i64,
        };
        if in_grace && certs.previous.iter().any(|p| p == serial) {
            return Ok(());
        }
        Err(Refusal::Superseded)
    }

    fn load(snapshot: &shoal_store::Snapshot) -> Result<View, shoal_store::StoreError> {
        let mut v = View::default();
        for n in snapshot.list::<Node>()? {
            v.nodes.insert(n.value.id.clone(), Certs::of(&n.value));
        }
        for r in snapshot.list::<RevokedCert>()? {
            v.revoked
                .insert(r.value.serial.clone(), Revoked::of(&r.value));
        }
        Ok(v)
    }

    /// Applies one committed change; true if the view changed.
    fn apply(&mut self, c: &Change) -> bool {
        if c.table() == Node::TABLE {
            match c.decode::<Node>() {
                Some(Ok(n)) => {
                    let certs = Certs::of(&n.value);
                    if self.nodes.get(&n.value.id) == Some(&certs) {
                        return false;
                    }
                    self.nodes.insert(n.value.id, certs);
                    true
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "undecodable node in the store");
                    false
                }
                None => self.nodes.remove(c.id()).is_some(),
            }
        } else if c.table() == RevokedCert::TABLE {
            match c.decode::<RevokedCert>() {
                Some(Ok(r)) => {
                    self.revoked
                        .insert(r.value.serial.clone(), Revoked::of(&r.value));
                    true
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "undecodable revocation in the store");
                    false
                }
                None => self.revoked.remove(c.id()).is_some(),
            }
        } else {
            false
        }
    }
}

impl Revoked {
    fn of(r: &RevokedCert) -> Revoked {
        Revoked {
            reason: r.reason.clone(),
            node_id: r.node_id.clone(),
            renewal_allowed: r.renewal_allowed,
        }
    }
}

/// Whether a store change can change who may call.
pub fn touches_access(c: &Change) -> bool {
    c.table() == Node::TABLE || c.table() == RevokedCert::TABLE
}

/// The shared read model. Cheap to check (one hash lookup under a read lock).
#[derive(Debug)]
pub struct AccessList {
    view: RwLock<View>,
    /// The store index the view reflects (every event, so waiters never stall).
    applied: watch::Sender<u64>,
    /// Bumped only when the view changed: what open streams wait on.
    generation: watch::Sender<u64>,
}

impl AccessList {
    /// Loads the view from a store snapshot; [`AccessList::follow`] keeps it current.
    pub fn start(store: &Store) -> Result<(Arc<AccessList>, Watch), shoal_store::StoreError> {
        let watch = store.watch()?;
        let view = View::load(&watch.snapshot)?;
        let list = AccessList {
            view: RwLock::new(view),
            applied: watch::channel(watch.snapshot.index()).0,
            generation: watch::channel(0).0,
        };
        Ok((Arc::new(list), watch))
    }

    /// Follows the store from `watch` (the one [`AccessList::start`] returned) until
    /// cancelled or the store closes.
    pub async fn follow(
        self: Arc<Self>,
        store: Store,
        mut watch: Watch,
        cancel: CancellationToken,
    ) {
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => return,
                ev = watch.events.recv() => ev,
            };
            match ev {
                Ok(ev) => {
                    let changed = match self.view.write() {
                        Ok(mut v) => ev
                            .changes
                            .iter()
                            .filter(|c| touches_access(c))
                            .fold(false, |acc, c| v.apply(c) | acc),
                        Err(_) => false,
                    };
                    if changed {
                        self.generation.send_modify(|g| *g += 1);
                    }
                    self.applied.send_replace(ev.index);
                }
                Err(RecvError::Lagged(_)) => {
                    // Too far behind to trust the gap: start over from a fresh snapshot.
                    match store.watch() {
                        Ok(w) => {
                            match View::load(&w.snapshot) {
                                Ok(v) => {
                                    if let Ok(mut cur) = self.view.write() {
                                        *cur = v;
                                    }
                                }
                                Err(e) => {
                                    tracing::error!(error = %e, "cannot reload the access list")
                                }
                            }
                            self.generation.send_modify(|g| *g += 1);
                            self.applied.send_replace(w.snapshot.index());
                            watch = w;
                        }
                        Err(_) => return,
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// A list of exactly these nodes (for tests of the code that checks callers).
    #[cfg(test)]
    pub(crate) fn with_nodes(nodes: &[Node]) -> Arc<AccessList> {
        let mut view = View::default();
        for n in nodes {
            view.nodes.insert(n.id.clone(), Certs::of(n));
        }
        Arc::new(AccessList {
            view: RwLock::new(view),
            applied: watch::channel(0).0,
            generation: watch::channel(0).0,
        })
    }

    /// Whether `id` may make `call` now.
    pub fn check(&self, call: &str, id: &NodeIdentity) -> Result<(), Refusal> {
        let view = self.view.read().map_err(|_| Refusal::Unknown)?;
        view.decide(
            call,
            id.node_id().as_str(),
            id.serial(),
            id.not_after(),
            SystemTime::now(),
        )
    }

    /// Waits until the view reflects every store change up to `index`, so a check made
    /// after it sees a revocation committed at or before that index.
    pub async fn wait_applied(&self, index: u64) -> Result<(), Status> {
        let mut rx = self.applied.subscribe();
        let caught_up = tokio::time::timeout(Duration::from_secs(5), async {
            rx.wait_for(|i| *i >= index).await.is_ok()
        })
        .await;
        if caught_up == Ok(true) {
            Ok(())
        } else {
            Err(Status::unavailable(
                "this manager's view of the cluster is behind: try again",
            ))
        }
    }

    /// Resolves, with the refusal, when `id` may no longer call: at once on a removal,
    /// revocation or superseding, and at the certificate's expiry.
    pub async fn revoked(&self, call: &str, id: &NodeIdentity) -> Refusal {
        let mut rx = self.generation.subscribe();
        loop {
            rx.mark_unchanged();
            if let Err(r) = self.check(call, id) {
                return r;
            }
            let until_expiry = id
                .not_after()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            // A superseded certificate's grace runs out without a store change.
            let recheck = until_expiry.min(SUPERSEDED_GRACE) + Duration::from_millis(10);
            tokio::select! {
                // The store closed: this manager stops; the node goes to another.
                r = rx.changed() => if r.is_err() { return Refusal::Unknown },
                _ = tokio::time::sleep(recheck) => {}
            }
        }
    }
}

/// The record kept when the managers see a node use a certificate: its serial, its
/// key's digest, and when (for the superseded certificate's grace).
pub fn confirm(node: &mut Node, id: &NodeIdentity) -> bool {
    let c = node.certificate.get_or_insert_with(Default::default);
    if c.confirmed_serial == id.serial() {
        return false;
    }
    c.confirmed_serial = id.serial().to_string();
    c.confirmed_key_digest = id.key_digest().to_string();
    c.confirmed_at_unix = unix_now();
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::objects::{NodeCertificate, PreviousCertificate};

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn node(current: &str, previous: &[&str], confirmed: Option<(&str, i64)>) -> Node {
        Node {
            id: "n1".into(),
            certificate: Some(NodeCertificate {
                serial: current.into(),
                previous: previous
                    .iter()
                    .map(|s| PreviousCertificate {
                        serial: s.to_string(),
                        not_after_unix: 0,
                    })
                    .collect(),
                confirmed_serial: confirmed.map(|c| c.0.to_string()).unwrap_or_default(),
                confirmed_at_unix: confirmed.map(|c| c.1).unwrap_or_default(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn view(n: Node) -> View {
        let mut v = View::default();
        v.nodes.insert(n.id.clone(), Certs::of(&n));
        v
    }

    #[test]
    fn a_superseded_certificate_works_until_its_successor_is_used_plus_grace() {
        let far = t(10_000_000);
        // Renewed to "b" but never seen using it: "a" still works (the answer was lost).
        let v = view(node("b", &["a"], Some(("a", 100))));
        assert_eq!(v.decide("Session", "n1", "a", far, t(5000)), Ok(()));
        assert_eq!(v.decide("Session", "n1", "b", far, t(5000)), Ok(()));
        // Seen using "b" at 1000: "a" works for the grace, then never again.
        let v = view(node("b", &["a"], Some(("b", 1000))));
        assert_eq!(v.decide("Session", "n1", "a", far, t(1000 + 29)), Ok(()));
        assert_eq!(
            v.decide("Session", "n1", "a", far, t(1000 + 31)),
            Err(Refusal::Superseded)
        );
        assert_eq!(v.decide("Session", "n1", "b", far, t(1000 + 31)), Ok(()));
    }

    #[test]
    fn a_demoted_managers_certificate_only_beats_and_renews() {
        let mut v = view(node("a", &[], Some(("a", 1))));
        v.revoked.insert(
            "a".into(),
            Revoked {
                reason: "certificate revoked: the node was demoted".into(),
                node_id: "n1".into(),
                renewal_allowed: true,
            },
        );
        let far = t(10_000_000);
        assert_eq!(v.decide("Heartbeat", "n1", "a", far, t(5)), Ok(()));
        assert_eq!(
            v.decide("RenewNodeCertificate", "n1", "a", far, t(5)),
            Ok(())
        );
        for call in ["Raft", "ListNodes", "Session", "UpdateTaskStatus"] {
            assert!(
                matches!(
                    v.decide(call, "n1", "a", far, t(5)),
                    Err(Refusal::Revoked(_))
                ),
                "{call}"
            );
        }
    }

    #[test]
    fn a_serial_the_node_no_longer_lists_is_refused_however_old() {
        let v = view(node("g", &["f", "e", "d", "c", "b"], None));
        assert_eq!(
            v.decide("Session", "n1", "a", t(10_000_000), t(10)),
            Err(Refusal::Superseded)
        );
    }

    #[test]
    fn removal_revocation_and_expiry_are_refused_with_their_reason() {
        let mut v = view(node("a", &[], Some(("a", 1))));
        v.revoked.insert(
            "r".into(),
            Revoked {
                reason: "certificate revoked".into(),
                node_id: "n1".into(),
                renewal_allowed: false,
            },
        );
        // A node this manager has never heard of may be one it has not caught up with.
        assert_eq!(
            v.decide("Session", "other", "x", t(100), t(10)),
            Err(Refusal::Unknown)
        );
        // One whose certificates are on record as removed was removed, whichever
        // certificate it presents.
        v.revoked.insert(
            "g1".into(),
            Revoked {
                reason: crate::revocation::REMOVED.into(),
                node_id: "gone".into(),
                renewal_allowed: false,
            },
        );
        assert_eq!(
            v.decide("Session", "gone", "older", t(100), t(10)),
            Err(Refusal::Removed)
        );
        assert_eq!(
            v.decide("Session", "n1", "r", t(100), t(10)),
            Err(Refusal::Revoked("certificate revoked".into()))
        );
        assert_eq!(
            v.decide("Session", "n1", "a", t(100), t(101)),
            Err(Refusal::Expired)
        );
        assert_eq!(v.decide("Session", "n1", "a", t(100), t(99)), Ok(()));
    }

    #[test]
    fn changes_apply_in_order_and_report_whether_anything_changed() {
        let mut v = View::default();
        let put = |n: &Node| Change::Put {
            table: Node::TABLE.into(),
            id: n.id.clone(),
            version: 1,
            data: prost::Message::encode_to_vec(n).into(),
        };
        let n = node("a", &[], None);
        assert!(v.apply(&put(&n)));
        assert!(!v.apply(&put(&n)), "the same certificates change nothing");
        assert!(v.apply(&Change::Delete {
            table: Node::TABLE.into(),
            id: "n1".into()
        }));
        assert_eq!(
            v.decide("Session", "n1", "a", t(100), t(1)),
            Err(Refusal::Unknown)
        );
    }
}

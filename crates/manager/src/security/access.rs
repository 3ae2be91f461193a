//! Who may call, right now: the read model every manager checks on each call and on
//! each open stream. It holds, from the cluster view, the member nodes with the
//! certificates each may still use, and the revoked serials; the view's updates keep it
//! current, so a
//! removal, a revocation or a superseded certificate is refused at once on every
//! manager, also on connections and streams that are already open.
//!
//! A node may use its current certificate and, until the managers have seen it use that
//! one for [`SUPERSEDED_GRACE`], the ones it superseded (a renewal whose answer was lost
//! must not lock the node out). Any other serial naming the node is refused, however
//! many renewals ago it was issued: no certificate outlives its replacement.

use crate::time::unix_now;
use crate::view::{Kind, State, Subscription, Update};
use shoal_pki::{NodeIdentity, UserIdentity};
use shoal_proto::objects::{Node, RevokedCert, User, UserRole};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
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
                crate::cluster::REMOVED,
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

/// Why a user's certificate is refused. The texts are the contract users read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRefusal {
    /// No such user (removed, or never made), or not yet known to this manager.
    Unknown,
    /// The user exists, but this certificate is not one issued to them (the user was
    /// removed and made again, or its record lost the serial).
    NotIssued,
    /// A revocation record names the serial; the record's reason.
    Revoked(String),
    Expired,
}

impl UserRefusal {
    /// What the caller is told, on a new call or on a stream that is cut.
    pub fn status(&self, call: &str, id: &UserIdentity) -> Status {
        self.status_for(call, id.name().as_str(), id.serial())
    }

    /// As [`UserRefusal::status`], for the certificate `serial` of user `name`.
    pub fn status_for(&self, call: &str, name: &str, serial: &str) -> Status {
        match self {
            UserRefusal::Unknown => Status::permission_denied(format!(
                "{call} refused: {name} is not a user of this cluster (removed, or this manager is behind): ask an administrator"
            )),
            UserRefusal::NotIssued => Status::permission_denied(format!(
                "{call} refused: certificate {serial} was not issued to the current user {name} (was the user removed and made again?): log in again with 'shoal login --token <new token> <manager>'"
            )),
            UserRefusal::Revoked(reason) => Status::permission_denied(format!(
                "{call} refused: {reason} (certificate {serial} of user {name})"
            )),
            UserRefusal::Expired => Status::unauthenticated(format!(
                "{call} refused: certificate {serial} of user {name} has expired: log in again with 'shoal login --token <new token> <manager>' (an administrator makes one with 'shoal user token {name}')"
            )),
        }
    }
}

/// What a user may do: their role and scopes, as the store says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserGrant {
    pub role: UserRole,
    /// `*` or stack names.
    pub scopes: Vec<String>,
}

/// A user and the certificates issued to them.
#[derive(Debug, Clone, PartialEq)]
struct UserEntry {
    grant: UserGrant,
    /// Serial -> expiry (unix seconds) of each certificate issued to the user.
    serials: HashMap<String, i64>,
}

impl UserEntry {
    fn of(u: &User) -> UserEntry {
        UserEntry {
            grant: UserGrant {
                role: u.role(),
                scopes: u.scopes.clone(),
            },
            serials: u
                .certs
                .iter()
                .map(|c| (c.serial.clone(), c.not_after_unix))
                .collect(),
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

#[derive(Debug, Default, PartialEq)]
struct View {
    nodes: HashMap<String, Certs>,
    users: HashMap<String, UserEntry>,
    /// Serial -> revocation.
    revoked: HashMap<String, Revoked>,
}

#[derive(Debug, Clone, PartialEq)]
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
                .any(|r| r.node_id == node_id && r.reason == crate::cluster::REMOVED);
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

    /// The pure decision for a user: may the certificate `serial` of user `name`, valid
    /// until `not_after` (`None`: until the expiry the user's record holds for it, for a
    /// call another manager verified), be used at `now`, and with what grant?
    fn decide_user(
        &self,
        name: &str,
        serial: &str,
        not_after: Option<SystemTime>,
        now: SystemTime,
    ) -> Result<UserGrant, UserRefusal> {
        if let Some(r) = self.revoked.get(serial) {
            return Err(UserRefusal::Revoked(r.reason.clone()));
        }
        let user = self.users.get(name).ok_or(UserRefusal::Unknown)?;
        let Some(&recorded) = user.serials.get(serial) else {
            return Err(UserRefusal::NotIssued);
        };
        let not_after = not_after.unwrap_or_else(|| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(recorded.max(0) as u64)
        });
        if now > not_after {
            return Err(UserRefusal::Expired);
        }
        if user.grant.role == UserRole::Unspecified {
            // A record without a role grants nothing (the control API never writes one).
            return Err(UserRefusal::Unknown);
        }
        Ok(user.grant.clone())
    }

    fn load(state: &State) -> View {
        View {
            users: state
                .values::<User>()
                .map(|u| (u.name.clone(), UserEntry::of(u)))
                .collect(),
            nodes: state
                .values::<Node>()
                .map(|n| (n.id.clone(), Certs::of(n)))
                .collect(),
            revoked: state
                .values::<RevokedCert>()
                .map(|r| (r.serial.clone(), Revoked::of(r)))
                .collect(),
        }
    }

    /// Takes in one applied batch; true if the view changed. A resync reloads it whole.
    fn apply(&mut self, u: &Update) -> bool {
        let (Some(nodes), Some(revoked), Some(users)) = (
            u.changed(Kind::Node),
            u.changed(Kind::Revocation),
            u.changed(Kind::User),
        ) else {
            // A resync (this list fell behind the view): changed only if who may call
            // did. Every change wakes each open stream's watch on its caller, a
            // thousand and more on a leader.
            let fresh = View::load(&u.state);
            let changed = fresh != *self;
            *self = fresh;
            return changed;
        };
        let mut changed = false;
        for id in nodes {
            changed |= match u.state.get::<Node>(id) {
                Some(n) => {
                    let certs = Certs::of(&n.value);
                    self.nodes.insert(id.to_string(), certs.clone()) != Some(certs)
                }
                None => self.nodes.remove(id).is_some(),
            };
        }
        for name in users {
            changed |= match u.state.get::<User>(name) {
                Some(v) => {
                    let entry = UserEntry::of(&v.value);
                    self.users.insert(name.to_string(), entry.clone()) != Some(entry)
                }
                None => self.users.remove(name).is_some(),
            };
        }
        for serial in revoked {
            changed |= match u.state.get::<RevokedCert>(serial) {
                Some(r) => {
                    self.revoked
                        .insert(serial.to_string(), Revoked::of(&r.value));
                    true
                }
                None => self.revoked.remove(serial).is_some(),
            };
        }
        changed
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
    /// Loads the list from the cluster view's `state`; [`AccessList::follow`] keeps it
    /// current.
    pub fn start(state: &State) -> Arc<AccessList> {
        Arc::new(AccessList {
            view: RwLock::new(View::load(state)),
            applied: watch::channel(state.index()).0,
            generation: watch::channel(0).0,
        })
    }

    /// Follows the cluster view's `updates` (subscribed before the state given to
    /// [`AccessList::start`] was read) until cancelled or the view stops.
    pub async fn follow(self: Arc<Self>, mut updates: Subscription, cancel: CancellationToken) {
        loop {
            let u = tokio::select! {
                _ = cancel.cancelled() => return,
                u = updates.next() => u,
            };
            let Some(u) = u else { return };
            if u.state.index() <= *self.applied.borrow() && u.changes.is_some() {
                // Already in the state the list was loaded from.
                continue;
            }
            let changed = match self.view.write() {
                Ok(mut v) => v.apply(&u),
                Err(_) => false,
            };
            if changed {
                self.generation.send_modify(|g| *g += 1);
            }
            self.applied.send_replace(u.state.index());
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
            // A fixed list follows no store: it is as current as any index asked for.
            applied: watch::channel(u64::MAX).0,
            generation: watch::channel(0).0,
        })
    }

    /// A list of exactly these users (for tests of the code that checks callers).
    #[cfg(test)]
    pub(crate) fn with_users(users: &[User]) -> Arc<AccessList> {
        let mut view = View::default();
        for u in users {
            view.users.insert(u.name.clone(), UserEntry::of(u));
        }
        Arc::new(AccessList {
            view: RwLock::new(view),
            applied: watch::channel(u64::MAX).0,
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

    /// Changes whenever who may call changed.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Whether the certificate `serial` of user `name` may be used now, by the store's
    /// record of its expiry: for a call another manager forwarded, which verified the
    /// certificate itself.
    pub fn check_user_serial(&self, name: &str, serial: &str) -> Result<UserGrant, UserRefusal> {
        let view = self.view.read().map_err(|_| UserRefusal::Unknown)?;
        view.decide_user(name, serial, None, SystemTime::now())
    }

    /// Whether user `id` may call now, and with what grant.
    pub fn check_user(&self, id: &UserIdentity) -> Result<UserGrant, UserRefusal> {
        let view = self.view.read().map_err(|_| UserRefusal::Unknown)?;
        view.decide_user(
            id.name().as_str(),
            id.serial(),
            Some(id.not_after()),
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
                reason: crate::cluster::REMOVED.into(),
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
        let mut state = State::default();
        let mut step = |f: &dyn Fn(&mut State) -> crate::view::Changed| {
            let changed = f(&mut state);
            Update {
                state: Arc::new(state.clone()),
                changes: Some(vec![changed]),
            }
        };
        let n = node("a", &[], None);
        assert!(v.apply(&step(&|s| s.put_for_test(n.clone()))));
        assert!(
            !v.apply(&step(&|s| s.put_for_test(n.clone()))),
            "the same certificates change nothing"
        );
        assert!(v.apply(&step(&|s| s.delete_for_test::<Node>("n1"))));
        assert_eq!(
            v.decide("Session", "n1", "a", t(100), t(1)),
            Err(Refusal::Unknown)
        );
        // A resync (no list of changes) reports a change only if there was one.
        let resync = |s: &State| Update {
            state: Arc::new(s.clone()),
            changes: None,
        };
        assert!(!v.apply(&resync(&state)), "nothing changed since");
        state.put_for_test(node("b", &[], None));
        assert!(v.apply(&resync(&state)), "a new certificate");
        assert!(!v.apply(&resync(&state)));
    }

    fn user(name: &str, role: UserRole, serials: &[&str]) -> User {
        User {
            name: name.into(),
            role: role as i32,
            scopes: vec!["shop".into()],
            certs: serials
                .iter()
                .map(|s| shoal_proto::objects::UserCert {
                    serial: s.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_user_may_call_with_a_certificate_issued_to_them_until_it_expires_or_is_revoked() {
        let mut state = State::default();
        let step = |s: &mut State, c: crate::view::Changed| Update {
            state: Arc::new(s.clone()),
            changes: Some(vec![c]),
        };
        let mut v = View::default();
        assert_eq!(
            v.decide_user("alice", "a", Some(t(100)), t(1)),
            Err(UserRefusal::Unknown)
        );
        let c = state.put_for_test(user("alice", UserRole::Deployer, &["a"]));
        assert!(v.apply(&step(&mut state, c)));
        let grant = v.decide_user("alice", "a", Some(t(100)), t(1)).unwrap();
        assert_eq!(grant.role, UserRole::Deployer);
        assert_eq!(grant.scopes, ["shop"]);
        // Another serial naming the user, expiry, and a revocation.
        assert_eq!(
            v.decide_user("alice", "b", Some(t(100)), t(1)),
            Err(UserRefusal::NotIssued)
        );
        assert_eq!(
            v.decide_user("alice", "a", Some(t(100)), t(101)),
            Err(UserRefusal::Expired)
        );
        let c = state.put_for_test(RevokedCert {
            serial: "a".into(),
            user: "alice".into(),
            reason: "certificate revoked by an administrator".into(),
            ..Default::default()
        });
        assert!(v.apply(&step(&mut state, c)));
        assert_eq!(
            v.decide_user("alice", "a", Some(t(100)), t(1)),
            Err(UserRefusal::Revoked(
                "certificate revoked by an administrator".into()
            ))
        );
        // A narrower role takes effect with the next change; removal ends it all.
        let c = state.put_for_test(user("alice", UserRole::Viewer, &["a", "b"]));
        assert!(v.apply(&step(&mut state, c)));
        assert_eq!(
            v.decide_user("alice", "b", Some(t(100)), t(1))
                .unwrap()
                .role,
            UserRole::Viewer
        );
        let c = state.delete_for_test::<User>("alice");
        assert!(v.apply(&step(&mut state, c)));
        assert_eq!(
            v.decide_user("alice", "b", Some(t(100)), t(1)),
            Err(UserRefusal::Unknown)
        );
        // A resync loads users too.
        state.put_for_test(user("bob", UserRole::Admin, &["c"]));
        let fresh = View::load(&state);
        assert_eq!(
            fresh
                .decide_user("bob", "c", Some(t(100)), t(1))
                .unwrap()
                .role,
            UserRole::Admin
        );
        // A record without a role grants nothing.
        state.put_for_test(user("eve", UserRole::Unspecified, &["d"]));
        assert_eq!(
            View::load(&state).decide_user("eve", "d", Some(t(100)), t(1)),
            Err(UserRefusal::Unknown)
        );
    }
}

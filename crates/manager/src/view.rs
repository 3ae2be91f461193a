//! The cluster view: every manager's one decoded, indexed copy of the store, fed by its
//! one store watch.
//!
//! A single writer ([`ClusterView::run`]) follows `store.watch()`, decodes each change
//! once and applies it to a [`State`] made of persistent maps (`imbl`): a new state
//! shares all but the changed paths with the previous one, so publishing it costs what
//! the change touched, and a reader's snapshot ([`ClusterView::current`]) is one `Arc`.
//! Tasks are indexed by node, by service and by the secrets and configs they use.
//!
//! Readers learn of changes three ways, each costing what it touches:
//! - [`ClusterView::watch_node`]: "node N's tasks changed" — what a node's session
//!   waits on; a task's change wakes only the sessions of the nodes it was and is on.
//! - [`ClusterView::subscribe`]: every applied batch with the kinds and IDs it changed,
//!   for the manager's own loops (access list, CA state, liveness, peers,
//!   orchestrator). A subscriber that falls behind gets one update that says "anything
//!   may have changed" with the current state: the one lag routine, not one per loop.
//! - [`ClusterView::wait_index`]: until the view has applied a given store index (a
//!   loop that just committed reads its own write).
//!
//! When the writer itself falls behind the store, it rebuilds a whole new state from a
//! fresh watch and swaps it in at once, so readers never see half a rebuild. This is
//! the shape of kube-runtime's reflector (one writer, shared readers) and of SwarmKit's
//! `ViewAndWatch(FindTasks(ByNodeID))`.

use imbl::{OrdMap, OrdSet};
use shoal_proto::objects::{
    Cluster, LimitedToken, Network, Node, RevokedCert, Secret, Service, Task, User,
};
use shoal_store::{Change, Object, Store, StoreError, Versioned, Watch};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// One table of the view: ID -> the object as last written, decoded.
pub type Table<T> = OrdMap<String, Arc<Versioned<T>>>;

/// An index: key -> the IDs of the tasks under it.
type Index = OrdMap<String, OrdSet<String>>;

/// How many applied batches a subscriber may fall behind before it is resynced.
const UPDATE_CAPACITY: usize = 256;

/// Most store events folded into one published state when they arrive in a burst.
const MAX_FOLD: usize = 64;

/// The object kinds the view keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Cluster,
    Node,
    Service,
    Task,
    Network,
    Secret,
    Revocation,
    JoinToken,
    User,
}

impl Kind {
    fn of(table: &str) -> Option<Kind> {
        Some(match table {
            t if t == Cluster::TABLE => Kind::Cluster,
            t if t == Node::TABLE => Kind::Node,
            t if t == Service::TABLE => Kind::Service,
            t if t == Task::TABLE => Kind::Task,
            t if t == Network::TABLE => Kind::Network,
            t if t == Secret::TABLE => Kind::Secret,
            t if t == RevokedCert::TABLE => Kind::Revocation,
            t if t == LimitedToken::TABLE => Kind::JoinToken,
            t if t == User::TABLE => Kind::User,
            _ => return None,
        })
    }
}

/// One object written or deleted by an applied batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub kind: Kind,
    pub id: String,
}

/// The object types the view keeps, and where.
pub trait Viewed: Object + Clone + Send + Sync + 'static {
    const KIND: Kind;
    fn table(s: &State) -> &Table<Self>;
    fn table_mut(s: &mut State) -> &mut Table<Self>;
}

macro_rules! viewed {
    ($t:ty, $kind:ident, $field:ident) => {
        impl Viewed for $t {
            const KIND: Kind = Kind::$kind;
            fn table(s: &State) -> &Table<Self> {
                &s.$field
            }
            fn table_mut(s: &mut State) -> &mut Table<Self> {
                &mut s.$field
            }
        }
    };
}

viewed!(Cluster, Cluster, clusters);
viewed!(Node, Node, nodes);
viewed!(Service, Service, services);
viewed!(Task, Task, tasks);
viewed!(Network, Network, networks);
viewed!(Secret, Secret, secrets);
viewed!(RevokedCert, Revocation, revoked);
viewed!(LimitedToken, JoinToken, tokens);
viewed!(User, User, users);

/// The cluster at one store index, decoded and indexed. Cheap to clone.
#[derive(Clone, Default)]
pub struct State {
    index: u64,
    /// The index of the last batch that changed who may call (a node, a revocation or a user).
    access_index: u64,
    clusters: Table<Cluster>,
    nodes: Table<Node>,
    services: Table<Service>,
    tasks: Table<Task>,
    networks: Table<Network>,
    secrets: Table<Secret>,
    revoked: Table<RevokedCert>,
    tokens: Table<LimitedToken>,
    users: Table<User>,
    by_node: Index,
    by_service: Index,
    by_secret: Index,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the objects: secrets' data lives here.
        f.debug_struct("State")
            .field("index", &self.index)
            .field("nodes", &self.nodes.len())
            .field("services", &self.services.len())
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

/// The secret and config IDs a task's spec refers to.
fn secret_refs(t: &Task) -> impl Iterator<Item = &str> {
    t.spec
        .iter()
        .flat_map(|c| c.secrets.iter().chain(c.configs.iter()))
        .map(|r| r.secret_id.as_str())
}

fn index_add(index: &mut Index, key: &str, id: &str) {
    if !key.is_empty() {
        index
            .entry(key.to_string())
            .or_default()
            .insert(id.to_string());
    }
}

fn index_remove(index: &mut Index, key: &str, id: &str) {
    let empty = match index.get_mut(key) {
        Some(ids) => {
            ids.remove(id);
            ids.is_empty()
        }
        None => false,
    };
    if empty {
        index.remove(key);
    }
}

impl State {
    /// The store index this state reflects.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The index of the last change to who may call (nodes, revocations) in this
    /// state: what a stream sending from this state must have the access list at.
    pub fn access_index(&self) -> u64 {
        self.access_index
    }

    pub fn get<T: Viewed>(&self, id: &str) -> Option<&Versioned<T>> {
        T::table(self).get(id).map(|v| &**v)
    }

    /// Every object of type `T`, in ID order.
    pub fn iter<T: Viewed>(&self) -> impl Iterator<Item = &Versioned<T>> + '_ {
        T::table(self).values().map(|v| &**v)
    }

    /// The objects of type `T` without their versions, in ID order.
    pub fn values<T: Viewed>(&self) -> impl Iterator<Item = &T> + '_ {
        self.iter::<T>().map(|v| &v.value)
    }

    pub fn count<T: Viewed>(&self) -> usize {
        T::table(self).len()
    }

    /// The cluster object (there is one once the cluster is initialized).
    pub fn cluster(&self) -> Option<&Versioned<Cluster>> {
        self.iter::<Cluster>().next()
    }

    /// The period nodes beat at: the cluster's setting, bounded by the node count
    /// ([`crate::cluster::bounded_period`]).
    pub fn heartbeat_period(&self) -> std::time::Duration {
        crate::cluster::bounded_period(
            crate::cluster::period_of(self.cluster().map(|c| &c.value)),
            self.count::<Node>(),
        )
    }

    /// The managers' addresses, in node ID order.
    pub fn manager_addrs(&self) -> Vec<String> {
        self.values::<Node>()
            .filter(|n| crate::cluster::is_listed_manager(n))
            .map(|n| n.addr.clone())
            .collect()
    }

    fn tasks_in<'a>(
        &'a self,
        index: &'a Index,
        key: &str,
    ) -> impl Iterator<Item = &'a Versioned<Task>> + 'a {
        index
            .get(key)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.get::<Task>(id))
    }

    /// The tasks assigned to `node_id`, in ID order.
    pub fn tasks_on<'a>(&'a self, node_id: &str) -> impl Iterator<Item = &'a Versioned<Task>> + 'a {
        self.tasks_in(&self.by_node, node_id)
    }

    /// The tasks of `service_id`, in ID order.
    pub fn tasks_of<'a>(
        &'a self,
        service_id: &str,
    ) -> impl Iterator<Item = &'a Versioned<Task>> + 'a {
        self.tasks_in(&self.by_service, service_id)
    }

    /// The tasks whose spec refers to the secret or config `secret_id`.
    pub fn tasks_using<'a>(
        &'a self,
        secret_id: &str,
    ) -> impl Iterator<Item = &'a Versioned<Task>> + 'a {
        self.tasks_in(&self.by_secret, secret_id)
    }

    /// Writes `value` as the store would at the next index (tests of code that reads
    /// the view; tasks go through their indexes).
    #[cfg(test)]
    pub(crate) fn put_for_test<T: Viewed>(&mut self, value: T) -> Changed {
        self.index += 1;
        let change = Change::Put {
            table: T::TABLE.into(),
            id: value.id().to_string(),
            version: self.index,
            data: value.encode_to_vec().into(),
        };
        self.apply(&change, &mut HashSet::new())
            .expect("a kept table")
    }

    /// Deletes an object as the store would at the next index (tests).
    #[cfg(test)]
    pub(crate) fn delete_for_test<T: Viewed>(&mut self, id: &str) -> Changed {
        self.index += 1;
        let change = Change::Delete {
            table: T::TABLE.into(),
            id: id.into(),
        };
        self.apply(&change, &mut HashSet::new())
            .expect("a kept table")
    }

    /// Decodes a whole store snapshot.
    fn load(snapshot: &shoal_store::Snapshot) -> Result<State, StoreError> {
        fn fill<T: Viewed>(s: &mut State, snap: &shoal_store::Snapshot) -> Result<(), StoreError> {
            let mut table = Table::<T>::new();
            for v in snap.list::<T>()? {
                table.insert(v.value.id().to_string(), Arc::new(v));
            }
            *T::table_mut(s) = table;
            Ok(())
        }
        let mut s = State {
            index: snapshot.index(),
            access_index: snapshot.index(),
            ..State::default()
        };
        fill::<Cluster>(&mut s, snapshot)?;
        fill::<Node>(&mut s, snapshot)?;
        fill::<Service>(&mut s, snapshot)?;
        fill::<Network>(&mut s, snapshot)?;
        fill::<Secret>(&mut s, snapshot)?;
        fill::<RevokedCert>(&mut s, snapshot)?;
        fill::<LimitedToken>(&mut s, snapshot)?;
        fill::<User>(&mut s, snapshot)?;
        for v in snapshot.list::<Task>()? {
            s.put_task(Arc::new(v), &mut HashSet::new());
        }
        Ok(s)
    }

    /// Applies one committed change; `nodes` collects the nodes whose tasks changed.
    fn apply(&mut self, c: &Change, nodes: &mut HashSet<String>) -> Option<Changed> {
        let kind = Kind::of(c.table())?;
        match kind {
            Kind::Cluster => self.put_or_delete::<Cluster>(c),
            Kind::Node => self.put_or_delete::<Node>(c),
            Kind::Service => self.put_or_delete::<Service>(c),
            Kind::Network => self.put_or_delete::<Network>(c),
            Kind::Secret => self.put_or_delete::<Secret>(c),
            Kind::Revocation => self.put_or_delete::<RevokedCert>(c),
            Kind::JoinToken => self.put_or_delete::<LimitedToken>(c),
            Kind::User => self.put_or_delete::<User>(c),
            Kind::Task => match c.decode::<Task>() {
                Some(Ok(v)) => self.put_task(Arc::new(v), nodes),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, id = c.id(), "undecodable task in the store");
                    return None;
                }
                None => self.remove_task(c.id(), nodes),
            },
        }
        Some(Changed {
            kind,
            id: c.id().to_string(),
        })
    }

    fn put_or_delete<T: Viewed>(&mut self, c: &Change) {
        match c.decode::<T>() {
            Some(Ok(v)) => {
                T::table_mut(self).insert(c.id().to_string(), Arc::new(v));
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, table = T::TABLE, id = c.id(), "undecodable object in the store")
            }
            None => {
                T::table_mut(self).remove(c.id());
            }
        }
    }

    fn put_task(&mut self, v: Arc<Versioned<Task>>, nodes: &mut HashSet<String>) {
        let id = v.value.id.clone();
        self.remove_task(&id, nodes);
        let t = &v.value;
        index_add(&mut self.by_node, &t.node_id, &id);
        index_add(&mut self.by_service, &t.service_id, &id);
        for s in secret_refs(t) {
            index_add(&mut self.by_secret, s, &id);
        }
        if !t.node_id.is_empty() {
            nodes.insert(t.node_id.clone());
        }
        self.tasks.insert(id, v);
    }

    fn remove_task(&mut self, id: &str, nodes: &mut HashSet<String>) {
        let Some(old) = self.tasks.remove(id) else {
            return;
        };
        let t = &old.value;
        index_remove(&mut self.by_node, &t.node_id, id);
        index_remove(&mut self.by_service, &t.service_id, id);
        for s in secret_refs(t) {
            index_remove(&mut self.by_secret, s, id);
        }
        if !t.node_id.is_empty() {
            nodes.insert(t.node_id.clone());
        }
    }
}

/// One applied batch of store changes, as subscribers see it.
#[derive(Debug)]
pub struct Update {
    /// The state after the batch.
    pub state: Arc<State>,
    /// What the batch changed; `None` when anything may have changed (the view was
    /// rebuilt, or the subscriber fell behind).
    pub changes: Option<Vec<Changed>>,
}

impl Update {
    /// Whether the batch may have changed an object of one of `kinds`.
    pub fn touches(&self, kinds: &[Kind]) -> bool {
        match &self.changes {
            None => true,
            Some(c) => c.iter().any(|c| kinds.contains(&c.kind)),
        }
    }

    /// The IDs of the objects of `kind` the batch changed (`None`: any may have).
    pub fn changed(&self, kind: Kind) -> Option<impl Iterator<Item = &str>> {
        self.changes.as_ref().map(|c| {
            c.iter()
                .filter(move |c| c.kind == kind)
                .map(|c| c.id.as_str())
        })
    }
}

struct Shared {
    current: watch::Sender<Arc<State>>,
    /// `None` once the writer stopped: subscribers then end.
    updates: Mutex<Option<broadcast::Sender<Arc<Update>>>>,
    /// Node ID -> the index of the last change to its tasks, for each node a session
    /// watches.
    nodes: Mutex<HashMap<String, watch::Sender<u64>>>,
}

/// A manager's view of the cluster. Cheap to clone; every clone is the same view.
#[derive(Clone)]
pub struct ClusterView {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ClusterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ClusterView").field(&self.current()).finish()
    }
}

/// A stream of applied batches; see [`ClusterView::subscribe`].
pub struct Subscription {
    rx: Option<broadcast::Receiver<Arc<Update>>>,
    view: ClusterView,
}

impl Subscription {
    /// The next applied batch. After falling behind, one update with `changes: None`
    /// and the current state. `None` once the view stopped.
    pub async fn next(&mut self) -> Option<Arc<Update>> {
        let rx = self.rx.as_mut()?;
        match rx.recv().await {
            Ok(u) => Some(u),
            Err(RecvError::Lagged(_)) => {
                // Skip whatever else waits: the current state covers it.
                *rx = rx.resubscribe();
                Some(Arc::new(Update {
                    state: self.view.current(),
                    changes: None,
                }))
            }
            Err(RecvError::Closed) => {
                self.rx = None;
                None
            }
        }
    }
}

impl ClusterView {
    /// Loads the view from the store; [`ClusterView::run`] with the returned watch keeps
    /// it current.
    pub fn start(store: &Store) -> Result<(ClusterView, Watch), StoreError> {
        let watch = store.watch()?;
        let state = State::load(&watch.snapshot)?;
        Ok((ClusterView::with_state(state), watch))
    }

    fn with_state(state: State) -> ClusterView {
        ClusterView {
            shared: Arc::new(Shared {
                current: watch::channel(Arc::new(state)).0,
                updates: Mutex::new(Some(broadcast::channel(UPDATE_CAPACITY).0)),
                nodes: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The state now.
    pub fn current(&self) -> Arc<State> {
        self.shared.current.borrow().clone()
    }

    /// Every batch applied from now on (see [`Subscription::next`]).
    pub fn subscribe(&self) -> Subscription {
        let rx = self
            .shared
            .updates
            .lock()
            .ok()
            .and_then(|u| u.as_ref().map(broadcast::Sender::subscribe));
        Subscription {
            rx,
            view: self.clone(),
        }
    }

    /// Changes whenever a task on `node_id` is written or deleted, or one moves on or
    /// off it (and when the view is rebuilt). Take it before reading the state, so that
    /// no change after that read is missed.
    pub fn watch_node(&self, node_id: &str) -> watch::Receiver<u64> {
        let index = self.current().index;
        let Ok(mut nodes) = self.shared.nodes.lock() else {
            // A poisoned registry: a receiver that never changes would stall the
            // session, one that is closed ends it and the node reconnects.
            return watch::channel(index).1;
        };
        // Forget the nodes nobody watches any more.
        if nodes.len() > 64 && nodes.len().is_power_of_two() {
            nodes.retain(|_, tx| tx.receiver_count() > 0);
        }
        nodes
            .entry(node_id.to_string())
            .or_insert_with(|| watch::channel(index).0)
            .subscribe()
    }

    /// Waits until the view has applied the store up to `index` (at most `timeout`);
    /// the state then, or `None` if it did not get there in time.
    pub async fn wait_index(&self, index: u64, timeout: std::time::Duration) -> Option<Arc<State>> {
        let mut rx = self.shared.current.subscribe();
        let r = tokio::time::timeout(timeout, rx.wait_for(|s| s.index >= index)).await;
        match r {
            Ok(Ok(s)) => Some(s.clone()),
            _ => None,
        }
    }

    /// The writer: follows `watch` (from [`ClusterView::start`]) until cancelled or the
    /// store shuts down, then ends every subscription.
    pub async fn run(self, store: Store, mut watch: Watch, cancel: CancellationToken) {
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => break,
                ev = watch.events.recv() => ev,
            };
            match ev {
                Ok(ev) => {
                    let mut events = vec![ev];
                    while events.len() < MAX_FOLD {
                        match watch.events.try_recv() {
                            Ok(ev) => events.push(ev),
                            Err(_) => break,
                        }
                    }
                    self.apply(&events);
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::info!(
                        missed = n,
                        "the cluster view fell behind the store: rebuilding it"
                    );
                    match store.watch() {
                        Ok(w) => match State::load(&w.snapshot) {
                            Ok(state) => {
                                self.replace(state);
                                watch = w;
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "cannot rebuild the cluster view");
                                break;
                            }
                        },
                        Err(_) => break,
                    }
                }
                Err(RecvError::Closed) => break,
            }
        }
        if let Ok(mut u) = self.shared.updates.lock() {
            u.take();
        }
    }

    /// Applies store events in order and publishes the result once.
    fn apply(&self, events: &[shoal_store::Event]) {
        let mut state = (*self.current()).clone();
        let mut nodes = HashSet::new();
        let mut changes = Vec::new();
        for ev in events {
            let before = changes.len();
            for c in &ev.changes {
                changes.extend(state.apply(c, &mut nodes));
            }
            state.index = ev.index;
            if changes[before..]
                .iter()
                .any(|c| matches!(c.kind, Kind::Node | Kind::Revocation | Kind::User))
            {
                state.access_index = ev.index;
            }
        }
        let state = Arc::new(state);
        self.publish(state, Some(changes), Some(nodes));
    }

    /// Swaps in a whole new state (after a rebuild): every reader is told.
    fn replace(&self, state: State) {
        self.publish(Arc::new(state), None, None);
    }

    /// `nodes`: the nodes whose tasks changed (`None`: all of them).
    fn publish(
        &self,
        state: Arc<State>,
        changes: Option<Vec<Changed>>,
        nodes: Option<HashSet<String>>,
    ) {
        let index = state.index;
        // The state first: whoever is woken reads at least this one.
        self.shared.current.send_replace(state.clone());
        if let Ok(watched) = self.shared.nodes.lock() {
            match &nodes {
                Some(nodes) => {
                    for n in nodes {
                        if let Some(tx) = watched.get(n) {
                            tx.send_replace(index);
                        }
                    }
                }
                None => {
                    for tx in watched.values() {
                        tx.send_replace(index);
                    }
                }
            }
        }
        if let Ok(u) = self.shared.updates.lock() {
            if let Some(tx) = u.as_ref() {
                // Fails only when nobody subscribes.
                let _ = tx.send(Arc::new(Update { state, changes }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::objects::{ContainerSpec, SecretReference};
    use shoal_store::{Batch, Expect};

    fn task(id: &str, node: &str, service: &str, secret: Option<&str>) -> Task {
        Task {
            id: id.into(),
            node_id: node.into(),
            service_id: service.into(),
            spec: Some(ContainerSpec {
                secrets: secret
                    .map(|s| SecretReference {
                        secret_id: s.into(),
                        ..Default::default()
                    })
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn put(state: &mut State, t: Task) -> HashSet<String> {
        let mut nodes = HashSet::new();
        let v = Versioned {
            version: state.index + 1,
            value: t,
        };
        state.index += 1;
        state.put_task(Arc::new(v), &mut nodes);
        nodes
    }

    fn ids<'a>(it: impl Iterator<Item = &'a Versioned<Task>>) -> Vec<&'a str> {
        it.map(|t| t.value.id.as_str()).collect()
    }

    #[test]
    fn tasks_are_indexed_by_node_service_and_secret_and_moves_touch_both_nodes() {
        let mut s = State::default();
        put(&mut s, task("t1", "n1", "s1", Some("sec")));
        put(&mut s, task("t2", "n1", "s2", None));
        put(&mut s, task("t3", "n2", "s1", None));
        assert_eq!(ids(s.tasks_on("n1")), ["t1", "t2"]);
        assert_eq!(ids(s.tasks_of("s1")), ["t1", "t3"]);
        assert_eq!(ids(s.tasks_using("sec")), ["t1"]);
        let before = s.clone();
        let touched = put(&mut s, task("t1", "n2", "s1", None));
        assert_eq!(touched, HashSet::from(["n1".to_string(), "n2".to_string()]));
        assert_eq!(ids(s.tasks_on("n1")), ["t2"]);
        assert_eq!(ids(s.tasks_on("n2")), ["t1", "t3"]);
        assert_eq!(ids(s.tasks_using("sec")), Vec::<&str>::new());
        // The earlier snapshot is untouched.
        assert_eq!(ids(before.tasks_on("n1")), ["t1", "t2"]);
        let mut nodes = HashSet::new();
        s.remove_task("t3", &mut nodes);
        assert_eq!(nodes, HashSet::from(["n2".to_string()]));
        assert_eq!(ids(s.tasks_of("s1")), ["t1"]);
        assert!(s.by_service.get("s2").is_some());
        s.remove_task("t2", &mut nodes);
        assert!(s.by_service.get("s2").is_none(), "empty index entries go");
    }

    async fn test_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1, "m1").await.expect("store");
        store.bootstrap().await.expect("bootstrap");
        store
            .wait_leader(std::time::Duration::from_secs(10))
            .await
            .expect("leader");
        (dir, store)
    }

    /// A view of a new one-member store, with its writer running.
    struct Running {
        _dir: tempfile::TempDir,
        store: Store,
        view: ClusterView,
        cancel: CancellationToken,
        writer: tokio::task::JoinHandle<()>,
    }

    async fn running_view() -> Running {
        let (dir, store) = test_store().await;
        let (view, watch) = ClusterView::start(&store).expect("view");
        let cancel = CancellationToken::new();
        let writer = tokio::spawn(view.clone().run(store.clone(), watch, cancel.clone()));
        Running {
            _dir: dir,
            store,
            view,
            cancel,
            writer,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_change_wakes_only_its_nodes_session_and_subscribers_see_it_once() {
        let Running {
            _dir,
            store,
            view,
            cancel,
            writer,
        } = running_view().await;
        let mut n1 = view.watch_node("n1");
        let n2 = view.watch_node("n2");
        let mut sub = view.subscribe();
        let mut b = Batch::default();
        b.put(&task("t1", "n1", "s1", None), Expect::Absent);
        let index = store.commit(b).await.expect("commit");
        let state = view
            .wait_index(index, std::time::Duration::from_secs(5))
            .await
            .expect("applied");
        assert_eq!(ids(state.tasks_on("n1")), ["t1"]);
        assert!(
            state.access_index() < state.index(),
            "a task changes nothing about who may call"
        );
        // The state is published first, then the wake-ups, then the update: once the
        // update is here, every wake-up of this change has been sent.
        let u = sub.next().await.expect("an update");
        assert!(n1.has_changed().expect("open"));
        n1.borrow_and_update();
        assert!(
            !n2.has_changed().expect("open"),
            "node n2's session is not woken"
        );
        assert_eq!(
            u.changes,
            Some(vec![Changed {
                kind: Kind::Task,
                id: "t1".into()
            }])
        );
        assert!(u.touches(&[Kind::Task]) && !u.touches(&[Kind::Node]));
        let mut b = Batch::default();
        b.put(
            &shoal_proto::objects::Node {
                id: "n1".into(),
                ..Default::default()
            },
            Expect::Absent,
        );
        let index = store.commit(b).await.expect("commit");
        let state = view
            .wait_index(index, std::time::Duration::from_secs(5))
            .await
            .expect("applied");
        assert_eq!(state.access_index(), index, "a node is who may call");
        let u = sub.next().await.expect("the node's update");
        assert!(u.touches(&[Kind::Node]));
        cancel.cancel();
        writer.await.expect("writer");
        assert!(
            sub.next().await.is_none(),
            "subscriptions end with the writer"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_that_falls_behind_gets_the_current_state_once() {
        let Running {
            _dir,
            store,
            view,
            cancel,
            writer,
        } = running_view().await;
        let mut sub = view.subscribe();
        let mut last = 0;
        for i in 0..(UPDATE_CAPACITY + 20) {
            let mut b = Batch::default();
            b.put(&task(&format!("t{i:04}"), "n1", "s1", None), Expect::Absent);
            last = store.commit(b).await.expect("commit");
            // One published state per commit: let the writer apply each on its own.
            view.wait_index(last, std::time::Duration::from_secs(5))
                .await
                .expect("applied");
        }
        let u = sub.next().await.expect("an update");
        assert!(u.changes.is_none(), "a lagged subscriber is told to resync");
        assert_eq!(u.state.index(), last);
        assert_eq!(u.state.count::<Task>(), UPDATE_CAPACITY + 20);
        cancel.cancel();
        writer.await.expect("writer");
    }
}

//! The orchestrators: they turn services into tasks. Each is a pure reconciler from
//! (services, tasks, nodes) to a [`Plan`] of task changes ([`replicated`], [`global`]);
//! the scheduler then places new tasks; [`run`] is the thin loop on the leader that
//! reads the cluster view, plans, and commits the plan in one transaction.

pub mod global;
pub mod jobs;
pub mod replicated;
pub mod restart;
pub mod update;

use crate::cluster::has_finished;
use crate::scheduler;
use crate::view::{ClusterView, Kind, State};
use shoal_proto::objects::{
    Availability, Node, NodeState, Service, ServiceMode, ServiceSpec, Task, TaskState, TaskStatus,
};
use shoal_store::{Batch, Expect, Store, StoreError, Versioned};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Finished tasks kept per slot (or per node, for global services), as swarm's
/// task history limit.
pub const TASK_HISTORY: usize = 5;
/// How long a successor waits for the task it replaces to stop (stop-first updates)
/// before it starts anyway.
pub const OLD_TASK_TIMEOUT_S: i64 = 60;

/// What the orchestrators see: one state of the cluster view, borrowed.
pub struct World<'a> {
    state: &'a State,
    pub services: Vec<&'a Service>,
    pub tasks: Vec<&'a Versioned<Task>>,
    /// Sorted by ID (the scheduler takes them whole).
    pub nodes: Vec<Node>,
    pub networks: Vec<&'a shoal_proto::objects::Network>,
    pub now_ms: i64,
}

impl<'a> World<'a> {
    pub fn of(state: &'a State, now_ms: i64) -> World<'a> {
        World {
            state,
            services: state.values::<Service>().collect(),
            tasks: state.iter::<Task>().collect(),
            nodes: state.values::<Node>().cloned().collect(),
            networks: state.values::<shoal_proto::objects::Network>().collect(),
            now_ms,
        }
    }
}

/// Changes to make, applied in one store transaction.
#[derive(Default, Debug)]
pub struct Plan {
    pub create: Vec<Task>,
    /// Task ID -> (version read, new task).
    pub update: BTreeMap<String, (u64, Task)>,
    pub delete: BTreeMap<String, u64>,
    /// Services whose update status (or, on a rollback, spec) changes, by ID.
    pub services: BTreeMap<String, Service>,
    /// The earliest time (unix ms) a later pass has something to do without any
    /// change in the store (a restart delay, an update's monitor period).
    pub wake_at: Option<i64>,
    /// Nodes given a tunnel address, by ID: (version read, new node).
    pub nodes: BTreeMap<String, (u64, Node)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.update.is_empty()
            && self.delete.is_empty()
            && self.services.is_empty()
            && self.nodes.is_empty()
    }

    /// Asks for a pass at `at` (unix ms) at the latest.
    pub fn wake(&mut self, at: i64) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    /// The service as this plan will write it.
    pub fn service_mut(&mut self, s: &Service) -> &mut Service {
        self.services
            .entry(s.id.clone())
            .or_insert_with(|| s.clone())
    }

    /// Raises a task's desired state (never lowers it).
    pub fn set_desired(&mut self, t: &Versioned<Task>, desired: TaskState) {
        let current = self
            .update
            .get(&t.value.id)
            .map(|u| u.1.desired_state)
            .unwrap_or(t.value.desired_state);
        if current >= desired as i32 || self.delete.contains_key(&t.value.id) {
            return;
        }
        let entry = self
            .update
            .entry(t.value.id.clone())
            .or_insert_with(|| (t.version, t.value.clone()));
        entry.1.desired_state = desired as i32;
        // When it was asked to stop: a successor waits for it only so long.
        entry.1.updated_at_unix = crate::time::unix_now();
    }

    pub fn delete(&mut self, t: &Versioned<Task>) {
        self.update.remove(&t.value.id);
        self.delete.insert(t.value.id.clone(), t.version);
    }
}

pub fn state_of(t: &Task) -> i32 {
    t.status.as_ref().map(|s| s.state).unwrap_or(0)
}

/// Desired to run (not being stopped or removed).
pub fn is_live(t: &Task) -> bool {
    t.desired_state <= TaskState::Running as i32
}

/// When the task's current state was recorded: by a manager when known (its clock),
/// else by the agent.
pub fn finished_at(t: &Task) -> i64 {
    let Some(st) = t.status.as_ref() else {
        return 0;
    };
    match st.applied_at_ms {
        0 => st.timestamp_unix_ms,
        at => at,
    }
}

pub fn is_job(spec: &ServiceSpec) -> bool {
    spec.mode == ServiceMode::ReplicatedJob as i32 || spec.mode == ServiceMode::GlobalJob as i32
}

/// Whether the task runs what its service asks for now (else an update replaces it).
pub fn is_current(service: &Service, t: &Task) -> bool {
    // Called for every task on every pass: compares in place, without copying the spec.
    match &service.spec {
        Some(spec) => {
            t.spec == spec.container
                && t.placement == spec.placement
                && t.reservations == spec.reservations
                && (!is_job(spec) || t.job_iteration == service.job_iteration)
        }
        None => t.spec.is_none() && t.placement.is_none() && t.reservations.is_none(),
    }
}

fn newest<'a>(tasks: &[&'a Versioned<Task>]) -> Option<&'a Versioned<Task>> {
    tasks
        .iter()
        .copied()
        .max_by_key(|t| (t.value.created_at_unix, t.version))
}

/// Where a group's new tasks go: its slot, and its node for a global service (empty:
/// the scheduler decides); `can_place`: whether a new task may be made now.
pub struct Place<'n> {
    pub slot: u64,
    pub node_id: &'n str,
    pub can_place: bool,
}

/// One group of a service (a slot of a replicated service, or a node of a global one):
/// restarts what ended under the restart policy, replaces what a lost node held, and
/// tells `update` what the group runs. Returns the group's old task if an update is to
/// replace it.
pub fn reconcile_group<'a>(
    world: &World<'_>,
    service: &Service,
    plan: &mut Plan,
    upd: &mut update::Update<'_>,
    tasks: &[&'a Versioned<Task>],
    place: Place<'_>,
) -> Option<&'a Versioned<Task>> {
    let Place {
        slot,
        node_id,
        can_place,
    } = place;
    let now = world.now_ms;
    let no_spec = ServiceSpec::default();
    let spec = service.spec.as_ref().unwrap_or(&no_spec);
    upd.group();
    // A node that can no longer keep its task: replaced at once, not restarted.
    let mut lost: Option<&Versioned<Task>> = None;
    let mut live: Vec<&Versioned<Task>> = Vec::new();
    for t in tasks.iter().copied().filter(|t| is_live(&t.value)) {
        if world.node_problem(&t.value).is_some() {
            plan.set_desired(t, TaskState::Shutdown);
            lost = lost.or(Some(t));
        } else {
            live.push(t);
        }
    }
    let (current, old): (Vec<_>, Vec<_>) = live.iter().partition(|t| is_current(service, &t.value));
    let restart = |plan: &mut Plan, t: &Versioned<Task>| match restart::decide(spec, &t.value, now)
    {
        restart::Restart::Now => {
            plan.set_desired(t, TaskState::Shutdown);
            if can_place {
                plan.create
                    .push(restart::successor(service, &t.value, node_id, true, now));
            }
        }
        restart::Restart::At(at) => plan.wake(at),
        restart::Restart::Never => {}
    };
    if let Some(cur) = newest(&current) {
        for extra in current.iter().filter(|t| t.value.id != cur.value.id) {
            plan.set_desired(extra, TaskState::Shutdown);
        }
        upd.current(&cur.value, plan);
        if has_finished(&cur.value) {
            // Old tasks (of a start-first update) keep serving while the new one fails.
            restart(plan, cur);
        } else if update::successor_runs(&cur.value) {
            for o in &old {
                plan.set_desired(o, TaskState::Shutdown);
            }
        }
        return None;
    }
    if let Some(o) = newest(&old) {
        for extra in old.iter().filter(|t| t.value.id != o.value.id) {
            plan.set_desired(extra, TaskState::Shutdown);
        }
        if has_finished(&o.value) {
            // It ended on its own: restarted under the policy, with the current spec.
            restart(plan, o);
            return None;
        }
        upd.candidate(o.value.id.clone());
        return Some(o);
    }
    if let Some(l) = lost {
        if can_place || node_id.is_empty() {
            plan.create
                .push(restart::successor(service, &l.value, node_id, false, now));
            upd.started();
        }
        return None;
    }
    // An old task still stopping for an update (stop-first): its successor waits.
    let stopping = tasks.iter().find(|t| {
        !is_live(&t.value)
            && !has_finished(&t.value)
            && t.value.desired_state == TaskState::Shutdown as i32
            && !t.value.node_id.is_empty()
            && world.node_problem(&t.value).is_none()
    });
    if let Some(s) = stopping {
        upd.stopping();
        let give_up = (s.value.updated_at_unix + OLD_TASK_TIMEOUT_S) * 1000;
        if now < give_up {
            plan.wake(give_up);
            return None;
        }
    }
    if can_place {
        plan.create.push(new_task(service, slot, node_id, now));
        upd.started();
    }
    None
}

/// What an update does with a group's old task it was told to replace.
pub fn replace_old(
    service: &Service,
    plan: &mut Plan,
    old: &Versioned<Task>,
    step: &update::Step,
    now: i64,
) {
    let global_node = match service.spec.as_ref().map(|s| s.mode) {
        Some(m) if m == ServiceMode::Global as i32 => old.value.node_id.as_str(),
        _ => "",
    };
    // A task no node has taken yet has nothing to stop: it just goes.
    if old.value.node_id.is_empty() && state_of(&old.value) <= TaskState::Pending as i32 {
        plan.delete(old);
        plan.create
            .push(new_task(service, old.value.slot, global_node, now));
        return;
    }
    match step {
        update::Step::StopFirst => plan.set_desired(old, TaskState::Shutdown),
        update::Step::StartFirst => {
            plan.create
                .push(new_task(service, old.value.slot, global_node, now))
        }
    }
}

impl World<'_> {
    pub fn node(&self, id: &str) -> Option<&Node> {
        // Nodes are few next to tasks; the store lists them sorted by ID.
        match self.nodes.binary_search_by(|n| n.id.as_str().cmp(id)) {
            Ok(i) => Some(&self.nodes[i]),
            Err(_) => self.nodes.iter().find(|n| n.id == id),
        }
    }

    /// Why the task's node can no longer keep it, if it cannot.
    pub fn node_problem(&self, t: &Task) -> Option<&'static str> {
        if t.node_id.is_empty() {
            return None;
        }
        match self.node(&t.node_id) {
            None => Some("node removed"),
            Some(n) if n.state == NodeState::Down as i32 => Some("node down"),
            Some(n) if n.availability == Availability::Drain as i32 => Some("node drained"),
            _ => None,
        }
    }

    /// The service's tasks, from the view's index.
    pub fn tasks_of<'b>(
        &'b self,
        service_id: &'b str,
    ) -> impl Iterator<Item = &'b Versioned<Task>> + 'b {
        self.state.tasks_of(service_id)
    }
}

/// A new task of `service` (placed by the scheduler unless `node_id` is given).
pub fn new_task(service: &Service, slot: u64, node_id: &str, now_ms: i64) -> Task {
    let spec = service.spec.clone().unwrap_or_default();
    let id = shoal_pki::random_id();
    let (state, message) = if node_id.is_empty() {
        (TaskState::Pending, "pending task scheduling")
    } else {
        (TaskState::Assigned, "assigned")
    };
    let name = if node_id.is_empty() {
        format!("{}.{slot}", spec.name)
    } else {
        format!("{}.{node_id}", spec.name)
    };
    Task {
        id,
        service_id: service.id.clone(),
        slot,
        node_id: node_id.to_string(),
        spec: spec.container.clone(),
        desired_state: TaskState::Running as i32,
        status: Some(TaskStatus {
            state: state as i32,
            message: message.into(),
            timestamp_unix_ms: now_ms,
            ..Default::default()
        }),
        name,
        created_at_unix: now_ms / 1000,
        updated_at_unix: now_ms / 1000,
        placement: spec.placement.clone(),
        reservations: spec.reservations,
        spec_version: service.spec_version,
        job_iteration: service.job_iteration,
        ..Default::default()
    }
}

/// Keeps the newest [`TASK_HISTORY`] finished, not-live tasks of a group; deletes the rest.
pub fn trim_history<'a>(plan: &mut Plan, group: impl Iterator<Item = &'a Versioned<Task>>) {
    let mut old: Vec<&Versioned<Task>> = group
        .filter(|t| !is_live(&t.value) && has_finished(&t.value))
        .collect();
    if old.len() <= TASK_HISTORY {
        return;
    }
    old.sort_by_key(|t| std::cmp::Reverse((t.value.created_at_unix, t.version)));
    for t in &old[TASK_HISTORY..] {
        plan.delete(t);
    }
}

/// Plans all changes: orchestrators first, then the scheduler places every pending task
/// (including the ones just planned).
pub fn plan(world: &World<'_>) -> Plan {
    let mut plan = Plan::default();
    let services: HashMap<&str, &Service> =
        world.services.iter().map(|s| (s.id.as_str(), *s)).collect();
    for s in world.services.iter().copied() {
        match ServiceMode::try_from(s.spec.as_ref().map(|x| x.mode).unwrap_or(0)) {
            Ok(ServiceMode::Global) => global::reconcile(world, s, &mut plan),
            Ok(ServiceMode::ReplicatedJob) | Ok(ServiceMode::GlobalJob) => {
                jobs::reconcile(world, s, &mut plan)
            }
            _ => replicated::reconcile(world, s, &mut plan),
        }
    }
    // Tasks on removed nodes cannot be stopped or reported by them any more: forget them
    // (their replacements were planned above).
    for t in world.tasks.iter().copied() {
        if !t.value.node_id.is_empty() && world.node(&t.value.node_id).is_none() {
            plan.delete(t);
        }
    }
    // Tasks of removed services go away.
    for t in world.tasks.iter().copied() {
        if t.value.service_id.is_empty() || services.contains_key(t.value.service_id.as_str()) {
            continue;
        }
        if has_finished(&t.value) || t.value.node_id.is_empty() {
            plan.delete(t);
        } else if is_live(&t.value) || t.value.desired_state < TaskState::Remove as i32 {
            plan.set_desired(t, TaskState::Remove);
        }
    }
    allocate(world, &mut plan);
    schedule(world, &mut plan);
    plan
}

/// The allocator's stage: addresses on their overlay networks for new tasks, and for
/// pending ones still waiting for them (the scheduler places neither until they have
/// them).
fn allocate(world: &World<'_>, plan: &mut Plan) {
    use crate::allocator::{attach, needs_addresses, Pools};
    let waiting: Vec<&Versioned<Task>> = world
        .tasks
        .iter()
        .copied()
        .filter(|t| {
            t.value.node_id.is_empty()
                && is_live(&t.value)
                && !has_finished(&t.value)
                && !plan.delete.contains_key(&t.value.id)
                && needs_addresses(&t.value)
        })
        .collect();
    if waiting.is_empty() && !plan.create.iter().any(needs_addresses) {
        return;
    }
    let networks: HashMap<&str, &shoal_proto::objects::Network> =
        world.networks.iter().map(|n| (n.id.as_str(), *n)).collect();
    let mut pools = Pools::of(
        world
            .tasks
            .iter()
            .map(|t| &t.value)
            .filter(|t| !plan.delete.contains_key(&t.id)),
    );
    let note = |t: &mut Task, why: String| {
        let st = t.status.get_or_insert_with(Default::default);
        st.err = why;
    };
    for t in plan.create.iter_mut().filter(|t| needs_addresses(t)) {
        if let Err(why) = attach(t, &networks, &mut pools) {
            note(t, why);
        }
    }
    for t in waiting {
        let mut next = plan
            .update
            .get(&t.value.id)
            .map(|u| u.1.clone())
            .unwrap_or_else(|| t.value.clone());
        let before = next.clone();
        if let Err(why) = attach(&mut next, &networks, &mut pools) {
            note(&mut next, why);
        } else if let Some(st) = next.status.as_mut() {
            st.err.clear();
        }
        if next != before {
            plan.update.insert(t.value.id.clone(), (t.version, next));
        }
    }
}

/// Places pending tasks, old and new, with the scheduler.
fn schedule(world: &World<'_>, plan: &mut Plan) {
    let pending_state = TaskState::Pending as i32;
    // Every task as this pass leaves it, borrowed: most passes place nothing, and at
    // 100,000 tasks copying them all took most of a pass.
    let planned = || {
        world
            .tasks
            .iter()
            .map(|t| plan.update.get(&t.value.id).map_or(&t.value, |u| &u.1))
            .filter(|t| !plan.delete.contains_key(&t.id))
    };
    let mut pending: Vec<Task> = planned()
        .filter(|t| t.node_id.is_empty() && state_of(t) == pending_state && is_live(t))
        .filter(|t| !crate::allocator::needs_addresses(t))
        .cloned()
        .collect();
    pending.extend(
        plan.create
            .iter()
            .filter(|t| t.node_id.is_empty() && !crate::allocator::needs_addresses(t))
            .cloned(),
    );
    if pending.is_empty() {
        return;
    }
    let mut current: Vec<Task> = planned().cloned().collect();
    current.extend(
        plan.create
            .iter()
            .filter(|t| !t.node_id.is_empty())
            .cloned(),
    );
    let out = scheduler::schedule(&world.nodes, &current, &pending);
    // Indexes: many thousands of decisions must not each scan every task.
    let created: HashMap<String, usize> = plan
        .create
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.clone(), i))
        .collect();
    let existing: HashMap<&str, &Versioned<Task>> = world
        .tasks
        .iter()
        .map(|t| (t.value.id.as_str(), *t))
        .collect();
    let mut apply = |id: &str, f: &dyn Fn(&mut Task) -> bool| {
        if let Some(&i) = created.get(id) {
            f(&mut plan.create[i]);
            return;
        }
        if let Some(t) = existing.get(id) {
            let mut next = plan
                .update
                .get(id)
                .map(|u| u.1.clone())
                .unwrap_or_else(|| t.value.clone());
            if f(&mut next) {
                plan.update.insert(id.to_string(), (t.version, next));
            }
        }
    };
    for d in out.assigned {
        let node = d.node_id.clone();
        let now = world.now_ms;
        apply(&d.task_id, &move |t: &mut Task| {
            t.node_id = node.clone();
            t.status = Some(TaskStatus {
                state: TaskState::Assigned as i32,
                message: "assigned".into(),
                timestamp_unix_ms: now,
                ..Default::default()
            });
            true
        });
    }
    for u in out.unplaced {
        let reason = u.reason.clone();
        apply(&u.task_id, &move |t: &mut Task| {
            let st = t.status.get_or_insert_with(Default::default);
            if st.err == reason {
                return false;
            }
            st.err = reason.clone();
            st.message = "pending task scheduling".into();
            true
        });
    }
}

fn now_ms() -> i64 {
    crate::time::unix_now_ms()
}

/// What one pass decides from `state`: the orchestrators' plan, then tunnel addresses
/// for nodes that lack one.
fn plan_state(state: &State) -> Plan {
    let world = World::of(state, now_ms());
    let mut plan = plan(&world);
    if world
        .nodes
        .iter()
        .any(crate::allocator::needs_tunnel_address)
    {
        let tunnel = state
            .cluster()
            .and_then(|c| c.value.network.as_ref())
            .map(|n| n.tunnel_subnet.clone())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| {
                crate::cluster::DEFAULT_TUNNEL_SUBNET
                    .parse()
                    .expect("a valid default")
            });
        for (id, addr) in crate::allocator::tunnel_addresses(&world.nodes, tunnel) {
            if let Some(v) = state.get::<Node>(&id) {
                let mut n = v.value.clone();
                n.tunnel_addr = addr;
                plan.nodes.insert(id, (v.version, n));
            }
        }
    }
    plan
}

/// One pass: read the view, plan (on a blocking thread: at many thousands of tasks a
/// plan is CPU work), commit, and wait until the view has the commit, so the next pass
/// reads its own writes. Returns whether anything was written, and when the next pass
/// is due at the latest (unix ms) if nothing changes meanwhile.
#[tracing::instrument(name = "orchestrator pass", level = "debug", skip_all, fields(index))]
pub async fn reconcile_once(
    store: &Store,
    view: &ClusterView,
) -> Result<(bool, Option<i64>), StoreError> {
    let state = view.current();
    tracing::Span::current().record("index", state.index());
    let plan = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || plan_state(&state))
            .await
            .map_err(|e| StoreError::Raft(format!("the orchestration pass panicked: {e}")))?
    };
    if plan.is_empty() {
        return Ok((false, plan.wake_at));
    }
    let mut b = Batch::default();
    for t in &plan.create {
        b.put(t, Expect::Absent);
    }
    for (version, t) in plan.update.values() {
        b.put(t, Expect::Version(*version));
    }
    for (id, version) in &plan.delete {
        b.delete::<Task>(id, Expect::Version(*version));
    }
    for s in plan.services.values() {
        let version = state.get::<Service>(&s.id).map_or(0, |v| v.version);
        b.put(s, Expect::Version(version));
    }
    for (version, n) in plan.nodes.values() {
        b.put(n, Expect::Version(*version));
    }
    let index = store.commit(b).await?;
    if view
        .wait_index(index, Duration::from_secs(5))
        .await
        .is_none()
    {
        tracing::warn!(
            index,
            "the cluster view has not applied the orchestrator's write after 5 s"
        );
    }
    Ok((true, plan.wake_at))
}

/// Whether the tasks an update changed may call for a pass.
fn tasks_matter(seen: &State, u: &crate::view::Update) -> bool {
    match u.changed(Kind::Task) {
        None => true,
        Some(mut ids) => ids.any(|id| task_change_matters(seen, &u.state, id)),
    }
}

/// Whether a change to task `id` between `before` (what the last pass planned from)
/// and `after` may change what the orchestrators decide. Most of a large cluster's
/// task changes are status reports on the way to RUNNING, which decide nothing: a pass
/// over every task for each of them kept a core busy while 50,000 tasks reported in.
/// A task that appeared, went, moved, was told to stop or ended matters; so does any
/// change to a task of a service in the middle of an update (its monitor counts
/// running, healthy time).
fn task_change_matters(before: &State, after: &State, id: &str) -> bool {
    let (Some(a), Some(b)) = (before.get::<Task>(id), after.get::<Task>(id)) else {
        return true;
    };
    let (a, b) = (&a.value, &b.value);
    if a.desired_state != b.desired_state
        || a.node_id != b.node_id
        || a.spec_version != b.spec_version
        || a.service_id != b.service_id
    {
        return true;
    }
    if state_of(b) != state_of(a) && state_of(b) >= TaskState::Complete as i32 {
        return true;
    }
    if a.status == b.status {
        return false;
    }
    after.get::<Service>(&b.service_id).is_none_or(|s| {
        use shoal_proto::objects::UpdateState;
        let st = s.value.update_status.as_ref().map_or(0, |u| u.state);
        st == UpdateState::Updating as i32 || st == UpdateState::RollbackStarted as i32
    })
}

/// A pass when nothing changed and nothing is due: every decision that waits on the
/// clock (restart delays, update delays and monitors) asks for its own wake-up, so this
/// only bounds what a missed one could cost. Each pass reads every node, which at
/// 1,000 nodes is most of what an idle leader does.
const QUIET_PASS: Duration = Duration::from_secs(5);

/// A quiet pass comes at most this often relative to its own length: a pass of 200 ms
/// (100,000 tasks) comes every 20 s, so the safety net costs at most 1 % of a core.
const QUIET_SHARE: u32 = 100;

/// How long to wait for the next quiet pass after one that took `took`.
fn quiet_wait(took: Duration) -> Duration {
    QUIET_PASS.max(took * QUIET_SHARE)
}

/// The leader's orchestration loop: reconciles on every change to services, tasks or
/// nodes, and when a pass asked to be woken (restart delays, update monitors), until
/// cancelled.
pub async fn run(store: Store, view: ClusterView, cancel: CancellationToken) {
    let mut updates = view.subscribe();
    loop {
        let started = std::time::Instant::now();
        // What this pass plans from, at the latest: later task changes are weighed
        // against it.
        let seen = view.current();
        let pass = reconcile_once(&store, &view).await;
        let quiet = quiet_wait(started.elapsed());
        let mut wait = quiet;
        match pass {
            Ok((true, _)) => continue,
            Ok((false, wake)) => {
                if let Some(at) = wake {
                    let ms = (at - now_ms()).clamp(0, quiet.as_millis() as i64) as u64;
                    wait = Duration::from_millis(ms);
                }
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => tracing::warn!(error = %e, "orchestration pass failed"),
        }
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = &mut deadline => break,
                u = updates.next() => match u {
                    Some(u) if u.touches(&[Kind::Service, Kind::Node]) => break,
                    Some(u) if u.touches(&[Kind::Task]) && tasks_matter(&seen, &u) => break,
                    Some(_) => {}
                    None => return,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_on_the_way_to_running_calls_for_no_pass_unless_its_service_is_updating() {
        use shoal_proto::objects::{UpdateState, UpdateStatus};
        let mut before = State::default();
        let svc = Service {
            id: "s".into(),
            ..Default::default()
        };
        before.put_for_test(svc.clone());
        let task = |state: TaskState| Task {
            id: "t".into(),
            service_id: "s".into(),
            node_id: "n".into(),
            desired_state: TaskState::Running as i32,
            status: Some(TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        before.put_for_test(task(TaskState::Assigned));
        let after = |t: Task, s: &Service| {
            let mut a = before.clone();
            a.put_for_test(s.clone());
            a.put_for_test(t);
            a
        };
        let running = after(task(TaskState::Running), &svc);
        assert!(!task_change_matters(&before, &running, "t"));
        let failed = after(task(TaskState::Failed), &svc);
        assert!(task_change_matters(&before, &failed, "t"));
        let mut told = task(TaskState::Assigned);
        told.desired_state = TaskState::Shutdown as i32;
        assert!(task_change_matters(&before, &after(told, &svc), "t"));
        let mut moved = task(TaskState::Assigned);
        moved.node_id = "m".into();
        assert!(task_change_matters(&before, &after(moved, &svc), "t"));
        let mut updating = svc.clone();
        updating.update_status = Some(UpdateStatus {
            state: UpdateState::Updating as i32,
            ..Default::default()
        });
        assert!(task_change_matters(
            &before,
            &after(task(TaskState::Running), &updating),
            "t"
        ));
        assert!(task_change_matters(&before, &before, "gone"));
    }

    #[test]
    fn quiet_passes_cost_at_most_a_hundredth_of_the_time() {
        assert_eq!(quiet_wait(Duration::from_millis(1)), QUIET_PASS);
        assert_eq!(quiet_wait(Duration::from_millis(50)), QUIET_PASS);
        assert_eq!(
            quiet_wait(Duration::from_millis(200)),
            Duration::from_secs(20)
        );
    }
}

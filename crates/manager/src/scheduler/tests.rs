use super::*;
use proptest::prelude::*;
use shoal_proto::objects::{
    Availability, NodeDescription, NodeRole, NodeState, Placement, Resources, TaskState, TaskStatus,
};
use std::collections::BTreeMap;

const GIB: i64 = 1 << 30;

fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        role: NodeRole::Worker as i32,
        availability: Availability::Active as i32,
        state: NodeState::Ready as i32,
        description: Some(NodeDescription {
            hostname: format!("host-{id}"),
            os: "linux".into(),
            arch: "x86_64".into(),
            cpus: 4,
            memory_bytes: 8 << 30,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn with_label(mut n: Node, key: &str, value: &str) -> Node {
    n.labels.insert(key.into(), value.into());
    n
}

fn with_memory(mut n: Node, bytes: u64) -> Node {
    if let Some(d) = n.description.as_mut() {
        d.memory_bytes = bytes;
    }
    n
}

fn pending(id: &str, service: &str) -> Task {
    Task {
        id: id.into(),
        service_id: service.into(),
        desired_state: TaskState::Running as i32,
        status: Some(TaskStatus {
            state: TaskState::Pending as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn replicas(service: &str, n: usize) -> Vec<Task> {
    (0..n)
        .map(|i| pending(&format!("{service}.{i}"), service))
        .collect()
}

fn running(id: &str, service: &str, node_id: &str) -> Task {
    let mut t = pending(id, service);
    t.node_id = node_id.into();
    if let Some(s) = t.status.as_mut() {
        s.state = TaskState::Running as i32;
    }
    t
}

fn reserve(mut tasks: Vec<Task>, nano_cpus: i64, memory_bytes: i64) -> Vec<Task> {
    for t in &mut tasks {
        t.reservations = Some(Resources {
            nano_cpus,
            memory_bytes,
            pids: 0,
        });
    }
    tasks
}

fn place(mut tasks: Vec<Task>, placement: Placement) -> Vec<Task> {
    for t in &mut tasks {
        t.placement = Some(placement.clone());
    }
    tasks
}

fn constrained(tasks: Vec<Task>, constraints: &[&str]) -> Vec<Task> {
    place(
        tasks,
        Placement {
            constraints: constraints.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        },
    )
}

/// Tasks assigned per node id.
fn per_node(outcome: &Outcome) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for d in &outcome.assigned {
        *m.entry(d.node_id.clone()).or_default() += 1;
    }
    m
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn six_replicas_on_three_equal_nodes_land_two_each() {
    let nodes = [node("n1"), node("n2"), node("n3")];
    let out = schedule(&nodes, &[], &replicas("web", 6));
    assert!(out.unplaced.is_empty());
    assert_eq!(per_node(&out), counts(&[("n1", 2), ("n2", 2), ("n3", 2)]));
}

#[test]
fn drained_paused_and_down_nodes_get_nothing() {
    let mut drained = node("n1");
    drained.availability = Availability::Drain as i32;
    let mut paused = node("n2");
    paused.availability = Availability::Pause as i32;
    let mut down = node("n3");
    down.state = NodeState::Down as i32;
    let nodes = [drained.clone(), paused.clone(), down.clone(), node("n4")];
    let out = schedule(&nodes, &[], &replicas("web", 3));
    assert_eq!(per_node(&out), counts(&[("n4", 3)]));

    let out = schedule(&[drained, paused, down], &[], &replicas("web", 1));
    assert!(out.assigned.is_empty());
    assert_eq!(
        out.unplaced[0].reason,
        "no suitable node (3 nodes not available for new tasks)"
    );
}

#[test]
fn no_nodes_at_all_says_no_suitable_node() {
    let out = schedule(&[], &[], &replicas("web", 1));
    assert_eq!(out.unplaced[0].reason, "no suitable node");
}

#[test]
fn reservation_larger_than_any_node_is_unplaced_for_memory() {
    let mut drained = node("n0");
    drained.availability = Availability::Drain as i32;
    let nodes = [drained, node("n1"), node("n2")];
    let out = schedule(&nodes, &[], &reserve(replicas("db", 1), 0, 64 * GIB));
    assert!(out.assigned.is_empty());
    assert_eq!(
        out.unplaced[0].reason,
        "no suitable node (insufficient memory on 2 nodes; 1 node not available for new tasks)"
    );
}

#[test]
fn cpu_and_both_resources_are_named() {
    let out = schedule(
        &[node("n1")],
        &[],
        &reserve(replicas("db", 1), 5_000_000_000, 0),
    );
    assert_eq!(
        out.unplaced[0].reason,
        "no suitable node (insufficient CPU on 1 node)"
    );
    let out = schedule(
        &[node("n1")],
        &[],
        &reserve(replicas("db", 1), 5_000_000_000, 9 * GIB),
    );
    assert_eq!(
        out.unplaced[0].reason,
        "no suitable node (insufficient CPU and memory on 1 node)"
    );
}

#[test]
fn memory_fills_up_across_the_batch() {
    // 8 GiB per node, 2 GiB already used on n1 by another service.
    let nodes = [node("n1"), node("n2")];
    let existing = reserve(vec![running("other.1", "other", "n1")], 0, 2 * GIB);
    let out = schedule(&nodes, &existing, &reserve(replicas("db", 8), 0, 3 * GIB));
    // n1 fits 2 more (6 GiB), n2 fits 2 (6 of 8 GiB).
    assert_eq!(per_node(&out), counts(&[("n1", 2), ("n2", 2)]));
    assert_eq!(out.unplaced.len(), 4);
    for u in &out.unplaced {
        assert_eq!(
            u.reason,
            "no suitable node (insufficient memory on 2 nodes)"
        );
    }
}

#[test]
fn finished_and_stopping_tasks_free_their_resources() {
    let nodes = [with_memory(node("n1"), 4 << 30)];
    let mut done = running("old.1", "old", "n1");
    if let Some(s) = done.status.as_mut() {
        s.state = TaskState::Complete as i32;
    }
    let mut stopping = running("old.2", "old", "n1");
    stopping.desired_state = TaskState::Shutdown as i32;
    let existing = reserve(vec![done, stopping], 0, 4 * GIB);
    let out = schedule(&nodes, &existing, &reserve(replicas("db", 1), 0, 4 * GIB));
    assert_eq!(out.assigned.len(), 1);
}

#[test]
fn role_constraint_uses_the_recorded_role() {
    let mut manager = node("m1");
    manager.role = NodeRole::Manager as i32;
    let nodes = [manager, node("w1"), node("w2")];
    let out = schedule(
        &nodes,
        &[],
        &constrained(replicas("web", 3), &["node.role==manager"]),
    );
    assert_eq!(per_node(&out), counts(&[("m1", 3)]));
    let out = schedule(
        &nodes,
        &[],
        &constrained(replicas("web", 2), &["node.role != manager"]),
    );
    assert_eq!(per_node(&out), counts(&[("w1", 1), ("w2", 1)]));
}

#[test]
fn engine_label_does_not_satisfy_node_label_constraint() {
    let mut liar = node("n1");
    if let Some(d) = liar.description.as_mut() {
        d.engine_labels.insert("zone".into(), "a".into());
    }
    let nodes = [liar, with_label(node("n2"), "zone", "b")];
    let out = schedule(
        &nodes,
        &[],
        &constrained(replicas("web", 1), &["node.labels.zone==a"]),
    );
    assert!(out.assigned.is_empty());
    assert_eq!(
        out.unplaced[0].reason,
        "no suitable node (scheduling constraints not satisfied on 2 nodes)"
    );
    let out = schedule(
        &nodes,
        &[],
        &constrained(replicas("web", 1), &["engine.labels.zone==a"]),
    );
    assert_eq!(per_node(&out), counts(&[("n1", 1)]));
}

#[test]
fn invalid_constraint_leaves_the_task_unplaced_with_the_parse_error() {
    let out = schedule(
        &[node("n1")],
        &[],
        &constrained(replicas("web", 1), &["node.zone==a"]),
    );
    assert!(out.assigned.is_empty());
    assert!(out.unplaced[0]
        .reason
        .starts_with("invalid placement: constraint \"node.zone==a\": unknown key node.zone"));
    let spread = place(
        replicas("web", 1),
        Placement {
            spread: vec!["node.zone".into()],
            ..Default::default()
        },
    );
    let out = schedule(&[node("n1")], &[], &spread);
    assert!(out.unplaced[0]
        .reason
        .starts_with("invalid placement: spread preference \"node.zone\": unknown key"));
}

fn spread(tasks: Vec<Task>, keys: &[&str]) -> Vec<Task> {
    place(
        tasks,
        Placement {
            spread: keys.iter().map(|k| k.to_string()).collect(),
            ..Default::default()
        },
    )
}

#[test]
fn spread_over_zones_balances_values_not_nodes() {
    let nodes = [
        with_label(node("a1"), "zone", "a"),
        with_label(node("a2"), "zone", "a"),
        with_label(node("b1"), "zone", "b"),
    ];
    let out = schedule(
        &nodes,
        &[],
        &spread(replicas("web", 4), &["node.labels.zone"]),
    );
    assert_eq!(per_node(&out), counts(&[("a1", 1), ("a2", 1), ("b1", 2)]));
}

#[test]
fn spread_counts_tasks_already_running() {
    let nodes = [
        with_label(node("a1"), "zone", "a"),
        with_label(node("b1"), "zone", "b"),
    ];
    let existing = [running("web.x", "web", "a1"), running("web.y", "web", "a1")];
    let out = schedule(
        &nodes,
        &existing,
        &spread(replicas("web", 2), &["node.labels.zone"]),
    );
    assert_eq!(per_node(&out), counts(&[("b1", 2)]));
}

#[test]
fn unlabelled_nodes_form_their_own_group() {
    let nodes = [
        with_label(node("a1"), "zone", "a"),
        with_label(node("a2"), "zone", "a"),
        node("x1"),
        node("x2"),
    ];
    let out = schedule(
        &nodes,
        &[],
        &spread(replicas("web", 4), &["node.labels.zone"]),
    );
    let got = per_node(&out);
    assert_eq!(got["a1"] + got["a2"], 2);
    assert_eq!(got["x1"] + got["x2"], 2);
}

#[test]
fn a_group_with_no_usable_node_does_not_compete() {
    let mut b1 = with_label(node("b1"), "zone", "b");
    b1.availability = Availability::Drain as i32;
    let nodes = [with_label(node("a1"), "zone", "a"), b1];
    let out = schedule(
        &nodes,
        &[],
        &spread(replicas("web", 3), &["node.labels.zone"]),
    );
    assert_eq!(per_node(&out), counts(&[("a1", 3)]));
}

#[test]
fn nested_preferences_split_zone_then_rack() {
    let zr = |id: &str, zone: &str, rack: &str| {
        with_label(with_label(node(id), "zone", zone), "rack", rack)
    };
    let nodes = [
        zr("n1", "a", "r1"),
        zr("n2", "a", "r2"),
        zr("n3", "a", "r2"),
        zr("n4", "b", "r1"),
    ];
    let out = schedule(
        &nodes,
        &[],
        &spread(
            replicas("web", 8),
            &["node.labels.zone", "node.labels.rack"],
        ),
    );
    // Zone a gets 4: rack r1 (n1) 2, rack r2 (n2, n3) 2. Zone b gets 4 on n4.
    assert_eq!(
        per_node(&out),
        counts(&[("n1", 2), ("n2", 1), ("n3", 1), ("n4", 4)])
    );
}

#[test]
fn max_replicas_per_node_holds_across_the_batch() {
    let nodes = [node("n1"), node("n2"), node("n3")];
    let tasks = place(
        replicas("web", 4),
        Placement {
            max_replicas_per_node: 1,
            ..Default::default()
        },
    );
    let out = schedule(&nodes, &[], &tasks);
    assert_eq!(per_node(&out), counts(&[("n1", 1), ("n2", 1), ("n3", 1)]));
    assert_eq!(out.unplaced.len(), 1);
    assert_eq!(out.unplaced[0].task_id, "web.3");
    assert_eq!(
        out.unplaced[0].reason,
        "no suitable node (max replicas per node limit exceeded on 3 nodes)"
    );
}

#[test]
fn ranking_prefers_fewest_service_tasks_then_fewest_tasks() {
    let nodes = [node("n1"), node("n2"), node("n3")];
    let existing = [
        running("web.a", "web", "n1"),
        running("db.a", "db", "n2"),
        running("db.b", "db", "n2"),
        running("db.c", "db", "n3"),
    ];
    let out = schedule(&nodes, &existing, &replicas("web", 2));
    // n2 and n3 have no web task; n3 has fewer tasks. Then n2 (0 web) beats n1/n3 (1).
    assert_eq!(
        out.assigned,
        vec![
            Decision {
                task_id: "web.0".into(),
                node_id: "n3".into()
            },
            Decision {
                task_id: "web.1".into(),
                node_id: "n2".into()
            },
        ]
    );
}

#[test]
fn reasons_are_ordered_by_count_most_first() {
    let mut down = node("n1");
    down.state = NodeState::Down as i32;
    let nodes = [
        down,
        with_memory(node("n2"), 1 << 30),
        with_label(node("n3"), "zone", "b"),
        with_label(node("n4"), "zone", "b"),
    ];
    let tasks = constrained(
        reserve(replicas("web", 1), 0, 2 * GIB),
        &["node.labels.zone==a"],
    );
    let out = schedule(&nodes, &[], &tasks);
    assert_eq!(
        out.unplaced[0].reason,
        "no suitable node (scheduling constraints not satisfied on 2 nodes; \
         1 node not available for new tasks; insufficient memory on 1 node)"
    );
}

#[test]
fn same_input_in_any_order_gives_the_same_decisions() {
    let mut nodes: Vec<Node> = (0..7)
        .map(|i| with_label(node(&format!("n{i}")), "zone", ["a", "b", "c"][i % 3]))
        .collect();
    let existing = [running("web.x", "web", "n4"), running("db.x", "db", "n2")];
    let mut tasks = spread(replicas("web", 11), &["node.labels.zone"]);
    tasks.extend(replicas("db", 5));
    let first = schedule(&nodes, &existing, &tasks);
    assert_eq!(schedule(&nodes, &existing, &tasks), first);
    nodes.reverse();
    assert_eq!(schedule(&nodes, &existing, &tasks), first);
}

#[test]
fn ten_thousand_tasks_over_a_thousand_nodes() {
    let nodes: Vec<Node> = (0..1000)
        .map(|i| {
            with_label(
                node(&format!("n{i:04}")),
                "zone",
                ["a", "b", "c", "d"][i % 4],
            )
        })
        .collect();
    let mut tasks = spread(
        reserve(replicas("web", 5000), 100_000_000, 64 << 20),
        &["node.labels.zone"],
    );
    tasks.extend(constrained(replicas("db", 5000), &["node.labels.zone!=d"]));
    let start = std::time::Instant::now();
    let out = schedule(&nodes, &[], &tasks);
    let took = start.elapsed();
    eprintln!("10000 tasks over 1000 nodes: {took:?}");
    assert_eq!(out.assigned.len(), 10_000);
    let mut web = BTreeMap::<&str, usize>::new();
    let mut db = BTreeMap::<&str, usize>::new();
    for d in &out.assigned {
        let m = if d.task_id.starts_with("web.") {
            &mut web
        } else {
            &mut db
        };
        *m.entry(d.node_id.as_str()).or_default() += 1;
    }
    // web: 1250 per zone over 250 nodes each; db: 5000 over the 750 nodes not in d.
    assert!(web.len() == 1000 && web.values().all(|&n| n == 5));
    assert!(db.len() == 750 && db.values().all(|&n| (6..=7).contains(&n)));
}

/// A small random cluster and a batch of tasks for the invariants below.
fn cluster() -> impl Strategy<Value = (Vec<Node>, Vec<Task>, Vec<Task>)> {
    let node = (
        prop_oneof![Just(None), Just(Some("a")), Just(Some("b"))],
        any::<bool>(),
        0u8..4,
        1u64..8,
    )
        .prop_map(|(zone, manager, avail, gib)| {
            let mut n = with_memory(node(""), gib << 30);
            if let Some(z) = zone {
                n.labels.insert("zone".into(), z.into());
            }
            if manager {
                n.role = NodeRole::Manager as i32;
            }
            match avail {
                0 => n.availability = Availability::Drain as i32,
                1 => n.state = NodeState::Down as i32,
                _ => {}
            }
            n
        });
    let group = (
        0usize..3,
        prop::sample::subsequence(
            vec![
                "node.labels.zone==a",
                "node.role!=manager",
                "node.labels.zone!=b",
            ],
            0..=2,
        ),
        0u64..3,
        0i64..3,
        1usize..8,
        any::<bool>(),
    );
    (
        prop::collection::vec(node, 0..8),
        prop::collection::vec(group, 1..4),
        prop::collection::vec((0usize..8, 0usize..3), 0..6),
    )
        .prop_map(|(mut nodes, groups, existing)| {
            for (i, n) in nodes.iter_mut().enumerate() {
                n.id = format!("n{i}");
            }
            let mut batch = Vec::new();
            for (g, (svc, constraints, max, gib, count, spreads)) in groups.into_iter().enumerate()
            {
                let service = format!("s{svc}");
                let tasks = reserve(
                    (0..count)
                        .map(|i| pending(&format!("{service}.{g}.{i}"), &service))
                        .collect(),
                    0,
                    gib * GIB,
                );
                batch.extend(place(
                    tasks,
                    Placement {
                        constraints: constraints.iter().map(|c| c.to_string()).collect(),
                        spread: if spreads {
                            vec!["node.labels.zone".into()]
                        } else {
                            vec![]
                        },
                        max_replicas_per_node: max,
                    },
                ));
            }
            let existing = existing
                .into_iter()
                .filter(|(n, _)| *n < nodes.len())
                .enumerate()
                .map(|(i, (n, svc))| {
                    running(&format!("x{i}"), &format!("s{svc}"), &format!("n{n}"))
                })
                .collect();
            (nodes, existing, batch)
        })
}

proptest! {
    #[test]
    fn decisions_respect_constraints_limits_and_capacity((nodes, existing, pending) in cluster()) {
        let out = schedule(&nodes, &existing, &pending);
        prop_assert_eq!(out.assigned.len() + out.unplaced.len(), pending.len());
        let by_id: BTreeMap<&str, &Node> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        let tasks: BTreeMap<&str, &Task> = pending.iter().map(|t| (t.id.as_str(), t)).collect();
        // (node, service) -> count, node -> memory used; start from the running tasks.
        let mut per_service: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut memory: BTreeMap<String, i64> = BTreeMap::new();
        for t in &existing {
            *per_service.entry((t.node_id.clone(), t.service_id.clone())).or_default() += 1;
        }
        // Every active task per node, for the least-loaded check below.
        let mut total: BTreeMap<String, u32> = BTreeMap::new();
        for t in &existing {
            *total.entry(t.node_id.clone()).or_default() += 1;
        }
        for d in &out.assigned {
            let node = by_id[d.node_id.as_str()];
            let task = tasks[d.task_id.as_str()];
            let placement = task.placement.clone().unwrap_or_default();
            // Without spread, the node taken is the least loaded of those that could
            // take the task then: fewest of its service's tasks, then fewest tasks.
            if placement.spread.is_empty() {
                let reserve = task.reservations.unwrap_or_default().memory_bytes;
                let could = |n: &Node| {
                    n.state() == NodeState::Ready
                        && n.availability() == Availability::Active
                        && placement.constraints.iter().all(|c| parse(c).unwrap().matches(n))
                        && (placement.max_replicas_per_node == 0
                            || per_service.get(&(n.id.clone(), task.service_id.clone())).copied().unwrap_or(0)
                                < placement.max_replicas_per_node)
                        && memory.get(&n.id).copied().unwrap_or(0) + reserve
                            <= n.description.as_ref().map_or(0, |d| d.memory_bytes) as i64
                };
                let load = |n: &Node| {
                    (
                        per_service.get(&(n.id.clone(), task.service_id.clone())).copied().unwrap_or(0),
                        total.get(&n.id).copied().unwrap_or(0),
                    )
                };
                let best = nodes.iter().filter(|n| could(n)).map(load).min();
                prop_assert_eq!(Some(load(node)), best, "task {} on {}", &task.id, &node.id);
            }
            *total.entry(d.node_id.clone()).or_default() += 1;
            prop_assert!(node.state() == NodeState::Ready && node.availability() == Availability::Active);
            for c in &placement.constraints {
                prop_assert!(parse(c).unwrap().matches(node), "{} on {:?}", c, node);
            }
            let n = per_service.entry((d.node_id.clone(), task.service_id.clone())).or_default();
            *n += 1;
            if placement.max_replicas_per_node > 0 {
                prop_assert!(*n <= placement.max_replicas_per_node);
            }
            let used = memory.entry(d.node_id.clone()).or_default();
            *used += task.reservations.unwrap_or_default().memory_bytes;
            let capacity = node.description.as_ref().map_or(0, |d| d.memory_bytes) as i64;
            prop_assert!(*used <= capacity);
        }
        for u in &out.unplaced {
            prop_assert!(u.reason.starts_with("no suitable node"), "{}", u.reason);
        }
    }
}

#[test]
fn two_groups_of_one_service_fill_the_least_loaded_nodes_in_turn() {
    // The same service in two groups (one with a constraint every node meets): each
    // placement of one group changes the load the other sees.
    let nodes = vec![node("n0"), node("n1"), node("n2")];
    let a = replicas("s", 3);
    let b = place(
        (0..3).map(|i| pending(&format!("b{i}"), "s")).collect(),
        Placement {
            constraints: vec!["node.role!=manager".into()],
            ..Default::default()
        },
    );
    let pending: Vec<Task> = a.into_iter().zip(b).flat_map(|(x, y)| [x, y]).collect();
    let out = schedule(&nodes, &[], &pending);
    let got: Vec<(&str, &str)> = out
        .assigned
        .iter()
        .map(|d| (d.task_id.as_str(), d.node_id.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("s.0", "n0"),
            ("b0", "n1"),
            ("s.1", "n2"),
            ("b1", "n0"),
            ("s.2", "n1"),
            ("b2", "n2")
        ]
    );
}

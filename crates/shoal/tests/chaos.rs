//! No acknowledged write is lost: 3 managers and a worker on real daemons, a client
//! writing service creates and updates through random managers while leaders are killed
//! and managers are cut off and healed. Afterwards every acknowledged write is there,
//! no write is half applied, and no service runs more tasks than its replica count.

mod common;

use common::*;
use shoal_testbed::wait_for;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const WRITES: usize = 520;
/// A fault (or its repair) every this many writes.
const FAULT_EVERY: usize = 20;

/// A small deterministic generator (the test prints its seed).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What the client did to one service: whether its create was acknowledged, and the
/// value of each update in order with whether it was acknowledged.
#[derive(Default)]
struct History {
    created: Option<bool>,
    updates: Vec<(usize, bool)>,
}

#[test]
fn no_acknowledged_write_is_lost_through_kills_and_partitions() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("chaos seed {seed}");
    let mut rng = Rng(seed);
    let mut tb = ha_cluster(3, 1);
    import_busybox(&tb, 3);
    // Services with tasks, on the worker: they must never run more than their replicas.
    sleep_service_on_workers(&tb, 0, "run1", 1);
    sleep_service_on_workers(&tb, 0, "run2", 2);
    sleeps_become(&tb, 3, 3);

    let mut history: HashMap<String, History> = HashMap::new();
    let mut names: Vec<String> = Vec::new();
    // The fault in force: a manager killed or cut off, and when it started.
    let mut down: Option<(usize, bool)> = None;
    let (mut acked, mut failed, mut faults) = (0, 0, 0);
    let started = Instant::now();
    for i in 0..WRITES {
        if i % FAULT_EVERY == FAULT_EVERY - 1 {
            match down.take() {
                Some((m, true)) => tb.start(m).unwrap(),
                Some((m, false)) => tb.heal(m).unwrap(),
                None => {
                    // Mostly the leader; sometimes a follower.
                    let via = rng.below(3);
                    let target = match tb.leader_index(via) {
                        Some(l) if rng.below(4) != 0 => l,
                        _ => rng.below(3),
                    };
                    let kill = rng.below(2) == 0;
                    if kill {
                        tb.kill(target).unwrap();
                    } else {
                        tb.cut(target).unwrap();
                    }
                    down = Some((target, kill));
                    faults += 1;
                }
            }
        }
        let via = rng.below(3);
        // A create when there is nothing to update yet, else mostly updates.
        let create = names.is_empty() || rng.below(3) == 0;
        let (name, args): (String, Vec<String>) = if create {
            let name = format!("c{i}");
            let args = [
                "service",
                "create",
                "-d",
                "--name",
                &name,
                "--replicas",
                "0",
                "--label",
                "a=0",
                "--label",
                "b=0",
                "busybox",
                "true",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            (name, args)
        } else {
            let name = names[rng.below(names.len())].clone();
            let (a, b) = (format!("a={i}"), format!("b={i}"));
            let args = [
                "service",
                "update",
                "-d",
                "--label-add",
                &a,
                "--label-add",
                &b,
                &name,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            (name, args)
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ok = tb.cli(via, &args).success;
        if ok {
            acked += 1;
        } else {
            failed += 1;
        }
        let h = history.entry(name.clone()).or_default();
        if create {
            h.created = Some(ok);
            // An unacknowledged create may exist or not: only acknowledged ones are
            // updated (an update of one that does not exist would fail anyway).
            if ok {
                names.push(name);
            }
        } else {
            h.updates.push((i, ok));
        }
    }
    match down.take() {
        Some((m, true)) => tb.start(m).unwrap(),
        Some((m, false)) => tb.heal(m).unwrap(),
        None => {}
    }
    eprintln!(
        "{WRITES} writes in {:?}: {acked} acknowledged, {failed} failed, {faults} faults",
        started.elapsed()
    );
    assert!(acked >= 200, "too few writes got through: {acked}");
    assert!(faults >= 10);

    // Everything converges: one leader every manager agrees on.
    wait_for(Duration::from_secs(30), || {
        let l = tb.leader_index(0)?;
        (tb.leader_index(1)? == l && tb.leader_index(2)? == l).then_some(())
    })
    .unwrap_or_else(|| panic!("the managers agree on a leader\n{}", tb.all_logs()));

    // Read the state through every manager: each has every acknowledged write.
    for via in 0..3 {
        let mut refs: Vec<String> = history
            .iter()
            .filter(|(_, h)| h.created.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        refs.sort();
        let ls = wait_for(Duration::from_secs(10), || {
            let out = tb.cli_ok(via, &["service", "ls"]).ok()?;
            names
                .iter()
                .all(|n| out.split_whitespace().any(|w| w == n))
                .then_some(out)
        })
        .unwrap_or_else(|| {
            panic!(
                "node{} lacks an acknowledged create\n{}",
                via + 1,
                tb.cli(via, &["service", "ls"]).stdout
            )
        });
        let present: Vec<String> = refs
            .iter()
            .filter(|n| ls.split_whitespace().any(|w| w == n.as_str()))
            .cloned()
            .collect();
        let mut args = vec!["service", "inspect"];
        args.extend(present.iter().map(String::as_str));
        let inspect: Vec<serde_json::Value> =
            serde_json::from_str(&tb.cli_ok(via, &args).unwrap()).unwrap();
        for s in &inspect {
            let name = s["Spec"]["Name"].as_str().unwrap().to_string();
            let labels = &s["Spec"]["Labels"];
            let (a, b) = (
                labels["a"].as_str().unwrap_or("?").to_string(),
                labels["b"].as_str().unwrap_or("?").to_string(),
            );
            // Nothing half applied: both labels of one update, or neither.
            assert_eq!(a, b, "service {name} on node{}: {labels}", via + 1);
            let h = &history[&name];
            // The value is the last acknowledged update's, or one of a later update
            // that failed on the client's side but was committed.
            let last_acked = h
                .updates
                .iter()
                .rposition(|(_, ok)| *ok)
                .map(|p| (p, h.updates[p].0));
            let allowed: Vec<String> = match last_acked {
                Some((p, v)) => std::iter::once(v)
                    .chain(h.updates[p + 1..].iter().map(|(v, _)| *v))
                    .map(|v| v.to_string())
                    .collect(),
                None => std::iter::once("0".to_string())
                    .chain(h.updates.iter().map(|(v, _)| v.to_string()))
                    .collect(),
            };
            assert!(
                allowed.contains(&a),
                "service {name} on node{} has a={a}, expected one of {allowed:?}",
                via + 1
            );
        }
    }

    // The services with tasks converge to their replica counts, never more.
    wait_for(Duration::from_secs(30), || {
        let out = tb.cli_ok(0, &["service", "ls"]).ok()?;
        (out.contains("1/1") && out.contains("2/2")).then_some(())
    })
    .unwrap_or_else(|| panic!("run1 and run2 converge\n{}", tb.all_logs()));
    sleeps_become(&tb, 3, 3);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(tb.processes_named(3, "sleep"), 3, "no extra task appeared");
}

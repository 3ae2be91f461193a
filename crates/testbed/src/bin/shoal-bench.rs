//! `shoal-bench`: benchmarks on real daemons in network namespaces (issues #2 to #5).
//!
//! Measures `shoal init` wall time, `shoal join` until the manager lists the node Ready,
//! and the idle memory of manager and worker daemons, then writes BENCHMARKS.md.
//! Run with `scripts/bench.sh` (as root). `BENCH_ONLY=containers` runs only the container
//! start measurement and prints its table without touching BENCHMARKS.md.

#[path = "shoal-bench/discovery.rs"]
mod discovery;
#[path = "shoal-bench/identity.rs"]
mod identity;
#[path = "shoal-bench/secrets.rs"]
mod secrets;
#[path = "shoal-bench/stacks.rs"]
mod stacks;
#[path = "shoal-bench/users.rs"]
mod users;

use anyhow::{bail, Context, Result};
use shoal_testbed::{wait_for, Testbed};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn stats(mut v: Vec<Duration>) -> (f64, f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |q: f64| ms(v[((v.len() as f64 - 1.0) * q).round() as usize]);
    (pick(0.0), pick(0.5), pick(0.9), pick(1.0))
}

fn kib(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = kib(std::process::id(), "../meminfo", "MemTotal:") / 1024 / 1024;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {mem} GiB RAM, Linux {}",
        kernel.trim()
    )
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let shoal = PathBuf::from(
        args.get(1)
            .map(String::as_str)
            .unwrap_or("target/release/shoal"),
    );
    let out = PathBuf::from(args.get(2).map(String::as_str).unwrap_or("BENCHMARKS.md"));
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    if !shoal.exists() {
        bail!(
            "{} not found: build it with 'cargo build --release -p shoal'",
            shoal.display()
        );
    }

    if std::env::var("BENCH_ONLY").as_deref() == Ok("containers") {
        print!("{}", bench_containers(&shoal, runs_containers())?);
        return Ok(());
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("failover") {
        print!("{}", bench_failover(&shoal)?);
        return Ok(());
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("rolling") {
        print!("{}", bench_rolling(&shoal)?);
        return Ok(());
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("heartbeats") {
        print!("{}", bench_heartbeats(&shoal)?);
        return Ok(());
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("idle") {
        print!("{}", bench_idle(&shoal)?);
        return Ok(());
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("netns") {
        print!("{}", bench_netns(runs_containers())?);
        return Ok(());
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("overlay") {
        print!("{}", bench_overlay(&shoal, runs_containers())?);
        return Ok(());
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("throughput") {
        print!("{}", bench_throughput(&shoal)?);
        return Ok(());
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("secrets") {
        print!("{}", secrets::bench(&shoal, runs_containers())?);
        return Ok(());
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("discovery") {
        print!("{}", discovery::bench(&shoal)?);
        return Ok(());
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("identity") {
        print!("{}", identity::bench(&shoal, runs_containers())?);
        return Ok(());
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("users") {
        print!("{}", users::bench(&shoal, runs)?);
        return Ok(());
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("stacks") {
        print!("{}", stacks::bench(&shoal)?);
        return Ok(());
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("ha") {
        print!("{}", bench_ha(&shoal)?);
        return Ok(());
    }

    // 1. init: a fresh cluster each time (leave --force wipes the state between runs).
    let tb = Testbed::with_nodes(&shoal, 1)?;
    let mut init = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        tb.init(0, &[])?;
        init.push(t.elapsed());
        tb.cli_ok(0, &["leave", "--force"])?;
    }
    drop(tb);

    // 2. join until Ready on the manager.
    let tb = Testbed::with_nodes(&shoal, 2)?;
    tb.init(0, &[])?;
    let token = tb.cli_ok(0, &["join-token", "-q", "worker"])?;
    let mut join = Vec::new();
    let mut join_cli = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        tb.cli_ok(1, &["join", "--token", token.trim(), &tb.nodes[0].addr()])?;
        join_cli.push(t.elapsed());
        let info: serde_json::Value =
            serde_json::from_str(&tb.cli_ok(1, &["info", "--format", "json"])?)?;
        let id = info["NodeID"].as_str().context("node id")?.to_string();
        wait_for(Duration::from_secs(10), || {
            let o = tb.cli(0, &["node", "inspect", &id]);
            o.stdout.contains("\"State\": \"ready\"").then_some(())
        })
        .context("joined node never Ready")?;
        join.push(t.elapsed());
        tb.cli_ok(1, &["leave"])?;
    }
    drop(tb);

    // 3. idle memory of a 3-node cluster.
    let tb = Testbed::with_nodes(&shoal, 3)?;
    tb.init(0, &[])?;
    tb.join_worker(1, 0)?;
    tb.join_worker(2, 0)?;
    std::thread::sleep(Duration::from_secs(15));
    let mut mem = Vec::new();
    for (i, n) in tb.nodes.iter().enumerate() {
        let pid = n.pid().context("daemon pid")?;
        let role = if i == 0 { "manager" } else { "worker" };
        mem.push((
            role,
            kib(pid, "status", "VmRSS:"),
            kib(pid, "smaps_rollup", "Pss:"),
        ));
    }
    drop(tb);

    let containers = bench_containers(&shoal, runs_containers())?;
    let services = bench_services(&shoal)?;
    let rotation = bench_rotation(&shoal)?;
    let failover = bench_failover(&shoal)?;
    let ha = bench_ha(&shoal)?;
    let idle = bench_idle(&shoal)?;

    let (i0, i50, i90, i100) = stats(init);
    let (j0, j50, j90, j100) = stats(join);
    let (c0, c50, c90, c100) = stats(join_cli);
    let mut md = String::new();
    md.push_str("# Benchmarks\n\n");
    md.push_str(&format!(
        "Machine: {}. Written by `scripts/bench.sh` (as root; `BENCH_RUNS` sets the runs, default 30) on {}.\n\
         Every figure is measured on real `shoal daemon` processes (release build), each in its own\n\
         network namespace, driven through the `shoal` CLI like a user would (so each figure includes\n\
         starting the CLI process and its unix-socket call).\n\n",
        machine(),
        std::process::Command::new("date").arg("-u").arg("+%Y-%m-%d").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
    ));
    md.push_str("## Issue #2: bootstrap\n\n");
    md.push_str(&format!("{runs} runs each; milliseconds.\n\n"));
    md.push_str("| measure | min | median | p90 | max | target | swarm mode (issue's figure, same machine class) |\n|---|---|---|---|---|---|---|\n");
    md.push_str(&format!(
        "| `shoal init` wall time | {i0:.1} | {i50:.1} | {i90:.1} | {i100:.1} | < 150 | ~700 |\n"
    ));
    md.push_str(&format!("| `shoal join` until the manager lists the node Ready | {j0:.1} | {j50:.1} | {j90:.1} | {j100:.1} | < 100 | ~300 |\n"));
    md.push_str(&format!("| (of which the `shoal join` command itself) | {c0:.1} | {c50:.1} | {c90:.1} | {c100:.1} | | |\n\n"));
    md.push_str("Idle memory of a 3-node cluster, 15 s after it formed (target < 20 MB RSS; dockerd + containerd use ~250 MB idle):\n\n");
    md.push_str("| daemon | RSS (MiB) | PSS (MiB) |\n|---|---|---|\n");
    for (role, rss, pss) in &mem {
        md.push_str(&format!(
            "| {role} | {:.1} | {:.1} |\n",
            *rss as f64 / 1024.0,
            *pss as f64 / 1024.0
        ));
    }
    md.push_str("\nThe \"join until Ready\" figure stops at the first `node inspect` on the manager that shows the\nnode ready; a join already marks the node Ready (its first heartbeat confirms the certificate)\nbefore the command returns.\n");
    md.push_str(&containers);
    md.push_str(&services);
    md.push_str(&rotation);
    md.push_str(&failover);
    md.push_str(&ha);
    md.push_str(&idle);
    std::fs::write(&out, &md)?;
    print!("{md}");
    Ok(())
}

/// PSS (kB) summed over processes whose name (comm) or command line contains `needle`.
pub fn pss_of(needle: &str) -> (usize, u64) {
    let mut n = 0;
    let mut total = 0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(needle) || comm.trim() == needle {
                n += 1;
                total += kib(pid, "smaps_rollup", "Pss:");
            }
        }
    }
    (n, total)
}

fn runs_containers() -> usize {
    std::env::var("BENCH_CONTAINERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

/// Imports the busybox test image on node `i`.
fn import_busybox(tb: &Testbed, i: usize) -> Result<()> {
    let tar = shoal_testbed::busybox_rootfs_tar(tb.dir())?;
    let tar = tar.to_str().context("path")?;
    tb.cli_ok(i, &["image", "import", tar, "busybox:latest"])
        .map(|_| ())
}

/// The agent's start figures (assignment received -> RUNNING reported), milliseconds,
/// from node `i`'s log lines that `keep` takes.
fn start_figures(tb: &Testbed, i: usize, keep: impl Fn(&str) -> bool) -> Vec<f64> {
    tb.log(i)
        .lines()
        .filter(|l| l.contains("container running") && keep(l))
        .filter_map(|l| {
            l.split("startup_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The start figures (milliseconds, the agent's own: assignment received -> RUNNING
/// reported) of `n` tasks of each of two services on node 0, started one at a time,
/// alternating between them (`service scale` by one), after a warm-up task.
fn alternate_starts(tb: &Testbed, a: &str, b: &str, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    tb.cli_ok(0, &["task", "run", "busybox", "true"])?;
    for k in 1..=n {
        for svc in [a, b] {
            tb.cli_ok(0, &["service", "scale", &format!("{svc}={k}")])?;
        }
    }
    let of = |svc: &str| -> Result<Vec<f64>> {
        let ids: Vec<String> = tb
            .cli_ok(0, &["service", "ps", "-q", svc])?
            .lines()
            .map(|l| l.trim().to_string())
            .collect();
        Ok(start_figures(tb, 0, |l| {
            ids.iter().any(|id| l.contains(id.as_str()))
        }))
    };
    let (fa, fb) = (of(a)?, of(b)?);
    anyhow::ensure!(
        fa.len() == n && fb.len() == n,
        "{} and {} start figures, not {n}",
        fa.len(),
        fb.len()
    );
    Ok((fa, fb))
}

fn p(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() as f64 - 1.0) * q).round() as usize]
}

/// Issue #3: start latency of containers on one node, and the node's memory with them
/// all running.
/// What a task's network namespace costs: `n` namespaces on the bridge made one after
/// another (each kept, as a node keeps its tasks'), then removed, in a scratch network
/// namespace. The shoal agent's own code (`shoal_agent::network`), no daemon.
fn bench_netns(n: usize) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let (attach, release) = std::thread::scope(|s| {
        s.spawn(|| -> Result<(Vec<Duration>, Vec<Duration>)> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            use shoal_agent::network::EtcOptions;
            let net = shoal_agent::network::Networks::new(dir.path());
            // The first one sets the bridge and its NAT rule up.
            net.attach("warm", &EtcOptions::named("warm"), &[], true)
                .map_err(anyhow::Error::msg)?;
            let ids: Vec<String> = (0..n).map(|i| format!("task{i}")).collect();
            let (mut a, mut r) = (Vec::new(), Vec::new());
            for id in &ids {
                let t = Instant::now();
                net.attach(id, &EtcOptions::named(id), &[], true)
                    .map_err(anyhow::Error::msg)?;
                a.push(t.elapsed());
            }
            for id in &ids {
                let t = Instant::now();
                net.release(id).map_err(anyhow::Error::msg)?;
                r.push(t.elapsed());
            }
            net.release("warm").map_err(anyhow::Error::msg)?;
            Ok((a, r))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the benchmark thread panicked"))?
    })?;
    let (amin, amed, a90, amax) = stats(attach);
    let (rmin, rmed, r90, rmax) = stats(release);
    Ok(format!(
        "\n{n} task network namespaces on the node bridge (namespace, veth into the bridge, \
         address, routes, /etc files), made one after another and kept, then removed; \
         milliseconds:\n\n\
         | step | min | median | p90 | max |\n|---|---|---|---|---|\n\
         | attach | {amin:.2} | {amed:.2} | {a90:.2} | {amax:.2} |\n\
         | release | {rmin:.2} | {rmed:.2} | {r90:.2} | {rmax:.2} |\n\n\
         Rerun: `BENCH_ONLY=netns target/release/shoal-bench target/release/shoal`.\n"
    ))
}

fn bench_containers(shoal: &std::path::Path, n: usize) -> Result<String> {
    let tb = Testbed::with_nodes(shoal, 1)?;
    tb.init(0, &[])?;
    import_busybox(&tb, 0)?;
    // One container first, so the image's layer is unpacked and caches are warm.
    tb.cli_ok(0, &["task", "run", "--monitor", "0s", "busybox", "true"])?;
    let mut e2e = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let mut run = vec!["task", "run", "-d"];
        if std::env::var("BENCH_NO_INIT").is_ok() {
            run.push("--no-init");
        }
        // `BENCH_NETWORK=host`: no namespace of its own, to compare the start path.
        let network = std::env::var("BENCH_NETWORK").unwrap_or_default();
        if !network.is_empty() {
            run.extend(["--network", network.as_str()]);
        }
        run.extend(["busybox", "sleep", "3600"]);
        let out = tb.cli_ok(0, &run)?;
        let id = out.trim().to_string();
        wait_for(Duration::from_secs(30), || {
            let o = tb.cli(0, &["task", "inspect", &id]);
            o.stdout.contains("\"State\": \"running\"").then_some(())
        })
        .context("container never running")?;
        e2e.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    // The agent's own figure: assignment received -> RUNNING reported.
    let agent = start_figures(&tb, 0, |_| true);
    std::thread::sleep(Duration::from_secs(5));
    let daemon_pid = tb.nodes[0].pid().context("pid")?;
    let daemon_pss = kib(daemon_pid, "smaps_rollup", "Pss:");
    let daemon_rss = kib(daemon_pid, "status", "VmRSS:");
    let (forked, forked_pss) = pss_of("shoal-supervise");
    let (execd, execd_pss) = pss_of("supervise-container");
    let (zyg, zyg_pss) = pss_of("shoal-zygote");
    let (sups, sup_pss) = (forked + execd + zyg, forked_pss + execd_pss + zyg_pss);
    let running = agent.len().min(n + 1);
    drop(tb);
    if agent.is_empty() {
        bail!("no start figures in the daemon log");
    }
    let mut md = String::new();
    md.push_str("\n## Issue #3: containers\n\n");
    md.push_str(&format!(
        "{n} `busybox sleep 3600` containers started one after another on a one-node cluster \
         (runc {}, cgroup {}), milliseconds:\n\n",
        std::process::Command::new("runc")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim_start_matches("runc version ").to_string()))
            .unwrap_or_default(),
        if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            "v2"
        } else {
            "v1/hybrid"
        },
    ));
    md.push_str("| measure | median | p99 | max | target |\n|---|---|---|---|---|\n");
    md.push_str(&format!(
        "| assignment received -> RUNNING reported (agent) | {:.1} | {:.1} | {:.1} | median < 100 |\n",
        p(&agent, 0.5), p(&agent, 0.99), p(&agent, 1.0)
    ));
    md.push_str(&format!(
        "| `shoal task run -d` -> manager shows RUNNING (end to end, CLI polling every ~20 ms) | {:.1} | {:.1} | {:.1} | |\n\n",
        p(&e2e, 0.5), p(&e2e, 0.99), p(&e2e, 1.0)
    ));
    md.push_str(&format!(
        "Memory of the node with {running} containers running (target < 60 MB for daemon + supervisors; Docker's \
         dockerd + containerd + shims take ~750 MB PSS for 200 tasks):\n\n\
         | part | processes | PSS (MiB) |\n|---|---|---|\n\
         | daemon (manager + agent) | 1 | {:.1} (RSS {:.1}) |\n\
         | supervisors (+ the zygote that forks them) | {sups} | {:.1} |\n\
         | **daemon + supervisors** | {} | **{:.1}** |\n",
        daemon_pss as f64 / 1024.0,
        daemon_rss as f64 / 1024.0,
        sup_pss as f64 / 1024.0,
        sups + 1,
        (daemon_pss + sup_pss) as f64 / 1024.0,
    ));
    Ok(md)
}

/// Issue #12: what an overlay network adds to a task's start (its leg on the overlay,
/// its DNS server and its service table, beside the bridge leg every task has), and
/// the memory of the userspace WireGuard helper. Tasks on node1 of a 2-node cluster,
/// alternately on an attachable overlay network and on the node's bridge only.
fn bench_overlay(shoal: &std::path::Path, n: usize) -> Result<String> {
    let tb = Testbed::with_nodes(shoal, 2)?;
    tb.init(0, &[])?;
    tb.join_worker(1, 0)?;
    import_busybox(&tb, 0)?;
    tb.cli_ok(0, &["network", "create", "--attachable", "benchnet"])?;
    // Warm: the image unpacked, the overlay's namespace made, the engine running.
    tb.cli_ok(
        0,
        &[
            "task",
            "run",
            "--node",
            "node1",
            "--network",
            "benchnet",
            "busybox",
            "true",
        ],
    )?;
    tb.cli_ok(0, &["task", "run", "--node", "node1", "busybox", "true"])?;
    let (mut overlay, mut bridge) = (Vec::new(), Vec::new());
    for i in 0..2 * n {
        let on_overlay = i % 2 == 0;
        let mut run = vec!["task", "run", "-d", "--node", "node1"];
        if on_overlay {
            run.extend(["--network", "benchnet"]);
        }
        run.extend(["busybox", "sleep", "3600"]);
        let id = tb.cli_ok(0, &run)?.trim().to_string();
        wait_for(Duration::from_secs(30), || {
            let o = tb.cli(0, &["task", "inspect", &id]);
            o.stdout.contains("\"State\": \"running\"").then_some(())
        })
        .context("task never running")?;
        let ms = *start_figures(&tb, 0, |l| l.contains(&id))
            .first()
            .context("no start figure")?;
        if on_overlay {
            overlay.push(ms);
        } else {
            bridge.push(ms);
        }
    }
    let helpers: Vec<u64> = (0..2)
        .filter_map(|i| {
            let dir = tb.nodes[i].state_dir.display().to_string();
            std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                (cmd.contains(" dataplane ") && cmd.contains(&dir))
                    .then(|| kib(pid, "status", "VmRSS:"))
            })
        })
        .collect();
    drop(tb);
    let mut md = String::new();
    md.push_str("\n## Issue #12: overlay networks on the start path\n\n");
    md.push_str(&format!(
        "{n} + {n} `busybox sleep 3600` tasks (`task run --node node1`) on node1 of a 2-node cluster, \
         alternately on an attachable overlay network and on the node's bridge only; the agent's \
         figure (assignment received -> RUNNING reported), milliseconds:\n\n\
         | tasks | median | p99 | max |\n|---|---|---|---|\n\
         | bridge only | {:.1} | {:.1} | {:.1} |\n\
         | overlay network (+ bridge leg, DNS server, service table) | {:.1} | {:.1} | {:.1} |\n\
         | **added by the overlay (medians)** | **{:.1}** | | target < 30 |\n\n",
        p(&bridge, 0.5), p(&bridge, 0.99), p(&bridge, 1.0),
        p(&overlay, 0.5), p(&overlay, 0.99), p(&overlay, 1.0),
        p(&overlay, 0.5) - p(&bridge, 0.5),
    ));
    md.push_str(&format!(
        "RSS of the userspace WireGuard helper (`shoal dataplane`), per node: {} \
         (target < 15 MB).\n\n\
         Rerun: `BENCH_ONLY=overlay BENCH_CONTAINERS={n} target/release/shoal-bench target/release/shoal`.\n",
        helpers
            .iter()
            .map(|k| format!("{:.1} MiB", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(md)
}

/// Issue #12: TCP throughput between containers on two nodes, measured by iperf3 (in an
/// image built from Debian's packages), over the encrypted overlay (VXLAN in the
/// userspace WireGuard engine), over plain VXLAN between the nodes (made by hand, no
/// encryption: what the encryption costs) and over the bare veth underlay
/// (`--network host`), in one run.
fn bench_throughput(shoal: &std::path::Path) -> Result<String> {
    const SECS: u32 = 10;
    let tb = Testbed::with_nodes(shoal, 2)?;
    tb.init(0, &[])?;
    tb.join_worker(1, 0)?;
    let tar = shoal_testbed::iperf3_rootfs_tar(tb.dir())?;
    for i in 0..2 {
        let tar = tar.to_str().context("path")?;
        tb.cli_ok(i, &["image", "import", tar, "iperf3:bench"])?;
    }
    wait_for(Duration::from_secs(30), || {
        let o = tb.cli(0, &["node", "inspect", "node2"]);
        o.stdout.contains("\"Engine\": \"userspace\"").then_some(())
    })
    .context("node2's WireGuard engine never ran")?;
    let engine = tb.cli_ok(0, &["node", "inspect", "node1"])?;
    tb.cli_ok(0, &["network", "create", "benchnet"])?;
    // Plain VXLAN between the nodes' own namespaces, on another port than the guarded one.
    for (i, other) in [(0usize, 1usize), (1, 0)] {
        let remote = tb.nodes[other].ip.clone();
        let me = format!("192.168.251.{}/24", i + 1);
        tb.exec_in(
            i,
            &[
                "ip", "link", "add", "vxbench", "type", "vxlan", "id", "99", "remote", &remote,
                "dstport", "4790", "dev", "eth0",
            ],
        )?;
        tb.exec_in(i, &["ip", "addr", "add", &me, "dev", "vxbench"])?;
        tb.exec_in(i, &["ip", "link", "set", "vxbench", "up"])?;
    }
    // iperf3's receiver line: "[  5]   0.00-10.00  sec  1.05 GBytes   0.90 Gbits/sec  receiver"
    let rate = |logs: &str| -> Result<f64> {
        let line = logs
            .lines()
            .find(|l| l.trim_end().ends_with("receiver"))
            .with_context(|| format!("no receiver line in iperf3's output: {logs:?}"))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let unit = words
            .iter()
            .position(|w| w.ends_with("bits/sec"))
            .context("iperf3's rate")?;
        let n: f64 = words[unit - 1].parse()?;
        Ok(match words[unit] {
            "Gbits/sec" => n,
            "Mbits/sec" => n / 1e3,
            "Kbits/sec" => n / 1e6,
            other => bail!("iperf3's unit {other}"),
        })
    };
    let mut rows = Vec::new();
    for (name, net, to) in [
        (
            "encrypted overlay (VXLAN in userspace WireGuard)",
            "benchnet",
            "sink-0".to_string(),
        ),
        (
            "plain VXLAN (no encryption)",
            "host",
            "192.168.251.1".to_string(),
        ),
        ("bare veth underlay", "host", tb.nodes[0].ip.clone()),
    ] {
        let svc = format!("sink-{}", rows.len());
        tb.cli_ok(
            0,
            &[
                "service",
                "create",
                "--name",
                &svc,
                "--network",
                net,
                "--constraint",
                "node.hostname==node1",
                "iperf3:bench",
                "iperf3",
                "-s",
            ],
        )?;
        let job = format!("send-{}", rows.len());
        let secs = SECS.to_string();
        tb.cli_ok(
            0,
            &[
                "service",
                "create",
                "--name",
                &job,
                "--mode",
                "replicated-job",
                "--network",
                net,
                "--constraint",
                "node.hostname==node2",
                "iperf3:bench",
                "iperf3",
                "-c",
                &to,
                "-t",
                &secs,
                "-f",
                "g",
            ],
        )?;
        let out = tb.cli(0, &["service", "logs", &job]);
        let logs = format!("{}{}", out.stdout, out.stderr);
        rows.push((name, rate(&logs)?));
        tb.cli_ok(0, &["service", "rm", &svc, &job])?;
    }
    drop(tb);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut md = String::from("\n## Issue #12: throughput between containers on two nodes\n\n");
    md.push_str(&format!(
        "iperf3 3.12 (an image made from Debian's packages: `apt-get download iperf3 libiperf0 \
         libsctp1 libssl3 libc6`, unpacked, `image import`), one TCP stream for {SECS} s from a \
         container on node2 to one on node1, {cores} cores shared by both nodes, the engines \
         and iperf3, in one run (engine on node1: {}):\n\n\
         | path | Gbit/s (receiver) |\n|---|---|\n",
        if engine.contains("\"Engine\": \"kernel\"") {
            "kernel"
        } else {
            "userspace"
        }
    ));
    for (name, gbps) in &rows {
        md.push_str(&format!("| {name} | {gbps:.2} |\n"));
    }
    md.push_str(
        "\nTarget for the encrypted overlay with the userspace engine: >= 0.35 Gbit/s here. \
         Rerun: `BENCH_ONLY=throughput target/release/shoal-bench target/release/shoal`.\n",
    );
    Ok(md)
}

/// The `sleep` processes in the testbed's namespaces. One pass over /proc reading each
/// process's name, and the namespace only of the sleeps (`ip netns pids` per node reads
/// every process's namespace link). Even so a pass costs the nodes it measures: polled
/// during a scale it took about 7 % of the machine, so [`wait_sleeps`] reads the node
/// cgroups first.
fn sleeps(tb: &Testbed) -> usize {
    use std::os::unix::fs::MetadataExt;
    let nets: std::collections::HashSet<u64> = tb
        .nodes
        .iter()
        .filter_map(|n| std::fs::metadata(format!("/run/netns/{}", n.netns)).ok())
        .map(|m| m.ino())
        .collect();
    let cgroups = format!("/{}/", shoal_testbed::cgroup_root(&tb.tag));
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| {
            std::fs::read(e.path().join("comm")).is_ok_and(|c| c.trim_ascii_end() == b"sleep")
        })
        .filter(|e| {
            // On the node's network, or in a container cgroup of the testbed's nodes.
            std::fs::metadata(e.path().join("ns/net")).is_ok_and(|m| nets.contains(&m.ino()))
                || std::fs::read_to_string(e.path().join("cgroup"))
                    .is_ok_and(|c| c.contains(&cgroups))
        })
        .count()
}

/// The number of processes in the containers of the testbed's nodes, from each node's
/// cgroup (`pids.current` counts a whole subtree): three small reads. None where the
/// pids controller is not there.
fn container_processes(tb: &Testbed) -> Option<usize> {
    (0..tb.nodes.len())
        .map(|i| {
            std::fs::read_to_string(
                shoal_testbed::pids_cgroup(&tb.node_cgroup(i)).join("pids.current"),
            )
            .ok()?
            .trim()
            .parse::<usize>()
            .ok()
        })
        .sum()
}

#[derive(Clone, Copy)]
enum Want {
    AtLeast(usize),
    Zero,
}

/// Processes in the cgroup of a running bench task: the init and `sleep` (every bench
/// service runs with the default init).
const PROCESSES_PER_TASK: usize = 2;

/// Waits until there are at least `n` (`AtLeast`) or no (`Zero`) sleeps in the testbed.
/// Every running task is two processes in a container cgroup, so while the cgroups hold
/// fewer than twice as many processes as wanted sleeps, /proc is not read at all.
fn wait_sleeps(tb: &Testbed, what: &str, want: Want) -> Result<()> {
    wait_for(Duration::from_secs(120), || {
        let procs = container_processes(tb);
        let done = match want {
            Want::AtLeast(n) if procs.is_some_and(|p| p < n * PROCESSES_PER_TASK) => false,
            Want::AtLeast(n) => sleeps(tb) >= n,
            Want::Zero if procs == Some(0) => true,
            Want::Zero => sleeps(tb) == 0,
        };
        done.then_some(())
    })
    .with_context(|| format!("{what}: never happened in 120 s"))
}

/// A 3-node cluster (1 manager, 2 workers) with busybox on every node.
fn services_cluster(shoal: &std::path::Path, heartbeat: &str) -> Result<Testbed> {
    let tb = Testbed::with_nodes(shoal, 3)?;
    tb.init(0, &["--dispatcher-heartbeat", heartbeat])?;
    tb.join_worker(1, 0)?;
    tb.join_worker(2, 0)?;
    for i in 0..3 {
        import_busybox(&tb, i)?;
    }
    Ok(tb)
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// Issue #11: a rolling update of 200 replicas (parallelism 10, delay 0, monitor 0) and
/// `service rm` of 200 `busybox sleep` tasks, each under the default init, on
/// 1 manager + 2 workers with default settings.
fn bench_rolling(shoal: &std::path::Path) -> Result<String> {
    let tb = services_cluster(shoal, "1s")?;
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "roll",
            "--replicas",
            "200",
            "--update-monitor",
            "0s",
            "busybox",
            "sleep",
            "3600000",
        ],
    )?;
    let update = timed(|| {
        tb.cli_ok(
            0,
            &[
                "service",
                "update",
                "--update-parallelism",
                "10",
                "--update-delay",
                "0s",
                "--update-monitor",
                "0s",
                "--env-add",
                "V=2",
                "roll",
            ],
        )
        .map(|_| ())
    })?;
    let running = sleeps(&tb);
    let rm = timed(|| {
        tb.cli_ok(0, &["service", "rm", "roll"])?;
        wait_sleeps(&tb, "all containers gone", Want::Zero)
    })?;
    drop(tb);
    Ok(format!(
        "\n## Issue #11: a rolling update and a removal of 200 replicas\n\n\
         1 manager + 2 workers on this one host (real daemons, default settings), 200 `busybox sleep` \
         tasks under the default init:\n\n\
         | measure | seconds | target | swarm mode (issue's figure) |\n|---|---|---|---|\n\
         | `service update --update-parallelism 10 --update-delay 0s --update-monitor 0s --env-add V=2` until every task is replaced and the command returns ({running} containers after) | {update:.2} | < 20 | 78-88 with `--init`, ~264 without |\n\
         | `service rm` of 200 until every container is gone (SIGTERM reaches `sleep` through the init; no grace period waited) | {rm:.2} | < 3 | |\n\n\
         Rerun: `BENCH_ONLY=rolling target/release/shoal-bench target/release/shoal`.\n"
    ))
}

/// CPU time (user + system, clock ticks) of a process, with its name (comm).
fn cpu_ticks(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    // Fields after the name: state is field 3, utime 14 and stime 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// Issue #11: `service scale` 50 -> 200 on 1 manager + 2 workers, then the CPU the
/// nodes' shoal processes (daemons, supervisors) use while the 200 containers idle.
fn bench_idle(shoal: &std::path::Path) -> Result<String> {
    let secs: u64 = std::env::var("BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let tb = services_cluster(shoal, "5s")?;
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "idle",
            "--replicas",
            "50",
            "busybox",
            "sleep",
            "3600000",
        ],
    )?;
    let scale = timed(|| {
        tb.cli_ok(0, &["service", "scale", "-d", "idle=200"])?;
        wait_sleeps(&tb, "200 containers running", Want::AtLeast(200))
    })?;
    std::thread::sleep(Duration::from_secs(10));
    let ticks = |tb: &Testbed| -> Vec<(usize, u32, String, u64)> {
        (0..tb.nodes.len())
            .flat_map(|i| {
                tb.pids(i)
                    .into_iter()
                    .filter_map(move |p| cpu_ticks(p).map(|(c, t)| (i, p, c, t)))
            })
            .collect()
    };
    let before = ticks(&tb);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let after = ticks(&tb);
    let wall = t.elapsed().as_secs_f64();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    // Per node: (daemon ticks, supervisor ticks, supervisors, containers).
    let mut per = vec![(0u64, 0u64, 0usize, 0usize); tb.nodes.len()];
    for (i, pid, comm, t1) in &after {
        let t0 = before
            .iter()
            .find(|(j, p, _, _)| j == i && p == pid)
            .map(|x| x.3)
            .unwrap_or(*t1);
        let used = t1 - t0;
        let e = &mut per[*i];
        match comm.as_str() {
            "shoal" => e.0 += used,
            "shoal-supervise" | "shoal-zygote" => {
                e.1 += used;
                e.2 += 1
            }
            "sleep" => e.3 += 1,
            _ => {}
        }
    }
    drop(tb);
    let pct = |t: u64| t as f64 / hz / wall * 100.0;
    let mut md = String::new();
    md.push_str("\n## Issue #11: a quiet agent, and scaling 50 -> 200\n\n");
    md.push_str(&format!(
        "1 manager + 2 workers (real daemons, each in its own network namespace, default settings), \
         `busybox sleep` tasks. `service scale idle=200` (50 -> 200) until 200 containers run: \
         **{scale:.2} s** (target < 3.5 s; swarm mode 18.6 s in the issue's run).\n\n\
         Then, after 10 s of quiet, the CPU used over {wall:.0} s by each node's shoal processes \
         (user + system time from /proc, percent of one core):\n\n\
         | node | containers | daemon | supervisors (+ zygote) | total |\n|---|---|---|---|---|\n"
    ));
    let mut sum = 0;
    for (i, (d, s, n, c)) in per.iter().enumerate() {
        sum += d + s;
        md.push_str(&format!(
            "| node{} | {c} | {:.2} % | {:.2} % ({n} processes) | {:.2} % |\n",
            i + 1,
            pct(*d),
            pct(*s),
            pct(d + s)
        ));
    }
    md.push_str(&format!(
        "| **all** | | | | **{:.2} %** |\n\nTarget: < 1 % of one core per node. \
         Rerun: `BENCH_ONLY=idle target/release/shoal-bench target/release/shoal` \
         (`BENCH_IDLE_SECS` sets the window).\n",
        pct(sum)
    ));
    Ok(md)
}

/// A channel to `addr` over TLS (`cfg`), its TCP connection from local address `local`:
/// a manager takes at most 64 connections from one address, so the hollow fleet spreads
/// over many.
async fn channel_from(
    local: std::net::IpAddr,
    addr: &str,
    cfg: std::sync::Arc<rustls::ClientConfig>,
) -> Result<tonic::transport::Channel> {
    let target: std::net::SocketAddr = addr.parse()?;
    let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let cfg = cfg.clone();
        async move {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(std::net::SocketAddr::new(local, 0))?;
            let tcp = sock.connect(target).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from(shoal_pki::MANAGER_SERVER_NAME)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    // The agent's own endpoint settings (HTTP/2 keepalive pings every 10 s).
    Ok(shoal_agent::connect::endpoint(addr)?
        .connect_with_connector(connector)
        .await?)
}

/// What the hollow fleet has seen, in all: tasks assigned to its nodes now, and
/// RUNNING reports the managers took.
struct Fleet {
    joined: std::sync::atomic::AtomicUsize,
    assigned: std::sync::atomic::AtomicUsize,
    reported: std::sync::atomic::AtomicUsize,
    /// While false, hollow nodes hold their RUNNING reports (so the bench can measure
    /// the manager's cost of assignments and of status reports apart).
    report: tokio::sync::watch::Sender<bool>,
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            joined: Default::default(),
            assigned: Default::default(),
            reported: Default::default(),
            report: tokio::sync::watch::Sender::new(true),
        }
    }
}

/// One hollow node: joins with the worker token (a real certificate from the CA), then
/// keeps a session open and heartbeats at the period the manager gives, over mTLS,
/// like an agent with no tasks. Returns once `stop` is set.
async fn hollow_node(
    local: std::net::IpAddr,
    addr: String,
    root: Vec<u8>,
    token: String,
    n: usize,
    fleet: std::sync::Arc<Fleet>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<()> {
    use shoal_proto::ca::ca_client::CaClient;
    use shoal_proto::ca::IssueNodeCertificateRequest;
    use shoal_proto::dispatcher::dispatcher_client::DispatcherClient;
    use shoal_proto::dispatcher::{HeartbeatRequest, SessionRequest};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    let roots = || {
        let mut r = rustls::RootCertStore::empty();
        r.add(rustls::pki_types::CertificateDer::from(root.clone()))
            .map(|_| Arc::new(r))
    };
    let cfg = Arc::new(shoal_pki::client_config(roots()?, None)?);
    let ch = channel_from(local, &addr, cfg).await?;
    let key = shoal_pki::NodeKey::generate()?;
    // The CA issues one address 10 certificates a second: the fleet waits its turn.
    let resp = loop {
        let r = CaClient::new(ch.clone())
            .issue_node_certificate(IssueNodeCertificateRequest {
                csr_der: key.csr_der()?,
                token: token.clone(),
                hostname: format!("hollow{n}"),
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => break r.into_inner(),
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(s) => return Err(s.into()),
        }
    };
    let chain = vec![resp.cert_der.clone()];
    let cfg = Arc::new(shoal_pki::client_config(
        roots()?,
        Some((&chain, &key.pkcs8_der())),
    )?);
    drop(ch);
    let ch = channel_from(local, &addr, cfg).await?;
    let mut client = DispatcherClient::new(ch.clone());
    let mut session = client
        .session(SessionRequest::default())
        .await?
        .into_inner();
    // Counts the tasks assigned to this node and reports each new one RUNNING, as an
    // agent whose containers start at once would.
    let reporter = ch.clone();
    let counts = fleet.clone();
    let (news, mut new_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<String>>();
    let gate = fleet.clone();
    tokio::spawn(async move {
        use shoal_proto::dispatcher::{TaskStatusUpdate, UpdateTaskStatusRequest};
        use shoal_proto::objects::{TaskState, TaskStatus};
        let mut open = gate.report.subscribe();
        while let Some(new) = new_rx.recv().await {
            if open.wait_for(|o| *o).await.is_err() {
                return;
            }
            for chunk in new.chunks(shoal_proto::limits::MAX_STATUS_UPDATES) {
                let updates = chunk
                    .iter()
                    .map(|id| TaskStatusUpdate {
                        task_id: id.clone(),
                        status: Some(TaskStatus {
                            state: TaskState::Running as i32,
                            message: "started".into(),
                            ..Default::default()
                        }),
                    })
                    .collect();
                let r = DispatcherClient::new(reporter.clone())
                    .update_task_status(UpdateTaskStatusRequest { updates })
                    .await;
                if r.is_ok() {
                    gate.reported.fetch_add(chunk.len(), Ordering::SeqCst);
                }
            }
        }
    });
    tokio::spawn(async move {
        use shoal_proto::dispatcher::assignment::Action;
        let mut tasks = std::collections::HashSet::new();
        let mut first_part = true;
        while let Ok(Some(m)) = session.message().await {
            let before = tasks.len();
            if m.complete && first_part {
                tasks.clear();
            }
            first_part = !m.more;
            let mut new = Vec::new();
            for a in m.assignments {
                match (Action::try_from(a.action), a.task) {
                    (Ok(Action::Update), Some(t)) if tasks.insert(t.id.clone()) => new.push(t.id),
                    (Ok(Action::Remove), _) => {
                        tasks.remove(&a.task_id);
                    }
                    _ => {}
                }
            }
            let after = tasks.len();
            if after >= before {
                counts.assigned.fetch_add(after - before, Ordering::SeqCst);
            } else {
                counts.assigned.fetch_sub(before - after, Ordering::SeqCst);
            }
            if !new.is_empty() && news.send(new).is_err() {
                break;
            }
        }
    });
    fleet.joined.fetch_add(1, Ordering::SeqCst);
    // Beats on one stream, as an agent does, taking answers as they come; a new
    // stream after a failure.
    let mut period = Duration::from_millis(resp.heartbeat_period_ms.max(100));
    let mut beats: Option<shoal_agent::heartbeat::BeatStream> = None;
    while !stop.load(Ordering::SeqCst) {
        let next = tokio::time::Instant::now() + period;
        let sent = match beats.as_mut() {
            Some(b) => b.send(HeartbeatRequest::default()).await.map(|()| None),
            None => match shoal_agent::heartbeat::BeatStream::open(
                ch.clone(),
                HeartbeatRequest::default(),
            )
            .await
            {
                Ok(b) => beats.insert(b).beat(None).await.map(Some),
                Err(e) => Err(e),
            },
        };
        match sent {
            Ok(Some(r)) => period = Duration::from_millis(r.period_ms.max(100)),
            Ok(None) => {}
            Err(_) => beats = None,
        }
        while let Some(b) = beats.as_mut() {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => break,
                a = b.answer() => match a {
                    Ok(r) => period = Duration::from_millis(r.period_ms.max(100)),
                    Err(_) => beats = None,
                },
            }
        }
        tokio::time::sleep_until(next).await;
    }
    Ok(())
}

/// `perf record -g` of process `pid` into `out`, until [`perf_stop`].
fn perf_start(out: &str, pid: u32) -> Result<std::process::Child> {
    let p = std::process::Command::new("perf")
        .args(["record", "-g", "-o", out, "-p", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("perf")?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(p)
}

fn perf_stop(mut p: std::process::Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = p.wait();
}

/// Issue #11: the leader's CPU with 1,000 hollow nodes heartbeating at the default
/// period (and each holding a session open), measured over 30 s.
fn bench_heartbeats(shoal: &std::path::Path) -> Result<String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let n: usize = std::env::var("BENCH_HOLLOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let secs: u64 = std::env::var("BENCH_HEARTBEAT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let tb = Testbed::with_nodes(shoal, 2)?;
    tb.init(0, &[])?;
    let token = tb
        .cli_ok(0, &["join-token", "-q", "worker"])?
        .trim()
        .to_string();
    let root = std::fs::read_to_string(tb.nodes[0].state_dir.join("certs/ca.crt"))?;
    let root = shoal_pki::pem_certs(&root)?.remove(0);
    let addr = tb.nodes[0].addr();
    // 50 hollow nodes per local address, on addresses .100 and up of the testbed's /24.
    let prefix = tb.nodes[1]
        .addr()
        .rsplit_once('.')
        .map(|(p, _)| p.to_string())
        .context("address")?;
    let mut locals: Vec<std::net::IpAddr> = Vec::new();
    for k in 0..n.div_ceil(50) {
        let ip = format!("{prefix}.{}", 100 + k);
        let ok = std::process::Command::new("ip")
            .args(["netns", "exec", &tb.nodes[1].netns, "ip", "addr", "add"])
            .arg(format!("{ip}/24"))
            .args(["dev", "eth0"])
            .status()?
            .success();
        if !ok {
            bail!("cannot add address {ip}");
        }
        locals.push(ip.parse()?);
    }
    let fleet = Arc::new(Fleet::default());
    let stop = Arc::new(AtomicBool::new(false));
    let path = format!("/run/netns/{}", tb.nodes[1].netns);
    let hollow = {
        let (stop, fleet) = (stop.clone(), fleet.clone());
        std::thread::spawn(move || -> Result<()> {
            let ns = std::fs::File::open(&path)?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            shoal_pki::install_crypto_provider();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut set = tokio::task::JoinSet::new();
                for i in 0..n {
                    // Joins a few at a time, as a fleet coming up would.
                    while i >= fleet.joined.load(Ordering::SeqCst) + 16 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let node = hollow_node(
                        locals[i % locals.len()],
                        addr.clone(),
                        root.clone(),
                        token.clone(),
                        i,
                        fleet.clone(),
                        stop.clone(),
                    );
                    set.spawn(async move {
                        if let Err(e) = node.await {
                            eprintln!("hollow node {i}: {e:#}");
                        }
                    });
                }
                while set.join_next().await.is_some() {}
            });
            Ok(())
        })
    };
    wait_for(Duration::from_secs(600), || {
        (fleet.joined.load(Ordering::SeqCst) >= n).then_some(())
    })
    .context("the hollow nodes never all joined")?;
    // Every node Ready, then 10 s of quiet before measuring.
    std::thread::sleep(Duration::from_secs(10));
    let pid = tb.nodes[0].pid().context("manager pid")?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    // Then, with BENCH_TASKS_PER_NODE, a service scaled from 0 to that many tasks per
    // hollow node, timed until every hollow node has its assignments and every task was
    // reported RUNNING; the manager's CPU in that window, per task.
    let per_node: usize = std::env::var("BENCH_TASKS_PER_NODE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut scale_line = String::new();
    if per_node > 0 {
        let want = n * per_node;
        tb.cli_ok(
            0,
            &[
                "service",
                "create",
                "-d",
                "--name",
                "hollow",
                "--replicas",
                "0",
                // The real manager node has no busybox image: the hollow nodes only.
                "--constraint",
                "node.role==worker",
                "busybox",
                "sleep",
                "1d",
            ],
        )?;
        std::thread::sleep(Duration::from_secs(2));
        // First the assignments alone (the hollow nodes hold their reports), then the
        // status reports alone: the manager's CPU in each phase, per task.
        let split = std::env::var("BENCH_SPLIT").is_ok_and(|v| v == "1");
        if split {
            fleet.report.send_replace(false);
        }
        let perf_assign = std::env::var("BENCH_PERF_PHASE").is_ok_and(|v| v == "assign");
        let perf = match std::env::var("BENCH_PERF") {
            Ok(out) if perf_assign => Some(perf_start(&out, pid)?),
            _ => None,
        };
        let cpu0 = cpu_ticks(pid).context("manager cpu")?.1;
        let t = Instant::now();
        tb.cli_ok(0, &["service", "scale", "-d", &format!("hollow={want}")])?;
        wait_for(Duration::from_secs(600), || {
            (fleet.assigned.load(Ordering::SeqCst) >= want).then_some(())
        })
        .context("the hollow nodes never got all their assignments")?;
        let assigned = t.elapsed().as_secs_f64();
        if let Some(p) = perf {
            perf_stop(p);
        }
        let mut phases = String::new();
        if split {
            // The manager may still be writing after the last assignment went out.
            std::thread::sleep(Duration::from_secs(3));
            // BENCH_PERF=FILE: a `perf record -g` of the manager through the reports
            // (with BENCH_PERF_PHASE=assign, through the assignments).
            let perf = match std::env::var("BENCH_PERF") {
                Ok(out) if !perf_assign => Some(perf_start(&out, pid)?),
                _ => None,
            };
            let cpu1 = cpu_ticks(pid).context("manager cpu")?.1;
            let t1 = Instant::now();
            fleet.report.send_replace(true);
            wait_for(Duration::from_secs(600), || {
                (fleet.reported.load(Ordering::SeqCst) >= want).then_some(())
            })
            .context("the managers never took every RUNNING report")?;
            let reported = t1.elapsed().as_secs_f64();
            if let Some(p) = perf {
                perf_stop(p);
            }
            std::thread::sleep(Duration::from_secs(3));
            let cpu2 = cpu_ticks(pid).context("manager cpu")?.1;
            let per = |ticks: u64| ticks as f64 / hz / want as f64 * 1e6;
            phases = format!(
                " With the reports held back until every assignment was out (`BENCH_SPLIT=1`): \
                 the assignments alone cost the manager **{:.0} µs per task** (placement, the \
                 Raft write, the assignment delivered; until 3 s after the last one arrived); \
                 then the {want} RUNNING reports, all taken after {reported:.2} s, cost \
                 **{:.0} µs per status update** (the report checked, its Raft write, the view \
                 and the node's session woken).",
                per(cpu1 - cpu0),
                per(cpu2 - cpu1)
            );
        }
        wait_for(Duration::from_secs(600), || {
            (fleet.reported.load(Ordering::SeqCst) >= want).then_some(())
        })
        .context("the managers never took every RUNNING report")?;
        let reported = t.elapsed().as_secs_f64();
        let cpu = (cpu_ticks(pid).context("manager cpu")?.1 - cpu0) as f64 / hz;
        scale_line = if split {
            format!(
                " `service scale hollow={want}` from 0: every hollow node had its assignments \
                 after **{assigned:.2} s**.{phases}"
            )
        } else {
            format!(
                " `service scale hollow={want}` from 0: every hollow node had its assignments after \
                 **{assigned:.2} s**, every task was reported RUNNING after {reported:.2} s; the manager \
                 used {cpu:.2} s of CPU in that window, **{:.0} µs per task** (placement, the Raft \
                 writes, the assignment delivered and its status report written).",
                cpu / want as f64 * 1e6
            )
        };
        // Quiet again before the idle measurement.
        std::thread::sleep(Duration::from_secs(10));
    }
    let before = cpu_ticks(pid).context("manager cpu")?.1;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let used = cpu_ticks(pid).context("manager cpu")?.1 - before;
    let wall = t.elapsed().as_secs_f64();
    let rss = kib(pid, "status", "VmRSS:");
    let rss_anon = kib(pid, "status", "RssAnon:");
    let threads = kib(pid, "status", "Threads:");
    let nodes = tb.cli_ok(0, &["node", "ls", "-q"])?.lines().count();
    let ready = tb
        .cli_ok(0, &["node", "ls"])?
        .lines()
        .filter(|l| l.contains("Ready"))
        .count();
    stop.store(true, Ordering::SeqCst);
    drop(tb);
    let _ = hollow.join();
    let pct = used as f64 / hz / wall * 100.0;
    Ok(format!(
        "\n## Issue #22: the leader with {n} hollow nodes, {per_node} tasks each, at the default heartbeat\n\n\
         HOLLOW nodes: {n} simulated agents in one process (in a second network namespace), each \
         joined with the worker token (a real certificate from the cluster CA), holding a session \
         stream open and heartbeating over its own mTLS connection at the period the manager gives \
         (default 1 s, stretched by a second per 250 nodes past 250), with {per_node} tasks each (reported RUNNING by the hollow node as soon as \
         assigned). The manager is a real `shoal daemon` ({nodes} nodes listed, \
         {ready} Ready).{scale_line} Its idle CPU (user + system time from /proc) over {wall:.0} s, after 10 s of quiet: \
         **{pct:.1} % of one core**, RSS {:.0} MiB ({:.0} MiB of it anonymous; {threads} threads). \
         Rerun: `BENCH_ONLY=heartbeats target/release/shoal-bench target/release/shoal` \
         (`BENCH_HOLLOW` sets the count, `BENCH_TASKS_PER_NODE` the tasks per node, `BENCH_SPLIT=1` the two phases apart, \
         `BENCH_HEARTBEAT_SECS` the window).\n",
        rss as f64 / 1024.0,
        rss_anon as f64 / 1024.0
    ))
}

/// Issue #4: services on real containers, and node loss.
fn bench_services(shoal: &std::path::Path) -> Result<String> {
    let tb = services_cluster(shoal, "5s")?;
    // Detached, then timed until the containers run: `create` and `scale` themselves
    // also wait out the update monitor period (5 s) before they say "converged".
    let create = timed(|| {
        tb.cli_ok(
            0,
            &[
                "service",
                "create",
                "-d",
                "--name",
                "web",
                "--replicas",
                "50",
                "busybox",
                "sleep",
                "3600",
            ],
        )?;
        wait_sleeps(&tb, "50 containers running", Want::AtLeast(50))
    })?;
    let scale = timed(|| {
        tb.cli_ok(0, &["service", "scale", "-d", "web=200"])?;
        wait_sleeps(&tb, "200 containers running", Want::AtLeast(200))
    })?;
    let running = sleeps(&tb);
    let rm = timed(|| {
        tb.cli_ok(0, &["service", "rm", "web"])?;
        wait_sleeps(&tb, "all containers gone", Want::Zero)
    })?;
    drop(tb);

    let mut loss = Vec::new();
    for hb in ["1s", "5s"] {
        let mut tb = services_cluster(shoal, hb)?;
        tb.cli_ok(
            0,
            &[
                "service",
                "create",
                "--name",
                "web",
                "--replicas",
                "6",
                "busybox",
                "sleep",
                "3600",
            ],
        )?;
        let on_node3 = tb.processes_named(2, "sleep");
        let t = Instant::now();
        tb.kill_all(2)?;
        wait_for(Duration::from_secs(120), || {
            let out = tb
                .cli(
                    0,
                    &[
                        "service",
                        "ps",
                        "web",
                        "--format",
                        "json",
                        "--filter",
                        "desired-state=running",
                    ],
                )
                .stdout;
            let ok = out
                .lines()
                .filter(|l| {
                    l.contains("\"CurrentState\":\"Running\"") && !l.contains("\"Node\":\"node3\"")
                })
                .count();
            (ok == 6).then_some(())
        })
        .context("replacements never running")?;
        loss.push((hb, on_node3, t.elapsed().as_secs_f64()));
    }

    let mut md = String::new();
    md.push_str("\n## Issue #4: services\n\n");
    md.push_str("A 3-node cluster on this one host (1 manager, 2 workers, each a real daemon in its own network namespace), `busybox sleep 3600` tasks, driven through the CLI (`service create`/`scale` wait for convergence):\n\n");
    md.push_str(
        "| measure | seconds | target | swarm mode (issue's figure) |\n|---|---|---|---|\n",
    );
    md.push_str(&format!(
        "| `service create --replicas 50` until 50 RUNNING | {create:.2} | < 3 | ~15 |\n"
    ));
    md.push_str(&format!("| `service scale web=200` (50 -> 200) until 200 RUNNING ({running} containers counted) | {scale:.2} | < 10 | ~49 |\n"));
    md.push_str(&format!(
        "| `service rm` of 200 until every container is gone | {rm:.2} | < 5 | ~38 |\n"
    ));
    for (hb, n, secs) in &loss {
        md.push_str(&format!(
            "| node loss (daemon and its {n} containers killed) -> all 6 replicas RUNNING elsewhere, heartbeat {hb}{} | {secs:.2} | < 5 | ~18 |\n",
            if *hb == "1s" { " (the default)" } else { "" }
        ));
    }
    md.push_str("\nA node whose daemon dies is Down 2 s after its session stream drops (its connection closes), whatever the heartbeat period; a node gone silent is Down after 3 missed heartbeats (3 s at the default 1 s period).\n");
    Ok(md)
}

/// Issue #5: root CA rotation on real nodes, from `shoal ca --rotate` until it returns
/// (every node renewed onto the new root, the old root dropped, tokens regenerated).
fn bench_rotation(shoal: &std::path::Path) -> Result<String> {
    const NODES: usize = 10;
    let mut rows = Vec::new();
    for hb in ["1s", "5s"] {
        let tb = Testbed::with_nodes(shoal, NODES)?;
        tb.init(0, &["--dispatcher-heartbeat", hb])?;
        for i in 1..NODES {
            tb.join_worker(i, 0)?;
        }
        let mut times = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            tb.cli_ok(0, &["ca", "--rotate", "-q"])?;
            times.push(t.elapsed());
        }
        let status = tb.cli_ok(0, &["ca"])?;
        if !status.contains("Rotation:\tnone (last finished") {
            bail!("rotation did not finish: {status}");
        }
        rows.push((hb, stats(times)));
    }
    let mut md = String::new();
    md.push_str("\n## Issue #5: root CA rotation\n\n");
    md.push_str(&format!("{NODES} real nodes (1 manager, {} workers); `shoal ca --rotate` until it returns, 3 rotations each; seconds. Each node renews on its first heartbeat after the rotation starts and beats again at once to show the new certificate in use, so the time is about one heartbeat period (the CLI checks progress every 0.5 s).\n\n", NODES - 1));
    md.push_str("| heartbeat | min | median | max |\n|---|---|---|---|\n");
    for (hb, (a, b, _, d)) in rows {
        md.push_str(&format!(
            "| {hb} | {:.2} | {:.2} | {:.2} |\n",
            a / 1000.0,
            b / 1000.0,
            d / 1000.0
        ));
    }
    md.push_str("\nSwarm mode marks at most 30 nodes every 3 s for rotation; shoal tells up to 100 nodes per second (`ROTATION_RENEWALS_PER_SEC`).\n");
    Ok(md)
}

fn bench_failover(shoal: &std::path::Path) -> Result<String> {
    const ROUNDS: usize = 10;
    let mut tb = Testbed::with_nodes(shoal, 3)?;
    tb.init(0, &[])?;
    let token = tb.cli_ok(0, &["join-token", "-q", "manager"])?;
    for i in 1..3 {
        tb.cli_ok(i, &["join", "--token", token.trim(), &tb.nodes[0].addr()])?;
    }
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        // A leader that two managers agree on and that held for 2 s (a manager restarted
        // in the round before may still call an election as it comes back).
        let leader = wait_for(Duration::from_secs(60), || {
            let l = tb.leader_index((round + 1) % 3)?;
            std::thread::sleep(Duration::from_secs(2));
            let again = tb.leader_index((round + 2) % 3)?;
            (again == l && tb.leader_index((round + 1) % 3)? == l).then_some(l)
        })
        .context("no stable leader")?;
        tb.kill(leader)?;
        let t = Instant::now();
        let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
        let mut k = 0;
        loop {
            let via = others[k % others.len()];
            k += 1;
            let name = format!("f{round}x{k}");
            let o = tb.cli(
                via,
                &[
                    "service", "create", "-d", "--name", &name, "busybox", "true",
                ],
            );
            if o.success {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!(
                    "no write acknowledged 30 s after the leader died: {}",
                    o.stderr
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        times.push(t.elapsed());
        tb.start(leader)?;
    }
    let (a, b, c, d) = stats(times);
    let mut md = String::new();
    md.push_str("\n## Issue #10: leader failover\n\n");
    md.push_str(&format!("3 managers (real daemons, default settings); the leader's daemon is killed with SIGKILL, then `shoal service create -d` is tried through the other two managers in turn (every 20 ms) until one is acknowledged. {ROUNDS} rounds (the killed manager is restarted between rounds); seconds. Target: median < 2 s; swarm mode's default election takes about 10 s.\n\n"));
    md.push_str("| min | median | p90 | max |\n|---|---|---|---|\n");
    md.push_str(&format!(
        "| {:.2} | {:.2} | {:.2} | {:.2} |\n",
        a / 1000.0,
        b / 1000.0,
        c / 1000.0,
        d / 1000.0
    ));
    Ok(md)
}

/// A control API client over node `i`'s unix socket.
async fn control_client(
    tb: &Testbed,
    i: usize,
) -> Result<shoal_proto::control::control_client::ControlClient<tonic::transport::Channel>> {
    let path = tb.nodes[i].socket.clone();
    let ch = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await?;
    Ok(shoal_proto::control::control_client::ControlClient::new(ch))
}

/// Writes through 3 managers (throughput and latency), a 4th manager joining the log
/// those writes made (catch-up), and the managers' memory once idle.
fn bench_ha(shoal: &std::path::Path) -> Result<String> {
    const CLIENTS_PER_MANAGER: usize = 8;
    const WRITES: usize = 21_000;
    let mut tb = Testbed::with_nodes(shoal, 4)?;
    tb.init(0, &[])?;
    let token = tb.cli_ok(0, &["join-token", "-q", "manager"])?;
    for i in 1..3 {
        tb.cli_ok(i, &["join", "--token", token.trim(), &tb.nodes[0].addr()])?;
    }
    let rss = |tb: &Testbed| -> Vec<u64> {
        (0..3)
            .map(|i| tb.nodes[i].pid().map_or(0, |p| kib(p, "status", "VmRSS:")))
            .collect()
    };
    // Idle: three managers that have just formed the cluster, left alone for 10 s.
    std::thread::sleep(Duration::from_secs(10));
    let idle = rss(&tb);
    // One service per client (no replicas): each write is an update of its spec.
    let clients = 3 * CLIENTS_PER_MANAGER;
    for c in 0..clients {
        tb.cli_ok(
            0,
            &[
                "service",
                "create",
                "-d",
                "--name",
                &format!("w{c}"),
                "--replicas",
                "0",
                "busybox",
                "true",
            ],
        )?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let per_client = WRITES / clients;
    let started = Instant::now();
    let latencies: Vec<Duration> = rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..clients {
            let mut client = control_client(&tb, c % 3).await?;
            tasks.push(tokio::spawn(async move {
                use shoal_proto::control::{GetServiceRequest, UpdateServiceRequest};
                let name = format!("w{c}");
                let mut spec = client
                    .get_service(GetServiceRequest {
                        reference: name.clone(),
                    })
                    .await?
                    .into_inner()
                    .spec
                    .unwrap_or_default();
                let mut lat = Vec::with_capacity(per_client);
                for k in 0..per_client {
                    spec.labels.insert("k".into(), k.to_string());
                    let t = Instant::now();
                    client
                        .update_service(UpdateServiceRequest {
                            reference: name.clone(),
                            spec: Some(spec.clone()),
                            spec_version: 0,
                            force: false,
                            rollback: false,
                        })
                        .await?;
                    lat.push(t.elapsed());
                }
                anyhow::Ok(lat)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        anyhow::Ok(all)
    })?;
    let elapsed = started.elapsed();
    let writes = latencies.len();
    let mut sorted = latencies.clone();
    sorted.sort();
    let q =
        |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0;
    let (p50, p99) = (q(0.5), q(0.99));
    let rate = writes as f64 / elapsed.as_secs_f64();
    let info: serde_json::Value =
        serde_json::from_str(&tb.cli_ok(0, &["info", "--format", "json"])?)?;
    let index = info["Raft"]["AppliedIndex"].as_u64().unwrap_or(0);

    // And after that load, once it settles.
    std::thread::sleep(Duration::from_secs(10));
    let loaded = rss(&tb);

    // A 4th manager joins that log: until the leader sees it Reachable (it votes then).
    let t = Instant::now();
    tb.cli_ok(3, &["join", "--token", token.trim(), &tb.nodes[0].addr()])?;
    let joined = t.elapsed();
    wait_for(Duration::from_secs(60), || {
        let out = tb.cli_ok(0, &["node", "ls", "--format", "json"]).ok()?;
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|n| n["Hostname"] == "node4" && n["ManagerStatus"] == "Reachable")
            .then_some(())
    })
    .context("the 4th manager never became Reachable")?;
    let reachable = t.elapsed();
    drop(rt);
    let _ = &mut tb;

    let mut md = String::new();
    md.push_str(
        "\n## Issue #10: writes through 3 managers, a manager joining a long log, idle memory\n\n",
    );
    md.push_str(&format!(
        "3 managers (real daemons, default settings) on this one machine. {clients} clients ({CLIENTS_PER_MANAGER} per manager, over each daemon's unix socket; two thirds of them are forwarded by a follower to the leader) each update their own service's spec (a label) {per_client} times, one call at a time. A write is acknowledged once committed by a majority and applied (on a follower: once that follower has applied it too).\n\n"
    ));
    md.push_str("| writes | seconds | writes/s | latency p50 (ms) | latency p99 (ms) | raft index after |\n|---|---|---|---|---|---|\n");
    md.push_str(&format!(
        "| {writes} | {:.1} | {rate:.0} | {p50:.1} | {p99:.1} | {index} |\n\n",
        elapsed.as_secs_f64()
    ));
    md.push_str(&format!(
        "Then a 4th manager joins (`shoal join` with the manager token) a cluster whose log is at index {index} (snapshots every 10,000 entries, so it catches up from a snapshot and the log after it). Target: Reachable and voting in < 3 s; swarm mode took 104 s on a 6,600-entry log on this machine class.\n\n"
    ));
    md.push_str("| join command returned (s) | Reachable on the leader (s) |\n|---|---|\n");
    md.push_str(&format!(
        "| {:.2} | {:.2} |\n\n",
        joined.as_secs_f64(),
        reachable.as_secs_f64()
    ));
    md.push_str("Memory of the 3 managers (VmRSS, MB; manager 1 is the one that ran `init`): idle, 10 s after the cluster formed; and 10 s after the write load above (the state then holds the 24 services and a raft log of about 1,000 entries behind a 20,000-entry snapshot). Target: < 25 MB each, idle.\n\n");
    md.push_str("| when | manager 1 | manager 2 | manager 3 |\n|---|---|---|---|\n");
    for (when, v) in [("idle", &idle), ("after the load", &loaded)] {
        md.push_str(&format!(
            "| {when} | {:.1} | {:.1} | {:.1} |\n",
            v[0] as f64 / 1024.0,
            v[1] as f64 / 1024.0,
            v[2] as f64 / 1024.0
        ));
    }
    Ok(md)
}

//! `shoal-bench`: the issue #2 benchmarks on real daemons in network namespaces.
//!
//! Measures `shoal init` wall time, `shoal join` until the manager lists the node Ready,
//! and the idle memory of manager and worker daemons, then writes BENCHMARKS.md.
//! Run with `scripts/bench.sh` (as root).

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
    std::fs::write(&out, &md)?;
    print!("{md}");
    Ok(())
}

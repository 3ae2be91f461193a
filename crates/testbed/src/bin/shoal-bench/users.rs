//! Issue #24's figure so far: the remote CLI. `node ls` timed from a user's machine (a
//! namespace on the bridge with no daemon) through the leader and through a follower,
//! with the certificate of `shoal login`, against the same command on the leader's unix
//! socket. Each figure includes starting the CLI process, as a user sees it.

use anyhow::{bail, Result};
use shoal_testbed::Testbed;
use std::time::Instant;

fn percentiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[(v.len() * 9) / 10])
}

pub fn bench(shoal: &std::path::Path, runs: usize) -> Result<String> {
    let mut tb = Testbed::with_nodes(shoal, 3)?;
    tb.init(0, &[])?;
    let token = tb.cli_ok(0, &["join-token", "-q", "manager"])?;
    tb.cli_ok(1, &["join", "--token", token.trim(), &tb.nodes[0].addr()])?;
    tb.join_worker(2, 0)?;
    let ws = tb.add_workstation()?;
    let out = tb.cli_ok(0, &["user", "create", "bench", "--role", "admin", "-q"])?;
    let login = tb.ws_cli(ws, &["login", "--token", out.trim(), &tb.nodes[0].ip]);
    if !login.success {
        bail!("login: {}", login.stderr);
    }
    let (leader, follower) = (
        format!("tcp://{}", tb.nodes[0].ip),
        format!("tcp://{}", tb.nodes[1].ip),
    );
    let time = |f: &dyn Fn() -> bool| -> Result<Vec<f64>> {
        let mut v = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            if !f() {
                bail!("a timed call failed");
            }
            v.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(v)
    };
    let socket = time(&|| tb.cli(0, &["node", "ls"]).success)?;
    let via_leader = time(&|| tb.ws_cli(ws, &["-H", &leader, "node", "ls"]).success)?;
    let via_follower = time(&|| tb.ws_cli(ws, &["-H", &follower, "node", "ls"]).success)?;
    let row = |what: &str, v: Vec<f64>| {
        let (p50, p90) = percentiles(v);
        format!("| {what} | {p50:.1} | {p90:.1} |\n")
    };
    Ok(format!(
        "\n## Issue #24: the remote CLI\n\n`node ls` on a 3-node cluster (2 managers, 1 worker), \
         {runs} runs each, milliseconds, CLI start included:\n\n\
         | path | median | p90 |\n|---|---|---|\n{}{}{}\n\
         Rerun: `BENCH_ONLY=users target/release/shoal-bench target/release/shoal` \
         (`BENCH_RUNS` sets the runs).\n",
        row("the leader's unix socket", socket),
        row(
            "a workstation → the leader over mTLS (user certificate)",
            via_leader
        ),
        row("a workstation → a follower over mTLS", via_follower),
    ))
}

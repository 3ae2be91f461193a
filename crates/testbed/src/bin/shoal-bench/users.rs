//! Issue #24's figures for the remote CLI: `service ls` (a read, its list filtered by the
//! user's scope) and `service update` (a write, forwarded by a follower) timed from a
//! user's machine (a namespace on the bridge with no daemon) through the leader and
//! through a follower, with the certificate of `shoal login`, against the same commands
//! on the leader's unix socket. Every call is checked and audited on the way. Each
//! figure includes starting the CLI process, as a user sees it.

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
    // 20 services, half of them in the stack the user may work on.
    for i in 0..20 {
        let (name, stack) = if i % 2 == 0 {
            (format!("shop_s{i}"), "shop")
        } else {
            (format!("blog_s{i}"), "blog")
        };
        let label = format!("com.docker.stack.namespace={stack}");
        tb.cli_ok(
            0,
            &[
                "service",
                "create",
                "-d",
                "--replicas",
                "0",
                "--name",
                &name,
                "--label",
                &label,
                "busybox",
            ],
        )?;
    }
    let out = tb.cli_ok(
        0,
        &[
            "user", "create", "bench", "--role", "deployer", "--scope", "shop", "-q",
        ],
    )?;
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
    let socket = time(&|| tb.cli(0, &["service", "ls"]).success)?;
    let via_leader = time(&|| tb.ws_cli(ws, &["-H", &leader, "service", "ls"]).success)?;
    let via_follower = time(&|| tb.ws_cli(ws, &["-H", &follower, "service", "ls"]).success)?;
    let n = std::cell::Cell::new(0);
    let update = |host: Option<&str>| {
        n.set(n.get() + 1);
        let label = format!("run={}", n.get());
        let args = ["service", "update", "-d", "--label-add", &label, "shop_s0"];
        match host {
            None => tb.cli(0, &args).success,
            Some(h) => {
                let mut full = vec!["-H", h];
                full.extend_from_slice(&args);
                tb.ws_cli(ws, &full).success
            }
        }
    };
    let write_socket = time(&|| update(None))?;
    let write_leader = time(&|| update(Some(&leader)))?;
    let write_follower = time(&|| update(Some(&follower)))?;
    let row = |what: &str, v: Vec<f64>| {
        let (p50, p90) = percentiles(v);
        format!("| {what} | {p50:.1} | {p90:.1} |\n")
    };
    Ok(format!(
        "\n## Issue #24: the remote CLI\n\nA 3-node cluster (2 managers, 1 worker), 20 services, \
         a deployer of one stack (10 of them); {runs} runs each, milliseconds, CLI start \
         included:\n\n\
         | command and path | median | p90 |\n|---|---|---|\n{}{}{}{}{}{}\n\
         Rerun: `BENCH_ONLY=users target/release/shoal-bench target/release/shoal` \
         (`BENCH_RUNS` sets the runs).\n",
        row("`service ls`, the leader's unix socket", socket),
        row(
            "`service ls`, a workstation → the leader over mTLS (user certificate)",
            via_leader
        ),
        row(
            "`service ls`, a workstation → a follower over mTLS",
            via_follower
        ),
        row(
            "`service update -d`, the leader's unix socket",
            write_socket
        ),
        row(
            "`service update -d`, a workstation → the leader",
            write_leader
        ),
        row(
            "`service update -d`, a workstation → a follower (forwarded)",
            write_follower
        ),
    ))
}

//! Issue #23's figures: `stack deploy` of a 20-service busybox stack on the 3-node test
//! cluster (1 manager, 2 workers), created only (`-d`) and until every service has
//! converged, then a redeploy of the unchanged file; `stack deploy` of the three-service
//! application (nginx, a CGI counter, redis from Debian's packages) until converged;
//! `task exec TASK true` from the manager to a task on a worker; and what an empty named
//! volume adds to a container's start.

use anyhow::Result;
use std::time::Instant;

/// A stack of `n` one-replica `busybox sleep` services; each counts as converged once
/// its task runs (`monitor: 0s`), as `docker stack deploy` would not wait at all.
fn stack_file(n: usize) -> String {
    let mut s = String::from("version: \"3.8\"\nservices:\n");
    for i in 0..n {
        s.push_str(&format!(
            "  s{i:02}:\n    image: busybox\n    command: sleep 1d\n    stop_grace_period: 300ms\n    deploy:\n      update_config: {{monitor: 0s}}\n"
        ));
    }
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn bench(shoal: &std::path::Path) -> Result<String> {
    let tb = super::services_cluster(shoal, "1s")?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("stack.yml");
    std::fs::write(&file, stack_file(20))?;
    let f = file.to_str().unwrap_or_default();
    let (mut detached, mut converged, mut again) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = Instant::now();
        tb.cli_ok(0, &["stack", "deploy", "-d", "-c", f, "bench"])?;
        detached.push(t.elapsed().as_secs_f64());
        tb.cli_ok(0, &["stack", "rm", "bench"])?;
        let t = Instant::now();
        tb.cli_ok(0, &["stack", "deploy", "-c", f, "bench"])?;
        converged.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        tb.cli_ok(0, &["stack", "deploy", "-c", f, "bench"])?;
        again.push(t.elapsed().as_secs_f64());
        tb.cli_ok(0, &["stack", "rm", "bench"])?;
    }
    let app = app_deploys(&tb, dir.path())?;
    let exec = exec_round_trips(&tb)?;
    let volume = volume_start()?;
    Ok(format!(
        "\n## Issue #23: `stack deploy` of 20 services\n\n\
         A 20-service stack (`busybox sleep 1d`, one replica each, `update_config: {{monitor: 0s}}`) \
         on the 3-node test cluster (1 manager, 2 workers, real containers), 3 rounds, median \
         (all): created with `-d` **{:.2} s** ({:?}); deployed until every service converged \
         **{:.2} s** ({:?}); the unchanged file again (every service `unchanged`, each \
         converge checked) {:.2} s ({:?}). Rerun: `BENCH_ONLY=stacks target/release/shoal-bench \
         target/release/shoal`.\n",
        median(detached.clone()),
        detached.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>(),
        median(converged.clone()),
        converged.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>(),
        median(again.clone()),
        again.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>(),
    ) + &app + &exec + &volume)
}

fn list(v: &[f64], unit: f64, digits: usize) -> String {
    let parts: Vec<String> = v
        .iter()
        .map(|x| format!("{:.*}", digits, x * unit))
        .collect();
    parts.join(", ")
}

/// The three-service application deployed until converged (its `db` must be healthy
/// before `web` starts: a health check every second), 3 rounds.
fn app_deploys(tb: &shoal_testbed::Testbed, dir: &std::path::Path) -> Result<String> {
    shoal_testbed::app::import_images(tb)?;
    shoal_testbed::app::write_files(dir)?;
    let f = dir.join("app.yml").display().to_string();
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        tb.cli_ok(0, &["stack", "deploy", "-c", &f, "app"])?;
        times.push(t.elapsed().as_secs_f64());
        tb.cli_ok(0, &["stack", "rm", "app"])?;
    }
    Ok(format!(
        "\nThe three-service application of the issue (nginx proxy publishing 8080, a CGI \
         counter, redis with a config, a secret, a named volume and a health check every \
         second, `depends_on` db healthy then web started; images from Debian's packages), \
         `stack deploy` until converged, 3 rounds: median **{:.2} s** ({} s): db's first \
         healthy check, the starts, and the last service's 5 s monitor period.\n",
        median(times.clone()),
        list(&times, 1.0, 2)
    ))
}

/// `task exec TASK true` from the manager's CLI to a task on a worker, 30 times after 3
/// to warm up: the whole command (CLI start, control call, the node's session, runc exec,
/// the exit code back).
fn exec_round_trips(tb: &shoal_testbed::Testbed) -> Result<String> {
    tb.cli_ok(
        0,
        &[
            "service",
            "create",
            "--name",
            "ex",
            "--constraint",
            "node.role==worker",
            "--stop-grace-period",
            "300ms",
            "busybox",
            "sleep",
            "1d",
        ],
    )?;
    let task = tb.cli_ok(0, &["service", "ps", "-q", "ex"])?;
    let task = task.lines().next().unwrap_or_default().trim().to_string();
    let mut times = Vec::new();
    for i in 0..33 {
        let t = Instant::now();
        tb.cli_ok(0, &["task", "exec", &task, "true"])?;
        if i >= 3 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    // The same command through a bare `runc exec` on the task's node: the part of the
    // round trip that is runc's.
    let ps = tb.cli_ok(0, &["service", "ps", "--format", "json", "ex"])?;
    let node = ps
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|p| {
            let n = p["Node"].as_str()?.to_string();
            tb.nodes.iter().position(|x| x.name == n)
        })
        .unwrap_or(1);
    let runc_root = tb.nodes[node].state_dir.join("containers/.runc");
    let root = runc_root.display().to_string();
    let mut bare = Vec::new();
    for i in 0..33 {
        let t = Instant::now();
        let ok = tb
            .command_in(node, &["runc", "--root", &root, "exec", &task, "true"])
            .status()?
            .success();
        anyhow::ensure!(ok, "runc exec failed");
        if i >= 3 {
            bare.push(t.elapsed().as_secs_f64());
        }
    }
    tb.cli_ok(0, &["service", "rm", "ex"])?;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(format!(
        "\n`task exec TASK true` from the manager to a task on a worker (the whole CLI \
         command: its start, the control call, the node's session, `runc exec`, the exit \
         code back), 30 runs: median **{:.1} ms**, fastest {:.1} ms, slowest {:.1} ms. \
         A bare `runc exec TASK true` on the task's node (entered with nsenter), 30 runs: \
         median {:.1} ms: the rest is shoal's relay.\n",
        median(times) * 1e3,
        sorted[0] * 1e3,
        sorted[sorted.len() - 1] * 1e3,
        median(bare) * 1e3,
    ))
}

/// What a new, empty named volume adds to a container's start: the agent's own code
/// (`Volumes::take` makes it and notes its user; `copyup::fill` finds the image's empty
/// directory at the target and gives the volume its owner and mode), 200 volumes.
fn volume_start() -> Result<String> {
    use shoal_agent::volumes::Volumes;
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("rootfs");
    std::fs::create_dir_all(root.join("data"))?;
    let volumes = Volumes::new(dir.path());
    let none = std::collections::BTreeMap::new();
    let mut times = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        let (data, _) = volumes.take(&format!("t{i}"), "bench", &format!("v{i}"), &none, false)?;
        shoal_agent::runtime::copyup::fill(&root, "/data", &data)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(format!(
        "\nAn empty named volume on the start path (the agent's code: the volume made, its \
         user noted, the image's empty directory found and its owner and mode given to the \
         volume), 200 new volumes: median **{:.2} ms**, 95th percentile {:.2} ms (the \
         target < 5 ms).\n",
        median(times) * 1e3,
        sorted[sorted.len() * 95 / 100] * 1e3
    ))
}

//! Issue #13's figure: what 3 secrets and 3 configs add to a task's start (the agent's
//! own figure: assignment received -> RUNNING reported), against the same task without
//! them, started one at a time on the same node.

use anyhow::{Context, Result};
use shoal_testbed::Testbed;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * 0.99).round() as usize]
}

/// The agent's start figures of `service`'s tasks, from node `i`'s log.
fn start_ms(tb: &Testbed, i: usize, ids: &[String]) -> Vec<f64> {
    tb.log(i)
        .lines()
        .filter(|l| l.contains("container running") && ids.iter().any(|id| l.contains(id.as_str())))
        .filter_map(|l| {
            l.split("startup_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .collect()
}

fn task_ids(tb: &Testbed, service: &str) -> Result<Vec<String>> {
    Ok(tb
        .cli_ok(0, &["service", "ps", "-q", service])?
        .lines()
        .map(|l| l.trim().to_string())
        .collect())
}

pub fn bench(shoal: &std::path::Path, n: usize) -> Result<String> {
    let tb = Testbed::with_nodes(shoal, 1)?;
    tb.init(0, &[])?;
    let tar = shoal_testbed::busybox_rootfs_tar(tb.dir())?;
    tb.cli_ok(
        0,
        &[
            "image",
            "import",
            tar.to_str().context("path")?,
            "busybox:latest",
        ],
    )?;
    let mut flags: Vec<String> = Vec::new();
    for k in 0..3 {
        let secret = format!("s{k}");
        let config = format!("c{k}");
        let data = format!("{}-{k}\n", "x".repeat(4096));
        let out = tb.cli_stdin(0, &["secret", "create", &secret, "-"], &data);
        anyhow::ensure!(out.success, "{}", out.stderr);
        let out = tb.cli_stdin(0, &["config", "create", &config, "-"], &data);
        anyhow::ensure!(out.success, "{}", out.stderr);
        flags.extend(["--secret".into(), secret]);
        flags.extend([
            "--config".into(),
            format!("source={config},target=/etc/{config}"),
        ]);
    }
    let create = |name: &str, extra: &[String]| -> Result<()> {
        let mut args: Vec<&str> = vec!["service", "create", "--name", name, "--replicas", "0"];
        args.extend(extra.iter().map(String::as_str));
        args.extend(["busybox", "sleep", "1000000"]);
        tb.cli_ok(0, &args).map(|_| ())
    };
    create("plain", &[])?;
    create("with-secrets", &flags)?;
    // Warm: the image unpacked, the bridge made.
    tb.cli_ok(0, &["task", "run", "busybox", "true"])?;
    for k in 1..=n {
        for svc in ["plain", "with-secrets"] {
            tb.cli_ok(0, &["service", "scale", &format!("{svc}={k}")])?;
        }
    }
    let plain = start_ms(&tb, 0, &task_ids(&tb, "plain")?);
    let secret = start_ms(&tb, 0, &task_ids(&tb, "with-secrets")?);
    anyhow::ensure!(
        plain.len() == n && secret.len() == n,
        "{} and {} start figures, not {n}",
        plain.len(),
        secret.len()
    );
    drop(tb);
    let (mp, ms) = (median(plain.clone()), median(secret.clone()));
    Ok(format!(
        "\n## Issue #13: secrets and configs on the start path\n\n\
         {n} + {n} `busybox sleep` tasks on one node, started one at a time (`service scale` \
         by one, alternating between the two services), the agent's figure (assignment \
         received -> RUNNING reported), milliseconds:\n\n\
         | tasks | median | p99 |\n|---|---|---|\n\
         | no secrets | {mp:.1} | {:.1} |\n\
         | 3 secrets + 3 configs (4 KiB each: a tmpfs, 6 files, 6 read-only bind mounts) | {ms:.1} | {:.1} |\n\
         | **added (medians)** | **{:.1}** | target < 5 |\n\n\
         Rerun: `BENCH_ONLY=secrets BENCH_CONTAINERS={n} target/release/shoal-bench target/release/shoal`.\n",
        p99(plain),
        p99(secret),
        ms - mp
    ))
}

//! Issue #13's figure: what 3 secrets and 3 configs add to a task's start (the agent's
//! own figure: assignment received -> RUNNING reported), against the same task without
//! them, started one at a time on the same node.

use anyhow::Result;
use shoal_testbed::Testbed;

pub fn bench(shoal: &std::path::Path, n: usize) -> Result<String> {
    let tb = Testbed::with_nodes(shoal, 1)?;
    tb.init(0, &[])?;
    super::import_busybox(&tb, 0)?;
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
    // Warm (the image unpacked, the bridge made), then one at a time.
    let (plain, secret) = super::alternate_starts(&tb, "plain", "with-secrets", n)?;
    drop(tb);
    let (mp, ms) = (super::p(&plain, 0.5), super::p(&secret, 0.5));
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
        super::p(&plain, 0.99),
        super::p(&secret, 0.99),
        ms - mp
    ))
}

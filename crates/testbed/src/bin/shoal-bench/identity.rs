//! Issue #24's start-path figure: what a task's workload identity (a key made on the
//! node, a certificate from the managers, three files on the task's tmpfs and one
//! read-only bind mount) adds to its start (the agent's own figure: assignment received
//! -> RUNNING reported), against the same task with `--no-identity`, started one at a
//! time on the same node (a single-node cluster: the manager is local, so the figure is
//! the work, not a network round trip).

use anyhow::Result;
use shoal_testbed::Testbed;

pub fn bench(shoal: &std::path::Path, n: usize) -> Result<String> {
    let tb = Testbed::with_nodes(shoal, 1)?;
    tb.init(0, &[])?;
    super::import_busybox(&tb, 0)?;
    let create = |name: &str, extra: &[&str]| -> Result<()> {
        let mut args: Vec<&str> = vec!["service", "create", "--name", name, "--replicas", "0"];
        args.extend(extra);
        args.extend(["busybox", "sleep", "1000000"]);
        tb.cli_ok(0, &args).map(|_| ())
    };
    create("plain", &["--no-identity"])?;
    create("with-identity", &[])?;
    // Warm (the image unpacked, the bridge made), then one at a time.
    let (plain, with) = super::alternate_starts(&tb, "plain", "with-identity", n)?;
    drop(tb);
    let (mp, mw) = (super::p(&plain, 0.5), super::p(&with, 0.5));
    Ok(format!(
        "\n## Issue #24: workload identities on the start path\n\n\
         {n} + {n} `busybox sleep` tasks on one node, started one at a time (`service scale` \
         by one, alternating between the two services), the agent's figure (assignment \
         received -> RUNNING reported), milliseconds:\n\n\
         | tasks | median | p99 |\n|---|---|---|\n\
         | `--no-identity` | {mp:.1} | {:.1} |\n\
         | with a workload identity (P-256 key, CSR, issuance, 3 files, 1 bind mount) | {mw:.1} | {:.1} |\n\
         | **added (medians)** | **{:.1}** | target < 5 |\n\n\
         Rerun: `BENCH_ONLY=identity BENCH_CONTAINERS={n} target/release/shoal-bench target/release/shoal`.\n",
        super::p(&plain, 0.99),
        super::p(&with, 0.99),
        mw - mp
    ))
}

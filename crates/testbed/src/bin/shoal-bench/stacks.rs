//! Issue #23's stack figures: `stack deploy` of a 20-service busybox stack on the
//! 3-node test cluster (1 manager, 2 workers), created only (`-d`) and until every
//! service has converged, then a redeploy of the unchanged file.

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
    ))
}

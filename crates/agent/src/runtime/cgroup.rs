//! The little we read from cgroups ourselves: whether the OOM killer struck a container.
//! Works on cgroup v1 / hybrid hosts and on pure v2 hosts.

use std::path::Path;

/// Whether `/sys/fs/cgroup` is a pure cgroup v2 hierarchy.
pub fn is_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

fn count(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// OOM kills recorded in the memory cgroup at `cgroup_path` (as given to runc).
pub fn oom_kills(cgroup_path: &str) -> u64 {
    let rel = cgroup_path.trim_start_matches('/');
    if is_v2() {
        let t = std::fs::read_to_string(format!("/sys/fs/cgroup/{rel}/memory.events"))
            .unwrap_or_default();
        count(&t, "oom_kill ")
    } else {
        let t = std::fs::read_to_string(format!("/sys/fs/cgroup/memory/{rel}/memory.oom_control"))
            .unwrap_or_default();
        count(&t, "oom_kill ")
    }
}

/// Removes the (empty) cgroup directories under `parent` in every hierarchy: cleanup
/// for a node that goes away while containers were running.
pub fn remove_tree(parent: &str) {
    let rel = parent.trim_start_matches('/');
    let roots: Vec<std::path::PathBuf> = if is_v2() {
        vec!["/sys/fs/cgroup".into()]
    } else {
        std::fs::read_dir("/sys/fs/cgroup")
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    };
    for root in roots {
        let dir = root.join(rel);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
}

//! What a node says about its host. Managers treat all of it as a claim, never as
//! identity.

use shoal_proto::objects::NodeDescription;
use std::collections::HashMap;

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn memory_bytes() -> u64 {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

pub fn describe(engine_labels: &HashMap<String, String>) -> NodeDescription {
    NodeDescription {
        hostname: hostname(),
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: memory_bytes(),
        engine_labels: engine_labels.clone(),
        engine_version: env!("CARGO_PKG_VERSION").to_string(),
        runtime_error: crate::runtime::runc::runtime_error().unwrap_or_default(),
        // Set by the daemon, which holds the key.
        wg_public_key: String::new(),
        data_plane: None,
        // Set by the heartbeat, from the node's volumes.
        volumes: Vec::new(),
        // Set by the daemon, from how the node joined.
        data_path_addr: String::new(),
    }
}

//! How tasks are shown in tables and in inspect output, shared by `task ls`,
//! `service ps` and `node ps`.

use shoal_proto::objects::{ContainerSpec, Task, TaskState};

/// A task state as swarm shows it: "Running", "Pending", ...
pub fn state_name(s: i32) -> String {
    let name = TaskState::try_from(s)
        .map(|s| s.as_str_name())
        .unwrap_or("TASK_STATE_NEW")
        .trim_start_matches("TASK_STATE_")
        .to_lowercase();
    let mut c = name.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// The columns of task listings (`task ls`, `service ps`, `node ps`), as swarm's.
pub fn task_table_header() -> Vec<String> {
    [
        "ID",
        "NAME",
        "IMAGE",
        "NODE",
        "DESIRED STATE",
        "CURRENT STATE",
        "ERROR",
    ]
    .map(String::from)
    .to_vec()
}

/// The first `n` characters of `s`, unless `no_trunc`.
pub fn truncate(s: &str, n: usize, no_trunc: bool) -> String {
    if no_trunc {
        s.to_string()
    } else {
        s.chars().take(n).collect()
    }
}

/// "5 seconds ago", from a unix time in milliseconds.
pub fn ago(ms: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let s = ((now - ms).max(0) / 1000) as u64;
    match s {
        0..=1 => "Less than a second ago".into(),
        2..=59 => format!("{s} seconds ago"),
        60..=3599 => plural(s / 60, "minute"),
        3600..=86399 => plural(s / 3600, "hour"),
        _ => plural(s / 86400, "day"),
    }
}

/// A spec's networks as `inspect` shows them (swarm's `Networks`: target and aliases).
pub fn networks_json(c: &ContainerSpec) -> serde_json::Value {
    serde_json::Value::Array(
        c.networks
            .iter()
            .map(|n| serde_json::json!({"Target": n.target, "Aliases": n.aliases}))
            .collect(),
    )
}

/// A task's health, for task lists: starting, healthy or unhealthy.
pub fn health_label(t: &Task) -> Option<&'static str> {
    use shoal_proto::objects::HealthState;
    match HealthState::try_from(t.status.as_ref().map(|s| s.health).unwrap_or(0)) {
        Ok(HealthState::Starting) => Some("health: starting"),
        Ok(HealthState::Healthy) => Some("healthy"),
        Ok(HealthState::Unhealthy) => Some("unhealthy"),
        _ => None,
    }
}

/// "1 minute ago", "5 minutes ago".
fn plural(n: u64, unit: &str) -> String {
    if n == 1 {
        format!("1 {unit} ago")
    } else {
        format!("{n} {unit}s ago")
    }
}

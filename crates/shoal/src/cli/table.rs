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

/// A spec's mounts and process options as `inspect` shows them (swarm's names:
/// `Mounts`, `DNSConfig`, `Hosts`, `Sysctls`, `Ulimits`, `StopSignal`, `TTY`, `Groups`),
/// merged into `into` (a JSON object).
pub fn add_process_json(into: &mut serde_json::Value, c: &ContainerSpec) {
    use serde_json::json;
    let mounts: Vec<_> = c
        .mounts
        .iter()
        .map(|m| {
            let mut j = json!({"Type": m.r#type, "Source": m.source, "Target": m.target, "ReadOnly": m.readonly});
            if m.r#type == "tmpfs" {
                j["TmpfsOptions"] = json!({"SizeBytes": m.size_bytes, "Mode": m.tmpfs_mode});
            }
            j
        })
        .collect();
    let extra = json!({
        "Mounts": mounts,
        "DNSConfig": {"Nameservers": c.dns_nameservers, "Search": c.dns_search, "Options": c.dns_options},
        "Hosts": c.hosts,
        "Sysctls": c.sysctls,
        "Ulimits": c.ulimits.iter().map(|u| json!({"Name": u.name, "Soft": u.soft, "Hard": u.hard})).collect::<Vec<_>>(),
        "StopSignal": c.stop_signal,
        "TTY": c.tty,
        "Groups": c.groups,
    });
    if let (Some(o), serde_json::Value::Object(e)) = (into.as_object_mut(), extra) {
        o.extend(e);
    }
}

/// The process options a spec sets, for `inspect --pretty` (one line each).
pub fn print_process(c: &ContainerSpec) {
    let list = |name: &str, v: &[String]| {
        if !v.is_empty() {
            println!(" {name}:\t{}", v.join(", "));
        }
    };
    for m in &c.mounts {
        let ro = if m.readonly { " (read-only)" } else { "" };
        match m.r#type.as_str() {
            "tmpfs" => println!(" Mount:\t\ttmpfs at {}{ro}", m.target),
            t => println!(" Mount:\t\t{t} {} at {}{ro}", m.source, m.target),
        }
    }
    list("DNS", &c.dns_nameservers);
    list("DNS search", &c.dns_search);
    list("DNS options", &c.dns_options);
    list("Hosts", &c.hosts);
    let sorted: std::collections::BTreeMap<_, _> = c.sysctls.iter().collect();
    let sysctls: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
    list("Sysctls", &sysctls);
    let ulimits: Vec<String> = c
        .ulimits
        .iter()
        .map(|u| format!("{}={}:{}", u.name, u.soft, u.hard))
        .collect();
    list("Ulimits", &ulimits);
    if !c.stop_signal.is_empty() {
        println!(" Stop signal:\t{}", c.stop_signal);
    }
    if c.tty {
        println!(" TTY:\t\ttrue");
    }
    list("Groups", &c.groups);
}

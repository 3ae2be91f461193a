//! Which keys a compose file (schema 3.13, the superset of 3.0–3.13) may have, and the
//! keys `docker stack deploy` refuses, ignores with a warning, or calls deprecated.

use crate::yaml::Node;

/// The keys a mapping may have. `Fixed` applies to a mapping, and to each mapping in a
/// list (the long form of `ports`, `volumes`, ...); `Free` is a mapping of names to
/// values of a shape (or a list of names).
pub enum Shape {
    Any,
    Fixed(&'static [(&'static str, &'static Shape)]),
    Free(&'static Shape),
}

use Shape::{Any, Fixed, Free};

static HEALTHCHECK: Shape = Fixed(&[
    ("test", &Any),
    ("interval", &Any),
    ("timeout", &Any),
    ("retries", &Any),
    ("start_period", &Any),
    ("start_interval", &Any),
    ("disable", &Any),
]);

static RESOURCE: Shape = Fixed(&[
    ("cpus", &Any),
    ("memory", &Any),
    ("pids", &Any),
    ("generic_resources", &GENERIC),
]);
static GENERIC: Shape = Fixed(&[(
    "discrete_resource_spec",
    &Fixed(&[("kind", &Any), ("value", &Any)]),
)]);

static UPDATE: Shape = Fixed(&[
    ("parallelism", &Any),
    ("delay", &Any),
    ("failure_action", &Any),
    ("monitor", &Any),
    ("max_failure_ratio", &Any),
    ("order", &Any),
]);

static DEPLOY: Shape = Fixed(&[
    ("mode", &Any),
    ("endpoint_mode", &Any),
    ("replicas", &Any),
    ("labels", &Any),
    ("rollback_config", &UPDATE),
    ("update_config", &UPDATE),
    (
        "resources",
        &Fixed(&[("limits", &RESOURCE), ("reservations", &RESOURCE)]),
    ),
    (
        "restart_policy",
        &Fixed(&[
            ("condition", &Any),
            ("delay", &Any),
            ("max_attempts", &Any),
            ("window", &Any),
        ]),
    ),
    (
        "placement",
        &Fixed(&[
            ("constraints", &Any),
            ("preferences", &Fixed(&[("spread", &Any)])),
            ("max_replicas_per_node", &Any),
        ]),
    ),
]);

static PORT: Shape = Fixed(&[
    ("mode", &Any),
    ("target", &Any),
    ("published", &Any),
    ("protocol", &Any),
]);

static VOLUME_MOUNT: Shape = Fixed(&[
    ("type", &Any),
    ("source", &Any),
    ("target", &Any),
    ("read_only", &Any),
    ("consistency", &Any),
    ("bind", &Fixed(&[("propagation", &Any)])),
    ("volume", &Fixed(&[("nocopy", &Any)])),
    ("tmpfs", &Fixed(&[("size", &Any)])),
]);

static FILE_REF: Shape = Fixed(&[
    ("source", &Any),
    ("target", &Any),
    ("uid", &Any),
    ("gid", &Any),
    ("mode", &Any),
]);

static SERVICE_NETWORK: Shape = Fixed(&[
    ("aliases", &Any),
    ("ipv4_address", &Any),
    ("ipv6_address", &Any),
    ("driver_opts", &Any),
]);

static ULIMIT: Shape = Fixed(&[("soft", &Any), ("hard", &Any)]);

static DEPENDS_ON: Shape = Free(&Fixed(&[
    ("condition", &Any),
    ("restart", &Any),
    ("required", &Any),
]));

/// A service's keys: swarm's 3.13 schema, and `depends_on`'s long form (which swarm
/// refuses and shoal honours).
pub static SERVICE: Shape = Fixed(&[
    ("deploy", &DEPLOY),
    ("build", &Any),
    ("cap_add", &Any),
    ("cap_drop", &Any),
    ("cgroupns_mode", &Any),
    ("cgroup_parent", &Any),
    ("command", &Any),
    ("configs", &FILE_REF),
    ("container_name", &Any),
    ("credential_spec", &Any),
    ("depends_on", &DEPENDS_ON),
    ("devices", &Any),
    ("dns", &Any),
    ("dns_search", &Any),
    ("domainname", &Any),
    ("entrypoint", &Any),
    ("env_file", &Any),
    ("environment", &Any),
    ("expose", &Any),
    ("external_links", &Any),
    ("extra_hosts", &Any),
    ("healthcheck", &HEALTHCHECK),
    ("hostname", &Any),
    ("image", &Any),
    ("init", &Any),
    ("ipc", &Any),
    ("isolation", &Any),
    ("labels", &Any),
    ("links", &Any),
    ("logging", &Fixed(&[("driver", &Any), ("options", &Any)])),
    ("mac_address", &Any),
    ("network_mode", &Any),
    ("networks", &Free(&SERVICE_NETWORK)),
    ("oom_score_adj", &Any),
    ("pid", &Any),
    ("ports", &PORT),
    ("privileged", &Any),
    ("read_only", &Any),
    ("restart", &Any),
    ("secrets", &FILE_REF),
    ("security_opt", &Any),
    ("shm_size", &Any),
    ("stdin_open", &Any),
    ("stop_grace_period", &Any),
    ("stop_signal", &Any),
    ("sysctls", &Any),
    ("tmpfs", &Any),
    ("tty", &Any),
    ("ulimits", &Free(&ULIMIT)),
    ("user", &Any),
    ("userns_mode", &Any),
    ("volumes", &VOLUME_MOUNT),
    ("working_dir", &Any),
]);

static NETWORK: Shape = Fixed(&[
    ("name", &Any),
    ("driver", &Any),
    ("driver_opts", &Any),
    (
        "ipam",
        &Fixed(&[
            ("driver", &Any),
            (
                "config",
                &Fixed(&[
                    ("subnet", &Any),
                    ("gateway", &Any),
                    ("ip_range", &Any),
                    ("aux_addresses", &Any),
                ]),
            ),
        ]),
    ),
    ("external", &EXTERNAL),
    ("internal", &Any),
    ("attachable", &Any),
    ("labels", &Any),
]);

static EXTERNAL: Shape = Fixed(&[("name", &Any)]);

static VOLUME: Shape = Fixed(&[
    ("name", &Any),
    ("driver", &Any),
    ("driver_opts", &Any),
    ("external", &EXTERNAL),
    ("labels", &Any),
    ("x-cluster-spec", &Any),
]);

static SECRET: Shape = Fixed(&[
    ("name", &Any),
    ("file", &Any),
    ("external", &EXTERNAL),
    ("labels", &Any),
    ("driver", &Any),
    ("driver_opts", &Any),
    ("template_driver", &Any),
]);

static CONFIG: Shape = Fixed(&[
    ("name", &Any),
    ("file", &Any),
    ("external", &EXTERNAL),
    ("labels", &Any),
    ("template_driver", &Any),
]);

/// The top level of a file.
pub static FILE: Shape = Fixed(&[
    ("version", &Any),
    ("services", &Free(&SERVICE)),
    ("networks", &Free(&NETWORK)),
    ("volumes", &Free(&VOLUME)),
    ("secrets", &Free(&SECRET)),
    ("configs", &Free(&CONFIG)),
]);

/// Service keys swarm refuses, with its explanation.
pub const REFUSED: &[(&str, &str)] = &[
    ("cpu_quota", RESOURCES_HINT),
    ("cpu_shares", RESOURCES_HINT),
    ("cpuset", RESOURCES_HINT),
    ("extends", "Support for `extends` is not implemented yet."),
    ("mem_limit", RESOURCES_HINT),
    ("memswap_limit", RESOURCES_HINT),
    (
        "volume_driver",
        "Instead of setting the volume driver on the service, define a volume using the top-level `volumes` option and specify the driver there.",
    ),
    (
        "volumes_from",
        "To share a volume between services, define it using the top-level `volumes` option and reference it from each service that shares it using the service-level `volumes` option.",
    ),
];

const RESOURCES_HINT: &str = "Set resource limits using deploy.resources";

/// Service keys swarm ignores with `Ignoring unsupported options: ...` (`restart` is
/// still used when `deploy.restart_policy` is absent).
pub const IGNORED: &[&str] = &[
    "build",
    "cgroup_parent",
    "cgroupns_mode",
    "devices",
    "domainname",
    "external_links",
    "ipc",
    "links",
    "mac_address",
    "network_mode",
    "pid",
    "privileged",
    "restart",
    "security_opt",
    "shm_size",
    "userns_mode",
];

/// Service keys swarm calls deprecated, with its explanation.
pub const DEPRECATED: &[(&str, &str)] = &[
    (
        "container_name",
        "Setting the container name is not supported.",
    ),
    (
        "expose",
        "Exposing ports is unnecessary - services on the same network can access each other's containers on any port.",
    ),
];

/// Every key of `n` (at `path`) that the shape does not allow, as
/// `services.web Additional property profiles is not allowed` with its line.
pub fn check(n: &Node, shape: &Shape, path: &str, out: &mut Vec<(usize, String)>) {
    match shape {
        Any => {}
        Fixed(keys) => {
            if let Some(items) = n.seq() {
                for (i, item) in items.iter().enumerate() {
                    if item.map().is_some() {
                        check(item, shape, &format!("{path}.{i}"), out);
                    }
                }
                return;
            }
            for e in n.map().unwrap_or_default() {
                match keys.iter().find(|(k, _)| *k == e.key) {
                    Some((_, sub)) => check(&e.value, sub, &join(path, &e.key), out),
                    None if e.key.starts_with("x-") => {}
                    None => out.push((
                        e.line,
                        format!(
                            "{} Additional property {} is not allowed",
                            if path.is_empty() { "(root)" } else { path },
                            e.key
                        ),
                    )),
                }
            }
        }
        Free(sub) => {
            for e in n.map().unwrap_or_default() {
                check(&e.value, sub, &join(path, &e.key), out);
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

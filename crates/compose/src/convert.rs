//! A loaded compose file turned into what `shoal stack deploy` creates: secrets,
//! configs, networks and services, named and labelled as swarm names and labels them
//! (`STACK_NAME`, `com.docker.stack.namespace=STACK`), services in the order their
//! `depends_on` asks for.

use crate::yaml::{Node, V};
use crate::{Error, Loaded};
use shoal_proto::objects::{
    ContainerSpec, FailureAction, HealthCheck, Mount, NetworkAttachmentConfig, NetworkSpec,
    Placement, PortConfig, Resources, RestartCondition, RestartPolicy, SecretReference,
    ServiceMode, ServiceSpec, UpdateConfig, UpdateOrder,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The label every object of a stack carries.
pub const NAMESPACE_LABEL: &str = shoal_proto::STACK_LABEL;
/// The image as the file wrote it, on each service.
pub const IMAGE_LABEL: &str = "com.docker.stack.image";

/// Everything a deploy creates or updates.
#[derive(Debug, Default)]
pub struct Plan {
    pub secrets: Vec<FilePlan>,
    pub configs: Vec<FilePlan>,
    pub networks: Vec<NetworkPlan>,
    /// In an order where every service comes after those it depends on.
    pub services: Vec<ServicePlan>,
    pub warnings: Vec<String>,
}

#[derive(Debug)]
pub struct FilePlan {
    /// The name in the cluster (`STACK_key`, `name:`, or the external name).
    pub name: String,
    pub external: bool,
    pub data: Vec<u8>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct NetworkPlan {
    pub name: String,
    pub external: bool,
    pub spec: NetworkSpec,
}

#[derive(Debug)]
pub struct ServicePlan {
    /// Its name in the file.
    pub short: String,
    pub spec: ServiceSpec,
    /// Full names of the services it waits for, and for what.
    pub depends_on: Vec<(String, Condition)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    Started,
    Healthy,
    CompletedSuccessfully,
}

impl Condition {
    pub fn name(self) -> &'static str {
        match self {
            Condition::Started => "service_started",
            Condition::Healthy => "service_healthy",
            Condition::CompletedSuccessfully => "service_completed_successfully",
        }
    }
}

type R<T> = Result<T, Error>;

/// Service keys swarm converts but that mean nothing on shoal; ignored with a warning.
/// (`stdin_open`: nothing attaches to a service task's stdin; `task exec -i` is the way
/// in.)
const NOT_USED: &[&str] = &[
    "credential_spec",
    "isolation",
    "logging",
    "oom_score_adj",
    "stdin_open",
];

struct Cx<'a> {
    l: &'a Loaded,
    stack: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Cx<'_> {
    fn err(&self, n: &Node, path: &str, msg: impl std::fmt::Display) -> Error {
        let name = self.l.files.get(n.file).map(String::as_str).unwrap_or("?");
        if n.line == 0 {
            Error(format!("{path}: {msg}"))
        } else {
            Error(format!("{path}: {msg} ({name}, line {})", n.line))
        }
    }

    fn string(&self, n: &Node, path: &str) -> R<String> {
        n.scalar()
            .ok_or_else(|| self.err(n, path, format!("must be a string, not {}", n.kind())))
    }

    /// A string or a list of strings.
    fn strings(&self, n: &Node, path: &str) -> R<Vec<String>> {
        match &n.v {
            V::Null => Ok(Vec::new()),
            V::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, x)| self.string(x, &format!("{path}.{i}")))
                .collect(),
            _ => Ok(vec![self.string(n, path)?]),
        }
    }

    fn u64(&self, n: &Node, path: &str) -> R<u64> {
        match &n.v {
            V::Int(i) if *i >= 0 => Ok(*i as u64),
            V::Str(s) => s
                .trim()
                .parse()
                .map_err(|_| self.err(n, path, "must be a whole number, 0 or more")),
            _ => Err(self.err(n, path, "must be a whole number, 0 or more")),
        }
    }

    /// One of the named values: `"x" is not a, b or c` otherwise.
    fn choice<T: Copy>(&self, n: &Node, path: &str, options: &[(&str, T)]) -> R<T> {
        let s = self.string(n, path)?;
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == s) {
            return Ok(*v);
        }
        let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
        let (last, rest) = names.split_last().unwrap_or((&"", &[]));
        Err(self.err(
            n,
            path,
            format!("{s:?} is not {} or {last}", rest.join(", ")),
        ))
    }

    fn i64(&self, n: &Node, path: &str) -> R<i64> {
        match &n.v {
            V::Int(i) => Ok(*i),
            V::Str(s) => s
                .trim()
                .parse()
                .map_err(|_| self.err(n, path, "must be a whole number")),
            _ => Err(self.err(n, path, "must be a whole number")),
        }
    }

    fn bool(&self, n: &Node, path: &str) -> R<bool> {
        match &n.v {
            V::Bool(b) => Ok(*b),
            V::Str(s) if s.eq_ignore_ascii_case("true") => Ok(true),
            V::Str(s) if s.eq_ignore_ascii_case("false") => Ok(false),
            _ => Err(self.err(n, path, "must be true or false")),
        }
    }

    fn f64(&self, n: &Node, path: &str) -> R<f64> {
        match &n.v {
            V::Int(i) => Ok(*i as f64),
            V::Float(f) => Ok(*f),
            V::Str(s) => s
                .trim()
                .parse()
                .map_err(|_| self.err(n, path, format!("{s:?} is not a number"))),
            _ => Err(self.err(n, path, "must be a number")),
        }
    }

    fn duration_ms(&self, n: &Node, path: &str) -> R<u64> {
        let s = self.string(n, path)?;
        go_duration_ms(&s).ok_or_else(|| {
            self.err(
                n,
                path,
                format!("{s:?} is not a duration like 10s, 1m30s or 500ms"),
            )
        })
    }

    fn bytes(&self, n: &Node, path: &str) -> R<i64> {
        let s = self.string(n, path)?;
        parse_bytes(&s)
            .ok_or_else(|| self.err(n, path, format!("{s:?} is not a size like 512M or 1G")))
    }

    /// A mapping of strings, or a list of `K=V` (a `K` alone, or a null value, is None).
    fn kv(&self, n: &Node, path: &str) -> R<Vec<(String, Option<String>)>> {
        match &n.v {
            V::Null => Ok(Vec::new()),
            V::Map(m) => m
                .iter()
                .map(|e| {
                    Ok((
                        e.key.clone(),
                        match e.value.v {
                            V::Null => None,
                            _ => Some(self.string(&e.value, &format!("{path}.{}", e.key))?),
                        },
                    ))
                })
                .collect(),
            V::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    let s = self.string(x, &format!("{path}.{i}"))?;
                    Ok(match s.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (s, None),
                    })
                })
                .collect(),
            _ => Err(self.err(n, path, "must be a mapping or a list of KEY=VALUE")),
        }
    }

    fn labels(&self, n: Option<&Node>, path: &str) -> R<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        if let Some(n) = n {
            for (k, v) in self.kv(n, path)? {
                out.insert(k, v.unwrap_or_default());
            }
        }
        out.insert(NAMESPACE_LABEL.to_string(), self.stack.to_string());
        Ok(out)
    }

    fn path_of(&self, rel: &str) -> std::path::PathBuf {
        if let Some(rest) = rel.strip_prefix("~/") {
            if let Some(home) = (self.env)("HOME") {
                return Path::new(&home).join(rest);
            }
        }
        self.l.dir.join(rel)
    }
}

/// A Go duration (`1h2m3.5s`, `500ms`, `10s`) in milliseconds.
pub fn go_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    if s == "0" {
        return Some(0);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let num: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let ms = match &rest[..u] {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1000.0,
            "ms" => 1.0,
            "us" | "µs" => 0.001,
            "ns" => 0.000_001,
            _ => return None,
        };
        total += num * ms;
        rest = &rest[u..];
    }
    Some(total.round() as u64)
}

/// `512M`, `1g`, `64MiB`, `100k`, `1048576` → bytes.
pub fn parse_bytes(s: &str) -> Option<i64> {
    shoal_proto::options::parse_bytes(s).ok()
}

/// The plan for deploying `loaded` as stack `stack`; `env` gives the values of
/// `environment:` entries without one.
pub fn plan(loaded: &Loaded, stack: &str, env: &dyn Fn(&str) -> Option<String>) -> R<Plan> {
    // Its objects are named STACK_NAME, and a service name is letters, digits, '-'
    // and '_'.
    if !stack.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !stack
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error(format!("invalid stack name: {stack:?}")));
    }
    let cx = Cx {
        l: loaded,
        stack,
        env,
    };
    let root = &loaded.tree;
    let mut plan = Plan::default();
    let secrets = files(&cx, root.get("secrets"), "secrets", &mut plan.secrets)?;
    let configs = files(&cx, root.get("configs"), "configs", &mut plan.configs)?;
    let networks = networks(&cx, root.get("networks"), &mut plan.networks)?;
    let volumes = volume_defs(&cx, root.get("volumes"))?;
    let services = root.get("services").and_then(Node::map).unwrap_or_default();
    let mut not_used = BTreeSet::new();
    let mut uses_default = false;
    let mut planned = Vec::new();
    for e in services {
        let path = format!("services.{}", e.key);
        for k in e.value.map().unwrap_or_default() {
            if NOT_USED.contains(&k.key.as_str()) {
                not_used.insert(k.key.clone());
            }
        }
        let (spec, default_net) = service(
            &cx,
            &e.key,
            &e.value,
            &path,
            &Refs {
                secrets: &secrets,
                configs: &configs,
                networks: &networks,
                volumes: &volumes,
            },
        )?;
        uses_default |= default_net;
        let depends_on = depends_on(&cx, &e.value, &path, services)?;
        planned.push(ServicePlan {
            short: e.key.clone(),
            spec,
            depends_on,
        });
    }
    if uses_default
        && !plan
            .networks
            .iter()
            .any(|n| n.name == format!("{stack}_default"))
    {
        plan.networks.push(NetworkPlan {
            name: format!("{stack}_default"),
            external: false,
            spec: NetworkSpec {
                name: format!("{stack}_default"),
                driver: "overlay".into(),
                labels: [(NAMESPACE_LABEL.to_string(), stack.to_string())].into(),
                ..Default::default()
            },
        });
    }
    // Networks nobody uses are not created (as swarm).
    let used: BTreeSet<String> = planned
        .iter()
        .flat_map(|s| {
            s.spec
                .container
                .iter()
                .flat_map(|c| c.networks.iter().map(|n| n.target.clone()))
        })
        .collect();
    plan.networks
        .retain(|n| n.external || used.contains(&n.name));
    plan.services = order(planned)?;
    if !not_used.is_empty() {
        plan.warnings.push(format!(
            "Ignoring options shoal does not use: {}\n",
            not_used.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(plan)
}

/// Names in the file → names in the cluster.
type Names = BTreeMap<String, String>;

struct Refs<'a> {
    secrets: &'a Names,
    configs: &'a Names,
    networks: &'a Names,
    volumes: &'a Volumes,
}

/// Top-level volumes: the name in the file → the name on the nodes, and the labels a
/// volume gets when a task creates it (none for an external one).
type Volumes = BTreeMap<String, (String, BTreeMap<String, String>)>;

fn volume_defs(cx: &Cx, defs: Option<&Node>) -> R<Volumes> {
    let mut out = Volumes::new();
    for e in defs.and_then(Node::map).unwrap_or_default() {
        let path = format!("volumes.{}", e.key);
        let def = &e.value;
        if let Some(d) = def.get("driver") {
            let d = cx.string(d, &format!("{path}.driver"))?;
            if d != "local" {
                return Err(cx.err(
                    def.get("driver").unwrap_or(def),
                    &format!("{path}.driver"),
                    format!(
                        "driver {d:?} is not supported: shoal's volumes are local to their node"
                    ),
                ));
            }
        }
        if let Some(o) = def.get("driver_opts") {
            return Err(cx.err(
                o,
                &format!("{path}.driver_opts"),
                "driver_opts is not supported: a volume is a directory on its node",
            ));
        }
        let given = def
            .get("name")
            .map(|n| cx.string(n, &format!("{path}.name")))
            .transpose()?;
        let ext = external(cx, def, &path)?;
        let name = match (&ext, given) {
            (Some(Some(n)), _) => n.clone(),
            (_, Some(n)) => n,
            (Some(None), None) => e.key.clone(),
            (None, None) => format!("{}_{}", cx.stack, e.key),
        };
        shoal_proto::options::check_volume_name(&name).map_err(|m| cx.err(def, &path, m))?;
        let labels = match ext {
            Some(_) => BTreeMap::new(),
            None => cx.labels(def.get("labels"), &format!("{path}.labels"))?,
        };
        out.insert(e.key.clone(), (name, labels));
    }
    Ok(out)
}

/// `external: true`, `external: {name: N}`, or absent.
fn external(cx: &Cx, def: &Node, path: &str) -> R<Option<Option<String>>> {
    let Some(x) = def.get("external") else {
        return Ok(None);
    };
    if let Some(name) = x.get("name") {
        return Ok(Some(Some(
            cx.string(name, &format!("{path}.external.name"))?,
        )));
    }
    Ok(cx.bool(x, &format!("{path}.external"))?.then_some(None))
}

fn files(cx: &Cx, defs: Option<&Node>, kind: &str, out: &mut Vec<FilePlan>) -> R<Names> {
    let mut names = Names::new();
    for e in defs.and_then(Node::map).unwrap_or_default() {
        let path = format!("{kind}.{}", e.key);
        let def = &e.value;
        for k in ["driver", "driver_opts", "template_driver"] {
            if let Some(n) = def.get(k) {
                return Err(cx.err(n, &path, format!("{k} is not supported by shoal")));
            }
        }
        let given = def
            .get("name")
            .map(|n| cx.string(n, &format!("{path}.name")))
            .transpose()?;
        let ext = external(cx, def, &path)?;
        let name = match (&ext, given) {
            (Some(Some(n)), _) => n.clone(),
            (_, Some(n)) => n,
            (Some(None), None) => e.key.clone(),
            (None, None) => format!("{}_{}", cx.stack, e.key),
        };
        let data = match (&ext, def.get("file")) {
            (Some(_), _) => Vec::new(),
            (None, Some(f)) => {
                let rel = cx.string(f, &format!("{path}.file"))?;
                let p = cx.path_of(&rel);
                std::fs::read(&p).map_err(|err| {
                    cx.err(
                        f,
                        &format!("{path}.file"),
                        format!("cannot read {}: {err}", p.display()),
                    )
                })?
            }
            (None, None) => {
                return Err(cx.err(
                    def,
                    &path,
                    "needs file: (the data) or external: true (one that exists already)",
                ))
            }
        };
        names.insert(e.key.clone(), name.clone());
        out.push(FilePlan {
            name,
            external: ext.is_some(),
            data,
            labels: cx.labels(def.get("labels"), &format!("{path}.labels"))?,
        });
    }
    Ok(names)
}

fn networks(cx: &Cx, defs: Option<&Node>, out: &mut Vec<NetworkPlan>) -> R<Names> {
    let mut names = Names::new();
    for e in defs.and_then(Node::map).unwrap_or_default() {
        let path = format!("networks.{}", e.key);
        let def = &e.value;
        let given = def
            .get("name")
            .map(|n| cx.string(n, &format!("{path}.name")))
            .transpose()?;
        let ext = external(cx, def, &path)?;
        let name = match (&ext, given) {
            (Some(Some(n)), _) => n.clone(),
            (_, Some(n)) => n,
            (Some(None), None) => e.key.clone(),
            (None, None) => format!("{}_{}", cx.stack, e.key),
        };
        let mut spec = NetworkSpec {
            name: name.clone(),
            driver: "overlay".into(),
            ..Default::default()
        };
        if ext.is_none() {
            if let Some(d) = def.get("driver") {
                let d = cx.string(d, &format!("{path}.driver"))?;
                if d != "overlay" {
                    return Err(cx.err(
                        def.get("driver").unwrap_or(def),
                        &format!("{path}.driver"),
                        format!(
                            "driver {d:?} is not supported: shoal's networks are overlay networks"
                        ),
                    ));
                }
            }
            if let Some(o) = def.get("driver_opts") {
                for (k, v) in cx.kv(o, &format!("{path}.driver_opts"))? {
                    spec.options.insert(k, v.unwrap_or_default());
                }
            }
            if let Some(cfg) = def
                .get("ipam")
                .and_then(|i| i.get("config"))
                .and_then(Node::seq)
                .and_then(|c| c.first())
            {
                if let Some(s) = cfg.get("subnet") {
                    spec.subnet = cx.string(s, &format!("{path}.ipam.config.0.subnet"))?;
                }
                if let Some(g) = cfg.get("gateway") {
                    spec.gateway = cx.string(g, &format!("{path}.ipam.config.0.gateway"))?;
                }
            }
            if let Some(i) = def.get("internal") {
                spec.internal = cx.bool(i, &format!("{path}.internal"))?;
            }
            if let Some(a) = def.get("attachable") {
                spec.attachable = cx.bool(a, &format!("{path}.attachable"))?;
            }
            spec.labels = cx
                .labels(def.get("labels"), &format!("{path}.labels"))?
                .into_iter()
                .collect();
        }
        names.insert(e.key.clone(), name.clone());
        out.push(NetworkPlan {
            name,
            external: ext.is_some(),
            spec,
        });
    }
    Ok(names)
}

/// One service's spec; true if it joins the stack's default network.
fn service(cx: &Cx, short: &str, n: &Node, path: &str, refs: &Refs) -> R<(ServiceSpec, bool)> {
    let image = match n.get("image") {
        Some(i) => cx.string(i, &format!("{path}.image"))?,
        None => String::new(),
    };
    if image.trim().is_empty() {
        return Err(Error(format!(
            "invalid image reference for service {short}: no image specified"
        )));
    }
    let mut c = ContainerSpec {
        image: image.clone(),
        ..Default::default()
    };
    if let Some(x) = n.get("command") {
        c.args = command(cx, x, &format!("{path}.command"))?;
    }
    if let Some(x) = n.get("entrypoint") {
        c.command = command(cx, x, &format!("{path}.entrypoint"))?;
    }
    c.env = environment(cx, n, path)?;
    for (key, dst) in [
        ("working_dir", &mut c.workdir),
        ("user", &mut c.user),
        ("hostname", &mut c.hostname),
    ] {
        if let Some(x) = n.get(key) {
            *dst = cx.string(x, &format!("{path}.{key}"))?;
        }
    }
    if let Some(x) = n.get("read_only") {
        c.readonly_rootfs = cx.bool(x, &format!("{path}.read_only"))?;
    }
    if let Some(x) = n.get("init") {
        c.no_init = !cx.bool(x, &format!("{path}.init"))?;
    }
    if let Some(x) = n.get("stop_grace_period") {
        c.stop_grace_period_ms = cx.duration_ms(x, &format!("{path}.stop_grace_period"))?;
    }
    for (key, dst) in [("cap_add", &mut c.cap_add), ("cap_drop", &mut c.cap_drop)] {
        if let Some(x) = n.get(key) {
            let names = cx.strings(x, &format!("{path}.{key}"))?;
            *dst = shoal_proto::caps::normalize_all(&names)
                .map_err(|e| cx.err(x, &format!("{path}.{key}"), e))?;
        }
    }
    c.labels = cx
        .labels(n.get("labels"), &format!("{path}.labels"))?
        .into_iter()
        .collect();
    process_options(cx, n, path, &mut c)?;
    if let Some(h) = n.get("healthcheck") {
        c.healthcheck = Some(healthcheck(cx, h, &format!("{path}.healthcheck"))?);
    }
    if let Some(t) = n.get("tmpfs") {
        for (i, s) in cx
            .strings(t, &format!("{path}.tmpfs"))?
            .into_iter()
            .enumerate()
        {
            c.mounts
                .push(tmpfs(cx, t, &format!("{path}.tmpfs.{i}"), &s)?);
        }
    }
    if let Some(v) = n.get("volumes") {
        for (i, item) in v.seq().unwrap_or_default().iter().enumerate() {
            c.mounts.push(volume(
                cx,
                item,
                &format!("{path}.volumes.{i}"),
                refs.volumes,
            )?);
        }
    }
    c.secrets = references(
        cx,
        n.get("secrets"),
        &format!("{path}.secrets"),
        refs.secrets,
        false,
    )?;
    c.configs = references(
        cx,
        n.get("configs"),
        &format!("{path}.configs"),
        refs.configs,
        true,
    )?;
    let default_net = attach(cx, short, n, path, refs.networks, &mut c)?;
    let mut spec = ServiceSpec {
        name: format!("{}_{short}", cx.stack),
        ..Default::default()
    };
    if let Some(p) = n.get("ports") {
        for (i, item) in p.seq().unwrap_or_default().iter().enumerate() {
            spec.ports
                .extend(ports(cx, item, &format!("{path}.ports.{i}"))?);
        }
        spec.ports
            .sort_by_key(|p| (p.published, p.target, p.protocol.clone()));
    }
    let deploy = n.get("deploy");
    spec.labels = cx
        .labels(
            deploy.and_then(|d| d.get("labels")),
            &format!("{path}.deploy.labels"),
        )?
        .into_iter()
        .collect();
    spec.labels.insert(IMAGE_LABEL.to_string(), image);
    spec.restart = restart(cx, n, path)?;
    spec.container = Some(c);
    if let Some(d) = deploy {
        self::deploy(cx, d, &format!("{path}.deploy"), &mut spec)?;
    } else {
        spec.replicas = 1;
    }
    Ok((spec, default_net))
}

/// `dns`, `dns_search`, `extra_hosts`, `sysctls`, `ulimits`, `stop_signal`, `tty`:
/// checked here with the manager's own rules, so a bad value is named with its line.
fn process_options(cx: &Cx, n: &Node, path: &str, c: &mut ContainerSpec) -> R<()> {
    use shoal_proto::options;
    if let Some(x) = n.get("dns") {
        c.dns_nameservers = cx.strings(x, &format!("{path}.dns"))?;
    }
    if let Some(x) = n.get("dns_search") {
        c.dns_search = cx.strings(x, &format!("{path}.dns_search"))?;
    }
    if let Some(x) = n.get("extra_hosts") {
        let p = format!("{path}.extra_hosts");
        let entries = match &x.v {
            // host: ip
            V::Map(_) => cx
                .kv(x, &p)?
                .into_iter()
                .map(|(h, ip)| format!("{h}:{}", ip.unwrap_or_default()))
                .collect(),
            _ => cx.strings(x, &p)?,
        };
        for e in entries {
            c.hosts
                .push(options::parse_host(&e).map_err(|m| cx.err(x, &p, m))?);
        }
    }
    if let Some(x) = n.get("sysctls") {
        let p = format!("{path}.sysctls");
        for (k, v) in cx.kv(x, &p)? {
            c.sysctls.insert(k, v.unwrap_or_default());
        }
    }
    if let Some(x) = n.get("ulimits") {
        let p = format!("{path}.ulimits");
        let Some(m) = x.map() else {
            return Err(cx.err(
                x,
                &p,
                "must be a mapping of NAME: LIMIT or NAME: {soft, hard}",
            ));
        };
        for e in m {
            let ep = format!("{p}.{}", e.key);
            let (soft, hard) = match &e.value.v {
                V::Map(_) => {
                    let get = |k: &str| match e.value.get(k) {
                        Some(v) => cx.i64(v, &format!("{ep}.{k}")),
                        None => Err(cx.err(&e.value, &ep, format!("{k} is required"))),
                    };
                    (get("soft")?, get("hard")?)
                }
                _ => {
                    let v = cx.i64(&e.value, &ep)?;
                    (v, v)
                }
            };
            let u = shoal_proto::objects::Ulimit {
                name: e.key.clone(),
                soft,
                hard,
            };
            options::check_ulimit(&u).map_err(|m| cx.err(&e.value, &ep, m))?;
            c.ulimits.push(u);
        }
    }
    if let Some(x) = n.get("stop_signal") {
        let p = format!("{path}.stop_signal");
        c.stop_signal = options::parse_signal(&cx.string(x, &p)?).map_err(|m| cx.err(x, &p, m))?;
    }
    if let Some(x) = n.get("tty") {
        c.tty = cx.bool(x, &format!("{path}.tty"))?;
    }
    // The rest with the manager's rules, named at the service.
    options::check_spec(c).map_err(|m| cx.err(n, path, m))
}

fn command(cx: &Cx, n: &Node, path: &str) -> R<Vec<String>> {
    match &n.v {
        V::Seq(_) => cx.strings(n, path),
        V::Null => Ok(Vec::new()),
        _ => {
            let s = cx.string(n, path)?;
            shlex::split(&s).ok_or_else(|| {
                cx.err(
                    n,
                    path,
                    format!("cannot split {s:?} into words (an unclosed quote?)"),
                )
            })
        }
    }
}

/// `env_file` (in order), then `environment` over it; an entry without a value takes
/// the deploying shell's, or is left out. Sorted, so a redeploy changes nothing.
fn environment(cx: &Cx, n: &Node, path: &str) -> R<Vec<String>> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut put = |k: String, v: Option<String>| {
        match v.or_else(|| (cx.env)(&k)) {
            Some(v) => env.insert(k, v),
            None => env.remove(&k),
        };
    };
    if let Some(f) = n.get("env_file") {
        for rel in cx.strings(f, &format!("{path}.env_file"))? {
            let p = cx.path_of(&rel);
            let text = std::fs::read_to_string(&p).map_err(|e| {
                cx.err(
                    f,
                    &format!("{path}.env_file"),
                    format!("cannot read {}: {e}", p.display()),
                )
            })?;
            for (k, v) in shoal_proto::options::env_file_entries(&text) {
                put(k, v);
            }
        }
    }
    if let Some(e) = n.get("environment") {
        for (k, v) in cx.kv(e, &format!("{path}.environment"))? {
            put(k, v);
        }
    }
    Ok(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

fn healthcheck(cx: &Cx, h: &Node, path: &str) -> R<HealthCheck> {
    let mut hc = HealthCheck::default();
    let disable = match h.get("disable") {
        Some(d) => cx.bool(d, &format!("{path}.disable"))?,
        None => false,
    };
    if let Some(t) = h.get("test") {
        if disable {
            return Err(cx.err(h, path, "test and disable can't be set at the same time"));
        }
        hc.test = match &t.v {
            V::Seq(_) => cx.strings(t, &format!("{path}.test"))?,
            _ => vec!["CMD-SHELL".into(), cx.string(t, &format!("{path}.test"))?],
        };
        let first = hc.test.first().map(String::as_str).unwrap_or("");
        if !matches!(first, "CMD" | "CMD-SHELL" | "NONE") {
            return Err(cx.err(
                t,
                &format!("{path}.test"),
                "a list must start with CMD, CMD-SHELL or NONE",
            ));
        }
    }
    if disable {
        hc.test = vec!["NONE".into()];
    }
    for (key, dst) in [
        ("interval", &mut hc.interval_ms),
        ("timeout", &mut hc.timeout_ms),
        ("start_period", &mut hc.start_period_ms),
    ] {
        if let Some(x) = h.get(key) {
            *dst = cx.duration_ms(x, &format!("{path}.{key}"))?;
        }
    }
    if let Some(r) = h.get("retries") {
        hc.retries = cx.u64(r, &format!("{path}.retries"))?.min(u32::MAX as u64) as u32;
    }
    Ok(hc)
}

/// `/run` or `/run:size=64m,mode=1777`.
fn tmpfs(cx: &Cx, n: &Node, path: &str, s: &str) -> R<Mount> {
    shoal_proto::options::parse_tmpfs(s).map_err(|e| cx.err(n, path, e))
}

fn volume(cx: &Cx, n: &Node, path: &str, volumes: &Volumes) -> R<Mount> {
    let nocopy = match n.get("volume").and_then(|v| v.get("nocopy")) {
        Some(x) => cx.bool(x, &format!("{path}.volume.nocopy"))?,
        None => false,
    };
    let (kind, source, target, readonly, size) = match &n.v {
        V::Map(_) => {
            let kind = match n.get("type") {
                Some(t) => cx.string(t, &format!("{path}.type"))?,
                None => return Err(cx.err(n, path, "type is required (volume, bind or tmpfs)")),
            };
            let source = n
                .get("source")
                .map(|s| cx.string(s, &format!("{path}.source")))
                .transpose()?
                .unwrap_or_default();
            let target = match n.get("target") {
                Some(t) => cx.string(t, &format!("{path}.target"))?,
                None => return Err(cx.err(n, path, "target is required")),
            };
            let ro = match n.get("read_only") {
                Some(r) => cx.bool(r, &format!("{path}.read_only"))?,
                None => false,
            };
            let size = match n.get("tmpfs").and_then(|t| t.get("size")) {
                Some(s) => match &s.v {
                    V::Int(i) => *i as u64,
                    _ => cx.bytes(s, &format!("{path}.tmpfs.size"))? as u64,
                },
                None => 0,
            };
            (kind, source, target, ro, size)
        }
        _ => {
            let s = cx.string(n, path)?;
            let parts: Vec<&str> = s.split(':').collect();
            let (source, target, mode) = match parts.as_slice() {
                [t] => ("", *t, ""),
                [s, t] => (*s, *t, ""),
                [s, t, m] => (*s, *t, *m),
                _ => return Err(cx.err(n, path, format!("{s:?} is not [SOURCE:]TARGET[:MODE]"))),
            };
            let bind = source.starts_with(['/', '.', '~']);
            let kind = if bind { "bind" } else { "volume" };
            let ro = mode.split(',').any(|m| m == "ro");
            (
                kind.to_string(),
                source.to_string(),
                target.to_string(),
                ro,
                0,
            )
        }
    };
    match kind.as_str() {
        "bind" => {
            let src = if source.starts_with('/') {
                source
            } else {
                cx.path_of(&source).display().to_string()
            };
            Ok(Mount {
                r#type: "bind".into(),
                source: src,
                target,
                readonly,
                ..Default::default()
            })
        }
        "tmpfs" => Ok(Mount {
            r#type: "tmpfs".into(),
            target,
            readonly,
            size_bytes: size,
            ..Default::default()
        }),
        "volume" => {
            let (name, labels) = match source.as_str() {
                // Anonymous: it lives and dies with its task.
                "" => (String::new(), BTreeMap::new()),
                s => volumes
                    .get(s)
                    .cloned()
                    .ok_or_else(|| cx.err(n, path, format!("undefined volume {source:?}")))?,
            };
            Ok(Mount {
                r#type: "volume".into(),
                source: name,
                target,
                readonly,
                volume_nocopy: nocopy,
                volume_labels: labels.into_iter().collect(),
                ..Default::default()
            })
        }
        other => Err(cx.err(
            n,
            path,
            format!("type {other:?} is not volume, bind or tmpfs"),
        )),
    }
}

/// Octal modes: YAML 1.2 reads `0440` as 440, so digits that are all octal are read as
/// octal (as swarm's YAML 1.1 parser reads them).
fn mode(cx: &Cx, n: &Node, path: &str) -> R<u32> {
    let text = cx.string(n, path)?;
    let t = text.trim_start_matches("0o");
    let v = if t.chars().all(|c| ('0'..='7').contains(&c)) {
        u32::from_str_radix(t, 8).ok()
    } else {
        t.parse::<u32>().ok()
    };
    v.filter(|m| *m <= 0o7777)
        .ok_or_else(|| cx.err(n, path, format!("{text:?} is not a file mode like 0440")))
}

fn references(
    cx: &Cx,
    n: Option<&Node>,
    path: &str,
    names: &Names,
    config: bool,
) -> R<Vec<SecretReference>> {
    let kind = if config { "config" } else { "secret" };
    let mut out = Vec::new();
    for (i, item) in n.and_then(Node::seq).unwrap_or_default().iter().enumerate() {
        let p = format!("{path}.{i}");
        let (source, target, uid, gid, m) = match &item.v {
            V::Map(_) => {
                let source = match item.get("source") {
                    Some(s) => cx.string(s, &format!("{p}.source"))?,
                    None => return Err(cx.err(item, &p, "source is required")),
                };
                let target = item
                    .get("target")
                    .map(|t| cx.string(t, &format!("{p}.target")))
                    .transpose()?;
                let num = |k: &str| -> R<u32> {
                    match item.get(k) {
                        Some(x) => cx
                            .string(x, &format!("{p}.{k}"))?
                            .parse()
                            .map_err(|_| cx.err(x, &format!("{p}.{k}"), "must be a number")),
                        None => Ok(0),
                    }
                };
                let m = item
                    .get("mode")
                    .map(|x| mode(cx, x, &format!("{p}.mode")))
                    .transpose()?;
                (source, target, num("uid")?, num("gid")?, m)
            }
            _ => (cx.string(item, &p)?, None, 0, 0, None),
        };
        let Some(name) = names.get(&source) else {
            return Err(cx.err(item, &p, format!("undefined {kind} {source:?}")));
        };
        let target = target.unwrap_or_else(|| {
            if config {
                format!("/{source}")
            } else {
                source.clone()
            }
        });
        out.push(SecretReference {
            secret_name: name.clone(),
            target,
            uid,
            gid,
            mode: m,
            ..Default::default()
        });
    }
    out.sort_by(|a, b| a.target.cmp(&b.target));
    Ok(out)
}

/// The service's networks, each with the service's short name as an alias; true when
/// it has none in the file and so joins the stack's default network.
fn attach(
    cx: &Cx,
    short: &str,
    n: &Node,
    path: &str,
    names: &Names,
    c: &mut ContainerSpec,
) -> R<bool> {
    let mut wanted: Vec<(String, Vec<String>, &Node)> = Vec::new();
    match n.get("networks") {
        None => {}
        Some(x) => match &x.v {
            V::Seq(items) => {
                for (i, it) in items.iter().enumerate() {
                    wanted.push((cx.string(it, &format!("{path}.networks.{i}"))?, vec![], it));
                }
            }
            V::Map(entries) => {
                for e in entries {
                    let aliases = match e.value.get("aliases") {
                        Some(a) => cx.strings(a, &format!("{path}.networks.{}.aliases", e.key))?,
                        None => vec![],
                    };
                    wanted.push((e.key.clone(), aliases, &e.value));
                }
            }
            _ => {
                return Err(cx.err(
                    x,
                    &format!("{path}.networks"),
                    "must be a list or a mapping",
                ))
            }
        },
    }
    if wanted.is_empty() {
        c.networks.push(NetworkAttachmentConfig {
            target: format!("{}_default", cx.stack),
            aliases: vec![short.to_string()],
        });
        return Ok(true);
    }
    let mut default = false;
    for (key, aliases, node) in wanted {
        let target = match names.get(&key) {
            Some(t) => t.clone(),
            None if key == "default" => {
                default = true;
                format!("{}_default", cx.stack)
            }
            None => {
                return Err(cx.err(
                    node,
                    &format!("{path}.networks"),
                    format!("undefined network {key:?}"),
                ))
            }
        };
        let aliases = if target == shoal_proto::HOST_NETWORK {
            vec![]
        } else {
            let mut a = vec![short.to_string()];
            a.extend(aliases.into_iter().filter(|x| x != short));
            a
        };
        c.networks.push(NetworkAttachmentConfig { target, aliases });
    }
    c.networks.sort_by(|a, b| a.target.cmp(&b.target));
    Ok(default)
}

fn ports(cx: &Cx, n: &Node, path: &str) -> R<Vec<PortConfig>> {
    let port = |x: &Node, p: &str| -> R<u32> {
        let v = cx.u64(x, p)?;
        if (1..=65535).contains(&v) {
            Ok(v as u32)
        } else {
            Err(cx.err(x, p, format!("{v} is not a port (1-65535)")))
        }
    };
    if n.map().is_some() {
        let target = match n.get("target") {
            Some(t) => port(t, &format!("{path}.target"))?,
            None => return Err(cx.err(n, path, "target is required")),
        };
        let published = match n.get("published") {
            Some(p) => port(p, &format!("{path}.published"))?,
            None => 0,
        };
        let protocol = match n.get("protocol") {
            Some(p) => cx.string(p, &format!("{path}.protocol"))?.to_lowercase(),
            None => "tcp".into(),
        };
        let mode = match n.get("mode") {
            Some(m) => cx.string(m, &format!("{path}.mode"))?,
            None => "ingress".into(),
        };
        if !matches!(protocol.as_str(), "tcp" | "udp") {
            return Err(cx.err(n, path, format!("protocol {protocol:?} is not tcp or udp")));
        }
        if !matches!(mode.as_str(), "ingress" | "host") {
            return Err(cx.err(n, path, format!("mode {mode:?} is not ingress or host")));
        }
        return Ok(vec![PortConfig {
            protocol,
            target,
            published,
            mode,
        }]);
    }
    let s = cx.string(n, path)?;
    let (spec, protocol) = match s.rsplit_once('/') {
        Some((a, p @ ("tcp" | "udp"))) => (a, p),
        Some((_, p)) => return Err(cx.err(n, path, format!("protocol {p:?} is not tcp or udp"))),
        None => (s.as_str(), "tcp"),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (published, target) = match parts.as_slice() {
        [t] => ("", *t),
        [p, t] => (*p, *t),
        [_ip, _, _] => {
            return Err(cx.err(
                n,
                path,
                format!("{s:?}: publishing on one host address is not supported by shoal (nor swarm); use PUBLISHED:TARGET"),
            ))
        }
        _ => return Err(cx.err(n, path, format!("{s:?} is not [PUBLISHED:]TARGET[/PROTOCOL]"))),
    };
    let range = |r: &str| -> R<(u32, u32)> {
        let bad = || {
            cx.err(
                n,
                path,
                format!("{s:?}: {r:?} is not a port or a range of ports"),
            )
        };
        let (a, b) = r.split_once('-').unwrap_or((r, r));
        let a: u32 = a.parse().map_err(|_| bad())?;
        let b: u32 = b.parse().map_err(|_| bad())?;
        if a == 0 || b < a || b > 65535 {
            return Err(bad());
        }
        Ok((a, b))
    };
    let (t0, t1) = range(target)?;
    let pubs = if published.is_empty() {
        None
    } else {
        let (p0, p1) = range(published)?;
        if p1 - p0 != t1 - t0 {
            return Err(cx.err(n, path, format!("{s:?}: the two ranges differ in length")));
        }
        Some(p0)
    };
    Ok((t0..=t1)
        .map(|t| PortConfig {
            protocol: protocol.to_string(),
            target: t,
            published: pubs.map_or(0, |p0| p0 + (t - t0)),
            mode: "ingress".into(),
        })
        .collect())
}

/// `deploy.restart_policy`, else the service's `restart:` (as swarm converts it).
fn restart(cx: &Cx, n: &Node, path: &str) -> R<Option<RestartPolicy>> {
    if let Some(rp) = n.get("deploy").and_then(|d| d.get("restart_policy")) {
        let p = format!("{path}.deploy.restart_policy");
        let mut r = RestartPolicy::default();
        if let Some(c) = rp.get("condition") {
            r.condition = cx.choice(
                c,
                &format!("{p}.condition"),
                &[
                    ("none", RestartCondition::None),
                    ("on-failure", RestartCondition::OnFailure),
                    ("any", RestartCondition::Any),
                ],
            )? as i32;
        }
        if let Some(d) = rp.get("delay") {
            r.delay_ms = Some(cx.duration_ms(d, &format!("{p}.delay"))?);
        }
        if let Some(m) = rp.get("max_attempts") {
            r.max_attempts = cx.u64(m, &format!("{p}.max_attempts"))?;
        }
        if let Some(w) = rp.get("window") {
            r.window_ms = cx.duration_ms(w, &format!("{p}.window"))?;
        }
        return Ok(Some(r));
    }
    let Some(x) = n.get("restart") else {
        return Ok(None);
    };
    let s = cx.string(x, &format!("{path}.restart"))?;
    let (cond, max) = match s.as_str() {
        "no" | "" => (RestartCondition::None, 0),
        "always" | "unless-stopped" => (RestartCondition::Any, 0),
        "on-failure" => (RestartCondition::OnFailure, 0),
        s => match s.strip_prefix("on-failure:").and_then(|n| n.parse().ok()) {
            Some(n) => (RestartCondition::OnFailure, n),
            None => {
                return Err(cx.err(
                    x,
                    &format!("{path}.restart"),
                    format!("{s:?} is not no, always, unless-stopped or on-failure[:N]"),
                ))
            }
        },
    };
    Ok(Some(RestartPolicy {
        condition: cond as i32,
        max_attempts: max,
        ..Default::default()
    }))
}

fn deploy(cx: &Cx, d: &Node, path: &str, spec: &mut ServiceSpec) -> R<()> {
    let mode = match d.get("mode") {
        Some(m) => cx.string(m, &format!("{path}.mode"))?,
        None => "replicated".into(),
    };
    spec.mode = match mode.as_str() {
        "replicated" => ServiceMode::Replicated,
        "global" => ServiceMode::Global,
        "replicated-job" => ServiceMode::ReplicatedJob,
        "global-job" => ServiceMode::GlobalJob,
        other => return Err(cx.err(d, path, format!("unknown mode: {other}"))),
    } as i32;
    let replicated = matches!(mode.as_str(), "replicated" | "replicated-job");
    match d.get("replicas") {
        Some(r) if !replicated => {
            return Err(cx.err(
                r,
                path,
                "replicas can only be used with replicated or replicated-job mode",
            ))
        }
        Some(r) => spec.replicas = cx.u64(r, &format!("{path}.replicas"))?,
        None => spec.replicas = u64::from(replicated),
    }
    if mode == "replicated-job" {
        spec.max_concurrent = spec.replicas;
    }
    if let Some(e) = d.get("endpoint_mode") {
        let m = cx
            .string(e, &format!("{path}.endpoint_mode"))?
            .to_lowercase();
        if !matches!(m.as_str(), "vip" | "dnsrr") {
            return Err(cx.err(
                e,
                &format!("{path}.endpoint_mode"),
                format!("{m:?} is not vip or dnsrr"),
            ));
        }
        spec.endpoint_mode = m;
    }
    if let Some(r) = d.get("resources") {
        let res = |k: &str| -> R<Option<Resources>> {
            let Some(x) = r.get(k) else { return Ok(None) };
            let p = format!("{path}.resources.{k}");
            if let Some(g) = x.get("generic_resources") {
                return Err(cx.err(g, &p, "generic_resources are not supported by shoal"));
            }
            let mut out = Resources::default();
            if let Some(c) = x.get("cpus") {
                let v = cx.f64(c, &format!("{p}.cpus"))?;
                if v <= 0.0 {
                    return Err(cx.err(c, &format!("{p}.cpus"), "must be more than 0"));
                }
                out.nano_cpus = (v * 1e9) as i64;
            }
            if let Some(m) = x.get("memory") {
                out.memory_bytes = match &m.v {
                    V::Int(i) => *i,
                    _ => cx.bytes(m, &format!("{p}.memory"))?,
                };
            }
            if let Some(pids) = x.get("pids") {
                out.pids = cx.u64(pids, &format!("{p}.pids"))? as i64;
            }
            Ok(Some(out))
        };
        if let Some(l) = res("limits")? {
            if let Some(c) = spec.container.as_mut() {
                c.limits = Some(l);
            }
        }
        spec.reservations = res("reservations")?;
    }
    if let Some(p) = d.get("placement") {
        let pp = format!("{path}.placement");
        let mut pl = Placement::default();
        if let Some(c) = p.get("constraints") {
            pl.constraints = cx.strings(c, &format!("{pp}.constraints"))?;
        }
        for (i, pref) in p
            .get("preferences")
            .and_then(Node::seq)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            match pref.get("spread") {
                Some(s) => pl
                    .spread
                    .push(cx.string(s, &format!("{pp}.preferences.{i}.spread"))?),
                None => {
                    return Err(cx.err(
                        pref,
                        &format!("{pp}.preferences.{i}"),
                        "only spread: is supported",
                    ))
                }
            }
        }
        if let Some(m) = p.get("max_replicas_per_node") {
            pl.max_replicas_per_node = cx.u64(m, &format!("{pp}.max_replicas_per_node"))?;
        }
        spec.placement = Some(pl);
    }
    for (key, dst) in [
        ("update_config", &mut spec.update),
        ("rollback_config", &mut spec.rollback),
    ] {
        if let Some(u) = d.get(key) {
            *dst = Some(update(cx, u, &format!("{path}.{key}"))?);
        }
    }
    Ok(())
}

fn update(cx: &Cx, u: &Node, path: &str) -> R<UpdateConfig> {
    let mut out = UpdateConfig {
        parallelism: Some(1),
        ..Default::default()
    };
    if let Some(p) = u.get("parallelism") {
        out.parallelism = Some(cx.u64(p, &format!("{path}.parallelism"))?);
    }
    if let Some(d) = u.get("delay") {
        out.delay_ms = cx.duration_ms(d, &format!("{path}.delay"))?;
    }
    if let Some(m) = u.get("monitor") {
        out.monitor_ms = Some(cx.duration_ms(m, &format!("{path}.monitor"))?);
    }
    if let Some(r) = u.get("max_failure_ratio") {
        out.max_failure_ratio = cx.f64(r, &format!("{path}.max_failure_ratio"))? as f32;
    }
    if let Some(f) = u.get("failure_action") {
        out.failure_action = cx.choice(
            f,
            &format!("{path}.failure_action"),
            &[
                ("pause", FailureAction::Pause),
                ("continue", FailureAction::Continue),
                ("rollback", FailureAction::Rollback),
            ],
        )? as i32;
    }
    if let Some(o) = u.get("order") {
        out.order = cx.choice(
            o,
            &format!("{path}.order"),
            &[
                ("stop-first", UpdateOrder::StopFirst),
                ("start-first", UpdateOrder::StartFirst),
            ],
        )? as i32;
    }
    Ok(out)
}

fn depends_on(
    cx: &Cx,
    n: &Node,
    path: &str,
    services: &[crate::yaml::Entry],
) -> R<Vec<(String, Condition)>> {
    let Some(d) = n.get("depends_on") else {
        return Ok(Vec::new());
    };
    let p = format!("{path}.depends_on");
    let mut out = Vec::new();
    let mut add = |name: String, cond: Condition, at: &Node| -> R<()> {
        if !services.iter().any(|s| s.key == name) {
            return Err(cx.err(at, &p, format!("unknown service {name:?}")));
        }
        out.push((format!("{}_{name}", cx.stack), cond));
        Ok(())
    };
    match &d.v {
        V::Seq(items) => {
            for it in items {
                add(cx.string(it, &p)?, Condition::Started, it)?;
            }
        }
        V::Map(entries) => {
            for e in entries {
                let cond = match e.value.get("condition") {
                    None => Condition::Started,
                    Some(c) => cx.choice(
                        c,
                        &format!("{p}.{}.condition", e.key),
                        &[
                            ("service_started", Condition::Started),
                            ("service_healthy", Condition::Healthy),
                            (
                                "service_completed_successfully",
                                Condition::CompletedSuccessfully,
                            ),
                        ],
                    )?,
                };
                add(e.key.clone(), cond, &e.value)?;
            }
        }
        _ => return Err(cx.err(d, &p, "must be a list or a mapping")),
    }
    Ok(out)
}

/// Services after those they depend on (by name otherwise); a cycle is an error.
fn order(mut todo: Vec<ServicePlan>) -> R<Vec<ServicePlan>> {
    todo.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    let mut done: Vec<ServicePlan> = Vec::new();
    while !todo.is_empty() {
        let ready = todo.iter().position(|s| {
            s.depends_on
                .iter()
                .all(|(d, _)| done.iter().any(|x| &x.spec.name == d))
        });
        match ready {
            Some(i) => done.push(todo.remove(i)),
            None => {
                let names: Vec<&str> = todo.iter().map(|s| s.short.as_str()).collect();
                return Err(Error(format!(
                    "depends_on makes a cycle among the services {}",
                    names.join(", ")
                )));
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests;

//! Flags of a container spec that `task run`, `service create` and `service update`
//! share: sizes, CPUs, mounts, networks, and the process options (resolver, hosts,
//! sysctls, ulimits, stop signal, terminal, groups, tmpfs).

use clap::Args;
use shoal_proto::objects::{ContainerSpec, Mount, NetworkAttachmentConfig, Ulimit};
use shoal_proto::options;
use std::path::PathBuf;

pub use shoal_proto::options::parse_bytes;

/// `0.5` CPUs → nano CPUs.
pub fn parse_cpus(s: &str) -> Result<i64, String> {
    let n: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of CPUs like 0.5"))?;
    if n <= 0.0 {
        return Err("CPUs must be more than 0".into());
    }
    Ok((n * 1e9) as i64)
}

/// `type=bind,source=/a,target=/b,readonly`, `type=tmpfs,target=/t,tmpfs-size=64m` or
/// `type=volume,source=NAME,target=/d[,volume-nocopy][,volume-label=K=V]`.
pub fn parse_mount(s: &str) -> Result<Mount, String> {
    let mut m = Mount {
        r#type: "bind".into(),
        ..Default::default()
    };
    for part in s.split(',') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        match k {
            "type" => m.r#type = v.to_string(),
            "source" | "src" => m.source = v.to_string(),
            "target" | "dst" | "destination" => m.target = v.to_string(),
            "readonly" | "ro" => m.readonly = v.is_empty() || v == "true" || v == "1",
            "tmpfs-size" => m.size_bytes = parse_bytes(v)? as u64,
            "volume-nocopy" => m.volume_nocopy = v.is_empty() || v == "true" || v == "1",
            "volume-label" => match v.split_once('=') {
                Some((k, val)) if !k.is_empty() => {
                    m.volume_labels.insert(k.to_string(), val.to_string());
                }
                _ => return Err(format!("volume-label {v:?} in {s:?} is not KEY=VALUE")),
            },
            "tmpfs-mode" => {
                m.tmpfs_mode = u32::from_str_radix(v, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| format!("tmpfs-mode {v:?} in {s:?} is not octal like 1777"))?
            }
            _ => return Err(format!("unknown mount option {k:?} in {s:?}")),
        }
    }
    if m.target.is_empty() {
        return Err(format!("mount {s:?} has no target"));
    }
    Ok(m)
}

pub fn parse_network(s: &str) -> Result<NetworkAttachmentConfig, String> {
    if !s.contains('=') {
        return match s.trim() {
            "" => Err("--network needs a network name".into()),
            n => Ok(NetworkAttachmentConfig {
                target: n.to_string(),
                aliases: vec![],
            }),
        };
    }
    let mut n = NetworkAttachmentConfig::default();
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("name" | "target", v)) if !v.is_empty() => n.target = v.to_string(),
            Some(("alias", v)) if !v.is_empty() => n.aliases.push(v.to_string()),
            _ => {
                return Err(format!(
                    "--network {s:?}: {part:?} is not name=NETWORK or alias=NAME"
                ))
            }
        }
    }
    if n.target.is_empty() {
        return Err(format!("--network {s:?}: name=NETWORK is missing"));
    }
    Ok(n)
}

/// A sysctl as `--sysctl` gives it: NAME=VALUE (checked by the manager).
fn sysctl(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("--sysctl {s:?} is not NAME=VALUE")),
    }
}

/// Process options of a container spec (point 4 of the options swarm users use):
/// `service create` and `task run` take them as they are; `service update` takes
/// [`ProcessUpdateFlags`].
#[derive(Args, Clone, Default)]
pub struct ProcessFlags {
    /// Read environment variables from a file: KEY=VALUE lines, # comments; a bare KEY
    /// takes this shell's value (repeatable; --env wins).
    #[arg(long = "env-file")]
    env_file: Vec<PathBuf>,
    /// A nameserver for the tasks' resolv.conf (repeatable; default: the node's).
    #[arg(long = "dns")]
    dns: Vec<String>,
    /// A search domain for the tasks' resolv.conf (repeatable).
    #[arg(long = "dns-search")]
    dns_search: Vec<String>,
    /// A resolver option for the tasks' resolv.conf, like ndots:2 (repeatable).
    #[arg(long = "dns-option")]
    dns_option: Vec<String>,
    /// An entry in the tasks' /etc/hosts: HOSTNAME:IP (repeatable).
    #[arg(long = "host", value_parser = options::parse_host)]
    hosts: Vec<String>,
    /// A kernel parameter of the tasks' own namespaces, NAME=VALUE (repeatable; only the
    /// namespaced, safe set: kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, net.*).
    #[arg(long = "sysctl", value_parser = sysctl)]
    sysctls: Vec<(String, String)>,
    /// A resource limit of the tasks' processes: NAME=SOFT[:HARD], like nofile=1024:2048
    /// (repeatable; -1 is unlimited).
    #[arg(long = "ulimit", value_parser = options::parse_ulimit)]
    ulimits: Vec<Ulimit>,
    /// The signal that asks the tasks to stop (default: the image's STOPSIGNAL, else
    /// SIGTERM).
    #[arg(long = "stop-signal", value_parser = options::parse_signal)]
    stop_signal: Option<String>,
    /// Give the tasks a terminal: their output comes through a pseudo-terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// A supplementary group of the tasks' process: a name in the image's /etc/group or
    /// a number (repeatable).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// A tmpfs mount: PATH[:size=64m,mode=1777,ro] (repeatable).
    #[arg(long = "tmpfs", value_parser = options::parse_tmpfs)]
    tmpfs: Vec<Mount>,
}

/// The environment entries of `--env-file` files, in order.
fn env_files(files: &[PathBuf]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f)
            .map_err(|e| format!("--env-file {}: cannot read it: {e}", f.display()))?;
        for (k, v) in options::env_file_entries(&text) {
            if k.is_empty() || k.contains(char::is_whitespace) {
                return Err(format!(
                    "--env-file {}: {k:?} is not a variable name",
                    f.display()
                ));
            }
            match v.or_else(|| std::env::var(&k).ok()) {
                Some(v) => out.push(format!("{k}={v}")),
                None => continue,
            }
        }
    }
    Ok(out)
}

/// Sets `KEY=VALUE` in `env`, replacing an entry for the same key.
pub fn set_env(env: &mut Vec<String>, entry: &str) {
    let key = entry.split('=').next().unwrap_or("");
    env.retain(|x| x.split('=').next() != Some(key));
    env.push(entry.to_string());
}

impl ProcessFlags {
    /// Applies the flags to a new spec; `--env-file` entries go before `env` (which
    /// --env filled: it wins).
    pub fn apply(&self, c: &mut ContainerSpec) -> Result<(), String> {
        let explicit = std::mem::take(&mut c.env);
        for e in env_files(&self.env_file)?.iter().chain(&explicit) {
            set_env(&mut c.env, e);
        }
        c.dns_nameservers.extend(self.dns.iter().cloned());
        c.dns_search.extend(self.dns_search.iter().cloned());
        c.dns_options.extend(self.dns_option.iter().cloned());
        c.hosts.extend(self.hosts.iter().cloned());
        c.sysctls.extend(self.sysctls.iter().cloned());
        for u in &self.ulimits {
            c.ulimits.retain(|x| x.name != u.name);
            c.ulimits.push(u.clone());
        }
        if let Some(s) = &self.stop_signal {
            c.stop_signal = s.clone();
        }
        c.tty |= self.tty;
        c.groups.extend(self.groups.iter().cloned());
        c.mounts.extend(self.tmpfs.iter().cloned());
        Ok(())
    }
}

/// `service update`'s forms of [`ProcessFlags`]: `-add`/`-rm` for the lists, as swarm
/// has them.
#[derive(Args, Clone, Default)]
pub struct ProcessUpdateFlags {
    /// Add environment variables from a file (as --env-file on create).
    #[arg(long = "env-file")]
    env_file: Vec<PathBuf>,
    /// Add a nameserver.
    #[arg(long = "dns-add")]
    dns_add: Vec<String>,
    /// Remove a nameserver.
    #[arg(long = "dns-rm")]
    dns_rm: Vec<String>,
    #[arg(long = "dns-search-add")]
    dns_search_add: Vec<String>,
    #[arg(long = "dns-search-rm")]
    dns_search_rm: Vec<String>,
    #[arg(long = "dns-option-add")]
    dns_option_add: Vec<String>,
    #[arg(long = "dns-option-rm")]
    dns_option_rm: Vec<String>,
    /// Add an /etc/hosts entry HOSTNAME:IP.
    #[arg(long = "host-add", value_parser = options::parse_host)]
    host_add: Vec<String>,
    /// Remove /etc/hosts entries: HOSTNAME (all its entries) or HOSTNAME:IP.
    #[arg(long = "host-rm")]
    host_rm: Vec<String>,
    /// Add or change a sysctl NAME=VALUE.
    #[arg(long = "sysctl-add", value_parser = sysctl)]
    sysctl_add: Vec<(String, String)>,
    /// Remove a sysctl: NAME.
    #[arg(long = "sysctl-rm")]
    sysctl_rm: Vec<String>,
    /// Add or change a ulimit NAME=SOFT[:HARD].
    #[arg(long = "ulimit-add", value_parser = options::parse_ulimit)]
    ulimit_add: Vec<Ulimit>,
    /// Remove a ulimit: NAME.
    #[arg(long = "ulimit-rm")]
    ulimit_rm: Vec<String>,
    /// The signal that asks the tasks to stop.
    #[arg(long = "stop-signal", value_parser = options::parse_signal)]
    stop_signal: Option<String>,
    /// Give the tasks a terminal.
    #[arg(short = 't', long, conflicts_with = "no_tty")]
    tty: bool,
    /// Take the tasks' terminal away (undoes -t).
    #[arg(long)]
    no_tty: bool,
    /// Add a supplementary group.
    #[arg(long = "group-add")]
    group_add: Vec<String>,
    /// Remove a supplementary group.
    #[arg(long = "group-rm")]
    group_rm: Vec<String>,
    /// Add a tmpfs mount PATH[:size=..,mode=..].
    #[arg(long = "tmpfs", value_parser = options::parse_tmpfs)]
    tmpfs: Vec<Mount>,
    /// Remove a mount (of any type) by its target path.
    #[arg(long = "mount-rm")]
    mount_rm: Vec<String>,
}

/// Removes the entries `rm` names from `list`, failing on one it does not hold.
fn remove_each(flag: &str, list: &mut Vec<String>, rm: &[String]) -> Result<(), String> {
    for r in rm {
        let before = list.len();
        list.retain(|x| x != r);
        if list.len() == before {
            return Err(format!("{flag} {r}: the service has no such entry"));
        }
    }
    Ok(())
}

fn add_each(list: &mut Vec<String>, add: &[String]) {
    for a in add {
        if !list.contains(a) {
            list.push(a.clone());
        }
    }
}

impl ProcessUpdateFlags {
    pub fn apply(&self, c: &mut ContainerSpec) -> Result<(), String> {
        for e in env_files(&self.env_file)? {
            set_env(&mut c.env, &e);
        }
        remove_each("--dns-rm", &mut c.dns_nameservers, &self.dns_rm)?;
        add_each(&mut c.dns_nameservers, &self.dns_add);
        remove_each("--dns-search-rm", &mut c.dns_search, &self.dns_search_rm)?;
        add_each(&mut c.dns_search, &self.dns_search_add);
        remove_each("--dns-option-rm", &mut c.dns_options, &self.dns_option_rm)?;
        add_each(&mut c.dns_options, &self.dns_option_add);
        for r in &self.host_rm {
            let want = options::parse_host(r).ok();
            let before = c.hosts.len();
            c.hosts.retain(|line| match &want {
                Some(w) => line != w,
                None => line.split_whitespace().nth(1) != Some(r.as_str()),
            });
            if c.hosts.len() == before {
                return Err(format!("--host-rm {r}: the service has no such entry"));
            }
        }
        add_each(&mut c.hosts, &self.host_add);
        for k in &self.sysctl_rm {
            if c.sysctls.remove(k).is_none() {
                return Err(format!("--sysctl-rm {k}: the service sets no such sysctl"));
            }
        }
        c.sysctls.extend(self.sysctl_add.iter().cloned());
        for n in &self.ulimit_rm {
            let before = c.ulimits.len();
            c.ulimits.retain(|u| &u.name != n);
            if c.ulimits.len() == before {
                return Err(format!("--ulimit-rm {n}: the service sets no such ulimit"));
            }
        }
        for u in &self.ulimit_add {
            c.ulimits.retain(|x| x.name != u.name);
            c.ulimits.push(u.clone());
        }
        if let Some(s) = &self.stop_signal {
            c.stop_signal = s.clone();
        }
        if self.tty {
            c.tty = true;
        }
        if self.no_tty {
            c.tty = false;
        }
        remove_each("--group-rm", &mut c.groups, &self.group_rm)?;
        add_each(&mut c.groups, &self.group_add);
        for t in &self.mount_rm {
            let before = c.mounts.len();
            c.mounts.retain(|m| &m.target != t);
            if c.mounts.len() == before {
                return Err(format!("--mount-rm {t}: the service has no mount there"));
            }
        }
        for m in &self.tmpfs {
            c.mounts.retain(|x| x.target != m.target);
            c.mounts.push(m.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Create {
        #[command(flatten)]
        p: ProcessFlags,
    }

    #[derive(Parser)]
    struct Update {
        #[command(flatten)]
        p: ProcessUpdateFlags,
    }

    #[test]
    fn create_flags_fill_the_spec_and_env_wins_over_env_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("app.env");
        std::fs::write(&f, "# comment\nA=from-file\nB=2\nSHOAL_TEST_UNSET_VAR\n").unwrap();
        let a = Create::try_parse_from([
            "x",
            "--env-file",
            f.to_str().unwrap(),
            "--dns",
            "10.0.0.2",
            "--dns-search",
            "corp.example",
            "--dns-option",
            "ndots:2",
            "--host",
            "db.local:10.0.0.5",
            "--sysctl",
            "net.core.somaxconn=1024",
            "--ulimit",
            "nofile=1024:2048",
            "--stop-signal",
            "INT",
            "-t",
            "--group",
            "audio",
            "--tmpfs",
            "/run:size=1m",
        ])
        .unwrap();
        let mut c = ContainerSpec {
            env: vec!["A=explicit".into()],
            ..Default::default()
        };
        a.p.apply(&mut c).unwrap();
        assert_eq!(c.env, ["B=2", "A=explicit"]);
        assert_eq!(c.dns_nameservers, ["10.0.0.2"]);
        assert_eq!(c.dns_search, ["corp.example"]);
        assert_eq!(c.dns_options, ["ndots:2"]);
        assert_eq!(c.hosts, ["10.0.0.5 db.local"]);
        assert_eq!(c.sysctls["net.core.somaxconn"], "1024");
        assert_eq!(c.ulimits[0].hard, 2048);
        assert_eq!(c.stop_signal, "SIGINT");
        assert!(c.tty);
        assert_eq!(c.groups, ["audio"]);
        assert_eq!(
            (c.mounts[0].r#type.as_str(), c.mounts[0].size_bytes),
            ("tmpfs", 1 << 20)
        );
        let e = Create::try_parse_from(["x", "--env-file", "/no/such/file"])
            .unwrap()
            .p
            .apply(&mut c)
            .unwrap_err();
        assert!(
            e.contains("/no/such/file") && e.contains("cannot read"),
            "{e}"
        );
        assert!(Create::try_parse_from(["x", "--ulimit", "nofile=9:1"]).is_err());
        assert!(Create::try_parse_from(["x", "--stop-signal", "SIGNOPE"]).is_err());
    }

    #[test]
    fn update_flags_add_and_remove_and_name_what_is_not_there() {
        let mut c = ContainerSpec::default();
        Create::try_parse_from([
            "x",
            "--dns",
            "10.0.0.2",
            "--host",
            "a:10.0.0.1",
            "--host",
            "b:10.0.0.2",
            "--sysctl",
            "kernel.shmmax=1",
            "--ulimit",
            "nproc=5",
            "-t",
            "--tmpfs",
            "/t",
        ])
        .unwrap()
        .p
        .apply(&mut c)
        .unwrap();
        let u = Update::try_parse_from([
            "x",
            "--dns-rm",
            "10.0.0.2",
            "--dns-add",
            "10.0.0.3",
            "--host-rm",
            "a",
            "--sysctl-rm",
            "kernel.shmmax",
            "--ulimit-add",
            "nproc=6:7",
            "--no-tty",
            "--mount-rm",
            "/t",
            "--group-add",
            "7",
        ])
        .unwrap();
        u.p.apply(&mut c).unwrap();
        assert_eq!(c.dns_nameservers, ["10.0.0.3"]);
        assert_eq!(c.hosts, ["10.0.0.2 b"]);
        assert!(c.sysctls.is_empty());
        assert_eq!((c.ulimits.len(), c.ulimits[0].soft), (1, 6));
        assert!(!c.tty && c.mounts.is_empty());
        assert_eq!(c.groups, ["7"]);
        let e = Update::try_parse_from(["x", "--dns-rm", "10.9.9.9"])
            .unwrap()
            .p
            .apply(&mut c)
            .unwrap_err();
        assert!(e.contains("--dns-rm 10.9.9.9"), "{e}");
        assert!(Update::try_parse_from(["x", "-t", "--no-tty"]).is_err());
    }
}

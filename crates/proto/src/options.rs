//! The vocabulary of a `ContainerSpec`'s process options: sysctls (and which are safe),
//! ulimits, stop signals, `/etc/hosts` entries, resolver settings and groups.
//!
//! Why here, as [`crate::caps`]: the CLI and the compose converter parse these, the
//! manager refuses a spec that breaks them (whatever client sent it), and the agent
//! applies them; the crate that defines `ContainerSpec` is the one all of them share.
//! Pure: no I/O.

use crate::objects::{ContainerSpec, Mount, Ulimit};
use std::net::IpAddr;

/// `1g`, `512m`, `64MiB`, `100k`, `1048576` → bytes.
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim().to_ascii_lowercase();
    let digits = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let bad = || format!("{s:?} is not a size like 64m or 1g");
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim().trim_end_matches("ib").trim_end_matches('b') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    Ok((n * mult) as i64)
}

/// `--tmpfs /run` or `/run:size=64m,mode=1777[,ro]` (as `docker run --tmpfs` and
/// compose's `tmpfs:` write it) → a tmpfs mount.
pub fn parse_tmpfs(s: &str) -> Result<Mount, String> {
    let (target, opts) = s.split_once(':').unwrap_or((s, ""));
    let mut m = Mount {
        r#type: "tmpfs".into(),
        target: target.trim().to_string(),
        ..Default::default()
    };
    if !m.target.starts_with('/') {
        return Err(format!("tmpfs {s:?}: the target must be an absolute path"));
    }
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o.split_once('=') {
            Some(("size", v)) => m.size_bytes = parse_bytes(v)?.max(0) as u64,
            Some(("mode", v)) => {
                m.tmpfs_mode = u32::from_str_radix(v, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| format!("tmpfs {s:?}: mode {v:?} is not octal like 1777"))?
            }
            None if o == "ro" || o == "readonly" => m.readonly = true,
            None if o == "rw" => m.readonly = false,
            _ => {
                return Err(format!(
                    "tmpfs {s:?}: option {o:?} is not size=SIZE, mode=OCTAL, ro or rw"
                ))
            }
        }
    }
    Ok(m)
}

/// The entries of an environment file (`--env-file`, compose's `env_file`): `KEY=VALUE`
/// lines taken as they are, `#` comments and blank lines skipped; a bare `KEY` (None)
/// takes the value of the deploying shell's variable, if it has one.
pub fn env_file_entries(text: &str) -> Vec<(String, Option<String>)> {
    text.lines()
        .map(str::trim_start)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (l.trim_end().to_string(), None),
        })
        .collect()
}

/// A volume name, as Docker allows them: a letter or digit, then letters, digits, `_`,
/// `.` and `-` (so no path can be made of one), at most 255 bytes.
pub fn check_volume_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 255
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    match ok {
        true => Ok(()),
        false => Err(format!(
            "volume name {name:?} is not valid: it starts with a letter or digit and has only letters, digits, '_', '.' and '-'"
        )),
    }
}

/// IPC-namespace parameters a task may set (every task has its own IPC namespace).
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Network parameters outside `net.ipv4.*` / `net.ipv6.*` that are per namespace.
const NET_SYSCTLS: &[&str] = &["net.core.somaxconn", "net.unix.max_dgram_qlen"];

/// The set `--sysctl` accepts, as a user reads it in an error.
pub const SAFE_SYSCTLS: &str = "kernel.msgmax, kernel.msgmnb, kernel.msgmni, kernel.sem, \
    kernel.shmall, kernel.shmmax, kernel.shmmni, kernel.shm_rmid_forced, fs.mqueue.*, and, \
    for a task with a network namespace of its own, net.ipv4.*, net.ipv6.*, \
    net.core.somaxconn and net.unix.max_dgram_qlen";

/// Checks one `--sysctl` name and value: namespaced (it changes only the task's own
/// namespaces, never the node's) and in the set Docker and Kubernetes call safe.
/// `host_network`: the task shares its node's network namespace, so no `net.*`.
pub fn check_sysctl(name: &str, value: &str, host_network: bool) -> Result<(), String> {
    let well_formed = !name.is_empty()
        && name.len() <= 128
        && name.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    if !well_formed {
        return Err(format!(
            "sysctl {name:?} is not a kernel parameter name like net.core.somaxconn"
        ));
    }
    if value.is_empty() || value.len() > 256 || value.contains(['\n', '\0']) {
        return Err(format!(
            "sysctl {name}: the value {value:?} must be one line of at most 256 bytes"
        ));
    }
    let net = name.starts_with("net.ipv4.")
        || name.starts_with("net.ipv6.")
        || NET_SYSCTLS.contains(&name);
    if net && host_network {
        return Err(format!(
            "sysctl {name} is refused for a task on the host network: it would change the node's own network settings"
        ));
    }
    if net || IPC_SYSCTLS.contains(&name) || name.starts_with("fs.mqueue.") {
        return Ok(());
    }
    Err(format!(
        "sysctl {name} is refused: it is not in the namespaced, safe set a task may change ({SAFE_SYSCTLS})"
    ))
}

/// `ulimit` names and the resource each limits.
pub const ULIMITS: &[(&str, &str)] = &[
    ("as", "RLIMIT_AS"),
    ("core", "RLIMIT_CORE"),
    ("cpu", "RLIMIT_CPU"),
    ("data", "RLIMIT_DATA"),
    ("fsize", "RLIMIT_FSIZE"),
    ("locks", "RLIMIT_LOCKS"),
    ("memlock", "RLIMIT_MEMLOCK"),
    ("msgqueue", "RLIMIT_MSGQUEUE"),
    ("nice", "RLIMIT_NICE"),
    ("nofile", "RLIMIT_NOFILE"),
    ("nproc", "RLIMIT_NPROC"),
    ("rss", "RLIMIT_RSS"),
    ("rtprio", "RLIMIT_RTPRIO"),
    ("rttime", "RLIMIT_RTTIME"),
    ("sigpending", "RLIMIT_SIGPENDING"),
    ("stack", "RLIMIT_STACK"),
];

/// The `RLIMIT_*` resource a ulimit name limits.
pub fn rlimit_of(name: &str) -> Option<&'static str> {
    ULIMITS.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
}

/// `nofile=1024:2048`, `nproc=512` (soft = hard) or `core=-1` (unlimited).
pub fn parse_ulimit(s: &str) -> Result<Ulimit, String> {
    let (name, values) = s
        .split_once('=')
        .ok_or_else(|| format!("ulimit {s:?} is not NAME=SOFT[:HARD], like nofile=1024:2048"))?;
    let num = |v: &str| {
        v.trim()
            .parse::<i64>()
            .map_err(|_| format!("ulimit {s:?}: {v:?} is not a number (-1 is unlimited)"))
    };
    let (soft, hard) = match values.split_once(':') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(values)?, num(values)?),
    };
    let u = Ulimit {
        name: name.trim().to_string(),
        soft,
        hard,
    };
    check_ulimit(&u)?;
    Ok(u)
}

pub fn check_ulimit(u: &Ulimit) -> Result<(), String> {
    if rlimit_of(&u.name).is_none() {
        let names: Vec<&str> = ULIMITS.iter().map(|(n, _)| *n).collect();
        return Err(format!(
            "ulimit {:?} is not one of {}",
            u.name,
            names.join(", ")
        ));
    }
    let unlimited = |v: i64| v == -1;
    if u.soft < -1 || u.hard < -1 {
        return Err(format!(
            "ulimit {}: limits are numbers, or -1 for unlimited",
            u.name
        ));
    }
    if !unlimited(u.hard) && (unlimited(u.soft) || u.soft > u.hard) {
        return Err(format!(
            "ulimit {}: the soft limit {} is above the hard limit {}",
            u.name, u.soft, u.hard
        ));
    }
    Ok(())
}

/// Signal names and numbers (signal(7), x86 and arm numbering).
const SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGILL", 4),
    ("SIGTRAP", 5),
    ("SIGABRT", 6),
    ("SIGBUS", 7),
    ("SIGFPE", 8),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGSEGV", 11),
    ("SIGUSR2", 12),
    ("SIGPIPE", 13),
    ("SIGALRM", 14),
    ("SIGTERM", 15),
    ("SIGSTKFLT", 16),
    ("SIGCHLD", 17),
    ("SIGCONT", 18),
    ("SIGSTOP", 19),
    ("SIGTSTP", 20),
    ("SIGTTIN", 21),
    ("SIGTTOU", 22),
    ("SIGURG", 23),
    ("SIGXCPU", 24),
    ("SIGXFSZ", 25),
    ("SIGVTALRM", 26),
    ("SIGPROF", 27),
    ("SIGWINCH", 28),
    ("SIGIO", 29),
    ("SIGPWR", 30),
    ("SIGSYS", 31),
];

/// `SIGINT`, `INT`, `int` or `2` → `SIGINT`.
pub fn parse_signal(s: &str) -> Result<String, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        if let Some((name, _)) = SIGNALS.iter().find(|(_, v)| *v == n) {
            return Ok(name.to_string());
        }
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    match SIGNALS.iter().find(|(n, _)| *n == name) {
        Some((n, _)) => Ok(n.to_string()),
        None => Err(format!(
            "stop signal {s:?} is not a signal name like SIGINT or a number like 2"
        )),
    }
}

/// A signal's number, for a name [`parse_signal`] accepts.
pub fn signal_number(s: &str) -> Option<i32> {
    let name = parse_signal(s).ok()?;
    SIGNALS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// `--host db.local:10.0.0.5` (Docker's order, HOST:IP; an IPv6 address may follow the
/// first colon) → the /etc/hosts line `10.0.0.5 db.local`.
pub fn parse_host(s: &str) -> Result<String, String> {
    let (host, ip) = s
        .split_once(':')
        .or_else(|| s.split_once('='))
        .ok_or_else(|| format!("host entry {s:?} is not HOSTNAME:IP"))?;
    let host = host.trim();
    if !is_dns_name(host) {
        return Err(format!("host entry {s:?}: {host:?} is not a hostname"));
    }
    let line = format!("{} {host}", ip.trim());
    check_host(&line)?;
    Ok(line)
}

/// Checks a stored hosts line, `IP HOSTNAME [ALIAS...]`.
pub fn check_host(line: &str) -> Result<(), String> {
    let mut words = line.split_whitespace();
    let ip = words.next().unwrap_or("");
    let names: Vec<&str> = words.collect();
    if ip.parse::<IpAddr>().is_err() {
        return Err(format!(
            "host entry {line:?}: {ip:?} is not an IP address (give HOSTNAME:IP)"
        ));
    }
    if names.is_empty() || names.iter().any(|n| !is_dns_name(n)) {
        return Err(format!("host entry {line:?}: the hostname is not valid"));
    }
    Ok(())
}

fn is_dns_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// Checks a spec's process options (everything this module names), naming the first
/// thing wrong as the flag a user gives.
pub fn check_spec(spec: &ContainerSpec) -> Result<(), String> {
    for ns in &spec.dns_nameservers {
        if ns.parse::<IpAddr>().is_err() {
            return Err(format!("--dns {ns:?} is not an IP address"));
        }
    }
    for d in &spec.dns_search {
        if d != "." && !is_dns_name(d.trim_end_matches('.')) {
            return Err(format!("--dns-search {d:?} is not a domain name"));
        }
    }
    for o in &spec.dns_options {
        if o.is_empty() || o.contains(char::is_whitespace) {
            return Err(format!(
                "--dns-option {o:?} is not a resolver option like ndots:2"
            ));
        }
    }
    for h in &spec.hosts {
        check_host(h).map_err(|e| format!("--host: {e}"))?;
    }
    let host_network = spec.networks.len() == 1 && spec.networks[0].target == crate::HOST_NETWORK;
    let resolver = !spec.dns_nameservers.is_empty()
        || !spec.dns_search.is_empty()
        || !spec.dns_options.is_empty()
        || !spec.hosts.is_empty();
    if host_network && resolver {
        return Err("--dns, --dns-search, --dns-option and --host do not apply on the host network: its tasks use their node's /etc/resolv.conf and /etc/hosts".into());
    }
    for (k, v) in &spec.sysctls {
        check_sysctl(k, v, host_network).map_err(|e| format!("--sysctl: {e}"))?;
    }
    let mut seen = std::collections::HashSet::new();
    for u in &spec.ulimits {
        check_ulimit(u).map_err(|e| format!("--ulimit: {e}"))?;
        if !seen.insert(u.name.as_str()) {
            return Err(format!("--ulimit: {} is given twice", u.name));
        }
    }
    if !spec.stop_signal.is_empty() {
        parse_signal(&spec.stop_signal).map_err(|e| format!("--stop-signal: {e}"))?;
    }
    for g in &spec.groups {
        if g.is_empty()
            || g.len() > 64
            || g.contains([':', '\n'])
            || g.contains(char::is_whitespace)
        {
            return Err(format!("--group {g:?} is not a group name or number"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_tmpfs_and_env_files_parse() {
        assert_eq!(parse_bytes("64m"), Ok(64 << 20));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert!(parse_bytes("5q").is_err());
        let m = parse_tmpfs("/run:size=64m,mode=1770").unwrap();
        assert_eq!(
            (m.target.as_str(), m.size_bytes, m.tmpfs_mode),
            ("/run", 64 << 20, 0o1770)
        );
        assert!(parse_tmpfs("/run:ro").unwrap().readonly);
        assert!(parse_tmpfs("run").is_err());
        assert!(parse_tmpfs("/run:mode=999").is_err());
        assert!(parse_tmpfs("/run:exec").unwrap_err().contains("exec"));
        let e = env_file_entries("# c\n\nA=1\n  B=x=y\nHOME\n");
        assert_eq!(
            e,
            vec![
                ("A".to_string(), Some("1".to_string())),
                ("B".to_string(), Some("x=y".to_string())),
                ("HOME".to_string(), None)
            ]
        );
    }

    #[test]
    fn volume_names_cannot_make_paths() {
        for ok in ["data", "app_db-1.v2", "0"] {
            assert_eq!(check_volume_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "-x", "_x", "a b", ".tasks"] {
            assert!(check_volume_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_namespaced_safe_sysctls_pass_and_a_refusal_names_the_parameter() {
        for ok in [
            "net.core.somaxconn",
            "net.ipv4.ip_local_port_range",
            "net.ipv4.conf.eth0.forwarding",
            "kernel.shmmax",
            "fs.mqueue.msg_max",
        ] {
            assert_eq!(check_sysctl(ok, "1", false), Ok(()), "{ok}");
        }
        for bad in [
            "kernel.panic",
            "vm.overcommit_memory",
            "net.core.rmem_max",
            "fs.file-max",
        ] {
            let e = check_sysctl(bad, "1", false).unwrap_err();
            assert!(e.contains(bad) && e.contains("safe set"), "{e}");
        }
        let e = check_sysctl("net.ipv4.ip_forward", "1", true).unwrap_err();
        assert!(e.contains("host network"), "{e}");
        assert!(check_sysctl("kernel.shmmax", "1", true).is_ok());
        for garbled in ["", "net..core", "net/../../x", "a b"] {
            assert!(check_sysctl(garbled, "1", false).is_err(), "{garbled:?}");
        }
        assert!(check_sysctl("net.core.somaxconn", "1\n2", false).is_err());
    }

    #[test]
    fn ulimits_parse_like_dockers_and_bad_ones_say_why() {
        let u = parse_ulimit("nofile=1024:2048").unwrap();
        assert_eq!((u.name.as_str(), u.soft, u.hard), ("nofile", 1024, 2048));
        let u = parse_ulimit("nproc=512").unwrap();
        assert_eq!((u.soft, u.hard), (512, 512));
        assert!(parse_ulimit("core=-1").is_ok());
        assert!(parse_ulimit("nofile=10:-1").is_ok());
        let e = parse_ulimit("nofile=4096:1024").unwrap_err();
        assert!(e.contains("above the hard limit"), "{e}");
        let e = parse_ulimit("files=1").unwrap_err();
        assert!(e.contains("\"files\"") && e.contains("nofile"), "{e}");
        assert!(parse_ulimit("nofile").is_err());
        assert!(parse_ulimit("nofile=many").is_err());
        assert_eq!(rlimit_of("nofile"), Some("RLIMIT_NOFILE"));
    }

    #[test]
    fn signals_by_name_short_name_or_number() {
        assert_eq!(parse_signal("SIGINT").unwrap(), "SIGINT");
        assert_eq!(parse_signal("quit").unwrap(), "SIGQUIT");
        assert_eq!(parse_signal("10").unwrap(), "SIGUSR1");
        assert_eq!(signal_number("USR2"), Some(12));
        assert!(parse_signal("SIGNOPE").unwrap_err().contains("SIGNOPE"));
        assert!(parse_signal("99").is_err());
    }

    #[test]
    fn host_entries_are_host_then_ip_and_become_hosts_lines() {
        assert_eq!(
            parse_host("db.local:10.0.0.5").unwrap(),
            "10.0.0.5 db.local"
        );
        assert_eq!(parse_host("v6:fd00::1").unwrap(), "fd00::1 v6");
        assert!(parse_host("db.local:not-an-ip")
            .unwrap_err()
            .contains("not an IP"));
        assert!(parse_host("db.local").is_err());
        assert!(parse_host("bad name:10.0.0.1").is_err());
    }

    #[test]
    fn a_spec_with_a_bad_option_names_the_flag() {
        let mut s = ContainerSpec::default();
        assert_eq!(check_spec(&s), Ok(()));
        s.dns_nameservers = vec!["dns.example".into()];
        assert!(check_spec(&s).unwrap_err().starts_with("--dns "));
        s.dns_nameservers = vec!["10.0.0.2".into()];
        s.dns_options = vec!["ndots 2".into()];
        assert!(check_spec(&s).unwrap_err().starts_with("--dns-option"));
        s.dns_options = vec!["ndots:2".into()];
        s.sysctls.insert("kernel.panic".into(), "1".into());
        assert!(check_spec(&s).unwrap_err().contains("kernel.panic"));
        s.sysctls.clear();
        s.ulimits = vec![
            parse_ulimit("nofile=1").unwrap(),
            parse_ulimit("nofile=2").unwrap(),
        ];
        assert!(check_spec(&s).unwrap_err().contains("twice"));
        s.ulimits.clear();
        s.groups = vec!["a b".into()];
        assert!(check_spec(&s).unwrap_err().starts_with("--group"));
        s.groups = vec!["audio".into(), "1234".into()];
        assert_eq!(check_spec(&s), Ok(()));
        s.networks = vec![crate::objects::NetworkAttachmentConfig {
            target: crate::HOST_NETWORK.into(),
            aliases: vec![],
        }];
        assert!(check_spec(&s).unwrap_err().contains("host network"));
    }
}

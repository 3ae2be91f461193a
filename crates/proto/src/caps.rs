//! Linux capability names as `ContainerSpec.cap_add` / `cap_drop` carry them, and the
//! rule that turns a spec's additions and drops into the capabilities a container gets.
//!
//! Why here: the CLI parses `--cap-add`, the manager refuses a spec naming something
//! that is not a capability, and the agent applies the result; the manager may not
//! depend on the agent, and this vocabulary is part of what a `ContainerSpec` means, so
//! the crate that defines `ContainerSpec` is the one place all three share. It is pure
//! (no I/O, no dependencies).

use std::fmt;

/// The value of `--cap-add` / `--cap-drop` meaning every capability, as in Docker.
pub const ALL: &str = "ALL";

/// Every capability the kernel defines, in bit order (capabilities(7); Linux 5.9 added
/// the last one, CAP_CHECKPOINT_RESTORE).
pub const KNOWN: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// What a container gets when its spec adds and drops nothing. Smaller than Docker's 14:
/// shoal has always given only these three, and adding is one flag away.
pub const DEFAULT: [&str; 3] = ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"];

/// A name that is not a capability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownCapability(pub String);

impl fmt::Display for UnknownCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown capability {:?}: use a name from capabilities(7), with or without \
             CAP_ (e.g. NET_ADMIN or CAP_NET_ADMIN), or ALL",
            self.0
        )
    }
}

impl std::error::Error for UnknownCapability {}

/// `net_admin`, `NET_ADMIN` or `cap_net_admin` → `CAP_NET_ADMIN`; `all` → `ALL`.
pub fn normalize(name: &str) -> Result<String, UnknownCapability> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == ALL {
        return Ok(ALL.to_string());
    }
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if KNOWN.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(UnknownCapability(name.to_string()))
    }
}

/// [`normalize`] for each name, refusing at the first that is not a capability.
pub fn normalize_all(names: &[String]) -> Result<Vec<String>, UnknownCapability> {
    names.iter().map(|n| normalize(n)).collect()
}

/// The capabilities a container gets, in kernel order, with Docker's rules
/// (`TweakCapabilities` in moby's `oci/caps`): `ALL` in the additions gives every
/// capability but the dropped ones; else `ALL` in the drops gives only the additions;
/// else the defaults, minus the drops, plus the additions (an addition wins over a drop
/// of the same capability).
pub fn effective(add: &[String], drop: &[String]) -> Result<Vec<&'static str>, UnknownCapability> {
    let add = normalize_all(add)?;
    let drop = normalize_all(drop)?;
    let has = |list: &[String], c: &str| list.iter().any(|x| x == c);
    let keep = |c: &str| {
        if has(&add, ALL) {
            !has(&drop, c)
        } else if has(&drop, ALL) {
            has(&add, c)
        } else {
            has(&add, c) || (DEFAULT.contains(&c) && !has(&drop, c))
        }
    };
    Ok(KNOWN.into_iter().filter(|c| keep(c)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn names_are_accepted_with_or_without_the_prefix_in_any_case() {
        for n in ["NET_ADMIN", "net_admin", "CAP_NET_ADMIN", "Cap_Net_Admin"] {
            assert_eq!(normalize(n).as_deref(), Ok("CAP_NET_ADMIN"));
        }
        assert_eq!(normalize("all").as_deref(), Ok("ALL"));
    }

    #[test]
    fn a_name_that_is_not_a_capability_is_refused_by_name() {
        let e = normalize("NET_ADMN").unwrap_err();
        assert_eq!(e, UnknownCapability("NET_ADMN".into()));
        assert!(e.to_string().contains("\"NET_ADMN\""), "{e}");
        for bad in ["", "CAP_", "CAP_ALL", "SYS ADMIN"] {
            assert!(normalize(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn effective_follows_dockers_rules() {
        let none: Vec<String> = vec![];
        assert_eq!(
            effective(&none, &none).unwrap(),
            ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"]
        );
        assert_eq!(
            effective(&s(&["net_admin"]), &s(&["KILL"])).unwrap(),
            ["CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN", "CAP_AUDIT_WRITE"]
        );
        assert_eq!(effective(&s(&["ALL"]), &none).unwrap().len(), KNOWN.len());
        let all_but = effective(&s(&["ALL"]), &s(&["SYS_ADMIN"])).unwrap();
        assert_eq!(all_but.len(), KNOWN.len() - 1);
        assert!(!all_but.contains(&"CAP_SYS_ADMIN"));
        assert_eq!(
            effective(&s(&["CHOWN"]), &s(&["all"])).unwrap(),
            ["CAP_CHOWN"]
        );
        // Adding wins over dropping the same capability.
        assert_eq!(
            effective(&s(&["SYS_TIME"]), &s(&["SYS_TIME"])).unwrap(),
            [
                "CAP_KILL",
                "CAP_NET_BIND_SERVICE",
                "CAP_SYS_TIME",
                "CAP_AUDIT_WRITE"
            ]
        );
        assert!(effective(&s(&["BOGUS"]), &none).is_err());
    }
}

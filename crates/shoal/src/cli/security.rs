//! CLI: capability flags and what `service inspect` / `task inspect` show of a
//! container's confinement. The settings shown are computed by the agent's
//! [`Hardening`], the code that writes them into the container's config.json, so the
//! view cannot drift from what runs.

use serde_json::{json, Value};
use shoal_agent::runtime::hardening::Hardening;
use shoal_proto::caps;
use shoal_proto::objects::ContainerSpec;

/// `--cap-add` / `--cap-drop` values: `NET_ADMIN`, `cap_net_admin`, `ALL`…
pub fn parse_cap(s: &str) -> Result<String, String> {
    caps::normalize(s).map_err(|e| e.to_string())
}

/// Adds and drops capabilities in a spec, as `docker service update` does: adding one
/// cancels an earlier drop of it and dropping one cancels an earlier addition; given
/// both at once, the addition wins.
pub fn apply_caps(c: &mut ContainerSpec, add: &[String], drop: &[String]) {
    let norm = |v: &mut Vec<String>| {
        for x in v.iter_mut() {
            if let Ok(n) = caps::normalize(x) {
                *x = n;
            }
        }
    };
    norm(&mut c.cap_add);
    norm(&mut c.cap_drop);
    c.cap_drop.retain(|x| !add.contains(x));
    c.cap_add.retain(|x| !drop.contains(x) || add.contains(x));
    for a in add {
        if !c.cap_add.contains(a) {
            c.cap_add.push(a.clone());
        }
    }
    for d in drop {
        if !add.contains(d) && !c.cap_drop.contains(d) {
            c.cap_drop.push(d.clone());
        }
    }
}

/// The effective confinement of a spec, for inspect's JSON.
pub fn security_json(c: &ContainerSpec) -> Value {
    match Hardening::of(&c.cap_add, &c.cap_drop) {
        Ok(h) => json!({
            "Seccomp": h.seccomp,
            "Capabilities": h.capabilities,
            "MaskedPaths": h.masked_paths(),
            "ReadonlyPaths": h.readonly_paths(),
        }),
        // A spec stored before validation existed: its tasks are rejected with this.
        Err(e) => json!({"Error": e.to_string()}),
    }
}

/// The same for `inspect --pretty`.
pub fn print_security(c: &ContainerSpec) {
    if !c.cap_add.is_empty() || !c.cap_drop.is_empty() {
        println!(" Capabilities:");
        if !c.cap_add.is_empty() {
            println!("  Add:\t\t{}", c.cap_add.join(", "));
        }
        if !c.cap_drop.is_empty() {
            println!("  Drop:\t\t{}", c.cap_drop.join(", "));
        }
    }
    println!("Security:");
    match Hardening::of(&c.cap_add, &c.cap_drop) {
        Ok(h) => {
            println!(" Seccomp:\t{}", h.seccomp);
            println!(" Capabilities:\t{}", h.capabilities.join(", "));
            println!(" Masked Paths:\t{}", h.masked_paths().join(" "));
            println!(" Read-only Paths:\t{}", h.readonly_paths().join(" "));
        }
        Err(e) => println!(" Error:\t{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(add: &[&str], drop: &[&str]) -> ContainerSpec {
        ContainerSpec {
            cap_add: add.iter().map(|s| s.to_string()).collect(),
            cap_drop: drop.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn caps(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| parse_cap(s).unwrap()).collect()
    }

    #[test]
    fn updates_add_and_drop_like_docker() {
        let mut c = spec(&[], &[]);
        apply_caps(&mut c, &caps(&["net_admin"]), &caps(&["MKNOD"]));
        assert_eq!(c, spec(&["CAP_NET_ADMIN"], &["CAP_MKNOD"]));
        // Dropping what was added takes it out of the additions.
        apply_caps(&mut c, &[], &caps(&["NET_ADMIN"]));
        assert_eq!(c, spec(&[], &["CAP_MKNOD", "CAP_NET_ADMIN"]));
        // Adding what was dropped takes it out of the drops; both at once, adding wins.
        apply_caps(&mut c, &caps(&["MKNOD", "SYS_TIME"]), &caps(&["SYS_TIME"]));
        assert_eq!(c, spec(&["CAP_MKNOD", "CAP_SYS_TIME"], &["CAP_NET_ADMIN"]));
        // Names stored unnormalized by another client still match.
        let mut c = spec(&["net_admin"], &[]);
        apply_caps(&mut c, &[], &caps(&["CAP_NET_ADMIN"]));
        assert_eq!(c, spec(&[], &["CAP_NET_ADMIN"]));
    }

    #[test]
    fn unknown_names_are_refused_by_name() {
        let e = parse_cap("NET_ADMINN").unwrap_err();
        assert!(e.contains("\"NET_ADMINN\""), "{e}");
        assert_eq!(parse_cap("all").unwrap(), "ALL");
    }

    #[test]
    fn inspect_shows_the_effective_capabilities() {
        let v = security_json(&spec(&["CAP_NET_ADMIN"], &[]));
        assert_eq!(v["Seccomp"], "default");
        assert!(v["Capabilities"]
            .as_array()
            .unwrap()
            .contains(&"CAP_NET_ADMIN".into()));
        assert!(v["MaskedPaths"]
            .as_array()
            .unwrap()
            .contains(&"/proc/kcore".into()));
        assert!(security_json(&spec(&["BOGUS"], &[]))["Error"]
            .as_str()
            .unwrap()
            .contains("BOGUS"));
    }
}

//! What confines every container, with no flag to loosen it but capabilities: the
//! seccomp profile ([`super::seccomp`]), the /proc and /sys paths it cannot see or
//! write (Docker's lists), and its capabilities (the defaults of
//! [`shoal_proto::caps`], changed only by the spec's `cap_add` / `cap_drop`).
//!
//! [`Hardening`] is both what the runc backend writes into config.json and what
//! `service inspect` / `task inspect` show, so what is shown is what runs.

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, LinuxSeccomp};
use shoal_proto::caps::{self, UnknownCapability};
use std::path::Path;
use std::str::FromStr;

/// Paths a container sees as empty (files: /dev/null bound over them; directories: an
/// empty read-only tmpfs): Docker's `defaultLinuxMaskedPaths` (moby
/// `daemon/pkg/oci/defaults.go`, commit b985e2313a86).
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Also masked, for each possible CPU whose directory has it (as Docker does): it leaks
/// the host's power and thermal state.
pub const THERMAL_THROTTLE: &str = "/sys/devices/system/cpu/cpu*/thermal_throttle";

/// Paths a container can read but not write: Docker's `ReadonlyPaths`.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The effective confinement of one container spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Hardening {
    /// The seccomp profile's name: always [`super::seccomp::PROFILE_NAME`].
    pub seccomp: &'static str,
    /// Bounding, effective and permitted sets (inheritable and ambient stay empty, as in
    /// Docker, so a non-root process gets none of them).
    pub capabilities: Vec<&'static str>,
}

impl Hardening {
    /// For a spec's capability additions and drops; a name that is not a capability is
    /// refused.
    pub fn of(cap_add: &[String], cap_drop: &[String]) -> Result<Hardening, UnknownCapability> {
        Ok(Hardening {
            seccomp: super::seccomp::PROFILE_NAME,
            capabilities: caps::effective(cap_add, cap_drop)?,
        })
    }

    /// The masked paths as shown to users: the per-CPU ones as a pattern.
    pub fn masked_paths(&self) -> Vec<String> {
        MASKED_PATHS
            .iter()
            .chain([&THERMAL_THROTTLE])
            .map(|p| p.to_string())
            .collect()
    }

    pub fn readonly_paths(&self) -> Vec<String> {
        READONLY_PATHS.iter().map(|p| p.to_string()).collect()
    }

    /// The seccomp filter for config.json.
    pub fn seccomp_profile(&self) -> Result<LinuxSeccomp, oci_spec::OciSpecError> {
        super::seccomp::default_profile(&self.capabilities)
    }

    /// The capability sets for config.json.
    pub fn oci_capabilities(&self) -> Result<LinuxCapabilities, UnknownCapability> {
        let set = self
            .capabilities
            .iter()
            .map(|c| {
                Capability::from_str(c.trim_start_matches("CAP_"))
                    .map_err(|_| UnknownCapability(c.to_string()))
            })
            .collect::<Result<Capabilities, _>>()?;
        let mut oci = LinuxCapabilities::default();
        oci.set_bounding(Some(set.clone()));
        oci.set_effective(Some(set.clone()));
        oci.set_permitted(Some(set));
        oci.set_inheritable(Some(Capabilities::new()));
        oci.set_ambient(Some(Capabilities::new()));
        Ok(oci)
    }
}

/// The masked paths for config.json on this host: [`MASKED_PATHS`] and the
/// `thermal_throttle` directory of each possible CPU that has one.
pub fn host_masked_paths() -> Vec<String> {
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    let mut out: Vec<String> = MASKED_PATHS.iter().map(|p| p.to_string()).collect();
    for cpu in cpu_list(&cpus) {
        let p = THERMAL_THROTTLE.replace("cpu*", &format!("cpu{cpu}"));
        if Path::new(&p).exists() {
            out.push(p);
        }
    }
    out
}

/// A kernel CPU list (`0-3,8,10-11`) → the CPUs in it; malformed parts are skipped.
fn cpu_list(s: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let range: Option<(u32, u32)> = match part.split_once('-') {
            Some((a, b)) => a.parse().ok().zip(b.parse().ok()),
            None => part.parse().ok().map(|a| (a, a)),
        };
        // A bound keeps a damaged file from making us walk four billion CPUs.
        if let Some((a, b)) = range.filter(|(a, b)| a <= b && b - a < 65_536) {
            out.extend(a..=b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_docker() {
        let h = Hardening::of(&[], &[]).unwrap();
        assert_eq!(h.seccomp, "default");
        assert_eq!(
            h.capabilities,
            ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"]
        );
        let masked = host_masked_paths();
        for p in [
            "/proc/kcore",
            "/proc/keys",
            "/sys/firmware",
            "/proc/interrupts",
        ] {
            assert!(masked.iter().any(|m| m == p), "{p}");
        }
        assert!(h.masked_paths().contains(&THERMAL_THROTTLE.to_string()));
        assert!(h.readonly_paths().contains(&"/proc/sys".to_string()));
    }

    #[test]
    fn added_capabilities_reach_the_sets_and_ambient_stays_empty() {
        let h = Hardening::of(&["NET_ADMIN".into()], &["cap_kill".into()]).unwrap();
        let oci = h.oci_capabilities().unwrap();
        let want: Capabilities = [
            Capability::NetAdmin,
            Capability::NetBindService,
            Capability::AuditWrite,
        ]
        .into_iter()
        .collect();
        assert_eq!(oci.bounding().as_ref(), Some(&want));
        assert_eq!(oci.effective().as_ref(), Some(&want));
        assert_eq!(oci.permitted().as_ref(), Some(&want));
        assert_eq!(oci.inheritable().as_ref(), Some(&Capabilities::new()));
        assert_eq!(oci.ambient().as_ref(), Some(&Capabilities::new()));
        assert!(Hardening::of(&["NOPE".into()], &[]).is_err());
    }

    #[test]
    fn every_known_capability_has_an_oci_name() {
        let h = Hardening::of(&["ALL".into()], &[]).unwrap();
        assert_eq!(
            h.oci_capabilities()
                .unwrap()
                .bounding()
                .as_ref()
                .unwrap()
                .len(),
            41
        );
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(cpu_list("0-3,8,10-11\n"), [0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(cpu_list("0"), [0]);
        assert_eq!(cpu_list(""), Vec::<u32>::new());
        assert_eq!(cpu_list("3-1,x,0-4294967295"), Vec::<u32>::new());
    }
}

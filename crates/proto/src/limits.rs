//! Bounds on everything a node or a user can write into the cluster store. Managers
//! refuse what is over them, naming the limit; agents keep what they send under them.
//! They live beside the messages because both sides must agree on them.

use crate::objects::{ContainerSpec, NodeDescription, TaskStatus};
use std::collections::HashMap;

/// A DNS name's maximum length.
pub const MAX_HOSTNAME: usize = 253;
/// On a heartbeat stream the manager answers a beat when its answer changed, and at
/// least every this many beats; a node that hears nothing for longer drops the stream.
pub const HEARTBEAT_ANSWER_EVERY: u32 = 5;
/// Labels on one object (node, engine, service, container).
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY: usize = 128;
pub const MAX_LABEL_VALUE: usize = 4096;
/// Other short strings a node reports (OS, architecture, versions, errors).
pub const MAX_SHORT_STRING: usize = 256;
/// A task status message or error.
pub const MAX_STATUS_TEXT: usize = 4096;
/// Service, task and other object names (a DNS label).
pub const MAX_NAME: usize = 63;
/// Command, arguments and environment of a spec together, counted as the kernel counts
/// them (each string with its NUL and its pointer). The kernel always accepts 128 KiB
/// however small the stack limit; this leaves room for the image's environment.
pub const MAX_EXEC_BYTES: usize = 96 * 1024;
/// Task status updates in one report: an agent with more to send sends them in several.
pub const MAX_STATUS_UPDATES: usize = 2000;
/// A whole encoded container spec.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;

/// A value over a limit: what, how big, and the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverLimit(pub String);

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn len_at_most(what: &str, value: &str, limit: usize) -> Result<(), OverLimit> {
    if value.len() > limit {
        return Err(OverLimit(format!(
            "{what} is {} bytes: the limit is {limit} bytes",
            value.len()
        )));
    }
    Ok(())
}

/// Checks a set of labels: count, key and value sizes.
pub fn check_labels(what: &str, labels: &HashMap<String, String>) -> Result<(), OverLimit> {
    if labels.len() > MAX_LABELS {
        return Err(OverLimit(format!(
            "{} {what}s: the limit is {MAX_LABELS}",
            labels.len()
        )));
    }
    let mut keys: Vec<&String> = labels.keys().collect();
    keys.sort();
    for k in keys {
        len_at_most(&format!("{what} key {:?}", short(k)), k, MAX_LABEL_KEY)?;
        len_at_most(
            &format!("{what} {:?}", short(k)),
            &labels[k],
            MAX_LABEL_VALUE,
        )?;
    }
    Ok(())
}

/// The first characters of a value, for messages about values too large to print.
pub fn short(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Checks what a node reports about itself.
pub fn check_description(d: &NodeDescription) -> Result<(), OverLimit> {
    len_at_most("hostname", &d.hostname, MAX_HOSTNAME)?;
    len_at_most("os", &d.os, MAX_SHORT_STRING)?;
    len_at_most("arch", &d.arch, MAX_SHORT_STRING)?;
    len_at_most("engine version", &d.engine_version, MAX_SHORT_STRING)?;
    let k = d.wg_public_key.as_bytes();
    let b64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    if !k.is_empty() && !(k.len() == 44 && k[..43].iter().all(b64) && k[43] == b'=') {
        return Err(OverLimit(
            "the WireGuard public key is not 32 bytes in base64 (44 characters)".into(),
        ));
    }
    if !d.data_path_addr.is_empty() && d.data_path_addr.parse::<std::net::IpAddr>().is_err() {
        return Err(OverLimit(
            "the data path address is not an IP address".into(),
        ));
    }
    if let Some(p) = &d.data_plane {
        len_at_most("data plane engine", &p.engine, MAX_SHORT_STRING)?;
        len_at_most("data plane error", &p.error, MAX_STATUS_TEXT)?;
    }
    if d.volumes.len() > MAX_VOLUMES {
        return Err(OverLimit(format!(
            "the node reports {} volumes: the limit is {MAX_VOLUMES}",
            d.volumes.len()
        )));
    }
    for v in &d.volumes {
        len_at_most("volume name", &v.name, MAX_SHORT_STRING)?;
        check_labels("volume label", &v.labels)?;
    }
    check_labels("engine label", &d.engine_labels)
}

/// Volumes a node may report (a node with more still has them; managers see the first).
pub const MAX_VOLUMES: usize = 4096;

/// Checks a task status a node reports.
pub fn check_status(s: &TaskStatus) -> Result<(), OverLimit> {
    len_at_most("task status message", &s.message, MAX_STATUS_TEXT)?;
    len_at_most("task error", &s.err, MAX_STATUS_TEXT)?;
    len_at_most("health check output", &s.health_output, MAX_STATUS_TEXT)?;
    if crate::objects::HealthState::try_from(s.health).is_err() {
        return Err(OverLimit(format!("health state {} is unknown", s.health)));
    }
    Ok(())
}

/// Cuts `s` to at most `limit` bytes on a character boundary, marking the cut.
pub fn truncate(s: &mut String, limit: usize) {
    if s.len() <= limit {
        return;
    }
    let mut end = limit.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
}

/// Checks a name (service, task): 1–63 letters, digits, '-', '_' or '.', starting with a
/// letter or digit. `what` names the flag in messages.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {:?} must be 1-{MAX_NAME} letters, digits, '-', '_' or '.', starting with a letter or digit",
            short(name)
        ))
    }
}

/// The bytes `execve` counts for these strings: each with its NUL and its pointer.
pub fn exec_bytes<'a>(strings: impl IntoIterator<Item = &'a String>) -> usize {
    strings
        .into_iter()
        .map(|s| s.len() + 1 + std::mem::size_of::<usize>())
        .sum()
}

/// Checks that a container spec stays small enough to store, deliver and exec.
pub fn check_spec_size(spec: &ContainerSpec) -> Result<(), OverLimit> {
    let exec = exec_bytes(spec.command.iter().chain(&spec.args).chain(&spec.env));
    if exec > MAX_EXEC_BYTES {
        return Err(OverLimit(format!(
            "command, arguments and environment are {exec} bytes together: the limit is {MAX_EXEC_BYTES} bytes (the kernel refuses to start a process with much more); pass large data in a file or a mount"
        )));
    }
    check_labels("container label", &spec.labels)?;
    let size = prost::Message::encoded_len(spec);
    if size > MAX_SPEC_BYTES {
        return Err(OverLimit(format!(
            "the container spec is {size} bytes: the limit is {MAX_SPEC_BYTES} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_engine_label_is_refused_naming_the_limit() {
        let mut d = NodeDescription::default();
        d.engine_labels.insert("big".into(), "x".repeat(3 << 20));
        let e = check_description(&d).unwrap_err().0;
        assert!(
            e.contains("engine label \"big\"") && e.contains("limit is 4096"),
            "{e}"
        );
        d.engine_labels.clear();
        for i in 0..65 {
            d.engine_labels.insert(format!("k{i}"), "v".into());
        }
        assert!(check_description(&d).unwrap_err().0.contains("limit is 64"));
    }

    #[test]
    fn a_spec_the_kernel_could_not_exec_is_refused() {
        let spec = ContainerSpec {
            image: "busybox".into(),
            env: vec![format!("BIG={}", "x".repeat(1 << 20))],
            ..Default::default()
        };
        let e = check_spec_size(&spec).unwrap_err().0;
        assert!(e.contains("limit is 98304 bytes"), "{e}");
        let ok = ContainerSpec {
            env: vec![format!("V={}", "x".repeat(60_000))],
            ..spec
        };
        assert_eq!(check_spec_size(&ok), Ok(()));
    }

    #[test]
    fn truncation_keeps_characters_whole_and_marks_the_cut() {
        let mut s = "é".repeat(3000);
        truncate(&mut s, MAX_STATUS_TEXT);
        assert!(s.len() <= MAX_STATUS_TEXT && s.ends_with('…'));
        let mut short = "fine".to_string();
        truncate(&mut short, 10);
        assert_eq!(short, "fine");
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(check_name("--name", "web-1.a_b").is_ok());
        for bad in ["", "-x", ".x", &"a".repeat(64), "a b", "a/b"] {
            assert!(check_name("--name", bad).is_err(), "{bad:?}");
        }
    }
}

//! Flags of a container spec that `task run`, `service create` and `service update`
//! share: sizes, CPUs, mounts, networks.

use shoal_proto::objects::{Mount, NetworkAttachmentConfig};

/// `1g`, `512m`, `64MiB`, `100k`, `1048576` → bytes.
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim().to_ascii_lowercase();
    let digits = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 64m or 1g"))?;
    let mult: f64 = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("{s:?} is not a size like 64m or 1g")),
    };
    Ok((n * mult) as i64)
}

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

/// `type=bind,source=/a,target=/b,readonly` or `type=tmpfs,target=/t,tmpfs-size=64m`.
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

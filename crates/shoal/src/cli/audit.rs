//! `shoal audit`: this manager's audit log, read through the node's socket (root, or
//! the socket's group), filtered by time, user and object, and followed with `-f`.

use crate::cli::{status_err, Client};
use anyhow::{bail, Result};
use shoal_proto::local::AuditRequest;

pub struct AuditArgs {
    pub since: Option<String>,
    pub user: Option<String>,
    pub object: Option<String>,
    pub follow: bool,
    pub format: Option<String>,
}

/// `--since`: a duration ago (10m) or an RFC 3339 time, as unix milliseconds.
fn since_ms(s: &str) -> Result<i64> {
    let now = time::OffsetDateTime::now_utc();
    if let Ok(d) = humantime::parse_duration(s) {
        let at = now - d;
        return Ok((at.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    match time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        Ok(t) => Ok((t.unix_timestamp_nanos() / 1_000_000) as i64),
        Err(_) => bail!(
            "--since {s:?}: give a duration ago like 10m or 2h, or a time like 2026-12-08T10:00:00Z"
        ),
    }
}

/// One record as a line a person reads: time, audit ID, who, what, on what, the
/// decision, the outcome and the latency.
fn human(line: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return line.to_string();
    };
    let f = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let mut object = format!("{} {}", f("kind"), f("object"));
    if !f("stack").is_empty() {
        object.push_str(&format!(" (stack {})", f("stack")));
    }
    let mut who = f("principal");
    if !f("forwarded_by").is_empty() {
        who.push_str(&format!(" via {}", &f("forwarded_by")));
    }
    let mut outcome = f("outcome");
    if !f("error").is_empty() {
        outcome.push_str(&format!(": {}", f("error")));
    } else if f("decision") == "deny" {
        outcome.push_str(&format!(": {}", f("rule")));
    }
    if !f("forwarded_to").is_empty() {
        outcome.push_str(&format!(" (forwarded to {})", f("forwarded_to")));
    }
    let latency = v.get("latency_us").and_then(|x| x.as_u64()).unwrap_or(0);
    format!(
        "{}  {}  {}  {}  {}  {}  {}  {:.1}ms",
        f("time"),
        f("audit_id"),
        who,
        f("method"),
        object.trim(),
        f("decision"),
        outcome,
        latency as f64 / 1000.0
    )
}

impl Client {
    pub async fn audit(&self, a: AuditArgs) -> Result<()> {
        let json = match a.format.as_deref() {
            None => false,
            Some("json") => true,
            Some(other) => bail!("--format {other:?}: the audit log prints as text or json"),
        };
        let req = AuditRequest {
            since_unix_ms: a.since.as_deref().map(since_ms).transpose()?.unwrap_or(0),
            user: a.user.unwrap_or_default(),
            object: a.object.unwrap_or_default(),
            follow: a.follow,
        };
        let mut stream = self
            .local
            .clone()
            .audit(req)
            .await
            .map_err(status_err)?
            .into_inner();
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        while let Some(rec) = stream.message().await.map_err(status_err)? {
            let line = if json { rec.line } else { human(&rec.line) };
            if writeln!(out, "{line}").is_err() {
                break;
            }
            if a.follow {
                let _ = out.flush();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_ago_or_a_time_and_a_record_reads_as_one_line() {
        let ago = since_ms("10m").unwrap();
        let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        assert!((now - ago - 600_000).abs() < 5_000);
        assert_eq!(since_ms("2026-12-08T00:00:00Z").unwrap(), 1_796_688_000_000);
        assert!(since_ms("yesterday")
            .unwrap_err()
            .to_string()
            .contains("--since"));
        let line = r#"{"time":"2026-12-08T01:00:00Z","audit_id":"0011223344556677","principal":"user sam","method":"RemoveService","kind":"service","object":"blog_web","stack":"blog","decision":"deny","rule":"RemoveService refused: user sam may act only in stack shop","outcome":"PermissionDenied","latency_us":1500}"#;
        let h = human(line);
        assert!(h.contains("user sam  RemoveService  service blog_web (stack blog)  deny  PermissionDenied: RemoveService refused"), "{h}");
        assert!(h.ends_with("1.5ms"), "{h}");
    }
}

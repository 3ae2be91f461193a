//! The audit log: one JSON line per control call a manager takes, in
//! `<state dir>/audit/audit.log` (rotated by size, kept by count: cluster settings).
//!
//! A call is admitted only when its record has room: the log keeps space allocated
//! ahead of its end (`fallocate` without changing the size), and a call that finds the
//! disk too full to keep that reserve is refused before it runs, so nothing happens
//! unrecorded. Records go to the page cache as each call ends, and to the disk within a
//! second ([`AuditLog::flush`]). A request is recorded as JSON read by its schema, with
//! secret data, keys, tokens and environment values redacted by field name.

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use tonic::Status;

/// The size at which `audit.log` is rotated unless the cluster says otherwise.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// How many rotated files are kept unless the cluster says otherwise.
pub const DEFAULT_KEEP: u32 = 10;
/// The response header (and error metadata) that carries a call's audit ID.
pub const AUDIT_ID_HEADER: &str = "shoal-audit-id";
/// The log's file name in its directory; rotated files are `audit.log.1` (newest) on.
pub const FILE: &str = "audit.log";

/// Space kept allocated past the end of the log.
const RESERVE: u64 = 256 << 10;
/// Below this much reserve left, the reserve is renewed before the next call.
const LOW_WATER: u64 = 64 << 10;
/// The longest record: a bigger request is recorded without its body.
const MAX_LINE: usize = 32 << 10;

/// The rotation size and the count of kept files the cluster's settings give.
pub fn settings(spec: Option<shoal_proto::objects::ClusterSpec>) -> (u64, u32) {
    let spec = spec.unwrap_or_default();
    (
        match spec.audit_max_bytes {
            0 => DEFAULT_MAX_BYTES,
            n => n,
        },
        match spec.audit_keep {
            0 => DEFAULT_KEEP,
            n => n,
        },
    )
}

/// One control call, as the audit log records it.
#[derive(Debug, Default, Serialize)]
pub struct Record {
    /// RFC 3339, UTC, microseconds.
    pub time: String,
    pub audit_id: String,
    /// `user NAME`, `local uid N`, `local-admin of NODE`, or `node ID`.
    pub principal: String,
    /// A user's certificate serial.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub serial: String,
    /// The manager (node ID) that forwarded the call here.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub forwarded_by: String,
    /// The leader this manager forwarded the call to.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub forwarded_to: String,
    /// The caller's address (none on the unix socket).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub peer: String,
    pub method: String,
    /// The kind of object the call is about (`service`, `node`, ...).
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub object_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub object: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stack: String,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// What made the decision: the role that allowed it, or why it was refused.
    pub rule: String,
    /// `ok`, or the gRPC code of the failure.
    pub outcome: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    pub latency_us: u64,
    /// A write's request, redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<serde_json::Value>,
}

/// The audit log of one manager.
pub struct AuditLog {
    dir: PathBuf,
    writer: Mutex<Writer>,
}

struct Writer {
    file: File,
    /// Bytes in the file.
    size: u64,
    /// The file's allocation reaches this offset (the reserve is `reserved_to - size`).
    reserved_to: u64,
    /// Written since the last flush.
    dirty: bool,
    /// Whether the file system can reserve space (tmpfs, ext4, xfs, btrfs can).
    can_reserve: bool,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("dir", &self.dir).finish()
    }
}

fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// What a caller is told when their call cannot be recorded.
fn unrecordable(dir: &Path, e: &dyn std::fmt::Display) -> Status {
    Status::unavailable(format!(
        "the audit log in {} cannot be written ({e}): the call was not made; free space there (or see 'shoal update --audit-max-size/--audit-keep')",
        dir.display()
    ))
}

impl AuditLog {
    /// Opens (or makes) the log in `dir`, with its reserve.
    pub fn open(dir: &Path) -> io::Result<Arc<AuditLog>> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let file = open_file(&dir.join(FILE))?;
        let size = file.metadata()?.len();
        let log = AuditLog {
            dir: dir.to_path_buf(),
            writer: Mutex::new(Writer {
                file,
                size,
                reserved_to: size,
                dirty: false,
                can_reserve: true,
            }),
        };
        {
            let mut w = log.lock();
            // A full disk at start is reported on the first call, not here: the
            // manager must come up to say so.
            let _ = w.reserve();
        }
        Ok(Arc::new(log))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes sure the next record has room: refuses (the call must not run) when the
    /// disk is too full to keep the reserve.
    pub fn admit(&self) -> Result<(), Status> {
        let mut w = self.lock();
        if !w.can_reserve || w.reserved_to.saturating_sub(w.size) >= LOW_WATER {
            return Ok(());
        }
        w.reserve().map_err(|e| unrecordable(&self.dir, &e))
    }

    /// Appends `rec` (rotating first when the file would pass `max_bytes`), keeping
    /// `keep` rotated files.
    pub fn write(&self, rec: &Record, max_bytes: u64, keep: u32) -> Result<(), Status> {
        let mut line = serde_json::to_vec(rec).map_err(|e| unrecordable(&self.dir, &e))?;
        if line.len() > MAX_LINE {
            let mut short = serde_json::to_value(rec).map_err(|e| unrecordable(&self.dir, &e))?;
            short["request"] = serde_json::json!({"omitted": format!("{} bytes", line.len())});
            line = serde_json::to_vec(&short).map_err(|e| unrecordable(&self.dir, &e))?;
        }
        line.push(b'\n');
        let mut w = self.lock();
        if w.size > 0 && w.size + line.len() as u64 > max_bytes.max(MAX_LINE as u64 * 2) {
            if let Err(e) = self.rotate(&mut w, keep) {
                tracing::error!(error = %e, dir = %self.dir.display(), "cannot rotate the audit log; it grows on");
            }
        }
        w.file
            .write_all(&line)
            .map_err(|e| unrecordable(&self.dir, &e))?;
        w.size += line.len() as u64;
        w.dirty = true;
        Ok(())
    }

    fn rotate(&self, w: &mut Writer, keep: u32) -> io::Result<()> {
        let name = |n: u32| self.dir.join(format!("{FILE}.{n}"));
        let _ = std::fs::remove_file(name(keep.max(1)));
        for n in (1..keep.max(1)).rev() {
            if name(n).exists() {
                std::fs::rename(name(n), name(n + 1))?;
            }
        }
        // The old file gives back its reserve.
        let _ = w.file.set_len(w.size);
        let _ = w.file.sync_data();
        std::fs::rename(self.dir.join(FILE), name(1))?;
        w.file = open_file(&self.dir.join(FILE))?;
        w.size = 0;
        w.reserved_to = 0;
        w.dirty = false;
        if let Err(e) = w.reserve() {
            tracing::warn!(error = %e, "the new audit log has no reserve yet");
        }
        Ok(())
    }

    /// Writes what the page cache holds of the log to the disk.
    pub fn flush(&self) {
        let mut w = self.lock();
        if w.dirty {
            if let Err(e) = w.file.sync_data() {
                tracing::warn!(error = %e, "cannot sync the audit log");
            }
            w.dirty = false;
        }
    }

    /// Flushes every second until `cancel`.
    pub async fn run_flusher(self: Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let log = self.clone();
            let _ = tokio::task::spawn_blocking(move || log.flush()).await;
        }
        self.flush();
    }
}

impl Writer {
    /// Allocates [`RESERVE`] bytes past the end without changing the size.
    fn reserve(&mut self) -> io::Result<()> {
        use nix::fcntl::{fallocate, FallocateFlags};
        match fallocate(
            &self.file,
            FallocateFlags::FALLOC_FL_KEEP_SIZE,
            self.size as i64,
            RESERVE as i64,
        ) {
            Ok(()) => {
                self.reserved_to = self.size + RESERVE;
                Ok(())
            }
            Err(nix::errno::Errno::EOPNOTSUPP) => {
                tracing::warn!("the audit log's file system cannot reserve space: a full disk is found when a record fails");
                self.can_reserve = false;
                Ok(())
            }
            Err(e) => Err(io::Error::from(e)),
        }
    }
}

/// Every message of the protocol, read once.
static POOL: LazyLock<Option<DescriptorPool>> = LazyLock::new(|| {
    DescriptorPool::decode(shoal_proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| tracing::error!(error = %e, "cannot read the protocol's descriptors"))
        .ok()
});

/// Fields whose values are never recorded: secret and config data, private keys,
/// tokens, passwords.
const REDACTED: &[&str] = &[
    "data",
    "key_pem",
    "token",
    "password",
    "unlock_key",
    "secret",
];

/// The request of control call `method` (its encoded body) as JSON, with secret
/// values and environment values redacted.
pub fn request_json(method: &str, body: &[u8]) -> Option<serde_json::Value> {
    let pool = POOL.as_ref()?;
    let service = pool.get_service_by_name("shoal.control.Control")?;
    let m = service.methods().find(|m| m.name() == method)?;
    let msg = DynamicMessage::decode(m.input(), body).ok()?;
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    let mut v = msg
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .ok()?;
    redact(&mut v);
    Some(v)
}

fn redact(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                if REDACTED.contains(&k.as_str()) {
                    *x = Value::String("<redacted>".into());
                } else if k == "env" {
                    if let Value::Array(items) = x {
                        for e in items.iter_mut() {
                            if let Value::String(s) = e {
                                let key = s.split_once('=').map_or(s.as_str(), |(k, _)| k);
                                *e = Value::String(format!("{key}=<redacted>"));
                            }
                        }
                    }
                } else {
                    redact(x);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// The time now as the log writes it.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A new audit ID.
pub fn new_id() -> String {
    let b: [u8; 8] = rand::random();
    hex::encode(b)
}

/// Whether `v` is an audit ID as [`new_id`] makes them.
pub fn is_id(v: &str) -> bool {
    v.len() == 16 && v.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The kind of object a call is about, by its name (`ListNodes`: `node`), and the
/// object its request names, when no lookup named one.
pub fn object_of(method: &str, request: Option<&serde_json::Value>) -> (String, String) {
    const KINDS: &[(&str, &str)] = &[
        ("JoinToken", "join-token"),
        ("UserToken", "user"),
        ("UnlockKey", "unlock-key"),
        ("ClusterInfo", "cluster"),
        ("Cluster", "cluster"),
        ("Certificate", "certificate"),
        ("Backup", "backup"),
        ("Service", "service"),
        ("Network", "network"),
        ("Secret", "secret"),
        ("Node", "node"),
        ("Task", "task"),
        ("User", "user"),
        ("Ca", "ca"),
    ];
    let noun = method.trim_end_matches('s');
    let kind = KINDS
        .iter()
        .find(|(suffix, _)| noun.ends_with(suffix))
        .map_or("", |(_, k)| k);
    let field = |v: &serde_json::Value, k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .filter(|x| !x.is_empty())
            .map(str::to_string)
    };
    let name = request
        .and_then(|r| {
            ["reference", "name", "node", "user", "task"]
                .iter()
                .find_map(|k| field(r, k))
                .or_else(|| r.get("spec").and_then(|s| field(s, "name")))
        })
        .unwrap_or_default();
    (kind.to_string(), name)
}

/// Which records a reader wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Unix milliseconds; 0: all.
    pub since_unix_ms: i64,
    pub user: String,
    /// A name, an ID or a unique ID prefix.
    pub object: String,
}

impl Filter {
    /// Whether the record `line` (JSON) is one the reader wants.
    pub fn wants(&self, line: &str) -> bool {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            return false;
        };
        let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("");
        if self.since_unix_ms > 0 {
            let at = time::OffsetDateTime::parse(
                field("time"),
                &time::format_description::well_known::Rfc3339,
            )
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
            .unwrap_or(0);
            if at < self.since_unix_ms {
                return false;
            }
        }
        if !self.user.is_empty() && field("principal") != format!("user {}", self.user) {
            return false;
        }
        if !self.object.is_empty() {
            let (id, name) = (field("object_id"), field("object"));
            if name != self.object && !(id.starts_with(&self.object)) {
                return false;
            }
        }
        true
    }
}

/// The log's files, oldest first.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix(&format!("{FILE}."))?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    out.push(dir.join(FILE));
    out
}

/// Sends each record of the log in `dir` that `filter` wants, oldest first, on `tx`;
/// with `follow`, then each new one as it is written (across rotations), until the
/// receiver goes. Blocking: run it on a thread of its own.
pub fn read(
    dir: &Path,
    filter: &Filter,
    follow: bool,
    tx: &tokio::sync::mpsc::Sender<String>,
) -> io::Result<()> {
    use std::io::{BufRead, Seek};
    use std::os::unix::fs::MetadataExt;
    let send = |line: &str| -> bool {
        if filter.wants(line) {
            tx.blocking_send(line.to_string()).is_ok()
        } else {
            true
        }
    };
    for f in files(dir) {
        if f.ends_with(FILE) {
            break;
        }
        let Ok(file) = File::open(&f) else { continue };
        for line in io::BufReader::new(file).lines() {
            if !send(&line?) {
                return Ok(());
            }
        }
    }
    let current = dir.join(FILE);
    let mut file = File::open(&current)?;
    let mut inode = file.metadata()?.ino();
    let mut reader = io::BufReader::new(file.try_clone()?);
    let mut partial = String::new();
    loop {
        let mut buf = String::new();
        let n = reader.read_line(&mut buf)?;
        if n > 0 {
            partial.push_str(&buf);
            if partial.ends_with('\n') {
                let line = std::mem::take(&mut partial);
                if !send(line.trim_end()) {
                    return Ok(());
                }
            }
            continue;
        }
        if !follow || tx.is_closed() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        // Rotated: read the rest of the old file, then the new one from its start.
        if let Ok(m) = std::fs::metadata(&current) {
            if m.ino() != inode {
                let mut rest = String::new();
                while reader.read_line(&mut rest)? > 0 {
                    partial.push_str(&rest);
                    rest.clear();
                }
                for line in std::mem::take(&mut partial).lines() {
                    if !send(line) {
                        return Ok(());
                    }
                }
                file = File::open(&current)?;
                inode = file.metadata()?.ino();
                file.rewind()?;
                reader = io::BufReader::new(file.try_clone()?);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> Record {
        Record {
            time: now(),
            audit_id: new_id(),
            principal: "user alice".into(),
            method: "CreateService".into(),
            kind: "service".into(),
            object: format!("web{n}"),
            decision: "allow",
            rule: "role admin".into(),
            outcome: "ok".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_request_is_recorded_without_its_secrets_or_environment_values() {
        use prost::Message;
        use shoal_proto::objects::{ContainerSpec, ServiceSpec};
        let req = shoal_proto::control::CreateServiceRequest {
            spec: Some(ServiceSpec {
                name: "web".into(),
                container: Some(ContainerSpec {
                    image: "nginx".into(),
                    env: vec!["DB_PASSWORD=hunter2".into(), "MODE=prod".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let v = request_json("CreateService", &req.encode_to_vec()).unwrap();
        let s = v.to_string();
        assert!(s.contains("\"name\":\"web\"") && s.contains("nginx"), "{s}");
        assert!(
            s.contains("DB_PASSWORD=<redacted>") && s.contains("MODE=<redacted>"),
            "{s}"
        );
        assert!(!s.contains("hunter2") && !s.contains("prod"), "{s}");
        let secret = shoal_proto::control::CreateSecretRequest {
            data: b"s3cret".to_vec(),
            ..Default::default()
        };
        let s = request_json("CreateSecret", &secret.encode_to_vec())
            .unwrap()
            .to_string();
        assert!(s.contains("<redacted>") && !s.contains("czNjcmV0"), "{s}");
        let ca = shoal_proto::control::RotateCaRequest {
            key_pem: "-----BEGIN PRIVATE KEY-----".into(),
            ..Default::default()
        };
        let s = request_json("RotateCa", &ca.encode_to_vec())
            .unwrap()
            .to_string();
        assert!(!s.contains("PRIVATE KEY"), "{s}");
        assert!(request_json("NoSuchCall", &[]).is_none());
    }

    #[test]
    fn the_log_rotates_by_size_and_keeps_a_count_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path()).unwrap();
        for n in 0..2000 {
            log.admit().unwrap();
            log.write(&record(n), 100 << 10, 3).unwrap();
        }
        let fs = files(dir.path());
        assert_eq!(fs.len(), 4, "{fs:?}");
        for f in &fs {
            let len = std::fs::metadata(f).unwrap().len();
            assert!(len <= 100 << 10, "{f:?}: {len}");
        }
        // The newest record is last in the newest file; every line is JSON.
        let last = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(last.lines().last().unwrap().contains("web1999"));
        for f in &fs {
            for l in std::fs::read_to_string(f).unwrap().lines() {
                serde_json::from_str::<serde_json::Value>(l).unwrap();
            }
        }
        let only = |object: &str, user: &str| Filter {
            object: object.into(),
            user: user.into(),
            ..Default::default()
        };
        let newest = last.lines().last().unwrap();
        assert!(only("web1999", "").wants(newest));
        assert!(only("", "alice").wants(newest));
        assert!(!only("web7", "").wants(newest));
        assert!(!only("", "bob").wants(newest));
    }
}

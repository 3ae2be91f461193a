//! Workload identities on a node. For each task that has one: a key made here (it never
//! leaves the node), a certificate the managers issue for that task only (an
//! X.509-SVID naming its service and stack), and the roots to verify peers with, written
//! into the task's own tmpfs and bind-mounted read-only at `/run/secrets/shoal`
//! (`svid.pem`, `svid.key`, `bundle.pem`). Renewed at half its life while the task runs:
//! each renewal is a new directory the `current` link switches to at once, as
//! Kubernetes does for its projected files, so a reader never sees half of one.

use shoal_proto::ca::ca_client::CaClient;
use shoal_proto::ca::IssueWorkloadCertificateRequest;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tonic::transport::Channel;

/// Where a task finds its identity.
pub const IDENTITY_DIR: &str = "/run/secrets/shoal";
/// The directory under the task's tmpfs that is mounted there.
pub const SUBDIR: &str = "shoal";
const FILES: [&str; 3] = ["svid.pem", "svid.key", "bundle.pem"];

/// An identity issued for a task.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: zeroize::Zeroizing<String>,
    pub bundle_pem: String,
    pub spiffe_id: String,
    pub not_after: SystemTime,
}

/// Why no identity was issued.
#[derive(Debug)]
pub enum IssueError {
    /// The managers refuse it for good (the task is removed, stopping, not this node's).
    Refused(String),
    /// Try again later (no manager reachable).
    Unavailable(String),
}

impl std::fmt::Display for IssueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IssueError::Refused(m) | IssueError::Unavailable(m) => f.write_str(m),
        }
    }
}

/// Asks the managers for tasks' identities, over this node's own mTLS channel.
pub struct Identities {
    channels: watch::Receiver<Channel>,
}

impl Identities {
    pub fn new(channels: watch::Receiver<Channel>) -> Identities {
        Identities { channels }
    }

    /// A new key and a certificate for task `task_id`.
    pub async fn issue(&self, task_id: &str) -> Result<Issued, IssueError> {
        let key = shoal_pki::NodeKey::generate()
            .map_err(|e| IssueError::Unavailable(format!("cannot make a key: {e}")))?;
        let csr_der = key
            .csr_der()
            .map_err(|e| IssueError::Unavailable(format!("cannot make a CSR: {e}")))?;
        let channel = self.channels.borrow().clone();
        let mut req = tonic::Request::new(IssueWorkloadCertificateRequest {
            task_id: task_id.to_string(),
            csr_der,
        });
        req.set_timeout(Duration::from_secs(10));
        let resp = CaClient::new(channel)
            .issue_workload_certificate(req)
            .await
            .map_err(|s| {
                let m = format!("no workload identity: {}", s.message());
                match s.code() {
                    tonic::Code::NotFound
                    | tonic::Code::PermissionDenied
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::InvalidArgument => IssueError::Refused(m),
                    _ => IssueError::Unavailable(m),
                }
            })?
            .into_inner();
        let mut cert_pem = shoal_pki::cert_pem(&resp.cert_der);
        for i in &resp.intermediates_der {
            cert_pem.push_str(&shoal_pki::cert_pem(i));
        }
        let bundle_pem: String = resp
            .roots_der
            .iter()
            .map(|r| shoal_pki::cert_pem(r))
            .collect();
        Ok(Issued {
            cert_pem,
            key_pem: zeroize::Zeroizing::new(key.to_pem()),
            bundle_pem,
            spiffe_id: resp.spiffe_id,
            not_after: SystemTime::UNIX_EPOCH
                + Duration::from_secs(resp.not_after_unix.max(0) as u64),
        })
    }
}

/// Writes `issued` as a new version in `dir` (the task's identity directory, on its
/// tmpfs) and switches `current` to it; the previous version goes. Blocks.
pub fn install(dir: &Path, issued: &Issued) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let version = format!("..{stamp}");
    let vdir = dir.join(&version);
    std::fs::create_dir(&vdir)?;
    std::fs::set_permissions(&vdir, std::fs::Permissions::from_mode(0o755))?;
    for (name, data) in FILES.iter().zip([
        issued.cert_pem.as_bytes(),
        issued.key_pem.as_bytes(),
        issued.bundle_pem.as_bytes(),
    ]) {
        // Readable in the container whatever user its process runs as (the tmpfs is the
        // task's own, as its secrets' files are).
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(vdir.join(name))?;
        f.write_all(data)?;
    }
    let old = std::fs::read_link(dir.join("current")).ok();
    let next = dir.join("current.next");
    let _ = std::fs::remove_file(&next);
    std::os::unix::fs::symlink(&version, &next)?;
    std::fs::rename(&next, dir.join("current"))?;
    for name in FILES {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("current").join(name), &link)?;
        }
    }
    if let Some(old) = old.filter(|o| o.as_os_str() != version.as_str()) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

/// When the identity in `dir` is due for renewal: half way from when it was written to
/// when it expires (none when there is none).
pub fn renew_at(dir: &Path) -> Option<SystemTime> {
    let current = dir.join("current").join("svid.pem");
    let written = std::fs::metadata(&current).ok()?.modified().ok()?;
    let pem = std::fs::read_to_string(&current).ok()?;
    let der = shoal_pki::pem_certs(&pem).ok()?.into_iter().next()?;
    let not_after = shoal_pki::CertSummary::parse(&der).ok()?.not_after;
    let life = not_after.duration_since(written).unwrap_or_default();
    Some(written + life / 2)
}

/// The identity directory of a task whose tmpfs is `task_dir`.
pub fn dir_of(task_dir: &Path) -> PathBuf {
    task_dir.join(SUBDIR)
}

/// Renews the identity in `dir` of task `task_id` at half its life, until the managers
/// refuse (the task was removed) or the caller drops this future.
pub async fn keep_renewed(identities: std::sync::Arc<Identities>, task_id: String, dir: PathBuf) {
    let mut retry = Duration::from_secs(1);
    loop {
        let due = renew_at(&dir).unwrap_or_else(SystemTime::now);
        let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::sleep(wait).await;
        match identities.issue(&task_id).await {
            Ok(issued) => {
                let d = dir.clone();
                let r = tokio::task::spawn_blocking(move || install(&d, &issued)).await;
                match r {
                    Ok(Ok(())) => {
                        tracing::info!(task_id = %task_id, "workload identity renewed");
                        retry = Duration::from_secs(1);
                        continue;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(task_id = %task_id, error = %e, "cannot write the renewed workload identity")
                    }
                    Err(e) => {
                        tracing::warn!(task_id = %task_id, error = %e, "cannot write the renewed workload identity")
                    }
                }
            }
            Err(IssueError::Refused(m)) => {
                tracing::info!(task_id = %task_id, reason = %m, "workload identity no longer renewed");
                return;
            }
            Err(IssueError::Unavailable(m)) => {
                tracing::warn!(task_id = %task_id, error = %m, "cannot renew the workload identity yet");
            }
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(tag: &str) -> Issued {
        Issued {
            cert_pem: format!("cert {tag}"),
            key_pem: zeroize::Zeroizing::new(format!("key {tag}")),
            bundle_pem: format!("bundle {tag}"),
            spiffe_id: "spiffe://c/stack/_/service/web".into(),
            not_after: SystemTime::now(),
        }
    }

    #[test]
    fn each_version_replaces_the_files_at_once_and_the_old_one_goes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shoal");
        install(&dir, &issued("one")).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("svid.pem")).unwrap(),
            "cert one"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("svid.key")).unwrap(),
            "key one"
        );
        let first = std::fs::read_link(dir.join("current")).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        install(&dir, &issued("two")).unwrap();
        for (f, want) in [
            ("svid.pem", "cert two"),
            ("svid.key", "key two"),
            ("bundle.pem", "bundle two"),
        ] {
            assert_eq!(std::fs::read_to_string(dir.join(f)).unwrap(), want);
        }
        // The links are relative: they resolve wherever the directory is mounted.
        assert_eq!(
            std::fs::read_link(dir.join("svid.pem")).unwrap(),
            Path::new("current/svid.pem")
        );
        assert!(!dir.join(first).exists(), "the old version is gone");
        let entries = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(entries, 5, "current, one version, three links");
    }
}

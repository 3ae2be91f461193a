//! Secrets and configs on a worker: held in memory only, as the managers send them
//! (only those the node's tasks use), and written only into a task's own tmpfs, which
//! goes when the task ends. Nothing of a secret touches the node's disk.

use shoal_proto::dispatcher::{SecretData, SecretKey};
use shoal_proto::objects::{ContainerSpec, SecretReference};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// Where secrets are mounted in a container.
pub const SECRETS_DIR: &str = "/run/secrets";
/// A file's mode unless the reference gives one.
const DEFAULT_MODE: u32 = 0o444;

type Data = Arc<Zeroizing<Vec<u8>>>;

/// The versions this node holds, by (ID, version).
pub struct Secrets {
    held: Mutex<HashMap<(String, u64), Data>>,
    /// Where tasks' tmpfs mounts go: outside the state directory (and /var, /tmp), one
    /// directory per node.
    root: PathBuf,
}

/// A file for a task: where it goes in the container, its owner and mode, its data.
pub struct File {
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub data: Data,
}

impl Secrets {
    /// `state_dir` names the node (several nodes may share a machine); nothing is
    /// written under it.
    pub fn new(state_dir: &Path) -> Secrets {
        use sha2::Digest;
        let tag = hex::encode(&sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes())[..8]);
        Secrets {
            held: Mutex::new(HashMap::new()),
            root: PathBuf::from("/run/shoal-secrets").join(tag),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), Data>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes what a session message brings: new versions (`complete`: the whole set,
    /// replacing what is held).
    pub fn receive(&self, data: &[SecretData], complete: bool) {
        let mut held = self.lock();
        if complete {
            held.clear();
        }
        for d in data {
            let Some(k) = &d.key else { continue };
            tracing::info!(secret_id = %k.secret_id, version = k.version, bytes = d.data.len(), "secret received");
            held.insert(
                (k.secret_id.clone(), k.version),
                Arc::new(Zeroizing::new(d.data.clone())),
            );
        }
    }

    /// Forgets versions no task of this node needs any more.
    pub fn forget(&self, keys: &[SecretKey]) {
        let mut held = self.lock();
        for k in keys {
            if held.remove(&(k.secret_id.clone(), k.version)).is_some() {
                tracing::info!(secret_id = %k.secret_id, version = k.version, "secret dropped");
            }
        }
    }

    /// The (ID, version) pairs held now, for the node's own diagnostics.
    pub fn held(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// The files of a task: only the secrets and configs its own spec references (a
    /// task gets nothing else the node holds). Fails naming a missing one.
    pub fn files_for(&self, spec: &ContainerSpec) -> Result<Vec<File>, String> {
        let held = self.lock();
        let mut files = Vec::new();
        for (kind, refs) in [("secret", &spec.secrets), ("config", &spec.configs)] {
            for r in refs.iter() {
                let data = held
                    .get(&(r.secret_id.clone(), r.version))
                    .ok_or_else(|| {
                        format!(
                            "{kind} {} (version {}) has not reached this node: the managers send it with the task; if it was removed, update the service",
                            r.secret_name, r.version
                        )
                    })?
                    .clone();
                files.push(File {
                    target: target_path(kind, r),
                    uid: r.uid,
                    gid: r.gid,
                    mode: r.mode.unwrap_or(DEFAULT_MODE),
                    data,
                });
            }
        }
        Ok(files)
    }

    fn task_dir(&self, task_id: &str) -> PathBuf {
        self.root.join(task_id)
    }

    /// Writes a task's files into a tmpfs of its own (mounted here, on the node, mode
    /// 0700) and returns the (file, container path) pairs to bind-mount read-only.
    /// Blocks.
    pub fn materialize(
        &self,
        task_id: &str,
        files: &[File],
    ) -> Result<Vec<(PathBuf, String)>, String> {
        if files.is_empty() {
            return Ok(Vec::new());
        }
        let dir = self.task_dir(task_id);
        self.remove(task_id);
        let total: usize = files.iter().map(|f| f.data.len()).sum();
        self.mount_tmpfs(&dir, total)?;
        let mut out = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let path = dir.join(i.to_string());
            let written = (|| -> std::io::Result<()> {
                use std::io::Write;
                use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                file.write_all(&f.data)?;
                std::os::unix::fs::fchown(&file, Some(f.uid), Some(f.gid))?;
                file.set_permissions(std::fs::Permissions::from_mode(f.mode))?;
                Ok(())
            })();
            if let Err(e) = written {
                self.remove(task_id);
                return Err(format!("cannot write the task's {}: {e}", f.target));
            }
            out.push((path, f.target.clone()));
        }
        Ok(out)
    }

    /// Mounts the task's own tmpfs at `dir` (mode 0700), with room for `bytes` of files
    /// and the task's identity.
    fn mount_tmpfs(&self, dir: &Path, bytes: usize) -> Result<(), String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let size = bytes + 64 * 1024;
        use nix::mount::MsFlags;
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(format!("mode=0700,size={size}").as_str()),
        )
        .map_err(|e| {
            format!(
                "cannot mount a tmpfs for the task's secrets at {}: {e}",
                dir.display()
            )
        })
    }

    /// Where a task's workload identity is kept, on its tmpfs.
    pub fn identity_dir(&self, task_id: &str) -> PathBuf {
        crate::identity::dir_of(&self.task_dir(task_id))
    }

    /// Writes a task's workload identity on its tmpfs (mounted now if its secrets did
    /// not), and returns the directory to bind-mount read-only at
    /// [`crate::identity::IDENTITY_DIR`]. Blocks.
    pub fn install_identity(
        &self,
        task_id: &str,
        issued: &crate::identity::Issued,
    ) -> Result<PathBuf, String> {
        let dir = self.task_dir(task_id);
        let mounted = std::fs::metadata(&dir)
            .ok()
            .zip(std::fs::metadata(&self.root).ok())
            .is_some_and(|(d, r)| {
                use std::os::unix::fs::MetadataExt;
                d.dev() != r.dev()
            });
        if !mounted {
            self.mount_tmpfs(&dir, 0)?;
        }
        let id_dir = crate::identity::dir_of(&dir);
        crate::identity::install(&id_dir, issued)
            .map_err(|e| format!("cannot write the task's workload identity: {e}"))?;
        Ok(id_dir)
    }

    /// Unmounts a task's tmpfs (its secrets go with it). Nothing if it has none.
    pub fn remove(&self, task_id: &str) {
        let dir = self.task_dir(task_id);
        if !dir.exists() {
            return;
        }
        let _ = nix::mount::umount2(&dir, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Where a reference's file goes in the container.
fn target_path(kind: &str, r: &SecretReference) -> String {
    if kind == "secret" && !r.target.starts_with('/') {
        format!("{SECRETS_DIR}/{}", r.target)
    } else {
        r.target.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(id: &str, v: u64, d: &str) -> SecretData {
        SecretData {
            key: Some(SecretKey {
                secret_id: id.into(),
                version: v,
            }),
            data: d.as_bytes().to_vec(),
        }
    }

    fn reference(id: &str, name: &str, v: u64, target: &str) -> SecretReference {
        SecretReference {
            secret_id: id.into(),
            secret_name: name.into(),
            version: v,
            target: target.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_task_gets_only_the_versions_its_spec_names() {
        let s = Secrets::new(Path::new("/tmp/x"));
        s.receive(
            &[
                data("a", 1, "one"),
                data("a", 2, "two"),
                data("b", 1, "bee"),
            ],
            false,
        );
        let spec = ContainerSpec {
            secrets: vec![reference("a", "db", 2, "db")],
            configs: vec![reference("b", "app", 1, "/etc/app.conf")],
            ..Default::default()
        };
        let files = s.files_for(&spec).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].target, "/run/secrets/db");
        assert_eq!(files[0].data.as_slice(), b"two");
        assert_eq!(files[0].mode, 0o444);
        assert_eq!(files[1].target, "/etc/app.conf");
        let other = ContainerSpec {
            secrets: vec![reference("c", "other", 1, "other")],
            ..Default::default()
        };
        let e = s.files_for(&other).err().unwrap();
        assert!(
            e.contains("secret other (version 1) has not reached this node"),
            "{e}"
        );
        s.forget(&[SecretKey {
            secret_id: "a".into(),
            version: 2,
        }]);
        assert!(s.files_for(&spec).is_err());
        s.receive(&[data("z", 1, "zed")], true);
        assert_eq!(s.held(), vec![("z".to_string(), 1)]);
    }
}

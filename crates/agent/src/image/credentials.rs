//! Registry credentials saved by `shoal registry login`: one JSON file, mode 0600, keyed
//! by registry host (Docker Hub's host names all count as `docker.io`). Read on every
//! use, rewritten atomically on every change.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::reference::canonical_registry;
use super::ImageError;

/// A username and password for a registry. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Default, Serialize, Deserialize)]
struct File {
    auths: BTreeMap<String, Credentials>,
}

/// The saved credentials, per registry host.
pub struct CredentialStore {
    path: PathBuf,
    /// Serializes read-modify-write cycles within this process.
    write: Mutex<()>,
}

impl CredentialStore {
    /// A store backed by `path`; nothing is read or created until used.
    pub fn open(path: &Path) -> Self {
        CredentialStore {
            path: path.to_path_buf(),
            write: Mutex::new(()),
        }
    }

    fn read(&self) -> Result<File, ImageError> {
        match fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                ImageError::Corrupt(format!(
                    "the registry credentials file {} is damaged ({e}): remove it and log \
                     in again with 'shoal registry login'",
                    self.path.display()
                ))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(File::default()),
            Err(e) => Err(ImageError::io_at("reading", &self.path)(e)),
        }
    }

    fn write(&self, file: &File) -> Result<(), ImageError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(ImageError::io_at("creating", dir))?;
        let bytes = serde_json::to_vec_pretty(file)
            .map_err(|e| ImageError::Corrupt(format!("encoding credentials: {e}")))?;
        // tempfile creates its files with mode 0600.
        let mut tmp = tempfile::Builder::new()
            .prefix(".credentials.")
            .tempfile_in(dir)
            .map_err(ImageError::io_at("creating a temporary file in", dir))?;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o600))
            .and_then(|()| tmp.write_all(&bytes))
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(ImageError::io_at("writing", tmp.path()))?;
        tmp.persist(&self.path)
            .map_err(|e| ImageError::io_at("replacing", &self.path)(e.error))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(ImageError::io_at("syncing", dir))?;
        Ok(())
    }

    /// The saved credentials for a registry, if any. A damaged file is logged and treated
    /// as empty (a pull then goes anonymous and may be refused with a clear message).
    pub fn get(&self, registry: &str) -> Option<Credentials> {
        match self.read() {
            Ok(f) => f.auths.get(&canonical_registry(registry)).cloned(),
            Err(e) => {
                warn!(error = %e, "cannot read registry credentials");
                None
            }
        }
    }

    pub fn set(&self, registry: &str, c: &Credentials) -> Result<(), ImageError> {
        let _g = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut f = self.read()?;
        f.auths.insert(canonical_registry(registry), c.clone());
        self.write(&f)
    }

    /// Forgets a registry's credentials; forgetting unknown ones is not an error.
    pub fn remove(&self, registry: &str) -> Result<(), ImageError> {
        let _g = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut f = self.read()?;
        if f.auths.remove(&canonical_registry(registry)).is_some() {
            self.write(&f)?;
        }
        Ok(())
    }
}

//! Images on this node: the per-node, content-addressed OCI image store that containers
//! are started from (DESIGN.md §6).
//!
//! Images come from a registry (`shoal image pull`, [`ImageStore::pull`]), a `docker save`
//! or OCI layout archive (`shoal image load`, [`ImageStore::load_archive`]) or a plain
//! rootfs tarball (`shoal image import`, [`ImageStore::import_rootfs`]). Each layer is
//! unpacked once, with OCI whiteouts turned into overlayfs ones, and the runtime stacks
//! [`ImageStore::layer_dirs`] as overlayfs lowerdirs.
//!
//! On disk, under the root the daemon gives (`<state-dir>/images`, mode 0700):
//!
//! ```text
//! images.json            the index: images by ID, their references, blobs and layers
//! blobs/sha256/<hex>     layer blobs (compressed as received), configs, manifests
//! layers/<diff-id hex>/  each layer unpacked, ready to be an overlayfs lowerdir
//! tmp/                   scratch space of running operations (emptied at open)
//! lock                   flock'd by the store that owns tmp/
//! ```
//!
//! Every digest is verified and nothing half-done is ever visible: content is prepared in
//! `tmp/`, moved into place by rename, and an image exists only once the index (rewritten
//! atomically) names it. An operation that fails removes whatever it added, so bad input
//! leaves the store exactly as it was.
//!
//! Registries named by `localhost` or an IP address are reached over plain HTTP, all
//! others over HTTPS: see [`uses_plain_http`].
//!
//! Heavy work is synchronous (the daemon calls it through `spawn_blocking`); only
//! [`ImageStore::pull`] and [`login`] are async.

mod archive;
mod credentials;
mod error;
mod index;
mod reference;
mod registry;
mod spec;
mod store;
mod unpack;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_registry;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use credentials::{CredentialStore, Credentials};
pub use error::ImageError;
pub use reference::{registry_of, uses_plain_http, DEFAULT_REGISTRY};
pub use registry::login;

pub(crate) use reference::host_arch;

use index::Index;
use store::{Inner, Txn};

/// What a container takes from its image's config when the service does not say.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
    /// The image's HEALTHCHECK (absent in images stored before it was kept).
    #[serde(default)]
    pub healthcheck: Option<ImageHealthcheck>,
    /// The image's STOPSIGNAL (empty: none; absent in images stored before it was kept).
    #[serde(default)]
    pub stop_signal: String,
}

/// A HEALTHCHECK as image configs carry it (durations in nanoseconds).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ImageHealthcheck {
    #[serde(rename = "Test", default)]
    pub test: Vec<String>,
    #[serde(rename = "Interval", default)]
    pub interval: u64,
    #[serde(rename = "Timeout", default)]
    pub timeout: u64,
    #[serde(rename = "StartPeriod", default)]
    pub start_period: u64,
    #[serde(rename = "Retries", default)]
    pub retries: u32,
}

/// An image in the store.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ImageInfo {
    /// `sha256:<config digest hex>`.
    pub id: String,
    /// Normalized references (`busybox:latest`, `10.0.0.1:5000/app:1`); empty for an
    /// image whose tags all moved to newer images.
    pub references: Vec<String>,
    /// Diff IDs (`sha256:..`), lowest layer first.
    pub layers: Vec<String>,
    pub config: ImageConfig,
    /// Bytes of the image's layer blobs as stored (compressed when pulled that way).
    pub size: u64,
    /// From the config's `created`; 0 when absent.
    pub created_unix: i64,
}

/// The node's image store. Cheap to clone; clones share state and may be used from
/// several threads at once. Open one per root per process: the first store opened on
/// a root owns its `tmp/`.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.inner.root)
            .finish()
    }
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`. A damaged index is refused here.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        Ok(ImageStore {
            inner: Arc::new(Inner::open(root)?),
        })
    }

    /// The root directory of the store.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// `shoal image import ROOTFS.tar NAME[:TAG]`: a plain rootfs tarball (optionally
    /// gzip-compressed) becomes a one-layer image with an empty config (no cmd).
    pub fn import_rootfs(&self, tar: &Path, reference: &str) -> Result<ImageInfo, ImageError> {
        // Check the reference before doing any work.
        reference::normalize_reference(reference)?;
        archive::import_rootfs(Txn::begin(&self.inner)?, tar, reference)
    }

    /// `shoal image load -i ARCHIVE`: a `docker save` archive (manifest.json, layer tars,
    /// configs) or an OCI image layout tar (oci-layout, index.json, blobs/sha256/...),
    /// with one image or several. References come from `RepoTags`, or from the
    /// `io.containerd.image.name` / `org.opencontainers.image.ref.name` annotations (a
    /// ref.name that is a bare tag names no repository and is ignored). All images load,
    /// or none.
    pub fn load_archive(&self, archive: &Path) -> Result<Vec<ImageInfo>, ImageError> {
        archive::load_archive(Txn::begin(&self.inner)?, archive)
    }

    /// All images, newest first.
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let index = Index::read(&self.inner.index_path())?;
        let mut out: Vec<ImageInfo> = index.images.into_values().map(|i| i.info).collect();
        out.sort_by(|a, b| {
            b.created_unix
                .cmp(&a.created_unix)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    /// An image by reference (`busybox` means `busybox:latest`), by full ID, or by a
    /// unique ID prefix, with or without `sha256:`. A reference wins over an ID prefix.
    /// An ambiguous prefix is an error.
    pub fn resolve(&self, reference: &str) -> Result<Option<ImageInfo>, ImageError> {
        let index = Index::read(&self.inner.index_path())?;
        Ok(store::find(&index, reference)?
            .and_then(|(id, _)| index.images.get(&id))
            .map(|i| i.info.clone()))
    }

    /// Removes a reference; when the image has no reference left (or was named by ID),
    /// removes the image and the blobs and layers no other image holds. The caller checks
    /// that no container uses the image.
    pub fn remove(&self, reference: &str) -> Result<(), ImageError> {
        self.inner.remove(reference)
    }

    /// The unpacked layer directories of an image, lowest first, for overlayfs lowerdir
    /// (which lists the uppermost first: reverse these).
    pub fn layer_dirs(&self, image: &ImageInfo) -> Vec<PathBuf> {
        image
            .layers
            .iter()
            .map(|d| self.inner.layer_path(d.trim_start_matches("sha256:")))
            .collect()
    }
}

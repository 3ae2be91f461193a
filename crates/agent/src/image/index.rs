//! `images.json`: which images exist, their references, and the blobs and layers each
//! one holds. Rewritten whole and atomically (temp file, fsync, rename, fsync dir), so a
//! crash leaves the old index or the new one, never a mix.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ImageError, ImageInfo};

const VERSION: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Index {
    pub version: u32,
    /// By image ID (`sha256:<config hex>`).
    pub images: BTreeMap<String, StoredImage>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredImage {
    pub info: ImageInfo,
    /// Digests of the blobs this image holds: config, manifest (if any), layer blobs.
    pub blobs: Vec<String>,
}

impl Index {
    pub fn read(path: &Path) -> Result<Index, ImageError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Index {
                    version: VERSION,
                    images: BTreeMap::new(),
                })
            }
            Err(e) => return Err(ImageError::io_at("reading the image index", path)(e)),
        };
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| {
            ImageError::Corrupt(format!(
                "the image index {} is damaged ({e}): move it aside and load or pull the \
                 images again",
                path.display()
            ))
        })?;
        if index.version != VERSION {
            return Err(ImageError::Corrupt(format!(
                "the image index {} has version {}, this shoal reads version {VERSION}: \
                 upgrade shoal or move the image store aside",
                path.display(),
                index.version
            )));
        }
        Ok(index)
    }

    pub fn write(&self, path: &Path) -> Result<(), ImageError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| ImageError::Corrupt(format!("encoding the image index: {e}")))?;
        // In tmp/ (same file system) so that a crash's leftover is swept at the next open.
        let scratch = dir.join("tmp");
        let scratch = if scratch.is_dir() {
            scratch.as_path()
        } else {
            dir
        };
        let mut tmp = tempfile::Builder::new()
            .prefix("images.json.")
            .tempfile_in(scratch)
            .map_err(ImageError::io_at("creating a temporary file in", scratch))?;
        tmp.write_all(&bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(ImageError::io_at("writing", tmp.path()))?;
        tmp.persist(path)
            .map_err(|e| ImageError::io_at("replacing", path)(e.error))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(ImageError::io_at("syncing", dir))?;
        Ok(())
    }

    /// The image a normalized reference points to.
    pub fn by_reference(&self, reference: &str) -> Option<&StoredImage> {
        self.images
            .values()
            .find(|i| i.info.references.iter().any(|r| r == reference))
    }

    /// Images whose ID starts with a hex prefix.
    pub fn by_id_prefix(&self, prefix: &str) -> Vec<&StoredImage> {
        let full = format!("sha256:{prefix}");
        self.images
            .range(full.clone()..)
            .take_while(|(id, _)| id.starts_with(&full))
            .map(|(_, i)| i)
            .collect()
    }

    /// Blob hexes and layer hexes held by any image.
    pub fn referenced(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        for i in self.images.values() {
            for b in &i.blobs {
                blobs.insert(b.trim_start_matches("sha256:").to_string());
            }
            for l in &i.info.layers {
                layers.insert(l.trim_start_matches("sha256:").to_string());
            }
        }
        (blobs, layers)
    }
}

//! Images from files: `shoal image import` (a rootfs tarball) and `shoal image load` (a
//! `docker save` archive or an OCI image layout tar).
//!
//! An archive is first read whole into scratch space, so a truncated or garbled one is
//! refused before anything is stored; every file it names is then checked against its
//! digest (config and blob names, diff IDs of layers) while it is stored.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::index::StoredImage;
use super::reference::{digest_hex, normalize_reference};
use super::spec::{self, DockerSaveEntry, Manifest, OciIndex, Parsed};
use super::store::Txn;
use super::unpack::{decompressed, safe_components, HashingReader};
use super::{ImageConfig, ImageError, ImageInfo};

/// Opens an input file, telling a missing one apart from other failures.
pub(crate) fn open_input(path: &Path, what: &str) -> Result<File, ImageError> {
    File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ImageError::NotFound(format!("{what} does not exist: check the path"))
        } else {
            ImageError::io(format!("opening {what}"))(e)
        }
    })
}

/// A plain rootfs tarball becomes a one-layer image with an empty config.
pub(crate) fn import_rootfs(
    mut txn: Txn,
    tar: &Path,
    reference: &str,
) -> Result<ImageInfo, ImageError> {
    let reference = normalize_reference(reference)?;
    let what = format!("rootfs tarball {}", tar.display());
    let file = open_input(tar, &what)?;
    let (layer_digest, size) = txn.put_blob_reader(file, None, &what)?;
    let blob = txn.blob_path(&layer_digest)?;
    let diff_id = txn.ensure_layer(&blob, None, &what)?;
    let config = spec::rootfs_config(&diff_id)?;
    let parsed = spec::parse_config(&config, "generated image config")?;
    let (config_digest, _) = txn.put_blob_bytes(&config, None, "generated image config")?;
    let info = ImageInfo {
        id: config_digest.clone(),
        references: vec![reference],
        layers: vec![diff_id],
        config: ImageConfig::default(),
        size,
        created_unix: parsed.created_unix,
    };
    let mut infos = txn.commit(vec![StoredImage {
        info,
        blobs: vec![config_digest, layer_digest],
    }])?;
    infos.pop().ok_or_else(|| {
        ImageError::NotFound(format!(
            "the image imported from {what} vanished: try again"
        ))
    })
}

/// The regular files of an archive, read into scratch space, by normalized path.
struct ArchiveFiles {
    what: String,
    files: HashMap<String, PathBuf>,
    /// Symlinks and hard links, by normalized path, to normalized targets.
    links: HashMap<String, String>,
}

impl ArchiveFiles {
    fn read(archive: &Path, scratch: &Path, what: &str) -> Result<ArchiveFiles, ImageError> {
        let file = open_input(archive, what)?;
        let mut src = HashingReader::new(decompressed(file, what)?);
        let mut out = ArchiveFiles {
            what: what.to_string(),
            files: HashMap::new(),
            links: HashMap::new(),
        };
        let bad = |problem: String| {
            let problem = super::unpack::printable(&problem);
            ImageError::Corrupt(format!(
                "{what} is not a valid image archive: {problem}; nothing was stored, check \
                 the file (is it complete?) or save it again"
            ))
        };
        {
            let mut ar = tar::Archive::new(&mut src);
            let entries = ar.entries().map_err(|e| bad(e.to_string()))?;
            for (n, entry) in entries.enumerate() {
                let mut entry = entry.map_err(|e| bad(e.to_string()))?;
                let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
                let name = join(&safe_components(&path, what)?);
                match entry.header().entry_type() {
                    tar::EntryType::Regular | tar::EntryType::Continuous => {
                        let dest = scratch.join(format!("f{n}"));
                        let mut f = fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .open(&dest)
                            .map_err(ImageError::io_at("creating", &dest))?;
                        io::copy(&mut entry, &mut f)
                            .map_err(|e| bad(format!("reading {name}: {e}")))?;
                        out.files.insert(name, dest);
                    }
                    tar::EntryType::Symlink | tar::EntryType::Link => {
                        let target = entry
                            .link_name()
                            .map_err(|e| bad(e.to_string()))?
                            .ok_or_else(|| bad(format!("link {name} has no target")))?
                            .into_owned();
                        let target = if entry.header().entry_type() == tar::EntryType::Symlink {
                            // Relative to the link's directory (docker save links
                            // duplicate layers as ../<id>/layer.tar).
                            resolve_relative(&name, &target).ok_or_else(|| {
                                bad(format!("link {name} points outside the archive"))
                            })?
                        } else {
                            join(&safe_components(&target, what)?)
                        };
                        out.links.insert(name, target);
                    }
                    _ => {}
                }
            }
        }
        if src.hit_eof() {
            return Err(bad(
                "it ends without the end-of-archive marker (truncated?)".to_string(),
            ));
        }
        Ok(out)
    }

    fn has(&self, name: &str) -> bool {
        self.lookup(name).is_ok()
    }

    /// The scratch file for a name, following links.
    fn lookup(&self, name: &str) -> Result<&Path, ImageError> {
        let mut name = join(&safe_components(Path::new(name), &self.what)?);
        for _ in 0..16 {
            if let Some(p) = self.files.get(&name) {
                return Ok(p);
            }
            match self.links.get(&name) {
                Some(t) => name = t.clone(),
                None => break,
            }
        }
        Err(ImageError::Corrupt(format!(
            "{}: {name} is missing from the archive (truncated or incomplete?); nothing \
             was stored",
            self.what
        )))
    }

    fn read_small(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let p = self.lookup(name)?;
        let len = fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        if len > 64 * 1024 * 1024 {
            return Err(ImageError::Corrupt(format!(
                "{}: {name} is {len} bytes, far too big for a JSON document",
                self.what
            )));
        }
        fs::read(p).map_err(ImageError::io_at("reading", p))
    }

    fn blob_name(&self, digest: &str, what: &str) -> Result<String, ImageError> {
        Ok(format!("blobs/sha256/{}", digest_hex(digest, what)?))
    }
}

fn join(comps: &[std::ffi::OsString]) -> String {
    let parts: Vec<String> = comps
        .iter()
        .map(|c| String::from_utf8_lossy(c.as_bytes()).into_owned())
        .collect();
    parts.join("/")
}

fn resolve_relative(link: &str, target: &Path) -> Option<String> {
    if target.is_absolute() {
        return None;
    }
    let mut parts: Vec<String> = link.split('/').map(str::to_string).collect();
    parts.pop();
    for c in target.components() {
        match c {
            std::path::Component::Normal(n) => {
                parts.push(String::from_utf8_lossy(n.as_bytes()).into_owned())
            }
            std::path::Component::ParentDir => {
                parts.pop()?;
            }
            std::path::Component::CurDir => {}
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

/// The hex digest a file name carries, if it is `blobs/sha256/<hex>` or `<hex>.json`.
fn digest_in_name(name: &str) -> Option<String> {
    let base = name.rsplit('/').next()?;
    let hex = base.strip_suffix(".json").unwrap_or(base);
    let is_digest = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let named = name.starts_with("blobs/sha256/") || base.ends_with(".json");
    (is_digest && named).then(|| format!("sha256:{hex}"))
}

/// A `docker save` archive or an OCI layout tar: all its images, or nothing.
pub(crate) fn load_archive(mut txn: Txn, archive: &Path) -> Result<Vec<ImageInfo>, ImageError> {
    let what = format!("image archive {}", archive.display());
    let files = ArchiveFiles::read(archive, txn.tmp.path(), &what)?;
    let images = if files.has("manifest.json") {
        load_docker_save(&mut txn, &files)?
    } else if files.has("index.json") {
        load_oci_layout(&mut txn, &files)?
    } else {
        return Err(ImageError::Corrupt(format!(
            "{what} is neither a docker save archive (no manifest.json) nor an OCI image \
             layout (no index.json): create it with 'docker save' or an OCI tool"
        )));
    };
    if images.is_empty() {
        return Err(ImageError::Corrupt(format!("{what} contains no images")));
    }
    txn.commit(images)
}

fn references(names: &[String], what: &str) -> Result<Vec<String>, ImageError> {
    names
        .iter()
        .map(|n| {
            normalize_reference(n).map_err(|e| {
                ImageError::Corrupt(format!("{what}: bad image name {n:?} in the archive: {e}"))
            })
        })
        .collect()
}

fn load_docker_save(txn: &mut Txn, files: &ArchiveFiles) -> Result<Vec<StoredImage>, ImageError> {
    let what = &files.what;
    let manifest: Vec<DockerSaveEntry> =
        serde_json::from_slice(&files.read_small("manifest.json")?)
            .map_err(|e| ImageError::Corrupt(format!("{what}: manifest.json is not valid: {e}")))?;
    let mut images = Vec::new();
    for entry in manifest {
        let cfg_what = format!("{what}: config {}", entry.config);
        let cfg_bytes = files.read_small(&entry.config)?;
        let expected = digest_in_name(&entry.config);
        let (config_digest, _) = txn.put_blob_bytes(&cfg_bytes, expected.as_deref(), &cfg_what)?;
        let parsed = spec::parse_config(&cfg_bytes, &cfg_what)?;
        if parsed.diff_ids.len() != entry.layers.len() {
            return Err(ImageError::Corrupt(format!(
                "{cfg_what}: lists {} layers but manifest.json names {}",
                parsed.diff_ids.len(),
                entry.layers.len()
            )));
        }
        let mut blobs = vec![config_digest.clone()];
        let mut size = 0;
        for (layer, diff) in entry.layers.iter().zip(&parsed.diff_ids) {
            let layer_what = format!("{what}: layer {layer}");
            let path = files.lookup(layer)?;
            let expected = digest_in_name(layer).filter(|_| layer.starts_with("blobs/"));
            let (digest, n) = txn.put_blob_file(path, expected.as_deref(), &layer_what)?;
            let blob = txn.blob_path(&digest)?;
            txn.ensure_layer(&blob, Some(diff), &layer_what)?;
            blobs.push(digest);
            size += n;
        }
        let refs = references(&entry.repo_tags.unwrap_or_default(), what)?;
        images.push(StoredImage {
            info: ImageInfo {
                id: config_digest,
                references: refs,
                layers: parsed.diff_ids,
                config: parsed.config,
                size,
                created_unix: parsed.created_unix,
            },
            blobs,
        });
    }
    Ok(images)
}

/// Reads a blob of an OCI layout and checks it against its descriptor.
fn layout_blob(files: &ArchiveFiles, digest: &str, what: &str) -> Result<Vec<u8>, ImageError> {
    let bytes = files.read_small(&files.blob_name(digest, what)?)?;
    let actual = {
        use sha2::Digest;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)))
    };
    if actual != digest {
        return Err(ImageError::Corrupt(format!(
            "{what}: digest mismatch (expected {digest}, got {actual}): the archive is damaged \
             or was altered; nothing was stored"
        )));
    }
    Ok(bytes)
}

/// The reference an OCI index entry gives, if any. `org.opencontainers.image.ref.name`
/// may be a bare tag ("latest"), which names no repository: such an image is loaded
/// without a reference (reachable by ID).
fn oci_reference(d: &spec::Descriptor) -> Option<String> {
    if let Some(n) = d.annotation("io.containerd.image.name") {
        return Some(n.to_string());
    }
    let n = d.annotation("org.opencontainers.image.ref.name")?;
    if n.contains(':') || n.contains('/') {
        Some(n.to_string())
    } else {
        warn!(
            ref_name = n,
            "OCI index entry names only a tag; loading the image without a reference"
        );
        None
    }
}

fn load_oci_layout(txn: &mut Txn, files: &ArchiveFiles) -> Result<Vec<StoredImage>, ImageError> {
    let what = &files.what;
    let index: OciIndex = serde_json::from_slice(&files.read_small("index.json")?)
        .map_err(|e| ImageError::Corrupt(format!("{what}: index.json is not valid: {e}")))?;
    let mut images = Vec::new();
    for desc in &index.manifests {
        let refs = references(&oci_reference(desc).into_iter().collect::<Vec<_>>(), what)?;
        // Follow nested indexes down to this platform's manifest.
        let mut d = desc.clone();
        let mut depth = 0;
        let (manifest_digest, manifest_bytes, manifest): (String, Vec<u8>, Manifest) = loop {
            let m_what = format!("{what}: manifest {}", d.digest);
            let bytes = layout_blob(files, &d.digest, &m_what)?;
            match spec::parse_manifest(&bytes, &m_what)? {
                Parsed::Manifest(m) => break (d.digest.clone(), bytes, m),
                Parsed::Index(entries) => {
                    depth += 1;
                    if depth > 4 {
                        return Err(ImageError::Corrupt(format!(
                            "{m_what}: indexes nested too deep"
                        )));
                    }
                    d = spec::choose_platform(&entries, &m_what)?.clone();
                }
            }
        };
        let m_what = format!("{what}: manifest {manifest_digest}");
        let (md, _) = txn.put_blob_bytes(&manifest_bytes, Some(&manifest_digest), &m_what)?;
        let cfg_what = format!("{what}: config {}", manifest.config.digest);
        let cfg_bytes = layout_blob(files, &manifest.config.digest, &cfg_what)?;
        let (config_digest, _) =
            txn.put_blob_bytes(&cfg_bytes, Some(&manifest.config.digest), &cfg_what)?;
        let parsed = spec::parse_config(&cfg_bytes, &cfg_what)?;
        if parsed.diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::Corrupt(format!(
                "{cfg_what}: lists {} layers but the manifest has {}",
                parsed.diff_ids.len(),
                manifest.layers.len()
            )));
        }
        let mut blobs = vec![config_digest.clone(), md];
        let mut size = 0;
        for (layer, diff) in manifest.layers.iter().zip(&parsed.diff_ids) {
            let layer_what = format!("{what}: layer {}", layer.digest);
            let path = files.lookup(&files.blob_name(&layer.digest, &layer_what)?)?;
            let (digest, n) = txn.put_blob_file(path, Some(&layer.digest), &layer_what)?;
            let blob = txn.blob_path(&digest)?;
            txn.ensure_layer(&blob, Some(diff), &layer_what)?;
            blobs.push(digest);
            size += n;
        }
        images.push(StoredImage {
            info: ImageInfo {
                id: config_digest,
                references: refs,
                layers: parsed.diff_ids,
                config: parsed.config,
                size,
                created_unix: parsed.created_unix,
            },
            blobs,
        });
    }
    Ok(images)
}

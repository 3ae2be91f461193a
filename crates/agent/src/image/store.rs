//! The store's bookkeeping: where things live, transactions that either commit whole
//! images or leave no trace, and garbage collection of blobs and layers nobody holds.
//!
//! Concurrency: every blob or layer a transaction uses is *pinned* (an in-memory count)
//! before the transaction looks at whether it exists. Removal and roll-back only delete
//! what is unpinned and unreferenced by the index, under one lock that also serializes
//! index rewrites. So an import can run beside a `remove` that drops a layer it needs: the
//! pin keeps the layer alive, or the import finds it gone and unpacks it again.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tracing::{debug, warn};

use super::index::{Index, StoredImage};
use super::reference::{digest_hex, normalize_reference};
use super::unpack::unpack_layer;
use super::{ImageError, ImageInfo};

/// A piece of content the store holds, by sha256 hex.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Item {
    Blob(String),
    Layer(String),
}

pub(crate) struct Inner {
    pub root: PathBuf,
    pins: Mutex<HashMap<Item, usize>>,
    /// Held (flock) for the life of the store; see [`super::ImageStore::open`].
    _lock: Option<File>,
}

impl Inner {
    pub fn open(root: &Path) -> Result<Inner, ImageError> {
        for dir in [
            root.to_path_buf(),
            root.join("blobs").join("sha256"),
            root.join("layers"),
            root.join("tmp"),
        ] {
            fs::create_dir_all(&dir).map_err(ImageError::io_at("creating", &dir))?;
        }
        // Layers hold set-uid binaries and device nodes of other users' images: only root
        // may look inside.
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(ImageError::io_at("setting the mode of", root))?;
        let lock_path = root.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(ImageError::io_at("opening", &lock_path))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let sole_owner =
            unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if sole_owner {
            // Leftovers of a crash: no transaction of ours can be running yet.
            let tmp = root.join("tmp");
            let entries = fs::read_dir(&tmp).map_err(ImageError::io_at("listing", &tmp))?;
            for e in entries.flatten() {
                let p = e.path();
                let r = if p.is_dir() && !p.is_symlink() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                if let Err(err) = r {
                    warn!(path = %p.display(), error = %err, "cannot remove a leftover temporary file");
                }
            }
        } else {
            debug!(root = %root.display(), "image store opened by another process too; leaving tmp/ alone");
        }
        let inner = Inner {
            root: root.to_path_buf(),
            pins: Mutex::new(HashMap::new()),
            _lock: sole_owner.then_some(lock),
        };
        // Refuse a damaged index now rather than on first use.
        Index::read(&inner.index_path())?;
        Ok(inner)
    }

    pub fn index_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn blob_path(&self, hex: &str) -> PathBuf {
        self.root.join("blobs").join("sha256").join(hex)
    }

    pub fn layer_path(&self, hex: &str) -> PathBuf {
        self.root.join("layers").join(hex)
    }

    fn item_path(&self, item: &Item) -> PathBuf {
        match item {
            Item::Blob(h) => self.blob_path(h),
            Item::Layer(h) => self.layer_path(h),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, HashMap<Item, usize>> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh temporary directory under `tmp/`, removed when dropped.
    pub fn staging(&self, prefix: &str) -> Result<TempDir, ImageError> {
        let tmp = self.tmp_dir();
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&tmp)
            .map_err(ImageError::io_at("creating a temporary directory in", &tmp))
    }

    /// Moves content nobody references or pins out of the way (into `trash`, deleted by
    /// the caller after releasing the lock). Called with the lock held.
    fn collect(
        &self,
        pins: &HashMap<Item, usize>,
        index: &Index,
        candidates: impl IntoIterator<Item = Item>,
        allowed_pins: usize,
        trash: &Path,
    ) {
        let (blobs, layers) = index.referenced();
        for (n, item) in candidates.into_iter().enumerate() {
            let referenced = match &item {
                Item::Blob(h) => blobs.contains(h),
                Item::Layer(h) => layers.contains(h),
            };
            if referenced || pins.get(&item).copied().unwrap_or(0) > allowed_pins {
                continue;
            }
            let from = self.item_path(&item);
            let to = trash.join(format!("{n}"));
            match fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(path = %from.display(), error = %e, "cannot remove unused image content")
                }
            }
        }
    }

    /// Removes a reference, or a whole image given by ID; deletes content no image holds.
    pub fn remove(&self, reference: &str) -> Result<(), ImageError> {
        let trash = self.staging("trash-")?;
        let pins = self.lock();
        let mut index = Index::read(&self.index_path())?;
        let (id, by_ref) = match find(&index, reference)? {
            Some(found) => found,
            None => {
                return Err(ImageError::NotFound(format!(
                    "no such image: {reference}: see 'shoal image ls'"
                )))
            }
        };
        if let Some(r) = by_ref {
            if let Some(img) = index.images.get_mut(&id) {
                img.info.references.retain(|x| x != &r);
                if !img.info.references.is_empty() {
                    return index.write(&self.index_path());
                }
            }
        }
        let Some(removed) = index.images.remove(&id) else {
            return Ok(());
        };
        index.write(&self.index_path())?;
        let mut candidates = Vec::new();
        for b in &removed.blobs {
            candidates.push(Item::Blob(b.trim_start_matches("sha256:").to_string()));
        }
        for l in &removed.info.layers {
            candidates.push(Item::Layer(l.trim_start_matches("sha256:").to_string()));
        }
        self.collect(&pins, &index, candidates, 0, trash.path());
        drop(pins);
        drop(trash);
        Ok(())
    }
}

/// Finds an image by normalized reference, else by full ID or unique ID prefix. Returns
/// its ID and, when found by reference, the normalized reference.
pub(crate) fn find(
    index: &Index,
    reference: &str,
) -> Result<Option<(String, Option<String>)>, ImageError> {
    let normalized = normalize_reference(reference);
    if let Ok(n) = &normalized {
        if let Some(img) = index.by_reference(n) {
            return Ok(Some((img.info.id.clone(), Some(n.clone()))));
        }
    }
    let prefix = reference
        .trim()
        .strip_prefix("sha256:")
        .unwrap_or(reference.trim());
    let is_hex = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if is_hex {
        let matches = index.by_id_prefix(prefix);
        match matches.as_slice() {
            [] => {}
            [one] => return Ok(Some((one.info.id.clone(), None))),
            many => {
                let ids: Vec<&str> = many
                    .iter()
                    .map(|i| i.info.id.get(7..19).unwrap_or(&i.info.id))
                    .collect();
                return Err(ImageError::BadReference(format!(
                    "image ID prefix {prefix} is ambiguous (matches {}): give more characters",
                    ids.join(", ")
                )));
            }
        }
        return Ok(None);
    }
    normalized.map(|_| None)
}

/// One import, load or pull in progress. Content it adds and does not commit is
/// removed when it is dropped, unless another transaction or the index took it up.
pub(crate) struct Txn {
    store: Arc<Inner>,
    pinned: Vec<Item>,
    created: Vec<Item>,
    committed: bool,
    /// Scratch space, on the same file system as the store so content moves by rename.
    pub tmp: TempDir,
}

impl Txn {
    pub fn begin(store: &Arc<Inner>) -> Result<Txn, ImageError> {
        Ok(Txn {
            store: store.clone(),
            pinned: Vec::new(),
            created: Vec::new(),
            committed: false,
            tmp: store.staging("txn-")?,
        })
    }

    fn pin(&mut self, item: Item) {
        if self.pinned.contains(&item) {
            return;
        }
        *self.store.lock().entry(item.clone()).or_insert(0) += 1;
        self.pinned.push(item);
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.store.blob_path(&digest_hex(digest, "blob")?))
    }

    /// Pins an existing blob (for a pull that skipped downloading it).
    pub fn hold_blob(&mut self, digest: &str, what: &str) -> Result<u64, ImageError> {
        let hex = digest_hex(digest, what)?;
        self.pin(Item::Blob(hex.clone()));
        let p = self.store.blob_path(&hex);
        fs::metadata(&p).map(|m| m.len()).map_err(|_| {
            ImageError::NotFound(format!(
                "{what}: blob {digest} was removed while this pull ran: pull again"
            ))
        })
    }

    /// Stores `bytes` as a blob, checking them against `expected` if given.
    pub fn put_blob_bytes(
        &mut self,
        bytes: &[u8],
        expected: Option<&str>,
        what: &str,
    ) -> Result<(String, u64), ImageError> {
        self.put_blob_reader(bytes, expected, what)
    }

    /// Copies a stream into a blob, checking it against `expected` if given.
    pub fn put_blob_reader(
        &mut self,
        mut reader: impl Read,
        expected: Option<&str>,
        what: &str,
    ) -> Result<(String, u64), ImageError> {
        let mut tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.tmp.path())
            .map_err(ImageError::io_at(
                "creating a temporary file in",
                self.tmp.path(),
            ))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ImageError::io(format!("reading {what}"))(e)),
            };
            hasher.update(&buf[..n]);
            size += n as u64;
            tmp.write_all(&buf[..n])
                .map_err(ImageError::io_at("writing", tmp.path()))?;
        }
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        check_digest(&digest, expected, what)?;
        tmp.as_file()
            .sync_all()
            .map_err(ImageError::io_at("syncing", tmp.path()))?;
        let (_, path) = tmp
            .keep()
            .map_err(|e| ImageError::io("keeping a temporary blob")(e.error))?;
        self.adopt(&path, &digest)?;
        Ok((digest, size))
    }

    /// Stores a file already in this transaction's scratch space (hard-linked, not copied).
    pub fn put_blob_file(
        &mut self,
        path: &Path,
        expected: Option<&str>,
        what: &str,
    ) -> Result<(String, u64), ImageError> {
        let mut f = File::open(path).map_err(ImageError::io_at("opening", path))?;
        let mut hasher = Sha256::new();
        let size = io::copy(&mut f, &mut hasher).map_err(ImageError::io_at("reading", path))?;
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        check_digest(&digest, expected, what)?;
        f.sync_all().map_err(ImageError::io_at("syncing", path))?;
        self.adopt(path, &digest)?;
        Ok((digest, size))
    }

    /// Moves a verified file to its blob path, unless that blob is already there.
    fn adopt(&mut self, path: &Path, digest: &str) -> Result<(), ImageError> {
        let hex = digest_hex(digest, "blob")?;
        self.pin(Item::Blob(hex.clone()));
        let dest = self.store.blob_path(&hex);
        if dest.exists() {
            return Ok(());
        }
        fs::set_permissions(path, fs::Permissions::from_mode(0o644))
            .map_err(ImageError::io_at("setting the mode of", path))?;
        // A hard link never replaces a blob another transaction just stored.
        match fs::hard_link(path, &dest) {
            Ok(()) => self.created.push(Item::Blob(hex)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ImageError::io_at("storing blob", &dest)(e)),
        }
        // `path` stays as a second name of the blob until the scratch space goes, so a
        // file an archive names twice can be stored twice.
        Ok(())
    }

    /// Makes sure the layer in blob `blob` is unpacked, and returns its diff ID. With an
    /// `expected` diff ID, an already unpacked layer is reused and a fresh unpack must
    /// match it; without, the tar must carry its end-of-archive marker.
    pub fn ensure_layer(
        &mut self,
        blob: &Path,
        expected: Option<&str>,
        what: &str,
    ) -> Result<String, ImageError> {
        if let Some(diff) = expected {
            let hex = digest_hex(diff, what)?;
            self.pin(Item::Layer(hex.clone()));
            if self.store.layer_path(&hex).is_dir() {
                return Ok(diff.to_string());
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(self.tmp.path())
            .map_err(ImageError::io_at(
                "creating a temporary directory in",
                self.tmp.path(),
            ))?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .map_err(ImageError::io_at("setting the mode of", dir.path()))?;
        let f = File::open(blob).map_err(ImageError::io_at("opening", blob))?;
        let unpacked = unpack_layer(f, dir.path(), what, expected.is_none())?;
        if let Some(diff) = expected {
            if unpacked.diff_id != diff {
                return Err(ImageError::Corrupt(format!(
                    "{what}: its content does not match the image config (diff ID expected \
                     {diff}, got {}): the archive or layer is damaged; nothing was stored",
                    unpacked.diff_id
                )));
            }
        }
        let diff = unpacked.diff_id;
        let hex = digest_hex(&diff, what)?;
        if expected.is_none() {
            self.pin(Item::Layer(hex.clone()));
        }
        let dest = self.store.layer_path(&hex);
        if dest.is_dir() {
            return Ok(diff);
        }
        sync_fs(dir.path())?;
        match fs::rename(dir.path(), &dest) {
            Ok(()) => {
                let _ = dir.keep();
                self.created.push(Item::Layer(hex));
            }
            // Another transaction unpacked the same layer first: theirs is as good.
            Err(_) if dest.is_dir() => {}
            Err(e) => return Err(ImageError::io_at("storing layer", &dest)(e)),
        }
        Ok(diff)
    }

    /// Records new images in the index (moving references that pointed elsewhere) and
    /// keeps everything this transaction added.
    pub fn commit(mut self, images: Vec<StoredImage>) -> Result<Vec<ImageInfo>, ImageError> {
        let store = self.store.clone();
        let _pins = store.lock();
        let mut index = Index::read(&store.index_path())?;
        for img in &images {
            for l in &img.info.layers {
                let p = store.layer_path(&digest_hex(l, "layer")?);
                if !p.is_dir() {
                    return Err(ImageError::NotFound(format!(
                        "layer {l} of image {} vanished before it was recorded: try again",
                        img.info.id
                    )));
                }
            }
        }
        let mut ids = Vec::new();
        for img in images {
            for r in &img.info.references {
                for other in index.images.values_mut() {
                    if other.info.id != img.info.id {
                        other.info.references.retain(|x| x != r);
                    }
                }
            }
            ids.push(img.info.id.clone());
            match index.images.get_mut(&img.info.id) {
                Some(existing) => {
                    for r in img.info.references {
                        if !existing.info.references.contains(&r) {
                            existing.info.references.push(r);
                        }
                    }
                    for b in img.blobs {
                        if !existing.blobs.contains(&b) {
                            existing.blobs.push(b);
                        }
                    }
                }
                None => {
                    index.images.insert(img.info.id.clone(), img);
                }
            }
        }
        index.write(&store.index_path())?;
        self.committed = true;
        let mut out = Vec::new();
        for id in ids {
            if let Some(i) = index.images.get(&id) {
                if !out.iter().any(|o: &ImageInfo| o.id == id) {
                    out.push(i.info.clone());
                }
            }
        }
        Ok(out)
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        let mut pins = self.store.lock();
        if !self.committed && !self.created.is_empty() {
            match Index::read(&self.store.index_path()) {
                Ok(index) => {
                    let created = std::mem::take(&mut self.created);
                    self.store
                        .collect(&pins, &index, created, 1, self.tmp.path());
                }
                Err(e) => {
                    warn!(error = %e, "cannot read the image index; leaving new content in place")
                }
            }
        }
        for item in self.pinned.drain(..) {
            if let Some(n) = pins.get_mut(&item) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(&item);
                }
            }
        }
        // `tmp` (with anything moved into it) is removed after this.
    }
}

fn check_digest(actual: &str, expected: Option<&str>, what: &str) -> Result<(), ImageError> {
    match expected {
        Some(e) if e != actual => Err(ImageError::Corrupt(format!(
            "{what}: digest mismatch (expected {e}, got {actual}): the content is damaged or \
             was altered; nothing was stored"
        ))),
        _ => Ok(()),
    }
}

/// Flushes a freshly unpacked layer to disk before it becomes visible: a layer is never
/// unpacked twice, so a crash must not leave one with empty files behind its name.
fn sync_fs(dir: &Path) -> Result<(), ImageError> {
    let d = File::open(dir).map_err(ImageError::io_at("opening", dir))?;
    // SAFETY: syncfs on a file descriptor we own.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(ImageError::io_at("syncing", dir)(io::Error::last_os_error()));
    }
    Ok(())
}

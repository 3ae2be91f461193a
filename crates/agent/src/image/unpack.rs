//! Unpacking one layer tar into a directory that overlayfs can use as a lowerdir.
//!
//! Ownership, permissions, xattrs, fifos, symlinks and hard links are kept (the agent
//! runs as root). Character and block devices are not created, ever: an image has no
//! business shipping a node for the host's disks or memory, and a container gets its
//! /dev from the runtime. (containerd and Docker create them when running as root and
//! skip them only in a user namespace; we skip them always, and say so in the log.)
//! OCI whiteouts become overlayfs ones: `.wh.NAME` turns into a
//! 0:0 character device NAME, `.wh..wh..opq` into `trusted.overlay.opaque=y` on its
//! directory. Entries that would land outside the layer directory are refused: `..`,
//! absolute paths, and any path or hard-link target whose parent is a symlink, so a layer
//! can never write through a link it planted. The destination is a fresh temporary
//! directory owned by the store, so checking each parent with `lstat` is not racy.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use tracing::warn;

use super::ImageError;

/// What unpacking a layer found out.
pub(crate) struct Unpacked {
    /// `sha256:<hex>` of the uncompressed tar: the layer's diff ID.
    pub diff_id: String,
}

/// A reader that hashes what passes through it and remembers hitting the end of input.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    hit_eof: bool,
}

impl<R> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            hit_eof: false,
        }
    }

    /// Whether a read met the end of input. A tar reader that stopped at the end-of-archive
    /// marker never gets there; one that ran out of input did.
    pub fn hit_eof(&self) -> bool {
        self.hit_eof
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.hit_eof = true;
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Compression of a layer, told by its first bytes (media types lie more often).
pub(crate) fn decompressed<'a, R: Read + 'a>(
    reader: R,
    what: &str,
) -> Result<Box<dyn Read + 'a>, ImageError> {
    let mut buffered = BufReader::with_capacity(64 * 1024, reader);
    let head = buffered
        .fill_buf()
        .map_err(ImageError::io(format!("reading {what}")))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(buffered)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(ImageError::Unsupported(format!(
            "{what} is zstd-compressed, which this node does not support yet: use an image \
             with gzip or uncompressed layers"
        )))
    } else {
        Ok(Box::new(buffered))
    }
}

/// Unpacks a (possibly gzip-compressed) layer tar into `dest`, an existing empty
/// directory. With `require_end_marker`, a tar that stops without its end-of-archive
/// blocks is refused as truncated (used when no diff ID can vouch for the content).
pub(crate) fn unpack_layer(
    reader: impl Read,
    dest: &Path,
    what: &str,
    require_end_marker: bool,
) -> Result<Unpacked, ImageError> {
    let mut hashing = HashingReader::new(decompressed(reader, what)?);
    let mut dirs = Vec::new();
    let mut devices = Vec::new();
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let entries = archive
            .entries()
            .map_err(|e| corrupt_tar(what, &e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| corrupt_tar(what, &e.to_string()))?;
            unpack_entry(&mut entry, dest, what, &mut dirs, &mut devices)?;
        }
    }
    if require_end_marker && hashing.hit_eof {
        return Err(corrupt_tar(
            what,
            "it ends without the end-of-archive marker (truncated?)",
        ));
    }
    if let Some(first) = devices.first() {
        warn!(
            first = %first.display(),
            count = devices.len(),
            "{what}: device nodes in image layers are not created"
        );
    }
    // The diff ID covers the whole stream, padding after the end marker included.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| corrupt_tar(what, &e.to_string()))?;
    // Directory times last: creating their children changed them.
    for (path, mtime) in dirs.iter().rev() {
        set_mtime(path, *mtime)?;
    }
    Ok(Unpacked {
        diff_id: format!("sha256:{}", hex::encode(hashing.hasher.finalize())),
    })
}

/// Error text from a tar or gzip reader, fit for a message: parsers quote the damaged
/// bytes they met, which are noise (or terminal escapes) to a user.
pub(crate) fn printable(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_control() || c == char::REPLACEMENT_CHARACTER {
            if !out.ends_with('?') {
                out.push('?');
            }
        } else {
            out.push(c);
        }
        if out.len() > 160 {
            out.push('…');
            break;
        }
    }
    out
}

fn corrupt_tar(what: &str, problem: &str) -> ImageError {
    let problem = printable(problem);
    ImageError::Corrupt(format!(
        "{what} is not a valid tar archive: {problem}; nothing was stored, check the file \
         or fetch it again"
    ))
}

fn hostile(what: &str, path: &Path, problem: &str) -> ImageError {
    ImageError::Corrupt(format!(
        "{what}: entry {:?} {problem}; the layer was refused and nothing was stored",
        path.display().to_string()
    ))
}

/// The components of an entry path inside the layer, or a refusal.
pub(crate) fn safe_components(
    path: &Path,
    what: &str,
) -> Result<Vec<std::ffi::OsString>, ImageError> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::ParentDir => {
                return Err(hostile(
                    what,
                    path,
                    "contains '..' and would escape the layer",
                ))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(hostile(what, path, "is an absolute path"))
            }
        }
    }
    Ok(out)
}

/// Walks `comps` under `dest`, creating missing directories and refusing symlinks or
/// non-directories on the way. Returns the full path.
fn walk_dirs(
    dest: &Path,
    comps: &[std::ffi::OsString],
    create: bool,
    what: &str,
    entry: &Path,
) -> Result<PathBuf, ImageError> {
    let mut p = dest.to_path_buf();
    for c in comps {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(hostile(what, entry, "would be written through a symlink"))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(hostile(what, entry, "has a parent that is not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&p).map_err(ImageError::io_at("creating", &p))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
                    .map_err(ImageError::io_at("setting the mode of", &p))?;
            }
            Err(e) => return Err(ImageError::io_at("inspecting", &p)(e)),
        }
    }
    Ok(p)
}

/// Removes whatever is at `p` (not following symlinks); nothing there is fine.
fn remove_any(p: &Path) -> Result<(), ImageError> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).map_err(ImageError::io_at("replacing", p)),
        Ok(_) => fs::remove_file(p).map_err(ImageError::io_at("replacing", p)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io_at("inspecting", p)(e)),
    }
}

fn cpath(p: &Path) -> Result<CString, ImageError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        ImageError::Corrupt(format!(
            "path {:?} contains a NUL byte",
            p.display().to_string()
        ))
    })
}

fn mknod(
    p: &Path,
    kind: libc::mode_t,
    perm: u32,
    major: u32,
    minor: u32,
) -> Result<(), ImageError> {
    let c = cpath(p)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    let rc = unsafe { libc::mknod(c.as_ptr(), kind | (perm & 0o7777) as libc::mode_t, dev) };
    if rc != 0 {
        return Err(ImageError::io_at("creating the device node", p)(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn lsetxattr(p: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let cp = CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let cn = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: both strings are valid NUL-terminated C strings and `value` is a valid
    // buffer of the given length for the duration of the call.
    let rc = unsafe {
        libc::lsetxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_mtime(p: &Path, mtime: u64) -> Result<(), ImageError> {
    let c = cpath(p)?;
    let secs = libc::time_t::try_from(mtime).unwrap_or(libc::time_t::MAX);
    let times = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
    ];
    // SAFETY: `c` is a valid path and `times` points to two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(ImageError::io_at("setting the times of", p)(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Owner, mode and xattrs, in that order: chown clears set-id bits and file capabilities.
fn apply_metadata<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    p: &Path,
    is_symlink: bool,
    what: &str,
) -> Result<(), ImageError> {
    let h = entry.header();
    let bad = |field: &str, e: &dyn std::fmt::Display| {
        ImageError::Corrupt(format!("{what}: entry {}: bad {field}: {e}", p.display()))
    };
    let uid = h.uid().map_err(|e| bad("uid", &e))?;
    let gid = h.gid().map_err(|e| bad("gid", &e))?;
    let mode = h.mode().map_err(|e| bad("mode", &e))?;
    let uid = u32::try_from(uid).map_err(|e| bad("uid", &e))?;
    let gid = u32::try_from(gid).map_err(|e| bad("gid", &e))?;
    if let Err(e) = std::os::unix::fs::lchown(p, Some(uid), Some(gid)) {
        // Unprivileged (tests, rootless development): files stay ours.
        if is_root() {
            return Err(ImageError::io_at("setting the owner of", p)(e));
        }
    }
    if !is_symlink {
        fs::set_permissions(p, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(ImageError::io_at("setting the mode of", p))?;
    }
    if let Some(exts) = entry.pax_extensions().map_err(|e| bad("pax header", &e))? {
        for ext in exts {
            let ext = ext.map_err(|e| bad("pax header", &e))?;
            let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                continue;
            };
            if let Err(e) = lsetxattr(p, name, ext.value_bytes()) {
                let name = String::from_utf8_lossy(name);
                if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                    warn!(path = %p.display(), xattr = %name, "file system does not support this xattr; skipped");
                } else {
                    return Err(ImageError::io(format!(
                        "setting xattr {name} on {}",
                        p.display()
                    ))(e));
                }
            }
        }
    }
    Ok(())
}

fn unpack_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    dest: &Path,
    what: &str,
    dirs: &mut Vec<(PathBuf, u64)>,
    skipped: &mut Vec<PathBuf>,
) -> Result<(), ImageError> {
    let entry_path = entry
        .path()
        .map_err(|e| corrupt_tar(what, &format!("bad entry name: {e}")))?
        .into_owned();
    let comps = safe_components(&entry_path, what)?;
    let kind = entry.header().entry_type();
    let mtime = entry.header().mtime().unwrap_or(0);

    let Some((name, parents)) = comps.split_last() else {
        // "./": the layer's root directory itself.
        if kind.is_dir() {
            apply_metadata(entry, dest, false, what)?;
            dirs.push((dest.to_path_buf(), mtime));
        }
        return Ok(());
    };
    let parent = walk_dirs(dest, parents, true, what, &entry_path)?;
    let name_bytes = name.as_bytes();

    if let Some(hidden) = name_bytes.strip_prefix(b".wh.") {
        if name_bytes == b".wh..wh..opq" {
            lsetxattr(&parent, b"trusted.overlay.opaque", b"y").map_err(ImageError::io(
                format!(
                    "marking {} opaque (trusted.overlay.opaque)",
                    parent.display()
                ),
            ))?;
        } else if hidden.starts_with(b".wh.") {
            // aufs bookkeeping (.wh..wh.plnk and the like): meaningless to overlayfs.
        } else if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(hostile(what, &entry_path, "is a whiteout of nothing"));
        } else {
            let target = parent.join(OsStr::from_bytes(hidden));
            remove_any(&target)?;
            mknod(&target, libc::S_IFCHR, 0, 0, 0)?;
            apply_metadata(entry, &target, false, what)?;
        }
        return Ok(());
    }

    let target = parent.join(name);
    match kind {
        tar::EntryType::Directory => {
            match fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    remove_any(&target)?;
                    fs::create_dir(&target).map_err(ImageError::io_at("creating", &target))?;
                }
                Err(_) => {
                    fs::create_dir(&target).map_err(ImageError::io_at("creating", &target))?
                }
            }
            apply_metadata(entry, &target, false, what)?;
            dirs.push((target, mtime));
            return Ok(());
        }
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            remove_any(&target)?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&target)
                .map_err(ImageError::io_at("creating", &target))?;
            io::copy(entry, &mut f).map_err(|e| {
                corrupt_tar(what, &format!("reading {}: {e}", entry_path.display()))
            })?;
        }
        tar::EntryType::Symlink => {
            let link = entry
                .link_name()
                .map_err(|e| corrupt_tar(what, &e.to_string()))?
                .ok_or_else(|| hostile(what, &entry_path, "is a symlink without a target"))?;
            remove_any(&target)?;
            std::os::unix::fs::symlink(&link, &target)
                .map_err(ImageError::io_at("creating the symlink", &target))?;
            apply_metadata(entry, &target, true, what)?;
            set_mtime(&target, mtime)?;
            return Ok(());
        }
        tar::EntryType::Link => {
            let link = entry
                .link_name()
                .map_err(|e| corrupt_tar(what, &e.to_string()))?
                .ok_or_else(|| hostile(what, &entry_path, "is a hard link without a target"))?
                .into_owned();
            let lcomps = safe_components(&link, what)?;
            let Some((lname, lparents)) = lcomps.split_last() else {
                return Err(hostile(
                    what,
                    &entry_path,
                    "is a hard link to the layer root",
                ));
            };
            let src = walk_dirs(dest, lparents, false, what, &entry_path)?.join(lname);
            match fs::symlink_metadata(&src) {
                Ok(m) if !m.is_dir() => {}
                _ => {
                    return Err(hostile(
                        what,
                        &entry_path,
                        "is a hard link to something that is not an earlier file of the layer",
                    ))
                }
            }
            if src == target {
                return Ok(());
            }
            remove_any(&target)?;
            // linkat without AT_SYMLINK_FOLLOW: a link to a symlink links the symlink.
            fs::hard_link(&src, &target)
                .map_err(ImageError::io_at("creating the hard link", &target))?;
            return Ok(());
        }
        tar::EntryType::Char | tar::EntryType::Block => {
            // Not created (see the module doc); whatever an earlier layer had there stays.
            skipped.push(entry_path);
            return Ok(());
        }
        tar::EntryType::Fifo => {
            let mode = entry.header().mode().unwrap_or(0o644);
            remove_any(&target)?;
            mknod(&target, libc::S_IFIFO, mode, 0, 0)?;
        }
        other => {
            // pax/GNU long-name headers are consumed by the tar crate; anything else
            // (e.g. Solaris ACLs) has no meaning for a Linux rootfs.
            warn!(entry = %entry_path.display(), kind = ?other, "{what}: skipping an entry of an unknown type");
            return Ok(());
        }
    }
    apply_metadata(entry, &target, false, what)?;
    set_mtime(&target, mtime)?;
    Ok(())
}

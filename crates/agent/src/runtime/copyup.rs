//! Filling a new volume from the image: what the image has at the mount's target is
//! copied into the empty volume, with its owners, modes and times, and the volume's
//! root takes the owner and mode of the target directory (as Docker does), so a
//! database image's data directory works as a volume without a chown.
//!
//! The image is not trusted: the target path is resolved inside the container's root
//! (an image whose `/var/lib/db` is a symlink to `/etc` gets its own `/etc`, never the
//! node's), and the copy never follows a symlink.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// `path` (absolute, as the container sees it) resolved inside `root`: symlinks are
/// followed as the container would follow them, never out of `root`. None if a part is
/// missing or the links go round.
pub fn resolve_in_root(root: &Path, path: &str) -> Option<PathBuf> {
    let mut parts: Vec<String> = Vec::new();
    let mut todo: Vec<String> = components(path).into_iter().rev().collect();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                parts.pop();
                continue;
            }
            _ => {}
        }
        let here = root.join(parts.join("/")).join(&c);
        let meta = std::fs::symlink_metadata(&here).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let link = std::fs::read_link(&here).ok()?;
            let link = link.to_string_lossy().into_owned();
            if link.starts_with('/') {
                parts.clear();
            }
            todo.extend(components(&link).into_iter().rev());
        } else {
            parts.push(c);
        }
    }
    Some(root.join(parts.join("/")))
}

fn components(p: &str) -> Vec<String> {
    Path::new(p)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Fills the empty volume `dest` from `target` in the container's `root`. Does nothing
/// if `dest` already has data or the image has no directory there.
pub fn fill(root: &Path, target: &str, dest: &Path) -> std::io::Result<()> {
    if std::fs::read_dir(dest)?.next().is_some() {
        return Ok(());
    }
    let Some(src) = resolve_in_root(root, target) else {
        return Ok(());
    };
    let meta = match std::fs::symlink_metadata(&src) {
        Ok(m) if m.is_dir() => m,
        _ => return Ok(()),
    };
    copy_dir(&src, dest)?;
    // The volume's root as the image's directory: owner and mode.
    std::os::unix::fs::lchown(dest, Some(meta.uid()), Some(meta.gid()))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
}

fn copy_dir(src: &Path, dest: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let from = e.path();
        let to = dest.join(e.file_name());
        let m = std::fs::symlink_metadata(&from)?;
        let ft = m.file_type();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if ft.is_dir() {
            std::fs::create_dir(&to)?;
            copy_dir(&from, &to)?;
        } else if ft.is_file() {
            std::fs::copy(&from, &to)?;
        } else {
            // Devices, sockets and fifos are not data: left out.
            continue;
        }
        std::os::unix::fs::lchown(&to, Some(m.uid()), Some(m.gid()))?;
        if !ft.is_symlink() {
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
            let times = [
                nix::sys::time::TimeSpec::new(m.atime(), m.atime_nsec()),
                nix::sys::time::TimeSpec::new(m.mtime(), m.mtime_nsec()),
            ];
            let _ = nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &to,
                &times[0],
                &times[1],
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn paths_resolve_inside_the_root_even_through_absolute_links() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::create_dir_all(r.join("var/lib/real")).unwrap();
        symlink("/etc", r.join("var/lib/escape")).unwrap();
        symlink("real", r.join("var/lib/rel")).unwrap();
        symlink("../../../../../../etc", r.join("var/lib/up")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        assert_eq!(resolve_in_root(r, "/var/lib/escape"), Some(r.join("etc")));
        assert_eq!(
            resolve_in_root(r, "/var/lib/rel"),
            Some(r.join("var/lib/real"))
        );
        assert_eq!(resolve_in_root(r, "/var/lib/up"), Some(r.join("etc")));
        assert_eq!(resolve_in_root(r, "/loop"), None);
        assert_eq!(resolve_in_root(r, "/missing/x"), None);
    }

    #[test]
    fn a_new_volume_gets_the_images_content_owner_and_mode() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("srv/data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("sub/f"), "hello").unwrap();
        symlink("sub/f", data.join("link")).unwrap();
        std::os::unix::fs::lchown(&data, Some(999), Some(998)).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::lchown(data.join("sub/f"), Some(999), Some(998)).unwrap();
        std::fs::set_permissions(data.join("sub/f"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        let vol = tempfile::tempdir().unwrap();
        fill(root.path(), "/srv/data", vol.path()).unwrap();
        let m = std::fs::metadata(vol.path()).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (999, 998, 0o750));
        let f = vol.path().join("sub/f");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "hello");
        let m = std::fs::metadata(&f).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (999, 0o640));
        assert!(std::fs::symlink_metadata(vol.path().join("link"))
            .unwrap()
            .file_type()
            .is_symlink());
        // Not empty any more: a second fill leaves it alone.
        std::fs::write(data.join("later"), "x").unwrap();
        fill(root.path(), "/srv/data", vol.path()).unwrap();
        assert!(!vol.path().join("later").exists());
    }
}

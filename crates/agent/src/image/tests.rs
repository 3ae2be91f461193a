//! Image store tests on real files: archives and layers are built here with the `tar`
//! crate, unpacked as root, and the results checked on disk.

use super::*;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use sha2::{Digest, Sha256};

/// One entry of a test layer.
pub(super) enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Owned(&'a str, &'a [u8], u64, u64),
    Xattr(&'a str, &'a [u8], &'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    CharDev(&'a str, u32, u32),
    BlockDev(&'a str, u32, u32),
    Fifo(&'a str),
    /// A name written raw into the header, bypassing the tar crate's checks.
    RawName(&'a [u8], &'a [u8]),
}

fn header(kind: tar::EntryType, path: &str, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_path(path).expect("path");
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

/// A layer tar with the given entries.
pub(super) fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(p, mode) => b
                .append(&header(tar::EntryType::Directory, p, 0, *mode), &[][..])
                .expect("dir"),
            E::File(p, data, mode) => b
                .append(
                    &header(tar::EntryType::Regular, p, data.len() as u64, *mode),
                    *data,
                )
                .expect("file"),
            E::Owned(p, data, uid, gid) => {
                let mut h = header(tar::EntryType::Regular, p, data.len() as u64, 0o640);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_cksum();
                b.append(&h, *data).expect("owned");
            }
            E::Xattr(p, data, name, value) => {
                let key = format!("SCHILY.xattr.{name}");
                b.append_pax_extensions([(key.as_str(), *value)])
                    .expect("pax");
                b.append(
                    &header(tar::EntryType::Regular, p, data.len() as u64, 0o644),
                    *data,
                )
                .expect("xattr file");
            }
            E::Symlink(p, target) => {
                let mut h = header(tar::EntryType::Symlink, p, 0, 0o777);
                h.set_link_name(target).expect("link");
                h.set_cksum();
                b.append(&h, &[][..]).expect("symlink");
            }
            E::Hardlink(p, target) => {
                let mut h = header(tar::EntryType::Link, p, 0, 0o644);
                h.set_link_name(target).expect("link");
                h.set_cksum();
                b.append(&h, &[][..]).expect("hardlink");
            }
            E::CharDev(p, major, minor) | E::BlockDev(p, major, minor) => {
                let kind = match e {
                    E::CharDev(..) => tar::EntryType::Char,
                    _ => tar::EntryType::Block,
                };
                let mut h = header(kind, p, 0, 0o666);
                h.set_device_major(*major).expect("major");
                h.set_device_minor(*minor).expect("minor");
                h.set_cksum();
                b.append(&h, &[][..]).expect("device");
            }
            E::Fifo(p) => b
                .append(&header(tar::EntryType::Fifo, p, 0, 0o620), &[][..])
                .expect("fifo"),
            E::RawName(name, data) => {
                let mut h = header(tar::EntryType::Regular, "x", data.len() as u64, 0o644);
                let field = &mut h.as_old_mut().name;
                field.fill(0);
                field[..name.len()].copy_from_slice(name);
                h.set_cksum();
                b.append(&h, *data).expect("raw");
            }
        }
    }
    b.into_inner().expect("finish")
}

pub(super) fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub(super) fn hex_of(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

pub(super) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

/// An image config for uncompressed layers.
pub(super) fn config_json(layers: &[&[u8]], cmd: &[&str]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": host_arch(),
        "os": "linux",
        "created": "2024-05-01T12:00:00Z",
        "config": { "Env": ["PATH=/bin"], "Cmd": cmd, "WorkingDir": "/", "User": "" },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .expect("config")
}

/// An outer archive (docker save or OCI layout) from (name, bytes) files.
pub(super) fn archive(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        b.append(
            &header(tar::EntryType::Regular, name, data.len() as u64, 0o644),
            &data[..],
        )
        .expect("append");
    }
    b.into_inner().expect("finish")
}

/// One image of a docker save archive: its tags and layers.
pub(super) struct SaveImage<'a> {
    pub tags: &'a [&'a str],
    pub layers: &'a [&'a [u8]],
}

/// A `docker save` archive (pre-25 layout: `<id>/layer.tar`, `<config hex>.json`).
pub(super) fn docker_save(images: &[SaveImage]) -> Vec<u8> {
    let mut files = Vec::new();
    let mut manifest = Vec::new();
    let mut seen = BTreeSet::new();
    for img in images {
        let config = config_json(img.layers, &["/bin/sh"]);
        let config_name = format!("{}.json", hex_of(&sha256(&config)));
        let mut layer_names = Vec::new();
        for l in img.layers {
            let name = format!("{}/layer.tar", hex_of(&sha256(l)));
            if seen.insert(name.clone()) {
                files.push((name.clone(), l.to_vec()));
            }
            layer_names.push(name);
        }
        files.push((config_name.clone(), config));
        manifest.push(serde_json::json!({
            "Config": config_name, "RepoTags": img.tags, "Layers": layer_names,
        }));
    }
    files.insert(
        0,
        (
            "manifest.json".into(),
            serde_json::to_vec(&manifest).expect("json"),
        ),
    );
    archive(&files)
}

/// An OCI layout archive with gzip layers, for one image named `ref_name`.
pub(super) fn oci_layout(layers: &[&[u8]], ref_name: &str) -> Vec<u8> {
    let mut files = vec![(
        "oci-layout".to_string(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    let config = config_json(layers, &["echo", "hi"]);
    let mut layer_descs = Vec::new();
    for l in layers {
        let gz = gzip(l);
        layer_descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256(&gz), "size": gz.len(),
        }));
        files.push((format!("blobs/sha256/{}", hex_of(&sha256(&gz))), gz));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha256(&config), "size": config.len() },
        "layers": layer_descs,
    }))
    .expect("manifest");
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest), "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": ref_name },
        }],
    }))
    .expect("index");
    files.push((format!("blobs/sha256/{}", hex_of(&sha256(&config))), config));
    files.push((
        format!("blobs/sha256/{}", hex_of(&sha256(&manifest))),
        manifest,
    ));
    files.push(("index.json".into(), index));
    archive(&files)
}

/// A rootfs with the host's static busybox and two applet symlinks.
pub(super) fn busybox_rootfs() -> Vec<u8> {
    let busybox = fs::read("/bin/busybox").expect("busybox-static is installed");
    layer(&[
        E::Dir("bin", 0o755),
        E::File("bin/busybox", &busybox, 0o755),
        E::Symlink("bin/sh", "busybox"),
        E::Symlink("bin/echo", "busybox"),
        E::Dir("tmp", 0o1777),
    ])
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, data).expect("write");
    p
}

fn getxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let cp = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    let cn = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let n =
        unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

/// Everything that must not change when bad input is refused.
#[derive(Debug, PartialEq)]
struct Snapshot {
    index: Option<Vec<u8>>,
    blobs: BTreeSet<String>,
    layers: BTreeSet<String>,
    tmp: BTreeSet<String>,
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn snapshot(store: &ImageStore) -> Snapshot {
    let root = store.root();
    Snapshot {
        index: fs::read(root.join("images.json")).ok(),
        blobs: names(&root.join("blobs/sha256")),
        layers: names(&root.join("layers")),
        tmp: names(&root.join("tmp")),
    }
}

fn new_store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(&dir.path().join("images")).expect("open");
    (dir, store)
}

#[test]
fn imported_busybox_rootfs_lists_resolves_and_runs() {
    let (dir, store) = new_store();
    let tar = write(dir.path(), "rootfs.tar", &busybox_rootfs());
    let info = store.import_rootfs(&tar, "busybox").expect("import");
    assert_eq!(info.references, vec!["busybox:latest".to_string()]);
    assert_eq!(info.layers.len(), 1);
    assert!(info.config.cmd.is_empty());
    assert!(info.id.starts_with("sha256:") && info.id.len() == 71);

    let list = store.list().expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, info.id);
    for r in [
        "busybox",
        "busybox:latest",
        &info.id,
        &info.id[7..19],
        &format!("sha256:{}", &info.id[7..15]),
    ] {
        let found = store.resolve(r).expect("resolve").expect(r);
        assert_eq!(found.id, info.id, "{r}");
    }
    assert!(store.resolve("busybox:other").expect("resolve").is_none());
    assert!(store.resolve("nothing").expect("resolve").is_none());

    let dirs = store.layer_dirs(&info);
    assert_eq!(dirs.len(), 1);
    let bb = dirs[0].join("bin/busybox");
    let meta = fs::symlink_metadata(&bb).expect("busybox unpacked");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    assert_eq!(meta.uid(), 0);
    assert_eq!(meta.mtime(), 1_700_000_000);
    assert_eq!(
        fs::read_link(dirs[0].join("bin/sh")).expect("sh link"),
        Path::new("busybox")
    );
    let tmp_mode = fs::metadata(dirs[0].join("tmp"))
        .expect("tmp")
        .permissions()
        .mode();
    assert_eq!(tmp_mode & 0o7777, 0o1777);
    let out = std::process::Command::new(dirs[0].join("bin/echo"))
        .arg("hello")
        .output()
        .expect("run the unpacked busybox");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");

    // Importing the same tarball again reuses the unpacked layer.
    let again = store
        .import_rootfs(&tar, "busybox:2")
        .expect("import again");
    assert_eq!(again.layers, info.layers);
    assert_eq!(names(&store.root().join("layers")).len(), 1);
    assert!(names(&store.root().join("tmp")).is_empty());
}

#[test]
fn device_nodes_in_a_layer_are_not_created_and_fifos_are() {
    let (dir, store) = new_store();
    let rootfs = layer(&[
        E::Dir("dev", 0o755),
        E::CharDev("dev/mem", 1, 1),
        E::CharDev("dev/kmsg", 1, 11),
        E::BlockDev("dev/sda", 8, 0),
        // Outside /dev too: where a container could reach it.
        E::CharDev("tmp/kmem", 1, 2),
        E::Fifo("run/pipe"),
        E::File("etc/hostname", b"box\n", 0o644),
    ]);
    let tar = write(dir.path(), "devices.tar", &rootfs);
    let info = store.import_rootfs(&tar, "devices").expect("import");
    let dirs = store.layer_dirs(&info);
    let root = &dirs[0];
    for p in ["dev/mem", "dev/kmsg", "dev/sda", "tmp/kmem"] {
        assert!(
            fs::symlink_metadata(root.join(p)).is_err(),
            "{p} not created"
        );
    }
    assert!(root.join("dev").is_dir() && root.join("tmp").is_dir());
    let fifo = fs::symlink_metadata(root.join("run/pipe")).expect("fifo kept");
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.permissions().mode() & 0o777, 0o620);
    assert_eq!(fs::read(root.join("etc/hostname")).expect("file"), b"box\n");
}

#[test]
fn gzip_rootfs_imports_and_bad_references_are_refused() {
    let (dir, store) = new_store();
    let tar = write(dir.path(), "rootfs.tar.gz", &gzip(&busybox_rootfs()));
    let info = store
        .import_rootfs(&tar, "10.0.0.1:5000/app:1")
        .expect("import gz");
    assert_eq!(info.references, vec!["10.0.0.1:5000/app:1".to_string()]);
    assert!(store.layer_dirs(&info)[0].join("bin/busybox").is_file());
    let before = snapshot(&store);
    assert!(matches!(
        store.import_rootfs(&tar, "Bad Name"),
        Err(ImageError::BadReference(_))
    ));
    assert!(matches!(
        store.import_rootfs(&dir.path().join("missing.tar"), "x"),
        Err(ImageError::NotFound(_))
    ));
    assert_eq!(snapshot(&store), before);
}

fn base_layer() -> Vec<u8> {
    layer(&[
        E::Dir("etc", 0o755),
        E::File("etc/keep", b"keep", 0o644),
        E::File("etc/old", b"old", 0o600),
        E::Dir("opq", 0o750),
        E::File("opq/a", b"a", 0o644),
        E::Owned("home/user/file", b"mine", 1000, 1001),
        E::Xattr("etc/capable", b"cap", "user.shoal", b"hello"),
        E::Dir("dev", 0o755),
        E::CharDev("dev/null", 1, 3),
        E::Hardlink("etc/keep-link", "etc/keep"),
    ])
}

fn upper_layer() -> Vec<u8> {
    layer(&[
        E::Dir("etc", 0o755),
        E::File("etc/.wh.old", b"", 0o644),
        E::Dir("opq", 0o750),
        E::File("opq/.wh..wh..opq", b"", 0o644),
        E::File("opq/b", b"b", 0o644),
    ])
}

/// Checks the unpacked layers of `base_layer` and `upper_layer`.
fn check_layers(store: &ImageStore, info: &ImageInfo) {
    let dirs = store.layer_dirs(info);
    assert_eq!(dirs.len(), 2);
    let (low, up) = (&dirs[0], &dirs[1]);
    assert_eq!(fs::read(low.join("etc/keep")).expect("keep"), b"keep");
    let old = fs::metadata(low.join("etc/old")).expect("old");
    assert_eq!(old.permissions().mode() & 0o777, 0o600);
    let owned = fs::metadata(low.join("home/user/file")).expect("owned");
    assert_eq!((owned.uid(), owned.gid()), (1000, 1001));
    assert_eq!(
        getxattr(&low.join("etc/capable"), "user.shoal").as_deref(),
        Some(&b"hello"[..])
    );
    assert!(
        fs::symlink_metadata(low.join("dev/null")).is_err(),
        "device nodes are not created"
    );
    let link = fs::metadata(low.join("etc/keep-link")).expect("hard link");
    assert_eq!(
        link.ino(),
        fs::metadata(low.join("etc/keep")).expect("keep").ino()
    );

    // Whiteout: a 0:0 character device with the hidden name, no .wh. file.
    let wh = fs::symlink_metadata(up.join("etc/old")).expect("whiteout");
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!up.join("etc/.wh.old").exists());
    // Opaque directory: the xattr, no marker file, new content kept.
    assert_eq!(
        getxattr(&up.join("opq"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!up.join("opq/.wh..wh..opq").exists());
    assert_eq!(fs::read(up.join("opq/b")).expect("b"), b"b");
    assert_eq!(getxattr(&up.join("etc"), "trusted.overlay.opaque"), None);
}

#[test]
fn docker_save_archive_loads_with_whiteouts_converted() {
    let (dir, store) = new_store();
    let (l1, l2) = (base_layer(), upper_layer());
    let ar = write(
        dir.path(),
        "save.tar",
        &docker_save(&[SaveImage {
            tags: &["test/app:1", "docker.io/library/other:2"],
            layers: &[&l1, &l2],
        }]),
    );
    let infos = store.load_archive(&ar).expect("load");
    assert_eq!(infos.len(), 1);
    let info = &infos[0];
    assert_eq!(info.references, vec!["test/app:1", "other:2"]);
    assert_eq!(info.layers, vec![sha256(&l1), sha256(&l2)]);
    assert_eq!(info.config.cmd, vec!["/bin/sh"]);
    assert_eq!(info.config.env, vec!["PATH=/bin"]);
    assert_eq!(info.created_unix, 1_714_564_800);
    assert_eq!(info.size, (l1.len() + l2.len()) as u64);
    check_layers(&store, info);
    assert_eq!(
        store.resolve("other:2").expect("resolve").map(|i| i.id),
        Some(info.id.clone())
    );
    assert!(names(&store.root().join("tmp")).is_empty());
}

#[test]
fn oci_layout_archive_loads_with_gzip_layers() {
    let (dir, store) = new_store();
    let (l1, l2) = (base_layer(), upper_layer());
    let ar = write(dir.path(), "oci.tar", &oci_layout(&[&l1, &l2], "oci/app:2"));
    let infos = store.load_archive(&ar).expect("load");
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].references, vec!["oci/app:2"]);
    assert_eq!(infos[0].config.cmd, vec!["echo", "hi"]);
    check_layers(&store, &infos[0]);
    // Loading the same archive again changes nothing but is fine.
    let before = snapshot(&store);
    store.load_archive(&ar).expect("load again");
    assert_eq!(snapshot(&store).layers, before.layers);
    assert_eq!(snapshot(&store).blobs, before.blobs);
}

#[test]
fn bad_archives_are_refused_and_change_nothing() {
    let (dir, store) = new_store();
    let tar = write(dir.path(), "rootfs.tar", &busybox_rootfs());
    store.import_rootfs(&tar, "busybox").expect("import");
    let before = snapshot(&store);
    assert!(before.index.is_some());

    let (l1, l2) = (base_layer(), upper_layer());
    let good = docker_save(&[SaveImage {
        tags: &["test/app:1"],
        layers: &[&l1, &l2],
    }]);

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Garbage: pseudo-random bytes.
    let mut x: u32 = 12345;
    let garbage: Vec<u8> = (0..8192)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    cases.push(("garbled", garbage));
    cases.push(("empty", Vec::new()));
    // Truncated mid-entry and exactly on a block boundary.
    cases.push(("truncated", good[..good.len() / 2 + 100].to_vec()));
    cases.push((
        "truncated-on-block",
        good[..(good.len() / 2) / 512 * 512].to_vec(),
    ));
    cases.push(("truncated-gzip", {
        let gz = gzip(&good);
        gz[..gz.len() - 20].to_vec()
    }));
    // The second layer does not match its diff ID (the first one does, and was unpacked
    // before the mismatch was found: it must go too).
    {
        let mut files = Vec::new();
        let config = config_json(&[&l1, &l2], &[]);
        let cfg_name = format!("{}.json", hex_of(&sha256(&config)));
        let other = layer(&[E::File("evil", b"not the layer", 0o644)]);
        files.push((
            "manifest.json".to_string(),
            serde_json::to_vec(&serde_json::json!([{
                "Config": cfg_name, "RepoTags": ["test/app:1"],
                "Layers": ["l1/layer.tar", "l2/layer.tar"],
            }]))
            .expect("json"),
        ));
        files.push((cfg_name, config));
        files.push(("l1/layer.tar".into(), l1.clone()));
        files.push(("l2/layer.tar".into(), other));
        cases.push(("diff-id-mismatch", archive(&files)));
    }
    // A config whose name promises another digest.
    {
        let config = config_json(&[&l1], &[]);
        let files = vec![
            (
                "manifest.json".to_string(),
                serde_json::to_vec(&serde_json::json!([{
                    "Config": format!("{}.json", "ab".repeat(32)), "RepoTags": ["x:1"],
                    "Layers": ["l1/layer.tar"],
                }]))
                .expect("json"),
            ),
            (format!("{}.json", "ab".repeat(32)), config),
            ("l1/layer.tar".into(), l1.clone()),
        ];
        cases.push(("config-digest-mismatch", archive(&files)));
    }
    // An OCI layout whose layer blob was altered.
    {
        let good_oci = oci_layout(&[&l1], "oci/app:1");
        let mut ar = tar::Archive::new(&good_oci[..]);
        let mut files = Vec::new();
        for e in ar.entries().expect("entries") {
            let mut e = e.expect("entry");
            let name = e.path().expect("path").to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).expect("read");
            if name.starts_with("blobs/") && data.starts_with(&[0x1f, 0x8b]) {
                let n = data.len();
                data[n - 30] ^= 0xff;
            }
            files.push((name, data));
        }
        cases.push(("oci-blob-digest-mismatch", archive(&files)));
    }
    cases.push((
        "not-an-image-archive",
        archive(&[("hello".into(), b"x".to_vec())]),
    ));

    for (name, bytes) in cases {
        let p = write(dir.path(), &format!("{name}.tar"), &bytes);
        let err = store.load_archive(&p).expect_err(name);
        assert!(matches!(err, ImageError::Corrupt(_)), "{name}: {err:?}");
        assert!(
            err.to_string().contains(&p.display().to_string()),
            "{name}: the message names the file: {err}"
        );
        assert_eq!(snapshot(&store), before, "{name} changed the store");
    }

    // A truncated rootfs for import, on a block boundary and mid-entry.
    let rootfs = busybox_rootfs();
    let busybox_len = fs::metadata("/bin/busybox").expect("busybox").len() as usize;
    let after_busybox = 1024 + busybox_len.div_ceil(512) * 512;
    for (name, cut) in [
        ("rootfs-block", 1024),
        ("rootfs-mid", rootfs.len() / 2 + 7),
        ("rootfs-between-entries", after_busybox),
    ] {
        let p = write(dir.path(), &format!("{name}.tar"), &rootfs[..cut]);
        let err = store.import_rootfs(&p, "cut:1").expect_err(name);
        assert!(matches!(err, ImageError::Corrupt(_)), "{name}: {err:?}");
        if name == "rootfs-between-entries" {
            assert!(err.to_string().contains("end-of-archive"), "{err}");
        }
        assert_eq!(snapshot(&store), before, "{name} changed the store");
    }
    assert_eq!(store.list().expect("list").len(), 1);
}

#[test]
fn entries_escaping_the_layer_are_refused() {
    let (dir, store) = new_store();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).expect("outside");
    let before = snapshot(&store);
    let target = outside.to_string_lossy().into_owned();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", layer(&[E::RawName(b"../evil", b"x")])),
        ("deep-dotdot", layer(&[E::RawName(b"a/../../evil", b"x")])),
        ("absolute", layer(&[E::RawName(b"/tmp/shoal-evil", b"x")])),
        (
            "through-symlink",
            layer(&[
                E::Symlink("link", &target),
                E::File("link/evil", b"x", 0o644),
            ]),
        ),
        (
            "hardlink-out",
            layer(&[E::Symlink("link", &target), E::Hardlink("h", "link/x")]),
        ),
    ];
    for (name, bytes) in cases {
        let p = write(dir.path(), &format!("{name}.tar"), &bytes);
        let err = store.import_rootfs(&p, "evil").expect_err(name);
        assert!(matches!(err, ImageError::Corrupt(_)), "{name}: {err:?}");
        assert_eq!(snapshot(&store), before, "{name}");
    }
    assert!(!dir.path().join("images/evil").exists());
    assert!(!dir.path().join("evil").exists());
    assert!(!Path::new("/tmp/shoal-evil").exists());
    assert!(names(&outside).is_empty());
}

#[test]
fn removing_an_image_keeps_layers_another_image_uses() {
    let (dir, store) = new_store();
    let (l1, l2) = (base_layer(), upper_layer());
    let ar = write(
        dir.path(),
        "two.tar",
        &docker_save(&[
            SaveImage {
                tags: &["base:1"],
                layers: &[&l1],
            },
            SaveImage {
                tags: &["app:1", "app:latest"],
                layers: &[&l1, &l2],
            },
        ]),
    );
    let infos = store.load_archive(&ar).expect("load");
    assert_eq!(infos.len(), 2);
    let app = store.resolve("app").expect("resolve").expect("app");
    assert_eq!(names(&store.root().join("layers")).len(), 2);

    store.remove("base:1").expect("remove base");
    assert!(store.resolve("base:1").expect("resolve").is_none());
    let dirs = store.layer_dirs(&app);
    assert!(dirs.iter().all(|d| d.is_dir()), "shared layer kept");
    assert!(dirs[0].join("etc/keep").is_file());

    // One reference of two: the image stays.
    store.remove("app:1").expect("remove a tag");
    assert!(store.resolve("app:latest").expect("resolve").is_some());
    assert!(store.layer_dirs(&app).iter().all(|d| d.is_dir()));

    // By ID prefix: everything goes.
    store.remove(&app.id[7..20]).expect("remove by id");
    assert!(store.list().expect("list").is_empty());
    assert!(names(&store.root().join("layers")).is_empty());
    assert!(names(&store.root().join("blobs/sha256")).is_empty());
    assert!(names(&store.root().join("tmp")).is_empty());
    assert!(matches!(
        store.remove("app:1"),
        Err(ImageError::NotFound(_))
    ));
}

#[test]
fn a_moved_tag_leaves_the_old_image_reachable_by_id() {
    let (dir, store) = new_store();
    let a = write(dir.path(), "a.tar", &layer(&[E::File("a", b"a", 0o644)]));
    let b = write(dir.path(), "b.tar", &layer(&[E::File("b", b"b", 0o644)]));
    let first = store.import_rootfs(&a, "app").expect("a");
    let second = store.import_rootfs(&b, "app").expect("b");
    assert_eq!(
        store.resolve("app").expect("r").map(|i| i.id),
        Some(second.id)
    );
    let old = store
        .resolve(&first.id)
        .expect("r")
        .expect("old image by id");
    assert!(old.references.is_empty());
    assert_eq!(store.list().expect("list").len(), 2);
}

#[test]
fn concurrent_loads_of_the_same_archive_agree() {
    let (dir, store) = new_store();
    let (l1, l2) = (base_layer(), upper_layer());
    let ar = write(
        dir.path(),
        "save.tar",
        &docker_save(&[SaveImage {
            tags: &["test/app:1"],
            layers: &[&l1, &l2],
        }]),
    );
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let (s, p) = (store.clone(), ar.clone());
            std::thread::spawn(move || s.load_archive(&p))
        })
        .collect();
    for h in handles {
        h.join().expect("thread").expect("load");
    }
    let list = store.list().expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].references, vec!["test/app:1"]);
    check_layers(&store, &list[0]);
    assert!(names(&store.root().join("tmp")).is_empty());
}

#[test]
fn a_damaged_index_is_reported_not_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("images");
    fs::create_dir_all(&root).expect("root");
    fs::write(root.join("images.json"), b"{ not json").expect("write");
    let err = ImageStore::open(&root).expect_err("damaged index");
    assert!(matches!(err, ImageError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("images.json"), "{err}");
    assert_eq!(
        fs::read(root.join("images.json")).expect("read"),
        b"{ not json"
    );
}

#[test]
fn credentials_are_saved_private_per_registry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("conf/registries.json");
    let store = CredentialStore::open(&path);
    assert!(store.get("docker.io").is_none());
    let c = Credentials {
        username: "u".into(),
        password: "p".into(),
    };
    store.set("index.docker.io", &c).expect("set");
    store
        .set(
            "10.0.0.1:5000",
            &Credentials {
                username: "v".into(),
                password: "q".into(),
            },
        )
        .expect("set");
    assert_eq!(store.get("docker.io"), Some(c.clone()));
    assert_eq!(
        fs::metadata(&path).expect("file").permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !format!("{c:?}").contains("\"p\""),
        "Debug hides the password"
    );
    store.remove("docker.io").expect("remove");
    assert!(store.get("docker.io").is_none());
    assert_eq!(
        store.get("10.0.0.1:5000").map(|c| c.username),
        Some("v".into())
    );
}

/// Unmounts on drop, so a failed assertion leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn unpacked_layers_stack_in_overlayfs() {
    let (dir, store) = new_store();
    let (l1, l2) = (base_layer(), upper_layer());
    let ar = write(
        dir.path(),
        "save.tar",
        &docker_save(&[SaveImage {
            tags: &["test/app:1"],
            layers: &[&l1, &l2],
        }]),
    );
    let info = store.load_archive(&ar).expect("load").remove(0);
    let mut lower: Vec<String> = store
        .layer_dirs(&info)
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    lower.reverse();
    let target = dir.path().join("rootfs");
    fs::create_dir(&target).expect("mountpoint");
    nix::mount::mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(format!("lowerdir={}", lower.join(":")).as_str()),
    )
    .expect("mount overlay");
    let _guard = Mounted(target.clone());
    assert_eq!(fs::read(target.join("etc/keep")).expect("keep"), b"keep");
    assert!(!target.join("etc/old").exists(), "whited out");
    assert!(!target.join("opq/a").exists(), "hidden by the opaque dir");
    assert_eq!(fs::read(target.join("opq/b")).expect("b"), b"b");
    assert_eq!(
        names(&target.join("opq")),
        BTreeSet::from(["b".to_string()])
    );
}

#[test]
fn docker_save_links_to_duplicate_layers_are_followed() {
    let (dir, store) = new_store();
    let l1 = layer(&[E::File("same", b"same", 0o644)]);
    let config = config_json(&[&l1, &l1], &[]);
    let cfg_name = format!("{}.json", hex_of(&sha256(&config)));
    let mut b = tar::Builder::new(Vec::new());
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": cfg_name, "RepoTags": ["dup:1"],
        "Layers": ["a/layer.tar", "b/layer.tar"],
    }]))
    .expect("json");
    for (name, data) in [
        ("manifest.json", &manifest),
        (cfg_name.as_str(), &config),
        ("a/layer.tar", &l1),
    ] {
        b.append(
            &header(tar::EntryType::Regular, name, data.len() as u64, 0o644),
            &data[..],
        )
        .expect("append");
    }
    let mut h = header(tar::EntryType::Symlink, "b/layer.tar", 0, 0o777);
    h.set_link_name("../a/layer.tar").expect("link");
    h.set_cksum();
    b.append(&h, &[][..]).expect("symlink");
    let ar = write(dir.path(), "dup.tar", &b.into_inner().expect("finish"));
    let info = store.load_archive(&ar).expect("load").remove(0);
    assert_eq!(info.layers, vec![sha256(&l1), sha256(&l1)]);
    assert_eq!(store.layer_dirs(&info)[1], store.layer_dirs(&info)[0]);
}

//! Pulls from a real registry: Debian's `docker-registry` (Distribution 2.8) started on a
//! free loopback port, with and without htpasswd auth, and an image pushed into it with
//! plain HTTP calls of the v2 API.

use super::tests::{config_json, gzip, hex_of, layer, sha256, E};
use super::*;

use std::fs;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry; killed and cleaned up on drop.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    async fn start(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let auth_yaml = match auth {
            Some((user, pass)) => {
                let hash = bcrypt::hash(pass, 4).expect("bcrypt");
                let htpasswd = dir.path().join("htpasswd");
                fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n{auth_yaml}",
            dir.path().join("storage").display()
        );
        let config_path = dir.path().join("config.yml");
        fs::write(&config_path, config).expect("config");
        let log = fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let reg = Registry {
            child,
            addr,
            _dir: dir,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if client
                .get(format!("http://{}/v2/", reg.addr))
                .send()
                .await
                .is_ok()
            {
                break;
            }
            assert!(Instant::now() < deadline, "registry did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        reg
    }

    fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        url: &str,
        auth: Option<(&str, &str)>,
    ) -> reqwest::RequestBuilder {
        let r = client.request(method, url);
        match auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    async fn push_blob(&self, repo: &str, data: &[u8], auth: Option<(&str, &str)>) {
        let client = reqwest::Client::new();
        let url = format!("http://{}/v2/{repo}/blobs/uploads/", self.addr);
        let resp = self
            .request(&client, reqwest::Method::POST, &url, auth)
            .send()
            .await
            .expect("start upload");
        assert_eq!(resp.status(), 202, "start upload");
        let location = resp
            .headers()
            .get("location")
            .and_then(|h| h.to_str().ok())
            .expect("location")
            .to_string();
        let location = if location.starts_with('/') {
            format!("http://{}{location}", self.addr)
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={}", sha256(data));
        let resp = self
            .request(&client, reqwest::Method::PUT, &put, auth)
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .expect("upload");
        assert_eq!(resp.status(), 201, "upload blob");
    }

    async fn push_manifest(
        &self,
        repo: &str,
        tag: &str,
        media_type: &str,
        body: &[u8],
        auth: Option<(&str, &str)>,
    ) {
        let client = reqwest::Client::new();
        let url = format!("http://{}/v2/{repo}/manifests/{tag}", self.addr);
        let resp = self
            .request(&client, reqwest::Method::PUT, &url, auth)
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .expect("put manifest");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(status, 201, "put manifest: {text}");
    }

    /// Pushes a two-layer image (gzip layers) as `repo:tag`, plus an index `repo:multi`
    /// offering it for this host and a bogus image for another platform. Returns the
    /// manifest's bytes.
    async fn push_image(&self, repo: &str, tag: &str, auth: Option<(&str, &str)>) -> Vec<u8> {
        let l1 = layer(&[
            E::Dir("bin", 0o755),
            E::File("bin/hello", b"#!/bin/sh\necho hi\n", 0o755),
        ]);
        let l2 = layer(&[E::Dir("bin", 0o755), E::File("bin/.wh.hello", b"", 0o644)]);
        let config = config_json(&[&l1, &l2], &["/bin/hello"]);
        let (g1, g2) = (gzip(&l1), gzip(&l2));
        for blob in [&config, &g1, &g2] {
            self.push_blob(repo, blob, auth).await;
        }
        let desc = |media: &str, data: &[u8]| serde_json::json!({ "mediaType": media, "digest": sha256(data), "size": data.len() });
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": spec::OCI_MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", &config),
            "layers": [
                desc("application/vnd.oci.image.layer.v1.tar+gzip", &g1),
                desc("application/vnd.oci.image.layer.v1.tar+gzip", &g2),
            ],
        }))
        .expect("manifest");
        self.push_manifest(repo, tag, spec::OCI_MANIFEST, &manifest, auth)
            .await;
        let other_arch = if host_arch() == "amd64" {
            "s390x"
        } else {
            "amd64"
        };
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": spec::OCI_INDEX,
            "manifests": [
                {
                    "mediaType": spec::OCI_MANIFEST, "digest": sha256(&manifest),
                    "size": manifest.len(),
                    "platform": { "os": "linux", "architecture": other_arch },
                },
                {
                    "mediaType": spec::OCI_MANIFEST, "digest": sha256(&manifest),
                    "size": manifest.len(),
                    "platform": { "os": "linux", "architecture": host_arch() },
                },
            ],
        }))
        .expect("index");
        self.push_manifest(repo, "multi", spec::OCI_INDEX, &index, auth)
            .await;
        manifest
    }
}

fn new_store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(&dir.path().join("images")).expect("open");
    (dir, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_pull_from_a_local_registry() {
    let reg = Registry::start(None).await;
    let manifest = reg.push_image("test/app", "1", None).await;
    let (_dir, store) = new_store();

    let reference = format!("{}/test/app:1", reg.addr);
    let info = store.pull(&reference, None).await.expect("pull");
    assert_eq!(info.references, vec![reference.clone()]);
    assert_eq!(info.config.cmd, vec!["/bin/hello"]);
    assert_eq!(info.layers.len(), 2);
    let dirs = store.layer_dirs(&info);
    let hello = dirs[0].join("bin/hello");
    assert_eq!(fs::read(&hello).expect("hello"), b"#!/bin/sh\necho hi\n");
    let wh = fs::symlink_metadata(dirs[1].join("bin/hello")).expect("whiteout");
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &wh.file_type()
    ));
    // The manifest is kept as received.
    let kept = store
        .root()
        .join("blobs/sha256")
        .join(hex_of(&sha256(&manifest)));
    assert_eq!(fs::read(kept).expect("manifest blob"), manifest);

    // Through an index: the entry for this host's architecture.
    let multi = format!("{}/test/app:multi", reg.addr);
    let via_index = store.pull(&multi, None).await.expect("pull index");
    assert_eq!(via_index.id, info.id);
    let both = store.resolve(&info.id).expect("resolve").expect("image");
    assert_eq!(both.references, vec![reference.clone(), multi]);

    // Pulling again is fine and unpacks nothing new.
    let layers_before = fs::read_dir(store.root().join("layers"))
        .expect("ls")
        .count();
    store.pull(&reference, None).await.expect("pull again");
    let layers_after = fs::read_dir(store.root().join("layers"))
        .expect("ls")
        .count();
    assert_eq!(layers_before, layers_after);
    assert_eq!(
        fs::read_dir(store.root().join("tmp")).expect("ls").count(),
        0
    );

    let missing = store
        .pull(&format!("{}/test/app:nope", reg.addr), None)
        .await
        .expect_err("no such tag");
    assert!(matches!(missing, ImageError::NotFound(_)), "{missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_and_login_with_basic_auth() {
    let (user, pass) = ("shoal", "s3cret");
    let reg = Registry::start(Some((user, pass))).await;
    reg.push_image("private/app", "1", Some((user, pass))).await;
    let (_dir, store) = new_store();
    let reference = format!("{}/private/app:1", reg.addr);
    let before = fs::read_dir(store.root().join("blobs/sha256"))
        .expect("ls")
        .count();

    let anon = store.pull(&reference, None).await.expect_err("anonymous");
    assert!(matches!(anon, ImageError::Unauthorized(_)), "{anon:?}");
    assert!(anon.to_string().contains("unauthorized"), "{anon}");

    let wrong = Credentials {
        username: user.into(),
        password: "wrong".into(),
    };
    let err = store
        .pull(&reference, Some(&wrong))
        .await
        .expect_err("wrong password");
    assert!(matches!(err, ImageError::Unauthorized(_)), "{err:?}");
    assert!(err.to_string().contains("unauthorized"), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "no password in messages: {err}"
    );
    assert_eq!(
        fs::read_dir(store.root().join("blobs/sha256"))
            .expect("ls")
            .count(),
        before
    );

    let right = Credentials {
        username: user.into(),
        password: pass.into(),
    };
    let info = store.pull(&reference, Some(&right)).await.expect("pull");
    assert_eq!(info.references, vec![reference]);
    assert!(store.layer_dirs(&info)[0].join("bin/hello").is_file());

    login(&reg.addr, &right).await.expect("login");
    let err = login(&reg.addr, &wrong).await.expect_err("bad login");
    assert!(matches!(err, ImageError::Unauthorized(_)), "{err:?}");
    assert!(err.to_string().contains("unauthorized"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_is_a_registry_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let (_dir, store) = new_store();
    let err = store
        .pull(&format!("127.0.0.1:{port}/x:1"), None)
        .await
        .expect_err("nobody listens");
    assert!(matches!(err, ImageError::Registry(_)), "{err:?}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}

//! A real registry (Debian's docker-registry, Distribution 2.8) inside a testbed node's
//! network namespace, with an image written straight into its storage layout.

use sha2::{Digest, Sha256};
use shoal_testbed::Testbed;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Registry {
    child: Option<Child>,
    pub addr: String,
    dir: PathBuf,
    netns: String,
    auth: Option<(String, String)>,
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// Puts `blob` in the registry's blob store and links it into repository `repo`.
fn put_blob(v2: &Path, repo: &str, blob: &[u8]) -> String {
    let h = hex(&Sha256::digest(blob));
    write(&v2.join(format!("blobs/sha256/{}/{h}/data", &h[..2])), blob);
    write(
        &v2.join(format!("repositories/{repo}/_layers/sha256/{h}/link")),
        format!("sha256:{h}").as_bytes(),
    );
    h
}

/// Stores `layer_tar` as image `repo:tag` (one uncompressed layer, OCI manifest).
pub fn store_image(storage: &Path, repo: &str, tag: &str, layer_tar: &[u8], cmd: &[&str]) {
    store_image_with(storage, repo, tag, layer_tar, cmd, serde_json::Value::Null)
}

/// [`store_image`] with a health check in the image config (Docker's `Healthcheck`
/// object; `Null` for none).
pub fn store_image_with(
    storage: &Path,
    repo: &str,
    tag: &str,
    layer_tar: &[u8],
    cmd: &[&str],
    healthcheck: serde_json::Value,
) {
    let v2 = storage.join("docker/registry/v2");
    let layer = put_blob(&v2, repo, layer_tar);
    let mut image_config = serde_json::json!({"Cmd": cmd, "Env": ["PATH=/bin", "FROM_IMAGE=yes"]});
    if !healthcheck.is_null() {
        image_config["Healthcheck"] = healthcheck;
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer}")]},
    })
    .to_string();
    let config_hex = put_blob(&v2, repo, config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_hex}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{layer}"), "size": layer_tar.len()}],
    })
    .to_string();
    let m = hex(&Sha256::digest(manifest.as_bytes()));
    write(
        &v2.join(format!("blobs/sha256/{}/{m}/data", &m[..2])),
        manifest.as_bytes(),
    );
    let link = format!("sha256:{m}");
    write(
        &v2.join(format!(
            "repositories/{repo}/_manifests/revisions/sha256/{m}/link"
        )),
        link.as_bytes(),
    );
    write(
        &v2.join(format!(
            "repositories/{repo}/_manifests/tags/{tag}/current/link"
        )),
        link.as_bytes(),
    );
    write(
        &v2.join(format!(
            "repositories/{repo}/_manifests/tags/{tag}/index/sha256/{m}/link"
        )),
        link.as_bytes(),
    );
}

impl Registry {
    /// Starts a registry in node `node`'s namespace on `port`, optionally with basic auth.
    pub fn start(tb: &Testbed, node: usize, port: u16, auth: Option<(&str, &str)>) -> Registry {
        let dir = tb.dir().join(format!("registry-{port}"));
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let mut r = Registry {
            child: None,
            addr: format!("{}:{port}", tb.nodes[node].ip),
            dir,
            netns: tb.nodes[node].netns.clone(),
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        r.launch();
        r
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.join("storage")
    }

    fn launch(&mut self) {
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {}\n",
            self.storage().display(),
            self.addr
        );
        if let Some((user, pass)) = &self.auth {
            let hash = bcrypt::hash(pass, 4).unwrap();
            std::fs::write(self.dir.join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n",
                self.dir.join("htpasswd").display()
            ));
        }
        std::fs::write(self.dir.join("config.yml"), cfg).unwrap();
        let log = std::fs::File::create(self.dir.join("registry.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg("docker-registry")
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("docker-registry is installed");
        self.child = Some(child);
        // Ready when it answers on its port.
        let probe = format!(
            "exec 3<>/dev/tcp/{}/{}",
            self.addr.split(':').next().unwrap(),
            self.addr.split(':').nth(1).unwrap()
        );
        for _ in 0..200 {
            let ok = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.netns))
                .args(["--", "bash", "-c", &probe])
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "registry did not start: {}",
            std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
        );
    }

    /// Restarts the registry with a new password for the same user.
    pub fn change_password(&mut self, pass: &str) {
        self.stop();
        if let Some((_, p)) = self.auth.as_mut() {
            *p = pass.to_string();
        }
        self.launch();
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

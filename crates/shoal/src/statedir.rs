//! What a node keeps in its state directory, and nothing else:
//!
//! ```text
//! state.json        node ID, cluster ID, role, managers, advertise address
//! certs/node.key    the node's private key (0600)
//! certs/node.crt    its certificate
//! certs/ca.crt      the cluster's root CA certificates (two during a root rotation)
//! raft/             the replicated store (managers only)
//! ```

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeState {
    pub node_id: String,
    pub cluster_id: String,
    pub role: String,
    pub managers: Vec<String>,
    pub advertise_addr: String,
}

/// A joined node's files, loaded.
pub struct Loaded {
    pub state: NodeState,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    /// The roots this node trusts.
    pub roots: Vec<Vec<u8>>,
}

#[derive(Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    pub fn new(root: &Path) -> Self {
        StateDir {
            root: root.to_path_buf(),
        }
    }
    fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }
    pub fn certs(&self) -> PathBuf {
        self.root.join("certs")
    }
    pub fn key_file(&self) -> PathBuf {
        self.certs().join("node.key")
    }
    pub fn cert_file(&self) -> PathBuf {
        self.certs().join("node.crt")
    }
    pub fn ca_file(&self) -> PathBuf {
        self.certs().join("ca.crt")
    }
    pub fn raft_dir(&self) -> PathBuf {
        self.root.join("raft")
    }

    /// The node's files, or `None` if it has not joined a cluster.
    pub fn load(&self) -> Result<Option<Loaded>> {
        let path = self.state_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let state: NodeState = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged; restore it from a backup, or run 'shoal leave --force' and join the cluster again",
                path.display()
            )
        })?;
        let read_pem = |p: PathBuf| -> Result<String> {
            std::fs::read_to_string(&p).with_context(|| {
                format!("cannot read {}; this node's identity is incomplete: run 'shoal leave --force' and join again", p.display())
            })
        };
        let key_pem = read_pem(self.key_file())?;
        let cert_der = first_cert(&read_pem(self.cert_file())?, &self.cert_file())?;
        let roots = shoal_pki::pem_certs(&read_pem(self.ca_file())?).with_context(|| {
            format!(
                "{} is damaged; restore it from a backup, or run 'shoal leave --force' and join again",
                self.ca_file().display()
            )
        })?;
        Ok(Some(Loaded {
            state,
            key_pem,
            cert_der,
            roots,
        }))
    }

    /// Writes identity files first and `state.json` last, so a crash in between leaves a
    /// node that still counts as not joined.
    pub fn save(
        &self,
        state: &NodeState,
        key_pem: &str,
        cert_der: &[u8],
        roots: &[Vec<u8>],
    ) -> Result<()> {
        std::fs::create_dir_all(self.certs())
            .with_context(|| format!("cannot create {}", self.certs().display()))?;
        shoal_pki::write_private(&self.key_file(), key_pem.as_bytes())?;
        shoal_pki::write_private(&self.cert_file(), shoal_pki::cert_pem(cert_der).as_bytes())?;
        self.save_roots(roots)?;
        self.save_state(state)
    }

    /// Replaces the trusted roots (a root rotation), atomically.
    pub fn save_roots(&self, roots: &[Vec<u8>]) -> Result<()> {
        let pem: String = roots.iter().map(|r| shoal_pki::cert_pem(r)).collect();
        let tmp = self.certs().join("ca.crt.new");
        shoal_pki::write_private(&tmp, pem.as_bytes())?;
        std::fs::rename(&tmp, self.ca_file())
            .with_context(|| format!("cannot replace {}", self.ca_file().display()))?;
        Ok(())
    }

    /// Replaces the node's key and certificate (a renewal): the key first, so a crash in
    /// between leaves the old pair unusable rather than mismatched silently.
    pub fn save_identity(&self, key_pem: &str, cert_der: &[u8]) -> Result<()> {
        // Write both to temporary names, then rename the certificate last.
        let key_tmp = self.certs().join("node.key.new");
        let cert_tmp = self.certs().join("node.crt.new");
        shoal_pki::write_private(&key_tmp, key_pem.as_bytes())?;
        shoal_pki::write_private(&cert_tmp, shoal_pki::cert_pem(cert_der).as_bytes())?;
        std::fs::rename(&key_tmp, self.key_file())
            .with_context(|| format!("cannot replace {}", self.key_file().display()))?;
        std::fs::rename(&cert_tmp, self.cert_file())
            .with_context(|| format!("cannot replace {}", self.cert_file().display()))?;
        Ok(())
    }

    pub fn save_state(&self, state: &NodeState) -> Result<()> {
        let text = serde_json::to_vec_pretty(state)?;
        shoal_pki::write_private(&self.state_file(), &text)?;
        Ok(())
    }

    /// Forgets the cluster: state, identity and store.
    pub fn wipe(&self) -> Result<()> {
        for p in [self.state_file(), self.certs(), self.raft_dir()] {
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot remove {}", p.display())),
            }
        }
        Ok(())
    }
}

fn first_cert(pem: &str, path: &Path) -> Result<Vec<u8>> {
    match shoal_pki::pem_certs(pem) {
        Ok(mut v) if !v.is_empty() => Ok(v.remove(0)),
        Ok(_) => bail!("{} holds no certificate", path.display()),
        Err(e) => Err(e).with_context(|| format!("{} is damaged", path.display())),
    }
}

//! What a node keeps in its state directory, and nothing else:
//!
//! ```text
//! state.json        node ID, cluster ID, role, managers, advertise address
//! certs/node.key    the node's private key (0600); on an autolocked manager, sealed
//!                   with the cluster's unlock key
//! certs/node.crt    its certificate
//! certs/ca.crt      the cluster's root CA certificates (two during a root rotation)
//! raft/             the replicated store (managers only)
//! raft.before-force-new-cluster-<time>/
//!                   the store as it was before 'init --force-new-cluster'
//! ```

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use shoal_store::UnlockKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const SEALED_BEGIN: &str = "-----BEGIN SHOAL SEALED PRIVATE KEY-----";
const SEALED_END: &str = "-----END SHOAL SEALED PRIVATE KEY-----";
const SEALED_CONTEXT: &[u8] = b"shoal node key";

/// The node's key file is sealed with the unlock key, and none was given.
#[derive(Debug)]
pub struct KeySealed;

impl std::fmt::Display for KeySealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("this manager is locked: its private key is sealed with the cluster's unlock key; run 'shoal unlock' and enter the key")
    }
}
impl std::error::Error for KeySealed {}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeState {
    pub node_id: String,
    pub cluster_id: String,
    pub role: String,
    pub managers: Vec<String>,
    pub advertise_addr: String,
    /// A manager's Raft member ID (0: a worker, or a manager from before IDs were
    /// stored, whose ID derives from its node ID).
    #[serde(default)]
    pub raft_id: u64,
    /// `--data-path-addr`: where other nodes send this node's overlay traffic (empty:
    /// its advertised address).
    #[serde(default)]
    pub data_path_addr: String,
}

impl NodeState {
    /// This manager's Raft member ID.
    pub fn raft_id(&self) -> u64 {
        match self.raft_id {
            0 => shoal_manager::bootstrap::raft_id(&self.node_id),
            id => id,
        }
    }
}

/// A joined node's files, loaded.
pub struct Loaded {
    pub state: NodeState,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    /// The roots this node trusts.
    pub roots: Vec<Vec<u8>>,
}

/// The state directory. Every write of the node's key goes through here, one at a
/// time (renewal, root adoption, rejoin and autolock changes alike).
#[derive(Clone)]
pub struct StateDir {
    pub root: PathBuf,
    /// With autolock: the key that seals the node's private key on disk. Its lock is
    /// also the one writer lock of the key files.
    kek: Arc<Mutex<Option<UnlockKey>>>,
}

impl StateDir {
    pub fn new(root: &Path) -> Self {
        StateDir {
            root: root.to_path_buf(),
            kek: Arc::new(Mutex::new(None)),
        }
    }

    fn kek(&self) -> std::sync::MutexGuard<'_, Option<UnlockKey>> {
        self.kek.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the node's key on disk is sealed (autolock).
    pub fn sealed(&self) -> bool {
        self.kek().is_some()
    }

    /// What wraps the store's data key: the unlock key this node was unlocked with or
    /// told of, else the local key-encryption key.
    pub fn store_kek(&self) -> shoal_store::Kek {
        self.kek()
            .clone()
            .map_or(shoal_store::Kek::Local, shoal_store::Kek::Unlock)
    }

    /// Uses `kek` to open the key file from now on (after 'shoal unlock').
    pub fn unlock_with(&self, kek: UnlockKey) {
        *self.kek() = Some(kek);
    }

    /// Seals the node's key on disk with `kek` from now on, or keeps it in clear
    /// (`None`): rewrites the key file at once if that changes anything.
    pub fn set_kek(&self, kek: Option<UnlockKey>, key_pem: &str) -> Result<()> {
        let mut cur = self.kek();
        if *cur == kek {
            return Ok(());
        }
        let tmp = self.certs().join("node.key.new");
        shoal_pki::write_private(&tmp, encode_key(kek.as_ref(), key_pem).as_bytes())?;
        std::fs::rename(&tmp, self.key_file())
            .with_context(|| format!("cannot replace {}", self.key_file().display()))?;
        *cur = kek;
        Ok(())
    }

    /// Reads the key file: clear PEM, or sealed (which needs the unlock key).
    fn read_key(&self, text: String) -> Result<String> {
        let Some(body) = text.trim().strip_prefix(SEALED_BEGIN) else {
            return Ok(text);
        };
        let body: String = body
            .trim()
            .strip_suffix(SEALED_END)
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let Some(kek) = self.kek().clone() else {
            return Err(anyhow::Error::new(KeySealed));
        };
        let damaged = || {
            anyhow::anyhow!(
                "{} does not open with the unlock key: it is damaged, or sealed with another key",
                self.key_file().display()
            )
        };
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| damaged())?;
        let pem = kek.open(SEALED_CONTEXT, &sealed).ok_or_else(damaged)?;
        String::from_utf8(pem).map_err(|_| damaged())
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
        self.finish_identity_swap();
        let key_pem = self.read_key(read_pem(self.key_file())?)?;
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
        let kek = self.kek();
        shoal_pki::write_private(
            &self.key_file(),
            encode_key(kek.as_ref(), key_pem).as_bytes(),
        )?;
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

    /// Replaces the node's key and certificate (a renewal) as one unit. Both are written
    /// in full to temporary names first; then the key is renamed into place, then the
    /// certificate. A crash before the first rename leaves the old pair (and a
    /// `node.key.new` that the next start discards); a crash between the renames leaves
    /// only `node.crt.new`, which the next start renames into place. Either way the key
    /// and the certificate on disk match.
    pub fn save_identity(&self, key_pem: &str, cert_der: &[u8]) -> Result<()> {
        let kek = self.kek();
        let key_tmp = self.certs().join("node.key.new");
        let cert_tmp = self.certs().join("node.crt.new");
        shoal_pki::write_private(&key_tmp, encode_key(kek.as_ref(), key_pem).as_bytes())?;
        shoal_pki::write_private(&cert_tmp, shoal_pki::cert_pem(cert_der).as_bytes())?;
        std::fs::rename(&key_tmp, self.key_file())
            .with_context(|| format!("cannot replace {}", self.key_file().display()))?;
        std::fs::rename(&cert_tmp, self.cert_file())
            .with_context(|| format!("cannot replace {}", self.cert_file().display()))?;
        Ok(())
    }

    /// Completes or undoes a [`StateDir::save_identity`] that a crash interrupted.
    fn finish_identity_swap(&self) {
        let _one_writer = self.kek();
        let key_tmp = self.certs().join("node.key.new");
        let cert_tmp = self.certs().join("node.crt.new");
        if key_tmp.is_file() {
            // The swap had not begun: the old pair stands.
            let _ = std::fs::remove_file(&key_tmp);
            let _ = std::fs::remove_file(&cert_tmp);
        } else if cert_tmp.is_file() {
            // The new key is in place: its certificate goes with it.
            match std::fs::rename(&cert_tmp, self.cert_file()) {
                Ok(()) => tracing::warn!(
                    "finished replacing this node's certificate, which a crash interrupted"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "cannot finish replacing this node's certificate")
                }
            }
        }
    }

    pub fn save_state(&self, state: &NodeState) -> Result<()> {
        let text = serde_json::to_vec_pretty(state)?;
        shoal_pki::write_private(&self.state_file(), &text)?;
        Ok(())
    }

    /// The managers' addresses as the last heartbeat gave them (a restart starts from
    /// these, not from the list the node joined with), or `None` if none were saved or
    /// the file is unreadable (the join-time list then serves).
    pub fn load_managers(&self) -> Option<Vec<String>> {
        let text = std::fs::read(self.managers_file()).ok()?;
        match serde_json::from_slice::<Vec<String>>(&text) {
            Ok(m) if !m.is_empty() => Some(m),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(
                    file = %self.managers_file().display(),
                    error = %e,
                    "ignoring a damaged list of managers: using the one the node joined with"
                );
                None
            }
        }
    }

    /// Saves the managers' addresses the heartbeat gave (atomically).
    pub fn save_managers(&self, managers: &[String]) -> Result<()> {
        let tmp = self.root.join("managers.json.new");
        shoal_pki::write_private(&tmp, &serde_json::to_vec(managers)?)?;
        std::fs::rename(&tmp, self.managers_file())
            .with_context(|| format!("cannot replace {}", self.managers_file().display()))
    }

    fn managers_file(&self) -> PathBuf {
        self.root.join("managers.json")
    }

    /// Forgets the cluster: state, identity and store (and stores kept aside by
    /// `init --force-new-cluster`).
    pub fn wipe(&self) -> Result<()> {
        let aside = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("raft."))
            });
        let all: Vec<PathBuf> = [
            self.state_file(),
            self.managers_file(),
            self.certs(),
            self.raft_dir(),
        ]
        .into_iter()
        .chain(aside)
        .collect();
        for p in all {
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

/// The key file's contents: the PEM, or with a key, the PEM sealed.
fn encode_key(kek: Option<&UnlockKey>, key_pem: &str) -> String {
    match kek {
        None => key_pem.to_string(),
        Some(k) => {
            let sealed = k.seal(SEALED_CONTEXT, key_pem.as_bytes());
            let b64 = base64::engine::general_purpose::STANDARD.encode(sealed);
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap_or_default())
                .collect();
            format!("{SEALED_BEGIN}\n{}\n{SEALED_END}\n", lines.join("\n"))
        }
    }
}

fn first_cert(pem: &str, path: &Path) -> Result<Vec<u8>> {
    match shoal_pki::pem_certs(pem) {
        Ok(mut v) if !v.is_empty() => Ok(v.remove(0)),
        Ok(_) => bail!("{} holds no certificate", path.display()),
        Err(e) => Err(e).with_context(|| format!("{} is damaged", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> NodeState {
        NodeState {
            node_id: "n".into(),
            cluster_id: "c".into(),
            role: "manager".into(),
            managers: vec!["10.0.0.1:4377".into()],
            advertise_addr: "10.0.0.1:4377".into(),
            raft_id: 7,
            data_path_addr: String::new(),
        }
    }

    /// A directory with a saved identity: (dir, its handle, the old and a new pair).
    fn saved() -> (tempfile::TempDir, StateDir, Vec<u8>, Vec<u8>) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        let year = std::time::Duration::from_secs(365 * 86400);
        let (a, b) = (
            shoal_pki::RootCa::generate(year).unwrap(),
            shoal_pki::RootCa::generate(year).unwrap(),
        );
        let old = a.cert_der().to_vec();
        dir.save(&state(), "OLD KEY", &old, std::slice::from_ref(&old))
            .unwrap();
        (tmp, dir, old, b.cert_der().to_vec())
    }

    #[test]
    fn a_swap_cut_between_its_renames_is_finished_on_load() {
        let (_t, dir, _old, new) = saved();
        // The key was renamed into place; the certificate was still waiting.
        std::fs::write(dir.key_file(), "NEW KEY").unwrap();
        std::fs::write(dir.certs().join("node.crt.new"), shoal_pki::cert_pem(&new)).unwrap();
        let l = dir.load().unwrap().unwrap();
        assert_eq!((l.key_pem.as_str(), l.cert_der), ("NEW KEY", new));
        assert!(!dir.certs().join("node.crt.new").exists());
    }

    #[test]
    fn a_swap_cut_before_its_renames_leaves_the_old_pair() {
        let (_t, dir, old, new) = saved();
        std::fs::write(dir.certs().join("node.key.new"), "NEW KEY").unwrap();
        std::fs::write(dir.certs().join("node.crt.new"), "half a cert").unwrap();
        let l = dir.load().unwrap().unwrap();
        assert_eq!((l.key_pem.as_str(), l.cert_der), ("OLD KEY", old));
        assert!(!dir.certs().join("node.key.new").exists());
        assert!(!dir.certs().join("node.crt.new").exists());
        // And a complete swap replaces both.
        dir.save_identity("NEW KEY", &new).unwrap();
        let l = dir.load().unwrap().unwrap();
        assert_eq!((l.key_pem.as_str(), l.cert_der), ("NEW KEY", new));
    }

    #[test]
    fn a_sealed_key_needs_the_unlock_key_and_opens_with_it() {
        let (t, dir, _old, _new) = saved();
        let k = UnlockKey::generate();
        dir.set_kek(Some(k.clone()), "OLD KEY").unwrap();
        let on_disk = std::fs::read_to_string(dir.key_file()).unwrap();
        assert!(on_disk.starts_with(SEALED_BEGIN) && !on_disk.contains("OLD KEY"));
        // A restarted daemon has no key yet.
        let fresh = StateDir::new(t.path());
        let err = fresh.load().err().unwrap();
        assert!(err.downcast_ref::<KeySealed>().is_some(), "{err:#}");
        fresh.unlock_with(UnlockKey::generate());
        let err = format!("{:#}", fresh.load().err().unwrap());
        assert!(err.contains("does not open with the unlock key"), "{err}");
        fresh.unlock_with(k);
        assert_eq!(fresh.load().unwrap().unwrap().key_pem, "OLD KEY");
        // Back in clear.
        fresh.set_kek(None, "OLD KEY").unwrap();
        assert_eq!(std::fs::read_to_string(dir.key_file()).unwrap(), "OLD KEY");
    }

    #[test]
    fn the_managers_a_heartbeat_named_outlive_a_restart_and_leaving() {
        let (_t, dir, _old, _new) = saved();
        assert_eq!(
            dir.load_managers(),
            None,
            "none saved: the join-time list serves"
        );
        let now = vec!["10.0.0.2:4377".to_string(), "10.0.0.3:4377".to_string()];
        dir.save_managers(&now).unwrap();
        let again = StateDir::new(&dir.root);
        assert_eq!(again.load_managers(), Some(now));
        // A damaged file is ignored, not fatal: the join-time list serves.
        std::fs::write(again.managers_file(), b"{ not a list").unwrap();
        assert_eq!(again.load_managers(), None);
        again.save_managers(&["10.0.0.4:4377".to_string()]).unwrap();
        again.wipe().unwrap();
        assert_eq!(again.load_managers(), None, "leaving forgets them");
    }
}

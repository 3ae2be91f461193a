//! Certificate renewal. Each node renews at a random point between 50 % and 80 % of its
//! certificate's life, with a fresh key, authenticated by its current certificate; the
//! new certificate (whose role the managers decide) replaces the old one on disk, in the
//! node's client connections, and, on a manager, in what its listener serves. Failures
//! are retried with backoff and shown by `shoal info` (and reported to the managers).

use crate::statedir::StateDir;
use anyhow::{bail, Context, Result};
use rand::Rng;
use rustls::pki_types::CertificateDer;
use shoal_agent::connect::lazy_channel;
use shoal_pki::{ClusterId, ClusterTrust, NodeKey};
use shoal_proto::ca::ca_client::CaClient;
use shoal_proto::ca::RenewNodeCertificateRequest;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// What `info` shows about renewal.
#[derive(Clone, Debug, Default)]
pub struct RenewalInfo {
    pub next_at: Option<SystemTime>,
    pub last_error: Option<String>,
    pub renewals: u64,
}

/// The node's key, certificate and trusted roots: what its connections to the managers
/// present and trust. Renewal replaces the first two, a root rotation the roots.
///
/// This is the one writer of the node's identity. Every change (a renewal, adopting the
/// cluster's roots, sealing the key for autolock, switching managers) runs through
/// [`Creds::change`] one at a time: it is written to disk, every user (the channel to
/// the managers, the Raft transport, the manager's listener) is moved to it, and it is
/// published, before the next change starts. So no change is lost or undone by another
/// that ran beside it.
pub struct Creds {
    pub dir: StateDir,
    pub cluster_id: ClusterId,
    /// The manager this node talks to (the leader, once one has told it where that is).
    target: Mutex<String>,
    /// Every manager the cluster has, as the last heartbeat said.
    pub managers: Mutex<Vec<String>>,
    /// The identity in force; only [`Creds::change`] replaces it.
    identity: watch::Sender<Current>,
    /// Held by the one change in progress.
    writer: Mutex<()>,
    pub channels: watch::Sender<Channel>,
    /// On a manager: what its listener serves (set and cleared by a promotion or demotion).
    manager: Mutex<Option<shoal_manager::listener::IdentityHandle>>,
    /// On a manager: the Raft transport, which presents this node's certificate too.
    raft: Mutex<Option<Arc<crate::raft_transport::GrpcTransport>>>,
    /// The root the managers asked this node to renew onto (a rotation), if any.
    pub wanted_root: Mutex<Option<String>>,
    /// The role the managers hold for this node, as the last heartbeat said.
    pub wanted_role: Mutex<Option<String>>,
    /// As a manager: its Raft member ID, as the last certificate issued said.
    pub raft_id: std::sync::atomic::AtomicU64,
}

#[derive(Clone, PartialEq)]
pub struct Current {
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    pub roots: Vec<Vec<u8>>,
}

impl Creds {
    /// The identity loaded from disk, talking to the manager at `target`. On a manager,
    /// [`Creds::attach_raft`] and [`Creds::attach_manager`] add what else presents it.
    pub fn new(
        dir: StateDir,
        cluster_id: ClusterId,
        target: &str,
        managers: Vec<String>,
        current: Current,
        raft_id: u64,
    ) -> Result<Creds> {
        if target.is_empty() {
            bail!("no manager address is known for this node");
        }
        let tls = crate::tls::client_tls(&current.roots, &current.cert_der, &current.key_pem)?;
        let (channels, _) = watch::channel(lazy_channel(target, tls)?);
        Ok(Creds {
            dir,
            cluster_id,
            target: Mutex::new(target.to_string()),
            managers: Mutex::new(managers),
            identity: watch::Sender::new(current),
            writer: Mutex::new(()),
            channels,
            manager: Mutex::new(None),
            raft: Mutex::new(None),
            wanted_root: Mutex::new(None),
            wanted_role: Mutex::new(None),
            raft_id: std::sync::atomic::AtomicU64::new(raft_id),
        })
    }

    pub fn get(&self) -> Current {
        self.identity.borrow().clone()
    }

    /// The manager this node talks to now.
    pub fn target(&self) -> String {
        self.target.lock().map(|t| t.clone()).unwrap_or_default()
    }

    fn write_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one change of the node's identity: `f` sees the identity in force and
    /// returns the next one (having written what must be on disk), or `None` for no
    /// change. Every user is moved to the new identity before it is published, and
    /// before any other change may start.
    pub fn change(&self, f: impl FnOnce(&Current) -> Result<Option<Current>>) -> Result<bool> {
        let _one_at_a_time = self.write_lock();
        let cur = self.get();
        let Some(next) = f(&cur)? else {
            return Ok(false);
        };
        self.present(&next, next.cert_der != cur.cert_der)?;
        self.identity.send_replace(next);
        Ok(true)
    }

    /// Moves every user to `c`: the channel to the managers and the Raft transport, and
    /// (when the certificate changed) what the manager's listener serves.
    fn present(&self, c: &Current, new_certificate: bool) -> Result<()> {
        let tls = crate::tls::client_tls(&c.roots, &c.cert_der, &c.key_pem)?;
        if let Some(r) = self.raft.lock().ok().and_then(|r| r.clone()) {
            r.set_tls(tls.clone());
        }
        let _ = self.channels.send(lazy_channel(&self.target(), tls)?);
        if new_certificate {
            if let Some(m) = self.manager.lock().ok().and_then(|m| m.clone()) {
                m.set(&c.cert_der, &NodeKey::from_pem(&c.key_pem)?.pkcs8_der())?;
            }
        }
        Ok(())
    }

    /// A promotion started this node's manager (`Some`), or a demotion stopped it: its
    /// listener serves the identity in force from now on.
    pub fn attach_manager(
        &self,
        manager: Option<shoal_manager::listener::IdentityHandle>,
    ) -> Result<()> {
        let _one_at_a_time = self.write_lock();
        if let Some(m) = &manager {
            let c = self.get();
            m.set(&c.cert_der, &NodeKey::from_pem(&c.key_pem)?.pkcs8_der())?;
        }
        if let Ok(mut cur) = self.manager.lock() {
            *cur = manager;
        }
        Ok(())
    }

    /// Gives the Raft transport (a promotion) or takes it away (a demotion); a given one
    /// presents the identity in force from now on.
    pub fn attach_raft(
        &self,
        raft: Option<Arc<crate::raft_transport::GrpcTransport>>,
    ) -> Result<()> {
        let _one_at_a_time = self.write_lock();
        if let Some(r) = &raft {
            let c = self.get();
            r.set_tls(crate::tls::client_tls(&c.roots, &c.cert_der, &c.key_pem)?);
        }
        if let Ok(mut cur) = self.raft.lock() {
            *cur = raft;
        }
        Ok(())
    }

    /// Seals the key file with `kek` (autolock on), or stores it clear (`None`): the key
    /// written is the one in force, never one a renewal has just replaced.
    pub fn set_kek(&self, kek: Option<shoal_store::UnlockKey>) -> Result<()> {
        let _one_at_a_time = self.write_lock();
        self.dir.set_kek(kek, &self.get().key_pem)
    }

    /// Talks to the manager at `addr` from now on (the leader, as a follower said).
    pub fn switch_to(&self, addr: &str) -> Result<()> {
        let _one_at_a_time = self.write_lock();
        {
            let mut t = self
                .target
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            if *t == addr {
                return Ok(());
            }
            *t = addr.to_string();
        }
        tracing::info!(manager = %addr, "now talking to the manager at {addr}");
        self.present(&self.get(), false)
    }

    /// The managers a heartbeat named: failover tries these from now on, and so does the
    /// next start (they are saved when they change).
    pub fn learn_managers(&self, managers: &[String]) {
        let Ok(mut m) = self.managers.lock() else {
            return;
        };
        if *m == managers {
            return;
        }
        *m = managers.to_vec();
        if let Err(e) = self.dir.save_managers(managers) {
            tracing::warn!(error = %format!("{e:#}"), "cannot save the managers' addresses");
        }
    }

    /// The manager is unreachable: try the next one the cluster has.
    pub fn try_next_manager(&self) -> Result<()> {
        let managers = self.managers.lock().map(|m| m.clone()).unwrap_or_default();
        if managers.len() < 2 {
            return Ok(());
        }
        let cur = self.target();
        let i = managers.iter().position(|m| *m == cur).map_or(0, |i| i + 1);
        let next = managers[i % managers.len()].clone();
        self.switch_to(&next)
    }

    /// Whether the managers hold another role for this node than its certificate gives
    /// (it was promoted or demoted): it renews at once.
    pub fn role_change_pending(&self) -> bool {
        let wanted = self.wanted_role.lock().ok().and_then(|w| w.clone());
        wanted.is_some_and(|w| self.role().is_some_and(|r| r.as_str() != w))
    }

    /// The role the current certificate gives this node.
    pub fn role(&self) -> Option<shoal_pki::Role> {
        let c = self.get();
        ClusterTrust::new(self.cluster_id.clone(), &c.roots)
            .ok()?
            .verify(&c.cert_der, &[], SystemTime::now())
            .ok()
            .map(|id| id.role())
    }

    /// Whether the current certificate was issued by the trusted root with this digest.
    pub fn issued_by(&self, root_digest: &str) -> bool {
        let c = self.get();
        let Some(root) = c
            .roots
            .iter()
            .find(|r| shoal_pki::cert_digest(r) == root_digest)
        else {
            return false;
        };
        match (
            shoal_pki::CertSummary::parse(&c.cert_der),
            shoal_pki::root_subject(root),
        ) {
            (Ok(cert), Ok(subject)) => cert.issuer == subject,
            _ => false,
        }
    }

    /// Whether the managers want a renewal this node has not done yet.
    pub fn rotation_pending(&self) -> bool {
        let wanted = self.wanted_root.lock().ok().and_then(|w| w.clone());
        wanted.is_some_and(|d| !self.issued_by(&d))
    }

    /// Adopts the roots the managers say the cluster trusts, if they differ from ours
    /// and our own certificate chains to them (so adopting them never locks us out).
    pub fn adopt_roots(&self, roots: &[Vec<u8>]) -> Result<bool> {
        // Every heartbeat lands here; almost always nothing changed.
        if roots.is_empty() || self.identity.borrow().roots == roots {
            return Ok(false);
        }
        let adopted = self.change(|cur| {
            if cur.roots == roots {
                return Ok(None);
            }
            ClusterTrust::new(self.cluster_id.clone(), roots)?
                .verify(&cur.cert_der, &[], SystemTime::now())
                .context("this node's certificate does not chain to the roots the managers sent")?;
            self.dir.save_roots(roots)?;
            Ok(Some(Current {
                roots: roots.to_vec(),
                ..cur.clone()
            }))
        })?;
        if adopted {
            tracing::info!(
                roots = roots.len(),
                "now trusting the cluster's current root CAs"
            );
        }
        Ok(adopted)
    }
}

/// Renews the node's certificate when it is due, or at once when the managers ask (a
/// root rotation).
pub struct Renewer {
    pub creds: Arc<Creds>,
    pub node_id: String,
    pub info: Arc<Mutex<RenewalInfo>>,
    pub renew_now: Arc<tokio::sync::Notify>,
    /// Tells the heartbeat loop to beat at once with the new certificate.
    pub beat_now: Arc<tokio::sync::Notify>,
    /// Notified when a renewal changed the node's role (it was demoted or promoted).
    pub role_changed: Arc<tokio::sync::Notify>,
}

/// When to renew a certificate valid from `not_before` (backdated) to `not_after`.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime, fraction: f64) -> SystemTime {
    let issued = not_before + shoal_pki::CERT_BACKDATE;
    let life = not_after.duration_since(issued).unwrap_or_default();
    issued + life.mul_f64(fraction.clamp(0.5, 0.8))
}

impl Renewer {
    fn set_info(&self, f: impl FnOnce(&mut RenewalInfo)) {
        if let Ok(mut i) = self.info.lock() {
            f(&mut i);
        }
    }

    /// One renewal: new key, CSR, the CA's answer, then swap everything over.
    async fn renew_once(&self) -> Result<()> {
        let key = NodeKey::generate()?;
        let channel = self.creds.channels.borrow().clone();
        let mut req = tonic::Request::new(RenewNodeCertificateRequest {
            csr_der: key.csr_der()?,
        });
        req.set_timeout(Duration::from_secs(10));
        let resp = CaClient::new(channel)
            .renew_node_certificate(req)
            .await
            .map_err(|s| anyhow::anyhow!("the manager refused to renew: {}", s.message()))?
            .into_inner();
        let old_role = self.creds.role();
        let intermediates: Vec<CertificateDer<'_>> = resp
            .intermediates_der
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let key_pem = key.to_pem();
        let mut issued = None;
        self.creds.change(|cur| {
            let id = ClusterTrust::new(self.creds.cluster_id.clone(), &cur.roots)?
                .verify(&resp.cert_der, &intermediates, SystemTime::now())
                .context("the renewed certificate does not verify")?;
            if id.node_id().as_str() != self.node_id {
                bail!(
                    "the renewed certificate names node {} instead of {}",
                    id.node_id(),
                    self.node_id
                );
            }
            // The roots to trust from now on: the cluster's, if our new certificate
            // chains to them directly (during a rotation they include the new root).
            let roots = if !resp.roots_der.is_empty()
                && ClusterTrust::new(self.creds.cluster_id.clone(), &resp.roots_der)?
                    .verify(&resp.cert_der, &[], SystemTime::now())
                    .is_ok()
            {
                resp.roots_der.clone()
            } else {
                cur.roots.clone()
            };
            self.creds
                .raft_id
                .store(resp.raft_id, std::sync::atomic::Ordering::Relaxed);
            self.creds.dir.save_identity(&key_pem, &resp.cert_der)?;
            if roots != cur.roots {
                self.creds.dir.save_roots(&roots)?;
            }
            issued = Some(id);
            Ok(Some(Current {
                key_pem: key_pem.clone(),
                cert_der: resp.cert_der.clone(),
                roots,
            }))
        })?;
        let Some(id) = issued else {
            return Ok(());
        };
        tracing::info!(serial = %id.serial(), "certificate renewed");
        if old_role != Some(id.role()) {
            tracing::info!(role = %id.role(), "the managers changed this node's role");
            self.role_changed.notify_one();
        }
        Ok(())
    }

    pub async fn run(self, cancel: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let cert = self.creds.get().cert_der;
            let wait = match shoal_pki::CertSummary::parse(&cert) {
                Ok(c) => {
                    let fraction = rand::rng().random_range(0.5..0.8);
                    let at = renew_at(c.not_before, c.not_after, fraction);
                    self.set_info(|i| i.next_at = Some(at));
                    at.duration_since(SystemTime::now()).unwrap_or_default()
                }
                Err(e) => {
                    self.set_info(|i| {
                        i.last_error = Some(format!("cannot read the node certificate: {e}"))
                    });
                    Duration::from_secs(300)
                }
            };
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = self.renew_now.notified() => {
                        // A request that raced with a renewal just done is already met.
                        if self.creds.rotation_pending() {
                            tracing::info!("the managers asked for a renewal now (root CA rotation)");
                            break;
                        }
                        if self.creds.role_change_pending() {
                            tracing::info!("the managers changed this node's role: renewing now");
                            break;
                        }
                    }
                }
            }
            loop {
                match self.renew_once().await {
                    Ok(()) => {
                        failures = 0;
                        self.beat_now.notify_one();
                        self.set_info(|i| {
                            i.last_error = None;
                            i.renewals += 1;
                        });
                        break;
                    }
                    Err(e) => {
                        failures += 1;
                        let msg = format!("{e:#}");
                        tracing::warn!(error = %msg, "certificate renewal failed; retrying");
                        self.set_info(|i| i.last_error = Some(msg));
                        // 5 s, 10 s, ... up to a minute.
                        let backoff = Duration::from_secs(5 * u64::from(failures.min(12)));
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_between_half_and_four_fifths_of_life() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let issued = nb + shoal_pki::CERT_BACKDATE;
        let na = issued + Duration::from_secs(100);
        assert_eq!(renew_at(nb, na, 0.5), issued + Duration::from_secs(50));
        assert_eq!(renew_at(nb, na, 0.8), issued + Duration::from_secs(80));
        assert_eq!(
            renew_at(nb, na, 0.1),
            issued + Duration::from_secs(50),
            "clamped"
        );
    }

    struct Cluster {
        id: ClusterId,
        root: shoal_pki::RootCa,
        other_root: shoal_pki::RootCa,
        node: shoal_pki::NodeId,
    }

    impl Cluster {
        fn new() -> Cluster {
            let life = Duration::from_secs(86400);
            Cluster {
                id: ClusterId::generate(),
                root: shoal_pki::RootCa::generate(life).unwrap(),
                other_root: shoal_pki::RootCa::generate_named(life, "shoal-ca other").unwrap(),
                node: shoal_pki::NodeId::generate(),
            }
        }

        /// A new key and certificate for the node, as a renewal brings.
        fn issue(&self) -> (String, Vec<u8>) {
            let key = NodeKey::generate().unwrap();
            let cert = self
                .root
                .sign_node(
                    &key.csr_der().unwrap(),
                    &self.node,
                    shoal_pki::Role::Manager,
                    &self.id,
                    Duration::from_secs(3600),
                )
                .unwrap();
            (key.to_pem(), cert.cert_der)
        }
    }

    fn matches(key_pem: &str, cert_der: &[u8]) -> bool {
        let csr = NodeKey::from_pem(key_pem).unwrap().csr_der().unwrap();
        shoal_pki::csr_matches_cert(&csr, cert_der).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn identity_changes_run_one_at_a_time_and_none_undoes_another() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        let c = Arc::new(Cluster::new());
        let (key_pem, cert_der) = c.issue();
        let roots = vec![c.root.cert_der().to_vec()];
        dir.save(&Default::default(), &key_pem, &cert_der, &roots)
            .unwrap();
        let creds = Arc::new(
            Creds::new(
                dir,
                c.id.clone(),
                "127.0.0.1:9",
                vec![],
                Current {
                    key_pem,
                    cert_der,
                    roots: roots.clone(),
                },
                0,
            )
            .unwrap(),
        );
        // Renewals, root adoptions and autolock toggles, all at once, as a heartbeat,
        // the renewer and the settings follower can run them.
        let renewals = {
            let (creds, c) = (creds.clone(), c.clone());
            tokio::task::spawn_blocking(move || {
                let mut last = vec![];
                for _ in 0..20 {
                    let (key_pem, cert_der) = c.issue();
                    creds
                        .change(|cur| {
                            creds.dir.save_identity(&key_pem, &cert_der)?;
                            Ok(Some(Current {
                                key_pem: key_pem.clone(),
                                cert_der: cert_der.clone(),
                                roots: cur.roots.clone(),
                            }))
                        })
                        .unwrap();
                    last = cert_der;
                }
                last
            })
        };
        let both = vec![c.root.cert_der().to_vec(), c.other_root.cert_der().to_vec()];
        let adoptions = {
            let (creds, both, one) = (creds.clone(), both.clone(), roots.clone());
            tokio::task::spawn_blocking(move || {
                for i in 0..20 {
                    creds
                        .adopt_roots(if i % 2 == 0 { &both } else { &one })
                        .unwrap();
                }
                creds.adopt_roots(&both).unwrap();
            })
        };
        let seals = {
            let creds = creds.clone();
            tokio::task::spawn_blocking(move || {
                for i in 0..20 {
                    let kek = (i % 2 == 0).then(shoal_store::UnlockKey::generate);
                    creds.set_kek(kek).unwrap();
                }
            })
        };
        let last_cert = renewals.await.unwrap();
        adoptions.await.unwrap();
        seals.await.unwrap();
        let now = creds.get();
        assert!(now.cert_der == last_cert, "the last renewal is in force");
        assert!(now.roots == both, "the last adoption is in force");
        assert!(matches(&now.key_pem, &now.cert_der));
        // What is on disk is that identity too: the key file holds the key of the
        // certificate beside it, however the sealing and the renewals interleaved.
        let loaded = creds.dir.load().unwrap().unwrap();
        assert!(loaded.cert_der == now.cert_der);
        assert!(matches(&loaded.key_pem, &loaded.cert_der));
        assert!(loaded.roots == both);
    }
}

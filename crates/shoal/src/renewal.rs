//! Certificate renewal. Each node renews at a random point between 50 % and 80 % of its
//! certificate's life, with a fresh key, authenticated by its current certificate; the
//! new certificate (whose role the managers decide) replaces the old one on disk, in the
//! node's client connections, and, on a manager, in what its listener serves. Failures
//! are retried with backoff and shown by `shoal info` (and reported to the managers).

use crate::statedir::StateDir;
use anyhow::{bail, Context, Result};
use rand::Rng;
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

/// Everything the loop needs; shared with the daemon.
pub struct Renewer {
    pub dir: StateDir,
    pub node_id: String,
    pub cluster_id: String,
    pub root_der: Vec<u8>,
    pub target: String,
    /// The node's current certificate (shared with `info`).
    pub cert: Arc<Mutex<Vec<u8>>>,
    pub info: Arc<Mutex<RenewalInfo>>,
    pub channels: watch::Sender<Channel>,
    pub manager: Option<shoal_manager::server::IdentityHandle>,
}

/// When to renew a certificate valid from `not_before` (backdated) to `not_after`.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime, fraction: f64) -> SystemTime {
    let issued = not_before + shoal_pki::CERT_BACKDATE;
    let life = not_after.duration_since(issued).unwrap_or_default();
    issued + life.mul_f64(fraction.clamp(0.5, 0.8))
}

impl Renewer {
    fn current(&self) -> Vec<u8> {
        self.cert.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn set_info(&self, f: impl FnOnce(&mut RenewalInfo)) {
        if let Ok(mut i) = self.info.lock() {
            f(&mut i);
        }
    }

    /// One renewal: new key, CSR, the CA's answer, then swap everything over.
    async fn renew_once(&self) -> Result<()> {
        let key = NodeKey::generate()?;
        let channel = self.channels.borrow().clone();
        let mut req = tonic::Request::new(RenewNodeCertificateRequest {
            csr_der: key.csr_der()?,
        });
        req.set_timeout(Duration::from_secs(10));
        let resp = CaClient::new(channel)
            .renew_node_certificate(req)
            .await
            .map_err(|s| anyhow::anyhow!("the manager refused to renew: {}", s.message()))?
            .into_inner();
        let trust = ClusterTrust::new(
            ClusterId::parse(&self.cluster_id)?,
            std::slice::from_ref(&self.root_der),
        )?;
        let id = trust
            .verify(&resp.cert_der, &[], SystemTime::now())
            .context("the renewed certificate does not verify")?;
        if id.node_id().as_str() != self.node_id {
            bail!(
                "the renewed certificate names node {} instead of {}",
                id.node_id(),
                self.node_id
            );
        }
        let key_pem = key.to_pem();
        self.dir.save_identity(&key_pem, &resp.cert_der)?;
        let tls = crate::daemon::client_tls(&self.root_der, &resp.cert_der, &key_pem)?;
        let _ = self.channels.send(lazy_channel(&self.target, tls)?);
        if let Some(m) = &self.manager {
            m.set(
                &[resp.cert_der.clone(), self.root_der.clone()],
                &key.pkcs8_der(),
            )?;
        }
        if let Ok(mut c) = self.cert.lock() {
            *c = resp.cert_der;
        }
        tracing::info!(serial = %id.serial(), "certificate renewed");
        Ok(())
    }

    pub async fn run(self, cancel: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let cert = self.current();
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
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            loop {
                match self.renew_once().await {
                    Ok(()) => {
                        failures = 0;
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
}

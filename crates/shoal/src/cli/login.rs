//! `shoal login --token TOKEN MANAGER[:4377]`, on a user's own machine: makes a key
//! there (it never leaves the machine), pins the cluster's CA by the token's digest, and
//! gets a user certificate from the cluster CA for the one-time enrollment token. Key,
//! certificate, the cluster's roots and what the login learned are kept in the user's
//! configuration directory, readable by the user alone.

use crate::daemon::join::{reach_cluster, Pinned};
use anyhow::{bail, Context, Result};
use shoal_agent::connect::{channel, error_chain};
use shoal_pki::{ClusterId, ClusterTrust, EnrollmentToken, NodeKey};
use shoal_proto::ca::ca_client::CaClient;
use shoal_proto::ca::{IssueUserCertificateRequest, IssueUserCertificateResponse};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The private key (PKCS#8 PEM), 0600.
pub const KEY_FILE: &str = "key.pem";
/// The user certificate, then any certificates between it and a root.
pub const CERT_FILE: &str = "cert.pem";
/// The roots the cluster trusts: a manager must present a certificate under one.
pub const ROOTS_FILE: &str = "roots.pem";
/// What the login learned: cluster, user, role, scopes, managers.
pub const LOGIN_FILE: &str = "login.json";

/// `$SHOAL_CONFIG`, else `$XDG_CONFIG_HOME/shoal`, else `~/.config/shoal`.
pub fn config_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("SHOAL_CONFIG").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("shoal"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".config/shoal")),
        None => bail!("no configuration directory: set HOME, XDG_CONFIG_HOME or SHOAL_CONFIG"),
    }
}

/// Asks the manager at `remote` (a follower names the leader, which issues it).
async fn issue(
    boot: &std::sync::Arc<rustls::ClientConfig>,
    remote: &str,
    req: IssueUserCertificateRequest,
) -> Result<IssueUserCertificateResponse> {
    let ask = |addr: String| {
        let (boot, req) = (boot.clone(), req.clone());
        async move {
            let ch = channel(&addr, boot).await?;
            let mut r = tonic::Request::new(req);
            r.set_timeout(CALL_TIMEOUT);
            Ok::<_, tonic::transport::Error>(CaClient::new(ch).issue_user_certificate(r).await)
        }
    };
    let mut answer = ask(remote.to_string())
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach a manager at {remote}: {}", error_chain(&e)))?;
    if let Some(leader) = answer
        .as_ref()
        .err()
        .and_then(shoal_agent::managers::leader_pointer)
    {
        if let Ok(a) = ask(leader).await {
            answer = a;
        }
    }
    Ok(answer
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner())
}

fn pem_all(ders: &[Vec<u8>]) -> String {
    ders.iter().map(|d| shoal_pki::cert_pem(d)).collect()
}

/// Writes `data` to `dir/name` whole or not at all (each file of a login is the user's
/// alone: 0600).
fn write(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    Ok(shoal_pki::write_private(&dir.join(name), data)?)
}

pub async fn login(token: &str, manager: &str) -> Result<()> {
    let token = EnrollmentToken::parse(token)?;
    let remote = crate::netaddr::with_port(manager, crate::netaddr::DEFAULT_PORT)?;
    let pinned = Pinned {
        digest: token.ca_digest(),
        what: "enrollment token",
        fresh: "ask an administrator for a new one ('shoal user token NAME')",
    };
    let (boot, root_der) = reach_cluster(&pinned, &remote).await?;
    let key = NodeKey::generate()?;
    let issued = issue(
        &boot,
        &remote,
        IssueUserCertificateRequest {
            csr_der: key.csr_der()?,
            token: token.to_string(),
        },
    )
    .await?;
    // The certificate must be a user certificate of the cluster the token pinned.
    let cluster = ClusterId::parse(&issued.cluster_id)?;
    let trust = ClusterTrust::new(cluster.clone(), std::slice::from_ref(&root_der))?;
    let intermediates: Vec<rustls::pki_types::CertificateDer<'_>> = issued
        .intermediates_der
        .iter()
        .map(|c| rustls::pki_types::CertificateDer::from(c.as_slice()))
        .collect();
    let id = trust
        .verify_user(&issued.cert_der, &intermediates, SystemTime::now())
        .context("the manager issued a certificate this login cannot use")?;
    let roots = if issued.roots_der.contains(&root_der) {
        issued.roots_der.clone()
    } else {
        vec![root_der]
    };

    let dir = config_dir()?;
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| dir.display().to_string())?;
    }
    // The key first: a certificate on disk always has its key beside it.
    write(&dir, KEY_FILE, key.to_pem().as_bytes())?;
    let mut chain = vec![issued.cert_der.clone()];
    chain.extend(issued.intermediates_der.iter().cloned());
    write(&dir, CERT_FILE, pem_all(&chain).as_bytes())?;
    write(&dir, ROOTS_FILE, pem_all(&roots).as_bytes())?;
    let login = serde_json::json!({
        "cluster_id": cluster.to_string(),
        "user": issued.user,
        "role": issued.role,
        "scopes": issued.scopes,
        "manager": remote,
        "managers": issued.managers,
    });
    write(
        &dir,
        LOGIN_FILE,
        serde_json::to_string_pretty(&login)?.as_bytes(),
    )?;
    let until = humantime::format_rfc3339_seconds(id.not_after());
    println!(
        "Logged in to cluster {cluster} as {} ({}, scope {}); the certificate in {} is valid until {until}.",
        issued.user,
        issued.role,
        issued.scopes.join(","),
        dir.display()
    );
    Ok(())
}

/// A channel to the manager at `addr` presenting the user certificate `shoal login`
/// kept, which is renewed first (with a fresh key) once past half its life.
pub async fn remote_channel(addr: &str) -> Result<tonic::transport::Channel> {
    let dir = config_dir()?;
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).with_context(|| {
            format!(
                "no user login in {}: run 'shoal login --token <token> <manager>' first",
                dir.display()
            )
        })
    };
    let (key_pem, cert_pem, roots_pem) = (read(KEY_FILE)?, read(CERT_FILE)?, read(ROOTS_FILE)?);
    let chain = shoal_pki::pem_certs(&cert_pem)?;
    let roots = shoal_pki::pem_certs(&roots_pem)?;
    let key = NodeKey::from_pem(&key_pem)?;
    let Some(leaf) = chain.first() else {
        bail!(
            "{} holds no certificate: run 'shoal login' again",
            dir.join(CERT_FILE).display()
        );
    };
    let cert = shoal_pki::CertSummary::parse(leaf)?;
    let now = SystemTime::now();
    if now >= cert.not_after {
        bail!(
            "the user certificate of {} expired at {}: log in again with 'shoal login --token <new token> <manager>' (an administrator makes one with 'shoal user token {}')",
            cert.common_name,
            humantime::format_rfc3339_seconds(cert.not_after),
            cert.common_name
        );
    }
    let addr = crate::netaddr::with_port(addr, crate::netaddr::DEFAULT_PORT)?;
    let connect = |chain: Vec<Vec<u8>>, key: Vec<u8>| {
        let roots = roots.clone();
        let addr = addr.clone();
        async move {
            let mut store = rustls::RootCertStore::empty();
            for r in &roots {
                store.add(rustls::pki_types::CertificateDer::from(r.clone()))?;
            }
            let cfg = shoal_pki::client_config(std::sync::Arc::new(store), Some((&chain, &key)))?;
            channel(&addr, std::sync::Arc::new(cfg)).await.map_err(|e| {
                anyhow::anyhow!("cannot reach a manager at {addr}: {}", error_chain(&e))
            })
        }
    };
    let ch = connect(chain.clone(), key.pkcs8_der()).await?;
    let half = cert.not_before
        + cert
            .not_after
            .duration_since(cert.not_before)
            .unwrap_or_default()
            / 2;
    if now < half {
        return Ok(ch);
    }
    // Past half its life: a new key and certificate, then the new channel.
    let fresh = NodeKey::generate()?;
    let issued = CaClient::new(ch.clone())
        .renew_user_certificate(shoal_proto::ca::RenewUserCertificateRequest {
            csr_der: fresh.csr_der()?,
        })
        .await;
    let issued = match issued {
        Ok(r) => r.into_inner(),
        Err(s) => {
            // Still valid: work on with it, and say why it was not renewed.
            eprintln!(
                "Warning: the user certificate was not renewed: {}",
                s.message()
            );
            return Ok(ch);
        }
    };
    let mut chain = vec![issued.cert_der.clone()];
    chain.extend(issued.intermediates_der.iter().cloned());
    write(&dir, KEY_FILE, fresh.to_pem().as_bytes())?;
    write(&dir, CERT_FILE, pem_all(&chain).as_bytes())?;
    if !issued.roots_der.is_empty() {
        write(&dir, ROOTS_FILE, pem_all(&issued.roots_der).as_bytes())?;
    }
    connect(chain, fresh.pkcs8_der()).await
}

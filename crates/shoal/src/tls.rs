//! The node's TLS client configuration toward the managers: its certificate and key, and
//! the roots it trusts. A leaf: the daemon, renewal and forwarding all build theirs here.

use anyhow::Result;
use shoal_pki::NodeKey;
use std::sync::Arc;

/// A client configuration from roots (DER), a certificate (DER) and its key (PEM).
pub(crate) fn client_tls(
    root_ders: &[Vec<u8>],
    cert_der: &[u8],
    key_pem: &str,
) -> Result<Arc<rustls::ClientConfig>> {
    let key = NodeKey::from_pem(key_pem)?;
    let mut roots = rustls::RootCertStore::empty();
    for r in root_ders {
        roots.add(rustls::pki_types::CertificateDer::from(r.clone()))?;
    }
    let chain = [cert_der.to_vec()];
    Ok(Arc::new(shoal_pki::client_config(
        Arc::new(roots),
        Some((&chain, &key.pkcs8_der())),
    )?))
}

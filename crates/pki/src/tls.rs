//! rustls configurations for shoal's one listener and its clients.
//!
//! The server asks every client for a certificate but lets a client without one finish
//! the handshake, because a joining node has no certificate yet; which RPCs such a
//! client may call is decided per RPC above this layer. A client that does present a
//! certificate must chain to this cluster's root and carry this cluster's ID, or the
//! handshake fails. Clients always verify the server name `shoal-manager`, which only a
//! manager certificate carries.

use crate::{ClusterTrust, NodeIdentity, PkiError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The name every client verifies when it talks to a manager.
pub const MANAGER_SERVER_NAME: &str = "shoal-manager";

/// Installs ring as the process-wide rustls provider. Call once at start.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Tls(e.to_string())
}

pub(crate) fn der_to_pem(label: &str, der: &[u8]) -> String {
    use std::fmt::Write;
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", String::from_utf8_lossy(line));
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

/// The first certificate in a PEM text.
pub(crate) fn parse_cert_pem(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    let der = pem_certs(pem)?.into_iter().next().unwrap_or_default();
    Ok(CertificateDer::from(der))
}

/// Every certificate in a PEM text, as DER.
pub fn pem_certs(pem: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let mut rd = pem.as_bytes();
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut rd).collect();
    let certs = certs.map_err(|e| PkiError::BadCert(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(PkiError::BadCert("no CERTIFICATE block in PEM".into()));
    }
    Ok(certs.into_iter().map(|c| c.to_vec()).collect())
}

/// PEM for a DER certificate.
pub fn cert_pem(der: &[u8]) -> String {
    der_to_pem("CERTIFICATE", der)
}

fn private_key(pkcs8_der: &[u8]) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8_der.to_vec()))
}

/// Decides whether a verified identity has been revoked; returns the reason if so.
pub type RevocationCheck = Arc<dyn Fn(&NodeIdentity) -> Option<String> + Send + Sync>;

/// The server's client verifier: optional certificate, but a certificate given must be
/// this cluster's and not revoked.
struct ClusterClientVerifier {
    trust: ClusterTrust,
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Option<RevocationCheck>,
}

impl std::fmt::Debug for ClusterClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterClientVerifier({:?})", self.trust)
    }
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs());
        // A node or a user: which calls each may make is the listener's business.
        let peer = self
            .trust
            .verify_peer(end_entity, intermediates, now)
            .map_err(|e| {
                // Say whose certificate it was: a foreign CA's client is then visible in
                // the manager's log by name, not only as "BadSignature".
                rustls::Error::General(format!(
                    "client certificate refused ({}): {e}",
                    describe_cert(end_entity)
                ))
            })?;
        if let (Some(check), crate::Peer::Node(id)) = (&self.revoked, &peer) {
            if let Some(why) = check(id) {
                return Err(rustls::Error::General(why));
            }
        }
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The listener's configuration: serves `cert_chain` (node certificate, then the root,
/// so a joiner can pin the root by digest) and checks client certificates.
pub fn server_config(
    trust: &ClusterTrust,
    cert_chain: &[Vec<u8>],
    key_pkcs8: &[u8],
    revoked: Option<RevocationCheck>,
) -> Result<ServerConfig, PkiError> {
    let inner = WebPkiClientVerifier::builder_with_provider(trust.roots(), provider())
        .allow_unauthenticated()
        .build()
        .map_err(tls_err)?;
    let verifier = Arc::new(ClusterClientVerifier {
        trust: trust.clone(),
        inner,
        revoked,
    });
    let chain = cert_chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, private_key(key_pkcs8))
        .map_err(tls_err)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// A node's client configuration: trusts the cluster's roots and presents its own
/// certificate (or none, for the join calls).
pub fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<(&[Vec<u8>], &[u8])>,
) -> Result<ClientConfig, PkiError> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((chain, key)) => b
            .with_client_auth_cert(
                chain
                    .iter()
                    .map(|c| CertificateDer::from(c.clone()))
                    .collect(),
                private_key(key),
            )
            .map_err(tls_err)?,
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// What a joining node pins: the root CA digest from its token. After a refused
/// handshake, `presented` holds the digest of the root the server offered.
#[derive(Clone, Debug)]
pub struct BootstrapPin {
    pub digest: String,
    pub presented: Arc<Mutex<Option<String>>>,
}

impl BootstrapPin {
    pub fn new(digest: &str) -> Self {
        BootstrapPin {
            digest: digest.to_string(),
            presented: Arc::new(Mutex::new(None)),
        }
    }
    pub fn presented_digest(&self) -> Option<String> {
        self.presented.lock().ok().and_then(|g| g.clone())
    }
}

/// Verifies a manager for a node that has only a join token: the server must present,
/// in its chain, a root whose SHA-256 equals the token's digest, and its certificate must
/// chain to that root with the name `shoal-manager`. Nothing is trusted on first use.
#[derive(Debug)]
struct PinnedRootVerifier {
    pin: BootstrapPin,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedRootVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let root = intermediates
            .iter()
            .find(|c| crate::cert_digest(c) == self.pin.digest);
        let Some(root) = root else {
            let offered = intermediates.last().map(|c| crate::cert_digest(c));
            if let Ok(mut g) = self.pin.presented.lock() {
                *g = Some(offered.clone().unwrap_or_else(|| "none".into()));
            }
            return Err(rustls::Error::General(format!(
                "the manager's root CA does not match the join token (expected digest {}, got {})",
                self.pin.digest,
                offered.as_deref().unwrap_or("none")
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(root.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The client configuration for the two join calls, pinned to the token's root digest.
pub fn pinned_bootstrap_client_config(pin: BootstrapPin) -> Result<ClientConfig, PkiError> {
    let verifier = Arc::new(PinnedRootVerifier {
        pin,
        provider: provider(),
    });
    // rustls puts every custom server verifier behind `dangerous()`. This one is
    // stricter than WebPKI alone: it verifies the chain fully, against the one root the
    // token pins, and fails closed.
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// "subject \"…\", issuer \"…\"" of a certificate, for messages about refused ones.
fn describe_cert(der: &[u8]) -> String {
    use x509_parser::prelude::*;
    match X509Certificate::from_der(der) {
        Ok((_, c)) => format!("subject \"{}\", issuer \"{}\"", c.subject(), c.issuer()),
        Err(_) => "unparsable certificate".to_string(),
    }
}

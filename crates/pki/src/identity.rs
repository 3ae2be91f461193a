//! Who a peer is. A [`NodeIdentity`] can only be made by [`ClusterTrust::verify`], which
//! checks the whole chain to this cluster's root and every name the CA writes, so a
//! handler that holds one knows the node ID, role and cluster are the CA's word.

use crate::{ClusterId, NodeId, PkiError, Role};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A node identity taken from a verified certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIdentity {
    node_id: NodeId,
    role: Role,
    cluster_id: ClusterId,
    serial: String,
    not_after: SystemTime,
    key_digest: String,
    issuer: String,
}

impl NodeIdentity {
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn cluster_id(&self) -> &ClusterId {
        &self.cluster_id
    }
    /// Certificate serial, lower-case hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
    /// SHA-256 (hex) of the certificate's public key.
    pub fn key_digest(&self) -> &str {
        &self.key_digest
    }
    /// The issuer's name, as [`root_subject`] writes a root's.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }
}

/// The roots a cluster trusts (more than one only during a root rotation) and its ID.
#[derive(Clone)]
pub struct ClusterTrust {
    cluster_id: ClusterId,
    roots: Arc<RootCertStore>,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for ClusterTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterTrust({})", self.cluster_id)
    }
}

impl ClusterTrust {
    pub fn new(cluster_id: ClusterId, root_ders: &[Vec<u8>]) -> Result<Self, PkiError> {
        let mut roots = RootCertStore::empty();
        for der in root_ders {
            roots
                .add(CertificateDer::from(der.clone()))
                .map_err(|e| PkiError::BadCert(format!("root CA certificate: {e}")))?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| PkiError::Tls(e.to_string()))?;
        Ok(ClusterTrust {
            cluster_id,
            roots,
            verifier,
        })
    }

    pub fn cluster_id(&self) -> &ClusterId {
        &self.cluster_id
    }
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// Verifies `end_entity` (with any `intermediates`) against this cluster's roots at
    /// `now`, then checks the names the CA writes. The only way to get a [`NodeIdentity`].
    pub fn verify(
        &self,
        end_entity: &[u8],
        intermediates: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<NodeIdentity, PkiError> {
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let ee = CertificateDer::from(end_entity);
        self.verifier
            .verify_client_cert(
                &ee,
                intermediates,
                UnixTime::since_unix_epoch(Duration::from_secs(secs)),
            )
            .map_err(|e| PkiError::ForeignCert(format!("chain check failed: {e}")))?;
        let id = parse_identity(end_entity)?;
        if id.cluster_id != self.cluster_id {
            return Err(PkiError::ForeignCert(format!(
                "certificate is for cluster {} but this is cluster {}",
                id.cluster_id, self.cluster_id
            )));
        }
        Ok(id)
    }
}

/// Reads the CA-written names out of a certificate and checks they agree with each other.
fn parse_identity(der: &[u8]) -> Result<NodeIdentity, PkiError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::BadCert(format!("cannot parse certificate: {e}")))?;
    let subject = cert.subject();
    fn one<'a>(
        what: &str,
        mut it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
    ) -> Result<String, PkiError> {
        let v = it
            .next()
            .ok_or_else(|| PkiError::BadCert(format!("subject has no {what}")))?;
        if it.next().is_some() {
            return Err(PkiError::BadCert(format!(
                "subject has more than one {what}"
            )));
        }
        v.as_str()
            .map(str::to_string)
            .map_err(|_| PkiError::BadCert(format!("subject {what} is not a string")))
    }
    let cn = one("CN", subject.iter_common_name())?;
    let ou = one("OU", subject.iter_organizational_unit())?;
    let o = one("O", subject.iter_organization())?;
    let node_id = NodeId::parse(&cn)?;
    let role =
        Role::from_ou(&ou).ok_or_else(|| PkiError::BadCert(format!("unknown role OU {ou:?}")))?;
    let cluster_id = ClusterId::parse(&o)?;

    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::BadCert(format!("bad SAN extension: {e}")))?
        .ok_or_else(|| PkiError::BadCert("certificate has no SANs".into()))?;
    let want_uri = format!("spiffe://{cluster_id}/node/{node_id}");
    let (mut has_uri, mut has_role, mut has_id) = (false, false, false);
    for name in &san.value.general_names {
        match name {
            GeneralName::URI(u) if *u == want_uri => has_uri = true,
            GeneralName::URI(u) => {
                return Err(PkiError::BadCert(format!("unexpected URI SAN {u}")))
            }
            GeneralName::DNSName(d) if *d == role.ou() => has_role = true,
            GeneralName::DNSName(d) if *d == node_id.as_str() => has_id = true,
            GeneralName::DNSName(d) => {
                return Err(PkiError::BadCert(format!(
                    "DNS SAN {d} does not match role {ou}"
                )))
            }
            _ => {}
        }
    }
    if !(has_uri && has_role && has_id) {
        return Err(PkiError::BadCert(format!(
            "SANs must name {want_uri}, {} and {node_id}",
            role.ou()
        )));
    }
    let serial = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let not_after = SystemTime::UNIX_EPOCH
        + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
    Ok(NodeIdentity {
        node_id,
        role,
        cluster_id,
        serial,
        not_after,
        key_digest: crate::ca::key_digest(cert.public_key().subject_public_key.data.as_ref()),
        issuer: cert.issuer().to_string(),
    })
}

/// A root certificate's subject name, comparable with [`NodeIdentity::issuer`].
pub fn root_subject(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::BadCert(format!("cannot parse certificate: {e}")))?;
    Ok(cert.subject().to_string())
}

/// What a node's own certificate on disk says, for display (`shoal info`). Not an
/// identity: it is not verified against anything.
#[derive(Clone, Debug)]
pub struct CertSummary {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub serial: String,
    pub subject: String,
    pub issuer: String,
    /// The subject's CN and O, as written (for a node certificate: node and cluster ID).
    pub common_name: String,
    pub organization: String,
}

fn first<'a>(
    mut it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
) -> String {
    it.next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_string()
}

impl CertSummary {
    pub fn parse(der: &[u8]) -> Result<Self, PkiError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| PkiError::BadCert(format!("cannot parse certificate: {e}")))?;
        let t = |x: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(x.max(0) as u64);
        Ok(CertSummary {
            not_before: t(cert.validity().not_before.timestamp()),
            not_after: t(cert.validity().not_after.timestamp()),
            serial: cert
                .raw_serial()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            common_name: first(cert.subject().iter_common_name()),
            organization: first(cert.subject().iter_organization()),
        })
    }
}

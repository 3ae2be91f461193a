//! Who a peer is. A [`NodeIdentity`] can only be made by [`ClusterTrust::verify`] (a
//! [`UserIdentity`] by [`ClusterTrust::verify_user`]), which checks the whole chain to this
//! cluster's root and every name the CA writes, so a handler that holds one knows the
//! node ID, role and cluster (or user name) are the CA's word. The two kinds are told
//! apart by their OU and never pass for each other.

use crate::{ClusterId, NodeId, PkiError, Role, UserIdentity, UserName, USER_OU};
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
    /// `now`, then checks the names the CA writes. The only way to get a [`NodeIdentity`];
    /// a user certificate is refused, naming its user.
    pub fn verify(
        &self,
        end_entity: &[u8],
        intermediates: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<NodeIdentity, PkiError> {
        self.chain(end_entity, intermediates, now)?;
        let id = node_from(Names::read(end_entity)?)?;
        self.same_cluster(&id.cluster_id)?;
        Ok(id)
    }

    /// As [`ClusterTrust::verify`], for a user certificate: the only way to get a
    /// [`UserIdentity`]; a node certificate is refused, naming its node.
    pub fn verify_user(
        &self,
        end_entity: &[u8],
        intermediates: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<UserIdentity, PkiError> {
        self.chain(end_entity, intermediates, now)?;
        let id = user_from(Names::read(end_entity)?)?;
        self.same_cluster(&id.cluster_id)?;
        Ok(id)
    }

    /// Either kind of peer, by what its certificate says it is (each checked as
    /// [`ClusterTrust::verify`] and [`ClusterTrust::verify_user`] check it).
    pub fn verify_peer(
        &self,
        end_entity: &[u8],
        intermediates: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<Peer, PkiError> {
        self.chain(end_entity, intermediates, now)?;
        let names = Names::read(end_entity)?;
        let peer = if names.ou == USER_OU {
            Peer::User(user_from(names)?)
        } else {
            Peer::Node(node_from(names)?)
        };
        self.same_cluster(match &peer {
            Peer::Node(n) => &n.cluster_id,
            Peer::User(u) => &u.cluster_id,
        })?;
        Ok(peer)
    }

    fn chain(
        &self,
        end_entity: &[u8],
        intermediates: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<(), PkiError> {
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
        Ok(())
    }

    fn same_cluster(&self, theirs: &ClusterId) -> Result<(), PkiError> {
        if *theirs != self.cluster_id {
            return Err(PkiError::ForeignCert(format!(
                "certificate is for cluster {theirs} but this is cluster {}",
                self.cluster_id
            )));
        }
        Ok(())
    }
}

/// A verified peer: a node or a user, never both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    Node(NodeIdentity),
    User(UserIdentity),
}

/// The names and uses the CA writes into a certificate, read but not yet checked
/// against each other.
struct Names {
    cn: String,
    ou: String,
    o: String,
    uris: Vec<String>,
    dns: Vec<String>,
    server_auth: bool,
    client_auth: bool,
    serial: String,
    not_after: SystemTime,
    key_digest: String,
    issuer: String,
}

impl Names {
    fn read(der: &[u8]) -> Result<Names, PkiError> {
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
        let (mut uris, mut dns) = (Vec::new(), Vec::new());
        if let Some(san) = cert
            .subject_alternative_name()
            .map_err(|e| PkiError::BadCert(format!("bad SAN extension: {e}")))?
        {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => uris.push(u.to_string()),
                    GeneralName::DNSName(d) => dns.push(d.to_string()),
                    _ => {}
                }
            }
        }
        let eku = cert
            .extended_key_usage()
            .map_err(|e| PkiError::BadCert(format!("bad extended key usage: {e}")))?;
        Ok(Names {
            cn: one("CN", subject.iter_common_name())?,
            ou: one("OU", subject.iter_organizational_unit())?,
            o: one("O", subject.iter_organization())?,
            uris,
            dns,
            server_auth: eku.as_ref().is_some_and(|e| e.value.server_auth),
            client_auth: eku.as_ref().is_some_and(|e| e.value.client_auth),
            serial: cert
                .raw_serial()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            not_after: SystemTime::UNIX_EPOCH
                + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64),
            key_digest: crate::ca::key_digest(cert.public_key().subject_public_key.data.as_ref()),
            issuer: cert.issuer().to_string(),
        })
    }
}

/// A node's names, checked against each other.
fn node_from(n: Names) -> Result<NodeIdentity, PkiError> {
    if n.ou == USER_OU {
        return Err(PkiError::BadCert(format!(
            "it is the user certificate of {}, which cannot act as a node",
            n.cn
        )));
    }
    if n.ou == crate::workload::WORKLOAD_OU {
        return Err(PkiError::BadCert(format!(
            "it is the workload certificate of service {}, which cannot act as a node",
            n.cn
        )));
    }
    let node_id = NodeId::parse(&n.cn)?;
    let role = Role::from_ou(&n.ou)
        .ok_or_else(|| PkiError::BadCert(format!("unknown role OU {:?}", n.ou)))?;
    let cluster_id = ClusterId::parse(&n.o)?;
    let want_uri = format!("spiffe://{cluster_id}/node/{node_id}");
    if let Some(u) = n.uris.iter().find(|u| **u != want_uri) {
        return Err(PkiError::BadCert(format!("unexpected URI SAN {u}")));
    }
    if let Some(d) = n
        .dns
        .iter()
        .find(|d| *d != role.ou() && *d != node_id.as_str())
    {
        return Err(PkiError::BadCert(format!(
            "DNS SAN {d} does not match role {}",
            n.ou
        )));
    }
    let has = |v: &[String], x: &str| v.iter().any(|s| s == x);
    if !(has(&n.uris, &want_uri) && has(&n.dns, role.ou()) && has(&n.dns, node_id.as_str())) {
        return Err(PkiError::BadCert(format!(
            "SANs must name {want_uri}, {} and {node_id}",
            role.ou()
        )));
    }
    Ok(NodeIdentity {
        node_id,
        role,
        cluster_id,
        serial: n.serial,
        not_after: n.not_after,
        key_digest: n.key_digest,
        issuer: n.issuer,
    })
}

/// A user's names, checked against each other: OU `shoal-user`, one URI SAN naming the
/// user, no DNS name, client use only.
fn user_from(n: Names) -> Result<UserIdentity, PkiError> {
    if let Some(role) = Role::from_ou(&n.ou) {
        return Err(PkiError::BadUserCert(format!(
            "it is the certificate of {role} node {}, which cannot act as a user: work on a \
             manager's own socket, or get a user certificate with 'shoal login'",
            n.cn
        )));
    }
    if n.ou == crate::workload::WORKLOAD_OU {
        return Err(PkiError::BadUserCert(format!(
            "it is the workload certificate of service {}, which cannot act as a user",
            n.cn
        )));
    }
    if n.ou != USER_OU {
        return Err(PkiError::BadUserCert(format!("unknown OU {:?}", n.ou)));
    }
    let name = UserName::parse(&n.cn)?;
    let cluster_id = ClusterId::parse(&n.o)?;
    let want_uri = format!("spiffe://{cluster_id}/user/{name}");
    if n.uris != [want_uri.clone()] {
        return Err(PkiError::BadUserCert(format!(
            "its URI SANs must be exactly {want_uri}"
        )));
    }
    if let Some(d) = n.dns.first() {
        return Err(PkiError::BadUserCert(format!(
            "it names the host {d}; a user certificate names no host"
        )));
    }
    if n.server_auth || !n.client_auth {
        return Err(PkiError::BadUserCert(
            "its use must be client authentication only".into(),
        ));
    }
    Ok(UserIdentity {
        name,
        cluster_id,
        serial: n.serial,
        not_after: n.not_after,
        key_digest: n.key_digest,
        issuer: n.issuer,
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

//! The cluster's root CA and its signing of node and user certificates.
//!
//! The CA trusts nothing in a CSR but its public key (and the CSR's signature, which
//! proves the requester holds the private key). Subject, SANs, usages and life come from
//! the caller, who takes them from the store.

use crate::{ClusterId, NodeId, PkiError, Role, UserName, USER_OU};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use std::time::{Duration, SystemTime};
use time::OffsetDateTime;

/// How far back a certificate's NotBefore is set, so a peer whose clock runs a little
/// behind still accepts a certificate issued a moment ago.
pub const CERT_BACKDATE: Duration = Duration::from_secs(120);
/// The shortest node certificate life an operator may ask for.
pub const MIN_CERT_EXPIRY: Duration = Duration::from_secs(60);
/// The longest: a node certificate cannot usefully outlive the root (20 years).
pub const MAX_CERT_EXPIRY: Duration = Duration::from_secs(20 * 365 * 86400);
const ROOT_CN: &str = "shoal-ca";
/// An operator-supplied root must stay valid at least this long (as swarm mode).
pub const MIN_ROOT_LIFE: Duration = Duration::from_secs(365 * 86400);

/// A node or user certificate just issued.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    /// Serial number, lower-case hex.
    pub serial: String,
    pub not_after: SystemTime,
    /// SHA-256 (hex) of the certificate's public key (see [`cert_key_digest`]).
    pub key_digest: String,
}

/// The root CA: certificate plus signing key. The key is only ever written into the store
/// (and never returned by any API).
pub struct RootCa {
    cert_der: CertificateDer<'static>,
    key: KeyPair,
}

fn random_serial() -> (SerialNumber, String) {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[0] &= 0x7f; // a positive INTEGER
    b[0] |= 0x40; // and never shortened by DER's leading-zero rule
    let hex = b.iter().map(|x| format!("{x:02x}")).collect();
    (SerialNumber::from_slice(&b), hex)
}

fn odt(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

fn sign_err(e: rcgen::Error) -> PkiError {
    PkiError::Signing(e.to_string())
}

pub(crate) fn key_digest(public_key: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(public_key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 (hex) of the public key a CSR carries (its signature proves the requester
/// holds the private key).
pub fn csr_key_digest(csr_der: &[u8]) -> Result<String, PkiError> {
    use rcgen::PublicKeyData;
    let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
        csr_der.to_vec(),
    ))
    .map_err(|e| PkiError::BadCsr(e.to_string()))?;
    Ok(key_digest(csr.public_key.der_bytes()))
}

/// SHA-256 (hex) of a certificate's public key, comparable with [`csr_key_digest`].
pub fn cert_key_digest(cert_der: &[u8]) -> Result<String, PkiError> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der)
        .map_err(|e| PkiError::BadCert(format!("cannot parse certificate: {e}")))?;
    Ok(key_digest(
        cert.public_key().subject_public_key.data.as_ref(),
    ))
}

/// Whether the CSR carries the same public key as the certificate (a rejoin proves it
/// holds the expired certificate's key by signing the CSR with it).
pub fn csr_matches_cert(csr_der: &[u8], cert_der: &[u8]) -> Result<bool, PkiError> {
    Ok(csr_key_digest(csr_der)? == cert_key_digest(cert_der)?)
}

/// An X.509 name as rcgen writes it when it names an issuer, so a cross-signed
/// certificate's subject is byte-equal to what the new root's leaves name as issuer.
fn dn_of(name: &x509_parser::x509::X509Name<'_>) -> Result<DistinguishedName, PkiError> {
    use rcgen::string::PrintableString;
    use rcgen::DnValue;
    use x509_parser::der_parser::asn1_rs::Tag;
    let bad = |what: &str| PkiError::BadRoot(format!("the root's subject: {what}"));
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(bad("one attribute per name component is supported"));
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| bad("an attribute type is not an OID"))?
            .collect();
        let data = attr.attr_value().data;
        let text = std::str::from_utf8(data).map_err(|_| bad("a value is not text"))?;
        let value = match attr.attr_value().header.tag() {
            Tag::PrintableString => DnValue::PrintableString(
                PrintableString::try_from(text).map_err(|e| bad(&e.to_string()))?,
            ),
            Tag::Utf8String => DnValue::Utf8String(text.to_string()),
            _ => {
                return Err(bad(
                    "only PrintableString and UTF8String values are supported",
                ))
            }
        };
        dn.push(DnType::from_oid(&oid), value);
    }
    Ok(dn)
}

impl RootCa {
    /// A new self-signed ECDSA P-256 root, valid for `validity` from now.
    pub fn generate(validity: Duration) -> Result<Self, PkiError> {
        Self::generate_named(validity, ROOT_CN)
    }

    /// A new root with the common name `cn`. A rotation's new root gets a name of its own,
    /// so the two roots trusted during the change are told apart by subject too.
    pub fn generate_named(validity: Duration, cn: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(sign_err)?;
        let params = Self::root_params(validity, cn)?;
        let cert = params.self_signed(&key).map_err(sign_err)?;
        Ok(RootCa {
            cert_der: cert.der().clone(),
            key,
        })
    }

    fn root_params(validity: Duration, cn: &str) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(sign_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = odt(now - CERT_BACKDATE);
        params.not_after = odt(now + validity);
        params.serial_number = Some(random_serial().0);
        Ok(params)
    }

    /// Loads a root from its PEM certificate and PEM (PKCS#8) key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let cert_der = crate::tls::parse_cert_pem(cert_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadKey(e.to_string()))?;
        Ok(RootCa { cert_der, key })
    }

    /// Loads a root an operator supplies for a rotation, refusing one that is not fit to
    /// be the cluster's root: not exactly one CA certificate, a key that is not the
    /// certificate's, or less than a year of life left.
    pub fn from_operator_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        use x509_parser::prelude::FromDer;
        let certs = crate::tls::pem_certs(cert_pem)?;
        if certs.len() != 1 {
            return Err(PkiError::BadRoot(format!(
                "the certificate file holds {} certificates; give exactly one (the root itself)",
                certs.len()
            )));
        }
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&certs[0])
            .map_err(|e| PkiError::BadRoot(format!("cannot parse the certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(PkiError::BadRoot(
                "the certificate is not a CA certificate (basicConstraints CA:TRUE)".into(),
            ));
        }
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
        if not_after < SystemTime::now() + MIN_ROOT_LIFE {
            return Err(PkiError::BadRoot(
                "the certificate expires within a year; give a root valid for at least one more year".into(),
            ));
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::BadKey(e.to_string()))?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(PkiError::BadRoot(
                "the key does not belong to the certificate".into(),
            ));
        }
        Ok(RootCa {
            cert_der: CertificateDer::from(certs[0].clone()),
            key,
        })
    }

    /// Whether `other` uses the same key pair (rotating to the same key is refused: it
    /// would not take trust away from anything the old root signed).
    pub fn same_key(&self, other: &RootCa) -> bool {
        self.key.public_key_raw() == other.key.public_key_raw()
    }

    /// `new`'s subject, public key and validity, signed by this root: a certificate that
    /// lets a node trusting only this root accept what `new` signs.
    pub fn cross_sign(&self, new: &RootCa) -> Result<Vec<u8>, PkiError> {
        use x509_parser::prelude::FromDer;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&new.cert_der)
            .map_err(|e| PkiError::BadRoot(format!("cannot parse the new root: {e}")))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(sign_err)?;
        params.distinguished_name = dn_of(cert.subject())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = cert.validity().not_before.to_datetime();
        params.not_after = cert.validity().not_after.to_datetime();
        params.serial_number = Some(random_serial().0);
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key).map_err(sign_err)?;
        let cert = params.signed_by(&new.key, &issuer).map_err(sign_err)?;
        Ok(cert.der().to_vec())
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }
    pub fn cert_pem(&self) -> String {
        crate::tls::der_to_pem("CERTIFICATE", &self.cert_der)
    }
    /// The private key as PKCS#8 PEM: secret material, for the store only.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
    /// The digest join tokens carry.
    pub fn digest(&self) -> String {
        crate::cert_digest(&self.cert_der)
    }

    /// Issues a node certificate for the public key in `csr_der`: CN the node ID, OU its
    /// role, O the cluster; SANs its role (so `shoal-manager` names any manager), its ID
    /// and `spiffe://<cluster>/node/<ID>`; server and client use.
    pub fn sign_node(
        &self,
        csr_der: &[u8],
        node: &NodeId,
        role: Role,
        cluster: &ClusterId,
        validity: Duration,
    ) -> Result<IssuedCert, PkiError> {
        self.sign(
            csr_der,
            Subject {
                cn: node.as_str(),
                ou: role.ou(),
                cluster,
                dns: vec![role.ou().to_string(), node.as_str().to_string()],
                uri: format!("spiffe://{cluster}/node/{node}"),
                usages: vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
            },
            validity,
        )
    }

    /// Issues a user certificate for the public key in `csr_der`: CN the user's name, OU
    /// `shoal-user`, O the cluster, one URI SAN `spiffe://<cluster>/user/<name>`, no DNS
    /// name and client use only, so it can neither pass for a node nor serve as one.
    pub fn sign_user(
        &self,
        csr_der: &[u8],
        user: &UserName,
        cluster: &ClusterId,
        validity: Duration,
    ) -> Result<IssuedCert, PkiError> {
        self.sign(
            csr_der,
            Subject {
                cn: user.as_str(),
                ou: USER_OU,
                cluster,
                dns: Vec::new(),
                uri: format!("spiffe://{cluster}/user/{user}"),
                usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
            },
            validity,
        )
    }

    /// Signs a task's CSR: an X.509-SVID (one URI SAN, `spiffe://<cluster>/stack/<stack
    /// or _>/service/<service>`, no host name, server and client use), CN the service,
    /// OU `shoal-workload`. Neither a node nor a user certificate: their checks refuse
    /// it by its OU.
    pub fn sign_workload(
        &self,
        csr_der: &[u8],
        cluster: &ClusterId,
        stack: Option<&str>,
        service: &str,
        validity: Duration,
    ) -> Result<IssuedCert, PkiError> {
        if let Some(s) = stack.filter(|s| !s.is_empty()) {
            crate::workload::check_segment("stack", s)?;
        }
        crate::workload::check_segment("service", service)?;
        self.sign(
            csr_der,
            Subject {
                cn: service,
                ou: crate::workload::WORKLOAD_OU,
                cluster,
                dns: Vec::new(),
                uri: crate::workload::spiffe_id(cluster, stack, service),
                usages: vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
            },
            validity,
        )
    }

    fn sign(
        &self,
        csr_der: &[u8],
        subject: Subject<'_>,
        validity: Duration,
    ) -> Result<IssuedCert, PkiError> {
        if validity < MIN_CERT_EXPIRY {
            return Err(PkiError::ExpiryTooShort(validity));
        }
        if validity > MAX_CERT_EXPIRY {
            return Err(PkiError::ExpiryTooLong(validity));
        }
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
            csr_der.to_vec(),
        ))
        .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        if csr.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::BadCsr(
                "only ECDSA P-256 keys are accepted".to_string(),
            ));
        }
        let mut params = CertificateParams::new(subject.dns).map_err(sign_err)?;
        params
            .subject_alt_names
            .push(SanType::URI(subject.uri.try_into().map_err(sign_err)?));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, subject.cn);
        dn.push(DnType::OrganizationalUnitName, subject.ou);
        dn.push(DnType::OrganizationName, subject.cluster.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = subject.usages;
        let now = SystemTime::now();
        let not_after = now + validity;
        params.not_before = odt(now - CERT_BACKDATE);
        params.not_after = odt(not_after);
        let (serial, serial_hex) = random_serial();
        params.serial_number = Some(serial);
        params.use_authority_key_identifier_extension = true;

        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key).map_err(sign_err)?;
        let cert = params
            .signed_by(&csr.public_key, &issuer)
            .map_err(sign_err)?;
        // X.509 keeps whole seconds: report the time the certificate actually says.
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(
                not_after
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs(),
            );
        Ok(IssuedCert {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            serial: serial_hex,
            not_after,
            key_digest: key_digest(rcgen::PublicKeyData::der_bytes(&csr.public_key)),
        })
    }
}

/// The names and uses the CA writes into a certificate it issues.
struct Subject<'a> {
    cn: &'a str,
    ou: &'a str,
    cluster: &'a ClusterId,
    dns: Vec<String>,
    uri: String,
    usages: Vec<ExtendedKeyUsagePurpose>,
}

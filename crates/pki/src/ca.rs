//! The cluster's root CA and its signing of node certificates.
//!
//! The CA trusts nothing in a CSR but its public key (and the CSR's signature, which
//! proves the requester holds the private key). Subject, SANs, usages and life come from
//! the caller, who takes them from the store.

use crate::{ClusterId, NodeId, PkiError, Role};
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

/// A node certificate just issued.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    /// Serial number, lower-case hex.
    pub serial: String,
    pub not_after: SystemTime,
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

/// Whether the CSR carries the same public key as the certificate (a rejoin proves it
/// holds the expired certificate's key by signing the CSR with it).
pub fn csr_matches_cert(csr_der: &[u8], cert_der: &[u8]) -> Result<bool, PkiError> {
    use x509_parser::prelude::FromDer;
    let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
        csr_der.to_vec(),
    ))
    .map_err(|e| PkiError::BadCsr(e.to_string()))?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der)
        .map_err(|e| PkiError::BadCert(format!("cannot parse certificate: {e}")))?;
    use rcgen::PublicKeyData;
    Ok(csr.public_key.der_bytes() == cert.public_key().subject_public_key.data.as_ref())
}

impl RootCa {
    /// A new self-signed ECDSA P-256 root, valid for `validity` from now.
    pub fn generate(validity: Duration) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(sign_err)?;
        let params = Self::root_params(validity)?;
        let cert = params.self_signed(&key).map_err(sign_err)?;
        Ok(RootCa {
            cert_der: cert.der().clone(),
            key,
        })
    }

    fn root_params(validity: Duration) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(sign_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, ROOT_CN);
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

    /// Issues a node certificate for the public key in `csr_der`.
    pub fn sign_node(
        &self,
        csr_der: &[u8],
        node: &NodeId,
        role: Role,
        cluster: &ClusterId,
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
        let mut params =
            CertificateParams::new(vec![role.ou().to_string(), node.as_str().to_string()])
                .map_err(sign_err)?;
        let spiffe = format!("spiffe://{cluster}/node/{node}");
        params
            .subject_alt_names
            .push(SanType::URI(spiffe.try_into().map_err(sign_err)?));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node.as_str());
        dn.push(DnType::OrganizationalUnitName, role.ou());
        dn.push(DnType::OrganizationName, cluster.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
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
        })
    }
}

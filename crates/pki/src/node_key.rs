//! A node's own key pair. It never leaves the node: only a CSR does.

use crate::PkiError;
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};

pub struct NodeKey {
    key: KeyPair,
}

impl NodeKey {
    pub fn generate() -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| PkiError::Signing(e.to_string()))?;
        Ok(NodeKey { key })
    }
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(pem).map_err(|e| PkiError::BadKey(e.to_string()))?;
        Ok(NodeKey { key })
    }
    /// PKCS#8 PEM, to be written with [`crate::write_private`].
    pub fn to_pem(&self) -> String {
        self.key.serialize_pem()
    }
    pub fn pkcs8_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }
    /// A CSR that carries only the public key: the CA decides every name.
    pub fn csr_der(&self) -> Result<Vec<u8>, PkiError> {
        let params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| PkiError::Signing(e.to_string()))?;
        let csr = params
            .serialize_request(&self.key)
            .map_err(|e| PkiError::Signing(e.to_string()))?;
        Ok(csr.der().to_vec())
    }
}

use thiserror::Error;

/// Everything that can go wrong with keys, certificates and tokens. Messages name the
/// offending value and, where there is one, the fix.
#[derive(Debug, Error)]
pub enum PkiError {
    #[error("malformed join token: {0}; a token looks like SHOAL-1-<50 chars>-<25 chars>: copy it again from 'shoal join-token worker' on a manager")]
    MalformedToken(String),
    #[error("malformed enrollment token: {0}; a token looks like SHOAL-USER-1-<50 chars>-<25 chars>: copy it again from 'shoal user create' or ask an administrator for a new one ('shoal user token NAME')")]
    MalformedEnrollmentToken(String),
    #[error("invalid certificate signing request: {0}")]
    BadCsr(String),
    #[error("certificate is not a valid shoal node certificate: {0}")]
    BadCert(String),
    #[error("certificate is not a valid shoal user certificate: {0}")]
    BadUserCert(String),
    #[error("invalid user name {0:?}: a name is a lower-case letter, then up to 62 lower-case letters, digits, '.', '_' or '-'")]
    BadUserName(String),
    #[error("certificate does not belong to this cluster: {0}")]
    ForeignCert(String),
    #[error("cannot parse private key: {0}")]
    BadKey(String),
    #[error("certificate expiry {0:?} is below the minimum of 1 minute")]
    ExpiryTooShort(std::time::Duration),
    #[error("certificate expiry {0:?} is above the maximum of 20 years (the root CA's life)")]
    ExpiryTooLong(std::time::Duration),
    #[error("unusable root CA: {0}")]
    BadRoot(String),
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

//! Tokens that pin the cluster's CA: join tokens `SHOAL-1-<digest>-<secret>` for nodes,
//! enrollment tokens `SHOAL-USER-1-<digest>-<secret>` for users (`shoal login`).
//!
//! The digest (SHA-256 of the root CA certificate, base36, 50 characters) lets a joining
//! node or a user's machine pin the CA before it trusts anything the manager says; the
//! secret (128 random bits, base36, 25 characters) proves to the manager that the
//! holder was invited.

use crate::id::{base36_encode, ID_LEN};
use crate::PkiError;
use rand::RngCore;
use std::fmt;
use subtle::ConstantTimeEq;

pub const TOKEN_PREFIX: &str = "SHOAL-1-";
pub const ENROLLMENT_PREFIX: &str = "SHOAL-USER-1-";
/// 36^50 > 2^256: a SHA-256 digest always fits in 50 base36 characters.
pub(crate) const DIGEST_LEN: usize = 50;

/// The two parts every token has.
#[derive(Clone)]
struct Pinned {
    digest: String,
    secret: String,
}

impl Pinned {
    fn generate(ca_digest: &str) -> Self {
        let mut b = [0u8; 16];
        rand::rng().fill_bytes(&mut b);
        Pinned {
            digest: ca_digest.to_string(),
            secret: base36_encode(&b, ID_LEN),
        }
    }

    /// `s` without `prefix`, split and checked; errors say what is wrong.
    fn parse(s: &str, prefix: &str, other: (&str, &str)) -> Result<Self, String> {
        let s = s.trim();
        let Some(rest) = s.strip_prefix(prefix) else {
            if s.starts_with(other.0) {
                return Err(other.1.to_string());
            }
            return Err(format!("it does not start with {prefix}"));
        };
        let (digest, secret) = rest
            .split_once('-')
            .ok_or("it has no '-' between digest and secret")?;
        let base36 = |p: &str| {
            p.bytes()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
        };
        if digest.len() != DIGEST_LEN || !base36(digest) {
            return Err(format!(
                "its CA digest has {} characters, expected {DIGEST_LEN} base36 characters",
                digest.len()
            ));
        }
        if secret.len() != ID_LEN || !base36(secret) {
            return Err(format!(
                "its secret has {} characters, expected {ID_LEN} base36 characters",
                secret.len()
            ));
        }
        Ok(Pinned {
            digest: digest.to_string(),
            secret: secret.to_string(),
        })
    }
}

/// A parsed join token. `Debug` never shows the secret.
#[derive(Clone)]
pub struct JoinToken(Pinned);

impl JoinToken {
    /// A new token for the CA whose digest is given, with a fresh secret.
    pub fn generate(ca_digest: &str) -> Self {
        JoinToken(Pinned::generate(ca_digest))
    }

    pub fn parse(s: &str) -> Result<Self, PkiError> {
        Pinned::parse(
            s,
            TOKEN_PREFIX,
            (
                ENROLLMENT_PREFIX,
                "this is a user's enrollment token: use it with 'shoal login --token TOKEN MANAGER'",
            ),
        )
        .map(JoinToken)
        .map_err(PkiError::MalformedToken)
    }

    /// The CA digest this token pins.
    pub fn ca_digest(&self) -> &str {
        &self.0.digest
    }

    /// Whether `other` is the same token, compared in constant time over the whole string.
    pub fn matches(&self, other: &JoinToken) -> bool {
        let a = self.to_string();
        let b = other.to_string();
        a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
    }

    /// Whether the secret part equals `other`'s, in constant time (the digest may differ).
    pub fn secret_matches(&self, other: &JoinToken) -> bool {
        bool::from(self.0.secret.as_bytes().ct_eq(other.0.secret.as_bytes()))
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}{}-{}", self.0.digest, self.0.secret)
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({TOKEN_PREFIX}{}-<redacted>)", self.0.digest)
    }
}

/// A user's one-time enrollment token, for `shoal login`. `Debug` never shows the
/// secret; the manager keeps only its [`EnrollmentToken::secret_sha256`].
#[derive(Clone)]
pub struct EnrollmentToken(Pinned);

impl EnrollmentToken {
    /// A new token for the CA whose digest is given, with a fresh secret.
    pub fn generate(ca_digest: &str) -> Self {
        EnrollmentToken(Pinned::generate(ca_digest))
    }

    pub fn parse(s: &str) -> Result<Self, PkiError> {
        Pinned::parse(
            s,
            ENROLLMENT_PREFIX,
            (
                TOKEN_PREFIX,
                "this is a join token, for 'shoal join' on a machine that becomes a node",
            ),
        )
        .map(EnrollmentToken)
        .map_err(PkiError::MalformedEnrollmentToken)
    }

    /// The CA digest this token pins.
    pub fn ca_digest(&self) -> &str {
        &self.0.digest
    }

    /// SHA-256 (hex) of the secret: what a manager stores and compares.
    pub fn secret_sha256(&self) -> String {
        use sha2::{Digest, Sha256};
        Sha256::digest(self.0.secret.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl fmt::Display for EnrollmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ENROLLMENT_PREFIX}{}-{}", self.0.digest, self.0.secret)
    }
}

impl fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "EnrollmentToken({ENROLLMENT_PREFIX}{}-<redacted>)",
            self.0.digest
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn digest() -> String {
        crate::cert_digest(b"some certificate")
    }

    #[test]
    fn token_roundtrips() {
        let t = JoinToken::generate(&digest());
        let s = t.to_string();
        assert!(s.starts_with("SHOAL-1-"));
        assert_eq!(s.len(), 8 + 50 + 1 + 25);
        let p = JoinToken::parse(&s).unwrap();
        assert!(p.matches(&t));
        assert_eq!(p.ca_digest(), digest());
    }

    #[test]
    fn different_secrets_do_not_match() {
        let a = JoinToken::generate(&digest());
        let b = JoinToken::generate(&digest());
        assert!(!a.matches(&b));
        assert!(!a.secret_matches(&b));
    }

    #[test]
    fn garbled_tokens_are_refused_with_reason() {
        let good = JoinToken::generate(&digest()).to_string();
        for (bad, why) in [
            ("hello", "does not start"),
            ("SHOAL-1-abc", "no '-'"),
            ("SHOAL-1-abc-def", "CA digest has 3"),
            (&good[..good.len() - 1], "secret has 24"),
            (&good.replace("SHOAL-1-", "SWMTKN-1-"), "does not start"),
            (&good.to_uppercase(), "base36"),
        ] {
            let err = JoinToken::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn debug_hides_secret() {
        let t = JoinToken::generate(&digest());
        let s = t.to_string();
        let secret = s.rsplit('-').next().unwrap();
        assert!(!format!("{t:?}").contains(secret));
    }

    #[test]
    fn enrollment_tokens_roundtrip_and_are_not_join_tokens() {
        let t = EnrollmentToken::generate(&digest());
        let s = t.to_string();
        assert!(s.starts_with("SHOAL-USER-1-"));
        assert_eq!(s.len(), 13 + 50 + 1 + 25);
        let p = EnrollmentToken::parse(&s).unwrap();
        assert_eq!(p.ca_digest(), digest());
        assert_eq!(p.secret_sha256(), t.secret_sha256());
        assert_ne!(
            EnrollmentToken::generate(&digest()).secret_sha256(),
            t.secret_sha256()
        );
        let secret = s.rsplit('-').next().unwrap();
        assert!(!format!("{t:?}").contains(secret));
        assert!(!t.secret_sha256().contains(secret));

        let err = JoinToken::parse(&s).unwrap_err().to_string();
        assert!(
            err.contains("enrollment token") && err.contains("shoal login"),
            "{err}"
        );
        let join = JoinToken::generate(&digest()).to_string();
        let err = EnrollmentToken::parse(&join).unwrap_err().to_string();
        assert!(
            err.contains("join token") && err.contains("shoal join"),
            "{err}"
        );
        let err = EnrollmentToken::parse(&s[..s.len() - 1])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("secret has 24") && err.contains("shoal user token"),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,120}") {
            let _ = JoinToken::parse(&s);
            let _ = EnrollmentToken::parse(&s);
        }
    }
}

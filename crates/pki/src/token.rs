//! Join tokens: `SHOAL-1-<digest>-<secret>`.
//!
//! The digest (SHA-256 of the root CA certificate, base36, 50 characters) lets a joining
//! node pin the CA before it trusts anything the manager says; the secret (128 random
//! bits, base36, 25 characters) proves to the manager that the joiner was invited.

use crate::id::{base36_encode, ID_LEN};
use crate::PkiError;
use rand::RngCore;
use std::fmt;
use subtle::ConstantTimeEq;

pub const TOKEN_PREFIX: &str = "SHOAL-1-";
/// 36^50 > 2^256: a SHA-256 digest always fits in 50 base36 characters.
pub(crate) const DIGEST_LEN: usize = 50;

/// A parsed join token. `Debug` never shows the secret.
#[derive(Clone)]
pub struct JoinToken {
    digest: String,
    secret: String,
}

impl JoinToken {
    /// A new token for the CA whose digest is given, with a fresh secret.
    pub fn generate(ca_digest: &str) -> Self {
        let mut b = [0u8; 16];
        rand::rng().fill_bytes(&mut b);
        JoinToken {
            digest: ca_digest.to_string(),
            secret: base36_encode(&b, ID_LEN),
        }
    }

    pub fn parse(s: &str) -> Result<Self, PkiError> {
        let s = s.trim();
        let rest = s.strip_prefix(TOKEN_PREFIX).ok_or_else(|| {
            PkiError::MalformedToken(format!("it does not start with {TOKEN_PREFIX}"))
        })?;
        let (digest, secret) = rest.split_once('-').ok_or_else(|| {
            PkiError::MalformedToken("it has no '-' between digest and secret".into())
        })?;
        let base36 = |p: &str| {
            p.bytes()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
        };
        if digest.len() != DIGEST_LEN || !base36(digest) {
            return Err(PkiError::MalformedToken(format!(
                "its CA digest has {} characters, expected {DIGEST_LEN} base36 characters",
                digest.len()
            )));
        }
        if secret.len() != ID_LEN || !base36(secret) {
            return Err(PkiError::MalformedToken(format!(
                "its secret has {} characters, expected {ID_LEN} base36 characters",
                secret.len()
            )));
        }
        Ok(JoinToken {
            digest: digest.to_string(),
            secret: secret.to_string(),
        })
    }

    /// The CA digest this token pins.
    pub fn ca_digest(&self) -> &str {
        &self.digest
    }

    /// Whether `other` is the same token, compared in constant time over the whole string.
    pub fn matches(&self, other: &JoinToken) -> bool {
        let a = self.to_string();
        let b = other.to_string();
        a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
    }

    /// Whether the secret part equals `other`'s, in constant time (the digest may differ).
    pub fn secret_matches(&self, other: &JoinToken) -> bool {
        bool::from(self.secret.as_bytes().ct_eq(other.secret.as_bytes()))
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}{}-{}", self.digest, self.secret)
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({TOKEN_PREFIX}{}-<redacted>)", self.digest)
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

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,120}") {
            let _ = JoinToken::parse(&s);
        }
    }
}

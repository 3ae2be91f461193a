//! The node's WireGuard key pair (X25519). Made on this node the first time it is
//! needed and kept in `<state dir>/network/wg.key` (mode 0600, base64 as `wg` writes
//! keys); only the public half ever leaves the node, in its heartbeats.

use base64::Engine;
use std::path::Path;
use zeroize::Zeroizing;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub struct WgKey {
    secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl WgKey {
    fn from_secret(secret: [u8; 32]) -> WgKey {
        let s = x25519_dalek::StaticSecret::from(secret);
        let public = x25519_dalek::PublicKey::from(&s).to_bytes();
        WgKey {
            secret: Zeroizing::new(s.to_bytes()),
            public,
        }
    }

    /// The key in `path`, or a new one written there. A file that is not a key is kept
    /// beside (`wg.key.damaged`) and replaced: a node's key has no value but to this
    /// node, which announces the new one to its peers.
    pub fn load_or_create(path: &Path) -> Result<WgKey, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => match parse(&text) {
                Some(secret) => return Ok(WgKey::from_secret(secret)),
                None => {
                    let aside = path.with_extension("key.damaged");
                    tracing::warn!(
                        path = %path.display(),
                        kept_as = %aside.display(),
                        "the WireGuard key file is damaged: making a new key"
                    );
                    let _ = std::fs::rename(path, &aside);
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        let key = WgKey::from_secret(secret);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let text = Zeroizing::new(format!("{}\n", B64.encode(*key.secret)));
        shoal_pki::write_private(path, text.as_bytes()).map_err(|e| e.to_string())?;
        Ok(key)
    }

    /// The public key, base64.
    pub fn public_b64(&self) -> String {
        B64.encode(self.public)
    }

    /// The private key (for the WireGuard engine only).
    pub fn secret_bytes(&self) -> [u8; 32] {
        *self.secret
    }

    /// The private key, base64 (for the WireGuard engine only).
    pub fn secret_b64(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(*self.secret))
    }
}

fn parse(text: &str) -> Option<[u8; 32]> {
    B64.decode(text.trim()).ok()?.try_into().ok()
}

/// Whether `s` is a WireGuard public key as nodes report them: 32 bytes in base64.
pub fn is_public_key(s: &str) -> bool {
    parse(s).is_some() && s.len() == 44
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_kept_private_and_a_damaged_one_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("network/wg.key");
        let a = WgKey::load_or_create(&path).unwrap();
        assert!(is_public_key(&a.public_b64()), "{}", a.public_b64());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = WgKey::load_or_create(&path).unwrap();
        assert_eq!(
            again.public_b64(),
            a.public_b64(),
            "the same key after a restart"
        );
        assert_ne!(*a.secret_b64(), a.public_b64());
        std::fs::write(&path, "garbage").unwrap();
        let b = WgKey::load_or_create(&path).unwrap();
        assert_ne!(b.public_b64(), a.public_b64());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("network/wg.key.damaged")).unwrap(),
            "garbage",
            "the damaged file is kept"
        );
        assert!(!is_public_key("AAAA"));
        assert!(!is_public_key(&"A".repeat(44)) || parse(&"A".repeat(44)).is_some());
    }

    #[test]
    fn the_public_key_matches_wireguards_derivation() {
        // RFC 7748 §6.1: Alice's private and public keys.
        let secret: [u8; 32] =
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap()
                .try_into()
                .unwrap();
        let k = WgKey::from_secret(secret);
        assert_eq!(
            hex::encode(k.public),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }
}

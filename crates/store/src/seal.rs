//! Encryption at rest. Every Raft log entry, object and snapshot the store writes is
//! sealed with this manager's data key: XChaCha20-Poly1305 with a random 24-byte nonce
//! per record, and the record's place (log index, table and id, "snapshot") as
//! associated data, so that a record copied to another place does not open.
//!
//! The data key is kept in `keys.json` beside the database, wrapped by a key-encryption
//! key (KEK): by default a random key in the file `kek` (mode 0600) beside it, or, with
//! autolock, the cluster's unlock key, which is never written to this directory. A
//! store whose data key is wrapped by an unlock key cannot be opened without it.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::StoreError;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
/// The first byte of every sealed record: the format, so it can change later.
const FORMAT: u8 = 1;
/// The human form of an unlock key: this prefix, then the key in base64url, unpadded.
pub const UNLOCK_KEY_PREFIX: &str = "SHOAL-KEY-1-";

const KEYS_FILE: &str = "keys.json";
const KEK_FILE: &str = "kek";

/// A 32-byte symmetric key, wiped from memory when dropped.
#[derive(Clone)]
struct Secret(Zeroizing<[u8; KEY_LEN]>);

impl Secret {
    fn generate() -> Secret {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        rand::rng().fill_bytes(k.as_mut());
        Secret(k)
    }

    fn from_slice(b: &[u8]) -> Option<Secret> {
        let arr: [u8; KEY_LEN] = b.try_into().ok()?;
        Some(Secret(Zeroizing::new(arr)))
    }
}

/// The cluster's unlock key: with autolock, the key-encryption key of every manager's
/// data key and TLS key. Shown to the operator once, as `SHOAL-KEY-1-…`.
#[derive(Clone)]
pub struct UnlockKey(Secret);

impl UnlockKey {
    pub fn generate() -> UnlockKey {
        UnlockKey(Secret::generate())
    }

    /// Reads the human form; surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<UnlockKey, String> {
        let text = text.trim();
        let Some(body) = text.strip_prefix(UNLOCK_KEY_PREFIX) else {
            return Err(format!(
                "an unlock key starts with {UNLOCK_KEY_PREFIX}; print the cluster's key on an unlocked manager with 'shoal unlock-key'"
            ));
        };
        let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| "the unlock key is garbled: check that it was copied whole".to_string())?;
        let key = Secret::from_slice(&raw)
            .map(UnlockKey)
            .ok_or_else(|| "the unlock key is garbled: check that it was copied whole".to_string());
        raw.zeroize();
        key
    }

    /// The human form, `SHOAL-KEY-1-…`.
    pub fn to_human(&self) -> String {
        format!(
            "{UNLOCK_KEY_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0 .0.as_ref())
        )
    }

    /// The raw key, to keep in the replicated store (itself encrypted at rest).
    pub fn as_bytes(&self) -> &[u8] {
        self.0 .0.as_ref()
    }

    pub fn from_bytes(b: &[u8]) -> Option<UnlockKey> {
        Secret::from_slice(b).map(UnlockKey)
    }

    /// Seals `plain` (a node's TLS key on disk) under this key.
    pub fn seal(&self, context: &[u8], plain: &[u8]) -> Vec<u8> {
        Sealer::new(&self.0).seal(context, plain)
    }

    /// Opens what [`UnlockKey::seal`] sealed; `None` for another key or damaged bytes.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        Sealer::new(&self.0).open(context, sealed).ok()
    }
}

impl PartialEq for UnlockKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.as_bytes().ct_eq(other.as_bytes()).into()
    }
}

impl std::fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnlockKey(…)")
    }
}

/// What wraps a store's data key.
#[derive(Clone, Debug)]
pub enum Kek {
    /// A random key kept beside the data key (no autolock).
    Local,
    /// The cluster's unlock key (autolock).
    Unlock(UnlockKey),
}

/// Seals and opens records with one key.
pub(crate) struct Sealer {
    cipher: XChaCha20Poly1305,
}

/// A record that did not open: damaged, or sealed under another key or place.
#[derive(Debug)]
pub(crate) struct Unsealable;

impl Sealer {
    fn new(key: &Secret) -> Sealer {
        Sealer {
            cipher: XChaCha20Poly1305::new(key.0.as_ref().into()),
        }
    }

    pub(crate) fn seal(&self, context: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: context,
                },
            )
            .expect("XChaCha20-Poly1305 encrypts any message below 256 GiB");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(FORMAT);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub(crate) fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Unsealable> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != FORMAT {
            return Err(Unsealable);
        }
        let (nonce, body) = sealed[1..].split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: context,
                },
            )
            .map_err(|_| Unsealable)
    }
}

/// The associated data of a log entry.
pub(crate) fn log_context(index: u64) -> Vec<u8> {
    let mut c = b"log:".to_vec();
    c.extend_from_slice(&index.to_be_bytes());
    c
}

/// The associated data of an object.
pub(crate) fn object_context(table: &str, id: &str) -> Vec<u8> {
    let mut c = Vec::with_capacity(5 + table.len() + id.len());
    c.extend_from_slice(b"obj:");
    c.extend_from_slice(table.as_bytes());
    c.push(0);
    c.extend_from_slice(id.as_bytes());
    c
}

pub(crate) const SNAPSHOT_CONTEXT: &[u8] = b"snapshot";
const DATA_KEY_CONTEXT: &[u8] = b"shoal data key";

/// `keys.json`: the wrapped data key and what wraps it.
#[derive(Serialize, Deserialize)]
struct KeysFile {
    /// "local" or "unlock".
    kek: String,
    /// The sealed data key, base64url.
    wrapped: String,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { context, source }
}

/// Writes a key file: 0600, atomically and durably (the project's one way to do it).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    shoal_pki::write_private(path, bytes).map_err(|e| match e {
        shoal_pki::PkiError::Io { path, source } => StoreError::Io {
            context: format!("cannot write {path}"),
            source,
        },
        other => StoreError::Database(other.to_string()),
    })
}

/// The key files of the store in one directory.
pub(crate) struct KeyFiles {
    dir: PathBuf,
}

/// How a store's data key is wrapped, as its `keys.json` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wrapping {
    /// No key file yet (a new store, or one written before encryption at rest).
    None,
    Local,
    Unlock,
}

impl KeyFiles {
    pub(crate) fn new(dir: &Path) -> KeyFiles {
        KeyFiles {
            dir: dir.to_path_buf(),
        }
    }

    fn keys_path(&self) -> PathBuf {
        self.dir.join(KEYS_FILE)
    }

    fn kek_path(&self) -> PathBuf {
        self.dir.join(KEK_FILE)
    }

    fn damaged(&self, what: &str) -> StoreError {
        StoreError::Corrupt(format!(
            "{} is damaged ({what}): without it the store cannot be read. Restore the state directory from a copy, or on another manager run 'shoal backup', then here 'shoal leave --force' and 'shoal init --restore FILE' (or join this node again)",
            self.keys_path().display()
        ))
    }

    fn read(&self) -> Result<Option<KeysFile>, StoreError> {
        let path = self.keys_path();
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(format!("cannot read {}", path.display()))(e)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| self.damaged(&e.to_string()))
    }

    pub(crate) fn wrapping(&self) -> Result<Wrapping, StoreError> {
        Ok(match self.read()?.map(|k| k.kek) {
            None => Wrapping::None,
            Some(k) if k == "unlock" => Wrapping::Unlock,
            Some(_) => Wrapping::Local,
        })
    }

    /// The data key, unwrapped with `kek`. `Ok(None)`: there is no key file yet.
    pub(crate) fn load(&self, kek: &Kek) -> Result<Option<Sealer>, StoreError> {
        Ok(self.data_key(kek)?.map(|dek| Sealer::new(&dek)))
    }

    fn data_key(&self, kek: &Kek) -> Result<Option<Secret>, StoreError> {
        let Some(file) = self.read()? else {
            return Ok(None);
        };
        let wrapped = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&file.wrapped)
            .map_err(|_| self.damaged("the wrapped key is not base64"))?;
        let kek_key = match (file.kek.as_str(), kek) {
            ("unlock", Kek::Unlock(k)) => k.0.clone(),
            ("unlock", Kek::Local) => return Err(StoreError::NeedsUnlock),
            ("local", _) => {
                let path = self.kek_path();
                let raw = Zeroizing::new(
                    std::fs::read(&path).map_err(io(format!("cannot read {}", path.display())))?,
                );
                Secret::from_slice(&raw)
                    .ok_or_else(|| self.damaged("the kek file is not 32 bytes"))?
            }
            (other, _) => return Err(self.damaged(&format!("unknown key wrapping {other:?}"))),
        };
        let dek = Zeroizing::new(
            Sealer::new(&kek_key)
                .open(DATA_KEY_CONTEXT, &wrapped)
                .map_err(|_| match kek {
                    Kek::Unlock(_) if file.kek == "unlock" => StoreError::WrongUnlockKey,
                    _ => self.damaged("the data key does not unwrap"),
                })?,
        );
        Secret::from_slice(&dek)
            .map(Some)
            .ok_or_else(|| self.damaged("the data key is not 32 bytes"))
    }

    /// Makes a new data key, wrapped by `kek`, and returns it.
    pub(crate) fn create(&self, kek: &Kek) -> Result<Sealer, StoreError> {
        let dek = Secret::generate();
        self.wrap(&dek, kek)?;
        Ok(Sealer::new(&dek))
    }

    /// Writes `keys.json` with `dek` wrapped by `kek`: a local KEK is written first, and
    /// a KEK file no longer needed is removed last.
    fn wrap(&self, dek: &Secret, kek: &Kek) -> Result<(), StoreError> {
        let (name, kek_key) = match kek {
            Kek::Unlock(k) => ("unlock", k.0.clone()),
            Kek::Local => {
                let k = Secret::generate();
                write_private(&self.kek_path(), k.0.as_ref())?;
                ("local", k)
            }
        };
        let wrapped = Sealer::new(&kek_key).seal(DATA_KEY_CONTEXT, dek.0.as_ref());
        let file = KeysFile {
            kek: name.to_string(),
            wrapped: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(wrapped),
        };
        let text = serde_json::to_vec_pretty(&file)
            .map_err(|e| StoreError::Database(format!("cannot encode the key file: {e}")))?;
        write_private(&self.keys_path(), &text)?;
        if matches!(kek, Kek::Unlock(_)) {
            match std::fs::remove_file(self.kek_path()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io(format!("cannot remove {}", self.kek_path().display()))(
                        e,
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Re-wraps the data key (unwrapped with `old`) by `new`.
    pub(crate) fn rewrap(&self, old: &Kek, new: &Kek) -> Result<(), StoreError> {
        let dek = self.data_key(old)?.ok_or_else(|| self.damaged("missing"))?;
        self.wrap(&dek, new)
    }
}

/// Whether `key` unlocks the store in `dir` ([`StoreError::WrongUnlockKey`] if not),
/// without opening it.
pub fn check_unlock_key(dir: &Path, key: &UnlockKey) -> Result<(), StoreError> {
    KeyFiles::new(dir)
        .data_key(&Kek::Unlock(key.clone()))
        .map(|_| ())
}

/// How the data key of the store in `dir` is wrapped (whether opening it needs the
/// unlock key), without opening it.
pub fn wrapping(dir: &Path) -> Result<Wrapping, StoreError> {
    KeyFiles::new(dir).wrapping()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_opens_only_with_its_key_and_in_its_place() {
        let a = Sealer::new(&Secret::generate());
        let b = Sealer::new(&Secret::generate());
        let sealed = a.seal(b"log:1", b"hello");
        assert_eq!(a.open(b"log:1", &sealed).unwrap(), b"hello");
        assert!(a.open(b"log:2", &sealed).is_err());
        assert!(b.open(b"log:1", &sealed).is_err());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(a.open(b"log:1", &flipped).is_err());
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
    }

    #[test]
    fn unlock_keys_round_trip_and_garbage_is_refused() {
        let k = UnlockKey::generate();
        let text = k.to_human();
        assert!(text.starts_with("SHOAL-KEY-1-"));
        assert_eq!(UnlockKey::parse(&format!(" {text}\n")).unwrap(), k);
        assert!(UnlockKey::parse("SWMKEY-1-abc")
            .unwrap_err()
            .contains("starts with"));
        assert!(UnlockKey::parse(&text[..text.len() - 3])
            .unwrap_err()
            .contains("garbled"));
    }

    #[test]
    fn the_data_key_survives_rewrapping_and_needs_the_right_unlock_key() {
        let dir = tempfile::tempdir().unwrap();
        let files = KeyFiles::new(dir.path());
        assert_eq!(files.wrapping().unwrap(), Wrapping::None);
        let dek = files.create(&Kek::Local).unwrap();
        let sealed = dek.seal(b"x", b"secret");
        assert_eq!(files.wrapping().unwrap(), Wrapping::Local);

        let unlock = UnlockKey::generate();
        files
            .rewrap(&Kek::Local, &Kek::Unlock(unlock.clone()))
            .unwrap();
        assert!(!dir.path().join(KEK_FILE).exists(), "no key beside it");
        assert!(matches!(
            files.load(&Kek::Local),
            Err(StoreError::NeedsUnlock)
        ));
        assert!(matches!(
            files.load(&Kek::Unlock(UnlockKey::generate())),
            Err(StoreError::WrongUnlockKey)
        ));
        let again = files.load(&Kek::Unlock(unlock.clone())).unwrap().unwrap();
        assert_eq!(again.open(b"x", &sealed).unwrap(), b"secret");

        files.rewrap(&Kek::Unlock(unlock), &Kek::Local).unwrap();
        let local = files.load(&Kek::Local).unwrap().unwrap();
        assert_eq!(local.open(b"x", &sealed).unwrap(), b"secret");

        std::fs::write(dir.path().join(KEYS_FILE), b"{garbage").unwrap();
        let err = files.load(&Kek::Local).err().unwrap().to_string();
        assert!(err.contains("keys.json is damaged"), "{err}");
    }
}

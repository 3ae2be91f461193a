//! Random identifiers: 128 random bits written as 25 lower-case base36 characters, the
//! form swarm mode users know for node IDs.

use rand::RngCore;
use std::fmt;

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
/// Length of a node or cluster ID: 36^25 > 2^128, so 128 random bits always fit.
pub const ID_LEN: usize = 25;

/// Big-endian bytes as base36, left-padded with zeros to `width` characters.
pub fn base36_encode(bytes: &[u8], width: usize) -> String {
    let mut num: Vec<u8> = bytes.to_vec();
    let mut digits = Vec::new();
    while num.iter().any(|&b| b != 0) {
        let mut rem: u32 = 0;
        for b in num.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 36) as u8;
            rem = cur % 36;
        }
        digits.push(ALPHABET[rem as usize]);
    }
    while digits.len() < width {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// A fresh random ID of 128 bits.
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    base36_encode(&b, ID_LEN)
}

fn is_id(s: &str) -> bool {
    s.len() == ID_LEN
        && s.bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
}

macro_rules! id_type {
    ($name:ident, $what:literal) => {
        #[doc = concat!("A ", $what, " ID: 25 base36 characters.")]
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// A new random ID.
            pub fn generate() -> Self {
                Self(random_id())
            }
            /// Checks the form of an ID read from a certificate or the disk.
            pub fn parse(s: &str) -> Result<Self, crate::PkiError> {
                if is_id(s) {
                    Ok(Self(s.to_string()))
                } else {
                    Err(crate::PkiError::BadCert(format!(
                        concat!("{:?} is not a valid ", $what, " ID (25 base36 characters)"),
                        s
                    )))
                }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}
id_type!(NodeId, "node");
id_type!(ClusterId, "cluster");

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_are_25_base36_chars() {
        for _ in 0..100 {
            let id = random_id();
            assert!(is_id(&id), "{id}");
        }
        assert_ne!(random_id(), random_id());
    }

    #[test]
    fn base36_known_values() {
        assert_eq!(base36_encode(&[0], 3), "000");
        assert_eq!(base36_encode(&[35], 1), "z");
        assert_eq!(base36_encode(&[1, 0], 0), "74"); // 256 = 7*36 + 4
        assert_eq!(base36_encode(&[0xff; 16], 25), "f5lxx1zz5pnorynqglhzmsp33");
    }

    proptest! {
        #[test]
        fn base36_roundtrips_through_u128(v: u128) {
            let s = base36_encode(&v.to_be_bytes(), ID_LEN);
            prop_assert_eq!(s.len(), ID_LEN);
            prop_assert_eq!(u128::from_str_radix(&s, 36).ok(), Some(v));
        }
    }
}

//! Serde helper writing object bytes as a hex string in the JSON of log
//! entries and snapshots: half the size of JSON's array of numbers, and still
//! readable when debugging a store by hand.

use serde::{Deserialize, Deserializer, Serializer};

const DIGITS: &[u8; 16] = b"0123456789abcdef";

pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s.serialize_str(&out)
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    decode(&s).map_err(serde::de::Error::custom)
}

fn decode(s: &str) -> Result<Vec<u8>, String> {
    fn nibble(c: u8) -> Result<u8, String> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(format!("invalid hex digit {:?}", char::from(c))),
        }
    }
    let pairs = s.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return Err(format!("hex string has odd length {}", s.len()));
    }
    pairs
        .map(|pair| Ok((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct W(#[serde(with = "super")] Vec<u8>);

    #[test]
    fn bytes_round_trip_and_bad_hex_is_an_error() {
        let w = W(vec![0, 1, 0xab, 0xff, 0x10]);
        let json = serde_json::to_string(&w).expect("serialize");
        assert_eq!(json, "\"0001abff10\"");
        assert_eq!(serde_json::from_str::<W>(&json).expect("deserialize"), w);
        assert!(serde_json::from_str::<W>("\"abc\"").is_err());
        assert!(serde_json::from_str::<W>("\"zz\"").is_err());
    }
}

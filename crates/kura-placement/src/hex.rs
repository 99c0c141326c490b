//! Serde for 32-byte hashes and keys: a lowercase hex string in
//! human-readable formats (JSON: what operators and golden fixtures read),
//! the plain 32 bytes in binary ones (bincode: what Raft stores), exactly as
//! `#[derive]` would write a `[u8; 32]`.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Lowercase hex of a 32-byte value.
pub(crate) fn encode(bytes: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The 32 bytes of a 64-digit hex string (either case), if it is one.
pub(crate) fn decode(text: &str) -> Option<[u8; 32]> {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

pub(crate) fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.serialize_str(&encode(bytes))
    } else {
        bytes.serialize(s)
    }
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    if d.is_human_readable() {
        // `any`, not `str`: the visitor also takes the array of numbers a
        // plain `[u8; 32]` derive would have written.
        d.deserialize_any(HexVisitor)
    } else {
        <[u8; 32]>::deserialize(d)
    }
}

struct HexVisitor;

impl<'de> Visitor<'de> for HexVisitor {
    type Value = [u8; 32];

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("64 hex digits")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        decode(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(i, &self))?;
        }
        if seq.next_element::<u8>()?.is_some() {
            return Err(de::Error::invalid_length(33, &self));
        }
        Ok(out)
    }
}

/// The same for byte strings of any length (`#[serde(with = "crate::hex::bytes")]`).
pub(crate) mod bytes {
    use serde::de::{self, Deserialize, Deserializer};
    use serde::{Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            let mut out = String::with_capacity(bytes.len() * 2);
            for b in bytes {
                out.push_str(&format!("{b:02x}"));
            }
            s.serialize_str(&out)
        } else {
            bytes.serialize(s)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            let digits = text.as_bytes();
            if digits.len() % 2 != 0 {
                return Err(de::Error::custom("an odd number of hex digits"));
            }
            digits
                .chunks_exact(2)
                .map(|pair| {
                    let hi = char::from(pair[0]).to_digit(16);
                    let lo = char::from(pair[1]).to_digit(16);
                    match (hi, lo) {
                        (Some(hi), Some(lo)) => u8::try_from(hi * 16 + lo)
                            .map_err(|_| de::Error::custom("not a hex digit")),
                        _ => Err(de::Error::custom("not a hex digit")),
                    }
                })
                .collect()
        } else {
            Vec::<u8>::deserialize(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::try_from(i * 7 + 3).unwrap();
        }
        let text = encode(&bytes);
        assert_eq!(text.len(), 64);
        assert!(text.starts_with("030a11"));
        assert_eq!(decode(&text), Some(bytes));
        assert_eq!(decode(&text.to_uppercase()), Some(bytes));
        assert_eq!(decode(&text[..62]), None);
        assert_eq!(decode(&format!("{}zz", &text[..62])), None);
        assert_eq!(decode(&format!("{}+1", &text[..62])), None);
    }
}

//! The one binary encoding Kura's internal services and its state machine
//! use for Rust types: bincode with a size limit, so a malformed or hostile
//! payload is refused with an error instead of allocating without bound.

use serde::{Serialize, de::DeserializeOwned};

/// The largest payload any internal message may decode to. Manifests of
/// the largest instances are tens of KiB; Raft batches and snapshot chunks
/// stay below this.
pub const PAYLOAD_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Why a payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("payload codec: {0}")]
pub struct CodecError(#[from] bincode::Error);

fn options() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_limit(PAYLOAD_BYTES_MAX)
        .with_little_endian()
        .with_varint_encoding()
}

/// Encodes `value`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    use bincode::Options;
    Ok(options().serialize(value)?)
}

/// Decodes a `T`, refusing trailing bytes and anything over
/// [`PAYLOAD_BYTES_MAX`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    use bincode::Options;
    Ok(options().reject_trailing_bytes().deserialize(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refuse_garbage() {
        let v = (7u64, String::from("uid"), vec![1u8, 2, 3]);
        let bytes = encode(&v).unwrap();
        let back: (u64, String, Vec<u8>) = decode(&bytes).unwrap();
        assert_eq!(back, v);
        // A length prefix far beyond the limit must fail, not allocate.
        let hostile = [0xffu8; 16];
        assert!(decode::<Vec<u8>>(&hostile).is_err());
        // Trailing bytes are refused.
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode::<(u64, String, Vec<u8>)>(&long).is_err());
    }
}

//! The on-disk and on-wire form of one shard: a fixed-size, versioned,
//! self-checking header followed by the payload. A storage node can verify a
//! shard from its bytes alone (header checksum, payload blake3) without the
//! manifest, which is what the scrubber does; a reader additionally checks the
//! header against what the manifest expects (see `decode`).

use crate::params::{Code, SEGMENT_BYTES_MAX, SHARDS_TOTAL_MAX, shard_len_for};

/// Identifies a Kura shard; also makes a shard recognisable in a hex dump.
pub const SHARD_MAGIC: [u8; 8] = *b"KURASHRD";
/// The header format this code writes. Readers accept every version up to
/// this one; a shard from a newer writer is refused with
/// [`ShardError::UnsupportedVersion`] rather than misread.
pub const SHARD_FORMAT_VERSION: u16 = 1;
/// Size of a version-1 header; the payload starts right after it.
pub const SHARD_HEADER_BYTES: usize = 98;
/// Bytes of the header checksum (a truncated blake3): enough to catch any
/// accidental damage, and the payload has its own full 32-byte hash.
pub const HEADER_CHECKSUM_BYTES: usize = 8;

/// A caller-chosen 32-byte name for the object a shard belongs to.
pub type ObjectKey = [u8; 32];

// Field offsets of the version-1 layout; see `ShardHeader`.
const OFFSET_VERSION: usize = 8;
const OFFSET_CODE: usize = 10;
const OFFSET_DATA_SHARDS: usize = 11;
const OFFSET_PARITY_SHARDS: usize = 12;
const OFFSET_SHARD_INDEX: usize = 13;
const OFFSET_SEGMENT_INDEX: usize = 14;
const OFFSET_OBJECT_KEY: usize = 18;
const OFFSET_SEGMENT_DATA_LEN: usize = 50;
const OFFSET_PAYLOAD_LEN: usize = 54;
const OFFSET_PAYLOAD_BLAKE3: usize = 58;
const OFFSET_CHECKSUM: usize = 90;
const _: () = assert!(OFFSET_CHECKSUM + HEADER_CHECKSUM_BYTES == SHARD_HEADER_BYTES);
const _: () = assert!(OFFSET_PAYLOAD_BLAKE3 + 32 == OFFSET_CHECKSUM);
const _: () = assert!(OFFSET_OBJECT_KEY + 32 == OFFSET_SEGMENT_DATA_LEN);

/// Why shard bytes were refused. Every variant means "do not trust this
/// shard"; readers treat it as missing and reconstruct from others.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("shard is {len} bytes, shorter than the {needed}-byte header")]
    TooShort { len: usize, needed: usize },
    #[error("not a Kura shard: magic is {found:02x?}")]
    BadMagic { found: [u8; 8] },
    #[error("shard format version {found} is not supported (this build reads 1..={supported})")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("shard header checksum mismatch: the header is corrupt")]
    HeaderChecksum,
    #[error("shard header names unknown code id {id}")]
    UnknownCode { id: u8 },
    #[error("shard header is inconsistent: {reason}")]
    InvalidHeader { reason: &'static str },
    #[error("shard payload is {found} bytes but its header says {expected}")]
    PayloadLength { expected: u32, found: usize },
    #[error("shard payload blake3 mismatch: the payload is corrupt")]
    PayloadChecksum,
    #[error("shard {field} is {found}, expected {expected}")]
    Mismatch {
        field: &'static str,
        expected: u64,
        found: u64,
    },
    #[error("shard belongs to another object (object key mismatch)")]
    WrongObject,
    #[error("shard payload blake3 differs from the manifest's")]
    UnexpectedBlake3,
}

/// Metadata of one shard, stored in front of its payload.
///
/// Version-1 layout, little-endian, 98 bytes:
///
/// | offset | size | field |
/// |---:|---:|---|
/// | 0  | 8  | magic `b"KURASHRD"` |
/// | 8  | 2  | format version, u16 (= 1) |
/// | 10 | 1  | code id ([`Code::id`]) |
/// | 11 | 1  | k, data shards |
/// | 12 | 1  | m, parity shards |
/// | 13 | 1  | shard index (0..k data, k..k+m parity) |
/// | 14 | 4  | segment index, u32 |
/// | 18 | 32 | object key |
/// | 50 | 4  | segment data length, u32 (bytes of object data in the segment) |
/// | 54 | 4  | shard payload length, u32 |
/// | 58 | 32 | blake3 of the payload |
/// | 90 | 8  | header checksum: first 8 bytes of blake3 of bytes 0..90 |
///
/// The header names its object by an `object_key` the caller chooses, not by
/// the object's blake3: ingest is streaming with bounded memory, so the
/// whole-object hash is only known after the last segment, long after the
/// first segments' shards were written. The gateway derives the key from
/// tenant, SOP Instance UID and an upload nonce (so shards of a failed or
/// repeated upload never pass for another's); the whole-object blake3 lives
/// in the manifest.
///
/// Later versions may add fields; the magic and version stay at offsets 0
/// and 8 so any version can be recognised before its layout is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardHeader {
    pub code: Code,
    pub data_shards: u8,
    pub parity_shards: u8,
    pub shard_index: u8,
    pub segment_index: u32,
    pub object_key: ObjectKey,
    pub segment_data_len: u32,
    pub payload_len: u32,
    pub payload_blake3: [u8; 32],
}

impl ShardHeader {
    /// The version-1 bytes of this header, checksum included.
    pub fn to_bytes(&self) -> [u8; SHARD_HEADER_BYTES] {
        let mut out = [0u8; SHARD_HEADER_BYTES];
        out[..OFFSET_VERSION].copy_from_slice(&SHARD_MAGIC);
        out[OFFSET_VERSION..OFFSET_CODE].copy_from_slice(&SHARD_FORMAT_VERSION.to_le_bytes());
        out[OFFSET_CODE] = self.code.id();
        out[OFFSET_DATA_SHARDS] = self.data_shards;
        out[OFFSET_PARITY_SHARDS] = self.parity_shards;
        out[OFFSET_SHARD_INDEX] = self.shard_index;
        out[OFFSET_SEGMENT_INDEX..OFFSET_OBJECT_KEY]
            .copy_from_slice(&self.segment_index.to_le_bytes());
        out[OFFSET_OBJECT_KEY..OFFSET_SEGMENT_DATA_LEN].copy_from_slice(&self.object_key);
        out[OFFSET_SEGMENT_DATA_LEN..OFFSET_PAYLOAD_LEN]
            .copy_from_slice(&self.segment_data_len.to_le_bytes());
        out[OFFSET_PAYLOAD_LEN..OFFSET_PAYLOAD_BLAKE3]
            .copy_from_slice(&self.payload_len.to_le_bytes());
        out[OFFSET_PAYLOAD_BLAKE3..OFFSET_CHECKSUM].copy_from_slice(&self.payload_blake3);
        let checksum = header_checksum(&out[..OFFSET_CHECKSUM]);
        out[OFFSET_CHECKSUM..].copy_from_slice(&checksum);
        out
    }

    /// Parses and checks the header at the start of `bytes` (the payload, if
    /// present, is not looked at). Checks magic, version, header checksum and
    /// that the fields are consistent with each other.
    pub fn decode(bytes: &[u8]) -> Result<ShardHeader, ShardError> {
        // Magic and version first: a newer version may have another size.
        if bytes.len() < OFFSET_CODE {
            return Err(ShardError::TooShort {
                len: bytes.len(),
                needed: SHARD_HEADER_BYTES,
            });
        }
        let magic: [u8; 8] = array(bytes, 0);
        if magic != SHARD_MAGIC {
            return Err(ShardError::BadMagic { found: magic });
        }
        let version = u16::from_le_bytes(array(bytes, OFFSET_VERSION));
        if version == 0 || version > SHARD_FORMAT_VERSION {
            return Err(ShardError::UnsupportedVersion {
                found: version,
                supported: SHARD_FORMAT_VERSION,
            });
        }
        if bytes.len() < SHARD_HEADER_BYTES {
            return Err(ShardError::TooShort {
                len: bytes.len(),
                needed: SHARD_HEADER_BYTES,
            });
        }
        let stored: [u8; HEADER_CHECKSUM_BYTES] = array(bytes, OFFSET_CHECKSUM);
        if stored != header_checksum(&bytes[..OFFSET_CHECKSUM]) {
            return Err(ShardError::HeaderChecksum);
        }
        let code = Code::from_id(bytes[OFFSET_CODE]).ok_or(ShardError::UnknownCode {
            id: bytes[OFFSET_CODE],
        })?;
        let header = ShardHeader {
            code,
            data_shards: bytes[OFFSET_DATA_SHARDS],
            parity_shards: bytes[OFFSET_PARITY_SHARDS],
            shard_index: bytes[OFFSET_SHARD_INDEX],
            segment_index: u32::from_le_bytes(array(bytes, OFFSET_SEGMENT_INDEX)),
            object_key: array(bytes, OFFSET_OBJECT_KEY),
            segment_data_len: u32::from_le_bytes(array(bytes, OFFSET_SEGMENT_DATA_LEN)),
            payload_len: u32::from_le_bytes(array(bytes, OFFSET_PAYLOAD_LEN)),
            payload_blake3: array(bytes, OFFSET_PAYLOAD_BLAKE3),
        };
        header.check_consistent()?;
        Ok(header)
    }

    /// Field relations every header written by this crate satisfies. The
    /// checksum only proves the header was not damaged after writing; this
    /// catches a writer that got the fields wrong.
    fn check_consistent(&self) -> Result<(), ShardError> {
        let invalid = |reason| Err(ShardError::InvalidHeader { reason });
        if self.data_shards == 0 || self.parity_shards == 0 {
            return invalid("k and m must be at least 1");
        }
        let total = usize::from(self.data_shards) + usize::from(self.parity_shards);
        if total > SHARDS_TOTAL_MAX {
            return invalid("k + m exceeds the shard limit");
        }
        if usize::from(self.shard_index) >= total {
            return invalid("shard index is not below k + m");
        }
        if self.segment_data_len == 0 || self.segment_data_len > SEGMENT_BYTES_MAX {
            return invalid("segment data length is out of range");
        }
        if self.payload_len != shard_len_for(self.data_shards, self.segment_data_len) {
            return invalid("payload length does not match k and the segment length");
        }
        Ok(())
    }

    /// Whether this is a data shard (index below k) rather than parity.
    pub fn is_data(&self) -> bool {
        self.shard_index < self.data_shards
    }
}

/// One shard: header plus payload, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub header: ShardHeader,
    pub payload: Vec<u8>,
}

impl Shard {
    /// Header bytes followed by the payload: what a storage node stores.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&self.header.to_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Length of [`Shard::encode_to_vec`]'s output.
    pub fn encoded_len(&self) -> usize {
        SHARD_HEADER_BYTES + self.payload.len()
    }

    /// Parses stored shard bytes and checks everything the bytes alone can
    /// prove: magic, version, header checksum, field consistency, payload
    /// length and payload blake3.
    pub fn decode(bytes: &[u8]) -> Result<Shard, ShardError> {
        let header = Shard::verify(bytes)?;
        Ok(Shard {
            header,
            payload: bytes[SHARD_HEADER_BYTES..].to_vec(),
        })
    }

    /// The checks of [`Shard::decode`] without copying the payload (for the
    /// scrubber and the read path). Returns the header; the payload is
    /// `bytes[SHARD_HEADER_BYTES..]`.
    pub fn verify(bytes: &[u8]) -> Result<ShardHeader, ShardError> {
        let header = ShardHeader::decode(bytes)?;
        check_payload(&header, &bytes[SHARD_HEADER_BYTES..])?;
        Ok(header)
    }
}

/// Checks a payload's length and blake3 against its (already decoded) header.
pub(crate) fn check_payload(header: &ShardHeader, payload: &[u8]) -> Result<(), ShardError> {
    check_payload_len(header, payload)?;
    if *blake3::hash(payload).as_bytes() != header.payload_blake3 {
        return Err(ShardError::PayloadChecksum);
    }
    Ok(())
}

/// Checks a payload's length against its header.
pub(crate) fn check_payload_len(header: &ShardHeader, payload: &[u8]) -> Result<(), ShardError> {
    if payload.len() != header.payload_len as usize {
        return Err(ShardError::PayloadLength {
            expected: header.payload_len,
            found: payload.len(),
        });
    }
    Ok(())
}

fn header_checksum(bytes: &[u8]) -> [u8; HEADER_CHECKSUM_BYTES] {
    array(blake3::hash(bytes).as_bytes(), 0)
}

/// `N` bytes of `bytes` from `offset`. Callers check the length first; a
/// short slice here is a bug in this module.
fn array<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[offset..offset + N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_header() -> ShardHeader {
        let payload = vec![0xAB; 128];
        ShardHeader {
            code: Code::ReedSolomonGf8,
            data_shards: 5,
            parity_shards: 4,
            shard_index: 7,
            segment_index: 0x0102_0304,
            object_key: std::array::from_fn(|i| i as u8),
            segment_data_len: 600,
            payload_len: 128,
            payload_blake3: *blake3::hash(&payload).as_bytes(),
        }
    }

    fn sample_shard() -> Shard {
        Shard {
            header: sample_header(),
            payload: vec![0xAB; 128],
        }
    }

    fn from_hex(hex: &str) -> Vec<u8> {
        let digits: Vec<u8> = hex
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .map(|b| match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                _ => panic!("not lowercase hex: {b}"),
            })
            .collect();
        digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect()
    }

    /// Golden bytes of a version-1 header. If this test fails, the on-disk
    /// format changed: bump `SHARD_FORMAT_VERSION`, keep decoding version 1,
    /// and add a new fixture instead of editing this one.
    const GOLDEN_V1_HEADER_HEX: &str = concat!(
        "4b55524153485244", // magic "KURASHRD"
        "0100",             // version 1
        "01",               // code id 1 (GF(2^8))
        "05",               // k = 5
        "04",               // m = 4
        "07",               // shard index 7
        "04030201",         // segment index 0x01020304
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", // object key
        "58020000",         // segment data length 600
        "80000000",         // payload length 128
        "7e32a63cac8073299fcdb8655b3f535799b258b023c301eefcec7218ddb60318", // blake3(128 x 0xab)
        "5bb6f3bf5925c945", // header checksum
    );

    #[test]
    fn golden_v1_header() {
        let golden = from_hex(GOLDEN_V1_HEADER_HEX);
        assert_eq!(golden.len(), SHARD_HEADER_BYTES);
        assert_eq!(sample_header().to_bytes().as_slice(), golden.as_slice());
        assert_eq!(ShardHeader::decode(&golden), Ok(sample_header()));
    }

    #[test]
    fn round_trip() {
        let shard = sample_shard();
        let bytes = shard.encode_to_vec();
        assert_eq!(bytes.len(), shard.encoded_len());
        assert_eq!(Shard::decode(&bytes), Ok(shard.clone()));
        assert_eq!(Shard::verify(&bytes), Ok(shard.header));
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let bytes = sample_shard().encode_to_vec();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(Shard::decode(&bad).is_err(), "flip at byte {i} passed");
        }
    }

    #[test]
    fn truncation_and_extension_are_detected() {
        let bytes = sample_shard().encode_to_vec();
        for len in 0..bytes.len() {
            assert!(Shard::decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Shard::decode(&longer),
            Err(ShardError::PayloadLength {
                expected: 128,
                found: 129
            })
        );
    }

    #[test]
    fn typed_errors() {
        let bytes = sample_shard().encode_to_vec();
        assert_eq!(
            Shard::decode(&bytes[..4]),
            Err(ShardError::TooShort {
                len: 4,
                needed: SHARD_HEADER_BYTES
            })
        );
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(matches!(
            Shard::decode(&bad),
            Err(ShardError::BadMagic { .. })
        ));
        // A future version is refused by version, before its (unknown)
        // layout or checksum is looked at.
        let mut future = bytes[..12].to_vec();
        future[OFFSET_VERSION..OFFSET_CODE].copy_from_slice(&2u16.to_le_bytes());
        assert_eq!(
            Shard::decode(&future),
            Err(ShardError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        );
        let mut bad = bytes.clone();
        bad[OFFSET_SEGMENT_INDEX] ^= 0xFF;
        assert_eq!(Shard::decode(&bad), Err(ShardError::HeaderChecksum));
        let mut bad = bytes.clone();
        bad[SHARD_HEADER_BYTES + 5] ^= 0xFF;
        assert_eq!(Shard::decode(&bad), Err(ShardError::PayloadChecksum));
    }

    type Mutation = fn(&mut ShardHeader);

    #[test]
    fn consistent_checksum_but_bad_fields_are_refused() {
        let cases: [(&str, Mutation); 5] = [
            ("k = 0", |h| h.data_shards = 0),
            ("index >= k+m", |h| h.shard_index = 9),
            ("data len 0", |h| h.segment_data_len = 0),
            ("payload len", |h| h.payload_len = 64),
            ("k+m too big", |h| {
                h.data_shards = 200;
                h.parity_shards = 100;
            }),
        ];
        for (what, mutate) in cases {
            let mut header = sample_header();
            mutate(&mut header);
            assert!(
                matches!(
                    ShardHeader::decode(&header.to_bytes()),
                    Err(ShardError::InvalidHeader { .. })
                ),
                "{what}"
            );
        }
        let mut bytes = sample_header().to_bytes();
        bytes[OFFSET_CODE] = 9;
        let checksum = header_checksum(&bytes[..OFFSET_CHECKSUM]);
        bytes[OFFSET_CHECKSUM..].copy_from_slice(&checksum);
        assert_eq!(
            ShardHeader::decode(&bytes),
            Err(ShardError::UnknownCode { id: 9 })
        );
    }
}

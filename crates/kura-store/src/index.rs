//! The shard index: one RocksDB record per stored shard, saying where its
//! bytes are, how long they are, what they hash to and whether they may be
//! served. The record is the only way to a shard file: a file no record
//! names is never read (see the crate doc on crash safety).
//!
//! Keys are `object key (32) ‖ segment (u32 big-endian) ‖ index (u8)`, so
//! the index iterates in [`ShardId`] order and a listing can resume after
//! any id. Values are a fixed, versioned binary record ([`IndexEntry`]);
//! old versions must keep decoding (golden bytes below).

use kura_proto::shards_client::{ShardId, ShardInfo, ShardState};

/// Bytes of an index key.
pub const KEY_BYTES: usize = 32 + 4 + 1;
/// The record format this code writes; readers accept every version up to it.
pub const ENTRY_FORMAT_VERSION: u8 = 1;
/// Bytes of a version-1 record.
pub const ENTRY_V1_BYTES: usize = 1 + 1 + 8 + 8 + 8 + 32 + 32;

const STATE_OK: u8 = 1;
const STATE_CORRUPT: u8 = 2;

/// The index key of `id`.
pub fn key(id: &ShardId) -> [u8; KEY_BYTES] {
    let mut k = [0u8; KEY_BYTES];
    k[..32].copy_from_slice(&id.object_key);
    k[32..36].copy_from_slice(&id.segment.to_be_bytes());
    k[36] = id.index;
    k
}

/// The id an index key names; `None` for a key of another length (which
/// this code never writes).
pub fn id_of_key(k: &[u8]) -> Option<ShardId> {
    if k.len() != KEY_BYTES {
        return None;
    }
    let mut object_key = [0u8; 32];
    object_key.copy_from_slice(&k[..32]);
    let mut segment = [0u8; 4];
    segment.copy_from_slice(&k[32..36]);
    Some(ShardId {
        object_key,
        segment: u32::from_be_bytes(segment),
        index: k[36],
    })
}

/// What the index records about one shard.
///
/// Version-1 layout, little-endian, 90 bytes:
///
/// | offset | size | field |
/// |---:|---:|---|
/// | 0  | 1  | format version (= 1) |
/// | 1  | 1  | state: 1 ok, 2 corrupt (quarantined) |
/// | 2  | 8  | length of the encoded shard, u64 |
/// | 10 | 8  | file generation, u64 (names the file; see `store`) |
/// | 18 | 8  | stored at, ms since the Unix epoch, i64 |
/// | 26 | 32 | blake3 of the payload (as in the shard header) |
/// | 58 | 32 | blake3 of the shard header bytes |
///
/// The header's blake3 identifies the shard's content: the header carries
/// the payload's blake3 and both are verified before a shard is stored, so
/// two verified shards with the same header bytes have the same bytes. That
/// makes the idempotence check of a put free of a second pass over the
/// payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub state: ShardState,
    pub length: u64,
    pub generation: u64,
    pub stored_at_unix_ms: i64,
    pub payload_blake3: [u8; 32],
    pub header_blake3: [u8; 32],
}

/// Why an index record did not decode: the index itself is damaged or was
/// written by a newer version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error(
        "index record format version {found} is not supported (this build reads 1..={ENTRY_FORMAT_VERSION})"
    )]
    UnsupportedVersion { found: u8 },
    #[error("index record is {len} bytes, version 1 has {ENTRY_V1_BYTES}")]
    Length { len: usize },
    #[error("index record has unknown state {0}")]
    State(u8),
}

impl IndexEntry {
    pub fn to_bytes(self) -> [u8; ENTRY_V1_BYTES] {
        let mut out = [0u8; ENTRY_V1_BYTES];
        out[0] = ENTRY_FORMAT_VERSION;
        out[1] = match self.state {
            ShardState::Ok => STATE_OK,
            ShardState::Corrupt => STATE_CORRUPT,
        };
        out[2..10].copy_from_slice(&self.length.to_le_bytes());
        out[10..18].copy_from_slice(&self.generation.to_le_bytes());
        out[18..26].copy_from_slice(&self.stored_at_unix_ms.to_le_bytes());
        out[26..58].copy_from_slice(&self.payload_blake3);
        out[58..90].copy_from_slice(&self.header_blake3);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EntryError> {
        match bytes.first() {
            Some(&ENTRY_FORMAT_VERSION) => {}
            Some(&found) => return Err(EntryError::UnsupportedVersion { found }),
            None => return Err(EntryError::Length { len: 0 }),
        }
        let bytes: &[u8; ENTRY_V1_BYTES] = bytes
            .try_into()
            .map_err(|_| EntryError::Length { len: bytes.len() })?;
        let state = match bytes[1] {
            STATE_OK => ShardState::Ok,
            STATE_CORRUPT => ShardState::Corrupt,
            other => return Err(EntryError::State(other)),
        };
        Ok(Self {
            state,
            length: u64::from_le_bytes(array(bytes, 2)),
            generation: u64::from_le_bytes(array(bytes, 10)),
            stored_at_unix_ms: i64::from_le_bytes(array(bytes, 18)),
            payload_blake3: array(bytes, 26),
            header_blake3: array(bytes, 58),
        })
    }

    pub fn info(&self, id: ShardId) -> ShardInfo {
        ShardInfo {
            id,
            length: self.length,
            payload_blake3: self.payload_blake3,
            state: self.state,
            stored_at_unix_ms: self.stored_at_unix_ms,
        }
    }
}

fn array<const N: usize>(bytes: &[u8; ENTRY_V1_BYTES], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[offset..offset + N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> IndexEntry {
        IndexEntry {
            state: ShardState::Corrupt,
            length: 0x0102_0304,
            generation: 7,
            stored_at_unix_ms: 1_700_000_000_000,
            payload_blake3: [0xAA; 32],
            header_blake3: [0x55; 32],
        }
    }

    /// Golden bytes of a version-1 record. If this fails, the on-disk format
    /// changed: bump `ENTRY_FORMAT_VERSION`, keep decoding version 1, and
    /// add a fixture rather than edit this one.
    const GOLDEN_V1_HEX: &str = concat!(
        "01",               // version
        "02",               // corrupt
        "0403020100000000", // length
        "0700000000000000", // generation
        "0068e5cf8b010000", // stored at 1_700_000_000_000 ms
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "5555555555555555555555555555555555555555555555555555555555555555",
    );

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn golden_v1() {
        assert_eq!(hex(&sample().to_bytes()), GOLDEN_V1_HEX);
        assert_eq!(IndexEntry::decode(&sample().to_bytes()), Ok(sample()));
    }

    #[test]
    fn damaged_records_are_refused() {
        let bytes = sample().to_bytes();
        assert_eq!(
            IndexEntry::decode(&bytes[..10]),
            Err(EntryError::Length { len: 10 })
        );
        assert_eq!(IndexEntry::decode(&[]), Err(EntryError::Length { len: 0 }));
        let mut future = bytes;
        future[0] = 2;
        assert_eq!(
            IndexEntry::decode(&future),
            Err(EntryError::UnsupportedVersion { found: 2 })
        );
        let mut bad = bytes;
        bad[1] = 9;
        assert_eq!(IndexEntry::decode(&bad), Err(EntryError::State(9)));
    }

    #[test]
    fn keys_round_trip_and_sort_like_ids() {
        let a = ShardId {
            object_key: [3; 32],
            segment: 255,
            index: 4,
        };
        let b = ShardId {
            object_key: [3; 32],
            segment: 256,
            index: 0,
        };
        assert_eq!(id_of_key(&key(&a)), Some(a));
        assert!(key(&a) < key(&b) && a < b);
        assert_eq!(id_of_key(&[0; 5]), None);
    }
}

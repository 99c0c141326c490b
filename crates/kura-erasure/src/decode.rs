//! The read and repair side: turn whatever shards of a segment could be
//! fetched back into the segment's bytes (read) or into the full set of k + m
//! shards (repair). Every shard is checked before it is used; one that fails
//! counts as missing and is reported, so the caller can quarantine it and
//! queue repair. With all k data shards good the read is a concatenation; any
//! k good shards are enough otherwise.

use crate::codec::Codec;
use crate::error::ErasureError;
use crate::params::EcParams;
use crate::shard::{
    ObjectKey, SHARD_HEADER_BYTES, Shard, ShardError, ShardHeader, check_payload, check_payload_len,
};

/// What the manifest says a segment is; every shard is checked against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentExpectation {
    /// The object the shards must belong to (their header's object key).
    pub object_key: ObjectKey,
    /// Segment index in the object.
    pub index: u32,
    /// Bytes of object data in the segment.
    pub data_len: u32,
    /// The blake3 of each shard payload (k + m, index order), if known.
    /// With it, a shard that is internally consistent but not the one the
    /// manifest recorded (a stale or misplaced shard) is refused too.
    pub shard_blake3: Option<Vec<[u8; 32]>>,
    /// Whoever handed the shards over already checked each payload against
    /// its header's blake3 (a storage node does on every read) and the
    /// bytes came over an authenticated link or within the process: their
    /// payloads are not hashed again. Headers, their checksums, lengths and
    /// `shard_blake3` are still checked, and rebuilt shards are hashed.
    pub payloads_verified: bool,
}

/// A segment read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedSegment {
    /// The segment's bytes, exactly `data_len` long.
    pub data: Vec<u8>,
    /// Indices of given shards that failed a check, ascending; they were
    /// treated as missing. Missing (`None`) shards are not listed.
    pub bad_shards: Vec<u8>,
    /// Why each of `bad_shards` failed, in the same order.
    pub bad_shard_errors: Vec<ShardError>,
    /// Whether parity was used (a data shard was missing or bad).
    pub reconstructed: bool,
}

/// All k + m shards of a segment, rebuilt where needed: what repair writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconstructedShards {
    /// k + m shards in index order, each with a fresh header.
    pub shards: Vec<Shard>,
    /// Indices of the shards that were rebuilt (missing or bad), ascending.
    pub rebuilt: Vec<u8>,
    /// Indices of given shards that failed a check, ascending.
    pub bad_shards: Vec<u8>,
    /// Why each of `bad_shards` failed, in the same order.
    pub bad_shard_errors: Vec<ShardError>,
}

/// The given shards after checking: good payload slots and the rejects.
struct Checked {
    /// k + m slots: the raw shard bytes of good shards, `None` otherwise.
    good: Vec<Option<Vec<u8>>>,
    /// The decoded headers of the good shards, by slot.
    headers: Vec<Option<ShardHeader>>,
    good_count: usize,
    bad_shards: Vec<u8>,
    bad_shard_errors: Vec<ShardError>,
    shard_len: usize,
}

fn check_expectation(
    params: EcParams,
    expected: &SegmentExpectation,
    slots: usize,
) -> Result<(), ErasureError> {
    let total = params.total_shards();
    if slots != total {
        return Err(ErasureError::ShardSlots {
            expected: total,
            got: slots,
        });
    }
    if expected.data_len == 0 || expected.data_len > params.segment_bytes {
        return Err(ErasureError::InvalidExpectation {
            reason: "data_len must be between 1 and the segment size",
        });
    }
    if expected
        .shard_blake3
        .as_ref()
        .is_some_and(|hashes| hashes.len() != total)
    {
        return Err(ErasureError::InvalidExpectation {
            reason: "shard_blake3 must list k + m hashes",
        });
    }
    Ok(())
}

/// Checks one shard's bytes against the parameters, the expectation and its
/// slot; the cheap header comparisons come before hashing the payload.
fn check_shard(
    params: EcParams,
    expected: &SegmentExpectation,
    slot: usize,
    bytes: &[u8],
) -> Result<ShardHeader, ShardError> {
    let header = ShardHeader::decode(bytes)?;
    let fields: [(&'static str, u64, u64); 6] = [
        ("code id", params.code.id().into(), header.code.id().into()),
        ("k", params.data_shards.into(), header.data_shards.into()),
        (
            "m",
            params.parity_shards.into(),
            header.parity_shards.into(),
        ),
        ("shard index", slot as u64, header.shard_index.into()),
        (
            "segment index",
            expected.index.into(),
            header.segment_index.into(),
        ),
        (
            "segment data length",
            expected.data_len.into(),
            header.segment_data_len.into(),
        ),
    ];
    for (field, expected, found) in fields {
        if expected != found {
            return Err(ShardError::Mismatch {
                field,
                expected,
                found,
            });
        }
    }
    if header.object_key != expected.object_key {
        return Err(ShardError::WrongObject);
    }
    if let Some(hashes) = &expected.shard_blake3
        && hashes.get(slot) != Some(&header.payload_blake3)
    {
        return Err(ShardError::UnexpectedBlake3);
    }
    if expected.payloads_verified {
        check_payload_len(&header, &bytes[SHARD_HEADER_BYTES..])?;
    } else {
        check_payload(&header, &bytes[SHARD_HEADER_BYTES..])?;
    }
    Ok(header)
}

fn check_all(
    params: EcParams,
    expected: &SegmentExpectation,
    shards: Vec<Option<Vec<u8>>>,
) -> Result<Checked, ErasureError> {
    check_expectation(params, expected, shards.len())?;
    let mut checked = Checked {
        good: Vec::with_capacity(shards.len()),
        headers: Vec::with_capacity(shards.len()),
        good_count: 0,
        bad_shards: Vec::new(),
        bad_shard_errors: Vec::new(),
        shard_len: params.shard_len(expected.data_len) as usize,
    };
    for (slot, shard) in shards.into_iter().enumerate() {
        let good = match shard {
            None => None,
            Some(bytes) => match check_shard(params, expected, slot, &bytes) {
                Ok(header) => Some((header, bytes)),
                Err(error) => {
                    // slot < k + m <= 255, checked above.
                    checked.bad_shards.push(slot as u8);
                    checked.bad_shard_errors.push(error);
                    None
                }
            },
        };
        checked.good_count += usize::from(good.is_some());
        let (header, bytes) = good.unzip();
        checked.headers.push(header);
        checked.good.push(bytes);
    }
    let needed = usize::from(params.data_shards);
    if checked.good_count < needed {
        return Err(ErasureError::TooFewShards {
            segment: expected.index,
            good: checked.good_count,
            needed,
            bad: checked.bad_shards.len(),
        });
    }
    Ok(checked)
}

/// Payload views of the good shards, as the codec wants them.
fn payloads(good: &mut [Option<Vec<u8>>]) -> Vec<Option<&mut [u8]>> {
    good.iter_mut()
        .map(|s| s.as_mut().map(|bytes| &mut bytes[SHARD_HEADER_BYTES..]))
        .collect()
}

pub(crate) fn decode_with(
    codec: &mut Codec,
    expected: &SegmentExpectation,
    shards: Vec<Option<Vec<u8>>>,
) -> Result<DecodedSegment, ErasureError> {
    let params = codec.params();
    let mut checked = check_all(params, expected, shards)?;
    let k = usize::from(params.data_shards);
    let data_len = expected.data_len as usize;
    let reconstructed = checked.good[..k].iter().any(Option::is_none);
    let rebuilt = if reconstructed {
        codec.reconstruct(&mut payloads(&mut checked.good), checked.shard_len, false)?
    } else {
        Vec::new()
    };
    // Systematic code: the segment is the data shards joined and cut to
    // length, whether they were read or rebuilt.
    let mut data = Vec::with_capacity(data_len);
    for index in 0..k {
        let payload = match (&checked.good[index], rebuilt.get(index)) {
            (Some(bytes), _) => &bytes[SHARD_HEADER_BYTES..],
            (None, Some(Some(shard))) => shard.as_slice(),
            (None, _) => {
                return Err(ErasureError::Codec {
                    code: params.code,
                    message: format!("data shard {index} was not rebuilt"),
                });
            }
        };
        let take = (data_len - data.len()).min(payload.len());
        data.extend_from_slice(&payload[..take]);
    }
    debug_assert_eq!(data.len(), data_len);
    Ok(DecodedSegment {
        data,
        bad_shards: checked.bad_shards,
        bad_shard_errors: checked.bad_shard_errors,
        reconstructed,
    })
}

pub(crate) fn reconstruct_with(
    codec: &mut Codec,
    expected: &SegmentExpectation,
    shards: Vec<Option<Vec<u8>>>,
) -> Result<ReconstructedShards, ErasureError> {
    let params = codec.params();
    let mut checked = check_all(params, expected, shards)?;
    let missing = checked.good.iter().any(Option::is_none);
    let mut rebuilt_payloads = if missing {
        codec.reconstruct(&mut payloads(&mut checked.good), checked.shard_len, true)?
    } else {
        Vec::new()
    };
    let mut shards = Vec::with_capacity(checked.good.len());
    let mut rebuilt = Vec::new();
    let slots = checked.good.into_iter().zip(checked.headers);
    for (index, (good, header)) in slots.enumerate() {
        let shard_index = index as u8; // index < k + m <= 255
        if let (Some(mut bytes), Some(header)) = (good, header) {
            // A good shard is kept as it came, minus its header bytes
            // (dropped in place); it was fully checked already.
            bytes.drain(..SHARD_HEADER_BYTES);
            shards.push(Shard {
                header,
                payload: bytes,
            });
            continue;
        }
        let Some(payload) = rebuilt_payloads.get_mut(index).and_then(Option::take) else {
            return Err(ErasureError::Codec {
                code: params.code,
                message: format!("shard {index} was not rebuilt"),
            });
        };
        rebuilt.push(shard_index);
        let payload_blake3 = *blake3::hash(&payload).as_bytes();
        if let Some(hashes) = &expected.shard_blake3 {
            // The survivors matched the manifest, so a rebuilt shard must
            // too; if not, the wrong parameters were used: write nothing.
            if hashes.get(index) != Some(&payload_blake3) {
                return Err(ErasureError::RebuiltMismatch {
                    segment: expected.index,
                    shard: shard_index,
                });
            }
        }
        shards.push(Shard {
            header: ShardHeader {
                code: params.code,
                data_shards: params.data_shards,
                parity_shards: params.parity_shards,
                shard_index,
                segment_index: expected.index,
                object_key: expected.object_key,
                segment_data_len: expected.data_len,
                payload_len: checked.shard_len as u32,
                payload_blake3,
            },
            payload,
        });
    }
    Ok(ReconstructedShards {
        shards,
        rebuilt,
        bad_shards: checked.bad_shards,
        bad_shard_errors: checked.bad_shard_errors,
    })
}

//! The public entry points for one segment at a time. [`SegmentCodec`] keeps
//! the Reed-Solomon working state between calls, so a worker that encodes or
//! reconstructs many segments should hold one; the free functions build a
//! fresh one per call for the occasional segment.

use crate::codec::Codec;
use crate::decode::{self, DecodedSegment, ReconstructedShards, SegmentExpectation};
use crate::encode::{self, EncodedSegment};
use crate::error::ErasureError;
use crate::params::EcParams;
use crate::shard::ObjectKey;

/// Encoder and decoder for segments of one parameter set. Not `Sync`: one
/// per thread (it is `Send`).
pub struct SegmentCodec {
    codec: Codec,
}

impl SegmentCodec {
    pub fn new(params: EcParams) -> Result<SegmentCodec, ErasureError> {
        params.validate()?;
        Ok(SegmentCodec {
            codec: Codec::new(params),
        })
    }

    pub fn params(&self) -> EcParams {
        self.codec.params()
    }

    /// See [`encode_segment`].
    pub fn encode(
        &mut self,
        object_key: ObjectKey,
        index: u32,
        data: &[u8],
    ) -> Result<EncodedSegment, ErasureError> {
        encode::encode_with(&mut self.codec, object_key, index, data)
    }

    /// See [`decode_segment`].
    pub fn decode(
        &mut self,
        expected: &SegmentExpectation,
        shards: Vec<Option<Vec<u8>>>,
    ) -> Result<DecodedSegment, ErasureError> {
        decode::decode_with(&mut self.codec, expected, shards)
    }

    /// See [`reconstruct_shards`].
    pub fn reconstruct_shards(
        &mut self,
        expected: &SegmentExpectation,
        shards: Vec<Option<Vec<u8>>>,
    ) -> Result<ReconstructedShards, ErasureError> {
        decode::reconstruct_with(&mut self.codec, expected, shards)
    }
}

/// Encodes `data` (1 to `segment_bytes` bytes) as segment `index` of the
/// object named `object_key`: k data shards (the bytes cut in k, zero-padded)
/// then m parity shards, each with its header and blake3.
pub fn encode_segment(
    params: EcParams,
    object_key: ObjectKey,
    index: u32,
    data: &[u8],
) -> Result<EncodedSegment, ErasureError> {
    SegmentCodec::new(params)?.encode(object_key, index, data)
}

/// Reads a segment back from its shards. `shards` has k + m slots, the raw
/// stored bytes of shard `i` in slot `i` or `None` if it was not fetched.
///
/// Every given shard is checked (header, parameters, segment, object key,
/// expected blake3, payload blake3); one that fails counts as missing and is
/// listed in `bad_shards`. With all k data shards good the data is their
/// concatenation; otherwise any k good shards are decoded. Fewer than k good
/// shards is [`ErasureError::TooFewShards`].
pub fn decode_segment(
    params: EcParams,
    expected: &SegmentExpectation,
    shards: Vec<Option<Vec<u8>>>,
) -> Result<DecodedSegment, ErasureError> {
    SegmentCodec::new(params)?.decode(expected, shards)
}

/// Like [`decode_segment`], but returns all k + m shards, rebuilding every
/// missing or bad one: what repair writes to new holders.
pub fn reconstruct_shards(
    params: EcParams,
    expected: &SegmentExpectation,
    shards: Vec<Option<Vec<u8>>>,
) -> Result<ReconstructedShards, ErasureError> {
    SegmentCodec::new(params)?.reconstruct_shards(expected, shards)
}

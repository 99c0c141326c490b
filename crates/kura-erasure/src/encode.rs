//! The write side: cut an object into segments and each segment into k data
//! shards plus m parity shards. [`ObjectEncoder`] does it as bytes stream in,
//! holding at most one segment of input, and hashes the whole object on the
//! way so ingest reads its input exactly once.

use crate::codec::Codec;
use crate::error::ErasureError;
use crate::params::EcParams;
use crate::shard::{ObjectKey, Shard, ShardHeader};

/// One segment, encoded: k data shards then m parity shards, in index order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedSegment {
    /// Position of the segment in the object, from 0.
    pub index: u32,
    /// Bytes of object data in the segment.
    pub data_len: u32,
    /// k + m shards; `shards[i].header.shard_index == i`.
    pub shards: Vec<Shard>,
}

impl EncodedSegment {
    /// The blake3 of every shard payload in index order: what the manifest
    /// records for the segment.
    pub fn shard_blake3s(&self) -> Vec<[u8; 32]> {
        self.shards
            .iter()
            .map(|s| s.header.payload_blake3)
            .collect()
    }
}

/// The whole object's identity once all of it has been seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectDigest {
    pub blake3: [u8; 32],
    pub len: u64,
}

/// Encodes `data` as segment `index` of an object. `codec` carries the
/// (validated) parameters.
pub(crate) fn encode_with(
    codec: &mut Codec,
    object_key: ObjectKey,
    index: u32,
    data: &[u8],
) -> Result<EncodedSegment, ErasureError> {
    let params = codec.params();
    if data.is_empty() {
        return Err(ErasureError::EmptySegment);
    }
    let data_len = u32::try_from(data.len())
        .ok()
        .filter(|&len| len <= params.segment_bytes)
        .ok_or(ErasureError::SegmentTooLarge {
            len: data.len(),
            max: params.segment_bytes,
        })?;
    let shard_len = params.shard_len(data_len) as usize;
    // Systematic: data shard i is bytes [i * shard_len, (i + 1) * shard_len)
    // of the segment, zero-padded past its end.
    let mut pieces = data.chunks(shard_len);
    let data_shards: Vec<Vec<u8>> = (0..params.data_shards)
        .map(|_| {
            let mut shard = vec![0u8; shard_len];
            if let Some(piece) = pieces.next() {
                shard[..piece.len()].copy_from_slice(piece);
            }
            shard
        })
        .collect();
    debug_assert!(pieces.next().is_none());
    let parity = codec.encode_parity(&data_shards, shard_len)?;
    let shards = data_shards
        .into_iter()
        .chain(parity)
        .zip(0u8..)
        .map(|(payload, shard_index)| Shard {
            header: ShardHeader {
                code: params.code,
                data_shards: params.data_shards,
                parity_shards: params.parity_shards,
                shard_index,
                segment_index: index,
                object_key,
                segment_data_len: data_len,
                payload_len: shard_len as u32,
                payload_blake3: *blake3::hash(&payload).as_bytes(),
            },
            payload,
        })
        .collect();
    Ok(EncodedSegment {
        index,
        data_len,
        shards,
    })
}

/// Streaming encoder for one object: push bytes in any chunk sizes, get
/// segments back as they fill, then `finish` for the tail segment and the
/// object's blake3 and length.
///
/// Memory is bounded by one segment of buffered input (plus the shards of
/// the segments handed back). A 0-byte object yields no segments at all.
/// After an error the encoder must be dropped.
pub struct ObjectEncoder {
    codec: Codec,
    object_key: ObjectKey,
    /// Input of the segment being filled; always shorter than a segment.
    pending: Vec<u8>,
    /// Segments handed out so far; the next one's index.
    segments_done: u64,
    hasher: blake3::Hasher,
    len: u64,
}

impl ObjectEncoder {
    pub fn new(params: EcParams, object_key: ObjectKey) -> Result<ObjectEncoder, ErasureError> {
        params.validate()?;
        Ok(ObjectEncoder {
            codec: Codec::new(params),
            object_key,
            pending: Vec::new(),
            segments_done: 0,
            hasher: blake3::Hasher::new(),
            len: 0,
        })
    }

    pub fn params(&self) -> EcParams {
        self.codec.params()
    }

    /// Bytes pushed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `bytes` and returns every segment that filled up (often none).
    /// Refuses, consuming nothing, bytes that would take the object past
    /// [`EcParams::object_bytes_max`].
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<EncodedSegment>, ErasureError> {
        let params = self.codec.params();
        let max = params.object_bytes_max();
        if self
            .len
            .checked_add(bytes.len() as u64)
            .is_none_or(|total| total > max)
        {
            return Err(ErasureError::ObjectTooLarge {
                max,
                params: params.to_string(),
            });
        }
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;

        let segment_bytes = params.segment_bytes as usize;
        let mut out = Vec::new();
        let mut rest = bytes;
        if !self.pending.is_empty() {
            let take = (segment_bytes - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == segment_bytes {
                let pending = std::mem::take(&mut self.pending);
                out.push(self.encode_next(&pending)?);
                self.pending = pending;
                self.pending.clear();
            }
        }
        // Whole segments straight from the caller's buffer: no copy into
        // `pending`.
        while rest.len() >= segment_bytes {
            let (segment, tail) = rest.split_at(segment_bytes);
            out.push(self.encode_next(segment)?);
            rest = tail;
        }
        if !rest.is_empty() {
            if self.pending.capacity() == 0 {
                self.pending.reserve_exact(segment_bytes);
            }
            self.pending.extend_from_slice(rest);
        }
        Ok(out)
    }

    /// Encodes the tail (a segment shorter than the segment size; `None` if
    /// the object was empty or a multiple of the segment size) and returns
    /// the whole object's blake3 and length.
    pub fn finish(mut self) -> Result<(Option<EncodedSegment>, ObjectDigest), ErasureError> {
        let tail = if self.pending.is_empty() {
            None
        } else {
            let pending = std::mem::take(&mut self.pending);
            Some(self.encode_next(&pending)?)
        };
        let digest = ObjectDigest {
            blake3: *self.hasher.finalize().as_bytes(),
            len: self.len,
        };
        Ok((tail, digest))
    }

    fn encode_next(&mut self, segment: &[u8]) -> Result<EncodedSegment, ErasureError> {
        let params = self.codec.params();
        // push() keeps the object within object_bytes_max, so this holds;
        // checked anyway since a wrong index would overwrite other shards.
        let index =
            u32::try_from(self.segments_done).map_err(|_| ErasureError::ObjectTooLarge {
                max: params.object_bytes_max(),
                params: params.to_string(),
            })?;
        let encoded = encode_with(&mut self.codec, self.object_key, index, segment)?;
        self.segments_done += 1;
        Ok(encoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{Code, SEGMENT_BYTES_MIN};
    use crate::shard::SHARD_HEADER_BYTES;

    fn params(code: Code) -> EcParams {
        EcParams {
            segment_bytes: SEGMENT_BYTES_MIN,
            code,
            ..EcParams::new(4, 2)
        }
    }

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    #[test]
    fn data_shards_are_the_segment_cut_in_k() {
        for code in Code::ALL {
            let data = bytes(1000);
            let mut codec = Codec::new(params(code));
            let seg = encode_with(&mut codec, [7; 32], 3, &data).unwrap();
            assert_eq!(seg.shards.len(), 6);
            assert_eq!((seg.index, seg.data_len), (3, 1000));
            let mut joined: Vec<u8> = seg.shards[..4]
                .iter()
                .flat_map(|s| s.payload.clone())
                .collect();
            assert!(joined[1000..].iter().all(|&b| b == 0), "padding is zeros");
            joined.truncate(1000);
            assert_eq!(joined, data);
            for (i, shard) in seg.shards.iter().enumerate() {
                assert_eq!(shard.header.shard_index as usize, i);
                assert_eq!(shard.header.payload_len, 256);
                assert_eq!(shard.header.object_key, [7; 32]);
                assert_eq!(shard.header.code, code);
                let bytes = shard.encode_to_vec();
                assert_eq!(bytes.len(), SHARD_HEADER_BYTES + 256);
                assert_eq!(&Shard::decode(&bytes).unwrap(), shard);
            }
        }
    }

    #[test]
    fn parity_differs_between_codes() {
        let data = bytes(5000);
        let a = encode_with(
            &mut Codec::new(params(Code::ReedSolomonGf8)),
            [0; 32],
            0,
            &data,
        );
        let b = encode_with(
            &mut Codec::new(params(Code::ReedSolomonGf16)),
            [0; 32],
            0,
            &data,
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.shards[0].payload, b.shards[0].payload);
        assert_ne!(a.shards[4].payload, b.shards[4].payload);
    }

    #[test]
    fn refuses_empty_and_oversized_segments() {
        let mut codec = Codec::new(params(Code::ReedSolomonGf8));
        assert_eq!(
            encode_with(&mut codec, [0; 32], 0, &[]),
            Err(ErasureError::EmptySegment)
        );
        let big = vec![0u8; SEGMENT_BYTES_MIN as usize + 1];
        assert!(matches!(
            encode_with(&mut codec, [0; 32], 0, &big),
            Err(ErasureError::SegmentTooLarge { .. })
        ));
    }

    #[test]
    fn object_encoder_segments_and_digest() {
        let seg = SEGMENT_BYTES_MIN as usize;
        for len in [0, 1, seg - 1, seg, seg + 1, 3 * seg] {
            let data = bytes(len);
            let mut encoder = ObjectEncoder::new(params(Code::ReedSolomonGf8), [1; 32]).unwrap();
            let mut segments = encoder.push(&data).unwrap();
            assert_eq!(encoder.len(), len as u64);
            let (tail, digest) = encoder.finish().unwrap();
            segments.extend(tail);
            assert_eq!(
                segments.len() as u64,
                params(Code::ReedSolomonGf8).segment_count(len as u64)
            );
            assert_eq!(digest.len, len as u64);
            assert_eq!(digest.blake3, *blake3::hash(&data).as_bytes());
            for (i, s) in segments.iter().enumerate() {
                assert_eq!(s.index as usize, i);
                assert_eq!(s.data_len as usize, (len - i * seg).min(seg));
            }
        }
    }

    #[test]
    fn object_encoder_refuses_invalid_params() {
        let bad = EcParams {
            parity_shards: 0,
            ..params(Code::ReedSolomonGf8)
        };
        assert!(matches!(
            ObjectEncoder::new(bad, [0; 32]),
            Err(ErasureError::InvalidParams(_))
        ));
    }
}

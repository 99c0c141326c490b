//! Kura's erasure coding: cut an object into segments, cut each segment into
//! k data shards and compute m parity shards with Reed-Solomon, give every
//! shard a self-checking header with its blake3, and turn any k good shards
//! back into the segment.
//!
//! This crate is pure: no I/O, no async, no clock. The gateway feeds it bytes
//! and stores what it returns; storage nodes use [`Shard::verify`] to scrub.
//!
//! - [`EcParams`] and [`Code`]: the profile, RS(k, m) over segments of a size.
//! - [`ObjectEncoder`]: streaming encode of a whole object, bounded memory,
//!   with the object's blake3; [`encode_segment`] for one segment.
//! - [`decode_segment`] (read) and [`reconstruct_shards`] (repair): check
//!   every shard, then concatenate (healthy) or reconstruct.
//! - [`Shard`] / [`ShardHeader`]: the versioned binary shard format.
//! - [`SegmentCodec`]: the same operations reusing codec state across
//!   segments, for workers that process many.
//!
//! The code is systematic: data shards hold the segment's bytes unchanged,
//! so the healthy read path never runs a decoder.

mod codec;
mod decode;
mod encode;
mod error;
mod params;
mod segment;
mod shard;

pub use decode::{DecodedSegment, ReconstructedShards, SegmentExpectation};
pub use encode::{EncodedSegment, ObjectDigest, ObjectEncoder};
pub use error::ErasureError;
pub use params::{
    Code, DATA_SHARDS_DEFAULT, EcParams, PARITY_SHARDS_DEFAULT, ParamsError, SEGMENT_BYTES_DEFAULT,
    SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, SHARD_ALIGN_BYTES, SHARDS_TOTAL_MAX,
};
pub use segment::{SegmentCodec, decode_segment, encode_segment, reconstruct_shards};
pub use shard::{
    HEADER_CHECKSUM_BYTES, ObjectKey, SHARD_FORMAT_VERSION, SHARD_HEADER_BYTES, SHARD_MAGIC, Shard,
    ShardError, ShardHeader,
};

#[cfg(test)]
mod tests;

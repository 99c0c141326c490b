//! Errors of encoding and decoding segments. Shard-level problems
//! ([`crate::ShardError`]) are not errors of a decode as long as k good shards
//! remain: they are reported in the result so the caller can queue repair.

use crate::params::{Code, ParamsError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErasureError {
    #[error("invalid erasure-code parameters: {0}")]
    InvalidParams(#[from] ParamsError),

    #[error("segment is empty: objects are cut into non-empty segments only")]
    EmptySegment,

    #[error("segment of {len} bytes exceeds the segment size of {max} bytes")]
    SegmentTooLarge { len: usize, max: u32 },

    #[error("object exceeds {max} bytes, the most {params} over its segment size can address")]
    ObjectTooLarge { max: u64, params: String },

    #[error("expected {expected} shard slots (k + m), got {got}")]
    ShardSlots { expected: usize, got: usize },

    #[error("segment expectation is invalid: {reason}")]
    InvalidExpectation { reason: &'static str },

    /// Fewer than k shards of the segment passed their checks: the segment
    /// cannot be read from what was given.
    #[error(
        "segment {segment}: only {good} good shards found, {needed} needed \
         ({bad} failed their checks, the rest were missing)"
    )]
    TooFewShards {
        segment: u32,
        good: usize,
        needed: usize,
        bad: usize,
    },

    /// A rebuilt shard's blake3 differs from the manifest's although every
    /// shard used matched it: wrong parameters or a codec bug. Nothing
    /// rebuilt may be written.
    #[error("segment {segment}: rebuilt shard {shard} does not match the manifest's blake3")]
    RebuiltMismatch { segment: u32, shard: u8 },

    /// The Reed-Solomon library refused an operation. Shards are checked
    /// before they reach it, so this is a bug, not bad input.
    #[error("{code} failed: {message}")]
    Codec { code: Code, message: String },
}

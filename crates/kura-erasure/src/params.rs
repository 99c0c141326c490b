//! Erasure-code parameters: which Reed-Solomon code, how many data (k) and
//! parity (m) shards, and how large a segment is. These travel in the
//! manifest and, in part, in every shard header, so a reader can always tell
//! how a shard was made. The limits are named constants here; `validate()` is
//! the one gate every parameter set passes before any encode or decode.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Smallest allowed segment: below this the per-shard header and per-segment
/// bookkeeping (manifest entries, RPCs) outweigh the payload.
pub const SEGMENT_BYTES_MIN: u32 = 64 * 1024;
/// Largest allowed segment: an encoder holds one segment of input plus its
/// k+m shards in memory, so this bounds memory per in-flight segment.
pub const SEGMENT_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// The default segment: a few MiB keeps the healthy read a handful of large
/// sequential shard reads while bounding the memory of an ingest.
pub const SEGMENT_BYTES_DEFAULT: u32 = 4 * 1024 * 1024;
/// Most shards (k + m) in one segment. The shard index is a `u8` in the
/// header, and GF(2^8) Reed-Solomon cannot exceed 256 shards anyway.
pub const SHARDS_TOTAL_MAX: usize = 255;
/// Shard payload lengths are rounded up to a multiple of this. SIMD kernels of
/// both codes work on 32- or 64-byte blocks, and GF(2^16) needs even lengths;
/// one rule for both codes keeps shard sizes code-independent.
pub const SHARD_ALIGN_BYTES: u32 = 64;
/// Default number of data shards (k): with 3 sites and 3 shards per site,
/// RS(5,4) survives the loss of one whole site plus one more node.
pub const DATA_SHARDS_DEFAULT: u8 = 5;
/// Default number of parity shards (m); see [`DATA_SHARDS_DEFAULT`].
pub const PARITY_SHARDS_DEFAULT: u8 = 4;

const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
const _: () = assert!(SHARD_ALIGN_BYTES.is_multiple_of(2) && SHARD_ALIGN_BYTES.is_power_of_two());
const _: () = assert!(SEGMENT_BYTES_MIN.is_multiple_of(SHARD_ALIGN_BYTES));
// The largest shard (k = 1, a full maximal segment rounded up) must fit the
// header's u32 payload length.
const _: () = assert!((SEGMENT_BYTES_MAX as u64) + (SHARD_ALIGN_BYTES as u64) <= u32::MAX as u64);
const _: () = assert!(SHARDS_TOTAL_MAX <= u8::MAX as usize);

/// Which Reed-Solomon code produces the parity shards.
///
/// The two codes' parity is not interchangeable, so the code is recorded in
/// the manifest and in every shard header (as [`Code::id`]).
///
/// The default is [`Code::ReedSolomonGf8`], chosen from `bench --bin
/// erasure` (figures in `bench/README.md`). The two codes encode at similar
/// speeds (GF(2^16) a little ahead at RS(4,2) and RS(8,4) with 64 KiB shards,
/// GF(2^8) ahead at RS(6,3), RS(5,4) and RS(9,6)), and through
/// `encode_segment` both are bound by blake3 anyway. Reconstruction is where
/// they differ: GF(2^16) pays a large fixed cost per decode, evaluating an
/// error-locator polynomial over the whole 65,536-element field however few
/// shards are missing. Measured single-thread on this project's 2-core AVX2
/// machines, raw GF(2^16) reconstruction ran 5-18x slower than GF(2^8) with
/// m shards lost and 14-60x slower with one lost, at every profile from
/// RS(4,2) to RS(9,6) and at 64 KiB and 1 MiB shards; through
/// `decode_segment` (which also checks blake3) it is still 2-5x slower.
/// Reconstruction is the read path whenever a site is down and the whole of
/// repair, so it decides. GF(2^16)'s one advantage, more than 256 shards, is
/// beyond [`SHARDS_TOTAL_MAX`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    /// Classic Vandermonde-derived Reed-Solomon over GF(2^8), crate
    /// `reed-solomon-erasure` with SIMD kernels.
    #[default]
    ReedSolomonGf8,
    /// Leopard-style FFT Reed-Solomon over GF(2^16), crate
    /// `reed-solomon-simd`.
    ReedSolomonGf16,
}

impl Code {
    /// Every code, in id order.
    pub const ALL: [Code; 2] = [Code::ReedSolomonGf8, Code::ReedSolomonGf16];

    /// The stable byte that names this code in a shard header. Never reuse
    /// or renumber: shards written years ago carry it. 0 is reserved so a
    /// zeroed header never names a code.
    pub const fn id(self) -> u8 {
        match self {
            Code::ReedSolomonGf8 => 1,
            Code::ReedSolomonGf16 => 2,
        }
    }

    /// The code named by a header byte, if any.
    pub const fn from_id(id: u8) -> Option<Code> {
        match id {
            1 => Some(Code::ReedSolomonGf8),
            2 => Some(Code::ReedSolomonGf16),
            _ => None,
        }
    }

    /// A short human name, as in config files.
    pub const fn name(self) -> &'static str {
        match self {
            Code::ReedSolomonGf8 => "reed-solomon-gf8",
            Code::ReedSolomonGf16 => "reed-solomon-gf16",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a parameter set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("data_shards (k) must be at least 1")]
    NoDataShards,
    #[error("parity_shards (m) must be at least 1: without parity a lost shard loses data")]
    NoParityShards,
    #[error("k + m = {total} shards exceeds the limit of {max}")]
    TooManyShards { total: usize, max: usize },
    #[error("segment_bytes = {value} is outside the allowed range {min}..={max}")]
    SegmentBytesOutOfRange { value: u32, min: u32, max: u32 },
    #[error("{code} does not support {data_shards} data with {parity_shards} parity shards")]
    UnsupportedByCode {
        code: Code,
        data_shards: u8,
        parity_shards: u8,
    },
}

/// The erasure-code profile of an object: RS(k, m) over segments of
/// `segment_bytes`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EcParams {
    /// k: shards that carry the segment's bytes (systematic code).
    pub data_shards: u8,
    /// m: parity shards; any m of the k + m shards may be lost.
    pub parity_shards: u8,
    /// Bytes of object data per segment (the last segment may be shorter).
    pub segment_bytes: u32,
    /// The Reed-Solomon code computing parity.
    pub code: Code,
}

impl Default for EcParams {
    fn default() -> Self {
        EcParams {
            data_shards: DATA_SHARDS_DEFAULT,
            parity_shards: PARITY_SHARDS_DEFAULT,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            code: Code::default(),
        }
    }
}

impl EcParams {
    /// RS(k, m) with the default segment size and code.
    pub fn new(data_shards: u8, parity_shards: u8) -> EcParams {
        EcParams {
            data_shards,
            parity_shards,
            ..EcParams::default()
        }
    }

    /// Checks every limit; encode and decode call this first.
    pub fn validate(&self) -> Result<(), ParamsError> {
        if self.data_shards == 0 {
            return Err(ParamsError::NoDataShards);
        }
        if self.parity_shards == 0 {
            return Err(ParamsError::NoParityShards);
        }
        let total = self.total_shards();
        if total > SHARDS_TOTAL_MAX {
            return Err(ParamsError::TooManyShards {
                total,
                max: SHARDS_TOTAL_MAX,
            });
        }
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return Err(ParamsError::SegmentBytesOutOfRange {
                value: self.segment_bytes,
                min: SEGMENT_BYTES_MIN,
                max: SEGMENT_BYTES_MAX,
            });
        }
        let k = usize::from(self.data_shards);
        let m = usize::from(self.parity_shards);
        let supported = match self.code {
            Code::ReedSolomonGf8 => true, // bounded by SHARDS_TOTAL_MAX above
            Code::ReedSolomonGf16 => reed_solomon_simd::ReedSolomonEncoder::supports(k, m),
        };
        if !supported {
            return Err(ParamsError::UnsupportedByCode {
                code: self.code,
                data_shards: self.data_shards,
                parity_shards: self.parity_shards,
            });
        }
        Ok(())
    }

    /// k + m.
    pub fn total_shards(&self) -> usize {
        usize::from(self.data_shards) + usize::from(self.parity_shards)
    }

    /// Payload length of every shard of a segment holding `segment_len`
    /// bytes: the segment cut in k pieces, rounded up to
    /// [`SHARD_ALIGN_BYTES`]. 0 for an empty segment (which is never encoded).
    pub fn shard_len(&self, segment_len: u32) -> u32 {
        shard_len_for(self.data_shards, segment_len)
    }

    /// How many segments an object of `object_len` bytes is cut into; 0 for
    /// an empty object.
    pub fn segment_count(&self, object_len: u64) -> u64 {
        if self.segment_bytes == 0 {
            return 0; // invalid params; validate() refuses them
        }
        object_len.div_ceil(u64::from(self.segment_bytes))
    }

    /// Data length of segment `index` of an object of `object_len` bytes, or
    /// `None` if the object has no such segment.
    pub fn segment_len(&self, object_len: u64, index: u32) -> Option<u32> {
        let start = u64::from(index).checked_mul(u64::from(self.segment_bytes))?;
        if start >= object_len {
            return None;
        }
        let len = (object_len - start).min(u64::from(self.segment_bytes));
        u32::try_from(len).ok()
    }

    /// The largest object these parameters can describe: segment indices are
    /// `u32`. (At the minimum segment size that is still 256 TiB.)
    pub fn object_bytes_max(&self) -> u64 {
        u64::from(self.segment_bytes).saturating_mul(u64::from(u32::MAX) + 1)
    }
}

/// Shard payload length for k data shards over `segment_len` bytes; shared by
/// params and the header check (which knows k but not the segment size).
pub(crate) fn shard_len_for(data_shards: u8, segment_len: u32) -> u32 {
    if data_shards == 0 || segment_len == 0 {
        return 0;
    }
    let piece = u64::from(segment_len).div_ceil(u64::from(data_shards));
    let aligned = piece.div_ceil(u64::from(SHARD_ALIGN_BYTES)) * u64::from(SHARD_ALIGN_BYTES);
    // piece <= u32::MAX, so rounding up adds < SHARD_ALIGN_BYTES: saturate
    // rather than wrap for segment lengths no valid params allow.
    u32::try_from(aligned).unwrap_or(u32::MAX)
}

impl fmt::Display for EcParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RS({},{})", self.data_shards, self.parity_shards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_rs_5_4_valid() {
        let params = EcParams::default();
        assert_eq!(params.to_string(), "RS(5,4)");
        assert_eq!(params.segment_bytes, 4 * 1024 * 1024);
        params.validate().unwrap();
    }

    #[test]
    fn validate_refuses_bad_profiles() {
        let ok = EcParams::new(4, 2);
        assert_eq!(
            EcParams {
                data_shards: 0,
                ..ok
            }
            .validate(),
            Err(ParamsError::NoDataShards)
        );
        assert_eq!(
            EcParams {
                parity_shards: 0,
                ..ok
            }
            .validate(),
            Err(ParamsError::NoParityShards)
        );
        assert_eq!(
            EcParams {
                data_shards: 200,
                parity_shards: 56,
                ..ok
            }
            .validate(),
            Err(ParamsError::TooManyShards {
                total: 256,
                max: 255
            })
        );
        for segment_bytes in [0, SEGMENT_BYTES_MIN - 1, SEGMENT_BYTES_MAX + 1] {
            assert!(matches!(
                EcParams {
                    segment_bytes,
                    ..ok
                }
                .validate(),
                Err(ParamsError::SegmentBytesOutOfRange { .. })
            ));
        }
        for code in Code::ALL {
            EcParams {
                data_shards: 200,
                parity_shards: 55,
                code,
                ..ok
            }
            .validate()
            .unwrap();
        }
    }

    #[test]
    fn shard_len_rounds_to_alignment() {
        let p = EcParams::new(4, 2);
        assert_eq!(p.shard_len(0), 0);
        assert_eq!(p.shard_len(1), 64);
        assert_eq!(p.shard_len(256), 64);
        assert_eq!(p.shard_len(257), 128);
        assert_eq!(p.shard_len(4 * 1024 * 1024), 1024 * 1024);
        let p = EcParams::new(5, 4);
        // 4 MiB / 5 = 838860.8 -> 838861 -> next multiple of 64.
        assert_eq!(p.shard_len(4 * 1024 * 1024), 838_912);
        let p = EcParams::new(1, 1);
        assert_eq!(p.shard_len(SEGMENT_BYTES_MAX), SEGMENT_BYTES_MAX);
    }

    #[test]
    fn segment_arithmetic() {
        let p = EcParams {
            segment_bytes: SEGMENT_BYTES_MIN,
            ..EcParams::new(4, 2)
        };
        let s = u64::from(SEGMENT_BYTES_MIN);
        assert_eq!(p.segment_count(0), 0);
        assert_eq!(p.segment_count(1), 1);
        assert_eq!(p.segment_count(s), 1);
        assert_eq!(p.segment_count(s + 1), 2);
        assert_eq!(p.segment_len(0, 0), None);
        assert_eq!(p.segment_len(s + 1, 0), Some(SEGMENT_BYTES_MIN));
        assert_eq!(p.segment_len(s + 1, 1), Some(1));
        assert_eq!(p.segment_len(s + 1, 2), None);
        assert_eq!(p.segment_len(u64::MAX, u32::MAX), Some(SEGMENT_BYTES_MIN));
        assert_eq!(p.object_bytes_max(), s << 32);
    }

    #[test]
    fn code_ids_are_stable_and_round_trip() {
        // These bytes are on disk in every shard header: never change them.
        assert_eq!(Code::ReedSolomonGf8.id(), 1);
        assert_eq!(Code::ReedSolomonGf16.id(), 2);
        for code in Code::ALL {
            assert_eq!(Code::from_id(code.id()), Some(code));
        }
        assert_eq!(Code::from_id(0), None);
        assert_eq!(Code::from_id(3), None);
    }
}

//! A thin, uniform face over the two Reed-Solomon crates: compute parity from
//! k equal-length data shards, and rebuild missing shards from any k present
//! ones. Everything above this module is code-agnostic. The codec keeps the
//! crates' working state (GF(2^8) matrices, GF(2^16) work buffers) between
//! segments, so one codec per worker avoids re-allocating per call.
//!
//! Callers hand in shards whose count and lengths they built themselves;
//! a mismatch there is a bug (asserted), not bad input.

use std::fmt::Display;

use reed_solomon_erasure::galois_8;
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use crate::error::ErasureError;
use crate::params::{Code, EcParams};

/// Per-code state, created on first use: the healthy read path never needs
/// any of it.
pub(crate) struct Codec {
    params: EcParams,
    gf8: Option<galois_8::ReedSolomon>,
    gf16_encoder: Option<ReedSolomonEncoder>,
    gf16_decoder: Option<ReedSolomonDecoder>,
}

/// Wraps a Reed-Solomon crate's error. With validated parameters and shards
/// built by this crate these do not happen; they are reported, not panicked
/// on, because a panic in a storage process costs more than an error.
fn codec_error(code: Code, error: impl Display) -> ErasureError {
    ErasureError::Codec {
        code,
        message: error.to_string(),
    }
}

impl Codec {
    /// `params` must already be validated.
    pub(crate) fn new(params: EcParams) -> Codec {
        debug_assert!(params.validate().is_ok());
        Codec {
            params,
            gf8: None,
            gf16_encoder: None,
            gf16_decoder: None,
        }
    }

    pub(crate) fn params(&self) -> EcParams {
        self.params
    }

    fn k(&self) -> usize {
        usize::from(self.params.data_shards)
    }

    fn m(&self) -> usize {
        usize::from(self.params.parity_shards)
    }

    fn gf8(&mut self) -> Result<&galois_8::ReedSolomon, ErasureError> {
        let (k, m, code) = (self.k(), self.m(), self.params.code);
        if self.gf8.is_none() {
            self.gf8 = Some(galois_8::ReedSolomon::new(k, m).map_err(|e| codec_error(code, e))?);
        }
        self.gf8
            .as_ref()
            .ok_or_else(|| codec_error(code, "GF(2^8) codec missing after creation"))
    }

    fn gf16_encoder(&mut self, shard_len: usize) -> Result<&mut ReedSolomonEncoder, ErasureError> {
        let (k, m, code) = (self.k(), self.m(), self.params.code);
        match &mut self.gf16_encoder {
            Some(encoder) => encoder.reset(k, m, shard_len),
            None => ReedSolomonEncoder::new(k, m, shard_len).map(|e| {
                self.gf16_encoder = Some(e);
            }),
        }
        .map_err(|e| codec_error(code, e))?;
        self.gf16_encoder
            .as_mut()
            .ok_or_else(|| codec_error(code, "GF(2^16) encoder missing after creation"))
    }

    fn gf16_decoder(&mut self, shard_len: usize) -> Result<&mut ReedSolomonDecoder, ErasureError> {
        let (k, m, code) = (self.k(), self.m(), self.params.code);
        match &mut self.gf16_decoder {
            Some(decoder) => decoder.reset(k, m, shard_len),
            None => ReedSolomonDecoder::new(k, m, shard_len).map(|d| {
                self.gf16_decoder = Some(d);
            }),
        }
        .map_err(|e| codec_error(code, e))?;
        self.gf16_decoder
            .as_mut()
            .ok_or_else(|| codec_error(code, "GF(2^16) decoder missing after creation"))
    }

    /// Parity for `data` (k shards of `shard_len` bytes each): m new shards.
    pub(crate) fn encode_parity<T: AsRef<[u8]>>(
        &mut self,
        data: &[T],
        shard_len: usize,
    ) -> Result<Vec<Vec<u8>>, ErasureError> {
        assert_eq!(data.len(), self.k(), "encode_parity needs exactly k shards");
        assert!(data.iter().all(|s| s.as_ref().len() == shard_len));
        let code = self.params.code;
        match code {
            Code::ReedSolomonGf8 => {
                let mut parity = vec![vec![0u8; shard_len]; self.m()];
                self.gf8()?
                    .encode_sep(data, &mut parity)
                    .map_err(|e| codec_error(code, e))?;
                Ok(parity)
            }
            Code::ReedSolomonGf16 => {
                let encoder = self.gf16_encoder(shard_len)?;
                for shard in data {
                    encoder
                        .add_original_shard(shard)
                        .map_err(|e| codec_error(code, e))?;
                }
                let encoded = encoder.encode().map_err(|e| codec_error(code, e))?;
                Ok(encoded.recovery_iter().map(<[u8]>::to_vec).collect())
            }
        }
    }

    /// Rebuilds missing shards from `present` (k + m slots, `Some(payload)`
    /// for shards known good, each `shard_len` long, at least k of them).
    /// Returns k + m slots: `Some` for each shard rebuilt. Every missing
    /// data shard is rebuilt; missing parity only if `with_parity` (the read
    /// path needs data only; repair needs both).
    pub(crate) fn reconstruct(
        &mut self,
        present: &mut [Option<&mut [u8]>],
        shard_len: usize,
        with_parity: bool,
    ) -> Result<Vec<Option<Vec<u8>>>, ErasureError> {
        let (k, m) = (self.k(), self.m());
        assert_eq!(present.len(), k + m, "reconstruct needs k + m slots");
        assert!(present.iter().flatten().all(|s| s.len() == shard_len));
        assert!(
            present.iter().flatten().count() >= k,
            "reconstruct needs k shards"
        );
        match self.params.code {
            Code::ReedSolomonGf8 => self.gf8_reconstruct(present, shard_len, with_parity),
            Code::ReedSolomonGf16 => self.gf16_reconstruct(present, shard_len, with_parity),
        }
    }

    fn gf8_reconstruct(
        &mut self,
        present: &mut [Option<&mut [u8]>],
        shard_len: usize,
        with_parity: bool,
    ) -> Result<Vec<Option<Vec<u8>>>, ErasureError> {
        let k = self.k();
        let code = self.params.code;
        let mut rebuilt: Vec<Option<Vec<u8>>> = present
            .iter()
            .enumerate()
            .map(|(index, shard)| {
                (shard.is_none() && (index < k || with_parity)).then(|| vec![0u8; shard_len])
            })
            .collect();
        // The crate rebuilds in place over (buffer, is-present) slots: the
        // present shards are the caller's buffers (no copy), the rebuilt ones
        // ours, and missing parity we do not want an empty, untouched slot.
        let mut slots: Vec<(&mut [u8], bool)> = present
            .iter_mut()
            .zip(rebuilt.iter_mut())
            .map(|(shard, buffer)| match (shard, buffer) {
                (Some(payload), _) => (&mut **payload, true),
                (None, Some(buffer)) => (buffer.as_mut_slice(), false),
                (None, None) => (&mut [][..], false),
            })
            .collect();
        let rs = self.gf8()?;
        if with_parity {
            rs.reconstruct(&mut slots)
        } else {
            rs.reconstruct_data(&mut slots)
        }
        .map_err(|e| codec_error(code, e))?;
        Ok(rebuilt)
    }

    fn gf16_reconstruct(
        &mut self,
        present: &mut [Option<&mut [u8]>],
        shard_len: usize,
        with_parity: bool,
    ) -> Result<Vec<Option<Vec<u8>>>, ErasureError> {
        let (k, m, code) = (self.k(), self.m(), self.params.code);
        let mut rebuilt: Vec<Option<Vec<u8>>> = vec![None; k + m];
        if present[..k].iter().any(Option::is_none) {
            let decoder = self.gf16_decoder(shard_len)?;
            // Exactly k shards in: more only adds work.
            for (index, shard) in present
                .iter()
                .enumerate()
                .filter_map(|(i, s)| Some((i, s.as_deref()?)))
                .take(k)
            {
                if index < k {
                    decoder.add_original_shard(index, shard)
                } else {
                    decoder.add_recovery_shard(index - k, shard)
                }
                .map_err(|e| codec_error(code, e))?;
            }
            let decoded = decoder.decode().map_err(|e| codec_error(code, e))?;
            for (index, slot) in rebuilt.iter_mut().enumerate().take(k) {
                if present[index].is_none() {
                    let shard = decoded
                        .restored_original(index)
                        .ok_or_else(|| codec_error(code, "decoder did not restore a data shard"))?;
                    *slot = Some(shard.to_vec());
                }
            }
        }
        let parity_missing = present[k..].iter().any(Option::is_none);
        if with_parity && parity_missing {
            // GF(2^16) decoding restores data only: re-encode for parity.
            let data: Vec<&[u8]> = (0..k)
                .map(|i| match (&present[i], &rebuilt[i]) {
                    (Some(payload), _) => Ok(&**payload),
                    (None, Some(restored)) => Ok(restored.as_slice()),
                    (None, None) => {
                        Err(codec_error(code, "data shard neither present nor restored"))
                    }
                })
                .collect::<Result<_, _>>()?;
            let parity = self.encode_parity(&data, shard_len)?;
            for (j, shard) in parity.into_iter().enumerate() {
                if present[k + j].is_none() {
                    rebuilt[k + j] = Some(shard);
                }
            }
        }
        Ok(rebuilt)
    }
}

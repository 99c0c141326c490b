//! Incremental inflation of a deflated data set (PS3.5 A.5: raw deflate, no
//! zlib header, right after the file meta).
//!
//! A `Read` adapter over `flate2::Decompress` rather than
//! `flate2::read::DeflateDecoder`, because Kura must tell two endings apart
//! that `DeflateDecoder` reports alike: the deflate stream reached its end
//! marker (the data set is complete), or the input ran out first (the
//! instance is truncated, or a prefix needs more bytes). Output is produced
//! only as the walk asks for it, so a prefix inflates only as far as the
//! identifying attributes, and memory stays at two small buffers.

use std::io::{self, Read};

use flate2::{Decompress, FlushDecompress, Status};

/// Compressed bytes read from the source at a time.
const INPUT_CHUNK_BYTES: usize = 32 * 1024;

pub(crate) struct Inflater<R> {
    inner: R,
    state: Decompress,
    input: Vec<u8>,
    /// The unconsumed input is `input[start..end]`.
    start: usize,
    end: usize,
    input_ended: bool,
    finished: bool,
}

impl<R: Read> Inflater<R> {
    pub fn new(inner: R) -> Self {
        Inflater {
            inner,
            state: Decompress::new(false),
            input: vec![0; INPUT_CHUNK_BYTES],
            start: 0,
            end: 0,
            input_ended: false,
            finished: false,
        }
    }

    /// Whether the deflate stream reached its end-of-stream marker.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Compressed bytes consumed so far.
    pub fn compressed_bytes(&self) -> u64 {
        self.state.total_in()
    }

    /// Reads and discards whatever follows the deflate stream; returns how
    /// many bytes that was.
    pub fn drain_trailing(mut self) -> io::Result<u64> {
        let buffered = (self.end - self.start) as u64;
        Ok(buffered + io::copy(&mut self.inner, &mut io::sink())?)
    }

    fn refill(&mut self) -> io::Result<()> {
        loop {
            match self.inner.read(&mut self.input) {
                Ok(0) => {
                    self.input_ended = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.start = 0;
                    self.end = n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl<R: Read> Read for Inflater<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() || self.finished {
            return Ok(0);
        }
        loop {
            if self.start == self.end && !self.input_ended {
                self.refill()?;
            }
            let in_before = self.state.total_in();
            let out_before = self.state.total_out();
            let status = self
                .state
                .decompress(
                    &self.input[self.start..self.end],
                    out,
                    FlushDecompress::None,
                )
                .map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("corrupt deflate stream: {e}"),
                    )
                })?;
            // Both deltas are bounded by the slice lengths given above.
            let consumed = usize::try_from(self.state.total_in() - in_before).unwrap_or(0);
            let produced = usize::try_from(self.state.total_out() - out_before).unwrap_or(0);
            self.start = (self.start + consumed).min(self.end);
            if status == Status::StreamEnd {
                self.finished = true;
            }
            if produced > 0 || self.finished {
                return Ok(produced);
            }
            if self.input_ended {
                // Out of input before the end marker: report end of stream;
                // `finished()` says it was premature.
                return Ok(0);
            }
            if consumed == 0 && self.start < self.end {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "corrupt deflate stream: no progress",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::DeflateEncoder;
    use std::io::Write;

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap_or_else(|e| panic!("{e}"));
        encoder.finish().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn round_trips_and_sees_the_end() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let compressed = deflate(&data);
        let mut inflater = Inflater::new(compressed.as_slice());
        let mut out = Vec::new();
        inflater
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, data);
        assert!(inflater.finished());
    }

    #[test]
    fn a_cut_stream_ends_unfinished() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let compressed = deflate(&data);
        let cut = &compressed[..compressed.len() / 2];
        let mut inflater = Inflater::new(cut);
        let mut out = Vec::new();
        inflater
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!inflater.finished());
        assert!(out.len() < data.len());
        assert_eq!(out, data[..out.len()]);
    }

    #[test]
    fn garbage_is_invalid_data() {
        let mut inflater = Inflater::new(&[0xFFu8; 64][..]);
        let mut out = Vec::new();
        let err = inflater.read_to_end(&mut out).err();
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::InvalidData));
    }
}

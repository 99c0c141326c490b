//! [`validate`]: proof that a complete instance is well-formed to its last
//! byte, in bounded memory.
//!
//! The gateway runs it on a blocking thread over a `Read` fed with the chunks
//! of a Store stream as they arrive, beside hashing and erasure coding. It
//! walks every element, sequence, item and pixel data fragment, keeps no
//! value, and refuses the instance if anything declares more bytes than the
//! stream holds.

use std::io::{self, Cursor, Read};

use serde::Serialize;

use crate::DicomError;
use crate::inflate::Inflater;
use crate::part10::{DataSetEncoding, read_file_meta};
use crate::walk::{Flow, Header, ParseLimits, Source, Syntax, Visitor, Walker, Want};

/// What [`validate`] walked through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Transfer Syntax UID from the file meta.
    pub transfer_syntax_uid: String,
    /// Every byte read from the reader: the whole instance.
    pub instance_bytes: u64,
    /// Bytes of the data set after the file meta; the inflated size for a
    /// deflated transfer syntax.
    pub data_set_bytes: u64,
    /// Data elements at every nesting depth (file meta excluded; items and
    /// delimiters are not elements).
    pub element_count: u64,
    /// Sequence items.
    pub item_count: u64,
    /// Items of encapsulated pixel data, the basic offset table included.
    pub fragment_count: u64,
    /// Value bytes of Pixel Data (7FE0,0010): the native value, or the sum of
    /// its fragments.
    pub pixel_data_bytes: u64,
    /// Deepest sequence nesting (0 without sequences).
    pub nesting_depth_max: u32,
}

/// Reads a complete Part-10 instance from `reader` to its end and checks its
/// structure: the file meta, a supported transfer syntax, and every element,
/// sequence and fragment lying within the bytes present. Values are skipped,
/// never held: memory use does not depend on the instance size.
///
/// An instance that stops exactly between two top-level elements cannot be
/// told from a complete one here; the gateway compares the byte count with
/// the size the client declared.
pub fn validate<R: Read>(reader: R) -> Result<Summary, DicomError> {
    validate_with(reader, ParseLimits::default())
}

/// [`validate`] under `limits` (nesting depth, element count).
pub fn validate_with<R: Read>(reader: R, limits: ParseLimits) -> Result<Summary, DicomError> {
    let mut counting = Counting {
        inner: reader,
        bytes: 0,
    };
    let meta = read_file_meta(&mut Source::new(&mut counting, 0, false), true)?;
    let mut visitor = ValidateVisitor;
    let (stats, data_set_bytes) = {
        let mut rest = Cursor::new(meta.peeked.as_slice()).chain(&mut counting);
        match meta.encoding {
            DataSetEncoding::Plain(syntax) => {
                let src = Source::new(&mut rest, meta.data_set_offset, false);
                let mut walker = Walker::with_limits(src, &mut visitor, limits);
                walker.data_set(syntax)?;
                (walker.stats, walker.pos() - meta.data_set_offset)
            }
            DataSetEncoding::Deflated => {
                let src = Source::new(Inflater::new(&mut rest), 0, true);
                let mut walker = Walker::with_limits(src, &mut visitor, limits);
                walker.data_set(Syntax::EXPLICIT_LE)?;
                let (stats, inflated) = (walker.stats, walker.pos());
                let inflater = walker.into_source().into_inner();
                if !inflater.finished() {
                    return Err(DicomError::DeflateTruncated {
                        offset: meta.data_set_offset + inflater.compressed_bytes(),
                    });
                }
                // Bytes after the deflate stream are not part of the data
                // set; read them so the count covers the whole instance.
                inflater.drain_trailing().map_err(|e| DicomError::Io {
                    message: e.to_string(),
                })?;
                (stats, inflated)
            }
        }
    };
    Ok(Summary {
        transfer_syntax_uid: meta.transfer_syntax_uid,
        instance_bytes: counting.bytes,
        data_set_bytes,
        element_count: stats.elements,
        item_count: stats.items,
        fragment_count: stats.fragments,
        pixel_data_bytes: stats.pixel_data_bytes,
        nesting_depth_max: stats.depth_max,
    })
}

/// Skips every value and walks into every sequence.
struct ValidateVisitor;

impl Visitor for ValidateVisitor {
    fn header(&mut self, _depth: u32, _header: &Header) -> Want {
        Want::Skip
    }

    fn value(&mut self, _header: &Header, _value: &[u8]) -> Flow {
        Flow::Continue
    }

    fn descend_defined_sequences(&self) -> bool {
        true
    }
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

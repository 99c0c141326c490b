//! A streaming walk over the element structure of a data set.
//!
//! Both entry points share it: [`crate::read_identity`] walks the top level of
//! a prefix and stops at the last identifying attribute; [`crate::validate`]
//! walks everything, into every sequence, item and pixel data fragment, to the
//! end of the stream. The walk reads from any `std::io::Read`, keeps only the
//! values a [`Visitor`] asks for (each at most [`CAPTURE_BYTES_MAX`]) and
//! skips all others through one fixed scratch buffer, so memory stays bounded
//! whatever the instance size.
//!
//! Element headers are decoded here rather than with dicom-parser's
//! `StatefulDecoder`: they are a few fixed layouts, and owning the reads lets
//! every short read become a precise [`DicomError::Truncated`] (which element,
//! which offset, how many bytes declared and left) that `read_identity` can
//! turn into [`DicomError::NeedMoreData`]. dicom-core supplies the tag and VR
//! types and the dictionary for implicit VR.

use std::io::{self, Read};

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;
use dicom_dictionary_std::tags::PIXEL_DATA;

use crate::DicomError;

/// Largest value a visitor may capture. Identifying attributes are short (a
/// UID is at most 64 bytes, a name a few hundred); anything longer is broken.
pub const CAPTURE_BYTES_MAX: u32 = 16 * 1024;

/// Size of the buffer that skipped values stream through.
const SKIP_CHUNK_BYTES: usize = 64 * 1024;

/// Deepest sequence nesting accepted by default. Real instances stay
/// under ten; the limit keeps a hostile file from exhausting the stack.
pub const NESTING_DEPTH_MAX: u32 = 64;
/// Data elements accepted by default (items and fragments not counted).
/// Enhanced multi-frame objects with per-frame functional groups reach
/// hundreds of thousands; the limit bounds the work a hostile file causes.
pub const ELEMENTS_MAX: u64 = 2_000_000;

/// What the parser accepts of one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseLimits {
    /// Deepest sequence nesting (levels; at most [`NESTING_DEPTH_MAX`]:
    /// the walker recurses).
    pub nesting_depth: u32,
    /// Most data elements, at every depth.
    pub elements: u64,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            nesting_depth: NESTING_DEPTH_MAX,
            elements: ELEMENTS_MAX,
        }
    }
}

/// Value length that means "undefined, ends with a delimitation item".
pub(crate) const UNDEFINED_LENGTH: u32 = 0xFFFF_FFFF;

pub(crate) const ITEM: Tag = Tag(0xFFFE, 0xE000);
pub(crate) const ITEM_DELIMITATION: Tag = Tag(0xFFFE, 0xE00D);
pub(crate) const SEQUENCE_DELIMITATION: Tag = Tag(0xFFFE, 0xE0DD);

/// How elements are encoded: VR explicit or from the dictionary, byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Syntax {
    pub explicit_vr: bool,
    pub big_endian: bool,
}

impl Syntax {
    pub const EXPLICIT_LE: Syntax = Syntax {
        explicit_vr: true,
        big_endian: false,
    };
    pub const IMPLICIT_LE: Syntax = Syntax {
        explicit_vr: false,
        big_endian: false,
    };

    fn u16(self, bytes: [u8; 2]) -> u16 {
        if self.big_endian {
            u16::from_be_bytes(bytes)
        } else {
            u16::from_le_bytes(bytes)
        }
    }

    fn u32(self, bytes: [u8; 4]) -> u32 {
        if self.big_endian {
            u32::from_be_bytes(bytes)
        } else {
            u32::from_le_bytes(bytes)
        }
    }

    fn tag(self, bytes: [u8; 4]) -> Tag {
        Tag(
            self.u16([bytes[0], bytes[1]]),
            self.u16([bytes[2], bytes[3]]),
        )
    }
}

/// A reader that knows its offset, turns short reads into counts and I/O
/// errors into [`DicomError`]s.
pub(crate) struct Source<R> {
    inner: R,
    /// Offset of the next byte: in the file, or in the inflated data set.
    pos: u64,
    /// Whether `pos` counts inflated bytes (for error messages).
    inflated: bool,
    scratch: Vec<u8>,
}

impl<R: Read> Source<R> {
    pub fn new(inner: R, pos: u64, inflated: bool) -> Self {
        Source {
            inner,
            pos,
            inflated,
            scratch: Vec::new(),
        }
    }

    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Reads until `buf` is full or the stream ends; returns the bytes read.
    pub fn fill(&mut self, buf: &mut [u8]) -> Result<usize, DicomError> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
        self.pos += got as u64;
        Ok(got)
    }

    /// Skips up to `len` bytes; returns how many there were.
    pub fn skip(&mut self, len: u64) -> Result<u64, DicomError> {
        // Grown to the largest value skipped so far, up to SKIP_CHUNK_BYTES:
        // a header parse that skips only short values stays cheap.
        let wanted = usize::try_from(len)
            .unwrap_or(usize::MAX)
            .min(SKIP_CHUNK_BYTES);
        if self.scratch.len() < wanted {
            self.scratch.resize(wanted, 0);
        }
        let mut skipped = 0u64;
        while skipped < len {
            let chunk = usize::try_from(len - skipped)
                .unwrap_or(usize::MAX)
                .min(self.scratch.len());
            let n = match self.inner.read(&mut self.scratch[..chunk]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error(e)),
            };
            skipped += n as u64;
            self.pos += n as u64;
        }
        Ok(skipped)
    }

    fn io_error(&self, e: io::Error) -> DicomError {
        // The inflater reports corrupt compressed data as InvalidData: that is
        // the instance's fault, not the reader's.
        if e.kind() == io::ErrorKind::InvalidData {
            DicomError::Malformed {
                offset: self.pos,
                inflated: self.inflated,
                reason: e.to_string(),
            }
        } else {
            DicomError::Io {
                message: e.to_string(),
            }
        }
    }

    pub fn truncated(
        &self,
        what: &'static str,
        tag: Option<Tag>,
        offset: u64,
        declared: u64,
        available: u64,
    ) -> DicomError {
        DicomError::Truncated {
            what,
            tag,
            offset,
            inflated: self.inflated,
            declared,
            available,
        }
    }

    pub fn malformed(&self, offset: u64, reason: String) -> DicomError {
        DicomError::Malformed {
            offset,
            inflated: self.inflated,
            reason,
        }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// One element (or item, or delimiter) header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub tag: Tag,
    pub vr: VR,
    pub len: u32,
    /// Offset of the first value byte.
    pub value_offset: u64,
}

impl Header {
    pub fn is_undefined_length(&self) -> bool {
        self.len == UNDEFINED_LENGTH
    }
}

/// VRs whose explicit-VR header has two reserved bytes and a 32-bit length
/// (PS3.5 7.1.2); all others have a 16-bit length.
fn has_long_length(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB
            | VR::OD
            | VR::OF
            | VR::OL
            | VR::OV
            | VR::OW
            | VR::SQ
            | VR::SV
            | VR::UC
            | VR::UN
            | VR::UR
            | VR::UT
            | VR::UV
    )
}

/// The VR named by the two bytes of an explicit-VR header. Same answer as
/// dicom-core's `VR::from_binary`, which goes through UTF-8 and string
/// parsing and took a fifth of a header parse.
fn vr_from_bytes(bytes: [u8; 2]) -> Option<VR> {
    Some(match &bytes {
        b"AE" => VR::AE,
        b"AS" => VR::AS,
        b"AT" => VR::AT,
        b"CS" => VR::CS,
        b"DA" => VR::DA,
        b"DS" => VR::DS,
        b"DT" => VR::DT,
        b"FD" => VR::FD,
        b"FL" => VR::FL,
        b"IS" => VR::IS,
        b"LO" => VR::LO,
        b"LT" => VR::LT,
        b"OB" => VR::OB,
        b"OD" => VR::OD,
        b"OF" => VR::OF,
        b"OL" => VR::OL,
        b"OV" => VR::OV,
        b"OW" => VR::OW,
        b"PN" => VR::PN,
        b"SH" => VR::SH,
        b"SL" => VR::SL,
        b"SQ" => VR::SQ,
        b"SS" => VR::SS,
        b"ST" => VR::ST,
        b"SV" => VR::SV,
        b"TM" => VR::TM,
        b"UC" => VR::UC,
        b"UI" => VR::UI,
        b"UL" => VR::UL,
        b"UN" => VR::UN,
        b"UR" => VR::UR,
        b"US" => VR::US,
        b"UT" => VR::UT,
        b"UV" => VR::UV,
        _ => return None,
    })
}

/// The VR of an implicit-VR element, from the standard dictionary; UN when
/// unknown (private tags). Only "is it SQ?" matters to the walk.
fn dictionary_vr(tag: Tag) -> VR {
    if tag.element() == 0 {
        return VR::UL; // group length
    }
    StandardDataDictionary
        .by_tag(tag)
        .map_or(VR::UN, |entry| entry.vr().relaxed())
}

/// Reads an element header whose first four bytes (the tag) are already in
/// `tag_bytes`; `offset` is where those began.
pub(crate) fn finish_header<R: Read>(
    src: &mut Source<R>,
    syntax: Syntax,
    tag_bytes: [u8; 4],
    offset: u64,
) -> Result<Header, DicomError> {
    let tag = syntax.tag(tag_bytes);
    let mut buf = [0u8; 4];
    let got = src.fill(&mut buf)?;
    if got < buf.len() {
        return Err(src.truncated("element header", Some(tag), offset, 8, 4 + got as u64));
    }
    // Items and delimiters carry no VR, in every transfer syntax.
    if tag.group() == 0xFFFE || !syntax.explicit_vr {
        let vr = if tag.group() == 0xFFFE {
            VR::UN
        } else {
            dictionary_vr(tag)
        };
        return Ok(Header {
            tag,
            vr,
            len: syntax.u32(buf),
            value_offset: src.pos(),
        });
    }
    let Some(vr) = vr_from_bytes([buf[0], buf[1]]) else {
        return Err(src.malformed(
            offset,
            format!(
                "element {tag} has an unknown VR (bytes {:02X} {:02X})",
                buf[0], buf[1]
            ),
        ));
    };
    if !has_long_length(vr) {
        return Ok(Header {
            tag,
            vr,
            len: u32::from(syntax.u16([buf[2], buf[3]])),
            value_offset: src.pos(),
        });
    }
    let mut len = [0u8; 4];
    let got = src.fill(&mut len)?;
    if got < len.len() {
        return Err(src.truncated("element header", Some(tag), offset, 12, 8 + got as u64));
    }
    Ok(Header {
        tag,
        vr,
        len: syntax.u32(len),
        value_offset: src.pos(),
    })
}

/// What a visitor wants done with an element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// Skip (or, for sequences, walk) the value.
    Skip,
    /// Hand the value to [`Visitor::value`].
    Capture,
    /// End the walk before this element's value.
    Stop,
}

/// Whether the walk goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// The container (for the top level: the stream) ended normally.
    Continue,
    /// The visitor asked to stop.
    Stop,
}

/// Decides, element by element, what the walk keeps.
pub(crate) trait Visitor {
    /// Called for every data element header; `depth` is 0 at the top level.
    fn header(&mut self, depth: u32, header: &Header) -> Want;
    /// The value of an element for which `header` answered [`Want::Capture`].
    fn value(&mut self, header: &Header, value: &[u8]) -> Flow;
    /// Whether defined-length sequences are walked item by item (checking
    /// their structure) or skipped whole.
    fn descend_defined_sequences(&self) -> bool;
}

/// Counts of what the walk went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    pub elements: u64,
    pub items: u64,
    pub fragments: u64,
    pub pixel_data_bytes: u64,
    pub depth_max: u32,
}

/// Where the elements of a container end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    /// The top level: the end of the stream.
    Eof,
    /// A defined length: at this offset.
    At(u64),
    /// An item of undefined length: at an item delimitation item.
    ItemDelimiter,
    /// A sequence of undefined length: at a sequence delimitation item.
    SequenceDelimiter,
}

pub(crate) struct Walker<'v, R, V> {
    src: Source<R>,
    visitor: &'v mut V,
    pub stats: Stats,
    limits: ParseLimits,
}

impl<'v, R: Read, V: Visitor> Walker<'v, R, V> {
    pub fn new(src: Source<R>, visitor: &'v mut V) -> Self {
        Self::with_limits(src, visitor, ParseLimits::default())
    }

    pub fn with_limits(src: Source<R>, visitor: &'v mut V, limits: ParseLimits) -> Self {
        Walker {
            src,
            visitor,
            stats: Stats::default(),
            limits: ParseLimits {
                nesting_depth: limits.nesting_depth.min(NESTING_DEPTH_MAX),
                ..limits
            },
        }
    }

    pub fn pos(&self) -> u64 {
        self.src.pos()
    }

    pub fn into_source(self) -> Source<R> {
        self.src
    }

    /// Walks the top-level data set to the end of the stream (or until the
    /// visitor stops).
    pub fn data_set(&mut self, syntax: Syntax) -> Result<Flow, DicomError> {
        self.elements(0, syntax, Bound::Eof, None)
    }

    /// Reads the next header, or `None` at a clean end of stream.
    fn next_header(
        &mut self,
        syntax: Syntax,
        parent: Option<Tag>,
    ) -> Result<Option<Header>, DicomError> {
        let offset = self.src.pos();
        let mut tag = [0u8; 4];
        let got = self.src.fill(&mut tag)?;
        if got == 0 {
            return Ok(None);
        }
        if got < tag.len() {
            return Err(self
                .src
                .truncated("element header", parent, offset, 8, got as u64));
        }
        finish_header(&mut self.src, syntax, tag, offset).map(Some)
    }

    fn elements(
        &mut self,
        depth: u32,
        syntax: Syntax,
        bound: Bound,
        parent: Option<Tag>,
    ) -> Result<Flow, DicomError> {
        loop {
            let start = self.src.pos();
            if let Bound::At(end) = bound
                && start == end
            {
                return Ok(Flow::Continue);
            }
            let Some(header) = self.next_header(syntax, parent)? else {
                return match bound {
                    Bound::Eof => Ok(Flow::Continue),
                    Bound::At(end) => {
                        Err(self
                            .src
                            .truncated("item", parent, start, end.saturating_sub(start), 0))
                    }
                    Bound::ItemDelimiter | Bound::SequenceDelimiter => {
                        Err(self
                            .src
                            .truncated("item delimitation item", parent, start, 8, 0))
                    }
                };
            };
            match header.tag {
                ITEM_DELIMITATION if bound == Bound::ItemDelimiter => {
                    return Ok(Flow::Continue);
                }
                ITEM | ITEM_DELIMITATION | SEQUENCE_DELIMITATION => {
                    return Err(self.src.malformed(
                        start,
                        format!("unexpected {} among data elements", header.tag),
                    ));
                }
                _ => {}
            }
            self.stats.elements += 1;
            if self.stats.elements > self.limits.elements {
                return Err(DicomError::LimitExceeded {
                    limit: "dicom_elements",
                    max: self.limits.elements,
                    unit: "elements",
                });
            }
            let want = self.visitor.header(depth, &header);
            if want == Want::Stop {
                return Ok(Flow::Stop);
            }
            if let Bound::At(end) = bound {
                let value_end = header.value_offset.saturating_add(u64::from(header.len));
                if !header.is_undefined_length() && value_end > end {
                    return Err(self.src.malformed(
                        start,
                        format!(
                            "element {} declares {} bytes, beyond the end of its item at offset {end}",
                            header.tag, header.len
                        ),
                    ));
                }
            }
            if self.value(depth, syntax, &header, want)? == Flow::Stop {
                return Ok(Flow::Stop);
            }
            if let Bound::At(end) = bound
                && self.src.pos() > end
            {
                return Err(self.src.malformed(
                    start,
                    format!("element {} runs past the end of its item", header.tag),
                ));
            }
        }
    }

    fn value(
        &mut self,
        depth: u32,
        syntax: Syntax,
        header: &Header,
        want: Want,
    ) -> Result<Flow, DicomError> {
        if header.is_undefined_length() {
            if header.tag == PIXEL_DATA {
                return self.fragments(syntax, header).map(|()| Flow::Continue);
            }
            // Undefined length means a sequence; an undefined-length UN is a
            // sequence encoded in implicit VR little endian (PS3.5 6.2.2).
            let nested = match header.vr {
                VR::SQ => syntax,
                VR::UN => Syntax::IMPLICIT_LE,
                _ if !syntax.explicit_vr => syntax,
                vr => {
                    return Err(self.src.malformed(
                        header.value_offset,
                        format!("element {} of VR {vr} has undefined length", header.tag),
                    ));
                }
            };
            return self.sequence(depth + 1, nested, header, Bound::SequenceDelimiter);
        }
        let len = u64::from(header.len);
        if header.vr == VR::SQ && self.visitor.descend_defined_sequences() {
            let end = header.value_offset + len;
            return self.sequence(depth + 1, syntax, header, Bound::At(end));
        }
        if want == Want::Capture {
            if header.len > CAPTURE_BYTES_MAX {
                return Err(self.src.malformed(
                    header.value_offset,
                    format!(
                        "element {} declares {} bytes, more than the {CAPTURE_BYTES_MAX} an identifying attribute may have",
                        header.tag, header.len
                    ),
                ));
            }
            let mut value = vec![0u8; header.len as usize];
            let got = self.src.fill(&mut value)?;
            if got < value.len() {
                return Err(self.src.truncated(
                    "value",
                    Some(header.tag),
                    header.value_offset,
                    len,
                    got as u64,
                ));
            }
            return Ok(self.visitor.value(header, &value));
        }
        let skipped = self.src.skip(len)?;
        if skipped < len {
            return Err(self.src.truncated(
                "value",
                Some(header.tag),
                header.value_offset,
                len,
                skipped,
            ));
        }
        if header.tag == PIXEL_DATA {
            self.stats.pixel_data_bytes += len;
        }
        Ok(Flow::Continue)
    }

    /// Reads an item or delimiter header (tag and 32-bit length, no VR).
    fn item_header(&mut self, syntax: Syntax, parent: Tag) -> Result<Header, DicomError> {
        let offset = self.src.pos();
        let mut buf = [0u8; 8];
        let got = self.src.fill(&mut buf)?;
        if got < buf.len() {
            return Err(self
                .src
                .truncated("item header", Some(parent), offset, 8, got as u64));
        }
        Ok(Header {
            tag: syntax.tag([buf[0], buf[1], buf[2], buf[3]]),
            vr: VR::UN,
            len: syntax.u32([buf[4], buf[5], buf[6], buf[7]]),
            value_offset: self.src.pos(),
        })
    }

    fn sequence(
        &mut self,
        depth: u32,
        syntax: Syntax,
        sequence: &Header,
        bound: Bound,
    ) -> Result<Flow, DicomError> {
        if depth > self.limits.nesting_depth {
            return Err(DicomError::LimitExceeded {
                limit: "dicom_nesting_depth",
                max: u64::from(self.limits.nesting_depth),
                unit: "levels of nested sequences",
            });
        }
        self.stats.depth_max = self.stats.depth_max.max(depth);
        loop {
            let start = self.src.pos();
            if let Bound::At(end) = bound
                && start == end
            {
                return Ok(Flow::Continue);
            }
            let item = self.item_header(syntax, sequence.tag)?;
            match item.tag {
                ITEM => {
                    self.stats.items += 1;
                    let item_bound = if item.is_undefined_length() {
                        Bound::ItemDelimiter
                    } else {
                        let end = item.value_offset + u64::from(item.len);
                        if let Bound::At(sequence_end) = bound
                            && end > sequence_end
                        {
                            return Err(self.src.malformed(
                                start,
                                format!(
                                    "an item of {} bytes runs past the end of sequence {}",
                                    item.len, sequence.tag
                                ),
                            ));
                        }
                        Bound::At(end)
                    };
                    if self.elements(depth, syntax, item_bound, Some(sequence.tag))? == Flow::Stop {
                        return Ok(Flow::Stop);
                    }
                    // An undefined-length item can run past a defined end.
                    if let Bound::At(sequence_end) = bound
                        && self.src.pos() > sequence_end
                    {
                        return Err(self.src.malformed(
                            start,
                            format!("an item runs past the end of sequence {}", sequence.tag),
                        ));
                    }
                }
                SEQUENCE_DELIMITATION if bound == Bound::SequenceDelimiter => {
                    return Ok(Flow::Continue);
                }
                other => {
                    return Err(self.src.malformed(
                        start,
                        format!(
                            "expected an item in sequence {}, found {other}",
                            sequence.tag
                        ),
                    ));
                }
            }
        }
    }

    /// Walks encapsulated pixel data: items of defined length (the basic
    /// offset table, then fragments) up to a sequence delimitation item.
    fn fragments(&mut self, syntax: Syntax, pixel_data: &Header) -> Result<(), DicomError> {
        loop {
            let start = self.src.pos();
            let item = self.item_header(syntax, pixel_data.tag)?;
            match item.tag {
                ITEM if !item.is_undefined_length() => {
                    let len = u64::from(item.len);
                    let skipped = self.src.skip(len)?;
                    if skipped < len {
                        return Err(self.src.truncated(
                            "fragment",
                            Some(pixel_data.tag),
                            item.value_offset,
                            len,
                            skipped,
                        ));
                    }
                    self.stats.fragments += 1;
                    self.stats.pixel_data_bytes += len;
                }
                SEQUENCE_DELIMITATION => return Ok(()),
                other => {
                    return Err(self.src.malformed(
                        start,
                        format!(
                            "expected a fragment item in encapsulated {}, found {other}{}",
                            pixel_data.tag,
                            if other == ITEM {
                                " of undefined length"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vr_bytes_agree_with_dicom_core() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                assert_eq!(
                    vr_from_bytes([a, b]),
                    VR::from_binary([a, b]),
                    "{a:#x} {b:#x}"
                );
            }
        }
    }
}

//! The one error type of the crate, [`DicomError`].
//!
//! Every variant names what is wrong in words an operator can act on, and
//! carries a short stable [`DicomError::code`] that the gateway puts into gRPC
//! error details. Messages may contain tags, offsets, lengths and UIDs, but
//! never patient data (names, IDs, free text): errors end up in logs and in
//! answers to callers that may not be allowed to see the patient.

use std::fmt;

use dicom_core::Tag;

use crate::uid::UidProblem;

/// Why an instance was refused (or, for [`DicomError::NeedMoreData`], why the
/// caller should read more of it and ask again).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DicomError {
    /// No 128-byte preamble followed by `DICM` and a file meta group: this is
    /// not a DICOM Part-10 file.
    #[error("not a DICOM Part-10 file: {reason}")]
    NotPart10 {
        /// What is missing, e.g. "no 'DICM' after the 128-byte preamble".
        reason: &'static str,
    },

    /// The file meta information has no Transfer Syntax UID (0002,0010), so
    /// the data set cannot be decoded.
    #[error("the file meta information has no Transfer Syntax UID (0002,0010)")]
    MissingTransferSyntax,

    /// The data set is encoded in a transfer syntax this archive cannot walk.
    #[error("unsupported transfer syntax {uid}")]
    UnsupportedTransferSyntax {
        /// The Transfer Syntax UID as found in the file meta.
        uid: String,
    },

    /// A required UID attribute is absent or empty.
    #[error("required attribute {attribute} {tag} is missing or empty")]
    MissingUid {
        /// Attribute name, e.g. "SOP Instance UID".
        attribute: &'static str,
        /// Attribute tag, e.g. (0008,0018).
        tag: Tag,
    },

    /// A UID attribute is present but breaks the UID syntax of PS3.5 9.1.
    #[error("{attribute} {tag} is not a valid UID: {problem}")]
    MalformedUid {
        /// Attribute name, e.g. "Study Instance UID".
        attribute: &'static str,
        /// Attribute tag.
        tag: Tag,
        /// What rule the value breaks. The value itself is not repeated: a
        /// broken writer may have put anything there.
        problem: UidProblem,
    },

    /// The stream ends inside something that declared more bytes than remain.
    #[error(
        "truncated at byte offset {offset}{}: {what}{} needs {declared} bytes, only {available} remain",
        in_inflated(*.inflated),
        of_tag(.tag)
    )]
    Truncated {
        /// What was being read: "element header", "value", "item header",
        /// "fragment", "deflated data set", ...
        what: &'static str,
        /// The element being read, or the element that contains it.
        tag: Option<Tag>,
        /// Offset of what was being read: a file offset, or an offset in the
        /// inflated data set when `inflated` is true.
        offset: u64,
        /// Whether `offset` counts inflated bytes of a deflated data set.
        inflated: bool,
        /// Bytes it declared (or needs).
        declared: u64,
        /// Bytes that were left.
        available: u64,
    },

    /// A deflated data set whose deflate stream stops before its end marker.
    #[error(
        "truncated: the deflated data set ends at byte offset {offset} without its end-of-stream marker"
    )]
    DeflateTruncated {
        /// File offset where the compressed bytes ran out.
        offset: u64,
    },

    /// Only from [`crate::read_identity`] with `complete == false`: the prefix
    /// ends before the identifying attributes were all seen. Read more and
    /// call again.
    #[error("the first {have} bytes do not yet hold the identifying attributes; read more")]
    NeedMoreData {
        /// Length of the prefix that was given.
        have: usize,
    },

    /// The structure is broken in some other way (impossible lengths, an
    /// unknown VR, a corrupt deflate stream, nesting too deep, ...).
    #[error("malformed data set at byte offset {offset}{}: {reason}", in_inflated(*.inflated))]
    Malformed {
        /// Where the problem was seen (see `Truncated::offset`).
        offset: u64,
        /// Whether `offset` counts inflated bytes of a deflated data set.
        inflated: bool,
        /// What is wrong; built only from tags, VRs and lengths.
        reason: String,
    },

    /// A Specific Character Set (0008,0005) term this crate does not know.
    /// Only [`crate::decode_person_name`] and [`crate::decode_text`] return
    /// it; [`crate::read_identity`] falls back to a lossy decoding instead of
    /// refusing the instance over a name it cannot spell.
    #[error("unknown specific character set term {term:?}")]
    UnknownCharset {
        /// The term as found.
        term: String,
    },

    /// The underlying reader failed (not a property of the instance).
    #[error("could not read the instance: {message}")]
    Io {
        /// The reader's error message.
        message: String,
    },

    /// The instance goes beyond a configured parser limit (see
    /// [`crate::ParseLimits`]).
    #[error("the instance exceeds the limit {limit} ({max} {unit})")]
    LimitExceeded {
        /// The limit's configuration name, e.g. `dicom_elements`.
        limit: &'static str,
        max: u64,
        unit: &'static str,
    },
}

impl DicomError {
    /// A short stable identifier of the variant, for machine-readable error
    /// details (gRPC, `--json`). Never changes once released.
    pub fn code(&self) -> &'static str {
        match self {
            DicomError::NotPart10 { .. } => "not_part10",
            DicomError::MissingTransferSyntax => "missing_transfer_syntax",
            DicomError::UnsupportedTransferSyntax { .. } => "unsupported_transfer_syntax",
            DicomError::MissingUid { .. } => "missing_uid",
            DicomError::MalformedUid { .. } => "malformed_uid",
            DicomError::Truncated { .. } | DicomError::DeflateTruncated { .. } => "truncated",
            DicomError::NeedMoreData { .. } => "need_more_data",
            DicomError::Malformed { .. } => "malformed",
            DicomError::UnknownCharset { .. } => "unknown_charset",
            DicomError::Io { .. } => "io",
            DicomError::LimitExceeded { .. } => "limit_exceeded",
        }
    }
}

fn in_inflated(inflated: bool) -> &'static str {
    if inflated {
        " of the inflated data set"
    } else {
        ""
    }
}

/// Formats " of (GGGG,EEEE)" or nothing, for the truncation message.
fn of_tag(tag: &Option<Tag>) -> TagSuffix {
    TagSuffix(*tag)
}

struct TagSuffix(Option<Tag>);

impl fmt::Display for TagSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(tag) => write!(f, " of {tag}"),
            None => Ok(()),
        }
    }
}

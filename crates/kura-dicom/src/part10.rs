//! The Part-10 envelope: the 128-byte preamble, `DICM`, and the file meta
//! group (0002,xxxx), always explicit VR little endian, which names the
//! transfer syntax of the data set that follows.

use std::io::Read;

use dicom_dictionary_std::tags::TRANSFER_SYNTAX_UID;
use dicom_encoding::Endianness;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

use crate::DicomError;
use crate::uid::uid_from_bytes;
use crate::walk::{CAPTURE_BYTES_MAX, Source, Syntax, UNDEFINED_LENGTH, finish_header};

/// Bytes before `DICM`.
pub const PREAMBLE_BYTES: usize = 128;
const MAGIC: &[u8; 4] = b"DICM";

/// Implicit VR Little Endian: the only standard transfer syntax without
/// explicit VRs (the registry does not say which are explicit).
const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";

/// Transfer syntaxes whose data set, after the file meta, is one raw deflate
/// stream (PS3.5 A.5): Deflated Explicit VR Little Endian and the two JPIP
/// Referenced Deflate syntaxes.
const DEFLATED: [&str; 3] = [
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.95",
    "1.2.840.10008.1.2.4.205",
];

/// What the envelope says about the data set.
#[derive(Debug)]
pub(crate) struct FileMeta {
    pub transfer_syntax_uid: String,
    pub encoding: DataSetEncoding,
    /// File offset where the data set starts.
    pub data_set_offset: u64,
    /// The first bytes of the data set, read while looking for the end of
    /// the meta group (which has no reliable length of its own).
    pub peeked: Vec<u8>,
}

/// How the data set after the meta is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataSetEncoding {
    Plain(Syntax),
    /// Raw deflate, inflating to explicit VR little endian.
    Deflated,
}

/// Reads the preamble and the file meta group from `src` (positioned at the
/// start of the file).
///
/// With `complete == false` every "ran out of bytes" is a `Truncated` error
/// (the caller asks for more); with `complete == true` a file too short for
/// the preamble, or with nothing after `DICM`, is simply not Part-10.
pub(crate) fn read_file_meta<R: Read>(
    src: &mut Source<R>,
    complete: bool,
) -> Result<FileMeta, DicomError> {
    let mut preamble = [0u8; PREAMBLE_BYTES + MAGIC.len()];
    let got = src.fill(&mut preamble)?;
    // Refuse as soon as the bytes present contradict "DICM", even in a prefix.
    let magic_seen = got.saturating_sub(PREAMBLE_BYTES);
    if preamble[PREAMBLE_BYTES..PREAMBLE_BYTES + magic_seen] != MAGIC[..magic_seen] {
        return Err(DicomError::NotPart10 {
            reason: "no 'DICM' after the 128-byte preamble",
        });
    }
    if got < preamble.len() {
        if complete {
            return Err(DicomError::NotPart10 {
                reason: "shorter than the 128-byte preamble and 'DICM'",
            });
        }
        return Err(src.truncated("preamble", None, 0, preamble.len() as u64, got as u64));
    }

    let mut transfer_syntax: Option<Vec<u8>> = None;
    let mut first = true;
    let peeked = loop {
        let offset = src.pos();
        let mut tag = [0u8; 4];
        let got = src.fill(&mut tag)?;
        if got == 0 && complete {
            if first {
                return Err(DicomError::NotPart10 {
                    reason: "no file meta information after 'DICM'",
                });
            }
            break Vec::new();
        }
        if got < tag.len() {
            return Err(src.truncated("element header", None, offset, 8, got as u64));
        }
        if u16::from_le_bytes([tag[0], tag[1]]) != 0x0002 {
            if first {
                return Err(DicomError::NotPart10 {
                    reason: "no file meta information group (0002,xxxx) after 'DICM'",
                });
            }
            break tag.to_vec();
        }
        first = false;
        let header = finish_header(src, Syntax::EXPLICIT_LE, tag, offset)?;
        if header.len == UNDEFINED_LENGTH {
            return Err(src.malformed(
                offset,
                format!("file meta element {} has undefined length", header.tag),
            ));
        }
        let len = u64::from(header.len);
        if header.tag == TRANSFER_SYNTAX_UID && header.len <= CAPTURE_BYTES_MAX {
            let mut value = vec![0u8; header.len as usize];
            let got = src.fill(&mut value)?;
            if got < value.len() {
                return Err(src.truncated(
                    "value",
                    Some(header.tag),
                    header.value_offset,
                    len,
                    got as u64,
                ));
            }
            transfer_syntax = Some(value);
        } else {
            let skipped = src.skip(len)?;
            if skipped < len {
                return Err(src.truncated(
                    "value",
                    Some(header.tag),
                    header.value_offset,
                    len,
                    skipped,
                ));
            }
        }
    };
    let data_set_offset = src.pos() - peeked.len() as u64;

    let raw = transfer_syntax.ok_or(DicomError::MissingTransferSyntax)?;
    let uid = uid_from_bytes(&raw).map_err(|problem| match problem {
        crate::UidProblem::Empty => DicomError::MissingTransferSyntax,
        problem => DicomError::MalformedUid {
            attribute: "Transfer Syntax UID",
            tag: TRANSFER_SYNTAX_UID,
            problem,
        },
    })?;
    let encoding = data_set_encoding(&uid)?;
    Ok(FileMeta {
        transfer_syntax_uid: uid,
        encoding,
        data_set_offset,
        peeked,
    })
}

/// How a data set in transfer syntax `uid` is laid out, from dicom-rs's
/// registry of standard transfer syntaxes. Pixel data codecs do not matter:
/// Kura stores pixel data as it came and only walks its fragments.
fn data_set_encoding(uid: &str) -> Result<DataSetEncoding, DicomError> {
    let unsupported = || DicomError::UnsupportedTransferSyntax {
        uid: uid.to_string(),
    };
    let ts = TransferSyntaxRegistry.get(uid).ok_or_else(unsupported)?;
    if DEFLATED.contains(&uid) {
        return Ok(DataSetEncoding::Deflated);
    }
    // A data-set codec other than deflate: nothing we can walk.
    if ts.is_unsupported() {
        return Err(unsupported());
    }
    Ok(DataSetEncoding::Plain(Syntax {
        explicit_vr: uid != IMPLICIT_VR_LITTLE_ENDIAN,
        big_endian: ts.endianness() == Endianness::Big,
    }))
}

/// The registry's name of a transfer syntax, e.g. "Explicit VR Little
/// Endian", for display.
pub fn transfer_syntax_name(uid: &str) -> Option<&'static str> {
    TransferSyntaxRegistry.get(uid).map(|ts| ts.name())
}

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

/// Kura's Implementation Class UID (0002,0012) in the file meta it writes
/// for instances that arrive without one (DIMSE C-STORE sends only the
/// data set).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.102400389942634467690328995574173288156";
/// Implementation Version Name (0002,0013).
pub const IMPLEMENTATION_VERSION_NAME: &str = "KURA_01";

/// The Part-10 envelope for a data set that arrived without one: preamble,
/// `DICM` and the file meta group naming `sop_class_uid`,
/// `sop_instance_uid` and `transfer_syntax_uid`. Deterministic (no time,
/// no sender): the same data set sent twice becomes the same file, so a
/// resend is an identical duplicate, not a conflict.
pub fn file_meta(
    sop_class_uid: &str,
    sop_instance_uid: &str,
    transfer_syntax_uid: &str,
) -> Vec<u8> {
    fn element(out: &mut Vec<u8>, element: u16, vr: &[u8; 2], value: &[u8], pad: u8) {
        let odd = value.len() % 2 == 1;
        let len = value.len() + usize::from(odd);
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(vr);
        if vr == b"OB" {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&(len as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&(len as u16).to_le_bytes());
        }
        out.extend_from_slice(value);
        if odd {
            out.push(pad);
        }
    }
    let mut group = Vec::with_capacity(256);
    element(&mut group, 0x0001, b"OB", &[0, 1], 0);
    element(&mut group, 0x0002, b"UI", sop_class_uid.as_bytes(), 0);
    element(&mut group, 0x0003, b"UI", sop_instance_uid.as_bytes(), 0);
    element(&mut group, 0x0010, b"UI", transfer_syntax_uid.as_bytes(), 0);
    element(
        &mut group,
        0x0012,
        b"UI",
        IMPLEMENTATION_CLASS_UID.as_bytes(),
        0,
    );
    element(
        &mut group,
        0x0013,
        b"SH",
        IMPLEMENTATION_VERSION_NAME.as_bytes(),
        b' ',
    );
    let mut out = vec![0u8; PREAMBLE_BYTES];
    out.extend_from_slice(MAGIC);
    element(
        &mut out,
        0x0000,
        b"UL",
        &(group.len() as u32).to_le_bytes(),
        0,
    );
    out.extend_from_slice(&group);
    out
}

/// Where a Part-10 file's data set starts and its transfer syntax, read
/// from a prefix of the file (a few hundred bytes are enough; asks for
/// more with [`DicomError::NeedMoreData`]-style `Truncated` errors when the
/// prefix ends inside the file meta). A DIMSE peer receives the data set
/// alone: the bytes from this offset on.
pub fn envelope(prefix: &[u8]) -> Result<Envelope, DicomError> {
    let mut src = Source::new(prefix, 0, false);
    let meta = read_file_meta(&mut src, false)?;
    Ok(Envelope {
        transfer_syntax_uid: meta.transfer_syntax_uid,
        data_set_offset: meta.data_set_offset,
    })
}

/// What [`envelope`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub transfer_syntax_uid: String,
    pub data_set_offset: u64,
}

/// The transfer syntaxes whose data sets Kura can walk and so store
/// (every one in dicom-rs's registry but those with a data-set codec other
/// than deflate), for a DIMSE front door to accept in negotiation.
pub fn storable_transfer_syntaxes() -> Vec<&'static str> {
    TransferSyntaxRegistry
        .iter()
        .map(|ts| ts.uid())
        .filter(|uid| data_set_encoding(uid).is_ok())
        .collect()
}

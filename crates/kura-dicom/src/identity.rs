//! [`read_identity`]: the attributes that identify an instance, read from a
//! prefix of its bytes.
//!
//! The gateway learns where an instance belongs before the rest of it has
//! arrived (an instance can be hundreds of MB). The walk stops at the last
//! identifying attribute, Series Instance UID (0020,000E): data sets are
//! sorted by tag (PS3.5 7.1), so everything wanted lies before it, and a few
//! KiB usually suffice.

use std::fmt;
use std::io::{Cursor, Read};

use dicom_core::Tag;
use dicom_dictionary_std::tags::{
    MODALITY, PATIENT_ID, PATIENT_NAME, SERIES_INSTANCE_UID, SOP_CLASS_UID, SOP_INSTANCE_UID,
    SPECIFIC_CHARACTER_SET, STUDY_DATE, STUDY_INSTANCE_UID,
};
use serde::Serialize;

use crate::DicomError;
use crate::charset::{decode_person_name_lossy, decode_text_lossy, split_charset};
use crate::inflate::Inflater;
use crate::part10::{DataSetEncoding, read_file_meta};
use crate::uid::{UidProblem, uid_from_bytes};
use crate::walk::{Flow, Header, Source, Syntax, Visitor, Walker, Want};

/// What identifies an instance: where it belongs in the archive (the UIDs)
/// and what an index shows about it.
///
/// `Debug` hides the patient's name and ID, so an `Identity` can be logged;
/// `Serialize` does not (it is for answers to callers allowed to see them).
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// SOP Instance UID (0008,0018): the key of the instance.
    pub sop_instance_uid: String,
    /// SOP Class UID (0008,0016).
    pub sop_class_uid: String,
    /// Study Instance UID (0020,000D).
    pub study_instance_uid: String,
    /// Series Instance UID (0020,000E).
    pub series_instance_uid: String,
    /// Transfer Syntax UID (0002,0010) from the file meta.
    pub transfer_syntax_uid: String,
    /// Patient ID (0010,0020), decoded; empty if absent.
    pub patient_id: String,
    /// Patient's Name (0010,0010) decoded by the Specific Character Set, in
    /// PN form (`Family^Given=Ideographic=Phonetic`); empty if absent.
    pub patient_name: String,
    /// Modality (0008,0060); empty if absent.
    pub modality: String,
    /// Study Date (0008,0020), as stored (YYYYMMDD); empty if absent.
    pub study_date: String,
    /// Specific Character Set (0008,0005) as found, values joined by `\`;
    /// empty if absent (the default repertoire).
    pub specific_character_set: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Patient data must never reach logs.
        f.debug_struct("Identity")
            .field("sop_instance_uid", &self.sop_instance_uid)
            .field("sop_class_uid", &self.sop_class_uid)
            .field("study_instance_uid", &self.study_instance_uid)
            .field("series_instance_uid", &self.series_instance_uid)
            .field("transfer_syntax_uid", &self.transfer_syntax_uid)
            .field("patient_id", &"<redacted>")
            .field("patient_name", &"<redacted>")
            .field("modality", &self.modality)
            .field("study_date", &self.study_date)
            .field("specific_character_set", &self.specific_character_set)
            .finish()
    }
}

/// Reads the identifying attributes from `prefix`, the first bytes of a
/// Part-10 stream (or all of it).
///
/// Parses the file meta and the top level of the data set up to Series
/// Instance UID (0020,000E), never into Pixel Data. If the prefix ends before
/// that, the answer depends on `complete`: `false` gives
/// [`DicomError::NeedMoreData`] (read more, call again with the longer
/// prefix); `true` means the stream really ends there, which gives
/// [`DicomError::Truncated`] inside an element, or a missing-attribute error
/// at an element boundary.
///
/// Works for implicit and explicit VR little endian, explicit VR big endian,
/// deflated explicit VR little endian (inflated incrementally) and every
/// encapsulated transfer syntax. A successful answer does not mean the rest
/// of the instance is sound: that is [`crate::validate`]'s job.
pub fn read_identity(prefix: &[u8], complete: bool) -> Result<Identity, DicomError> {
    match read(prefix, complete) {
        Err(DicomError::Truncated { .. } | DicomError::DeflateTruncated { .. }) if !complete => {
            Err(DicomError::NeedMoreData { have: prefix.len() })
        }
        other => other,
    }
}

fn read(prefix: &[u8], complete: bool) -> Result<Identity, DicomError> {
    let mut input = prefix;
    let meta = read_file_meta(&mut Source::new(&mut input, 0, false), complete)?;
    let mut rest = Cursor::new(meta.peeked.as_slice()).chain(input);
    let mut visitor = IdentityVisitor::default();
    let flow = match meta.encoding {
        DataSetEncoding::Plain(syntax) => {
            let src = Source::new(&mut rest, meta.data_set_offset, false);
            Walker::new(src, &mut visitor).data_set(syntax)?
        }
        DataSetEncoding::Deflated => {
            let src = Source::new(Inflater::new(&mut rest), 0, true);
            Walker::new(src, &mut visitor).data_set(Syntax::EXPLICIT_LE)?
        }
    };
    // The prefix ended between two elements before Series Instance UID: the
    // rest may still hold what is missing.
    if flow == Flow::Continue && !complete {
        return Err(DicomError::NeedMoreData { have: prefix.len() });
    }
    visitor.into_identity(meta.transfer_syntax_uid)
}

/// The attributes read, in tag order; the walk stops after the last one.
const WANTED: [Tag; 9] = [
    SPECIFIC_CHARACTER_SET,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    STUDY_DATE,
    MODALITY,
    PATIENT_NAME,
    PATIENT_ID,
    STUDY_INSTANCE_UID,
    SERIES_INSTANCE_UID,
];
const LAST_WANTED: Tag = SERIES_INSTANCE_UID;

#[derive(Default)]
struct IdentityVisitor {
    values: [Option<Vec<u8>>; WANTED.len()],
}

impl Visitor for IdentityVisitor {
    fn header(&mut self, depth: u32, header: &Header) -> Want {
        if depth > 0 {
            return Want::Skip;
        }
        if header.tag > LAST_WANTED {
            return Want::Stop;
        }
        if WANTED.contains(&header.tag) {
            Want::Capture
        } else {
            Want::Skip
        }
    }

    fn value(&mut self, header: &Header, value: &[u8]) -> Flow {
        if let Some(index) = WANTED.iter().position(|&t| t == header.tag) {
            self.values[index] = Some(value.to_vec());
        }
        if header.tag == LAST_WANTED {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    fn descend_defined_sequences(&self) -> bool {
        false
    }
}

impl IdentityVisitor {
    fn raw(&self, tag: Tag) -> &[u8] {
        WANTED
            .iter()
            .position(|&t| t == tag)
            .and_then(|index| self.values[index].as_deref())
            .unwrap_or(&[])
    }

    /// A required UID: absent, empty or malformed values are refused.
    fn uid(&self, attribute: &'static str, tag: Tag) -> Result<String, DicomError> {
        uid_from_bytes(self.raw(tag)).map_err(|problem| match problem {
            UidProblem::Empty => DicomError::MissingUid { attribute, tag },
            problem => DicomError::MalformedUid {
                attribute,
                tag,
                problem,
            },
        })
    }

    /// A code string or date: ASCII by definition; trimmed.
    fn ascii(&self, tag: Tag) -> String {
        String::from_utf8_lossy(self.raw(tag))
            .trim_matches([' ', '\0'])
            .to_string()
    }

    fn into_identity(self, transfer_syntax_uid: String) -> Result<Identity, DicomError> {
        // SOP Instance UID first: it is the key, and the one callers ask about.
        let sop_instance_uid = self.uid("SOP Instance UID", SOP_INSTANCE_UID)?;
        let sop_class_uid = self.uid("SOP Class UID", SOP_CLASS_UID)?;
        let study_instance_uid = self.uid("Study Instance UID", STUDY_INSTANCE_UID)?;
        let series_instance_uid = self.uid("Series Instance UID", SERIES_INSTANCE_UID)?;

        let specific_character_set = self.ascii(SPECIFIC_CHARACTER_SET);
        let charset = split_charset(&specific_character_set);
        let patient_name = decode_person_name_lossy(self.raw(PATIENT_NAME), &charset);
        let patient_id = decode_text_lossy(self.raw(PATIENT_ID), &charset)
            .trim_matches(' ')
            .to_string();
        Ok(Identity {
            sop_instance_uid,
            sop_class_uid,
            study_instance_uid,
            series_instance_uid,
            transfer_syntax_uid,
            patient_id,
            patient_name,
            modality: self.ascii(MODALITY),
            study_date: self.ascii(STUDY_DATE),
            specific_character_set,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_patient_data() {
        let identity = Identity {
            sop_instance_uid: "1.2.3".into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            study_instance_uid: "1.2.4".into(),
            series_instance_uid: "1.2.5".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            patient_id: "PID-12345".into(),
            patient_name: "Yamada^Tarou=山田^太郎".into(),
            modality: "CT".into(),
            study_date: "20040119".into(),
            specific_character_set: "\\ISO 2022 IR 87".into(),
        };
        let shown = format!("{identity:?} {identity:#?}");
        assert!(!shown.contains("PID-12345"), "{shown}");
        assert!(!shown.contains("Yamada"), "{shown}");
        assert!(!shown.contains("山田"), "{shown}");
        assert!(shown.contains("1.2.3"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}

//! Every row of the shared corpus (`shared/corpus/MANIFEST.tsv`): accepted
//! files give their listed UIDs from the whole file and from a growing
//! prefix, and pass `validate`; refused files give the right typed error.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::OnceLock;

use kura_dicom::{DicomError, Identity, Summary, read_identity, validate};
use proptest::prelude::*;

fn corpus_dir() -> PathBuf {
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../../../shared/corpus")
}

#[derive(Debug, Clone)]
struct Row {
    file: String,
    accept: bool,
    sop_instance_uid: String,
    study_instance_uid: String,
}

/// The manifest. The corpus is part of the test environment (CI has it): a
/// missing corpus fails the test rather than skipping it.
fn manifest() -> &'static [Row] {
    static ROWS: OnceLock<Vec<Row>> = OnceLock::new();
    ROWS.get_or_init(|| {
        let path = corpus_dir().join("MANIFEST.tsv");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "the shared DICOM corpus is missing: cannot read {}: {e}",
                path.display()
            )
        });
        let rows: Vec<Row> = text
            .lines()
            .skip(1)
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let cols: Vec<&str> = line.split('\t').collect();
                assert!(cols.len() >= 4, "bad manifest line {line:?}");
                assert!(
                    cols[1] == "accept" || cols[1] == "reject",
                    "bad verdict in {line:?}"
                );
                Row {
                    file: cols[0].to_string(),
                    accept: cols[1] == "accept",
                    sop_instance_uid: cols[2].to_string(),
                    study_instance_uid: cols[3].to_string(),
                }
            })
            .collect();
        assert!(rows.len() >= 19, "manifest has only {} rows", rows.len());
        rows
    })
}

fn read(file: &str) -> Vec<u8> {
    let path = corpus_dir().join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The accepted files' bytes, loaded once.
fn accepted() -> &'static [(Row, Vec<u8>)] {
    static FILES: OnceLock<Vec<(Row, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| {
        manifest()
            .iter()
            .filter(|row| row.accept)
            .map(|row| (row.clone(), read(&row.file)))
            .collect()
    })
}

/// What the gateway does: identity from the bytes, then the whole-stream check.
fn verdict(data: &[u8]) -> Result<(Identity, Summary), DicomError> {
    let identity = read_identity(data, true)?;
    let summary = validate(data)?;
    Ok((identity, summary))
}

/// Grows a prefix (doubling from 256 bytes) until `read_identity` stops
/// asking for more, as the gateway will; returns the answer and the prefix
/// length that sufficed.
fn identity_by_prefix(data: &[u8]) -> (Result<Identity, DicomError>, usize) {
    let mut len = 256usize;
    loop {
        let complete = len >= data.len();
        let prefix = &data[..len.min(data.len())];
        match read_identity(prefix, complete) {
            Err(DicomError::NeedMoreData { have }) => {
                assert_eq!(have, prefix.len());
                assert!(!complete, "NeedMoreData for a complete stream");
                len *= 2;
            }
            other => return (other, prefix.len()),
        }
    }
}

/// A reader that hands out at most `chunk` bytes per call, like the
/// gateway's adapter over gRPC messages.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn accepted_files_give_their_uids_and_validate() {
    let mut checked = 0;
    for (row, data) in accepted() {
        let file = &row.file;
        let whole = read_identity(data, true)
            .unwrap_or_else(|e| panic!("{file}: read_identity refused: {e}"));
        assert_eq!(whole.sop_instance_uid, row.sop_instance_uid, "{file}");
        assert_eq!(whole.study_instance_uid, row.study_instance_uid, "{file}");

        let (by_prefix, needed) = identity_by_prefix(data);
        let by_prefix = by_prefix.unwrap_or_else(|e| panic!("{file}: prefix refused: {e}"));
        assert_eq!(by_prefix, whole, "{file}");
        // The identifying attributes sit near the start of every corpus file.
        assert!(needed <= 8192, "{file}: needed a {needed}-byte prefix");

        let first_4k = read_identity(&data[..data.len().min(4096)], data.len() <= 4096);
        match first_4k {
            Ok(identity) => assert_eq!(identity, whole, "{file}"),
            Err(DicomError::NeedMoreData { .. }) => {}
            Err(e) => panic!("{file}: first 4 KiB refused: {e}"),
        }

        let summary =
            validate(data.as_slice()).unwrap_or_else(|e| panic!("{file}: validate refused: {e}"));
        assert_eq!(summary.instance_bytes, data.len() as u64, "{file}");
        assert_eq!(
            summary.transfer_syntax_uid, whole.transfer_syntax_uid,
            "{file}"
        );
        assert!(summary.element_count > 10, "{file}: {summary:?}");
        for chunk in [1, 7, 4096] {
            let chunked = validate(Chunked { data, chunk })
                .unwrap_or_else(|e| panic!("{file}: chunked validate refused: {e}"));
            assert_eq!(chunked, summary, "{file} in {chunk}-byte reads");
        }
        checked += 1;
    }
    assert_eq!(checked, 14, "accepted files checked");
}

#[test]
fn refused_files_give_the_right_error() {
    let expected: BTreeMap<&str, &str> = [
        ("no_meta.dcm", "not_part10"),
        ("not_dicom.txt", "not_part10"),
        ("MR_truncated.dcm", "truncated"),
        ("meta_missing_tsyntax.dcm", "missing_transfer_syntax"),
        ("empty_charset_LEI.dcm", "missing_uid"),
    ]
    .into_iter()
    .collect();
    let mut checked = 0;
    for row in manifest().iter().filter(|row| !row.accept) {
        let file = row.file.as_str();
        let Some(&code) = expected.get(file) else {
            panic!("{file}: refused in the manifest, but this test does not know why")
        };
        let data = read(file);
        let err = match verdict(&data) {
            Ok(_) => panic!("{file}: accepted, expected {code}"),
            Err(e) => e,
        };
        assert_eq!(err.code(), code, "{file}: {err}");
        checked += 1;
    }
    assert_eq!(checked, expected.len(), "refused files checked");
}

#[test]
fn refusals_say_what_is_wrong() {
    let err = read_identity(&read("empty_charset_LEI.dcm"), true).err();
    assert!(
        matches!(
            &err,
            Some(DicomError::MissingUid { attribute: "SOP Instance UID", tag })
                if *tag == dicom_core::Tag(0x0008, 0x0018)
        ),
        "{err:?}"
    );
    assert!(
        err.map(|e| e.to_string())
            .unwrap_or_default()
            .contains("(0008,0018)")
    );

    // The identity sits before the cut, so the prefix reading succeeds; the
    // whole-stream check finds the pixel data short.
    let truncated = read("MR_truncated.dcm");
    let identity = read_identity(&truncated, true).expect("identity before the cut");
    assert_eq!(
        identity.sop_instance_uid,
        "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457"
    );
    match validate(truncated.as_slice()) {
        Err(DicomError::Truncated {
            tag,
            declared,
            available,
            ..
        }) => {
            assert_eq!(tag, Some(dicom_core::Tag(0x7FE0, 0x0010)));
            assert!(declared > available);
        }
        other => panic!("MR_truncated.dcm: {other:?}"),
    }
    let message = validate(truncated.as_slice())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(message.contains("(7FE0,0010)"), "{message}");

    for file in ["no_meta.dcm", "not_dicom.txt"] {
        let data = read(file);
        assert!(matches!(
            read_identity(&data, true),
            Err(DicomError::NotPart10 { .. })
        ));
        assert!(matches!(
            read_identity(&data[..200], false),
            Err(DicomError::NotPart10 { .. })
        ));
        assert!(matches!(
            validate(data.as_slice()),
            Err(DicomError::NotPart10 { .. })
        ));
    }
    assert_eq!(
        validate(read("meta_missing_tsyntax.dcm").as_slice()).map_err(|e| e.code()),
        Err("missing_transfer_syntax")
    );
}

/// An independent parser (dicom-object) reads the same identity.
#[test]
fn dicom_object_agrees() {
    use dicom_dictionary_std::tags;
    use dicom_object::OpenFileOptions;
    for (row, data) in accepted() {
        let ours = read_identity(data, true).expect("identity");
        let theirs = OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .from_reader(&data[128..])
            .unwrap_or_else(|e| panic!("{}: dicom-object: {e}", row.file));
        let text = |tag| -> String {
            theirs
                .element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| {
                    e.to_str()
                        .ok()
                        .map(|s| s.trim_matches(['\0', ' ']).to_string())
                })
                .unwrap_or_default()
        };
        assert_eq!(
            ours.sop_instance_uid,
            text(tags::SOP_INSTANCE_UID),
            "{}",
            row.file
        );
        assert_eq!(
            ours.sop_class_uid,
            text(tags::SOP_CLASS_UID),
            "{}",
            row.file
        );
        assert_eq!(
            ours.study_instance_uid,
            text(tags::STUDY_INSTANCE_UID),
            "{}",
            row.file
        );
        assert_eq!(
            ours.series_instance_uid,
            text(tags::SERIES_INSTANCE_UID),
            "{}",
            row.file
        );
        assert_eq!(ours.modality, text(tags::MODALITY), "{}", row.file);
        assert_eq!(ours.study_date, text(tags::STUDY_DATE), "{}", row.file);
        assert_eq!(ours.patient_id, text(tags::PATIENT_ID), "{}", row.file);
        assert_eq!(ours.patient_name, text(tags::PATIENT_NAME), "{}", row.file);
        assert_eq!(
            ours.transfer_syntax_uid,
            theirs.meta().transfer_syntax().trim_matches(['\0', ' ']),
            "{}",
            row.file
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any cut of an accepted file: a prefix gives the right identity or
    /// asks for more; declared complete it gives the right identity or an
    /// error, never a wrong identity; validate never passes a cut inside an
    /// element, and nothing panics.
    #[test]
    fn cut_files_never_give_a_wrong_identity(index in any::<prop::sample::Index>(), at in any::<prop::sample::Index>()) {
        let files = accepted();
        let (row, data) = &files[index.index(files.len())];
        let cut = at.index(data.len());
        let prefix = &data[..cut];
        let whole = read_identity(data, true).expect("identity of the whole file");

        match read_identity(prefix, false) {
            Ok(identity) => prop_assert_eq!(&identity, &whole, "{} cut at {}", row.file, cut),
            Err(DicomError::NeedMoreData { have }) => prop_assert_eq!(have, cut),
            Err(e) => prop_assert!(false, "{} cut at {}: {}", row.file, cut, e),
        }

        match read_identity(prefix, true) {
            Ok(identity) => prop_assert_eq!(&identity, &whole, "{} cut at {}", row.file, cut),
            Err(DicomError::NeedMoreData { .. }) => prop_assert!(false, "NeedMoreData for a complete stream"),
            Err(e) => prop_assert!(
                matches!(e.code(), "truncated" | "not_part10" | "missing_uid" | "missing_transfer_syntax"),
                "{} cut at {}: {}", row.file, cut, e
            ),
        }

        match validate(prefix) {
            // Only a cut between two top-level elements looks complete.
            Ok(summary) => prop_assert_eq!(summary.instance_bytes, cut as u64),
            Err(e) => prop_assert!(
                matches!(e.code(), "truncated" | "not_part10" | "missing_transfer_syntax"),
                "{} cut at {}: {}", row.file, cut, e
            ),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Corrupted bytes (in the first KiB, where the structure is) give an
    /// answer or an error, never a panic or a hang.
    #[test]
    fn corrupted_files_never_panic(
        index in any::<prop::sample::Index>(),
        flips in prop::collection::vec((0usize..1024, any::<u8>()), 1..8),
    ) {
        let files = accepted();
        let (_, data) = &files[index.index(files.len())];
        let mut data = data.clone();
        for (at, byte) in flips {
            let at = at % data.len();
            data[at] = byte;
        }
        let _ = read_identity(&data, true);
        let _ = read_identity(&data[..data.len() / 2], false);
        let _ = validate(data.as_slice());
    }
}

/// What a DIMSE C-STORE does with a stored file: the peer sends the data
/// set alone (from [`kura_dicom::envelope`]'s offset), the archive wraps it
/// in [`kura_dicom::file_meta`] again; the result is a whole instance with
/// the same identity, and wrapping twice gives the same bytes.
#[test]
fn every_accepted_file_survives_being_sent_as_a_data_set_and_wrapped_again() {
    for (row, data) in accepted() {
        let env = kura_dicom::envelope(&data[..data.len().min(4096)])
            .unwrap_or_else(|e| panic!("{}: {e}", row.file));
        let (identity, _) = verdict(data).unwrap_or_else(|e| panic!("{}: {e}", row.file));
        let offset = env.data_set_offset as usize;
        assert!(offset > kura_dicom::PREAMBLE_BYTES + 4, "{}", row.file);
        let mut wrapped = kura_dicom::file_meta(
            &identity.sop_class_uid,
            &identity.sop_instance_uid,
            &env.transfer_syntax_uid,
        );
        wrapped.extend_from_slice(&data[offset..]);
        let (again, _) = verdict(&wrapped).unwrap_or_else(|e| panic!("{} wrapped: {e}", row.file));
        assert_eq!(again, identity, "{}", row.file);
        let env2 = kura_dicom::envelope(&wrapped).expect("envelope of the wrapped file");
        assert_eq!(env2.transfer_syntax_uid, env.transfer_syntax_uid);
        assert_eq!(&wrapped[env2.data_set_offset as usize..], &data[offset..]);
        let mut twice = kura_dicom::file_meta(
            &identity.sop_class_uid,
            &identity.sop_instance_uid,
            &env.transfer_syntax_uid,
        );
        twice.extend_from_slice(&data[offset..]);
        assert_eq!(twice, wrapped, "{}", row.file);
    }
}

//! Synthetic instances, built byte by byte, for the structures the corpus
//! lacks: undefined-length sequences, broken fragments, deep nesting, bad
//! UIDs, private transfer syntaxes, deflate cut at odd places.

use std::io::Write;

use dicom_core::Tag;
use flate2::Compression;
use flate2::write::DeflateEncoder;
use kura_dicom::{DicomError, read_identity, validate};

use crate::builder::*;

fn code<T: std::fmt::Debug>(result: Result<T, DicomError>) -> &'static str {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(e) => e.code(),
    }
}

/// Meta, then (0008,0016)…(0008,0060), then `middle`, then patient and the
/// study/series UIDs, then `rest`: `middle` sits before the last identifying
/// attribute, so read_identity must walk through it.
fn instance_with_middle(middle: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut out = file_meta(Some(EXPLICIT_LE));
    out.extend(el((0x0008, 0x0016), b"UI", &ui(SOP_CLASS)));
    out.extend(el((0x0008, 0x0018), b"UI", &ui(SOP_INSTANCE)));
    out.extend(el((0x0008, 0x0060), b"CS", &text(b"OT")));
    out.extend_from_slice(middle);
    out.extend(el((0x0010, 0x0010), b"PN", &text(b"Doe^Jane")));
    out.extend(el((0x0020, 0x000D), b"UI", &ui(STUDY)));
    out.extend(el((0x0020, 0x000E), b"UI", &ui(SERIES)));
    out.extend_from_slice(rest);
    out
}

/// Referenced Image Sequence (0008,1140), undefined length, two items of
/// undefined length, one holding a nested defined-length sequence.
fn undefined_sequence() -> Vec<u8> {
    let mut nested_item = el((0x0008, 0x1150), b"UI", &ui(SOP_CLASS));
    nested_item.extend(el((0x0008, 0x1155), b"UI", &ui("1.2.3.4.5")));
    let mut nested = item(nested_item.len() as u32);
    nested.extend(nested_item);
    let mut out = header((0x0008, 0x1140), b"SQ", UNDEFINED);
    out.extend(item(UNDEFINED));
    out.extend(el((0x0008, 0x1150), b"UI", &ui(SOP_CLASS)));
    out.extend(header((0x0008, 0x1199), b"SQ", nested.len() as u32));
    out.extend(nested);
    out.extend(item_delimitation());
    out.extend(item(UNDEFINED));
    out.extend(el((0x0008, 0x1155), b"UI", &ui("1.2.3.4.6")));
    out.extend(item_delimitation());
    out.extend(sequence_delimitation());
    out
}

#[test]
fn walks_undefined_length_sequences() {
    let data = instance_with_middle(
        &undefined_sequence(),
        &el((0x7FE0, 0x0010), b"OW", &[0; 16]),
    );
    let identity = read_identity(&data, true).expect("identity");
    assert_eq!(identity.sop_instance_uid, SOP_INSTANCE);
    assert_eq!(identity.series_instance_uid, SERIES);
    assert_eq!(identity.patient_name, "Doe^Jane");
    let summary = validate(data.as_slice()).expect("valid");
    assert_eq!(summary.item_count, 3);
    assert_eq!(summary.nesting_depth_max, 2);
    assert_eq!(summary.pixel_data_bytes, 16);
    // 3 before, 1 sequence + 2 + 1 sequence + 2 inside, 3 after, pixel data.
    assert_eq!(summary.element_count, 3 + 6 + 3 + 1);

    // Every cut inside the sequence asks for more as a prefix and is
    // truncated when complete.
    let start = data.len() - 16 - 12 - 3 * 36;
    for cut in 300..start {
        match read_identity(&data[..cut], false) {
            Err(DicomError::NeedMoreData { have }) => assert_eq!(have, cut),
            other => panic!("cut at {cut}: {other:?}"),
        }
        let complete = read_identity(&data[..cut], true);
        assert!(
            matches!(
                code(complete.clone()),
                "truncated" | "missing_uid" | "not_part10" | "missing_transfer_syntax"
            ),
            "cut at {cut}: {complete:?}"
        );
    }
}

#[test]
fn truncation_inside_an_undefined_sequence_is_found() {
    let sequence = undefined_sequence();
    let data = instance(&sequence[..sequence.len() - 8]); // no sequence delimiter
    assert!(
        read_identity(&data, true).is_ok(),
        "identity precedes the sequence"
    );
    match validate(data.as_slice()) {
        Err(DicomError::Truncated {
            what,
            tag,
            declared,
            available,
            ..
        }) => {
            assert_eq!(what, "item header");
            assert_eq!(tag, Some(Tag(0x0008, 0x1140)));
            assert_eq!((declared, available), (8, 0));
        }
        other => panic!("{other:?}"),
    }
}

fn encapsulated(fragments: &[&[u8]], end: bool) -> Vec<u8> {
    let mut out = file_meta(Some(JPEG_BASELINE));
    out.extend(identity_elements(b"Doe^Jane"));
    out.extend(header((0x7FE0, 0x0010), b"OB", UNDEFINED));
    out.extend(item(0)); // empty basic offset table
    for fragment in fragments {
        out.extend(item(fragment.len() as u32));
        out.extend_from_slice(fragment);
    }
    if end {
        out.extend(sequence_delimitation());
    }
    out
}

#[test]
fn walks_encapsulated_fragments() {
    let data = encapsulated(&[&[0xFF; 100], &[0xD9; 50]], true);
    let summary = validate(data.as_slice()).expect("valid");
    assert_eq!(summary.fragment_count, 3);
    assert_eq!(summary.pixel_data_bytes, 150);
    assert_eq!(summary.instance_bytes, data.len() as u64);
}

#[test]
fn a_short_fragment_is_truncated() {
    let data = encapsulated(&[&[0xFF; 100], &[0xD9; 50]], true);
    // Cut 20 bytes into the last fragment's 50.
    let cut = &data[..data.len() - 8 - 30];
    assert!(read_identity(cut, true).is_ok());
    match validate(cut) {
        Err(DicomError::Truncated {
            what,
            tag,
            declared,
            available,
            offset,
            ..
        }) => {
            assert_eq!(what, "fragment");
            assert_eq!(tag, Some(Tag(0x7FE0, 0x0010)));
            assert_eq!((declared, available), (50, 20));
            assert_eq!(offset, (data.len() - 8 - 50) as u64);
        }
        other => panic!("{other:?}"),
    }
    // Without the sequence delimiter.
    let unterminated = encapsulated(&[&[0xFF; 100]], false);
    assert_eq!(code(validate(unterminated.as_slice())), "truncated");
}

#[test]
fn a_fragment_of_undefined_length_is_malformed() {
    let mut data = encapsulated(&[], false);
    data.extend(item(UNDEFINED));
    let err = validate(data.as_slice()).err();
    assert_eq!(
        err.as_ref().map(DicomError::code),
        Some("malformed"),
        "{err:?}"
    );
}

#[test]
fn an_item_longer_than_its_sequence_is_malformed() {
    let inner = el((0x0008, 0x1150), b"UI", &ui(SOP_CLASS));
    let mut sequence = header((0x0040, 0x0275), b"SQ", inner.len() as u32 + 8);
    sequence.extend(item(inner.len() as u32 + 2)); // 2 bytes too long
    sequence.extend(inner);
    sequence.extend([0, 0]);
    let data = instance(&sequence);
    assert_eq!(code(validate(data.as_slice())), "malformed");
}

#[test]
fn an_undefined_item_past_its_defined_sequence_is_malformed() {
    let mut body = item(UNDEFINED);
    body.extend(el((0x0008, 0x1150), b"UI", &ui(SOP_CLASS)));
    body.extend(item_delimitation());
    // The sequence claims to end in the middle of its item.
    let mut sequence = header((0x0040, 0x0275), b"SQ", 12);
    sequence.extend(body);
    let data = instance(&sequence);
    assert_eq!(code(validate(data.as_slice())), "malformed");
}

#[test]
fn an_element_longer_than_its_item_is_malformed() {
    let inner = el((0x0008, 0x1150), b"UI", &ui(SOP_CLASS));
    let mut body = item(inner.len() as u32 - 2);
    body.extend(inner);
    let mut sequence = header((0x0040, 0x0275), b"SQ", body.len() as u32);
    sequence.extend(body);
    let data = instance(&sequence);
    assert_eq!(code(validate(data.as_slice())), "malformed");
}

#[test]
fn nesting_is_bounded() {
    let depth = kura_dicom::NESTING_DEPTH_MAX as usize + 5;
    let mut nested = Vec::new();
    for _ in 0..depth {
        nested.extend(header((0x0040, 0x0275), b"SQ", UNDEFINED));
        nested.extend(item(UNDEFINED));
    }
    for _ in 0..depth {
        nested.extend(item_delimitation());
        nested.extend(sequence_delimitation());
    }
    let data = instance(&nested);
    let err = validate(data.as_slice()).err();
    assert_eq!(
        err.as_ref().map(DicomError::code),
        Some("limit_exceeded"),
        "{err:?}"
    );
    assert!(
        err.map(|e| e.to_string())
            .unwrap_or_default()
            .contains("dicom_nesting_depth (64 levels of nested sequences)")
    );

    // Just under the limit is fine.
    let mut ok = Vec::new();
    let depth = kura_dicom::NESTING_DEPTH_MAX as usize;
    for _ in 0..depth {
        ok.extend(header((0x0040, 0x0275), b"SQ", UNDEFINED));
        ok.extend(item(UNDEFINED));
    }
    for _ in 0..depth {
        ok.extend(item_delimitation());
        ok.extend(sequence_delimitation());
    }
    let summary = validate(instance(&ok).as_slice()).expect("valid");
    assert_eq!(summary.nesting_depth_max, kura_dicom::NESTING_DEPTH_MAX);
}

#[test]
fn an_unknown_vr_is_malformed() {
    let mut bad = vec![0x40, 0x00, 0x75, 0x02];
    bad.extend(b"ZZ");
    bad.extend([2, 0, b'1', b'2']);
    let data = instance(&bad);
    let err = validate(data.as_slice()).err();
    assert_eq!(err.as_ref().map(DicomError::code), Some("malformed"));
    assert!(
        err.map(|e| e.to_string())
            .unwrap_or_default()
            .contains("(0040,0275)")
    );
}

#[test]
fn stray_delimiters_are_malformed() {
    for stray in [item_delimitation(), sequence_delimitation(), item(0)] {
        let data = instance(&stray);
        assert_eq!(code(validate(data.as_slice())), "malformed");
    }
}

#[test]
fn transfer_syntax_problems_are_named() {
    let mut data = file_meta(None);
    data.extend(identity_elements(b"Doe"));
    assert_eq!(code(read_identity(&data, true)), "missing_transfer_syntax");
    assert_eq!(code(validate(data.as_slice())), "missing_transfer_syntax");

    let mut data = file_meta(Some("1.2.3.4.5.6"));
    data.extend(identity_elements(b"Doe"));
    match read_identity(&data, true) {
        Err(DicomError::UnsupportedTransferSyntax { uid }) => assert_eq!(uid, "1.2.3.4.5.6"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        code(validate(data.as_slice())),
        "unsupported_transfer_syntax"
    );

    let mut data = file_meta(Some("1.2.840.10008.1.2.x"));
    data.extend(identity_elements(b"Doe"));
    match read_identity(&data, true) {
        Err(DicomError::MalformedUid { attribute, tag, .. }) => {
            assert_eq!(attribute, "Transfer Syntax UID");
            assert_eq!(tag, Tag(0x0002, 0x0010));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn uid_problems_are_named_without_patient_data() {
    // A writer that put the patient's name into the SOP Instance UID.
    let mut data = file_meta(Some(EXPLICIT_LE));
    data.extend(el((0x0008, 0x0016), b"UI", &ui(SOP_CLASS)));
    data.extend(el((0x0008, 0x0018), b"UI", &ui("Yamada^Tarou")));
    data.extend(el((0x0020, 0x000D), b"UI", &ui(STUDY)));
    data.extend(el((0x0020, 0x000E), b"UI", &ui(SERIES)));
    let err = read_identity(&data, true).err();
    match &err {
        Some(DicomError::MalformedUid { attribute, tag, .. }) => {
            assert_eq!(*attribute, "SOP Instance UID");
            assert_eq!(*tag, Tag(0x0008, 0x0018));
        }
        other => panic!("{other:?}"),
    }
    let message = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("(0008,0018)"), "{message}");
    assert!(!message.contains("Yamada"), "{message}");

    let leading_zero = {
        let mut d = file_meta(Some(EXPLICIT_LE));
        d.extend(el((0x0008, 0x0016), b"UI", &ui(SOP_CLASS)));
        d.extend(el((0x0008, 0x0018), b"UI", &ui(SOP_INSTANCE)));
        d.extend(el((0x0020, 0x000D), b"UI", &ui("1.2.03")));
        d.extend(el((0x0020, 0x000E), b"UI", &ui(SERIES)));
        d
    };
    assert!(matches!(
        read_identity(&leading_zero, true),
        Err(DicomError::MalformedUid {
            attribute: "Study Instance UID",
            ..
        })
    ));

    let no_series = {
        let mut d = file_meta(Some(EXPLICIT_LE));
        d.extend(el((0x0008, 0x0016), b"UI", &ui(SOP_CLASS)));
        d.extend(el((0x0008, 0x0018), b"UI", &ui(SOP_INSTANCE)));
        d.extend(el((0x0020, 0x000D), b"UI", &ui(STUDY)));
        d.extend(el((0x0028, 0x0010), b"US", &[4, 0]));
        d
    };
    match read_identity(&no_series, true) {
        Err(DicomError::MissingUid { attribute, tag }) => {
            assert_eq!(attribute, "Series Instance UID");
            assert_eq!(tag, Tag(0x0020, 0x000E));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_oversized_identifying_value_is_malformed() {
    let mut data = file_meta(Some(EXPLICIT_LE));
    data.extend(el((0x0008, 0x0016), b"UI", &ui(SOP_CLASS)));
    data.extend(el((0x0008, 0x0018), b"UI", &ui(SOP_INSTANCE)));
    data.extend(el((0x0010, 0x0010), b"UC", &vec![b'A'; 100_000]));
    assert_eq!(code(read_identity(&data, true)), "malformed");
}

#[test]
fn the_prefix_may_end_right_after_series_instance_uid() {
    let data = instance(&el((0x7FE0, 0x0010), b"OW", &[0; 1024]));
    let end_of_identity = data.len() - 1024 - 12;
    let identity = read_identity(&data[..end_of_identity], false).expect("identity");
    assert_eq!(identity.series_instance_uid, SERIES);
    assert_eq!(identity.patient_id, "PID42");
    assert_eq!(identity.modality, "OT");
    assert_eq!(identity.study_date, "20240102");
    assert!(matches!(
        read_identity(&data[..end_of_identity - 1], false),
        Err(DicomError::NeedMoreData { .. })
    ));
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).expect("deflate");
    encoder.finish().expect("deflate")
}

fn deflated_instance(data_set: &[u8]) -> Vec<u8> {
    let mut out = file_meta(Some(DEFLATED));
    out.extend(deflate(data_set));
    out
}

#[test]
fn deflated_data_sets_inflate_incrementally() {
    let mut data_set = identity_elements(b"Doe^Jane");
    data_set.extend(undefined_sequence().iter().copied().take(0)); // tags stay sorted
    data_set.extend(el((0x7FE0, 0x0010), b"OW", &vec![7; 300_000]));
    let data = deflated_instance(&data_set);
    let meta_len = file_meta(Some(DEFLATED)).len();

    let identity = read_identity(&data, true).expect("identity");
    assert_eq!(identity.sop_instance_uid, SOP_INSTANCE);
    assert_eq!(identity.transfer_syntax_uid, DEFLATED);
    let summary = validate(data.as_slice()).expect("valid");
    assert_eq!(summary.data_set_bytes, data_set.len() as u64);
    assert_eq!(summary.pixel_data_bytes, 300_000);
    assert_eq!(summary.instance_bytes, data.len() as u64);

    // Cut anywhere in the deflate stream: a prefix never errs other than
    // asking for more, validate says truncated.
    for cut in (meta_len..data.len()).step_by(7) {
        match read_identity(&data[..cut], false) {
            Ok(found) => assert_eq!(found, identity, "cut at {cut}"),
            Err(DicomError::NeedMoreData { .. }) => {}
            Err(e) => panic!("cut at {cut}: {e}"),
        }
        assert_eq!(code(validate(&data[..cut])), "truncated", "cut at {cut}");
    }
}

#[test]
fn a_deflate_stream_cut_between_elements_is_truncated() {
    // The whole data set inflates, but the stream's end marker is missing.
    let data_set = identity_elements(b"Doe^Jane");
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(&data_set).expect("deflate");
    encoder.flush().expect("sync flush"); // everything out, no final block
    let compressed = encoder.get_ref().clone();
    let mut data = file_meta(Some(DEFLATED));
    data.extend(compressed);
    assert!(read_identity(&data, true).is_ok());
    assert!(matches!(
        validate(data.as_slice()),
        Err(DicomError::DeflateTruncated { .. })
    ));
}

#[test]
fn bytes_after_a_deflate_stream_are_counted() {
    let mut data = deflated_instance(&identity_elements(b"Doe^Jane"));
    data.extend([0u8; 10]);
    let summary = validate(data.as_slice()).expect("valid");
    assert_eq!(summary.instance_bytes, data.len() as u64);
}

#[test]
fn corrupt_deflate_is_malformed() {
    let mut data = file_meta(Some(DEFLATED));
    data.extend([0xFF; 200]);
    assert_eq!(code(validate(data.as_slice())), "malformed");
    assert_eq!(code(read_identity(&data, false)), "malformed");
}

#[test]
fn implicit_vr_with_private_undefined_sequences() {
    let mut data = file_meta(Some(IMPLICIT_LE));
    data.extend(implicit((0x0008, 0x0016), &ui(SOP_CLASS)));
    data.extend(implicit((0x0008, 0x0018), &ui(SOP_INSTANCE)));
    // A private sequence of undefined length: only its length says so.
    let mut private = vec![0x09, 0x00, 0x10, 0x10, 0xFF, 0xFF, 0xFF, 0xFF];
    private.extend(item(UNDEFINED));
    private.extend(implicit((0x0009, 0x1011), b"ab"));
    private.extend(item_delimitation());
    private.extend(sequence_delimitation());
    data.extend(&private);
    data.extend(implicit((0x0010, 0x0010), &text(b"Doe^Jane")));
    data.extend(implicit((0x0020, 0x000D), &ui(STUDY)));
    data.extend(implicit((0x0020, 0x000E), &ui(SERIES)));
    // A standard defined-length sequence the dictionary knows is SQ.
    let inner = implicit((0x0008, 0x1150), &ui(SOP_CLASS));
    let mut body = item(inner.len() as u32);
    body.extend(inner);
    data.extend(implicit((0x0040, 0x0275), &body));
    let identity = read_identity(&data, true).expect("identity");
    assert_eq!(identity.series_instance_uid, SERIES);
    let summary = validate(data.as_slice()).expect("valid");
    assert_eq!(summary.item_count, 2);
    assert_eq!(summary.nesting_depth_max, 1);
}

#[test]
fn an_undefined_length_un_is_an_implicit_sequence() {
    let mut un = header((0x0040, 0x0275), b"UN", UNDEFINED);
    un.extend(item(UNDEFINED));
    un.extend(implicit((0x0008, 0x1150), &ui(SOP_CLASS)));
    un.extend(item_delimitation());
    un.extend(sequence_delimitation());
    let summary = validate(instance(&un).as_slice()).expect("valid");
    assert_eq!(summary.item_count, 1);
}

#[test]
fn garbage_after_dicm_is_refused() {
    let mut data = vec![0u8; 128];
    data.extend(b"DICM");
    assert_eq!(code(read_identity(&data, true)), "not_part10");
    assert!(matches!(
        read_identity(&data, false),
        Err(DicomError::NeedMoreData { have: 132 })
    ));
    data.extend(b"\x08\x00\x16\x00UI\x02\x001\x00");
    assert_eq!(code(read_identity(&data, true)), "not_part10");
    assert_eq!(code(validate(data.as_slice())), "not_part10");
    assert_eq!(code(read_identity(&data[..100], true)), "not_part10");
    assert!(matches!(
        read_identity(&data[..100], false),
        Err(DicomError::NeedMoreData { have: 100 })
    ));
    assert_eq!(code(read_identity(&[], true)), "not_part10");
}

#[test]
fn reader_errors_are_io_errors() {
    struct Failing(usize);
    impl std::io::Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("client went away"));
            }
            let n = buf.len().min(self.0);
            buf[..n].fill(0);
            self.0 -= n;
            Ok(n)
        }
    }
    let err = validate(Failing(64)).err();
    assert_eq!(err.as_ref().map(DicomError::code), Some("io"), "{err:?}");
}

#[test]
fn configured_limits_name_themselves() {
    // Three levels of nesting and a handful of elements.
    let mut nested = Vec::new();
    for _ in 0..3 {
        nested.extend(header((0x0040, 0x0275), b"SQ", UNDEFINED));
        nested.extend(item(UNDEFINED));
    }
    for _ in 0..3 {
        nested.extend(item_delimitation());
        nested.extend(sequence_delimitation());
    }
    let data = instance(&nested);
    let summary = validate(data.as_slice()).expect("valid");
    let tight = kura_dicom::ParseLimits {
        nesting_depth: 2,
        ..Default::default()
    };
    let err = kura_dicom::validate_with(data.as_slice(), tight).expect_err("too deep");
    assert_eq!(err.code(), "limit_exceeded");
    assert!(
        err.to_string().contains("dicom_nesting_depth (2 levels"),
        "{err}"
    );
    let few = kura_dicom::ParseLimits {
        elements: summary.element_count - 1,
        ..Default::default()
    };
    let err = kura_dicom::validate_with(data.as_slice(), few).expect_err("too many");
    assert!(
        err.to_string().contains(&format!(
            "dicom_elements ({} elements)",
            summary.element_count - 1
        )),
        "{err}"
    );
    let exact = kura_dicom::ParseLimits {
        elements: summary.element_count,
        nesting_depth: 3,
    };
    kura_dicom::validate_with(data.as_slice(), exact).expect("exactly at the limits");
}

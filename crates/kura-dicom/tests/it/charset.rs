//! Patient's Name decoded from real files in many character sets (the
//! fixtures in `tests/fixtures/charset`, see the README there), compared with
//! the strings of DICOM PS3.5 Annexes H, I and J and pydicom's tests.

use std::path::PathBuf;

use kura_dicom::{read_identity, validate};

const NAMES: &[(&str, &str, &str)] = &[
    ("chrArab.dcm", "ISO_IR 127", "قباني^لنزار"),
    ("chrFren.dcm", "ISO_IR 100", "Buc^Jérôme"),
    ("chrFrenMulti.dcm", "ISO_IR 100", "Buc^Jérôme"),
    ("chrGerm.dcm", "ISO_IR 100", "Äneas^Rüdiger"),
    ("chrGreek.dcm", "ISO_IR 126", "Διονυσιος"),
    (
        "chrH31.dcm",
        "\\ISO 2022 IR 87",
        "Yamada^Tarou=山田^太郎=やまだ^たろう",
    ),
    (
        "chrH32.dcm",
        "ISO 2022 IR 13\\ISO 2022 IR 87",
        "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう",
    ),
    ("chrHbrw.dcm", "ISO_IR 138", "שרון^דבורה"),
    (
        "chrI2.dcm",
        "\\ISO 2022 IR 149",
        "Hong^Gildong=洪^吉洞=홍^길동",
    ),
    ("chrJapMulti.dcm", "\\ISO 2022 IR 87", "やまだ^たろう"),
    (
        "chrJapMultiExplicitIR6.dcm",
        "ISO 2022 IR 6\\ISO 2022 IR 87",
        "やまだ^たろう",
    ),
    ("chrKoreanMulti.dcm", "\\ISO 2022 IR 149", "김희중"),
    ("chrRuss.dcm", "ISO_IR 144", "Люкceмбypг"),
    // PS3.5 J.1 and J.2 keep the trailing '=' of the empty phonetic group.
    ("chrX1.dcm", "ISO_IR 192", "Wang^XiaoDong=王^小東="),
    ("chrX2.dcm", "GB18030", "Wang^XiaoDong=王^小东="),
];

#[test]
fn patient_names_decode_exactly() {
    let dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("tests/fixtures/charset");
    for (file, charset, name) in NAMES {
        let data = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let identity = read_identity(&data, true).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(identity.patient_name, *name, "{file}");
        assert_eq!(identity.specific_character_set, *charset, "{file}");
        validate(data.as_slice()).unwrap_or_else(|e| panic!("{file}: {e}"));
        // The name must not leak through Debug.
        let debug = format!("{identity:?}");
        assert!(!debug.contains(name), "{file}: {debug}");
    }
}

//! Text of an instance decoded by its Specific Character Set (0008,0005).
//!
//! Two routes, chosen per value of (0008,0005):
//! - a single character set without code extensions that dicom-rs decodes
//!   correctly (default repertoire, ISO_IR 100/101/109/110/126/127/138/144/
//!   166, ISO_IR 13, ISO_IR 192, GB18030, GBK) goes to
//!   `dicom_encoding::text::SpecificCharacterSet`;
//! - everything with ISO 2022 code extensions (several values, or an
//!   "ISO 2022 IR …" term: the Japanese, Korean and Chinese multi-byte sets,
//!   and single-byte sets switched by escape sequences) and the sets dicom-rs
//!   lacks (ISO_IR 148, ISO_IR 203) goes through [`decode_iso2022`]: the bytes
//!   are split on escape sequences into runs, and each run is decoded by the
//!   `encoding_rs` decoder of the set its escape sequence designated
//!   (ISO-2022-JP for JIS X 0208, EUC-JP for JIS X 0212, Shift_JIS for JIS X
//!   0201 katakana, EUC-KR for KS X 1001, GBK for GB 2312, ISO-8859-x).
//!   dicom-rs takes (0008,0005) as one value only, so it cannot do these.
//!
//! Decoding never fails on bad bytes: they become U+FFFD (or, on the dicom-rs
//! route, its `\ooo` octal escapes). A name that cannot be spelled must not
//! cost the archive an instance; the only error is an unknown charset term.

use dicom_encoding::text::{SpecificCharacterSet, TextCodec};
use encoding_rs::Encoding;

use crate::DicomError;

const ESC: u8 = 0x1B;
const REPLACEMENT: char = char::REPLACEMENT_CHARACTER;

/// Decodes a Person Name (PN) value. `raw` is the element value as stored
/// (trailing space/NUL padding is removed here); `charset` holds the values of
/// Specific Character Set (0008,0005), e.g. `["", "ISO 2022 IR 87"]`; an empty
/// slice means the default repertoire.
///
/// The result keeps the PN structure: component groups joined by `=`,
/// components by `^`, e.g. `Yamada^Tarou=山田^太郎=やまだ^たろう`.
pub fn decode_person_name(raw: &[u8], charset: &[&str]) -> Result<String, DicomError> {
    decode(raw, charset, Delimiters::PersonName)
}

/// Decodes a text value (LO, SH, ST, LT, UT, UC) like
/// [`decode_person_name`], where only `\`, CR, LF, FF and TAB reset code
/// extensions.
pub fn decode_text(raw: &[u8], charset: &[&str]) -> Result<String, DicomError> {
    decode(raw, charset, Delimiters::Text)
}

/// Like [`decode_person_name`], but an unknown charset term falls back to the
/// default repertoire (escape sequences still honoured) instead of failing.
pub(crate) fn decode_person_name_lossy(raw: &[u8], charset: &[&str]) -> String {
    decode_person_name(raw, charset)
        .unwrap_or_else(|_| decode_iso2022(trim_padding(raw), DEFAULT, Delimiters::PersonName))
}

/// Like [`decode_text`], with the fallback of [`decode_person_name_lossy`].
pub(crate) fn decode_text_lossy(raw: &[u8], charset: &[&str]) -> String {
    decode_text(raw, charset)
        .unwrap_or_else(|_| decode_iso2022(trim_padding(raw), DEFAULT, Delimiters::Text))
}

/// Splits a raw (0008,0005) value into its terms, without padding. Value 1 may
/// be empty (the default repertoire, with code extensions in later values).
pub(crate) fn split_charset(raw: &str) -> Vec<&str> {
    let trimmed = raw.trim_end_matches([' ', '\0']);
    if trimmed.is_empty() {
        return Vec::new();
    }
    trimmed.split('\\').map(|t| t.trim_matches(' ')).collect()
}

/// Which delimiters reset the character set to value 1 of (0008,0005)
/// (PS3.5 6.1.2.5.3). Writers must switch back before them themselves; the
/// reset makes a missing switch harm one component instead of the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delimiters {
    PersonName,
    Text,
}

impl Delimiters {
    fn resets_at(self, byte: u8) -> bool {
        match byte {
            b'\\' | b'\r' | b'\n' | b'\t' | 0x0C => true,
            b'^' | b'=' => self == Delimiters::PersonName,
            _ => false,
        }
    }
}

fn decode(raw: &[u8], charset: &[&str], delimiters: Delimiters) -> Result<String, DicomError> {
    let raw = trim_padding(raw);
    let first = charset.first().map_or("", |t| t.trim_matches(' '));
    let extensions = charset.get(1..).unwrap_or(&[]);

    // Stand-alone sets allow no code extensions (PS3.3 C.12.1.1.2): decode
    // with value 1 and ignore the rest, as other toolkits do.
    let stand_alone = matches!(first, "ISO_IR 192" | "GB18030" | "GBK");
    let single_without_extensions = extensions.is_empty() && !first.starts_with("ISO 2022");
    if stand_alone || single_without_extensions {
        let code = if first.is_empty() { "ISO_IR 6" } else { first };
        if let Some(codec) = SpecificCharacterSet::from_code(code)
            && let Ok(text) = codec.decode(raw)
        {
            return Ok(text);
        }
    }

    let initial = designation(first).ok_or_else(|| unknown(first))?;
    for term in extensions {
        let term = term.trim_matches(' ');
        let known = designation(term).is_some() || matches!(term, "ISO_IR 192" | "GB18030" | "GBK");
        if !known {
            return Err(unknown(term));
        }
    }
    Ok(decode_iso2022(raw, initial, delimiters))
}

fn unknown(term: &str) -> DicomError {
    DicomError::UnknownCharset {
        term: term.to_string(),
    }
}

fn trim_padding(raw: &[u8]) -> &[u8] {
    let end = raw
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |i| i + 1);
    &raw[..end]
}

/// The code element G0 (bytes 0x21–0x7E).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum G0 {
    /// ISO-IR 6 (ASCII), or ISO-IR 14 (JIS X 0201 romaji), read as ASCII like
    /// other toolkits do: its two differing code points (yen, overline) would
    /// otherwise turn the DICOM value delimiter `\` into `¥`.
    Ascii,
    /// ISO-IR 87, JIS X 0208: two bytes per character.
    JisX0208,
    /// ISO-IR 159, JIS X 0212: two bytes per character.
    JisX0212,
}

/// The code element G1 (bytes 0xA0–0xFF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum G1 {
    /// Nothing designated: bytes ≥ 0x80 are undecodable.
    None,
    /// ISO 8859-1: the byte is the code point.
    Latin1,
    /// Another single-byte ISO 8859 set (or its Windows superset, identical in
    /// 0xA0–0xFF), decoded by encoding_rs.
    SingleByte(&'static Encoding),
    /// ISO-IR 13, JIS X 0201 katakana.
    Katakana,
    /// ISO-IR 149, KS X 1001: two bytes per character.
    KsX1001,
    /// ISO-IR 58, GB 2312: two bytes per character.
    Gb2312,
}

impl G1 {
    fn is_double_byte(self) -> bool {
        matches!(self, G1::KsX1001 | G1::Gb2312)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    g0: G0,
    g1: G1,
}

/// The default repertoire. Strictly ASCII only, but writers put Latin-1 there
/// so often that dicom-rs and pydicom both read it as Latin-1; so do we.
const DEFAULT: State = State {
    g0: G0::Ascii,
    g1: G1::Latin1,
};

/// The state a (0008,0005) term starts in (for value 1), or `None` if the
/// term is unknown or stand-alone.
fn designation(term: &str) -> Option<State> {
    use encoding_rs::{
        ISO_8859_2, ISO_8859_3, ISO_8859_4, ISO_8859_5, ISO_8859_6, ISO_8859_7, ISO_8859_8,
        ISO_8859_15, WINDOWS_874, WINDOWS_1254,
    };
    let g1 = match term {
        "" | "ISO_IR 6" | "ISO 2022 IR 6" => return Some(DEFAULT),
        "ISO_IR 100" | "ISO 2022 IR 100" => G1::Latin1,
        "ISO_IR 101" | "ISO 2022 IR 101" => G1::SingleByte(ISO_8859_2),
        "ISO_IR 109" | "ISO 2022 IR 109" => G1::SingleByte(ISO_8859_3),
        "ISO_IR 110" | "ISO 2022 IR 110" => G1::SingleByte(ISO_8859_4),
        "ISO_IR 144" | "ISO 2022 IR 144" => G1::SingleByte(ISO_8859_5),
        "ISO_IR 127" | "ISO 2022 IR 127" => G1::SingleByte(ISO_8859_6),
        "ISO_IR 126" | "ISO 2022 IR 126" => G1::SingleByte(ISO_8859_7),
        "ISO_IR 138" | "ISO 2022 IR 138" => G1::SingleByte(ISO_8859_8),
        // encoding_rs has ISO 8859-9 and TIS-620 only as their Windows
        // supersets, which agree with them on 0xA0–0xFF.
        "ISO_IR 148" | "ISO 2022 IR 148" => G1::SingleByte(WINDOWS_1254),
        "ISO_IR 166" | "ISO 2022 IR 166" => G1::SingleByte(WINDOWS_874),
        "ISO_IR 203" | "ISO 2022 IR 203" => G1::SingleByte(ISO_8859_15),
        "ISO_IR 13" | "ISO 2022 IR 13" => G1::Katakana,
        // Multi-byte G0 sets are only reached by escape sequences.
        "ISO 2022 IR 87" | "ISO 2022 IR 159" => G1::None,
        "ISO 2022 IR 149" => G1::KsX1001,
        "ISO 2022 IR 58" => G1::Gb2312,
        _ => return None,
    };
    Some(State { g0: G0::Ascii, g1 })
}

/// What an escape sequence designates.
#[derive(Debug, Clone, Copy)]
enum Designate {
    G0(G0),
    G1(G1),
}

/// Recognises the escape sequence at the start of `bytes` (PS3.3 C.12-3 and
/// C.12-4): its length and what it designates.
fn escape_sequence(bytes: &[u8]) -> Option<(usize, Designate)> {
    use encoding_rs::{
        ISO_8859_2, ISO_8859_3, ISO_8859_4, ISO_8859_5, ISO_8859_6, ISO_8859_7, ISO_8859_8,
        ISO_8859_15, WINDOWS_874, WINDOWS_1254,
    };
    match bytes {
        [ESC, b'(', b'B', ..] | [ESC, b'(', b'J', ..] => Some((3, Designate::G0(G0::Ascii))),
        [ESC, b'$', b'B', ..] | [ESC, b'$', b'@', ..] => Some((3, Designate::G0(G0::JisX0208))),
        [ESC, b'$', b'(', b'D', ..] => Some((4, Designate::G0(G0::JisX0212))),
        [ESC, b')', b'I', ..] => Some((3, Designate::G1(G1::Katakana))),
        [ESC, b'$', b')', b'C', ..] => Some((4, Designate::G1(G1::KsX1001))),
        [ESC, b'$', b')', b'A', ..] => Some((4, Designate::G1(G1::Gb2312))),
        [ESC, b'-', final_byte, ..] => {
            let g1 = match final_byte {
                b'A' => G1::Latin1,
                b'B' => G1::SingleByte(ISO_8859_2),
                b'C' => G1::SingleByte(ISO_8859_3),
                b'D' => G1::SingleByte(ISO_8859_4),
                b'F' => G1::SingleByte(ISO_8859_7),
                b'G' => G1::SingleByte(ISO_8859_6),
                b'H' => G1::SingleByte(ISO_8859_8),
                b'L' => G1::SingleByte(ISO_8859_5),
                b'M' => G1::SingleByte(WINDOWS_1254),
                b'T' => G1::SingleByte(WINDOWS_874),
                b'b' => G1::SingleByte(ISO_8859_15),
                _ => return None,
            };
            Some((3, Designate::G1(g1)))
        }
        _ => None,
    }
}

/// Which decoder a run of bytes goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Ascii,
    G0(G0),
    G1(G1),
}

/// Collects bytes into runs of one decoder and decodes each run whole, so
/// multi-byte decoders see complete characters.
struct Runs {
    out: String,
    run: Option<Run>,
    bytes: Vec<u8>,
}

impl Runs {
    fn push(&mut self, run: Run, bytes: &[u8]) {
        if self.run != Some(run) {
            self.flush();
            self.run = Some(run);
        }
        self.bytes.extend_from_slice(bytes);
    }

    fn push_char(&mut self, c: char) {
        self.flush();
        self.out.push(c);
    }

    fn flush(&mut self) {
        if let Some(run) = self.run.take() {
            decode_run(run, &self.bytes, &mut self.out);
        }
        self.bytes.clear();
    }

    fn finish(mut self) -> String {
        self.flush();
        self.out
    }
}

fn decode_run(run: Run, bytes: &[u8], out: &mut String) {
    match run {
        // Only bytes < 0x80 get here; ASCII is the identity.
        Run::Ascii | Run::G0(G0::Ascii) => out.extend(bytes.iter().map(|&b| char::from(b))),
        Run::G0(G0::JisX0208) => {
            // encoding_rs reads JIS X 0208 inside ISO-2022-JP: give it the
            // designation back.
            let mut jis = Vec::with_capacity(bytes.len() + 3);
            jis.extend_from_slice(b"\x1b$B");
            jis.extend_from_slice(bytes);
            push_decoded(encoding_rs::ISO_2022_JP, &jis, out);
        }
        Run::G0(G0::JisX0212) => {
            // ISO-2022-JP in encoding_rs lacks JIS X 0212, but EUC-JP has it
            // as code set 3: 0x8F followed by the two bytes with bit 8 set.
            let mut euc = Vec::with_capacity(bytes.len() / 2 * 3 + 1);
            for pair in bytes.chunks(2) {
                euc.push(0x8F);
                euc.extend(pair.iter().map(|b| b | 0x80));
            }
            push_decoded(encoding_rs::EUC_JP, &euc, out);
        }
        Run::G1(G1::None) => out.extend(bytes.iter().map(|_| REPLACEMENT)),
        // ISO 8859-1 is the first 256 code points of Unicode.
        Run::G1(G1::Latin1) => out.extend(bytes.iter().map(|&b| char::from(b))),
        Run::G1(G1::SingleByte(encoding)) => push_decoded(encoding, bytes, out),
        // Shift_JIS keeps JIS X 0201 katakana at 0xA1–0xDF as single bytes.
        Run::G1(G1::Katakana) => push_decoded(encoding_rs::SHIFT_JIS, bytes, out),
        // EUC-KR and GBK put KS X 1001 and GB 2312 at 0xA1–0xFE pairs, which
        // is exactly their G1 encoding.
        Run::G1(G1::KsX1001) => push_decoded(encoding_rs::EUC_KR, bytes, out),
        Run::G1(G1::Gb2312) => push_decoded(encoding_rs::GBK, bytes, out),
    }
}

fn push_decoded(encoding: &'static Encoding, bytes: &[u8], out: &mut String) {
    let (text, _had_errors) = encoding.decode_without_bom_handling(bytes);
    out.push_str(&text);
}

/// Decodes `raw` under ISO 2022 code extensions, starting in `initial`.
fn decode_iso2022(raw: &[u8], initial: State, delimiters: Delimiters) -> String {
    let mut runs = Runs {
        out: String::with_capacity(raw.len()),
        run: None,
        bytes: Vec::new(),
    };
    let mut state = initial;
    let mut i = 0;
    while let Some(&byte) = raw.get(i) {
        let rest = &raw[i..];
        if byte == ESC {
            match escape_sequence(rest) {
                Some((len, Designate::G0(g0))) => {
                    state.g0 = g0;
                    i += len;
                }
                Some((len, Designate::G1(g1))) => {
                    state.g1 = g1;
                    i += len;
                }
                None => {
                    // An escape we do not know: mark it and carry on with
                    // the current sets.
                    runs.push_char(REPLACEMENT);
                    i += 1;
                }
            }
            continue;
        }
        if byte >= 0x80 {
            let len = if state.g1.is_double_byte() && rest.get(1).is_some_and(|&b| b >= 0x80) {
                2
            } else {
                1
            };
            runs.push(Run::G1(state.g1), &rest[..len]);
            i += len;
            continue;
        }
        if state.g0 != G0::Ascii && (0x21..=0x7E).contains(&byte) {
            // A two-byte character: '^', '=' and '\' are ordinary bytes here.
            let len = if rest.get(1).is_some_and(|b| (0x21..=0x7E).contains(b)) {
                2
            } else {
                1
            };
            runs.push(Run::G0(state.g0), &rest[..len]);
            i += len;
            continue;
        }
        runs.push(Run::Ascii, &rest[..1]);
        if delimiters.resets_at(byte) {
            state = initial;
        }
        i += 1;
    }
    runs.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pn(raw: &[u8], charset: &[&str]) -> String {
        match decode_person_name(raw, charset) {
            Ok(name) => name,
            Err(e) => panic!("{e}"),
        }
    }

    fn text(raw: &[u8], charset: &[&str]) -> String {
        match decode_text(raw, charset) {
            Ok(text) => text,
            Err(e) => panic!("{e}"),
        }
    }

    // PS3.5 Annex H.3.1 (chrH31): ISO 2022 IR 87 in component groups 2 and 3.
    #[test]
    fn japanese_kanji_and_hiragana() {
        let raw =
            b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";
        assert_eq!(
            pn(raw, &["", "ISO 2022 IR 87"]),
            "Yamada^Tarou=山田^太郎=やまだ^たろう"
        );
    }

    // PS3.5 Annex H.3.2 (chrH32): half-width katakana (IR 13) in group 1.
    #[test]
    fn japanese_katakana() {
        let raw = b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J=\x1b$B$d$^$@\x1b(J^\x1b$B$?$m$&\x1b(J";
        assert_eq!(
            pn(raw, &["ISO 2022 IR 13", "ISO 2022 IR 87"]),
            "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"
        );
    }

    // pydicom test_japanese_multi_byte_personname: JIS X 0212 (鷗).
    #[test]
    fn japanese_supplementary_kanji() {
        let raw = b"Mori^Ogai=\x1b$B?9\x1b(B^\x1b$(Dl?\x1b$B30\x1b(B=\x1b$B$b$j\x1b(B^\x1b$B$*$&$,$$\x1b(B";
        assert_eq!(
            pn(raw, &["ISO 2022 IR 6", "ISO 2022 IR 87", "ISO 2022 IR 159"]),
            "Mori^Ogai=森^鷗外=もり^おうがい"
        );
    }

    // pydicom test_japanese_multi_byte_encoding: all three Japanese sets.
    #[test]
    fn japanese_mixed_text() {
        let raw = b"\x1b$B$\"\x1b(Ja\x1b)I\xb1\x1b$B%\"\x1b$(DmN\x1b(J";
        assert_eq!(
            text(
                raw,
                &["ISO 2022 IR 13", "ISO 2022 IR 87", "ISO 2022 IR 159"]
            ),
            "あaｱア齩"
        );
    }

    // PS3.5 Annex I.2 (chrI2).
    #[test]
    fn korean() {
        let raw = b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf";
        assert_eq!(
            pn(raw, &["", "ISO 2022 IR 149"]),
            "Hong^Gildong=洪^吉洞=홍^길동"
        );
    }

    // PS3.5 Annex K.2 and K.3: GB 2312 with code extensions.
    #[test]
    fn chinese_gb2312() {
        let raw = b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab= ";
        assert_eq!(pn(raw, &["", "ISO 2022 IR 58"]), "Zhang^XiaoDong=张^小东=");
        let line = b"1.\x1b$)A\xb5\xda\xd2\xbb\xd0\xd0\xce\xc4\xd7\xd6\xa1\xa3\r\n";
        assert_eq!(text(line, &["", "ISO 2022 IR 58"]), "1.第一行文字。\r\n");
    }

    // PS3.5 Annex J.1 and J.2.
    #[test]
    fn chinese_stand_alone() {
        let utf8 = b"Wang^XiaoDong=\xe7\x8e\x8b^\xe5\xb0\x8f\xe6\x9d\xb1= ";
        assert_eq!(pn(utf8, &["ISO_IR 192"]), "Wang^XiaoDong=王^小東=");
        let gb18030 = b"Wang^XiaoDong=\xcd\xf5^\xd0\xa1\xb6\xab=";
        assert_eq!(pn(gb18030, &["GB18030"]), "Wang^XiaoDong=王^小东=");
        // Stand-alone sets ignore (invalid) extensions.
        assert_eq!(
            pn(
                b"Buc^J\xc3\xa9r\xc3\xb4me",
                &["ISO_IR 192", "ISO 2022 IR 100"]
            ),
            "Buc^Jérôme"
        );
    }

    // pydicom ENCODED_NAMES: every single-byte set as a code extension.
    #[test]
    fn single_byte_code_extensions() {
        let cases: &[(&str, &str, &[u8])] = &[
            (
                "ISO 2022 IR 13",
                "ﾔﾏﾀﾞ^ﾀﾛｳ",
                b"\x1b\x29\x49\xd4\xcf\xc0\xde\x5e\x1b\x29\x49\xc0\xdb\xb3",
            ),
            (
                "ISO 2022 IR 100",
                "Buc^Jérôme",
                b"\x1b\x2d\x41\x42\x75\x63\x5e\x1b\x2d\x41\x4a\xe9\x72\xf4\x6d\x65",
            ),
            (
                "ISO 2022 IR 101",
                "Wałęsa",
                b"\x1b\x2d\x42\x57\x61\xb3\xea\x73\x61",
            ),
            (
                "ISO 2022 IR 109",
                "antaŭnomo",
                b"\x1b\x2d\x43\x61\x6e\x74\x61\xfd\x6e\x6f\x6d\x6f",
            ),
            (
                "ISO 2022 IR 110",
                "vārds",
                b"\x1b\x2d\x44\x76\xe0\x72\x64\x73",
            ),
            (
                "ISO 2022 IR 127",
                "قباني^لنزار",
                b"\x1b\x2d\x47\xe2\xc8\xc7\xe6\xea\x5e\x1b\x2d\x47\xe4\xe6\xd2\xc7\xd1",
            ),
            (
                "ISO 2022 IR 126",
                "Διονυσιος",
                b"\x1b\x2d\x46\xc4\xe9\xef\xed\xf5\xf3\xe9\xef\xf2",
            ),
            (
                "ISO 2022 IR 138",
                "שרון^דבורה",
                b"\x1b\x2d\x48\xf9\xf8\xe5\xef\x5e\x1b\x2d\x48\xe3\xe1\xe5\xf8\xe4",
            ),
            (
                "ISO 2022 IR 144",
                "Люкceмбypг",
                b"\x1b\x2d\x4c\xbb\xee\xda\x63\x65\xdc\xd1\x79\x70\xd3",
            ),
            (
                "ISO 2022 IR 148",
                "Çavuşoğlu",
                b"\x1b\x2d\x4d\xc7\x61\x76\x75\xfe\x6f\xf0\x6c\x75",
            ),
            (
                "ISO 2022 IR 166",
                "นามสกุล",
                b"\x1b\x2d\x54\xb9\xd2\xc1\xca\xa1\xd8\xc5",
            ),
        ];
        for (term, expected, encoded) in cases {
            let raw = [b"ASCII+".as_slice(), encoded].concat();
            assert_eq!(pn(&raw, &["", term]), format!("ASCII+{expected}"), "{term}");
        }
    }

    // A writer that forgot to re-escape after '^' loses only that component
    // (read in value 1's set), as in pydicom.
    #[test]
    fn delimiter_resets_to_value_one() {
        let raw = b"ASCII+\x1b)I\xd4\xcf\xc0\xde^\xc0\xdb\xb3";
        assert_eq!(pn(raw, &["", "ISO 2022 IR 13"]), "ASCII+ﾔﾏﾀﾞ^ÀÛ³");
        // In text, '^' is no delimiter.
        assert_eq!(text(raw, &["", "ISO 2022 IR 13"]), "ASCII+ﾔﾏﾀﾞ^ﾀﾛｳ");
    }

    #[test]
    fn value_one_and_escapes_mix() {
        assert_eq!(
            pn(
                b"Dionysios=\x1b\x2d\x46\xc4\xe9\xef\xed\xf5\xf3\xe9\xef\xf2",
                &["ISO 2022 IR 100", "ISO 2022 IR 126"]
            ),
            "Dionysios=Διονυσιος"
        );
        assert_eq!(
            pn(b"Buc^J\xe9r\xf4me", &["ISO 2022 IR 100", "ISO 2022 IR 144"]),
            "Buc^Jérôme"
        );
        assert_eq!(
            text(
                b"Buc^J\xe9r\xf4me\\\x1b\x2d\x46\xc4\xe9\xef\xed\xf5\xf3\xe9\xef\xf2\\\x1b\x2d\x4c\xbb\xee\xda\x63\x65\xdc\xd1\x79\x70\xd3",
                &["ISO 2022 IR 100", "ISO 2022 IR 144", "ISO 2022 IR 126"]
            ),
            "Buc^Jérôme\\Διονυσιος\\Люкceмбypг"
        );
    }

    #[test]
    fn single_sets_without_extensions() {
        let cases: &[(&str, &[u8], &str)] = &[
            ("ISO_IR 100", b"Buc^J\xe9r\xf4me", "Buc^Jérôme"),
            ("ISO_IR 100", b"\xc4neas^R\xfcdiger ", "Äneas^Rüdiger"),
            (
                "ISO_IR 126",
                b"\xc4\xe9\xef\xed\xf5\xf3\xe9\xef\xf2 ",
                "Διονυσιος",
            ),
            (
                "ISO_IR 127",
                b"\xe2\xc8\xc7\xe6\xea^\xe4\xe6\xd2\xc7\xd1 ",
                "قباني^لنزار",
            ),
            (
                "ISO_IR 138",
                b"\xf9\xf8\xe5\xef^\xe3\xe1\xe5\xf8\xe4",
                "שרון^דבורה",
            ),
            ("ISO_IR 144", b"\xbb\xee\xdace\xdc\xd1yp\xd3", "Люкceмбypг"),
            ("ISO_IR 148", b"\xc7avu\xfeo\xf0lu", "Çavuşoğlu"),
            ("ISO_IR 13", b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3", "ﾔﾏﾀﾞ^ﾀﾛｳ"),
        ];
        for (term, raw, expected) in cases {
            assert_eq!(pn(raw, &[term]), *expected, "{term}");
        }
    }

    /// The dicom-rs route and the encoding_rs route agree on every valid byte
    /// of the single-byte sets both know.
    #[test]
    fn routes_agree_on_single_byte_sets() {
        let all: Vec<u8> = (0x20..=0x7E)
            .chain(0xA0..=0xFF)
            .filter(|&b| b != b'\\' && b != b'^' && b != b'=')
            .collect();
        for term in [
            "ISO_IR 100",
            "ISO_IR 101",
            "ISO_IR 109",
            "ISO_IR 110",
            "ISO_IR 126",
            "ISO_IR 127",
            "ISO_IR 138",
            "ISO_IR 144",
        ] {
            let Some(state) = designation(term) else {
                panic!("{term} unknown")
            };
            for &b in &all {
                let by_dicom_rs = pn(&[b, b'x'], &[term]);
                let by_encoding_rs = decode_iso2022(&[b, b'x'], state, Delimiters::PersonName);
                // Bytes a set leaves undefined: dicom-rs writes an octal escape,
                // encoding_rs U+FFFD. Both say "not a character".
                if by_dicom_rs.starts_with('\\') {
                    assert!(by_encoding_rs.starts_with(REPLACEMENT), "{term} {b:#x}");
                } else {
                    assert_eq!(by_dicom_rs, by_encoding_rs, "{term} byte {b:#x}");
                }
            }
        }
    }

    #[test]
    fn default_repertoire_and_padding() {
        assert_eq!(pn(b"CompressedSamples^CT1 ", &[]), "CompressedSamples^CT1");
        assert_eq!(pn(b"Doe^John\0", &[""]), "Doe^John");
        assert_eq!(pn(b"   ", &[]), "");
    }

    #[test]
    fn unknown_terms_are_errors_lossy_is_not() {
        assert_eq!(
            decode_person_name(b"Doe", &["ISO_IR 999"]),
            Err(DicomError::UnknownCharset {
                term: "ISO_IR 999".into()
            })
        );
        assert_eq!(
            decode_person_name(b"Doe", &["ISO 2022 IR 100", "ISO 2022 IR 146"])
                .map_err(|e| e.code()),
            Err("unknown_charset")
        );
        assert_eq!(
            decode_person_name_lossy(b"Doe^J\xe9", &["ISO_IR 999"]),
            "Doe^Jé"
        );
    }

    #[test]
    fn broken_bytes_never_panic() {
        for raw in [
            &b"\x1b"[..],
            b"\x1b$",
            b"\x1b$(",
            b"\x1b$B;",
            b"\x1b$(D\xc4\xe9",
            b"\x1b$)C\xb1",
            b"\x1b%Gabc",
            b"\xff\xfe",
        ] {
            for charset in [
                &["", "ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149"][..],
                &["ISO_IR 192"],
                &[],
            ] {
                let _ = decode_person_name(raw, charset);
                let _ = decode_text(raw, charset);
            }
        }
    }

    #[test]
    fn splits_charset_values() {
        assert_eq!(
            split_charset("\\ISO 2022 IR 87 "),
            vec!["", "ISO 2022 IR 87"]
        );
        assert_eq!(split_charset("ISO_IR 192"), vec!["ISO_IR 192"]);
        assert_eq!(split_charset(" "), Vec::<&str>::new());
    }
}

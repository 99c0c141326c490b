//! Byte-level builders for synthetic Part-10 instances (explicit VR little
//! endian unless said otherwise), so tests can make exactly the broken
//! structure they are about.

pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
pub const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
pub const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
pub const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";

pub const SOP_CLASS: &str = "1.2.840.10008.5.1.4.1.1.7";
pub const SOP_INSTANCE: &str = "1.2.826.0.1.3680043.8.498.1";
pub const STUDY: &str = "1.2.826.0.1.3680043.8.498.2";
pub const SERIES: &str = "1.2.826.0.1.3680043.8.498.3";

/// A UI value padded with NUL to even length.
pub fn ui(uid: &str) -> Vec<u8> {
    let mut v = uid.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    v
}

/// A text value padded with a space to even length.
pub fn text(s: &[u8]) -> Vec<u8> {
    let mut v = s.to_vec();
    if v.len() % 2 == 1 {
        v.push(b' ');
    }
    v
}

fn long_vr(vr: &[u8; 2]) -> bool {
    matches!(
        vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"SV"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"UV"
    )
}

/// Explicit VR LE element header with length `len`.
pub fn header(tag: (u16, u16), vr: &[u8; 2], len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&tag.0.to_le_bytes());
    out.extend_from_slice(&tag.1.to_le_bytes());
    out.extend_from_slice(vr);
    if long_vr(vr) {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&len.to_le_bytes());
    } else {
        let short = u16::try_from(len).expect("short VR length");
        out.extend_from_slice(&short.to_le_bytes());
    }
    out
}

/// Explicit VR LE element.
pub fn el(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let len = u32::try_from(value.len()).expect("value length");
    let mut out = header(tag, vr, len);
    out.extend_from_slice(value);
    out
}

/// Implicit VR LE element.
pub fn implicit(tag: (u16, u16), value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&tag.0.to_le_bytes());
    out.extend_from_slice(&tag.1.to_le_bytes());
    out.extend_from_slice(&u32::try_from(value.len()).expect("len").to_le_bytes());
    out.extend_from_slice(value);
    out
}

pub const UNDEFINED: u32 = 0xFFFF_FFFF;

/// Item, item delimitation or sequence delimitation header.
pub fn item_header(element: u16, len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xFFFEu16.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out
}

pub fn item(len: u32) -> Vec<u8> {
    item_header(0xE000, len)
}

pub fn item_delimitation() -> Vec<u8> {
    item_header(0xE00D, 0)
}

pub fn sequence_delimitation() -> Vec<u8> {
    item_header(0xE0DD, 0)
}

/// Preamble, `DICM` and a file meta group naming `transfer_syntax`.
pub fn file_meta(transfer_syntax: Option<&str>) -> Vec<u8> {
    let mut group = Vec::new();
    group.extend(el((0x0002, 0x0001), b"OB", &[0, 1]));
    group.extend(el((0x0002, 0x0002), b"UI", &ui(SOP_CLASS)));
    group.extend(el((0x0002, 0x0003), b"UI", &ui(SOP_INSTANCE)));
    if let Some(ts) = transfer_syntax {
        group.extend(el((0x0002, 0x0010), b"UI", &ui(ts)));
    }
    group.extend(el((0x0002, 0x0012), b"UI", &ui("1.2.3.4")));
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    let len = u32::try_from(group.len()).expect("group length");
    out.extend(el((0x0002, 0x0000), b"UL", &len.to_le_bytes()));
    out.extend(group);
    out
}

/// The identifying top-level elements (explicit VR LE), with `name` as
/// Patient's Name in the default repertoire.
pub fn identity_elements(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(el((0x0008, 0x0016), b"UI", &ui(SOP_CLASS)));
    out.extend(el((0x0008, 0x0018), b"UI", &ui(SOP_INSTANCE)));
    out.extend(el((0x0008, 0x0020), b"DA", b"20240102"));
    out.extend(el((0x0008, 0x0060), b"CS", &text(b"OT")));
    out.extend(el((0x0010, 0x0010), b"PN", &text(name)));
    out.extend(el((0x0010, 0x0020), b"LO", &text(b"PID42")));
    out.extend(el((0x0020, 0x000D), b"UI", &ui(STUDY)));
    out.extend(el((0x0020, 0x000E), b"UI", &ui(SERIES)));
    out
}

/// A whole explicit VR LE instance: meta, identity, then `rest`.
pub fn instance(rest: &[u8]) -> Vec<u8> {
    let mut out = file_meta(Some(EXPLICIT_LE));
    out.extend(identity_elements(b"Doe^Jane"));
    out.extend_from_slice(rest);
    out
}

//! Synthetic instances for tests and benchmarks: a valid Part-10 header
//! (explicit VR little endian, MR) with the given UIDs, followed by native
//! pixel data of any size made of deterministic pseudo-random bytes, so
//! large instances can be streamed without ever existing in memory.
//!
//! The patient attributes are fixed placeholders (`Synthetic^Patient`,
//! `SYN-0001`); no real patient data is involved.

fn element(out: &mut Vec<u8>, group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) {
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    let long = matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT");
    if long {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(value);
}

fn padded(s: &str, pad: u8) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(pad);
    }
    v
}

/// The identifying attributes of a synthetic instance.
#[derive(Clone, Debug)]
pub struct Synthetic {
    pub study: String,
    pub series: String,
    pub sop: String,
}

const MR_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.4";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// Everything up to and including the Pixel Data element header, which
/// declares `pixel_bytes` (even) of native pixel data to follow.
pub fn head(s: &Synthetic, frames: u32, pixel_bytes: u32) -> Vec<u8> {
    let mut meta = Vec::new();
    element(&mut meta, 0x0002, 0x0001, b"OB", &[0, 1]);
    element(&mut meta, 0x0002, 0x0002, b"UI", &padded(MR_STORAGE, 0));
    element(&mut meta, 0x0002, 0x0003, b"UI", &padded(&s.sop, 0));
    element(&mut meta, 0x0002, 0x0010, b"UI", &padded(EXPLICIT_LE, 0));
    element(
        &mut meta,
        0x0002,
        0x0012,
        b"UI",
        &padded("1.2.392.200036.9999.1", 0),
    );
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    element(
        &mut out,
        0x0002,
        0x0000,
        b"UL",
        &(meta.len() as u32).to_le_bytes(),
    );
    out.extend_from_slice(&meta);
    element(&mut out, 0x0008, 0x0016, b"UI", &padded(MR_STORAGE, 0));
    element(&mut out, 0x0008, 0x0018, b"UI", &padded(&s.sop, 0));
    element(&mut out, 0x0008, 0x0020, b"DA", b"20261125");
    element(&mut out, 0x0008, 0x0060, b"CS", b"MR");
    element(
        &mut out,
        0x0010,
        0x0010,
        b"PN",
        &padded("Synthetic^Patient", b' '),
    );
    element(&mut out, 0x0010, 0x0020, b"LO", &padded("SYN-0001", b' '));
    element(&mut out, 0x0020, 0x000D, b"UI", &padded(&s.study, 0));
    element(&mut out, 0x0020, 0x000E, b"UI", &padded(&s.series, 0));
    element(&mut out, 0x0028, 0x0002, b"US", &1u16.to_le_bytes());
    element(&mut out, 0x0028, 0x0004, b"CS", b"MONOCHROME2 ");
    element(
        &mut out,
        0x0028,
        0x0008,
        b"IS",
        &padded(&frames.to_string(), b' '),
    );
    let frame_pixels = pixel_bytes / 2 / frames.max(1);
    let side = (f64::from(frame_pixels).sqrt() as u32).max(1);
    element(
        &mut out,
        0x0028,
        0x0010,
        b"US",
        &(side as u16).to_le_bytes(),
    );
    element(
        &mut out,
        0x0028,
        0x0011,
        b"US",
        &((frame_pixels / side) as u16).to_le_bytes(),
    );
    element(&mut out, 0x0028, 0x0100, b"US", &16u16.to_le_bytes());
    element(&mut out, 0x0028, 0x0101, b"US", &12u16.to_le_bytes());
    element(&mut out, 0x0028, 0x0102, b"US", &11u16.to_le_bytes());
    element(&mut out, 0x0028, 0x0103, b"US", &0u16.to_le_bytes());
    // Pixel Data header only; the value follows.
    out.extend_from_slice(&0x7FE0u16.to_le_bytes());
    out.extend_from_slice(&0x0010u16.to_le_bytes());
    out.extend_from_slice(b"OW\0\0");
    out.extend_from_slice(&pixel_bytes.to_le_bytes());
    out
}

/// Fills `buf` with the pixel bytes that start at byte `offset` of the
/// pixel data of instance `seed`: word i (8 bytes) is splitmix64(seed, i),
/// so pieces generated separately (at offsets that are multiples of 8)
/// equal the whole generated at once.
pub fn pixels(seed: u64, offset: u64, buf: &mut [u8]) {
    debug_assert!(offset.is_multiple_of(8), "offset must be a multiple of 8");
    let first_word = offset / 8;
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let mut z = seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add((first_word + i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let b = z.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// A whole synthetic instance in memory.
pub fn instance(s: &Synthetic, pixel_bytes: u32, seed: u64) -> Vec<u8> {
    let mut out = head(s, 1, pixel_bytes);
    let start = out.len();
    out.resize(start + pixel_bytes as usize, 0);
    pixels(seed, 0, &mut out[start..]);
    out
}

/// A UID under a private test root: `1.2.392.200036.9999.<prefix>.<n>`.
pub fn uid(prefix: &str, n: u64) -> String {
    format!("1.2.392.200036.9999.{prefix}.{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_instances_are_valid_and_pieces_equal_the_whole() {
        let s = Synthetic {
            study: uid("1", 1),
            series: uid("2", 1),
            sop: uid("3", 1),
        };
        let bytes = instance(&s, 64 * 1024, 9);
        let id = crate::read_identity(&bytes, true).expect("identity");
        assert_eq!(id.sop_instance_uid, s.sop);
        assert_eq!(id.study_instance_uid, s.study);
        assert_eq!(id.modality, "MR");
        let summary = crate::validate(bytes.as_slice()).expect("valid");
        assert_eq!(summary.pixel_data_bytes, 64 * 1024);
        let mut whole = vec![0u8; 4096];
        pixels(9, 0, &mut whole);
        let mut pieces = vec![0u8; 4096];
        let (a, b) = pieces.split_at_mut(1024);
        pixels(9, 0, a);
        pixels(9, 1024, b);
        assert_eq!(whole, pieces);
        assert_ne!(instance(&s, 1024, 1), instance(&s, 1024, 2));
    }
}

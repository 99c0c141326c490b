//! Fuzz harnesses: one per decoder of bytes Kura takes from outside or
//! from disk. Each must return for any input without panicking, without
//! unbounded memory, and keep the invariant it checks; a panic is a bug.
//!
//! The `fuzz_*` binaries feed them from AFL++ (`cargo afl`, stable Rust;
//! see README.md). `tests/replay.rs` runs every file of `corpus/<target>`
//! and `regressions/<target>` through them in the ordinary test suite, so
//! a crash once found stays fixed.

use kura_seal::{DataKey, Opener, Sealer};

/// The object key the sealed-object target opens under.
pub const FUZZ_OBJECT_KEY: [u8; 32] = [9; 32];

fn fuzz_data_key() -> DataKey {
    // A fixed key: the target explores the stream format, not the cipher.
    DataKey::from_bytes([7; 32])
}

/// Splits `data` into up to four pieces at offsets its first bytes give.
fn pieces(data: &[u8]) -> Vec<&[u8]> {
    let mut cuts: Vec<usize> = data
        .iter()
        .take(3)
        .map(|b| (usize::from(*b) * 97) % (data.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for c in cuts {
        out.push(&data[at..c.max(at)]);
        at = c.max(at);
    }
    out.push(&data[at..]);
    out
}

/// `kura_dicom::read_identity`: on the whole input, and on its first half
/// as a prefix; a prefix that yields an identity yields the whole's.
pub fn dicom_identity(data: &[u8]) {
    let whole = kura_dicom::read_identity(data, true);
    let half = &data[..data.len() / 2];
    if let Ok(id) = kura_dicom::read_identity(half, false) {
        assert_eq!(
            whole.as_ref().ok(),
            Some(&id),
            "a prefix gave an identity the whole input does not"
        );
    }
}

/// `kura_dicom::validate`, with the default limits and with tight ones.
pub fn dicom_validate(data: &[u8]) {
    if let Ok(summary) = kura_dicom::validate(data) {
        assert!(summary.instance_bytes <= data.len() as u64);
        assert!(summary.nesting_depth_max <= kura_dicom::NESTING_DEPTH_MAX);
    }
    let tight = kura_dicom::ParseLimits {
        nesting_depth: 2,
        elements: 16,
    };
    if let Ok(summary) = kura_dicom::validate_with(data, tight) {
        assert!(summary.element_count <= 16 && summary.nesting_depth_max <= 2);
    }
}

/// `kura_seal::Opener` over arbitrary sealed bytes fed in pieces: what
/// opens seals back to exactly the same bytes.
pub fn sealed_object(data: &[u8]) {
    let key = fuzz_data_key();
    let mut opener = Opener::new(&key, &FUZZ_OBJECT_KEY);
    let mut plain = Vec::new();
    for p in pieces(data) {
        if opener.push(p, &mut plain).is_err() {
            return;
        }
    }
    if opener.finish(&mut plain).is_err() {
        return;
    }
    assert_eq!(
        kura_seal::plain_len(data.len() as u64),
        Some(plain.len() as u64)
    );
    let mut sealer = Sealer::new(&key, &FUZZ_OBJECT_KEY);
    let mut again = Vec::new();
    let sealed = sealer
        .push(&plain, &mut again)
        .and_then(|()| sealer.finish(&mut again));
    assert!(sealed.is_ok());
    assert_eq!(again, data, "an opened object seals back to other bytes");
}

/// `Keyring::parse` of a key file, and what a parsed keyring does with
/// arbitrary sealed fields.
pub fn key_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(keys) = kura_seal::Keyring::parse(text, "fuzz") {
        for v in keys.versions() {
            assert!(keys.check_value(v).is_ok());
            assert!(keys.fingerprint(v, "t", &[0; 32]).is_ok());
        }
        let _ = keys.open_field(text, "ctx");
    }
    if let Ok(keys) = kura_seal::Keyring::parse(
        "1 0707070707070707070707070707070707070707070707070707070707070707",
        "fuzz",
    ) {
        let _ = keys.open_field(text, "ctx");
        let _ = kura_seal::field_version(text);
    }
}

/// The internal payload codec on what a voter or peer receives: a
/// command, a query, a manifest; what decodes re-encodes to the same bytes.
pub fn meta_payload(data: &[u8]) {
    use kura_proto::codec::{decode, encode};
    use kura_proto::meta::{Command, Query};
    if let Ok(cmd) = decode::<Command>(data) {
        let _ = cmd.validate();
        let again = encode(&cmd).ok().and_then(|b| decode::<Command>(&b).ok());
        assert_eq!(again.as_ref(), Some(&cmd), "a command does not round-trip");
    }
    if let Ok(q) = decode::<Query>(data) {
        assert!(encode(&q).is_ok());
    }
    if let Ok(m) = decode::<kura_placement::Manifest>(data) {
        let _ = m.validate();
    }
}

/// A shard as a storage node reads it back from disk or a peer sends it.
pub fn shard(data: &[u8]) {
    if let Ok(h) = kura_erasure::ShardHeader::decode(data) {
        assert_eq!(h.to_bytes()[..], data[..kura_erasure::SHARD_HEADER_BYTES]);
    }
    if let Ok(s) = kura_erasure::Shard::decode(data) {
        assert_eq!(s.encode_to_vec(), data, "a shard does not round-trip");
    }
    let _ = kura_erasure::Shard::verify(data);
}

use proptest::prelude::*;

use super::*;

const KEY1: &str = "1 1111111111111111111111111111111111111111111111111111111111111111";
const KEY2: &str = "2 2222222222222222222222222222222222222222222222222222222222222222";

fn ring(lines: &[&str]) -> Keyring {
    Keyring::parse(&lines.join("\n"), "test keys").unwrap()
}

fn seal(data_key: &DataKey, object_key: &[u8; 32], plain: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut s = Sealer::new(data_key, object_key);
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts {
        let c = c.min(plain.len()).max(at);
        s.push(&plain[at..c], &mut out).unwrap();
        at = c;
    }
    s.push(&plain[at..], &mut out).unwrap();
    let (hash, len) = s.finish(&mut out).unwrap();
    assert_eq!(hash, *blake3::hash(plain).as_bytes());
    assert_eq!(len, plain.len() as u64);
    out
}

fn open(
    data_key: &DataKey,
    object_key: &[u8; 32],
    sealed: &[u8],
    step: usize,
) -> Result<Vec<u8>, SealError> {
    let mut o = Opener::new(data_key, object_key);
    let mut out = Vec::new();
    for piece in sealed.chunks(step.max(1)) {
        o.push(piece, &mut out)?;
    }
    o.finish(&mut out)?;
    Ok(out)
}

fn sample(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn seal_open_round_trip(len in 0usize..300_000, cuts in proptest::collection::vec(0usize..300_000, 0..6), step in 1usize..200_000) {
        let mut cuts = cuts;
        cuts.sort_unstable();
        let plain = sample(len);
        let dk = DataKey::generate().unwrap();
        let sealed = seal(&dk, &[7; 32], &plain, &cuts);
        prop_assert_eq!(sealed.len() as u64, sealed_len(len as u64));
        prop_assert_eq!(plain_len(sealed.len() as u64), Some(len as u64));
        prop_assert_eq!(open(&dk, &[7; 32], &sealed, step).unwrap(), plain);
    }
}

#[test]
fn lengths_at_chunk_boundaries() {
    for plain in [0u64, 1, 65_535, 65_536, 65_537, 131_072, 131_073] {
        let sealed = sealed_len(plain);
        assert_eq!(plain_len(sealed), Some(plain), "plain {plain}");
    }
    assert_eq!(sealed_len(0), 16);
    assert_eq!(sealed_len(65_536), 65_552);
    assert_eq!(sealed_len(65_537), 65_537 + 32);
    // Lengths no object seals to.
    assert_eq!(plain_len(0), None);
    assert_eq!(plain_len(15), None);
    assert_eq!(plain_len(65_553), None);
}

#[test]
fn truncation_reordering_splicing_and_flips_are_detected() {
    let dk = DataKey::generate().unwrap();
    let plain = sample(3 * CHUNK_PLAIN + 100);
    let sealed = seal(&dk, &[1; 32], &plain, &[]);
    assert_eq!(open(&dk, &[1; 32], &sealed, 4096).unwrap(), plain);

    // Cut at a chunk boundary: the last remaining chunk was not sealed last.
    let cut = &sealed[..2 * CHUNK_SEALED];
    assert!(matches!(
        open(&dk, &[1; 32], cut, 4096),
        Err(SealError::ChunkRejected { chunk: 1 })
    ));
    // Cut inside a chunk, and cut to nothing.
    assert!(open(&dk, &[1; 32], &sealed[..sealed.len() - 1], 4096).is_err());
    assert!(matches!(
        open(&dk, &[1; 32], &[], 4096),
        Err(SealError::Truncated { bytes: 0 })
    ));
    // Two chunks swapped.
    let mut swapped = sealed.clone();
    swapped[..CHUNK_SEALED].copy_from_slice(&sealed[CHUNK_SEALED..2 * CHUNK_SEALED]);
    swapped[CHUNK_SEALED..2 * CHUNK_SEALED].copy_from_slice(&sealed[..CHUNK_SEALED]);
    assert!(matches!(
        open(&dk, &[1; 32], &swapped, 4096),
        Err(SealError::ChunkRejected { chunk: 0 })
    ));
    // One bit flipped in the last chunk.
    let mut flipped = sealed.clone();
    let last = flipped.len() - 20;
    flipped[last] ^= 1;
    assert!(matches!(
        open(&dk, &[1; 32], &flipped, 4096),
        Err(SealError::ChunkRejected { chunk: 3 })
    ));
    // The same data key under another object key (associated data), and
    // another data key.
    assert!(open(&dk, &[2; 32], &sealed, 4096).is_err());
    assert!(open(&DataKey::generate().unwrap(), &[1; 32], &sealed, 4096).is_err());
    // Appended bytes: the real last chunk is then opened as not last.
    let mut longer = sealed.clone();
    longer.extend_from_slice(&sealed[..CHUNK_SEALED]);
    assert!(open(&dk, &[1; 32], &longer, 4096).is_err());
}

#[test]
fn sealed_bytes_do_not_contain_the_plaintext() {
    let dk = DataKey::generate().unwrap();
    let plain = b"PATIENT^NAME sample text that must not appear".repeat(100);
    let sealed = seal(&dk, &[3; 32], &plain, &[]);
    assert!(!sealed.windows(12).any(|w| w == &plain[..12]));
    // Two data keys, same plaintext: unrelated ciphertexts.
    let other = seal(&DataKey::generate().unwrap(), &[3; 32], &plain, &[]);
    assert_ne!(sealed, other);
}

#[test]
fn wrap_opens_only_for_its_key_and_context() {
    let keys = ring(&[KEY1, KEY2]);
    assert_eq!(keys.current(), 2);
    assert_eq!(keys.versions(), vec![1, 2]);
    let ok = [9u8; 32];
    let ctx = WrapContext {
        tenant: "t1",
        sop_instance_uid: "1.2.3",
        object_key: &ok,
    };
    let secrets = Secrets {
        data_key: DataKey::generate().unwrap(),
        plain_blake3: [5; 32],
        patient_id: "PID-0042".into(),
    };
    let w = keys.wrap(1, &ctx, &secrets).unwrap();
    assert_eq!(w.key_version, 1);
    assert!(!w.bytes.windows(8).any(|x| x == b"PID-0042"));
    let back = keys.unwrap(&w, &ctx).unwrap();
    assert_eq!(back.plain_blake3, [5; 32]);
    assert_eq!(back.patient_id, "PID-0042");
    assert_eq!(*back.data_key.0, *secrets.data_key.0);
    // A second wrap of the same secrets uses another salt.
    assert_ne!(keys.wrap(1, &ctx, &secrets).unwrap().bytes, w.bytes);

    // Another instance, tenant or object key; the version field altered.
    for other in [
        WrapContext {
            sop_instance_uid: "1.2.4",
            ..ctx
        },
        WrapContext {
            tenant: "t2",
            ..ctx
        },
        WrapContext {
            object_key: &[8; 32],
            ..ctx
        },
    ] {
        assert!(matches!(
            keys.unwrap(&w, &other),
            Err(SealError::UnwrapFailed { version: 1 })
        ));
    }
    let relabelled = Wrapped {
        key_version: 2,
        ..w.clone()
    };
    assert!(matches!(
        keys.unwrap(&relabelled, &ctx),
        Err(SealError::UnwrapFailed { version: 2 })
    ));
    // The same version number holding another key (a wrong key file).
    let wrong = ring(&["1 3333333333333333333333333333333333333333333333333333333333333333"]);
    assert!(matches!(
        wrong.unwrap(&w, &ctx),
        Err(SealError::UnwrapFailed { version: 1 })
    ));
    assert_ne!(wrong.check_value(1).unwrap(), keys.check_value(1).unwrap());
    // A version the keyring lacks.
    let only2 = ring(&[KEY2]);
    let e = only2.unwrap(&w, &ctx).unwrap_err();
    assert!(
        matches!(e, SealError::UnknownKeyVersion { version: 1, .. }),
        "{e}"
    );
    // Malformed lengths.
    let short = Wrapped {
        bytes: w.bytes[..40].to_vec(),
        ..w.clone()
    };
    assert!(matches!(
        keys.unwrap(&short, &ctx),
        Err(SealError::WrappedMalformed { .. })
    ));
    // Too long a Patient ID is refused before anything is sealed.
    let long = Secrets {
        patient_id: "x".repeat(PATIENT_ID_MAX + 1),
        ..secrets
    };
    assert!(matches!(
        keys.wrap(1, &ctx, &long),
        Err(SealError::PatientIdTooLong(_))
    ));
}

#[test]
fn fingerprints_are_keyed_per_version_and_tenant() {
    let keys = ring(&[KEY1, KEY2]);
    let h = *blake3::hash(b"a known file").as_bytes();
    let f1 = keys.fingerprint(1, "t1", &h).unwrap();
    assert_eq!(f1, keys.fingerprint(1, "t1", &h).unwrap());
    assert_ne!(f1, h);
    assert_ne!(f1, keys.fingerprint(2, "t1", &h).unwrap());
    assert_ne!(f1, keys.fingerprint(1, "t2", &h).unwrap());
    assert_ne!(f1, *blake3::keyed_hash(&h, b"").as_bytes());
}

#[test]
fn key_files_are_checked() {
    let err = |text: &str| Keyring::parse(text, "k").unwrap_err().to_string();
    assert!(err("").contains("holds no key"));
    assert!(err("# only a comment\n\n").contains("holds no key"));
    assert!(err("1 abcd").contains("line 1: the key of version 1 is not 64 hex digits"));
    assert!(err(&format!("{KEY1}\n{KEY1}")).contains("line 2: version 1 appears twice"));
    assert!(
        err("0 1111111111111111111111111111111111111111111111111111111111111111")
            .contains("not a number from 1")
    );
    assert!(
        err("1 0000000000000000000000000000000000000000000000000000000000000000")
            .contains("all zeros")
    );
    assert!(err("1 11 22").contains("expected"));
    let k = Keyring::parse(&format!("# keys\n{KEY2}  # newest\n\n{KEY1}\n"), "k").unwrap();
    assert_eq!(k.current(), 2);
    assert!(!format!("{k:?}").contains("2222"));

    let line = generate_key_line(7).unwrap();
    let g = Keyring::parse(&line, "g").unwrap();
    assert_eq!(g.versions(), vec![7]);
    assert_ne!(generate_key_line(7).unwrap(), line);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    std::fs::write(&path, format!("{KEY1}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Keyring::from_file(&path).unwrap_err().to_string();
    assert!(
        e.contains("may be read by any user") && e.contains("chmod 600"),
        "{e}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(Keyring::from_file(&path).unwrap().current(), 1);
    let missing = Keyring::from_file(&dir.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("cannot read the cluster key file"),
        "{missing}"
    );
}

#[test]
fn sealed_fields_open_only_in_their_context() {
    let keys = ring(&[KEY1, KEY2]);
    let a = keys.seal_field(2, "audit/t1", "PID-0042").unwrap();
    assert!(a.starts_with("s1:2:"), "{a}");
    assert!(!a.contains("PID-0042"));
    assert_eq!(field_version(&a), Some(2));
    assert_ne!(
        keys.seal_field(2, "audit/t1", "PID-0042").unwrap(),
        a,
        "fresh nonce"
    );
    assert_eq!(keys.open_field(&a, "audit/t1").unwrap(), "PID-0042");
    assert!(matches!(
        keys.open_field(&a, "audit/t2"),
        Err(SealError::UnwrapFailed { version: 2 })
    ));
    let only1 = ring(&[KEY1]);
    assert!(matches!(
        only1.open_field(&a, "audit/t1"),
        Err(SealError::UnknownKeyVersion { version: 2, .. })
    ));
    let mut flipped = a.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).unwrap();
    assert!(keys.open_field(&flipped, "audit/t1").is_err());
    assert_eq!(keys.seal_field(1, "x", "").unwrap(), "");
    assert_eq!(keys.open_field("", "x").unwrap(), "");
    assert!(matches!(
        keys.open_field("PID-0042", "x"),
        Err(SealError::FieldMalformed(_))
    ));
    assert!(matches!(
        keys.seal_field(1, "x", &"y".repeat(FIELD_MAX + 1)),
        Err(SealError::FieldTooLong(_))
    ));
}

#[test]
fn key_versions_are_added_to_a_file_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.keys");
    assert_eq!(add_key_version(&path).unwrap(), 1);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(add_key_version(&path).unwrap(), 2);
    let keys = Keyring::from_file(&path).unwrap();
    assert_eq!((keys.versions(), keys.current()), (vec![1, 2], 2));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# Kura cluster keys"), "{text}");
    // A file that is not a key file is left alone.
    std::fs::write(&path, "1 abc\n").unwrap();
    assert!(matches!(
        add_key_version(&path),
        Err(SealError::KeyFileInvalid { .. })
    ));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "1 abc\n");
}

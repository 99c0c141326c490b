//! Property tests across the crate: whatever the profile, code and object
//! size, losing or corrupting up to m shards of a segment gives back the
//! exact bytes, losing more is a clear error, and streaming encode equals
//! encoding the whole. Segments are the minimum size (64 KiB) to keep the
//! debug-profile run short.

use proptest::prelude::*;

use crate::*;

const PROFILES: [(u8, u8); 5] = [(4, 2), (6, 3), (5, 4), (8, 4), (9, 6)];
const SEGMENT: usize = SEGMENT_BYTES_MIN as usize;

fn params_strategy() -> impl Strategy<Value = EcParams> {
    (
        prop::sample::select(PROFILES.to_vec()),
        prop::sample::select(Code::ALL.to_vec()),
    )
        .prop_map(|((k, m), code)| EcParams {
            data_shards: k,
            parity_shards: m,
            segment_bytes: SEGMENT_BYTES_MIN,
            code,
        })
}

/// Object sizes: the edges (empty, one byte, around segment multiples) half
/// the time, anything up to three segments otherwise.
fn size_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            2,
            63,
            64,
            65,
            SEGMENT - 1,
            SEGMENT,
            SEGMENT + 1,
            2 * SEGMENT,
            3 * SEGMENT - 1,
        ]),
        0..3 * SEGMENT,
    ]
}

/// Deterministic pseudo-random bytes: proptest shrinking a 200 KB vector
/// byte by byte would be slow in the debug profile and teaches nothing.
fn object_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn encode_object(
    params: EcParams,
    key: ObjectKey,
    data: &[u8],
) -> (Vec<EncodedSegment>, ObjectDigest) {
    let mut encoder = ObjectEncoder::new(params, key).unwrap();
    let mut segments = encoder.push(data).unwrap();
    let (tail, digest) = encoder.finish().unwrap();
    segments.extend(tail);
    (segments, digest)
}

fn expectation(key: ObjectKey, segment: &EncodedSegment, with_hashes: bool) -> SegmentExpectation {
    SegmentExpectation {
        object_key: key,
        index: segment.index,
        data_len: segment.data_len,
        shard_blake3: with_hashes.then(|| segment.shard_blake3s()),
        payloads_verified: false,
    }
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    Lost,
    /// Flip a bit at this position (taken modulo the shard's length).
    Corrupt(usize),
}

/// Applies `damage` to the shards named by `victims` (indices modulo k + m,
/// duplicates collapse). Returns the raw slots and the corrupted indices.
fn damaged_slots(
    segment: &EncodedSegment,
    victims: &[(usize, Damage)],
) -> (Vec<Option<Vec<u8>>>, Vec<u8>) {
    let mut slots: Vec<Option<Vec<u8>>> = segment
        .shards
        .iter()
        .map(|s| Some(s.encode_to_vec()))
        .collect();
    let mut corrupted = Vec::new();
    let mut hit = vec![false; slots.len()];
    for &(victim, damage) in victims {
        let index = victim % slots.len();
        if std::mem::replace(&mut hit[index], true) {
            continue;
        }
        match damage {
            Damage::Lost => slots[index] = None,
            Damage::Corrupt(at) => {
                if let Some(bytes) = slots[index].as_mut() {
                    let at = at % bytes.len();
                    bytes[at] ^= 1 << (at % 8);
                    corrupted.push(index as u8);
                }
            }
        }
    }
    corrupted.sort_unstable();
    (slots, corrupted)
}

fn damage_strategy() -> impl Strategy<Value = Damage> {
    prop_oneof![Just(Damage::Lost), any::<usize>().prop_map(Damage::Corrupt)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Up to m lost or corrupted shards per segment: exact bytes back, the
    /// corrupted ones reported, and repair rebuilds the original shards.
    #[test]
    fn survives_up_to_m_damaged(
        params in params_strategy(),
        len in size_strategy(),
        seed in any::<u64>(),
        with_hashes in any::<bool>(),
        damage in prop::collection::vec((any::<usize>(), damage_strategy()), 0..=6),
    ) {
        let key = *blake3::hash(&seed.to_le_bytes()).as_bytes();
        let data = object_bytes(len, seed);
        let (segments, digest) = encode_object(params, key, &data);
        prop_assert_eq!(segments.len() as u64, params.segment_count(len as u64));
        prop_assert_eq!(digest, ObjectDigest { blake3: *blake3::hash(&data).as_bytes(), len: len as u64 });

        let m = usize::from(params.parity_shards);
        let k = usize::from(params.data_shards);
        let mut read_back = Vec::with_capacity(len);
        for segment in &segments {
            let victims = &damage[..damage.len().min(m)];
            let (slots, corrupted) = damaged_slots(segment, victims);
            let damaged_data = slots[..k].iter().any(Option::is_none) || corrupted.iter().any(|&i| usize::from(i) < k);
            let expected = expectation(key, segment, with_hashes);

            let decoded = decode_segment(params, &expected, slots.clone()).unwrap();
            prop_assert_eq!(&decoded.bad_shards, &corrupted);
            prop_assert_eq!(decoded.bad_shard_errors.len(), corrupted.len());
            prop_assert_eq!(decoded.reconstructed, damaged_data);
            read_back.extend_from_slice(&decoded.data);

            let repaired = reconstruct_shards(params, &expected, slots.clone()).unwrap();
            prop_assert_eq!(&repaired.shards, &segment.shards);
            prop_assert_eq!(&repaired.bad_shards, &corrupted);
            let missing: Vec<u8> = slots.iter().enumerate()
                .filter(|(i, s)| s.is_none() || corrupted.contains(&(*i as u8)))
                .map(|(i, _)| i as u8)
                .collect();
            prop_assert_eq!(&repaired.rebuilt, &missing);
        }
        prop_assert!(read_back == data, "read back differs");
    }

    /// More than m shards gone: TooFewShards with the exact counts.
    #[test]
    fn more_than_m_damaged_is_too_few_shards(
        params in params_strategy(),
        len in 1..2 * SEGMENT,
        seed in any::<u64>(),
        extra in 1usize..=4,
        damage in prop::collection::vec(damage_strategy(), 15),
        start in any::<usize>(),
    ) {
        let key = [9; 32];
        let data = object_bytes(len, seed);
        let (segments, _) = encode_object(params, key, &data);
        let total = params.total_shards();
        let m = usize::from(params.parity_shards);
        let count = (m + extra).min(total);
        let segment = &segments[0];
        let victims: Vec<(usize, Damage)> = (0..count).map(|i| (start % total + i, damage[i])).collect();
        let (slots, corrupted) = damaged_slots(segment, &victims);
        let expected = expectation(key, segment, false);
        let want = ErasureError::TooFewShards {
            segment: 0,
            good: total - count,
            needed: usize::from(params.data_shards),
            bad: corrupted.len(),
        };
        prop_assert_eq!(decode_segment(params, &expected, slots.clone()), Err(want.clone()));
        prop_assert_eq!(reconstruct_shards(params, &expected, slots), Err(want));
    }

    /// push() in any chunk sizes gives the same segments and digest as
    /// encoding each segment of the whole.
    #[test]
    fn streaming_equals_whole(
        params in params_strategy(),
        len in size_strategy(),
        seed in any::<u64>(),
        cuts in prop::collection::vec(0usize..SEGMENT + 100, 0..8),
    ) {
        let key = [3; 32];
        let data = object_bytes(len, seed);
        let mut encoder = ObjectEncoder::new(params, key).unwrap();
        let mut streamed = Vec::new();
        let mut rest = data.as_slice();
        for cut in cuts {
            let (chunk, tail) = rest.split_at(cut.min(rest.len()));
            streamed.extend(encoder.push(chunk).unwrap());
            rest = tail;
        }
        streamed.extend(encoder.push(rest).unwrap());
        let (tail, digest) = encoder.finish().unwrap();
        streamed.extend(tail);

        let whole: Vec<EncodedSegment> = data
            .chunks(SEGMENT)
            .zip(0u32..)
            .map(|(chunk, index)| encode_segment(params, key, index, chunk).unwrap())
            .collect();
        prop_assert!(streamed == whole, "streamed segments differ");
        prop_assert_eq!(digest.blake3, *blake3::hash(&data).as_bytes());
        prop_assert_eq!(digest.len, len as u64);
    }
}

fn one_segment(params: EcParams, key: ObjectKey, len: usize, seed: u64) -> EncodedSegment {
    encode_segment(params, key, 0, &object_bytes(len, seed)).unwrap()
}

fn small(k: u8, m: u8, code: Code) -> EcParams {
    EcParams {
        segment_bytes: SEGMENT_BYTES_MIN,
        code,
        ..EcParams::new(k, m)
    }
}

#[test]
fn healthy_read_needs_only_data_shards() {
    for code in Code::ALL {
        let params = small(4, 2, code);
        let segment = one_segment(params, [1; 32], 10_000, 1);
        let mut slots: Vec<Option<Vec<u8>>> = segment
            .shards
            .iter()
            .map(|s| Some(s.encode_to_vec()))
            .collect();
        slots[4] = None;
        slots[5] = None;
        let decoded = decode_segment(params, &expectation([1; 32], &segment, true), slots).unwrap();
        assert!(!decoded.reconstructed);
        assert_eq!(decoded.data, object_bytes(10_000, 1));
        assert!(decoded.bad_shards.is_empty());
    }
}

#[test]
fn too_few_shards_message_counts() {
    let params = small(4, 2, Code::ReedSolomonGf8);
    let segment = one_segment(params, [1; 32], 1000, 2);
    let mut slots: Vec<Option<Vec<u8>>> = segment
        .shards
        .iter()
        .map(|s| Some(s.encode_to_vec()))
        .collect();
    slots[0] = None;
    slots[1] = None;
    if let Some(bytes) = slots[2].as_mut() {
        bytes[200] ^= 0xFF;
    }
    let err = decode_segment(params, &expectation([1; 32], &segment, false), slots).unwrap_err();
    assert_eq!(
        err.to_string(),
        "segment 0: only 3 good shards found, 4 needed (1 failed their checks, the rest were missing)"
    );
}

#[test]
fn misplaced_or_foreign_shards_are_bad() {
    for code in Code::ALL {
        let params = small(4, 3, code);
        let key = [5; 32];
        let segment = one_segment(params, key, 5000, 3);
        let good: Vec<Option<Vec<u8>>> = segment
            .shards
            .iter()
            .map(|s| Some(s.encode_to_vec()))
            .collect();
        let expected = expectation(key, &segment, false);

        // Shards 0 and 1 swapped: both in the wrong slot.
        let mut slots = good.clone();
        slots.swap(0, 1);
        let decoded = decode_segment(params, &expected, slots).unwrap();
        assert_eq!(decoded.bad_shards, vec![0, 1]);
        assert!(matches!(
            decoded.bad_shard_errors[0],
            ShardError::Mismatch {
                field: "shard index",
                ..
            }
        ));
        assert_eq!(decoded.data, object_bytes(5000, 3));

        // A shard of another segment, another object, another profile.
        let other_segment = encode_segment(params, key, 1, &object_bytes(5000, 3)).unwrap();
        let other_object = one_segment(params, [6; 32], 5000, 3);
        let other_profile = one_segment(small(3, 3, code), key, 5000, 3);
        let mut slots = good.clone();
        slots[0] = Some(other_segment.shards[0].encode_to_vec());
        slots[1] = Some(other_object.shards[1].encode_to_vec());
        slots[2] = Some(other_profile.shards[2].encode_to_vec());
        let decoded = decode_segment(params, &expected, slots).unwrap();
        assert_eq!(decoded.bad_shards, vec![0, 1, 2]);
        assert!(matches!(
            decoded.bad_shard_errors[0],
            ShardError::Mismatch {
                field: "segment index",
                ..
            }
        ));
        assert_eq!(decoded.bad_shard_errors[1], ShardError::WrongObject);
        assert!(matches!(
            decoded.bad_shard_errors[2],
            ShardError::Mismatch { field: "k", .. }
        ));
        assert!(decoded.reconstructed);
        assert_eq!(decoded.data, object_bytes(5000, 3));

        // A stale shard: same object key and slot, other bytes. Only the
        // manifest's hashes can tell it apart.
        let stale = one_segment(params, key, 5000, 4);
        let mut slots = good.clone();
        slots[3] = Some(stale.shards[3].encode_to_vec());
        let decoded = decode_segment(params, &expectation(key, &segment, true), slots).unwrap();
        assert_eq!(decoded.bad_shards, vec![3]);
        assert_eq!(decoded.bad_shard_errors, vec![ShardError::UnexpectedBlake3]);
        assert_eq!(decoded.data, object_bytes(5000, 3));
    }
}

#[test]
fn caller_errors_are_typed() {
    let params = small(4, 2, Code::ReedSolomonGf8);
    let segment = one_segment(params, [1; 32], 1000, 5);
    let slots: Vec<Option<Vec<u8>>> = segment
        .shards
        .iter()
        .map(|s| Some(s.encode_to_vec()))
        .collect();
    let expected = expectation([1; 32], &segment, true);
    assert_eq!(
        decode_segment(params, &expected, slots[..5].to_vec()),
        Err(ErasureError::ShardSlots {
            expected: 6,
            got: 5
        })
    );
    let mut short_hashes = expected.clone();
    short_hashes.shard_blake3 = Some(vec![[0; 32]; 2]);
    assert!(matches!(
        decode_segment(params, &short_hashes, slots.clone()),
        Err(ErasureError::InvalidExpectation { .. })
    ));
    let mut empty = expected.clone();
    empty.data_len = 0;
    assert!(matches!(
        decode_segment(params, &empty, slots.clone()),
        Err(ErasureError::InvalidExpectation { .. })
    ));
    let bad_params = EcParams {
        data_shards: 0,
        ..params
    };
    assert!(matches!(
        decode_segment(bad_params, &expected, slots),
        Err(ErasureError::InvalidParams(ParamsError::NoDataShards))
    ));
}

#[test]
fn garbage_in_every_slot_is_too_few_not_a_panic() {
    let params = small(4, 2, Code::ReedSolomonGf16);
    let expected = SegmentExpectation {
        object_key: [0; 32],
        index: 0,
        data_len: 100,
        shard_blake3: None,
        payloads_verified: false,
    };
    let slots = vec![
        Some(Vec::new()),
        Some(vec![0; 3]),
        Some(b"KURASHRD".to_vec()),
        Some(vec![0xFF; 500]),
        None,
        Some(vec![0; 98]),
    ];
    assert_eq!(
        decode_segment(params, &expected, slots),
        Err(ErasureError::TooFewShards {
            segment: 0,
            good: 0,
            needed: 4,
            bad: 5
        })
    );
}

#[test]
fn default_segment_size_round_trip() {
    // One full-size (4 MiB) segment per code through the default profile.
    for code in Code::ALL {
        let params = EcParams {
            code,
            ..EcParams::default()
        };
        let len = params.segment_bytes as usize;
        let data = object_bytes(len, 11);
        let segment = encode_segment(params, [2; 32], 0, &data).unwrap();
        let mut slots: Vec<Option<Vec<u8>>> = segment
            .shards
            .iter()
            .map(|s| Some(s.encode_to_vec()))
            .collect();
        for lost in [0, 2, 4, 8] {
            slots[lost] = None;
        }
        let decoded = decode_segment(params, &expectation([2; 32], &segment, true), slots).unwrap();
        assert!(decoded.reconstructed);
        assert!(decoded.data == data);
    }
}

#[test]
fn params_serde_names() {
    let json = serde_json::to_string(&EcParams::default()).unwrap();
    assert_eq!(
        json,
        format!(
            r#"{{"data_shards":5,"parity_shards":4,"segment_bytes":4194304,"code":"{}"}}"#,
            Code::default().name()
        )
    );
    let back: EcParams = serde_json::from_str(&json).unwrap();
    assert_eq!(back, EcParams::default());
    for code in Code::ALL {
        assert_eq!(
            serde_json::to_string(&code).unwrap(),
            format!("\"{}\"", code.name())
        );
    }
}

/// The gateway moves encoders and codecs into blocking tasks.
#[test]
fn workers_can_move_codecs_between_threads() {
    fn is_send<T: Send + 'static>() {}
    is_send::<ObjectEncoder>();
    is_send::<SegmentCodec>();
    is_send::<EncodedSegment>();
    is_send::<ErasureError>();
}

#[test]
fn repair_refuses_a_rebuild_that_contradicts_the_manifest() {
    let params = small(4, 2, Code::ReedSolomonGf8);
    let segment = one_segment(params, [1; 32], 3000, 6);
    let mut slots: Vec<Option<Vec<u8>>> = segment
        .shards
        .iter()
        .map(|s| Some(s.encode_to_vec()))
        .collect();
    slots[5] = None;
    let mut expected = expectation([1; 32], &segment, true);
    if let Some(hashes) = expected.shard_blake3.as_mut() {
        hashes[5] = [0; 32];
    }
    assert_eq!(
        reconstruct_shards(params, &expected, slots),
        Err(ErasureError::RebuiltMismatch {
            segment: 0,
            shard: 5
        })
    );
}

#[test]
fn verified_payloads_skip_the_hash_but_not_the_header_checks() {
    let params = small(4, 2, Code::ReedSolomonGf8);
    let key = [3u8; 32];
    let data: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
    let mut codec = SegmentCodec::new(params).expect("codec");
    let segment = codec.encode(key, 0, &data).expect("encode");
    let encoded: Vec<Option<Vec<u8>>> = segment
        .shards
        .iter()
        .map(|s| Some(s.encode_to_vec()))
        .collect();
    let verified = SegmentExpectation {
        payloads_verified: true,
        ..expectation(key, &segment, true)
    };
    let decoded = codec.decode(&verified, encoded.clone()).expect("decode");
    assert_eq!(decoded.data, data);
    assert!(decoded.bad_shards.is_empty());

    // A shard whose header names another payload (a stale shard) is still
    // refused, and so is one cut short; parity makes up for both.
    let mut stale = expectation(key, &segment, true);
    stale.payloads_verified = true;
    if let Some(h) = stale.shard_blake3.as_mut() {
        h[0] = [9; 32];
    }
    let mut cut = encoded.clone();
    if let Some(Some(b)) = cut.get_mut(1) {
        b.truncate(b.len() - 1);
    }
    let decoded = codec.decode(&stale, cut).expect("decode from parity");
    assert_eq!(decoded.data, data);
    assert_eq!(decoded.bad_shards, vec![0, 1]);

    // What verification trusts the holder for: a payload bit flipped
    // after its holder checked it is not found here (the hash is not
    // recomputed), while the unverified path finds it.
    let mut flipped = encoded;
    if let Some(Some(b)) = flipped.get_mut(2) {
        let last = b.len() - 1;
        b[last] ^= 1;
    }
    let trusting = codec.decode(&verified, flipped.clone()).expect("decode");
    assert!(trusting.bad_shards.is_empty());
    let checking = codec
        .decode(&expectation(key, &segment, true), flipped)
        .expect("decode from parity");
    assert_eq!(checking.bad_shards, vec![2]);
    assert_eq!(checking.data, data);
}

//! Golden fixtures of the persisted formats: version 1 of the manifest and
//! the cluster map, as JSON (hashes in hex) and as bincode (what Raft
//! stores). A change that alters these bytes changes the stored format: bump
//! the format version and keep decoding the old fixtures instead of editing
//! them. (To write fixtures for a *new* version, run the tests once with
//! `KURA_BLESS_FIXTURES=1`.)

use std::collections::BTreeMap;

use kura_erasure::{Code, EcParams};

use crate::manifest::{
    MANIFEST_FORMAT_VERSION, Manifest, Protection, SegmentManifest, ShardLocation,
};
use crate::map::{ClusterMap, NodeInfo, NodeState, Site};

const MANIFEST_V2_JSON: &str = include_str!("../../tests/fixtures/manifest_v2.json");
const MANIFEST_V2_BINCODE_HEX: &str = include_str!("../../tests/fixtures/manifest_v2.bincode.hex");
const CLUSTER_MAP_V1_JSON: &str = include_str!("../../tests/fixtures/cluster_map_v1.json");
const CLUSTER_MAP_V1_BINCODE_HEX: &str =
    include_str!("../../tests/fixtures/cluster_map_v1.bincode.hex");

fn bytes(seed: u8) -> [u8; 32] {
    std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(u8::try_from(i).unwrap()))
}

/// A two-segment RS(2,1) instance; shard 1 of segment 1 is unplaced.
fn manifest_v2() -> Manifest {
    let ec = EcParams {
        data_shards: 2,
        parity_shards: 1,
        segment_bytes: 65_536,
        code: Code::ReedSolomonGf8,
    };
    let shard = |index: u8, node: Option<u64>, seed: u8, len: u32| ShardLocation {
        index,
        node,
        blake3: bytes(seed),
        len,
    };
    Manifest {
        format_version: 2,
        tenant: "hospital-a".into(),
        sop_instance_uid: "1.2.826.0.1.3680043.8.498.1".into(),
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
        study_instance_uid: "1.2.826.0.1.3680043.8.498.2".into(),
        series_instance_uid: "1.2.826.0.1.3680043.8.498.3".into(),
        transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
        modality: "CT".into(),
        study_date: "20250314".into(),
        size: 65_636,
        fingerprint: bytes(1),
        sealing: crate::manifest::Sealing {
            scheme: 1,
            key_version: 3,
            salt: bytes(4),
            wrapped: (0u8..88).collect(),
            plain_size: 65_604,
        },
        object_key: bytes(2),
        ec,
        segments: vec![
            SegmentManifest {
                index: 0,
                data_len: 65_536,
                shards: vec![
                    shard(0, Some(11), 10, 32_768),
                    shard(1, Some(21), 11, 32_768),
                    shard(2, Some(31), 12, 32_768),
                ],
            },
            SegmentManifest {
                index: 1,
                data_len: 100,
                shards: vec![
                    shard(0, Some(12), 20, 64),
                    shard(1, None, 21, 64),
                    shard(2, Some(32), 22, 64),
                ],
            },
        ],
        protection: Protection::UnderProtected,
        version: 3,
        stored_at_unix_ms: 1_741_900_000_000,
        updated_at_unix_ms: 1_741_900_123_456,
        retain_until_unix_ms: Some(2_057_000_000_000),
    }
}

fn cluster_map_v1() -> ClusterMap {
    let node = |id: u64, site: &str, state: NodeState, used_bytes: u64| NodeInfo {
        id,
        name: format!("{site}-{id}"),
        site: site.into(),
        addr: format!("10.0.{}.{id}:7070", id / 10),
        state,
        capacity_bytes: 4_000_000_000_000,
        used_bytes,
    };
    ClusterMap {
        epoch: 42,
        sites: vec![
            Site { name: "dc1".into() },
            Site { name: "dc2".into() },
            Site { name: "dc3".into() },
        ],
        nodes: BTreeMap::from([
            (11, node(11, "dc1", NodeState::Up, 1_000_000)),
            (12, node(12, "dc1", NodeState::Draining, 2_000_000)),
            (21, node(21, "dc2", NodeState::Down, 0)),
            (31, node(31, "dc3", NodeState::Lost, 0)),
            (32, node(32, "dc3", NodeState::Removed, 0)),
        ]),
    }
}

fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    for line in bytes.chunks(32) {
        for b in line {
            out.push_str(&format!("{b:02x}"));
        }
        out.push('\n');
    }
    out
}

fn from_hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// Compares `actual` with a fixture, or writes it when blessing.
fn check_fixture(name: &str, fixture: &str, actual: &str) {
    if std::env::var_os("KURA_BLESS_FIXTURES").is_some() {
        let path = format!(
            "{}/tests/fixtures/{name}",
            std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into())
        );
        std::fs::write(&path, actual).unwrap();
        return;
    }
    assert_eq!(
        fixture, actual,
        "fixture {name} differs from what this build writes:\n{actual}"
    );
}

#[test]
fn manifest_v2_json_is_stable() {
    let sample = manifest_v2();
    sample.validate().unwrap();
    assert_eq!(sample.format_version, MANIFEST_FORMAT_VERSION);
    let json = serde_json::to_string_pretty(&sample).unwrap() + "\n";
    check_fixture("manifest_v2.json", MANIFEST_V2_JSON, &json);
    let decoded: Manifest = serde_json::from_str(MANIFEST_V2_JSON).unwrap();
    assert_eq!(decoded, sample);
    assert!(
        json.contains(&format!(
            "\"fingerprint\": \"{}\"",
            sample.fingerprint_hex()
        )),
        "hashes are hex in JSON"
    );
}

#[test]
fn manifest_v2_bincode_is_stable() {
    let sample = manifest_v2();
    let encoded = bincode::serialize(&sample).unwrap();
    check_fixture(
        "manifest_v2.bincode.hex",
        MANIFEST_V2_BINCODE_HEX,
        &to_hex(&encoded),
    );
    let decoded: Manifest = bincode::deserialize(&from_hex(MANIFEST_V2_BINCODE_HEX)).unwrap();
    assert_eq!(decoded, sample);
}

#[test]
fn cluster_map_v1_json_is_stable() {
    let sample = cluster_map_v1();
    sample.validate().unwrap();
    let json = serde_json::to_string_pretty(&sample).unwrap() + "\n";
    check_fixture("cluster_map_v1.json", CLUSTER_MAP_V1_JSON, &json);
    let decoded: ClusterMap = serde_json::from_str(CLUSTER_MAP_V1_JSON).unwrap();
    assert_eq!(decoded, sample);
}

#[test]
fn cluster_map_v1_bincode_is_stable() {
    let sample = cluster_map_v1();
    let encoded = bincode::serialize(&sample).unwrap();
    check_fixture(
        "cluster_map_v1.bincode.hex",
        CLUSTER_MAP_V1_BINCODE_HEX,
        &to_hex(&encoded),
    );
    let decoded: ClusterMap = bincode::deserialize(&from_hex(CLUSTER_MAP_V1_BINCODE_HEX)).unwrap();
    assert_eq!(decoded, sample);
}

#[test]
fn json_hashes_decode_in_either_case_but_not_malformed() {
    let upper = MANIFEST_V2_JSON.replace(
        &manifest_v2().fingerprint_hex(),
        &manifest_v2().fingerprint_hex().to_uppercase(),
    );
    assert_eq!(
        serde_json::from_str::<Manifest>(&upper).unwrap(),
        manifest_v2()
    );
    let as_array = MANIFEST_V2_JSON.replace(
        &format!("\"{}\"", manifest_v2().fingerprint_hex()),
        &serde_json::to_string(&manifest_v2().fingerprint).unwrap(),
    );
    assert!(as_array.contains("\"fingerprint\": [31,32,"), "{as_array}");
    assert_eq!(
        serde_json::from_str::<Manifest>(&as_array).unwrap(),
        manifest_v2()
    );
    let short = MANIFEST_V2_JSON.replace(&manifest_v2().fingerprint_hex(), "abcd");
    let err = serde_json::from_str::<Manifest>(&short)
        .unwrap_err()
        .to_string();
    assert!(err.contains("64 hex digits"), "{err}");
}

//! Manifests for tests: valid, small, and with a content id the tests can
//! read back from the blake3 field.

use kura_erasure::{Code, EcParams};
use kura_placement::{
    MANIFEST_FORMAT_VERSION, Manifest, Protection, SegmentManifest, ShardLocation,
};

pub const TENANT: &str = "hospital-a";
pub const STUDY: &str = "1.2.392.200036.9116.2.1";

pub fn ec() -> EcParams {
    EcParams {
        data_shards: 2,
        parity_shards: 1,
        segment_bytes: 1 << 20,
        code: Code::default(),
    }
}

/// A content hash whose first 8 bytes are `content`.
pub fn content_hash(content: u64) -> [u8; 32] {
    let mut h = [0x5au8; 32];
    h[..8].copy_from_slice(&content.to_le_bytes());
    h
}

/// The content id back from a hex blake3 made by [`content_hash`].
pub fn content_of_hex(hex: &str) -> u64 {
    let bytes = hex::decode(hex).expect("hex");
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

pub fn uid(n: u64) -> String {
    format!("1.2.392.200036.9116.2.5.{}", n + 1)
}

/// A valid manifest of instance `uid` in `series`, whose content is
/// identified by `content`, placed on nodes 1..=3.
pub fn manifest(uid: &str, series: &str, content: u64) -> Manifest {
    let ec = ec();
    let size = kura_seal::sealed_len(84);
    let shard_len = ec.shard_len(size as u32);
    Manifest {
        format_version: MANIFEST_FORMAT_VERSION,
        tenant: TENANT.into(),
        sop_instance_uid: uid.into(),
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
        study_instance_uid: STUDY.into(),
        series_instance_uid: series.into(),
        transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
        modality: "CT".into(),
        study_date: "20261125".into(),
        size,
        fingerprint: content_hash(content),
        sealing: kura_placement::Sealing {
            scheme: kura_seal::SCHEME,
            key_version: 1,
            salt: content_hash(content ^ 0xeeee),
            wrapped: vec![7; 86],
            plain_size: 84,
        },
        object_key: content_hash(content ^ 0xffff),
        ec,
        segments: vec![SegmentManifest {
            index: 0,
            data_len: size as u32,
            shards: (0..3u8)
                .map(|i| ShardLocation {
                    index: i,
                    node: Some(u64::from(i) + 1),
                    blake3: [i; 32],
                    len: shard_len,
                })
                .collect(),
        }],
        protection: Protection::Full,
        version: 0,
        stored_at_unix_ms: 1_764_000_000_000,
        updated_at_unix_ms: 1_764_000_000_000,
        retain_until_unix_ms: None,
    }
}

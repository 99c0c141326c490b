//! Builders shared by the unit and property tests.

use std::collections::BTreeMap;

use crate::manifest::{MANIFEST_FORMAT_VERSION, Manifest, SegmentManifest, ShardLocation};
use crate::map::{ClusterMap, NodeId, NodeInfo, NodeState, Site};
use crate::placement::Placer;
use crate::profile::{Profile, ProfileExt};

/// Node `id` of `site`, Up, with plenty of room.
pub(crate) fn node(id: NodeId, site: &str) -> NodeInfo {
    NodeInfo {
        id,
        name: format!("{site}-{id}"),
        site: site.into(),
        addr: format!("10.0.{}.{}:7070", id / 256, id % 256),
        state: NodeState::Up,
        capacity_bytes: 1 << 40,
        used_bytes: 0,
    }
}

/// The id of node `j` (from 0) of the site in position `s` (from 0): site
/// "a" has 11, 12, ..., site "b" 21, 22, ... (readable in failures).
pub(crate) fn id(s: usize, j: usize) -> NodeId {
    NodeId::try_from(10 * (s + 1) + j + 1).unwrap()
}

/// Sites "a", "b", ... with the given node counts, all Up.
pub(crate) fn map_of(nodes_per_site: &[usize]) -> ClusterMap {
    let mut map = ClusterMap {
        epoch: 1,
        sites: Vec::new(),
        nodes: BTreeMap::new(),
    };
    for (s, &count) in nodes_per_site.iter().enumerate() {
        let name = site_name(s);
        map.sites.push(Site { name: name.clone() });
        for j in 0..count {
            let n = node(id(s, j), &name);
            map.nodes.insert(n.id, n);
        }
    }
    map
}

pub(crate) fn site_name(s: usize) -> String {
    char::from(b'a' + u8::try_from(s).unwrap()).to_string()
}

/// `map` with every node of `site` in `state`.
pub(crate) fn with_site_state(map: &ClusterMap, site: &str, state: NodeState) -> ClusterMap {
    let mut map = map.clone();
    for n in map.nodes.values_mut().filter(|n| n.site == site) {
        n.state = state;
    }
    map
}

pub(crate) fn object_key(i: u64) -> [u8; 32] {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

pub(crate) fn fake_hash(parts: &[u64]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&p.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

/// A manifest of an instance of `plain_size` bytes placed on `map` as a
/// gateway would.
pub(crate) fn placed_manifest(
    map: &ClusterMap,
    profile: &Profile,
    plain_size: u64,
    key: [u8; 32],
) -> Manifest {
    let size = kura_seal::sealed_len(plain_size);
    let placer = Placer::new(map, profile).unwrap();
    let mut protection = crate::Protection::Full;
    let segments = (0..u32::try_from(profile.segment_count(size)).unwrap())
        .map(|index| {
            let data_len = profile.segment_len(size, index).unwrap();
            let placement = placer.place(&key, index);
            protection = protection.and(placement.protection);
            SegmentManifest {
                index,
                data_len,
                shards: placement
                    .holders
                    .iter()
                    .enumerate()
                    .map(|(i, &node)| ShardLocation {
                        index: u8::try_from(i).unwrap(),
                        node,
                        blake3: fake_hash(&[u64::from(index), i as u64]),
                        len: profile.shard_len(data_len),
                    })
                    .collect(),
            }
        })
        .collect();
    Manifest {
        format_version: MANIFEST_FORMAT_VERSION,
        tenant: "t1".into(),
        sop_instance_uid: "1.2.3.4".into(),
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
        study_instance_uid: "1.2.3".into(),
        series_instance_uid: "1.2.3.1".into(),
        transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
        modality: "CT".into(),
        study_date: "20250101".into(),
        size,
        fingerprint: fake_hash(&[size]),
        sealing: crate::manifest::Sealing {
            scheme: kura_seal::SCHEME,
            key_version: 1,
            salt: fake_hash(&[1]),
            wrapped: vec![0; 80],
            plain_size,
        },
        object_key: key,
        ec: *profile,
        segments,
        protection,
        version: 1,
        stored_at_unix_ms: 1_750_000_000_000,
        updated_at_unix_ms: 1_750_000_000_000,
        retain_until_unix_ms: None,
    }
}

/// Shards of one placement per site, in map order.
pub(crate) fn per_site(map: &ClusterMap, holders: &[Option<NodeId>]) -> Vec<usize> {
    map.sites
        .iter()
        .map(|s| {
            holders
                .iter()
                .flatten()
                .filter(|&&id| map.site_of(id) == Some(s.name.as_str()))
                .count()
        })
        .collect()
}

pub(crate) fn rs(k: u8, m: u8) -> Profile {
    let p = Profile::new(k, m);
    assert!(p.k() == usize::from(k));
    p
}

//! The manifest: one record per stored instance, kept in the metadata
//! cluster's Raft state machine. It names the instance (tenant, DICOM UIDs),
//! pins its content (size, keyed fingerprint), says how it was sealed
//! (cluster key version, wrapped data key) and encoded (EC parameters,
//! object key) and where every shard of every segment lives.
//!
//! Nothing in it identifies a patient or confirms a known file to someone
//! holding a voter's disk: the Patient ID and the plaintext's blake3 are
//! sealed with the data key ([`Sealing`]), and the already-stored check
//! compares keyed fingerprints.
//!
//! The record carries [`MANIFEST_FORMAT_VERSION`]; golden JSON of version 2
//! sits in `tests/fixtures/` so the format cannot drift silently. Hashes and
//! keys are hex strings in JSON and plain bytes in bincode (see `hex.rs`).
//!
//! [`Manifest::validate`] is the structural gate the state machine applies
//! before accepting a manifest; [`Manifest::same_content`] is the idempotence
//! check (same instance, same bytes: placement may differ).

use std::fmt;

use kura_erasure::EcParams;
use serde::{Deserialize, Serialize};

use crate::error::PlacementError;
use crate::map::{ClusterMap, NodeId};
use crate::placement::protection_of;

/// The manifest format this build writes. Readers accept exactly the
/// versions they know; a newer record is refused, not misread.
/// Version 1 (unsealed objects, plaintext Patient ID and blake3) was
/// never deployed and is no longer read.
pub const MANIFEST_FORMAT_VERSION: u16 = 2;

/// One stored instance: its identity, its bytes' hash, and where every
/// shard of every segment lives. A manifest may reach logs (openraft logs
/// entries): it holds no patient data in the clear.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT_VERSION`] when written.
    pub format_version: u16,
    pub tenant: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub transfer_syntax_uid: String,
    pub modality: String,
    pub study_date: String,
    /// Stored (sealed) object size in bytes: what the segments hold. The
    /// instance's own size is `sealing.plain_size`.
    pub size: u64,
    /// The content fingerprint: a keyed hash of the instance's blake3
    /// under cluster key `sealing.key_version` (`kura_seal::Keyring::
    /// fingerprint`). Equal content, equal fingerprint, within one tenant
    /// and key version.
    #[serde(with = "crate::hex")]
    pub fingerprint: [u8; 32],
    /// How the object is sealed.
    pub sealing: Sealing,
    /// The key in every shard header of this object; placement hashes on it.
    #[serde(with = "crate::hex")]
    pub object_key: [u8; 32],
    pub ec: EcParams,
    /// One entry per segment, in order.
    pub segments: Vec<SegmentManifest>,
    pub protection: Protection,
    /// Bumped by every compare-and-set.
    pub version: u64,
    pub stored_at_unix_ms: i64,
    pub updated_at_unix_ms: i64,
    pub retain_until_unix_ms: Option<i64>,
}

impl std::fmt::Debug for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manifest")
            .field("format_version", &self.format_version)
            .field("tenant", &self.tenant)
            .field("sop_instance_uid", &self.sop_instance_uid)
            .field("sop_class_uid", &self.sop_class_uid)
            .field("study_instance_uid", &self.study_instance_uid)
            .field("series_instance_uid", &self.series_instance_uid)
            .field("transfer_syntax_uid", &self.transfer_syntax_uid)
            .field("modality", &self.modality)
            .field("study_date", &self.study_date)
            .field("size", &self.size)
            .field("fingerprint", &self.fingerprint_hex())
            .field("sealing", &self.sealing)
            .field("object_key", &self.object_key_hex())
            .field("ec", &self.ec)
            .field("segments", &self.segments)
            .field("protection", &self.protection)
            .field("version", &self.version)
            .field("stored_at_unix_ms", &self.stored_at_unix_ms)
            .field("updated_at_unix_ms", &self.updated_at_unix_ms)
            .field("retain_until_unix_ms", &self.retain_until_unix_ms)
            .finish()
    }
}

/// How an object is sealed (format `kura-seal/1`, ARCHITECTURE.md
/// "Encryption at rest"): its data key, the plaintext's blake3 and the
/// Patient ID, wrapped under a cluster key version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealing {
    /// `kura_seal::SCHEME` when written.
    pub scheme: u16,
    /// The cluster key version the secrets are wrapped under.
    pub key_version: u32,
    /// The wrapping's HKDF salt.
    #[serde(with = "crate::hex")]
    pub salt: [u8; 32],
    /// The wrapped secrets (AES-256-GCM, tag included).
    #[serde(with = "crate::hex::bytes")]
    pub wrapped: Vec<u8>,
    /// The instance's size in bytes (plaintext).
    pub plain_size: u64,
}

impl Sealing {
    /// The `kura_seal` view of the wrapped secrets.
    pub fn wrapped(&self) -> kura_seal::Wrapped {
        kura_seal::Wrapped {
            key_version: self.key_version,
            salt: self.salt,
            bytes: self.wrapped.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentManifest {
    pub index: u32,
    /// Object bytes in this segment (all but the last hold `segment_bytes`).
    pub data_len: u32,
    /// k + m entries, by shard index.
    pub shards: Vec<ShardLocation>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLocation {
    pub index: u8,
    /// `None` = not placed (under-protected). The shard's blake3 and length
    /// are still known: the gateway encoded it, it found no node to hold it.
    pub node: Option<NodeId>,
    /// blake3 of the shard payload.
    #[serde(with = "crate::hex")]
    pub blake3: [u8; 32],
    /// Payload length in bytes.
    pub len: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protection {
    /// Every shard placed, one per node, at most m per site (multi-site).
    Full,
    /// Written while placement could not give full protection (a site or
    /// nodes down): readable, repaired once placement allows.
    UnderProtected,
}

impl Protection {
    pub fn as_str(self) -> &'static str {
        match self {
            Protection::Full => "full",
            Protection::UnderProtected => "under-protected",
        }
    }

    /// Both full, or else under-protected: the protection of an object is
    /// that of its weakest segment.
    pub fn and(self, other: Protection) -> Protection {
        if self == Protection::Full && other == Protection::Full {
            Protection::Full
        } else {
            Protection::UnderProtected
        }
    }
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Manifest {
    /// Until when the instance may not be deleted: its own retain-until,
    /// or the tenant's retention period (`retention_days`) counted from its
    /// store, whichever ends later; `None` when neither applies.
    pub fn retained_until(&self, retention_days: Option<u32>) -> Option<i64> {
        let by_tenant = retention_days.map(|d| {
            self.stored_at_unix_ms
                .saturating_add(i64::from(d) * 86_400_000)
        });
        match (self.retain_until_unix_ms, by_tenant) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Structural checks: a known format version, non-empty identity, valid
    /// EC parameters, the segment count and lengths that `size` and `ec`
    /// imply, k + m shards per segment in index order with the lengths the
    /// code produces, no node twice in a segment, and `Full` only when every
    /// shard is placed.
    pub fn validate(&self) -> Result<(), PlacementError> {
        let fail = |reason: String| PlacementError::InvalidManifest {
            tenant: self.tenant.clone(),
            sop_instance_uid: self.sop_instance_uid.clone(),
            reason,
        };
        if self.format_version != MANIFEST_FORMAT_VERSION {
            return Err(fail(format!(
                "format version {} is not one this build reads ({MANIFEST_FORMAT_VERSION})",
                self.format_version
            )));
        }
        for (field, value) in [
            ("tenant", &self.tenant),
            ("sop_instance_uid", &self.sop_instance_uid),
            ("sop_class_uid", &self.sop_class_uid),
            ("study_instance_uid", &self.study_instance_uid),
            ("series_instance_uid", &self.series_instance_uid),
            ("transfer_syntax_uid", &self.transfer_syntax_uid),
        ] {
            if value.is_empty() {
                return Err(fail(format!("{field} is empty")));
            }
        }
        if self.sealing.scheme != kura_seal::SCHEME {
            return Err(fail(format!(
                "sealing scheme {} is not one this build reads ({})",
                self.sealing.scheme,
                kura_seal::SCHEME
            )));
        }
        if self.sealing.key_version == 0 {
            return Err(fail("sealing key version 0 (versions start at 1)".into()));
        }
        if self.sealing.wrapped.len() < 2 * kura_seal::KEY_LEN + kura_seal::TAG_LEN
            || self.sealing.wrapped.len()
                > 2 * kura_seal::KEY_LEN + kura_seal::TAG_LEN + kura_seal::PATIENT_ID_MAX
        {
            return Err(fail(format!(
                "wrapped secrets of {} bytes (a data key, a blake3, a Patient ID of at most {} bytes and a tag)",
                self.sealing.wrapped.len(),
                kura_seal::PATIENT_ID_MAX
            )));
        }
        self.ec
            .validate()
            .map_err(|e| fail(format!("EC parameters {}: {e}", self.ec)))?;
        if self.size > self.ec.object_bytes_max() {
            return Err(fail(format!(
                "size {} exceeds the {} bytes {} can describe",
                self.size,
                self.ec.object_bytes_max(),
                self.ec
            )));
        }
        let expected_segments = self.ec.segment_count(self.size);
        if self.segments.len() as u64 != expected_segments {
            return Err(fail(format!(
                "{} segments, but {} bytes in segments of {} make {expected_segments}",
                self.segments.len(),
                self.size,
                self.ec.segment_bytes
            )));
        }
        let n = self.ec.total_shards();
        let mut any_unplaced = false;
        for (position, segment) in self.segments.iter().enumerate() {
            let fail_segment = |what: String| fail(format!("segment {position}: {what}"));
            if u64::from(segment.index) != position as u64 {
                return Err(fail_segment(format!("has index {}", segment.index)));
            }
            let expected_len = self.ec.segment_len(self.size, segment.index);
            if Some(segment.data_len) != expected_len {
                return Err(fail_segment(format!(
                    "data_len {} but the object implies {expected_len:?}",
                    segment.data_len
                )));
            }
            if segment.shards.len() != n {
                return Err(fail_segment(format!(
                    "{} shards, {} has {n}",
                    segment.shards.len(),
                    self.ec
                )));
            }
            let shard_len = self.ec.shard_len(segment.data_len);
            let mut nodes: Vec<NodeId> = Vec::with_capacity(n);
            for (i, shard) in segment.shards.iter().enumerate() {
                if usize::from(shard.index) != i {
                    return Err(fail_segment(format!(
                        "shard in position {i} has index {}",
                        shard.index
                    )));
                }
                if shard.len != shard_len {
                    return Err(fail_segment(format!(
                        "shard {i} is {} bytes, {} makes {shard_len} from {} bytes",
                        shard.len, self.ec, segment.data_len
                    )));
                }
                match shard.node {
                    Some(node) if nodes.contains(&node) => {
                        return Err(fail_segment(format!(
                            "node {node} holds two shards (architecture invariant: one per node)"
                        )));
                    }
                    Some(node) => nodes.push(node),
                    None => any_unplaced = true,
                }
            }
        }
        if any_unplaced && self.protection == Protection::Full {
            return Err(fail(
                "protection is Full but some shards are not placed".into(),
            ));
        }
        if kura_seal::sealed_len(self.sealing.plain_size) != self.size {
            return Err(fail(format!(
                "size {} is not what sealing {} plaintext bytes makes ({})",
                self.size,
                self.sealing.plain_size,
                kura_seal::sealed_len(self.sealing.plain_size)
            )));
        }
        Ok(())
    }

    /// The idempotence check: the same instance of the same tenant with the
    /// same bytes (equal fingerprints under one key version). Placement,
    /// sealing, timestamps and version may differ.
    pub fn same_content(&self, other: &Manifest) -> bool {
        self.tenant == other.tenant
            && self.sop_instance_uid == other.sop_instance_uid
            && self.sealing.plain_size == other.sealing.plain_size
            && self.sealing.key_version == other.sealing.key_version
            && self.fingerprint == other.fingerprint
    }

    /// The record's key: (tenant, SOP Instance UID).
    pub fn key(&self) -> (&str, &str) {
        (&self.tenant, &self.sop_instance_uid)
    }

    pub fn fingerprint_hex(&self) -> String {
        crate::hex::encode(&self.fingerprint)
    }

    /// What the sealing is bound to.
    pub fn wrap_context(&self) -> kura_seal::WrapContext<'_> {
        kura_seal::WrapContext {
            tenant: &self.tenant,
            sop_instance_uid: &self.sop_instance_uid,
            object_key: &self.object_key,
        }
    }

    pub fn object_key_hex(&self) -> String {
        crate::hex::encode(&self.object_key)
    }

    pub fn segment(&self, index: u32) -> Option<&SegmentManifest> {
        self.segments.get(usize::try_from(index).ok()?)
    }

    /// Every (segment, shard index) held by `node`: what a drain or a lost
    /// node affects.
    pub fn shards_on(&self, node: NodeId) -> impl Iterator<Item = (u32, u8)> + '_ {
        self.segments.iter().flat_map(move |segment| {
            segment
                .shards
                .iter()
                .filter(move |s| s.node == Some(node))
                .map(move |s| (segment.index, s.index))
        })
    }

    /// Records a new holder for one shard (after repair wrote it). Does not
    /// touch `version` or `protection`: the compare-and-set that stores the
    /// result decides those (see [`Manifest::protection_in`]).
    pub fn set_holder(
        &mut self,
        segment: u32,
        index: u8,
        node: Option<NodeId>,
    ) -> Result<(), PlacementError> {
        let shard = usize::try_from(segment)
            .ok()
            .and_then(|s| self.segments.get_mut(s))
            .and_then(|s| s.shards.get_mut(usize::from(index)))
            .ok_or(PlacementError::NoSuchShard { segment, index })?;
        shard.node = node;
        Ok(())
    }

    /// The protection the recorded placement has under `map` now: the
    /// weakest segment's (see [`protection_of`]).
    pub fn protection_in(&self, map: &ClusterMap) -> Protection {
        self.segments
            .iter()
            .map(|segment| {
                let holders: Vec<Option<NodeId>> = segment.shards.iter().map(|s| s.node).collect();
                protection_of(map, &self.ec, &holders)
            })
            .fold(Protection::Full, Protection::and)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::NodeState;
    use crate::testutil::{map_of, object_key, placed_manifest, rs, with_site_state};

    const SIZE_BYTES: u64 = 2 * 4 * 1024 * 1024 + 1000;

    fn manifest() -> Manifest {
        placed_manifest(&map_of(&[3, 3, 3]), &rs(5, 4), SIZE_BYTES, object_key(9))
    }

    #[test]
    fn a_placed_manifest_is_valid() {
        let m = manifest();
        m.validate().unwrap();
        assert_eq!(m.segments.len(), 3);
        assert_eq!(
            u64::from(m.segments[2].data_len),
            kura_seal::sealed_len(SIZE_BYTES) - 8 * 1024 * 1024
        );
        assert_eq!(m.key(), ("t1", "1.2.3.4"));
        assert_eq!(m.fingerprint_hex().len(), 64);
        assert_eq!(m.size, kura_seal::sealed_len(SIZE_BYTES));
        assert_eq!(m.object_key_hex(), crate::hex::encode(&object_key(9)));
        assert_eq!(m.segment(2).unwrap().index, 2);
        assert!(m.segment(3).is_none());
    }

    #[test]
    fn retained_until_takes_the_later_of_instance_and_tenant() {
        let day = 86_400_000;
        let mut m = manifest();
        m.stored_at_unix_ms = 1_000;
        m.retain_until_unix_ms = None;
        assert_eq!(m.retained_until(None), None);
        assert_eq!(m.retained_until(Some(2)), Some(1_000 + 2 * day));
        m.retain_until_unix_ms = Some(5 * day);
        assert_eq!(m.retained_until(None), Some(5 * day));
        assert_eq!(m.retained_until(Some(2)), Some(5 * day));
        assert_eq!(m.retained_until(Some(9)), Some(1_000 + 9 * day));
    }

    #[test]
    fn validate_refuses_structural_errors() {
        type Mutation = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|m| m.format_version = 1), "format version 1"),
            (Box::new(|m| m.format_version = 3), "format version 3"),
            (Box::new(|m| m.format_version = 0), "format version 0"),
            (Box::new(|m| m.tenant.clear()), "tenant is empty"),
            (
                Box::new(|m| m.sop_instance_uid.clear()),
                "sop_instance_uid is empty",
            ),
            (
                Box::new(|m| m.transfer_syntax_uid.clear()),
                "transfer_syntax_uid is empty",
            ),
            (
                Box::new(|m| m.ec.parity_shards = 0),
                "EC parameters RS(5,0)",
            ),
            (Box::new(|m| m.size += 8 * 1024 * 1024), "make 5"),
            (
                Box::new(|m| m.segments[1].index = 7),
                "segment 1: has index 7",
            ),
            (
                Box::new(|m| m.segments[2].data_len -= 1),
                "but the object implies",
            ),
            (
                Box::new(|m| m.sealing.plain_size += 1),
                "is not what sealing",
            ),
            (Box::new(|m| m.sealing.scheme = 2), "sealing scheme 2"),
            (Box::new(|m| m.sealing.key_version = 0), "key version 0"),
            (
                Box::new(|m| m.sealing.wrapped.truncate(79)),
                "wrapped secrets of 79 bytes",
            ),
            (
                Box::new(|m| m.segments[0].shards.truncate(8)),
                "8 shards, RS(5,4) has 9",
            ),
            (
                Box::new(|m| m.segments[0].shards.swap(1, 2)),
                "position 1 has index 2",
            ),
            (Box::new(|m| m.segments[0].shards[3].len += 1), "shard 3 is"),
            (
                Box::new(|m| m.segments[0].shards[1].node = m.segments[0].shards[0].node),
                "holds two shards",
            ),
            (
                Box::new(|m| m.segments[0].shards[4].node = None),
                "Full but some shards are not placed",
            ),
            (Box::new(|m| m.size = u64::MAX), "can describe"),
        ];
        for (mutate, expected) in cases {
            let mut m = manifest();
            mutate(&mut m);
            let err = m.validate().unwrap_err();
            assert!(matches!(err, PlacementError::InvalidManifest { .. }));
            let text = err.to_string();
            assert!(
                text.contains(expected),
                "{text:?} should contain {expected:?}"
            );
            assert!(text.starts_with("invalid manifest "), "{text}");
        }
        let mut unplaced = manifest();
        unplaced.segments[0].shards[4].node = None;
        unplaced.protection = Protection::UnderProtected;
        unplaced.validate().unwrap();
        let mut small = manifest();
        small.sealing.plain_size = 0;
        small.size = kura_seal::sealed_len(0);
        small.segments.truncate(1);
        small.segments[0].data_len = 16;
        let shard_len = small.ec.shard_len(16);
        for s in &mut small.segments[0].shards {
            s.len = shard_len;
        }
        small.validate().unwrap();
    }

    #[test]
    fn same_content_ignores_placement_and_time() {
        let a = manifest();
        let mut b = placed_manifest(&map_of(&[4, 4, 4]), &rs(5, 4), SIZE_BYTES, object_key(10));
        b.version = 9;
        b.updated_at_unix_ms += 5;
        assert!(a.same_content(&b) && b.same_content(&a));
        b.fingerprint[0] ^= 1;
        assert!(!a.same_content(&b));
        b.fingerprint[0] ^= 1;
        b.sealing.key_version = 2;
        assert!(
            !a.same_content(&b),
            "fingerprints of two key versions do not compare"
        );
        let mut c = a.clone();
        c.tenant = "t2".into();
        assert!(!a.same_content(&c));
    }

    #[test]
    fn set_holder_and_protection_in() {
        let map = map_of(&[3, 3, 3]);
        let mut m = manifest();
        assert_eq!(m.protection_in(&map), Protection::Full);
        let holder = m.segments[1].shards[2].node.unwrap();
        assert_eq!(m.shards_on(holder).filter(|&(s, _)| s == 1).count(), 1);
        let down = with_site_state(&map, "a", NodeState::Down);
        assert_eq!(
            m.protection_in(&down),
            Protection::Full,
            "down nodes keep their shards"
        );
        m.set_holder(1, 2, None).unwrap();
        assert_eq!(m.protection_in(&map), Protection::UnderProtected);
        assert_eq!(
            m.set_holder(3, 0, None),
            Err(PlacementError::NoSuchShard {
                segment: 3,
                index: 0
            })
        );
        assert_eq!(
            m.set_holder(0, 9, None),
            Err(PlacementError::NoSuchShard {
                segment: 0,
                index: 9
            })
        );
    }

    #[test]
    fn protection_combines_to_the_weakest() {
        use Protection::*;
        assert_eq!(Full.and(Full), Full);
        assert_eq!(Full.and(UnderProtected), UnderProtected);
        assert_eq!(UnderProtected.and(Full), UnderProtected);
        assert_eq!(UnderProtected.to_string(), "under-protected");
    }
}

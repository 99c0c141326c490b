//! The state machine's key layout (manifests, the study, object, holder,
//! attention and damaged indexes, leases, retention, holds, key checks) and
//! the index upkeep when a manifest is put, changed or removed.

use super::*;

/// Key of a manifest: tenant 0x00 SOP Instance UID. Tenants and UIDs never
/// contain 0x00 (validated at the edge), so keys sort by tenant then UID.
pub fn manifest_key(tenant: &str, uid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + uid.len() + 1);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(uid.as_bytes());
    k
}

/// Where a tenant's retention period lives in the `sm` column family.
pub(super) fn retention_key(tenant: &str) -> Vec<u8> {
    let mut key = b"retention/".to_vec();
    key.extend_from_slice(tenant.as_bytes());
    key
}

/// Where a cluster key version's check value lives in the `sm` column
/// family.
pub(super) fn key_check_key(version: u32) -> Vec<u8> {
    let mut key = KEY_CHECK_PREFIX.to_vec();
    key.extend_from_slice(&version.to_be_bytes());
    key
}
pub(super) const KEY_CHECK_PREFIX: &[u8] = b"key_check/";

/// Where a study's legal hold lives in the `sm` column family.
pub(super) fn legal_hold_key(tenant: &str, study: &str) -> Vec<u8> {
    let mut key = b"legal_hold/".to_vec();
    key.extend(study_prefix(tenant, study));
    key
}

/// Removes a manifest and every index entry that names it.
pub(super) fn unindex(txn: &mut Txn<'_>, m: &Manifest) {
    for id in holder_ids(m) {
        txn.delete(CF_HOLDERS, holders_key(id, m));
    }
    if needs_attention(m) {
        txn.delete(CF_ATTENTION, attention_key(m));
    }
    txn.delete(CF_STUDY, study_key(m));
    txn.delete(CF_OBJECTS, m.object_key.to_vec());
    txn.delete(CF_SM, repair_lease_key(&m.tenant, &m.sop_instance_uid));
    txn.delete(CF_MANIFESTS, manifest_key(&m.tenant, &m.sop_instance_uid));
}

/// Where a repair lease on (tenant, uid) lives in the `sm` column family.
pub(super) fn repair_lease_key(tenant: &str, uid: &str) -> Vec<u8> {
    let mut key = b"repair_lease/".to_vec();
    key.extend(manifest_key(tenant, uid));
    key
}

pub(super) fn study_prefix(tenant: &str, study: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + study.len() + 2);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(study.as_bytes());
    k.push(0);
    k
}

pub(super) fn study_key(m: &Manifest) -> Vec<u8> {
    let mut k = study_prefix(&m.tenant, &m.study_instance_uid);
    k.extend_from_slice(m.series_instance_uid.as_bytes());
    k.push(0);
    k.extend_from_slice(m.sop_instance_uid.as_bytes());
    k
}

/// Newest first: the bytes of `u64::MAX - stored_at` sort a recently
/// stored manifest before an older one.
pub(super) fn recency(m: &Manifest) -> [u8; 8] {
    (u64::MAX - u64::try_from(m.stored_at_unix_ms).unwrap_or(0)).to_be_bytes()
}

pub(super) fn holders_key(node: NodeId, m: &Manifest) -> Vec<u8> {
    let mut k = node.to_be_bytes().to_vec();
    k.extend_from_slice(&recency(m));
    k.extend_from_slice(&manifest_key(&m.tenant, &m.sop_instance_uid));
    k
}

pub(super) fn attention_key(m: &Manifest) -> Vec<u8> {
    let mut k = recency(m).to_vec();
    k.extend_from_slice(&manifest_key(&m.tenant, &m.sop_instance_uid));
    k
}

pub(super) fn damaged_key(d: &DamagedShard) -> Vec<u8> {
    let mut k = Vec::with_capacity(45);
    k.extend_from_slice(&d.node.to_be_bytes());
    k.extend_from_slice(&d.object_key);
    k.extend_from_slice(&d.segment.to_be_bytes());
    k.push(d.index);
    k
}

pub(super) fn damaged_from_key(k: &[u8]) -> Option<DamagedShard> {
    if k.len() != 45 {
        return None;
    }
    Some(DamagedShard {
        node: u64::from_be_bytes(k[0..8].try_into().ok()?),
        object_key: k[8..40].try_into().ok()?,
        segment: u32::from_be_bytes(k[40..44].try_into().ok()?),
        index: k[44],
    })
}

/// Stored under-protected or with an unplaced shard: repair has work here
/// whatever the map says.
pub(super) fn needs_attention(m: &Manifest) -> bool {
    m.protection != Protection::Full
        || m.segments
            .iter()
            .any(|s| s.shards.iter().any(|sh| sh.node.is_none()))
}

pub(super) fn holder_ids(m: &Manifest) -> std::collections::BTreeSet<NodeId> {
    m.segments
        .iter()
        .flat_map(|s| s.shards.iter().filter_map(|sh| sh.node))
        .collect()
}

/// Keeps the holder and attention indexes of one manifest in step with it.
pub(super) fn reindex(txn: &mut Txn<'_>, old: Option<&Manifest>, new: &Manifest) {
    let new_holders = holder_ids(new);
    if let Some(old) = old {
        for id in holder_ids(old).difference(&new_holders) {
            txn.delete(CF_HOLDERS, holders_key(*id, old));
        }
        if needs_attention(old) && !needs_attention(new) {
            txn.delete(CF_ATTENTION, attention_key(old));
        }
    }
    for id in new_holders {
        txn.put_raw(CF_HOLDERS, holders_key(id, new), Vec::new());
    }
    if needs_attention(new) {
        txn.put_raw(CF_ATTENTION, attention_key(new), Vec::new());
    }
}

/// An instance that may be unreadable or at risk, with its damaged
/// shards (segment, index, node).
pub(super) type Suspect = (Manifest, Vec<(u32, u8, NodeId)>);

//! The state machine: applies committed [`Command`]s to RocksDB, answers
//! reads, and builds and installs snapshots.
//!
//! Applying is deterministic and never fails on a bad command: a command
//! the state refuses (a conflicting manifest, an unknown node) becomes a
//! [`Rejected`] answer and changes nothing. Only a storage fault is an
//! error, and openraft stops the node on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kura_erasure::EcParams;
use kura_placement::{ClusterMap, Manifest, NodeId, Protection};
use kura_proto::codec;
use kura_proto::meta::{
    Applied, AuditEntry, AuditVerdict, Command, CommandResult, DamagedShard, LegalHold, Rejected,
    RepairLease, ShardReference, TokenRecord,
};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend};
use rocksdb::{DB, Direction, IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};

use super::snapdata::{Materialize, SnapshotData, open_checkpoint};
use super::snapshot;
use super::{
    CF_ATTENTION, CF_AUDIT, CF_DAMAGED, CF_HOLDERS, CF_MANIFESTS, CF_OBJECTS, CF_RAFT, CF_SM,
    CF_STUDY, CF_TOKENS, StoreFault, cf, io_err, read_err, sync_write_opts, write_err,
};
use crate::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_MAP: &[u8] = b"map";
const KEY_PROFILE: &[u8] = b"profile";
const KEY_COUNTS: &[u8] = b"counts";
/// The audit trail's head: (next sequence number, hash of the last entry).
const KEY_AUDIT_HEAD: &[u8] = b"audit_head";
/// In `raft`: the current snapshot's meta and file name (`snap-ID.bin`;
/// a snapshot this node built is kept as the checkpoint `snap-ID.ckpt` and
/// has the file only once a follower needed it).
const KEY_SNAPSHOT: &[u8] = b"snapshot";
/// In `raft`: set while a snapshot is being loaded; a restart finishes it.
const KEY_INSTALLING: &[u8] = b"installing";

/// Counts kept beside the manifests so status answers without a scan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestCounts {
    pub total: u64,
    pub under_protected: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    file: String,
}

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
fn retention_key(tenant: &str) -> Vec<u8> {
    let mut key = b"retention/".to_vec();
    key.extend_from_slice(tenant.as_bytes());
    key
}

/// Where a cluster key version's check value lives in the `sm` column
/// family.
fn key_check_key(version: u32) -> Vec<u8> {
    let mut key = KEY_CHECK_PREFIX.to_vec();
    key.extend_from_slice(&version.to_be_bytes());
    key
}
const KEY_CHECK_PREFIX: &[u8] = b"key_check/";

/// Where a study's legal hold lives in the `sm` column family.
fn legal_hold_key(tenant: &str, study: &str) -> Vec<u8> {
    let mut key = b"legal_hold/".to_vec();
    key.extend(study_prefix(tenant, study));
    key
}

/// Removes a manifest and every index entry that names it.
fn unindex(txn: &mut Txn<'_>, m: &Manifest) {
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
fn repair_lease_key(tenant: &str, uid: &str) -> Vec<u8> {
    let mut key = b"repair_lease/".to_vec();
    key.extend(manifest_key(tenant, uid));
    key
}

fn study_prefix(tenant: &str, study: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + study.len() + 2);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(study.as_bytes());
    k.push(0);
    k
}

fn study_key(m: &Manifest) -> Vec<u8> {
    let mut k = study_prefix(&m.tenant, &m.study_instance_uid);
    k.extend_from_slice(m.series_instance_uid.as_bytes());
    k.push(0);
    k.extend_from_slice(m.sop_instance_uid.as_bytes());
    k
}

/// Newest first: the bytes of `u64::MAX - stored_at` sort a recently
/// stored manifest before an older one.
fn recency(m: &Manifest) -> [u8; 8] {
    (u64::MAX - u64::try_from(m.stored_at_unix_ms).unwrap_or(0)).to_be_bytes()
}

fn holders_key(node: NodeId, m: &Manifest) -> Vec<u8> {
    let mut k = node.to_be_bytes().to_vec();
    k.extend_from_slice(&recency(m));
    k.extend_from_slice(&manifest_key(&m.tenant, &m.sop_instance_uid));
    k
}

fn attention_key(m: &Manifest) -> Vec<u8> {
    let mut k = recency(m).to_vec();
    k.extend_from_slice(&manifest_key(&m.tenant, &m.sop_instance_uid));
    k
}

fn damaged_key(d: &DamagedShard) -> Vec<u8> {
    let mut k = Vec::with_capacity(45);
    k.extend_from_slice(&d.node.to_be_bytes());
    k.extend_from_slice(&d.object_key);
    k.extend_from_slice(&d.segment.to_be_bytes());
    k.push(d.index);
    k
}

fn damaged_from_key(k: &[u8]) -> Option<DamagedShard> {
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
fn needs_attention(m: &Manifest) -> bool {
    m.protection != Protection::Full
        || m.segments
            .iter()
            .any(|s| s.shards.iter().any(|sh| sh.node.is_none()))
}

fn holder_ids(m: &Manifest) -> std::collections::BTreeSet<NodeId> {
    m.segments
        .iter()
        .flat_map(|s| s.shards.iter().filter_map(|sh| sh.node))
        .collect()
}

/// Keeps the holder and attention indexes of one manifest in step with it.
fn reindex(txn: &mut Txn<'_>, old: Option<&Manifest>, new: &Manifest) {
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
type Suspect = (Manifest, Vec<(u32, u8, NodeId)>);

/// One page of a study listing: the manifests, and the (series, SOP
/// Instance UID) cursor of the next page when more may follow.
pub type StudyPage = (Vec<Manifest>, Option<(String, String)>);

/// One page of damaged shards with their manifests, and the next cursor.
pub type DamagedPage = (Vec<(DamagedShard, Option<Manifest>)>, Option<DamagedShard>);

/// Read access to a node's applied state, for queries served outside
/// openraft. Cheap to clone.
#[derive(Clone)]
pub struct StateReader {
    db: Arc<DB>,
}

impl StateReader {
    fn get<T: serde::de::DeserializeOwned>(
        &self,
        cf_name: &str,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let h = cf(&self.db, cf_name)?;
        match self.db.get_cf(h, key).map_err(read_err)? {
            None => Ok(None),
            Some(b) => Ok(Some(codec::decode(&b).map_err(read_err)?)),
        }
    }

    /// The manifest of (tenant, uid), if stored.
    pub fn manifest(&self, tenant: &str, uid: &str) -> Result<Option<Manifest>, StorageError> {
        self.get(CF_MANIFESTS, &manifest_key(tenant, uid))
    }

    /// One page of the audit trail from `from`; the next `from` if more.
    pub fn audit_page(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, Option<u64>), StorageError> {
        let h = cf(&self.db, CF_AUDIT)?;
        let start = from.to_be_bytes();
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(h, IteratorMode::From(&start, Direction::Forward))
        {
            let (_, v) = item.map_err(read_err)?;
            let entry: AuditEntry = codec::decode(&v).map_err(read_err)?;
            if out.len() == limit {
                return Ok((out, Some(entry.seq)));
            }
            out.push(entry);
        }
        Ok((out, None))
    }

    /// Every token record.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StorageError> {
        let h = cf(&self.db, CF_TOKENS)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(h, IteratorMode::Start) {
            let (_, v) = item.map_err(read_err)?;
            out.push(codec::decode(&v).map_err(read_err)?);
        }
        Ok(out)
    }

    /// Walks this node's copy of the audit trail and checks every link:
    /// each entry's key, sequence number, previous hash and own hash, and
    /// the recorded head. Names the first entry that fails.
    pub fn verify_audit(&self) -> Result<AuditVerdict, StorageError> {
        let h = cf(&self.db, CF_AUDIT)?;
        let (next, head): (u64, [u8; 32]) =
            self.get(CF_SM, KEY_AUDIT_HEAD)?.unwrap_or((0, [0; 32]));
        let mut expected = 0u64;
        let mut prev = [0u8; 32];
        let mut bad = None;
        for item in self.db.iterator_cf(h, IteratorMode::Start) {
            let (k, v) = item.map_err(read_err)?;
            let at = <[u8; 8]>::try_from(k.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(u64::MAX);
            let why = match codec::decode::<AuditEntry>(&v) {
                Err(e) => Some(format!("it does not decode ({e}): altered")),
                Ok(e) if at != expected || e.seq != expected => Some(format!(
                    "expected entry {expected} here, found entry {} under key {at}: entries removed or moved",
                    e.seq
                )),
                Ok(e) if e.prev != prev => {
                    Some("its previous-entry hash does not match the entry before it".into())
                }
                Ok(e) => match AuditEntry::chain_hash(&prev, e.seq, &e.record) {
                    Ok(want) if want == e.hash => {
                        prev = e.hash;
                        None
                    }
                    Ok(_) => Some("its content does not match its hash: altered".into()),
                    Err(err) => Some(err),
                },
            };
            if let Some(why) = why {
                bad = Some((at.min(expected), why));
                break;
            }
            expected += 1;
        }
        if bad.is_none() && (expected != next || prev != head) {
            bad = Some((
                expected,
                format!(
                    "the trail ends after {expected} entries but {next} were recorded: entries removed at the end"
                ),
            ));
        }
        Ok(AuditVerdict {
            entries: expected,
            head,
            first_bad: bad,
        })
    }

    /// The cluster map and erasure profile, once initialised.
    pub fn cluster(&self) -> Result<(Option<ClusterMap>, Option<EcParams>), StorageError> {
        Ok((self.get(CF_SM, KEY_MAP)?, self.get(CF_SM, KEY_PROFILE)?))
    }

    /// For each object key, whether a stored manifest references it.
    pub fn objects_referenced(&self, keys: &[[u8; 32]]) -> Result<Vec<bool>, StorageError> {
        let h = cf(&self.db, CF_OBJECTS)?;
        self.db
            .multi_get_cf(keys.iter().map(|k| (h, k.as_slice())))
            .into_iter()
            .map(|r| r.map(|v| v.is_some()).map_err(read_err))
            .collect()
    }

    /// For each shard (object key, segment, index), whether its manifest
    /// names `node` as the holder.
    pub fn shards_referenced(
        &self,
        node: NodeId,
        shards: &[([u8; 32], u32, u8)],
    ) -> Result<Vec<ShardReference>, StorageError> {
        let h = cf(&self.db, CF_OBJECTS)?;
        // Consecutive shards of one object (a node lists them in key order)
        // share one manifest read.
        let mut last: Option<([u8; 32], Option<Manifest>)> = None;
        let mut out = Vec::with_capacity(shards.len());
        for (key, segment, index) in shards {
            if last.as_ref().is_none_or(|(k, _)| k != key) {
                let manifest = match self.db.get_cf(h, key).map_err(read_err)? {
                    Some(mkey) => self.manifests_by_key(&[mkey])?.pop(),
                    None => None,
                };
                last = Some((*key, manifest));
            }
            let answer = match last.as_ref().and_then(|(_, m)| m.as_ref()) {
                None => ShardReference::NoManifest,
                Some(m) => {
                    let holder = m
                        .segments
                        .iter()
                        .find(|s| s.index == *segment)
                        .and_then(|s| s.shards.iter().find(|l| l.index == *index))
                        .and_then(|l| l.node);
                    if holder == Some(node) {
                        ShardReference::Held
                    } else {
                        ShardReference::HeldElsewhere
                    }
                }
            };
            out.push(answer);
        }
        Ok(out)
    }

    /// How many instances are unreadable now and how many at risk (readable,
    /// but not if one more site were lost), counting damaged, quarantined
    /// and unplaced shards as missing, as `Admin.Protection` does. Only
    /// instances that can be either are examined — stored under-protected
    /// or with an unplaced shard, with a shard on a node that is not up, or
    /// with a damaged shard — at most `limit` of them (then the counts are
    /// a lower bound, and the flag says so).
    pub fn readable_protection(&self, limit: usize) -> Result<(u64, u64, bool), StorageError> {
        use std::collections::BTreeMap;
        let Some(map) = self.cluster()?.0 else {
            return Ok((0, 0, false));
        };
        let mut suspects: BTreeMap<(String, String), Suspect> = BTreeMap::new();
        let mut capped = false;
        let mut add = |m: Manifest, bad: Option<(u32, u8, NodeId)>| {
            let full = suspects.len() >= limit;
            let key = (m.tenant.clone(), m.sop_instance_uid.clone());
            match suspects.get_mut(&key) {
                Some(entry) => entry.1.extend(bad),
                None if full => capped = true,
                None => {
                    suspects.insert(key, (m, bad.into_iter().collect()));
                }
            }
        };
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (page, next) = self.attention(after.as_deref(), 1000)?;
            page.into_iter().for_each(|m| add(m, None));
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        for node in self.holder_nodes()? {
            if map
                .node(node)
                .is_some_and(|n| n.state == kura_placement::NodeState::Up)
            {
                continue;
            }
            let mut after: Option<Vec<u8>> = None;
            loop {
                let (page, next) = self.manifests_on_node(node, after.as_deref(), 1000)?;
                page.into_iter().for_each(|m| add(m, None));
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
        }
        let mut after = None;
        loop {
            let (page, next) = self.damaged(after.as_ref(), 1000)?;
            for (d, m) in page {
                if let Some(m) = m {
                    add(m, Some((d.segment, d.index, d.node)));
                }
            }
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let (mut unreadable, mut at_risk) = (0, 0);
        for (m, bad) in suspects.values() {
            match kura_placement::survival(&map, m, bad) {
                kura_placement::Survival::Safe => {}
                kura_placement::Survival::AtRisk { .. } => at_risk += 1,
                kura_placement::Survival::Unreadable { .. } => unreadable += 1,
            }
        }
        Ok((unreadable, at_risk, capped))
    }

    /// The retention period of `tenant`, in days.
    pub fn retention(&self, tenant: &str) -> Result<Option<u32>, StorageError> {
        self.get(CF_SM, &retention_key(tenant))
    }

    /// The legal hold on a study, if any.
    pub fn legal_hold(&self, tenant: &str, study: &str) -> Result<Option<LegalHold>, StorageError> {
        self.get(CF_SM, &legal_hold_key(tenant, study))
    }

    /// The cluster key versions whose check values are recorded, ascending.
    pub fn key_versions(&self) -> Result<Vec<u32>, StorageError> {
        let h = cf(&self.db, CF_SM)?;
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(h, IteratorMode::From(KEY_CHECK_PREFIX, Direction::Forward))
        {
            let (key, _) = item.map_err(read_err)?;
            let Some(rest) = key.strip_prefix(KEY_CHECK_PREFIX) else {
                break;
            };
            if let Ok(v) = <[u8; 4]>::try_from(rest) {
                out.push(u32::from_be_bytes(v));
            }
        }
        Ok(out)
    }

    /// Manifests per cluster key version (a scan of every manifest).
    pub fn key_usage(&self) -> Result<Vec<(u32, u64)>, StorageError> {
        let h = cf(&self.db, CF_MANIFESTS)?;
        let mut counts = std::collections::BTreeMap::<u32, u64>::new();
        for item in self.db.iterator_cf(h, IteratorMode::Start) {
            let (_, value) = item.map_err(read_err)?;
            let m: Manifest = codec::decode(&value).map_err(read_err)?;
            *counts.entry(m.sealing.key_version).or_default() += 1;
        }
        Ok(counts.into_iter().collect())
    }

    /// Manifests of any tenant after `after`, in key order, not sealed
    /// under `key_version`: at most `limit`, from at most `scan` looked at.
    /// The cursor is the last manifest looked at.
    #[allow(clippy::type_complexity)]
    pub fn not_sealed_under(
        &self,
        key_version: u32,
        after: Option<(&str, &str)>,
        limit: usize,
        scan: usize,
    ) -> Result<(Vec<Manifest>, Option<(String, String)>), StorageError> {
        let h = cf(&self.db, CF_MANIFESTS)?;
        let start = match after {
            Some((tenant, uid)) => {
                let mut k = manifest_key(tenant, uid);
                k.push(0);
                k
            }
            None => Vec::new(),
        };
        let mut out = Vec::new();
        let mut last: Option<(String, String)> = None;
        for (looked, item) in self
            .db
            .iterator_cf(h, IteratorMode::From(&start, Direction::Forward))
            .enumerate()
        {
            if out.len() == limit || looked == scan {
                return Ok((out, last));
            }
            let (_, value) = item.map_err(read_err)?;
            let m: Manifest = codec::decode(&value).map_err(read_err)?;
            last = Some((m.tenant.clone(), m.sop_instance_uid.clone()));
            if m.sealing.key_version != key_version {
                out.push(m);
            }
        }
        Ok((out, None))
    }

    /// Manifest counts.
    pub fn counts(&self) -> Result<ManifestCounts, StorageError> {
        Ok(self.get(CF_SM, KEY_COUNTS)?.unwrap_or_default())
    }

    /// The last applied log id.
    pub fn applied(&self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get::<Option<LogId>>(CF_SM, KEY_APPLIED)?.flatten())
    }

    /// The last applied log id and the membership as of it.
    fn applied_state(&self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let membership = self
            .get::<StoredMembership>(CF_SM, KEY_MEMBERSHIP)?
            .unwrap_or_default();
        Ok((self.applied()?, membership))
    }

    /// Manifests by their keys, in order (a missing one is an index fault).
    fn manifests_by_key(&self, keys: &[Vec<u8>]) -> Result<Vec<Manifest>, StorageError> {
        let h_man = cf(&self.db, CF_MANIFESTS)?;
        let mut manifests = Vec::with_capacity(keys.len());
        for got in self.db.batched_multi_get_cf(h_man, keys, false) {
            match got.map_err(read_err)? {
                Some(bytes) => manifests.push(codec::decode(&bytes).map_err(read_err)?),
                None => return Err(read_err("an index names a manifest that is missing")),
            }
        }
        Ok(manifests)
    }

    /// One page of an index whose keys are `prefix ++ recency (8) ++
    /// manifest key`: the manifests, and the cursor of the next page.
    fn recency_page(
        &self,
        cf_name: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Manifest>, Option<Vec<u8>>), StorageError> {
        let h = cf(&self.db, cf_name)?;
        let mut start = prefix.to_vec();
        if let Some(after) = after.filter(|a| a.starts_with(prefix)) {
            start = after.to_vec();
            start.push(0);
        }
        let mut keys = Vec::new();
        let mut cursors = Vec::new();
        let mut next = None;
        for item in self
            .db
            .iterator_cf(h, IteratorMode::From(&start, Direction::Forward))
        {
            let (key, _) = item.map_err(read_err)?;
            if !key.starts_with(prefix) {
                break;
            }
            if keys.len() == limit {
                next = cursors.last().cloned();
                break;
            }
            let Some(mkey) = key.get(prefix.len() + 8..) else {
                return Err(read_err("short index key"));
            };
            keys.push(mkey.to_vec());
            cursors.push(key.to_vec());
        }
        Ok((self.manifests_by_key(&keys)?, next))
    }

    /// Manifests naming `node` as a holder, newest first.
    pub fn manifests_on_node(
        &self,
        node: NodeId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Manifest>, Option<Vec<u8>>), StorageError> {
        self.recency_page(CF_HOLDERS, &node.to_be_bytes(), after, limit)
    }

    /// Manifests stored under-protected or with an unplaced shard, newest
    /// first.
    pub fn attention(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Manifest>, Option<Vec<u8>>), StorageError> {
        self.recency_page(CF_ATTENTION, &[], after, limit)
    }

    /// One page of a tenant's manifests in UID order, after `after`.
    pub fn list_manifests(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Manifest>, Option<Vec<u8>>), StorageError> {
        let h = cf(&self.db, CF_MANIFESTS)?;
        let prefix = manifest_key(tenant, "");
        let mut start = manifest_key(tenant, after.unwrap_or(""));
        if after.is_some() {
            start.push(0);
        }
        let mut out = Vec::new();
        let mut next = None;
        for item in self
            .db
            .iterator_cf(h, IteratorMode::From(&start, Direction::Forward))
        {
            let (key, value) = item.map_err(read_err)?;
            if !key.starts_with(&prefix) {
                break;
            }
            if out.len() == limit {
                next = out
                    .last()
                    .map(|m: &Manifest| m.sop_instance_uid.as_bytes().to_vec());
                break;
            }
            out.push(codec::decode(&value).map_err(read_err)?);
        }
        Ok((out, next))
    }

    /// How many manifests name `node` as a holder, up to `max`.
    pub fn count_on_node(&self, node: NodeId, max: u64) -> Result<u64, StorageError> {
        let h = cf(&self.db, CF_HOLDERS)?;
        let prefix = node.to_be_bytes();
        let mut n = 0;
        for item in self
            .db
            .iterator_cf(h, IteratorMode::From(&prefix, Direction::Forward))
        {
            let (key, _) = item.map_err(read_err)?;
            if !key.starts_with(&prefix) || n >= max {
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    /// Whether any manifest names `node` as a holder.
    pub fn node_holds_shards(&self, node: NodeId) -> Result<bool, StorageError> {
        Ok(!self.manifests_on_node(node, None, 1)?.0.is_empty())
    }

    /// Every node id named as a holder (a skip scan: one seek per node).
    pub fn holder_nodes(&self) -> Result<Vec<NodeId>, StorageError> {
        let h = cf(&self.db, CF_HOLDERS)?;
        let mut out = Vec::new();
        let mut from = 0u64;
        loop {
            let start = from.to_be_bytes();
            let Some(item) = self
                .db
                .iterator_cf(h, IteratorMode::From(&start, Direction::Forward))
                .next()
            else {
                break;
            };
            let (key, _) = item.map_err(read_err)?;
            let Some(id) = key.get(..8).and_then(|b| b.try_into().ok()) else {
                return Err(read_err("short holders key"));
            };
            let id = u64::from_be_bytes(id);
            out.push(id);
            match id.checked_add(1) {
                Some(n) => from = n,
                None => break,
            }
        }
        Ok(out)
    }

    /// One page of reported damaged shards, each with the manifest that
    /// references its object, if any.
    pub fn damaged(
        &self,
        after: Option<&DamagedShard>,
        limit: usize,
    ) -> Result<DamagedPage, StorageError> {
        let h = cf(&self.db, CF_DAMAGED)?;
        let h_obj = cf(&self.db, CF_OBJECTS)?;
        let mut start = Vec::new();
        if let Some(a) = after {
            start = damaged_key(a);
            start.push(0);
        }
        let mut out = Vec::new();
        let mut next = None;
        for item in self
            .db
            .iterator_cf(h, IteratorMode::From(&start, Direction::Forward))
        {
            let (key, _) = item.map_err(read_err)?;
            let Some(d) = damaged_from_key(&key) else {
                return Err(read_err("malformed damaged-shard key"));
            };
            if out.len() == limit {
                next = out.last().map(|(d, _): &(DamagedShard, _)| *d);
                break;
            }
            let manifest = match self.db.get_cf(h_obj, d.object_key).map_err(read_err)? {
                Some(mkey) => self.manifests_by_key(&[mkey])?.pop(),
                None => None,
            };
            out.push((d, manifest));
        }
        Ok((out, next))
    }

    /// One page of a study's manifests in (series, SOP Instance UID) order,
    /// after `after` when given, optionally of one series. Answers the page
    /// and, when more may follow, the cursor for the next one.
    pub fn list_study(
        &self,
        tenant: &str,
        study: &str,
        series: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<StudyPage, StorageError> {
        let mut prefix = study_prefix(tenant, study);
        if let Some(series) = series {
            prefix.extend_from_slice(series.as_bytes());
            prefix.push(0);
        }
        let study_len = study_prefix(tenant, study).len();
        let mut start = prefix.clone();
        if let Some((a_series, a_uid)) = after {
            start = study_prefix(tenant, study);
            start.extend_from_slice(a_series.as_bytes());
            start.push(0);
            start.extend_from_slice(a_uid.as_bytes());
            // The smallest key after `after` itself.
            start.push(0);
            if start < prefix {
                start = prefix.clone();
            }
        }
        let h_study = cf(&self.db, CF_STUDY)?;
        let mut keys = Vec::new();
        let mut next = None;
        for item in self
            .db
            .iterator_cf(h_study, IteratorMode::From(&start, Direction::Forward))
        {
            let (key, _) = item.map_err(read_err)?;
            if !key.starts_with(&prefix) {
                break;
            }
            if keys.len() == limit {
                next = keys.last().cloned();
                break;
            }
            let rest = &key[study_len..];
            let mut parts = rest.splitn(2, |b| *b == 0);
            let series = parts.next().unwrap_or_default();
            let uid = parts.next().unwrap_or_default();
            keys.push((
                String::from_utf8_lossy(series).into_owned(),
                String::from_utf8_lossy(uid).into_owned(),
            ));
        }
        let lookups: Vec<Vec<u8>> = keys
            .iter()
            .map(|(_, uid)| manifest_key(tenant, uid))
            .collect();
        Ok((self.manifests_by_key(&lookups)?, next))
    }
}

/// The state machine handed to openraft.
pub struct StateMachine {
    db: Arc<DB>,
    snapshot_dir: PathBuf,
    snapshot_seq: Arc<AtomicU64>,
    materialize: Arc<std::sync::Mutex<()>>,
}

impl StateMachine {
    /// The state machine over `db`, keeping snapshot files in
    /// `snapshot_dir`. Finishes a snapshot install a crash interrupted.
    pub fn open(db: Arc<DB>, snapshot_dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(snapshot_dir).map_err(write_err)?;
        remove_unfinished(snapshot_dir);
        let sm = Self {
            db,
            snapshot_dir: snapshot_dir.to_owned(),
            snapshot_seq: Arc::new(AtomicU64::new(0)),
            materialize: Arc::new(std::sync::Mutex::new(())),
        };
        let raft_cf = cf(&sm.db, CF_RAFT)?;
        if let Some(bytes) = sm.db.get_cf(raft_cf, KEY_INSTALLING).map_err(read_err)? {
            let current: CurrentSnapshot = codec::decode(&bytes).map_err(read_err)?;
            tracing::warn!(file = %current.file, "finishing a snapshot install interrupted by a restart");
            load_and_mark(&sm.db, &sm.snapshot_dir, &current)?;
        }
        Ok(sm)
    }

    /// A reader of this state machine's applied state.
    pub fn reader(&self) -> StateReader {
        StateReader {
            db: self.db.clone(),
        }
    }

    /// A new name for a snapshot file being received (`remove_unfinished`
    /// deletes what a crash leaves of it).
    fn incoming_path(&self) -> PathBuf {
        let n = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        self.snapshot_dir
            .join(format!("incoming-{}-{n}.tmp", std::process::id()))
    }

    fn current_snapshot(&self) -> Result<Option<CurrentSnapshot>, StorageError> {
        let raft_cf = cf(&self.db, CF_RAFT)?;
        match self.db.get_cf(raft_cf, KEY_SNAPSHOT).map_err(read_err)? {
            None => Ok(None),
            Some(b) => Ok(Some(codec::decode(&b).map_err(read_err)?)),
        }
    }
}

/// Loads a verified snapshot file into the state machine and records it as
/// the current snapshot (synced), clearing the install-in-progress mark.
fn load_and_mark(db: &DB, dir: &Path, current: &CurrentSnapshot) -> Result<(), StorageError> {
    snapshot::load_into_db(db, &dir.join(&current.file)).map_err(write_err)?;
    let raft_cf = cf(db, CF_RAFT)?;
    let mut batch = WriteBatch::default();
    batch.put_cf(
        raft_cf,
        KEY_SNAPSHOT,
        codec::encode(current).map_err(write_err)?,
    );
    batch.delete_cf(raft_cf, KEY_INSTALLING);
    db.write_opt(batch, &sync_write_opts()).map_err(write_err)
}

/// The checkpoint directory kept for the snapshot file `file`.
fn checkpoint_name(file: &str) -> String {
    format!("{}.ckpt", file.strip_suffix(".bin").unwrap_or(file))
}

/// Deletes snapshot files and checkpoints other than those of `keep` (the
/// current snapshot's file name). Anything still being written ends in
/// `.tmp` and is left alone.
fn remove_old_snapshots(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let keep_checkpoint = checkpoint_name(keep);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("snap-") || name == keep || name == keep_checkpoint.as_str() {
            continue;
        }
        if name.ends_with(".bin") {
            let _ = std::fs::remove_file(entry.path());
        } else if name.ends_with(".ckpt") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Deletes what a crash left half-written: received files, snapshot files
/// and checkpoints not yet renamed into place.
fn remove_unfinished(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".tmp") || name.starts_with("incoming-") {
            let path = entry.path();
            if path.is_dir() {
                let _ = std::fs::remove_dir_all(&path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// Pending writes of one `apply` call, visible to later commands of the
/// same call before they reach RocksDB in one batch.
struct Txn<'a> {
    db: &'a DB,
    writes: BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>>,
}

impl<'a> Txn<'a> {
    fn get<T: serde::de::DeserializeOwned>(
        &self,
        cf_name: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let bytes = match self.writes.get(&(cf_name, key.to_vec())) {
            Some(pending) => pending.clone(),
            None => self
                .db
                .get_cf(cf(self.db, cf_name)?, key)
                .map_err(read_err)?,
        };
        match bytes {
            None => Ok(None),
            Some(b) => Ok(Some(codec::decode(&b).map_err(read_err)?)),
        }
    }

    fn put<T: Serialize>(
        &mut self,
        cf_name: &'static str,
        key: Vec<u8>,
        value: &T,
    ) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(write_err)?;
        self.writes.insert((cf_name, key), Some(bytes));
        Ok(())
    }

    fn put_raw(&mut self, cf_name: &'static str, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert((cf_name, key), Some(value));
    }

    fn delete(&mut self, cf_name: &'static str, key: Vec<u8>) {
        self.writes.insert((cf_name, key), None);
    }

    /// Whether any key starting with `prefix` exists, pending writes of
    /// this transaction included.
    /// Visits the keys under `prefix`, pending writes included (a pending
    /// delete hides a stored key; a key may be visited twice), until
    /// `visit` answers false.
    fn visit_prefix(
        &self,
        cf_name: &'static str,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let pending = self
            .writes
            .range((cf_name, prefix.to_vec())..)
            .take_while(|((c, k), _)| *c == cf_name && k.starts_with(prefix));
        let mut deleted = std::collections::BTreeSet::new();
        for ((_, k), v) in pending {
            if v.is_some() {
                if !visit(k) {
                    return Ok(());
                }
            } else {
                deleted.insert(k.clone());
            }
        }
        let h = cf(self.db, cf_name)?;
        for item in self
            .db
            .iterator_cf(h, IteratorMode::From(prefix, Direction::Forward))
        {
            let (key, _) = item.map_err(read_err)?;
            if !key.starts_with(prefix) {
                break;
            }
            if !deleted.contains(key.as_ref()) && !visit(&key) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Every key under `prefix` (a few: key versions).
    fn keys_with_prefix(
        &self,
        cf_name: &'static str,
        prefix: &[u8],
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut keys = std::collections::BTreeSet::new();
        self.visit_prefix(cf_name, prefix, |k| {
            keys.insert(k.to_vec());
            true
        })?;
        Ok(keys.into_iter().collect())
    }

    fn any_with_prefix(&self, cf_name: &'static str, prefix: &[u8]) -> Result<bool, StorageError> {
        let mut any = false;
        self.visit_prefix(cf_name, prefix, |_| {
            any = true;
            false
        })?;
        Ok(any)
    }

    fn commit(self) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        for ((cf_name, key), value) in self.writes {
            let h = cf(self.db, cf_name)?;
            match value {
                Some(v) => batch.put_cf(h, key, v),
                None => batch.delete_cf(h, key),
            }
        }
        // Not synced: see the module doc of `store` (the log is).
        self.db.write(batch).map_err(write_err)
    }
}

fn hex32(b: &[u8; 32]) -> String {
    hex::encode(b)
}

fn put_manifest(txn: &mut Txn<'_>, mut m: Manifest) -> Result<CommandResult, StorageError> {
    let key = manifest_key(&m.tenant, &m.sop_instance_uid);
    if let Some(existing) = txn.get::<Manifest>(CF_MANIFESTS, &key)? {
        if existing.same_content(&m) {
            return Ok(Ok(Applied::ManifestIdentical {
                existing: Box::new(existing),
            }));
        }
        return Ok(Err(Rejected::Conflict {
            sop_instance_uid: m.sop_instance_uid.clone(),
            existing_fingerprint: hex32(&existing.fingerprint),
            existing_key_version: existing.sealing.key_version,
            offered_fingerprint: hex32(&m.fingerprint),
            existing_stored_at_unix_ms: existing.stored_at_unix_ms,
        }));
    }
    m.version = 1;
    let mut counts: ManifestCounts = txn.get(CF_SM, KEY_COUNTS)?.unwrap_or_default();
    counts.total += 1;
    if m.protection == Protection::UnderProtected {
        counts.under_protected += 1;
    }
    txn.put(CF_SM, KEY_COUNTS.to_vec(), &counts)?;
    txn.put_raw(CF_STUDY, study_key(&m), Vec::new());
    txn.put_raw(CF_OBJECTS, m.object_key.to_vec(), key.clone());
    reindex(txn, None, &m);
    txn.put(CF_MANIFESTS, key, &m)?;
    Ok(Ok(Applied::ManifestCreated { version: 1 }))
}

fn apply_command(txn: &mut Txn<'_>, cmd: Command) -> Result<CommandResult, StorageError> {
    if let Err(reason) = cmd.validate() {
        return Ok(Err(Rejected::Invalid(reason)));
    }
    match cmd {
        Command::PutManifest(m) => put_manifest(txn, m),
        Command::PutManifests(ms) => {
            let (mut created, mut identical, mut conflicts) = (0, 0, Vec::new());
            for m in ms {
                match put_manifest(txn, m)? {
                    Ok(Applied::ManifestCreated { .. }) => created += 1,
                    Ok(_) => identical += 1,
                    Err(r) => conflicts.push(r),
                }
            }
            Ok(Ok(Applied::ManifestsImported {
                created,
                identical,
                conflicts,
            }))
        }
        Command::CasManifest {
            expected_version,
            mut manifest,
        } => {
            let key = manifest_key(&manifest.tenant, &manifest.sop_instance_uid);
            let Some(existing) = txn.get::<Manifest>(CF_MANIFESTS, &key)? else {
                return Ok(Err(Rejected::NotFound(format!(
                    "instance {} of tenant {}",
                    manifest.sop_instance_uid, manifest.tenant
                ))));
            };
            if existing.version != expected_version {
                return Ok(Err(Rejected::VersionMismatch {
                    expected: expected_version,
                    current: existing.version,
                }));
            }
            if !existing.same_content(&manifest)
                || existing.study_instance_uid != manifest.study_instance_uid
                || existing.series_instance_uid != manifest.series_instance_uid
            {
                return Ok(Err(Rejected::Invalid(format!(
                    "compare-and-set of {} must not change the instance's content or study/series",
                    manifest.sop_instance_uid
                ))));
            }
            manifest.version = expected_version + 1;
            manifest.stored_at_unix_ms = existing.stored_at_unix_ms;
            if existing.protection != manifest.protection {
                let mut counts: ManifestCounts = txn.get(CF_SM, KEY_COUNTS)?.unwrap_or_default();
                if manifest.protection == Protection::UnderProtected {
                    counts.under_protected += 1;
                } else {
                    counts.under_protected = counts.under_protected.saturating_sub(1);
                }
                txn.put(CF_SM, KEY_COUNTS.to_vec(), &counts)?;
            }
            let version = manifest.version;
            reindex(txn, Some(&existing), &manifest);
            txn.put(CF_MANIFESTS, key, &manifest)?;
            Ok(Ok(Applied::ManifestUpdated { version }))
        }
        Command::InitCluster { mut map, profile } => {
            if let Some(existing) = txn.get::<ClusterMap>(CF_SM, KEY_MAP)? {
                return Ok(Err(Rejected::Invalid(format!(
                    "the cluster map is already initialised (epoch {}); change it node by node",
                    existing.epoch
                ))));
            }
            map.epoch = map.epoch.max(1);
            let epoch = map.epoch;
            txn.put(CF_SM, KEY_MAP.to_vec(), &map)?;
            txn.put(CF_SM, KEY_PROFILE.to_vec(), &profile)?;
            Ok(Ok(Applied::MapChanged { epoch }))
        }
        Command::SetProfile(profile) => {
            txn.put(CF_SM, KEY_PROFILE.to_vec(), &profile)?;
            Ok(Ok(Applied::ProfileSet))
        }
        Command::ReportDamaged { shards } => {
            for d in &shards {
                txn.put_raw(CF_DAMAGED, damaged_key(d), Vec::new());
            }
            Ok(Ok(Applied::DamageRecorded {
                shards: shards.len() as u64,
            }))
        }
        Command::ClearDamaged { shards } => {
            for d in &shards {
                txn.delete(CF_DAMAGED, damaged_key(d));
            }
            Ok(Ok(Applied::DamageRecorded {
                shards: shards.len() as u64,
            }))
        }
        Command::AppendAudit(records) => {
            let (mut next, mut prev): (u64, [u8; 32]) =
                txn.get(CF_SM, KEY_AUDIT_HEAD)?.unwrap_or((0, [0; 32]));
            let first_seq = next;
            for record in records {
                let hash = AuditEntry::chain_hash(&prev, next, &record).map_err(write_err)?;
                let entry = AuditEntry {
                    seq: next,
                    prev,
                    hash,
                    record,
                };
                txn.put(CF_AUDIT, next.to_be_bytes().to_vec(), &entry)?;
                prev = hash;
                next += 1;
            }
            txn.put(CF_SM, KEY_AUDIT_HEAD.to_vec(), &(next, prev))?;
            Ok(Ok(Applied::AuditAppended { first_seq }))
        }
        Command::PutToken(t) => {
            if txn.get::<TokenRecord>(CF_TOKENS, &t.hash)?.is_some() {
                return Ok(Err(Rejected::Invalid(format!(
                    "token {} exists already",
                    t.id
                ))));
            }
            txn.put(CF_TOKENS, t.hash.to_vec(), &t)?;
            Ok(Ok(Applied::TokenChanged))
        }
        Command::RevokeToken {
            id,
            revoked_unix_ms,
        } => {
            let h = cf(txn.db, CF_TOKENS)?;
            let mut found = None;
            for item in txn.db.iterator_cf(h, IteratorMode::Start) {
                let (k, v) = item.map_err(read_err)?;
                let t: TokenRecord = codec::decode(&v).map_err(read_err)?;
                if t.id == id {
                    found = Some((k.to_vec(), t));
                    break;
                }
            }
            let Some((key, mut t)) = found else {
                return Ok(Err(Rejected::NotFound(format!("token {id}"))));
            };
            if t.revoked_unix_ms.is_none() {
                t.revoked_unix_ms = Some(revoked_unix_ms);
                txn.put(CF_TOKENS, key, &t)?;
            }
            Ok(Ok(Applied::TokenChanged))
        }
        Command::ClaimRepair {
            owner,
            now_unix_ms,
            ttl_ms,
            claim,
            release,
        } => {
            for (tenant, uid) in release {
                let key = repair_lease_key(&tenant, &uid);
                if let Some(lease) = txn.get::<RepairLease>(CF_SM, &key)?
                    && lease.owner == owner
                {
                    txn.delete(CF_SM, key);
                }
            }
            let until_unix_ms = now_unix_ms.saturating_add(ttl_ms);
            let mut granted = Vec::with_capacity(claim.len());
            for (tenant, uid) in claim {
                let key = repair_lease_key(&tenant, &uid);
                let free = match txn.get::<RepairLease>(CF_SM, &key)? {
                    None => true,
                    Some(lease) => lease.owner == owner || lease.until_unix_ms <= now_unix_ms,
                };
                if free {
                    txn.put(
                        CF_SM,
                        key,
                        &RepairLease {
                            owner: owner.clone(),
                            until_unix_ms,
                        },
                    )?;
                }
                granted.push(free);
            }
            Ok(Ok(Applied::RepairClaimed { granted }))
        }
        Command::DeleteManifests {
            tenant,
            uids,
            now_unix_ms,
        } => {
            let retention: Option<u32> = txn.get(CF_SM, &retention_key(&tenant))?;
            let mut found: Vec<Manifest> = Vec::with_capacity(uids.len());
            let mut absent = 0u64;
            for uid in &uids {
                let Some(m) = txn.get::<Manifest>(CF_MANIFESTS, &manifest_key(&tenant, uid))?
                else {
                    absent += 1;
                    continue;
                };
                if found
                    .iter()
                    .any(|f| f.sop_instance_uid == m.sop_instance_uid)
                {
                    continue;
                }
                if let Some(until) = m.retained_until(retention)
                    && until > now_unix_ms
                {
                    return Ok(Err(Rejected::Retained {
                        sop_instance_uid: m.sop_instance_uid,
                        until_unix_ms: until,
                    }));
                }
                if let Some(hold) =
                    txn.get::<LegalHold>(CF_SM, &legal_hold_key(&tenant, &m.study_instance_uid))?
                {
                    return Ok(Err(Rejected::OnLegalHold {
                        study_instance_uid: m.study_instance_uid,
                        reason: hold.reason,
                    }));
                }
                found.push(m);
            }
            if !found.is_empty() {
                let mut counts: ManifestCounts = txn.get(CF_SM, KEY_COUNTS)?.unwrap_or_default();
                for m in &found {
                    counts.total = counts.total.saturating_sub(1);
                    if m.protection == Protection::UnderProtected {
                        counts.under_protected = counts.under_protected.saturating_sub(1);
                    }
                    unindex(txn, m);
                }
                txn.put(CF_SM, KEY_COUNTS.to_vec(), &counts)?;
            }
            Ok(Ok(Applied::Deleted {
                deleted: found.len() as u64,
                absent,
            }))
        }
        Command::RegisterKeys { checks } => {
            // Every check first: a refusal must leave nothing written (the
            // transaction of a rejected command is still applied).
            let mut new = Vec::new();
            for c in &checks {
                let key = key_check_key(c.version);
                match txn.get::<[u8; 32]>(CF_SM, &key)? {
                    Some(known) if known != c.check => {
                        return Ok(Err(Rejected::KeyMismatch { version: c.version }));
                    }
                    Some(_) => {}
                    None => new.push((key, c.check)),
                }
            }
            for (key, check) in new {
                txn.put(CF_SM, key, &check)?;
            }
            let mut known: Vec<u32> = txn
                .keys_with_prefix(CF_SM, KEY_CHECK_PREFIX)?
                .iter()
                .filter_map(|k| <[u8; 4]>::try_from(&k[KEY_CHECK_PREFIX.len()..]).ok())
                .map(u32::from_be_bytes)
                .collect();
            known.sort_unstable();
            known.dedup();
            Ok(Ok(Applied::KeysRegistered { known }))
        }
        Command::Rewrap {
            tenant,
            sop_instance_uid,
            expected_version,
            sealing,
            fingerprint,
        } => {
            let key = manifest_key(&tenant, &sop_instance_uid);
            let Some(mut m) = txn.get::<Manifest>(CF_MANIFESTS, &key)? else {
                return Ok(Err(Rejected::NotFound(format!(
                    "instance {sop_instance_uid} of tenant {tenant}"
                ))));
            };
            if m.version != expected_version {
                return Ok(Err(Rejected::VersionMismatch {
                    expected: expected_version,
                    current: m.version,
                }));
            }
            if sealing.plain_size != m.sealing.plain_size || sealing.scheme != m.sealing.scheme {
                return Ok(Err(Rejected::Invalid(format!(
                    "a rewrap of {sop_instance_uid} must not change its size or sealing scheme"
                ))));
            }
            m.sealing = sealing;
            m.fingerprint = fingerprint;
            m.version += 1;
            if let Err(e) = m.validate() {
                return Ok(Err(Rejected::Invalid(e.to_string())));
            }
            let version = m.version;
            txn.put(CF_MANIFESTS, key, &m)?;
            Ok(Ok(Applied::ManifestUpdated { version }))
        }
        Command::SetRetention { tenant, days } => {
            match days {
                Some(d) => txn.put(CF_SM, retention_key(&tenant), &d)?,
                None => txn.delete(CF_SM, retention_key(&tenant)),
            }
            Ok(Ok(Applied::PolicySet))
        }
        Command::SetLegalHold {
            tenant,
            study_instance_uid,
            hold,
        } => {
            let key = legal_hold_key(&tenant, &study_instance_uid);
            match hold {
                Some(h) => txn.put(CF_SM, key, &h)?,
                None => txn.delete(CF_SM, key),
            }
            Ok(Ok(Applied::PolicySet))
        }
        Command::RemoveNode { id, force: false }
            if txn.any_with_prefix(CF_HOLDERS, &id.to_be_bytes())? =>
        {
            Ok(Err(Rejected::Invalid(format!(
                "storage node {id} still holds shards that manifests reference: drain it first \
                 (or force the removal, and repair rebuilds its shards from the others)"
            ))))
        }
        cmd @ (Command::UpsertNode(_)
        | Command::RemoveNode { .. }
        | Command::SetNodeState { .. }
        | Command::ReportUsage { .. }) => {
            let Some(mut map) = txn.get::<ClusterMap>(CF_SM, KEY_MAP)? else {
                return Ok(Err(Rejected::Invalid(
                    "no cluster map yet: initialise the cluster first".into(),
                )));
            };
            let result = change_map(&mut map, cmd);
            if let Ok(Applied::MapChanged { .. }) = &result {
                txn.put(CF_SM, KEY_MAP.to_vec(), &map)?;
            }
            Ok(result)
        }
    }
}

/// Applies a node command to the map. Bumps the epoch when placement could
/// change (membership, state), not for capacity reports.
fn change_map(map: &mut ClusterMap, cmd: Command) -> CommandResult {
    match cmd {
        Command::UpsertNode(info) => {
            if !map.sites.iter().any(|s| s.name == info.site) {
                return Err(Rejected::Invalid(format!(
                    "node {} names site {:?}, which is not in the cluster map",
                    info.name, info.site
                )));
            }
            if let Some(other) = map
                .nodes
                .values()
                .find(|n| n.name == info.name && n.id != info.id)
            {
                return Err(Rejected::Invalid(format!(
                    "node name {} is already used by node id {}",
                    info.name, other.id
                )));
            }
            if map.nodes.get(&info.id) == Some(&info) {
                return Ok(Applied::MapChanged { epoch: map.epoch });
            }
            map.nodes.insert(info.id, info);
            map.epoch += 1;
        }
        Command::RemoveNode { id, .. } => {
            if map.nodes.remove(&id).is_none() {
                return Err(Rejected::NotFound(format!("storage node {id}")));
            }
            map.epoch += 1;
        }
        Command::SetNodeState { id, state } => {
            let Some(node) = map.nodes.get_mut(&id) else {
                return Err(Rejected::NotFound(format!("storage node {id}")));
            };
            if node.state == state {
                return Ok(Applied::MapChanged { epoch: map.epoch });
            }
            node.state = state;
            map.epoch += 1;
        }
        Command::ReportUsage {
            id,
            used_bytes,
            capacity_bytes,
        } => {
            let Some(node) = map.nodes.get_mut(&id) else {
                return Err(Rejected::NotFound(format!("storage node {id}")));
            };
            node.used_bytes = used_bytes;
            node.capacity_bytes = capacity_bytes;
            // Capacity is stored but does not bump the epoch.
            return Ok(Applied::MapChanged { epoch: map.epoch });
        }
        _ => return Err(Rejected::Invalid("not a cluster map command".into())),
    }
    Ok(Applied::MapChanged { epoch: map.epoch })
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.reader().applied_state()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Option<CommandResult>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut txn = Txn {
            db: &self.db,
            writes: BTreeMap::new(),
        };
        let mut out = Vec::new();
        let mut last = None;
        for entry in entries {
            last = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => out.push(None),
                EntryPayload::Normal(cmd) => {
                    let kind = cmd.kind();
                    let result = apply_command(&mut txn, cmd)?;
                    if let Err(rejected) = &result {
                        tracing::debug!(kind, %rejected, "command rejected");
                    }
                    out.push(Some(result));
                }
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(entry.log_id), m);
                    txn.put(CF_SM, KEY_MEMBERSHIP.to_vec(), &stored)?;
                    out.push(None);
                }
            }
        }
        if last.is_some() {
            txn.put(CF_SM, KEY_APPLIED.to_vec(), &last)?;
        }
        txn.commit()?;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
            seq: self.snapshot_seq.clone(),
            materialize: self.materialize.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        // install_snapshot renames it into place; an abandoned transfer's
        // file is deleted when its SnapshotData is dropped, or at restart.
        let path = self.incoming_path();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(write_err)?;
        Ok(Box::new(SnapshotData::incoming(
            tokio::fs::File::from_std(file),
            path,
        )))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let (file, tmp) = match (*snapshot).into_incoming() {
            Ok(received) => received,
            // Data handed over another way (another state machine's
            // snapshot): copied into a file of this one first.
            Err(mut data) => {
                use tokio::io::AsyncSeekExt;
                let path = self.incoming_path();
                let mut out = tokio::fs::File::create(&path).await.map_err(write_err)?;
                data.seek(std::io::SeekFrom::Start(0))
                    .await
                    .map_err(read_err)?;
                tokio::io::copy(&mut data, &mut out)
                    .await
                    .map_err(write_err)?;
                (out, path)
            }
        };
        let file = file.into_std().await;
        let name = format!("snap-{}.bin", meta.snapshot_id);
        let dest = self.snapshot_dir.join(&name);
        let db = self.db.clone();
        let meta_expected = meta.clone();
        let current = CurrentSnapshot {
            meta: meta.clone(),
            file: name.clone(),
        };
        let current_for_task = current.clone();
        let snapshot_dir = self.snapshot_dir.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            file.sync_all().map_err(write_err)?;
            drop(file);
            // Verify before the state machine is touched.
            let found = snapshot::read_file(&tmp, |_, _, _| Ok(())).map_err(write_err)?;
            if found.last_log_id != meta_expected.last_log_id {
                return Err(io_err(format!(
                    "snapshot file describes {:?}, openraft installs {:?}",
                    found.last_log_id, meta_expected.last_log_id
                )));
            }
            std::fs::rename(&tmp, &dest).map_err(write_err)?;
            if let Ok(d) = std::fs::File::open(&snapshot_dir) {
                let _ = d.sync_all();
            }
            let raft_cf = cf(&db, CF_RAFT)?;
            db.put_cf_opt(
                raft_cf,
                KEY_INSTALLING,
                codec::encode(&current_for_task).map_err(write_err)?,
                &sync_write_opts(),
            )
            .map_err(write_err)?;
            Ok(())
        })
        .await
        .map_err(|e| io_err(format!("snapshot install task: {e}")))??;
        let db = self.db.clone();
        let dir = self.snapshot_dir.clone();
        tokio::task::spawn_blocking(move || load_and_mark(&db, &dir, &current))
            .await
            .map_err(|e| io_err(format!("snapshot install task: {e}")))??;
        remove_old_snapshots(&self.snapshot_dir, &name);
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(current) = self.current_snapshot()? else {
            return Ok(None);
        };
        let path = self.snapshot_dir.join(&current.file);
        let data = match tokio::fs::File::open(&path).await {
            Ok(file) => SnapshotData::file(file),
            Err(_) => {
                let checkpoint = self.snapshot_dir.join(checkpoint_name(&current.file));
                if !checkpoint.is_dir() {
                    // openraft builds a new one when the log is purged.
                    tracing::warn!(file = %current.file, "current snapshot missing on disk");
                    return Ok(None);
                }
                SnapshotData::pending(Materialize {
                    meta: current.meta.clone(),
                    checkpoint,
                    file: path,
                    lock: self.materialize.clone(),
                })
            }
        };
        Ok(Some(Snapshot {
            meta: current.meta,
            snapshot: Box::new(data),
        }))
    }
}

/// Builds snapshots as RocksDB checkpoints while applying goes on.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    snapshot_dir: PathBuf,
    seq: Arc<AtomicU64>,
    materialize: Arc<std::sync::Mutex<()>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let db = self.db.clone();
        let dir = self.snapshot_dir.clone();
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let current =
            tokio::task::spawn_blocking(move || -> Result<CurrentSnapshot, StorageError> {
                // A checkpoint is a consistent view of every column family:
                // hard links to the immutable table files after a flush, so
                // it costs no copy of the manifests however many there are.
                let tmp = dir.join(format!("snap-build-{}-{n}.tmp", unique_suffix()));
                rocksdb::checkpoint::Checkpoint::new(&db)
                    .and_then(|c| c.create_checkpoint(&tmp))
                    .map_err(write_err)?;
                let meta = match checkpoint_meta(&tmp, n) {
                    Ok(meta) => meta,
                    Err(e) => {
                        let _ = std::fs::remove_dir_all(&tmp);
                        return Err(e);
                    }
                };
                let file = format!("snap-{}.bin", meta.snapshot_id);
                std::fs::rename(&tmp, dir.join(checkpoint_name(&file))).map_err(write_err)?;
                if let Ok(d) = std::fs::File::open(&dir) {
                    let _ = d.sync_all();
                }
                let current = CurrentSnapshot { meta, file };
                db.put_cf_opt(
                    cf(&db, CF_RAFT)?,
                    KEY_SNAPSHOT,
                    codec::encode(&current).map_err(write_err)?,
                    &sync_write_opts(),
                )
                .map_err(write_err)?;
                tracing::info!(snapshot = %current.meta.snapshot_id, "built snapshot (checkpoint)");
                Ok(current)
            })
            .await
            .map_err(|e| io_err(format!("snapshot build task: {e}")))??;
        remove_old_snapshots(&self.snapshot_dir, &current.file);
        let data = SnapshotData::pending(Materialize {
            meta: current.meta.clone(),
            checkpoint: self.snapshot_dir.join(checkpoint_name(&current.file)),
            file: self.snapshot_dir.join(&current.file),
            lock: self.materialize.clone(),
        });
        Ok(Snapshot {
            meta: current.meta,
            snapshot: Box::new(data),
        })
    }
}

/// The meta of the state a checkpoint holds: its applied log id and
/// membership, read from the checkpoint itself.
fn checkpoint_meta(checkpoint: &Path, n: u64) -> Result<SnapshotMeta, StorageError> {
    let db = open_checkpoint(checkpoint).map_err(read_err)?;
    let (applied, membership) = StateReader { db: Arc::new(db) }.applied_state()?;
    let snapshot_id = match &applied {
        Some(id) => format!("{}-{}-{}-{n}", id.leader_id.term, id.index, unique_suffix()),
        None => format!("0-0-{}-{n}", unique_suffix()),
    };
    Ok(SnapshotMeta {
        last_log_id: applied,
        last_membership: membership,
        snapshot_id,
    })
}

/// Distinguishes snapshots built by different processes at the same log
/// position (ids must be unique per file).
fn unique_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

impl From<StoreFault> for std::io::Error {
    fn from(f: StoreFault) -> Self {
        std::io::Error::other(f.0)
    }
}

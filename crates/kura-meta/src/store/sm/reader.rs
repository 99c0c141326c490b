//! `StateReader`: every query the state machine answers, read from
//! RocksDB without going through openraft.

use super::*;

/// One page of a study listing: the manifests, and the (series, SOP
/// Instance UID) cursor of the next page when more may follow.
pub type StudyPage = (Vec<Manifest>, Option<(String, String)>);

/// One page of damaged shards with their manifests, and the next cursor.
pub type DamagedPage = (Vec<(DamagedShard, Option<Manifest>)>, Option<DamagedShard>);

/// One RocksDB entry: key and value.
type KeyValue = (Box<[u8]>, Box<[u8]>);

/// Read access to a node's applied state, for queries served outside
/// openraft. Cheap to clone.
#[derive(Clone)]
pub struct StateReader {
    pub(super) db: Arc<DB>,
}

impl StateReader {
    pub(super) fn get<T: serde::de::DeserializeOwned>(
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

    /// The entries of column family `cf_name` from `start` on, for as long
    /// as their keys begin with `prefix`.
    fn scan<'a>(
        &'a self,
        cf_name: &str,
        start: &[u8],
        prefix: &'a [u8],
    ) -> Result<impl Iterator<Item = Result<KeyValue, StorageError>> + 'a, StorageError> {
        let h = cf(&self.db, cf_name)?;
        Ok(self
            .db
            .iterator_cf(h, IteratorMode::From(start, Direction::Forward))
            .map(|item| item.map_err(read_err))
            .take_while(move |item| {
                item.as_ref()
                    .map_or(true, |(key, _)| key.starts_with(prefix))
            }))
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
        let mut out = Vec::new();
        for item in self.scan(CF_SM, KEY_CHECK_PREFIX, KEY_CHECK_PREFIX)? {
            let (key, _) = item?;
            if let Ok(v) = <[u8; 4]>::try_from(&key[KEY_CHECK_PREFIX.len()..]) {
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
    pub(super) fn applied_state(&self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let membership = self
            .get::<StoredMembership>(CF_SM, KEY_MEMBERSHIP)?
            .unwrap_or_default();
        Ok((self.applied()?, membership))
    }

    /// Manifests by their keys, in order (a missing one is an index fault).
    pub(super) fn manifests_by_key(&self, keys: &[Vec<u8>]) -> Result<Vec<Manifest>, StorageError> {
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
    pub(super) fn recency_page(
        &self,
        cf_name: &str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Manifest>, Option<Vec<u8>>), StorageError> {
        let mut start = prefix.to_vec();
        if let Some(after) = after.filter(|a| a.starts_with(prefix)) {
            start = after.to_vec();
            start.push(0);
        }
        let mut keys = Vec::new();
        let mut cursors = Vec::new();
        let mut next = None;
        for item in self.scan(cf_name, &start, prefix)? {
            let (key, _) = item?;
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
        let prefix = manifest_key(tenant, "");
        let mut start = manifest_key(tenant, after.unwrap_or(""));
        if after.is_some() {
            start.push(0);
        }
        let mut out = Vec::new();
        let mut next = None;
        for item in self.scan(CF_MANIFESTS, &start, &prefix)? {
            let (_, value) = item?;
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
        let prefix = node.to_be_bytes();
        let mut n = 0;
        for item in self.scan(CF_HOLDERS, &prefix, &prefix)? {
            item?;
            if n >= max {
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
        let mut keys = Vec::new();
        let mut next = None;
        for item in self.scan(CF_STUDY, &start, &prefix)? {
            let (key, _) = item?;
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

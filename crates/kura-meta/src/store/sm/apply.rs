//! Applying commands: each `Command` checked against the state, then its
//! writes and index upkeep go into the call's `Txn`.

use super::*;

pub(super) fn hex32(b: &[u8; 32]) -> String {
    hex::encode(b)
}

pub(super) fn put_manifest(
    txn: &mut Txn<'_>,
    mut m: Manifest,
) -> Result<CommandResult, StorageError> {
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

pub(super) fn apply_command(
    txn: &mut Txn<'_>,
    cmd: Command,
) -> Result<CommandResult, StorageError> {
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
pub(super) fn change_map(map: &mut ClusterMap, cmd: Command) -> CommandResult {
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

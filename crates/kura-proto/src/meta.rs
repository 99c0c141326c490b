//! The metadata cluster's vocabulary: the commands committed through Raft,
//! their outcomes, the queries and the lifecycle requests.
//!
//! These types travel bincode-encoded inside `kura.v1.internal.Meta`
//! messages and are what the state machine applies. They live here, not in
//! `kura-meta`, because gateways and storage nodes build them too and roles
//! never link each other.

use kura_erasure::EcParams;
use kura_placement::{ClusterMap, Manifest, NodeId, NodeInfo, NodeState, Sealing};
use serde::{Deserialize, Serialize};

/// The largest encoded command the cluster accepts. A manifest of a 4 GiB
/// instance (1,024 segments of 4 MiB × 9 shards) encodes to well under
/// 1 MiB; anything bigger is malformed or hostile.
pub const COMMAND_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The most instances one ListStudy page carries.
pub const LIST_PAGE_MAX: u32 = 1000;

/// The longest DICOM UID.
pub const UID_BYTES_MAX: usize = 64;

pub use kura_auth::identity::{TENANT_BYTES_MAX, validate_tenant};

/// A change to the metadata state, committed through Raft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Store a manifest: created if absent; a no-op answering the stored
    /// manifest if one with the same content (tenant, UID, blake3, size) is
    /// there; refused as a conflict if the content differs.
    PutManifest(Manifest),
    /// Bulk import (migrating an existing archive's index, benchmarks):
    /// every manifest is applied exactly as a `PutManifest`, all in one log
    /// entry. A conflict refuses that manifest only; the answer counts what
    /// was created and lists the conflicts. Invalid manifests refuse the
    /// whole batch. At most [`BULK_MANIFESTS_MAX`] per command.
    PutManifests(Vec<Manifest>),
    /// Replace a manifest if its stored version is `expected_version` (repair
    /// and drain use it to move shards). The content identity must not
    /// change. The new manifest's version is set to `expected_version + 1`.
    CasManifest {
        expected_version: u64,
        manifest: Manifest,
    },
    /// Set the cluster map and erasure profile of a new cluster. Refused
    /// once a map exists.
    InitCluster { map: ClusterMap, profile: EcParams },
    /// Add a storage node, or update the address/capacity of a known one.
    UpsertNode(NodeInfo),
    /// Forget a storage node. Refused while manifests still name it as a
    /// holder (drain it first), unless `force`: then its shards count as
    /// gone and repair rebuilds them elsewhere.
    RemoveNode { id: NodeId, force: bool },
    /// Change a storage node's state (failure detection, drain).
    SetNodeState { id: NodeId, state: NodeState },
    /// A storage node's capacity report.
    ReportUsage {
        id: NodeId,
        used_bytes: u64,
        capacity_bytes: u64,
    },
    /// The erasure profile for new writes.
    SetProfile(EcParams),
    /// A storage node found these of its shards damaged (failed a check on
    /// read or scrub) and quarantined them: repair rebuilds them. Recording
    /// one twice is a no-op.
    ReportDamaged { shards: Vec<DamagedShard> },
    /// Repair rebuilt these damaged shards (or found them no longer
    /// referenced): forget them.
    ClearDamaged { shards: Vec<DamagedShard> },
    /// Append these records to the audit trail, in order. Each gets the
    /// next sequence number and the hash of the entry before it.
    AppendAudit(Vec<AuditRecord>),
    /// Record a bearer token (only its hash). Refused if the hash exists.
    PutToken(TokenRecord),
    /// Revoke the token with this id: it authenticates nobody from then on.
    RevokeToken { id: String, revoked_unix_ms: i64 },
    /// Repair's leases: `owner` (a gateway) asks to repair the instances of
    /// `claim`, each granted unless another owner holds an unexpired lease
    /// on it (by `now_unix_ms`, the proposer's clock), and releases its
    /// leases on `release`. A granted lease runs until `now + ttl`; asking
    /// again renews it. So two gateways never rebuild the same instance.
    ClaimRepair {
        owner: String,
        now_unix_ms: i64,
        ttl_ms: i64,
        claim: Vec<(String, String)>,
        release: Vec<(String, String)>,
    },
    /// Deletes instances of `tenant`, manifests first: their shards are
    /// then referenced by nothing, and storage nodes reclaim them after
    /// the orphan grace period. Refused whole, changing nothing, when any
    /// of them is within its retention (judged at `now_unix_ms`, the
    /// proposer's clock) or its study is on legal hold. UIDs with no
    /// manifest are counted and skipped, so a retried delete is a no-op.
    DeleteManifests {
        tenant: String,
        uids: Vec<String>,
        now_unix_ms: i64,
    },
    /// Sets the retention period of `tenant` (days from each instance's
    /// store during which it cannot be deleted), or clears it (`None`).
    SetRetention { tenant: String, days: Option<u32> },
    /// Puts a study on legal hold (no instance of it can be deleted until
    /// released), or releases it (`None`).
    SetLegalHold {
        tenant: String,
        study_instance_uid: String,
        hold: Option<LegalHold>,
    },
    /// Records the check values of the cluster key versions a gateway holds
    /// (`kura_seal::Keyring::check_value`): a version not yet known is
    /// recorded; one known with another value refuses the whole command
    /// ([`Rejected::KeyMismatch`]: that gateway's key file is wrong).
    RegisterKeys { checks: Vec<KeyCheck> },
    /// Key rotation: replaces a manifest's sealing and fingerprint if its
    /// stored version is `expected_version`. The instance, its size and
    /// its placement stay as they are; the version is bumped.
    Rewrap {
        tenant: String,
        sop_instance_uid: String,
        expected_version: u64,
        sealing: Sealing,
        fingerprint: [u8; 32],
    },
}

/// The check value of one cluster key version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCheck {
    pub version: u32,
    pub check: [u8; 32],
}

/// The most key versions one `RegisterKeys` may carry.
pub const KEY_VERSIONS_MAX: usize = 64;

/// The most instances one `DeleteManifests` may name.
pub const DELETE_BATCH_MAX: usize = 1000;
/// The longest retention period accepted, in days (100 years).
pub const RETENTION_DAYS_MAX: u32 = 36_525;

/// A legal hold on a study: why, since when, set by whom.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegalHold {
    pub reason: String,
    pub since_unix_ms: i64,
    pub by: String,
}

/// The most instances one `ClaimRepair` may claim or release.
pub const REPAIR_CLAIMS_MAX: usize = 256;

/// A gateway's lease on repairing one instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairLease {
    pub owner: String,
    pub until_unix_ms: i64,
}

/// The most records one `AppendAudit` may carry.
pub const AUDIT_BATCH_MAX: usize = 1024;
/// The most audit entries one page carries.
pub const AUDIT_PAGE_MAX: u32 = 1000;

/// One access to the archive, allowed or refused: who, when, from where,
/// what (and which patient), and the outcome. An audit entry is a record,
/// not a log line: it may name the Patient ID (the guidelines ask which
/// patient's record was accessed); logs never do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the call was made, ms since the epoch (the gateway's clock).
    pub time_unix_ms: i64,
    /// The identity the credential proves (`pacs (hospital-a/writer)`), or
    /// `anonymous`.
    pub who: String,
    /// The tenant the call acted in (empty when none was established).
    pub tenant: String,
    /// The call: `Store`, `Retrieve`, `Admin.Drain`, `Raft.Vote`, …
    pub action: String,
    /// SOP Instance UID of the instance touched, if any.
    pub sop_instance_uid: String,
    /// Study Instance UID, if any.
    pub study_instance_uid: String,
    /// Patient ID of the instance touched, if known.
    pub patient_id: String,
    /// The caller's address.
    pub peer: String,
    /// The gRPC code of the answer (`OK`, `PERMISSION_DENIED`, …).
    pub outcome: String,
    /// Which process recorded it (`gateway 1`, `voter 2`).
    pub recorder: String,
}

/// An audit record in the trail: its place, the hash of the entry before
/// it and its own hash, `blake3("kura-audit-v1" ‖ prev ‖ seq ‖ record)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub prev: [u8; 32],
    pub hash: [u8; 32],
    pub record: AuditRecord,
}

impl AuditEntry {
    /// The hash an entry at `seq` after `prev` with `record` must carry.
    pub fn chain_hash(prev: &[u8; 32], seq: u64, record: &AuditRecord) -> Result<[u8; 32], String> {
        let mut h = blake3::Hasher::new();
        h.update(b"kura-audit-v1");
        h.update(prev);
        h.update(&seq.to_be_bytes());
        h.update(&crate::codec::encode(record).map_err(|e| e.to_string())?);
        Ok(*h.finalize().as_bytes())
    }
}

/// What verifying the audit trail found on one voter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerdict {
    /// Entries checked.
    pub entries: u64,
    /// The hash of the last entry (the head of the chain).
    pub head: [u8; 32],
    /// The first entry that fails, and why; `None`: the chain holds.
    pub first_bad: Option<(u64, String)>,
}

/// A bearer token as the cluster keeps it: only a hash of the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// blake3 of the secret.
    pub hash: [u8; 32],
    /// Public id (the first 8 bytes of the hash, hex), for list and revoke.
    pub id: String,
    pub tenant: String,
    /// `reader`, `writer+reader`, …
    pub roles: String,
    /// What it is for (`pacs-tokyo`).
    pub label: String,
    pub created_unix_ms: i64,
    pub created_by: String,
    pub revoked_unix_ms: Option<i64>,
}

/// One damaged shard on one storage node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DamagedShard {
    pub node: NodeId,
    pub object_key: [u8; 32],
    pub segment: u32,
    pub index: u8,
}

/// The most damaged shards one report or clear may carry.
pub const DAMAGED_SHARDS_MAX: usize = 4096;

impl Command {
    /// A short name for logs and metrics (never carries patient data).
    pub fn kind(&self) -> &'static str {
        match self {
            Command::PutManifest(_) => "put_manifest",
            Command::PutManifests(_) => "put_manifests",
            Command::CasManifest { .. } => "cas_manifest",
            Command::InitCluster { .. } => "init_cluster",
            Command::UpsertNode(_) => "upsert_node",
            Command::RemoveNode { .. } => "remove_node",
            Command::SetNodeState { .. } => "set_node_state",
            Command::ReportUsage { .. } => "report_usage",
            Command::SetProfile(_) => "set_profile",
            Command::ReportDamaged { .. } => "report_damaged",
            Command::ClearDamaged { .. } => "clear_damaged",
            Command::AppendAudit(_) => "append_audit",
            Command::PutToken(_) => "put_token",
            Command::RevokeToken { .. } => "revoke_token",
            Command::DeleteManifests { .. } => "delete_manifests",
            Command::SetRetention { .. } => "set_retention",
            Command::SetLegalHold { .. } => "set_legal_hold",
            Command::ClaimRepair { .. } => "claim_repair",
            Command::RegisterKeys { .. } => "register_keys",
            Command::Rewrap { .. } => "rewrap",
        }
    }

    /// Checks what can be checked without the state: run at the service
    /// edge before proposing, and again when applying.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Command::PutManifest(m) | Command::CasManifest { manifest: m, .. } => {
                validate_manifest(m)
            }
            Command::PutManifests(ms) => {
                if ms.is_empty() || ms.len() > BULK_MANIFESTS_MAX {
                    return Err(format!(
                        "a bulk import carries 1 to {BULK_MANIFESTS_MAX} manifests, not {}",
                        ms.len()
                    ));
                }
                ms.iter().enumerate().try_for_each(|(i, m)| {
                    validate_manifest(m).map_err(|e| format!("manifest #{i}: {e}"))
                })
            }
            Command::InitCluster { map, profile } => {
                map.validate().map_err(|e| e.to_string())?;
                profile.validate().map_err(|e| e.to_string())
            }
            Command::UpsertNode(n) => {
                if n.name.is_empty() || n.site.is_empty() || n.addr.is_empty() {
                    return Err(format!(
                        "node {}: name, site and address must not be empty",
                        n.id
                    ));
                }
                Ok(())
            }
            Command::SetProfile(p) => p.validate().map_err(|e| e.to_string()),
            Command::ReportDamaged { shards } | Command::ClearDamaged { shards } => {
                if shards.is_empty() || shards.len() > DAMAGED_SHARDS_MAX {
                    return Err(format!(
                        "a damage report carries 1 to {DAMAGED_SHARDS_MAX} shards, not {}",
                        shards.len()
                    ));
                }
                Ok(())
            }
            Command::AppendAudit(records) => {
                if records.is_empty() || records.len() > AUDIT_BATCH_MAX {
                    return Err(format!(
                        "an audit batch carries 1 to {AUDIT_BATCH_MAX} records, not {}",
                        records.len()
                    ));
                }
                Ok(())
            }
            Command::RegisterKeys { checks } => {
                if checks.is_empty() || checks.len() > KEY_VERSIONS_MAX {
                    return Err(format!(
                        "a key registration carries 1 to {KEY_VERSIONS_MAX} versions, not {}",
                        checks.len()
                    ));
                }
                if checks.iter().any(|c| c.version == 0) {
                    return Err("cluster key versions start at 1".into());
                }
                let mut versions: Vec<u32> = checks.iter().map(|c| c.version).collect();
                versions.sort_unstable();
                if versions.windows(2).any(|w| w[0] == w[1]) {
                    return Err("a key registration names each version once".into());
                }
                Ok(())
            }
            Command::Rewrap {
                tenant,
                sop_instance_uid,
                sealing,
                ..
            } => {
                validate_tenant(tenant)?;
                if sop_instance_uid.is_empty() || sealing.key_version == 0 {
                    return Err("a rewrap names an instance and a key version from 1".into());
                }
                Ok(())
            }
            Command::PutToken(t) => {
                validate_tenant(&t.tenant)?;
                kura_auth::ClientRoles::parse(&t.roles).map_err(|e| e.to_string())?;
                if t.id.len() != 16 || t.id != hex_prefix(&t.hash) {
                    return Err("a token's id is the hex of its hash's first 8 bytes".into());
                }
                Ok(())
            }
            Command::ClaimRepair {
                owner,
                ttl_ms,
                claim,
                release,
                ..
            } => {
                if owner.is_empty() || owner.len() > 256 {
                    return Err("a repair lease's owner is 1 to 256 bytes".into());
                }
                if *ttl_ms <= 0 {
                    return Err(format!(
                        "a repair lease lasts a positive time, not {ttl_ms} ms"
                    ));
                }
                if claim.len() > REPAIR_CLAIMS_MAX || release.len() > REPAIR_CLAIMS_MAX {
                    return Err(format!(
                        "at most {REPAIR_CLAIMS_MAX} instances claimed and released at once"
                    ));
                }
                claim
                    .iter()
                    .chain(release)
                    .try_for_each(|(tenant, _)| validate_tenant(tenant))
            }
            Command::DeleteManifests { tenant, uids, .. } => {
                validate_tenant(tenant)?;
                if uids.is_empty() || uids.len() > DELETE_BATCH_MAX {
                    return Err(format!(
                        "a delete names 1 to {DELETE_BATCH_MAX} instances, not {}",
                        uids.len()
                    ));
                }
                uids.iter().try_for_each(|u| {
                    if u.is_empty() {
                        return Err("an empty SOP Instance UID".to_string());
                    }
                    validate_uid("SOP Instance UID", u)
                })
            }
            Command::SetRetention { tenant, days } => {
                validate_tenant(tenant)?;
                match days {
                    Some(d) if *d > RETENTION_DAYS_MAX => Err(format!(
                        "a retention period is at most {RETENTION_DAYS_MAX} days, not {d}"
                    )),
                    _ => Ok(()),
                }
            }
            Command::SetLegalHold {
                tenant,
                study_instance_uid,
                hold,
            } => {
                validate_tenant(tenant)?;
                if study_instance_uid.is_empty() {
                    return Err("an empty Study Instance UID".into());
                }
                validate_uid("Study Instance UID", study_instance_uid)?;
                match hold {
                    Some(h) if h.reason.trim().is_empty() || h.reason.len() > 1024 => {
                        Err("a legal hold gives its reason, 1 to 1024 bytes".into())
                    }
                    _ => Ok(()),
                }
            }
            Command::RevokeToken { id, .. } => {
                if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("token id {id:?} is not 16 hex digits"));
                }
                Ok(())
            }
            Command::RemoveNode { .. }
            | Command::SetNodeState { .. }
            | Command::ReportUsage { .. } => Ok(()),
        }
    }
}

/// A token's public id: the hex of its hash's first 8 bytes.
pub fn hex_prefix(hash: &[u8; 32]) -> String {
    hash[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// What the manifests say about one copy of a shard on one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardReference {
    /// No manifest references the shard's object (yet: a store writes its
    /// shards before it commits the manifest).
    NoManifest,
    /// The object's manifest names this node as the shard's holder.
    Held,
    /// The object's manifest names another node (or none) for the shard:
    /// this copy is a straggler put's, or was moved away by repair.
    HeldElsewhere,
}

/// The most object keys one `ObjectsReferenced` (or shards one
/// `ShardsReferenced`) query may ask about.
pub const OBJECT_KEYS_MAX: usize = 4096;

/// The most manifests one `PutManifests` command may carry.
pub const BULK_MANIFESTS_MAX: usize = 10_000;

fn validate_manifest(m: &Manifest) -> Result<(), String> {
    validate_tenant(&m.tenant)?;
    for (what, uid) in [
        ("SOP Instance UID", &m.sop_instance_uid),
        ("Study Instance UID", &m.study_instance_uid),
        ("Series Instance UID", &m.series_instance_uid),
    ] {
        validate_uid(what, uid)?;
    }
    m.validate().map_err(|e| e.to_string())
}

fn validate_uid(what: &str, uid: &str) -> Result<(), String> {
    if uid.len() > UID_BYTES_MAX || uid.bytes().any(|b| !(b.is_ascii_digit() || b == b'.')) {
        return Err(format!("{what} {uid:?} is not a DICOM UID"));
    }
    Ok(())
}

/// What a committed command did.
pub type CommandResult = Result<Applied, Rejected>;

/// A command that took effect (or was an idempotent no-op).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// A new manifest is stored, at version 1.
    ManifestCreated { version: u64 },
    /// The same content was already stored: nothing changed. Carries the
    /// stored manifest (its placement may differ from the proposed one).
    ManifestIdentical { existing: Box<Manifest> },
    /// A bulk import: how many manifests were new, how many were already
    /// stored with the same content, and the refused ones.
    ManifestsImported {
        created: u64,
        identical: u64,
        conflicts: Vec<Rejected>,
    },
    /// A compare-and-set replaced the manifest.
    ManifestUpdated { version: u64 },
    /// The cluster map changed; its new epoch.
    MapChanged { epoch: u64 },
    /// The erasure profile for new writes changed.
    ProfileSet,
    /// Damaged shards recorded or cleared (how many the command named).
    DamageRecorded { shards: u64 },
    /// Audit records appended: the sequence number of the first.
    AuditAppended { first_seq: u64 },
    /// A token recorded or revoked.
    TokenChanged,
    /// Repair leases: for each claimed instance, whether it is now the
    /// proposer's (in order).
    RepairClaimed { granted: Vec<bool> },
    /// Instances deleted, and those named that had no manifest.
    Deleted { deleted: u64, absent: u64 },
    /// A retention period or legal hold was set or cleared.
    PolicySet,
    /// The key check values matched or were recorded; every version the
    /// cluster knows, ascending.
    KeysRegistered { known: Vec<u32> },
}

/// A command the state machine refused; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejected {
    /// Same SOP Instance UID, different content (or content fingerprinted
    /// under another key version: the gateway compares again).
    #[error(
        "instance {sop_instance_uid} is already stored with different bytes (stored at {existing_stored_at_unix_ms} ms since epoch; fingerprints {existing_fingerprint} under key version {existing_key_version}, offered {offered_fingerprint})"
    )]
    Conflict {
        sop_instance_uid: String,
        existing_fingerprint: String,
        existing_key_version: u32,
        offered_fingerprint: String,
        existing_stored_at_unix_ms: i64,
    },
    /// A compare-and-set found another version.
    #[error("version mismatch: expected {expected}, stored {current}")]
    VersionMismatch { expected: u64, current: u64 },
    /// The thing the command names does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The command is malformed or not allowed in this state.
    #[error("invalid command: {0}")]
    Invalid(String),
    /// A delete of an instance still within its retention period.
    #[error(
        "instance {sop_instance_uid} is within its retention period until {until_unix_ms} ms since epoch"
    )]
    Retained {
        sop_instance_uid: String,
        until_unix_ms: i64,
    },
    /// A delete of an instance whose study is on legal hold.
    #[error("study {study_instance_uid} is on legal hold ({reason})")]
    OnLegalHold {
        study_instance_uid: String,
        reason: String,
    },
    /// A gateway's cluster key of `version` is not the one the cluster
    /// recorded for that version.
    #[error(
        "cluster key version {version} differs from the one the cluster recorded for that version (its check value does not match)"
    )]
    KeyMismatch { version: u32 },
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Served by the leader after a read-index round (`ensure_linearizable`):
    /// reflects every write acknowledged before the read began.
    Linearizable,
    /// Served by any voter from its local state machine: may miss the most
    /// recent writes. Used where staleness is harmless (see ARCHITECTURE.md).
    Stale,
}

/// A read of the metadata state. New variants go at the end: bincode
/// names a variant by its position, and voters and gateways of different
/// builds must understand each other during a rolling upgrade.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    GetManifest {
        tenant: String,
        sop_instance_uid: String,
        consistency: Consistency,
    },
    /// One page of a study's instances, in (series, SOP Instance UID) order,
    /// starting after `after` (series, sop) when given.
    ListStudy {
        tenant: String,
        study_instance_uid: String,
        series_instance_uid: Option<String>,
        after: Option<(String, String)>,
        limit: u32,
        consistency: Consistency,
    },
    /// The cluster map and profile.
    GetClusterMap { consistency: Consistency },
    /// Counts of stored manifests by protection state.
    CountManifests { consistency: Consistency },
    /// For each object key (at most [`OBJECT_KEYS_MAX`]), whether a stored
    /// manifest references it: storage nodes ask before they reclaim shards
    /// a failed store left behind.
    ObjectsReferenced {
        keys: Vec<[u8; 32]>,
        consistency: Consistency,
    },
    /// One page of the manifests that name `node` as a shard holder, most
    /// recently stored first, starting after cursor `after` (an opaque key
    /// from the previous page). Repair and drain walk these.
    ManifestsOnNode {
        node: NodeId,
        after: Option<Vec<u8>>,
        limit: u32,
        consistency: Consistency,
    },
    /// One page of the manifests that need attention whatever the map
    /// says: stored under-protected, or with an unplaced shard. Most
    /// recently stored first.
    Attention {
        after: Option<Vec<u8>>,
        limit: u32,
        consistency: Consistency,
    },
    /// One page of the damaged shards storage nodes reported, each with the
    /// manifest that references its object (if any).
    Damaged {
        after: Option<DamagedShard>,
        limit: u32,
        consistency: Consistency,
    },
    /// Every node id some manifest names as a holder, with or without a
    /// place in the map (a node removed by force still holds until repair
    /// has moved its shards).
    HolderNodes { consistency: Consistency },
    /// One page of a tenant's manifests in SOP Instance UID order, after
    /// `after` (a UID) when given; `next` is the last UID of the page.
    ListManifests {
        tenant: String,
        after: Option<String>,
        limit: u32,
        consistency: Consistency,
    },
    /// How many manifests name `node` as a holder, counted up to `max`
    /// (from the holder index alone: cheap enough for status pages).
    CountOnNode {
        node: NodeId,
        max: u64,
        consistency: Consistency,
    },
    /// One page of the audit trail from sequence number `from`.
    AuditPage {
        from: u64,
        limit: u32,
        consistency: Consistency,
    },
    /// Every token, revoked ones included.
    ListTokens { consistency: Consistency },
    /// For each shard (object key, segment, shard index; at most
    /// [`OBJECT_KEYS_MAX`]), whether a manifest names `node` as its holder:
    /// storage nodes ask before they reclaim copies no manifest places on
    /// them (a failed store's, a straggler put's, a moved shard's).
    ShardsReferenced {
        node: NodeId,
        shards: Vec<([u8; 32], u32, u8)>,
        consistency: Consistency,
    },
    /// The retention period of a tenant, in days (`None`: none set).
    Retention {
        tenant: String,
        consistency: Consistency,
    },
    /// The legal hold on a study, if any.
    LegalHold {
        tenant: String,
        study_instance_uid: String,
        consistency: Consistency,
    },
    /// How many manifests are sealed under each cluster key version, and
    /// the versions whose check values the cluster holds.
    KeyUsage { consistency: Consistency },
    /// Key rotation's work list: manifests (of every tenant, in key order,
    /// after `after` = (tenant, UID)) not sealed under `key_version`, at
    /// most `limit` of them from at most `scan` manifests looked at; `next`
    /// says where to go on.
    NotSealedUnder {
        key_version: u32,
        after: Option<(String, String)>,
        limit: u32,
        scan: u32,
        consistency: Consistency,
    },
}

/// The answer to a [`Query`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryResult {
    Manifest(Option<Box<Manifest>>),
    StudyPage {
        manifests: Vec<Manifest>,
        /// Pass as `after` to get the next page; `None` when this is the last.
        next: Option<(String, String)>,
    },
    ClusterMap {
        map: Option<ClusterMap>,
        profile: Option<EcParams>,
    },
    ManifestCounts {
        total: u64,
        under_protected: u64,
    },
    /// One answer per asked key, in order.
    ObjectsReferenced(Vec<bool>),
    ManifestPage {
        manifests: Vec<Manifest>,
        /// Pass as `after` for the next page; `None` when this is the last.
        next: Option<Vec<u8>>,
    },
    DamagedPage {
        shards: Vec<(DamagedShard, Option<Manifest>)>,
        next: Option<DamagedShard>,
    },
    HolderNodes(Vec<NodeId>),
    Count(u64),
    AuditPage {
        entries: Vec<AuditEntry>,
        /// Pass as `from` for the next page; `None` when this is the last.
        next: Option<u64>,
    },
    Tokens(Vec<TokenRecord>),
    /// One answer per asked shard, in order.
    ShardsReferenced(Vec<ShardReference>),
    Retention(Option<u32>),
    LegalHold(Option<LegalHold>),
    KeyUsage {
        /// (key version, manifests sealed under it), ascending.
        manifests: Vec<(u32, u64)>,
        /// Versions whose check values are recorded, ascending.
        registered: Vec<u32>,
    },
    SealedPage {
        manifests: Vec<Manifest>,
        /// Pass as `after` for the next page; `None` when the scan is done.
        next: Option<(String, String)>,
    },
}

/// A query answered with another kind of result than it asks for: a bug,
/// or voters and gateways of builds that disagree.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unexpected answer to {query}: a {got} result")]
pub struct UnexpectedAnswer {
    pub query: &'static str,
    pub got: &'static str,
}

/// One typed accessor per kind of result: `self` if it is that kind,
/// else [`UnexpectedAnswer`] naming the query.
macro_rules! typed_results {
    ($($(#[$doc:meta])* $name:ident($query:literal) -> $ty:ty { $pat:pat => $out:expr })*) => {
        impl QueryResult {
            $(
                $(#[$doc])*
                pub fn $name(self) -> Result<$ty, UnexpectedAnswer> {
                    match self {
                        $pat => Ok($out),
                        other => Err(UnexpectedAnswer {
                            query: $query,
                            got: other.kind(),
                        }),
                    }
                }
            )*
        }
    };
}

impl QueryResult {
    /// The kind of result, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            QueryResult::Manifest(_) => "Manifest",
            QueryResult::StudyPage { .. } => "StudyPage",
            QueryResult::ClusterMap { .. } => "ClusterMap",
            QueryResult::ManifestCounts { .. } => "ManifestCounts",
            QueryResult::ObjectsReferenced(_) => "ObjectsReferenced",
            QueryResult::ManifestPage { .. } => "ManifestPage",
            QueryResult::DamagedPage { .. } => "DamagedPage",
            QueryResult::HolderNodes(_) => "HolderNodes",
            QueryResult::Count(_) => "Count",
            QueryResult::AuditPage { .. } => "AuditPage",
            QueryResult::Tokens(_) => "Tokens",
            QueryResult::ShardsReferenced(_) => "ShardsReferenced",
            QueryResult::Retention(_) => "Retention",
            QueryResult::LegalHold(_) => "LegalHold",
            QueryResult::KeyUsage { .. } => "KeyUsage",
            QueryResult::SealedPage { .. } => "SealedPage",
        }
    }
}

/// (manifests, next) of a page.
pub type Page<T, C> = (Vec<T>, Option<C>);

typed_results! {
    /// `GetManifest`.
    into_manifest("GetManifest") -> Option<Box<Manifest>> { QueryResult::Manifest(m) => m }
    /// `ListStudy`: the page and where the next starts.
    into_study_page("ListStudy") -> Page<Manifest, (String, String)> {
        QueryResult::StudyPage { manifests, next } => (manifests, next)
    }
    /// `GetClusterMap`: the map and the profile, each once recorded.
    into_cluster_map("GetClusterMap") -> (Option<ClusterMap>, Option<EcParams>) {
        QueryResult::ClusterMap { map, profile } => (map, profile)
    }
    /// `CountManifests`: (total, under-protected).
    into_manifest_counts("CountManifests") -> (u64, u64) {
        QueryResult::ManifestCounts { total, under_protected } => (total, under_protected)
    }
    /// `ListManifests` and `ManifestsOnNode`.
    into_manifest_page("a manifest page") -> Page<Manifest, Vec<u8>> {
        QueryResult::ManifestPage { manifests, next } => (manifests, next)
    }
    /// `Damaged` and `Attention`.
    into_damaged_page("a damage page") -> Page<(DamagedShard, Option<Manifest>), DamagedShard> {
        QueryResult::DamagedPage { shards, next } => (shards, next)
    }
    /// `HolderNodes`.
    into_holder_nodes("HolderNodes") -> Vec<NodeId> { QueryResult::HolderNodes(n) => n }
    /// `CountOnNode`.
    into_count("CountOnNode") -> u64 { QueryResult::Count(n) => n }
    /// `AuditPage`.
    into_audit_page("AuditPage") -> Page<AuditEntry, u64> {
        QueryResult::AuditPage { entries, next } => (entries, next)
    }
    /// `ListTokens`.
    into_tokens("ListTokens") -> Vec<TokenRecord> { QueryResult::Tokens(t) => t }
    /// `ShardsReferenced`.
    into_shards_referenced("ShardsReferenced") -> Vec<ShardReference> {
        QueryResult::ShardsReferenced(r) => r
    }
    /// `Retention`.
    into_retention("Retention") -> Option<u32> { QueryResult::Retention(d) => d }
    /// `LegalHold`.
    into_legal_hold("LegalHold") -> Option<LegalHold> { QueryResult::LegalHold(h) => h }
    /// `KeyUsage`: (manifests per key version, registered versions).
    into_key_usage("KeyUsage") -> (Vec<(u32, u64)>, Vec<u32>) {
        QueryResult::KeyUsage { manifests, registered } => (manifests, registered)
    }
    /// `NotSealedUnder`.
    into_sealed_page("NotSealedUnder") -> Page<Manifest, (String, String)> {
        QueryResult::SealedPage { manifests, next } => (manifests, next)
    }
}

/// A voter of the metadata cluster: its Raft id and the address of its
/// internal gRPC endpoint (Raft + Meta services).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voter {
    pub id: u64,
    pub addr: String,
}

/// Cluster lifecycle requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Initialise a new cluster with these voters. Refused (not destructive)
    /// on a node that is already part of a cluster.
    Bootstrap { voters: Vec<Voter> },
    /// Add a non-voting member that replicates the log.
    AddLearner { voter: Voter },
    /// Make exactly these ids the voters (learners not listed stay learners).
    ChangeVoters { ids: Vec<u64> },
    /// The answering node's view of the cluster.
    Status,
    /// Verify the audit trail as this node holds it (every voter has its
    /// own copy: comparing them finds a copy rewritten whole).
    VerifyAudit,
}

/// Answers to [`AdminRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminResponse {
    Done,
    Status(MetaStatus),
    AuditVerdict(AuditVerdict),
}

/// One node's view of the metadata cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaStatus {
    pub id: u64,
    pub state: String,
    pub current_term: u64,
    pub current_leader: Option<u64>,
    pub leader_addr: Option<String>,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub voters: Vec<Voter>,
    pub learners: Vec<Voter>,
}

/// Set on a refusal the server made before anything was proposed (not the
/// leader, no quorum for a read): the call is safe to repeat.
pub const NOT_PROPOSED_HEADER: &str = "kura-not-proposed";

/// gRPC metadata keys a follower sets when it refuses a leader-only call.
pub const LEADER_ID_HEADER: &str = "kura-leader-id";
/// See [`LEADER_ID_HEADER`].
pub const LEADER_ADDR_HEADER: &str = "kura-leader-addr";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_results_take_their_kind_and_name_the_query_otherwise() {
        assert_eq!(QueryResult::Count(7).into_count(), Ok(7));
        assert_eq!(
            QueryResult::Retention(Some(30)).into_retention(),
            Ok(Some(30))
        );
        let e = QueryResult::Count(7)
            .into_manifest()
            .expect_err("a count is not a manifest");
        assert_eq!(
            e,
            UnexpectedAnswer {
                query: "GetManifest",
                got: "Count"
            }
        );
        assert_eq!(
            e.to_string(),
            "unexpected answer to GetManifest: a Count result"
        );
        let (m, r) = QueryResult::KeyUsage {
            manifests: vec![(1, 3)],
            registered: vec![1, 2],
        }
        .into_key_usage()
        .expect("key usage");
        assert_eq!((m, r), (vec![(1, 3)], vec![1, 2]));
    }
}

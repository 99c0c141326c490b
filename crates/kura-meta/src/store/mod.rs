//! The durable half of a metadata node: one RocksDB holding the Raft log
//! ([`log`]) and the state machine ([`sm`]), plus snapshots: RocksDB
//! checkpoints ([`snapdata`]) streamed in the [`snapshot`] file format.
//!
//! One database, several column families:
//!
//! | column family | key | value |
//! |---|---|---|
//! | `log` | log index (u64 big-endian) | a Raft entry |
//! | `raft` | `vote`, `committed`, `last_purged`, `snapshot`, `installing` | Raft bookkeeping |
//! | `sm` | `applied`, `membership`, `map`, `profile`, `counts` | state machine scalars |
//! | `manifests` | tenant 0x00 SOP Instance UID | a manifest |
//! | `study` | tenant 0x00 study 0x00 series 0x00 SOP Instance UID | empty |
//!
//! Why one database: RocksDB has one write-ahead log per database, so the
//! synced write that makes a log append or a vote durable also makes every
//! earlier state machine write durable. Applying entries can therefore skip
//! its own fsync: whatever a crash loses of the state machine is still in
//! the log and is applied again on restart.
//!
//! Architecture invariant: nothing is acknowledged to Raft (an append, a
//! vote, a truncation, a purge) before the write carrying it is synced.

pub mod log;
pub mod sm;
pub mod snapdata;
pub mod snapshot;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamilyDescriptor, DB, Options};

use crate::types::StorageError;

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_RAFT: &str = "raft";
pub(crate) const CF_SM: &str = "sm";
pub(crate) const CF_MANIFESTS: &str = "manifests";
pub(crate) const CF_STUDY: &str = "study";
/// Object key -> manifest key: which object keys a manifest references, so
/// storage nodes can tell orphan shards (a failed store's) from live ones.
pub(crate) const CF_OBJECTS: &str = "objects";
/// Node id (8, BE) ++ recency (8) ++ manifest key -> (): the manifests that
/// name a node as a holder, newest first (repair, drain, remove-node).
pub(crate) const CF_HOLDERS: &str = "holders";
/// Recency (8) ++ manifest key -> (): manifests stored under-protected or
/// with an unplaced shard, newest first (repair's standing work).
pub(crate) const CF_ATTENTION: &str = "attention";
/// Node id (8) ++ object key (32) ++ segment (4) ++ index (1) -> (): shards
/// storage nodes reported damaged, until repair rebuilds them.
pub(crate) const CF_DAMAGED: &str = "damaged";

/// Sequence number (8, BE) -> `AuditEntry`: the hash-chained audit trail.
pub(crate) const CF_AUDIT: &str = "audit";
/// Token hash (32) -> `TokenRecord`: bearer tokens, only their hashes.
pub(crate) const CF_TOKENS: &str = "tokens";

/// The state machine's column families, in snapshot tag order (tag = index
/// + 1). A snapshot carries exactly these. New ones go at the end.
pub(crate) const SM_CFS: [&str; 9] = [
    CF_SM,
    CF_MANIFESTS,
    CF_STUDY,
    CF_OBJECTS,
    CF_HOLDERS,
    CF_ATTENTION,
    CF_DAMAGED,
    CF_AUDIT,
    CF_TOKENS,
];

/// Every column family of the database, Raft's and the state machine's.
pub(crate) const ALL_CFS: [&str; 11] = [
    CF_LOG, CF_RAFT, SM_CFS[0], SM_CFS[1], SM_CFS[2], SM_CFS[3], SM_CFS[4], SM_CFS[5], SM_CFS[6],
    SM_CFS[7], SM_CFS[8],
];

/// Opens (or creates) the database of a metadata node.
pub fn open_db(dir: &Path) -> Result<Arc<DB>, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Metadata is small and hot; keep files few and compaction cheap.
    opts.set_max_background_jobs(2);
    opts.set_keep_log_file_num(4);
    // Flush the column families that pin old write-ahead log files once the
    // log reaches this size. RocksDB's default is four times all the write
    // buffers, gigabytes with nine column families, of which small ones
    // (`raft`, `sm`) rarely fill a memtable on their own.
    opts.set_max_total_wal_size(256 << 20);
    let cfs = ALL_CFS.into_iter().map(|name| {
        let mut cf_opts = Options::default();
        if name == CF_MANIFESTS || name == CF_OBJECTS {
            // Point lookups of mostly absent keys (every new put checks
            // for a conflict): a bloom filter answers "absent" without
            // reading a block from each level, so puts stay as fast with
            // millions of manifests as with none.
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_bloom_filter(10.0, false);
            cf_opts.set_block_based_table_factory(&table);
        }
        ColumnFamilyDescriptor::new(name, cf_opts)
    });
    Ok(Arc::new(DB::open_cf_descriptors(&opts, dir, cfs)?))
}

pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, StorageError> {
    db.cf_handle(name)
        .ok_or_else(|| io_err(format!("column family {name} missing")))
}

/// A write that must be durable before it is acknowledged.
pub(crate) fn sync_write_opts() -> rocksdb::WriteOptions {
    let mut w = rocksdb::WriteOptions::default();
    w.set_sync(true);
    w
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct StoreFault(pub String);

pub(crate) fn io_err(msg: impl Into<String>) -> StorageError {
    StorageError::from(openraft::StorageIOError::write(&StoreFault(msg.into())))
}

pub(crate) fn read_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::from(openraft::StorageIOError::read(&StoreFault(e.to_string())))
}

pub(crate) fn write_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::from(openraft::StorageIOError::write(&StoreFault(e.to_string())))
}

//! The openraft type configuration: what the log carries (a
//! [`kura_proto::meta::Command`]), what applying answers, and how snapshots
//! travel (a file made from a RocksDB checkpoint, so a snapshot of millions
//! of manifests never has to fit in memory: see [`crate::store::snapdata`]).

use kura_proto::meta::{Command, CommandResult};

openraft::declare_raft_types!(
    /// Kura's Raft types.
    pub TypeConfig:
        D = Command,
        R = Option<CommandResult>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::store::snapdata::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle of a metadata node.
pub type Raft = openraft::Raft<TypeConfig>;
/// A Raft log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// openraft's storage error for our node id type.
pub type StorageError = openraft::StorageError<u64>;
/// A log id.
pub type LogId = openraft::LogId<u64>;
/// Membership as stored with the log id that introduced it.
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;

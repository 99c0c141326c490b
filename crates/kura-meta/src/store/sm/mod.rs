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

mod apply;
mod keys;
mod reader;
mod txn;
use {apply::*, txn::*};
pub use {keys::*, reader::*};

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

//! [`ShardStore`]: the synchronous core of a storage node. Shards are files
//! in a fan-out tree; a RocksDB index names each one (see the crate doc for
//! why, and for the measurements behind it). Every call blocks on the disk:
//! async callers run it under `spawn_blocking`.
//!
//! ```text
//! <data_dir>/
//!   index/                   RocksDB: column family `shards` (see `index`)
//!   shards/ab/<key hex>-<segment>-<index>.<generation>   (ab: first key byte)
//!   tmp/                     puts in progress; emptied at every start
//!   quarantine/              shards that failed a check, moved aside
//! ```
//!
//! A put writes `tmp/<generation>.tmp`, fsyncs it, renames it into the tree,
//! fsyncs the directory, and only then writes the index record with a
//! synced write; the put is acknowledged after that. Each version of a shard
//! gets a new *generation* (part of its file name), so an overwrite never
//! touches the bytes the current record names.
//!
//! Architecture invariant: an index record only ever names a complete,
//! fsynced file. A crash before the record is written leaves a temp file
//! (removed at the next start) or an unreferenced file in the tree (never
//! read, since reads go through the index; the scrubber reclaims it). A
//! crash after it leaves at worst the replaced or deleted version's file
//! behind, equally unreferenced.
//!
//! The 256 fan-out directories are made when the store is first opened, so
//! no put pays for creating (and fsyncing) a directory: on ext4 every fsync
//! is a journal commit, and one more per put was measurable. Object keys
//! are hashes, so shards spread evenly; ext4 and XFS index large
//! directories, so tens of thousands of files per directory (a node of
//! several TB) are fine.
//!
//! Concurrency: operations on one shard id are serialised by one of
//! [`LOCK_STRIPES`] reader-writer locks (reads share it). A read holds it
//! only while it looks the record up and opens the file: the open file
//! keeps the bytes of that generation even if a writer replaces the shard
//! next, so verification and sending run unlocked.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use kura_erasure::{SHARD_HEADER_BYTES, Shard};
use kura_proto::shards_client::{
    LIST_PAGE_MAX, NodeStatus, PutOutcome, SHARD_BYTES_MAX, ShardId, ShardInfo, ShardState,
};
use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteOptions};

use crate::error::{StoreError, is_no_space};
use crate::index::{self, IndexEntry};

/// Locks serialising operations per shard id. Many more than the node's
/// concurrent requests, so unrelated shards rarely share one.
pub const LOCK_STRIPES: usize = 64;
/// Free disk space kept back when the node's capacity is the disk's free
/// space: the index (RocksDB WAL, flushes, compaction) must always be able
/// to write, or RocksDB stops accepting writes until restarted.
pub const DISK_HEADROOM_BYTES: u64 = 64 * 1024 * 1024;
/// Version of the directory layout and index, recorded in the index so a
/// future layout can tell an old store apart.
pub const STORE_FORMAT_VERSION: u32 = 1;
/// Fan-out directories under `shards/`, one per value of the object key's
/// first byte.
pub const FANOUT_DIRS: usize = 256;

const _: () = assert!(LOCK_STRIPES.is_power_of_two());

const DIR_INDEX: &str = "index";
const DIR_SHARDS: &str = "shards";
const DIR_TMP: &str = "tmp";
const DIR_QUARANTINE: &str = "quarantine";
const CF_SHARDS: &str = "shards";
const KEY_FORMAT: &[u8] = b"format";

/// A shard read back and verified: its index record and its encoded bytes.
#[derive(Debug)]
pub struct VerifiedShard {
    pub info: ShardInfo,
    pub bytes: Vec<u8>,
}

/// What the node holds, kept in memory and rebuilt from the index at start.
#[derive(Debug, Default)]
struct Usage {
    used_bytes: u64,
    shard_count: u64,
    corrupt_count: u64,
    /// Bytes of puts in progress, counted against the capacity so that
    /// concurrent puts cannot together overshoot it.
    reserved_bytes: u64,
    /// Quarantined shards not yet reported to the metadata cluster (all of
    /// them after a restart: reporting one twice is harmless).
    unreported_damage: Vec<ShardId>,
}

/// The shard store of one node. Share it with `Arc`; dropping the last
/// reference closes the index.
pub struct ShardStore {
    db: DB,
    root: PathBuf,
    shards_dir: PathBuf,
    tmp_dir: PathBuf,
    quarantine_dir: PathBuf,
    capacity_bytes: Option<u64>,
    stripes: Vec<RwLock<()>>,
    next_generation: AtomicU64,
    usage: Mutex<Usage>,
}

impl ShardStore {
    /// Opens the store in `data_dir` (creating it if new), removes the temp
    /// files of puts a crash interrupted, and rebuilds the usage counters
    /// from the index. `capacity_bytes` is the quota; `None` means what the
    /// node holds plus the disk's free space (less [`DISK_HEADROOM_BYTES`]).
    pub fn open(data_dir: &Path, capacity_bytes: Option<u64>) -> Result<Self, StoreError> {
        let root = data_dir.to_path_buf();
        let shards_dir = root.join(DIR_SHARDS);
        let tmp_dir = root.join(DIR_TMP);
        let quarantine_dir = root.join(DIR_QUARANTINE);
        for dir in [&root, &shards_dir, &tmp_dir, &quarantine_dir] {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::io(format!("create {}", dir.display()), e))?;
        }
        fsync_dir(&root)?;
        // First: RocksDB's lock makes this process the directory's only
        // user, so the temp files removed below are nobody's puts in flight.
        let db = open_index(&root.join(DIR_INDEX))?;
        make_fanout(&shards_dir)?;
        let removed = remove_temp_files(&tmp_dir)?;
        if removed > 0 {
            tracing::info!(removed, dir = %tmp_dir.display(), "removed temp files of interrupted puts");
        }
        let store = Self {
            db,
            root,
            shards_dir,
            tmp_dir,
            quarantine_dir,
            capacity_bytes,
            stripes: (0..LOCK_STRIPES).map(|_| RwLock::new(())).collect(),
            next_generation: AtomicU64::new(1),
            usage: Mutex::new(Usage::default()),
        };
        store.check_format()?;
        store.rebuild_usage()?;
        Ok(store)
    }

    /// Takes up to `max` quarantined shards that the metadata cluster has not
    /// been told about; give them back with [`ShardStore::unreported`] if
    /// the report fails.
    pub fn take_unreported_damage(&self, max: usize) -> Vec<ShardId> {
        let mut usage = self.usage();
        let n = usage.unreported_damage.len().min(max);
        usage.unreported_damage.drain(..n).collect()
    }

    /// Puts back damage reports that did not reach the metadata cluster.
    pub fn unreported(&self, ids: Vec<ShardId>) {
        self.usage().unreported_damage.extend(ids);
    }

    /// The directory the store lives in.
    pub fn data_dir(&self) -> &Path {
        &self.root
    }

    /// Stores `bytes` as shard `id`, durably, after checking that they are
    /// a valid shard of that id whose payload hashes to `payload_blake3`.
    /// Identical bytes already stored are reported as `already_present`
    /// (after re-verifying the stored copy); different bytes are
    /// [`StoreError::AlreadyExists`] unless `overwrite`.
    pub fn put(
        &self,
        id: &ShardId,
        bytes: &[u8],
        payload_blake3: &[u8; 32],
        overwrite: bool,
    ) -> Result<PutOutcome, StoreError> {
        let length = bytes.len() as u64;
        if length > SHARD_BYTES_MAX {
            return Err(StoreError::InvalidArgument(format!(
                "shard {id} is {length} bytes, more than the {SHARD_BYTES_MAX} allowed"
            )));
        }
        let header = Shard::verify(bytes).map_err(|e| {
            StoreError::InvalidArgument(format!("shard {id}: not a valid shard: {e}"))
        })?;
        let named = ShardId::of(&header);
        if named != *id {
            return Err(StoreError::InvalidArgument(format!(
                "the request names shard {id} but the shard's header names {named}"
            )));
        }
        if header.payload_blake3 != *payload_blake3 {
            return Err(StoreError::InvalidArgument(format!(
                "shard {id}: payload blake3 is {}, the request expects {}",
                hex::encode(header.payload_blake3),
                hex::encode(payload_blake3)
            )));
        }
        let header_blake3: [u8; 32] = blake3::hash(&bytes[..SHARD_HEADER_BYTES]).into();

        let _guard = self
            .stripe(id)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut replaced = None;
        if let Some(old) = self.entry(id)? {
            if old.header_blake3 == header_blake3 {
                if old.state == ShardState::Ok {
                    match self.read_verified(id, &old)? {
                        Ok(_) => {
                            // The put is the caller's claim on this copy (a
                            // rebuild about to record this node as holder):
                            // restart its age, so orphan reclaim, which
                            // deletes only copies older than its grace,
                            // cannot take it between the put and the record.
                            let touched = IndexEntry {
                                stored_at_unix_ms: now_unix_ms(),
                                ..old
                            };
                            self.put_entry(id, &touched)?;
                            tracing::debug!(shard = %id, length, "put of identical bytes: already present");
                            return Ok(PutOutcome {
                                info: touched.info(*id),
                                already_present: true,
                            });
                        }
                        // The stored copy rotted: the identical bytes offered
                        // now are its repair.
                        Err(what) => replaced = Some(self.quarantine_locked(id, &old, &what)?),
                    }
                } else {
                    replaced = Some(old);
                }
            } else if !overwrite {
                return Err(StoreError::AlreadyExists {
                    id: *id,
                    stored: hex::encode(old.payload_blake3),
                    offered: hex::encode(payload_blake3),
                });
            } else {
                replaced = Some(old);
            }
        }

        let reservation = self.reserve(length)?;
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let path = self.write_file(id, generation, bytes)?;
        let entry = IndexEntry {
            state: ShardState::Ok,
            length,
            generation,
            stored_at_unix_ms: now_unix_ms(),
            payload_blake3: *payload_blake3,
            header_blake3,
        };
        if let Err(e) = self.put_entry(id, &entry) {
            remove_quietly(&path);
            return Err(e);
        }
        // Durable and indexed: from here on the put has happened.
        if let Some(old) = &replaced {
            remove_quietly(&self.file_path(id, old));
        }
        {
            let mut usage = self.usage();
            usage.used_bytes += length;
            match &replaced {
                None => usage.shard_count += 1,
                Some(old) => {
                    usage.used_bytes = usage.used_bytes.saturating_sub(old.length);
                    if old.state == ShardState::Corrupt {
                        usage.corrupt_count = usage.corrupt_count.saturating_sub(1);
                    }
                }
            }
        }
        drop(reservation);
        tracing::debug!(shard = %id, length, generation, replaced = replaced.is_some(), "shard stored");
        Ok(PutOutcome {
            info: entry.info(*id),
            already_present: false,
        })
    }

    /// Reads shard `id` and verifies it whole (header checksum, payload
    /// blake3, ids, and the hashes the index recorded). A shard that fails
    /// is quarantined and reported as [`StoreError::Corrupt`]; its bytes are
    /// never returned.
    pub fn get(&self, id: &ShardId) -> Result<VerifiedShard, StoreError> {
        let (entry, opened) = {
            let _guard = self
                .stripe(id)
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let entry = self.entry(id)?.ok_or(StoreError::NotFound(*id))?;
            if entry.state == ShardState::Corrupt {
                return Err(StoreError::Corrupt {
                    id: *id,
                    what: "it failed its checks earlier and is quarantined, awaiting repair".into(),
                });
            }
            let path = self.file_path(id, &entry);
            match File::open(&path) {
                Ok(file) => (entry, Ok(file)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => (
                    entry,
                    Err(format!("its file {} is missing", path.display())),
                ),
                // A medium error is damage to this shard, not a fault of
                // the request: quarantined below, like a bad checksum.
                Err(e) if is_media_error(&e) => {
                    (entry, Err(format!("opening its file failed: {e}")))
                }
                Err(e) => return Err(StoreError::io(format!("open {}", path.display()), e)),
            }
        };
        let verdict = match opened {
            Ok(file) => self.verify_file(id, &entry, file)?,
            Err(what) => Err(what),
        };
        match verdict {
            Ok(bytes) => Ok(VerifiedShard {
                info: entry.info(*id),
                bytes,
            }),
            Err(what) => {
                self.quarantine(id, &entry, &what)?;
                Err(StoreError::Corrupt { id: *id, what })
            }
        }
    }

    /// Removes shard `id` (quarantined or not); answers whether it existed.
    pub fn delete(&self, id: &ShardId) -> Result<bool, StoreError> {
        self.delete_if(id, |_| true)
    }

    /// Removes shard `id` only if it was stored (or last put again) before
    /// `cutoff_unix_ms`; answers whether it was removed. Orphan reclaim
    /// deletes this way, so a put racing with its decision keeps the copy.
    pub fn delete_if_stored_before(
        &self,
        id: &ShardId,
        cutoff_unix_ms: i64,
    ) -> Result<bool, StoreError> {
        self.delete_if(id, |e| e.stored_at_unix_ms < cutoff_unix_ms)
    }

    fn delete_if(
        &self,
        id: &ShardId,
        condition: impl FnOnce(&IndexEntry) -> bool,
    ) -> Result<bool, StoreError> {
        let _guard = self
            .stripe(id)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = self.entry(id)? else {
            return Ok(false);
        };
        if !condition(&entry) {
            return Ok(false);
        }
        self.db
            .delete_cf_opt(self.cf()?, index::key(id), &sync_write())?;
        // Unreferenced now; if the unlink fails the file is an orphan the
        // scrubber reclaims.
        remove_quietly(&self.file_path(id, &entry));
        let mut usage = self.usage();
        usage.used_bytes = usage.used_bytes.saturating_sub(entry.length);
        usage.shard_count = usage.shard_count.saturating_sub(1);
        if entry.state == ShardState::Corrupt {
            usage.corrupt_count = usage.corrupt_count.saturating_sub(1);
        }
        tracing::debug!(shard = %id, length = entry.length, "shard deleted");
        Ok(true)
    }

    /// What the index records about shard `id` (its bytes are not read).
    pub fn stat(&self, id: &ShardId) -> Result<ShardInfo, StoreError> {
        let entry = self.entry(id)?.ok_or(StoreError::NotFound(*id))?;
        Ok(entry.info(*id))
    }

    /// Up to `limit` shards (0 or more than [`LIST_PAGE_MAX`] means that
    /// maximum) in id order, starting after `after`.
    pub fn list(&self, after: Option<&ShardId>, limit: u32) -> Result<Vec<ShardInfo>, StoreError> {
        let limit = if limit == 0 || limit > LIST_PAGE_MAX {
            LIST_PAGE_MAX
        } else {
            limit
        } as usize;
        let start = after.map(index::key);
        let mode = match &start {
            Some(k) => IteratorMode::From(k, rocksdb::Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in self.db.iterator_cf(self.cf()?, mode) {
            let (k, v) = item?;
            if start.as_ref().is_some_and(|s| s.as_slice() == k.as_ref()) {
                continue;
            }
            let (id, entry) = decode_record(&k, &v)?;
            out.push(entry.info(id));
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    /// Capacity and counters. `node_id` is filled by the caller.
    pub fn status(&self, node_id: u64) -> Result<NodeStatus, StoreError> {
        let usage = self.usage();
        let capacity_bytes = self.capacity(&usage)?;
        Ok(NodeStatus {
            node_id,
            capacity_bytes,
            used_bytes: usage.used_bytes,
            shard_count: usage.shard_count,
            corrupt_count: usage.corrupt_count,
        })
    }

    /// Refuses early (before a put streams its data) when `length` more
    /// bytes cannot fit right now. The put checks again when it reserves.
    pub fn check_space(&self, length: u64) -> Result<(), StoreError> {
        let usage = self.usage();
        self.fits(&usage, length)
    }

    // ---- internals ----

    fn cf(&self) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(CF_SHARDS)
            .ok_or_else(|| StoreError::Index(format!("column family {CF_SHARDS} missing")))
    }

    fn entry(&self, id: &ShardId) -> Result<Option<IndexEntry>, StoreError> {
        match self.db.get_pinned_cf(self.cf()?, index::key(id))? {
            None => Ok(None),
            Some(v) => IndexEntry::decode(&v)
                .map(Some)
                .map_err(|e| StoreError::Index(format!("record of shard {id}: {e}"))),
        }
    }

    fn put_entry(&self, id: &ShardId, entry: &IndexEntry) -> Result<(), StoreError> {
        self.db
            .put_cf_opt(self.cf()?, index::key(id), entry.to_bytes(), &sync_write())?;
        Ok(())
    }

    fn stripe(&self, id: &ShardId) -> &RwLock<()> {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&id.object_key[..8]);
        let h = (u64::from_le_bytes(prefix) ^ (u64::from(id.segment) << 8) ^ u64::from(id.index))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.stripes[(h >> 32) as usize % LOCK_STRIPES]
    }

    fn usage(&self) -> MutexGuard<'_, Usage> {
        // The counters stay consistent under every panic-free path; a
        // poisoned lock only means another thread panicked elsewhere.
        self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn capacity(&self, usage: &Usage) -> Result<u64, StoreError> {
        match self.capacity_bytes {
            Some(c) => Ok(c),
            None => {
                let free = disk_free_bytes(&self.root)?;
                Ok(usage.used_bytes + free.saturating_sub(DISK_HEADROOM_BYTES))
            }
        }
    }

    fn fits(&self, usage: &Usage, length: u64) -> Result<(), StoreError> {
        let capacity = self.capacity(usage)?;
        let committed = usage.used_bytes + usage.reserved_bytes;
        if committed.saturating_add(length) > capacity {
            return Err(StoreError::Full {
                needed: length,
                used: committed,
                capacity,
                disk_full: false,
            });
        }
        Ok(())
    }

    fn reserve(&self, length: u64) -> Result<Reservation<'_>, StoreError> {
        let mut usage = self.usage();
        self.fits(&usage, length)?;
        usage.reserved_bytes += length;
        Ok(Reservation {
            store: self,
            length,
        })
    }

    fn shard_dir(&self, id: &ShardId) -> PathBuf {
        self.shards_dir.join(format!("{:02x}", id.object_key[0]))
    }

    fn file_name(id: &ShardId, generation: u64) -> String {
        format!(
            "{}-{}-{}.{generation:016x}",
            hex::encode(id.object_key),
            id.segment,
            id.index
        )
    }

    /// Where the bytes of this record live: in the tree, or in quarantine.
    fn file_path(&self, id: &ShardId, entry: &IndexEntry) -> PathBuf {
        let name = Self::file_name(id, entry.generation);
        match entry.state {
            ShardState::Ok => self.shard_dir(id).join(name),
            ShardState::Corrupt => self.quarantine_dir.join(name),
        }
    }

    /// Writes a new file for `id` and makes it durable in the tree: temp
    /// file, fsync, rename, fsync the directory. Leaves nothing behind on
    /// error.
    fn write_file(
        &self,
        id: &ShardId,
        generation: u64,
        bytes: &[u8],
    ) -> Result<PathBuf, StoreError> {
        let tmp = self.tmp_dir.join(format!("{generation:016x}.tmp"));
        let written = File::create_new(&tmp).and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_data()
        });
        if let Err(e) = written {
            remove_quietly(&tmp);
            return Err(self.write_error(format!("write {}", tmp.display()), e, bytes.len()));
        }
        let dir = self.shard_dir(id);
        let path = dir.join(Self::file_name(id, generation));
        let placed = ensure_dir(&dir, &self.shards_dir)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .and_then(|()| fsync_dir_io(&dir));
        if let Err(e) = placed {
            remove_quietly(&tmp);
            remove_quietly(&path);
            return Err(self.write_error(format!("place {}", path.display()), e, bytes.len()));
        }
        Ok(path)
    }

    fn write_error(&self, context: String, e: io::Error, length: usize) -> StoreError {
        if is_no_space(&e) {
            let usage = self.usage();
            return StoreError::Full {
                needed: length as u64,
                used: usage.used_bytes + usage.reserved_bytes,
                capacity: self.capacity(&usage).unwrap_or(usage.used_bytes),
                disk_full: true,
            };
        }
        StoreError::io(context, e)
    }

    /// Reads and checks the file of `entry`. The outer error is an I/O
    /// failure of the node; the inner one says what about the bytes did not
    /// match (the shard is corrupt).
    fn verify_file(
        &self,
        id: &ShardId,
        entry: &IndexEntry,
        file: File,
    ) -> Result<Result<Vec<u8>, String>, StoreError> {
        let path = || self.file_path(id, entry).display().to_string();
        let on_disk = file
            .metadata()
            .map_err(|e| StoreError::io(format!("stat {}", path()), e))?
            .len();
        if on_disk != entry.length {
            return Ok(Err(format!(
                "its file is {on_disk} bytes, the index recorded {}",
                entry.length
            )));
        }
        if entry.length > SHARD_BYTES_MAX {
            return Ok(Err(format!(
                "the index records {} bytes, more than any shard",
                entry.length
            )));
        }
        // entry.length <= SHARD_BYTES_MAX, which fits usize.
        let mut bytes = Vec::with_capacity(entry.length as usize);
        if let Err(e) = file.take(entry.length + 1).read_to_end(&mut bytes) {
            // A medium error is damage to this shard (quarantine, repair),
            // not a fault of the request.
            if is_media_error(&e) {
                return Ok(Err(format!("reading its file failed: {e}")));
            }
            return Err(StoreError::io(format!("read {}", path()), e));
        }
        if bytes.len() as u64 != entry.length {
            return Ok(Err(format!(
                "read {} bytes from its file, the index recorded {}",
                bytes.len(),
                entry.length
            )));
        }
        let header = match Shard::verify(&bytes) {
            Ok(h) => h,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let named = ShardId::of(&header);
        if named != *id {
            return Ok(Err(format!("its file holds shard {named} instead")));
        }
        let header_blake3: [u8; 32] = blake3::hash(&bytes[..SHARD_HEADER_BYTES]).into();
        if header_blake3 != entry.header_blake3 {
            return Ok(Err(
                "its header is intact but not the one stored (blake3 of the header differs from the index)"
                    .into(),
            ));
        }
        Ok(Ok(bytes))
    }

    /// As [`Self::verify_file`], opening the file of `entry` (caller holds
    /// the stripe lock).
    fn read_verified(
        &self,
        id: &ShardId,
        entry: &IndexEntry,
    ) -> Result<Result<Vec<u8>, String>, StoreError> {
        let path = self.file_path(id, entry);
        match File::open(&path) {
            Ok(file) => self.verify_file(id, entry, file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Ok(Err(format!("its file {} is missing", path.display())))
            }
            Err(e) => Err(StoreError::io(format!("open {}", path.display()), e)),
        }
    }

    /// Quarantines the shard of `entry` unless a writer replaced or
    /// quarantined it since it was read.
    fn quarantine(&self, id: &ShardId, entry: &IndexEntry, what: &str) -> Result<(), StoreError> {
        let _guard = self
            .stripe(id)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match self.entry(id)? {
            Some(current)
                if current.generation == entry.generation && current.state == ShardState::Ok =>
            {
                self.quarantine_locked(id, &current, what)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Moves the file aside and marks the record corrupt (caller holds the
    /// stripe lock). Returns the new record.
    fn quarantine_locked(
        &self,
        id: &ShardId,
        entry: &IndexEntry,
        what: &str,
    ) -> Result<IndexEntry, StoreError> {
        let from = self.file_path(id, entry);
        let corrupt = IndexEntry {
            state: ShardState::Corrupt,
            ..*entry
        };
        let to = self.file_path(id, &corrupt);
        match std::fs::rename(&from, &to) {
            Ok(()) => {
                if let Err(e) = fsync_dir_io(&self.quarantine_dir) {
                    tracing::warn!(dir = %self.quarantine_dir.display(), error = %e, "fsync of quarantine failed");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // The record below is what keeps the bytes from being served;
            // the file staying in the tree only delays its inspection.
            Err(e) => {
                tracing::warn!(shard = %id, from = %from.display(), error = %e, "could not move a corrupt shard aside")
            }
        }
        self.put_entry(id, &corrupt)?;
        {
            let mut usage = self.usage();
            usage.corrupt_count += 1;
            usage.unreported_damage.push(*id);
        }
        tracing::error!(
            shard = %id,
            length = entry.length,
            what,
            "shard failed its checks on read: quarantined, never served"
        );
        Ok(corrupt)
    }

    fn check_format(&self) -> Result<(), StoreError> {
        match self.db.get(KEY_FORMAT)? {
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_slice())
                    .map(u32::from_le_bytes)
                    .map_err(|_| StoreError::Index("store format marker is damaged".into()))?;
                if found != STORE_FORMAT_VERSION {
                    return Err(StoreError::Index(format!(
                        "store format {found} is not supported (this build reads {STORE_FORMAT_VERSION})"
                    )));
                }
            }
            None => {
                self.db.put_opt(
                    KEY_FORMAT,
                    STORE_FORMAT_VERSION.to_le_bytes(),
                    &sync_write(),
                )?;
            }
        }
        Ok(())
    }

    fn rebuild_usage(&self) -> Result<(), StoreError> {
        let mut usage = Usage::default();
        let mut generation_max = 0;
        for item in self.db.iterator_cf(self.cf()?, IteratorMode::Start) {
            let (k, v) = item?;
            let (_, entry) = decode_record(&k, &v)?;
            usage.used_bytes += entry.length;
            usage.shard_count += 1;
            if entry.state == ShardState::Corrupt {
                usage.corrupt_count += 1;
                if let Some(id) = index::id_of_key(&k) {
                    usage.unreported_damage.push(id);
                }
            }
            generation_max = generation_max.max(entry.generation);
        }
        tracing::info!(
            dir = %self.root.display(),
            shards = usage.shard_count,
            used_bytes = usage.used_bytes,
            corrupt = usage.corrupt_count,
            "shard store opened"
        );
        // Files of generations above this may exist unreferenced (a crash
        // before their record): reusing one replaces such an orphan, which
        // is harmless.
        self.next_generation
            .store(generation_max + 1, Ordering::Relaxed);
        *self.usage() = usage;
        Ok(())
    }
}

/// Bytes of a put in flight, counted against the capacity until dropped.
struct Reservation<'a> {
    store: &'a ShardStore,
    length: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut usage = self.store.usage();
        usage.reserved_bytes = usage.reserved_bytes.saturating_sub(self.length);
    }
}

fn decode_record(k: &[u8], v: &[u8]) -> Result<(ShardId, IndexEntry), StoreError> {
    let id = index::id_of_key(k)
        .ok_or_else(|| StoreError::Index(format!("key of {} bytes in the shard index", k.len())))?;
    let entry = IndexEntry::decode(v)
        .map_err(|e| StoreError::Index(format!("record of shard {id}: {e}")))?;
    Ok((id, entry))
}

fn open_index(dir: &Path) -> Result<DB, StoreError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Records are ~130 bytes; the index stays small and hot.
    opts.set_max_background_jobs(2);
    opts.set_keep_log_file_num(4);
    let cfs = [rocksdb::DEFAULT_COLUMN_FAMILY_NAME, CF_SHARDS]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    DB::open_cf_descriptors(&opts, dir, cfs)
        .map_err(|e| StoreError::Index(format!("open {}: {}", dir.display(), e.into_string())))
}

fn sync_write() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn fsync_dir_io(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    fsync_dir_io(dir).map_err(|e| StoreError::io(format!("fsync {}", dir.display()), e))
}

/// Creates `dir` (and missing parents up to `base`), fsyncing each parent
/// that gained an entry, so the rename into `dir` survives a crash. The
/// fan-out directories exist from the start; this only repairs a tree
/// someone pruned by hand.
fn ensure_dir(dir: &Path, base: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if parent != base {
            ensure_dir(parent, base)?;
        }
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            // Another put created it; fsync the parent anyway, since that
            // put may not have yet.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        fsync_dir_io(parent)?;
    }
    Ok(())
}

/// Creates the fan-out directories that are missing, then fsyncs `shards`
/// once if any was.
fn make_fanout(shards: &Path) -> Result<(), StoreError> {
    let mut created = false;
    for byte in 0..FANOUT_DIRS {
        let dir = shards.join(format!("{byte:02x}"));
        if !dir.is_dir() {
            match std::fs::create_dir(&dir) {
                Ok(()) => created = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::io(format!("create {}", dir.display()), e)),
            }
        }
    }
    if created {
        fsync_dir(shards)?;
    }
    Ok(())
}

fn remove_quietly(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a file; it is left as an orphan")
        }
    }
}

fn remove_temp_files(dir: &Path) -> Result<usize, StoreError> {
    let mut removed = 0;
    let entries =
        std::fs::read_dir(dir).map_err(|e| StoreError::io(format!("list {}", dir.display()), e))?;
    for entry in entries {
        let path = entry
            .map_err(|e| StoreError::io(format!("list {}", dir.display()), e))?
            .path();
        std::fs::remove_file(&path)
            .map_err(|e| StoreError::io(format!("remove {}", path.display()), e))?;
        removed += 1;
    }
    Ok(removed)
}

/// Free bytes of the filesystem holding `path`, as an unprivileged writer
/// sees them.
fn disk_free_bytes(path: &Path) -> Result<u64, StoreError> {
    let s = rustix::fs::statvfs(path)
        .map_err(|e| StoreError::io(format!("statvfs {}", path.display()), e.into()))?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// An I/O error that says the medium failed (EIO, EUCLEAN from a checksumming
/// filesystem, EBADMSG): the shard's bytes are damaged, not the request.
fn is_media_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc_eio) if [5, 74, 117].contains(&libc_eio))
}

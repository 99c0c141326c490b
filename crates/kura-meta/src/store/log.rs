//! The Raft log store on RocksDB: entries, vote, committed index and the
//! last purged log id, each write synced before openraft is told it is
//! done.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use kura_proto::codec;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, Vote};
use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use super::{CF_LOG, CF_RAFT, cf, read_err, sync_write_opts, write_err};
use crate::types::{Entry, LogId, StorageError, TypeConfig};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// The log store. Cheap to clone: clones share the database (openraft uses
/// a clone as its log reader).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    /// Bytes appended since this process started (the snapshot trigger
    /// reads it).
    appended: Arc<std::sync::atomic::AtomicU64>,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| read_err(format!("log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

impl LogStore {
    /// The log store over `db` (opened with [`super::open_db`]).
    pub fn new(db: Arc<DB>) -> Self {
        Self {
            db,
            appended: Arc::default(),
        }
    }

    /// A counter of the bytes appended to this log since it was opened.
    pub fn appended_bytes(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.appended.clone()
    }

    fn get_raft<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let cf = cf(&self.db, CF_RAFT)?;
        match self.db.get_cf(cf, key).map_err(read_err)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(codec::decode(&bytes).map_err(read_err)?)),
        }
    }

    fn put_raft_synced<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
    ) -> Result<(), StorageError> {
        let cf = cf(&self.db, CF_RAFT)?;
        let bytes = codec::encode(value).map_err(write_err)?;
        self.db
            .put_cf_opt(cf, key, bytes, &sync_write_opts())
            .map_err(write_err)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let cf = cf(&self.db, CF_LOG)?;
        match self.db.iterator_cf(cf, IteratorMode::End).next() {
            None => Ok(None),
            Some(item) => {
                let (_, value) = item.map_err(read_err)?;
                let entry: Entry = codec::decode(&value).map_err(read_err)?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cf = cf(&self.db, CF_LOG)?;
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            cf,
            IteratorMode::From(&index_key(start), Direction::Forward),
        );
        for item in iter {
            let (key, value) = item.map_err(read_err)?;
            let index = key_index(&key)?;
            if !range.contains(&index) {
                break;
            }
            out.push(codec::decode(&value).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_raft(KEY_LAST_PURGED)?;
        let last = self.last_entry_log_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.put_raft_synced(KEY_VOTE, vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        self.get_raft(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_raft_synced(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_raft::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = cf(&self.db, CF_LOG)?;
        let mut batch = WriteBatch::default();
        let mut appended = 0u64;
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(write_err)?;
            appended += bytes.len() as u64;
            batch.put_cf(cf, index_key(entry.log_id.index), bytes);
        }
        self.appended
            .fetch_add(appended, std::sync::atomic::Ordering::Relaxed);
        // Synced: openraft counts this node's vote for these entries once
        // the callback fires.
        let result = self.db.write_opt(batch, &sync_write_opts());
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let cf = cf(&self.db, CF_LOG)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, index_key(log_id.index), index_key(u64::MAX));
        batch.delete_cf(cf, index_key(u64::MAX));
        self.db
            .write_opt(batch, &sync_write_opts())
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Everything up to `log_id` is in a snapshot and applied to the
        // state machine; make those unsynced state machine writes durable
        // before the log entries that could replay them disappear.
        self.db.flush_wal(true).map_err(write_err)?;
        let cf_raft = cf(&self.db, CF_RAFT)?;
        let cf_log = cf(&self.db, CF_LOG)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(
            cf_raft,
            KEY_LAST_PURGED,
            codec::encode(&log_id).map_err(write_err)?,
        );
        batch.delete_range_cf(
            cf_log,
            index_key(0),
            index_key(log_id.index.saturating_add(1)),
        );
        self.db
            .write_opt(batch, &sync_write_opts())
            .map_err(write_err)
    }
}

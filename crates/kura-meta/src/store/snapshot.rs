//! Snapshot files: the whole state machine streamed to one file, and
//! streamed back into RocksDB on a node that installs it.
//!
//! A snapshot of millions of manifests must not have to fit in memory, so
//! it is a file end to end: written from a checkpoint (a consistent view
//! taken while applying goes on, see [`super::snapdata`]), sent in chunks by
//! openraft, and installed in bounded batches.
//!
//! Format (version 1, little-endian):
//! ```text
//! magic "KURASNAP" | version u16 | meta_len u32 | meta (codec SnapshotMeta)
//! records: tag u8 (1..=N: column family in SM_CFS order) | key_len u32 | key | val_len u32 | val
//! end:     tag 0 | blake3 (32 bytes) of every byte before the tag
//! ```
//! Installing verifies the checksum over the whole file before it touches
//! the state machine.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use kura_proto::codec;
use rocksdb::{DB, IteratorMode, WriteBatch};

use super::{SM_CFS, StoreFault, cf};
use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"KURASNAP";
const FORMAT_VERSION: u16 = 1;
/// Install writes go to RocksDB in batches of about this size.
const INSTALL_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// No key or value in the state machine comes close; a larger length is a
/// corrupt file.
const RECORD_BYTES_MAX: u32 = 64 * 1024 * 1024;

type Result<T> = std::result::Result<T, StoreFault>;

fn fault(what: &str, e: impl std::fmt::Display) -> StoreFault {
    StoreFault(format!("{what}: {e}"))
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the state machine as seen by `view` into `path` (synced).
/// `meta` must describe exactly that view.
pub(crate) fn write_file(
    db: &DB,
    view: &rocksdb::Snapshot<'_>,
    meta: &SnapshotMeta,
    path: &Path,
) -> Result<u64> {
    let file = File::create(path).map_err(|e| fault("create snapshot file", e))?;
    let mut w = Hashing {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: blake3::Hasher::new(),
    };
    let io = |e| fault("write snapshot file", e);
    let meta_bytes = codec::encode(meta).map_err(|e| fault("encode snapshot meta", e))?;
    w.write_all(MAGIC).map_err(io)?;
    w.write_all(&FORMAT_VERSION.to_le_bytes()).map_err(io)?;
    w.write_all(&(meta_bytes.len() as u32).to_le_bytes())
        .map_err(io)?;
    w.write_all(&meta_bytes).map_err(io)?;
    let mut records = 0u64;
    for (i, name) in SM_CFS.iter().enumerate() {
        // A checkpoint from before a column family existed: nothing in it.
        let Ok(handle) = cf(db, name) else {
            continue;
        };
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_snapshot(view);
        for item in db.iterator_cf_opt(handle, opts, IteratorMode::Start) {
            let (key, value) = item.map_err(|e| fault("read state machine", e))?;
            w.write_all(&[(i + 1) as u8]).map_err(io)?;
            w.write_all(&(key.len() as u32).to_le_bytes()).map_err(io)?;
            w.write_all(&key).map_err(io)?;
            w.write_all(&(value.len() as u32).to_le_bytes())
                .map_err(io)?;
            w.write_all(&value).map_err(io)?;
            records += 1;
        }
    }
    let digest = *w.hasher.finalize().as_bytes();
    let mut inner = w.inner;
    inner.write_all(&[0]).map_err(io)?;
    inner.write_all(&digest).map_err(io)?;
    let file = inner
        .into_inner()
        .map_err(|e| fault("flush snapshot file", e.error()))?;
    file.sync_all()
        .map_err(|e| fault("sync snapshot file", e))?;
    Ok(records)
}

struct Reader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Reader<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.inner
            .read_exact(buf)
            .map_err(|e| fault("snapshot file ends early", e))?;
        self.hasher.update(buf);
        Ok(())
    }
    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn bytes(&mut self) -> Result<Vec<u8>> {
        let len = self.u32()?;
        if len > RECORD_BYTES_MAX {
            return Err(StoreFault(format!(
                "snapshot record of {len} bytes exceeds {RECORD_BYTES_MAX}"
            )));
        }
        let mut v = vec![0u8; len as usize];
        self.exact(&mut v)?;
        Ok(v)
    }
}

/// Reads a snapshot file, calling `record(cf_index, key, value)` for each
/// record, and verifies its checksum at the end. Answers its meta.
/// A caller that must not act on an unverified file runs this twice: once
/// with a no-op callback.
pub(crate) fn read_file(
    path: &Path,
    mut record: impl FnMut(usize, Vec<u8>, Vec<u8>) -> Result<()>,
) -> Result<SnapshotMeta> {
    let file = File::open(path).map_err(|e| fault("open snapshot file", e))?;
    let mut r = Reader {
        inner: BufReader::with_capacity(1 << 20, file),
        hasher: blake3::Hasher::new(),
    };
    let mut magic = [0u8; 8];
    r.exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(StoreFault("not a Kura snapshot file (bad magic)".into()));
    }
    let mut version = [0u8; 2];
    r.exact(&mut version)?;
    let version = u16::from_le_bytes(version);
    if version != FORMAT_VERSION {
        return Err(StoreFault(format!(
            "snapshot format version {version} is not supported (this build reads {FORMAT_VERSION})"
        )));
    }
    let meta_bytes = r.bytes()?;
    let meta: SnapshotMeta =
        codec::decode(&meta_bytes).map_err(|e| fault("decode snapshot meta", e))?;
    loop {
        let mut tag = [0u8; 1];
        r.inner
            .read_exact(&mut tag)
            .map_err(|e| fault("snapshot file ends early", e))?;
        if tag[0] == 0 {
            break;
        }
        r.hasher.update(&tag);
        let index = usize::from(tag[0]) - 1;
        if index >= SM_CFS.len() {
            return Err(StoreFault(format!(
                "snapshot record tag {} unknown",
                tag[0]
            )));
        }
        let key = r.bytes()?;
        let value = r.bytes()?;
        record(index, key, value)?;
    }
    let mut digest = [0u8; 32];
    r.inner
        .read_exact(&mut digest)
        .map_err(|e| fault("snapshot checksum missing", e))?;
    if r.hasher.finalize().as_bytes() != &digest {
        return Err(StoreFault(
            "snapshot checksum mismatch: file is corrupt".into(),
        ));
    }
    let mut rest = [0u8; 1];
    if r.inner
        .read(&mut rest)
        .map_err(|e| fault("read snapshot", e))?
        != 0
    {
        return Err(StoreFault("trailing bytes after snapshot checksum".into()));
    }
    Ok(meta)
}

/// Replaces the state machine's column families with the content of a
/// verified snapshot file, in bounded batches (not synced; the caller
/// syncs the bookkeeping that marks the install done).
pub(crate) fn load_into_db(db: &DB, path: &Path) -> Result<SnapshotMeta> {
    let mut handles = Vec::with_capacity(SM_CFS.len());
    for name in SM_CFS {
        handles.push(cf(db, name).map_err(|e| fault("column family", e))?);
    }
    let mut clear = WriteBatch::default();
    for h in &handles {
        clear.delete_range_cf(*h, &[][..], &[0xffu8; 256][..]);
    }
    db.write(clear)
        .map_err(|e| fault("clear state machine", e))?;
    let mut batch = WriteBatch::default();
    let meta = read_file(path, |index, key, value| {
        batch.put_cf(handles[index], key, value);
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            let full = std::mem::take(&mut batch);
            db.write(full).map_err(|e| fault("load snapshot", e))?;
        }
        Ok(())
    })?;
    db.write(batch).map_err(|e| fault("load snapshot", e))?;
    Ok(meta)
}

//! What openraft reads and writes as a snapshot's bytes.
//!
//! A snapshot is kept as a RocksDB checkpoint (hard links to the state
//! machine's immutable table files): building one costs a memtable flush,
//! not a copy of millions of manifests, so the log can be purged often.
//! The streamable file (the [`super::snapshot`] format) is made from the
//! checkpoint only when a follower needs it, on the first read or seek of
//! a [`SnapshotData`], and kept for the next follower until the snapshot is
//! superseded.

use std::future::Future;
use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rocksdb::{DB, Options};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;

use super::{ALL_CFS, snapshot};
use crate::types::SnapshotMeta;

/// Opens a checkpoint read-only, with every column family it has (one
/// taken before an upgrade lacks the newer ones; they count as empty).
pub(crate) fn open_checkpoint(path: &Path) -> Result<DB, rocksdb::Error> {
    let present = DB::list_cf(&Options::default(), path)?;
    let cfs = ALL_CFS
        .into_iter()
        .filter(|c| present.iter().any(|p| p == c));
    DB::open_cf_for_read_only(&Options::default(), path, cfs, false)
}

/// Makes a snapshot's streamable file from its checkpoint.
pub(crate) struct Materialize {
    pub meta: SnapshotMeta,
    pub checkpoint: PathBuf,
    pub file: PathBuf,
    /// One materialization at a time per state machine: two followers
    /// asking at once share the file.
    pub lock: Arc<Mutex<()>>,
}

impl Materialize {
    fn run(self) -> io::Result<std::fs::File> {
        let _guard = self
            .lock
            .lock()
            .map_err(|_| io::Error::other("snapshot materialization lock poisoned"))?;
        if let Ok(f) = std::fs::File::open(&self.file) {
            return Ok(f);
        }
        let tmp = self
            .file
            .with_extension(format!("bin.{}.tmp", std::process::id()));
        let db = open_checkpoint(&self.checkpoint).map_err(|e| {
            io::Error::other(format!(
                "open checkpoint {}: {e}",
                self.checkpoint.display()
            ))
        })?;
        let view = db.snapshot();
        let records =
            snapshot::write_file(&db, &view, &self.meta, &tmp).map_err(io::Error::other)?;
        drop(view);
        drop(db);
        std::fs::rename(&tmp, &self.file)?;
        let f = std::fs::File::open(&self.file)?;
        if !self.checkpoint.exists() {
            // Superseded while it was being written: serve this one from
            // the open handle, leave no file behind.
            let _ = std::fs::remove_file(&self.file);
        }
        tracing::info!(snapshot = %self.meta.snapshot_id, records, "made snapshot file from checkpoint");
        Ok(f)
    }
}

enum State {
    File(tokio::fs::File),
    Pending {
        make: Option<Materialize>,
        task: Option<JoinHandle<io::Result<std::fs::File>>>,
        seek: Option<SeekFrom>,
    },
}

/// A snapshot's bytes: a file, or a checkpoint made into one on first use.
pub struct SnapshotData {
    state: State,
    /// A file being received, named so installing can rename it instead
    /// of copying it.
    path: Option<PathBuf>,
}

impl SnapshotData {
    /// An existing snapshot file.
    pub(crate) fn file(file: tokio::fs::File) -> Self {
        Self {
            state: State::File(file),
            path: None,
        }
    }

    /// A file being received at `path`.
    pub(crate) fn incoming(file: tokio::fs::File, path: PathBuf) -> Self {
        Self {
            state: State::File(file),
            path: Some(path),
        }
    }

    /// A snapshot whose file is made from its checkpoint when first read.
    pub(crate) fn pending(make: Materialize) -> Self {
        Self {
            state: State::Pending {
                make: Some(make),
                task: None,
                seek: None,
            },
            path: None,
        }
    }

    /// The file and path of data from `begin_receiving_snapshot`; any
    /// other data comes back as it is.
    pub(crate) fn into_incoming(mut self) -> Result<(tokio::fs::File, PathBuf), Self> {
        if !matches!((&self.state, &self.path), (State::File(_), Some(_))) {
            return Err(self);
        }
        let path = self.path.take();
        let state = std::mem::replace(
            &mut self.state,
            State::Pending {
                make: None,
                task: None,
                seek: None,
            },
        );
        match (state, path) {
            (State::File(f), Some(p)) => Ok((f, p)),
            _ => Err(self),
        }
    }

    /// Drives a pending snapshot until its file is open.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let State::Pending { make, task, seek } = &mut self.state else {
            return Poll::Ready(Ok(()));
        };
        if task.is_none() {
            let Some(m) = make.take() else {
                return Poll::Ready(Err(io::Error::other("snapshot file could not be made")));
            };
            *task = Some(tokio::task::spawn_blocking(move || m.run()));
        }
        let Some(handle) = task.as_mut() else {
            return Poll::Ready(Err(io::Error::other("snapshot file could not be made")));
        };
        let file = match Pin::new(handle).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => {
                return Poll::Ready(Err(io::Error::other(format!("snapshot file task: {e}"))));
            }
            Poll::Ready(Ok(Err(e))) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(Ok(f))) => f,
        };
        let seek = seek.take();
        let mut file = tokio::fs::File::from_std(file);
        if let Some(pos) = seek {
            Pin::new(&mut file).start_seek(pos)?;
        }
        self.state = State::File(file);
        Poll::Ready(Ok(()))
    }

    fn file_mut(&mut self) -> io::Result<&mut tokio::fs::File> {
        match &mut self.state {
            State::File(f) => Ok(f),
            State::Pending { .. } => Err(io::Error::other("snapshot file not made yet")),
        }
    }
}

impl Drop for SnapshotData {
    /// A received file that was never installed (the transfer was
    /// abandoned) is deleted.
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        Pin::new(this.file_mut()?).poll_read(cx, buf)
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        match &mut this.state {
            State::File(f) => Pin::new(f).start_seek(position),
            State::Pending { seek, .. } => {
                *seek = Some(position);
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let this = self.get_mut();
        match this.poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        Pin::new(this.file_mut()?).poll_complete(cx)
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().file_mut()?).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::File(f) => Pin::new(f).poll_flush(cx),
            State::Pending { .. } => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::File(f) => Pin::new(f).poll_shutdown(cx),
            State::Pending { .. } => Poll::Ready(Ok(())),
        }
    }
}

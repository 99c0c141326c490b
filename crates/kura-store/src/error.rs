//! The storage node's errors, and their one mapping to gRPC status.
//!
//! Caller errors (a bad request, a conflict, an absent shard, a full node)
//! change nothing; `Corrupt` is the disk's fault and is reported as
//! DATA_LOSS after the shard was quarantined; `Io` and `Index` are the
//! node's own storage failing (INTERNAL: the caller tries another holder).

use kura_proto::shards_client::{InvalidField, ShardId};

/// Why a shard operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request or the uploaded bytes are malformed; nothing was stored.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The id is stored with other bytes and the put did not ask to
    /// overwrite; the stored shard is untouched.
    #[error(
        "shard {id} is already stored with different bytes (stored payload blake3 {stored}, \
         offered {offered}); set overwrite to replace it"
    )]
    AlreadyExists {
        id: ShardId,
        stored: String,
        offered: String,
    },
    #[error("shard {0} not found")]
    NotFound(ShardId),
    /// A range starting past the end of the shard.
    #[error("shard {id} is {length} bytes; offset {offset} is past its end")]
    OutOfRange {
        id: ShardId,
        offset: u64,
        length: u64,
    },
    /// The stored shard failed its checks (now or earlier) and is
    /// quarantined; its bytes are never served.
    #[error("shard {id} is corrupt on this node: {what}")]
    Corrupt { id: ShardId, what: String },
    /// Storing `needed` more bytes would pass the node's capacity, or the
    /// disk ran out of space; nothing was left behind.
    #[error(
        "storage node is full: {needed} more bytes do not fit ({used} of {capacity} bytes used{})",
        if *.disk_full { ", and the disk reported no space" } else { "" }
    )]
    Full {
        needed: u64,
        used: u64,
        capacity: u64,
        disk_full: bool,
    },
    /// A rebuild found too few good shards among its sources; nothing was
    /// stored.
    #[error("cannot rebuild: {0}")]
    SourcesShort(String),
    /// The node is stopping and takes no new requests.
    #[error("storage node is shutting down")]
    ShuttingDown,
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The index database failed or holds a record this build cannot read.
    #[error("shard index: {0}")]
    Index(String),
    /// A blocking task died or the node was misconfigured: a bug or an
    /// operator error, not the caller's.
    #[error("internal: {0}")]
    Internal(String),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<rocksdb::Error> for StoreError {
    fn from(e: rocksdb::Error) -> Self {
        StoreError::Index(e.into_string())
    }
}

impl From<InvalidField> for StoreError {
    fn from(e: InvalidField) -> Self {
        StoreError::InvalidArgument(e.to_string())
    }
}

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> Self {
        let msg = e.to_string();
        match e {
            StoreError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            StoreError::AlreadyExists { .. } => tonic::Status::already_exists(msg),
            StoreError::NotFound(_) => tonic::Status::not_found(msg),
            StoreError::OutOfRange { .. } => tonic::Status::out_of_range(msg),
            StoreError::Corrupt { .. } => tonic::Status::data_loss(msg),
            StoreError::Full { .. } => tonic::Status::resource_exhausted(msg),
            StoreError::ShuttingDown => tonic::Status::unavailable(msg),
            StoreError::SourcesShort(_) => tonic::Status::failed_precondition(msg),
            StoreError::Io { .. } | StoreError::Index(_) | StoreError::Internal(_) => {
                tonic::Status::internal(msg)
            }
        }
    }
}

/// Whether an I/O error means "no space left" (device or quota).
pub(crate) fn is_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

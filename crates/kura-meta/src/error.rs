//! The metadata node's errors, and their one mapping to gRPC status.

use kura_proto::meta::{LEADER_ADDR_HEADER, LEADER_ID_HEADER, NOT_PROPOSED_HEADER};

/// Why a metadata operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// This node does not lead; the leader, if known, is named so the
    /// client can retry there.
    #[error("not the leader (leader: {})", match (.leader_id, .leader_addr) {
        (Some(id), Some(addr)) => format!("node {id} at {addr}"),
        _ => "unknown, election in progress".to_string(),
    })]
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    /// The leader could not reach a quorum in time.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// A proposal was sent to Raft but its commit was not seen in time: it
    /// may still commit.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The request is malformed; nothing changed.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The request is not allowed in the cluster's current state (e.g. a
    /// second bootstrap); nothing changed.
    #[error("not allowed: {0}")]
    FailedPrecondition(String),
    /// The named thing does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The local store failed (fatal for this node).
    #[error("storage: {0}")]
    Storage(String),
    /// Raft stopped (node shutting down or fatal error).
    #[error("raft stopped: {0}")]
    Fatal(String),
}

impl From<MetaError> for tonic::Status {
    fn from(e: MetaError) -> Self {
        let msg = e.to_string();
        match e {
            MetaError::NotLeader {
                leader_id,
                leader_addr,
            } => {
                let mut status = tonic::Status::unavailable(msg);
                status.metadata_mut().insert(
                    NOT_PROPOSED_HEADER,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                if let (Some(id), Some(addr)) = (leader_id, leader_addr) {
                    if let Ok(v) = id.to_string().parse() {
                        status.metadata_mut().insert(LEADER_ID_HEADER, v);
                    }
                    if let Ok(v) = addr.parse() {
                        status.metadata_mut().insert(LEADER_ADDR_HEADER, v);
                    }
                }
                status
            }
            MetaError::NoQuorum(_) => {
                // Only reads answer NoQuorum (a proposal that cannot commit
                // answers Unknown): nothing was proposed.
                let mut status = tonic::Status::unavailable(msg);
                status.metadata_mut().insert(
                    NOT_PROPOSED_HEADER,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                status
            }
            MetaError::Fatal(_) => tonic::Status::unavailable(msg),
            MetaError::Unknown(_) => tonic::Status::deadline_exceeded(msg),
            MetaError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            MetaError::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            MetaError::NotFound(_) => tonic::Status::not_found(msg),
            MetaError::Storage(_) => tonic::Status::internal(msg),
        }
    }
}

impl From<openraft::StorageError<u64>> for MetaError {
    fn from(e: openraft::StorageError<u64>) -> Self {
        MetaError::Storage(e.to_string())
    }
}

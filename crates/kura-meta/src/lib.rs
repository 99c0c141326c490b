//! Kura's metadata cluster: the one place that knows where every shard
//! lives.
//!
//! A [`MetaNode`] is one voter (or learner) of an openraft 0.9 cluster. Its
//! Raft log and its state machine live in one RocksDB per node
//! ([`store`]); voters talk over the internal `kura.v1.internal.Raft` gRPC
//! service ([`network`]); gateways, storage nodes and operator tools use the
//! `kura.v1.internal.Meta` service ([`service`]) through
//! `kura_proto::meta_client::MetaClient`, which follows leader changes.
//!
//! The state machine holds the cluster map and erasure profile, one
//! manifest per (tenant, SOP Instance UID), and the index study → series →
//! instances. Its commands and queries are `kura_proto::meta`'s types.

// openraft's StorageError and RaftError are large by design and appear in
// trait signatures we implement; boxing them here would only move the cost.
#![allow(clippy::result_large_err)]

pub mod error;
pub mod liveness;
pub mod network;
pub mod node;
pub mod quorum;
pub mod service;
pub mod store;
pub mod types;

pub use error::MetaError;
pub use node::{MetaConfig, MetaNode, RaftTimings};
pub use types::TypeConfig;

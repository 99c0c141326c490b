//! `kura-gateway`: the public `kura.v1.Archive` gRPC service.
//!
//! A gateway holds no data of its own. **Store** reads the DICOM identity
//! from the first bytes, validates, hashes, seals (encryption at rest,
//! [`seal`]) and erasure-codes the instance as it streams in, writes every segment's shards to the storage nodes that
//! placement chooses, and commits the manifest through the metadata cluster
//! ([`ingest`]). **Retrieve** follows the manifest, reads the nearest k good
//! shards of each segment, reconstructs from parity when it must, opens
//! the sealed chunks and verifies the instance's blake3 before the last
//! byte goes out
//! ([`retrieve`]). **Stat** and **ListStudy** are answered from the metadata
//! index alone. Beside the Archive service the gRPC port serves
//! `grpc.health.v1` and server reflection (v1 and v1alpha); an optional
//! plaintext ops port serves `/healthz`, `/readyz` and `/metrics` ([`ops`]).

pub mod admin;
pub mod audit;
pub mod auth;
pub mod cluster;
mod delete;
pub mod dimse;
pub mod error;
pub mod info;
pub mod ingest;
pub mod limits;
mod manifests;
pub mod ops;
pub mod repair;
pub mod retrieve;
pub mod seal;
pub mod server;
pub mod service;
mod state;
pub mod tokens;

pub use admin::DrillHook;
pub use error::GatewayError;
pub use limits::Limits;
pub use repair::{RepairConfig, RepairHandle, RepairStatus};
pub use server::{Gateway, GatewayConfig};

//! End-to-end tests against a whole dev cluster in this process: real
//! metadata voters, storage nodes and gateway on loopback, real RocksDB in
//! temp dirs.

mod archive;
mod degraded;
mod delete;
mod dimse;
mod encryption;
mod harness;
mod limits;
mod liveness;
mod ops;
mod repair;
mod security;

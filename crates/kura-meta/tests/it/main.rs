//! Integration tests of the metadata cluster: real nodes on loopback
//! (port 0), real RocksDB in temp directories, real gRPC between them.

mod audit;
mod bad_input;
mod conformance;
mod fixtures;
mod harness;
mod lifecycle;
mod linearizability;
mod linearizable_history;

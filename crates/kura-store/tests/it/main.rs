//! Integration tests of the storage node: a real server on 127.0.0.1:0,
//! real RocksDB and shard files in temp directories, real gRPC clients;
//! the usage report goes to a real in-process metadata cluster.

mod bad_input;
mod corruption;
mod crash;
mod harness;
mod lifecycle;
mod media_errors;
mod report;
mod shards;

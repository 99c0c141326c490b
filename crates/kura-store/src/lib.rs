//! Kura's storage node: keeps erasure-coded shards durable and never hands
//! out a byte that fails its checksum.
//!
//! - [`ShardStore`] — the synchronous core: shard files plus a RocksDB
//!   index; put (verified, fsynced, then indexed), verified get, delete,
//!   stat, paged list, usage. Async code calls it on the blocking pool.
//! - [`ShardsService`] — the `kura.v1.internal.Shards` gRPC service
//!   (`proto/kura/v1/internal/shards.proto`) over a store: streaming, bounded
//!   memory, errors mapped to status codes in one place ([`StoreError`]).
//! - [`StorageNode`] — start, serve, report usage to the metadata cluster,
//!   shut down for real.
//!
//! Callers reach a node through `kura_proto::shards_client::ShardsClient`;
//! this crate does not depend on any other role.
//!
//! # Storage design: files with a RocksDB index
//!
//! Each shard is one file (its encoded bytes, header and payload, exactly
//! as `kura-erasure` makes them) in one of 256 fan-out directories; a RocksDB
//! index maps the shard id to its length, generation, blake3 and state.
//! The alternative was RocksDB's integrated BlobDB (`enable_blob_files`,
//! values above `min_blob_size` in blob files) with synced writes. Both were
//! measured with `cargo bench -p kura-store --bench store`:
//!
//! | shard | design | put MB/s (p50 ms) | put, 4 threads | get MB/s (p50 ms) | disk used after deleting ½, % of live data |
//! |---:|---|---:|---:|---:|---:|
//! | 64 KiB | bare write + fsync (ceiling) | 106 (0.60) | 175 | | |
//! | 64 KiB | **files + index** | 38 (1.59) | 91 | 1053 (0.06) | 100 % |
//! | 64 KiB | BlobDB | 74 (0.80) | 107 | 498 (0.12) | 200 % |
//! | 256 KiB | bare write + fsync (ceiling) | 112 (2.27) | 205 | | |
//! | 256 KiB | **files + index** | 79 (3.34) | 121 | 1541 (0.17) | 100 % |
//! | 256 KiB | BlobDB | 142 (1.81) | 164 | 637 (0.41) | 200 % |
//! | 1 MiB | bare write + fsync (ceiling) | 241 (4.38) | 382 | | |
//! | 1 MiB | **files + index** | 176 (5.91) | 289 | 2426 (0.41) | 100 % |
//! | 1 MiB | BlobDB | 174 (6.07) | 172 | 281 (3.58) | 200 % |
//!
//! (Release build, 64 MiB per size, ext4 on the 2-core VM's virtual disk,
//! gets verified in both designs. fsync latency on this disk swings 4-8x
//! when other processes write; under such load every design slows in
//! proportion to its fsyncs. Re-run before leaning on a figure.)
//!
//! A synced put costs one journal commit per fsync: three for files (the
//! file, its directory after the rename, the index WAL), one for BlobDB
//! (its WAL, which carries the whole value). So BlobDB puts small shards
//! about twice as fast from one writer. Kura's shards are mostly near
//! 1 MiB (4 MiB segments over k = 4 or 5), where single-writer puts are
//! even and files pull ahead with concurrent writers (the gateway writes
//! many shards at once): BlobDB funnels every byte through one WAL. Gets
//! are 2-9x faster from files. Writing the file directly under its final
//! name instead of temp + rename (`direct` in the bench) saved nothing
//! measurable, so the simpler crash story stays.
//!
//! Why files:
//! - **Writes go to disk once.** A synced BlobDB put writes the whole shard
//!   to the WAL, then again to a blob file at flush, and blob garbage
//!   collection copies live shards a third time as deletes accumulate. A
//!   file is written once; the index write is ~100 bytes.
//! - **Deletes free space at once.** Repair and drain delete shards
//!   routinely; with blob files the space returns only after blob GC
//!   rewrites a whole file, so the used bytes a node reports lag its
//!   holdings and capacity planning gets a moving target.
//! - **A full disk stays local.** A file write that hits ENOSPC fails that
//!   put alone (the temp file is removed). RocksDB that hits ENOSPC on its
//!   WAL or a flush goes into a background-error state that refuses every
//!   later write until it is resumed; the index here is small, and the
//!   quota keeps [`store::DISK_HEADROOM_BYTES`] free for it.
//! - **Corruption is local and visible.** A damaged file damages one shard,
//!   which is moved to `quarantine/` for inspection; operators and the
//!   chaos tests find a shard's bytes by name.
//! - **Memory is not tied to shard bytes.** BlobDB holds recent values in
//!   its memtables (the write buffer) until a flush.
//!
//! Group commit was measured too (2026-12): puts write and rename their
//! files without syncing, and one leader per group of concurrent puts runs
//! `syncfs` on the store's filesystem, then one synced index batch for the
//! group. In the bench it cut single-writer put latency by a quarter to a
//! half, but with 8 writers it was no faster (64 KiB: 34-116 MB/s against
//! 111-180 per-shard, noisy both ways), and in `bench/ingest` (8 streams of
//! 0.5 MB slices, the whole cluster in one process) it changed the store
//! rate within noise (59-71 against 59-63 MB/s) and the CPU per instance
//! by ~5 %. The profile said why: the fsyncs cost ~7 % of CPU either way
//! (ext4 merges concurrent ones), while *creating a file per shard* cost
//! 13-20 % (`ext4_new_inode`: on this machine's journal-less ext4 the
//! inode allocator scans for recently deleted inodes). `syncfs` also
//! flushes every other writer of the filesystem. So per-shard syncs stay;
//! the next step for the put path is one that creates no inode per shard
//! (append-only shard volumes with the index naming offsets).
//!
//! # Integrity
//!
//! A put is checked before anything touches the disk (header checksum,
//! payload blake3, ids, the caller's expected blake3). Every read re-reads
//! the whole file and re-checks all of it, and the header's blake3 against
//! the index; a shard that fails is quarantined (file moved aside, record
//! marked corrupt, counted in `corrupt_count`) and answered with DATA_LOSS,
//! then and on every later read, until repair rewrites it or deletes it.

pub mod error;
pub mod gc;
mod index;
pub mod node;
pub mod rebuild;
mod report;
pub mod scrub;
pub mod service;
pub mod store;

pub use error::StoreError;
pub use node::{StorageNode, StoreConfig};
pub use service::ShardsService;
pub use store::{ShardStore, VerifiedShard};

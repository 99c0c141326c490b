//! The measurement behind the storage design (see the crate doc): shard
//! files with a RocksDB index (what `ShardStore` does) against RocksDB's
//! integrated BlobDB holding the shards as values, both with synced writes,
//! for 64 KiB, 256 KiB and 1 MiB shards.
//!
//! For each size it prints put and get throughput (one thread; puts also
//! with 4 threads, where RocksDB's group commit could help BlobDB), and the
//! disk space left after deleting half of the shards. The ceiling is a bare
//! write + fdatasync of one file per shard, measured in the same run.
//! `direct` is the files design without the temp file (created under its
//! final name), to see what the rename costs.
//!
//! Both designs do the same checks: a put verifies the shard first, a get
//! verifies it after reading (header checksum and payload blake3).
//!
//! Run: `cargo bench -p kura-store --bench store` (release). Set
//! `KURA_BENCH_DIR` to put the data on another disk (default `/var/tmp`;
//! not a tmpfs, where fsync is free), `KURA_BENCH_MIB` for the bytes per
//! size (default 64).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kura_erasure::{Code, SHARD_HEADER_BYTES, Shard, ShardHeader};
use kura_proto::shards_client::ShardId;
use kura_store::ShardStore;
use rocksdb::{DB, Options, WriteOptions};

const SIZES_BYTES: [u32; 3] = [64 * 1024, 256 * 1024, 1024 * 1024];
const THREADS: usize = 4;

fn main() {
    let base = std::env::var("KURA_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let mib: u64 = std::env::var("KURA_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    println!("kura-store bench: {mib} MiB per shard size, data under {base}");
    println!(
        "{:>8} {:<10} {:>12} {:>12} {:>12} {:>12} {:>12} {:>14}",
        "shard",
        "design",
        "put MB/s",
        "put p50 ms",
        "put×4 MB/s",
        "get MB/s",
        "get p50 ms",
        "after ½ del"
    );
    for size in SIZES_BYTES {
        let count = ((mib << 20) / u64::from(size)).max(8) as usize;
        let shards: Vec<(ShardId, Vec<u8>)> =
            (0..count).map(|i| make_shard(i as u32, size)).collect();
        let total = shards.iter().map(|(_, b)| b.len() as u64).sum::<u64>();

        let ceiling = run_ceiling(&base, &shards);
        let files = run_files(&base, &shards);
        let blob = run_blobdb(&base, &shards);
        let direct = run_direct(&base, &shards);
        for (name, r) in [
            ("fsync", &ceiling),
            ("files", &files),
            ("direct", &direct),
            ("blobdb", &blob),
        ] {
            println!(
                "{:>8} {:<10} {:>12.0} {:>12.2} {:>12.0} {:>12.0} {:>12.2} {:>14}",
                format!("{}K", size / 1024),
                name,
                mbps(total, r.put),
                ms(r.put_p50),
                mbps(total, r.put_parallel),
                r.get.map_or(f64::NAN, |g| mbps(total, g)),
                r.get_p50.map_or(f64::NAN, ms),
                r.space_after_half_delete.map_or("-".into(), |b| format!(
                    "{:.0}% of ½",
                    100.0 * b as f64 / (total / 2) as f64
                )),
            );
        }
    }
}

struct Figures {
    put: Duration,
    put_p50: Duration,
    put_parallel: Duration,
    get: Option<Duration>,
    get_p50: Option<Duration>,
    /// Bytes on disk after deleting every other shard (and compacting, for
    /// BlobDB), to compare with half the data.
    space_after_half_delete: Option<u64>,
}

fn make_shard(n: u32, payload_len: u32) -> (ShardId, Vec<u8>) {
    let mut payload = vec![0u8; payload_len as usize];
    blake3::Hasher::new()
        .update(&n.to_le_bytes())
        .finalize_xof()
        .fill(&mut payload);
    let mut object_key = [0u8; 32];
    object_key.copy_from_slice(blake3::hash(&n.to_le_bytes()).as_bytes());
    let header = ShardHeader {
        code: Code::ReedSolomonGf8,
        data_shards: 1,
        parity_shards: 1,
        shard_index: 0,
        segment_index: n,
        object_key,
        segment_data_len: payload_len,
        payload_len,
        payload_blake3: *blake3::hash(&payload).as_bytes(),
    };
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend_from_slice(&payload);
    (ShardId::of(&header), bytes)
}

fn run_ceiling(base: &str, shards: &[(ShardId, Vec<u8>)]) -> Figures {
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let write = |i: usize, bytes: &[u8], tag: &str| {
        let mut f = std::fs::File::create(dir.path().join(format!("{tag}{i}"))).expect("create");
        f.write_all(bytes).expect("write");
        f.sync_data().expect("sync");
    };
    let (put, put_p50) = timed(shards, |i, (_, b)| write(i, b, "a"));
    let put_parallel = parallel(shards, |i, (_, b)| write(i, b, "b"));
    Figures {
        put,
        put_p50,
        put_parallel,
        get: None,
        get_p50: None,
        space_after_half_delete: None,
    }
}

fn run_files(base: &str, shards: &[(ShardId, Vec<u8>)]) -> Figures {
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let (put_parallel, store) = {
        // The parallel run gets a store of its own, so both runs write new
        // shards.
        let store = Arc::new(ShardStore::open(&dir.path().join("p"), None).expect("open"));
        let t = parallel(shards, |_, (id, b)| {
            store.put(id, b, &payload_hash(b), false).expect("put");
        });
        drop(store);
        let store = ShardStore::open(&dir.path().join("s"), None).expect("open");
        (t, store)
    };
    let (put, put_p50) = timed(shards, |_, (id, b)| {
        store.put(id, b, &payload_hash(b), false).expect("put");
    });
    let (get, get_p50) = timed(shards, |_, (id, b)| {
        let got = store.get(id).expect("get");
        assert_eq!(got.bytes.len(), b.len());
    });
    for (id, _) in shards.iter().step_by(2) {
        store.delete(id).expect("delete");
    }
    let space = dir_bytes(&dir.path().join("s").join("shards"));
    Figures {
        put,
        put_p50,
        put_parallel,
        get: Some(get),
        get_p50: Some(get_p50),
        space_after_half_delete: Some(space),
    }
}

/// The files design without the temp file: create the file under its
/// final (generation-unique) name, fsync it, fsync its directory, then the
/// synced index write. On ext4 the file's fsync also commits the creation
/// of its name, so the directory fsync finds nothing left to commit.
fn run_direct(base: &str, shards: &[(ShardId, Vec<u8>)]) -> Figures {
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    let put_one = |db: &DB, root: &Path, id: &ShardId, b: &[u8]| {
        Shard::verify(b).expect("valid");
        let sub = root.join(format!("{:02x}", id.object_key[0]));
        if !sub.is_dir() {
            std::fs::create_dir_all(&sub).expect("mkdir");
            std::fs::File::open(root)
                .and_then(|d| d.sync_all())
                .expect("fsync root");
        }
        let path = sub.join(hex(&key(id)));
        let mut f = std::fs::File::create_new(&path).expect("create");
        f.write_all(b).expect("write");
        f.sync_data().expect("fsync");
        std::fs::File::open(&sub)
            .and_then(|d| d.sync_all())
            .expect("fsync dir");
        db.put_opt(key(id), [0u8; 90], &sync).expect("index");
    };
    let open = |name: &str| {
        let root = dir.path().join(name);
        std::fs::create_dir_all(root.join("files")).expect("mkdir");
        let mut opts = Options::default();
        opts.create_if_missing(true);
        (
            DB::open(&opts, root.join("index")).expect("open"),
            root.join("files"),
        )
    };
    let put_parallel = {
        let (db, root) = open("p");
        parallel(shards, |_, (id, b)| put_one(&db, &root, id, b))
    };
    let (db, root) = open("s");
    let (put, put_p50) = timed(shards, |_, (id, b)| put_one(&db, &root, id, b));
    Figures {
        put,
        put_p50,
        put_parallel,
        get: None,
        get_p50: None,
        space_after_half_delete: None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn open_blobdb(path: &Path) -> DB {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_max_background_jobs(2);
    opts.set_enable_blob_files(true);
    // Every shard goes to a blob file; keys and small values stay in SSTs.
    opts.set_min_blob_size(4096);
    opts.set_blob_file_size(256 << 20);
    opts.set_enable_blob_gc(true);
    opts.set_blob_gc_age_cutoff(0.25);
    opts.set_write_buffer_size(64 << 20);
    DB::open(&opts, path).expect("open blobdb")
}

fn run_blobdb(base: &str, shards: &[(ShardId, Vec<u8>)]) -> Figures {
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    let put_one = |db: &DB, id: &ShardId, b: &[u8]| {
        Shard::verify(b).expect("valid");
        db.put_opt(key(id), b, &sync).expect("put");
    };
    let put_parallel = {
        let db = open_blobdb(&dir.path().join("p"));
        parallel(shards, |_, (id, b)| put_one(&db, id, b))
    };
    let db = open_blobdb(&dir.path().join("s"));
    let (put, put_p50) = timed(shards, |_, (id, b)| put_one(&db, id, b));
    // Reads come from blob files, as they would for all but the newest
    // shards.
    db.flush().expect("flush");
    let (get, get_p50) = timed(shards, |_, (id, b)| {
        let v = db.get_pinned(key(id)).expect("get").expect("present");
        Shard::verify(&v).expect("valid");
        let owned = v.to_vec();
        assert_eq!(owned.len(), b.len());
    });
    for (id, _) in shards.iter().step_by(2) {
        db.delete_opt(key(id), &sync).expect("delete");
    }
    db.flush().expect("flush");
    db.compact_range(None::<&[u8]>, None::<&[u8]>);
    drop(db);
    let space = dir_bytes(&dir.path().join("s"));
    Figures {
        put,
        put_p50,
        put_parallel,
        get: Some(get),
        get_p50: Some(get_p50),
        space_after_half_delete: Some(space),
    }
}

fn key(id: &ShardId) -> Vec<u8> {
    let mut k = id.object_key.to_vec();
    k.extend_from_slice(&id.segment.to_be_bytes());
    k.push(id.index);
    k
}

fn payload_hash(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(&bytes[SHARD_HEADER_BYTES..]).as_bytes()
}

/// Runs `f` over every shard in order; total time and median latency.
fn timed(
    shards: &[(ShardId, Vec<u8>)],
    mut f: impl FnMut(usize, &(ShardId, Vec<u8>)),
) -> (Duration, Duration) {
    let mut lat = Vec::with_capacity(shards.len());
    let start = Instant::now();
    for (i, s) in shards.iter().enumerate() {
        let t = Instant::now();
        f(i, s);
        lat.push(t.elapsed());
    }
    let total = start.elapsed();
    lat.sort();
    (total, lat[lat.len() / 2])
}

/// Runs `f` over every shard with [`THREADS`] threads; total time.
fn parallel(
    shards: &[(ShardId, Vec<u8>)],
    f: impl Fn(usize, &(ShardId, Vec<u8>)) + Sync,
) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let f = &f;
            s.spawn(move || {
                for (i, shard) in shards.iter().enumerate().skip(t).step_by(THREADS) {
                    f(i, shard);
                }
            });
        }
    });
    start.elapsed()
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("entry");
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

//! Metadata cluster benchmark: committed manifest puts per second and
//! p50/p99 commit latency on a 3-voter loopback cluster of real
//! `kura meta run` processes, at several client concurrencies and after
//! several index sizes; and in the same run the ceiling — the same manifest
//! bytes written straight to one local RocksDB with synced writes, at the
//! same concurrency. Prints Kura ÷ ceiling.
//!
//! ```text
//! cargo build --release -p kura -p kura-bench
//! target/release/meta --kura target/release/kura [--clients 1,16,64]
//!     [--seconds 5] [--preload 0,100000,1000000] [--rounds 1] [--data DIR]
//!     [--json]
//! ```
//!
//! `--rounds N` measures every level N times over (noise shows as the
//! spread between rounds); `--data` puts the voters' directories on
//! another disk (about 1.1 KB per manifest per voter).

use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kura_erasure::EcParams;
use kura_placement::{
    MANIFEST_FORMAT_VERSION, Manifest, Protection, SegmentManifest, ShardLocation,
};
use kura_proto::meta::{AdminRequest, AdminResponse, Applied, Command, Voter};
use kura_proto::meta_client::{MetaClient, Retry};
use kura_testkit::certs::CertDir;

struct Args {
    kura: PathBuf,
    clients: Vec<usize>,
    seconds: u64,
    preload: Vec<u64>,
    rounds: u32,
    data: PathBuf,
    json: bool,
}

fn parse_list<T: std::str::FromStr>(s: &str) -> Result<Vec<T>, String> {
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<T>()
                .map_err(|_| format!("bad number {p:?}"))
        })
        .collect()
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        kura: PathBuf::from("target/release/kura"),
        clients: vec![1, 16, 64],
        seconds: 5,
        preload: vec![0],
        rounds: 1,
        data: std::env::temp_dir(),
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--kura" => a.kura = PathBuf::from(value()?),
            "--clients" => a.clients = parse_list(&value()?)?,
            "--seconds" => a.seconds = value()?.parse().map_err(|_| "bad --seconds")?,
            "--preload" => a.preload = parse_list(&value()?)?,
            "--data" => a.data = PathBuf::from(value()?),
            "--rounds" => a.rounds = value()?.parse().map_err(|_| "bad --rounds")?,
            "--json" => a.json = true,
            "-h" | "--help" => {
                println!(
                    "meta --kura PATH [--clients 1,16,64] [--seconds 5] [--preload 0,100000] [--rounds 1] [--data DIR] [--json]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// When the first manifest of a run was stored; manifest n a millisecond
/// per n later.
const STORED_FROM_UNIX_MS: i64 = 1_764_000_000_000;

/// A realistic manifest: a 0.5 MB CT slice, one 4 MiB segment, RS(5,4).
fn manifest(n: u64) -> Manifest {
    let ec = EcParams::default();
    let plain_size = 524_288u64 + (n % 4096);
    let size = kura_seal::sealed_len(plain_size);
    let data_len = size as u32;
    let shard_len = ec.shard_len(data_len);
    // Hashes are as incompressible as real ones: blake3 of the numbers.
    let hash = |n: u64, i: u8| -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&n.to_le_bytes());
        h.update(&[i]);
        *h.finalize().as_bytes()
    };
    let blake = hash(n, 0xff);
    Manifest {
        format_version: MANIFEST_FORMAT_VERSION,
        tenant: "bench".into(),
        sop_instance_uid: format!("1.2.826.0.1.3680043.10.1.{}", n + 1),
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
        study_instance_uid: format!("1.2.826.0.1.3680043.10.2.{}", n / 200 + 1),
        series_instance_uid: format!("1.2.826.0.1.3680043.10.3.{}", n / 50 + 1),
        transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
        modality: "CT".into(),
        study_date: "20261125".into(),
        size,
        fingerprint: blake,
        // As large as real wrapped secrets with a 10-byte Patient ID.
        sealing: kura_placement::Sealing {
            scheme: kura_seal::SCHEME,
            key_version: 1,
            salt: hash(n, 0xfe),
            wrapped: hash(n, 0xfd).repeat(3)[..90].to_vec(),
            plain_size,
        },
        object_key: blake,
        ec,
        segments: vec![SegmentManifest {
            index: 0,
            data_len,
            shards: (0..9u8)
                .map(|i| ShardLocation {
                    index: i,
                    node: Some(u64::from(i) + 1),
                    blake3: hash(n, i),
                    len: shard_len,
                })
                .collect(),
        }],
        protection: Protection::Full,
        version: 0,
        // Stored one after another, as a real archive fills: the holder
        // and attention indexes put new entries at the head of each
        // node's range (newest first), not at random places.
        stored_at_unix_ms: STORED_FROM_UNIX_MS + n as i64,
        updated_at_unix_ms: STORED_FROM_UNIX_MS + n as i64,
        retain_until_unix_ms: None,
    }
}

struct Cluster {
    children: Vec<Child>,
    addrs: Vec<String>,
    /// TLS as a gateway would call the voters (node 100's certificate).
    transport: kura_auth::Transport,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Waits until the voters are idle (under 5% of a core each over two
    /// seconds): after a bulk preload RocksDB compacts for a while, and
    /// measuring during that burst would charge it to the index size.
    /// Answers the seconds waited (at most `max`).
    async fn quiesce(&self, max: Duration) -> f64 {
        let start = Instant::now();
        let pids: Vec<u32> = self.children.iter().map(|c| c.id()).collect();
        while start.elapsed() < max {
            let before: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let busy = pids
                .iter()
                .zip(&before)
                .any(|(p, b)| (cpu_seconds(*p) - b) / 2.0 > 0.05);
            if !busy {
                break;
            }
        }
        start.elapsed().as_secs_f64()
    }

    /// Each voter's data directory size (log, state machine, snapshots).
    fn voter_bytes(&self) -> Vec<u64> {
        (1..=self.addrs.len())
            .map(|id| disk_bytes(&self.dir.path().join(format!("meta-{id}"))))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Bytes under `path`, each file once however many hard links it has (a
/// snapshot checkpoint links the database's table files).
fn disk_bytes(path: &Path) -> u64 {
    fn walk(path: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let Ok(entries) = std::fs::read_dir(path) else {
            return 0;
        };
        let mut total = 0;
        for e in entries.flatten() {
            // A file vanishing mid-walk counts 0.
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                total += walk(&e.path(), seen);
            } else if seen.insert((m.dev(), m.ino())) {
                total += m.len();
            }
        }
        total
    }
    walk(path, &mut std::collections::HashSet::new())
}

/// CPU seconds a process used so far (Linux /proc; 0 if unreadable).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are
    // the 14th and 15th fields of the line.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn free_port() -> Result<u16, String> {
    kura_testkit::free_port().map_err(|e| e.to_string())
}

/// The voters run TLS as in a real cluster: certificates made with `kura
/// certs` (voters 1-3 with role meta, node 100 as the bench's gateway).
async fn start_cluster(kura: &Path, data: &Path) -> Result<Cluster, String> {
    let dir = tempfile::tempdir_in(data).map_err(|e| format!("{}: {e}", data.display()))?;
    let certs = CertDir::init(kura, &dir.path().join("certs"))?;
    for id in 1..=3u64 {
        certs.node_with(id, "meta", &["127.0.0.1"])?;
    }
    certs.node_with(100, "gateway", &["127.0.0.1"])?;
    let transport = certs.node_transport(100)?;
    let mut children = Vec::new();
    let mut addrs = Vec::new();
    for id in 1..=3u64 {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let log = std::fs::File::create(dir.path().join(format!("meta-{id}.log")))
            .map_err(|e| e.to_string())?;
        let child = Process::new(kura)
            .args([
                "meta",
                "run",
                "--id",
                &id.to_string(),
                "--listen",
                &addr,
                // Preload entries carry 500 manifests each: keeping
                // openraft's default 10,000 behind a snapshot would hold
                // 3 GB of log per voter.
                "--log-kept",
                "200",
                "--certs",
                &certs.dir.display().to_string(),
                "--data",
            ])
            .arg(dir.path().join(format!("meta-{id}")))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", kura.display()))?;
        children.push(child);
        addrs.push(addr);
    }
    let cluster = Cluster {
        children,
        addrs,
        transport,
        dir,
    };
    let client = MetaClient::new(cluster.addrs.clone(), cluster.transport.clone());
    let voters: Vec<Voter> = cluster
        .addrs
        .iter()
        .enumerate()
        .map(|(i, a)| Voter {
            id: i as u64 + 1,
            addr: a.clone(),
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client
            .admin_at(
                &cluster.addrs[0],
                &AdminRequest::Bootstrap {
                    voters: voters.clone(),
                },
            )
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("bootstrap: {e}")),
        }
    }
    loop {
        if let Ok(AdminResponse::Status(s)) = client
            .admin_at(&cluster.addrs[0], &AdminRequest::Status)
            .await
            && s.current_leader.is_some()
        {
            break;
        }
        if Instant::now() > deadline {
            return Err("no leader within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(cluster)
}

struct Figures {
    ops: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Figures {
    fn per_second(&self) -> f64 {
        self.ops as f64 / self.seconds
    }
}

fn percentiles(mut lat: Vec<Duration>, ops: u64, seconds: f64) -> Figures {
    lat.sort();
    let at = |q: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 - 1.0) * q).round() as usize;
        lat[i].as_secs_f64() * 1e3
    };
    Figures {
        ops,
        seconds,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    }
}

/// Puts new manifests from `clients` tasks for `seconds`.
async fn run_puts(
    client: &MetaClient,
    next: &Arc<AtomicU64>,
    clients: usize,
    seconds: u64,
) -> Result<Figures, String> {
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let client = client.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < end {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let cmd = Command::PutManifest(manifest(n));
                let t = Instant::now();
                match client.propose(&cmd, Retry::Idempotent).await {
                    Ok(Ok(Applied::ManifestCreated { .. } | Applied::ManifestIdentical { .. })) => {
                        lat.push(t.elapsed())
                    }
                    other => return Err(format!("put {n}: {other:?}")),
                }
            }
            Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    let secs = start.elapsed().as_secs_f64();
    let ops = all.len() as u64;
    Ok(percentiles(all, ops, secs))
}

/// ~600 KB per log entry: big entries must still replicate within one
/// heartbeat interval (openraft's AppendEntries deadline).
const PRELOAD_BATCH: u64 = 500;

/// Brings the index up to `target` manifests through the bulk-import
/// command (batches of [`PRELOAD_BATCH`], a few in flight): the puts go
/// through Raft and the state machine like any other, only packed, so 10
/// million fit in minutes instead of hours.
async fn preload(client: &MetaClient, next: &Arc<AtomicU64>, target: u64) -> Result<(), String> {
    let started = Instant::now();
    let reported = Arc::new(AtomicU64::new(next.load(Ordering::Relaxed)));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let client = client.clone();
        let next = next.clone();
        let reported = reported.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(PRELOAD_BATCH, Ordering::Relaxed);
                if first >= target {
                    return Ok::<(), String>(());
                }
                let last = (first + PRELOAD_BATCH).min(target);
                let batch: Vec<_> = (first..last).map(manifest).collect();
                match client
                    .propose(&Command::PutManifests(batch), Retry::Idempotent)
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?
                {
                    Applied::ManifestsImported { conflicts, .. } if conflicts.is_empty() => {}
                    other => return Err(format!("bulk import answered {other:?}")),
                }
                let done = reported.fetch_add(last - first, Ordering::Relaxed) + (last - first);
                if done / 500_000 != (done - (last - first)) / 500_000 {
                    eprintln!(
                        "  preloaded {done} manifests ({:.0} s)",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    // The tasks claimed batches past the target before stopping.
    next.store(target, Ordering::Relaxed);
    Ok(())
}

/// The ceiling: the same encoded manifests put straight into one RocksDB
/// with synced writes, from `clients` threads, for `seconds`.
fn ceiling(dir: &Path, clients: usize, seconds: u64) -> Result<Figures, String> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    let db = Arc::new(rocksdb::DB::open(&opts, dir).map_err(|e| e.to_string())?);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut threads = Vec::new();
    for _ in 0..clients {
        let db = db.clone();
        let next = next.clone();
        threads.push(std::thread::spawn(
            move || -> Result<Vec<Duration>, String> {
                let mut w = rocksdb::WriteOptions::default();
                w.set_sync(true);
                let mut lat = Vec::new();
                while Instant::now() < end {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let m = manifest(n);
                    let value = kura_proto::codec::encode(&m).map_err(|e| e.to_string())?;
                    let t = Instant::now();
                    db.put_opt(m.sop_instance_uid.as_bytes(), value, &w)
                        .map_err(|e| e.to_string())?;
                    lat.push(t.elapsed());
                }
                Ok(lat)
            },
        ));
    }
    let mut all = Vec::new();
    for t in threads {
        all.extend(
            t.join()
                .map_err(|_| "ceiling thread panicked".to_string())??,
        );
    }
    let secs = start.elapsed().as_secs_f64();
    let ops = all.len() as u64;
    Ok(percentiles(all, ops, secs))
}

#[tokio::main]
async fn main() {
    if let Err(e) = real_main().await {
        eprintln!("meta bench: {e}");
        std::process::exit(1);
    }
}

async fn real_main() -> Result<(), String> {
    let args = parse_args()?;
    let sample = kura_proto::codec::encode(&manifest(0)).map_err(|e| e.to_string())?;
    eprintln!(
        "manifest: {} bytes encoded; starting a 3-voter cluster of {}",
        sample.len(),
        args.kura.display()
    );
    let cluster = start_cluster(&args.kura, &args.data).await?;
    let client = MetaClient::new(cluster.addrs.clone(), cluster.transport.clone());
    let next = Arc::new(AtomicU64::new(0));
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    let mut preload_levels = args.preload.clone();
    preload_levels.sort_unstable();
    for level in preload_levels {
        if next.load(Ordering::Relaxed) < level {
            eprintln!("preloading to {level} manifests …");
            preload(&client, &next, level).await?;
            let waited = cluster.quiesce(Duration::from_secs(300)).await;
            eprintln!("voters idle after {waited:.0} s of compaction");
        }
        let stored = next.load(Ordering::Relaxed);
        let disk = cluster.voter_bytes();
        let per_voter = disk.iter().sum::<u64>() / disk.len().max(1) as u64;
        eprintln!(
            "index {stored}: {:.2} GB on disk per voter ({} bytes per manifest)",
            per_voter as f64 / 1e9,
            per_voter.checked_div(stored).unwrap_or(0)
        );
        for (round, &c) in
            (0..args.rounds).flat_map(|r| args.clients.iter().map(move |c| (r + 1, c)))
        {
            let kura = run_puts(&client, &next, c, args.seconds).await?;
            let ceil_dir = scratch.path().join(format!("ceiling-{level}-{c}"));
            let ceil = ceiling(&ceil_dir, c, args.seconds)?;
            if !args.json {
                println!(
                    "round {round}  index {:>9}  clients {:>3}  kura {:>8.0} puts/s  p50 {:>6.2} ms  p99 {:>6.2} ms  | ceiling {:>8.0} puts/s  p50 {:>6.2} ms  p99 {:>6.2} ms  | kura/ceiling {:.2}",
                    stored,
                    c,
                    kura.per_second(),
                    kura.p50_ms,
                    kura.p99_ms,
                    ceil.per_second(),
                    ceil.p50_ms,
                    ceil.p99_ms,
                    kura.per_second() / ceil.per_second()
                );
            }
            rows.push(format!(
                "{{\"round\":{round},\"index\":{stored},\"clients\":{c},\"kura_puts_per_s\":{:.1},\"kura_p50_ms\":{:.3},\"kura_p99_ms\":{:.3},\"ceiling_puts_per_s\":{:.1},\"ceiling_p50_ms\":{:.3},\"ceiling_p99_ms\":{:.3},\"ratio\":{:.3}}}",
                kura.per_second(),
                kura.p50_ms,
                kura.p99_ms,
                ceil.per_second(),
                ceil.p50_ms,
                ceil.p99_ms,
                kura.per_second() / ceil.per_second()
            ));
            let _ = std::fs::remove_dir_all(&ceil_dir);
        }
    }
    if args.json {
        println!("[{}]", rows.join(","));
    }
    drop(cluster);
    Ok(())
}

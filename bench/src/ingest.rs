//! End-to-end ingest benchmark: DICOM instances stored into and retrieved
//! from a real `kura dev` cluster (a child process: 3 sites, 9 storage
//! nodes, RS(5,4), a gateway) through the public `kura.v1.Archive` gRPC
//! API, at several stream concurrencies; and in the same run, on the same
//! filesystem, the ceiling — the same bytes written once to local files
//! with fsync (file and directory) and read back, at the same concurrency.
//! Optionally Orthanc (`bench/orthanc.sh`) as a peer, driven through its
//! REST API with the same instances. Prints Kura ÷ ceiling and
//! Kura ÷ Orthanc.
//!
//! Per cell (workload × streams): Kura ingests new instances for
//! `--seconds` (each stream starts instances until the time is up and
//! finishes the one in flight), or exactly `--count` instances; Kura then
//! retrieves that same set and every byte is checked against the blake3 of
//! what was sent; the ceiling and Orthanc then store and read back exactly
//! the same instances (same bytes, same count, same concurrency). The
//! table also shows the cores `kura dev` kept busy in each Kura phase, and
//! the server's CPU per instance (milliseconds of user + system time) for
//! Kura and for Orthanc's process (its pid from `--orthanc-pid`, or
//! `ORTHANC_PID`, which `bench/orthanc.sh` sets).
//!
//! Kura's figures are taken with TLS and authentication on (a client
//! certificate from the dev cluster's CA), as a deployment runs. The TLS
//! column repeats each Kura phase against a second `kura dev --insecure`
//! (fresh instances, same plan) and prints TLS ÷ plaintext: what security
//! costs. Retrieves run in three rounds, each a pass over the TLS set then
//! one over the plaintext set, and the figures add the rounds up: a pass
//! takes only a couple of seconds, and alternating keeps a noisy neighbour
//! from weighing on one side only.
//!
//! ```text
//! cargo build --release --workspace --bins
//! target/release/ingest [--kura PATH] [--streams 1,8,32] [--seconds 10 | --count N]
//!     [--workloads slice,multiframe] [--orthanc http://127.0.0.1:PORT]
//!     [--orthanc-pid PID] [--dir DIR] [--quick] [--json]
//! bench/orthanc.sh sh -c 'target/release/ingest --orthanc "$ORTHANC_URL"'
//! ```
//!
//! `--quick`: 1 and 4 streams, 2 s per cell (unless given), ~20 s.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kura_auth::{ClientRole, ClientRoles};
use kura_dicom::synthetic::{Synthetic, head, pixels, uid};
use kura_proto::v1::archive_client::ArchiveClient;
use kura_proto::v1::{RetrieveRequest, StoreRequest, retrieve_response};
use kura_testkit::certs::CertDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;

/// Bytes per Store `chunk` message, per HTTP body write, per file write.
const CHUNK: usize = 1024 * 1024;
/// The tenant everything is stored under.
const TENANT: &str = "bench";
/// Distinct pixel payloads per workload; instance n carries payload n % POOL
/// (its header, and so its bytes and blake3, are its own).
const POOL: usize = 4;
/// How long one Store or Retrieve (or one HTTP exchange) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// HTTP/2 windows as `kura store` sets them.
const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
const MESSAGE_BYTES_MAX: usize = 8 * 1024 * 1024;

#[derive(Clone, Copy, Debug)]
struct Workload {
    /// What `--workloads` calls it.
    key: &'static str,
    /// What the table calls it.
    label: &'static str,
    frames: u32,
    pixel_bytes: u32,
}

/// A CT-like slice: one 512×512 frame of 16-bit pixels (0.52 MB).
const SLICE: Workload = Workload {
    key: "slice",
    label: "slice 0.5 MB",
    frames: 1,
    pixel_bytes: 512 * 512 * 2,
};

/// A multi-frame instance: 38 frames of 512×512 16-bit pixels (19.9 MB).
const MULTIFRAME: Workload = Workload {
    key: "multiframe",
    label: "multiframe 20 MB",
    frames: 38,
    pixel_bytes: 38 * 512 * 512 * 2,
};

#[derive(Clone, Copy, Debug)]
enum Plan {
    /// Kura ingests for this long; the others then take the same set.
    For(Duration),
    /// Exactly this many instances per cell.
    Count(u64),
}

struct Args {
    kura: PathBuf,
    streams: Vec<usize>,
    plan: Plan,
    workloads: Vec<Workload>,
    orthanc: Option<String>,
    /// Orthanc's process, for its CPU per instance.
    orthanc_pid: Option<u32>,
    dir: PathBuf,
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

fn default_kura() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("release").join("kura"),
        None => PathBuf::from("target/release/kura"),
    }
}

const USAGE: &str = "ingest [--kura PATH] [--streams 1,8,32] [--seconds 10 | --count N] \
[--workloads slice,multiframe] [--orthanc http://127.0.0.1:PORT] [--orthanc-pid PID] [--dir DIR] \
[--quick] [--json]";

fn parse_args() -> Result<Args, String> {
    let mut kura = default_kura();
    let mut streams = None;
    let mut seconds = None;
    let mut count = None;
    let mut workloads = vec![SLICE, MULTIFRAME];
    let mut orthanc = None;
    let mut orthanc_pid = std::env::var("ORTHANC_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok());
    let mut dir = std::env::temp_dir();
    let mut json = false;
    let mut quick = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--kura" => kura = PathBuf::from(value()?),
            "--streams" => streams = Some(parse_list::<usize>(&value()?)?),
            "--seconds" => seconds = Some(value()?.parse::<u64>().map_err(|_| "bad --seconds")?),
            "--count" => count = Some(value()?.parse::<u64>().map_err(|_| "bad --count")?),
            "--workloads" => {
                workloads = value()?
                    .split(',')
                    .map(|w| match w.trim() {
                        "slice" => Ok(SLICE),
                        "multiframe" => Ok(MULTIFRAME),
                        other => Err(format!("unknown workload {other:?} (slice or multiframe)")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--orthanc" => orthanc = Some(orthanc_authority(&value()?)?),
            "--orthanc-pid" => {
                orthanc_pid = Some(value()?.parse::<u32>().map_err(|_| "bad --orthanc-pid")?)
            }
            "--dir" => dir = PathBuf::from(value()?),
            "--quick" => quick = true,
            "--json" => json = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}\nusage: {USAGE}")),
        }
    }
    let streams = streams.unwrap_or(if quick { vec![1, 4] } else { vec![1, 8, 32] });
    if streams.is_empty() || streams.contains(&0) {
        return Err("--streams needs counts of at least 1".into());
    }
    if workloads.is_empty() {
        return Err("--workloads names none".into());
    }
    let plan = match (seconds, count) {
        (Some(_), Some(_)) => return Err("give --seconds or --count, not both".into()),
        (_, Some(0)) => return Err("--count must be at least 1".into()),
        (_, Some(n)) => Plan::Count(n),
        (Some(0), _) => return Err("--seconds must be at least 1".into()),
        (Some(s), None) => Plan::For(Duration::from_secs(s)),
        (None, None) => Plan::For(Duration::from_secs(if quick { 2 } else { 10 })),
    };
    Ok(Args {
        kura,
        streams,
        plan,
        workloads,
        orthanc,
        orthanc_pid,
        dir,
        json,
    })
}

/// `http://HOST:PORT[/]` or `HOST:PORT` → `HOST:PORT`.
fn orthanc_authority(raw: &str) -> Result<String, String> {
    let rest = match raw.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "--orthanc {raw:?}: {scheme}:// is not supported, only http:// (a loopback Orthanc)"
            ));
        }
        None => raw,
    };
    let authority = rest.trim_end_matches('/');
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(authority.to_owned())
        }
        _ => Err(format!("--orthanc {raw:?} is not http://HOST:PORT")),
    }
}

// ---------------------------------------------------------------------------
// Instances

/// The instances of one cell: UIDs under the run's own root, so nothing is
/// ever "already stored", and a shared pool of pixel payloads.
struct Set {
    workload: Workload,
    prefix: String,
    study: String,
    series: String,
    pool: Arc<Vec<Bytes>>,
}

impl Set {
    fn new(workload: Workload, prefix: String, pool: Arc<Vec<Bytes>>) -> Set {
        Set {
            workload,
            study: uid(&format!("{prefix}.1"), 1),
            series: uid(&format!("{prefix}.2"), 1),
            prefix,
            pool,
        }
    }

    fn sop(&self, n: u64) -> String {
        uid(&format!("{}.3", self.prefix), n + 1)
    }

    /// The header bytes (up to the pixel data) of instance `n`.
    fn head(&self, n: u64) -> Vec<u8> {
        let s = Synthetic {
            study: self.study.clone(),
            series: self.series.clone(),
            sop: self.sop(n),
        };
        head(&s, self.workload.frames, self.workload.pixel_bytes)
    }

    fn pixels(&self, n: u64) -> &Bytes {
        &self.pool[(n % POOL as u64) as usize]
    }

    /// Instance `n` as pieces of at most [`CHUNK`] bytes: the header with
    /// the first pixels, then slices of the shared payload (no copies).
    fn chunks(&self, n: u64) -> Vec<Bytes> {
        let mut first = self.head(n);
        let px = self.pixels(n);
        let take = CHUNK.saturating_sub(first.len()).min(px.len());
        first.extend_from_slice(&px[..take]);
        let mut out = Vec::with_capacity(px.len() / CHUNK + 2);
        out.push(Bytes::from(first));
        let mut at = take;
        while at < px.len() {
            let end = (at + CHUNK).min(px.len());
            out.push(px.slice(at..end));
            at = end;
        }
        out
    }

    fn blake3(&self, n: u64) -> (blake3::Hash, u64) {
        let head = self.head(n);
        let px = self.pixels(n);
        let mut h = blake3::Hasher::new();
        h.update(&head);
        h.update(px);
        (h.finalize(), (head.len() + px.len()) as u64)
    }
}

fn pixel_pool(w: Workload) -> Arc<Vec<Bytes>> {
    Arc::new(
        (0..POOL)
            .map(|i| {
                let mut buf = vec![0u8; w.pixel_bytes as usize];
                pixels(0x6b75_7261 + i as u64, 0, &mut buf);
                Bytes::from(buf)
            })
            .collect(),
    )
}

/// What was sent: blake3 and size of instance n at index n.
type Sent = Arc<Vec<(blake3::Hash, u64)>>;

/// Hands out instance numbers to the workers of one phase.
struct Dispenser {
    next: AtomicU64,
    /// Set when a worker failed: the others stop too.
    stopped: AtomicBool,
    limit: Option<u64>,
    end: Option<Instant>,
}

impl Dispenser {
    fn new(plan: Plan) -> Dispenser {
        let (limit, end) = match plan {
            Plan::For(d) => (None, Some(Instant::now() + d)),
            Plan::Count(n) => (Some(n), None),
        };
        Dispenser {
            next: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            limit,
            end,
        }
    }

    fn take(&self) -> Option<u64> {
        if self.stopped.load(Ordering::Relaxed) || self.end.is_some_and(|end| Instant::now() >= end)
        {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        match self.limit {
            Some(limit) if n >= limit => None,
            _ => Some(n),
        }
    }

    /// Passes `r` through; an error stops every worker of the phase.
    fn watch<T>(&self, r: Result<T, String>) -> Result<T, String> {
        if r.is_err() {
            self.stopped.store(true, Ordering::Relaxed);
        }
        r
    }
}

// ---------------------------------------------------------------------------
// Figures

struct Figures {
    ops: u64,
    bytes: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Cores the server kept busy during the phase (CPU seconds ÷ wall):
    /// `kura dev` in Kura's phases, Orthanc's process in Orthanc's.
    kura_cores: Option<f64>,
    /// Cores this benchmark process kept busy during the phase.
    client_cores: Option<f64>,
}

/// CPU time (user + system, all threads) process `pid` has used so far,
/// from `/proc/PID/stat`; None where that cannot be read.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) in clock ticks, USER_HZ = 100.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// CPU seconds of `kura dev` and of this process at one moment.
#[derive(Clone, Copy)]
struct Cpu {
    kura: Option<f64>,
    client: Option<f64>,
}

impl Cpu {
    fn now(kura_pid: u32) -> Cpu {
        Cpu::of(Some(kura_pid))
    }

    /// The server process `pid` (if known) and this one.
    fn of(pid: Option<u32>) -> Cpu {
        Cpu {
            kura: pid.and_then(|p| cpu_seconds(&p.to_string())),
            client: cpu_seconds("self"),
        }
    }
}

impl Figures {
    fn new(mut lat: Vec<Duration>, bytes: u64, seconds: f64) -> Figures {
        lat.sort();
        let at = |q: f64| -> f64 {
            if lat.is_empty() {
                return f64::NAN;
            }
            let i = ((lat.len() as f64 - 1.0) * q).round() as usize;
            lat[i].as_secs_f64() * 1e3
        };
        Figures {
            ops: lat.len() as u64,
            bytes,
            seconds,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            kura_cores: None,
            client_cores: None,
        }
    }

    /// Records the cores used between two CPU readings around the phase.
    fn with_cpu(mut self, before: Cpu, after: Cpu) -> Figures {
        let cores = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / self.seconds);
        self.kura_cores = cores(before.kura, after.kura);
        self.client_cores = cores(before.client, after.client);
        self
    }

    fn per_second(&self) -> f64 {
        self.ops as f64 / self.seconds
    }

    /// Milliseconds of server CPU per instance.
    fn cpu_ms_per_instance(&self) -> Option<f64> {
        self.kura_cores
            .map(|c| c * self.seconds * 1e3 / self.ops.max(1) as f64)
    }

    /// 10^6 bytes per second.
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e6
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "instances": self.ops,
            "bytes": self.bytes,
            "seconds": round3(self.seconds),
            "inst_per_s": round3(self.per_second()),
            "mb_per_s": round3(self.mb_per_s()),
            "p50_ms": round3(self.p50_ms),
            "p99_ms": round3(self.p99_ms),
            "server_cores": self.kura_cores.map(round3),
            "server_cpu_ms_per_instance": self.cpu_ms_per_instance().map(round3),
            "client_cores": self.client_cores.map(round3),
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Joins the workers of an async phase: everything they did, or the first
/// error.
async fn join_all<T>(
    tasks: Vec<tokio::task::JoinHandle<Result<Vec<T>, String>>>,
) -> Result<Vec<T>, String> {
    let mut all = Vec::new();
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(done)) => all.extend(done),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(format!("a worker failed: {e}"));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(all),
    }
}

// ---------------------------------------------------------------------------
// kura dev as a child process

struct KuraDev {
    child: Child,
    gateway: String,
    /// TLS with a client certificate (tenant [`TENANT`], reader+writer)
    /// from the dev cluster's CA.
    transport: kura_auth::Transport,
    /// Its ops (HTTP) address: /metrics.
    ops: Option<String>,
    log: PathBuf,
}

/// The audit trail's batching as `kura dev` counted it: (records
/// committed, Raft commits that carried them), from its /metrics.
fn audit_batching(ops: &str) -> Option<(f64, f64)> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(ops).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {ops}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let value = |name: &str| {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    Some((
        value("kura_audit_batch_records_sum"),
        value("kura_audit_batch_records_count"),
    ))
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl KuraDev {
    /// `kura dev` with TLS and authentication, as it runs by default, or
    /// with `--insecure` (the plaintext baseline of the TLS column).
    fn start(kura: &Path, data: &Path, log: &Path, insecure: bool) -> Result<KuraDev, String> {
        let log_file = File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let mut child = Process::new(kura)
            .args(kura_testkit::KURA_DEV_ON_FREE_PORTS)
            .args(["--json", "--data"])
            .arg(data)
            .args(insecure.then_some("--insecure"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("start {}: {e}", kura.display()))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("kura dev: no stdout".into());
        };
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let read = reader.read_line(&mut line);
        let parsed: Result<(String, kura_auth::Transport, Option<String>), String> = match read {
            Ok(0) => Err("kura dev exited before printing its addresses".into()),
            Err(e) => Err(format!("reading kura dev's output: {e}")),
            Ok(_) => serde_json::from_str::<serde_json::Value>(&line)
                .map_err(|e| format!("kura dev printed {line:?}: {e}"))
                .and_then(|v| {
                    let gateway = v["gateway"]
                        .as_str()
                        .map(str::to_owned)
                        .ok_or(format!("kura dev printed no gateway: {line:?}"))?;
                    let transport = match v["certs"].as_str() {
                        Some(dir) => CertDir::open(kura, Path::new(dir)).client_transport(
                            TENANT,
                            ClientRoles::of(&[ClientRole::Reader, ClientRole::Writer]),
                        )?,
                        None => kura_auth::Transport::Plaintext,
                    };
                    Ok((gateway, transport, v["ops"].as_str().map(str::to_owned)))
                }),
        };
        match parsed {
            Ok((gateway, transport, ops)) => {
                // Keep draining its stdout so it never writes into a closed pipe.
                std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
                Ok(KuraDev {
                    child,
                    gateway,
                    transport,
                    ops,
                    log: log.to_owned(),
                })
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("{e}\n--- kura dev log ---\n{}", log_tail(log)))
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ctrl-C (SIGINT), then waits up to 60 s for a clean exit.
    fn stop(mut self) -> Result<(), String> {
        let pid = self.child.id().to_string();
        let sent = Process::new("kill")
            .args(["-INT", &pid])
            .status()
            .map_err(|e| format!("kill -INT {pid}: {e}"))?;
        if !sent.success() {
            return Err(format!("kill -INT {pid} failed: {sent}"));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(format!(
                        "kura dev exited with {status}\n--- kura dev log ---\n{}",
                        log_tail(&self.log)
                    ));
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(None) => return Err("kura dev did not stop within 60 s of SIGINT".into()),
                Err(e) => return Err(format!("waiting for kura dev: {e}")),
            }
        }
    }
}

impl Drop for KuraDev {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Kura over gRPC

/// One client (its own connection) per stream, as that many PACS workers
/// or modalities would each hold: with one shared connection every byte
/// of every stream would pass one HTTP/2 connection's task, and with TLS
/// its encryption would run on one core.
async fn connect_each(
    gateway: &str,
    transport: &kura_auth::Transport,
    streams: usize,
) -> Result<Vec<ArchiveClient<Channel>>, String> {
    let mut clients = Vec::with_capacity(streams.max(1));
    for _ in 0..streams.max(1) {
        clients.push(connect(gateway, transport).await?);
    }
    Ok(clients)
}

async fn connect(
    gateway: &str,
    transport: &kura_auth::Transport,
) -> Result<ArchiveClient<Channel>, String> {
    let channel = transport
        .endpoint(gateway)
        .map_err(|e| format!("gateway address {gateway:?}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .connect()
        .await
        .map_err(|e| format!("connect to the gateway at {gateway}: {e}"))?;
    Ok(ArchiveClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX))
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Stores instance `n`; answers the blake3 the gateway recorded.
async fn kura_store(
    client: &mut ArchiveClient<Channel>,
    set: &Set,
    n: u64,
) -> Result<String, tonic::Status> {
    let chunks = set.chunks(n);
    let size: usize = chunks.iter().map(Bytes::len).sum();
    let mut msgs = Vec::with_capacity(chunks.len() + 1);
    msgs.push(StoreRequest::header(TENANT, Some(size as u64)));
    msgs.extend(chunks.into_iter().map(StoreRequest::chunk));
    let mut request = tonic::Request::new(tokio_stream::iter(msgs));
    request.set_timeout(CALL_TIMEOUT);
    let answer = client.store(request).await?.into_inner();
    if answer.already_stored {
        return Err(tonic::Status::already_exists(format!(
            "{} was already stored: the run's UIDs should be new",
            set.sop(n)
        )));
    }
    answer
        .info
        .map(|i| i.blake3)
        .ok_or_else(|| tonic::Status::internal("Store answered without info"))
}

/// Retrieves instance `n` and checks its size and blake3 against what was
/// sent.
async fn kura_retrieve(
    client: &mut ArchiveClient<Channel>,
    set: &Set,
    n: u64,
    sent: &(blake3::Hash, u64),
) -> Result<(), String> {
    let sop = set.sop(n);
    let mut request = tonic::Request::new(RetrieveRequest {
        tenant: TENANT.into(),
        sop_instance_uid: sop.clone(),
    });
    request.set_timeout(CALL_TIMEOUT);
    let mut stream = client
        .retrieve(request)
        .await
        .map_err(|s| format!("retrieve {sop}: {}", status_text(&s)))?
        .into_inner();
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    while let Some(m) = stream
        .message()
        .await
        .map_err(|s| format!("retrieve {sop}: {}", status_text(&s)))?
    {
        if let Some(retrieve_response::Msg::Chunk(c)) = m.msg {
            hasher.update(&c);
            len += c.len() as u64;
        }
    }
    check(&sop, "kura", hasher.finalize(), len, sent)
}

fn check(
    sop: &str,
    who: &str,
    got: blake3::Hash,
    len: u64,
    sent: &(blake3::Hash, u64),
) -> Result<(), String> {
    if len != sent.1 || got != sent.0 {
        return Err(format!(
            "{who} returned {len} bytes with blake3 {} for {sop}; sent {} bytes with blake3 {}",
            got.to_hex(),
            sent.1,
            sent.0.to_hex()
        ));
    }
    Ok(())
}

/// Stores a few instances, retrying while the fresh cluster says
/// UNAVAILABLE, so the measured cells start on a warm gateway.
async fn kura_warm_up(client: &ArchiveClient<Channel>, set: &Set) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0..4 {
        loop {
            match kura_store(&mut client.clone(), set, n).await {
                Ok(_) => break,
                Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(s) => return Err(format!("warm-up store: {}", status_text(&s))),
            }
        }
    }
    Ok(())
}

/// Kura's ingest phase: returns the figures and, per instance number, the
/// blake3 the gateway recorded.
async fn kura_ingest_phase(
    clients: &[ArchiveClient<Channel>],
    set: &Arc<Set>,
    streams: usize,
    plan: Plan,
) -> Result<(Figures, Vec<String>), String> {
    let dispenser = Arc::new(Dispenser::new(plan));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..streams {
        let mut client = clients[i % clients.len()].clone();
        let set = set.clone();
        let dispenser = dispenser.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            while let Some(n) = dispenser.take() {
                let t = Instant::now();
                let hash = dispenser.watch(
                    kura_store(&mut client, &set, n)
                        .await
                        .map_err(|s| format!("store {}: {}", set.sop(n), status_text(&s))),
                )?;
                done.push((n, hash, t.elapsed()));
            }
            Ok::<_, String>(done)
        }));
    }
    let mut all = join_all(tasks).await?;
    let seconds = start.elapsed().as_secs_f64();
    all.sort_by_key(|(n, _, _)| *n);
    if all.iter().enumerate().any(|(i, (n, _, _))| i as u64 != *n) {
        return Err("kura ingest: the stored instances are not numbered 0..N".into());
    }
    let bytes = all
        .iter()
        .map(|(n, _, _)| (set.head(*n).len() + set.pixels(*n).len()) as u64)
        .sum();
    let lat = all.iter().map(|(_, _, l)| *l).collect();
    let hashes = all.into_iter().map(|(_, h, _)| h).collect();
    Ok((Figures::new(lat, bytes, seconds), hashes))
}

/// One pass of Kura's retrieve phase: every instance of `sent` once, from
/// `streams` streams. Answers each retrieve's latency and the wall time.
async fn kura_retrieve_pass(
    clients: &[ArchiveClient<Channel>],
    set: &Arc<Set>,
    sent: &Sent,
    streams: usize,
) -> Result<(Vec<Duration>, f64), String> {
    let count = sent.len() as u64;
    let dispenser = Arc::new(Dispenser::new(Plan::Count(count)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..streams {
        let mut client = clients[i % clients.len()].clone();
        let set = set.clone();
        let sent = sent.clone();
        let dispenser = dispenser.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while let Some(n) = dispenser.take() {
                let t = Instant::now();
                dispenser.watch(kura_retrieve(&mut client, &set, n, &sent[n as usize]).await)?;
                lat.push(t.elapsed());
            }
            Ok(lat)
        }));
    }
    let lat = join_all(tasks).await?;
    Ok((lat, start.elapsed().as_secs_f64()))
}

/// Retrieve passes added up: latencies, bytes, wall time and CPU.
#[derive(Default)]
struct Passes {
    lat: Vec<Duration>,
    bytes: u64,
    seconds: f64,
    kura_cpu: Option<f64>,
    client_cpu: Option<f64>,
}

impl Passes {
    /// Runs one pass against `dev` and adds it.
    async fn run(
        &mut self,
        dev: &KuraDev,
        clients: &[ArchiveClient<Channel>],
        set: &Arc<Set>,
        sent: &Sent,
        streams: usize,
    ) -> Result<(), String> {
        let before = Cpu::now(dev.pid());
        let (lat, seconds) = kura_retrieve_pass(clients, set, sent, streams).await?;
        let after = Cpu::now(dev.pid());
        let used =
            |a: Option<f64>, b: Option<f64>, sum: Option<f64>| Some(sum.unwrap_or(0.0) + (b? - a?));
        self.kura_cpu = used(before.kura, after.kura, self.kura_cpu);
        self.client_cpu = used(before.client, after.client, self.client_cpu);
        self.lat.extend(lat);
        self.bytes += total_bytes(sent);
        self.seconds += seconds;
        Ok(())
    }

    fn figures(self) -> Figures {
        let seconds = self.seconds;
        let mut f = Figures::new(self.lat, self.bytes, seconds);
        f.kura_cores = self.kura_cpu.map(|c| c / seconds);
        f.client_cores = self.client_cpu.map(|c| c / seconds);
        f
    }
}

/// Retrieve passes over the TLS and the plaintext cluster alternate, so
/// that a noisy neighbour slows both alike.
const RETRIEVE_ROUNDS: usize = 3;

fn total_bytes(sent: &Sent) -> u64 {
    sent.iter().map(|(_, len)| len).sum()
}

// ---------------------------------------------------------------------------
// The ceiling: local files with fsync

/// Runs `op` on instances 0..count from `streams` threads: each op's
/// latency and the wall time of the whole, or the first error (which stops
/// the other threads).
fn run_threads(
    streams: usize,
    count: u64,
    op: impl Fn(u64) -> Result<(), String> + Sync,
) -> Result<(Vec<Duration>, f64), String> {
    let dispenser = Dispenser::new(Plan::Count(count));
    let start = Instant::now();
    let results: Vec<Result<Vec<Duration>, String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..streams)
            .map(|_| {
                scope.spawn(|| {
                    let mut lat = Vec::new();
                    while let Some(n) = dispenser.take() {
                        let t = Instant::now();
                        dispenser.watch(op(n))?;
                        lat.push(t.elapsed());
                    }
                    Ok(lat)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err("a ceiling thread panicked".into()))
            })
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    Ok((all, seconds))
}

/// Writes every instance once to its own file in `dir` from `streams`
/// threads: create, write in [`CHUNK`] pieces, `sync_all`, then fsync the
/// directory so the new name is durable too.
fn ceiling_write(dir: &Path, set: &Set, sent: &Sent, streams: usize) -> Result<Figures, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let dir_handle = File::open(dir).map_err(|e| format!("open {}: {e}", dir.display()))?;
    let (lat, seconds) = run_threads(streams, sent.len() as u64, |n| {
        let path = dir.join(format!("{n}.dcm"));
        let io = |e: std::io::Error| format!("write {}: {e}", path.display());
        let mut f = File::create(&path).map_err(io)?;
        for c in set.chunks(n) {
            f.write_all(&c).map_err(io)?;
        }
        f.sync_all().map_err(io)?;
        dir_handle.sync_all().map_err(io)
    })?;
    Ok(Figures::new(lat, total_bytes(sent), seconds))
}

/// Reads every file back and checks its blake3, as
/// a client checks what Kura returns.
fn ceiling_read(dir: &Path, sent: &Sent, streams: usize) -> Result<Figures, String> {
    let (lat, seconds) = run_threads(streams, sent.len() as u64, |n| {
        let path = dir.join(format!("{n}.dcm"));
        let io = |e: std::io::Error| format!("read {}: {e}", path.display());
        let f = File::open(&path).map_err(io)?;
        // 64 KiB reads into a buffer on the stack.
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(f).map_err(io)?;
        let name = path.display().to_string();
        let (hash, len) = (hasher.finalize(), hasher.count());
        check(&name, "the ceiling", hash, len, &sent[n as usize])
    })?;
    Ok(Figures::new(lat, total_bytes(sent), seconds))
}

// ---------------------------------------------------------------------------
// Orthanc over a minimal HTTP/1.1 client (loopback, keep-alive,
// Content-Length or chunked answers)

/// Where an answer's body goes as it arrives.
type Sink<'a> = dyn FnMut(&[u8]) + Send + 'a;

struct Http {
    authority: String,
    conn: Option<tokio::io::BufReader<TcpStream>>,
    /// Where answers' bodies are read into, allocated once.
    buf: Vec<u8>,
}

struct Answer {
    status: u16,
    /// The body, unless it went to a sink.
    body: Vec<u8>,
}

impl Http {
    fn new(authority: &str) -> Http {
        Http {
            authority: authority.to_owned(),
            conn: None,
            buf: vec![0u8; CHUNK],
        }
    }

    /// One request; `sink` gets the body as it arrives (else it is kept in
    /// the answer). A kept-alive connection the server closed meanwhile is
    /// replaced once, before anything of the answer arrived.
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[Bytes],
        mut sink: Option<&mut Sink<'_>>,
    ) -> Result<Answer, String> {
        let what = format!("{method} {path}");
        let fut = async {
            for attempt in 0..2 {
                let reused = self.conn.is_some();
                match self.exchange(method, path, body, &mut sink).await {
                    Ok(answer) => return Ok(answer),
                    Err(Stale(_)) if reused && attempt == 0 => {
                        self.conn = None;
                    }
                    Err(Stale(e)) => return Err(e),
                    Err(Broken(e)) => {
                        self.conn = None;
                        return Err(e);
                    }
                }
            }
            Err("unreachable: two attempts".into())
        };
        match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => {
                self.conn = None;
                Err(format!("{what}: no answer within {CALL_TIMEOUT:?}"))
            }
        }
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: &[Bytes],
        sink: &mut Option<&mut Sink<'_>>,
    ) -> Result<Answer, HttpError> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(&self.authority)
                .await
                .map_err(|e| Broken(format!("connect to {}: {e}", self.authority)))?;
            stream
                .set_nodelay(true)
                .map_err(|e| Broken(format!("set TCP_NODELAY: {e}")))?;
            self.conn = Some(tokio::io::BufReader::with_capacity(256 * 1024, stream));
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(Broken("no connection".into()));
        };
        let len: usize = body.iter().map(Bytes::len).sum();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/dicom\r\nContent-Length: {len}\r\n\r\n",
            self.authority
        );
        let stale = |e: std::io::Error| Stale(format!("send: {e}"));
        conn.get_mut()
            .write_all(head.as_bytes())
            .await
            .map_err(stale)?;
        for piece in body {
            conn.get_mut().write_all(piece).await.map_err(stale)?;
        }
        conn.get_mut().flush().await.map_err(stale)?;

        let mut line = String::new();
        let got = conn
            .read_line(&mut line)
            .await
            .map_err(|e| Stale(format!("read the status line: {e}")))?;
        if got == 0 {
            return Err(Stale("the server closed the connection".into()));
        }
        let broken = |e: std::io::Error| Broken(format!("read the answer: {e}"));
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Broken(format!("bad status line {line:?}")))?;
        let mut content_length = None;
        let mut chunked = false;
        let mut close = false;
        loop {
            line.clear();
            if conn.read_line(&mut line).await.map_err(broken)? == 0 {
                return Err(Broken("the connection closed inside the headers".into()));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                match name.as_str() {
                    "content-length" => {
                        content_length = Some(
                            value
                                .parse::<u64>()
                                .map_err(|_| Broken(format!("bad Content-Length {value:?}")))?,
                        )
                    }
                    "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                    "connection" => close = value.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut kept = Vec::new();
        let mut deliver = |piece: &[u8]| match sink.as_mut() {
            Some(f) => f(piece),
            None => kept.extend_from_slice(piece),
        };
        let buf = &mut self.buf;
        if chunked {
            loop {
                line.clear();
                if conn.read_line(&mut line).await.map_err(broken)? == 0 {
                    return Err(Broken("the connection closed inside a chunked body".into()));
                }
                let size_text = line.trim_end().split(';').next().unwrap_or("").trim();
                let mut left = u64::from_str_radix(size_text, 16)
                    .map_err(|_| Broken(format!("bad chunk size {line:?}")))?;
                if left == 0 {
                    // Trailers, up to the empty line.
                    loop {
                        line.clear();
                        if conn.read_line(&mut line).await.map_err(broken)? == 0
                            || line.trim_end().is_empty()
                        {
                            break;
                        }
                    }
                    break;
                }
                while left > 0 {
                    let want = (left as usize).min(buf.len());
                    let got = conn.read(&mut buf[..want]).await.map_err(broken)?;
                    if got == 0 {
                        return Err(Broken("the connection closed inside a chunk".into()));
                    }
                    deliver(&buf[..got]);
                    left -= got as u64;
                }
                let mut crlf = [0u8; 2];
                conn.read_exact(&mut crlf).await.map_err(broken)?;
            }
        } else if let Some(mut left) = content_length {
            while left > 0 {
                let want = (left as usize).min(buf.len());
                let got = conn.read(&mut buf[..want]).await.map_err(broken)?;
                if got == 0 {
                    return Err(Broken("the connection closed inside the body".into()));
                }
                deliver(&buf[..got]);
                left -= got as u64;
            }
        } else {
            loop {
                let got = conn.read(&mut buf[..]).await.map_err(broken)?;
                if got == 0 {
                    break;
                }
                deliver(&buf[..got]);
            }
            close = true;
        }
        if close {
            self.conn = None;
        }
        Ok(Answer { status, body: kept })
    }
}

enum HttpError {
    /// Failed before any of the answer arrived: a kept-alive connection
    /// the server had closed; worth one retry on a new one.
    Stale(String),
    /// Failed in the middle of the answer.
    Broken(String),
}
use HttpError::{Broken, Stale};

fn body_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.chars().take(300).collect()
}

async fn orthanc_check(authority: &str) -> Result<String, String> {
    let mut http = Http::new(authority);
    let a = http.request("GET", "/system", &[], None).await?;
    if a.status != 200 {
        return Err(format!(
            "GET /system at {authority} answered {}: {}",
            a.status,
            body_text(&a.body)
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&a.body)
        .map_err(|e| format!("GET /system at {authority}: not JSON: {e}"))?;
    Ok(v["Version"].as_str().unwrap_or("?").to_owned())
}

/// POST /instances with instance `n` as the body; answers Orthanc's ID.
async fn orthanc_store(http: &mut Http, set: &Set, n: u64) -> Result<String, String> {
    let a = http
        .request("POST", "/instances", &set.chunks(n), None)
        .await?;
    let sop = set.sop(n);
    if a.status != 200 {
        return Err(format!(
            "orthanc: POST /instances of {sop} answered {}: {}",
            a.status,
            body_text(&a.body)
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&a.body)
        .map_err(|e| format!("orthanc: POST /instances of {sop}: not JSON: {e}"))?;
    match (v["ID"].as_str(), v["Status"].as_str()) {
        (Some(id), Some("Success")) => Ok(id.to_owned()),
        (_, status) => Err(format!(
            "orthanc: POST /instances of {sop} answered status {status:?} (a fresh instance should be \"Success\"): {}",
            body_text(&a.body)
        )),
    }
}

async fn orthanc_read(
    http: &mut Http,
    id: &str,
    sop: &str,
    sent: &(blake3::Hash, u64),
) -> Result<(), String> {
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    let mut sink = |piece: &[u8]| {
        hasher.update(piece);
        len += piece.len() as u64;
    };
    let path = format!("/instances/{id}/file");
    let a = http.request("GET", &path, &[], Some(&mut sink)).await?;
    if a.status != 200 {
        return Err(format!("orthanc: GET {path} ({sop}) answered {}", a.status));
    }
    check(sop, "orthanc", hasher.finalize(), len, sent)
}

async fn orthanc_store_phase(
    authority: &str,
    set: &Arc<Set>,
    sent: &Sent,
    streams: usize,
) -> Result<(Figures, Vec<String>), String> {
    let count = sent.len() as u64;
    let dispenser = Arc::new(Dispenser::new(Plan::Count(count)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let mut http = Http::new(authority);
        let set = set.clone();
        let dispenser = dispenser.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            while let Some(n) = dispenser.take() {
                let t = Instant::now();
                let id = dispenser.watch(orthanc_store(&mut http, &set, n).await)?;
                done.push((n, id, t.elapsed()));
            }
            Ok::<_, String>(done)
        }));
    }
    let mut all = join_all(tasks).await?;
    let seconds = start.elapsed().as_secs_f64();
    all.sort_by_key(|(n, _, _)| *n);
    let lat = all.iter().map(|(_, _, l)| *l).collect();
    let ids = all.into_iter().map(|(_, id, _)| id).collect();
    Ok((Figures::new(lat, total_bytes(sent), seconds), ids))
}

async fn orthanc_read_phase(
    authority: &str,
    set: &Arc<Set>,
    sent: &Sent,
    ids: Arc<Vec<String>>,
    streams: usize,
) -> Result<Figures, String> {
    let count = sent.len() as u64;
    let dispenser = Arc::new(Dispenser::new(Plan::Count(count)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let mut http = Http::new(authority);
        let set = set.clone();
        let sent = sent.clone();
        let ids = ids.clone();
        let dispenser = dispenser.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while let Some(n) = dispenser.take() {
                let t = Instant::now();
                let sop = set.sop(n);
                let (id, sent) = (&ids[n as usize], &sent[n as usize]);
                dispenser.watch(orthanc_read(&mut http, id, &sop, sent).await)?;
                lat.push(t.elapsed());
            }
            Ok(lat)
        }));
    }
    let lat = join_all(tasks).await?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(Figures::new(lat, total_bytes(sent), seconds))
}

// ---------------------------------------------------------------------------
// One cell, the table, main

struct Row {
    workload: Workload,
    streams: usize,
    op: &'static str,
    /// With TLS and authentication: Kura's figure.
    kura: Figures,
    /// The same on a plaintext cluster (`kura dev --insecure`).
    plain: Figures,
    ceiling: Figures,
    orthanc: Option<Figures>,
}

impl Row {
    fn text(&self) -> String {
        let cpu_ms = |f: &Figures| {
            f.cpu_ms_per_instance()
                .map_or("-".to_owned(), |ms| format!("{ms:.2}"))
        };
        let (orthanc_mb, orthanc_ratio, orthanc_cpu) = match &self.orthanc {
            Some(o) => (
                format!("{:.1}", o.mb_per_s()),
                format!("{:.2}", self.kura.mb_per_s() / o.mb_per_s()),
                cpu_ms(o),
            ),
            None => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        table_line([
            self.workload.label.to_owned(),
            self.streams.to_string(),
            self.op.to_owned(),
            self.kura.ops.to_string(),
            format!("{:.1}", self.kura.per_second()),
            format!("{:.1}", self.kura.mb_per_s()),
            format!("{:.1}", self.kura.p50_ms),
            format!("{:.1}", self.kura.p99_ms),
            self.kura
                .kura_cores
                .map_or("-".to_owned(), |c| format!("{c:.2}")),
            cpu_ms(&self.kura),
            format!("{:.1}", self.ceiling.mb_per_s()),
            format!("{:.2}", self.kura.mb_per_s() / self.ceiling.mb_per_s()),
            orthanc_mb,
            orthanc_ratio,
            orthanc_cpu,
            format!("{:.1}", self.plain.mb_per_s()),
            format!("{:.2}", self.kura.mb_per_s() / self.plain.mb_per_s()),
        ])
    }

    fn json(&self) -> serde_json::Value {
        let ratio = |o: &Figures| round3(self.kura.mb_per_s() / o.mb_per_s());
        serde_json::json!({
            "workload": self.workload.key,
            "instance_bytes": self.kura.bytes / self.kura.ops.max(1),
            "streams": self.streams,
            "op": self.op,
            "kura": self.kura.json(),
            "ceiling": self.ceiling.json(),
            "kura_over_ceiling": ratio(&self.ceiling),
            "orthanc": self.orthanc.as_ref().map(Figures::json),
            "kura_over_orthanc": self.orthanc.as_ref().map(ratio),
            "plaintext": self.plain.json(),
            "tls_over_plaintext": ratio(&self.plain),
        })
    }
}

/// One line of the table: workload, streams, op, n | kura inst/s, MB/s,
/// p50, p99, cores of `kura dev` (TLS and authentication on), its CPU ms
/// per instance | ceiling MB/s, kura/ceiling | orthanc MB/s, kura/orthanc,
/// Orthanc's CPU ms per instance | plaintext MB/s, tls/plaintext.
fn table_line(c: [String; 17]) -> String {
    format!(
        "{:<16} {:>7} {:<8} {:>5} | {:>7} {:>7} {:>7} {:>7} {:>5} {:>6} | {:>7} {:>9} | {:>7} {:>9} {:>6} | {:>7} {:>9}",
        c[0],
        c[1],
        c[2],
        c[3],
        c[4],
        c[5],
        c[6],
        c[7],
        c[8],
        c[9],
        c[10],
        c[11],
        c[12],
        c[13],
        c[14],
        c[15],
        c[16]
    )
}

fn table_head() -> String {
    let head = table_line(
        [
            "workload",
            "streams",
            "op",
            "n",
            "inst/s",
            "MB/s",
            "p50 ms",
            "p99 ms",
            "cores",
            "cpu ms",
            "MB/s",
            "kura/ceil",
            "MB/s",
            "kura/orth",
            "cpu ms",
            "MB/s",
            "tls/plain",
        ]
        .map(str::to_owned),
    );
    format!(
        "{:<39} | {:<44} | {:<17} | {:<24} | {}\n{head}",
        "", "kura (TLS + auth)", "ceiling (files)", "orthanc", "kura plaintext"
    )
}

#[tokio::main]
async fn main() {
    if let Err(e) = real_main().await {
        eprintln!("ingest bench: {e}");
        std::process::exit(1);
    }
}

async fn real_main() -> Result<(), String> {
    let args = parse_args()?;
    if !args.kura.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release --workspace --bins`, or give --kura PATH",
            args.kura.display()
        ));
    }
    let orthanc_version = match &args.orthanc {
        Some(a) => Some(orthanc_check(a).await?),
        None => None,
    };
    let scratch = tempfile::Builder::new()
        .prefix("kura-ingest-")
        .tempdir_in(&args.dir)
        .map_err(|e| format!("create a temp dir in {}: {e}", args.dir.display()))?;
    let started = Instant::now();
    eprintln!(
        "starting {} dev with data in {} (the ceiling writes there too)",
        args.kura.display(),
        scratch.path().display()
    );
    let dev = KuraDev::start(
        &args.kura,
        &scratch.path().join("kura"),
        &scratch.path().join("kura-dev.log"),
        false,
    )?;
    let most_streams = args.streams.iter().copied().max().unwrap_or(1);
    let clients = connect_each(&dev.gateway, &dev.transport, most_streams).await?;
    // The same cluster in plaintext, measured right after, for the cost
    // of TLS and authentication (Kura's figures are the TLS ones).
    let plain_dev = KuraDev::start(
        &args.kura,
        &scratch.path().join("kura-plain"),
        &scratch.path().join("kura-dev-plain.log"),
        true,
    )?;
    let plain_clients =
        connect_each(&plain_dev.gateway, &plain_dev.transport, most_streams).await?;
    let run = format!(
        "{}.{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs(),
        std::process::id()
    );
    let slice_pool = pixel_pool(SLICE);
    let warm = Set::new(SLICE, format!("{run}.0"), slice_pool.clone());
    kura_warm_up(&clients[0], &warm).await?;
    kura_warm_up(
        &plain_clients[0],
        &Set::new(SLICE, format!("{run}.1000"), slice_pool.clone()),
    )
    .await?;
    if let Some(a) = &args.orthanc {
        let mut http = Http::new(a);
        orthanc_store(&mut http, &warm, 0).await?;
    }
    eprintln!(
        "gateway {} warm{}",
        dev.gateway,
        orthanc_version
            .as_ref()
            .map(|v| format!(
                "; orthanc {v} at http://{}",
                args.orthanc.as_deref().unwrap_or("")
            ))
            .unwrap_or_default()
    );

    let mut rows = Vec::new();
    if !args.json {
        println!("{}", table_head());
    }
    let mut cell = 0u32;
    for &workload in &args.workloads {
        let pool = if workload.key == SLICE.key {
            slice_pool.clone()
        } else {
            pixel_pool(workload)
        };
        for &streams in &args.streams {
            cell += 1;
            let set = Arc::new(Set::new(workload, format!("{run}.{cell}"), pool.clone()));
            eprintln!("{} × {streams} streams: kura store …", workload.label);
            let cpu = Cpu::now(dev.pid());
            let (kura_store_fig, recorded) =
                kura_ingest_phase(&clients, &set, streams, args.plan).await?;
            let kura_store_fig = kura_store_fig.with_cpu(cpu, Cpu::now(dev.pid()));
            let count = kura_store_fig.ops;
            let sent: Sent = Arc::new((0..count).map(|n| set.blake3(n)).collect());
            for (n, (hash, _)) in sent.iter().enumerate() {
                if recorded[n] != hash.to_hex().as_str() {
                    return Err(format!(
                        "kura recorded blake3 {} for {}; sent {}",
                        recorded[n],
                        set.sop(n as u64),
                        hash.to_hex()
                    ));
                }
            }
            eprintln!("  {count} stored; the same in plaintext (the TLS column's baseline) …");
            let plain_set = Arc::new(Set::new(
                workload,
                format!("{run}.{}", 1000 + cell),
                pool.clone(),
            ));
            let cpu = Cpu::now(plain_dev.pid());
            let (plain_store_fig, _) =
                kura_ingest_phase(&plain_clients, &plain_set, streams, args.plan).await?;
            let plain_store_fig = plain_store_fig.with_cpu(cpu, Cpu::now(plain_dev.pid()));
            let plain_sent: Sent = Arc::new(
                (0..plain_store_fig.ops)
                    .map(|n| plain_set.blake3(n))
                    .collect(),
            );
            eprintln!("  kura retrieve, {RETRIEVE_ROUNDS} rounds of TLS and plaintext …");
            let (mut tls_passes, mut plain_passes) = (Passes::default(), Passes::default());
            for _ in 0..RETRIEVE_ROUNDS {
                tls_passes.run(&dev, &clients, &set, &sent, streams).await?;
                plain_passes
                    .run(&plain_dev, &plain_clients, &plain_set, &plain_sent, streams)
                    .await?;
            }
            let kura_read_fig = tls_passes.figures();
            let plain_read_fig = plain_passes.figures();
            eprintln!("  ceiling write and read …");
            let dir = scratch.path().join(format!("ceiling-{cell}"));
            let cpu = Cpu::now(dev.pid());
            let ceil_write =
                ceiling_write(&dir, &set, &sent, streams)?.with_cpu(cpu, Cpu::now(dev.pid()));
            let cpu = Cpu::now(dev.pid());
            let ceil_read = ceiling_read(&dir, &sent, streams)?.with_cpu(cpu, Cpu::now(dev.pid()));
            let _ = std::fs::remove_dir_all(&dir);
            let (orth_store, orth_read) = match &args.orthanc {
                Some(a) => {
                    eprintln!("  orthanc store and read …");
                    // Orthanc's own CPU when its pid is known (none otherwise).
                    let server = || Cpu::of(args.orthanc_pid);
                    let cpu = server();
                    let (fig, ids) = orthanc_store_phase(a, &set, &sent, streams).await?;
                    let fig = fig.with_cpu(cpu, server());
                    let cpu = server();
                    let read = orthanc_read_phase(a, &set, &sent, Arc::new(ids), streams)
                        .await?
                        .with_cpu(cpu, server());
                    (Some(fig), Some(read))
                }
                None => (None, None),
            };
            for row in [
                Row {
                    workload,
                    streams,
                    op: "store",
                    kura: kura_store_fig,
                    plain: plain_store_fig,
                    ceiling: ceil_write,
                    orthanc: orth_store,
                },
                Row {
                    workload,
                    streams,
                    op: "retrieve",
                    kura: kura_read_fig,
                    plain: plain_read_fig,
                    ceiling: ceil_read,
                    orthanc: orth_read,
                },
            ] {
                if !args.json {
                    println!("{}", row.text());
                }
                rows.push(row);
            }
        }
    }
    let batching = dev.ops.as_deref().and_then(audit_batching);
    if let Some((records, commits)) = batching {
        eprintln!(
            "audit trail: {records:.0} records in {commits:.0} Raft commits ({:.1} records per commit)",
            records / commits.max(1.0)
        );
    }
    eprintln!("stopping kura dev");
    dev.stop()?;
    plain_dev.stop()?;
    let total = started.elapsed().as_secs_f64();
    if args.json {
        let doc = serde_json::json!({
            "plan": match args.plan {
                Plan::For(d) => serde_json::json!({"kura_store_seconds": d.as_secs()}),
                Plan::Count(n) => serde_json::json!({"count": n}),
            },
            "orthanc_version": orthanc_version,
            "audit_records": batching.map(|b| b.0),
            "audit_commits": batching.map(|b| b.1),
            "total_seconds": round3(total),
            "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
        });
        println!("{doc}");
    } else {
        println!(
            "MB = 10^6 bytes; {}; total {total:.0} s",
            match args.plan {
                Plan::For(d) => format!(
                    "n = instances kura stored in {} s per cell (the ceiling and orthanc take the same n)",
                    d.as_secs()
                ),
                Plan::Count(n) => format!("n = {n} instances per cell"),
            }
        );
    }
    Ok(())
}

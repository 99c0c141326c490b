//! The workload and its history: concurrent clients send Store (a new
//! synthetic instance, unique SOP Instance UID, size and content from the
//! seed) and Retrieve (of an acknowledged instance) to the gateways that
//! are expected up, each call under a deadline, and every call is recorded:
//! what was sent, what came back, when, and how it ended.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kura_dicom::synthetic::{Synthetic, instance, uid};
use kura_proto::code_name;
use kura_proto::v1::archive_client::ArchiveClient;
use kura_proto::v1::{ListStudyRequest, RetrieveRequest, StoreRequest, retrieve_response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Every instance of the suite belongs to this tenant.
pub const TENANT: &str = "chaos";

/// A gateway the clients may use.
#[derive(Clone, Debug)]
pub struct Target {
    /// `site/node`, for the history.
    pub label: String,
    pub addr: String,
    /// TLS with the workload's client certificate.
    pub transport: kura_auth::Transport,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Store,
    Retrieve,
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The gateway answered this status. `definite`: a refusal that
    /// promises nothing was stored (INVALID_ARGUMENT, RESOURCE_EXHAUSTED,
    /// ...); UNAVAILABLE and the like may hide an unknown commit outcome.
    Fail {
        code: String,
        definite: bool,
    },
    /// No answer: the client's deadline passed or the connection broke.
    Unknown(String),
}

impl Outcome {
    /// A short label for the figures.
    pub fn label(&self) -> String {
        match self {
            Outcome::Ok => "OK".into(),
            Outcome::Fail { code, .. } => code.clone(),
            Outcome::Unknown(why) => format!("unknown ({why})"),
        }
    }
}

/// One recorded call.
#[derive(Clone, Debug)]
pub struct Op {
    pub client: usize,
    pub kind: Kind,
    pub uid: String,
    pub study: String,
    pub gateway: String,
    /// blake3 (hex) of the bytes sent (Store), or of the acknowledged
    /// bytes asked for (Retrieve).
    pub sent: String,
    /// blake3 (hex) of the bytes that came back (Retrieve), or that the
    /// gateway says it stored (Store), when the call succeeded.
    pub got: Option<String>,
    pub size: u64,
    pub start: Duration,
    pub end: Duration,
    pub outcome: Outcome,
}

/// Classifies an error status: the server's answer, or a broken
/// transport (then the outcome is unknown). A status the client library
/// made itself (connect, reset, h2 errors) carries its cause as `source`;
/// one the gateway sent does not.
pub fn classify(s: &Status) -> Outcome {
    let transport = std::error::Error::source(s).is_some();
    match s.code() {
        c if transport => Outcome::Unknown(format!("transport, {}", code_name(c))),
        Code::InvalidArgument
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::ResourceExhausted
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::NotFound => Outcome::Fail {
            code: code_name(s.code()).into(),
            definite: true,
        },
        c => Outcome::Fail {
            code: code_name(c).into(),
            definite: false,
        },
    }
}

/// A client of one gateway: lazy connection, keep-alives so a dead peer
/// is noticed, 8 MiB messages.
pub fn archive_client(target: &Target) -> ArchiveClient<Channel> {
    let channel = target
        .transport
        .endpoint(&target.addr)
        .expect("gateway endpoint")
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true)
        .connect_lazy();
    ArchiveClient::new(channel)
        .max_decoding_message_size(8 * 1024 * 1024)
        .max_encoding_message_size(8 * 1024 * 1024)
}

fn store_messages(bytes: &[u8]) -> Vec<StoreRequest> {
    kura_testkit::store_messages(TENANT, bytes, 64 * 1024)
}

/// One Store; answers the outcome and the blake3 the gateway reported.
pub async fn store_call(
    client: &mut ArchiveClient<Channel>,
    bytes: &[u8],
    deadline: Duration,
) -> (Outcome, Option<String>) {
    let call = client.store(tokio_stream::iter(store_messages(bytes)));
    match tokio::time::timeout(deadline, call).await {
        Err(_) => (Outcome::Unknown("client deadline".into()), None),
        Ok(Ok(r)) => {
            let r = r.into_inner();
            (Outcome::Ok, r.info.map(|i| i.blake3))
        }
        Ok(Err(s)) => (classify(&s), None),
    }
}

/// One Retrieve; answers the outcome and, when it ended OK, the blake3 of
/// the bytes received (a size that differs from the announced one is
/// reported as a mismatching hash).
pub async fn retrieve_call(
    client: &mut ArchiveClient<Channel>,
    uid: &str,
    deadline: Duration,
) -> (Outcome, Option<String>) {
    let call = async {
        let mut stream = client
            .retrieve(RetrieveRequest {
                tenant: TENANT.into(),
                sop_instance_uid: uid.into(),
            })
            .await?
            .into_inner();
        let first = stream.message().await?;
        let size = match first.and_then(|m| m.msg) {
            Some(retrieve_response::Msg::Info(i)) => i.size,
            other => {
                return Ok::<_, Status>(format!("protocol: first message {other:?}"));
            }
        };
        let mut h = blake3::Hasher::new();
        let mut n = 0u64;
        while let Some(m) = stream.message().await? {
            if let Some(retrieve_response::Msg::Chunk(c)) = m.msg {
                h.update(&c);
                n += c.len() as u64;
            }
        }
        if n != size {
            return Ok(format!("size {n} instead of {size}"));
        }
        Ok(h.finalize().to_hex().to_string())
    };
    match tokio::time::timeout(deadline, call).await {
        Err(_) => (Outcome::Unknown("client deadline".into()), None),
        Ok(Ok(hash)) => (Outcome::Ok, Some(hash)),
        Ok(Err(s)) => (classify(&s), None),
    }
}

/// The SOP Instance UIDs a study lists, or the error.
pub async fn list_study(
    client: &mut ArchiveClient<Channel>,
    study: &str,
) -> Result<Vec<(String, String)>, Status> {
    let mut stream = client
        .list_study(ListStudyRequest {
            tenant: TENANT.into(),
            study_instance_uid: study.into(),
            series_instance_uid: None,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(i) = stream.message().await? {
        out.push((i.sop_instance_uid, i.blake3));
    }
    Ok(out)
}

struct Shared {
    t0: Instant,
    history: Mutex<Vec<Op>>,
    targets: Mutex<Vec<Target>>,
    acked: Mutex<Vec<(String, String)>>,
    stop: AtomicBool,
    next: AtomicU64,
    tag: String,
    store_deadline: Duration,
    read_deadline: Duration,
}

/// Running clients.
pub struct Workload {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    seed: u64,
    writers: usize,
}

/// How the workload behaves.
#[derive(Clone, Debug)]
pub struct Mix {
    /// Clients that only store (each into its own study).
    pub writers: usize,
    /// Clients that only retrieve acknowledged instances: their
    /// availability does not depend on how long stores take.
    pub readers: usize,
    pub min_bytes: u32,
    pub max_bytes: u32,
    pub think: Duration,
    pub store_deadline: Duration,
    pub read_deadline: Duration,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            writers: 3,
            readers: 2,
            min_bytes: 50_000,
            max_bytes: 400_000,
            think: Duration::from_millis(40),
            store_deadline: Duration::from_secs(15),
            read_deadline: Duration::from_secs(10),
        }
    }
}

/// The study of client `c`.
pub fn study_of(tag: &str, c: usize) -> String {
    uid(tag, 1000 + c as u64)
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Workload {
    /// Starts `mix.clients` clients on `targets`. `tag` (digits and dots)
    /// makes the run's UIDs.
    pub fn start(tag: &str, seed: u64, mix: Mix, targets: Vec<Target>) -> Workload {
        let shared = Arc::new(Shared {
            t0: Instant::now(),
            history: Mutex::new(Vec::new()),
            targets: Mutex::new(targets),
            acked: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            next: AtomicU64::new(1),
            tag: tag.to_string(),
            store_deadline: mix.store_deadline,
            read_deadline: mix.read_deadline,
        });
        let tasks = (0..mix.writers + mix.readers)
            .map(|c| {
                let shared = Arc::clone(&shared);
                let mix = mix.clone();
                let rng = StdRng::seed_from_u64(
                    seed ^ (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                tokio::spawn(client(shared, c, rng, mix))
            })
            .collect();
        Workload {
            shared,
            tasks,
            seed,
            writers: mix.writers,
        }
    }

    /// Time since the workload started (the history's clock).
    pub fn now(&self) -> Duration {
        self.shared.t0.elapsed()
    }

    /// Changes the gateways clients use (in-flight calls finish where they are).
    pub fn set_targets(&self, targets: Vec<Target>) {
        *locked(&self.shared.targets) = targets;
    }

    pub fn history(&self) -> Vec<Op> {
        locked(&self.shared.history).clone()
    }

    /// Acknowledged stores so far: (uid, blake3).
    pub fn acked(&self) -> Vec<(String, String)> {
        locked(&self.shared.acked).clone()
    }

    /// Stops the clients after their current call.
    pub async fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }

    /// The studies the writers (and probes) stored into.
    pub fn studies(&self) -> Vec<String> {
        (0..self.writers)
            .chain([PROBE_CLIENT])
            .map(|c| study_of(&self.shared.tag, c))
            .collect()
    }

    /// One Store of a fresh instance to `target` outside the clients (a
    /// probe), recorded like theirs.
    pub async fn probe_store(&self, target: &Target, deadline: Duration) -> Op {
        let n = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let mut rng = StdRng::seed_from_u64(self.seed ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let mut client = archive_client(target);
        do_store(
            &self.shared,
            &mut client,
            target,
            PROBE_CLIENT,
            n,
            &mut rng,
            60_000,
            120_000,
            deadline,
        )
        .await
    }

    /// One Retrieve of `uid` (expected `blake3`) outside the clients.
    pub async fn probe_retrieve(
        &self,
        target: &Target,
        uid: &str,
        blake3: &str,
        deadline: Duration,
    ) -> Op {
        let mut client = archive_client(target);
        do_retrieve(
            &self.shared,
            &mut client,
            target,
            PROBE_CLIENT,
            uid,
            blake3,
            deadline,
        )
        .await
    }
}

/// The client number of probes in the history.
pub const PROBE_CLIENT: usize = 99;

#[allow(clippy::too_many_arguments)]
async fn do_store(
    shared: &Shared,
    client: &mut ArchiveClient<Channel>,
    target: &Target,
    c: usize,
    n: u64,
    rng: &mut StdRng,
    min: u32,
    max: u32,
    deadline: Duration,
) -> Op {
    let study = study_of(&shared.tag, c);
    let s = Synthetic {
        study: study.clone(),
        series: uid(&shared.tag, 2000 + c as u64),
        sop: uid(&format!("{}.{c}", shared.tag), n),
    };
    let size = rng.random_range(min..max) & !1;
    let bytes = instance(&s, size, rng.random());
    let sent = blake3::hash(&bytes).to_hex().to_string();
    let start = shared.t0.elapsed();
    let (outcome, got) = store_call(client, &bytes, deadline).await;
    let op = Op {
        client: c,
        kind: Kind::Store,
        uid: s.sop.clone(),
        study,
        gateway: target.label.clone(),
        sent: sent.clone(),
        got,
        size: bytes.len() as u64,
        start,
        end: shared.t0.elapsed(),
        outcome,
    };
    if op.outcome == Outcome::Ok {
        locked(&shared.acked).push((s.sop, sent));
    }
    locked(&shared.history).push(op.clone());
    op
}

async fn do_retrieve(
    shared: &Shared,
    client: &mut ArchiveClient<Channel>,
    target: &Target,
    c: usize,
    uid: &str,
    blake3: &str,
    deadline: Duration,
) -> Op {
    let start = shared.t0.elapsed();
    let (outcome, got) = retrieve_call(client, uid, deadline).await;
    let op = Op {
        client: c,
        kind: Kind::Retrieve,
        uid: uid.to_string(),
        study: String::new(),
        gateway: target.label.clone(),
        sent: blake3.to_string(),
        got,
        size: 0,
        start,
        end: shared.t0.elapsed(),
        outcome,
    };
    locked(&shared.history).push(op.clone());
    op
}

async fn client(shared: Arc<Shared>, c: usize, mut rng: StdRng, mix: Mix) {
    let mut clients: HashMap<String, ArchiveClient<Channel>> = HashMap::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let target = {
            let t = locked(&shared.targets);
            if t.is_empty() {
                None
            } else {
                Some(t[rng.random_range(0..t.len())].clone())
            }
        };
        let Some(target) = target else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let grpc = clients
            .entry(target.addr.clone())
            .or_insert_with(|| archive_client(&target));
        let pick = if c < mix.writers {
            None
        } else {
            let choice = {
                let acked = locked(&shared.acked);
                (!acked.is_empty()).then(|| acked[rng.random_range(0..acked.len())].clone())
            };
            if choice.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            choice
        };
        match pick {
            None => {
                let n = shared.next.fetch_add(1, Ordering::Relaxed);
                do_store(
                    &shared,
                    grpc,
                    &target,
                    c,
                    n,
                    &mut rng,
                    mix.min_bytes,
                    mix.max_bytes,
                    shared.store_deadline,
                )
                .await;
            }
            Some((uid, blake3)) => {
                do_retrieve(
                    &shared,
                    grpc,
                    &target,
                    c,
                    &uid,
                    &blake3,
                    shared.read_deadline,
                )
                .await;
            }
        }
        tokio::time::sleep(mix.think).await;
    }
}

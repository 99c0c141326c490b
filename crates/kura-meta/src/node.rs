//! One metadata node: opens its RocksDB, starts Raft, and serves the Raft
//! and Meta services on one listener until it is shut down.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kura_auth::{ClientCerts, NodeGuard, Transport};
use kura_proto::codec;
use kura_proto::v1::internal::meta_server::MetaServer as MetaGrpcServer;
use kura_proto::v1::internal::raft_server::RaftServer as RaftGrpcServer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

use crate::error::MetaError;
use crate::network::{NetworkFactory, RaftServer};
use crate::service::{MetaServer, ServiceTimeouts};
use crate::store::log::LogStore;
use crate::store::open_db;
use crate::store::sm::{StateMachine, StateReader};
use crate::types::Raft;

/// Raft timing and snapshot settings.
#[derive(Clone, Copy, Debug)]
pub struct RaftTimings {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot once this many entries were applied since the last.
    pub snapshot_every_entries: u64,
    /// Also build one once this many bytes were appended to the log since
    /// the last one this trigger asked for: bulk imports write few, large
    /// entries, and the log is purged only behind a snapshot.
    pub snapshot_every_bytes: u64,
    /// Entries kept in the log behind the snapshot, so a follower a little
    /// behind catches up from the log instead of a whole snapshot.
    pub log_kept_behind_snapshot: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        Self {
            // openraft 0.9 gives every AppendEntries (the follower's synced
            // append included) one heartbeat interval to answer; at 100 ms
            // a busy disk made appends time out and throughput collapse
            // under load (bench/meta), so the interval leaves room for an
            // fsync under contention.
            heartbeat_ms: 250,
            // A follower that heard from its leader waits the leader lease
            // (= the maximum) plus a random timeout before it campaigns:
            // 1.25-1.5 s here, so a new leader is in place well within 2 s
            // of the old one going silent. (It was 3-4 s with 1-2 s.)
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 750,
            snapshot_every_entries: 50_000,
            snapshot_every_bytes: 256 << 20,
            log_kept_behind_snapshot: 10_000,
        }
    }
}

/// What a metadata node needs to start.
#[derive(Clone, Debug)]
pub struct MetaConfig {
    /// Raft node id, unique in the cluster.
    pub id: u64,
    /// Where its RocksDB and snapshots live.
    pub data_dir: PathBuf,
    /// The address other nodes reach this node at (`host:port`).
    pub advertise_addr: String,
    pub timings: RaftTimings,
    pub timeouts: ServiceTimeouts,
    /// TLS (this voter's node certificate, the cluster's CA) or plaintext,
    /// for serving and for calling the other voters.
    pub transport: Transport,
}

/// A running metadata node.
pub struct MetaNode {
    id: u64,
    addr: String,
    raft: Raft,
    service: MetaServer,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    detector_stop: Option<oneshot::Sender<()>>,
    detector: Option<JoinHandle<()>>,
    snapshot_trigger: JoinHandle<()>,
    /// Switches this voter's elections off while it cannot reach a quorum.
    quorum_probe: JoinHandle<()>,
}

impl MetaNode {
    /// Opens the node's data directory (creating it if new) and serves on
    /// `listener`. A node restarted from its directory resumes where it
    /// stopped; a new one waits to be bootstrapped or added.
    pub async fn start(
        config: MetaConfig,
        listener: tokio::net::TcpListener,
    ) -> Result<Self, MetaError> {
        let db_dir = config.data_dir.join("db");
        std::fs::create_dir_all(&db_dir)
            .map_err(|e| MetaError::Storage(format!("create {}: {e}", db_dir.display())))?;
        let db = open_db(&db_dir)
            .map_err(|e| MetaError::Storage(format!("open {}: {e}", db_dir.display())))?;
        let log = LogStore::new(db.clone());
        let appended = log.appended_bytes();
        let sm = StateMachine::open(db, &config.data_dir.join("snapshots"))?;
        let reader = sm.reader();
        let t = config.timings;
        let raft_config = openraft::Config {
            cluster_name: "kura-meta".into(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_timeout_min_ms,
            election_timeout_max: t.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(staggered(
                t.snapshot_every_entries,
                config.id,
            )),
            max_in_snapshot_log_to_keep: t.log_kept_behind_snapshot,
            // Chunks well under the message limit.
            snapshot_max_chunk_size: 1 << 20,
            install_snapshot_timeout: 2_000,
            max_payload_entries: 512,
            ..Default::default()
        };
        let raft_config = Arc::new(
            raft_config
                .validate()
                .map_err(|e| MetaError::InvalidArgument(format!("raft config: {e}")))?,
        );
        let raft = Raft::new(
            config.id,
            raft_config,
            NetworkFactory::new(config.id, config.transport.clone()),
            log,
            sm,
        )
        .await
        .map_err(|e| MetaError::Fatal(e.to_string()))?;
        let service = MetaServer::new(raft.clone(), reader, config.timeouts);
        let snapshot_trigger = tokio::spawn(snapshot_by_bytes(
            raft.clone(),
            appended,
            staggered(t.snapshot_every_bytes, config.id),
        ));
        let quorum_probe = crate::quorum::spawn(config.id, raft.clone(), config.transport.clone());
        let (detector_stop, detector_rx) = oneshot::channel::<()>();
        let detector = crate::liveness::spawn(
            config.id,
            service.clone(),
            std::sync::Arc::clone(service.liveness()),
            config.timeouts.node_down_after,
            config.timeouts.node_lost_after,
            detector_rx,
        );
        let (tx, rx) = oneshot::channel::<()>();
        let limit = codec::PAYLOAD_BYTES_MAX as usize;
        let enforce = config.transport.is_tls();
        // Refusals of this voter's services go to the audit trail through
        // the cluster (this node forwards to the leader).
        let audit = kura_proto::audit::AuditSink::start(
            kura_proto::meta_client::MetaClient::new(
                vec![config.advertise_addr.clone()],
                config.transport.clone(),
            ),
            format!("voter {}", config.id),
        );
        let sink = kura_proto::audit::refusal_sink(audit);
        let router = config
            .transport
            .server(ClientCerts::Required)
            .map_err(|e| MetaError::InvalidArgument(e.to_string()))?
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(8 << 20))
            .tcp_nodelay(true)
            .add_service(InterceptedService::new(
                RaftGrpcServer::new(RaftServer::new(raft.clone()))
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
                NodeGuard::raft(enforce).with_sink(sink.clone()),
            ))
            .add_service(InterceptedService::new(
                MetaGrpcServer::new(service.clone())
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
                NodeGuard::meta(enforce).with_sink(sink),
            ));
        let server = tokio::spawn(router.serve_with_incoming_shutdown(
            kura_proto::net::incoming(listener),
            async {
                let _ = rx.await;
            },
        ));
        tracing::info!(id = config.id, addr = %config.advertise_addr, "metadata node started");
        Ok(Self {
            id: config.id,
            addr: config.advertise_addr,
            raft,
            service,
            shutdown: Some(tx),
            server: Some(server),
            detector_stop: Some(detector_stop),
            detector: Some(detector),
            snapshot_trigger,
            quorum_probe,
        })
    }

    /// This node's Raft id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The address it serves at.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The Raft handle (metrics, tests).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The service, callable in-process.
    pub fn service(&self) -> &MetaServer {
        &self.service
    }

    /// Read access to the applied state.
    pub fn reader(&self) -> &StateReader {
        self.service.reader()
    }

    /// Waits until some node is known as leader, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, MetaError> {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = rx.borrow().current_leader {
                return Ok(l);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(MetaError::NoQuorum(format!("no leader within {timeout:?}")));
            }
        }
    }

    /// Stops Raft and the server and releases the data directory. Nothing
    /// of this node keeps running afterwards.
    pub async fn shutdown(mut self) -> Result<(), MetaError> {
        self.snapshot_trigger.abort();
        self.quorum_probe.abort();
        if let Some(tx) = self.detector_stop.take() {
            let _ = tx.send(());
        }
        if let Some(d) = self.detector.take() {
            let _ = d.await;
        }
        let raft_result = self.raft.shutdown().await;
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "metadata server ended with an error"),
                Err(e) => tracing::warn!(error = %e, "metadata server task failed"),
            }
        }
        raft_result.map_err(|e| MetaError::Fatal(format!("raft shutdown: {e}")))
    }
}

/// Voters apply the same entries, so equal thresholds make every voter
/// build a snapshot (a flush of every memtable) at the same moment, and
/// commits stall while they all do (bench/meta: p99 241 ms at 64 clients
/// in the 5 s that held one, ~32 ms otherwise). Each voter's threshold is
/// stretched by its id (1, 9/8, 10/8 or 11/8 of it), so a follower's
/// snapshot leaves the leader and the other follower a quorum. The
/// leader's own snapshot still shows in the tail (123 ms in that bench).
fn staggered(every: u64, id: u64) -> u64 {
    every.saturating_add(every / 8 * (id % 4))
}

/// Asks for a snapshot whenever `every` more bytes reached the log: a
/// second policy beside openraft's count of entries.
async fn snapshot_by_bytes(raft: Raft, appended: Arc<std::sync::atomic::AtomicU64>, every: u64) {
    if every == 0 {
        return;
    }
    let mut mark = 0u64;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = appended.load(std::sync::atomic::Ordering::Relaxed);
        if now.saturating_sub(mark) >= every {
            mark = now;
            if let Err(e) = raft.trigger().snapshot().await {
                tracing::warn!(error = %e, "could not ask for a snapshot");
                return;
            }
        }
    }
}

impl Drop for MetaNode {
    fn drop(&mut self) {
        self.snapshot_trigger.abort();
        self.quorum_probe.abort();
        // A node dropped without shutdown() still stops serving.
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(tx) = self.detector_stop.take() {
            let _ = tx.send(());
        }
    }
}

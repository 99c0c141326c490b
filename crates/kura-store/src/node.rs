//! One storage node: opens its shard store, serves the Shards service on a
//! listener, reports its usage to the metadata cluster, and stops for real
//! on [`StorageNode::shutdown`] (server, reporter, and the store's database
//! all released, so the directory can be opened again).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kura_auth::{ClientCerts, NodeGuard, Transport};
use kura_proto::shards_client::{
    CONNECTION_WINDOW_BYTES, MESSAGE_BYTES_MAX, SHARD_BYTES_MAX, STREAM_WINDOW_BYTES,
};
use kura_proto::v1::internal::shards_server::ShardsServer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

use crate::error::StoreError;
use crate::report;
use crate::service::ShardsService;
use crate::store::ShardStore;

/// Shard bytes all puts and gets of one node may buffer at once by default
/// (see [`ShardsService`]): ~300 typical 820 KiB shards (4 MiB segments,
/// k = 5), or 3 of the largest possible.
pub const BUFFER_BYTES_MAX_DEFAULT: u64 = 256 * 1024 * 1024;

const _: () = assert!(BUFFER_BYTES_MAX_DEFAULT >= SHARD_BYTES_MAX);
/// How often the node reports its usage by default.
pub const REPORT_INTERVAL_DEFAULT: Duration = Duration::from_secs(10);
/// How long shutdown waits for running requests before cutting them off.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What a storage node needs to start.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The node's id in the cluster map.
    pub node_id: u64,
    /// Where its shards and index live.
    pub data_dir: PathBuf,
    /// The most bytes of shards it may hold; `None`: what it holds plus the
    /// disk's free space (less a headroom for the index).
    pub capacity_bytes: Option<u64>,
    /// Metadata voters (`host:port`) to report usage to; none: no reports.
    pub meta_endpoints: Vec<String>,
    /// How often to report.
    pub report_interval: Duration,
    /// Shard bytes buffered by all requests together; at least
    /// [`SHARD_BYTES_MAX`].
    pub buffer_bytes_max: u64,
    /// Unreferenced shards older than this are reclaimed (see [`crate::gc`]);
    /// must exceed the gateway's store deadline.
    pub orphan_grace: Duration,
    /// Time between two orphan sweeps (needs `meta_endpoints`).
    pub gc_interval: Duration,
    /// The scrubber's pace in bytes per second; 0 turns it off.
    pub scrub_bytes_per_sec: u64,
    /// Wait between two scrub passes.
    pub scrub_pass_interval: Duration,
    /// TLS (this node's certificate, the cluster's CA) or plaintext, for
    /// serving and for calling voters and other storage nodes.
    pub transport: Transport,
    /// Registers the node for in-process reads by a gateway in the same
    /// process (`kura dev`, a `kura server` with both roles).
    pub local: Option<kura_proto::local::LocalShards>,
}

impl StoreConfig {
    /// A config with the defaults: capacity from the disk, no reports.
    pub fn new(node_id: u64, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id,
            data_dir: data_dir.into(),
            capacity_bytes: None,
            meta_endpoints: Vec::new(),
            report_interval: REPORT_INTERVAL_DEFAULT,
            buffer_bytes_max: BUFFER_BYTES_MAX_DEFAULT,
            orphan_grace: crate::gc::ORPHAN_GRACE_DEFAULT,
            gc_interval: crate::gc::GC_INTERVAL_DEFAULT,
            scrub_bytes_per_sec: crate::scrub::SCRUB_BYTES_PER_SEC_DEFAULT,
            scrub_pass_interval: crate::scrub::SCRUB_PASS_INTERVAL_DEFAULT,
            transport: Transport::Plaintext,
            local: None,
        }
    }
}

/// A running storage node.
pub struct StorageNode {
    node_id: u64,
    addr: SocketAddr,
    store: Option<Arc<ShardStore>>,
    service: Option<ShardsService>,
    server_stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    reporter_stop: Option<oneshot::Sender<()>>,
    reporter: Option<JoinHandle<()>>,
    gc_stop: Option<oneshot::Sender<()>>,
    gc: Option<JoinHandle<()>>,
    scrub_stop: Option<oneshot::Sender<()>>,
    scrub: Option<JoinHandle<()>>,
    scrub_status: Arc<crate::scrub::ScrubStatus>,
    /// The in-process registration and the reader it points to.
    local: Option<(
        kura_proto::local::LocalShards,
        Arc<dyn kura_proto::local::LocalShardReader>,
    )>,
}

impl StorageNode {
    /// Opens the store in `config.data_dir` (creating it if new) and serves
    /// on `listener`.
    pub async fn start(
        config: StoreConfig,
        listener: tokio::net::TcpListener,
    ) -> Result<Self, StoreError> {
        let StoreConfig {
            node_id,
            data_dir,
            capacity_bytes,
            meta_endpoints,
            report_interval,
            buffer_bytes_max,
            orphan_grace,
            gc_interval,
            scrub_bytes_per_sec,
            scrub_pass_interval,
            transport,
            local,
        } = config;
        if gc_interval.is_zero() {
            return Err(StoreError::InvalidArgument(
                "gc_interval must be more than zero".into(),
            ));
        }
        if buffer_bytes_max < SHARD_BYTES_MAX {
            return Err(StoreError::InvalidArgument(format!(
                "buffer_bytes_max is {buffer_bytes_max}; it must hold the largest shard, {SHARD_BYTES_MAX} bytes"
            )));
        }
        if report_interval < report::REPORT_INTERVAL_MIN {
            return Err(StoreError::InvalidArgument(format!(
                "report_interval must be at least {:?}",
                report::REPORT_INTERVAL_MIN
            )));
        }
        let addr = listener
            .local_addr()
            .map_err(|e| StoreError::io("listener address", e))?;
        let store =
            tokio::task::spawn_blocking(move || ShardStore::open(&data_dir, capacity_bytes))
                .await
                .map_err(|e| StoreError::Internal(format!("open task failed: {e}")))??;
        let store = Arc::new(store);
        let service = ShardsService::new(
            node_id,
            Arc::clone(&store),
            buffer_bytes_max,
            transport.clone(),
        );
        let (server_stop, stopped) = oneshot::channel::<()>();
        let audit_sink = (!meta_endpoints.is_empty()).then(|| {
            kura_proto::audit::refusal_sink(kura_proto::audit::AuditSink::start(
                kura_proto::meta_client::MetaClient::new(meta_endpoints.clone(), transport.clone()),
                format!("storage node {node_id}"),
            ))
        });
        let router = transport
            .server(ClientCerts::Required)
            .map_err(|e| StoreError::InvalidArgument(e.to_string()))?
            .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
            .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
            .tcp_nodelay(true)
            .add_service(InterceptedService::new(
                ShardsServer::new(service.clone())
                    .max_decoding_message_size(MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(MESSAGE_BYTES_MAX),
                match &audit_sink {
                    Some(sink) => NodeGuard::shards(transport.is_tls()).with_sink(sink.clone()),
                    None => NodeGuard::shards(transport.is_tls()),
                },
            ));
        let server = tokio::spawn(router.serve_with_incoming_shutdown(
            kura_proto::net::incoming(listener),
            async {
                let _ = stopped.await;
            },
        ));
        let scrub_status = Arc::new(crate::scrub::ScrubStatus::default());
        service.set_scrub(Arc::clone(&scrub_status), scrub_bytes_per_sec > 0);
        let (scrub_stop, scrub_rx) = oneshot::channel();
        let scrub = crate::scrub::spawn(
            node_id,
            Arc::clone(&store),
            scrub_bytes_per_sec,
            scrub_pass_interval,
            Arc::clone(&scrub_status),
            scrub_rx,
        );
        let (gc_stop, gc) = if meta_endpoints.is_empty() {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            let task = crate::gc::spawn(
                node_id,
                Arc::clone(&store),
                kura_proto::meta_client::MetaClient::new(meta_endpoints.clone(), transport.clone()),
                gc_interval,
                orphan_grace,
                rx,
            );
            (Some(tx), Some(task))
        };
        let (reporter_stop, reporter) = if meta_endpoints.is_empty() {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            let task = report::spawn(
                node_id,
                Arc::clone(&store),
                meta_endpoints,
                transport,
                report_interval,
                rx,
            );
            (Some(tx), Some(task))
        };
        let local = local.map(|registry| {
            let reader: Arc<dyn kura_proto::local::LocalShardReader> =
                Arc::new(crate::service::InProcessReads(service.clone()));
            registry.register(node_id, &reader);
            (registry, reader)
        });
        tracing::info!(node = node_id, %addr, "storage node started");
        Ok(Self {
            node_id,
            addr,
            store: Some(store),
            service: Some(service),
            server_stop: Some(server_stop),
            server: Some(server),
            reporter_stop,
            reporter,
            gc_stop,
            gc,
            scrub_stop: Some(scrub_stop),
            scrub: Some(scrub),
            scrub_status,
            local,
        })
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The address the node serves at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The scrubber's counters.
    pub fn scrub_status(&self) -> &Arc<crate::scrub::ScrubStatus> {
        &self.scrub_status
    }

    /// The store, for in-process callers (tests, the scrubber).
    pub fn store(&self) -> Option<&Arc<ShardStore>> {
        self.store.as_ref()
    }

    /// Stops serving (new requests are refused at once, running ones get
    /// [`SHUTDOWN_GRACE`]), stops reporting, and closes the store. When it
    /// returns `Ok`, nothing of the node runs and its directory is free.
    pub async fn shutdown(mut self) -> Result<(), StoreError> {
        if let Some((registry, _)) = self.local.take() {
            registry.withdraw(self.node_id);
        }
        if let Some(service) = &self.service {
            service.close();
        }
        if let Some(tx) = self.reporter_stop.take() {
            let _ = tx.send(());
        }
        if let Some(tx) = self.gc_stop.take() {
            let _ = tx.send(());
        }
        if let Some(tx) = self.scrub_stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.scrub.take()
            && let Err(e) = task.await
        {
            tracing::warn!(node = self.node_id, error = %e, "scrubber ended badly");
        }
        if let Some(task) = self.gc.take()
            && let Err(e) = task.await
        {
            tracing::warn!(node = self.node_id, error = %e, "orphan reclaim ended badly");
        }
        if let Some(task) = self.reporter.take()
            && let Err(e) = task.await
        {
            tracing::warn!(node = self.node_id, error = %e, "usage reporter ended badly");
        }
        if let Some(tx) = self.server_stop.take() {
            let _ = tx.send(());
        }
        if let Some(mut server) = self.server.take() {
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    tracing::warn!(node = self.node_id, error = %e, "server ended with an error")
                }
                Ok(Err(e)) => tracing::warn!(node = self.node_id, error = %e, "server task failed"),
                Err(_) => {
                    tracing::warn!(
                        node = self.node_id,
                        "requests still running after the grace period: cut off"
                    );
                    server.abort();
                    let _ = server.await;
                }
            }
        }
        self.service = None;
        let Some(mut store) = self.store.take() else {
            return Ok(());
        };
        // Other holders are blocking tasks still finishing an operation the
        // server no longer waits for; they end on their own.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let store = loop {
            match Arc::try_unwrap(store) {
                Ok(store) => break store,
                Err(shared) if tokio::time::Instant::now() < deadline => {
                    store = shared;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => {
                    return Err(StoreError::Internal(
                        "the shard store is still in use after shutdown".into(),
                    ));
                }
            }
        };
        // Closing RocksDB waits for its background work: not on the reactor.
        tokio::task::spawn_blocking(move || drop(store))
            .await
            .map_err(|e| StoreError::Internal(format!("closing the store failed: {e}")))?;
        tracing::info!(node = self.node_id, "storage node stopped");
        Ok(())
    }
}

impl Drop for StorageNode {
    fn drop(&mut self) {
        // A node dropped without shutdown() still stops serving.
        if let Some((registry, _)) = self.local.take() {
            registry.withdraw(self.node_id);
        }
        if let Some(service) = &self.service {
            service.close();
        }
        if let Some(tx) = self.server_stop.take() {
            let _ = tx.send(());
        }
        if let Some(tx) = self.reporter_stop.take() {
            let _ = tx.send(());
        }
    }
}

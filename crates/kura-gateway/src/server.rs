//! Starting and stopping a gateway: the Archive service with health,
//! reflection and compression on the gRPC port, and the ops port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kura_proto::meta_client::MetaClient;
use kura_proto::v1::archive_server::ArchiveServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::codec::CompressionEncoding;

use crate::admin::{AdminService, DrillHook};
use crate::cluster::ClusterView;
use crate::repair::{RepairConfig, RepairHandle, Repairer};
use crate::service::ArchiveService;

/// Largest gRPC message accepted or sent: a 4 MiB chunk plus framing.
pub const MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024 + 64 * 1024;
/// How long shutdown waits for running requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What a gateway needs to start.
#[derive(Clone)]
pub struct GatewayConfig {
    /// Metadata voters, `host:port`.
    pub meta_endpoints: Vec<String>,
    /// The site this gateway runs in: reads prefer its holders.
    pub site: Option<String>,
    /// A Store must have received all its bytes within this time. Storage
    /// nodes reclaim unreferenced shards only after a longer grace period.
    pub store_deadline: Duration,
    /// A shard fetch still running after this gets another holder asked
    /// (the most a read waits: it hedges sooner, after a few times the
    /// recent fetch time, see `ClusterView::hedge_after`).
    pub read_hedge_after: Duration,
    /// Connect timeout to storage nodes.
    pub connect_timeout: Duration,
    /// Timeout of one shard call.
    pub shard_call_timeout: Duration,
    /// How long a fetched cluster map is used before it is fetched again.
    pub map_refresh: Duration,
    /// Once k + 1 shards of a segment are durable, the longest the
    /// remaining shard writes may take before they count as unplaced
    /// (they get three times what the first k + 1 took, at least 300 ms).
    pub straggler_grace: Duration,
    /// Run the repair loop in this gateway (`None`: another gateway does).
    pub repair: Option<RepairConfig>,
    /// How drills take a site out (`kura dev` only).
    pub drill: Option<Arc<dyn DrillHook>>,
    /// TLS (this gateway's node certificate, the cluster's CA) or
    /// plaintext: for serving the public API (client certificates
    /// optional there, checked per call) and for calling voters and
    /// storage nodes.
    pub transport: kura_auth::Transport,
    /// How long a read waits for one voter's stale answer (a manifest)
    /// before it asks the next voter.
    pub stale_read_attempt: Duration,
    /// How long Retrieve and Stat wait for their audit entry's commit
    /// before they answer anyway; the entry stays queued and is committed
    /// once a leader is back (ARCHITECTURE.md, "Reads without the leader").
    pub read_audit_wait: Duration,
    /// Manifests a gateway keeps for reads (0: none), and how long each is
    /// used (at most half of repair's `delete_moved_after`: see the
    /// `manifests` module).
    pub manifest_cache_entries: usize,
    pub manifest_cache_ttl: Duration,
    /// Storage nodes running in this process: their shards are read
    /// directly, not through a socket (see [`kura_proto::local`]).
    pub local_shards: kura_proto::local::LocalShards,
    /// The cluster keys instances are sealed under (encryption at rest is
    /// always on: there is no gateway without keys).
    pub keys: Arc<kura_seal::Keyring>,
    /// How long start waits for the metadata cluster to check the keys.
    pub key_check_wait: Duration,
    /// What the gateway accepts: sizes, streams in flight, pages, the
    /// DICOM parser's depth and element count.
    pub limits: crate::limits::Limits,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("meta_endpoints", &self.meta_endpoints)
            .field("site", &self.site)
            .field("store_deadline", &self.store_deadline)
            .field("repair", &self.repair)
            .field("drill", &self.drill.is_some())
            .field("tls", &self.transport.is_tls())
            .field("local_shards", &self.local_shards)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl GatewayConfig {
    pub fn new(
        meta_endpoints: Vec<String>,
        transport: kura_auth::Transport,
        keys: Arc<kura_seal::Keyring>,
    ) -> Self {
        Self {
            keys,
            key_check_wait: Duration::from_secs(60),
            limits: crate::limits::Limits::default(),
            transport,
            meta_endpoints,
            site: None,
            store_deadline: Duration::from_secs(30 * 60),
            read_hedge_after: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(2),
            shard_call_timeout: Duration::from_secs(30),
            map_refresh: Duration::from_secs(2),
            straggler_grace: Duration::from_secs(2),
            repair: Some(RepairConfig::default()),
            drill: None,
            stale_read_attempt: Duration::from_millis(300),
            manifest_cache_entries: 20_000,
            manifest_cache_ttl: Duration::from_secs(10),
            read_audit_wait: Duration::from_millis(50),
            local_shards: kura_proto::local::LocalShards::default(),
        }
    }
}

/// State shared by the services of one gateway.
pub(crate) struct Inner {
    pub(crate) config: GatewayConfig,
    pub(crate) cluster: ClusterView,
    /// Authentication (certificates, bearer tokens) and the audit trail.
    pub(crate) gate: crate::auth::Gate,
    /// Set once the repair loop runs here.
    pub(crate) repair: std::sync::OnceLock<RepairHandle>,
    /// Manifests committed or read here, for reads.
    pub(crate) manifests: crate::manifests::ManifestCache,
    /// Streams in flight, per caller and in all.
    pub(crate) admission: Arc<crate::limits::Admission>,
}

/// A running gateway.
pub struct Gateway {
    addr: SocketAddr,
    ops_addr: Option<SocketAddr>,
    stop: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
    /// Keeps the token list fresh; aborted at shutdown.
    refresher: Option<JoinHandle<()>>,
    /// Keeps the certificate expiry gauge current.
    expiry: Option<JoinHandle<()>>,
    repairer: Option<Repairer>,
}

impl Gateway {
    /// Serves the Archive service (plus health and reflection) on
    /// `listener`, and the ops endpoints on `ops_listener` if given.
    pub async fn start(
        config: GatewayConfig,
        listener: TcpListener,
        ops_listener: Option<TcpListener>,
    ) -> std::io::Result<Gateway> {
        // Install the recorder before the first metric is recorded.
        let _ = crate::ops::metrics_handle();
        let addr = listener.local_addr()?;
        let ops_addr = ops_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        config
            .limits
            .validate()
            .map_err(|e| std::io::Error::other(format!("[limits]: {e}")))?;
        let meta = MetaClient::new(config.meta_endpoints.clone(), config.transport.clone());
        // A wrong key file must stop the gateway before it serves anything.
        crate::seal::verify_keys(&meta, &config.keys, config.key_check_wait)
            .await
            .map_err(std::io::Error::other)?;
        let expiry = config
            .transport
            .material()
            .map(|m| crate::ops::export_cert_expiry(std::sync::Arc::clone(m)));
        let server = config
            .transport
            .server(kura_auth::ClientCerts::Optional)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let tokens = Arc::new(crate::tokens::TokenCache::default());
        let audit = kura_proto::audit::AuditSink::start(
            meta.clone(),
            format!(
                "gateway {addr}{}",
                config
                    .site
                    .as_deref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            ),
        );
        let gate = crate::auth::Gate {
            enforce: config.transport.is_tls(),
            tokens: Arc::clone(&tokens),
            audit,
            keys: Arc::clone(&config.keys),
        };
        // A cached manifest must still find the shards it names: use it
        // for at most half the time an old holder keeps a moved shard.
        let cache_ttl = match &config.repair {
            Some(rc) => config.manifest_cache_ttl.min(rc.delete_moved_after / 2),
            None => config.manifest_cache_ttl,
        };
        let inner = Arc::new(Inner {
            manifests: crate::manifests::ManifestCache::new(
                config.manifest_cache_entries,
                cache_ttl,
            ),
            gate: gate.clone(),
            admission: crate::limits::Admission::new(config.limits),
            cluster: ClusterView::new(
                meta,
                config.transport.clone(),
                config.map_refresh,
                config.connect_timeout,
                config.shard_call_timeout,
            ),
            config,
            repair: std::sync::OnceLock::new(),
        });
        let repairer = inner
            .config
            .repair
            .clone()
            .map(|rc| Repairer::start(Arc::clone(&inner), rc, repair_owner(&inner, addr)));
        if let Some(r) = &repairer {
            let _ = inner.repair.set(r.handle());
        }
        let archive = ArchiveServer::new(ArchiveService {
            inner: Arc::clone(&inner),
        })
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(inner.config.limits.message_bytes())
        .max_encoding_message_size(MESSAGE_BYTES_MAX);
        let admin = tonic::service::interceptor::InterceptedService::new(
            kura_proto::v1::admin_server::AdminServer::new(AdminService {
                inner: Arc::clone(&inner),
            }),
            crate::auth::RoleGuard {
                service: "Admin",
                roles: &[kura_auth::ClientRole::Admin],
                gate: gate.clone(),
            },
        );
        let audit_service = tonic::service::interceptor::InterceptedService::new(
            kura_proto::v1::audit_server::AuditServer::new(crate::audit::AuditService {
                inner: Arc::clone(&inner),
            }),
            crate::auth::RoleGuard {
                service: "Audit",
                roles: &[kura_auth::ClientRole::Auditor, kura_auth::ClientRole::Admin],
                gate,
            },
        );
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<ArchiveServer<ArchiveService>>().await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(kura_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| std::io::Error::other(format!("reflection: {e}")))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| std::io::Error::other(format!("reflection: {e}")))?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let router = server
            .initial_stream_window_size(Some(4 * 1024 * 1024))
            .initial_connection_window_size(Some(16 * 1024 * 1024))
            .tcp_nodelay(true)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(archive)
            .add_service(admin)
            .add_service(audit_service);
        let serve =
            router.serve_with_incoming_shutdown(kura_proto::net::incoming(listener), async {
                let _ = stop_rx.await;
            });
        let mut tasks = vec![tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "gateway server ended with an error");
            }
        })];
        let refresher = inner
            .gate
            .enforce
            .then(|| tokens.spawn_refresher(inner.cluster.meta().clone()));
        let mut stop = vec![stop_tx];
        if let Some(ops) = ops_listener {
            let (tx, rx) = oneshot::channel::<()>();
            let app = crate::ops::router(Arc::clone(&inner));
            tasks.push(tokio::spawn(async move {
                let r = axum::serve(ops, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "ops server ended with an error");
                }
            }));
            stop.push(tx);
        }
        tracing::info!(%addr, ops = ?ops_addr, "gateway started");
        Ok(Gateway {
            addr,
            ops_addr,
            stop,
            tasks,
            refresher,
            expiry,
            repairer,
        })
    }

    /// The gRPC address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The repair loop's handle, when it runs in this gateway.
    pub fn repair(&self) -> Option<RepairHandle> {
        self.repairer.as_ref().map(Repairer::handle)
    }

    /// The ops (HTTP) address, if served.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    /// Stops accepting calls; running ones get [`SHUTDOWN_GRACE`].
    pub async fn shutdown(mut self) {
        if let Some(r) = self.refresher.take() {
            r.abort();
        }
        if let Some(e) = self.expiry.take() {
            e.abort();
        }
        if let Some(r) = self.repairer.take() {
            r.stop().await;
        }
        for tx in self.stop.drain(..) {
            let _ = tx.send(());
        }
        for mut task in self.tasks.drain(..) {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                tracing::warn!("gateway requests still running after the grace period: cut off");
                task.abort();
            }
        }
    }
}

/// The name this gateway's repair leases carry: its certificate's identity
/// and its address, so a restarted gateway takes up its own leases again
/// and two gateways never share one; without TLS, a random name.
fn repair_owner(inner: &Inner, addr: SocketAddr) -> String {
    match inner
        .config
        .transport
        .material()
        .and_then(|m| m.principal())
    {
        Some(p) => format!("{}@{addr}", p.uri()),
        None => format!("gateway-{:016x}@{addr}", rand::random::<u64>()),
    }
}

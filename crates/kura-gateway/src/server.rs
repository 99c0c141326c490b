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

use crate::admin::AdminService;
use crate::cluster::ClusterView;
use crate::repair::Repairer;
use crate::service::ArchiveService;
pub use crate::state::GatewayConfig;
use crate::state::{Inner, RepairHandle};

/// Largest gRPC message accepted or sent: a 4 MiB chunk plus framing.
pub const MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024 + 64 * 1024;
/// How long shutdown waits for running requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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
    /// What the services share (the DICOM front door serves over it too).
    inner: Arc<Inner>,
    dicom: Option<crate::dimse::DicomServer>,
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
            inner,
            dicom: None,
        })
    }

    /// Serves the DICOM front door (DIMSE) on `listener` beside the gRPC
    /// API, over the same archive core; its address.
    pub fn serve_dicom(
        &mut self,
        config: crate::dimse::DicomConfig,
        listener: TcpListener,
    ) -> std::io::Result<SocketAddr> {
        if self.dicom.is_some() {
            return Err(std::io::Error::other("the DICOM front door already runs"));
        }
        let server = crate::dimse::DicomServer::start(Arc::clone(&self.inner), config, listener)?;
        let addr = server.addr;
        self.dicom = Some(server);
        Ok(addr)
    }

    /// The DICOM front door's address, if it runs.
    pub fn dicom_addr(&self) -> Option<SocketAddr> {
        self.dicom.as_ref().map(|d| d.addr)
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
        if let Some(d) = self.dicom.take() {
            d.shutdown(SHUTDOWN_GRACE).await;
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

//! `kura-dev`: a whole Kura cluster in one process, on loopback.
//!
//! [`DevCluster`] starts, in this order: the metadata voters (one per site),
//! bootstraps them once, the storage nodes (`nodes_per_site` per site),
//! records the cluster map and erasure profile once, then the gateway. It is
//! what `kura dev` runs and what the end-to-end tests start.
//!
//! Everything lives under one data directory:
//!
//! ```text
//! DATA/dev.json          the layout: sites, ids and the ports chosen at first start
//! DATA/meta-<id>/        a metadata voter's RocksDB and snapshots
//! DATA/store-<id>/       a storage node's shard files and index
//! DATA/tls/              the CA, node and client certificates (see [`certs`])
//! ```
//!
//! Every link runs TLS with a certificate per process, as in a real
//! cluster, unless [`DevConfig::tls`] is off (`kura dev --insecure`).
//!
//! The first start picks free ports; a restart with the same directory binds
//! the same ones again (the cluster map and the Raft membership name them),
//! so the cluster comes back as it was.

pub mod certs;

/// The repair settings a dev cluster's gateway runs with
/// ([`DevConfig::repair`]), for callers that may not link the gateway.
pub use kura_gateway::RepairConfig;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kura_auth::{NodeRole, Transport};
use kura_erasure::EcParams;
use kura_gateway::{Gateway, GatewayConfig};
use kura_meta::service::ServiceTimeouts;
use kura_meta::{MetaConfig, MetaNode, RaftTimings};
use kura_placement::{ClusterMap, NodeInfo, NodeState, Site};
use kura_proto::local::LocalShards;
use kura_proto::meta::{
    AdminRequest, AdminResponse, Applied, Command, Consistency, Query, QueryResult, Rejected, Voter,
};
use kura_proto::meta_client::{MetaClient, MetaClientError, Retry};
use kura_store::{StorageNode, StoreConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// Default gateway port of `kura dev`.
pub const DEV_PORT_DEFAULT: u16 = 7600;

/// The calling AE titles a dev cluster admits (tenant `default`, reader
/// and writer): the default titles of dcmtk's tools and pynetdicom, so
/// they work against `kura dev` as typed.
pub const DEV_DICOM_PEERS: [&str; 6] = [
    "ECHOSCU",
    "STORESCU",
    "FINDSCU",
    "MOVESCU",
    "GETSCU",
    "PYNETDICOM",
];

/// [`DEV_DICOM_PEERS`] as peers of tenant `default`.
pub fn dev_dicom_peers() -> Vec<kura_gateway::dimse::DicomPeer> {
    DEV_DICOM_PEERS.iter().map(|t| dev_dicom_peer(t)).collect()
}

/// A calling AE title of tenant `default` that may store and read.
pub fn dev_dicom_peer(ae_title: &str) -> kura_gateway::dimse::DicomPeer {
    kura_gateway::dimse::DicomPeer {
        ae_title: ae_title.to_string(),
        tenant: "default".into(),
        roles: kura_auth::ClientRoles::of(&[
            kura_auth::ClientRole::Reader,
            kura_auth::ClientRole::Writer,
        ]),
    }
}

/// How a dev cluster is shaped and where it listens.
#[derive(Clone, Debug)]
pub struct DevConfig {
    pub data_dir: PathBuf,
    /// Loopback address everything binds to.
    pub host: IpAddr,
    /// Gateway port; 0 picks a free one.
    pub port: u16,
    /// Ops (HTTP) port of the gateway; `None`: no ops port; `Some(0)`: any.
    pub ops_port: Option<u16>,
    pub sites: usize,
    pub nodes_per_site: usize,
    /// Erasure profile of a new cluster.
    pub profile: EcParams,
    /// Each storage node's capacity; `None`: from its disk.
    pub node_capacity_bytes: Option<u64>,
    /// Storage nodes reclaim unreferenced shards older than this.
    pub orphan_grace: Duration,
    /// Time between two orphan sweeps.
    pub gc_interval: Duration,
    /// Raft timings of the voters.
    pub timings: RaftTimings,
    /// How often storage nodes report (their heartbeat).
    pub report_interval: Duration,
    /// Metadata service timeouts, failure detection included.
    pub meta_timeouts: ServiceTimeouts,
    /// The gateway's repair loop; `None` turns repair off.
    pub repair: Option<RepairConfig>,
    /// TLS with certificates from `DATA/tls` on every link (the default);
    /// off: plaintext, for quick experiments only.
    pub tls: bool,
    /// The gateway's limits on every input.
    pub limits: kura_gateway::Limits,
    /// The DICOM front door's port (`None`: not served; `Some(0)`: any).
    pub dicom_port: Option<u16>,
    /// The DICOM front door: AE title, known peers, limits.
    pub dicom: kura_gateway::dimse::DicomConfig,
}

impl DevConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: DEV_PORT_DEFAULT,
            ops_port: None,
            sites: 3,
            nodes_per_site: 3,
            profile: EcParams::default(),
            node_capacity_bytes: None,
            orphan_grace: kura_store::gc::ORPHAN_GRACE_DEFAULT,
            gc_interval: kura_store::gc::GC_INTERVAL_DEFAULT,
            timings: RaftTimings::default(),
            report_interval: kura_store::node::REPORT_INTERVAL_DEFAULT,
            repair: Some(RepairConfig::default()),
            meta_timeouts: ServiceTimeouts::default(),
            tls: true,
            limits: kura_gateway::Limits::default(),
            dicom_port: None,
            dicom: kura_gateway::dimse::DicomConfig {
                peers: dev_dicom_peers(),
                ..Default::default()
            },
        }
    }

    /// The transport of process `role`/`id` of this cluster.
    pub fn transport(&self, role: NodeRole, id: u64) -> Result<Transport, DevError> {
        if !self.tls {
            return Ok(Transport::Plaintext);
        }
        certs::transport(&certs::tls_dir(&self.data_dir), role, id).map_err(|e| DevError::DataDir {
            path: certs::tls_dir(&self.data_dir),
            detail: e.to_string(),
        })
    }

    /// The dev cluster's key file: `DATA/cluster.keys`.
    pub fn keys_file(&self) -> PathBuf {
        self.data_dir.join(KEYS_FILE)
    }

    /// The gateway's cluster keys, from `DATA/cluster.keys`; a new data
    /// directory gets a fresh key (version 1), readable by its owner only.
    /// Encryption at rest is on whether or not TLS is.
    pub fn keyring(&self) -> Result<std::sync::Arc<kura_seal::Keyring>, DevError> {
        let path = self.keys_file();
        let fail = |detail: String| DevError::DataDir {
            path: path.clone(),
            detail,
        };
        if !path.exists() {
            kura_seal::add_key_version(&path).map_err(|e| fail(e.to_string()))?;
        }
        kura_seal::Keyring::from_file(&path)
            .map(std::sync::Arc::new)
            .map_err(|e| fail(e.to_string()))
    }
}

/// The dev cluster's key file, in its data directory.
pub const KEYS_FILE: &str = "cluster.keys";

/// Why a dev cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{0}")]
    Config(String),
    #[error("cannot bind {addr}: {source}{hint}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("{what}: {detail}")]
    Start { what: String, detail: String },
    #[error("data directory {path}: {detail}")]
    DataDir { path: PathBuf, detail: String },
}

fn start_err(what: impl Into<String>, detail: impl ToString) -> DevError {
    DevError::Start {
        what: what.into(),
        detail: detail.to_string(),
    }
}

/// The layout saved in `dev.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Layout {
    pub sites: Vec<String>,
    /// (Raft id, site, port) of each voter.
    pub voters: Vec<LayoutNode>,
    /// (node id, site, port) of each storage node.
    pub storage: Vec<LayoutNode>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayoutNode {
    pub id: u64,
    pub site: String,
    pub port: u16,
}

const LAYOUT_FILE: &str = "dev.json";

/// A running dev cluster.
pub struct DevCluster {
    config: DevConfig,
    layout: Layout,
    voters: Vec<Option<MetaNode>>,
    storage: Vec<Option<StorageNode>>,
    gateway: Option<Gateway>,
    meta_endpoints: Vec<String>,
    drills: tokio::sync::mpsc::Receiver<DrillRequest>,
    /// The storage nodes the gateway reads in process.
    local_shards: LocalShards,
}

/// A drill's request to take a site out or bring it back, sent by the
/// gateway's Admin service to whoever runs the cluster (see
/// [`DevCluster::next_drill`]).
pub struct DrillRequest {
    pub site: String,
    pub take_out: bool,
    reply: tokio::sync::oneshot::Sender<Result<Vec<u64>, String>>,
}

/// The gateway's side of drills: a request over a channel.
struct DevDrill {
    tx: tokio::sync::mpsc::Sender<DrillRequest>,
}

impl DevDrill {
    async fn ask(&self, site: &str, take_out: bool) -> Result<Vec<u64>, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(DrillRequest {
                site: site.to_string(),
                take_out,
                reply,
            })
            .await
            .map_err(|_| "the dev cluster is not serving drill requests".to_string())?;
        answer
            .await
            .map_err(|_| "the dev cluster dropped the drill request".to_string())?
    }
}

#[kura_gateway::admin::async_trait]
impl kura_gateway::DrillHook for DevDrill {
    async fn take_out(&self, site: &str) -> Result<Vec<u64>, String> {
        self.ask(site, true).await
    }

    async fn restore(&self, site: &str) -> Result<Vec<u64>, String> {
        self.ask(site, false).await
    }
}

async fn bind(host: IpAddr, port: u16, restart: bool) -> Result<TcpListener, DevError> {
    let addr = SocketAddr::new(host, port);
    TcpListener::bind(addr).await.map_err(|source| DevError::Bind {
        addr,
        source,
        hint: if restart {
            " (a restart binds the ports of the first start, recorded in dev.json: is another kura dev running on this data directory, or another program on that port?)"
        } else {
            ""
        },
    })
}

impl DevCluster {
    /// Starts the cluster in `config.data_dir`, creating it on first use.
    pub async fn start(config: DevConfig) -> Result<DevCluster, DevError> {
        kura_auth::install_crypto_provider();
        if config.sites == 0 || config.nodes_per_site == 0 {
            return Err(DevError::Config(
                "a dev cluster needs at least one site and one node per site".into(),
            ));
        }
        let data_err = |detail: String| DevError::DataDir {
            path: config.data_dir.clone(),
            detail,
        };
        std::fs::create_dir_all(&config.data_dir).map_err(|e| data_err(e.to_string()))?;
        let layout_path = config.data_dir.join(LAYOUT_FILE);
        let saved: Option<Layout> = match std::fs::read(&layout_path) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                data_err(format!("{LAYOUT_FILE} is not a dev cluster layout: {e}"))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(data_err(format!("cannot read {LAYOUT_FILE}: {e}"))),
        };
        let restart = saved.is_some();
        if restart && !config.keys_file().exists() {
            return Err(data_err(format!(
                "this data directory was made by an older kura dev, before encryption at rest (it has {LAYOUT_FILE} but no {KEYS_FILE}); this build does not read its unencrypted manifests: move the directory away or delete it, and start again"
            )));
        }
        // The keys before anything starts: a key file that does not read
        // stops the start here.
        let keys = config.keyring()?;
        let host = config.host;

        // Listeners first: a fresh cluster learns its ports from them.
        let site_names: Vec<String> = match &saved {
            Some(l) => l.sites.clone(),
            None => (0..config.sites)
                .map(|i| format!("site-{}", (b'a' + (i % 26) as u8) as char))
                .collect(),
        };
        let mut voter_listeners = Vec::new();
        let mut storage_listeners = Vec::new();
        let layout = match saved {
            Some(l) => {
                for v in &l.voters {
                    voter_listeners.push(bind(host, v.port, true).await?);
                }
                for s in &l.storage {
                    storage_listeners.push(bind(host, s.port, true).await?);
                }
                l
            }
            None => {
                let mut voters = Vec::new();
                let mut storage = Vec::new();
                for (i, site) in site_names.iter().enumerate() {
                    let l = bind(host, 0, false).await?;
                    let port = l.local_addr().map_err(|e| start_err("listener", e))?.port();
                    voters.push(LayoutNode {
                        id: i as u64 + 1,
                        site: site.clone(),
                        port,
                    });
                    voter_listeners.push(l);
                }
                for (i, site) in site_names.iter().enumerate() {
                    for j in 0..config.nodes_per_site {
                        let l = bind(host, 0, false).await?;
                        let port = l.local_addr().map_err(|e| start_err("listener", e))?.port();
                        storage.push(LayoutNode {
                            id: (i * config.nodes_per_site + j) as u64 + 1,
                            site: site.clone(),
                            port,
                        });
                        storage_listeners.push(l);
                    }
                }
                let layout = Layout {
                    sites: site_names.clone(),
                    voters,
                    storage,
                };
                let json = serde_json::to_vec_pretty(&layout)
                    .map_err(|e| data_err(format!("cannot encode the layout: {e}")))?;
                let tmp = config.data_dir.join(format!("{LAYOUT_FILE}.tmp"));
                std::fs::write(&tmp, json)
                    .and_then(|()| std::fs::rename(&tmp, &layout_path))
                    .map_err(|e| data_err(format!("cannot write {LAYOUT_FILE}: {e}")))?;
                layout
            }
        };
        let gateway_listener = bind(host, config.port, false).await?;
        let ops_listener = match config.ops_port {
            Some(p) => Some(bind(host, p, false).await?),
            None => None,
        };
        let dicom_listener = match config.dicom_port {
            Some(p) => Some(bind(host, p, false).await?),
            None => None,
        };

        if config.tls {
            let mut nodes = vec![(NodeRole::Gateway, 0)];
            nodes.extend(layout.voters.iter().map(|v| (NodeRole::Meta, v.id)));
            nodes.extend(layout.storage.iter().map(|s| (NodeRole::Store, s.id)));
            certs::ensure(&certs::tls_dir(&config.data_dir), host, &nodes)
                .map_err(|e| data_err(format!("certificates: {e}")))?;
        }

        // Metadata voters.
        let meta_endpoints: Vec<String> = layout
            .voters
            .iter()
            .map(|v| SocketAddr::new(host, v.port).to_string())
            .collect();
        let mut voters = Vec::new();
        for (v, listener) in layout.voters.iter().zip(voter_listeners) {
            let node = MetaNode::start(
                MetaConfig {
                    id: v.id,
                    data_dir: config.data_dir.join(format!("meta-{}", v.id)),
                    advertise_addr: SocketAddr::new(host, v.port).to_string(),
                    timings: config.timings,
                    timeouts: config.meta_timeouts,
                    transport: config.transport(NodeRole::Meta, v.id)?,
                },
                listener,
            )
            .await
            .map_err(|e| start_err(format!("metadata voter {}", v.id), e))?;
            voters.push(Some(node));
        }
        // The gateway's identity bootstraps the cluster and records the map.
        let gateway_transport = config.transport(NodeRole::Gateway, 0)?;
        let meta = MetaClient::new(meta_endpoints.clone(), gateway_transport.clone());
        if !restart {
            bootstrap(&meta, &layout, host).await?;
        }

        // Storage nodes.
        let local_shards = LocalShards::default();
        let mut storage = Vec::new();
        for (s, listener) in layout.storage.iter().zip(storage_listeners) {
            let sc = store_config(&config, s.id, &meta_endpoints, &local_shards)?;
            let node = StorageNode::start(sc, listener)
                .await
                .map_err(|e| start_err(format!("storage node {}", s.id), e))?;
            storage.push(Some(node));
        }
        init_map(&meta, &layout, &storage, &config, host).await?;

        // The gateway.
        let mut gc = GatewayConfig::new(meta_endpoints.clone(), gateway_transport, keys);
        // Orphan reclaim must never race a live store.
        gc.store_deadline = gc.store_deadline.min(config.orphan_grace / 2);
        gc.repair = config.repair.clone();
        gc.limits = config.limits;
        gc.local_shards = local_shards.clone();
        let (drill_tx, drills) = tokio::sync::mpsc::channel(4);
        gc.drill = Some(std::sync::Arc::new(DevDrill { tx: drill_tx }));
        let mut gateway = Gateway::start(gc, gateway_listener, ops_listener)
            .await
            .map_err(|e| start_err("gateway", e))?;
        if let Some(l) = dicom_listener {
            gateway
                .serve_dicom(config.dicom.clone(), l)
                .map_err(|e| start_err("DICOM front door", e))?;
        }
        Ok(DevCluster {
            config,
            layout,
            voters,
            storage,
            gateway: Some(gateway),
            meta_endpoints,
            drills,
            local_shards,
        })
    }

    /// The next drill request (`kura drill site-down` through the Admin
    /// API); carry it out with [`DevCluster::carry_out`].
    pub async fn next_drill(&mut self) -> Option<DrillRequest> {
        self.drills.recv().await
    }

    /// Stops (or starts) every storage node of the request's site, as a
    /// datacenter outage would, and answers the request.
    pub async fn carry_out(&mut self, req: DrillRequest) {
        let ids: Vec<u64> = self
            .layout
            .storage
            .iter()
            .filter(|n| n.site == req.site)
            .map(|n| n.id)
            .collect();
        let result = if ids.is_empty() {
            Err(format!("no storage node in site {:?}", req.site))
        } else {
            let mut out = Ok(ids.clone());
            for &id in &ids {
                let r = if req.take_out {
                    self.stop_storage_node(id).await
                } else {
                    self.start_storage_node(id).await
                };
                if let Err(e) = r {
                    out = Err(e.to_string());
                    break;
                }
            }
            out
        };
        tracing::warn!(site = %req.site, take_out = req.take_out, ?ids, ok = result.is_ok(), "drill request carried out");
        let _ = req.reply.send(result);
    }

    /// The gateway's gRPC address.
    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        self.gateway.as_ref().map(Gateway::addr)
    }

    /// The DICOM front door's address, when it is served.
    pub fn dicom_addr(&self) -> Option<SocketAddr> {
        self.gateway.as_ref().and_then(Gateway::dicom_addr)
    }

    /// The gateway's ops (HTTP) address.
    /// The gateway's repair loop, when it runs.
    pub fn repair(&self) -> Option<kura_gateway::RepairHandle> {
        self.gateway.as_ref().and_then(Gateway::repair)
    }

    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.gateway.as_ref().and_then(Gateway::ops_addr)
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn config(&self) -> &DevConfig {
        &self.config
    }

    pub fn meta_endpoints(&self) -> &[String] {
        &self.meta_endpoints
    }

    /// The transport of the gateway's identity: what a test uses to call
    /// voters and storage nodes as the gateway does.
    pub fn node_transport(&self) -> Result<Transport, DevError> {
        self.config.transport(NodeRole::Gateway, 0)
    }

    /// A client's transport with a certificate for `roles` in `tenant`,
    /// issued by the dev CA if missing (plaintext when TLS is off).
    pub fn client_transport(
        &self,
        tenant: &str,
        roles: &[kura_auth::ClientRole],
    ) -> Result<Transport, DevError> {
        if !self.config.tls {
            return Ok(Transport::Plaintext);
        }
        let dir = certs::tls_dir(&self.config.data_dir);
        certs::client_transport(&dir, tenant, kura_auth::ClientRoles::of(roles)).map_err(|e| {
            DevError::DataDir {
                path: dir,
                detail: e.to_string(),
            }
        })
    }

    /// The running storage node `id`, if it runs.
    pub fn storage_node(&self, id: u64) -> Option<&StorageNode> {
        self.storage_index(id)
            .and_then(|i| self.storage.get(i))
            .and_then(Option::as_ref)
    }

    fn storage_index(&self, id: u64) -> Option<usize> {
        self.layout.storage.iter().position(|s| s.id == id)
    }

    /// The data directory of storage node `id`.
    pub fn storage_dir(&self, id: u64) -> PathBuf {
        storage_dir(&self.config, id)
    }

    /// Stops storage node `id` for real: its server and tasks end and its
    /// store closes. The cluster map is not told (as when a node dies).
    pub async fn stop_storage_node(&mut self, id: u64) -> Result<(), DevError> {
        let i = self
            .storage_index(id)
            .ok_or_else(|| DevError::Config(format!("no storage node {id}")))?;
        if let Some(node) = self.storage[i].take() {
            node.shutdown()
                .await
                .map_err(|e| start_err(format!("stopping storage node {id}"), e))?;
        }
        Ok(())
    }

    /// Stops metadata voter `id` for real (its server, Raft and database),
    /// as when its machine dies. Not restartable: for tests of what keeps
    /// working without it (or without a quorum).
    pub async fn stop_voter(&mut self, id: u64) -> Result<(), DevError> {
        let slot = self
            .voters
            .iter_mut()
            .find(|v| v.as_ref().is_some_and(|n| n.id() == id))
            .ok_or_else(|| DevError::Config(format!("no running voter {id}")))?;
        if let Some(node) = slot.take() {
            node.shutdown()
                .await
                .map_err(|e| start_err(format!("stopping voter {id}"), e))?;
        }
        Ok(())
    }

    /// Starts storage node `id` again on its port and directory.
    pub async fn start_storage_node(&mut self, id: u64) -> Result<(), DevError> {
        let i = self
            .storage_index(id)
            .ok_or_else(|| DevError::Config(format!("no storage node {id}")))?;
        if self.storage[i].is_some() {
            return Ok(());
        }
        let port = self.layout.storage[i].port;
        let listener = bind(self.config.host, port, true).await?;
        let sc = store_config(&self.config, id, &self.meta_endpoints, &self.local_shards)?;
        let node = StorageNode::start(sc, listener)
            .await
            .map_err(|e| start_err(format!("storage node {id}"), e))?;
        self.storage[i] = Some(node);
        Ok(())
    }

    /// A human summary of what runs where.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let host = self.config.host;
        for site in &self.layout.sites {
            let voters: Vec<String> = self
                .layout
                .voters
                .iter()
                .filter(|v| &v.site == site)
                .map(|v| format!("meta {} at {}", v.id, SocketAddr::new(host, v.port)))
                .collect();
            let nodes: Vec<String> = self
                .layout
                .storage
                .iter()
                .filter(|s| &s.site == site)
                .map(|s| format!("store {} at {}", s.id, SocketAddr::new(host, s.port)))
                .collect();
            out.push_str(&format!(
                "  {site}: {}; {}\n",
                voters.join(", "),
                nodes.join(", ")
            ));
        }
        out
    }

    /// Stops everything: gateway, storage nodes, voters.
    pub async fn shutdown(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await;
        }
        for (i, node) in self.storage.iter_mut().enumerate() {
            if let Some(n) = node.take()
                && let Err(e) = n.shutdown().await
            {
                tracing::warn!(node = i + 1, error = %e, "storage node did not stop cleanly");
            }
        }
        for v in self.voters.iter_mut() {
            if let Some(n) = v.take() {
                let id = n.id();
                if let Err(e) = n.shutdown().await {
                    tracing::warn!(voter = id, error = %e, "metadata voter did not stop cleanly");
                }
            }
        }
    }
}

fn storage_dir(config: &DevConfig, id: u64) -> PathBuf {
    config.data_dir.join(format!("store-{id}"))
}

/// How storage node `id` of this dev cluster is configured, at first
/// start and at every restart alike.
fn store_config(
    config: &DevConfig,
    id: u64,
    meta_endpoints: &[String],
    local_shards: &LocalShards,
) -> Result<StoreConfig, DevError> {
    let mut sc = StoreConfig::new(id, storage_dir(config, id));
    sc.capacity_bytes = config.node_capacity_bytes;
    sc.meta_endpoints = meta_endpoints.to_vec();
    sc.orphan_grace = config.orphan_grace;
    sc.gc_interval = config.gc_interval;
    sc.report_interval = config.report_interval;
    sc.transport = config.transport(NodeRole::Store, id)?;
    sc.local = Some(local_shards.clone());
    Ok(sc)
}

const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

async fn bootstrap(meta: &MetaClient, layout: &Layout, host: IpAddr) -> Result<(), DevError> {
    let voters: Vec<Voter> = layout
        .voters
        .iter()
        .map(|v| Voter {
            id: v.id,
            addr: SocketAddr::new(host, v.port).to_string(),
        })
        .collect();
    let first = voters
        .first()
        .map(|v| v.addr.clone())
        .ok_or_else(|| DevError::Config("no voters".into()))?;
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        match meta
            .admin_at(
                &first,
                &AdminRequest::Bootstrap {
                    voters: voters.clone(),
                },
            )
            .await
        {
            Ok(_) | Err(MetaClientError::FailedPrecondition(_)) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "bootstrap not yet possible");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(start_err("bootstrapping the metadata cluster", e)),
        }
    }
    loop {
        if let Ok(AdminResponse::Status(s)) = meta.admin_at(&first, &AdminRequest::Status).await
            && s.current_leader.is_some()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(start_err(
                "metadata cluster",
                format!("no leader elected within {STARTUP_DEADLINE:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records the cluster map and profile if the cluster has none yet (also
/// after a first start that stopped half-way).
async fn init_map(
    meta: &MetaClient,
    layout: &Layout,
    storage: &[Option<StorageNode>],
    config: &DevConfig,
    host: IpAddr,
) -> Result<(), DevError> {
    let current = meta
        .query(&Query::GetClusterMap {
            consistency: Consistency::Linearizable,
        })
        .await
        .map_err(|e| start_err("reading the cluster map", e))?;
    if let QueryResult::ClusterMap { map: Some(_), .. } = current {
        return Ok(());
    }
    let mut map = ClusterMap::new();
    map.sites = layout
        .sites
        .iter()
        .map(|name| Site { name: name.clone() })
        .collect();
    for (s, node) in layout.storage.iter().zip(storage) {
        let status = match node.as_ref().and_then(StorageNode::store) {
            Some(store) => store
                .status(s.id)
                .map_err(|e| start_err(format!("storage node {} status", s.id), e))?,
            None => return Err(start_err(format!("storage node {}", s.id), "not running")),
        };
        map.nodes.insert(
            s.id,
            NodeInfo {
                id: s.id,
                name: format!("store-{}", s.id),
                site: s.site.clone(),
                addr: SocketAddr::new(host, s.port).to_string(),
                state: NodeState::Up,
                capacity_bytes: status.capacity_bytes,
                used_bytes: status.used_bytes,
            },
        );
    }
    kura_placement::check_layout(&map, &config.profile).map_err(|e| {
        DevError::Config(format!(
            "this dev cluster cannot hold {}: {e}",
            config.profile
        ))
    })?;
    match meta
        .propose(
            &Command::InitCluster {
                map,
                profile: config.profile,
            },
            Retry::Idempotent,
        )
        .await
    {
        Ok(Ok(Applied::MapChanged { .. })) | Ok(Err(Rejected::Invalid(_))) => Ok(()),
        Ok(other) => Err(start_err("recording the cluster map", format!("{other:?}"))),
        Err(e) => Err(start_err("recording the cluster map", e)),
    }
}

/// The directory is a dev cluster's (it has a layout file).
pub fn is_dev_data_dir(dir: &Path) -> bool {
    dir.join(LAYOUT_FILE).is_file()
}

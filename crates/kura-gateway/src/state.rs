//! What a gateway is configured with, and the state its services share
//! ([`Inner`]). Every service module depends on this one and on the leaf
//! modules it names (cluster view, authentication, limits, the manifest
//! cache); this one depends on no service, so they do not import each
//! other in a circle. `server` starts and stops the services over it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

use crate::cluster::ClusterView;

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

/// How a cluster takes a site out for a drill and brings it back. `kura
/// dev` provides one (it stops its in-process storage nodes); a cluster of
/// separate processes has none, and the drill runs the operator's commands.
#[tonic::async_trait]
pub trait DrillHook: Send + Sync {
    /// Stops the site's storage nodes; answers their ids.
    async fn take_out(&self, site: &str) -> Result<Vec<u64>, String>;
    /// Starts them again.
    async fn restore(&self, site: &str) -> Result<Vec<u64>, String>;
}

/// How repair runs.
#[derive(Clone, Debug)]
pub struct RepairConfig {
    /// Repair traffic (bytes the rebuilding nodes read), per second.
    pub rate_bytes_per_sec: u64,
    /// Pause between passes that found nothing to do (a `repair --now`, or
    /// a map change seen by the pass, wakes it earlier).
    pub idle_interval: Duration,
    /// How long one rebuild call may take.
    pub rebuild_timeout: Duration,
    /// Manifests fetched per index page.
    pub page: u32,
    /// Instances repaired at once (each rebuilds its segments in turn).
    pub concurrency: usize,
    /// A moved shard stays on its old holder this long after the new
    /// holder is recorded, so a read that fetched the older manifest just
    /// before still finds it.
    pub delete_moved_after: Duration,
    /// How long a repair lease on an instance lasts unless renewed.
    pub lease_ttl: Duration,
}

impl Default for RepairConfig {
    fn default() -> Self {
        Self {
            rate_bytes_per_sec: 50 * 1024 * 1024,
            idle_interval: Duration::from_secs(30),
            rebuild_timeout: Duration::from_secs(120),
            page: 500,
            concurrency: 4,
            delete_moved_after: Duration::from_secs(60),
            lease_ttl: Duration::from_secs(120),
        }
    }
}

/// What repair is doing, for `kura admin status`, `/repair` and metrics.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairStatus {
    /// A pass is working through its queue.
    pub active: bool,
    pub passes: u64,
    /// Instances still queued in this pass.
    pub queue_instances: u64,
    /// Shards still queued in this pass.
    pub queue_shards: u64,
    /// Shard bytes still to rebuild in this pass.
    pub queue_bytes: u64,
    /// Seconds until the queue is done at the current pace.
    pub eta_seconds: Option<f64>,
    pub rate_bytes_per_sec: u64,
    /// Totals since this gateway started.
    pub instances_repaired: u64,
    pub shards_rebuilt: u64,
    pub shards_moved: u64,
    pub damaged_rewritten: u64,
    pub bytes_written: u64,
    pub bytes_read: u64,
    /// Bytes the rebuilding nodes read from another site.
    pub cross_site_bytes: u64,
    pub failures: u64,
    /// Instances skipped because another gateway held their repair lease.
    pub leased_elsewhere: u64,
    /// Instances the last pass could not bring to full protection (no free
    /// node for a shard, too few readable shards).
    pub waiting: u64,
    pub last_pass_started_unix_ms: Option<i64>,
    pub last_pass_seconds: Option<f64>,
    pub last_error: Option<String>,
}

/// What the repair loop and its handles share.
pub(crate) struct RepairShared {
    pub(crate) status: Mutex<RepairStatus>,
    pub(crate) wake: Notify,
    /// The instances this gateway holds a repair lease on, released at
    /// shutdown so a restarted gateway (or another) takes them up at once.
    pub(crate) held: Mutex<std::collections::BTreeSet<(String, String)>>,
}

/// A handle to ask repair for its status or to start a pass now.
#[derive(Clone)]
pub struct RepairHandle {
    pub(crate) shared: Arc<RepairShared>,
}

impl RepairHandle {
    pub fn status(&self) -> RepairStatus {
        self.shared
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Starts a pass now (or right after the running one).
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }
}

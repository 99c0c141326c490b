//! The gateway's view of the cluster: the map and erasure profile (cached,
//! refreshed from the metadata cluster every few seconds), one shard client
//! per storage node (connections are reused), and the metadata client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kura_erasure::EcParams;
use kura_placement::{ClusterMap, NodeId, NodeInfo};
use kura_proto::meta::{Consistency, Query};
use kura_proto::meta_client::{MetaClient, MetaClientError};
use kura_proto::shards_client::ShardsClient;

use crate::error::GatewayError;

/// A map and profile as fetched at one moment.
#[derive(Debug)]
pub struct ClusterState {
    pub map: ClusterMap,
    pub profile: EcParams,
    fetched: Instant,
}

/// Shared by every request of one gateway.
pub struct ClusterView {
    meta: MetaClient,
    transport: kura_auth::Transport,
    refresh: Duration,
    connect_timeout: Duration,
    shard_timeout: Duration,
    cached: tokio::sync::Mutex<Option<Arc<ClusterState>>>,
    clients: Mutex<HashMap<NodeId, (String, ShardsClient)>>,
    /// Nodes that just failed a shard call, missed a store's straggler
    /// grace or left a read waiting past its hedge, until when: placement
    /// avoids them and reads ask them last, from the next request on, long
    /// before the failure detector marks them down.
    suspects: Mutex<HashMap<NodeId, Instant>>,
    any_suspect: std::sync::atomic::AtomicBool,
    /// How long shard fetches take here, for the read hedge.
    fetch_time: Mutex<FetchTime>,
}

/// A smoothed shard-fetch time and its variation, as TCP estimates its
/// round-trip time (RFC 6298): a read asks another holder once a fetch
/// takes longer than `smoothed + 4 × variation`, so a holder that went
/// silent costs a read a few tens of milliseconds, not a fixed delay.
#[derive(Clone, Copy, Debug, Default)]
struct FetchTime {
    smoothed: Option<f64>,
    variation: f64,
}

/// The earliest a read hedges, however fast fetches are: below this,
/// scheduling noise on a busy machine would double the reads.
pub const HEDGE_FLOOR: Duration = Duration::from_millis(25);

/// How long one voter may take to answer for the cluster map.
const MAP_ATTEMPT: Duration = Duration::from_millis(500);

/// How long a node stays suspect after it failed a call. After that one
/// request tries it again (and suspects it again if it still fails).
pub const SUSPECT_FOR: Duration = Duration::from_secs(10);

impl ClusterView {
    pub fn new(
        meta: MetaClient,
        transport: kura_auth::Transport,
        refresh: Duration,
        connect_timeout: Duration,
        shard_timeout: Duration,
    ) -> Self {
        Self {
            meta,
            transport,
            refresh,
            connect_timeout,
            shard_timeout,
            cached: tokio::sync::Mutex::new(None),
            clients: Mutex::new(HashMap::new()),
            suspects: Mutex::new(HashMap::new()),
            any_suspect: std::sync::atomic::AtomicBool::new(false),
            fetch_time: Mutex::new(FetchTime::default()),
        }
    }

    /// A shard fetch that answered took `took`.
    pub fn observe_fetch(&self, took: Duration) {
        let r = took.as_secs_f64();
        let mut t = self
            .fetch_time
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match t.smoothed {
            None => {
                t.smoothed = Some(r);
                t.variation = r / 2.0;
            }
            Some(s) => {
                t.variation = 0.75 * t.variation + 0.25 * (s - r).abs();
                t.smoothed = Some(0.875 * s + 0.125 * r);
            }
        }
    }

    /// How long a read lets a shard fetch run before it asks another
    /// holder: `smoothed + 4 × variation` of recent fetches, between
    /// [`HEDGE_FLOOR`] and `most` (also the answer before any fetch).
    pub fn hedge_after(&self, most: Duration) -> Duration {
        let t = *self
            .fetch_time
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match t.smoothed {
            None => most,
            Some(s) => {
                Duration::from_secs_f64(s + 4.0 * t.variation).clamp(HEDGE_FLOOR.min(most), most)
            }
        }
    }

    /// `node` failed a call or kept one waiting: avoid it for a while.
    pub fn suspect(&self, node: NodeId, why: &str) {
        let mut suspects = self.suspects.lock().unwrap_or_else(PoisonError::into_inner);
        if suspects
            .insert(node, Instant::now() + SUSPECT_FOR)
            .is_none()
        {
            metrics::counter!("kura_gateway_suspected_nodes_total").increment(1);
            tracing::info!(
                node,
                why,
                "storage node suspect: placement avoids it, reads ask it last"
            );
        }
        self.any_suspect
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// `node` answered a call: no longer suspect.
    pub fn cleared(&self, node: NodeId) {
        if !self.any_suspect.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut suspects = self.suspects.lock().unwrap_or_else(PoisonError::into_inner);
        if suspects.remove(&node).is_some() {
            tracing::info!(node, "storage node answers again; no longer suspect");
        }
        self.any_suspect
            .store(!suspects.is_empty(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The nodes suspect now.
    fn suspects_now(&self) -> Vec<NodeId> {
        if !self.any_suspect.load(std::sync::atomic::Ordering::Relaxed) {
            return Vec::new();
        }
        let mut suspects = self.suspects.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        suspects.retain(|_, until| *until > now);
        self.any_suspect
            .store(!suspects.is_empty(), std::sync::atomic::Ordering::Relaxed);
        suspects.keys().copied().collect()
    }

    /// `map` with the suspect nodes marked down (placement then avoids
    /// them; read plans ask them last), or `None` when no node is suspect.
    pub fn avoiding_suspects(&self, map: &ClusterMap) -> Option<ClusterMap> {
        let suspects = self.suspects_now();
        if suspects.is_empty() {
            return None;
        }
        let mut out = map.clone();
        let mut changed = false;
        for id in suspects {
            if let Some(n) = out.nodes.get_mut(&id)
                && n.state.readable()
            {
                n.state = kura_placement::NodeState::Down;
                changed = true;
            }
        }
        changed.then_some(out)
    }

    pub fn meta(&self) -> &MetaClient {
        &self.meta
    }

    /// How this gateway reaches the other processes.
    pub fn transport(&self) -> &kura_auth::Transport {
        &self.transport
    }

    /// The map and profile, at most `refresh` old. A stale read is enough:
    /// placement records the holders it chose in the manifest, and reads
    /// follow the manifest.
    pub async fn state(&self) -> Result<Arc<ClusterState>, GatewayError> {
        let mut cached = self.cached.lock().await;
        if let Some(s) = cached.as_ref()
            && s.fetched.elapsed() < self.refresh
        {
            return Ok(Arc::clone(s));
        }
        // From any voter: no election in the way of a map.
        let (map, profile) = self
            .meta
            .query_any(
                &Query::GetClusterMap {
                    consistency: Consistency::Stale,
                },
                MAP_ATTEMPT,
            )
            .await
            .map_err(meta_error)?
            .into_cluster_map()?;
        let (Some(map), Some(profile)) = (map, profile) else {
            return Err(GatewayError::Unavailable(
                "the cluster is not initialised yet (no cluster map)".into(),
            ));
        };
        let state = Arc::new(ClusterState {
            map,
            profile,
            fetched: Instant::now(),
        });
        *cached = Some(Arc::clone(&state));
        Ok(state)
    }

    /// Forgets the cached map, so the next request fetches it.
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    /// The client of `node` (created on first use, replaced if the node's
    /// address changed).
    pub fn client(&self, node: &NodeInfo) -> Result<ShardsClient, GatewayError> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((addr, c)) = clients.get(&node.id)
            && *addr == node.addr
        {
            return Ok(c.clone());
        }
        let c = ShardsClient::with_timeouts(
            &node.addr,
            &self.transport,
            self.connect_timeout,
            self.shard_timeout,
        )
        .map_err(|e| {
            GatewayError::Internal(format!("storage node {} ({}): {e}", node.id, node.addr))
        })?;
        clients.insert(node.id, (node.addr.clone(), c.clone()));
        Ok(c)
    }
}

/// Walks a paged manifest index (a node's holdings, the attention list)
/// from its start, handing each page to `page`, until the index ends or
/// `page` answers false.
pub async fn manifest_pages(
    meta: &MetaClient,
    mut query: impl FnMut(Option<Vec<u8>>) -> Query,
    mut page: impl FnMut(Vec<kura_placement::Manifest>) -> bool,
) -> Result<(), GatewayError> {
    let mut after = None;
    loop {
        let (manifests, next) = meta
            .query(&query(after.take()))
            .await
            .map_err(meta_error)?
            .into_manifest_page()?;
        if !page(manifests) {
            return Ok(());
        }
        match next {
            Some(n) => after = Some(n),
            None => return Ok(()),
        }
    }
}

/// Every damaged shard storage nodes reported (and repair has not cleared
/// yet), grouped by the instance whose manifest references it: (tenant,
/// SOP Instance UID) → (manifest, its bad shards as (segment, index,
/// node)). Damage is rare and bounded by what nodes report, so the whole
/// list is read.
pub async fn damaged_instances(meta: &MetaClient) -> Result<DamagedInstances, GatewayError> {
    let mut out = DamagedInstances::new();
    let mut after = None;
    loop {
        let (shards, next) = meta
            .query(&Query::Damaged {
                after: after.take(),
                limit: 1000,
                consistency: Consistency::Linearizable,
            })
            .await
            .map_err(meta_error)?
            .into_damaged_page()?;
        for (d, m) in shards {
            let Some(m) = m else { continue };
            out.entry((m.tenant.clone(), m.sop_instance_uid.clone()))
                .or_insert_with(|| (m, Vec::new()))
                .1
                .push((d.segment, d.index, d.node));
        }
        match next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

/// See [`damaged_instances`].
pub type DamagedInstances = std::collections::BTreeMap<
    (String, String),
    (kura_placement::Manifest, Vec<(u32, u8, NodeId)>),
>;

/// A metadata client error as the gateway reports it.
pub fn meta_error(e: MetaClientError) -> GatewayError {
    match e {
        MetaClientError::Unavailable(m) => {
            GatewayError::Unavailable(format!("metadata cluster unavailable: {m}"))
        }
        MetaClientError::Unknown(m) => GatewayError::Unavailable(format!(
            "metadata cluster did not answer in time; the outcome is unknown, retry: {m}"
        )),
        other => GatewayError::Internal(other.to_string()),
    }
}

//! Repair: brings every instance back to full protection.
//!
//! A pass builds a queue from the metadata cluster's indexes — manifests
//! naming a `Lost`, `Removed`, `Draining` or forgotten node as a holder,
//! manifests stored under-protected or with an unplaced shard, and shards
//! storage nodes reported damaged — and works through it **newest first**
//! (by the time the instance was stored: recent images are the ones
//! clinicians open). For each instance it re-reads the manifest
//! (linearizable), plans with [`kura_placement::repair_plan`], and asks each
//! target node to rebuild its shards (`RebuildShards`): the target reads
//! the k shards it needs straight from the holders, those in its own site
//! first, so bytes cross sites only when the target's site lacks k good
//! shards. The new holders are recorded with a compare-and-set on the
//! manifest's version; only after that commits is a moved shard deleted
//! from its old holder, so the last good copy of a shard is never deleted.
//!
//! Everything repair knows is derived from durable state at the start of a
//! pass, so it resumes after a crash or restart by itself: a rebuild that
//! was written but not recorded is found again, placed on the same target
//! (placement is deterministic), and its put is a no-op.
//!
//! The traffic (bytes read by rebuilding nodes) is rate-limited, so client
//! latency stays close to normal while a site is rebuilt.
//!
//! Several gateways may run repair. Each takes a **lease** on an instance
//! before it repairs it (`Command::ClaimRepair`, granted by the metadata
//! cluster unless another gateway holds an unexpired lease on it), renews
//! it between segments of a long instance and releases it when done, so two
//! gateways never rebuild the same shards; an instance leased elsewhere is
//! skipped until a later pass. A gateway that dies holding leases delays
//! their instances by at most one lease (`lease_ttl`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kura_placement::{
    ClusterMap, DamageAction, DamagedCopy, Manifest, NodeId, NodeState, SegmentManifest,
    damage_action, repair_plan,
};
use kura_proto::meta::{
    Applied, Command, Consistency, DAMAGED_SHARDS_MAX, DamagedShard, Query, QueryResult, Rejected,
};
use kura_proto::meta_client::{MetaClient, Retry};
use kura_proto::shards_client::{ShardId, ShardState};
use kura_proto::v1::internal as pb;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::state::{Inner, RepairShared};
pub use crate::state::{RepairConfig, RepairHandle, RepairStatus};

/// The repair loop of one gateway. Dropping it does not stop the loop;
/// [`Repairer::stop`] does.
pub struct Repairer {
    shared: Arc<RepairShared>,
    task: JoinHandle<()>,
    /// For releasing the leases at [`Repairer::stop`].
    worker: Worker,
}

impl Repairer {
    pub(crate) fn start(inner: Arc<Inner>, config: RepairConfig, owner: String) -> Repairer {
        let shared = Arc::new(RepairShared {
            status: Mutex::new(RepairStatus {
                rate_bytes_per_sec: config.rate_bytes_per_sec,
                ..RepairStatus::default()
            }),
            wake: Notify::new(),
            held: Mutex::new(std::collections::BTreeSet::new()),
        });
        let worker = Worker {
            inner,
            limiter: Arc::new(tokio::sync::Mutex::new(RateLimiter::new(
                config.rate_bytes_per_sec,
            ))),
            config,
            shared: Arc::clone(&shared),
            owner: Arc::from(owner),
        };
        let task = tokio::spawn(worker.clone().run());
        Repairer {
            shared,
            task,
            worker,
        }
    }

    pub fn handle(&self) -> RepairHandle {
        RepairHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Stops the loop and releases this gateway's repair leases (a crash
    /// leaves them to expire after `lease_ttl`).
    pub async fn stop(self) {
        self.task.abort();
        let held: Vec<_> = std::mem::take(
            &mut *self
                .shared
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
        .into_iter()
        .collect();
        if held.is_empty() {
            return;
        }
        let release = self.worker.lease(Vec::new(), held);
        match tokio::time::timeout(Duration::from_secs(2), release).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "repair leases not released; they expire"),
            Err(_) => tracing::warn!("repair leases not released in 2 s; they expire"),
        }
    }
}

/// A token bucket over bytes, one second deep.
struct RateLimiter {
    rate: f64,
    next: Instant,
}

impl RateLimiter {
    fn new(bytes_per_sec: u64) -> Self {
        Self {
            rate: bytes_per_sec.max(1) as f64,
            next: Instant::now(),
        }
    }

    async fn take(&mut self, bytes: u64) {
        let now = Instant::now();
        // Unused budget older than a second is not saved up.
        let floor = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        let start = self.next.max(floor);
        self.next = start + Duration::from_secs_f64(bytes as f64 / self.rate);
        if start > now {
            tokio::time::sleep_until(start.into()).await;
        }
    }
}

/// One queued instance.
struct Item {
    tenant: String,
    uid: String,
    stored_at: i64,
    damaged: Vec<DamagedShard>,
}

/// One rebuild call: shards `want` of `segment` onto `target`, copied
/// from their holders (`copy`) or decoded from k others.
struct Job<'a> {
    segment: &'a SegmentManifest,
    target: NodeId,
    want: &'a [u8],
    copy: bool,
}

/// What one instance's repair did.
#[derive(Default)]
struct Done {
    rebuilt: u64,
    moved: u64,
    damaged: u64,
    written: u64,
    read: u64,
    cross_site: u64,
    failures: u64,
    /// Not at full protection afterwards (waiting for nodes or shards).
    waiting: bool,
    last_error: Option<String>,
}

#[derive(Clone)]
struct Worker {
    inner: Arc<Inner>,
    config: RepairConfig,
    limiter: Arc<tokio::sync::Mutex<RateLimiter>>,
    shared: Arc<RepairShared>,
    /// The name on this gateway's repair leases.
    owner: Arc<str>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn shard_bytes(m: &Manifest, segment: &SegmentManifest) -> u64 {
    segment
        .shards
        .first()
        .map(|s| u64::from(s.len))
        .unwrap_or_else(|| u64::from(m.ec.shard_len(segment.data_len)))
}

impl Worker {
    fn status(&self) -> std::sync::MutexGuard<'_, RepairStatus> {
        self.shared
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn meta(&self) -> &MetaClient {
        self.inner.cluster.meta()
    }

    async fn run(self) {
        loop {
            let started = Instant::now();
            let progressed = match self.pass().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "repair pass failed; retrying later");
                    self.status().last_error = Some(e);
                    false
                }
            };
            {
                let mut s = self.status();
                s.active = false;
                s.last_pass_seconds = Some(started.elapsed().as_secs_f64());
                s.queue_instances = 0;
                s.queue_shards = 0;
                s.queue_bytes = 0;
                s.eta_seconds = if s.waiting > 0 { None } else { Some(0.0) };
                publish_gauges(&s);
            }
            if !progressed {
                tokio::select! {
                    _ = self.shared.wake.notified() => {}
                    _ = tokio::time::sleep(self.config.idle_interval) => {}
                }
            }
        }
    }

    async fn map(&self) -> Result<ClusterMap, String> {
        let (map, _) = self
            .meta()
            .query(&Query::GetClusterMap {
                consistency: Consistency::Linearizable,
            })
            .await
            .map_err(|e| e.to_string())?
            .into_cluster_map()
            .map_err(|e| e.to_string())?;
        map.ok_or_else(|| "no cluster map yet".into())
    }

    /// Queues every manifest of a paged index.
    async fn walk(
        &self,
        query: impl FnMut(Option<Vec<u8>>) -> Query,
        out: &mut HashMap<(String, String), Item>,
    ) -> Result<(), String> {
        crate::cluster::manifest_pages(self.meta(), query, |page| {
            for m in page {
                queue(out, m, None);
            }
            true
        })
        .await
        .map_err(|e| e.to_string())
    }

    /// Builds the queue, newest first: every instance with a shard on a
    /// leaving node, stored under-protected, or with a damaged shard.
    async fn build_queue(&self, map: &ClusterMap) -> Result<Vec<Item>, String> {
        let mut items: HashMap<(String, String), Item> = HashMap::new();
        let holders = self
            .meta()
            .query(&Query::HolderNodes {
                consistency: Consistency::Linearizable,
            })
            .await
            .map_err(|e| e.to_string())?
            .into_holder_nodes()
            .map_err(|e| e.to_string())?;
        let page = self.config.page;
        for id in holders {
            let leaving = map.node(id).is_none_or(|n| {
                matches!(
                    n.state,
                    NodeState::Lost | NodeState::Removed | NodeState::Draining
                )
            });
            if leaving {
                self.walk(
                    |after| Query::ManifestsOnNode {
                        node: id,
                        after,
                        limit: page,
                        consistency: Consistency::Linearizable,
                    },
                    &mut items,
                )
                .await?;
            }
        }
        self.walk(
            |after| Query::Attention {
                after,
                limit: page,
                consistency: Consistency::Linearizable,
            },
            &mut items,
        )
        .await?;
        let mut after = None;
        let mut stale = Vec::new();
        loop {
            let (shards, next) = self
                .meta()
                .query(&Query::Damaged {
                    after,
                    limit: page,
                    consistency: Consistency::Linearizable,
                })
                .await
                .map_err(|e| e.to_string())?
                .into_damaged_page()
                .map_err(|e| e.to_string())?;
            for (d, m) in shards {
                match damage_action(map, m.as_ref(), &copy_of(&d)) {
                    // No manifest references this shard there any more.
                    DamageAction::Stale => stale.push(d),
                    DamageAction::RebuildInPlace | DamageAction::Wait => {
                        if let Some(m) = m {
                            queue(&mut items, m, Some(d));
                        }
                    }
                }
            }
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        self.clear_damaged(stale).await;

        // Keep what has work under the current map.
        let mut queue: Vec<Item> = items.into_values().collect();
        queue.sort_by(|a, b| {
            b.stored_at
                .cmp(&a.stored_at)
                .then_with(|| a.tenant.cmp(&b.tenant))
                .then_with(|| a.uid.cmp(&b.uid))
        });
        Ok(queue)
    }

    async fn clear_damaged(&self, shards: Vec<DamagedShard>) {
        for chunk in shards.chunks(DAMAGED_SHARDS_MAX) {
            let cmd = Command::ClearDamaged {
                shards: chunk.to_vec(),
            };
            if let Err(e) = self.meta().propose(&cmd, Retry::Idempotent).await {
                tracing::warn!(error = %e, "could not clear repaired damage records");
            }
        }
    }

    /// One pass; answers whether anything was repaired.
    async fn pass(&self) -> Result<bool, String> {
        let map = self.map().await?;
        let queue = self.build_queue(&map).await?;
        {
            let mut s = self.status();
            s.active = !queue.is_empty();
            s.passes += 1;
            s.last_pass_started_unix_ms = Some(now_ms());
            s.waiting = 0;
        }
        metrics::counter!("kura_repair_passes_total").increment(1);
        if queue.is_empty() {
            return Ok(false);
        }
        let mut remaining_instances = queue.len() as u64;
        tracing::info!(instances = remaining_instances, "repair pass started");
        let started = Instant::now();
        let mut done_bytes = 0u64;
        let mut progressed = false;
        // Estimates for the status: planned now, refined per item.
        let mut estimates: Vec<(u64, u64)> = Vec::with_capacity(queue.len());
        for chunk in queue.chunks(16) {
            let mut batch = Vec::with_capacity(chunk.len());
            for item in chunk {
                batch.push(estimate(self.meta(), &map, item));
            }
            estimates.extend(futures::future::join_all(batch).await);
        }
        let mut remaining_shards: u64 = estimates.iter().map(|e| e.0).sum();
        let mut remaining_bytes: u64 = estimates.iter().map(|e| e.1).sum();
        // Instances are started newest first, `concurrency` at a time, each
        // under a lease taken (in small batches) just before it starts.
        let concurrency = self.config.concurrency.max(1);
        let mut running = tokio::task::JoinSet::new();
        let mut pending = queue.into_iter().zip(estimates);
        let mut leased: std::collections::VecDeque<(Item, (u64, u64), Instant)> =
            std::collections::VecDeque::new();
        let mut release: Vec<(String, String)> = Vec::new();
        loop {
            while running.len() < concurrency {
                if leased.is_empty() {
                    let batch: Vec<_> = pending.by_ref().take(concurrency).collect();
                    if batch.is_empty() {
                        break;
                    }
                    let keys = batch
                        .iter()
                        .map(|(i, _)| (i.tenant.clone(), i.uid.clone()))
                        .collect();
                    let claimed_at = Instant::now();
                    let granted = self.lease(keys, std::mem::take(&mut release)).await;
                    let mut s = self.status();
                    for (i, (item, est)) in batch.into_iter().enumerate() {
                        match &granted {
                            Ok(g) if g.get(i) == Some(&true) => {
                                leased.push_back((item, est, claimed_at));
                                continue;
                            }
                            Ok(_) => s.leased_elsewhere += 1,
                            Err(e) => {
                                s.waiting += 1;
                                s.last_error = Some(format!("repair lease: {e}"));
                            }
                        }
                        remaining_instances -= 1;
                        remaining_shards = remaining_shards.saturating_sub(est.0);
                        remaining_bytes = remaining_bytes.saturating_sub(est.1);
                    }
                    continue;
                }
                let Some((item, est, claimed_at)) = leased.pop_front() else {
                    break;
                };
                let w = self.clone();
                running.spawn(async move {
                    let done = match w.repair_one(&item, claimed_at).await {
                        Ok(d) => d,
                        Err(e) => Done {
                            failures: 1,
                            waiting: true,
                            last_error: Some(e),
                            ..Done::default()
                        },
                    };
                    (done, est, (item.tenant, item.uid))
                });
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let (done, (est_shards, est_bytes)) = match joined {
                Ok((done, est, key)) => {
                    release.push(key);
                    (done, est)
                }
                Err(e) => (
                    Done {
                        failures: 1,
                        waiting: true,
                        last_error: Some(format!("repair task failed: {e}")),
                        ..Done::default()
                    },
                    (0, 0),
                ),
            };
            remaining_instances = remaining_instances.saturating_sub(1);
            remaining_shards = remaining_shards.saturating_sub(est_shards);
            remaining_bytes = remaining_bytes.saturating_sub(est_bytes);
            {
                let mut s = self.status();
                s.queue_instances = remaining_instances;
                s.queue_shards = remaining_shards;
                s.queue_bytes = remaining_bytes;
                let elapsed = started.elapsed().as_secs_f64();
                let pace = if done_bytes > 0 && elapsed > 1.0 {
                    (done_bytes as f64 / elapsed).min(self.config.rate_bytes_per_sec as f64)
                } else {
                    self.config.rate_bytes_per_sec as f64
                };
                s.eta_seconds = Some(remaining_bytes as f64 / pace.max(1.0));
                publish_gauges(&s);
            }
            done_bytes += done.written;
            if done.rebuilt + done.moved + done.damaged > 0 {
                progressed = true;
            }
            let mut s = self.status();
            if done.rebuilt + done.moved + done.damaged > 0 && !done.waiting {
                s.instances_repaired += 1;
            }
            s.shards_rebuilt += done.rebuilt;
            s.shards_moved += done.moved;
            s.damaged_rewritten += done.damaged;
            s.bytes_written += done.written;
            s.bytes_read += done.read;
            s.cross_site_bytes += done.cross_site;
            s.failures += done.failures;
            if done.waiting {
                s.waiting += 1;
            }
            if let Some(e) = done.last_error {
                s.last_error = Some(e);
            }
            metrics::counter!("kura_repair_shards_total", "kind" => "rebuilt")
                .increment(done.rebuilt);
            metrics::counter!("kura_repair_shards_total", "kind" => "moved").increment(done.moved);
            metrics::counter!("kura_repair_shards_total", "kind" => "damaged")
                .increment(done.damaged);
            metrics::counter!("kura_repair_written_bytes_total").increment(done.written);
            metrics::counter!("kura_repair_read_bytes_total").increment(done.read);
            metrics::counter!("kura_repair_cross_site_bytes_total").increment(done.cross_site);
            metrics::counter!("kura_repair_failures_total").increment(done.failures);
        }
        if !release.is_empty()
            && let Err(e) = self.lease(Vec::new(), release).await
        {
            // They expire by themselves.
            tracing::warn!(error = %e, "could not release repair leases");
        }
        let s = self.status().clone();
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            waiting = s.waiting,
            written_bytes = s.bytes_written,
            cross_site_bytes = s.cross_site_bytes,
            "repair pass finished"
        );
        Ok(progressed)
    }

    /// Takes (or renews) this gateway's repair leases on `claim` and
    /// releases those on `release`; answers, per claimed instance, whether
    /// it is this gateway's to repair now.
    async fn lease(
        &self,
        claim: Vec<(String, String)>,
        release: Vec<(String, String)>,
    ) -> Result<Vec<bool>, String> {
        let cmd = Command::ClaimRepair {
            owner: self.owner.to_string(),
            now_unix_ms: now_ms(),
            ttl_ms: i64::try_from(self.config.lease_ttl.as_millis()).unwrap_or(i64::MAX),
            claim: claim.clone(),
            release: release.clone(),
        };
        // Counted as held before the claim is proposed: if this task is
        // aborted (shutdown) after the claim commits but before its answer
        // arrives, `stop` still releases it. Releasing a lease another
        // gateway holds changes nothing.
        self.shared
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(claim.iter().cloned());
        match self.meta().propose(&cmd, Retry::Idempotent).await {
            Ok(Ok(Applied::RepairClaimed { granted })) => {
                let mut held = self
                    .shared
                    .held
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                for key in release {
                    held.remove(&key);
                }
                for (key, granted) in claim.into_iter().zip(&granted) {
                    if !*granted {
                        held.remove(&key);
                    }
                }
                Ok(granted)
            }
            Ok(other) => Err(format!("unexpected answer to ClaimRepair: {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn manifest(&self, tenant: &str, uid: &str) -> Result<Option<Manifest>, String> {
        crate::manifests::from_leader(&self.inner.cluster, tenant, uid)
            .await
            .map_err(|e| e.to_string())
    }

    /// Asks `target` to rebuild `want` of one segment; answers the bytes
    /// read and how many of them crossed sites.
    async fn rebuild(
        &self,
        map: &ClusterMap,
        m: &Manifest,
        job: Job<'_>,
        exclude: &[(NodeId, u8)],
    ) -> Result<(u64, u64), String> {
        let Job {
            segment,
            target,
            want,
            copy,
        } = job;
        let node = map
            .node(target)
            .ok_or_else(|| format!("target node {target} is not in the map"))?;
        let target_site = node.site.clone();
        // Sources: readable holders, the target's site first.
        let mut sources: Vec<(bool, u8, NodeId, String)> = segment
            .shards
            .iter()
            .filter_map(|s| {
                let id = s.node?;
                let n = map.node(id)?;
                (n.state.readable() && id != target && !exclude.contains(&(id, s.index)))
                    .then(|| (n.site != target_site, s.index, id, n.addr.clone()))
            })
            .collect();
        sources.sort_by_key(|(other_site, index, _, _)| (*other_site, *index));
        let len = shard_bytes(m, segment);
        let k = u64::from(m.ec.data_shards);
        let budget = if copy {
            len * want.len() as u64
        } else {
            len * k
        };
        self.limiter.lock().await.take(budget).await;
        let request = pb::RebuildShardsRequest {
            object_key: Bytes::copy_from_slice(&m.object_key),
            segment: segment.index,
            data_shards: u32::from(m.ec.data_shards),
            parity_shards: u32::from(m.ec.parity_shards),
            segment_bytes: m.ec.segment_bytes,
            code: u32::from(m.ec.code.id()),
            data_len: segment.data_len,
            shard_blake3: segment
                .shards
                .iter()
                .map(|s| Bytes::copy_from_slice(&s.blake3))
                .collect(),
            want: want.iter().map(|&w| u32::from(w)).collect(),
            sources: sources
                .iter()
                .map(|(_, index, id, addr)| pb::RebuildSource {
                    index: u32::from(*index),
                    node: *id,
                    addr: addr.clone(),
                })
                .collect(),
        };
        let client = self.inner.cluster.client(node).map_err(|e| e.to_string())?;
        let answer = client
            .rebuild_shards(request, self.config.rebuild_timeout)
            .await
            .map_err(|e| format!("rebuild on node {target}: {e}"))?;
        let read: u64 = answer.reads.iter().map(|r| r.bytes).sum();
        let cross: u64 = answer
            .reads
            .iter()
            .filter(|r| map.site_of(r.node) != Some(target_site.as_str()))
            .map(|r| r.bytes)
            .sum();
        Ok((read, cross))
    }

    /// Repairs one instance under this gateway's lease, taken at
    /// `claimed_at`.
    async fn repair_one(&self, item: &Item, mut claimed_at: Instant) -> Result<Done, String> {
        let mut done = Done::default();
        let Some(m) = self.manifest(&item.tenant, &item.uid).await? else {
            self.clear_damaged(item.damaged.clone()).await;
            return Ok(done);
        };
        let map = self.map().await?;
        let copies: Vec<DamagedCopy> = item.damaged.iter().map(copy_of).collect();
        let plan = repair_plan(&map, &m, &copies).map_err(|e| e.to_string())?;
        let damaged: Vec<DamagedShard> = item
            .damaged
            .iter()
            .zip(&plan.damaged)
            .filter(|(_, (_, action))| *action != DamageAction::Stale)
            .map(|(d, _)| *d)
            .collect();
        let exclude: Vec<(NodeId, u8)> = damaged.iter().map(|d| (d.node, d.index)).collect();

        // Rebuilt or moved shards: (segment, index, from, target, copied).
        let mut placed: Vec<(u32, u8, Option<NodeId>, NodeId, bool)> = Vec::new();
        for seg_plan in &plan.segments {
            let Some(segment) = m.segment(seg_plan.segment) else {
                continue;
            };
            if claimed_at.elapsed() > self.config.lease_ttl / 3 {
                let key = (item.tenant.clone(), item.uid.clone());
                let renewed_at = Instant::now();
                if self.lease(vec![key], Vec::new()).await? != [true] {
                    // Expired and taken by another gateway: it repairs the
                    // instance; what was rebuilt here is reclaimed.
                    done.waiting = true;
                    done.last_error = Some("the repair lease passed to another gateway".into());
                    return Ok(done);
                }
                claimed_at = renewed_at;
            }
            // One rebuild call per target node.
            let mut by_target: BTreeMap<NodeId, Vec<(u8, Option<NodeId>, bool)>> = BTreeMap::new();
            for r in &seg_plan.shards {
                match r.target {
                    Some(t) => by_target.entry(t).or_default().push((
                        r.index,
                        r.from,
                        r.copy_source(&map).is_some(),
                    )),
                    None => done.waiting = true,
                }
            }
            let len = shard_bytes(&m, segment);
            // Every target of the segment rebuilds at once.
            let jobs: Vec<_> = by_target
                .into_iter()
                .map(|(target, shards)| {
                    let want: Vec<u8> = shards.iter().map(|s| s.0).collect();
                    let copy = shards.iter().all(|s| s.2);
                    (target, shards, want, copy)
                })
                .collect();
            let results = futures::future::join_all(jobs.iter().map(|(target, _, want, copy)| {
                let job = Job {
                    segment,
                    target: *target,
                    want,
                    copy: *copy,
                };
                self.rebuild(&map, &m, job, &exclude)
            }))
            .await;
            for ((target, shards, want, _), result) in jobs.into_iter().zip(results) {
                match result {
                    Ok((read, cross)) => {
                        done.read += read;
                        done.cross_site += cross;
                        done.written += len * want.len() as u64;
                        for (index, from, copied) in shards {
                            placed.push((segment.index, index, from, target, copied));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(uid = %m.sop_instance_uid, segment = segment.index, error = %e, "repair of a segment failed");
                        done.failures += 1;
                        done.waiting = true;
                        done.last_error = Some(e);
                    }
                }
            }
        }

        // Record the new holders, then remove moved shards from their old
        // holders (never before the record commits).
        let mut updated = m.clone();
        for &(segment, index, _, target, _) in &placed {
            updated
                .set_holder(segment, index, Some(target))
                .map_err(|e| e.to_string())?;
        }
        updated.protection = updated.protection_in(&map);
        if !placed.is_empty() || updated.protection != m.protection {
            updated.updated_at_unix_ms = now_ms();
            match self
                .meta()
                .propose(
                    &Command::CasManifest {
                        expected_version: m.version,
                        manifest: updated.clone(),
                    },
                    Retry::Once,
                )
                .await
            {
                Ok(Ok(Applied::ManifestUpdated { .. })) => {
                    self.inner.manifests.forget(&m.tenant, &m.sop_instance_uid);
                    for &(segment, index, from, target, copied) in &placed {
                        if copied {
                            done.moved += 1;
                        } else {
                            done.rebuilt += 1;
                        }
                        if let Some(old) = from.filter(|&o| o != target) {
                            self.delete_old(&map, &m, segment, index, old).await;
                        }
                    }
                }
                Ok(Err(Rejected::VersionMismatch { .. })) => {
                    // Someone else changed it; the next pass re-plans. The
                    // shards written here are reclaimed once unreferenced.
                    done.waiting = true;
                    return Ok(done);
                }
                Ok(other) => return Err(format!("compare-and-set refused: {other:?}")),
                Err(e) => return Err(format!("compare-and-set: {e}")),
            }
        }
        if updated.protection != kura_placement::Protection::Full {
            done.waiting = true;
        }

        // Damaged shards on healthy holders: rebuilt in place.
        let mut cleared = Vec::new();
        for d in damaged {
            match damage_action(&map, Some(&updated), &copy_of(&d)) {
                DamageAction::Stale => {
                    cleared.push(d);
                    continue;
                }
                // A leaving node's shards were re-planned above; a Down
                // one's wait for it.
                DamageAction::Wait => continue,
                DamageAction::RebuildInPlace => {}
            }
            let Some(segment) = updated.segment(d.segment) else {
                cleared.push(d);
                continue;
            };
            if self.healthy_on_holder(&map, &updated, &d).await {
                // Rewritten since this pass queued it (by another gateway,
                // or by this one for an earlier report).
                cleared.push(d);
                continue;
            }
            let len = shard_bytes(&updated, segment);
            let segment = segment.clone();
            let job = Job {
                segment: &segment,
                target: d.node,
                want: &[d.index],
                copy: false,
            };
            match self.rebuild(&map, &updated, job, &exclude).await {
                Ok((read, cross)) => {
                    done.read += read;
                    done.cross_site += cross;
                    done.written += len;
                    done.damaged += 1;
                    cleared.push(d);
                }
                Err(e) => {
                    done.failures += 1;
                    done.waiting = true;
                    done.last_error = Some(e);
                }
            }
        }
        self.clear_damaged(cleared).await;
        Ok(done)
    }

    /// Whether the holder of a reported shard has it again, good: the
    /// holder's own index is the truth (a damaged copy is quarantined there
    /// until a rewrite replaces it). Unknown counts as not.
    async fn healthy_on_holder(&self, map: &ClusterMap, m: &Manifest, d: &DamagedShard) -> bool {
        let Some(node) = map.node(d.node) else {
            return false;
        };
        let Ok(client) = self.inner.cluster.client(node) else {
            return false;
        };
        let id = ShardId {
            object_key: m.object_key,
            segment: d.segment,
            index: d.index,
        };
        matches!(client.stat_shard(&id).await, Ok(info) if info.state == ShardState::Ok)
    }

    /// Deletes a moved shard from its old holder, after a delay (see
    /// [`RepairConfig::delete_moved_after`]). Only called once the new
    /// holder is recorded: the last good copy is never the one deleted.
    async fn delete_old(
        &self,
        map: &ClusterMap,
        m: &Manifest,
        segment: u32,
        index: u8,
        old: NodeId,
    ) {
        let Some(node) = map.node(old) else { return };
        if !node.state.readable() {
            return; // gone with its node
        }
        let id = ShardId {
            object_key: m.object_key,
            segment,
            index,
        };
        let client = match self.inner.cluster.client(node) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(node = old, error = %e, "no client for an old holder");
                return;
            }
        };
        let delay = self.config.delete_moved_after;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = client.delete_shard(&id).await {
                tracing::warn!(node = old, shard = %id, error = %e, "could not delete a moved shard from its old holder");
            }
        });
    }
}

/// The damaged copy a metadata record names, as the repair rules take it.
fn copy_of(d: &DamagedShard) -> DamagedCopy {
    DamagedCopy {
        object_key: d.object_key,
        segment: d.segment,
        index: d.index,
        node: d.node,
    }
}

fn queue(out: &mut HashMap<(String, String), Item>, m: Manifest, damaged: Option<DamagedShard>) {
    let key = (m.tenant.clone(), m.sop_instance_uid.clone());
    let item = out.entry(key).or_insert_with(|| Item {
        tenant: m.tenant.clone(),
        uid: m.sop_instance_uid.clone(),
        stored_at: m.stored_at_unix_ms,
        damaged: Vec::new(),
    });
    if let Some(d) = damaged {
        item.damaged.push(d);
    }
}

/// (shards, bytes) an item's repair will write under `map`, from the
/// manifest as it is now (0 if it vanished).
async fn estimate(meta: &MetaClient, map: &ClusterMap, item: &Item) -> (u64, u64) {
    let answer = meta
        .query(&Query::GetManifest {
            tenant: item.tenant.clone(),
            sop_instance_uid: item.uid.clone(),
            consistency: Consistency::Stale,
        })
        .await;
    let Ok(QueryResult::Manifest(Some(m))) = answer else {
        return (0, 0);
    };
    let copies: Vec<DamagedCopy> = item.damaged.iter().map(copy_of).collect();
    let Ok(plan) = repair_plan(map, &m, &copies) else {
        return (0, 0);
    };
    let mut shards = 0;
    let mut bytes = 0;
    for d in plan.rewrites() {
        shards += 1;
        if let Some(s) = m.segment(d.segment) {
            bytes += shard_bytes(&m, s);
        }
    }
    for seg in &plan.segments {
        let n = seg.shards.iter().filter(|r| r.target.is_some()).count() as u64;
        shards += n;
        if let Some(s) = m.segment(seg.segment) {
            bytes += n * shard_bytes(&m, s);
        }
    }
    (shards, bytes)
}

fn publish_gauges(s: &RepairStatus) {
    metrics::gauge!("kura_repair_queue_instances").set(s.queue_instances as f64);
    metrics::gauge!("kura_repair_queue_shards").set(s.queue_shards as f64);
    metrics::gauge!("kura_repair_queue_bytes").set(s.queue_bytes as f64);
    metrics::gauge!("kura_repair_eta_seconds").set(s.eta_seconds.unwrap_or(-1.0));
    metrics::gauge!("kura_repair_waiting_instances").set(s.waiting as f64);
}

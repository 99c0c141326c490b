//! Orphan reclaim: copies of shards that no manifest places on this node
//! are deleted once they have been unreferenced for a grace period.
//!
//! Such copies come from three places: a store that failed after writing
//! some shards (client gone, gateway crash, a refusal after the data
//! arrived) leaves shards of an object no manifest names; a straggler put
//! that landed after its segment was re-placed elsewhere leaves a copy the
//! manifest does not count; a shard repair moved away stays on its old
//! holder if the gateway that was to delete it died. Every interval the node
//! walks its index and asks the metadata cluster, with a linearizable read,
//! which (object, segment, index) the manifests place on this node.
//!
//! - A shard of an object **no manifest names** is deleted once it is older
//!   than the grace period. Safe because a store finishes (commits or gives
//!   up) within its deadline, shorter than the grace period: such a shard
//!   can never become referenced.
//! - A shard whose manifest names **another holder** is deleted once this
//!   node has seen it so for the grace period (remembered in memory, so a
//!   restart only starts the clock again) and it is older than the grace
//!   period. The wait covers reads that fetched the manifest before a move
//!   and still ask the old holder.
//!
//! Either way the delete is conditional on the copy not having been put
//! again since the decision ([`ShardStore::delete_if_stored_before`]): a put
//! of identical bytes restarts a copy's age, so a repair that rebuilds onto
//! this node, finds the copy present and is about to record this node as
//! the holder, never loses it to a sweep racing with it. When the metadata
//! cluster cannot answer, nothing is deleted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kura_proto::meta::{Consistency, OBJECT_KEYS_MAX, Query, ShardReference};
use kura_proto::meta_client::MetaClient;
use kura_proto::shards_client::ShardId;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::store::ShardStore;

/// Default age after which an unreferenced shard is reclaimed.
pub const ORPHAN_GRACE_DEFAULT: Duration = Duration::from_secs(3600);
/// Default time between two sweeps.
pub const GC_INTERVAL_DEFAULT: Duration = Duration::from_secs(600);
/// Shards examined per index page (and at most this many per query).
const PAGE: u32 = 1024;
const _: () = assert!(PAGE as usize <= OBJECT_KEYS_MAX);

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Shards looked at.
    pub examined: u64,
    /// Shards deleted as orphans.
    pub reclaimed: u64,
    /// Bytes those shards held.
    pub reclaimed_bytes: u64,
    /// Copies whose manifest names another holder, still in their grace.
    pub held_elsewhere: u64,
}

/// Orphan reclaim for one node: what it has seen across sweeps.
pub struct Reclaimer {
    node: u64,
    store: Arc<ShardStore>,
    meta: MetaClient,
    grace: Duration,
    /// When each copy held elsewhere was first seen so (unix ms).
    elsewhere_since: HashMap<ShardId, i64>,
}

/// Starts the reclaim task; it ends when `stop` fires or its sender is
/// dropped.
pub(crate) fn spawn(
    node_id: u64,
    store: Arc<ShardStore>,
    meta: MetaClient,
    interval: Duration,
    grace: Duration,
    mut stop: oneshot::Receiver<()>,
) -> JoinHandle<()> {
    let mut reclaimer = Reclaimer::new(node_id, store, meta, grace);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick fires at once: skip it, so a node that just started
        // (and whose cluster may still be electing) waits one interval.
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = ticker.tick() => {}
            }
            let outcome = tokio::select! {
                _ = &mut stop => break,
                r = reclaimer.sweep() => r,
            };
            match outcome {
                Ok(stats) if stats.reclaimed > 0 => tracing::info!(
                    node = node_id,
                    examined = stats.examined,
                    reclaimed = stats.reclaimed,
                    reclaimed_bytes = stats.reclaimed_bytes,
                    "orphan shards reclaimed"
                ),
                Ok(_) => {}
                Err(why) => {
                    tracing::warn!(
                        node = node_id,
                        why,
                        "orphan sweep stopped; nothing more deleted"
                    )
                }
            }
            metrics::counter!("kura_store_gc_sweeps_total").increment(1);
        }
    })
}

impl Reclaimer {
    pub fn new(node: u64, store: Arc<ShardStore>, meta: MetaClient, grace: Duration) -> Self {
        Self {
            node,
            store,
            meta,
            grace,
            elsewhere_since: HashMap::new(),
        }
    }

    /// One pass over the whole index. Stops at the first error, having
    /// deleted only shards it had confirmed as orphans.
    pub async fn sweep(&mut self) -> Result<SweepStats, String> {
        let grace_ms = i64::try_from(self.grace.as_millis()).unwrap_or(i64::MAX);
        let now = unix_ms(SystemTime::now());
        let cutoff = now.saturating_sub(grace_ms);
        let mut stats = SweepStats::default();
        let mut after: Option<ShardId> = None;
        let mut still_elsewhere = HashMap::new();
        loop {
            let page = {
                let store = Arc::clone(&self.store);
                let after = after;
                tokio::task::spawn_blocking(move || store.list(after.as_ref(), PAGE))
                    .await
                    .map_err(|e| format!("index task failed: {e}"))?
                    .map_err(|e| format!("cannot list shards: {e}"))?
            };
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.id);
            stats.examined += page.len() as u64;
            // Younger copies are safe whatever the manifests say.
            let old: Vec<_> = page
                .into_iter()
                .filter(|s| s.stored_at_unix_ms < cutoff)
                .collect();
            if old.is_empty() {
                continue;
            }
            let asked: Vec<_> = old
                .iter()
                .map(|s| (s.id.object_key, s.id.segment, s.id.index))
                .collect();
            let answer = self
                .meta
                .query(&Query::ShardsReferenced {
                    node: self.node,
                    shards: asked,
                    consistency: Consistency::Linearizable,
                })
                .await
                .map_err(|e| format!("metadata cluster: {e}"))?;
            let references = answer.into_shards_referenced().map_err(|e| e.to_string())?;
            if references.len() != old.len() {
                return Err(format!(
                    "asked about {} shards, got {} answers",
                    old.len(),
                    references.len()
                ));
            }
            for (shard, reference) in old.into_iter().zip(references) {
                let reclaim = match reference {
                    ShardReference::Held => false,
                    ShardReference::NoManifest => true,
                    ShardReference::HeldElsewhere => {
                        let since = self.elsewhere_since.get(&shard.id).copied().unwrap_or(now);
                        if now.saturating_sub(since) >= grace_ms {
                            true
                        } else {
                            still_elsewhere.insert(shard.id, since);
                            stats.held_elsewhere += 1;
                            false
                        }
                    }
                };
                if !reclaim {
                    continue;
                }
                let store = Arc::clone(&self.store);
                let id = shard.id;
                let deleted =
                    tokio::task::spawn_blocking(move || store.delete_if_stored_before(&id, cutoff))
                        .await
                        .map_err(|e| format!("delete task failed: {e}"))?
                        .map_err(|e| format!("cannot delete shard {}: {e}", shard.id))?;
                if deleted {
                    stats.reclaimed += 1;
                    stats.reclaimed_bytes += shard.length;
                    metrics::counter!("kura_store_orphan_shards_reclaimed_total").increment(1);
                    tracing::debug!(shard = %shard.id, ?reference, "orphan shard reclaimed");
                }
            }
        }
        // Only what this sweep saw held elsewhere keeps its clock: a copy
        // that became the holder again (or is gone) starts afresh.
        self.elsewhere_since = still_elsewhere;
        Ok(stats)
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

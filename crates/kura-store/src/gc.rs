//! Orphan reclaim: shards that no manifest references are deleted once they
//! are older than a grace period.
//!
//! A store writes its shards first and commits the manifest last, so a store
//! that fails (client gone, gateway crash, a refusal after the data arrived)
//! leaves shards behind. Every interval the node walks its index; for the
//! shards older than the grace period it asks the metadata cluster, with a
//! linearizable read, which of their object keys any manifest references,
//! and deletes the shards of the others.
//!
//! Safety rests on one rule the gateway keeps: a store finishes (commits or
//! gives up) within its deadline, which is shorter than the grace period. A
//! shard older than the grace period that no manifest references can then
//! never become referenced. When the metadata cluster cannot answer, nothing
//! is deleted.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kura_erasure::ObjectKey;
use kura_proto::meta::{Consistency, OBJECT_KEYS_MAX, Query, QueryResult};
use kura_proto::meta_client::MetaClient;
use kura_proto::shards_client::ShardId;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::store::ShardStore;

/// Default age after which an unreferenced shard is reclaimed.
pub const ORPHAN_GRACE_DEFAULT: Duration = Duration::from_secs(3600);
/// Default time between two sweeps.
pub const GC_INTERVAL_DEFAULT: Duration = Duration::from_secs(600);
/// Shards examined per index page (and at most this many keys per query).
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
                r = sweep(&store, &meta, grace) => r,
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

/// One pass over the whole index. Stops at the first error, having deleted
/// only shards it had confirmed as orphans.
pub async fn sweep(
    store: &Arc<ShardStore>,
    meta: &MetaClient,
    grace: Duration,
) -> Result<SweepStats, String> {
    let cutoff = unix_ms(SystemTime::now())
        .saturating_sub(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX));
    let mut stats = SweepStats::default();
    let mut after: Option<ShardId> = None;
    loop {
        let page = {
            let store = Arc::clone(store);
            let after = after;
            tokio::task::spawn_blocking(move || store.list(after.as_ref(), PAGE))
                .await
                .map_err(|e| format!("index task failed: {e}"))?
                .map_err(|e| format!("cannot list shards: {e}"))?
        };
        let Some(last) = page.last() else {
            return Ok(stats);
        };
        after = Some(last.id);
        stats.examined += page.len() as u64;
        let old: Vec<_> = page
            .into_iter()
            .filter(|s| s.stored_at_unix_ms < cutoff)
            .collect();
        if old.is_empty() {
            continue;
        }
        let keys: Vec<ObjectKey> = old
            .iter()
            .map(|s| s.id.object_key)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let answer = meta
            .query(&Query::ObjectsReferenced {
                keys: keys.clone(),
                consistency: Consistency::Linearizable,
            })
            .await
            .map_err(|e| format!("metadata cluster: {e}"))?;
        let QueryResult::ObjectsReferenced(referenced) = answer else {
            return Err(format!(
                "unexpected answer to ObjectsReferenced: {answer:?}"
            ));
        };
        if referenced.len() != keys.len() {
            return Err(format!(
                "asked about {} object keys, got {} answers",
                keys.len(),
                referenced.len()
            ));
        }
        let orphans: BTreeSet<ObjectKey> = keys
            .into_iter()
            .zip(referenced)
            .filter_map(|(k, r)| (!r).then_some(k))
            .collect();
        for shard in old
            .into_iter()
            .filter(|s| orphans.contains(&s.id.object_key))
        {
            let store = Arc::clone(store);
            let id = shard.id;
            let existed = tokio::task::spawn_blocking(move || store.delete(&id))
                .await
                .map_err(|e| format!("delete task failed: {e}"))?
                .map_err(|e| format!("cannot delete shard {}: {e}", shard.id))?;
            if existed {
                stats.reclaimed += 1;
                stats.reclaimed_bytes += shard.length;
                metrics::counter!("kura_store_orphan_shards_reclaimed_total").increment(1);
                tracing::debug!(shard = %shard.id, "orphan shard reclaimed");
            }
        }
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

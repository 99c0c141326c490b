//! The scrubber: re-reads and re-verifies every shard of the node at a
//! bounded pace, so damage on disk is found before a read needs the shard.
//!
//! It walks the index in id order and reads each shard through
//! [`ShardStore::get`], which checks the blake3 and quarantines a shard
//! that fails (counted in the node's `corrupt_count`, reported in its
//! status; repair rebuilds quarantined shards). The pace is a byte rate: a
//! scrub never competes with client traffic for more than that. After a
//! whole pass it waits `pass_interval`, then starts over.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kura_proto::shards_client::ShardId;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::StoreError;
use crate::store::ShardStore;

/// Default scrub pace: 20 MB/s.
pub const SCRUB_BYTES_PER_SEC_DEFAULT: u64 = 20_000_000;
/// Default wait between two passes.
pub const SCRUB_PASS_INTERVAL_DEFAULT: Duration = Duration::from_secs(24 * 3600);

/// Counters of the scrubber, readable while it runs.
#[derive(Debug, Default)]
pub struct ScrubStatus {
    /// Whole passes finished.
    pub passes: AtomicU64,
    /// Shards verified, all passes.
    pub shards_checked: AtomicU64,
    /// Bytes verified, all passes.
    pub bytes_checked: AtomicU64,
    /// Shards found corrupt (or missing) by the scrubber.
    pub corrupt_found: AtomicU64,
    /// Starts the next pass now (`kura admin scrub --now`).
    pub wake: tokio::sync::Notify,
}

/// Starts the scrubber; `bytes_per_sec` 0 means it does not run.
pub(crate) fn spawn(
    node_id: u64,
    store: Arc<ShardStore>,
    bytes_per_sec: u64,
    pass_interval: Duration,
    status: Arc<ScrubStatus>,
    mut stop: oneshot::Receiver<()>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if bytes_per_sec == 0 {
            let _ = stop.await;
            return;
        }
        loop {
            let started = Instant::now();
            let mut after: Option<ShardId> = None;
            loop {
                let page = {
                    let store = Arc::clone(&store);
                    tokio::task::spawn_blocking(move || store.list(after.as_ref(), 256)).await
                };
                let page = match page {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => {
                        tracing::warn!(node = node_id, error = %e, "scrub: cannot list shards");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(node = node_id, error = %e, "scrub: list task failed");
                        break;
                    }
                };
                let Some(last) = page.last() else { break };
                after = Some(last.id);
                for shard in page {
                    let id = shard.id;
                    let s = Arc::clone(&store);
                    let verdict = tokio::task::spawn_blocking(move || s.get(&id)).await;
                    match verdict {
                        Ok(Ok(_)) => {}
                        Ok(Err(StoreError::Corrupt { what, .. })) => {
                            // Already quarantined shards are not news.
                            if !what.contains("quarantined") {
                                status.corrupt_found.fetch_add(1, Ordering::Relaxed);
                                metrics::counter!("kura_store_scrub_corrupt_found_total")
                                    .increment(1);
                                tracing::warn!(node = node_id, shard = %id, what, "scrub found a corrupt shard; quarantined");
                            }
                        }
                        Ok(Err(StoreError::NotFound(_))) => {} // deleted meanwhile
                        Ok(Err(e)) => {
                            tracing::warn!(node = node_id, shard = %id, error = %e, "scrub: read failed")
                        }
                        Err(e) => {
                            tracing::warn!(node = node_id, error = %e, "scrub: read task failed")
                        }
                    }
                    status.shards_checked.fetch_add(1, Ordering::Relaxed);
                    status
                        .bytes_checked
                        .fetch_add(shard.length, Ordering::Relaxed);
                    metrics::counter!("kura_store_scrubbed_bytes_total").increment(shard.length);
                    // Pace: this shard's bytes at the configured rate.
                    let pause = Duration::from_secs_f64(shard.length as f64 / bytes_per_sec as f64);
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
            status.passes.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("kura_store_scrub_passes_total").increment(1);
            tracing::info!(
                node = node_id,
                seconds = started.elapsed().as_secs(),
                corrupt_found = status.corrupt_found.load(Ordering::Relaxed),
                "scrub pass finished"
            );
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(pass_interval) => {}
                _ = status.wake.notified() => {
                    tracing::info!(node = node_id, "scrub pass started on request");
                }
            }
        }
    })
}

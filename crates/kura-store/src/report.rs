//! Capacity and health reports to the metadata cluster: every interval the
//! node proposes `Command::ReportUsage` with its used bytes and capacity.
//! A report arriving is also the node's sign of life. Shards the node
//! quarantined since the last report (on read or scrub) go out right after
//! it as `Command::ReportDamaged`, so repair rebuilds them.
//!
//! Reporting never stops the node: an unreachable cluster, or one that does
//! not know this node yet (the operator adds it to the map later), is
//! logged once at warn and then quietly retried at every interval.

use std::sync::Arc;
use std::time::Duration;

use kura_auth::Transport;
use kura_proto::meta::{Command, DAMAGED_SHARDS_MAX, DamagedShard, Rejected};
use kura_proto::meta_client::{MetaClient, MetaClientError, Retry};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::store::ShardStore;

/// How long one report attempt may wait for an answer.
pub const REPORT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// The shortest report interval the node accepts.
pub const REPORT_INTERVAL_MIN: Duration = Duration::from_millis(10);

/// Starts the reporting task; it ends when `stop` fires or its sender is
/// dropped.
pub(crate) fn spawn(
    node_id: u64,
    store: Arc<ShardStore>,
    endpoints: Vec<String>,
    transport: Transport,
    interval: Duration,
    mut stop: oneshot::Receiver<()>,
) -> JoinHandle<()> {
    let interval = interval.max(REPORT_INTERVAL_MIN);
    // A report never runs into the next one: its retries end with the
    // interval (but get at least a few attempts).
    // At least two attempts per report, so one voter that swallows
    // packets cannot make every report miss (found by the chaos suite).
    let client = MetaClient::with_timeouts(
        endpoints,
        transport,
        REPORT_ATTEMPT_TIMEOUT,
        interval.max(REPORT_ATTEMPT_TIMEOUT * 2),
    );
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first report goes out one interval after start, not at once:
        // a node usually starts before the cluster map that lists it.
        ticker.tick().await;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = ticker.tick() => {}
            }
            let status = {
                let store = Arc::clone(&store);
                tokio::task::spawn_blocking(move || store.status(node_id)).await
            };
            let status = match status {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(node = node_id, error = %e, "cannot read usage for the report");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(node = node_id, error = %e, "usage task failed");
                    continue;
                }
            };
            let node = node_id.to_string();
            metrics::gauge!("kura_store_shards", "node" => node.clone())
                .set(status.shard_count as f64);
            metrics::gauge!("kura_store_used_bytes", "node" => node.clone())
                .set(status.used_bytes as f64);
            metrics::gauge!("kura_store_capacity_bytes", "node" => node.clone())
                .set(status.capacity_bytes as f64);
            metrics::gauge!("kura_store_corrupt_shards", "node" => node)
                .set(status.corrupt_count as f64);
            let command = Command::ReportUsage {
                id: node_id,
                used_bytes: status.used_bytes,
                capacity_bytes: status.capacity_bytes,
            };
            let outcome = tokio::select! {
                _ = &mut stop => break,
                r = client.propose(&command, Retry::Idempotent) => r,
            };
            match refusal(outcome) {
                None => {
                    if failing {
                        tracing::info!(node = node_id, "usage reports accepted again");
                    }
                    failing = false;
                    tracing::debug!(
                        node = node_id,
                        used_bytes = status.used_bytes,
                        capacity_bytes = status.capacity_bytes,
                        "usage reported"
                    );
                }
                Some(why) if !failing => {
                    failing = true;
                    tracing::warn!(
                        node = node_id,
                        why,
                        "usage report not accepted; retrying every interval"
                    );
                }
                Some(why) => tracing::debug!(node = node_id, why, "usage report not accepted"),
            }
            let damage = store.take_unreported_damage(DAMAGED_SHARDS_MAX);
            if damage.is_empty() {
                continue;
            }
            let command = Command::ReportDamaged {
                shards: damage
                    .iter()
                    .map(|id| DamagedShard {
                        node: node_id,
                        object_key: id.object_key,
                        segment: id.segment,
                        index: id.index,
                    })
                    .collect(),
            };
            let outcome = tokio::select! {
                _ = &mut stop => { store.unreported(damage); break }
                r = client.propose(&command, Retry::Idempotent) => r,
            };
            match refusal(outcome) {
                None => tracing::info!(
                    node = node_id,
                    shards = damage.len(),
                    "damaged shards reported for repair"
                ),
                Some(why) => {
                    tracing::warn!(
                        node = node_id,
                        shards = damage.len(),
                        why,
                        "damage report not accepted; retrying"
                    );
                    store.unreported(damage);
                }
            }
        }
    })
}

/// Why a report did not take effect, if it did not.
fn refusal(
    outcome: Result<Result<kura_proto::meta::Applied, Rejected>, MetaClientError>,
) -> Option<String> {
    match outcome {
        Ok(Ok(_)) => None,
        Ok(Err(Rejected::NotFound(what))) => Some(format!(
            "the cluster map does not list this node ({what}); add it to the map"
        )),
        Ok(Err(e)) => Some(e.to_string()),
        Err(e) => Some(e.to_string()),
    }
}

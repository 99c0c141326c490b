//! Failure detection of storage nodes, run by the metadata leader.
//!
//! A storage node's usage report (`Command::ReportUsage`, every few
//! seconds) is its heartbeat; the leader notes when each arrived. A node
//! silent for `node_down_after` is marked `Down` (reads and placement avoid
//! it at once), silent for `node_lost_after` it is marked `Lost` (its
//! shards count as gone: repair rebuilds them). A `Down` node that reports
//! again is marked `Up`. `Lost` is final until an operator acts: by then
//! repair may have rebuilt its shards elsewhere.
//!
//! Every state change is a Raft command, so every gateway sees the same
//! map. A new leader knows no report times yet: it gives every node a full
//! `node_down_after` from the moment it took office before judging it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kura_placement::NodeState;
use kura_proto::meta::Command;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::service::MetaServer;

/// When each storage node last reported to this node.
#[derive(Default)]
pub struct Liveness {
    seen: Mutex<HashMap<u64, Instant>>,
}

impl Liveness {
    pub fn saw(&self, node: u64) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node, Instant::now());
    }

    fn last(&self, node: u64) -> Option<Instant> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node)
            .copied()
    }
}

/// What the detector decides for one node, given how long it has been
/// silent (`None`: never heard from since this leader took office).
fn judge(
    state: NodeState,
    silent: Duration,
    reported_recently: bool,
    down_after: Duration,
    lost_after: Duration,
) -> Option<NodeState> {
    match state {
        NodeState::Up if silent > down_after => Some(NodeState::Down),
        NodeState::Down if reported_recently => Some(NodeState::Up),
        NodeState::Down if silent > lost_after => Some(NodeState::Lost),
        _ => None,
    }
}

/// Publishes this voter's Raft and cluster gauges (labelled by voter id:
/// several voters may share a process in `kura dev`). `was_leading`: this
/// voter published the cluster gauges last time; on losing the lead it
/// zeroes them, so a scrape of a former leader shows no stale counts.
fn publish_metrics(id: u64, server: &MetaServer, was_leading: &mut bool) {
    let m = server.raft().metrics().borrow().clone();
    let voter = id.to_string();
    let last_log = m.last_log_index.unwrap_or(0);
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    metrics::gauge!("kura_meta_raft_term", "voter" => voter.clone()).set(m.current_term as f64);
    metrics::gauge!("kura_meta_raft_leader", "voter" => voter.clone())
        .set(m.current_leader.map(|l| l as f64).unwrap_or(-1.0));
    metrics::gauge!("kura_meta_raft_is_leader", "voter" => voter.clone())
        .set(f64::from(u8::from(m.current_leader == Some(id))));
    metrics::gauge!("kura_meta_raft_last_log_index", "voter" => voter.clone()).set(last_log as f64);
    metrics::gauge!("kura_meta_raft_applied_index", "voter" => voter.clone()).set(applied as f64);
    metrics::gauge!("kura_meta_raft_apply_lag", "voter" => voter.clone())
        .set(last_log.saturating_sub(applied) as f64);
    if m.current_leader != Some(id) {
        if std::mem::take(was_leading) {
            cluster_gauges(server, false);
        }
        return;
    }
    *was_leading = true;
    cluster_gauges(server, true);
}

/// How often the leader recounts unreadable and at-risk instances, and
/// the most suspect instances one count examines.
const SURVIVAL_EVERY: Duration = Duration::from_secs(5);
const SURVIVAL_SUSPECTS_MAX: usize = 200_000;
/// When this process last counted them (one count per process is enough:
/// in `kura dev` the voters share it).
static SURVIVAL_AT: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);

/// The cluster-wide gauges, from the leader only so that a sum over voters
/// is not three times the truth; `live` false zeroes them (a voter that
/// lost the lead; in `kura dev` the new leader, sharing the process, sets
/// them again on its next tick).
fn cluster_gauges(server: &MetaServer, live: bool) {
    let value = |x: f64| if live { x } else { 0.0 };
    if let Ok(c) = server.reader().counts() {
        metrics::gauge!("kura_cluster_instances").set(value(c.total as f64));
        metrics::gauge!("kura_cluster_under_protected_instances")
            .set(value(c.under_protected as f64));
    }
    // What is really readable (damaged and quarantined shards count as
    // missing): at most every few seconds, it walks the suspect instances.
    let due = {
        let mut last = SURVIVAL_AT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = !live || last.is_none_or(|t| t.elapsed() >= SURVIVAL_EVERY);
        if due {
            *last = live.then(Instant::now);
        }
        due
    };
    if due
        && let Ok((unreadable, at_risk, capped)) = if live {
            server.reader().readable_protection(SURVIVAL_SUSPECTS_MAX)
        } else {
            Ok((0, 0, false))
        }
    {
        metrics::gauge!("kura_cluster_unreadable_instances").set(unreadable as f64);
        metrics::gauge!("kura_cluster_at_risk_instances").set(at_risk as f64);
        metrics::gauge!("kura_cluster_protection_counts_capped").set(f64::from(u8::from(capped)));
    }
    if let Ok((Some(map), _)) = server.reader().cluster() {
        for state in kura_placement::NodeState::ALL {
            let n = map.nodes.values().filter(|n| n.state == state).count();
            metrics::gauge!("kura_cluster_nodes", "state" => state.as_str()).set(value(n as f64));
        }
        for n in map.nodes.values() {
            let node = n.id.to_string();
            metrics::gauge!("kura_cluster_node_capacity_bytes", "node" => node.clone(), "site" => n.site.clone())
                .set(value(n.capacity_bytes as f64));
            metrics::gauge!("kura_cluster_node_used_bytes", "node" => node.clone(), "site" => n.site.clone())
                .set(value(n.used_bytes as f64));
            metrics::gauge!("kura_cluster_node_up", "node" => node, "site" => n.site.clone()).set(
                value(f64::from(u8::from(
                    n.state == kura_placement::NodeState::Up,
                ))),
            );
        }
    }
}

/// Starts the detector of node `id`; it acts only while `id` leads.
pub(crate) fn spawn(
    id: u64,
    server: MetaServer,
    liveness: Arc<Liveness>,
    down_after: Duration,
    lost_after: Duration,
    mut stop: oneshot::Receiver<()>,
) -> JoinHandle<()> {
    let tick = (down_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(2));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leading_since: Option<Instant> = None;
        let mut was_leading = false;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = ticker.tick() => {}
            }
            let leader = server.raft().metrics().borrow().current_leader;
            publish_metrics(id, &server, &mut was_leading);
            if leader != Some(id) {
                leading_since = None;
                continue;
            }
            let since = *leading_since.get_or_insert_with(Instant::now);
            let Ok((Some(map), _)) = server.reader().cluster() else {
                continue;
            };
            let now = Instant::now();
            for node in map.nodes.values() {
                let last = liveness.last(node.id);
                let heard = last.map_or(since, |t| t.max(since));
                let silent = now.saturating_duration_since(heard);
                let recent = last.is_some_and(|t| now.saturating_duration_since(t) <= down_after);
                let Some(next) = judge(node.state, silent, recent, down_after, lost_after) else {
                    continue;
                };
                let outcome = tokio::select! {
                    _ = &mut stop => return,
                    r = server.propose(Command::SetNodeState { id: node.id, state: next }) => r,
                };
                match outcome {
                    Ok(Ok(_)) => tracing::warn!(
                        node = node.id,
                        from = node.state.as_str(),
                        to = next.as_str(),
                        silent_ms = silent.as_millis() as u64,
                        "storage node state changed"
                    ),
                    Ok(Err(e)) => {
                        tracing::warn!(node = node.id, error = %e, "state change refused")
                    }
                    Err(e) => tracing::debug!(node = node.id, error = %e, "state change not made"),
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judgements() {
        let (d, l) = (Duration::from_secs(10), Duration::from_secs(60));
        let s = Duration::from_secs;
        assert_eq!(judge(NodeState::Up, s(5), true, d, l), None);
        assert_eq!(
            judge(NodeState::Up, s(11), false, d, l),
            Some(NodeState::Down)
        );
        assert_eq!(
            judge(NodeState::Down, s(1), true, d, l),
            Some(NodeState::Up)
        );
        assert_eq!(judge(NodeState::Down, s(30), false, d, l), None);
        assert_eq!(
            judge(NodeState::Down, s(61), false, d, l),
            Some(NodeState::Lost)
        );
        assert_eq!(judge(NodeState::Lost, s(1), true, d, l), None);
        assert_eq!(judge(NodeState::Draining, s(100), false, d, l), None);
        assert_eq!(judge(NodeState::Removed, s(100), false, d, l), None);
    }
}

//! Elections only where they can be won: the check openraft 0.9 lacks
//! (it has no PreVote).
//!
//! A voter cut off from the others (a black-holed site, a one-way cut)
//! keeps starting elections it cannot win, each at a higher term. When
//! the cut heals, the healthy leader sees that term in a response and
//! steps down: the cluster stops for an election it did not need (seen in
//! the chaos suite). Here each voter probes the other voters every
//! [`PROBE_EVERY`]; while fewer than a quorum of voters (itself included)
//! answered within [`FRESH`], its elections are switched off
//! (`Raft::runtime_config().elect(false)`), so its term stays where it
//! was and it rejoins as a follower. [`FRESH`] is shorter than the
//! shortest time a follower waits before an election (the leader lease
//! plus the minimum election timeout), so an isolated voter turns its
//! elections off before its first one, and turns them back on only after
//! a quorum has answered for [`REJOIN_QUIET`] (by then the leader's
//! heartbeats reset its long-expired election timer). Followers of a live majority keep
//! theirs and elect a new leader when the old one goes silent; a follower
//! whose leader stops answering its probes while a quorum of the others
//! still answer campaigns at once (a leader cut off one way still sends
//! heartbeats, so the followers' timers would never fire).

use std::collections::HashMap;
use std::time::Duration;

use kura_auth::Transport;
use kura_proto::meta::AdminRequest;
use kura_proto::meta_client::MetaClient;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::types::Raft;

/// How often the other voters are probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);
/// How long one probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// A voter counts as reachable this long after it last answered.
pub const FRESH: Duration = Duration::from_millis(900);
/// A voter that could not reach a quorum does not campaign against its
/// leader for this long after it can again.
pub const REJOIN_QUIET: Duration = Duration::from_secs(5);
/// How much longer each follower (by id) waits than the one before it
/// before it campaigns against a leader that stopped answering.
pub const STAGGER: Duration = Duration::from_millis(250);

/// Starts the prober of voter `id`; it ends with the node (abort it).
pub(crate) fn spawn(id: u64, raft: Raft, transport: Transport) -> JoinHandle<()> {
    tokio::spawn(async move {
        let client = MetaClient::with_timeouts(Vec::new(), transport, PROBE_TIMEOUT, PROBE_TIMEOUT);
        let mut answered: HashMap<u64, Instant> = HashMap::new();
        let mut electing = true;
        let mut last_trigger: Option<Instant> = None;
        // No verdict on the leader before this voter has reached a quorum
        // for a while: at start, and after it was cut off itself (then
        // its connection to the leader may take seconds longer to recover
        // than those to the others, and its campaign would depose a
        // healthy leader).
        let mut quiet_since = Instant::now();
        // No elections switched off in the first REJOIN_QUIET: the other
        // voters may still be starting.
        let started = Instant::now();
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let metrics = raft.metrics().borrow().clone();
            let membership = metrics.membership_config.membership();
            let voters: Vec<u64> = membership.voter_ids().collect();
            if !voters.contains(&id) || voters.len() < 2 {
                continue;
            }
            let peers: Vec<(u64, String)> = voters
                .iter()
                .filter(|&&v| v != id)
                .filter_map(|&v| membership.get_node(&v).map(|n| (v, n.addr.clone())))
                .collect();
            let mut probes = tokio::task::JoinSet::new();
            for (peer, addr) in &peers {
                let (client, peer, addr) = (client.clone(), *peer, addr.clone());
                probes.spawn(async move {
                    let ok = client.admin_at(&addr, &AdminRequest::Status).await.is_ok();
                    (peer, ok)
                });
            }
            let now = Instant::now();
            while let Some(done) = probes.join_next().await {
                if let Ok((peer, true)) = done {
                    answered.insert(peer, now);
                }
            }
            let quorum = voters.len() / 2 + 1;
            let fresh = |p: &u64| answered.get(p).is_some_and(|t| t.elapsed() < FRESH);
            // A follower whose leader stopped answering while a quorum
            // still does (the leader's site black-holed, or cut one way
            // so that its heartbeats still arrive but nothing it is sent
            // does): campaign now rather than after the lease and the
            // election timeout. Once per FRESH at most.
            let leader = metrics.current_leader;
            // Each follower waits a little longer than FRESH, by its id, so
            // that two followers do not split the vote by campaigning in
            // the same round.
            let silent_for = FRESH + STAGGER * u32::try_from(id % 4).unwrap_or(0);
            if let Some(l) = leader
                && l != id
                && peers.iter().any(|(p, _)| *p == l)
                && answered.get(&l).is_none_or(|t| t.elapsed() >= silent_for)
                && last_trigger.is_none_or(|t: Instant| t.elapsed() >= FRESH)
            {
                let others = 1 + peers.iter().filter(|(p, _)| *p != l && fresh(p)).count();
                if others >= quorum && quiet_since.elapsed() >= REJOIN_QUIET {
                    last_trigger = Some(Instant::now());
                    tracing::warn!(
                        voter = id,
                        leader = l,
                        "the leader does not answer, the others do: campaigning"
                    );
                    metrics::counter!("kura_meta_elections_triggered_total").increment(1);
                    if let Err(e) = raft.trigger().elect().await {
                        tracing::warn!(error = %e, "could not start an election");
                    }
                }
            }
            let reachable = 1 + peers.iter().filter(|(p, _)| fresh(p)).count();
            let can_win = reachable >= quorum;
            if !can_win {
                quiet_since = Instant::now();
            }
            if started.elapsed() < REJOIN_QUIET {
                continue;
            }
            // Back on only after a quorum has answered for REJOIN_QUIET:
            // by then the leader's heartbeats reach this voter again and
            // reset its election timer; turned on at once, its timer (long
            // expired while it was cut off) would fire before they arrive
            // and its campaign would depose the leader (seen in scenario 8).
            let want = can_win && (electing || quiet_since.elapsed() >= REJOIN_QUIET);
            if want != electing {
                electing = want;
                raft.runtime_config().elect(want);
                if want {
                    tracing::info!(
                        voter = id,
                        reachable,
                        "a quorum of voters answers again: elections on"
                    );
                } else {
                    tracing::warn!(
                        voter = id,
                        reachable,
                        quorum,
                        "fewer than a quorum of voters answer: no elections from this voter until they do"
                    );
                }
                metrics::gauge!("kura_meta_elections_enabled", "voter" => id.to_string())
                    .set(f64::from(u8::from(want)));
            }
        }
    })
}

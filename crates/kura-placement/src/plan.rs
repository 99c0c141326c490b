//! Read plans: in which order a gateway asks holders for the shards of one
//! segment. The gateway fetches `primary` in parallel, verifies each shard's
//! blake3, and turns to `fallback` for every shard that is missing, slow or
//! bad.
//!
//! Data shards come first: the code is systematic, so k good data shards are
//! the segment's bytes with no decoding. Among equals, holders in the
//! reader's own site come before remote ones, and `Up` before `Draining`.
//! Unplaced shards and holders that cannot serve reads (`Lost`, `Removed`,
//! or unknown to the map) are left out; `Down` holders come last of all
//! (`last_resort`), since failure detection can be wrong and a shard that
//! answers beats an UNAVAILABLE.
//!
//! When a read gets fewer than k good shards, [`read_verdict`] says whether
//! the segment is lost (DATA_LOSS) or only out of reach (UNAVAILABLE), from
//! the map and the typed faults the read met ([`ShardFault`]).

use crate::manifest::SegmentManifest;
use crate::map::{ClusterMap, NodeId, NodeState};

/// The order in which to ask holders for one segment's shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadPlan {
    /// Ask these first, in parallel: k holders when the segment is readable.
    pub primary: Vec<(u8, NodeId)>,
    /// The other readable holders, best first, for shards of `primary` that
    /// fail.
    pub fallback: Vec<(u8, NodeId)>,
    /// Holders the map calls `Down`, for shards no readable holder has:
    /// asked only after every other.
    pub last_resort: Vec<(u8, NodeId)>,
    /// k: how many good shards decode the segment.
    pub needed: u8,
}

impl ReadPlan {
    /// At least k readable holders exist. When false the segment cannot be
    /// read right now (not necessarily lost: holders may be `Down`).
    pub fn is_readable(&self) -> bool {
        self.primary.len() >= usize::from(self.needed)
    }

    /// The primary shards include parity, so even the healthy path decodes.
    pub fn needs_decode(&self) -> bool {
        self.primary.iter().any(|&(index, _)| index >= self.needed)
    }

    /// Every readable holder, primary first.
    pub fn holders(&self) -> impl Iterator<Item = (u8, NodeId)> + '_ {
        self.primary.iter().chain(&self.fallback).copied()
    }

    /// Every holder worth asking, in order: the readable ones, then the
    /// last resort.
    pub fn candidates(&self) -> impl Iterator<Item = (u8, NodeId)> + '_ {
        self.holders().chain(self.last_resort.iter().copied())
    }
}

/// Why one shard could not be used by a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShardFault {
    /// Its bytes are bad: the holder reported the shard corrupt, or it
    /// failed the reader's own check. That copy counts as gone.
    Damaged,
    /// The holder did not answer, or failed in a way that says nothing
    /// about the bytes (unreachable, timed out, overloaded).
    Unreachable,
    /// The holder says it has no such shard. Not counted as gone: the
    /// shard may have moved since the manifest the reader holds (the
    /// gateway re-reads the manifest from the leader before answering).
    Missing,
}

/// What a read that got fewer than k good shards tells the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadVerdict {
    /// Fewer than k shards of the segment can still exist anywhere: the
    /// data is lost (DATA_LOSS).
    Lost {
        /// Shards that may still be good.
        remaining: usize,
    },
    /// Enough shards may exist but their holders are out of reach now
    /// (UNAVAILABLE: retry).
    Unavailable {
        /// Shards that may still be good.
        remaining: usize,
    },
}

/// Judges a read of `segment` that could not gather k good shards, from
/// the faults it met (`(shard index, fault)`, in any order, repeats
/// allowed). A shard may still be good when it is placed on a node the
/// map does not count as lost and no read found it [`ShardFault::Damaged`].
pub fn read_verdict(
    map: &ClusterMap,
    segment: &SegmentManifest,
    k: u8,
    faults: &[(u8, ShardFault)],
) -> ReadVerdict {
    let damaged = |index: u8| {
        faults
            .iter()
            .any(|&(i, f)| i == index && f == ShardFault::Damaged)
    };
    let mut possible: Vec<u8> = segment
        .shards
        .iter()
        .filter(|s| {
            s.node
                .and_then(|n| map.node(n))
                .is_some_and(|n| !n.state.shards_lost())
                && !damaged(s.index)
        })
        .map(|s| s.index)
        .collect();
    possible.sort_unstable();
    possible.dedup();
    let remaining = possible.len();
    if remaining < usize::from(k) {
        ReadVerdict::Lost { remaining }
    } else {
        ReadVerdict::Unavailable { remaining }
    }
}

/// Orders the readable holders of `segment` for a reader in `local_site`
/// (`None`: no site is near). `k` is the segment's data shard count.
pub fn read_plan(
    map: &ClusterMap,
    segment: &SegmentManifest,
    k: u8,
    local_site: Option<&str>,
) -> ReadPlan {
    let mut readable: Vec<(bool, bool, bool, u8, NodeId)> = segment
        .shards
        .iter()
        .filter_map(|shard| {
            let node = map.node(shard.node?)?;
            if !node.state.readable() {
                return None;
            }
            let parity = shard.index >= k;
            let remote = local_site != Some(node.site.as_str());
            let draining = node.state != NodeState::Up;
            Some((parity, remote, draining, shard.index, node.id))
        })
        .collect();
    readable.sort_unstable();
    let mut holders: Vec<(u8, NodeId)> = readable
        .into_iter()
        .map(|(_, _, _, index, node)| (index, node))
        .collect();
    let fallback = holders.split_off(holders.len().min(usize::from(k)));
    let mut last_resort: Vec<(u8, NodeId)> = Vec::new();
    for shard in &segment.shards {
        if let Some(node) = shard.node
            && map.node(node).is_some_and(|n| n.state == NodeState::Down)
            && !holders
                .iter()
                .chain(&fallback)
                .chain(&last_resort)
                .any(|&(i, _)| i == shard.index)
        {
            last_resort.push((shard.index, node));
        }
    }
    ReadPlan {
        primary: holders,
        fallback,
        last_resort,
        needed: k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ShardLocation;
    use crate::testutil::{id, map_of};

    /// RS(3,2): shards 0..3 data, 3..5 parity; holders alternate sites a, b.
    fn segment(holders: [Option<NodeId>; 5]) -> SegmentManifest {
        SegmentManifest {
            index: 0,
            data_len: 100,
            shards: holders
                .iter()
                .enumerate()
                .map(|(i, &node)| ShardLocation {
                    index: u8::try_from(i).unwrap(),
                    node,
                    blake3: [0; 32],
                    len: 64,
                })
                .collect(),
        }
    }

    fn all_placed() -> SegmentManifest {
        segment([
            Some(id(0, 0)),
            Some(id(1, 0)),
            Some(id(0, 1)),
            Some(id(1, 1)),
            Some(id(0, 2)),
        ])
    }

    #[test]
    fn healthy_reads_take_the_data_shards() {
        let map = map_of(&[3, 3]);
        let plan = read_plan(&map, &all_placed(), 3, Some("b"));
        assert!(plan.is_readable() && !plan.needs_decode());
        // Data first (local b before remote a), then parity, local first.
        assert_eq!(plan.primary, [(1, id(1, 0)), (0, id(0, 0)), (2, id(0, 1))]);
        assert_eq!(plan.fallback, [(3, id(1, 1)), (4, id(0, 2))]);
        assert_eq!(plan.holders().count(), 5);
        let from_a = read_plan(&map, &all_placed(), 3, Some("a"));
        assert_eq!(
            from_a.primary,
            [(0, id(0, 0)), (2, id(0, 1)), (1, id(1, 0))]
        );
        assert_eq!(from_a.fallback, [(4, id(0, 2)), (3, id(1, 1))]);
        let nowhere = read_plan(&map, &all_placed(), 3, None);
        assert_eq!(
            nowhere.primary,
            [(0, id(0, 0)), (1, id(1, 0)), (2, id(0, 1))]
        );
    }

    #[test]
    fn unreadable_holders_are_skipped_and_parity_fills_in() {
        let map = map_of(&[3, 3])
            .with_node_state(id(1, 0), NodeState::Down)
            .unwrap()
            .with_node_state(id(0, 2), NodeState::Draining)
            .unwrap();
        let plan = read_plan(&map, &all_placed(), 3, Some("a"));
        assert!(plan.is_readable() && plan.needs_decode());
        // A draining node still serves; locality counts before its state.
        assert_eq!(plan.primary, [(0, id(0, 0)), (2, id(0, 1)), (4, id(0, 2))]);
        assert_eq!(plan.fallback, [(3, id(1, 1))]);
        let plan = read_plan(&map, &all_placed(), 3, Some("b"));
        assert_eq!(plan.fallback, [(4, id(0, 2))]);
        assert_eq!(plan.primary[2], (3, id(1, 1)));
        // The Down holder's shard is asked last of all.
        assert_eq!(plan.last_resort, [(1, id(1, 0))]);
        assert_eq!(plan.candidates().last(), Some((1, id(1, 0))));
    }

    #[test]
    fn verdicts_count_what_may_still_exist() {
        let map = map_of(&[3, 3])
            .with_node_state(id(1, 0), NodeState::Down)
            .unwrap()
            .with_node_state(id(0, 1), NodeState::Lost)
            .unwrap();
        let seg = all_placed();
        // Shard 1 is on a Down node (may come back), shard 2 on a Lost one.
        assert_eq!(
            read_verdict(&map, &seg, 3, &[(1, ShardFault::Unreachable)]),
            ReadVerdict::Unavailable { remaining: 4 }
        );
        // Two damaged copies (one reported twice) leave 2 of the 3 needed.
        let faults = [
            (0, ShardFault::Damaged),
            (3, ShardFault::Damaged),
            (0, ShardFault::Damaged),
            (4, ShardFault::Missing),
        ];
        assert_eq!(
            read_verdict(&map, &seg, 3, &faults),
            ReadVerdict::Lost { remaining: 2 }
        );
        // Missing and unreachable copies are not counted as gone.
        let faults = [(0, ShardFault::Missing), (3, ShardFault::Unreachable)];
        assert_eq!(
            read_verdict(&map, &seg, 3, &faults),
            ReadVerdict::Unavailable { remaining: 4 }
        );
    }

    #[test]
    fn up_before_draining_among_equals() {
        let map = map_of(&[3, 3])
            .with_node_state(id(0, 0), NodeState::Draining)
            .unwrap();
        let seg = segment([
            None,
            Some(id(1, 0)),
            Some(id(0, 1)),
            Some(id(0, 0)),
            Some(id(0, 2)),
        ]);
        let plan = read_plan(&map, &seg, 3, Some("a"));
        assert_eq!(plan.primary, [(2, id(0, 1)), (1, id(1, 0)), (4, id(0, 2))]);
        assert_eq!(plan.fallback, [(3, id(0, 0))]);
    }

    #[test]
    fn too_few_readable_holders_is_flagged() {
        let map = map_of(&[3, 3])
            .with_node_state(id(0, 0), NodeState::Lost)
            .unwrap()
            .with_node_state(id(1, 0), NodeState::Removed)
            .unwrap();
        let seg = segment([
            Some(id(0, 0)),
            Some(id(1, 0)),
            None,
            Some(id(1, 1)),
            Some(99),
        ]);
        let plan = read_plan(&map, &seg, 3, Some("a"));
        assert!(!plan.is_readable());
        assert_eq!(plan.primary, [(3, id(1, 1))]);
        assert!(plan.fallback.is_empty() && plan.last_resort.is_empty());
    }
}

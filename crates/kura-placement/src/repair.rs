//! Repair plans: for one manifest, which shards must be rebuilt or moved, and
//! onto which nodes. The repair engine (later, in the gateway) carries the
//! plan out: it copies a shard whose holder can still serve it, otherwise
//! reconstructs it from k others, writes it to the target, and records the
//! new holder with a compare-and-set on the manifest's version.
//!
//! Damaged copies (a storage node found a shard bad and quarantined it)
//! are judged by [`damage_action`]: rebuilt in place on a healthy holder,
//! left to the plan or to the holder's return otherwise, or cleared when
//! the manifest no longer names that copy.
//!
//! A shard needs work when it is unplaced, its holder is `Lost`, `Removed` or
//! unknown to the map (the shard is gone), or `Draining` (the shard must
//! leave). Shards on `Down` nodes are left alone: the node is expected back,
//! and declaring it `Lost` is what triggers their rebuild.
//!
//! Targets are chosen the way placement chooses: the site with the fewest
//! shards of the segment that has a free writable node (one not holding any
//! shard of the segment), then the node by rendezvous hashing. In a
//! multi-site map, when a fresh placement of the segment would be fully
//! protected, shards are also moved out of sites holding more than that
//! placement's fullest site (reason [`RepairReason::Rebalance`]): this is how
//! an object written while a site was down regains its site-loss tolerance
//! once the site is back.

use std::cmp::Reverse;

use crate::error::PlacementError;
use crate::manifest::{Manifest, Protection};
use crate::map::{ClusterMap, NodeId, NodeState};
use crate::placement::{Placer, protection_of, site_ranks, take_best_node};
use crate::profile::ProfileExt;

/// Why a shard is in a repair plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RepairReason {
    /// It was never placed (written under-protected).
    Unplaced,
    /// Its holder is `Lost`.
    NodeLost,
    /// Its holder is `Removed`.
    NodeRemoved,
    /// Its holder is not in the map at all.
    NodeUnknown,
    /// Its holder is `Draining`: move it while the holder still serves it.
    NodeDraining,
    /// Its holder is healthy, but its site holds more shards of the segment
    /// than a full placement would.
    Rebalance,
}

/// One shard to rebuild or move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardRepair {
    pub index: u8,
    /// The current holder, if any.
    pub from: Option<NodeId>,
    pub reason: RepairReason,
    /// The new holder; `None` when no writable node is free for it now.
    pub target: Option<NodeId>,
}

impl ShardRepair {
    /// The holder to copy the shard from, when it can still serve it
    /// (`Draining`, or healthy for a rebalance); otherwise the shard must be
    /// reconstructed from k others.
    pub fn copy_source(&self, map: &ClusterMap) -> Option<NodeId> {
        self.from
            .filter(|&id| map.node(id).is_some_and(|n| n.state.readable()))
    }
}

/// The work for one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRepair {
    pub segment: u32,
    pub shards: Vec<ShardRepair>,
    /// The segment's protection once every shard with a target is written.
    pub protection_after: Protection,
}

/// The work for one manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairPlan {
    /// Only segments with work, in segment order.
    pub segments: Vec<SegmentRepair>,
    /// The object's protection once the plan is carried out: the weakest
    /// segment's, counting segments without work too.
    pub protection_after: Protection,
    /// The damaged copies the plan was given, each with what to do about
    /// it ([`damage_action`]), in the order given.
    pub damaged: Vec<(DamagedCopy, DamageAction)>,
}

impl RepairPlan {
    /// Nothing to move, rebuild or rewrite (stale damage reports aside).
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.rewrites().next().is_none()
    }

    /// The damaged copies to rebuild in place on their holders.
    pub fn rewrites(&self) -> impl Iterator<Item = &DamagedCopy> + '_ {
        self.damaged
            .iter()
            .filter(|(_, action)| *action == DamageAction::RebuildInPlace)
            .map(|(copy, _)| copy)
    }

    /// Shards in the plan, with or without a target.
    pub fn shard_count(&self) -> usize {
        self.segments.iter().map(|s| s.shards.len()).sum()
    }
}

/// One copy of a shard that a storage node reported damaged (it failed
/// its checks there and is quarantined).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DamagedCopy {
    pub object_key: [u8; 32],
    pub segment: u32,
    pub index: u8,
    pub node: NodeId,
}

/// What repair does about one damaged copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DamageAction {
    /// The manifest (if any) does not name that node as the shard's holder:
    /// the shard moved, or the instance is gone or was stored again under
    /// another object. Nothing to rebuild; the report is cleared.
    Stale,
    /// The holder is `Up`: rebuild the shard in place on it, from the
    /// segment's other shards (never from the damaged copy).
    RebuildInPlace,
    /// The holder is not `Up`: a `Lost`, `Removed` or `Draining` holder's
    /// shards are re-placed by [`repair_plan`]; a `Down` one's wait for
    /// it to come back. The report stays until then.
    Wait,
}

/// Decides what to do about `copy`, given the instance's current
/// `manifest` (`None`: no manifest names the object any more).
pub fn damage_action(
    map: &ClusterMap,
    manifest: Option<&Manifest>,
    copy: &DamagedCopy,
) -> DamageAction {
    let named = manifest.is_some_and(|m| {
        m.object_key == copy.object_key
            && m.segment(copy.segment)
                .and_then(|s| s.shards.get(usize::from(copy.index)))
                .is_some_and(|s| s.node == Some(copy.node))
    });
    if !named {
        DamageAction::Stale
    } else if map
        .node(copy.node)
        .is_some_and(|n| n.state == NodeState::Up)
    {
        DamageAction::RebuildInPlace
    } else {
        DamageAction::Wait
    }
}

/// Plans the repair of one manifest against the current map, and what to
/// do about the copies of its shards that storage nodes reported
/// `damaged`.
///
/// The manifest's own `ec` is the profile used: its shards were encoded with
/// it, whatever the profile for new writes is now.
pub fn repair_plan(
    map: &ClusterMap,
    manifest: &Manifest,
    damaged: &[DamagedCopy],
) -> Result<RepairPlan, PlacementError> {
    map.validate()?;
    manifest.validate()?;
    let ec = manifest.ec;
    let k = ec.k();
    let site_count = map.sites.len();
    let site_position = |id: NodeId| -> Option<usize> {
        let node = map.node(id)?;
        map.sites.iter().position(|s| s.name == node.site)
    };
    let writable: Vec<Vec<NodeId>> = map
        .sites
        .iter()
        .map(|site| {
            map.nodes_in_site(&site.name)
                .filter(|n| n.accepts_shards())
                .map(|n| n.id)
                .collect()
        })
        .collect();
    // A fresh placement tells how even a segment could be now; without one
    // (too few writable nodes) nothing is rebalanced.
    let placer = Placer::new(map, &ec).ok();
    let key = &manifest.object_key;

    let mut segments = Vec::new();
    let mut protection_after = Protection::Full;
    for segment in &manifest.segments {
        let seg = segment.index;
        let rank = site_ranks(map.sites.iter().map(|s| s.name.as_str()), key, seg);

        // Sort every shard into kept (per site) or needing work.
        let mut kept: Vec<(u8, NodeId, usize)> = Vec::new();
        let mut work: Vec<(u8, Option<NodeId>, RepairReason)> = Vec::new();
        for shard in &segment.shards {
            let reason = match shard.node.map(|id| (id, map.node(id))) {
                None => RepairReason::Unplaced,
                Some((_, None)) => RepairReason::NodeUnknown,
                Some((id, Some(node))) => match node.state {
                    NodeState::Lost => RepairReason::NodeLost,
                    NodeState::Removed => RepairReason::NodeRemoved,
                    NodeState::Draining => RepairReason::NodeDraining,
                    NodeState::Up | NodeState::Down => {
                        let site =
                            site_position(id).expect("a validated map has the site of every node");
                        kept.push((shard.index, id, site));
                        continue;
                    }
                },
            };
            work.push((shard.index, shard.node, reason));
        }

        let mut counts = vec![0usize; site_count];
        for &(_, _, site) in &kept {
            counts[site] += 1;
        }
        let holders_now: Vec<NodeId> = segment.shards.iter().filter_map(|s| s.node).collect();
        let mut free: Vec<Vec<NodeId>> = writable
            .iter()
            .map(|nodes| {
                nodes
                    .iter()
                    .copied()
                    .filter(|id| !holders_now.contains(id))
                    .collect()
            })
            .collect();

        // Rebuild or move what must go, data shards first, to the emptiest
        // site with a free node.
        work.sort_by_key(|&(index, _, _)| (usize::from(index) >= k, index));
        let mut repairs = Vec::with_capacity(work.len());
        for (index, from, reason) in work {
            let site = (0..site_count)
                .filter(|&s| !free[s].is_empty())
                .min_by_key(|&s| (counts[s], rank[s]));
            let target = site.map(|s| {
                counts[s] += 1;
                take_best_node(key, seg, index, &mut free[s])
            });
            repairs.push(ShardRepair {
                index,
                from,
                reason,
                target,
            });
        }

        // Rebalance: move healthy shards out of sites fuller than a fresh
        // full placement's fullest site.
        let level = placer
            .as_ref()
            .map(|p| p.place(key, seg))
            .filter(|p| site_count >= 2 && p.protection == Protection::Full)
            .map(|p| {
                let mut per_site = vec![0usize; site_count];
                for id in p.holders.iter().flatten() {
                    if let Some(site) = site_position(*id) {
                        per_site[site] += 1;
                    }
                }
                per_site.into_iter().max().unwrap_or(0)
            });
        if let Some(level) = level {
            while let Some(source) = (0..site_count)
                .filter(|&s| counts[s] > level)
                .max_by_key(|&s| (counts[s], Reverse(rank[s])))
            {
                let Some(dest) = (0..site_count)
                    .filter(|&s| !free[s].is_empty() && counts[s] + 1 < counts[source])
                    .min_by_key(|&s| (counts[s], rank[s]))
                else {
                    break;
                };
                // Prefer moving a shard that can be copied (holder Up), then
                // parity before data, highest index first.
                let Some(position) =
                    (0..kept.len())
                        .filter(|&p| kept[p].2 == source)
                        .max_by_key(|&p| {
                            let (index, id, _) = kept[p];
                            let up = map.node(id).is_some_and(|n| n.state == NodeState::Up);
                            (up, index)
                        })
                else {
                    break; // the source's count came from repairs, not kept shards
                };
                let (index, from, _) = kept.swap_remove(position);
                counts[source] -= 1;
                counts[dest] += 1;
                let target = take_best_node(key, seg, index, &mut free[dest]);
                repairs.push(ShardRepair {
                    index,
                    from: Some(from),
                    reason: RepairReason::Rebalance,
                    target: Some(target),
                });
            }
        }

        // What the segment looks like once the targets are written.
        let mut after: Vec<Option<NodeId>> = segment.shards.iter().map(|s| s.node).collect();
        for repair in &repairs {
            let slot = &mut after[usize::from(repair.index)];
            match (repair.target, repair.reason) {
                (Some(target), _) => *slot = Some(target),
                // Unmoved shards on draining nodes are still there.
                (None, RepairReason::NodeDraining | RepairReason::Rebalance) => {}
                (None, _) => *slot = None,
            }
        }
        let segment_after = protection_of(map, &ec, &after);
        protection_after = protection_after.and(segment_after);
        if !repairs.is_empty() {
            repairs.sort_by_key(|r| r.index);
            segments.push(SegmentRepair {
                segment: seg,
                shards: repairs,
                protection_after: segment_after,
            });
        }
    }
    Ok(RepairPlan {
        segments,
        protection_after,
        damaged: damaged
            .iter()
            .map(|copy| (*copy, damage_action(map, Some(manifest), copy)))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::SegmentManifest;
    use crate::testutil::{id, map_of, object_key, per_site, placed_manifest, rs, with_site_state};

    const SEGMENTS_BYTES: u64 = 3 * 4 * 1024 * 1024 + 5;

    fn holders(segment: &SegmentManifest) -> Vec<Option<NodeId>> {
        segment.shards.iter().map(|s| s.node).collect()
    }

    /// The manifest after carrying out the plan.
    fn apply(manifest: &Manifest, plan: &RepairPlan) -> Manifest {
        let mut next = manifest.clone();
        for seg in &plan.segments {
            for shard in &seg.shards {
                if let Some(target) = shard.target {
                    next.set_holder(seg.segment, shard.index, Some(target))
                        .unwrap();
                }
            }
        }
        next
    }

    #[test]
    fn damaged_copies_are_rebuilt_in_place_waited_for_or_cleared() {
        // A spare node per site, so a draining holder's shards can move.
        let map = map_of(&[4, 4, 4]);
        let manifest = placed_manifest(&map, &rs(5, 4), SEGMENTS_BYTES, object_key(7));
        let holder = manifest.segments[0].shards[0].node.unwrap();
        let copy = DamagedCopy {
            object_key: manifest.object_key,
            segment: 0,
            index: 0,
            node: holder,
        };
        assert_eq!(
            damage_action(&map, Some(&manifest), &copy),
            DamageAction::RebuildInPlace
        );
        // A holder that is not Up: the plan or its return takes care of it.
        for state in [NodeState::Down, NodeState::Lost, NodeState::Draining] {
            let changed = map.with_node_state(holder, state).unwrap();
            assert_eq!(
                damage_action(&changed, Some(&manifest), &copy),
                DamageAction::Wait,
                "{state:?}"
            );
        }
        // Not the holder any more, another object, another segment, or
        // no manifest at all: stale.
        let elsewhere = DamagedCopy {
            node: manifest.segments[0].shards[1].node.unwrap(),
            ..copy
        };
        let other_object = DamagedCopy {
            object_key: object_key(8),
            ..copy
        };
        let no_segment = DamagedCopy {
            segment: 99,
            ..copy
        };
        for stale in [elsewhere, other_object, no_segment] {
            assert_eq!(
                damage_action(&map, Some(&manifest), &stale),
                DamageAction::Stale
            );
        }
        assert_eq!(damage_action(&map, None, &copy), DamageAction::Stale);
        // The plan carries the decisions, in the order given.
        let plan = repair_plan(&map, &manifest, &[other_object, copy]).unwrap();
        assert_eq!(
            plan.damaged,
            [
                (other_object, DamageAction::Stale),
                (copy, DamageAction::RebuildInPlace)
            ]
        );
        assert!(plan.segments.is_empty() && !plan.is_empty());
        assert_eq!(plan.rewrites().collect::<Vec<_>>(), [&copy]);
        // Once the plan moved the shard off a draining holder, the report
        // is stale.
        let draining = map.with_node_state(holder, NodeState::Draining).unwrap();
        let moved = apply(&manifest, &repair_plan(&draining, &manifest, &[]).unwrap());
        assert_ne!(moved.segments[0].shards[0].node, Some(holder));
        assert_eq!(
            damage_action(&draining, Some(&moved), &copy),
            DamageAction::Stale
        );
    }

    #[test]
    fn healthy_objects_need_nothing() {
        let map = map_of(&[3, 3, 3]);
        let manifest = placed_manifest(&map, &rs(5, 4), SEGMENTS_BYTES, object_key(1));
        let plan = repair_plan(&map, &manifest, &[]).unwrap();
        assert!(plan.is_empty());
        assert_eq!(plan.protection_after, Protection::Full);
        // Down nodes are waited for, not rebuilt.
        let down = map.with_node_state(id(0, 0), NodeState::Down).unwrap();
        assert!(repair_plan(&down, &manifest, &[]).unwrap().is_empty());
    }

    #[test]
    fn a_lost_node_is_rebuilt_in_its_own_site() {
        let map = map_of(&[4, 4, 4]);
        let manifest = placed_manifest(&map, &rs(5, 4), SEGMENTS_BYTES, object_key(2));
        let (lost_segment, lost_index) = manifest.shards_on(id(1, 0)).next().unwrap();
        let lost = map.with_node_state(id(1, 0), NodeState::Lost).unwrap();
        let plan = repair_plan(&lost, &manifest, &[]).unwrap();
        assert_eq!(plan.shard_count(), manifest.shards_on(id(1, 0)).count());
        assert!(plan.segments.iter().any(|s| s.segment == lost_segment));
        for seg in &plan.segments {
            assert_eq!(seg.shards.len(), 1);
            let shard = &seg.shards[0];
            assert_eq!(shard.from, Some(id(1, 0)));
            assert_eq!(shard.reason, RepairReason::NodeLost);
            assert_eq!(
                shard.copy_source(&lost),
                None,
                "a lost shard is reconstructed"
            );
            let target = shard.target.unwrap();
            assert_eq!(
                lost.site_of(target),
                Some("b"),
                "site b is the one short of a shard"
            );
            let before = holders(&manifest.segments[seg.segment as usize]);
            assert!(!before.contains(&Some(target)));
            assert_eq!(seg.protection_after, Protection::Full);
            if seg.segment == lost_segment {
                assert_eq!(shard.index, lost_index);
            }
        }
        assert_eq!(plan.protection_after, Protection::Full);
        let repaired = apply(&manifest, &plan);
        repaired.validate().unwrap();
        assert_eq!(repaired.protection_in(&lost), Protection::Full);
        assert!(repair_plan(&lost, &repaired, &[]).unwrap().is_empty());
    }

    #[test]
    fn a_lost_node_without_spares_leaves_the_shard_unplaced() {
        let map = map_of(&[3, 3, 3]);
        let manifest = placed_manifest(&map, &rs(5, 4), SEGMENTS_BYTES, object_key(3));
        let lost = map.with_node_state(id(2, 1), NodeState::Lost).unwrap();
        let plan = repair_plan(&lost, &manifest, &[]).unwrap();
        assert_eq!(
            plan.segments.len(),
            manifest.segments.len(),
            "every segment used every node"
        );
        for seg in &plan.segments {
            assert_eq!(seg.shards.len(), 1);
            assert_eq!(seg.shards[0].target, None);
            assert_eq!(seg.protection_after, Protection::UnderProtected);
        }
        assert_eq!(plan.protection_after, Protection::UnderProtected);
    }

    #[test]
    fn an_under_protected_object_is_completed_when_its_site_returns() {
        let map = map_of(&[3, 3, 3]);
        let down = with_site_state(&map, "c", NodeState::Down);
        let manifest = placed_manifest(&down, &rs(5, 4), SEGMENTS_BYTES, object_key(4));
        assert_eq!(manifest.protection, Protection::UnderProtected);
        manifest.validate().unwrap();

        // While the site is down there is nowhere to put the missing shards.
        let waiting = repair_plan(&down, &manifest, &[]).unwrap();
        assert_eq!(waiting.protection_after, Protection::UnderProtected);
        assert!(
            waiting
                .segments
                .iter()
                .flat_map(|s| &s.shards)
                .all(|s| s.target.is_none())
        );

        let plan = repair_plan(&map, &manifest, &[]).unwrap();
        assert_eq!(plan.segments.len(), manifest.segments.len());
        for seg in &plan.segments {
            assert_eq!(seg.shards.len(), 3);
            for shard in &seg.shards {
                assert_eq!(shard.reason, RepairReason::Unplaced);
                assert_eq!(map.site_of(shard.target.unwrap()), Some("c"));
            }
        }
        assert_eq!(plan.protection_after, Protection::Full);
        let repaired = apply(&manifest, &plan);
        repaired.validate().unwrap();
        for seg in &repaired.segments {
            assert_eq!(per_site(&map, &holders(seg)), [3, 3, 3]);
        }
    }

    #[test]
    fn crowded_sites_are_rebalanced_when_the_site_returns() {
        // 3 x 5, site c down at write time: 5 + 4 shards in sites a and b.
        let map = map_of(&[5, 5, 5]);
        let down = with_site_state(&map, "c", NodeState::Down);
        let manifest = placed_manifest(&down, &rs(5, 4), SEGMENTS_BYTES, object_key(5));
        assert_eq!(manifest.protection, Protection::UnderProtected);
        assert!(
            repair_plan(&down, &manifest, &[]).unwrap().is_empty(),
            "nothing better while down"
        );

        let plan = repair_plan(&map, &manifest, &[]).unwrap();
        for seg in &plan.segments {
            assert_eq!(seg.shards.len(), 3, "5+4+0 -> 3+3+3 takes three moves");
            for shard in &seg.shards {
                assert_eq!(shard.reason, RepairReason::Rebalance);
                assert_eq!(
                    shard.copy_source(&map),
                    shard.from,
                    "healthy holders are copied"
                );
                assert_eq!(map.site_of(shard.target.unwrap()), Some("c"));
            }
        }
        assert_eq!(plan.protection_after, Protection::Full);
        let repaired = apply(&manifest, &plan);
        repaired.validate().unwrap();
        for seg in &repaired.segments {
            assert_eq!(per_site(&map, &holders(seg)), [3, 3, 3]);
        }
        assert!(repair_plan(&map, &repaired, &[]).unwrap().is_empty());
    }

    #[test]
    fn draining_moves_shards_off_the_node() {
        let map = map_of(&[4, 4, 4]);
        let manifest = placed_manifest(&map, &rs(5, 4), SEGMENTS_BYTES, object_key(6));
        let draining = map.with_node_state(id(0, 2), NodeState::Draining).unwrap();
        let plan = repair_plan(&draining, &manifest, &[]).unwrap();
        assert_eq!(plan.shard_count(), manifest.shards_on(id(0, 2)).count());
        for shard in plan.segments.iter().flat_map(|s| &s.shards) {
            assert_eq!(shard.reason, RepairReason::NodeDraining);
            assert_eq!(shard.copy_source(&draining), Some(id(0, 2)));
            assert_eq!(draining.site_of(shard.target.unwrap()), Some("a"));
        }
        let drained = apply(&manifest, &plan);
        assert_eq!(drained.shards_on(id(0, 2)).count(), 0);
        assert_eq!(drained.protection_in(&draining), Protection::Full);
    }

    #[test]
    fn invalid_manifests_are_refused() {
        let map = map_of(&[3, 3, 3]);
        let mut manifest = placed_manifest(&map, &rs(5, 4), SEGMENTS_BYTES, object_key(7));
        manifest.segments[0].shards.pop();
        assert!(matches!(
            repair_plan(&map, &manifest, &[]),
            Err(PlacementError::InvalidManifest { .. })
        ));
    }
}

//! Property tests over random cluster maps (1-5 sites, 1-8 nodes each,
//! random states and fill) and profiles, checked against naive reference
//! implementations: brute force over every way to spread shards over sites,
//! and over every set of sites that could be lost.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use crate::layout::{Tolerance, check_layout, tolerance};
use crate::manifest::Protection;
use crate::map::{ClusterMap, NodeId, NodeState, Site};
use crate::placement::{Placer, place_segment};
use crate::plan::{ReadVerdict, ShardFault, read_plan, read_verdict};
use crate::profile::{Profile, ProfileExt};
use crate::repair::{RepairReason, repair_plan};
use crate::testutil::{id, node, placed_manifest, rs, site_name};
use crate::{Manifest, PlacementError};

// ---------------------------------------------------------------- inputs

#[derive(Clone, Debug)]
struct NodeSpec {
    state: NodeState,
    used_percent: u64,
}

fn arb_state() -> impl Strategy<Value = NodeState> {
    prop_oneof![
        6 => Just(NodeState::Up),
        1 => Just(NodeState::Down),
        1 => Just(NodeState::Lost),
        1 => Just(NodeState::Draining),
        1 => Just(NodeState::Removed),
    ]
}

fn arb_node() -> impl Strategy<Value = NodeSpec> {
    (
        arb_state(),
        prop_oneof![8 => Just(0u64), 1 => Just(50), 1 => Just(96)],
    )
        .prop_map(|(state, used_percent)| NodeSpec {
            state,
            used_percent,
        })
}

fn arb_sites() -> impl Strategy<Value = Vec<Vec<NodeSpec>>> {
    prop::collection::vec(prop::collection::vec(arb_node(), 1..=8), 1..=5)
}

fn arb_profile() -> impl Strategy<Value = Profile> {
    (1u8..=8, 1u8..=5).prop_map(|(k, m)| rs(k, m))
}

fn build_map(sites: &[Vec<NodeSpec>]) -> ClusterMap {
    let mut map = ClusterMap {
        epoch: 7,
        sites: Vec::new(),
        nodes: BTreeMap::new(),
    };
    for (s, nodes) in sites.iter().enumerate() {
        let name = site_name(s);
        map.sites.push(Site { name: name.clone() });
        for (j, spec) in nodes.iter().enumerate() {
            let mut n = node(id(s, j), &name);
            n.state = spec.state;
            n.used_bytes = n.capacity_bytes / 100 * spec.used_percent;
            map.nodes.insert(n.id, n);
        }
    }
    map
}

/// The same map with every node that could hold shards Up and empty.
fn all_up(sites: &[Vec<NodeSpec>]) -> Vec<Vec<NodeSpec>> {
    sites
        .iter()
        .map(|nodes| {
            nodes
                .iter()
                .map(|_| NodeSpec {
                    state: NodeState::Up,
                    used_percent: 0,
                })
                .collect()
        })
        .collect()
}

// ------------------------------------------------------ naive references

/// Every way to put `total` shards in sites holding at most `limit[s]` each.
fn spreads(limit: &[usize], total: usize) -> Vec<Vec<usize>> {
    fn go(limit: &[usize], left: usize, prefix: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        let Some((&first, rest)) = limit.split_first() else {
            if left == 0 {
                out.push(prefix.clone());
            }
            return;
        };
        for c in 0..=first.min(left) {
            if rest.iter().sum::<usize>() + c < left {
                continue;
            }
            prefix.push(c);
            go(rest, left - c, prefix, out);
            prefix.pop();
        }
    }
    let mut out = Vec::new();
    go(limit, total, &mut Vec::new(), &mut out);
    out
}

/// What a spread survives, by trying every set of lost sites.
fn naive_tolerance(counts: &[usize], k: usize) -> Tolerance {
    let placed: usize = counts.iter().sum();
    if placed < k {
        return Tolerance {
            sites: 0,
            extra_nodes: 0,
        };
    }
    let subsets = 1usize << counts.len();
    let worst_with = |t: usize| -> Option<usize> {
        // Shards left beyond k after the worst loss of t sites, if readable.
        (0..subsets)
            .filter(|mask| mask.count_ones() as usize == t)
            .map(|mask| {
                let lost: usize = (0..counts.len())
                    .filter(|s| mask & (1 << s) != 0)
                    .map(|s| counts[s])
                    .sum();
                (placed - lost).checked_sub(k)
            })
            .try_fold(usize::MAX, |acc, left| left.map(|l| acc.min(l)))
    };
    let sites = (0..=counts.len())
        .rev()
        .find(|&t| worst_with(t).is_some())
        .unwrap();
    Tolerance {
        sites,
        extra_nodes: worst_with(sites).unwrap(),
    }
}

fn best_tolerance(limit: &[usize], total: usize, k: usize) -> Option<Tolerance> {
    spreads(limit, total)
        .iter()
        .map(|c| naive_tolerance(c, k))
        .max_by_key(|t| (t.sites, t.extra_nodes))
}

fn per_site_count(map: &ClusterMap, pred: impl Fn(&crate::NodeInfo) -> bool) -> Vec<usize> {
    map.sites
        .iter()
        .map(|s| map.nodes_in_site(&s.name).filter(|n| pred(n)).count())
        .collect()
}

fn counts_of(map: &ClusterMap, holders: &[Option<NodeId>]) -> Vec<usize> {
    map.sites
        .iter()
        .map(|s| {
            holders
                .iter()
                .flatten()
                .filter(|&&n| map.site_of(n) == Some(s.name.as_str()))
                .count()
        })
        .collect()
}

// ------------------------------------------------------------ properties

// 256 cases by default; PROPTEST_CASES=n runs more.
/// One RS(3,2) segment placed on `sites` while every node was up, and the
/// map after the nodes changed to `states`; `None` when the map cannot
/// hold the profile.
fn placed_then_changed(
    sites: &[Vec<NodeSpec>],
    states: &[NodeState],
    key: [u8; 32],
) -> Option<(ClusterMap, crate::SegmentManifest)> {
    let profile = rs(3, 2);
    let written = build_map(&all_up(sites));
    Placer::new(&written, &profile).ok()?;
    let segment = placed_manifest(&written, &profile, 1000, key).segments[0].clone();
    let mut map = written;
    for (n, state) in map.nodes.values_mut().zip(states) {
        n.state = *state;
    }
    Some((map, segment))
}

proptest! {
    #[test]
    fn placement_invariants(
        sites in arb_sites(),
        profile in arb_profile(),
        key in any::<[u8; 32]>(),
        segment in any::<u32>(),
    ) {
        let map = build_map(&sites);
        let (k, m, n) = (profile.k(), profile.m(), profile.n());
        let writable = per_site_count(&map, |n| n.accepts_shards());
        let total_writable: usize = writable.iter().sum();
        let result = place_segment(&map, &profile, &key, segment);
        if total_writable < k {
            prop_assert_eq!(result, Err(PlacementError::Unavailable {
                profile: profile.to_string(),
                writable: total_writable,
                needed: k,
            }));
            return Ok(());
        }
        let p = result.unwrap();
        prop_assert_eq!(p.holders.len(), n);

        // One shard per node, only on nodes that accept shards.
        let holders: Vec<NodeId> = p.holders.iter().flatten().copied().collect();
        let distinct: BTreeSet<NodeId> = holders.iter().copied().collect();
        prop_assert_eq!(distinct.len(), holders.len(), "a node holds two shards");
        for id in &holders {
            prop_assert!(map.node(*id).unwrap().accepts_shards(), "node {} may not take shards", id);
        }
        // As many shards as the writable nodes allow.
        prop_assert_eq!(p.placed(), n.min(total_writable));

        // Full exactly when the naive search finds a spread within the cap.
        let cap = profile.site_cap(map.sites.len());
        let counts = counts_of(&map, &p.holders);
        let capped: Vec<usize> = writable.iter().map(|&w| w.min(cap)).collect();
        let full_possible = !spreads(&capped, n).is_empty();
        prop_assert_eq!(p.protection == Protection::Full, full_possible);
        if p.protection == Protection::Full {
            prop_assert!(counts.iter().all(|&c| c <= cap), "{:?} over cap {}", counts, cap);
        } else {
            prop_assert!(p.placed() >= k);
            if total_writable > k {
                prop_assert!(p.placed() > k, "k + 1 writable nodes must give k + 1 shards");
            }
        }

        // As even as possible: no spread of as many shards has a smaller
        // fullest site.
        let best_max = spreads(&writable, p.placed())
            .iter()
            .map(|c| c.iter().copied().max().unwrap_or(0))
            .min()
            .unwrap();
        prop_assert_eq!(counts.iter().copied().max().unwrap_or(0), best_max);

        // Deterministic, and independent of the map's site order.
        prop_assert_eq!(&place_segment(&map, &profile, &key, segment).unwrap(), &p);
        let mut reordered = map.clone();
        reordered.sites.reverse();
        prop_assert_eq!(&Placer::new(&reordered, &profile).unwrap().place(&key, segment), &p);
        let _ = m;
    }

    #[test]
    fn check_layout_agrees_with_naive_reference(sites in arb_sites(), profile in arb_profile()) {
        let map = build_map(&sites);
        let (k, m, n) = (profile.k(), profile.m(), profile.n());
        let room = per_site_count(&map, |n| n.state.in_layout());
        let have: usize = room.iter().sum();
        let site_count = map.sites.len();
        let cap = profile.site_cap(site_count);
        let capped: Vec<usize> = room.iter().map(|&r| r.min(cap)).collect();

        // tolerance() is the best any spread of the layout's nodes achieves.
        prop_assert_eq!(Some(tolerance(&map, &profile)), best_tolerance(&room, n.min(have), k));

        match check_layout(&map, &profile) {
            Ok(t) => {
                prop_assert_eq!(Some(t), best_tolerance(&capped, n, k));
                if site_count >= 2 {
                    prop_assert!(t.sites >= 1, "a multi-site layout must survive a site: {}", t);
                }
            }
            Err(e) => {
                prop_assert!(spreads(&capped, n).is_empty(), "refused a feasible layout: {}", e);
                let kind_ok = match e {
                    PlacementError::TooFewNodes { needed, have: h, .. } => needed == n && h == have && have < n,
                    PlacementError::TooFewSites { .. } => have >= n && site_count >= 2 && site_count * m < n,
                    PlacementError::SitesTooSmall { holdable, .. } => {
                        have >= n && site_count * m >= n && holdable == capped.iter().sum::<usize>()
                    }
                    _ => false,
                };
                prop_assert!(kind_ok, "wrong reason: {}", e);
            }
        }
    }

    #[test]
    fn full_placements_survive_what_tolerance_promises(
        sites in arb_sites(),
        profile in arb_profile(),
        key in any::<[u8; 32]>(),
    ) {
        // The layout as configured, everything up: placement sees what
        // check_layout judged.
        let map = build_map(&all_up(&sites));
        let Ok(promised) = check_layout(&map, &profile) else { return Ok(()) };
        let placer = Placer::new(&map, &profile).unwrap();
        for segment in 0..8 {
            let p = placer.place(&key, segment);
            prop_assert_eq!(p.protection, Protection::Full);
            let actual = naive_tolerance(&counts_of(&map, &p.holders), profile.k());
            prop_assert!(
                (actual.sites, actual.extra_nodes) >= (promised.sites, promised.extra_nodes),
                "placed {:?} survives {} but {} was promised", p.holders, actual, promised
            );
        }
    }

    #[test]
    fn read_plans_prefer_data_and_skip_unreadable(
        sites in arb_sites(),
        states in prop::collection::vec(arb_state(), 40),
        local in 0usize..6,
        key in any::<[u8; 32]>(),
    ) {
        let Some((map, segment)) = placed_then_changed(&sites, &states, key) else {
            return Ok(());
        };
        let local = site_name(local);
        let plan = read_plan(&map, &segment, 3, Some(&local));
        let readable: Vec<(u8, NodeId)> = segment
            .shards
            .iter()
            .filter_map(|s| s.node.filter(|&n| map.node(n).unwrap().state.readable()).map(|n| (s.index, n)))
            .collect();
        prop_assert_eq!(plan.primary.len(), readable.len().min(3));
        prop_assert_eq!(plan.is_readable(), readable.len() >= 3);
        let mut all: Vec<(u8, NodeId)> = plan.holders().collect();
        all.sort_unstable();
        prop_assert_eq!(all, readable.clone());
        // Data before parity: primary holds every readable data shard.
        let readable_data = readable.iter().filter(|(i, _)| *i < 3).count();
        prop_assert_eq!(plan.primary.iter().filter(|(i, _)| *i < 3).count(), readable_data.min(3));
        prop_assert_eq!(plan.needs_decode(), readable_data < 3 && readable.len() > readable_data);
        // Local before remote among data shards of the primary.
        let remote = |n: NodeId| map.site_of(n) != Some(local.as_str());
        let data: Vec<bool> = plan.primary.iter().filter(|(i, _)| *i < 3).map(|&(_, n)| remote(n)).collect();
        prop_assert!(data.windows(2).all(|w| w[0] <= w[1]), "remote before local: {:?}", plan);
    }

    #[test]
    fn down_holders_come_last_and_verdicts_follow_damage(
        sites in arb_sites(),
        states in prop::collection::vec(arb_state(), 40),
        faults in prop::collection::vec((0u8..5, 0u8..3), 0..12),
        key in any::<[u8; 32]>(),
    ) {
        let Some((map, segment)) = placed_then_changed(&sites, &states, key) else {
            return Ok(());
        };
        let plan = read_plan(&map, &segment, 3, None);
        // Candidates: every shard on a readable or Down holder, once, with
        // the Down ones after all others.
        let state_of = |n: NodeId| map.node(n).unwrap().state;
        let mut askable: Vec<(u8, NodeId)> = segment.shards.iter()
            .filter_map(|s| s.node.filter(|&n| state_of(n).readable() || state_of(n) == NodeState::Down).map(|n| (s.index, n)))
            .collect();
        askable.sort_unstable();
        let candidates: Vec<(u8, NodeId)> = plan.candidates().collect();
        let mut sorted = candidates.clone();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, askable);
        let first_down = candidates.iter().position(|&(_, n)| state_of(n) == NodeState::Down);
        if let Some(at) = first_down {
            prop_assert!(candidates[at..].iter().all(|&(_, n)| state_of(n) == NodeState::Down));
        }

        let faults: Vec<(u8, ShardFault)> = faults.into_iter().map(|(i, f)| (i, match f {
            0 => ShardFault::Damaged,
            1 => ShardFault::Unreachable,
            _ => ShardFault::Missing,
        })).collect();
        let remaining = |v: ReadVerdict| match v {
            ReadVerdict::Lost { remaining } | ReadVerdict::Unavailable { remaining } => remaining,
        };
        let verdict = read_verdict(&map, &segment, 3, &faults);
        // Lost exactly when fewer than k may remain.
        prop_assert_eq!(matches!(verdict, ReadVerdict::Lost { .. }), remaining(verdict) < 3);
        // Only damage counts: without the Damaged faults the verdict is the
        // no-fault one, and damage never adds a shard.
        let undamaged: Vec<(u8, ShardFault)> = faults.iter().copied().filter(|f| f.1 != ShardFault::Damaged).collect();
        let clean = read_verdict(&map, &segment, 3, &[]);
        prop_assert_eq!(read_verdict(&map, &segment, 3, &undamaged), clean);
        prop_assert!(remaining(verdict) <= remaining(clean));
        let damaged: std::collections::BTreeSet<u8> = faults.iter().filter(|f| f.1 == ShardFault::Damaged).map(|f| f.0).collect();
        prop_assert!(remaining(verdict) + damaged.len() >= remaining(clean));
        // With nothing damaged and every holder alive, the answer is never
        // DATA_LOSS.
        if segment.shards.iter().all(|s| s.node.is_some_and(|n| !state_of(n).shards_lost())) {
            prop_assert_eq!(clean, ReadVerdict::Unavailable { remaining: 5 });
        }
    }

    #[test]
    fn repair_plans_fix_what_is_broken(
        sites in arb_sites(),
        states in prop::collection::vec(arb_state(), 40),
        profile in arb_profile(),
        key in any::<[u8; 32]>(),
    ) {
        let written = build_map(&all_up(&sites));
        if Placer::new(&written, &profile).is_err() {
            return Ok(());
        }
        let size = u64::from(profile.segment_bytes) * 2 + 17;
        let manifest: Manifest = placed_manifest(&written, &profile, size, key);
        manifest.validate().unwrap();
        let mut map = written.clone();
        for (n, state) in map.nodes.values_mut().zip(&states) {
            n.state = *state;
        }
        let plan = repair_plan(&map, &manifest, &[]).unwrap();
        let mut after = manifest.clone();
        for seg in &manifest.segments {
            let repairs = plan.segments.iter().find(|r| r.segment == seg.index);
            for shard in &seg.shards {
                let broken = match shard.node {
                    None => true,
                    Some(n) => {
                        let state = map.node(n).unwrap().state;
                        state.shards_lost() || state == NodeState::Draining
                    }
                };
                let planned = repairs.and_then(|r| r.shards.iter().find(|s| s.index == shard.index));
                if broken {
                    prop_assert!(planned.is_some(), "segment {} shard {} broken but not planned", seg.index, shard.index);
                }
                if let Some(planned) = planned {
                    prop_assert!(broken || planned.reason == RepairReason::Rebalance);
                    if let Some(target) = planned.target {
                        prop_assert!(map.node(target).unwrap().accepts_shards());
                        after.set_holder(seg.index, shard.index, Some(target)).unwrap();
                    }
                }
            }
        }
        // The result is a valid manifest: in particular targets never
        // collide with other holders of their segment.
        if plan.protection_after == Protection::UnderProtected {
            after.protection = Protection::UnderProtected;
        }
        prop_assert!(after.validate().is_ok(), "{:?}", after.validate());
        if plan.protection_after == Protection::Full {
            prop_assert_eq!(after.protection_in(&map), Protection::Full);
        }
    }
}

#[test]
fn naive_references_on_known_cases() {
    assert_eq!(spreads(&[1, 1], 2), [[1, 1]]);
    assert_eq!(spreads(&[2, 1], 2), [vec![1, 1], vec![2, 0]]);
    assert!(spreads(&[1, 1], 3).is_empty());
    assert_eq!(
        naive_tolerance(&[3, 3, 3], 5),
        Tolerance {
            sites: 1,
            extra_nodes: 1
        }
    );
    assert_eq!(
        naive_tolerance(&[9], 5),
        Tolerance {
            sites: 0,
            extra_nodes: 4
        }
    );
}

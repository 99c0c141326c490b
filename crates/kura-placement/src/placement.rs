//! Deterministic shard placement: which node holds each of the k + m shards
//! of one segment. Gateways decide with [`place_segment`] (or a [`Placer`]
//! reused across segments), then write; the manifest records the result, so
//! the algorithm may change without touching stored data.
//!
//! Architecture invariant: no node holds two shards of one segment, and with
//! [`Protection::Full`] no site holds more than m of them (so any one site can
//! be lost). Only nodes that are `Up` and under
//! [`NODE_FULL_PERCENT`](crate::NODE_FULL_PERCENT) full receive shards.
//!
//! The algorithm, per segment, in three steps:
//! 1. **Split over sites.** Every listed site gets an even share of the n
//!    shards (the sites ranked highest for this segment get the remainder),
//!    and each shard index goes to a site by rendezvous hashing under those
//!    shares. This step looks only at site *names*, so no change of nodes or
//!    node states moves a shard from one site to another.
//! 2. **Pick nodes inside each site.** Each site matches its indices to its
//!    writable nodes by rendezvous hashing on (object key, segment, index,
//!    node), highest-scoring pairs first. Adding or removing a node only
//!    moves the shards that node wins or held, plus now and then a short
//!    chain of displaced ones, all inside that site (measured: 1.2-1.4x the
//!    minimum, see `tests/movement.rs`).
//! 3. **Overflow.** Indices a site cannot hold (too few writable nodes, or a
//!    site down) go to the sites with the fewest shards that still have free
//!    writable nodes, data shards first. What still finds no node stays
//!    unplaced (`None`).
//!
//! The result is [`Protection::Full`] when every shard is placed and no site
//! holds more than m; otherwise it is a degraded placement, marked
//! [`Protection::UnderProtected`]: still one shard per node and as many shards
//! as the writable nodes allow, so the object is readable (at least k
//! shards) and, with at least k + 1 writable nodes, survives one more node
//! loss. Repair re-protects it once placement allows.
//!
//! Single-site maps have no site cap: they get node-level protection only
//! (any m nodes may fail), and losing the site loses the data.

use std::cmp::Reverse;

use crate::error::PlacementError;
use crate::manifest::Protection;
use crate::map::{ClusterMap, NodeId};
use crate::profile::{Profile, ProfileExt};
use crate::score;

/// Where each shard of one segment goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// k + m entries, by shard index; `None` = not placed (under-protected).
    pub holders: Vec<Option<NodeId>>,
    pub protection: Protection,
}

impl Placement {
    /// How many shards have a holder.
    pub fn placed(&self) -> usize {
        self.holders.iter().flatten().count()
    }

    /// The holder of shard `index`, if placed.
    pub fn holder(&self, index: u8) -> Option<NodeId> {
        self.holders.get(usize::from(index)).copied().flatten()
    }
}

/// Places the shards of segment `segment` of the object `object_key`.
///
/// Fails only on an invalid map or profile, or with
/// [`PlacementError::Unavailable`] when fewer than k nodes can take shards.
/// To place many segments against one map, build a [`Placer`] once.
pub fn place_segment(
    map: &ClusterMap,
    profile: &Profile,
    object_key: &[u8; 32],
    segment: u32,
) -> Result<Placement, PlacementError> {
    Ok(Placer::new(map, profile)?.place(object_key, segment))
}

/// A map and profile checked once and indexed for placing many segments.
#[derive(Clone, Debug)]
pub struct Placer {
    profile: Profile,
    /// Every listed site, in map order, with its nodes that accept shards.
    sites: Vec<SiteNodes>,
    writable: usize,
}

#[derive(Clone, Debug)]
struct SiteNodes {
    name: String,
    /// Ascending ids of the nodes that accept shards now.
    nodes: Vec<NodeId>,
}

impl Placer {
    pub fn new(map: &ClusterMap, profile: &Profile) -> Result<Placer, PlacementError> {
        map.validate()?;
        profile.check()?;
        let sites: Vec<SiteNodes> = map
            .sites
            .iter()
            .map(|site| SiteNodes {
                name: site.name.clone(),
                nodes: map
                    .nodes_in_site(&site.name)
                    .filter(|n| n.accepts_shards())
                    .map(|n| n.id)
                    .collect(),
            })
            .collect();
        let writable = sites.iter().map(|s| s.nodes.len()).sum();
        if writable < profile.k() {
            return Err(PlacementError::Unavailable {
                profile: profile.to_string(),
                writable,
                needed: profile.k(),
            });
        }
        Ok(Placer {
            profile: *profile,
            sites,
            writable,
        })
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// How many nodes accept shards now.
    pub fn writable_nodes(&self) -> usize {
        self.writable
    }

    /// Places the shards of segment `segment` of the object `object_key`.
    pub fn place(&self, object_key: &[u8; 32], segment: u32) -> Placement {
        let n = self.profile.n();
        let k = self.profile.k();
        let site_count = self.sites.len();
        // new() refused maps with fewer than k >= 1 writable nodes, so some
        // site exists.
        assert!(
            site_count > 0,
            "a placer always has a site with writable nodes"
        );

        let rank = site_ranks(
            self.sites.iter().map(|s| s.name.as_str()),
            object_key,
            segment,
        );
        let site_of_index = self.split_over_sites(object_key, segment, &rank);

        // Step 2: inside each site.
        let mut holders: Vec<Option<NodeId>> = vec![None; n];
        let mut counts = vec![0usize; site_count];
        let mut free: Vec<Vec<NodeId>> = self.sites.iter().map(|s| s.nodes.clone()).collect();
        let mut leftovers = Vec::new();
        for (site, nodes) in free.iter_mut().enumerate() {
            let indices: Vec<u8> = (0..n)
                .filter(|&i| site_of_index[i] == site)
                .map(shard_index)
                .collect();
            for (index, node) in match_in_site(object_key, segment, &indices, nodes) {
                match node {
                    Some(node) => {
                        holders[usize::from(index)] = Some(node);
                        counts[site] += 1;
                    }
                    None => leftovers.push(index),
                }
            }
        }

        // Step 3: overflow to the emptiest sites that still have free nodes.
        leftovers.sort_by_key(|&i| (usize::from(i) >= k, i));
        for index in leftovers {
            let Some(site) = (0..site_count)
                .filter(|&s| !free[s].is_empty())
                .min_by_key(|&s| (counts[s], rank[s]))
            else {
                break; // no free writable node anywhere: the rest stay unplaced
            };
            let node = take_best_node(object_key, segment, index, &mut free[site]);
            holders[usize::from(index)] = Some(node);
            counts[site] += 1;
        }

        let all_placed = holders.iter().all(Option::is_some);
        let within_cap = counts
            .iter()
            .all(|&c| c <= self.profile.site_cap(site_count));
        let protection = if all_placed && within_cap {
            Protection::Full
        } else {
            Protection::UnderProtected
        };
        assert_distinct(&holders);
        Placement {
            holders,
            protection,
        }
    }

    /// Step 1: the site of every shard index, under even shares.
    fn split_over_sites(&self, key: &[u8; 32], segment: u32, rank: &[usize]) -> Vec<usize> {
        let n = self.profile.n();
        let site_count = self.sites.len();
        let share: Vec<usize> = rank
            .iter()
            .map(|&r| n / site_count + usize::from(r < n % site_count))
            .collect();
        let mut pairs: Vec<(Reverse<score::Score>, u8, usize)> = Vec::with_capacity(n * site_count);
        for index in (0..n).map(shard_index) {
            for (site, s) in self.sites.iter().enumerate() {
                pairs.push((
                    Reverse(score::site_slot(key, segment, index, &s.name)),
                    index,
                    site,
                ));
            }
        }
        pairs.sort_by(|a, b| {
            (a.0, a.1)
                .cmp(&(b.0, b.1))
                .then_with(|| self.sites[a.2].name.cmp(&self.sites[b.2].name))
        });
        let mut site_of_index = vec![usize::MAX; n];
        let mut filled = vec![0usize; site_count];
        for (_, index, site) in pairs {
            let slot = &mut site_of_index[usize::from(index)];
            if *slot == usize::MAX && filled[site] < share[site] {
                *slot = site;
                filled[site] += 1;
            }
        }
        assert!(
            site_of_index.iter().all(|&s| s < site_count),
            "shares add up to n, so every index has a site"
        );
        site_of_index
    }
}

/// Each site's position in a segment's ranking of sites (0 = first), for
/// sites given in map order.
pub(crate) fn site_ranks<'a>(
    sites: impl Iterator<Item = &'a str>,
    key: &[u8; 32],
    segment: u32,
) -> Vec<usize> {
    let mut order: Vec<(score::Score, &str, usize)> = sites
        .enumerate()
        .map(|(position, name)| (score::site_rank(key, segment, name), name, position))
        .collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let mut rank = vec![0; order.len()];
    for (r, &(_, _, site)) in order.iter().enumerate() {
        rank[site] = r;
    }
    rank
}

/// Matches shard indices to distinct nodes of one site, highest-scoring
/// (index, node) pairs first: a stable matching, so a node joining or leaving
/// disturbs few pairs. (Serving data shards first here would keep more data
/// shards placed in a short site, but measurably increased movement.)
/// Removes the chosen nodes from `free`. Returns every index with its node,
/// or `None` if none was left.
fn match_in_site(
    key: &[u8; 32],
    segment: u32,
    indices: &[u8],
    free: &mut Vec<NodeId>,
) -> Vec<(u8, Option<NodeId>)> {
    let mut pairs: Vec<(Reverse<score::Score>, u8, NodeId)> =
        Vec::with_capacity(indices.len() * free.len());
    for &index in indices {
        for &node in free.iter() {
            pairs.push((
                Reverse(score::node_slot(key, segment, index, node)),
                index,
                node,
            ));
        }
    }
    pairs.sort_unstable();
    let mut chosen: Vec<(u8, Option<NodeId>)> = indices.iter().map(|&i| (i, None)).collect();
    let mut taken: Vec<NodeId> = Vec::with_capacity(indices.len());
    for (_, index, node) in pairs {
        if taken.len() == indices.len() {
            break;
        }
        let entry = chosen
            .iter_mut()
            .find(|(i, _)| *i == index)
            .expect("pairs are built from these indices");
        if entry.1.is_none() && !taken.contains(&node) {
            entry.1 = Some(node);
            taken.push(node);
        }
    }
    free.retain(|n| !taken.contains(n));
    chosen
}

/// The free node that shard `index` scores highest on, removed from `free`.
/// `free` must not be empty.
pub(crate) fn take_best_node(
    key: &[u8; 32],
    segment: u32,
    index: u8,
    free: &mut Vec<NodeId>,
) -> NodeId {
    let position = (0..free.len())
        .max_by_key(|&p| {
            (
                score::node_slot(key, segment, index, free[p]),
                Reverse(free[p]),
            )
        })
        .expect("callers only ask sites with a free node");
    free.swap_remove(position)
}

/// Shard indices fit a `u8`: the erasure profile caps k + m at 255.
fn shard_index(i: usize) -> u8 {
    u8::try_from(i).expect("k + m <= SHARDS_TOTAL_MAX <= 255")
}

/// Architecture invariant: never two shards of one segment on one node.
fn assert_distinct(holders: &[Option<NodeId>]) {
    let mut seen: Vec<NodeId> = holders.iter().flatten().copied().collect();
    seen.sort_unstable();
    let before = seen.len();
    seen.dedup();
    assert_eq!(
        before,
        seen.len(),
        "two shards of one segment on one node: {holders:?}"
    );
}

/// The protection a segment has *now* with these holders: full when every
/// shard sits on a distinct node that still exists and has not lost its
/// shards (`Up`, `Down`, `Draining`), and, in a multi-site map, no site
/// holds more than m of them.
pub fn protection_of(
    map: &ClusterMap,
    profile: &Profile,
    holders: &[Option<NodeId>],
) -> Protection {
    let cap = profile.site_cap(map.sites.len());
    let mut per_site: Vec<usize> = vec![0; map.sites.len()];
    let mut nodes: Vec<NodeId> = Vec::with_capacity(holders.len());
    for holder in holders {
        let Some(node) = holder.and_then(|id| map.node(id)) else {
            return Protection::UnderProtected;
        };
        if node.state.shards_lost() || nodes.contains(&node.id) {
            return Protection::UnderProtected;
        }
        nodes.push(node.id);
        let Some(site) = map.sites.iter().position(|s| s.name == node.site) else {
            return Protection::UnderProtected;
        };
        per_site[site] += 1;
    }
    if holders.len() == profile.n() && per_site.iter().all(|&c| c <= cap) {
        Protection::Full
    } else {
        Protection::UnderProtected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::NodeState;
    use crate::testutil::{id, map_of, object_key, per_site, rs, with_site_state};

    #[test]
    fn default_profile_on_three_sites_puts_three_per_site() {
        let map = map_of(&[3, 3, 3]);
        let placer = Placer::new(&map, &rs(5, 4)).unwrap();
        for i in 0..200 {
            let p = placer.place(&object_key(i), 0);
            assert_eq!(p.protection, Protection::Full);
            assert_eq!(p.placed(), 9);
            assert_eq!(per_site(&map, &p.holders), [3, 3, 3]);
            assert_eq!(
                p,
                place_segment(&map, &rs(5, 4), &object_key(i), 0).unwrap()
            );
        }
    }

    #[test]
    fn segments_of_one_object_spread_differently() {
        let map = map_of(&[4, 4, 4]);
        let placer = Placer::new(&map, &rs(5, 4)).unwrap();
        let key = object_key(1);
        let distinct: std::collections::BTreeSet<_> =
            (0..20).map(|s| placer.place(&key, s).holders).collect();
        assert!(distinct.len() > 15, "segments should not share one layout");
    }

    #[test]
    fn the_odd_shards_rotate_over_sites() {
        // 9 shards over 4 sites: 3 + 2 + 2 + 2, and every site is sometimes the 3.
        let map = map_of(&[3, 3, 3, 3]);
        let placer = Placer::new(&map, &rs(5, 4)).unwrap();
        let mut times_three = [0usize; 4];
        for i in 0..400 {
            let p = placer.place(&object_key(i), 0);
            let mut counts = per_site(&map, &p.holders);
            for (s, &c) in counts.iter().enumerate() {
                if c == 3 {
                    times_three[s] += 1;
                }
            }
            counts.sort_unstable();
            assert_eq!(counts, [2, 2, 2, 3]);
            assert_eq!(p.protection, Protection::Full);
        }
        for t in times_three {
            assert!((60..=140).contains(&t), "{times_three:?}");
        }
    }

    #[test]
    fn nodes_share_the_load_evenly() {
        let map = map_of(&[4, 4, 4]);
        let placer = Placer::new(&map, &rs(5, 4)).unwrap();
        let mut per_node = std::collections::BTreeMap::<NodeId, usize>::new();
        let segments = 4000;
        for i in 0..segments {
            for node in placer
                .place(&object_key(i), 0)
                .holders
                .into_iter()
                .flatten()
            {
                *per_node.entry(node).or_default() += 1;
            }
        }
        // Each node should hold 3/4 of a shard per segment.
        let ideal = segments as f64 * 0.75;
        for (node, count) in per_node {
            let ratio = count as f64 / ideal;
            assert!(
                (0.93..1.07).contains(&ratio),
                "node {node}: {count} vs {ideal}"
            );
        }
    }

    #[test]
    fn a_site_down_leaves_the_other_sites_untouched() {
        let map = map_of(&[3, 3, 3]);
        let down = with_site_state(&map, "c", NodeState::Down);
        let profile = rs(5, 4);
        let (up, degraded) = (
            Placer::new(&map, &profile).unwrap(),
            Placer::new(&down, &profile).unwrap(),
        );
        for i in 0..300 {
            let before = up.place(&object_key(i), 3);
            let after = degraded.place(&object_key(i), 3);
            assert_eq!(after.protection, Protection::UnderProtected);
            assert_eq!(after.placed(), 6, "k + 1 = 6 survivors, all used");
            for (b, a) in before.holders.iter().zip(&after.holders) {
                if b.is_some_and(|n| map.site_of(n) != Some("c")) {
                    assert_eq!(a, b, "a shard outside site c moved");
                } else {
                    assert_eq!(*a, None);
                }
            }
        }
    }

    #[test]
    fn degraded_placement_uses_every_writable_node() {
        // 3 x 5 with a site down: 10 writable nodes for 9 shards, all placed,
        // but one site must then hold 5 > m = 4.
        let map = with_site_state(&map_of(&[5, 5, 5]), "b", NodeState::Down);
        let placer = Placer::new(&map, &rs(5, 4)).unwrap();
        for i in 0..200 {
            let p = placer.place(&object_key(i), 0);
            assert_eq!(p.placed(), 9);
            assert_eq!(p.protection, Protection::UnderProtected);
            let mut counts = per_site(&map, &p.holders);
            counts.sort_unstable();
            assert_eq!(counts, [0, 4, 5]);
        }
        // Only 7 writable nodes for RS(5,4): 7 placed, k + 2.
        let map = with_site_state(&map_of(&[4, 3, 3]), "b", NodeState::Down);
        let placer = Placer::new(&map, &rs(5, 4)).unwrap();
        for i in 0..200 {
            let p = placer.place(&object_key(i), 0);
            assert_eq!(p.placed(), 7);
            assert_eq!(per_site(&map, &p.holders), [4, 0, 3]);
        }
    }

    #[test]
    fn too_few_writable_nodes_is_unavailable() {
        let map = with_site_state(&map_of(&[2, 2, 2]), "a", NodeState::Down);
        let map = with_site_state(&map, "b", NodeState::Draining);
        let err = place_segment(&map, &rs(5, 4), &object_key(0), 0).unwrap_err();
        assert_eq!(
            err,
            PlacementError::Unavailable {
                profile: "RS(5,4)".into(),
                writable: 2,
                needed: 5
            }
        );
        assert!(err.is_retryable());
        assert!(err.to_string().contains("2 nodes can take shards"), "{err}");
    }

    #[test]
    fn full_and_unwritable_nodes_get_nothing() {
        let mut map = map_of(&[4, 4, 4]);
        map.nodes.get_mut(&id(0, 0)).unwrap().used_bytes = (1 << 40) / 100 * 96;
        map.nodes.get_mut(&id(1, 1)).unwrap().state = NodeState::Draining;
        map.nodes.get_mut(&id(2, 2)).unwrap().state = NodeState::Lost;
        let placer = Placer::new(&map, &rs(5, 4)).unwrap();
        assert_eq!(placer.writable_nodes(), 9);
        for i in 0..300 {
            let p = placer.place(&object_key(i), 0);
            assert_eq!(p.protection, Protection::Full);
            for excluded in [id(0, 0), id(1, 1), id(2, 2)] {
                assert!(!p.holders.contains(&Some(excluded)));
            }
        }
    }

    #[test]
    fn single_site_has_no_site_cap() {
        let map = map_of(&[9]);
        let p = place_segment(&map, &rs(5, 4), &object_key(0), 0).unwrap();
        assert_eq!((p.placed(), p.protection), (9, Protection::Full));
        let map = map_of(&[7]);
        let p = place_segment(&map, &rs(5, 4), &object_key(0), 0).unwrap();
        assert_eq!((p.placed(), p.protection), (7, Protection::UnderProtected));
    }

    #[test]
    fn site_order_in_the_map_does_not_matter() {
        let map = map_of(&[3, 4, 2, 3]);
        let mut reversed = map.clone();
        reversed.sites.reverse();
        let (a, b) = (
            Placer::new(&map, &rs(5, 4)).unwrap(),
            Placer::new(&reversed, &rs(5, 4)).unwrap(),
        );
        for i in 0..100 {
            assert_eq!(a.place(&object_key(i), 7), b.place(&object_key(i), 7));
        }
    }

    #[test]
    fn invalid_input_is_refused() {
        let mut map = map_of(&[3, 3, 3]);
        assert!(matches!(
            place_segment(&map, &rs(0, 4), &object_key(0), 0),
            Err(PlacementError::InvalidProfile { .. })
        ));
        map.nodes.get_mut(&id(0, 0)).unwrap().site = "nowhere".into();
        assert!(matches!(
            place_segment(&map, &rs(5, 4), &object_key(0), 0),
            Err(PlacementError::InvalidMap(_))
        ));
    }

    #[test]
    fn protection_of_recorded_holders() {
        let map = map_of(&[3, 3, 3]);
        let profile = rs(5, 4);
        let p = place_segment(&map, &profile, &object_key(0), 0).unwrap();
        assert_eq!(protection_of(&map, &profile, &p.holders), Protection::Full);
        let holder = p.holders[0].unwrap();
        for (state, expected) in [
            (NodeState::Down, Protection::Full),
            (NodeState::Draining, Protection::Full),
            (NodeState::Lost, Protection::UnderProtected),
            (NodeState::Removed, Protection::UnderProtected),
        ] {
            let map = map.with_node_state(holder, state).unwrap();
            assert_eq!(
                protection_of(&map, &profile, &p.holders),
                expected,
                "{state}"
            );
        }
        let mut holders = p.holders.clone();
        holders[1] = None;
        assert_eq!(
            protection_of(&map, &profile, &holders),
            Protection::UnderProtected
        );
        holders[1] = Some(999);
        assert_eq!(
            protection_of(&map, &profile, &holders),
            Protection::UnderProtected
        );
        holders[1] = holders[0];
        assert_eq!(
            protection_of(&map, &profile, &holders),
            Protection::UnderProtected
        );
        // Three per site is fine; five in one site exceed m = 4.
        let crowded: Vec<Option<NodeId>> = [
            (0, 0),
            (0, 1),
            (0, 2),
            (1, 0),
            (1, 1),
            (1, 2),
            (2, 0),
            (2, 1),
            (2, 2),
        ]
        .iter()
        .map(|&(s, j)| Some(id(s, j)))
        .collect();
        assert_eq!(protection_of(&map, &profile, &crowded), Protection::Full);
        let big = map_of(&[5, 4, 0]);
        let crowded: Vec<Option<NodeId>> = [
            (0, 0),
            (0, 1),
            (0, 2),
            (0, 3),
            (0, 4),
            (1, 0),
            (1, 1),
            (1, 2),
            (1, 3),
        ]
        .iter()
        .map(|&(s, j)| Some(id(s, j)))
        .collect();
        assert_eq!(
            protection_of(&big, &profile, &crowded),
            Protection::UnderProtected
        );
    }
}

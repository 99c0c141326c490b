//! Can an instance be read now, and would it still be readable if a whole
//! site were lost now? Counts only good shards: on nodes that may serve
//! reads (`Up` or `Draining`; a `Down` node's shards are out of reach until
//! it returns), placed (a shard whose write failed has no holder), and not
//! reported damaged (a storage node quarantined it, or a read found it
//! corrupt).

use crate::manifest::{Manifest, SegmentManifest};
use crate::map::{ClusterMap, NodeId};

/// Shards of one instance known bad whatever their holder's state: as
/// (segment, shard index, holder) — damaged or quarantined on that node.
pub type BadShards = [(u32, u8, NodeId)];

/// How many good shards `segment` has outside
/// `without_site` (`None`: all sites count).
fn good_shards(
    map: &ClusterMap,
    segment: &SegmentManifest,
    without_site: Option<&str>,
    bad: &BadShards,
) -> usize {
    segment
        .shards
        .iter()
        .filter(|s| {
            s.node.is_some_and(|id| {
                !bad.contains(&(segment.index, s.index, id))
                    && map.node(id).is_some_and(|n| {
                        n.state.readable() && Some(n.site.as_str()) != without_site
                    })
            })
        })
        .count()
}

/// Whether every segment of `m` has at least k good shards outside
/// `without_site` (`None`: all sites count), not counting `bad`.
pub fn readable_without(
    map: &ClusterMap,
    m: &Manifest,
    without_site: Option<&str>,
    bad: &BadShards,
) -> bool {
    let k = usize::from(m.ec.data_shards);
    m.segments
        .iter()
        .all(|segment| good_shards(map, segment, without_site, bad) >= k)
}

/// Whether `m` can be read now (no shard known bad).
pub fn readable_now(map: &ClusterMap, m: &Manifest) -> bool {
    readable_without(map, m, None, &[])
}

/// The sites whose loss now would leave `m` unreadable (empty when it
/// survives the loss of any one site), not counting `bad`.
pub fn critical_sites<'a>(map: &'a ClusterMap, m: &Manifest, bad: &BadShards) -> Vec<&'a str> {
    map.sites
        .iter()
        .map(|s| s.name.as_str())
        .filter(|site| !readable_without(map, m, Some(site), bad))
        .collect()
}

/// What an instance's shards allow now: the protection answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Survival {
    /// Readable, and stays readable whichever single site is lost.
    Safe,
    /// Readable now; losing one of these sites would make it unreadable.
    AtRisk { critical_sites: Vec<String> },
    /// Some segment has fewer than k good shards now.
    Unreadable { segment: u32, good: usize, k: u8 },
}

impl Survival {
    /// Why, in words (no patient data: counts and site names).
    pub fn why(&self) -> String {
        match self {
            Survival::Safe => "survives the loss of any one site".into(),
            Survival::AtRisk { critical_sites } => format!(
                "readable, but losing site {} would leave too few good shards",
                critical_sites.join(" or ")
            ),
            Survival::Unreadable { segment, good, k } => format!(
                "segment {segment} has {good} good shards, {k} are needed \
                 (the others are damaged, quarantined, never written or on nodes that are not up)"
            ),
        }
    }
}

/// Assesses `m` against the map now, `bad` counted as missing.
pub fn survival(map: &ClusterMap, m: &Manifest, bad: &BadShards) -> Survival {
    let k = m.ec.data_shards;
    for segment in &m.segments {
        let good = good_shards(map, segment, None, bad);
        if good < usize::from(k) {
            return Survival::Unreadable {
                segment: segment.index,
                good,
                k,
            };
        }
    }
    let critical: Vec<String> = critical_sites(map, m, bad)
        .into_iter()
        .map(str::to_owned)
        .collect();
    if critical.is_empty() {
        Survival::Safe
    } else {
        Survival::AtRisk {
            critical_sites: critical,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::NodeState;
    use crate::testutil::{map_of, object_key, placed_manifest, rs};

    #[test]
    fn a_full_placement_survives_any_site_and_a_down_site_makes_others_critical() {
        let map = map_of(&[3, 3, 3]);
        let m = placed_manifest(&map, &rs(5, 4), 9 * 1024 * 1024, object_key(3));
        assert!(readable_now(&map, &m));
        assert!(critical_sites(&map, &m, &[]).is_empty());
        // With one site down, losing a second one loses the instance.
        let mut down = map.clone();
        let first = map.sites[0].name.clone();
        for n in down.nodes.values_mut().filter(|n| n.site == first) {
            n.state = NodeState::Down;
        }
        assert!(readable_now(&down, &m));
        assert_eq!(critical_sites(&down, &m, &[]).len(), 2);
        // Five nodes out of reach: fewer than k = 5 remain.
        let mut more = down.clone();
        let ids: Vec<_> = more
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Up)
            .map(|n| n.id)
            .take(2)
            .collect();
        for id in ids {
            if let Some(n) = more.nodes.get_mut(&id) {
                n.state = NodeState::Lost;
            }
        }
        assert!(!readable_now(&more, &m));
    }

    #[test]
    fn damaged_shards_count_as_missing() {
        let map = map_of(&[3, 3, 3]);
        let m = placed_manifest(&map, &rs(5, 4), 1024 * 1024, object_key(4));
        assert_eq!(survival(&map, &m, &[]), Survival::Safe);
        let seg = &m.segments[0];
        let bad_of = |n: usize| -> Vec<(u32, u8, u64)> {
            seg.shards
                .iter()
                .take(n)
                .map(|s| (seg.index, s.index, s.node.expect("placed")))
                .collect()
        };
        // One damaged shard: readable, and some site now holds more of the
        // remaining good shards than a site loss can spare.
        match survival(&map, &m, &bad_of(2)) {
            Survival::AtRisk { critical_sites } => assert!(!critical_sites.is_empty()),
            other => panic!("two damaged shards of RS(5,4) across 3 sites: {other:?}"),
        }
        // Five of nine damaged: fewer than k = 5 good.
        let five = bad_of(5);
        assert_eq!(
            survival(&map, &m, &five),
            Survival::Unreadable {
                segment: 0,
                good: 4,
                k: 5
            }
        );
        assert!(!readable_without(&map, &m, None, &five));
        assert!(
            survival(&map, &m, &five)
                .why()
                .contains("4 good shards, 5 are needed")
        );
        // A damaged shard named on another node does not count against this
        // holder (a shard moved since).
        let elsewhere: Vec<_> = five.iter().map(|&(s, i, n)| (s, i, n + 100)).collect();
        assert_eq!(survival(&map, &m, &elsewhere), Survival::Safe);
    }
}

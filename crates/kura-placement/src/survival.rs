//! Can an instance be read now, and would it still be readable if a whole
//! site were lost now? Counts only shards on nodes that may serve reads
//! (`Up` or `Draining`): a `Down` node's shards are out of reach until it
//! returns.

use crate::manifest::Manifest;
use crate::map::ClusterMap;

/// Whether every segment of `m` has at least k shards on readable nodes
/// outside `without_site` (`None`: all sites count).
pub fn readable_without(map: &ClusterMap, m: &Manifest, without_site: Option<&str>) -> bool {
    let k = usize::from(m.ec.data_shards);
    m.segments.iter().all(|segment| {
        segment
            .shards
            .iter()
            .filter_map(|s| map.node(s.node?))
            .filter(|n| n.state.readable() && Some(n.site.as_str()) != without_site)
            .count()
            >= k
    })
}

/// Whether `m` can be read now.
pub fn readable_now(map: &ClusterMap, m: &Manifest) -> bool {
    readable_without(map, m, None)
}

/// The sites whose loss now would leave `m` unreadable (empty when it
/// survives the loss of any one site).
pub fn critical_sites<'a>(map: &'a ClusterMap, m: &Manifest) -> Vec<&'a str> {
    map.sites
        .iter()
        .map(|s| s.name.as_str())
        .filter(|site| !readable_without(map, m, Some(site)))
        .collect()
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
        assert!(critical_sites(&map, &m).is_empty());
        // With one site down, losing a second one loses the instance.
        let mut down = map.clone();
        let first = map.sites[0].name.clone();
        for n in down.nodes.values_mut().filter(|n| n.site == first) {
            n.state = NodeState::Down;
        }
        assert!(readable_now(&down, &m));
        assert_eq!(critical_sites(&down, &m).len(), 2);
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
}

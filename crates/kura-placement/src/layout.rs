//! Can this cluster hold this profile, and what does it survive? Checked at
//! start (a layout placement cannot satisfy is refused with the reason and
//! the fix) and shown by `kura admin status`.
//!
//! Both questions are about the *configured* layout: every node that is `Up`
//! or `Down` (expected back) counts; `Draining`, `Lost` and `Removed` nodes do
//! not. Node fullness is not considered: it changes by the minute and is
//! handled by placement.
//!
//! Architecture invariant: a multi-site map must keep every segment readable
//! after losing any one site, so no site may hold more than m shards of a
//! segment; [`check_layout`] refuses maps where that is impossible.
//! Single-site maps are accepted with node-level protection only: any m
//! nodes may fail, the site itself may not.

use std::fmt;

use crate::error::PlacementError;
use crate::map::ClusterMap;
use crate::profile::{Profile, ProfileExt};

/// What a cluster survives, for every segment, with full placement: the
/// loss of any `sites` whole sites plus any `extra_nodes` further nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tolerance {
    pub sites: usize,
    pub extra_nodes: usize,
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes = |n: usize| format!("{n} {}", if n == 1 { "node" } else { "nodes" });
        match (self.sites, self.extra_nodes) {
            (0, 0) => f.write_str("nothing (no node may be lost)"),
            (0, e) => write!(f, "{} (no site loss)", nodes(e)),
            (1, 0) => f.write_str("one site"),
            (1, e) => write!(f, "one site + {}", nodes(e)),
            (s, 0) => write!(f, "{s} sites"),
            (s, e) => write!(f, "{s} sites + {}", nodes(e)),
        }
    }
}

/// How many nodes of each listed site count for the layout (`Up` or `Down`),
/// in map order.
fn layout_nodes(map: &ClusterMap) -> Vec<usize> {
    map.sites
        .iter()
        .map(|site| {
            map.nodes_in_site(&site.name)
                .filter(|n| n.state.in_layout())
                .count()
        })
        .collect()
}

/// Spreads `total` shards over sites holding at most `room[s]` each, always
/// to the site with the fewest so far: the most even spread there is. (Its
/// sorted counts are majorised by every other spread's, so it minimises the
/// shards in the fullest site, the two fullest, and so on.)
pub(crate) fn water_fill(room: &[usize], total: usize) -> Vec<usize> {
    let mut counts = vec![0usize; room.len()];
    for _ in 0..total {
        let Some(site) = (0..room.len())
            .filter(|&s| counts[s] < room[s])
            .min_by_key(|&s| counts[s])
        else {
            break;
        };
        counts[site] += 1;
    }
    counts
}

/// The worst-case tolerance of a spread of shards over sites, given how many
/// shards are needed (k): lose the fullest sites first, then nodes holding
/// one shard each.
pub(crate) fn tolerance_of_counts(counts: &[usize], k: usize) -> Tolerance {
    let placed: usize = counts.iter().sum();
    let Some(mut budget) = placed.checked_sub(k) else {
        return Tolerance {
            sites: 0,
            extra_nodes: 0,
        };
    };
    let mut sorted = counts.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let mut sites = 0;
    for c in sorted {
        if c > budget {
            break;
        }
        budget -= c;
        sites += 1;
    }
    Tolerance {
        sites,
        extra_nodes: budget,
    }
}

/// What the map survives with full placement of `profile` (see
/// [`Tolerance`]). For a layout [`check_layout`] refuses this describes the
/// best spread the nodes allow, which may be "nothing".
///
/// A single-site map never survives a site loss: it reports "m nodes (no
/// site loss)".
pub fn tolerance(map: &ClusterMap, profile: &Profile) -> Tolerance {
    let room = layout_nodes(map);
    let counts = water_fill(&room, profile.n());
    tolerance_of_counts(&counts, profile.k())
}

/// Refuses a map that cannot hold `profile` with full protection, saying why
/// and what would fix it; otherwise returns what the map survives.
///
/// Full protection needs k + m nodes in the layout, each holding one shard,
/// and, with two or more sites, at most m shards per site so any one site can
/// be lost. That is possible exactly when the sites can hold all k + m
/// shards with each site holding at most min(its nodes, m).
pub fn check_layout(map: &ClusterMap, profile: &Profile) -> Result<Tolerance, PlacementError> {
    map.validate()?;
    profile.check()?;
    let (k, m, n) = (profile.k(), profile.m(), profile.n());
    let room = layout_nodes(map);
    let have: usize = room.iter().sum();
    if have < n {
        return Err(PlacementError::TooFewNodes {
            profile: profile.to_string(),
            needed: n,
            have,
        });
    }
    let sites = map.sites.len();
    if sites >= 2 {
        if sites * m < n {
            return Err(PlacementError::TooFewSites {
                profile: profile.to_string(),
                k,
                m,
                sites,
            });
        }
        let holdable: usize = room.iter().map(|&r| r.min(m)).sum();
        if holdable < n {
            let short_sites = map
                .sites
                .iter()
                .zip(&room)
                .filter(|&(_, &r)| r < m)
                .map(|(site, &r)| (site.name.clone(), r))
                .collect();
            return Err(PlacementError::SitesTooSmall {
                profile: profile.to_string(),
                n,
                m,
                holdable,
                short_sites,
            });
        }
    }
    Ok(tolerance(map, profile))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::NodeState;
    use crate::testutil::{map_of, rs, with_site_state};

    fn tol(nodes: &[usize], k: u8, m: u8) -> String {
        tolerance(&map_of(nodes), &rs(k, m)).to_string()
    }

    #[test]
    fn tolerance_strings() {
        assert_eq!(tol(&[3, 3, 3], 5, 4), "one site + 1 node");
        assert_eq!(tol(&[5, 5, 5], 5, 4), "one site + 1 node");
        assert_eq!(tol(&[3, 3, 3, 3], 5, 4), "one site + 1 node");
        assert_eq!(tol(&[2, 2, 2, 2, 2], 5, 4), "2 sites");
        assert_eq!(tol(&[2, 2, 2], 4, 2), "one site");
        assert_eq!(tol(&[4, 4, 1], 5, 4), "one site");
        assert_eq!(tol(&[3, 3, 3], 3, 6), "2 sites");
        assert_eq!(tol(&[3, 3, 3], 1, 8), "2 sites + 2 nodes");
        assert_eq!(tol(&[6], 4, 2), "2 nodes (no site loss)");
        assert_eq!(tol(&[12], 5, 4), "4 nodes (no site loss)");
        assert_eq!(tol(&[3, 3], 4, 2), "2 nodes (no site loss)");
        assert_eq!(tol(&[6, 1], 5, 1), "1 node (no site loss)");
        // Refused layouts still get a best-effort answer.
        assert_eq!(tol(&[2, 2, 1], 5, 4), "nothing (no node may be lost)");
        assert_eq!(tol(&[], 5, 4), "nothing (no node may be lost)");
    }

    #[test]
    fn tolerance_counts_down_nodes_but_not_leaving_ones() {
        let map = map_of(&[3, 3, 3]);
        let down = with_site_state(&map, "c", NodeState::Down);
        assert_eq!(tolerance(&down, &rs(5, 4)), tolerance(&map, &rs(5, 4)));
        let draining = with_site_state(&map, "c", NodeState::Draining);
        // 6 layout nodes for 9 shards: the best spread holds 6, one more than k.
        assert_eq!(
            tolerance(&draining, &rs(5, 4)).to_string(),
            "1 node (no site loss)"
        );
        assert!(check_layout(&draining, &rs(5, 4)).is_err());
    }

    #[test]
    fn check_layout_accepts_and_reports() {
        let t = check_layout(&map_of(&[3, 3, 3]), &rs(5, 4)).unwrap();
        assert_eq!(
            t,
            Tolerance {
                sites: 1,
                extra_nodes: 1
            }
        );
        assert_eq!(
            check_layout(&map_of(&[9]), &rs(5, 4)).unwrap().to_string(),
            "4 nodes (no site loss)"
        );
        assert_eq!(
            check_layout(&map_of(&[4, 4, 1]), &rs(5, 4))
                .unwrap()
                .to_string(),
            "one site"
        );
    }

    #[test]
    fn check_layout_says_why_and_how_to_fix() {
        let err = |nodes: &[usize], k, m| {
            check_layout(&map_of(nodes), &rs(k, m))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&[2, 2, 2], 5, 4),
            "RS(5,4) needs 9 nodes able to hold shards (Up or Down; Draining, Lost and Removed \
             nodes do not count), the map has 6: add 3 nodes or choose a profile with k+m ≤ 6"
        );
        assert_eq!(
            err(&[5, 5], 5, 4),
            "with 2 sites, one site must hold at least 5 of RS(5,4)'s 9 shards but only 4 can be \
             lost: add a third site, or use a profile with m ≥ k"
        );
        assert_eq!(
            err(&[5, 5, 1], 6, 3),
            "RS(6,3) may put at most 3 shards in one site (m, so that losing the site still \
             leaves k), but with their nodes the sites can then hold only 7 of the 9 shards: \
             site c has 1 node; add 2 nodes to site c, or add a site"
        );
        assert_eq!(
            err(&[9, 2, 0], 5, 4),
            "RS(5,4) may put at most 4 shards in one site (m, so that losing the site still \
             leaves k), but with their nodes the sites can then hold only 6 of the 9 shards: \
             site b has 2 nodes, site c has 0 nodes; add 3 nodes to sites with fewer than 4 \
             nodes, or add a site"
        );
        assert!(err(&[], 5, 4).contains("the map has 0"));
        let mut bad = map_of(&[3, 3, 3]);
        bad.sites.push(bad.sites[0].clone());
        assert!(matches!(
            check_layout(&bad, &rs(5, 4)),
            Err(PlacementError::InvalidMap(_))
        ));
    }

    #[test]
    fn water_fill_is_even_within_room() {
        assert_eq!(water_fill(&[3, 3, 3], 9), [3, 3, 3]);
        assert_eq!(water_fill(&[5, 5, 1], 9), [4, 4, 1]);
        assert_eq!(water_fill(&[1, 1], 9), [1, 1]);
        assert_eq!(water_fill(&[], 9), Vec::<usize>::new());
    }
}

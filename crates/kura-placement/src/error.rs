//! The one error type of this crate. Every variant is a caller error (bad
//! map, bad profile, bad manifest, impossible layout) except
//! [`PlacementError::Unavailable`], which is a state of the cluster that may
//! pass (nodes come back): see [`PlacementError::is_retryable`]. Messages say
//! what is wrong *and* what would fix it, because operators read them at
//! start-up and in `kura admin status`.

use std::fmt::Write as _;

use crate::map::{NODE_FULL_PERCENT, NodeId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("invalid cluster map: {0}")]
    InvalidMap(String),

    #[error("invalid erasure profile {profile}: {reason}")]
    InvalidProfile { profile: String, reason: String },

    #[error("invalid manifest {tenant}/{sop_instance_uid}: {reason}")]
    InvalidManifest {
        tenant: String,
        sop_instance_uid: String,
        reason: String,
    },

    #[error("node {0} is not in the cluster map")]
    UnknownNode(NodeId),

    #[error("the manifest has no shard {index} of segment {segment}")]
    NoSuchShard { segment: u32, index: u8 },

    /// Too few nodes can take shards right now to keep a new object readable.
    #[error(
        "cannot place {profile}: {writable} {} can take shards now (Up and under \
         {NODE_FULL_PERCENT}% full) but at least {needed} (k) are needed to keep the object \
         readable: bring Down nodes back, or add nodes or capacity",
        plural(*.writable, "node", "nodes")
    )]
    Unavailable {
        profile: String,
        writable: usize,
        needed: usize,
    },

    /// The map has fewer nodes than the profile has shards per segment.
    #[error(
        "{profile} needs {needed} nodes able to hold shards (Up or Down; Draining, Lost and \
         Removed nodes do not count), the map has {have}: add {} or choose a profile with \
         k+m ≤ {have}",
        count(needed - have, "node", "nodes")
    )]
    TooFewNodes {
        profile: String,
        needed: usize,
        have: usize,
    },

    /// Even an even spread puts more shards in one site than can be lost.
    #[error("{}", too_few_sites(.profile, *.k, *.m, *.sites))]
    TooFewSites {
        profile: String,
        k: usize,
        m: usize,
        sites: usize,
    },

    /// Enough sites, but some have too few nodes, so the others would have
    /// to hold more shards than can be lost.
    #[error("{}", sites_too_small(.profile, *.n, *.m, *.holdable, .short_sites))]
    SitesTooSmall {
        profile: String,
        n: usize,
        m: usize,
        /// How many shards the sites can hold with at most m per site.
        holdable: usize,
        /// (site, nodes able to hold shards) for every site with fewer than m.
        short_sites: Vec<(String, usize)>,
    },
}

impl PlacementError {
    /// True when the same call may succeed later without any change by the
    /// caller (nodes come back up); false for errors in the input itself.
    pub fn is_retryable(&self) -> bool {
        matches!(self, PlacementError::Unavailable { .. })
    }
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn ordinal(n: usize) -> Option<&'static str> {
    const ORDINALS: [&str; 9] = [
        "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
    ];
    n.checked_sub(2).and_then(|i| ORDINALS.get(i)).copied()
}

fn too_few_sites(profile: &str, k: usize, m: usize, sites: usize) -> String {
    let n = k + m;
    let per_site_min = n.div_ceil(sites.max(1));
    let mut out = format!(
        "with {sites} sites, one site must hold at least {per_site_min} of {profile}'s {n} \
         shards but only {m} can be lost: "
    );
    // Enough sites: ceil(n / sites) <= m  <=>  sites >= ceil(n / m).
    if m > 0 {
        let add = n.div_ceil(m).saturating_sub(sites);
        match (add, ordinal(sites + 1)) {
            (1, Some(word)) => {
                let _ = write!(out, "add a {word} site");
            }
            _ => {
                let _ = write!(out, "add {}", count(add, "site", "sites"));
            }
        }
        out.push_str(", or ");
    }
    // Enough parity for these sites: k + m <= sites * m  <=>  m >= k / (sites - 1).
    let m_needed = k.div_ceil(sites.saturating_sub(1).max(1));
    if sites == 2 {
        out.push_str("use a profile with m ≥ k");
    } else {
        let _ = write!(out, "use a profile with m ≥ {m_needed} for k = {k}");
    }
    out
}

fn sites_too_small(
    profile: &str,
    n: usize,
    m: usize,
    holdable: usize,
    short_sites: &[(String, usize)],
) -> String {
    let mut out = format!(
        "{profile} may put at most {m} shards in one site (m, so that losing the site still \
         leaves k), but with their nodes the sites can then hold only {holdable} of the {n} \
         shards: "
    );
    let deficit = n.saturating_sub(holdable);
    let described: Vec<String> = short_sites
        .iter()
        .map(|(site, nodes)| format!("site {site} has {}", count(*nodes, "node", "nodes")))
        .collect();
    out.push_str(&described.join(", "));
    match short_sites {
        [(site, _)] => {
            let _ = write!(
                out,
                "; add {} to site {site}",
                count(deficit, "node", "nodes")
            );
        }
        _ => {
            let _ = write!(
                out,
                "; add {} to sites with fewer than {m} nodes",
                count(deficit, "node", "nodes")
            );
        }
    }
    out.push_str(", or add a site");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_few_sites_names_the_fix() {
        let e = PlacementError::TooFewSites {
            profile: "RS(5,4)".into(),
            k: 5,
            m: 4,
            sites: 2,
        };
        assert_eq!(
            e.to_string(),
            "with 2 sites, one site must hold at least 5 of RS(5,4)'s 9 shards but only 4 can \
             be lost: add a third site, or use a profile with m ≥ k"
        );
        let e = PlacementError::TooFewSites {
            profile: "RS(10,2)".into(),
            k: 10,
            m: 2,
            sites: 3,
        };
        assert_eq!(
            e.to_string(),
            "with 3 sites, one site must hold at least 4 of RS(10,2)'s 12 shards but only 2 can \
             be lost: add 3 sites, or use a profile with m ≥ 5 for k = 10"
        );
    }

    #[test]
    fn sites_too_small_names_the_sites() {
        let e = PlacementError::SitesTooSmall {
            profile: "RS(6,3)".into(),
            n: 9,
            m: 3,
            holdable: 7,
            short_sites: vec![("c".into(), 1)],
        };
        assert_eq!(
            e.to_string(),
            "RS(6,3) may put at most 3 shards in one site (m, so that losing the site still \
             leaves k), but with their nodes the sites can then hold only 7 of the 9 shards: \
             site c has 1 node; add 2 nodes to site c, or add a site"
        );
    }

    #[test]
    fn only_unavailable_is_retryable() {
        let e = PlacementError::Unavailable {
            profile: "RS(5,4)".into(),
            writable: 3,
            needed: 5,
        };
        assert!(e.is_retryable());
        assert!(e.to_string().contains("3 nodes can take shards"));
        assert!(!PlacementError::UnknownNode(7).is_retryable());
    }
}

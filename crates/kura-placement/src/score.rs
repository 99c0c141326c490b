//! Rendezvous (highest-random-weight) scores. Every choice placement makes,
//! which site gets the odd shard, which site and which node a shard index
//! goes to, is "the candidate with the highest score", where a score is a
//! blake3 hash keyed by the object key over (what is chosen, segment, shard
//! index, candidate). Adding or removing a candidate changes only the choices
//! that candidate wins or held: that is what keeps data movement minimal.
//!
//! The scores are not a stored format (manifests record the chosen holders),
//! but changing them changes where new writes go, so the domain strings carry
//! a version.

use crate::map::NodeId;

const SITE_RANK_DOMAIN: &[u8] = b"kura-placement/v1/site-rank";
const SITE_SLOT_DOMAIN: &[u8] = b"kura-placement/v1/site-slot";
const NODE_SLOT_DOMAIN: &[u8] = b"kura-placement/v1/node-slot";

/// A score; ties (astronomically unlikely) are broken by the caller on the
/// candidate's identity so every choice stays deterministic.
pub(crate) type Score = u64;

fn score(domain: &[u8], key: &[u8; 32], segment: u32, index: u8, candidate: &[u8]) -> Score {
    let mut h = blake3::Hasher::new_keyed(key);
    // Fixed-width fields first, the variable-width candidate last: the
    // encoding is unambiguous without length prefixes.
    h.update(&(domain.len() as u64).to_le_bytes());
    h.update(domain);
    h.update(&segment.to_le_bytes());
    h.update(&[index]);
    h.update(candidate);
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// Order of sites for a segment: the top-ranked ones get the shards an even
/// split leaves over, and win ties when spreading overflow.
pub(crate) fn site_rank(key: &[u8; 32], segment: u32, site: &str) -> Score {
    score(SITE_RANK_DOMAIN, key, segment, 0, site.as_bytes())
}

/// How much shard `index` of a segment wants to live in `site`.
pub(crate) fn site_slot(key: &[u8; 32], segment: u32, index: u8, site: &str) -> Score {
    score(SITE_SLOT_DOMAIN, key, segment, index, site.as_bytes())
}

/// How much shard `index` of a segment wants to live on `node`.
pub(crate) fn node_slot(key: &[u8; 32], segment: u32, index: u8, node: NodeId) -> Score {
    score(NODE_SLOT_DOMAIN, key, segment, index, &node.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_depend_on_every_input() {
        let key = [7u8; 32];
        let base = node_slot(&key, 1, 2, 3);
        assert_eq!(base, node_slot(&key, 1, 2, 3));
        assert_ne!(base, node_slot(&[8u8; 32], 1, 2, 3));
        assert_ne!(base, node_slot(&key, 2, 2, 3));
        assert_ne!(base, node_slot(&key, 1, 3, 3));
        assert_ne!(base, node_slot(&key, 1, 2, 4));
        assert_ne!(site_rank(&key, 1, "a"), site_slot(&key, 1, 0, "a"));
        assert_ne!(site_slot(&key, 1, 0, "a"), site_slot(&key, 1, 0, "b"));
    }
}

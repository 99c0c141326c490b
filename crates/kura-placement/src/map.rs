//! The cluster map: the sites (datacenters, zones), the storage nodes in each,
//! and every node's state and fill. The metadata cluster keeps one map in its
//! Raft state machine and bumps `epoch` on every change; placement, read and
//! repair plans are pure functions of a map, so every gateway that sees the
//! same epoch makes the same decisions.
//!
//! A node's [`NodeState`] says what it may do: only `Up` nodes receive new
//! shards; `Up` and `Draining` nodes serve reads; shards on `Lost` and
//! `Removed` nodes are gone and must be rebuilt; `Down` is a node that
//! stopped answering but is expected back, so its shards are neither read
//! nor rebuilt yet.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::PlacementError;

/// A storage node's id, unique within a cluster and never reused.
pub type NodeId = u64;

/// A node whose disk is at least this full takes no new shards: the rest is
/// headroom for repairs, compaction and the writes already in flight.
pub const NODE_FULL_PERCENT: u64 = 95;
/// Longest site or node name. Names travel in every map and in messages.
pub const NAME_BYTES_MAX: usize = 128;

const _: () = assert!(NODE_FULL_PERCENT > 0 && NODE_FULL_PERCENT <= 100);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Version of the map; every change bumps it.
    pub epoch: u64,
    pub sites: Vec<Site>,
    pub nodes: BTreeMap<NodeId, NodeInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub name: String,
    /// The name of the node's [`Site`].
    pub site: String,
    /// Where its shard service listens (`host:port`).
    pub addr: String,
    pub state: NodeState,
    /// Bytes the node may fill with shards. 0 means it holds nothing (see
    /// [`NodeInfo::is_full`]).
    pub capacity_bytes: u64,
    pub used_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeState {
    /// Healthy: serves reads, takes new shards.
    Up,
    /// Stopped answering; expected back. Its shards are not read, not
    /// rebuilt (yet) and it takes nothing new.
    Down,
    /// Declared dead: its shards are gone and repair rebuilds them.
    Lost,
    /// Leaving on purpose: serves reads while repair moves its shards away;
    /// takes nothing new.
    Draining,
    /// Gone from the cluster; kept in the map so old manifests still resolve.
    Removed,
}

impl NodeState {
    pub const ALL: [NodeState; 5] = [
        NodeState::Up,
        NodeState::Down,
        NodeState::Lost,
        NodeState::Draining,
        NodeState::Removed,
    ];

    /// May serve reads of the shards it holds.
    pub fn readable(self) -> bool {
        matches!(self, NodeState::Up | NodeState::Draining)
    }

    /// May receive new shards (placement also requires the node not full).
    pub fn writable(self) -> bool {
        matches!(self, NodeState::Up)
    }

    /// Counts as part of the configured layout: `Up`, or `Down` and expected
    /// back. This is what [`check_layout`](crate::check_layout) judges.
    pub fn in_layout(self) -> bool {
        matches!(self, NodeState::Up | NodeState::Down)
    }

    /// Its shards are gone for good and must be rebuilt elsewhere.
    pub fn shards_lost(self) -> bool {
        matches!(self, NodeState::Lost | NodeState::Removed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
            NodeState::Lost => "lost",
            NodeState::Draining => "draining",
            NodeState::Removed => "removed",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl NodeInfo {
    /// At or above [`NODE_FULL_PERCENT`] of its capacity. A node with no
    /// capacity is full: it cannot hold anything.
    pub fn is_full(&self) -> bool {
        // u128: used * 100 must not overflow for any u64 input.
        u128::from(self.used_bytes) * 100
            >= u128::from(self.capacity_bytes) * u128::from(NODE_FULL_PERCENT)
    }

    /// May receive new shards now: `Up` and not full.
    pub fn accepts_shards(&self) -> bool {
        self.state.writable() && !self.is_full()
    }
}

impl Default for ClusterMap {
    fn default() -> Self {
        ClusterMap::new()
    }
}

impl ClusterMap {
    /// An empty map at epoch 0.
    pub fn new() -> ClusterMap {
        ClusterMap {
            epoch: 0,
            sites: Vec::new(),
            nodes: BTreeMap::new(),
        }
    }

    /// Checks what every other function here relies on: site names are
    /// unique and well-formed; every node is keyed by its own id, has a
    /// unique well-formed name and an address, and lives in a listed site.
    pub fn validate(&self) -> Result<(), PlacementError> {
        let mut site_names = BTreeSet::new();
        for site in &self.sites {
            check_name("site", &site.name)?;
            if !site_names.insert(site.name.as_str()) {
                return Err(invalid(format!("site {:?} is listed twice", site.name)));
            }
        }
        let mut node_names = BTreeSet::new();
        for (&id, node) in &self.nodes {
            if node.id != id {
                return Err(invalid(format!(
                    "node {:?} is stored under id {id} but says its id is {}",
                    node.name, node.id
                )));
            }
            check_name("node", &node.name)?;
            if !node_names.insert(node.name.as_str()) {
                return Err(invalid(format!(
                    "node name {:?} is used by two nodes",
                    node.name
                )));
            }
            if !site_names.contains(node.site.as_str()) {
                return Err(invalid(format!(
                    "node {:?} (id {id}) is in site {:?}, which the map does not list: add the \
                     site or fix the node's site",
                    node.name, node.site
                )));
            }
            if node.addr.trim().is_empty() {
                return Err(invalid(format!(
                    "node {:?} (id {id}) has no address",
                    node.name
                )));
            }
        }
        Ok(())
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&id)
    }

    pub fn node_by_name(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.values().find(|n| n.name == name)
    }

    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.name == name)
    }

    /// The site a node lives in, if the node is known.
    pub fn site_of(&self, id: NodeId) -> Option<&str> {
        self.node(id).map(|n| n.site.as_str())
    }

    /// Every node of a site, in id order, whatever its state.
    pub fn nodes_in_site<'a>(&'a self, site: &'a str) -> impl Iterator<Item = &'a NodeInfo> + 'a {
        self.nodes.values().filter(move |n| n.site == site)
    }

    /// Nodes that may receive new shards now (`Up`, not full), in id order.
    pub fn writable_nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values().filter(|n| n.accepts_shards())
    }

    /// Nodes that may serve reads now, in id order.
    pub fn readable_nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values().filter(|n| n.state.readable())
    }

    /// Two or more sites: placement then keeps every segment readable
    /// without any one site.
    pub fn is_multi_site(&self) -> bool {
        self.sites.len() >= 2
    }

    /// This map with one node's state changed and the epoch bumped.
    pub fn with_node_state(
        &self,
        id: NodeId,
        state: NodeState,
    ) -> Result<ClusterMap, PlacementError> {
        let mut next = self.next_epoch()?;
        next.nodes
            .get_mut(&id)
            .ok_or(PlacementError::UnknownNode(id))?
            .state = state;
        Ok(next)
    }

    /// This map with one node's usage changed and the epoch bumped.
    pub fn with_node_usage(
        &self,
        id: NodeId,
        used_bytes: u64,
        capacity_bytes: u64,
    ) -> Result<ClusterMap, PlacementError> {
        let mut next = self.next_epoch()?;
        let node = next
            .nodes
            .get_mut(&id)
            .ok_or(PlacementError::UnknownNode(id))?;
        node.used_bytes = used_bytes;
        node.capacity_bytes = capacity_bytes;
        Ok(next)
    }

    /// This map with a node added (or replaced, by id), validated, epoch
    /// bumped.
    pub fn with_node(&self, node: NodeInfo) -> Result<ClusterMap, PlacementError> {
        let mut next = self.next_epoch()?;
        next.nodes.insert(node.id, node);
        next.validate()?;
        Ok(next)
    }

    /// This map with a site added, validated, epoch bumped.
    pub fn with_site(&self, name: &str) -> Result<ClusterMap, PlacementError> {
        let mut next = self.next_epoch()?;
        next.sites.push(Site {
            name: name.to_owned(),
        });
        next.validate()?;
        Ok(next)
    }

    fn next_epoch(&self) -> Result<ClusterMap, PlacementError> {
        let mut next = self.clone();
        next.epoch = self
            .epoch
            .checked_add(1)
            .ok_or_else(|| invalid("the epoch is at its maximum and cannot be bumped".into()))?;
        Ok(next)
    }
}

fn invalid(reason: String) -> PlacementError {
    PlacementError::InvalidMap(reason)
}

fn check_name(what: &str, name: &str) -> Result<(), PlacementError> {
    if name.is_empty() {
        return Err(invalid(format!("a {what} has an empty name")));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(invalid(format!(
            "{what} name {name:?} is {} bytes long, the limit is {NAME_BYTES_MAX}",
            name.len()
        )));
    }
    if name.trim() != name || name.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{what} name {name:?} has surrounding spaces or control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: NodeId, site: &str) -> NodeInfo {
        NodeInfo {
            id,
            name: format!("{site}{id}"),
            site: site.into(),
            addr: format!("10.0.0.{id}:7070"),
            state: NodeState::Up,
            capacity_bytes: 1 << 40,
            used_bytes: 0,
        }
    }

    fn map() -> ClusterMap {
        let mut map = ClusterMap::new();
        for s in ["a", "b"] {
            map.sites.push(Site { name: s.into() });
        }
        for (id, s) in [(1, "a"), (2, "a"), (3, "b")] {
            map.nodes.insert(id, node(id, s));
        }
        map
    }

    #[test]
    fn states_say_what_a_node_may_do() {
        use NodeState::*;
        let readable: Vec<_> = NodeState::ALL
            .into_iter()
            .filter(|s| s.readable())
            .collect();
        assert_eq!(readable, [Up, Draining]);
        let writable: Vec<_> = NodeState::ALL
            .into_iter()
            .filter(|s| s.writable())
            .collect();
        assert_eq!(writable, [Up]);
        let layout: Vec<_> = NodeState::ALL
            .into_iter()
            .filter(|s| s.in_layout())
            .collect();
        assert_eq!(layout, [Up, Down]);
        let lost: Vec<_> = NodeState::ALL
            .into_iter()
            .filter(|s| s.shards_lost())
            .collect();
        assert_eq!(lost, [Lost, Removed]);
    }

    #[test]
    fn fullness_threshold() {
        let mut n = node(1, "a");
        n.capacity_bytes = 100;
        n.used_bytes = 94;
        assert!(!n.is_full() && n.accepts_shards());
        n.used_bytes = 95;
        assert!(n.is_full() && !n.accepts_shards());
        n.capacity_bytes = 0;
        n.used_bytes = 0;
        assert!(n.is_full(), "no capacity holds nothing");
        n.capacity_bytes = u64::MAX;
        n.used_bytes = u64::MAX;
        assert!(n.is_full(), "no overflow at the extremes");
    }

    #[test]
    fn validate_accepts_a_good_map() {
        map().validate().unwrap();
        ClusterMap::new().validate().unwrap();
    }

    #[test]
    fn validate_refuses_bad_maps() {
        type Mutation = Box<dyn Fn(&mut ClusterMap)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|m| m.sites.push(Site { name: "a".into() })),
                "listed twice",
            ),
            (
                Box::new(|m| m.sites.push(Site { name: "".into() })),
                "empty name",
            ),
            (
                Box::new(|m| m.sites.push(Site { name: " x".into() })),
                "surrounding",
            ),
            (
                Box::new(|m| {
                    m.sites.push(Site {
                        name: "x".repeat(NAME_BYTES_MAX + 1),
                    })
                }),
                "the limit is",
            ),
            (
                Box::new(|m| m.nodes.get_mut(&1).unwrap().id = 9),
                "says its id is 9",
            ),
            (
                Box::new(|m| m.nodes.get_mut(&2).unwrap().name = "a1".into()),
                "used by two nodes",
            ),
            (
                Box::new(|m| m.nodes.get_mut(&2).unwrap().site = "z".into()),
                "does not list",
            ),
            (
                Box::new(|m| m.nodes.get_mut(&2).unwrap().addr = " ".into()),
                "no address",
            ),
        ];
        for (mutate, expected) in cases {
            let mut m = map();
            mutate(&mut m);
            let err = m.validate().unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn lookups() {
        let m = map();
        assert_eq!(m.node(2).unwrap().name, "a2");
        assert_eq!(m.node_by_name("b3").unwrap().id, 3);
        assert_eq!(m.site_of(3), Some("b"));
        assert_eq!(m.site_of(4), None);
        assert!(m.site("b").is_some() && m.site("c").is_none());
        let in_a: Vec<_> = m.nodes_in_site("a").map(|n| n.id).collect();
        assert_eq!(in_a, [1, 2]);
        assert!(m.is_multi_site());
    }

    #[test]
    fn changes_bump_the_epoch() {
        let m = map();
        let down = m.with_node_state(2, NodeState::Down).unwrap();
        assert_eq!(down.epoch, m.epoch + 1);
        assert_eq!(down.node(2).unwrap().state, NodeState::Down);
        assert_eq!(down.writable_nodes().count(), 2);
        assert_eq!(down.readable_nodes().count(), 2);
        assert_eq!(
            m.with_node_state(9, NodeState::Up),
            Err(PlacementError::UnknownNode(9))
        );
        let full = m.with_node_usage(1, 99, 100).unwrap();
        assert!(full.node(1).unwrap().is_full());
        let grown = m.with_site("c").unwrap().with_node(node(4, "c")).unwrap();
        assert_eq!(grown.epoch, m.epoch + 2);
        assert_eq!(grown.nodes_in_site("c").count(), 1);
        assert!(m.with_node(node(5, "nowhere")).is_err());
        let mut max = m.clone();
        max.epoch = u64::MAX;
        assert!(max.with_node_state(1, NodeState::Down).is_err());
    }
}

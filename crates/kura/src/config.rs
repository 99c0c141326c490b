//! `kura.toml`: one file describes a whole cluster; every process reads the
//! same file and `--node ID` picks its part. Checked at start, with messages
//! that name the line.
//!
//! ```toml
//! [cluster]
//! data_shards = 5          # RS(k, m): k data shards per segment
//! parity_shards = 4        # m parity shards: how many may be lost
//!
//! [[site]]
//! name = "tokyo"
//!
//! [[node]]
//! id = 1                   # unique, > 0; the Raft id and the storage node id
//! site = "tokyo"
//! data = "/var/lib/kura"   # this node's data directory
//! meta = "10.0.1.1:7700"   # a Raft voter at this address (optional role)
//! store = "10.0.1.1:7800"  # a storage node at this address (optional role)
//! gateway = "0.0.0.0:7600" # the public Archive API (optional role)
//! ops = "0.0.0.0:7601"     # the gateway's /healthz, /readyz, /metrics
//! ```

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use kura_erasure::EcParams;
use kura_placement::{ClusterMap, NodeInfo, NodeState, Site};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default, rename = "site")]
    pub sites: Vec<SiteSection>,
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    #[serde(default = "default_k")]
    pub data_shards: Spanned<u8>,
    #[serde(default = "default_m")]
    pub parity_shards: Spanned<u8>,
    /// Seconds before a storage node reclaims an unreferenced shard.
    #[serde(default = "default_grace")]
    pub orphan_grace_secs: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            data_shards: default_k(),
            parity_shards: default_m(),
            orphan_grace_secs: default_grace(),
        }
    }
}

fn default_k() -> Spanned<u8> {
    Spanned::new(0..0, kura_erasure::DATA_SHARDS_DEFAULT)
}
fn default_m() -> Spanned<u8> {
    Spanned::new(0..0, kura_erasure::PARITY_SHARDS_DEFAULT)
}
fn default_grace() -> u64 {
    3600
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    pub name: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub id: Spanned<u64>,
    pub site: Spanned<String>,
    pub data: PathBuf,
    pub meta: Option<Spanned<String>>,
    pub store: Option<Spanned<String>>,
    pub gateway: Option<Spanned<String>>,
    pub ops: Option<Spanned<String>>,
}

/// A checked configuration.
#[derive(Debug)]
pub struct Checked {
    pub config: Config,
    pub profile: EcParams,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Parses and checks `text` (read from `path`, for messages).
pub fn parse(path: &str, text: &str) -> Result<Checked, String> {
    let config: Config = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!(":{}", line_of(text, s.start)))
            .unwrap_or_default();
        format!("{path}{at}: {}", e.message())
    })?;
    let err = |offset: usize, msg: String| format!("{path}:{}: {msg}", line_of(text, offset));

    let profile = EcParams::new(
        *config.cluster.data_shards.get_ref(),
        *config.cluster.parity_shards.get_ref(),
    );
    profile.validate().map_err(|e| {
        err(
            config.cluster.data_shards.span().start,
            format!("erasure profile {profile}: {e}"),
        )
    })?;
    if config.sites.is_empty() {
        return Err(format!("{path}: no [[site]]: name at least one site"));
    }
    let mut site_names = BTreeSet::new();
    for s in &config.sites {
        if s.name.get_ref().is_empty() || !site_names.insert(s.name.get_ref().clone()) {
            return Err(err(
                s.name.span().start,
                format!("site name {:?} is empty or used twice", s.name.get_ref()),
            ));
        }
    }
    if config.nodes.is_empty() {
        return Err(format!("{path}: no [[node]]: describe at least one node"));
    }
    let mut ids = BTreeSet::new();
    let mut addrs = BTreeSet::new();
    for n in &config.nodes {
        let id = *n.id.get_ref();
        if id == 0 || !ids.insert(id) {
            return Err(err(
                n.id.span().start,
                format!("node id {id} is 0 or used twice; ids are unique and > 0"),
            ));
        }
        if !site_names.contains(n.site.get_ref()) {
            return Err(err(
                n.site.span().start,
                format!(
                    "node {id}: site {:?} is not a [[site]] (known: {})",
                    n.site.get_ref(),
                    site_names.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        for (role, addr) in [
            ("meta", &n.meta),
            ("store", &n.store),
            ("gateway", &n.gateway),
            ("ops", &n.ops),
        ] {
            let Some(addr) = addr else { continue };
            let parsed: SocketAddr = addr.get_ref().parse().map_err(|e| {
                err(
                    addr.span().start,
                    format!(
                        "node {id}: {role} address {:?}: {e} (want IP:PORT)",
                        addr.get_ref()
                    ),
                )
            })?;
            if !addrs.insert(parsed) {
                return Err(err(
                    addr.span().start,
                    format!("node {id}: {role} address {parsed} is used twice"),
                ));
            }
        }
        if n.meta.is_none() && n.store.is_none() && n.gateway.is_none() {
            return Err(err(
                n.id.span().start,
                format!("node {id} has no role: give it meta, store and/or gateway"),
            ));
        }
        if n.ops.is_some() && n.gateway.is_none() {
            return Err(err(
                n.id.span().start,
                format!("node {id}: ops serves the gateway's probes; it needs gateway"),
            ));
        }
    }
    let checked = Checked { config, profile };
    if checked.voters().is_empty() {
        return Err(format!(
            "{path}: no node has meta: the cluster needs Raft voters"
        ));
    }
    let map = checked.cluster_map(|_| 0);
    if map.nodes.is_empty() {
        return Err(format!(
            "{path}: no node has store: the cluster needs storage nodes"
        ));
    }
    kura_placement::check_layout(&map.with_capacity(1), &checked.profile)
        .map_err(|e| format!("{path}: the [[node]]s cannot hold {}: {e}", checked.profile))?;
    Ok(checked)
}

trait WithCapacity {
    fn with_capacity(self, bytes: u64) -> Self;
}

impl WithCapacity for ClusterMap {
    fn with_capacity(mut self, bytes: u64) -> Self {
        for n in self.nodes.values_mut() {
            n.capacity_bytes = bytes;
        }
        self
    }
}

impl Checked {
    pub fn node(&self, id: u64) -> Option<&NodeSection> {
        self.config.nodes.iter().find(|n| *n.id.get_ref() == id)
    }

    /// (id, address) of every voter.
    pub fn voters(&self) -> Vec<(u64, String)> {
        self.config
            .nodes
            .iter()
            .filter_map(|n| Some((*n.id.get_ref(), n.meta.as_ref()?.get_ref().clone())))
            .collect()
    }

    /// The cluster map the config describes; `capacity` gives each storage
    /// node's capacity.
    pub fn cluster_map(&self, capacity: impl Fn(u64) -> u64) -> ClusterMap {
        let mut map = ClusterMap::new();
        map.sites = self
            .config
            .sites
            .iter()
            .map(|s| Site {
                name: s.name.get_ref().clone(),
            })
            .collect();
        for n in &self.config.nodes {
            let Some(store) = &n.store else { continue };
            let id = *n.id.get_ref();
            map.nodes.insert(
                id,
                NodeInfo {
                    id,
                    name: format!("store-{id}"),
                    site: n.site.get_ref().clone(),
                    addr: store.get_ref().clone(),
                    state: NodeState::Up,
                    capacity_bytes: capacity(id),
                    used_bytes: 0,
                },
            );
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[cluster]
data_shards = 2
parity_shards = 1

[[site]]
name = "a"
[[site]]
name = "b"
[[site]]
name = "c"

[[node]]
id = 1
site = "a"
data = "/tmp/k1"
meta = "127.0.0.1:7701"
store = "127.0.0.1:7801"
gateway = "127.0.0.1:7600"

[[node]]
id = 2
site = "b"
data = "/tmp/k2"
meta = "127.0.0.1:7702"
store = "127.0.0.1:7802"

[[node]]
id = 3
site = "c"
data = "/tmp/k3"
meta = "127.0.0.1:7703"
store = "127.0.0.1:7803"
"#;

    #[test]
    fn a_good_config_gives_voters_and_a_map() {
        let c = parse("kura.toml", GOOD).expect("valid");
        assert_eq!(c.voters().len(), 3);
        assert_eq!(c.cluster_map(|_| 1).nodes.len(), 3);
        assert_eq!(c.profile.to_string(), EcParams::new(2, 1).to_string());
        assert!(c.node(1).and_then(|n| n.gateway.as_ref()).is_some());
    }

    fn refusal(text: &str) -> String {
        parse("kura.toml", text).expect_err("must be refused")
    }

    #[test]
    fn mistakes_name_their_line() {
        let dup = GOOD.replace("id = 3", "id = 2");
        let e = refusal(&dup);
        let line = GOOD.lines().position(|l| l == "id = 3").expect("line") + 1;
        assert!(e.starts_with(&format!("kura.toml:{line}:")), "{e}");
        assert!(e.contains("used twice"), "{e}");

        let e = refusal(&GOOD.replace("site = \"c\"", "site = \"x\""));
        assert!(e.contains("site \"x\" is not a [[site]]"), "{e}");
        let line = GOOD
            .lines()
            .position(|l| l == "site = \"c\"")
            .expect("line")
            + 1;
        assert!(e.starts_with(&format!("kura.toml:{line}:")), "{e}");

        let e = refusal(&GOOD.replace("127.0.0.1:7803", "localhost"));
        assert!(e.contains("store address") && e.contains("IP:PORT"), "{e}");

        let e = refusal(&GOOD.replace("127.0.0.1:7803", "127.0.0.1:7802"));
        assert!(e.contains("used twice"), "{e}");

        let e = refusal(&GOOD.replace("data_shards = 2", "data_shardz = 2"));
        assert!(e.starts_with("kura.toml:3:"), "{e}");
        assert!(e.contains("unknown field"), "{e}");

        let e = refusal(&GOOD.replace("parity_shards = 1", "parity_shards = 0"));
        assert!(e.contains("erasure profile"), "{e}");

        let e = refusal(&GOOD.replace("parity_shards = 1", "parity_shards = 3"));
        assert!(e.contains("cannot hold"), "{e}");

        let e = refusal("[[site]]\nname = \"a\"\n");
        assert!(e.contains("no [[node]]"), "{e}");
    }
}

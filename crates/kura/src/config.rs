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
//! ops = "0.0.0.0:7601"     # /healthz, /readyz, /metrics (and the gateway's /repair)
//! ```
//!
//! Addresses are `IP:PORT` or `NAME:PORT`. A name is what the others dial
//! (resolved at every connect, so it may follow a moving pod); the process
//! itself listens on `0.0.0.0:PORT` for it.
//!
//! Optional tuning (defaults shown):
//!
//! ```toml
//! [cluster]
//! orphan_grace_secs = 3600       # unreferenced shards older than this are reclaimed
//! report_interval_secs = 10      # storage node heartbeat
//! node_down_after_secs = 30      # silent this long: down (reads avoid it)
//! node_lost_after_secs = 900     # silent this long: lost (repair rebuilds its shards)
//!
//! [repair]                       # runs in every gateway; compare-and-set keeps them apart
//! enabled = true
//! rate_mb_per_sec = 50           # bytes the rebuilding nodes read, per second
//! idle_secs = 30                 # pause between passes that found nothing
//! delete_moved_after_secs = 60   # a moved shard stays this long on its old node
//!
//! [scrub]
//! rate_mb_per_sec = 20           # per storage node; 0 turns scrubbing off
//! interval_secs = 86400          # between two passes
//! ```
//!
//! TLS is on by default: a process refuses to start without its
//! certificates. Make them with `kura certs` (see there):
//!
//! ```toml
//! [tls]
//! dir = "/etc/kura/tls"          # ca.pem, node-<id>.pem, node-<id>.key
//! # or each file, "{node}" standing for the node's id:
//! # ca = "/etc/kura/ca.pem"
//! # cert = "/etc/kura/node-{node}.pem"
//! # key = "/etc/kura/node-{node}.key"
//! # insecure_plaintext = true    # test clusters only: no TLS, every caller trusted
//! ```
//!
//! Encryption at rest is always on: a gateway seals every instance under
//! the cluster keys and refuses to start without them. The keys live in
//! their own file, never in kura.toml; `kura keys generate --file PATH`
//! makes it, and every gateway (only gateways) gets the same file:
//!
//! ```toml
//! [encryption]
//! keys_file = "/etc/kura/cluster.keys"   # or KURA_CLUSTER_KEYS_FILE
//! ```
//!
//! Limits on every input a gateway takes, each with its unit (the
//! defaults shown); a refusal names the limit it hit:
//!
//! ```toml
//! [limits]
//! header_bytes = 8388608          # the identifying attributes lie within this prefix
//! chunk_bytes = 4194304           # one Store message's data
//! instance_bytes = 8589934592     # one instance
//! streams_per_identity = 64       # Store/Retrieve/ListStudy streams of one caller at once
//! streams_per_gateway = 1024      # ... of all callers at once (RESOURCE_EXHAUSTED beyond)
//! page_entries = 1000             # entries one Admin listing page may ask for
//! dicom_nesting_depth = 64        # levels of nested sequences (at most 64)
//! dicom_elements = 2000000        # data elements in one instance
//! ```
//!
//! Relative paths are relative to the directory of kura.toml.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kura_erasure::EcParams;
use kura_placement::{ClusterMap, NodeInfo, NodeState, Site};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub repair: RepairSection,
    #[serde(default)]
    pub scrub: ScrubSection,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub encryption: EncryptionSection,
    #[serde(default)]
    pub limits: LimitsSection,
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
    #[serde(default = "default_report")]
    pub report_interval_secs: Spanned<f64>,
    #[serde(default = "default_down")]
    pub node_down_after_secs: Spanned<f64>,
    #[serde(default = "default_lost")]
    pub node_lost_after_secs: Spanned<f64>,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            data_shards: default_k(),
            parity_shards: default_m(),
            orphan_grace_secs: default_grace(),
            report_interval_secs: default_report(),
            node_down_after_secs: default_down(),
            node_lost_after_secs: default_lost(),
        }
    }
}

fn spanned<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}
fn default_report() -> Spanned<f64> {
    spanned(10.0)
}
fn default_down() -> Spanned<f64> {
    spanned(30.0)
}
fn default_lost() -> Spanned<f64> {
    spanned(900.0)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepairSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_repair_rate")]
    pub rate_mb_per_sec: Spanned<f64>,
    #[serde(default = "default_repair_idle")]
    pub idle_secs: Spanned<f64>,
    #[serde(default = "default_delete_moved")]
    pub delete_moved_after_secs: Spanned<f64>,
}

impl Default for RepairSection {
    fn default() -> Self {
        Self {
            enabled: true,
            rate_mb_per_sec: default_repair_rate(),
            idle_secs: default_repair_idle(),
            delete_moved_after_secs: default_delete_moved(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_repair_rate() -> Spanned<f64> {
    spanned(50.0)
}
fn default_repair_idle() -> Spanned<f64> {
    spanned(30.0)
}
fn default_delete_moved() -> Spanned<f64> {
    spanned(60.0)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrubSection {
    #[serde(default = "default_scrub_rate")]
    pub rate_mb_per_sec: Spanned<f64>,
    #[serde(default = "default_scrub_interval")]
    pub interval_secs: Spanned<f64>,
}

impl Default for ScrubSection {
    fn default() -> Self {
        Self {
            rate_mb_per_sec: default_scrub_rate(),
            interval_secs: default_scrub_interval(),
        }
    }
}

fn default_scrub_rate() -> Spanned<f64> {
    spanned(20.0)
}
fn default_scrub_interval() -> Spanned<f64> {
    spanned(86400.0)
}

/// Checks a `NAME:PORT` or `IP:PORT` address; answers why not.
pub fn check_addr(addr: &str) -> Result<(), String> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err("no port (want IP:PORT or NAME:PORT)".into());
    };
    port.parse::<u16>()
        .map_err(|_| format!("port {port:?} is not a number 0-65535"))?;
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(format!(
            "host {host:?} is neither an IP address nor a DNS name"
        ));
    }
    Ok(())
}

/// Where to listen for `addr`: itself when it is `IP:PORT`, every
/// interface on its port when it names a host.
pub fn listen_addr(addr: &str) -> String {
    if addr.parse::<SocketAddr>().is_ok() {
        return addr.to_string();
    }
    match addr.rsplit_once(':') {
        Some((_, port)) => format!("0.0.0.0:{port}"),
        None => addr.to_string(),
    }
}

/// A duration in seconds from the config, checked.
pub fn secs(v: &Spanned<f64>) -> Duration {
    Duration::from_secs_f64(v.get_ref().clamp(0.0, 1e9))
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// A directory laid out as `kura certs` writes it.
    pub dir: Option<PathBuf>,
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    /// No TLS and no authentication: for throwaway test clusters only.
    #[serde(default)]
    pub insecure_plaintext: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSection {
    /// The cluster key file (`kura keys generate`); the environment
    /// variable [`KEYS_FILE_ENV`] overrides it.
    pub keys_file: Option<PathBuf>,
}

/// `[limits]`: every field optional, defaults from
/// `kura_gateway::Limits::default()`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub header_bytes: Option<usize>,
    pub chunk_bytes: Option<usize>,
    pub instance_bytes: Option<u64>,
    pub streams_per_identity: Option<usize>,
    pub streams_per_gateway: Option<usize>,
    pub page_entries: Option<u32>,
    pub dicom_nesting_depth: Option<u32>,
    pub dicom_elements: Option<u64>,
}

impl LimitsSection {
    /// The gateway's limits, checked.
    pub fn limits(&self) -> Result<kura_gateway::Limits, String> {
        let d = kura_gateway::Limits::default();
        let l = kura_gateway::Limits {
            header_bytes: self.header_bytes.unwrap_or(d.header_bytes),
            chunk_bytes: self.chunk_bytes.unwrap_or(d.chunk_bytes),
            instance_bytes: self.instance_bytes.unwrap_or(d.instance_bytes),
            streams_per_identity: self.streams_per_identity.unwrap_or(d.streams_per_identity),
            streams_per_gateway: self.streams_per_gateway.unwrap_or(d.streams_per_gateway),
            page_entries: self.page_entries.unwrap_or(d.page_entries),
            dicom_nesting_depth: self.dicom_nesting_depth.unwrap_or(d.dicom_nesting_depth),
            dicom_elements: self.dicom_elements.unwrap_or(d.dicom_elements),
        };
        l.validate().map_err(|e| format!("[limits]: {e}"))?;
        Ok(l)
    }
}

/// The environment variable naming the cluster key file.
pub const KEYS_FILE_ENV: &str = "KURA_CLUSTER_KEYS_FILE";

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
    /// The directory of kura.toml: relative paths start there.
    pub base_dir: PathBuf,
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
            check_addr(addr.get_ref()).map_err(|e| {
                err(
                    addr.span().start,
                    format!("node {id}: {role} address {:?}: {e}", addr.get_ref()),
                )
            })?;
            if !addrs.insert(addr.get_ref().clone()) {
                return Err(err(
                    addr.span().start,
                    format!("node {id}: {role} address {} is used twice", addr.get_ref()),
                ));
            }
        }
        if n.meta.is_none() && n.store.is_none() && n.gateway.is_none() {
            return Err(err(
                n.id.span().start,
                format!("node {id} has no role: give it meta, store and/or gateway"),
            ));
        }
    }
    for (what, v, min) in [
        (
            "report_interval_secs",
            &config.cluster.report_interval_secs,
            0.01,
        ),
        (
            "node_down_after_secs",
            &config.cluster.node_down_after_secs,
            0.1,
        ),
        (
            "node_lost_after_secs",
            &config.cluster.node_lost_after_secs,
            0.1,
        ),
        ("rate_mb_per_sec", &config.repair.rate_mb_per_sec, 0.001),
        ("idle_secs", &config.repair.idle_secs, 0.01),
        (
            "delete_moved_after_secs",
            &config.repair.delete_moved_after_secs,
            0.0,
        ),
        ("rate_mb_per_sec", &config.scrub.rate_mb_per_sec, 0.0),
        ("interval_secs", &config.scrub.interval_secs, 0.01),
    ] {
        let x = *v.get_ref();
        if !x.is_finite() || x < min || x > 1e9 {
            return Err(err(
                v.span().start,
                format!("{what} = {x} is out of range ({min} to 1e9)"),
            ));
        }
    }
    if config.cluster.node_lost_after_secs.get_ref()
        <= config.cluster.node_down_after_secs.get_ref()
    {
        return Err(err(
            config.cluster.node_lost_after_secs.span().start,
            "node_lost_after_secs must be longer than node_down_after_secs".into(),
        ));
    }
    let base_dir = std::path::Path::new(path)
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let checked = Checked {
        config,
        profile,
        base_dir,
    };
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

    /// The node roles `[[node]] id` has in this config.
    pub fn roles(&self, id: u64) -> kura_auth::NodeRoles {
        let mut roles = kura_auth::NodeRoles::NONE;
        if let Some(n) = self.node(id) {
            if n.meta.is_some() {
                roles.insert(kura_auth::NodeRole::Meta);
            }
            if n.store.is_some() {
                roles.insert(kura_auth::NodeRole::Store);
            }
            if n.gateway.is_some() {
                roles.insert(kura_auth::NodeRole::Gateway);
            }
        }
        roles
    }

    /// Every host name and IP the config gives node `id` (what its
    /// certificate must name), without wildcard listen addresses.
    pub fn names(&self, id: u64) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(n) = self.node(id) {
            for a in [&n.meta, &n.store, &n.gateway, &n.ops]
                .into_iter()
                .flatten()
            {
                let host = a
                    .get_ref()
                    .rsplit_once(':')
                    .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
                    .unwrap_or_default()
                    .to_string();
                let wildcard = host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_unspecified());
                if !host.is_empty() && !wildcard && !out.contains(&host) {
                    out.push(host);
                }
            }
        }
        out
    }

    /// The cluster keys a gateway seals under: from the file
    /// `KURA_CLUSTER_KEYS_FILE` names, else `[encryption] keys_file`.
    pub fn keyring(&self) -> Result<kura_seal::Keyring, String> {
        let path = match std::env::var_os(KEYS_FILE_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => match &self.config.encryption.keys_file {
                Some(p) => self.base_dir.join(p),
                None => {
                    return Err(format!(
                        "no cluster key file: a gateway seals every instance (encryption at rest is always on). Make one with\n  \
                         kura keys generate --file /etc/kura/cluster.keys\n\
                         copy it to every gateway (never to storage nodes or voters) and add to kura.toml:\n  \
                         [encryption]\n  keys_file = \"/etc/kura/cluster.keys\"\n\
                         (or set {KEYS_FILE_ENV})"
                    ));
                }
            },
        };
        kura_seal::Keyring::from_file(&path).map_err(|e| e.to_string())
    }

    /// The certificate directory `[tls] dir`, resolved.
    pub fn tls_dir(&self) -> Option<PathBuf> {
        self.config.tls.dir.as_ref().map(|d| self.base_dir.join(d))
    }

    /// The (CA, certificate, key) files of node `id`, or why there are
    /// none.
    pub fn tls_files(&self, id: u64) -> Result<(PathBuf, PathBuf, PathBuf), String> {
        let t = &self.config.tls;
        let dir = self.tls_dir();
        let pick = |explicit: &Option<String>, file: String| -> Option<PathBuf> {
            match explicit {
                Some(p) => Some(self.base_dir.join(p.replace("{node}", &id.to_string()))),
                None => dir.as_ref().map(|d| d.join(file)),
            }
        };
        let stem = kura_auth::certs::node_stem(id);
        match (
            pick(&t.ca, kura_auth::certs::CA_CERT.into()),
            pick(&t.cert, format!("{stem}.pem")),
            pick(&t.key, format!("{stem}.key")),
        ) {
            (Some(ca), Some(cert), Some(key)) => Ok((ca, cert, key)),
            _ => Err((
                "no TLS certificates configured: every Kura link runs TLS. Make them once with\n  \
                 kura certs init --out DIR\n  \
                 kura certs node --config kura.toml --node ID --dir DIR   (for every node)\n\
                 and add to kura.toml:\n  [tls]\n  dir = \"DIR\"\n\
                 (or set [tls] insecure_plaintext = true for a throwaway test cluster)"
            )
            .to_string()),
        }
    }

    /// The transport of node `id`: its certificate, checked against the
    /// config (same id, every role it runs), or plaintext when the config
    /// says `insecure_plaintext`.
    pub fn transport(&self, id: u64) -> Result<kura_auth::Transport, String> {
        if self.config.tls.insecure_plaintext {
            return Ok(kura_auth::Transport::Plaintext);
        }
        let (ca, cert, key) = self.tls_files(id)?;
        let material = kura_auth::TlsMaterial::load(&ca, Some((&cert, &key)))
            .map_err(|e| format!("node {id}'s TLS material: {e}"))?;
        let want = self.roles(id);
        match material.principal() {
            Some(kura_auth::Principal::Node { id: got, roles }) if *got == id => {
                let missing: Vec<&str> = want
                    .iter()
                    .filter(|r| !roles.contains(*r))
                    .map(kura_auth::NodeRole::as_str)
                    .collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "{}: the certificate gives node {id} the roles {roles}, but kura.toml also runs {} on it; issue it again with kura certs node",
                        cert.display(),
                        missing.join(", ")
                    ));
                }
            }
            other => {
                return Err(format!(
                    "{} is not node {id}'s certificate (it names {}); issue it with kura certs node --node {id}",
                    cert.display(),
                    other.map_or("no Kura identity".to_string(), |p| p.to_string())
                ));
            }
        }
        if material.days_left() < 0.0 {
            return Err(format!(
                "{}: the certificate or the CA has expired",
                cert.display()
            ));
        }
        Ok(kura_auth::Transport::tls(material))
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
        assert!(e.contains("store address") && e.contains("no port"), "{e}");
        let e = refusal(&GOOD.replace("127.0.0.1:7803", "bad_name:7803"));
        assert!(e.contains("neither an IP address nor a DNS name"), "{e}");
        // Names are fine: dialled by name, listened on every interface.
        let named = parse(
            "kura.toml",
            &GOOD.replace("127.0.0.1:7803", "kura-store-2.kura-store.kura.svc:7803"),
        )
        .expect("a DNS name is a valid address");
        assert_eq!(named.voters().len(), 3);
        assert_eq!(listen_addr("kura-store-2.kura-store:7803"), "0.0.0.0:7803");
        assert_eq!(listen_addr("127.0.0.1:7803"), "127.0.0.1:7803");

        let e = refusal(&GOOD.replace(
            "parity_shards = 1",
            "parity_shards = 1\nnode_lost_after_secs = 5",
        ));
        assert!(e.contains("longer than node_down_after_secs"), "{e}");

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

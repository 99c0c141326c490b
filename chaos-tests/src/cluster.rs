//! A cluster of `kura server` processes, one site per namespace: its
//! config files, its processes (start, SIGKILL, SIGSTOP/SIGCONT, restart
//! from the data dir), readiness, and the repair figures of its gateways.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kura_auth::{ClientRole, ClientRoles, Transport};
use kura_placement::NodeState;
use kura_testkit::certs::CertDir;

use crate::meta::Meta;
use crate::net::{Net, sh, sh_ok, signal};
use crate::workload::Target;

/// The sites of every scenario.
pub const SITES: [&str; 3] = ["a", "b", "c"];
/// Nodes per site: A (meta + store + gateway + ops), B and C (store + ops).
pub const NODES_PER_SITE: u64 = 3;
/// RS(3,3): 6 shards per segment, 2 per site, one free node per site.
pub const DATA_SHARDS: u8 = 3;
pub const PARITY_SHARDS: u8 = 3;

/// The `[cluster]`, `[repair]` and `[scrub]` tuning of a scenario.
#[derive(Clone, Debug)]
pub struct Tuning {
    pub report_secs: f64,
    pub down_secs: f64,
    pub lost_secs: f64,
    pub orphan_grace_secs: u64,
    pub repair_rate_mb: f64,
    pub repair_idle_secs: f64,
    pub delete_moved_secs: f64,
    pub scrub_rate_mb: f64,
    pub scrub_interval_secs: f64,
}

impl Default for Tuning {
    /// Fast failure detection, never `Lost` (a scenario that loses nodes
    /// for good lowers `lost_secs`), quick repair passes, slow scrubbing.
    fn default() -> Self {
        Self {
            report_secs: 0.3,
            down_secs: 2.0,
            lost_secs: 3600.0,
            orphan_grace_secs: 3600,
            repair_rate_mb: 20.0,
            repair_idle_secs: 0.5,
            delete_moved_secs: 3.0,
            scrub_rate_mb: 5.0,
            scrub_interval_secs: 3600.0,
        }
    }
}

/// One `[[node]]`.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub id: u64,
    pub site: String,
    pub ip: String,
    pub ns: String,
    pub data: PathBuf,
    pub meta: bool,
    pub store: bool,
    pub gateway: bool,
}

impl NodeSpec {
    pub fn meta_addr(&self) -> String {
        format!("{}:{}", self.ip, 7700 + self.id)
    }
    pub fn store_addr(&self) -> String {
        format!("{}:{}", self.ip, 7800 + self.id)
    }
    pub fn gateway_addr(&self) -> String {
        format!("{}:{}", self.ip, 7600 + self.id)
    }
    pub fn ops_addr(&self) -> String {
        format!("{}:{}", self.ip, 7900 + self.id)
    }
}

/// The id of node `j` (0 = A) of site `site` (0-based); replacements of a
/// site get ids from 11 on.
pub fn node_id(site: usize, j: u64, replacement: bool) -> u64 {
    (if replacement { 10 } else { 0 }) + site as u64 * NODES_PER_SITE + j + 1
}

/// The nodes of one site.
pub fn site_specs(net: &Net, dir: &Path, site: usize, replacement: bool) -> Vec<NodeSpec> {
    let s = &net.sites[site];
    (0..NODES_PER_SITE)
        .map(|j| {
            let id = node_id(site, j, replacement);
            NodeSpec {
                id,
                site: s.name.clone(),
                ip: s.ip.clone(),
                ns: s.ns.clone(),
                data: dir.join(format!("node-{id}")),
                meta: j == 0,
                store: true,
                gateway: j == 0,
            }
        })
        .collect()
}

fn config_text(t: &Tuning, nodes: &[NodeSpec], certs: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "[cluster]\ndata_shards = {DATA_SHARDS}\nparity_shards = {PARITY_SHARDS}\n\
         orphan_grace_secs = {}\nreport_interval_secs = {}\nnode_down_after_secs = {}\n\
         node_lost_after_secs = {}\n\n[repair]\nenabled = true\nrate_mb_per_sec = {}\n\
         idle_secs = {}\ndelete_moved_after_secs = {}\n\n[scrub]\nrate_mb_per_sec = {}\n\
         interval_secs = {}\n",
        t.orphan_grace_secs,
        t.report_secs,
        t.down_secs,
        t.lost_secs,
        t.repair_rate_mb,
        t.repair_idle_secs,
        t.delete_moved_secs,
        t.scrub_rate_mb,
        t.scrub_interval_secs
    );
    let _ = writeln!(s, "[tls]\ndir = \"{}\"\n", certs.display());
    let _ = writeln!(
        s,
        "[encryption]\nkeys_file = \"{}\"\n",
        certs.join("cluster.keys").display()
    );
    for site in SITES {
        let _ = writeln!(s, "[[site]]\nname = \"{site}\"");
    }
    for n in nodes {
        let _ = writeln!(
            s,
            "\n[[node]]\nid = {}\nsite = \"{}\"\ndata = \"{}\"\nops = \"{}\"",
            n.id,
            n.site,
            n.data.display(),
            n.ops_addr()
        );
        if n.meta {
            let _ = writeln!(s, "meta = \"{}\"", n.meta_addr());
        }
        if n.store {
            let _ = writeln!(s, "store = \"{}\"", n.store_addr());
        }
        if n.gateway {
            let _ = writeln!(s, "gateway = \"{}\"", n.gateway_addr());
        }
    }
    s
}

/// One process slot.
pub struct Node {
    pub spec: NodeSpec,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// How many times it was started.
    pub incarnation: u32,
    stopped: bool,
}

impl Node {
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// What one gateway incarnation's `/repair` said last.
#[derive(Clone, Debug, Default)]
pub struct RepairFig {
    pub bytes_written: u64,
    pub bytes_read: u64,
    pub cross_site_bytes: u64,
    pub shards_rebuilt: u64,
    pub shards_moved: u64,
    pub damaged_rewritten: u64,
    pub instances_repaired: u64,
    pub failures: u64,
}

impl RepairFig {
    fn from_json(v: &serde_json::Value) -> RepairFig {
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        RepairFig {
            bytes_written: n("bytes_written"),
            bytes_read: n("bytes_read"),
            cross_site_bytes: n("cross_site_bytes"),
            shards_rebuilt: n("shards_rebuilt"),
            shards_moved: n("shards_moved"),
            damaged_rewritten: n("damaged_rewritten"),
            instances_repaired: n("instances_repaired"),
            failures: n("failures"),
        }
    }

    fn add(&mut self, o: &RepairFig) {
        self.bytes_written += o.bytes_written;
        self.bytes_read += o.bytes_read;
        self.cross_site_bytes += o.cross_site_bytes;
        self.shards_rebuilt += o.shards_rebuilt;
        self.shards_moved += o.shards_moved;
        self.damaged_rewritten += o.damaged_rewritten;
        self.instances_repaired += o.instances_repaired;
        self.failures += o.failures;
    }
}

/// The repair counters of every gateway incarnation, polled in the
/// background (counters restart with their process, so each incarnation
/// keeps its last answer and the figures are their sum).
#[derive(Default)]
struct RepairBook {
    /// Running gateways: id → (incarnation, ops address).
    live: BTreeMap<u64, (u32, String)>,
    last: BTreeMap<(u64, u32), RepairFig>,
}

/// Removes the run directories (`kura-chaos-<pid>-…`) of runs whose
/// process is gone (killed before their cleanup ran).
fn sweep_dirs(base: &Path) {
    let me = std::process::id();
    for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("kura-chaos-") else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != me && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("chaos: removing stale run directory {}", e.path().display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Plain HTTP GET (the ops port); answers (status, body).
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let sock: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sock, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn poll_repair(book: &Mutex<RepairBook>, only: Option<u64>) {
    let live: Vec<(u64, u32, String)> = book
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .live
        .iter()
        .filter(|(id, _)| only.is_none_or(|o| o == **id))
        .map(|(id, (inc, ops))| (*id, *inc, ops.clone()))
        .collect();
    for (id, inc, ops) in live {
        if let Ok((200, body)) = http_get(&ops, "/repair", Duration::from_millis(800))
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
        {
            book.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .last
                .insert((id, inc), RepairFig::from_json(&v));
        }
    }
}

/// The processes of one scenario's cluster. Dropping it kills them all,
/// unmounts its tmpfs mounts and (through [`Net`]) removes the namespaces;
/// after a panic it prints the tail of every process's log first.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub tuning: Tuning,
    kura: PathBuf,
    mounts: Vec<PathBuf>,
    book: Arc<Mutex<RepairBook>>,
    poller_stop: Arc<AtomicBool>,
    poller: Option<std::thread::JoinHandle<()>>,
    configs: u32,
    /// The cluster's CA and certificates, made with `kura certs`.
    pub certs: CertDir,
    pub net: Net,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Makes the namespaces and the run's directory, copies the `kura`
    /// binary into it (a concurrent build cannot swap it mid-run), and
    /// writes nothing else yet.
    pub fn prepare(kura: &Path) -> Cluster {
        kura_testkit::install_crypto_provider();
        let net = Net::create(&SITES);
        let base =
            PathBuf::from(std::env::var_os("KURA_CHAOS_DIR").unwrap_or_else(|| "/var/tmp".into()));
        sweep_dirs(&base);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("kura-chaos-{}-", std::process::id()))
            .tempdir_in(&base)
            .expect("a temp dir");
        let dir = tmp.path().to_path_buf();
        let local = dir.join("kura");
        std::fs::copy(kura, &local).expect("copy the kura binary");
        let certs = CertDir::init(&local, &dir.join("certs")).expect("kura certs init");
        certs.keys().expect("kura keys generate");
        let book = Arc::new(Mutex::new(RepairBook::default()));
        let poller_stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let book = Arc::clone(&book);
            let stop = Arc::clone(&poller_stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    poll_repair(&book, None);
                    std::thread::sleep(Duration::from_millis(700));
                }
            })
        };
        Cluster {
            nodes: Vec::new(),
            tuning: Tuning::default(),
            kura: local,
            mounts: Vec::new(),
            book,
            poller_stop,
            poller: Some(poller),
            configs: 0,
            certs,
            net,
            dir,
            _tmp: Some(tmp),
        }
    }

    /// The standard nodes: 3 per site.
    pub fn standard_specs(&self) -> Vec<NodeSpec> {
        (0..SITES.len())
            .flat_map(|s| site_specs(&self.net, &self.dir, s, false))
            .collect()
    }

    /// Writes a config with `specs` (every node the cluster knows, old and
    /// new) and adds the nodes not yet known as slots that start with it.
    pub fn add_nodes(&mut self, specs: &[NodeSpec]) -> PathBuf {
        self.configs += 1;
        let path = self.dir.join(format!("kura-{}.toml", self.configs));
        std::fs::write(&path, config_text(&self.tuning, specs, &self.certs.dir))
            .expect("write the config");
        for spec in specs {
            if self.nodes.iter().any(|n| n.spec.id == spec.id) {
                continue;
            }
            self.certs.node(&path, spec.id).expect("kura certs node");
            std::fs::create_dir_all(&spec.data).expect("data dir");
            self.nodes.push(Node {
                spec: spec.clone(),
                config: path.clone(),
                log: self.dir.join(format!("node-{}.log", spec.id)),
                child: None,
                incarnation: 0,
                stopped: false,
            });
        }
        path
    }

    /// Every spec known so far (for a config that adds more).
    pub fn specs(&self) -> Vec<NodeSpec> {
        self.nodes.iter().map(|n| n.spec.clone()).collect()
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.spec.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.spec.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Mounts a tmpfs of `mb` MiB on node `id`'s data dir (before it starts).
    pub fn mount_tmpfs(&mut self, id: u64, mb: u64) {
        let data = self.node(id).spec.data.clone();
        std::fs::create_dir_all(&data).expect("data dir");
        sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={mb}m"),
            "tmpfs",
            data.to_str().expect("utf-8 path"),
        ]);
        self.mounts.push(data);
    }

    /// Starts node `id`'s process in its site's namespace.
    pub fn start(&mut self, id: u64) {
        let kura = self.kura.clone();
        let node = self.node_mut(id);
        assert!(node.child.is_none(), "node {id} already runs");
        node.incarnation += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open the node's log");
        let _ = writeln!(
            log,
            "===== chaos: start #{} of node {id} with {}",
            node.incarnation,
            node.config.display()
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &node.spec.ns])
            .arg(&kura)
            .args(["server", "--config"])
            .arg(&node.config)
            .args(["--node", &id.to_string()])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start kura server");
        node.child = Some(child);
        node.stopped = false;
        if node.spec.gateway {
            let (inc, ops) = (node.incarnation, node.spec.ops_addr());
            self.book
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .live
                .insert(id, (inc, ops));
        }
    }

    /// Starts every node that is not running, highest id first (the
    /// bootstrapping voter comes last: formation must not depend on order).
    pub fn start_all(&mut self) {
        let mut ids: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| !n.running())
            .map(|n| n.spec.id)
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        for id in ids {
            self.start(id);
        }
    }

    /// SIGKILLs node `id` (its repair figures are read just before).
    pub fn kill(&mut self, id: u64) {
        if self.node(id).spec.gateway && self.node(id).running() && !self.node(id).stopped {
            poll_repair(&self.book, Some(id));
        }
        self.book
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .live
            .remove(&id);
        let node = self.node_mut(id);
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        node.stopped = false;
    }

    /// SIGKILLs several nodes as close together as possible.
    pub fn kill_many(&mut self, ids: &[u64]) {
        let pids: Vec<String> = ids
            .iter()
            .filter_map(|&id| self.node(id).pid())
            .map(|p| p.to_string())
            .collect();
        let _ = signal("KILL", &pids);
        for &id in ids {
            self.kill(id);
        }
    }

    /// SIGSTOP: the process freezes with its sockets open.
    pub fn pause(&mut self, id: u64) {
        let pid = self.node(id).pid().expect("running").to_string();
        signal("STOP", &[pid]).unwrap_or_else(|e| panic!("{e}"));
        self.node_mut(id).stopped = true;
    }

    pub fn resume(&mut self, id: u64) {
        let pid = self.node(id).pid().expect("running").to_string();
        signal("CONT", &[pid]).unwrap_or_else(|e| panic!("{e}"));
        self.node_mut(id).stopped = false;
    }

    /// Ids of the nodes running now.
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.running())
            .map(|n| n.spec.id)
            .collect()
    }

    /// Running storage nodes.
    pub fn running_stores(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.running() && n.spec.store)
            .map(|n| n.spec.id)
            .collect()
    }

    /// The gateways of running nodes, as workload targets; `except` sites
    /// are left out.
    pub fn targets(&self, except: &[&str]) -> Vec<Target> {
        self.nodes
            .iter()
            .filter(|n| n.running() && n.spec.gateway && !except.contains(&n.spec.site.as_str()))
            .map(|n| Target {
                label: format!("{}/{}", n.spec.site, n.spec.id),
                addr: n.spec.gateway_addr(),
                transport: self.client_transport(),
            })
            .collect()
    }

    /// The workload's credential: tenant [`crate::workload::TENANT`],
    /// reader and writer.
    pub fn client_transport(&self) -> Transport {
        self.certs
            .client_transport(
                crate::workload::TENANT,
                ClientRoles::of(&[ClientRole::Reader, ClientRole::Writer]),
            )
            .expect("client certificate")
    }

    /// An operator's credential: tenant [`crate::workload::TENANT`], admin.
    pub fn admin_transport(&self) -> Transport {
        self.certs
            .client_transport(
                crate::workload::TENANT,
                ClientRoles::of(&[ClientRole::Admin]),
            )
            .expect("admin certificate")
    }

    /// A node's identity for calling voters and storage nodes directly:
    /// node 1's (it runs every role).
    pub fn node_transport(&self) -> Transport {
        self.certs.node_transport(1).expect("node 1 certificate")
    }

    /// A metadata client over the voters of every known node.
    pub fn meta(&self) -> Meta {
        Meta::new(
            self.node_transport(),
            self.nodes
                .iter()
                .filter(|n| n.spec.meta)
                .map(|n| (n.spec.id, n.spec.meta_addr()))
                .collect(),
        )
    }

    /// Waits until the map lists every running storage node `Up` and every
    /// running gateway answers `/readyz`.
    pub async fn wait_ready(&self, within: Duration) {
        let meta = self.meta();
        let end = Instant::now() + within;
        let stores = self.running_stores();
        let mut why;
        loop {
            why = match meta.map().await {
                None => "no cluster map yet".to_string(),
                Some(map) => {
                    let not_up: Vec<String> = stores
                        .iter()
                        .filter(|id| map.node(**id).is_none_or(|n| n.state != NodeState::Up))
                        .map(|id| format!("{id}:{:?}", map.node(*id).map(|n| n.state)))
                        .collect();
                    if not_up.is_empty() {
                        String::new()
                    } else {
                        format!("storage nodes not up: {}", not_up.join(", "))
                    }
                }
            };
            if why.is_empty() {
                let mut unready = Vec::new();
                for n in self.nodes.iter().filter(|n| n.running() && n.spec.gateway) {
                    let ops = n.spec.ops_addr();
                    let r = tokio::task::spawn_blocking(move || {
                        http_get(&ops, "/readyz", Duration::from_secs(2))
                    })
                    .await
                    .expect("readyz task");
                    if !matches!(r, Ok((200, _))) {
                        unready.push(format!("gateway {}: {r:?}", n.spec.id));
                    }
                }
                if unready.is_empty() {
                    return;
                }
                why = unready.join("; ");
            }
            assert!(
                Instant::now() < end,
                "the cluster is not ready after {within:?}: {why}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Sum of every gateway incarnation's repair counters (polled now).
    pub fn repair_figures(&self) -> RepairFig {
        poll_repair(&self.book, None);
        let book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        let mut sum = RepairFig::default();
        for f in book.last.values() {
            sum.add(f);
        }
        sum
    }

    /// The repair counters per gateway node (all its incarnations).
    pub fn repair_by_gateway(&self) -> BTreeMap<u64, RepairFig> {
        poll_repair(&self.book, None);
        let book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: BTreeMap<u64, RepairFig> = BTreeMap::new();
        for ((id, _), f) in &book.last {
            out.entry(*id).or_default().add(f);
        }
        out
    }

    /// The last `lines` lines of node `id`'s log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.node(id).log).unwrap_or_default();
        let all: Vec<String> = text
            .lines()
            .map(|l| l.chars().take(400).collect())
            .collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// How many lines of node `id`'s log contain `needle`.
    pub fn log_count(&self, id: u64, needle: &str) -> usize {
        std::fs::read_to_string(&self.node(id).log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.poller_stop.store(true, Ordering::Relaxed);
        if let Some(p) = self.poller.take() {
            let _ = p.join();
        }
        let panicking = std::thread::panicking();
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = signal("CONT", &[c.id().to_string()]);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if panicking {
            for n in &self.nodes {
                eprintln!(
                    "----- node {} (site {}) log tail: {}\n{}",
                    n.spec.id,
                    n.spec.site,
                    n.log.display(),
                    self.log_tail(n.spec.id, 15)
                );
            }
        }
        for m in self.mounts.drain(..) {
            if let Err(e) = sh_ok(&["umount", m.to_str().unwrap_or_default()]) {
                eprintln!("chaos: {e}; unmounting lazily");
                let _ = sh_ok(&["umount", "-l", m.to_str().unwrap_or_default()]);
            }
        }
        if std::env::var_os("KURA_CHAOS_KEEP").is_some() {
            if let Some(t) = self._tmp.take() {
                // Renamed so that later runs do not sweep it.
                let kept = t.keep();
                let name = kept
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("run")
                    .replacen("kura-chaos-", "kura-chaos-kept-", 1);
                let to = kept.with_file_name(name);
                let shown = match std::fs::rename(&kept, &to) {
                    Ok(()) => to,
                    Err(_) => kept,
                };
                eprintln!("chaos: keeping {}", shown.display());
            }
        } else if panicking {
            eprintln!("chaos: set KURA_CHAOS_KEEP=1 to keep the run's directory (logs, data)");
        }
    }
}

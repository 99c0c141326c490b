//! A test cluster of metadata nodes in one process: each node has its own
//! data directory, listener and tasks, and "killing" one drops its server,
//! its Raft tasks and its RocksDB handle (nothing of it keeps running).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use kura_meta::service::ServiceTimeouts;
use kura_meta::{MetaConfig, MetaNode, RaftTimings};
use kura_proto::meta::{AdminRequest, Voter};
use kura_proto::meta_client::MetaClient;
use tempfile::TempDir;

pub fn fast_timings() -> RaftTimings {
    RaftTimings {
        heartbeat_ms: 50,
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        snapshot_every_entries: 100_000,
        snapshot_every_bytes: 256 << 20,
        log_kept_behind_snapshot: 1_000,
    }
}

pub struct TestCluster {
    pub root: TempDir,
    pub timings: RaftTimings,
    pub nodes: BTreeMap<u64, MetaNode>,
    pub addrs: BTreeMap<u64, String>,
}

impl TestCluster {
    /// Starts nodes `1..=n` and bootstraps them as voters.
    pub async fn start(n: u64, timings: RaftTimings) -> Self {
        let mut c = Self::empty(timings);
        for id in 1..=n {
            c.add_node(id).await;
        }
        let voters: Vec<Voter> = c
            .addrs
            .iter()
            .map(|(id, addr)| Voter {
                id: *id,
                addr: addr.clone(),
            })
            .collect();
        let first = c.addrs[&1].clone();
        c.client()
            .admin_at(&first, &AdminRequest::Bootstrap { voters })
            .await
            .expect("bootstrap");
        c.leader(Duration::from_secs(20)).await;
        c
    }

    pub fn empty(timings: RaftTimings) -> Self {
        Self {
            root: tempfile::tempdir().expect("tempdir"),
            timings,
            nodes: BTreeMap::new(),
            addrs: BTreeMap::new(),
        }
    }

    pub fn dir(&self, id: u64) -> PathBuf {
        self.root.path().join(format!("meta-{id}"))
    }

    /// Starts node `id` on a new port (first start) or on its old address
    /// (restart from its data directory).
    pub async fn add_node(&mut self, id: u64) {
        let listener = match self.addrs.get(&id) {
            Some(addr) => rebind(addr).await,
            None => tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind"),
        };
        let addr = listener.local_addr().expect("addr").to_string();
        let config = MetaConfig {
            id,
            data_dir: self.dir(id),
            advertise_addr: addr.clone(),
            timings: self.timings,
            timeouts: ServiceTimeouts::default(),
            transport: kura_auth::Transport::Plaintext,
        };
        let node = MetaNode::start(config, listener).await.expect("start node");
        self.addrs.insert(id, addr);
        self.nodes.insert(id, node);
    }

    /// Stops node `id` for real: server, Raft tasks, database.
    pub async fn kill(&mut self, id: u64) {
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await.expect("shutdown");
        }
    }

    pub fn client(&self) -> MetaClient {
        MetaClient::with_timeouts(
            self.addrs.values().cloned().collect(),
            kura_auth::Transport::Plaintext,
            Duration::from_secs(5),
            Duration::from_secs(30),
        )
    }

    /// The id of the leader a majority of running nodes agrees on.
    pub async fn leader(&self, timeout: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
            for node in self.nodes.values() {
                let m = node.raft().metrics().borrow().clone();
                if let Some(l) = m.current_leader
                    && self.nodes.contains_key(&l)
                {
                    *votes.entry(l).or_default() += 1;
                }
            }
            if let Some((l, n)) = votes.into_iter().max_by_key(|(_, n)| *n) {
                let leader_is_leader =
                    self.nodes[&l].raft().metrics().borrow().state == openraft::ServerState::Leader;
                if n * 2 > self.nodes.len() && leader_is_leader {
                    return l;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) {
        let mut rx = self.nodes[&id].raft().metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let applied = rx.borrow().last_applied.map(|l| l.index).unwrap_or(0);
            if applied >= index {
                return;
            }
            assert!(
                tokio::time::timeout_at(deadline, rx.changed())
                    .await
                    .is_ok(),
                "node {id} did not apply index {index} within {timeout:?} (at {applied})"
            );
        }
    }

    pub fn applied(&self, id: u64) -> u64 {
        self.nodes[&id]
            .raft()
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0)
    }
}

/// Binds `addr` again after its node stopped (the kernel may need a moment
/// to release it).
async fn rebind(addr: &str) -> tokio::net::TcpListener {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "rebind {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

//! A storage node on loopback for tests: its own temp directory, a real
//! server on 127.0.0.1:0, and clients (the thin one from kura-proto, and
//! the raw generated one for malformed requests).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use kura_erasure::{Code, SHARD_HEADER_BYTES, ShardHeader};
use kura_proto::shards_client::{ShardId, ShardsClient};
use kura_proto::v1::internal::shards_client::ShardsClient as RawClient;
use kura_store::{StorageNode, StoreConfig};
use tempfile::TempDir;
use tonic::transport::Channel;

pub struct TestNode {
    /// Removed when the node is dropped.
    _dir: TempDir,
    pub node: Option<StorageNode>,
    pub client: ShardsClient,
    pub config: StoreConfig,
}

impl TestNode {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a node whose config `tweak` may change.
    pub async fn start_with(tweak: impl FnOnce(&mut StoreConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = StoreConfig::new(1, dir.path().join("node"));
        tweak(&mut config);
        let (node, client) = launch(&config).await;
        Self {
            _dir: dir,
            node: Some(node),
            client,
            config,
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    pub fn node(&self) -> &StorageNode {
        self.node.as_ref().expect("node running")
    }

    pub async fn raw(&self) -> RawClient<Channel> {
        RawClient::connect(format!("http://{}", self.node().addr()))
            .await
            .expect("connect")
    }

    /// Stops the node for real and starts it again on the same directory
    /// (on a new port).
    pub async fn restart(&mut self) {
        self.stop().await;
        let (node, client) = launch(&self.config).await;
        self.node = Some(node);
        self.client = client;
    }

    pub async fn stop(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await.expect("shutdown");
        }
    }

    /// Every shard file in the tree (what an operator, or a chaos test,
    /// finds on disk).
    pub fn shard_files(&self) -> Vec<PathBuf> {
        files_under(&self.data_dir().join("shards"))
    }

    pub fn files_in(&self, sub: &str) -> Vec<PathBuf> {
        files_under(&self.data_dir().join(sub))
    }

    /// The file holding shard `id`, found by its name.
    pub fn file_of(&self, id: &ShardId) -> PathBuf {
        let prefix = format!(
            "{}-{}-{}.",
            hex::encode(id.object_key),
            id.segment,
            id.index
        );
        let found: Vec<_> = self
            .shard_files()
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix))
            })
            .collect();
        assert_eq!(found.len(), 1, "files of {id}: {found:?}");
        found.into_iter().next().expect("one file")
    }
}

async fn launch(config: &StoreConfig) -> (StorageNode, ShardsClient) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let node = StorageNode::start(config.clone(), listener)
        .await
        .expect("start storage node");
    let client = ShardsClient::with_timeouts(
        &node.addr().to_string(),
        &kura_auth::Transport::Plaintext,
        Duration::from_secs(5),
        Duration::from_secs(30),
    )
    .expect("client");
    (node, client)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// A valid encoded shard of `payload_len` bytes (a multiple of 64, at
/// least 64: the erasure crate pads payloads to 64 and has no empty
/// segments), with content chosen by `seed`. k = 1 so any payload length
/// is a whole segment; the index may go up to 254.
pub fn shard(key: u8, segment: u32, index: u8, payload_len: u32, seed: u64) -> (ShardId, Bytes) {
    assert!(payload_len >= 64 && payload_len.is_multiple_of(64));
    let mut payload = vec![0u8; payload_len as usize];
    let mut xof = blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .update(&[key, index])
        .update(&segment.to_le_bytes())
        .finalize_xof();
    xof.fill(&mut payload);
    let header = ShardHeader {
        code: Code::ReedSolomonGf8,
        data_shards: 1,
        parity_shards: 254,
        shard_index: index,
        segment_index: segment,
        object_key: object_key(key),
        segment_data_len: payload_len,
        payload_len,
        payload_blake3: *blake3::hash(&payload).as_bytes(),
    };
    let mut bytes = Vec::with_capacity(SHARD_HEADER_BYTES + payload.len());
    bytes.extend_from_slice(&header.to_bytes());
    bytes.extend_from_slice(&payload);
    (ShardId::of(&header), Bytes::from(bytes))
}

pub fn object_key(key: u8) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[0] = key;
    k[31] = 0xEE;
    k
}

/// Polls `check` until it answers `Some`, or panics at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! A dev cluster in a temp dir, a client of its gateway, and synthetic
//! DICOM instances.

use std::path::PathBuf;
use std::time::Duration;

use kura_auth::ClientRole;
use kura_dev::{DevCluster, DevConfig};
use kura_proto::v1::archive_client::ArchiveClient;
use kura_proto::v1::{RetrieveRequest, StatRequest, StoreResponse, retrieve_response};
use tonic::transport::Channel;

pub const TENANT: &str = "e2e";

pub struct Cluster {
    pub dev: DevCluster,
    pub dir: tempfile::TempDir,
}

pub fn config(dir: &tempfile::TempDir) -> DevConfig {
    let mut c = DevConfig::new(dir.path().join("data"));
    c.port = 0;
    c.ops_port = Some(0);
    c
}

impl Cluster {
    pub async fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_with(dir, |_| {}).await
    }

    pub async fn start_with(dir: tempfile::TempDir, tweak: impl FnOnce(&mut DevConfig)) -> Cluster {
        let mut c = config(&dir);
        tweak(&mut c);
        let dev = DevCluster::start(c).await.expect("dev cluster starts");
        Cluster { dev, dir }
    }

    /// A client of tenant [`TENANT`] that may store and read.
    pub async fn client(&self) -> ArchiveClient<Channel> {
        self.client_as(TENANT, &[ClientRole::Reader, ClientRole::Writer])
            .await
    }

    /// A client with a certificate for `roles` in `tenant`.
    pub async fn client_as(&self, tenant: &str, roles: &[ClientRole]) -> ArchiveClient<Channel> {
        ArchiveClient::new(self.channel_as(tenant, roles).await)
            .max_decoding_message_size(8 * 1024 * 1024)
            .max_encoding_message_size(8 * 1024 * 1024)
    }

    /// A channel to the gateway with a certificate for `roles` in `tenant`.
    pub async fn channel_as(&self, tenant: &str, roles: &[ClientRole]) -> Channel {
        let addr = self.dev.gateway_addr().expect("gateway runs");
        self.dev
            .client_transport(tenant, roles)
            .expect("client certificate")
            .endpoint(&addr.to_string())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the gateway")
    }

    /// The identity of the cluster's gateway, for calling voters and
    /// storage nodes directly.
    pub fn node_transport(&self) -> kura_auth::Transport {
        self.dev.node_transport().expect("node transport")
    }

    /// A metadata client as the gateway.
    pub fn meta(&self) -> kura_proto::meta_client::MetaClient {
        kura_proto::meta_client::MetaClient::new(
            self.dev.meta_endpoints().to_vec(),
            self.node_transport(),
        )
    }

    /// A client of storage node `addr` as the gateway.
    pub fn shards(&self, addr: &str) -> kura_proto::shards_client::ShardsClient {
        kura_proto::shards_client::ShardsClient::new(addr, &self.node_transport())
            .expect("shards client")
    }

    /// Every shard (encoded length) held by running storage nodes.
    pub fn shard_count(&self) -> u64 {
        self.dev
            .layout()
            .storage
            .iter()
            .filter_map(|s| self.dev.storage_node(s.id))
            .filter_map(|n| n.store())
            .map(|s| s.status(0).expect("status").shard_count)
            .sum()
    }
}

pub use kura_testkit::store_messages;

pub async fn store(
    client: &mut ArchiveClient<Channel>,
    tenant: &str,
    bytes: &[u8],
) -> Result<StoreResponse, tonic::Status> {
    client
        .store(tokio_stream::iter(store_messages(
            tenant,
            bytes,
            256 * 1024,
        )))
        .await
        .map(tonic::Response::into_inner)
}

pub async fn retrieve(
    client: &mut ArchiveClient<Channel>,
    tenant: &str,
    uid: &str,
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = client
        .retrieve(RetrieveRequest {
            tenant: tenant.into(),
            sop_instance_uid: uid.into(),
        })
        .await?
        .into_inner();
    let first = stream.message().await?.expect("a first message");
    let Some(retrieve_response::Msg::Info(info)) = first.msg else {
        panic!("the first message must carry the info");
    };
    let mut out = Vec::with_capacity(info.size as usize);
    while let Some(m) = stream.message().await? {
        match m.msg {
            Some(retrieve_response::Msg::Chunk(c)) => out.extend_from_slice(&c),
            other => panic!("unexpected message {other:?}"),
        }
    }
    assert_eq!(
        out.len() as u64,
        info.size,
        "retrieved size matches the info"
    );
    Ok(out)
}

pub async fn stat(
    client: &mut ArchiveClient<Channel>,
    tenant: &str,
    uid: &str,
) -> Result<kura_proto::v1::InstanceInfo, tonic::Status> {
    client
        .stat(StatRequest {
            tenant: tenant.into(),
            sop_instance_uid: uid.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Polls `check` until it holds or `deadline` passes.
pub async fn eventually(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + deadline;
    while !check() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn corpus_dir() -> PathBuf {
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../../../shared/corpus")
}

/// (file name, accept?, SOP Instance UID) of every corpus file.
pub fn corpus() -> Vec<(String, bool, String)> {
    let manifest =
        std::fs::read_to_string(corpus_dir().join("MANIFEST.tsv")).expect("corpus MANIFEST.tsv");
    manifest
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (
                cols[0].to_string(),
                cols[1] == "accept",
                cols.get(2).copied().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// The manifest of `uid` in [`TENANT`], as the leader has it.
pub async fn manifest(
    meta: &kura_proto::meta_client::MetaClient,
    uid: &str,
) -> kura_placement::Manifest {
    use kura_proto::meta::{Consistency, Query, QueryResult};
    match meta
        .query(&Query::GetManifest {
            tenant: TENANT.into(),
            sop_instance_uid: uid.into(),
            consistency: Consistency::Linearizable,
        })
        .await
    {
        Ok(QueryResult::Manifest(Some(m))) => *m,
        other => panic!("manifest of {uid}: {other:?}"),
    }
}

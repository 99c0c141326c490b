//! Usage reports reach a real metadata cluster (one in-process voter).

use std::collections::BTreeMap;
use std::time::Duration;

use kura_erasure::EcParams;
use kura_meta::service::ServiceTimeouts;
use kura_meta::{MetaConfig, MetaNode, RaftTimings};
use kura_placement::{ClusterMap, NodeInfo, NodeState, Site};
use kura_proto::meta::{AdminRequest, Command, Consistency, Query, QueryResult, Voter};
use kura_proto::meta_client::{MetaClient, Retry};

use crate::harness::{TestNode, eventually, shard};

const STORAGE_NODE_ID: u64 = 7;

async fn one_voter_cluster(dir: &std::path::Path) -> (MetaNode, MetaClient) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let config = MetaConfig {
        id: 1,
        data_dir: dir.to_path_buf(),
        advertise_addr: addr.clone(),
        timings: RaftTimings {
            heartbeat_ms: 50,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            ..RaftTimings::default()
        },
        timeouts: ServiceTimeouts::default(),
        transport: kura_auth::Transport::Plaintext,
    };
    let node = MetaNode::start(config, listener).await.expect("meta node");
    let client = MetaClient::with_timeouts(
        vec![addr.clone()],
        kura_auth::Transport::Plaintext,
        Duration::from_secs(5),
        Duration::from_secs(30),
    );
    client
        .admin_at(
            &addr,
            &AdminRequest::Bootstrap {
                voters: vec![Voter {
                    id: 1,
                    addr: addr.clone(),
                }],
            },
        )
        .await
        .expect("bootstrap");
    node.wait_for_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    (node, client)
}

fn map_with(storage_addr: &str) -> ClusterMap {
    let node = NodeInfo {
        id: STORAGE_NODE_ID,
        name: "store-a1".into(),
        site: "a".into(),
        addr: storage_addr.into(),
        state: NodeState::Up,
        capacity_bytes: 0,
        used_bytes: 0,
    };
    ClusterMap {
        epoch: 0,
        sites: vec![Site { name: "a".into() }],
        nodes: BTreeMap::from([(STORAGE_NODE_ID, node)]),
    }
}

async fn reported(client: &MetaClient) -> Option<(u64, u64)> {
    match client
        .query(&Query::GetClusterMap {
            consistency: Consistency::Linearizable,
        })
        .await
    {
        Ok(QueryResult::ClusterMap { map: Some(map), .. }) => map
            .node(STORAGE_NODE_ID)
            .map(|n| (n.used_bytes, n.capacity_bytes)),
        _ => None,
    }
}

#[tokio::test]
async fn usage_reaches_the_cluster_map() {
    let meta_dir = tempfile::tempdir().expect("tempdir");
    let (meta, client) = one_voter_cluster(meta_dir.path()).await;
    let endpoints = client.endpoints().to_vec();

    // The node starts before the cluster knows it: it keeps serving and
    // keeps trying.
    let quota = 1 << 30;
    let mut t = TestNode::start_with(|c| {
        c.node_id = STORAGE_NODE_ID;
        c.capacity_bytes = Some(quota);
        c.meta_endpoints = endpoints;
        c.report_interval = Duration::from_millis(100);
    })
    .await;
    let (_, bytes) = shard(40, 0, 0, 256 * 1024, 0);
    t.client.put_shard(bytes.clone(), false).await.expect("put");

    let storage_addr = t.node().addr().to_string();
    let r = client
        .propose(
            &Command::InitCluster {
                map: map_with(&storage_addr),
                profile: EcParams::default(),
            },
            Retry::Once,
        )
        .await
        .expect("propose");
    assert!(r.is_ok(), "{r:?}");

    let (used, capacity) = eventually("usage in the map", Duration::from_secs(30), || {
        let client = client.clone();
        async move { reported(&client).await.filter(|(used, _)| *used > 0) }
    })
    .await;
    assert_eq!(used, bytes.len() as u64);
    assert_eq!(capacity, quota);

    // Later changes are reported too.
    let (_, more) = shard(40, 0, 1, 64 * 1024, 0);
    t.client.put_shard(more.clone(), false).await.expect("put");
    let want = (bytes.len() + more.len()) as u64;
    eventually("updated usage in the map", Duration::from_secs(30), || {
        let client = client.clone();
        async move { reported(&client).await.filter(|(used, _)| *used == want) }
    })
    .await;

    t.stop().await;
    meta.shutdown().await.expect("meta shutdown");
}

#[tokio::test]
async fn an_unreachable_cluster_does_not_stop_the_node() {
    // Nothing listens there.
    let unused = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = unused.local_addr().expect("addr").to_string();
    drop(unused);
    let mut t = TestNode::start_with(|c| {
        c.meta_endpoints = vec![addr];
        c.report_interval = Duration::from_millis(20);
    })
    .await;
    let (id, bytes) = shard(41, 0, 0, 4096, 0);
    t.client.put_shard(bytes.clone(), false).await.expect("put");
    assert_eq!(t.client.get_shard(&id, None).await.expect("get").1, bytes);
    // Shutdown does not wait for the reporter's retries.
    tokio::time::timeout(Duration::from_secs(10), t.stop())
        .await
        .expect("prompt shutdown");
}

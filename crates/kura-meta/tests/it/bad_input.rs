//! Bad input gets a clear error and changes nothing.

use std::collections::BTreeMap;

use kura_placement::{ClusterMap, NodeInfo, NodeState, Site};
use kura_proto::meta::{
    AdminRequest, AdminResponse, Applied, COMMAND_BYTES_MAX, Command, Consistency, Query,
    QueryResult, Rejected, Voter,
};
use kura_proto::meta_client::{MetaClient, MetaClientError, Retry};
use kura_proto::v1::internal::MetaPayload;
use kura_proto::v1::internal::meta_client::MetaClient as RawClient;

use crate::fixtures::{ec, manifest, uid};
use crate::harness::{TestCluster, fast_timings};

async fn counts(client: &MetaClient) -> (u64, u64) {
    match client
        .query(&Query::CountManifests {
            consistency: Consistency::Linearizable,
        })
        .await
        .expect("count")
    {
        QueryResult::ManifestCounts {
            total,
            under_protected,
        } => (total, under_protected),
        other => panic!("unexpected {other:?}"),
    }
}

async fn map(client: &MetaClient) -> Option<ClusterMap> {
    match client
        .query(&Query::GetClusterMap {
            consistency: Consistency::Linearizable,
        })
        .await
        .expect("map")
    {
        QueryResult::ClusterMap { map, .. } => map,
        other => panic!("unexpected {other:?}"),
    }
}

fn small_map() -> ClusterMap {
    let mut nodes = BTreeMap::new();
    for (id, site) in [(1u64, "a"), (2, "b"), (3, "c")] {
        nodes.insert(
            id,
            NodeInfo {
                id,
                name: format!("{site}1"),
                site: site.into(),
                addr: format!("127.0.0.1:{}", 9000 + id),
                state: NodeState::Up,
                capacity_bytes: 1 << 30,
                used_bytes: 0,
            },
        );
    }
    ClusterMap {
        epoch: 1,
        sites: ["a", "b", "c"].map(|s| Site { name: s.into() }).to_vec(),
        nodes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_oversized_and_invalid_commands_change_nothing() {
    let c = TestCluster::start(3, fast_timings()).await;
    let client = c.client();
    client
        .propose(
            &Command::PutManifest(manifest(&uid(1), "1.2.3.1", 1)),
            Retry::Idempotent,
        )
        .await
        .expect("put")
        .expect("applied");
    let before = counts(&client).await;
    let leader = c.leader(std::time::Duration::from_secs(20)).await;
    let mut raw = RawClient::connect(format!("http://{}", c.addrs[&leader]))
        .await
        .expect("connect")
        .max_encoding_message_size(64 << 20);

    // Garbage bytes.
    let err = raw
        .propose(MetaPayload {
            bincode: vec![0xde, 0xad, 0xbe, 0xef].into(),
        })
        .await
        .expect_err("garbage must be refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("malformed"), "{}", err.message());

    // Oversized.
    let err = raw
        .propose(MetaPayload {
            bincode: vec![0u8; COMMAND_BYTES_MAX + 1].into(),
        })
        .await
        .expect_err("oversized must be refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("exceeds"), "{}", err.message());

    // Structurally invalid manifest (shards missing).
    let mut bad = manifest(&uid(2), "1.2.3.1", 2);
    bad.segments[0].shards.pop();
    let err = client
        .propose(&Command::PutManifest(bad), Retry::Once)
        .await
        .expect_err("invalid manifest must be refused");
    assert!(
        matches!(err, MetaClientError::InvalidArgument(_)),
        "{err:?}"
    );

    // A node command before the map exists, then on an unknown node.
    let r = client
        .propose(
            &Command::SetNodeState {
                id: 1,
                state: NodeState::Down,
            },
            Retry::Once,
        )
        .await
        .expect("propose");
    assert!(matches!(r, Err(Rejected::Invalid(_))), "{r:?}");
    let r = client
        .propose(
            &Command::InitCluster {
                map: small_map(),
                profile: ec(),
            },
            Retry::Once,
        )
        .await
        .expect("init");
    assert_eq!(r, Ok(Applied::MapChanged { epoch: 1 }));
    let map_before = map(&client).await;
    let r = client
        .propose(
            &Command::SetNodeState {
                id: 99,
                state: NodeState::Down,
            },
            Retry::Once,
        )
        .await
        .expect("propose");
    assert!(matches!(r, Err(Rejected::NotFound(_))), "{r:?}");
    // A node in a site the map does not have.
    let r = client
        .propose(
            &Command::UpsertNode(NodeInfo {
                id: 7,
                name: "z1".into(),
                site: "z".into(),
                addr: "127.0.0.1:1".into(),
                state: NodeState::Up,
                capacity_bytes: 1,
                used_bytes: 0,
            }),
            Retry::Once,
        )
        .await
        .expect("propose");
    assert!(matches!(r, Err(Rejected::Invalid(_))), "{r:?}");
    // A second InitCluster.
    let r = client
        .propose(
            &Command::InitCluster {
                map: small_map(),
                profile: ec(),
            },
            Retry::Once,
        )
        .await
        .expect("init");
    assert!(matches!(r, Err(Rejected::Invalid(_))), "{r:?}");
    assert_eq!(map(&client).await, map_before, "map must be unchanged");
    assert_eq!(counts(&client).await, before, "manifests must be unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn second_bootstrap_is_refused_and_harmless() {
    let c = TestCluster::start(3, fast_timings()).await;
    let client = c.client();
    client
        .propose(
            &Command::PutManifest(manifest(&uid(1), "1.2.3.1", 1)),
            Retry::Idempotent,
        )
        .await
        .expect("put")
        .expect("applied");
    let before = counts(&client).await;
    for (id, addr) in &c.addrs {
        let err = client
            .admin_at(
                addr,
                &AdminRequest::Bootstrap {
                    voters: vec![Voter {
                        id: *id,
                        addr: addr.clone(),
                    }],
                },
            )
            .await
            .expect_err("second bootstrap must be refused");
        assert!(
            matches!(err, MetaClientError::FailedPrecondition(ref m) if m.contains("bootstrap")),
            "{err:?}"
        );
    }
    let leader = c.leader(std::time::Duration::from_secs(20)).await;
    match client
        .admin_at(&c.addrs[&leader], &AdminRequest::Status)
        .await
        .expect("status")
    {
        AdminResponse::Status(s) => assert_eq!(s.voters.len(), 3),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(counts(&client).await, before);
    // Promoting a node that never joined is refused with a clear error.
    let err = client
        .admin(&AdminRequest::ChangeVoters {
            ids: vec![1, 2, 3, 42],
        })
        .await
        .expect_err("unknown node");
    assert!(format!("{err}").contains("42"), "{err}");
}

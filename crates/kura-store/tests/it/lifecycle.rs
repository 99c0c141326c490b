//! Restart, crash leftovers, shutdown.

use std::sync::Arc;

use kura_proto::shards_client::ShardState;
use kura_proto::v1::internal as pb;
use kura_proto::v1::internal::shards_server::Shards;
use kura_store::{ShardStore, ShardsService};

use crate::harness::{TestNode, shard};

#[tokio::test]
async fn shards_survive_a_restart() {
    let mut t = TestNode::start().await;
    let shards: Vec<_> = (0..5u8).map(|i| shard(30, 1, i, 64 * 1024, 9)).collect();
    for (_, bytes) in &shards {
        t.client.put_shard(bytes.clone(), false).await.expect("put");
    }
    let before = t.client.node_status().await.expect("status");

    // A crash in the middle of a put leaves a temp file behind.
    std::fs::write(
        t.data_dir().join("tmp").join("00000000000000ff.tmp"),
        b"half",
    )
    .expect("leftover");
    // The old node must have released its database for this to open it.
    t.restart().await;

    assert!(
        t.files_in("tmp").is_empty(),
        "leftover temp file removed at start"
    );
    let after = t.client.node_status().await.expect("status");
    // Capacity follows the disk's free space, which other processes move.
    assert_eq!(
        (after.used_bytes, after.shard_count, after.corrupt_count),
        (before.used_bytes, before.shard_count, before.corrupt_count)
    );
    for (id, bytes) in &shards {
        let (info, got) = t
            .client
            .get_shard(id, None)
            .await
            .expect("get after restart");
        assert_eq!(&got, bytes);
        assert_eq!(info.state, ShardState::Ok);
    }
    // New puts after a restart get fresh files, not old generations.
    let (id, bytes) = shard(30, 2, 0, 4096, 9);
    t.client
        .put_shard(bytes.clone(), false)
        .await
        .expect("put after restart");
    assert_eq!(t.client.get_shard(&id, None).await.expect("get").1, bytes);
    assert_eq!(t.shard_files().len(), 6);
}

#[tokio::test]
async fn quarantine_survives_a_restart() {
    let mut t = TestNode::start().await;
    let (id, bytes) = shard(31, 0, 0, 4096, 0);
    t.client.put_shard(bytes, false).await.expect("put");
    std::fs::write(t.file_of(&id), b"garbage").expect("damage");
    t.client.get_shard(&id, None).await.expect_err("corrupt");
    t.restart().await;
    assert_eq!(
        t.client.node_status().await.expect("status").corrupt_count,
        1
    );
    let err = t
        .client
        .get_shard(&id, None)
        .await
        .expect_err("still corrupt");
    assert_eq!(err.code(), Some(tonic::Code::DataLoss));
}

#[tokio::test]
async fn a_stopped_node_stops_serving() {
    let mut t = TestNode::start().await;
    let (id, bytes) = shard(32, 0, 0, 4096, 0);
    t.client.put_shard(bytes, false).await.expect("put");
    t.stop().await;
    let err = t.client.get_shard(&id, None).await.expect_err("stopped");
    assert!(
        matches!(
            err.code(),
            Some(tonic::Code::Unavailable | tonic::Code::Unknown) | None
        ),
        "{err}"
    );
    // And the directory is free: a store opens on it right away.
    let store = ShardStore::open(t.data_dir(), None).expect("reopen");
    assert_eq!(store.stat(&id).expect("stat").state, ShardState::Ok);
}

#[tokio::test]
async fn a_closing_service_answers_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(ShardStore::open(dir.path(), None).expect("open"));
    let service = ShardsService::new(4, store, 0, kura_auth::Transport::Plaintext);
    let status = service
        .node_status(tonic::Request::new(pb::NodeStatusRequest {}))
        .await
        .expect("open service answers");
    assert_eq!(status.get_ref().node_id, 4);
    service.close();
    let err = service
        .node_status(tonic::Request::new(pb::NodeStatusRequest {}))
        .await
        .expect_err("closing");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let (id, _) = shard(33, 0, 0, 64, 0);
    let err = service
        .get_shard(tonic::Request::new(pb::GetShardRequest {
            id: Some(id.to_proto()),
            offset: None,
            length: None,
        }))
        .await
        .err()
        .expect("closing");
    assert_eq!(err.code(), tonic::Code::Unavailable);
}

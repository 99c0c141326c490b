//! Failure detection: a stopped storage node is marked down through Raft,
//! reads and writes avoid it at once, and it comes back up when it reports
//! again.

use std::time::Duration;

use kura_dicom::synthetic::{Synthetic, instance as synthetic, uid};
use kura_placement::NodeState;
use kura_proto::meta::{Consistency, Query, QueryResult};
use kura_proto::meta_client::MetaClient;

use crate::harness::{Cluster, TENANT, manifest, retrieve, store};

async fn state_of(meta: &MetaClient, id: u64) -> Option<NodeState> {
    match meta
        .query(&Query::GetClusterMap {
            consistency: Consistency::Linearizable,
        })
        .await
    {
        Ok(QueryResult::ClusterMap { map: Some(m), .. }) => m.node(id).map(|n| n.state),
        _ => None,
    }
}

async fn wait_state(meta: &MetaClient, id: u64, want: NodeState, within: Duration) {
    let end = tokio::time::Instant::now() + within;
    loop {
        let now = state_of(meta, id).await;
        if now == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "node {id} is {now:?}, not {want:?}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_node_goes_down_then_lost_and_a_returning_one_up() {
    let dir = tempfile::tempdir().expect("dir");
    let mut c = Cluster::start_with(dir, |cfg| {
        cfg.report_interval = Duration::from_millis(200);
        cfg.meta_timeouts.node_down_after = Duration::from_millis(1500);
        cfg.meta_timeouts.node_lost_after = Duration::from_secs(6);
    })
    .await;
    let meta = c.meta();
    let mut client = c.client().await;
    // Every node reports: nobody goes down while all run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in 1..=9 {
        assert_eq!(state_of(&meta, id).await, Some(NodeState::Up), "node {id}");
    }

    c.dev.stop_storage_node(4).await.expect("stop");
    wait_state(&meta, 4, NodeState::Down, Duration::from_secs(10)).await;
    // A write now places nothing on node 4 and says it is under-protected.
    let s = Synthetic {
        study: uid("90", 1),
        series: uid("91", 1),
        sop: uid("92", 1),
    };
    let bytes = synthetic(&s, 300 * 1024, 4);
    // The gateway's cached map may be up to 2 s old.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let info = store(&mut client, TENANT, &bytes)
        .await
        .expect("store")
        .info
        .expect("info");
    assert_eq!(
        info.protection,
        kura_proto::v1::Protection::UnderProtected as i32
    );
    assert!(retrieve(&mut client, TENANT, &s.sop).await.expect("read") == bytes);

    // Back before it is lost: up again.
    c.dev.start_storage_node(4).await.expect("start");
    wait_state(&meta, 4, NodeState::Up, Duration::from_secs(10)).await;

    // Silent past the lost timeout: lost, and it stays lost when it returns
    // (its shards may have been rebuilt elsewhere: an operator decides).
    c.dev.stop_storage_node(4).await.expect("stop");
    wait_state(&meta, 4, NodeState::Lost, Duration::from_secs(20)).await;
    c.dev.start_storage_node(4).await.expect("start");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(state_of(&meta, 4).await, Some(NodeState::Lost));
    c.dev.shutdown().await;
}

/// A stopped node the failure detector has not marked down yet costs no
/// protection: the shard meant for it goes to another node at once (and
/// the node is left out of the next stores' placement), so every store
/// places all its shards, none on the stopped node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_shard_write_goes_to_another_node() {
    let dir = tempfile::tempdir().expect("dir");
    let mut c = Cluster::start_with(dir, |cfg| {
        // 12 nodes: with one stopped, 11 remain for 9 shards.
        cfg.nodes_per_site = 4;
        // The detector stays out of it for the whole test.
        cfg.meta_timeouts.node_down_after = Duration::from_secs(120);
        cfg.meta_timeouts.node_lost_after = Duration::from_secs(600);
    })
    .await;
    let meta = c.meta();
    let mut client = c.client().await;
    c.dev.stop_storage_node(5).await.expect("stop");
    for n in 0..6u64 {
        let s = Synthetic {
            study: uid("65", 1),
            series: uid("65", 2),
            sop: uid("65", 100 + n),
        };
        let bytes = synthetic(&s, 200 * 1024, n);
        store(&mut client, TENANT, &bytes).await.expect("store");
        let m = manifest(&meta, &s.sop).await;
        let holders: Vec<_> = m.segments[0].shards.iter().map(|s| s.node).collect();
        assert!(
            holders.iter().all(|h| h.is_some_and(|id| id != 5)),
            "{}: holders {holders:?}",
            s.sop
        );
        assert_eq!(m.protection, kura_placement::Protection::Full, "{}", s.sop);
        let got = retrieve(&mut client, TENANT, &s.sop).await.expect("read");
        assert!(got == bytes);
    }
    assert_eq!(
        state_of(&meta, 5).await,
        Some(NodeState::Up),
        "the detector has not marked it down"
    );
    c.dev.shutdown().await;
}

//! The Shards service doing its job: put, get (whole and ranges), stat,
//! list, delete, idempotence, conflicts, overwrite, concurrency.

use std::collections::BTreeSet;

use kura_proto::shards_client::{CHUNK_BYTES_MAX, ShardState};

use crate::harness::{TestNode, shard};

#[tokio::test]
async fn put_then_get_round_trips_every_size() {
    let t = TestNode::start().await;
    // Smallest possible shard, small, exactly one chunk of payload, and one
    // spanning several chunks (not a multiple of the chunk size).
    let sizes = [64u32, 4096, 1 << 20, (5 << 19) + 64];
    let mut total = 0u64;
    for (i, size) in sizes.into_iter().enumerate() {
        let (id, bytes) = shard(1, i as u32, 0, size, 7);
        let put = t.client.put_shard(bytes.clone(), false).await.expect("put");
        assert!(!put.already_present);
        assert_eq!(put.info.id, id);
        assert_eq!(put.info.length, bytes.len() as u64);
        assert_eq!(put.info.state, ShardState::Ok);
        let (info, got) = t.client.get_shard(&id, None).await.expect("get");
        assert_eq!(info, put.info);
        assert_eq!(got, bytes, "size {size}");
        assert_eq!(t.client.stat_shard(&id).await.expect("stat"), put.info);
        total += bytes.len() as u64;
    }
    let status = t.client.node_status().await.expect("status");
    assert_eq!(status.node_id, 1);
    assert_eq!(status.shard_count, sizes.len() as u64);
    assert_eq!(status.used_bytes, total);
    assert_eq!(status.corrupt_count, 0);
    assert!(status.capacity_bytes >= status.used_bytes);
    assert!(t.files_in("tmp").is_empty(), "no temp files left");
}

#[tokio::test]
async fn range_reads() {
    let t = TestNode::start().await;
    let (id, bytes) = shard(2, 0, 3, (3 << 20) - 64, 1);
    t.client.put_shard(bytes.clone(), false).await.expect("put");
    let len = bytes.len() as u64;
    let chunk = CHUNK_BYTES_MAX as u64;
    for range in [
        0..len,
        0..1,
        5..200,
        chunk - 10..chunk + 10,
        chunk..2 * chunk + 1,
        len - 1..len,
        len..len,
    ] {
        let (_, got) = t
            .client
            .get_shard(&id, Some(range.clone()))
            .await
            .expect("range");
        assert_eq!(
            got,
            bytes.slice(range.start as usize..range.end as usize),
            "{range:?}"
        );
    }
    // A range running past the end is cut at the end.
    let (_, got) = t
        .client
        .get_shard(&id, Some(len - 10..len + 1000))
        .await
        .expect("range past end");
    assert_eq!(got, bytes.slice(bytes.len() - 10..));
    // An offset past the end is refused.
    let err = t
        .client
        .get_shard(&id, Some(len + 1..len + 2))
        .await
        .expect_err("offset past the end");
    assert_eq!(err.code(), Some(tonic::Code::OutOfRange), "{err}");
}

#[tokio::test]
async fn absent_shards_are_not_found() {
    let t = TestNode::start().await;
    let (id, _) = shard(3, 0, 0, 64, 0);
    let err = t.client.get_shard(&id, None).await.expect_err("get");
    assert_eq!(err.code(), Some(tonic::Code::NotFound), "{err}");
    let err = t.client.stat_shard(&id).await.expect_err("stat");
    assert_eq!(err.code(), Some(tonic::Code::NotFound), "{err}");
}

#[tokio::test]
async fn list_pages_in_id_order() {
    let t = TestNode::start().await;
    let mut ids = BTreeSet::new();
    // Keys, segments and indices all vary, and are put out of order.
    for n in (0..25u32).rev() {
        let (id, bytes) = shard((n % 3) as u8, n / 3, (n % 5) as u8, 128, u64::from(n));
        t.client.put_shard(bytes, false).await.expect("put");
        ids.insert(id);
    }
    let mut listed = Vec::new();
    let mut after = None;
    let mut pages = Vec::new();
    loop {
        let page = t
            .client
            .list_shards(after.as_ref(), 10)
            .await
            .expect("list");
        pages.push(page.len());
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        let short = page.len() < 10;
        listed.extend(page);
        if short {
            break;
        }
    }
    assert_eq!(pages, vec![10, 10, 5]);
    let listed_ids: Vec<_> = listed.iter().map(|i| i.id).collect();
    assert_eq!(listed_ids, ids.iter().copied().collect::<Vec<_>>());
    assert!(
        listed
            .iter()
            .all(|i| i.state == ShardState::Ok && i.length == 98 + 128)
    );
    // A limit of 0 means the maximum.
    assert_eq!(t.client.list_shards(None, 0).await.expect("list").len(), 25);
}

#[tokio::test]
async fn delete_is_idempotent() {
    let t = TestNode::start().await;
    let (id, bytes) = shard(4, 0, 0, 4096, 0);
    let (other, other_bytes) = shard(4, 0, 1, 4096, 0);
    t.client.put_shard(bytes, false).await.expect("put");
    t.client
        .put_shard(other_bytes, false)
        .await
        .expect("put other");
    assert!(t.client.delete_shard(&id).await.expect("delete"));
    let err = t.client.get_shard(&id, None).await.expect_err("deleted");
    assert_eq!(err.code(), Some(tonic::Code::NotFound));
    assert!(!t.client.delete_shard(&id).await.expect("delete again"));
    let status = t.client.node_status().await.expect("status");
    assert_eq!(status.shard_count, 1);
    assert_eq!(status.used_bytes, 98 + 4096);
    assert_eq!(t.shard_files().len(), 1, "the deleted shard's file is gone");
    t.client
        .get_shard(&other, None)
        .await
        .expect("the other shard stays");
}

#[tokio::test]
async fn idempotent_put_conflict_and_overwrite() {
    let t = TestNode::start().await;
    let (id, first) = shard(5, 1, 2, 8192, 1);
    let (same_id, second) = shard(5, 1, 2, 8192, 2);
    assert_eq!(id, same_id);
    assert_ne!(first, second);

    t.client.put_shard(first.clone(), false).await.expect("put");
    let again = t
        .client
        .put_shard(first.clone(), false)
        .await
        .expect("re-put");
    assert!(again.already_present);

    let err = t
        .client
        .put_shard(second.clone(), false)
        .await
        .expect_err("different bytes");
    assert_eq!(err.code(), Some(tonic::Code::AlreadyExists), "{err}");
    let (_, got) = t.client.get_shard(&id, None).await.expect("get");
    assert_eq!(got, first, "the stored shard is untouched");

    let replaced = t
        .client
        .put_shard(second.clone(), true)
        .await
        .expect("overwrite");
    assert!(!replaced.already_present);
    let (_, got) = t.client.get_shard(&id, None).await.expect("get");
    assert_eq!(got, second);
    let status = t.client.node_status().await.expect("status");
    assert_eq!(status.shard_count, 1);
    assert_eq!(status.used_bytes, second.len() as u64);
    assert_eq!(t.shard_files().len(), 1, "the replaced file is gone");
}

#[tokio::test]
async fn concurrent_puts_of_the_same_and_different_shards() {
    let t = TestNode::start().await;
    let shards: Vec<_> = (0..8u8).map(|i| shard(6, 0, i, 64 * 1024, 3)).collect();
    let mut tasks = Vec::new();
    for round in 0..3 {
        for (_, bytes) in &shards {
            let client = t.client.clone();
            let bytes = bytes.clone();
            tasks.push(tokio::spawn(async move {
                (round, client.put_shard(bytes, false).await)
            }));
        }
    }
    let mut fresh = 0;
    for task in tasks {
        let (_, result) = task.await.expect("task");
        if !result.expect("put").already_present {
            fresh += 1;
        }
    }
    assert_eq!(fresh, shards.len(), "each shard written exactly once");
    for (id, bytes) in &shards {
        let (_, got) = t.client.get_shard(id, None).await.expect("get");
        assert_eq!(&got, bytes);
    }
    assert_eq!(t.shard_files().len(), shards.len());
}

#[tokio::test]
async fn a_put_again_restarts_a_copys_age_for_reclaim() {
    let t = TestNode::start().await;
    let store = t.node().store().expect("a store").clone();
    let (id, bytes) = shard(6, 0, 3, 4096, 1);
    t.client.put_shard(bytes.clone(), false).await.expect("put");
    let first = t
        .client
        .stat_shard(&id)
        .await
        .expect("stat")
        .stored_at_unix_ms;
    // Reclaim decided on a cutoff before the copy was stored: kept.
    assert!(
        !store
            .delete_if_stored_before(&id, first)
            .expect("conditional delete")
    );
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let again = t.client.put_shard(bytes, false).await.expect("re-put");
    assert!(again.already_present);
    let touched = t
        .client
        .stat_shard(&id)
        .await
        .expect("stat")
        .stored_at_unix_ms;
    assert!(touched > first, "{touched} > {first}");
    // A cutoff between the two puts no longer reaches the copy ...
    assert!(
        !store
            .delete_if_stored_before(&id, touched)
            .expect("conditional delete")
    );
    t.client.get_shard(&id, None).await.expect("still there");
    // ... one after the last put does.
    assert!(
        store
            .delete_if_stored_before(&id, touched + 1)
            .expect("conditional delete")
    );
    let err = t.client.get_shard(&id, None).await.expect_err("deleted");
    assert_eq!(err.code(), Some(tonic::Code::NotFound));
    let status = t.client.node_status().await.expect("status");
    assert_eq!((status.shard_count, status.used_bytes), (0, 0));
}

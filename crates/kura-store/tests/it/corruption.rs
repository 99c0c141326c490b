//! Damage on disk is found on read, reported as DATA_LOSS, quarantined,
//! counted, never served, and repaired by a put of the right bytes.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use kura_erasure::SHARD_HEADER_BYTES;
use kura_proto::shards_client::ShardState;

use crate::harness::{TestNode, shard};

fn flip_byte(path: &Path, offset: u64) {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open shard file");
    let mut byte = [0u8; 1];
    file.seek(SeekFrom::Start(offset)).expect("seek");
    std::io::Read::read_exact(&mut file, &mut byte).expect("read");
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.write_all(&[byte[0] ^ 0x40]).expect("write");
    file.sync_all().expect("sync");
}

#[tokio::test]
async fn flipped_payload_byte_is_data_loss_and_quarantined() {
    let t = TestNode::start().await;
    let (id, bytes) = shard(10, 3, 1, 256 * 1024, 0);
    let (healthy, healthy_bytes) = shard(10, 3, 2, 4096, 0);
    t.client.put_shard(bytes.clone(), false).await.expect("put");
    t.client
        .put_shard(healthy_bytes.clone(), false)
        .await
        .expect("put");

    let file = t.file_of(&id);
    flip_byte(&file, (SHARD_HEADER_BYTES + 12345) as u64);

    let err = t.client.get_shard(&id, None).await.expect_err("corrupt");
    assert_eq!(err.code(), Some(tonic::Code::DataLoss), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&id.to_string()), "names the shard: {msg}");
    assert!(msg.contains("blake3"), "says what mismatched: {msg}");

    // A range that does not even touch the damaged byte is refused too:
    // the whole shard is verified before any byte is sent.
    let err = t
        .client
        .get_shard(&id, Some(0..10))
        .await
        .expect_err("still corrupt");
    assert_eq!(err.code(), Some(tonic::Code::DataLoss), "{err}");
    assert!(err.to_string().contains("quarantined"), "{err}");

    let info = t.client.stat_shard(&id).await.expect("stat");
    assert_eq!(info.state, ShardState::Corrupt);
    let status = t.client.node_status().await.expect("status");
    assert_eq!(status.corrupt_count, 1);
    assert_eq!(status.shard_count, 2);
    let listed = t.client.list_shards(None, 0).await.expect("list");
    assert_eq!(
        listed.iter().map(|i| (i.id, i.state)).collect::<Vec<_>>(),
        vec![(id, ShardState::Corrupt), (healthy, ShardState::Ok)]
    );
    assert!(!file.exists(), "moved out of the tree");
    assert_eq!(
        t.files_in("quarantine").len(),
        1,
        "kept aside for inspection"
    );

    // The healthy neighbour is unaffected.
    let (_, got) = t.client.get_shard(&healthy, None).await.expect("healthy");
    assert_eq!(got, healthy_bytes);

    // Repair: the right bytes put again (no overwrite needed: they are
    // what the index recorded) bring the shard back.
    let repaired = t
        .client
        .put_shard(bytes.clone(), false)
        .await
        .expect("repair");
    assert!(!repaired.already_present);
    let (_, got) = t.client.get_shard(&id, None).await.expect("repaired");
    assert_eq!(got, bytes);
    let status = t.client.node_status().await.expect("status");
    assert_eq!(status.corrupt_count, 0);
    assert_eq!(
        status.used_bytes,
        (bytes.len() + healthy_bytes.len()) as u64
    );
    assert!(t.files_in("quarantine").is_empty());
}

#[tokio::test]
async fn damaged_header_truncation_and_missing_file_are_data_loss() {
    let t = TestNode::start().await;
    let (header_hit, a) = shard(11, 0, 0, 4096, 0);
    let (truncated, b) = shard(11, 0, 1, 4096, 0);
    let (missing, c) = shard(11, 0, 2, 4096, 0);
    for bytes in [a, b, c] {
        t.client.put_shard(bytes, false).await.expect("put");
    }
    flip_byte(&t.file_of(&header_hit), 20);
    let file = t.file_of(&truncated);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .expect("open")
        .set_len(1000)
        .expect("truncate");
    std::fs::remove_file(t.file_of(&missing)).expect("remove");

    for (id, expect) in [
        (header_hit, "header checksum"),
        (truncated, "1000 bytes"),
        (missing, "missing"),
    ] {
        let err = t.client.get_shard(&id, None).await.expect_err("corrupt");
        assert_eq!(err.code(), Some(tonic::Code::DataLoss), "{err}");
        assert!(err.to_string().contains(expect), "{id}: {err}");
    }
    assert_eq!(
        t.client.node_status().await.expect("status").corrupt_count,
        3
    );
}

#[tokio::test]
async fn a_shard_swapped_for_another_valid_shard_is_caught() {
    let t = TestNode::start().await;
    let (id, a) = shard(12, 0, 0, 4096, 1);
    let (other, b) = shard(12, 0, 1, 4096, 1);
    t.client.put_shard(a, false).await.expect("put");
    t.client.put_shard(b, false).await.expect("put");
    // A valid shard, but not the one the index names.
    std::fs::copy(t.file_of(&other), t.file_of(&id)).expect("copy");
    let err = t.client.get_shard(&id, None).await.expect_err("swapped");
    assert_eq!(err.code(), Some(tonic::Code::DataLoss), "{err}");
    assert!(err.to_string().contains(&other.to_string()), "{err}");
}

#[tokio::test]
async fn idempotent_put_finds_a_rotten_copy_and_replaces_it() {
    let t = TestNode::start().await;
    let (id, bytes) = shard(13, 0, 0, 64 * 1024, 0);
    t.client.put_shard(bytes.clone(), false).await.expect("put");
    flip_byte(&t.file_of(&id), 500);
    // The retry of the same put must not be acknowledged on the strength
    // of a damaged copy.
    let again = t
        .client
        .put_shard(bytes.clone(), false)
        .await
        .expect("re-put");
    assert!(!again.already_present, "the rotten copy was replaced");
    let (_, got) = t.client.get_shard(&id, None).await.expect("get");
    assert_eq!(got, bytes);
    let status = t.client.node_status().await.expect("status");
    assert_eq!(status.corrupt_count, 0);
    assert_eq!(status.shard_count, 1);
}

#[tokio::test]
async fn the_scrubber_finds_damage_before_any_read() {
    use std::sync::atomic::Ordering;
    let t = crate::harness::TestNode::start_with(|c| {
        c.scrub_bytes_per_sec = 200_000_000;
        c.scrub_pass_interval = std::time::Duration::from_millis(100);
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..6u8 {
        let (id, bytes) = shard(20, 0, i, 64 * 1024, u64::from(i));
        t.client.put_shard(bytes, false).await.expect("put");
        ids.push(id);
    }
    flip_byte(&t.file_of(&ids[3]), (SHARD_HEADER_BYTES + 100) as u64);
    let status = std::sync::Arc::clone(t.node().scrub_status());
    crate::harness::eventually(
        "the scrubber finds the flipped byte",
        std::time::Duration::from_secs(20),
        || {
            let found = status.corrupt_found.load(Ordering::Relaxed);
            async move { (found >= 1).then_some(()) }
        },
    )
    .await;
    // Found once, however many passes run; the healthy shards stay good.
    crate::harness::eventually(
        "two more passes",
        std::time::Duration::from_secs(20),
        || {
            let passes = status.passes.load(Ordering::Relaxed);
            async move { (passes >= 3).then_some(()) }
        },
    )
    .await;
    assert_eq!(status.corrupt_found.load(Ordering::Relaxed), 1);
    let info = t.client.stat_shard(&ids[3]).await.expect("stat");
    assert_eq!(info.state, ShardState::Corrupt);
    for (i, id) in ids.iter().enumerate() {
        if i != 3 {
            assert_eq!(
                t.client.stat_shard(id).await.expect("stat").state,
                ShardState::Ok
            );
        }
    }
    assert_eq!(
        t.client.node_status().await.expect("status").corrupt_count,
        1
    );
}

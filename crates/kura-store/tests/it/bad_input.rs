//! Malformed puts are INVALID_ARGUMENT and leave nothing behind; a full
//! node is RESOURCE_EXHAUSTED and leaves nothing behind either.

use bytes::Bytes;
use kura_erasure::SHARD_HEADER_BYTES;
use kura_proto::shards_client::{CHUNK_BYTES_MAX, SHARD_BYTES_MAX, ShardId};
use kura_proto::v1::internal as pb;
use pb::put_shard_request::Msg;

use crate::harness::{TestNode, shard};

fn header(id: &ShardId, length: u64, payload_blake3: &[u8]) -> pb::PutShardRequest {
    pb::PutShardRequest {
        msg: Some(Msg::Header(pb::PutShardHeader {
            id: Some(id.to_proto()),
            length,
            payload_blake3: Bytes::copy_from_slice(payload_blake3),
            overwrite: false,
        })),
    }
}

fn chunk(bytes: Bytes) -> pb::PutShardRequest {
    pb::PutShardRequest {
        msg: Some(Msg::Chunk(bytes)),
    }
}

fn chunks(bytes: &Bytes) -> Vec<pb::PutShardRequest> {
    (0..bytes.len())
        .step_by(CHUNK_BYTES_MAX)
        .map(|at| chunk(bytes.slice(at..(at + CHUNK_BYTES_MAX).min(bytes.len()))))
        .collect()
}

fn payload_blake3(bytes: &Bytes) -> [u8; 32] {
    *blake3::hash(&bytes[SHARD_HEADER_BYTES..]).as_bytes()
}

async fn assert_nothing_stored(t: &TestNode) {
    assert!(
        t.client
            .list_shards(None, 0)
            .await
            .expect("list")
            .is_empty()
    );
    let status = t.client.node_status().await.expect("status");
    assert_eq!((status.shard_count, status.used_bytes), (0, 0));
    assert!(t.shard_files().is_empty(), "{:?}", t.shard_files());
    assert!(t.files_in("tmp").is_empty());
}

#[tokio::test]
async fn malformed_puts_are_invalid_argument_and_store_nothing() {
    let t = TestNode::start().await;
    let (id, bytes) = shard(20, 0, 0, 3 << 20, 0);
    let len = bytes.len() as u64;
    let hash = payload_blake3(&bytes);

    let mut damaged = bytes.to_vec();
    damaged[SHARD_HEADER_BYTES + 7] ^= 1;
    let damaged = Bytes::from(damaged);
    let (other_id, _) = shard(20, 0, 1, 3 << 20, 0);
    let mut bad_key = id.to_proto();
    bad_key.object_key = Bytes::from_static(b"short");

    let cases: Vec<(&str, Vec<pb::PutShardRequest>)> = vec![
        ("empty stream", vec![]),
        ("chunk before header", {
            let mut m = chunks(&bytes);
            m.insert(1, header(&id, len, &hash));
            m
        }),
        ("header only, no data", vec![header(&id, len, &hash)]),
        ("too large", vec![header(&id, SHARD_BYTES_MAX + 1, &hash)]),
        (
            "shorter than a header",
            vec![header(&id, 10, &hash), chunk(bytes.slice(..10))],
        ),
        ("stream ends short", {
            let mut m = vec![header(&id, len, &hash)];
            m.extend(chunks(&bytes.slice(..bytes.len() - 1)));
            m
        }),
        ("stream runs long", {
            let mut m = vec![header(&id, len - 64, &hash)];
            m.extend(chunks(&bytes));
            m
        }),
        ("second header", {
            let mut m = vec![header(&id, len, &hash)];
            m.extend(chunks(&bytes));
            m.insert(2, header(&id, len, &hash));
            m
        }),
        ("not a shard", {
            let junk = Bytes::from(vec![0x42u8; 4096]);
            vec![header(&id, 4096, &hash), chunk(junk)]
        }),
        ("payload damaged in transit", {
            let mut m = vec![header(&id, len, &hash)];
            m.extend(chunks(&damaged));
            m
        }),
        ("expected blake3 differs", {
            let mut m = vec![header(&id, len, &[7u8; 32])];
            m.extend(chunks(&bytes));
            m
        }),
        ("blake3 not 32 bytes", {
            let mut m = vec![header(&id, len, &[7u8; 5])];
            m.extend(chunks(&bytes));
            m
        }),
        ("id disagrees with the shard header", {
            let mut m = vec![header(&other_id, len, &hash)];
            m.extend(chunks(&bytes));
            m
        }),
        ("object key not 32 bytes", {
            let mut m = vec![pb::PutShardRequest {
                msg: Some(Msg::Header(pb::PutShardHeader {
                    id: Some(bad_key),
                    length: len,
                    payload_blake3: Bytes::copy_from_slice(&hash),
                    overwrite: false,
                })),
            }];
            m.extend(chunks(&bytes));
            m
        }),
    ];
    let mut raw = t.raw().await;
    for (what, messages) in cases {
        let err = raw
            .put_shard(tokio_stream::iter(messages))
            .await
            .expect_err(what);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
        assert_nothing_stored(&t).await;
    }

    // The thin client refuses non-shards before sending anything.
    let err = t
        .client
        .put_shard(Bytes::from_static(b"not a shard at all"), false)
        .await
        .expect_err("client-side check");
    assert!(err.code().is_none(), "{err}");

    // And the well-formed put still works afterwards.
    t.client.put_shard(bytes, false).await.expect("valid put");
}

#[tokio::test]
async fn a_chunk_over_the_limit_is_refused() {
    let t = TestNode::start().await;
    let (id, bytes) = shard(21, 0, 0, 2 << 20, 0);
    let hash = payload_blake3(&bytes);
    let mut raw = t.raw().await.max_encoding_message_size(8 << 20);
    let err = raw
        .put_shard(tokio_stream::iter(vec![
            header(&id, bytes.len() as u64, &hash),
            chunk(bytes.clone()),
        ]))
        .await
        .expect_err("oversized chunk");
    // The message limit (just over one chunk) stops it in the transport.
    assert!(
        matches!(
            err.code(),
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{err:?}"
    );
    assert_nothing_stored(&t).await;
}

#[tokio::test]
async fn a_full_node_is_resource_exhausted_and_stores_nothing() {
    let quota = 100 * 1024;
    let t = TestNode::start_with(|c| c.capacity_bytes = Some(quota)).await;
    let (big, big_bytes) = shard(22, 0, 0, 128 * 1024, 0);
    let err = t
        .client
        .put_shard(big_bytes, false)
        .await
        .expect_err("over quota");
    assert_eq!(err.code(), Some(tonic::Code::ResourceExhausted), "{err}");
    assert_nothing_stored(&t).await;
    let err = t.client.stat_shard(&big).await.expect_err("absent");
    assert_eq!(err.code(), Some(tonic::Code::NotFound));

    // Fill it up to the quota: what fits is stored, the next is refused.
    let (a, a_bytes) = shard(22, 0, 1, 60 * 1024, 0);
    t.client.put_shard(a_bytes, false).await.expect("fits");
    let (_, b_bytes) = shard(22, 0, 2, 60 * 1024, 0);
    let err = t.client.put_shard(b_bytes, false).await.expect_err("full");
    assert_eq!(err.code(), Some(tonic::Code::ResourceExhausted), "{err}");
    let status = t.client.node_status().await.expect("status");
    assert_eq!(status.capacity_bytes, quota);
    assert_eq!(status.shard_count, 1);
    assert_eq!(t.shard_files().len(), 1);
    assert!(t.files_in("tmp").is_empty());
    // Deleting frees the space again.
    assert!(t.client.delete_shard(&a).await.expect("delete"));
    let (_, c_bytes) = shard(22, 0, 3, 90 * 1024, 0);
    t.client
        .put_shard(c_bytes, false)
        .await
        .expect("fits after delete");
}

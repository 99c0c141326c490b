//! What tools and operators rely on: gRPC health, reflection (v1 and
//! v1alpha), compression, the ops port, and orphan reclaim.

use std::time::Duration;

use bytes::Bytes;
use kura_auth::ClientRole;
use kura_erasure::{EcParams, encode_segment};
use kura_proto::shards_client::ShardId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

use kura_dicom::synthetic::{Synthetic, instance as synthetic, uid};

use crate::harness::{Cluster, TENANT, eventually, retrieve, store};

async fn channel(c: &Cluster) -> Channel {
    c.channel_as(TENANT, &[ClientRole::Reader, ClientRole::Writer])
        .await
}

/// A plain HTTP/1.1 GET; answers (status code, body).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect ops");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_reflection_compression_and_ops_port() {
    let c = Cluster::start().await;
    let ch = channel(&c).await;

    // grpc.health.v1
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in ["", "kura.v1.Archive"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

    // Reflection, both versions, lists the Archive service.
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut r = ServerReflectionClient::new(ch.clone());
        let mut s = r
            .server_reflection_info(tokio_stream::iter(vec![ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            }]))
            .await
            .expect("reflection v1")
            .into_inner();
        let m = s.message().await.expect("answer").expect("one");
        let Some(MessageResponse::ListServicesResponse(l)) = m.message_response else {
            panic!("unexpected answer");
        };
        let names: Vec<_> = l.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"kura.v1.Archive"), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    }
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut r = ServerReflectionClient::new(ch.clone());
        let mut s = r
            .server_reflection_info(tokio_stream::iter(vec![ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    "kura.v1.Archive".into(),
                )),
            }]))
            .await
            .expect("reflection v1alpha")
            .into_inner();
        let m = s.message().await.expect("answer").expect("one");
        let Some(MessageResponse::FileDescriptorResponse(f)) = m.message_response else {
            panic!("unexpected answer");
        };
        assert!(!f.file_descriptor_proto.is_empty());
    }

    // gzip and zstd, each way.
    let s = Synthetic {
        study: uid("70", 1),
        series: uid("71", 1),
        sop: uid("72", 1),
    };
    let bytes = synthetic(&s, 600 * 1024, 3);
    for (i, enc) in [CompressionEncoding::Gzip, CompressionEncoding::Zstd]
        .into_iter()
        .enumerate()
    {
        let tenant = format!("compressed-{i}");
        let tenant_channel = c
            .channel_as(&tenant, &[ClientRole::Reader, ClientRole::Writer])
            .await;
        let mut client = kura_proto::v1::archive_client::ArchiveClient::new(tenant_channel)
            .send_compressed(enc)
            .accept_compressed(enc);
        store(&mut client, &tenant, &bytes)
            .await
            .expect("compressed store");
        let got = retrieve(&mut client, &tenant, &s.sop)
            .await
            .expect("compressed retrieve");
        assert!(got == bytes);
    }

    // The ops port.
    let ops = c.dev.ops_addr().expect("ops port");
    assert_eq!(http_get(ops, "/healthz").await.0, 200);
    let (code, body) = http_get(ops, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    let (code, metrics) = http_get(ops, "/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "kura_gateway_requests_total",
        "kura_gateway_request_duration_seconds_bucket",
        "kura_gateway_received_bytes_total",
        "kura_gateway_shards_written_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    assert!(
        metrics.contains("rpc=\"Store\""),
        "requests are labelled by rpc"
    );
    assert_eq!(http_get(ops, "/nope").await.0, 404);
    c.dev.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphan_shards_are_reclaimed_after_the_grace_period() {
    let dir = tempfile::tempdir().expect("dir");
    let c = Cluster::start_with(dir, |cfg| {
        cfg.orphan_grace = Duration::from_secs(4);
        cfg.gc_interval = Duration::from_millis(300);
    })
    .await;
    let mut client = c.client().await;
    let s = Synthetic {
        study: uid("80", 1),
        series: uid("81", 1),
        sop: uid("82", 1),
    };
    let bytes = synthetic(&s, 100 * 1024, 8);
    store(&mut client, TENANT, &bytes).await.expect("store");
    assert_eq!(c.shard_count(), 9);
    // A failed store's leftovers: shards of an object no manifest names.
    let orphan = encode_segment(EcParams::default(), [0xAB; 32], 0, &[7u8; 5000]).expect("encode");
    let node = c.dev.storage_node(4).expect("node 4");
    let client4 = c.shards(&node.addr().to_string());
    for shard in &orphan.shards[..3] {
        client4
            .put_shard(Bytes::from(shard.encode_to_vec()), false)
            .await
            .expect("put orphan");
    }
    // A straggler's copy: shard 0 also on the node the manifest gives
    // shard 1 (a put that landed after its segment was re-placed).
    let m = crate::harness::manifest(&c.meta(), &s.sop).await;
    let holder_of = |i: usize| m.segments[0].shards[i].node.expect("placed");
    let addr_of = |id: u64| c.dev.storage_node(id).expect("node").addr().to_string();
    let shard0 = ShardId {
        object_key: m.object_key,
        segment: 0,
        index: 0,
    };
    let (_, copy) = c
        .shards(&addr_of(holder_of(0)))
        .get_shard(&shard0, None)
        .await
        .expect("read shard 0");
    let elsewhere = c.shards(&addr_of(holder_of(1)));
    elsewhere
        .put_shard(copy, false)
        .await
        .expect("put the straggler copy");
    assert_eq!(c.shard_count(), 13);
    // The failed store's shards go first (older than the grace); the
    // straggler copy is kept until it has been seen held elsewhere for the
    // grace period too.
    eventually("orphans reclaimed", Duration::from_secs(30), || {
        c.shard_count() <= 10
    })
    .await;
    elsewhere
        .stat_shard(&shard0)
        .await
        .expect("the straggler copy is still in its grace");
    eventually("straggler copy reclaimed", Duration::from_secs(30), || {
        c.shard_count() == 9
    })
    .await;
    let gone = elsewhere.stat_shard(&shard0).await.expect_err("reclaimed");
    assert_eq!(gone.code(), Some(tonic::Code::NotFound));
    // Every copy the manifest places is still where it says.
    for (i, loc) in m.segments[0].shards.iter().enumerate() {
        let id = ShardId {
            object_key: m.object_key,
            segment: 0,
            index: loc.index,
        };
        c.shards(&addr_of(holder_of(i)))
            .stat_shard(&id)
            .await
            .expect("a placed shard stays");
    }
    let gone = client4
        .stat_shard(&ShardId {
            object_key: [0xAB; 32],
            segment: 0,
            index: 0,
        })
        .await
        .expect_err("reclaimed");
    assert_eq!(gone.code(), Some(tonic::Code::NotFound));
    // The referenced instance is untouched.
    let got = retrieve(&mut client, TENANT, &s.sop)
        .await
        .expect("retrieve");
    assert!(got == bytes);
    c.dev.shutdown().await;
}

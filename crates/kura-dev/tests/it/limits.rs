//! Limits on every input: each refusal names its limit and stores
//! nothing; streams beyond the in-flight limits get RESOURCE_EXHAUSTED with
//! RetryInfo at once, health checks go on answering, and work is admitted
//! again once the running streams end.

use std::time::Duration;

use kura_auth::ClientRole;
use kura_dicom::synthetic::{Synthetic, head, instance as synthetic, uid};
use kura_proto::v1::archive_client::ArchiveClient;
use kura_proto::v1::{StoreHeader, StoreRequest, store_request};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::harness::{Cluster, TENANT, stat, store};

const CHUNK: usize = 64 * 1024;

fn sample(n: u64, pixels: u32) -> (String, Vec<u8>) {
    let s = Synthetic {
        study: uid("80", 1),
        series: uid("81", 1),
        sop: uid("82", n),
    };
    (s.sop.clone(), synthetic(&s, pixels, n))
}

fn header(size: Option<u64>) -> StoreRequest {
    StoreRequest {
        msg: Some(store_request::Msg::Header(StoreHeader {
            tenant: TENANT.into(),
            size,
            ..Default::default()
        })),
    }
}

fn chunk(bytes: &[u8]) -> StoreRequest {
    StoreRequest {
        msg: Some(store_request::Msg::Chunk(bytes.to_vec().into())),
    }
}

/// Stores in chunks of [`CHUNK`] bytes.
async fn store_small(
    client: &mut ArchiveClient<Channel>,
    bytes: &[u8],
) -> Result<kura_proto::v1::StoreResponse, tonic::Status> {
    client
        .store(tokio_stream::iter(kura_testkit::store_messages(
            TENANT, bytes, CHUNK,
        )))
        .await
        .map(tonic::Response::into_inner)
}

async fn assert_not_stored(client: &mut ArchiveClient<Channel>, sop: &str) {
    let e = stat(client, TENANT, sop).await.expect_err("nothing stored");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_size_limit_names_itself_and_stores_nothing() {
    let (ok_sop, ok) = sample(1, 100 * 1024);
    let elements = kura_dicom::validate(ok.as_slice())
        .expect("valid")
        .element_count;
    let dir = tempfile::tempdir().expect("dir");
    let c = Cluster::start_with(dir, |cfg| {
        cfg.limits.chunk_bytes = CHUNK;
        cfg.limits.instance_bytes = 512 * 1024;
        cfg.limits.header_bytes = 2048;
        cfg.limits.dicom_elements = elements + 5;
        cfg.limits.page_entries = 10;
    })
    .await;
    let mut client = c.client().await;

    // Within every limit: stored.
    store_small(&mut client, &ok)
        .await
        .expect("within the limits");

    // A chunk larger than chunk_bytes.
    let (sop, bytes) = sample(2, 100 * 1024);
    let e = client
        .store(tokio_stream::iter(vec![header(None), chunk(&bytes)]))
        .await
        .expect_err("chunk too large");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(
        e.message().contains("limit chunk_bytes (65536 bytes)"),
        "{e}"
    );
    assert_not_stored(&mut client, &sop).await;

    // An instance beyond instance_bytes, declared or not.
    let (sop, big) = sample(3, 600 * 1024);
    let e = client
        .store(tokio_stream::iter(vec![header(Some(big.len() as u64))]))
        .await
        .expect_err("declared too large");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(
        e.message().contains("limit instance_bytes (524288 bytes)"),
        "{e}"
    );
    let msgs: Vec<StoreRequest> = std::iter::once(header(None))
        .chain(big.chunks(CHUNK).map(chunk))
        .collect();
    let e = client
        .store(tokio_stream::iter(msgs))
        .await
        .expect_err("too large");
    assert!(
        e.message().contains("limit instance_bytes (524288 bytes)"),
        "{e}"
    );
    assert_not_stored(&mut client, &sop).await;

    // Identifying attributes beyond header_bytes: a long private element
    // (0007,1000) OB before the SOP Class UID (0008,0016) pushes them out.
    let (sop, bytes) = sample(4, 1024);
    let at = bytes
        .windows(4)
        .position(|w| w == [0x08, 0x00, 0x16, 0x00])
        .expect("(0008,0016)");
    let mut padded = bytes[..at].to_vec();
    padded.extend_from_slice(&[0x07, 0x00, 0x00, 0x10, b'O', b'B', 0, 0]);
    padded.extend_from_slice(&4096u32.to_le_bytes());
    padded.extend_from_slice(&[0x55; 4096]);
    padded.extend_from_slice(&bytes[at..]);
    let e = store_small(&mut client, &padded)
        .await
        .expect_err("header too large");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("limit header_bytes"), "{e}");
    assert_not_stored(&mut client, &sop).await;

    // More data elements than dicom_elements: a sequence of 20 items of
    // one element each adds 21.
    let (sop, bytes) = sample(5, 1024);
    let at = bytes
        .windows(4)
        .position(|w| w == [0xe0, 0x7f, 0x10, 0x00])
        .expect("pixel data");
    let mut many = bytes[..at].to_vec();
    // (0040,0275) SQ of 20 items, each one (0008,1150) UI element.
    let mut items = Vec::new();
    for _ in 0..20 {
        let mut el = vec![0x08, 0x00, 0x50, 0x11, b'U', b'I', 4, 0];
        el.extend_from_slice(b"1.2\0");
        items.extend_from_slice(&[0xfe, 0xff, 0x00, 0xe0]);
        items.extend_from_slice(&(el.len() as u32).to_le_bytes());
        items.extend(el);
    }
    many.extend_from_slice(&[0x40, 0x00, 0x75, 0x02, b'S', b'Q', 0, 0]);
    many.extend_from_slice(&(items.len() as u32).to_le_bytes());
    many.extend(items);
    many.extend_from_slice(&bytes[at..]);
    let e = store_small(&mut client, &many)
        .await
        .expect_err("too many elements");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let named = format!("limit dicom_elements ({} elements)", elements + 5);
    assert!(e.message().contains(&named), "{e}");
    assert_eq!(
        e.get_error_details()
            .error_info()
            .map(|i| i.reason.as_str()),
        Some("DICOM_LIMIT_EXCEEDED")
    );
    assert_not_stored(&mut client, &sop).await;

    // An Admin page larger than page_entries.
    let mut admin = kura_proto::v1::admin_client::AdminClient::new(
        c.channel_as(TENANT, &[ClientRole::Admin]).await,
    );
    let e = admin
        .list_instances(kura_proto::v1::ListInstancesRequest {
            tenant: TENANT.into(),
            limit: 11,
            ..Default::default()
        })
        .await
        .expect_err("page too large");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(
        e.message().contains("limit page_entries (10 entries)"),
        "{e}"
    );

    // The one good instance is all there is.
    stat(&mut client, TENANT, &ok_sop).await.expect("stored");
}

/// A Store stream held open after its first bytes; the sender keeps it
/// open until dropped.
struct Held {
    tx: mpsc::Sender<StoreRequest>,
    call: tokio::task::JoinHandle<Result<kura_proto::v1::StoreResponse, tonic::Status>>,
}

async fn hold(client: &ArchiveClient<Channel>, first: &[u8]) -> Held {
    let (tx, rx) = mpsc::channel(4);
    tx.send(header(None)).await.expect("send");
    tx.send(chunk(first)).await.expect("send");
    let mut client = client.clone();
    let call = tokio::spawn(async move {
        client
            .store(ReceiverStream::new(rx))
            .await
            .map(tonic::Response::into_inner)
    });
    Held { tx, call }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_beyond_the_limits_are_refused_at_once_and_admitted_again() {
    let dir = tempfile::tempdir().expect("dir");
    let c = Cluster::start_with(dir, |cfg| {
        cfg.limits.streams_per_identity = 3;
        cfg.limits.streams_per_gateway = 4;
    })
    .await;
    let a = c.client().await;
    let b = c
        .client_as(
            TENANT,
            &[ClientRole::Writer, ClientRole::Reader, ClientRole::Auditor],
        )
        .await;
    let s = Synthetic {
        study: uid("83", 1),
        series: uid("84", 1),
        sop: uid("85", 1),
    };
    let first = head(&s, 1, 64 * 1024);

    // Caller a: three streams admitted, the fourth refused by its own
    // limit; caller b: one more fills the gateway, then b is refused by
    // the gateway's limit.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(hold(&a, &first).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = hold(&a, &first).await;
    let e = tokio::time::timeout(Duration::from_secs(5), refused.call)
        .await
        .expect("refused at once")
        .expect("task")
        .expect_err("a's fourth stream");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    assert!(
        e.message()
            .contains("limit streams_per_identity: 3 streams"),
        "{e}"
    );
    let details = e.get_error_details();
    assert_eq!(
        details.retry_info().and_then(|r| r.retry_delay),
        Some(Duration::from_secs(1))
    );
    assert_eq!(
        details
            .error_info()
            .and_then(|i| i.metadata.get("limit").cloned())
            .as_deref(),
        Some("streams_per_identity")
    );
    held.push(hold(&b, &first).await);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Ten times the gateway's limit more, from both callers: every one
    // refused at once, and the health service answers meanwhile.
    let mut burst = Vec::new();
    for i in 0..40 {
        let who = if i % 2 == 0 { &a } else { &b };
        burst.push(hold(who, &first).await);
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        c.channel_as(TENANT, &[ClientRole::Reader]).await,
    );
    let h = tokio::time::timeout(
        Duration::from_secs(5),
        health.check(tonic_health::pb::HealthCheckRequest {
            service: "kura.v1.Archive".into(),
        }),
    )
    .await
    .expect("health answers under load")
    .expect("health");
    assert_eq!(h.into_inner().status, 1, "SERVING");
    for r in burst {
        let e = tokio::time::timeout(Duration::from_secs(5), r.call)
            .await
            .expect("refused at once")
            .expect("task")
            .expect_err("beyond the limit");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
        assert!(e.message().contains("limit streams_per_"), "{e}");
    }

    // The held streams end (their senders dropped: a cut-off upload);
    // new work is admitted again.
    for h in held {
        drop(h.tx);
        let _ = tokio::time::timeout(Duration::from_secs(10), h.call).await;
    }
    let mut a = a;
    let bytes = synthetic(&s, 64 * 1024, 1);
    let mut admitted = None;
    for _ in 0..50 {
        match store(&mut a, TENANT, &bytes).await {
            Ok(r) => {
                admitted = Some(r);
                break;
            }
            Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("store after the load: {e}"),
        }
    }
    assert!(admitted.is_some(), "admitted again once the streams ended");
}

//! The Archive contract against a whole dev cluster: the corpus round-trips
//! byte-exact, refusals store nothing, same UID with other bytes is refused,
//! broken streams store nothing, listing and stat come from the index.

use std::time::Duration;

use bytes::Bytes;
use kura_auth::ClientRole;
use kura_proto::meta::{Consistency, Query, QueryResult};
use kura_proto::v1::{ListStudyRequest, StoreHeader, StoreRequest, store_request};
use tonic::Code;
use tonic_types::StatusExt;

use kura_dicom::synthetic::{Synthetic, instance as synthetic, uid};

use crate::harness::{
    Cluster, TENANT, corpus, corpus_dir, eventually, retrieve, stat, store, store_messages,
};

async fn manifest_count(c: &Cluster) -> u64 {
    let meta = c.meta();
    match meta
        .query(&Query::CountManifests {
            consistency: Consistency::Linearizable,
        })
        .await
        .expect("count")
    {
        QueryResult::ManifestCounts { total, .. } => total,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corpus_round_trips_and_refusals_store_nothing() {
    let c = Cluster::start().await;
    let mut client = c.client().await;
    let mut first_of_uid: std::collections::HashMap<String, (String, Vec<u8>)> =
        std::collections::HashMap::new();
    for (file, accept, sop) in corpus() {
        let bytes = std::fs::read(corpus_dir().join(&file)).expect("corpus file");
        let before = manifest_count(&c).await;
        let r = store(&mut client, TENANT, &bytes).await;
        if !accept {
            let e = r.expect_err(&format!("{file} must be refused"));
            assert_eq!(e.code(), Code::InvalidArgument, "{file}: {e:?}");
            assert!(
                e.message().contains("nothing was stored"),
                "{file}: {}",
                e.message()
            );
            let details = e.get_error_details();
            assert!(details.bad_request().is_some(), "{file}: BadRequest detail");
            assert!(
                details
                    .error_info()
                    .is_some_and(|i| i.reason.starts_with("DICOM_")),
                "{file}: ErrorInfo reason {:?}",
                details.error_info()
            );
            assert_eq!(manifest_count(&c).await, before, "{file}: nothing stored");
            continue;
        }
        match first_of_uid.get(&sop) {
            None => {
                let info = r
                    .unwrap_or_else(|e| panic!("{file} must be stored: {e:?}"))
                    .info
                    .expect("info");
                assert_eq!(info.sop_instance_uid, sop, "{file}");
                assert_eq!(info.size, bytes.len() as u64);
                assert_eq!(info.blake3, blake3::hash(&bytes).to_hex().to_string());
                assert_eq!((info.ec_data_shards, info.ec_parity_shards), (5, 4));
                first_of_uid.insert(sop.clone(), (file.clone(), bytes.clone()));
            }
            Some((first_file, first_bytes)) => {
                // Same SOP Instance UID, different bytes: the first one wins.
                let e = r.expect_err(&format!("{file} after {first_file} must be refused"));
                assert_eq!(e.code(), Code::AlreadyExists, "{file}: {e:?}");
                let stored_hash = blake3::hash(first_bytes).to_hex().to_string();
                let offered_hash = blake3::hash(&bytes).to_hex().to_string();
                assert!(e.message().contains(&stored_hash), "{}", e.message());
                assert!(e.message().contains(&offered_hash), "{}", e.message());
                assert!(e.message().contains("stored at"), "{}", e.message());
                let info = e.get_error_details();
                assert_eq!(
                    info.resource_info().expect("ResourceInfo").resource_name,
                    sop
                );
                assert_eq!(manifest_count(&c).await, before);
            }
        }
    }
    assert_eq!(first_of_uid.len(), 11, "distinct accepted instances");
    // Every accepted instance reads back exactly; the MR four read back as
    // the first of them.
    for (sop, (file, bytes)) in &first_of_uid {
        let got = retrieve(&mut client, TENANT, sop).await.expect("retrieve");
        assert!(got == *bytes, "{file} did not round-trip byte-exact");
    }
    // Re-storing the same bytes is idempotent.
    let (file, bytes) = first_of_uid.values().next().expect("one");
    let shards = c.shard_count();
    let again = store(&mut client, TENANT, bytes).await.expect("re-store");
    assert!(again.already_stored, "{file}: already stored");
    assert_eq!(c.shard_count(), shards, "a re-store writes no shard");
    // Another tenant is another namespace.
    let mut other_client = c.client_as("other-tenant", &[ClientRole::Writer]).await;
    let other = store(&mut other_client, "other-tenant", bytes)
        .await
        .expect("store");
    assert!(!other.already_stored);
    c.dev.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_streams_are_refused_and_store_nothing() {
    let c = Cluster::start().await;
    let mut client = c.client().await;
    let s = Synthetic {
        study: uid("1", 1),
        series: uid("2", 1),
        sop: uid("3", 1),
    };
    let bytes = synthetic(&s, 3 * 1024 * 1024, 7);

    // A chunk before the header.
    let mut msgs = store_messages(TENANT, &bytes, 64 * 1024);
    msgs.swap(0, 1);
    let e = client
        .store(tokio_stream::iter(msgs))
        .await
        .expect_err("chunk first");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("header"), "{}", e.message());
    assert_eq!(
        e.get_error_details().error_info().map(|i| i.reason.clone()),
        Some("CHUNK_BEFORE_HEADER".into())
    );

    // A bad tenant.
    let e = store(&mut client, "no spaces allowed", &bytes)
        .await
        .expect_err("bad tenant");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.get_error_details()
            .bad_request()
            .expect("BadRequest")
            .field_violations[0]
            .field,
        "header.tenant"
    );

    // The stream ends early: the declared size does not match.
    let mut msgs = store_messages(TENANT, &bytes, 64 * 1024);
    msgs.truncate(msgs.len() / 2);
    let e = client
        .store(tokio_stream::iter(msgs))
        .await
        .expect_err("short");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // A wrong expected hash.
    let mut msgs = store_messages(TENANT, &bytes, 64 * 1024);
    if let Some(store_request::Msg::Header(h)) = &mut msgs[0].msg {
        h.expected_blake3 = Some("00".repeat(32));
    }
    let e = client
        .store(tokio_stream::iter(msgs))
        .await
        .expect_err("hash");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("hash"), "{}", e.message());

    // Cut off mid-upload: the client goes away after some chunks.
    let chunks: Vec<StoreRequest> = store_messages(TENANT, &bytes, 64 * 1024);
    let channel = c
        .channel_as(TENANT, &[ClientRole::Writer, ClientRole::Reader])
        .await;
    let upload = tokio::spawn(async move {
        let mut client = kura_proto::v1::archive_client::ArchiveClient::new(channel);
        let stream = futures::stream::unfold(chunks.into_iter().enumerate(), |mut it| async move {
            let (i, m) = it.next()?;
            if i == 30 {
                // Stall forever after 29 chunks (~1.8 MiB): the task is
                // aborted here, which resets the HTTP/2 stream.
                futures::future::pending::<()>().await;
            }
            Some((m, it))
        });
        let _ = client.store(stream).await;
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    upload.abort();
    let _ = upload.await;

    // None of these stored anything, and no shard is left behind.
    assert_eq!(manifest_count(&c).await, 0);
    let e = stat(&mut client, TENANT, &s.sop).await.expect_err("absent");
    assert_eq!(e.code(), Code::NotFound);
    eventually("spare shards deleted", Duration::from_secs(20), || {
        c.shard_count() == 0
    })
    .await;

    // And the instance still stores fine afterwards.
    let ok = store(&mut client, TENANT, &bytes).await.expect("store");
    assert!(!ok.already_stored);
    assert_eq!(c.shard_count(), 9, "one segment: 5 data + 4 parity shards");
    c.dev.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_and_stat_answer_from_the_index() {
    let c = Cluster::start().await;
    let mut client = c.client().await;
    let study = uid("10", 1);
    let mut stored = Vec::new();
    for n in 0..40u64 {
        let s = Synthetic {
            study: study.clone(),
            series: uid("20", n % 2),
            sop: uid("30", n),
        };
        let bytes = synthetic(&s, 4096, n);
        store(&mut client, TENANT, &bytes).await.expect("store");
        stored.push((s.sop, s.series, bytes));
    }
    let list = |series: Option<String>| {
        let mut client = client.clone();
        let study = study.clone();
        async move {
            let mut s = client
                .list_study(ListStudyRequest {
                    tenant: TENANT.into(),
                    study_instance_uid: study,
                    series_instance_uid: series,
                })
                .await?
                .into_inner();
            let mut out = Vec::new();
            while let Some(i) = s.message().await? {
                out.push(i);
            }
            Ok::<_, tonic::Status>(out)
        }
    };
    let all = list(None).await.expect("list");
    assert_eq!(all.len(), 40);
    let one_series = list(Some(uid("20", 1))).await.expect("list series");
    assert_eq!(one_series.len(), 20);
    assert!(
        one_series
            .iter()
            .all(|i| i.series_instance_uid == uid("20", 1))
    );
    let e = list(Some(uid("20", 9))).await.expect_err("no such series");
    assert_eq!(e.code(), Code::NotFound);
    let mut c2 = client.clone();
    let e = c2
        .list_study(ListStudyRequest {
            tenant: TENANT.into(),
            study_instance_uid: "not a uid".into(),
            series_instance_uid: None,
        })
        .await
        .expect_err("bad uid");
    assert_eq!(e.code(), Code::InvalidArgument);

    let (sop, series, bytes) = &stored[7];
    let info = stat(&mut client, TENANT, sop).await.expect("stat");
    assert_eq!(&info.series_instance_uid, series);
    assert_eq!(info.study_instance_uid, study);
    assert_eq!(info.modality, "MR");
    assert_eq!(info.patient_id, "SYN-0001");
    assert_eq!(info.study_date, "20261125");
    assert_eq!(info.size, bytes.len() as u64);
    assert_eq!(
        info.protection,
        kura_proto::v1::Protection::Full as i32,
        "all nodes up: full protection"
    );
    let e = stat(&mut client, TENANT, &uid("30", 999))
        .await
        .expect_err("absent");
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains(&uid("30", 999)));

    // Stat and list never read shards: they answer with every storage node
    // stopped.
    let ids: Vec<u64> = c.dev.layout().storage.iter().map(|s| s.id).collect();
    let mut dev = c.dev;
    for id in ids {
        dev.stop_storage_node(id).await.expect("stop");
    }
    assert!(stat(&mut client, TENANT, sop).await.is_ok());
    let mut s = client
        .list_study(ListStudyRequest {
            tenant: TENANT.into(),
            study_instance_uid: study.clone(),
            series_instance_uid: None,
        })
        .await
        .expect("list")
        .into_inner();
    let mut n = 0;
    while s.message().await.expect("item").is_some() {
        n += 1;
    }
    assert_eq!(n, 40);
    dev.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_multi_segment_instance_round_trips_and_survives_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let c = Cluster::start_with(dir, |_| {}).await;
    let mut client = c.client().await;
    let s = Synthetic {
        study: uid("40", 1),
        series: uid("41", 1),
        sop: uid("42", 1),
    };
    // 4 MiB segments: 5 segments, the last one short.
    let bytes = synthetic(&s, 17 * 1024 * 1024 + 2, 99);
    // Chunks that do not line up with segments.
    let msgs = store_messages(TENANT, &bytes, 1024 * 1024 + 7);
    let r = client
        .store(tokio_stream::iter(msgs))
        .await
        .expect("store")
        .into_inner();
    assert_eq!(r.info.expect("info").size, bytes.len() as u64);
    assert_eq!(c.shard_count(), 5 * 9);
    let Cluster { dev, dir } = c;
    dev.shutdown().await;
    // Same directory: the same cluster comes back, with the instance.
    let c = Cluster::start_with(dir, |_| {}).await;
    let mut client = c.client().await;
    let got = retrieve(&mut client, TENANT, &s.sop)
        .await
        .expect("retrieve");
    assert!(got == bytes, "round-trip after restart");
    c.dev.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_stores_of_one_instance_agree() {
    let c = Cluster::start().await;
    let client = c.client().await;
    let s = Synthetic {
        study: uid("50", 1),
        series: uid("51", 1),
        sop: uid("52", 1),
    };
    let bytes = Bytes::from(synthetic(&s, 2 * 1024 * 1024, 5));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut client = client.clone();
        let bytes = bytes.clone();
        tasks.push(tokio::spawn(async move {
            let msgs = vec![
                StoreRequest {
                    msg: Some(store_request::Msg::Header(StoreHeader {
                        tenant: TENANT.into(),
                        expected_blake3: Some(blake3::hash(&bytes).to_hex().to_string()),
                        size: Some(bytes.len() as u64),
                    })),
                },
                StoreRequest {
                    msg: Some(store_request::Msg::Chunk(bytes.clone())),
                },
            ];
            client.store(tokio_stream::iter(msgs)).await
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        let r = t
            .await
            .expect("task")
            .expect("every store succeeds")
            .into_inner();
        if !r.already_stored {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1, "exactly one store created the instance");
    let mut client = client.clone();
    let got = retrieve(&mut client, TENANT, &s.sop)
        .await
        .expect("retrieve");
    assert!(got == bytes);
    eventually(
        "spare shards of the losers deleted",
        Duration::from_secs(20),
        || c.shard_count() == 9,
    )
    .await;
    c.dev.shutdown().await;
}

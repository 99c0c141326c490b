//! Encryption at rest: what the disks of storage nodes and voters hold
//! gives nothing away; a gateway with a wrong key does not start; key
//! rotation re-wraps every manifest, after which the old key can go.

use std::path::Path;
use std::sync::Arc;

use kura_auth::{ClientRole, NodeRole};
use kura_dicom::synthetic::{Synthetic, instance as synthetic, uid};
use kura_proto::v1::admin_client::AdminClient;
use kura_proto::v1::archive_client::ArchiveClient;
use kura_proto::v1::{KeyStatusRequest, RotateKeysRequest};
use kura_seal::Keyring;
use tonic::transport::Channel;

use crate::harness::{Cluster, TENANT, retrieve, stat, store};

/// Every file under `dir`, recursively, but the certificates and the key
/// file (which belong to the operator, not to the data).
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "tls") {
                continue;
            }
            files(&p, out);
        } else if p.file_name().is_some_and(|n| n != kura_dev::KEYS_FILE) {
            out.push(p);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A gateway of the dev cluster's CA with `keys`.
async fn gateway(c: &Cluster, keys: Arc<Keyring>) -> std::io::Result<kura_gateway::Gateway> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut gc = kura_gateway::GatewayConfig::new(
        c.dev.meta_endpoints().to_vec(),
        kura_dev::certs::transport(
            &kura_dev::certs::tls_dir(&c.dev.config().data_dir),
            NodeRole::Gateway,
            0,
        )
        .expect("gateway certificate"),
        keys,
    );
    gc.repair = None;
    gc.key_check_wait = std::time::Duration::from_secs(10);
    kura_gateway::Gateway::start(gc, l, None).await
}

async fn channel_to(c: &Cluster, gw: &kura_gateway::Gateway, roles: &[ClientRole]) -> Channel {
    c.dev
        .client_transport(TENANT, roles)
        .expect("client certificate")
        .endpoint(&gw.addr().to_string())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

fn keyring(lines: &[String]) -> Arc<Keyring> {
    Arc::new(Keyring::parse(&lines.join("\n"), "test keys").expect("keys"))
}

fn dev_key_lines(c: &Cluster) -> Vec<String> {
    std::fs::read_to_string(c.dev.config().keys_file())
        .expect("dev key file")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disks_hold_no_patient_data_and_no_plaintext() {
    let c = Cluster::start().await;
    let mut client = c.client().await;
    let mut stored = Vec::new();
    for i in 0..2u64 {
        let s = Synthetic {
            study: uid("60", 1),
            series: uid("61", 1),
            sop: uid("62", i),
        };
        let bytes = synthetic(&s, 300 * 1024, 40 + i);
        let r = store(&mut client, TENANT, &bytes).await.expect("store");
        let info = r.info.expect("info");
        // The answer shows the instance, not its sealed form.
        assert_eq!(info.size, bytes.len() as u64);
        assert_eq!(info.blake3, blake3::hash(&bytes).to_hex().to_string());
        assert_eq!(info.patient_id, "SYN-0001");
        stored.push((s.sop, bytes));
    }
    for (sop, bytes) in &stored {
        assert_eq!(
            &retrieve(&mut client, TENANT, sop).await.expect("retrieve"),
            bytes
        );
        let info = stat(&mut client, TENANT, sop).await.expect("stat");
        assert_eq!(info.patient_id, "SYN-0001");
        assert_eq!(info.blake3, blake3::hash(bytes).to_hex().to_string());
    }
    // Stored again: recognised by its keyed fingerprint.
    let again = store(&mut client, TENANT, &stored[0].1)
        .await
        .expect("again");
    assert!(again.already_stored);
    // A change of one pixel under the same UID is a conflict naming both
    // instances' real hashes.
    let mut changed = stored[0].1.clone();
    let last = changed.len() - 1;
    changed[last] ^= 0xff;
    let e = store(&mut client, TENANT, &changed)
        .await
        .expect_err("conflict");
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e}");
    assert!(
        e.message()
            .contains(&blake3::hash(&stored[0].1).to_hex().to_string()),
        "{e}"
    );
    assert!(
        e.message()
            .contains(&blake3::hash(&changed).to_hex().to_string()),
        "{e}"
    );

    // What an attacker with the disks would look for: the patient's name
    // and ID, a run of pixel bytes, each instance's blake3 (raw and hex).
    let mut needles: Vec<(String, Vec<u8>)> = vec![
        ("patient name".into(), b"Synthetic^Patient".to_vec()),
        ("patient id".into(), b"SYN-0001".to_vec()),
    ];
    for (sop, bytes) in &stored {
        let mid = bytes.len() / 2;
        needles.push((format!("pixels of {sop}"), bytes[mid..mid + 48].to_vec()));
        let h = blake3::hash(bytes);
        needles.push((format!("blake3 of {sop}"), h.as_bytes().to_vec()));
        needles.push((
            format!("hex blake3 of {sop}"),
            h.to_hex().as_bytes().to_vec(),
        ));
    }
    let mut all = Vec::new();
    files(&c.dev.config().data_dir, &mut all);
    assert!(
        all.len() > 20,
        "voters' and storage nodes' files: {}",
        all.len()
    );
    let mut shard_bytes = 0usize;
    for f in &all {
        let Ok(data) = std::fs::read(f) else {
            continue;
        };
        shard_bytes += data.len();
        for (what, needle) in &needles {
            assert!(!contains(&data, needle), "{} holds the {what}", f.display());
        }
    }
    assert!(
        shard_bytes > 600 * 1024,
        "the shards are on disk: {shard_bytes} bytes"
    );

    // The audit trail names the patient to an auditor (opened by the
    // gateway), and a query by Patient ID finds the entries.
    let mut audit = kura_proto::v1::audit_client::AuditClient::new(
        c.channel_as(TENANT, &[ClientRole::Auditor]).await,
    );
    let mut st = audit
        .query(kura_proto::v1::AuditQueryRequest {
            patient_id: "SYN-0001".into(),
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner();
    let mut stores = 0;
    while let Some(e) = st.message().await.expect("entry") {
        assert_eq!(e.patient_id, "SYN-0001");
        if e.action == "Store" && e.outcome == "OK" {
            stores += 1;
        }
    }
    assert!(stores >= 3, "two stores and one already-stored: {stores}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_with_another_key_does_not_start() {
    let c = Cluster::start().await;
    let wrong = keyring(&[kura_seal::generate_key_line(1).expect("line")]);
    let Err(e) = gateway(&c, wrong).await else {
        panic!("a gateway with another key for version 1 started");
    };
    let text = e.to_string();
    assert!(
        text.contains("holds another key for version 1") && text.contains("refusing to start"),
        "{text}"
    );
    // The same key under a new version number is accepted beside it.
    let mut lines = dev_key_lines(&c);
    lines.push(kura_seal::generate_key_line(2).expect("line"));
    let g = gateway(&c, keyring(&lines)).await.expect("right keys");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_rewraps_every_instance_and_the_old_key_can_go() {
    let c = Cluster::start().await;
    let mut client = c.client().await;
    let mut stored = Vec::new();
    for i in 0..5u64 {
        let s = Synthetic {
            study: uid("63", 1),
            series: uid("64", 1),
            sop: uid("65", i),
        };
        let bytes = synthetic(&s, 80 * 1024, 70 + i);
        store(&mut client, TENANT, &bytes).await.expect("store");
        stored.push((s.sop, bytes));
    }
    // Version 2 is added to a gateway's key file; it seals new data
    // under it.
    let v1 = dev_key_lines(&c);
    let v2 = kura_seal::generate_key_line(2).expect("line");
    let both = [v1.clone(), vec![v2.clone()]].concat();
    let g2 = gateway(&c, keyring(&both))
        .await
        .expect("gateway with v1 + v2");
    let mut admin = AdminClient::new(channel_to(&c, &g2, &[ClientRole::Admin]).await);
    let mut client2 =
        ArchiveClient::new(channel_to(&c, &g2, &[ClientRole::Reader, ClientRole::Writer]).await);
    let s = Synthetic {
        study: uid("63", 1),
        series: uid("64", 1),
        sop: uid("65", 99),
    };
    let newest = synthetic(&s, 80 * 1024, 99);
    store(&mut client2, TENANT, &newest)
        .await
        .expect("store under v2");
    stored.push((s.sop, newest));
    let usage = |st: &kura_proto::v1::KeyStatusResponse| -> Vec<(u32, u64, bool, bool)> {
        st.versions
            .iter()
            .map(|v| (v.version, v.instances, v.registered, v.held_here))
            .collect()
    };
    let st = admin
        .key_status(KeyStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(st.current, 2);
    assert_eq!(usage(&st), vec![(1, 5, true, true), (2, 1, true, true)]);

    // A gateway without version 1 cannot open what is still under it,
    // and says which key it lacks.
    let only2 = keyring(std::slice::from_ref(&v2));
    let g3 = gateway(&c, Arc::clone(&only2))
        .await
        .expect("gateway with v2");
    let mut client3 =
        ArchiveClient::new(channel_to(&c, &g3, &[ClientRole::Reader, ClientRole::Writer]).await)
            .max_decoding_message_size(8 * 1024 * 1024);
    let e = retrieve(&mut client3, TENANT, &stored[0].0)
        .await
        .expect_err("v1 missing");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("cluster key version 1"), "{e}");

    // Rotate in pages of two, as `kura admin keys rotate --page 2` would.
    let (mut rewrapped, mut pages) = (0, 0);
    let mut after = (String::new(), String::new());
    loop {
        let r = admin
            .rotate_keys(RotateKeysRequest {
                after_tenant: after.0.clone(),
                after_sop_instance_uid: after.1.clone(),
                limit: 2,
            })
            .await
            .expect("rotate")
            .into_inner();
        assert_eq!((r.to_version, r.failed), (2, 0), "{}", r.first_error);
        rewrapped += r.rewrapped;
        pages += 1;
        if r.done {
            break;
        }
        after = (r.next_tenant, r.next_sop_instance_uid);
    }
    assert_eq!(rewrapped, 5);
    assert!(pages >= 3, "{pages} pages");
    // Run again: nothing left to do.
    let r = admin
        .rotate_keys(RotateKeysRequest::default())
        .await
        .expect("rotate again")
        .into_inner();
    assert_eq!((r.rewrapped, r.done), (0, true));
    let st = admin
        .key_status(KeyStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(usage(&st), vec![(1, 0, true, true), (2, 6, true, true)]);

    // Version 1 retired: the gateway with only version 2 reads everything,
    // byte for byte, and recognises an instance stored under version 1.
    for (sop, bytes) in &stored {
        assert_eq!(
            &retrieve(&mut client3, TENANT, sop).await.expect("retrieve"),
            bytes
        );
    }
    let again = store(&mut client3, TENANT, &stored[0].1)
        .await
        .expect("again");
    assert!(again.already_stored);
    // The dev gateway, still on version 1 only, lacks the key of what
    // was stored under version 2.
    let e = retrieve(&mut client, TENANT, &stored[5].0)
        .await
        .expect_err("v2 missing");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("cluster key version 2"), "{e}");
    // A page cursor given by halves is refused.
    let e = admin
        .rotate_keys(RotateKeysRequest {
            after_tenant: TENANT.into(),
            ..Default::default()
        })
        .await
        .expect_err("half a cursor");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    g2.shutdown().await;
    g3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_data_dir_from_before_encryption_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().expect("dir");
    let c = Cluster::start_with(dir, |_| {}).await;
    let Cluster { dev, dir } = c;
    let keys = dev.config().keys_file();
    dev.shutdown().await;
    std::fs::remove_file(&keys).expect("remove the key file");
    let Err(e) = kura_dev::DevCluster::start(crate::harness::config(&dir)).await else {
        panic!("a data dir without its key file restarted");
    };
    let text = e.to_string();
    assert!(
        text.contains("older kura dev, before encryption at rest")
            && text.contains("move the directory away"),
        "{text}"
    );
}

//! Secure by default, against a whole TLS dev cluster: plaintext and
//! foreign-CA callers are refused on every port, every internal client
//! really negotiates TLS, each role gets exactly its calls, and another
//! tenant's instance is indistinguishable from one that does not exist.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kura_auth::certs::{Ca, LEAF_DAYS_DEFAULT};
use kura_auth::{ClientRole, ClientRoles, NodeRole, TlsMaterial, Transport};
use kura_dicom::synthetic::{Synthetic, instance as synthetic, uid};
use kura_proto::meta::{AdminRequest, Voter};
use kura_proto::v1::admin_client::AdminClient;
use kura_proto::v1::archive_client::ArchiveClient;
use kura_proto::v1::internal::raft_client::RaftClient;
use kura_proto::v1::internal::shards_client::ShardsClient as RawShards;
use kura_proto::v1::internal::{
    NodeStatusRequest, RaftPayload, RebuildShardsRequest, RebuildSource,
};
use kura_proto::v1::{
    ListStudyRequest, RetrieveRequest, StatRequest, StatusRequest, StudyProtectionRequest,
};
use tokio::io::AsyncReadExt;
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::{Cluster, TENANT, retrieve, stat, store};

/// A transport with the dev certificate of one process of the cluster.
fn dev_node(c: &Cluster, role: NodeRole, id: u64) -> Transport {
    kura_dev::certs::transport(
        &kura_dev::certs::tls_dir(&c.dev.config().data_dir),
        role,
        id,
    )
    .expect("dev node certificate")
}

async fn channel(t: &Transport, addr: &str) -> Result<Channel, String> {
    t.endpoint(addr)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

fn lazy(t: &Transport, addr: &str) -> Channel {
    t.endpoint(addr).expect("endpoint").connect_lazy()
}

/// A listener standing in for a Kura process: it answers nothing and
/// records the first bytes of every connection.
struct Sniffer {
    addr: String,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sniffer {
    async fn start() -> Sniffer {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = l.accept().await {
                let s = Arc::clone(&s);
                tokio::spawn(async move {
                    let mut buf = [0u8; 5];
                    if conn.read_exact(&mut buf).await.is_ok() {
                        s.lock().expect("lock").push(buf.to_vec());
                    }
                });
            }
        });
        Sniffer { addr, seen, task }
    }

    /// Waits for a first connection; answers its first bytes.
    async fn first(&self, what: &str) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(b) = self.seen.lock().expect("lock").first() {
                return b.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: nothing connected to the stand-in"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every connection so far opened with a TLS handshake record, never
    /// with the HTTP/2 preface of a plaintext client.
    async fn assert_tls(&self, what: &str) {
        let first = self.first(what).await;
        for b in self.seen.lock().expect("lock").iter().chain([&first]) {
            assert_ne!(&b[..], b"PRI *", "{what}: a plaintext HTTP/2 client");
            assert_eq!(b[0], 0x16, "{what}: not a TLS handshake record: {b:?}");
            assert_eq!(b[1], 0x03, "{what}: not TLS: {b:?}");
        }
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plaintext_and_foreign_callers_are_refused_on_every_port() {
    let c = Cluster::start().await;
    let gateway = c.dev.gateway_addr().expect("gateway").to_string();
    let voter = c.dev.meta_endpoints()[0].clone();
    let store_node = c.dev.layout().storage[0].port;
    let store_addr = format!("127.0.0.1:{store_node}");

    // Plaintext on each TLS port: no call gets through.
    for addr in [&gateway, &voter, &store_addr] {
        let plain = lazy(&Transport::Plaintext, addr);
        let e = ArchiveClient::new(plain)
            .stat(StatRequest {
                tenant: TENANT.into(),
                sop_instance_uid: "1.2.3".into(),
            })
            .await
            .expect_err("plaintext answered");
        // The connection fails (how depends on when the server drops it:
        // unavailable, cancelled, unknown); it is never a server's answer.
        assert!(
            matches!(
                e.code(),
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
            ),
            "{addr}: {e:?}"
        );
    }

    // Another CA: its client certificate is refused by the gateway and by
    // internal services, and a client trusting only it refuses the
    // gateway's certificate.
    let other = Ca::generate("another CA", 30).expect("ca");
    let client = other
        .issue_client(
            TENANT,
            ClientRoles::of(&[ClientRole::Reader]),
            "intruder",
            LEAF_DAYS_DEFAULT,
        )
        .expect("client");
    let foreign = Transport::tls(
        TlsMaterial::from_pem(
            other.cert_pem().to_string(),
            Some((client.cert_pem.clone(), client.key_pem.clone())),
        )
        .expect("material"),
    );
    for addr in [&gateway, &voter, &store_addr] {
        let r = channel(&foreign, addr).await;
        assert!(r.is_err(), "{addr}: a foreign CA connected");
    }
    // Our CA, but a certificate of the other one.
    let ours =
        std::fs::read_to_string(kura_dev::certs::tls_dir(&c.dev.config().data_dir).join("ca.pem"))
            .expect("ca.pem");
    let mixed = Transport::tls(
        TlsMaterial::from_pem(ours.clone(), Some((client.cert_pem, client.key_pem)))
            .expect("material"),
    );
    for addr in [&gateway, &voter, &store_addr] {
        let refused = match channel(&mixed, addr).await {
            Err(_) => true,
            Ok(ch) => ArchiveClient::new(ch)
                .stat(StatRequest {
                    tenant: TENANT.into(),
                    sop_instance_uid: "1.2.3".into(),
                })
                .await
                .is_err_and(|e| e.code() != Code::NotFound),
        };
        assert!(refused, "{addr}: a certificate of another CA was accepted");
    }
    // TLS with our CA and no certificate: internal services refuse the
    // handshake; the gateway answers UNAUTHENTICATED.
    let anonymous = Transport::tls(TlsMaterial::from_pem(ours, None).expect("material"));
    for addr in [&voter, &store_addr] {
        let r = match channel(&anonymous, addr).await {
            Err(_) => true,
            Ok(ch) => RawShards::new(ch)
                .node_status(NodeStatusRequest {})
                .await
                .is_err(),
        };
        assert!(r, "{addr}: a caller without certificate got through");
    }
    let e = ArchiveClient::new(channel(&anonymous, &gateway).await.expect("connect"))
        .stat(StatRequest {
            tenant: TENANT.into(),
            sop_instance_uid: "1.2.3".into(),
        })
        .await
        .expect_err("anonymous");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = AdminClient::new(channel(&anonymous, &gateway).await.expect("connect"))
        .status(StatusRequest { brief: true })
        .await
        .expect_err("anonymous admin");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    c.dev.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_internal_client_negotiates_tls() {
    let c = Cluster::start().await;

    // Gateway -> storage node: AddNode asks the new node who it is.
    let sniff = Sniffer::start().await;
    let admin_ch = c.channel_as(TENANT, &[ClientRole::Admin]).await;
    let probe = tokio::spawn({
        let addr = sniff.addr.clone();
        async move {
            let _ = AdminClient::new(admin_ch)
                .add_node(kura_proto::v1::AddNodeRequest {
                    id: 99,
                    site: "site-a".into(),
                    addr,
                    name: String::new(),
                })
                .await;
        }
    });
    sniff.assert_tls("gateway -> storage node").await;
    probe.abort();

    // Voter -> voter (Raft): a learner at the stand-in gets replication.
    let sniff = Sniffer::start().await;
    let meta = c.meta();
    let learner = tokio::spawn({
        let addr = sniff.addr.clone();
        async move {
            let _ = meta
                .admin(&AdminRequest::AddLearner {
                    voter: Voter { id: 77, addr },
                })
                .await;
        }
    });
    sniff.assert_tls("voter -> voter (Raft)").await;
    learner.abort();

    // Storage node -> storage node (rebuild): sources at the stand-in.
    let sniff = Sniffer::start().await;
    let ec = kura_erasure::EcParams::default();
    let total = usize::from(ec.data_shards + ec.parity_shards);
    let store_addr = format!("127.0.0.1:{}", c.dev.layout().storage[0].port);
    let rebuild = tokio::spawn({
        let ch = lazy(&c.node_transport(), &store_addr);
        let src = sniff.addr.clone();
        async move {
            let _ = RawShards::new(ch)
                .rebuild_shards(RebuildShardsRequest {
                    object_key: vec![7u8; 32].into(),
                    segment: 0,
                    data_shards: u32::from(ec.data_shards),
                    parity_shards: u32::from(ec.parity_shards),
                    segment_bytes: ec.segment_bytes,
                    code: u32::from(ec.code.id()),
                    data_len: 1024,
                    shard_blake3: (0..total).map(|_| vec![1u8; 32].into()).collect(),
                    want: vec![0],
                    sources: (1..total as u32)
                        .map(|i| RebuildSource {
                            index: i,
                            node: 100 + u64::from(i),
                            addr: src.clone(),
                        })
                        .collect(),
                })
                .await;
        }
    });
    sniff
        .assert_tls("storage node -> storage node (rebuild)")
        .await;
    rebuild.abort();

    // Gateway -> voter, and storage node -> voter (usage reports): a
    // gateway and a storage node of this cluster's CA whose voter is the
    // stand-in.
    let sniff = Sniffer::start().await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    // The gateway's first call to a voter is at start: it checks its
    // cluster keys there.
    let gc = kura_gateway::GatewayConfig::new(
        vec![sniff.addr.clone()],
        dev_node(&c, NodeRole::Gateway, 0),
        c.dev.config().keyring().expect("cluster keys"),
    );
    let start = tokio::spawn(async move {
        let _ = kura_gateway::Gateway::start(gc, l, None).await;
    });
    sniff.assert_tls("gateway -> voter").await;
    start.abort();

    let sniff = Sniffer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let mut sc = kura_store::StoreConfig::new(5, dir.path());
    sc.meta_endpoints = vec![sniff.addr.clone()];
    sc.report_interval = Duration::from_millis(100);
    sc.transport = dev_node(&c, NodeRole::Store, 5);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let node = kura_store::StorageNode::start(sc, l)
        .await
        .expect("storage node");
    sniff.assert_tls("storage node -> voter (reports)").await;
    node.shutdown().await.expect("shutdown");
    c.dev.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_identity_gets_exactly_its_calls() {
    let c = Cluster::start().await;
    let gateway = c.dev.gateway_addr().expect("gateway").to_string();
    let voter = c.dev.meta_endpoints()[0].clone();
    let store_addr = format!("127.0.0.1:{}", c.dev.layout().storage[0].port);

    // Node identities against internal services.
    let raft = |t: Transport| {
        let ch = lazy(&t, &voter);
        async move {
            RaftClient::new(ch)
                .vote(RaftPayload {
                    bincode: vec![0xff; 3].into(),
                })
                .await
                .map(|_| ())
                .map_err(|e| e.code())
        }
    };
    let status = |t: Transport| {
        let ch = lazy(&t, &store_addr);
        async move {
            RawShards::new(ch)
                .node_status(NodeStatusRequest {})
                .await
                .map(|_| ())
                .map_err(|e| e.code())
        }
    };
    let list = |t: Transport| {
        let ch = lazy(&t, &store_addr);
        async move {
            RawShards::new(ch)
                .delete_shard(kura_proto::v1::internal::DeleteShardRequest::default())
                .await
                .map(|_| ())
                .map_err(|e| e.code())
        }
    };
    let store_node = dev_node(&c, NodeRole::Store, 1);
    let gateway_node = dev_node(&c, NodeRole::Gateway, 0);
    let voter_node = dev_node(&c, NodeRole::Meta, 2);
    // A storage node may not speak Raft; a voter may (the garbage payload
    // is refused after the check, as INVALID_ARGUMENT).
    assert_eq!(raft(store_node.clone()).await, Err(Code::PermissionDenied));
    assert_eq!(
        raft(gateway_node.clone()).await,
        Err(Code::PermissionDenied)
    );
    assert_ne!(raft(voter_node.clone()).await, Err(Code::PermissionDenied));
    // Shards: gateways and storage nodes; a voter only NodeStatus.
    assert_eq!(status(gateway_node.clone()).await, Ok(()));
    assert_eq!(status(store_node.clone()).await, Ok(()));
    assert_eq!(status(voter_node.clone()).await, Ok(()));
    assert_eq!(list(voter_node.clone()).await, Err(Code::PermissionDenied));
    assert_ne!(
        list(gateway_node.clone()).await,
        Err(Code::PermissionDenied)
    );
    // Meta: nodes, never clients.
    let meta_as =
        |t: Transport| kura_proto::meta_client::MetaClient::new(c.dev.meta_endpoints().to_vec(), t);
    assert!(
        meta_as(store_node.clone())
            .admin(&AdminRequest::Status)
            .await
            .is_ok()
    );
    let writer = c
        .dev
        .client_transport(TENANT, &[ClientRole::Writer, ClientRole::Reader])
        .expect("client");
    let e = meta_as(writer.clone())
        .admin(&AdminRequest::Status)
        .await
        .expect_err("a client on Meta");
    assert!(
        e.to_string().contains("PermissionDenied") || e.to_string().contains("may not call"),
        "{e}"
    );
    // A storage node's certificate on the Admin API.
    let e = AdminClient::new(lazy(&store_node, &gateway))
        .status(StatusRequest { brief: true })
        .await
        .expect_err("a node on Admin");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Client roles against the public API.
    let s = Synthetic {
        study: uid("50", 1),
        series: uid("51", 1),
        sop: uid("52", 1),
    };
    let bytes = synthetic(&s, 64 * 1024, 5);
    let c = &c;
    let as_role = |role: ClientRole| async move { c.client_as(TENANT, &[role]).await };
    // reader: no Store.
    let e = store(&mut as_role(ClientRole::Reader).await, "", &bytes)
        .await
        .expect_err("reader stores");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // writer: Store (tenant from the credential), no Retrieve or Stat.
    let mut w = as_role(ClientRole::Writer).await;
    let ok = store(&mut w, "", &bytes).await.expect("writer stores");
    assert_eq!(ok.info.expect("info").tenant, TENANT);
    assert_eq!(
        retrieve(&mut w, "", &s.sop)
            .await
            .expect_err("writer reads")
            .code(),
        Code::PermissionDenied
    );
    // reader: Retrieve, Stat, ListStudy, StudyProtection.
    let mut r = as_role(ClientRole::Reader).await;
    assert_eq!(retrieve(&mut r, TENANT, &s.sop).await.expect("read"), bytes);
    stat(&mut r, "", &s.sop).await.expect("stat");
    r.list_study(ListStudyRequest {
        tenant: String::new(),
        study_instance_uid: s.study.clone(),
        series_instance_uid: None,
    })
    .await
    .expect("list");
    r.study_protection(StudyProtectionRequest {
        tenant: String::new(),
        study_instance_uid: s.study.clone(),
    })
    .await
    .expect("protection");
    // A request naming another tenant is refused before anything is read.
    let e = stat(&mut r, "someone-else", &s.sop)
        .await
        .expect_err("tenant");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // admin: the Admin API only; auditor: none of these.
    let admin_ch = c.channel_as(TENANT, &[ClientRole::Admin]).await;
    AdminClient::new(admin_ch.clone())
        .status(StatusRequest { brief: true })
        .await
        .expect("admin status");
    let e = ArchiveClient::new(admin_ch)
        .stat(StatRequest {
            tenant: String::new(),
            sop_instance_uid: s.sop.clone(),
        })
        .await
        .expect_err("admin reads");
    assert_eq!(e.code(), Code::PermissionDenied);
    let auditor = c.channel_as(TENANT, &[ClientRole::Auditor]).await;
    for e in [
        AdminClient::new(auditor.clone())
            .status(StatusRequest { brief: true })
            .await
            .expect_err("auditor admin"),
        ArchiveClient::new(auditor)
            .retrieve(RetrieveRequest {
                tenant: String::new(),
                sop_instance_uid: s.sop.clone(),
            })
            .await
            .expect_err("auditor reads"),
    ] {
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
}

/// What a reader of `tenant` is told about `uid`: every field of every
/// answer, for a byte-for-byte comparison.
async fn probe(c: &Cluster, tenant: &str, uid: &str, study: &str) -> Vec<String> {
    let mut r = c.client_as(tenant, &[ClientRole::Reader]).await;
    let show = |e: tonic::Status| {
        format!(
            "{:?} {:?} {:?}",
            e.code(),
            e.message(),
            hex::encode(e.details())
        )
    };
    let mut out = Vec::new();
    out.push(show(stat(&mut r, "", uid).await.expect_err("stat")));
    out.push(show(retrieve(&mut r, "", uid).await.expect_err("retrieve")));
    out.push(show(
        r.list_study(ListStudyRequest {
            tenant: String::new(),
            study_instance_uid: study.into(),
            series_instance_uid: None,
        })
        .await
        .expect_err("list"),
    ));
    out.push(show(
        r.study_protection(StudyProtectionRequest {
            tenant: String::new(),
            study_instance_uid: study.into(),
        })
        .await
        .expect_err("protection"),
    ));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_tenants_instance_is_indistinguishable_from_none() {
    let c = Cluster::start().await;
    let s = Synthetic {
        study: uid("60", 1),
        series: uid("61", 1),
        sop: uid("62", 1),
    };
    // What tenant "peer" hears of the UID before it exists anywhere…
    let before = probe(&c, "peer", &s.sop, &s.study).await;
    for answer in &before {
        assert!(answer.starts_with("NotFound"), "{answer}");
    }
    // …and after tenant e2e stored it: byte for byte the same.
    let bytes = synthetic(&s, 32 * 1024, 6);
    store(&mut c.client().await, TENANT, &bytes)
        .await
        .expect("store");
    let after = probe(&c, "peer", &s.sop, &s.study).await;
    assert_eq!(before, after);
    // The owner sees it.
    stat(&mut c.client().await, TENANT, &s.sop)
        .await
        .expect("owner stat");
    c.dev.shutdown().await;
}

/// A gateway of this cluster started beside the dev cluster's own.
async fn second_gateway(c: &Cluster) -> kura_gateway::Gateway {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut gc = kura_gateway::GatewayConfig::new(
        c.dev.meta_endpoints().to_vec(),
        dev_node(c, NodeRole::Gateway, 0),
        c.dev.config().keyring().expect("cluster keys"),
    );
    gc.repair = None;
    kura_gateway::Gateway::start(gc, l, None)
        .await
        .expect("second gateway")
}

/// A client presenting `token` (TLS with the CA only).
async fn with_token(
    c: &Cluster,
    addr: &str,
    token: &str,
) -> ArchiveClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        impl tonic::service::Interceptor + use<>,
    >,
> {
    let ca =
        std::fs::read_to_string(kura_dev::certs::tls_dir(&c.dev.config().data_dir).join("ca.pem"))
            .expect("ca.pem");
    let t = Transport::tls(TlsMaterial::from_pem(ca, None).expect("material"));
    let ch = channel(&t, addr).await.expect("connect");
    let header: tonic::metadata::MetadataValue<_> =
        format!("Bearer {token}").parse().expect("header");
    ArchiveClient::with_interceptor(ch, move |mut r: tonic::Request<()>| {
        r.metadata_mut().insert("authorization", header.clone());
        Ok(r)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_work_everywhere_and_revocation_reaches_every_gateway() {
    let c = Cluster::start().await;
    let g1 = c.dev.gateway_addr().expect("gateway").to_string();
    let g2 = second_gateway(&c).await;
    let g2_addr = g2.addr().to_string();
    let mut admin = AdminClient::new(c.channel_as(TENANT, &[ClientRole::Admin]).await);
    let created = admin
        .create_token(kura_proto::v1::CreateTokenRequest {
            tenant: String::new(),
            roles: "reader+writer".into(),
            label: "pacs-test".into(),
        })
        .await
        .expect("create token")
        .into_inner();
    let token = created.token.expect("token");
    assert_eq!(token.tenant, TENANT);
    assert!(created.secret.starts_with("kura_"));
    // Only the hash is kept: the list never shows the secret.
    let listed = admin
        .list_tokens(kura_proto::v1::ListTokensRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(listed.tokens.iter().any(|t| t.id == token.id));
    assert!(!format!("{listed:?}").contains(&created.secret[5..]));

    // It stores on one gateway and reads on the other.
    let s = Synthetic {
        study: uid("80", 1),
        series: uid("81", 1),
        sop: uid("82", 1),
    };
    let bytes = synthetic(&s, 16 * 1024, 8);
    let mut on1 = with_token(&c, &g1, &created.secret).await;
    on1.store(tokio_stream::iter(kura_testkit::store_messages(
        "", &bytes, 8192,
    )))
    .await
    .expect("store with a token");
    let mut on2 = with_token(&c, &g2_addr, &created.secret).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = on2
            .stat(StatRequest {
                tenant: String::new(),
                sop_instance_uid: s.sop.clone(),
            })
            .await;
        if r.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A wrong token: UNAUTHENTICATED.
    let mut wrong = with_token(&c, &g1, "kura_0000").await;
    let e = wrong
        .stat(StatRequest {
            tenant: String::new(),
            sop_instance_uid: s.sop.clone(),
        })
        .await
        .expect_err("wrong token");
    assert_eq!(e.code(), Code::Unauthenticated);

    // Revoked on gateway 1: refused on gateway 2 within seconds.
    admin
        .revoke_token(kura_proto::v1::RevokeTokenRequest {
            id: token.id.clone(),
        })
        .await
        .expect("revoke");
    let revoked = tokio::time::Instant::now();
    loop {
        let r = on2
            .stat(StatRequest {
                tenant: String::new(),
                sop_instance_uid: s.sop.clone(),
            })
            .await;
        match r {
            Err(e) if e.code() == Code::Unauthenticated => break,
            other => {
                assert!(
                    revoked.elapsed() < Duration::from_secs(10),
                    "the revoked token still works on the second gateway: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!(
        "revocation reached the second gateway in {:?}",
        revoked.elapsed()
    );
    // Another tenant's admin cannot revoke (or see) this tenant's tokens.
    let mut other_admin = AdminClient::new(c.channel_as("peer", &[ClientRole::Admin]).await);
    let e = other_admin
        .revoke_token(kura_proto::v1::RevokeTokenRequest {
            id: token.id.clone(),
        })
        .await
        .expect_err("cross-tenant revoke");
    assert_eq!(e.code(), Code::NotFound);
    g2.shutdown().await;
    c.dev.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_call_allowed_or_refused_is_audited_in_a_verified_chain() {
    let c = Cluster::start().await;
    let gateway = c.dev.gateway_addr().expect("gateway").to_string();
    let s = Synthetic {
        study: uid("90", 1),
        series: uid("91", 1),
        sop: uid("92", 1),
    };
    let bytes = synthetic(&s, 16 * 1024, 9);
    let stored = store(&mut c.client().await, "", &bytes)
        .await
        .expect("store");
    let patient = stored.info.expect("info").patient_id;
    assert!(!patient.is_empty());
    retrieve(&mut c.client().await, "", &s.sop)
        .await
        .expect("retrieve");
    // Refused: no certificate; the wrong role; another tenant.
    let ca =
        std::fs::read_to_string(kura_dev::certs::tls_dir(&c.dev.config().data_dir).join("ca.pem"))
            .expect("ca.pem");
    let anonymous = Transport::tls(TlsMaterial::from_pem(ca, None).expect("material"));
    let _ = ArchiveClient::new(channel(&anonymous, &gateway).await.expect("connect"))
        .stat(StatRequest {
            tenant: String::new(),
            sop_instance_uid: s.sop.clone(),
        })
        .await
        .expect_err("anonymous");
    let _ = store(
        &mut c.client_as(TENANT, &[ClientRole::Reader]).await,
        "",
        &bytes,
    )
    .await
    .expect_err("a reader stores");
    let _ = stat(
        &mut c.client_as("peer", &[ClientRole::Reader]).await,
        "",
        &s.sop,
    )
    .await
    .expect_err("another tenant");
    let _ = AdminClient::new(lazy(&dev_node(&c, NodeRole::Store, 1), &gateway))
        .status(StatusRequest { brief: true })
        .await
        .expect_err("a node on Admin");
    // A storage node's certificate on Raft: refused by the voter, audited
    // by it (asynchronously).
    let voter = c.dev.meta_endpoints()[0].clone();
    let _ = RaftClient::new(lazy(&dev_node(&c, NodeRole::Store, 1), &voter))
        .vote(RaftPayload {
            bincode: vec![0u8; 4].into(),
        })
        .await
        .expect_err("raft from a storage node");

    let auditor = c.channel_as(TENANT, &[ClientRole::Auditor]).await;
    let mut audit = kura_proto::v1::audit_client::AuditClient::new(auditor);
    let all = |audit: &mut kura_proto::v1::audit_client::AuditClient<Channel>,
               q: kura_proto::v1::AuditQueryRequest| {
        let mut audit = audit.clone();
        async move {
            let mut st = audit.query(q).await.expect("query").into_inner();
            let mut out = Vec::new();
            while let Some(e) = st.message().await.expect("entry") {
                out.push(e);
            }
            out
        }
    };
    let mine = all(&mut audit, kura_proto::v1::AuditQueryRequest::default()).await;
    let find = |action: &str, outcome: &str| {
        mine.iter()
            .find(|e| e.action == action && e.outcome == outcome)
            .unwrap_or_else(|| panic!("no {action} {outcome} entry in {mine:#?}"))
    };
    let st = find("Store", "OK");
    assert_eq!(st.sop_instance_uid, s.sop);
    assert_eq!(st.study_instance_uid, s.study);
    assert_eq!(st.patient_id, patient);
    assert!(st.who.contains("e2e"), "{st:?}");
    assert!(st.peer.starts_with("127.0.0.1:"), "{st:?}");
    let rt = find("Retrieve", "OK");
    assert_eq!(rt.patient_id, patient);
    find("Store", "PERMISSION_DENIED");
    // The auditor of tenant e2e sees only e2e's entries; the refused calls
    // of others are in the trail under their tenant (or none).
    assert!(mine.iter().all(|e| e.tenant == TENANT), "{mine:#?}");
    let peer_auditor = c.channel_as("peer", &[ClientRole::Auditor]).await;
    let theirs = all(
        &mut kura_proto::v1::audit_client::AuditClient::new(peer_auditor),
        kura_proto::v1::AuditQueryRequest::default(),
    )
    .await;
    let cross = theirs
        .iter()
        .find(|e| e.action == "Stat" && e.outcome == "NOT_FOUND")
        .expect("the cross-tenant stat, in the peer's trail");
    assert_eq!(cross.sop_instance_uid, s.sop);
    assert!(
        cross.patient_id.is_empty(),
        "nothing of e2e's patient leaks"
    );
    // Filters: by patient and by UID.
    let by_patient = all(
        &mut audit,
        kura_proto::v1::AuditQueryRequest {
            patient_id: patient.clone(),
            ..Default::default()
        },
    )
    .await;
    assert!(by_patient.len() >= 2 && by_patient.iter().all(|e| e.patient_id == patient));
    // Another tenant named by an auditor: refused.
    let e = audit
        .query(kura_proto::v1::AuditQueryRequest {
            tenant: "peer".into(),
            ..Default::default()
        })
        .await
        .expect_err("cross-tenant audit query");
    assert_eq!(e.code(), Code::PermissionDenied);
    // A writer may not read the trail.
    let e = kura_proto::v1::audit_client::AuditClient::new(
        c.channel_as(TENANT, &[ClientRole::Writer]).await,
    )
    .query(kura_proto::v1::AuditQueryRequest::default())
    .await
    .expect_err("writer reads audit");
    assert_eq!(e.code(), Code::PermissionDenied);

    // The whole trail (a plaintext view is not available: check through
    // the metadata cluster as a node) holds the refusals without tenant:
    // anonymous, the node on Admin, the node on Raft.
    let meta = c.meta();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = meta
            .query(&kura_proto::meta::Query::AuditPage {
                from: 0,
                limit: 1000,
                consistency: kura_proto::meta::Consistency::Linearizable,
            })
            .await
            .expect("audit page");
        let kura_proto::meta::QueryResult::AuditPage { entries, .. } = page else {
            panic!("unexpected answer");
        };
        let has = |action: &str, outcome: &str| {
            entries
                .iter()
                .any(|e| e.record.action == action && e.record.outcome == outcome)
        };
        if has("Stat", "UNAUTHENTICATED")
            && has("Admin.Status", "PERMISSION_DENIED")
            && has("Raft.Vote", "PERMISSION_DENIED")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "refusals missing from {:#?}",
            entries
                .iter()
                .map(|e| (&e.record.action, &e.record.outcome))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The chain verifies on every voter.
    let v = audit
        .verify(kura_proto::v1::AuditVerifyRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(v.ok, "{v:#?}");
    assert_eq!(v.voters.len(), 3);
    assert!(v.voters.iter().all(|x| x.ok && x.entries > 5), "{v:#?}");
    c.dev.shutdown().await;
}

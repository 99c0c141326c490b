//! Repair: lost nodes rebuilt elsewhere (newest first, same-site reads
//! preferred, resumed after a restart), damaged shards rewritten in place,
//! under-protected writes re-protected once their site returns.

use std::time::Duration;

use kura_dicom::synthetic::{Synthetic, instance as synthetic, uid};
use kura_gateway::RepairConfig;
use kura_placement::{Manifest, NodeState, Protection};
use kura_proto::meta::{Consistency, Query, QueryResult};
use kura_proto::meta_client::MetaClient;
use kura_proto::shards_client::ShardId;

use crate::harness::{Cluster, TENANT, manifest, retrieve, store};

fn fast(cfg: &mut kura_dev::DevConfig) {
    cfg.report_interval = Duration::from_millis(200);
    cfg.meta_timeouts.node_down_after = Duration::from_millis(1500);
    cfg.meta_timeouts.node_lost_after = Duration::from_secs(3);
    cfg.repair = Some(RepairConfig {
        idle_interval: Duration::from_millis(300),
        ..RepairConfig::default()
    });
}

async fn on_node(meta: &MetaClient, node: u64) -> usize {
    match meta
        .query(&Query::ManifestsOnNode {
            node,
            after: None,
            limit: 1000,
            consistency: Consistency::Linearizable,
        })
        .await
    {
        Ok(QueryResult::ManifestPage { manifests, .. }) => manifests.len(),
        other => panic!("manifests on node {node}: {other:?}"),
    }
}

async fn under_protected(meta: &MetaClient) -> u64 {
    match meta
        .query(&Query::CountManifests {
            consistency: Consistency::Linearizable,
        })
        .await
    {
        Ok(QueryResult::ManifestCounts {
            under_protected, ..
        }) => under_protected,
        other => panic!("counts: {other:?}"),
    }
}

/// Waits until repair moved every shard off `victim` and every instance
/// is fully protected.
async fn until_repaired(meta: &MetaClient, victim: u64) {
    until(
        "repair moves every shard off the lost node",
        Duration::from_secs(60),
        || async { on_node(meta, victim).await == 0 },
    )
    .await;
    until(
        "every instance fully protected",
        Duration::from_secs(30),
        || async { under_protected(meta).await == 0 },
    )
    .await;
}

async fn node_state(meta: &MetaClient, id: u64) -> Option<NodeState> {
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

async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> F,
) {
    let end = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < end, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stores `n` instances of study `tag`, one after the other (so their
/// stored times increase); answers (uid, bytes).
async fn fill(c: &Cluster, tag: &str, n: u64, size: u32) -> Vec<(String, Vec<u8>)> {
    let mut client = c.client().await;
    let mut out = Vec::new();
    for i in 0..n {
        let s = Synthetic {
            study: uid(tag, 1),
            series: uid(tag, 2),
            sop: uid(tag, 100 + i),
        };
        let bytes = synthetic(&s, size, i);
        store(&mut client, TENANT, &bytes).await.expect("store");
        out.push((s.sop, bytes));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    out
}

async fn read_all(c: &Cluster, stored: &[(String, Vec<u8>)], what: &str) {
    let mut client = c.client().await;
    for (sop, bytes) in stored {
        let got = retrieve(&mut client, TENANT, sop)
            .await
            .unwrap_or_else(|e| panic!("{what}: {sop} unreadable: {e:?}"));
        assert!(got == *bytes, "{what}: {sop} read back different bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_node_is_rebuilt_newest_first_and_repair_resumes_after_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    // 3 sites x 4 nodes: a free node in every site to rebuild into. A slow
    // rate so the restart lands mid-repair.
    let mut c = Cluster::start_with(dir, |cfg| {
        fast(cfg);
        cfg.nodes_per_site = 4;
        // One instance at a time, so the order of repair is observable.
        cfg.repair = Some(RepairConfig {
            idle_interval: Duration::from_millis(300),
            rate_bytes_per_sec: 300 * 1024,
            concurrency: 1,
            ..RepairConfig::default()
        });
    })
    .await;
    let meta = c.meta();
    let stored = fill(&c, "71", 10, 200 * 1024).await;
    let victim = 2u64;
    let held = on_node(&meta, victim).await;
    assert!(held > 0, "node {victim} holds shards of some instance");

    // The node dies with its disk.
    c.dev.stop_storage_node(victim).await.expect("stop");
    std::fs::remove_dir_all(c.dev.storage_dir(victim)).expect("remove its data");
    until(
        "the node is declared lost",
        Duration::from_secs(20),
        || async { node_state(&meta, victim).await == Some(NodeState::Lost) },
    )
    .await;
    // Reads go on meanwhile.
    read_all(&c, &stored, "node lost").await;

    // Some progress, then the whole cluster stops and starts again.
    let repair = c.dev.repair().expect("repair runs");
    until(
        "repair rebuilds a first instance",
        Duration::from_secs(30),
        || {
            let s = repair.status();
            async move { s.instances_repaired >= 1 }
        },
    )
    .await;
    let left_before_restart = on_node(&meta, victim).await;
    assert!(
        left_before_restart > 0,
        "the restart must land mid-repair ({held} to repair)"
    );
    let config = c.dev.config().clone();
    c.dev.shutdown().await;
    c.dev = kura_dev::DevCluster::start(config).await.expect("restart");
    // The restarted node is a fresh, empty one: still lost in the map.
    let meta = c.meta();
    until_repaired(&meta, victim).await;

    // Exact bytes, with the repaired shards actually used: stop one more
    // node of every site (each segment loses up to 3 shards of 9).
    for id in [1u64, 5, 9] {
        c.dev.stop_storage_node(id).await.expect("stop");
    }
    read_all(&c, &stored, "repaired, three more nodes stopped").await;
    for id in [1u64, 5, 9] {
        c.dev.start_storage_node(id).await.expect("start");
    }

    // Newest first: the later an instance was stored, the earlier its
    // repair was recorded (among those that held a shard on the victim).
    let mut repaired = Vec::new();
    for (sop, _) in &stored {
        let m = manifest(&meta, sop).await;
        assert_eq!(m.protection, Protection::Full, "{sop}");
        if m.version > 1 {
            repaired.push((m.stored_at_unix_ms, m.updated_at_unix_ms));
        }
    }
    assert_eq!(repaired.len(), held, "every affected instance was updated");
    repaired.sort();
    // Repairs done before the restart are the newest and came first; the
    // check holds across the restart because the queue is rebuilt in the
    // same order.
    for pair in repaired.windows(2) {
        assert!(
            pair[0].1 >= pair[1].1,
            "an older instance was repaired before a newer one: {repaired:?}"
        );
    }

    // Same-site reads first: the target site holds 2 of each segment's 9
    // shards after the loss, so of the k = 5 read, 3 cross sites.
    let s = c.dev.repair().expect("repair").status();
    assert!(s.bytes_read > 0 && s.shards_rebuilt > 0, "{s:?}");
    assert!(
        s.cross_site_bytes * 5 <= s.bytes_read * 3,
        "repair read more across sites than it had to: {s:?}"
    );
    c.dev.shutdown().await;
}

/// Flips a byte in the middle of the file of shard `index` of segment
/// `segment` of `m`, on its holder.
fn flip_shard(c: &Cluster, m: &Manifest, segment: u32, index: u8) {
    let holder = m.segments[segment as usize].shards[usize::from(index)]
        .node
        .expect("placed");
    let name = format!("{}-{segment}-{index}.", hex::encode(m.object_key));
    let mut stack = vec![c.dev.storage_dir(holder).join("shards")];
    let mut flipped = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&name))
            {
                let mut bytes = std::fs::read(&path).expect("read shard");
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x5a;
                std::fs::write(&path, bytes).expect("write shard");
                flipped += 1;
            }
        }
    }
    assert_eq!(flipped, 1, "found the file of shard {segment}/{index}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_shards_count_in_the_protection_answers() {
    let dir = tempfile::tempdir().expect("dir");
    // No repair: the damage must stay for the answers to show it.
    let c = Cluster::start_with(dir, |cfg| {
        fast(cfg);
        cfg.repair = None;
    })
    .await;
    let meta = c.meta();
    let stored = fill(&c, "74", 3, 200 * 1024).await;
    let (lost, risky) = (&stored[0].0, &stored[1].0);
    let study = uid("74", 1);
    // Five of nine shards of the first instance damaged (fewer than k = 5
    // good remain), two of the second (readable, but a site loss now
    // costs more than it can spare), none of the third.
    let lost_m = manifest(&meta, lost).await;
    for i in 0..5 {
        flip_shard(&c, &lost_m, 0, i);
    }
    let risky_m = manifest(&meta, risky).await;
    for i in 0..2 {
        flip_shard(&c, &risky_m, 0, i);
    }
    // Reads find the damage; the nodes quarantine and report it.
    let mut client = c.client().await;
    let e = retrieve(&mut client, TENANT, lost)
        .await
        .expect_err("five of nine shards damaged");
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e:?}");
    read_all(&c, &stored[1..], "two shards of one damaged").await;
    until("the damage is recorded", Duration::from_secs(20), || async {
        matches!(
            meta.query(&Query::Damaged { after: None, limit: 100, consistency: Consistency::Linearizable }).await,
            Ok(QueryResult::DamagedPage { shards, .. }) if shards.len() == 7
        )
    })
    .await;
    // Admin.Protection counts them.
    let mut admin = kura_proto::v1::admin_client::AdminClient::new(
        c.channel_as(TENANT, &[kura_auth::ClientRole::Admin]).await,
    );
    let p = admin
        .protection(kura_proto::v1::ProtectionRequest {})
        .await
        .expect("protection")
        .into_inner();
    assert_eq!((p.instances, p.unreadable, p.at_risk), (3, 1, 1), "{p:?}");
    // StudyProtection names both instances and says why.
    let mut reader = c.client().await;
    let sp = reader
        .study_protection(kura_proto::v1::StudyProtectionRequest {
            tenant: TENANT.into(),
            study_instance_uid: study.clone(),
        })
        .await
        .expect("study protection")
        .into_inner();
    assert_eq!(
        (sp.instances, sp.unreadable, sp.at_risk),
        (3, 1, 1),
        "{sp:?}"
    );
    assert!(!sp.survives_site_loss, "{sp:?}");
    use kura_proto::v1::instance_protection::State;
    let named: Vec<_> = sp
        .attention
        .iter()
        .map(|a| (a.sop_instance_uid.as_str(), a.state))
        .collect();
    assert!(
        named.contains(&(lost.as_str(), State::Unreadable as i32)),
        "{sp:?}"
    );
    assert!(
        named.contains(&(risky.as_str(), State::AtRisk as i32)),
        "{sp:?}"
    );
    let why = &sp
        .attention
        .iter()
        .find(|a| a.sop_instance_uid == *lost)
        .expect("named")
        .why;
    assert!(why.contains("4 good shards, 5 are needed"), "{why}");
    c.dev.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_shards_are_rewritten_on_their_node() {
    let dir = tempfile::tempdir().expect("dir");
    let c = Cluster::start_with(dir, fast).await;
    let meta = c.meta();
    let stored = fill(&c, "72", 3, 300 * 1024).await;
    // The holder of data shard 0 of the first instance: every read uses it.
    let m = manifest(&meta, &stored[0].0).await;
    let victim = m.segments[0].shards[0].node.expect("placed");
    let id = ShardId {
        object_key: m.object_key,
        segment: 0,
        index: 0,
    };
    flip_shard(&c, &m, 0, 0);
    // The read is correct and makes the node quarantine the shard.
    read_all(&c, &stored, "one shard corrupt").await;
    let addr = c.dev.storage_node(victim).expect("runs").addr().to_string();
    let node = c.shards(&addr);
    // Reported, rebuilt on the same node, and served again.
    until(
        "the damaged shard is rewritten",
        Duration::from_secs(30),
        || {
            let node = node.clone();
            async move { node.get_shard(&id, None).await.is_ok() }
        },
    )
    .await;
    until("the damage record is cleared", Duration::from_secs(10), || async {
        matches!(
            meta.query(&Query::Damaged { after: None, limit: 10, consistency: Consistency::Linearizable }).await,
            Ok(QueryResult::DamagedPage { shards, .. }) if shards.is_empty()
        )
    })
    .await;
    let s = c.dev.repair().expect("repair").status();
    assert!(s.damaged_rewritten >= 1, "{s:?}");
    // The manifest did not change: the same node holds the same shard.
    assert_eq!(manifest(&meta, &stored[0].0).await.version, m.version);
    read_all(&c, &stored, "after the rewrite").await;
    c.dev.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_during_a_site_outage_regain_site_loss_tolerance() {
    let dir = tempfile::tempdir().expect("dir");
    let mut c = Cluster::start_with(dir, |cfg| {
        fast(cfg);
        // Down for the outage, never lost: the site comes back.
        cfg.meta_timeouts.node_lost_after = Duration::from_secs(600);
    })
    .await;
    let meta = c.meta();
    // Site 3 (nodes 7, 8, 9) goes dark.
    for id in [7u64, 8, 9] {
        c.dev.stop_storage_node(id).await.expect("stop");
    }
    until("site 3 is down", Duration::from_secs(15), || async {
        node_state(&meta, 9).await == Some(NodeState::Down)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // gateway's cached map
    let stored = fill(&c, "73", 4, 300 * 1024).await;
    assert_eq!(under_protected(&meta).await, 4, "written under-protected");
    // The site returns: repair places the missing shards there and moves
    // some out of the overfull sites.
    for id in [7u64, 8, 9] {
        c.dev.start_storage_node(id).await.expect("start");
    }
    until(
        "every write fully protected",
        Duration::from_secs(40),
        || async { under_protected(&meta).await == 0 },
    )
    .await;
    for (sop, _) in &stored {
        let m = manifest(&meta, sop).await;
        assert_eq!(m.protection, Protection::Full);
        assert!(
            m.segments
                .iter()
                .all(|s| s.shards.iter().all(|sh| sh.node.is_some())),
            "every shard placed"
        );
    }
    // And now any one site may go: site 1 stops.
    for id in [1u64, 2, 3] {
        c.dev.stop_storage_node(id).await.expect("stop");
    }
    read_all(&c, &stored, "site 1 stopped after repair").await;
    c.dev.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_rebuild_each_lost_shard_once() {
    let dir = tempfile::tempdir().expect("dir");
    let repair = RepairConfig {
        idle_interval: Duration::from_millis(200),
        ..RepairConfig::default()
    };
    let mut c = Cluster::start_with(dir, |cfg| {
        fast(cfg);
        cfg.nodes_per_site = 4;
        cfg.repair = Some(repair.clone());
    })
    .await;
    // A second gateway repairing the same cluster, with its own lease name.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut gc = kura_gateway::GatewayConfig::new(
        c.dev.meta_endpoints().to_vec(),
        kura_dev::certs::transport(
            &kura_dev::certs::tls_dir(&c.dev.config().data_dir),
            kura_auth::NodeRole::Gateway,
            0,
        )
        .expect("gateway certificate"),
        c.dev.config().keyring().expect("cluster keys"),
    );
    gc.repair = Some(repair);
    let second = kura_gateway::Gateway::start(gc, l, None)
        .await
        .expect("second gateway");
    let meta = c.meta();
    let stored = fill(&c, "74", 16, 100 * 1024).await;
    let victim = 5u64;
    // What the lost node held: one shard of each of these instances.
    let mut expected_bytes = 0u64;
    let mut held = 0u64;
    for (sop, _) in &stored {
        let m = manifest(&meta, sop).await;
        for s in m.segments.iter().flat_map(|s| &s.shards) {
            if s.node == Some(victim) {
                expected_bytes += u64::from(s.len);
                held += 1;
            }
        }
    }
    assert!(held > 0, "node {victim} holds shards");

    c.dev.stop_storage_node(victim).await.expect("stop");
    std::fs::remove_dir_all(c.dev.storage_dir(victim)).expect("remove its data");
    until_repaired(&meta, victim).await;
    let a = c.dev.repair().expect("repair").status();
    let b = second.repair().expect("repair").status();
    // Each lost shard was rebuilt by exactly one of them: the bytes both
    // wrote are the lost shards' bytes, once.
    assert_eq!(
        a.bytes_written + b.bytes_written,
        expected_bytes,
        "bytes rebuilt by the two gateways: {} + {}, lost: {expected_bytes}\n{a:?}\n{b:?}",
        a.bytes_written,
        b.bytes_written
    );
    assert_eq!(
        a.shards_rebuilt + a.shards_moved + b.shards_rebuilt + b.shards_moved,
        held
    );
    assert_eq!(a.failures + b.failures, 0, "{a:?}\n{b:?}");
    read_all(&c, &stored, "after repair by two gateways").await;
    second.shutdown().await;
    c.dev.shutdown().await;
}

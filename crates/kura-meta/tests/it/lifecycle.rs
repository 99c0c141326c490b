//! Cluster lifecycle: leader loss, whole-cluster restart, a node far
//! behind catching up by snapshot, learners promoted and voters removed,
//! and the manifest commands' semantics.

use std::time::Duration;

use kura_proto::meta::{
    AdminRequest, AdminResponse, Applied, Command, Consistency, Query, QueryResult, Rejected,
    ShardReference, Voter,
};
use kura_proto::meta_client::{MetaClient, MetaClientError, Retry};

use crate::fixtures::{TENANT, manifest, uid};
use crate::harness::{TestCluster, fast_timings};

const LEADER_WAIT: Duration = Duration::from_secs(20);

async fn put(client: &MetaClient, n: u64) {
    let m = manifest(&uid(n), "1.2.3.1", n);
    let r = client
        .propose(&Command::PutManifest(m), Retry::Idempotent)
        .await
        .expect("propose");
    assert!(
        matches!(
            r,
            Ok(Applied::ManifestCreated { .. } | Applied::ManifestIdentical { .. })
        ),
        "put {n}: {r:?}"
    );
}

async fn get(client: &MetaClient, n: u64) -> Option<kura_placement::Manifest> {
    match client
        .query(&Query::GetManifest {
            tenant: TENANT.into(),
            sop_instance_uid: uid(n),
            consistency: Consistency::Linearizable,
        })
        .await
        .expect("query")
    {
        QueryResult::Manifest(m) => m.map(|m| *m),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_writes_continue_and_old_leader_catches_up() {
    let mut c = TestCluster::start(3, fast_timings()).await;
    let client = c.client();
    for n in 0..40 {
        put(&client, n).await;
    }
    let old = c.leader(LEADER_WAIT).await;
    c.kill(old).await;
    let new = c.leader(LEADER_WAIT).await;
    assert_ne!(new, old, "a new leader must be elected");
    for n in 40..80 {
        put(&client, n).await;
    }
    for n in 0..80 {
        let m = get(&client, n)
            .await
            .unwrap_or_else(|| panic!("manifest {n} lost"));
        assert_eq!(m.fingerprint, crate::fixtures::content_hash(n));
    }
    // The old leader, restarted from its directory, catches up.
    c.add_node(old).await;
    let target = c.applied(new);
    c.wait_applied(old, target, LEADER_WAIT).await;
    let reader = c.nodes[&old].reader();
    for n in 0..80 {
        assert!(
            reader.manifest(TENANT, &uid(n)).expect("read").is_some(),
            "restarted node misses manifest {n}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_cluster_restarts_from_disk() {
    let mut c = TestCluster::start(3, fast_timings()).await;
    let client = c.client();
    for n in 0..60 {
        put(&client, n).await;
    }
    for id in [1, 2, 3] {
        c.kill(id).await;
    }
    for id in [1, 2, 3] {
        c.add_node(id).await;
    }
    c.leader(LEADER_WAIT).await;
    let client = c.client();
    for n in 0..60 {
        assert!(
            get(&client, n).await.is_some(),
            "manifest {n} lost across restart"
        );
    }
    // And the cluster still takes writes.
    put(&client, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn far_behind_node_gets_a_snapshot_then_learner_is_promoted() {
    let mut timings = fast_timings();
    timings.snapshot_every_entries = 40;
    timings.log_kept_behind_snapshot = 5;
    let mut c = TestCluster::start(3, timings).await;
    let client = c.client();
    // Node 3 falls far behind: down while the log moves on and is purged.
    c.kill(3).await;
    for n in 0..150 {
        put(&client, n).await;
    }
    let leader = c.leader(LEADER_WAIT).await;
    let purged = c.nodes[&leader].raft().metrics().borrow().purged;
    assert!(
        purged.is_some(),
        "leader should have purged its log behind a snapshot"
    );
    // Building a snapshot made a checkpoint, not a copy of the state: the
    // streamable file is made only once a follower needs it. (Not checked
    // on the leader: its replication to the down node 3 already asks.)
    let follower = if leader == 1 { 2 } else { 1 };
    let (files, checkpoints) = snapshot_entries(&c.dir(follower));
    assert_eq!(checkpoints, 1, "one current checkpoint on node {follower}");
    assert_eq!(files, 0, "no snapshot file on a node no one asked");
    c.add_node(3).await;
    let target = c.applied(leader);
    c.wait_applied(3, target, LEADER_WAIT).await;
    let m3 = c.nodes[&3].raft().metrics().borrow().clone();
    assert!(
        m3.snapshot.is_some(),
        "node 3 must have installed a snapshot"
    );
    assert_eq!(
        snapshot_entries(&c.dir(3)).0,
        1,
        "node 3 keeps the file it installed"
    );
    let reader = c.nodes[&3].reader();
    for n in 0..150 {
        assert!(reader.manifest(TENANT, &uid(n)).expect("read").is_some());
    }

    // A brand-new node joins as a learner, then replaces voter 2.
    c.add_node(4).await;
    let addr4 = c.addrs[&4].clone();
    client
        .admin(&AdminRequest::AddLearner {
            voter: Voter { id: 4, addr: addr4 },
        })
        .await
        .expect("add learner");
    client
        .admin(&AdminRequest::ChangeVoters { ids: vec![1, 3, 4] })
        .await
        .expect("change voters");
    c.kill(2).await;
    let client = TestCluster::client(&c);
    put(&client, 5000).await;
    let leader = c.leader(LEADER_WAIT).await;
    match client
        .admin_at(&c.addrs[&leader], &AdminRequest::Status)
        .await
        .expect("status")
    {
        AdminResponse::Status(s) => {
            let ids: Vec<u64> = s.voters.iter().map(|v| v.id).collect();
            assert_eq!(ids, vec![1, 3, 4]);
        }
        other => panic!("unexpected {other:?}"),
    }
    let target = c.applied(leader);
    c.wait_applied(4, target, LEADER_WAIT).await;
    assert!(
        c.nodes[&4]
            .reader()
            .manifest(TENANT, &uid(5000))
            .expect("read")
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_is_idempotent_conflicts_are_refused_cas_checks_versions() {
    let c = TestCluster::start(3, fast_timings()).await;
    let client = c.client();
    let a = manifest(&uid(1), "1.2.3.1", 7);
    let r = client
        .propose(&Command::PutManifest(a.clone()), Retry::Once)
        .await
        .expect("put");
    assert_eq!(r, Ok(Applied::ManifestCreated { version: 1 }));
    // Same content, another placement: identical, answers the stored one.
    let mut a2 = a.clone();
    a2.segments[0].shards[0].node = Some(9);
    match client
        .propose(&Command::PutManifest(a2), Retry::Once)
        .await
        .expect("put")
    {
        Ok(Applied::ManifestIdentical { existing }) => {
            assert_eq!(existing.segments[0].shards[0].node, Some(1))
        }
        other => panic!("expected identical, got {other:?}"),
    }
    // Different bytes under the same UID: conflict naming both hashes.
    let b = manifest(&uid(1), "1.2.3.1", 8);
    match client
        .propose(&Command::PutManifest(b), Retry::Once)
        .await
        .expect("put")
    {
        Err(Rejected::Conflict {
            existing_fingerprint: existing_blake3,
            offered_fingerprint: offered_blake3,
            existing_stored_at_unix_ms,
            ..
        }) => {
            assert_eq!(crate::fixtures::content_of_hex(&existing_blake3), 7);
            assert_eq!(crate::fixtures::content_of_hex(&offered_blake3), 8);
            assert_eq!(existing_stored_at_unix_ms, a.stored_at_unix_ms);
        }
        other => panic!("expected conflict, got {other:?}"),
    }
    // CAS with the right version moves a shard; with a stale one is refused.
    let mut moved = a.clone();
    moved.segments[0].shards[2].node = Some(4);
    let r = client
        .propose(
            &Command::CasManifest {
                expected_version: 1,
                manifest: moved.clone(),
            },
            Retry::Once,
        )
        .await
        .expect("cas");
    assert_eq!(r, Ok(Applied::ManifestUpdated { version: 2 }));
    let r = client
        .propose(
            &Command::CasManifest {
                expected_version: 1,
                manifest: moved.clone(),
            },
            Retry::Once,
        )
        .await
        .expect("cas");
    assert_eq!(
        r,
        Err(Rejected::VersionMismatch {
            expected: 1,
            current: 2
        })
    );
    let stored = get(&client, 1).await.expect("stored");
    assert_eq!(stored.version, 2);
    assert_eq!(stored.segments[0].shards[2].node, Some(4));
    // The study index lists it.
    match client
        .query(&Query::ListStudy {
            tenant: TENANT.into(),
            study_instance_uid: crate::fixtures::STUDY.into(),
            series_instance_uid: None,
            after: None,
            limit: 100,
            consistency: Consistency::Linearizable,
        })
        .await
        .expect("list")
    {
        QueryResult::StudyPage { manifests, next } => {
            assert_eq!(manifests.len(), 1);
            assert!(next.is_none());
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_study_pages_through_series() {
    let c = TestCluster::start(1, fast_timings()).await;
    let client = c.client();
    for n in 0..25u64 {
        let series = format!("1.2.3.{}", n % 3 + 1);
        let m = manifest(&uid(n), &series, n);
        client
            .propose(&Command::PutManifest(m), Retry::Idempotent)
            .await
            .expect("put")
            .expect("applied");
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = client
            .query(&Query::ListStudy {
                tenant: TENANT.into(),
                study_instance_uid: crate::fixtures::STUDY.into(),
                series_instance_uid: None,
                after: after.clone(),
                limit: 7,
                consistency: Consistency::Linearizable,
            })
            .await
            .expect("list");
        let QueryResult::StudyPage { manifests, next } = page else {
            panic!("unexpected page");
        };
        assert!(manifests.len() <= 7);
        seen.extend(manifests.into_iter().map(|m| m.sop_instance_uid));
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    seen.sort();
    let mut want: Vec<String> = (0..25).map(uid).collect();
    want.sort();
    assert_eq!(seen, want);
    // One series only.
    let page = client
        .query(&Query::ListStudy {
            tenant: TENANT.into(),
            study_instance_uid: crate::fixtures::STUDY.into(),
            series_instance_uid: Some("1.2.3.2".into()),
            after: None,
            limit: 100,
            consistency: Consistency::Stale,
        })
        .await
        .expect("list");
    let QueryResult::StudyPage { manifests, .. } = page else {
        panic!("unexpected page");
    };
    assert_eq!(manifests.len(), 8);
    assert!(manifests.iter().all(|m| m.series_instance_uid == "1.2.3.2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bulk_import_applies_each_manifest_as_a_put() {
    let c = TestCluster::start(3, fast_timings()).await;
    let client = c.client();
    put(&client, 1).await;
    // 1 is stored with content 1: offering it again is identical; offering
    // 2 with other content than the batch's later copy is a conflict.
    let batch = vec![
        manifest(&uid(1), "1.2.3.1", 1),
        manifest(&uid(2), "1.2.3.1", 2),
        manifest(&uid(3), "1.2.3.2", 3),
        manifest(&uid(2), "1.2.3.1", 20),
    ];
    let r = client
        .propose(&Command::PutManifests(batch), Retry::Once)
        .await
        .expect("bulk");
    match r {
        Ok(Applied::ManifestsImported {
            created,
            identical,
            conflicts,
        }) => {
            assert_eq!((created, identical), (2, 1));
            assert_eq!(conflicts.len(), 1, "{conflicts:?}");
            assert!(
                matches!(&conflicts[0], Rejected::Conflict { sop_instance_uid, .. } if *sop_instance_uid == uid(2))
            );
        }
        other => panic!("expected an import, got {other:?}"),
    }
    for n in 1..=3 {
        let m = get(&client, n)
            .await
            .expect("imported manifest is readable");
        assert_eq!(
            crate::fixtures::content_of_hex(&hex::encode(m.fingerprint)),
            n
        );
    }
    // The object-key index answers which keys manifests reference.
    let stored = get(&client, 3).await.expect("stored");
    match client
        .query(&Query::ObjectsReferenced {
            keys: vec![stored.object_key, [0xee; 32]],
            consistency: Consistency::Linearizable,
        })
        .await
        .expect("query")
    {
        QueryResult::ObjectsReferenced(answers) => assert_eq!(answers, vec![true, false]),
        other => panic!("unexpected answer {other:?}"),
    }
    // Per copy: shard i of segment 0 is held by node i + 1.
    let k = stored.object_key;
    match client
        .query(&Query::ShardsReferenced {
            node: 2,
            shards: vec![
                (k, 0, 0),
                (k, 0, 1),
                (k, 0, 2),
                (k, 1, 1),
                ([0xee; 32], 0, 1),
            ],
            consistency: Consistency::Linearizable,
        })
        .await
        .expect("query")
    {
        QueryResult::ShardsReferenced(answers) => assert_eq!(
            answers,
            vec![
                ShardReference::HeldElsewhere,
                ShardReference::Held,
                ShardReference::HeldElsewhere,
                ShardReference::HeldElsewhere,
                ShardReference::NoManifest,
            ]
        ),
        other => panic!("unexpected answer {other:?}"),
    }
    // One invalid manifest refuses the whole batch: nothing of it lands.
    let mut bad = manifest(&uid(5), "1.2.3.1", 5);
    bad.sop_instance_uid = "not-a-uid".into();
    let err = client
        .propose(
            &Command::PutManifests(vec![manifest(&uid(4), "1.2.3.1", 4), bad]),
            Retry::Once,
        )
        .await
        .expect_err("an invalid manifest refuses the batch");
    assert!(
        matches!(&err, MetaClientError::InvalidArgument(msg) if msg.contains("manifest #1")),
        "{err:?}"
    );
    assert!(
        get(&client, 4).await.is_none(),
        "a refused batch stored nothing"
    );
    let err = client
        .propose(&Command::PutManifests(Vec::new()), Retry::Once)
        .await
        .expect_err("an empty batch is refused");
    assert!(
        matches!(err, MetaClientError::InvalidArgument(_)),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bulk_imports_trigger_snapshots_by_bytes_which_survive_restart() {
    let mut timings = fast_timings();
    // Entry counts never trigger here; 64 KiB of log does.
    timings.snapshot_every_entries = 1_000_000;
    timings.snapshot_every_bytes = 64 << 10;
    timings.log_kept_behind_snapshot = 2;
    let mut c = TestCluster::start(3, timings).await;
    let client = c.client();
    c.kill(3).await;
    // 8 bulk entries of 50 manifests (~40 KiB each).
    for b in 0..8u64 {
        let batch = (0..50)
            .map(|i| manifest(&uid(b * 50 + i), "1.2.3.1", b * 50 + i))
            .collect();
        match client
            .propose(&Command::PutManifests(batch), Retry::Idempotent)
            .await
            .expect("bulk")
        {
            Ok(Applied::ManifestsImported { conflicts, .. }) => assert!(conflicts.is_empty()),
            other => panic!("expected an import, got {other:?}"),
        }
    }
    let leader = c.leader(LEADER_WAIT).await;
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    while c.nodes[&leader].raft().metrics().borrow().purged.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot was built after 8 bulk entries of ~40 KiB"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each voter builds its own snapshot: a checkpoint. Only the leader
    // makes a file of it, for node 3.
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    while snapshot_entries(&c.dir(1)).1 == 0 || snapshot_entries(&c.dir(2)).1 == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint on the voters"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let follower = if leader == 1 { 2 } else { 1 };
    assert_eq!(snapshot_entries(&c.dir(follower)), (0, 1));
    let before = [snapshot_entries(&c.dir(1)), snapshot_entries(&c.dir(2))];
    // Restarted, the voters serve their checkpoint's meta without making
    // a file of it.
    for id in [1, 2] {
        c.kill(id).await;
    }
    for id in [1, 2] {
        c.add_node(id).await;
    }
    let leader = c.leader(LEADER_WAIT).await;
    let follower = if leader == 1 { 2 } else { 1 };
    assert_eq!(
        snapshot_entries(&c.dir(follower)),
        before[follower as usize - 1],
        "restart made a snapshot file on node {follower}"
    );
    // Node 3 is behind the purged log: it gets the file made from the
    // checkpoint after the restart.
    c.add_node(3).await;
    let target = c.applied(leader);
    c.wait_applied(3, target, LEADER_WAIT).await;
    let reader = c.nodes[&3].reader();
    for n in 0..400 {
        assert!(
            reader.manifest(TENANT, &uid(n)).expect("read").is_some(),
            "manifest {n} missing on node 3"
        );
    }
    assert_eq!(snapshot_entries(&c.dir(3)).0, 1, "node 3 installed a file");
}

/// Snapshot files and checkpoints in a node's snapshot directory; nothing
/// half-written counts.
fn snapshot_entries(node_dir: &std::path::Path) -> (usize, usize) {
    let mut files = 0;
    let mut checkpoints = 0;
    for entry in std::fs::read_dir(node_dir.join("snapshots")).expect("snapshot dir") {
        let name = entry.expect("entry").file_name();
        let name = name.to_string_lossy().into_owned();
        if name.ends_with(".bin") {
            files += 1;
        } else if name.ends_with(".ckpt") {
            checkpoints += 1;
        }
    }
    (files, checkpoints)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repair_leases_go_to_one_gateway_until_released_or_expired() {
    let c = TestCluster::start(3, fast_timings()).await;
    let client = c.client();
    let lease = |owner: &str, now: i64, claim: &[u64], release: &[u64]| {
        let key = |n: &u64| (TENANT.to_string(), uid(*n));
        Command::ClaimRepair {
            owner: owner.into(),
            now_unix_ms: now,
            ttl_ms: 1000,
            claim: claim.iter().map(key).collect(),
            release: release.iter().map(key).collect(),
        }
    };
    let granted = |cmd: Command| {
        let client = client.clone();
        async move {
            match client.propose(&cmd, Retry::Idempotent).await {
                Ok(Ok(Applied::RepairClaimed { granted })) => granted,
                other => panic!("unexpected answer {other:?}"),
            }
        }
    };
    assert_eq!(granted(lease("a", 0, &[1, 2], &[])).await, [true, true]);
    // Another gateway gets only what is free; the holder renews its own.
    assert_eq!(
        granted(lease("b", 500, &[1, 2, 3], &[])).await,
        [false, false, true]
    );
    assert_eq!(granted(lease("a", 900, &[1], &[])).await, [true]);
    // Released: free at once; expired (2 renewed at 0 + 1000): free too.
    assert_eq!(
        granted(lease("a", 950, &[], &[1])).await,
        Vec::<bool>::new()
    );
    assert_eq!(granted(lease("b", 1000, &[1, 2], &[])).await, [true, true]);
    // Releasing someone else's lease does nothing.
    granted(lease("a", 1100, &[], &[1])).await;
    assert_eq!(granted(lease("a", 1200, &[1], &[])).await, [false]);
    // Bad input is refused whole.
    match client
        .propose(&lease("", 0, &[4], &[]), Retry::Idempotent)
        .await
    {
        Err(MetaClientError::InvalidArgument(why)) => assert!(why.contains("owner"), "{why}"),
        other => panic!("an empty owner must be refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_read_goes_around_a_silent_voter() {
    let c = TestCluster::start(3, fast_timings()).await;
    let client = c.client();
    put(&client, 1).await;
    // A "voter" that accepts connections and never answers (a black-holed
    // site), listed first so the stale read asks it first.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr").to_string();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let mut endpoints = vec![silent_addr];
    endpoints.extend(c.client().endpoints().iter().cloned());
    let stale = MetaClient::with_timeouts(
        endpoints,
        kura_auth::Transport::Plaintext,
        Duration::from_secs(5),
        Duration::from_secs(30),
    );
    // The read is answered by another voter while the silent one still
    // has most of its 20 s attempt left.
    let started = std::time::Instant::now();
    let got = stale
        .query_any(
            &Query::GetManifest {
                tenant: TENANT.into(),
                sop_instance_uid: uid(1),
                consistency: Consistency::Stale,
            },
            Duration::from_secs(20),
        )
        .await
        .expect("answered around the silent voter");
    assert!(
        matches!(got, QueryResult::Manifest(Some(_))),
        "the manifest: {got:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the silent voter's attempt was waited out: {:?}",
        started.elapsed()
    );
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_respects_retention_and_legal_hold_and_leaves_no_index_entry() {
    let c = TestCluster::start(3, fast_timings()).await;
    let client = c.client();
    for n in 1..=3 {
        put(&client, n).await;
    }
    let stored = get(&client, 1).await.expect("stored");
    let day = 86_400_000i64;
    let propose = |cmd: Command| {
        let client = client.clone();
        async move {
            client
                .propose(&cmd, Retry::Idempotent)
                .await
                .expect("propose")
        }
    };
    let delete = |uids: Vec<String>, now: i64| Command::DeleteManifests {
        tenant: TENANT.into(),
        uids,
        now_unix_ms: now,
    };
    let counts = || {
        let client = client.clone();
        async move {
            match client
                .query(&Query::CountManifests {
                    consistency: Consistency::Linearizable,
                })
                .await
                .expect("counts")
            {
                QueryResult::ManifestCounts { total, .. } => total,
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    assert_eq!(counts().await, 3);

    // Within the tenant's retention: refused whole, naming the date.
    let r = propose(Command::SetRetention {
        tenant: TENANT.into(),
        days: Some(30),
    })
    .await;
    assert_eq!(r, Ok(Applied::PolicySet));
    let now = stored.stored_at_unix_ms + 10 * day;
    match propose(delete(vec![uid(2), uid(1)], now)).await {
        Err(Rejected::Retained { until_unix_ms, .. }) => {
            assert_eq!(until_unix_ms, stored.stored_at_unix_ms + 30 * day)
        }
        other => panic!("a retained instance must be refused: {other:?}"),
    }
    assert_eq!(counts().await, 3, "a refused delete changes nothing");
    assert!(get(&client, 2).await.is_some());

    // Past the retention, but the study is on legal hold.
    let hold = kura_proto::meta::LegalHold {
        reason: "litigation 2026-17".into(),
        since_unix_ms: now,
        by: "admin".into(),
    };
    let r = propose(Command::SetLegalHold {
        tenant: TENANT.into(),
        study_instance_uid: crate::fixtures::STUDY.into(),
        hold: Some(hold.clone()),
    })
    .await;
    assert_eq!(r, Ok(Applied::PolicySet));
    match client
        .query(&Query::LegalHold {
            tenant: TENANT.into(),
            study_instance_uid: crate::fixtures::STUDY.into(),
            consistency: Consistency::Linearizable,
        })
        .await
    {
        Ok(QueryResult::LegalHold(Some(h))) => assert_eq!(h, hold),
        other => panic!("the hold: {other:?}"),
    }
    let later = stored.stored_at_unix_ms + 31 * day;
    match propose(delete(vec![uid(1)], later)).await {
        Err(Rejected::OnLegalHold { reason, .. }) => assert_eq!(reason, hold.reason),
        other => panic!("a held study must be refused: {other:?}"),
    }
    assert_eq!(counts().await, 3);

    // Released: deleted, and gone from every index.
    propose(Command::SetLegalHold {
        tenant: TENANT.into(),
        study_instance_uid: crate::fixtures::STUDY.into(),
        hold: None,
    })
    .await
    .expect("release");
    let r = propose(delete(vec![uid(1), uid(9)], later)).await;
    assert_eq!(
        r,
        Ok(Applied::Deleted {
            deleted: 1,
            absent: 1
        })
    );
    assert!(get(&client, 1).await.is_none());
    assert_eq!(counts().await, 2);
    let node = stored.segments[0].shards[0].node.expect("placed");
    match client
        .query(&Query::ShardsReferenced {
            node,
            shards: vec![(stored.object_key, 0, 0)],
            consistency: Consistency::Linearizable,
        })
        .await
    {
        Ok(QueryResult::ShardsReferenced(r)) => assert_eq!(r, [ShardReference::NoManifest]),
        other => panic!("shards of a deleted instance: {other:?}"),
    }
    match client
        .query(&Query::ManifestsOnNode {
            node,
            after: None,
            limit: 100,
            consistency: Consistency::Linearizable,
        })
        .await
    {
        Ok(QueryResult::ManifestPage { manifests, .. }) => assert!(
            manifests.iter().all(|m| m.sop_instance_uid != uid(1)),
            "the holder index forgot it"
        ),
        other => panic!("manifests on node {node}: {other:?}"),
    }
    match client
        .query(&Query::ListStudy {
            tenant: TENANT.into(),
            study_instance_uid: crate::fixtures::STUDY.into(),
            series_instance_uid: None,
            after: None,
            limit: 100,
            consistency: Consistency::Linearizable,
        })
        .await
    {
        Ok(QueryResult::StudyPage { manifests, .. }) => {
            let uids: Vec<_> = manifests
                .iter()
                .map(|m| m.sop_instance_uid.clone())
                .collect();
            assert_eq!(uids, [uid(2), uid(3)]);
        }
        other => panic!("the study: {other:?}"),
    }
    // A retried delete is a no-op; the UID can be stored anew.
    let r = propose(delete(vec![uid(1)], later)).await;
    assert_eq!(
        r,
        Ok(Applied::Deleted {
            deleted: 0,
            absent: 1
        })
    );
    put(&client, 1).await;
    assert_eq!(counts().await, 3);
    // Bad input is refused at the edge.
    match client
        .propose(&delete(Vec::new(), later), Retry::Idempotent)
        .await
    {
        Err(MetaClientError::InvalidArgument(why)) => assert!(why.contains("1 to"), "{why}"),
        other => panic!("an empty delete must be refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_checks_register_once_and_rewraps_change_only_the_sealing() {
    use kura_proto::meta::KeyCheck;
    let c = TestCluster::start(3, fast_timings()).await;
    let client = c.client();
    let register = |checks: Vec<(u32, u8)>| {
        let client = client.clone();
        async move {
            client
                .propose(
                    &Command::RegisterKeys {
                        checks: checks
                            .into_iter()
                            .map(|(version, b)| KeyCheck {
                                version,
                                check: [b; 32],
                            })
                            .collect(),
                    },
                    Retry::Idempotent,
                )
                .await
                .expect("propose")
        }
    };
    assert_eq!(
        register(vec![(1, 1)]).await,
        Ok(Applied::KeysRegistered { known: vec![1] })
    );
    assert_eq!(
        register(vec![(1, 1), (2, 2)]).await,
        Ok(Applied::KeysRegistered { known: vec![1, 2] })
    );
    // Another value for a known version refuses the whole command: 3 is
    // not recorded either.
    assert_eq!(
        register(vec![(3, 3), (1, 9)]).await,
        Err(Rejected::KeyMismatch { version: 1 })
    );
    assert_eq!(
        register(vec![(2, 2)]).await,
        Ok(Applied::KeysRegistered { known: vec![1, 2] })
    );
    // One version twice is refused at the service's edge.
    let twice = client
        .propose(
            &Command::RegisterKeys {
                checks: vec![
                    KeyCheck {
                        version: 4,
                        check: [4; 32],
                    },
                    KeyCheck {
                        version: 4,
                        check: [5; 32],
                    },
                ],
            },
            Retry::Idempotent,
        )
        .await;
    assert!(
        matches!(&twice, Err(e) if e.to_string().contains("each version once")),
        "{twice:?}"
    );

    for n in 0..5 {
        put(&client, n).await;
    }
    let usage = || async {
        match client
            .query(&Query::KeyUsage {
                consistency: Consistency::Linearizable,
            })
            .await
            .expect("query")
        {
            QueryResult::KeyUsage {
                manifests,
                registered,
            } => (manifests, registered),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(usage().await, (vec![(1, 5)], vec![1, 2]));

    // A rewrap to version 2: sealing and fingerprint change, nothing else.
    let before = get(&client, 2).await.expect("manifest");
    let mut sealing = before.sealing.clone();
    sealing.key_version = 2;
    sealing.salt = [8; 32];
    let rewrap = |expected_version: u64, sealing: kura_placement::Sealing| {
        let client = client.clone();
        async move {
            client
                .propose(
                    &Command::Rewrap {
                        tenant: TENANT.into(),
                        sop_instance_uid: uid(2),
                        expected_version,
                        sealing,
                        fingerprint: [6; 32],
                    },
                    Retry::Idempotent,
                )
                .await
                .expect("propose")
        }
    };
    assert_eq!(
        rewrap(before.version + 1, sealing.clone()).await,
        Err(Rejected::VersionMismatch {
            expected: before.version + 1,
            current: before.version
        })
    );
    let mut resized = sealing.clone();
    resized.plain_size += 1;
    assert!(matches!(
        rewrap(before.version, resized).await,
        Err(Rejected::Invalid(_))
    ));
    assert_eq!(
        rewrap(before.version, sealing.clone()).await,
        Ok(Applied::ManifestUpdated {
            version: before.version + 1
        })
    );
    let after = get(&client, 2).await.expect("manifest");
    assert_eq!(after.sealing, sealing);
    assert_eq!(after.fingerprint, [6; 32]);
    assert_eq!(after.segments, before.segments);
    assert_eq!(after.stored_at_unix_ms, before.stored_at_unix_ms);
    assert_eq!(usage().await.0, vec![(1, 4), (2, 1)]);

    // The work list skips what is already under version 2, in pages.
    let mut seen = Vec::new();
    let mut after_key = None;
    loop {
        let r = client
            .query(&Query::NotSealedUnder {
                key_version: 2,
                after: after_key.clone(),
                limit: 2,
                scan: 3,
                consistency: Consistency::Linearizable,
            })
            .await
            .expect("query");
        let QueryResult::SealedPage { manifests, next } = r else {
            panic!("unexpected {r:?}");
        };
        assert!(manifests.len() <= 2);
        seen.extend(manifests.into_iter().map(|m| m.sop_instance_uid));
        match next {
            Some(n) => after_key = Some(n),
            None => break,
        }
    }
    seen.sort();
    let mut want: Vec<String> = [0, 1, 3, 4].iter().map(|n| uid(*n)).collect();
    want.sort();
    assert_eq!(seen, want);
}

//! Degraded reads: storage nodes really stopped, shard files corrupted on
//! disk — every read still returns exactly the stored bytes.

use kura_dicom::synthetic::{Synthetic, instance as synthetic, uid};

use crate::harness::{Cluster, TENANT, corpus, corpus_dir, retrieve, store};

/// Stores the accepted corpus (first of each UID) plus two multi-segment
/// synthetic instances; answers (uid, bytes).
async fn fill(c: &Cluster) -> Vec<(String, Vec<u8>)> {
    let mut client = c.client().await;
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for (file, accept, sop) in corpus() {
        if !accept || out.iter().any(|(u, _)| *u == sop) {
            continue;
        }
        let bytes = std::fs::read(corpus_dir().join(&file)).expect("read");
        store(&mut client, TENANT, &bytes).await.expect("store");
        out.push((sop, bytes));
    }
    for n in 0..2u64 {
        let s = Synthetic {
            study: uid("60", 1),
            series: uid("61", 1),
            sop: uid("62", n),
        };
        let bytes = synthetic(&s, 9 * 1024 * 1024, n);
        store(&mut client, TENANT, &bytes).await.expect("store");
        out.push((s.sop, bytes));
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
async fn any_m_stopped_nodes_leave_every_instance_readable() {
    let mut c = Cluster::start().await;
    let stored = fill(&c).await;
    // RS(5,4) over 3 sites x 3 nodes: m = 4. Stop a whole site plus one
    // more node, then another mix of 4 nodes across sites.
    for down in [[1u64, 2, 3, 4], [2, 5, 8, 9], [6, 7, 8, 9]] {
        for id in down {
            c.dev.stop_storage_node(id).await.expect("stop");
        }
        read_all(&c, &stored, &format!("nodes {down:?} stopped")).await;
        for id in down {
            c.dev.start_storage_node(id).await.expect("start");
        }
    }
    // A store with one node down still succeeds: the shard meant for it
    // is left unplaced and the instance is marked under-protected.
    c.dev.stop_storage_node(5).await.expect("stop");
    let s = Synthetic {
        study: uid("63", 1),
        series: uid("64", 1),
        sop: uid("65", 1),
    };
    let bytes = synthetic(&s, 6 * 1024 * 1024, 77);
    let mut client = c.client().await;
    let info = store(&mut client, TENANT, &bytes)
        .await
        .expect("store with a node down")
        .info
        .expect("info");
    assert_eq!(
        info.protection,
        kura_proto::v1::Protection::UnderProtected as i32,
        "a shard could not be placed"
    );
    let got = retrieve(&mut client, TENANT, &s.sop).await.expect("read");
    assert!(got == bytes);
    c.dev.start_storage_node(5).await.expect("start");

    // One more than m stopped: refused as unavailable, never wrong bytes.
    for id in [1u64, 2, 3, 4, 5] {
        c.dev.stop_storage_node(id).await.expect("stop");
    }
    let mut client = c.client().await;
    let (sop, _) = stored.last().expect("one");
    let e = retrieve(&mut client, TENANT, sop)
        .await
        .expect_err("5 of 9 holders down");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    c.dev.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupted_shard_files_are_read_around_and_reported() {
    let c = Cluster::start().await;
    let stored = fill(&c).await;
    // Flip a byte in the middle of every shard file of one node.
    let victim = 2u64;
    let mut flipped = 0;
    // Layout: shards/<first key byte>/<key>-<segment>-<index>.<generation>
    let mut stack = vec![c.dev.storage_dir(victim).join("shards")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let mut bytes = std::fs::read(&path).expect("read shard");
                let mid = bytes.len() / 2 + 50;
                if mid < bytes.len() {
                    bytes[mid] ^= 0xFF;
                    std::fs::write(&path, bytes).expect("write shard");
                    flipped += 1;
                }
            }
        }
    }
    assert!(flipped > 0, "found shard files of node {victim} to corrupt");
    read_all(&c, &stored, "with corrupt shards on one node").await;
    // The node noticed and reports it.
    let addr = c.dev.storage_node(victim).expect("runs").addr().to_string();
    let node = c.shards(&addr);
    let status = node.node_status().await.expect("status");
    assert!(
        status.corrupt_count > 0,
        "node {victim} reports corruption: {status:?}"
    );
    c.dev.shutdown().await;
}

/// Reads need no leader: with two of three voters stopped there is no
/// quorum and no leader, yet Retrieve and Stat of stored instances answer
/// with the right bytes (the manifest from the remaining voter's state, the
/// audit entries queued until a leader is back).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_go_on_without_a_leader() {
    let mut c = Cluster::start().await;
    let mut client = c.client().await;
    let mut stored = Vec::new();
    for n in 0..3u64 {
        let s = Synthetic {
            study: uid("63", 1),
            series: uid("63", 2),
            sop: uid("63", 100 + n),
        };
        let bytes = synthetic(&s, 300 * 1024, n);
        store(&mut client, TENANT, &bytes).await.expect("store");
        stored.push((s.sop, bytes));
    }
    let voters: Vec<u64> = c.dev.layout().voters.iter().map(|v| v.id).collect();
    for id in &voters[1..] {
        c.dev.stop_voter(*id).await.expect("stop voter");
    }
    read_all(&c, &stored, "no metadata quorum").await;
    for (sop, bytes) in &stored {
        let info = crate::harness::stat(&mut client, TENANT, sop)
            .await
            .unwrap_or_else(|e| panic!("stat {sop} without a leader: {e:?}"));
        assert_eq!(info.size, bytes.len() as u64);
    }
    c.dev.shutdown().await;
}

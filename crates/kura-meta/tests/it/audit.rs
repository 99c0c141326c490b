//! The audit trail in the state machine: appended in order with a hash
//! chain on every voter, paged, and an edit, a deletion or a truncation
//! of one voter's copy (in its RocksDB, with the voter stopped) is found
//! and named by that voter's verification.

use std::time::Duration;

use kura_proto::meta::{
    AdminRequest, AdminResponse, AuditRecord, AuditVerdict, Command, Consistency, Query,
    QueryResult,
};
use kura_proto::meta_client::{MetaClient, Retry};

use crate::harness::{TestCluster, fast_timings};

fn record(n: u64) -> AuditRecord {
    AuditRecord {
        time_unix_ms: 1_765_000_000_000 + n as i64,
        who: format!("pacs-{n} (t/reader)"),
        tenant: "t".into(),
        action: "Retrieve".into(),
        sop_instance_uid: format!("1.2.3.{n}"),
        study_instance_uid: "1.2.3".into(),
        patient_id: format!("PID{n}"),
        peer: "127.0.0.1:5000".into(),
        outcome: "OK".into(),
        recorder: "gateway 1".into(),
    }
}

async fn verdict(client: &MetaClient, addr: &str) -> AuditVerdict {
    match client
        .admin_at(addr, &AdminRequest::VerifyAudit)
        .await
        .expect("verify")
    {
        AdminResponse::AuditVerdict(v) => v,
        other => panic!("unexpected {other:?}"),
    }
}

/// Opens a stopped voter's database; its last tasks may still be letting
/// go of the lock for a moment after it was stopped.
async fn open_stopped(dir: &std::path::Path) -> std::sync::Arc<rocksdb::DB> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match kura_meta::store::open_db(dir) {
            Ok(db) => return db,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("open {}: {e}", dir.display()),
        }
    }
}

/// Waits until the voter at `addr` has applied `entries` audit entries.
async fn caught_up(client: &MetaClient, addr: &str, entries: u64) -> AuditVerdict {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = verdict(client, addr).await;
        if v.entries >= entries {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{addr}: {v:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chain_holds_on_every_voter_and_an_edited_entry_is_named() {
    let mut c = TestCluster::start(3, fast_timings()).await;
    let client = c.client();
    for batch in 0..5u64 {
        let records = (0..10).map(|i| record(batch * 10 + i)).collect();
        let r = client
            .propose(&Command::AppendAudit(records), Retry::Idempotent)
            .await
            .expect("append");
        assert!(r.is_ok(), "{r:?}");
    }
    // Paged in order, each linked to the one before.
    let mut all = Vec::new();
    let mut from = 0;
    loop {
        let QueryResult::AuditPage { entries, next } = client
            .query(&Query::AuditPage {
                from,
                limit: 7,
                consistency: Consistency::Linearizable,
            })
            .await
            .expect("page")
        else {
            panic!("unexpected answer");
        };
        all.extend(entries);
        match next {
            Some(n) => from = n,
            None => break,
        }
    }
    assert_eq!(all.len(), 50);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.seq, i as u64);
        assert_eq!(e.record, record(i as u64));
        if i > 0 {
            assert_eq!(e.prev, all[i - 1].hash);
        }
    }
    // Every voter's copy holds, with the same head.
    let mut heads = Vec::new();
    for addr in c.addrs.values() {
        let v = caught_up(&client, addr, 50).await;
        assert_eq!(v.first_bad, None, "{addr}");
        heads.push(v.head);
    }
    assert!(heads.windows(2).all(|w| w[0] == w[1]));

    // One byte of entry 17 edited in voter 3's database, voter stopped.
    let victim = 3;
    c.kill(victim).await;
    let db_dir = c.dir(victim).join("db");
    {
        let db = open_stopped(&db_dir).await;
        let cf = db.cf_handle("audit").expect("audit column family");
        let key = 17u64.to_be_bytes();
        let mut value = db.get_cf(cf, key).expect("read").expect("entry 17");
        // A byte of the patient ID ("PID17"): the entry still decodes.
        let at = value
            .windows(5)
            .position(|w| w == b"PID17")
            .expect("patient id bytes");
        value[at + 3] = b'9';
        db.put_cf(cf, key, &value).expect("write");
        db.flush().expect("flush");
    }
    c.add_node(victim).await;
    let addr = c.addrs[&victim].clone();
    let v = verdict(&client, &addr).await;
    let (seq, why) = v.first_bad.clone().expect("the edit is found");
    assert_eq!(seq, 17, "{why}");
    assert!(why.contains("altered"), "{why}");
    // The others still hold.
    for (id, a) in &c.addrs {
        if *id != victim {
            assert_eq!(verdict(&client, a).await.first_bad, None);
        }
    }

    // A deleted entry and a truncated end are named too.
    c.kill(victim).await;
    {
        let db = open_stopped(&db_dir).await;
        let cf = db.cf_handle("audit").expect("cf");
        // Put entry 17 back as it was (from a healthy voter's page).
        let good = kura_proto::codec::encode(&all[17]).expect("encode");
        db.put_cf(cf, 17u64.to_be_bytes(), &good).expect("restore");
        db.delete_cf(cf, 30u64.to_be_bytes()).expect("delete 30");
        db.flush().expect("flush");
    }
    c.add_node(victim).await;
    let v = verdict(&client, &c.addrs[&victim].clone()).await;
    let (seq, why) = v.first_bad.expect("the deletion is found");
    assert_eq!(seq, 30, "{why}");
    c.kill(victim).await;
    {
        let db = open_stopped(&db_dir).await;
        let cf = db.cf_handle("audit").expect("cf");
        let good = kura_proto::codec::encode(&all[30]).expect("encode");
        db.put_cf(cf, 30u64.to_be_bytes(), &good).expect("restore");
        db.delete_cf(cf, 49u64.to_be_bytes())
            .expect("drop the last");
        db.flush().expect("flush");
    }
    c.add_node(victim).await;
    let v = verdict(&client, &c.addrs[&victim].clone()).await;
    let (seq, why) = v.first_bad.expect("the truncation is found");
    assert_eq!(seq, 49, "{why}");
    assert!(why.contains("removed at the end"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_are_kept_by_hash_and_revoked_by_id() {
    let c = TestCluster::start(3, fast_timings()).await;
    let client = c.client();
    let hash = *blake3::hash(b"kura_secret").as_bytes();
    let t = kura_proto::meta::TokenRecord {
        hash,
        id: kura_proto::meta::hex_prefix(&hash),
        tenant: "t".into(),
        roles: "reader".into(),
        label: "x".into(),
        created_unix_ms: 1,
        created_by: "admin".into(),
        revoked_unix_ms: None,
    };
    let r = client
        .propose(&Command::PutToken(t.clone()), Retry::Once)
        .await
        .expect("put");
    assert!(r.is_ok(), "{r:?}");
    // The same hash twice: refused.
    let r = client
        .propose(&Command::PutToken(t.clone()), Retry::Once)
        .await
        .expect("put");
    assert!(r.is_err(), "{r:?}");
    // Bad records are refused before anything is stored.
    let mut bad = t.clone();
    bad.roles = "root".into();
    bad.hash[0] ^= 1;
    let r = client.propose(&Command::PutToken(bad), Retry::Once).await;
    assert!(
        matches!(&r, Err(e) if e.to_string().contains("unknown client role")),
        "{r:?}"
    );
    let r = client
        .propose(
            &Command::RevokeToken {
                id: t.id.clone(),
                revoked_unix_ms: 5,
            },
            Retry::Once,
        )
        .await
        .expect("revoke");
    assert!(r.is_ok(), "{r:?}");
    let QueryResult::Tokens(list) = client
        .query(&Query::ListTokens {
            consistency: Consistency::Linearizable,
        })
        .await
        .expect("list")
    else {
        panic!("unexpected");
    };
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].revoked_unix_ms, Some(5));
    let r = client
        .propose(
            &Command::RevokeToken {
                id: "00000000deadbeef".into(),
                revoked_unix_ms: 5,
            },
            Retry::Once,
        )
        .await
        .expect("revoke");
    assert!(r.is_err(), "{r:?}");
}

//! A concurrent history of puts, compare-and-sets and linearizable reads
//! against a real 3-voter cluster, across leader kills, checked by the
//! Wing–Gong checker in `linearizability.rs` — and proof that the checker
//! would catch a stale read.
//!
//! Register model per key: the manifest's content (set once by the first
//! put; later puts are identical or conflict) and its version (bumped by
//! each compare-and-set). Every client error counts as "outcome unknown".

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kura_proto::meta::{Applied, Command, Consistency, Query, QueryResult, Rejected};
use kura_proto::meta_client::{MetaClient, Retry};
use rand::{Rng, SeedableRng};

use crate::fixtures::{TENANT, content_of_hex, manifest, uid};
use crate::harness::{TestCluster, fast_timings};
use crate::linearizability::{CheckResult, Event, History, Op, Outcome, Record, check};

const KEYS: u64 = 4;
const CLIENTS: usize = 6;
const OPS_PER_CLIENT: usize = 40;

fn now(start: Instant) -> u128 {
    start.elapsed().as_nanos()
}

async fn run_op(client: &MetaClient, key: u64, op: &Op) -> Option<Outcome> {
    let series = "1.2.3.1";
    match op {
        Op::Put { value } => {
            let r = client
                .propose(
                    &Command::PutManifest(manifest(&uid(key), series, *value)),
                    Retry::Once,
                )
                .await
                .ok()?;
            Some(match r {
                Ok(Applied::ManifestCreated { .. }) => Outcome::PutCreated,
                Ok(Applied::ManifestIdentical { .. }) => Outcome::PutIdentical,
                Err(Rejected::Conflict {
                    existing_fingerprint: existing_blake3,
                    ..
                }) => Outcome::PutConflict {
                    existing_value: content_of_hex(&existing_blake3),
                },
                other => panic!("unexpected put answer {other:?}"),
            })
        }
        Op::Cas {
            expected_version,
            value,
        } => {
            let r = client
                .propose(
                    &Command::CasManifest {
                        expected_version: *expected_version,
                        manifest: manifest(&uid(key), series, *value),
                    },
                    Retry::Once,
                )
                .await
                .ok()?;
            Some(match r {
                Ok(Applied::ManifestUpdated { version }) => Outcome::CasOk {
                    new_version: version,
                },
                Err(Rejected::VersionMismatch { current, .. }) => Outcome::CasMismatch {
                    current_version: current,
                },
                Err(Rejected::NotFound(_)) => Outcome::CasNotFound,
                other => panic!("unexpected cas answer {other:?}"),
            })
        }
        Op::Read => {
            let r = client
                .query(&Query::GetManifest {
                    tenant: TENANT.into(),
                    sop_instance_uid: uid(key),
                    consistency: Consistency::Linearizable,
                })
                .await
                .ok()?;
            let QueryResult::Manifest(m) = r else {
                panic!("unexpected read answer {r:?}");
            };
            Some(Outcome::ReadValue(m.map(|m| Record {
                value: u64::from_le_bytes(m.fingerprint[..8].try_into().unwrap_or_default()),
                version: m.version,
            })))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_history_across_leader_kills_is_linearizable() {
    let seed: u64 = std::env::var("KURA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("linearizability seed: {seed} (set KURA_TEST_SEED to reproduce the workload)");
    let mut c = TestCluster::start(3, fast_timings()).await;
    let history = Arc::new(Mutex::new(History::new()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client_no in 0..CLIENTS {
        let client = c.client();
        let history = history.clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (client_no as u64) << 32);
        tasks.push(tokio::spawn(async move {
            // What this client last saw of each key: (content, version).
            let mut seen: Vec<Option<(u64, u64)>> = vec![None; KEYS as usize];
            for _ in 0..OPS_PER_CLIENT {
                let key = rng.random_range(0..KEYS);
                let op = match (rng.random_range(0..3), seen[key as usize]) {
                    (0, _) | (1, None) => Op::Put {
                        value: rng.random_range(1..=2),
                    },
                    (1, Some((content, version))) => Op::Cas {
                        expected_version: version,
                        value: content,
                    },
                    _ => Op::Read,
                };
                let id =
                    history
                        .lock()
                        .expect("history")
                        .invoke(client_no, uid(key), op, now(start));
                let outcome = run_op(&client, key, &op).await;
                let at = now(start);
                match &outcome {
                    Some(Outcome::ReadValue(Some(r))) => {
                        seen[key as usize] = Some((r.value, r.version))
                    }
                    Some(Outcome::CasOk { new_version }) => {
                        if let Some(s) = seen[key as usize].as_mut() {
                            s.1 = *new_version
                        }
                    }
                    Some(Outcome::CasMismatch { current_version }) => {
                        if let Some(s) = seen[key as usize].as_mut() {
                            s.1 = *current_version
                        }
                    }
                    Some(Outcome::PutCreated | Outcome::PutIdentical) => {
                        if let Op::Put { value } = op {
                            seen[key as usize].get_or_insert((value, 1)).0 = value;
                        }
                    }
                    Some(Outcome::PutConflict { existing_value }) => {
                        seen[key as usize].get_or_insert((*existing_value, 1)).0 = *existing_value
                    }
                    _ => {}
                }
                if let Some(outcome) = outcome {
                    history.lock().expect("history").complete(id, at, outcome);
                }
            }
        }));
    }
    // Kill the leader twice while the clients run, restarting it each time.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let leader = c.leader(Duration::from_secs(20)).await;
        c.kill(leader).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.add_node(leader).await;
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let history = Arc::try_unwrap(history)
        .expect("history still shared")
        .into_inner()
        .expect("history lock");
    let events = history.events().len();
    let result = check(&history);
    assert!(
        matches!(result, CheckResult::Linearizable),
        "seed {seed}: history of {events} events is not linearizable: {result}"
    );

    // The checker must be able to fail: inject a stale read — after
    // everything completed, a read that returns version 1 of a key whose
    // version moved past 1 — and it must be caught.
    let mut stale = History::new();
    let mut newest: Option<(String, u64, u64)> = None;
    let mut last_time = 0u128;
    for e in history.events() {
        stale.record(e.clone());
        last_time = last_time.max(e.complete.unwrap_or(e.invoke)).max(e.invoke);
        if let Some(Outcome::CasOk { new_version }) = e.outcome
            && let Op::Cas { value, .. } = e.op
            && newest.as_ref().is_none_or(|(_, _, v)| new_version > *v)
        {
            newest = Some((e.key.clone(), value, new_version));
        }
    }
    let (key, value, version) = match newest {
        Some(n) => n,
        None => {
            // No CAS succeeded in this run (possible with few ops): make one
            // on a fresh key so there is a version to go stale.
            let client = c.client();
            let k = 10_000u64;
            let t0 = now(start);
            run_op(&client, k, &Op::Put { value: 1 })
                .await
                .expect("put");
            let t1 = now(start);
            stale.record(Event {
                client: 99,
                key: uid(k),
                op: Op::Put { value: 1 },
                invoke: t0,
                complete: Some(t1),
                outcome: Some(Outcome::PutCreated),
            });
            let t2 = now(start);
            let o = run_op(
                &client,
                k,
                &Op::Cas {
                    expected_version: 1,
                    value: 1,
                },
            )
            .await
            .expect("cas");
            let t3 = now(start);
            stale.record(Event {
                client: 99,
                key: uid(k),
                op: Op::Cas {
                    expected_version: 1,
                    value: 1,
                },
                invoke: t2,
                complete: Some(t3),
                outcome: Some(o),
            });
            last_time = t3;
            (uid(k), 1, 2)
        }
    };
    assert!(version >= 2);
    stale.record(Event {
        client: 100,
        key: key.clone(),
        op: Op::Read,
        invoke: last_time + 10,
        complete: Some(last_time + 20),
        outcome: Some(Outcome::ReadValue(Some(Record {
            value,
            version: version - 1,
        }))),
    });
    let result = check(&stale);
    assert!(
        matches!(result, CheckResult::NotLinearizable { ref key, .. } if *key == key.clone()),
        "an injected stale read of {key} must be caught, got: {result}"
    );
}

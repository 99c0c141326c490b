//! Client latency while repair rebuilds a lost node, against the same
//! client load just before (the baseline of the same run), at a limited and
//! an unlimited repair rate.
//!
//! An in-process `kura dev` cluster (3 sites x 4 storage nodes, RS(5,4)) is
//! filled, a steady client load (stores of new instances and retrieves of
//! stored ones) runs for a baseline period, then a storage node dies with
//! its disk and is declared lost; the load goes on while repair rebuilds
//! its shards. Printed: p50/p99 store and retrieve latency in both phases
//! and their ratio, repair throughput, bytes read across sites.
//!
//! ```sh
//! cargo run --release --bin repair -- [--instances 800] [--size-kib 256] [--baseline-secs 10] [--rates 5,0]
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kura_dev::RepairConfig;
use kura_dev::{DevCluster, DevConfig};
use kura_dicom::synthetic::{Synthetic, instance, uid};
use kura_placement::NodeState;
use kura_proto::meta::{Command, Consistency, Query, QueryResult};
use kura_proto::meta_client::{MetaClient, Retry};
use kura_proto::v1::archive_client::ArchiveClient;
use kura_proto::v1::{RetrieveRequest, StoreRequest};
use tonic::transport::Channel;

struct Args {
    instances: u64,
    size_kib: u32,
    baseline_secs: u64,
    /// Repair rate limits to run, MB/s; 0 = unlimited.
    rates: Vec<u64>,
}

fn args() -> Args {
    let mut a = Args {
        instances: 800,
        size_kib: 256,
        baseline_secs: 10,
        rates: vec![5, 0],
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        if v[i] == "--rates" {
            a.rates = v
                .get(i + 1)
                .map(|s| s.split(',').filter_map(|r| r.parse().ok()).collect())
                .unwrap_or_default();
            i += 2;
            continue;
        }
        let next = v.get(i + 1).and_then(|s| s.parse::<u64>().ok());
        match (v[i].as_str(), next) {
            ("--instances", Some(n)) => a.instances = n,
            ("--size-kib", Some(n)) => a.size_kib = n as u32,
            ("--baseline-secs", Some(n)) => a.baseline_secs = n,
            (other, _) => {
                eprintln!(
                    "usage: repair [--instances N] [--size-kib N] [--baseline-secs N] [--rates MB/s,...] (got {other})"
                );
                std::process::exit(2);
            }
        }
        i += 2;
    }
    a
}

async fn store(client: &mut ArchiveClient<Channel>, bytes: Vec<u8>) -> Result<(), tonic::Status> {
    let msgs = StoreRequest::messages("bench", Bytes::from(bytes), 1024 * 1024);
    client.store(tokio_stream::iter(msgs)).await.map(|_| ())
}

async fn retrieve(client: &mut ArchiveClient<Channel>, sop: &str) -> Result<usize, tonic::Status> {
    let mut s = client
        .retrieve(RetrieveRequest {
            tenant: "bench".into(),
            sop_instance_uid: sop.into(),
        })
        .await?
        .into_inner();
    let mut n = 0;
    while let Some(m) = s.message().await? {
        if let Some(kura_proto::v1::retrieve_response::Msg::Chunk(c)) = m.msg {
            n += c.len();
        }
    }
    Ok(n)
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[derive(Default)]
struct Samples {
    /// (phase, is_store, latency seconds)
    calls: Vec<(u8, bool, f64)>,
    errors: u64,
}

async fn run_once(a: &Args, rate: Option<u64>) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut cfg = DevConfig::new(dir.path().join("data"));
    cfg.port = 0;
    cfg.nodes_per_site = 4;
    cfg.report_interval = Duration::from_millis(300);
    cfg.meta_timeouts.node_down_after = Duration::from_secs(2);
    cfg.meta_timeouts.node_lost_after = Duration::from_secs(600);
    cfg.repair = Some(RepairConfig {
        idle_interval: Duration::from_millis(500),
        rate_bytes_per_sec: rate.unwrap_or(10_000_000_000),
        ..RepairConfig::default()
    });
    let mut dev = DevCluster::start(cfg).await.map_err(|e| e.to_string())?;
    let gateway = dev.gateway_addr().ok_or("no gateway")?;
    let channel = dev
        .client_transport(
            "bench",
            &[kura_auth::ClientRole::Reader, kura_auth::ClientRole::Writer],
        )
        .map_err(|e| e.to_string())?
        .endpoint(&gateway.to_string())
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let meta = MetaClient::new(
        dev.meta_endpoints().to_vec(),
        dev.node_transport().map_err(|e| e.to_string())?,
    );
    let size = a.size_kib * 1024;

    // Fill.
    let filled = Instant::now();
    let mut sops = Vec::new();
    let mut c = ArchiveClient::new(channel.clone());
    for i in 0..a.instances {
        let s = Synthetic {
            study: uid("81", i / 100),
            series: uid("82", i / 100),
            sop: uid("83", i),
        };
        store(&mut c, instance(&s, size, i))
            .await
            .map_err(|e| e.to_string())?;
        sops.push(s.sop);
    }
    println!(
        "  filled {} instances of {} KiB in {:.1} s",
        a.instances,
        a.size_kib,
        filled.elapsed().as_secs_f64()
    );
    let sops = Arc::new(sops);

    // The client load: 2 loops of store-then-retrieve.
    let phase = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let mut load = Vec::new();
    for w in 0..2u64 {
        let (phase, stop, samples, sops) = (
            Arc::clone(&phase),
            Arc::clone(&stop),
            Arc::clone(&samples),
            Arc::clone(&sops),
        );
        let mut c = ArchiveClient::new(channel.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let s = Synthetic {
                    study: uid("84", w),
                    series: uid("85", w),
                    sop: uid(&format!("86.{w}"), n),
                };
                let bytes = instance(&s, size, n);
                let t = Instant::now();
                let r = store(&mut c, bytes).await;
                let st = t.elapsed().as_secs_f64();
                let sop = &sops[(n as usize * 7919 + w as usize) % sops.len()];
                let t = Instant::now();
                let g = retrieve(&mut c, sop).await;
                let rt = t.elapsed().as_secs_f64();
                let p = phase.load(Ordering::Relaxed);
                let mut s = samples.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    Ok(()) => s.calls.push((p, true, st)),
                    Err(_) => s.errors += 1,
                }
                match g {
                    Ok(_) => s.calls.push((p, false, rt)),
                    Err(_) => s.errors += 1,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(a.baseline_secs)).await;

    // A node dies with its disk and is declared lost.
    let victim = 2u64;
    dev.stop_storage_node(victim)
        .await
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(dev.storage_dir(victim));
    phase.store(1, Ordering::Relaxed);
    let lost_at = Instant::now();
    meta.propose(
        &Command::SetNodeState {
            id: victim,
            state: NodeState::Lost,
        },
        Retry::Idempotent,
    )
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let repair = dev.repair().ok_or("repair does not run")?;
    repair.wake();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let left = match meta
            .query(&Query::ManifestsOnNode {
                node: victim,
                after: None,
                limit: 1,
                consistency: Consistency::Linearizable,
            })
            .await
        {
            Ok(QueryResult::ManifestPage { manifests, .. }) => manifests.len(),
            _ => 1,
        };
        if left == 0 {
            break;
        }
        if lost_at.elapsed() > Duration::from_secs(900) {
            return Err("repair did not finish within 15 minutes".into());
        }
    }
    let repair_secs = lost_at.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in load {
        let _ = t.await;
    }
    let st = repair.status();
    let s = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    let lat = |p: u8, is_store: bool| -> Vec<f64> {
        s.calls
            .iter()
            .filter(|c| c.0 == p && c.1 == is_store)
            .map(|c| c.2 * 1000.0)
            .collect()
    };
    println!(
        "  repair: {:.1} s, {} shards rebuilt, {:.1} MB written, {:.1} MB read ({:.1} MB across sites), {:.1} MB/s written",
        repair_secs,
        st.shards_rebuilt,
        st.bytes_written as f64 / 1e6,
        st.bytes_read as f64 / 1e6,
        st.cross_site_bytes as f64 / 1e6,
        st.bytes_written as f64 / 1e6 / repair_secs
    );
    println!("  | op | phase | calls | p50 ms | p99 ms | p50 ÷ baseline | p99 ÷ baseline |");
    println!("  |---|---|---:|---:|---:|---:|---:|");
    for (name, is_store) in [("store", true), ("retrieve", false)] {
        let base = lat(0, is_store);
        let during = lat(1, is_store);
        let (b50, b99) = (pct(base.clone(), 0.5), pct(base.clone(), 0.99));
        let (d50, d99) = (pct(during.clone(), 0.5), pct(during.clone(), 0.99));
        println!(
            "  | {name} | baseline | {} | {b50:.1} | {b99:.1} | 1.00 | 1.00 |",
            base.len()
        );
        println!(
            "  | {name} | repair | {} | {d50:.1} | {d99:.1} | {:.2} | {:.2} |",
            during.len(),
            d50 / b50,
            d99 / b99
        );
    }
    println!("  client errors: {}", s.errors);
    dev.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() {
    let a = args();
    for rate in a.rates.iter().map(|&r| (r > 0).then_some(r * 1_000_000)) {
        match rate {
            Some(r) => println!(
                "repair rate limit {} MB/s (bytes the rebuilding nodes read)",
                r / 1_000_000
            ),
            None => println!("repair rate unlimited"),
        }
        if let Err(e) = run_once(&a, rate).await {
            eprintln!("repair bench failed: {e}");
            std::process::exit(1);
        }
    }
}

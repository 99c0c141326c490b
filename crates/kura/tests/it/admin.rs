//! `kura admin` against a cluster of separate `kura server` processes:
//! status, a refused remove-node that leaves everything in place, a drain
//! that really moves shards without ever losing protection, then the
//! removal; profile, repair and scrub commands; the metrics endpoint
//! scraped and parsed. And `kura drill site-down` against `kura dev`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use kura_auth::{ClientRole, ClientRoles};
use kura_testkit::Proc;
use kura_testkit::certs::CertDir;

fn free_port() -> u16 {
    kura_testkit::free_port().expect("free port")
}

fn kura(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kura"))
        .args(args)
        .env_remove("KURA_TENANT")
        .env_remove("KURA_ENDPOINT")
        .env_remove("KURA_CERTS")
        .output()
        .expect("run kura")
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("../../../shared/corpus")
}

/// 3 sites x 2 storage nodes, RS(2,1): one spare node per site to drain
/// into. Node 1 runs the gateway (and its ops port), 1-3 are voters.
fn write_config(dir: &Path) -> (PathBuf, String, String) {
    let gateway = format!("127.0.0.1:{}", free_port());
    let ops = format!("127.0.0.1:{}", free_port());
    let mut text = String::from(
        "[cluster]\ndata_shards = 2\nparity_shards = 1\nreport_interval_secs = 0.3\n\
         node_down_after_secs = 3\nnode_lost_after_secs = 120\n\n\
         [repair]\nidle_secs = 0.5\ndelete_moved_after_secs = 0.5\n\n\
         [[site]]\nname = \"tokyo\"\n[[site]]\nname = \"osaka\"\n[[site]]\nname = \"fukuoka\"\n",
    );
    for id in 1..=6u64 {
        let site = ["tokyo", "osaka", "fukuoka"][((id - 1) % 3) as usize];
        text.push_str(&format!(
            "\n[[node]]\nid = {id}\nsite = \"{site}\"\ndata = \"{}\"\nstore = \"127.0.0.1:{}\"\n",
            dir.join(format!("node-{id}")).display(),
            free_port()
        ));
        if id <= 3 {
            text.push_str(&format!("meta = \"127.0.0.1:{}\"\n", free_port()));
        }
        if id == 1 {
            text.push_str(&format!("gateway = \"{gateway}\"\nops = \"{ops}\"\n"));
        }
    }
    text.push_str("\n[tls]\ndir = \"certs\"\n\n[encryption]\nkeys_file = \"certs/cluster.keys\"\n");
    let path = dir.join("kura.toml");
    std::fs::write(&path, text).expect("write config");
    let certs = CertDir::init(Path::new(env!("CARGO_BIN_EXE_kura")), &dir.join("certs"))
        .expect("kura certs init");
    certs.keys().expect("kura keys generate");
    for id in 1..=6 {
        certs.node(&path, id).expect("kura certs node");
    }
    certs
        .client(
            "default",
            ClientRoles::of(&[ClientRole::Reader, ClientRole::Writer]),
        )
        .expect("client certificate");
    certs
        .client("default", ClientRoles::of(&[ClientRole::Admin]))
        .expect("admin certificate");
    (path, gateway, ops)
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect ops");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    body
}

fn held(status: &Value, node: u64) -> u64 {
    status["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["id"] == node))
        .and_then(|n| n["instances_held"].as_u64())
        .unwrap_or(0)
}

#[test]
fn admin_commands_drain_refuse_and_report_on_a_process_cluster() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (config, gateway, ops) = write_config(tmp.path());
    let certs = tmp
        .path()
        .join("certs")
        .to_str()
        .expect("utf-8")
        .to_string();
    let config = config.to_str().expect("utf-8").to_string();
    let mut procs = Vec::new();
    for id in 1..=6 {
        let log = std::fs::File::create(tmp.path().join(format!("node-{id}.log"))).expect("log");
        procs.push(Proc(
            Command::new(env!("CARGO_BIN_EXE_kura"))
                .args(["server", "--config", &config, "--node", &id.to_string()])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start kura server"),
        ));
    }
    let ep = ["--endpoint", gateway.as_str(), "--certs", certs.as_str()];
    let admin = |args: &[&str]| {
        let mut all = vec!["admin"];
        all.extend_from_slice(args);
        all.extend_from_slice(&ep);
        kura(&all)
    };
    // Formed: six nodes up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = admin(&["status", "--json"]);
        if o.status.success() {
            let s = json_of(&o);
            let up = s["nodes"]
                .as_array()
                .map(|ns| ns.iter().filter(|n| n["state"] == "up").count())
                .unwrap_or(0);
            if up == 6 && s["leader_id"].is_u64() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the cluster did not form");
        std::thread::sleep(Duration::from_millis(500));
    }
    let corpus = corpus_dir();
    let o = kura(&[
        "store",
        corpus.to_str().expect("utf-8"),
        "--json",
        "--endpoint",
        &gateway,
        "--certs",
        &certs,
    ]);
    assert_eq!(
        json_of(&o)["stored"],
        11,
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // The readable table names every node and the leader.
    let o = admin(&["status"]);
    assert!(o.status.success());
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("metadata leader") && table.contains("fukuoka"),
        "{table}"
    );

    // The busiest node.
    let status = json_of(&admin(&["status", "--json"]));
    let victim = (1..=6u64).max_by_key(|&n| held(&status, n)).expect("nodes");
    let before = held(&status, victim);
    assert!(before > 0, "node {victim} holds something");

    // Removing it now is refused, says what would be lost, changes nothing.
    let o = admin(&["remove-node", &victim.to_string()]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("FAILED_PRECONDITION")
            && err.contains("still holds shards")
            && err.contains("drain"),
        "{err}"
    );
    let after = json_of(&admin(&["status", "--json"]));
    assert_eq!(
        held(&after, victim),
        before,
        "the refused removal moved nothing"
    );
    assert_eq!(after["nodes"].as_array().map(Vec::len), Some(6));

    // Drain it, watching protection all along.
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (stop, worst, samples, gateway, certs) = (
            Arc::clone(&stop),
            Arc::clone(&worst),
            Arc::clone(&samples),
            gateway.clone(),
            certs.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let o = kura(&[
                    "admin",
                    "protection",
                    "--json",
                    "--endpoint",
                    &gateway,
                    "--certs",
                    &certs,
                ]);
                if o.status.success() {
                    let p: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
                    let bad =
                        p["unreadable"].as_u64().unwrap_or(0) + p["at_risk"].as_u64().unwrap_or(0);
                    worst.fetch_max(bad, Ordering::Relaxed);
                    samples.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let o = admin(&[
        "drain",
        &victim.to_string(),
        "--timeout-secs",
        "90",
        "--json",
    ]);
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json_of(&o)["instances_held"], 0);
    assert!(
        samples.load(Ordering::Relaxed) > 0,
        "protection was sampled"
    );
    assert_eq!(
        worst.load(Ordering::Relaxed),
        0,
        "protection was lost during the drain"
    );
    // Every instance reads back exactly (verify re-checks every blake3).
    let o = kura(&[
        "drill",
        "verify",
        "--all",
        "--tenant",
        "default",
        "--json",
        "--endpoint",
        &gateway,
        "--certs",
        &certs,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let v = json_of(&o);
    assert_eq!(v["checked"], 11);
    assert_eq!(v["failed"].as_array().map(Vec::len), Some(0));

    // Now it can go.
    let o = admin(&["remove-node", &victim.to_string(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = json_of(&o);
    assert!(
        s["nodes"]
            .as_array()
            .is_some_and(|ns| ns.iter().all(|n| n["id"] != victim)),
        "{s}"
    );

    // A study that survives losing any site.
    let o = kura(&[
        "stat",
        "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322",
        "--json",
        "--endpoint",
        &gateway,
        "--certs",
        &certs,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let info = json_of(&o);
    let study = info["study_instance_uid"]
        .as_str()
        .or_else(|| info["info"]["study_instance_uid"].as_str())
        .unwrap_or_else(|| panic!("study uid in {info}"))
        .to_string();
    let o = kura(&[
        "admin",
        "protection",
        "--study",
        &study,
        "--json",
        "--endpoint",
        &gateway,
        "--certs",
        &certs,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p = json_of(&o);
    assert_eq!(p["survives_site_loss"], true, "{p}");

    // Delete: not within the tenant's retention, not while the study is
    // on legal hold, not without confirmation; then for good.
    let uid = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322";
    let o = admin(&["retention", "3650", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json_of(&o)["retention_days"], 3650);
    let refused = |why: &str| {
        let o = kura(&[
            "delete",
            uid,
            "--yes",
            "--endpoint",
            &gateway,
            "--certs",
            &certs,
        ]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && err.contains(why), "{why}: {err}");
    };
    refused("retention period until");
    let o = admin(&["retention", "0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = admin(&["hold", "--study", &study, "--reason", "audit 7", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json_of(&o)["held"], true);
    refused("legal hold (audit 7)");
    let o = admin(&["hold", "--study", &study, "--release"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = kura(&["delete", uid, "--endpoint", &gateway, "--certs", &certs]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--yes"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = kura(&[
        "delete",
        uid,
        "--yes",
        "--json",
        "--endpoint",
        &gateway,
        "--certs",
        &certs,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json_of(&o)["deleted"], 1);
    let o = kura(&["stat", uid, "--endpoint", &gateway, "--certs", &certs]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("NOT_FOUND"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Profile: an impossible one is refused, a sound one taken.
    let o = admin(&["set-profile", "9", "9"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = admin(&["set-profile", "2", "1", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json_of(&o)["profile"], "RS(2,1)");

    let o = admin(&["repair", "--now", "--json"]);
    assert!(o.status.success());
    assert_eq!(json_of(&o)["runs_here"], true);
    let o = admin(&["scrub", "--now", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(json_of(&o)["started"].as_array().map(Vec::len), Some(5));

    // The metrics endpoint, scraped and parsed as Prometheus text.
    let body = http_get(&ops, "/metrics");
    let text = body.split("\r\n\r\n").nth(1).unwrap_or_default();
    let mut names = std::collections::BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("series value");
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad sample value in {line:?}"));
        let name = series.split('{').next().unwrap_or(series);
        assert!(
            name.starts_with("kura_")
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "metric name {name:?}"
        );
        names.insert(name.to_string());
    }
    for want in [
        "kura_gateway_requests_total",
        "kura_gateway_request_duration_seconds_bucket",
        "kura_admin_requests_total",
        "kura_repair_passes_total",
        "kura_meta_raft_term",
        "kura_store_shards",
        "kura_cluster_nodes",
    ] {
        assert!(
            names.contains(want),
            "{want} missing from /metrics: {names:?}"
        );
    }
    let repair = http_get(&ops, "/repair");
    assert!(repair.contains("\"shards_moved\""), "{repair}");
}

#[test]
fn a_site_down_drill_against_kura_dev_reports_real_figures() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("dev");
    let log = std::fs::File::create(tmp.path().join("dev.log")).expect("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kura"))
        .args(kura_testkit::KURA_DEV_ON_FREE_PORTS)
        .args(["--json", "--data"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start kura dev");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("startup line");
    let _dev = Proc(child);
    let v: Value = serde_json::from_str(&line).expect("startup JSON");
    let gateway = v["gateway"].as_str().expect("gateway").to_string();
    let certs = v["certs"].as_str().expect("certs").to_string();
    let out = tmp.path().join("report");
    let o = kura(&[
        "drill",
        "site-down",
        "site-b",
        "--baseline-secs",
        "2",
        "--outage-secs",
        "4",
        "--recovery-timeout-secs",
        "120",
        "--json",
        "--out",
        out.to_str().expect("utf-8"),
        "--endpoint",
        &gateway,
        "--certs",
        &certs,
    ]);
    let r = json_of(&o);
    assert!(
        o.status.success(),
        "{r}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(r["rpo_instances_lost"], 0, "{r}");
    assert!(r["acknowledged_writes"].as_u64().unwrap_or(0) > 0, "{r}");
    let w = &r["writes_during_outage"];
    assert!(w["attempted"].as_u64().unwrap_or(0) > 0, "{r}");
    assert!(
        w["ok"].as_u64().unwrap_or(0) > 0,
        "writes went on during the outage: {r}"
    );
    assert!(
        r["reads_during_outage"]["attempted"].as_u64().unwrap_or(0) > 0,
        "{r}"
    );
    assert!(r["write_availability"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    assert!(r["rto_secs"].as_f64().is_some(), "{r}");
    assert!(r["time_to_full_protection_secs"].as_f64().is_some(), "{r}");
    assert!(
        r["site_out"].as_str().unwrap_or("").contains("stopped"),
        "{r}"
    );
    assert!(
        r["timeline"].as_array().is_some_and(|t| t.len() >= 6),
        "{r}"
    );
    let html = std::fs::read_to_string(out.join("report.html")).expect("html report");
    assert!(html.contains("<svg") && html.contains("RPO"), "html report");
    let json: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("json"))
            .expect("parse");
    assert_eq!(json["rpo_instances_lost"], 0);
}

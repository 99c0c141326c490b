//! `kura drill …`: failover drills an operator runs against a live cluster
//! and attaches to a business-continuity audit.
//!
//! `site-down SITE` keeps a verification workload running (writers storing
//! small synthetic instances under the `kura-drill` tenant, readers reading
//! them back), takes the site out (on a `kura dev` cluster the gateway stops
//! the site's storage nodes in-process; on any other cluster the operator's
//! `--take-out` / `--restore` commands do it), holds the outage, restores
//! the site, waits for full protection, then re-reads every acknowledged
//! drill instance. It reports write and read availability during the
//! outage, RTO (time until writes were acknowledged again), RPO
//! (acknowledged instances lost: must be 0) and the time to full protection
//! after the site returned — as a table, `report.json`, and a
//! self-contained `report.html` with a timeline plot.
//!
//! `verify` re-reads a sample (or all) of a tenant's instances and checks
//! every byte against the stored blake3.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cmd::client::Channel;
use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kura_dicom::synthetic::{Synthetic, instance, uid};
use kura_proto::v1::archive_client::ArchiveClient;
use kura_proto::v1::drill_site_request::Action;
use kura_proto::v1::{
    DrillSiteRequest, ListInstancesRequest, RetrieveRequest, StatusRequest, StoreHeader,
    StoreRequest, retrieve_response, store_request,
};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::cmd::admin::AdminConnect;
use crate::cmd::admin::admin_client;
use crate::cmd::client::{CredentialArgs, connect_channel, print_json};
use kura_auth::ClientRole;

#[derive(Debug, Subcommand)]
pub enum DrillCommand {
    /// Take a site out under a verification workload, measure availability,
    /// RTO and RPO, restore it and time the return to full protection.
    SiteDown(SiteDownArgs),
    /// Re-read a sample (or all) of the archive and check every blake3.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct SiteDownArgs {
    /// The site to take out.
    pub site: String,
    /// A gateway in a site that stays up: http://HOST:PORT or HOST:PORT.
    #[arg(long, env = "KURA_ENDPOINT", default_value = crate::cmd::client::DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Seconds of normal load before the site goes out (the baseline).
    #[arg(long, default_value_t = 5)]
    pub baseline_secs: u64,
    /// Seconds the site stays out.
    #[arg(long, default_value_t = 20)]
    pub outage_secs: u64,
    /// Give up waiting for full protection after the restore after this.
    #[arg(long, default_value_t = 600)]
    pub recovery_timeout_secs: u64,
    /// Concurrent writers and readers of the verification workload.
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    #[arg(long, default_value_t = 2)]
    pub readers: usize,
    /// Size of each drill instance's pixel data, in KiB.
    #[arg(long, default_value_t = 128)]
    pub size_kib: u32,
    /// The tenant the drill's instances are stored under.
    #[arg(long, default_value = "kura-drill")]
    pub tenant: String,
    /// A shell command that takes the site out (clusters other than
    /// `kura dev`), e.g. stopping its machines' kura services.
    #[arg(long, requires = "restore")]
    pub take_out: Option<String>,
    /// A shell command that brings the site back.
    #[arg(long, requires = "take_out")]
    pub restore: Option<String>,
    /// Where to write report.json and report.html (default:
    /// ./kura-drill-<site>-<unix time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub creds: CredentialArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[arg(long, env = "KURA_ENDPOINT", default_value = crate::cmd::client::DEFAULT_ENDPOINT)]
    pub endpoint: String,
    #[arg(long, env = "KURA_TENANT", default_value = "default")]
    pub tenant: String,
    #[command(flatten)]
    pub creds: CredentialArgs,
    /// Check every instance (default: a random sample).
    #[arg(long, conflicts_with = "sample")]
    pub all: bool,
    /// How many instances to sample.
    #[arg(long, default_value_t = 100)]
    pub sample: usize,
    /// Seed of the sample (printed, so a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

pub fn run(command: DrillCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    rt.block_on(async move {
        match command {
            DrillCommand::SiteDown(a) => site_down(a).await,
            DrillCommand::Verify(a) => verify(a).await,
        }
    })
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One call of the workload.
#[derive(Clone, Debug)]
struct Call {
    write: bool,
    start: f64,
    end: f64,
    ok: bool,
    code: String,
}

#[derive(Default)]
struct Shared {
    calls: Vec<Call>,
    /// Acknowledged drill writes: uid -> blake3.
    acked: BTreeMap<String, [u8; 32]>,
    /// (seconds, under-protected instances) samples.
    protection: Vec<(f64, u64)>,
    /// Store calls whose outcome is unknown (timed out or cut off).
    unknown: Vec<(String, [u8; 32])>,
}

async fn store_once(
    client: &mut ArchiveClient<Channel>,
    tenant: &str,
    bytes: Vec<u8>,
) -> Result<(), tonic::Status> {
    let mut msgs = vec![StoreRequest {
        msg: Some(store_request::Msg::Header(StoreHeader {
            tenant: tenant.to_string(),
            expected_blake3: None,
            size: Some(bytes.len() as u64),
        })),
    }];
    let bytes = Bytes::from(bytes);
    let mut at = 0;
    while at < bytes.len() {
        let end = (at + 1024 * 1024).min(bytes.len());
        msgs.push(StoreRequest {
            msg: Some(store_request::Msg::Chunk(bytes.slice(at..end))),
        });
        at = end;
    }
    let mut req = tonic::Request::new(tokio_stream::iter(msgs));
    req.set_timeout(Duration::from_secs(20));
    client.store(req).await.map(|_| ())
}

/// Reads one instance; answers its blake3.
async fn read_once(
    client: &mut ArchiveClient<Channel>,
    tenant: &str,
    sop: &str,
) -> Result<[u8; 32], tonic::Status> {
    let mut req = tonic::Request::new(RetrieveRequest {
        tenant: tenant.to_string(),
        sop_instance_uid: sop.to_string(),
    });
    req.set_timeout(Duration::from_secs(30));
    let mut stream = client.retrieve(req).await?.into_inner();
    let mut hasher = blake3::Hasher::new();
    while let Some(m) = stream.message().await? {
        if let Some(retrieve_response::Msg::Chunk(c)) = m.msg {
            hasher.update(&c);
        }
    }
    Ok(hasher.finalize().into())
}

fn code_of(s: &tonic::Status) -> String {
    kura_proto::code_name(s.code()).to_string()
}

/// The Admin API as the credentials' admin.
async fn admin_of(
    endpoint: &str,
    creds: &CredentialArgs,
) -> anyhow::Result<(kura_proto::v1::admin_client::AdminClient<Channel>, String)> {
    admin_client(&AdminConnect {
        endpoint: endpoint.to_string(),
        as_tenant: None,
        creds: creds.clone(),
        json: false,
    })
    .await
}

async fn site_down(a: SiteDownArgs) -> anyhow::Result<ExitCode> {
    let (mut admin, ep) = admin_of(&a.endpoint, &a.creds).await?;
    let status = admin
        .status(StatusRequest { brief: true })
        .await
        .map_err(|s| anyhow::anyhow!("cluster status from {ep}: {}", s.message()))?
        .into_inner();
    if !status.sites.contains(&a.site) {
        bail!(
            "site {:?} is not in the cluster (sites: {})",
            a.site,
            status.sites.join(", ")
        );
    }
    let writer = connect_channel(&a.endpoint, &a.creds, Some(&a.tenant), ClientRole::Writer)
        .await?
        .channel;
    let reader = connect_channel(&a.endpoint, &a.creds, Some(&a.tenant), ClientRole::Reader)
        .await?
        .channel;
    let drill_id = unix_ms() / 1000;
    let out_dir = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("kura-drill-{}-{drill_id}", a.site)));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let begun = Instant::now();
    let secs = move || begun.elapsed().as_secs_f64();
    let shared = Arc::new(Mutex::new(Shared::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = if a.json {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
    } else {
        let p = ProgressBar::new_spinner();
        p.set_style(
            ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        p.enable_steady_tick(Duration::from_millis(200));
        p
    };

    // The workload.
    let mut tasks = Vec::new();
    for w in 0..a.writers {
        let (mut client, shared, stop, counter) = (
            ArchiveClient::new(writer.clone()),
            Arc::clone(&shared),
            Arc::clone(&stop),
            Arc::clone(&counter),
        );
        let (tenant, size) = (a.tenant.clone(), a.size_kib * 1024);
        tasks.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let s = Synthetic {
                    study: uid(&format!("77.{drill_id}"), 1),
                    series: uid(&format!("77.{drill_id}"), 2),
                    sop: uid(&format!("77.{drill_id}.{w}"), n),
                };
                let bytes = instance(&s, size, n ^ drill_id as u64);
                let hash: [u8; 32] = blake3::hash(&bytes).into();
                let start = secs();
                let r = store_once(&mut client, &tenant, bytes).await;
                let end = secs();
                {
                    let mut sh = shared.lock().unwrap_or_else(|e| e.into_inner());
                    match &r {
                        Ok(()) => {
                            sh.acked.insert(s.sop.clone(), hash);
                        }
                        Err(e)
                            if matches!(
                                e.code(),
                                tonic::Code::DeadlineExceeded
                                    | tonic::Code::Unknown
                                    | tonic::Code::Cancelled
                            ) =>
                        {
                            sh.unknown.push((s.sop.clone(), hash));
                        }
                        Err(_) => {}
                    }
                    sh.calls.push(Call {
                        write: true,
                        start,
                        end,
                        ok: r.is_ok(),
                        code: r.as_ref().err().map(code_of).unwrap_or_else(|| "OK".into()),
                    });
                }
                if r.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    for r in 0..a.readers {
        let (mut client, shared, stop) = (
            ArchiveClient::new(reader.clone()),
            Arc::clone(&shared),
            Arc::clone(&stop),
        );
        let tenant = a.tenant.clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(drill_id as u64 + r as u64);
        tasks.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let pick = {
                    let sh = shared.lock().unwrap_or_else(|e| e.into_inner());
                    if sh.acked.is_empty() {
                        None
                    } else {
                        let i = rng.random_range(0..sh.acked.len());
                        sh.acked.iter().nth(i).map(|(k, v)| (k.clone(), *v))
                    }
                };
                let Some((sop, want)) = pick else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let start = secs();
                let r = read_once(&mut client, &tenant, &sop).await;
                let end = secs();
                let (ok, code) = match &r {
                    Ok(got) if *got == want => (true, "OK".to_string()),
                    Ok(_) => (false, "WRONG_BYTES".to_string()),
                    Err(e) => (false, code_of(e)),
                };
                shared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .calls
                    .push(Call {
                        write: false,
                        start,
                        end,
                        ok,
                        code,
                    });
                if !ok {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    // Protection samples, once a second.
    {
        let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
        let mut admin = admin.clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(s) = admin.status(StatusRequest { brief: true }).await {
                    let s = s.into_inner();
                    shared
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .protection
                        .push((secs(), s.under_protected));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }

    progress.set_message(format!("baseline load for {} s", a.baseline_secs));
    tokio::time::sleep(Duration::from_secs(a.baseline_secs)).await;

    // Out.
    progress.set_message(format!("taking site {} out", a.site));
    let t_out = secs();
    let taken = site_action(&mut admin, &a, true).await?;
    progress.set_message(format!(
        "site {} out ({}), holding {} s",
        a.site, taken, a.outage_secs
    ));
    tokio::time::sleep(Duration::from_secs(a.outage_secs)).await;

    // Back.
    progress.set_message(format!("restoring site {}", a.site));
    let t_back = secs();
    let restored = site_action(&mut admin, &a, false).await?;
    progress.set_message("waiting for full protection".to_string());
    let deadline = Instant::now() + Duration::from_secs(a.recovery_timeout_secs);
    let mut t_full = None;
    // Give the site's nodes time to report, so "full" is not read off a
    // map that has not noticed the outage's writes yet.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while Instant::now() < deadline {
        if let Ok(s) = admin.status(StatusRequest { brief: true }).await {
            let s = s.into_inner();
            let queue = s.repair.as_ref().map(|r| r.queue_instances).unwrap_or(0);
            progress.set_message(format!(
                "waiting for full protection: {} under-protected, repair queue {queue}",
                s.under_protected
            ));
            if s.under_protected == 0 && queue == 0 && s.damaged_shards == 0 {
                t_full = Some(secs());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }

    // RPO: every acknowledged drill write, read back and checked.
    progress.set_message("verifying every acknowledged drill instance".to_string());
    let (acked, unknown) = {
        let sh = shared.lock().unwrap_or_else(|e| e.into_inner());
        (sh.acked.clone(), sh.unknown.clone())
    };
    let mut client = ArchiveClient::new(reader.clone());
    let mut lost = Vec::new();
    for (sop, want) in &acked {
        match read_once(&mut client, &a.tenant, sop).await {
            Ok(got) if got == *want => {}
            Ok(_) => lost.push(format!("{sop}: wrong bytes")),
            Err(e) => lost.push(format!("{sop}: {}", code_of(&e))),
        }
    }
    let mut half = Vec::new();
    for (sop, want) in &unknown {
        match read_once(&mut client, &a.tenant, sop).await {
            Ok(got) if got == *want => {}
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Ok(_) => half.push(format!("{sop}: wrong bytes")),
            Err(e) => half.push(format!("{sop}: {}", code_of(&e))),
        }
    }
    progress.finish_and_clear();

    let sh = shared.lock().unwrap_or_else(|e| e.into_inner());
    let report = build_report(
        &a,
        &ep,
        &sh,
        Marks {
            t_out,
            t_back,
            t_full,
            taken,
            restored,
        },
        &lost,
        &half,
        acked.len(),
    );
    drop(sh);
    let json_path = out_dir.join("report.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", json_path.display()))?;
    let html_path = out_dir.join("report.html");
    std::fs::write(&html_path, html_report(&report))
        .with_context(|| format!("write {}", html_path.display()))?;
    if a.json {
        print_json(&report)?;
    } else {
        print_table(&report);
        println!(
            "report: {} and {}",
            json_path.display(),
            html_path.display()
        );
    }
    Ok(if lost.is_empty() && half.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

struct Marks {
    t_out: f64,
    t_back: f64,
    t_full: Option<f64>,
    taken: String,
    restored: String,
}

/// Takes the site out or brings it back: through the Admin API (kura
/// dev), or the operator's command.
async fn site_action(
    admin: &mut kura_proto::v1::admin_client::AdminClient<Channel>,
    a: &SiteDownArgs,
    out: bool,
) -> anyhow::Result<String> {
    let command = if out { &a.take_out } else { &a.restore };
    if let Some(cmd) = command {
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .status()
            .await
            .with_context(|| format!("run {cmd:?}"))?;
        if !status.success() {
            bail!("{cmd:?} failed: {status}");
        }
        return Ok(format!("ran {cmd:?}"));
    }
    let r = admin
        .drill_site(DrillSiteRequest {
            site: a.site.clone(),
            action: if out {
                Action::TakeOut
            } else {
                Action::Restore
            } as i32,
        })
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "{} (for a cluster of separate processes, pass --take-out and --restore commands)",
                s.message()
            )
        })?
        .into_inner();
    Ok(format!(
        "storage nodes {:?} {}",
        r.nodes,
        if out { "stopped" } else { "started" }
    ))
}

fn ratio(ok: usize, all: usize) -> Value {
    if all == 0 {
        Value::Null
    } else {
        json!(ok as f64 / all as f64)
    }
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    a: &SiteDownArgs,
    endpoint: &str,
    sh: &Shared,
    m: Marks,
    lost: &[String],
    half: &[String],
    acked: usize,
) -> Value {
    let during = |c: &&Call| c.start >= m.t_out && c.start < m.t_back;
    let count = |write: bool, f: &dyn Fn(&&Call) -> bool| {
        let all: Vec<&Call> = sh.calls.iter().filter(|c| c.write == write).collect();
        let sel: Vec<&&Call> = all.iter().filter(|c| f(c)).collect();
        (sel.iter().filter(|c| c.ok).count(), sel.len())
    };
    let (w_ok, w_all) = count(true, &during);
    let (r_ok, r_all) = count(false, &during);
    let (bw_ok, _) = count(true, &|c: &&Call| c.end < m.t_out);
    // RTO: the first write that started after the site went out and was
    // acknowledged.
    let rto = sh
        .calls
        .iter()
        .filter(|c| c.write && c.ok && c.start >= m.t_out)
        .map(|c| c.end - m.t_out)
        .fold(None, |acc: Option<f64>, x| {
            Some(acc.map_or(x, |a| a.min(x)))
        });
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for c in sh.calls.iter().filter(|c| !c.ok) {
        *errors
            .entry(format!(
                "{} {}",
                if c.write { "store" } else { "retrieve" },
                c.code
            ))
            .or_default() += 1;
    }
    // Per-second timeline.
    let end = sh.calls.iter().map(|c| c.end).fold(0.0f64, f64::max);
    let seconds = end.ceil() as usize + 1;
    let mut timeline = vec![[0u64; 4]; seconds];
    for c in &sh.calls {
        let s = (c.end as usize).min(seconds - 1);
        let slot = match (c.write, c.ok) {
            (true, true) => 0,
            (false, true) => 1,
            (true, false) => 2,
            (false, false) => 3,
        };
        timeline[s][slot] += 1;
    }
    json!({
        "drill": "site-down",
        "site": a.site,
        "endpoint": endpoint,
        "started_unix_ms": unix_ms() - (end * 1000.0) as i64,
        "site_out": m.taken,
        "site_restored": m.restored,
        "outage_secs": m.t_back - m.t_out,
        "baseline_writes_per_sec": if m.t_out > 0.0 { bw_ok as f64 / m.t_out } else { 0.0 },
        "write_availability": ratio(w_ok, w_all),
        "read_availability": ratio(r_ok, r_all),
        "writes_during_outage": {"ok": w_ok, "attempted": w_all},
        "reads_during_outage": {"ok": r_ok, "attempted": r_all},
        "rto_secs": rto,
        "rpo_instances_lost": lost.len(),
        "lost": lost,
        "unknown_outcome_half_written": half,
        "acknowledged_writes": acked,
        "time_to_full_protection_secs": m.t_full.map(|t| t - m.t_back),
        "errors": errors,
        "marks": {"out": m.t_out, "back": m.t_back, "full": m.t_full},
        "timeline": timeline.iter().enumerate().map(|(i, t)| json!({
            "t": i, "writes_ok": t[0], "reads_ok": t[1], "writes_failed": t[2], "reads_failed": t[3],
        })).collect::<Vec<_>>(),
        "under_protected": sh.protection.iter().map(|(t, u)| json!({"t": t, "instances": u})).collect::<Vec<_>>(),
    })
}

fn fmt_opt(v: &Value, unit: &str) -> String {
    match v.as_f64() {
        Some(x) if unit == "%" => format!("{:.1} %", x * 100.0),
        Some(x) => format!("{x:.2} {unit}"),
        None => "n/a".into(),
    }
}

fn print_table(r: &Value) {
    println!(
        "site-down drill of site {}",
        r["site"].as_str().unwrap_or("?")
    );
    let rows = [
        ("outage", fmt_opt(&r["outage_secs"], "s")),
        (
            "write availability during outage",
            format!(
                "{} ({} of {})",
                fmt_opt(&r["write_availability"], "%"),
                r["writes_during_outage"]["ok"],
                r["writes_during_outage"]["attempted"]
            ),
        ),
        (
            "read availability during outage",
            format!(
                "{} ({} of {})",
                fmt_opt(&r["read_availability"], "%"),
                r["reads_during_outage"]["ok"],
                r["reads_during_outage"]["attempted"]
            ),
        ),
        (
            "RTO (writes acknowledged again)",
            fmt_opt(&r["rto_secs"], "s"),
        ),
        (
            "RPO (acknowledged instances lost)",
            r["rpo_instances_lost"].to_string(),
        ),
        (
            "time to full protection after restore",
            fmt_opt(&r["time_to_full_protection_secs"], "s"),
        ),
        (
            "acknowledged drill writes",
            r["acknowledged_writes"].to_string(),
        ),
    ];
    for (k, v) in rows {
        println!("  {k:<40} {v}");
    }
    if let Some(errors) = r["errors"].as_object().filter(|e| !e.is_empty()) {
        println!("  failed calls:");
        for (k, v) in errors {
            println!("    {k:<36} {v}");
        }
    }
}

/// A self-contained HTML page with the figures and an SVG timeline.
fn html_report(r: &Value) -> String {
    let timeline = r["timeline"].as_array().cloned().unwrap_or_default();
    let prot = r["under_protected"].as_array().cloned().unwrap_or_default();
    let (w, h, pad) = (900.0, 260.0, 40.0);
    let tmax = (timeline.len().max(2) - 1) as f64;
    let vmax = timeline
        .iter()
        .flat_map(|t| {
            ["writes_ok", "reads_ok", "writes_failed", "reads_failed"]
                .map(|k| t[k].as_f64().unwrap_or(0.0))
        })
        .fold(1.0f64, f64::max);
    let pmax = prot
        .iter()
        .map(|p| p["instances"].as_f64().unwrap_or(0.0))
        .fold(1.0f64, f64::max);
    let x = |t: f64| pad + t / tmax * (w - 2.0 * pad);
    let y = |v: f64, max: f64| h - pad - v / max * (h - 2.0 * pad);
    let line = |key: &str, color: &str| {
        let pts: Vec<String> = timeline
            .iter()
            .map(|t| {
                format!(
                    "{:.1},{:.1}",
                    x(t["t"].as_f64().unwrap_or(0.0)),
                    y(t[key].as_f64().unwrap_or(0.0), vmax)
                )
            })
            .collect();
        format!(
            "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>",
            pts.join(" ")
        )
    };
    let ppts: Vec<String> = prot
        .iter()
        .map(|p| {
            format!(
                "{:.1},{:.1}",
                x(p["t"].as_f64().unwrap_or(0.0)),
                y(p["instances"].as_f64().unwrap_or(0.0), pmax)
            )
        })
        .collect();
    let out = r["marks"]["out"].as_f64().unwrap_or(0.0);
    let back = r["marks"]["back"].as_f64().unwrap_or(0.0);
    let mut rows = String::new();
    for (k, v) in [
        ("Site", r["site"].to_string()),
        ("Outage", fmt_opt(&r["outage_secs"], "s")),
        (
            "Write availability during outage",
            fmt_opt(&r["write_availability"], "%"),
        ),
        (
            "Read availability during outage",
            fmt_opt(&r["read_availability"], "%"),
        ),
        ("RTO", fmt_opt(&r["rto_secs"], "s")),
        (
            "RPO (acknowledged instances lost)",
            r["rpo_instances_lost"].to_string(),
        ),
        (
            "Time to full protection after restore",
            fmt_opt(&r["time_to_full_protection_secs"], "s"),
        ),
        (
            "Acknowledged drill writes",
            r["acknowledged_writes"].to_string(),
        ),
        ("Site taken out by", r["site_out"].to_string()),
    ] {
        rows.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>",
            html_escape(k),
            html_escape(&v)
        ));
    }
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>Kura site-down drill</title>\
<style>body{{font-family:sans-serif;margin:2em}}th{{text-align:left;padding-right:2em}}\
.legend span{{margin-right:1.5em}}</style></head><body>\
<h1>Kura failover drill: site-down</h1><table>{rows}</table>\
<h2>Timeline</h2><svg width='{w}' height='{h}' xmlns='http://www.w3.org/2000/svg'>\
<rect x='{ox:.1}' y='{pad}' width='{ow:.1}' height='{ih:.1}' fill='#fdd'/>\
<line x1='{pad}' y1='{base:.1}' x2='{xr:.1}' y2='{base:.1}' stroke='#999'/>\
{wl}{rl}{wf}{rf}<polyline fill='none' stroke='#a0a' stroke-dasharray='4 3' stroke-width='2' points='{pp}'/>\
<text x='{pad}' y='{ty}' font-size='12'>0 s</text><text x='{xr:.1}' y='{ty}' font-size='12' text-anchor='end'>{tmax:.0} s</text>\
</svg><p class='legend'><span style='color:#080'>■ stores ok/s</span><span style='color:#06c'>■ retrieves ok/s</span>\
<span style='color:#c00'>■ failed stores/s</span><span style='color:#f80'>■ failed retrieves/s</span>\
<span style='color:#a0a'>┅ under-protected instances (max {pmax:.0})</span><span style='background:#fdd'>site out</span></p>\
<h2>Raw report</h2><pre>{raw}</pre></body></html>",
        ox = x(out),
        ow = (x(back) - x(out)).max(0.0),
        ih = h - 2.0 * pad,
        base = h - pad,
        xr = w - pad,
        ty = h - pad / 3.0,
        wl = line("writes_ok", "#080"),
        rl = line("reads_ok", "#06c"),
        wf = line("writes_failed", "#c00"),
        rf = line("reads_failed", "#f80"),
        pp = ppts.join(" "),
        raw = html_escape(&serde_json::to_string_pretty(r).unwrap_or_default()),
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&#39;")
        .replace('"', "&quot;")
}

async fn verify(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let (mut admin, ep) = admin_of(&a.endpoint, &a.creds).await?;
    let channel = connect_channel(&a.endpoint, &a.creds, Some(&a.tenant), ClientRole::Reader)
        .await?
        .channel;
    let mut client = ArchiveClient::new(channel);
    // Every instance's (uid, blake3): paged from the index.
    let mut all = Vec::new();
    let mut after = String::new();
    loop {
        let page = admin
            .list_instances(ListInstancesRequest {
                tenant: a.tenant.clone(),
                after: after.clone(),
                limit: 1000,
            })
            .await
            .map_err(|s| anyhow::anyhow!("list instances from {ep}: {}", s.message()))?
            .into_inner();
        for i in page.instances {
            let hash: [u8; 32] = i.blake3.as_ref().try_into().unwrap_or([0; 32]);
            all.push((i.sop_instance_uid, hash, i.size));
        }
        if page.next.is_empty() {
            break;
        }
        after = page.next;
    }
    let seed = a.seed.unwrap_or_else(|| unix_ms() as u64);
    let chosen: Vec<_> = if a.all || a.sample >= all.len() {
        all.clone()
    } else {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        rand::seq::index::sample(&mut rng, all.len(), a.sample)
            .into_iter()
            .map(|i| all[i].clone())
            .collect()
    };
    let bar = crate::cmd::progress_bar(
        chosen.len() as u64,
        a.json,
        "verifying [{bar:30}] {pos}/{len} eta {eta}",
    );
    let mut bad = Vec::new();
    let mut bytes = 0u64;
    for (sop, want, size) in &chosen {
        match read_once(&mut client, &a.tenant, sop).await {
            Ok(got) if got == *want => bytes += size,
            Ok(_) => bad.push(json!({"sop_instance_uid": sop, "error": "blake3 mismatch"})),
            Err(e) => bad.push(
                json!({"sop_instance_uid": sop, "error": code_of(&e), "message": e.message()}),
            ),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let report = json!({
        "tenant": a.tenant,
        "instances": all.len(),
        "checked": chosen.len(),
        "seed": seed,
        "bytes_checked": bytes,
        "failed": bad,
    });
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "checked {} of {} instance(s) of tenant {} ({} bytes, seed {seed}): {} failed",
            chosen.len(),
            all.len(),
            a.tenant,
            bytes,
            bad.len()
        );
        for b in &bad {
            println!("  {b}");
        }
    }
    Ok(if bad.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

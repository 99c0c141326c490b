//! `kura drill site-down`: take a site out under the workload, hold the
//! outage, restore it, wait for full protection, re-read every acknowledged
//! instance.

use super::*;

pub(super) async fn site_down(a: SiteDownArgs) -> anyhow::Result<ExitCode> {
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

pub(super) struct Marks {
    pub(super) t_out: f64,
    pub(super) t_back: f64,
    pub(super) t_full: Option<f64>,
    pub(super) taken: String,
    pub(super) restored: String,
}

/// Takes the site out or brings it back: through the Admin API (kura
/// dev), or the operator's command.
pub(super) async fn site_action(
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

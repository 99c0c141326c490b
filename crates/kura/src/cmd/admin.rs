//! `kura admin …`: the operator's commands, through a gateway's
//! `kura.v1.Admin` service. Every command prints a readable table, or one
//! JSON document with `--json`. Exit codes: 0 done, 1 refused (e.g. a
//! remove-node that would lose protection: the message says what), 2 could
//! not run.

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::cmd::client::Channel;
use anyhow::Context;
use clap::{Args, Subcommand};
use kura_proto::v1::admin_client::AdminClient;
use kura_proto::v1::archive_client::ArchiveClient;
use kura_proto::v1::{
    AddNodeRequest, ClusterStatus, NodeRequest, ProtectionRequest, RemoveNodeRequest,
    RepairNowRequest, RepairStatus, ScrubNowRequest, SetProfileRequest, StatusRequest,
    StudyProtectionRequest,
};
use serde_json::{Value, json};

use crate::cmd::client::{CredentialArgs, RpcError, connect_channel, print_json};
use kura_auth::ClientRole;

#[derive(Debug, Clone, Args)]
pub struct AdminConnect {
    /// A gateway's endpoint: HOST:PORT, https://HOST:PORT or http://HOST:PORT.
    #[arg(long, env = "KURA_ENDPOINT", default_value = crate::cmd::client::DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// The admin credential's tenant (to find client-TENANT-admin.pem).
    #[arg(long = "as-tenant", env = "KURA_TENANT", value_name = "TENANT")]
    pub as_tenant: Option<String>,
    #[command(flatten)]
    pub creds: CredentialArgs,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Sites, nodes, states, capacity, the Raft leader, protection and
    /// repair progress.
    Status(AdminConnect),
    /// Move every shard off a node (it keeps serving reads meanwhile), with
    /// progress; afterwards it can be removed.
    Drain {
        /// The storage node's id.
        node: u64,
        /// Return once draining started, without waiting for it to finish.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds (0: never).
        #[arg(long, default_value_t = 0)]
        timeout_secs: u64,
        #[command(flatten)]
        connect: AdminConnect,
    },
    /// Add a running storage node to the cluster map.
    AddNode {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        site: String,
        /// HOST:PORT of its shard service.
        #[arg(long)]
        addr: String,
        #[arg(long, default_value = "")]
        name: String,
        #[command(flatten)]
        connect: AdminConnect,
    },
    /// Remove a storage node. Refused while it still holds shards, unless
    /// --force (then repair rebuilds them from the others).
    RemoveNode {
        node: u64,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        connect: AdminConnect,
    },
    /// Set the erasure profile RS(K, M) for new writes.
    SetProfile {
        /// k: data shards per segment.
        data_shards: u32,
        /// m: parity shards per segment.
        parity_shards: u32,
        /// Set it even if the cluster cannot place it with full protection.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        connect: AdminConnect,
    },
    /// Show repair's queue and progress; with --now, start a pass now.
    Repair {
        #[arg(long)]
        now: bool,
        #[command(flatten)]
        connect: AdminConnect,
    },
    /// Start a scrub pass now on every storage node (or one).
    Scrub {
        #[arg(long)]
        now: bool,
        /// Only this node.
        #[arg(long, default_value_t = 0)]
        node: u64,
        #[command(flatten)]
        connect: AdminConnect,
    },
    /// How many instances are fully protected, under-protected or
    /// unreadable; with --study, whether that study survives losing any
    /// one site right now.
    Protection {
        #[arg(long, value_name = "UID")]
        study: Option<String>,
        /// The study's tenant (default: the credential's).
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        connect: AdminConnect,
    },
    /// Set the tenant's retention period: no instance can be deleted
    /// within DAYS of its store (0 clears it).
    Retention {
        days: u32,
        /// The tenant (default: the credential's).
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        connect: AdminConnect,
    },
    /// Put a study on legal hold (no instance of it can be deleted) with
    /// --reason, or release it with --release.
    Hold {
        #[arg(long, value_name = "UID")]
        study: String,
        #[arg(long, required_unless_present = "release")]
        reason: Option<String>,
        #[arg(long, conflicts_with = "reason")]
        release: bool,
        /// The study's tenant (default: the credential's).
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        connect: AdminConnect,
    },
    /// Encryption at rest: instances per cluster key version (status), and
    /// re-wrapping every data key under the gateway's newest key (rotate).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Bearer tokens: create (shown once), list, revoke.
    #[command(subcommand)]
    Token(crate::cmd::audit::TokenCommand),
    /// The audit trail: every access, allowed or refused, hash-chained.
    /// Without a subcommand: query it (auditor or admin role).
    Audit(crate::cmd::audit::AuditArgs),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// How many instances are sealed under each cluster key version, and
    /// which versions the cluster and the gateway hold. A version with no
    /// instance left can be removed from the gateways' key files.
    Status(AdminConnect),
    /// Re-wrap every instance's data key under the gateway's current
    /// (newest) cluster key, with progress. Only manifests change, never
    /// the stored data; safe to stop and run again (it resumes where the
    /// work is left).
    Rotate {
        /// Instances per call (at most 1000).
        #[arg(long, default_value_t = 256)]
        page: u32,
        /// Start after this instance (TENANT/UID, as printed when a run
        /// stops early) instead of from the beginning.
        #[arg(long, value_name = "TENANT/UID")]
        resume_after: Option<String>,
        #[command(flatten)]
        connect: AdminConnect,
    },
}

pub fn run(command: AdminCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    let result = rt.block_on(run_async(command));
    result.or_else(crate::cmd::client::exit_on_refusal)
}

pub async fn admin_client(c: &AdminConnect) -> anyhow::Result<(AdminClient<Channel>, String)> {
    let c = connect_channel(
        &c.endpoint,
        &c.creds,
        c.as_tenant.as_deref(),
        ClientRole::Admin,
    )
    .await?;
    Ok((AdminClient::new(c.channel), c.endpoint))
}

fn rpc(endpoint: &str) -> impl Fn(tonic::Status) -> anyhow::Error + '_ {
    move |s| anyhow::Error::new(RpcError::new(&s, endpoint))
}

async fn run_async(command: AdminCommand) -> anyhow::Result<ExitCode> {
    match command {
        AdminCommand::Token(t) => return crate::cmd::audit::token(t).await,
        AdminCommand::Keys(k) => return keys(k).await,
        AdminCommand::Audit(a) => {
            crate::cmd::audit::check_filters(&a.filters)?;
            return crate::cmd::audit::audit(a).await;
        }
        AdminCommand::Status(c) => {
            let (mut client, ep) = admin_client(&c).await?;
            let s = client
                .status(StatusRequest { brief: false })
                .await
                .map_err(rpc(&ep))?
                .into_inner();
            show_status(&s, c.json)?;
        }
        AdminCommand::Drain {
            node,
            no_wait,
            timeout_secs,
            connect,
        } => {
            let (mut client, ep) = admin_client(&connect).await?;
            let s = client
                .drain(NodeRequest { id: node })
                .await
                .map_err(rpc(&ep))?
                .into_inner();
            let held = held_by(&s, node);
            if no_wait || held == 0 {
                return finish_drain(&s, node, connect.json);
            }
            let bar = crate::cmd::progress_bar(
                held,
                connect.json,
                "draining node {msg} [{bar:30}] {pos}/{len} instances moved, eta {eta}",
            );
            bar.set_message(node.to_string());
            let started = Instant::now();
            let mut last = s;
            loop {
                let left = held_by(&last, node);
                bar.set_position(held.saturating_sub(left));
                if left == 0 {
                    break;
                }
                if timeout_secs > 0 && started.elapsed() > Duration::from_secs(timeout_secs) {
                    bar.abandon();
                    anyhow::bail!(
                        "node {node} still holds shards of {left} instance(s) after {timeout_secs} s; \
                         the drain goes on (see kura admin status)"
                    );
                }
                if !connect.json && !io::stderr().is_terminal() {
                    eprintln!("draining node {node}: {left} instance(s) left");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                last = client
                    .status(StatusRequest { brief: false })
                    .await
                    .map_err(rpc(&ep))?
                    .into_inner();
            }
            bar.finish_and_clear();
            return finish_drain(&last, node, connect.json);
        }
        AdminCommand::AddNode {
            id,
            site,
            addr,
            name,
            connect,
        } => {
            let (mut client, ep) = admin_client(&connect).await?;
            let s = client
                .add_node(AddNodeRequest {
                    id,
                    site,
                    addr,
                    name,
                })
                .await
                .map_err(rpc(&ep))?
                .into_inner();
            show_status(&s, connect.json)?;
        }
        AdminCommand::RemoveNode {
            node,
            force,
            connect,
        } => {
            let (mut client, ep) = admin_client(&connect).await?;
            let s = client
                .remove_node(RemoveNodeRequest { id: node, force })
                .await
                .map_err(rpc(&ep))?
                .into_inner();
            show_status(&s, connect.json)?;
        }
        AdminCommand::SetProfile {
            data_shards,
            parity_shards,
            force,
            connect,
        } => {
            let (mut client, ep) = admin_client(&connect).await?;
            let s = client
                .set_profile(SetProfileRequest {
                    data_shards,
                    parity_shards,
                    force,
                })
                .await
                .map_err(rpc(&ep))?
                .into_inner();
            show_status(&s, connect.json)?;
        }
        AdminCommand::Retention {
            days,
            tenant,
            connect,
        } => {
            let (mut client, ep) = admin_client(&connect).await?;
            let r = client
                .set_retention(kura_proto::v1::SetRetentionRequest {
                    tenant: tenant.unwrap_or_default(),
                    days,
                })
                .await
                .map_err(rpc(&ep))?
                .into_inner();
            if connect.json {
                crate::cmd::client::print_json(&serde_json::json!({
                    "tenant": r.tenant,
                    "retention_days": r.days,
                }))?;
            } else if r.days == 0 {
                println!("tenant {}: no retention period", r.tenant);
            } else {
                println!(
                    "tenant {}: instances cannot be deleted within {} days of their store",
                    r.tenant, r.days
                );
            }
        }
        AdminCommand::Hold {
            study,
            reason,
            release,
            tenant,
            connect,
        } => {
            let (mut client, ep) = admin_client(&connect).await?;
            let r = client
                .set_legal_hold(kura_proto::v1::SetLegalHoldRequest {
                    tenant: tenant.unwrap_or_default(),
                    study_instance_uid: study,
                    hold: !release,
                    reason: reason.unwrap_or_default(),
                })
                .await
                .map_err(rpc(&ep))?
                .into_inner();
            if connect.json {
                crate::cmd::client::print_json(&serde_json::json!({
                    "tenant": r.tenant,
                    "study_instance_uid": r.study_instance_uid,
                    "held": r.held,
                    "reason": r.reason,
                    "since_unix_ms": r.since_unix_ms,
                    "by": r.by,
                }))?;
            } else if r.held {
                println!(
                    "study {} of tenant {} is on legal hold ({})",
                    r.study_instance_uid, r.tenant, r.reason
                );
            } else {
                println!(
                    "study {} of tenant {} is not on legal hold",
                    r.study_instance_uid, r.tenant
                );
            }
        }
        AdminCommand::Repair { now, connect } => {
            let (mut client, ep) = admin_client(&connect).await?;
            let r = if now {
                client
                    .repair_now(RepairNowRequest {})
                    .await
                    .map_err(rpc(&ep))?
                    .into_inner()
            } else {
                client
                    .status(StatusRequest { brief: false })
                    .await
                    .map_err(rpc(&ep))?
                    .into_inner()
                    .repair
                    .unwrap_or_default()
            };
            if connect.json {
                print_json(&repair_json(&r))?;
            } else {
                let mut out = io::stdout().lock();
                if now {
                    writeln!(out, "repair pass started")?;
                }
                write_repair(&mut out, &r)?;
            }
        }
        AdminCommand::Scrub { now, node, connect } => {
            let (mut client, ep) = admin_client(&connect).await?;
            if !now {
                anyhow::bail!(
                    "storage nodes scrub on their own schedule ([scrub] in kura.toml); \
                     `kura admin scrub --now` starts a pass now"
                );
            }
            let r = client
                .scrub_now(ScrubNowRequest { node })
                .await
                .map_err(rpc(&ep))?
                .into_inner();
            if connect.json {
                print_json(&json!({"started": r.started, "failed": r.failed}))?;
            } else {
                println!("scrub started on nodes {:?}", r.started);
                for f in &r.failed {
                    println!("not started: {f}");
                }
            }
            if !r.failed.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        AdminCommand::Protection {
            study,
            tenant,
            connect,
        } => match study {
            Some(study) => {
                let conn = connect_channel(
                    &connect.endpoint,
                    &connect.creds,
                    tenant.as_deref().or(connect.as_tenant.as_deref()),
                    ClientRole::Reader,
                )
                .await?;
                let ep = conn.endpoint;
                let tenant = tenant.unwrap_or(conn.tenant);
                let mut client = ArchiveClient::new(conn.channel);
                let p = client
                    .study_protection(StudyProtectionRequest {
                        tenant,
                        study_instance_uid: study.clone(),
                    })
                    .await
                    .map_err(rpc(&ep))?
                    .into_inner();
                if connect.json {
                    print_json(&json!({
                        "study_instance_uid": study,
                        "instances": p.instances,
                        "fully_protected": p.fully_protected,
                        "under_protected": p.under_protected,
                        "unreadable": p.unreadable,
                        "at_risk": p.at_risk,
                        "survives_site_loss": p.survives_site_loss,
                        "critical_sites": p.critical_sites,
                        "attention": p.attention.iter().map(|a| json!({
                            "sop_instance_uid": a.sop_instance_uid,
                            "state": instance_state_name(a.state),
                            "why": a.why,
                            "critical_sites": a.critical_sites,
                        })).collect::<Vec<_>>(),
                    }))?;
                } else {
                    println!("study {study}: {} instance(s)", p.instances);
                    println!(
                        "  fully protected {}, under-protected {}, unreadable {}, at risk {}",
                        p.fully_protected, p.under_protected, p.unreadable, p.at_risk
                    );
                    for a in &p.attention {
                        println!(
                            "  {} {}: {}",
                            instance_state_name(a.state),
                            a.sop_instance_uid,
                            a.why
                        );
                    }
                    if p.survives_site_loss {
                        println!("  survives losing any one site now: yes");
                    } else {
                        println!(
                            "  survives losing any one site now: NO (critical sites: {})",
                            if p.critical_sites.is_empty() {
                                "-".to_string()
                            } else {
                                p.critical_sites.join(", ")
                            }
                        );
                    }
                }
            }
            None => {
                let (mut client, ep) = admin_client(&connect).await?;
                let p = client
                    .protection(ProtectionRequest {})
                    .await
                    .map_err(rpc(&ep))?
                    .into_inner();
                if connect.json {
                    print_json(&json!({
                        "instances": p.instances,
                        "fully_protected": p.fully_protected,
                        "under_protected": p.under_protected,
                        "unreadable": p.unreadable,
                        "at_risk": p.at_risk,
                    }))?;
                } else {
                    println!("instances        {}", p.instances);
                    println!("fully protected  {}", p.fully_protected);
                    println!("under-protected  {}", p.under_protected);
                    println!("unreadable now   {}", p.unreadable);
                    println!("at risk (one more site lost = unreadable) {}", p.at_risk);
                }
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn held_by(s: &ClusterStatus, node: u64) -> u64 {
    s.nodes
        .iter()
        .find(|n| n.id == node)
        .map(|n| n.instances_held)
        .unwrap_or(0)
}

fn finish_drain(s: &ClusterStatus, node: u64, json: bool) -> anyhow::Result<ExitCode> {
    let held = held_by(s, node);
    if json {
        print_json(&json!({"node": node, "instances_held": held, "status": status_json(s)}))?;
    } else if held == 0 {
        println!(
            "node {node} is drained: it holds nothing; `kura admin remove-node {node}` removes it"
        );
    } else {
        println!("node {node} is draining: {held} instance(s) still have shards there");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn repair_json(r: &RepairStatus) -> Value {
    json!({
        "runs_here": r.runs_here,
        "active": r.active,
        "queue_instances": r.queue_instances,
        "queue_shards": r.queue_shards,
        "queue_bytes": r.queue_bytes,
        "eta_seconds": r.eta_seconds,
        "rate_bytes_per_sec": r.rate_bytes_per_sec,
        "instances_repaired": r.instances_repaired,
        "shards_rebuilt": r.shards_rebuilt,
        "shards_moved": r.shards_moved,
        "damaged_rewritten": r.damaged_rewritten,
        "bytes_written": r.bytes_written,
        "bytes_read": r.bytes_read,
        "cross_site_bytes": r.cross_site_bytes,
        "failures": r.failures,
        "waiting": r.waiting,
        "last_error": r.last_error,
    })
}

pub fn status_json(s: &ClusterStatus) -> Value {
    json!({
        "sites": s.sites,
        "nodes": s.nodes.iter().map(|n| json!({
            "id": n.id, "name": n.name, "site": n.site, "addr": n.addr, "state": n.state,
            "capacity_bytes": n.capacity_bytes, "used_bytes": n.used_bytes,
            "instances_held": n.instances_held,
        })).collect::<Vec<_>>(),
        "leader_id": s.leader_id,
        "voters": s.voters.iter().map(|v| json!({
            "id": v.id, "addr": v.addr, "state": v.state, "term": v.term,
            "last_applied": v.last_applied,
        })).collect::<Vec<_>>(),
        "map_epoch": s.map_epoch,
        "profile": s.profile,
        "instances": s.instances,
        "under_protected": s.under_protected,
        "damaged_shards": s.damaged_shards,
        "repair": s.repair.as_ref().map(repair_json),
        "tls_cert_expiry_days": s.tls_cert_expiry_days,
        "insecure_plaintext": s.insecure_plaintext,
    })
}

fn gib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1u64 << 30) as f64)
}

fn write_repair(out: &mut impl Write, r: &RepairStatus) -> io::Result<()> {
    if !r.runs_here {
        return writeln!(out, "repair: does not run in this gateway");
    }
    writeln!(
        out,
        "repair: {} — queue {} instance(s), {} shard(s), {} bytes; eta {}",
        if r.active { "working" } else { "idle" },
        r.queue_instances,
        r.queue_shards,
        r.queue_bytes,
        r.eta_seconds
            .map(|e| format!("{e:.0} s"))
            .unwrap_or_else(|| "unknown (waiting for nodes)".into())
    )?;
    writeln!(
        out,
        "  since start: {} instance(s) repaired, {} rebuilt, {} moved, {} damaged rewritten, \
         {} bytes written, {} read ({} across sites), {} failure(s), {} waiting, \
         {} left to another gateway's lease",
        r.instances_repaired,
        r.shards_rebuilt,
        r.shards_moved,
        r.damaged_rewritten,
        r.bytes_written,
        r.bytes_read,
        r.cross_site_bytes,
        r.failures,
        r.waiting,
        r.leased_elsewhere
    )?;
    if !r.last_error.is_empty() {
        writeln!(out, "  last error: {}", r.last_error)?;
    }
    Ok(())
}

fn show_status(s: &ClusterStatus, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&status_json(s));
    }
    let mut out = io::stdout().lock();
    match (s.insecure_plaintext, s.tls_cert_expiry_days) {
        (true, _) => writeln!(
            out,
            "WARNING: insecure_plaintext: no TLS and no authentication on this cluster"
        )?,
        (false, Some(days)) if days < 30.0 => writeln!(
            out,
            "WARNING: TLS: the first certificate expires in {days:.0} days; issue new ones with kura certs"
        )?,
        (false, Some(days)) => writeln!(
            out,
            "TLS on every link; the first certificate expires in {days:.0} days"
        )?,
        (false, None) => {}
    }
    writeln!(
        out,
        "cluster: {} instance(s), {} under-protected, {} damaged shard(s); profile {}; map epoch {}",
        s.instances, s.under_protected, s.damaged_shards, s.profile, s.map_epoch
    )?;
    writeln!(
        out,
        "metadata leader: {}",
        s.leader_id
            .map(|l| l.to_string())
            .unwrap_or_else(|| "none (no quorum?)".into())
    )?;
    for v in &s.voters {
        writeln!(
            out,
            "  voter {:>3} {:<24} {:<12} term {}",
            v.id, v.addr, v.state, v.term
        )?;
    }
    writeln!(
        out,
        "{:>5}  {:<10} {:<10} {:<22} {:<9} {:>9} {:>9} {:>9}",
        "node", "name", "site", "addr", "state", "used GiB", "cap GiB", "instances"
    )?;
    for site in &s.sites {
        for n in s.nodes.iter().filter(|n| &n.site == site) {
            writeln!(
                out,
                "{:>5}  {:<10} {:<10} {:<22} {:<9} {:>9} {:>9} {:>9}",
                n.id,
                n.name,
                n.site,
                n.addr,
                n.state,
                gib(n.used_bytes),
                gib(n.capacity_bytes),
                n.instances_held
            )?;
        }
    }
    if let Some(r) = &s.repair {
        write_repair(&mut out, r)?;
    }
    Ok(())
}

/// An `InstanceProtection.State` as the CLI prints it.
fn instance_state_name(value: i32) -> &'static str {
    use kura_proto::v1::instance_protection::State;
    match State::try_from(value) {
        Ok(State::Unreadable) => "unreadable",
        Ok(State::AtRisk) => "at-risk",
        _ => "unknown",
    }
}

async fn keys(command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Status(c) => {
            let (mut client, ep) = admin_client(&c).await?;
            let s = client
                .key_status(kura_proto::v1::KeyStatusRequest {})
                .await
                .map_err(rpc(&ep))?
                .into_inner();
            if c.json {
                crate::cmd::client::print_json(&serde_json::json!({
                    "current": s.current,
                    "versions": s.versions.iter().map(|v| serde_json::json!({
                        "version": v.version,
                        "instances": v.instances,
                        "registered": v.registered,
                        "held_by_gateway": v.held_here,
                    })).collect::<Vec<_>>(),
                }))?;
            } else {
                println!("new instances are sealed under key version {}", s.current);
                for v in &s.versions {
                    let mut notes = Vec::new();
                    if v.version == s.current {
                        notes.push("current");
                    }
                    if !v.held_here {
                        notes.push("NOT in this gateway's key file");
                    }
                    if v.instances == 0 && v.version != s.current {
                        notes.push("unused: may be retired");
                    }
                    println!(
                        "  version {:>3}: {:>10} instances{}",
                        v.version,
                        v.instances,
                        if notes.is_empty() {
                            String::new()
                        } else {
                            format!("  ({})", notes.join(", "))
                        }
                    );
                }
            }
        }
        KeysCommand::Rotate {
            page,
            resume_after,
            connect,
        } => {
            let mut after = match resume_after.as_deref() {
                None => None,
                Some(text) => match text.split_once('/') {
                    Some((t, u)) if !t.is_empty() && !u.is_empty() => {
                        Some((t.to_string(), u.to_string()))
                    }
                    _ => anyhow::bail!(
                        "--resume-after takes TENANT/UID (as a stopped rotation prints it), not {text:?}"
                    ),
                },
            };
            let (mut client, ep) = admin_client(&connect).await?;
            let status = client
                .key_status(kura_proto::v1::KeyStatusRequest {})
                .await
                .map_err(rpc(&ep))?
                .into_inner();
            let todo: u64 = status
                .versions
                .iter()
                .filter(|v| v.version != status.current)
                .map(|v| v.instances)
                .sum();
            let bar = crate::cmd::progress_bar(
                todo,
                connect.json,
                "re-wrapping under key version {msg} [{bar:30}] {pos}/{len} instances, eta {eta}",
            );
            bar.set_message(status.current.to_string());
            let (mut rewrapped, mut gone, mut failed) = (0u64, 0u64, 0u64);
            let mut first_error = String::new();
            let mut to_version;
            loop {
                let (after_tenant, after_uid) = after.clone().unwrap_or_default();
                let r = client
                    .rotate_keys(kura_proto::v1::RotateKeysRequest {
                        after_tenant,
                        after_sop_instance_uid: after_uid,
                        limit: page,
                    })
                    .await;
                let r = match r {
                    Ok(r) => r.into_inner(),
                    Err(status) => {
                        bar.abandon();
                        if let Some((t, u)) = &after {
                            eprintln!("kura: rotation stopped; resume with --resume-after {t}/{u}");
                        }
                        return Err(rpc(&ep)(status));
                    }
                };
                to_version = r.to_version;
                rewrapped += r.rewrapped;
                gone += r.gone;
                failed += r.failed;
                if first_error.is_empty() {
                    first_error = r.first_error;
                }
                bar.inc(r.rewrapped + r.gone + r.failed);
                if r.done {
                    break;
                }
                after = Some((r.next_tenant, r.next_sop_instance_uid));
            }
            bar.finish_and_clear();
            if connect.json {
                crate::cmd::client::print_json(&serde_json::json!({
                    "to_version": to_version,
                    "rewrapped": rewrapped,
                    "gone": gone,
                    "failed": failed,
                    "first_error": first_error,
                }))?;
            } else {
                println!(
                    "re-wrapped {rewrapped} instances under key version {to_version} ({gone} deleted meanwhile, {failed} failed)"
                );
                if failed > 0 {
                    println!("first failure: {first_error}");
                }
            }
            if failed > 0 {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

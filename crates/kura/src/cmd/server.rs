//! `kura server --config kura.toml --node ID`: one process of a real
//! cluster, running the roles the config gives node ID (Raft voter, storage
//! node, gateway — any mix) until Ctrl-C or SIGTERM.
//!
//! A new cluster forms by itself: the voter with the lowest id bootstraps
//! the Raft group once every voter answers, then records the cluster map
//! and erasure profile once every storage node answers (their capacity goes
//! into the map). Both steps are idempotent, so restarting any process,
//! in any order, is safe.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use kura_auth::Transport;
use kura_gateway::{Gateway, GatewayConfig};
use kura_meta::{MetaConfig, MetaNode, RaftTimings};
use kura_proto::meta::{
    AdminRequest, Applied, Command, Consistency, Query, QueryResult, Rejected, Voter,
};
use kura_proto::meta_client::{MetaClient, MetaClientError, Retry};
use kura_proto::shards_client::ShardsClient;
use kura_store::{StorageNode, StoreConfig};

use crate::config::{self, Checked};

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The cluster's configuration (the same file on every machine).
    #[arg(long, env = "KURA_CONFIG")]
    config: PathBuf,
    /// Which [[node]] of the config this process is.
    #[arg(long, env = "KURA_NODE")]
    node: u64,
    /// Only check the config and print what this node would run.
    #[arg(long)]
    check: bool,
}

pub fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("read {}", args.config.display()))?;
    let checked =
        config::parse(&args.config.display().to_string(), &text).map_err(anyhow::Error::msg)?;
    let Some(node) = checked.node(args.node) else {
        bail!(
            "{} has no [[node]] with id {} (ids: {})",
            args.config.display(),
            args.node,
            checked
                .config
                .nodes
                .iter()
                .map(|n| n.id.get_ref().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let roles: Vec<&str> = [
        node.meta.as_ref().map(|_| "meta"),
        node.store.as_ref().map(|_| "store"),
        node.gateway.as_ref().map(|_| "gateway"),
    ]
    .into_iter()
    .flatten()
    .collect();
    println!(
        "kura server: node {} in site {} runs {} (profile {}, data {})",
        args.node,
        node.site.get_ref(),
        roles.join(" + "),
        checked.profile,
        node.data.display()
    );
    let transport = checked.transport(args.node).map_err(anyhow::Error::msg)?;
    checked.config.limits.limits().map_err(anyhow::Error::msg)?;
    // A gateway without its cluster keys fails here, before anything starts.
    let keys = match &node.gateway {
        Some(_) => Some(std::sync::Arc::new(
            checked.keyring().map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    match transport.material() {
        Some(m) => println!(
            "  TLS on every link as {} (first certificate expires in {:.0} days)",
            m.principal().map(|p| p.to_string()).unwrap_or_default(),
            m.days_left()
        ),
        None => eprintln!(
            "kura server: WARNING: insecure_plaintext = true: no TLS, no authentication; every caller is trusted. Never run a cluster with patient data like this."
        ),
    }
    if args.check {
        return Ok(ExitCode::SUCCESS);
    }
    crate::cmd::meta::init_logs_with("info,openraft=warn");
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    rt.block_on(serve(checked, args.node, transport, keys))
}

async fn serve(
    checked: Checked,
    id: u64,
    transport: Transport,
    mut keys: Option<std::sync::Arc<kura_seal::Keyring>>,
) -> anyhow::Result<ExitCode> {
    if !transport.is_tls() {
        tracing::warn!("insecure_plaintext: no TLS and no authentication on any link");
    }
    let _expiry = transport
        .material()
        .map(|m| kura_gateway::ops::export_cert_expiry(std::sync::Arc::clone(m)));
    let node = checked.node(id).context("node vanished from the config")?;
    let voters = checked.voters();
    let meta_endpoints: Vec<String> = voters.iter().map(|(_, a)| a.clone()).collect();
    let cfg = &checked.config;
    let grace = Duration::from_secs(cfg.cluster.orphan_grace_secs);
    let report_interval = config::secs(&cfg.cluster.report_interval_secs);
    let timeouts = kura_meta::service::ServiceTimeouts {
        node_down_after: config::secs(&cfg.cluster.node_down_after_secs),
        node_lost_after: config::secs(&cfg.cluster.node_lost_after_secs),
        ..Default::default()
    };

    let mut meta = None;
    if let Some(addr) = &node.meta {
        let listener = tokio::net::TcpListener::bind(config::listen_addr(addr.get_ref()))
            .await
            .with_context(|| format!("listen for Raft on {}", addr.get_ref()))?;
        let m = MetaNode::start(
            MetaConfig {
                id,
                data_dir: node.data.join("meta"),
                advertise_addr: addr.get_ref().clone(),
                timings: RaftTimings::default(),
                timeouts,
                transport: transport.clone(),
            },
            listener,
        )
        .await
        .with_context(|| format!("start the metadata voter in {}", node.data.display()))?;
        println!("  meta voter {id} at {}", addr.get_ref());
        meta = Some(m);
    }
    // A gateway beside a storage node reads its shards in process.
    let local_shards = kura_proto::local::LocalShards::default();
    let mut store = None;
    let mut joiner = None;
    if let Some(addr) = &node.store {
        let listener = tokio::net::TcpListener::bind(config::listen_addr(addr.get_ref()))
            .await
            .with_context(|| format!("listen for shards on {}", addr.get_ref()))?;
        let mut sc = StoreConfig::new(id, node.data.join("store"));
        sc.meta_endpoints = meta_endpoints.clone();
        sc.orphan_grace = grace;
        sc.report_interval = report_interval;
        sc.scrub_bytes_per_sec = (cfg.scrub.rate_mb_per_sec.get_ref() * 1e6) as u64;
        sc.scrub_pass_interval = config::secs(&cfg.scrub.interval_secs);
        sc.transport = transport.clone();
        sc.local = Some(local_shards.clone());
        let s = StorageNode::start(sc, listener)
            .await
            .with_context(|| format!("start the storage node in {}", node.data.display()))?;
        println!("  storage node {id} at {}", addr.get_ref());
        store = Some(s);
        joiner = Some(tokio::spawn(join_map(
            meta_endpoints.clone(),
            transport.clone(),
            kura_placement::NodeInfo {
                id,
                name: format!("store-{id}"),
                site: node.site.get_ref().clone(),
                addr: addr.get_ref().clone(),
                state: kura_placement::NodeState::Up,
                capacity_bytes: 0,
                used_bytes: 0,
            },
        )));
    }
    // The lowest voter forms the cluster, in the background: it waits for
    // the others without holding up this node's own roles.
    let lowest = voters.iter().map(|(v, _)| *v).min();
    let former = (lowest == Some(id)).then(|| {
        let checked_map = checked.cluster_map(|_| 0);
        let profile = checked.profile;
        let voters = voters.clone();
        let transport = transport.clone();
        tokio::spawn(async move { form_cluster(voters, checked_map, profile, transport).await })
    });
    let mut ops_listener = match &node.ops {
        Some(o) => Some(
            tokio::net::TcpListener::bind(config::listen_addr(o.get_ref()))
                .await
                .with_context(|| format!("listen for the ops port on {}", o.get_ref()))?,
        ),
        None => None,
    };
    let mut gateway = None;
    if let Some(addr) = &node.gateway {
        let listener = tokio::net::TcpListener::bind(config::listen_addr(addr.get_ref()))
            .await
            .with_context(|| format!("listen for the Archive API on {}", addr.get_ref()))?;
        let Some(keys) = keys.take() else {
            anyhow::bail!("the gateway's cluster keys were not loaded");
        };
        let mut gc = GatewayConfig::new(meta_endpoints.clone(), transport.clone(), keys);
        gc.limits = checked.config.limits.limits().map_err(anyhow::Error::msg)?;
        gc.site = Some(node.site.get_ref().clone());
        gc.local_shards = local_shards.clone();
        gc.store_deadline = gc.store_deadline.min(grace / 2);
        gc.repair = cfg.repair.enabled.then(|| kura_gateway::RepairConfig {
            rate_bytes_per_sec: (cfg.repair.rate_mb_per_sec.get_ref() * 1e6).max(1.0) as u64,
            idle_interval: config::secs(&cfg.repair.idle_secs),
            delete_moved_after: config::secs(&cfg.repair.delete_moved_after_secs),
            ..kura_gateway::RepairConfig::default()
        });
        let g = Gateway::start(gc, listener, ops_listener.take())
            .await
            .context("start the gateway")?;
        println!("  gateway at {}", g.addr());
        gateway = Some(g);
    }
    // A node without a gateway serves the ops endpoints itself.
    let ops_task = ops_listener.take().map(|l| {
        let roles = roles_of(meta.is_some(), store.is_some());
        tokio::spawn(crate::ops::serve(l, roles))
    });
    crate::cmd::meta::shutdown_signal().await;
    if let Some(t) = ops_task {
        t.abort();
    }
    if let Some(j) = joiner {
        j.abort();
    }
    eprintln!("kura server: node {id} stopping");
    if let Some(f) = former {
        f.abort();
    }
    if let Some(g) = gateway {
        g.shutdown().await;
    }
    if let Some(s) = store {
        s.shutdown().await?;
    }
    if let Some(m) = meta {
        m.shutdown().await?;
    }
    eprintln!("kura server: node {id} stopped");
    Ok(ExitCode::SUCCESS)
}

fn roles_of(meta: bool, store: bool) -> String {
    match (meta, store) {
        (true, true) => "meta + store",
        (true, false) => "meta",
        (false, true) => "store",
        (false, false) => "none",
    }
    .to_string()
}

/// Puts this storage node into the cluster map if the map exists without
/// it: a node added to kura.toml after the cluster formed (a replacement
/// after a site loss, or more capacity) joins by starting.
async fn join_map(
    endpoints: Vec<String>,
    transport: Transport,
    mut info: kura_placement::NodeInfo,
) {
    let client = MetaClient::new(endpoints, transport.clone());
    let store = match ShardsClient::new(&info.addr, &transport) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot reach this node's own shard service");
            return;
        }
    };
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let map = match client
            .query(&Query::GetClusterMap {
                consistency: Consistency::Linearizable,
            })
            .await
        {
            Ok(QueryResult::ClusterMap { map: Some(m), .. }) => m,
            // No map yet: the cluster forms with this node in it.
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "waiting for the metadata cluster to join the map");
                continue;
            }
        };
        if map.node(info.id).is_some() {
            return;
        }
        if let Ok(s) = store.node_status().await {
            info.capacity_bytes = s.capacity_bytes;
            info.used_bytes = s.used_bytes;
        }
        match client
            .propose(&Command::UpsertNode(info.clone()), Retry::Idempotent)
            .await
        {
            Ok(Ok(_)) => {
                tracing::info!(node = info.id, site = %info.site, "joined the cluster map");
                return;
            }
            Ok(Err(r)) => {
                tracing::error!(node = info.id, refusal = %r, "the cluster refused this node");
                return;
            }
            Err(e) => tracing::info!(error = %e, "retrying to join the cluster map"),
        }
    }
}

/// Bootstraps the voters and records the map, each once, retrying until
/// the others are up.
async fn form_cluster(
    voters: Vec<(u64, String)>,
    mut map: kura_placement::ClusterMap,
    profile: kura_erasure::EcParams,
    transport: Transport,
) {
    let Some((_, first)) = voters.iter().min_by_key(|(id, _)| *id).cloned() else {
        return;
    };
    let client = MetaClient::new(
        voters.iter().map(|(_, a)| a.clone()).collect(),
        transport.clone(),
    );
    let request = AdminRequest::Bootstrap {
        voters: voters
            .iter()
            .map(|(id, addr)| Voter {
                id: *id,
                addr: addr.clone(),
            })
            .collect(),
    };
    let started = Instant::now();
    loop {
        match client.admin_at(&first, &request).await {
            Ok(_) => {
                tracing::info!(voters = voters.len(), "metadata cluster bootstrapped");
                break;
            }
            Err(MetaClientError::FailedPrecondition(_)) => break, // formed before
            Err(e) => {
                tracing::info!(error = %e, waited_s = started.elapsed().as_secs(), "waiting to bootstrap");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    // The map: once every storage node answers with its capacity.
    loop {
        let existing = client
            .query(&Query::GetClusterMap {
                consistency: Consistency::Linearizable,
            })
            .await;
        if let Ok(QueryResult::ClusterMap { map: Some(_), .. }) = existing {
            return;
        }
        let mut missing = Vec::new();
        for n in map.nodes.values_mut() {
            if n.capacity_bytes > 0 {
                continue;
            }
            match ShardsClient::new(&n.addr, &transport) {
                Ok(c) => match c.node_status().await {
                    Ok(s) => {
                        n.capacity_bytes = s.capacity_bytes;
                        n.used_bytes = s.used_bytes;
                    }
                    Err(_) => missing.push(n.id),
                },
                Err(_) => missing.push(n.id),
            }
        }
        if !missing.is_empty() {
            tracing::info!(
                ?missing,
                "waiting for storage nodes before recording the map"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        match client
            .propose(
                &Command::InitCluster {
                    map: map.clone(),
                    profile,
                },
                Retry::Idempotent,
            )
            .await
        {
            Ok(Ok(Applied::MapChanged { epoch })) => {
                tracing::info!(epoch, "cluster map recorded");
                return;
            }
            Ok(Err(Rejected::Invalid(_))) => return, // recorded before
            Ok(other) => {
                tracing::error!(?other, "cluster map refused");
                return;
            }
            Err(e) => {
                tracing::info!(error = %e, "retrying to record the cluster map");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

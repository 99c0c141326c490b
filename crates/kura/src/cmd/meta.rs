//! `kura meta …`: run one metadata node, bootstrap a new metadata cluster,
//! ask a node for its view. The building blocks `kura server` and
//! `kura dev` use, exposed for operators and benchmarks.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kura_auth::{TlsMaterial, Transport};
use kura_meta::{MetaConfig, MetaNode, RaftTimings};
use kura_proto::meta::{AdminRequest, AdminResponse, Voter};
use kura_proto::meta_client::MetaClient;

#[derive(Debug, Subcommand)]
pub enum MetaCommand {
    /// Run one metadata node until Ctrl-C (or SIGTERM).
    Run(RunArgs),
    /// Initialise a new metadata cluster with its voters. Refused by a node
    /// that already belongs to a cluster.
    Bootstrap(BootstrapArgs),
    /// Show one node's view of the metadata cluster.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// This node's Raft id (unique in the cluster, > 0).
    #[arg(long)]
    id: u64,
    /// Address to listen on for the Raft and Meta services.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: String,
    /// Address other nodes reach this one at (default: the listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// Data directory (RocksDB and snapshots).
    #[arg(long)]
    data: PathBuf,
    /// Build a snapshot after this many applied entries.
    #[arg(long, default_value_t = RaftTimings::default().snapshot_every_entries)]
    snapshot_every: u64,
    /// Also build a snapshot after this many MiB were appended to the log.
    #[arg(long, default_value_t = RaftTimings::default().snapshot_every_bytes >> 20)]
    snapshot_every_mib: u64,
    /// Log entries kept behind a snapshot (a follower that far behind
    /// catches up from the log instead of a snapshot).
    #[arg(long, default_value_t = RaftTimings::default().log_kept_behind_snapshot)]
    log_kept: u64,
    #[command(flatten)]
    tls: NodeTlsArgs,
}

/// The TLS identity a `kura meta` command uses: node certificate
/// `node-ID.pem` in a `kura certs` directory, or plaintext.
#[derive(Debug, Clone, Args)]
pub struct NodeTlsArgs {
    /// The certificate directory (ca.pem, node-ID.pem, node-ID.key).
    #[arg(
        long,
        env = "KURA_CERTS",
        value_name = "DIR",
        required_unless_present = "insecure"
    )]
    certs: Option<PathBuf>,
    /// No TLS (a test cluster whose voters run with --insecure too).
    #[arg(long, conflicts_with = "certs")]
    insecure: bool,
}

impl NodeTlsArgs {
    fn transport(&self, node: u64) -> anyhow::Result<Transport> {
        match (&self.certs, self.insecure) {
            (_, true) | (None, _) => Ok(Transport::Plaintext),
            (Some(dir), false) => Ok(Transport::tls(TlsMaterial::from_dir(
                dir,
                &kura_auth::certs::node_stem(node),
            )?)),
        }
    }
}

#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// The node to send the bootstrap to (one of the voters).
    #[arg(long)]
    endpoint: String,
    /// A voter as ID=HOST:PORT; repeat for each.
    #[arg(long = "voter", value_name = "ID=ADDR", required = true)]
    voters: Vec<String>,
    /// Act as this node (its certificate in --certs).
    #[arg(long = "as", value_name = "ID", default_value_t = 1)]
    as_node: u64,
    #[command(flatten)]
    tls: NodeTlsArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The node to ask.
    #[arg(long, default_value = "127.0.0.1:7700")]
    endpoint: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Act as this node (its certificate in --certs).
    #[arg(long = "as", value_name = "ID", default_value_t = 1)]
    as_node: u64,
    #[command(flatten)]
    tls: NodeTlsArgs,
}

pub fn run(command: MetaCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    rt.block_on(async move {
        match command {
            MetaCommand::Run(args) => run_node(args).await,
            MetaCommand::Bootstrap(args) => bootstrap(args).await,
            MetaCommand::Status(args) => status(args).await,
        }
    })
}

fn init_logs() {
    init_logs_with("info,openraft=warn");
}

/// Logs to stderr, filtered by `RUST_LOG` or else `default`.
/// Logs to stderr, filtered by `RUST_LOG` (else `default`); one JSON
/// object per line (with the current span's fields: tenant, SOP Instance
/// UID) when `KURA_LOG_FORMAT=json`.
pub fn init_logs_with(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("KURA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        let _ = builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init();
    } else {
        let _ = builder.try_init();
    }
}

async fn run_node(args: RunArgs) -> anyhow::Result<ExitCode> {
    init_logs();
    if args.id == 0 {
        bail!("--id must be greater than 0");
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let addr = listener.local_addr()?.to_string();
    let timings = RaftTimings {
        snapshot_every_entries: args.snapshot_every,
        snapshot_every_bytes: args.snapshot_every_mib << 20,
        log_kept_behind_snapshot: args.log_kept,
        ..RaftTimings::default()
    };
    let config = MetaConfig {
        id: args.id,
        data_dir: args.data.clone(),
        advertise_addr: args.advertise.unwrap_or_else(|| addr.clone()),
        timings,
        timeouts: Default::default(),
        transport: args.tls.transport(args.id)?,
    };
    let node = MetaNode::start(config, listener)
        .await
        .with_context(|| format!("start metadata node {} in {}", args.id, args.data.display()))?;
    println!("metadata node {} listening on {addr}", args.id);
    shutdown_signal().await;
    println!("shutting down metadata node {}", args.id);
    node.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn parse_voter(s: &str) -> anyhow::Result<Voter> {
    let (id, addr) = s
        .split_once('=')
        .with_context(|| format!("voter {s:?} is not ID=HOST:PORT"))?;
    let id: u64 = id
        .parse()
        .with_context(|| format!("voter id {id:?} is not a number"))?;
    if addr.is_empty() {
        bail!("voter {id} has no address");
    }
    Ok(Voter {
        id,
        addr: addr.to_owned(),
    })
}

async fn bootstrap(args: BootstrapArgs) -> anyhow::Result<ExitCode> {
    let voters = args
        .voters
        .iter()
        .map(|v| parse_voter(v))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = MetaClient::new(
        vec![args.endpoint.clone()],
        args.tls.transport(args.as_node)?,
    );
    client
        .admin_at(&args.endpoint, &AdminRequest::Bootstrap { voters })
        .await
        .context("bootstrap")?;
    println!(
        "bootstrapped the metadata cluster through {}",
        args.endpoint
    );
    Ok(ExitCode::SUCCESS)
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = MetaClient::new(
        vec![args.endpoint.clone()],
        args.tls.transport(args.as_node)?,
    );
    let AdminResponse::Status(s) = client
        .admin_at(&args.endpoint, &AdminRequest::Status)
        .await
        .context("status")?
    else {
        bail!("unexpected answer to status");
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "id": s.id,
                "state": s.state,
                "term": s.current_term,
                "leader": s.current_leader,
                "leader_addr": s.leader_addr,
                "last_log_index": s.last_log_index,
                "last_applied_index": s.last_applied_index,
                "snapshot_index": s.snapshot_index,
                "voters": s.voters.iter().map(|v| serde_json::json!({"id": v.id, "addr": v.addr})).collect::<Vec<_>>(),
                "learners": s.learners.iter().map(|v| serde_json::json!({"id": v.id, "addr": v.addr})).collect::<Vec<_>>(),
            })
        );
    } else {
        println!("node        {} ({})", s.id, s.state);
        println!("term        {}", s.current_term);
        match (s.current_leader, &s.leader_addr) {
            (Some(l), Some(a)) => println!("leader      {l} at {a}"),
            (Some(l), None) => println!("leader      {l}"),
            _ => println!("leader      none known"),
        }
        println!(
            "log         last {:?}, applied {:?}, snapshot {:?}",
            s.last_log_index, s.last_applied_index, s.snapshot_index
        );
        for v in &s.voters {
            println!("voter       {} at {}", v.id, v.addr);
        }
        for v in &s.learners {
            println!("learner     {} at {}", v.id, v.addr);
        }
    }
    Ok(ExitCode::SUCCESS)
}

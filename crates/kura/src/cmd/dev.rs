//! `kura dev`: a whole cluster in this process, on loopback — 3 sites, a
//! metadata voter and 3 storage nodes per site, and a gateway — until
//! Ctrl-C. Data survives in `--data`; a restart with the same directory
//! brings the same cluster back.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use kura_dev::{DEV_PORT_DEFAULT, DevCluster, DevConfig};

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Data directory of the whole cluster (created if missing).
    #[arg(long, default_value = "./kura-data", env = "KURA_DATA")]
    data: PathBuf,
    /// Gateway port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = DEV_PORT_DEFAULT)]
    port: u16,
    /// Ops port (HTTP: /healthz, /readyz, /metrics) on 127.0.0.1; 0: any
    /// free port.
    #[arg(long, default_value_t = DEV_PORT_DEFAULT + 1)]
    ops_port: u16,
    /// DICOM port (DIMSE: C-ECHO, C-STORE) on 127.0.0.1; 0: any free port.
    #[arg(long, default_value_t = kura_gateway::dimse::DEFAULT_PORT)]
    dicom_port: u16,
    /// The archive's AE title: DICOM peers call it.
    #[arg(long, default_value = kura_gateway::dimse::DEFAULT_AE_TITLE)]
    ae_title: String,
    /// Another calling AE title to admit (tenant `default`, reader and
    /// writer), beside dcmtk's and pynetdicom's defaults (ECHOSCU,
    /// STORESCU, FINDSCU, MOVESCU, GETSCU, PYNETDICOM). Repeatable.
    #[arg(long = "dicom-peer", value_name = "AE_TITLE")]
    dicom_peers: Vec<String>,
    /// Print what started as JSON (one line) instead of text.
    #[arg(long)]
    json: bool,
    /// Plaintext and no authentication on every link, for quick
    /// experiments (by default every link runs TLS with certificates made
    /// in DATA/tls, and every caller needs one).
    #[arg(long)]
    insecure: bool,
}

pub fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    crate::cmd::meta::init_logs_with(
        "warn,openraft=error,kura=info,kura_dev=info,kura_gateway=info",
    );
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    rt.block_on(async move {
        let mut config = DevConfig::new(&args.data);
        config.port = args.port;
        config.ops_port = Some(args.ops_port);
        config.tls = !args.insecure;
        config.dicom_port = Some(args.dicom_port);
        config.dicom.ae_title = args.ae_title.clone();
        for title in &args.dicom_peers {
            if !config.dicom.peers.iter().any(|p| &p.ae_title == title) {
                config.dicom.peers.push(kura_dev::dev_dicom_peer(title));
            }
        }
        config
            .dicom
            .validate()
            .map_err(|e| anyhow::anyhow!("DICOM settings: {e}"))?;
        let restarted = kura_dev::is_dev_data_dir(&args.data);
        let mut cluster = DevCluster::start(config)
            .await
            .with_context(|| format!("start the dev cluster in {}", args.data.display()))?;
        let gateway = cluster
            .gateway_addr()
            .context("the gateway did not start")?;
        let ops = cluster.ops_addr();
        let dicom = cluster.dicom_addr();
        if args.json {
            let line = serde_json::json!({
                "gateway": gateway.to_string(),
                "ops": ops.map(|a| a.to_string()),
                "dicom": dicom.map(|a| a.to_string()),
                "ae_title": args.ae_title,
                "data": args.data.display().to_string(),
                "restarted": restarted,
                "meta": cluster.meta_endpoints(),
                "tls": !args.insecure,
                "certs": (!args.insecure).then(|| kura_dev::certs::tls_dir(&args.data).display().to_string()),
                "layout": cluster.layout(),
                "keys_file": cluster.config().keys_file().display().to_string(),
            });
            println!("{line}");
        } else {
            println!(
                "kura dev: {} cluster in {}",
                if restarted {
                    "restarted the"
                } else {
                    "started a new"
                },
                args.data.display()
            );
            print!("{}", cluster.describe());
            println!(
                "  profile {} (survives the loss of one site plus one more node)",
                cluster.config().profile
            );
            if let Some(ops) = ops {
                println!("  ops:     http://{ops}/metrics, /healthz, /readyz");
            }
            let certs = kura_dev::certs::tls_dir(&args.data);
            if args.insecure {
                println!("  WARNING: --insecure: plaintext, no authentication");
                println!(
                    "  gateway: http://{gateway}  (try: kura store ../shared/corpus --endpoint http://{gateway})"
                );
            } else {
                println!(
                    "  TLS and authentication on every link; CA and client certificates in {}",
                    certs.display()
                );
                println!(
                    "  gateway: https://{gateway}  (try: kura store ../shared/corpus --endpoint {gateway} --certs {})",
                    certs.display()
                );
            }
            if let Some(dicom) = dicom {
                println!(
                    "  DICOM:   AE title {} on {dicom}, calling AE titles {}  (try: echoscu -aec {} {} {})",
                    args.ae_title,
                    cluster
                        .config()
                        .dicom
                        .peers
                        .iter()
                        .map(|p| p.ae_title.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    args.ae_title,
                    dicom.ip(),
                    dicom.port()
                );
            }
            println!(
                "  instances encrypted at rest under the cluster key in {}",
                cluster.config().keys_file().display()
            );
            println!("Ctrl-C stops the cluster.");
        }
        // Until Ctrl-C, carry out drills (`kura drill site-down`): they stop
        // and start a site's storage nodes in this process.
        let stop = crate::cmd::meta::shutdown_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Some(req) = cluster.next_drill() => cluster.carry_out(req).await,
            }
        }
        eprintln!("kura dev: stopping");
        cluster.shutdown().await;
        eprintln!("kura dev: stopped");
        Ok(ExitCode::SUCCESS)
    })
}

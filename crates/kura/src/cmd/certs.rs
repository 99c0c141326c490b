//! `kura certs init|node|client`: the cluster's CA and the certificates it
//! signs, made without openssl (rcgen).
//!
//! ```sh
//! kura certs init --out /etc/kura/tls                       # ca.pem + ca.key
//! kura certs node --config kura.toml --node 1 --dir /etc/kura/tls
//! kura certs client --tenant hospital-a --role writer --dir /etc/kura/tls
//! ```
//!
//! A node certificate names every DNS name and IP that kura.toml gives the
//! node (plus `--san`), and the roles it runs there (`kura://node/ID/ROLES`);
//! it serves as server and client. A client certificate names one tenant
//! and its roles (`kura://client/TENANT/ROLES`). Nothing is overwritten.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kura_auth::certs::{CA_DAYS_DEFAULT, Ca, LEAF_DAYS_DEFAULT, client_stem, node_stem};
use kura_auth::{ClientRoles, NodeRoles};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make a new cluster CA (ca.pem, ca.key) in a directory.
    Init(InitArgs),
    /// Issue a node certificate for `[[node]] ID` of kura.toml.
    Node(NodeArgs),
    /// Issue a client certificate: one tenant, one role.
    Client(ClientArgs),
    /// Show what a certificate says: identity, names and expiry.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write ca.pem and ca.key (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Validity in days.
    #[arg(long, default_value_t = CA_DAYS_DEFAULT)]
    days: u32,
    /// The CA's common name.
    #[arg(long, default_value = "Kura cluster CA")]
    name: String,
    /// Print the written files as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The cluster's kura.toml: names and roles come from its [[node]].
    #[arg(long, env = "KURA_CONFIG", required_unless_present = "roles")]
    config: Option<PathBuf>,
    /// Which node (its [[node]] id in kura.toml).
    #[arg(long)]
    node: u64,
    /// Without --config: the roles, e.g. meta or meta+store+gateway (for
    /// processes started by hand, like `kura meta run`); names from --san.
    #[arg(long, conflicts_with = "config", value_parser = parse_node_roles)]
    roles: Option<NodeRoles>,
    /// The certificate directory holding ca.pem and ca.key; the new files
    /// go there too. Default: [tls] dir of kura.toml.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// More DNS names or IPs the node is reached at (e.g. a load balancer).
    #[arg(long, value_name = "NAME")]
    san: Vec<String>,
    /// Validity in days.
    #[arg(long, default_value_t = LEAF_DAYS_DEFAULT)]
    days: u32,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The tenant the certificate acts in.
    #[arg(long)]
    tenant: String,
    /// reader (Retrieve, Stat, ListStudy, StudyProtection), writer (Store),
    /// admin (the Admin API) or auditor (the audit trail); several joined
    /// with '+' (a PACS that stores and reads: writer+reader).
    #[arg(long, value_parser = parse_roles)]
    role: ClientRoles,
    /// A display name for the audit trail (e.g. the PACS's name); also
    /// added to the file names.
    #[arg(long)]
    name: Option<String>,
    /// The certificate directory holding ca.pem and ca.key.
    #[arg(long, value_name = "DIR", env = "KURA_CERTS")]
    dir: PathBuf,
    /// Validity in days.
    #[arg(long, default_value_t = LEAF_DAYS_DEFAULT)]
    days: u32,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A PEM certificate.
    file: PathBuf,
    #[arg(long)]
    json: bool,
}

fn parse_node_roles(s: &str) -> Result<NodeRoles, String> {
    let mut set = NodeRoles::NONE;
    for r in s.split(['+', ',']) {
        set.insert(kura_auth::NodeRole::parse(r.trim()).map_err(|e| e.to_string())?);
    }
    Ok(set)
}

fn parse_roles(s: &str) -> Result<ClientRoles, String> {
    ClientRoles::parse(s).map_err(|e| e.to_string())
}

pub fn run(command: CertsCommand) -> anyhow::Result<ExitCode> {
    match command {
        CertsCommand::Init(a) => {
            let ca = Ca::generate(&a.name, a.days)?;
            let (cert, key) = ca.write(&a.out)?;
            report(a.json, "CA", &cert, &key, &[])?;
        }
        CertsCommand::Node(a) => {
            let (roles, mut names, config_dir) = match (&a.config, a.roles) {
                (Some(config), _) => {
                    let text = std::fs::read_to_string(config)
                        .with_context(|| format!("read {}", config.display()))?;
                    let checked = crate::config::parse(&config.display().to_string(), &text)
                        .map_err(anyhow::Error::msg)?;
                    if checked.node(a.node).is_none() {
                        bail!("{} has no [[node]] with id {}", config.display(), a.node);
                    }
                    (
                        checked.roles(a.node),
                        checked.names(a.node),
                        checked.tls_dir(),
                    )
                }
                (None, Some(roles)) => (roles, Vec::new(), None),
                (None, None) => bail!("give --config kura.toml (or --roles with --san)"),
            };
            let dir = match a.dir.or(config_dir) {
                Some(d) => d,
                None => bail!("give --dir DIR (or set [tls] dir in kura.toml)"),
            };
            for s in a.san {
                if !names.contains(&s) {
                    names.push(s);
                }
            }
            let ca = Ca::load(&dir)?;
            let issued = ca.issue_node(a.node, roles, &names, a.days)?;
            let (cert, key) = issued.write(&dir, &node_stem(a.node))?;
            report(
                a.json,
                &format!("node {} ({roles})", a.node),
                &cert,
                &key,
                &names,
            )?;
        }
        CertsCommand::Client(a) => {
            let name = a
                .name
                .clone()
                .unwrap_or_else(|| format!("{}-{}", a.tenant, a.role));
            let ca = Ca::load(&a.dir)?;
            let issued = ca.issue_client(&a.tenant, a.role, &name, a.days)?;
            let (cert, key) =
                issued.write(&a.dir, &client_stem(&a.tenant, a.role, a.name.as_deref()))?;
            report(
                a.json,
                &format!("client {name} (tenant {}, role {})", a.tenant, a.role),
                &cert,
                &key,
                &[],
            )?;
        }
        CertsCommand::Show(a) => {
            let pem =
                std::fs::read(&a.file).with_context(|| format!("read {}", a.file.display()))?;
            let info = kura_auth::peer::parse_pem(&pem, &a.file.display().to_string())?;
            let days = (info.not_after
                - std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0)) as f64
                / 86_400.0;
            let identity = info.principal.as_ref().map(|p| p.to_string());
            let uri = info.principal.as_ref().map(|p| p.uri());
            if a.json {
                println!(
                    "{}",
                    json!({"file": a.file, "identity": identity, "uri": uri, "not_after_unix": info.not_after, "days_left": days})
                );
            } else {
                println!(
                    "{}: {} ({}), expires in {days:.0} days",
                    a.file.display(),
                    identity.unwrap_or_else(|| "no Kura identity (a CA?)".into()),
                    uri.unwrap_or_default()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report(
    json: bool,
    what: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
    names: &[String],
) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            json!({"issued": what, "cert": cert, "key": key, "names": names})
        );
    } else {
        println!("{what}: wrote {} and {}", cert.display(), key.display());
        if !names.is_empty() {
            println!("  valid for: {}", names.join(", "));
        }
    }
    Ok(())
}

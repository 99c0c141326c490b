//! `kura keys generate|show`: the cluster key file that gateways seal
//! instances under (encryption at rest; ARCHITECTURE.md, "Encryption at
//! rest"). Local file operations: no cluster is contacted.
//!
//! ```sh
//! kura keys generate --file /etc/kura/cluster.keys   # version 1, or the next one
//! kura keys show --file /etc/kura/cluster.keys       # versions and check values
//! ```
//!
//! Rotation: `generate` appends the next version to the file; copy it to
//! every gateway and restart them one at a time (new instances are then
//! sealed under it); `kura admin keys rotate` re-wraps the older
//! instances' data keys; once `kura admin keys status` shows no instance
//! under an old version, delete that line from every copy of the file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use kura_seal::Keyring;
use serde_json::json;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key file with version 1, or add the next version to one.
    Generate(GenerateArgs),
    /// Show a key file's versions and check values (never the keys).
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The key file (created readable by its owner only).
    #[arg(long, value_name = "PATH", env = "KURA_CLUSTER_KEYS_FILE")]
    file: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[arg(long, value_name = "PATH", env = "KURA_CLUSTER_KEYS_FILE")]
    file: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn run(command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Generate(a) => generate(a),
        KeysCommand::Show(a) => show(a),
    }
}

fn generate(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    let version = kura_seal::add_key_version(&a.file)?;
    let keys = Keyring::from_file(&a.file)?;
    if a.json {
        println!(
            "{}",
            json!({
                "file": a.file.display().to_string(),
                "version": version,
                "versions": keys.versions(),
            })
        );
    } else {
        println!(
            "wrote cluster key version {version} to {}",
            a.file.display()
        );
        if version > 1 {
            println!(
                "next: copy the file to every gateway and restart them one at a time; then\n  kura admin keys rotate\nre-wraps the instances sealed under older versions (kura admin keys status shows how many)"
            );
        } else {
            println!(
                "next: copy it to every gateway (mode 600) and set [encryption] keys_file in kura.toml"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(a: ShowArgs) -> anyhow::Result<ExitCode> {
    let keys = Keyring::from_file(&a.file)?;
    let rows: Vec<(u32, String)> = keys
        .versions()
        .into_iter()
        .map(|v| Ok((v, hex::encode(&keys.check_value(v)?[..8]))))
        .collect::<Result<_, kura_seal::SealError>>()?;
    if a.json {
        println!(
            "{}",
            json!({
                "file": a.file.display().to_string(),
                "current": keys.current(),
                "versions": rows.iter().map(|(v, c)| json!({"version": v, "check": c})).collect::<Vec<_>>(),
            })
        );
    } else {
        println!("{}: current version {}", a.file.display(), keys.current());
        for (v, c) in rows {
            println!("  version {v:>3}  check {c}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

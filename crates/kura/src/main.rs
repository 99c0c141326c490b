//! `kura`: the one binary of the Kura archive. It runs any mix of roles
//! (metadata, storage, gateway) and carries the client and operator commands.
//!
//! The command line is a tree of clap subcommands: each top-level command
//! group lives in its own module under `cmd/` and exposes a clap `Subcommand`
//! (or `Args`) type and a `run` function returning the process exit code, so
//! new commands slot in as one enum variant and one match arm here.
//!
//! Exit codes: 0 success, 1 the command ran but refused some input (e.g. a
//! file `kura dicom inspect` would not accept), 2 the command could not run
//! (bad usage, as clap reports it, or an unexpected error).

mod cmd;
mod config;
mod ops;

/// Caps glibc's malloc arenas at 2 (its default is 8 per core).
///
/// Ingest and retrieve hand megabyte buffers between many threads (tokio
/// workers, the blocking pool); glibc spreads those over its arenas and
/// rarely gives the memory back. Measured in tests/it/dev.rs while a 200 MB
/// instance went in and out of `kura dev`: peak RSS ~190 MiB with the
/// default, ~115 MiB with one arena; jemalloc gave ~165 MiB. An explicit
/// `MALLOC_ARENA_MAX` in the environment wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator tuning; it is called once,
        // first thing in main, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Kura: a distributed, erasure-coded archive for DICOM instances.
#[derive(Debug, Parser)]
#[command(name = "kura", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Client commands, talking to a gateway's public Archive API.
    #[command(flatten)]
    Client(cmd::client::ClientCommand),
    /// Run a whole cluster (3 sites x 3 storage nodes, 3 metadata voters,
    /// a gateway on 127.0.0.1:7600) in this process until Ctrl-C.
    Dev(cmd::dev::DevArgs),
    /// Work with DICOM files on this machine; needs no cluster.
    #[command(subcommand)]
    Dicom(cmd::dicom::DicomCommand),
    /// Run one process of a real cluster: the roles (metadata voter,
    /// storage node, gateway) that kura.toml gives node ID.
    Server(cmd::server::ServerArgs),
    /// Run and manage metadata (Raft) nodes directly.
    #[command(subcommand)]
    Meta(cmd::meta::MetaCommand),
    /// Operate a running cluster: status, drain, add/remove nodes, profile,
    /// repair, scrub, protection.
    #[command(subcommand)]
    Admin(cmd::admin::AdminCommand),
    /// Failover drills: take a site out under load and report availability,
    /// RTO, RPO; re-verify the archive.
    #[command(subcommand)]
    Drill(cmd::drill::DrillCommand),
    /// The cluster's CA and its node and client certificates (TLS is on by
    /// default: every link, every caller).
    #[command(subcommand)]
    Certs(cmd::certs::CertsCommand),
    /// The cluster key file gateways seal instances under (encryption at
    /// rest is always on).
    #[command(subcommand)]
    Keys(cmd::keys::KeysCommand),
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    kura_auth::install_crypto_provider();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Client(command) => cmd::client::run(command),
        Command::Dev(args) => cmd::dev::run(args),
        Command::Dicom(command) => cmd::dicom::run(command),
        Command::Meta(command) => cmd::meta::run(command),
        Command::Server(args) => cmd::server::run(args),
        Command::Admin(command) => cmd::admin::run(command),
        Command::Drill(command) => cmd::drill::run(command),
        Command::Certs(command) => cmd::certs::run(command),
        Command::Keys(command) => cmd::keys::run(command),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("kura: {err:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("kura").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    #[test]
    fn client_commands_parse() {
        use cmd::client::ClientCommand;

        let Ok(Command::Client(ClientCommand::Store(store))) = parse(&[
            "store",
            "a.dcm",
            "dir",
            "--concurrency",
            "3",
            "--json",
            "--endpoint",
            "h:1",
            "--tenant",
            "ward-7",
        ]) else {
            panic!("store did not parse");
        };
        assert_eq!(store.paths.len(), 2);
        assert_eq!(store.concurrency, 3);
        assert!(store.json);
        assert_eq!(store.connect.endpoint, "h:1");
        assert_eq!(store.connect.tenant.as_deref(), Some("ward-7"));

        let Ok(Command::Client(ClientCommand::Retrieve(retrieve))) =
            parse(&["retrieve", "1.2.3", "-o", "-"])
        else {
            panic!("retrieve did not parse");
        };
        assert_eq!(retrieve.uid, "1.2.3");
        assert_eq!(retrieve.output.as_os_str(), "-");

        let Ok(Command::Client(ClientCommand::Stat(stat))) = parse(&["stat", "1.2.3"]) else {
            panic!("stat did not parse");
        };
        assert!(!stat.json);

        let Ok(Command::Client(ClientCommand::Ls(ls))) =
            parse(&["ls", "--study", "1.2", "--series", "1.2.3", "--json"])
        else {
            panic!("ls did not parse");
        };
        assert_eq!(ls.study, "1.2");
        assert_eq!(ls.series.as_deref(), Some("1.2.3"));

        let Ok(Command::Client(ClientCommand::Delete(d))) =
            parse(&["delete", "--study", "1.2", "--yes", "--json"])
        else {
            panic!("delete did not parse");
        };
        assert_eq!(
            (d.uid, d.study.as_deref(), d.yes),
            (None, Some("1.2"), true)
        );

        // Usage errors.
        for bad in [
            &["store"][..],
            &["store", "a", "--concurrency", "0"],
            &["store", "a", "--tenant", "no spaces"],
            &["retrieve", "1.2.3"],
            &["ls"],
            &["stat"],
            &["delete"],
            &["delete", "1.2.3", "--study", "1.2"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}

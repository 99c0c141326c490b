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

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Kura: a distributed, erasure-coded archive for DICOM instances.
#[derive(Debug, Parser)]
#[command(name = "kura", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with DICOM files on this machine; needs no cluster.
    #[command(subcommand)]
    Dicom(cmd::dicom::DicomCommand),
    /// Run and manage metadata (Raft) nodes directly.
    #[command(subcommand)]
    Meta(cmd::meta::MetaCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dicom(command) => cmd::dicom::run(command),
        Command::Meta(command) => cmd::meta::run(command),
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
}

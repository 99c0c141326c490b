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
    DrillSiteRequest, ListInstancesRequest, RetrieveRequest, StatusRequest, StoreRequest,
    retrieve_response,
};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::cmd::admin::AdminConnect;
use crate::cmd::admin::admin_client;
use crate::cmd::client::{CredentialArgs, connect_channel, print_json};
use kura_auth::ClientRole;

mod report;
mod site_down;
mod verify;
mod workload;
use {report::*, site_down::*, verify::*, workload::*};

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

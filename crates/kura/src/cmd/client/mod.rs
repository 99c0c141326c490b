//! `kura store|retrieve|stat|ls`: the client commands. They talk only to
//! the public `kura.v1.Archive` gRPC service of a gateway, as any PACS
//! would, through the generated `ArchiveClient`.
//!
//! - `store` sends files and folders (walked recursively, symlinks
//!   followed) concurrently. Every file is streamed in 1 MiB chunks read as
//!   they are sent, so memory stays bounded by the HTTP/2 windows whatever
//!   the file sizes. Nothing is filtered on this side: a file that is not
//!   DICOM is sent and the gateway's refusal is reported.
//! - `retrieve` streams one instance into a temporary file next to the
//!   output, checks its size and blake3 against the `InstanceInfo` that
//!   opens the stream, and only then renames it into place.
//! - `stat` and `ls` print what the gateway's metadata says.
//!
//! Exit codes (as everywhere in `kura`): 0 success; 1 the gateway refused
//! some input (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, …); 2 the command
//! could not run (bad usage, the gateway unreachable or unavailable, a local
//! I/O error, a retrieved instance that fails its check).

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use futures::{Stream, StreamExt, stream};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kura_auth::{ClientRole, TlsMaterial, Transport};
use kura_proto::code_name;
use kura_proto::v1::archive_client::ArchiveClient;
use kura_proto::v1::{
    InstanceInfo, ListStudyRequest, Protection, RetrieveRequest, StatRequest, StoreRequest,
    retrieve_response,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel as RawChannel;

mod connect;
mod output;
mod read;
mod store;
use read::*;
pub use {connect::*, output::*, store::*};

/// Adds `authorization: Bearer <token>` to every call when the client
/// authenticates with a token.
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}

/// A connection to a gateway, with the caller's token if it has one.
pub type Channel = tonic::service::interceptor::InterceptedService<RawChannel, Bearer>;

/// The gateway's address when neither `--endpoint` nor `KURA_ENDPOINT` says
/// (TLS when credentials are found, see [`CredentialArgs`]).
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:7600";
/// Where `kura dev` keeps its certificates, with its default `--data`.
pub const DEV_CERTS_DEFAULT: &str = "kura-data/tls";
/// Bytes per `chunk` message of a Store stream (the API streams best with
/// 256 KiB–1 MiB).
pub const STORE_CHUNK_BYTES: usize = 1024 * 1024;
/// The largest message the client decodes: a 1 MiB chunk with plenty of
/// room should the gateway send bigger ones (the API allows up to 4 MiB).
pub const MAX_DECODING_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// How long reaching the gateway may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a metadata-only call (Stat, ListStudy) may take.
const METADATA_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// HTTP/2 windows: with the 64 KiB defaults, 1 MiB messages stream many
/// times slower (see `kura_proto::shards_client::STREAM_WINDOW_BYTES`).
const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
/// Pings that find a dead connection during a long transfer.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Store DICOM files in the archive; folders are walked recursively.
    /// Exits 1 if the gateway refused any file, 2 if any could not be sent.
    Store(StoreArgs),
    /// Fetch one instance by SOP Instance UID, verified against its blake3.
    Retrieve(RetrieveArgs),
    /// Show what the archive knows of one instance.
    Stat(StatArgs),
    /// List the instances of a study (optionally of one series in it).
    Ls(LsArgs),
    /// Delete one instance, or a whole study with --study (needs an admin
    /// credential of the tenant; refused while retained or on legal hold).
    /// Asks for confirmation unless --yes.
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// SOP Instance UID of the instance to delete.
    #[arg(
        value_name = "UID",
        required_unless_present = "study",
        conflicts_with = "study"
    )]
    pub uid: Option<String>,
    /// Delete every instance of this Study Instance UID instead.
    #[arg(long, value_name = "UID")]
    pub study: Option<String>,
    /// Do not ask for confirmation (scripts).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Where the gateway is and whose data this is; shared by every client
/// command.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// The gateway's Archive endpoint: HOST:PORT (TLS when credentials are
    /// found), https://HOST:PORT or http://HOST:PORT (plaintext).
    #[arg(long, env = "KURA_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// The tenant: 1-64 characters of [A-Za-z0-9._-]. Default: the
    /// credential's (`default` on a plaintext gateway).
    #[arg(long, env = "KURA_TENANT", value_parser = parse_tenant)]
    pub tenant: Option<String>,
    #[command(flatten)]
    pub creds: CredentialArgs,
}

/// The credential a client presents: a client certificate from the
/// cluster's CA. Looked up in this order: `--cert`/`--key` with `--ca`;
/// `client-TENANT-ROLE.pem` in `--certs DIR` (the layout `kura certs` and
/// `kura dev` write); `./kura-data/tls` (a `kura dev` started here).
#[derive(Debug, Clone, Default, Args)]
pub struct CredentialArgs {
    /// A certificate directory: ca.pem and client-TENANT-ROLE.pem/.key.
    #[arg(long, env = "KURA_CERTS", value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// The cluster's CA certificate (PEM).
    #[arg(long, env = "KURA_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM), with --key.
    #[arg(long, env = "KURA_CERT", value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "KURA_KEY", value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// A bearer token (kura admin token create) instead of a client
    /// certificate; the CA still comes from --ca or --certs.
    #[arg(
        long,
        env = "KURA_TOKEN",
        value_name = "TOKEN",
        conflicts_with = "cert",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

impl CredentialArgs {
    /// The TLS material to act as `role` in `tenant`, if any is found.
    pub fn material(&self, tenant: &str, role: ClientRole) -> anyhow::Result<Option<TlsMaterial>> {
        let dir = match &self.certs {
            Some(d) => Some(d.clone()),
            None => Some(PathBuf::from(DEV_CERTS_DEFAULT)).filter(|d| d.join("ca.pem").is_file()),
        };
        let ca = match (&self.ca, &dir) {
            (Some(ca), _) => ca.clone(),
            (None, Some(d)) => d.join("ca.pem"),
            (None, None) => {
                if self.cert.is_some() {
                    bail!(
                        "--cert needs --ca (KURA_CA): the CA that signed the gateway's certificate"
                    );
                }
                return Ok(None);
            }
        };
        let own = match (&self.cert, &self.key, &dir) {
            _ if self.token.is_some() => None,
            (Some(c), Some(k), _) => Some((c.clone(), k.clone())),
            (_, _, Some(d)) => match find_client_cert(d, tenant, role) {
                Some(stem) => Some((d.join(format!("{stem}.pem")), d.join(format!("{stem}.key")))),
                None => bail!(
                    "no credential for tenant {tenant:?} with role {role} in {} \
                     (make one with kura certs client --tenant {tenant} --role {role} --dir {})",
                    d.display(),
                    d.display()
                ),
            },
            _ => None,
        };
        let m = TlsMaterial::load(&ca, own.as_ref().map(|(c, k)| (c.as_path(), k.as_path())))
            .context("client credentials")?;
        Ok(Some(m))
    }
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// DICOM files, or folders to store everything under.
    #[arg(required = true, value_name = "FILE|DIR")]
    pub paths: Vec<PathBuf>,
    /// How many files are in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
    /// Print one JSON document: {stored, already_stored, refused, errors,
    /// files: [{path, status, sop_instance_uid, blake3, size, code, message}]}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct RetrieveArgs {
    /// SOP Instance UID of the instance.
    #[arg(value_name = "UID")]
    pub uid: String,
    /// Where to write it; `-` for stdout. An existing file is replaced, only
    /// once the whole instance arrived and matched its blake3. A new file is
    /// readable by its owner only (it holds patient data).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Print {info, output} as JSON (not with `-o -`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct StatArgs {
    /// SOP Instance UID of the instance.
    #[arg(value_name = "UID")]
    pub uid: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Study Instance UID.
    #[arg(long, value_name = "UID")]
    pub study: String,
    /// Only this Series Instance UID of the study.
    #[arg(long, value_name = "UID")]
    pub series: Option<String>,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub fn run(command: ClientCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    let result = rt.block_on(async move {
        match command {
            ClientCommand::Store(args) => store(args).await,
            ClientCommand::Retrieve(args) => retrieve(args).await,
            ClientCommand::Stat(args) => stat(args).await,
            ClientCommand::Ls(args) => ls(args).await,
            ClientCommand::Delete(args) => delete(args).await,
        }
    });
    match result {
        // The reader of stdout went away (`kura ls | head`): nothing to say.
        Err(err) if is_broken_pipe(&err) => Ok(ExitCode::from(2)),
        other => other.or_else(exit_on_refusal),
    }
}

/// The gateway said no to what was asked: the input's fault, its message
/// and exit 1. Any other error stays an error.
pub(crate) fn exit_on_refusal(err: anyhow::Error) -> anyhow::Result<ExitCode> {
    if err
        .downcast_ref::<RpcError>()
        .is_some_and(RpcError::is_refusal)
    {
        eprintln!("kura: {err:#}");
        Ok(ExitCode::from(1))
    } else {
        Err(err)
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        let kind = match cause.downcast_ref::<serde_json::Error>() {
            Some(e) => e.io_error_kind(),
            None => cause.downcast_ref::<io::Error>().map(io::Error::kind),
        };
        kind == Some(io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_normalise() {
        let ok = |raw: &str| normalize_endpoint(raw).expect(raw);
        let s = |scheme: Option<&'static str>, a: &str| (scheme, a.to_string());
        assert_eq!(ok("127.0.0.1:7600"), s(None, "127.0.0.1:7600"));
        assert_eq!(ok("localhost:7600"), s(None, "localhost:7600"));
        assert_eq!(
            ok(" http://kura.example:80/ "),
            s(Some("http"), "kura.example:80")
        );
        assert_eq!(ok("HTTP://h:1"), s(Some("http"), "h:1"));
        assert_eq!(ok("https://h:1"), s(Some("https"), "h:1"));
        assert_eq!(ok("[::1]:7600"), s(None, "[::1]:7600"));
        assert_eq!(ok(DEFAULT_ENDPOINT), s(None, DEFAULT_ENDPOINT));
        for bad in [
            "",
            "   ",
            "http://",
            "ftp://h:1",
            "h:1/path",
            "h:notaport",
            "h:99999",
            "h:",
            "[::1",
            "[::1]x",
        ] {
            assert!(normalize_endpoint(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tenants_are_checked() {
        assert!(parse_tenant("default").is_ok());
        assert!(parse_tenant("St.Mary_s-1").is_ok());
        assert!(parse_tenant(&"a".repeat(64)).is_ok());
        assert!(parse_tenant(&"a".repeat(65)).is_err());
        assert!(parse_tenant("").is_err());
        assert!(parse_tenant("a b").is_err());
        assert!(parse_tenant("ä").is_err());
    }

    #[test]
    fn rfc3339_in_utc() {
        assert_eq!(rfc3339(0, true), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123, true), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(1_700_000_000_123, false), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(-1, true), "1969-12-31T23:59:59.999Z");
        // A leap day, and the end of a leap year.
        assert_eq!(rfc3339(951_782_400_000, false), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_603_199_000, false), "2024-12-30T23:59:59Z");
    }

    fn info() -> InstanceInfo {
        InstanceInfo {
            tenant: "default".into(),
            sop_instance_uid: "1.2.3.4".into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            study_instance_uid: "1.2.3".into(),
            series_instance_uid: "1.2.3.1".into(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
            patient_id: "PAT-1".into(),
            modality: "CT".into(),
            size: 1234,
            blake3: "ab".repeat(32),
            protection: Protection::UnderProtected as i32,
            stored_at_unix_ms: 1_700_000_000_123,
            study_date: "20231114".into(),
            ec_data_shards: 4,
            ec_parity_shards: 2,
            retained_until_unix_ms: 0,
            legal_hold: String::new(),
        }
    }

    #[test]
    fn instance_info_as_json_and_text() {
        let value = info_json(&info());
        assert_eq!(value["protection"], "under-protected");
        assert_eq!(value["stored_at"], "2023-11-14T22:13:20.123Z");
        assert_eq!(value["stored_at_unix_ms"], 1_700_000_000_123_i64);
        assert_eq!(value["size"], 1234);
        assert_eq!(value["patient_id"], "PAT-1");
        assert_eq!(value["ec_data_shards"], 4);
        let full = info_json(&InstanceInfo {
            protection: Protection::Full as i32,
            ..info()
        });
        assert_eq!(full["protection"], "full");

        let mut text = Vec::new();
        write_info(&mut text, &info()).expect("write");
        let text = String::from_utf8(text).expect("utf-8");
        assert!(text.contains("sop_instance_uid: 1.2.3.4\n"), "{text}");
        assert!(text.contains("patient_id: PAT-1\n"), "{text}");
        assert!(text.contains("protection: under-protected\n"), "{text}");
        assert!(
            text.contains("transfer_syntax_uid: 1.2.840.10008.1.2.1 (Explicit VR Little Endian)"),
            "{text}"
        );
        assert!(text.lines().all(|line| line.contains(": ")), "{text}");

        let mut table = Vec::new();
        write_table(&mut table, &[info(), info()]).expect("write");
        let table = String::from_utf8(table).expect("utf-8");
        assert_eq!(table.lines().count(), 3, "{table}");
        assert!(table.starts_with("SOP INSTANCE UID"), "{table}");
        assert!(table.contains("2023-11-14T22:13:20Z"), "{table}");
    }

    #[test]
    fn store_summary_json_shape() {
        let outcomes = vec![
            FileOutcome {
                path: PathBuf::from("a/ct.dcm"),
                status: Status::Stored,
                sop_instance_uid: Some("1.2.3.4".into()),
                blake3: Some("ab".repeat(32)),
                size: Some(1234),
                code: None,
                message: None,
            },
            FileOutcome {
                status: Status::AlreadyStored,
                path: PathBuf::from("a/ct-again.dcm"),
                ..FileOutcome::failed(PathBuf::new(), None, Status::Stored, None, String::new())
            },
            FileOutcome::failed(
                PathBuf::from("a/notes.txt"),
                Some(5),
                Status::Refused,
                Some(Code::InvalidArgument),
                "not DICOM".into(),
            ),
            FileOutcome::failed(
                PathBuf::from("a/fifo"),
                None,
                Status::Error,
                None,
                "not a regular file or folder".into(),
            ),
        ];
        let value = summary_json(&outcomes);
        assert_eq!(value["stored"], 1);
        assert_eq!(value["already_stored"], 1);
        assert_eq!(value["refused"], 1);
        assert_eq!(value["errors"], 1);
        let files = value["files"].as_array().expect("files");
        assert_eq!(files.len(), 4);
        for file in files {
            let keys: Vec<&str> = file
                .as_object()
                .expect("object")
                .keys()
                .map(String::as_str)
                .collect();
            let mut keys = keys;
            keys.sort_unstable();
            assert_eq!(
                keys,
                [
                    "blake3",
                    "code",
                    "message",
                    "path",
                    "size",
                    "sop_instance_uid",
                    "status"
                ]
            );
        }
        assert_eq!(files[0]["status"], "stored");
        assert_eq!(files[0]["sop_instance_uid"], "1.2.3.4");
        assert_eq!(files[0]["code"], Value::Null);
        assert_eq!(files[1]["status"], "already_stored");
        assert_eq!(files[2]["status"], "refused");
        assert_eq!(files[2]["code"], "INVALID_ARGUMENT");
        assert_eq!(files[2]["message"], "not DICOM");
        assert_eq!(files[2]["path"], "a/notes.txt");
        assert_eq!(files[3]["status"], "error");

        let mut text = Vec::new();
        write_summary(&mut text, &outcomes, 1239, Duration::from_millis(1500)).expect("write");
        let text = String::from_utf8(text).expect("utf-8");
        assert!(
            text.contains("  a/notes.txt: INVALID_ARGUMENT: not DICOM\n"),
            "{text}"
        );
        assert!(
            text.contains("stored 1, already there 1, refused 1, not sent 1 (4 files"),
            "{text}"
        );
    }

    #[test]
    fn walks_folders_recursively_and_sorted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        for (name, body) in [
            ("b.dcm", "b"),
            ("a.dcm", "aa"),
            ("sub/z.dcm", "z"),
            ("sub/deeper/x.txt", "xxx"),
            ("sub/.hidden", ""),
            ("c/d/e/f.dcm", "f"),
        ] {
            let path = root.join(name);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(&path, body).expect("write");
        }
        fs::create_dir_all(root.join("empty")).expect("mkdir");
        let single = root.join("a.dcm");
        let inputs = collect_inputs(&[root.to_owned(), single.clone()]).expect("collect");
        let names: Vec<String> = inputs
            .files
            .iter()
            .map(|(path, _)| {
                path.strip_prefix(root)
                    .expect("under root")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(
            names,
            [
                "a.dcm",
                "b.dcm",
                "c/d/e/f.dcm",
                "sub/.hidden",
                "sub/deeper/x.txt",
                "sub/z.dcm",
                // A file named on the command line comes after, as given.
                "a.dcm",
            ]
        );
        assert_eq!(inputs.files[0].1, 2);
        assert_eq!(inputs.files[4].1, 3);
        assert!(inputs.problems.is_empty(), "{:?}", inputs.problems);

        let missing = collect_inputs(&[root.join("nope")]).expect_err("missing");
        assert!(format!("{missing:#}").contains("nope"), "{missing:#}");
    }

    #[cfg(unix)]
    #[test]
    fn walking_follows_symlinks_without_looping() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        fs::create_dir_all(root.join("sub")).expect("mkdir");
        fs::write(root.join("sub/a.dcm"), "a").expect("write");
        std::os::unix::fs::symlink(root, root.join("sub/loop")).expect("symlink");
        std::os::unix::fs::symlink(root.join("sub/a.dcm"), root.join("link.dcm")).expect("symlink");
        std::os::unix::fs::symlink(root.join("gone"), root.join("broken")).expect("symlink");
        let inputs = collect_inputs(&[root.to_owned()]).expect("collect");
        let files: Vec<&Path> = inputs.files.iter().map(|(p, _)| p.as_path()).collect();
        assert_eq!(files, [root.join("link.dcm"), root.join("sub/a.dcm")]);
        assert_eq!(inputs.problems.len(), 1, "{:?}", inputs.problems);
        assert_eq!(inputs.problems[0].0, root.join("broken"));
    }

    #[test]
    fn refusals_and_failures_are_told_apart() {
        let refused = RpcError::new(&tonic::Status::not_found("no instance 1.2.3"), "http://h:1");
        assert!(refused.is_refusal());
        assert_eq!(refused.to_string(), "NOT_FOUND: no instance 1.2.3");
        let unavailable = RpcError::new(&tonic::Status::unavailable("no quorum"), "http://h:1");
        assert!(!unavailable.is_refusal());
        assert_eq!(unavailable.to_string(), "UNAVAILABLE: no quorum");
        let not_kura = RpcError::new(&tonic::Status::unimplemented(""), "http://h:1");
        assert!(!not_kura.is_refusal());
        assert_eq!(
            not_kura.to_string(),
            "UNIMPLEMENTED (is http://h:1 a Kura gateway?)"
        );
        assert_eq!(code_name(Code::AlreadyExists), "ALREADY_EXISTS");
    }
}

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
    InstanceInfo, ListStudyRequest, Protection, RetrieveRequest, StatRequest, StoreHeader,
    StoreRequest, retrieve_response, store_request,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel as RawChannel;

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
        // The gateway said no to what was asked: the input's fault, exit 1.
        Err(err)
            if err
                .downcast_ref::<RpcError>()
                .is_some_and(RpcError::is_refusal) =>
        {
            eprintln!("kura: {err:#}");
            Ok(ExitCode::from(1))
        }
        // The reader of stdout went away (`kura ls | head`): nothing to say.
        Err(err) if is_broken_pipe(&err) => Ok(ExitCode::from(2)),
        other => other,
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

// ---------------------------------------------------------------------------
// Connection, errors

fn parse_tenant(s: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err("a tenant is 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-'".to_owned())
    }
}

/// The stem of a client certificate in `dir` for `tenant` with `role`:
/// `client-TENANT-ROLE` if there, else the first `client-TENANT-ROLES`
/// whose roles include it.
fn find_client_cert(dir: &Path, tenant: &str, role: ClientRole) -> Option<String> {
    let exact = kura_auth::certs::client_stem(tenant, kura_auth::ClientRoles::of(&[role]), None);
    if dir.join(format!("{exact}.pem")).is_file() {
        return Some(exact);
    }
    let prefix = format!("client-{tenant}-");
    let mut names: Vec<String> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter().find_map(|n| {
        let roles = n.strip_prefix(&prefix)?.strip_suffix(".pem")?;
        kura_auth::ClientRoles::parse(roles)
            .ok()
            .filter(|r| r.contains(role))
            .map(|_| n.trim_end_matches(".pem").to_string())
    })
}

/// `host:port`, `http://host:port[/]` or `https://…` → the scheme given
/// (`None`: decided by the credentials found) and `host:port`.
pub fn normalize_endpoint(raw: &str) -> anyhow::Result<(Option<&'static str>, String)> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        bail!("the endpoint is empty; give HOST:PORT or https://HOST:PORT");
    }
    let (scheme, rest) = match trimmed.split_once("://") {
        Some((scheme, rest)) => (Some(scheme.to_ascii_lowercase()), rest),
        None => (None, trimmed),
    };
    let scheme = match scheme.as_deref() {
        None => None,
        Some("http") => Some("http"),
        Some("https") => Some("https"),
        Some(other) => bail!("endpoint {raw:?}: unsupported scheme {other}://; use HOST:PORT"),
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() {
        bail!("endpoint {raw:?} names no host; give HOST:PORT");
    }
    if authority.contains(['/', '?', '#']) {
        bail!("endpoint {raw:?}: give HOST:PORT without a path");
    }
    let port = match authority.strip_prefix('[') {
        // [v6]:port
        Some(v6) => match v6.split_once(']') {
            Some((_, "")) => Some(None),
            Some((_, rest)) => rest.strip_prefix(':').map(Some),
            None => None,
        },
        None => Some(authority.rsplit_once(':').map(|(_, port)| port)),
    };
    match port {
        Some(None) => {}
        Some(Some(port)) if port.parse::<u16>().is_ok() => {}
        _ => bail!("endpoint {raw:?} is not HOST:PORT"),
    }
    let uri: tonic::codegen::http::Uri = format!("http://{authority}")
        .parse()
        .map_err(|e| anyhow!("endpoint {raw:?} is not HOST:PORT: {e}"))?;
    if uri.host().is_none_or(str::is_empty) {
        bail!("endpoint {raw:?} names no host; give HOST:PORT");
    }
    Ok((scheme, authority.to_string()))
}

/// A failed call: the gRPC status, and whether it came from the local
/// transport (the gateway unreachable) rather than from the gateway.
#[derive(Debug)]
pub struct RpcError {
    code: Code,
    message: String,
    endpoint: String,
    /// The failure is the connection's, not the gateway's answer.
    transport: bool,
}

impl RpcError {
    pub fn new(status: &tonic::Status, endpoint: &str) -> Self {
        let transport = std::error::Error::source(status).is_some();
        let mut message = status.message().to_owned();
        if transport {
            message = join_error_chain(&message, status);
        }
        RpcError {
            code: status.code(),
            message,
            endpoint: endpoint.to_owned(),
            transport,
        }
    }

    /// The gateway refused the request as asked (retrying will not help);
    /// everything else is a failure to run.
    pub fn is_refusal(&self) -> bool {
        !self.transport && is_refusal_code(self.code)
    }

    /// `CODE: message`, without the hint about the endpoint.
    fn code_and_message(&self) -> String {
        if self.message.is_empty() {
            code_name(self.code).to_owned()
        } else {
            format!("{}: {}", code_name(self.code), self.message)
        }
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.code_and_message())?;
        let endpoint = &self.endpoint;
        if self.transport {
            write!(
                f,
                " (talking to the gateway at {endpoint}; is it running? \
                 `kura dev` starts a local cluster)"
            )?;
        } else if self.code == Code::Unimplemented {
            write!(f, " (is {endpoint} a Kura gateway?)")?;
        }
        Ok(())
    }
}

impl std::error::Error for RpcError {}

/// Codes that mean "not with this input" rather than "not now".
fn is_refusal_code(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::PermissionDenied
            | Code::Unauthenticated
    )
}

/// `first: cause: cause…`, leaving out a cause already contained in what
/// precedes it (transport errors repeat their sources in their messages).
fn join_error_chain(first: &str, err: &dyn std::error::Error) -> String {
    let mut text = first.to_owned();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !cause_text.is_empty() && !text.contains(&cause_text) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Connects (eagerly, so an unreachable gateway is reported as such) and
/// configures the client: compressed answers accepted, 8 MiB messages.
/// Answers the client, the endpoint and the tenant to name in requests.
async fn connect(
    args: &ConnectArgs,
    role: ClientRole,
) -> anyhow::Result<(ArchiveClient<Channel>, String, String)> {
    let c = connect_channel(&args.endpoint, &args.creds, args.tenant.as_deref(), role).await?;
    let client = ArchiveClient::new(c.channel)
        .accept_compressed(CompressionEncoding::Zstd)
        .accept_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(MAX_DECODING_MESSAGE_BYTES);
    Ok((client, c.endpoint, c.tenant))
}

/// A connection to a gateway, as one identity.
pub struct Connected {
    pub channel: Channel,
    /// `scheme://host:port`, for messages.
    pub endpoint: String,
    /// The tenant to name in requests: the one asked for, or empty (the
    /// credential's), or `default` on a plaintext gateway.
    pub tenant: String,
}

/// A channel to the gateway at `raw_endpoint`, connected eagerly, with the
/// credential of `role` in `tenant` when one is found (TLS), else
/// plaintext.
pub async fn connect_channel(
    raw_endpoint: &str,
    creds: &CredentialArgs,
    tenant: Option<&str>,
    role: ClientRole,
) -> anyhow::Result<Connected> {
    let (scheme, authority) = normalize_endpoint(raw_endpoint)?;
    let lookup = tenant.unwrap_or(kura_dev::certs::DEV_TENANT);
    let transport = match scheme {
        Some("http") => Transport::Plaintext,
        _ => match creds.material(lookup, role)? {
            Some(m) => Transport::tls(m),
            None if scheme == Some("https") => bail!(
                "{raw_endpoint}: TLS needs the cluster's CA: give --ca FILE or --certs DIR (KURA_CA, KURA_CERTS)"
            ),
            None => Transport::Plaintext,
        },
    };
    let tenant = match (tenant, transport.is_tls()) {
        (Some(t), _) => t.to_string(),
        (None, true) => String::new(),
        (None, false) => kura_dev::certs::DEV_TENANT.to_string(),
    };
    let endpoint = format!("{}://{authority}", transport.scheme());
    let bearer = match &creds.token {
        Some(t) => Bearer(Some(
            format!("Bearer {}", t.trim())
                .parse()
                .map_err(|_| anyhow!("the token is not printable ASCII"))?,
        )),
        None => Bearer(None),
    };
    let channel = transport
        .endpoint(&authority)
        .with_context(|| format!("endpoint {raw_endpoint:?}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .connect()
        .await
        .map_err(|err| {
            anyhow!(
                "cannot reach the Kura gateway at {endpoint} ({}); is it running? \
                 `kura dev` starts a local cluster",
                join_error_chain(&err.to_string(), &err)
            )
        })?;
    Ok(Connected {
        channel: tonic::service::interceptor::InterceptedService::new(channel, bearer),
        endpoint,
        tenant,
    })
}

fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

// ---------------------------------------------------------------------------
// InstanceInfo as text and JSON

fn protection_name(value: i32) -> String {
    match Protection::try_from(value) {
        Ok(Protection::Full) => "full".to_owned(),
        Ok(Protection::UnderProtected) => "under-protected".to_owned(),
        Ok(Protection::Unspecified) => "unspecified".to_owned(),
        Err(_) => format!("unknown ({value})"),
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both in range by construction.
    (year, month as u32, day as u32)
}

/// Milliseconds since the Unix epoch → RFC 3339 in UTC, e.g.
/// `2024-03-01T12:34:56.789Z` (or without the milliseconds).
pub fn rfc3339(unix_ms: i64, millis: bool) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let (h, m, s) = (sod / 3600, sod % 3600 / 60, sod % 60);
    if millis {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
    }
}

pub fn info_json(info: &InstanceInfo) -> Value {
    json!({
        "tenant": info.tenant,
        "sop_instance_uid": info.sop_instance_uid,
        "sop_class_uid": info.sop_class_uid,
        "study_instance_uid": info.study_instance_uid,
        "series_instance_uid": info.series_instance_uid,
        "transfer_syntax_uid": info.transfer_syntax_uid,
        "patient_id": info.patient_id,
        "modality": info.modality,
        "study_date": info.study_date,
        "size": info.size,
        "blake3": info.blake3,
        "protection": protection_name(info.protection),
        "stored_at": rfc3339(info.stored_at_unix_ms, true),
        "stored_at_unix_ms": info.stored_at_unix_ms,
        "ec_data_shards": info.ec_data_shards,
        "ec_parity_shards": info.ec_parity_shards,
        "retained_until": (info.retained_until_unix_ms > 0)
            .then(|| rfc3339(info.retained_until_unix_ms, true)),
        "legal_hold": (!info.legal_hold.is_empty()).then_some(&info.legal_hold),
    })
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn write_info(out: &mut impl Write, info: &InstanceInfo) -> io::Result<()> {
    let ts_name = kura_dicom::transfer_syntax_name(&info.transfer_syntax_uid)
        .map(|name| format!(" ({name})"))
        .unwrap_or_default();
    let fields: [(&str, String); 17] = [
        ("tenant", info.tenant.clone()),
        ("sop_instance_uid", info.sop_instance_uid.clone()),
        ("sop_class_uid", info.sop_class_uid.clone()),
        ("study_instance_uid", info.study_instance_uid.clone()),
        ("series_instance_uid", info.series_instance_uid.clone()),
        (
            "transfer_syntax_uid",
            format!("{}{ts_name}", or_dash(&info.transfer_syntax_uid)),
        ),
        ("patient_id", info.patient_id.clone()),
        ("modality", info.modality.clone()),
        ("study_date", info.study_date.clone()),
        (
            "size",
            format!("{} bytes ({})", info.size, HumanBytes(info.size)),
        ),
        ("blake3", info.blake3.clone()),
        ("protection", protection_name(info.protection)),
        ("stored_at", rfc3339(info.stored_at_unix_ms, true)),
        ("ec_data_shards", info.ec_data_shards.to_string()),
        ("ec_parity_shards", info.ec_parity_shards.to_string()),
        (
            "retained_until",
            if info.retained_until_unix_ms > 0 {
                rfc3339(info.retained_until_unix_ms, true)
            } else {
                String::new()
            },
        ),
        ("legal_hold", info.legal_hold.clone()),
    ];
    for (name, value) in fields {
        writeln!(out, "{name}: {}", or_dash(&value))?;
    }
    Ok(())
}

pub fn print_json(value: &Value) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    serde_json::to_writer_pretty(&mut out, value).context("writing JSON")?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------
// stat, ls

async fn stat(args: StatArgs) -> anyhow::Result<ExitCode> {
    let what = format!("stat {}", args.uid);
    let (mut client, endpoint, tenant) = connect(&args.connect, ClientRole::Reader)
        .await
        .context(what.clone())?;
    let request = StatRequest {
        tenant,
        sop_instance_uid: args.uid.clone(),
    };
    let info = client
        .stat(with_timeout(request, METADATA_CALL_TIMEOUT))
        .await
        .map_err(|status| RpcError::new(&status, &endpoint))
        .context(what)?
        .into_inner();
    if args.json {
        print_json(&info_json(&info))?;
    } else {
        let stdout = io::stdout();
        let mut out = stdout.lock();
        write_info(&mut out, &info)?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let (what, target) = match (&args.uid, &args.study) {
        (_, Some(study)) => (
            format!("delete study {study}"),
            format!("every instance of study {study}"),
        ),
        (Some(uid), None) => (format!("delete {uid}"), format!("instance {uid}")),
        (None, None) => anyhow::bail!("name an instance UID or --study UID"),
    };
    if !args.yes {
        use std::io::{BufRead, IsTerminal};
        if !io::stdin().is_terminal() {
            anyhow::bail!("{what}: not confirmed (pass --yes when there is no terminal to ask)");
        }
        eprint!("Delete {target} for good? Type yes to confirm: ");
        let mut answer = String::new();
        io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            eprintln!("nothing deleted");
            return Ok(ExitCode::from(1));
        }
    }
    let (mut client, endpoint, tenant) = connect(&args.connect, ClientRole::Admin)
        .await
        .context(what.clone())?;
    let answer = match (&args.uid, &args.study) {
        (_, Some(study)) => {
            client
                .delete_study(with_timeout(
                    kura_proto::v1::DeleteStudyRequest {
                        tenant: tenant.clone(),
                        study_instance_uid: study.clone(),
                    },
                    METADATA_CALL_TIMEOUT,
                ))
                .await
        }
        (uid, None) => {
            client
                .delete(with_timeout(
                    kura_proto::v1::DeleteRequest {
                        tenant: tenant.clone(),
                        sop_instance_uid: uid.clone().unwrap_or_default(),
                    },
                    METADATA_CALL_TIMEOUT,
                ))
                .await
        }
    }
    .map_err(|status| RpcError::new(&status, &endpoint))
    .context(what)?
    .into_inner();
    if args.json {
        print_json(&serde_json::json!({
            "tenant": tenant,
            "sop_instance_uid": args.uid,
            "study_instance_uid": args.study,
            "deleted": answer.deleted,
        }))?;
    } else {
        println!(
            "deleted {} instance(s); their shards are reclaimed after the storage nodes' orphan grace period",
            answer.deleted
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let what = match &args.series {
        Some(series) => format!("ls study {} series {series}", args.study),
        None => format!("ls study {}", args.study),
    };
    let (mut client, endpoint, tenant) = connect(&args.connect, ClientRole::Reader)
        .await
        .context(what.clone())?;
    let request = ListStudyRequest {
        tenant,
        study_instance_uid: args.study.clone(),
        series_instance_uid: args.series.clone(),
    };
    let rpc = |status: tonic::Status| RpcError::new(&status, &endpoint);
    let mut stream = client
        .list_study(with_timeout(request, METADATA_CALL_TIMEOUT))
        .await
        .map_err(rpc)
        .context(what.clone())?
        .into_inner();
    let mut infos = Vec::new();
    while let Some(info) = stream.message().await.map_err(rpc).context(what.clone())? {
        infos.push(info);
    }
    if args.json {
        print_json(&Value::Array(infos.iter().map(info_json).collect()))?;
        return Ok(ExitCode::SUCCESS);
    }
    if infos.is_empty() {
        eprintln!("kura: {what}: no instances");
        return Ok(ExitCode::SUCCESS);
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    write_table(&mut out, &infos)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn write_table(out: &mut impl Write, infos: &[InstanceInfo]) -> io::Result<()> {
    let header = [
        "SOP INSTANCE UID",
        "SERIES",
        "MODALITY",
        "SIZE",
        "PROTECTION",
        "STORED AT",
    ];
    let rows: Vec<[String; 6]> = infos
        .iter()
        .map(|info| {
            [
                info.sop_instance_uid.clone(),
                or_dash(&info.series_instance_uid).to_owned(),
                or_dash(&info.modality).to_owned(),
                HumanBytes(info.size).to_string(),
                protection_name(info.protection),
                rfc3339(info.stored_at_unix_ms, false),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: [&str; 6]| -> io::Result<()> {
        let [uid, series, modality, size, protection, stored] = cells;
        writeln!(
            out,
            "{uid:<w0$}  {series:<w1$}  {modality:<w2$}  {size:>w3$}  {protection:<w4$}  {stored}",
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        )
    };
    line(out, header)?;
    for row in &rows {
        line(out, row.each_ref().map(String::as_str))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// retrieve

async fn retrieve(args: RetrieveArgs) -> anyhow::Result<ExitCode> {
    let what = format!("retrieve {}", args.uid);
    let to_stdout = args.output.as_os_str() == "-";
    if to_stdout && args.json {
        bail!("{what}: --json cannot go with -o - (both write to stdout)");
    }
    if to_stdout && io::stdout().is_terminal() {
        bail!("{what}: not writing a DICOM instance to a terminal; redirect stdout or use -o FILE");
    }
    if !to_stdout {
        if args.output.is_dir() {
            bail!(
                "{what}: {} is a folder; give a file name",
                args.output.display()
            );
        }
        let dir = output_dir(&args.output);
        if !dir.is_dir() {
            bail!("{what}: folder {} does not exist", dir.display());
        }
    }
    let (client, endpoint, tenant) = connect(&args.connect, ClientRole::Reader)
        .await
        .context(what.clone())?;
    // Ctrl-C drops the transfer, and with it the temporary file.
    let transfer = retrieve_to(client, &endpoint, &tenant, &args, to_stdout);
    let info = tokio::select! {
        result = transfer => result.context(what)?,
        _ = tokio::signal::ctrl_c() => bail!("{what}: interrupted"),
    };
    let output = if to_stdout {
        "-".to_owned()
    } else {
        args.output.display().to_string()
    };
    if args.json {
        print_json(&json!({"info": info_json(&info), "output": output}))?;
    } else if !to_stdout {
        let mut out = io::stdout().lock();
        writeln!(
            out,
            "retrieved {} ({} bytes, blake3 {}) to {output}",
            info.sop_instance_uid, info.size, info.blake3
        )?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The folder a retrieved file is written in (its temporary file too).
fn output_dir(output: &Path) -> &Path {
    match output.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Streams the instance into `args.output` (or stdout) and returns its
/// info once the bytes matched it.
async fn retrieve_to(
    mut client: ArchiveClient<Channel>,
    endpoint: &str,
    tenant: &str,
    args: &RetrieveArgs,
    to_stdout: bool,
) -> anyhow::Result<InstanceInfo> {
    let rpc = |status: tonic::Status| RpcError::new(&status, endpoint);
    let request = RetrieveRequest {
        tenant: tenant.to_string(),
        sop_instance_uid: args.uid.clone(),
    };
    let mut stream = client.retrieve(request).await.map_err(rpc)?.into_inner();
    let info = match stream.message().await.map_err(rpc)? {
        Some(message) => match message.msg {
            Some(retrieve_response::Msg::Info(info)) => info,
            _ => bail!("the gateway's answer did not start with the instance's info"),
        },
        None => bail!("the gateway ended the stream without an answer"),
    };

    // Until `persist`, the temporary file is removed when dropped: on any
    // error, and on Ctrl-C (the future is dropped).
    let mut temp = None;
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if to_stdout {
        Box::new(tokio::io::stdout())
    } else {
        let dir = output_dir(&args.output);
        let file = tempfile::Builder::new()
            .prefix(".kura-retrieve-")
            .suffix(".partial")
            .tempfile_in(dir)
            .with_context(|| format!("create a temporary file in {}", dir.display()))?;
        let handle = file
            .as_file()
            .try_clone()
            .context("open the temporary file")?;
        temp = Some(file);
        Box::new(tokio::fs::File::from_std(handle))
    };

    let mut hasher = blake3::Hasher::new();
    let mut received: u64 = 0;
    while let Some(message) = stream.message().await.map_err(rpc)? {
        let chunk = match message.msg {
            Some(retrieve_response::Msg::Chunk(chunk)) => chunk,
            Some(retrieve_response::Msg::Info(_)) => {
                bail!("the gateway sent a second info in the stream")
            }
            None => bail!("the gateway sent an empty message in the stream"),
        };
        received += chunk.len() as u64;
        if received > info.size {
            bail!(
                "the gateway sent more than the instance's {} bytes",
                info.size
            );
        }
        hasher.update(&chunk);
        out.write_all(&chunk).await.context("write the instance")?;
    }
    out.flush().await.context("write the instance")?;
    let hash = hasher.finalize();
    let consequence = if to_stdout {
        "what was written to stdout is not the instance".to_owned()
    } else {
        format!("{} was not written", args.output.display())
    };
    if received != info.size {
        bail!(
            "DATA_LOSS: the stream ended after {received} of {} bytes; {consequence}",
            info.size
        );
    }
    if !hash.to_hex().eq_ignore_ascii_case(&info.blake3) {
        bail!(
            "DATA_LOSS: what arrived has blake3 {}, the archive says {}; {consequence}",
            hash.to_hex(),
            info.blake3
        );
    }
    if let Some(file) = temp {
        file.as_file()
            .sync_all()
            .context("flush the instance to disk")?;
        drop(out);
        file.persist(&args.output).map_err(|e| {
            anyhow!(
                "move the instance into {}: {}",
                args.output.display(),
                e.error
            )
        })?;
    }
    Ok(info)
}

// ---------------------------------------------------------------------------
// store: walking the inputs

/// What `store` will send: every regular file found, with its size then,
/// and what could not be read (reported, never skipped silently).
#[derive(Debug, Default)]
pub struct Inputs {
    pub files: Vec<(PathBuf, u64)>,
    pub problems: Vec<(PathBuf, String)>,
}

/// Expands the command's paths: a file as itself, a folder as every file
/// under it (symlinks followed, each folder walked once), sorted by path.
/// A path given on the command line that cannot be read is an error before
/// anything is sent; what goes wrong deeper in a folder is a problem.
pub fn collect_inputs(paths: &[PathBuf]) -> anyhow::Result<Inputs> {
    let mut inputs = Inputs::default();
    let mut visited = HashSet::new();
    for path in paths {
        let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_file() {
            inputs.files.push((path.clone(), meta.len()));
        } else if meta.is_dir() {
            let mut found = Inputs::default();
            walk(path, &mut visited, &mut found);
            found.files.sort();
            found.problems.sort();
            inputs.files.append(&mut found.files);
            inputs.problems.append(&mut found.problems);
        } else {
            inputs
                .problems
                .push((path.clone(), "not a regular file or folder".to_owned()));
        }
    }
    Ok(inputs)
}

fn walk(dir: &Path, visited: &mut HashSet<PathBuf>, found: &mut Inputs) {
    // A symlink back up the tree would loop; a folder is walked once.
    match fs::canonicalize(dir) {
        Ok(real) => {
            if !visited.insert(real) {
                return;
            }
        }
        Err(e) => {
            found
                .problems
                .push((dir.to_owned(), format!("cannot read: {e}")));
            return;
        }
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            found
                .problems
                .push((dir.to_owned(), format!("cannot list: {e}")));
            return;
        }
    };
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(e) => {
                found
                    .problems
                    .push((dir.to_owned(), format!("cannot list: {e}")));
                continue;
            }
        };
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => found.files.push((path, meta.len())),
            Ok(meta) if meta.is_dir() => walk(&path, visited, found),
            Ok(_) => found
                .problems
                .push((path, "not a regular file or folder".to_owned())),
            Err(e) => found.problems.push((path, format!("cannot read: {e}"))),
        }
    }
}

// ---------------------------------------------------------------------------
// store: sending

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Stored,
    AlreadyStored,
    Refused,
    Error,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Stored => "stored",
            Status::AlreadyStored => "already_stored",
            Status::Refused => "refused",
            Status::Error => "error",
        }
    }
}

/// What became of one file.
#[derive(Debug, Clone)]
pub struct FileOutcome {
    pub path: PathBuf,
    pub status: Status,
    pub sop_instance_uid: Option<String>,
    pub blake3: Option<String>,
    pub size: Option<u64>,
    /// The gRPC code name for the gateway's answers; none for local errors.
    pub code: Option<&'static str>,
    pub message: Option<String>,
}

impl FileOutcome {
    fn failed(
        path: PathBuf,
        size: Option<u64>,
        status: Status,
        code: Option<Code>,
        message: String,
    ) -> Self {
        FileOutcome {
            path,
            status,
            sop_instance_uid: None,
            blake3: None,
            size,
            code: code.map(code_name),
            message: Some(message),
        }
    }
}

pub fn summary_json(outcomes: &[FileOutcome]) -> Value {
    let count = |status| outcomes.iter().filter(|o| o.status == status).count();
    let files: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            json!({
                "path": o.path.display().to_string(),
                "status": o.status.as_str(),
                "sop_instance_uid": o.sop_instance_uid,
                "blake3": o.blake3,
                "size": o.size,
                "code": o.code,
                "message": o.message,
            })
        })
        .collect();
    json!({
        "stored": count(Status::Stored),
        "already_stored": count(Status::AlreadyStored),
        "refused": count(Status::Refused),
        "errors": count(Status::Error),
        "files": files,
    })
}

fn write_summary(
    out: &mut impl Write,
    outcomes: &[FileOutcome],
    bytes: u64,
    elapsed: Duration,
) -> io::Result<()> {
    let count = |status| outcomes.iter().filter(|o| o.status == status).count();
    let (refused, errors) = (count(Status::Refused), count(Status::Error));
    for (status, title) in [(Status::Refused, "refused"), (Status::Error, "not sent")] {
        if count(status) == 0 {
            continue;
        }
        writeln!(out, "{title}:")?;
        for o in outcomes.iter().filter(|o| o.status == status) {
            let code = o.code.map(|c| format!("{c}: ")).unwrap_or_default();
            let message = o.message.as_deref().unwrap_or("");
            writeln!(out, "  {}: {code}{message}", o.path.display())?;
        }
    }
    write!(
        out,
        "stored {}, already there {}, refused {refused}",
        count(Status::Stored),
        count(Status::AlreadyStored)
    )?;
    if errors > 0 {
        write!(out, ", not sent {errors}")?;
    }
    writeln!(
        out,
        " ({} files, {} in {:.1} s)",
        outcomes.len(),
        HumanBytes(bytes),
        elapsed.as_secs_f64()
    )
}

fn progress_bar(total_bytes: u64, hidden: bool) -> ProgressBar {
    if hidden || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

async fn store(args: StoreArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let inputs = collect_inputs(&args.paths).context("store")?;
    let (client, endpoint, tenant) = connect(&args.connect, ClientRole::Writer)
        .await
        .context("store")?;

    let total_files = inputs.files.len();
    let total_bytes: u64 = inputs.files.iter().map(|(_, size)| size).sum();
    let bar = progress_bar(total_bytes, args.json);
    bar.set_message(format!("0/{total_files} files"));

    let mut pending = stream::iter(inputs.files.into_iter().enumerate())
        .map(|(index, (path, size))| {
            let (client, tenant, bar) = (client.clone(), tenant.clone(), bar.clone());
            let endpoint = endpoint.clone();
            async move {
                let outcome = store_file(client, &endpoint, tenant, path, size, &bar).await;
                (index, outcome)
            }
        })
        .buffer_unordered(usize::from(args.concurrency));
    let mut outcomes = Vec::with_capacity(total_files + inputs.problems.len());
    while let Some(done) = pending.next().await {
        outcomes.push(done);
        bar.set_message(format!("{}/{total_files} files", outcomes.len()));
    }
    bar.finish_and_clear();
    outcomes.sort_by_key(|(index, _)| *index);
    let mut outcomes: Vec<FileOutcome> = outcomes.into_iter().map(|(_, o)| o).collect();
    outcomes.extend(
        inputs
            .problems
            .into_iter()
            .map(|(path, message)| FileOutcome::failed(path, None, Status::Error, None, message)),
    );

    if args.json {
        print_json(&summary_json(&outcomes))?;
    } else {
        if outcomes.is_empty() {
            eprintln!("kura: store: no files found");
        }
        let stdout = io::stdout();
        let mut out = stdout.lock();
        write_summary(&mut out, &outcomes, total_bytes, started.elapsed())?;
        out.flush()?;
    }
    let any = |status| outcomes.iter().any(|o| o.status == status);
    Ok(if any(Status::Error) {
        ExitCode::from(2)
    } else if any(Status::Refused) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Stores one file as one Store stream.
async fn store_file(
    mut client: ArchiveClient<Channel>,
    endpoint: &str,
    tenant: String,
    path: PathBuf,
    walked_size: u64,
    bar: &ProgressBar,
) -> FileOutcome {
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let outcome = store_file_inner(&mut client, endpoint, tenant, &path, bar, &sent).await;
    // Count what was not sent (a refusal, an error) as done for the bar.
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    bar.inc(walked_size.saturating_sub(sent));
    match outcome {
        Ok(outcome) => outcome,
        Err(err) => FileOutcome::failed(
            path,
            Some(walked_size),
            Status::Error,
            None,
            format!("{err:#}"),
        ),
    }
}

async fn store_file_inner(
    client: &mut ArchiveClient<Channel>,
    endpoint: &str,
    tenant: String,
    path: &Path,
    bar: &ProgressBar,
    sent: &Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<FileOutcome> {
    let file = tokio::fs::File::open(path).await.context("cannot open")?;
    let meta = file.metadata().await.context("cannot read")?;
    if !meta.is_file() {
        bail!("not a regular file");
    }
    let size = meta.len();
    let header = StoreRequest {
        msg: Some(store_request::Msg::Header(StoreHeader {
            tenant,
            expected_blake3: None,
            size: Some(size),
        })),
    };
    let read_error = Arc::new(Mutex::new(None));
    let chunks = file_chunks(file, size, read_error.clone(), bar.clone(), sent.clone());
    let requests = stream::once(async move { header }).chain(chunks.map(|chunk| StoreRequest {
        msg: Some(store_request::Msg::Chunk(chunk.into())),
    }));
    let answer = client.store(requests).await;
    // A local read failure ended the stream early: the gateway's refusal of
    // the short stream is its consequence, not the cause.
    if let Some(err) = read_error.lock().ok().and_then(|mut slot| slot.take()) {
        return Err(err);
    }
    let path = path.to_owned();
    Ok(match answer {
        Ok(response) => {
            let response = response.into_inner();
            let info = response.info.unwrap_or_default();
            FileOutcome {
                path,
                status: if response.already_stored {
                    Status::AlreadyStored
                } else {
                    Status::Stored
                },
                sop_instance_uid: Some(info.sop_instance_uid),
                blake3: Some(info.blake3),
                size: Some(info.size),
                code: None,
                message: None,
            }
        }
        Err(status) => {
            let err = RpcError::new(&status, endpoint);
            let outcome = if err.is_refusal() {
                Status::Refused
            } else {
                Status::Error
            };
            // The code has its own field; the message keeps any hint.
            let message = err.to_string();
            let message = message
                .strip_prefix(code_name(status.code()))
                .map(|rest| rest.strip_prefix(": ").unwrap_or(rest).to_owned())
                .unwrap_or(message);
            FileOutcome::failed(path, Some(size), outcome, Some(status.code()), message)
        }
    })
}

/// The file's first `size` bytes as chunks of [`STORE_CHUNK_BYTES`], read
/// only when the transport asks for the next one. A read error or a file
/// that shrank ends the stream and is left in `error`.
fn file_chunks(
    file: tokio::fs::File,
    size: u64,
    error: Arc<Mutex<Option<anyhow::Error>>>,
    bar: ProgressBar,
    sent: Arc<std::sync::atomic::AtomicU64>,
) -> impl Stream<Item = Vec<u8>> + Send + 'static {
    stream::unfold((file, 0u64), move |(mut file, done)| {
        let (error, bar, sent) = (error.clone(), bar.clone(), sent.clone());
        async move {
            if done >= size {
                return None;
            }
            let want = usize::try_from(size - done)
                .unwrap_or(usize::MAX)
                .min(STORE_CHUNK_BYTES);
            let mut buf = vec![0u8; want];
            let mut filled = 0;
            let failure = loop {
                if filled == want {
                    break None;
                }
                match file.read(&mut buf[filled..]).await {
                    Ok(0) => {
                        break Some(anyhow!(
                            "the file shrank while being sent: {size} bytes expected, {} read",
                            done + filled as u64
                        ));
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Some(anyhow::Error::new(e).context("cannot read")),
                }
            };
            if let Some(err) = failure {
                if let Ok(mut slot) = error.lock() {
                    *slot = Some(err);
                }
                return None;
            }
            bar.inc(want as u64);
            sent.fetch_add(want as u64, std::sync::atomic::Ordering::Relaxed);
            Some((buf, (file, done + want as u64)))
        }
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

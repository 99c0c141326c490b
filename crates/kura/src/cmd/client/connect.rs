//! Reaching a gateway: endpoints, credentials (client certificates found by
//! tenant and role, bearer tokens), the TLS channel, and `RpcError`, which
//! turns a gRPC status into what the user reads and the exit code.

use super::*;

pub(super) fn parse_tenant(s: &str) -> Result<String, String> {
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
pub(super) fn find_client_cert(dir: &Path, tenant: &str, role: ClientRole) -> Option<String> {
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
    pub(super) code: Code,
    pub(super) message: String,
    pub(super) endpoint: String,
    /// The failure is the connection's, not the gateway's answer.
    pub(super) transport: bool,
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
pub(super) fn is_refusal_code(code: Code) -> bool {
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
pub(super) fn join_error_chain(first: &str, err: &dyn std::error::Error) -> String {
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
pub(super) async fn connect(
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

pub(super) fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

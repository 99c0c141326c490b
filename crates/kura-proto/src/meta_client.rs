//! A thin client of the metadata cluster that follows leader changes.
//!
//! Leader-only calls (every proposal, linearizable reads, lifecycle
//! changes) go to the node believed to lead. A follower that refuses one
//! names the leader in the response metadata and the client retries there;
//! a node that cannot be reached, or that knows no leader (an election is
//! running), makes the client try the next endpoint with a growing pause,
//! until the call's deadline. What happens to a call whose answer never
//! arrived is reported as [`MetaClientError::Unknown`]: it may or may not
//! have been committed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kura_auth::Transport;
use serde::{Serialize, de::DeserializeOwned};
use tonic::transport::Channel;

use crate::codec;
use crate::meta::{
    AdminRequest, AdminResponse, Command, CommandResult, LEADER_ADDR_HEADER, NOT_PROPOSED_HEADER,
    Query, QueryResult,
};
use crate::v1::internal::MetaPayload;
use crate::v1::internal::meta_client::MetaClient as GrpcMetaClient;

/// How long one attempt may take before its outcome counts as unknown.
pub const ATTEMPT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// How long a call keeps retrying through elections and unreachable nodes.
pub const CALL_DEADLINE_DEFAULT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`MetaClient::query_any`] waits for one voter before it asks
/// the next beside it (a healthy voter answers a point read in a few ms).
pub const QUERY_ANY_HEDGE: Duration = Duration::from_millis(50);
const BACKOFF_MIN: Duration = Duration::from_millis(25);
/// An idempotent proposal's attempt at the node believed to lead gets this
/// long (plus a second per MiB of payload) before the client tries
/// another voter: a leader cut off by dropped packets must not hold every
/// write for the whole attempt timeout while the others elect a new one.
const LEADER_ATTEMPT_SHORT: Duration = Duration::from_millis(600);
/// An endpoint that timed out or refused the connection is tried last
/// for this long.
const AVOID_FOR: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// Why a metadata call failed.
#[derive(Debug, thiserror::Error)]
pub enum MetaClientError {
    /// No node could serve the call before the deadline (no quorum, no
    /// leader, or none reachable).
    #[error("metadata cluster unavailable: {0}")]
    Unavailable(String),
    /// The call was sent but no answer came: it may or may not have taken
    /// effect.
    #[error("metadata call outcome unknown: {0}")]
    Unknown(String),
    /// The cluster refused the request as malformed.
    #[error("metadata request refused: {0}")]
    InvalidArgument(String),
    /// The request conflicts with the cluster's state (e.g. a second
    /// bootstrap).
    #[error("metadata request not allowed now: {0}")]
    FailedPrecondition(String),
    /// Any other status.
    #[error("metadata call failed: {0}")]
    Status(tonic::Status),
    /// A payload did not decode.
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
}

/// Whether a call may be repeated after an attempt whose outcome is
/// unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Repeat: the call is idempotent (reads, PutManifest, membership set).
    Idempotent,
    /// Report [`MetaClientError::Unknown`] instead (compare-and-set, or a
    /// caller that records histories).
    Once,
}

#[derive(Clone, Copy)]
enum Rpc {
    Propose,
    Query,
    Admin,
}

/// A client of the metadata cluster. Cheap to clone; clones share the
/// leader hint and the connections.
#[derive(Clone)]
pub struct MetaClient {
    inner: Arc<Inner>,
}

struct Inner {
    endpoints: Vec<String>,
    transport: Transport,
    leader: Mutex<Option<String>>,
    channels: Mutex<HashMap<String, Channel>>,
    attempt_timeout: Duration,
    call_deadline: Duration,
    /// The next endpoint to try when no leader is known.
    rotor: std::sync::atomic::AtomicUsize,
    /// The endpoint that last answered a [`MetaClient::query_any`].
    nearby: std::sync::atomic::AtomicUsize,
    /// Endpoints that just timed out or refused, until when.
    avoid: Mutex<HashMap<String, Instant>>,
}

impl MetaClient {
    /// A client of the cluster whose voters listen at `endpoints`
    /// (`host:port`), over `transport` (TLS with this process's
    /// certificate, or plaintext). No connection is made until the first
    /// call.
    pub fn new(endpoints: Vec<String>, transport: Transport) -> Self {
        Self::with_timeouts(
            endpoints,
            transport,
            ATTEMPT_TIMEOUT_DEFAULT,
            CALL_DEADLINE_DEFAULT,
        )
    }

    /// As [`MetaClient::new`], with explicit timeouts.
    pub fn with_timeouts(
        endpoints: Vec<String>,
        transport: Transport,
        attempt_timeout: Duration,
        call_deadline: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                endpoints,
                transport,
                leader: Mutex::new(None),
                rotor: std::sync::atomic::AtomicUsize::new(0),
                nearby: std::sync::atomic::AtomicUsize::new(0),
                avoid: Mutex::new(HashMap::new()),
                channels: Mutex::new(HashMap::new()),
                attempt_timeout,
                call_deadline,
            }),
        }
    }

    /// The endpoints this client was given.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// Commits `command`; answers what it did or why the state machine
    /// refused it. `retry` says whether an attempt with an unknown outcome
    /// may be repeated.
    pub async fn propose(
        &self,
        command: &Command,
        retry: Retry,
    ) -> Result<CommandResult, MetaClientError> {
        self.call(Rpc::Propose, command, retry).await
    }

    /// Answers `query`.
    pub async fn query(&self, query: &Query) -> Result<QueryResult, MetaClientError> {
        self.call(Rpc::Query, query, Retry::Idempotent).await
    }

    /// Answers `query` (a stale one: any voter's applied state) from the
    /// first voter that answers, without following the leader: the voter
    /// that answered last, then the others in turn, each given at most
    /// `attempt`; a voter silent for [`QUERY_ANY_HEDGE`] gets the next one
    /// asked beside it, so a cut-off voter costs a read that long, not a
    /// whole attempt. Reads whose answer may lag the latest commits use it
    /// so that they never wait for an election.
    pub async fn query_any(
        &self,
        query: &Query,
        attempt: Duration,
    ) -> Result<QueryResult, MetaClientError> {
        use futures::StreamExt;
        use std::sync::atomic::Ordering;
        let payload = codec::encode(query)?;
        let n = self.inner.endpoints.len();
        let first = self.inner.nearby.load(Ordering::Relaxed);
        let mut order = (0..n).map(|i| (first + i) % n);
        let launch = |at: usize| {
            let payload = payload.clone();
            async move {
                let r = match self.inner.endpoints.get(at) {
                    Some(addr) => {
                        self.attempt_within(addr, Rpc::Query, payload, attempt)
                            .await
                    }
                    None => Err(tonic::Status::unavailable("no such endpoint")),
                };
                (at, r)
            }
        };
        let mut inflight = futures::stream::FuturesUnordered::new();
        inflight.extend(order.next().map(launch));
        let mut last_error = String::from("no endpoint configured");
        loop {
            let hedge = tokio::time::sleep(QUERY_ANY_HEDGE);
            tokio::select! {
                answer = inflight.next() => {
                    let Some((at, r)) = answer else { break };
                    match r {
                        Ok(bytes) => {
                            self.inner.nearby.store(at, Ordering::Relaxed);
                            return Ok(codec::decode(&bytes)?);
                        }
                        Err(status) => match status.code() {
                            tonic::Code::Unavailable
                            | tonic::Code::DeadlineExceeded
                            | tonic::Code::Cancelled
                            | tonic::Code::Unknown
                            | tonic::Code::Aborted => {
                                let addr = self.inner.endpoints.get(at).map_or("?", String::as_str);
                                last_error = format!("{addr}: {}", status.message());
                                inflight.extend(order.next().map(launch));
                            }
                            _ => return Err(classify_final(status)),
                        },
                    }
                }
                _ = hedge => inflight.extend(order.next().map(launch)),
            }
        }
        Err(MetaClientError::Unavailable(last_error))
    }

    /// Sends a lifecycle request to the leader (or, for `Bootstrap` and
    /// `Status`, see [`MetaClient::admin_at`]).
    pub async fn admin(&self, request: &AdminRequest) -> Result<AdminResponse, MetaClientError> {
        self.call(Rpc::Admin, request, Retry::Idempotent).await
    }

    /// Sends a lifecycle request to one node, without following the leader
    /// (bootstrap a node, ask one node for its status).
    pub async fn admin_at(
        &self,
        addr: &str,
        request: &AdminRequest,
    ) -> Result<AdminResponse, MetaClientError> {
        let payload = codec::encode(request)?;
        match self.attempt(addr, Rpc::Admin, payload).await {
            Ok(bytes) => Ok(codec::decode(&bytes)?),
            Err(status) => Err(classify_final(status)),
        }
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        rpc: Rpc,
        request: &Req,
        retry: Retry,
    ) -> Result<Resp, MetaClientError> {
        let payload = codec::encode(request)?;
        let deadline = Instant::now() + self.inner.call_deadline;
        let mut backoff = BACKOFF_MIN;
        let mut last_error = String::from("no endpoint configured");
        loop {
            let target = match self.leader_hint() {
                Some(leader) => leader,
                None => {
                    // Rotate through the endpoints across calls, not from
                    // the first one in each call: a black-holed voter
                    // (packets dropped, so every attempt there runs to its
                    // timeout) must not be every call's first choice.
                    match self.next_endpoint() {
                        Some(addr) => addr,
                        None => return Err(MetaClientError::Unavailable(last_error)),
                    }
                }
            };
            let timeout = match (rpc, retry) {
                (Rpc::Propose, Retry::Idempotent) => self
                    .inner
                    .attempt_timeout
                    .min(LEADER_ATTEMPT_SHORT + Duration::from_secs((payload.len() >> 20) as u64)),
                _ => self.inner.attempt_timeout,
            };
            let outcome = self
                .attempt_within(&target, rpc, payload.clone(), timeout)
                .await;
            if let Err(status) = &outcome
                && (status.code() == tonic::Code::DeadlineExceeded || never_connected(status))
            {
                self.avoid(&target);
            }
            match outcome {
                Ok(bytes) => {
                    self.set_leader_hint(Some(target));
                    return Ok(codec::decode(&bytes)?);
                }
                Err(status) => {
                    let leader = status
                        .metadata()
                        .get(LEADER_ADDR_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let not_proposed = status.metadata().get(NOT_PROPOSED_HEADER).is_some()
                        || never_connected(&status);
                    match status.code() {
                        tonic::Code::Unavailable if !not_proposed && retry == Retry::Once => {
                            // The connection broke after the request may
                            // have been sent: the outcome is unknown.
                            self.set_leader_hint(None);
                            return Err(MetaClientError::Unknown(format!(
                                "{target}: {}",
                                status.message()
                            )));
                        }
                        tonic::Code::Unavailable => {
                            // Refused before proposing (not leader, no
                            // leader known, or not reachable): safe to retry.
                            last_error = format!("{target}: {}", status.message());
                            if leader.as_deref() == Some(target.as_str()) {
                                self.set_leader_hint(None);
                            } else {
                                self.set_leader_hint(leader.clone());
                            }
                            if leader.is_some() {
                                // Go straight to the named leader.
                                if Instant::now() >= deadline {
                                    return Err(MetaClientError::Unavailable(last_error));
                                }
                                continue;
                            }
                        }
                        tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                        | tonic::Code::Unknown
                        | tonic::Code::Aborted => {
                            // Sent, answer lost: the outcome is unknown.
                            self.set_leader_hint(None);
                            last_error = format!("{target}: {}", status.message());
                            if retry == Retry::Once {
                                return Err(MetaClientError::Unknown(last_error));
                            }
                        }
                        _ => return Err(classify_final(status)),
                    }
                    if Instant::now() + backoff >= deadline {
                        return Err(MetaClientError::Unavailable(last_error));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    async fn attempt(
        &self,
        addr: &str,
        rpc: Rpc,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, tonic::Status> {
        self.attempt_within(addr, rpc, payload, self.inner.attempt_timeout)
            .await
    }

    async fn attempt_within(
        &self,
        addr: &str,
        rpc: Rpc,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, tonic::Status> {
        let channel = self.channel(addr)?;
        let mut client = GrpcMetaClient::new(channel)
            .max_decoding_message_size(codec::PAYLOAD_BYTES_MAX as usize)
            .max_encoding_message_size(codec::PAYLOAD_BYTES_MAX as usize);
        let mut request = tonic::Request::new(MetaPayload {
            bincode: payload.into(),
        });
        request.set_timeout(timeout);
        let fut = async {
            match rpc {
                Rpc::Propose => client.propose(request).await,
                Rpc::Query => client.query(request).await,
                Rpc::Admin => client.admin(request).await,
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(resp)) => Ok(resp.into_inner().bincode.to_vec()),
            Ok(Err(status)) => Err(connect_errors_are_unavailable(status)),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "no answer within {timeout:?}"
            ))),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, tonic::Status> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .map_err(|_| tonic::Status::internal("meta client lock poisoned"))?;
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let endpoint = self
            .inner
            .transport
            .endpoint(addr)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let ch = endpoint.connect_lazy();
        channels.insert(addr.to_owned(), ch.clone());
        Ok(ch)
    }

    /// The next endpoint in turn, skipping those that just timed out or
    /// refused while others remain.
    fn next_endpoint(&self) -> Option<String> {
        let n = self.inner.endpoints.len();
        if n == 0 {
            return None;
        }
        let now = Instant::now();
        let avoided = |addr: &str| {
            self.inner
                .avoid
                .lock()
                .ok()
                .and_then(|m| m.get(addr).copied())
                .is_some_and(|until| until > now)
        };
        let mut first = None;
        for _ in 0..n {
            let i = self
                .inner
                .rotor
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let addr = &self.inner.endpoints[i % n];
            if !avoided(addr) {
                return Some(addr.clone());
            }
            first.get_or_insert_with(|| addr.clone());
        }
        first
    }

    fn avoid(&self, addr: &str) {
        if let Ok(mut m) = self.inner.avoid.lock() {
            m.insert(addr.to_owned(), Instant::now() + AVOID_FOR);
        }
    }

    fn leader_hint(&self) -> Option<String> {
        self.inner.leader.lock().ok().and_then(|g| g.clone())
    }

    fn set_leader_hint(&self, leader: Option<String>) {
        if let Ok(mut g) = self.inner.leader.lock() {
            *g = leader;
        }
    }
}

/// A connection that was never made is a retryable UNAVAILABLE, whatever
/// code the transport chose.
fn connect_errors_are_unavailable(status: tonic::Status) -> tonic::Status {
    let msg = status.message().to_ascii_lowercase();
    if status.code() == tonic::Code::Unknown
        && (msg.contains("transport error") || msg.contains("connection refused"))
    {
        return tonic::Status::unavailable(status.message().to_owned());
    }
    status
}

/// True when the transport failed before a connection existed, so the
/// request cannot have reached any server.
fn never_connected(status: &tonic::Status) -> bool {
    use std::error::Error;
    let mut text = status.message().to_ascii_lowercase();
    let mut source = status.source();
    while let Some(e) = source {
        text.push_str(&e.to_string().to_ascii_lowercase());
        source = e.source();
    }
    text.contains("tcp connect error")
        || text.contains("connection refused")
        || text.contains("error trying to connect")
}

fn classify_final(status: tonic::Status) -> MetaClientError {
    match status.code() {
        tonic::Code::InvalidArgument => MetaClientError::InvalidArgument(status.message().into()),
        tonic::Code::FailedPrecondition => {
            MetaClientError::FailedPrecondition(status.message().into())
        }
        tonic::Code::Unavailable => MetaClientError::Unavailable(status.message().into()),
        tonic::Code::DeadlineExceeded => MetaClientError::Unknown(status.message().into()),
        _ => MetaClientError::Status(status),
    }
}

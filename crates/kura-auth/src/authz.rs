//! Who may call what, decided from the peer certificate, not from the
//! network: any certificate the CA signed passes the handshake, so every
//! internal service checks the role its caller's certificate names.
//!
//! | service | callers |
//! |---|---|
//! | `Raft` | voters (`meta`) |
//! | `Meta` | gateways, storage nodes, voters |
//! | `Shards` | gateways, storage nodes; voters `NodeStatus` only |
//! | `Archive`, `Admin`, `Audit` | clients, by role (checked by the gateway) |

use std::task::{Context, Poll};

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::identity::{NodeRole, NodeRoles, Principal};

/// The identity the caller's certificate proves: `Ok(None)` when the
/// connection carries no client certificate (plaintext, or a TLS client
/// without one).
pub fn peer_principal<T>(req: &Request<T>) -> Result<Option<Principal>, Status> {
    let Some(certs) = req.peer_certs() else {
        return Ok(None);
    };
    let Some(first) = certs.first() else {
        return Ok(None);
    };
    match crate::peer::parse_der(first.as_ref()) {
        Ok(info) => match info.principal {
            Some(p) => Ok(Some(p)),
            None => Err(Status::permission_denied(
                "the client certificate names no Kura identity (kura:// SAN URI)",
            )),
        },
        Err(e) => Err(Status::permission_denied(format!(
            "client certificate: {e}"
        ))),
    }
}

/// The peer's address, for audit entries and logs.
pub fn peer_addr<T>(req: &Request<T>) -> String {
    req.remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The gRPC path of a call (`/kura.v1.internal.Shards/NodeStatus`), put
/// into the request's extensions by [`PathLayer`]: tonic's interceptors do
/// not see the URI.
#[derive(Clone, Debug)]
pub struct RpcPath(pub String);

/// A server layer that records each call's [`RpcPath`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PathLayer;

impl<S> tower::Layer<S> for PathLayer {
    type Service = PathService<S>;
    fn layer(&self, inner: S) -> PathService<S> {
        PathService(inner)
    }
}

#[derive(Clone, Debug)]
pub struct PathService<S>(S);

impl<S, B> tower::Service<http::Request<B>> for PathService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = RpcPath(req.uri().path().to_string());
        req.extensions_mut().insert(path);
        self.0.call(req)
    }
}

/// The method name of a call (`NodeStatus`), if [`PathLayer`] recorded it.
pub fn rpc_method<T>(req: &Request<T>) -> &str {
    req.extensions()
        .get::<RpcPath>()
        .and_then(|p| p.0.rsplit('/').next())
        .unwrap_or("")
}

/// A call an internal service refused, for the audit trail.
#[derive(Clone, Debug)]
pub struct Refusal {
    /// `Raft.Vote`, `Shards.PutShard`, …
    pub action: String,
    /// The identity the caller proved (`node/4 (store)`), or `anonymous`.
    pub who: String,
    pub peer: String,
    pub code: tonic::Code,
}

/// Where a guard reports refusals (the process's audit sink).
pub type RefusalSink = std::sync::Arc<dyn Fn(Refusal) + Send + Sync>;

/// An interceptor that admits only nodes with one of `allowed` roles and
/// puts their [`Principal`] into the request's extensions. With `enforce`
/// off (a plaintext cluster) it admits everyone.
#[derive(Clone)]
pub struct NodeGuard {
    service: &'static str,
    allowed: NodeRoles,
    /// Methods also open to more roles (needs [`PathLayer`] on the server).
    extra: Option<(&'static str, NodeRoles)>,
    enforce: bool,
    sink: Option<RefusalSink>,
}

impl NodeGuard {
    pub fn new(service: &'static str, allowed: &[NodeRole], enforce: bool) -> Self {
        Self {
            service,
            allowed: NodeRoles::of(allowed),
            extra: None,
            enforce,
            sink: None,
        }
    }

    /// Reports every refusal to `sink` (the audit trail).
    pub fn with_sink(mut self, sink: RefusalSink) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Raft: voters only.
    pub fn raft(enforce: bool) -> Self {
        Self::new("Raft", &[NodeRole::Meta], enforce)
    }

    /// The metadata cluster's client API.
    pub fn meta(enforce: bool) -> Self {
        Self::new(
            "Meta",
            &[NodeRole::Gateway, NodeRole::Store, NodeRole::Meta],
            enforce,
        )
    }

    /// A storage node's Shards service. `NodeStatus` (capacity and usage,
    /// no shard) also answers voters: the voter that forms a cluster asks
    /// every storage node's capacity for the first map.
    pub fn shards(enforce: bool) -> Self {
        let mut g = Self::new("Shards", &[NodeRole::Gateway, NodeRole::Store], enforce);
        g.extra = Some(("NodeStatus", NodeRoles::of(&[NodeRole::Meta])));
        g
    }

    fn admits(&self, roles: NodeRoles, method: &str) -> bool {
        roles.intersects(self.allowed)
            || self
                .extra
                .is_some_and(|(m, extra)| m == method && roles.intersects(extra))
    }

    /// Checks one call's peer.
    pub fn check<T>(&self, req: &Request<T>) -> Result<Option<Principal>, Status> {
        if !self.enforce {
            return Ok(None);
        }
        let refuse = |status: Status, who: &str| {
            if let Some(sink) = &self.sink {
                sink(Refusal {
                    action: format!("{}.{}", self.service, rpc_method(req)),
                    who: who.to_string(),
                    peer: peer_addr(req),
                    code: status.code(),
                });
            }
            tracing::warn!(
                target: "kura::access",
                service = self.service,
                method = rpc_method(req),
                caller = who,
                peer = %peer_addr(req),
                code = ?status.code(),
                "call refused"
            );
            status
        };
        match peer_principal(req) {
            Ok(Some(p @ Principal::Node { roles, .. })) if self.admits(roles, rpc_method(req)) => {
                Ok(Some(p))
            }
            Ok(Some(p)) => {
                let who = p.to_string();
                Err(refuse(
                    Status::permission_denied(format!(
                        "{who} may not call {}: it takes nodes with role {}",
                        self.service, self.allowed
                    )),
                    &who,
                ))
            }
            Ok(None) => Err(refuse(
                Status::unauthenticated(format!(
                    "{} takes only callers with a node certificate from the cluster's CA",
                    self.service
                )),
                "anonymous",
            )),
            Err(status) => Err(refuse(status, "anonymous (unreadable certificate)")),
        }
    }
}

impl std::fmt::Debug for NodeGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeGuard")
            .field("service", &self.service)
            .field("allowed", &self.allowed)
            .field("enforce", &self.enforce)
            .field("sink", &self.sink.is_some())
            .finish()
    }
}

impl Interceptor for NodeGuard {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(p) = self.check(&req)? {
            req.extensions_mut().insert(p);
        }
        Ok(req)
    }
}

//! Who is calling the public API, and whether they may.
//!
//! A caller proves an identity with a client certificate from the
//! cluster's CA (`kura://client/TENANT/ROLES`) or with a bearer token
//! (`authorization: Bearer kura_…`, see [`crate::tokens`]). The identity is
//! one tenant and its roles; the tenant of every call comes from it, so a
//! request that leaves its tenant empty acts in the caller's tenant and one
//! naming another tenant is refused before anything is looked up. An
//! instance of another tenant is therefore never found: the answer is the
//! same NOT_FOUND as for a UID stored nowhere.
//!
//! | role | calls |
//! |---|---|
//! | writer | Store |
//! | reader | Retrieve, Stat, ListStudy, StudyProtection |
//! | admin | the Admin API (tokens of its own tenant) |
//! | auditor | the Audit API |
//!
//! Every call, allowed or refused, leaves an audit entry ([`audit_record`]).

use kura_auth::{ClientRole, Principal};
use kura_proto::meta::AuditRecord;
use tonic::Request;

use crate::error::GatewayError;
use crate::tokens::TokenCache;

/// The caller of one public call.
#[derive(Clone, Debug)]
pub struct Caller {
    /// `None` on a plaintext gateway (`insecure_plaintext`), where every
    /// caller is trusted, and for a caller refused before it proved one.
    pub principal: Option<Principal>,
    /// The peer's address.
    pub peer: String,
}

impl Caller {
    /// How logs and audit entries name the caller.
    pub fn who(&self) -> String {
        match &self.principal {
            Some(p) => p.to_string(),
            None => "anonymous".into(),
        }
    }

    /// The credential's tenant, if it has one.
    pub fn own_tenant(&self) -> Option<&str> {
        self.principal.as_ref().and_then(Principal::tenant)
    }

    /// The tenant this call acts in: the credential's; `requested` may
    /// repeat it or be empty. On a plaintext gateway, `requested` itself.
    /// A malformed `requested` is INVALID_ARGUMENT for `field` first.
    pub fn tenant(&self, field: &'static str, requested: &str) -> Result<String, GatewayError> {
        if !requested.is_empty() {
            kura_auth::validate_tenant(requested)
                .map_err(|e| GatewayError::invalid(field, "BAD_TENANT", e))?;
        }
        match &self.principal {
            None => Ok(requested.to_string()),
            Some(p) => {
                let own = p.tenant().ok_or_else(|| {
                    GatewayError::PermissionDenied(format!("{p} is not a client"))
                })?;
                if requested.is_empty() || requested == own {
                    Ok(own.to_string())
                } else {
                    Err(GatewayError::PermissionDenied(format!(
                        "the credential is for tenant {own:?}; this request names tenant {requested:?}"
                    )))
                }
            }
        }
    }
}

/// The bearer token of a request, if it carries an `authorization` header.
fn bearer<T>(req: &Request<T>) -> Option<Result<String, GatewayError>> {
    let v = req.metadata().get("authorization")?;
    let text = match v.to_str() {
        Ok(t) => t.trim(),
        Err(_) => {
            return Some(Err(GatewayError::Unauthenticated(
                "the authorization header is not text".into(),
            )));
        }
    };
    Some(match text.strip_prefix("Bearer ") {
        Some(secret) if !secret.trim().is_empty() => Ok(secret.trim().to_string()),
        _ => Err(GatewayError::Unauthenticated(
            "the authorization header must be `Bearer <token>`".into(),
        )),
    })
}

/// Who the caller is, without deciding what they may do: a bearer token
/// if the request carries one, else the client certificate. With
/// `enforce` off (a plaintext gateway) everyone passes as anonymous.
pub fn identify<T>(
    req: &Request<T>,
    enforce: bool,
    tokens: &TokenCache,
) -> (Caller, Result<(), GatewayError>) {
    let peer = kura_auth::peer_addr(req);
    let anonymous = |r| {
        (
            Caller {
                principal: None,
                peer: peer.clone(),
            },
            r,
        )
    };
    if !enforce {
        return anonymous(Ok(()));
    }
    let principal = match bearer(req) {
        Some(Ok(secret)) => match tokens.principal(&secret) {
            Some(p) => Some(p),
            None => {
                return anonymous(Err(GatewayError::Unauthenticated(
                    "the bearer token is unknown or revoked".into(),
                )));
            }
        },
        Some(Err(e)) => return anonymous(Err(e)),
        None => match kura_auth::peer_principal(req) {
            Ok(p) => p,
            Err(s) => {
                return anonymous(Err(GatewayError::PermissionDenied(s.message().to_string())));
            }
        },
    };
    match principal {
        None => anonymous(Err(GatewayError::Unauthenticated(
            "this call needs a client certificate from the cluster's CA or a bearer token \
             (kura certs client, kura admin token create)"
                .into(),
        ))),
        Some(p) => (
            Caller {
                principal: Some(p),
                peer: peer.clone(),
            },
            Ok(()),
        ),
    }
}

/// Authenticates the caller of `rpc` and checks it has one of `roles`.
/// Answers the caller (anonymous if it proved nothing) and the verdict;
/// a refusal is logged, and the caller records it in the audit trail.
pub fn authorize<T>(
    req: &Request<T>,
    enforce: bool,
    tokens: &TokenCache,
    rpc: &'static str,
    roles: &[ClientRole],
) -> (Caller, Result<(), GatewayError>) {
    let (caller, identified) = identify(req, enforce, tokens);
    let verdict = identified.and_then(|()| check_roles(&caller, rpc, roles));
    if let Err(e) = &verdict {
        tracing::warn!(target: "kura::access", rpc, caller = %caller.who(), peer = %caller.peer, code = ?e.code(), "call refused");
    }
    (caller, verdict)
}

/// Whether an identified caller holds one of `roles` for `rpc` (an
/// anonymous caller, on a plaintext gateway, is trusted).
pub fn check_roles(caller: &Caller, rpc: &str, roles: &[ClientRole]) -> Result<(), GatewayError> {
    match &caller.principal {
        None => Ok(()),
        Some(Principal::Client { roles: has, .. }) if roles.iter().any(|r| has.contains(*r)) => {
            Ok(())
        }
        Some(p) => {
            let has = match p {
                Principal::Client { roles, .. } => format!("role {roles}"),
                Principal::Node { .. } => "a node certificate".into(),
            };
            let needs: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            Err(GatewayError::PermissionDenied(format!(
                "{p} has {has}; {rpc} needs role {}",
                needs.join(" or ")
            )))
        }
    }
}

/// How one gateway authenticates and audits: shared by the Archive
/// handlers and the Admin and Audit guards.
#[derive(Clone)]
pub struct Gate {
    /// Check credentials (a TLS gateway); off, everyone is trusted.
    pub enforce: bool,
    pub tokens: std::sync::Arc<TokenCache>,
    pub audit: kura_proto::audit::AuditSink,
    /// Seals the Patient ID of every audit entry.
    pub keys: std::sync::Arc<kura_seal::Keyring>,
}

impl Gate {
    /// [`authorize`] with this gateway's settings.
    pub fn authorize<T>(
        &self,
        req: &Request<T>,
        rpc: &'static str,
        roles: &[ClientRole],
    ) -> (Caller, Result<(), GatewayError>) {
        authorize(req, self.enforce, &self.tokens, rpc, roles)
    }

    /// Records a finished call and waits for its commit.
    pub async fn record(&self, caller: &Caller, action: &str, touched: Touched, code: tonic::Code) {
        if !self
            .audit
            .record(audit_record(&self.keys, caller, action, touched, code))
            .await
        {
            tracing::error!(action, "the audit entry of this call was not committed");
        }
    }

    /// Queues a call's record without waiting for its commit (refusals
    /// under load, which must answer at once).
    pub fn record_later(&self, caller: &Caller, action: &str, touched: Touched, code: tonic::Code) {
        self.audit
            .record_later(audit_record(&self.keys, caller, action, touched, code));
    }

    /// Queues a read's audit record now; the answer waits at most `wait`
    /// for its commit (reads must not wait for an election: an entry not
    /// committed by then stays queued and is committed once a leader is
    /// back). A Retrieve streams its bytes meanwhile and awaits this
    /// before its last chunk.
    pub fn queue_read(
        &self,
        caller: &Caller,
        action: &str,
        touched: Touched,
        code: tonic::Code,
        wait: std::time::Duration,
    ) -> impl std::future::Future<Output = ()> + Send + use<> {
        let committed = self.audit.queue(
            audit_record(&self.keys, caller, action, touched, code),
            wait,
        );
        let action = action.to_string();
        async move {
            if !committed.await {
                metrics::counter!("kura_audit_deferred_total").increment(1);
                tracing::debug!(
                    action,
                    "audit entry not committed yet; answering, it stays queued"
                );
            }
        }
    }
}

/// The gRPC code a call answered with.
pub fn code_of<T>(r: &Result<T, GatewayError>) -> tonic::Code {
    match r {
        Ok(_) => tonic::Code::Ok,
        Err(e) => e.code(),
    }
}

/// What one call leaves in the audit trail.
#[derive(Clone, Debug, Default)]
pub struct Touched {
    pub tenant: String,
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub patient_id: String,
}

/// The context an audit entry's Patient ID is sealed in: its tenant.
pub fn audit_patient_context(tenant: &str) -> String {
    format!("audit patient id/{tenant}")
}

/// The audit record of a finished call. The Patient ID is sealed under
/// the current cluster key (the trail lives on the voters' disks); the
/// Audit service opens it for auditors.
pub fn audit_record(
    keys: &kura_seal::Keyring,
    caller: &Caller,
    action: &str,
    touched: Touched,
    code: tonic::Code,
) -> AuditRecord {
    let tenant = if touched.tenant.is_empty() {
        caller.own_tenant().unwrap_or_default().to_string()
    } else {
        touched.tenant
    };
    let patient_id = keys
        .seal_field(
            keys.current(),
            &audit_patient_context(&tenant),
            &touched.patient_id,
        )
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, action, "cannot seal an audit entry's Patient ID; left out");
            String::new()
        });
    AuditRecord {
        time_unix_ms: 0,
        who: caller.who(),
        tenant,
        action: action.to_string(),
        sop_instance_uid: touched.sop_instance_uid,
        study_instance_uid: touched.study_instance_uid,
        patient_id,
        peer: caller.peer.clone(),
        outcome: kura_proto::code_name(code).to_string(),
        recorder: String::new(),
    }
}

/// Admits one of `roles` to a whole service (Admin: admins; Audit:
/// auditors and admins); a refusal is audited here, since the call never
/// reaches a handler. The admitted [`Caller`] rides in the request.
#[derive(Clone)]
pub struct RoleGuard {
    pub service: &'static str,
    pub roles: &'static [ClientRole],
    pub gate: Gate,
}

impl tonic::service::Interceptor for RoleGuard {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, tonic::Status> {
        let (caller, verdict) = self.gate.authorize(&req, self.service, self.roles);
        if let Err(e) = verdict {
            let action = format!("{}.{}", self.service, kura_auth::authz::rpc_method(&req));
            self.gate.audit.record_later(audit_record(
                &self.gate.keys,
                &caller,
                &action,
                Touched::default(),
                e.code(),
            ));
            return Err(e.into_status());
        }
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}

/// The caller a [`RoleGuard`] admitted (anonymous on a plaintext gateway).
pub fn admitted<T>(request: &Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(|| Caller {
            principal: None,
            peer: kura_auth::peer_addr(request),
        })
}

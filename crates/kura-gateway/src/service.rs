//! The `kura.v1.Archive` service: request checks, metrics and the status
//! mapping around [`crate::ingest`] and [`crate::retrieve`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use kura_placement::Manifest;
use kura_proto::meta::{Consistency, LIST_PAGE_MAX, Query};
use kura_proto::v1::archive_server::Archive;
use kura_proto::v1::instance_protection::State as InstanceState;
use kura_proto::v1::{
    DeleteRequest, DeleteResponse, DeleteStudyRequest, InstanceInfo, InstanceProtection,
    ListStudyRequest, RetrieveRequest, RetrieveResponse, StatRequest, StoreRequest, StoreResponse,
    StudyProtectionRequest, StudyProtectionResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::auth::{Caller, Touched, code_of};
use crate::cluster::meta_error;
use crate::error::GatewayError;
use crate::info::instance_info;
use crate::state::Inner;
use kura_auth::ClientRole;

/// The Archive service of one gateway.
#[derive(Clone)]
pub struct ArchiveService {
    pub(crate) inner: Arc<Inner>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Records a finished call's count and duration.
fn observe<T>(rpc: &'static str, started: Instant, r: &Result<T, GatewayError>) {
    let code = match r {
        Ok(_) => "OK".to_string(),
        Err(e) => format!("{:?}", e.code()),
    };
    metrics::counter!("kura_gateway_requests_total", "rpc" => rpc, "code" => code).increment(1);
    metrics::histogram!("kura_gateway_request_duration_seconds", "rpc" => rpc)
        .record(started.elapsed().as_secs_f64());
    if let Err(e) = r {
        match e {
            GatewayError::Internal(_) | GatewayError::DataLoss(_) => {
                tracing::error!(rpc, error = %e, "request failed")
            }
            GatewayError::Unavailable(_) | GatewayError::DeadlineExceeded(_) => {
                tracing::warn!(rpc, error = %e, "request failed")
            }
            _ => tracing::debug!(rpc, error = %e, "request refused"),
        }
    }
}

pub(crate) fn check_uid(field: &'static str, uid: &str) -> Result<(), GatewayError> {
    kura_dicom::validate_uid(uid).map_err(|p| {
        GatewayError::invalid(
            field,
            "BAD_UID",
            format!("{field} is not a valid DICOM UID: {p}"),
        )
    })
}

pub(crate) fn check_tenant(tenant: &str) -> Result<(), GatewayError> {
    kura_proto::meta::validate_tenant(tenant)
        .map_err(|e| GatewayError::invalid("tenant", "BAD_TENANT", e))
}

/// The tenant a call acts in, once its caller is authorised.
fn resolve(
    caller: &Caller,
    verdict: Result<(), GatewayError>,
    requested: &str,
) -> Result<String, GatewayError> {
    verdict?;
    caller.tenant("tenant", requested)
}

/// The Patient ID sealed in `m`, or empty when this gateway cannot open
/// it (the call itself then fails and says why).
fn patient_of(keys: &kura_seal::Keyring, m: &Manifest) -> String {
    crate::seal::open(keys, m)
        .map(|s| s.patient_id)
        .unwrap_or_default()
}

/// The public description of `m`, its sealed fields opened.
fn info_of(keys: &kura_seal::Keyring, m: &Manifest) -> Result<InstanceInfo, GatewayError> {
    Ok(instance_info(m, &crate::seal::open(keys, m)?))
}

/// What a call on one instance touched, for its audit entry.
fn touched_instance(
    keys: &kura_seal::Keyring,
    tenant: &str,
    uid: &str,
    m: Option<&Manifest>,
) -> Touched {
    match m {
        Some(m) => Touched {
            tenant: m.tenant.clone(),
            sop_instance_uid: m.sop_instance_uid.clone(),
            study_instance_uid: m.study_instance_uid.clone(),
            patient_id: patient_of(keys, m),
        },
        None => Touched {
            tenant: tenant.to_string(),
            sop_instance_uid: uid.to_string(),
            ..Touched::default()
        },
    }
}

impl ArchiveService {
    /// Admits one stream of `caller` against the stream limits, or answers
    /// RESOURCE_EXHAUSTED at once (audited without waiting for the commit).
    fn admit(
        &self,
        caller: &Caller,
        rpc: &'static str,
        started: Instant,
    ) -> Result<crate::limits::Admitted, Status> {
        let r = self.inner.admission.admit(&caller.who(), rpc);
        if let Err(e) = &r {
            self.inner
                .gate
                .record_later(caller, rpc, Touched::default(), e.code());
            observe(rpc, started, &r);
        }
        r.map_err(GatewayError::into_status)
    }

    /// Authorises a reader's call on one instance, finds its manifest in
    /// the caller's tenant and records the call in the audit trail.
    async fn read_manifest<T>(
        &self,
        request: &Request<T>,
        rpc: &'static str,
        tenant: &str,
        uid: &str,
        span: &tracing::Span,
    ) -> Result<Arc<Manifest>, GatewayError> {
        let authorized = self
            .inner
            .gate
            .authorize(request, rpc, &[ClientRole::Reader]);
        let (r, audited) = self
            .read_manifest_audit_queued(authorized, rpc, tenant, uid, span)
            .await;
        audited.await;
        r
    }

    /// [`Self::read_manifest`] for a caller already authorized (`authorized`:
    /// the caller and the verdict), with the audit entry queued but not yet
    /// waited for: the caller awaits the future before it answers.
    async fn read_manifest_audit_queued(
        &self,
        authorized: (Caller, Result<(), GatewayError>),
        rpc: &'static str,
        tenant: &str,
        uid: &str,
        span: &tracing::Span,
    ) -> (
        Result<Arc<Manifest>, GatewayError>,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (caller, verdict) = authorized;
        let r = async {
            let tenant = resolve(&caller, verdict, tenant)?;
            self.manifest(&tenant, uid).await
        }
        .instrument(span.clone())
        .await;
        let own = caller.own_tenant().unwrap_or(tenant).to_string();
        let audited = self.inner.gate.queue_read(
            &caller,
            rpc,
            touched_instance(&self.inner.config.keys, &own, uid, r.as_deref().ok()),
            code_of(&r),
            self.inner.config.read_audit_wait,
        );
        (r, audited)
    }

    /// The manifest of `uid` in `tenant`, for a read: from any voter's
    /// applied state first (no leader, so no election, in its path), and
    /// only when that voter does not have it (a store it has not applied
    /// yet) or none answers, from the leader. Why a stale manifest is safe
    /// to read from: ARCHITECTURE.md, "Reads without the leader".
    async fn manifest(&self, tenant: &str, uid: &str) -> Result<Arc<Manifest>, GatewayError> {
        check_tenant(tenant)?;
        check_uid("sop_instance_uid", uid)?;
        if let Some(m) = self.inner.manifests.get(tenant, uid) {
            return Ok(m);
        }
        let found = self.manifest_uncached(tenant, uid).await?;
        let m = Arc::new(found);
        self.inner.manifests.put(Arc::clone(&m));
        Ok(m)
    }

    async fn manifest_uncached(&self, tenant: &str, uid: &str) -> Result<Manifest, GatewayError> {
        match crate::manifests::from_any_voter(
            &self.inner.cluster,
            self.inner.config.stale_read_attempt,
            tenant,
            uid,
        )
        .await
        {
            Ok(Some(m)) => return Ok(m),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "no voter answered a stale manifest read"),
        }
        crate::manifests::from_leader(&self.inner.cluster, tenant, uid)
            .await?
            .ok_or_else(|| not_found_instance(tenant, uid))
    }

    /// Records a finished call in the audit trail and the metrics, and
    /// answers it.
    async fn answer<T>(
        &self,
        caller: &Caller,
        rpc: &'static str,
        touched: Touched,
        started: Instant,
        r: Result<T, GatewayError>,
    ) -> Result<Response<T>, Status> {
        self.inner
            .gate
            .record(caller, rpc, touched, code_of(&r))
            .await;
        observe(rpc, started, &r);
        r.map(Response::new).map_err(GatewayError::into_status)
    }

    /// The first page of a study (NOT_FOUND when it has no instance).
    async fn study_page(
        &self,
        req: &ListStudyRequest,
        after: Option<(String, String)>,
    ) -> Result<(Vec<Manifest>, Option<(String, String)>), GatewayError> {
        let answer = self
            .inner
            .cluster
            .meta()
            .query(&Query::ListStudy {
                tenant: req.tenant.clone(),
                study_instance_uid: req.study_instance_uid.clone(),
                series_instance_uid: req.series_instance_uid.clone(),
                after,
                limit: LIST_PAGE_MAX,
                consistency: Consistency::Linearizable,
            })
            .await
            .map_err(meta_error)?;
        Ok(answer.into_study_page()?)
    }
}

/// What a call on one study touched, for its audit entry.
fn study_touched(caller: &Caller, tenant: &str, study: &str) -> Touched {
    Touched {
        tenant: caller.own_tenant().unwrap_or(tenant).to_string(),
        study_instance_uid: study.to_string(),
        ..Touched::default()
    }
}

fn not_found_instance(tenant: &str, uid: &str) -> GatewayError {
    GatewayError::NotFound {
        resource_type: "instance",
        resource_name: uid.to_string(),
        message: format!("no instance {uid} in tenant {tenant}"),
    }
}

/// Most instances a StudyProtection answer names one by one.
const ATTENTION_MAX: usize = 1000;

#[tonic::async_trait]
impl Archive for ArchiveService {
    async fn store(
        &self,
        request: Request<Streaming<StoreRequest>>,
    ) -> Result<Response<StoreResponse>, Status> {
        let started = Instant::now();
        // Tenant and UID are recorded by ingest once the header and the
        // DICOM identity have arrived.
        let span = tracing::info_span!(
            "Store",
            tenant = tracing::field::Empty,
            sop_instance_uid = tracing::field::Empty
        );
        let (caller, verdict) = self
            .inner
            .gate
            .authorize(&request, "Store", &[ClientRole::Writer]);
        let _admitted = match self.admit(&caller, "Store", started) {
            Ok(a) => a,
            Err(status) => return Err(status),
        };
        let r = match verdict {
            Ok(()) => {
                crate::ingest::store(
                    Arc::clone(&self.inner),
                    caller.clone(),
                    Box::pin(request.into_inner()),
                    None,
                )
                .instrument(span.clone())
                .await
            }
            Err(e) => Err(e),
        };
        let touched = match r.as_ref().ok().and_then(|resp| resp.info.as_ref()) {
            Some(i) => Touched {
                tenant: i.tenant.clone(),
                sop_instance_uid: i.sop_instance_uid.clone(),
                study_instance_uid: i.study_instance_uid.clone(),
                patient_id: i.patient_id.clone(),
            },
            None => Touched::default(),
        };
        self.inner
            .gate
            .record(&caller, "Store", touched, code_of(&r))
            .await;
        let _entered = span.enter();
        observe("Store", started, &r);
        r.map(Response::new).map_err(GatewayError::into_status)
    }

    type RetrieveStream = BoxStream<RetrieveResponse>;

    async fn retrieve(
        &self,
        request: Request<RetrieveRequest>,
    ) -> Result<Response<Self::RetrieveStream>, Status> {
        let started = Instant::now();
        let authorized = self
            .inner
            .gate
            .authorize(&request, "Retrieve", &[ClientRole::Reader]);
        let admitted = self.admit(&authorized.0, "Retrieve", started)?;
        let req = request.get_ref();
        let span = tracing::info_span!("Retrieve", tenant = %req.tenant, sop_instance_uid = %req.sop_instance_uid);
        // The audit entry commits while the bytes are read and streamed;
        // the last chunk waits for it (as a refusal's answer does).
        let (r, audited) = self
            .read_manifest_audit_queued(
                authorized,
                "Retrieve",
                &req.tenant,
                &req.sop_instance_uid,
                &span,
            )
            .await;
        {
            let _entered = span.enter();
            observe("Retrieve", started, &r);
        }
        let manifest = match r {
            Ok(m) => m,
            Err(e) => {
                audited.await;
                return Err(e.into_status());
            }
        };
        let (tx, rx) = mpsc::channel(4);
        let inner = Arc::clone(&self.inner);
        tokio::spawn(
            async move {
                crate::retrieve::stream(inner, manifest, tx, audited).await;
                drop(admitted);
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<InstanceInfo>, Status> {
        let started = Instant::now();
        let req = request.get_ref();
        let span = tracing::info_span!("Stat", tenant = %req.tenant, sop_instance_uid = %req.sop_instance_uid);
        let r = match self
            .read_manifest(&request, "Stat", &req.tenant, &req.sop_instance_uid, &span)
            .await
        {
            Ok(m) => match info_of(&self.inner.config.keys, &m) {
                Ok(info) => crate::delete::policies(&self.inner, &m)
                    .await
                    .map(|(until, hold)| InstanceInfo {
                        retained_until_unix_ms: until,
                        legal_hold: hold,
                        ..info
                    }),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let _entered = span.enter();
        observe("Stat", started, &r);
        r.map(Response::new).map_err(GatewayError::into_status)
    }

    type ListStudyStream = BoxStream<InstanceInfo>;

    async fn list_study(
        &self,
        request: Request<ListStudyRequest>,
    ) -> Result<Response<Self::ListStudyStream>, Status> {
        let started = Instant::now();
        let (caller, verdict) =
            self.inner
                .gate
                .authorize(&request, "ListStudy", &[ClientRole::Reader]);
        let admitted = self.admit(&caller, "ListStudy", started)?;
        let mut req = request.into_inner();
        let first = async {
            req.tenant = resolve(&caller, verdict, &req.tenant)?;
            check_tenant(&req.tenant)?;
            check_uid("study_instance_uid", &req.study_instance_uid)?;
            if let Some(series) = &req.series_instance_uid {
                check_uid("series_instance_uid", series)?;
            }
            let (page, next) = self.study_page(&req, None).await?;
            if page.is_empty() {
                return Err(GatewayError::NotFound {
                    resource_type: "study",
                    resource_name: req.study_instance_uid.clone(),
                    message: format!(
                        "no instance of study {}{} in tenant {}",
                        req.study_instance_uid,
                        req.series_instance_uid
                            .as_deref()
                            .map(|s| format!(" series {s}"))
                            .unwrap_or_default(),
                        req.tenant
                    ),
                });
            }
            Ok((page, next))
        }
        .await;
        self.inner
            .gate
            .record(
                &caller,
                "ListStudy",
                Touched {
                    tenant: caller.own_tenant().unwrap_or(&req.tenant).to_string(),
                    study_instance_uid: req.study_instance_uid.clone(),
                    patient_id: first
                        .as_ref()
                        .ok()
                        .and_then(|(page, _)| page.first())
                        .map(|m| patient_of(&self.inner.config.keys, m))
                        .unwrap_or_default(),
                    ..Touched::default()
                },
                code_of(&first),
            )
            .await;
        observe("ListStudy", started, &first);
        let (page, mut next) = first.map_err(GatewayError::into_status)?;
        let (tx, rx) = mpsc::channel(64);
        let svc = self.clone();
        tokio::spawn(async move {
            let _admitted = admitted;
            let keys = &svc.inner.config.keys;
            for m in page {
                let info = info_of(keys, &m).map_err(GatewayError::into_status);
                if tx.send(info).await.is_err() {
                    return;
                }
            }
            while let Some(after) = next.take() {
                match svc.study_page(&req, Some(after)).await {
                    Ok((page, more)) => {
                        for m in page {
                            let info = info_of(keys, &m).map_err(GatewayError::into_status);
                            if tx.send(info).await.is_err() {
                                return;
                            }
                        }
                        next = more;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into_status())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn study_protection(
        &self,
        request: Request<StudyProtectionRequest>,
    ) -> Result<Response<StudyProtectionResponse>, Status> {
        let started = Instant::now();
        let (caller, verdict) =
            self.inner
                .gate
                .authorize(&request, "StudyProtection", &[ClientRole::Reader]);
        let mut req = request.into_inner();
        let span = tracing::info_span!("StudyProtection", tenant = %req.tenant, study = %req.study_instance_uid);
        let r = async {
            req.tenant = resolve(&caller, verdict, &req.tenant)?;
            check_tenant(&req.tenant)?;
            check_uid("study_instance_uid", &req.study_instance_uid)?;
            let list = ListStudyRequest {
                tenant: req.tenant.clone(),
                study_instance_uid: req.study_instance_uid.clone(),
                series_instance_uid: None,
            };
            // The map as the leader has it now, not the cached one.
            self.inner.cluster.invalidate().await;
            let state = self.inner.cluster.state().await?;
            let damaged = crate::cluster::damaged_instances(self.inner.cluster.meta()).await?;
            let mut out = StudyProtectionResponse::default();
            let mut critical = std::collections::BTreeSet::new();
            let mut after = None;
            loop {
                let (page, next) = self.study_page(&list, after).await?;
                for m in &page {
                    out.instances += 1;
                    match m.protection {
                        kura_placement::Protection::Full => out.fully_protected += 1,
                        kura_placement::Protection::UnderProtected => out.under_protected += 1,
                    }
                    let bad = damaged
                        .get(&(m.tenant.clone(), m.sop_instance_uid.clone()))
                        .map(|(_, b)| b.as_slice())
                        .unwrap_or(&[]);
                    let verdict = kura_placement::survival(&state.map, m, bad);
                    let (state_code, sites) = match &verdict {
                        kura_placement::Survival::Safe => continue,
                        kura_placement::Survival::AtRisk { critical_sites } => {
                            out.at_risk += 1;
                            critical.extend(critical_sites.iter().cloned());
                            (InstanceState::AtRisk, critical_sites.clone())
                        }
                        kura_placement::Survival::Unreadable { .. } => {
                            out.unreadable += 1;
                            (InstanceState::Unreadable, Vec::new())
                        }
                    };
                    if out.attention.len() < ATTENTION_MAX {
                        out.attention.push(InstanceProtection {
                            sop_instance_uid: m.sop_instance_uid.clone(),
                            state: state_code as i32,
                            why: verdict.why(),
                            critical_sites: sites,
                        });
                    }
                }
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            if out.instances == 0 {
                return Err(GatewayError::NotFound {
                    resource_type: "study",
                    resource_name: req.study_instance_uid.clone(),
                    message: format!(
                        "no instance of study {} in tenant {}",
                        req.study_instance_uid, req.tenant
                    ),
                });
            }
            out.survives_site_loss = critical.is_empty() && out.unreadable == 0;
            out.critical_sites = critical.into_iter().collect();
            Ok(out)
        }
        .instrument(span)
        .await;
        let touched = study_touched(&caller, &req.tenant, &req.study_instance_uid);
        self.answer(&caller, "StudyProtection", touched, started, r)
            .await
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let started = Instant::now();
        let (caller, verdict) = self
            .inner
            .gate
            .authorize(&request, "Delete", &[ClientRole::Admin]);
        let req = request.into_inner();
        let span = tracing::info_span!("Delete", tenant = %req.tenant, sop_instance_uid = %req.sop_instance_uid);
        let mut touched = None;
        let r = async {
            let tenant = resolve(&caller, verdict, &req.tenant)?;
            check_tenant(&tenant)?;
            check_uid("sop_instance_uid", &req.sop_instance_uid)?;
            // The manifest first, for the audit entry (who deleted which
            // patient's instance) and a clear NOT_FOUND.
            let m = crate::manifests::from_leader(&self.inner.cluster, &tenant, &req.sop_instance_uid)
                .await?
                .ok_or_else(|| not_found_instance(&tenant, &req.sop_instance_uid))?;
            touched = Some(touched_instance(
                &self.inner.config.keys,
                &tenant,
                &req.sop_instance_uid,
                Some(&m),
            ));
            let deleted = crate::delete::instances(
                &self.inner,
                &tenant,
                std::slice::from_ref(&req.sop_instance_uid),
            )
            .await?;
            if deleted == 0 {
                return Err(not_found_instance(&tenant, &req.sop_instance_uid));
            }
            tracing::info!(size = m.sealing.plain_size, fingerprint = %m.fingerprint_hex(), "instance deleted");
            Ok(DeleteResponse { deleted })
        }
        .instrument(span)
        .await;
        let own = caller.own_tenant().unwrap_or(&req.tenant).to_string();
        let touched = touched.unwrap_or_else(|| {
            touched_instance(&self.inner.config.keys, &own, &req.sop_instance_uid, None)
        });
        self.answer(&caller, "Delete", touched, started, r).await
    }

    async fn delete_study(
        &self,
        request: Request<DeleteStudyRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let started = Instant::now();
        let (caller, verdict) =
            self.inner
                .gate
                .authorize(&request, "DeleteStudy", &[ClientRole::Admin]);
        let req = request.into_inner();
        let span = tracing::info_span!("DeleteStudy", tenant = %req.tenant, study = %req.study_instance_uid);
        let r = async {
            let tenant = resolve(&caller, verdict, &req.tenant)?;
            check_tenant(&tenant)?;
            check_uid("study_instance_uid", &req.study_instance_uid)?;
            let list = ListStudyRequest {
                tenant: tenant.clone(),
                study_instance_uid: req.study_instance_uid.clone(),
                series_instance_uid: None,
            };
            let mut manifests = Vec::new();
            let mut after = None;
            loop {
                let (page, next) = self.study_page(&list, after).await?;
                manifests.extend(page);
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            if manifests.is_empty() {
                return Err(GatewayError::NotFound {
                    resource_type: "study",
                    resource_name: req.study_instance_uid.clone(),
                    message: format!(
                        "no instance of study {} in tenant {tenant}",
                        req.study_instance_uid
                    ),
                });
            }
            // Refused whole: every instance is checked before any goes.
            crate::delete::check_study(&self.inner, &tenant, &req.study_instance_uid, &manifests)
                .await?;
            let uids: Vec<String> = manifests
                .iter()
                .map(|m| m.sop_instance_uid.clone())
                .collect();
            let deleted = crate::delete::instances(&self.inner, &tenant, &uids).await?;
            tracing::info!(deleted, "study deleted");
            Ok(DeleteResponse { deleted })
        }
        .instrument(span)
        .await;
        let touched = study_touched(&caller, &req.tenant, &req.study_instance_uid);
        self.answer(&caller, "DeleteStudy", touched, started, r)
            .await
    }
}

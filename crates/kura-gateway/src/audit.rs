//! The `kura.v1.Audit` service: queries over the audit trail and its
//! verification on every voter. Auditors and admins only, each within
//! its own tenant (a plaintext cluster answers everything).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use kura_proto::meta::{
    AUDIT_PAGE_MAX, AdminRequest, AdminResponse, AuditEntry, Consistency, Query,
};
use kura_proto::v1 as pb;
use kura_proto::v1::audit_server::Audit;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::{Touched, admitted};
use crate::cluster::meta_error;
use crate::error::GatewayError;
use crate::state::Inner;

/// The Audit API of one gateway.
pub struct AuditService {
    pub(crate) inner: Arc<Inner>,
}

/// Whether `e` passes the query's filters but the Patient ID's (which
/// needs the entry's sealed Patient ID opened: done only for these).
fn matches_but_patient(q: &pb::AuditQueryRequest, tenant: Option<&str>, e: &AuditEntry) -> bool {
    let r = &e.record;
    tenant.is_none_or(|t| t == r.tenant)
        && (q.tenant.is_empty() || q.tenant == r.tenant)
        && (q.since_unix_ms == 0 || r.time_unix_ms >= q.since_unix_ms)
        && (q.until_unix_ms == 0 || r.time_unix_ms <= q.until_unix_ms)
        && (q.uid.is_empty() || q.uid == r.sop_instance_uid || q.uid == r.study_instance_uid)
}

/// Opens the entry's sealed Patient ID in place (auditors read it in the
/// clear; the voters keep it sealed). One sealed under a version this
/// gateway lacks says so.
fn open_patient(keys: &kura_seal::Keyring, e: &mut AuditEntry) {
    let r = &mut e.record;
    if !r.patient_id.starts_with(kura_seal::FIELD_PREFIX) {
        return;
    }
    let context = crate::auth::audit_patient_context(&r.tenant);
    r.patient_id = match keys.open_field(&r.patient_id, &context) {
        Ok(p) => p,
        Err(kura_seal::SealError::UnknownKeyVersion { version, .. }) => {
            format!("(sealed under cluster key version {version}, not in this gateway's key file)")
        }
        Err(e) => format!("(does not open: {e})"),
    };
}

fn entry_proto(e: &AuditEntry) -> pb::AuditEntry {
    let r = &e.record;
    pb::AuditEntry {
        seq: e.seq,
        time_unix_ms: r.time_unix_ms,
        who: r.who.clone(),
        tenant: r.tenant.clone(),
        action: r.action.clone(),
        sop_instance_uid: r.sop_instance_uid.clone(),
        study_instance_uid: r.study_instance_uid.clone(),
        patient_id: r.patient_id.clone(),
        peer: r.peer.clone(),
        outcome: r.outcome.clone(),
        recorder: r.recorder.clone(),
        hash: hex::encode(e.hash),
        prev: hex::encode(e.prev),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Audit for AuditService {
    type QueryStream = BoxStream<pb::AuditEntry>;

    async fn query(
        &self,
        request: Request<pb::AuditQueryRequest>,
    ) -> Result<Response<Self::QueryStream>, Status> {
        let caller = admitted(&request);
        let q = request.into_inner();
        let tenant = caller.own_tenant().map(str::to_string);
        if let Some(own) = &tenant
            && !q.tenant.is_empty()
            && &q.tenant != own
        {
            let e = GatewayError::PermissionDenied(format!(
                "the credential is for tenant {own:?}; this query names tenant {:?}",
                q.tenant
            ));
            self.inner
                .gate
                .record(&caller, "Audit.Query", Touched::default(), e.code())
                .await;
            return Err(e.into_status());
        }
        self.inner
            .gate
            .record(
                &caller,
                "Audit.Query",
                Touched {
                    sop_instance_uid: q.uid.clone(),
                    patient_id: q.patient_id.clone(),
                    ..Touched::default()
                },
                tonic::Code::Ok,
            )
            .await;
        let (tx, rx) = mpsc::channel(256);
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let mut from = q.from_seq;
            let mut sent = 0u64;
            loop {
                let page = inner
                    .cluster
                    .meta()
                    .query(&Query::AuditPage {
                        from,
                        limit: AUDIT_PAGE_MAX,
                        consistency: Consistency::Linearizable,
                    })
                    .await;
                let page = page
                    .map_err(meta_error)
                    .and_then(|p| Ok(p.into_audit_page()?));
                let (entries, next) = match page {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e.into_status())).await;
                        return;
                    }
                };
                let keys = &inner.config.keys;
                for e in entries
                    .into_iter()
                    .filter(|e| matches_but_patient(&q, tenant.as_deref(), e))
                    .map(|mut e| {
                        open_patient(keys, &mut e);
                        e
                    })
                    .filter(|e| q.patient_id.is_empty() || q.patient_id == e.record.patient_id)
                {
                    if tx.send(Ok(entry_proto(&e))).await.is_err() {
                        return;
                    }
                    sent += 1;
                    if q.limit > 0 && sent >= q.limit {
                        return;
                    }
                }
                match next {
                    Some(n) => from = n,
                    None => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn verify(
        &self,
        request: Request<pb::AuditVerifyRequest>,
    ) -> Result<Response<pb::AuditVerifyResponse>, Status> {
        let caller = admitted(&request);
        let meta = self.inner.cluster.meta();
        let mut voters = Vec::new();
        for addr in meta.endpoints() {
            let mut v = pb::AuditVoterVerdict {
                addr: addr.clone(),
                ..Default::default()
            };
            if let Ok(AdminResponse::Status(s)) = meta.admin_at(addr, &AdminRequest::Status).await {
                v.voter = s.id;
            }
            match meta.admin_at(addr, &AdminRequest::VerifyAudit).await {
                Ok(AdminResponse::AuditVerdict(verdict)) => {
                    v.entries = verdict.entries;
                    v.head = hex::encode(verdict.head);
                    match verdict.first_bad {
                        None => v.ok = true,
                        Some((seq, why)) => {
                            v.first_bad_seq = seq;
                            v.reason = why;
                        }
                    }
                }
                Ok(other) => v.error = format!("unexpected answer: {other:?}"),
                Err(e) => v.error = e.to_string(),
            }
            voters.push(v);
        }
        // Copies that each hold but disagree: at least one was rewritten
        // whole (or lags: a voter behind has a prefix of the others').
        let answered: Vec<&pb::AuditVoterVerdict> =
            voters.iter().filter(|v| v.error.is_empty()).collect();
        let longest = answered.iter().map(|v| v.entries).max().unwrap_or(0);
        let heads: std::collections::BTreeSet<&str> = answered
            .iter()
            .filter(|v| v.entries == longest)
            .map(|v| v.head.as_str())
            .collect();
        let ok = !answered.is_empty() && answered.iter().all(|v| v.ok) && heads.len() <= 1;
        let code = if ok {
            tonic::Code::Ok
        } else {
            tonic::Code::DataLoss
        };
        self.inner
            .gate
            .record(&caller, "Audit.Verify", Touched::default(), code)
            .await;
        Ok(Response::new(pb::AuditVerifyResponse { ok, voters }))
    }
}

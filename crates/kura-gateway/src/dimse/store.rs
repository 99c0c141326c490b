//! C-STORE: the data set streams into the same ingest pipeline as the
//! gRPC Store, behind a Part-10 envelope built from the command (SOP class
//! and instance) and the presentation context (transfer syntax).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use kura_auth::ClientRole;
use kura_dicom::dimse::{CommandSet, field, status, tag};
use kura_proto::v1::{StoreRequest, StoreResponse};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::assoc::Shared;
use crate::auth::{Caller, Touched, code_of};
use crate::error::GatewayError;
use crate::ingest::{Expected, IDENTITY_MISMATCH};

/// Chunks queued between the association and ingest.
const QUEUE: usize = 4;

/// An operation whose data set is arriving.
pub(crate) struct Operation {
    pc_id: u8,
    kind: Kind,
}

enum Kind {
    /// Refused before its data set: the data set is read and dropped,
    /// then this answer goes out.
    Refused(CommandSet),
    Store(Box<Store>),
}

struct Store {
    rq: CommandSet,
    caller: Caller,
    shared_gate: crate::auth::Gate,
    tx: Option<mpsc::Sender<Result<StoreRequest, tonic::Status>>>,
    task: JoinHandle<Result<StoreResponse, GatewayError>>,
    chunk_bytes: usize,
    started: Instant,
    _admitted: crate::limits::Admitted,
}

impl Operation {
    pub(crate) fn refused(pc_id: u8, rsp: CommandSet) -> Operation {
        Operation {
            pc_id,
            kind: Kind::Refused(rsp),
        }
    }

    /// Starts a C-STORE: checks the command and the caller, then starts
    /// ingest with the envelope as its first bytes.
    pub(crate) async fn store(
        shared: &Shared,
        caller: &Caller,
        rq: CommandSet,
        pc_id: u8,
        transfer_syntax: &str,
    ) -> Operation {
        let started = Instant::now();
        let gate = &shared.inner.gate;
        // Every refusal before the data set: audited, counted, answered
        // after the data set is read and dropped.
        let refuse = |code: u16, e: GatewayError, touched: Touched| {
            gate.record_later(caller, "DICOM C-STORE", touched, e.code());
            let mut rsp = CommandSet::response_to(&rq, field::C_STORE_RSP, code);
            rsp.set_error_comment(&comment_of(&e));
            observe("C-STORE", code, started);
            Operation::refused(pc_id, rsp)
        };
        let (class, instance) = match (
            rq.text(tag::AFFECTED_SOP_CLASS_UID),
            rq.text(tag::AFFECTED_SOP_INSTANCE_UID),
        ) {
            (Ok(c), Ok(i)) if !c.is_empty() && !i.is_empty() => (c.to_string(), i.to_string()),
            _ => {
                let e = GatewayError::invalid(
                    "command",
                    "DIMSE_NO_AFFECTED_UID",
                    "the command names no Affected SOP Class/Instance UID",
                );
                return refuse(status::CANNOT_UNDERSTAND, e, Touched::default());
            }
        };
        let touched = Touched {
            sop_instance_uid: instance.clone(),
            ..Touched::default()
        };
        if let Err(e) = crate::auth::check_roles(caller, "C-STORE", &[ClientRole::Writer]) {
            return refuse(status::NOT_AUTHORIZED, e, touched);
        }
        let admitted = match shared.inner.admission.admit(&caller.who(), "Store") {
            Ok(a) => a,
            Err(e) => return refuse(status::OUT_OF_RESOURCES, e, touched),
        };
        let tenant = caller.own_tenant().unwrap_or_default().to_string();
        let (tx, rx) = mpsc::channel(QUEUE);
        let envelope = kura_dicom::file_meta(&class, &instance, transfer_syntax);
        let head = [
            StoreRequest::header(tenant, None),
            StoreRequest::chunk(Bytes::from(envelope)),
        ];
        for m in head {
            // The receiver is alive: the task starts below.
            let _ = tx.try_send(Ok(m));
        }
        let input = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        let expect = Expected {
            sop_class_uid: class,
            sop_instance_uid: instance,
        };
        let task = tokio::spawn(crate::ingest::store(
            Arc::clone(&shared.inner),
            caller.clone(),
            input,
            Some(expect),
        ));
        Operation {
            pc_id,
            kind: Kind::Store(Box::new(Store {
                rq,
                caller: caller.clone(),
                shared_gate: gate.clone(),
                tx: Some(tx),
                task,
                chunk_bytes: shared.inner.config.limits.chunk_bytes.max(1),
                started,
                _admitted: admitted,
            })),
        }
    }

    /// One fragment of the data set.
    pub(crate) async fn data(&mut self, data: Vec<u8>) {
        let Kind::Store(store) = &mut self.kind else {
            return;
        };
        let Some(tx) = &store.tx else { return };
        let data = Bytes::from(data);
        let mut at = 0;
        while at < data.len() {
            let end = (at + store.chunk_bytes).min(data.len());
            if tx
                .send(Ok(StoreRequest::chunk(data.slice(at..end))))
                .await
                .is_err()
            {
                // Ingest ended early (a refusal): drop the rest.
                store.tx = None;
                return;
            }
            at = end;
        }
    }

    /// The data set is complete: the response to send and its context.
    pub(crate) async fn finish(self) -> (u8, CommandSet) {
        let store = match self.kind {
            Kind::Refused(rsp) => return (self.pc_id, rsp),
            Kind::Store(s) => s,
        };
        let Store {
            rq,
            caller,
            shared_gate,
            tx,
            task,
            started,
            ..
        } = *store;
        drop(tx);
        let r = match task.await {
            Ok(r) => r,
            Err(e) => Err(GatewayError::Internal(format!("the store task ended: {e}"))),
        };
        let code = status_of(&r);
        let mut rsp = CommandSet::response_to(&rq, field::C_STORE_RSP, code);
        let touched = match &r {
            Ok(resp) => {
                let info = resp.info.clone().unwrap_or_default();
                tracing::info!(
                    sop_instance_uid = %info.sop_instance_uid,
                    size = info.size,
                    already_stored = resp.already_stored,
                    "C-STORE stored"
                );
                Touched {
                    tenant: info.tenant,
                    sop_instance_uid: info.sop_instance_uid,
                    study_instance_uid: info.study_instance_uid,
                    patient_id: info.patient_id,
                }
            }
            Err(e) => {
                tracing::info!(
                    sop_instance_uid = rq.text(tag::AFFECTED_SOP_INSTANCE_UID).unwrap_or(""),
                    status = format!("{code:04X}"),
                    reason = %e.reason(),
                    "C-STORE refused"
                );
                rsp.set_error_comment(&comment_of(e));
                Touched {
                    sop_instance_uid: rq
                        .text(tag::AFFECTED_SOP_INSTANCE_UID)
                        .unwrap_or_default()
                        .to_string(),
                    ..Touched::default()
                }
            }
        };
        observe("C-STORE", code, started);
        shared_gate
            .record(&caller, "DICOM C-STORE", touched, code_of(&r))
            .await;
        (self.pc_id, rsp)
    }
}

/// The DIMSE status of a Store's outcome (the table in the module doc).
pub(crate) fn status_of(r: &Result<StoreResponse, GatewayError>) -> u16 {
    let Err(e) = r else {
        return status::SUCCESS;
    };
    match e {
        GatewayError::AlreadyExists { .. } => status::DUPLICATE_SOP_INSTANCE,
        GatewayError::InvalidArgument { reason, .. } if reason == IDENTITY_MISMATCH => {
            status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS
        }
        GatewayError::InvalidArgument { reason, .. } if reason == "INSTANCE_TOO_LARGE" => {
            status::OUT_OF_RESOURCES
        }
        GatewayError::InvalidArgument { .. } => status::CANNOT_UNDERSTAND,
        GatewayError::ResourceExhausted { .. } | GatewayError::Unavailable(_) => {
            status::OUT_OF_RESOURCES
        }
        GatewayError::PermissionDenied(_) | GatewayError::Unauthenticated(_) => {
            status::NOT_AUTHORIZED
        }
        _ => status::PROCESSING_FAILURE,
    }
}

/// Error Comment: the reason code, then as much of the message as fits.
fn comment_of(e: &GatewayError) -> String {
    format!("{}: {e}", e.reason())
}

/// Counts and times one DIMSE operation.
pub(crate) fn observe(op: &'static str, code: u16, started: Instant) {
    let outcome = match code {
        status::SUCCESS => "success",
        status::PENDING => "pending",
        _ => "failure",
    };
    metrics::counter!("kura_dimse_operations_total", "op" => op, "outcome" => outcome).increment(1);
    metrics::histogram!("kura_dimse_operation_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(reason: &str) -> Result<StoreResponse, GatewayError> {
        Err(GatewayError::invalid("chunk", reason, "x"))
    }

    #[test]
    fn each_outcome_has_its_status() {
        assert_eq!(status_of(&Ok(StoreResponse::default())), status::SUCCESS);
        let exists = Err(GatewayError::AlreadyExists {
            sop_instance_uid: "1.2".into(),
            existing_blake3: String::new(),
            offered_blake3: String::new(),
            stored_at: String::new(),
        });
        assert_eq!(status_of(&exists), status::DUPLICATE_SOP_INSTANCE);
        assert_eq!(
            status_of(&invalid(IDENTITY_MISMATCH)),
            status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS
        );
        assert_eq!(
            status_of(&invalid("INSTANCE_TOO_LARGE")),
            status::OUT_OF_RESOURCES
        );
        assert_eq!(
            status_of(&invalid("DICOM_TRUNCATED")),
            status::CANNOT_UNDERSTAND
        );
        assert_eq!(
            status_of(&Err(GatewayError::Unavailable("x".into()))),
            status::OUT_OF_RESOURCES
        );
        assert_eq!(
            status_of(&Err(GatewayError::PermissionDenied("x".into()))),
            status::NOT_AUTHORIZED
        );
        assert_eq!(
            status_of(&Err(GatewayError::Internal("x".into()))),
            status::PROCESSING_FAILURE
        );
    }

    #[test]
    fn the_error_comment_starts_with_the_reason_code() {
        let e = GatewayError::invalid("chunk", "DICOM_TRUNCATED", "not whole");
        assert!(comment_of(&e).starts_with("DICOM_TRUNCATED: not whole"));
    }
}

//! One association: admission by AE title, negotiation, then its DIMSE
//! messages one at a time until release, abort or idleness.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use dicom_ul::association::Association as _;
use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{
    AssociationRJServiceUserReason, PDataValue, PDataValueType, PresentationContextResultReason,
    UserIdentity,
};
use dicom_ul::{Pdu, ServerAssociationOptions};
use kura_dicom::dimse::{CommandSet, field, status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::store::Operation;
use super::{DicomConfig, DicomPeer};
use crate::auth::{Caller, Touched};
use crate::state::Inner;

/// What every association of one front door shares.
pub(crate) struct Shared {
    pub inner: Arc<Inner>,
    pub config: DicomConfig,
    peers: HashMap<String, DicomPeer>,
    transfer_syntaxes: Vec<&'static str>,
}

impl Shared {
    pub(crate) fn new(inner: Arc<Inner>, config: DicomConfig) -> Shared {
        Shared {
            inner,
            peers: super::peers_by_title(&config.peers),
            config,
            transfer_syntaxes: kura_dicom::storable_transfer_syntaxes(),
        }
    }

    fn options(
        &self,
        peer: SocketAddr,
    ) -> ServerAssociationOptions<'_, Admit<'_>, dicom_ul::association::server::DefaultNegotiation>
    {
        let mut options = ServerAssociationOptions::new()
            .ae_access_control(Admit { shared: self, peer })
            .ae_title(self.config.ae_title.clone())
            .max_pdu_length(self.config.max_pdu)
            .read_timeout(self.config.idle_timeout)
            .write_timeout(self.config.idle_timeout)
            .with_abstract_syntax(kura_dicom::dimse::VERIFICATION_SOP_CLASS);
        for uid in kura_dicom::dimse::STORAGE_SOP_CLASSES {
            options = options.with_abstract_syntax(*uid);
        }
        for uid in &self.transfer_syntaxes {
            options = options.with_transfer_syntax(*uid);
        }
        options
    }

    /// The caller an admitted AE title acts as.
    fn caller(&self, ae_title: &str, peer: SocketAddr) -> Caller {
        let title = ae_title.trim();
        Caller {
            principal: self.peers.get(title).map(|p| kura_auth::Principal::Client {
                tenant: p.tenant.clone(),
                roles: p.roles,
                name: format!("AE {title}"),
            }),
            peer: peer.to_string(),
        }
    }

    fn refused_caller(&self, ae_title: &str, peer: SocketAddr) -> Caller {
        // Not a principal (it proved nothing), but the audit entry names
        // the title it claimed.
        Caller {
            principal: None,
            peer: format!("{peer} (AE {})", printable(ae_title)),
        }
    }
}

/// An AE title as it may appear in logs: printable ASCII, at most 16.
fn printable(title: &str) -> String {
    title
        .trim()
        .chars()
        .take(16)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Admits known calling AE titles that call this archive's title; records
/// every refusal in the audit trail.
struct Admit<'a> {
    shared: &'a Shared,
    peer: SocketAddr,
}

impl AccessControl for Admit<'_> {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let refuse = |reason: AssociationRJServiceUserReason, why: &str| {
            tracing::info!(
                peer = %self.peer,
                calling = %printable(calling_ae_title),
                called = %printable(called_ae_title),
                why,
                "DICOM association refused"
            );
            metrics::counter!("kura_dimse_associations_total", "outcome" => "refused").increment(1);
            self.shared.inner.gate.record_later(
                &self.shared.refused_caller(calling_ae_title, self.peer),
                "DICOM A-ASSOCIATE",
                Touched::default(),
                tonic::Code::PermissionDenied,
            );
            Err(reason)
        };
        if called_ae_title.trim() != this_ae_title.trim() {
            return refuse(
                AssociationRJServiceUserReason::CalledAETitleNotRecognized,
                "called AE title is not this archive's",
            );
        }
        if !self.shared.peers.contains_key(calling_ae_title.trim()) {
            return refuse(
                AssociationRJServiceUserReason::CallingAETitleNotRecognized,
                "calling AE title is not configured",
            );
        }
        Ok(())
    }
}

/// Serves one association until it ends.
pub(crate) async fn serve(shared: &Shared, socket: TcpStream, peer: SocketAddr) {
    let options = shared.options(peer);
    let mut association = match options.establish_async(socket).await {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "DICOM association not established");
            return;
        }
    };
    let title = association.peer_ae_title().trim().to_string();
    let caller = shared.caller(&title, peer);
    metrics::counter!("kura_dimse_associations_total", "outcome" => "accepted").increment(1);
    metrics::gauge!("kura_dimse_associations").increment(1.0);
    let accepted = association
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .count();
    tracing::info!(%peer, calling = %title, contexts = accepted, "DICOM association accepted");
    shared.inner.gate.record_later(
        &caller,
        "DICOM A-ASSOCIATE",
        Touched::default(),
        tonic::Code::Ok,
    );
    let ended = run(shared, &mut association, &caller).await;
    match ended {
        Ended::Released => {
            let _ = association.send(&Pdu::ReleaseRP).await;
            tracing::debug!(%peer, calling = %title, "DICOM association released");
        }
        Ended::Aborted => {
            tracing::debug!(%peer, calling = %title, "DICOM association aborted by the peer")
        }
        Ended::Broken(why) => {
            tracing::info!(%peer, calling = %title, why, "DICOM association aborted");
            let _ = association.abort().await;
        }
    }
    metrics::gauge!("kura_dimse_associations").decrement(1.0);
}

enum Ended {
    Released,
    Aborted,
    Broken(String),
}

type Association = dicom_ul::association::AsyncServerAssociation<TcpStream>;

async fn run(shared: &Shared, association: &mut Association, caller: &Caller) -> Ended {
    let idle = shared.config.idle_timeout;
    let mut command: Vec<u8> = Vec::new();
    let mut operation: Option<Operation> = None;
    loop {
        let pdu = match tokio::time::timeout(idle, association.receive()).await {
            Err(_) => return Ended::Broken(format!("idle for {idle:?}")),
            Ok(Err(e)) => return Ended::Broken(format!("receive: {e}")),
            Ok(Ok(pdu)) => pdu,
        };
        let values = match pdu {
            Pdu::PData { data } => data,
            Pdu::ReleaseRQ => return Ended::Released,
            Pdu::AbortRQ { .. } => return Ended::Aborted,
            other => return Ended::Broken(format!("unexpected {}", other.short_description())),
        };
        for value in values {
            match value.value_type {
                PDataValueType::Command => {
                    if operation.is_some() {
                        return Ended::Broken("a command arrived inside a data set".into());
                    }
                    command.extend_from_slice(&value.data);
                    if command.len() > 64 * 1024 {
                        return Ended::Broken("a command set longer than 64 KiB".into());
                    }
                    if !value.is_last {
                        continue;
                    }
                    let bytes = std::mem::take(&mut command);
                    let set = match CommandSet::decode(&bytes) {
                        Ok(s) => s,
                        Err(e) => return Ended::Broken(format!("unreadable command: {e}")),
                    };
                    match command_of(
                        shared,
                        association,
                        caller,
                        set,
                        value.presentation_context_id,
                    )
                    .await
                    {
                        Ok(Some(op)) => operation = Some(op),
                        Ok(None) => {}
                        Err(why) => return Ended::Broken(why),
                    }
                }
                PDataValueType::Data => {
                    let Some(op) = operation.as_mut() else {
                        return Ended::Broken("a data set arrived without its command".into());
                    };
                    op.data(value.data).await;
                    if value.is_last {
                        let Some(op) = operation.take() else { continue };
                        let (pc, rsp) = op.finish().await;
                        if let Err(why) = respond(association, pc, &rsp).await {
                            return Ended::Broken(why);
                        }
                    }
                }
            }
        }
    }
}

/// Acts on one command: answers it at once, or returns the operation that
/// takes the data set following it.
async fn command_of(
    shared: &Shared,
    association: &mut Association,
    caller: &Caller,
    rq: CommandSet,
    pc_id: u8,
) -> Result<Option<Operation>, String> {
    let Some(pc) = association
        .presentation_contexts()
        .iter()
        .find(|pc| pc.id == pc_id && pc.reason == PresentationContextResultReason::Acceptance)
        .cloned()
    else {
        return Err(format!(
            "a command on presentation context {pc_id}, which was not accepted"
        ));
    };
    let command_field = rq.command_field().map_err(|e| e.to_string())?;
    let has_data_set = rq.has_data_set().map_err(|e| e.to_string())?;
    match command_field {
        field::C_ECHO_RQ => {
            let started = Instant::now();
            let rsp = CommandSet::response_to(&rq, field::C_ECHO_RSP, status::SUCCESS);
            respond(association, pc_id, &rsp).await?;
            super::store::observe("C-ECHO", status::SUCCESS, started);
            shared.inner.gate.record_later(
                caller,
                "DICOM C-ECHO",
                Touched::default(),
                tonic::Code::Ok,
            );
            Ok(None)
        }
        field::C_STORE_RQ if has_data_set => {
            let ts = pc.transfer_syntax.trim_end_matches('\0').to_string();
            Ok(Some(Operation::store(shared, caller, rq, pc_id, &ts).await))
        }
        field::C_CANCEL_RQ => Ok(None),
        other => {
            let mut rsp =
                CommandSet::response_to(&rq, other | 0x8000, status::UNRECOGNIZED_OPERATION);
            rsp.set_error_comment(&format!("command field {other:#06x} is not served here"));
            if has_data_set {
                Ok(Some(Operation::refused(pc_id, rsp)))
            } else {
                respond(association, pc_id, &rsp).await?;
                Ok(None)
            }
        }
    }
}

/// Sends a response command set (no data set) on `pc_id`.
async fn respond(association: &mut Association, pc_id: u8, rsp: &CommandSet) -> Result<(), String> {
    let pdu = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc_id,
            value_type: PDataValueType::Command,
            is_last: true,
            data: rsp.encode(),
        }],
    };
    association
        .send(&pdu)
        .await
        .map_err(|e| format!("send a response: {e}"))
}

/// A-ASSOCIATE-RJ: rejected-transient, by the service provider
/// (presentation), local limit exceeded (PS3.8 §9.3.4).
const BUSY: [u8; 10] = [0x03, 0x00, 0, 0, 0, 4, 0x00, 0x02, 0x03, 0x02];

/// More associations than `max_associations`: reads the request and
/// rejects it as transient, so the peer retries later.
pub(crate) async fn refuse_busy(shared: &Shared, mut socket: TcpStream, peer: SocketAddr) {
    metrics::counter!("kura_dimse_associations_total", "outcome" => "busy").increment(1);
    tracing::info!(%peer, limit = shared.config.max_associations, "DICOM association refused: max_associations reached");
    shared.inner.gate.record_later(
        &Caller {
            principal: None,
            peer: peer.to_string(),
        },
        "DICOM A-ASSOCIATE",
        Touched::default(),
        tonic::Code::ResourceExhausted,
    );
    let exchange = async {
        let mut head = [0u8; 6];
        socket.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as u64;
        // Read (and drop) the request, at most 1 MiB of it, so closing
        // does not reset the connection before the peer reads the answer.
        tokio::io::copy(
            &mut (&mut socket).take(len.min(1 << 20)),
            &mut tokio::io::sink(),
        )
        .await?;
        socket.write_all(&BUSY).await?;
        socket.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), exchange).await;
}

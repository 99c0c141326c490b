//! The verification workload a drill keeps running: writers storing small
//! synthetic instances under the `kura-drill` tenant, readers reading them
//! back, every call recorded with its time and outcome.

use super::*;

pub(super) fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One call of the workload.
#[derive(Clone, Debug)]
pub(super) struct Call {
    pub(super) write: bool,
    pub(super) start: f64,
    pub(super) end: f64,
    pub(super) ok: bool,
    pub(super) code: String,
}

#[derive(Default)]
pub(super) struct Shared {
    pub(super) calls: Vec<Call>,
    /// Acknowledged drill writes: uid -> blake3.
    pub(super) acked: BTreeMap<String, [u8; 32]>,
    /// (seconds, under-protected instances) samples.
    pub(super) protection: Vec<(f64, u64)>,
    /// Store calls whose outcome is unknown (timed out or cut off).
    pub(super) unknown: Vec<(String, [u8; 32])>,
}

pub(super) async fn store_once(
    client: &mut ArchiveClient<Channel>,
    tenant: &str,
    bytes: Vec<u8>,
) -> Result<(), tonic::Status> {
    let msgs = StoreRequest::messages(tenant, Bytes::from(bytes), 1024 * 1024);
    let mut req = tonic::Request::new(tokio_stream::iter(msgs));
    req.set_timeout(Duration::from_secs(20));
    client.store(req).await.map(|_| ())
}

/// Reads one instance; answers its blake3.
pub(super) async fn read_once(
    client: &mut ArchiveClient<Channel>,
    tenant: &str,
    sop: &str,
) -> Result<[u8; 32], tonic::Status> {
    let mut req = tonic::Request::new(RetrieveRequest {
        tenant: tenant.to_string(),
        sop_instance_uid: sop.to_string(),
    });
    req.set_timeout(Duration::from_secs(30));
    let mut stream = client.retrieve(req).await?.into_inner();
    let mut hasher = blake3::Hasher::new();
    while let Some(m) = stream.message().await? {
        if let Some(retrieve_response::Msg::Chunk(c)) = m.msg {
            hasher.update(&c);
        }
    }
    Ok(hasher.finalize().into())
}

pub(super) fn code_of(s: &tonic::Status) -> String {
    kura_proto::code_name(s.code()).to_string()
}

/// The Admin API as the credentials' admin.
pub(super) async fn admin_of(
    endpoint: &str,
    creds: &CredentialArgs,
) -> anyhow::Result<(kura_proto::v1::admin_client::AdminClient<Channel>, String)> {
    admin_client(&AdminConnect {
        endpoint: endpoint.to_string(),
        as_tenant: None,
        creds: creds.clone(),
        json: false,
    })
    .await
}

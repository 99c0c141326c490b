//! Store: one DICOM instance in, erasure-coded across sites, manifest
//! committed through Raft.
//!
//! The bytes flow through once, as they arrive:
//!
//! ```text
//! chunks ─┬─> identity (first bytes only) ─> existing manifest?
//!         ├─> validator (blocking thread, bounded channel)
//!         └─> Sealer (hash, AES-256-GCM chunks) ─> ObjectEncoder (segments)
//!                ─> placement ─> shard puts (≤ WRITES_IN_FLIGHT segments)
//! end ─> validator verdict, size and hash checks ─> data key wrapped,
//!        fingerprint ─> PutManifest ─> answer
//! ```
//!
//! Storage nodes only ever receive sealed bytes (see [`crate::seal`]).
//!
//! Memory per request is bounded by the identity prefix, one segment being
//! filled, the segments being written and the validator's channel: a few
//! tens of MiB whatever the instance size. Any refusal before the manifest
//! is committed deletes the shards written so far (best effort; the storage
//! nodes' orphan reclaim catches the rest). When the commit's outcome is
//! unknown the shards stay: the manifest may reference them.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use kura_dicom::{DicomError, Identity};
use kura_erasure::{EcParams, EncodedSegment, ObjectEncoder, ObjectKey};
use kura_placement::{
    MANIFEST_FORMAT_VERSION, Manifest, Placer, Protection, SegmentManifest, ShardLocation,
    WriteQuorum, protection_of,
};
use kura_proto::meta::{Applied, Command, Rejected};
use kura_proto::meta_client::Retry;
use kura_proto::shards_client::ShardId;
use kura_proto::v1::{StoreHeader, StoreRequest, StoreResponse, store_request};
use kura_seal::{DataKey, Sealer, Secrets};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cluster::{ClusterState, meta_error};
use crate::error::{GatewayError, rfc3339_ms};
use crate::info::instance_info;
use crate::state::Inner;

/// Segments whose shards are being written at once, per request.
const WRITES_IN_FLIGHT: usize = 2;
/// Chunks queued for the validator.
const VALIDATOR_QUEUE: usize = 8;

/// The messages of one Store: a gRPC request stream, or what a DICOM
/// front door makes of what arrives on its association.
pub(crate) type StoreInput =
    futures::stream::BoxStream<'static, Result<StoreRequest, tonic::Status>>;

/// What the instance must be, when the caller named it before its bytes
/// (a DIMSE C-STORE names its SOP class and instance in the command).
#[derive(Clone, Debug)]
pub(crate) struct Expected {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
}

/// The reason code of a refusal because the data set is not the instance
/// its command named.
pub(crate) const IDENTITY_MISMATCH: &str = "DICOM_IDENTITY_MISMATCH";

struct Request {
    input: StoreInput,
    bytes_in: u64,
    limits: crate::limits::Limits,
}

impl Request {
    /// The next data chunk; `None` at the end of the stream.
    async fn chunk(&mut self) -> Result<Option<Bytes>, GatewayError> {
        loop {
            let message = self.input.next().await.transpose().map_err(|s| {
                GatewayError::invalid(
                    "chunk",
                    "STREAM_BROKEN",
                    format!(
                        "the request stream broke after {} bytes ({}: {}); nothing was stored",
                        self.bytes_in,
                        s.code(),
                        s.message()
                    ),
                )
            })?;
            let Some(message) = message else {
                return Ok(None);
            };
            match message.msg {
                Some(store_request::Msg::Chunk(c)) => {
                    if c.is_empty() {
                        continue;
                    }
                    if c.len() > self.limits.chunk_bytes {
                        return Err(GatewayError::invalid(
                            "chunk",
                            "CHUNK_TOO_LARGE",
                            format!(
                                "a chunk of {} bytes is larger than limit chunk_bytes ({} bytes); send smaller chunks; nothing was stored",
                                c.len(),
                                self.limits.chunk_bytes
                            ),
                        ));
                    }
                    self.bytes_in += c.len() as u64;
                    if self.bytes_in > self.limits.instance_bytes {
                        return Err(too_large(self.bytes_in, &self.limits));
                    }
                    metrics::counter!("kura_gateway_received_bytes_total")
                        .increment(c.len() as u64);
                    return Ok(Some(c));
                }
                Some(store_request::Msg::Header(_)) => {
                    return Err(GatewayError::invalid(
                        "header",
                        "SECOND_HEADER",
                        "only the first message may carry a header; nothing was stored",
                    ));
                }
                None => {
                    return Err(GatewayError::invalid(
                        "msg",
                        "EMPTY_MESSAGE",
                        "a message carries neither header nor chunk; nothing was stored",
                    ));
                }
            }
        }
    }
}

/// A checked `StoreHeader`.
struct Header {
    tenant: String,
    expected_blake3: Option<[u8; 32]>,
    size: Option<u64>,
    expect: Option<Expected>,
}

fn too_large(bytes: u64, limits: &crate::limits::Limits) -> GatewayError {
    GatewayError::invalid(
        "chunk",
        "INSTANCE_TOO_LARGE",
        format!(
            "the instance is {bytes} bytes or more, larger than limit instance_bytes ({} bytes); nothing was stored",
            limits.instance_bytes
        ),
    )
}

fn check_header(h: StoreHeader, limits: &crate::limits::Limits) -> Result<Header, GatewayError> {
    if let Some(size) = h.size
        && size > limits.instance_bytes
    {
        return Err(GatewayError::invalid(
            "header.size",
            "INSTANCE_TOO_LARGE",
            format!(
                "the header declares {size} bytes, more than limit instance_bytes ({} bytes); nothing was stored",
                limits.instance_bytes
            ),
        ));
    }
    kura_proto::meta::validate_tenant(&h.tenant)
        .map_err(|e| GatewayError::invalid("header.tenant", "BAD_TENANT", e))?;
    let expected_blake3 = match h.expected_blake3.as_deref() {
        None | Some("") => None,
        Some(hex_str) => {
            let mut b = [0u8; 32];
            hex::decode_to_slice(hex_str, &mut b).map_err(|_| {
                GatewayError::invalid(
                    "header.expected_blake3",
                    "BAD_BLAKE3",
                    "expected_blake3 must be 64 hex digits",
                )
            })?;
            Some(b)
        }
    };
    Ok(Header {
        tenant: h.tenant,
        expected_blake3,
        size: h.size,
        expect: None,
    })
}

fn check_expected(expect: &Expected, identity: &Identity) -> Result<(), GatewayError> {
    let mismatch = |what: &str, named: &str, found: &str| {
        GatewayError::invalid(
            "chunk",
            IDENTITY_MISMATCH,
            format!(
                "the command names {what} {named} but the data set's is {found}; nothing was stored"
            ),
        )
    };
    if expect.sop_instance_uid != identity.sop_instance_uid {
        return Err(mismatch(
            "SOP Instance UID",
            &expect.sop_instance_uid,
            &identity.sop_instance_uid,
        ));
    }
    if expect.sop_class_uid != identity.sop_class_uid {
        return Err(mismatch(
            "SOP Class UID",
            &expect.sop_class_uid,
            &identity.sop_class_uid,
        ));
    }
    Ok(())
}

fn dicom_refusal(e: &DicomError) -> GatewayError {
    GatewayError::invalid(
        "chunk",
        format!("DICOM_{}", e.code().to_ascii_uppercase().replace('-', "_")),
        format!("not an acceptable DICOM instance: {e}; nothing was stored"),
    )
}

/// Handles one Store call.
pub(crate) async fn store(
    gw: Arc<Inner>,
    caller: crate::auth::Caller,
    input: StoreInput,
    expect: Option<Expected>,
) -> Result<StoreResponse, GatewayError> {
    let mut req = Request {
        input,
        bytes_in: 0,
        limits: gw.config.limits,
    };
    let first = req.input.next().await.transpose().map_err(|s| {
        GatewayError::invalid(
            "header",
            "STREAM_BROKEN",
            format!(
                "the request stream broke before its header: {}",
                s.message()
            ),
        )
    })?;
    let header = match first.and_then(|m| m.msg) {
        Some(store_request::Msg::Header(mut h)) => {
            h.tenant = caller.tenant("header.tenant", &h.tenant)?;
            Header {
                expect,
                ..check_header(h, &gw.config.limits)?
            }
        }
        Some(store_request::Msg::Chunk(_)) => {
            return Err(GatewayError::invalid(
                "header",
                "CHUNK_BEFORE_HEADER",
                "the first message must carry the header (tenant), not a chunk; nothing was stored",
            ));
        }
        None => {
            return Err(GatewayError::invalid(
                "header",
                "NO_HEADER",
                "the stream ended without a header; nothing was stored",
            ));
        }
    };
    let deadline = tokio::time::Instant::now() + gw.config.store_deadline;
    // The data phase is bounded so that orphan reclaim (grace period longer
    // than this deadline) never deletes shards a live store still needs.
    let data = tokio::time::timeout_at(deadline, receive(&gw, &mut req, &header)).await;
    let received = match data {
        Ok(r) => r?,
        Err(_) => {
            return Err(GatewayError::DeadlineExceeded(format!(
                "the instance did not arrive within {:?} ({} bytes received); nothing was stored",
                gw.config.store_deadline, req.bytes_in
            )));
        }
    };
    match received {
        Received::Existing(response) => Ok(*response),
        Received::New(written) => commit(&gw, written).await,
    }
}

enum Received {
    /// The instance was already stored with these bytes.
    Existing(Box<StoreResponse>),
    /// Shards are written; the manifest is ready to commit.
    New(Box<Written>),
}

struct Written {
    manifest: Manifest,
    secrets: Secrets,
    state: Arc<ClusterState>,
}

async fn receive(
    gw: &Arc<Inner>,
    req: &mut Request,
    header: &Header,
) -> Result<Received, GatewayError> {
    // 1. The identifying attributes, from the first bytes.
    let mut held: Vec<Bytes> = Vec::new();
    let mut prefix = BytesMut::new();
    let mut ended = false;
    let header_max = gw.config.limits.header_bytes;
    let identity: Identity = loop {
        match req.chunk().await? {
            Some(c) => {
                prefix.extend_from_slice(&c);
                held.push(c);
            }
            None => ended = true,
        }
        // Only the first `header_max` bytes may hold the identity.
        let window = &prefix[..prefix.len().min(header_max)];
        let complete = ended && prefix.len() <= header_max;
        match kura_dicom::read_identity(window, complete) {
            Ok(id) => break id,
            Err(DicomError::NeedMoreData { .. }) if !ended && prefix.len() < header_max => {}
            Err(DicomError::NeedMoreData { .. }) if prefix.len() >= header_max => {
                return Err(GatewayError::invalid(
                    "chunk",
                    "DICOM_HEADER_TOO_LARGE",
                    format!(
                        "the identifying attributes are not within the first {header_max} bytes (limit header_bytes); nothing was stored"
                    ),
                ));
            }
            Err(e) => return Err(dicom_refusal(&e)),
        }
    };
    drop(prefix);
    if let Some(expect) = &header.expect {
        check_expected(expect, &identity)?;
    }
    if identity.patient_id.len() > kura_seal::PATIENT_ID_MAX {
        return Err(GatewayError::invalid(
            "chunk",
            "DICOM_PATIENT_ID_TOO_LONG",
            format!(
                "the Patient ID is {} bytes, longer than the {} bytes an instance's sealed secrets hold; nothing was stored",
                identity.patient_id.len(),
                kura_seal::PATIENT_ID_MAX
            ),
        ));
    }
    let uid = identity.sop_instance_uid.clone();
    let span = tracing::Span::current();
    span.record("tenant", header.tenant.as_str());
    span.record("sop_instance_uid", uid.as_str());
    tracing::debug!(sop_instance_uid = %uid, tenant = %header.tenant, "store: identity read");

    // 2. Already stored? Then only hash what arrives and compare. Any
    // voter's state answers (no election in the way): manifests are
    // write-once, so a stale "stored" is true, and a store a stale voter
    // has not seen yet is caught when the manifest is committed
    // (identical: already stored; different: conflict).
    let existing = crate::manifests::from_any_voter(
        &gw.cluster,
        gw.config.stale_read_attempt,
        &header.tenant,
        &uid,
    )
    .await?;
    if let Some(existing) = existing {
        // Hash what arrives; validate it too, so that a broken instance is
        // refused as such even when its UID is taken.
        let mut hasher = blake3::Hasher::new();
        let mut validator = Validator::start(gw.config.limits.parse());
        let mut invalid = None;
        let mut feed = async |c: Bytes, hasher: &mut blake3::Hasher| {
            hasher.update(&c);
            if invalid.is_none()
                && let Err(e) = validator.feed(c).await
            {
                invalid = Some(e);
            }
        };
        for c in held {
            feed(c, &mut hasher).await;
        }
        while !ended {
            match req.chunk().await? {
                Some(c) => feed(c, &mut hasher).await,
                None => ended = true,
            }
        }
        let offered = *hasher.finalize().as_bytes();
        check_declared(header, req.bytes_in, &offered)?;
        let same = existing.sealing.plain_size == req.bytes_in
            && crate::seal::fingerprint_like(&gw.config.keys, &existing, &offered)?
                == existing.fingerprint;
        if !same {
            if let Some(e) = invalid {
                return Err(e);
            }
            validator.verdict().await?;
        }
        return if same {
            let secrets = crate::seal::open(&gw.config.keys, &existing)?;
            tracing::info!(sop_instance_uid = %uid, size = existing.sealing.plain_size, "store: already stored");
            Ok(Received::Existing(Box::new(StoreResponse {
                info: Some(instance_info(&existing, &secrets)),
                already_stored: true,
            })))
        } else {
            Err(conflict(gw, &existing, &offered))
        };
    }

    // 3. New: validate, encode, place and write as the bytes arrive.
    let state = gw.cluster.state().await?;
    // A fresh object key per attempt: sealed bytes differ between attempts
    // (a fresh data key each), so a retry never meets its predecessor's
    // shards under the same key; those are reclaimed as orphans.
    let object_key: [u8; 32] = rand::random();
    let data_key =
        DataKey::generate().map_err(|e| GatewayError::Internal(format!("no data key: {e}")))?;
    // Nodes that just failed a call are left out while the failure
    // detector has not marked them down yet, as long as the others can
    // take every shard with the same protection; otherwise they are tried
    // (a node back from a restart answers and is cleared).
    let avoiding = gw
        .cluster
        .avoiding_suspects(&state.map)
        .and_then(|map| Placer::new(&map, &state.profile).ok())
        .filter(|p| {
            let trial = p.place(&object_key, 0);
            trial.placed() == state.profile.total_shards() && trial.protection == Protection::Full
        });
    let placer = match avoiding {
        Some(p) => p,
        None => Placer::new(&state.map, &state.profile).map_err(|e| {
            if e.is_retryable() {
                GatewayError::Unavailable(format!("cannot place shards now: {e}"))
            } else {
                GatewayError::Internal(format!("cluster map or profile unusable: {e}"))
            }
        })?,
    };
    let mut pipeline = Pipeline::start(gw, state, placer, object_key, &data_key)?;
    let outcome = async {
        for c in held {
            pipeline.push(c).await?;
        }
        while !ended {
            match req.chunk().await? {
                Some(c) => pipeline.push(c).await?,
                None => ended = true,
            }
        }
        pipeline.finish().await
    }
    .await;
    let Finished {
        segments,
        plain_blake3,
        plain_size,
        sealed_size,
    } = match outcome {
        Ok(done) => done,
        Err(e) => {
            pipeline.abandon();
            return Err(e);
        }
    };
    if let Err(e) = check_declared(header, plain_size, &plain_blake3) {
        pipeline.abandon();
        return Err(e);
    }
    let keys = &gw.config.keys;
    let secrets = Secrets {
        data_key,
        plain_blake3,
        patient_id: identity.patient_id,
    };
    let sealed = crate::seal::seal_secrets(
        keys,
        keys.current(),
        &kura_seal::WrapContext {
            tenant: &header.tenant,
            sop_instance_uid: &uid,
            object_key: &object_key,
        },
        &secrets,
        plain_size,
    );
    let (sealing, fingerprint) = match sealed {
        Ok(s) => s,
        Err(e) => {
            pipeline.abandon();
            return Err(GatewayError::Internal(format!(
                "cannot wrap the data key: {e}"
            )));
        }
    };
    let protection = segments
        .iter()
        .map(|s| {
            let holders: Vec<_> = s.shards.iter().map(|l| l.node).collect();
            protection_of(&pipeline.state.map, &pipeline.state.profile, &holders)
        })
        .fold(Protection::Full, Protection::and);
    let now = unix_ms_now();
    let manifest = Manifest {
        format_version: MANIFEST_FORMAT_VERSION,
        tenant: header.tenant.clone(),
        sop_instance_uid: uid,
        sop_class_uid: identity.sop_class_uid,
        study_instance_uid: identity.study_instance_uid,
        series_instance_uid: identity.series_instance_uid,
        transfer_syntax_uid: identity.transfer_syntax_uid,
        modality: identity.modality,
        study_date: identity.study_date,
        size: sealed_size,
        fingerprint,
        sealing,
        object_key,
        ec: pipeline.state.profile,
        segments,
        protection,
        version: 1,
        stored_at_unix_ms: now,
        updated_at_unix_ms: now,
        retain_until_unix_ms: None,
    };
    if let Err(e) = manifest.validate() {
        pipeline.abandon();
        return Err(GatewayError::Internal(format!(
            "built an invalid manifest: {e}"
        )));
    }
    Ok(Received::New(Box::new(Written {
        manifest,
        secrets,
        state: Arc::clone(&pipeline.state),
    })))
}

/// Checks the size and hash the client declared against what arrived.
fn check_declared(header: &Header, size: u64, blake3: &[u8; 32]) -> Result<(), GatewayError> {
    if let Some(declared) = header.size
        && declared != size
    {
        return Err(GatewayError::invalid(
            "header.size",
            "SIZE_MISMATCH",
            format!(
                "the header declared {declared} bytes but {size} arrived (a cut-off upload?); nothing was stored"
            ),
        ));
    }
    if let Some(expected) = header.expected_blake3
        && expected != *blake3
    {
        return Err(GatewayError::invalid(
            "header.expected_blake3",
            "BLAKE3_MISMATCH",
            format!(
                "the bytes that arrived hash to {}, not the declared {}; nothing was stored",
                hex::encode(blake3),
                hex::encode(expected)
            ),
        ));
    }
    Ok(())
}

/// The refusal of `offered` bytes for `existing`'s UID. The stored
/// instance's blake3 is only known sealed: opened here for the caller (of
/// the same tenant), or said to be unknown when this gateway cannot.
fn conflict(gw: &Inner, existing: &Manifest, offered: &[u8; 32]) -> GatewayError {
    let existing_blake3 = match crate::seal::open(&gw.config.keys, existing) {
        Ok(s) => hex::encode(s.plain_blake3),
        Err(_) => format!(
            "(sealed under key version {})",
            existing.sealing.key_version
        ),
    };
    GatewayError::AlreadyExists {
        sop_instance_uid: existing.sop_instance_uid.clone(),
        existing_blake3,
        offered_blake3: hex::encode(offered),
        stored_at: rfc3339_ms(existing.stored_at_unix_ms),
    }
}

async fn commit(gw: &Arc<Inner>, written: Box<Written>) -> Result<StoreResponse, GatewayError> {
    let Written {
        manifest,
        secrets,
        state,
    } = *written;
    let outcome = gw
        .cluster
        .meta()
        .propose(&Command::PutManifest(manifest.clone()), Retry::Idempotent)
        .await;
    match outcome {
        Ok(Ok(Applied::ManifestCreated { version })) => {
            // What the cluster now holds: the same manifest at its version.
            let mut stored = manifest.clone();
            stored.version = version;
            gw.manifests.put(std::sync::Arc::new(stored));
            metrics::counter!("kura_gateway_instances_stored_total").increment(1);
            if manifest.protection == Protection::UnderProtected {
                metrics::counter!("kura_gateway_under_protected_stores_total").increment(1);
            }
            tracing::info!(
                sop_instance_uid = %manifest.sop_instance_uid,
                size = manifest.sealing.plain_size,
                blake3 = %hex::encode(secrets.plain_blake3),
                key_version = manifest.sealing.key_version,
                protection = %manifest.protection,
                "instance stored"
            );
            Ok(StoreResponse {
                info: Some(instance_info(&manifest, &secrets)),
                already_stored: false,
            })
        }
        Ok(Ok(Applied::ManifestIdentical { existing })) => {
            // A concurrent store of the same bytes won; ours are spare.
            if existing.object_key != manifest.object_key {
                delete_shards(gw, &state, &manifest);
            }
            let secrets = crate::seal::open(&gw.config.keys, &existing)?;
            Ok(StoreResponse {
                info: Some(instance_info(&existing, &secrets)),
                already_stored: true,
            })
        }
        Ok(Ok(other)) => Err(GatewayError::Internal(format!(
            "unexpected answer to PutManifest: {other:?}"
        ))),
        Ok(Err(Rejected::Conflict {
            sop_instance_uid,
            existing_stored_at_unix_ms,
            ..
        })) => {
            // Ours are spare either way. The fingerprints may differ only
            // by key version (a store racing a key rotation): compare
            // under the stored one's.
            delete_shards(gw, &state, &manifest);
            let offered = secrets.plain_blake3;
            match crate::manifests::from_leader(&gw.cluster, &manifest.tenant, &sop_instance_uid)
                .await
            {
                Ok(Some(existing))
                    if existing.sealing.plain_size == manifest.sealing.plain_size
                        && crate::seal::fingerprint_like(&gw.config.keys, &existing, &offered)
                            .is_ok_and(|f| f == existing.fingerprint) =>
                {
                    let secrets = crate::seal::open(&gw.config.keys, &existing)?;
                    Ok(StoreResponse {
                        info: Some(instance_info(&existing, &secrets)),
                        already_stored: true,
                    })
                }
                Ok(Some(existing)) => Err(conflict(gw, &existing, &offered)),
                _ => Err(GatewayError::AlreadyExists {
                    sop_instance_uid,
                    existing_blake3: "(not read)".into(),
                    offered_blake3: hex::encode(offered),
                    stored_at: rfc3339_ms(existing_stored_at_unix_ms),
                }),
            }
        }
        Ok(Err(other)) => {
            delete_shards(gw, &state, &manifest);
            Err(GatewayError::Internal(format!("manifest refused: {other}")))
        }
        // Outcome unknown: the manifest may be committed; keep the shards.
        Err(e) => Err(meta_error(e)),
    }
}

/// Deletes the shards of `manifest`, in the background, best effort.
fn delete_shards(gw: &Arc<Inner>, state: &Arc<ClusterState>, manifest: &Manifest) {
    let targets: Vec<(u64, ShardId)> = manifest
        .segments
        .iter()
        .flat_map(|s| {
            s.shards.iter().filter_map(move |l| {
                Some((
                    l.node?,
                    ShardId {
                        object_key: manifest.object_key,
                        segment: s.index,
                        index: l.index,
                    },
                ))
            })
        })
        .collect();
    spawn_deletes(gw, state, targets);
}

fn spawn_deletes(gw: &Arc<Inner>, state: &Arc<ClusterState>, targets: Vec<(u64, ShardId)>) {
    if targets.is_empty() {
        return;
    }
    let gw = Arc::clone(gw);
    let state = Arc::clone(state);
    tokio::spawn(async move {
        for (node, id) in targets {
            let Some(info) = state.map.node(node) else {
                continue;
            };
            let Ok(client) = gw.cluster.client(info) else {
                continue;
            };
            if let Err(e) = client.delete_shard(&id).await {
                tracing::debug!(shard = %id, node, error = %e, "spare shard not deleted; orphan reclaim will");
            }
        }
    });
}

/// The DICOM validator on a blocking thread, fed chunk by chunk.
struct Validator {
    tx: Option<mpsc::Sender<Bytes>>,
    task: Option<JoinHandle<Result<kura_dicom::Summary, DicomError>>>,
}

impl Validator {
    fn start(limits: kura_dicom::ParseLimits) -> Self {
        let (tx, rx) = mpsc::channel::<Bytes>(VALIDATOR_QUEUE);
        let task = tokio::task::spawn_blocking(move || {
            kura_dicom::validate_with(
                ChannelReader {
                    rx,
                    current: Bytes::new(),
                },
                limits,
            )
        });
        Self {
            tx: Some(tx),
            task: Some(task),
        }
    }

    /// Hands a chunk over; refuses as soon as the validator has found a
    /// problem (it stops reading then).
    async fn feed(&mut self, chunk: Bytes) -> Result<(), GatewayError> {
        if let Some(tx) = &self.tx
            && tx.send(chunk).await.is_err()
        {
            self.tx = None;
            self.verdict().await?;
        }
        Ok(())
    }

    /// Ends the input and answers the verdict.
    async fn verdict(&mut self) -> Result<kura_dicom::Summary, GatewayError> {
        self.tx = None;
        let Some(v) = self.task.take() else {
            return Err(GatewayError::Internal("validator consulted twice".into()));
        };
        match v.await {
            Ok(Ok(summary)) => Ok(summary),
            Ok(Err(e)) => Err(dicom_refusal(&e)),
            Err(e) => Err(GatewayError::Internal(format!(
                "validator task failed: {e}"
            ))),
        }
    }
}

/// What a finished pipeline wrote.
struct Finished {
    segments: Vec<SegmentManifest>,
    /// The instance's (plaintext) blake3 and size.
    plain_blake3: [u8; 32],
    plain_size: u64,
    /// The sealed object's size: what the segments hold.
    sealed_size: u64,
}

/// Validator, sealer, encoder and shard writers of one new instance.
struct Pipeline {
    gw: Arc<Inner>,
    state: Arc<ClusterState>,
    placer: Arc<Placer>,
    object_key: ObjectKey,
    /// Sealer and encoder travel together to the blocking pool.
    coder: Option<(Sealer, ObjectEncoder)>,
    validator: Validator,
    writes: FuturesOrdered<JoinHandle<Result<SegmentManifest, GatewayError>>>,
    /// To stop the writes when the store is abandoned.
    aborts: Vec<tokio::task::AbortHandle>,
    done: Vec<SegmentManifest>,
    /// Shards known written, for cleanup.
    written: Arc<std::sync::Mutex<Vec<(u64, ShardId)>>>,
}

impl Pipeline {
    fn start(
        gw: &Arc<Inner>,
        state: Arc<ClusterState>,
        placer: Placer,
        object_key: ObjectKey,
        data_key: &DataKey,
    ) -> Result<Self, GatewayError> {
        let encoder = ObjectEncoder::new(state.profile, object_key)
            .map_err(|e| GatewayError::Internal(format!("erasure profile unusable: {e}")))?;
        Ok(Self {
            gw: Arc::clone(gw),
            state,
            placer: Arc::new(placer),
            object_key,
            coder: Some((Sealer::new(data_key, &object_key), encoder)),
            validator: Validator::start(gw.config.limits.parse()),
            writes: FuturesOrdered::new(),
            aborts: Vec::new(),
            done: Vec::new(),
            written: Arc::new(std::sync::Mutex::new(Vec::new())),
        })
    }

    async fn push(&mut self, chunk: Bytes) -> Result<(), GatewayError> {
        self.validator.feed(chunk.clone()).await?;
        let (mut sealer, mut encoder) = self
            .coder
            .take()
            .ok_or_else(|| GatewayError::Internal("encoder used after an error".into()))?;
        let (sealer, encoder, segments) = tokio::task::spawn_blocking(move || {
            let mut sealed = Vec::with_capacity(chunk.len() + kura_seal::CHUNK_SEALED);
            let r = match sealer.push(&chunk, &mut sealed) {
                Ok(()) => encoder.push(&sealed).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            (sealer, encoder, r)
        })
        .await
        .map_err(|e| GatewayError::Internal(format!("encode task failed: {e}")))?;
        self.coder = Some((sealer, encoder));
        let segments = segments.map_err(|e| {
            GatewayError::invalid(
                "chunk",
                "INSTANCE_TOO_LARGE",
                format!("{e}; nothing was stored"),
            )
        })?;
        for s in segments {
            self.write(s).await?;
        }
        Ok(())
    }

    async fn write(&mut self, segment: EncodedSegment) -> Result<(), GatewayError> {
        while self.writes.len() >= WRITES_IN_FLIGHT {
            self.collect_one().await?;
        }
        let gw = Arc::clone(&self.gw);
        let state = Arc::clone(&self.state);
        let placer = Arc::clone(&self.placer);
        let written = Arc::clone(&self.written);
        let key = self.object_key;
        let task = tokio::spawn(async move {
            write_segment(&gw, &state, &placer, key, segment, &written).await
        });
        self.aborts.push(task.abort_handle());
        self.writes.push_back(task);
        Ok(())
    }

    async fn collect_one(&mut self) -> Result<(), GatewayError> {
        if let Some(r) = self.writes.next().await {
            let seg =
                r.map_err(|e| GatewayError::Internal(format!("write task failed: {e}")))??;
            self.done.push(seg);
        }
        Ok(())
    }

    /// Seals and encodes the tail, waits for every write and the
    /// validator.
    async fn finish(&mut self) -> Result<Finished, GatewayError> {
        let (sealer, mut encoder) = self
            .coder
            .take()
            .ok_or_else(|| GatewayError::Internal("encoder used after an error".into()))?;
        let (segments, plain, digest) = tokio::task::spawn_blocking(move || {
            let mut sealed = Vec::with_capacity(kura_seal::CHUNK_SEALED);
            let (plain_blake3, plain_len) =
                sealer.finish(&mut sealed).map_err(|e| e.to_string())?;
            let mut segments = encoder.push(&sealed).map_err(|e| e.to_string())?;
            let (tail, digest) = encoder.finish().map_err(|e| e.to_string())?;
            segments.extend(tail);
            Ok::<_, String>((segments, (plain_blake3, plain_len), digest))
        })
        .await
        .map_err(|e| GatewayError::Internal(format!("encode task failed: {e}")))?
        .map_err(|e| {
            GatewayError::invalid(
                "chunk",
                "INSTANCE_TOO_LARGE",
                format!("cannot seal or encode the last segment: {e}; nothing was stored"),
            )
        })?;
        let summary = self.validator.verdict().await?;
        if summary.instance_bytes != plain.1 {
            return Err(GatewayError::invalid(
                "chunk",
                "DICOM_TRAILING_BYTES",
                format!(
                    "the DICOM data ends after {} bytes but {} arrived; nothing was stored",
                    summary.instance_bytes, plain.1
                ),
            ));
        }
        for s in segments {
            self.write(s).await?;
        }
        while !self.writes.is_empty() {
            self.collect_one().await?;
        }
        Ok(Finished {
            segments: std::mem::take(&mut self.done),
            plain_blake3: plain.0,
            plain_size: plain.1,
            sealed_size: digest.len,
        })
    }

    /// Gives up: stops the writers and deletes what they wrote.
    fn abandon(&mut self) {
        for a in self.aborts.drain(..) {
            a.abort();
        }
        self.writes = FuturesOrdered::new();
        let targets = std::mem::take(
            &mut *self
                .written
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        spawn_deletes(&self.gw, &self.state, targets);
    }
}

/// How long a segment's shard writes may go without k + 1 of them durable
/// before the unanswered ones are sent to other nodes as well.
const STALL: std::time::Duration = std::time::Duration::from_secs(1);

/// A node for shard `i` of segment `segment` other than those in `asked`:
/// the one placement picks with the suspect nodes left out, else any
/// writable node (protection is then judged from where the shards ended
/// up).
fn another_node(
    gw: &Arc<Inner>,
    state: &ClusterState,
    key: &ObjectKey,
    segment: u32,
    i: usize,
    asked: &[u64],
    away_from: &[String],
) -> Option<u64> {
    let map = gw
        .cluster
        .avoiding_suspects(&state.map)
        .unwrap_or_else(|| state.map.clone());
    let preferred = Placer::new(&map, &state.profile)
        .ok()
        .map(|p| p.place(key, segment))
        .and_then(|p| u8::try_from(i).ok().and_then(|i| p.holder(i)));
    let writable = map
        .nodes
        .values()
        .filter(|n| n.state.writable())
        .map(|n| n.id);
    let candidates: Vec<u64> = preferred
        .into_iter()
        .chain(writable)
        .filter(|n| !asked.contains(n))
        .collect();
    let away = |n: &u64| {
        map.node(*n)
            .is_some_and(|info| away_from.contains(&info.site))
    };
    candidates
        .iter()
        .find(|n| !away(n))
        .or_else(|| candidates.first())
        .copied()
}

/// Places one segment and writes its shards in parallel. Succeeds when the
/// write quorum is durable (`kura_placement::WriteQuorum`: k + 1 shards, k
/// when m is 0); the others get the straggler grace, then are recorded as
/// unplaced, which makes the instance under-protected.
async fn write_segment(
    gw: &Arc<Inner>,
    state: &Arc<ClusterState>,
    placer: &Placer,
    key: ObjectKey,
    segment: EncodedSegment,
    written: &std::sync::Mutex<Vec<(u64, ShardId)>>,
) -> Result<SegmentManifest, GatewayError> {
    let placement = placer.place(&key, segment.index);
    let ec: EcParams = state.profile;
    let (seg_index, data_len) = (segment.index, segment.data_len);
    // Keep only what the manifest needs; each shard's bytes live once, in
    // the put that sends them.
    let locations: Vec<(u8, [u8; 32], u32)> = segment
        .shards
        .iter()
        .map(|s| {
            (
                s.header.shard_index,
                s.header.payload_blake3,
                s.header.payload_len,
            )
        })
        .collect();
    // The encoded shards (cheap clones): a shard whose put failed or
    // stalled is sent to another node.
    let encoded: Vec<Bytes> = segment
        .shards
        .into_iter()
        .map(|shard| Bytes::from(shard.encode_to_vec()))
        .collect();
    let total = ec.total_shards();
    let put = |i: usize, node: u64| {
        let bytes = encoded.get(i).cloned().unwrap_or_default();
        let index = locations.get(i).map_or(0, |l| l.0);
        async move {
            let ok = match state.map.node(node).map(|info| gw.cluster.client(info)) {
                Some(Ok(client)) => match client.put_shard(bytes, false).await {
                    Ok(_) => {
                        gw.cluster.cleared(node);
                        true
                    }
                    Err(e) => {
                        metrics::counter!("kura_gateway_shard_write_failures_total").increment(1);
                        tracing::warn!(node, segment = seg_index, shard = index, error = %e, "shard write failed");
                        gw.cluster.suspect(node, "a shard write failed");
                        false
                    }
                },
                _ => false,
            };
            (i, node, ok)
        }
    };
    // Every node asked for a shard of this segment (no node may hold two).
    let mut asked: Vec<u64> = Vec::new();
    // Puts not answered yet: (shard, node).
    let mut owing: Vec<(usize, u64)> = Vec::new();
    let mut pending = futures::stream::FuturesUnordered::new();
    for (i, (index, _, _)) in locations.iter().enumerate() {
        if let Some(node) = placement.holder(*index) {
            asked.push(node);
            owing.push((i, node));
            pending.push(put(i, node));
        }
    }
    // Once the quorum is durable, the others get the straggler grace, then
    // count as unplaced (repair places them): a storage node that holds
    // its connections but never answers (hung, or cut off) must not hold
    // up every store for a whole call timeout. Found by the chaos suite.
    // Before that, a shard whose put failed, or is still unanswered after
    // STALL, goes to another node once.
    let quorum = WriteQuorum::of(ec);
    let started = tokio::time::Instant::now();
    let mut holders: Vec<Option<u64>> = vec![None; total];
    let mut replaced = vec![false; total];
    let mut durable = 0usize;
    let mut grace_end: Option<tokio::time::Instant> = None;
    let mut stall_at = Some(started + STALL);
    let mut stalled = false;
    loop {
        let deadline = match (grace_end, stall_at) {
            (Some(g), _) => Some(g),
            (None, s) => s,
        };
        let next = match deadline {
            None => futures::StreamExt::next(&mut pending).await,
            Some(at) => {
                match tokio::time::timeout_at(at, futures::StreamExt::next(&mut pending)).await {
                    Ok(n) => n,
                    Err(_) if grace_end.is_some() => {
                        tracing::warn!(
                            segment = seg_index,
                            stragglers = pending.len(),
                            "shard writes still unanswered after the grace: stored under-protected"
                        );
                        metrics::counter!("kura_gateway_shard_write_failures_total")
                            .increment(pending.len() as u64);
                        // The next stores place around them at once.
                        for &(_, node) in &owing {
                            gw.cluster
                                .suspect(node, "a shard write missed the straggler grace");
                        }
                        break;
                    }
                    Err(_) => {
                        // Stalled before enough shards were durable: every
                        // node still owing an answer is suspect, and the
                        // shards without a holder go to other nodes too
                        // (away from the stalled nodes' sites where it can:
                        // a site cut off takes all its nodes). Again after
                        // another STALL if that did not do it either.
                        stall_at = Some(tokio::time::Instant::now() + STALL);
                        stalled = true;
                        for &(i, node) in &owing {
                            if holders.get(i).is_some_and(Option::is_none) {
                                gw.cluster.suspect(node, "a shard write stalled");
                            }
                        }
                        let away: Vec<String> = owing
                            .iter()
                            .filter_map(|&(_, n)| state.map.node(n).map(|n| n.site.clone()))
                            .collect();
                        let homeless: Vec<usize> = holders
                            .iter()
                            .enumerate()
                            .filter(|(i, h)| {
                                h.is_none() && owing.iter().filter(|o| o.0 == *i).count() <= 1
                            })
                            .map(|(i, _)| i)
                            .collect();
                        for i in homeless {
                            if let Some(alt) =
                                another_node(gw, state, &key, seg_index, i, &asked, &away)
                            {
                                asked.push(alt);
                                owing.push((i, alt));
                                metrics::counter!("kura_gateway_shard_writes_replaced_total")
                                    .increment(1);
                                pending.push(put(i, alt));
                            }
                        }
                        continue;
                    }
                }
            }
        };
        let Some((i, node, ok)) = next else { break };
        owing.retain(|&o| o != (i, node));
        if !ok {
            // A failed put goes to another node at once (once).
            if holders.get(i).is_some_and(Option::is_none)
                && !replaced.get(i).copied().unwrap_or(true)
                && grace_end.is_none()
                && let Some(alt) = another_node(gw, state, &key, seg_index, i, &asked, &[])
            {
                replaced[i] = true;
                asked.push(alt);
                owing.push((i, alt));
                metrics::counter!("kura_gateway_shard_writes_replaced_total").increment(1);
                pending.push(put(i, alt));
            }
            continue;
        }
        let Some(slot) = holders.get_mut(i) else {
            continue;
        };
        if slot.is_some() {
            // The stalled put landed after all: a spare copy, unreferenced
            // by the manifest, reclaimed after the orphan grace.
            continue;
        }
        *slot = Some(node);
        durable += 1;
        if quorum.met(durable) && grace_end.is_none() {
            let grace =
                quorum.straggler_grace(started.elapsed(), stalled, gw.config.straggler_grace);
            grace_end = Some(tokio::time::Instant::now() + grace);
        }
        if holders.iter().all(Option::is_some) {
            break;
        }
    }
    drop(pending);
    {
        let mut w = written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (i, h) in holders.iter().enumerate() {
            if let Some(node) = h {
                w.push((
                    *node,
                    ShardId {
                        object_key: key,
                        segment: seg_index,
                        index: i as u8,
                    },
                ));
            }
        }
    }
    let placed = holders.iter().flatten().count();
    if let Err(short) = quorum.check(placed) {
        return Err(GatewayError::Unavailable(format!(
            "segment {seg_index}: {short}; nothing was stored"
        )));
    }
    metrics::counter!("kura_gateway_shards_written_total").increment(placed as u64);
    Ok(SegmentManifest {
        index: seg_index,
        data_len,
        shards: locations
            .into_iter()
            .zip(holders)
            .map(|((index, blake3, len), node)| ShardLocation {
                index,
                node,
                blake3,
                len,
            })
            .collect(),
    })
}

/// A blocking `Read` over the chunks the request task sends.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(c) => self.current = c,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        bytes::Buf::advance(&mut self.current, n);
        Ok(n)
    }
}

fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

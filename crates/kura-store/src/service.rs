//! [`ShardsService`]: the `kura.v1.internal.Shards` gRPC service over a
//! [`ShardStore`]. It checks requests at the edge, buffers at most one
//! shard per request (never more than [`SHARD_BYTES_MAX`]), bounds the
//! shard bytes buffered by all requests together with a byte budget, and
//! runs every disk operation (and every hash) on the blocking pool.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kura_auth::Transport;
use kura_erasure::SHARD_HEADER_BYTES;
use kura_proto::shards_client::{
    CHUNK_BYTES_MAX, SHARD_BYTES_MAX, ShardId, ShardsClient, blake3_field, required_id,
};
use kura_proto::v1::internal as pb;
use kura_proto::v1::internal::shards_server::Shards;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::error::StoreError;
use crate::store::ShardStore;

/// How long a put stream may stay silent between two messages before the
/// node gives up on it (and frees its buffer).
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The unit of the buffer budget: a request holding `n` bytes takes
/// `ceil(n / BUFFER_UNIT_BYTES)` permits.
pub const BUFFER_UNIT_BYTES: u64 = 1024 * 1024;

/// The Shards service of one node. Cheap to clone; clones share the store,
/// the buffer budget and the closing flag.
#[derive(Clone)]
pub struct ShardsService {
    node_id: u64,
    /// How this node calls its peers (rebuild).
    pub(crate) transport: Transport,
    store: Arc<ShardStore>,
    shared: Arc<Shared>,
}

struct Shared {
    /// Set at shutdown: new requests are refused with UNAVAILABLE.
    closing: AtomicBool,
    /// Shard bytes that puts and gets may hold in memory at once, in
    /// [`BUFFER_UNIT_BYTES`]. A request takes its shard's length before it
    /// buffers anything and gives it back when its buffer is dropped; the
    /// others wait. Counting bytes, not requests, bounds memory whether
    /// shards are 64 KiB or 64 MiB.
    budget: Arc<Semaphore>,
    budget_units: u32,
    /// Clients of other nodes, for rebuilds (keyed by address).
    peers: Mutex<HashMap<String, ShardsClient>>,
    /// The scrubber's counters and wake-up, once it runs.
    scrub: std::sync::OnceLock<(Arc<crate::scrub::ScrubStatus>, bool)>,
}

impl ShardsService {
    /// A service over `store` whose requests together buffer at most
    /// `buffer_bytes_max` of shard bytes (raised to [`SHARD_BYTES_MAX`] if
    /// lower, so that every shard can be served).
    pub fn new(
        node_id: u64,
        store: Arc<ShardStore>,
        buffer_bytes_max: u64,
        transport: Transport,
    ) -> Self {
        let units = buffer_bytes_max
            .max(SHARD_BYTES_MAX)
            .div_ceil(BUFFER_UNIT_BYTES)
            .min(u64::from(u32::MAX >> 3));
        // units <= u32::MAX >> 3: fits u32, and below the semaphore's limit.
        let budget_units = units as u32;
        Self {
            node_id,
            transport,
            store,
            shared: Arc::new(Shared {
                closing: AtomicBool::new(false),
                budget: Arc::new(Semaphore::new(budget_units as usize)),
                budget_units,
                peers: Mutex::new(HashMap::new()),
                scrub: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Connects the scrubber (`scrubbing`: its rate is not 0) for ScrubNow.
    pub fn set_scrub(&self, status: Arc<crate::scrub::ScrubStatus>, scrubbing: bool) {
        let _ = self.shared.scrub.set((status, scrubbing));
    }

    /// Refuses every request from now on (UNAVAILABLE); requests already
    /// running finish.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.budget.close();
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.shared.closing.load(Ordering::SeqCst) {
            return Err(StoreError::ShuttingDown);
        }
        Ok(())
    }

    pub(crate) fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<String, ShardsClient>> {
        self.shared
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until `length` bytes of buffer are free and takes them.
    pub(crate) async fn buffer(&self, length: u64) -> Result<OwnedSemaphorePermit, StoreError> {
        self.check_open()?;
        let units = length
            .div_ceil(BUFFER_UNIT_BYTES)
            .clamp(1, u64::from(self.shared.budget_units));
        // units <= budget_units, a u32.
        Arc::clone(&self.shared.budget)
            .acquire_many_owned(units as u32)
            .await
            .map_err(|_| StoreError::ShuttingDown)
    }

    /// Runs `f` on the blocking pool: every store call touches the disk.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ShardStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        // No closing check here: a request that was admitted finishes
        // within the shutdown grace period.
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Internal(format!("store task failed: {e}")))?
    }

    async fn put(
        &self,
        mut stream: Streaming<pb::PutShardRequest>,
    ) -> Result<pb::PutShardResponse, StoreError> {
        let header = match next_message(&mut stream).await? {
            Some(pb::PutShardRequest {
                msg: Some(pb::put_shard_request::Msg::Header(h)),
            }) => h,
            Some(_) => {
                return Err(StoreError::InvalidArgument(
                    "the first message of a put must be its header".into(),
                ));
            }
            None => {
                return Err(StoreError::InvalidArgument(
                    "the put stream ended before its header".into(),
                ));
            }
        };
        let id = required_id(header.id.as_ref(), "header.id")?;
        let payload_blake3 = blake3_field(&header.payload_blake3, "header.payload_blake3")?;
        let length = header.length;
        if length < SHARD_HEADER_BYTES as u64 || length > SHARD_BYTES_MAX {
            return Err(StoreError::InvalidArgument(format!(
                "shard {id}: length {length} is outside {SHARD_HEADER_BYTES}..={SHARD_BYTES_MAX} bytes"
            )));
        }
        // Refuse a full node before the client sends its bytes.
        self.blocking(move |store| store.check_space(length))
            .await?;
        let _buffer = self.buffer(length).await?;
        // length <= SHARD_BYTES_MAX, which fits usize.
        let mut bytes = Vec::with_capacity(length as usize);
        while let Some(message) = next_message(&mut stream).await? {
            let chunk = match message.msg {
                Some(pb::put_shard_request::Msg::Chunk(c)) => c,
                _ => {
                    return Err(StoreError::InvalidArgument(format!(
                        "shard {id}: only the first message of a put may be a header"
                    )));
                }
            };
            if chunk.len() > CHUNK_BYTES_MAX {
                return Err(StoreError::InvalidArgument(format!(
                    "shard {id}: a chunk of {} bytes exceeds {CHUNK_BYTES_MAX}",
                    chunk.len()
                )));
            }
            if (bytes.len() + chunk.len()) as u64 > length {
                return Err(StoreError::InvalidArgument(format!(
                    "shard {id}: the stream runs past the announced {length} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        if bytes.len() as u64 != length {
            return Err(StoreError::InvalidArgument(format!(
                "shard {id}: the stream ended after {} of the announced {length} bytes",
                bytes.len()
            )));
        }
        let overwrite = header.overwrite;
        let outcome = self
            .blocking(move |store| store.put(&id, &bytes, &payload_blake3, overwrite))
            .await?;
        Ok(pb::PutShardResponse {
            info: Some(outcome.info.to_proto()),
            already_present: outcome.already_present,
        })
    }

    async fn get(
        &self,
        request: pb::GetShardRequest,
    ) -> Result<ResponseStream<pb::GetShardResponse>, StoreError> {
        let id = required_id(request.id.as_ref(), "id")?;
        // The index says how much to buffer; a concurrent overwrite may
        // change it, which the read notices (the length is checked against
        // the record it reads).
        let length = self.blocking(move |store| store.stat(&id)).await?.length;
        let buffer = self.buffer(length).await?;
        let shard = self.blocking(move |store| store.get(&id)).await?;
        let total = shard.bytes.len() as u64;
        let offset = request.offset.unwrap_or(0);
        if offset > total {
            return Err(StoreError::OutOfRange {
                id,
                offset,
                length: total,
            });
        }
        let end = match request.length {
            Some(len) => offset.saturating_add(len).min(total),
            None => total,
        };
        let mut messages =
            Vec::with_capacity(1 + ((end - offset) as usize).div_ceil(CHUNK_BYTES_MAX));
        messages.push(pb::GetShardResponse {
            msg: Some(pb::get_shard_response::Msg::Info(pb::GetShardInfo {
                shard: Some(shard.info.to_proto()),
                range_offset: offset,
                range_length: end - offset,
            })),
        });
        // Chunks are slices of the one verified buffer, not copies.
        let bytes = Bytes::from(shard.bytes);
        // offset <= end <= total = bytes.len(): these fit usize.
        let (mut at, end) = (offset as usize, end as usize);
        while at < end {
            let next = (at + CHUNK_BYTES_MAX).min(end);
            messages.push(pb::GetShardResponse {
                msg: Some(pb::get_shard_response::Msg::Chunk(bytes.slice(at..next))),
            });
            at = next;
        }
        tracing::debug!(shard = %id, total, offset, length = end as u64 - offset, "shard read");
        // The budget is given back when the stream (and so the buffer) is
        // dropped.
        let stream = tokio_stream::iter(messages).map(move |m| {
            let _held = &buffer;
            Ok(m)
        });
        Ok(Box::pin(stream))
    }
}

/// The next message of a client stream, or `None` at its end. A client
/// silent for [`STREAM_IDLE_TIMEOUT`] is given up on.
async fn next_message<T>(stream: &mut Streaming<T>) -> Result<Option<T>, StoreError> {
    match tokio::time::timeout(STREAM_IDLE_TIMEOUT, stream.message()).await {
        Ok(Ok(message)) => Ok(message),
        Ok(Err(status)) => Err(StoreError::InvalidArgument(format!(
            "the put stream failed: {}: {}",
            status.code(),
            status.message()
        ))),
        Err(_) => Err(StoreError::InvalidArgument(format!(
            "the put stream sent nothing for {STREAM_IDLE_TIMEOUT:?}"
        ))),
    }
}

/// Logs an error where the service hands it back, at a level that says
/// whose fault it is, and converts it.
/// This node's reads for a gateway in the same process
/// ([`kura_proto::local`]): the same checks and quarantine as GetShard,
/// without the socket.
pub(crate) struct InProcessReads(pub(crate) ShardsService);

impl kura_proto::local::LocalShardReader for InProcessReads {
    fn read_shard(&self, id: &ShardId) -> Result<Bytes, Status> {
        self.0.check_open().map_err(|e| reply("get", e))?;
        let shard = self.0.store.get(id).map_err(|e| reply("get", e))?;
        tracing::debug!(shard = %id, total = shard.bytes.len(), "shard read in process");
        Ok(Bytes::from(shard.bytes))
    }
}

fn reply(op: &'static str, e: StoreError) -> Status {
    match &e {
        StoreError::Io { .. } | StoreError::Index(_) | StoreError::Internal(_) => {
            tracing::error!(op, error = %e, "shard request failed")
        }
        // Logged with its details when it was quarantined.
        StoreError::Corrupt { .. } => {
            tracing::warn!(op, error = %e, "refused to serve a corrupt shard")
        }
        StoreError::Full { .. } => tracing::warn!(op, error = %e, "shard refused"),
        _ => tracing::debug!(op, error = %e, "shard request refused"),
    }
    e.into()
}

#[tonic::async_trait]
impl Shards for ShardsService {
    async fn put_shard(
        &self,
        request: Request<Streaming<pb::PutShardRequest>>,
    ) -> Result<Response<pb::PutShardResponse>, Status> {
        self.check_open().map_err(|e| reply("put", e))?;
        self.put(request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| reply("put", e))
    }

    type GetShardStream = ResponseStream<pb::GetShardResponse>;

    async fn get_shard(
        &self,
        request: Request<pb::GetShardRequest>,
    ) -> Result<Response<Self::GetShardStream>, Status> {
        let run = async {
            self.check_open()?;
            self.get(request.into_inner()).await
        };
        run.await.map(Response::new).map_err(|e| reply("get", e))
    }

    async fn delete_shard(
        &self,
        request: Request<pb::DeleteShardRequest>,
    ) -> Result<Response<pb::DeleteShardResponse>, Status> {
        let run = async {
            self.check_open()?;
            let id = required_id(request.get_ref().id.as_ref(), "id")?;
            let existed = self.blocking(move |store| store.delete(&id)).await?;
            Ok(pb::DeleteShardResponse { existed })
        };
        run.await.map(Response::new).map_err(|e| reply("delete", e))
    }

    async fn stat_shard(
        &self,
        request: Request<pb::StatShardRequest>,
    ) -> Result<Response<pb::ShardInfo>, Status> {
        let run = async {
            self.check_open()?;
            let id = required_id(request.get_ref().id.as_ref(), "id")?;
            let info = self.blocking(move |store| store.stat(&id)).await?;
            Ok(info.to_proto())
        };
        run.await.map(Response::new).map_err(|e| reply("stat", e))
    }

    type ListShardsStream = ResponseStream<pb::ShardInfo>;

    async fn list_shards(
        &self,
        request: Request<pb::ListShardsRequest>,
    ) -> Result<Response<Self::ListShardsStream>, Status> {
        let run = async {
            self.check_open()?;
            let request = request.into_inner();
            let after: Option<ShardId> = match &request.after {
                Some(a) => Some(ShardId::try_from(a)?),
                None => None,
            };
            let limit = request.limit;
            let page = self
                .blocking(move |store| store.list(after.as_ref(), limit))
                .await?;
            let stream = tokio_stream::iter(page.into_iter().map(|info| Ok(info.to_proto())));
            Ok(Box::pin(stream) as Self::ListShardsStream)
        };
        run.await.map(Response::new).map_err(|e| reply("list", e))
    }

    async fn rebuild_shards(
        &self,
        request: Request<pb::RebuildShardsRequest>,
    ) -> Result<Response<pb::RebuildShardsResponse>, Status> {
        let run = async {
            self.check_open()?;
            self.rebuild(request.into_inner()).await
        };
        run.await
            .map(Response::new)
            .map_err(|e| reply("rebuild", e))
    }

    async fn scrub_now(
        &self,
        _request: Request<pb::ScrubNowRequest>,
    ) -> Result<Response<pb::ScrubNowResponse>, Status> {
        self.check_open().map_err(|e| reply("scrub", e))?;
        let scrubbing = match self.shared.scrub.get() {
            Some((status, scrubbing)) => {
                status.wake.notify_one();
                *scrubbing
            }
            None => false,
        };
        Ok(Response::new(pb::ScrubNowResponse { scrubbing }))
    }

    async fn node_status(
        &self,
        _request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        let node_id = self.node_id;
        let run = async {
            self.check_open()?;
            self.blocking(move |store| store.status(node_id)).await
        };
        run.await
            .map(|s| Response::new(pb::NodeStatusResponse::from(&s)))
            .map_err(|e| reply("status", e))
    }
}

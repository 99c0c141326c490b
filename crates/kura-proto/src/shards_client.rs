//! The storage node's `kura.v1.internal.Shards` service from the caller's
//! side: the limits both ends share, the strict domain types its messages
//! convert into ([`ShardId`], [`ShardInfo`]), and [`ShardsClient`], a thin
//! client that streams a shard up or down with timeouts.
//!
//! The limits live here, not in the storage node, because the gateway and
//! the node must agree on them and roles never link each other.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kura_auth::Transport;
use kura_erasure::{ObjectKey, SEGMENT_BYTES_MAX, SHARD_HEADER_BYTES, ShardError, ShardHeader};
use tonic::transport::Channel;

use crate::v1::internal as pb;
use crate::v1::internal::shards_client::ShardsClient as GrpcShardsClient;

/// The largest encoded shard (header + payload) a node accepts: a whole
/// maximal segment in one shard (k = 1; its payload is already a multiple
/// of the alignment) plus the header.
pub const SHARD_BYTES_MAX: u64 = SEGMENT_BYTES_MAX as u64 + SHARD_HEADER_BYTES as u64;
/// The largest data chunk in a PutShard or GetShard stream.
pub const CHUNK_BYTES_MAX: usize = 1024 * 1024;
/// The largest gRPC message either end accepts: one chunk plus room for the
/// message framing and a header message.
pub const MESSAGE_BYTES_MAX: usize = CHUNK_BYTES_MAX + 64 * 1024;
/// Most entries in one ListShards page.
pub const LIST_PAGE_MAX: u32 = 10_000;
/// HTTP/2 flow-control windows for shard streams, on both ends. With the
/// defaults (64 KiB) streaming 1 MiB messages runs 10-50x slower (see
/// FACTS.md); these let a whole chunk be in flight per stream.
pub const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// See [`STREAM_WINDOW_BYTES`]; a connection carries several streams.
pub const CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
/// How long connecting to a node may take.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
/// How long one call (a whole shard up or down) may take by default:
/// a 64 MiB shard at a slow 10 MB/s still fits.
pub const CALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

const _: () = assert!(SHARD_BYTES_MAX <= u32::MAX as u64);
const _: () = assert!(MESSAGE_BYTES_MAX > CHUNK_BYTES_MAX);
const _: () = assert!(STREAM_WINDOW_BYTES as usize >= CHUNK_BYTES_MAX);
const _: () = assert!(CONNECTION_WINDOW_BYTES >= STREAM_WINDOW_BYTES);

/// A message field that does not hold what the service promises.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field,
        reason: reason.into(),
    }
}

/// Names one shard: object key, segment index, shard index. Orders like the
/// node's listing (key bytes, then segment, then index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId {
    pub object_key: ObjectKey,
    pub segment: u32,
    pub index: u8,
}

impl ShardId {
    /// The id a shard's header names.
    pub fn of(header: &ShardHeader) -> Self {
        Self {
            object_key: header.object_key,
            segment: header.segment_index,
            index: header.shard_index,
        }
    }

    pub fn to_proto(&self) -> pb::ShardId {
        pb::ShardId {
            object_key: Bytes::copy_from_slice(&self.object_key),
            segment: self.segment,
            index: u32::from(self.index),
        }
    }
}

/// `object-key-hex/segment/index`, as logs and messages print it.
impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.object_key {
            write!(f, "{b:02x}")?;
        }
        write!(f, "/{}/{}", self.segment, self.index)
    }
}

impl TryFrom<&pb::ShardId> for ShardId {
    type Error = InvalidField;

    fn try_from(id: &pb::ShardId) -> Result<Self, InvalidField> {
        let object_key: ObjectKey = id.object_key.as_ref().try_into().map_err(|_| {
            invalid(
                "id.object_key",
                format!("must be 32 bytes, got {}", id.object_key.len()),
            )
        })?;
        let index = u8::try_from(id.index)
            .map_err(|_| invalid("id.index", format!("{} is above 255", id.index)))?;
        Ok(Self {
            object_key,
            segment: id.segment,
            index,
        })
    }
}

/// Converts a required `ShardId` field.
pub fn required_id(id: Option<&pb::ShardId>, field: &'static str) -> Result<ShardId, InvalidField> {
    ShardId::try_from(id.ok_or_else(|| invalid(field, "missing"))?)
}

/// Converts a 32-byte blake3 field.
pub fn blake3_field(bytes: &[u8], field: &'static str) -> Result<[u8; 32], InvalidField> {
    bytes
        .try_into()
        .map_err(|_| invalid(field, format!("must be 32 bytes, got {}", bytes.len())))
}

/// Whether a stored shard may be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardState {
    Ok,
    /// Failed its checks on a read; quarantined, never served.
    Corrupt,
}

impl ShardState {
    pub fn to_proto(self) -> pb::ShardState {
        match self {
            ShardState::Ok => pb::ShardState::Ok,
            ShardState::Corrupt => pb::ShardState::Corrupt,
        }
    }
}

/// What a node records about one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    pub id: ShardId,
    /// Encoded length (header + payload), bytes.
    pub length: u64,
    pub payload_blake3: [u8; 32],
    pub state: ShardState,
    pub stored_at_unix_ms: i64,
}

impl ShardInfo {
    pub fn to_proto(&self) -> pb::ShardInfo {
        pb::ShardInfo {
            id: Some(self.id.to_proto()),
            length: self.length,
            payload_blake3: Bytes::copy_from_slice(&self.payload_blake3),
            state: self.state.to_proto() as i32,
            stored_at_unix_ms: self.stored_at_unix_ms,
        }
    }
}

impl TryFrom<&pb::ShardInfo> for ShardInfo {
    type Error = InvalidField;

    fn try_from(info: &pb::ShardInfo) -> Result<Self, InvalidField> {
        let state = match pb::ShardState::try_from(info.state) {
            Ok(pb::ShardState::Ok) => ShardState::Ok,
            Ok(pb::ShardState::Corrupt) => ShardState::Corrupt,
            _ => {
                return Err(invalid(
                    "state",
                    format!("unknown shard state {}", info.state),
                ));
            }
        };
        Ok(Self {
            id: required_id(info.id.as_ref(), "id")?,
            length: info.length,
            payload_blake3: blake3_field(&info.payload_blake3, "payload_blake3")?,
            state,
            stored_at_unix_ms: info.stored_at_unix_ms,
        })
    }
}

/// What a storage node reports about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub node_id: u64,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub shard_count: u64,
    pub corrupt_count: u64,
}

impl From<&pb::NodeStatusResponse> for NodeStatus {
    fn from(s: &pb::NodeStatusResponse) -> Self {
        Self {
            node_id: s.node_id,
            capacity_bytes: s.capacity_bytes,
            used_bytes: s.used_bytes,
            shard_count: s.shard_count,
            corrupt_count: s.corrupt_count,
        }
    }
}

impl From<&NodeStatus> for pb::NodeStatusResponse {
    fn from(s: &NodeStatus) -> Self {
        Self {
            node_id: s.node_id,
            capacity_bytes: s.capacity_bytes,
            used_bytes: s.used_bytes,
            shard_count: s.shard_count,
            corrupt_count: s.corrupt_count,
        }
    }
}

/// The answer to a put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    pub info: ShardInfo,
    /// Identical bytes were already stored; nothing was written.
    pub already_present: bool,
}

/// Why a call to a storage node failed.
#[derive(Debug, thiserror::Error)]
pub enum ShardsClientError {
    /// The bytes given to `put_shard` are not a shard (checked before
    /// anything is sent).
    #[error("not a valid shard: {0}")]
    InvalidShard(#[from] ShardError),
    /// A caller argument is out of range (e.g. a shard larger than
    /// [`SHARD_BYTES_MAX`]).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The node answered with an error status.
    #[error("storage node: {}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// The node's answer broke the protocol (missing info, a range of
    /// another length, a malformed field).
    #[error("storage node broke the protocol: {0}")]
    Protocol(String),
    /// No answer within the call timeout.
    #[error("no answer from the storage node within {0:?}")]
    Timeout(Duration),
}

impl ShardsClientError {
    /// The gRPC code, where the node answered one (`DataLoss`, `NotFound`,
    /// ...), so callers can tell a corrupt shard from an absent one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ShardsClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

impl From<tonic::Status> for ShardsClientError {
    fn from(s: tonic::Status) -> Self {
        ShardsClientError::Status(s)
    }
}

fn protocol(e: impl fmt::Display) -> ShardsClientError {
    ShardsClientError::Protocol(e.to_string())
}

/// A client of one storage node. Cheap to clone; clones share the
/// connection. Connects lazily, on the first call.
#[derive(Clone)]
pub struct ShardsClient {
    grpc: GrpcShardsClient<Channel>,
    call_timeout: Duration,
}

impl ShardsClient {
    /// A client of the node at `addr` (`host:port`) over `transport`,
    /// with the default timeouts.
    pub fn new(addr: &str, transport: &Transport) -> Result<Self, ShardsClientError> {
        Self::with_timeouts(
            addr,
            transport,
            CONNECT_TIMEOUT_DEFAULT,
            CALL_TIMEOUT_DEFAULT,
        )
    }

    /// As [`ShardsClient::new`], with explicit timeouts.
    pub fn with_timeouts(
        addr: &str,
        transport: &Transport,
        connect_timeout: Duration,
        call_timeout: Duration,
    ) -> Result<Self, ShardsClientError> {
        let endpoint = transport
            .endpoint(addr)
            .map_err(|e| ShardsClientError::InvalidArgument(e.to_string()))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        Ok(Self::from_channel(endpoint.connect_lazy(), call_timeout))
    }

    /// A client over an existing channel (tests, or a caller sharing
    /// channels).
    pub fn from_channel(channel: Channel, call_timeout: Duration) -> Self {
        let grpc = GrpcShardsClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        Self { grpc, call_timeout }
    }

    /// Stores `shard` (its encoded bytes). Its id and payload blake3 are
    /// taken from its header, which is checked first; nothing is sent for
    /// bytes that are not a shard.
    pub async fn put_shard(
        &self,
        shard: Bytes,
        overwrite: bool,
    ) -> Result<PutOutcome, ShardsClientError> {
        let header = ShardHeader::decode(&shard)?;
        let length = shard.len() as u64;
        if length > SHARD_BYTES_MAX {
            return Err(ShardsClientError::InvalidArgument(format!(
                "shard of {length} bytes exceeds {SHARD_BYTES_MAX}"
            )));
        }
        let mut messages = Vec::with_capacity(1 + shard.len().div_ceil(CHUNK_BYTES_MAX));
        messages.push(pb::PutShardRequest {
            msg: Some(pb::put_shard_request::Msg::Header(pb::PutShardHeader {
                id: Some(ShardId::of(&header).to_proto()),
                length,
                payload_blake3: Bytes::copy_from_slice(&header.payload_blake3),
                overwrite,
            })),
        });
        let mut offset = 0;
        while offset < shard.len() {
            let end = (offset + CHUNK_BYTES_MAX).min(shard.len());
            messages.push(pb::PutShardRequest {
                msg: Some(pb::put_shard_request::Msg::Chunk(shard.slice(offset..end))),
            });
            offset = end;
        }
        let mut request = tonic::Request::new(tokio_stream::iter(messages));
        request.set_timeout(self.call_timeout);
        let mut grpc = self.grpc.clone();
        let response = self
            .timed(async move { grpc.put_shard(request).await })
            .await??
            .into_inner();
        let info = response
            .info
            .as_ref()
            .ok_or_else(|| protocol("PutShardResponse without info"))?;
        Ok(PutOutcome {
            info: ShardInfo::try_from(info).map_err(protocol)?,
            already_present: response.already_present,
        })
    }

    /// Reads a shard's encoded bytes, or the byte `range` of them (cut at
    /// the shard's end). The node verified the whole shard before sending;
    /// callers decoding a segment check it again.
    pub async fn get_shard(
        &self,
        id: &ShardId,
        range: Option<Range<u64>>,
    ) -> Result<(ShardInfo, Bytes), ShardsClientError> {
        let (offset, length) = match range {
            Some(r) if r.end < r.start => {
                return Err(ShardsClientError::InvalidArgument(format!(
                    "range {}..{} ends before it starts",
                    r.start, r.end
                )));
            }
            Some(r) => (Some(r.start), Some(r.end - r.start)),
            None => (None, None),
        };
        let mut request = tonic::Request::new(pb::GetShardRequest {
            id: Some(id.to_proto()),
            offset,
            length,
        });
        request.set_timeout(self.call_timeout);
        let mut grpc = self.grpc.clone();
        self.timed(async move {
            let mut stream = grpc.get_shard(request).await?.into_inner();
            let first = stream
                .message()
                .await?
                .ok_or_else(|| protocol("GetShard stream ended before its info"))?;
            let Some(pb::get_shard_response::Msg::Info(info)) = first.msg else {
                return Err(protocol("GetShard stream did not start with its info"));
            };
            let shard = ShardInfo::try_from(
                info.shard
                    .as_ref()
                    .ok_or_else(|| protocol("GetShardInfo without shard"))?,
            )
            .map_err(protocol)?;
            if info.range_length > SHARD_BYTES_MAX {
                return Err(protocol(format!(
                    "range of {} bytes exceeds {SHARD_BYTES_MAX}",
                    info.range_length
                )));
            }
            // range_length <= SHARD_BYTES_MAX < u32::MAX: fits usize.
            let want = info.range_length as usize;
            let mut out = BytesMut::with_capacity(want);
            while let Some(message) = stream.message().await? {
                let Some(pb::get_shard_response::Msg::Chunk(chunk)) = message.msg else {
                    return Err(protocol("GetShard sent a second info"));
                };
                if out.len() + chunk.len() > want {
                    return Err(protocol(format!(
                        "GetShard sent more than the announced {want} bytes"
                    )));
                }
                out.extend_from_slice(&chunk);
            }
            if out.len() != want {
                return Err(protocol(format!(
                    "GetShard sent {} of the announced {want} bytes",
                    out.len()
                )));
            }
            Ok((shard, out.freeze()))
        })
        .await?
    }

    /// Describes a shard from the node's index (`NotFound` if absent).
    pub async fn stat_shard(&self, id: &ShardId) -> Result<ShardInfo, ShardsClientError> {
        let mut request = tonic::Request::new(pb::StatShardRequest {
            id: Some(id.to_proto()),
        });
        request.set_timeout(self.call_timeout);
        let mut grpc = self.grpc.clone();
        let info = self
            .timed(async move { grpc.stat_shard(request).await })
            .await??
            .into_inner();
        ShardInfo::try_from(&info).map_err(protocol)
    }

    /// Asks the node to rebuild shards of one segment onto itself from the
    /// listed sources (see the `RebuildShards` RPC). `timeout` bounds the
    /// whole call: a rebuild reads up to k shards before it writes.
    pub async fn rebuild_shards(
        &self,
        request: pb::RebuildShardsRequest,
        timeout: Duration,
    ) -> Result<pb::RebuildShardsResponse, ShardsClientError> {
        let mut request = tonic::Request::new(request);
        request.set_timeout(timeout);
        let mut grpc = self.grpc.clone();
        Ok(
            tokio::time::timeout(timeout, async move { grpc.rebuild_shards(request).await })
                .await
                .map_err(|_| ShardsClientError::Timeout(timeout))??
                .into_inner(),
        )
    }

    /// Starts a scrub pass on the node now; answers whether it scrubs.
    pub async fn scrub_now(&self) -> Result<bool, ShardsClientError> {
        let mut request = tonic::Request::new(pb::ScrubNowRequest {});
        request.set_timeout(self.call_timeout);
        let mut grpc = self.grpc.clone();
        let response = self
            .timed(async move { grpc.scrub_now(request).await })
            .await??
            .into_inner();
        Ok(response.scrubbing)
    }

    /// Removes a shard; answers whether the node held it.
    pub async fn delete_shard(&self, id: &ShardId) -> Result<bool, ShardsClientError> {
        let mut request = tonic::Request::new(pb::DeleteShardRequest {
            id: Some(id.to_proto()),
        });
        request.set_timeout(self.call_timeout);
        let mut grpc = self.grpc.clone();
        let response = self
            .timed(async move { grpc.delete_shard(request).await })
            .await??
            .into_inner();
        Ok(response.existed)
    }

    /// One page of the node's shards after `after`, at most `limit` (0 or
    /// above [`LIST_PAGE_MAX`] means the maximum).
    pub async fn list_shards(
        &self,
        after: Option<&ShardId>,
        limit: u32,
    ) -> Result<Vec<ShardInfo>, ShardsClientError> {
        let mut request = tonic::Request::new(pb::ListShardsRequest {
            after: after.map(ShardId::to_proto),
            limit,
        });
        request.set_timeout(self.call_timeout);
        let mut grpc = self.grpc.clone();
        self.timed(async move {
            let mut stream = grpc.list_shards(request).await?.into_inner();
            let mut out = Vec::new();
            while let Some(info) = stream.message().await? {
                if out.len() >= LIST_PAGE_MAX as usize {
                    return Err(protocol(format!(
                        "ListShards sent more than {LIST_PAGE_MAX} entries"
                    )));
                }
                out.push(ShardInfo::try_from(&info).map_err(protocol)?);
            }
            Ok(out)
        })
        .await?
    }

    /// The node's id, capacity and counters.
    pub async fn node_status(&self) -> Result<NodeStatus, ShardsClientError> {
        let mut request = tonic::Request::new(pb::NodeStatusRequest {});
        request.set_timeout(self.call_timeout);
        let mut grpc = self.grpc.clone();
        let status = self
            .timed(async move { grpc.node_status(request).await })
            .await??
            .into_inner();
        Ok(NodeStatus::from(&status))
    }

    /// Runs `fut` under the call timeout. The gRPC deadline travels with
    /// the request too; this also bounds the time spent connecting and
    /// reading the response stream.
    async fn timed<T>(&self, fut: impl Future<Output = T>) -> Result<T, ShardsClientError> {
        tokio::time::timeout(self.call_timeout, fut)
            .await
            .map_err(|_| ShardsClientError::Timeout(self.call_timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_id_round_trips_and_prints() {
        let id = ShardId {
            object_key: std::array::from_fn(|i| i as u8),
            segment: 7,
            index: 3,
        };
        assert_eq!(ShardId::try_from(&id.to_proto()), Ok(id));
        assert_eq!(
            id.to_string(),
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f/7/3"
        );
    }

    #[test]
    fn malformed_ids_are_refused() {
        let mut pb = ShardId {
            object_key: [0; 32],
            segment: 0,
            index: 0,
        }
        .to_proto();
        pb.object_key = Bytes::from_static(&[1, 2, 3]);
        assert_eq!(
            ShardId::try_from(&pb).map_err(|e| e.field),
            Err("id.object_key")
        );
        let mut pb = ShardId {
            object_key: [0; 32],
            segment: 0,
            index: 0,
        }
        .to_proto();
        pb.index = 256;
        assert_eq!(ShardId::try_from(&pb).map_err(|e| e.field), Err("id.index"));
        assert!(required_id(None, "id").is_err());
    }

    #[test]
    fn ids_order_like_the_listing() {
        let a = ShardId {
            object_key: [0; 32],
            segment: 1,
            index: 9,
        };
        let b = ShardId {
            object_key: [0; 32],
            segment: 2,
            index: 0,
        };
        let mut key = [0; 32];
        key[0] = 1;
        let c = ShardId {
            object_key: key,
            segment: 0,
            index: 0,
        };
        assert!(a < b && b < c);
    }
}

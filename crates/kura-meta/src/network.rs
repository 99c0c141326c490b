//! The Raft transport over tonic: the client side openraft calls to reach
//! other voters, and the server side of `kura.v1.internal.Raft`.
//!
//! One HTTP/2 channel per peer address is kept and reused by every
//! replication stream to that peer. Every call carries openraft's deadline
//! (`RPCOption::hard_ttl`), so a hung peer costs a timeout, not a stuck
//! replication task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kura_auth::Transport;
use kura_proto::codec;
use kura_proto::v1::internal::RaftPayload;
use kura_proto::v1::internal::raft_client::RaftClient;
use kura_proto::v1::internal::raft_server::Raft as RaftService;
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Serialize, de::DeserializeOwned};
use tonic::transport::Channel;

use crate::types::{Raft, TypeConfig};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Creates openraft's per-peer clients; shares one channel per address.
#[derive(Clone)]
pub struct NetworkFactory {
    self_id: u64,
    transport: Transport,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl NetworkFactory {
    /// The transport of node `self_id`.
    pub fn new(self_id: u64, transport: Transport) -> Self {
        Self {
            self_id,
            transport,
            channels: Arc::default(),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| "raft channel cache poisoned".to_string())?;
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let ch = self
            .transport
            .endpoint(addr)
            .map_err(|e| format!("peer {addr}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(3))
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(8 << 20))
            .connect_lazy();
        channels.insert(addr.to_owned(), ch.clone());
        Ok(ch)
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            self_id: self.self_id,
            target,
            addr: node.addr.clone(),
            channel: self.channel(&node.addr),
        }
    }
}

/// openraft's client of one peer.
pub struct PeerClient {
    self_id: u64,
    target: u64,
    addr: String,
    channel: Result<Channel, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportFault(String);

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        which: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel = self
            .channel
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&TransportFault(e))))?;
        let bytes = codec::encode(req)
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportFault(e.to_string()))))?;
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(codec::PAYLOAD_BYTES_MAX as usize)
            .max_encoding_message_size(codec::PAYLOAD_BYTES_MAX as usize);
        let ttl = option.hard_ttl();
        let mut request = tonic::Request::new(RaftPayload {
            bincode: bytes.into(),
        });
        request.set_timeout(ttl);
        let fut = async {
            match which {
                "append" => client.append_entries(request).await,
                "vote" => client.vote(request).await,
                _ => client.install_snapshot(request).await,
            }
        };
        let resp = match tokio::time::timeout(ttl, fut).await {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action: rpc_type(which),
                    id: self.self_id,
                    target: self.target,
                    timeout: ttl,
                }));
            }
            Ok(Err(status)) => {
                let fault =
                    TransportFault(format!("{} ({}): {}", self.addr, which, status.message()));
                return Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::Unknown => {
                        RPCError::Unreachable(Unreachable::new(&fault))
                    }
                    tonic::Code::DeadlineExceeded => RPCError::Timeout(Timeout {
                        action: rpc_type(which),
                        id: self.self_id,
                        target: self.target,
                        timeout: ttl,
                    }),
                    _ => RPCError::Network(NetworkError::new(&fault)),
                });
            }
            Ok(Ok(resp)) => resp.into_inner(),
        };
        let result: Result<Resp, RaftError<u64, E>> = codec::decode(&resp.bincode)
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportFault(e.to_string()))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

fn rpc_type(which: &str) -> openraft::network::RPCTypes {
    match which {
        "append" => openraft::network::RPCTypes::AppendEntries,
        "vote" => openraft::network::RPCTypes::Vote,
        _ => openraft::network::RPCTypes::InstallSnapshot,
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call("vote", &rpc, &option).await
    }
}

/// The server side of `kura.v1.internal.Raft`: hands each message to the
/// local Raft.
#[derive(Clone)]
pub struct RaftServer {
    raft: Raft,
}

impl RaftServer {
    /// Serves `raft`.
    pub fn new(raft: Raft) -> Self {
        Self { raft }
    }
}

fn decode_req<T: DeserializeOwned>(req: tonic::Request<RaftPayload>) -> Result<T, tonic::Status> {
    codec::decode(&req.into_inner().bincode)
        .map_err(|e| tonic::Status::invalid_argument(format!("malformed raft message: {e}")))
}

fn encode_resp<T: Serialize>(value: &T) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
    let bytes = codec::encode(value).map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(tonic::Response::new(RaftPayload {
        bincode: bytes.into(),
    }))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let req: AppendEntriesRequest<TypeConfig> = decode_req(request)?;
        let result = self.raft.append_entries(req).await;
        encode_resp(&result)
    }

    async fn vote(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let req: VoteRequest<u64> = decode_req(request)?;
        let result = self.raft.vote(req).await;
        encode_resp(&result)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<RaftPayload>,
    ) -> Result<tonic::Response<RaftPayload>, tonic::Status> {
        let req: InstallSnapshotRequest<TypeConfig> = decode_req(request)?;
        let result = self.raft.install_snapshot(req).await;
        encode_resp(&result)
    }
}

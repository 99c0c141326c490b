//! The `kura.v1.internal.Meta` service: proposals, queries and cluster
//! lifecycle, answered by one metadata node.
//!
//! Which reads may be stale, and why:
//! - **Linearizable** (leader only, after a read-index round with
//!   `ensure_linearizable`): `Stat`, `ListStudy`, and the conflict check a
//!   store makes before it writes shards. A PACS that stored an instance and
//!   then asks for it must see it; a stale "absent" would make it re-send
//!   or, worse, delete its own copy too early.
//! - **Stale allowed** (any voter's applied state): the cluster map for
//!   routing, and a manifest for a `Retrieve` that already knows the
//!   instance exists. A stale map at worst sends a read to a node that has
//!   just gone down (the read falls back to other holders) or a write to a
//!   placement the leader would not choose (the manifest commit is still
//!   checked by Raft); manifests change only by compare-and-set, and repair
//!   never deletes the shards an older version names until no reader can
//!   hold it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kura_proto::codec;
use kura_proto::meta::{
    AdminRequest, AdminResponse, COMMAND_BYTES_MAX, Command, CommandResult, Consistency,
    LIST_PAGE_MAX, MetaStatus, OBJECT_KEYS_MAX, Query, QueryResult, Voter,
};
use kura_proto::v1::internal::MetaPayload;
use kura_proto::v1::internal::meta_server::Meta;
use openraft::BasicNode;
use openraft::error::{
    ChangeMembershipError, CheckIsLeaderError, ClientWriteError, ForwardToLeader, InitializeError,
    RaftError,
};

use crate::error::MetaError;
use crate::liveness::Liveness;
use crate::store::sm::StateReader;
use crate::types::Raft;

/// How long the service waits for Raft before answering.
#[derive(Clone, Copy, Debug)]
pub struct ServiceTimeouts {
    /// A proposal not committed within this is answered "outcome unknown".
    pub propose: Duration,
    /// A read-index round not finished within this is answered "no quorum".
    pub read_index: Duration,
    /// A storage node silent this long is marked `Down` (see `liveness`).
    pub node_down_after: Duration,
    /// ... and this long, `Lost`.
    pub node_lost_after: Duration,
}

impl Default for ServiceTimeouts {
    fn default() -> Self {
        Self {
            propose: Duration::from_secs(4),
            read_index: Duration::from_secs(2),
            // Storage nodes report every 10 s: three missed reports.
            node_down_after: Duration::from_secs(30),
            node_lost_after: Duration::from_secs(15 * 60),
        }
    }
}

/// One node's Meta service.
#[derive(Clone)]
pub struct MetaServer {
    raft: Raft,
    reader: StateReader,
    timeouts: ServiceTimeouts,
    liveness: Arc<Liveness>,
}

fn not_leader(f: ForwardToLeader<u64, BasicNode>) -> MetaError {
    MetaError::NotLeader {
        leader_id: f.leader_id,
        leader_addr: f.leader_node.map(|n| n.addr),
    }
}

impl MetaServer {
    /// The service of the node running `raft`, reading from `reader`.
    pub fn new(raft: Raft, reader: StateReader, timeouts: ServiceTimeouts) -> Self {
        Self {
            raft,
            reader,
            timeouts,
            liveness: Arc::new(Liveness::default()),
        }
    }

    /// The Raft handle.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// When storage nodes last reported here.
    pub fn liveness(&self) -> &Arc<Liveness> {
        &self.liveness
    }

    /// Read access to the node's applied state.
    pub fn reader(&self) -> &StateReader {
        &self.reader
    }

    /// Commits `cmd` and answers what applying it did.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResult, MetaError> {
        cmd.validate().map_err(MetaError::InvalidArgument)?;
        let kind = cmd.kind();
        let reporter = match &cmd {
            Command::ReportUsage { id, .. } => Some(*id),
            _ => None,
        };
        match tokio::time::timeout(self.timeouts.propose, self.raft.client_write(cmd)).await {
            Err(_) => Err(MetaError::Unknown(format!(
                "{kind} not seen committed within {:?} (no quorum?)",
                self.timeouts.propose
            ))),
            Ok(Ok(resp)) => {
                if let Some(id) = reporter {
                    self.liveness.saw(id);
                }
                resp.data
                    .ok_or_else(|| MetaError::Storage("applied command gave no result".into()))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(not_leader(f))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(MetaError::FailedPrecondition(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(f))) => Err(MetaError::Fatal(f.to_string())),
        }
    }

    /// Waits until this node may serve a linearizable read.
    pub async fn linearize(&self) -> Result<(), MetaError> {
        match tokio::time::timeout(self.timeouts.read_index, self.raft.ensure_linearizable()).await
        {
            Err(_) => Err(MetaError::NoQuorum(format!(
                "read-index round did not finish within {:?}",
                self.timeouts.read_index
            ))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(not_leader(f))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                Err(MetaError::NoQuorum(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(f))) => Err(MetaError::Fatal(f.to_string())),
        }
    }

    async fn consistent(&self, c: Consistency) -> Result<(), MetaError> {
        match c {
            Consistency::Linearizable => self.linearize().await,
            Consistency::Stale => Ok(()),
        }
    }

    /// Answers `q`.
    pub async fn query(&self, q: Query) -> Result<QueryResult, MetaError> {
        match q {
            Query::GetManifest {
                tenant,
                sop_instance_uid,
                consistency,
            } => {
                self.consistent(consistency).await?;
                Ok(QueryResult::Manifest(
                    self.reader
                        .manifest(&tenant, &sop_instance_uid)?
                        .map(Box::new),
                ))
            }
            Query::ListStudy {
                tenant,
                study_instance_uid,
                series_instance_uid,
                after,
                limit,
                consistency,
            } => {
                self.consistent(consistency).await?;
                let limit = limit.clamp(1, LIST_PAGE_MAX) as usize;
                let (manifests, next) = self.reader.list_study(
                    &tenant,
                    &study_instance_uid,
                    series_instance_uid.as_deref(),
                    after.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
                    limit,
                )?;
                Ok(QueryResult::StudyPage { manifests, next })
            }
            Query::GetClusterMap { consistency } => {
                self.consistent(consistency).await?;
                let (map, profile) = self.reader.cluster()?;
                Ok(QueryResult::ClusterMap { map, profile })
            }
            Query::ObjectsReferenced { keys, consistency } => {
                if keys.len() > OBJECT_KEYS_MAX {
                    return Err(MetaError::InvalidArgument(format!(
                        "at most {OBJECT_KEYS_MAX} object keys per query, not {}",
                        keys.len()
                    )));
                }
                self.consistent(consistency).await?;
                Ok(QueryResult::ObjectsReferenced(
                    self.reader.objects_referenced(&keys)?,
                ))
            }
            Query::ShardsReferenced {
                node,
                shards,
                consistency,
            } => {
                if shards.len() > OBJECT_KEYS_MAX {
                    return Err(MetaError::InvalidArgument(format!(
                        "at most {OBJECT_KEYS_MAX} shards per query, not {}",
                        shards.len()
                    )));
                }
                self.consistent(consistency).await?;
                Ok(QueryResult::ShardsReferenced(
                    self.reader.shards_referenced(node, &shards)?,
                ))
            }
            Query::Retention {
                tenant,
                consistency,
            } => {
                self.consistent(consistency).await?;
                Ok(QueryResult::Retention(self.reader.retention(&tenant)?))
            }
            Query::LegalHold {
                tenant,
                study_instance_uid,
                consistency,
            } => {
                self.consistent(consistency).await?;
                Ok(QueryResult::LegalHold(
                    self.reader.legal_hold(&tenant, &study_instance_uid)?,
                ))
            }
            Query::ManifestsOnNode {
                node,
                after,
                limit,
                consistency,
            } => {
                self.consistent(consistency).await?;
                let limit = limit.clamp(1, LIST_PAGE_MAX) as usize;
                let (manifests, next) =
                    self.reader
                        .manifests_on_node(node, after.as_deref(), limit)?;
                Ok(QueryResult::ManifestPage { manifests, next })
            }
            Query::Attention {
                after,
                limit,
                consistency,
            } => {
                self.consistent(consistency).await?;
                let limit = limit.clamp(1, LIST_PAGE_MAX) as usize;
                let (manifests, next) = self.reader.attention(after.as_deref(), limit)?;
                Ok(QueryResult::ManifestPage { manifests, next })
            }
            Query::Damaged {
                after,
                limit,
                consistency,
            } => {
                self.consistent(consistency).await?;
                let limit = limit.clamp(1, LIST_PAGE_MAX) as usize;
                let (shards, next) = self.reader.damaged(after.as_ref(), limit)?;
                Ok(QueryResult::DamagedPage { shards, next })
            }
            Query::ListManifests {
                tenant,
                after,
                limit,
                consistency,
            } => {
                self.consistent(consistency).await?;
                let limit = limit.clamp(1, LIST_PAGE_MAX) as usize;
                let (manifests, next) =
                    self.reader
                        .list_manifests(&tenant, after.as_deref(), limit)?;
                Ok(QueryResult::ManifestPage { manifests, next })
            }
            Query::CountOnNode {
                node,
                max,
                consistency,
            } => {
                self.consistent(consistency).await?;
                Ok(QueryResult::Count(self.reader.count_on_node(node, max)?))
            }
            Query::HolderNodes { consistency } => {
                self.consistent(consistency).await?;
                Ok(QueryResult::HolderNodes(self.reader.holder_nodes()?))
            }
            Query::AuditPage {
                from,
                limit,
                consistency,
            } => {
                self.consistent(consistency).await?;
                let limit = limit.clamp(1, kura_proto::meta::AUDIT_PAGE_MAX) as usize;
                let (entries, next) = self.reader.audit_page(from, limit)?;
                Ok(QueryResult::AuditPage { entries, next })
            }
            Query::ListTokens { consistency } => {
                self.consistent(consistency).await?;
                Ok(QueryResult::Tokens(self.reader.tokens()?))
            }
            Query::KeyUsage { consistency } => {
                self.consistent(consistency).await?;
                Ok(QueryResult::KeyUsage {
                    manifests: self.reader.key_usage()?,
                    registered: self.reader.key_versions()?,
                })
            }
            Query::NotSealedUnder {
                key_version,
                after,
                limit,
                scan,
                consistency,
            } => {
                self.consistent(consistency).await?;
                let (manifests, next) = self.reader.not_sealed_under(
                    key_version,
                    after.as_ref().map(|(t, u)| (t.as_str(), u.as_str())),
                    limit.clamp(1, LIST_PAGE_MAX) as usize,
                    scan.clamp(1, 100 * LIST_PAGE_MAX) as usize,
                )?;
                Ok(QueryResult::SealedPage { manifests, next })
            }
            Query::CountManifests { consistency } => {
                self.consistent(consistency).await?;
                let c = self.reader.counts()?;
                Ok(QueryResult::ManifestCounts {
                    total: c.total,
                    under_protected: c.under_protected,
                })
            }
        }
    }

    /// Carries out a lifecycle request.
    pub async fn admin(&self, req: AdminRequest) -> Result<AdminResponse, MetaError> {
        match req {
            AdminRequest::Bootstrap { voters } => {
                if voters.is_empty() {
                    return Err(MetaError::InvalidArgument(
                        "bootstrap needs at least one voter".into(),
                    ));
                }
                let fatal = |e: openraft::error::Fatal<u64>| MetaError::Fatal(e.to_string());
                if self.raft.is_initialized().await.map_err(fatal)? {
                    return Err(MetaError::FailedPrecondition(
                        "this node already belongs to an initialised cluster; bootstrap runs once (nothing changed)"
                            .into(),
                    ));
                }
                let members: BTreeMap<u64, BasicNode> = voters
                    .into_iter()
                    .map(|v| (v.id, BasicNode::new(v.addr)))
                    .collect();
                match self.raft.initialize(members).await {
                    Ok(()) => Ok(AdminResponse::Done),
                    Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                        Err(MetaError::FailedPrecondition(format!(
                            "bootstrap refused, nothing changed: {e}"
                        )))
                    }
                    Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                        Err(MetaError::InvalidArgument(e.to_string()))
                    }
                    Err(RaftError::Fatal(f)) => Err(MetaError::Fatal(f.to_string())),
                }
            }
            AdminRequest::AddLearner { voter } => {
                let r = self
                    .raft
                    .add_learner(voter.id, BasicNode::new(voter.addr), true)
                    .await;
                self.membership_result(r.map(|_| ()))
            }
            AdminRequest::ChangeVoters { ids } => {
                if ids.is_empty() {
                    return Err(MetaError::InvalidArgument(
                        "a cluster needs at least one voter".into(),
                    ));
                }
                let set: BTreeSet<u64> = ids.into_iter().collect();
                let r = self.raft.change_membership(set, false).await;
                self.membership_result(r.map(|_| ()))
            }
            AdminRequest::Status => Ok(AdminResponse::Status(self.status())),
            AdminRequest::VerifyAudit => {
                let reader = self.reader.clone();
                let verdict = tokio::task::spawn_blocking(move || reader.verify_audit())
                    .await
                    .map_err(|e| MetaError::Fatal(format!("audit verification task: {e}")))??;
                Ok(AdminResponse::AuditVerdict(verdict))
            }
        }
    }

    fn membership_result(
        &self,
        r: Result<(), RaftError<u64, ClientWriteError<u64, BasicNode>>>,
    ) -> Result<AdminResponse, MetaError> {
        match r {
            Ok(()) => Ok(AdminResponse::Done),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(not_leader(f)),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => match e {
                ChangeMembershipError::LearnerNotFound(e) => Err(MetaError::NotFound(format!(
                    "{e}: add the node as a learner first"
                ))),
                other => Err(MetaError::FailedPrecondition(other.to_string())),
            },
            Err(RaftError::Fatal(f)) => Err(MetaError::Fatal(f.to_string())),
        }
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> MetaStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voter_ids: BTreeSet<u64> = membership.voter_ids().collect();
        let mut voters = Vec::new();
        let mut learners = Vec::new();
        for (id, node) in membership.nodes() {
            let v = Voter {
                id: *id,
                addr: node.addr.clone(),
            };
            if voter_ids.contains(id) {
                voters.push(v);
            } else {
                learners.push(v);
            }
        }
        let leader_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.addr.clone()));
        MetaStatus {
            id: m.id,
            state: format!("{:?}", m.state),
            current_term: m.current_term,
            current_leader: m.current_leader,
            leader_addr,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            voters,
            learners,
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    request: tonic::Request<MetaPayload>,
    limit: usize,
) -> Result<T, tonic::Status> {
    let bytes = request.into_inner().bincode;
    if bytes.len() > limit {
        return Err(tonic::Status::invalid_argument(format!(
            "request of {} bytes exceeds the limit of {limit} bytes",
            bytes.len()
        )));
    }
    codec::decode(&bytes)
        .map_err(|e| tonic::Status::invalid_argument(format!("malformed request: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<tonic::Response<MetaPayload>, tonic::Status> {
    let bytes = codec::encode(value).map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok(tonic::Response::new(MetaPayload {
        bincode: bytes.into(),
    }))
}

/// Small requests (queries, lifecycle) never need more than this.
const SMALL_REQUEST_BYTES_MAX: usize = 64 * 1024;

#[tonic::async_trait]
impl Meta for MetaServer {
    async fn propose(
        &self,
        request: tonic::Request<MetaPayload>,
    ) -> Result<tonic::Response<MetaPayload>, tonic::Status> {
        let cmd: Command = decode(request, COMMAND_BYTES_MAX)?;
        let result = MetaServer::propose(self, cmd).await?;
        encode(&result)
    }

    async fn query(
        &self,
        request: tonic::Request<MetaPayload>,
    ) -> Result<tonic::Response<MetaPayload>, tonic::Status> {
        let q: Query = decode(request, SMALL_REQUEST_BYTES_MAX)?;
        let result = MetaServer::query(self, q).await?;
        encode(&result)
    }

    async fn admin(
        &self,
        request: tonic::Request<MetaPayload>,
    ) -> Result<tonic::Response<MetaPayload>, tonic::Status> {
        let req: AdminRequest = decode(request, SMALL_REQUEST_BYTES_MAX)?;
        let result = MetaServer::admin(self, req).await?;
        encode(&result)
    }
}

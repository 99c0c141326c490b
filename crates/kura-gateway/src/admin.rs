//! The `kura.v1.Admin` service: what an operator sees and changes. Every
//! change is a Raft command through the metadata cluster, so any gateway
//! can take it. Operations that would lose protection are refused unless
//! forced, saying what would be lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use kura_erasure::EcParams;
use kura_placement::{ClusterMap, Manifest, NodeId, NodeInfo, NodeState};
use kura_proto::meta::{
    AdminRequest, AdminResponse, Applied, Command, Consistency, Query, QueryResult, Rejected,
};
use kura_proto::meta_client::Retry;
use kura_proto::v1::admin_server::Admin;
use kura_proto::v1::{self as pb};
use tonic::{Request, Response, Status};

use crate::auth::{Caller, Touched, admitted, code_of};
use crate::cluster::{manifest_pages, meta_error};
use crate::error::GatewayError;
use crate::repair::RepairStatus;
pub use crate::state::DrillHook;
use crate::state::Inner;

pub use tonic::async_trait;

/// Instances counted per node in a status answer, at most.
const HELD_COUNT_MAX: u64 = 100_000;

#[derive(Clone)]
pub struct AdminService {
    pub(crate) inner: Arc<Inner>,
}

fn observe<T>(rpc: &'static str, started: Instant, r: &Result<T, GatewayError>) {
    let code = match r {
        Ok(_) => "OK".to_string(),
        Err(e) => format!("{:?}", e.code()),
    };
    metrics::counter!("kura_admin_requests_total", "rpc" => rpc, "code" => code).increment(1);
    metrics::histogram!("kura_admin_request_duration_seconds", "rpc" => rpc)
        .record(started.elapsed().as_secs_f64());
    match r {
        Ok(_) => tracing::info!(rpc, "admin request done"),
        Err(e) => tracing::warn!(rpc, error = %e, "admin request refused"),
    }
}

fn precondition(msg: String) -> GatewayError {
    GatewayError::FailedPrecondition(msg)
}

pub(crate) fn repair_proto(runs_here: bool, s: &RepairStatus) -> pb::RepairStatus {
    pb::RepairStatus {
        runs_here,
        active: s.active,
        queue_instances: s.queue_instances,
        queue_shards: s.queue_shards,
        queue_bytes: s.queue_bytes,
        eta_seconds: s.eta_seconds,
        rate_bytes_per_sec: s.rate_bytes_per_sec,
        instances_repaired: s.instances_repaired,
        shards_rebuilt: s.shards_rebuilt,
        shards_moved: s.shards_moved,
        damaged_rewritten: s.damaged_rewritten,
        bytes_written: s.bytes_written,
        bytes_read: s.bytes_read,
        cross_site_bytes: s.cross_site_bytes,
        failures: s.failures,
        waiting: s.waiting,
        last_error: s.last_error.clone().unwrap_or_default(),
        leased_elsewhere: s.leased_elsewhere,
    }
}

impl AdminService {
    async fn query(&self, q: Query) -> Result<QueryResult, GatewayError> {
        self.inner
            .cluster
            .meta()
            .query(&q)
            .await
            .map_err(meta_error)
    }

    async fn map(&self) -> Result<(ClusterMap, Option<EcParams>), GatewayError> {
        match self
            .query(Query::GetClusterMap {
                consistency: Consistency::Linearizable,
            })
            .await?
            .into_cluster_map()?
        {
            (Some(map), profile) => Ok((map, profile)),
            (None, _) => Err(GatewayError::Unavailable(
                "the cluster has no map yet".into(),
            )),
        }
    }

    /// Every token record, as the leader has them.
    /// This gateway knows a token change at once; the others within a
    /// refresh period.
    async fn refresh_tokens(&self) {
        let _ = self
            .inner
            .gate
            .tokens
            .refresh(self.inner.cluster.meta())
            .await;
    }

    async fn tokens(&self) -> Result<Vec<kura_proto::meta::TokenRecord>, GatewayError> {
        Ok(self
            .query(Query::ListTokens {
                consistency: Consistency::Linearizable,
            })
            .await?
            .into_tokens()?)
    }

    async fn propose(&self, cmd: Command) -> Result<Applied, GatewayError> {
        match self
            .inner
            .cluster
            .meta()
            .propose(&cmd, Retry::Idempotent)
            .await
            .map_err(meta_error)?
        {
            Ok(a) => {
                self.inner.cluster.invalidate().await;
                Ok(a)
            }
            Err(Rejected::NotFound(what)) => Err(GatewayError::NotFound {
                resource_type: "node",
                resource_name: what.clone(),
                message: format!("not found: {what}"),
            }),
            Err(Rejected::Invalid(why)) => Err(precondition(why)),
            Err(other) => Err(precondition(other.to_string())),
        }
    }

    /// Every manifest of an index walked page by page (stopping once `max`
    /// are collected).
    async fn pages(
        &self,
        query: impl Fn(Option<Vec<u8>>) -> Query,
        max: u64,
    ) -> Result<Vec<Manifest>, GatewayError> {
        let mut out = Vec::new();
        manifest_pages(self.inner.cluster.meta(), query, |page| {
            out.extend(page);
            (out.len() as u64) < max
        })
        .await?;
        Ok(out)
    }

    /// Manifests naming `node` as a holder (at most about `max`).
    async fn on_node(&self, node: NodeId, max: u64) -> Result<Vec<Manifest>, GatewayError> {
        self.pages(
            |after| Query::ManifestsOnNode {
                node,
                after,
                limit: 1000,
                consistency: Consistency::Linearizable,
            },
            max,
        )
        .await
    }

    /// Manifests stored under-protected or with an unplaced shard.
    async fn attention(&self) -> Result<Vec<Manifest>, GatewayError> {
        self.pages(
            |after| Query::Attention {
                after,
                limit: 1000,
                consistency: Consistency::Linearizable,
            },
            u64::MAX,
        )
        .await
    }

    pub(crate) async fn status(&self) -> Result<pb::ClusterStatus, GatewayError> {
        self.status_with(false).await
    }

    async fn status_with(&self, brief: bool) -> Result<pb::ClusterStatus, GatewayError> {
        let (map, profile) = self.map().await?;
        let (instances, under_protected) = self.status_counts().await?;
        let damaged_shards = self
            .query(Query::Damaged {
                after: None,
                limit: 1000,
                consistency: Consistency::Linearizable,
            })
            .await?
            .into_damaged_page()?
            .0
            .len() as u64;
        let mut nodes = Vec::new();
        for n in map.nodes.values() {
            let held = if brief {
                0
            } else {
                self.query(Query::CountOnNode {
                    node: n.id,
                    max: HELD_COUNT_MAX,
                    consistency: Consistency::Linearizable,
                })
                .await?
                .into_count()?
            };
            nodes.push(pb::NodeStatus {
                id: n.id,
                name: n.name.clone(),
                site: n.site.clone(),
                addr: n.addr.clone(),
                state: n.state.as_str().to_string(),
                capacity_bytes: n.capacity_bytes,
                used_bytes: n.used_bytes,
                instances_held: held,
            });
        }
        // Each voter's own view, asked at once.
        let meta = self.inner.cluster.meta();
        let endpoints = self.inner.config.meta_endpoints.clone();
        let views = join_all(endpoints.iter().map(|addr| async move {
            (
                addr.clone(),
                tokio::time::timeout(
                    Duration::from_secs(2),
                    meta.admin_at(addr, &AdminRequest::Status),
                )
                .await,
            )
        }))
        .await;
        let mut voters = Vec::new();
        let mut leader_id = None;
        for (addr, view) in views {
            match view {
                Ok(Ok(AdminResponse::Status(s))) => {
                    if s.current_leader.is_some() {
                        leader_id = leader_id.or(s.current_leader);
                    }
                    voters.push(pb::MetaVoter {
                        id: s.id,
                        addr,
                        state: s.state.to_lowercase(),
                        term: s.current_term,
                        last_applied: s.last_applied_index,
                    });
                }
                _ => voters.push(pb::MetaVoter {
                    id: 0,
                    addr,
                    state: "unreachable".into(),
                    term: 0,
                    last_applied: None,
                }),
            }
        }
        let repair = match self.inner.repair.get() {
            Some(h) => repair_proto(true, &h.status()),
            None => pb::RepairStatus::default(),
        };
        Ok(pb::ClusterStatus {
            sites: map.sites.iter().map(|s| s.name.clone()).collect(),
            nodes,
            leader_id,
            voters,
            map_epoch: map.epoch,
            profile: profile.map(|p| p.to_string()).unwrap_or_default(),
            instances,
            under_protected,
            damaged_shards,
            repair: Some(repair),
            tls_cert_expiry_days: self
                .inner
                .cluster
                .transport()
                .material()
                .map(|m| m.days_left()),
            insecure_plaintext: !self.inner.cluster.transport().is_tls(),
        })
    }

    /// After a map change: repair looks at once, and the caller sees the
    /// new state.
    async fn changed(&self) -> Result<pb::ClusterStatus, GatewayError> {
        if let Some(h) = self.inner.repair.get() {
            h.wake();
        }
        self.status().await
    }

    async fn protection(&self) -> Result<pb::ProtectionSummary, GatewayError> {
        let (map, _) = self.map().await?;
        let status = self.status_counts().await?;
        // Only instances stored under-protected or with a shard on a node
        // that is not up can be unreadable or at risk: a full placement on
        // up nodes survives a site.
        let mut suspects: BTreeMap<(String, String), Manifest> = BTreeMap::new();
        for m in self.attention().await? {
            suspects.insert((m.tenant.clone(), m.sop_instance_uid.clone()), m);
        }
        let holders = self
            .query(Query::HolderNodes {
                consistency: Consistency::Linearizable,
            })
            .await?
            .into_holder_nodes()?;
        for id in holders {
            if map.node(id).is_some_and(|n| n.state == NodeState::Up) {
                continue;
            }
            for m in self.on_node(id, u64::MAX).await? {
                suspects.insert((m.tenant.clone(), m.sop_instance_uid.clone()), m);
            }
        }
        // Damaged, quarantined shards count as missing, wherever they sit.
        let damaged = crate::cluster::damaged_instances(self.inner.cluster.meta()).await?;
        for (key, (m, _)) in &damaged {
            suspects.entry(key.clone()).or_insert_with(|| m.clone());
        }
        let mut out = pb::ProtectionSummary {
            instances: status.0,
            under_protected: status.1,
            fully_protected: status.0.saturating_sub(status.1),
            ..Default::default()
        };
        for (key, m) in &suspects {
            let bad = damaged.get(key).map(|(_, b)| b.as_slice()).unwrap_or(&[]);
            match kura_placement::survival(&map, m, bad) {
                kura_placement::Survival::Safe => {}
                kura_placement::Survival::AtRisk { .. } => out.at_risk += 1,
                kura_placement::Survival::Unreadable { .. } => out.unreadable += 1,
            }
        }
        Ok(out)
    }

    async fn status_counts(&self) -> Result<(u64, u64), GatewayError> {
        Ok(self
            .query(Query::CountManifests {
                consistency: Consistency::Linearizable,
            })
            .await?
            .into_manifest_counts()?)
    }

    async fn node_of(&self, id: NodeId) -> Result<(ClusterMap, NodeInfo), GatewayError> {
        let (map, _) = self.map().await?;
        let node = map
            .node(id)
            .cloned()
            .ok_or_else(|| GatewayError::NotFound {
                resource_type: "node",
                resource_name: id.to_string(),
                message: format!(
                    "no storage node {id} in the cluster map (nodes: {})",
                    map.nodes
                        .keys()
                        .map(|k| k.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        Ok((map, node))
    }
}

impl AdminService {
    /// Records the call's metrics and audit entry; answers its result.
    async fn run<T>(
        &self,
        caller: &Caller,
        rpc: &'static str,
        started: Instant,
        r: Result<T, GatewayError>,
    ) -> Result<Response<T>, Status> {
        observe(rpc, started, &r);
        self.inner
            .gate
            .record(
                caller,
                &format!("Admin.{rpc}"),
                Touched::default(),
                code_of(&r),
            )
            .await;
        r.map(Response::new).map_err(GatewayError::into_status)
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let started = Instant::now();
        let caller = admitted(&request);
        let brief = request.into_inner().brief;
        self.run(&caller, "Status", started, self.status_with(brief).await)
            .await
    }

    async fn drain(
        &self,
        request: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let started = Instant::now();
        let caller = admitted(&request);
        let id = request.into_inner().id;
        let r = async {
            let (map, node) = self.node_of(id).await?;
            if node.state == NodeState::Draining {
                return self.status().await;
            }
            if !node.state.readable() {
                return Err(precondition(format!(
                    "node {id} is {}: a drain copies shards off a node that serves reads; \
                     a node that is down or lost has its shards rebuilt by repair instead",
                    node.state.as_str()
                )));
            }
            // Somewhere to move to: the map without it must still hold the
            // profile.
            let without = map.with_node_state(id, NodeState::Draining).map_err(|e| {
                GatewayError::Internal(format!("map without node {id}: {e}"))
            })?;
            if let (_, Some(profile)) = self.map().await?
                && let Err(e) = kura_placement::check_layout(&without, &profile)
            {
                return Err(precondition(format!(
                    "draining node {id} would leave too few nodes for {profile}: {e}; add a node first"
                )));
            }
            self.propose(Command::SetNodeState {
                id,
                state: NodeState::Draining,
            })
            .await?;
            self.changed().await
        }
        .await;
        self.run(&caller, "Drain", started, r).await
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let started = Instant::now();
        let caller = admitted(&request);
        let req = request.into_inner();
        let r = async {
            if req.id == 0 {
                return Err(GatewayError::invalid(
                    "id",
                    "BAD_NODE",
                    "node id must be > 0",
                ));
            }
            let (map, _) = self.map().await?;
            if map.site(&req.site).is_none() {
                return Err(GatewayError::invalid(
                    "site",
                    "UNKNOWN_SITE",
                    format!(
                        "site {:?} is not in the cluster (sites: {})",
                        req.site,
                        map.sites
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            // Ask the node itself: it must answer, and say who it is.
            let probe = kura_proto::shards_client::ShardsClient::new(
                &req.addr,
                self.inner.cluster.transport(),
            )
            .map_err(|e| {
                GatewayError::invalid("addr", "BAD_ADDRESS", format!("{}: {e}", req.addr))
            })?;
            let s = probe.node_status().await.map_err(|e| {
                precondition(format!(
                    "storage node at {} does not answer: {e}; start it first",
                    req.addr
                ))
            })?;
            let name = if req.name.is_empty() {
                format!("store-{}", req.id)
            } else {
                req.name.clone()
            };
            self.propose(Command::UpsertNode(NodeInfo {
                id: req.id,
                name,
                site: req.site.clone(),
                addr: req.addr.clone(),
                state: NodeState::Up,
                capacity_bytes: s.capacity_bytes,
                used_bytes: s.used_bytes,
            }))
            .await?;
            self.changed().await
        }
        .await;
        self.run(&caller, "AddNode", started, r).await
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let started = Instant::now();
        let caller = admitted(&request);
        let req = request.into_inner();
        let r = async {
            let (map, node) = self.node_of(req.id).await?;
            let held = self.on_node(req.id, HELD_COUNT_MAX).await?;
            if !held.is_empty() && !req.force {
                let unreadable = held
                    .iter()
                    .filter(|m| {
                        let without = map.with_node_state(req.id, NodeState::Removed);
                        without.is_ok_and(|w| !kura_placement::readable_now(&w, m))
                    })
                    .count();
                return Err(precondition(format!(
                    "node {} ({}) still holds shards of {}{} instance(s); removing it now would \
                     leave them under-protected until repair rebuilds them{}. Drain it first \
                     (kura admin drain {}) and remove it once it holds nothing, or force it",
                    req.id,
                    node.state.as_str(),
                    held.len(),
                    if held.len() as u64 >= HELD_COUNT_MAX {
                        "+"
                    } else {
                        ""
                    },
                    if unreadable > 0 {
                        format!(", and {unreadable} of them UNREADABLE")
                    } else {
                        String::new()
                    },
                    req.id
                )));
            }
            self.propose(Command::RemoveNode {
                id: req.id,
                force: req.force,
            })
            .await?;
            self.changed().await
        }
        .await;
        self.run(&caller, "RemoveNode", started, r).await
    }

    async fn set_profile(
        &self,
        request: Request<pb::SetProfileRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let started = Instant::now();
        let caller = admitted(&request);
        let req = request.into_inner();
        let r = async {
            let (Ok(k), Ok(m)) = (
                u8::try_from(req.data_shards),
                u8::try_from(req.parity_shards),
            ) else {
                return Err(GatewayError::invalid(
                    "data_shards",
                    "BAD_PROFILE",
                    "data and parity shards must each be below 256",
                ));
            };
            let profile = EcParams::new(k, m);
            profile.validate().map_err(|e| {
                GatewayError::invalid("data_shards", "BAD_PROFILE", format!("{profile}: {e}"))
            })?;
            let (map, _) = self.map().await?;
            if let Err(e) = kura_placement::check_layout(&map, &profile)
                && !req.force
            {
                return Err(precondition(format!(
                    "{profile} cannot be placed with its promised protection on this cluster: {e}"
                )));
            }
            self.propose(Command::SetProfile(profile)).await?;
            self.status().await
        }
        .await;
        self.run(&caller, "SetProfile", started, r).await
    }

    async fn repair_now(
        &self,
        request: Request<pb::RepairNowRequest>,
    ) -> Result<Response<pb::RepairStatus>, Status> {
        let started = Instant::now();
        let caller = admitted(&request);
        let r = match self.inner.repair.get() {
            Some(h) => {
                h.wake();
                Ok(repair_proto(true, &h.status()))
            }
            None => Err(precondition(
                "repair does not run in this gateway (repair.enabled = false); ask another".into(),
            )),
        };
        self.run(&caller, "RepairNow", started, r).await
    }

    async fn scrub_now(
        &self,
        request: Request<pb::ScrubNowRequest>,
    ) -> Result<Response<pb::ScrubNowResponse>, Status> {
        let started = Instant::now();
        let caller = admitted(&request);
        let only = request.into_inner().node;
        let r = async {
            let (map, _) = self.map().await?;
            if only != 0 && map.node(only).is_none() {
                return Err(GatewayError::NotFound {
                    resource_type: "node",
                    resource_name: only.to_string(),
                    message: format!("no storage node {only}"),
                });
            }
            let mut out = pb::ScrubNowResponse::default();
            for n in map.nodes.values().filter(|n| only == 0 || n.id == only) {
                if !n.state.readable() {
                    out.failed
                        .push(format!("node {}: {}", n.id, n.state.as_str()));
                    continue;
                }
                match self.inner.cluster.client(n) {
                    Ok(c) => match c.scrub_now().await {
                        Ok(true) => out.started.push(n.id),
                        Ok(false) => out
                            .failed
                            .push(format!("node {}: scrubbing is off (rate 0)", n.id)),
                        Err(e) => out.failed.push(format!("node {}: {e}", n.id)),
                    },
                    Err(e) => out.failed.push(format!("node {}: {e}", n.id)),
                }
            }
            Ok(out)
        }
        .await;
        self.run(&caller, "ScrubNow", started, r).await
    }

    async fn protection(
        &self,
        request: Request<pb::ProtectionRequest>,
    ) -> Result<Response<pb::ProtectionSummary>, Status> {
        let started = Instant::now();
        let caller = admitted(&request);
        self.run(&caller, "Protection", started, self.protection().await)
            .await
    }

    async fn list_instances(
        &self,
        request: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let started = Instant::now();
        let caller = admitted(&request);
        let req = request.into_inner();
        let r = async {
            kura_proto::meta::validate_tenant(&req.tenant)
                .map_err(|e| GatewayError::invalid("tenant", "BAD_TENANT", e))?;
            let page_max = self.inner.config.limits.page_entries;
            if req.limit > page_max {
                return Err(GatewayError::invalid(
                    "limit",
                    "PAGE_TOO_LARGE",
                    format!(
                        "a page of {} instances is more than limit page_entries ({page_max} entries)",
                        req.limit
                    ),
                ));
            }
            let (manifests, next) = self
                .query(Query::ListManifests {
                    tenant: req.tenant.clone(),
                    after: (!req.after.is_empty()).then(|| req.after.clone()),
                    limit: req.limit.max(1),
                    consistency: Consistency::Linearizable,
                })
                .await?
                .into_manifest_page()?;
            let keys = &self.inner.config.keys;
            Ok(pb::ListInstancesResponse {
                instances: manifests
                    .iter()
                    .map(|m| {
                        let secrets = crate::seal::open(keys, m)?;
                        Ok(pb::InstanceRef {
                            sop_instance_uid: m.sop_instance_uid.clone(),
                            study_instance_uid: m.study_instance_uid.clone(),
                            size: m.sealing.plain_size,
                            blake3: bytes::Bytes::copy_from_slice(&secrets.plain_blake3),
                        })
                    })
                    .collect::<Result<_, GatewayError>>()?,
                next: next
                    .map(|n| String::from_utf8_lossy(&n).into_owned())
                    .unwrap_or_default(),
            })
        }
        .await;
        self.run(&caller, "ListInstances", started, r).await
    }

    async fn drill_site(
        &self,
        request: Request<pb::DrillSiteRequest>,
    ) -> Result<Response<pb::DrillSiteResponse>, Status> {
        let started = Instant::now();
        let caller = admitted(&request);
        let req = request.into_inner();
        let r = async {
            let Some(hook) = self.inner.config.drill.clone() else {
                return Err(GatewayError::Unimplemented(
                    "this cluster cannot take a site out by itself; give the drill the \
                     commands that stop and start the site (--take-out, --restore)"
                        .into(),
                ));
            };
            let (map, _) = self.map().await?;
            if map.site(&req.site).is_none() {
                return Err(GatewayError::invalid(
                    "site",
                    "UNKNOWN_SITE",
                    format!("site {:?} is not in the cluster", req.site),
                ));
            }
            let nodes = match pb::drill_site_request::Action::try_from(req.action) {
                Ok(pb::drill_site_request::Action::TakeOut) => hook.take_out(&req.site).await,
                Ok(pb::drill_site_request::Action::Restore) => hook.restore(&req.site).await,
                _ => {
                    return Err(GatewayError::invalid(
                        "action",
                        "BAD_ACTION",
                        "action must be TAKE_OUT or RESTORE",
                    ));
                }
            }
            .map_err(precondition)?;
            if req.action == pb::drill_site_request::Action::Restore as i32
                && let Some(h) = self.inner.repair.get()
            {
                h.wake();
            }
            tracing::warn!(site = %req.site, action = req.action, ?nodes, "drill: site action carried out");
            Ok(pb::DrillSiteResponse { nodes })
        }
        .await;
        self.run(&caller, "DrillSite", started, r).await
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let started = Instant::now();
        let caller = admitted(&request);
        let req = request.into_inner();
        let r = async {
            let tenant = caller.tenant("tenant", &req.tenant)?;
            crate::service::check_tenant(&tenant)?;
            let roles = kura_auth::ClientRoles::parse(&req.roles)
                .map_err(|e| GatewayError::invalid("roles", "BAD_ROLES", e.to_string()))?;
            if req.label.len() > 128 || req.label.chars().any(char::is_control) {
                return Err(GatewayError::invalid(
                    "label",
                    "BAD_LABEL",
                    "a label is at most 128 printable characters",
                ));
            }
            let (secret, hash) = crate::tokens::new_secret();
            let record = crate::tokens::record(hash, &tenant, roles, &req.label, &caller.who());
            self.propose(Command::PutToken(record.clone())).await?;
            self.refresh_tokens().await;
            Ok(pb::CreateTokenResponse {
                secret,
                token: Some(token_info(&record)),
            })
        }
        .await;
        self.run(&caller, "CreateToken", started, r).await
    }

    async fn key_status(
        &self,
        request: Request<pb::KeyStatusRequest>,
    ) -> Result<Response<pb::KeyStatusResponse>, Status> {
        let started = Instant::now();
        let caller = admitted(&request);
        let r = crate::seal::key_status(&self.inner).await;
        self.run(&caller, "KeyStatus", started, r).await
    }

    async fn rotate_keys(
        &self,
        request: Request<pb::RotateKeysRequest>,
    ) -> Result<Response<pb::RotateKeysResponse>, Status> {
        let started = Instant::now();
        let caller = admitted(&request);
        let req = request.into_inner();
        let r = async {
            let after = match (req.after_tenant.is_empty(), req.after_sop_instance_uid.is_empty()) {
                (true, true) => None,
                (false, false) => {
                    crate::service::check_tenant(&req.after_tenant)?;
                    crate::service::check_uid("after_sop_instance_uid", &req.after_sop_instance_uid)?;
                    Some((req.after_tenant.clone(), req.after_sop_instance_uid.clone()))
                }
                _ => {
                    return Err(GatewayError::invalid(
                        "after_tenant",
                        "BAD_CURSOR",
                        "a rotation resumes after a tenant and a SOP Instance UID: give both or neither",
                    ));
                }
            };
            if req.limit > crate::seal::ROTATE_PAGE_MAX {
                return Err(GatewayError::invalid(
                    "limit",
                    "BAD_LIMIT",
                    format!(
                        "a rotation page re-wraps at most {} instances, not {}",
                        crate::seal::ROTATE_PAGE_MAX,
                        req.limit
                    ),
                ));
            }
            crate::seal::rotate_page(&self.inner, after, req.limit).await
        }
        .await;
        self.run(&caller, "RotateKeys", started, r).await
    }

    async fn set_retention(
        &self,
        request: Request<pb::SetRetentionRequest>,
    ) -> Result<Response<pb::Retention>, Status> {
        let started = Instant::now();
        let caller = admitted(&request);
        let req = request.into_inner();
        let r = async {
            let tenant = caller.tenant("tenant", &req.tenant)?;
            crate::service::check_tenant(&tenant)?;
            if req.days > kura_proto::meta::RETENTION_DAYS_MAX {
                return Err(GatewayError::invalid(
                    "days",
                    "BAD_RETENTION",
                    format!(
                        "a retention period is at most {} days, not {}",
                        kura_proto::meta::RETENTION_DAYS_MAX,
                        req.days
                    ),
                ));
            }
            self.propose(Command::SetRetention {
                tenant: tenant.clone(),
                days: (req.days > 0).then_some(req.days),
            })
            .await?;
            Ok(pb::Retention {
                tenant,
                days: req.days,
            })
        }
        .await;
        self.run(&caller, "SetRetention", started, r).await
    }

    async fn set_legal_hold(
        &self,
        request: Request<pb::SetLegalHoldRequest>,
    ) -> Result<Response<pb::LegalHoldState>, Status> {
        let started = Instant::now();
        let caller = admitted(&request);
        let req = request.into_inner();
        let r = async {
            let tenant = caller.tenant("tenant", &req.tenant)?;
            crate::service::check_tenant(&tenant)?;
            let study = &req.study_instance_uid;
            crate::service::check_uid("study_instance_uid", study)?;
            let hold = if req.hold {
                if req.reason.trim().is_empty() || req.reason.len() > 1024 {
                    return Err(GatewayError::invalid(
                        "reason",
                        "BAD_REASON",
                        "a legal hold gives its reason, 1 to 1024 bytes",
                    ));
                }
                Some(kura_proto::meta::LegalHold {
                    reason: req.reason.clone(),
                    since_unix_ms: kura_proto::audit::now_ms(),
                    by: caller.who(),
                })
            } else {
                None
            };
            self.propose(Command::SetLegalHold {
                tenant: tenant.clone(),
                study_instance_uid: study.clone(),
                hold: hold.clone(),
            })
            .await?;
            Ok(pb::LegalHoldState {
                tenant,
                study_instance_uid: study.clone(),
                held: hold.is_some(),
                reason: hold.as_ref().map(|h| h.reason.clone()).unwrap_or_default(),
                since_unix_ms: hold.as_ref().map_or(0, |h| h.since_unix_ms),
                by: hold.map(|h| h.by).unwrap_or_default(),
            })
        }
        .await;
        self.run(&caller, "SetLegalHold", started, r).await
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let started = Instant::now();
        let caller = admitted(&request);
        let r = async {
            let tokens = self.tokens().await?;
            let own = caller.own_tenant();
            Ok(pb::ListTokensResponse {
                tokens: tokens
                    .iter()
                    .filter(|t| own.is_none_or(|o| o == t.tenant))
                    .map(token_info)
                    .collect(),
            })
        }
        .await;
        self.run(&caller, "ListTokens", started, r).await
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        let started = Instant::now();
        let caller = admitted(&request);
        let req = request.into_inner();
        let r = async {
            let tokens = self.tokens().await?;
            let own = caller.own_tenant();
            // Another tenant's token is as unknown as one that never was.
            let Some(t) = tokens
                .into_iter()
                .find(|t| t.id == req.id && own.is_none_or(|o| o == t.tenant))
            else {
                return Err(GatewayError::NotFound {
                    resource_type: "token",
                    resource_name: req.id.clone(),
                    message: format!("no token {}", req.id),
                });
            };
            let now = kura_proto::audit::now_ms();
            self.propose(Command::RevokeToken {
                id: t.id.clone(),
                revoked_unix_ms: now,
            })
            .await?;
            self.refresh_tokens().await;
            let mut t = t;
            t.revoked_unix_ms = Some(t.revoked_unix_ms.unwrap_or(now));
            Ok(token_info(&t))
        }
        .await;
        self.run(&caller, "RevokeToken", started, r).await
    }
}

fn token_info(t: &kura_proto::meta::TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        id: t.id.clone(),
        tenant: t.tenant.clone(),
        roles: t.roles.clone(),
        label: t.label.clone(),
        created_unix_ms: t.created_unix_ms,
        created_by: t.created_by.clone(),
        revoked_unix_ms: t.revoked_unix_ms.unwrap_or(0),
    }
}

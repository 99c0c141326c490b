//! What the test asks the metadata cluster: the map, counts, the indexes
//! repair works from, manifests, and who leads. Every answer is `None`
//! when the cluster could not answer in time (polling loops retry).

use std::time::Duration;

use kura_placement::{ClusterMap, Manifest, NodeId};
use kura_proto::meta::{
    AdminRequest, AdminResponse, Consistency, DamagedShard, MetaStatus, Query, QueryResult, Voter,
};
use kura_proto::meta_client::{MetaClient, MetaClientError};

use crate::workload::TENANT;

const LIN: Consistency = Consistency::Linearizable;

#[derive(Clone)]
pub struct Meta {
    pub client: MetaClient,
    pub voters: Vec<(u64, String)>,
    last_error: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Meta {
    pub fn new(transport: kura_auth::Transport, voters: Vec<(u64, String)>) -> Meta {
        let client = MetaClient::with_timeouts(
            voters.iter().map(|(_, a)| a.clone()).collect(),
            transport,
            Duration::from_secs(3),
            Duration::from_secs(8),
        );
        Meta {
            client,
            voters,
            last_error: Default::default(),
        }
    }

    /// The last error a query got (for messages when polling gives up).
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn q(&self, query: Query) -> Option<QueryResult> {
        match self.client.query(&query).await {
            Ok(r) => Some(r),
            Err(e) => {
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = format!("{query:?}: {e}");
                None
            }
        }
    }

    pub async fn map(&self) -> Option<ClusterMap> {
        match self.q(Query::GetClusterMap { consistency: LIN }).await? {
            QueryResult::ClusterMap { map, .. } => map,
            _ => None,
        }
    }

    /// (total, under-protected) manifests.
    pub async fn counts(&self) -> Option<(u64, u64)> {
        match self.q(Query::CountManifests { consistency: LIN }).await? {
            QueryResult::ManifestCounts {
                total,
                under_protected,
            } => Some((total, under_protected)),
            _ => None,
        }
    }

    pub async fn holders(&self) -> Option<Vec<NodeId>> {
        match self.q(Query::HolderNodes { consistency: LIN }).await? {
            QueryResult::HolderNodes(ids) => Some(ids),
            _ => None,
        }
    }

    /// Manifests needing attention (first page, up to 1000).
    pub async fn attention(&self) -> Option<Vec<Manifest>> {
        match self
            .q(Query::Attention {
                after: None,
                limit: 1000,
                consistency: LIN,
            })
            .await?
        {
            QueryResult::ManifestPage { manifests, .. } => Some(manifests),
            _ => None,
        }
    }

    pub async fn damaged(&self) -> Option<Vec<DamagedShard>> {
        match self
            .q(Query::Damaged {
                after: None,
                limit: 1000,
                consistency: LIN,
            })
            .await?
        {
            QueryResult::DamagedPage { shards, .. } => {
                Some(shards.into_iter().map(|(d, _)| d).collect())
            }
            _ => None,
        }
    }

    /// How many manifests name `node` as a holder (up to 10,000).
    pub async fn on_node(&self, node: NodeId) -> Option<usize> {
        let mut after = None;
        let mut n = 0;
        loop {
            match self
                .q(Query::ManifestsOnNode {
                    node,
                    after: after.take(),
                    limit: 1000,
                    consistency: LIN,
                })
                .await?
            {
                QueryResult::ManifestPage { manifests, next } => {
                    n += manifests.len();
                    match next {
                        Some(c) if n < 10_000 => after = Some(c),
                        _ => return Some(n),
                    }
                }
                _ => return None,
            }
        }
    }

    pub async fn manifest(&self, uid: &str) -> Option<Manifest> {
        match self
            .q(Query::GetManifest {
                tenant: TENANT.into(),
                sop_instance_uid: uid.into(),
                consistency: LIN,
            })
            .await?
        {
            QueryResult::Manifest(m) => m.map(|b| *b),
            _ => None,
        }
    }

    /// One voter's own view.
    pub async fn status_of(&self, addr: &str) -> Option<MetaStatus> {
        let call = self.client.admin_at(addr, &AdminRequest::Status);
        match tokio::time::timeout(Duration::from_secs(3), call).await {
            Ok(Ok(AdminResponse::Status(s))) => Some(s),
            _ => None,
        }
    }

    /// The voter that says it leads (and is in office by its own account).
    pub async fn leader(&self) -> Option<u64> {
        for (id, addr) in &self.voters {
            if let Some(s) = self.status_of(addr).await
                && s.current_leader == Some(*id)
                && s.state.contains("Leader")
            {
                return Some(*id);
            }
        }
        None
    }

    /// Adds a voter as a learner, then makes `voters` the voter set.
    pub async fn replace_voters(&self, new: Voter, voters: Vec<u64>) -> Result<(), String> {
        let e = |e: MetaClientError| e.to_string();
        self.client
            .admin(&AdminRequest::AddLearner { voter: new })
            .await
            .map_err(e)?;
        self.client
            .admin(&AdminRequest::ChangeVoters { ids: voters })
            .await
            .map_err(e)?;
        Ok(())
    }
}

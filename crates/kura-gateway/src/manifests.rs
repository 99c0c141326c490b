//! The gateway's cache of the manifests it committed or read, and the two
//! ways to read one from the metadata cluster: from the leader
//! ([`from_leader`]) or from any voter's applied state ([`from_any_voter`]).
//!
//! A Retrieve or Stat of a cached instance asks no voter at all: repeated
//! reads of a study (a viewer paging through it, a PACS prefetching it)
//! cost no metadata round trip, and keep working with no voter in reach.
//! An entry is used for [`GatewayConfig::manifest_cache_ttl`] at most,
//! which must stay below the time an old holder keeps a moved shard
//! (`RepairConfig::delete_moved_after`): a cached manifest is as safe to
//! read from as a stale voter's (ARCHITECTURE.md, "Reads without the
//! leader"), and a read that fails with it reads the leader's copy.
//!
//! [`GatewayConfig::manifest_cache_ttl`]: crate::GatewayConfig::manifest_cache_ttl

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kura_placement::Manifest;
use kura_proto::meta::{Consistency, Query};
use lru::LruCache;

use crate::cluster::ClusterView;
use crate::cluster::meta_error;
use crate::error::GatewayError;

type Key = (String, String);
type Entries = LruCache<Key, (Arc<Manifest>, Instant)>;

/// Manifests by (tenant, SOP Instance UID), least recently used evicted
/// first, each kept for a time-to-live.
pub(crate) struct ManifestCache {
    entries: Option<Mutex<Entries>>,
    ttl: Duration,
}

impl ManifestCache {
    /// A cache of at most `capacity` manifests (0: no cache) used for
    /// `ttl` each.
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            entries: NonZeroUsize::new(capacity)
                .filter(|_| !ttl.is_zero())
                .map(|c| Mutex::new(LruCache::new(c))),
            ttl,
        }
    }

    /// The cached manifest of `uid` in `tenant`, if fresh.
    pub(crate) fn get(&self, tenant: &str, uid: &str) -> Option<Arc<Manifest>> {
        let mut entries = self
            .entries
            .as_ref()?
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (tenant.to_owned(), uid.to_owned());
        match entries.get(&key) {
            Some((m, at)) if at.elapsed() < self.ttl => {
                metrics::counter!("kura_gateway_manifest_cache_total", "outcome" => "hit")
                    .increment(1);
                Some(Arc::clone(m))
            }
            Some(_) => {
                entries.pop(&key);
                metrics::counter!("kura_gateway_manifest_cache_total", "outcome" => "expired")
                    .increment(1);
                None
            }
            None => {
                metrics::counter!("kura_gateway_manifest_cache_total", "outcome" => "miss")
                    .increment(1);
                None
            }
        }
    }

    /// Remembers `m` as just read from, or committed to, the cluster.
    pub(crate) fn put(&self, m: Arc<Manifest>) {
        if let Some(entries) = &self.entries {
            let key = (m.tenant.clone(), m.sop_instance_uid.clone());
            entries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .put(key, (m, Instant::now()));
        }
    }

    /// Drops the entry of `uid` in `tenant` (its manifest changed here).
    pub(crate) fn forget(&self, tenant: &str, uid: &str) {
        if let Some(entries) = &self.entries {
            entries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop(&(tenant.to_owned(), uid.to_owned()));
        }
    }
}

/// The manifest of `uid` in `tenant` as the leader has it (a
/// linearizable read); `None` when the instance does not exist there.
pub(crate) async fn from_leader(
    cluster: &ClusterView,
    tenant: &str,
    uid: &str,
) -> Result<Option<Manifest>, GatewayError> {
    read(
        cluster,
        Duration::ZERO,
        tenant,
        uid,
        Consistency::Linearizable,
    )
    .await
}

/// The manifest of `uid` in `tenant` from any voter's applied state (the
/// one that answered last first): no election in the way, but a store the
/// voter has not applied yet is missing. Each voter gets `attempt` before
/// the next is asked beside it.
pub(crate) async fn from_any_voter(
    cluster: &ClusterView,
    attempt: Duration,
    tenant: &str,
    uid: &str,
) -> Result<Option<Manifest>, GatewayError> {
    read(cluster, attempt, tenant, uid, Consistency::Stale).await
}

async fn read(
    cluster: &ClusterView,
    attempt: Duration,
    tenant: &str,
    uid: &str,
    consistency: Consistency,
) -> Result<Option<Manifest>, GatewayError> {
    let query = Query::GetManifest {
        tenant: tenant.to_string(),
        sop_instance_uid: uid.to_string(),
        consistency,
    };
    let meta = cluster.meta();
    let answer = match consistency {
        Consistency::Linearizable => meta.query(&query).await,
        Consistency::Stale => meta.query_any(&query, attempt).await,
    }
    .map_err(meta_error)?;
    Ok(answer.into_manifest()?.map(|m| *m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(tenant: &str, uid: &str) -> Arc<Manifest> {
        Arc::new(Manifest {
            format_version: kura_placement::MANIFEST_FORMAT_VERSION,
            tenant: tenant.into(),
            sop_instance_uid: uid.into(),
            sop_class_uid: String::new(),
            study_instance_uid: String::new(),
            series_instance_uid: String::new(),
            transfer_syntax_uid: String::new(),
            modality: String::new(),
            study_date: String::new(),
            size: 0,
            fingerprint: [0; 32],
            sealing: kura_placement::Sealing {
                scheme: 1,
                key_version: 1,
                salt: [0; 32],
                wrapped: Vec::new(),
                plain_size: 0,
            },
            object_key: [0; 32],
            ec: kura_erasure::EcParams::default(),
            segments: Vec::new(),
            protection: kura_placement::Protection::Full,
            version: 1,
            stored_at_unix_ms: 0,
            updated_at_unix_ms: 0,
            retain_until_unix_ms: None,
        })
    }

    #[test]
    fn entries_expire_are_evicted_and_keep_tenants_apart() {
        let cache = ManifestCache::new(2, Duration::from_millis(50));
        cache.put(manifest("a", "1.2"));
        assert!(cache.get("a", "1.2").is_some());
        assert!(cache.get("b", "1.2").is_none(), "another tenant's entry");
        cache.put(manifest("a", "1.3"));
        cache.put(manifest("a", "1.4"));
        assert!(
            cache.get("a", "1.2").is_none(),
            "least recently used evicted"
        );
        cache.forget("a", "1.4");
        assert!(cache.get("a", "1.4").is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get("a", "1.3").is_none(), "expired");
        let off = ManifestCache::new(0, Duration::from_secs(1));
        off.put(manifest("a", "1.2"));
        assert!(off.get("a", "1.2").is_none());
    }
}

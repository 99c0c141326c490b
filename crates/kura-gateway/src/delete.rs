//! Delete: an admin of a tenant removes instances or a whole study.
//!
//! The manifests go first, through Raft (`Command::DeleteManifests`): the
//! instance is NOT_FOUND from the commit on, and its shards, referenced by
//! nothing, are reclaimed by the storage nodes' orphan sweep after its
//! grace period. A crash anywhere leaves either the whole instance or no
//! manifest (and shards that the sweep reclaims): never a readable half.
//! The metadata cluster refuses a delete within the instance's retention
//! period or of a study on legal hold, changing nothing; a study's delete
//! checks every instance first, so it is refused whole too.

use std::sync::Arc;

use kura_proto::meta::{
    Applied, Command, Consistency, DELETE_BATCH_MAX, Query, QueryResult, Rejected,
};
use kura_proto::meta_client::Retry;

use crate::cluster::meta_error;
use crate::error::{GatewayError, rfc3339_ms};
use crate::server::Inner;

fn now_ms() -> i64 {
    kura_proto::audit::now_ms()
}

/// Deletes instances `uids` of `tenant`; answers how many were deleted.
pub(crate) async fn instances(
    gw: &Arc<Inner>,
    tenant: &str,
    uids: &[String],
) -> Result<u64, GatewayError> {
    let mut deleted = 0;
    for batch in uids.chunks(DELETE_BATCH_MAX) {
        let cmd = Command::DeleteManifests {
            tenant: tenant.to_string(),
            uids: batch.to_vec(),
            now_unix_ms: now_ms(),
        };
        let answer = gw
            .cluster
            .meta()
            .propose(&cmd, Retry::Idempotent)
            .await
            .map_err(meta_error)?;
        // Forgotten whatever the answer: a refusal re-reads them next time.
        for uid in batch {
            gw.manifests.forget(tenant, uid);
        }
        match answer {
            Ok(Applied::Deleted { deleted: n, .. }) => deleted += n,
            Ok(other) => {
                return Err(GatewayError::Internal(format!(
                    "unexpected answer to a delete: {other:?}"
                )));
            }
            Err(r) => return Err(refusal(r)),
        }
    }
    Ok(deleted)
}

/// Why the metadata cluster refused a delete, for the caller.
fn refusal(r: Rejected) -> GatewayError {
    match r {
        Rejected::Retained {
            sop_instance_uid,
            until_unix_ms,
        } => GatewayError::FailedPrecondition(format!(
            "instance {sop_instance_uid} is within its retention period until {}; nothing was deleted",
            rfc3339_ms(until_unix_ms)
        )),
        Rejected::OnLegalHold {
            study_instance_uid,
            reason,
        } => GatewayError::FailedPrecondition(format!(
            "study {study_instance_uid} is on legal hold ({reason}); nothing was deleted"
        )),
        other => GatewayError::FailedPrecondition(other.to_string()),
    }
}

/// Checks that no instance of `manifests` (one study) is retained and the
/// study is not held, before any of it is deleted.
pub(crate) async fn check_study(
    gw: &Arc<Inner>,
    tenant: &str,
    study: &str,
    manifests: &[kura_placement::Manifest],
) -> Result<(), GatewayError> {
    let meta = gw.cluster.meta();
    let hold = meta
        .query(&Query::LegalHold {
            tenant: tenant.to_string(),
            study_instance_uid: study.to_string(),
            consistency: Consistency::Linearizable,
        })
        .await
        .map_err(meta_error)?;
    if let QueryResult::LegalHold(Some(h)) = hold {
        return Err(refusal(Rejected::OnLegalHold {
            study_instance_uid: study.to_string(),
            reason: h.reason,
        }));
    }
    let days = match meta
        .query(&Query::Retention {
            tenant: tenant.to_string(),
            consistency: Consistency::Linearizable,
        })
        .await
        .map_err(meta_error)?
    {
        QueryResult::Retention(d) => d,
        other => {
            return Err(GatewayError::Internal(format!(
                "unexpected answer to Retention: {other:?}"
            )));
        }
    };
    let now = now_ms();
    for m in manifests {
        if let Some(until) = m.retained_until(days)
            && until > now
        {
            return Err(refusal(Rejected::Retained {
                sop_instance_uid: m.sop_instance_uid.clone(),
                until_unix_ms: until,
            }));
        }
    }
    Ok(())
}

/// The retention and legal hold an instance is under, for Stat: until when
/// it is retained (if later than now) and its study's hold reason. Read
/// from any voter (stale), like the manifest.
pub(crate) async fn policies(
    gw: &Arc<Inner>,
    m: &kura_placement::Manifest,
) -> Result<(i64, String), GatewayError> {
    let meta = gw.cluster.meta();
    let wait = gw.config.stale_read_attempt;
    let days = match meta
        .query_any(
            &Query::Retention {
                tenant: m.tenant.clone(),
                consistency: Consistency::Stale,
            },
            wait,
        )
        .await
        .map_err(meta_error)?
    {
        QueryResult::Retention(d) => d,
        other => {
            return Err(GatewayError::Internal(format!(
                "unexpected answer to Retention: {other:?}"
            )));
        }
    };
    let hold = match meta
        .query_any(
            &Query::LegalHold {
                tenant: m.tenant.clone(),
                study_instance_uid: m.study_instance_uid.clone(),
                consistency: Consistency::Stale,
            },
            wait,
        )
        .await
        .map_err(meta_error)?
    {
        QueryResult::LegalHold(h) => h.map(|h| h.reason).unwrap_or_default(),
        other => {
            return Err(GatewayError::Internal(format!(
                "unexpected answer to LegalHold: {other:?}"
            )));
        }
    };
    let until = m
        .retained_until(days)
        .filter(|&u| u > now_ms())
        .unwrap_or(0);
    Ok((until, hold))
}

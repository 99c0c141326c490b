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
    Applied, Command, Consistency, DELETE_BATCH_MAX, LegalHold, Query, Rejected,
};
use kura_proto::meta_client::Retry;

use crate::cluster::meta_error;
use crate::error::{GatewayError, rfc3339_ms};
use crate::state::Inner;

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

/// The tenant's retention period (days) and the study's legal hold, read
/// from the leader (`Linearizable`: before a delete) or from any voter
/// (`Stale`: for Stat, like the manifest).
async fn read_policies(
    gw: &Arc<Inner>,
    tenant: &str,
    study: &str,
    consistency: Consistency,
) -> Result<(Option<u32>, Option<LegalHold>), GatewayError> {
    let ask = |query: Query| async move {
        let meta = gw.cluster.meta();
        match consistency {
            Consistency::Linearizable => meta.query(&query).await,
            Consistency::Stale => meta.query_any(&query, gw.config.stale_read_attempt).await,
        }
        .map_err(meta_error)
    };
    let days = ask(Query::Retention {
        tenant: tenant.to_string(),
        consistency,
    })
    .await?
    .into_retention()?;
    let hold = ask(Query::LegalHold {
        tenant: tenant.to_string(),
        study_instance_uid: study.to_string(),
        consistency,
    })
    .await?
    .into_legal_hold()?;
    Ok((days, hold))
}

/// Checks that no instance of `manifests` (one study) is retained and the
/// study is not held, before any of it is deleted.
pub(crate) async fn check_study(
    gw: &Arc<Inner>,
    tenant: &str,
    study: &str,
    manifests: &[kura_placement::Manifest],
) -> Result<(), GatewayError> {
    let (days, hold) = read_policies(gw, tenant, study, Consistency::Linearizable).await?;
    if let Some(h) = hold {
        return Err(refusal(Rejected::OnLegalHold {
            study_instance_uid: study.to_string(),
            reason: h.reason,
        }));
    }
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
/// it is retained (if later than now) and its study's hold reason.
pub(crate) async fn policies(
    gw: &Arc<Inner>,
    m: &kura_placement::Manifest,
) -> Result<(i64, String), GatewayError> {
    let (days, hold) =
        read_policies(gw, &m.tenant, &m.study_instance_uid, Consistency::Stale).await?;
    let until = m
        .retained_until(days)
        .filter(|&u| u > now_ms())
        .unwrap_or(0);
    Ok((until, hold.map(|h| h.reason).unwrap_or_default()))
}

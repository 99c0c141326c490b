//! Encryption at rest in the gateway: opening a manifest's sealed secrets,
//! checking this gateway's cluster keys against the metadata cluster at
//! start, and the mapping of `kura_seal` errors to statuses.
//!
//! Format and reasoning: ARCHITECTURE.md, "Encryption at rest".

use std::sync::Arc;
use std::time::Duration;

use kura_placement::Manifest;
use kura_proto::meta::{Applied, Command, KeyCheck, Rejected};
use kura_proto::meta_client::{MetaClient, Retry};
use kura_seal::{Keyring, SealError, Secrets};

use crate::error::GatewayError;

/// Opens `m`'s sealed secrets (data key, the instance's blake3, Patient
/// ID).
pub(crate) fn open(keys: &Keyring, m: &Manifest) -> Result<Secrets, GatewayError> {
    keys.unwrap(&m.sealing.wrapped(), &m.wrap_context())
        .map_err(|e| sealing_error(m, e))
}

/// As [`open`]; a manifest (from the cache or a stale voter) sealed under
/// a version this gateway lacks is read again from the leader once: a key
/// rotation may have re-wrapped it since.
pub(crate) async fn open_fresh(
    gw: &Arc<crate::state::Inner>,
    m: &Arc<Manifest>,
) -> Result<(Arc<Manifest>, Secrets), GatewayError> {
    if gw.config.keys.has(m.sealing.key_version) {
        return Ok((Arc::clone(m), open(&gw.config.keys, m)?));
    }
    gw.manifests.forget(&m.tenant, &m.sop_instance_uid);
    let fresh =
        match crate::manifests::from_leader(&gw.cluster, &m.tenant, &m.sop_instance_uid).await {
            Ok(Some(fresh)) => Arc::new(fresh),
            Ok(None) | Err(_) => Arc::clone(m),
        };
    let secrets = open(&gw.config.keys, &fresh)?;
    gw.manifests.put(Arc::clone(&fresh));
    Ok((fresh, secrets))
}

/// `secrets` sealed for the instance `ctx` names under cluster key
/// `version`: the manifest's `sealing` and its content fingerprint (what a
/// store records, and what a rotation replaces).
pub(crate) fn seal_secrets(
    keys: &Keyring,
    version: u32,
    ctx: &kura_seal::WrapContext<'_>,
    secrets: &Secrets,
    plain_size: u64,
) -> Result<(kura_placement::Sealing, [u8; 32]), SealError> {
    let wrapped = keys.wrap(version, ctx, secrets)?;
    let fingerprint = keys.fingerprint(version, ctx.tenant, &secrets.plain_blake3)?;
    let sealing = kura_placement::Sealing {
        scheme: kura_seal::SCHEME,
        key_version: version,
        salt: wrapped.salt,
        wrapped: wrapped.bytes,
        plain_size,
    };
    Ok((sealing, fingerprint))
}

/// The content fingerprint of an instance whose blake3 is `plain_blake3`,
/// comparable with `m`'s (same tenant, same key version).
pub(crate) fn fingerprint_like(
    keys: &Keyring,
    m: &Manifest,
    plain_blake3: &[u8; 32],
) -> Result<[u8; 32], GatewayError> {
    keys.fingerprint(m.sealing.key_version, &m.tenant, plain_blake3)
        .map_err(|e| sealing_error(m, e))
}

/// The status of a sealing failure on `m`.
pub(crate) fn sealing_error(m: &Manifest, e: SealError) -> GatewayError {
    match e {
        SealError::UnknownKeyVersion { version, have } => {
            GatewayError::FailedPrecondition(format!(
                "instance {} is sealed under cluster key version {version}, which this gateway's key file lacks (it has {have}): add that key to the file, or let `kura admin keys rotate` re-wrap it first",
                m.sop_instance_uid
            ))
        }
        SealError::UnwrapFailed { .. }
        | SealError::WrappedMalformed { .. }
        | SealError::ChunkRejected { .. }
        | SealError::Truncated { .. } => {
            metrics::counter!("kura_gateway_unseal_failures_total").increment(1);
            tracing::error!(sop_instance_uid = %m.sop_instance_uid, key_version = m.sealing.key_version, error = %e, "sealed instance does not open");
            GatewayError::DataLoss(format!(
                "instance {} does not open: {e}; nothing of it was sent",
                m.sop_instance_uid
            ))
        }
        other => {
            GatewayError::Internal(format!("sealing instance {}: {other}", m.sop_instance_uid))
        }
    }
}

/// Records this gateway's key check values in the metadata cluster, or
/// finds they differ from the recorded ones: a gateway with a wrong key
/// file must not start (it would store data no other gateway opens, and
/// fail every read). Retries while the cluster is unreachable, for at most
/// `wait`.
pub async fn verify_keys(
    meta: &MetaClient,
    keys: &Arc<Keyring>,
    wait: Duration,
) -> Result<Vec<u32>, String> {
    let checks = keys
        .versions()
        .into_iter()
        .map(|version| {
            keys.check_value(version)
                .map(|check| KeyCheck { version, check })
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let command = Command::RegisterKeys { checks };
    let deadline = tokio::time::Instant::now() + wait;
    let mut last;
    loop {
        match meta.propose(&command, Retry::Idempotent).await {
            Ok(Ok(Applied::KeysRegistered { known })) => {
                let lacking: Vec<u32> = known.iter().copied().filter(|v| !keys.has(*v)).collect();
                if !lacking.is_empty() {
                    tracing::warn!(
                        ?lacking,
                        "the cluster knows key versions this gateway's key file lacks: instances sealed under them cannot be read here (see `kura admin keys status`)"
                    );
                }
                tracing::info!(versions = ?keys.versions(), current = keys.current(), "cluster keys verified");
                return Ok(known);
            }
            Ok(Err(Rejected::KeyMismatch { version })) => {
                return Err(format!(
                    "the cluster key file {} holds another key for version {version} than the one this cluster was sealed with (their check values differ); refusing to start: use the cluster's key file",
                    keys.source()
                ));
            }
            Ok(Ok(other)) => return Err(format!("unexpected answer to RegisterKeys: {other:?}")),
            Ok(Err(other)) => return Err(format!("key registration refused: {other}")),
            Err(e) => last = e.to_string(),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "cannot check the cluster keys against the metadata cluster within {wait:?} ({last}); refusing to start without knowing the key file is right"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Instances per cluster key version, and who holds which version.
pub(crate) async fn key_status(
    inner: &crate::state::Inner,
) -> Result<kura_proto::v1::KeyStatusResponse, GatewayError> {
    use kura_proto::meta::{Consistency, Query};
    let (manifests, registered) = inner
        .cluster
        .meta()
        .query(&Query::KeyUsage {
            consistency: Consistency::Linearizable,
        })
        .await
        .map_err(crate::cluster::meta_error)?
        .into_key_usage()?;
    let keys = &inner.config.keys;
    let mut versions: std::collections::BTreeSet<u32> = keys.versions().into_iter().collect();
    versions.extend(registered.iter().copied());
    versions.extend(manifests.iter().map(|(v, _)| *v));
    Ok(kura_proto::v1::KeyStatusResponse {
        current: keys.current(),
        versions: versions
            .into_iter()
            .map(|version| kura_proto::v1::KeyVersionUsage {
                version,
                instances: manifests
                    .iter()
                    .find(|(v, _)| *v == version)
                    .map_or(0, |(_, n)| *n),
                registered: registered.contains(&version),
                held_here: keys.has(version),
            })
            .collect(),
    })
}

/// The most instances one rotation page re-wraps.
pub const ROTATE_PAGE_MAX: u32 = 1000;
/// Manifests one rotation page looks at, at most.
const ROTATE_SCAN: u32 = 20_000;
/// Re-wraps proposed at once.
const ROTATE_IN_FLIGHT: usize = 16;

/// One page of key rotation (see `Admin.RotateKeys`).
pub(crate) async fn rotate_page(
    inner: &Arc<crate::state::Inner>,
    after: Option<(String, String)>,
    limit: u32,
) -> Result<kura_proto::v1::RotateKeysResponse, GatewayError> {
    use futures::StreamExt;
    use kura_proto::meta::{Consistency, Query};
    let keys = &inner.config.keys;
    let target = keys.current();
    let limit = if limit == 0 {
        256
    } else {
        limit.min(ROTATE_PAGE_MAX)
    };
    let (manifests, next) = inner
        .cluster
        .meta()
        .query(&Query::NotSealedUnder {
            key_version: target,
            after,
            limit,
            scan: ROTATE_SCAN,
            consistency: Consistency::Linearizable,
        })
        .await
        .map_err(crate::cluster::meta_error)?
        .into_sealed_page()?;
    let outcomes: Vec<Rewrapped> = futures::stream::iter(manifests)
        .map(|m| rewrap(inner, m, target))
        .buffer_unordered(ROTATE_IN_FLIGHT)
        .collect()
        .await;
    let mut out = kura_proto::v1::RotateKeysResponse {
        to_version: target,
        done: next.is_none(),
        ..Default::default()
    };
    for o in outcomes {
        match o {
            Rewrapped::Done => out.rewrapped += 1,
            Rewrapped::Gone => out.gone += 1,
            Rewrapped::Failed(e) => {
                out.failed += 1;
                if out.first_error.is_empty() {
                    out.first_error = e;
                }
            }
        }
    }
    if let Some((tenant, uid)) = next {
        out.next_tenant = tenant;
        out.next_sop_instance_uid = uid;
    }
    metrics::counter!("kura_gateway_keys_rewrapped_total").increment(out.rewrapped);
    tracing::info!(
        to_version = target,
        rewrapped = out.rewrapped,
        gone = out.gone,
        failed = out.failed,
        "key rotation page"
    );
    Ok(out)
}

enum Rewrapped {
    Done,
    Gone,
    Failed(String),
}

/// Re-wraps one manifest's secrets under `target`; on a concurrent change
/// (repair moved a shard) reads it again, a few times.
async fn rewrap(inner: &Arc<crate::state::Inner>, mut m: Manifest, target: u32) -> Rewrapped {
    let keys = &inner.config.keys;
    for _ in 0..5 {
        if m.sealing.key_version == target {
            return Rewrapped::Done;
        }
        let secrets = match open(keys, &m) {
            Ok(s) => s,
            Err(e) => return Rewrapped::Failed(e.to_string()),
        };
        let sealed = seal_secrets(
            keys,
            target,
            &m.wrap_context(),
            &secrets,
            m.sealing.plain_size,
        );
        let (sealing, fingerprint) = match sealed {
            Ok(s) => s,
            Err(e) => return Rewrapped::Failed(e.to_string()),
        };
        let command = Command::Rewrap {
            tenant: m.tenant.clone(),
            sop_instance_uid: m.sop_instance_uid.clone(),
            expected_version: m.version,
            sealing,
            fingerprint,
        };
        match inner
            .cluster
            .meta()
            .propose(&command, Retry::Idempotent)
            .await
        {
            Ok(Ok(_)) => {
                inner.manifests.forget(&m.tenant, &m.sop_instance_uid);
                return Rewrapped::Done;
            }
            Ok(Err(Rejected::NotFound(_))) => return Rewrapped::Gone,
            Ok(Err(Rejected::VersionMismatch { .. })) | Err(_) => {
                match crate::manifests::from_leader(&inner.cluster, &m.tenant, &m.sop_instance_uid)
                    .await
                {
                    Ok(Some(fresh)) => m = fresh,
                    Ok(None) => return Rewrapped::Gone,
                    Err(e) => return Rewrapped::Failed(e.to_string()),
                }
            }
            Ok(Err(other)) => return Rewrapped::Failed(other.to_string()),
        }
    }
    Rewrapped::Failed(format!(
        "instance {} kept changing; run the rotation again",
        m.sop_instance_uid
    ))
}

//! Retrieve: read the manifest, fetch each segment's shards from the nearest
//! holders, reconstruct from parity when a shard is missing, slow or
//! corrupt, open the sealed chunks (`kura_seal::Opener`), verify the
//! instance's blake3, stream the bytes out.
//!
//! Per segment the gateway asks the k holders of the read plan (data shards
//! first, own site first) in parallel. A failed fetch turns to the next
//! holder at once; a fetch still running after the hedge delay gets a
//! second holder asked beside it. The delay adapts to how long fetches
//! take here (smoothed time + 4 × its variation, 25–250 ms), so a holder
//! that went silent costs a read tens of milliseconds. The first k good shards decode the
//! segment. Segments are fetched up to [`READS_AHEAD`] ahead of the one
//! being sent. The last chunk is only sent once the whole object's blake3
//! matched the manifest: a client never receives a complete wrong object.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use kura_erasure::{ErasureError, SegmentCodec, SegmentExpectation};
use kura_placement::{Manifest, ReadVerdict, ShardFault, read_plan, read_verdict};
use kura_proto::shards_client::ShardId;
use kura_proto::v1::{RetrieveResponse, retrieve_response};
use tokio::sync::mpsc;
use tonic::Status;

use crate::cluster::ClusterState;
use crate::error::GatewayError;
use crate::info::instance_info;
use crate::state::Inner;

/// Segments fetched ahead of the one being streamed.
pub const READS_AHEAD: usize = 2;
/// Bytes per response chunk.
pub const CHUNK_BYTES: usize = 1024 * 1024;

pub(crate) type Sink = mpsc::Sender<Result<RetrieveResponse, Status>>;

/// Streams `manifest`'s instance into `tx`. Errors are sent as the
/// stream's final status.
pub(crate) async fn stream(
    gw: Arc<Inner>,
    manifest: Arc<Manifest>,
    tx: Sink,
    audited: impl std::future::Future<Output = ()> + Send,
) {
    let uid = manifest.sop_instance_uid.clone();
    let last = stream_inner(&gw, &manifest, &tx).await;
    // The audit entry committed while the bytes went out; the answer's
    // end waits for it (at most the read audit wait).
    audited.await;
    let sent = match last {
        Ok(Ok(last)) => {
            let sent = match last {
                Some(chunk) => {
                    metrics::counter!("kura_gateway_sent_bytes_total")
                        .increment(chunk.len() as u64);
                    send(
                        &tx,
                        Ok(RetrieveResponse {
                            msg: Some(retrieve_response::Msg::Chunk(chunk)),
                        }),
                    )
                    .await
                }
                None => Ok(()),
            };
            sent.map(|()| true)
        }
        Ok(Err(status)) => send(&tx, Err(status)).await.map(|()| false),
        Err(Gone) => Err(Gone),
    };
    match sent {
        Ok(true) => {
            metrics::counter!("kura_gateway_instances_retrieved_total").increment(1);
            tracing::debug!(sop_instance_uid = %uid, size = manifest.size, "instance retrieved");
        }
        Ok(false) => {}
        Err(Gone) => tracing::debug!(sop_instance_uid = %uid, "client went away during retrieve"),
    }
}

/// The client stopped listening.
struct Gone;

async fn send(tx: &Sink, msg: Result<RetrieveResponse, Status>) -> Result<(), Gone> {
    tx.send(msg).await.map_err(|_| Gone)
}

/// What ends a retrieve's answer: its last chunk (held back until the
/// whole instance matched its blake3), or the error.
type Last = Result<Option<Bytes>, Status>;

/// Sends everything but the answer's end, and answers the end.
async fn stream_inner(gw: &Arc<Inner>, manifest: &Arc<Manifest>, tx: &Sink) -> Result<Last, Gone> {
    let (manifest, secrets) = match crate::seal::open_fresh(gw, manifest).await {
        Ok(opened) => opened,
        Err(e) => return Ok(Err(e.into_status())),
    };
    let manifest = &manifest;
    send(
        tx,
        Ok(RetrieveResponse {
            msg: Some(retrieve_response::Msg::Info(instance_info(
                manifest, &secrets,
            ))),
        }),
    )
    .await?;
    // The data key stays the same when the manifest is read again below
    // (a rotation re-wraps it, it does not change it).
    let mut opener = kura_seal::Opener::new(&secrets.data_key, &manifest.object_key);
    let state = match gw.cluster.state().await {
        Ok(s) => s,
        Err(e) => return Ok(Err(e.into_status())),
    };
    // The manifest may come from a voter's stale state; when a segment
    // cannot be read with it, the leader's copy is read once and, if the
    // shards moved since, the read goes on with that one.
    let mut manifest = Arc::clone(manifest);
    let mut refreshed = false;
    let mut ahead = FuturesOrdered::new();
    let mut next_segment = 0usize;
    let mut hasher = blake3::Hasher::new();
    // The last chunk waits for the hash check.
    let mut held: Option<Bytes> = None;
    loop {
        while ahead.len() < READS_AHEAD && next_segment < manifest.segments.len() {
            let gw = Arc::clone(gw);
            let state = Arc::clone(&state);
            let manifest = Arc::clone(&manifest);
            let index = next_segment;
            ahead.push_back(tokio::spawn(async move {
                (index, read_segment(&gw, &state, &manifest, index).await)
            }));
            next_segment += 1;
        }
        let Some(result) = ahead.next().await else {
            break;
        };
        let data = match result {
            Ok((_, Ok(d))) => d,
            Ok((index, Err(e))) => {
                if !refreshed
                    && matches!(e, GatewayError::Unavailable(_) | GatewayError::DataLoss(_))
                {
                    refreshed = true;
                    let (tenant, uid) = (&manifest.tenant, &manifest.sop_instance_uid);
                    gw.manifests.forget(tenant, uid);
                    match crate::manifests::from_leader(&gw.cluster, tenant, uid).await {
                        Ok(Some(fresh)) if fresh.segments != manifest.segments => {
                            tracing::debug!(
                                sop_instance_uid = %manifest.sop_instance_uid,
                                segment = index,
                                "shards moved since the manifest was read; reading the leader's"
                            );
                            metrics::counter!("kura_gateway_manifest_refreshes_total").increment(1);
                            manifest = Arc::new(fresh);
                            gw.manifests.put(Arc::clone(&manifest));
                            ahead = FuturesOrdered::new();
                            next_segment = index;
                            continue;
                        }
                        Ok(_) => {}
                        Err(refresh) => {
                            tracing::debug!(error = %refresh, "leader's manifest not read")
                        }
                    }
                }
                return Ok(Err(e.into_status()));
            }
            Err(e) => {
                let e = GatewayError::Internal(format!("segment read task failed: {e}"));
                return Ok(Err(e.into_status()));
            }
        };
        let mut plain = Vec::with_capacity(data.len());
        if let Err(e) = opener.push(&data, &mut plain) {
            return Ok(Err(crate::seal::sealing_error(&manifest, e).into_status()));
        }
        if next_segment >= manifest.segments.len() && ahead.is_empty() {
            let opener = std::mem::replace(
                &mut opener,
                kura_seal::Opener::new(&secrets.data_key, &manifest.object_key),
            );
            if let Err(e) = opener.finish(&mut plain) {
                return Ok(Err(crate::seal::sealing_error(&manifest, e).into_status()));
            }
        }
        let data = Bytes::from(plain);
        hasher.update(&data);
        let mut offset = 0;
        while offset < data.len() {
            let end = (offset + CHUNK_BYTES).min(data.len());
            if let Some(prev) = held.replace(data.slice(offset..end)) {
                metrics::counter!("kura_gateway_sent_bytes_total").increment(prev.len() as u64);
                send(
                    tx,
                    Ok(RetrieveResponse {
                        msg: Some(retrieve_response::Msg::Chunk(prev)),
                    }),
                )
                .await?;
            }
            offset = end;
        }
    }
    if *hasher.finalize().as_bytes() != secrets.plain_blake3 {
        metrics::counter!("kura_gateway_object_hash_mismatches_total").increment(1);
        tracing::error!(
            sop_instance_uid = %manifest.sop_instance_uid,
            blake3 = %hex::encode(secrets.plain_blake3),
            "reassembled instance does not match its blake3; not sent"
        );
        let e = GatewayError::DataLoss(format!(
            "instance {} did not reassemble to its blake3 {}; the last bytes were withheld",
            manifest.sop_instance_uid,
            hex::encode(secrets.plain_blake3)
        ));
        return Ok(Err(e.into_status()));
    }
    Ok(Ok(held))
}

/// A fetch's outcome: the shard index, its holder, the bytes or why not.
type Fetch = (u8, u64, Result<Bytes, (ShardFault, String)>);

/// One shard a segment read could not use.
struct Failure {
    shard: u8,
    node: u64,
    fault: ShardFault,
    why: String,
}

/// Reads segment `index` of `manifest`: its object bytes. When too few
/// holders answer, the cluster map may be stale (a node came back, or went
/// down, since it was fetched): the read is tried once more with a fresh
/// map if its epoch moved.
pub(crate) async fn read_segment(
    gw: &Arc<Inner>,
    state: &Arc<ClusterState>,
    manifest: &Manifest,
    index: usize,
) -> Result<Bytes, GatewayError> {
    match read_segment_with(gw, state, manifest, index).await {
        Err(GatewayError::Unavailable(why)) => {
            gw.cluster.invalidate().await;
            let fresh = gw.cluster.state().await?;
            if fresh.map.epoch == state.map.epoch {
                return Err(GatewayError::Unavailable(why));
            }
            read_segment_with(gw, &fresh, manifest, index).await
        }
        other => other,
    }
}

async fn read_segment_with(
    gw: &Arc<Inner>,
    state: &Arc<ClusterState>,
    manifest: &Manifest,
    index: usize,
) -> Result<Bytes, GatewayError> {
    let seg = manifest
        .segments
        .get(index)
        .ok_or_else(|| GatewayError::Internal(format!("segment {index} out of range")))?;
    let k = manifest.ec.data_shards;
    let n = manifest.ec.total_shards();
    // Suspect nodes (a call just failed or hung) are planned like `Down`
    // ones: asked last.
    let avoiding = gw.cluster.avoiding_suspects(&state.map);
    let map = avoiding.as_ref().unwrap_or(&state.map);
    let plan = read_plan(map, seg, k, gw.config.site.as_deref());
    let mut candidates = plan.candidates();
    let expectation = SegmentExpectation {
        object_key: manifest.object_key,
        index: seg.index,
        data_len: seg.data_len,
        shard_blake3: Some(seg.shards.iter().map(|s| s.blake3).collect()),
        // Set at decode time: see `unverified_transit`.
        payloads_verified: false,
    };
    // Storage nodes verify every shard they read. One handed over in this
    // process or over TLS is not hashed again here (that was a third pass
    // over every byte; the instance's own blake3 is still checked at the
    // end, and each sealed chunk's tag on opening); one that crossed a
    // plaintext link is.
    let tls = gw.config.transport.is_tls();
    let mut unverified_transit = false;
    let mut got: Vec<Option<Vec<u8>>> = vec![None; n];
    let mut good = 0usize;
    // What went wrong, shard by shard: the fault decides the verdict, the
    // text goes into the error for the operator.
    let mut failures: Vec<Failure> = Vec::new();
    let mut inflight: FuturesUnordered<_> = FuturesUnordered::new();
    let launch = |shard: u8, node: u64| {
        let gw = Arc::clone(gw);
        let state = Arc::clone(state);
        let id = ShardId {
            object_key: manifest.object_key,
            segment: seg.index,
            index: shard,
        };
        async move {
            let started = Instant::now();
            let r = fetch(&gw, &state, node, &id).await;
            if r.is_ok() {
                gw.cluster.observe_fetch(started.elapsed());
            }
            let out: Fetch = (shard, node, r);
            out
        }
    };
    // Fetches launched and not answered yet, by node.
    let mut waiting_on: Vec<u64> = Vec::new();
    for _ in 0..usize::from(k) {
        if let Some((shard, node)) = candidates.next() {
            waiting_on.push(node);
            inflight.push(launch(shard, node));
        }
    }
    let hedge = gw.cluster.hedge_after(gw.config.read_hedge_after);
    let mut hedged = false;
    let mut attempts = 0;
    let mut verify_each = false;
    let shard_ok = |shard: u8, bytes: &[u8]| {
        kura_erasure::Shard::verify(bytes).is_ok_and(|h| {
            h.shard_index == shard
                && h.object_key == manifest.object_key
                && h.segment_index == seg.index
                && seg
                    .shards
                    .get(usize::from(shard))
                    .is_some_and(|l| l.blake3 == h.payload_blake3)
        })
    };
    loop {
        // Gather until k good shards (or nothing more to ask).
        while good < usize::from(k) {
            if inflight.is_empty() {
                match candidates.next() {
                    Some((shard, node)) => {
                        waiting_on.push(node);
                        inflight.push(launch(shard, node));
                    }
                    None => break,
                }
            }
            tokio::select! {
                r = inflight.next() => {
                    let Some((shard, node, r)) = r else { continue };
                    if let Some(at) = waiting_on.iter().position(|&n| n == node) {
                        waiting_on.swap_remove(at);
                    }
                    let r = match r {
                        Ok(b) if verify_each && !shard_ok(shard, &b) => {
                            report_bad(manifest, seg.index, shard);
                            Err((ShardFault::Damaged, "failed its check at the gateway".to_string()))
                        }
                        other => other,
                    };
                    match r {
                        Ok(bytes) if got[usize::from(shard)].is_none() => {
                            if !tls && gw.config.local_shards.get(node).is_none() {
                                unverified_transit = true;
                            }
                            got[usize::from(shard)] = Some(Vec::from(bytes));
                            good += 1;
                        }
                        Ok(_) => {}
                        Err((fault, why)) => {
                            failures.push(Failure { shard, node, fault, why });
                            if let Some((s, nd)) = candidates.next() {
                                waiting_on.push(nd);
                                inflight.push(launch(s, nd));
                            }
                        }
                    }
                }
                _ = tokio::time::sleep(hedge) => {
                    if let Some((s, nd)) = candidates.next() {
                        metrics::counter!("kura_gateway_hedged_shard_reads_total").increment(1);
                        hedged = true;
                        waiting_on.push(nd);
                        inflight.push(launch(s, nd));
                    }
                }
            }
        }
        if hedged && good >= usize::from(k) {
            // The segment was read around fetches still unanswered after
            // the hedge delay: the next reads ask those nodes last.
            for &node in &waiting_on {
                gw.cluster.suspect(
                    node,
                    "a shard read was still unanswered after the hedge delay",
                );
            }
        }
        if good < usize::from(k) {
            return Err(unreadable(manifest, seg.index, k, state, &failures));
        }
        // Decode with what we have (moved, not copied). Shards failing the
        // gateway's own check are excluded and the segment fetched again
        // from the remaining holders: rare, so simple.
        let params = manifest.ec;
        let expect = SegmentExpectation {
            payloads_verified: !unverified_transit,
            ..expectation.clone()
        };
        let shards = std::mem::replace(&mut got, vec![None; n]);
        good = 0;
        let decoded = tokio::task::spawn_blocking(move || {
            SegmentCodec::new(params).and_then(|mut c| c.decode(&expect, shards))
        })
        .await
        .map_err(|e| GatewayError::Internal(format!("decode task failed: {e}")))?;
        match decoded {
            Ok(d) => {
                if d.reconstructed {
                    metrics::counter!("kura_gateway_reconstructed_segments_total").increment(1);
                }
                for &b in &d.bad_shards {
                    report_bad(manifest, seg.index, b);
                }
                return Ok(Bytes::from(d.data));
            }
            Err(ErasureError::TooFewShards { .. }) => {}
            Err(e) => {
                return Err(GatewayError::Internal(format!(
                    "segment {} of {}: {e}",
                    seg.index, manifest.sop_instance_uid
                )));
            }
        }
        attempts += 1;
        if attempts > 2 {
            return Err(unreadable(manifest, seg.index, k, state, &failures));
        }
        // Start over with every readable holder, verifying each shard alone
        // before it counts (a shard that fails is then known by its index).
        verify_each = true;
        candidates = plan.candidates();
        hedged = false;
        waiting_on.clear();
        for _ in 0..usize::from(k) {
            if let Some((shard, node)) = candidates.next() {
                waiting_on.push(node);
                inflight.push(launch(shard, node));
            }
        }
    }
}

/// Logs and counts a shard that failed the gateway's check.
fn report_bad(manifest: &Manifest, segment: u32, shard: u8) {
    metrics::counter!("kura_gateway_corrupt_shards_total").increment(1);
    tracing::warn!(
        object_key = %manifest.object_key_hex(),
        segment,
        shard,
        "shard failed the gateway's check; the segment was read around it"
    );
}

async fn fetch(
    gw: &Arc<Inner>,
    state: &ClusterState,
    node: u64,
    id: &ShardId,
) -> Result<Bytes, (ShardFault, String)> {
    let read = match gw.config.local_shards.get(node) {
        // A storage node of this process: read in place, no socket.
        Some(local) => {
            let id = *id;
            tokio::task::spawn_blocking(move || local.read_shard(&id))
                .await
                .unwrap_or_else(|e| Err(Status::internal(format!("shard read task failed: {e}"))))
                .map_err(|status| (status.code(), status.to_string()))
        }
        None => {
            let info = state.map.node(node).ok_or_else(|| {
                (
                    ShardFault::Unreachable,
                    format!("node {node} is not in the cluster map"),
                )
            })?;
            let client = gw
                .cluster
                .client(info)
                .map_err(|e| (ShardFault::Unreachable, e.to_string()))?;
            client
                .get_shard(id, None)
                .await
                .map(|(_, bytes)| bytes)
                .map_err(|e| (e.code().unwrap_or(tonic::Code::Unknown), e.to_string()))
        }
    };
    match read {
        Ok(bytes) => {
            metrics::counter!("kura_gateway_shard_reads_total", "outcome" => "ok").increment(1);
            gw.cluster.cleared(node);
            Ok(bytes)
        }
        Err((code, e)) => {
            let corrupt = code == tonic::Code::DataLoss;
            if !matches!(code, tonic::Code::DataLoss | tonic::Code::NotFound) {
                gw.cluster.suspect(node, "a shard read failed");
            }
            let outcome = if corrupt { "corrupt" } else { "failed" };
            metrics::counter!("kura_gateway_shard_reads_total", "outcome" => outcome).increment(1);
            if corrupt {
                metrics::counter!("kura_gateway_corrupt_shards_total").increment(1);
                tracing::warn!(shard = %id, node, "storage node reports the shard corrupt; reading another");
            } else {
                tracing::debug!(shard = %id, node, error = %e, "shard read failed; reading another");
            }
            let fault = match code {
                tonic::Code::DataLoss => ShardFault::Damaged,
                tonic::Code::NotFound => ShardFault::Missing,
                _ => ShardFault::Unreachable,
            };
            Err((fault, e))
        }
    }
}

/// The error for a segment that could not be read: DATA_LOSS if fewer than
/// k shards can still exist, UNAVAILABLE if their holders are only out of
/// reach for now (`kura_placement::read_verdict` decides).
fn unreadable(
    manifest: &Manifest,
    segment: u32,
    k: u8,
    state: &ClusterState,
    failures: &[Failure],
) -> GatewayError {
    let faults: Vec<(u8, ShardFault)> = failures.iter().map(|f| (f.shard, f.fault)).collect();
    let verdict = manifest
        .segments
        .get(segment as usize)
        .map_or(ReadVerdict::Lost { remaining: 0 }, |seg| {
            read_verdict(&state.map, seg, k, &faults)
        });
    let detail = failures
        .iter()
        .map(|f| format!("shard {} on node {}: {}", f.shard, f.node, f.why))
        .collect::<Vec<_>>()
        .join("; ");
    match verdict {
        ReadVerdict::Lost { remaining } => GatewayError::DataLoss(format!(
            "segment {segment} of instance {}: fewer than {k} good shards remain ({remaining}; {detail})",
            manifest.sop_instance_uid
        )),
        ReadVerdict::Unavailable { .. } => GatewayError::Unavailable(format!(
            "segment {segment} of instance {}: fewer than {k} shard holders answered ({detail}); retry",
            manifest.sop_instance_uid
        )),
    }
}

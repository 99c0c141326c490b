//! `RebuildShards`: repair's write side, run on the node that will hold the
//! rebuilt shards. The node reads what it needs from the other holders
//! itself (so bytes go from the sources straight here, never through the
//! repair coordinator), checks every shard it reads and every shard it
//! rebuilds against the manifest's blake3s, and stores the wanted ones.
//!
//! A move (drain, rebalance) copies the wanted shard from its holder; a
//! rebuild (holder lost, shard damaged, never placed) reads k others and
//! decodes. Sources are tried in the caller's order — the caller lists this
//! node's own site first — and a source that fails is replaced by the next.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use futures::future::join_all;
use kura_erasure::{
    Code, EcParams, SHARD_HEADER_BYTES, SegmentExpectation, Shard, reconstruct_shards,
};
use kura_proto::shards_client::{ShardId, ShardsClient};
use kura_proto::v1::internal as pb;

use crate::error::StoreError;
use crate::service::ShardsService;

/// The most sources one request may list.
pub const REBUILD_SOURCES_MAX: usize = 1024;

/// A checked request.
struct Plan {
    params: EcParams,
    expectation: SegmentExpectation,
    blake3s: Vec<[u8; 32]>,
    want: Vec<u8>,
    sources: Vec<(u8, u64, String)>,
}

fn bad(msg: impl Into<String>) -> StoreError {
    StoreError::InvalidArgument(msg.into())
}

fn check(req: pb::RebuildShardsRequest) -> Result<Plan, StoreError> {
    let object_key: [u8; 32] = req.object_key.as_ref().try_into().map_err(|_| {
        bad(format!(
            "object_key must be 32 bytes, got {}",
            req.object_key.len()
        ))
    })?;
    let (Ok(k), Ok(m), Ok(code)) = (
        u8::try_from(req.data_shards),
        u8::try_from(req.parity_shards),
        u8::try_from(req.code),
    ) else {
        return Err(bad(
            "data_shards, parity_shards and code must each fit a byte",
        ));
    };
    let code = Code::from_id(code).ok_or_else(|| bad(format!("unknown code id {}", req.code)))?;
    let params = EcParams {
        data_shards: k,
        parity_shards: m,
        segment_bytes: req.segment_bytes,
        code,
    };
    params
        .validate()
        .map_err(|e| bad(format!("erasure profile: {e}")))?;
    if req.data_len == 0 || req.data_len > params.segment_bytes {
        return Err(bad(format!(
            "data_len {} is outside 1..={}",
            req.data_len, params.segment_bytes
        )));
    }
    let total = params.total_shards();
    if req.shard_blake3.len() != total {
        return Err(bad(format!(
            "shard_blake3 has {} hashes; the profile has {total} shards",
            req.shard_blake3.len()
        )));
    }
    let blake3s = req
        .shard_blake3
        .iter()
        .enumerate()
        .map(|(i, b)| {
            b.as_ref()
                .try_into()
                .map_err(|_| bad(format!("shard_blake3[{i}] must be 32 bytes")))
        })
        .collect::<Result<Vec<[u8; 32]>, _>>()?;
    let index = |i: u32, what: &str| -> Result<u8, StoreError> {
        u8::try_from(i)
            .ok()
            .filter(|&i| usize::from(i) < total)
            .ok_or_else(|| bad(format!("{what} index {i} is not a shard of {total}")))
    };
    let mut want = Vec::with_capacity(req.want.len());
    for &w in &req.want {
        let w = index(w, "wanted")?;
        if want.contains(&w) {
            return Err(bad(format!("shard {w} is wanted twice")));
        }
        want.push(w);
    }
    if want.is_empty() {
        return Err(bad("want names no shard"));
    }
    if req.sources.len() > REBUILD_SOURCES_MAX {
        return Err(bad(format!(
            "{} sources; at most {REBUILD_SOURCES_MAX}",
            req.sources.len()
        )));
    }
    let mut sources = Vec::with_capacity(req.sources.len());
    for s in req.sources {
        if s.addr.is_empty() {
            return Err(bad(format!("source node {} has no address", s.node)));
        }
        sources.push((index(s.index, "source")?, s.node, s.addr));
    }
    Ok(Plan {
        params,
        expectation: SegmentExpectation {
            object_key,
            index: req.segment,
            data_len: req.data_len,
            shard_blake3: Some(blake3s.clone()),
            payloads_verified: false,
        },
        blake3s,
        want,
        sources,
    })
}

/// Whether `bytes` are shard `index` of the expected segment, as the
/// manifest recorded it.
fn is_expected(plan: &Plan, index: u8, bytes: &[u8]) -> bool {
    match Shard::verify(bytes) {
        Ok(h) => {
            h.object_key == plan.expectation.object_key
                && h.segment_index == plan.expectation.index
                && h.shard_index == index
                && h.payload_blake3 == plan.blake3s[usize::from(index)]
        }
        Err(_) => false,
    }
}

impl ShardsService {
    /// A client of a peer node, shared between rebuilds.
    fn peer(&self, addr: &str) -> Result<ShardsClient, StoreError> {
        let mut peers = self.peers();
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let c = ShardsClient::new(addr, &self.transport)
            .map_err(|e| bad(format!("source address {addr}: {e}")))?;
        peers.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Fetches the listed sources at once; answers the good shards by index
    /// and the bytes read per node.
    async fn fetch(
        &self,
        plan: &Plan,
        batch: &[(u8, u64, String)],
        reads: &mut BTreeMap<u64, u64>,
    ) -> Vec<(u8, Vec<u8>)> {
        let key = plan.expectation.object_key;
        let segment = plan.expectation.index;
        let calls = batch.iter().map(|(index, node, addr)| async move {
            let id = ShardId {
                object_key: key,
                segment,
                index: *index,
            };
            let got = match self.peer(addr) {
                Ok(c) => c.get_shard(&id, None).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            (*index, *node, got)
        });
        let mut good = Vec::new();
        for (index, node, got) in join_all(calls).await {
            match got {
                Ok((_, bytes)) => {
                    *reads.entry(node).or_default() += bytes.len() as u64;
                    if is_expected(plan, index, &bytes) {
                        good.push((index, bytes.to_vec()));
                    } else {
                        tracing::warn!(
                            source = node,
                            shard = index,
                            "rebuild source sent a shard that does not match the manifest"
                        );
                    }
                }
                Err(e) => {
                    tracing::debug!(source = node, shard = index, error = %e, "rebuild source failed")
                }
            }
        }
        good
    }

    pub(crate) async fn rebuild(
        &self,
        req: pb::RebuildShardsRequest,
    ) -> Result<pb::RebuildShardsResponse, StoreError> {
        let plan = check(req)?;
        let k = usize::from(plan.params.data_shards);
        let shard_bytes =
            u64::from(plan.params.shard_len(plan.expectation.data_len)) + SHARD_HEADER_BYTES as u64;
        // Room for k read shards and the wanted ones, held at once.
        let _buffer = self
            .buffer(shard_bytes * (k + plan.want.len()) as u64)
            .await?;
        let mut reads = BTreeMap::new();
        let mut have: BTreeMap<u8, Vec<u8>> = BTreeMap::new();

        // A move: every wanted shard read from a holder of it.
        let direct: Vec<_> = plan
            .sources
            .iter()
            .filter(|(i, _, _)| plan.want.contains(i))
            .cloned()
            .collect();
        let mut tried = BTreeSet::new();
        for want in &plan.want {
            for s in direct.iter().filter(|(i, _, _)| i == want) {
                tried.insert((s.0, s.1));
                if let Some((i, b)) = self
                    .fetch(&plan, std::slice::from_ref(s), &mut reads)
                    .await
                    .pop()
                {
                    have.insert(i, b);
                    break;
                }
            }
        }
        let mut reconstructed = false;
        if plan.want.iter().any(|w| !have.contains_key(w)) {
            // A rebuild: k good shards from the sources, in order, a batch
            // of the missing count at a time.
            reconstructed = true;
            let mut queue = plan
                .sources
                .iter()
                .filter(|(i, n, _)| !tried.contains(&(*i, *n)))
                .cloned()
                .collect::<std::collections::VecDeque<_>>();
            while have.len() < k {
                let need = k - have.len();
                let mut batch = Vec::with_capacity(need);
                while batch.len() < need {
                    let Some(s) = queue.pop_front() else { break };
                    if have.contains_key(&s.0)
                        || batch.iter().any(|b: &(u8, u64, String)| b.0 == s.0)
                    {
                        continue;
                    }
                    batch.push(s);
                }
                if batch.is_empty() {
                    break;
                }
                for (i, b) in self.fetch(&plan, &batch, &mut reads).await {
                    have.insert(i, b);
                }
            }
            if have.len() < k {
                return Err(StoreError::SourcesShort(format!(
                    "segment {} of object {}: {} good shards found among the sources, {k} needed",
                    plan.expectation.index,
                    hex::encode(plan.expectation.object_key),
                    have.len()
                )));
            }
            let params = plan.params;
            let expectation = plan.expectation.clone();
            let mut slots: Vec<Option<Vec<u8>>> = vec![None; plan.params.total_shards()];
            for (i, b) in std::mem::take(&mut have) {
                slots[usize::from(i)] = Some(b);
            }
            let rebuilt = tokio::task::spawn_blocking(move || {
                reconstruct_shards(params, &expectation, slots)
            })
            .await
            .map_err(|e| StoreError::Internal(format!("rebuild task failed: {e}")))?
            .map_err(|e| StoreError::SourcesShort(format!("decode: {e}")))?;
            for w in &plan.want {
                let shard = rebuilt
                    .shards
                    .get(usize::from(*w))
                    .ok_or_else(|| StoreError::Internal(format!("decode lacks shard {w}")))?;
                have.insert(*w, shard.encode_to_vec());
            }
        }

        let mut stored = Vec::with_capacity(plan.want.len());
        for w in &plan.want {
            let bytes = have
                .remove(w)
                .ok_or_else(|| StoreError::Internal(format!("shard {w} vanished")))?;
            // Never store what the manifest does not name.
            if !is_expected(&plan, *w, &bytes) {
                return Err(StoreError::Internal(format!(
                    "rebuilt shard {w} does not match the manifest's blake3"
                )));
            }
            let id = ShardId {
                object_key: plan.expectation.object_key,
                segment: plan.expectation.index,
                index: *w,
            };
            let blake3 = plan.blake3s[usize::from(*w)];
            let bytes = Bytes::from(bytes);
            // The manifest is the authority: a different shard under this id
            // (it cannot be another object's) is replaced.
            let outcome = self
                .blocking(move |store| store.put(&id, &bytes, &blake3, true))
                .await?;
            stored.push(outcome.info.to_proto());
        }
        tracing::info!(
            object_key = %hex::encode(plan.expectation.object_key),
            segment = plan.expectation.index,
            want = ?plan.want,
            reconstructed,
            read_bytes = reads.values().sum::<u64>(),
            "shards rebuilt"
        );
        Ok(pb::RebuildShardsResponse {
            stored,
            reads: reads
                .into_iter()
                .map(|(node, bytes)| pb::SourceRead { node, bytes })
                .collect(),
            reconstructed,
        })
    }
}

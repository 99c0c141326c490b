//! Storage nodes in the caller's own process.
//!
//! `kura dev` runs every role in one process, and a `kura server` may run a
//! gateway beside a storage node. A gateway reading a shard of a storage
//! node in its own process calls it directly instead of through loopback
//! gRPC: no socket, no HTTP/2 framing, no TLS records to seal and open,
//! one copy less. Nothing leaves the process, so nothing needs TLS or a
//! peer certificate; the read still verifies the shard's blake3 and
//! quarantines it on a mismatch, exactly as the Shards service does.
//!
//! A node registers itself when it starts and withdraws when it stops;
//! the registry holds only weak references, so a node dropped without a
//! shutdown is gone from it as well.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};

use bytes::Bytes;

use crate::shards_client::ShardId;

/// One storage node's reads, served in process.
pub trait LocalShardReader: Send + Sync {
    /// Reads shard `id` whole (header and payload) after checking its
    /// blake3; errors carry the status the Shards service would answer
    /// (NOT_FOUND, DATA_LOSS for a corrupt shard, UNAVAILABLE once the
    /// node is shutting down). Blocks on the disk: call it off the reactor.
    fn read_shard(&self, id: &ShardId) -> Result<Bytes, tonic::Status>;
}

/// The storage nodes of this process, by node id. Cloning shares it.
#[derive(Clone, Default)]
pub struct LocalShards {
    nodes: Arc<RwLock<HashMap<u64, Weak<dyn LocalShardReader>>>>,
}

impl std::fmt::Debug for LocalShards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<u64> = self
            .nodes
            .read()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        f.debug_struct("LocalShards").field("nodes", &ids).finish()
    }
}

impl LocalShards {
    /// Node `id` now serves reads in process through `reader` (replacing
    /// an earlier registration of the same id).
    pub fn register(&self, id: u64, reader: &Arc<dyn LocalShardReader>) {
        let mut nodes = self
            .nodes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        nodes.insert(id, Arc::downgrade(reader));
    }

    /// Node `id` no longer serves reads in process.
    pub fn withdraw(&self, id: u64) {
        let mut nodes = self
            .nodes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        nodes.remove(&id);
    }

    /// Node `id`'s reader, if it runs in this process.
    pub fn get(&self, id: u64) -> Option<Arc<dyn LocalShardReader>> {
        let nodes = self
            .nodes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        nodes.get(&id).and_then(Weak::upgrade)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Bytes);
    impl LocalShardReader for Fixed {
        fn read_shard(&self, _: &ShardId) -> Result<Bytes, tonic::Status> {
            Ok(self.0.clone())
        }
    }

    #[test]
    fn a_node_is_found_until_it_withdraws_or_is_dropped() {
        let local = LocalShards::default();
        let a: Arc<dyn LocalShardReader> = Arc::new(Fixed(Bytes::from_static(b"a")));
        let b: Arc<dyn LocalShardReader> = Arc::new(Fixed(Bytes::from_static(b"b")));
        local.register(1, &a);
        local.register(2, &b);
        assert!(local.get(1).is_some());
        assert!(local.get(3).is_none());
        local.withdraw(1);
        assert!(local.get(1).is_none());
        drop(b);
        assert!(local.get(2).is_none(), "a dropped node is not served");
    }
}

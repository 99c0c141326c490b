//! openraft's own storage conformance suite, run against Kura's RocksDB log
//! store and state machine.

use kura_meta::TypeConfig;
use kura_meta::store::log::LogStore;
use kura_meta::store::open_db;
use kura_meta::store::sm::StateMachine;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachine), openraft::StorageError<u64>> {
        let dir = tempfile::tempdir()
            .map_err(|e| openraft::StorageError::from(openraft::StorageIOError::write(&e)))?;
        let db = open_db(&dir.path().join("db"))
            .map_err(|e| openraft::StorageError::from(openraft::StorageIOError::write(&e)))?;
        let sm = StateMachine::open(db.clone(), &dir.path().join("snapshots"))?;
        Ok((dir, LogStore::new(db), sm))
    }
}

/// Plain #[test]: the suite builds its own runtime for every case.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(RocksBuilder).expect("openraft storage suite");
}

//! `Txn`: the pending writes of one `apply` call, visible to later
//! commands of the same call, written to RocksDB in one batch.

use super::*;

/// Pending writes of one `apply` call, visible to later commands of the
/// same call before they reach RocksDB in one batch.
pub(super) struct Txn<'a> {
    pub(super) db: &'a DB,
    pub(super) writes: BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>>,
}

impl<'a> Txn<'a> {
    pub(super) fn get<T: serde::de::DeserializeOwned>(
        &self,
        cf_name: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let bytes = match self.writes.get(&(cf_name, key.to_vec())) {
            Some(pending) => pending.clone(),
            None => self
                .db
                .get_cf(cf(self.db, cf_name)?, key)
                .map_err(read_err)?,
        };
        match bytes {
            None => Ok(None),
            Some(b) => Ok(Some(codec::decode(&b).map_err(read_err)?)),
        }
    }

    pub(super) fn put<T: Serialize>(
        &mut self,
        cf_name: &'static str,
        key: Vec<u8>,
        value: &T,
    ) -> Result<(), StorageError> {
        let bytes = codec::encode(value).map_err(write_err)?;
        self.writes.insert((cf_name, key), Some(bytes));
        Ok(())
    }

    pub(super) fn put_raw(&mut self, cf_name: &'static str, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert((cf_name, key), Some(value));
    }

    pub(super) fn delete(&mut self, cf_name: &'static str, key: Vec<u8>) {
        self.writes.insert((cf_name, key), None);
    }

    /// Whether any key starting with `prefix` exists, pending writes of
    /// this transaction included.
    /// Visits the keys under `prefix`, pending writes included (a pending
    /// delete hides a stored key; a key may be visited twice), until
    /// `visit` answers false.
    pub(super) fn visit_prefix(
        &self,
        cf_name: &'static str,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let pending = self
            .writes
            .range((cf_name, prefix.to_vec())..)
            .take_while(|((c, k), _)| *c == cf_name && k.starts_with(prefix));
        let mut deleted = std::collections::BTreeSet::new();
        for ((_, k), v) in pending {
            if v.is_some() {
                if !visit(k) {
                    return Ok(());
                }
            } else {
                deleted.insert(k.clone());
            }
        }
        let h = cf(self.db, cf_name)?;
        for item in self
            .db
            .iterator_cf(h, IteratorMode::From(prefix, Direction::Forward))
        {
            let (key, _) = item.map_err(read_err)?;
            if !key.starts_with(prefix) {
                break;
            }
            if !deleted.contains(key.as_ref()) && !visit(&key) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Every key under `prefix` (a few: key versions).
    pub(super) fn keys_with_prefix(
        &self,
        cf_name: &'static str,
        prefix: &[u8],
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut keys = std::collections::BTreeSet::new();
        self.visit_prefix(cf_name, prefix, |k| {
            keys.insert(k.to_vec());
            true
        })?;
        Ok(keys.into_iter().collect())
    }

    pub(super) fn any_with_prefix(
        &self,
        cf_name: &'static str,
        prefix: &[u8],
    ) -> Result<bool, StorageError> {
        let mut any = false;
        self.visit_prefix(cf_name, prefix, |_| {
            any = true;
            false
        })?;
        Ok(any)
    }

    pub(super) fn commit(self) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        for ((cf_name, key), value) in self.writes {
            let h = cf(self.db, cf_name)?;
            match value {
                Some(v) => batch.put_cf(h, key, v),
                None => batch.delete_cf(h, key),
            }
        }
        // Not synced: see the module doc of `store` (the log is).
        self.db.write(batch).map_err(write_err)
    }
}

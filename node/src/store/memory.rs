//! An in-memory store for tests and in-process simulations. Same semantics as the sled store,
//! minus durability across processes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;
use mesh_protocol::{ForkProof, ProductId, VerifiedEvent};

use super::{Store, StoreError, StoredHead, check_contiguous, replica_changes};

#[derive(Debug, Default)]
struct State {
    identity: Option<[u8; 32]>,
    catalog: BTreeMap<ProductId, Bytes>,
    logs: HashMap<ProductId, Log>,
    forks: BTreeMap<(ProductId, u64), Bytes>,
    subscriptions: BTreeMap<ProductId, ()>,
}

#[derive(Debug, Default)]
struct Log {
    events: Vec<Bytes>,
    head: Option<StoredHead>,
    replica: HashMap<Bytes, Bytes>,
}

/// A store that lives and dies with the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    /// Tests only: catalog writes fail, as on a full disk.
    #[cfg(test)]
    catalog_writes_fail: std::sync::atomic::AtomicBool,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later catalog write fail.
    #[cfg(test)]
    pub(crate) fn fail_catalog_writes(&self) {
        self.catalog_writes_fail
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn check_catalog_write(&self) -> Result<(), StoreError> {
        #[cfg(test)]
        if self
            .catalog_writes_fail
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(StoreError::Io("catalog writes fail (test)".into()));
        }
        Ok(())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated: every method below
        // validates before it mutates. So a poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for MemoryStore {
    fn waits_on_disk(&self) -> bool {
        false
    }

    fn identity(&self) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self.state().identity)
    }

    fn set_identity(&self, seed: &[u8; 32]) -> Result<(), StoreError> {
        self.state().identity = Some(*seed);
        Ok(())
    }

    fn catalog_get(&self, product: &ProductId) -> Result<Option<Bytes>, StoreError> {
        Ok(self.state().catalog.get(product).cloned())
    }

    fn catalog_put(&self, product: &ProductId, entry: &Bytes) -> Result<(), StoreError> {
        self.check_catalog_write()?;
        self.state().catalog.insert(product.clone(), entry.clone());
        Ok(())
    }

    fn catalog_put_many(&self, entries: &[(ProductId, Bytes)]) -> Result<(), StoreError> {
        self.check_catalog_write()?;
        let mut state = self.state();
        for (product, entry) in entries {
            state.catalog.insert(product.clone(), entry.clone());
        }
        Ok(())
    }

    fn catalog_all(&self) -> Result<Vec<Bytes>, StoreError> {
        Ok(self.state().catalog.values().cloned().collect())
    }

    fn log_head(&self, product: &ProductId) -> Result<Option<StoredHead>, StoreError> {
        Ok(self.state().logs.get(product).and_then(|l| l.head))
    }

    fn log_append(&self, product: &ProductId, events: &[VerifiedEvent]) -> Result<(), StoreError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let mut state = self.state();
        let log = state.logs.entry(product.clone()).or_default();
        check_contiguous(log.head, events)?;
        log.events
            .extend(events.iter().map(|e| e.encoded().clone()));
        for (record, value) in replica_changes(events) {
            match value {
                Some(v) => log.replica.insert(record.clone(), v.clone()),
                None => log.replica.remove(record),
            };
        }
        log.head = Some(StoredHead {
            seq: last.seq(),
            id: last.id(),
        });
        Ok(())
    }

    fn log_range(
        &self,
        product: &ProductId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Bytes>, StoreError> {
        let state = self.state();
        let Some(log) = state.logs.get(product) else {
            return Ok(Vec::new());
        };
        let start = usize::try_from(from_seq.max(1) - 1).unwrap_or(usize::MAX);
        Ok(log.events.iter().skip(start).take(limit).cloned().collect())
    }

    fn logs(&self) -> Result<Vec<(ProductId, StoredHead)>, StoreError> {
        Ok(self
            .state()
            .logs
            .iter()
            .filter_map(|(p, l)| l.head.map(|h| (p.clone(), h)))
            .collect())
    }

    fn replica_get(&self, product: &ProductId, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        Ok(self
            .state()
            .logs
            .get(product)
            .and_then(|l| l.replica.get(key).cloned()))
    }

    fn fork_put(&self, proof: &ForkProof) -> Result<bool, StoreError> {
        let mut state = self.state();
        let k = (proof.product().clone(), proof.seq());
        if state.forks.contains_key(&k) {
            return Ok(false);
        }
        state.forks.insert(k, proof.encode());
        Ok(true)
    }

    fn forks(&self, product: Option<&ProductId>) -> Result<Vec<Bytes>, StoreError> {
        Ok(self
            .state()
            .forks
            .iter()
            .filter(|((p, _), _)| product.is_none_or(|want| want == p))
            .map(|(_, v)| v.clone())
            .collect())
    }

    fn subscription_put(&self, product: &ProductId) -> Result<(), StoreError> {
        self.state().subscriptions.insert(product.clone(), ());
        Ok(())
    }

    fn subscription_remove(&self, product: &ProductId) -> Result<(), StoreError> {
        self.state().subscriptions.remove(product);
        Ok(())
    }

    fn subscriptions(&self) -> Result<Vec<ProductId>, StoreError> {
        Ok(self.state().subscriptions.keys().cloned().collect())
    }
}

//! The catalog as this node holds it: every product's latest signed entry.
//!
//! Entries arrive by gossip, by anti-entropy and from the node's own `publish`; all go through
//! [`Catalog::accept_many`]: decode, verify, then the protocol's merge rule. The in-memory map
//! and the anti-entropy summary are rebuilt from the store at start.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use mesh_protocol::sync::{CatalogDigest, CatalogVersion, ProductDigest};
use mesh_protocol::{
    CatalogSummary, Config, EquivocationProof, Merge, ProductId, RejectReason,
    VerifiedCatalogEntry, merge,
};
use tokio::sync::broadcast;

use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// How many equivocation proofs `status` keeps.
const EQUIVOCATIONS_KEPT: usize = 64;

#[derive(Default)]
struct Inner {
    summary: CatalogSummary,
    entries: BTreeMap<ProductId, VerifiedCatalogEntry>,
    by_digest: HashMap<ProductDigest, ProductId>,
    /// Products per owner key, for the per-owner quota.
    per_owner: HashMap<mesh_protocol::PublicKey, usize>,
    equivocations: Vec<EquivocationProof>,
}

impl Inner {
    /// Why a new product may not enter the catalog, if it may not.
    fn refuse_new(&self, product: &ProductId, config: &Config) -> Option<&'static str> {
        if self.entries.contains_key(product) {
            return None;
        }
        if self.entries.len() >= config.catalog_entries_max {
            return Some("catalog_full");
        }
        if self.per_owner.get(product.owner()).copied().unwrap_or(0)
            >= config.products_per_owner_max
        {
            return Some("owner_quota");
        }
        None
    }
}

pub struct Catalog {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
    /// Shared, not copied: each of the 1024 slots of a broadcast channel holds one value.
    changes: broadcast::Sender<Arc<VerifiedCatalogEntry>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

/// What accepting a batch of entries did.
#[derive(Debug, Default)]
pub struct Accepted {
    /// Entries that were new or newer, now stored.
    pub changed: Vec<VerifiedCatalogEntry>,
    pub rejected: Vec<RejectReason>,
}

impl Catalog {
    /// Loads the catalog from the store, verifying every entry again.
    pub fn load(
        store: Arc<dyn Store>,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let mut inner = Inner::default();
        for bytes in store.catalog_all()? {
            match VerifiedCatalogEntry::decode_and_verify(bytes, &config) {
                Ok(entry) => insert(&mut inner, entry),
                Err(e) => tracing::error!("stored catalog entry does not verify, skipped: {e}"),
            }
        }
        metrics.catalog_entries.set(inner.entries.len() as i64);
        Ok(Self {
            store,
            config,
            metrics,
            inner: Mutex::new(inner),
            changes: broadcast::channel(1024).0,
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Each critical section decides, then mutates; a poisoned lock is consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Verifies and merges received entries, committing the changed ones with one flush.
    pub fn accept_many(&self, entries: Vec<Bytes>, peer: &str) -> Result<Accepted, StoreError> {
        let mut accepted = Accepted::default();
        let mut verified = Vec::with_capacity(entries.len());
        for bytes in entries {
            match VerifiedCatalogEntry::decode_and_verify(bytes, &self.config) {
                Ok(e) => verified.push(e),
                Err(e) => {
                    self.metrics.reject_entry(e.kind());
                    tracing::warn!(peer, reason = e.kind(), "catalog entry rejected: {e}");
                    accepted.rejected.push(e);
                }
            }
        }
        let mut inner = self.inner();
        let mut to_store = Vec::new();
        for entry in verified {
            if let Some(reason) = inner.refuse_new(entry.product(), &self.config) {
                self.metrics.reject_entry(reason);
                tracing::warn!(peer, product = %entry.product().short(), reason, "catalog entry refused");
                continue;
            }
            match merge(inner.entries.get(entry.product()), &entry) {
                Merge::New | Merge::Newer { .. } => {
                    to_store.push((entry.product().clone(), entry.encoded().clone()));
                    insert(&mut inner, entry.clone());
                    accepted.changed.push(entry);
                }
                Merge::Stale { .. } | Merge::Duplicate => {}
                Merge::Equivocation {
                    proof,
                    keep_incoming,
                } => {
                    if keep_incoming {
                        to_store.push((entry.product().clone(), entry.encoded().clone()));
                        insert(&mut inner, entry.clone());
                        accepted.changed.push(entry);
                    }
                    self.metrics.catalog_equivocations.inc();
                    tracing::warn!(
                        peer, product = %proof.product().short(), revision = proof.revision(),
                        "catalog equivocation: the owner signed two entries with one revision"
                    );
                    if inner.equivocations.len() < EQUIVOCATIONS_KEPT {
                        inner.equivocations.push(*proof);
                    }
                }
            }
        }
        if !to_store.is_empty()
            && let Err(e) = self.store.catalog_put_many(&to_store)
        {
            // Memory must never claim more than the store holds: reload it from the store.
            *inner = rebuild(&self.store, &self.config)?;
            return Err(e);
        }
        self.metrics.catalog_entries.set(inner.entries.len() as i64);
        self.metrics
            .catalog_received
            .inc_by(accepted.changed.len() as u64);
        drop(inner);
        for entry in &accepted.changed {
            let _ = self.changes.send(Arc::new(entry.clone()));
        }
        Ok(accepted)
    }

    /// Stores one of this node's own entries. Durable before it returns.
    pub fn accept_own(&self, entry: &VerifiedCatalogEntry) -> Result<(), StoreError> {
        let mut inner = self.inner();
        self.store.catalog_put(entry.product(), entry.encoded())?;
        insert(&mut inner, entry.clone());
        self.metrics.catalog_entries.set(inner.entries.len() as i64);
        drop(inner);
        let _ = self.changes.send(Arc::new(entry.clone()));
        Ok(())
    }

    pub fn get(&self, product: &ProductId) -> Option<VerifiedCatalogEntry> {
        self.inner().entries.get(product).cloned()
    }

    pub fn entries(&self) -> Vec<VerifiedCatalogEntry> {
        self.inner().entries.values().cloned().collect()
    }

    /// The entries of one owner's products, without copying the rest of the catalog.
    pub fn owned_by(&self, owner: &mesh_protocol::PublicKey) -> Vec<VerifiedCatalogEntry> {
        self.inner()
            .entries
            .values()
            .filter(|e| e.product().owner() == owner)
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.inner().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn equivocations(&self) -> Vec<EquivocationProof> {
        self.inner().equivocations.clone()
    }

    /// Entries as they change, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<VerifiedCatalogEntry>> {
        self.changes.subscribe()
    }

    pub fn digest(&self) -> CatalogDigest {
        self.inner().summary.digest()
    }

    pub fn differing_buckets(&self, theirs: &CatalogDigest) -> Vec<u32> {
        self.inner().summary.differing_buckets(theirs)
    }

    pub fn versions_in(&self, bucket: u32) -> Vec<CatalogVersion> {
        self.inner().summary.versions_in(bucket)
    }

    /// Encoded entries answering a bucket request, at most `bytes_max` bytes of them; the flag
    /// says whether more were left out.
    pub fn newer_than(
        &self,
        bucket: u32,
        have: &[CatalogVersion],
        bytes_max: usize,
    ) -> (Vec<Bytes>, bool) {
        let inner = self.inner();
        let mut out = Vec::new();
        let mut total = 0;
        for digest in inner.summary.newer_than(bucket, have) {
            let Some(entry) = inner
                .by_digest
                .get(&digest)
                .and_then(|p| inner.entries.get(p))
            else {
                continue;
            };
            let bytes = entry.encoded();
            if total + bytes.len() > bytes_max && !out.is_empty() {
                return (out, true);
            }
            total += bytes.len();
            out.push(bytes.clone());
        }
        (out, false)
    }
}

fn insert(inner: &mut Inner, entry: VerifiedCatalogEntry) {
    if !inner.entries.contains_key(entry.product()) {
        *inner.per_owner.entry(*entry.product().owner()).or_default() += 1;
    }
    inner.summary.insert(&entry);
    inner
        .by_digest
        .insert(entry.product().digest(), entry.product().clone());
    inner.entries.insert(entry.product().clone(), entry);
}

/// The in-memory state as the store has it (after a failed write).
fn rebuild(store: &Arc<dyn Store>, config: &Config) -> Result<Inner, StoreError> {
    let mut inner = Inner::default();
    for bytes in store.catalog_all()? {
        if let Ok(entry) = VerifiedCatalogEntry::decode_and_verify(bytes, config) {
            insert(&mut inner, entry);
        }
    }
    Ok(inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use mesh_protocol::{CatalogEntry, Descriptor, ProductName, SecretKey};

    fn entry(owner: &SecretKey, name: &str, revision: u64) -> Bytes {
        let config = Config::default();
        let yaml = format!(
            "name: {name}\ndomain: d\nowner: o\ndescription: x\nversion: 1.0.0\nschema:\n  fields:\n    - name: id\n      type: string\n"
        );
        CatalogEntry {
            product: ProductId::new(owner.public(), ProductName::new(name).unwrap()),
            revision,
            timestamp_micros: 0,
            descriptor: Descriptor::from_yaml(&yaml, &config).unwrap(),
            consumes: Vec::new(),
        }
        .sign(owner, &config)
        .unwrap()
        .encoded()
        .clone()
    }

    #[test]
    fn the_catalog_is_bounded_per_owner_and_in_total_but_updates_always_pass() {
        let config = Config {
            products_per_owner_max: 2,
            catalog_entries_max: 3,
            ..Config::default()
        };
        let catalog = Catalog::load(
            Arc::new(MemoryStore::new()),
            Arc::new(config),
            Arc::new(Metrics::default()),
        )
        .unwrap();
        let (alice, bob) = (
            SecretKey::from_bytes(&[1; 32]),
            SecretKey::from_bytes(&[2; 32]),
        );
        let a = catalog
            .accept_many(
                vec![
                    entry(&alice, "a1", 1),
                    entry(&alice, "a2", 1),
                    entry(&alice, "a3", 1),
                ],
                "peer",
            )
            .unwrap();
        assert_eq!(
            a.changed.len(),
            2,
            "the third product of one owner is refused"
        );
        let b = catalog
            .accept_many(vec![entry(&bob, "b1", 1), entry(&bob, "b2", 1)], "peer")
            .unwrap();
        assert_eq!(b.changed.len(), 1, "the catalog holds 3 entries at most");
        let update = catalog
            .accept_many(vec![entry(&alice, "a1", 2)], "peer")
            .unwrap();
        assert_eq!(
            update.changed.len(),
            1,
            "a known product may always be updated"
        );
        assert_eq!(catalog.len(), 3);
    }
}

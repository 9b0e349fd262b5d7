//! The catalog as this node holds it: every product's latest signed entry.
//!
//! Entries arrive by gossip, by anti-entropy and from the node's own `publish`; all go through
//! [`Catalog::accept_many`]: decode, verify, then the protocol's merge rule. The in-memory map
//! and the anti-entropy summary are rebuilt from the store at start.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use mesh_protocol::sync::{CatalogDigest, CatalogVersion, ProductDigest};
use mesh_protocol::{
    CatalogSummary, Config, EquivocationProof, Merge, ProductId, PublicKey, RejectReason,
    SignedCatalogEntry, VerifiedCatalogEntry, merge,
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
    per_owner: HashMap<PublicKey, usize>,
    equivocations: Vec<EquivocationProof>,
}

impl Inner {
    /// Whether this entry, or a newer revision of its product, is held: judged on the entry's
    /// unverified claims, which is enough to drop it, never to keep it.
    fn holds_as_new(&self, entry: &SignedCatalogEntry) -> bool {
        let claimed = entry.unverified();
        self.entries.get(&claimed.product).is_some_and(|held| {
            held.revision() > claimed.revision
                || (held.revision() == claimed.revision && held.id() == entry.id())
        })
    }

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
    /// What happened to each received entry, in input order.
    pub outcomes: Vec<Outcome>,
}

impl Accepted {
    pub fn rejected(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Rejected(_)))
            .count()
    }
}

/// What happened to one received entry.
#[derive(Debug)]
pub enum Outcome {
    /// Verified and stored: new, newer, or the winner of an equivocation.
    Changed,
    /// Verified, and evidence of an equivocation that the stored entry wins.
    Equivocation,
    /// This entry or a newer revision was held already: dropped without checking its
    /// signature (nothing of it is kept or passed on).
    Known,
    /// Not checked: the catalog is full, or the owner has all the products it may have.
    Refused(&'static str),
    /// Valid and new, but the store failed to keep it: not held, not passed on.
    NotStored,
    /// Malformed or badly signed.
    Rejected(RejectReason),
}

impl Outcome {
    /// Whether gossip should pass the entry on: it is valid and told this node something.
    pub fn worth_forwarding(&self) -> bool {
        matches!(self, Self::Changed | Self::Equivocation)
    }
}

impl Catalog {
    /// Loads the catalog from the store, verifying every entry again.
    pub fn load(
        store: Arc<dyn Store>,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let inner = rebuild(&store, &config)?;
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

    /// Holds the catalog's lock until the result is dropped, as a writer would.
    #[cfg(test)]
    pub(crate) fn held(&self) -> impl Sized + '_ {
        self.inner()
    }

    /// Decodes, verifies and merges received entries, each with the (short) name of the peer
    /// it came from, committing the changed ones with one flush. If that flush fails, the
    /// entries it held are [`Outcome::NotStored`] and nothing changed; an error means the
    /// store could not even be read back.
    ///
    /// Entries the catalog holds already, or holds a newer revision of, are dropped before
    /// their signature is checked, and the rest are checked in one batch: under a burst the
    /// same entry arrives by gossip and by anti-entropy, and each signature check costs more
    /// than everything else done here.
    pub fn accept_many<'a>(
        &self,
        entries: impl IntoIterator<Item = (Bytes, &'a str)>,
    ) -> Result<Accepted, StoreError> {
        let mut accepted = Accepted::default();
        // Decoding (every descriptor rule) needs no lock.
        let decoded: Vec<_> = entries
            .into_iter()
            .map(|(bytes, peer)| (SignedCatalogEntry::decode(bytes, &self.config), peer))
            .collect();
        // (input index, peer, entry) of the entries worth a signature check.
        let mut unchecked = Vec::new();
        {
            let inner = self.inner();
            for (index, (decoded, peer)) in decoded.into_iter().enumerate() {
                let outcome = match decoded {
                    Err(e) => reject(&self.metrics, peer, e.into()),
                    Ok(entry) => {
                        match inner.refuse_new(&entry.unverified().product, &self.config) {
                            Some(reason) => {
                                refuse(&self.metrics, peer, &entry.unverified().product, reason)
                            }
                            None if inner.holds_as_new(&entry) => Outcome::Known,
                            None => {
                                unchecked.push((index, peer, entry));
                                Outcome::Known
                            }
                        }
                    }
                };
                accepted.outcomes.push(outcome);
            }
        }
        let (places, entries): (Vec<_>, Vec<_>) = unchecked
            .into_iter()
            .map(|(index, peer, entry)| ((index, peer), entry))
            .unzip();
        let mut verified = Vec::with_capacity(entries.len());
        for ((index, peer), result) in places
            .into_iter()
            .zip(SignedCatalogEntry::verify_batch(entries))
        {
            match result {
                Ok(entry) => verified.push((index, peer, entry)),
                Err(e) => accepted.outcomes[index] = reject(&self.metrics, peer, e.into()),
            }
        }
        let mut inner = self.inner();
        let mut to_store = Vec::new();
        for (index, peer, entry) in verified {
            // Another batch may have changed the catalog since the check above.
            if let Some(reason) = inner.refuse_new(entry.product(), &self.config) {
                accepted.outcomes[index] = refuse(&self.metrics, peer, entry.product(), reason);
                continue;
            }
            accepted.outcomes[index] = match merge(inner.entries.get(entry.product()), &entry) {
                Merge::New | Merge::Newer { .. } => {
                    to_store.push((entry.product().clone(), entry.encoded().clone()));
                    insert(&mut inner, entry.clone());
                    accepted.changed.push(entry);
                    Outcome::Changed
                }
                Merge::Stale { .. } | Merge::Duplicate => Outcome::Known,
                Merge::Equivocation {
                    proof,
                    keep_incoming,
                } => {
                    self.metrics.catalog_equivocations.inc();
                    tracing::warn!(
                        peer, product = %proof.product().short(), revision = proof.revision(),
                        "catalog equivocation: the owner signed two entries with one revision"
                    );
                    if inner.equivocations.len() < EQUIVOCATIONS_KEPT {
                        inner.equivocations.push(*proof);
                    }
                    if keep_incoming {
                        to_store.push((entry.product().clone(), entry.encoded().clone()));
                        insert(&mut inner, entry.clone());
                        accepted.changed.push(entry);
                        Outcome::Changed
                    } else {
                        Outcome::Equivocation
                    }
                }
            };
        }
        if !to_store.is_empty()
            && let Err(e) = self.store.catalog_put_many(&to_store)
        {
            // Memory must never claim more than the store holds: reload it from the store. The
            // verdicts on bad entries stand.
            tracing::error!("cannot store catalog entries: {e}");
            *inner = rebuild(&self.store, &self.config)?;
            for outcome in &mut accepted.outcomes {
                if matches!(outcome, Outcome::Changed) {
                    *outcome = Outcome::NotStored;
                }
            }
            accepted.changed.clear();
            return Ok(accepted);
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

    /// The entries held of `products`, without waiting: `None` while another caller holds the
    /// catalog (a writer, or a copy of the whole catalog).
    pub fn try_get_many(&self, products: &[ProductId]) -> Option<Vec<VerifiedCatalogEntry>> {
        let inner = crate::node::try_lock(&self.inner)?;
        Some(
            products
                .iter()
                .filter_map(|p| inner.entries.get(p).cloned())
                .collect(),
        )
    }

    pub fn entries(&self) -> Vec<VerifiedCatalogEntry> {
        self.inner().entries.values().cloned().collect()
    }

    /// The keys that own at least one product here, without copying the entries.
    pub fn owners(&self) -> HashSet<PublicKey> {
        self.inner().entries.keys().map(|p| *p.owner()).collect()
    }

    /// The entries of one owner's products, without copying the rest of the catalog.
    pub fn owned_by(&self, owner: &PublicKey) -> Vec<VerifiedCatalogEntry> {
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

    pub fn root(&self) -> [u8; 32] {
        self.inner().summary.root()
    }

    pub fn digest_for(&self, asker_root: Option<&[u8; 32]>) -> CatalogDigest {
        self.inner().summary.digest_for(asker_root)
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

fn reject(metrics: &Metrics, peer: &str, e: RejectReason) -> Outcome {
    metrics.reject_entry(e.kind());
    tracing::warn!(peer, reason = e.kind(), "catalog entry rejected: {e}");
    Outcome::Rejected(e)
}

fn refuse(metrics: &Metrics, peer: &str, product: &ProductId, reason: &'static str) -> Outcome {
    metrics.reject_entry(reason);
    tracing::warn!(peer, product = %product.short(), reason, "catalog entry refused");
    Outcome::Refused(reason)
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
/// Entries are checked again (a store is a file anyone with disk access can edit), in
/// batches; one that does not verify is skipped.
fn rebuild(store: &Arc<dyn Store>, config: &Config) -> Result<Inner, StoreError> {
    /// Entries per signature batch.
    const LOAD_BATCH: usize = 256;
    let mut inner = Inner::default();
    let mut batch = Vec::with_capacity(LOAD_BATCH);
    let mut stored = store.catalog_all()?.into_iter().peekable();
    while stored.peek().is_some() {
        batch.clear();
        for bytes in stored.by_ref().take(LOAD_BATCH) {
            match SignedCatalogEntry::decode(bytes, config) {
                Ok(entry) => batch.push(entry),
                Err(e) => tracing::error!("stored catalog entry is malformed, skipped: {e}"),
            }
        }
        for result in SignedCatalogEntry::verify_batch(std::mem::take(&mut batch)) {
            match result {
                Ok(entry) => insert(&mut inner, entry),
                Err(e) => tracing::error!("stored catalog entry does not verify, skipped: {e}"),
            }
        }
    }
    Ok(inner)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use mesh_protocol::{CatalogEntry, Descriptor, ProductName, SecretKey};

    /// `owner`'s signed entry for a product `name` at `revision`, encoded.
    pub(crate) fn entry(owner: &SecretKey, name: &str, revision: u64) -> Bytes {
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
                [
                    entry(&alice, "a1", 1),
                    entry(&alice, "a2", 1),
                    entry(&alice, "a3", 1),
                ]
                .map(|e| (e, "peer")),
            )
            .unwrap();
        assert_eq!(
            a.changed.len(),
            2,
            "the third product of one owner is refused"
        );
        let b = catalog
            .accept_many([
                (entry(&bob, "b1", 1), "peer"),
                (entry(&bob, "b2", 1), "peer"),
            ])
            .unwrap();
        assert_eq!(b.changed.len(), 1, "the catalog holds 3 entries at most");
        let update = catalog
            .accept_many([(entry(&alice, "a1", 2), "peer")])
            .unwrap();
        assert_eq!(
            update.changed.len(),
            1,
            "a known product may always be updated"
        );
        assert_eq!(catalog.len(), 3);
    }

    /// A catalog with the default limits over `store`.
    fn load(store: Arc<dyn Store>) -> Catalog {
        Catalog::load(
            store,
            Arc::new(Config::default()),
            Arc::new(Metrics::default()),
        )
        .unwrap()
    }

    fn flip_signature(bytes: &Bytes) -> Bytes {
        use prost::Message;
        let mut pb = mesh_protocol::wire::pb::SignedCatalogEntry::decode(bytes.clone()).unwrap();
        let mut sig = pb.signature.to_vec();
        sig[7] ^= 1;
        pb.signature = Bytes::from(sig);
        Bytes::from(pb.encode_to_vec())
    }

    #[test]
    fn each_received_entry_gets_its_own_outcome() {
        let catalog = load(Arc::new(MemoryStore::new()));
        let owners: Vec<SecretKey> = (1..=4u8).map(|i| SecretKey::from_bytes(&[i; 32])).collect();
        let v2 = entry(&owners[0], "a", 2);
        let first = catalog
            .accept_many([
                (v2.clone(), "p1"),
                (flip_signature(&entry(&owners[1], "b", 1)), "p2"),
                (entry(&owners[2], "c", 1), "p3"),
                (Bytes::from_static(b"not an entry"), "p4"),
            ])
            .unwrap();
        let kinds: Vec<_> = first.outcomes.iter().map(|o| format!("{o:?}")).collect();
        assert!(matches!(first.outcomes[0], Outcome::Changed), "{kinds:?}");
        assert!(
            matches!(
                first.outcomes[1],
                Outcome::Rejected(RejectReason::Verify(_))
            ),
            "{kinds:?}"
        );
        assert!(matches!(first.outcomes[2], Outcome::Changed), "{kinds:?}");
        assert!(
            matches!(
                first.outcomes[3],
                Outcome::Rejected(RejectReason::Decode(_))
            ),
            "{kinds:?}"
        );
        assert_eq!((first.changed.len(), first.rejected()), (2, 2));

        // Held entries and older revisions are known: dropped, never stored, never passed on,
        // even when their signature is bad (it is not checked).
        let again = catalog
            .accept_many([
                (v2.clone(), "p1"),
                (entry(&owners[0], "a", 1), "p2"),
                (flip_signature(&v2), "p3"),
            ])
            .unwrap();
        assert!(
            again.outcomes.iter().all(|o| matches!(o, Outcome::Known)),
            "{:?}",
            again.outcomes
        );
        assert!(again.changed.is_empty());

        // A newer revision with a bad signature is checked, and rejected.
        let forged = catalog
            .accept_many([(flip_signature(&entry(&owners[0], "a", 3)), "p1")])
            .unwrap();
        assert!(matches!(forged.outcomes[0], Outcome::Rejected(_)));
        assert_eq!(
            catalog
                .get(&ProductId::new(
                    owners[0].public(),
                    ProductName::new("a").unwrap()
                ))
                .map(|e| e.revision()),
            Some(2)
        );

        // Two entries of one revision: the equivocation is checked and recorded; the entry
        // with the smaller id wins on every node, and only a winner is forwarded.
        let original = entry(&owners[3], "d", 1);
        let yaml = "name: d\ndomain: d\nowner: o\ndescription: another\nversion: 1.0.0\nschema:\n  fields:\n    - name: id\n      type: string\n";
        let config = Config::default();
        let other = CatalogEntry {
            product: ProductId::new(owners[3].public(), ProductName::new("d").unwrap()),
            revision: 1,
            timestamp_micros: 0,
            descriptor: Descriptor::from_yaml(yaml, &config).unwrap(),
            consumes: Vec::new(),
        }
        .sign(&owners[3], &config)
        .unwrap();
        catalog.accept_many([(original.clone(), "p1")]).unwrap();
        let clash = catalog
            .accept_many([(other.encoded().clone(), "p2")])
            .unwrap();
        let original_id = VerifiedCatalogEntry::decode_and_verify(original, &config)
            .unwrap()
            .id();
        if other.id() < original_id {
            assert!(matches!(clash.outcomes[0], Outcome::Changed));
        } else {
            assert!(matches!(clash.outcomes[0], Outcome::Equivocation));
        }
        assert!(clash.outcomes[0].worth_forwarding());
        assert_eq!(catalog.equivocations().len(), 1);
    }

    #[test]
    fn loading_skips_stored_entries_that_do_not_verify() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let owners: Vec<SecretKey> = (1..=5u8).map(|i| SecretKey::from_bytes(&[i; 32])).collect();
        let product = |i: usize| ProductId::new(owners[i].public(), ProductName::new("p").unwrap());
        let mut stored = vec![
            (product(0), entry(&owners[0], "p", 1)),
            (product(1), flip_signature(&entry(&owners[1], "p", 1))),
            (product(2), entry(&owners[2], "p", 1)),
            (product(3), Bytes::from_static(b"edited on disk")),
            (product(4), entry(&owners[4], "p", 1)),
        ];
        store.catalog_put_many(&stored).unwrap();
        let catalog = load(store);
        let mut held: Vec<ProductId> = catalog
            .entries()
            .iter()
            .map(|e| e.product().clone())
            .collect();
        held.sort();
        stored.retain(|(p, _)| *p == product(0) || *p == product(2) || *p == product(4));
        let mut expected: Vec<ProductId> = stored.into_iter().map(|(p, _)| p).collect();
        expected.sort();
        assert_eq!(held, expected);
    }

    #[test]
    fn a_failed_flush_keeps_nothing_but_still_rejects_forgeries() {
        let store = Arc::new(MemoryStore::new());
        store.fail_catalog_writes();
        let catalog = load(store);
        let (alice, bob) = (
            SecretKey::from_bytes(&[1; 32]),
            SecretKey::from_bytes(&[2; 32]),
        );
        let mut changes = catalog.subscribe();
        let accepted = catalog
            .accept_many([
                (entry(&alice, "a", 1), "p1"),
                (flip_signature(&entry(&bob, "b", 1)), "p2"),
            ])
            .unwrap();
        assert!(
            matches!(accepted.outcomes[0], Outcome::NotStored),
            "{:?}",
            accepted.outcomes
        );
        assert!(!accepted.outcomes[0].worth_forwarding());
        assert!(matches!(accepted.outcomes[1], Outcome::Rejected(_)));
        assert!(accepted.changed.is_empty());
        assert!(
            catalog.is_empty(),
            "memory never claims more than the store"
        );
        assert!(changes.try_recv().is_err(), "nothing was announced");
    }
}

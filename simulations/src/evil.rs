//! A store that lies: it holds genuine events but serves them doctored.
//!
//! The forging relay of the `forge` fault runs the node's own code over this store. Every event
//! it reads back to serve a log (backfill) has its payload replaced while its signature is
//! kept, so any subscriber that asks it for a log receives forgeries. Live forwarding comes
//! from memory and stays genuine: the forgeries arrive exactly when a subscriber falls back to
//! this relay and backfills from it.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use mesh_node::store::{MemoryStore, Store, StoreError, StoredHead};
use mesh_protocol::wire::pb;
use mesh_protocol::{ForkProof, ProductId, VerifiedEvent};
use prost::Message;

#[derive(Debug)]
pub struct ForgingStore {
    inner: MemoryStore,
    /// The relay's own key: its own products it serves genuine (it attacks others' logs).
    own: mesh_protocol::PublicKey,
    /// Forged events handed out to be served.
    pub forged: AtomicU64,
}

impl ForgingStore {
    pub fn new(own: mesh_protocol::PublicKey) -> Self {
        Self {
            inner: MemoryStore::new(),
            own,
            forged: AtomicU64::new(0),
        }
    }
}

/// The event with its payload replaced and its signature kept; unchanged if it does not decode.
pub fn tamper(bytes: Bytes) -> Bytes {
    let Ok(mut envelope) = pb::SignedEvent::decode(bytes.clone()) else {
        return bytes;
    };
    let Ok(mut body) = pb::EventBody::decode(envelope.body.clone()) else {
        return bytes;
    };
    body.payload = Bytes::from_static(br#"{"forged":true}"#);
    envelope.body = Bytes::from(body.encode_to_vec());
    Bytes::from(envelope.encode_to_vec())
}

impl Store for ForgingStore {
    fn waits_on_disk(&self) -> bool {
        self.inner.waits_on_disk()
    }
    fn log_range(
        &self,
        product: &ProductId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Bytes>, StoreError> {
        let events = self.inner.log_range(product, from_seq, limit)?;
        if product.owner() == &self.own {
            return Ok(events);
        }
        self.forged
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(events.into_iter().map(tamper).collect())
    }
    fn identity(&self) -> Result<Option<[u8; 32]>, StoreError> {
        self.inner.identity()
    }
    fn set_identity(&self, seed: &[u8; 32]) -> Result<(), StoreError> {
        self.inner.set_identity(seed)
    }
    fn catalog_get(&self, p: &ProductId) -> Result<Option<Bytes>, StoreError> {
        self.inner.catalog_get(p)
    }
    fn catalog_put(&self, p: &ProductId, e: &Bytes) -> Result<(), StoreError> {
        self.inner.catalog_put(p, e)
    }
    fn catalog_put_many(&self, e: &[(ProductId, Bytes)]) -> Result<(), StoreError> {
        self.inner.catalog_put_many(e)
    }
    fn catalog_all(&self) -> Result<Vec<Bytes>, StoreError> {
        self.inner.catalog_all()
    }
    fn log_head(&self, p: &ProductId) -> Result<Option<StoredHead>, StoreError> {
        self.inner.log_head(p)
    }
    fn log_append(&self, p: &ProductId, e: &[VerifiedEvent]) -> Result<(), StoreError> {
        self.inner.log_append(p, e)
    }
    fn logs(&self) -> Result<Vec<(ProductId, StoredHead)>, StoreError> {
        self.inner.logs()
    }
    fn replica_get(&self, p: &ProductId, k: &[u8]) -> Result<Option<Bytes>, StoreError> {
        self.inner.replica_get(p, k)
    }
    fn fork_put(&self, f: &ForkProof) -> Result<bool, StoreError> {
        self.inner.fork_put(f)
    }
    fn forks(&self, p: Option<&ProductId>) -> Result<Vec<Bytes>, StoreError> {
        self.inner.forks(p)
    }
    fn subscription_put(&self, p: &ProductId) -> Result<(), StoreError> {
        self.inner.subscription_put(p)
    }
    fn subscription_remove(&self, p: &ProductId) -> Result<(), StoreError> {
        self.inner.subscription_remove(p)
    }
    fn subscriptions(&self) -> Result<Vec<ProductId>, StoreError> {
        self.inner.subscriptions()
    }
}

/// A store the simulator keeps across a node's restarts. The node expects to be the only
/// holder of its store (its shutdown waits until nobody else holds it); this wrapper is what
/// the node holds, while the simulator keeps the store inside.
pub struct Kept(pub std::sync::Arc<dyn Store>);

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kept")
    }
}

impl Store for Kept {
    fn waits_on_disk(&self) -> bool {
        self.0.waits_on_disk()
    }
    fn log_range(&self, p: &ProductId, from: u64, limit: usize) -> Result<Vec<Bytes>, StoreError> {
        self.0.log_range(p, from, limit)
    }
    fn identity(&self) -> Result<Option<[u8; 32]>, StoreError> {
        self.0.identity()
    }
    fn set_identity(&self, seed: &[u8; 32]) -> Result<(), StoreError> {
        self.0.set_identity(seed)
    }
    fn catalog_get(&self, p: &ProductId) -> Result<Option<Bytes>, StoreError> {
        self.0.catalog_get(p)
    }
    fn catalog_put(&self, p: &ProductId, e: &Bytes) -> Result<(), StoreError> {
        self.0.catalog_put(p, e)
    }
    fn catalog_put_many(&self, e: &[(ProductId, Bytes)]) -> Result<(), StoreError> {
        self.0.catalog_put_many(e)
    }
    fn catalog_all(&self) -> Result<Vec<Bytes>, StoreError> {
        self.0.catalog_all()
    }
    fn log_head(&self, p: &ProductId) -> Result<Option<StoredHead>, StoreError> {
        self.0.log_head(p)
    }
    fn log_append(&self, p: &ProductId, e: &[VerifiedEvent]) -> Result<(), StoreError> {
        self.0.log_append(p, e)
    }
    fn logs(&self) -> Result<Vec<(ProductId, StoredHead)>, StoreError> {
        self.0.logs()
    }
    fn replica_get(&self, p: &ProductId, k: &[u8]) -> Result<Option<Bytes>, StoreError> {
        self.0.replica_get(p, k)
    }
    fn fork_put(&self, f: &ForkProof) -> Result<bool, StoreError> {
        self.0.fork_put(f)
    }
    fn forks(&self, p: Option<&ProductId>) -> Result<Vec<Bytes>, StoreError> {
        self.0.forks(p)
    }
    fn subscription_put(&self, p: &ProductId) -> Result<(), StoreError> {
        self.0.subscription_put(p)
    }
    fn subscription_remove(&self, p: &ProductId) -> Result<(), StoreError> {
        self.0.subscription_remove(p)
    }
    fn subscriptions(&self) -> Result<Vec<ProductId>, StoreError> {
        self.0.subscriptions()
    }
}

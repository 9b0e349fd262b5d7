//! Durable state of a node, behind a small trait.
//!
//! Two implementations: [`SledStore`] on disk, and [`MemoryStore`] for tests and in-process
//! simulations. Both keep one invariant that the rest of the node relies on: **a log, its head
//! and its replica change together or not at all.** [`Store::log_append`] writes a run of
//! events, the new head and every replica change in one atomic batch, then makes it durable
//! before returning, so an event acknowledged to a producer survives `kill -9`, and a restart
//! never finds a replica that disagrees with its log.
//!
//! The store trusts its caller to have verified what it is given (it takes `VerifiedEvent`s),
//! but it still checks that a run extends the stored head: that pairs the chain check the
//! caller did with one at the point of commit.
//!
//! Store methods block; async code calls them through `spawn_blocking` or from the node's
//! dedicated commit thread.

mod memory;
mod sled;

use bytes::Bytes;
use mesh_protocol::{EventId, ForkProof, ProductId, VerifiedEvent};

pub use memory::MemoryStore;
pub use sled::SledStore;

/// A failure of the storage layer. These are operator problems (disk full, corrupt files), not
/// peer misbehaviour.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O: {0}")]
    Io(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("run of events starts at seq {got}, but the log's head is {head}")]
    NotContiguous { head: u64, got: u64 },
}

impl From<::sled::Error> for StoreError {
    fn from(e: ::sled::Error) -> Self {
        StoreError::Io(e.to_string())
    }
}

/// The head of a stored log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredHead {
    pub seq: u64,
    pub id: EventId,
}

/// What a node stores. All methods are synchronous and may block on disk.
pub trait Store: Send + Sync + 'static {
    /// Whether calls may wait on a disk (`true` unless a store says otherwise). The node makes
    /// short calls to a store that never does on the async runtime, where a hand-off to the
    /// blocking pool would cost more than the call.
    fn waits_on_disk(&self) -> bool {
        true
    }

    /// The node's identity key seed, if one was stored.
    fn identity(&self) -> Result<Option<[u8; 32]>, StoreError>;
    fn set_identity(&self, seed: &[u8; 32]) -> Result<(), StoreError>;

    /// The stored catalog entry of a product (encoded `SignedCatalogEntry`).
    fn catalog_get(&self, product: &ProductId) -> Result<Option<Bytes>, StoreError>;
    /// Stores (or replaces) a product's catalog entry, durably.
    fn catalog_put(&self, product: &ProductId, entry: &Bytes) -> Result<(), StoreError>;
    /// Stores several entries with one flush (what anti-entropy receives in bulk).
    fn catalog_put_many(&self, entries: &[(ProductId, Bytes)]) -> Result<(), StoreError>;
    /// Every stored catalog entry.
    fn catalog_all(&self) -> Result<Vec<Bytes>, StoreError>;

    /// The head of a product's log, `None` if the node holds none of it.
    fn log_head(&self, product: &ProductId) -> Result<Option<StoredHead>, StoreError>;
    /// Appends a run of events that extends the head, applies them to the replica, moves the
    /// head — atomically — and makes the result durable before returning.
    fn log_append(&self, product: &ProductId, events: &[VerifiedEvent]) -> Result<(), StoreError>;
    /// Up to `limit` encoded events from `from_seq` on, in order.
    fn log_range(
        &self,
        product: &ProductId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Bytes>, StoreError>;
    /// The products whose logs this node holds, with their heads.
    fn logs(&self) -> Result<Vec<(ProductId, StoredHead)>, StoreError>;

    /// The current value of a record in a product's replica.
    fn replica_get(&self, product: &ProductId, key: &[u8]) -> Result<Option<Bytes>, StoreError>;

    /// Stores a fork proof; returns `false` if a proof for that product and seq was stored.
    fn fork_put(&self, proof: &ForkProof) -> Result<bool, StoreError>;
    /// Every stored fork proof (encoded), of one product or of all.
    fn forks(&self, product: Option<&ProductId>) -> Result<Vec<Bytes>, StoreError>;

    /// Remembers that the node follows a product, so it resumes after a restart.
    fn subscription_put(&self, product: &ProductId) -> Result<(), StoreError>;
    fn subscription_remove(&self, product: &ProductId) -> Result<(), StoreError>;
    fn subscriptions(&self) -> Result<Vec<ProductId>, StoreError>;
}

/// Replica changes of a run of events, in order: `(key, Some(value))` to set, `None` to delete.
pub(crate) fn replica_changes(
    events: &[VerifiedEvent],
) -> impl Iterator<Item = (&Bytes, Option<&Bytes>)> {
    events.iter().map(|e| {
        let event = e.event();
        match event.op {
            mesh_protocol::Operation::Upsert => (&event.key, Some(&event.payload)),
            mesh_protocol::Operation::Delete => (&event.key, None),
        }
    })
}

/// Checks that `events` is a contiguous run starting right after `head`.
pub(crate) fn check_contiguous(
    head: Option<StoredHead>,
    events: &[VerifiedEvent],
) -> Result<(), StoreError> {
    for (expected, event) in (head.map_or(1, |h| h.seq + 1)..).zip(events) {
        if event.seq() != expected {
            return Err(StoreError::NotContiguous {
                head: expected - 1,
                got: event.seq(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

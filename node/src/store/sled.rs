//! The on-disk store: one sled tree, keys prefixed by kind.
//!
//! | key | value |
//! | --- | --- |
//! | `i` | identity seed (32 bytes) |
//! | `c` ‖ product digest | encoded `SignedCatalogEntry` |
//! | `h` ‖ product digest | head: seq (8, BE) ‖ event id (32) ‖ product id text |
//! | `l` ‖ product digest ‖ seq (8, BE) | encoded `SignedEvent` |
//! | `r` ‖ product digest ‖ record key | record value |
//! | `f` ‖ product digest ‖ seq (8, BE) | encoded `ForkProof` |
//! | `s` ‖ product digest | product id text (a subscription) |
//!
//! Keeping everything in one tree lets one `apply_batch` commit a run of events, the head and
//! the replica atomically; `flush` then makes it durable.

use std::path::Path;

use ::sled::{Batch, Db, Tree};
use bytes::Bytes;
use mesh_protocol::{EventId, ForkProof, ProductId, VerifiedEvent};

use super::{Store, StoreError, StoredHead, check_contiguous, replica_changes};

const IDENTITY: &[u8] = b"i";
const CATALOG: u8 = b'c';
const HEAD: u8 = b'h';
const LOG: u8 = b'l';
const REPLICA: u8 = b'r';
const FORK: u8 = b'f';
const SUBSCRIPTION: u8 = b's';

/// A store in a sled database on disk.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: Db,
    tree: Tree,
}

impl SledStore {
    /// Opens the store at `path`, creating it if needed.
    ///
    /// A store closed a moment ago (a node restarting in the same process) can still be held
    /// by sled's background threads, which keep its file lock until they finish; opening waits
    /// up to 1 s (`LOCK_WAIT`) for the lock before failing. A store another process holds fails
    /// after that wait.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            let opened = ::sled::Config::new()
                .path(path)
                // Fewer, larger writes; we flush explicitly at every commit point.
                .flush_every_ms(None)
                .open();
            match opened {
                Err(::sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        let tree = db.open_tree("mesh")?;
        Ok(Self { db, tree })
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

/// How long [`SledStore::open`] waits for a lock held by a store that is still closing.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

fn key(kind: u8, product: &ProductId, suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 32 + suffix.len());
    k.push(kind);
    k.extend_from_slice(&product.digest());
    k.extend_from_slice(suffix);
    k
}

fn encode_head(seq: u64, id: &EventId, product: &ProductId) -> Vec<u8> {
    let mut v = Vec::with_capacity(40 + 100);
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(id.as_bytes());
    v.extend_from_slice(product.to_string().as_bytes());
    v
}

fn decode_head(bytes: &[u8]) -> Result<(StoredHead, ProductId), StoreError> {
    let corrupt = || StoreError::Corrupt("log head record".into());
    let seq = u64::from_be_bytes(
        bytes
            .get(..8)
            .ok_or_else(corrupt)?
            .try_into()
            .map_err(|_| corrupt())?,
    );
    let id: [u8; 32] = bytes
        .get(8..40)
        .ok_or_else(corrupt)?
        .try_into()
        .map_err(|_| corrupt())?;
    let product = std::str::from_utf8(&bytes[40..])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(corrupt)?;
    Ok((
        StoredHead {
            seq,
            id: EventId::from_bytes(id),
        },
        product,
    ))
}

fn parse_product(bytes: &[u8]) -> Result<ProductId, StoreError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Corrupt("stored product id".into()))
}

impl Store for SledStore {
    fn identity(&self) -> Result<Option<[u8; 32]>, StoreError> {
        match self.tree.get(IDENTITY)? {
            None => Ok(None),
            Some(v) => {
                Ok(Some(v.as_ref().try_into().map_err(|_| {
                    StoreError::Corrupt("identity seed".into())
                })?))
            }
        }
    }

    fn set_identity(&self, seed: &[u8; 32]) -> Result<(), StoreError> {
        self.tree.insert(IDENTITY, &seed[..])?;
        self.flush()
    }

    fn catalog_get(&self, product: &ProductId) -> Result<Option<Bytes>, StoreError> {
        Ok(self
            .tree
            .get(key(CATALOG, product, &[]))?
            .map(|v| Bytes::copy_from_slice(&v)))
    }

    fn catalog_put(&self, product: &ProductId, entry: &Bytes) -> Result<(), StoreError> {
        self.tree
            .insert(key(CATALOG, product, &[]), entry.as_ref())?;
        self.flush()
    }

    fn catalog_put_many(&self, entries: &[(ProductId, Bytes)]) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        for (product, entry) in entries {
            batch.insert(key(CATALOG, product, &[]), entry.as_ref());
        }
        self.tree.apply_batch(batch)?;
        self.flush()
    }

    fn catalog_all(&self) -> Result<Vec<Bytes>, StoreError> {
        self.tree
            .scan_prefix([CATALOG])
            .values()
            .map(|v| Ok(Bytes::copy_from_slice(&v?)))
            .collect()
    }

    fn log_head(&self, product: &ProductId) -> Result<Option<StoredHead>, StoreError> {
        match self.tree.get(key(HEAD, product, &[]))? {
            None => Ok(None),
            Some(v) => Ok(Some(decode_head(&v)?.0)),
        }
    }

    fn log_append(&self, product: &ProductId, events: &[VerifiedEvent]) -> Result<(), StoreError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        check_contiguous(self.log_head(product)?, events)?;
        let mut batch = Batch::default();
        for event in events {
            batch.insert(
                key(LOG, product, &event.seq().to_be_bytes()),
                event.encoded().as_ref(),
            );
        }
        for (record, value) in replica_changes(events) {
            let k = key(REPLICA, product, record);
            match value {
                Some(v) => batch.insert(k, v.as_ref()),
                None => batch.remove(k),
            }
        }
        batch.insert(
            key(HEAD, product, &[]),
            encode_head(last.seq(), &last.id(), product),
        );
        self.tree.apply_batch(batch)?;
        self.flush()
    }

    fn log_range(
        &self,
        product: &ProductId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Bytes>, StoreError> {
        let start = key(LOG, product, &from_seq.to_be_bytes());
        let end = key(LOG, product, &u64::MAX.to_be_bytes());
        self.tree
            .range(start..=end)
            .values()
            .take(limit)
            .map(|v| Ok(Bytes::copy_from_slice(&v?)))
            .collect()
    }

    fn logs(&self) -> Result<Vec<(ProductId, StoredHead)>, StoreError> {
        self.tree
            .scan_prefix([HEAD])
            .values()
            .map(|v| {
                let (head, product) = decode_head(&v?)?;
                Ok((product, head))
            })
            .collect()
    }

    fn replica_get(&self, product: &ProductId, record: &[u8]) -> Result<Option<Bytes>, StoreError> {
        Ok(self
            .tree
            .get(key(REPLICA, product, record))?
            .map(|v| Bytes::copy_from_slice(&v)))
    }

    fn fork_put(&self, proof: &ForkProof) -> Result<bool, StoreError> {
        let k = key(FORK, proof.product(), &proof.seq().to_be_bytes());
        let new = self
            .tree
            .compare_and_swap(k, None as Option<&[u8]>, Some(proof.encode().as_ref()))?
            .is_ok();
        self.flush()?;
        Ok(new)
    }

    fn forks(&self, product: Option<&ProductId>) -> Result<Vec<Bytes>, StoreError> {
        let prefix = match product {
            Some(p) => key(FORK, p, &[]),
            None => vec![FORK],
        };
        self.tree
            .scan_prefix(prefix)
            .values()
            .map(|v| Ok(Bytes::copy_from_slice(&v?)))
            .collect()
    }

    fn subscription_put(&self, product: &ProductId) -> Result<(), StoreError> {
        self.tree.insert(
            key(SUBSCRIPTION, product, &[]),
            product.to_string().as_bytes(),
        )?;
        self.flush()
    }

    fn subscription_remove(&self, product: &ProductId) -> Result<(), StoreError> {
        self.tree.remove(key(SUBSCRIPTION, product, &[]))?;
        self.flush()
    }

    fn subscriptions(&self) -> Result<Vec<ProductId>, StoreError> {
        self.tree
            .scan_prefix([SUBSCRIPTION])
            .values()
            .map(|v| parse_product(&v?))
            .collect()
    }
}

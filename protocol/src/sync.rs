//! The node-to-node messages, checked on decode, and the catalog summary behind anti-entropy.
//!
//! Catalog anti-entropy compares equal catalogs in one round trip whatever their size. Each side
//! keeps a [`CatalogSummary`]: products are spread over [`CATALOG_BUCKETS`] buckets by the first
//! byte of their digest, and each bucket has a hash, the XOR of `blake3(entry id)` over its
//! entries, updated in O(1) as entries arrive. The asker fetches the other side's bucket hashes,
//! and for each bucket that differs sends what it holds there; the answer is every entry of the
//! other side that wins under the merge rule (the asker lacks it, holds a lower revision, or
//! holds the same revision with a larger id). Both sides ask each other in turn, so both
//! converge, equivocations included.

use std::collections::HashMap;

use bytes::Bytes;
use prost::Message;

use crate::catalog::{EntryId, VerifiedCatalogEntry};
use crate::config::Config;
use crate::error::DecodeError;
use crate::identity::ProductId;
use crate::wire::{self, pb};

/// Number of buckets of a catalog summary.
pub const CATALOG_BUCKETS: usize = 256;

/// A product digest (see [`ProductId::digest`]).
pub type ProductDigest = [u8; 32];

fn bucket_of(product: &ProductDigest) -> usize {
    usize::from(product[0]) % CATALOG_BUCKETS
}

/// What a node holds of the catalog, summarised for anti-entropy.
#[derive(Clone, Debug)]
pub struct CatalogSummary {
    versions: HashMap<ProductDigest, (u64, EntryId)>,
    buckets: Vec<[u8; 32]>,
}

impl Default for CatalogSummary {
    fn default() -> Self {
        Self {
            versions: HashMap::new(),
            buckets: vec![[0; 32]; CATALOG_BUCKETS],
        }
    }
}

fn xor_into(bucket: &mut [u8; 32], id: &EntryId) {
    let hash = blake3::hash(id.as_bytes());
    for (b, h) in bucket.iter_mut().zip(hash.as_bytes()) {
        *b ^= h;
    }
}

impl CatalogSummary {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `entry` is now the stored entry of its product, replacing any other.
    pub fn insert(&mut self, entry: &VerifiedCatalogEntry) {
        let product = entry.product().digest();
        let bucket = &mut self.buckets[bucket_of(&product)];
        if let Some((_, old)) = self
            .versions
            .insert(product, (entry.revision(), entry.id()))
        {
            xor_into(bucket, &old);
        }
        xor_into(bucket, &entry.id());
    }

    pub fn len(&self) -> usize {
        self.versions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// The stored revision of a product.
    pub fn revision(&self, product: &ProductId) -> Option<u64> {
        self.versions.get(&product.digest()).map(|(r, _)| *r)
    }

    pub fn digest(&self) -> CatalogDigest {
        CatalogDigest(self.buckets.clone())
    }

    /// blake3 over the bucket hashes in bucket order: equal roots, equal catalogs (but for a
    /// hash collision).
    pub fn root(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        for bucket in &self.buckets {
            hasher.update(bucket);
        }
        *hasher.finalize().as_bytes()
    }

    /// The answer to a digest request: [`CatalogDigest::same`] when the asker's root is this
    /// summary's, else every bucket hash.
    pub fn digest_for(&self, asker_root: Option<&[u8; 32]>) -> CatalogDigest {
        if asker_root == Some(&self.root()) {
            CatalogDigest::same()
        } else {
            self.digest()
        }
    }

    /// The buckets in which `theirs` differs from this summary (none when `theirs` says the
    /// catalogs are the same).
    pub fn differing_buckets(&self, theirs: &CatalogDigest) -> Vec<u32> {
        if theirs.is_same() {
            return Vec::new();
        }
        (0..CATALOG_BUCKETS)
            .filter(|&i| self.buckets[i] != theirs.0[i])
            .filter_map(|i| u32::try_from(i).ok())
            .collect()
    }

    /// Everything this side holds in `bucket`, for a bucket request.
    pub fn versions_in(&self, bucket: u32) -> Vec<CatalogVersion> {
        self.versions
            .iter()
            .filter(|(p, _)| bucket_of(p) as u64 == u64::from(bucket))
            .map(|(p, (revision, entry))| CatalogVersion {
                product: *p,
                revision: *revision,
                entry: *entry,
            })
            .collect()
    }

    /// Products in `bucket` whose entry here wins over what `have` says the asker holds: it
    /// lacks the product, holds a lower revision, or holds the same revision with a larger
    /// entry id (the merge rule's tie-break). What to send in answer to a bucket request.
    pub fn newer_than(&self, bucket: u32, have: &[CatalogVersion]) -> Vec<ProductDigest> {
        let theirs: HashMap<&ProductDigest, (u64, EntryId)> = have
            .iter()
            .map(|v| (&v.product, (v.revision, v.entry)))
            .collect();
        let mut newer: Vec<(ProductDigest, u64)> = self
            .versions
            .iter()
            .filter(|(p, _)| bucket_of(p) as u64 == u64::from(bucket))
            .filter(|(p, ours)| theirs.get(p).is_none_or(|theirs| wins(**ours, *theirs)))
            .map(|(p, (revision, _))| (*p, *revision))
            .collect();
        // A stable order, so that paging through `more` responses makes progress.
        newer.sort_unstable();
        newer.into_iter().map(|(p, _)| p).collect()
    }
}

/// Whether entry `a` (revision, id) replaces entry `b` under the catalog's merge rule.
fn wins(a: (u64, EntryId), b: (u64, EntryId)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// One bucket hash per bucket, or none: "the same as the root you sent".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogDigest(Vec<[u8; 32]>);

impl CatalogDigest {
    /// The answer when the asker's root equals the server's: nothing to compare.
    pub fn same() -> Self {
        Self(Vec::new())
    }

    pub fn is_same(&self) -> bool {
        self.0.is_empty()
    }

    pub fn encode(&self) -> Bytes {
        let pb = pb::CatalogDigest {
            buckets: self.0.iter().map(|b| Bytes::copy_from_slice(b)).collect(),
        };
        Bytes::from(pb.encode_to_vec())
    }

    pub fn decode(bytes: Bytes, config: &Config) -> Result<Self, DecodeError> {
        let pb: pb::CatalogDigest = wire::decode(&bytes, "catalog digest", config.frame_bytes_max)?;
        if !pb.buckets.is_empty() && pb.buckets.len() != CATALOG_BUCKETS {
            return Err(DecodeError::invalid(
                "buckets",
                format!(
                    "expected {CATALOG_BUCKETS} buckets or none, got {}",
                    pb.buckets.len()
                ),
            ));
        }
        let buckets = pb
            .buckets
            .iter()
            .map(|b| wire::digest(b, "buckets"))
            .collect::<Result<_, _>>()?;
        Ok(Self(buckets))
    }
}

/// A product, and the revision and id of its entry that one side holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatalogVersion {
    pub product: ProductDigest,
    pub revision: u64,
    pub entry: EntryId,
}

/// A request of the catalog sync protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatalogSyncRequest {
    /// "Send me your bucket hashes", with the asker's root: a server whose root is the same
    /// answers [`CatalogDigest::same`].
    Digest { root: Option<[u8; 32]> },
    Bucket {
        bucket: u32,
        have: Vec<CatalogVersion>,
    },
}

impl CatalogSyncRequest {
    pub fn encode(&self) -> Bytes {
        let request = match self {
            CatalogSyncRequest::Digest { root } => {
                pb::catalog_sync_request::Request::Digest(pb::DigestRequest {
                    root: root.map_or_else(Bytes::new, |r| Bytes::copy_from_slice(&r)),
                })
            }
            CatalogSyncRequest::Bucket { bucket, have } => {
                pb::catalog_sync_request::Request::Bucket(pb::BucketRequest {
                    bucket: *bucket,
                    have: have
                        .iter()
                        .map(|v| pb::CatalogVersion {
                            product: Bytes::copy_from_slice(&v.product),
                            revision: v.revision,
                            entry: Bytes::copy_from_slice(v.entry.as_bytes()),
                        })
                        .collect(),
                })
            }
        };
        Bytes::from(
            pb::CatalogSyncRequest {
                request: Some(request),
            }
            .encode_to_vec(),
        )
    }

    pub fn decode(bytes: Bytes, config: &Config) -> Result<Self, DecodeError> {
        let pb: pb::CatalogSyncRequest =
            wire::decode(&bytes, "catalog sync request", config.frame_bytes_max)?;
        match pb.request {
            None => Err(DecodeError::Missing { field: "request" }),
            Some(pb::catalog_sync_request::Request::Digest(d)) => Ok(CatalogSyncRequest::Digest {
                root: if d.root.is_empty() {
                    None
                } else {
                    Some(wire::digest(&d.root, "root")?)
                },
            }),
            Some(pb::catalog_sync_request::Request::Bucket(b)) => {
                if usize::try_from(b.bucket).map_or(true, |i| i >= CATALOG_BUCKETS) {
                    return Err(DecodeError::invalid(
                        "bucket",
                        format!("no bucket {}", b.bucket),
                    ));
                }
                if b.have.len() > config.bucket_versions_max {
                    return Err(DecodeError::Oversized {
                        what: "bucket versions",
                        len: b.have.len(),
                        max: config.bucket_versions_max,
                    });
                }
                let have = b
                    .have
                    .iter()
                    .map(|v| {
                        Ok(CatalogVersion {
                            product: wire::digest(&v.product, "have.product")?,
                            revision: v.revision,
                            entry: EntryId::from_bytes(wire::digest(&v.entry, "have.entry")?),
                        })
                    })
                    .collect::<Result<_, DecodeError>>()?;
                Ok(CatalogSyncRequest::Bucket {
                    bucket: b.bucket,
                    have,
                })
            }
        }
    }
}

/// The answer to a bucket request: encoded catalog entries, each still to be verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketResponse {
    pub entries: Vec<Bytes>,
    pub more: bool,
}

impl BucketResponse {
    pub fn encode(&self) -> Bytes {
        Bytes::from(
            pb::BucketResponse {
                entries: self.entries.clone(),
                more: self.more,
            }
            .encode_to_vec(),
        )
    }

    pub fn decode(bytes: Bytes, config: &Config) -> Result<Self, DecodeError> {
        let pb: pb::BucketResponse =
            wire::decode(&bytes, "bucket response", config.frame_bytes_max)?;
        if let Some(big) = pb
            .entries
            .iter()
            .find(|e| e.len() > config.catalog_entry_bytes_max)
        {
            return Err(DecodeError::Oversized {
                what: "catalog entry",
                len: big.len(),
                max: config.catalog_entry_bytes_max,
            });
        }
        Ok(Self {
            entries: pb.entries,
            more: pb.more,
        })
    }
}

/// First frame of a log subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeRequest {
    pub product: ProductId,
    pub from_seq: u64,
}

impl SubscribeRequest {
    pub fn encode(&self) -> Bytes {
        Bytes::from(
            pb::SubscribeRequest {
                product: Some(wire::product_id_to_pb(&self.product)),
                from_seq: self.from_seq,
            }
            .encode_to_vec(),
        )
    }

    pub fn decode(bytes: Bytes, config: &Config) -> Result<Self, DecodeError> {
        let pb: pb::SubscribeRequest =
            wire::decode(&bytes, "subscribe request", config.frame_bytes_max)?;
        if pb.from_seq == 0 {
            return Err(DecodeError::invalid(
                "from_seq",
                "sequence numbers start at 1",
            ));
        }
        Ok(Self {
            product: wire::product_id(pb.product, "product")?,
            from_seq: pb.from_seq,
        })
    }
}

/// Why a server refuses a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    UnknownProduct,
    NotHeld,
    AccessDenied,
    Busy,
}

impl Refusal {
    /// A stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::UnknownProduct => "unknown_product",
            Refusal::NotHeld => "not_held",
            Refusal::AccessDenied => "access_denied",
            Refusal::Busy => "busy",
        }
    }

    /// Words for messages.
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::UnknownProduct => "unknown product",
            Refusal::NotHeld => "log not held",
            Refusal::AccessDenied => "access denied",
            Refusal::Busy => "busy",
        }
    }
}

/// The server's answer to a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeResponse {
    pub refusal: Option<Refusal>,
    pub head_seq: u64,
}

impl SubscribeResponse {
    pub fn encode(&self) -> Bytes {
        let refusal = match self.refusal {
            None => pb::Refusal::Unspecified,
            Some(Refusal::UnknownProduct) => pb::Refusal::UnknownProduct,
            Some(Refusal::NotHeld) => pb::Refusal::NotHeld,
            Some(Refusal::AccessDenied) => pb::Refusal::AccessDenied,
            Some(Refusal::Busy) => pb::Refusal::Busy,
        };
        Bytes::from(
            pb::SubscribeResponse {
                refusal: refusal as i32,
                head_seq: self.head_seq,
            }
            .encode_to_vec(),
        )
    }

    pub fn decode(bytes: Bytes, config: &Config) -> Result<Self, DecodeError> {
        let pb: pb::SubscribeResponse =
            wire::decode(&bytes, "subscribe response", config.frame_bytes_max)?;
        let refusal = match pb::Refusal::try_from(pb.refusal) {
            Ok(pb::Refusal::Unspecified) => None,
            Ok(pb::Refusal::UnknownProduct) => Some(Refusal::UnknownProduct),
            Ok(pb::Refusal::NotHeld) => Some(Refusal::NotHeld),
            Ok(pb::Refusal::AccessDenied) => Some(Refusal::AccessDenied),
            Ok(pb::Refusal::Busy) => Some(Refusal::Busy),
            Err(_) => {
                return Err(DecodeError::invalid(
                    "refusal",
                    format!("unknown refusal {}", pb.refusal),
                ));
            }
        };
        Ok(Self {
            refusal,
            head_seq: pb.head_seq,
        })
    }
}

/// A frame of a log stream: events (each still to be verified) and/or a fork proof.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogFrame {
    pub events: Vec<Bytes>,
    pub fork: Option<Bytes>,
}

impl LogFrame {
    pub fn encode(&self) -> Bytes {
        Bytes::from(
            pb::LogFrame {
                events: self.events.clone(),
                fork: self.fork.clone().unwrap_or_default(),
            }
            .encode_to_vec(),
        )
    }

    pub fn decode(bytes: Bytes, config: &Config) -> Result<Self, DecodeError> {
        let pb: pb::LogFrame = wire::decode(&bytes, "log frame", config.frame_bytes_max)?;
        if pb.events.len() > config.frame_events_max {
            return Err(DecodeError::Oversized {
                what: "events in a frame",
                len: pb.events.len(),
                max: config.frame_events_max,
            });
        }
        Ok(Self {
            events: pb.events,
            fork: (!pb.fork.is_empty()).then_some(pb.fork),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogEntry;
    use crate::descriptor::Descriptor;
    use crate::identity::{ProductName, SecretKey};

    const YAML: &str = "name: NAME\ndomain: d\nowner: o\ndescription: x\nversion: 1.0.0\nschema:\n  fields:\n    - name: id\n      type: string\n";

    fn entry(seed: u8, name: &str, revision: u64) -> VerifiedCatalogEntry {
        let key = SecretKey::from_bytes(&[seed; 32]);
        let config = Config::default();
        CatalogEntry {
            product: ProductId::new(key.public(), ProductName::new(name).unwrap()),
            revision,
            timestamp_micros: 0,
            descriptor: Descriptor::from_yaml(&YAML.replace("NAME", name), &config).unwrap(),
            consumes: Vec::new(),
        }
        .sign(&key, &config)
        .unwrap()
    }

    /// Runs the asker's side of anti-entropy against `other` and returns what it would fetch.
    fn pull(asker: &CatalogSummary, other: &CatalogSummary) -> Vec<ProductDigest> {
        let theirs = other.digest();
        asker
            .differing_buckets(&theirs)
            .into_iter()
            .flat_map(|b| other.newer_than(b, &asker.versions_in(b)))
            .collect()
    }

    #[test]
    fn equal_catalogs_have_equal_digests_whatever_the_order() {
        let entries: Vec<_> = (0..50u8).map(|i| entry(i, "p", 1)).collect();
        let (mut a, mut b) = (CatalogSummary::new(), CatalogSummary::new());
        entries.iter().for_each(|e| a.insert(e));
        entries.iter().rev().for_each(|e| b.insert(e));
        assert_eq!(a.digest(), b.digest());
        assert!(pull(&a, &b).is_empty());
    }

    #[test]
    fn a_pull_fetches_exactly_what_is_missing_or_newer() {
        let (mut a, mut b) = (CatalogSummary::new(), CatalogSummary::new());
        for i in 0..100u8 {
            let e = entry(i, "p", 1);
            a.insert(&e);
            b.insert(&e);
        }
        let only_b = entry(200, "new", 1);
        b.insert(&only_b);
        let newer = entry(7, "p", 2);
        b.insert(&newer);
        let older_on_b = entry(9, "p", 3);
        a.insert(&older_on_b); // a holds revision 3 of product 9; b holds revision 1
        let mut fetched = pull(&a, &b);
        fetched.sort_unstable();
        let mut expected = vec![only_b.product().digest(), newer.product().digest()];
        expected.sort_unstable();
        assert_eq!(fetched, expected);
        // Replacing an entry updates the bucket hash: after applying, only b lags on product 9.
        a.insert(&only_b);
        a.insert(&newer);
        assert_eq!(pull(&a, &b), Vec::<ProductDigest>::new());
        assert_eq!(pull(&b, &a), vec![older_on_b.product().digest()]);
    }

    #[test]
    fn an_equivocation_settles_on_the_smaller_id_through_sync() {
        let key = SecretKey::from_bytes(&[9; 32]);
        let config = Config::default();
        let sign = |description: &str| {
            CatalogEntry {
                product: ProductId::new(key.public(), ProductName::new("p").unwrap()),
                revision: 2,
                timestamp_micros: 0,
                descriptor: Descriptor::from_yaml(
                    &YAML.replace("NAME", "p").replace("x", description),
                    &config,
                )
                .unwrap(),
                consumes: Vec::new(),
            }
            .sign(&key, &config)
            .unwrap()
        };
        let (one, two) = (sign("one"), sign("two"));
        let (small, large) = if one.id() < two.id() {
            (one, two)
        } else {
            (two, one)
        };
        let (mut a, mut b) = (CatalogSummary::new(), CatalogSummary::new());
        a.insert(&large);
        b.insert(&small);
        // The holder of the larger id pulls the smaller one; the other side pulls nothing.
        assert_eq!(pull(&a, &b), vec![small.product().digest()]);
        assert!(pull(&b, &a).is_empty());
    }

    #[test]
    fn messages_round_trip() {
        let config = Config::default();
        let key = SecretKey::from_bytes(&[1; 32]);
        let product = ProductId::new(key.public(), ProductName::new("p").unwrap());
        let sub = SubscribeRequest {
            product,
            from_seq: 7,
        };
        assert_eq!(
            SubscribeRequest::decode(sub.encode(), &config).unwrap(),
            sub
        );
        for refusal in [None, Some(Refusal::AccessDenied), Some(Refusal::Busy)] {
            let r = SubscribeResponse {
                refusal,
                head_seq: 9,
            };
            assert_eq!(SubscribeResponse::decode(r.encode(), &config).unwrap(), r);
        }
        let frame = LogFrame {
            events: vec![Bytes::from("a"), Bytes::from("b")],
            fork: Some(Bytes::from("proof")),
        };
        assert_eq!(LogFrame::decode(frame.encode(), &config).unwrap(), frame);
        let req = CatalogSyncRequest::Bucket {
            bucket: 3,
            have: vec![CatalogVersion {
                product: [3; 32],
                revision: 2,
                entry: EntryId::from_bytes([4; 32]),
            }],
        };
        assert_eq!(
            CatalogSyncRequest::decode(req.encode(), &config).unwrap(),
            req
        );
        let digest = CatalogSummary::new().digest();
        assert_eq!(
            CatalogDigest::decode(digest.encode(), &config).unwrap(),
            digest
        );
    }

    #[test]
    fn hostile_messages_are_refused() {
        let config = Config::default();
        let bad_bucket = CatalogSyncRequest::Bucket {
            bucket: 256,
            have: vec![],
        };
        assert!(CatalogSyncRequest::decode(bad_bucket.encode(), &config).is_err());
        let too_many = LogFrame {
            events: vec![Bytes::from("e"); config.frame_events_max + 1],
            fork: None,
        };
        assert_eq!(
            LogFrame::decode(too_many.encode(), &config)
                .unwrap_err()
                .kind(),
            "oversized"
        );
        let short_digest = pb::CatalogDigest {
            buckets: vec![Bytes::from_static(&[0; 32])],
        };
        assert!(CatalogDigest::decode(Bytes::from(short_digest.encode_to_vec()), &config).is_err());
        let zero = pb::SubscribeRequest {
            product: None,
            from_seq: 0,
        };
        assert!(SubscribeRequest::decode(Bytes::from(zero.encode_to_vec()), &config).is_err());
    }
}

//! Catalog entries: a product's descriptor with a revision, signed by the product's owner.
//!
//! Every node holds the whole catalog and merges the entries it receives with one rule
//! ([`merge`]): a higher revision replaces a lower one; an equal revision with the same id is a
//! duplicate; an equal revision with a different id means the owner signed two versions of one
//! revision: the proof is kept as an [`EquivocationProof`], and of the two entries the one with
//! the smaller id is kept. With that tie-break the rule is commutative and idempotent, so nodes
//! that saw the same entries, in any order, hold the same catalog — even when its owner lied.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;

use crate::config::Config;
use crate::descriptor::{
    AccessPolicy, Descriptor, DescriptorErrors, RawAccess, RawDescriptor, RawField, RawPort,
    RawSchema, RawSlo, unplaced,
};
use crate::error::{BuildError, DecodeError, ProofError, VerifyError};
use crate::identity::{ProductId, SecretKey};
use crate::signed::{self, CATALOG_SIGNING_CONTEXT, Envelope};
use crate::wire::{self, pb};

/// The id of a catalog entry: blake3 of its encoded body.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId([u8; 32]);

impl EntryId {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryId({})", hex::encode(&self.0[..6]))
    }
}

/// The content of a catalog entry, before it is signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    pub product: ProductId,
    /// From 1, strictly increasing with each update of the product.
    pub revision: u64,
    /// Owner's wall clock at signing, microseconds since the Unix epoch.
    pub timestamp_micros: u64,
    pub descriptor: Descriptor,
    /// Products the owner's node subscribes to on behalf of this product (observed lineage),
    /// sorted and unique. The node maintains it; compare `descriptor.inputs`, which people
    /// declare.
    pub consumes: Vec<ProductId>,
}

impl CatalogEntry {
    /// Encodes and signs the entry. Fails when `key` does not own the product or the entry
    /// breaks a rule its peers would reject it for.
    pub fn sign(
        self,
        key: &SecretKey,
        config: &Config,
    ) -> Result<VerifiedCatalogEntry, BuildError> {
        if &key.public() != self.product.owner() {
            return Err(BuildError::NotOwner {
                product: self.product.to_string(),
                signer: key.public().to_string(),
            });
        }
        self.check(config)?;
        let body = Bytes::from(self.to_pb().encode_to_vec());
        let envelope = Envelope::sign(body, key, CATALOG_SIGNING_CONTEXT);
        let encoded = Bytes::from(envelope_to_pb(&envelope).encode_to_vec());
        if encoded.len() > config.catalog_entry_bytes_max {
            return Err(DecodeError::Oversized {
                what: "catalog entry",
                len: encoded.len(),
                max: config.catalog_entry_bytes_max,
            }
            .into());
        }
        Ok(VerifiedCatalogEntry(SignedCatalogEntry {
            envelope,
            entry: self,
            encoded,
        }))
    }

    fn check(&self, config: &Config) -> Result<(), DecodeError> {
        if self.revision == 0 {
            return Err(DecodeError::invalid("revision", "revisions start at 1"));
        }
        if &self.descriptor.name != self.product.name() {
            return Err(DecodeError::invalid(
                "descriptor.name",
                format!(
                    "{:?} differs from the product's name {:?}",
                    self.descriptor.name.as_str(),
                    self.product.name().as_str()
                ),
            ));
        }
        if self.descriptor.inputs.contains(&self.product) {
            return Err(DecodeError::invalid(
                "descriptor.inputs",
                "a product cannot be its own input",
            ));
        }
        if self.consumes.len() > config.consumes_max {
            return Err(DecodeError::Oversized {
                what: "consumes",
                len: self.consumes.len(),
                max: config.consumes_max,
            });
        }
        // Sorted and unique: one set has one encoding, and duplicates cost nothing to refuse.
        if !self.consumes.windows(2).all(|w| w[0] < w[1]) {
            return Err(DecodeError::invalid(
                "consumes",
                "must be sorted by product id and unique",
            ));
        }
        if self.consumes.contains(&self.product) {
            return Err(DecodeError::invalid(
                "consumes",
                "a product cannot consume itself",
            ));
        }
        Ok(())
    }

    fn to_pb(&self) -> pb::CatalogEntryBody {
        pb::CatalogEntryBody {
            product: Some(wire::product_id_to_pb(&self.product)),
            revision: self.revision,
            timestamp_micros: self.timestamp_micros,
            descriptor: Some(descriptor_to_pb(&self.descriptor)),
            consumes: self.consumes.iter().map(wire::product_id_to_pb).collect(),
        }
    }

    fn from_pb(body: pb::CatalogEntryBody, config: &Config) -> Result<Self, DecodeError> {
        let descriptor = body.descriptor.ok_or(DecodeError::Missing {
            field: "descriptor",
        })?;
        if body.consumes.len() > config.consumes_max {
            return Err(DecodeError::Oversized {
                what: "consumes",
                len: body.consumes.len(),
                max: config.consumes_max,
            });
        }
        let consumes = body
            .consumes
            .into_iter()
            .map(|p| wire::product_id(Some(p), "consumes"))
            .collect::<Result<_, _>>()?;
        let entry = CatalogEntry {
            product: wire::product_id(body.product, "product")?,
            revision: body.revision,
            timestamp_micros: body.timestamp_micros,
            descriptor: descriptor_from_pb(descriptor, config)?,
            consumes,
        };
        entry.check(config)?;
        Ok(entry)
    }
}

fn envelope_to_pb(envelope: &Envelope) -> pb::SignedCatalogEntry {
    pb::SignedCatalogEntry {
        body: envelope.body.clone(),
        signer: Bytes::copy_from_slice(envelope.signer.as_bytes()),
        signature: Bytes::copy_from_slice(&envelope.signature.to_bytes()),
    }
}

/// A well-formed catalog entry whose signature has not been checked yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCatalogEntry {
    envelope: Envelope,
    entry: CatalogEntry,
    encoded: Bytes,
}

impl SignedCatalogEntry {
    /// Decodes an encoded `SignedCatalogEntry` received from anywhere, checking every limit of
    /// `config` and every descriptor rule, but not the signature.
    pub fn decode(bytes: Bytes, config: &Config) -> Result<Self, DecodeError> {
        let pb: pb::SignedCatalogEntry =
            wire::decode(&bytes, "catalog entry", config.catalog_entry_bytes_max)?;
        Self::from_pb(pb, config)
    }

    fn from_pb(pb: pb::SignedCatalogEntry, config: &Config) -> Result<Self, DecodeError> {
        let envelope = Envelope::from_parts(pb.body, &pb.signer, &pb.signature)?;
        let body: pb::CatalogEntryBody = wire::decode(
            &envelope.body,
            "catalog entry body",
            config.catalog_entry_bytes_max,
        )?;
        let entry = CatalogEntry::from_pb(body, config)?;
        let encoded = Bytes::from(envelope_to_pb(&envelope).encode_to_vec());
        // An entry inside a larger message (an equivocation proof) was not bounded by its
        // caller: bound what will be stored.
        if encoded.len() > config.catalog_entry_bytes_max {
            return Err(DecodeError::Oversized {
                what: "catalog entry",
                len: encoded.len(),
                max: config.catalog_entry_bytes_max,
            });
        }
        Ok(Self {
            envelope,
            entry,
            encoded,
        })
    }

    pub fn verify(self) -> Result<VerifiedCatalogEntry, VerifyError> {
        self.envelope
            .verify(self.entry.product.owner(), CATALOG_SIGNING_CONTEXT)?;
        Ok(VerifiedCatalogEntry(self))
    }

    /// Verifies many entries at once (ed25519 batch verification, about twice as fast per
    /// entry as one by one); results in input order, and a bad entry never fails a good one.
    pub fn verify_batch(entries: Vec<Self>) -> Vec<Result<VerifiedCatalogEntry, VerifyError>> {
        signed::verify_batch(entries, CATALOG_SIGNING_CONTEXT, |e| {
            (&e.envelope, e.entry.product.owner())
        })
        .into_iter()
        .map(|r| r.map(VerifiedCatalogEntry))
        .collect()
    }

    pub fn id(&self) -> EntryId {
        EntryId(self.envelope.id)
    }

    /// The entry's content, which no one has vouched for yet.
    pub fn unverified(&self) -> &CatalogEntry {
        &self.entry
    }
}

/// A catalog entry signed by its product's owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCatalogEntry(SignedCatalogEntry);

impl VerifiedCatalogEntry {
    pub fn id(&self) -> EntryId {
        self.0.id()
    }

    pub fn entry(&self) -> &CatalogEntry {
        &self.0.entry
    }

    pub fn product(&self) -> &ProductId {
        &self.0.entry.product
    }

    pub fn revision(&self) -> u64 {
        self.0.entry.revision
    }

    /// The signed envelope, canonically encoded: the bytes to store and to gossip.
    pub fn encoded(&self) -> &Bytes {
        &self.0.encoded
    }

    /// Decodes and verifies in one step, e.g. an entry read back from a store.
    pub fn decode_and_verify(bytes: Bytes, config: &Config) -> Result<Self, crate::RejectReason> {
        Ok(SignedCatalogEntry::decode(bytes, config)?.verify()?)
    }
}

/// What merging an incoming entry into the catalog does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Merge {
    /// The product was not in the catalog: store the entry.
    New,
    /// The entry has a higher revision than the stored one: replace it.
    Newer { replaced_revision: u64 },
    /// The stored entry has a higher revision: keep it.
    Stale { current_revision: u64 },
    /// The same entry is stored already.
    Duplicate,
    /// The owner signed two different entries with the same revision. Keep the proof, and
    /// keep the incoming entry instead of the stored one if `keep_incoming` (its id is the
    /// smaller), so that every node settles on the same entry.
    Equivocation {
        proof: Box<EquivocationProof>,
        keep_incoming: bool,
    },
}

/// The catalog's merge rule. `current` is the stored entry of the same product, if any.
pub fn merge(current: Option<&VerifiedCatalogEntry>, incoming: &VerifiedCatalogEntry) -> Merge {
    let Some(current) = current else {
        return Merge::New;
    };
    debug_assert_eq!(
        current.product(),
        incoming.product(),
        "merge of different products"
    );
    match incoming.revision().cmp(&current.revision()) {
        std::cmp::Ordering::Greater => Merge::Newer {
            replaced_revision: current.revision(),
        },
        std::cmp::Ordering::Less => Merge::Stale {
            current_revision: current.revision(),
        },
        std::cmp::Ordering::Equal if current.id() == incoming.id() => Merge::Duplicate,
        std::cmp::Ordering::Equal => {
            match EquivocationProof::new(current.clone(), incoming.clone()) {
                Ok(proof) => Merge::Equivocation {
                    proof: Box::new(proof),
                    keep_incoming: incoming.id() < current.id(),
                },
                // Unreachable given the checks above; treat as a duplicate rather than panic.
                Err(_) => Merge::Duplicate,
            }
        }
    }
}

/// Two validly signed entries of one product with one revision and different ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EquivocationProof {
    first: VerifiedCatalogEntry,
    second: VerifiedCatalogEntry,
}

impl EquivocationProof {
    pub fn new(a: VerifiedCatalogEntry, b: VerifiedCatalogEntry) -> Result<Self, ProofError> {
        if a.product() != b.product() {
            return Err(ProofError::DifferentProducts);
        }
        if a.revision() != b.revision() {
            return Err(ProofError::DifferentPositions {
                first: a.revision(),
                second: b.revision(),
            });
        }
        if a.id() == b.id() {
            return Err(ProofError::Identical);
        }
        let (first, second) = if a.id() < b.id() { (a, b) } else { (b, a) };
        Ok(Self { first, second })
    }

    pub fn decode_and_verify(bytes: Bytes, config: &Config) -> Result<Self, ProofError> {
        let proof_bytes_max = 2 * (config.catalog_entry_bytes_max + 16);
        let pb: pb::EquivocationProof =
            wire::decode(&bytes, "equivocation proof", proof_bytes_max)?;
        let side = |side: Option<pb::SignedCatalogEntry>, field| {
            let side = side.ok_or(DecodeError::Missing { field })?;
            Ok::<_, ProofError>(SignedCatalogEntry::from_pb(side, config)?.verify()?)
        };
        let first = side(pb.first, "first")?;
        let second = side(pb.second, "second")?;
        Self::new(first, second)
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(
            pb::EquivocationProof {
                first: Some(envelope_to_pb(&self.first.0.envelope)),
                second: Some(envelope_to_pb(&self.second.0.envelope)),
            }
            .encode_to_vec(),
        )
    }

    pub fn product(&self) -> &ProductId {
        self.first.product()
    }

    pub fn revision(&self) -> u64 {
        self.first.revision()
    }
}

// ---- descriptor <-> wire ---------------------------------------------------------------------

fn descriptor_to_pb(d: &Descriptor) -> pb::Descriptor {
    let (visibility, allowed) = match &d.access {
        AccessPolicy::Public => (pb::Visibility::Public, Vec::new()),
        AccessPolicy::Restricted { allowed } => (
            pb::Visibility::Restricted,
            allowed
                .iter()
                .map(|k| Bytes::copy_from_slice(k.as_bytes()))
                .collect(),
        ),
    };
    pb::Descriptor {
        name: d.name.to_string(),
        domain: d.domain.clone(),
        owner: d.owner.clone(),
        description: d.description.clone(),
        tags: d.tags.clone(),
        version: d.version.to_string(),
        schema: Some(pb::Schema {
            fields: d
                .fields
                .iter()
                .map(|f| pb::Field {
                    name: f.name.clone(),
                    r#type: f.field_type.as_str().to_owned(),
                    pii: f.pii,
                    description: f.description.clone(),
                    nullable: f.nullable,
                })
                .collect(),
        }),
        output_ports: d
            .output_ports
            .iter()
            .map(|p| pb::OutputPort {
                name: p.name.clone(),
                kind: p.kind.as_str().to_owned(),
                format: p.format.clone(),
                description: p.description.clone(),
            })
            .collect(),
        inputs: d.inputs.iter().map(wire::product_id_to_pb).collect(),
        slo: Some(pb::Slo {
            freshness_millis: d.slo.freshness.map_or(0, duration_millis),
            latency_p99_millis: d.slo.latency_p99.map_or(0, duration_millis),
        }),
        access: Some(pb::AccessPolicy {
            visibility: visibility as i32,
            allowed,
        }),
    }
}

/// Descriptor durations are whole milliseconds (checked when parsed), so this is exact.
fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs a wire descriptor through the same checks as a descriptor file.
fn descriptor_from_pb(d: pb::Descriptor, config: &Config) -> Result<Descriptor, DecodeError> {
    // Count limits first, so that a hostile descriptor costs no per-item work.
    let counts = [
        ("descriptor.tags", d.tags.len(), config.tags_max),
        ("descriptor.inputs", d.inputs.len(), config.inputs_max),
        (
            "descriptor.output_ports",
            d.output_ports.len(),
            config.output_ports_max,
        ),
        (
            "descriptor.schema.fields",
            d.schema.as_ref().map_or(0, |s| s.fields.len()),
            config.fields_max,
        ),
        (
            "descriptor.access.allowed",
            d.access.as_ref().map_or(0, |a| a.allowed.len()),
            config.allowed_peers_max,
        ),
    ];
    for (what, len, max) in counts {
        if len > max {
            return Err(DecodeError::Oversized { what, len, max });
        }
    }
    let inputs = d
        .inputs
        .into_iter()
        .map(|i| wire::product_id(Some(i), "descriptor.inputs").map(|id| unplaced(id.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let access = d.access.unwrap_or_default();
    let allowed = access
        .allowed
        .iter()
        .map(|k| wire::public_key(k, "descriptor.access.allowed").map(|k| unplaced(k.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let visibility = match pb::Visibility::try_from(access.visibility) {
        Ok(pb::Visibility::Public) => "public",
        Ok(pb::Visibility::Restricted) => "restricted",
        _ => {
            return Err(DecodeError::invalid(
                "descriptor.access.visibility",
                "unknown visibility",
            ));
        }
    };
    let slo = d.slo.unwrap_or_default();
    let duration = |d: Duration| Some(unplaced(humantime::format_duration(d).to_string()));
    let raw = RawDescriptor {
        name: unplaced(d.name),
        domain: unplaced(d.domain),
        owner: unplaced(d.owner),
        description: unplaced(d.description),
        tags: d.tags.into_iter().map(unplaced).collect(),
        version: unplaced(d.version),
        schema: RawSchema {
            fields: d
                .schema
                .unwrap_or_default()
                .fields
                .into_iter()
                .map(|f| RawField {
                    name: unplaced(f.name),
                    field_type: unplaced(f.r#type),
                    pii: f.pii,
                    nullable: f.nullable,
                    description: Some(unplaced(f.description)),
                })
                .collect(),
        },
        output_ports: d
            .output_ports
            .into_iter()
            .map(|p| RawPort {
                name: unplaced(p.name),
                kind: unplaced(p.kind),
                format: Some(unplaced(p.format)),
                description: Some(unplaced(p.description)),
            })
            .collect(),
        inputs,
        slo: RawSlo {
            freshness: (slo.freshness_millis > 0)
                .then(|| duration(Duration::from_millis(slo.freshness_millis)))
                .flatten(),
            latency_p99: (slo.latency_p99_millis > 0)
                .then(|| duration(Duration::from_millis(slo.latency_p99_millis)))
                .flatten(),
        },
        access: RawAccess {
            visibility: Some(unplaced(visibility)),
            allowed,
        },
    };
    raw.check(config)
        .map_err(|e: DescriptorErrors| DecodeError::invalid("descriptor", e.to_string()))
}

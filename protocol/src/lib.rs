//! The sans-IO protocol core of a broker-less data mesh.
//!
//! This crate decides what is true; it never does IO. It holds no sockets, no tasks, no
//! database and reads no clock or entropy: callers pass in timestamps and key seeds. The node
//! crate drives it over libp2p and sled; simulations drive the very same code on a virtual clock.
//!
//! # What the core guarantees
//!
//! - **Self-certifying ids.** A [`ProductId`] is its owner's public key and a name. Only the
//!   owner's signature is accepted on the product's catalog entries and change events.
//! - **Parse, don't validate.** Bytes become a [`SignedEvent`] by decoding, which checks every
//!   limit in [`Config`] and the shape of every field; a [`VerifiedEvent`] can only be obtained by
//!   checking the owner's signature ([`SignedEvent::verify`], [`verify_batch`]) or by signing
//!   ([`Event::sign`]). The same holds for catalog entries.
//! - **Exact bytes.** Ids are blake3 hashes of the encoded body as carried, and signatures cover
//!   a context string and that id, so any implementation can verify without re-encoding.
//! - **Tamper-evident logs.** [`LogHead::validate_next`] accepts only `seq = head + 1` with
//!   `prev = id(head)`; every other case is its own [`ChainError`]. Two signed events at one
//!   position become a [`ForkProof`] that anyone can check alone.
//! - **Convergent catalog.** [`merge`] lets the higher revision win; an equal revision with
//!   different content yields an [`EquivocationProof`].
//!
//! # Decoding and verifying a received event
//!
//! ```
//! use bytes::Bytes;
//! use mesh_protocol::{Config, LogHead, Operation, ProductId, ProductName, SecretKey, SignedEvent};
//!
//! let config = Config::default();
//! let owner = SecretKey::from_bytes(&[7; 32]);
//! let product = ProductId::new(owner.public(), ProductName::new("orders").unwrap());
//!
//! // The producer builds the next event of its log and signs it.
//! let mut producer_head = LogHead::empty(product.clone());
//! let event = producer_head
//!     .next_event(1_700_000_000_000_000, Operation::Upsert, Bytes::from("o-1"), Bytes::from("{}"), vec![])
//!     .sign(&owner, &config)
//!     .unwrap();
//! producer_head.advance(&event).unwrap();
//!
//! // A subscriber decodes the bytes, verifies the signature, then checks the chain.
//! let received = SignedEvent::decode(event.encoded().clone(), &config).unwrap();
//! let verified = received.verify().unwrap();
//! let mut subscriber_head = LogHead::empty(product);
//! subscriber_head.advance(&verified).unwrap();
//! assert_eq!(subscriber_head, producer_head);
//! ```

pub mod catalog;
pub mod chain;
pub mod config;
pub mod descriptor;
mod ed25519;
pub mod error;
pub mod event;
pub mod identity;
mod signed;
pub mod sync;
pub mod wire;

pub use catalog::{
    CatalogEntry, EntryId, EquivocationProof, Merge, SignedCatalogEntry, VerifiedCatalogEntry,
    merge,
};
pub use chain::{ForkProof, LogHead};
pub use config::Config;
pub use descriptor::{
    AccessPolicy, Descriptor, DescriptorError, DescriptorErrors, Field, FieldType,
};
pub use error::{
    BuildError, ChainError, DecodeError, IdError, ProofError, RejectReason, VerifyError,
};
pub use event::{
    Event, EventId, EventRef, Operation, PreparedEvent, SignedEvent, VerifiedEvent, verify_batch,
};
pub use identity::{ProductId, ProductName, PublicKey, SecretKey};
pub use signed::{CATALOG_SIGNING_CONTEXT, EVENT_SIGNING_CONTEXT};
pub use sync::CatalogSummary;

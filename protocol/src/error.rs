//! Error families of the core, one enum per family of operations.
//!
//! Every variant is specific enough to act on, and every family has a `kind()` that returns a
//! short, stable label (`"bad_signature"`, `"gap"`, ...) for metrics and rejection counters.

use thiserror::Error;

use crate::event::EventId;

/// A malformed or out-of-range identity: key, name or product id.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    #[error("public key must be 32 bytes, got {len}")]
    KeyLength { len: usize },
    #[error("public key is not a point on the ed25519 curve")]
    KeyNotOnCurve,
    #[error("public key is of small order (a weak key)")]
    WeakKey,
    #[error("not base58")]
    NotBase58,
    #[error("not the PeerId of an ed25519 key")]
    NotEd25519PeerId,
    #[error(
        "invalid product name {name:?}: use 1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
    )]
    BadName { name: String },
    #[error("invalid product id {input:?}: expected NAME@PEER_ID")]
    BadProductId { input: String },
}

/// Bytes that do not decode into a well-formed message. Nothing about the sender's honesty is
/// known yet: these are checked before any signature.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("{what} ({len}) is over the limit of {max}")]
    Oversized {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("malformed protobuf in {what}: {reason}")]
    Protobuf { what: &'static str, reason: String },
    #[error("field {field} is missing")]
    Missing { field: &'static str },
    #[error("field {field} is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("field {field}: {source}")]
    Id {
        field: &'static str,
        #[source]
        source: IdError,
    },
}

impl DecodeError {
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::Protobuf { .. }
            | DecodeError::Missing { .. }
            | DecodeError::Invalid { .. }
            | DecodeError::Id { .. } => "malformed",
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        DecodeError::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// A well-formed message whose signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    #[error("signed by {signer}, but the product is owned by {owner}")]
    WrongAuthor { owner: String, signer: String },
    #[error("signature does not verify")]
    BadSignature,
    #[error("the signer's key is unusable: {0}")]
    InvalidKey(String),
}

impl VerifyError {
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::WrongAuthor { .. } => "wrong_author",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::InvalidKey(_) => "invalid_key",
        }
    }
}

/// A verified event that does not extend the log it was offered to.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChainError {
    #[error("event belongs to product {got}, not {expected}")]
    WrongProduct { expected: String, got: String },
    #[error("gap: expected seq {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    #[error("replay: seq {got} is at or below the log head {head}")]
    Replay { got: u64, head: u64 },
    #[error("seq {seq} links to {got}, but the event at seq {} is {expected}", seq - 1)]
    WrongPrev {
        seq: u64,
        expected: EventId,
        got: EventId,
    },
}

impl ChainError {
    pub fn kind(&self) -> &'static str {
        match self {
            ChainError::WrongProduct { .. } => "wrong_product",
            ChainError::Gap { .. } => "gap",
            ChainError::Replay { .. } => "replay",
            ChainError::WrongPrev { .. } => "wrong_prev",
        }
    }
}

/// Why an event offered to a log was rejected, whichever stage rejected it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RejectReason {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Chain(#[from] ChainError),
}

impl RejectReason {
    pub fn kind(&self) -> &'static str {
        match self {
            RejectReason::Decode(e) => e.kind(),
            RejectReason::Verify(e) => e.kind(),
            RejectReason::Chain(e) => e.kind(),
        }
    }
}

/// A fork or equivocation proof that does not prove what it claims.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProofError {
    #[error("proof is malformed: {0}")]
    Decode(#[from] DecodeError),
    #[error("a message in the proof is not validly signed: {0}")]
    Verify(#[from] VerifyError),
    #[error("the two messages are about different products")]
    DifferentProducts,
    #[error("the two messages are at different positions ({first} and {second})")]
    DifferentPositions { first: u64, second: u64 },
    #[error("the two messages are identical, which is no conflict")]
    Identical,
}

impl ProofError {
    pub fn kind(&self) -> &'static str {
        match self {
            ProofError::Decode(e) => e.kind(),
            ProofError::Verify(e) => e.kind(),
            ProofError::DifferentProducts => "proof_different_products",
            ProofError::DifferentPositions { .. } => "proof_different_positions",
            ProofError::Identical => "proof_identical",
        }
    }
}

/// A producer-side mistake when building a message to sign (not hostile input).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BuildError {
    #[error("the signing key {signer} does not own product {product}")]
    NotOwner { product: String, signer: String },
    #[error(transparent)]
    Invalid(#[from] DecodeError),
}

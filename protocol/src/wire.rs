//! The generated protobuf types and the checked conversions out of them.
//!
//! Generated types never leave the core's decoding paths: a message is decoded into these
//! types, then converted into a domain type that has been checked against the [`Config`]
//! limits. Downstream code only sees domain types.
//!
//! [`Config`]: crate::Config

use bytes::Bytes;
use ed25519_dalek::Signature;
use prost::Message;

use crate::error::DecodeError;
use crate::identity::{ProductId, ProductName, PublicKey, SIGNATURE_BYTES};

/// Generated from `proto/mesh/v1/*.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/mesh.v1.rs"));
}

/// Decodes a protobuf message after checking its length against `max`.
pub(crate) fn decode<M: Message + Default>(
    bytes: &Bytes,
    what: &'static str,
    max: usize,
) -> Result<M, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::Oversized {
            what,
            len: bytes.len(),
            max,
        });
    }
    // Decoding from a `Bytes` lets prost slice `bytes` fields without copying.
    M::decode(bytes.clone()).map_err(|e| DecodeError::Protobuf {
        what,
        reason: e.to_string(),
    })
}

pub(crate) fn product_id(
    pb: Option<pb::ProductId>,
    field: &'static str,
) -> Result<ProductId, DecodeError> {
    let pb = pb.ok_or(DecodeError::Missing { field })?;
    let owner =
        PublicKey::from_bytes(&pb.owner).map_err(|source| DecodeError::Id { field, source })?;
    let name = ProductName::new(pb.name).map_err(|source| DecodeError::Id { field, source })?;
    Ok(ProductId::new(owner, name))
}

pub(crate) fn product_id_to_pb(id: &ProductId) -> pb::ProductId {
    pb::ProductId {
        owner: Bytes::copy_from_slice(id.owner().as_bytes()),
        name: id.name().as_str().to_owned(),
    }
}

pub(crate) fn digest(bytes: &[u8], field: &'static str) -> Result<[u8; 32], DecodeError> {
    bytes
        .try_into()
        .map_err(|_| DecodeError::invalid(field, format!("must be 32 bytes, got {}", bytes.len())))
}

pub(crate) fn signature(bytes: &[u8], field: &'static str) -> Result<Signature, DecodeError> {
    let array: &[u8; SIGNATURE_BYTES] = bytes.try_into().map_err(|_| {
        DecodeError::invalid(
            field,
            format!("must be {SIGNATURE_BYTES} bytes, got {}", bytes.len()),
        )
    })?;
    Ok(Signature::from_bytes(array))
}

pub(crate) fn public_key(bytes: &[u8], field: &'static str) -> Result<PublicKey, DecodeError> {
    PublicKey::from_bytes(bytes).map_err(|source| DecodeError::Id { field, source })
}

//! The signed envelope shared by events and catalog entries.
//!
//! An envelope carries the exact bytes of an encoded body, the signer's key and an ed25519
//! signature. The body's id is blake3(body bytes) and the signature covers
//! `context || id`, where the context names the kind of body. Hashing and signing the bytes as
//! carried, never a re-encoding, is what lets another implementation verify them: protobuf
//! encodings are not canonical.

use bytes::Bytes;
use ed25519_dalek::Signature;

use crate::ed25519::VerifyingPoint;
use crate::error::{DecodeError, VerifyError};
use crate::identity::{PublicKey, SecretKey, signing_message, verify_digest};
use crate::wire;

/// Context prefixed to an event id before signing.
pub const EVENT_SIGNING_CONTEXT: &[u8] = b"mesh/v1/event\n";
/// Context prefixed to a catalog entry id before signing.
pub const CATALOG_SIGNING_CONTEXT: &[u8] = b"mesh/v1/catalog\n";

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Envelope {
    pub body: Bytes,
    pub id: [u8; 32],
    pub signer: PublicKey,
    pub signature: Signature,
}

impl Envelope {
    /// Parses the envelope fields; checks lengths and key validity, not the signature.
    pub fn from_parts(body: Bytes, signer: &[u8], signature: &[u8]) -> Result<Self, DecodeError> {
        let signer = wire::public_key(signer, "signer")?;
        let signature = wire::signature(signature, "signature")?;
        let id = *blake3::hash(&body).as_bytes();
        Ok(Self {
            body,
            id,
            signer,
            signature,
        })
    }

    pub fn sign(body: Bytes, key: &SecretKey, context: &[u8]) -> Self {
        let id = *blake3::hash(&body).as_bytes();
        let signature = key.sign_digest(context, &id);
        Self {
            body,
            id,
            signer: key.public(),
            signature,
        }
    }

    /// Checks that `owner` signed the envelope.
    pub fn verify(&self, owner: &PublicKey, context: &[u8]) -> Result<(), VerifyError> {
        self.check_author(owner)?;
        let key = self
            .signer
            .to_verifying_key()
            .map_err(|e| VerifyError::InvalidKey(e.to_string()))?;
        self.verify_with(&key, context)
    }

    /// Checks the signature against an already decompressed signer key.
    pub fn verify_with(&self, key: &VerifyingPoint, context: &[u8]) -> Result<(), VerifyError> {
        if verify_digest(key, context, &self.id, &self.signature) {
            Ok(())
        } else {
            Err(VerifyError::BadSignature)
        }
    }

    pub fn check_author(&self, owner: &PublicKey) -> Result<(), VerifyError> {
        if &self.signer == owner {
            Ok(())
        } else {
            Err(VerifyError::WrongAuthor {
                owner: owner.to_string(),
                signer: self.signer.to_string(),
            })
        }
    }

    pub fn signing_message(&self, context: &[u8]) -> Vec<u8> {
        signing_message(context, &self.id)
    }
}

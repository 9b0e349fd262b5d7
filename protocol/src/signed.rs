//! The signed envelope shared by events and catalog entries.
//!
//! An envelope carries the exact bytes of an encoded body, the signer's key and an ed25519
//! signature. The body's id is blake3(body bytes) and the signature covers
//! `context || id`, where the context names the kind of body. Hashing and signing the bytes as
//! carried, never a re-encoding, is what lets another implementation verify them: protobuf
//! encodings are not canonical.

use std::collections::HashMap;

use bytes::Bytes;
use ed25519_dalek::Signature;

use crate::ed25519::{self, VerifyingPoint};
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

/// Verifies many signed items at once with ed25519 batch verification: results in input order.
/// `parts` gives an item's envelope and the key that must have signed it. Each distinct signer
/// key is decompressed once. When the batch as a whole fails, each item is verified on its own
/// to find the bad ones, so one forgery costs its batch the speed-up but never rejects a good
/// item.
pub(crate) fn verify_batch<T>(
    items: Vec<T>,
    context: &[u8],
    parts: impl Fn(&T) -> (&Envelope, &PublicKey),
) -> Vec<Result<T, VerifyError>> {
    let mut keys: HashMap<PublicKey, Result<VerifyingPoint, VerifyError>> = HashMap::new();
    let mut candidates = Vec::with_capacity(items.len());
    let mut results: Vec<Option<Result<T, VerifyError>>> = Vec::with_capacity(items.len());
    for item in items {
        let (envelope, owner) = parts(&item);
        let checked = envelope.check_author(owner).and_then(|()| {
            keys.entry(envelope.signer)
                .or_insert_with(|| {
                    envelope
                        .signer
                        .to_verifying_key()
                        .map_err(|e| VerifyError::InvalidKey(e.to_string()))
                })
                .clone()
        });
        match checked {
            Ok(key) => {
                candidates.push((results.len(), key, item));
                results.push(None);
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    let messages: Vec<Vec<u8>> = candidates
        .iter()
        .map(|(_, _, item)| parts(item).0.signing_message(context))
        .collect();
    let batch: Vec<_> = candidates
        .iter()
        .zip(&messages)
        .map(|((_, key, item), message)| (key, message.as_slice(), &parts(item).0.signature))
        .collect();
    let batch_ok = ed25519::verify_batch(&batch);
    drop(batch);
    // A batch of one was checked alone: its failure needs no second check.
    let alone = candidates.len() == 1;
    for (index, key, item) in candidates {
        results[index] = Some(if batch_ok {
            Ok(item)
        } else if alone {
            Err(VerifyError::BadSignature)
        } else {
            parts(&item).0.verify_with(&key, context).map(|()| item)
        });
    }
    // Every slot was filled above: rejected items in the first loop, candidates in the second.
    results
        .into_iter()
        .map(|r| r.unwrap_or(Err(VerifyError::BadSignature)))
        .collect()
}

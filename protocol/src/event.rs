//! Change events: one keyed upsert or delete in a data product's log.
//!
//! The only way to hold a [`VerifiedEvent`] is to sign one ([`Event::sign`]) or to decode bytes
//! into a [`SignedEvent`] and verify it ([`SignedEvent::verify`], [`verify_batch`]). Code that
//! stores, serves or applies events takes `VerifiedEvent`, so it cannot be handed an unverified
//! one by mistake.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use prost::Message;

use crate::config::Config;
use crate::error::{BuildError, DecodeError, VerifyError};
use crate::identity::{ProductId, SecretKey};
use crate::signed::{self, EVENT_SIGNING_CONTEXT, Envelope};
use crate::wire::{self, pb};

/// The id of an event: blake3 of its encoded body. Prints as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId([u8; 32]);

impl EventId {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 12 hex digits, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.short())
    }
}

impl FromStr for EventId {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|e| {
            DecodeError::invalid("event id", format!("expected 64 hex digits: {e}"))
        })?;
        Ok(Self(bytes))
    }
}

crate::identity::serde_as_string!(EventId);

/// What an event does to its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Sets the record's value to the payload.
    Upsert,
    /// Removes the record. The payload is empty.
    Delete,
}

impl Operation {
    pub fn as_str(&self) -> &'static str {
        match self {
            Operation::Upsert => "upsert",
            Operation::Delete => "delete",
        }
    }
}

/// A reference to an event in some product's log: what an event cites as its cause.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct EventRef {
    pub product: ProductId,
    pub seq: u64,
    pub id: EventId,
}

/// The content of a change event, before it is signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub product: ProductId,
    /// Position in the log, from 1.
    pub seq: u64,
    /// Id of the event at `seq - 1`; `None` exactly when `seq == 1`.
    pub prev: Option<EventId>,
    /// Producer's wall clock when the event was made, microseconds since the Unix epoch.
    pub timestamp_micros: u64,
    pub op: Operation,
    pub key: Bytes,
    pub payload: Bytes,
    /// Upstream events this event was derived from (record-level lineage).
    pub causes: Vec<EventRef>,
}

impl Event {
    /// Encodes and signs the event. Fails when `key` does not own the product or when the event
    /// breaks a limit of `config`: a producer never creates an event its peers would reject.
    pub fn sign(self, key: &SecretKey, config: &Config) -> Result<VerifiedEvent, BuildError> {
        Ok(self.prepare(key, config)?.sign(key))
    }

    /// Encodes and hashes the event, checking everything [`Event::sign`] checks, but does not
    /// sign it yet. The id is known from here on, so a producer can build the next event of
    /// the chain before this one is signed, and sign a run of events in parallel.
    pub fn prepare(self, key: &SecretKey, config: &Config) -> Result<PreparedEvent, BuildError> {
        if &key.public() != self.product.owner() {
            return Err(BuildError::NotOwner {
                product: self.product.to_string(),
                signer: key.public().to_string(),
            });
        }
        self.check(config)?;
        let body = Bytes::from(self.to_pb().encode_to_vec());
        // The envelope adds the signer (34 bytes with its tag), the signature (66) and the
        // body's own tag and length (at most 6).
        let encoded_len = body.len() + 34 + 66 + 6;
        if encoded_len > config.event_bytes_max {
            return Err(DecodeError::Oversized {
                what: "event",
                len: encoded_len,
                max: config.event_bytes_max,
            }
            .into());
        }
        let id = *blake3::hash(&body).as_bytes();
        Ok(PreparedEvent {
            event: self,
            body,
            id,
        })
    }

    /// The checks a decoded body gets, other than those its types already guarantee.
    fn check(&self, config: &Config) -> Result<(), DecodeError> {
        if self.seq == 0 {
            return Err(DecodeError::invalid("seq", "sequence numbers start at 1"));
        }
        match (self.seq, self.prev) {
            (1, Some(_)) => {
                return Err(DecodeError::invalid("prev", "the first event has no prev"));
            }
            (2.., None) => {
                return Err(DecodeError::invalid(
                    "prev",
                    "must be 32 bytes after the first event",
                ));
            }
            _ => {}
        }
        if self.key.is_empty() {
            return Err(DecodeError::invalid("key", "must not be empty"));
        }
        if self.key.len() > config.key_bytes_max {
            return Err(DecodeError::Oversized {
                what: "key bytes",
                len: self.key.len(),
                max: config.key_bytes_max,
            });
        }
        if self.payload.len() > config.payload_bytes_max {
            return Err(DecodeError::Oversized {
                what: "payload bytes",
                len: self.payload.len(),
                max: config.payload_bytes_max,
            });
        }
        if self.op == Operation::Delete && !self.payload.is_empty() {
            return Err(DecodeError::invalid(
                "payload",
                "a delete carries no payload",
            ));
        }
        if self.causes.len() > config.causes_max {
            return Err(DecodeError::Oversized {
                what: "causes",
                len: self.causes.len(),
                max: config.causes_max,
            });
        }
        if let Some(cause) = self.causes.iter().find(|c| c.seq == 0) {
            return Err(DecodeError::invalid(
                "causes.seq",
                format!("cause {} has seq 0", cause.id.short()),
            ));
        }
        Ok(())
    }

    fn to_pb(&self) -> pb::EventBody {
        pb::EventBody {
            product: Some(wire::product_id_to_pb(&self.product)),
            seq: self.seq,
            prev: self
                .prev
                .map(|p| Bytes::copy_from_slice(p.as_bytes()))
                .unwrap_or_default(),
            timestamp_micros: self.timestamp_micros,
            op: match self.op {
                Operation::Upsert => pb::Operation::Upsert,
                Operation::Delete => pb::Operation::Delete,
            } as i32,
            key: self.key.clone(),
            payload: self.payload.clone(),
            causes: self
                .causes
                .iter()
                .map(|c| pb::EventRef {
                    product: Some(wire::product_id_to_pb(&c.product)),
                    seq: c.seq,
                    id: Bytes::copy_from_slice(c.id.as_bytes()),
                })
                .collect(),
        }
    }

    fn from_pb(body: pb::EventBody, config: &Config) -> Result<Self, DecodeError> {
        // Count limits first, so a hostile body costs no per-item work.
        if body.causes.len() > config.causes_max {
            return Err(DecodeError::Oversized {
                what: "causes",
                len: body.causes.len(),
                max: config.causes_max,
            });
        }
        let prev = match body.prev.len() {
            0 => None,
            _ => Some(EventId(wire::digest(&body.prev, "prev")?)),
        };
        let op = match pb::Operation::try_from(body.op) {
            Ok(pb::Operation::Upsert) => Operation::Upsert,
            Ok(pb::Operation::Delete) => Operation::Delete,
            _ => {
                return Err(DecodeError::invalid(
                    "op",
                    format!("unknown operation {}", body.op),
                ));
            }
        };
        let causes = body
            .causes
            .into_iter()
            .map(|c| {
                Ok(EventRef {
                    product: wire::product_id(c.product, "causes.product")?,
                    seq: c.seq,
                    id: EventId(wire::digest(&c.id, "causes.id")?),
                })
            })
            .collect::<Result<Vec<_>, DecodeError>>()?;
        let event = Event {
            product: wire::product_id(body.product, "product")?,
            seq: body.seq,
            prev,
            timestamp_micros: body.timestamp_micros,
            op,
            key: body.key,
            payload: body.payload,
            causes,
        };
        event.check(config)?;
        Ok(event)
    }
}

/// An event encoded and hashed, checked, and ready to be signed by its product's owner.
#[derive(Clone, Debug)]
pub struct PreparedEvent {
    event: Event,
    body: Bytes,
    id: [u8; 32],
}

impl PreparedEvent {
    pub fn id(&self) -> EventId {
        EventId(self.id)
    }

    pub fn event(&self) -> &Event {
        &self.event
    }

    /// Signs the event. `key` must be the key it was prepared with (the product's owner): a
    /// different key yields an event that fails verification everywhere, so it is checked.
    pub fn sign(self, key: &SecretKey) -> VerifiedEvent {
        debug_assert_eq!(
            &key.public(),
            self.event.product.owner(),
            "signed with another key than prepared"
        );
        let signature = key.sign_digest(EVENT_SIGNING_CONTEXT, &self.id);
        let envelope = Envelope {
            body: self.body,
            id: self.id,
            signer: key.public(),
            signature,
        };
        let encoded = encode_envelope(&envelope);
        VerifiedEvent(SignedEvent {
            envelope,
            event: self.event,
            encoded,
        })
    }
}

fn encode_envelope(envelope: &Envelope) -> Bytes {
    Bytes::from(envelope_to_pb(envelope).encode_to_vec())
}

pub(crate) fn envelope_to_pb(envelope: &Envelope) -> pb::SignedEvent {
    pb::SignedEvent {
        body: envelope.body.clone(),
        signer: Bytes::copy_from_slice(envelope.signer.as_bytes()),
        signature: Bytes::copy_from_slice(&envelope.signature.to_bytes()),
    }
}

/// A well-formed event whose signature has not been checked yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedEvent {
    envelope: Envelope,
    event: Event,
    /// The envelope in its canonical encoding: what is stored and forwarded.
    encoded: Bytes,
}

impl SignedEvent {
    /// Decodes an encoded `SignedEvent` received from anywhere. Checks every limit of `config`
    /// and the shape of every field, but not the signature: call [`SignedEvent::verify`] or
    /// [`verify_batch`] next.
    pub fn decode(bytes: Bytes, config: &Config) -> Result<Self, DecodeError> {
        let pb: pb::SignedEvent = wire::decode(&bytes, "event", config.event_bytes_max)?;
        Self::from_pb(pb, bytes, config)
    }

    pub(crate) fn from_pb(
        pb: pb::SignedEvent,
        bytes: Bytes,
        config: &Config,
    ) -> Result<Self, DecodeError> {
        let envelope = Envelope::from_parts(pb.body, &pb.signer, &pb.signature)?;
        let body: pb::EventBody =
            wire::decode(&envelope.body, "event body", config.event_bytes_max)?;
        let event = Event::from_pb(body, config)?;
        // Keep the bytes as received when they are already canonical (the usual case);
        // otherwise store and forward the canonical form, without unknown fields or reordered
        // ones, so that every node holds one event as the same bytes. Same length is not
        // enough: reordered fields have it too.
        let canonical = envelope_to_pb(&envelope).encode_to_vec();
        let encoded = if canonical == bytes {
            bytes
        } else {
            Bytes::from(canonical)
        };
        // `bytes` was bounded by the caller, but an event inside a larger message (a fork
        // proof) was not: bound what will be stored.
        if encoded.len() > config.event_bytes_max {
            return Err(DecodeError::Oversized {
                what: "event",
                len: encoded.len(),
                max: config.event_bytes_max,
            });
        }
        Ok(Self {
            envelope,
            event,
            encoded,
        })
    }

    /// Checks that the product's owner signed this event.
    pub fn verify(self) -> Result<VerifiedEvent, VerifyError> {
        self.envelope
            .verify(self.event.product.owner(), EVENT_SIGNING_CONTEXT)?;
        Ok(VerifiedEvent(self))
    }

    pub fn id(&self) -> EventId {
        EventId(self.envelope.id)
    }

    /// The event's content, which no one has vouched for yet: use it to route or to log, never
    /// to store or apply.
    pub fn unverified(&self) -> &Event {
        &self.event
    }
}

/// An event whose signature is the product owner's. Obtained only by signing or verifying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedEvent(SignedEvent);

impl VerifiedEvent {
    pub fn id(&self) -> EventId {
        self.0.id()
    }

    pub fn event(&self) -> &Event {
        &self.0.event
    }

    pub fn product(&self) -> &ProductId {
        &self.0.event.product
    }

    pub fn seq(&self) -> u64 {
        self.0.event.seq
    }

    /// The signed envelope, encoded: the bytes to store and to send.
    pub fn encoded(&self) -> &Bytes {
        &self.0.encoded
    }

    /// A reference to this event, for other events to cite.
    pub fn to_ref(&self) -> EventRef {
        EventRef {
            product: self.product().clone(),
            seq: self.seq(),
            id: self.id(),
        }
    }

    pub(crate) fn envelope(&self) -> &Envelope {
        &self.0.envelope
    }

    /// Re-decodes an event this node verified before, e.g. read back from its own store. The
    /// signature is checked again: a store is a file anyone with disk access can edit.
    pub fn decode_and_verify(bytes: Bytes, config: &Config) -> Result<Self, crate::RejectReason> {
        Ok(SignedEvent::decode(bytes, config)?.verify()?)
    }
}

/// Verifies many events at once with ed25519 batch verification, about twice as fast per event
/// as one by one. Results are in input order. Each distinct signer key is decompressed once
/// (a log's events share one key). When the batch as a whole fails, each event is verified on
/// its own to find which ones are bad, so one forgery costs its batch the speed-up but never
/// rejects a good event.
pub fn verify_batch(events: Vec<SignedEvent>) -> Vec<Result<VerifiedEvent, VerifyError>> {
    signed::verify_batch(events, EVENT_SIGNING_CONTEXT, |e| {
        (&e.envelope, e.event.product.owner())
    })
    .into_iter()
    .map(|r| r.map(VerifiedEvent))
    .collect()
}

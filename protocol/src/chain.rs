//! Hash chains: which event may extend a log, and proofs that an owner forked its log.
//!
//! A log is valid when event `n` (from 1) has `seq = n`, and for `n > 1`, `prev` = the id of
//! event `n - 1`. Because every event is signed by the owner and names its predecessor's hash,
//! a receiver holding a verified head detects any forged, reordered, missing or replayed event
//! with one comparison. What a receiver cannot rule out alone is that the owner signed two
//! different events at one position and sent each to different peers: when two such events
//! meet, they form a [`ForkProof`] that convinces anyone, with no other state.

use bytes::Bytes;
use prost::Message;

use crate::config::Config;
use crate::error::{ChainError, DecodeError, ProofError};
use crate::event::{
    Event, EventId, EventRef, Operation, SignedEvent, VerifiedEvent, envelope_to_pb,
};
use crate::identity::ProductId;
use crate::wire::{self, pb};

/// The last event of a log, as far as one node knows it: what the next event must extend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogHead {
    product: ProductId,
    seq: u64,
    id: Option<EventId>,
}

impl LogHead {
    /// The head of a log with no events yet.
    pub fn empty(product: ProductId) -> Self {
        Self {
            product,
            seq: 0,
            id: None,
        }
    }

    /// A head this node stored earlier (its own store is trusted to hold what it verified;
    /// events are verified again when they are served or audited).
    pub fn resume(product: ProductId, seq: u64, id: EventId) -> Self {
        Self {
            product,
            seq,
            id: (seq > 0).then_some(id),
        }
    }

    /// The head of a log whose last event is `event`.
    pub fn at(event: &VerifiedEvent) -> Self {
        Self {
            product: event.product().clone(),
            seq: event.seq(),
            id: Some(event.id()),
        }
    }

    pub fn product(&self) -> &ProductId {
        &self.product
    }

    /// Sequence number of the last event; 0 for an empty log.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Id of the last event; `None` for an empty log.
    pub fn id(&self) -> Option<EventId> {
        self.id
    }

    /// Checks that `event` is the next event of this log.
    pub fn validate_next(&self, event: &VerifiedEvent) -> Result<(), ChainError> {
        let e = event.event();
        if e.product != self.product {
            return Err(ChainError::WrongProduct {
                expected: self.product.to_string(),
                got: e.product.to_string(),
            });
        }
        if e.seq <= self.seq {
            return Err(ChainError::Replay {
                got: e.seq,
                head: self.seq,
            });
        }
        if e.seq != self.seq + 1 {
            return Err(ChainError::Gap {
                expected: self.seq + 1,
                got: e.seq,
            });
        }
        // Decoding guarantees `prev` is `None` exactly when `seq == 1`, and `seq == 1` here
        // means this head is empty, so only a mismatch between two ids is left to check.
        match (self.id, e.prev) {
            (Some(expected), Some(got)) if expected != got => Err(ChainError::WrongPrev {
                seq: e.seq,
                expected,
                got,
            }),
            _ => Ok(()),
        }
    }

    /// Validates `event` as the next one and, if it is, moves the head to it.
    pub fn advance(&mut self, event: &VerifiedEvent) -> Result<(), ChainError> {
        self.validate_next(event)?;
        self.seq = event.seq();
        self.id = Some(event.id());
        Ok(())
    }

    /// Validates a run of events in order and moves the head past the valid prefix. Returns how
    /// many events were accepted and, if one was not, why.
    pub fn advance_all(&mut self, events: &[VerifiedEvent]) -> (usize, Option<ChainError>) {
        for (accepted, event) in events.iter().enumerate() {
            if let Err(e) = self.advance(event) {
                return (accepted, Some(e));
            }
        }
        (events.len(), None)
    }

    /// The unsigned event that would extend this log: for producers, with `seq` and `prev` set.
    pub fn next_event(
        &self,
        timestamp_micros: u64,
        op: Operation,
        key: Bytes,
        payload: Bytes,
        causes: Vec<EventRef>,
    ) -> Event {
        Event {
            product: self.product.clone(),
            seq: self.seq + 1,
            prev: self.id,
            timestamp_micros,
            op,
            key,
            payload,
            causes,
        }
    }
}

/// Two validly signed events of one product at one sequence number with different ids: proof
/// that the owner forked its log. Checkable by anyone with no other state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForkProof {
    /// The two events ordered by id, so that both holders of a fork build the same proof.
    first: VerifiedEvent,
    second: VerifiedEvent,
}

impl ForkProof {
    /// A proof from two events, if they conflict.
    pub fn new(a: VerifiedEvent, b: VerifiedEvent) -> Result<Self, ProofError> {
        if a.product() != b.product() {
            return Err(ProofError::DifferentProducts);
        }
        if a.seq() != b.seq() {
            return Err(ProofError::DifferentPositions {
                first: a.seq(),
                second: b.seq(),
            });
        }
        if a.id() == b.id() {
            return Err(ProofError::Identical);
        }
        let (first, second) = if a.id() < b.id() { (a, b) } else { (b, a) };
        Ok(Self { first, second })
    }

    /// Decodes a proof and checks both signatures and the conflict.
    pub fn decode_and_verify(bytes: Bytes, config: &Config) -> Result<Self, ProofError> {
        // A proof holds two events and a few bytes of framing each.
        let proof_bytes_max = 2 * (config.event_bytes_max + 16);
        let pb: pb::ForkProof = wire::decode(&bytes, "fork proof", proof_bytes_max)?;
        let decode_side = |side: Option<pb::SignedEvent>, field| {
            let side = side.ok_or(DecodeError::Missing { field })?;
            let bytes = Bytes::from(side.encode_to_vec());
            Ok::<_, ProofError>(SignedEvent::from_pb(side, bytes, config)?.verify()?)
        };
        let first = decode_side(pb.first, "first")?;
        let second = decode_side(pb.second, "second")?;
        Self::new(first, second)
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(
            pb::ForkProof {
                first: Some(envelope_to_pb(self.first.envelope())),
                second: Some(envelope_to_pb(self.second.envelope())),
            }
            .encode_to_vec(),
        )
    }

    pub fn product(&self) -> &ProductId {
        self.first.product()
    }

    pub fn seq(&self) -> u64 {
        self.first.seq()
    }

    pub fn events(&self) -> (&VerifiedEvent, &VerifiedEvent) {
        (&self.first, &self.second)
    }
}

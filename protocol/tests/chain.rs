//! Each way a log can be tampered with is detected, and reported as its own error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::{T0_MICROS, key, log, product};
use mesh_protocol::wire::pb;
use mesh_protocol::{
    ChainError, Config, DecodeError, ForkProof, LogHead, Operation, ProofError, RejectReason,
    SignedEvent, VerifiedEvent, VerifyError, verify_batch,
};
use prost::Message;

/// Decodes, verifies and chain-checks `bytes` against `head`, the way a subscriber ingests.
fn ingest(head: &mut LogHead, bytes: Bytes) -> Result<VerifiedEvent, RejectReason> {
    let event = SignedEvent::decode(bytes, &Config::default())?.verify()?;
    head.advance(&event)?;
    Ok(event)
}

fn head_after(events: &[VerifiedEvent]) -> LogHead {
    let mut head = LogHead::empty(events[0].product().clone());
    for e in events {
        head.advance(e).unwrap();
    }
    head
}

/// Re-encodes an event's envelope with a different body, signer or signature.
fn tamper(event: &VerifiedEvent, edit: impl FnOnce(&mut pb::SignedEvent)) -> Bytes {
    let mut envelope = pb::SignedEvent::decode(event.encoded().clone()).unwrap();
    edit(&mut envelope);
    Bytes::from(envelope.encode_to_vec())
}

fn edit_body(event: &VerifiedEvent, edit: impl FnOnce(&mut pb::EventBody)) -> Bytes {
    tamper(event, |envelope| {
        let mut body = pb::EventBody::decode(envelope.body.clone()).unwrap();
        edit(&mut body);
        envelope.body = Bytes::from(body.encode_to_vec());
    })
}

#[test]
fn an_honest_log_is_accepted_in_order() {
    let owner = key(1);
    let events = log(&owner, &product(&owner, "orders"), 5);
    let mut head = LogHead::empty(product(&owner, "orders"));
    for e in &events {
        let got = ingest(&mut head, e.encoded().clone()).unwrap();
        assert_eq!(&got, e);
    }
    assert_eq!(head.seq(), 5);
    assert_eq!(head.id(), Some(events[4].id()));
}

#[test]
fn forged_signature_is_rejected_as_bad_signature() {
    let owner = key(1);
    let events = log(&owner, &product(&owner, "orders"), 1);
    // Change the payload after signing: the signature no longer covers the body.
    let forged = edit_body(&events[0], |body| body.payload = Bytes::from("{\"n\":999}"));
    let mut head = LogHead::empty(product(&owner, "orders"));
    assert_eq!(
        ingest(&mut head, forged),
        Err(RejectReason::Verify(VerifyError::BadSignature))
    );
    // A flipped signature bit is just as bad.
    let flipped = tamper(&events[0], |e| {
        let mut sig = e.signature.to_vec();
        sig[10] ^= 1;
        e.signature = Bytes::from(sig);
    });
    let err = ingest(&mut head, flipped).unwrap_err();
    assert_eq!(err.kind(), "bad_signature");
    assert_eq!(head.seq(), 0, "nothing was accepted");
}

#[test]
fn event_signed_by_another_key_is_rejected_as_wrong_author() {
    let owner = key(1);
    let mallory = key(2);
    let events = log(&owner, &product(&owner, "orders"), 1);
    // Mallory cannot sign an event of the owner's product through the API...
    let err = events[0]
        .event()
        .clone()
        .sign(&mallory, &Config::default())
        .unwrap_err();
    assert!(
        matches!(err, mesh_protocol::BuildError::NotOwner { .. }),
        "{err}"
    );
    // ...so she rewrites the envelope by hand to name her key as the signer.
    let forged = tamper(&events[0], |e| {
        e.signer = Bytes::copy_from_slice(mallory.public().as_bytes());
    });
    let mut head = LogHead::empty(product(&owner, "orders"));
    let err = ingest(&mut head, forged).unwrap_err();
    assert!(
        matches!(&err, RejectReason::Verify(VerifyError::WrongAuthor { owner: o, signer: s })
            if *o == owner.public().to_string() && *s == mallory.public().to_string()),
        "{err:?}"
    );
    assert_eq!(err.kind(), "wrong_author");
}

#[test]
fn gap_is_rejected_with_expected_and_received_seq() {
    let owner = key(1);
    let events = log(&owner, &product(&owner, "orders"), 3);
    let mut head = head_after(&events[..1]);
    assert_eq!(
        ingest(&mut head, events[2].encoded().clone()),
        Err(RejectReason::Chain(ChainError::Gap {
            expected: 2,
            got: 3
        }))
    );
    assert_eq!(head.seq(), 1);
}

#[test]
fn replay_of_an_old_event_is_rejected() {
    let owner = key(1);
    let events = log(&owner, &product(&owner, "orders"), 3);
    let mut head = head_after(&events);
    let err = ingest(&mut head, events[1].encoded().clone()).unwrap_err();
    assert_eq!(
        err,
        RejectReason::Chain(ChainError::Replay { got: 2, head: 3 })
    );
    assert_eq!(err.kind(), "replay");
}

#[test]
fn reordered_events_are_refused_until_the_missing_one_arrives() {
    let owner = key(1);
    let events = log(&owner, &product(&owner, "orders"), 3);
    let mut head = LogHead::empty(product(&owner, "orders"));
    ingest(&mut head, events[0].encoded().clone()).unwrap();
    // 3 arrives before 2.
    let err = ingest(&mut head, events[2].encoded().clone()).unwrap_err();
    assert_eq!(
        err,
        RejectReason::Chain(ChainError::Gap {
            expected: 2,
            got: 3
        })
    );
    ingest(&mut head, events[1].encoded().clone()).unwrap();
    ingest(&mut head, events[2].encoded().clone()).unwrap();
    assert_eq!(head.seq(), 3);
}

#[test]
fn wrong_prev_is_rejected_even_when_validly_signed() {
    let owner = key(1);
    let p = product(&owner, "orders");
    let events = log(&owner, &p, 2);
    let other_branch = log(&owner, &product(&owner, "orders"), 1);
    // The owner signs a seq-2 event whose prev is not the seq-1 event this node holds.
    let mut wrong = events[1].event().clone();
    let bogus = mesh_protocol::EventId::from_bytes([9; 32]);
    wrong.prev = Some(bogus);
    let wrong = wrong.sign(&owner, &Config::default()).unwrap();
    let mut head = head_after(&other_branch);
    let err = ingest(&mut head, wrong.encoded().clone()).unwrap_err();
    assert_eq!(
        err,
        RejectReason::Chain(ChainError::WrongPrev {
            seq: 2,
            expected: events[0].id(),
            got: bogus
        })
    );
    assert_eq!(err.kind(), "wrong_prev");
}

#[test]
fn event_of_another_product_is_rejected() {
    let owner = key(1);
    let invoices = log(&owner, &product(&owner, "invoices"), 1);
    let mut head = LogHead::empty(product(&owner, "orders"));
    let err = ingest(&mut head, invoices[0].encoded().clone()).unwrap_err();
    assert_eq!(err.kind(), "wrong_product");
}

#[test]
fn oversized_payload_is_rejected_before_any_signature_work() {
    let owner = key(1);
    let config = Config::default();
    let p = product(&owner, "orders");
    let big = Bytes::from(vec![b'x'; config.payload_bytes_max + 1]);
    // A producer cannot create it...
    let err = LogHead::empty(p.clone())
        .next_event(
            T0_MICROS,
            Operation::Upsert,
            Bytes::from("k"),
            big.clone(),
            vec![],
        )
        .sign(&owner, &config)
        .unwrap_err();
    assert!(err.to_string().contains("payload bytes"), "{err}");
    // ...and a receiver refuses one a peer made with looser limits, naming the limit.
    let loose = Config {
        payload_bytes_max: config.payload_bytes_max * 2,
        event_bytes_max: config.event_bytes_max * 2,
        ..config.clone()
    };
    let event = LogHead::empty(p)
        .next_event(T0_MICROS, Operation::Upsert, Bytes::from("k"), big, vec![])
        .sign(&owner, &loose)
        .unwrap();
    let err = SignedEvent::decode(event.encoded().clone(), &config).unwrap_err();
    assert_eq!(
        err,
        DecodeError::Oversized {
            what: "payload bytes",
            len: config.payload_bytes_max + 1,
            max: config.payload_bytes_max
        }
    );
    assert_eq!(err.kind(), "oversized");
    // A whole message over the event limit is refused on its length alone.
    let huge = Bytes::from(vec![0u8; config.event_bytes_max + 1]);
    assert!(matches!(
        SignedEvent::decode(huge, &config),
        Err(DecodeError::Oversized { what: "event", .. })
    ));
}

#[test]
fn malformed_bytes_are_rejected_as_malformed() {
    let config = Config::default();
    let cases: Vec<(&str, Bytes)> = vec![
        ("garbage", Bytes::from_static(&[0xff, 0xff, 0xff, 0xff])),
        ("truncated varint", Bytes::from_static(&[0x0a, 0x80])),
        ("empty", Bytes::new()),
    ];
    for (name, bytes) in cases {
        let err = SignedEvent::decode(bytes, &config).unwrap_err();
        assert_eq!(err.kind(), "malformed", "{name}: {err}");
    }
    let owner = key(1);
    let events = log(&owner, &product(&owner, "orders"), 2);
    let body_cases: Vec<(&str, Bytes, &str)> = vec![
        ("seq 0", edit_body(&events[0], |b| b.seq = 0), "seq"),
        (
            "short prev",
            edit_body(&events[1], |b| b.prev = Bytes::from_static(&[1; 31])),
            "prev",
        ),
        (
            "prev on first",
            edit_body(&events[0], |b| b.prev = Bytes::from_static(&[1; 32])),
            "prev",
        ),
        ("unknown op", edit_body(&events[0], |b| b.op = 7), "op"),
        (
            "empty key",
            edit_body(&events[0], |b| b.key = Bytes::new()),
            "key",
        ),
        (
            "no product",
            edit_body(&events[0], |b| b.product = None),
            "product",
        ),
        (
            "delete with payload",
            edit_body(&events[0], |b| b.op = pb::Operation::Delete as i32),
            "payload",
        ),
        (
            "short signature",
            tamper(&events[0], |e| e.signature.truncate(63)),
            "signature",
        ),
        (
            "body not protobuf",
            tamper(&events[0], |e| e.body = Bytes::from_static(&[0xff; 3])),
            "event body",
        ),
    ];
    for (name, bytes, field) in body_cases {
        let err = SignedEvent::decode(bytes, &config).unwrap_err();
        assert_eq!(err.kind(), "malformed", "{name}: {err}");
        assert!(
            err.to_string().contains(field),
            "{name}: {err} should name {field}"
        );
    }
}

#[test]
fn a_fork_yields_a_proof_that_verifies_alone() {
    let owner = key(1);
    let p = product(&owner, "orders");
    let history = log(&owner, &p, 2);
    // The owner signs a second, different event at seq 2 and shows it to someone else.
    let mut other = history[1].event().clone();
    other.payload = Bytes::from("{\"n\":-1}");
    let other = other.sign(&owner, &Config::default()).unwrap();

    // A node holding history[1] receives `other`: the chain check says "replay"...
    let mut head = head_after(&history);
    let err = ingest(&mut head, other.encoded().clone()).unwrap_err();
    assert_eq!(err.kind(), "replay");
    // ...and comparing with the stored event at that seq gives a proof.
    let proof = ForkProof::new(history[1].clone(), other.clone()).unwrap();
    assert_eq!((proof.product(), proof.seq()), (&p, 2));

    // The proof travels as bytes and convinces a node that knows nothing of the log.
    let bytes = proof.encode();
    let checked = ForkProof::decode_and_verify(bytes.clone(), &Config::default()).unwrap();
    assert_eq!(checked, proof);
    // Both holders of the fork build the same bytes, whichever event they saw first.
    assert_eq!(
        ForkProof::new(other, history[1].clone()).unwrap().encode(),
        bytes
    );
}

#[test]
fn a_tampered_fork_proof_does_not_verify() {
    let owner = key(1);
    let p = product(&owner, "orders");
    let history = log(&owner, &p, 2);
    let mut other = history[1].event().clone();
    other.payload = Bytes::from("{\"n\":-1}");
    let other = other.sign(&owner, &Config::default()).unwrap();
    let proof = ForkProof::new(history[1].clone(), other).unwrap();
    let config = Config::default();

    // A flipped signature bit in one side.
    let mut pb_proof = pb::ForkProof::decode(proof.encode()).unwrap();
    let mut sig = pb_proof.second.as_ref().unwrap().signature.to_vec();
    sig[0] ^= 0x80;
    pb_proof.second.as_mut().unwrap().signature = Bytes::from(sig);
    assert_eq!(
        ForkProof::decode_and_verify(Bytes::from(pb_proof.encode_to_vec()), &config),
        Err(ProofError::Verify(VerifyError::BadSignature))
    );

    // The same event twice is no fork.
    let same = pb::ForkProof {
        first: Some(pb::SignedEvent::decode(history[1].encoded().clone()).unwrap()),
        second: Some(pb::SignedEvent::decode(history[1].encoded().clone()).unwrap()),
    };
    assert_eq!(
        ForkProof::decode_and_verify(Bytes::from(same.encode_to_vec()), &config),
        Err(ProofError::Identical)
    );

    // Two different positions are no fork either.
    let apart = pb::ForkProof {
        first: Some(pb::SignedEvent::decode(history[0].encoded().clone()).unwrap()),
        second: Some(pb::SignedEvent::decode(history[1].encoded().clone()).unwrap()),
    };
    assert_eq!(
        ForkProof::decode_and_verify(Bytes::from(apart.encode_to_vec()), &config),
        Err(ProofError::DifferentPositions {
            first: 1,
            second: 2
        })
    );

    // Nor are events of two products.
    let invoices = log(&owner, &product(&owner, "invoices"), 1);
    assert_eq!(
        ForkProof::new(history[0].clone(), invoices[0].clone()),
        Err(ProofError::DifferentProducts)
    );
}

#[test]
fn batch_verification_finds_exactly_the_bad_events() {
    let owner = key(1);
    let events = log(&owner, &product(&owner, "orders"), 64);
    let config = Config::default();
    let mut bytes: Vec<Bytes> = events.iter().map(|e| e.encoded().clone()).collect();
    bytes[5] = edit_body(&events[5], |b| b.payload = Bytes::from("forged"));
    bytes[40] = tamper(&events[40], |e| {
        e.signer = Bytes::copy_from_slice(key(3).public().as_bytes())
    });
    let decoded = bytes
        .into_iter()
        .map(|b| SignedEvent::decode(b, &config).unwrap())
        .collect();
    let results = verify_batch(decoded);
    assert_eq!(results.len(), 64);
    for (i, result) in results.iter().enumerate() {
        match i {
            5 => assert_eq!(result, &Err(VerifyError::BadSignature)),
            40 => assert!(matches!(result, Err(VerifyError::WrongAuthor { .. }))),
            _ => assert_eq!(result.as_ref().unwrap(), &events[i], "event {i}"),
        }
    }
    // An all-good batch passes whole.
    let good = events
        .iter()
        .map(|e| SignedEvent::decode(e.encoded().clone(), &config).unwrap())
        .collect();
    assert!(verify_batch(good).iter().all(Result::is_ok));
}

#[test]
fn advance_all_stops_at_the_first_break() {
    let owner = key(1);
    let events = log(&owner, &product(&owner, "orders"), 5);
    let mut head = LogHead::empty(product(&owner, "orders"));
    let run = [
        events[0].clone(),
        events[1].clone(),
        events[3].clone(),
        events[4].clone(),
    ];
    let (accepted, err) = head.advance_all(&run);
    assert_eq!(accepted, 2);
    assert_eq!(
        err,
        Some(ChainError::Gap {
            expected: 3,
            got: 4
        })
    );
    assert_eq!(head.seq(), 2);
}

#[test]
fn causes_are_carried_and_signed() {
    let owner = key(1);
    let upstream = log(&owner, &product(&owner, "orders"), 2);
    let config = Config::default();
    let derived = LogHead::empty(product(&owner, "revenue"))
        .next_event(
            T0_MICROS,
            Operation::Upsert,
            Bytes::from("day-1"),
            Bytes::from("{}"),
            upstream.iter().map(VerifiedEvent::to_ref).collect(),
        )
        .sign(&owner, &config)
        .unwrap();
    let back = SignedEvent::decode(derived.encoded().clone(), &config)
        .unwrap()
        .verify()
        .unwrap();
    assert_eq!(
        back.event().causes,
        vec![upstream[0].to_ref(), upstream[1].to_ref()]
    );
    // Too many causes are refused.
    let too_many = vec![upstream[0].to_ref(); config.causes_max + 1];
    let err = LogHead::empty(product(&owner, "revenue"))
        .next_event(
            T0_MICROS,
            Operation::Upsert,
            Bytes::from("k"),
            Bytes::new(),
            too_many,
        )
        .sign(&owner, &config)
        .unwrap_err();
    assert!(err.to_string().contains("causes"), "{err}");
}

#[test]
fn unknown_envelope_fields_are_dropped_not_forwarded() {
    let owner = key(1);
    let events = log(&owner, &product(&owner, "orders"), 1);
    let mut padded = events[0].encoded().to_vec();
    // Field 15, wire type 2 (length-delimited), 3 bytes of junk.
    padded.extend_from_slice(&[0x7a, 0x03, 1, 2, 3]);
    let event = SignedEvent::decode(Bytes::from(padded), &Config::default())
        .unwrap()
        .verify()
        .unwrap();
    assert_eq!(event.encoded(), events[0].encoded());
}

#[test]
fn an_owner_key_that_is_no_curve_point_never_verifies() {
    let owner = key(1);
    let events = log(&owner, &product(&owner, "orders"), 1);
    // The first y with no x on the curve, and the small-order identity point (0, 1).
    let off_curve = (2u8..)
        .map(|y| {
            let mut bytes = [0u8; 32];
            bytes[0] = y;
            bytes
        })
        .find(|bytes| ed25519_dalek::VerifyingKey::from_bytes(bytes).is_err())
        .unwrap();
    let mut identity = [0u8; 32];
    identity[0] = 1;
    for bad in [off_curve, identity] {
        let forged = tamper(&events[0], |e| {
            let mut body = pb::EventBody::decode(e.body.clone()).unwrap();
            body.product.as_mut().unwrap().owner = Bytes::copy_from_slice(&bad);
            e.body = Bytes::from(body.encode_to_vec());
            e.signer = Bytes::copy_from_slice(&bad);
        });
        let decoded = SignedEvent::decode(forged, &Config::default()).unwrap();
        let alone = decoded.clone().verify().unwrap_err();
        assert_eq!(alone.kind(), "invalid_key", "{alone}");
        let batched = verify_batch(vec![decoded]);
        assert_eq!(batched[0].as_ref().unwrap_err().kind(), "invalid_key");
    }
}

#[test]
fn an_event_with_reordered_envelope_fields_is_kept_in_canonical_form() {
    let owner = key(1);
    let event = log(&owner, &product(&owner, "orders"), 1).remove(0);
    let fields = pb::SignedEvent::decode(event.encoded().clone()).unwrap();
    // The same three fields, written in the order 3, 2, 1: same length, other bytes.
    let mut reordered = Vec::new();
    for one in [
        pb::SignedEvent {
            signature: fields.signature.clone(),
            ..Default::default()
        },
        pb::SignedEvent {
            signer: fields.signer.clone(),
            ..Default::default()
        },
        pb::SignedEvent {
            body: fields.body.clone(),
            ..Default::default()
        },
    ] {
        one.encode(&mut reordered).unwrap();
    }
    assert_eq!(reordered.len(), event.encoded().len());
    assert_ne!(&reordered[..], &event.encoded()[..]);

    let received = SignedEvent::decode(Bytes::from(reordered), &Config::default())
        .unwrap()
        .verify()
        .unwrap();
    // Every node stores and forwards one event as the same bytes.
    assert_eq!(received.encoded(), event.encoded());
    assert_eq!(received, event);
}

#[test]
fn a_fork_proof_side_over_the_event_limit_is_refused() {
    let config = Config::default();
    let owner = key(1);
    let p = product(&owner, "orders");
    let honest = log(&owner, &p, 1).remove(0);
    // The owner signs a second event 1 whose body, padded with an unknown field, is within
    // `event_bytes_max` but whose envelope is not: no peer would accept it on its own.
    let mut body = pb::SignedEvent::decode(honest.encoded().clone())
        .unwrap()
        .body
        .to_vec();
    body.extend(common::unknown_field(
        config.event_bytes_max - body.len() - 8,
    ));
    assert!(body.len() <= config.event_bytes_max);
    let padded = common::sign_raw(&owner, mesh_protocol::EVENT_SIGNING_CONTEXT, body);
    assert!(padded.len() > config.event_bytes_max);
    let alone = SignedEvent::decode(Bytes::from(padded.clone()), &config).unwrap_err();
    assert!(matches!(alone, DecodeError::Oversized { .. }), "{alone:?}");

    let proof = pb::ForkProof {
        first: Some(pb::SignedEvent::decode(honest.encoded().clone()).unwrap()),
        second: Some(pb::SignedEvent::decode(&padded[..]).unwrap()),
    };
    let err =
        ForkProof::decode_and_verify(Bytes::from(proof.encode_to_vec()), &config).unwrap_err();
    assert!(
        matches!(
            err,
            ProofError::Decode(DecodeError::Oversized { what: "event", .. })
        ),
        "{err:?}"
    );
}

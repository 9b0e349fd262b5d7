//! Arbitrary bytes as an `EventBody`, signed by the fixed fuzzing key.
//!
//! The fuzzer cannot forge signatures, so in `signed_event` only seed bodies ever get past
//! `verify`. Here the harness signs whatever body the fuzzer writes, so every check that
//! follows a good signature runs on arbitrary bodies.
//!
//! Properties: as in `signed_event`; in addition, an event correctly signed by the fixed key
//! verifies exactly when the body names that key as owner. Then a second event is signed at the
//! body's position and the two are sent as a fork proof: an accepted proof passes the
//! `fork_proof` checks (each side decodable alone under the same limits), and a proof of two
//! verified events at one position with different ids is accepted.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mesh_protocol::wire::pb;
use mesh_protocol::{Event, EventId, ForkProof, Operation, SignedEvent, verify_batch};
use mesh_protocol_fuzz::{
    check_decoded_event, check_fork_proof, check_verified_event, config, event_envelope,
    exercise_error, owner_key,
};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let config = config();
    let body = Bytes::copy_from_slice(data);
    let envelope = event_envelope(body.clone());
    let input = Bytes::from(envelope.encode_to_vec());
    let verified = match SignedEvent::decode(input.clone(), &config) {
        Ok(signed) => {
            check_decoded_event(&input, &signed, &config);
            let by_owner = signed.unverified().product.owner() == &owner_key().public();
            let single = signed.clone().verify();
            assert_eq!(
                single.is_ok(),
                by_owner,
                "an event signed by the fixed key: verify gave {single:?}"
            );
            assert_eq!(
                verify_batch(vec![signed.clone()]),
                vec![single.clone()],
                "verify_batch of one event disagrees with verify"
            );
            match single {
                Ok(verified) => {
                    check_verified_event(&verified, &config);
                    Some(verified)
                }
                Err(e) => {
                    exercise_error(&e, e.kind());
                    None
                }
            }
        }
        Err(e) => {
            exercise_error(&e, e.kind());
            None
        }
    };

    // A second event at the body's position, signed by the same key, and a proof of the two.
    let Ok(raw) = pb::EventBody::decode(body) else {
        return;
    };
    let Some(product) = raw.product.as_ref().and_then(|p| {
        let owner = mesh_protocol::PublicKey::from_bytes(&p.owner).ok()?;
        let name = mesh_protocol::ProductName::new(p.name.clone()).ok()?;
        Some(mesh_protocol::ProductId::new(owner, name))
    }) else {
        return;
    };
    let prev = <[u8; 32]>::try_from(raw.prev.as_ref())
        .ok()
        .map(EventId::from_bytes);
    let other = Event {
        product,
        seq: raw.seq,
        prev,
        timestamp_micros: raw.timestamp_micros.wrapping_add(1),
        op: Operation::Upsert,
        key: Bytes::from_static(b"fork"),
        payload: Bytes::from_static(b"the other side"),
        causes: vec![],
    };
    let Ok(other) = other.sign(&owner_key(), &config) else {
        return;
    };
    let other_envelope =
        pb::SignedEvent::decode(other.encoded().clone()).expect("a signed event is protobuf");
    let proof_bytes = Bytes::from(
        pb::ForkProof {
            first: Some(envelope),
            second: Some(other_envelope),
        }
        .encode_to_vec(),
    );
    match ForkProof::decode_and_verify(proof_bytes, &config) {
        Ok(proof) => check_fork_proof(&proof, &config),
        Err(e) => {
            exercise_error(&e, e.kind());
            if let Some(verified) = verified {
                if verified.id() != other.id() {
                    panic!(
                        "two verified events at seq {} of one product are no fork proof: {e}",
                        other.seq()
                    );
                }
            }
        }
    }
});

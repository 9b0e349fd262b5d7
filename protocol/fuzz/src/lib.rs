//! Shared pieces of the `mesh-protocol` fuzz targets: the limits they decode with, the fixed
//! fuzzing key, and the property checks that every target applies to whatever decodes.
//!
//! A check panics (with a message saying which property broke) when the core accepts something
//! it should not, or accepts it in a form it would later refuse. Panics are what libFuzzer
//! reports as crashes, so every `assert!` here is a property the fuzzer is hunting for a
//! counter-example to.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::Signer;
use mesh_protocol::wire::pb;
use mesh_protocol::{
    AccessPolicy, CATALOG_SIGNING_CONTEXT, CatalogEntry, ChainError, Config, Descriptor,
    EVENT_SIGNING_CONTEXT, EquivocationProof, Event, ForkProof, LogHead, Merge, Operation,
    ProductId, ProductName, ProofError, SecretKey, SignedCatalogEntry, SignedEvent,
    VerifiedCatalogEntry, VerifiedEvent, merge,
};
use prost::Message;

/// Separates the events of one `batch_verify` input.
pub const BATCH_SEPARATOR: &[u8] = b"\n--8<--\n";
/// Most events one `batch_verify` input is split into.
pub const BATCH_EVENTS_MAX: usize = 16;

/// Seed of the key that signs every seed and whatever `event_body` / `catalog_body` receive.
pub const OWNER_SEED: [u8; 32] = [0x42; 32];
/// Seed of a second key: products of other owners, allow-lists, wrong authors.
pub const OTHER_SEED: [u8; 32] = [0x43; 32];

/// The limits every target decodes with. Much smaller than `Config::default()`, so that inputs
/// of a few KiB reach every limit; still consistent (`Config::validate` holds). Everything
/// accepted under these limits must also be accepted, unchanged, under the default ones.
pub fn config() -> Config {
    let config = Config {
        event_bytes_max: 2048,
        payload_bytes_max: 512,
        key_bytes_max: 64,
        causes_max: 4,
        catalog_entry_bytes_max: 4096,
        fields_max: 8,
        tags_max: 4,
        inputs_max: 4,
        output_ports_max: 3,
        allowed_peers_max: 4,
        short_text_bytes_max: 32,
        description_bytes_max: 256,
        descriptor_file_bytes_max: 4096,
        // Limits of messages no target here decodes keep their defaults.
        ..Config::default()
    };
    debug_assert_eq!(config.validate(), Ok(()));
    config
}

pub fn owner_key() -> SecretKey {
    SecretKey::from_bytes(&OWNER_SEED)
}

pub fn other_key() -> SecretKey {
    SecretKey::from_bytes(&OTHER_SEED)
}

/// Signs `context || blake3(body)` with the fixed owner key, as the core does: lets a target
/// turn arbitrary body bytes into a correctly signed envelope.
fn sign_body(context: &[u8], body: &[u8]) -> (Bytes, Bytes) {
    let key = ed25519_dalek::SigningKey::from_bytes(&OWNER_SEED);
    let mut message = context.to_vec();
    message.extend_from_slice(blake3::hash(body).as_bytes());
    let signature = key.sign(&message);
    (
        Bytes::copy_from_slice(key.verifying_key().as_bytes()),
        Bytes::copy_from_slice(&signature.to_bytes()),
    )
}

/// An event envelope around `body`, signed by the fixed owner key.
pub fn event_envelope(body: Bytes) -> pb::SignedEvent {
    let (signer, signature) = sign_body(EVENT_SIGNING_CONTEXT, &body);
    pb::SignedEvent {
        body,
        signer,
        signature,
    }
}

/// A catalog entry envelope around `body`, signed by the fixed owner key.
pub fn entry_envelope(body: Bytes) -> pb::SignedCatalogEntry {
    let (signer, signature) = sign_body(CATALOG_SIGNING_CONTEXT, &body);
    pb::SignedCatalogEntry {
        body,
        signer,
        signature,
    }
}

/// Formats an error and its kind: error rendering runs on hostile input too.
pub fn exercise_error<E: std::fmt::Display>(error: &E, kind: &str) {
    assert!(!kind.is_empty(), "empty error kind for {error}");
    let _ = error.to_string();
}

// ---- events ---------------------------------------------------------------------------------

/// What decoding promises about an event body (`Event::check` and the types).
pub fn check_event_invariants(e: &Event, config: &Config) {
    assert!(e.seq >= 1, "decoded event with seq 0");
    assert_eq!(
        e.prev.is_none(),
        e.seq == 1,
        "prev must be absent exactly at seq 1 (seq {}, prev {:?})",
        e.seq,
        e.prev
    );
    assert!(!e.key.is_empty(), "decoded event with an empty key");
    assert!(e.key.len() <= config.key_bytes_max, "key over the limit");
    assert!(
        e.payload.len() <= config.payload_bytes_max,
        "payload over the limit"
    );
    if e.op == Operation::Delete {
        assert!(e.payload.is_empty(), "delete with a payload");
    }
    assert!(e.causes.len() <= config.causes_max, "too many causes");
    assert!(e.causes.iter().all(|c| c.seq >= 1), "cause with seq 0");
}

/// Checks a decoded (not yet verified) event against the bytes it came from.
pub fn check_decoded_event(input: &Bytes, signed: &SignedEvent, config: &Config) {
    check_event_invariants(signed.unverified(), config);
    // Limits are monotone: the default limits are all larger than the fuzzing ones.
    let under_default = SignedEvent::decode(input.clone(), &Config::default())
        .expect("event accepted under the fuzzing limits is refused under the default limits");
    assert_eq!(&under_default, signed, "decoding depends on the limits");
}

/// The properties of a verified event: its stored bytes are canonical, decode and verify again
/// to the same event under the same limits, and the chain rules treat it consistently.
pub fn check_verified_event(v: &VerifiedEvent, config: &Config) {
    check_event_invariants(v.event(), config);
    let encoded = v.encoded();
    assert!(
        encoded.len() <= config.event_bytes_max,
        "verified event's encoded form is {} bytes, over event_bytes_max {}: \
         SignedEvent::decode would refuse the bytes the node stores and forwards",
        encoded.len(),
        config.event_bytes_max
    );
    let again = SignedEvent::decode(encoded.clone(), config)
        .expect("encoded() of a verified event does not decode");
    assert_eq!(again.id(), v.id(), "re-decoded event has another id");
    assert_eq!(again.unverified(), v.event(), "re-decoded event differs");
    let again = again
        .verify()
        .expect("encoded() of a verified event does not verify");
    assert_eq!(&again, v, "re-decoded and re-verified event differs");
    assert_eq!(
        VerifiedEvent::decode_and_verify(encoded.clone(), config).as_ref(),
        Ok(v),
        "decode_and_verify disagrees with decode + verify"
    );

    // encoded() is canonical: prost re-encodes it to the very same bytes.
    let pb = pb::SignedEvent::decode(encoded.clone()).expect("encoded() is not protobuf");
    assert_eq!(
        pb.encode_to_vec(),
        encoded.as_ref(),
        "encoded() of a verified event is not the canonical encoding"
    );
    assert_eq!(
        blake3::hash(&pb.body).as_bytes(),
        v.id().as_bytes(),
        "id is not blake3(body)"
    );
    assert_eq!(
        pb.signer.as_ref(),
        v.product().owner().as_bytes(),
        "signer is not the owner"
    );

    // Chain rules.
    let head = LogHead::empty(v.product().clone());
    match head.validate_next(v) {
        Ok(()) => assert_eq!(v.seq(), 1, "empty head accepted seq {}", v.seq()),
        Err(ChainError::Gap { expected, got }) => {
            assert_eq!((expected, got), (1, v.seq()), "wrong gap");
            assert!(v.seq() > 1, "gap reported for seq 1");
        }
        Err(e) => panic!("empty head refused seq {} with {e}", v.seq()),
    }
    let at = LogHead::at(v);
    assert_eq!(
        at.validate_next(v),
        Err(ChainError::Replay {
            got: v.seq(),
            head: v.seq()
        }),
        "an event must be a replay of itself"
    );
    let r = v.to_ref();
    assert_eq!((&r.product, r.seq, r.id), (v.product(), v.seq(), v.id()));
    assert_eq!(
        ForkProof::new(v.clone(), v.clone()),
        Err(ProofError::Identical),
        "an event forks with itself"
    );
}

/// Checks a verified fork proof: well-ordered, about one position, each side a standalone
/// verified event, and encode + decode_and_verify is the identity.
pub fn check_fork_proof(proof: &ForkProof, config: &Config) {
    let (first, second) = proof.events();
    assert_eq!(first.product(), second.product(), "fork across products");
    assert_eq!(first.seq(), second.seq(), "fork across positions");
    assert!(
        first.id() < second.id(),
        "fork proof sides not ordered by id"
    );
    assert_eq!(proof.product(), first.product());
    assert_eq!(proof.seq(), first.seq());
    check_verified_event(first, config);
    check_verified_event(second, config);
    assert_eq!(
        ForkProof::new(second.clone(), first.clone()).as_ref(),
        Ok(proof),
        "ForkProof::new depends on argument order"
    );
    let encoded = proof.encode();
    let again = ForkProof::decode_and_verify(encoded, config)
        .expect("an encoded fork proof does not decode and verify");
    assert_eq!(&again, proof, "fork proof changed across encode + decode");
}

// ---- catalog entries ------------------------------------------------------------------------

const DURATION_MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn check_text(what: &str, text: &str, required: bool, max: usize) {
    assert_eq!(text, text.trim(), "{what} is not trimmed: {text:?}");
    if required {
        assert!(!text.is_empty(), "{what} is empty");
    }
    assert!(
        text.len() <= max,
        "{what} is {} bytes, over the limit of {max}: {text:?}",
        text.len()
    );
    assert!(
        !text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t'),
        "{what} has control characters: {text:?}"
    );
}

/// What a checked descriptor promises, whether it came from a file or from the wire.
pub fn check_descriptor_invariants(d: &Descriptor, config: &Config) {
    let short = config.short_text_bytes_max;
    let long = config.description_bytes_max;
    check_text("domain", &d.domain, true, short);
    check_text("owner", &d.owner, true, short);
    check_text("description", &d.description, true, long);
    assert!(d.tags.len() <= config.tags_max, "too many tags");
    for (i, tag) in d.tags.iter().enumerate() {
        check_text(&format!("tags[{i}]"), tag, true, short);
        assert_eq!(*tag, tag.to_lowercase(), "tag is not lower case");
        assert!(!d.tags[..i].contains(tag), "duplicate tag {tag:?}");
    }
    assert!(!d.fields.is_empty(), "schema without fields");
    assert!(d.fields.len() <= config.fields_max, "too many fields");
    for (i, f) in d.fields.iter().enumerate() {
        check_text(&format!("fields[{i}].name"), &f.name, true, short);
        check_text(
            &format!("fields[{i}].description"),
            &f.description,
            false,
            long,
        );
        let mut chars = f.name.chars();
        assert!(
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "field name {:?} is no identifier",
            f.name
        );
        assert!(
            !d.fields[..i]
                .iter()
                .any(|g| g.name.to_lowercase() == f.name.to_lowercase()),
            "duplicate field name {:?}",
            f.name
        );
    }
    assert!(
        d.output_ports.len() <= config.output_ports_max,
        "too many ports"
    );
    for (i, p) in d.output_ports.iter().enumerate() {
        check_text(&format!("output_ports[{i}].name"), &p.name, true, short);
        check_text(&format!("output_ports[{i}].format"), &p.format, true, short);
        check_text(
            &format!("output_ports[{i}].description"),
            &p.description,
            false,
            long,
        );
        assert!(
            !d.output_ports[..i].iter().any(|q| q.name == p.name),
            "duplicate port {:?}",
            p.name
        );
    }
    assert!(d.inputs.len() <= config.inputs_max, "too many inputs");
    for (i, input) in d.inputs.iter().enumerate() {
        assert!(!d.inputs[..i].contains(input), "duplicate input {input}");
    }
    for duration in [d.slo.freshness, d.slo.latency_p99].into_iter().flatten() {
        assert!(!duration.is_zero(), "zero SLO duration");
        assert!(duration <= DURATION_MAX, "SLO duration over 10 years");
        assert_eq!(
            duration.subsec_nanos() % 1_000_000,
            0,
            "SLO duration not whole milliseconds"
        );
    }
    if let AccessPolicy::Restricted { allowed } = &d.access {
        assert!(
            allowed.len() <= config.allowed_peers_max,
            "allow-list too long"
        );
        for (i, peer) in allowed.iter().enumerate() {
            assert!(!allowed[..i].contains(peer), "duplicate allowed peer");
        }
    }
}

/// What decoding promises about a catalog entry.
pub fn check_entry_invariants(e: &CatalogEntry, config: &Config) {
    assert!(e.revision >= 1, "decoded entry with revision 0");
    assert_eq!(
        &e.descriptor.name,
        e.product.name(),
        "descriptor name differs from the product name"
    );
    assert!(
        !e.descriptor.inputs.contains(&e.product),
        "product is its own input"
    );
    check_descriptor_invariants(&e.descriptor, config);
}

/// Checks a decoded (not yet verified) catalog entry against the bytes it came from.
pub fn check_decoded_entry(input: &Bytes, signed: &SignedCatalogEntry, config: &Config) {
    check_entry_invariants(signed.unverified(), config);
    let under_default = SignedCatalogEntry::decode(input.clone(), &Config::default())
        .expect("entry accepted under the fuzzing limits is refused under the default limits");
    assert_eq!(&under_default, signed, "decoding depends on the limits");
}

/// The properties of a verified catalog entry: canonical bytes that decode and verify again to
/// the same entry, and a merge rule that treats it as a duplicate of itself.
pub fn check_verified_entry(v: &VerifiedCatalogEntry, config: &Config) {
    check_entry_invariants(v.entry(), config);
    let encoded = v.encoded();
    assert!(
        encoded.len() <= config.catalog_entry_bytes_max,
        "verified entry's encoded form is {} bytes, over catalog_entry_bytes_max {}: \
         SignedCatalogEntry::decode would refuse the bytes the node stores and gossips",
        encoded.len(),
        config.catalog_entry_bytes_max
    );
    let again = SignedCatalogEntry::decode(encoded.clone(), config)
        .expect("encoded() of a verified entry does not decode");
    assert_eq!(again.id(), v.id(), "re-decoded entry has another id");
    assert_eq!(again.unverified(), v.entry(), "re-decoded entry differs");
    let again = again
        .verify()
        .expect("encoded() of a verified entry does not verify");
    assert_eq!(&again, v, "re-decoded and re-verified entry differs");
    assert_eq!(
        VerifiedCatalogEntry::decode_and_verify(encoded.clone(), config).as_ref(),
        Ok(v),
        "decode_and_verify disagrees with decode + verify"
    );

    let pb = pb::SignedCatalogEntry::decode(encoded.clone()).expect("encoded() is not protobuf");
    assert_eq!(
        pb.encode_to_vec(),
        encoded.as_ref(),
        "encoded() of a verified entry is not the canonical encoding"
    );
    assert_eq!(
        blake3::hash(&pb.body).as_bytes(),
        v.id().as_bytes(),
        "id is not blake3(body)"
    );
    assert_eq!(
        pb.signer.as_ref(),
        v.product().owner().as_bytes(),
        "signer is not the owner"
    );

    assert_eq!(merge(None, v), Merge::New);
    assert_eq!(
        merge(Some(v), v),
        Merge::Duplicate,
        "an entry is new to itself"
    );
    assert_eq!(
        EquivocationProof::new(v.clone(), v.clone()),
        Err(ProofError::Identical),
        "an entry equivocates with itself"
    );
}

/// Checks a verified equivocation proof: both sides are standalone verified entries of one
/// product and revision, merge finds the equivocation from either side and keeps the entry with
/// the smaller id, and encode + decode_and_verify is the identity.
pub fn check_equivocation_proof(proof: &EquivocationProof, config: &Config) {
    let encoded = proof.encode();
    let pb = pb::EquivocationProof::decode(encoded.clone()).expect("encode() is not protobuf");
    let side = |side: Option<pb::SignedCatalogEntry>| {
        let bytes = Bytes::from(side.expect("encode() left out a side").encode_to_vec());
        let entry = VerifiedCatalogEntry::decode_and_verify(bytes, config)
            .expect("a side of a verified equivocation proof is not a valid entry on its own");
        check_verified_entry(&entry, config);
        entry
    };
    let first = side(pb.first);
    let second = side(pb.second);
    assert_eq!(first.product(), second.product(), "across products");
    assert_eq!(first.revision(), second.revision(), "across revisions");
    assert!(first.id() < second.id(), "sides not ordered by id");
    assert_eq!(proof.product(), first.product());
    assert_eq!(proof.revision(), first.revision());
    // Whichever entry a node holds, merge finds this proof and settles on the smaller id.
    assert_eq!(
        merge(Some(&first), &second),
        Merge::Equivocation {
            proof: Box::new(proof.clone()),
            keep_incoming: false
        },
        "merge onto the smaller id"
    );
    assert_eq!(
        merge(Some(&second), &first),
        Merge::Equivocation {
            proof: Box::new(proof.clone()),
            keep_incoming: true
        },
        "merge onto the larger id"
    );
    let again = EquivocationProof::decode_and_verify(encoded, config)
        .expect("an encoded equivocation proof does not decode and verify");
    assert_eq!(&again, proof, "proof changed across encode + decode");
}

/// A descriptor accepted from a file or the wire must survive the wire: signed into a catalog
/// entry (by the fixed owner key, for a product of the descriptor's name) it must decode and
/// verify to the very same descriptor. This is the "one checking path" promise of the
/// descriptor module: what one node accepts, every node accepts.
pub fn check_descriptor_on_the_wire(d: &Descriptor, config: &Config) {
    let product = ProductId::new(owner_key().public(), d.name.clone());
    if d.inputs.contains(&product) {
        // Valid as a descriptor, but not as this product's: a product cannot be its own input.
        return;
    }
    let entry = CatalogEntry {
        product,
        revision: 1,
        timestamp_micros: 1,
        descriptor: d.clone(),
        consumes: Vec::new(),
    };
    let signed = match entry.sign(&owner_key(), config) {
        Ok(signed) => signed,
        // A descriptor file may be larger than one catalog entry: a separate, documented limit.
        Err(mesh_protocol::BuildError::Invalid(mesh_protocol::DecodeError::Oversized {
            what: "catalog entry",
            ..
        })) => return,
        Err(e) => panic!("a checked descriptor cannot be signed: {e}"),
    };
    let decoded =
        SignedCatalogEntry::decode(signed.encoded().clone(), config).unwrap_or_else(|e| {
            panic!("a descriptor accepted once is refused on the wire: {e}\ndescriptor: {d:#?}")
        });
    assert_eq!(
        &decoded.unverified().descriptor,
        d,
        "descriptor changed on the wire"
    );
    let verified = decoded
        .verify()
        .expect("freshly signed entry does not verify");
    check_verified_entry(&verified, config);
}

/// The example descriptor file of the protocol's documentation, for a product named `name`.
pub fn descriptor_yaml(name: &ProductName) -> String {
    format!(
        "name: {name}
domain: sales
owner: sales-data@example.com
description: Orders placed in the web shop.
tags: [orders, revenue]
version: 1.2.0
schema:
  fields:
    - name: order_id
      type: string
    - name: email
      type: string
      pii: true
output_ports:
  - name: changes
    kind: change-log
slo:
  freshness: 15m
  latency_p99: 500ms
access:
  visibility: public
"
    )
}

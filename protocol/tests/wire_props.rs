//! Property tests for every wire type: round trips, and corrupted bytes (bit flips, truncation)
//! give an error, never a panic, and never a different message that verifies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::{ORDERS_YAML, T0_MICROS, descriptor, key};
use mesh_protocol::descriptor::{OutputPort, PortKind, Slo};
use mesh_protocol::{
    AccessPolicy, CatalogEntry, Config, Descriptor, EquivocationProof, EventId, EventRef, Field,
    FieldType, ForkProof, LogHead, Operation, ProductId, ProductName, PublicKey, SignedEvent,
    VerifiedCatalogEntry, VerifiedEvent,
};
use proptest::prelude::*;
use std::time::Duration;

fn product_name() -> impl Strategy<Value = ProductName> {
    "[a-z0-9][a-z0-9._-]{0,63}".prop_map(|n| ProductName::new(n).unwrap())
}

fn product_id() -> impl Strategy<Value = ProductId> {
    (any::<[u8; 32]>(), product_name()).prop_map(|(seed, name)| {
        ProductId::new(mesh_protocol::SecretKey::from_bytes(&seed).public(), name)
    })
}

fn event_ref() -> impl Strategy<Value = EventRef> {
    (product_id(), 1..u64::MAX, any::<[u8; 32]>()).prop_map(|(product, seq, id)| EventRef {
        product,
        seq,
        id: EventId::from_bytes(id),
    })
}

/// A signed event with arbitrary position, key, payload and causes.
fn event() -> impl Strategy<Value = VerifiedEvent> {
    (
        any::<[u8; 32]>(),
        product_name(),
        1..u64::MAX,
        any::<[u8; 32]>(),
        any::<u64>(),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 1..64),
        proptest::collection::vec(any::<u8>(), 0..512),
        proptest::collection::vec(event_ref(), 0..4),
    )
        .prop_map(|(seed, name, seq, prev, ts, delete, k, payload, causes)| {
            let owner = mesh_protocol::SecretKey::from_bytes(&seed);
            let event = mesh_protocol::Event {
                product: ProductId::new(owner.public(), name),
                seq,
                prev: (seq > 1).then_some(EventId::from_bytes(prev)),
                timestamp_micros: ts,
                op: if delete {
                    Operation::Delete
                } else {
                    Operation::Upsert
                },
                key: Bytes::from(k),
                payload: if delete {
                    Bytes::new()
                } else {
                    Bytes::from(payload)
                },
                causes,
            };
            event.sign(&owner, &Config::default()).unwrap()
        })
}

fn field_type() -> impl Strategy<Value = FieldType> {
    proptest::sample::select(FieldType::ALL)
}

/// A valid descriptor with arbitrary tags, fields, inputs, SLOs and access policy.
fn descriptor_for(name: ProductName) -> impl Strategy<Value = Descriptor> {
    (
        proptest::collection::btree_set("[a-z][a-z0-9-]{0,15}", 0..6),
        proptest::collection::vec(
            (field_type(), any::<bool>(), any::<bool>(), "[ -~]{0,40}"),
            1..12,
        ),
        proptest::collection::vec(product_id(), 0..3),
        (0u64..=1_000_000_000, 0u64..=100_000),
        proptest::option::of(proptest::collection::vec(any::<[u8; 32]>(), 0..3)),
        (0u64..100, 0u64..100, 0u64..100),
    )
        .prop_map(
            move |(tags, fields, inputs, (freshness, latency), allowed, (ma, mi, pa))| {
                let mut d = descriptor(ORDERS_YAML);
                d.name = name.clone();
                d.tags = tags.into_iter().collect();
                d.version = semver::Version::new(ma, mi, pa);
                d.fields = fields
                    .into_iter()
                    .enumerate()
                    .map(|(i, (field_type, pii, nullable, description))| Field {
                        name: format!("f_{i}"),
                        field_type,
                        pii,
                        nullable,
                        description: description.trim().to_owned(),
                    })
                    .collect();
                let mut unique_inputs = Vec::new();
                for input in inputs {
                    if !unique_inputs.contains(&input) {
                        unique_inputs.push(input);
                    }
                }
                d.inputs = unique_inputs;
                d.output_ports = vec![OutputPort {
                    name: "snapshots".into(),
                    kind: PortKind::Snapshot,
                    format: "parquet".into(),
                    description: String::new(),
                }];
                d.slo = Slo {
                    freshness: (freshness > 0).then(|| Duration::from_millis(freshness)),
                    latency_p99: (latency > 0).then(|| Duration::from_millis(latency)),
                };
                d.access = match allowed {
                    None => AccessPolicy::Public,
                    Some(seeds) => {
                        let mut allowed: Vec<PublicKey> = Vec::new();
                        for s in seeds {
                            let k = mesh_protocol::SecretKey::from_bytes(&s).public();
                            if !allowed.contains(&k) {
                                allowed.push(k);
                            }
                        }
                        AccessPolicy::Restricted { allowed }
                    }
                };
                d
            },
        )
}

fn catalog_entry() -> impl Strategy<Value = VerifiedCatalogEntry> {
    let consumed = prop::collection::vec((any::<[u8; 32]>(), product_name()), 0..4);
    (any::<[u8; 32]>(), product_name(), 1..u64::MAX, consumed)
        .prop_flat_map(|(seed, name, revision, consumed)| {
            descriptor_for(name.clone())
                .prop_map(move |d| (seed, name.clone(), revision, d, consumed.clone()))
        })
        .prop_map(|(seed, name, revision, descriptor, consumed)| {
            let owner = mesh_protocol::SecretKey::from_bytes(&seed);
            let product = ProductId::new(owner.public(), name);
            let mut consumes: Vec<ProductId> = consumed
                .into_iter()
                .map(|(s, n)| ProductId::new(mesh_protocol::SecretKey::from_bytes(&s).public(), n))
                .filter(|p| p != &product)
                .collect();
            consumes.sort();
            consumes.dedup();
            CatalogEntry {
                product,
                revision,
                timestamp_micros: T0_MICROS,
                descriptor,
                consumes,
            }
            .sign(&owner, &Config::default())
            .unwrap()
        })
}

fn flip(bytes: &Bytes, bit: usize) -> Bytes {
    let mut v = bytes.to_vec();
    let bit = bit % (v.len() * 8);
    v[bit / 8] ^= 1 << (bit % 8);
    Bytes::from(v)
}

fn decode_event(bytes: Bytes) -> Option<VerifiedEvent> {
    SignedEvent::decode(bytes, &Config::default())
        .ok()?
        .verify()
        .ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn event_round_trips(event in event()) {
        let back = decode_event(event.encoded().clone()).expect("a signed event verifies");
        prop_assert_eq!(back.id(), event.id());
        prop_assert_eq!(back.event(), event.event());
        prop_assert_eq!(back.encoded(), event.encoded());
    }

    #[test]
    fn flipped_event_bits_never_verify_as_another_event(event in event(), bit in any::<usize>()) {
        if let Some(back) = decode_event(flip(event.encoded(), bit)) {
            prop_assert_eq!(back.id(), event.id());
            prop_assert_eq!(back.event(), event.event());
        }
    }

    #[test]
    fn truncated_events_are_errors(event in event(), cut in any::<prop::sample::Index>()) {
        let len = cut.index(event.encoded().len());
        let result = SignedEvent::decode(event.encoded().slice(..len), &Config::default());
        prop_assert!(result.is_err(), "a strict prefix of {} bytes decoded", len);
    }

    #[test]
    fn arbitrary_bytes_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = SignedEvent::decode(Bytes::from(bytes.clone()), &Config::default()).map(|e| e.verify());
        let _ = VerifiedCatalogEntry::decode_and_verify(Bytes::from(bytes.clone()), &Config::default());
        let _ = ForkProof::decode_and_verify(Bytes::from(bytes.clone()), &Config::default());
        let _ = EquivocationProof::decode_and_verify(Bytes::from(bytes), &Config::default());
    }

    #[test]
    fn catalog_entry_round_trips(entry in catalog_entry()) {
        let back = VerifiedCatalogEntry::decode_and_verify(entry.encoded().clone(), &Config::default())
            .expect("a signed entry verifies");
        prop_assert_eq!(back.id(), entry.id());
        prop_assert_eq!(back.entry(), entry.entry());
    }

    #[test]
    fn flipped_entry_bits_never_verify_as_another_entry(entry in catalog_entry(), bit in any::<usize>()) {
        let result = VerifiedCatalogEntry::decode_and_verify(flip(entry.encoded(), bit), &Config::default());
        if let Ok(back) = result {
            prop_assert_eq!(back.id(), entry.id());
            prop_assert_eq!(back.entry(), entry.entry());
        }
    }

    #[test]
    fn truncated_entries_are_errors(entry in catalog_entry(), cut in any::<prop::sample::Index>()) {
        let len = cut.index(entry.encoded().len());
        let result = VerifiedCatalogEntry::decode_and_verify(entry.encoded().slice(..len), &Config::default());
        prop_assert!(result.is_err());
    }

    #[test]
    fn fork_proofs_round_trip_and_resist_corruption(
        seed in any::<[u8; 32]>(),
        a in proptest::collection::vec(any::<u8>(), 0..64),
        b in proptest::collection::vec(any::<u8>(), 0..64),
        bit in any::<usize>(),
    ) {
        prop_assume!(a != b);
        let owner = mesh_protocol::SecretKey::from_bytes(&seed);
        let head = LogHead::empty(ProductId::new(owner.public(), ProductName::new("p").unwrap()));
        let sign = |payload: Vec<u8>| head
            .next_event(T0_MICROS, Operation::Upsert, Bytes::from("k"), Bytes::from(payload), vec![])
            .sign(&owner, &Config::default())
            .unwrap();
        let proof = ForkProof::new(sign(a), sign(b)).unwrap();
        let bytes = proof.encode();
        prop_assert_eq!(&ForkProof::decode_and_verify(bytes.clone(), &Config::default()).unwrap(), &proof);
        if let Ok(back) = ForkProof::decode_and_verify(flip(&bytes, bit), &Config::default()) {
            prop_assert_eq!(back, proof);
        }
        let cut = bit % bytes.len();
        prop_assert!(ForkProof::decode_and_verify(bytes.slice(..cut), &Config::default()).is_err());
    }

    #[test]
    fn product_ids_round_trip_through_strings(id in product_id()) {
        let text = id.to_string();
        prop_assert_eq!(text.parse::<ProductId>().unwrap(), id.clone());
        assert_needs_no_quoting(&text);
    }

    #[test]
    fn event_ids_round_trip_through_hex(bytes in any::<[u8; 32]>()) {
        let id = EventId::from_bytes(bytes);
        prop_assert_eq!(id.to_string().parse::<EventId>().unwrap(), id);
    }

    #[test]
    fn arbitrary_id_strings_do_not_panic(text in "\\PC{0,120}") {
        let _ = text.parse::<ProductId>();
        let _ = text.parse::<PublicKey>();
        let _ = text.parse::<EventId>();
    }

    #[test]
    fn arbitrary_yaml_does_not_panic(text in "[ -~\\n]{0,400}") {
        let _ = Descriptor::from_yaml(&text, &Config::default());
    }
}

/// Product ids are meant to be pasted into YAML and URLs: the string form has no characters
/// that need quoting in either.
fn assert_needs_no_quoting(text: &str) {
    assert!(
        text.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c)),
        "{text}"
    );
}

#[test]
fn equivocation_proofs_round_trip() {
    let owner = key(1);
    let a = common::entry(&owner, 2, "first");
    let b = common::entry(&owner, 2, "second");
    let proof = EquivocationProof::new(a, b).unwrap();
    let back = EquivocationProof::decode_and_verify(proof.encode(), &Config::default()).unwrap();
    assert_eq!(back, proof);
    for cut in 0..proof.encode().len() {
        assert!(
            EquivocationProof::decode_and_verify(proof.encode().slice(..cut), &Config::default())
                .is_err()
        );
    }
}

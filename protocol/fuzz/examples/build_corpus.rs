//! Writes the seed corpora of the fuzz targets to `fuzz/corpus/<target>/`.
//!
//! Random bytes almost never get past protobuf decoding, let alone a signature check, so every
//! target starts from valid messages made with the public API of `mesh-protocol` (signed with
//! the fixed fuzzing keys, under the fuzzing limits), plus a few deliberate near-misses: a bad
//! signature, a wrong author, an unusable key, non-canonical envelopes, and signatures with
//! unusual `R`/`s` values such as a malicious owner can make with its own key.
//!
//! Run from `protocol/fuzz`: `cargo run --example build_corpus` (optionally with an output
//! directory; default `corpus/` next to this crate's `Cargo.toml`). Existing files of the same
//! name are overwritten; nothing else is removed.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use curve25519_dalek::constants::EIGHT_TORSION;
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use mesh_protocol::wire::pb;
use mesh_protocol::{
    CatalogEntry, Descriptor, EVENT_SIGNING_CONTEXT, EquivocationProof, EventId, EventRef,
    ForkProof, LogHead, Operation, ProductId, ProductName, SecretKey, VerifiedCatalogEntry,
    VerifiedEvent,
};
use mesh_protocol_fuzz::{
    BATCH_SEPARATOR, OWNER_SEED, config, descriptor_yaml, other_key, owner_key,
};
use prost::Message;
use sha2::{Digest, Sha512};

const T0_MICROS: u64 = 1_763_700_000_000_000;

struct Corpus {
    root: PathBuf,
    written: usize,
}

impl Corpus {
    fn write(&mut self, target: &str, name: &str, bytes: impl AsRef<[u8]>) {
        let dir = self.root.join(target);
        fs::create_dir_all(&dir).expect("create the corpus directory");
        fs::write(dir.join(name), bytes).expect("write a seed");
        self.written += 1;
    }
}

fn product(key: &SecretKey, name: &str) -> ProductId {
    ProductId::new(key.public(), ProductName::new(name).expect("valid name"))
}

fn sign_event(
    key: &SecretKey,
    head: &LogHead,
    micros: u64,
    op: Operation,
    record: &[u8],
    payload: &[u8],
    causes: Vec<EventRef>,
) -> VerifiedEvent {
    head.next_event(
        micros,
        op,
        Bytes::copy_from_slice(record),
        Bytes::copy_from_slice(payload),
        causes,
    )
    .sign(key, &config())
    .expect("a valid event")
}

/// A log of `payloads.len()` upserts.
fn log(key: &SecretKey, product: &ProductId, payloads: &[&str]) -> Vec<VerifiedEvent> {
    let mut head = LogHead::empty(product.clone());
    payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| {
            let event = sign_event(
                key,
                &head,
                T0_MICROS + i as u64,
                Operation::Upsert,
                format!("key-{i}").as_bytes(),
                payload.as_bytes(),
                vec![],
            );
            head.advance(&event).expect("extends the log");
            event
        })
        .collect()
}

fn envelope(event: &VerifiedEvent) -> pb::SignedEvent {
    pb::SignedEvent::decode(event.encoded().clone()).expect("protobuf")
}

fn entry_envelope(entry: &VerifiedCatalogEntry) -> pb::SignedCatalogEntry {
    pb::SignedCatalogEntry::decode(entry.encoded().clone()).expect("protobuf")
}

fn entry(
    key: &SecretKey,
    product: &ProductId,
    revision: u64,
    micros: u64,
    yaml: &str,
) -> VerifiedCatalogEntry {
    let config = config();
    let descriptor = Descriptor::from_yaml(yaml, &config)
        .unwrap_or_else(|e| panic!("seed descriptor is invalid: {e}\n{yaml}"));
    CatalogEntry {
        product: product.clone(),
        revision,
        timestamp_micros: micros,
        descriptor,
        consumes: Vec::new(),
    }
    .sign(key, &config)
    .expect("a valid catalog entry")
}

// ---- signatures with unusual R and s ----------------------------------------------------------

/// An ed25519 signature by the fixed owner key of `context || blake3(body)` with a chosen `R`
/// (given as bytes, which need not be a canonical encoding) and `s = nonce + k * a`, where
/// `k = SHA-512(R || A || M)`. With `nonce` the discrete log of the prime-order part of `R`, the
/// signature satisfies the group equation up to the small-order part of `R`.
fn sign_with_r(context: &[u8], body: &[u8], r_bytes: [u8; 32], nonce: Scalar) -> [u8; 64] {
    let key = ed25519_dalek::SigningKey::from_bytes(&OWNER_SEED);
    let a = key.to_scalar();
    let mut message = context.to_vec();
    message.extend_from_slice(blake3::hash(body).as_bytes());
    let mut h = Sha512::new();
    h.update(r_bytes);
    h.update(key.verifying_key().as_bytes());
    h.update(&message);
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    let s = nonce + k * a;
    let mut signature = [0u8; 64];
    signature[..32].copy_from_slice(&r_bytes);
    signature[32..].copy_from_slice(s.as_bytes());
    signature
}

/// The identity point (0, 1) encoded with y = p + 1 instead of 1: a non-canonical encoding
/// that decompresses to the identity.
const NON_CANONICAL_IDENTITY: [u8; 32] = {
    let mut bytes = [0xff; 32];
    bytes[0] = 0xee;
    bytes[31] = 0x7f;
    bytes
};

fn nonce(tag: &[u8], body: &[u8]) -> Scalar {
    let mut h = Sha512::new();
    h.update(b"mesh-protocol-fuzz nonce");
    h.update(tag);
    h.update(body);
    Scalar::from_bytes_mod_order_wide(&h.finalize().into())
}

/// Re-signs an event's body with unusual signatures, each named.
fn unusual_signatures(event: &VerifiedEvent) -> Vec<(String, Bytes)> {
    let env = envelope(event);
    let body = env.body.clone();
    let with = |signature: [u8; 64]| {
        Bytes::from(
            pb::SignedEvent {
                signature: Bytes::copy_from_slice(&signature),
                ..env.clone()
            }
            .encode_to_vec(),
        )
    };
    let mut out = Vec::new();
    // R = identity, canonically encoded, s = k*a: valid under the cofactorless equation.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    out.push((
        "r-identity".to_owned(),
        with(sign_with_r(
            EVENT_SIGNING_CONTEXT,
            &body,
            identity,
            Scalar::ZERO,
        )),
    ));
    // R = identity with a non-canonical encoding.
    out.push((
        "r-identity-non-canonical".to_owned(),
        with(sign_with_r(
            EVENT_SIGNING_CONTEXT,
            &body,
            NON_CANONICAL_IDENTITY,
            Scalar::ZERO,
        )),
    ));
    // R = r*B + T for each non-trivial torsion point T: off by a small-order point.
    for (i, torsion) in EIGHT_TORSION.iter().enumerate().skip(1) {
        let r = nonce(&[i as u8], &body);
        let point: EdwardsPoint = EdwardsPoint::mul_base(&r) + torsion;
        out.push((
            format!("r-plus-torsion-{i}"),
            with(sign_with_r(
                EVENT_SIGNING_CONTEXT,
                &body,
                point.compress().to_bytes(),
                r,
            )),
        ));
    }
    // R = a small-order point alone.
    for (i, torsion) in EIGHT_TORSION.iter().enumerate().skip(1) {
        out.push((
            format!("r-small-order-{i}"),
            with(sign_with_r(
                EVENT_SIGNING_CONTEXT,
                &body,
                torsion.compress().to_bytes(),
                Scalar::ZERO,
            )),
        ));
    }
    // A valid signature with s + l instead of s (malleated, non-canonical s).
    let r = nonce(b"s", &body);
    let mut signature = sign_with_r(
        EVENT_SIGNING_CONTEXT,
        &body,
        EdwardsPoint::mul_base(&r).compress().to_bytes(),
        r,
    );
    add_group_order(&mut signature[32..]);
    out.push(("s-plus-l".to_owned(), with(signature)));
    out
}

/// Adds the group order l to a little-endian 256-bit number (s < l < 2^253, so no overflow).
fn add_group_order(s: &mut [u8]) {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for (byte, l) in s.iter_mut().zip(L) {
        let sum = u16::from(*byte) + u16::from(l) + carry;
        *byte = sum as u8;
        carry = sum >> 8;
    }
}

// ---- descriptors ------------------------------------------------------------------------------

fn restricted_yaml(allowed: &[String], inputs: &[String]) -> String {
    let list = |items: &[String]| {
        items
            .iter()
            .map(|i| format!("    - {i}\n"))
            .collect::<String>()
    };
    format!(
        "name: orders
domain: sales
owner: sales-data@example.com
description: |
  Orders placed in the web shop,
  one record per order id.
tags: [Orders, revenue, eu]
version: 2.0.0-rc.1+build.7
schema:
  fields:
    - name: order_id
      type: string
      description: Order number.
    - name: email
      type: string
      pii: true
      nullable: true
    - name: total
      type: decimal
    - name: placed_at
      type: timestamp
output_ports:
  - name: changes
    kind: change-log
    format: json
  - name: daily
    kind: snapshot
    format: parquet
    description: One file a day.
inputs:
{}slo:
  freshness: 1h 30m
  latency_p99: 1s 250ms
access:
  visibility: restricted
  allowed:
{}",
        list(inputs).replace("    - ", "  - "),
        list(allowed)
    )
}

const MINIMAL_YAML: &str = "\
name: customers
domain: crm
owner: crm-team
description: Customers.
version: 0.1.0
schema:
  fields:
    - name: id
      type: int
";

/// Every count at the fuzzing limit.
fn maxed_yaml(inputs: &[String], allowed: &[String]) -> String {
    let mut yaml = String::from(
        "name: customers
domain: crm
owner: crm-team@example.com
description: Every customer, with every type of field.
tags: [a, b, c, d]
version: 10.20.30
schema:
  fields:
",
    );
    for (i, t) in [
        "string",
        "int",
        "float",
        "bool",
        "decimal",
        "date",
        "timestamp",
        "bytes",
    ]
    .iter()
    .enumerate()
    {
        yaml.push_str(&format!("    - name: f_{i}\n      type: {t}\n"));
    }
    yaml.push_str(
        "output_ports:
  - name: a
    kind: change-log
  - name: b
    kind: snapshot
  - name: c
    kind: change-log
    format: avro
inputs:
",
    );
    for input in inputs {
        yaml.push_str(&format!("  - {input}\n"));
    }
    yaml.push_str("slo:\n  freshness: 3650days\n  latency_p99: 1ms\naccess:\n  visibility: restricted\n  allowed:\n");
    for peer in allowed {
        yaml.push_str(&format!("    - {peer}\n"));
    }
    yaml
}

fn main() {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let mut corpus = Corpus { root, written: 0 };
    let config = config();
    let owner = owner_key();
    let other = other_key();
    let orders = product(&owner, "orders");
    let clicks = product(&other, "clicks");
    let long_name = "a".repeat(64);
    let long = product(&other, &long_name);

    // ---- events
    let clicks_log = log(
        &other,
        &clicks,
        &["{\"page\":\"/\"}", "{\"page\":\"/cart\"}"],
    );
    let long_log = log(&other, &long, &["x"]);
    let mut head = LogHead::empty(orders.clone());
    let mut orders_log = Vec::new();
    let mut push = |event: VerifiedEvent, head: &mut LogHead| {
        head.advance(&event).expect("extends the log");
        orders_log.push(event);
    };
    push(
        sign_event(
            &owner,
            &head,
            T0_MICROS,
            Operation::Upsert,
            b"o-1",
            b"{\"total\":12}",
            vec![],
        ),
        &mut head,
    );
    push(
        sign_event(
            &owner,
            &head,
            T0_MICROS + 1,
            Operation::Upsert,
            b"o-2",
            b"{\"total\":30}",
            vec![],
        ),
        &mut head,
    );
    push(
        sign_event(
            &owner,
            &head,
            T0_MICROS + 2,
            Operation::Delete,
            b"o-1",
            b"",
            vec![],
        ),
        &mut head,
    );
    push(
        sign_event(
            &owner,
            &head,
            T0_MICROS + 3,
            Operation::Upsert,
            b"o-3",
            b"{\"total\":7}",
            clicks_log.iter().map(VerifiedEvent::to_ref).collect(),
        ),
        &mut head,
    );
    // Every size at its limit: 64-byte key, 512-byte payload, 4 causes with 64-byte names.
    let max_causes = vec![long_log[0].to_ref(); config.causes_max]
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            r.seq = u64::MAX - i as u64;
            r.id = EventId::from_bytes([i as u8; 32]);
            r
        })
        .collect();
    push(
        sign_event(
            &owner,
            &head,
            u64::MAX,
            Operation::Upsert,
            &[0xab; 64],
            &[b'p'; 512],
            max_causes,
        ),
        &mut head,
    );
    let mut all_events: Vec<(String, VerifiedEvent)> = Vec::new();
    for (i, e) in orders_log.iter().enumerate() {
        all_events.push((format!("orders-{}", i + 1), e.clone()));
    }
    for (i, e) in clicks_log.iter().enumerate() {
        all_events.push((format!("clicks-{}", i + 1), e.clone()));
    }
    all_events.push(("long-name-1".into(), long_log[0].clone()));

    // Forks: a second event at seq 1 and at seq 3 of `orders`.
    let fork1 = sign_event(
        &owner,
        &LogHead::empty(orders.clone()),
        T0_MICROS + 100,
        Operation::Upsert,
        b"o-1",
        b"{\"total\":13}",
        vec![],
    );
    let fork3 = sign_event(
        &owner,
        &LogHead::at(&orders_log[1]),
        T0_MICROS + 101,
        Operation::Upsert,
        b"o-1",
        b"{\"total\":99}",
        vec![],
    );
    all_events.push(("orders-1-fork".into(), fork1.clone()));
    all_events.push(("orders-3-fork".into(), fork3.clone()));

    for (name, event) in &all_events {
        corpus.write("signed_event", name, event.encoded());
        corpus.write("event_body", name, envelope(event).body);
    }
    // A body with a field this version does not know (kept: it is signed).
    let mut unknown = envelope(&orders_log[0]).body.to_vec();
    unknown.extend_from_slice(&[0x7a, 0x03, b'n', b'e', b'w']);
    corpus.write("event_body", "orders-1-unknown-field", &unknown);

    // Near-misses, to give the fuzzer the error paths after decoding.
    let base = envelope(&orders_log[1]);
    let mut near: Vec<(String, Bytes)> = Vec::new();
    let mut bad_sig = base.signature.to_vec();
    bad_sig[10] ^= 1;
    near.push((
        "bad-signature".into(),
        Bytes::from(
            pb::SignedEvent {
                signature: Bytes::from(bad_sig),
                ..base.clone()
            }
            .encode_to_vec(),
        ),
    ));
    near.push((
        "wrong-author".into(),
        Bytes::from(
            pb::SignedEvent {
                signer: Bytes::copy_from_slice(other.public().as_bytes()),
                ..base.clone()
            }
            .encode_to_vec(),
        ),
    ));
    // Owner and signer both a small-order point (a weak key).
    let mut weak = [0u8; 32];
    weak[0] = 1;
    let mut weak_body = pb::EventBody::decode(base.body.clone()).expect("protobuf");
    if let Some(p) = weak_body.product.as_mut() {
        p.owner = Bytes::copy_from_slice(&weak);
    }
    near.push((
        "weak-key".into(),
        Bytes::from(
            pb::SignedEvent {
                body: Bytes::from(weak_body.encode_to_vec()),
                signer: Bytes::copy_from_slice(&weak),
                ..base.clone()
            }
            .encode_to_vec(),
        ),
    ));
    // An unknown envelope field: decodes, and encoded() drops it.
    let mut with_unknown = orders_log[1].encoded().to_vec();
    with_unknown.extend_from_slice(&[0x22, 0x02, 0xca, 0xfe]);
    near.push(("envelope-unknown-field".into(), Bytes::from(with_unknown)));
    // The three envelope fields in reverse order: the same message, not prost's encoding.
    let mut reversed = Vec::new();
    prost::encoding::bytes::encode(3, &base.signature, &mut reversed);
    prost::encoding::bytes::encode(2, &base.signer, &mut reversed);
    prost::encoding::bytes::encode(1, &base.body, &mut reversed);
    near.push(("envelope-fields-reversed".into(), Bytes::from(reversed)));
    for (name, bytes) in unusual_signatures(&orders_log[0]) {
        near.push((format!("sig-{name}"), bytes));
    }
    for (name, bytes) in &near {
        corpus.write("signed_event", name, bytes);
    }

    // Batches: good logs, and good events mixed with every kind of near-miss.
    let sep = |parts: &[Bytes]| parts.join(BATCH_SEPARATOR);
    let encoded = |events: &[VerifiedEvent]| {
        events
            .iter()
            .map(|e| e.encoded().clone())
            .collect::<Vec<_>>()
    };
    corpus.write("batch_verify", "orders-log", sep(&encoded(&orders_log)));
    corpus.write(
        "batch_verify",
        "two-owners",
        sep(&[
            orders_log[0].encoded().clone(),
            clicks_log[0].encoded().clone(),
            orders_log[1].encoded().clone(),
            clicks_log[1].encoded().clone(),
        ]),
    );
    for (name, bytes) in &near {
        corpus.write(
            "batch_verify",
            &format!("mixed-{name}"),
            sep(&[
                orders_log[0].encoded().clone(),
                bytes.clone(),
                clicks_log[0].encoded().clone(),
            ]),
        );
        corpus.write("batch_verify", &format!("alone-{name}"), bytes);
    }

    // ---- fork proofs
    let proof1 = ForkProof::new(orders_log[0].clone(), fork1.clone()).expect("a fork");
    let proof3 = ForkProof::new(orders_log[2].clone(), fork3.clone()).expect("a fork");
    corpus.write("fork_proof", "orders-seq-1", proof1.encode());
    corpus.write("fork_proof", "orders-seq-3", proof3.encode());
    // Not proofs: the same event twice, two positions, two products.
    let not_proof = |a: &VerifiedEvent, b: &VerifiedEvent| {
        pb::ForkProof {
            first: Some(envelope(a)),
            second: Some(envelope(b)),
        }
        .encode_to_vec()
    };
    corpus.write(
        "fork_proof",
        "identical",
        not_proof(&orders_log[0], &orders_log[0]),
    );
    corpus.write(
        "fork_proof",
        "two-positions",
        not_proof(&orders_log[0], &orders_log[1]),
    );
    corpus.write(
        "fork_proof",
        "two-products",
        not_proof(&orders_log[0], &clicks_log[0]),
    );
    corpus.write(
        "fork_proof",
        "largest-events",
        not_proof(&orders_log[4], &orders_log[4]),
    );

    // ---- descriptors and catalog entries
    let peers: Vec<String> = (1..=4u8)
        .map(|i| SecretKey::from_bytes(&[i; 32]).public().to_string())
        .collect();
    let inputs: Vec<String> = vec![
        clicks.to_string(),
        long.to_string(),
        product(&other, "sessions").to_string(),
        product(&owner, "customers").to_string(),
    ];
    let orders_yaml = descriptor_yaml(orders.name());
    let restricted = restricted_yaml(&peers[..2], &inputs[..2]);
    let maxed = maxed_yaml(&inputs[..3], &peers);
    let yamls: Vec<(&str, String)> = vec![
        ("orders", orders_yaml.clone()),
        ("orders-restricted", restricted.clone()),
        ("customers-minimal", MINIMAL_YAML.to_owned()),
        ("customers-maxed", maxed.clone()),
        (
            "errors",
            "name: Orders!\ndomain: ''\nowner: x\ndescription: d\ntags: [a, A]\nversion: 1.0\n\
             schema:\n  fields:\n    - name: 1id\n      type: uuid\n    - name: x\n      type: int\n    - name: X\n      type: int\n\
             slo:\n  freshness: 0s\n  latency_p99: 1.5ms\naccess:\n  visibility: restricted\n  allowed: [nope]\n"
                .to_owned(),
        ),
        (
            "unknown-field",
            orders_yaml.replace("domain: sales", "domain: sales\ntaggs: [x]"),
        ),
        (
            "anchors",
            "name: &n orders\ndomain: *n\nowner: *n\ndescription: *n\nversion: 1.0.0\n\
             schema:\n  fields: &f\n    - name: id\n      type: string\n"
                .to_owned(),
        ),
        (
            "flow-style",
            "{name: orders, domain: sales, owner: o, description: \"d\\tx\", version: 1.0.0, \
             schema: {fields: [{name: id, type: json, nullable: true}]}, access: {visibility: public}}\n"
                .to_owned(),
        ),
    ];
    for (name, yaml) in &yamls {
        corpus.write("descriptor_yaml", name, yaml);
    }

    let customers = product(&owner, "customers");
    let entries: Vec<(&str, VerifiedCatalogEntry)> = vec![
        (
            "orders-1",
            entry(&owner, &orders, 1, T0_MICROS, &orders_yaml),
        ),
        (
            "orders-2",
            entry(&owner, &orders, 2, T0_MICROS + 1, &restricted),
        ),
        (
            "orders-2-equivocation",
            entry(&owner, &orders, 2, T0_MICROS + 2, &orders_yaml),
        ),
        (
            "customers-minimal",
            entry(&owner, &customers, 1, T0_MICROS, MINIMAL_YAML),
        ),
        (
            "customers-maxed",
            entry(&owner, &customers, u64::MAX, u64::MAX, &maxed),
        ),
        (
            "clicks",
            entry(
                &other,
                &clicks,
                7,
                T0_MICROS,
                &descriptor_yaml(clicks.name()),
            ),
        ),
    ];
    for (name, e) in &entries {
        corpus.write("catalog_entry", name, e.encoded());
        corpus.write("catalog_body", name, entry_envelope(e).body);
    }
    let mut bad = entry_envelope(&entries[0].1);
    let mut signature = bad.signature.to_vec();
    signature[0] ^= 0x80;
    bad.signature = Bytes::from(signature);
    corpus.write("catalog_entry", "bad-signature", bad.encode_to_vec());
    let wrong = pb::SignedCatalogEntry {
        signer: Bytes::copy_from_slice(other.public().as_bytes()),
        ..entry_envelope(&entries[0].1)
    };
    corpus.write("catalog_entry", "wrong-author", wrong.encode_to_vec());

    let equivocation =
        EquivocationProof::new(entries[1].1.clone(), entries[2].1.clone()).expect("equivocation");
    corpus.write("equivocation_proof", "orders-2", equivocation.encode());
    let pair = |a: &VerifiedCatalogEntry, b: &VerifiedCatalogEntry| {
        pb::EquivocationProof {
            first: Some(entry_envelope(a)),
            second: Some(entry_envelope(b)),
        }
        .encode_to_vec()
    };
    corpus.write(
        "equivocation_proof",
        "identical",
        pair(&entries[0].1, &entries[0].1),
    );
    corpus.write(
        "equivocation_proof",
        "two-revisions",
        pair(&entries[0].1, &entries[1].1),
    );
    corpus.write(
        "equivocation_proof",
        "two-products",
        pair(&entries[3].1, &entries[5].1),
    );
    corpus.write(
        "equivocation_proof",
        "largest-entries",
        pair(&entries[4].1, &entries[4].1),
    );

    // ---- ids
    let event_id = orders_log[0].id().to_string();
    let ids = [
        ("product-id", orders.to_string()),
        ("product-id-long-name", long.to_string()),
        ("peer-id", owner.public().to_string()),
        ("peer-id-other", other.public().to_string()),
        ("event-id", event_id.clone()),
        ("event-id-upper", event_id.to_uppercase()),
        ("product-name", "orders.v2_eu-west".to_owned()),
        ("bad-product-id", "Orders@12D3KooW".to_owned()),
        ("weak-peer-id", {
            let mut weak = [0u8; 32];
            weak[0] = 1;
            let bytes = mesh_protocol::PublicKey::from_bytes(&weak)
                .expect("32 bytes")
                .to_peer_id_bytes();
            bs58_encode(&bytes)
        }),
    ];
    for (name, text) in &ids {
        corpus.write("ids", name, text);
    }

    // ---- sync messages: one byte picks the message (see fuzz_targets/sync_messages.rs)
    {
        use mesh_protocol::sync::{
            BucketResponse, CatalogSummary, CatalogSyncRequest, LogFrame, Refusal,
            SubscribeRequest, SubscribeResponse,
        };
        let mut summary = CatalogSummary::new();
        for (_, e) in &entries {
            summary.insert(e);
        }
        let bucket = summary.differing_buckets(&CatalogSummary::new().digest())[0];
        let sync: Vec<(&str, u8, Bytes)> = vec![
            ("digest", 0, summary.digest().encode()),
            (
                "digest-request",
                1,
                CatalogSyncRequest::Digest { root: None }.encode(),
            ),
            (
                "digest-request-root",
                1,
                CatalogSyncRequest::Digest {
                    root: Some(summary.root()),
                }
                .encode(),
            ),
            (
                "digest-same",
                0,
                mesh_protocol::sync::CatalogDigest::same().encode(),
            ),
            (
                "bucket-request",
                1,
                CatalogSyncRequest::Bucket {
                    bucket,
                    have: summary.versions_in(bucket),
                }
                .encode(),
            ),
            (
                "bucket-response",
                2,
                BucketResponse {
                    entries: entries.iter().map(|(_, e)| e.encoded().clone()).collect(),
                    more: true,
                }
                .encode(),
            ),
            (
                "subscribe-request",
                3,
                SubscribeRequest {
                    product: orders.clone(),
                    from_seq: 2,
                }
                .encode(),
            ),
            (
                "subscribe-refused",
                4,
                SubscribeResponse {
                    refusal: Some(Refusal::AccessDenied),
                    head_seq: 0,
                }
                .encode(),
            ),
            (
                "subscribe-accepted",
                4,
                SubscribeResponse {
                    refusal: None,
                    head_seq: 3,
                }
                .encode(),
            ),
            (
                "log-frame",
                5,
                LogFrame {
                    events: orders_log.iter().map(|e| e.encoded().clone()).collect(),
                    fork: Some(proof3.encode()),
                }
                .encode(),
            ),
        ];
        for (name, which, bytes) in sync {
            let mut input = vec![which];
            input.extend_from_slice(&bytes);
            corpus.write("sync_messages", name, input);
        }
    }

    // ---- reproducers of findings no seed reaches (see README.md), written where libFuzzer
    // writes crash inputs. Each is a valid message padded with a field this version does not
    // know, or a descriptor at a length limit.
    let mut artifacts = Corpus {
        root: Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts"),
        written: 0,
    };
    // An event body just under event_bytes_max: its envelope is over the limit.
    let mut body = envelope(&orders_log[0]).body.to_vec();
    prost::encoding::bytes::encode(15, &Bytes::from(vec![b'P'; 1900]), &mut body);
    artifacts.write(
        "event_body",
        "crafted-fork-proof-side-over-event-limit",
        &body,
    );
    // A catalog entry body of exactly catalog_entry_bytes_max bytes.
    let mut body = entry_envelope(&entries[0].1).body.to_vec();
    let pad = config.catalog_entry_bytes_max - body.len() - 3;
    prost::encoding::bytes::encode(15, &Bytes::from(vec![b'P'; pad]), &mut body);
    assert_eq!(body.len(), config.catalog_entry_bytes_max);
    artifacts.write(
        "catalog_body",
        "crafted-equivocation-side-over-entry-limit",
        &body,
    );
    // A tag of exactly short_text_bytes_max bytes that grows when lower-cased ('İ' is 2 bytes,
    // its lower case "i̇" 3).
    let tag = format!("{}\u{130}", "a".repeat(config.short_text_bytes_max - 2));
    artifacts.write(
        "descriptor_yaml",
        "crafted-tag-grows-when-lowercased",
        orders_yaml.replace("tags: [orders, revenue]", &format!("tags: [orders, {tag}]")),
    );

    println!(
        "wrote {} seed files under {} and {} reproducers under {}",
        corpus.written,
        corpus.root.display(),
        artifacts.written,
        artifacts.root.display()
    );
}

/// Base58 (bitcoin alphabet), to print a PeerId that `PublicKey`'s `Display` would not make.
fn bs58_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    let mut digits: Vec<u8> = Vec::new();
    for &byte in bytes {
        let mut carry = u32::from(byte);
        for digit in &mut digits {
            carry += u32::from(*digit) << 8;
            *digit = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let mut out = "1".repeat(zeros);
    out.extend(digits.iter().rev().map(|&d| ALPHABET[d as usize] as char));
    out
}

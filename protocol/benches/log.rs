//! Throughput of the log's hot paths, beside the primitives they are built from.
//!
//! Run: `cargo bench -p mesh-protocol --bench log`. Every group reports elements (events) per
//! second; `raw/*` measures bare blake3 and ed25519 on this machine in the same run, so the
//! cost of our encoding and checks shows as a ratio to the physical limits.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey, Verifier};
use mesh_protocol::{
    CatalogEntry, Config, Descriptor, LogHead, Operation, ProductId, ProductName, SecretKey,
    SignedCatalogEntry, SignedEvent, VerifiedCatalogEntry, VerifiedEvent, verify_batch,
};

const PAYLOAD_SIZES: [usize; 2] = [200, 1024];

fn product(owner: &SecretKey) -> ProductId {
    ProductId::new(owner.public(), ProductName::new("orders").unwrap())
}

fn log(owner: &SecretKey, n: u64, payload_bytes: usize) -> Vec<VerifiedEvent> {
    let config = Config::default();
    let mut head = LogHead::empty(product(owner));
    (0..n)
        .map(|i| {
            let e = head
                .next_event(
                    1_763_700_000_000_000 + i,
                    Operation::Upsert,
                    Bytes::from(format!("order-{i:08}")),
                    Bytes::from(vec![b'x'; payload_bytes]),
                    vec![],
                )
                .sign(owner, &config)
                .unwrap();
            head.advance(&e).unwrap();
            e
        })
        .collect()
}

fn raw(c: &mut Criterion) {
    let mut g = c.benchmark_group("raw");
    g.throughput(Throughput::Elements(1));
    let data = vec![7u8; 200];
    g.bench_function("blake3_200B", |b| b.iter(|| blake3::hash(black_box(&data))));
    let key = SigningKey::from_bytes(&[1; 32]);
    let message = [9u8; 46];
    g.bench_function("ed25519_sign_46B", |b| {
        b.iter(|| key.sign(black_box(&message)))
    });
    let signature = key.sign(&message);
    let public = key.verifying_key();
    g.bench_function("ed25519_verify_46B", |b| {
        b.iter(|| public.verify(black_box(&message), &signature).unwrap())
    });
    g.finish();
}

fn append(c: &mut Criterion) {
    let owner = SecretKey::from_bytes(&[1; 32]);
    let config = Config::default();
    let mut g = c.benchmark_group("append");
    g.throughput(Throughput::Elements(1));
    for size in PAYLOAD_SIZES {
        let payload = Bytes::from(vec![b'x'; size]);
        let key = Bytes::from_static(b"order-00000001");
        let mut head = LogHead::empty(product(&owner));
        // Encode, hash, sign, and move the head: what a producer does per event before commit.
        g.bench_function(format!("sign_{size}B"), |b| {
            b.iter(|| {
                let e = head
                    .next_event(1, Operation::Upsert, key.clone(), payload.clone(), vec![])
                    .sign(&owner, &config)
                    .unwrap();
                head.advance(&e).unwrap();
                e
            })
        });
    }
    g.finish();
}

fn verify(c: &mut Criterion) {
    let owner = SecretKey::from_bytes(&[1; 32]);
    let config = Config::default();
    let mut g = c.benchmark_group("verify");
    for size in PAYLOAD_SIZES {
        let events = log(&owner, 256, size);
        let encoded: Vec<Bytes> = events.iter().map(|e| e.encoded().clone()).collect();
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("decode_{size}B"), |b| {
            b.iter(|| SignedEvent::decode(black_box(encoded[0].clone()), &config).unwrap())
        });
        g.bench_function(format!("decode_verify_one_{size}B"), |b| {
            b.iter(|| {
                SignedEvent::decode(black_box(encoded[0].clone()), &config)
                    .unwrap()
                    .verify()
                    .unwrap()
            })
        });
        for batch in [64usize, 256] {
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_function(format!("decode_verify_batch{batch}_{size}B"), |b| {
                b.iter_batched(
                    || encoded[..batch].to_vec(),
                    |bytes| {
                        let decoded = bytes
                            .into_iter()
                            .map(|b| SignedEvent::decode(b, &config).unwrap())
                            .collect();
                        let verified = verify_batch(decoded);
                        assert!(verified.iter().all(Result::is_ok));
                        verified
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

const CATALOG_YAML: &str = "\
name: orders
domain: sales
owner: sales-data@example.com
description: Every order placed in the web shop, one record per order id.
tags: [orders, revenue, customers]
version: 1.2.0
schema:
  fields:
    - name: order_id
      type: string
    - name: customer_email
      type: string
      pii: true
output_ports:
  - name: changes
    kind: change-log
";

/// Catalog entries as gossip and anti-entropy bring them: one owner per entry, so a batch
/// cannot merge key terms the way a log's batch does.
fn catalog(c: &mut Criterion) {
    let config = Config::default();
    let descriptor = Descriptor::from_yaml(CATALOG_YAML, &config).unwrap();
    let entries: Vec<VerifiedCatalogEntry> = (0..256u32)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            let owner = SecretKey::from_bytes(&seed);
            CatalogEntry {
                product: product(&owner),
                revision: 1,
                timestamp_micros: 1_763_700_000_000_000,
                descriptor: descriptor.clone(),
                consumes: Vec::new(),
            }
            .sign(&owner, &config)
            .unwrap()
        })
        .collect();
    let encoded: Vec<Bytes> = entries.iter().map(|e| e.encoded().clone()).collect();
    let mut g = c.benchmark_group("catalog");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_verify_one", |b| {
        b.iter(|| VerifiedCatalogEntry::decode_and_verify(black_box(encoded[0].clone()), &config))
    });
    for batch in [1usize, 2, 16, 64, 256] {
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("decode_verify_batch{batch}"), |b| {
            b.iter_batched(
                || encoded[..batch].to_vec(),
                |bytes| {
                    let decoded = bytes
                        .into_iter()
                        .map(|b| SignedCatalogEntry::decode(b, &config).unwrap())
                        .collect();
                    let verified = SignedCatalogEntry::verify_batch(decoded);
                    assert!(verified.iter().all(Result::is_ok));
                    verified
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn chain_check(c: &mut Criterion) {
    let owner = SecretKey::from_bytes(&[1; 32]);
    let events = log(&owner, 1024, 200);
    let mut g = c.benchmark_group("chain");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("advance_1024", |b| {
        b.iter(|| {
            let mut head = LogHead::empty(product(&owner));
            let (accepted, err) = head.advance_all(black_box(&events));
            assert_eq!((accepted, err), (1024, None));
            head
        })
    });
    g.finish();
}

criterion_group!(benches, raw, append, verify, catalog, chain_check);
criterion_main!(benches);

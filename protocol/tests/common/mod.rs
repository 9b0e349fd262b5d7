//! Fixtures shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use mesh_protocol::{
    CatalogEntry, Config, Descriptor, LogHead, Operation, ProductId, ProductName, SecretKey,
    VerifiedCatalogEntry, VerifiedEvent,
};
use prost::Message;

pub const T0_MICROS: u64 = 1_763_700_000_000_000;

pub fn key(seed: u8) -> SecretKey {
    SecretKey::from_bytes(&[seed; 32])
}

pub fn product(owner: &SecretKey, name: &str) -> ProductId {
    ProductId::new(owner.public(), ProductName::new(name).unwrap())
}

/// A log of `n` upserts signed by `owner`.
pub fn log(owner: &SecretKey, product: &ProductId, n: u64) -> Vec<VerifiedEvent> {
    let config = Config::default();
    let mut head = LogHead::empty(product.clone());
    (1..=n)
        .map(|i| {
            let event = head
                .next_event(
                    T0_MICROS + i,
                    Operation::Upsert,
                    Bytes::from(format!("key-{i}")),
                    Bytes::from(format!("{{\"n\":{i}}}")),
                    vec![],
                )
                .sign(owner, &config)
                .unwrap();
            head.advance(&event).unwrap();
            event
        })
        .collect()
}

pub const ORDERS_YAML: &str = "\
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
      description: Order number as shown to the customer.
    - name: customer_email
      type: string
      pii: true
    - name: total
      type: decimal
output_ports:
  - name: changes
    kind: change-log
    format: json
slo:
  freshness: 15m
  latency_p99: 500ms
access:
  visibility: public
";

pub fn descriptor(yaml: &str) -> Descriptor {
    Descriptor::from_yaml(yaml, &Config::default()).unwrap()
}

pub fn entry(owner: &SecretKey, revision: u64, description: &str) -> VerifiedCatalogEntry {
    let mut d = descriptor(ORDERS_YAML);
    d.description = description.to_owned();
    CatalogEntry {
        product: product(owner, "orders"),
        revision,
        timestamp_micros: T0_MICROS,
        descriptor: d,
        consumes: Vec::new(),
    }
    .sign(owner, &Config::default())
    .unwrap()
}

/// Signs arbitrary body bytes as `owner` would, bypassing every check the builder makes: what
/// a malicious owner can put on the wire.
pub fn sign_raw(owner: &SecretKey, context: &[u8], body: Vec<u8>) -> Vec<u8> {
    use ed25519_dalek::Signer;
    let signing = ed25519_dalek::SigningKey::from_bytes(&owner.to_bytes());
    let mut message = context.to_vec();
    message.extend_from_slice(blake3::hash(&body).as_bytes());
    let signature = signing.sign(&message);
    mesh_protocol::wire::pb::SignedEvent {
        body: Bytes::from(body),
        signer: Bytes::copy_from_slice(owner.public().as_bytes()),
        signature: Bytes::copy_from_slice(&signature.to_bytes()),
    }
    .encode_to_vec()
}

/// An unknown protobuf field (number 1000, length-delimited) of `len` bytes: decoders skip it,
/// but it is signed and counts towards sizes.
pub fn unknown_field(len: usize) -> Vec<u8> {
    let mut out = vec![0xc2, 0x3e]; // tag (1000 << 3) | 2
    prost::encoding::encode_varint(len as u64, &mut out);
    out.resize(out.len() + len, b'x');
    out
}

//! Helpers for multi-node tests: nodes on 127.0.0.1 (port 0) or the in-memory transport, and
//! waits that poll a condition against a deadline.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libp2p::Multiaddr;
use mesh_node::store::{MemoryStore, SledStore, Store};
use mesh_node::{NodeConfig, NodeHandle, NodeOptions, TransportKind};
use mesh_protocol::{Operation, ProductId};

/// Long enough for a loaded 2-core CI machine; conditions usually hold in milliseconds.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn config(domain: &str, transport: TransportKind, peers: Vec<Multiaddr>) -> NodeConfig {
    let listen = match transport {
        TransportKind::Tcp => "/ip4/127.0.0.1/tcp/0",
        TransportKind::Memory => "/memory/0",
    };
    NodeConfig {
        domain: domain.into(),
        listen: vec![listen.parse().unwrap()],
        peers,
        catalog_sync_interval: Duration::from_millis(500),
        subscription_retry: Duration::from_millis(100),
        ..NodeConfig::default()
    }
}

pub async fn start_with(
    config: NodeConfig,
    transport: TransportKind,
    store: Arc<dyn Store>,
) -> NodeHandle {
    mesh_node::start(NodeOptions {
        config,
        protocol: mesh_protocol::Config::default(),
        transport,
        store,
        key: None,
    })
    .await
    .expect("node starts")
}

/// A node with an in-memory store.
pub async fn node(domain: &str, transport: TransportKind, peers: Vec<Multiaddr>) -> NodeHandle {
    start_with(
        config(domain, transport, peers),
        transport,
        Arc::new(MemoryStore::new()),
    )
    .await
}

/// A node with a sled store in `dir`.
pub async fn sled_node(domain: &str, dir: &std::path::Path, peers: Vec<Multiaddr>) -> NodeHandle {
    let store = Arc::new(SledStore::open(dir).unwrap());
    start_with(
        config(domain, TransportKind::Tcp, peers),
        TransportKind::Tcp,
        store,
    )
    .await
}

pub fn addr(node: &NodeHandle) -> Multiaddr {
    node.listen_addrs()[0].clone()
}

/// Polls `condition` until it holds or `WAIT` passes; panics with `what` on timeout.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn descriptor(name: &str, domain: &str) -> String {
    format!(
        "name: {name}\ndomain: {domain}\nowner: {domain}-team@example.com\n\
         description: The {name} of the {domain} domain.\ntags: [{domain}]\nversion: 1.0.0\n\
         schema:\n  fields:\n    - name: id\n      type: string\n    - name: amount\n      type: decimal\n"
    )
}

pub async fn publish(node: &NodeHandle, name: &str) -> ProductId {
    node.publish_yaml(&descriptor(name, node.domain()))
        .await
        .expect("publish")
        .product()
        .clone()
}

pub async fn upsert(node: &NodeHandle, product: &ProductId, key: &str, json: &str) -> u64 {
    node.append(
        product,
        Bytes::copy_from_slice(key.as_bytes()),
        Operation::Upsert,
        Bytes::copy_from_slice(json.as_bytes()),
        vec![],
    )
    .await
    .expect("append")
    .seq
}

pub fn has_entry(node: &NodeHandle, product: &ProductId) -> bool {
    node.catalog_entry(product).is_some()
}

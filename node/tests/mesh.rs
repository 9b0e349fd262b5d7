//! Issue 3's acceptance, shown with real nodes over TCP on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use mesh_node::TransportKind;
use mesh_node::store::Store;
use mesh_node::store::{MemoryStore, StoreError, StoredHead};
use mesh_protocol::wire::pb;
use mesh_protocol::{ForkProof, ProductId, VerifiedEvent};
use prost::Message;

const TCP: TransportKind = TransportKind::Tcp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_reaches_every_node_including_late_joiners_and_restarted_ones() {
    let dir = tempfile::tempdir().unwrap();
    let a = node("sales", TCP, vec![]).await;
    let b = node("billing", TCP, vec![addr(&a)]).await;
    let c = node("logistics", TCP, vec![addr(&a)]).await;
    // Started with only C as a peer: Kademlia has to introduce it to A and B.
    let e = node("marketing", TCP, vec![addr(&c)]).await;
    let r = sled_node("finance", dir.path(), vec![addr(&a)]).await;
    let r_id = r.peer_id();
    eventually("E finds A through C", || async {
        e.connected_peers().contains(&a.peer_id())
    })
    .await;
    r.shutdown().await;

    let orders = publish(&a, "orders").await;
    for (name, n) in [("B", &b), ("C", &c), ("E", &e)] {
        eventually(&format!("{name} has the entry"), || async {
            has_entry(n, &orders)
        })
        .await;
    }
    // Joins after the publish, knowing only B.
    let late = node("hr", TCP, vec![addr(&b)]).await;
    eventually("the late joiner has the entry", || async {
        has_entry(&late, &orders)
    })
    .await;
    // Restarts from its store (same identity), missed the publish while down.
    let r = sled_node("finance", dir.path(), vec![addr(&a)]).await;
    assert_eq!(r.peer_id(), r_id, "identity survives a restart");
    eventually("the restarted node has the entry", || async {
        has_entry(&r, &orders)
    })
    .await;

    // An update reaches everyone too, and the newer revision wins everywhere.
    a.publish_yaml(&descriptor("orders", "sales").replace("1.0.0", "1.1.0"))
        .await
        .unwrap();
    for n in [&b, &c, &e, &late, &r] {
        eventually("revision 2 everywhere", || async {
            n.catalog_entry(&orders).is_some_and(|x| x.revision() == 2)
        })
        .await;
    }
    for n in [a, b, c, e, late, r] {
        n.shutdown().await;
    }
}

/// B learns an entry by catalog sync with A, which gossip never brought it; C, whose only
/// peer is B and whose own anti-entropy is an hour away, still gets it at once: B gossips on
/// what a sync brings, as after a partition heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_learned_by_sync_is_gossiped_on() {
    let dir = tempfile::tempdir().unwrap();
    let hour = std::time::Duration::from_secs(3600);
    let quiet = |domain: &str, peers| mesh_node::NodeConfig {
        catalog_sync_interval: hour,
        ..config(domain, TCP, peers)
    };
    let b = start_with(quiet("billing", vec![]), TCP, Arc::new(MemoryStore::new())).await;
    // One connection at most: C can reach the entry only through B.
    let c_config = mesh_node::NodeConfig {
        peers_max: 1,
        peers_wanted: 1,
        ..quiet("logistics", vec![addr(&b)])
    };
    let c = start_with(c_config, TCP, Arc::new(MemoryStore::new())).await;
    eventually("C connects to B", || async {
        c.connected_peers().contains(&b.peer_id())
    })
    .await;

    // A publishes while alone, and restarts from its store: it never gossips the entry.
    let a = sled_node("sales", dir.path(), vec![]).await;
    let orders = publish(&a, "orders").await;
    a.shutdown().await;
    let a = sled_node("sales", dir.path(), vec![addr(&b)]).await;
    eventually(
        "B has the entry, by the sync of its new connection",
        || async { has_entry(&b, &orders) },
    )
    .await;
    eventually("C has the entry, from B's gossip", || async {
        has_entry(&c, &orders)
    })
    .await;
    assert_eq!(c.connected_peers(), vec![b.peer_id()], "C never met A");
    assert_eq!(b.metrics().catalog_regossiped.get(), 1);
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_after_restart_and_backfills_from_another_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let producer = node("sales", TCP, vec![]).await;
    let orders = publish(&producer, "orders").await;
    let first = sled_node("billing", dir.path(), vec![addr(&producer)]).await;
    eventually("billing has the entry", || async {
        has_entry(&first, &orders)
    })
    .await;
    first.subscribe(&orders).await.unwrap();
    for i in 1..=5 {
        upsert(
            &producer,
            &orders,
            &format!("o-{i}"),
            &format!(r#"{{"n":{i}}}"#),
        )
        .await;
    }
    eventually("live events arrive", || async {
        first.head_seq(&orders) == 5
    })
    .await;

    // Down while the producer goes on.
    first.shutdown().await;
    for i in 6..=10 {
        upsert(
            &producer,
            &orders,
            &format!("o-{i}"),
            &format!(r#"{{"n":{i}}}"#),
        )
        .await;
    }
    upsert(&producer, &orders, "o-1", r#"{"n":100}"#).await;
    let first = sled_node("billing", dir.path(), vec![addr(&producer)]).await;
    eventually("the subscription resumes by itself", || async {
        first.head_seq(&orders) == 11
    })
    .await;
    // Only the six missed events were applied: nothing twice, nothing skipped.
    let received = first.metrics().events_received.get();
    let duplicates = first.metrics().events_duplicate.get();
    assert_eq!(
        received, 6,
        "applied after restart (duplicates seen and skipped: {duplicates})"
    );
    let events = first.events(&orders, 1, 100).unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=11).collect::<Vec<_>>());
    assert!(events.iter().all(|e| e.status == "verified"), "{events:?}");
    assert_eq!(first.get(&orders, b"o-1").unwrap().unwrap(), r#"{"n":100}"#);

    // The producer goes away; a new subscriber gets the whole log from the first one.
    producer.shutdown().await;
    let second = node("analytics", TCP, vec![addr(&first)]).await;
    eventually("the entry reaches the new node", || async {
        has_entry(&second, &orders)
    })
    .await;
    second.subscribe(&orders).await.unwrap();
    eventually("backfill from the other subscriber", || async {
        second.head_seq(&orders) == 11
    })
    .await;
    assert_eq!(second.get(&orders, b"o-7").unwrap().unwrap(), r#"{"n":7}"#);
    let status = second.status().unwrap();
    assert_eq!(
        status.subscriptions[0].source.as_deref(),
        Some(first.peer_id().to_string().as_str())
    );
    first.shutdown().await;
    second.shutdown().await;
}

/// How an [`EvilStore`] lies when it serves events.
#[derive(Clone, Copy, Debug)]
enum Lie {
    /// Changes the payload of the event at this seq (keeping its signature).
    Tamper(u64),
    /// Leaves out the event at this seq.
    Skip(u64),
}

/// A store that holds genuine events but serves them doctored: a relay that lies.
struct EvilStore {
    inner: MemoryStore,
    lie: Lie,
}

impl Store for EvilStore {
    fn log_range(
        &self,
        product: &ProductId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Bytes>, StoreError> {
        let events = self.inner.log_range(product, from_seq, limit)?;
        Ok(events
            .into_iter()
            .enumerate()
            .filter_map(|(i, bytes)| {
                let seq = from_seq + i as u64;
                match self.lie {
                    Lie::Skip(s) if s == seq => None,
                    Lie::Tamper(s) if s == seq => {
                        let mut envelope = pb::SignedEvent::decode(bytes).unwrap();
                        let mut body = pb::EventBody::decode(envelope.body.clone()).unwrap();
                        body.payload = Bytes::from_static(br#"{"n":"forged"}"#);
                        envelope.body = Bytes::from(body.encode_to_vec());
                        Some(Bytes::from(envelope.encode_to_vec()))
                    }
                    _ => Some(bytes),
                }
            })
            .collect())
    }
    fn identity(&self) -> Result<Option<[u8; 32]>, StoreError> {
        self.inner.identity()
    }
    fn set_identity(&self, seed: &[u8; 32]) -> Result<(), StoreError> {
        self.inner.set_identity(seed)
    }
    fn catalog_get(&self, p: &ProductId) -> Result<Option<Bytes>, StoreError> {
        self.inner.catalog_get(p)
    }
    fn catalog_put(&self, p: &ProductId, e: &Bytes) -> Result<(), StoreError> {
        self.inner.catalog_put(p, e)
    }
    fn catalog_put_many(&self, e: &[(ProductId, Bytes)]) -> Result<(), StoreError> {
        self.inner.catalog_put_many(e)
    }
    fn catalog_all(&self) -> Result<Vec<Bytes>, StoreError> {
        self.inner.catalog_all()
    }
    fn log_head(&self, p: &ProductId) -> Result<Option<StoredHead>, StoreError> {
        self.inner.log_head(p)
    }
    fn log_append(&self, p: &ProductId, e: &[VerifiedEvent]) -> Result<(), StoreError> {
        self.inner.log_append(p, e)
    }
    fn logs(&self) -> Result<Vec<(ProductId, StoredHead)>, StoreError> {
        self.inner.logs()
    }
    fn replica_get(&self, p: &ProductId, k: &[u8]) -> Result<Option<Bytes>, StoreError> {
        self.inner.replica_get(p, k)
    }
    fn fork_put(&self, f: &ForkProof) -> Result<bool, StoreError> {
        self.inner.fork_put(f)
    }
    fn forks(&self, p: Option<&ProductId>) -> Result<Vec<Bytes>, StoreError> {
        self.inner.forks(p)
    }
    fn subscription_put(&self, p: &ProductId) -> Result<(), StoreError> {
        self.inner.subscription_put(p)
    }
    fn subscription_remove(&self, p: &ProductId) -> Result<(), StoreError> {
        self.inner.subscription_remove(p)
    }
    fn subscriptions(&self) -> Result<Vec<ProductId>, StoreError> {
        self.inner.subscriptions()
    }
}

/// A producer with a 3-event log, a lying relay that holds it, then the producer gone: a
/// victim that subscribes can only ask the liar. Returns (victim, liar, product).
async fn victim_of(lie: Lie) -> (mesh_node::NodeHandle, mesh_node::NodeHandle, ProductId) {
    let producer = node("sales", TCP, vec![]).await;
    let orders = publish(&producer, "orders").await;
    let evil = Arc::new(EvilStore {
        inner: MemoryStore::new(),
        lie,
    });
    let liar = start_with(config("mallory", TCP, vec![addr(&producer)]), TCP, evil).await;
    eventually("the liar has the entry", || async {
        has_entry(&liar, &orders)
    })
    .await;
    liar.subscribe(&orders).await.unwrap();
    for i in 1..=3 {
        upsert(
            &producer,
            &orders,
            &format!("o-{i}"),
            &format!(r#"{{"n":{i}}}"#),
        )
        .await;
    }
    eventually("the liar holds the log", || async {
        liar.head_seq(&orders) == 3
    })
    .await;
    producer.shutdown().await;
    let victim = node("billing", TCP, vec![addr(&liar)]).await;
    eventually("the victim has the entry", || async {
        has_entry(&victim, &orders)
    })
    .await;
    victim.subscribe(&orders).await.unwrap();
    (victim, liar, orders)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_event_is_rejected_never_stored_and_never_served() {
    let (victim, liar, orders) = victim_of(Lie::Tamper(2)).await;
    eventually("the forgery is rejected", || async {
        victim
            .status()
            .unwrap()
            .recent_rejections
            .iter()
            .any(|r| r.reason == "bad_signature")
    })
    .await;
    assert_eq!(
        victim.head_seq(&orders),
        1,
        "only the genuine event before the forgery"
    );
    assert!(
        victim
            .events(&orders, 1, 10)
            .unwrap()
            .iter()
            .all(|e| e.status == "verified")
    );
    let rejected = victim
        .metrics()
        .events_rejected
        .get_or_create(&mesh_node::metrics::ReasonLabel {
            reason: "bad_signature".into(),
        })
        .get();
    assert!(rejected >= 1);
    // A node downstream of the victim receives only what the victim verified.
    let downstream = node("analytics", TCP, vec![addr(&victim)]).await;
    eventually("entry downstream", || async {
        has_entry(&downstream, &orders)
    })
    .await;
    liar.shutdown().await;
    downstream.subscribe(&orders).await.unwrap();
    eventually("downstream follows the victim", || async {
        downstream.head_seq(&orders) == 1
    })
    .await;
    assert!(
        downstream.get(&orders, b"o-2").unwrap().is_none(),
        "the forgery never spread"
    );
    victim.shutdown().await;
    downstream.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_chain_is_rejected_as_a_gap() {
    let (victim, liar, orders) = victim_of(Lie::Skip(2)).await;
    eventually("the gap is rejected", || async {
        victim
            .status()
            .unwrap()
            .recent_rejections
            .iter()
            .any(|r| r.reason == "gap")
    })
    .await;
    assert_eq!(victim.head_seq(&orders), 1);
    assert!(
        victim.get(&orders, b"o-3").unwrap().is_none(),
        "nothing past the gap was applied"
    );
    victim.shutdown().await;
    liar.shutdown().await;
}

/// The subscription's current source, as `status` shows it.
fn source_of(node: &mesh_node::NodeHandle, product: &ProductId) -> Option<String> {
    node.status()
        .unwrap()
        .subscriptions
        .into_iter()
        .find(|s| s.product == *product)
        .and_then(|s| s.source)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_the_owner_refused_goes_back_to_it_once_it_has_room() {
    // An owner that serves one log stream at most.
    let owner = start_with(
        mesh_node::NodeConfig {
            served_streams_max: 1,
            ..config("sales", TCP, vec![])
        },
        TCP,
        Arc::new(MemoryStore::new()),
    )
    .await;
    let orders = publish(&owner, "orders").await;
    upsert(&owner, &orders, "o-1", r#"{"n":1}"#).await;
    let first = node("billing", TCP, vec![addr(&owner)]).await;
    eventually("billing has the entry", || async {
        has_entry(&first, &orders)
    })
    .await;
    first.subscribe(&orders).await.unwrap();
    eventually("billing follows the owner", || async {
        first.head_seq(&orders) == 1
    })
    .await;

    // The owner is busy: the second subscriber falls back to the first.
    let second = node("analytics", TCP, vec![addr(&owner), addr(&first)]).await;
    eventually("analytics has the entry", || async {
        has_entry(&second, &orders)
    })
    .await;
    second.subscribe(&orders).await.unwrap();
    eventually("analytics follows billing", || async {
        second.head_seq(&orders) == 1
            && source_of(&second, &orders) == Some(first.peer_id().to_string())
    })
    .await;
    let refused_busy = owner
        .metrics()
        .streams_refused
        .get_or_create(&mesh_node::metrics::ReasonLabel {
            reason: "busy".into(),
        })
        .get();
    assert!(refused_busy >= 1, "{refused_busy}");

    // Billing leaves the log, which frees the owner's stream; only the owner has what comes
    // next, so the second subscriber gets it only by going back to the owner.
    first.unsubscribe(&orders).await.unwrap();
    upsert(&owner, &orders, "o-2", r#"{"n":2}"#).await;
    eventually(
        "analytics gets the owner's new event from the owner",
        || async {
            second.head_seq(&orders) == 2
                && source_of(&second, &orders) == Some(owner.peer_id().to_string())
        },
    )
    .await;
    for n in [owner, first, second] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_is_detected_kept_as_proof_and_passed_to_other_subscribers() {
    let key = mesh_protocol::SecretKey::from_bytes(&[42; 32]);
    let start_producer = |peers| {
        let key = key.clone();
        async move {
            mesh_node::start(mesh_node::NodeOptions {
                config: config("sales", TCP, peers),
                protocol: mesh_protocol::Config::default(),
                transport: TCP,
                store: Arc::new(MemoryStore::new()),
                key: Some(key),
            })
            .await
            .unwrap()
        }
    };
    // The owner signs seq 1 = "x" on one machine...
    let producer = start_producer(vec![]).await;
    let orders = publish(&producer, "orders").await;
    let relay = node("billing", TCP, vec![addr(&producer)]).await;
    eventually("relay has the entry", || async {
        has_entry(&relay, &orders)
    })
    .await;
    relay.subscribe(&orders).await.unwrap();
    upsert(&producer, &orders, "o-1", r#"{"v":"x"}"#).await;
    eventually("relay holds x", || async { relay.head_seq(&orders) == 1 }).await;
    let downstream = node("analytics", TCP, vec![addr(&relay)]).await;
    eventually("downstream has the entry", || async {
        has_entry(&downstream, &orders)
    })
    .await;
    downstream.subscribe(&orders).await.unwrap();
    eventually("downstream holds x", || async {
        downstream.head_seq(&orders) == 1
    })
    .await;
    producer.shutdown().await;

    // ...and seq 1 = "y" on another, with the same key and an empty store.
    let twin = start_producer(vec![addr(&relay)]).await;
    eventually("twin learns its own entry back", || async {
        has_entry(&twin, &orders)
    })
    .await;
    upsert(&twin, &orders, "o-1", r#"{"v":"y"}"#).await;

    eventually("the relay detects the fork", || async {
        !relay.status().unwrap().forks.is_empty()
    })
    .await;
    eventually("the proof reaches the other subscriber", || async {
        !downstream.forks(Some(&orders)).unwrap().is_empty()
    })
    .await;
    let proof = &downstream.forks(Some(&orders)).unwrap()[0];
    assert_eq!(proof.seq(), 1);
    // The proof stands alone: anyone can check it from its bytes.
    ForkProof::decode_and_verify(proof.encode(), &mesh_protocol::Config::default()).unwrap();
    // The first branch stays: the relay still serves x.
    assert_eq!(relay.get(&orders, b"o-1").unwrap().unwrap(), r#"{"v":"x"}"#);
    for n in [twin, relay, downstream] {
        n.shutdown().await;
    }
}

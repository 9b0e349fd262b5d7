//! Two nodes over TCP on 127.0.0.1: a product published at one is found, subscribed to and
//! replicated at the other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use mesh_node::TransportKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_replicate_over_tcp() {
    let sales = node("sales", TransportKind::Tcp, vec![]).await;
    let billing = node("billing", TransportKind::Tcp, vec![addr(&sales)]).await;
    let orders = publish(&sales, "orders").await;
    eventually("billing has the orders entry", || async {
        has_entry(&billing, &orders)
    })
    .await;

    billing.subscribe(&orders).await.unwrap();
    upsert(&sales, &orders, "o-1", r#"{"amount":"12.50"}"#).await;
    upsert(&sales, &orders, "o-2", r#"{"amount":"3.00"}"#).await;
    eventually("billing holds both events", || async {
        billing.head_seq(&orders) == 2
    })
    .await;
    assert_eq!(
        billing.get(&orders, b"o-1").unwrap().unwrap(),
        r#"{"amount":"12.50"}"#
    );
    let events = billing.events(&orders, 1, 10).unwrap();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.status == "verified"), "{events:?}");

    sales.shutdown().await;
    billing.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_make_one_contiguous_verified_log() {
    let sales = node("sales", TransportKind::Memory, vec![]).await;
    let orders = publish(&sales, "orders").await;
    // Enough concurrent appends that groups are signed on several threads.
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let (sales, orders) = (sales.clone(), orders.clone());
            tokio::spawn(async move { upsert(&sales, &orders, &format!("k{i}"), "{}").await })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=500).collect::<Vec<_>>(),
        "every append got its own seq"
    );
    let audit = sales.audit(&orders).unwrap();
    assert!(audit.is_clean(), "{:?}", audit.problems);
    assert_eq!((audit.events, audit.records), (500, 500));
    sales.shutdown().await;
}

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

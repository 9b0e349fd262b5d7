//! Issue 4's acceptance: discovery and lineage answered by any peer, shown with real nodes over
//! TCP on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use mesh_node::lineage::{Direction, EdgeKind};
use mesh_node::search::SearchRequest;
use mesh_node::{NodeHandle, TransportKind};
use mesh_protocol::{EventRef, Operation, ProductId};

const TCP: TransportKind = TransportKind::Tcp;

fn yaml(name: &str, domain: &str, description: &str, tags: &str, extra: &str) -> String {
    format!(
        "name: {name}\ndomain: {domain}\nowner: {domain}-team@example.com\n\
         description: {description}\ntags: [{tags}]\nversion: 1.4.0\n\
         schema:\n  fields:\n    - name: id\n      type: string\n{extra}"
    )
}

async fn publish_yaml(node: &NodeHandle, yaml: &str) -> ProductId {
    node.publish_yaml(yaml).await.unwrap().product().clone()
}

fn query(text: &str) -> SearchRequest {
    SearchRequest {
        query: text.to_owned(),
        ..SearchRequest::default()
    }
}

/// The catalog as (product, revision), sorted: equal at two nodes means equal catalogs.
fn catalog_versions(node: &NodeHandle) -> Vec<(ProductId, u64)> {
    let mut v: Vec<_> = node
        .catalog()
        .iter()
        .map(|e| (e.product().clone(), e.revision()))
        .collect();
    v.sort();
    v
}

async fn same_catalog(a: &NodeHandle, b: &NodeHandle, products: usize) {
    eventually("both nodes hold the same catalog", || async {
        let va = catalog_versions(a);
        va.len() == products && va == catalog_versions(b)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_published_at_one_node_is_found_by_asking_another() {
    let a = node("sales", TCP, vec![]).await;
    let b = node("billing", TCP, vec![addr(&a)]).await;
    let c = node("crm", TCP, vec![addr(&a)]).await;

    let orders = publish_yaml(
        &a,
        &yaml(
            "orders",
            "sales",
            "Every order placed in the web shop.",
            "sales, revenue",
            "    - name: customer_email\n      type: string\n      pii: true\n",
        ),
    )
    .await;
    // Two more products that mention orders, to be outranked by the product of that name.
    publish_yaml(
        &b,
        &yaml(
            "invoices",
            "billing",
            "Invoices raised for orders, one per order and month.",
            "billing, revenue",
            "",
        ),
    )
    .await;
    publish_yaml(
        &c,
        &yaml(
            "customers",
            "crm",
            "Customer master data; each customer's orders are counted here.",
            "crm",
            "    - name: email\n      type: string\n      pii: true\n",
        ),
    )
    .await;
    same_catalog(&a, &c, 3).await;
    same_catalog(&b, &c, 3).await;
    // The index follows the catalog a moment later.
    for n in [&a, &c] {
        eventually("the index holds every entry", || async {
            n.search(&query("")).unwrap().total == 3
        })
        .await;
    }

    // A asks C over /mesh/search/1: the product named orders ranks first.
    let remote = a.search_peer(c.peer_id(), &query("orders")).await.unwrap();
    assert_eq!(remote.total, 3, "{remote:?}");
    assert_eq!(remote.hits[0].product, orders.to_string());
    assert_eq!(remote.hits[0].owner, "sales-team@example.com");
    assert_eq!(remote.hits[0].version, "1.4.0");
    // Where to subscribe: the owner holds the log.
    assert_eq!(remote.hits[0].holders, vec![a.peer_id().to_string()]);
    // Any two nodes with the same catalog give the same answer, scores included.
    let local = a.search(&query("orders")).unwrap();
    assert_eq!(
        serde_json::to_value(&local).unwrap(),
        serde_json::to_value(&remote).unwrap()
    );

    // Facets count the matching set; filters narrow it.
    let by_domain = |domain: &str| SearchRequest {
        domain: Some(domain.to_owned()),
        ..query("orders")
    };
    // B asks C too, connected or not yet (both started with A alone): B dials C, or looks it
    // up through A.
    let billing = b
        .search_peer(c.peer_id(), &by_domain("billing"))
        .await
        .unwrap();
    assert_eq!(billing.total, 1);
    assert_eq!(billing.hits[0].name, "invoices");
    let domains: Vec<(String, usize)> = remote
        .facets
        .domain
        .iter()
        .map(|f| (f.value.clone(), f.count))
        .collect();
    assert_eq!(domains.len(), 3, "{domains:?}");
    assert!(domains.iter().all(|(_, n)| *n == 1), "{domains:?}");

    let with_pii = c
        .search(&SearchRequest {
            pii: Some(true),
            ..query("")
        })
        .unwrap();
    let mut names: Vec<&str> = with_pii.hits.iter().map(|h| h.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["customers", "orders"]);

    let revenue = c
        .search(&SearchRequest {
            // Tags are stored lower-cased; a filter in capitals finds them too.
            tag: Some("Revenue".to_owned()),
            ..query("")
        })
        .unwrap();
    assert_eq!(revenue.total, 2);
    let none = c
        .search(&SearchRequest {
            version: Some("^2".to_owned()),
            ..query("orders")
        })
        .unwrap();
    assert_eq!(none.total, 0);

    for n in [a, b, c] {
        n.shutdown().await;
    }
}

/// Sales -> billing -> analytics, plus logistics consumed by analytics without declaring it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lineage_and_impact_are_the_same_at_any_node_and_records_trace_to_their_sources() {
    let sales = node("sales", TCP, vec![]).await;
    let billing = node("billing", TCP, vec![addr(&sales)]).await;
    let logistics = node("logistics", TCP, vec![addr(&sales)]).await;
    let analytics = node("analytics", TCP, vec![addr(&sales)]).await;
    let bystander = node("hr", TCP, vec![addr(&sales)]).await;

    let orders = publish(&sales, "orders").await;
    let shipments = publish(&logistics, "shipments").await;
    let inputs = |list: &[&ProductId]| {
        let mut out = "inputs:\n".to_owned();
        for p in list {
            out.push_str(&format!("  - {p}\n"));
        }
        out
    };
    let invoices = publish_yaml(
        &billing,
        &format!(
            "{}{}",
            descriptor("invoices", "billing"),
            inputs(&[&orders])
        ),
    )
    .await;
    let revenue = publish_yaml(
        &analytics,
        &format!(
            "{}{}",
            descriptor("revenue", "analytics"),
            inputs(&[&invoices, &orders])
        ),
    )
    .await;
    for n in [&billing, &analytics] {
        eventually("upstream entries arrive", || async {
            has_entry(n, &orders) && has_entry(n, &invoices)
        })
        .await;
    }
    billing.subscribe(&orders).await.unwrap();
    for p in [&invoices, &orders, &shipments] {
        analytics.subscribe(p).await.unwrap();
    }

    // Observed consumption is announced in the consumers' own entries.
    eventually("consumption reaches the bystander", || async {
        bystander
            .catalog_entry(&revenue)
            .is_some_and(|e| e.entry().consumes.len() == 3)
            && bystander
                .catalog_entry(&invoices)
                .is_some_and(|e| e.entry().consumes == vec![orders.clone()])
    })
    .await;
    same_catalog(&sales, &bystander, 4).await;

    // Upstream of revenue, asked at two nodes that take no part in it: one answer.
    let upstream = |n: &NodeHandle| n.lineage_graph().walk(&revenue, Direction::Upstream, 5);
    let at_sales = upstream(&sales).unwrap();
    assert_eq!(at_sales, upstream(&bystander).unwrap());
    let kind = |from: &ProductId, to: &ProductId| {
        at_sales
            .edges
            .iter()
            .find(|e| &e.from == from && &e.to == to)
            .map(|e| e.kind())
    };
    assert_eq!(kind(&invoices, &revenue), Some(EdgeKind::Both));
    assert_eq!(kind(&orders, &invoices), Some(EdgeKind::Both));
    assert_eq!(kind(&orders, &revenue), Some(EdgeKind::Both));
    // Consumed but never declared: shows as observed only.
    assert_eq!(kind(&shipments, &revenue), Some(EdgeKind::ObservedOnly));
    assert_eq!(at_sales.nodes.len(), 4);
    let dot = at_sales.to_dot();
    assert!(dot.contains("digraph lineage {"), "{dot}");
    assert!(
        dot.contains("style=dashed") || dot.contains("penwidth"),
        "{dot}"
    );
    let mermaid = at_sales.to_mermaid();
    assert!(mermaid.contains("flowchart"), "{mermaid}");

    // What breaks downstream if orders changes: invoices and revenue, with their owners.
    let impact = bystander.lineage_graph().impact(&orders, 10).unwrap();
    let affected: Vec<(ProductId, u32, String)> = impact
        .affected
        .iter()
        .map(|a| (a.product.clone(), a.hops, a.owner.clone()))
        .collect();
    let mut expected = vec![
        (invoices.clone(), 1, "billing-team@example.com".to_owned()),
        (revenue.clone(), 1, "analytics-team@example.com".to_owned()),
    ];
    expected.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    assert_eq!(affected, expected);
    assert_eq!(impact, sales.lineage_graph().impact(&orders, 10).unwrap());
    let via_shipments = bystander.lineage_graph().impact(&shipments, 10).unwrap();
    assert_eq!(via_shipments.affected.len(), 1);
    assert_eq!(via_shipments.affected[0].product, revenue);

    // Record level: revenue r-1 derives from invoice i-1 (itself from order o-1) and from
    // shipment s-1. Traced at analytics, it reaches the sources in two upstream products.
    let order = append(&sales, &orders, "o-1", vec![]).await;
    let shipment = append(&logistics, &shipments, "s-1", vec![]).await;
    let invoice = append(&billing, &invoices, "i-1", vec![order.clone()]).await;
    eventually("analytics holds the cited events", || async {
        analytics.head_seq(&orders) >= 1
            && analytics.head_seq(&shipments) >= 1
            && analytics.head_seq(&invoices) >= 1
    })
    .await;
    let missing = EventRef {
        seq: 99,
        ..order.clone()
    };
    append(
        &analytics,
        &revenue,
        "r-1",
        vec![invoice.clone(), shipment.clone(), missing],
    )
    .await;
    let trace = analytics.trace(&revenue, b"r-1").unwrap();
    let status = |r: &EventRef| {
        trace
            .steps
            .iter()
            .find(|s| s.product == r.product && s.seq == r.seq)
            .map(|s| (s.status.clone(), s.depth))
    };
    assert_eq!(status(&invoice), Some(("verified".into(), 1)));
    assert_eq!(status(&shipment), Some(("verified".into(), 1)));
    assert_eq!(status(&order), Some(("verified".into(), 2)));
    let mut sources: Vec<ProductId> = trace.sources.iter().map(|s| s.product.clone()).collect();
    sources.sort();
    let mut two_upstream = vec![orders.clone(), shipments.clone()];
    two_upstream.sort();
    assert_eq!(sources, two_upstream);
    // A citation this node cannot check is reported, with where to look.
    let unavailable = trace.steps.iter().find(|s| s.seq == 99).unwrap();
    assert_eq!(unavailable.status, "unavailable");
    assert!(unavailable.holders.contains(&sales.peer_id().to_string()));
    assert_eq!(trace.unavailable, 1);

    for n in [sales, billing, logistics, analytics, bystander] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_missing_inputs_and_cycles() {
    let a = node("sales", TCP, vec![]).await;
    let ghost: ProductId = format!(
        "ghost@{}",
        mesh_protocol::SecretKey::from_bytes(&[9; 32]).public()
    )
    .parse()
    .unwrap();
    let first = a.product_id(&"first".parse().unwrap());
    let second = a.product_id(&"second".parse().unwrap());
    let with_inputs = |name: &str, inputs: &[&ProductId]| {
        let mut y = format!("{}inputs:\n", descriptor(name, "sales"));
        for p in inputs {
            y.push_str(&format!("  - {p}\n"));
        }
        y
    };
    a.publish_yaml(&with_inputs("first", &[&second, &ghost]))
        .await
        .unwrap();
    a.publish_yaml(&with_inputs("second", &[&first]))
        .await
        .unwrap();
    let report = a.health(std::time::Duration::from_secs(3600));
    assert!(!report.is_healthy());
    assert_eq!(report.lineage.missing_inputs.len(), 1);
    assert_eq!(report.lineage.missing_inputs[0].input, ghost);
    assert_eq!(
        report.lineage.cycles,
        vec![vec![first.clone(), second.clone()]]
    );
    // The node itself is never stale.
    assert!(report.stale_owners.is_empty());
    a.shutdown().await;
}

async fn append(
    node: &NodeHandle,
    product: &ProductId,
    key: &str,
    causes: Vec<EventRef>,
) -> EventRef {
    let receipt = node
        .append(
            product,
            Bytes::copy_from_slice(key.as_bytes()),
            Operation::Upsert,
            Bytes::from_static(b"{\"amount\":1}"),
            causes,
        )
        .await
        .unwrap();
    EventRef {
        product: product.clone(),
        seq: receipt.seq,
        id: receipt.id,
    }
}

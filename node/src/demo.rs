//! `meshnode demo`: a four-domain mesh on loopback, end to end, in one command.
//!
//! Starts `sales`, `billing`, `logistics` and `analytics` nodes on 127.0.0.1 (real TCP, noise,
//! yamux), publishes a product per domain (`analytics` declares the other three as inputs),
//! shows the catalog reaching every node, subscribes, streams signed events, reads a record
//! from a replica, derives an event that cites its upstream events, audits a replica, and
//! stops every node. Exits non-zero if any step does not happen within its deadline.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use mesh_protocol::{EventRef, Operation, ProductId};

use crate::node::{NodeHandle, NodeOptions, TransportKind};
use crate::store::MemoryStore;
use crate::{NodeConfig, start};

/// Longest wait for any step of the demo.
const STEP_DEADLINE: Duration = Duration::from_secs(15);

fn descriptor(
    name: &str,
    domain: &str,
    description: &str,
    tags: &str,
    fields: &str,
    inputs: &[ProductId],
) -> String {
    let mut yaml = format!(
        "name: {name}\ndomain: {domain}\nowner: {domain}-data@example.com\ndescription: {description}\n\
         tags: [{tags}]\nversion: 1.0.0\nschema:\n  fields:\n{fields}output_ports:\n  - name: changes\n    kind: change-log\n\
         slo:\n  freshness: 5m\n  latency_p99: 500ms\n"
    );
    if !inputs.is_empty() {
        yaml.push_str("inputs:\n");
        for input in inputs {
            yaml.push_str(&format!("  - {input}\n"));
        }
    }
    yaml
}

fn field(name: &str, ty: &str, pii: bool) -> String {
    format!("    - name: {name}\n      type: {ty}\n      pii: {pii}\n")
}

async fn until(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > STEP_DEADLINE {
            bail!("demo step did not complete within {STEP_DEADLINE:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(started.elapsed())
}

async fn domain_node(domain: &str, peers: Vec<libp2p::Multiaddr>) -> anyhow::Result<NodeHandle> {
    let config = NodeConfig {
        domain: domain.into(),
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        peers,
        catalog_sync_interval: Duration::from_secs(1),
        subscription_retry: Duration::from_millis(200),
        ..NodeConfig::default()
    };
    start(NodeOptions {
        config,
        protocol: mesh_protocol::Config::default(),
        transport: TransportKind::Tcp,
        store: Arc::new(MemoryStore::new()),
        key: None,
    })
    .await
    .with_context(|| format!("starting the {domain} node"))
}

async fn upsert(
    node: &NodeHandle,
    product: &ProductId,
    key: &str,
    json: &str,
    causes: Vec<EventRef>,
) -> anyhow::Result<u64> {
    let receipt = node
        .append(
            product,
            Bytes::copy_from_slice(key.as_bytes()),
            Operation::Upsert,
            Bytes::copy_from_slice(json.as_bytes()),
            causes,
        )
        .await?;
    Ok(receipt.seq)
}

/// Runs the demo, printing a tour to `out` (or a JSON summary with `json`).
pub async fn run(out: &mut impl Write, json: bool) -> anyhow::Result<()> {
    let mut say = |text: String| -> anyhow::Result<()> {
        if !json {
            writeln!(out, "{text}")?;
        }
        Ok(())
    };
    say("== Starting four domain nodes on 127.0.0.1 (TCP + noise + yamux)".into())?;
    let sales = domain_node("sales", vec![]).await?;
    let seed = sales.listen_addrs()[0].clone();
    let billing = domain_node("billing", vec![seed.clone()]).await?;
    let logistics = domain_node("logistics", vec![seed.clone()]).await?;
    let analytics = domain_node("analytics", vec![seed]).await?;
    let nodes = [&sales, &billing, &logistics, &analytics];
    for n in nodes {
        say(format!("  {:<10} {}", n.domain(), n.listen_addrs()[0]))?;
    }
    let result = tour(&mut say, &sales, &billing, &logistics, &analytics).await;
    say("\n== Stopping every node".into())?;
    for n in [sales, billing, logistics, analytics] {
        n.shutdown().await;
    }
    let summary = result?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        writeln!(
            out,
            "done: the mesh ran end to end with no broker, catalog server or database"
        )?;
    }
    Ok(())
}

async fn tour(
    say: &mut impl FnMut(String) -> anyhow::Result<()>,
    sales: &NodeHandle,
    billing: &NodeHandle,
    logistics: &NodeHandle,
    analytics: &NodeHandle,
) -> anyhow::Result<serde_json::Value> {
    let nodes = [sales, billing, logistics, analytics];
    say("\n== Each domain publishes a data product (a signed catalog entry, gossiped)".into())?;
    let orders = sales
        .publish_yaml(&descriptor(
            "orders",
            "sales",
            "Every order placed in the web shop, one record per order id.",
            "orders, customers, revenue",
            &(field("order_id", "string", false)
                + &field("customer_email", "string", true)
                + &field("total", "decimal", false)
                + &field("region", "string", false)),
            &[],
        ))
        .await?
        .product()
        .clone();
    let invoices = billing
        .publish_yaml(&descriptor(
            "invoices",
            "billing",
            "Invoices issued to customers, with their payment status.",
            "invoices, customers, payments",
            &(field("invoice_id", "string", false)
                + &field("order_id", "string", false)
                + &field("status", "string", false)),
            std::slice::from_ref(&orders),
        ))
        .await?
        .product()
        .clone();
    let shipments = logistics
        .publish_yaml(&descriptor(
            "shipments",
            "logistics",
            "Parcels shipped for orders, with carrier and delivery state.",
            "shipments, delivery",
            &(field("shipment_id", "string", false)
                + &field("order_id", "string", false)
                + &field("address", "string", true)),
            &[],
        ))
        .await?
        .product()
        .clone();
    let revenue = analytics
        .publish_yaml(&descriptor(
            "revenue-by-region",
            "analytics",
            "Paid and shipped revenue per region, derived from orders, invoices and shipments.",
            "revenue, kpi",
            &(field("region", "string", false) + &field("paid_revenue", "decimal", false)),
            &[orders.clone(), invoices.clone(), shipments.clone()],
        ))
        .await?
        .product()
        .clone();
    for p in [&orders, &invoices, &shipments, &revenue] {
        say(format!("  {p}"))?;
    }

    let took = until("every node holds all four catalog entries", || {
        nodes.iter().all(|n| n.catalog().len() == 4)
    })
    .await?;
    say(format!(
        "\n== The catalog at every node ({} ms to converge)",
        took.as_millis()
    ))?;
    for n in nodes {
        let names: Vec<String> = n
            .catalog()
            .iter()
            .map(|e| format!("{}/{}", e.entry().descriptor.domain, e.product().name()))
            .collect();
        say(format!("  {:<10} knows {}", n.domain(), names.join(", ")))?;
    }
    let entry = analytics.catalog_entry(&revenue).context("revenue entry")?;
    say(format!(
        "  revenue-by-region declares inputs: {}",
        entry
            .entry()
            .descriptor
            .inputs
            .iter()
            .map(|i| i.name().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))?;

    say("\n== analytics subscribes to its three inputs, billing to orders; producers append signed, hash-chained events".into())?;
    for p in [&orders, &invoices, &shipments] {
        analytics.subscribe(p).await?;
    }
    billing.subscribe(&orders).await?;
    let mut upstream = Vec::new();
    for (i, (region, total)) in [("north", "120.00"), ("south", "75.50"), ("north", "42.00")]
        .iter()
        .enumerate()
    {
        let id = format!("o-{}", i + 1);
        upsert(
            sales,
            &orders,
            &id,
            &format!(r#"{{"order_id":"{id}","total":"{total}","region":"{region}"}}"#),
            vec![],
        )
        .await?;
        upsert(
            billing,
            &invoices,
            &format!("inv-{}", i + 1),
            &format!(r#"{{"order_id":"{id}","status":"paid"}}"#),
            vec![],
        )
        .await?;
        upsert(
            logistics,
            &shipments,
            &format!("s-{}", i + 1),
            &format!(r#"{{"order_id":"{id}","state":"delivered"}}"#),
            vec![],
        )
        .await?;
    }
    sales
        .append(
            &orders,
            Bytes::from("o-2"),
            Operation::Delete,
            Bytes::new(),
            vec![],
        )
        .await?;
    say(
        "  sales: 3 orders then a delete of o-2; billing: 3 invoices; logistics: 3 shipments"
            .into(),
    )?;
    let took = until("analytics replicates all three logs", || {
        analytics.head_seq(&orders) == 4
            && analytics.head_seq(&invoices) == 3
            && analytics.head_seq(&shipments) == 3
    })
    .await?;
    say(format!(
        "  analytics holds all 10 events ({} ms after the last append)",
        took.as_millis()
    ))?;

    say("\n== A record fetched from analytics' live replica of sales/orders".into())?;
    let record = analytics
        .get(&orders, b"o-1")?
        .context("o-1 in the replica")?;
    say(format!("  o-1 = {}", String::from_utf8_lossy(&record)))?;
    let deleted = analytics.get(&orders, b"o-2")?;
    say(format!(
        "  o-2 = {}",
        if deleted.is_none() {
            "(deleted)".to_owned()
        } else {
            "still there?".to_owned()
        }
    ))?;

    say("\n== analytics derives an event that cites the upstream events it came from".into())?;
    for p in [&orders, &invoices, &shipments] {
        let events = analytics.events(p, 1, 10)?;
        let first = events.first().context("an upstream event")?;
        upstream.push(EventRef {
            product: p.clone(),
            seq: first.seq,
            id: first.id,
        });
    }
    let seq = upsert(
        analytics,
        &revenue,
        "north",
        r#"{"region":"north","paid_revenue":"162.00"}"#,
        upstream.clone(),
    )
    .await?;
    let derived = analytics.events(&revenue, seq, 1)?;
    for cause in &derived[0].causes {
        say(format!(
            "  cites {} seq {} ({})",
            cause.product.short(),
            cause.seq,
            cause.id.short()
        ))?;
    }

    // analytics and billing announced what they consume in new revisions of their entries;
    // wait until billing's catalog and index have both.
    until("billing sees who consumes what", || {
        let orders_hit = billing
            .search(&crate::search::SearchRequest {
                query: "orders".into(),
                ..Default::default()
            })
            .ok()
            .and_then(|r| r.hits.into_iter().find(|h| h.name == "orders"));
        billing
            .catalog_entry(&revenue)
            .is_some_and(|e| e.entry().consumes.len() == 3)
            && orders_hit.is_some_and(|h| h.holders.len() == 3)
    })
    .await?;
    say(
        "\n== Discovery: logistics asks billing's node over /mesh/search/1 for \"customer orders\""
            .into(),
    )?;
    let found = logistics
        .search_peer(
            billing.peer_id(),
            &crate::search::SearchRequest {
                query: "customer orders".into(),
                limit: 3,
                ..Default::default()
            },
        )
        .await?;
    for (i, hit) in found.hits.iter().enumerate() {
        say(format!(
            "  {}. {}/{} v{} (score {:.2}), log held by {} node(s)",
            i + 1,
            hit.domain,
            hit.name,
            hit.version,
            hit.score,
            hit.holders.len()
        ))?;
    }

    let lineage = billing
        .lineage_graph()
        .walk(&revenue, crate::lineage::Direction::Upstream, 3)?;
    say(
        "\n== Lineage of revenue-by-region, asked at billing (Mermaid: paste into mermaid.live)"
            .into(),
    )?;
    for line in lineage.to_mermaid().lines() {
        say(format!("  {line}"))?;
    }
    let impact = sales.lineage_graph().impact(&orders, 10)?;
    say("\n== Impact: what a change to sales/orders affects".into())?;
    for a in &impact.affected {
        say(format!(
            "  {} hop(s): {}/{} (owner {})",
            a.hops,
            a.domain,
            a.product.name(),
            a.owner
        ))?;
    }

    let trace = analytics.trace(&revenue, b"north")?;
    say("\n== Trace of record \"north\" of revenue-by-region back to its source events".into())?;
    for step in &trace.steps {
        say(format!(
            "  {}{} ({}) seq {}: {}",
            "  ".repeat(step.depth as usize),
            step.product.name(),
            step.product.short(),
            step.seq,
            step.status
        ))?;
    }

    say("\n== The log of sales/orders as analytics holds it, each event re-verified".into())?;
    for e in analytics.events(&orders, 1, 10)? {
        say(format!(
            "  seq {}  {}  {:<6} {:<4} [{}]",
            e.seq,
            e.id.short(),
            e.op,
            e.key,
            e.status
        ))?;
    }
    let audit = analytics.audit(&orders)?;
    say(format!(
        "  audit: {} events, head seq {}, {} live records, {} problems",
        audit.events,
        audit.head_seq,
        audit.records,
        audit.problems.len()
    ))?;
    if !audit.is_clean() {
        bail!(
            "the replica of orders does not audit clean: {:?}",
            audit.problems
        );
    }

    let status = analytics.status()?;
    say(format!(
        "\n== analytics status: {} peers, {} catalog entries, {} subscriptions, lag {}",
        status.peers.len(),
        status.catalog_entries,
        status.subscriptions.len(),
        status.subscriptions.iter().map(|s| s.lag).sum::<u64>()
    ))?;
    Ok(serde_json::json!({
        "nodes": nodes.iter().map(|n| serde_json::json!({"domain": n.domain(), "peer_id": n.peer_id().to_string()})).collect::<Vec<_>>(),
        "products": [orders, invoices, shipments, revenue],
        "replicated_events": 10,
        "record_o1": serde_json::from_slice::<serde_json::Value>(&record)?,
        "derived_causes": upstream,
        "audit_problems": audit.problems.len(),
        "search_hits": found.hits.iter().map(|h| h.product.clone()).collect::<Vec<_>>(),
        "lineage": lineage,
        "impact": impact,
        "trace_sources": trace.sources,
    }))
}

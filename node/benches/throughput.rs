//! Node throughput and latency against the brief's targets, printed as a table.
//!
//!     cargo bench -p mesh-node --bench throughput            # full sizes
//!     cargo bench -p mesh-node --bench throughput -- --quick # small sizes (CI smoke)
//!
//! Every figure is measured end to end through the node's public API, on sled stores in a
//! temporary directory (each commit flushed), and for the loopback rows over real TCP + noise
//! + yamux between two nodes in this process.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mesh_node::hub::{Live, LogHub};
use mesh_node::metrics::Metrics;
use mesh_node::store::SledStore;
use mesh_node::{NodeConfig, NodeHandle, NodeOptions, TransportKind};
use mesh_protocol::{Config, LogHead, Operation, ProductId, ProductName, SecretKey};

struct Row {
    what: String,
    events: u64,
    seconds: f64,
    note: String,
}

fn payload(bytes: usize) -> Bytes {
    Bytes::from(format!(
        "{{\"p\":\"{}\"}}",
        "x".repeat(bytes.saturating_sub(8))
    ))
}

async fn node(dir: &std::path::Path, peers: Vec<libp2p::Multiaddr>, listen: bool) -> NodeHandle {
    let config = NodeConfig {
        domain: "bench".into(),
        listen: if listen {
            vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]
        } else {
            vec![]
        },
        peers,
        ..NodeConfig::default()
    };
    mesh_node::start(NodeOptions {
        config,
        protocol: Config::default(),
        transport: TransportKind::Tcp,
        store: Arc::new(SledStore::open(dir).unwrap()),
        key: None,
    })
    .await
    .unwrap()
}

fn descriptor(name: &str) -> String {
    format!(
        "name: {name}\ndomain: bench\nowner: bench\ndescription: bench\nversion: 1.0.0\n\
         schema:\n  fields:\n    - name: p\n      type: string\n"
    )
}

/// Appends `n` events from `concurrency` tasks; returns the elapsed time.
async fn append_many(
    node: &NodeHandle,
    product: &ProductId,
    n: u64,
    concurrency: u64,
    body: Bytes,
) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (node, product, body) = (node.clone(), product.clone(), body.clone());
            tokio::spawn(async move {
                for i in (t..n).step_by(concurrency as usize) {
                    node.append(
                        &product,
                        Bytes::from(format!("k{i}")),
                        Operation::Upsert,
                        body.clone(),
                        vec![],
                    )
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    started.elapsed()
}

async fn bench_append(n: u64, bytes: usize) -> Row {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path(), vec![], false).await;
    let product = node
        .publish_yaml(&descriptor("p"))
        .await
        .unwrap()
        .product()
        .clone();
    let took = append_many(&node, &product, n, 256, payload(bytes)).await;
    node.shutdown().await;
    Row {
        what: format!("producer append, {bytes} B (encode, hash, sign, durable commit)"),
        events: n,
        seconds: took.as_secs_f64(),
        note: "256 concurrent appenders, group commit".into(),
    }
}

fn bench_ingest(n: u64, bytes: usize, frame: usize) -> Row {
    let key = SecretKey::from_bytes(&[7; 32]);
    let product = ProductId::new(key.public(), ProductName::new("p").unwrap());
    let config = Config::default();
    let mut head = LogHead::empty(product.clone());
    let body = payload(bytes);
    let encoded: Vec<Bytes> = (0..n)
        .map(|i| {
            let e = head
                .next_event(
                    i,
                    Operation::Upsert,
                    Bytes::from(format!("k{i}")),
                    body.clone(),
                    vec![],
                )
                .sign(&key, &config)
                .unwrap();
            head.advance(&e).unwrap();
            e.encoded().clone()
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let hub = LogHub::new(store, Arc::new(config), Arc::new(Metrics::default()));
    let started = Instant::now();
    for chunk in encoded.chunks(frame) {
        let report = hub.ingest(&product, chunk.to_vec(), "bench").unwrap();
        assert_eq!(report.accepted, chunk.len());
    }
    Row {
        what: format!(
            "subscriber ingest, {bytes} B (decode, batch-verify, chain, durable commit, replica)"
        ),
        events: n,
        seconds: started.elapsed().as_secs_f64(),
        note: format!("one thread, frames of {frame}"),
    }
}

async fn pair() -> (NodeHandle, NodeHandle, ProductId, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let producer = node(&dir.path().join("p"), vec![], true).await;
    let subscriber = node(
        &dir.path().join("s"),
        vec![producer.listen_addrs()[0].clone()],
        true,
    )
    .await;
    let product = producer
        .publish_yaml(&descriptor("p"))
        .await
        .unwrap()
        .product()
        .clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while subscriber.catalog_entry(&product).is_none() {
        assert!(Instant::now() < deadline, "catalog did not arrive");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    subscriber.subscribe(&product).await.unwrap();
    while subscriber.status().unwrap().subscriptions[0]
        .source
        .is_none()
    {
        assert!(Instant::now() < deadline, "subscription did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (producer, subscriber, product, dir)
}

async fn bench_loopback(n: u64, bytes: usize) -> Row {
    let (producer, subscriber, product, _dir) = pair().await;
    let started = Instant::now();
    append_many(&producer, &product, n, 256, payload(bytes)).await;
    while subscriber.head_seq(&product) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = started.elapsed();
    producer.shutdown().await;
    subscriber.shutdown().await;
    Row {
        what: format!("producer -> subscriber over loopback libp2p, {bytes} B"),
        events: n,
        seconds: took.as_secs_f64(),
        note: "until the subscriber's replica holds all; both sides durable".into(),
    }
}

async fn bench_latency(rate: u64, seconds: u64, bytes: usize) -> (Row, String) {
    let (producer, subscriber, product, _dir) = pair().await;
    let mut live = subscriber.watch(&product).unwrap();
    let n = rate * seconds;
    let collector = tokio::spawn(async move {
        let mut histogram = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        let mut seen = 0;
        while seen < n {
            match live.recv().await {
                Ok(Live::Events(events)) => {
                    let now = mesh_node::hub::now_micros();
                    for e in events.iter() {
                        histogram
                            .record(now.saturating_sub(e.event().timestamp_micros))
                            .unwrap();
                        seen += 1;
                    }
                }
                Ok(Live::Fork(_)) => {}
                Err(e) => panic!("lost events: {e}"),
            }
        }
        histogram
    });
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let body = payload(bytes);
    let started = Instant::now();
    for i in 0..n {
        tick.tick().await;
        let (p, product, body) = (producer.clone(), product.clone(), body.clone());
        // Appends are issued at the rate, not one after the other's acknowledgement.
        tokio::spawn(async move {
            p.append(
                &product,
                Bytes::from(format!("k{i}")),
                Operation::Upsert,
                body,
                vec![],
            )
            .await
            .unwrap();
        });
    }
    let histogram = tokio::time::timeout(Duration::from_secs(30), collector)
        .await
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    producer.shutdown().await;
    subscriber.shutdown().await;
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let summary = format!(
        "append-to-replica latency at {rate}/s of {bytes} B: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} events)",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        histogram.max() as f64 / 1000.0,
        histogram.len()
    );
    (
        Row {
            what: format!("steady {rate}/s of {bytes} B over loopback"),
            events: n,
            seconds: took.as_secs_f64(),
            note: format!(
                "p99 {:.2} ms (producer sign+commit, transfer, verify+commit)",
                ms(0.99)
            ),
        },
        summary,
    )
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 20 } else { 1 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    runtime.block_on(async {
        rows.push(bench_append(50_000 / scale, 200).await);
        rows.push(bench_append(50_000 / scale, 1024).await);
        rows.push(bench_ingest(100_000 / scale, 200, 256));
        rows.push(bench_ingest(100_000 / scale, 1024, 256));
        rows.push(bench_loopback(50_000 / scale, 1024).await);
        let (row, summary) = bench_latency(1000, if quick { 1 } else { 5 }, 1024).await;
        rows.push(row);
        notes.push(summary);
    });
    println!("| benchmark | events | seconds | events/s | notes |");
    println!("| --- | ---: | ---: | ---: | --- |");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} | {:.0} | {} |",
            r.what,
            r.events,
            r.seconds,
            r.events as f64 / r.seconds,
            r.note
        );
    }
    for n in notes {
        println!("\n{n}");
    }
}

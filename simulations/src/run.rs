//! Running a scenario with real nodes: the mesh node's own code, its libp2p stack over the
//! simulated network, in this process.
//!
//! Phases: start every node (each dials its bootstrap neighbours), warm up, publish every
//! product, wait for the catalog to reach everyone, subscribe, wait for the subscriptions to be
//! served, run the planned workload and faults on the wall clock, then wait (at most `settle`)
//! until every node holds the latest catalog and every subscriber the owner's log head, and
//! measure.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use libp2p::PeerId;
use libp2p::multiaddr::Protocol;
use mesh_node::hub::{Live, now_micros};
use mesh_node::metrics::OriginLabel;
use mesh_node::store::{MemoryStore, SledStore, Store};
use mesh_node::{NodeConfig, NodeHandle, NodeOptions, TransportKind};
use mesh_protocol::{
    CatalogEntry, Operation, ProductId, ProductName, SecretKey, VerifiedCatalogEntry,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::baseline::Rogue;
use crate::evil::{ForgingStore, Kept};
use crate::measure::{self, NetSnapshot, Recorder};
use crate::net::SimNet;
use crate::plan::{Plan, What, base_link};
use crate::report::{
    Bandwidth, EventReport, FaultReport, HopLatency, Memory, Percentiles, Report, Samples,
    TopologyReport,
};
use crate::scenario::{InitialCatalog, Scenario, Stack, StoreKind};

/// A finished run: the report and the samples its plots are drawn from.
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    pub samples: Samples,
}

/// Runs a scenario with `seed`. `progress` shows a progress bar on stderr.
pub async fn run(scenario: &Scenario, seed: u64, progress: bool) -> anyhow::Result<Outcome> {
    scenario.check().map_err(|e| anyhow::anyhow!("{e}"))?;
    let bar = if progress {
        let bar = ProgressBar::new(1);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg:<28} [{bar:40}] {pos}/{len}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };
    let outcome = match scenario.stack {
        Stack::Mesh => MeshRun::new(scenario, seed, bar.clone())?.run().await,
        stack @ (Stack::StockGossipsub | Stack::NodeGossipsub) => {
            crate::baseline::run(scenario, seed, stack, bar.clone()).await
        }
    };
    bar.finish_and_clear();
    outcome
}

pub(crate) fn build_label() -> String {
    if cfg!(debug_assertions) {
        "debug".into()
    } else {
        "release".into()
    }
}

/// The descriptor of a simulated product.
pub(crate) fn descriptor(name: &str, domain: &str, revision_note: u64) -> String {
    format!(
        "name: {name}\ndomain: {domain}\nowner: {domain}-team@example.com\n\
         description: Simulated product {name} of the {domain} domain (update {revision_note}).\n\
         tags: [{domain}, simulated]\nversion: 1.0.{revision_note}\n\
         schema:\n  fields:\n    - name: id\n      type: string\n    - name: amount\n      type: decimal\n"
    )
}

/// The entry the owner of product `p` signs for `revision`: what both stacks gossip, and what a
/// preloaded catalog holds.
pub(crate) fn sign_entry(
    plan: &Plan,
    products: &[ProductId],
    keys: &[SecretKey],
    p: usize,
    revision: u64,
    note: u64,
    consumes: Vec<ProductId>,
) -> anyhow::Result<VerifiedCatalogEntry> {
    let protocol = mesh_protocol::Config::default();
    let owner = plan.products[p].owner;
    let yaml = descriptor(
        &plan.products[p].name,
        &format!("d{}", plan.domains[owner]),
        note,
    );
    let descriptor = mesh_protocol::Descriptor::from_yaml(&yaml, &protocol)
        .map_err(|e| anyhow::anyhow!("descriptor: {e}"))?;
    CatalogEntry {
        product: products[p].clone(),
        revision,
        timestamp_micros: now_micros(),
        descriptor,
        consumes,
    }
    .sign(&keys[owner], &protocol)
    .map_err(|e| anyhow::anyhow!("sign: {e}"))
}

pub(crate) fn peer_id_of(seed: &[u8; 32]) -> anyhow::Result<PeerId> {
    Ok(libp2p::identity::Keypair::ed25519_from_bytes(*seed)?
        .public()
        .to_peer_id())
}

/// Hop count of each subscription `(node, product)` at one moment.
type Hops = HashMap<(usize, usize), u32>;

struct Slot {
    handle: Option<NodeHandle>,
    watchers: Vec<JoinHandle<()>>,
}

struct Twin {
    /// `None` once the twin stopped; its store is kept for the forgery check.
    handle: Option<NodeHandle>,
    store: Arc<MemoryStore>,
}

struct MeshRun {
    scenario: Scenario,
    plan: Plan,
    net: SimNet,
    bar: ProgressBar,
    keys: Vec<SecretKey>,
    peer_ids: Vec<PeerId>,
    node_of_peer: HashMap<PeerId, usize>,
    products: Vec<ProductId>,
    product_index: Arc<HashMap<ProductId, usize>>,
    stores: Vec<Arc<dyn Store>>,
    forging_store: Option<Arc<ForgingStore>>,
    _dirs: Option<tempfile::TempDir>,
    slots: Vec<tokio::sync::Mutex<Slot>>,
    rec: Arc<Recorder>,
    /// Highest seq each product's owner acknowledged.
    owner_head: Vec<AtomicU64>,
    appended: AtomicU64,
    skipped: AtomicU64,
    append_errors: AtomicU64,
    updates: AtomicU64,
    publish_errors: AtomicU64,
    /// Last genuine entry bytes of each product, material for forged floods.
    last_entry: Mutex<Vec<Option<Bytes>>>,
    faults: Mutex<Vec<FaultReport>>,
    twins: Mutex<HashMap<usize, Twin>>,
    /// Hop counts `(node, product) -> hops` as of each snapshot.
    hop_snapshots: Mutex<Vec<(Instant, Hops)>>,
    rogue: Mutex<Option<Rogue>>,
    t0: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MeshRun {
    fn new(scenario: &Scenario, seed: u64, bar: ProgressBar) -> anyhow::Result<Arc<Self>> {
        let plan = Plan::new(scenario, seed);
        let n = plan.nodes;
        // One extra endpoint for the rogue flooder.
        let net = SimNet::new(n + 1, base_link(scenario), seed);
        let keys: Vec<SecretKey> = plan.keys.iter().map(SecretKey::from_bytes).collect();
        let peer_ids: Vec<PeerId> = plan
            .keys
            .iter()
            .map(peer_id_of)
            .collect::<anyhow::Result<_>>()?;
        let node_of_peer = peer_ids.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        let products: Vec<ProductId> = plan
            .products
            .iter()
            .map(|p| {
                Ok(ProductId::new(
                    keys[p.owner].public(),
                    ProductName::new(&p.name).map_err(|e| anyhow::anyhow!("{e}"))?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        let product_index = Arc::new(
            products
                .iter()
                .enumerate()
                .map(|(i, p)| (p.clone(), i))
                .collect(),
        );
        let mut forging_store = None;
        let dirs = match scenario.node.store {
            StoreKind::Sled => Some(tempfile::tempdir()?),
            StoreKind::Memory => None,
        };
        let mut stores: Vec<Arc<dyn Store>> = Vec::with_capacity(n);
        for (i, key) in keys.iter().enumerate() {
            if plan.forger == Some(i) {
                let s = Arc::new(ForgingStore::new(key.public()));
                forging_store = Some(s.clone());
                stores.push(s);
            } else if let Some(dir) = &dirs {
                stores.push(Arc::new(SledStore::open(
                    &dir.path().join(format!("n{i}")),
                )?));
            } else {
                stores.push(Arc::new(MemoryStore::new()));
            }
        }
        let p = products.len();
        Ok(Arc::new(Self {
            scenario: scenario.clone(),
            net,
            bar,
            keys,
            peer_ids,
            node_of_peer,
            product_index,
            stores,
            forging_store,
            _dirs: dirs,
            slots: (0..n)
                .map(|_| {
                    tokio::sync::Mutex::new(Slot {
                        handle: None,
                        watchers: Vec::new(),
                    })
                })
                .collect(),
            rec: Arc::new(Recorder::new(n, p)),
            owner_head: (0..p).map(|_| AtomicU64::new(0)).collect(),
            appended: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            append_errors: AtomicU64::new(0),
            updates: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            last_entry: Mutex::new(vec![None; p]),
            faults: Mutex::new(Vec::new()),
            twins: Mutex::new(HashMap::new()),
            hop_snapshots: Mutex::new(Vec::new()),
            rogue: Mutex::new(None),
            t0: Mutex::new(None),
            products,
            plan,
        }))
    }

    /// Shows a phase on the progress bar and in the log (`RUST_LOG=mesh_sim=info`).
    fn phase(&self, what: &'static str) {
        measure::phase(&self.bar, what);
    }

    fn addr(&self, node: usize) -> libp2p::Multiaddr {
        SimNet::address(node).with(Protocol::P2p(self.peer_ids[node]))
    }

    fn config(&self, node: usize, peers: &[usize]) -> NodeConfig {
        let s = &self.scenario.node;
        NodeConfig {
            domain: format!("d{}", self.plan.domains[node]),
            listen: vec![SimNet::address(node)],
            peers: peers.iter().map(|&p| self.addr(p)).collect(),
            catalog_sync_interval: s.catalog_sync_interval,
            subscription_retry: s.subscription_retry,
            idle_timeout: s.idle_timeout,
            peers_max: s.peers_max,
            peers_wanted: s.peers_wanted,
            gossip_degree: s.gossip_degree,
            ..NodeConfig::default()
        }
    }

    async fn start_node(
        self: &Arc<Self>,
        node: usize,
        peers: &[usize],
        store: Arc<dyn Store>,
    ) -> anyhow::Result<NodeHandle> {
        mesh_node::node::start_with_transport(
            NodeOptions {
                config: self.config(node, peers),
                protocol: Scenario::protocol(),
                transport: TransportKind::Memory,
                store: Arc::new(Kept(store)),
                key: Some(self.keys[node].clone()),
            },
            self.net.transport(node),
        )
        .await
    }

    /// Starts the watchers of a node that just started: catalog arrivals and the events of
    /// every product it subscribes to.
    fn watch(self: &Arc<Self>, node: usize, handle: &NodeHandle) -> Vec<JoinHandle<()>> {
        let mut watchers = Vec::new();
        let mut changes = handle.catalog_changes();
        let rec = self.rec.clone();
        let index = self.product_index.clone();
        let own_key = self.keys[node].public();
        watchers.push(tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(entry) => {
                        if let Some(&p) = index.get(entry.product()) {
                            // Revisions the node signs itself (announcing what it consumes)
                            // must reach everyone too.
                            if entry.product().owner() == &own_key {
                                rec.signed_by_owner(p, entry.revision());
                            }
                            rec.arrived(node, p, entry.revision(), std::time::Instant::now());
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        rec.samples_missed.fetch_add(n, Ordering::Relaxed);
                        rec.needs_resync[node].store(true, Ordering::Relaxed);
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        }));
        for &p in &self.plan.subscriptions[node] {
            let Ok(mut live) = handle.watch(&self.products[p]) else {
                continue;
            };
            let rec = self.rec.clone();
            watchers.push(tokio::spawn(async move {
                let mut last_seq: Option<u64> = None;
                loop {
                    match live.recv().await {
                        Ok(Live::Events(events)) => {
                            let now = now_micros();
                            let at = std::time::Instant::now();
                            for e in events.iter() {
                                if last_seq.is_some_and(|last| e.seq() <= last) {
                                    rec.duplicates_applied.fetch_add(1, Ordering::Relaxed);
                                }
                                last_seq = Some(last_seq.map_or(e.seq(), |l| l.max(e.seq())));
                                let ts = e.event().timestamp_micros;
                                rec.delivered(node, p, now.saturating_sub(ts) as f64 / 1000.0, at);
                            }
                        }
                        Ok(Live::Fork(_)) => {}
                        Err(RecvError::Lagged(n)) => {
                            rec.samples_missed.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(RecvError::Closed) => return,
                    }
                }
            }));
        }
        watchers
    }

    async fn handle(&self, node: usize) -> Option<NodeHandle> {
        self.slots[node].lock().await.handle.clone()
    }

    async fn run(self: Arc<Self>) -> anyhow::Result<Outcome> {
        let started = Instant::now();
        let n = self.plan.nodes;
        let mut report = Report {
            scenario: self.scenario.name.clone(),
            description: self.scenario.description.clone(),
            stack: Stack::Mesh.label().into(),
            seed: self.plan.seed,
            plan_fingerprint: self.plan.fingerprint(),
            nodes: n,
            build: build_label(),
            ..Report::default()
        };
        let rss_before = measure::rss_mib();
        if self.scenario.workload.initial_catalog == InitialCatalog::Preloaded {
            self.phase("preloading the catalog");
            report.catalog.preloaded_entries = self.preload()?;
        }

        // ---- start -------------------------------------------------------------------------
        self.phase("starting nodes");
        self.bar.set_length(n as u64);
        for i in 0..n {
            let lower: Vec<usize> = self
                .plan
                .neighbours(i)
                .into_iter()
                .filter(|&j| j < i)
                .collect();
            let handle = self.start_node(i, &lower, self.stores[i].clone()).await?;
            let watchers = self.watch(i, &handle);
            let mut slot = self.slots[i].lock().await;
            slot.handle = Some(handle);
            slot.watchers = watchers;
            self.bar.inc(1);
            if (i + 1) % 100 == 0 {
                tracing::info!(
                    started = i + 1,
                    rss_mib = measure::rss_mib() as u64,
                    cpu_s = format_args!("{:.1}", measure::cpu_seconds()),
                    connections_opened = self.net.connections_opened(n),
                    "nodes started"
                );
            }
        }
        report.timings.start_nodes_s = started.elapsed().as_secs_f64();
        self.phase("warm-up");
        // From the warm-up to the workload's end: the load of started nodes with nothing to
        // do, which the workload's CPU is measured above, then the workload's.
        let runtime_log = {
            let net = self.net.clone();
            measure::log_runtime_load(move || (net.connections_opened(n), net.live_connections()))
        };
        tokio::time::sleep(self.scenario.warmup).await;
        report.timings.warmup_s = self.scenario.warmup.as_secs_f64();
        let rss_started = measure::rss_mib();

        // ---- publish -----------------------------------------------------------------------
        self.phase("publishing the catalog");
        let publish_start = Instant::now();
        let mut publishing = JoinSet::new();
        if self.scenario.workload.initial_catalog == InitialCatalog::Published {
            for p in 0..self.products.len() {
                let this = self.clone();
                publishing.spawn(async move { this.publish(p, 0, true).await });
            }
        }
        while publishing.join_next().await.is_some() {}
        let everything: Vec<u64> = self.rec.latest();
        let all: Vec<usize> = (0..n).collect();
        report.timings.initial_catalog_s = self
            .wait_until("initial catalog everywhere", self.scenario.settle, || {
                self.caught_up(&all, &everything, None)
            })
            .await
            .map(|_| publish_start.elapsed().as_secs_f64());

        // ---- subscribe ---------------------------------------------------------------------
        self.phase("subscribing");
        let subscribing = Instant::now();
        let mut total_subscriptions = 0;
        let preloaded = self.scenario.workload.initial_catalog == InitialCatalog::Preloaded;
        for node in 0..n {
            let Some(handle) = self.handle(node).await else {
                continue;
            };
            if preloaded {
                // The preloaded entries announce every planned subscription: record them all
                // before the first `subscribe` announces consumption again, as for a node
                // configured with all of them, so that no entry is signed anew.
                for &p in &self.plan.subscriptions[node] {
                    self.stores[node].subscription_put(&self.products[p])?;
                }
            }
            for &p in &self.plan.subscriptions[node] {
                total_subscriptions += 1;
                if let Err(e) = handle.subscribe(&self.products[p]).await {
                    tracing::warn!(node, "subscribe failed: {e}");
                }
            }
        }
        report.workload.subscriptions = total_subscriptions;
        report.timings.subscriptions_live_s = self
            .wait_until("subscriptions served", self.scenario.settle, || async {
                let mut served = 0;
                for node in 0..n {
                    if let Some(h) = self.handle(node).await {
                        served += h.metrics().streams_served.get();
                    }
                }
                served >= total_subscriptions as i64
            })
            .await
            .map(|_| subscribing.elapsed().as_secs_f64());
        self.snapshot_hops().await;

        // ---- workload ----------------------------------------------------------------------
        let before = NetSnapshot::take(&self.net);
        let t0 = Instant::now();
        *lock(&self.t0) = Some(t0);
        let duration = self.scenario.duration;
        self.phase("workload");
        self.bar.set_length(duration.as_millis() as u64);
        self.bar.set_position(0);
        let mut actions = JoinSet::new();
        let snapshots = {
            let this = self.clone();
            // status() clones the catalog: at scale, snapshot less often.
            let every = Duration::from_secs_f64((n as f64 / 100.0).clamp(1.0, 10.0));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    this.snapshot_hops().await;
                }
            })
        };
        let mut update_count = 0u64;
        for action in self.plan.actions.clone() {
            tokio::time::sleep_until(t0 + action.at).await;
            self.bar.set_position(t0.elapsed().as_millis() as u64);
            let this = self.clone();
            if let What::Update { .. } = action.what {
                update_count += 1;
            }
            let note = update_count;
            actions.spawn(async move { this.act(action.what, note).await });
            // Reap finished actions so the set stays small.
            while actions.try_join_next().is_some() {}
        }
        tokio::time::sleep_until(t0 + duration).await;
        self.bar.set_position(duration.as_millis() as u64);
        snapshots.abort();
        drop(runtime_log);
        let workload_end = Instant::now();
        let after = NetSnapshot::take(&self.net);
        report.timings.workload_s = workload_end.duration_since(t0).as_secs_f64();
        self.phase("finishing faults");
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while actions.join_next().await.is_some() {}
        })
        .await;

        // ---- settle ------------------------------------------------------------------------
        self.phase("settling");
        let settle_start = Instant::now();
        report.timings.settle_s = self
            .wait_until(
                "convergence after the workload",
                self.scenario.settle,
                || self.converged(),
            )
            .await
            .map(|_| settle_start.elapsed().as_secs_f64());
        self.snapshot_hops().await;
        let rss_end = measure::rss_mib();

        // ---- measure -----------------------------------------------------------------------
        self.phase("measuring");
        let mut samples = Samples::default();
        self.measure_catalog(&mut report, &mut samples, t0, workload_end, &before, &after)
            .await;
        self.measure_events(&mut report, &mut samples).await;
        self.measure_network(&mut report, &mut samples, &before, &after, t0, workload_end)
            .await;
        report.memory = Memory {
            rss_before_mib: rss_before,
            rss_after_start_mib: rss_started,
            rss_end_mib: rss_end,
            per_node_kib: (rss_started - rss_before) * 1024.0 / n as f64,
        };
        report.workload.appends_planned = self.plan.count(|w| matches!(w, What::Append { .. }));
        report.workload.appended = self.appended.load(Ordering::Relaxed);
        report.workload.appends_skipped_owner_down = self.skipped.load(Ordering::Relaxed);
        report.workload.append_errors = self.append_errors.load(Ordering::Relaxed);
        report.workload.catalog_updates = self.updates.load(Ordering::Relaxed);
        report.workload.owner_announcements = self.rec.owner_announcements();
        report.workload.publish_errors = self.publish_errors.load(Ordering::Relaxed);
        report.faults = lock(&self.faults).clone();
        report.faults.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        checks(&mut report);

        // ---- stop --------------------------------------------------------------------------
        self.phase("stopping nodes");
        self.stop_all().await;
        report.timings.total_s = started.elapsed().as_secs_f64();
        Ok(Outcome { report, samples })
    }

    /// Writes the first revision of every product into every node's store, announcing what
    /// its owner will subscribe to (so that subscribing, which records every planned
    /// subscription first in this mode, signs nothing new), and has every node's catalog read
    /// back once the nodes run. Returns how many entries.
    fn preload(&self) -> anyhow::Result<usize> {
        let consumes_max = mesh_protocol::Config::default().consumes_max;
        let mut entries = Vec::with_capacity(self.products.len());
        for p in 0..self.products.len() {
            let owner = self.plan.products[p].owner;
            let mut consumes: Vec<ProductId> = self.plan.subscriptions[owner]
                .iter()
                .map(|&q| self.products[q].clone())
                .collect();
            consumes.sort();
            consumes.dedup();
            consumes.truncate(consumes_max);
            let entry = sign_entry(&self.plan, &self.products, &self.keys, p, 1, 0, consumes)?;
            lock(&self.last_entry)[p] = Some(entry.encoded().clone());
            entries.push((entry.product().clone(), entry.encoded().clone()));
        }
        // Every store shares the same bytes.
        for store in &self.stores {
            store.catalog_put_many(&entries)?;
        }
        self.rec.preloaded((0..entries.len()).map(|p| (p, 1)));
        Ok(entries.len())
    }

    /// Publishes product `p` (the next revision) and records it.
    async fn publish(self: &Arc<Self>, p: usize, note: u64, initial: bool) {
        let owner = self.plan.products[p].owner;
        let Some(handle) = self.handle(owner).await else {
            return;
        };
        let yaml = descriptor(
            &self.plan.products[p].name,
            &format!("d{}", self.plan.domains[owner]),
            note,
        );
        let at = std::time::Instant::now();
        match handle.publish_yaml(&yaml).await {
            Ok(entry) => {
                self.rec.published(p, entry.revision(), at, initial);
                self.rec.hold(owner, p, entry.revision());
                lock(&self.last_entry)[p] = Some(entry.encoded().clone());
                if !initial {
                    self.updates.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                tracing::warn!(product = p, "publish failed: {e}");
                self.publish_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn append(&self, p: usize, key: u32) {
        let owner = self.plan.products[p].owner;
        let Some(handle) = self.handle(owner).await else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let payload_bytes = self.scenario.workload.payload_bytes;
        let fill = "x".repeat(payload_bytes.saturating_sub(24));
        let payload = format!(r#"{{"k":{key},"pad":"{fill}"}}"#);
        let result = handle
            .append(
                &self.products[p],
                Bytes::from(format!("k{key}")),
                Operation::Upsert,
                Bytes::from(payload),
                vec![],
            )
            .await;
        match result {
            Ok(receipt) => {
                self.appended.fetch_add(1, Ordering::Relaxed);
                self.owner_head[p].fetch_max(receipt.seq, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(product = p, "append failed: {e}");
                self.append_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn since_t0(&self) -> f64 {
        lock(&self.t0).map_or(0.0, |t0| t0.elapsed().as_secs_f64())
    }

    fn fault(&self, kind: &str, detail: String) -> usize {
        let mut faults = lock(&self.faults);
        faults.push(FaultReport {
            kind: kind.into(),
            at_s: self.since_t0(),
            detail,
            catalog_converged_after_s: None,
            converged_after_s: None,
        });
        faults.len() - 1
    }

    /// Carries out one planned action.
    async fn act(self: Arc<Self>, what: What, note: u64) {
        match what {
            What::Append { product, key } => self.append(product, key).await,
            What::Update { product } => self.publish(product, note, false).await,
            What::Leave { node, crash } => {
                let index = self.fault(
                    if crash { "crash" } else { "leave" },
                    format!("node {node} goes down"),
                );
                let stopping = Instant::now();
                let mut slot = self.slots[node].lock().await;
                if let Some(handle) = slot.handle.take() {
                    for w in slot.watchers.drain(..) {
                        w.abort();
                    }
                    if crash {
                        self.net.cut_node(node);
                    }
                    handle.shutdown().await;
                }
                drop(slot);
                lock(&self.faults)[index].detail = format!(
                    "node {node} goes down (stopped in {:.2} s)",
                    stopping.elapsed().as_secs_f64()
                );
            }
            What::Rejoin { node } => self.rejoin(node).await,
            What::Partition { sides } => {
                let cut = sides.iter().filter(|&&s| s == 1).count();
                self.net.partition(sides);
                self.fault(
                    "partition",
                    format!("{cut} of {} nodes cut off", self.plan.nodes),
                );
            }
            What::Heal => self.heal().await,
            What::ForgeStart { products } => self.forge(products).await,
            What::ForkStart { product } => self.fork_start(product).await,
            What::ForkEnd { product } => self.fork_end(product).await,
            What::FloodStart { peers, rate } => self.flood_start(peers, rate).await,
            What::FloodEnd => {
                let rogue = lock(&self.rogue).take();
                if let Some(rogue) = rogue {
                    let (sent, peers) = rogue.stop().await;
                    self.fault(
                        "flood end",
                        format!("{sent} forged entries published to up to {peers} peers"),
                    );
                }
            }
            What::SetLink(link) => {
                let detail = format!(
                    "delay {:?}, jitter {:?}, loss {:.1}%",
                    link.delay,
                    link.jitter,
                    link.loss * 100.0
                );
                self.net.set_link(link);
                self.fault("link", detail);
            }
        }
    }

    async fn rejoin(self: &Arc<Self>, node: usize) {
        let mut slot = self.slots[node].lock().await;
        if slot.handle.is_some() {
            return;
        }
        let neighbours = self.plan.neighbours(node);
        let targets = self.targets();
        match self
            .start_node(node, &neighbours, self.stores[node].clone())
            .await
        {
            Ok(handle) => {
                slot.watchers = self.watch(node, &handle);
                // What the store held before the restart is held now.
                for e in handle.catalog() {
                    if let Some(&p) = self.product_index.get(e.product()) {
                        self.rec.hold(node, p, e.revision());
                    }
                }
                slot.handle = Some(handle);
            }
            Err(e) => {
                self.fault("rejoin", format!("node {node} failed to restart: {e}"));
                return;
            }
        }
        drop(slot);
        let index = self.fault("rejoin", format!("node {node} restarts from its store"));
        self.converge_from(index, vec![node], targets);
    }

    async fn heal(self: &Arc<Self>) {
        self.net.heal();
        let targets = self.targets();
        let index = self.fault("heal", "the partition heals".into());
        // Reconnect the bootstrap links that the partition cut, as a node redials its
        // configured peers (the node itself only dials them at start).
        for &(a, b) in &self.plan.edges {
            if let Some(h) = self.handle(b).await
                && !h.connected_peers().contains(&self.peer_ids[a])
            {
                let _ = h.dial(self.addr(a)).await;
            }
        }
        self.converge_from(index, self.honest(), targets);
    }

    /// The forging relay connects to every subscriber of the target products.
    async fn forge(self: &Arc<Self>, products: Vec<usize>) {
        let Some(forger) = self.plan.forger else {
            return;
        };
        let Some(handle) = self.handle(forger).await else {
            return;
        };
        let mut victims: Vec<usize> = products
            .iter()
            .flat_map(|&p| self.plan.subscribers(p))
            .filter(|&s| s != forger)
            .collect();
        victims.sort_unstable();
        victims.dedup();
        for &v in &victims {
            let _ = handle.dial(self.addr(v)).await;
        }
        self.fault(
            "forge",
            format!(
                "node {forger} relays tampered events of {} product(s) to {} subscribers; their owners leave",
                products.len(),
                victims.len()
            ),
        );
    }

    async fn fork_start(self: &Arc<Self>, product: usize) {
        let owner = self.plan.products[product].owner;
        let pid = self.products[product].clone();
        let mut slot = self.slots[owner].lock().await;
        let Some(handle) = slot.handle.take() else {
            return;
        };
        // A fork needs a history to contradict.
        if handle.head_seq(&pid) == 0
            && let Ok(r) = handle
                .append(
                    &pid,
                    Bytes::from("k0"),
                    Operation::Upsert,
                    Bytes::from("{}"),
                    vec![],
                )
                .await
        {
            self.appended.fetch_add(1, Ordering::Relaxed);
            self.owner_head[product].fetch_max(r.seq, Ordering::Relaxed);
        }
        let held = handle.head_seq(&pid);
        for w in slot.watchers.drain(..) {
            w.abort();
        }
        handle.shutdown().await;
        let store = Arc::new(MemoryStore::new());
        let twin = match self
            .start_node(owner, &self.plan.neighbours(owner), store.clone())
            .await
        {
            Ok(t) => t,
            Err(e) => {
                self.fault("fork", format!("the twin failed to start: {e}"));
                return;
            }
        };
        drop(slot);
        let learnt = self
            .wait_until(
                "the twin learns its entry",
                Duration::from_secs(20),
                || async { twin.catalog_entry(&pid).is_some() },
            )
            .await;
        let mut written = 0;
        if learnt.is_some() {
            for i in 0..held + 2 {
                if twin
                    .append(
                        &pid,
                        Bytes::from(format!("fork-{i}")),
                        Operation::Upsert,
                        Bytes::from(r#"{"branch":"twin"}"#),
                        vec![],
                    )
                    .await
                    .is_ok()
                {
                    written += 1;
                }
            }
        }
        let forked_at = Instant::now();
        lock(&self.twins).insert(
            product,
            Twin {
                handle: Some(twin),
                store,
            },
        );
        let index = self.fault(
            "fork",
            format!(
                "a twin of node {owner} writes {written} conflicting events over the {held} held"
            ),
        );
        // Converged: every subscriber holds a fork proof of the product.
        let this = self.clone();
        tokio::spawn(async move {
            let subscribers = this.plan.subscribers(product);
            let done = this
                .wait_until("fork proofs everywhere", this.scenario.settle, || async {
                    for &s in &subscribers {
                        let Some(h) = this.handle(s).await else {
                            continue;
                        };
                        if h.forks(Some(&this.products[product]))
                            .map_or(true, |f| f.is_empty())
                        {
                            return false;
                        }
                    }
                    true
                })
                .await;
            lock(&this.faults)[index].converged_after_s =
                done.map(|_| forked_at.elapsed().as_secs_f64());
        });
    }

    async fn fork_end(self: &Arc<Self>, product: usize) {
        let twin = lock(&self.twins)
            .get_mut(&product)
            .and_then(|t| t.handle.take());
        if let Some(twin) = twin {
            twin.shutdown().await;
        }
        let owner = self.plan.products[product].owner;
        self.rejoin(owner).await;
    }

    async fn flood_start(self: &Arc<Self>, peers: Vec<usize>, rate: f64) {
        let material: Vec<Bytes> = lock(&self.last_entry).iter().flatten().cloned().collect();
        let addrs = peers.iter().map(|&p| self.addr(p)).collect();
        match Rogue::start(
            &self.net,
            self.plan.nodes,
            addrs,
            material,
            rate,
            self.plan.seed,
        )
        .await
        {
            Ok(rogue) => {
                *lock(&self.rogue) = Some(rogue);
                self.fault(
                    "flood",
                    format!(
                        "a rogue peer on {} nodes gossips forged entries at {rate}/s",
                        peers.len()
                    ),
                );
            }
            Err(e) => {
                self.fault("flood", format!("the rogue failed to start: {e}"));
            }
        }
    }

    /// What "caught up" means from now on: the latest revisions and the owners' heads.
    fn targets(&self) -> (Vec<u64>, Vec<u64>) {
        (
            self.rec.latest(),
            self.owner_head
                .iter()
                .map(|h| h.load(Ordering::Relaxed))
                .collect(),
        )
    }

    /// Records in fault `index` how long until `nodes` caught up with `targets`.
    fn converge_from(
        self: &Arc<Self>,
        index: usize,
        nodes: Vec<usize>,
        targets: (Vec<u64>, Vec<u64>),
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let catalog = this
                .wait_until("catalog caught up", this.scenario.settle, || {
                    this.caught_up(&nodes, &targets.0, None)
                })
                .await;
            lock(&this.faults)[index].catalog_converged_after_s =
                catalog.map(|_| start.elapsed().as_secs_f64());
            let done = this
                .wait_until("logs caught up", this.scenario.settle, || {
                    this.caught_up(&nodes, &targets.0, Some(&targets.1))
                })
                .await;
            lock(&this.faults)[index].converged_after_s =
                done.map(|_| start.elapsed().as_secs_f64());
        });
    }

    /// Whether every node of `nodes` that is up holds `revisions` of the catalog and, for
    /// each product it subscribes to, at least `heads`.
    async fn caught_up(&self, nodes: &[usize], revisions: &[u64], heads: Option<&[u64]>) -> bool {
        for &node in nodes {
            let Some(handle) = self.handle(node).await else {
                continue;
            };
            if self.rec.needs_resync[node].swap(false, Ordering::Relaxed) {
                for e in handle.catalog() {
                    if let Some(&p) = self.product_index.get(e.product()) {
                        self.rec.hold(node, p, e.revision());
                    }
                }
            }
            if !self.rec.holds_all(node, revisions) {
                return false;
            }
            if let Some(heads) = heads {
                for &p in &self.plan.subscriptions[node] {
                    if handle.head_seq(&self.products[p]) < heads[p] {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// The nodes whose state is checked: all but the forging relay, whose own subscriptions
    /// break on its lying store.
    fn honest(&self) -> Vec<usize> {
        (0..self.plan.nodes)
            .filter(|&i| Some(i) != self.plan.forger)
            .collect()
    }

    /// Every honest node holds the latest catalog and every subscriber the owner's head.
    async fn converged(&self) -> bool {
        let (revisions, heads) = self.targets();
        self.caught_up(&self.honest(), &revisions, Some(&heads))
            .await
    }

    /// Polls `condition` every 50 ms for at most `limit`; the time it took, or `None`.
    async fn wait_until<F, Fut>(
        &self,
        what: &str,
        limit: Duration,
        mut condition: F,
    ) -> Option<Duration>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        loop {
            if condition().await {
                return Some(start.elapsed());
            }
            if start.elapsed() > limit {
                tracing::warn!("not reached within {limit:?}: {what}");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Records each subscription's hop count (relays between it and the owner) now.
    async fn snapshot_hops(&self) {
        let mut source: HashMap<(usize, usize), usize> = HashMap::new();
        for node in 0..self.plan.nodes {
            let Some(h) = self.handle(node).await else {
                continue;
            };
            let Ok(status) = h.status() else { continue };
            for sub in status.subscriptions {
                let (Some(&p), Some(src)) = (
                    self.product_index.get(&sub.product),
                    sub.source.and_then(|s| s.parse::<PeerId>().ok()),
                ) else {
                    continue;
                };
                if let Some(&from) = self.node_of_peer.get(&src) {
                    source.insert((node, p), from);
                }
            }
        }
        // 0: the chain of sources ends before the owner; u32::MAX: it loops.
        let mut hops = HashMap::new();
        for &(node, p) in source.keys() {
            let owner = self.plan.products[p].owner;
            let mut at = node;
            let mut count = 0;
            let mut result = 0;
            while let Some(&next) = source.get(&(at, p)) {
                count += 1;
                if next == owner {
                    result = count;
                    break;
                }
                if count > 16 {
                    result = u32::MAX;
                    break;
                }
                at = next;
            }
            hops.insert((node, p), result);
        }
        lock(&self.hop_snapshots).push((Instant::now(), hops));
    }

    async fn measure_catalog(
        &self,
        report: &mut Report,
        samples: &mut Samples,
        t0: Instant,
        end: Instant,
        before: &NetSnapshot,
        after: &NetSnapshot,
    ) {
        let n = self.plan.nodes;
        let up: Vec<usize> = {
            let mut up = Vec::new();
            for node in 0..n {
                if self.handle(node).await.is_some() {
                    up.push(node);
                }
            }
            up
        };
        let owner_of = |p: usize| Some(self.plan.products[p].owner);
        let (initial, _, _) = measure::convergence(&self.rec, &up, owner_of, |p| p.initial);
        let (updates, delivery, to100) =
            measure::convergence(&self.rec, &up, owner_of, |p| !p.initial);
        samples.catalog_delivery_ms = delivery;
        samples.catalog_to_100pct_ms = to100;
        report.catalog.initial = initial;
        report.catalog.updates = updates;
        let deliveries =
            measure::arrivals_between(&self.rec, t0.into_std(), end.into_std(), owner_of);
        report.catalog.gossip = before.gossip(after, n, deliveries);
        let config = mesh_protocol::Config::default();
        let mut forged = 0;
        let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
        let (mut late, mut regossiped) = (0, 0);
        for node in up {
            let Some(h) = self.handle(node).await else {
                continue;
            };
            // Checked again here, independently of the node: every entry it holds must be
            // signed by its product's owner (the node also re-publishes its own entries, e.g.
            // when what it consumes changes, so "genuine" is not only what meshsim published).
            forged += h
                .catalog()
                .iter()
                .filter(|e| {
                    VerifiedCatalogEntry::decode_and_verify(e.encoded().clone(), &config)
                        .map_or(true, |v| {
                            v.product().owner() != e.product().owner() || v.id() != e.id()
                        })
                })
                .count() as u64;
            for (name, reason, value) in measure::scrape(h.metrics()) {
                if name == "mesh_catalog_rejected_total" && value > 0.0 {
                    *rejected.entry(reason).or_default() += value as u64;
                }
                match name.as_str() {
                    "mesh_gossip_verdicts_late_total" => late += value as u64,
                    "mesh_catalog_regossiped_total" => regossiped += value as u64,
                    _ => {}
                }
            }
        }
        report.catalog.forged_entries_accepted = forged;
        report.catalog.rejected_by_reason = rejected;
        report.catalog.verdicts_late = Some(late);
        report.catalog.regossiped = Some(regossiped);
    }

    async fn measure_events(&self, report: &mut Report, samples: &mut Samples) {
        let mut e = EventReport::default();
        let twins = lock(&self.twins)
            .iter()
            .map(|(p, t)| (*p, t.store.clone()))
            .collect::<HashMap<_, _>>();
        let owner_ids = |p: usize| -> Vec<mesh_protocol::EventId> {
            let owner = self.plan.products[p].owner;
            ids_in(self.stores[owner].as_ref(), &self.products[p])
        };
        let mut owner_cache: HashMap<usize, Vec<mesh_protocol::EventId>> = HashMap::new();
        for node in 0..self.plan.nodes {
            let handle = self.handle(node).await;
            for &p in &self.plan.subscriptions[node] {
                if self.plan.forger == Some(node) {
                    continue;
                }
                let genuine = owner_cache.entry(p).or_insert_with(|| owner_ids(p)).clone();
                let expected = genuine.len() as u64;
                let Some(handle) = &handle else {
                    e.expected += expected;
                    e.lost += expected;
                    continue;
                };
                let held = handle
                    .events(&self.products[p], 1, usize::MAX / 2)
                    .unwrap_or_default();
                let mut signed: HashSet<mesh_protocol::EventId> = genuine.iter().copied().collect();
                if let Some(twin) = twins.get(&p) {
                    signed.extend(ids_in(twin.as_ref(), &self.products[p]));
                }
                let forgeries = held
                    .iter()
                    .filter(|v| v.status != "verified" || !signed.contains(&v.id))
                    .count() as u64;
                e.forgeries_accepted += forgeries;
                let matching = held
                    .iter()
                    .zip(&genuine)
                    .take_while(|(v, g)| v.id == **g)
                    .count() as u64;
                if (held.len() as u64) > matching {
                    e.diverged_subscriptions += 1;
                }
                e.expected += expected;
                e.delivered += matching.min(expected);
                e.lost += expected.saturating_sub(matching);
                if handle
                    .forks(Some(&self.products[p]))
                    .is_ok_and(|f| !f.is_empty())
                {
                    e.fork_proofs_held += 1;
                }
            }
            if let Some(handle) = &handle {
                for (name, reason, value) in measure::scrape(handle.metrics()) {
                    match name.as_str() {
                        "mesh_events_rejected_total" if value > 0.0 => {
                            *e.rejected_by_reason.entry(reason).or_default() += value as u64;
                        }
                        "mesh_events_duplicate_total" => {
                            e.duplicate_receipts_skipped += value as u64;
                        }
                        _ => {}
                    }
                }
            }
        }
        e.duplicates_applied = self.rec.duplicates_applied.load(Ordering::Relaxed);
        e.samples_missed = self.rec.samples_missed.load(Ordering::Relaxed);
        e.forged_served = self
            .forging_store
            .as_ref()
            .map_or(0, |s| s.forged.load(Ordering::Relaxed));
        // Latency, by the hop count of the subscription at the time of delivery.
        let snapshots = lock(&self.hop_snapshots).clone();
        let deliveries = lock(&self.rec.deliveries).clone();
        let mut all = Vec::with_capacity(deliveries.len());
        let mut by_hop: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for d in &deliveries {
            all.push(d.latency_ms);
            let at = Instant::from_std(d.at);
            let snapshot = snapshots
                .iter()
                .rev()
                .find(|(t, _)| *t <= at)
                .or(snapshots.first());
            let hops = match snapshot.and_then(|(_, h)| h.get(&(d.node, d.product))) {
                None => "no source seen".to_owned(),
                Some(0) => "source not traced to owner".to_owned(),
                Some(&u32::MAX) => "sources in a loop".to_owned(),
                Some(h) => h.to_string(),
            };
            by_hop.entry(hops).or_default().push(d.latency_ms);
        }
        e.latency_ms = Percentiles::of_ms(&all);
        e.by_hop = by_hop
            .iter()
            .map(|(hops, v)| HopLatency {
                hops: hops.clone(),
                latency_ms: Percentiles::of_ms(v),
            })
            .collect();
        samples.event_latency_by_hop = by_hop;
        report.events = e;
    }

    async fn measure_network(
        &self,
        report: &mut Report,
        samples: &mut Samples,
        before: &NetSnapshot,
        after: &NetSnapshot,
        t0: Instant,
        end: Instant,
    ) {
        let n = self.plan.nodes;
        let now = NetSnapshot::take(&self.net);
        let window = end.duration_since(t0).as_secs_f64().max(1e-3);
        let per_node: Vec<f64> = (0..n)
            .map(|i| after.wire_sent[i].saturating_sub(before.wire_sent[i]) as f64 / window)
            .collect();
        let mut by_protocol = BTreeMap::new();
        for m in now.sent_by_proto.iter().take(n) {
            for (k, v) in m {
                *by_protocol.entry(k.clone()).or_insert(0) += v;
            }
        }
        let deliveries_in_window = lock(&self.rec.deliveries)
            .iter()
            .filter(|d| d.at >= t0.into_std() && d.at <= end.into_std())
            .count() as f64;
        let appended_window = self.appended.load(Ordering::Relaxed) as f64;
        let owner_of = |p: usize| Some(self.plan.products[p].owner);
        let catalog_deliveries =
            measure::arrivals_between(&self.rec, t0.into_std(), end.into_std(), owner_of) as f64;
        let log_bytes = before.proto_delta(after, n, "log streams") as f64;
        let gossip_bytes = before.proto_delta(after, n, "gossipsub") as f64;
        let wire_window = before.delta(after, n, |s| &s.wire_sent) as f64;
        report.bandwidth = Bandwidth {
            wire_sent_bytes: now.wire_sent.iter().take(n).sum(),
            per_node_sent_bytes_per_s: Percentiles::of_ms(&per_node),
            by_protocol_bytes: by_protocol,
            log_bytes_per_delivered_event: (deliveries_in_window > 0.0)
                .then(|| log_bytes / deliveries_in_window),
            gossip_bytes_per_catalog_delivery: (catalog_deliveries > 0.0)
                .then(|| gossip_bytes / catalog_deliveries),
            wire_bytes_per_appended_event: (appended_window > 0.0)
                .then(|| wire_window / appended_window),
        };
        samples.sent_by_node = now.sent_by_proto.iter().take(n).cloned().collect();
        // Topology as it ended up.
        let mut peers = Vec::new();
        let mut dialled_by = BTreeMap::new();
        for node in 0..n {
            if let Some(h) = self.handle(node).await {
                peers.push(h.connected_peers().len());
                for origin in ["node", "protocol"] {
                    let opened = h
                        .metrics()
                        .connections_opened
                        .get_or_create(&OriginLabel { origin })
                        .get();
                    *dialled_by.entry(origin.to_string()).or_insert(0) += opened;
                }
            }
        }
        let net = &self.net;
        report.topology = TopologyReport {
            kind: format!("{:?}", self.scenario.topology.kind).to_lowercase(),
            bootstrap_links: self.plan.edges.len(),
            mean_bootstrap_degree: 2.0 * self.plan.edges.len() as f64 / n as f64,
            live_connections: self.net.live_connections(),
            mean_peers: peers.iter().sum::<usize>() as f64 / peers.len().max(1) as f64,
            min_peers: peers.iter().copied().min().unwrap_or(0),
            max_peers: peers.iter().copied().max().unwrap_or(0),
            isolated_nodes: peers.iter().filter(|&&p| p == 0).count(),
            connections_opened: net.connections_opened(n),
            dialled_by,
        };
    }

    async fn stop_all(&self) {
        if let Some(rogue) = lock(&self.rogue).take() {
            drop(rogue);
        }
        let twins: Vec<NodeHandle> = lock(&self.twins)
            .values_mut()
            .filter_map(|t| t.handle.take())
            .collect();
        lock(&self.twins).clear();
        let mut handles = Vec::new();
        for slot in &self.slots {
            let mut slot = slot.lock().await;
            for w in slot.watchers.drain(..) {
                w.abort();
            }
            if let Some(h) = slot.handle.take() {
                handles.push(h);
            }
        }
        handles.extend(twins);
        let mut stopping = JoinSet::new();
        for h in handles {
            stopping.spawn(h.shutdown());
        }
        while stopping.join_next().await.is_some() {}
    }
}

/// The ids of a stored log, in order.
fn ids_in(store: &dyn Store, product: &ProductId) -> Vec<mesh_protocol::EventId> {
    let config = mesh_protocol::Config::default();
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let Ok(page) = store.log_range(product, from, 1024) else {
            break;
        };
        if page.is_empty() {
            break;
        }
        from += page.len() as u64;
        for bytes in page {
            match mesh_protocol::SignedEvent::decode(bytes, &config) {
                Ok(e) => out.push(e.id()),
                Err(_) => return out,
            }
        }
    }
    out
}

/// The checks every run reports; a failed one fails `meshsim run` and the tests.
pub(crate) fn checks(report: &mut Report) {
    let c = report.catalog.clone();
    let e = report.events.clone();
    let t = report.timings.clone();
    report.check(
        "catalog converged",
        c.initial.missing == 0 && c.updates.missing == 0 && t.settle_s.is_some(),
        format!(
            "{} initial and {} updated entries; missing (node, entry) pairs: {} and {}; settled: {}",
            c.initial.entries,
            c.updates.entries,
            c.initial.missing,
            c.updates.missing,
            t.settle_s.map_or("no".into(), |s| format!("in {s:.2} s"))
        ),
    );
    if report.stack == Stack::Mesh.label() {
        report.check(
            "no loss",
            e.lost == 0,
            format!(
                "{} of {} expected events delivered",
                e.delivered, e.expected
            ),
        );
        report.check(
            "no duplicates applied",
            e.duplicates_applied == 0,
            format!(
                "{} applied twice ({} duplicate copies received and skipped)",
                e.duplicates_applied, e.duplicate_receipts_skipped
            ),
        );
        report.check(
            "no forgeries accepted",
            e.forgeries_accepted == 0 && c.forged_entries_accepted == 0,
            format!(
                "{} forged events and {} forged catalog entries held by honest nodes",
                e.forgeries_accepted, c.forged_entries_accepted
            ),
        );
    }
}

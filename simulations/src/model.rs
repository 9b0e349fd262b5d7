//! A deterministic model run of the protocol core on a virtual clock.
//!
//! The real stack cannot run on a virtual clock (gossipsub's and the swarm's timers read the
//! wall clock), so this run drives `mesh-protocol` alone — the catalog merge rule, the
//! anti-entropy summary and its wire messages (`CatalogDigest`, `CatalogSyncRequest`,
//! `BucketResponse`), log heads and chain checks (`LogHead::advance`, `SignedEvent::verify`) —
//! from a seeded discrete-event loop: messages are delayed, lost, or dropped across a
//! partition; thousands of nodes fit in seconds. Entries and events are really signed, and
//! every byte string a node receives is decoded and verified (the result is cached per
//! distinct byte string: the model simulates the network, not the CPU).
//!
//! Nodes gossip new entries to a few random neighbours (push), run anti-entropy with a random
//! neighbour on a timer, and pull their subscriptions' logs from a random holder, some of
//! which are liars that serve tampered events. After every step the invariants are checked;
//! the first violation stops the run with the seed that replays it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use mesh_protocol::sync::{BucketResponse, CatalogDigest, CatalogSyncRequest};
use mesh_protocol::{
    CatalogEntry, CatalogSummary, Config, Descriptor, EntryId, EventId, LogHead, Merge, Operation,
    ProductId, ProductName, SecretKey, SignedEvent, VerifiedCatalogEntry, VerifiedEvent, merge,
};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::report::Percentiles;

/// A model scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelScenario {
    pub name: String,
    pub seed: u64,
    pub nodes: usize,
    /// Neighbours per node in the random overlay.
    pub degree: usize,
    /// Neighbours a node pushes a new entry to.
    pub fanout: usize,
    pub subscriptions_per_node: usize,
    /// Catalog updates per second (virtual), whole mesh, during `duration`.
    pub catalog_update_rate: f64,
    /// Events per second (virtual), whole mesh.
    pub event_rate: f64,
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Longest virtual time after `duration` for everything to converge.
    #[serde(with = "humantime_serde")]
    pub quiet: Duration,
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub pull_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    pub loss: f64,
    /// Nodes that serve tampered events.
    pub liars: usize,
    /// A partition of this share of the nodes from `partition_at` to `heal_at` (0: none).
    pub partition_fraction: f64,
    #[serde(with = "humantime_serde")]
    pub partition_at: Duration,
    #[serde(with = "humantime_serde")]
    pub heal_at: Duration,
}

impl Default for ModelScenario {
    fn default() -> Self {
        Self {
            name: "model".into(),
            seed: 1,
            nodes: 100,
            degree: 8,
            fanout: 4,
            subscriptions_per_node: 2,
            catalog_update_rate: 10.0,
            event_rate: 50.0,
            duration: Duration::from_secs(20),
            quiet: Duration::from_secs(60),
            sync_interval: Duration::from_secs(2),
            pull_interval: Duration::from_millis(500),
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(10),
            loss: 0.01,
            liars: 0,
            partition_fraction: 0.0,
            partition_at: Duration::from_secs(5),
            heal_at: Duration::from_secs(12),
        }
    }
}

impl ModelScenario {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }
}

/// What a model run measured (virtual time).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ModelReport {
    pub name: String,
    pub seed: u64,
    pub nodes: usize,
    pub steps: u64,
    pub invariant_checks: u64,
    pub messages_sent: u64,
    pub messages_lost: u64,
    pub messages_cut: u64,
    pub entries_published: usize,
    /// Virtual time from publish to the entry at 100% of nodes, over entries.
    pub catalog_to_100pct_ms: Percentiles,
    pub catalog_delivery_ms: Percentiles,
    /// Entries that arrived by anti-entropy rather than gossip.
    pub catalog_by_sync: u64,
    pub catalog_by_gossip: u64,
    pub events_appended: u64,
    pub event_delivery_ms: Percentiles,
    pub forged_events_rejected: u64,
    /// Virtual time from the heal until every node held the same catalog and every subscriber
    /// the owner's head (None: no partition, or not within `quiet`).
    pub converged_after_heal_ms: Option<f64>,
    /// Virtual time from the end of the workload until everything converged.
    pub converged_after_end_ms: Option<f64>,
    pub wall_s: f64,
}

/// An invariant that did not hold, with the seed that replays it.
#[derive(Debug, thiserror::Error)]
#[error("invariant violated at t={at_ms} ms (seed {seed}): {what}")]
pub struct Violation {
    pub seed: u64,
    pub at_ms: f64,
    pub what: String,
}

#[derive(Clone, Debug)]
enum Msg {
    Gossip(usize),
    SyncDigestRequest(Bytes),
    SyncDigest(Bytes),
    SyncBucketRequest(Bytes),
    SyncBucket(Bytes),
    Pull { product: usize, from_seq: u64 },
    Frame { product: usize, events: Vec<usize> },
}

#[derive(Debug)]
enum Step {
    Deliver { from: usize, to: usize, msg: Msg },
    SyncTimer(usize),
    PullTimer(usize),
    Append(usize),
    Update(usize),
    Partition,
    Heal,
}

// Ordered maps only: iteration order must not depend on a hasher's random state, or the same
// seed would not replay the same run.
struct Node {
    catalog: BTreeMap<ProductId, VerifiedCatalogEntry>,
    summary: CatalogSummary,
    /// Subscribed product -> (head, ids held in order).
    logs: BTreeMap<usize, (LogHead, Vec<EventId>)>,
    liar: bool,
}

struct Model {
    s: ModelScenario,
    config: Config,
    rng: ChaCha20Rng,
    now_us: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    steps: Vec<Option<Step>>,
    counter: u64,
    keys: Vec<SecretKey>,
    products: Vec<ProductId>,
    product_of: HashMap<ProductId, usize>,
    neighbours: Vec<Vec<usize>>,
    nodes: Vec<Node>,
    /// Every byte string sent; messages refer to them by index.
    blobs: Vec<Bytes>,
    blob_index: HashMap<[u8; 32], usize>,
    verified_entries: HashMap<usize, Option<VerifiedCatalogEntry>>,
    verified_events: HashMap<usize, Option<VerifiedEvent>>,
    /// Owner's log per product: the event blobs, in order, and their ids.
    owner_logs: Vec<(LogHead, Vec<usize>, Vec<EventId>)>,
    tampered: HashMap<usize, usize>,
    genuine_entries: HashSet<EntryId>,
    revision: Vec<u64>,
    published_at: HashMap<(usize, u64), u64>,
    arrivals: HashMap<(usize, u64), Vec<u64>>,
    sides: Option<Vec<u8>>,
    heal_us: Option<u64>,
    report: ModelReport,
    event_latencies: Vec<f64>,
    appended_at: HashMap<EventId, u64>,
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// Runs a model scenario with `seed`.
pub fn run(s: &ModelScenario, seed: u64) -> Result<ModelReport, Violation> {
    let wall = std::time::Instant::now();
    let mut model = Model::new(s.clone(), seed);
    let result = model.run();
    let mut report = model.finish();
    report.wall_s = wall.elapsed().as_secs_f64();
    result.map(|()| report)
}

impl Model {
    fn new(s: ModelScenario, seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let n = s.nodes.max(2);
        let keys: Vec<SecretKey> = (0..n)
            .map(|_| SecretKey::from_bytes(&rng.random()))
            .collect();
        let products: Vec<ProductId> = (0..n)
            .map(|i| {
                let name = ProductName::new(format!("p{i}")).unwrap_or_else(|_| unreachable_name());
                ProductId::new(keys[i].public(), name)
            })
            .collect();
        let product_of = products
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i))
            .collect();
        // A random overlay: a ring for connectivity plus random chords, symmetric.
        let mut neighbours: Vec<HashSet<usize>> = vec![HashSet::new(); n];
        for i in 0..n {
            let j = (i + 1) % n;
            neighbours[i].insert(j);
            neighbours[j].insert(i);
        }
        for i in 0..n {
            while neighbours[i].len() < s.degree.min(n - 1) {
                let j = rng.random_range(0..n);
                if j != i {
                    neighbours[i].insert(j);
                    neighbours[j].insert(i);
                }
            }
        }
        let mut neighbours: Vec<Vec<usize>> = neighbours
            .into_iter()
            .map(|s| {
                let mut v: Vec<usize> = s.into_iter().collect();
                v.sort_unstable();
                v
            })
            .collect();
        neighbours.iter_mut().for_each(|v| v.dedup());
        let liars: HashSet<usize> = (0..s.liars.min(n))
            .map(|_| rng.random_range(0..n))
            .collect();
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let mut logs = BTreeMap::new();
            while logs.len() < s.subscriptions_per_node.min(n - 1) {
                let p = rng.random_range(0..n);
                if p != i && !logs.contains_key(&p) {
                    logs.insert(p, (LogHead::empty(products[p].clone()), Vec::new()));
                }
            }
            nodes.push(Node {
                catalog: BTreeMap::new(),
                summary: CatalogSummary::new(),
                logs,
                liar: liars.contains(&i),
            });
        }
        let owner_logs = products
            .iter()
            .map(|p| (LogHead::empty(p.clone()), Vec::new(), Vec::new()))
            .collect();
        Self {
            report: ModelReport {
                name: s.name.clone(),
                seed,
                nodes: n,
                ..ModelReport::default()
            },
            s,
            config: Config::default(),
            rng,
            now_us: 0,
            queue: BinaryHeap::new(),
            steps: Vec::new(),
            counter: 0,
            keys,
            products,
            product_of,
            neighbours,
            nodes,
            blobs: Vec::new(),
            blob_index: HashMap::new(),
            verified_entries: HashMap::new(),
            verified_events: HashMap::new(),
            owner_logs,
            tampered: HashMap::new(),
            genuine_entries: HashSet::new(),
            revision: vec![0; n],
            published_at: HashMap::new(),
            arrivals: HashMap::new(),
            sides: None,
            heal_us: None,
            event_latencies: Vec::new(),
            appended_at: HashMap::new(),
        }
    }

    fn schedule(&mut self, at_us: u64, step: Step) {
        self.counter += 1;
        self.steps.push(Some(step));
        self.queue
            .push(Reverse((at_us, self.counter, self.steps.len() - 1)));
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        self.report.messages_sent += 1;
        if let Some(sides) = &self.sides
            && sides[from] != sides[to]
        {
            self.report.messages_cut += 1;
            return;
        }
        if self.s.loss > 0.0 && self.rng.random_bool(self.s.loss.min(1.0)) {
            self.report.messages_lost += 1;
            return;
        }
        let jitter = us(self.s.jitter);
        let delay = us(self.s.delay)
            + if jitter > 0 {
                self.rng.random_range(0..=jitter)
            } else {
                0
            };
        self.schedule(self.now_us + delay, Step::Deliver { from, to, msg });
    }

    /// The index of a byte string, the same for equal strings, so that a node verifies each
    /// distinct string once (the cache) however often it travels.
    fn blob(&mut self, bytes: Bytes) -> usize {
        let hash = *blake3::hash(&bytes).as_bytes();
        if let Some(&index) = self.blob_index.get(&hash) {
            return index;
        }
        self.blobs.push(bytes);
        self.blob_index.insert(hash, self.blobs.len() - 1);
        self.blobs.len() - 1
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.report.seed,
            at_ms: self.now_us as f64 / 1000.0,
            what,
        }
    }

    fn run(&mut self) -> Result<(), Violation> {
        let n = self.nodes.len();
        // Initial catalog: every node publishes its product at t=0.
        for p in 0..n {
            self.publish(p)?;
        }
        for i in 0..n {
            let offset = self.rng.random_range(0..us(self.s.sync_interval).max(1));
            self.schedule(offset, Step::SyncTimer(i));
            let offset = self.rng.random_range(0..us(self.s.pull_interval).max(1));
            self.schedule(offset, Step::PullTimer(i));
        }
        let end = us(self.s.duration);
        for (rate, update) in [
            (self.s.event_rate, false),
            (self.s.catalog_update_rate, true),
        ] {
            if rate <= 0.0 {
                continue;
            }
            let mut t = 0.0;
            loop {
                let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
                t += -u.ln() / rate;
                let at = (t * 1e6) as u64;
                if at >= end {
                    break;
                }
                let p = self.rng.random_range(0..n);
                self.schedule(
                    at,
                    if update {
                        Step::Update(p)
                    } else {
                        Step::Append(p)
                    },
                );
            }
        }
        if self.s.partition_fraction > 0.0 {
            self.schedule(us(self.s.partition_at), Step::Partition);
            self.schedule(us(self.s.heal_at), Step::Heal);
        }
        let deadline = end + us(self.s.quiet);
        let mut next_convergence_check = 0;
        while let Some(Reverse((at, _, index))) = self.queue.pop() {
            if at > deadline {
                break;
            }
            self.now_us = at;
            let Some(step) = self.steps[index].take() else {
                continue;
            };
            self.step(step)?;
            self.report.steps += 1;
            // Checking the whole mesh is O(nodes x products): only while waiting for it (after
            // a heal, after the workload), and every 50 ms of virtual time, which is then the
            // resolution of the convergence times.
            let waiting = (self.heal_us.is_some() && self.report.converged_after_heal_ms.is_none())
                || at >= end;
            if !waiting || at < next_convergence_check {
                continue;
            }
            next_convergence_check = at + 50_000;
            if let Some(heal) = self.heal_us
                && self.report.converged_after_heal_ms.is_none()
                && self.converged()
            {
                self.report.converged_after_heal_ms = Some((at - heal) as f64 / 1000.0);
            }
            if at >= end && self.report.converged_after_end_ms.is_none() && self.converged() {
                self.report.converged_after_end_ms = Some((at - end) as f64 / 1000.0);
                if self.heal_us.is_none() || self.report.converged_after_heal_ms.is_some() {
                    break;
                }
            }
        }
        Ok(())
    }

    fn step(&mut self, step: Step) -> Result<(), Violation> {
        match step {
            Step::Deliver { from, to, msg } => self.deliver(from, to, msg),
            Step::SyncTimer(i) => {
                if let Some(&peer) = self.neighbours[i].choose(&mut self.rng) {
                    let root = Some(self.nodes[i].summary.root());
                    let request = CatalogSyncRequest::Digest { root }.encode();
                    self.send(i, peer, Msg::SyncDigestRequest(request));
                }
                let next = self.now_us + us(self.s.sync_interval);
                self.schedule(next, Step::SyncTimer(i));
                Ok(())
            }
            Step::PullTimer(i) => {
                let products: Vec<usize> = self.nodes[i].logs.keys().copied().collect();
                for p in products {
                    // Ask the owner, or any neighbour that holds the log.
                    let mut holders: Vec<usize> = self.neighbours[i]
                        .iter()
                        .copied()
                        .filter(|&j| self.nodes[j].logs.contains_key(&p))
                        .collect();
                    holders.push(p);
                    if let Some(&src) = holders.choose(&mut self.rng) {
                        let from_seq = self.nodes[i].logs[&p].0.seq() + 1;
                        self.send(
                            i,
                            src,
                            Msg::Pull {
                                product: p,
                                from_seq,
                            },
                        );
                    }
                }
                let next = self.now_us + us(self.s.pull_interval);
                self.schedule(next, Step::PullTimer(i));
                Ok(())
            }
            Step::Append(p) => self.append(p),
            Step::Update(p) => self.publish(p),
            Step::Partition => {
                let n = self.nodes.len();
                let cut = ((n as f64 * self.s.partition_fraction).round() as usize).clamp(1, n - 1);
                let mut sides = vec![0u8; n];
                let mut order: Vec<usize> = (0..n).collect();
                rand::seq::SliceRandom::shuffle(&mut order[..], &mut self.rng);
                for &i in &order[..cut] {
                    sides[i] = 1;
                }
                self.sides = Some(sides);
                Ok(())
            }
            Step::Heal => {
                self.sides = None;
                self.heal_us = Some(self.now_us);
                Ok(())
            }
        }
    }

    fn publish(&mut self, p: usize) -> Result<(), Violation> {
        self.revision[p] += 1;
        let revision = self.revision[p];
        let yaml = format!(
            "name: p{p}\ndomain: d{}\nowner: o\ndescription: model product revision {revision}\nversion: 1.0.0\nschema:\n  fields:\n    - name: id\n      type: string\n",
            p % 16
        );
        let descriptor = Descriptor::from_yaml(&yaml, &self.config)
            .map_err(|e| self.violation(format!("descriptor: {e}")))?;
        let entry = CatalogEntry {
            product: self.products[p].clone(),
            revision,
            timestamp_micros: self.now_us,
            descriptor,
            consumes: Vec::new(),
        }
        .sign(&self.keys[p], &self.config)
        .map_err(|e| self.violation(format!("sign: {e}")))?;
        self.genuine_entries.insert(entry.id());
        self.published_at.insert((p, revision), self.now_us);
        self.report.entries_published += 1;
        let blob = self.blob(entry.encoded().clone());
        self.verified_entries.insert(blob, Some(entry.clone()));
        self.accept_entry(p, entry, false)?;
        self.push_gossip(p, blob, None);
        Ok(())
    }

    fn push_gossip(&mut self, at: usize, blob: usize, except: Option<usize>) {
        let targets: Vec<usize> = self.neighbours[at]
            .choose_multiple(&mut self.rng, self.s.fanout + usize::from(except.is_some()))
            .copied()
            .filter(|&j| Some(j) != except)
            .take(self.s.fanout)
            .collect();
        for j in targets {
            self.send(at, j, Msg::Gossip(blob));
        }
    }

    fn append(&mut self, p: usize) -> Result<(), Violation> {
        let (head, _, _) = &self.owner_logs[p];
        let event = head
            .next_event(
                self.now_us,
                Operation::Upsert,
                Bytes::from(format!("k{}", self.rng.random_range(0..100))),
                Bytes::from_static(br#"{"v":1}"#),
                vec![],
            )
            .sign(&self.keys[p], &self.config)
            .map_err(|e| self.violation(format!("sign event: {e}")))?;
        if let Err(e) = self.owner_logs[p].0.advance(&event) {
            return Err(self.violation(format!("the owner's own chain: {e}")));
        }
        let id = event.id();
        let blob = self.blob(event.encoded().clone());
        let (_, blobs, ids) = &mut self.owner_logs[p];
        ids.push(id);
        blobs.push(blob);
        self.verified_events.insert(blob, Some(event));
        self.appended_at.insert(id, self.now_us);
        self.report.events_appended += 1;
        Ok(())
    }

    fn entry_of(&mut self, blob: usize) -> Option<VerifiedCatalogEntry> {
        if let Some(v) = self.verified_entries.get(&blob) {
            return v.clone();
        }
        let v =
            VerifiedCatalogEntry::decode_and_verify(self.blobs[blob].clone(), &self.config).ok();
        self.verified_entries.insert(blob, v.clone());
        v
    }

    fn event_of(&mut self, blob: usize) -> Option<VerifiedEvent> {
        if let Some(v) = self.verified_events.get(&blob) {
            return v.clone();
        }
        let v = SignedEvent::decode(self.blobs[blob].clone(), &self.config)
            .ok()
            .and_then(|e| e.verify().ok());
        self.verified_events.insert(blob, v.clone());
        v
    }

    /// Merges a verified entry at node `i`; returns whether it changed the catalog.
    fn accept_entry(
        &mut self,
        i: usize,
        entry: VerifiedCatalogEntry,
        by_sync: bool,
    ) -> Result<bool, Violation> {
        self.report.invariant_checks += 1;
        if !self.genuine_entries.contains(&entry.id()) {
            return Err(self.violation(format!("node {i} verified an entry no owner signed")));
        }
        let node = &mut self.nodes[i];
        let before = node.catalog.get(entry.product()).map(|e| e.revision());
        let keep = match merge(node.catalog.get(entry.product()), &entry) {
            Merge::New | Merge::Newer { .. } => true,
            Merge::Equivocation { keep_incoming, .. } => keep_incoming,
            Merge::Stale { .. } | Merge::Duplicate => false,
        };
        if keep {
            node.summary.insert(&entry);
            node.catalog.insert(entry.product().clone(), entry.clone());
        }
        // Invariants: revisions never go back; the summary agrees with the catalog.
        let after = node.catalog.get(entry.product()).map(|e| e.revision());
        if after < before || node.summary.revision(entry.product()) != after {
            return Err(self.violation(format!(
                "node {i}: catalog revision {before:?} -> {after:?}, summary says {:?}",
                self.nodes[i].summary.revision(entry.product())
            )));
        }
        if node.summary.len() != node.catalog.len() {
            return Err(self.violation(format!("node {i}: summary and catalog sizes differ")));
        }
        if keep {
            let p = self.product_of[entry.product()];
            if let Some(at) = self.published_at.get(&(p, entry.revision())) {
                let latency = self.now_us - at;
                self.arrivals
                    .entry((p, entry.revision()))
                    .or_default()
                    .push(latency);
            }
            if by_sync {
                self.report.catalog_by_sync += 1;
            } else {
                self.report.catalog_by_gossip += 1;
            }
        }
        Ok(keep)
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Msg) -> Result<(), Violation> {
        match msg {
            Msg::Gossip(blob) => {
                let Some(entry) = self.entry_of(blob) else {
                    return Ok(());
                };
                if self.accept_entry(to, entry, false)? {
                    self.push_gossip(to, blob, Some(from));
                }
            }
            Msg::SyncDigestRequest(bytes) => {
                let CatalogSyncRequest::Digest { root } =
                    CatalogSyncRequest::decode(bytes, &self.config)
                        .map_err(|e| self.violation(format!("digest request decode: {e}")))?
                else {
                    return Ok(());
                };
                let digest = self.nodes[to].summary.digest_for(root.as_ref()).encode();
                self.send(to, from, Msg::SyncDigest(digest));
            }
            Msg::SyncDigest(bytes) => {
                let theirs = CatalogDigest::decode(bytes, &self.config)
                    .map_err(|e| self.violation(format!("digest decode: {e}")))?;
                for bucket in self.nodes[to].summary.differing_buckets(&theirs) {
                    let have = self.nodes[to].summary.versions_in(bucket);
                    let request = CatalogSyncRequest::Bucket { bucket, have }.encode();
                    self.send(to, from, Msg::SyncBucketRequest(request));
                }
            }
            Msg::SyncBucketRequest(bytes) => {
                let CatalogSyncRequest::Bucket { bucket, have } =
                    CatalogSyncRequest::decode(bytes, &self.config)
                        .map_err(|e| self.violation(format!("bucket request decode: {e}")))?
                else {
                    return Ok(());
                };
                let node = &self.nodes[to];
                let wanted: HashSet<[u8; 32]> =
                    node.summary.newer_than(bucket, &have).into_iter().collect();
                let entries: Vec<Bytes> = node
                    .catalog
                    .values()
                    .filter(|e| wanted.contains(&e.product().digest()))
                    .map(|e| e.encoded().clone())
                    .collect();
                let response = BucketResponse {
                    entries,
                    more: false,
                }
                .encode();
                self.send(to, from, Msg::SyncBucket(response));
            }
            Msg::SyncBucket(bytes) => {
                let response = BucketResponse::decode(bytes, &self.config)
                    .map_err(|e| self.violation(format!("bucket response decode: {e}")))?;
                for entry in response.entries {
                    let blob = self.blob(entry);
                    if let Some(entry) = self.entry_of(blob) {
                        self.accept_entry(to, entry, true)?;
                    }
                }
            }
            Msg::Pull { product, from_seq } => {
                let events: Vec<usize> = if to == product {
                    self.owner_logs[product]
                        .1
                        .iter()
                        .skip(from_seq as usize - 1)
                        .take(64)
                        .copied()
                        .collect()
                } else if let Some((_, ids)) = self.nodes[to].logs.get(&product) {
                    let owner_blobs = &self.owner_logs[product].1;
                    (from_seq as usize - 1..ids.len().min(from_seq as usize - 1 + 64))
                        .map(|k| owner_blobs[k])
                        .collect()
                } else {
                    Vec::new()
                };
                let events = if self.nodes[to].liar && to != product {
                    events.into_iter().map(|b| self.tamper(b)).collect()
                } else {
                    events
                };
                if !events.is_empty() {
                    self.send(to, from, Msg::Frame { product, events });
                }
            }
            Msg::Frame { product, events } => {
                for blob in events {
                    let Some(event) = self.event_of(blob) else {
                        self.report.forged_events_rejected += 1;
                        break;
                    };
                    let Some((head, ids)) = self.nodes[to].logs.get_mut(&product) else {
                        break;
                    };
                    if event.seq() <= head.seq() {
                        continue;
                    }
                    if head.advance(&event).is_err() {
                        break;
                    }
                    ids.push(event.id());
                    let seq = event.seq() as usize;
                    self.report.invariant_checks += 1;
                    // Invariant: a subscriber's log is a prefix of the owner's.
                    if self.owner_logs[product].2.get(seq - 1) != Some(&event.id()) {
                        return Err(self.violation(format!(
                            "node {to} accepted an event of p{product} at seq {seq} the owner did not write"
                        )));
                    }
                    if let Some(at) = self.appended_at.get(&event.id()) {
                        self.event_latencies
                            .push((self.now_us - at) as f64 / 1000.0);
                    }
                }
            }
        }
        Ok(())
    }

    fn tamper(&mut self, blob: usize) -> usize {
        if let Some(&t) = self.tampered.get(&blob) {
            return t;
        }
        let forged = crate::evil::tamper(self.blobs[blob].clone());
        let t = self.blob(forged);
        self.tampered.insert(blob, t);
        t
    }

    /// Every node holds the same catalog (the latest revision of everything) and every
    /// subscriber the owner's head.
    fn converged(&self) -> bool {
        self.nodes.iter().all(|node| {
            node.catalog.len() == self.products.len()
                && node
                    .catalog
                    .iter()
                    .all(|(p, e)| e.revision() == self.revision[self.product_of[p]])
                && node
                    .logs
                    .iter()
                    .all(|(p, (head, _))| head.seq() == self.owner_logs[*p].0.seq())
        })
    }

    fn finish(&mut self) -> ModelReport {
        let n = self.nodes.len();
        let mut to100 = Vec::new();
        let mut all = Vec::new();
        for v in self.arrivals.values() {
            all.extend(v.iter().map(|&l| l as f64 / 1000.0));
            // The publisher holds its entry at once; the others must all arrive.
            if v.len() >= n {
                to100.push(v.iter().copied().max().unwrap_or(0) as f64 / 1000.0);
            }
        }
        self.report.catalog_to_100pct_ms = Percentiles::of_ms(&to100);
        self.report.catalog_delivery_ms = Percentiles::of_ms(&all);
        self.report.event_delivery_ms = Percentiles::of_ms(&self.event_latencies);
        self.report.clone()
    }
}

fn unreachable_name() -> ProductName {
    // "p{i}" is always a valid product name; this keeps the constructor panic-free.
    ProductName::new("p").unwrap_or_else(|_| std::process::abort())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ModelScenario {
        ModelScenario {
            nodes: 40,
            duration: Duration::from_secs(5),
            quiet: Duration::from_secs(30),
            liars: 3,
            partition_fraction: 0.3,
            partition_at: Duration::from_secs(1),
            heal_at: Duration::from_secs(3),
            ..ModelScenario::default()
        }
    }

    #[test]
    fn a_small_model_converges_with_every_invariant_held() {
        let seed = 7;
        let report = run(&small(), seed).unwrap_or_else(|v| panic!("{v}"));
        assert!(report.invariant_checks > 1000, "{report:?}");
        assert!(
            report.converged_after_heal_ms.is_some(),
            "seed {seed}: {report:?}"
        );
        assert!(
            report.converged_after_end_ms.is_some(),
            "seed {seed}: {report:?}"
        );
        assert!(report.messages_cut > 0 && report.messages_lost > 0);
        assert!(
            report.catalog_by_sync > 0,
            "anti-entropy repaired something"
        );
    }

    #[test]
    fn the_same_seed_replays_the_same_run() {
        let a = run(&small(), 11).unwrap_or_else(|v| panic!("{v}"));
        let b = run(&small(), 11).unwrap_or_else(|v| panic!("{v}"));
        assert_eq!(
            (
                a.steps,
                a.messages_sent,
                a.messages_lost,
                a.converged_after_end_ms
            ),
            (
                b.steps,
                b.messages_sent,
                b.messages_lost,
                b.converged_after_end_ms
            )
        );
        let c = run(&small(), 12).unwrap_or_else(|v| panic!("{v}"));
        assert_ne!((a.steps, a.messages_sent), (c.steps, c.messages_sent));
    }
}

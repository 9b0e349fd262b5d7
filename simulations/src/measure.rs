//! Recording what happens during a run, and turning the records into the report's figures.
//! Shared by the mesh runner and the stock-gossipsub baseline.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::net::SimNet;
use crate::report::{Convergence, GossipCopies, Percentiles};
use crate::tap::Proto;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A catalog entry published: product index, revision, when.
#[derive(Clone, Copy, Debug)]
pub struct Publish {
    pub product: usize,
    pub revision: u64,
    pub at: Instant,
    pub initial: bool,
}

/// A catalog entry (or a newer revision) arriving at a node.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    pub node: usize,
    pub product: usize,
    pub revision: u64,
    pub at: Instant,
}

/// A change event committed at a subscriber.
#[derive(Clone, Copy, Debug)]
pub struct Delivery {
    pub node: usize,
    pub product: usize,
    pub latency_ms: f64,
    pub at: Instant,
}

/// Everything the watchers record while a run goes.
#[derive(Debug)]
pub struct Recorder {
    pub publishes: Mutex<Vec<Publish>>,
    pub arrivals: Mutex<Vec<Arrival>>,
    pub deliveries: Mutex<Vec<Delivery>>,
    pub duplicates_applied: AtomicU64,
    pub samples_missed: AtomicU64,
    /// Highest revision of each product each node is known to hold: `[node][product]`.
    max_revision: Vec<Mutex<Vec<u64>>>,
    /// Nodes whose catalog watcher missed notifications: re-read their catalog.
    pub needs_resync: Vec<AtomicBool>,
    /// Latest revision published of each product.
    pub latest_revision: Mutex<Vec<u64>>,
    /// (product, revision) of every entry an owner's catalog showed it signing.
    owner_signed: Mutex<std::collections::HashSet<(usize, u64)>>,
}

impl Recorder {
    pub fn new(nodes: usize, products: usize) -> Self {
        Self {
            publishes: Mutex::new(Vec::new()),
            arrivals: Mutex::new(Vec::new()),
            deliveries: Mutex::new(Vec::new()),
            duplicates_applied: AtomicU64::new(0),
            samples_missed: AtomicU64::new(0),
            max_revision: (0..nodes).map(|_| Mutex::new(vec![0; products])).collect(),
            needs_resync: (0..nodes).map(|_| AtomicBool::new(false)).collect(),
            latest_revision: Mutex::new(vec![0; products]),
            owner_signed: Mutex::new(std::collections::HashSet::new()),
        }
    }

    pub fn published(&self, product: usize, revision: u64, at: Instant, initial: bool) {
        lock(&self.publishes).push(Publish {
            product,
            revision,
            at,
            initial,
        });
        self.raise_latest(product, revision);
    }

    fn raise_latest(&self, product: usize, revision: u64) {
        let mut latest = lock(&self.latest_revision);
        latest[product] = latest[product].max(revision);
    }

    /// Records the revisions of a preloaded catalog, `(product, revision)`, as the latest
    /// without a publish to measure, and has every node's catalog read again, so that the mesh
    /// run counts what a node holds from the node. (The stock baseline keeps no catalog and
    /// counts preloaded revisions as held.)
    pub fn preloaded(&self, revisions: impl IntoIterator<Item = (usize, u64)>) {
        for (product, revision) in revisions {
            self.raise_latest(product, revision);
        }
        for resync in &self.needs_resync {
            resync.store(true, Ordering::Relaxed);
        }
    }

    /// A revision its owner signed on its own (not a publish the run made, e.g. announcing
    /// what it consumes): every node must hold it too before the catalog counts as converged.
    pub fn signed_by_owner(&self, product: usize, revision: u64) {
        lock(&self.owner_signed).insert((product, revision));
        self.raise_latest(product, revision);
    }

    /// Entries owners signed beyond the run's own publishes.
    pub fn owner_announcements(&self) -> usize {
        let published: std::collections::HashSet<(usize, u64)> = lock(&self.publishes)
            .iter()
            .map(|p| (p.product, p.revision))
            .collect();
        lock(&self.owner_signed)
            .iter()
            .filter(|signed| !published.contains(signed))
            .count()
    }

    pub fn arrived(&self, node: usize, product: usize, revision: u64, at: Instant) {
        self.hold(node, product, revision);
        lock(&self.arrivals).push(Arrival {
            node,
            product,
            revision,
            at,
        });
    }

    /// Records that `node` holds `revision` of `product` (without a time).
    pub fn hold(&self, node: usize, product: usize, revision: u64) {
        let mut held = lock(&self.max_revision[node]);
        held[product] = held[product].max(revision);
    }

    pub fn delivered(&self, node: usize, product: usize, latency_ms: f64, at: Instant) {
        lock(&self.deliveries).push(Delivery {
            node,
            product,
            latency_ms,
            at,
        });
    }

    /// Whether `node` holds at least `targets[p]` of every product.
    pub fn holds_all(&self, node: usize, targets: &[u64]) -> bool {
        let held = lock(&self.max_revision[node]);
        held.iter().zip(targets).all(|(h, t)| h >= t)
    }

    pub fn latest(&self) -> Vec<u64> {
        lock(&self.latest_revision).clone()
    }
}

/// Catalog convergence of the publishes `filter` selects, over the nodes `counted`.
/// Returns the figures, the per-delivery latencies and the per-entry times to 100%.
pub fn convergence(
    rec: &Recorder,
    counted: &[usize],
    owner_of: impl Fn(usize) -> Option<usize>,
    filter: impl Fn(&Publish) -> bool,
) -> (Convergence, Vec<f64>, Vec<f64>) {
    let publishes: Vec<Publish> = lock(&rec.publishes)
        .iter()
        .filter(|p| filter(p))
        .copied()
        .collect();
    let mut by_pair: HashMap<(usize, usize), Vec<(u64, Instant)>> = HashMap::new();
    for a in lock(&rec.arrivals).iter() {
        by_pair
            .entry((a.node, a.product))
            .or_default()
            .push((a.revision, a.at));
    }
    for list in by_pair.values_mut() {
        list.sort_by_key(|(_, at)| *at);
    }
    let mut c = Convergence {
        entries: publishes.len(),
        ..Convergence::default()
    };
    let (mut d50, mut d90, mut d99, mut d100) = (vec![], vec![], vec![], vec![]);
    let mut delivery = Vec::new();
    for p in &publishes {
        let owner = owner_of(p.product);
        let mut latencies = Vec::new();
        let mut others = 0usize;
        for &node in counted {
            if Some(node) == owner {
                continue;
            }
            others += 1;
            let arrived = by_pair.get(&(node, p.product)).and_then(|list| {
                list.iter()
                    .find(|(rev, at)| *rev >= p.revision && *at >= p.at)
                    .or_else(|| list.iter().find(|(rev, _)| *rev >= p.revision))
            });
            match arrived {
                Some((_, at)) => {
                    let ms = at.saturating_duration_since(p.at).as_secs_f64() * 1000.0;
                    latencies.push(ms);
                }
                None => c.missing += 1,
            }
        }
        c.deliveries += latencies.len() as u64;
        delivery.extend(&latencies);
        latencies.sort_by(f64::total_cmp);
        for (share, out) in [
            (0.5, &mut d50),
            (0.9, &mut d90),
            (0.99, &mut d99),
            (1.0, &mut d100),
        ] {
            let needed = ((others as f64 * share).ceil() as usize).max(1);
            if let Some(&v) = latencies.get(needed - 1) {
                out.push(v);
            }
        }
        if latencies.len() < others {
            c.never_complete += 1;
        }
    }
    c.to_50pct_ms = Percentiles::of_ms(&d50);
    c.to_90pct_ms = Percentiles::of_ms(&d90);
    c.to_99pct_ms = Percentiles::of_ms(&d99);
    c.to_100pct_ms = Percentiles::of_ms(&d100);
    c.delivery_ms = Percentiles::of_ms(&delivery);
    (c, delivery, d100)
}

/// Catalog arrivals at nodes other than the publisher's within `[from, to]`.
pub fn arrivals_between(
    rec: &Recorder,
    from: Instant,
    to: Instant,
    owner_of: impl Fn(usize) -> Option<usize>,
) -> u64 {
    lock(&rec.arrivals)
        .iter()
        .filter(|a| a.at >= from && a.at <= to && owner_of(a.product) != Some(a.node))
        .count() as u64
}

/// A snapshot of the counters of every endpoint of a network.
#[derive(Clone, Debug, Default)]
pub struct NetSnapshot {
    pub wire_sent: Vec<u64>,
    pub rpcs: Vec<u64>,
    pub copies: Vec<u64>,
    pub ihave: Vec<u64>,
    pub iwant: Vec<u64>,
    pub idontwant: Vec<u64>,
    pub undecodable: Vec<u64>,
    pub sent_by_proto: Vec<BTreeMap<String, u64>>,
}

impl NetSnapshot {
    pub fn take(net: &SimNet) -> Self {
        let mut s = Self::default();
        for i in 0..net.endpoints() {
            let w = net.wire(i);
            let t = net.tap(i);
            s.wire_sent.push(w.sent_bytes.load(Ordering::Relaxed));
            s.rpcs.push(t.gossip_rpcs_received.load(Ordering::Relaxed));
            s.copies.push(t.copies());
            s.ihave.push(t.ihave_ids_received.load(Ordering::Relaxed));
            s.iwant.push(t.iwant_ids_received.load(Ordering::Relaxed));
            s.idontwant
                .push(t.idontwant_ids_received.load(Ordering::Relaxed));
            s.undecodable
                .push(t.undecodable_rpcs.load(Ordering::Relaxed));
            let mut by = BTreeMap::new();
            for p in Proto::ALL {
                let v = t.sent(p);
                if v > 0 {
                    by.insert(p.label().to_owned(), v);
                }
            }
            let yamux = t.yamux_overhead_sent.load(Ordering::Relaxed);
            if yamux > 0 {
                by.insert("yamux framing".to_owned(), yamux);
            }
            s.sent_by_proto.push(by);
        }
        s
    }

    /// Gossip received by the first `n` endpoints between `self` and `later`, for
    /// `deliveries` entries arriving in that window; undecodable RPCs count at every endpoint.
    pub fn gossip(&self, later: &Self, n: usize, deliveries: u64) -> GossipCopies {
        let per_delivery = |v: u64| (deliveries > 0).then(|| v as f64 / deliveries as f64);
        let copies = self.delta(later, n, |s| &s.copies);
        let rpcs = self.delta(later, n, |s| &s.rpcs);
        GossipCopies {
            copies_received: copies,
            deliveries,
            copies_per_delivery: per_delivery(copies),
            rpcs_received: Some(rpcs),
            rpcs_per_delivery: per_delivery(rpcs),
            ihave_ids: self.delta(later, n, |s| &s.ihave),
            iwant_ids: self.delta(later, n, |s| &s.iwant),
            idontwant_ids: self.delta(later, n, |s| &s.idontwant),
            undecodable_rpcs: self.delta(later, later.undecodable.len(), |s| &s.undecodable),
        }
    }

    /// Sum over the first `n` endpoints of `f` in `later` minus in `self`.
    pub fn delta(&self, later: &Self, n: usize, f: impl Fn(&Self) -> &Vec<u64>) -> u64 {
        (0..n).map(|i| f(later)[i].saturating_sub(f(self)[i])).sum()
    }

    pub fn proto_delta(&self, later: &Self, n: usize, label: &str) -> u64 {
        (0..n)
            .map(|i| {
                later.sent_by_proto[i]
                    .get(label)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(self.sent_by_proto[i].get(label).copied().unwrap_or(0))
            })
            .sum()
    }
}

/// Resident set size of this process in MiB (Linux), 0 where unknown.
pub fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |pages| pages * 4096.0 / 1048576.0)
}

/// CPU time this process has used so far (user + system), in seconds; 0 where
/// `/proc/self/stat` is unreadable. Logged with each phase, so a run's log shows where its CPU
/// went.
pub fn cpu_seconds() -> f64 {
    // Fields after the parenthesised command name (which may hold spaces): utime and stime are
    // the 12th and 13th, in clock ticks of 1/100 s on Linux.
    const TICKS_PER_SECOND: f64 = 100.0;
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            let mut fields = rest.split_whitespace().skip(11);
            let utime: f64 = fields.next()?.parse().ok()?;
            let stime: f64 = fields.next()?.parse().ok()?;
            Some((utime + stime) / TICKS_PER_SECOND)
        })
        .unwrap_or(0.0)
}

/// Shows a run's phase on its progress bar and logs it with the memory and CPU used so far,
/// and how busy tokio's workers were: the time they spent polling tasks (`busy_s`, all
/// workers together; the rest of `cpu_s` is other threads: the nodes' commit threads, the
/// blocking pool, the search index's), the tasks alive and those waiting in the global queue.
pub fn phase(bar: &indicatif::ProgressBar, what: &'static str) {
    bar.set_message(what);
    let runtime = RuntimeLoad::now();
    tracing::info!(
        rss_mib = rss_mib() as u64,
        cpu_s = format_args!("{:.1}", cpu_seconds()),
        busy_s = format_args!("{:.1}", runtime.busy.as_secs_f64()),
        tasks = runtime.tasks,
        queued = runtime.queued,
        "{what}"
    );
}

/// Logs, every second until aborted, the share of the past second the process spent on CPU
/// and tokio's workers spent polling (in cores), the tasks waiting in the global queue, and
/// the connections `connections` reports (opened so far, open now), at debug level
/// (`RUST_LOG=mesh_sim::measure=debug`): where a run's time goes while it runs.
///
/// The log stops when the returned guard is dropped, so a run that ends early by an error
/// does not leave it logging.
pub fn log_runtime_load(connections: impl Fn() -> (u64, usize) + Send + 'static) -> RuntimeLog {
    RuntimeLog(tokio::spawn(async move {
        let (mut cpu, mut load, mut at) = (cpu_seconds(), RuntimeLoad::now(), Instant::now());
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (cpu_now, load_now, now) = (cpu_seconds(), RuntimeLoad::now(), Instant::now());
            if !tracing::enabled!(tracing::Level::DEBUG) {
                // Counting connections takes the network's lock: only when it is logged.
                (cpu, load, at) = (cpu_now, load_now, now);
                continue;
            }
            let seconds = now.duration_since(at).as_secs_f64();
            let (opened, open) = connections();
            tracing::debug!(
                cpu_cores = format_args!("{:.2}", (cpu_now - cpu) / seconds),
                busy_cores = format_args!(
                    "{:.2}",
                    (load_now.busy.saturating_sub(load.busy)).as_secs_f64() / seconds
                ),
                tasks = load_now.tasks,
                queued = load_now.queued,
                connections_opened = opened,
                connections_open = open,
                "runtime load"
            );
            (cpu, load, at) = (cpu_now, load_now, now);
        }
    }))
}

/// The per-second log of [`log_runtime_load`]; dropping it stops the log.
#[derive(Debug)]
pub struct RuntimeLog(tokio::task::JoinHandle<()>);

impl Drop for RuntimeLog {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What tokio's runtime was doing at one moment (zero outside a runtime).
#[derive(Clone, Copy, Debug, Default)]
pub struct RuntimeLoad {
    /// Time all workers spent polling tasks since the runtime started.
    pub busy: Duration,
    /// Tasks alive.
    pub tasks: usize,
    /// Tasks woken from outside the workers, waiting in the global queue.
    pub queued: usize,
}

impl RuntimeLoad {
    pub fn now() -> Self {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return Self::default();
        };
        let m = handle.metrics();
        Self {
            busy: (0..m.num_workers())
                .map(|w| m.worker_total_busy_duration(w))
                .sum(),
            tasks: m.num_alive_tasks(),
            queued: m.global_queue_depth(),
        }
    }
}

/// Counters of a node's Prometheus metrics: `(name, reason label, value)`.
pub fn scrape(metrics: &std::sync::Arc<mesh_node::metrics::Metrics>) -> Vec<(String, String, f64)> {
    let registry = metrics.registry();
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        return Vec::new();
    }
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name_labels, value) = l.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match name_labels.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (name_labels, ""),
            };
            let reason = labels
                .split(',')
                .find_map(|kv| kv.strip_prefix("reason="))
                .map(|r| r.trim_matches('"').to_owned())
                .unwrap_or_default();
            Some((name.to_owned(), reason, value))
        })
        .collect()
}

//! The log hub: every log this node holds, its head, and the paths into it.
//!
//! Two paths write a log, and both end in one atomic, durable [`Store::log_append`]:
//! - **append** (this node is the producer): requests are signed in order against the head and
//!   committed as a group, one flush for the whole group ([`Appender`]);
//! - **ingest** (events from a peer): decode, batch-verify, chain-check against the head, then
//!   commit. Events at or below the head are compared with the stored ones: the same id is a
//!   duplicate, a different id is a fork, kept as a proof.
//!
//! Committed events are broadcast to the tasks serving the log to downstream subscribers, so a
//! subscriber relays the log as soon as it holds it. A product's head lock is held across its
//! commit, so a log has one writer at a time.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mesh_protocol::{
    Config, EventId, EventRef, ForkProof, LogHead, Operation, PreparedEvent, ProductId,
    RejectReason, SecretKey, SignedEvent, VerifiedEvent, verify_batch,
};
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};

use crate::metrics::{Metrics, ProductLabel};
use crate::store::{Store, StoreError};

/// Live items a served stream forwards: committed events, or a fork proof.
#[derive(Clone, Debug)]
pub enum Live {
    Events(Arc<[VerifiedEvent]>),
    Fork(Bytes),
}

/// Capacity of a log's live broadcast, in batches. A server that falls further behind reads
/// from the store instead, so nothing is lost.
const LIVE_CAPACITY: usize = 256;
/// How many recent rejections `status` shows.
const REJECTIONS_KEPT: usize = 32;

struct Slot {
    head: Mutex<LogHead>,
    live: broadcast::Sender<Live>,
}

/// A rejected event, for `status` and the API.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Rejection {
    pub at_micros: u64,
    pub product: String,
    pub peer: String,
    pub reason: String,
    pub detail: String,
}

/// What became of a frame of events from a peer.
#[derive(Debug, Default)]
pub struct IngestReport {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: usize,
    /// A fork found while ingesting.
    pub fork: Option<ForkProof>,
    /// The first rejection, if any: the rest of the frame after it was not looked at.
    pub error: Option<RejectReason>,
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// The receipt of an acknowledged (durable) append.
#[derive(Clone, Debug, Serialize)]
pub struct Receipt {
    pub product: String,
    pub seq: u64,
    pub id: EventId,
}

pub(crate) struct AppendRequest {
    pub product: ProductId,
    pub op: Operation,
    pub key: Bytes,
    pub payload: Bytes,
    pub causes: Vec<EventRef>,
    pub reply: oneshot::Sender<Result<Receipt, AppendError>>,
}

pub struct LogHub {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    slots: Mutex<HashMap<ProductId, Arc<Slot>>>,
    rejections: Mutex<VecDeque<Rejection>>,
}

impl std::fmt::Debug for LogHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHub").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below validates before it mutates, so the state behind a
    // poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl LogHub {
    pub fn new(store: Arc<dyn Store>, config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            config,
            metrics,
            slots: Mutex::new(HashMap::new()),
            rejections: Mutex::new(VecDeque::new()),
        }
    }

    fn slot(&self, product: &ProductId) -> Result<Arc<Slot>, StoreError> {
        if let Some(slot) = lock(&self.slots).get(product) {
            return Ok(slot.clone());
        }
        let head = match self.store.log_head(product)? {
            Some(h) => LogHead::resume(product.clone(), h.seq, h.id),
            None => LogHead::empty(product.clone()),
        };
        let mut slots = lock(&self.slots);
        let slot = slots.entry(product.clone()).or_insert_with(|| {
            Arc::new(Slot {
                head: Mutex::new(head),
                live: broadcast::channel(LIVE_CAPACITY).0,
            })
        });
        Ok(slot.clone())
    }

    /// The head of a product's log as this node holds it.
    pub fn head(&self, product: &ProductId) -> Result<LogHead, StoreError> {
        Ok(lock(&self.slot(product)?.head).clone())
    }

    /// Live items of a product's log, from now on.
    pub fn subscribe_live(
        &self,
        product: &ProductId,
    ) -> Result<broadcast::Receiver<Live>, StoreError> {
        Ok(self.slot(product)?.live.subscribe())
    }

    /// Signs and commits a group of appends to one product, with one flush. Replies to each
    /// request; a request that breaks a limit fails alone.
    pub(crate) fn append_group(
        &self,
        key: &SecretKey,
        product: &ProductId,
        requests: Vec<AppendRequest>,
    ) {
        let slot = match self.slot(product) {
            Ok(slot) => slot,
            Err(e) => {
                for r in requests {
                    let _ = r.reply.send(Err(AppendError::Invalid(e.to_string())));
                }
                return;
            }
        };
        let mut head = lock(&slot.head);
        let mut tentative = head.clone();
        let mut prepared = Vec::with_capacity(requests.len());
        let mut replies = Vec::with_capacity(requests.len());
        let now = now_micros();
        // Build and hash the chain in order: each event needs the id of the one before, but
        // not its signature. Then sign the run on every core.
        for r in requests {
            let event = tentative.next_event(now, r.op, r.key, r.payload, r.causes);
            match event.prepare(key, &self.config) {
                Ok(p) => {
                    tentative = LogHead::resume(product.clone(), p.event().seq, p.id());
                    prepared.push(p);
                    replies.push(r.reply);
                }
                Err(e) => {
                    let _ = r.reply.send(Err(AppendError::Invalid(e.to_string())));
                }
            }
        }
        if prepared.is_empty() {
            return;
        }
        let events = sign_all(prepared, key);
        if let Err(e) = self.store.log_append(product, &events) {
            tracing::error!(product = %product.short(), "append failed: {e}");
            for reply in replies {
                let _ = reply.send(Err(AppendError::Invalid(format!("store: {e}"))));
            }
            return;
        }
        self.metrics.events_appended.inc_by(events.len() as u64);
        *head = tentative;
        drop(head);
        let receipts: Vec<Receipt> = events
            .iter()
            .map(|e| Receipt {
                product: product.to_string(),
                seq: e.seq(),
                id: e.id(),
            })
            .collect();
        let _ = slot.live.send(Live::Events(events.into()));
        for (reply, receipt) in replies.into_iter().zip(receipts) {
            let _ = reply.send(Ok(receipt));
        }
    }

    /// Ingests a frame of encoded events of `product` received from `peer`. Blocking.
    pub fn ingest(
        &self,
        product: &ProductId,
        frame: Vec<Bytes>,
        peer: &str,
    ) -> Result<IngestReport, StoreError> {
        let mut report = IngestReport::default();
        let mut decoded = Vec::with_capacity(frame.len());
        for bytes in frame {
            match SignedEvent::decode(bytes, &self.config) {
                Ok(e) => decoded.push(e),
                Err(e) => {
                    report.error = Some(e.into());
                    break;
                }
            }
        }
        let mut verified = Vec::with_capacity(decoded.len());
        for result in verify_batch(decoded) {
            match result {
                Ok(e) => verified.push(e),
                Err(e) => {
                    report.error.get_or_insert(e.into());
                    break;
                }
            }
        }
        let slot = self.slot(product)?;
        let mut head = lock(&slot.head);
        let mut tentative = head.clone();
        let mut run = Vec::with_capacity(verified.len());
        for event in verified {
            if event.product() == product && event.seq() <= tentative.seq() {
                match self.compare_with_stored(&event, &run)? {
                    None => report.duplicates += 1,
                    Some(proof) => {
                        report.fork.get_or_insert(proof);
                        report.rejected += 1;
                    }
                }
                continue;
            }
            match tentative.advance(&event) {
                Ok(()) => run.push(event),
                Err(e) => {
                    report.error.get_or_insert(e.into());
                    break;
                }
            }
        }
        // Count before the head moves, so whoever sees the new head sees the counts too.
        self.metrics
            .events_duplicate
            .inc_by(report.duplicates as u64);
        if !run.is_empty() {
            self.store.log_append(product, &run)?;
            self.metrics.events_received.inc_by(run.len() as u64);
            *head = tentative;
        }
        let head_seq = head.seq();
        drop(head);
        report.accepted = run.len();
        if !run.is_empty() {
            let _ = slot.live.send(Live::Events(run.into()));
        }
        if let Some(error) = &report.error {
            report.rejected += 1;
            self.reject(product, peer, error);
        }
        if let Some(proof) = &report.fork {
            self.record_fork(proof, peer)?;
        }
        tracing::trace!(product = %product.short(), head_seq, accepted = report.accepted, "ingested");
        Ok(report)
    }

    /// The stored event at `event`'s seq (or in the uncommitted `run`), compared with it:
    /// `None` if it is the same event, a proof if it is a fork.
    fn compare_with_stored(
        &self,
        event: &VerifiedEvent,
        run: &[VerifiedEvent],
    ) -> Result<Option<ForkProof>, StoreError> {
        let held = match run.iter().find(|e| e.seq() == event.seq()) {
            Some(e) => Some(e.clone()),
            None => self
                .store
                .log_range(event.product(), event.seq(), 1)?
                .into_iter()
                .next()
                .map(|bytes| VerifiedEvent::decode_and_verify(bytes, &self.config))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("stored event: {e}")))?,
        };
        match held {
            Some(held) if held.id() != event.id() => Ok(ForkProof::new(held, event.clone()).ok()),
            _ => Ok(None),
        }
    }

    /// Stores a fork proof and passes it to the log's downstream subscribers. Returns whether
    /// it was new.
    pub fn record_fork(&self, proof: &ForkProof, peer: &str) -> Result<bool, StoreError> {
        let new = self.store.fork_put(proof)?;
        if new {
            self.metrics.forks_detected.inc();
            tracing::warn!(
                product = %proof.product().short(), seq = proof.seq(), peer,
                "fork detected: the owner signed two different events at one position"
            );
            let _ = self
                .slot(proof.product())?
                .live
                .send(Live::Fork(proof.encode()));
        }
        Ok(new)
    }

    fn reject(&self, product: &ProductId, peer: &str, error: &RejectReason) {
        self.metrics.reject_event(error.kind());
        tracing::warn!(product = %product.short(), peer, reason = error.kind(), "event rejected: {error}");
        let mut recent = lock(&self.rejections);
        if recent.len() == REJECTIONS_KEPT {
            recent.pop_front();
        }
        recent.push_back(Rejection {
            at_micros: now_micros(),
            product: product.to_string(),
            peer: peer.to_owned(),
            reason: error.kind().to_owned(),
            detail: error.to_string(),
        });
    }

    /// The most recent rejections, oldest first.
    pub fn rejections(&self) -> Vec<Rejection> {
        lock(&self.rejections).iter().cloned().collect()
    }

    /// Records how far this node is behind a source for `product`.
    pub fn set_lag(&self, product: &ProductId, source_head: u64) {
        let held = self.head(product).map_or(0, |h| h.seq());
        let lag = i64::try_from(source_head.saturating_sub(held)).unwrap_or(i64::MAX);
        self.metrics
            .subscriber_lag
            .get_or_create(&ProductLabel {
                product: product.to_string(),
            })
            .set(lag);
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }
}

/// Below this many events a group is signed on the commit thread alone.
const PARALLEL_SIGN_MIN: usize = 32;

/// Signs prepared events, splitting a large run across the machine's cores. Order is kept.
fn sign_all(prepared: Vec<PreparedEvent>, key: &SecretKey) -> Vec<VerifiedEvent> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(8);
    if prepared.len() < PARALLEL_SIGN_MIN || threads == 1 {
        return prepared.into_iter().map(|p| p.sign(key)).collect();
    }
    let chunk = prepared.len().div_ceil(threads);
    let mut chunks: Vec<Vec<PreparedEvent>> = Vec::with_capacity(threads);
    let mut rest = prepared;
    while rest.len() > chunk {
        let tail = rest.split_off(chunk);
        chunks.push(rest);
        rest = tail;
    }
    chunks.push(rest);
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| scope.spawn(move || c.into_iter().map(|p| p.sign(key)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            // A signing thread panics only if the signer itself does; propagate it.
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// The group-commit thread for appends. Requests queue in a bounded channel; the thread takes
/// everything queued (up to `batch_max`), signs and commits it per product with one flush, and
/// replies. Under load, many appends share one flush; alone, an append waits for no one.
pub struct Appender {
    sender: Mutex<Option<tokio::sync::mpsc::Sender<AppendRequest>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Appender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Appender").finish_non_exhaustive()
    }
}

/// How many appends may wait for the commit thread.
const APPEND_QUEUE: usize = 8192;

impl Appender {
    pub fn start(hub: Arc<LogHub>, key: SecretKey, batch_max: usize) -> std::io::Result<Self> {
        // tokio's queue allocates as it fills; a std `sync_channel` would allocate all of its
        // slots up front (1.4 MiB per node here).
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<AppendRequest>(APPEND_QUEUE);
        let thread = std::thread::Builder::new()
            .name("mesh-append".into())
            .spawn(move || {
                // Ends when every sender is dropped, i.e. when the node shuts down.
                while let Some(first) = receiver.blocking_recv() {
                    let mut group = vec![first];
                    while group.len() < batch_max {
                        match receiver.try_recv() {
                            Ok(r) => group.push(r),
                            Err(_) => break,
                        }
                    }
                    let mut by_product: Vec<(ProductId, Vec<AppendRequest>)> = Vec::new();
                    for r in group {
                        match by_product.iter_mut().find(|(p, _)| *p == r.product) {
                            Some((_, rs)) => rs.push(r),
                            None => by_product.push((r.product.clone(), vec![r])),
                        }
                    }
                    for (product, requests) in by_product {
                        hub.append_group(&key, &product, requests);
                    }
                }
            })?;
        Ok(Self {
            sender: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops taking appends, lets the thread commit what is queued, and waits for it. Blocking.
    pub fn stop(&self) {
        lock(&self.sender).take();
        if let Some(thread) = lock(&self.thread).take()
            && thread.join().is_err()
        {
            tracing::error!("the append thread panicked");
        }
    }

    /// Queues an append; the reply arrives once the event is durable.
    pub async fn append(
        &self,
        product: ProductId,
        op: Operation,
        key: Bytes,
        payload: Bytes,
        causes: Vec<EventRef>,
    ) -> Result<Receipt, AppendError> {
        let (reply, rx) = oneshot::channel();
        let request = AppendRequest {
            product,
            op,
            key,
            payload,
            causes,
            reply,
        };
        let Some(sender) = lock(&self.sender).clone() else {
            return Err(AppendError::ShuttingDown);
        };
        // A full queue makes the caller wait for room. The sender goes at once: `stop` waits
        // for the commit thread, which ends when the last sender is dropped.
        let sent = sender.send(request).await;
        drop(sender);
        sent.map_err(|_| AppendError::ShuttingDown)?;
        rx.await.map_err(|_| AppendError::ShuttingDown)?
    }
}

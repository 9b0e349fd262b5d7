//! Discovery answered by any peer: the local search index kept in step with the catalog, who
//! holds each log, and `/mesh/search/1`, the protocol that lets a remote peer ask.
//!
//! The catalog is the source of truth; the index follows it through the catalog's change
//! feed (rebuilt from the whole catalog at start and whenever the feed lagged). Who holds a
//! product's log is read from the catalog too — the owner, and the owners of the entries that
//! announce they consume it — so two nodes with one catalog give one answer.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use mesh_protocol::{ProductId, PublicKey, VerifiedCatalogEntry};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::catalog::Catalog;
use crate::codec::{self, FrameError};
use crate::lineage::LineageGraph;
use crate::node::Shared;
use crate::search::{Applied, SearchIndex, SearchRequest, SearchResponse};

/// One request frame (JSON `SearchRequest`), one reply frame (JSON `SearchReply`).
pub const SEARCH_PROTOCOL: StreamProtocol = StreamProtocol::new("/mesh/search/1");
/// Largest search request.
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;
/// Largest search reply (100 hits with 4 KiB descriptions fit many times over).
pub const REPLY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Longest wait for the other side, per frame and to open a stream.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The most catalog changes the index follower applies on the async runtime; more go to the
/// blocking pool (analyzing one entry takes tens of microseconds).
const APPLY_HERE_MAX: usize = 32;
/// Most peers' queries answered at once; more are told the node is busy. A query over a large
/// catalog takes a few milliseconds of one core and a scratch buffer per product.
const SEARCHES_IN_FLIGHT_MAX: usize = 4;
/// Most holders listed per hit: the owner, then announced consumers in key order. Anyone can
/// announce that it consumes anything, so the list must not grow with them.
pub const HOLDERS_MAX: usize = 16;

/// What a node answers on `/mesh/search/1`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchReply {
    Ok(SearchResponse),
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot reach the peer: {0}")]
    Open(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the peer closed the stream without answering")]
    Closed,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("the peer refused the query: {0}")]
    Refused(String),
}

/// The search index and the log holders, both following the catalog.
pub struct Discovery {
    pub index: SearchIndex,
    /// Product -> keys of the nodes whose entries announce they consume it.
    consumers: Mutex<HashMap<ProductId, BTreeSet<PublicKey>>>,
    /// Product -> what its current entry announced, to undo on the next revision.
    announced: Mutex<HashMap<ProductId, Vec<ProductId>>>,
    /// The lineage graph of the catalog as last applied; built on first use after a change.
    graph: Mutex<Option<Arc<LineageGraph>>>,
    /// Bounds the remote queries answered at once.
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("products", &self.index.len())
            .finish_non_exhaustive()
    }
}

impl Discovery {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            index: SearchIndex::new().map_err(|e| anyhow::anyhow!("search index: {e}"))?,
            consumers: Mutex::new(HashMap::new()),
            announced: Mutex::new(HashMap::new()),
            graph: Mutex::new(None),
            in_flight: Arc::new(tokio::sync::Semaphore::new(SEARCHES_IN_FLIGHT_MAX)),
        })
    }

    /// Takes in the catalog's changes: `products` changed; their current entries are read
    /// from `catalog`, not taken from the change feed, which can deliver two changes of one
    /// product out of order.
    pub fn apply_changes(&self, catalog: &Catalog, products: &[ProductId]) {
        let current: Vec<VerifiedCatalogEntry> =
            products.iter().filter_map(|p| catalog.get(p)).collect();
        for entry in &current {
            // One at a time: `upsert` defers tantivy's commit, `upsert_many` always commits.
            if let Err(e) = self.index.upsert(entry) {
                tracing::warn!("search index update failed: {e}");
            }
        }
        self.apply_holders(&current);
    }

    /// [`apply_changes`](Self::apply_changes) without waiting, for the follower on the async
    /// runtime: [`Applied::Busy`] applies nothing (the catalog, the lineage graph being built,
    /// or the index is held), and [`Applied::CommitDue`] leaves the index's commit to the
    /// caller, off the runtime.
    pub fn try_apply_changes(&self, catalog: &Catalog, products: &[ProductId]) -> Applied {
        let Some(current) = catalog.try_get_many(products) else {
            return Applied::Busy;
        };
        let Some(mut graph) = crate::node::try_lock(&self.graph) else {
            return Applied::Busy;
        };
        let applied = match self.index.try_upsert(&current) {
            Ok(Applied::Busy) => return Applied::Busy,
            Ok(applied) => applied,
            Err(e) => {
                tracing::warn!("search index update failed: {e}");
                Applied::Done
            }
        };
        *graph = None;
        drop(graph);
        self.apply_consumers(&current);
        applied
    }

    /// Takes in the whole catalog, as at start or after the change feed lagged.
    pub fn apply_all(&self, catalog: &Catalog) {
        let entries = catalog.entries();
        if let Err(e) = self.index.upsert_many(&entries) {
            tracing::warn!("search index update failed: {e}");
        }
        self.apply_holders(&entries);
    }

    fn apply_holders(&self, entries: &[VerifiedCatalogEntry]) {
        *crate::node::lock(&self.graph) = None;
        self.apply_consumers(entries);
    }

    /// Who consumes what, as `entries` announce it.
    fn apply_consumers(&self, entries: &[VerifiedCatalogEntry]) {
        let mut consumers = crate::node::lock(&self.consumers);
        let mut announced = crate::node::lock(&self.announced);
        for entry in entries {
            let owner = *entry.product().owner();
            if let Some(old) = announced.remove(entry.product()) {
                for p in old {
                    if let Some(set) = consumers.get_mut(&p) {
                        set.remove(&owner);
                    }
                }
            }
            for p in &entry.entry().consumes {
                consumers.entry(p.clone()).or_default().insert(owner);
            }
            announced.insert(entry.product().clone(), entry.entry().consumes.clone());
        }
    }

    /// The product-level lineage graph of `catalog`, built once per catalog change. Building
    /// takes up to a second for 200k products: call it off the async runtime.
    pub fn lineage(&self, catalog: &Catalog) -> Arc<LineageGraph> {
        let mut graph = crate::node::lock(&self.graph);
        graph
            .get_or_insert_with(|| Arc::new(LineageGraph::from_catalog(&catalog.entries())))
            .clone()
    }

    /// Peers that hold `product`'s log: its owner first, then its announced consumers.
    pub fn holders(&self, product: &ProductId) -> Vec<PublicKey> {
        let mut holders = vec![*product.owner()];
        if let Some(set) = crate::node::lock(&self.consumers).get(product) {
            holders.extend(
                set.iter()
                    .filter(|k| *k != product.owner())
                    .take(HOLDERS_MAX - 1),
            );
        }
        holders
    }

    /// Whether `key` announced that it consumes `product`. Unlike [`Discovery::holders`],
    /// not capped: it sees every consumer.
    pub fn is_consumer(&self, product: &ProductId, key: &PublicKey) -> bool {
        crate::node::lock(&self.consumers)
            .get(product)
            .is_some_and(|set| set.contains(key))
    }

    /// Answers a query from the local index, with the holders of each hit.
    pub fn search(&self, request: &SearchRequest) -> Result<SearchResponse, String> {
        // Tags are stored lower-cased (descriptor rule), so `--tag PII` means `pii`.
        let lowered;
        let request = match &request.tag {
            Some(tag) if tag.chars().any(char::is_uppercase) => {
                lowered = SearchRequest {
                    tag: Some(tag.to_lowercase()),
                    ..request.clone()
                };
                &lowered
            }
            _ => request,
        };
        let mut response = self.index.search(request).map_err(|e| e.to_string())?;
        for hit in &mut response.hits {
            if let Ok(product) = hit.product.parse::<ProductId>() {
                hit.holders = self
                    .holders(&product)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
            }
        }
        Ok(response)
    }
}

/// Keeps the index in step with the catalog until shutdown.
pub async fn follow_catalog(
    shared: Arc<Shared>,
    mut changes: broadcast::Receiver<Arc<VerifiedCatalogEntry>>,
) {
    let rebuild = |shared: Arc<Shared>| async move {
        let _ =
            crate::node::spawn_blocking(move || shared.discovery.apply_all(&shared.catalog)).await;
    };
    rebuild(shared.clone()).await;
    let store_waits = shared.store.waits_on_disk();
    loop {
        let first = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            change = changes.recv() => change,
        };
        match first {
            Ok(entry) => {
                // Take whatever else is queued, so a burst is one blocking task.
                let mut batch = vec![entry.product().clone()];
                let mut lagged = false;
                loop {
                    match changes.try_recv() {
                        Ok(more) => batch.push(more.product().clone()),
                        Err(broadcast::error::TryRecvError::Lagged(_)) => lagged = true,
                        Err(_) => break,
                    }
                }
                if lagged {
                    // Changes were dropped while this batch was taken: only a rebuild sees them.
                    rebuild(shared.clone()).await;
                    continue;
                }
                batch.sort();
                batch.dedup();
                // With a store in memory, whose writers hold the catalog's lock only briefly,
                // a few changes go in here, at once: waking the blocking pool for each cost a
                // simulation's nodes about a tenth of their CPU, with the gossip checks
                // (SIMULATIONS.md, finding 23). Commits, long batches, batches that find the
                // catalog, the lineage graph or the index held, and every batch of a node whose
                // store is on disk go to the pool.
                let applied = if !store_waits && batch.len() <= APPLY_HERE_MAX {
                    // A panic here would end the follower; on the pool it ended one batch.
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        shared.discovery.try_apply_changes(&shared.catalog, &batch)
                    }))
                    .unwrap_or_else(|_| {
                        tracing::error!("applying catalog changes to the index panicked");
                        Applied::Busy
                    })
                } else {
                    Applied::Busy
                };
                if applied == Applied::Done {
                    continue;
                }
                let shared = shared.clone();
                let _ = crate::node::spawn_blocking(move || {
                    if applied == Applied::Busy {
                        shared.discovery.apply_changes(&shared.catalog, &batch);
                    } else if let Err(e) = shared.discovery.index.commit_if_due() {
                        tracing::warn!("search index commit failed: {e}");
                    }
                })
                .await;
            }
            Err(broadcast::error::RecvError::Lagged(_)) => rebuild(shared.clone()).await,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Answers `/mesh/search/1` queries from peers.
pub async fn serve(shared: Arc<Shared>, incoming: libp2p_stream::IncomingStreams) {
    crate::node::accept_streams(
        shared,
        incoming,
        "search",
        |shared, _peer, stream| async move { serve_one(&shared, stream).await },
    )
    .await;
}

async fn serve_one(shared: &Arc<Shared>, mut stream: Stream) -> Result<(), DiscoveryError> {
    let Some(frame) = codec::read_frame(&mut stream, REQUEST_BYTES_MAX, TIMEOUT).await? else {
        return Ok(());
    };
    let reply = match serde_json::from_slice::<SearchRequest>(&frame) {
        Ok(request) => match shared.discovery.in_flight.clone().try_acquire_owned() {
            Ok(permit) => {
                let shared = shared.clone();
                crate::node::spawn_blocking(move || {
                    let _permit = permit;
                    shared.discovery.search(&request)
                })
                .await
                .map_err(|e| DiscoveryError::Malformed(e.to_string()))?
                .map_or_else(SearchReply::Error, SearchReply::Ok)
            }
            Err(_) => SearchReply::Error("busy: too many searches in flight, retry".into()),
        },
        Err(e) => SearchReply::Error(format!("malformed search request: {e}")),
    };
    shared.metrics.searches_served.inc();
    let mut bytes =
        serde_json::to_vec(&reply).map_err(|e| DiscoveryError::Malformed(e.to_string()))?;
    if bytes.len() > REPLY_BYTES_MAX {
        let reason = format!(
            "the answer is {} bytes, over the {REPLY_BYTES_MAX} one reply holds: ask for fewer hits",
            bytes.len()
        );
        bytes = serde_json::to_vec(&SearchReply::Error(reason))
            .map_err(|e| DiscoveryError::Malformed(e.to_string()))?;
    }
    tokio::time::timeout(TIMEOUT, codec::send_frame(&mut stream, &bytes))
        .await
        .map_err(|_| FrameError::Timeout(TIMEOUT))?
        .map_err(FrameError::from)?;
    let _ = futures::AsyncWriteExt::close(&mut stream).await;
    Ok(())
}

/// Opens a `/mesh/search/1` stream with `open` (bounded by [`TIMEOUT`]) and asks `request`.
pub(crate) async fn query<F>(
    open: F,
    request: &SearchRequest,
) -> Result<SearchResponse, DiscoveryError>
where
    F: std::future::Future<Output = Result<Stream, libp2p_stream::OpenStreamError>>,
{
    let mut stream = tokio::time::timeout(TIMEOUT, open)
        .await
        .map_err(|_| DiscoveryError::Open("timed out".into()))?
        .map_err(|e| DiscoveryError::Open(e.to_string()))?;
    let bytes =
        serde_json::to_vec(request).map_err(|e| DiscoveryError::Malformed(e.to_string()))?;
    codec::send_frame(&mut stream, &bytes)
        .await
        .map_err(FrameError::from)?;
    let frame = codec::read_frame(&mut stream, REPLY_BYTES_MAX, TIMEOUT)
        .await?
        .ok_or(DiscoveryError::Closed)?;
    match serde_json::from_slice::<SearchReply>(&frame)
        .map_err(|e| DiscoveryError::Malformed(e.to_string()))?
    {
        SearchReply::Ok(response) => Ok(response),
        SearchReply::Error(reason) => Err(DiscoveryError::Refused(reason)),
    }
}

/// Asks the node at `address` from a throwaway libp2p identity, without running a node: what
/// `meshnode search --peer` does.
pub async fn query_address(
    address: Multiaddr,
    request: &SearchRequest,
) -> Result<SearchResponse, DiscoveryError> {
    use libp2p::swarm::SwarmEvent;
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default().nodelay(true),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .map_err(|e| DiscoveryError::Open(e.to_string()))?
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .map_err(|e| DiscoveryError::Open(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(TIMEOUT))
        .build();
    let mut control = swarm.behaviour().new_control();
    swarm
        .dial(address.clone())
        .map_err(|e| DiscoveryError::Open(format!("{address}: {e}")))?;
    // Drive the swarm until connected; then keep driving it while the query runs.
    let peer = tokio::time::timeout(TIMEOUT, async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => return Ok(peer_id),
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    return Err(DiscoveryError::Open(format!("{address}: {error}")));
                }
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| DiscoveryError::Open(format!("{address}: timed out")))??;
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    let result = query(control.open_stream(peer, SEARCH_PROTOCOL), request).await;
    driver.abort();
    result
}

/// Owners whose products may be abandoned: not connected for a long time, and no entry newer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StaleOwner {
    pub owner_key: String,
    pub products: Vec<ProductId>,
    /// When this node last had a connection to the owner, if ever since it started.
    pub last_seen_micros: Option<u64>,
    /// When the owner signed its newest entry.
    pub newest_entry_micros: u64,
}

/// Discovery health: what is wrong with the catalog, reported rather than hidden.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiscoveryHealth {
    pub products: usize,
    pub stale_after_secs: u64,
    pub stale_owners: Vec<StaleOwner>,
    pub lineage: crate::lineage::LineageHealth,
}

impl DiscoveryHealth {
    pub fn is_healthy(&self) -> bool {
        self.stale_owners.is_empty() && self.lineage.is_healthy()
    }
}

/// The health report of the catalog `shared` holds. An owner is stale when neither a
/// connection nor a signed entry shows it alive within `stale_after`.
pub fn health(shared: &Shared, stale_after: Duration) -> DiscoveryHealth {
    let entries = shared.catalog.entries();
    let last_seen = shared.last_seen();
    let now = crate::hub::now_micros();
    let stale_micros = u64::try_from(stale_after.as_micros()).unwrap_or(u64::MAX);
    let mut owners: std::collections::BTreeMap<PublicKey, (Vec<ProductId>, u64)> =
        std::collections::BTreeMap::new();
    for entry in &entries {
        let (products, newest) = owners.entry(*entry.product().owner()).or_default();
        products.push(entry.product().clone());
        *newest = (*newest).max(entry.entry().timestamp_micros);
    }
    let stale_owners = owners
        .into_iter()
        .filter_map(|(owner, (mut products, newest))| {
            let seen = PeerId::from_bytes(&owner.to_peer_id_bytes())
                .ok()
                .and_then(|peer| last_seen.get(&peer).copied());
            let alive = seen.unwrap_or(0).max(newest);
            (now.saturating_sub(alive) > stale_micros).then(|| {
                products.sort();
                StaleOwner {
                    owner_key: owner.to_string(),
                    products,
                    last_seen_micros: seen,
                    newest_entry_micros: newest,
                }
            })
        })
        .collect();
    DiscoveryHealth {
        products: entries.len(),
        stale_after_secs: stale_after.as_secs(),
        stale_owners,
        lineage: shared.discovery.lineage(&shared.catalog).health(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::entry;
    use crate::metrics::Metrics;
    use crate::store::MemoryStore;
    use mesh_protocol::{Config, SecretKey};

    /// The follower's path on the async runtime applies nothing while the catalog, the lineage
    /// graph or the index is held, and applies the change once none is.
    #[test]
    fn changes_tried_here_wait_for_nothing() {
        let catalog = Catalog::load(
            Arc::new(MemoryStore::new()),
            Arc::new(Config::default()),
            Arc::new(Metrics::default()),
        )
        .unwrap();
        let owner = SecretKey::from_bytes(&[7; 32]);
        let accepted = catalog
            .accept_many([(entry(&owner, "orders", 1), "peer")])
            .unwrap();
        let product = accepted.changed[0].product().clone();
        let discovery = Discovery::new().unwrap();
        let products = [product.clone()];

        {
            let _writing = catalog.held();
            assert_eq!(
                discovery.try_apply_changes(&catalog, &products),
                Applied::Busy
            );
        }
        {
            let _building = discovery.graph.lock().unwrap();
            assert_eq!(
                discovery.try_apply_changes(&catalog, &products),
                Applied::Busy
            );
        }
        assert!(discovery.index.is_empty(), "nothing applied while held");

        // The lineage graph built before the change is dropped with it.
        let before = discovery.lineage(&catalog);
        assert_eq!(
            discovery.try_apply_changes(&catalog, &products),
            Applied::Done
        );
        assert_eq!(discovery.index.len(), 1);
        assert!(!Arc::ptr_eq(&before, &discovery.lineage(&catalog)));
    }
}

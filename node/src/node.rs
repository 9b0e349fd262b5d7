//! Starting a node in-process, and the handle everything else drives it through.
//!
//! [`start`] builds the swarm on the chosen transport (TCP, or libp2p's in-memory transport for
//! tests and simulations) over the chosen store, spawns the event loop, the stream servers and
//! the group-commit thread and the task that announces what own products consume, resumes
//! stored subscriptions, and returns a [`NodeHandle`]. The binary, the demo, the tests and the
//! simulator all start nodes this way.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use libp2p::core::transport::MemoryTransport;
use libp2p::core::upgrade::Version;
use libp2p::{Multiaddr, PeerId, Transport, noise, tcp, yamux};
use mesh_protocol::{
    CatalogEntry, Descriptor, EventId, EventRef, ForkProof, Operation, ProductId, ProductName,
    PublicKey, SecretKey, VerifiedCatalogEntry, VerifiedEvent,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::behaviour::{self, Behaviour, CATALOG_SYNC_PROTOCOL, LOG_PROTOCOL};
use crate::catalog::Catalog;
use crate::config::NodeConfig;
use crate::discovery::Discovery;
use crate::hub::{AppendError, Appender, LogHub, Receipt, Rejection, now_micros};
use crate::metrics::Metrics;
use crate::network::{COMMAND_QUEUE, Command, EventLoop};
use crate::store::Store;
use crate::{log_stream, sync_catalog};

/// Which libp2p transport a node uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// TCP + noise + yamux: real processes, loopback or a network.
    Tcp,
    /// libp2p's in-memory transport + noise + yamux: many nodes in one process. Listen on
    /// `/memory/0` for a fresh address.
    Memory,
}

/// How to start a node.
pub struct NodeOptions {
    pub config: NodeConfig,
    pub protocol: mesh_protocol::Config,
    pub transport: TransportKind,
    pub store: Arc<dyn Store>,
    /// The identity; by default the one in the store, or a new one that is then stored.
    pub key: Option<SecretKey>,
}

impl std::fmt::Debug for NodeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOptions")
            .field("config", &self.config)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// Peers whose last departure a node remembers (see `Shared::remember_seen`): far more than
/// a mesh's domains, and a few hundred KiB.
const LAST_SEEN_MAX: usize = 8192;

/// State shared by the event loop, the stream tasks and the handle.
pub struct Shared {
    pub peer_id: PeerId,
    /// `node{id=…}`: every task of the node runs inside it, so that the logs of many nodes
    /// in one process (the demo, simulations) say which node wrote each line.
    pub span: tracing::Span,
    pub key: SecretKey,
    pub public_key: PublicKey,
    pub config: NodeConfig,
    pub protocol: Arc<mesh_protocol::Config>,
    pub store: Arc<dyn Store>,
    pub hub: Arc<LogHub>,
    pub catalog: Arc<Catalog>,
    /// Search index and log holders, following the catalog.
    pub discovery: Discovery,
    pub metrics: Arc<Metrics>,
    pub commands: mpsc::Sender<Command>,
    pub control: libp2p_stream::Control,
    pub shutdown: CancellationToken,
    pub served: AtomicUsize,
    /// Background tasks that are not joined one by one; all stop at shutdown.
    tracker: TaskTracker,
    appender: Appender,
    started: Instant,
    /// Connected peers: the address of the first connection, and the arrival's number (see
    /// [`Shared::arrival_of`]).
    peers: Mutex<BTreeMap<PeerId, (Multiaddr, u64)>>,
    /// Counts peer arrivals (a first connection to a peer opened), numbering them, and other
    /// changes that may make an unreachable peer reachable ([`Shared::network_changed`]). A
    /// subscription waiting to retry wakes at once when it changes, even if the arrival
    /// happened while it was busy (a `watch` remembers; a `Notify` would only wake tasks
    /// already waiting).
    pub(crate) peer_joined: tokio::sync::watch::Sender<u64>,
    /// Counts peer departures (the last connection to a peer closed), to wake the tasks in
    /// [`Shared::gone`]. Every departure wakes every such task; each checks its own peer in
    /// `peers`, a map lookup.
    peer_left: tokio::sync::watch::Sender<u64>,
    listen_addrs: Mutex<Vec<Multiaddr>>,
    syncing: Mutex<HashSet<PeerId>>,
    sources: Mutex<HashMap<ProductId, (PeerId, u64)>>,
    following: Mutex<HashMap<ProductId, CancellationToken>>,
    publishing: tokio::sync::Mutex<()>,
    /// Counts changes to what the own products consume, for [`announce_consumption`].
    consumption: tokio::sync::watch::Sender<u64>,
    /// The count of changes the last announcement took in.
    consumption_announced: std::sync::atomic::AtomicU64,
    /// Upstream products each own product's events cited since start (observed lineage).
    cited: Mutex<HashMap<ProductName, BTreeSet<ProductId>>>,
    /// When peers that left were last connected: pruned past [`LAST_SEEN_MAX`] entries.
    last_seen: Mutex<HashMap<PeerId, u64>>,
    /// Live log streams per peer, served or followed, and the owners of followed products:
    /// their connections are kept.
    log_streams: Mutex<HashMap<PeerId, usize>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

/// A live log stream with a peer (see [`Shared::log_stream_with`]).
pub(crate) struct LogStreamGuard {
    shared: Arc<Shared>,
    peer: PeerId,
}

impl Drop for LogStreamGuard {
    fn drop(&mut self) {
        let mut streams = lock(&self.shared.log_streams);
        if let Some(n) = streams.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                streams.remove(&self.peer);
            }
        }
    }
}

/// `spawn_blocking` in the caller's span, so that what the work logs says which node did it.
pub(crate) fn spawn_blocking<F, R>(work: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // These maps are replaced entry by entry; a poisoned lock still holds a consistent map.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// [`lock`] without waiting: `None` while someone else holds `m`.
pub(crate) fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

impl Shared {
    pub(crate) fn listen_addrs_push(&self, address: Multiaddr) {
        lock(&self.listen_addrs).push(address);
    }

    pub(crate) fn peer_connected(&self, peer: PeerId, address: Multiaddr) {
        let mut peers = lock(&self.peers);
        let mut arrival = 0;
        self.peer_joined.send_modify(|n| {
            *n += 1;
            arrival = *n;
        });
        peers.insert(peer, (address, arrival));
        self.metrics.peers_connected.set(peers.len() as i64);
    }

    /// Wakes what waits for a peer's arrival, as an arrival does: a catalog sync found this
    /// node cut off from part of the network, so an owner it could not reach may be reachable.
    /// (The arrival it numbers belongs to no peer; numbers only need to differ.)
    pub(crate) fn network_changed(&self) {
        self.peer_joined.send_modify(|n| *n += 1);
    }

    pub(crate) fn is_connected(&self, peer: &PeerId) -> bool {
        lock(&self.peers).contains_key(peer)
    }

    /// Opens a stream to `peer`, dialling it if it is not connected.
    ///
    /// libp2p-stream dials an unconnected peer itself, but asks the swarm through a channel of
    /// one slot that the swarm empties when it next runs: of two opens to unconnected peers in
    /// a row, the second's dial is dropped, and that open waits until something else connects
    /// the peer or its caller's timeout runs out (a node restarting with several
    /// subscriptions opens them all at once). So the node dials as well, once libp2p-stream
    /// waits for the connection: whichever of the two dials runs first, the other finds the
    /// peer being dialled, and its connection or its failure reaches the waiting open. (One
    /// gap is left inside libp2p-stream: an open made while a new connection to the peer is
    /// being set up, after the pending opens were handed to it and before libp2p-stream counts
    /// it, waits for a dial that never comes, until the caller's timeout.)
    pub(crate) async fn open_stream(
        &self,
        peer: PeerId,
        protocol: libp2p::StreamProtocol,
    ) -> Result<libp2p::Stream, libp2p_stream::OpenStreamError> {
        let mut control = self.control.clone();
        let mut open = std::pin::pin!(control.open_stream(peer, protocol));
        // The first poll registers the open with libp2p-stream, and asks for its dial.
        if let std::task::Poll::Ready(result) = futures::poll!(open.as_mut()) {
            return result;
        }
        // Whether or not the peer looks connected here: when a connection closes,
        // libp2p-stream forgets it a moment before this node does. The dial is a no-op when
        // the peer is connected or being dialled. Waits only while the command queue is full
        // (the caller's timeout bounds it), and fails only once the event loop has stopped.
        let _ = self.commands.send(Command::Connect { peer }).await;
        open.await
    }

    /// Asks the network to find `peer` through Kademlia and connect to it, if it is not
    /// connected. Never waits: when the command queue is full, the next ask will do.
    pub(crate) fn find_peer(&self, peer: PeerId) {
        if !lock(&self.peers).contains_key(&peer) {
            let _ = self.commands.try_send(Command::FindPeer { peer });
        }
    }

    /// Peers that a log stream, served or followed, runs with.
    pub(crate) fn peers_with_log_streams(&self) -> HashSet<PeerId> {
        lock(&self.log_streams).keys().copied().collect()
    }

    /// Counts a log stream with `peer` (or a subscription wanting its connection) until the
    /// guard drops.
    pub(crate) fn log_stream_with(self: &Arc<Self>, peer: PeerId) -> LogStreamGuard {
        *lock(&self.log_streams).entry(peer).or_insert(0) += 1;
        LogStreamGuard {
            shared: self.clone(),
            peer,
        }
    }

    pub(crate) fn peer_disconnected(&self, peer: &PeerId) {
        let mut peers = lock(&self.peers);
        peers.remove(peer);
        self.metrics.peers_connected.set(peers.len() as i64);
        drop(peers);
        self.remember_seen(*peer);
        self.peer_left.send_modify(|n| *n += 1);
    }

    /// Records when `peer` left, keeping the record bounded: past [`LAST_SEEN_MAX`] peers
    /// it drops the peers that left longest ago, owners of catalog products (whose liveness
    /// the health report reads) last, so that peers connecting under ever new identities
    /// cannot grow it without end.
    fn remember_seen(&self, peer: PeerId) {
        let mut seen = lock(&self.last_seen);
        seen.insert(peer, now_micros());
        if seen.len() <= LAST_SEEN_MAX {
            return;
        }
        let owners: HashSet<PeerId> = self
            .catalog
            .owners()
            .into_iter()
            .filter_map(|key| PeerId::from_bytes(&key.to_peer_id_bytes()).ok())
            .collect();
        // Others before owners, oldest first; down to three quarters of the bound whatever
        // the catalog holds, so the catalog is read once per quarter of the bound.
        let mut order: Vec<(bool, u64, PeerId)> = seen
            .iter()
            .map(|(p, t)| (owners.contains(p), *t, *p))
            .collect();
        order.sort_unstable();
        let excess = seen.len().saturating_sub(LAST_SEEN_MAX / 4 * 3);
        for (_, _, p) in order.iter().take(excess) {
            seen.remove(p);
        }
    }

    /// The number of `peer`'s arrival if it is connected: the mark that [`Shared::gone`]
    /// compares against.
    pub(crate) fn arrival_of(&self, peer: &PeerId) -> Option<u64> {
        lock(&self.peers).get(peer).map(|(_, arrival)| *arrival)
    }

    /// Resolves once the connections to `peer` that were open at `mark` (an
    /// [`Shared::arrival_of`] reading) have all closed, or none is open now; a quick
    /// reconnect after the mark does not hide the departure (it is another arrival). A read
    /// on a stream must also watch this: when this node closes a connection itself (yamux's
    /// graceful close), the readers of its streams are not woken, and would wait for their
    /// own timeouts (10 s and more) to learn that the connection is gone.
    pub(crate) async fn gone(&self, peer: PeerId, mark: Option<u64>) {
        let mut left = self.peer_left.subscribe();
        while mark.is_some() && self.arrival_of(&peer) == mark {
            if left.changed().await.is_err() {
                // The sender lives in `self`: cannot happen while we hold `self`.
                return std::future::pending().await;
            }
        }
    }

    /// When each peer was last connected (now, for connected ones), microseconds since the
    /// Unix epoch. Kept since this node started.
    pub(crate) fn last_seen(&self) -> HashMap<PeerId, u64> {
        let now = now_micros();
        let mut seen = lock(&self.last_seen).clone();
        for peer in lock(&self.peers).keys() {
            seen.insert(*peer, now);
        }
        seen.insert(self.peer_id, now);
        seen
    }

    pub(crate) fn connected_peers(&self) -> Vec<PeerId> {
        lock(&self.peers).keys().copied().collect()
    }

    /// Marks a catalog sync with `peer` as running; `false` if one already is.
    pub(crate) fn begin_sync(&self, peer: PeerId) -> bool {
        lock(&self.syncing).insert(peer)
    }

    pub(crate) fn end_sync(&self, peer: &PeerId) {
        lock(&self.syncing).remove(peer);
    }

    /// Runs a background task until it ends or the node shuts down.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(
            async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = task => {}
                }
            }
            .instrument(self.span.clone()),
        );
    }

    /// Hands a command to the event loop; fails only once the node is shutting down.
    async fn command(&self, command: Command) -> Result<(), NodeError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| NodeError::Internal("node is shutting down".into()))
    }

    /// Signs, stores and gossips the next revision of one of this node's products.
    pub(crate) async fn publish_entry(
        &self,
        product: ProductId,
        descriptor: Descriptor,
        consumes: Vec<ProductId>,
    ) -> Result<VerifiedCatalogEntry, NodeError> {
        let revision = self.catalog.get(&product).map_or(0, |e| e.revision()) + 1;
        let entry = CatalogEntry {
            product,
            revision,
            timestamp_micros: now_micros(),
            descriptor,
            consumes,
        }
        .sign(&self.key, &self.protocol)
        .map_err(|e| NodeError::BadRequest(e.to_string()))?;
        let catalog = self.catalog.clone();
        let stored = entry.clone();
        crate::node::spawn_blocking(move || catalog.accept_own(&stored))
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))??;
        self.command(Command::Gossip {
            entry: entry.encoded().clone(),
        })
        .await?;
        tracing::info!(product = %entry.product().short(), revision, "published");
        Ok(entry)
    }

    /// What the own product `descriptor` describes consumes, as its catalog entry announces it
    /// (observed lineage): each subscription the product declares as an input or whose
    /// events its events cited; and every subscription that no own product declares or cites,
    /// since then which product it feeds is unknown and impact analysis must not miss it.
    pub(crate) fn consumes(&self, descriptor: &Descriptor) -> Result<Vec<ProductId>, NodeError> {
        let subscriptions = self.store.subscriptions()?;
        let own = self.own_entries();
        let cited = lock(&self.cited);
        let claims = |name: &ProductName, inputs: &[ProductId], p: &ProductId| {
            inputs.contains(p) || cited.get(name).is_some_and(|c| c.contains(p))
        };
        let mut consumes: Vec<ProductId> = subscriptions
            .into_iter()
            .filter(|p| {
                claims(&descriptor.name, &descriptor.inputs, p)
                    || !own.iter().any(|e| {
                        let d = &e.entry().descriptor;
                        d.name != descriptor.name && claims(&d.name, &d.inputs, p)
                    })
            })
            .collect();
        consumes.sort();
        consumes.dedup();
        let max = self.protocol.consumes_max;
        if consumes.len() > max {
            tracing::warn!(
                product = %descriptor.name,
                subscriptions = consumes.len(),
                "more subscriptions than one entry announces ({max}); the rest go unannounced"
            );
            consumes.truncate(max);
        }
        Ok(consumes)
    }

    /// The current catalog entries of this node's own products.
    fn own_entries(&self) -> Vec<VerifiedCatalogEntry> {
        self.catalog.owned_by(&self.public_key)
    }

    /// Re-announces what each own product consumes where it changed. The
    /// [`announce_consumption`] task calls it a moment after each change, and shutdown for a
    /// change still waiting.
    ///
    /// Never fails the operation that triggered it, which has already taken effect: a product
    /// whose new entry cannot be made (e.g. its descriptor plus the list is over the entry size
    /// limit) keeps its previous announcement, and the problem is logged. Returns whether
    /// every entry that had to change did.
    pub(crate) async fn refresh_consumption(&self) -> bool {
        let _one_at_a_time = self.publishing.lock().await;
        let mut all = true;
        for entry in self.own_entries() {
            let product = entry.product().clone();
            let result = match self.consumes(&entry.entry().descriptor) {
                Ok(consumes) if consumes == entry.entry().consumes => Ok(()),
                Ok(consumes) => self
                    .publish_entry(product.clone(), entry.entry().descriptor.clone(), consumes)
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::warn!(product = %product.short(), "cannot announce what it consumes: {e}");
                all = false;
            }
        }
        all
    }

    /// Records that what the own products consume may have changed (a subscription, an
    /// unsubscription, an event citing a product not cited before): [`announce_consumption`]
    /// signs the new entries once the changes made together are in.
    pub(crate) fn consumption_changed(&self) {
        self.consumption.send_modify(|n| *n += 1);
    }

    pub(crate) fn set_source(&self, product: &ProductId, peer: PeerId, source_head: u64) {
        lock(&self.sources).insert(product.clone(), (peer, source_head));
    }
}

/// Accepts streams of one protocol until shutdown, serving each in its own task.
pub(crate) async fn accept_streams<F, Fut, E>(
    shared: Arc<Shared>,
    mut incoming: libp2p_stream::IncomingStreams,
    what: &'static str,
    serve: F,
) where
    F: Fn(Arc<Shared>, PeerId, libp2p::Stream) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    use futures::StreamExt;
    let shutdown = shared.shutdown.clone();
    loop {
        let (peer, stream) = tokio::select! {
            () = shutdown.cancelled() => return,
            next = incoming.next() => match next {
                Some(next) => next,
                None => return,
            },
        };
        let served = serve(shared.clone(), peer, stream);
        shared.spawn(async move {
            if let Err(e) = served.await {
                tracing::debug!(peer = %crate::network::short(&peer), "{what} stream ended: {e}");
            }
        });
    }
}

/// A running node. Cheap to clone; every clone drives the same node.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    pub(crate) shared: Arc<Shared>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

/// libp2p's in-memory transport under noise and yamux, as [`TransportKind::Memory`] runs it.
pub(crate) fn memory_transport(
    key: &libp2p::identity::Keypair,
) -> Result<
    libp2p::core::transport::Boxed<(PeerId, libp2p::core::muxing::StreamMuxerBox)>,
    Box<dyn std::error::Error + Send + Sync>,
> {
    Ok(MemoryTransport::default()
        .upgrade(Version::V1)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .boxed())
}

/// Builds a node's transport from its identity key, in place of the one [`TransportKind`]
/// names: used by the simulator (`meshsim`) for an in-process network whose links it shapes
/// (delay, loss, partitions) and measures (bytes, gossip copies). The caller applies the
/// security and multiplexing upgrades.
pub type TransportFactory = Box<
    dyn FnOnce(
            &libp2p::identity::Keypair,
        ) -> Result<
            libp2p::core::transport::Boxed<(PeerId, libp2p::core::muxing::StreamMuxerBox)>,
            Box<dyn std::error::Error + Send + Sync>,
        > + Send,
>;

/// Starts a node. Returns once it listens on every address in its configuration.
pub async fn start(options: NodeOptions) -> anyhow::Result<NodeHandle> {
    start_on(options, None).await
}

/// Starts a node on the transport `transport` builds; `options.transport` is not used.
pub async fn start_with_transport(
    options: NodeOptions,
    transport: TransportFactory,
) -> anyhow::Result<NodeHandle> {
    start_on(options, Some(transport)).await
}

async fn start_on(
    options: NodeOptions,
    custom_transport: Option<TransportFactory>,
) -> anyhow::Result<NodeHandle> {
    let NodeOptions {
        config,
        protocol,
        transport,
        store,
        key,
    } = options;
    protocol
        .validate()
        .map_err(|e| anyhow::anyhow!("protocol limits: {e}"))?;
    config
        .check()
        .map_err(|e| anyhow::anyhow!("node settings: {e}"))?;
    let key = match key {
        Some(k) => k,
        None => identity(store.as_ref())?,
    };
    let keypair =
        libp2p::identity::Keypair::ed25519_from_bytes(key.to_bytes()).context("identity key")?;
    let peer_id = keypair.public().to_peer_id();
    let protocol = Arc::new(protocol);
    let mut swarm = build_swarm(keypair, transport, custom_transport, &config, &protocol)?;
    for address in &config.listen {
        swarm
            .listen_on(address.clone())
            .with_context(|| format!("cannot listen on {address}"))?;
    }

    let metrics = Arc::new(Metrics::default());
    let hub = Arc::new(LogHub::new(
        store.clone(),
        protocol.clone(),
        metrics.clone(),
    ));
    let catalog = Arc::new(Catalog::load(
        store.clone(),
        protocol.clone(),
        metrics.clone(),
    )?);
    let appender = Appender::start(hub.clone(), key.clone(), config.commit_batch_max)?;
    let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let mut control = swarm.behaviour().stream.new_control();
    let log_streams = control
        .accept(LOG_PROTOCOL)
        .map_err(|_| anyhow::anyhow!("log protocol registered twice"))?;
    let sync_streams = control
        .accept(CATALOG_SYNC_PROTOCOL)
        .map_err(|_| anyhow::anyhow!("catalog sync protocol registered twice"))?;
    let search_streams = control
        .accept(crate::discovery::SEARCH_PROTOCOL)
        .map_err(|_| anyhow::anyhow!("search protocol registered twice"))?;
    let catalog_changes = catalog.subscribe();
    let shared = Arc::new(Shared {
        peer_id,
        span: tracing::info_span!("node", id = %crate::network::short(&peer_id)),
        public_key: key.public(),
        key,
        config: config.clone(),
        protocol,
        store,
        hub,
        catalog,
        discovery: Discovery::new()?,
        metrics,
        commands,
        control,
        shutdown: CancellationToken::new(),
        served: AtomicUsize::new(0),
        tracker: TaskTracker::new(),
        appender,
        started: Instant::now(),
        peers: Mutex::new(BTreeMap::new()),
        peer_joined: tokio::sync::watch::Sender::new(0),
        peer_left: tokio::sync::watch::Sender::new(0),
        listen_addrs: Mutex::new(Vec::new()),
        syncing: Mutex::new(HashSet::new()),
        sources: Mutex::new(HashMap::new()),
        log_streams: Mutex::new(HashMap::new()),
        following: Mutex::new(HashMap::new()),
        publishing: tokio::sync::Mutex::new(()),
        consumption: tokio::sync::watch::Sender::new(0),
        consumption_announced: std::sync::atomic::AtomicU64::new(0),
        cited: Mutex::new(HashMap::new()),
        last_seen: Mutex::new(HashMap::new()),
    });

    let mut tasks = JoinSet::new();
    let span = &shared.span;
    tasks.spawn(
        EventLoop::new(swarm, command_rx, shared.clone())
            .run()
            .instrument(span.clone()),
    );
    tasks.spawn(log_stream::serve(shared.clone(), log_streams).instrument(span.clone()));
    tasks.spawn(sync_catalog::serve(shared.clone(), sync_streams).instrument(span.clone()));
    tasks.spawn(crate::discovery::serve(shared.clone(), search_streams).instrument(span.clone()));
    tasks.spawn(
        crate::discovery::follow_catalog(shared.clone(), catalog_changes).instrument(span.clone()),
    );
    // Subscribed here, not in the task: a change made before the task first runs counts.
    let consumption_changes = shared.consumption.subscribe();
    tasks.spawn(announce_consumption(shared.clone(), consumption_changes).instrument(span.clone()));
    let handle = NodeHandle {
        shared,
        tasks: Arc::new(Mutex::new(tasks)),
    };

    // Wait until every listener is up, so callers can hand out our addresses.
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.listen_addrs().len() < config.listen.len() {
        if Instant::now() > deadline {
            handle.shutdown().await;
            anyhow::bail!(
                "node did not start listening on {:?} within 5 s",
                config.listen
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for peer in &config.peers {
        if let Err(e) = handle.dial(peer.clone()).await {
            tracing::warn!(%peer, "cannot dial bootstrap peer: {e}");
        }
    }
    for product in handle.shared.store.subscriptions()? {
        handle.follow(product);
    }
    if consumption_unannounced(&handle.shared)? {
        handle.shared.consumption_changed();
    }
    tracing::info!(peer_id = %peer_id, domain = %config.domain, "node started");
    Ok(handle)
}

/// How long [`announce_consumption`] waits for the next of several changes made together.
const CONSUMPTION_QUIET: Duration = Duration::from_millis(100);
/// The longest a change waits to be announced while changes keep coming.
const CONSUMPTION_WAIT_MAX: Duration = Duration::from_secs(1);

/// Announces what the own products consume (PROTOCOL.md §5) a moment after it changes, once
/// for changes made together: a node that subscribes to ten products in a row signs one new
/// revision of each own product, not ten, and every node in the mesh checks, stores and
/// indexes one. A change waits [`CONSUMPTION_QUIET`] for the next, and
/// [`CONSUMPTION_WAIT_MAX`] at most.
async fn announce_consumption(shared: Arc<Shared>, mut changes: tokio::sync::watch::Receiver<u64>) {
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        let deadline = tokio::time::Instant::now() + CONSUMPTION_WAIT_MAX;
        loop {
            changes.mark_unchanged();
            let quiet = (tokio::time::Instant::now() + CONSUMPTION_QUIET).min(deadline);
            tokio::select! {
                () = shared.shutdown.cancelled() => return,
                () = tokio::time::sleep_until(quiet) => break,
                changed = changes.changed() => if changed.is_err() { return },
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        let taken_in = *changes.borrow_and_update();
        // A failed announcement stays pending: shutdown tries once more.
        if shared.refresh_consumption().await {
            shared
                .consumption_announced
                .store(taken_in, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Whether a stored subscription is missing from every own product's entry: the process
/// stopped (a crash, `kill -9`) between subscribing and announcing it. (An entry may also list
/// products no longer subscribed, after a stop between unsubscribing and announcing: that
/// claims too much lineage rather than too little, and is mended by the next change.) Not
/// when an entry's list is full: the rest goes unannounced anyway (PROTOCOL.md §5).
fn consumption_unannounced(shared: &Shared) -> Result<bool, NodeError> {
    let own = shared.own_entries();
    let full = |e: &VerifiedCatalogEntry| e.entry().consumes.len() >= shared.protocol.consumes_max;
    if own.is_empty() || own.iter().any(full) {
        return Ok(false);
    }
    let listed: HashSet<&ProductId> = own.iter().flat_map(|e| &e.entry().consumes).collect();
    Ok(shared
        .store
        .subscriptions()?
        .iter()
        .any(|p| !listed.contains(p)))
}

/// The node's identity: stored, or new and then stored.
fn identity(store: &dyn Store) -> anyhow::Result<SecretKey> {
    if let Some(seed) = store.identity()? {
        return Ok(SecretKey::from_bytes(&seed));
    }
    let generated = libp2p::identity::Keypair::generate_ed25519()
        .try_into_ed25519()
        .context("fresh ed25519 key")?;
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&generated.secret().as_ref()[..32]);
    store.set_identity(&seed)?;
    Ok(SecretKey::from_bytes(&seed))
}

fn build_swarm(
    keypair: libp2p::identity::Keypair,
    transport: TransportKind,
    custom_transport: Option<TransportFactory>,
    config: &NodeConfig,
    protocol: &mesh_protocol::Config,
) -> anyhow::Result<libp2p::Swarm<Behaviour>> {
    let behaviour = |key: &libp2p::identity::Keypair| {
        Behaviour::new(key, config, protocol)
            .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })
    };
    let builder = libp2p::SwarmBuilder::with_existing_identity(keypair).with_tokio();
    if let Some(factory) = custom_transport {
        return Ok(builder
            .with_other_transport(factory)?
            .with_behaviour(behaviour)?
            .with_swarm_config(|c| behaviour::swarm_config(config, c))
            .build());
    }
    let swarm = match transport {
        TransportKind::Tcp => builder
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_behaviour(behaviour)?
            .with_swarm_config(|c| behaviour::swarm_config(config, c))
            .build(),
        TransportKind::Memory => builder
            .with_other_transport(memory_transport)?
            .with_behaviour(behaviour)?
            .with_swarm_config(|c| behaviour::swarm_config(config, c))
            .build(),
    };
    Ok(swarm)
}

// ---- the handle --------------------------------------------------------------------------------

/// Why a request to the node failed, as a user should read it.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Internal(String),
}

impl From<crate::store::StoreError> for NodeError {
    fn from(e: crate::store::StoreError) -> Self {
        NodeError::Internal(format!("store: {e}"))
    }
}

impl From<AppendError> for NodeError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Invalid(m) => NodeError::BadRequest(m),
            other => NodeError::Internal(other.to_string()),
        }
    }
}

/// One event of a log, as `events` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventView {
    pub seq: u64,
    pub id: EventId,
    pub prev: Option<EventId>,
    pub timestamp_micros: u64,
    pub op: String,
    pub key: String,
    /// The payload as JSON when it is JSON, else as a string (lossy UTF-8).
    pub payload: serde_json::Value,
    pub causes: Vec<EventRef>,
    /// `verified`, or why the stored event does not verify or does not chain.
    pub status: String,
}

/// A subscription as `status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubscriptionView {
    pub product: ProductId,
    pub held_seq: u64,
    pub source: Option<String>,
    pub source_head: Option<u64>,
    pub lag: u64,
}

/// A product this node owns, as `status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OwnProductView {
    pub product: ProductId,
    pub revision: u64,
    pub head_seq: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerView {
    pub peer_id: String,
    pub address: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForkView {
    pub product: ProductId,
    pub seq: u64,
    pub first: EventId,
    pub second: EventId,
}

/// What `meshnode status` prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub peer_id: String,
    pub domain: String,
    pub listen_addrs: Vec<String>,
    pub uptime_secs: u64,
    pub peers: Vec<PeerView>,
    pub catalog_entries: usize,
    pub products: Vec<OwnProductView>,
    pub subscriptions: Vec<SubscriptionView>,
    pub forks: Vec<ForkView>,
    pub equivocations: usize,
    pub recent_rejections: Vec<Rejection>,
}

impl NodeHandle {
    /// The node's `node{id=…}` tracing span, for tasks that serve it from outside.
    pub(crate) fn span(&self) -> tracing::Span {
        self.shared.span.clone()
    }

    pub fn peer_id(&self) -> PeerId {
        self.shared.peer_id
    }

    pub fn public_key(&self) -> PublicKey {
        self.shared.public_key
    }

    pub fn domain(&self) -> &str {
        &self.shared.config.domain
    }

    /// Addresses peers can dial, each ending in `/p2p/<peer id>`.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        lock(&self.shared.listen_addrs)
            .iter()
            .map(|a| {
                a.clone()
                    .with(libp2p::multiaddr::Protocol::P2p(self.shared.peer_id))
            })
            .collect()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    pub fn connected_peers(&self) -> Vec<PeerId> {
        self.shared.connected_peers()
    }

    /// Connects to a peer at `address` (which may end in `/p2p/<peer id>`).
    pub async fn dial(&self, address: Multiaddr) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Dial { address, reply }).await?;
        rx.await
            .map_err(|_| NodeError::Internal("node is shutting down".into()))?
            .map_err(NodeError::BadRequest)
    }

    async fn command(&self, command: Command) -> Result<(), NodeError> {
        self.shared.command(command).await
    }

    /// The id this node's product of that name has.
    pub fn product_id(&self, name: &mesh_protocol::ProductName) -> ProductId {
        ProductId::new(self.shared.public_key, name.clone())
    }

    /// Publishes a descriptor as this node's product: a new catalog entry with the next
    /// revision, stored durably, then gossiped.
    pub async fn publish(&self, descriptor: Descriptor) -> Result<VerifiedCatalogEntry, NodeError> {
        let _one_at_a_time = self.shared.publishing.lock().await;
        let product = self.product_id(&descriptor.name);
        let consumes = self.shared.consumes(&descriptor)?;
        self.shared
            .publish_entry(product, descriptor, consumes)
            .await
    }

    /// Traces the latest event of `key` in `product` back through the events it cites.
    pub fn trace(&self, product: &ProductId, key: &[u8]) -> Result<crate::trace::Trace, NodeError> {
        crate::trace::trace(&self.shared, product, key)
    }

    /// Discovery health: stale owners and lineage problems.
    pub fn health(&self, stale_after: Duration) -> crate::discovery::DiscoveryHealth {
        crate::discovery::health(&self.shared, stale_after)
    }

    /// Ranked search over the catalog this node holds.
    pub fn search(
        &self,
        request: &crate::search::SearchRequest,
    ) -> Result<crate::search::SearchResponse, NodeError> {
        self.shared
            .discovery
            .search(request)
            .map_err(NodeError::BadRequest)
    }

    /// Asks `peer`'s index over `/mesh/search/1`. A peer that is not connected is dialled at
    /// the addresses this node knows for it, or looked up through Kademlia.
    pub async fn search_peer(
        &self,
        peer: PeerId,
        request: &crate::search::SearchRequest,
    ) -> Result<crate::search::SearchResponse, NodeError> {
        let shared = &self.shared;
        let open = async {
            let mut arrivals = shared.peer_joined.subscribe();
            shared.find_peer(peer);
            let mut failed_connected = false;
            loop {
                let e = match shared
                    .open_stream(peer, crate::discovery::SEARCH_PROTOCOL)
                    .await
                {
                    Ok(stream) => return Ok(stream),
                    Err(e) => e,
                };
                if shared.is_connected(&peer) {
                    // Maybe connected since the open failed: one more try, whose failure is
                    // the answer.
                    if failed_connected {
                        return Err(e);
                    }
                    failed_connected = true;
                } else if arrivals.changed().await.is_err() {
                    // Not connected: no address known yet, or the dial failed. The lookup may
                    // connect the peer: this tries again at each arrival, until `query`'s
                    // timeout.
                    return Err(e);
                }
            }
        };
        crate::discovery::query(open, request)
            .await
            .map_err(|e| NodeError::BadRequest(e.to_string()))
    }

    /// The product-level lineage graph of the catalog this node holds.
    pub fn lineage_graph(&self) -> Arc<crate::lineage::LineageGraph> {
        self.shared.discovery.lineage(&self.shared.catalog)
    }

    /// Parses a descriptor file's text and publishes it.
    pub async fn publish_yaml(&self, yaml: &str) -> Result<VerifiedCatalogEntry, NodeError> {
        let descriptor = Descriptor::from_yaml(yaml, &self.shared.protocol)
            .map_err(|e| NodeError::BadRequest(format!("invalid descriptor: {e}")))?;
        self.publish(descriptor).await
    }

    /// Appends an event to one of this node's products. Returns once it is durable.
    pub async fn append(
        &self,
        product: &ProductId,
        key: Bytes,
        op: Operation,
        payload: Bytes,
        causes: Vec<EventRef>,
    ) -> Result<Receipt, NodeError> {
        if product.owner() != &self.shared.public_key {
            return Err(NodeError::BadRequest(format!(
                "{product} is owned by another node; only its owner appends to it"
            )));
        }
        if self.shared.catalog.get(product).is_none() {
            return Err(NodeError::NotFound(format!(
                "no product {} here: publish its descriptor first",
                product.name()
            )));
        }
        let newly_cited = {
            let mut cited = lock(&self.shared.cited);
            let set = cited.entry(product.name().clone()).or_default();
            let before = set.len();
            set.extend(
                causes
                    .iter()
                    .filter(|c| c.product != *product)
                    .map(|c| c.product.clone()),
            );
            set.len() > before
        };
        let receipt = self
            .shared
            .appender
            .append(product.clone(), op, key, payload, causes)
            .await?;
        if newly_cited {
            self.shared.consumption_changed();
        }
        Ok(receipt)
    }

    /// Follows a product's log from now on, and after restarts. The node's own products
    /// announce the subscription a moment later, with any others made together.
    pub async fn subscribe(&self, product: &ProductId) -> Result<(), NodeError> {
        if product.owner() == &self.shared.public_key {
            return Err(NodeError::BadRequest(format!(
                "{product} is this node's own product"
            )));
        }
        let store = self.shared.store.clone();
        let p = product.clone();
        crate::node::spawn_blocking(move || store.subscription_put(&p))
            .await
            .map_err(|e| NodeError::Internal(e.to_string()))??;
        self.follow(product.clone());
        self.shared.consumption_changed();
        Ok(())
    }

    /// Stops following a product. What was received stays.
    pub async fn unsubscribe(&self, product: &ProductId) -> Result<(), NodeError> {
        if let Some(cancel) = lock(&self.shared.following).remove(product) {
            cancel.cancel();
        }
        self.shared.store.subscription_remove(product)?;
        self.shared.consumption_changed();
        Ok(())
    }

    fn follow(&self, product: ProductId) {
        let mut following = lock(&self.shared.following);
        if following.contains_key(&product) {
            return;
        }
        let cancel = self.shared.shutdown.child_token();
        following.insert(product.clone(), cancel.clone());
        let follow = log_stream::follow(self.shared.clone(), product, cancel);
        lock(&self.tasks).spawn(follow.instrument(self.shared.span.clone()));
    }

    /// Products this node follows.
    pub fn subscriptions(&self) -> Result<Vec<ProductId>, NodeError> {
        Ok(self.shared.store.subscriptions()?)
    }

    /// The head seq this node holds of a product's log (0 for none).
    pub fn head_seq(&self, product: &ProductId) -> u64 {
        self.shared.hub.head(product).map_or(0, |h| h.seq())
    }

    /// Up to `limit` events of a product's log from `from_seq` on, each checked again: its
    /// signature, and that it chains to the one before.
    pub fn events(
        &self,
        product: &ProductId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<EventView>, NodeError> {
        let from_seq = from_seq.max(1);
        let start = from_seq.saturating_sub(1).max(1);
        let raw = self
            .shared
            .store
            .log_range(product, start, limit.saturating_add(1))?;
        let mut previous: Option<VerifiedEvent> = None;
        let mut out = Vec::new();
        for bytes in raw {
            let view = match VerifiedEvent::decode_and_verify(bytes.clone(), &self.shared.protocol)
            {
                Ok(event) => {
                    let status = match &previous {
                        Some(p) => match mesh_protocol::LogHead::at(p).validate_next(&event) {
                            Ok(()) => "verified".to_owned(),
                            Err(e) => format!("broken chain: {e}"),
                        },
                        None if event.seq() == 1 || event.seq() == start => "verified".to_owned(),
                        None => "verified (chain not checked)".to_owned(),
                    };
                    let view = event_view(&event, status);
                    previous = Some(event);
                    view
                }
                Err(e) => {
                    previous = None;
                    EventView {
                        seq: 0,
                        id: EventId::from_bytes(*blake3::hash(&bytes).as_bytes()),
                        prev: None,
                        timestamp_micros: 0,
                        op: "unknown".into(),
                        key: String::new(),
                        payload: serde_json::Value::Null,
                        causes: vec![],
                        status: format!("does not verify: {e}"),
                    }
                }
            };
            if view.seq >= from_seq || view.seq == 0 {
                out.push(view);
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Audits this node's stored log of a product, as `meshnode verify` does offline.
    pub fn audit(&self, product: &ProductId) -> Result<crate::audit::AuditReport, NodeError> {
        Ok(crate::audit::audit(
            self.shared.store.as_ref(),
            product,
            &self.shared.protocol,
        )?)
    }

    /// Events of a product as this node commits them (appended or received), from now on:
    /// for applications that react to changes, and for measuring delivery latency.
    pub fn watch(
        &self,
        product: &ProductId,
    ) -> Result<tokio::sync::broadcast::Receiver<crate::hub::Live>, NodeError> {
        Ok(self.shared.hub.subscribe_live(product)?)
    }

    /// A record's current value in the live replica.
    pub fn get(&self, product: &ProductId, key: &[u8]) -> Result<Option<Bytes>, NodeError> {
        Ok(self.shared.store.replica_get(product, key)?)
    }

    pub fn catalog(&self) -> Vec<VerifiedCatalogEntry> {
        self.shared.catalog.entries()
    }

    pub fn catalog_entry(&self, product: &ProductId) -> Option<VerifiedCatalogEntry> {
        self.shared.catalog.get(product)
    }

    /// Entries as they change at this node, from now on.
    pub fn catalog_changes(&self) -> tokio::sync::broadcast::Receiver<Arc<VerifiedCatalogEntry>> {
        self.shared.catalog.subscribe()
    }

    /// Fork proofs this node holds, of one product or all.
    pub fn forks(&self, product: Option<&ProductId>) -> Result<Vec<ForkProof>, NodeError> {
        self.shared
            .store
            .forks(product)?
            .into_iter()
            .map(|b| {
                ForkProof::decode_and_verify(b, &self.shared.protocol)
                    .map_err(|e| NodeError::Internal(format!("stored fork proof: {e}")))
            })
            .collect()
    }

    pub fn status(&self) -> Result<Status, NodeError> {
        let s = &self.shared;
        let peers = lock(&s.peers)
            .iter()
            .map(|(p, (a, _))| PeerView {
                peer_id: p.to_string(),
                address: a.to_string(),
            })
            .collect();
        let products = s
            .catalog
            .owned_by(&s.public_key)
            .into_iter()
            .map(|e| OwnProductView {
                head_seq: self.head_seq(e.product()),
                revision: e.revision(),
                product: e.product().clone(),
            })
            .collect();
        let sources = lock(&s.sources).clone();
        let subscriptions = s
            .store
            .subscriptions()?
            .into_iter()
            .map(|product| {
                let held_seq = self.head_seq(&product);
                let source = sources.get(&product);
                SubscriptionView {
                    held_seq,
                    source: source.map(|(p, _)| p.to_string()),
                    source_head: source.map(|(_, h)| *h),
                    lag: source.map_or(0, |(_, h)| h.saturating_sub(held_seq)),
                    product,
                }
            })
            .collect();
        let forks = self
            .forks(None)?
            .into_iter()
            .map(|f| {
                let (a, b) = f.events();
                ForkView {
                    product: f.product().clone(),
                    seq: f.seq(),
                    first: a.id(),
                    second: b.id(),
                }
            })
            .collect();
        Ok(Status {
            peer_id: s.peer_id.to_string(),
            domain: s.config.domain.clone(),
            listen_addrs: self
                .listen_addrs()
                .iter()
                .map(ToString::to_string)
                .collect(),
            uptime_secs: s.started.elapsed().as_secs(),
            peers,
            catalog_entries: s.catalog.len(),
            products,
            subscriptions,
            forks,
            equivocations: s.catalog.equivocations().len(),
            recent_rejections: s.hub.rejections(),
        })
    }

    /// Stops the node and releases its store: cancels the event loop, every stream and
    /// subscription, lets queued appends commit, and waits (5 s at most) until nothing else
    /// holds the node's state. A node can be started again on the same store afterwards.
    pub async fn shutdown(self) {
        let shared = self.shared.clone();
        // On tokio's clock, which the waits below run on: a paused test clock may run ahead
        // of `std::time::Instant`.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        // A change still waiting to be announced is signed and stored now, and handed to the
        // network, which may or may not send it before it stops: peers that miss it get it by
        // anti-entropy when the node runs again.
        let changes = *shared.consumption.borrow();
        let announced = shared
            .consumption_announced
            .load(std::sync::atomic::Ordering::Relaxed);
        if changes != announced {
            let _ = tokio::time::timeout_at(deadline, shared.refresh_consumption()).await;
        }
        shared.shutdown.cancel();
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        drop(self);
        if tokio::time::timeout_at(deadline, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("tasks still running 5 s after shutdown; aborting them");
            tasks.abort_all();
        }
        shared.tracker.close();
        let _ = tokio::time::timeout_at(deadline, shared.tracker.wait()).await;
        let stopping = shared.clone();
        let _ = crate::node::spawn_blocking(move || stopping.appender.stop()).await;
        // Blocking work already under way (an ingest, a gossip check, a backfill read) holds
        // the state or the store briefly; wait for it, so the store is closed when we return.
        while Arc::strong_count(&shared) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let store = match Arc::try_unwrap(shared) {
            Ok(state) => state.store.clone(),
            Err(_) => {
                tracing::warn!(
                    "node state still referenced after shutdown (another NodeHandle clone?)"
                );
                return;
            }
        };
        while Arc::strong_count(&store) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if Arc::strong_count(&store) > 1 {
            tracing::warn!("store still in use 5 s after shutdown");
        }
    }
}

pub(crate) fn event_view(event: &VerifiedEvent, status: String) -> EventView {
    let e = event.event();
    let payload = serde_json::from_slice(&e.payload).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&e.payload).into_owned())
    });
    EventView {
        seq: e.seq,
        id: event.id(),
        prev: e.prev,
        timestamp_micros: e.timestamp_micros,
        op: e.op.as_str().to_owned(),
        key: String::from_utf8_lossy(&e.key).into_owned(),
        payload: if e.op == Operation::Delete {
            serde_json::Value::Null
        } else {
            payload
        },
        causes: e.causes.clone(),
        status,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::MemoryStore;

    const WAIT: Duration = Duration::from_secs(20);

    pub(crate) async fn memory_node(peers: Vec<Multiaddr>) -> NodeHandle {
        start_in_memory(NodeConfig {
            domain: "test".into(),
            listen: vec!["/memory/0".parse().unwrap()],
            peers,
            ..NodeConfig::default()
        })
        .await
        .expect("node starts")
    }

    /// A node with `config` on the memory transport and a store in memory.
    async fn start_in_memory(config: NodeConfig) -> anyhow::Result<NodeHandle> {
        start(NodeOptions {
            config,
            protocol: mesh_protocol::Config::default(),
            transport: TransportKind::Memory,
            store: Arc::new(MemoryStore::new()),
            key: None,
        })
        .await
    }

    /// Publishes a product named `orders` at `node`, which owns it.
    pub(crate) async fn publish_orders(node: &NodeHandle) -> ProductId {
        let descriptor = "name: orders\ndomain: test\nowner: test-team@example.com\n\
                          description: Orders.\ntags: [test]\nversion: 1.0.0\n\
                          schema:\n  fields:\n    - name: id\n      type: string\n";
        node.publish_yaml(descriptor)
            .await
            .expect("publish")
            .product()
            .clone()
    }

    /// `node`'s address, to dial it with.
    pub(crate) fn address(node: &NodeHandle) -> Multiaddr {
        node.listen_addrs()[0]
            .clone()
            .with(libp2p::multiaddr::Protocol::P2p(node.peer_id()))
    }

    /// Waits (at most `WAIT`) until `node` is connected to `peer`, or is not, as `connected` says.
    pub(crate) async fn until_connected(node: &NodeHandle, peer: PeerId, connected: bool) {
        until(
            || node.shared.is_connected(&peer) == connected,
            &format!("connected to {peer} should become {connected}"),
        )
        .await;
    }

    /// Polls `condition` until it holds; panics with `what` after `WAIT`.
    async fn until(condition: impl Fn() -> bool, what: &str) {
        tokio::time::timeout(WAIT, async {
            while !condition() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}"));
    }

    #[tokio::test]
    async fn gone_waits_while_a_peer_is_connected_and_ends_when_it_leaves() {
        let a = memory_node(Vec::new()).await;
        let b = memory_node(vec![address(&a)]).await;
        let a_id = a.peer_id();
        until_connected(&b, a_id, true).await;

        let shared = b.shared.clone();
        let mark = shared.arrival_of(&a_id);
        let gone = tokio::spawn(async move { shared.gone(a_id, mark).await });
        // Peers joining or leaving other than `a` must not end the wait: a third node comes
        // and goes while `a` stays.
        let c = memory_node(vec![address(&b)]).await;
        let c_id = c.peer_id();
        until_connected(&b, c_id, true).await;
        c.shutdown().await;
        until_connected(&b, c_id, false).await;
        // Let the waiting task see the departure (the test runtime has one thread).
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!gone.is_finished(), "a is still connected");

        a.shutdown().await;
        tokio::time::timeout(WAIT, gone)
            .await
            .expect("the wait ends once a has left")
            .unwrap();
        assert!(!b.shared.is_connected(&a_id));
        b.shutdown().await;
    }

    /// A node on the memory transport that wants one peer, so that it dials no more.
    async fn wanting_one(peers: Vec<Multiaddr>, listen: bool) -> anyhow::Result<NodeHandle> {
        start_in_memory(NodeConfig {
            domain: "test".into(),
            listen: if listen {
                vec!["/memory/0".parse().unwrap()]
            } else {
                Vec::new()
            },
            peers,
            peers_wanted: 1,
            ..NodeConfig::default()
        })
        .await
    }

    /// Two nodes, `a` and `b`, whose addresses a third, `s`, knows without a connection to
    /// either, and `other`, the one peer `s` keeps (nodes wanting one peer each).
    async fn known_but_unconnected() -> (NodeHandle, NodeHandle, NodeHandle, NodeHandle) {
        let a = wanting_one(Vec::new(), true).await.expect("a starts");
        let b = wanting_one(vec![address(&a)], true)
            .await
            .expect("b starts");
        let other = memory_node(Vec::new()).await;
        let s = wanting_one(vec![address(&other)], false)
            .await
            .expect("s starts");
        until_connected(&s, other.peer_id(), true).await;
        // s learns where a and b are; Kademlia may connect them on its own: those close.
        for owner in [&a, &b] {
            let (peer, address) = (owner.peer_id(), owner.listen_addrs()[0].clone());
            s.command(Command::AddAddress { peer, address })
                .await
                .expect("command");
        }
        // Kademlia bootstraps 500 ms after peers enter a small routing table, and may dial
        // them then: past that, nothing dials them unless asked.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for owner in [&a, &b] {
            s.command(Command::Disconnect {
                peer: owner.peer_id(),
            })
            .await
            .expect("command");
            until_connected(&s, owner.peer_id(), false).await;
        }
        (a, b, other, s)
    }

    /// Streams opened at once to two peers this node is not connected to both open: through
    /// libp2p-stream alone the second one's dial is dropped (see `Shared::open_stream`), and
    /// here nothing else would connect that peer: every node has the one peer it wants, so
    /// none dials more, `s` does not listen, so none dials it, and Kademlia's dials to the two
    /// peers are over. (With `open_stream`'s own dial taken out, b's open waits out `WAIT`.)
    #[tokio::test]
    async fn streams_opened_at_once_to_unconnected_peers_all_open() {
        let (a, b, other, s) = known_but_unconnected().await;
        let open = |peer| tokio::time::timeout(WAIT, s.shared.open_stream(peer, LOG_PROTOCOL));
        let (to_a, to_b) = tokio::join!(open(a.peer_id()), open(b.peer_id()));
        to_a.expect("a's stream opens in time").expect("a's stream");
        to_b.expect("b's stream opens in time").expect("b's stream");
        for node in [a, b, other, s] {
            node.shutdown().await;
        }
    }

    /// `search_peer` reaches peers it knows but is not connected to, two at once (a search
    /// used to open its stream through libp2p-stream alone, and timed out here).
    #[tokio::test]
    async fn searches_reach_unconnected_peers() {
        let (a, b, other, s) = known_but_unconnected().await;
        let request = crate::search::SearchRequest {
            limit: 10,
            ..crate::search::SearchRequest::default()
        };
        let search = |peer| tokio::time::timeout(WAIT, s.search_peer(peer, &request));
        let (from_a, from_b) = tokio::join!(search(a.peer_id()), search(b.peer_id()));
        for answer in [from_a, from_b] {
            let response = answer.expect("answered in time").expect("answered");
            assert_eq!(response.total, 0, "{response:?}");
        }
        for node in [a, b, other, s] {
            node.shutdown().await;
        }
    }

    /// `search_peer` reaches a peer this node has no address for: Kademlia finds it through
    /// the one peer both know, and the search waits for the connection (its first open fails
    /// at once, for want of an address).
    #[tokio::test]
    async fn searches_look_up_peers_without_an_address() {
        let other = wanting_one(Vec::new(), true).await.expect("other starts");
        let s = wanting_one(vec![address(&other)], false)
            .await
            .expect("s starts");
        until_connected(&s, other.peer_id(), true).await;
        // a joins once s's start-up lookups are over: s, with the one peer it wants, looks
        // for no more, so it learns of a only by asking.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let a = wanting_one(vec![address(&other)], true)
            .await
            .expect("a starts");
        until_connected(&a, other.peer_id(), true).await;
        until_connected(&other, a.peer_id(), true).await;
        let request = crate::search::SearchRequest {
            limit: 10,
            ..crate::search::SearchRequest::default()
        };
        let response = tokio::time::timeout(WAIT, s.search_peer(a.peer_id(), &request))
            .await
            .expect("answered in time")
            .expect("answered");
        assert_eq!(response.total, 0, "{response:?}");
        assert!(s.shared.is_connected(&a.peer_id()));
        for node in [a, other, s] {
            node.shutdown().await;
        }
    }

    /// A catalog sync that brings entries gossip had not wakes this node's subscriptions, as an
    /// arrival does, so that those cut off from their owner ask for it again at once; one that
    /// brings nothing does not.
    #[tokio::test]
    async fn a_sync_that_brings_news_wakes_the_subscriptions() {
        let a = memory_node(Vec::new()).await;
        // Straight into a's catalog: never gossiped, so b can learn it only by sync (the one
        // every new connection starts).
        let owner = SecretKey::from_bytes(&[7; 32]);
        let entry = crate::catalog::tests::entry(&owner, "orders", 1);
        let accepted = a.shared.catalog.accept_many([(entry, "test")]).unwrap();
        let product = accepted.changed[0].product().clone();
        let b = memory_node(vec![address(&a)]).await;
        let wakes = || *b.shared.peer_joined.borrow();
        until(
            || b.shared.catalog.get(&product).is_some(),
            "b syncs the entry from a",
        )
        .await;
        // a's arrival, then the news.
        until(|| wakes() == 2, "the news wakes b's subscriptions").await;
        let sync = crate::sync_catalog::sync_with(&b.shared, a.peer_id());
        assert_eq!(sync.await.expect("sync"), 0);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(wakes(), 2, "a sync with nothing new wakes nothing");
        assert_eq!(
            *a.shared.peer_joined.borrow(),
            1,
            "b's arrival only: a learned nothing"
        );
        a.shutdown().await;
        b.shutdown().await;
    }

    /// The case `Shared::gone` is for: the subscriber closes the connection its stream runs
    /// on. yamux wakes none of that stream's readers, so without `gone` the subscriber would
    /// notice only when the source's silence timeout (35 s) passes.
    #[tokio::test]
    async fn a_subscription_recovers_at_once_when_this_node_closes_its_connection() {
        let owner = memory_node(Vec::new()).await;
        let subscriber = memory_node(vec![address(&owner)]).await;
        let owner_id = owner.peer_id();
        let product = publish_orders(&owner).await;
        let append = |n: u64| {
            owner.append(
                &product,
                Bytes::from(format!("k{n}")),
                mesh_protocol::Operation::Upsert,
                Bytes::from_static(b"{}"),
                vec![],
            )
        };
        append(1).await.expect("append");
        let until_head = |seq: u64| {
            let (subscriber, product) = (&subscriber, &product);
            async move {
                let what = format!("the subscriber should reach seq {seq}");
                until(|| subscriber.head_seq(product) >= seq, &what).await;
            }
        };
        until_connected(&subscriber, owner_id, true).await;
        subscriber.subscribe(&product).await.expect("subscribe");
        until_head(1).await;

        subscriber
            .shared
            .commands
            .send(crate::network::Command::Disconnect { peer: owner_id })
            .await
            .expect("the event loop runs");
        until_connected(&subscriber, owner_id, false).await;
        append(2).await.expect("append");
        // Well under the silence timeout: the subscription must have seen the close, looked
        // the owner up again and resubscribed.
        let started = Instant::now();
        until_head(2).await;
        assert!(
            started.elapsed() < SILENCE_BOUND,
            "recovered after {:?}",
            started.elapsed()
        );
        subscriber.shutdown().await;
        owner.shutdown().await;
    }

    /// On a paused clock, so that a loaded machine cannot spread the three subscriptions over
    /// more than `CONSUMPTION_QUIET` (time stands still while blocking work runs).
    #[tokio::test(start_paused = true)]
    async fn subscriptions_made_together_are_announced_in_one_revision() {
        let node = memory_node(Vec::new()).await;
        let own = publish_orders(&node).await;
        let mut changes = node.shared.catalog.subscribe();
        let mut upstream: Vec<ProductId> = (1..=3u8)
            .map(|i| {
                let owner = SecretKey::from_bytes(&[i; 32]).public();
                ProductId::new(owner, ProductName::new("upstream").unwrap())
            })
            .collect();
        for product in &upstream {
            node.subscribe(product).await.expect("subscribe");
        }
        let announced = tokio::time::timeout(WAIT, changes.recv())
            .await
            .expect("the subscriptions are announced")
            .expect("the catalog's change feed runs");
        upstream.sort();
        assert_eq!(announced.product(), &own);
        assert_eq!(
            announced.revision(),
            2,
            "one revision for three subscriptions"
        );
        assert_eq!(announced.entry().consumes, upstream);
        tokio::time::sleep(CONSUMPTION_WAIT_MAX).await;
        assert!(changes.is_empty(), "nothing more to announce");

        // A change still waiting when the node stops is announced before it stops.
        node.unsubscribe(&upstream[0]).await.expect("unsubscribe");
        node.shutdown().await;
        let announced = changes.try_recv().expect("announced at shutdown");
        assert_eq!(announced.revision(), 3);
        assert_eq!(announced.entry().consumes, upstream[1..]);
        assert!(changes.is_empty(), "one revision for one change");
    }

    #[tokio::test]
    async fn a_subscription_stored_but_never_announced_is_found_and_only_a_change_is_signed() {
        let dir = tempfile::tempdir().unwrap();
        let on_disk = || async {
            start(NodeOptions {
                config: NodeConfig {
                    domain: "test".into(),
                    listen: vec!["/memory/0".parse().unwrap()],
                    ..NodeConfig::default()
                },
                protocol: mesh_protocol::Config::default(),
                transport: TransportKind::Memory,
                store: Arc::new(crate::store::SledStore::open(dir.path()).unwrap()),
                key: None,
            })
            .await
            .expect("starts on its store")
        };
        let node = on_disk().await;
        publish_orders(&node).await;
        let changes = node.shared.catalog.subscribe();
        assert!(!consumption_unannounced(&node.shared).unwrap());

        // As if the process had stopped between storing a subscription and announcing it.
        let upstream = ProductId::new(
            SecretKey::from_bytes(&[1; 32]).public(),
            ProductName::new("upstream").unwrap(),
        );
        node.shared.store.subscription_put(&upstream).unwrap();
        assert!(consumption_unannounced(&node.shared).unwrap());
        // Shutdown signs only a change made in this run and still waiting: this one was not.
        node.shutdown().await;
        assert!(changes.is_empty(), "nothing signed at shutdown");

        // A start finds it and announces it (after `CONSUMPTION_QUIET`: time to listen).
        let node = on_disk().await;
        let mut changes = node.shared.catalog.subscribe();
        let announced = tokio::time::timeout(WAIT, changes.recv())
            .await
            .expect("announced after the start")
            .expect("the catalog's change feed runs");
        assert_eq!(announced.entry().consumes, vec![upstream]);
        assert!(!consumption_unannounced(&node.shared).unwrap());
        node.shutdown().await;
    }

    #[tokio::test]
    async fn a_verdict_on_an_entry_gossipsub_forgot_is_counted_as_late() {
        use libp2p::gossipsub::MessageAcceptance::{Accept, Ignore};
        let node = memory_node(Vec::new()).await;
        let late = || node.metrics().gossip_verdicts_late.get();
        let forgotten = libp2p::gossipsub::MessageId::from(vec![7; 32]);
        let verdict = |acceptance| crate::network::Command::Validated {
            verdicts: vec![(forgotten.clone(), PeerId::random(), acceptance)],
        };
        // Not forwarding an entry not worth it is no loss; not forwarding a new one is.
        for command in [verdict(Ignore), verdict(Accept)] {
            node.shared.commands.send(command).await.unwrap();
        }
        until(|| late() == 1, "the late verdict is counted").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(late(), 1, "only the entry worth forwarding counts");
        node.shutdown().await;
    }

    #[tokio::test]
    async fn the_record_of_departed_peers_is_bounded_and_keeps_catalog_owners() {
        let node = memory_node(Vec::new()).await;
        let shared = node.shared.clone();
        let owner = SecretKey::from_bytes(&[7; 32]);
        let accepted = shared
            .catalog
            .accept_many([(crate::catalog::tests::entry(&owner, "orders", 1), "test")])
            .unwrap();
        assert_eq!(accepted.changed.len(), 1);
        let owner_peer = PeerId::from_bytes(&owner.public().to_peer_id_bytes()).unwrap();
        let address: Multiaddr = "/memory/1".parse().unwrap();
        let visit = |peer: PeerId| {
            shared.peer_connected(peer, address.clone());
            shared.peer_disconnected(&peer);
        };
        // The owner left first, then the oldest other peer: ids cycled past the bound must
        // drop the latter, not the former.
        visit(owner_peer);
        let oldest = PeerId::random();
        visit(oldest);
        let mut newest = oldest;
        for _ in 0..LAST_SEEN_MAX {
            newest = PeerId::random();
            visit(newest);
        }

        let seen = shared.last_seen();
        assert!(
            seen.len() <= LAST_SEEN_MAX + 1,
            "{} peers remembered",
            seen.len()
        );
        assert!(seen.contains_key(&owner_peer), "an owner is kept");
        assert!(
            !seen.contains_key(&oldest),
            "the oldest other peer is dropped"
        );
        assert!(seen.contains_key(&newest), "the last peer to leave is kept");
        node.shutdown().await;
    }

    /// Far below the 35 s a subscriber waits on a silent source, far above a reconnect.
    const SILENCE_BOUND: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn gone_sees_a_departure_hidden_by_a_quick_reconnect() {
        let node = memory_node(Vec::new()).await;
        let shared = node.shared.clone();
        let peer = PeerId::random();
        let address: Multiaddr = "/memory/1".parse().unwrap();
        // Not connected at all: nothing to wait for.
        tokio::time::timeout(WAIT, shared.gone(peer, shared.arrival_of(&peer)))
            .await
            .expect("a peer that is not connected is gone");

        shared.peer_connected(peer, address.clone());
        let mark = shared.arrival_of(&peer);
        let waiting = shared.clone();
        let gone = tokio::spawn(async move { waiting.gone(peer, mark).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!gone.is_finished(), "the peer is connected");
        // The connection the stream ran on closes and a new one opens before the waiting
        // task runs again: the peer is connected when it looks, yet its stream is dead.
        shared.peer_disconnected(&peer);
        shared.peer_connected(peer, address);
        tokio::time::timeout(WAIT, gone)
            .await
            .expect("the departure ends the wait though the peer is back")
            .unwrap();
        node.shutdown().await;
    }
}

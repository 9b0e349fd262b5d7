//! The one event loop that owns the libp2p swarm.
//!
//! Everything that touches the `Swarm` happens here, in one `select!` with a fixed priority:
//! shutdown, then local commands, then network events, then timers. Nothing in the loop blocks:
//! verifying and storing a gossiped entry runs on a blocking task that reports its verdict back
//! as a command, and log and catalog streams run in their own tasks through a
//! `libp2p_stream::Control`, so bulk data never passes through the loop.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad};
use rand::seq::{IteratorRandom, SliceRandom};
use tokio::sync::{mpsc, oneshot};

use crate::behaviour::{Behaviour, BehaviourEvent, CATALOG_TOPIC};
use crate::catalog::Outcome;
use crate::node::Shared;
use crate::sync_catalog;

/// Capacity of the command queue into the event loop.
pub const COMMAND_QUEUE: usize = 1024;
/// Most gossiped entries waiting for their check. Past it an entry is ignored (not forwarded;
/// anti-entropy delivers it later) rather than queued without limit.
const CHECKS_QUEUED_MAX: usize = 1024;
/// Most gossiped entries checked in one batch (one signature batch, one store flush).
const CHECK_BATCH_MAX: usize = 256;
/// Most gossiped entries checked on the async runtime, when the store never waits on a disk
/// (`Store::waits_on_disk`): about 50 µs each (decoding, the descriptor rules, a signature).
/// Larger batches, and every batch for a store on disk, go to the blocking pool.
const CHECK_HERE_MAX: usize = 32;
/// Most entries held back while no peer has the catalog topic; anti-entropy covers the rest.
const UNSENT_MAX: usize = 1024;
/// How often the node checks whether it needs more peers (and then asks Kademlia for them).
const LOOK_INTERVAL: Duration = Duration::from_secs(30);
/// Kademlia refreshes its routing table this often even when the node has peers enough.
const REFRESH_INTERVAL: Duration = Duration::from_secs(600);
/// A connection is kept at least this long before it may be closed as unneeded.
const CONNECTION_GRACE: Duration = Duration::from_secs(10);
/// Least time between two dials of one peer that Kademlia reported.
const REDIAL_AFTER: Duration = Duration::from_secs(30);

/// When a node looks for peers and which found peers it dials. Public so that the simulator's
/// stock-gossipsub baseline finds peers by the same rule.
///
/// A Kademlia bootstrap asks a few dozen peers and connects to each, and connections outside
/// the gossip mesh close when idle: bootstrapping on a timer, or dialling every peer Kademlia
/// reports up to the connection limit, kept 100 simulated nodes at their limits with ~100,000
/// handshakes in three minutes (SIMULATIONS.md). So: look for peers only while short of
/// `wanted`, dial found peers only then, each at most once per `REDIAL_AFTER`, and refresh the
/// routing table rarely.
#[derive(Debug)]
pub struct PeerDiscovery {
    wanted: usize,
    /// Peers dialled because Kademlia found them, and when.
    recent_dials: HashMap<PeerId, Instant>,
    last_look: Option<Instant>,
}

impl PeerDiscovery {
    pub fn new(wanted: usize) -> Self {
        Self {
            wanted: wanted.max(1),
            recent_dials: HashMap::new(),
            last_look: None,
        }
    }

    /// Whether to dial `peer`, just reported by Kademlia, with `connected` peers now
    /// (`already_connected`: one of them is `peer`). Records the dial when the answer is yes.
    pub fn should_dial(
        &mut self,
        peer: PeerId,
        local: PeerId,
        connected: usize,
        already_connected: bool,
        now: Instant,
    ) -> bool {
        self.recent_dials
            .retain(|_, at| now.duration_since(*at) < REDIAL_AFTER);
        let dial = connected < self.wanted
            && !already_connected
            && peer != local
            && !self.recent_dials.contains_key(&peer);
        if dial {
            self.recent_dials.insert(peer, now);
        }
        dial
    }

    /// Whether to look for peers now (a Kademlia lookup of our own id; called every 30 s and
    /// on the first connection): when connected but short of peers, or for the rare refresh.
    /// Records the lookup when the answer is yes.
    pub fn should_look(&mut self, connected: usize, now: Instant) -> bool {
        let due = match self.last_look {
            None => true,
            Some(at) => connected < self.wanted || now.duration_since(at) >= REFRESH_INTERVAL,
        };
        let run = connected > 0 && due;
        if run {
            self.last_look = Some(now);
        }
        run
    }

    /// Peers to dial now to get back to `wanted` connections: up to the shortfall, at random
    /// among `known` (Kademlia's routing table) that are not connected and were not dialled
    /// in the last `REDIAL_AFTER`. Records the dials. Cheaper than a bootstrap, which asks
    /// a few dozen peers over as many new connections.
    pub fn refill(
        &mut self,
        mut known: Vec<PeerId>,
        connected: &HashMap<PeerId, Instant>,
        now: Instant,
    ) -> Vec<PeerId> {
        let short = self.wanted.saturating_sub(connected.len());
        if short == 0 {
            return Vec::new();
        }
        self.recent_dials
            .retain(|_, at| now.duration_since(*at) < REDIAL_AFTER);
        known.retain(|p| !connected.contains_key(p) && !self.recent_dials.contains_key(p));
        known.shuffle(&mut rand::rng());
        known.truncate(short);
        for peer in &known {
            self.recent_dials.insert(*peer, now);
        }
        known
    }

    /// How often to call [`PeerDiscovery::should_look`].
    pub const TICK: Duration = LOOK_INTERVAL;
}

/// Every peer in Kademlia's routing table: the candidates of [`PeerDiscovery::refill`].
pub fn routing_table_peers(kad: &mut kad::Behaviour<kad::store::MemoryStore>) -> Vec<PeerId> {
    kad.kbuckets()
        .flat_map(|bucket| {
            bucket
                .iter()
                .map(|entry| *entry.node.key.preimage())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Ends every Kademlia bootstrap running, as soon as it shows: called after each swarm event.
///
/// rust-libp2p starts a bootstrap whenever a peer enters a routing table holding fewer than 20,
/// and that cannot be switched off (`set_automatic_bootstrap_throttle` is test-only). Its
/// lookups (our own id with 20 results, then one random id per farther bucket) connect to
/// every peer they ask, and while a table stays under 20 every new peer starts another: in a
/// 300-node simulation the nodes ran 4,323 of them (14 each) while starting, and 24,449
/// connections opened to start 300 nodes, when they ended each after its own-id lookup.
/// The node looks for peers itself ([`look_for_peers`], while short of them) and finds the
/// peers it needs on demand ([`Command::FindPeer`]): a bootstrap adds nothing to that.
/// Kademlia adds a query and may send its first requests within one poll, so a few still go
/// out (3,473 requests against 28,594 in that simulation).
pub fn end_bootstraps(kad: &mut kad::Behaviour<kad::store::MemoryStore>) {
    for mut query in kad.iter_queries_mut() {
        if matches!(query.info(), kad::QueryInfo::Bootstrap { .. }) {
            query.finish();
        }
    }
}

/// The addresses Kademlia's routing table holds for `peer`, if it holds the peer.
fn routing_table_addresses(
    kad: &mut kad::Behaviour<kad::store::MemoryStore>,
    peer: PeerId,
) -> Option<Vec<Multiaddr>> {
    let key = kad::KBucketKey::from(peer);
    let bucket = kad.kbucket(peer)?;
    let entry = bucket.iter().find(|e| *e.node.key == key)?;
    Some(entry.node.value.iter().cloned().collect())
}

/// Looks for peers: one Kademlia lookup of our own id, for the `wanted` closest peers. Not
/// `kad.bootstrap()`, which also looks up a random id per bucket, each lookup connecting to a
/// few dozen peers (~180 connections per node at 100 nodes); and not Kademlia's 20 closest,
/// since a lookup connects to every peer it asks until that many have answered. The peers
/// found are dialled by [`PeerDiscovery::should_dial`] while short of `wanted`.
pub fn look_for_peers(
    kad: &mut kad::Behaviour<kad::store::MemoryStore>,
    local: PeerId,
    wanted: usize,
) {
    let wanted = std::num::NonZeroUsize::new(wanted).unwrap_or(std::num::NonZeroUsize::MIN);
    kad.get_n_closest_peers(local, wanted);
}

/// How often to close unneeded connections (see [`unneeded`]).
pub const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Once more than twice `wanted` (at most three quarters of `max`) are connected, the
/// connections to close so that no more than `wanted` remain, as far as possible: those not
/// `needed` and older than `CONNECTION_GRACE` (10 s), oldest first. `connected` maps each
/// connected peer to when it connected. Past three quarters of `max`, young connections go
/// too: a node at its limit refuses everyone, the owners and subscribers it needs included.
///
/// The gap between `wanted` (below which a node dials) and twice that (above which it closes)
/// keeps nodes from closing each other's connections in turn: closing one leaves the other
/// side short, which dials someone else, who closes it in turn.
pub fn unneeded(
    connected: &HashMap<PeerId, Instant>,
    needed: &HashSet<PeerId>,
    wanted: usize,
    max: usize,
    now: Instant,
) -> Vec<PeerId> {
    let trim_above = (2 * wanted).min(max * 3 / 4).max(wanted);
    if connected.len() <= trim_above {
        return Vec::new();
    }
    let excess = connected.len() - wanted;
    let crowded = connected.len() * 4 > max * 3;
    let mut idle: Vec<(Instant, PeerId)> = connected
        .iter()
        .filter(|(peer, since)| {
            !needed.contains(*peer) && (crowded || now.duration_since(**since) >= CONNECTION_GRACE)
        })
        .map(|(peer, since)| (*since, *peer))
        .collect();
    idle.sort();
    idle.into_iter()
        .take(excess)
        .map(|(_, peer)| peer)
        .collect()
}

/// What the rest of the node asks of the swarm.
#[derive(Debug)]
pub enum Command {
    /// Gossip an encoded catalog entry.
    Gossip { entry: Bytes },
    /// A catalog sync changed entries that gossip had not brought (yet): most often this node
    /// was cut off from part of the network (a partition healed, or it joined or came back),
    /// though gossip lagging behind anti-entropy does the same. Gossips on `regossip`, those
    /// entries when they are few (dropped where no peer takes them: they are held, and
    /// anti-entropy carries them anyway), and, at most once per `LOOKUP_AGAIN_AFTER`, looks at
    /// once for the peers it could not reach, rather than when their lookups' wait runs out.
    CaughtUp { regossip: Vec<Bytes> },
    /// Verdicts on gossiped messages, after our own checks.
    Validated {
        verdicts: Vec<(MessageId, PeerId, MessageAcceptance)>,
    },
    /// Dial an address (bootstrap peers, `meshnode run --peer`).
    Dial {
        address: Multiaddr,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Tell the swarm where a peer can be reached.
    AddAddress { peer: PeerId, address: Multiaddr },
    /// Dial a peer at the addresses the swarm's behaviours know for it, unless it is connected
    /// or being dialled: a stream is opening to it (`Shared::open_stream`).
    Connect { peer: PeerId },
    /// Find a peer we are not connected to (a product's owner) through Kademlia, and connect
    /// to it. At most once per `LOOKUP_AGAIN_AFTER` per peer.
    FindPeer { peer: PeerId },
    /// Close every connection to a peer from this side, as `trim` does: tests use it to
    /// check that streams on those connections end at once.
    #[cfg(test)]
    Disconnect { peer: PeerId },
}

/// Least time between two Kademlia lookups of one peer.
const LOOKUP_AGAIN_AFTER: Duration = Duration::from_secs(5);
/// Least time before the next lookup of a peer whose last lookup did not find it: the peer may
/// be restarting, with its new addresses not yet known around, and its subscribers should not
/// wait out `LOOKUP_AGAIN_AFTER` for it. Doubles with each failure in a row, up to
/// `LOOKUP_AGAIN_AFTER`, so a peer gone for good is not looked up more often than before.
const LOOKUP_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// After dialling a peer at the addresses the routing table held, how long `FindPeer` looks
/// it up instead (the addresses may be stale).
const DIRECT_AGAIN_AFTER: Duration = Duration::from_secs(30);
/// How long a peer's run of failed lookups is remembered after the last one failed: a peer
/// this node stopped looking for is forgotten, and one looked up long after starts again at
/// `LOOKUP_AFTER_FAILURE`.
const FAILURES_KEPT: Duration = Duration::from_secs(60);

/// When `FindPeer` may look each peer up again: `LOOKUP_AGAIN_AFTER` after a lookup starts, or
/// sooner once it failed (`LOOKUP_AFTER_FAILURE`, doubling with each failure in a row).
#[derive(Debug, Default)]
struct LookupWaits {
    /// Peers not to look up again before the instant given.
    after: HashMap<PeerId, Instant>,
    /// Lookups in a row that did not connect a peer, since it was last connected, and when
    /// the last one failed (kept for [`FAILURES_KEPT`]).
    failures: HashMap<PeerId, (u32, Instant)>,
}

impl LookupWaits {
    fn may_look(&mut self, peer: PeerId, now: Instant) -> bool {
        self.after.retain(|_, after| now < *after);
        self.failures
            .retain(|_, (_, failed)| now.saturating_duration_since(*failed) < FAILURES_KEPT);
        !self.after.contains_key(&peer)
    }

    /// A lookup of `peer` starts.
    fn looking(&mut self, peer: PeerId, now: Instant) {
        self.after.insert(peer, now + LOOKUP_AGAIN_AFTER);
    }

    /// The lookup of `peer` did not find it: the next may start sooner.
    fn failed(&mut self, peer: PeerId, now: Instant) {
        let (failures, failed) = self.failures.entry(peer).or_insert((0, now));
        let wait = LOOKUP_AFTER_FAILURE
            .saturating_mul(1 << (*failures).min(8))
            .min(LOOKUP_AGAIN_AFTER);
        *failures = failures.saturating_add(1);
        *failed = now;
        if let Some(after) = self.after.get_mut(&peer) {
            *after = (*after).min(now + wait);
        }
    }

    fn connected(&mut self, peer: &PeerId) {
        self.failures.remove(peer);
    }

    /// `peer` may be looked up at once.
    fn allow(&mut self, peer: &PeerId) {
        self.after.remove(peer);
    }

    /// Every peer may be looked up at once.
    fn clear(&mut self) {
        self.after.clear();
    }
}

/// A gossiped catalog entry waiting for the node's own checks.
#[derive(Debug)]
struct GossipCheck {
    id: MessageId,
    source: PeerId,
    data: Bytes,
}

/// Checks gossiped entries off the event loop and reports each verdict back to it. Whatever
/// queued while one batch was checked is the next batch, so a burst costs one signature batch
/// and one store flush per batch, while a lone entry is checked at once.
///
/// A batch goes to the blocking pool when the store may wait on a disk or the batch is long.
/// Otherwise it is checked here: with a store in memory, waking a pool thread and this task
/// again cost more than a short check, and a simulation's nodes spent about a tenth of their
/// CPU on it (SIMULATIONS.md, finding 23). Such a check may still wait on the catalog's lock
/// while another caller holds it, which with a store in memory is never for a disk: at most
/// for a copy of the whole catalog.
async fn check_gossip(shared: Arc<Shared>, mut queued: mpsc::Receiver<GossipCheck>) {
    let mut batch = Vec::with_capacity(CHECK_BATCH_MAX);
    let store_waits = shared.store.waits_on_disk();
    while queued.recv_many(&mut batch, CHECK_BATCH_MAX).await > 0 {
        let checks = std::mem::take(&mut batch);
        let senders: Vec<(MessageId, PeerId)> =
            checks.iter().map(|c| (c.id.clone(), c.source)).collect();
        let task_shared = shared.clone();
        let here = !store_waits && checks.len() <= CHECK_HERE_MAX;
        let check = move || {
            let peers: Vec<String> = checks.iter().map(|c| short(&c.source)).collect();
            let received = checks
                .into_iter()
                .zip(&peers)
                .map(|(c, peer)| (c.data, peer.as_str()));
            match task_shared.catalog.accept_many(received) {
                Ok(accepted) => accepted.outcomes.iter().map(verdict).collect(),
                Err(e) => {
                    tracing::error!("cannot read the catalog store back: {e}");
                    Vec::new()
                }
            }
        };
        // A panic is contained either way: this task must keep checking.
        let acceptances = if here {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(check))
                .map_err(|_| "it panicked".to_owned())
        } else {
            crate::node::spawn_blocking(check)
                .await
                .map_err(|e| e.to_string())
        }
        .unwrap_or_else(|e| {
            tracing::error!("a gossip check failed: {e}");
            Vec::new()
        });
        // A verdict must never be lost, or gossipsub would hold the message until its cache
        // forgets it: entries without one (an unreadable store, a failed task) are ignored.
        let verdicts = senders
            .into_iter()
            .enumerate()
            .map(|(i, (id, source))| {
                let acceptance = acceptances
                    .get(i)
                    .cloned()
                    .unwrap_or(MessageAcceptance::Ignore);
                (id, source, acceptance)
            })
            .collect();
        if shared
            .commands
            .send(Command::Validated { verdicts })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Gossipsub's verdict on an entry: forwarded only if it is valid and changed something here.
fn verdict(outcome: &Outcome) -> MessageAcceptance {
    match outcome {
        Outcome::Rejected(_) => MessageAcceptance::Reject,
        o if o.worth_forwarding() => MessageAcceptance::Accept,
        _ => MessageAcceptance::Ignore,
    }
}

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    topic: IdentTopic,
    /// Peers we have a connection to, and since when.
    connected: HashMap<PeerId, Instant>,
    /// Entries published while no peer had the topic; gossiped when one subscribes.
    unsent: Vec<Bytes>,
    /// Gossiped entries waiting for [`check_gossip`], and its end of the queue until `run`
    /// starts it.
    checks: mpsc::Sender<GossipCheck>,
    checks_queued: Option<mpsc::Receiver<GossipCheck>>,
    discovery: PeerDiscovery,
    /// Peers being looked up (`Command::FindPeer`), by query.
    lookups: HashMap<kad::QueryId, PeerId>,
    /// When each peer may be looked up again.
    lookup_waits: LookupWaits,
    /// Peers `FindPeer` dialled at their routing-table addresses, and when.
    dialled_direct: HashMap<PeerId, Instant>,
    /// Those dials still under way: if one fails, the peer is looked up at once.
    direct_dials: HashMap<ConnectionId, PeerId>,
    /// When a catalog sync last made this node drop the two waits above (`Command::CaughtUp`).
    caught_up_at: Option<Instant>,
    /// Dials of this node's own peer rule still under way, to tell its connections from those
    /// a protocol opened (`mesh_connections_opened`).
    own_dials: HashSet<ConnectionId>,
}

impl EventLoop {
    pub fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        shared: Arc<Shared>,
    ) -> Self {
        let (checks, checks_queued) = mpsc::channel(CHECKS_QUEUED_MAX);
        Self {
            swarm,
            commands,
            discovery: PeerDiscovery::new(shared.config.peers_wanted),
            lookups: HashMap::new(),
            lookup_waits: LookupWaits::default(),
            dialled_direct: HashMap::new(),
            direct_dials: HashMap::new(),
            caught_up_at: None,
            own_dials: HashSet::new(),
            shared,
            topic: IdentTopic::new(CATALOG_TOPIC),
            connected: HashMap::new(),
            unsent: Vec::new(),
            checks,
            checks_queued: Some(checks_queued),
        }
    }

    pub async fn run(mut self) {
        if let Err(e) = self.swarm.behaviour_mut().gossipsub.subscribe(&self.topic) {
            tracing::error!("cannot subscribe to the catalog topic: {e}");
        }
        if let Some(queued) = self.checks_queued.take() {
            self.shared.spawn(check_gossip(self.shared.clone(), queued));
        }
        let mut sync_tick = tokio::time::interval(self.shared.config.catalog_sync_interval);
        let mut look_tick = tokio::time::interval(LOOK_INTERVAL);
        let mut trim_tick = tokio::time::interval(TRIM_INTERVAL);
        let shutdown = self.shared.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(command) = self.commands.recv() => self.on_command(command),
                event = self.swarm.select_next_some() => {
                    self.on_swarm_event(event);
                    end_bootstraps(&mut self.swarm.behaviour_mut().kad);
                }
                _ = sync_tick.tick() => self.sync_with_random_peer(),
                _ = look_tick.tick() => self.look_for_peers(),
                _ = trim_tick.tick() => {
                    self.trim();
                    self.refill();
                }
            }
        }
        tracing::debug!("event loop stopped");
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Gossip { entry } => self.gossip(entry),
            Command::CaughtUp { regossip } => {
                let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
                for entry in regossip {
                    // `Duplicate`: gossip brought it meanwhile, or this node sent it already.
                    if gossipsub.publish(self.topic.clone(), entry).is_ok() {
                        self.shared.metrics.catalog_regossiped.inc();
                    }
                }
                // At most once per lookup wait: under load gossip lags behind anti-entropy and
                // most syncs bring something, and a peer could sign new revisions of its own
                // products to make every connection's sync do so; neither may turn the waits off.
                let now = Instant::now();
                if self
                    .caught_up_at
                    .is_none_or(|at| now.duration_since(at) >= LOOKUP_AGAIN_AFTER)
                {
                    self.caught_up_at = Some(now);
                    self.lookup_waits.clear();
                    self.dialled_direct.clear();
                    // Subscriptions ask for their owners again (`Command::FindPeer`).
                    self.shared.network_changed();
                }
            }
            Command::Validated { verdicts } => {
                let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
                for (id, source, acceptance) in verdicts {
                    // False when gossipsub no longer holds the message (its cache keeps it for
                    // a few heartbeats): an entry worth forwarding checked that slowly is not.
                    let forward = matches!(acceptance, MessageAcceptance::Accept);
                    if !gossipsub.report_message_validation_result(&id, &source, acceptance)
                        && forward
                    {
                        self.shared.metrics.gossip_verdicts_late.inc();
                    }
                }
            }
            Command::Dial { address, reply } => {
                let result = self.dial(address.clone()).map_err(|e| dial_error(&e));
                if result.is_ok()
                    && let Some((peer, _)) = split_peer(&address)
                {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, address.clone());
                }
                let _ = reply.send(result);
            }
            Command::AddAddress { peer, address } => {
                self.swarm.add_peer_address(peer, address.clone());
                self.swarm.behaviour_mut().kad.add_address(&peer, address);
            }
            Command::FindPeer { peer } => self.find_peer(peer),
            Command::Connect { peer } => {
                let opts = DialOpts::peer_id(peer)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                // Not `self.dial`: the connection is a protocol's, as libp2p-stream's own dial
                // would have made it. Its failure reaches libp2p-stream as a `DialFailure`.
                match self.swarm.dial(opts) {
                    Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {}
                    Err(e) => {
                        tracing::debug!(peer = %short(&peer), "dial failed: {}", dial_error(&e));
                    }
                }
            }
            #[cfg(test)]
            Command::Disconnect { peer } => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
        }
    }

    /// Connects to `peer`: straight to the addresses Kademlia's routing table holds for it
    /// when there are some and they were not tried in the last [`DIRECT_AGAIN_AFTER`], else
    /// through a lookup (which connects to a few dozen peers on its way; it ends as soon as
    /// the peer is connected). A direct dial that fails is followed by a lookup at once; a
    /// lookup that does not find the peer allows the next one after `LOOKUP_AFTER_FAILURE`.
    fn find_peer(&mut self, peer: PeerId) {
        let now = Instant::now();
        self.dialled_direct
            .retain(|_, at| now.duration_since(*at) < DIRECT_AGAIN_AFTER);
        if self.connected.contains_key(&peer)
            || !self.lookup_waits.may_look(peer, now)
            || self.connected.is_empty()
        {
            return;
        }
        self.lookup_waits.looking(peer, now);
        if !self.dialled_direct.contains_key(&peer)
            && let Some(addresses) =
                routing_table_addresses(&mut self.swarm.behaviour_mut().kad, peer)
        {
            self.dialled_direct.insert(peer, now);
            let opts = DialOpts::peer_id(peer).addresses(addresses).build();
            let id = opts.connection_id();
            match self.dial(opts) {
                Ok(()) => {
                    self.direct_dials.insert(id, peer);
                    return;
                }
                // Already being dialled (e.g. by a stream opening to it).
                Err(DialError::DialPeerConditionFalse(_)) => return,
                Err(e) => {
                    tracing::debug!(peer = %short(&peer), "dial failed: {}", dial_error(&e));
                }
            }
        }
        let query = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
        self.lookups.insert(query, peer);
    }

    /// Ends the lookups of `peer` now that it is connected: the rest of a lookup would only
    /// connect to more peers.
    fn end_lookups_of(&mut self, peer: PeerId) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        self.lookups.retain(|query, target| {
            if *target != peer {
                return true;
            }
            if let Some(mut q) = kad.query_mut(query) {
                q.finish();
            }
            false
        });
    }

    /// A lookup of `Command::FindPeer` progressed: dial the peer if it was found.
    fn on_lookup(&mut self, query: kad::QueryId, found: Vec<kad::PeerInfo>, last: bool) {
        let Some(&target) = self.lookups.get(&query) else {
            return;
        };
        if last {
            self.lookups.remove(&query);
        }
        if self.connected.contains_key(&target) {
            return;
        }
        // Kademlia reports only peers that answered, so a found target was most likely
        // connected already, which ends its lookup (`end_lookups_of`); this dial covers the
        // rest.
        if let Some(info) = found.into_iter().find(|p| p.peer_id == target) {
            let opts = DialOpts::peer_id(target).addresses(info.addrs).build();
            if let Err(e) = self.dial(opts) {
                tracing::debug!(peer = %short(&target), "dial failed: {}", dial_error(&e));
            }
        } else if last && !self.lookups.values().any(|p| *p == target) {
            // Not found (it may be restarting, with its new addresses not yet known around),
            // and no other lookup of it still runs (lookups can outlast the wait).
            self.lookup_waits.failed(target, Instant::now());
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.shared.listen_addrs_push(address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                connection_id,
                ..
            } if !self.connected.contains_key(&peer_id) => {
                self.count_opened(connection_id, &endpoint);
                self.end_lookups_of(peer_id);
                self.lookup_waits.connected(&peer_id);
                self.connected.insert(peer_id, Instant::now());
                tracing::debug!(local = %short(self.swarm.local_peer_id()), peer = %short(&peer_id), "connected");
                self.shared
                    .peer_connected(peer_id, endpoint.get_remote_address().clone());
                // A new peer may hold entries we lack, or lack ours: compare catalogs now
                // rather than at the next tick, so a late joiner catches up at once.
                sync_catalog::spawn_sync(self.shared.clone(), peer_id);
                if self.connected.len() == 1 {
                    self.look_for_peers();
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.connected.remove(&peer_id);
                self.shared.peer_disconnected(&peer_id);
                tracing::debug!(peer = %short(&peer_id), "disconnected");
            }
            SwarmEvent::ConnectionEstablished {
                connection_id,
                endpoint,
                ..
            } => self.count_opened(connection_id, &endpoint),
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                error,
                connection_id,
            } => {
                self.own_dials.remove(&connection_id);
                if let Some(peer) = self.direct_dials.remove(&connection_id) {
                    // The routing table's addresses were stale: look the peer up now rather
                    // than at the next ask.
                    self.lookup_waits.allow(&peer);
                    self.find_peer(peer);
                }
                tracing::debug!(local = %short(self.swarm.local_peer_id()), peer = ?peer_id.map(|p| short(&p)), connected = self.connected.len(), "dial failed: {}", dial_error(&error));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_gossip(propagation_source, message_id, message.data),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed {
                ..
            })) => {
                for entry in std::mem::take(&mut self.unsent) {
                    self.gossip(entry);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for address in info.listen_addrs {
                    if is_dialable(&address) {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer_id, address);
                    }
                }
            }
            #[cfg(feature = "mdns")]
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(libp2p::mdns::Event::Discovered(found))) => {
                for (peer, address) in found {
                    self.swarm.add_peer_address(peer, address.clone());
                    self.swarm.behaviour_mut().kad.add_address(&peer, address);
                    if !self.connected.contains_key(&peer) {
                        let _ = self.dial(peer);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                ..
            })) => {
                let found = match result {
                    kad::QueryResult::GetClosestPeers(Ok(ok)) => ok.peers,
                    kad::QueryResult::GetClosestPeers(Err(
                        kad::GetClosestPeersError::Timeout { peers, .. },
                    )) => peers,
                    _ => Vec::new(),
                };
                self.on_lookup(id, found, step.last);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer,
                addresses,
                ..
            })) => {
                // Kademlia found a peer: connect while short of peers, so that one bootstrap
                // address is enough to reach the whole mesh.
                let local = *self.swarm.local_peer_id();
                let connected = self.connected.len();
                let known = self.connected.contains_key(&peer);
                if self
                    .discovery
                    .should_dial(peer, local, connected, known, Instant::now())
                {
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addresses.into_vec())
                        .build();
                    if let Err(e) = self.dial(opts) {
                        tracing::debug!(peer = %short(&peer), "dial failed: {}", dial_error(&e));
                    }
                }
            }
            _ => {}
        }
    }

    fn count_opened(&mut self, id: ConnectionId, endpoint: &libp2p::core::ConnectedPoint) {
        self.direct_dials.remove(&id);
        let origin = if !endpoint.is_dialer() {
            "inbound"
        } else if self.own_dials.remove(&id) {
            "node"
        } else {
            "protocol"
        };
        self.shared
            .metrics
            .connections_opened
            .get_or_create(&crate::metrics::OriginLabel { origin })
            .inc();
    }

    fn gossip(&mut self, entry: Bytes) {
        let published = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), entry.clone());
        match published {
            Ok(_) | Err(gossipsub::PublishError::Duplicate) => {}
            // No peer has the topic yet (just started, or alone): keep the entry and gossip it
            // as soon as one subscribes, rather than waiting for anti-entropy.
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                tracing::debug!("catalog entry held back: no peer subscribed yet");
                if self.unsent.len() < UNSENT_MAX {
                    self.unsent.push(entry);
                }
            }
            Err(e) => tracing::warn!("catalog gossip failed: {e}"),
        }
    }

    /// Queues a gossiped entry for [`check_gossip`], which reports its verdict; past
    /// [`CHECKS_QUEUED_MAX`] waiting, the entry is ignored at once (`overloaded`).
    fn on_gossip(&mut self, source: PeerId, id: MessageId, data: Vec<u8>) {
        let check = GossipCheck {
            id,
            source,
            data: Bytes::from(data),
        };
        if let Err(e) = self.checks.try_send(check) {
            let (mpsc::error::TrySendError::Full(check) | mpsc::error::TrySendError::Closed(check)) =
                e;
            self.shared.metrics.reject_entry("overloaded");
            self.swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(
                    &check.id,
                    &check.source,
                    MessageAcceptance::Ignore,
                );
        }
    }

    fn sync_with_random_peer(&mut self) {
        if let Some(peer) = self.connected.keys().choose(&mut rand::rng()) {
            sync_catalog::spawn_sync(self.shared.clone(), *peer);
        }
    }

    /// Once past twice `peers_wanted`, closes connections beyond `peers_wanted` that nothing
    /// needs: not in the catalog's gossip mesh, carrying no log stream either way, not the owner
    /// of a followed product, and older than [`CONNECTION_GRACE`] (long enough for a Kademlia
    /// query, a search or a catalog sync to finish), oldest first.
    ///
    /// libp2p closes idle connections, but gossipsub keeps its substreams open on every
    /// connection, so no connection is ever idle: without this, each peer a Kademlia query
    /// touched would stay connected until `peers_max` refused everyone else.
    fn trim(&mut self) {
        let wanted = self.shared.config.peers_wanted;
        if self.connected.len() <= wanted {
            return;
        }
        let mut needed = self.shared.peers_with_log_streams();
        needed.extend(self.swarm.behaviour().gossipsub.all_mesh_peers().copied());
        let max = self.shared.config.peers_max;
        for peer in unneeded(&self.connected, &needed, wanted, max, Instant::now()) {
            tracing::debug!(peer = %short(&peer), "closing an unneeded connection");
            self.shared.metrics.connections_trimmed.inc();
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Dials on behalf of this node's peer rule (not a protocol's), and remembers the dial.
    fn dial(&mut self, opts: impl Into<DialOpts>) -> Result<(), DialError> {
        let opts = opts.into();
        let id = opts.connection_id();
        self.swarm.dial(opts)?;
        self.own_dials.insert(id);
        Ok(())
    }

    /// Dials peers from Kademlia's routing table while short of `peers_wanted`.
    fn refill(&mut self) {
        if self.connected.len() >= self.shared.config.peers_wanted {
            return;
        }
        let known = routing_table_peers(&mut self.swarm.behaviour_mut().kad);
        for peer in self
            .discovery
            .refill(known, &self.connected, Instant::now())
        {
            if let Err(e) = self.dial(peer) {
                tracing::debug!(peer = %short(&peer), "dial failed: {}", dial_error(&e));
            }
        }
    }

    fn look_for_peers(&mut self) {
        if !self
            .discovery
            .should_look(self.connected.len(), Instant::now())
        {
            return;
        }
        tracing::debug!(connected = self.connected.len(), "looking for peers");
        let local = *self.swarm.local_peer_id();
        let wanted = self.shared.config.peers_wanted;
        look_for_peers(&mut self.swarm.behaviour_mut().kad, local, wanted);
    }
}

/// The short form of a peer id for logs: its last 6 characters.
pub fn short(peer: &PeerId) -> String {
    let s = peer.to_string();
    format!("…{}", &s[s.len().saturating_sub(6)..])
}

/// Splits `/…/p2p/PEER` into the peer and the address before it.
pub fn split_peer(address: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut base = address.clone();
    match base.pop() {
        Some(Protocol::P2p(peer)) => Some((peer, base)),
        _ => None,
    }
}

fn is_dialable(address: &Multiaddr) -> bool {
    !address.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

fn dial_error(e: &DialError) -> String {
    match e {
        DialError::Transport(errors) => errors
            .iter()
            .map(|(addr, err)| format!("{addr}: {err}"))
            .collect::<Vec<_>>()
            .join("; "),
        DialError::Denied { cause } => format!("refused here: {cause}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    /// What Kademlia asks the swarm to do, polled as the swarm would, with `end_bootstraps`
    /// after each event as the event loop calls it (or not).
    fn drain(
        kad: &mut kad::Behaviour<kad::store::MemoryStore>,
        ending: bool,
    ) -> Vec<
        libp2p::swarm::ToSwarm<
            kad::Event,
            libp2p::swarm::THandlerInEvent<kad::Behaviour<kad::store::MemoryStore>>,
        >,
    > {
        use libp2p::swarm::NetworkBehaviour;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        if ending {
            end_bootstraps(kad);
        }
        while let std::task::Poll::Ready(event) = kad.poll(&mut cx) {
            out.push(event);
            if ending {
                end_bootstraps(kad);
            }
            assert!(out.len() < 1000, "Kademlia never stops");
        }
        out
    }

    #[test]
    fn a_kademlia_bootstrap_ends_before_it_dials_anyone() {
        let local = PeerId::random();
        let address: Multiaddr = "/memory/1".parse().unwrap();
        let dials = |events: &[libp2p::swarm::ToSwarm<_, _>]| {
            events
                .iter()
                .filter(|e| matches!(e, libp2p::swarm::ToSwarm::Dial { .. }))
                .count()
        };
        for ending in [false, true] {
            let mut kad = kad::Behaviour::new(local, kad::store::MemoryStore::new(local));
            for peer in peers(30) {
                kad.add_address(&peer, address.clone());
            }
            drain(&mut kad, false);
            let started = kad.bootstrap().expect("the table holds peers");
            let events = drain(&mut kad, ending);
            if ending {
                assert_eq!(dials(&events), 0, "{events:?}");
                assert!(kad.query(&started).is_none(), "the bootstrap is over");
            } else {
                // Unended, it dials the peers it asks (here none answers).
                assert!(dials(&events) >= 3, "{events:?}");
            }
        }
    }

    #[test]
    fn found_peers_are_dialled_only_while_short_and_once_per_redial_period() {
        let local = PeerId::random();
        let mut d = PeerDiscovery::new(2);
        let now = Instant::now();
        let [a, b] = [PeerId::random(), PeerId::random()];
        assert!(d.should_dial(a, local, 0, false, now));
        assert!(
            !d.should_dial(a, local, 0, false, now),
            "dialled again at once"
        );
        assert!(
            !d.should_dial(local, local, 0, false, now),
            "dialled itself"
        );
        assert!(!d.should_dial(b, local, 1, true, now), "already connected");
        assert!(
            !d.should_dial(b, local, 2, false, now),
            "not short of peers"
        );
        assert!(d.should_dial(a, local, 1, false, now + REDIAL_AFTER));
    }

    #[test]
    fn a_failed_lookup_allows_the_next_one_soon_backing_off_to_the_usual_wait() {
        let mut w = LookupWaits::default();
        let [a, b] = [PeerId::random(), PeerId::random()];
        let t0 = Instant::now();
        assert!(w.may_look(a, t0));
        w.looking(a, t0);
        w.looking(b, t0);
        assert!(!w.may_look(a, t0 + LOOKUP_AFTER_FAILURE));
        assert!(!w.may_look(b, t0 + LOOKUP_AGAIN_AFTER - Duration::from_millis(1)));
        assert!(w.may_look(b, t0 + LOOKUP_AGAIN_AFTER));
        w.looking(a, t0);
        w.looking(b, t0);
        // A failure in a row waits 1, 2, 4, then 5 s (the usual wait), not more.
        let mut t = t0;
        for wait in [1, 2, 4, 5, 5] {
            w.failed(a, t);
            let wait = Duration::from_secs(wait);
            assert!(!w.may_look(a, t + wait - Duration::from_millis(1)));
            assert!(w.may_look(a, t + wait), "after {wait:?}");
            t += wait;
            w.looking(a, t);
        }
        // Once connected, the next failure waits 1 s again.
        w.connected(&a);
        w.failed(a, t);
        assert!(w.may_look(a, t + LOOKUP_AFTER_FAILURE));
        // A failure never lengthens the wait, nor makes one where there was none.
        w.looking(a, t);
        w.failed(a, t + Duration::from_secs(4));
        assert!(w.may_look(a, t + LOOKUP_AGAIN_AFTER));
        w.looking(b, t);
        w.allow(&b);
        w.failed(b, t);
        assert!(w.may_look(b, t));
        w.looking(a, t);
        w.clear();
        assert!(w.may_look(a, t));
    }

    #[test]
    fn failed_lookups_are_forgotten_after_a_while() {
        let mut w = LookupWaits::default();
        let [a, b] = [PeerId::random(), PeerId::random()];
        let t0 = Instant::now();
        for t in [
            t0,
            t0 + Duration::from_secs(5),
            t0 + Duration::from_secs(10),
        ] {
            w.looking(a, t);
            w.failed(a, t);
        }
        let last = t0 + Duration::from_secs(10);
        w.looking(b, last);
        w.failed(b, last);
        assert!(w.may_look(a, last + FAILURES_KEPT - Duration::from_millis(1)));
        assert_eq!(w.failures.len(), 2, "kept while recent");
        // Gone from memory, and the next failure of `a` waits the shortest time again.
        assert!(w.may_look(a, last + FAILURES_KEPT));
        assert!(w.failures.is_empty());
        let t = last + FAILURES_KEPT;
        w.looking(a, t);
        w.failed(a, t);
        assert!(w.may_look(a, t + LOOKUP_AFTER_FAILURE));
    }

    #[test]
    fn lookups_run_when_short_of_peers_or_for_the_rare_refresh() {
        let mut d = PeerDiscovery::new(4);
        let t0 = Instant::now();
        assert!(!d.should_look(0, t0), "nobody to ask");
        assert!(d.should_look(1, t0), "first connection");
        assert!(d.should_look(3, t0 + PeerDiscovery::TICK), "short of peers");
        assert!(!d.should_look(4, t0 + PeerDiscovery::TICK * 2));
        assert!(d.should_look(9, t0 + PeerDiscovery::TICK + REFRESH_INTERVAL));
    }

    #[test]
    fn refill_dials_known_unconnected_peers_up_to_the_shortfall() {
        let mut d = PeerDiscovery::new(3);
        let now = Instant::now();
        let known = peers(10);
        let connected: HashMap<PeerId, Instant> = [(known[0], now)].into();
        let dialled = d.refill(known.clone(), &connected, now);
        assert_eq!(dialled.len(), 2);
        assert!(dialled.iter().all(|p| *p != known[0] && known.contains(p)));
        // The same peers are not dialled again before REDIAL_AFTER.
        let again = d.refill(known.clone(), &connected, now);
        assert_eq!(again.len(), 2);
        assert!(again.iter().all(|p| !dialled.contains(p)));
        let full: HashMap<PeerId, Instant> = known[..3].iter().map(|p| (*p, now)).collect();
        assert!(d.refill(known, &full, now).is_empty());
    }

    #[test]
    fn unneeded_connections_are_the_oldest_idle_ones_beyond_the_wanted_count() {
        let t0 = Instant::now();
        let all = peers(6);
        // Peer i connected at t0 + i seconds.
        let connected: HashMap<PeerId, Instant> = all
            .iter()
            .enumerate()
            .map(|(i, p)| (*p, t0 + Duration::from_secs(i as u64)))
            .collect();
        let needed: HashSet<PeerId> = [all[0]].into();
        let now = t0 + Duration::from_secs(3) + CONNECTION_GRACE;
        // 6 connected, 2 wanted: peer 0 is needed, peers 4 and 5 are in their grace period.
        let closed = unneeded(&connected, &needed, 2, 64, now);
        assert_eq!(closed, vec![all[1], all[2], all[3]]);
        assert!(unneeded(&connected, &needed, 6, 64, now).is_empty());
        // Up to twice the wanted count, nothing closes.
        assert!(unneeded(&connected, &needed, 3, 64, now).is_empty());
        // Near the connection limit, young connections go too, oldest first.
        let closed = unneeded(&connected, &needed, 2, 7, now);
        assert_eq!(closed, vec![all[1], all[2], all[3], all[4]]);
    }
}

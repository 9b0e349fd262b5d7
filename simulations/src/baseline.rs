//! Swarms the simulator builds itself, on the same simulated network as the nodes:
//!
//! - the **gossipsub baselines** the mesh node's catalog gossip is compared with, each with
//!   identify and Kademlia under the same discovery rule as the node (dial every peer the
//!   routing table learns, up to the peer limit), carrying the catalog workload only: the same
//!   signed entries, at the same times, as the mesh run of the same scenario and seed.
//!   - **stock gossipsub**: its default configuration (messages signed by their author, the
//!     default message id, no application validation);
//!   - **node gossipsub**: the node's own gossipsub (`mesh_node::behaviour`: content ids, its
//!     degree, IHAVE and IDONTWANT settings and peer score), forwarding every entry on
//!     receipt: the gossip layer under the node, with none of the node's work above it;
//! - the **rogue** of the `flood` fault: a peer that gossips forged catalog entries.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use indicatif::ProgressBar;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, connection_limits, identify, kad};
use mesh_node::behaviour::{CATALOG_TOPIC, IDENTIFY_PROTOCOL, MeshDegree, Validation};
use mesh_node::network::{
    PeerDiscovery, TRIM_INTERVAL, end_bootstraps, look_for_peers, routing_table_peers, unneeded,
};
use mesh_protocol::wire::pb;
use mesh_protocol::{ProductId, ProductName, SecretKey, SignedCatalogEntry};
use prost::Message;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::measure::{self, NetSnapshot, Recorder};
use crate::net::SimNet;
use crate::plan::{Plan, What, base_link};
use crate::report::{Memory, Percentiles, Report, Samples, TopologyReport};
use crate::run::{Outcome, build_label, checks, peer_id_of, sign_entry};
use crate::scenario::InitialCatalog;
use crate::scenario::{Scenario, Stack};

#[allow(missing_debug_implementations)]
#[derive(NetworkBehaviour)]
struct BaselineBehaviour {
    limits: connection_limits::Behaviour,
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
}

enum Command {
    Publish {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Peers(oneshot::Sender<usize>),
}

fn swarm(
    net: &SimNet,
    endpoint: usize,
    keypair: libp2p::identity::Keypair,
    gossipsub: gossipsub::Behaviour,
    peers_max: usize,
    idle: Duration,
    with_discovery: bool,
) -> anyhow::Result<Swarm<BaselineBehaviour>> {
    let transport = net.boxed_transport(endpoint, &keypair)?;
    let peer_id = keypair.public().to_peer_id();
    let identify = identify::Behaviour::new(identify::Config::new(
        IDENTIFY_PROTOCOL.into(),
        keypair.public(),
    ));
    // The node's Kademlia settings: discovery is the harness's, shared by every stack.
    let mut kad = kad::Behaviour::with_config(
        peer_id,
        kad::store::MemoryStore::new(peer_id),
        mesh_node::behaviour::kad_config(),
    );
    kad.set_mode(Some(if with_discovery {
        kad::Mode::Server
    } else {
        kad::Mode::Client
    }));
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(u32::try_from(peers_max).unwrap_or(u32::MAX)))
        .with_max_established_per_peer(Some(2));
    let behaviour = BaselineBehaviour {
        limits: connection_limits::Behaviour::new(limits),
        gossipsub,
        identify,
        kad,
    };
    Ok(Swarm::new(
        transport,
        behaviour,
        peer_id,
        libp2p::swarm::Config::with_tokio_executor().with_idle_connection_timeout(idle),
    ))
}

/// Drives one baseline swarm: commands, and the node's discovery rule.
async fn drive(
    mut swarm: Swarm<BaselineBehaviour>,
    mut commands: mpsc::Receiver<Command>,
    node: usize,
    peers_wanted: usize,
    peers_max: usize,
    rec: Arc<Recorder>,
    index: Arc<std::collections::HashMap<ProductId, usize>>,
) {
    let topic = IdentTopic::new(CATALOG_TOPIC);
    let protocol = mesh_protocol::Config::default();
    let mut connected: HashMap<PeerId, std::time::Instant> = HashMap::new();
    let mut discovery = PeerDiscovery::new(peers_wanted);
    let mut bootstrap = tokio::time::interval(PeerDiscovery::TICK);
    let mut trim = tokio::time::interval(TRIM_INTERVAL);
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(Command::Publish { data, reply }) => {
                    let r = swarm.behaviour_mut().gossipsub.publish(topic.clone(), data);
                    let _ = reply.send(r.map(|_| ()).map_err(|e| e.to_string()));
                }
                Some(Command::Peers(reply)) => {
                    let _ = reply.send(connected.len());
                }
            },
            _ = trim.tick() => {
                let needed: HashSet<PeerId> =
                    swarm.behaviour().gossipsub.all_mesh_peers().copied().collect();
                let now = std::time::Instant::now();
                for peer in unneeded(&connected, &needed, peers_wanted, peers_max, now) {
                    let _ = swarm.disconnect_peer_id(peer);
                }
                let known = routing_table_peers(&mut swarm.behaviour_mut().kad);
                for peer in discovery.refill(known, &connected, std::time::Instant::now()) {
                    let _ = swarm.dial(peer);
                }
            }
            _ = bootstrap.tick() => {
                if discovery.should_look(connected.len(), std::time::Instant::now()) {
                    let local = *swarm.local_peer_id();
                    look_for_peers(&mut swarm.behaviour_mut().kad, local, peers_wanted);
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. }
                    if connected.insert(peer_id, std::time::Instant::now()).is_none()
                        && connected.len() == 1
                        && discovery.should_look(1, std::time::Instant::now()) =>
                {
                    let local = *swarm.local_peer_id();
                    look_for_peers(&mut swarm.behaviour_mut().kad, local, peers_wanted);
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                    connected.remove(&peer_id);
                }
                SwarmEvent::Behaviour(BaselineBehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. })) => {
                    let at = std::time::Instant::now();
                    if let Ok(entry) = SignedCatalogEntry::decode(Bytes::from(message.data), &protocol)
                        && let Some(&p) = index.get(&entry.unverified().product)
                    {
                        rec.arrived(node, p, entry.unverified().revision, at);
                    }
                }
                SwarmEvent::Behaviour(BaselineBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                    for address in info.listen_addrs {
                        swarm.behaviour_mut().kad.add_address(&peer_id, address);
                    }
                }
                SwarmEvent::Behaviour(BaselineBehaviourEvent::Kad(kad::Event::RoutingUpdated {
                    peer,
                    addresses,
                    ..
                })) if {
                    let local = *swarm.local_peer_id();
                    let known = connected.contains_key(&peer);
                    discovery.should_dial(peer, local, connected.len(), known, std::time::Instant::now())
                } =>
                {
                    let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                        .addresses(addresses.into_vec())
                        .build();
                    let _ = swarm.dial(opts);
                }
                _ => {}
            }
        }
        // The node's rule, as for looking and trimming: no Kademlia bootstrap.
        end_bootstraps(&mut swarm.behaviour_mut().kad);
    }
}

/// The gossipsub a baseline's swarm runs. The node-gossipsub baseline builds it with the
/// node's own constructor, not a copy of its settings, so that the floor it measures cannot
/// drift from the node it is the floor of.
fn baseline_gossipsub(
    stack: Stack,
    scenario: &Scenario,
    keypair: &libp2p::identity::Keypair,
) -> anyhow::Result<gossipsub::Behaviour> {
    match stack {
        Stack::NodeGossipsub => {
            mesh_node::behaviour::catalog_gossipsub(mesh_node::behaviour::catalog_gossip_config(
                MeshDegree::new(scenario.node.gossip_degree),
                Scenario::protocol().catalog_entry_bytes_max,
                Validation::Unchecked,
            )?)
        }
        Stack::StockGossipsub => gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(keypair.clone()),
            gossipsub::Config::default(),
        )
        .map_err(|e| anyhow::anyhow!("gossipsub: {e}")),
        Stack::Mesh => anyhow::bail!("the mesh stack runs nodes, not a baseline's swarms"),
    }
}

/// Runs a scenario's catalog workload on a gossipsub baseline (`stack`: not the mesh).
pub async fn run(
    scenario: &Scenario,
    seed: u64,
    stack: Stack,
    bar: ProgressBar,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let plan = Plan::new(scenario, seed);
    let n = plan.nodes;
    let net = SimNet::new(n + 1, base_link(scenario), seed);
    let keys: Vec<SecretKey> = plan.keys.iter().map(SecretKey::from_bytes).collect();
    let peer_ids: Vec<PeerId> = plan
        .keys
        .iter()
        .map(peer_id_of)
        .collect::<anyhow::Result<_>>()?;
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
    let index = Arc::new(
        products
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), i))
            .collect::<std::collections::HashMap<_, _>>(),
    );
    let rec = Arc::new(Recorder::new(n, products.len()));
    let mut report = Report {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        stack: stack.label().into(),
        seed,
        plan_fingerprint: plan.fingerprint(),
        nodes: n,
        build: build_label(),
        ..Report::default()
    };
    let rss_before = measure::rss_mib();
    measure::phase(&bar, "starting swarms");
    bar.set_length(n as u64);
    let mut senders = Vec::with_capacity(n);
    let mut tasks: Vec<JoinHandle<()>> = Vec::with_capacity(n);
    for i in 0..n {
        let keypair = libp2p::identity::Keypair::ed25519_from_bytes(plan.keys[i])?;
        let gossipsub = baseline_gossipsub(stack, scenario, &keypair)?;
        let mut s = swarm(
            &net,
            i,
            keypair,
            gossipsub,
            scenario.node.peers_max,
            scenario.node.idle_timeout,
            true,
        )?;
        s.listen_on(SimNet::address(i))?;
        s.behaviour_mut()
            .gossipsub
            .subscribe(&IdentTopic::new(CATALOG_TOPIC))
            .map_err(|e| anyhow::anyhow!("subscribe: {e}"))?;
        for j in plan.neighbours(i).into_iter().filter(|&j| j < i) {
            let address = SimNet::address(j).with(libp2p::multiaddr::Protocol::P2p(peer_ids[j]));
            s.behaviour_mut()
                .kad
                .add_address(&peer_ids[j], SimNet::address(j));
            let _ = s.dial(address);
        }
        let (tx, rx) = mpsc::channel(256);
        senders.push(tx);
        tasks.push(tokio::spawn(drive(
            s,
            rx,
            i,
            scenario.node.peers_wanted,
            scenario.node.peers_max,
            rec.clone(),
            index.clone(),
        )));
        bar.inc(1);
        // Let the swarm start listening before the next one dials it.
        tokio::task::yield_now().await;
    }
    report.timings.start_nodes_s = started.elapsed().as_secs_f64();
    measure::phase(&bar, "warm-up");
    // From the warm-up on, as the swarms dial while it runs: the load left once they settle
    // is the idle load the workload's CPU is measured above.
    let runtime_log = {
        let net = net.clone();
        measure::log_runtime_load(move || (net.connections_opened(n), net.live_connections()))
    };
    tokio::time::sleep(scenario.warmup).await;
    report.timings.warmup_s = scenario.warmup.as_secs_f64();
    let rss_started = measure::rss_mib();

    // The same entries the mesh would publish, signed by the same keys.
    let revisions = std::sync::Mutex::new(vec![0u64; products.len()]);
    let publish = |p: usize, note: u64, initial: bool| {
        let owner = plan.products[p].owner;
        let revision = {
            let mut r = revisions.lock().unwrap_or_else(|e| e.into_inner());
            r[p] += 1;
            r[p]
        };
        let entry = sign_entry(&plan, &products, &keys, p, revision, note, Vec::new());
        let sender = senders[owner].clone();
        let rec = rec.clone();
        async move {
            let entry = entry?;
            let (reply, rx) = oneshot::channel();
            let at = std::time::Instant::now();
            sender
                .send(Command::Publish {
                    data: entry.encoded().to_vec(),
                    reply,
                })
                .await
                .map_err(|_| anyhow::anyhow!("swarm stopped"))?;
            rec.published(p, revision, at, initial);
            rec.hold(owner, p, revision);
            rx.await
                .map_err(|_| anyhow::anyhow!("swarm stopped"))?
                .map_err(|e| anyhow::anyhow!("publish: {e}"))
        }
    };
    measure::phase(&bar, "publishing the catalog");
    let publish_start = Instant::now();
    let mut publish_errors = 0u64;
    if scenario.workload.initial_catalog == InitialCatalog::Preloaded {
        // Baseline swarms keep no catalog: the first revisions count as held everywhere.
        let mut r = revisions.lock().unwrap_or_else(|e| e.into_inner());
        for (p, revision) in r.iter_mut().enumerate() {
            *revision = 1;
            for node in 0..n {
                rec.hold(node, p, 1);
            }
        }
        rec.preloaded((0..r.len()).map(|p| (p, 1)));
        report.catalog.preloaded_entries = products.len();
    } else {
        for p in 0..products.len() {
            if publish(p, 0, true).await.is_err() {
                publish_errors += 1;
            }
        }
    }
    let everything = rec.latest();
    let all: Vec<usize> = (0..n).collect();
    report.timings.initial_catalog_s = wait(scenario.settle, || {
        all.iter().all(|&i| rec.holds_all(i, &everything))
    })
    .await
    .map(|_| publish_start.elapsed().as_secs_f64());

    // Workload: the catalog updates (and link faults) of the plan.
    let before = NetSnapshot::take(&net);
    let t0 = Instant::now();
    measure::phase(&bar, "workload");
    bar.set_length(scenario.duration.as_millis() as u64);
    bar.set_position(0);
    let mut updates = 0u64;
    let mut publishing = tokio::task::JoinSet::new();
    for action in &plan.actions {
        match &action.what {
            What::Update { product } => {
                tokio::time::sleep_until(t0 + action.at).await;
                updates += 1;
                // Not awaited here, so a busy swarm cannot push the schedule back.
                publishing.spawn(publish(*product, updates, false));
            }
            What::SetLink(link) => {
                tokio::time::sleep_until(t0 + action.at).await;
                net.set_link(link.clone());
            }
            _ => {}
        }
        bar.set_position(t0.elapsed().as_millis() as u64);
    }
    tokio::time::sleep_until(t0 + scenario.duration).await;
    let end = Instant::now();
    while let Some(result) = publishing.join_next().await {
        if !matches!(result, Ok(Ok(()))) {
            publish_errors += 1;
        }
    }
    drop(runtime_log);
    let after = NetSnapshot::take(&net);
    report.timings.workload_s = end.duration_since(t0).as_secs_f64();
    measure::phase(&bar, "settling");
    let settle_start = Instant::now();
    report.timings.settle_s = wait(scenario.settle, || {
        let latest = rec.latest();
        all.iter().all(|&i| rec.holds_all(i, &latest))
    })
    .await
    .map(|_| settle_start.elapsed().as_secs_f64());
    let rss_end = measure::rss_mib();

    let owner_of = |p: usize| Some(plan.products[p].owner);
    let mut samples = Samples::default();
    let (initial, _, _) = measure::convergence(&rec, &all, owner_of, |p| p.initial);
    let (updates_conv, delivery, to100) =
        measure::convergence(&rec, &all, owner_of, |p| !p.initial);
    samples.catalog_delivery_ms = delivery;
    samples.catalog_to_100pct_ms = to100;
    report.catalog.initial = initial;
    report.catalog.updates = updates_conv;
    let deliveries = measure::arrivals_between(&rec, t0.into_std(), end.into_std(), owner_of);
    report.catalog.gossip = before.gossip(&after, n, deliveries);
    let now = NetSnapshot::take(&net);
    let window = end.duration_since(t0).as_secs_f64().max(1e-3);
    let per_node: Vec<f64> = (0..n)
        .map(|i| after.wire_sent[i].saturating_sub(before.wire_sent[i]) as f64 / window)
        .collect();
    report.bandwidth.wire_sent_bytes = now.wire_sent.iter().take(n).sum();
    report.bandwidth.per_node_sent_bytes_per_s = Percentiles::of_ms(&per_node);
    for m in now.sent_by_proto.iter().take(n) {
        for (k, v) in m {
            *report
                .bandwidth
                .by_protocol_bytes
                .entry(k.clone())
                .or_insert(0) += v;
        }
    }
    let gossip_bytes = before.proto_delta(&after, n, "gossipsub") as f64;
    report.bandwidth.gossip_bytes_per_catalog_delivery =
        (deliveries > 0).then(|| gossip_bytes / deliveries as f64);
    samples.sent_by_node = now.sent_by_proto.iter().take(n).cloned().collect();
    let mut peers = Vec::with_capacity(n);
    for s in &senders {
        let (reply, rx) = oneshot::channel();
        if s.send(Command::Peers(reply)).await.is_ok()
            && let Ok(count) = rx.await
        {
            peers.push(count);
        }
    }
    report.topology = TopologyReport {
        kind: format!("{:?}", scenario.topology.kind).to_lowercase(),
        bootstrap_links: plan.edges.len(),
        mean_bootstrap_degree: 2.0 * plan.edges.len() as f64 / n as f64,
        live_connections: net.live_connections(),
        mean_peers: peers.iter().sum::<usize>() as f64 / peers.len().max(1) as f64,
        min_peers: peers.iter().copied().min().unwrap_or(0),
        max_peers: peers.iter().copied().max().unwrap_or(0),
        isolated_nodes: peers.iter().filter(|&&p| p == 0).count(),
        connections_opened: net.connections_opened(n),
        // A baseline keeps no count of who dialled.
        dialled_by: Default::default(),
    };
    report.memory = Memory {
        rss_before_mib: rss_before,
        rss_after_start_mib: rss_started,
        rss_end_mib: rss_end,
        per_node_kib: (rss_started - rss_before) * 1024.0 / n as f64,
    };
    report.workload.catalog_updates = updates;
    report.workload.publish_errors = publish_errors;
    checks(&mut report);
    drop(senders);
    for t in tasks {
        t.abort();
    }
    report.timings.total_s = started.elapsed().as_secs_f64();
    Ok(Outcome { report, samples })
}

async fn wait(limit: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if condition() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- the rogue -------------------------------------------------------------------------------

/// A peer that floods the catalog topic with forged entries: genuine entries whose revision it
/// raised, keeping the owner's signature (which then fails).
#[derive(Debug)]
pub struct Rogue {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    sent: Arc<AtomicU64>,
    peers_peak: Arc<AtomicU64>,
}

impl Rogue {
    pub async fn start(
        net: &SimNet,
        endpoint: usize,
        peers: Vec<Multiaddr>,
        material: Vec<Bytes>,
        rate: f64,
        seed: u64,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!material.is_empty(), "no entries to forge from");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x0072_6f67_7565);
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        // The mesh's gossip format: no author, no sequence number, no signature.
        let config = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Anonymous)
            // Anonymous messages have no author or sequence number: without a content id every
            // forged entry would look like a duplicate of the first.
            .message_id_fn(|m: &gossipsub::Message| {
                gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
            })
            .max_transmit_size(128 * 1024)
            .build()
            .map_err(|e| anyhow::anyhow!("gossipsub config: {e}"))?;
        let gossipsub =
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, config)
                .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
        let mut swarm = swarm(
            net,
            endpoint,
            keypair,
            gossipsub,
            64,
            Duration::from_secs(60),
            false,
        )?;
        let topic = IdentTopic::new(CATALOG_TOPIC);
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic)
            .map_err(|e| anyhow::anyhow!("subscribe: {e}"))?;
        for p in peers {
            let _ = swarm.dial(p);
        }
        let (stop, mut stopped) = oneshot::channel();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let peak = Arc::new(AtomicU64::new(0));
        let peers_peak = peak.clone();
        let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            let mut n: u64 = 0;
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tick.tick() => {
                        n += 1;
                        let original = &material[rng.random_range(0..material.len())];
                        if let Some(forged) = forge_entry(original, n) {
                            // Nobody may have the topic yet: that is the rogue's problem.
                            match swarm.behaviour_mut().gossipsub.publish(topic.clone(), forged) {
                                Ok(_) => {
                                    counter.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => tracing::debug!("rogue publish: {e}"),
                            }
                        }
                    }
                    event = swarm.select_next_some() => {
                        if let SwarmEvent::ConnectionEstablished { .. } = event {
                            peak.fetch_max(swarm.connected_peers().count() as u64, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
        Ok(Self {
            stop: Some(stop),
            task,
            sent,
            peers_peak,
        })
    }

    /// Stops the rogue; how many forged entries it gossiped, and to how many peers at most.
    pub async fn stop(mut self) -> (u64, u64) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        (
            self.sent.load(Ordering::Relaxed),
            self.peers_peak.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A genuine entry with its revision raised by `bump`, signature kept: it decodes, and fails
/// the signature check.
pub fn forge_entry(genuine: &Bytes, bump: u64) -> Option<Vec<u8>> {
    let mut envelope = pb::SignedCatalogEntry::decode(genuine.clone()).ok()?;
    let mut body = pb::CatalogEntryBody::decode(envelope.body.clone()).ok()?;
    body.revision = body.revision.saturating_add(1000 + bump);
    envelope.body = Bytes::from(body.encode_to_vec());
    Some(envelope.encode_to_vec())
}

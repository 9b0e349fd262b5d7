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
use libp2p::swarm::{DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad};
use rand::seq::IteratorRandom;
use tokio::sync::{mpsc, oneshot};

use crate::behaviour::{Behaviour, BehaviourEvent, CATALOG_TOPIC};
use crate::node::Shared;
use crate::sync_catalog;

/// Capacity of the command queue into the event loop.
pub const COMMAND_QUEUE: usize = 1024;
/// Most gossiped entries checked at once.
const VALIDATIONS_MAX: usize = 64;
/// Most entries held back while no peer has the catalog topic; anti-entropy covers the rest.
const UNSENT_MAX: usize = 1024;
/// How often Kademlia looks for more peers.
const BOOTSTRAP_INTERVAL: Duration = Duration::from_secs(30);
/// Least time between two dials of one peer that Kademlia reported.
const REDIAL_AFTER: Duration = Duration::from_secs(30);

/// What the rest of the node asks of the swarm.
#[derive(Debug)]
pub enum Command {
    /// Gossip an encoded catalog entry.
    Gossip { entry: Bytes },
    /// The verdict on a gossiped message, after our own checks.
    Validated {
        id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    },
    /// Dial an address (bootstrap peers, `meshnode run --peer`).
    Dial {
        address: Multiaddr,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Tell the swarm where a peer can be reached.
    AddAddress { peer: PeerId, address: Multiaddr },
}

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    topic: IdentTopic,
    /// Peers we have a connection to.
    connected: HashSet<PeerId>,
    /// Entries published while no peer had the topic; gossiped when one subscribes.
    unsent: Vec<Bytes>,
    /// Gossiped entries being checked at once, at most.
    validations: Arc<tokio::sync::Semaphore>,
    bootstrapped: bool,
    /// Peers dialled because Kademlia found them, and when: not again before `REDIAL_AFTER`.
    recent_dials: HashMap<PeerId, Instant>,
}

impl EventLoop {
    pub fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            swarm,
            commands,
            shared,
            topic: IdentTopic::new(CATALOG_TOPIC),
            connected: HashSet::new(),
            unsent: Vec::new(),
            validations: Arc::new(tokio::sync::Semaphore::new(VALIDATIONS_MAX)),
            bootstrapped: false,
            recent_dials: HashMap::new(),
        }
    }

    pub async fn run(mut self) {
        if let Err(e) = self.swarm.behaviour_mut().gossipsub.subscribe(&self.topic) {
            tracing::error!("cannot subscribe to the catalog topic: {e}");
        }
        let mut sync_tick = tokio::time::interval(self.shared.config.catalog_sync_interval);
        let mut bootstrap_tick = tokio::time::interval(BOOTSTRAP_INTERVAL);
        let shutdown = self.shared.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(command) = self.commands.recv() => self.on_command(command),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = sync_tick.tick() => self.sync_with_random_peer(),
                _ = bootstrap_tick.tick() => self.bootstrap(),
            }
        }
        tracing::debug!("event loop stopped");
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Gossip { entry } => self.gossip(entry),
            Command::Validated {
                id,
                source,
                acceptance,
            } => {
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &source, acceptance);
            }
            Command::Dial { address, reply } => {
                let result = self.swarm.dial(address.clone()).map_err(|e| dial_error(&e));
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
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.shared.listen_addrs_push(address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } if self.connected.insert(peer_id) => {
                tracing::debug!(peer = %short(&peer_id), "connected");
                self.shared
                    .peer_connected(peer_id, endpoint.get_remote_address().clone());
                // A new peer may hold entries we lack, or lack ours: compare catalogs now
                // rather than at the next tick, so a late joiner catches up at once.
                sync_catalog::spawn_sync(self.shared.clone(), peer_id);
                if !self.bootstrapped {
                    self.bootstrapped = true;
                    self.bootstrap();
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
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id.map(|p| short(&p)), "dial failed: {}", dial_error(&error));
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
                    if !self.connected.contains(&peer) {
                        let _ = self.swarm.dial(peer);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer,
                addresses,
                ..
            })) => {
                // Kademlia found a peer: connect, so that one bootstrap address is enough to
                // reach the whole mesh. Only up to half the connection limit, leaving the rest
                // for peers that dial us, and at most once per peer per `REDIAL_AFTER`:
                // Kademlia reports a peer again and again, and a peer at its own limit
                // refuses only after the noise handshake, so dialling on every report turned
                // into a storm of handshakes in a 100-node simulation (SIMULATIONS.md).
                let dial_target = (self.shared.config.peers_max / 2).max(1);
                let now = Instant::now();
                self.recent_dials
                    .retain(|_, at| now.duration_since(*at) < REDIAL_AFTER);
                if self.connected.len() < dial_target
                    && !self.connected.contains(&peer)
                    && peer != *self.swarm.local_peer_id()
                    && !self.recent_dials.contains_key(&peer)
                {
                    self.recent_dials.insert(peer, now);
                    let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                        .addresses(addresses.into_vec())
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        tracing::debug!(peer = %short(&peer), "dial failed: {}", dial_error(&e));
                    }
                }
            }
            _ => {}
        }
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

    /// Checks a gossiped entry off the loop and reports the verdict to gossipsub.
    fn on_gossip(&mut self, source: PeerId, id: MessageId, data: Vec<u8>) {
        // Bound the checks in flight: past the bound, the message is not forwarded (anti-entropy
        // delivers the entry later), rather than queueing without limit.
        let Ok(permit) = self.validations.clone().try_acquire_owned() else {
            self.shared.metrics.reject_entry("overloaded");
            self.swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(&id, &source, MessageAcceptance::Ignore);
            return;
        };
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let peer = short(&source);
            let acceptance = match shared.catalog.accept_many(vec![Bytes::from(data)], &peer) {
                Ok(accepted) if accepted.rejected.is_empty() => MessageAcceptance::Accept,
                Ok(_) => MessageAcceptance::Reject,
                Err(e) => {
                    tracing::error!("cannot store a catalog entry: {e}");
                    MessageAcceptance::Ignore
                }
            };
            // A blocking task may wait for room: the verdict must not be lost, or gossipsub
            // would hold the message until its validation times out.
            let _ = shared.commands.blocking_send(Command::Validated {
                id,
                source,
                acceptance,
            });
        });
    }

    fn sync_with_random_peer(&mut self) {
        if let Some(peer) = self.connected.iter().choose(&mut rand::rng()) {
            sync_catalog::spawn_sync(self.shared.clone(), *peer);
        }
    }

    fn bootstrap(&mut self) {
        if self.connected.is_empty() {
            return;
        }
        if let Err(e) = self.swarm.behaviour_mut().kad.bootstrap() {
            tracing::debug!("kademlia bootstrap: {e}");
        }
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
        other => other.to_string(),
    }
}

//! The libp2p behaviours a node runs, composed into one.

use std::num::NonZeroUsize;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{StreamProtocol, connection_limits, gossipsub, identify, kad};

use crate::config::NodeConfig;

/// Our own Kademlia protocol, so that nodes never join the public IPFS DHT.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/mesh/kad/1.0.0");
/// Identify's protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/mesh/id/1.0.0";
/// Log subscription streams.
pub const LOG_PROTOCOL: StreamProtocol = StreamProtocol::new("/mesh/log/1");
/// Catalog anti-entropy streams.
pub const CATALOG_SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/mesh/catalog-sync/1");
/// The gossipsub topic of catalog entries.
pub const CATALOG_TOPIC: &str = "mesh/v1/catalog";

// The libp2p behaviours inside implement no `Debug`, so this cannot either.
#[allow(missing_debug_implementations)]
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub limits: connection_limits::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub identify: identify::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub stream: libp2p_stream::Behaviour,
    /// Local peer discovery, present only when built with the `mdns` feature and switched on.
    pub mdns: Toggle<Mdns>,
}

/// Multicast DNS discovery (`mdns` feature).
#[cfg(feature = "mdns")]
pub type Mdns = libp2p::mdns::tokio::Behaviour;
/// Without the `mdns` feature the slot holds a behaviour that does nothing, and is never on.
#[cfg(not(feature = "mdns"))]
pub type Mdns = libp2p::swarm::dummy::Behaviour;

/// The catalog topic's peer score: relays of invalid entries lose score and, past gossipsub's
/// thresholds, are no longer gossiped with. Delivery-rate penalties are off: the catalog is a
/// quiet topic, and an honest peer with nothing to relay must not be punished for it.
fn peer_score() -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        first_message_deliveries_weight: 0.5,
        invalid_message_deliveries_weight: -20.0,
        invalid_message_deliveries_decay: 0.5,
        ..gossipsub::TopicScoreParams::default()
    };
    let mut params = gossipsub::PeerScoreParams::default();
    params
        .topics
        .insert(gossipsub::IdentTopic::new(CATALOG_TOPIC).hash(), topic);
    (params, gossipsub::PeerScoreThresholds::default())
}

/// Peers per Kademlia bucket: BitTorrent's DHT's `k`, rather than libp2p's 20. Each of a
/// routing table's 256 buckets allocates room for all of them up front (1.56 MiB per node
/// with 20, a sixth of a simulated node's memory), while a mesh of a few hundred nodes fills
/// about ten buckets; 8 known peers per distance still reach any peer in a few hops.
pub const KBUCKET_SIZE: usize = 8;

/// Kademlia's settings, for discovery only (PROTOCOL.md §8.4).
pub fn kad_config() -> kad::Config {
    let mut config = kad::Config::new(KAD_PROTOCOL);
    config.set_query_timeout(Duration::from_secs(30));
    // The node looks for peers when it is short of them, and refreshes every 10 minutes
    // (`network::PeerDiscovery`); Kademlia's own 5-minute refresh would add to that.
    config.set_periodic_bootstrap_interval(None);
    config.set_kbucket_size(NonZeroUsize::new(KBUCKET_SIZE).unwrap_or(NonZeroUsize::MIN));
    config
}

/// Messages whose encoded gossipsub message is larger than this are announced with IDONTWANT
/// on receipt and on publish (gossipsub's default).
///
/// An IDONTWANT is an RPC to each of the `D - 1` other mesh peers, about 70 bytes on the wire
/// each, and saves only the copies those peers had not sent yet: 0.26 per delivery in the
/// 300-node simulation. For an entry of a few hundred bytes that is about 210 bytes sent to
/// save about 150, and three more RPCs per delivery (SIMULATIONS.md, finding 17). Large
/// entries still get it.
const IDONTWANT_THRESHOLD_BYTES: usize = 1000;

/// Peers outside the mesh that get each heartbeat's IHAVE.
const IHAVE_PEERS: usize = 2;

/// Gossipsub's mesh bounds for a degree `D`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshDegree {
    pub n: usize,
    pub low: usize,
    pub high: usize,
    pub outbound_min: usize,
}

impl MeshDegree {
    /// `D`, kept between `D - 1` and `D + 1`, with at least `D/2` (at most `D - 1`)
    /// outbound peers, as gossipsub requires. `degree` is at least 2 (`NodeConfig::check`).
    ///
    /// The upper bound is tight because every mesh peer sends a copy of each entry: a node
    /// accepts grafts up to it, and with more connections than the mesh needs (up to twice
    /// `peers_wanted`) meshes filled up to `D + D/2` and copies per delivery rose above 3.
    pub fn new(degree: usize) -> Self {
        let n = degree.max(2);
        let low = n - 1;
        Self {
            n,
            low,
            high: n + 1,
            outbound_min: (n / 2).min(low),
        }
    }
}

/// Whether gossipsub waits for the node's verdict before it forwards an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validation {
    /// The node's own: each entry is held until the node has checked it (its signature, its
    /// rules, whether it is new), and forwarded only if it is valid and new.
    Checked,
    /// Forwarded on receipt, unchecked. Only for the simulator's gossip-only baseline, which
    /// measures what the gossip layer costs with nothing above it.
    Unchecked,
}

/// The catalog topic's gossipsub settings, for a mesh of degree `mesh` and entries of at most
/// `entry_bytes_max` bytes. Public, with [`catalog_gossipsub`], so that the simulator's
/// node-gossipsub baseline runs the node's settings themselves rather than a copy that could
/// drift: it is the floor the node's simulated figures are read against.
pub fn catalog_gossip_config(
    mesh: MeshDegree,
    entry_bytes_max: usize,
    validation: Validation,
) -> anyhow::Result<gossipsub::Config> {
    let mut builder = gossipsub::ConfigBuilder::default();
    builder
        // Our payloads carry their own signatures: gossipsub's own signing would be checked
        // on every copy before de-duplication, doubling the CPU per message.
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        // A message's id is the hash of its content, so copies de-duplicate.
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
        })
        .max_transmit_size(entry_bytes_max + 1024)
        .heartbeat_interval(Duration::from_millis(700))
        // Copies: a node forwards each entry to its mesh peers but the sender, so each node
        // receives about `D - 1` copies. gossipsub's defaults (D of 6, 5 to 12, and flood
        // publishing) measured 5.7 to 6.0 copies per delivery in simulations of 100 and 300
        // nodes; the catalog has anti-entropy behind it, so it can afford a thinner mesh
        // (SIMULATIONS.md).
        .mesh_n(mesh.n)
        .mesh_n_low(mesh.low)
        .mesh_n_high(mesh.high)
        .mesh_outbound_min(mesh.outbound_min)
        // A publisher sends to its mesh, not to every connected peer (up to `peers_max`
        // copies of each entry it publishes).
        .flood_publish(false)
        // Tell mesh peers at once that we hold a large entry, before our own check, so
        // copies still on their way are not sent (gossipsub 1.2).
        .idontwant_message_size_threshold(IDONTWANT_THRESHOLD_BYTES)
        .idontwant_on_publish(true)
        // IHAVE: each heartbeat, the ids of the entries validated in the last three
        // heartbeats go to this many peers outside the mesh (gossipsub's default: 6, or a
        // quarter of those peers if that is more). Each is an RPC of its own, sent whether
        // or not the peer lacks anything; with anti-entropy behind the catalog (PROTOCOL.md
        // §8.7), two are enough (SIMULATIONS.md, finding 17, which also shows what it costs
        // a partition's heal).
        .gossip_lazy(IHAVE_PEERS)
        .gossip_factor(0.0);
    if validation == Validation::Checked {
        // We check our signature after de-duplication and report the verdict; with the
        // peer score, peers that relay invalid entries lose score.
        builder.validate_messages();
    }
    builder
        .build()
        .map_err(|e| anyhow::anyhow!("gossipsub config: {e}"))
}

/// The catalog's gossipsub: anonymous messages, since our entries carry their owners'
/// signatures and gossipsub's own would be a second check per copy, with `config`, and the
/// catalog topic's peer score, so that relays of invalid entries lose standing.
pub fn catalog_gossipsub(config: gossipsub::Config) -> anyhow::Result<gossipsub::Behaviour> {
    let mut gossipsub =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, config)
            .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
    let (score, thresholds) = peer_score();
    gossipsub
        .with_peer_score(score, thresholds)
        .map_err(|e| anyhow::anyhow!("gossipsub peer score: {e}"))?;
    Ok(gossipsub)
}

impl Behaviour {
    pub fn new(
        key: &Keypair,
        config: &NodeConfig,
        protocol: &mesh_protocol::Config,
    ) -> anyhow::Result<Self> {
        let mesh = MeshDegree::new(config.gossip_degree);
        let gossipsub = catalog_gossipsub(catalog_gossip_config(
            mesh,
            protocol.catalog_entry_bytes_max,
            Validation::Checked,
        )?)?;

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                .with_agent_version(format!("meshnode/{}", env!("CARGO_PKG_VERSION"))),
        );

        let peer_id = key.public().to_peer_id();
        let mut kad = kad::Behaviour::with_config(
            peer_id,
            kad::store::MemoryStore::new(peer_id),
            kad_config(),
        );
        // Serve the DHT from the start: mesh nodes are servers, and on loopback or a LAN no
        // external address would ever be confirmed to switch it on.
        kad.set_mode(Some(kad::Mode::Server));

        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(u32::try_from(config.peers_max).unwrap_or(u32::MAX)))
            .with_max_established_per_peer(Some(2));
        Ok(Self {
            limits: connection_limits::Behaviour::new(limits),
            gossipsub,
            identify,
            kad,
            stream: libp2p_stream::Behaviour::new(),
            mdns: Toggle::from(mdns(config, peer_id)?),
        })
    }
}

#[cfg(feature = "mdns")]
fn mdns(config: &NodeConfig, peer_id: libp2p::PeerId) -> anyhow::Result<Option<Mdns>> {
    if !config.mdns {
        return Ok(None);
    }
    let mdns = libp2p::mdns::tokio::Behaviour::new(libp2p::mdns::Config::default(), peer_id)
        .map_err(|e| anyhow::anyhow!("mdns: {e}"))?;
    Ok(Some(mdns))
}

#[cfg(not(feature = "mdns"))]
fn mdns(config: &NodeConfig, _peer_id: libp2p::PeerId) -> anyhow::Result<Option<Mdns>> {
    if config.mdns {
        anyhow::bail!(
            "mdns = true, but this meshnode was built without the `mdns` feature (cargo build --features mdns)"
        );
    }
    Ok(None)
}

/// The swarm configuration shared by every transport.
pub fn swarm_config(config: &NodeConfig, c: libp2p::swarm::Config) -> libp2p::swarm::Config {
    c.with_idle_connection_timeout(config.idle_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_allowed_gossip_degree_gives_bounds_gossipsub_accepts() {
        for degree in 2..=crate::config::GOSSIP_DEGREE_MAX {
            let m = MeshDegree::new(degree);
            assert!(m.low < m.n && m.n < m.high, "{m:?}");
            gossipsub::ConfigBuilder::default()
                .mesh_n(m.n)
                .mesh_n_low(m.low)
                .mesh_n_high(m.high)
                .mesh_outbound_min(m.outbound_min)
                .build()
                .unwrap_or_else(|e| panic!("degree {degree}: {e}"));
        }
    }
}

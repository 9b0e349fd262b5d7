//! The libp2p behaviours a node runs, composed into one.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{StreamProtocol, gossipsub, identify, kad};

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
    pub gossipsub: gossipsub::Behaviour,
    pub identify: identify::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub stream: libp2p_stream::Behaviour,
}

impl Behaviour {
    pub fn new(key: &Keypair, protocol: &mesh_protocol::Config) -> anyhow::Result<Self> {
        let gossip_config = gossipsub::ConfigBuilder::default()
            // Our payloads carry their own signatures: gossipsub's own signing would be checked
            // on every copy before de-duplication, doubling the CPU per message.
            .validation_mode(gossipsub::ValidationMode::Anonymous)
            // A message's id is the hash of its content, so copies de-duplicate.
            .message_id_fn(|m: &gossipsub::Message| {
                gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
            })
            // We check our signature after de-duplication and report the verdict, so peers
            // that relay forgeries lose score.
            .validate_messages()
            .max_transmit_size(protocol.catalog_entry_bytes_max + 1024)
            .heartbeat_interval(Duration::from_millis(700))
            .build()
            .map_err(|e| anyhow::anyhow!("gossipsub config: {e}"))?;
        let gossipsub =
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_config)
                .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                .with_agent_version(format!("meshnode/{}", env!("CARGO_PKG_VERSION"))),
        );

        let peer_id = key.public().to_peer_id();
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config.set_query_timeout(Duration::from_secs(30));
        let mut kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        // Serve the DHT from the start: mesh nodes are servers, and on loopback or a LAN no
        // external address would ever be confirmed to switch it on.
        kad.set_mode(Some(kad::Mode::Server));

        Ok(Self {
            gossipsub,
            identify,
            kad,
            stream: libp2p_stream::Behaviour::new(),
        })
    }
}

/// The swarm configuration shared by every transport.
pub fn swarm_config(config: &NodeConfig, c: libp2p::swarm::Config) -> libp2p::swarm::Config {
    c.with_idle_connection_timeout(config.idle_timeout)
}

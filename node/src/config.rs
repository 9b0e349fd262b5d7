//! Node configuration: `node.toml` in the node's home, overridden by command-line flags.
//!
//! Every setting has a default, so a `node.toml` needs only `domain`. `meshnode init` writes a
//! file with every setting spelled out and commented.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use serde::{Deserialize, Serialize};

/// Largest `gossip_degree`: beyond it, gossip only multiplies copies.
pub const GOSSIP_DEGREE_MAX: usize = 32;

/// Everything a node needs to run, apart from its identity key (kept in the store).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// The business domain this node serves, e.g. `sales`. Informational: shown in `status`
    /// and used as the default `domain` of descriptors.
    pub domain: String,
    /// Addresses to listen on for peers. Default: every interface, TCP port 4001.
    pub listen: Vec<Multiaddr>,
    /// Peers to connect to at start (bootstrap). Others are found through them (Kademlia).
    pub peers: Vec<Multiaddr>,
    /// Address of the local HTTP API. Default `127.0.0.1:8080`. Keep it on loopback: it has no
    /// authentication and can publish in the node's name.
    pub api: SocketAddr,
    /// Find peers on the local network by multicast DNS (needs the `mdns` build feature).
    pub mdns: bool,
    /// Close a connection that carried nothing for this long. Default 60 s (libp2p's 10 s would
    /// drop quiet subscriptions between bursts).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How often to run catalog anti-entropy with one random peer. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub catalog_sync_interval: Duration,
    /// Wait before retrying a subscription whose source failed. Doubles up to 30 s. Default 500 ms.
    #[serde(with = "humantime_serde")]
    pub subscription_retry: Duration,
    /// Most established connections (at most two per peer); further ones are refused. Default 64.
    pub peers_max: usize,
    /// Peers Kademlia finds are dialled while fewer than this many are connected; past twice
    /// this many (or three quarters of `peers_max`, if fewer), connections nothing needs (outside the gossip mesh, no log stream, not a
    /// followed product's owner) are closed down to it.
    /// Default 8, a little more than the gossip mesh keeps. At most `peers_max`.
    pub peers_wanted: usize,
    /// Catalog gossip mesh degree (gossipsub's `D`): each entry is forwarded to about this many
    /// peers, so each node receives about this many copies less one. Default 4; the mesh is
    /// kept between `D - 1` and `D + 1` peers. At least 2.
    pub gossip_degree: usize,
    /// Most log streams this node serves at once. Default 256.
    pub served_streams_max: usize,
    /// Most events appended by one group commit. Default 1024.
    pub commit_batch_max: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            domain: "default".into(),
            listen: vec![
                Multiaddr::empty()
                    .with(Protocol::Ip4(std::net::Ipv4Addr::UNSPECIFIED))
                    .with(Protocol::Tcp(4001)),
            ],
            peers: Vec::new(),
            api: SocketAddr::from(([127, 0, 0, 1], 8080)),
            mdns: false,
            idle_timeout: Duration::from_secs(60),
            catalog_sync_interval: Duration::from_secs(10),
            subscription_retry: Duration::from_millis(500),
            peers_max: 64,
            peers_wanted: 8,
            gossip_degree: 4,
            served_streams_max: 256,
            commit_batch_max: 1024,
        }
    }
}

impl NodeConfig {
    /// Reads a `node.toml`. Unknown keys are errors, so a typo is never silently ignored.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let config: Self =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        config
            .check()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(config)
    }

    /// Checks the settings that depend on each other.
    pub fn check(&self) -> Result<(), String> {
        if self.peers_max == 0 {
            return Err("peers_max must be at least 1".into());
        }
        if self.peers_wanted == 0 || self.peers_wanted > self.peers_max {
            return Err(format!(
                "peers_wanted must be between 1 and peers_max ({}), not {}",
                self.peers_max, self.peers_wanted
            ));
        }
        if !(2..=GOSSIP_DEGREE_MAX).contains(&self.gossip_degree) {
            return Err(format!(
                "gossip_degree must be between 2 and {GOSSIP_DEGREE_MAX}, not {}",
                self.gossip_degree
            ));
        }
        Ok(())
    }

    /// The file `meshnode init` writes: every setting with its default and what it does.
    pub fn commented_toml(&self) -> String {
        let listen = self
            .listen
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            r#"# Data mesh node configuration. Command-line flags override these settings.

# The business domain this node serves.
domain = "{domain}"

# Addresses to listen on for peers (multiaddrs).
listen = [{listen}]

# Peers to connect to at start; others are found through them.
# peers = ["/ip4/10.0.0.7/tcp/4001/p2p/12D3KooW..."]
peers = []

# Local HTTP API (JSON under /v1, Prometheus metrics at /metrics). Keep it on loopback.
api = "{api}"

# Find peers on the LAN by multicast DNS (build with --features mdns).
mdns = {mdns}

# Close connections idle for this long.
idle_timeout = "{idle}"

# How often to compare catalogs with a random peer (anti-entropy).
catalog_sync_interval = "{sync}"

# First wait before retrying a failed subscription source (doubles up to 30s).
subscription_retry = "{retry}"

# Most connections; most log streams served at once; most events per group commit.
peers_max = {peers_max}
# Dial peers found by Kademlia while fewer than this many are connected; past twice this
# many, close connections nothing needs down to it.
peers_wanted = {peers_wanted}
# Catalog gossip mesh degree: peers each entry is forwarded to (received copies ~ this - 1).
gossip_degree = {gossip_degree}
served_streams_max = {served}
commit_batch_max = {batch}
"#,
            domain = self.domain,
            api = self.api,
            mdns = self.mdns,
            idle = humantime::format_duration(self.idle_timeout),
            sync = humantime::format_duration(self.catalog_sync_interval),
            retry = humantime::format_duration(self.subscription_retry),
            peers_max = self.peers_max,
            peers_wanted = self.peers_wanted,
            gossip_degree = self.gossip_degree,
            served = self.served_streams_max,
            batch = self.commit_batch_max,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commented_file_parses_back_to_the_same_config() {
        let config = NodeConfig {
            domain: "sales".into(),
            ..NodeConfig::default()
        };
        let parsed: NodeConfig = toml::from_str(&config.commented_toml()).unwrap();
        assert_eq!(parsed, config);
    }

    #[test]
    fn settings_that_contradict_each_other_are_refused() {
        assert_eq!(NodeConfig::default().check(), Ok(()));
        let wanted_beyond_max = NodeConfig {
            peers_max: 4,
            peers_wanted: 5,
            ..NodeConfig::default()
        };
        let err = wanted_beyond_max.check().unwrap_err();
        assert!(err.contains("peers_wanted") && err.contains('4'), "{err}");
        for degree in [0, 1, GOSSIP_DEGREE_MAX + 1] {
            let config = NodeConfig {
                gossip_degree: degree,
                ..NodeConfig::default()
            };
            let err = config.check().unwrap_err();
            assert!(err.contains("gossip_degree"), "{err}");
        }
    }

    #[test]
    fn a_minimal_file_takes_defaults_and_typos_are_refused() {
        let parsed: NodeConfig = toml::from_str("domain = \"billing\"").unwrap();
        assert_eq!(parsed.domain, "billing");
        assert_eq!(parsed.idle_timeout, Duration::from_secs(60));
        let err = toml::from_str::<NodeConfig>("domian = \"billing\"").unwrap_err();
        assert!(err.to_string().contains("domian"), "{err}");
    }
}

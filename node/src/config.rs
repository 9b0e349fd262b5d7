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
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
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
    fn a_minimal_file_takes_defaults_and_typos_are_refused() {
        let parsed: NodeConfig = toml::from_str("domain = \"billing\"").unwrap();
        assert_eq!(parsed.domain, "billing");
        assert_eq!(parsed.idle_timeout, Duration::from_secs(60));
        let err = toml::from_str::<NodeConfig>("domian = \"billing\"").unwrap_err();
        assert!(err.to_string().contains("domian"), "{err}");
    }
}

//! Scenario files: what a run simulates, as TOML.
//!
//! Every field has a default except `name` and `nodes`, and unknown fields are errors, so a
//! typo never silently changes a run. Fault times count from the start of the workload.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A scenario file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The seed used when `--seed` is not given.
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub nodes: usize,
    /// Which stack the nodes run: the mesh node, or a gossipsub baseline (catalog gossip
    /// only).
    #[serde(default)]
    pub stack: Stack,
    /// Time for connections and gossip meshes to form before anything is published.
    #[serde(default = "default_warmup", with = "humantime_serde")]
    pub warmup: Duration,
    /// Length of the workload (events, catalog updates, faults).
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Longest wait after the workload for every node to converge.
    #[serde(default = "default_settle", with = "humantime_serde")]
    pub settle: Duration,
    #[serde(default)]
    pub topology: Topology,
    #[serde(default)]
    pub workload: Workload,
    #[serde(default)]
    pub link: Link,
    #[serde(default)]
    pub node: NodeSettings,
    #[serde(default, rename = "fault")]
    pub faults: Vec<Fault>,
}

fn default_seed() -> u64 {
    1
}
fn default_warmup() -> Duration {
    Duration::from_secs(3)
}
fn default_settle() -> Duration {
    Duration::from_secs(30)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stack {
    /// The mesh node (`mesh-node`): its gossipsub settings, catalog sync and log streams.
    #[default]
    Mesh,
    /// libp2p gossipsub with its default configuration (signed messages, default message id,
    /// no application validation), identify and Kademlia: the catalog workload only.
    StockGossipsub,
    /// The node's own gossipsub (its settings and peer score), identify and Kademlia, with
    /// nothing above them: each entry is forwarded on receipt, unchecked, and nothing is
    /// stored, indexed, synced or streamed. The catalog workload only. What the gossip layer
    /// a node is built on costs by itself: the floor under the mesh node's figures.
    NodeGossipsub,
}

impl Stack {
    pub fn label(self) -> &'static str {
        match self {
            Stack::Mesh => "mesh",
            Stack::StockGossipsub => "stock-gossipsub",
            Stack::NodeGossipsub => "node-gossipsub",
        }
    }

    /// Every stack, as `--stack` names them.
    pub const ALL: [Stack; 3] = [Stack::Mesh, Stack::StockGossipsub, Stack::NodeGossipsub];

    /// Whether the stack is a gossipsub baseline, which runs the catalog workload only and
    /// of the faults only link ones.
    pub fn is_baseline(self) -> bool {
        self != Stack::Mesh
    }
}

/// How nodes are first connected (each node dials its neighbours at start). Nodes then find
/// more peers by Kademlia, as the node does, so the live graph is usually denser.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default)]
    pub kind: TopologyKind,
    /// Average degree of `random` graphs, and of each cluster of `clustered` ones.
    #[serde(default = "default_degree")]
    pub degree: usize,
    /// Number of domains of a `clustered` topology.
    #[serde(default = "default_clusters")]
    pub clusters: usize,
    /// Links from each cluster to other clusters.
    #[serde(default = "default_bridges")]
    pub bridges: usize,
}

fn default_degree() -> usize {
    4
}
fn default_clusters() -> usize {
    4
}
fn default_bridges() -> usize {
    2
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            kind: TopologyKind::default(),
            degree: default_degree(),
            clusters: default_clusters(),
            bridges: default_bridges(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TopologyKind {
    #[default]
    Random,
    Clustered,
    Line,
    Ring,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    pub products_per_node: usize,
    pub subscriptions_per_node: usize,
    /// Change events per second, over the whole mesh.
    pub event_rate: f64,
    pub payload_bytes: usize,
    /// Catalog updates (a product's descriptor published again) per second, whole mesh.
    pub catalog_update_rate: f64,
    /// How the catalog's first revisions reach the nodes before the workload.
    pub initial_catalog: InitialCatalog,
}

/// How the catalog's first revisions reach the nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialCatalog {
    /// Every owner publishes its products after the warm-up, and the run waits until every node
    /// holds them all: the first replication of the whole catalog is measured.
    #[default]
    Published,
    /// The same entries, signed by their owners and announcing the subscriptions the plan
    /// makes, are in every node's store before it starts, as after an earlier run: the run
    /// measures updates to a catalog every node already holds. At 1000 nodes the first
    /// replication is a million entry deliveries, more than one 2-core process absorbs
    /// within a scenario.
    Preloaded,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            products_per_node: 1,
            subscriptions_per_node: 2,
            event_rate: 20.0,
            payload_bytes: 256,
            catalog_update_rate: 1.0,
            initial_catalog: InitialCatalog::Published,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Link {
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Probability that a write is lost once and retransmitted after a timeout.
    pub loss: f64,
}

/// Settings of every simulated node (the rest are the node's defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSettings {
    #[serde(with = "humantime_serde")]
    pub catalog_sync_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub subscription_retry: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    pub peers_max: usize,
    /// Dial peers Kademlia finds while fewer than this many are connected.
    pub peers_wanted: usize,
    /// The catalog gossip mesh degree (gossipsub's `D`), for the node and the node-gossipsub
    /// baseline; the stock baseline keeps gossipsub's default of 6.
    pub gossip_degree: usize,
    /// `memory` (kept across restarts in-process) or `sled` (a temporary directory per node).
    pub store: StoreKind,
}

impl Default for NodeSettings {
    fn default() -> Self {
        let node = mesh_node::NodeConfig::default();
        Self {
            catalog_sync_interval: node.catalog_sync_interval,
            subscription_retry: node.subscription_retry,
            idle_timeout: node.idle_timeout,
            peers_max: node.peers_max,
            peers_wanted: node.peers_wanted,
            gossip_degree: node.gossip_degree,
            store: StoreKind::Memory,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    #[default]
    Memory,
    Sled,
}

/// A fault and when it strikes (from the start of the workload).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// `nodes` nodes shut down gracefully and rejoin from their stores after `down_for`.
    Churn {
        #[serde(with = "humantime_serde")]
        at: Duration,
        nodes: usize,
        #[serde(with = "humantime_serde")]
        down_for: Duration,
    },
    /// `nodes` nodes crash (their connections reset, no goodbye) and restart from their
    /// stores after `down_for`.
    Crash {
        #[serde(with = "humantime_serde")]
        at: Duration,
        nodes: usize,
        #[serde(with = "humantime_serde")]
        down_for: Duration,
    },
    /// A share `fraction` of the nodes is cut off from the rest until `heal_after`.
    Partition {
        #[serde(with = "humantime_serde")]
        at: Duration,
        fraction: f64,
        #[serde(with = "humantime_serde")]
        heal_after: Duration,
    },
    /// A node serves tampered events of the logs it relays. It subscribes to `products`
    /// products from the start; at `at` it connects to their other subscribers and their
    /// owners go away for `down_for`, so subscribers look for other sources.
    Forge {
        #[serde(with = "humantime_serde")]
        at: Duration,
        products: usize,
        #[serde(with = "humantime_serde")]
        down_for: Duration,
    },
    /// A product's owner is replaced at `at` by a twin with the same key and an empty store,
    /// which writes a different history; after `down_for` the original comes back.
    Fork {
        #[serde(with = "humantime_serde")]
        at: Duration,
        #[serde(with = "humantime_serde")]
        down_for: Duration,
    },
    /// A rogue peer connected to `peers` nodes floods the catalog topic with forged entries
    /// (genuine entries with one byte changed) at `rate` per second.
    Flood {
        #[serde(with = "humantime_serde")]
        at: Duration,
        #[serde(with = "humantime_serde")]
        duration: Duration,
        rate: f64,
        peers: usize,
    },
    /// Every link gets this delay, jitter and loss for `duration`.
    Link {
        #[serde(with = "humantime_serde")]
        at: Duration,
        #[serde(with = "humantime_serde")]
        duration: Duration,
        #[serde(default, with = "humantime_serde")]
        delay: Duration,
        #[serde(default, with = "humantime_serde")]
        jitter: Duration,
        #[serde(default)]
        loss: f64,
    },
}

impl Fault {
    pub fn label(&self) -> &'static str {
        match self {
            Fault::Churn { .. } => "churn",
            Fault::Crash { .. } => "crash",
            Fault::Partition { .. } => "partition",
            Fault::Forge { .. } => "forge",
            Fault::Fork { .. } => "fork",
            Fault::Flood { .. } => "flood",
            Fault::Link { .. } => "link",
        }
    }
}

impl Scenario {
    /// The protocol limits every simulated node runs with, and the node-gossipsub baseline's
    /// gossip with it: the protocol's defaults, as a node started without a config has.
    pub fn protocol() -> mesh_protocol::Config {
        mesh_protocol::Config::default()
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let scenario: Scenario =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        scenario
            .check()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(scenario)
    }

    /// Rules a scenario must keep, each with its reason.
    pub fn check(&self) -> Result<(), String> {
        let w = &self.workload;
        if self.nodes < 2 {
            return Err("nodes: at least 2".into());
        }
        if self.nodes > 10_000 {
            return Err("nodes: at most 10000 real nodes in one process".into());
        }
        // The node refuses other degrees; a baseline would quietly round them instead.
        let degrees = 2..=mesh_node::config::GOSSIP_DEGREE_MAX;
        if !degrees.contains(&self.node.gossip_degree) {
            return Err(format!(
                "node.gossip_degree: between 2 and {}, not {}",
                degrees.end(),
                self.node.gossip_degree
            ));
        }
        if w.subscriptions_per_node > (self.nodes - 1) * w.products_per_node {
            return Err(format!(
                "workload.subscriptions_per_node: {} is more than the {} products of other nodes",
                w.subscriptions_per_node,
                (self.nodes - 1) * w.products_per_node
            ));
        }
        if w.products_per_node == 0 {
            return Err("workload.products_per_node: at least 1".into());
        }
        let rate_ok = |r: f64| r.is_finite() && r >= 0.0;
        if !(rate_ok(w.event_rate) && rate_ok(w.catalog_update_rate)) {
            return Err("workload rates must be finite and >= 0".into());
        }
        if !(0.0..1.0).contains(&self.link.loss) {
            return Err("link.loss: a probability below 1".into());
        }
        if self.topology.degree == 0 && self.topology.kind == TopologyKind::Random {
            return Err("topology.degree: at least 1".into());
        }
        for fault in &self.faults {
            match fault {
                Fault::Churn { nodes, .. } | Fault::Crash { nodes, .. } if *nodes >= self.nodes => {
                    return Err(format!("{}: fewer nodes than the mesh has", fault.label()));
                }
                Fault::Partition { fraction, .. } if !(*fraction > 0.0 && *fraction < 1.0) => {
                    return Err("partition.fraction: between 0 and 1".into());
                }
                Fault::Link { loss, .. } if !(0.0..1.0).contains(loss) => {
                    return Err("link.loss: a probability below 1".into());
                }
                Fault::Forge { products, .. } if *products == 0 => {
                    return Err("forge.products: at least 1".into());
                }
                _ => {}
            }
            if self.stack.is_baseline() && !matches!(fault, Fault::Link { .. }) {
                return Err(format!(
                    "fault {}: the {} stack runs link faults only",
                    fault.label(),
                    self.stack.label()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_scenario_takes_defaults_and_typos_are_refused() {
        let s: Scenario = toml::from_str("name = \"x\"\nnodes = 5\nduration = \"2s\"").unwrap();
        assert_eq!(s.stack, Stack::Mesh);
        assert_eq!(s.workload.products_per_node, 1);
        s.check().unwrap();
        let err =
            toml::from_str::<Scenario>("name = \"x\"\nnodes = 5\nduration = \"2s\"\nnodez = 1")
                .unwrap_err();
        assert!(err.to_string().contains("nodez"), "{err}");
    }

    #[test]
    fn a_rate_must_be_a_finite_number_of_at_least_zero() {
        let mut s: Scenario = toml::from_str("name = \"x\"\nnodes = 5\nduration = \"2s\"").unwrap();
        for rate in [f64::INFINITY, f64::NAN, -1.0] {
            s.workload.catalog_update_rate = rate;
            let err = s.check().unwrap_err();
            assert!(err.contains("finite and >= 0"), "{rate}: {err}");
        }
        s.workload.catalog_update_rate = 0.0;
        s.check().unwrap();
    }

    #[test]
    fn every_stack_parses_by_its_label_and_a_baseline_refuses_faults_it_cannot_run() {
        // A new stack must be added here, and so to `Stack::ALL`.
        let place = |s: Stack| match s {
            Stack::Mesh => 0,
            Stack::StockGossipsub => 1,
            Stack::NodeGossipsub => 2,
        };
        assert_eq!(Stack::ALL.map(place), [0, 1, 2]);
        let churn = "[[fault]]\nkind = \"churn\"\nat = \"1s\"\nnodes = 1\ndown_for = \"1s\"\n";
        for stack in Stack::ALL {
            let text = format!(
                "name = \"x\"\nnodes = 5\nduration = \"2s\"\nstack = \"{}\"\n{churn}",
                stack.label()
            );
            let s: Scenario = toml::from_str(&text).unwrap();
            assert_eq!(s.stack, stack);
            match s.check() {
                Ok(()) => assert!(!stack.is_baseline(), "{stack:?}"),
                Err(e) => {
                    assert!(stack.is_baseline(), "{stack:?}: {e}");
                    let expected = format!("the {} stack runs link faults only", stack.label());
                    assert!(e.contains(&expected), "{e}");
                }
            }
        }
    }

    #[test]
    fn a_gossip_degree_the_node_refuses_is_refused_here_too() {
        let mut s: Scenario = toml::from_str("name = \"x\"\nnodes = 5\nduration = \"2s\"").unwrap();
        for degree in [0, 1, mesh_node::config::GOSSIP_DEGREE_MAX + 1] {
            s.node.gossip_degree = degree;
            let err = s.check().unwrap_err();
            assert!(err.contains("node.gossip_degree"), "{degree}: {err}");
        }
        s.node.gossip_degree = 3;
        s.check().unwrap();
    }

    #[test]
    fn faults_parse_by_kind() {
        let s: Scenario = toml::from_str(
            "name = \"x\"\nnodes = 5\nduration = \"2s\"\n[[fault]]\nkind = \"partition\"\nat = \"1s\"\nfraction = 0.4\nheal_after = \"2s\"\n",
        )
        .unwrap();
        assert!(matches!(s.faults[0], Fault::Partition { .. }));
        let bad: Scenario = toml::from_str(
            "name = \"x\"\nnodes = 5\nduration = \"2s\"\n[[fault]]\nkind = \"churn\"\nat = \"1s\"\nnodes = 5\ndown_for = \"1s\"\n",
        )
        .unwrap();
        assert!(bad.check().is_err());
    }
}

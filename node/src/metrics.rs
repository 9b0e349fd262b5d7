//! Prometheus metrics of a node, served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Who opened a connection: `inbound` (the other side dialed), `node` (this node's own peer
/// rule: bootstrap peers, refills, owner lookups) or `protocol` (a libp2p protocol dialed on
/// its own, mostly Kademlia queries contacting the peers they learn about).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OriginLabel {
    pub origin: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProductLabel {
    pub product: String,
}

/// Every metric the node exports. Cheap to update from any thread.
#[derive(Debug, Default)]
pub struct Metrics {
    pub peers_connected: Gauge,
    pub connections_opened: Family<OriginLabel, Counter>,
    pub connections_trimmed: Counter,
    pub catalog_entries: Gauge,
    pub catalog_received: Counter,
    pub catalog_rejected: Family<ReasonLabel, Counter>,
    pub catalog_equivocations: Counter,
    pub gossip_verdicts_late: Counter,
    pub catalog_regossiped: Counter,
    pub events_appended: Counter,
    pub events_received: Counter,
    pub events_duplicate: Counter,
    pub events_rejected: Family<ReasonLabel, Counter>,
    pub forks_detected: Counter,
    pub subscriber_lag: Family<ProductLabel, Gauge>,
    pub streams_served: Gauge,
    pub streams_refused: Family<ReasonLabel, Counter>,
    pub searches_served: Counter,
}

impl Metrics {
    pub fn registry(self: &std::sync::Arc<Self>) -> Registry {
        let mut r = Registry::with_prefix("mesh");
        r.register(
            "peers_connected",
            "Connected peers",
            self.peers_connected.clone(),
        );
        r.register(
            "connections_opened",
            "Connections established, by who opened them (inbound, node, protocol)",
            self.connections_opened.clone(),
        );
        r.register(
            "connections_trimmed",
            "Connections closed because nothing needed them (beyond peers_wanted)",
            self.connections_trimmed.clone(),
        );
        r.register(
            "catalog_entries",
            "Catalog entries held",
            self.catalog_entries.clone(),
        );
        r.register(
            "catalog_received",
            "Catalog entries received and accepted",
            self.catalog_received.clone(),
        );
        r.register(
            "catalog_rejected",
            "Catalog entries rejected, by reason",
            self.catalog_rejected.clone(),
        );
        r.register(
            "catalog_equivocations",
            "Equal-revision catalog entries with different content",
            self.catalog_equivocations.clone(),
        );
        r.register(
            "gossip_verdicts_late",
            "Gossiped entries worth forwarding whose check ended after gossipsub forgot them",
            self.gossip_verdicts_late.clone(),
        );
        r.register(
            "catalog_regossiped",
            "Catalog entries learned by anti-entropy that this node gossiped on",
            self.catalog_regossiped.clone(),
        );
        r.register(
            "events_appended",
            "Events appended by this node as producer",
            self.events_appended.clone(),
        );
        r.register(
            "events_received",
            "Events received and committed",
            self.events_received.clone(),
        );
        r.register(
            "events_duplicate",
            "Events received that were already held",
            self.events_duplicate.clone(),
        );
        r.register(
            "events_rejected",
            "Events rejected, by reason",
            self.events_rejected.clone(),
        );
        r.register(
            "forks_detected",
            "Fork proofs found or received",
            self.forks_detected.clone(),
        );
        r.register(
            "subscriber_lag_events",
            "Events the source holds that this node has not committed yet, by product",
            self.subscriber_lag.clone(),
        );
        r.register(
            "streams_served",
            "Log streams being served",
            self.streams_served.clone(),
        );
        r.register(
            "streams_refused",
            "Log subscriptions refused, by reason",
            self.streams_refused.clone(),
        );
        r.register(
            "searches_served",
            "Search queries answered for peers over /mesh/search/1",
            self.searches_served.clone(),
        );
        r
    }

    pub fn reject_event(&self, reason: &str) {
        self.events_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn reject_stream(&self, reason: &str) {
        self.streams_refused
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn reject_entry(&self, reason: &str) {
        self.catalog_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }
}

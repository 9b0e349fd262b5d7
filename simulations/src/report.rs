//! What a run measured: JSON for machines, Markdown for people, and the raw samples the plots
//! are drawn from.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Percentiles of a distribution (milliseconds unless the field says otherwise).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// From samples in milliseconds (kept to the microsecond).
    pub fn of_ms(samples: &[f64]) -> Self {
        let mut h = match Histogram::<u64>::new(3) {
            Ok(h) => h,
            Err(_) => return Self::default(),
        };
        for &s in samples {
            // Negative latencies cannot happen on one clock; clamp rather than drop.
            let v = (s.max(0.0) * 1000.0) as u64;
            // `record` grows the histogram as needed; it only fails past u64 range.
            if h.record(v).is_err() {
                h.saturating_record(v);
            }
        }
        Self::of_micros(&h)
    }

    pub fn of_micros(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub description: String,
    pub stack: String,
    pub seed: u64,
    pub plan_fingerprint: String,
    pub nodes: usize,
    pub build: String,
    pub topology: TopologyReport,
    pub timings: Timings,
    pub workload: WorkloadReport,
    pub catalog: CatalogReport,
    pub events: EventReport,
    pub bandwidth: Bandwidth,
    pub memory: Memory,
    pub faults: Vec<FaultReport>,
    pub checks: Vec<Check>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TopologyReport {
    pub kind: String,
    pub bootstrap_links: usize,
    pub mean_bootstrap_degree: f64,
    /// Connections open at the end of the workload (Kademlia adds peers to the bootstrap ones).
    pub live_connections: usize,
    pub mean_peers: f64,
    pub min_peers: usize,
    pub max_peers: usize,
    /// Nodes with no connection at the end.
    pub isolated_nodes: usize,
    /// Connections dialled over the whole run (each costs a noise handshake).
    pub connections_opened: u64,
    /// The nodes' own count of the connections they dialled (`mesh_connections_opened`), by
    /// who asked for them: `node` (the node's peer rule) or `protocol` (mostly Kademlia
    /// queries). Counts restart when a node restarts.
    #[serde(default)]
    pub dialled_by: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Timings {
    pub start_nodes_s: f64,
    pub warmup_s: f64,
    /// From the first publish until every node held every product (None: not within `settle`).
    pub initial_catalog_s: Option<f64>,
    pub subscriptions_live_s: Option<f64>,
    pub workload_s: f64,
    /// From the end of the workload until every node held the latest catalog and every
    /// subscriber the owner's head (None: not within `settle`).
    pub settle_s: Option<f64>,
    pub total_s: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkloadReport {
    pub appends_planned: usize,
    pub appended: u64,
    pub appends_skipped_owner_down: u64,
    pub append_errors: u64,
    pub catalog_updates: u64,
    pub publish_errors: u64,
    pub subscriptions: usize,
    /// Entries owners signed on their own, beyond the run's publishes: announcements of
    /// what they consume, made when they subscribe.
    #[serde(default)]
    pub owner_announcements: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Convergence {
    /// Catalog entries published (product, revision).
    pub entries: usize,
    /// (node, entry) pairs delivered, excluding the publisher.
    pub deliveries: u64,
    /// (node, entry) pairs never delivered to a node that was up at the end.
    pub missing: u64,
    /// Time from publish until the entry (or a newer revision) was at 50/90/99/100% of nodes;
    /// percentiles over entries. Entries that never reached a share are left out of its row.
    pub to_50pct_ms: Percentiles,
    pub to_90pct_ms: Percentiles,
    pub to_99pct_ms: Percentiles,
    pub to_100pct_ms: Percentiles,
    /// Entries that never reached every node.
    pub never_complete: usize,
    /// Per (node, entry) delivery latency.
    pub delivery_ms: Percentiles,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GossipCopies {
    /// The window: the workload (catalog updates), after the initial publish.
    pub copies_received: u64,
    pub deliveries: u64,
    pub copies_per_delivery: Option<f64>,
    /// Gossipsub RPCs received, whatever they carry (messages, IHAVE, IWANT, IDONTWANT,
    /// GRAFT, PRUNE): each is a yamux frame and a swarm event of its own. `None` in older
    /// reports.
    #[serde(default)]
    pub rpcs_received: Option<u64>,
    #[serde(default)]
    pub rpcs_per_delivery: Option<f64>,
    pub ihave_ids: u64,
    pub iwant_ids: u64,
    pub idontwant_ids: u64,
    /// RPCs the tap could not decode (a check on the tap; 0 expected).
    pub undecodable_rpcs: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CatalogReport {
    /// Entries written into every node's store before start (`initial_catalog = "preloaded"`);
    /// `initial` is then empty.
    #[serde(default)]
    pub preloaded_entries: usize,
    pub initial: Convergence,
    pub updates: Convergence,
    pub gossip: GossipCopies,
    /// Entries rejected by nodes, by reason (forged flood entries end here).
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Entries held by some node whose id no owner published.
    pub forged_entries_accepted: u64,
    /// Gossiped entries worth forwarding that the nodes checked only after gossipsub had
    /// forgotten them, so never forwarded (`mesh_gossip_verdicts_late_total`, summed over the
    /// nodes up at the end, each since its last start); `None` where not counted (stock
    /// gossipsub, reports written before the count).
    #[serde(default)]
    pub verdicts_late: Option<u64>,
    /// Entries a node learned by catalog sync and gossiped on (`mesh_catalog_regossiped_total`,
    /// summed like `verdicts_late`: over the nodes up at the end, each since its last start);
    /// `None` where not counted.
    #[serde(default)]
    pub regossiped: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HopLatency {
    pub hops: String,
    pub latency_ms: Percentiles,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EventReport {
    /// Sum over subscriptions of the owner's final head: events each subscriber should hold.
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    /// Events a subscriber committed twice (0 required).
    pub duplicates_applied: u64,
    /// Copies a subscriber received that it already held, and skipped.
    pub duplicate_receipts_skipped: u64,
    /// Events held by a subscriber that the owner never signed (0 required).
    pub forgeries_accepted: u64,
    /// Events rejected by subscribers, by reason.
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Forged events the forging relay handed out.
    pub forged_served: u64,
    /// Subscriptions whose head event differs from the owner's at the end.
    pub diverged_subscriptions: u64,
    pub fork_proofs_held: u64,
    /// Latency from the producer's commit to the subscriber's commit.
    pub latency_ms: Percentiles,
    pub by_hop: Vec<HopLatency>,
    /// Live notifications a watcher missed (its buffer overflowed): latency samples lost, not
    /// events (delivery is counted from the stores).
    pub samples_missed: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Bandwidth {
    /// Bytes on the wire (noise ciphertext), all nodes, whole run.
    pub wire_sent_bytes: u64,
    /// Per node, bytes sent per second of the workload window.
    pub per_node_sent_bytes_per_s: Percentiles,
    /// Plaintext bytes sent by protocol, whole run.
    pub by_protocol_bytes: BTreeMap<String, u64>,
    /// Log-stream bytes sent in the workload window per event delivered in it.
    pub log_bytes_per_delivered_event: Option<f64>,
    /// Gossip bytes sent in the workload window per catalog delivery in it.
    pub gossip_bytes_per_catalog_delivery: Option<f64>,
    /// Wire bytes sent in the workload window per event appended in it.
    pub wire_bytes_per_appended_event: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Memory {
    pub rss_before_mib: f64,
    pub rss_after_start_mib: f64,
    pub rss_end_mib: f64,
    /// (RSS after start - RSS before) / nodes: the whole process's growth, shared per node.
    pub per_node_kib: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FaultReport {
    pub kind: String,
    pub at_s: f64,
    pub detail: String,
    /// Time until the mesh (or the restarted node) held the catalog of that moment.
    pub catalog_converged_after_s: Option<f64>,
    /// Time until it also held, for every subscription, the owner's log head of that moment.
    pub converged_after_s: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// Raw samples for the plots.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    pub catalog_delivery_ms: Vec<f64>,
    pub catalog_to_100pct_ms: Vec<f64>,
    pub event_latency_by_hop: BTreeMap<String, Vec<f64>>,
    /// Per node: bytes sent per protocol label, whole run.
    pub sent_by_node: Vec<BTreeMap<String, u64>>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    pub fn check(&mut self, name: &str, passed: bool, detail: String) {
        self.checks.push(Check {
            name: name.into(),
            passed,
            detail,
        });
    }

    /// Reads a report a run wrote (`report.json`).
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let json = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&json)
            .map_err(|e| anyhow::anyhow!("{} is not a meshsim report: {e}", path.display()))
    }

    pub fn write(&self, dir: &Path, samples: &Samples) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        crate::plot::all(dir, self, samples)?;
        Ok(())
    }

    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let p = |x: &Percentiles| {
            if x.count == 0 {
                "–".to_owned()
            } else {
                format!("{:.1} / {:.1} / {:.1} / {:.1}", x.p50, x.p90, x.p99, x.max)
            }
        };
        let opt = |x: Option<f64>| x.map_or("not reached".to_owned(), |v| format!("{v:.2} s"));
        // Only a heal, a restart and a fork are followed by a catch-up to measure.
        let measured = |f: &FaultReport, x: Option<f64>, logs: bool| {
            if matches!(f.kind.as_str(), "heal" | "rejoin") || (logs && f.kind == "fork") {
                opt(x)
            } else {
                "–".to_owned()
            }
        };

        let _ = writeln!(m, "# meshsim: {}\n", self.scenario);
        if !self.description.is_empty() {
            let _ = writeln!(m, "{}\n", self.description);
        }
        let _ = writeln!(
            m,
            "stack `{}`, {} nodes, seed {}, plan `{}`, {} build.\n",
            self.stack, self.nodes, self.seed, self.plan_fingerprint, self.build
        );
        let _ = writeln!(m, "## Checks\n");
        for c in &self.checks {
            let _ = writeln!(
                m,
                "- {} **{}**: {}",
                if c.passed { "PASS" } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        let t = &self.topology;
        let _ = writeln!(m, "\n## Topology\n");
        let _ = writeln!(
            m,
            "{} bootstrap graph, {} links (mean degree {:.1}); at the end {} live connections, {:.1} peers per node on average ({} to {}), {} isolated nodes; {} connections dialled during the run{}.\n",
            t.kind,
            t.bootstrap_links,
            t.mean_bootstrap_degree,
            t.live_connections,
            t.mean_peers,
            t.min_peers,
            t.max_peers,
            t.isolated_nodes,
            t.connections_opened,
            if t.dialled_by.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    t.dialled_by
                        .iter()
                        .map(|(k, v)| format!("{v} by the {k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
        let tm = &self.timings;
        let _ = writeln!(m, "## Timings\n");
        let _ = writeln!(m, "| phase | time |\n| --- | --- |");
        let _ = writeln!(
            m,
            "| start {} nodes | {:.2} s |",
            self.nodes, tm.start_nodes_s
        );
        let _ = writeln!(m, "| warm-up | {:.2} s |", tm.warmup_s);
        let _ = writeln!(
            m,
            "| initial catalog everywhere | {} |",
            if self.catalog.preloaded_entries > 0 {
                "preloaded".to_owned()
            } else {
                opt(tm.initial_catalog_s)
            }
        );
        let _ = writeln!(
            m,
            "| subscriptions live | {} |",
            if self.workload.subscriptions == 0 {
                "–".to_owned()
            } else {
                opt(tm.subscriptions_live_s)
            }
        );
        let _ = writeln!(m, "| workload | {:.2} s |", tm.workload_s);
        let _ = writeln!(m, "| converged after the workload | {} |", opt(tm.settle_s));
        let _ = writeln!(m, "| total | {:.2} s |\n", tm.total_s);
        let w = &self.workload;
        let _ = writeln!(m, "## Workload\n");
        let _ = writeln!(
            m,
            "{} events appended ({} planned, {} skipped while the owner was down, {} errors), {} catalog updates ({} errors), {} subscriptions ({} entries signed anew to announce them).\n",
            w.appended,
            w.appends_planned,
            w.appends_skipped_owner_down,
            w.append_errors,
            w.catalog_updates,
            w.publish_errors,
            w.subscriptions,
            w.owner_announcements
        );
        let c = &self.catalog;
        let _ = writeln!(m, "## Catalog convergence\n");
        if c.preloaded_entries > 0 {
            let _ = writeln!(
                m,
                "The initial catalog ({} entries, signed by their owners) was in every node's store before it started (`initial_catalog = \"preloaded\"`): this run measures updates to a catalog every node holds, not its first replication.\n",
                c.preloaded_entries
            );
        }
        let _ = writeln!(
            m,
            "Time from publish until an entry is held by a share of the nodes (ms, p50 / p90 / p99 / max over entries).\n"
        );
        let _ = writeln!(
            m,
            "| entries | count | 50% | 90% | 99% | 100% | never complete | per-delivery latency | missing |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for (name, conv) in [("initial publish", &c.initial), ("updates", &c.updates)] {
            let _ = writeln!(
                m,
                "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
                conv.entries,
                p(&conv.to_50pct_ms),
                p(&conv.to_90pct_ms),
                p(&conv.to_99pct_ms),
                p(&conv.to_100pct_ms),
                conv.never_complete,
                p(&conv.delivery_ms),
                conv.missing
            );
        }
        let g = &c.gossip;
        let _ = writeln!(
            m,
            "\nGossip during the workload: {} copies received for {} deliveries: **{}** copies per delivery{} (IHAVE ids {}, IWANT ids {}, IDONTWANT ids {}, undecodable RPCs {}).",
            g.copies_received,
            g.deliveries,
            g.copies_per_delivery
                .map_or("–".into(), |v| format!("{v:.2}")),
            // Reports made before RPCs were counted say nothing of them.
            g.rpcs_received.map_or(String::new(), |rpcs| format!(
                ", in {rpcs} RPCs, {} per delivery",
                g.rpcs_per_delivery
                    .map_or("–".into(), |v| format!("{v:.2}"))
            )),
            g.ihave_ids,
            g.iwant_ids,
            g.idontwant_ids,
            g.undecodable_rpcs
        );
        let _ = writeln!(
            m,
            "Entries rejected: {:?}; forged entries accepted: {}; checked too late to forward: {}{}.\n",
            c.rejected_by_reason,
            c.forged_entries_accepted,
            c.verdicts_late
                .map_or("not counted".into(), |n| n.to_string()),
            c.regossiped.map_or(String::new(), |n| format!(
                "; learned by catalog sync and gossiped on: {n}"
            ))
        );
        let e = &self.events;
        let _ = writeln!(m, "## Change events\n");
        let _ = writeln!(
            m,
            "| expected | delivered | lost | duplicates applied | duplicate copies skipped | forgeries accepted | forged served | diverged | fork proofs held |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            e.expected,
            e.delivered,
            e.lost,
            e.duplicates_applied,
            e.duplicate_receipts_skipped,
            e.forgeries_accepted,
            e.forged_served,
            e.diverged_subscriptions,
            e.fork_proofs_held
        );
        let _ = writeln!(m, "Rejected by subscribers: {:?}.\n", e.rejected_by_reason);
        let _ = writeln!(
            m,
            "Delivery latency, producer commit to subscriber commit (ms):\n\n| hops | count | p50 | p90 | p99 | max |\n| --- | --- | --- | --- | --- | --- |"
        );
        for h in std::iter::once(&HopLatency {
            hops: "all".into(),
            latency_ms: e.latency_ms.clone(),
        })
        .chain(&e.by_hop)
        {
            let l = &h.latency_ms;
            let _ = writeln!(
                m,
                "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                h.hops, l.count, l.p50, l.p90, l.p99, l.max
            );
        }
        let _ = writeln!(
            m,
            "\n({} latency samples missed by watchers.)\n",
            e.samples_missed
        );
        let b = &self.bandwidth;
        let _ = writeln!(m, "## Bandwidth\n");
        let _ = writeln!(
            m,
            "{:.1} MiB on the wire in total. Per node, bytes sent per second of the workload (p50 / p90 / p99 / max over nodes): {}.\n",
            b.wire_sent_bytes as f64 / 1048576.0,
            p(&b.per_node_sent_bytes_per_s)
        );
        let _ = writeln!(m, "| protocol | bytes sent (plaintext) |\n| --- | --- |");
        for (k, v) in &b.by_protocol_bytes {
            let _ = writeln!(m, "| {k} | {v} |");
        }
        let f = |x: Option<f64>| x.map_or("–".to_owned(), |v| format!("{v:.0}"));
        let _ = writeln!(
            m,
            "\nPer event: {} log-stream bytes per delivered event, {} wire bytes per appended event; {} gossip bytes per catalog delivery.\n",
            f(b.log_bytes_per_delivered_event),
            f(b.wire_bytes_per_appended_event),
            f(b.gossip_bytes_per_catalog_delivery)
        );
        let mem = &self.memory;
        let _ = writeln!(m, "## Memory\n");
        let _ = writeln!(
            m,
            "RSS {:.0} MiB before the nodes, {:.0} MiB once started, {:.0} MiB at the end: **{:.0} KiB per node**.\n",
            mem.rss_before_mib, mem.rss_after_start_mib, mem.rss_end_mib, mem.per_node_kib
        );
        if !self.faults.is_empty() {
            let _ = writeln!(
                m,
                "## Faults\n\n| fault | at | what | catalog caught up after | logs caught up after |\n| --- | --- | --- | --- | --- |"
            );
            for fr in &self.faults {
                let _ = writeln!(
                    m,
                    "| {} | {:.2} s | {} | {} | {} |",
                    fr.kind,
                    fr.at_s,
                    fr.detail,
                    measured(fr, fr.catalog_converged_after_s, false),
                    measured(fr, fr.converged_after_s, true)
                );
            }
            let _ = writeln!(m);
        }
        let _ = writeln!(
            m,
            "Plots: `catalog_cdf.svg`, `latency_cdf.svg`, `bandwidth.svg`."
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cells of each row of the Markdown table that starts with `header`.
    fn table_widths(markdown: &str, header: &str) -> Vec<usize> {
        markdown
            .lines()
            .skip_while(|l| !l.starts_with(header))
            .take_while(|l| l.starts_with('|'))
            .map(|l| l.matches('|').count() - 1)
            .collect()
    }

    #[test]
    fn every_fault_row_has_a_cell_under_each_heading() {
        let mut report = Report::default();
        for (kind, catalog, logs) in [
            ("partition", None, None),
            ("heal", Some(0.4), Some(3.2)),
            ("fork", None, Some(2.0)),
        ] {
            report.faults.push(FaultReport {
                kind: kind.into(),
                at_s: 2.0,
                detail: "what happened".into(),
                catalog_converged_after_s: catalog,
                converged_after_s: logs,
            });
        }
        let markdown = report.markdown();
        let widths = table_widths(&markdown, "| fault |");
        assert_eq!(widths.len(), 5, "{markdown}");
        assert!(
            widths.iter().all(|w| *w == widths[0]),
            "{widths:?}\n{markdown}"
        );
        assert!(markdown.contains("| heal | 2.00 s | what happened | 0.40 s | 3.20 s |"));
    }
}
